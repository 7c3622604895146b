/* sse_test.c: the SSE encoder byte for byte, its errors, and the round-trip
 * property: whatever the encoder writes, an EventSource (modelled by
 * sse_parse, itself checked against the spec's examples first) dispatches
 * the input back, with line breaks normalised to LF. */
#include "core/sse.h"

#include <stdint.h>
#include <stdlib.h>

#include "check.h"

/* ---- Helpers ---- */

/* Encodes into a buffer of exactly the announced size; checks that size and
 * encode agree.  Returns a malloc'd NUL-terminated copy (for CHECK_STR). */
static char *enc_event(const char *id, const char *event, const char *data, size_t data_len)
{
    size_t id_len = id ? strlen(id) : 0, ev_len = event ? strlen(event) : 0;
    ssize_t n = sse_event_size(id, id_len, event, ev_len, data, data_len);
    CHECK(n > 0);
    if (n <= 0) return NULL;
    char *buf = malloc((size_t)n + 1);
    ssize_t w = sse_event_encode(buf, (size_t)n, id, id_len, event, ev_len, data, data_len);
    CHECK_EQ_INT(w, n);
    buf[n] = 0;
    return buf;
}

static void check_event(const char *id, const char *event, const char *data, size_t data_len,
                        const char *want)
{
    char *got = enc_event(id, event, data, data_len);
    if (got) CHECK_STR(got, want);
    free(got);
}

/* What EventSource reconstructs: CRLF, CR and LF each become LF. */
static size_t normalise(const char *in, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (in[i] == '\r') {
            out[o++] = '\n';
            if (i + 1 < len && in[i + 1] == '\n') i++;
        } else {
            out[o++] = in[i];
        }
    }
    return o;
}

/* Collects what sse_parse dispatches into fixed slots. */
#define MAX_EVENTS 64
#define MAX_FIELD 4096
struct got_event {
    char id[MAX_FIELD], type[MAX_FIELD], data[MAX_FIELD];
    size_t id_len, type_len, data_len;
};
struct collect {
    struct got_event ev[MAX_EVENTS];
    int n_ev;
    uint64_t retry[8];
    int n_retry;
    int n_comment;
    char comment[MAX_FIELD];
    size_t comment_len;
    int stop_after; /* stop (return 7) after that many events; 0 = never */
};

static int on_event(void *ud, const struct sse_parsed *e)
{
    struct collect *c = ud;
    if (c->n_ev < MAX_EVENTS && e->id_len <= MAX_FIELD && e->type_len <= MAX_FIELD &&
        e->data_len <= MAX_FIELD) {
        struct got_event *g = &c->ev[c->n_ev];
        memcpy(g->id, e->id, e->id_len);
        g->id_len = e->id_len;
        memcpy(g->type, e->type, e->type_len);
        g->type_len = e->type_len;
        memcpy(g->data, e->data, e->data_len);
        g->data_len = e->data_len;
    }
    c->n_ev++;
    return c->stop_after && c->n_ev >= c->stop_after ? 7 : 0;
}

static int on_retry(void *ud, uint64_t ms)
{
    struct collect *c = ud;
    if (c->n_retry < 8) c->retry[c->n_retry] = ms;
    c->n_retry++;
    return 0;
}

static int on_comment(void *ud, const char *t, size_t len)
{
    struct collect *c = ud;
    c->n_comment++;
    if (len <= MAX_FIELD) {
        memcpy(c->comment, t, len);
        c->comment_len = len;
    }
    return 0;
}

static const struct sse_parse_cb cbs = {on_event, on_retry, on_comment};

static int parse(const char *s, size_t len, struct collect *c)
{
    char *scratch = malloc(len + 1);
    int rc = sse_parse(s, len, scratch, len, &cbs, c);
    free(scratch);
    return rc;
}

#define EV_IS(c, i, id_, type_, data_)                                                             \
    do {                                                                                           \
        CHECK_EQ_MEM((c)->ev[i].id, (c)->ev[i].id_len, id_, sizeof(id_) - 1);                      \
        CHECK_EQ_MEM((c)->ev[i].type, (c)->ev[i].type_len, type_, sizeof(type_) - 1);              \
        CHECK_EQ_MEM((c)->ev[i].data, (c)->ev[i].data_len, data_, sizeof(data_) - 1);              \
    } while (0)

