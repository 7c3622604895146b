/* jwt.c: sluice.jwt.verify, sluice.jwt.keys and sluice.jws.verify: JSON
 * Web Tokens (RFC 7519) in the JWS compact form (RFC 7515), verified with
 * OpenSSL's EVP interface.
 *
 * Algorithms (RFC 7518, RFC 8037): HS256/384/512 (HMAC, compared in
 * constant time), RS256/384/512 (RSA PKCS#1 v1.5), PS256/384/512 (RSA-PSS,
 * salt the size of the hash), ES256/384/512 (ECDSA; the signature is R||S),
 * EdDSA (Ed25519, Ed448).  "none", and every other name, is refused.
 *
 * A key set is parsed once into a userdata (sluice.jwt.keys, or implicitly:
 * a string or table given to verify is parsed and cached per script
 * generation): each key has a type, and a token is verified only with the
 * keys whose type its algorithm names (an HMAC secret for HS*, an RSA key
 * for RS and PS, an EC key on the algorithm's own curve for ES, an OKP key
 * for EdDSA), and whose own "alg", when the JWK has one, is the token's.
 * That is what refuses algorithm confusion: an HS256 token can never be
 * checked against the bytes of an RSA public key.
 *
 * A JWKS URL is fetched with sluice.http.request by a small Lua layer
 * (JWKS_LUA below), which keeps each set per generation and fetches again
 * when a token names an unknown kid (at most every jwks_refetch seconds) or
 * when the set is older than jwks_max_age. */
#include "lua/internal.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define JWT_MAX 16384    /* bytes of a token */
#define MAX_KEYS 64      /* keys of one set */
#define CACHE_MAX 64     /* key sets parsed from strings, per generation */
#define KEYSET_MT "sluice.jwt.keyset"

enum { KT_OCT, KT_RSA, KT_EC, KT_OKP };
enum { FAM_HS, FAM_RS, FAM_PS, FAM_ES, FAM_ED };

typedef struct jwk {
    int type;
    char kid[128]; /* "" when none */
    bool has_kid;
    char alg[16]; /* the JWK's "alg", "" when none */
    EVP_PKEY *pkey;
    unsigned char *secret;
    size_t secret_len;
    int ec_sig_len; /* EC: 2 * the coordinate size */
} jwk;

typedef struct keyset {
    int n;
    jwk *keys;
} keyset;

typedef struct alg_info {
    const char *name;
    int family;
    const EVP_MD *(*md)(void);
    int ec_sig_len; /* ES: the R||S length, which names the curve */
} alg_info;

static const alg_info algs[] = {
    {"HS256", FAM_HS, EVP_sha256, 0}, {"HS384", FAM_HS, EVP_sha384, 0},
    {"HS512", FAM_HS, EVP_sha512, 0}, {"RS256", FAM_RS, EVP_sha256, 0},
    {"RS384", FAM_RS, EVP_sha384, 0}, {"RS512", FAM_RS, EVP_sha512, 0},
    {"PS256", FAM_PS, EVP_sha256, 0}, {"PS384", FAM_PS, EVP_sha384, 0},
    {"PS512", FAM_PS, EVP_sha512, 0}, {"ES256", FAM_ES, EVP_sha256, 64},
    {"ES384", FAM_ES, EVP_sha384, 96}, {"ES512", FAM_ES, EVP_sha512, 132},
    {"EdDSA", FAM_ED, NULL, 0},
};

/* ---- base64url ----------------------------------------------------------- */

static int b64u_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

/* base64url without padding (RFC 7515 section 2) into out (room for
 * len * 3 / 4 bytes); -1 when it is not that, non-zero pad bits included. */
static ssize_t b64u_decode(const char *in, size_t len, unsigned char *out)
{
    if (len % 4 == 1) return -1;
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64u_value((unsigned char)in[i]);
        if (v < 0) return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) return -1; /* non-zero bits after the last byte */
    return (ssize_t)o;
}

/* ---- key sets ------------------------------------------------------------ */

static void jwk_clear(jwk *k)
{
    EVP_PKEY_free(k->pkey);
    if (k->secret) OPENSSL_clear_free(k->secret, k->secret_len);
    memset(k, 0, sizeof(*k));
}

static int keyset_gc(lua_State *L)
{
    keyset *s = luaL_checkudata(L, 1, KEYSET_MT);
    for (int i = 0; i < s->n; i++)
        jwk_clear(&s->keys[i]);
    free(s->keys);
    s->keys = NULL;
    s->n = 0;
    return 0;
}

/* A new, empty set on the stack (its keys array allocated for MAX_KEYS, and
 * freed by its finalizer whatever happens next). */
static keyset *keyset_push(lua_State *L)
{
    keyset *s = lua_newuserdatauv(L, sizeof(keyset), 0);
    s->n = 0;
    s->keys = NULL;
    luaL_setmetatable(L, KEYSET_MT);
    s->keys = calloc(MAX_KEYS, sizeof(jwk));
    if (!s->keys) luaL_error(L, "out of memory");
    return s;
}

/* A field of the JWK table at idx, base64url-decoded into a new buffer
 * (*len set), or NULL when missing or not base64url. */
