/* jsonenc_test.c: JSON string literals and message objects byte for byte,
 * size/encode agreement, the output bounds, and a round trip of random
 * valid UTF-8 through a small strict JSON string decoder written here. */
#include "core/jsonenc.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "core/b64.h"

/* Encodes s into a buffer of exactly the announced size. */
static void check_string(const char *s, size_t len, const char *want, size_t want_len)
{
    size_t n = json_string_size(s, len);
    CHECK_EQ_INT(n, want_len);
    char *b = malloc(n);
    CHECK_EQ_INT(json_string_encode(b, n, s, len), want_len);
    CHECK_EQ_MEM(b, n, want, want_len);
    for (size_t cap = 0; cap < n; cap++) /* exact-size mallocs: ASan sees overruns */
    {
        char *t = malloc(cap);
        CHECK_EQ_INT(json_string_encode(t, cap, s, len), SL_ESPACE);
        free(t);
    }
    free(b);
}
#define S(lit) lit, sizeof(lit) - 1

static void test_strings(void)
{
    check_string(S(""), S("\"\""));
    check_string(NULL, 0, S("\"\""));
    check_string(S("hello"), S("\"hello\""));
    check_string(S("a\"b\\c/d"), S("\"a\\\"b\\\\c/d\""));
    check_string(S("\b\f\n\r\t"), S("\"\\b\\f\\n\\r\\t\""));
    check_string(S("\x00\x01\x1f\x0b\x7f"), S("\"\\u0000\\u0001\\u001f\\u000b\x7f\""));
    check_string(S("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xe2\x80\xa8"),
                 S("\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xe2\x80\xa8\""));
    /* Every control byte, checked against a table written independently. */
    for (int c = 0; c < 0x20; c++) {
        char in = (char)c, want[16];
        int wl;
        switch (c) {
        case 8:
            wl = snprintf(want, sizeof want, "\"\\b\"");
            break;
        case 9:
            wl = snprintf(want, sizeof want, "\"\\t\"");
            break;
        case 10:
            wl = snprintf(want, sizeof want, "\"\\n\"");
            break;
        case 12:
            wl = snprintf(want, sizeof want, "\"\\f\"");
            break;
        case 13:
            wl = snprintf(want, sizeof want, "\"\\r\"");
            break;
        default:
            wl = snprintf(want, sizeof want, "\"\\u%04x\"", c);
        }
        check_string(&in, 1, want, (size_t)wl);
    }
}

static void check_msg(const struct json_msg *m, const char *want)
{
    size_t n = json_msg_size(m), wl = strlen(want);
    CHECK_EQ_INT(n, wl);
    char *b = malloc(n + 1);
    CHECK_EQ_INT(json_msg_encode(b, n, m), wl);
    CHECK_EQ_MEM(b, n, want, wl);
    free(b);
    for (size_t cap = 0; cap < n; cap++) {
        char *t = malloc(cap);
        CHECK_EQ_INT(json_msg_encode(t, cap, m), SL_ESPACE);
        free(t);
    }
}

static void test_msgs(void)
{
    /* Long-poll items: no topic member. */
    check_msg(&(struct json_msg){.id = S("17"), .event = NULL, .data = S("hi")},
              "{\"id\":\"17\",\"event\":null,\"data\":\"hi\"}");
    check_msg(&(struct json_msg){.id = S("17-0"), .event = S("up\"d"), .data = S("a\nb")},
              "{\"id\":\"17-0\",\"event\":\"up\\\"d\",\"data\":\"a\\nb\"}");
    check_msg(&(struct json_msg){.id = S("1"), .event = S(""), .data = NULL, .data_len = 0},
              "{\"id\":\"1\",\"event\":\"\",\"data\":\"\"}");
    /* WebSocket envelopes: topic member, null when absent. */
    check_msg(&(struct json_msg){.id = S("5"),
                                 .topic = S("news"),
                                 .event = S("e"),
                                 .data = S("\xc3\xa9"),
                                 .flags = JSON_MSG_TOPIC},
              "{\"id\":\"5\",\"topic\":\"news\",\"event\":\"e\",\"data\":\"\xc3\xa9\"}");
    check_msg(
        &(struct json_msg){.id = S("5"), .topic = NULL, .data = S("x"), .flags = JSON_MSG_TOPIC},
        "{\"id\":\"5\",\"topic\":null,\"event\":null,\"data\":\"x\"}");
    /* Base64 data: encoded in place, marked. */
    check_msg(&(struct json_msg){.id = S("9"), .data = S("\xff\x00\xfe"), .flags = JSON_MSG_BASE64},
              "{\"id\":\"9\",\"event\":null,\"data\":\"/wD+\",\"encoding\":\"base64\"}");
    check_msg(&(struct json_msg){.id = S("9"),
                                 .topic = S("t"),
                                 .event = S("bin"),
                                 .data = S("f"),
                                 .flags = JSON_MSG_TOPIC | JSON_MSG_BASE64},
              "{\"id\":\"9\",\"topic\":\"t\",\"event\":\"bin\",\"data\":\"Zg==\","
              "\"encoding\":\"base64\"}");
    check_msg(&(struct json_msg){.id = S("9"), .data = NULL, .flags = JSON_MSG_BASE64},
              "{\"id\":\"9\",\"event\":null,\"data\":\"\",\"encoding\":\"base64\"}");
}