/* ---- Encoder: exact bytes ---- */

static void test_encode_exact(void)
{
#define D(s) s, sizeof(s) - 1
    check_event("1", NULL, D("hello"), "id: 1\ndata: hello\n\n");
    check_event("42", "update", D("a\nb"), "id: 42\nevent: update\ndata: a\ndata: b\n\n");
    check_event("1", NULL, D(""), "id: 1\ndata:\n\n");
    check_event("1", NULL, NULL, 0, "id: 1\ndata:\n\n");
    check_event(NULL, NULL, D("x"), "data: x\n\n");
    check_event("", "", D("x"), "data: x\n\n");
    check_event("7", "e", D("a\r\nb\rc\nd"),
                "id: 7\nevent: e\ndata: a\ndata: b\ndata: c\ndata: d\n\n");
    check_event("1", NULL, D("a\n"), "id: 1\ndata: a\ndata:\n\n");
    check_event("1", NULL, D("\n"), "id: 1\ndata:\ndata:\n\n");
    check_event("1", NULL, D("\r\n"), "id: 1\ndata:\ndata:\n\n");
    check_event("1", NULL, D("\n\r"), "id: 1\ndata:\ndata:\ndata:\n\n");
    check_event("1", NULL, D("\r\r\n\n"), "id: 1\ndata:\ndata:\ndata:\ndata:\n\n");
    check_event("1", NULL, D("a\r"), "id: 1\ndata: a\ndata:\n\n");
    check_event("1", NULL, D(" lead"), "id: 1\ndata:  lead\n\n");
    check_event("1", NULL, D(": colon"), "id: 1\ndata: : colon\n\n");
    check_event("id with spaces", "ev:x", D("\xc3\xa9t\xc3\xa9"),
                "id: id with spaces\nevent: ev:x\ndata: \xc3\xa9t\xc3\xa9\n\n");
    /* A NUL inside data is just a byte. */
    char *got = enc_event("1", NULL, "a\0b", 3);
    CHECK_EQ_MEM(got, 17, "id: 1\ndata: a\0b\n\n", 17);
    free(got);
#undef D
}

/* ---- Encoder: errors ---- */

static void test_encode_errors(void)
{
    static const char *bad[] = {"a\nb", "a\rb", "\n", "\r", "x\r\n"};
    char out[64];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t l = strlen(bad[i]);
        CHECK_EQ_INT(sse_event_size(bad[i], l, NULL, 0, "d", 1), SL_EFIELD);
        CHECK_EQ_INT(sse_event_size("1", 1, bad[i], l, "d", 1), SL_EFIELD);
        CHECK_EQ_INT(sse_event_encode(out, sizeof out, bad[i], l, NULL, 0, "d", 1), SL_EFIELD);
        CHECK_EQ_INT(sse_event_encode(out, sizeof out, "1", 1, bad[i], l, "d", 1), SL_EFIELD);
        CHECK_EQ_INT(sse_comment_size(bad[i], l), SL_EFIELD);
        CHECK_EQ_INT(sse_comment_encode(out, sizeof out, bad[i], l), SL_EFIELD);
        CHECK(!sse_field_valid(bad[i], l));
    }
    /* NUL: rejected in id, event and comment. */
    CHECK_EQ_INT(sse_event_size("a\0b", 3, NULL, 0, "d", 1), SL_EFIELD);
    CHECK_EQ_INT(sse_event_size("1", 1, "a\0", 2, "d", 1), SL_EFIELD);
    CHECK_EQ_INT(sse_event_encode(out, sizeof out, "\0", 1, NULL, 0, "d", 1), SL_EFIELD);
    CHECK_EQ_INT(sse_comment_size("\0", 1), SL_EFIELD);
    CHECK(!sse_field_valid("\0", 1));
    CHECK(sse_field_valid("ok: \t\x7f\xff", 7));
    CHECK(sse_field_valid(NULL, 0));
    /* event NULL with a stale length is "no event", not a read of NULL. */
    CHECK_EQ_INT(sse_event_size("1", 1, NULL, 5, "d", 1), (ssize_t)strlen("id: 1\ndata: d\n\n"));

    /* Every cap below the size fails with SL_ESPACE and writes within cap
     * (each buffer is malloc'd to exactly cap bytes so ASan sees overruns). */
    const char *data = "line one\r\nline two\rthree\n\nend\n";
    ssize_t n = sse_event_size("123", 3, "ev", 2, data, strlen(data));
    CHECK(n > 0);
    for (ssize_t cap = 0; cap < n; cap++) {
        char *b = malloc((size_t)cap);
        CHECK_EQ_INT(sse_event_encode(b, (size_t)cap, "123", 3, "ev", 2, data, strlen(data)),
                     SL_ESPACE);
        free(b);
    }
    char *b = malloc((size_t)n);
    CHECK_EQ_INT(sse_event_encode(b, (size_t)n, "123", 3, "ev", 2, data, strlen(data)), n);
    free(b);
}

