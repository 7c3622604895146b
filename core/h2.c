/* h2.c: an nghttp2 server session on a connection, and its streams as
 * connections of their own (see h2.h).
 *
 * Why streams are conns: every transport, the Lua request path and the
 * response builders already speak `conn` (conn_send, conn_response_*,
 * conn_start_stream...).  A stream that is a conn runs all of them as they
 * are; only the socket end differs, and conn.c hands that end here for a
 * conn marked h2_stream (flush, end, close).  The request reaches the app
 * through the HTTP/1.1 parser (written out from the HEADERS), so its limits
 * and checks are the same on both protocols; the response head the app
 * queued first on the stream's output is read back into HEADERS, and what
 * follows it is the body, sent in DATA frames as the stream's window
 * opens: nghttp2 sizes each frame and writes its header, and the body goes
 * from the stream's queue to the socket's without passing through
 * nghttp2's buffers (NGHTTP2_DATA_FLAG_NO_COPY; on_send_data).
 *
 * Output of the session goes to the socket's conn queue, in batches; the
 * session stops taking frames while that queue holds HIGH_WATER bytes (a
 * stalled socket), so data then waits in the streams' own queues, where
 * the output limit cuts each one off alone.
 *
 * Lifetime: a stream's conn is closed (conn_close) when nghttp2 closes the
 * stream, or closes the stream (RST_STREAM) when its transport closes it;
 * from then on the session holds no pointer to it (the stream's user data
 * is cleared).  The session itself is deleted at the end of the loop pass
 * after its connection closed (server_defer), never inside one of its own
 * callbacks. */
#include "core/h2.h"

#include "core/defs.h"
#include "core/log.h"

#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HIGH_WATER (256 * 1024) /* session bytes queued on the socket before it waits */
#define SEND_BATCH (16 * 1024)  /* frames gathered per buffer pushed to the socket */
#define FRAME_HD 9              /* an HTTP/2 frame header */
#define COPY_MAX 2048           /* a DATA body up to this is copied into the batch */
#define MAX_CONTINUATIONS 8     /* CONTINUATION frames after one HEADERS */
#define HPACK_BOMB_FACTOR 4     /* a header list past max_header x this ends the connection */
#define MAX_FIELDS (4 * 100)    /* header fields in one block before the same */
#define REFUSED_MAX 100         /* streams refused on one connection before GOAWAY */
#define RST_BURST 200           /* client resets: burst, then RST_RATE a second */
#define RST_RATE 50.0
#define CTRL_BURST 100 /* SETTINGS and PING frames: burst, then CTRL_RATE a second */
#define CTRL_RATE 10.0
#define WS_INPUT_MAX (1024 * 1024) /* WebSocket bytes waiting for a paused transport */
#define HEAD_MAX 16384             /* a response head read back from a stream's queue */

typedef struct h2_conn h2_conn;

typedef struct h2_stream {
    conn c;     /* first: a stream is a conn, freed as one (server_free_closed) */
    h2_conn *h; /* NULL once closed */
    int32_t id;
    bool dispatched; /* handed to the request path */
    bool connect_ws; /* extended CONNECT :protocol websocket (RFC 8441) */
    bool too_large;  /* header list past max_header: 431 */
    bool body_over;  /* body past max_body: 413 */
    bool bad;        /* malformed for our purposes: 400 */
    bool responded;  /* HEADERS submitted */
    bool cut;        /* output past the limit: reset at its end */
    bool closed;     /* nghttp2 closed the stream */
    bool in_drained;
    bool deferred;    /* its data provider waits for nghttp2_session_resume_data */
    bool resuming;    /* on h->resumes: woken when the session next sends (resume_all) */
    size_t accounted; /* its queued bytes as last added to h->queued */
    struct h2_stream *next, *prev; /* h->streams */
    struct h2_stream *drained_next;
    struct h2_stream *resume_next; /* h->resumes */
    /* The request being gathered, until it is handed on. */
    char *fields; /* "name: value\r\n"... of the regular headers */
    size_t fields_len, fields_cap;
    char *path, *authority, *host;
    char method[24], protocol[24];
    char *body;
    size_t body_len, body_cap;
    size_t list_bytes; /* header list size (RFC 9113: name + value + 32 each) */
    unsigned nfields;
} h2_stream;

struct h2_conn {
    server_deferred defer;
    /* The first 64 bytes: what a pass reads (h2_stream_flush, the turn). */
    conn *c;
    nghttp2_session *session;
    size_t queued; /* bytes waiting in its streams' queues (account()) */
    bool dead;     /* its connection closed */
    bool in_recv, in_send, send_again;
    bool hw_deferred; /* a stream's data waits for the socket's queue to drain */
    bool terminating; /* GOAWAY for an error submitted: read no more */
    bool shutting;    /* graceful GOAWAY: end when the last stream has */
    bool counted;     /* the cause of a GOAWAY was counted */
    h2_stream *drained;
    h2_stream *resumes; /* deferred streams given new bytes (h2_stream_flush) */
    h2_stream *streams;
    unsigned nstreams, refused;
    size_t continuations;
    double rst_tokens, ctrl_tokens;
    ev_tstamp tokens_at;
    ev_tstamp active_at; /* last input, for the idle timeout */
};

