/* wsz_test.c: permessage-deflate (RFC 7692).  The negotiation parser on
 * offers good, declined and malformed; the decoder's RSV1 rules byte by
 * byte; compression round trips through the inflater (whole, byte by
 * byte, and as a fragmented client message through the decoder); the
 * inflated-size cap on a zip bomb; bad deflate data. */
#include "core/ws.h"
#include "core/wsz.h"
#include "check.h"

#include <stdlib.h>
#include <zlib.h>

/* ---- negotiation -------------------------------------------------------- */

static int neg(const char *v, ws_deflate_params *p, unsigned *declined)
{
    memset(p, 0xAA, sizeof(*p));
    return ws_deflate_negotiate(v, strlen(v), p, declined);
}

static void test_negotiate(void)
{
    ws_deflate_params p;
    unsigned dec;
    char resp[WS_DEFLATE_RESPONSE_MAX];

    /* What browsers, ws and python-websockets offer. */
    CHECK_EQ_INT(neg("permessage-deflate; client_max_window_bits", &p, &dec), 1);
    CHECK_EQ_INT(p.server_max_window_bits, 15);
    CHECK(!p.server_window_offered);
    CHECK_EQ_INT(dec, 0);
    ws_deflate_response(&p, resp);
    CHECK(strcmp(resp, "permessage-deflate; server_no_context_takeover; "
                       "client_no_context_takeover") == 0);
    CHECK_EQ_INT(neg("permessage-deflate", &p, &dec), 1);
    CHECK_EQ_INT(neg("PerMessage-Deflate;Client_Max_Window_Bits", &p, &dec), 1);
    CHECK_EQ_INT(neg("permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                     &p, &dec),
                 1);
    /* server_max_window_bits: honoured and echoed. */
    CHECK_EQ_INT(neg("permessage-deflate; server_max_window_bits=10", &p, &dec), 1);
    CHECK_EQ_INT(p.server_max_window_bits, 10);
    CHECK(p.server_window_offered);
    ws_deflate_response(&p, resp);
    CHECK(strstr(resp, "; server_max_window_bits=10") != NULL);
    CHECK(ws_deflate_fits(&p, 1024));
    CHECK(!ws_deflate_fits(&p, 1025));
    CHECK_EQ_INT(neg("permessage-deflate; server_max_window_bits=\"8\"", &p, &dec), 1);
    CHECK_EQ_INT(p.server_max_window_bits, 8);
    ws_deflate_response(&p, resp);
    CHECK(strstr(resp, "; server_max_window_bits=8") != NULL);
    CHECK_EQ_INT(neg("permessage-deflate; client_max_window_bits=9", &p, &dec), 1);
    /* Other extensions are skipped; the first acceptable offer wins. */
    CHECK_EQ_INT(neg("x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=12", &p,
                     &dec),
                 1);
    CHECK_EQ_INT(p.server_max_window_bits, 12);
    CHECK_EQ_INT(neg("permessage-deflate; server_max_window_bits=7, permessage-deflate", &p, &dec),
                 1);
    CHECK_EQ_INT(p.server_max_window_bits, 15);
    CHECK_EQ_INT(dec, 1);
    CHECK_EQ_INT(neg("foo; a=1; b=\"x\", permessage-deflate", &p, &dec), 1);

    /* Declined (section 7.1): no extension, the handshake goes on. */
    const char *declined[] = {
        "permessage-deflate; server_max_window_bits",     /* value required */
        "permessage-deflate; server_max_window_bits=16",  /* out of range */
        "permessage-deflate; server_max_window_bits=08",  /* not 8..15 as written */
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=0",
        "permessage-deflate; client_max_window_bits=100",
        "permessage-deflate; server_no_context_takeover=1", /* takes no value */
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; x_unknown",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
    };
    for (size_t i = 0; i < sizeof(declined) / sizeof(declined[0]); i++) {
        int rc = neg(declined[i], &p, &dec);
        if (rc != 0 || dec != 1) fprintf(stderr, "should decline: %s (%d)\n", declined[i], rc);
        CHECK(rc == 0 && dec == 1);
    }
    CHECK_EQ_INT(neg("x-other", &p, &dec), 0);
    CHECK_EQ_INT(dec, 0);
    CHECK_EQ_INT(neg("", &p, &dec), 0);
    CHECK_EQ_INT(neg(" , ,", &p, &dec), 0);

    /* Malformed lists: 400. */
    const char *bad[] = {
        "permessage-deflate;",
        "permessage-deflate; =1",
        "permessage-deflate; server_max_window_bits=",
        "permessage-deflate; server_max_window_bits=\"10",
        "permessage-deflate; server_max_window_bits=\"1 0\"",
        "permessage-deflate x",
        "\"permessage-deflate\"",
        "permessage-deflate; a=b c",
        "permessage-deflate, x; y=\"",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = neg(bad[i], &p, &dec);
        if (rc != SL_EINPUT) fprintf(stderr, "should be malformed: %s (%d)\n", bad[i], rc);
        CHECK_EQ_INT(rc, SL_EINPUT);
    }

    /* Every prefix of a good header and every byte value parses without
     * reading past its end (run under ASan). */
    const char *full = "foo; a=\"b\\\"c\", permessage-deflate; server_max_window_bits=\"9\"; "
                       "client_max_window_bits";
    for (size_t n = 0; n <= strlen(full); n++) {
        char *cut = malloc(n ? n : 1);
        memcpy(cut, full, n);
        int rc = ws_deflate_negotiate(cut, n, &p, &dec);
        CHECK(rc == SL_EINPUT || rc == 0 || rc == 1);
        free(cut);
    }
    uint8_t junk[64];
    srand(7);
    for (int i = 0; i < 20000; i++) {
        size_t n = (size_t)(rand() % (int)sizeof(junk));
        for (size_t k = 0; k < n; k++)
            junk[k] = (uint8_t)("permessage-deflate;=\", \\sx1"[rand() % 27] ^ (rand() % 50 ? 0 : 0x80));
        uint8_t *h = malloc(n ? n : 1);
        memcpy(h, junk, n);
        int rc = ws_deflate_negotiate((const char *)h, n, &p, &dec);
        if (rc == 1) CHECK(p.server_max_window_bits >= 8 && p.server_max_window_bits <= 15);
        free(h);
    }
    CHECK(1);
}

/* ---- compression -------------------------------------------------------- */

typedef struct {
    uint8_t *b;
    size_t len, cap;
    int stop_at; /* sink call that stops, 0 never */
    int calls;
} sinkbuf;

static int sink(void *ud, const uint8_t *d, size_t n)
{
    sinkbuf *s = ud;
    if (s->len + n > s->cap) {
        s->cap = (s->len + n) * 2;
        s->b = realloc(s->b, s->cap);
    }
    memcpy(s->b + s->len, d, n);
    s->len += n;
    return s->stop_at && ++s->calls == s->stop_at;
}

/* Inflates in[0..len) fed in pieces of `step` (0: whole); returns the
 * wsz code. */
static int inflate_all(const uint8_t *in, size_t len, size_t step, uint64_t cap, sinkbuf *out)
{
    wsz_inflater *z = wsz_inflater_new();
    CHECK(z != NULL);
    out->len = 0;
    uint64_t total = 0;
    int rc = SL_OK;
    if (!step) step = len ? len : 1;
    size_t off = 0;
    do {
        size_t n = len - off < step ? len - off : step;
        rc = wsz_inflate(z, in + off, n, off + n == len, cap, &total, sink, out);
        off += n;
    } while (rc == SL_OK && off < len);
    CHECK_EQ_INT(total, out->len);
    wsz_inflater_free(z);
    return rc;
}

static void test_round_trip(void)
{
    sinkbuf out = {0};
    size_t sizes[] = {0, 1, 2, 64, 1000, 4096, 70000, 300000};
    for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
        size_t n = sizes[si];
        uint8_t *msg = malloc(n + 1);
        for (size_t i = 0; i < n; i++) /* compressible, not trivial */
            msg[i] = (uint8_t)("{\"id\":\"1-23\",\"data\":\"hello world\"}"[i % 33] + (i % 97 == 0));
        size_t cap = wsz_deflate_bound(n);
        uint8_t *z = malloc(cap);
        long zn = wsz_deflate(msg, n, z, cap);
        CHECK(zn >= 0);
        if (n >= 1000) CHECK((size_t)zn < n / 2);
        /* The sync flush's tail is off: the stream does not end 00 00 FF FF. */
        if (zn >= 4) CHECK(memcmp(z + zn - 4, "\x00\x00\xff\xff", 4) != 0);
        size_t steps[] = {0, 1, 7, 1000};
        for (size_t k = 0; k < 4; k++) {
            if (steps[k] == 1 && n > 70000) continue;
            CHECK_EQ_INT(inflate_all(z, (size_t)zn, steps[k], n, &out), SL_OK);
            CHECK_EQ_INT(out.len, n);
            if (n) CHECK_EQ_MEM(out.b, out.len, msg, n);
        }
        /* A cap one byte short of the message: SL_ELIMIT. */
        if (n) CHECK_EQ_INT(inflate_all(z, (size_t)zn, 0, n - 1, &out), SL_ELIMIT);
        /* Random bytes: stored blocks mostly, still a round trip. */
        for (size_t i = 0; i < n; i++)
            msg[i] = (uint8_t)rand();
        zn = wsz_deflate(msg, n, z, cap);
        CHECK(zn >= 0 && (size_t)zn <= cap);
        CHECK_EQ_INT(inflate_all(z, (size_t)zn, 0, n, &out), SL_OK);
        CHECK_EQ_INT(out.len, n);
        if (n) CHECK_EQ_MEM(out.b, out.len, msg, n);
        free(msg);
        free(z);
    }
    /* Another sender's form: zlib with a final block (BFINAL), 9-bit window. */
    {
        const char *text = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbbbb";
        z_stream zs;
        memset(&zs, 0, sizeof(zs));
        CHECK(deflateInit2(&zs, 9, Z_DEFLATED, -9, 8, Z_DEFAULT_STRATEGY) == Z_OK);
        uint8_t z[256];
        zs.next_in = (Bytef *)text;
        zs.avail_in = (uInt)strlen(text);
        zs.next_out = z;
        zs.avail_out = sizeof(z);
        CHECK(deflate(&zs, Z_FINISH) == Z_STREAM_END);
        size_t zn = sizeof(z) - zs.avail_out;
        deflateEnd(&zs);
        CHECK_EQ_INT(inflate_all(z, zn, 0, 1000, &out), SL_OK);
        CHECK_EQ_MEM(out.b, out.len, text, strlen(text));
        /* ... and bytes after its final block are bad data. */
        z[zn] = 0x00;
        CHECK_EQ_INT(inflate_all(z, zn + 1, 0, 1000, &out), SL_EINPUT);
    }
    /* A sink that stops. */
    {
        uint8_t msg[40000];
        for (size_t i = 0; i < sizeof(msg); i++)
            msg[i] = (uint8_t)(i * 7 % 251);
        uint8_t z[41000];
        long zn = wsz_deflate(msg, sizeof(msg), z, sizeof(z));
        CHECK(zn > 0);
        sinkbuf st = {.stop_at = 1};
        CHECK_EQ_INT(inflate_all(z, (size_t)zn, 0, sizeof(msg), &st), SL_EGONE);
        free(st.b);
    }
    /* Not deflate at all. */
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x12};
    CHECK_EQ_INT(inflate_all(junk, sizeof(junk), 0, 1000, &out), SL_EINPUT);
    free(out.b);
}