/* ---- Comments and retry ---- */

static void test_comment_retry(void)
{
    char out[64];
    CHECK_EQ_INT(sse_comment_size(NULL, 0), 3);
    CHECK_EQ_INT(sse_comment_encode(out, sizeof out, NULL, 0), 3);
    CHECK_EQ_MEM(out, 3, ":\n\n", 3);
    CHECK_EQ_INT(sse_comment_size("hb", 2), 6);
    CHECK_EQ_INT(sse_comment_encode(out, sizeof out, "hb", 2), 6);
    CHECK_EQ_MEM(out, 6, ": hb\n\n", 6);
    CHECK_EQ_INT(sse_comment_encode(out, 5, "hb", 2), SL_ESPACE);
    CHECK_EQ_INT(sse_comment_encode(out, 2, NULL, 0), SL_ESPACE);

    CHECK_EQ_INT(sse_retry_size(0), 10);
    CHECK_EQ_INT(sse_retry_encode(out, sizeof out, 0), 10);
    CHECK_EQ_MEM(out, 10, "retry: 0\n\n", 10);
    CHECK_EQ_INT(sse_retry_size(3000), 13);
    CHECK_EQ_INT(sse_retry_encode(out, sizeof out, 3000), 13);
    CHECK_EQ_MEM(out, 13, "retry: 3000\n\n", 13);
    CHECK_EQ_INT(sse_retry_encode(out, sizeof out, UINT32_MAX), 19);
    CHECK_EQ_MEM(out, 19, "retry: 4294967295\n\n", 19);
    CHECK_EQ_INT(sse_retry_encode(out, 12, 3000), SL_ESPACE);
    for (uint32_t v = 1; v < 100000000u; v *= 10) {
        CHECK_EQ_INT(sse_retry_size(v - 1), sse_retry_encode(out, sizeof out, v - 1));
        CHECK_EQ_INT(sse_retry_size(v), sse_retry_encode(out, sizeof out, v));
    }

    /* The parser sees them as a comment and a retry, and dispatches nothing. */
    struct collect *c = calloc(1, sizeof *c);
    const char s[] = ": hb\n\nretry: 3000\n\n:\n\n";
    CHECK_EQ_INT(parse(s, sizeof s - 1, c), 0);
    CHECK_EQ_INT(c->n_ev, 0);
    CHECK_EQ_INT(c->n_comment, 2);
    CHECK_EQ_INT(c->n_retry, 1);
    CHECK_EQ_INT(c->retry[0], 3000);
    free(c);
}

/* ---- Parser against the spec's own examples and edge rules ---- */