static struct {
    unsigned long long connections, streams, streams_total, streams_cut, rapid_reset,
        continuation_flood, header_list, too_many_streams, settings_flood, ping_flood, flood,
        protocol_error;
} stats;
#define COUNT(field, d) __atomic_add_fetch(&stats.field, (unsigned long long)(d), __ATOMIC_RELAXED)

void h2_get_stats(h2_stats *o)
{
#define GET(f) o->f = __atomic_load_n(&stats.f, __ATOMIC_RELAXED)
    GET(connections);
    GET(streams);
    GET(streams_total);
    GET(streams_cut);
    GET(rapid_reset);
    GET(continuation_flood);
    GET(header_list);
    GET(too_many_streams);
    GET(settings_flood);
    GET(ping_flood);
    GET(flood);
    GET(protocol_error);
#undef GET
}

static log_limit refusal_log = LOG_LIMIT_INIT;
static log_limit cut_log = LOG_LIMIT_INIT;

static inline h2_stream *stream_of(conn *c)
{
    return (h2_stream *)c; /* conn is its first member */
}

bool h2_is_preface(const char *data, size_t len)
{
    if (len < 4) return false;
    return memcmp(data, H2_PREFACE, len < H2_PREFACE_LEN ? len : H2_PREFACE_LEN) == 0;
}

static void h2_send(h2_conn *h);

/* Ends the connection for an attack or a protocol error: GOAWAY with
 * `code`, counted once under `counter`, and nothing more is read. */
static void count_refusal(h2_conn *h, unsigned long long *counter, const char *why)
{
    if (h->counted) return;
    h->counted = true;
    if (counter) __atomic_add_fetch(counter, 1, __ATOMIC_RELAXED);
    char remote[64];
    LOG_KV_LIMITED(&refusal_log, 1.0, LOG_INFO, "http2 connection refused", LOG_S("reason", why),
                   LOG_S("remote", conn_remote_addr(h->c, remote, sizeof(remote))));
}

static void h2_refuse(h2_conn *h, uint32_t code, unsigned long long *counter, const char *why)
{
    count_refusal(h, counter, why);
    if (h->terminating) return;
    h->terminating = true;
    nghttp2_session_terminate_session(h->session, code);
}

/* Token buckets for the frames a client may send at will: refilled at
 * their rates, taken one a frame. */
static bool take_token(h2_conn *h, double *tokens)
{
    ev_tstamp now = ev_now(h->c->srv->loop);
    double dt = now - h->tokens_at;
    if (dt > 0) {
        h->rst_tokens += dt * RST_RATE;
        if (h->rst_tokens > RST_BURST) h->rst_tokens = RST_BURST;
        h->ctrl_tokens += dt * CTRL_RATE;
        if (h->ctrl_tokens > CTRL_BURST) h->ctrl_tokens = CTRL_BURST;
        h->tokens_at = now;
    }
    if (*tokens < 1.0) return false;
    *tokens -= 1.0;
    return true;
}

/* ---- streams ----------------------------------------------------------- */

static void free_request(h2_stream *s)
{
    free(s->fields);
    free(s->path);
    free(s->authority);
    free(s->host);
    free(s->body);
    s->fields = s->path = s->authority = s->host = s->body = NULL;
    s->fields_len = s->fields_cap = s->body_len = s->body_cap = 0;
}

static void rst(h2_stream *s, uint32_t code)
{
    if (s->h && !s->h->dead && !s->closed)
        nghttp2_submit_rst_stream(s->h->session, NGHTTP2_FLAG_NONE, s->id, code);
}

static int append(char **p, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t nc = *cap ? *cap : 256;
        while (nc < *len + n + 1)
            nc *= 2;
        char *np = realloc(*p, nc);
        if (!np) return SL_ENOMEM;
        *p = np;
        *cap = nc;
    }
    memcpy(*p + *len, s, n);
    *len += n;
    (*p)[*len] = '\0';
    return 0;
}

/* Hands the gathered request to the request path, written as HTTP/1.1. */
static void dispatch(h2_stream *s)
{
    if (s->dispatched) return;
    s->dispatched = true;
    conn *c = &s->c;
    conn_hold(c);
    if (s->too_large) {
        server_count_refusal(431);
        conn_respond_error(c, 431, "request header fields too large");
        goto out;
    }
    if (s->body_over) {
        server_count_refusal(413);
        conn_respond_error(c, 413, "body too large");
        goto out;
    }
    bool is_connect = strcmp(s->method, "CONNECT") == 0;
    if (s->bad || !s->path || (is_connect && !s->connect_ws)) {
        server_count_refusal(400);
        conn_respond_error(c, 400, is_connect ? "CONNECT is only for websocket" : "bad request");
        goto out;
    }
    char *r = NULL;
    size_t len = 0, cap = 0;
    const char *host = s->authority ? s->authority : s->host ? s->host : "";
    const char *method = s->connect_ws ? "GET" : s->method;
    int e = 0;
    e |= append(&r, &len, &cap, method, strlen(method));
    e |= append(&r, &len, &cap, STRLIT(" "));
    e |= append(&r, &len, &cap, s->path, strlen(s->path));
    e |= append(&r, &len, &cap, STRLIT(" HTTP/1.1\r\nHost: "));
    e |= append(&r, &len, &cap, host, strlen(host));
    e |= append(&r, &len, &cap, STRLIT("\r\n"));
    if (s->fields_len) e |= append(&r, &len, &cap, s->fields, s->fields_len);
    if (s->connect_ws) {
        /* RFC 8441 carries no key: the handshake's checks want one. */
        e |= append(&r, &len, &cap, STRLIT("Connection: Upgrade\r\nUpgrade: websocket\r\n"));
        if (!s->fields || !strcasestr(s->fields, "sec-websocket-key:"))
            e |= append(&r, &len, &cap, STRLIT("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"));
    } else {
        e |= append(&r, &len, &cap, STRLIT("Connection: close\r\n"));
    }
    if (s->body_len || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0) {
        char cl[40];
        int n = snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n", s->body_len);
        e |= append(&r, &len, &cap, cl, (size_t)n);
    }
    e |= append(&r, &len, &cap, STRLIT("\r\n"));
    if (s->body_len) e |= append(&r, &len, &cap, s->body, s->body_len);
    free_request(s);
    if (e) {
        free(r);
        conn_respond_error(c, 503, "out of memory");
        goto out;
    }
    conn_carried_request(c, r, len);
    free(r);
out:
    free_request(s);
    conn_release(c);
}

