/* cluster_token_test.c: the topic <-> NATS subject token encoding of
 * cluster mode (storage/cluster.h).  Every byte string must map to one
 * token that is a valid, wildcard-free NATS subject token (no '.', '*',
 * '>', whitespace, nothing outside printable ASCII) and back to itself;
 * every string the encoder does not produce must be refused, so that one
 * topic has exactly one subject.  Vectors, every single byte, random
 * strings, and random corruptions of valid tokens. */
#include "storage/cluster.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* A valid NATS token as the server parses subjects: no separators, no
 * wildcard characters, no whitespace or control bytes. */
static int token_valid(const char *t, size_t n)
{
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)t[i];
        if (c <= ' ' || c >= 0x7f || c == '.' || c == '*' || c == '>') return 0;
    }
    return 1;
}

static void round_trip(const char *s, size_t n)
{
    char enc[3 * 256 + 1], back[256];
    size_t el = cluster_token_encode(s, n, enc, sizeof enc);
    CHECK(el >= n && el <= 3 * n);
    CHECK_EQ_INT(strlen(enc), el);
    CHECK(token_valid(enc, el));
    long bl = cluster_token_decode(enc, el, back, sizeof back);
    CHECK_EQ_INT(bl, (long)n);
    if (bl == (long)n) CHECK_EQ_MEM(back, n, s, n);
}

static void test_vectors(void)
{
    static const char *const vec[][2] = {
        {"room-1", "room-1"},
        {"rooms.lobby", "rooms%2Elobby"},
        {"a*b", "a%2Ab"},
        {">", "%3E"},
        {"with space", "with%20space"},
        {"100%", "100%25"},
        {"caf\xc3\xa9", "caf%C3%A9"},
        {"a:b_c-D9", "a:b_c-D9"},
    };
    char out[64], back[64];
    for (size_t i = 0; i < sizeof vec / sizeof vec[0]; i++) {
        size_t n = strlen(vec[i][0]);
        size_t el = cluster_token_encode(vec[i][0], n, out, sizeof out);
        CHECK_EQ_MEM(out, el, vec[i][1], strlen(vec[i][1]));
        CHECK_EQ_INT(cluster_token_decode(out, el, back, sizeof back), (long)n);
        CHECK_EQ_MEM(back, n, vec[i][0], n);
    }
    /* The output bound is exact: 3 bytes per byte and the NUL. */
    CHECK_EQ_INT(cluster_token_encode("..", 2, out, 7), 6);
    CHECK_EQ_INT(cluster_token_encode("..", 2, out, 6), 0);
}

static void test_rejects(void)
{
    static const char *const bad[] = {
        "a.b",   /* a separator */
        "a*",    /* a wildcard */
        ">",     /* the other */
        "a b",   /* whitespace */
        "%2e",   /* lower-case hex */
        "%41",   /* 'A' needs no escape: not canonical */
        "%3",    /* truncated */
        "%",     /* truncated */
        "%G0",   /* not hex */
        "caf\xc3\xa9", /* raw non-ASCII */
    };
    char back[64];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_EQ_INT(cluster_token_decode(bad[i], strlen(bad[i]), back, sizeof back), -1);
    /* Too small an output. */
    CHECK_EQ_INT(cluster_token_decode("abc", 3, back, 2), -1);
}

static void test_every_byte(void)
{
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        round_trip(&c, 1);
    }
}

static void test_random(void)
{
    char s[200];
    for (int iter = 0; iter < 20000; iter++) {
        size_t n = 1 + check_rnd() % sizeof s;
        int alphabet = (int)(check_rnd() % 3);
        for (size_t i = 0; i < n; i++) {
            if (alphabet == 0) /* sluice's topic characters */
                s[i] = "abcXYZ019_.:-"[check_rnd() % 13];
            else if (alphabet == 1) /* NATS's special ones among them */
                s[i] = "a.*> %\t"[check_rnd() % 7];
            else
                s[i] = (char)(check_rnd() & 0xff);
        }
        round_trip(s, n);
        /* Distinct strings, distinct tokens (the encoding is injective):
         * change one byte and compare. */
        char t[200];
        memcpy(t, s, n);
        size_t pos = check_rnd() % n;
        t[pos] = (char)(t[pos] ^ (1 + check_rnd() % 255));
        char e1[601], e2[601];
        size_t l1 = cluster_token_encode(s, n, e1, sizeof e1);
        size_t l2 = cluster_token_encode(t, n, e2, sizeof e2);
        CHECK(l1 != l2 || memcmp(e1, e2, l1) != 0);
        /* A corrupted token decodes to something that encodes back to it,
         * or is refused. */
        e1[check_rnd() % l1] = (char)(check_rnd() & 0xff);
        char back[200];
        long bl = cluster_token_decode(e1, l1, back, sizeof back);
        if (bl >= 0) {
            char again[601];
            size_t al = cluster_token_encode(back, (size_t)bl, again, sizeof again);
            CHECK_EQ_MEM(again, al, e1, l1);
        }
    }
}

int main(void)
{
    test_vectors();
    test_rejects();
    test_every_byte();
    test_random();
    return CHECK_DONE();
}