static unsigned char *jwk_bytes(lua_State *L, int idx, const char *field, size_t *len)
{
    size_t n;
    lua_getfield(L, idx, field);
    const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
    unsigned char *out = s && n <= 4096 ? malloc(n * 3 / 4 + 1) : NULL;
    ssize_t got = out ? b64u_decode(s, n, out) : -1;
    lua_pop(L, 1);
    if (got < 0) {
        free(out);
        return NULL;
    }
    *len = (size_t)got;
    return out;
}

static EVP_PKEY *pkey_from_params(const char *type, OSSL_PARAM_BLD *bld)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = params ? EVP_PKEY_CTX_new_from_name(NULL, type, NULL) : NULL;
    EVP_PKEY *pkey = NULL;
    if (!ctx || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pkey;
}

static EVP_PKEY *rsa_from_jwk(lua_State *L, int idx)
{
    size_t nl = 0, el = 0;
    unsigned char *n = jwk_bytes(L, idx, "n", &nl), *e = jwk_bytes(L, idx, "e", &el);
    BIGNUM *bn = n ? BN_bin2bn(n, (int)nl, NULL) : NULL, *be = e ? BN_bin2bn(e, (int)el, NULL) : NULL;
    OSSL_PARAM_BLD *bld = bn && be ? OSSL_PARAM_BLD_new() : NULL;
    EVP_PKEY *pkey = NULL;
    if (bld && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be))
        pkey = pkey_from_params("RSA", bld);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    free(n);
    free(e);
    return pkey;
}

static const struct {
    const char *crv, *group;
    int size;
} curves[] = {{"P-256", "prime256v1", 32}, {"P-384", "secp384r1", 48}, {"P-521", "secp521r1", 66}};

static EVP_PKEY *ec_from_jwk(lua_State *L, int idx, int *sig_len)
{
    lua_getfield(L, idx, "crv");
    const char *crv = lua_tostring(L, -1);
    int c = -1;
    for (int i = 0; crv && i < 3; i++)
        if (strcmp(crv, curves[i].crv) == 0) c = i;
    lua_pop(L, 1);
    if (c < 0) return NULL;
    size_t xl = 0, yl = 0;
    unsigned char *x = jwk_bytes(L, idx, "x", &xl), *y = jwk_bytes(L, idx, "y", &yl);
    EVP_PKEY *pkey = NULL;
    int size = curves[c].size;
    unsigned char point[1 + 2 * 66];
    if (x && y && xl == (size_t)size && yl == (size_t)size) {
        point[0] = 4; /* uncompressed */
        memcpy(point + 1, x, xl);
        memcpy(point + 1 + size, y, yl);
        OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
        if (bld &&
            OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, curves[c].group, 0) &&
            OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, 1 + 2 * (size_t)size))
            pkey = pkey_from_params("EC", bld);
        OSSL_PARAM_BLD_free(bld);
    }
    free(x);
    free(y);
    *sig_len = 2 * size;
    return pkey;
}

static EVP_PKEY *okp_from_jwk(lua_State *L, int idx)
{
    lua_getfield(L, idx, "crv");
    const char *crv = lua_tostring(L, -1);
    int type = !crv                         ? 0
               : strcmp(crv, "Ed25519") == 0 ? EVP_PKEY_ED25519
               : strcmp(crv, "Ed448") == 0   ? EVP_PKEY_ED448
                                             : 0;
    lua_pop(L, 1);
    size_t xl = 0;
    unsigned char *x = type ? jwk_bytes(L, idx, "x", &xl) : NULL;
    EVP_PKEY *pkey = x ? EVP_PKEY_new_raw_public_key(type, NULL, x, xl) : NULL;
    free(x);
    return pkey;
}

/* The EC signature length of an EC key (from its curve), or 0. */
static int ec_sig_len_of(EVP_PKEY *pkey)
{
    char group[64];
    size_t gl = 0;
    if (!EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), &gl))
        return 0;
    for (int i = 0; i < 3; i++)
        if (strcmp(group, curves[i].group) == 0) return 2 * curves[i].size;
    return 0;
}