/* Reads the response head the app queued first on the stream back into
 * HEADERS and submits them with the stream's data provider.  Returns 0,
 * 1 when the head is not there (yet), or SL_EPROTO (a head that is not
 * one, or nghttp2 refused it). */
static ssize_t read_body(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud);

static int submit_head(h2_stream *s)
{
    outq_t *q = &s->c.out;
    if (q->bytes == 0) return 1;
    char head[HEAD_MAX];
    size_t hl = 0;
    struct iovec iov[16];
    int n = outq_iov(q, iov, 16);
    for (int i = 0; i < n && hl < sizeof(head); i++) {
        size_t take = iov[i].iov_len < sizeof(head) - hl ? iov[i].iov_len : sizeof(head) - hl;
        memcpy(head + hl, iov[i].iov_base, take);
        hl += take;
    }
    char *end = memmem(head, hl, STRLIT("\r\n\r\n"));
    if (!end) return hl >= sizeof(head) ? SL_EPROTO : 1;
    size_t head_len = (size_t)(end - head) + 4;
    /* "HTTP/1.1 NNN Reason" */
    if (head_len < 12 || !STR_STARTS(head, head_len, "HTTP/1.1 ")) return SL_EPROTO;
    char status[4] = {head[9], head[10], head[11], 0};
    if (strcmp(status, "101") == 0) memcpy(status, "200", 4); /* RFC 8441: the stream is open */
    nghttp2_nv nva[64];
    char names[64][64];
    int nv = 0;
    nva[nv++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, 3, NGHTTP2_NV_FLAG_NONE};
    char *line = memchr(head, '\n', head_len) + 1;
    while (line < end + 2 && nv < 64) {
        char *eol = memmem(line, (size_t)(end + 2 - line), STRLIT("\r\n"));
        if (!eol || eol == line) break;
        char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon && colon - line < 64) {
            size_t nl = (size_t)(colon - line);
            char *v = colon + 1;
            while (v < eol && *v == ' ')
                v++;
            for (size_t i = 0; i < nl; i++)
                names[nv][i] = (char)(line[i] >= 'A' && line[i] <= 'Z' ? line[i] + 32 : line[i]);
            names[nv][nl] = 0;
            /* Connection-specific fields have no place in HTTP/2 (RFC 9113 8.2.2). */
            static const char *const drop[] = {"connection",        "keep-alive",
                                               "transfer-encoding", "upgrade",
                                               "proxy-connection",  "sec-websocket-accept"};
            bool skip = false;
            for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
                if (strcmp(names[nv], drop[i]) == 0) skip = true;
            if (!skip) {
                nva[nv] = (nghttp2_nv){(uint8_t *)names[nv], (uint8_t *)v, nl, (size_t)(eol - v),
                                       NGHTTP2_NV_FLAG_NONE};
                nv++;
            }
        }
        line = eol + 2;
    }
    outq_consume(q, head_len);
    nghttp2_data_provider dp = {.source.ptr = s, .read_callback = read_body};
    int rv = nghttp2_submit_response(s->h->session, s->id, nva, (size_t)nv, &dp);
    if (rv != 0) return SL_EPROTO;
    s->responded = true;
    return 0;
}

/* Brings h->queued up to date with the stream's queue: conn.c pushes to
 * it (and the session takes from it) without telling. */
static void account(h2_stream *s)
{
    h2_conn *h = s->h;
    h->queued = h->queued - s->accounted + s->c.out.bytes;
    s->accounted = s->c.out.bytes;
}

bool h2_stream_over(conn *c, size_t len)
{
    /* A queue still under its share (max_output / H2_MAX_STREAMS) is not
     * checked: a fan-out's messages then touch nothing but the stream
     * (the connection's state is cold in a fan-out to many).  Those
     * streams together hold at most one max_output more than the bound. */
    size_t max = c->srv->limits.max_output;
    if (c->out.bytes == 0 || c->out.bytes + len <= max / H2_MAX_STREAMS) return false;
    h2_stream *s = stream_of(c);
    if (!s->h || s->h->dead) return false;
    account(s);
    return s->h->queued + len > H2_CONN_OUTPUT_FACTOR * max;
}

