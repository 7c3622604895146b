/* utf8_test.c: the UTF-8 validator against Markus Kuhn's decoder stress
 * cases (boundaries, overlongs, surrogates, truncated and stray sequences,
 * the U+10FFFF ceiling), fed whole and one byte at a time, with the
 * earliest-rejection byte checked where the RFC wants a fast failure. */
#include "core/utf8.h"
#include "check.h"

typedef struct {
    const char *s;
    size_t len;
    bool valid;
} utf8_case;

#define V(str)                                                                                     \
    {                                                                                              \
        str, sizeof(str) - 1, true                                                                 \
    }
#define X(str)                                                                                     \
    {                                                                                              \
        str, sizeof(str) - 1, false                                                                \
    }

static const utf8_case cases[] = {
    V(""),
    V("hello, world"),
    V("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"), /* kosme */
    /* 2 first possible sequence of a certain length */
    V("\x00"),
    V("\xc2\x80"),
    V("\xe0\xa0\x80"),
    V("\xf0\x90\x80\x80"),
    /* 2.2 last possible of a certain length */
    V("\x7f"),
    V("\xdf\xbf"),
    V("\xef\xbf\xbf"),
    V("\xf4\x8f\xbf\xbf"), /* U+10FFFF */
    X("\xf7\xbf\xbf\xbf"), /* U+1FFFFF */
    X("\xf4\x90\x80\x80"), /* U+110000 */
    X("\xf8\x88\x80\x80\x80"),
    X("\xfc\x84\x80\x80\x80\x80"),
    /* 2.3 other boundaries */
    V("\xed\x9f\xbf"), /* U+D7FF */
    V("\xee\x80\x80"), /* U+E000 */
    V("\xef\xbf\xbd"), /* U+FFFD */
    V("\xef\xbf\xbe"), /* U+FFFE: noncharacter, but valid UTF-8 */
    /* 3.1 unexpected continuation bytes */
    X("\x80"),
    X("\xbf"),
    X("\x80\xbf"),
    X("a\x80"),
    X("\xc2\x80\x80"),
    /* 3.2 lonely start characters */
    X("\xc0 "),
    X("\xc2 "),
    X("\xe0 "),
    X("\xf0 "),
    X("\xf8 "),
    X("\xfc "),
    /* 3.3 sequences with last byte missing */
    X("\xc2"),
    X("\xe0\xa0"),
    X("\xf0\x90\x80"),
    X("\xdf"),
    X("\xef\xbf"),
    X("\xf4\x8f\xbf"),
    /* 3.4 concatenation of incomplete sequences */
    X("\xc0\xe0\x80\xf0\x80\x80\xdf\xef\xbf\xf7\xbf\xbf"),
    /* 3.5 impossible bytes */
    X("\xfe"),
    X("\xff"),
    X("\xfe\xfe\xff\xff"),
    /* 4 overlong forms */
    X("\xc0\xaf"),
    X("\xe0\x80\xaf"),
    X("\xf0\x80\x80\xaf"),
    X("\xc1\xbf"),
    X("\xe0\x9f\xbf"),
    X("\xf0\x8f\xbf\xbf"),
    X("\xc0\x80"),
    X("\xe0\x80\x80"),
    X("\xf0\x80\x80\x80"),
    /* 5 surrogates */
    X("\xed\xa0\x80"),
    X("\xed\xad\xbf"),
    X("\xed\xae\x80"),
    X("\xed\xaf\xbf"),
    X("\xed\xb0\x80"),
    X("\xed\xbe\x80"),
    X("\xed\xbf\xbf"),
    X("\xed\xa0\x80\xed\xb0\x80"),
    X("\xed\xaf\xbf\xed\xbf\xbf"),
    /* 6 valid runs mixed */
    V("a\xc3\xa9z\xe2\x82\xac\xf0\x9f\x98\x80!"),
    V("0123456789abcdef0123456789abcdef\xc3\xa9"),
    X("0123456789abcdef0123456789abcdef\xc3"),
    X("0123456789abcdef0123456789abcde\xff"),
};

/* Index of the byte at which a validator fed one byte at a time first says
 * UTF8_INVALID, or -1. */
static long first_reject(const char *s, size_t len)
{
    utf8_state st;
    utf8_init(&st);
    for (size_t i = 0; i < len; i++)
        if (utf8_feed(&st, s + i, 1) == UTF8_INVALID) return (long)i;
    return -1;
}

static void test_cases(void)
{
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const utf8_case *c = &cases[i];
        bool whole = utf8_valid(c->s, c->len);
        if (whole != c->valid) fprintf(stderr, "case %zu: whole says %d\n", i, whole);
        CHECK(whole == c->valid);

        /* every split point in two chunks agrees */
        for (size_t cut = 0; cut <= c->len; cut++) {
            utf8_state st;
            utf8_init(&st);
            utf8_feed(&st, c->s, cut);
            utf8_result r = utf8_feed(&st, c->s + cut, c->len - cut);
            if ((r == UTF8_OK) != c->valid) {
                fprintf(stderr, "case %zu cut %zu: %d\n", i, cut, r);
                CHECK(0);
            }
        }
        /* byte by byte */
        utf8_state st;
        utf8_init(&st);
        for (size_t k = 0; k < c->len; k++)
            utf8_feed(&st, c->s + k, 1);
        CHECK((utf8_state_result(&st) == UTF8_OK) == c->valid);
    }
}