/* Fills k from the JWK table at idx; returns NULL or why it is unusable. */
static const char *jwk_parse(lua_State *L, int idx, jwk *k)
{
    idx = lua_absindex(L, idx);
    memset(k, 0, sizeof(*k));
    if (lua_getfield(L, idx, "use") != LUA_TNIL &&
        !(lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "sig") == 0)) {
        lua_pop(L, 1);
        return "a JWK whose use is not sig";
    }
    lua_pop(L, 1);
    if (lua_getfield(L, idx, "kid") == LUA_TSTRING) {
        size_t n;
        const char *kid = lua_tolstring(L, -1, &n);
        if (n >= sizeof(k->kid)) {
            lua_pop(L, 1);
            return "a JWK kid longer than 127 bytes";
        }
        memcpy(k->kid, kid, n + 1);
        k->has_kid = true;
    }
    lua_pop(L, 1);
    if (lua_getfield(L, idx, "alg") == LUA_TSTRING) {
        size_t n;
        const char *alg = lua_tolstring(L, -1, &n);
        if (n < sizeof(k->alg)) memcpy(k->alg, alg, n + 1);
        else strcpy(k->alg, "?"); /* matches no algorithm */
    }
    lua_pop(L, 1);
    lua_getfield(L, idx, "kty");
    const char *kty = lua_tostring(L, -1);
    if (!kty || lua_type(L, -1) != LUA_TSTRING) {
        lua_pop(L, 1);
        return "a JWK without kty";
    }
    const char *why = NULL;
    if (strcmp(kty, "oct") == 0) {
        k->type = KT_OCT;
        k->secret = jwk_bytes(L, idx, "k", &k->secret_len);
        if (!k->secret || k->secret_len == 0) why = "an oct JWK without k";
    } else if (strcmp(kty, "RSA") == 0) {
        k->type = KT_RSA;
        if (!(k->pkey = rsa_from_jwk(L, idx))) why = "an RSA JWK without a valid n and e";
    } else if (strcmp(kty, "EC") == 0) {
        k->type = KT_EC;
        if (!(k->pkey = ec_from_jwk(L, idx, &k->ec_sig_len)))
            why = "an EC JWK without a valid crv (P-256, P-384, P-521), x and y";
    } else if (strcmp(kty, "OKP") == 0) {
        k->type = KT_OKP;
        if (!(k->pkey = okp_from_jwk(L, idx))) why = "an OKP JWK without a valid crv (Ed25519, Ed448) and x";
    } else {
        why = "a JWK of an unknown kty";
    }
    lua_pop(L, 1);
    if (why) jwk_clear(k);
    return why;
}

/* Adds the key pkey (taken) to s; RSA keys under 2048 bits are refused
 * (RFC 7518 section 3.3). */
static const char *add_pkey(keyset *s, EVP_PKEY *pkey)
{
    if (s->n >= MAX_KEYS) {
        EVP_PKEY_free(pkey);
        return "more than 64 keys";
    }
    jwk *k = &s->keys[s->n];
    memset(k, 0, sizeof(*k));
    switch (EVP_PKEY_get_base_id(pkey)) {
    case EVP_PKEY_RSA:
    case EVP_PKEY_RSA_PSS:
        k->type = KT_RSA;
        break;
    case EVP_PKEY_EC:
        k->type = KT_EC;
        k->ec_sig_len = ec_sig_len_of(pkey);
        break;
    case EVP_PKEY_ED25519:
    case EVP_PKEY_ED448:
        k->type = KT_OKP;
        break;
    default:
        EVP_PKEY_free(pkey);
        return "a PEM key of an unsupported type";
    }
    k->pkey = pkey;
    s->n++;
    return NULL;
}

/* Every public key or certificate in a PEM text. */
static const char *parse_pem(keyset *s, const char *text, size_t len)
{
    BIO *bio = BIO_new_mem_buf(text, (int)len);
    if (!bio) return "out of memory";
    const char *why = NULL;
    char *name = NULL, *header = NULL;
    unsigned char *data = NULL;
    long dlen = 0;
    while (!why && PEM_read_bio(bio, &name, &header, &data, &dlen)) {
        const unsigned char *p = data;
        EVP_PKEY *pkey = NULL;
        if (strcmp(name, "PUBLIC KEY") == 0) {
            pkey = d2i_PUBKEY(NULL, &p, dlen);
        } else if (strcmp(name, "RSA PUBLIC KEY") == 0) {
            pkey = d2i_PublicKey(EVP_PKEY_RSA, NULL, &p, dlen);
        } else if (strcmp(name, "CERTIFICATE") == 0) {
            X509 *x = d2i_X509(NULL, &p, dlen);
            pkey = x ? X509_get_pubkey(x) : NULL;
            X509_free(x);
        } else if (strstr(name, "PRIVATE KEY")) {
            why = "a private key: give the public key";
        } else {
            why = "a PEM block that is not a public key or a certificate";
        }
        if (!why && !pkey) why = "a PEM key that does not parse";
        if (!why) why = add_pkey(s, pkey);
        OPENSSL_free(name);
        OPENSSL_free(header);
        OPENSSL_free(data);
        name = header = NULL;
        data = NULL;
    }
    BIO_free(bio);
    ERR_clear_error(); /* the end of the text is an "error" for PEM_read_bio */
    if (!why && s->n == 0) why = "no key in the PEM text";
    return why;
}

/* A JWK or a JWK Set (a table with `keys`) at idx.  In a set, keys that
 * cannot serve (encryption keys, unknown types) are skipped. */
static const char *parse_jwk_table(lua_State *L, keyset *s, int idx)
{
    idx = lua_absindex(L, idx);
    if (lua_getfield(L, idx, "keys") == LUA_TTABLE) {
        lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
        const char *first_why = NULL;
        for (lua_Integer i = 1; i <= n; i++) {
            if (lua_rawgeti(L, -1, i) == LUA_TTABLE && s->n < MAX_KEYS) {
                const char *why = jwk_parse(L, -1, &s->keys[s->n]);
                if (!why) s->n++;
                else if (!first_why) first_why = why;
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        if (s->n == 0) return first_why ? first_why : "an empty JWK Set";
        return NULL;
    }
    lua_pop(L, 1);
    const char *why = jwk_parse(L, idx, &s->keys[0]);
    if (!why) s->n = 1;
    return why;
}

/* Decodes JSON text with lua-cjson; the value (or nothing, returning
 * false) on the stack. */
static bool push_json(lua_State *L, const char *text, size_t len)
{
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, "cjson");
    lua_getfield(L, -1, "decode");
    lua_remove(L, -2);
    lua_remove(L, -2);
    lua_pushlstring(L, text, len);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        lua_pop(L, 1);
        return false;
    }
    return true;
}