/* Asks the session to write, from the server's write order. */
static void want_send(h2_conn *h)
{
    if (h->dead) return;
    conn_want_turn(h->c);
}

void h2_stream_flush(conn *c)
{
    h2_stream *s = stream_of(c);
    /* The turn was asked for since the session last took from this
     * stream, and its provider is scheduled: the new bytes go with the
     * rest, nothing to tell (schedule_flush checks this first: in a
     * fan-out to many, only the conn's line is touched). */
    if (c->h2_turn_asked) return;
    h2_conn *h = s->h;
    if (!h || h->dead || c->state == CONN_CLOSED) return;
    account(s);
    if (!s->responded) {
        int r = submit_head(s);
        if (r == 1) {
            if (c->state == CONN_CLOSING) conn_close(c); /* ended with nothing to say */
            return;
        }
        if (r < 0) {
            LOG_KV(LOG_WARN, "http2: a response head could not be sent", LOG_I("stream", s->id));
            conn_close(c);
            return;
        }
    } else if (s->deferred) {
        /* Only a provider that said "deferred" needs waking: one still
         * scheduled (the common case in a fan-out, between the first
         * message of a pass and the socket's turn) takes the new bytes
         * as they are.  It is woken when the session next sends
         * (resume_all), not here: in a fan-out to many sessions, each
         * session's state is then read once per pass, not twice. */
        s->deferred = false;
        s->resuming = true;
        s->resume_next = h->resumes;
        h->resumes = s;
    }
    c->h2_turn_asked = s->responded;
    want_send(h);
}

void h2_stream_cut(conn *c)
{
    stream_of(c)->cut = true;
}

void h2_stream_end(conn *c)
{
    h2_stream *s = stream_of(c);
    if (!s->h || s->h->dead) return;
    if (s->cut) {
        COUNT(streams_cut, 1);
        char remote[64];
        LOG_KV_LIMITED(&cut_log, 1.0, LOG_INFO, "http2 stream cut off: output over the limit",
                       LOG_I("stream", s->id), LOG_I("queued", c->out.bytes),
                       LOG_S("remote", conn_remote_addr(c, remote, sizeof(remote))));
        conn_close(c); /* RST_STREAM CANCEL: its siblings go on */
        return;
    }
    h2_stream_flush(c);
}

void h2_stream_closed(conn *c)
{
    h2_stream *s = stream_of(c);
    h2_conn *h = s->h;
    free_request(s);
    if (!h) return;
    h->queued -= s->accounted;
    s->accounted = 0;
    if (s->resuming) { /* closed between a message and the session's send */
        h2_stream **pp = &h->resumes;
        while (*pp != s)
            pp = &(*pp)->resume_next;
        *pp = s->resume_next;
        s->resuming = false;
    }
    if (!h->dead) {
        nghttp2_session_set_stream_user_data(h->session, s->id, NULL);
        if (!s->closed) rst(s, NGHTTP2_CANCEL);
        want_send(h);
    }
    if (s->prev)
        s->prev->next = s->next;
    else
        h->streams = s->next;
    if (s->next) s->next->prev = s->prev;
    s->next = s->prev = NULL;
    h->nstreams--;
    COUNT(streams, -1);
    s->h = NULL;
}

/* ---- nghttp2 callbacks -------------------------------------------------- */

static h2_stream *user_stream(nghttp2_session *session, int32_t id)
{
    h2_stream *s = nghttp2_session_get_stream_user_data(session, id);
    return s && s->c.state != CONN_CLOSED ? s : NULL;
}

/* Frames are gathered here while a session writes, and pushed to the
 * socket's queue in one buffer of their exact size: one allocation per
 * batch, not per frame.  One connection owns the batch at a time; a send
 * that nests inside another's (a stream's close callback reaching a
 * second connection) writes its frames one by one. */
static __thread char batch[SEND_BATCH];
static __thread size_t batch_len;
static __thread h2_conn *batch_owner;

static int push_batch(h2_conn *h)
{
    if (batch_owner != h) return 0;
    size_t n = batch_len;
    batch_len = 0;
    batch_owner = NULL;
    return n && !h->dead ? conn_send_copy(h->c, batch, n) : 0;
}

/* Bytes queued for the socket by this session (its queue and the batch). */
static size_t socket_queued(h2_conn *h)
{
    return h->c->out.bytes + (batch_owner == h ? batch_len : 0);
}

/* The socket queue's high water: the session waits above it. */
static size_t high_water(h2_conn *h)
{
    size_t max = h->c->srv->limits.max_output;
    return max < HIGH_WATER ? max : HIGH_WATER;
}

/* The stream's data provider: says how much of its queue the next DATA
 * frame carries, without copying (NGHTTP2_DATA_FLAG_NO_COPY): on_send_data
 * then queues nghttp2's frame header and the bytes, straight from the
 * shared buffers.  The socket's queue stays under its high water: above
 * it the stream waits (deferred) for the drain, and its own queue is
 * where the output limit cuts it off. */