static void test_parser(void)
{
    struct collect *c = calloc(1, sizeof *c);
#define P(s) (memset(c, 0, sizeof *c), parse(s, sizeof(s) - 1, c))
    /* Spec: three data lines make one message joined with LF. */
    CHECK_EQ_INT(P("data: YHOO\ndata: +2\ndata: 10\n\n"), 0);
    CHECK_EQ_INT(c->n_ev, 1);
    EV_IS(c, 0, "", "message", "YHOO\n+2\n10");
    /* Spec: the id persists; the last block without a blank line is lost. */
    CHECK_EQ_INT(P(": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
                   "data:  third event"),
                 0);
    CHECK_EQ_INT(c->n_ev, 2);
    EV_IS(c, 0, "1", "message", "first event");
    EV_IS(c, 1, "", "message", "second event");
    /* Spec: "data" alone appends an empty line; the first event is "". */
    CHECK_EQ_INT(P("data\n\ndata\ndata\n\ndata:"), 0);
    CHECK_EQ_INT(c->n_ev, 2);
    EV_IS(c, 0, "", "message", "");
    EV_IS(c, 1, "", "message", "\n");
    /* Spec: one leading space is dropped, only one. */
    CHECK_EQ_INT(P("data:test\n\ndata: test\n\ndata:  test\n\n"), 0);
    CHECK_EQ_INT(c->n_ev, 3);
    EV_IS(c, 0, "", "message", "test");
    EV_IS(c, 1, "", "message", "test");
    EV_IS(c, 2, "", "message", " test");
    /* CRLF and CR line ends; event type; BOM at the start only. */
    CHECK_EQ_INT(P("\xEF\xBB\xBFid: 5\r\nevent: up\rdata: x\r\n\r\n"), 0);
    CHECK_EQ_INT(c->n_ev, 1);
    EV_IS(c, 0, "5", "up", "x");
    /* No data: nothing dispatched, but the id sticks and the type resets. */
    CHECK_EQ_INT(P("id: 9\nevent: e\n\ndata: y\n\n"), 0);
    CHECK_EQ_INT(c->n_ev, 1);
    EV_IS(c, 0, "9", "message", "y");
    /* An id with a NUL is ignored; an empty "event:" is "message". */
    CHECK_EQ_INT(P("id: 1\n\nid: a\0b\nevent:\ndata: z\n\n"), 0);
    CHECK_EQ_INT(c->n_ev, 1);
    EV_IS(c, 0, "1", "message", "z");
    /* retry: digits only, saturating; unknown fields ignored. */
    CHECK_EQ_INT(P("retry: 12a\nretry:\nretry: 99999999999999999999999\nfoo: bar\nretry:7\n\n"), 0);
    CHECK_EQ_INT(c->n_retry, 2);
    CHECK(c->retry[0] == UINT64_MAX);
    CHECK_EQ_INT(c->retry[1], 7);
    CHECK_EQ_INT(c->n_ev, 0);
    /* Field names are exact: "Data", "data " and "datax" are unknown. */
    CHECK_EQ_INT(P("Data: a\ndata : b\ndatax: c\n\n"), 0);
    CHECK_EQ_INT(c->n_ev, 0);
    /* A callback's non-zero return stops the parse and is returned. */
    memset(c, 0, sizeof *c);
    c->stop_after = 1;
    CHECK_EQ_INT(parse("data: a\n\ndata: b\n\n", 18, c), 7);
    CHECK_EQ_INT(c->n_ev, 1);
    /* Scratch smaller than the input is refused up front. */
    char scratch[4];
    CHECK_EQ_INT(sse_parse("data: a\n\n", 9, scratch, sizeof scratch, &cbs, c), SL_ESPACE);
    CHECK_EQ_INT(sse_parse(NULL, 0, NULL, 0, &cbs, c), 0);
    CHECK_EQ_INT(sse_parse("data: a\n\n", 9, scratch, 0, NULL, NULL), SL_ESPACE);
#undef P
    free(c);
}

/* ---- Round trip, one event at a time and as a stream ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

/* Data biased towards the bytes that matter to the format. */
static size_t rand_data(char *out, size_t max)
{
    static const char special[] = "\r\n :\0\xEF\xBB\xBF";
    size_t len = rnd() % (max + 1);
    for (size_t i = 0; i < len; i++) {
        uint32_t r = rnd() % 10;
        out[i] = r < 5 ? special[rnd() % (sizeof special - 1)]
                       : (char)(r < 8 ? 'a' + rnd() % 26 : rnd());
    }
    return len;
}

/* A valid field (no CR/LF/NUL), possibly empty. */
static size_t rand_field(char *out, size_t max)
{
    size_t len = rnd() % (max + 1);
    for (size_t i = 0; i < len; i++) {
        char ch;
        do
            ch = (char)rnd();
        while (ch == '\r' || ch == '\n' || ch == '\0');
        out[i] = ch;
    }
    return len;
}