/* A set parsed from the value at idx (a string: a PEM text, JSON of a JWK
 * or a JWK Set, or else an HMAC secret; a table: a JWK or a JWK Set),
 * pushed; or nothing pushed and the reason returned. */
static const char *keyset_from(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    int top = lua_gettop(L);
    int type = lua_type(L, idx);
    if (type != LUA_TSTRING && type != LUA_TTABLE) return "keys must be a string, a table or a key set";
    keyset *s = keyset_push(L);
    const char *why = NULL;
    if (type == LUA_TTABLE) {
        why = parse_jwk_table(L, s, idx);
    } else {
        size_t len;
        const char *text = lua_tolstring(L, idx, &len);
        size_t skip = 0;
        while (skip < len && strchr(" \t\r\n", text[skip]))
            skip++;
        if (len == 0) {
            why = "an empty key";
        } else if (memmem(text, len, "-----BEGIN", 10)) {
            why = parse_pem(s, text, len);
        } else if (text[skip] == '{') {
            if (push_json(L, text, len)) {
                why = lua_istable(L, -1) ? parse_jwk_table(L, s, -1) : "a key that is not a JWK";
                lua_pop(L, 1);
            } else {
                why = "a key that is neither JSON nor PEM";
            }
        } else {
            jwk *k = &s->keys[0];
            k->type = KT_OCT;
            k->secret = malloc(len);
            if (!k->secret) luaL_error(L, "out of memory");
            memcpy(k->secret, text, len);
            k->secret_len = len;
            s->n = 1;
        }
    }
    lua_settop(L, why ? top : top + 1); /* the set, or nothing */
    return why;
}

static const char cache_key = 0; /* registry: string or table -> parsed set */

/* The set for the keys argument at idx, pushed (parsed at most once per
 * generation for a given string, and per table while it lives), or
 * nothing pushed and the reason returned. */
static const char *keys_arg(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    int top = lua_gettop(L);
    if (luaL_testudata(L, idx, KEYSET_MT)) {
        lua_pushvalue(L, idx);
        return NULL;
    }
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &cache_key) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 4);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &cache_key);
    }
    int cache = top + 1;
    lua_pushvalue(L, idx);
    if (lua_rawget(L, cache) == LUA_TUSERDATA) {
        lua_remove(L, cache);
        return NULL;
    }
    lua_pop(L, 1);
    const char *why = keyset_from(L, idx); /* the set at top + 2 */
    if (why) {
        lua_settop(L, top);
        return why;
    }
    /* Bounded: a script that passes ever new strings (keys from clients)
     * starts the cache over instead of growing it. */
    lua_getfield(L, cache, "n");
    lua_Integer n = lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (n >= CACHE_MAX) {
        lua_createtable(L, 0, 4);
        lua_replace(L, cache);
        lua_pushvalue(L, cache);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &cache_key);
        n = 0;
    }
    lua_pushvalue(L, idx);
    lua_pushvalue(L, top + 2);
    lua_rawset(L, cache);
    lua_pushinteger(L, n + 1);
    lua_setfield(L, cache, "n");
    lua_remove(L, cache);
    return NULL;
}

/* ---- verification -------------------------------------------------------- */

static bool key_fits(const jwk *k, const alg_info *a)
{
    if (k->alg[0] && strcmp(k->alg, a->name) != 0) return false;
    switch (a->family) {
    case FAM_HS:
        return k->type == KT_OCT;
    case FAM_RS:
    case FAM_PS:
        return k->type == KT_RSA && EVP_PKEY_get_bits(k->pkey) >= 2048;
    case FAM_ES:
        return k->type == KT_EC && k->ec_sig_len == a->ec_sig_len;
    default:
        return k->type == KT_OKP;
    }
}