static ssize_t read_body(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    h2_conn *h = ud;
    h2_stream *s = user_stream(session, id);
    if (!s) return NGHTTP2_ERR_DEFERRED; /* being reset */
    outq_t *q = &s->c.out;
    if (q->bytes == 0) {
        if (s->c.state == CONN_CLOSING) {
            *flags |= NGHTTP2_DATA_FLAG_EOF;
            return 0;
        }
        s->deferred = true;
        s->c.h2_turn_asked = false;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t queued = socket_queued(h);
    if (queued > 0 && queued + FRAME_HD + length > high_water(h)) {
        s->deferred = true;
        s->c.h2_turn_asked = false;
        h->hw_deferred = true; /* h2_on_drain resumes it */
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t n = q->bytes < length ? q->bytes : length;
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (n == q->bytes && s->c.state == CONN_CLOSING) *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static ssize_t on_send(nghttp2_session *session, const uint8_t *data, size_t length, int flags,
                       void *ud)
{
    h2_conn *h = ud;
    if (h->dead) return NGHTTP2_ERR_CALLBACK_FAILURE;
    size_t queued = socket_queued(h);
    /* The socket's queue stays under its own output limit: an empty one
     * takes any frame. */
    if (queued > 0 && queued + length > high_water(h)) return NGHTTP2_ERR_WOULDBLOCK;
    /* The batch keeps room for one DATA frame header (on_send_data). */
    if (batch_owner == h && batch_len + length > SEND_BATCH - FRAME_HD && push_batch(h) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (length >= SEND_BATCH - FRAME_HD || (batch_owner && batch_owner != h)) {
        if (conn_send_copy(h->c, data, length) < 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
        return (ssize_t)length;
    }
    batch_owner = h;
    memcpy(batch + batch_len, data, length);
    batch_len += length;
    return (ssize_t)length;
}

/* A DATA frame read_body sized: nghttp2's header, then `length` bytes
 * from the head of the stream's queue.  A short body (SSE events: a
 * pass's worth for one stream is a few hundred bytes) is copied once,
 * into the batch with the frames around it, so the socket gets one
 * buffer per pass rather than a piece per event; a long one is moved to
 * the socket's queue as it is (references to the shared buffers, no
 * copy).  Either way the message was encoded once.  read_body made room
 * under the high water, so this never blocks, and the stream cannot have
 * gone in between (both run inside one nghttp2_session_send). */
static int on_send_data(nghttp2_session *session, nghttp2_frame *frame, const uint8_t *framehd,
                        size_t length, nghttp2_data_source *src, void *ud)
{
    h2_conn *h = ud;
    h2_stream *s = src->ptr;
    if (h->dead) return NGHTTP2_ERR_CALLBACK_FAILURE;
    outq_t *q = &s->c.out;
    SLUICE_ASSERT(length <= q->bytes);
    bool ours = !batch_owner || batch_owner == h;
    if (ours && length <= COPY_MAX) {
        /* Room kept for one more header, as on_send keeps it. */
        if (batch_len + FRAME_HD + length > SEND_BATCH - FRAME_HD && push_batch(h) < 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        batch_owner = h;
        char *p = batch + batch_len;
        memcpy(p, framehd, FRAME_HD);
        p += FRAME_HD;
        size_t left = length;
        for (uint32_t i = 0; left > 0; i++) {
            const outq_seg *g = &q->segs[(q->head + i) & (q->cap - 1)];
            size_t take = g->len < left ? g->len : left;
            memcpy(p, g->buf->data + g->off, take);
            p += take;
            left -= take;
        }
        batch_len = (size_t)(p - batch);
        outq_consume(q, length);
        goto sent;
    }
    /* The header (with the batch's frames, when the batch is ours) goes
     * in front of the body in the stream's queue, and the lot moves on:
     * into an empty socket queue (the usual case) the ring itself does. */
    const char *hd = (const char *)framehd;
    size_t hl = FRAME_HD;
    if (ours) {
        memcpy(batch + batch_len, framehd, FRAME_HD); /* on_send leaves room for it */
        hd = batch;
        hl = batch_len + FRAME_HD;
        batch_len = 0;
        batch_owner = NULL;
    }
    buf_t *hb = buf_from(hd, hl);
    int rc = hb ? outq_push_front(q, hb, 0, hl) : SL_ENOMEM;
    buf_unref(hb);
    if (rc < 0 || conn_send_moved(h->c, q, hl + length) < 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
sent:
    s->c.h2_turn_asked = false;
    account(s);
    if (q->bytes == 0 && !s->in_drained) { /* its on_drain runs once the send is over */
        s->in_drained = true;
        conn_hold(&s->c);
        s->drained_next = h->drained;
        h->drained = s;
    }
    return 0;
}

static int on_begin_frame(nghttp2_session *session, const nghttp2_frame_hd *hd, void *ud)
{
    h2_conn *h = ud;
    if (hd->type == NGHTTP2_HEADERS) h->continuations = 0;
    if (hd->type == NGHTTP2_CONTINUATION && ++h->continuations > MAX_CONTINUATIONS) {
        h2_refuse(h, NGHTTP2_ENHANCE_YOUR_CALM, &stats.continuation_flood, "continuation flood");
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    h2_conn *h = ud;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    if (h->terminating || h->shutting) return 0;
    if (h->nstreams >= H2_MAX_STREAMS) {
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_REFUSED_STREAM);
        return 0; /* counted when the RST_STREAM goes (on_frame_send) */
    }
    h2_stream *s = calloc(1, sizeof(*s));
    if (!s) {
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_INTERNAL_ERROR);
        return 0;
    }
    conn_carried_init(&s->c, h->c);
    s->h = h;
    s->id = frame->hd.stream_id;
    s->next = h->streams;
    if (h->streams) h->streams->prev = s;
    h->streams = s;
    h->nstreams++;
    COUNT(streams, 1);
    COUNT(streams_total, 1);
    nghttp2_session_set_stream_user_data(session, s->id, s);
    return 0;
}

static char *dup_n(const uint8_t *v, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, v, n);
        p[n] = 0;
    }
    return p;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    h2_conn *h = ud;
    h2_stream *s = user_stream(session, frame->hd.stream_id);
    if (!s || s->dispatched) return 0; /* trailers, or a refused stream: ignored */
    size_t max = h->c->srv->limits.max_header;
    s->list_bytes += namelen + valuelen + 32;
    s->nfields++;
    if (s->list_bytes > max * HPACK_BOMB_FACTOR || s->nfields > MAX_FIELDS) {
        /* Far past any honest request: an HPACK bomb (small on the wire,
         * huge decoded) or a field flood. */
        h2_refuse(h, NGHTTP2_ENHANCE_YOUR_CALM, &stats.header_list, "header list too large");
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (s->list_bytes > max) {
        s->too_large = true;
        return 0;
    }
    if (s->too_large) return 0;
    if (namelen > 0 && name[0] == ':') {
#define IS(lit) (namelen == sizeof(lit) - 1 && memcmp(name, lit, namelen) == 0)
        if (IS(":method")) {
            if (valuelen >= sizeof(s->method)) {
                s->bad = true;
            } else {
                memcpy(s->method, value, valuelen);
                s->method[valuelen] = 0;
            }
        } else if (IS(":path")) {
            free(s->path);
            s->path = dup_n(value, valuelen);
            if (!s->path || memchr(value, ' ', valuelen)) s->bad = true;
        } else if (IS(":authority")) {
            free(s->authority);
            s->authority = dup_n(value, valuelen);
        } else if (IS(":protocol")) {
            if (STR_IS_CASE((const char *)value, valuelen, "websocket"))
                s->connect_ws = true;
            else
                s->bad = true;
        }
        return 0; /* :scheme: nothing to carry */
    }
    if (IS("host")) {
        free(s->host);
        s->host = dup_n(value, valuelen);
        return 0;
    }
    /* Ours to write: the framing and the connection's own fields. */
    if (IS("content-length") || IS("te") || IS("expect") || IS("connection") || IS("upgrade") ||
        IS("transfer-encoding") || IS("keep-alive"))
        return 0;
#undef IS
    if (append(&s->fields, &s->fields_len, &s->fields_cap, (const char *)name, namelen) ||
        append(&s->fields, &s->fields_len, &s->fields_cap, STRLIT(": ")) ||
        append(&s->fields, &s->fields_len, &s->fields_cap, (const char *)value, valuelen) ||
        append(&s->fields, &s->fields_len, &s->fields_cap, STRLIT("\r\n")))
        s->bad = true;
    return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    h2_stream *s = user_stream(session, id);
    if (!s) return 0;
    if (!s->dispatched) {
        if (s->body_over) return 0;
        if (s->body_len + len > s->c.srv->limits.max_body) {
            s->body_over = true;
            return 0;
        }
        if (append(&s->body, &s->body_len, &s->body_cap, (const char *)data, len) < 0)
            s->bad = true;
        return 0;
    }
    if (!s->connect_ws) return 0;
    if (conn_carried_input(&s->c, (const char *)data, len, WS_INPUT_MAX) < 0) {
        /* The transport stopped reading and the client went on: reset
         * rather than buffer without end. */
        rst(s, NGHTTP2_ENHANCE_YOUR_CALM);
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    h2_conn *h = ud;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
    case NGHTTP2_DATA: {
        h2_stream *s = user_stream(session, frame->hd.stream_id);
        if (!s) break;
        bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
        bool headers_done =
            frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST;
        /* A CONNECT's stream stays open: it is answered at its headers. */
        bool connect = headers_done && strcmp(s->method, "CONNECT") == 0;
        if (!s->dispatched && (end || connect)) {
            dispatch(s);
        } else if (!s->dispatched && headers_done) {
            conn_stream_timer(h->c, 1.0); /* its body has header_timeout to come */
        } else if (s->dispatched && end && s->connect_ws && s->c.state != CONN_CLOSED) {
            conn_close_after_write(&s->c); /* the client ended its side */
        }
        break;
    }
    case NGHTTP2_RST_STREAM:
        if (!take_token(h, &h->rst_tokens))
            h2_refuse(h, NGHTTP2_ENHANCE_YOUR_CALM, &stats.rapid_reset, "rapid reset");
        break;
    case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK) && !take_token(h, &h->ctrl_tokens))
            h2_refuse(h, NGHTTP2_ENHANCE_YOUR_CALM, &stats.settings_flood, "settings flood");
        break;
    case NGHTTP2_PING:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK) && !take_token(h, &h->ctrl_tokens))
            h2_refuse(h, NGHTTP2_ENHANCE_YOUR_CALM, &stats.ping_flood, "ping flood");
        break;
    default:
        break;
    }
    return 0;
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    h2_conn *h = ud;
    if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR) {
        /* nghttp2 ended the connection itself (a protocol error it found,
         * with its reason as the debug data): counted here. */
        h->terminating = true;
        const char *dbg = (const char *)frame->goaway.opaque_data;
        size_t dl = frame->goaway.opaque_data_len;
        char why[96];
        snprintf(why, sizeof(why), "%.*s", (int)(dl < 95 ? dl : 95), dbg ? dbg : "");
        if (strstr(why, "max concurrent streams"))
            count_refusal(h, &stats.too_many_streams, "too many streams");
        else
            count_refusal(h, &stats.protocol_error, why[0] ? why : "protocol error");
    }
    if (frame->hd.type == NGHTTP2_RST_STREAM &&
        frame->rst_stream.error_code == NGHTTP2_REFUSED_STREAM) {
        COUNT(too_many_streams, 1);
        if (++h->refused > REFUSED_MAX)
            h2_refuse(h, NGHTTP2_ENHANCE_YOUR_CALM, NULL, "too many streams");
    }
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t id, uint32_t code, void *ud)
{
    h2_stream *s = user_stream(session, id);
    if (!s) return 0;
    s->closed = true;
    conn_close(&s->c);
    return 0;
}

