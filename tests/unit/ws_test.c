/* ws_test.c: the WebSocket codec.  Streams of client frames are fed whole,
 * one byte at a time and in every chunk size up to 17, and must give the
 * same events each way; every RFC 6455 violation a server must catch is
 * checked for its close code and for being caught as early as the bytes
 * allow.  Then the encoder (checked by decoding what it wrote), the RFC's
 * own examples, and the handshake helpers. */
#include "core/ws.h"
#include "check.h"

#include <stdarg.h>
#include <stdlib.h>

/* ---- building client frames ---------------------------------------------- */

static const uint8_t MASK[4] = {0x37, 0xfa, 0x21, 0x3d};

/* One frame: b0 is the raw first byte (FIN, RSV, opcode); mask NULL sends it
 * unmasked; lenform 0 picks the shortest length encoding, or 7, 16, 64 force
 * one (for non-minimal encodings).  Returns its size. */
static size_t mkframe(uint8_t *out, unsigned b0, const void *pl, size_t len, const uint8_t *mask,
                      int lenform)
{
    size_t o = 0;
    out[o++] = (uint8_t)b0;
    uint8_t mbit = mask ? 0x80 : 0;
    if (lenform == 0) lenform = len < 126 ? 7 : len <= 0xFFFF ? 16 : 64;
    if (lenform == 7) {
        out[o++] = (uint8_t)(mbit | len);
    } else if (lenform == 16) {
        out[o++] = mbit | 126;
        out[o++] = (uint8_t)(len >> 8);
        out[o++] = (uint8_t)len;
    } else {
        out[o++] = mbit | 127;
        for (int i = 7; i >= 0; i--)
            out[o++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    if (mask) {
        memcpy(out + o, mask, 4);
        o += 4;
    }
    for (size_t i = 0; i < len; i++)
        out[o + i] = (uint8_t)(((const uint8_t *)pl)[i] ^ (mask ? mask[i & 3] : 0));
    return o + len;
}

/* Append a masked client frame to a growing stream. */
typedef struct {
    uint8_t *b;
    size_t len, cap;
} stream;

static void put(stream *s, unsigned b0, const void *pl, size_t len)
{
    if (s->len + len + 14 > s->cap) {
        s->cap = (s->len + len + 14) * 2;
        s->b = realloc(s->b, s->cap);
        if (!s->b) abort();
    }
    s->len += mkframe(s->b + s->len, b0, pl, len, MASK, 0);
}

/* ---- recording events ---------------------------------------------------- */

/* Messages are reassembled so that any split gives the same log:
 * "T:hello|" text, "B:<len>|" binary, "I:..|" ping, "O:..|" pong,
 * "C:1000:reason|" close. */
typedef struct {
    char log[1 << 17];
    size_t loglen;
    uint8_t msg[1 << 17];
    size_t msglen;
    int chunks;
    int stop_after; /* callback number that returns 1, 0 never */
    int calls;
} rec;

static void logf_(rec *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(rec *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->log + r->loglen, sizeof(r->log) - r->loglen, fmt, ap);
    va_end(ap);
    if (n > 0) r->loglen += (size_t)n;
    if (r->loglen >= sizeof(r->log)) r->loglen = sizeof(r->log) - 1;
}

static int stop(rec *r)
{
    return r->stop_after && ++r->calls == r->stop_after;
}

static int on_data(void *ud, int op, const uint8_t *data, size_t len, bool fin)
{
    rec *r = ud;
    /* checked per chunk, counted only when broken (there are millions) */
    if (op != WS_OP_TEXT && op != WS_OP_BINARY) CHECK(!"opcode of a data chunk");
    if (len == 0 && !fin) CHECK(!"empty chunk before the end");
    if (r->msglen + len <= sizeof(r->msg)) memcpy(r->msg + r->msglen, data, len);
    r->msglen += len;
    r->chunks++;
    if (fin) {
        if (op == WS_OP_TEXT)
            logf_(r, "T:%.*s|", (int)r->msglen, (const char *)r->msg);
        else
            logf_(r, "B:%zu|", r->msglen);
        r->msglen = 0;
    }
    return stop(r);
}

static int on_ping(void *ud, const uint8_t *p, size_t len)
{
    logf_(ud, "I:%.*s|", (int)len, (const char *)p);
    return stop(ud);
}

static int on_pong(void *ud, const uint8_t *p, size_t len)
{
    logf_(ud, "O:%.*s|", (int)len, (const char *)p);
    return stop(ud);
}

static int on_close(void *ud, unsigned code, const char *reason, size_t len)
{
    logf_(ud, "C:%u:%.*s|", code, (int)len, reason);
    return stop(ud);
}

static const ws_callbacks CB = {
    .on_data = on_data, .on_ping = on_ping, .on_pong = on_pong, .on_close = on_close};

typedef struct {
    unsigned err;    /* close code of the failure, 0 none */
    size_t fail_at;  /* bytes fed (whole chunks) when the failure came */
    size_t consumed; /* bytes counted consumed */
} result;

/* Feed a copy of in[0..len) to a fresh decoder in chunks of `chunk` bytes
 * (0: all at once); log into r. */
static result run(rec *r, const uint8_t *in, size_t len, size_t chunk, uint64_t max,
                  bool require_mask)
{
    ws_decoder d;
    result res = {0, 0, 0};
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) abort();
    memcpy(copy, in, len);
    memset(r, 0, offsetof(rec, msg));
    r->msglen = 0;
    r->chunks = 0;
    r->calls = 0;
    r->stop_after = 0;
    ws_decoder_init(&d, max, require_mask);
    if (!chunk) chunk = len ? len : 1;
    size_t off = 0;
    while (off < len) {
        size_t n = len - off < chunk ? len - off : chunk;
        ssize_t c = ws_decoder_feed(&d, copy + off, n, &CB, r);
        if (c < 0) {
            res.err = d.err_code;
            res.fail_at = off + n;
            CHECK(d.err_reason != NULL);
            /* refuses further input */
            CHECK_EQ_INT(ws_decoder_feed(&d, copy, len, &CB, r), SL_EPROTO);
            break;
        }
        CHECK_EQ_INT(c, n);
        res.consumed += (size_t)c;
        off += n;
    }
    free(copy);
    return res;
}

/* Run at every chunk size 0 (whole), 1..17 and check the same log and
 * error each time.  Returns the whole-feed result. */
static result run_all(rec *r, const uint8_t *in, size_t len, uint64_t max, const char *want_log,
                      unsigned want_err)
{
    result first = {0, 0, 0};
    for (size_t chunk = 0; chunk <= 17; chunk++) {
        result res = run(r, in, len, chunk, max, true);
        if (chunk == 0) first = res;
        if (res.err != want_err || strcmp(r->log, want_log) != 0) {
            fprintf(stderr, "chunk %zu: err %u (want %u) log \"%s\" want \"%s\"\n", chunk, res.err,
                    want_err, r->log, want_log);
            CHECK(0);
        } else {
            CHECK(1);
        }
    }
    return first;
}

static rec R; /* big: keep it off the stack */

/* ---- decoder: good streams ---------------------------------------------- */

static void test_rfc_examples(void)
{
    /* RFC 6455 section 5.7, fed to a decoder that accepts unmasked frames. */
    static const uint8_t hello_unmasked[] = {0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
    static const uint8_t hello_masked[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                           0x7f, 0x9f, 0x4d, 0x51, 0x58};
    static const uint8_t frag[] = {0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f};
    static const uint8_t ping[] = {0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
    static const uint8_t pong[] = {0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                   0x7f, 0x9f, 0x4d, 0x51, 0x58};
    result res;

    for (size_t chunk = 0; chunk <= 3; chunk++) {
        res = run(&R, hello_unmasked, sizeof(hello_unmasked), chunk, 0, false);
        CHECK_EQ_INT(res.err, 0);
        CHECK_STR(R.log, "T:Hello|");
        res = run(&R, hello_masked, sizeof(hello_masked), chunk, 0, false);
        CHECK_STR(R.log, "T:Hello|");
        res = run(&R, frag, sizeof(frag), chunk, 0, false);
        CHECK_STR(R.log, "T:Hello|");
        res = run(&R, ping, sizeof(ping), chunk, 0, false);
        CHECK_STR(R.log, "I:Hello|");
        res = run(&R, pong, sizeof(pong), chunk, 0, false);
        CHECK_STR(R.log, "O:Hello|");
    }
    /* The masked ones also pass a server decoder; the unmasked ones fail. */
    run_all(&R, hello_masked, sizeof(hello_masked), 0, "T:Hello|", 0);
    run_all(&R, pong, sizeof(pong), 0, "O:Hello|", 0);
    run_all(&R, hello_unmasked, sizeof(hello_unmasked), 0, "", WS_CLOSE_PROTOCOL_ERROR);
    res = run(&R, frag, sizeof(frag), 1, 0, true);
    CHECK_EQ_INT(res.err, WS_CLOSE_PROTOCOL_ERROR);
    CHECK_EQ_INT(res.fail_at, 2); /* told by the second byte */

    /* 256 bytes binary in one unmasked frame (16-bit length), and 64 KiB
     * (64-bit length). */
    static uint8_t big[14 + 65536];
    uint8_t pl[65536];
    memset(pl, 'z', sizeof(pl));
    size_t n = mkframe(big, 0x82, pl, 256, NULL, 0);
    CHECK_EQ_INT(big[1], 0x7E);
    CHECK_EQ_INT(big[2], 0x01);
    CHECK_EQ_INT(big[3], 0x00);
    run(&R, big, n, 0, 0, false);
    CHECK_STR(R.log, "B:256|");
    n = mkframe(big, 0x82, pl, 65536, NULL, 0);
    static const uint8_t h64[] = {0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0};
    CHECK_EQ_MEM(big, 10, h64, 10);
    run(&R, big, n, 0, 0, false);
    CHECK_STR(R.log, "B:65536|");
    run(&R, big, n, 1, 0, false);
    CHECK_STR(R.log, "B:65536|");
    CHECK_EQ_INT(R.chunks, 65536); /* one chunk per byte fed */
}

static void test_every_frame_kind(void)
{
    stream s = {0};
    put(&s, 0x81, "hello", 5);
    put(&s, 0x82, "\x00\x01\x02", 3);
    put(&s, 0x81, "", 0); /* empty text */
    put(&s, 0x82, "", 0); /* empty binary */
    put(&s, 0x89, "", 0); /* empty ping */
    put(&s, 0x89, "are you there", 13);
    put(&s, 0x8A, "yes", 3);
    /* fragmented text with control frames between fragments */
    put(&s, 0x01, "fra", 3);
    put(&s, 0x89, "p1", 2);
    put(&s, 0x00, "", 0); /* empty middle fragment */
    put(&s, 0x00, "gm", 2);
    put(&s, 0x8A, "p2", 2);
    put(&s, 0x80, "ented", 5);
    /* fragmented binary ending in an empty final fragment */
    put(&s, 0x02, "abc", 3);
    put(&s, 0x00, "def", 3);
    put(&s, 0x80, "", 0);
    /* a UTF-8 character split across fragments (and so across feeds) */
    put(&s, 0x01, "\xf0\x9f", 2);
    put(&s, 0x80, "\x98\x80", 2);
    put(&s, 0x88,
        "\x03\xe8"
        "bye",
        5);
    put(&s, 0x81, "after close", 11); /* ignored */
    run_all(&R, s.b, s.len, 0,
            "T:hello|B:3|T:|B:0|I:|I:are you there|O:yes|I:p1|O:p2|T:fragmented|B:6|"
            "T:\xf0\x9f\x98\x80|C:1000:bye|",
            0);
    free(s.b);
}

static void test_lengths(void)
{
    static const size_t sizes[] = {0, 1, 125, 126, 127, 65535, 65536, 70000};
    static uint8_t pl[70000], fr[70000 + 14];
    for (size_t i = 0; i < sizeof(pl); i++)
        pl[i] = (uint8_t)('a' + i % 26);
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        size_t n = mkframe(fr, 0x82, pl, sizes[i], MASK, 0);
        char want[32];
        snprintf(want, sizeof(want), "B:%zu|", sizes[i]);
        run_all(&R, fr, n, 0, want, 0);
    }
    /* Non-minimal length encodings are allowed. */
    size_t n = mkframe(fr, 0x81, "hi", 2, MASK, 16);
    run_all(&R, fr, n, 0, "T:hi|", 0);
    n = mkframe(fr, 0x81, "hi", 2, MASK, 64);
    run_all(&R, fr, n, 0, "T:hi|", 0);
    n = mkframe(fr, 0x89, "hi", 2, MASK, 16); /* even for control frames */
    run_all(&R, fr, n, 0, "I:hi|", 0);

    /* Content check: unmasking gives back the payload exactly. */
    n = mkframe(fr, 0x82, pl, 70000, MASK, 0);
    ws_decoder d;
    ws_decoder_init(&d, 0, true);
    CHECK_EQ_INT(ws_decoder_feed(&d, fr, 1000, &CB, &R), 1000);
    CHECK_EQ_INT(ws_decoder_feed(&d, fr + 1000, n - 1000, &CB, &R), n - 1000);
    CHECK_EQ_INT(R.msglen, 0);
    CHECK_EQ_MEM(fr + 10 + 4, 70000, pl, 70000); /* unmasked in place */
}

static void test_message_limit(void)
{
    static uint8_t pl[2000], fr[4096];
    memset(pl, 'a', sizeof(pl));
    size_t n = mkframe(fr, 0x82, pl, 1000, MASK, 0);
    run_all(&R, fr, n, 1000, "B:1000|", 0);
    n = mkframe(fr, 0x82, pl, 1001, MASK, 0);
    result res = run_all(&R, fr, n, 1000, "", WS_CLOSE_TOO_BIG);
    /* detected from the header (8 bytes: 2 + 16-bit length + mask) */
    res = run(&R, fr, n, 1, 1000, true);
    CHECK_EQ_INT(res.fail_at, 4);
    CHECK_EQ_INT(R.chunks, 0);

    /* Across fragments: 600 + 400 passes, 600 + 401 fails at the second
     * header, before any of its payload. */
    stream s = {0};
    put(&s, 0x02, pl, 600);
    put(&s, 0x89, "", 0);
    put(&s, 0x80, pl, 400);
    put(&s, 0x02, pl, 1000); /* a new message starts from zero */
    put(&s, 0x80, "", 0);
    run_all(&R, s.b, s.len, 1000, "I:|B:1000|B:1000|", 0);
    s.len = 0;
    put(&s, 0x02, pl, 600);
    size_t first = s.len;
    put(&s, 0x80, pl, 401);
    res = run(&R, s.b, s.len, 1, 1000, true);
    CHECK_EQ_INT(res.err, WS_CLOSE_TOO_BIG);
    CHECK_EQ_INT(res.fail_at, first + 4);

    /* A 64-bit length near 2^63 with no limit: fails on overflow of the sum,
     * not by wrapping. */
    s.len = 0;
    put(&s, 0x02, "", 0);
    uint8_t h[14] = {0x00, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4};
    ws_decoder d;
    ws_decoder_init(&d, 0, true);
    CHECK_EQ_INT(ws_decoder_feed(&d, s.b, s.len, &CB, &R), s.len);
    CHECK_EQ_INT(ws_decoder_feed(&d, h, sizeof(h), &CB, &R), sizeof(h));
    CHECK(ws_decoder_in_message(&d));
    free(s.b);
}

/* ---- decoder: violations ------------------------------------------------- */

typedef struct {
    const char *name;
    uint8_t bytes[40];
    size_t len;
    unsigned code;
    size_t fail_at; /* bytes fed one at a time when it must fail; 0 = end */
} bad_case;

static void test_violations(void)
{
    /* Masked frames built by hand; mask 00 00 00 00 keeps payload legible. */
#define M 0, 0, 0, 0
    static const bad_case cases[] = {
        {"unmasked", {0x81, 0x01, 'a'}, 3, 1002, 2},
        {"rsv1", {0xC1, 0x81, M, 'a'}, 7, 1002, 1 + 1},
        {"rsv2", {0xA1, 0x81, M, 'a'}, 7, 1002, 2},
        {"rsv3", {0x91, 0x81, M, 'a'}, 7, 1002, 2},
        {"rsv on ping", {0x99, 0x80, M}, 6, 1002, 2},
        {"opcode 3", {0x83, 0x80, M}, 6, 1002, 2},
        {"opcode 7", {0x87, 0x80, M}, 6, 1002, 2},
        {"opcode 0xB", {0x8B, 0x80, M}, 6, 1002, 2},
        {"opcode 0xF", {0x8F, 0x80, M}, 6, 1002, 2},
        {"fragmented ping", {0x09, 0x80, M}, 6, 1002, 2},
        {"fragmented close", {0x08, 0x80, M}, 6, 1002, 2},
        {"ping 126", {0x89, 0xFE, 0, 126}, 4, 1002, 4},
        {"pong 127", {0x8A, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0x7E}, 10, 1002, 10},
        {"close 65536", {0x88, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0}, 10, 1002, 10},
        {"cont first", {0x80, 0x81, M, 'a'}, 7, 1002, 2},
        {"cont first nofin", {0x00, 0x81, M, 'a'}, 7, 1002, 2},
        {"text in text", {0x01, 0x81, M, 'a', 0x81, 0x81, M, 'b'}, 14, 1002, 9},
        {"binary in text", {0x01, 0x81, M, 'a', 0x82, 0x80, M}, 13, 1002, 9},
        {"cont after end", {0x81, 0x81, M, 'a', 0x80, 0x80, M}, 13, 1002, 9},
        {"64-bit top bit", {0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1, M}, 14, 1002, 10},
        {"close len 1", {0x88, 0x81, M, 0x03}, 7, 1002, 7},
        {"close 999", {0x88, 0x82, M, 0x03, 0xE7}, 8, 1002, 8},
        {"close 0", {0x88, 0x82, M, 0x00, 0x00}, 8, 1002, 8},
        {"close 1004", {0x88, 0x82, M, 0x03, 0xEC}, 8, 1002, 8},
        {"close 1005", {0x88, 0x82, M, 0x03, 0xED}, 8, 1002, 8},
        {"close 1006", {0x88, 0x82, M, 0x03, 0xEE}, 8, 1002, 8},
        {"close 1015", {0x88, 0x82, M, 0x03, 0xF7}, 8, 1002, 8},
        {"close 1016", {0x88, 0x82, M, 0x03, 0xF8}, 8, 1002, 8},
        {"close 1100", {0x88, 0x82, M, 0x04, 0x4C}, 8, 1002, 8},
        {"close 2000", {0x88, 0x82, M, 0x07, 0xD0}, 8, 1002, 8},
        {"close 2999", {0x88, 0x82, M, 0x0B, 0xB7}, 8, 1002, 8},
        {"close 5000", {0x88, 0x82, M, 0x13, 0x88}, 8, 1002, 8},
        {"close 65535", {0x88, 0x82, M, 0xFF, 0xFF}, 8, 1002, 8},
        {"close bad utf8", {0x88, 0x84, M, 0x03, 0xE8, 0xC3, 0x28}, 10, 1007, 10},
        {"close cut utf8", {0x88, 0x83, M, 0x03, 0xE8, 0xC3}, 9, 1007, 9},
        {"close surrogate", {0x88, 0x85, M, 0x03, 0xE8, 0xED, 0xA0, 0x80}, 11, 1007, 11},
        {"text bad utf8", {0x81, 0x83, M, 'a', 0xFF, 'b'}, 9, 1007, 8},
        {"text cut at end", {0x81, 0x82, M, 'a', 0xC3}, 8, 1007, 8},
        {"text overlong", {0x81, 0x82, M, 0xC0, 0x80}, 8, 1007, 7},
        /* fail fast inside a fragment: the frame says 20 bytes, the bad
         * byte is the second and the rest never arrives */
        {"fail fast", {0x01, 0x94, M, 0xED, 0xA0}, 8, 1007, 8},
        /* across fragments: E0 in one, 80 (overlong) in the next */
        {"fragments overlong", {0x01, 0x81, M, 0xE0, 0x80, 0x81, M, 0x80}, 14, 1007, 14},
        /* incomplete at the end of the message: empty final fragment */
        {"fragments cut", {0x01, 0x81, M, 0xE2, 0x80, 0x80, M}, 13, 1007, 13},
    };
#undef M
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const bad_case *c = &cases[i];
        for (size_t chunk = 0; chunk <= 5; chunk++) {
            result res = run(&R, c->bytes, c->len, chunk, 1 << 20, true);
            if (res.err != c->code) {
                fprintf(stderr, "%s (chunk %zu): code %u, want %u\n", c->name, chunk, res.err,
                        c->code);
                CHECK(0);
            }
            if (chunk == 1 && res.fail_at != c->fail_at) {
                fprintf(stderr, "%s: failed after %zu bytes, want %zu\n", c->name, res.fail_at,
                        c->fail_at);
                CHECK(0);
            }
            /* no message, and no close, reported for a broken stream */
            CHECK(strstr(R.log, "C:") == NULL);
        }
    }
}

static void test_close(void)
{
    stream s = {0};
    put(&s, 0x88, "", 0);
    run_all(&R, s.b, s.len, 0, "C:1005:|", 0);

    static const unsigned good[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010,
                                    1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        uint8_t pl[2] = {(uint8_t)(good[i] >> 8), (uint8_t)good[i]};
        s.len = 0;
        put(&s, 0x88, pl, 2);
        char want[32];
        snprintf(want, sizeof(want), "C:%u:|", good[i]);
        run_all(&R, s.b, s.len, 0, want, 0);
        CHECK(ws_close_code_valid(good[i]));
    }
    static const unsigned bad[] = {0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(!ws_close_code_valid(bad[i]));

    /* Longest close: 2 + 123 bytes of UTF-8 reason. */
    uint8_t pl[125];
    pl[0] = 0x0F;
    pl[1] = 0xA0; /* 4000 */
    memset(pl + 2, 'r', 123);
    s.len = 0;
    put(&s, 0x88, pl, 125);
    char want[200];
    snprintf(want, sizeof(want), "C:4000:%.*s|", 123, (const char *)pl + 2);
    run_all(&R, s.b, s.len, 0, want, 0);

    /* Everything after the close frame is consumed and ignored, even
     * garbage, in the same feed and later ones. */
    s.len = 0;
    put(&s, 0x88, "\x03\xe8", 2);
    ws_decoder d;
    ws_decoder_init(&d, 0, true);
    memset(&R, 0, offsetof(rec, msg));
    uint8_t junk[] = {0xFF, 0xFF, 0xFF};
    memcpy(s.b + s.len, junk, 3); /* room: cap leaves 14 spare */
    CHECK_EQ_INT(ws_decoder_feed(&d, s.b, s.len + 3, &CB, &R), s.len + 3);
    CHECK(ws_decoder_closed(&d));
    CHECK_EQ_INT(ws_decoder_feed(&d, junk, 3, &CB, &R), 3);
    CHECK_STR(R.log, "C:1000:|");
    free(s.b);
}

/* A callback's non-zero return stops the feed right after its event, and
 * feeding the rest resumes exactly. */
static void test_stop_and_resume(void)
{
    stream s = {0};
    put(&s, 0x81, "one", 3);
    put(&s, 0x01, "tw", 2);
    put(&s, 0x89, "ping", 4);
    put(&s, 0x80, "o", 1);
    put(&s, 0x82, "3", 1);
    put(&s, 0x88, "\x03\xe9", 2);
    const char *want = "T:one|I:ping|T:two|B:1|C:1001:|";
    for (int stop_at = 1; stop_at <= 7; stop_at++) {
        uint8_t *copy = malloc(s.len);
        memcpy(copy, s.b, s.len);
        memset(&R, 0, offsetof(rec, msg));
        R.msglen = 0;
        ws_decoder d;
        ws_decoder_init(&d, 0, true);
        size_t off = 0;
        int feeds = 0;
        while (off < s.len && feeds++ < 20) {
            R.calls = 0;
            R.stop_after = stop_at;
            ssize_t c = ws_decoder_feed(&d, copy + off, s.len - off, &CB, &R);
            CHECK(c >= 0);
            if (c < 0) break;
            off += (size_t)c;
        }
        CHECK_EQ_INT(off, s.len);
        CHECK_STR(R.log, want);
        free(copy);
    }
    /* Exact counts: stopping on the first message consumes its frame only. */
    uint8_t *copy = malloc(s.len);
    memcpy(copy, s.b, s.len);
    memset(&R, 0, offsetof(rec, msg));
    R.stop_after = 1;
    R.calls = 0;
    ws_decoder d;
    ws_decoder_init(&d, 0, true);
    CHECK_EQ_INT(ws_decoder_feed(&d, copy, s.len, &CB, &R), 2 + 4 + 3);
    /* the next frame was not unmasked yet */
    CHECK_EQ_MEM(copy + 9, s.len - 9, s.b + 9, s.len - 9);
    free(copy);
    free(s.b);
}

/* Random streams: random messages cut into random fragments with pings
 * between, fed in random splits; the log must match the messages. */
static void test_random_streams(void)
{
    srand(12345);
    static char want[1 << 17];
    static uint8_t pl[3000];
    for (int round = 0; round < 200; round++) {
        stream s = {0};
        size_t wl = 0;
        int msgs = 1 + rand() % 6;
        for (int m = 0; m < msgs; m++) {
            bool text = rand() % 2;
            size_t len =
                (size_t)(rand() % 3) == 0 ? (size_t)(rand() % 3000) : (size_t)(rand() % 40);
            for (size_t i = 0; i < len; i++)
                pl[i] = text ? (uint8_t)('a' + rand() % 26) : (uint8_t)rand();
            if (text && len >= 4 && rand() % 2) memcpy(pl + len / 2 - 1, "\xc3\xa9", 2);
            size_t off = 0;
            bool firstf = true;
            do {
                size_t k = (size_t)rand() % (len - off + 1);
                if (rand() % 3 == 0) k = len - off;
                bool fin = off + k == len;
                unsigned b0 = (fin ? 0x80 : 0) | (firstf ? (text ? 1 : 2) : 0);
                put(&s, b0, pl + off, k);
                off += k;
                firstf = false;
                if (!fin && rand() % 3 == 0) put(&s, 0x89, "x", 1);
            } while (off < len || firstf);
            /* the do-loop above always ends with a FIN frame */
            if (text)
                wl += (size_t)snprintf(want + wl, sizeof(want) - wl, "T:%.*s|", (int)len, pl);
            else
                wl += (size_t)snprintf(want + wl, sizeof(want) - wl, "B:%zu|", len);
        }
        uint8_t *copy = malloc(s.len);
        memcpy(copy, s.b, s.len);
        memset(&R, 0, offsetof(rec, msg));
        R.msglen = 0;
        ws_decoder d;
        ws_decoder_init(&d, 0, true);
        size_t off = 0;
        while (off < s.len) {
            size_t k = 1 + (size_t)rand() % 64;
            if (k > s.len - off) k = s.len - off;
            if (ws_decoder_feed(&d, copy + off, k, &CB, &R) != (ssize_t)k) break;
            off += k;
        }
        CHECK_EQ_INT(off, s.len);
        /* remove "I:x|" from the log */
        static char got[1 << 17];
        size_t gl = 0;
        for (size_t i = 0; i < R.loglen;) {
            if (strncmp(R.log + i, "I:x|", 4) == 0 && (i == 0 || R.log[i - 1] == '|')) {
                i += 4;
                continue;
            }
            got[gl++] = R.log[i++];
        }
        got[gl] = 0;
        if (strlen(want) < sizeof(want) - 1 && strcmp(got, want) != 0) {
            fprintf(stderr, "random round %d differs\n", round);
            CHECK(0);
        }
        free(copy);
        free(s.b);
    }
    CHECK(1);
}

/* ---- encoder ------------------------------------------------------------- */

static void test_encoder(void)
{
    uint8_t h[WS_MAX_HEADER];
    CHECK_EQ_INT(ws_frame_header(h, WS_OP_TEXT, true, 5), 2);
    CHECK_EQ_MEM(h, 2, "\x81\x05", 2);
    CHECK_EQ_INT(ws_frame_header(h, WS_OP_BINARY, false, 125), 2);
    CHECK_EQ_MEM(h, 2, "\x02\x7d", 2);
    CHECK_EQ_INT(ws_frame_header(h, WS_OP_CONT, true, 126), 4);
    CHECK_EQ_MEM(h, 4, "\x80\x7e\x00\x7e", 4);
    CHECK_EQ_INT(ws_frame_header(h, WS_OP_BINARY, true, 65535), 4);
    CHECK_EQ_MEM(h, 4, "\x82\x7e\xff\xff", 4);
    CHECK_EQ_INT(ws_frame_header(h, WS_OP_BINARY, true, 65536), 10);
    CHECK_EQ_MEM(h, 10, "\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00", 10);
    CHECK_EQ_INT(ws_frame_header(h, WS_OP_TEXT, true, 0x123456789aULL), 10);
    CHECK_EQ_MEM(h, 10, "\x81\x7f\x00\x00\x00\x12\x34\x56\x78\x9a", 10);
    CHECK_EQ_INT(ws_frame_size(0), 2);
    CHECK_EQ_INT(ws_frame_size(125), 127);
    CHECK_EQ_INT(ws_frame_size(126), 130);
    CHECK_EQ_INT(ws_frame_size(65535), 65539);
    CHECK_EQ_INT(ws_frame_size(65536), 65546);

    uint8_t f[WS_MAX_CONTROL_FRAME];
    CHECK_EQ_INT(ws_control_frame(f, WS_OP_PING, "Hello", 5), 7);
    CHECK_EQ_MEM(f, 7, "\x89\x05Hello", 7);
    CHECK_EQ_INT(ws_control_frame(f, WS_OP_PONG, NULL, 0), 2);
    CHECK_EQ_MEM(f, 2, "\x8a\x00", 2);
    uint8_t big[126] = {0};
    CHECK_EQ_INT(ws_control_frame(f, WS_OP_PONG, big, 126), 0);
    CHECK_EQ_INT(ws_control_frame(f, WS_OP_PONG, big, 125), 127);
    CHECK_EQ_INT(ws_control_frame(f, WS_OP_TEXT, "a", 1), 0);

    CHECK_EQ_INT(ws_close_frame(f, 1000, NULL, 0), 4);
    CHECK_EQ_MEM(f, 4, "\x88\x02\x03\xe8", 4);
    CHECK_EQ_INT(ws_close_frame(f, WS_CLOSE_NO_STATUS, "ignored", 7), 2);
    CHECK_EQ_MEM(f, 2, "\x88\x00", 2);
    CHECK_EQ_INT(ws_close_frame(f, 1001, "bye", 3), 7);
    CHECK_EQ_MEM(f, 7,
                 "\x88\x05\x03\xe9"
                 "bye",
                 7);

    /* Reason cut to 123 bytes at a code-point boundary. */
    char reason[200];
    memset(reason, 'a', sizeof(reason));
    memcpy(reason + 122, "\xc3\xa9", 2); /* bytes 122-123: cut would split it */
    uint8_t p[WS_MAX_CONTROL_PAYLOAD];
    CHECK_EQ_INT(ws_close_payload(p, 1000, reason, 124), 2 + 122);
    CHECK_EQ_INT(ws_close_payload(p, 1000, reason, 200), 2 + 122);
    memcpy(reason + 120, "\xf0\x9f\x98\x80", 4); /* 120-123 */
    CHECK_EQ_INT(ws_close_payload(p, 1000, reason, 200), 2 + 120);
    memset(reason, 'a', sizeof(reason));
    CHECK_EQ_INT(ws_close_payload(p, 1000, reason, 200), 125);
    CHECK_EQ_INT(ws_close_payload(p, 1000, reason, 123), 125);
    CHECK_EQ_INT(ws_close_payload(p, 1000, "\xff", 1), 2); /* invalid: dropped */
    CHECK_EQ_INT(ws_close_payload(p, 0, "x", 1), 0);

    /* Everything the encoder writes decodes (as a client would read it). */
    static uint8_t buf[70000 + 10];
    static uint8_t pl[70000];
    memset(pl, 'q', sizeof(pl));
    size_t sizes[] = {0, 1, 125, 126, 65535, 65536, 70000};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        size_t hl = ws_frame_header(buf, WS_OP_BINARY, true, sizes[i]);
        memcpy(buf + hl, pl, sizes[i]);
        CHECK_EQ_INT(hl + sizes[i], ws_frame_size(sizes[i]));
        result res = run(&R, buf, hl + sizes[i], 1 + i * 13, 0, false);
        CHECK_EQ_INT(res.err, 0);
        char w[32];
        snprintf(w, sizeof(w), "B:%zu|", sizes[i]);
        CHECK_STR(R.log, w);
    }
    size_t n = ws_close_frame(buf, 4001, reason, 200);
    run(&R, buf, n, 1, 0, false);
    char want[160];
    snprintf(want, sizeof(want), "C:4001:%.123s|", reason);
    CHECK_STR(R.log, want);
}

/* ---- handshake ----------------------------------------------------------- */

static void test_handshake(void)
{
    char out[WS_ACCEPT_KEY_LEN + 1];
    /* RFC 6455 section 1.3 */
    const char *key = "dGhlIHNhbXBsZSBub25jZQ==";
    CHECK_EQ_INT(ws_accept_key(key, strlen(key), out), 0);
    CHECK_STR(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    CHECK_EQ_INT(strlen(out), WS_ACCEPT_KEY_LEN);
    /* RFC 6455 section 4.2.2's example key gives the same */
    CHECK(ws_key_valid(key, strlen(key)));
    char longkey[300];
    memset(longkey, 'A', sizeof(longkey));
    CHECK_EQ_INT(ws_accept_key(longkey, 257, out), SL_EINVAL);
    CHECK_STR(out, "");
    CHECK_EQ_INT(ws_accept_key(longkey, 256, out), 0);

    CHECK(ws_key_valid("AAAAAAAAAAAAAAAAAAAAAA==", 24));
    CHECK(ws_key_valid("x3JJHMbDL1EzLkh9GBhXDw==", 24));
    CHECK(!ws_key_valid("x3JJHMbDL1EzLkh9GBhXDw=", 23));
    CHECK(!ws_key_valid("x3JJHMbDL1EzLkh9GBhXDw===", 25));
    CHECK(!ws_key_valid("x3JJHMbDL1EzLkh9GBhXDwA=", 24)); /* 17 bytes */
    CHECK(!ws_key_valid("x3JJHMbDL1EzLkh9GBhX-w==", 24)); /* url-safe alphabet */
    CHECK(!ws_key_valid("x3JJHMbDL1EzLkh9GBh Dw==", 24));
    CHECK(!ws_key_valid("", 0));
    CHECK(!ws_key_valid("dGhlIHNhbXBsZSBub25jZQ", 22));

    const char *v = "keep-alive, Upgrade";
    CHECK(ws_token_list_has(v, strlen(v), "upgrade"));
    CHECK(ws_token_list_has(v, strlen(v), "Keep-Alive"));
    CHECK(!ws_token_list_has(v, strlen(v), "keep"));
    CHECK(!ws_token_list_has(v, strlen(v), "close"));
    v = "Upgrade";
    CHECK(ws_token_list_has(v, strlen(v), "upgrade"));
    v = " ,, \tUPGRADE\t ,";
    CHECK(ws_token_list_has(v, strlen(v), "upgrade"));
    v = "upgrades, xupgrade";
    CHECK(!ws_token_list_has(v, strlen(v), "upgrade"));
    CHECK(!ws_token_list_has("", 0, "upgrade"));
    /* length-bounded: the list may not be NUL-terminated */
    CHECK(!ws_token_list_has("websocketX", 9, "websocketX"));
    CHECK(ws_token_list_has("websocketX", 9, "websocket"));

    v = "chat, superchat,,  v2.json ";
    const char *pos = v, *end = v + strlen(v), *t;
    size_t tl;
    CHECK(ws_token_next(&pos, end, &t, &tl));
    CHECK_EQ_MEM(t, tl, "chat", 4);
    CHECK(ws_token_next(&pos, end, &t, &tl));
    CHECK_EQ_MEM(t, tl, "superchat", 9);
    CHECK(ws_token_next(&pos, end, &t, &tl));
    CHECK_EQ_MEM(t, tl, "v2.json", 7);
    CHECK(!ws_token_next(&pos, end, &t, &tl));
    CHECK(!ws_token_next(&pos, end, &t, &tl));
    pos = "   ";
    CHECK(!ws_token_next(&pos, pos + 3, &t, &tl));
}

int main(void)
{
    test_rfc_examples();
    test_every_frame_kind();
    test_lengths();
    test_message_limit();
    test_violations();
    test_close();
    test_stop_and_resume();
    test_random_streams();
    test_encoder();
    test_handshake();
    return CHECK_DONE();
}