static bool verify_with(const jwk *k, const alg_info *a, const unsigned char *input, size_t ilen,
                        const unsigned char *sig, size_t slen)
{
    if (a->family == FAM_HS) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int mlen = 0;
        if (!HMAC(a->md(), k->secret, (int)k->secret_len, input, ilen, mac, &mlen)) return false;
        return slen == mlen && CRYPTO_memcmp(sig, mac, mlen) == 0;
    }
    unsigned char der[160];
    if (a->family == FAM_ES) {
        /* JWS carries R||S; OpenSSL verifies DER. */
        if (slen != (size_t)a->ec_sig_len) return false;
        size_t half = slen / 2;
        ECDSA_SIG *es = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(sig, (int)half, NULL), *s = BN_bin2bn(sig + half, (int)half, NULL);
        if (!es || !r || !s || !ECDSA_SIG_set0(es, r, s)) {
            BN_free(r);
            BN_free(s);
            ECDSA_SIG_free(es);
            return false;
        }
        unsigned char *p = der;
        int dl = i2d_ECDSA_SIG(es, NULL);
        if (dl <= 0 || dl > (int)sizeof(der) || i2d_ECDSA_SIG(es, &p) != dl) {
            ECDSA_SIG_free(es);
            return false;
        }
        ECDSA_SIG_free(es);
        sig = der;
        slen = (size_t)dl;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    bool ok = ctx && EVP_DigestVerifyInit(ctx, &pctx, a->md ? a->md() : NULL, NULL, k->pkey) > 0;
    if (ok && a->family == FAM_PS)
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, a->md()) > 0;
    else if (ok && a->family == FAM_RS)
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) > 0;
    ok = ok && EVP_DigestVerify(ctx, sig, slen, input, ilen) == 1;
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return ok;
}

/* Options, checked (misuse raises).  `now` and the leeway for the claims;
 * the JWKS ones are read by the Lua layer. */
typedef struct verify_opts {
    double now, leeway;
    int algorithms; /* stack index of the list, or 0 */
    int audience, issuer;
} verify_opts;

static void read_opts(lua_State *L, int idx, verify_opts *o)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts); /* the precise clock: see the expiry note below */
    memset(o, 0, sizeof(*o));
    o->now = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    if (lua_isnoneornil(L, idx)) return;
    luaL_checktype(L, idx, LUA_TTABLE);
    static const char *const known[] = {"leeway", "now", "algorithms", "audience", "issuer",
                                        "jwks_refetch", "jwks_max_age", "jwks_timeout", "ca",
                                        NULL};
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        int i = 0;
        while (k && known[i] && strcmp(known[i], k) != 0)
            i++;
        if (!k || !known[i])
            luaL_argerror(L, idx, lua_pushfstring(L, "unknown option '%s'", k ? k : "?"));
    }
    if (lua_getfield(L, idx, "leeway") != LUA_TNIL) {
        lx_check_field(L, idx, LUA_TNUMBER, "leeway");
        o->leeway = lua_tonumber(L, -1);
        if (!(o->leeway >= 0 && o->leeway <= 86400)) luaL_argerror(L, idx, "leeway must be 0 to 86400");
    }
    if (lua_getfield(L, idx, "now") != LUA_TNIL) {
        lx_check_field(L, idx, LUA_TNUMBER, "now");
        o->now = lua_tonumber(L, -1);
    }
    lua_pop(L, 2);
    static const char *const lists[] = {"algorithms", "audience", "issuer"};
    int *slots[] = {&o->algorithms, &o->audience, &o->issuer};
    for (int i = 0; i < 3; i++) {
        int t = lua_getfield(L, idx, lists[i]);
        if (t == LUA_TNIL) {
            lua_pop(L, 1);
            continue;
        }
        if (t == LUA_TSTRING && i > 0) {
            lua_createtable(L, 1, 0); /* one name: a list of one */
            lua_insert(L, -2);
            lua_rawseti(L, -2, 1);
        } else if (t != LUA_TTABLE) {
            luaL_argerror(L, idx, lua_pushfstring(L, "%s must be a %s", lists[i],
                                                  i ? "string or a list of strings" : "list of names"));
        }
        lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
        for (lua_Integer j = 1; j <= n; j++) {
            if (lua_rawgeti(L, -1, j) != LUA_TSTRING)
                luaL_argerror(L, idx, lua_pushfstring(L, "%s must list strings", lists[i]));
            lua_pop(L, 1);
        }
        *slots[i] = lua_gettop(L); /* left on the stack for the checks */
    }
    if (lua_getfield(L, idx, "jwks_refetch") != LUA_TNIL) lx_check_field(L, idx, LUA_TNUMBER, "jwks_refetch");
    if (lua_getfield(L, idx, "jwks_max_age") != LUA_TNIL) lx_check_field(L, idx, LUA_TNUMBER, "jwks_max_age");
    if (lua_getfield(L, idx, "jwks_timeout") != LUA_TNIL) lx_check_field(L, idx, LUA_TNUMBER, "jwks_timeout");
    if (lua_getfield(L, idx, "ca") != LUA_TNIL) lx_check_field(L, idx, LUA_TSTRING, "ca");
    lua_pop(L, 4);
}

static bool in_list(lua_State *L, int list, const char *s, size_t n)
{
    lua_Integer len = (lua_Integer)lua_rawlen(L, list);
    for (lua_Integer i = 1; i <= len; i++) {
        size_t m;
        lua_rawgeti(L, list, i);
        const char *v = lua_tolstring(L, -1, &m);
        bool eq = v && m == n && memcmp(v, s, n) == 0;
        lua_pop(L, 1);
        if (eq) return true;
    }
    return false;
}

static int fail(lua_State *L, const char *why)
{
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
}

/* Checks the signature of the token at 1 with the keys at 2.  On success
 * leaves the header table and the payload string on the stack and returns
 * 0; else returns what fail() or fail_kid() pushed (nothing else left). */
