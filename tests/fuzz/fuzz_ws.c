/* fuzz_ws.c: libFuzzer target for the WebSocket decoder and the UTF-8
 * validator.
 *
 * Build: clang -fsanitize=fuzzer,address,undefined -I. core/ws.c core/wsz.c
 *        core/utf8.c tests/fuzz/fuzz_ws.c -lcrypto -lz
 *
 * The first input byte picks the decoder's settings (bit 2: permessage-
 * deflate, whose compressed messages are inflated with core/wsz.c under a
 * 64 KiB cap, the inflated bytes hashed like plain ones and the inflater's
 * verdict, including a zip bomb's SL_ELIMIT, part of the digest); the
 * rest is the stream.
 * It is decoded twice, whole and in chunks whose sizes come from the data
 * (with callbacks that sometimes stop the feed, resumed at the count
 * returned), and both runs must report the same control frames and
 * finished messages, in the same order, and the same error: the decoder
 * must not care how bytes are split.  Invariants checked
 * on every event: text messages are valid UTF-8, control payloads fit 125
 * bytes, close codes are valid on the wire.  The validator is checked
 * against a plain decoder written from RFC 3629, and the close-frame
 * builder's output against the decoder. */
#include "core/ws.h"
#include "core/wsz.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_ASSERT(c)                                                                             \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

typedef struct {
    uint64_t digest;       /* whole events: control frames, finished messages */
    uint64_t msg_digest;   /* the message in progress */
    uint8_t text[1 << 16]; /* text message gathered for the UTF-8 check */
    size_t text_len;
    bool text_over;
    int stop_every; /* 0: never stop */
    int calls;
    wsz_inflater *z; /* the compressed message being inflated */
    uint64_t z_total;
    int z_err; /* its inflater's failure, 0 none */
} fuzz_rec;

#define FNV_BASIS 14695981039346656037ULL

static void mix_into(uint64_t *h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        *h = (*h ^ b[i]) * 0x100000001b3ULL;
}

static void mix(fuzz_rec *r, const void *p, size_t n)
{
    mix_into(&r->digest, p, n);
}

static int maybe_stop(fuzz_rec *r)
{
    return r->stop_every && ++r->calls % r->stop_every == 0;
}

static int on_data(void *ud, int op, const uint8_t *data, size_t len, bool fin)
{
    fuzz_rec *r = ud;
    FUZZ_ASSERT(op == WS_OP_TEXT || op == WS_OP_BINARY);
    FUZZ_ASSERT(len > 0 || fin);
    /* Chunks differ between runs, and a message cut short by an error is
     * reported further in one run than in the other: hash the bytes of a
     * message apart, and only a finished message into the digest. */
    mix_into(&r->msg_digest, data, len);
    if (op == WS_OP_TEXT) {
        if (r->text_len + len <= sizeof(r->text))
            memcpy(r->text + r->text_len, data, len);
        else
            r->text_over = true;
        r->text_len += len;
    }
    if (fin) {
        uint8_t tag[2] = {'F', (uint8_t)op};
        mix(r, tag, 2);
        mix(r, &r->msg_digest, sizeof(r->msg_digest));
        r->msg_digest = FNV_BASIS;
        if (op == WS_OP_TEXT && !r->text_over) FUZZ_ASSERT(utf8_valid(r->text, r->text_len));
        r->text_len = 0;
        r->text_over = false;
    }
    return maybe_stop(r);
}

static int on_ctl(fuzz_rec *r, uint8_t tag, const uint8_t *p, size_t len)
{
    FUZZ_ASSERT(len <= WS_MAX_CONTROL_PAYLOAD);
    mix(r, &tag, 1);
    mix(r, p, len);
    return maybe_stop(r);
}

static int on_ping(void *ud, const uint8_t *p, size_t len)
{
    return on_ctl(ud, 'I', p, len);
}
static int on_pong(void *ud, const uint8_t *p, size_t len)
{
    return on_ctl(ud, 'O', p, len);
}