/* A zip bomb: 16 MiB of zeros in about 16 KiB; the cap stops it after at
 * most one chunk past the cap, whatever the split. */
static void test_zip_bomb(void)
{
    size_t n = 16 << 20;
    uint8_t *zeros = calloc(1, n);
    size_t cap = wsz_deflate_bound(n);
    uint8_t *z = malloc(cap);
    long zn = wsz_deflate(zeros, n, z, cap);
    CHECK(zn > 0 && zn < 40000);
    sinkbuf out = {0};
    CHECK_EQ_INT(inflate_all(z, (size_t)zn, 0, 1 << 20, &out), SL_ELIMIT);
    CHECK(out.len <= 1 << 20);
    CHECK_EQ_INT(inflate_all(z, (size_t)zn, 5, 1 << 20, &out), SL_ELIMIT);
    CHECK(out.len <= 1 << 20);
    CHECK_EQ_INT(inflate_all(z, (size_t)zn, 0, n, &out), SL_OK);
    CHECK_EQ_INT(out.len, n);
    free(out.b);
    free(zeros);
    free(z);
}

/* ---- the decoder's RSV1 ------------------------------------------------- */

typedef struct {
    char log[4096];
    size_t len;
    uint8_t comp[1 << 16];
    size_t clen;
} drec;