static int check_signature(lua_State *L, const verify_opts *o)
{
    size_t tlen;
    const char *token = luaL_checklstring(L, 1, &tlen);
    if (lua_isnoneornil(L, 2)) return luaL_argerror(L, 2, "keys expected");
    if (tlen > JWT_MAX) return fail(L, "token too long");
    const char *dot1 = memchr(token, '.', tlen);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', tlen - (size_t)(dot1 + 1 - token)) : NULL;
    if (!dot1 || !dot2 || memchr(dot2 + 1, '.', tlen - (size_t)(dot2 + 1 - token)))
        return fail(L, "malformed token");
    size_t hlen = (size_t)(dot1 - token), plen = (size_t)(dot2 - dot1 - 1),
           slen = tlen - (size_t)(dot2 + 1 - token);
    unsigned char *buf = malloc(tlen + 3); /* each part decodes into less than itself */
    if (!buf) return luaL_error(L, "out of memory");
    int top = lua_gettop(L);
    ssize_t hn = b64u_decode(token, hlen, buf);
    if (hn < 0 || !push_json(L, (const char *)buf, (size_t)hn) || !lua_istable(L, -1)) {
        lua_settop(L, top);
        free(buf);
        return fail(L, "malformed token");
    }
    int header = top + 1;
    lua_getfield(L, header, "alg");
    const char *alg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    const alg_info *a = NULL;
    for (size_t i = 0; alg && i < sizeof(algs) / sizeof(algs[0]); i++)
        if (strcmp(alg, algs[i].name) == 0) a = &algs[i];
    lua_pop(L, 1);
    const char *why = NULL;
    if (!a) why = "unsupported algorithm";
    else if (o->algorithms && !in_list(L, o->algorithms, a->name, strlen(a->name)))
        why = "algorithm not allowed";
    else if (lua_getfield(L, header, "crit") != LUA_TNIL)
        why = "unsupported critical header"; /* RFC 7515 4.1.11: we understand no extension */
    else if (lua_pop(L, 1), lua_getfield(L, header, "b64") != LUA_TNIL)
        why = "unsupported b64 header";
    else
        lua_pop(L, 1);
    if (why) {
        free(buf);
        lua_settop(L, top);
        return fail(L, why);
    }
    if (lua_gettop(L) > header) lua_settop(L, header);
    why = keys_arg(L, 2);
    if (why) {
        free(buf);
        lua_settop(L, top);
        return fail(L, why);
    }
    keyset *ks = lua_touserdata(L, -1);
    lua_getfield(L, header, "kid");
    size_t kidlen = 0;
    const char *kid = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &kidlen) : NULL;
    ssize_t sn = b64u_decode(dot2 + 1, slen, buf);
    bool ok = false, any_fits = false, any_kid = false;
    if (sn >= 0) {
        /* With a kid, the keys of that kid; if none has it, the keys
         * without one (a PEM, a bare secret). */
        for (int pass = 0; pass < 2 && !ok && !any_fits; pass++) {
            for (int i = 0; i < ks->n && !ok; i++) {
                const jwk *k = &ks->keys[i];
                if (k->has_kid) any_kid = true;
                if (kid && (pass == 0 ? !(k->has_kid && strlen(k->kid) == kidlen &&
                                          memcmp(k->kid, kid, kidlen) == 0)
                                      : k->has_kid))
                    continue;
                if (!kid && pass == 1) break;
                if (!key_fits(k, a)) continue;
                any_fits = true;
                ok = verify_with(k, a, (const unsigned char *)token, (size_t)(dot2 - token), buf,
                                 (size_t)sn);
            }
        }
    }
    lua_pop(L, 2); /* kid, the set */
    if (!ok) {
        free(buf);
        lua_settop(L, top);
        if (sn < 0) return fail(L, "malformed token");
        if (!any_fits && kid && any_kid) {
            lua_pushnil(L);
            lua_pushliteral(L, "unknown kid");
            lua_pushboolean(L, 1); /* for the JWKS layer: fetch the set again */
            return 3;
        }
        if (!any_fits) return fail(L, "no key for this algorithm");
        return fail(L, "bad signature");
    }
    ssize_t pn = b64u_decode(dot1 + 1, plen, buf);
    if (pn < 0) {
        free(buf);
        lua_settop(L, top);
        return fail(L, "malformed token");
    }
    lua_pushlstring(L, (const char *)buf, (size_t)pn);
    free(buf);
    return 0;
}

/* sluice.jws.verify(token, keys [, opts]) -> payload, header | nil, reason */
static int l_jws_verify(lua_State *L)
{
    verify_opts o;
    lua_settop(L, 3);
    read_opts(L, 3, &o);
    int base = lua_gettop(L);
    int r = check_signature(L, &o);
    if (r) return r;
    lua_pushvalue(L, base + 2);
    lua_pushvalue(L, base + 1);
    return 2;
}

static bool number_claim(lua_State *L, int claims, const char *name, double *v, bool *bad)
{
    int t = lua_getfield(L, claims, name);
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return false;
    }
    if (t != LUA_TNUMBER) *bad = true;
    *v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return t == LUA_TNUMBER;
}