static void test_round_trip(void)
{
    enum { ITER = 20000, MAXD = 200 };
    static char data[MAXD], id[32], ev[32], norm[MAXD], buf[8 * MAXD + 128],
        scratch[8 * MAXD + 128];
    struct collect *c = calloc(1, sizeof *c);
    int bad = 0;
    for (int it = 0; it < ITER && bad < 10; it++) {
        size_t dl = rand_data(data, it < 100 ? 4 : MAXD), il = rand_field(id, 20),
               el = rand_field(ev, 20);
        const char *evp = rnd() % 4 ? ev : NULL;
        ssize_t n = sse_event_size(id, il, evp, el, data, dl);
        ssize_t w = sse_event_encode(buf, sizeof buf, id, il, evp, el, data, dl);
        memset(c, 0, sizeof *c);
        int rc = sse_parse(buf, (size_t)w, scratch, sizeof scratch, &cbs, c);
        size_t nl = normalise(data, dl, norm);
        bool ok = n > 0 && w == n && rc == 0 && c->n_ev == 1 && c->ev[0].data_len == nl &&
                  memcmp(c->ev[0].data, norm, nl) == 0 && c->ev[0].id_len == il &&
                  memcmp(c->ev[0].id, id, il) == 0;
        if (evp && el)
            ok = ok && c->ev[0].type_len == el && memcmp(c->ev[0].type, ev, el) == 0;
        else
            ok = ok && c->ev[0].type_len == 7 && memcmp(c->ev[0].type, "message", 7) == 0;
        /* Without a CR the data comes back byte for byte. */
        if (!memchr(data, '\r', dl)) ok = ok && nl == dl && memcmp(norm, data, dl) == 0;
        CHECK(ok);
        if (!ok) bad++;
    }

    /* A stream of many events with heartbeats and retry hints in between:
     * every event comes back in order, ids included. */
    static char stream[64 * (8 * MAXD + 128)], sscratch[sizeof stream];
    static char datas[40][MAXD];
    static size_t dls[40];
    for (int round = 0; round < 200; round++) {
        size_t off = 0;
        int nev = 1 + (int)(rnd() % 40);
        for (int i = 0; i < nev; i++) {
            if (rnd() % 3 == 0)
                off += (size_t)sse_comment_encode(stream + off, sizeof stream - off, "hb", 2);
            if (rnd() % 5 == 0)
                off += (size_t)sse_retry_encode(stream + off, sizeof stream - off, rnd());
            dls[i] = rand_data(datas[i], MAXD);
            char idb[16];
            int il = snprintf(idb, sizeof idb, "%d-%d", round, i);
            ssize_t w = sse_event_encode(stream + off, sizeof stream - off, idb, (size_t)il,
                                         i % 2 ? "odd" : NULL, 3, datas[i], dls[i]);
            CHECK(w > 0);
            off += (size_t)w;
        }
        memset(c, 0, sizeof *c);
        CHECK_EQ_INT(sse_parse(stream, off, sscratch, sizeof sscratch, &cbs, c), 0);
        CHECK_EQ_INT(c->n_ev, nev);
        for (int i = 0; i < nev && i < c->n_ev; i++) {
            char idb[16];
            int il = snprintf(idb, sizeof idb, "%d-%d", round, i);
            size_t nl = normalise(datas[i], dls[i], norm);
            CHECK_EQ_MEM(c->ev[i].data, c->ev[i].data_len, norm, nl);
            CHECK_EQ_MEM(c->ev[i].id, c->ev[i].id_len, idb, (size_t)il);
            if (i % 2)
                CHECK_EQ_MEM(c->ev[i].type, c->ev[i].type_len, "odd", 3);
            else
                CHECK_EQ_MEM(c->ev[i].type, c->ev[i].type_len, "message", 7);
        }
    }
    free(c);
}

int main(void)
{
    test_encode_exact();
    test_encode_errors();
    test_comment_retry();
    test_parser();
    test_round_trip();
    return CHECK_DONE();
}