static int d_data(void *ud, int op, const uint8_t *d, size_t n, bool fin)
{
    drec *r = ud;
    if (fin) r->len += (size_t)snprintf(r->log + r->len, sizeof(r->log) - r->len, "D%d|", op);
    return 0;
}

static int d_comp(void *ud, int op, const uint8_t *d, size_t n, bool fin)
{
    drec *r = ud;
    if (n) memcpy(r->comp + r->clen, d, n);
    r->clen += n;
    if (fin) r->len += (size_t)snprintf(r->log + r->len, sizeof(r->log) - r->len, "Z%d:%zu|", op, r->clen);
    return 0;
}

static const ws_callbacks DCB = {.on_data = d_data, .on_compressed = d_comp};

/* Client frame: b0 as given, masked with a zero mask (simplest). */
static size_t frame(uint8_t *out, unsigned b0, const uint8_t *pl, size_t n)
{
    size_t o = 0;
    out[o++] = (uint8_t)b0;
    if (n < 126) {
        out[o++] = (uint8_t)(0x80 | n);
    } else {
        out[o++] = 0x80 | 126;
        out[o++] = (uint8_t)(n >> 8);
        out[o++] = (uint8_t)n;
    }
    memset(out + o, 0, 4);
    o += 4;
    if (n) memcpy(out + o, pl, n);
    return o + n;
}

