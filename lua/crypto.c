/* crypto.c: sluice.hmac_sha256, sluice.hex and sluice.jwt.verify (HS256),
 * on OpenSSL.  JWT verification refuses every algorithm but HS256 (no
 * "none", no key confusion), compares signatures in constant time, and
 * checks `exp` and `nbf` against the wall clock. */
#include "lua/internal.h"

#include "core/b64.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define JWT_MAX 8192

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

/* base64url without padding -> bytes, into out (room for len bytes).
 * Returns the length, or -1 when the text is not base64url. */
static ssize_t b64url_decode(const char *in, size_t len, unsigned char *out)
{
    if (len % 4 == 1) return -1;
    size_t plen = (len + 3) / 4 * 4;
    char *tmp = malloc(plen ? plen : 1);
    if (!tmp) return -1;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c == '+' || c == '/' || c == '=') {
            free(tmp);
            return -1;
        }
        tmp[i] = c == '-' ? '+' : c == '_' ? '/' : c;
    }
    for (size_t i = len; i < plen; i++)
        tmp[i] = '=';
    ssize_t n = b64_decode(out, b64_decoded_max(plen), tmp, plen);
    free(tmp);
    return n;
}

/* Decodes one base64url part holding JSON and leaves the value on the stack;
 * returns false (nothing pushed) when it is not base64url JSON. */
static bool push_json_part(lua_State *L, const char *part, size_t len)
{
    unsigned char *raw = malloc(len + 4);
    if (!raw) return false;
    ssize_t n = b64url_decode(part, len, raw);
    if (n < 0) {
        free(raw);
        return false;
    }
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, "cjson");
    lua_getfield(L, -1, "decode");
    lua_remove(L, -2);
    lua_remove(L, -2);
    lua_pushlstring(L, (const char *)raw, (size_t)n);
    free(raw);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        lua_pop(L, 1);
        return false;
    }
    return true;
}

static int jwt_fail(lua_State *L, const char *why)
{
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
}

/* sluice.jwt.verify(token, key) -> claims | nil, reason */
static int l_jwt_verify(lua_State *L)
{
    size_t tlen, klen;
    const char *token = luaL_checklstring(L, 1, &tlen);
    const char *key = luaL_checklstring(L, 2, &klen);
    if (tlen > JWT_MAX) return jwt_fail(L, "token too long");
    const char *dot1 = memchr(token, '.', tlen);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', tlen - (size_t)(dot1 + 1 - token)) : NULL;
    if (!dot1 || !dot2 || memchr(dot2 + 1, '.', tlen - (size_t)(dot2 + 1 - token)))
        return jwt_fail(L, "malformed token");

    if (!push_json_part(L, token, (size_t)(dot1 - token)) || !lua_istable(L, -1))
        return jwt_fail(L, "malformed token");
    lua_getfield(L, -1, "alg");
    bool hs256 = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "HS256") == 0;
    lua_pop(L, 2);
    if (!hs256) return jwt_fail(L, "unsupported algorithm (HS256 only)");

    unsigned char sig[64];
    size_t slen = tlen - (size_t)(dot2 + 1 - token);
    ssize_t sn = slen <= 86 ? b64url_decode(dot2 + 1, slen, sig) : -1;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mlen = 0;
    if (!HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)token, (size_t)(dot2 - token),
              mac, &mlen))
        return luaL_error(L, "jwt.verify: OpenSSL failed");
    if (sn != (ssize_t)mlen || CRYPTO_memcmp(sig, mac, mlen) != 0)
        return jwt_fail(L, "bad signature");

    if (!push_json_part(L, dot1 + 1, (size_t)(dot2 - dot1 - 1)) || !lua_istable(L, -1))
        return jwt_fail(L, "malformed token");
    /* The precise clock: time() reads the coarse one, up to a tick behind,
     * so a token could pass its exp by a few ms after an expiry timer (on
     * ev_time's clock) had already ended its subscription. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double now = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    lua_getfield(L, -1, "exp");
    if (!lua_isnil(L, -1) && (!lua_isnumber(L, -1) || now >= lua_tonumber(L, -1)))
        return jwt_fail(L, "token expired");
    lua_getfield(L, -2, "nbf");
    if (!lua_isnil(L, -1) && (!lua_isnumber(L, -1) || now < lua_tonumber(L, -1)))
        return jwt_fail(L, "token not yet valid");
    lua_pop(L, 2);
    return 1;
}

void lx_open_crypto(lua_State *L)
{
    lua_pushcfunction(L, l_hmac_sha256);
    lua_setfield(L, -2, "hmac_sha256");
    lua_pushcfunction(L, l_hex);
    lua_setfield(L, -2, "hex");
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, l_jwt_verify);
    lua_setfield(L, -2, "verify");
    lua_setfield(L, -2, "jwt");
}
