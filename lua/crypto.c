/* crypto.c: sluice.hmac_sha256 and sluice.hex, on OpenSSL (JSON Web
 * Tokens are jwt.c's). */
#include "lua/internal.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>

/* sluice.hmac_sha256(key, data) -> the 32-byte MAC (binary) */
static int l_hmac_sha256(lua_State *L)
{
    size_t klen, dlen;
    const char *key = luaL_checklstring(L, 1, &klen);
    const char *data = luaL_checklstring(L, 2, &dlen);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mlen = 0;
    if (!HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)data, dlen, mac, &mlen))
        return luaL_error(L, "hmac_sha256: OpenSSL failed");
    lua_pushlstring(L, (const char *)mac, mlen);
    return 1;
}

/* sluice.hex(bytes) -> lower-case hexadecimal */
static int l_hex(lua_State *L)
{
    size_t len;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
    static const char digits[] = "0123456789abcdef";
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, len * 2);
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[s[i] >> 4];
        out[2 * i + 1] = digits[s[i] & 15];
    }
    luaL_pushresultsize(&b, len * 2);
    return 1;
}

void lx_open_crypto(lua_State *L)
{
    lua_pushcfunction(L, l_hmac_sha256);
    lua_setfield(L, -2, "hmac_sha256");
    lua_pushcfunction(L, l_hex);
    lua_setfield(L, -2, "hex");
}