/* Feeds in byte by byte to a decoder (deflate on or off); returns the
 * error code (0 none) and the log in r. */
static unsigned feed_bytes(const uint8_t *in, size_t n, bool deflate, drec *r)
{
    ws_decoder d;
    ws_decoder_init(&d, 1 << 20, true);
    if (deflate) ws_decoder_allow_deflate(&d);
    memset(r, 0, sizeof(*r));
    uint8_t *copy = malloc(n);
    memcpy(copy, in, n);
    unsigned err = 0;
    for (size_t i = 0; i < n; i++)
        if (ws_decoder_feed(&d, copy + i, 1, &DCB, r) < 0) {
            err = d.err_code;
            break;
        }
    free(copy);
    return err;
}

static void test_rsv1(void)
{
    static drec r;
    uint8_t s[70000];
    const uint8_t pl[] = {0xff, 0xfe, 0x00}; /* compressed bytes need not be UTF-8 */
    size_t n;

    /* Without the extension RSV1 stays a protocol error. */
    n = frame(s, 0xC1, pl, 3);
    CHECK_EQ_INT(feed_bytes(s, n, false, &r), 1002);
    /* With it: a compressed text message, not UTF-8-checked. */
    CHECK_EQ_INT(feed_bytes(s, n, true, &r), 0);
    CHECK(strcmp(r.log, "Z1:3|") == 0);
    /* Fragmented: RSV1 on the first frame only; continuations plain. */
    n = frame(s, 0x42, pl, 3);
    n += frame(s + n, 0x00, pl, 2);
    n += frame(s + n, 0x89, NULL, 0); /* a ping between fragments */
    n += frame(s + n, 0x80, pl, 1);
    n += frame(s + n, 0x81, (const uint8_t *)"ok", 2); /* then a plain text */
    CHECK_EQ_INT(feed_bytes(s, n, true, &r), 0);
    CHECK(strcmp(r.log, "Z2:6|D1|") == 0);
    /* RSV1 on a continuation, on a control frame: 1002. */
    n = frame(s, 0x41, pl, 3);
    n += frame(s + n, 0xC0, pl, 3);
    CHECK_EQ_INT(feed_bytes(s, n, true, &r), 1002);
    n = frame(s, 0xC9, NULL, 0);
    CHECK_EQ_INT(feed_bytes(s, n, true, &r), 1002);
    n = frame(s, 0xC8, (const uint8_t *)"\x03\xe8", 2);
    CHECK_EQ_INT(feed_bytes(s, n, true, &r), 1002);
    /* RSV2 and RSV3 stay errors. */
    n = frame(s, 0xE1, pl, 3);
    CHECK_EQ_INT(feed_bytes(s, n, true, &r), 1002);
    n = frame(s, 0xD1, pl, 3);
    CHECK_EQ_INT(feed_bytes(s, n, true, &r), 1002);
    /* Invalid UTF-8 in a plain text message is still 1007 with deflate on. */
    n = frame(s, 0x81, pl, 3);
    CHECK_EQ_INT(feed_bytes(s, n, true, &r), 1007);

    /* A whole compressed message through the decoder, then inflated. */
    const char *text = "{\"hello\":\"world\",\"hello2\":\"world\",\"hello3\":\"world\"}";
    uint8_t z[256];
    long zn = wsz_deflate(text, strlen(text), z, sizeof(z));
    CHECK(zn > 0);
    n = frame(s, 0x41, z, 5);
    n += frame(s + n, 0x80, z + 5, (size_t)zn - 5);
    CHECK_EQ_INT(feed_bytes(s, n, true, &r), 0);
    sinkbuf out = {0};
    CHECK_EQ_INT(inflate_all(r.comp, r.clen, 0, 1000, &out), SL_OK);
    CHECK_EQ_MEM(out.b, out.len, text, strlen(text));
    free(out.b);

    /* The server's encoder sets RSV1 with WS_FRAME_COMPRESSED. */
    uint8_t h[WS_MAX_HEADER];
    CHECK_EQ_INT(ws_frame_header(h, WS_OP_TEXT | WS_FRAME_COMPRESSED, true, 5), 2);
    CHECK_EQ_INT(h[0], 0xC1);
    CHECK_EQ_INT(ws_frame_header(h, WS_OP_BINARY, true, 5), 2);
    CHECK_EQ_INT(h[0], 0x82);
}

int main(void)
{
    test_negotiate();
    test_round_trip();
    test_zip_bomb();
    test_rsv1();
    return CHECK_DONE();
}