static int on_close(void *ud, unsigned code, const char *reason, size_t len)
{
    FUZZ_ASSERT(code == WS_CLOSE_NO_STATUS || ws_close_code_valid(code));
    FUZZ_ASSERT(len <= WS_MAX_CONTROL_PAYLOAD - 2);
    FUZZ_ASSERT(utf8_valid(reason, len));
    uint8_t c[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    mix(ud, c, 2);
    return on_ctl(ud, 'C', (const uint8_t *)reason, len);
}

static int z_sink(void *ud, const uint8_t *data, size_t len)
{
    fuzz_rec *r = ud;
    mix_into(&r->msg_digest, data, len);
    return 0;
}

/* A chunk of a compressed message: inflated (until the inflater fails),
 * the output into the message's hash; at its end the verdict and, for a
 * good message, the hash go into the digest. */
static int on_compressed(void *ud, int op, const uint8_t *data, size_t len, bool fin)
{
    fuzz_rec *r = ud;
    FUZZ_ASSERT(op == WS_OP_TEXT || op == WS_OP_BINARY);
    if (!r->z && !r->z_err) {
        r->z = wsz_inflater_new();
        r->z_total = 0;
        if (!r->z) abort();
    }
    if (r->z) {
        int rc = wsz_inflate(r->z, data, len, fin, 1 << 16, &r->z_total, z_sink, r);
        FUZZ_ASSERT(r->z_total <= 1 << 16);
        if (rc != SL_OK) {
            FUZZ_ASSERT(rc == SL_ELIMIT || rc == SL_EINPUT);
            r->z_err = rc;
            wsz_inflater_free(r->z);
            r->z = NULL;
        }
    }
    if (fin) {
        uint8_t tag[3] = {'Z', (uint8_t)op, (uint8_t)-r->z_err};
        mix(r, tag, 3);
        if (!r->z_err) mix(r, &r->msg_digest, sizeof(r->msg_digest));
        r->msg_digest = FNV_BASIS;
        wsz_inflater_free(r->z);
        r->z = NULL;
        r->z_err = 0;
    }
    return maybe_stop(r);
}

static const ws_callbacks CB = {.on_data = on_data,
                                .on_ping = on_ping,
                                .on_pong = on_pong,
                                .on_close = on_close,
                                .on_compressed = on_compressed};

/* RFC 3629 read literally, as an independent oracle for utf8_valid. */
static bool ref_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t c = s[i], min;
        size_t k;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 1, min = 0x80, c &= 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, min = 0x800, c &= 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, min = 0x10000, c &= 0x07;
        } else {
            return false;
        }
        if (n - i - 1 < k) return false;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return false;
            c = c << 6 | (s[i + j] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return false;
        i += k + 1;
    }
    return true;
}

typedef struct {
    uint64_t digest;
    unsigned err;
    bool closed;
} outcome;

static outcome decode(const uint8_t *cfg, const uint8_t *in, size_t len, bool chunked, fuzz_rec *r)
{
    ws_decoder d;
    outcome o = {0, 0, false};
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) abort();
    memcpy(buf, in, len);
    memset(r, 0, sizeof(*r));
    r->digest = r->msg_digest = FNV_BASIS;
    if (chunked) r->stop_every = cfg[0] >> 5; /* 0..7 */
    ws_decoder_init(&d, (cfg[0] & 2) ? 300 : 0, cfg[0] & 1);
    if (cfg[0] & 4) ws_decoder_allow_deflate(&d);

    size_t off = 0, step = 0;
    unsigned rounds = 0;
    while (off < len && rounds++ < 1000000) {
        size_t n = len - off;
        if (chunked) {
            /* chunk sizes: 1..16 taken from the input itself */
            n = 1 + (size_t)(in[step++ % len] & 15);
            if (n > len - off) n = len - off;
        }
        ssize_t c = ws_decoder_feed(&d, buf + off, n, &CB, r);
        if (c < 0) {
            o.err = d.err_code;
            FUZZ_ASSERT(d.err_reason && strlen(d.err_reason) <= 123);
            FUZZ_ASSERT(ws_decoder_feed(&d, buf, len, &CB, r) == SL_EPROTO);
            break;
        }
        FUZZ_ASSERT((size_t)c <= n);
        if (!r->stop_every) FUZZ_ASSERT((size_t)c == n);
        off += (size_t)c;
    }
    o.closed = ws_decoder_closed(&d);
    o.digest = r->digest;
    wsz_inflater_free(r->z); /* a compressed message left unfinished */
    r->z = NULL;
    free(buf);
    return o;
}

static fuzz_rec rec_a, rec_b;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const uint8_t *cfg = data;
    const uint8_t *in = data + 1;
    size_t len = size - 1;

    outcome a = decode(cfg, in, len, false, &rec_a);
    outcome b = decode(cfg, in, len, true, &rec_b);
    FUZZ_ASSERT(a.err == b.err);
    FUZZ_ASSERT(a.closed == b.closed);
    FUZZ_ASSERT(a.digest == b.digest);

    /* The validator, whole and split in two, against the oracle. */
    bool want = ref_utf8(in, len);
    FUZZ_ASSERT(utf8_valid(in, len) == want);
    utf8_state st;
    utf8_init(&st);
    size_t cut = len ? cfg[0] % (len + 1) : 0;
    utf8_feed(&st, in, cut);
    FUZZ_ASSERT((utf8_feed(&st, in + cut, len - cut) == UTF8_OK) == want);

    /* A close frame built from any reason decodes as a valid close. */
    uint8_t f[WS_MAX_CONTROL_FRAME];
    size_t n = ws_close_frame(f, 4000 + cfg[0], (const char *)in, len);
    FUZZ_ASSERT(n >= 4 && n <= WS_MAX_CONTROL_FRAME);
    ws_decoder d;
    ws_decoder_init(&d, 0, false);
    FUZZ_ASSERT(ws_decoder_feed(&d, f, n, &CB, &rec_a) == (ssize_t)n);
    FUZZ_ASSERT(ws_decoder_closed(&d));
    return 0;
}