/* ---- the connection ----------------------------------------------------- */

static void run_drained(h2_conn *h)
{
    while (h->drained) {
        h2_stream *s = h->drained;
        h->drained = s->drained_next;
        s->in_drained = false;
        conn_carried_drained(&s->c);
        conn_release(&s->c);
    }
}

/* After the session read or wrote: ends the connection when the session
 * is done (GOAWAY sent, or the graceful stop's last stream over). */
static void check_done(h2_conn *h)
{
    if (h->dead) return;
    bool done = !nghttp2_session_want_read(h->session) && !nghttp2_session_want_write(h->session);
    if (h->shutting && h->nstreams == 0) done = true;
    if (done) conn_close_after_write(h->c);
}

/* Wakes the providers h2_stream_flush gave new bytes to. */
static void resume_all(h2_conn *h)
{
    while (h->resumes) {
        h2_stream *s = h->resumes;
        h->resumes = s->resume_next;
        s->resuming = false;
        nghttp2_session_resume_data(h->session, s->id);
    }
}

static void h2_send(h2_conn *h)
{
    if (h->dead || h->in_recv) return;
    if (h->in_send) {
        h->send_again = true;
        return;
    }
    h->in_send = true;
    int rv;
    do {
        h->send_again = false;
        resume_all(h);
        rv = nghttp2_session_send(h->session);
        if (push_batch(h) < 0 && rv == 0) rv = NGHTTP2_ERR_CALLBACK_FAILURE;
        run_drained(h);
    } while (rv == 0 && h->send_again && !h->dead);
    h->in_send = false;
    if (h->dead) return;
    if (rv != 0) {
        LOG_KV(LOG_DEBUG, "http2 send failed", LOG_S("error", nghttp2_strerror(rv)));
        conn_close(h->c);
        return;
    }
    check_done(h);
}