/* ---- Round trip ---- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes one JSON string literal that must span exactly [s, s+len); only
 * \u escapes below U+0080 are expected from the encoder.  Returns the
 * decoded length or -1. */
static long json_unquote(const char *s, size_t len, char *out)
{
    if (len < 2 || s[0] != '"' || s[len - 1] != '"') return -1;
    size_t o = 0;
    for (size_t i = 1; i < len - 1; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == '"') return -1;
        if (c != '\\') {
            out[o++] = (char)c;
            continue;
        }
        if (++i >= len - 1) return -1;
        switch (s[i]) {
        case '"':
            out[o++] = '"';
            break;
        case '\\':
            out[o++] = '\\';
            break;
        case '/':
            out[o++] = '/';
            break;
        case 'b':
            out[o++] = '\b';
            break;
        case 'f':
            out[o++] = '\f';
            break;
        case 'n':
            out[o++] = '\n';
            break;
        case 'r':
            out[o++] = '\r';
            break;
        case 't':
            out[o++] = '\t';
            break;
        case 'u': {
            if (i + 4 >= len - 1) return -1;
            int v = 0;
            for (int k = 1; k <= 4; k++) {
                int h = hexval(s[i + (size_t)k]);
                if (h < 0) return -1;
                v = v * 16 + h;
            }
            if (v >= 0x80) return -1;
            out[o++] = (char)v;
            i += 4;
            break;
        }
        default:
            return -1;
        }
    }
    return (long)o;
}

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)rng;
}

/* Random valid UTF-8 of up to max code points, biased to what needs
 * escaping; returns the byte length. */
static size_t rand_utf8(char *out, size_t max)
{
    size_t n = rnd() % (max + 1), o = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp, k = rnd() % 8;
        if (k < 3)
            cp = rnd() % 0x80;
        else if (k < 5)
            cp = "\"\\\n\r\t\b\f\x01\x1f/"[rnd() % 10];
        else if (k < 6)
            cp = 0x80 + rnd() % (0x800 - 0x80);
        else if (k < 7) {
            do
                cp = 0x800 + rnd() % (0x10000 - 0x800);
            while (cp >= 0xd800 && cp < 0xe000);
        } else
            cp = 0x10000 + rnd() % (0x110000 - 0x10000);
        if (cp < 0x80) {
            out[o++] = (char)cp;
        } else if (cp < 0x800) {
            out[o++] = (char)(0xc0 | cp >> 6);
            out[o++] = (char)(0x80 | (cp & 63));
        } else if (cp < 0x10000) {
            out[o++] = (char)(0xe0 | cp >> 12);
            out[o++] = (char)(0x80 | (cp >> 6 & 63));
            out[o++] = (char)(0x80 | (cp & 63));
        } else {
            out[o++] = (char)(0xf0 | cp >> 18);
            out[o++] = (char)(0x80 | (cp >> 12 & 63));
            out[o++] = (char)(0x80 | (cp >> 6 & 63));
            out[o++] = (char)(0x80 | (cp & 63));
        }
    }
    return o;
}