/* sluice.jwt.verify(token, keys [, opts]) -> claims | nil, reason */
static int l_jwt_verify(lua_State *L)
{
    verify_opts o;
    lua_settop(L, 3);
    read_opts(L, 3, &o);
    int base = lua_gettop(L);
    int r = check_signature(L, &o);
    if (r) return r;
    size_t plen;
    const char *payload = lua_tolstring(L, base + 2, &plen);
    if (!push_json(L, payload, plen) || !lua_istable(L, -1)) return fail(L, "malformed token");
    int claims = lua_gettop(L);
    double v;
    bool bad = false;
    if (number_claim(L, claims, "exp", &v, &bad) && o.now >= v + o.leeway) return fail(L, "token expired");
    if (bad) return fail(L, "token expired"); /* an exp that is not a time */
    if (number_claim(L, claims, "nbf", &v, &bad) && o.now + o.leeway < v)
        return fail(L, "token not yet valid");
    if (bad) return fail(L, "token not yet valid");
    if (number_claim(L, claims, "iat", &v, &bad) && o.now + o.leeway < v)
        return fail(L, "token issued in the future");
    if (bad) return fail(L, "malformed token");
    if (o.issuer) {
        size_t n;
        lua_getfield(L, claims, "iss");
        const char *iss = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
        bool ok = iss && in_list(L, o.issuer, iss, n);
        lua_pop(L, 1);
        if (!ok) return fail(L, "wrong issuer");
    }
    /* RFC 7519 4.1.3: a token with an audience is refused by whoever is
     * not in it; one that names none is refused when an audience is
     * required. */
    int t = lua_getfield(L, claims, "aud");
    if (t != LUA_TNIL || o.audience) {
        bool ok = false;
        size_t n;
        if (o.audience && t == LUA_TSTRING) {
            const char *aud = lua_tolstring(L, -1, &n);
            ok = in_list(L, o.audience, aud, n);
        } else if (o.audience && t == LUA_TTABLE) {
            lua_Integer len = (lua_Integer)lua_rawlen(L, -1);
            for (lua_Integer i = 1; i <= len && !ok && i <= 64; i++) {
                if (lua_rawgeti(L, -1, i) == LUA_TSTRING) {
                    const char *aud = lua_tolstring(L, -1, &n);
                    ok = in_list(L, o.audience, aud, n);
                }
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
        if (!ok) return fail(L, o.audience ? "wrong audience" : "token has an audience (opts.audience not given)");
    } else {
        lua_pop(L, 1);
    }
    return 1;
}

/* sluice.jwt.keys(spec) -> key set | nil, reason: parses once what verify
 * would parse (a string or table) and keeps it. */
static int l_jwt_keys(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    const char *why = keyset_from(L, 1);
    if (why) return fail(L, why);
    return 1;
}

static int keyset_tostring(lua_State *L)
{
    keyset *s = luaL_checkudata(L, 1, KEYSET_MT);
    lua_pushfstring(L, "sluice.jwt key set (%d keys)", s->n);
    return 1;
}

static int keyset_len(lua_State *L)
{
    lua_pushinteger(L, ((keyset *)luaL_checkudata(L, 1, KEYSET_MT))->n);
    return 1;
}

/* The body of a JWKS URL -> key set | nil, reason: JSON of a JWK Set only.
 * Never a secret (an error page served with 200 must not become an HMAC
 * key anyone who can read it could sign with), and the set's "oct" keys
 * are dropped: a symmetric key published at a URL is no secret. */
static int l_parse_jwks(lua_State *L)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    lua_settop(L, 1);
    if (!push_json(L, text, len) || !lua_istable(L, -1)) return fail(L, "not a JWK Set");
    if (lua_getfield(L, 2, "keys") != LUA_TTABLE) return fail(L, "not a JWK Set");
    lua_pop(L, 1);
    const char *why = keyset_from(L, 2);
    if (why) return fail(L, why);
    keyset *s = lua_touserdata(L, -1);
    int kept = 0;
    for (int i = 0; i < s->n; i++) {
        if (s->keys[i].type == KT_OCT) {
            jwk_clear(&s->keys[i]);
        } else {
            if (kept != i) {
                s->keys[kept] = s->keys[i];
                memset(&s->keys[i], 0, sizeof(s->keys[i])); /* one owner */
            }
            kept++;
        }
    }
    s->n = kept;
    if (kept == 0) return fail(L, "no public key in the JWK Set");
    return 1;
}

/* Whether the running code may wait (a handler's or timer's own
 * coroutine): the JWKS layer fetches only there. */
static int l_can_wait(lua_State *L)
{
    lx_app *app = app_of(L);
    lx_task *t = app->running_task;
    lua_pushboolean(L, t && t->co == L && lua_isyieldable(L));
    return 1;
}

static int l_clock(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9);
    return 1;
}

/* The JWKS layer: keys given as an http(s) URL.  Its arguments are the C
 * verifier (jwt's or jws's), jwt.keys, sluice.http.request, can_wait and
 * a monotonic clock; it returns the function the script calls.  One table
 * of sets per generation and verifier, keyed by URL. */