static void test_incremental(void)
{
    utf8_state st;
    utf8_init(&st);
    CHECK_EQ_INT(utf8_state_result(&st), UTF8_OK);
    CHECK_EQ_INT(utf8_feed(&st, NULL, 0), UTF8_OK);
    CHECK_EQ_INT(utf8_feed(&st, "\xf0", 1), UTF8_INCOMPLETE);
    CHECK_EQ_INT(utf8_feed(&st, "\x9f\x98", 2), UTF8_INCOMPLETE);
    CHECK_EQ_INT(utf8_feed(&st, "\x80", 1), UTF8_OK);
    CHECK_EQ_INT(utf8_feed(&st, "\xff", 1), UTF8_INVALID);
    /* sticky */
    CHECK_EQ_INT(utf8_feed(&st, "a", 1), UTF8_INVALID);
    CHECK_EQ_INT(utf8_state_result(&st), UTF8_INVALID);
    utf8_init(&st);
    CHECK_EQ_INT(utf8_feed(&st, "a", 1), UTF8_OK);

    /* Fail fast: reject at the byte that makes validity impossible. */
    CHECK_EQ_INT(first_reject("\xe0\x80\x80", 3), 1);     /* overlong */
    CHECK_EQ_INT(first_reject("\xed\xa0\x80", 3), 1);     /* surrogate */
    CHECK_EQ_INT(first_reject("\xf4\x90\x80\x80", 4), 1); /* > U+10FFFF */
    CHECK_EQ_INT(first_reject("\xf0\x80\x80\x80", 4), 1); /* overlong */
    CHECK_EQ_INT(first_reject("\xc0\x80", 2), 0);
    CHECK_EQ_INT(first_reject("\xf5", 1), 0);
    CHECK_EQ_INT(first_reject("ab\xc3(", 4), 3);
    /* Autobahn 6.4.1's payload: fails at the 90 after F4, mid-text. */
    const char *k = "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80"
                    "edited";
    CHECK_EQ_INT(first_reject(k, strlen(k)), 12);
}

/* Every code point encoded by hand is valid; every surrogate is not. */
static void test_all_code_points(void)
{
    unsigned bad = 0;
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        uint8_t b[4];
        size_t n;
        if (cp < 0x80) {
            b[0] = (uint8_t)cp;
            n = 1;
        } else if (cp < 0x800) {
            b[0] = (uint8_t)(0xC0 | cp >> 6);
            b[1] = (uint8_t)(0x80 | (cp & 63));
            n = 2;
        } else if (cp < 0x10000) {
            b[0] = (uint8_t)(0xE0 | cp >> 12);
            b[1] = (uint8_t)(0x80 | ((cp >> 6) & 63));
            b[2] = (uint8_t)(0x80 | (cp & 63));
            n = 3;
        } else {
            b[0] = (uint8_t)(0xF0 | cp >> 18);
            b[1] = (uint8_t)(0x80 | ((cp >> 12) & 63));
            b[2] = (uint8_t)(0x80 | ((cp >> 6) & 63));
            b[3] = (uint8_t)(0x80 | (cp & 63));
            n = 4;
        }
        bool want = !(cp >= 0xD800 && cp <= 0xDFFF);
        if (utf8_valid(b, n) != want) bad++;
    }
    CHECK_EQ_INT(bad, 0);
}

/* All two-byte strings against a direct reading of RFC 3629's grammar:
 * exactly the well-formed ones are valid. */
static void test_all_pairs(void)
{
    unsigned bad = 0;
    for (unsigned a = 0; a < 256; a++)
        for (unsigned b = 0; b < 256; b++) {
            uint8_t s[2] = {(uint8_t)a, (uint8_t)b};
            bool want =
                (a < 0x80 && b < 0x80) || (a >= 0xC2 && a <= 0xDF && b >= 0x80 && b <= 0xBF);
            if (utf8_valid(s, 2) != want) bad++;
        }
    CHECK_EQ_INT(bad, 0);
}

/* Long ASCII runs with a bad byte at every offset: the word-at-a-time path
 * must not skip it. */
static void test_ascii_fast_path(void)
{
    char buf[100];
    memset(buf, 'x', sizeof(buf));
    CHECK(utf8_valid(buf, sizeof(buf)));
    unsigned bad = 0;
    for (size_t i = 0; i < sizeof(buf); i++) {
        buf[i] = (char)0x80;
        if (utf8_valid(buf, sizeof(buf))) bad++;
        buf[i] = (char)0xC3; /* truncated or followed by 'x' */
        if (utf8_valid(buf, sizeof(buf))) bad++;
        buf[i] = 'x';
    }
    CHECK_EQ_INT(bad, 0);
}

int main(void)
{
    test_cases();
    test_incremental();
    test_all_code_points();
    test_all_pairs();
    test_ascii_fast_path();
    return CHECK_DONE();
}