static void test_round_trip(void)
{
    static char in[4 * 300], enc[6 * sizeof in + 2], back[sizeof in];
    for (int it = 0; it < 20000; it++) {
        size_t len = rand_utf8(in, 300);
        size_t n = json_string_size(in, len);
        ssize_t w = json_string_encode(enc, sizeof enc, in, len);
        long d = json_unquote(enc, (size_t)w, back);
        if (w != (ssize_t)n || d != (long)len || memcmp(in, back, len) != 0) {
            CHECK(0);
            fprintf(stderr, "  round trip failed at iteration %d\n", it);
            break;
        }
    }
    CHECK(1);

    /* Base64 data inside an object decodes back to the raw bytes. */
    static uint8_t raw[500], raw_back[500];
    static char obj[1000];
    for (int it = 0; it < 2000; it++) {
        size_t len = rnd() % sizeof raw;
        for (size_t i = 0; i < len; i++)
            raw[i] = (uint8_t)rnd();
        struct json_msg m = {.id = S("1"), .data = raw, .data_len = len, .flags = JSON_MSG_BASE64};
        ssize_t w = json_msg_encode(obj, sizeof obj, &m);
        const char *pre = "{\"id\":\"1\",\"event\":null,\"data\":\"";
        const char *post = "\",\"encoding\":\"base64\"}";
        size_t pl = strlen(pre), ql = strlen(post);
        bool ok =
            w == (ssize_t)json_msg_size(&m) && (size_t)w >= pl + ql && memcmp(obj, pre, pl) == 0 &&
            memcmp(obj + w - ql, post, ql) == 0 &&
            b64_decode(raw_back, sizeof raw_back, obj + pl, (size_t)w - pl - ql) == (ssize_t)len &&
            memcmp(raw, raw_back, len) == 0;
        CHECK(ok);
        if (!ok) break;
    }
}

/* ---- JSON texts: json_valid and embedding (JSON_MSG_RAW) ---- */

static void test_valid(void)
{
    static const char *const good[] = {
        "0", "-0", "1.5e+3", "-12.25E-2", "true", "false", "null", "\"\"", " \"a\\u00e9\\n\" ",
        "[]", "{}", " [ 1 , [ ] , { } ] ", "{\"a\":{\"b\":[true,null,\"\\\"\"]}}",
        "\"caf\xc3\xa9\"", "\r\n\t{\"k\" : 1}\n", "[\"\\/\\b\\f\\r\\t\\uD83D\\ude00\"]",
    };
    static const char *const bad[] = {
        "", " ", "01", "1.", ".5", "-", "+1", "1e", "tru", "nul", "True", "NaN", "'a'", "\"a",
        "\"\\x\"", "\"\\u12\"", "\"\x01\"", "[1,]", "[,1]", "{\"a\":1,}", "{a:1}", "{\"a\"}",
        "{\"a\" 1}", "[1 2]", "1 2", "[", "]", "{", "}", "[}", "{]", "\"\xff\"", "/*c*/1", "{\"a\":1}x",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        bool ok = json_valid(good[i], strlen(good[i]));
        if (!ok) fprintf(stderr, "json_valid refused: %s\n", good[i]);
        CHECK(ok);
    }
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        bool ok = json_valid(bad[i], strlen(bad[i]));
        if (ok) fprintf(stderr, "json_valid took: %s\n", bad[i]);
        CHECK(!ok);
    }
    CHECK(!json_valid("1\0", 2));
    /* Depth: JSON_VALID_DEPTH nested arrays are fine, one more is not. */
    static char deep[2 * (JSON_VALID_DEPTH + 1)];
    for (int extra = 0; extra < 2; extra++) {
        size_t d = JSON_VALID_DEPTH + (size_t)extra;
        memset(deep, '[', d);
        memset(deep + d, ']', d);
        CHECK(json_valid(deep, 2 * d) == !extra);
    }
    /* Embedded as it is, whitespace included, and marked. */
    check_msg(&(struct json_msg){.id = S("7"),
                                 .topic = S("t"),
                                 .data = S("{\"a\": [1, \"x\"]}"),
                                 .flags = JSON_MSG_TOPIC | JSON_MSG_RAW},
              "{\"id\":\"7\",\"topic\":\"t\",\"event\":null,\"data\":{\"a\": [1, \"x\"]},"
              "\"encoding\":\"json\"}");
    check_msg(&(struct json_msg){.id = S("8"), .data = S("\"s\""), .flags = JSON_MSG_RAW},
              "{\"id\":\"8\",\"event\":null,\"data\":\"s\",\"encoding\":\"json\"}");
}

int main(void)
{
    test_strings();
    test_msgs();
    test_round_trip();
    test_valid();
    return CHECK_DONE();
}