static void h2_on_data(conn *c, void *state, char *data, size_t len)
{
    h2_conn *h = state;
    if (h->terminating) return; /* GOAWAY is out: input is dropped */
    h->active_at = ev_now(c->srv->loop);
    h->in_recv = true;
    ssize_t rv = nghttp2_session_mem_recv(h->session, (const uint8_t *)data, len);
    h->in_recv = false;
    if (h->dead) return;
    if (rv < 0) {
        if (rv == NGHTTP2_ERR_FLOODED)
            h2_refuse(h, NGHTTP2_ENHANCE_YOUR_CALM, &stats.flood, "flood of frames to answer");
        else if (rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS)
            h2_refuse(h, NGHTTP2_ENHANCE_YOUR_CALM, &stats.continuation_flood,
                      "continuation flood");
        else if (rv != NGHTTP2_ERR_CALLBACK_FAILURE || !h->terminating)
            h2_refuse(h, NGHTTP2_PROTOCOL_ERROR, &stats.protocol_error, nghttp2_strerror((int)rv));
        h->terminating = true;
    }
    h2_send(h);
}

static void h2_on_drain(conn *c, void *state)
{
    h2_conn *h = state;
    if (h->hw_deferred) { /* streams that waited for this drain (read_body) */
        h->hw_deferred = false;
        for (h2_stream *st = h->streams; st; st = st->next)
            if (st->deferred && st->responded && !st->closed && st->c.out.bytes > 0) {
                st->deferred = false;
                nghttp2_session_resume_data(h->session, st->id);
            }
    }
    /* Most drains follow a turn that took everything: no session pass
     * for nothing. */
    if (nghttp2_session_want_write(h->session))
        h2_send(h);
    else
        check_done(h);
}

static void h2_on_turn(conn *c, void *state)
{
    h2_send(state);
}

/* The connection's timer: every second while a request is incomplete
 * (its deadline is checked then), else the idle timeout. */
static void rearm(h2_conn *h)
{
    bool waiting = false;
    for (h2_stream *s = h->streams; s && !waiting; s = s->next)
        waiting = !s->dispatched;
    conn_stream_timer(h->c, waiting ? 1.0 : h->c->srv->limits.idle_timeout);
}