static const char JWKS_LUA[] =
    "local verify, parse, request, can_wait, clock = ...\n"
    "local sets, nsets = {}, 0\n"
    "local function fetch(url, e, opts)\n"
    "  if not can_wait() then\n"
    "    return nil, 'key set not loaded (it is fetched in a handler or a timer)'\n"
    "  end\n"
    "  e.fetching = true\n"
    "  local res, err = request{ url = url, timeout = opts and opts.jwks_timeout or 5,\n"
    "                            ca = opts and opts.ca }\n"
    "  e.fetching = false\n"
    "  local ks\n"
    "  if res and res.status ~= 200 then err = 'status ' .. res.status\n"
    "  elseif res then ks, err = parse(res.body) end\n"
    "  if not ks then\n"
    "    e.failed = clock()\n"
    "    return nil, 'key set fetch failed: ' .. tostring(err)\n"
    "  end\n"
    "  e.keys, e.at = ks, clock()\n"
    "  return ks\n"
    "end\n"
    "return function(token, keys, opts)\n"
    "  if type(keys) ~= 'string' or not (keys:find('^[Hh][Tt][Tt][Pp][Ss]?://')) then\n"
    "    return verify(token, keys, opts)\n"
    "  end\n"
    "  if opts ~= nil and type(opts) ~= 'table' then return verify(token, keys, opts) end\n"
    "  local e = sets[keys]\n"
    "  if not e then\n"
    "    if nsets >= 16 then sets, nsets = {}, 0 end\n"
    "    e = { at = -math.huge, failed = -math.huge }\n"
    "    sets[keys], nsets = e, nsets + 1\n"
    "  end\n"
    "  local every = opts and opts.jwks_refetch or 30\n"
    "  local max_age = opts and opts.jwks_max_age or 600\n"
    "  local now = clock()\n"
    "  if not e.keys then\n"
    "    if now - e.failed < every then\n"
    "      return nil, 'key set not available (its last fetch failed)'\n"
    "    end\n"
    "    local ok, err = fetch(keys, e, opts)\n"
    "    if not e.keys then return nil, err end\n"
    "  elseif now - e.at > max_age and not e.fetching and now - e.failed >= every then\n"
    "    fetch(keys, e, opts)\n"
    "  end\n"
    "  local a, b, unknown_kid = verify(token, e.keys, opts)\n"
    "  if unknown_kid and not e.fetching and clock() - e.at >= every\n"
    "     and clock() - e.failed >= every then\n"
    "    if fetch(keys, e, opts) then a, b = verify(token, e.keys, opts) end\n"
    "  end\n"
    "  return a, b\n"
    "end\n";

static int entry_k(lua_State *L, int status, lua_KContext ctx)
{
    return lua_gettop(L);
}

/* What the script calls: the C verifier itself, so that its errors name
 * the script's line; keys given as a URL go through the JWKS layer (upvalue
 * 1), after the arguments were checked here. */
static int verify_entry(lua_State *L)
{
    size_t n;
    const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tolstring(L, 2, &n) : NULL;
    bool url = k && (strncasecmp(k, "http://", 7) == 0 || strncasecmp(k, "https://", 8) == 0);
    lua_CFunction fn = lua_tocfunction(L, lua_upvalueindex(2));
    if (!url) return fn(L);
    luaL_checkstring(L, 1);
    lua_settop(L, 3);
    verify_opts o;
    read_opts(L, 3, &o);
    lua_settop(L, 3);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_callk(L, 3, LUA_MULTRET, 0, entry_k);
    return entry_k(L, LUA_OK, 0);
}

/* Pushes the verify function around the C verifier fn. */
static void push_jwks_layer(lua_State *L, lua_CFunction fn, int http)
{
    if (luaL_loadbuffer(L, JWKS_LUA, sizeof(JWKS_LUA) - 1, "=sluice.jwt") != LUA_OK)
        lua_error(L);
    lua_pushcfunction(L, fn);
    lua_pushcfunction(L, l_parse_jwks);
    lua_getfield(L, http, "request");
    lua_pushcfunction(L, l_can_wait);
    lua_pushcfunction(L, l_clock);
    lua_call(L, 5, 1);
    lua_pushcfunction(L, fn);
    lua_pushcclosure(L, verify_entry, 2);
}

void lx_open_jwt(lua_State *L)
{
    if (luaL_newmetatable(L, KEYSET_MT)) {
        lua_pushcfunction(L, keyset_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, keyset_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushcfunction(L, keyset_len);
        lua_setfield(L, -2, "__len");
    }
    lua_pop(L, 1);
    lx_hide_metatable(L, KEYSET_MT);
    int module = lua_gettop(L);
    lua_getfield(L, module, "http"); /* lx_open_http ran before */
    int http = lua_gettop(L);
    lua_createtable(L, 0, 2);
    push_jwks_layer(L, l_jwt_verify, http);
    lua_setfield(L, -2, "verify");
    lua_pushcfunction(L, l_jwt_keys);
    lua_setfield(L, -2, "keys");
    lua_setfield(L, module, "jwt");
    lua_createtable(L, 0, 1);
    push_jwks_layer(L, l_jws_verify, http);
    lua_setfield(L, -2, "verify");
    lua_setfield(L, module, "jws");
    lua_settop(L, module);
}
