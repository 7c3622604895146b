/* b64_test.c: RFC 4648 section 10 test vectors both ways, every rejection
 * of the strict decoder, output bounds, and a random round trip. */
#include "core/b64.h"

#include <stdint.h>
#include <stdlib.h>

#include "check.h"

static void test_vectors(void)
{
    static const char *const vec[][2] = {
        {"", ""},
        {"f", "Zg=="},
        {"fo", "Zm8="},
        {"foo", "Zm9v"},
        {"foob", "Zm9vYg=="},
        {"fooba", "Zm9vYmE="},
        {"foobar", "Zm9vYmFy"},
    };
    char out[16], back[16];
    for (size_t i = 0; i < sizeof vec / sizeof vec[0]; i++) {
        size_t pl = strlen(vec[i][0]), el = strlen(vec[i][1]);
        CHECK_EQ_INT(b64_encoded_size(pl), el);
        CHECK_EQ_INT(b64_encode(out, sizeof out, vec[i][0], pl), el);
        CHECK_EQ_MEM(out, el, vec[i][1], el);
        CHECK(b64_decoded_max(el) >= pl && b64_decoded_max(el) - pl <= 2);
        CHECK_EQ_INT(b64_decode(back, sizeof back, vec[i][1], el), pl);
        CHECK_EQ_MEM(back, pl, vec[i][0], pl);
        /* Exact caps work, one less does not (and writes nothing). */
        CHECK_EQ_INT(b64_encode(out, el, vec[i][0], pl), el);
        CHECK_EQ_INT(b64_decode(back, pl, vec[i][1], el), pl);
        if (el) {
            memset(out, '#', sizeof out);
            CHECK_EQ_INT(b64_encode(out, el - 1, vec[i][0], pl), SL_ESPACE);
            CHECK(out[0] == '#');
        }
        if (pl) {
            memset(back, '#', sizeof back);
            CHECK_EQ_INT(b64_decode(back, pl - 1, vec[i][1], el), SL_ESPACE);
            CHECK(back[0] == '#');
        }
    }
    CHECK_EQ_INT(b64_encode(NULL, 0, NULL, 0), 0);
    CHECK_EQ_INT(b64_decode(NULL, 0, NULL, 0), 0);
    /* All 64 characters and the high bytes. */
    const uint8_t all[] = {0x00, 0x10, 0x83, 0x10, 0x51, 0x87, 0x20, 0x92, 0x8b, 0x30, 0xd3, 0x8f,
                           0x41, 0x14, 0x93, 0x51, 0x55, 0x97, 0x61, 0x96, 0x9b, 0x71, 0xd7, 0x9f,
                           0x82, 0x18, 0xa3, 0x92, 0x59, 0xa7, 0xa2, 0x9a, 0xab, 0xb2, 0xdb, 0xaf,
                           0xc3, 0x1c, 0xb3, 0xd3, 0x5d, 0xb7, 0xe3, 0x9e, 0xbb, 0xf3, 0xdf, 0xbf};
    const char *alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char o64[64];
    uint8_t b48[48];
    CHECK_EQ_INT(b64_encode(o64, sizeof o64, all, sizeof all), 64);
    CHECK_EQ_MEM(o64, 64, alpha, 64);
    CHECK_EQ_INT(b64_decode(b48, sizeof b48, alpha, 64), 48);
    CHECK_EQ_MEM(b48, 48, all, 48);
}

static void test_rejects(void)
{
    static const char *const bad[] = {
        "Z",        "Zg",       "Zg=",      "Zm9vY",     /* length not a multiple of 4 */
        "Zg=a",     "Z===",     "====",     "Zm=v",      /* padding in the wrong place */
        "=Zm9",     "Zg==Zg==", "Zm9v====",              /* padding then more */
        "Zh==",     "Zm9=",                              /* non-zero pad bits */
        "Zm9 ",     "Zm9\n",    "Zm-v",     "Zm_v",      /* outside the alphabet (URL-safe too) */
        "Zm9v\r\n", "Z\x80==",  "Zm\xff=",  "Zm9vYg=\0", /* high bytes, NUL, CRLF */
    };
    uint8_t out[16];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t l = i == sizeof bad / sizeof bad[0] - 1 ? 8 : strlen(bad[i]);
        ssize_t r = b64_decode(out, sizeof out, bad[i], l);
        CHECK_EQ_INT(r, SL_EINPUT);
        if (r != SL_EINPUT) fprintf(stderr, "  accepted: \"%s\"\n", bad[i]);
    }
    /* A NUL inside a quantum. */
    CHECK_EQ_INT(b64_decode(out, sizeof out, "Zm\0v", 4), SL_EINPUT);
}

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)rng;
}

static void test_round_trip(void)
{
    static uint8_t in[1000], back[1000];
    static char enc[1400];
    for (int it = 0; it < 5000; it++) {
        size_t len = rnd() % sizeof in;
        for (size_t i = 0; i < len; i++)
            in[i] = (uint8_t)rnd();
        ssize_t n = b64_encode(enc, sizeof enc, in, len);
        CHECK_EQ_INT(n, b64_encoded_size(len));
        ssize_t m = b64_decode(back, b64_decoded_max((size_t)n), enc, (size_t)n);
        if (m != (ssize_t)len || memcmp(in, back, len) != 0) {
            CHECK(0);
            break;
        }
        /* Flipping any one character to '=' (not at a valid pad spot) or to
         * a non-alphabet byte must be refused. */
        if (n >= 4) {
            size_t pos = rnd() % (size_t)(n - 2);
            char save = enc[pos];
            enc[pos] = (char)"!*.-_ \n"[rnd() % 7];
            CHECK_EQ_INT(b64_decode(back, sizeof back, enc, (size_t)n), SL_EINPUT);
            enc[pos] = save;
        }
    }
}

int main(void)
{
    test_vectors();
    test_rejects();
    test_round_trip();
    return CHECK_DONE();
}