static void h2_on_timer(conn *c, void *state)
{
    h2_conn *h = state;
    const server_limits *l = &c->srv->limits;
    ev_tstamp now = ev_now(c->srv->loop);
    /* Requests that never completed (a body that stopped coming) get the
     * 408 an HTTP/1.1 client would. */
    for (h2_stream *s = h->streams, *next; s; s = next) {
        next = s->next;
        if (!s->dispatched && now - s->c.req_start > l->header_timeout) {
            s->dispatched = true;
            server_count_refusal(408);
            conn_respond_error(&s->c, 408, "request timeout");
        }
    }
    if (h->nstreams == 0 && now - h->active_at > l->idle_timeout) {
        nghttp2_submit_goaway(h->session, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(h->session), NGHTTP2_NO_ERROR,
                              NULL, 0);
        h->shutting = true;
    }
    rearm(h);
    h2_send(h);
}

static void h2_on_shutdown(conn *c, void *state)
{
    h2_conn *h = state;
    if (h->shutting) return;
    h->shutting = true;
    nghttp2_submit_goaway(h->session, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(h->session), NGHTTP2_NO_ERROR,
                          NULL, 0);
    for (h2_stream *s = h->streams, *next; s; s = next) {
        next = s->next;
        conn_hold(&s->c);
        conn_shutdown(&s->c);
        conn_release(&s->c);
    }
    h2_send(h);
}

static void h2_free(server_deferred *d)
{
    h2_conn *h = (h2_conn *)d;
    nghttp2_session_del(h->session);
    if (batch_owner == h) { /* cannot be (h2_send pushes before it returns): be sure */
        batch_owner = NULL;
        batch_len = 0;
    }
    free(h);
}

static void h2_on_close(conn *c, void *state)
{
    h2_conn *h = state;
    /* The session outlives this pass (h2_free): it keeps no pointer to a
     * stream whose memory may go first. */
    for (h2_stream *s = h->streams; s; s = s->next)
        nghttp2_session_set_stream_user_data(h->session, s->id, NULL);
    h->dead = true;
    while (h->streams) {
        h2_stream *s = h->streams;
        conn_close(&s->c);                            /* unlinks it (h2_stream_closed) */
        if (h->streams == s) h2_stream_closed(&s->c); /* already closed: unlink anyway */
    }
    while (h->drained) {
        h2_stream *s = h->drained;
        h->drained = s->drained_next;
        s->in_drained = false;
        conn_release(&s->c);
    }
    COUNT(connections, -1);
    server_defer(c->srv, &h->defer, h2_free);
}

static const conn_stream_ops h2_ops = {
    .name = "http2",
    .on_data = h2_on_data,
    .on_timer = h2_on_timer,
    .on_drain = h2_on_drain,
    .on_turn = h2_on_turn,
    .on_shutdown = h2_on_shutdown,
    .on_close = h2_on_close,
};

int h2_start(conn *c, const char *data, size_t len)
{
    h2_conn *h = calloc(1, sizeof(*h));
    nghttp2_session_callbacks *cbs = NULL;
    nghttp2_option *opt = NULL;
    if (!h || nghttp2_session_callbacks_new(&cbs) != 0 || nghttp2_option_new(&opt) != 0) goto fail;
    nghttp2_session_callbacks_set_send_callback(cbs, on_send);
    nghttp2_session_callbacks_set_send_data_callback(cbs, on_send_data);
    nghttp2_session_callbacks_set_on_begin_frame_callback(cbs, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    /* nghttp2's own guards stay as a backstop, looser than ours so that
     * ours (counted, logged) speak first. */
    nghttp2_option_set_max_continuations(opt, MAX_CONTINUATIONS * 2);
    nghttp2_option_set_stream_reset_rate_limit(opt, RST_BURST * 2, (uint64_t)RST_RATE * 2);
    nghttp2_option_set_max_settings(opt, 32);
    h->c = c;
    h->rst_tokens = RST_BURST;
    h->ctrl_tokens = CTRL_BURST;
    h->tokens_at = ev_now(c->srv->loop);
    if (nghttp2_session_server_new2(&h->session, cbs, h, opt) != 0) goto fail;
    nghttp2_session_callbacks_del(cbs);
    nghttp2_option_del(opt);
    cbs = NULL;
    opt = NULL;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, H2_MAX_STREAMS},
        {NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)c->srv->limits.max_header},
        /* RFC 9218: no RFC 7540 priority tree to keep (nor closed streams
         * retained for it); streams are served round-robin. */
        {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
    };
    if (nghttp2_submit_settings(h->session, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) != 0)
        goto fail;
    COUNT(connections, 1);
    h->active_at = h->tokens_at;
    conn_start_stream(c, &h2_ops, h, NULL);
    conn_stream_timer(c, 1.0);
    conn_hold(c);
    if (len)
        h2_on_data(c, h, (char *)data, len);
    else
        h2_send(h);
    conn_release(c);
    return 0;
fail:
    if (cbs) nghttp2_session_callbacks_del(cbs);
    if (opt) nghttp2_option_del(opt);
    if (h && h->session) nghttp2_session_del(h->session);
    free(h);
    conn_close(c);
    return SL_ENOMEM;
}
