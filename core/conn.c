/* conn.c: the life of a connection (see conn.h for the state diagram).
 *
 * Reads go into one per-thread buffer, so an idle connection owns no read
 * buffer; only the bytes behind a request the app is still handling
 * (pipelining) are copied aside.  Writes are queued and written once per
 * loop iteration by the server's flush watcher.  One timer per connection;
 * timer_kind says what its expiry means in the current state. */
#include "core/conn.h"

#include "core/defs.h"
#include "core/h2.h"
#include "core/log.h"

#include <arpa/inet.h>
#include <stddef.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

enum timer_kind { T_NONE, T_IDLE, T_HEADER, T_BODY, T_HANDSHAKE, T_LINGER, T_STREAM };

#define READ_CHUNK 65536
#define READS_PER_EVENT 16 /* fairness: then let other connections run */
#define LINGER_SECONDS 2.0 /* read and discard after a final answer */
#define CLOSING_WRITE_SECONDS 10.0

static __thread char read_buf[READ_CHUNK];

static void io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void http_input(conn *c, const char *data, size_t len);
static void flush(conn *c);

/* ---- watchers, timers, state ------------------------------------------ */

static bool wants_read(const conn *c)
{
    switch (c->state) {
    case CONN_HTTP:
        return !c->drain_wait;
    case CONN_STREAM:
        return !c->input_paused;
    case CONN_HANDLING:
        /* Watched while the app holds the request: do_read then only
         * looks (held_request_input), and the watcher is not stopped and
         * started again around every held request. */
        return !c->held_input;
    case CONN_CLOSING:
        return c->lingering;
    case CONN_TLS_HANDSHAKE:
        return c->io.want != IO_WANT_WRITE;
    default:
        return false;
    }
}

static void update_io(conn *c)
{
    if (c->state == CONN_CLOSED || c->h2_stream) return; /* a stream has no socket */
    int ev = 0;
    if (c->state == CONN_TLS_HANDSHAKE) {
        ev = c->io.want == IO_WANT_WRITE ? EV_WRITE : EV_READ;
    } else {
        if (wants_read(c)) ev |= c->read_want_w ? EV_WRITE : EV_READ;
        if (c->write_want) ev |= c->write_want == IO_WANT_READ ? EV_READ : EV_WRITE;
    }
    if (ev == c->io_events) return;
    ev_io_stop(c->srv->loop, &c->watcher);
    /* Not ev_io_set: that marks the fd as new, and libev then issues an
     * EPOLL_CTL_ADD (failing with EEXIST) even when the events are back
     * to what the kernel already has, as on every long-poll. */
    ev_io_modify(&c->watcher, ev);
    if (ev) ev_io_start(c->srv->loop, &c->watcher);
    c->io_events = (uint8_t)ev;
}

static void arm_timer(conn *c, int kind, double seconds)
{
    ev_timer_stop(c->srv->loop, &c->timer);
    c->timer_kind = (uint8_t)kind;
    if (kind == T_NONE || seconds <= 0) {
        c->timer_kind = T_NONE;
        return;
    }
    ev_timer_set(&c->timer, seconds, 0.);
    ev_timer_start(c->srv->loop, &c->timer);
}

static void set_state(conn *c, conn_state s)
{
    c->state = (uint8_t)s;
    if (s != CONN_HANDLING) c->held_input = false;
    update_io(c);
}

/* Parsers given back by connections between two requests (an idle
 * connection holds none), kept with their buffers for the next request on
 * this thread: a keep-alive client's next request, a long-poll's next
 * poll, would otherwise allocate and free four blocks each time.  Only
 * parsers whose buffers are small are kept, and at most PARSER_POOL. */
#define PARSER_POOL 64
#define PARSER_POOL_MAX_BUF 4096
static __thread http_parser *parser_pool[PARSER_POOL];
static __thread int parser_pool_n;

static http_parser *parser_get(const server *srv)
{
    http_limits hl = {srv->limits.max_uri, srv->limits.max_header, srv->limits.max_body};
    if (parser_pool_n > 0) {
        http_parser *p = parser_pool[--parser_pool_n];
        http_parser_reuse(p, &hl);
        return p;
    }
    http_parser *p = malloc(sizeof(http_parser));
    if (p) http_parser_init(p, &hl);
    return p;
}

static void free_parser(conn *c)
{
    http_parser *p = c->http;
    if (!p) return;
    c->http = NULL;
    if (parser_pool_n < PARSER_POOL && p->arena_cap <= PARSER_POOL_MAX_BUF &&
        p->body_cap <= PARSER_POOL_MAX_BUF) {
        parser_pool[parser_pool_n++] = p;
        return;
    }
    http_parser_free(p);
    free(p);
}

void conn_parser_pool_drain(void)
{
    while (parser_pool_n > 0) {
        http_parser *p = parser_pool[--parser_pool_n];
        http_parser_free(p);
        free(p);
    }
}

static void free_pending(conn *c)
{
    free(c->pending);
    c->pending = NULL;
    c->pending_len = c->pending_off = 0;
}

/* ---- lifetime --------------------------------------------------------- */

void conn_hold(conn *c)
{
    c->refs++;
}

/* Closed and unheld: the memory goes back at the end of the loop pass.
 * pending_next is free for the link: being on the pending list holds. */
static void conn_free_later(conn *c)
{
    c->pending_next = c->srv->closed_conns;
    c->srv->closed_conns = c;
}

void server_free_closed(server *srv)
{
    while (srv->closed_conns) {
        conn *c = srv->closed_conns;
        srv->closed_conns = c->pending_next;
        SLUICE_ASSERT(c->state == CONN_CLOSED && c->refs == 0);
        free(c);
    }
}

void conn_release(conn *c)
{
    SLUICE_ASSERT(c->refs > 0);
    if (--c->refs == 0 && c->state == CONN_CLOSED) conn_free_later(c);
}

void conn_close(conn *c)
{
    if (c->state == CONN_CLOSED) return;
    server *srv = c->srv;
    if (c->stream) {
        const conn_stream_ops *ops = c->stream;
        c->stream = NULL;
        ops->on_close(c, c->stream_state);
        c->stream_state = NULL;
    }
    if (c->h2_stream) { /* no socket, not on the server's list */
        ev_timer_stop(srv->loop, &c->timer);
        c->state = CONN_CLOSED;
        h2_stream_closed(c);
        outq_clear(&c->out);
        free_pending(c);
        free_parser(c);
        free(c->resp_head);
        c->resp_head = NULL;
        conn_set_extra_head(c, NULL);
        if (c->refs == 0) conn_free_later(c);
        return;
    }
    ev_io_stop(srv->loop, &c->watcher);
    ev_timer_stop(srv->loop, &c->timer);
    c->state = CONN_CLOSED;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->next = c->prev = NULL;
    srv->nconns--;
    server_count_connection(-1);
    outq_clear(&c->out);
    outq_pool_limit(srv->nconns);
    free_pending(c);
    free_parser(c);
    free(c->resp_head);
    c->resp_head = NULL;
    conn_set_extra_head(c, NULL);
    io_close(&c->io);
    if (srv->stopping && srv->nconns == 0) ev_break(srv->loop, EVBREAK_ALL);
    if (c->refs == 0) conn_free_later(c);
}

/* Response heads and remote addresses are built for every request; by hand,
 * since snprintf and inet_ntop stood out in the long-poll profile. These
 * write at p and return the end. */
static char *put_decimal(char *p, uint64_t v)
{
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = digits[--n];
    return p;
}

static char *put_bytes(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

const char *conn_remote_addr(const conn *c, char *out, size_t len)
{
    if (c->remote.sa.sa_family == AF_INET && len >= sizeof("255.255.255.255:65535")) {
        const unsigned char *a = (const unsigned char *)&c->remote.in.sin_addr;
        char *p = out;
        for (int i = 0; i < 4; i++) {
            p = put_decimal(p, a[i]);
            *p++ = i < 3 ? '.' : ':';
        }
        *put_decimal(p, ntohs(c->remote.in.sin_port)) = '\0';
        return out;
    }
    char ip[INET6_ADDRSTRLEN] = "?";
    if (c->remote.sa.sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &c->remote.in6.sin6_addr, ip, sizeof(ip));
        snprintf(out, len, "[%s]:%u", ip, ntohs(c->remote.in6.sin6_port));
    } else {
        inet_ntop(AF_INET, &c->remote.in.sin_addr, ip, sizeof(ip));
        snprintf(out, len, "%s:%u", ip, ntohs(c->remote.in.sin_port));
    }
    return out;
}

void conn_accept(server *srv, int fd, const struct sockaddr *addr, socklen_t alen, bool tls)
{
    conn *c = calloc(1, sizeof(conn));
    if (!c) {
        close(fd);
        return;
    }
    c->srv = srv;
    c->io.fd = fd;
    c->tls = tls;
    if (alen > sizeof(c->remote)) alen = sizeof(c->remote);
    memcpy(&c->remote, addr, alen);
    ev_io_init(&c->watcher, io_cb, fd, 0);
    c->watcher.data = c;
    ev_init(&c->timer, timer_cb);
    c->timer.data = c;
    c->next = srv->conns;
    if (srv->conns) srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    server_count_connection(1);
    outq_pool_limit(srv->nconns);
    if (tls) {
        if (!srv->tls_ctx || io_tls_start(&c->io, srv->tls_ctx) < 0) {
            conn_close(c);
            return;
        }
        c->io.want = IO_WANT_READ;
        set_state(c, CONN_TLS_HANDSHAKE);
        arm_timer(c, T_HANDSHAKE, srv->limits.tls_handshake_timeout);
    } else {
        set_state(c, CONN_HTTP);
        /* Nothing sent yet: a quiet peer is dropped without an answer. */
        double t = srv->limits.header_timeout < srv->limits.idle_timeout
                       ? srv->limits.header_timeout
                       : srv->limits.idle_timeout;
        arm_timer(c, T_IDLE, t);
    }
}

/* ---- output ----------------------------------------------------------- */

/* Puts c last on the server's pending list: server_flush_pending then
 * gives it its turn (stream input left behind a request, on_turn) and
 * writes its output. */
static void schedule_turn(conn *c)
{
    if (c->in_pending) return;
    c->in_pending = true;
    conn_hold(c);
    /* First queued, first written: hub_poll() queues a publish's answer
     * before its fan-out, and after whatever earlier output is still
     * waiting, so a publisher is not answered ahead of the fan-out of its
     * last message. */
    c->pending_next = NULL;
    if (c->srv->pending_tail)
        c->srv->pending_tail->pending_next = c;
    else
        c->srv->pending_head = c;
    c->srv->pending_tail = c;
}

static void schedule_flush(conn *c)
{
    if (c->write_want) return; /* a blocked write waits for the watcher */
    if (c->h2_stream) {
        /* Straight to the session, which asks for its socket's turn: the
         * socket's turn then finds every stream a fan-out reached.  Once
         * asked, a pass's next messages need nothing more. */
        if (!c->h2_turn_asked) h2_stream_flush(c);
        return;
    }
    schedule_turn(c);
}

/* STREAM: hands the bytes the client sent behind its request to the
 * transport (conn_start_stream left them for the loop). */
static void deliver_stream_input(conn *c)
{
    c->input_waiting = false;
    if (c->state != CONN_STREAM || !c->pending) {
        free_pending(c);
        return;
    }
    if (c->input_paused) return; /* conn_pause_input(false) asks again */
    char *p = c->pending;
    size_t off = c->pending_off, len = c->pending_len - c->pending_off;
    c->pending = NULL;
    c->pending_len = c->pending_off = 0;
    if (len) c->stream->on_data(c, c->stream_state, p + off, len);
    free(p);
}

void conn_want_turn(conn *c)
{
    if (c->turn_wanted || conn_closed(c) || !c->stream || !c->stream->on_turn) return;
    if (c->write_want) { /* not on the list until the socket drains: now */
        c->stream->on_turn(c, c->stream_state);
        return;
    }
    c->turn_wanted = true;
    schedule_turn(c); /* write_want is not set (above) */
}

int conn_send(conn *c, buf_t *b, size_t off, size_t len)
{
    if (c->state == CONN_CLOSED) return SL_EGONE;
    /* Over the limit a stream is cut off; an empty queue takes any one
     * message, so the largest message allowed always fits. */
    bool over = c->state == CONN_STREAM && c->out.bytes > 0 &&
                c->out.bytes + len > c->srv->limits.max_output;
    /* An HTTP/2 stream is also held to its connection's share (h2.h). */
    if (c->h2_stream && c->state == CONN_STREAM && (over || h2_stream_over(c, len))) {
        h2_stream_cut(c); /* reset, not finished, at its end */
        return SL_ELIMIT;
    }
    if (c->state == CONN_STREAM && c->out.bytes > 0 &&
        c->out.bytes + len > c->srv->limits.max_output)
        return SL_ELIMIT;
    if (outq_push(&c->out, b, off, len) < 0) return SL_ENOMEM;
    schedule_flush(c);
    return 0;
}

int conn_send_copy(conn *c, const void *data, size_t len)
{
    buf_t *b = buf_from(data, len);
    if (!b) return SL_ENOMEM;
    int r = conn_send(c, b, 0, len);
    buf_unref(b);
    return r;
}

int conn_send_moved(conn *c, outq_t *from, size_t n)
{
    if (c->state == CONN_CLOSED) return SL_EGONE;
    if (c->state == CONN_STREAM && c->out.bytes > 0 && c->out.bytes + n > c->srv->limits.max_output)
        return SL_ELIMIT;
    int r = outq_move(&c->out, from, n);
    if (r < 0) return r;
    schedule_flush(c);
    return 0;
}

void conn_send_final(conn *c, const void *data, size_t len)
{
    if (c->state == CONN_CLOSED || c->state == CONN_CLOSING) return;
    buf_t *b = buf_from(data, len);
    if (b && outq_push(&c->out, b, 0, len) == 0) schedule_flush(c);
    buf_unref(b);
    conn_close_after_write(c);
}

static void start_linger(conn *c)
{
    io_shutdown_write(&c->io);
    c->lingering = true;
    arm_timer(c, T_LINGER, LINGER_SECONDS);
    update_io(c);
}

void conn_close_after_write(conn *c)
{
    if (c->state == CONN_CLOSED || c->state == CONN_CLOSING) return;
    if (c->stream) {
        const conn_stream_ops *ops = c->stream;
        c->stream = NULL;
        ops->on_close(c, c->stream_state);
        c->stream_state = NULL;
    }
    free_pending(c);
    free_parser(c);
    set_state(c, CONN_CLOSING);
    if (c->h2_stream) { /* END_STREAM once the queue is sent (h2.c) */
        arm_timer(c, T_LINGER, CLOSING_WRITE_SECONDS); /* or reset, if its window stays shut */
        h2_stream_end(c);
        return;
    }
    if (c->out.bytes == 0)
        start_linger(c);
    else
        arm_timer(c, T_LINGER, CLOSING_WRITE_SECONDS);
}

static void on_drained(conn *c)
{
    switch (c->state) {
    case CONN_CLOSING:
        if (!c->lingering && !c->h2_stream) start_linger(c);
        break;
    case CONN_STREAM:
        if (c->stream->on_drain) c->stream->on_drain(c, c->stream_state);
        break;
    case CONN_HTTP:
        if (c->drain_wait) {
            c->drain_wait = false;
            update_io(c);
            if (c->pending)
                http_input(c, c->pending + c->pending_off, c->pending_len - c->pending_off);
        }
        break;
    default:
        break;
    }
}

/* Writes as much of the queue as the socket takes: one gathered send of up
 * to FLUSH_IOV segments (or one TLS record), so one system call per connection
 * per loop iteration however many messages are queued; it repeats only if
 * the socket took everything and more is left.  A socket that took less is
 * full: the rest waits for it to turn writable, without a send that would
 * only say EAGAIN. */
#define FLUSH_IOV 1024 /* IOV_MAX on Linux */
static void flush(conn *c)
{
    if (c->h2_stream) { /* the carrier's session takes it from the queue */
        h2_stream_flush(c);
        return;
    }
    struct iovec iov[FLUSH_IOV];
    while (c->out.bytes > 0 && c->state != CONN_CLOSED) {
        int n = outq_iov(&c->out, iov, FLUSH_IOV);
        ssize_t w = io_writev(&c->io, iov, n);
        if (w > 0) {
            c->sent += (uint64_t)w;
            outq_consume(&c->out, (size_t)w);
            if (!c->io.full) continue;
        }
        if (w == IO_AGAIN || c->io.full) {
            c->write_want = c->io.want;
            update_io(c);
            return;
        }
        LOG_KV(LOG_DEBUG, "write failed", LOG_S("error", strerror(errno)));
        conn_close(c);
        return;
    }
    if (c->state == CONN_CLOSED) return;
    if (c->write_want) {
        c->write_want = IO_WANT_NONE;
        update_io(c);
    }
    on_drained(c);
}

/* Turns taken in one go before their writes (and at most the pass's). */
#define TURN_CHUNK 64

void server_flush_pending(server *srv, size_t budget)
{
    /* A chunk of the write order at a time: first every connection's
     * turn (an HTTP/2 session frames its streams' output then), then
     * their writes back to back.  The sends of a fan-out then follow one
     * another: the kernel's and the peers' work is not interleaved with
     * each connection's own, and a reader woken by the first finds the
     * next ones ready. */
    conn *chunk[TURN_CHUNK];
    size_t n = 0;
    while (n < budget && srv->pending_head) {
        size_t k = 0;
        conn *c;
        while (k < TURN_CHUNK && n + k < budget && (c = srv->pending_head)) {
            srv->pending_head = c->pending_next;
            if (!srv->pending_head) srv->pending_tail = NULL;
            c->pending_next = NULL;
            if (c->input_waiting) deliver_stream_input(c);
            if (c->turn_wanted) {
                c->turn_wanted = false;
                /* Still in_pending: what on_turn queues stays in this place. */
                if (c->state != CONN_CLOSED && c->stream && c->stream->on_turn)
                    c->stream->on_turn(c, c->stream_state);
            }
            chunk[k++] = c;
        }
        for (size_t i = 0; i < k; i++) {
            c = chunk[i];
            c->in_pending = false;
            if (c->state != CONN_CLOSED && !c->write_want) {
                flush(c);
                if (!c->h2_stream) n++; /* a stream's flush only hands its queue to the session */
            }
            conn_release(c);
        }
    }
}

/* ---- responses -------------------------------------------------------- */

static int resp_append(conn *c, const char *s, size_t n)
{
    if (c->resp_len + n > c->resp_cap) {
        size_t ncap = c->resp_cap ? c->resp_cap : 256;
        while (ncap < c->resp_len + n)
            ncap *= 2;
        char *nh = realloc(c->resp_head, ncap);
        if (!nh) return SL_ENOMEM;
        c->resp_head = nh;
        c->resp_cap = (uint32_t)ncap;
    }
    memcpy(c->resp_head + c->resp_len, s, n);
    c->resp_len += (uint32_t)n;
    return 0;
}

http_request *conn_request(conn *c)
{
    return c->http ? &c->http->req : NULL;
}

void conn_response_start(conn *c, int status)
{
    char line[64];
    c->resp_len = 0;
    c->resp_status = (uint16_t)status;
    const char *text = http_status_text(status);
    size_t tl = strlen(text);
    if (tl > 40) tl = 40; /* the longest standard reason phrase has 31 */
    char *p = put_bytes(line, STRLIT("HTTP/1.1 "));
    p = put_decimal(p, (uint64_t)(status > 0 ? status : 0));
    *p++ = ' ';
    p = put_bytes(p, text, tl);
    p = put_bytes(p, STRLIT("\r\n"));
    resp_append(c, line, (size_t)(p - line));
    if (c->extra_head) resp_append(c, c->extra_head, strlen(c->extra_head));
}

void conn_set_extra_head(conn *c, char *lines)
{
    free(c->extra_head);
    c->extra_head = lines;
}

const char *conn_extra_head(const conn *c)
{
    return c->extra_head ? c->extra_head : "";
}

/* RFC 9110 tchar, as a table (one row per kind, not one line per byte):
 * every header a response sets is checked. */
/* clang-format off */
#define TCHAR_RANGE(lo, hi) [(lo)...(hi)] = 1
static const unsigned char tchar[256] = {
    TCHAR_RANGE('a', 'z'), TCHAR_RANGE('A', 'Z'), TCHAR_RANGE('0', '9'),
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
};
#undef TCHAR_RANGE
/* clang-format on */

static bool name_is(const char *name, size_t nlen, const char *what)
{
    return strlen(what) == nlen && strncasecmp(name, what, nlen) == 0;
}

int conn_response_header(conn *c, const char *name, size_t nlen, const char *value, size_t vlen)
{
    if (nlen == 0) return SL_EINVAL;
    for (size_t i = 0; i < nlen; i++)
        if (!tchar[(unsigned char)name[i]]) return SL_EINVAL;
    for (size_t i = 0; i < vlen; i++)
        if (value[i] == '\r' || value[i] == '\n' || value[i] == '\0') return SL_EINVAL;
    /* Framing headers are the connection's to set. */
    if (name_is(name, nlen, "content-length") || name_is(name, nlen, "connection") ||
        name_is(name, nlen, "date") || name_is(name, nlen, "transfer-encoding"))
        return 0;
    if (resp_append(c, name, nlen) < 0 || resp_append(c, STRLIT(": ")) < 0 ||
        resp_append(c, value, vlen) < 0 || resp_append(c, STRLIT("\r\n")) < 0)
        return SL_ENOMEM;
    return 0;
}

void conn_response_lines(conn *c, const char *lines, size_t len)
{
    resp_append(c, lines, len);
}

static void access_log(conn *c, size_t body_len);

void conn_log_access(conn *c, int status)
{
    c->resp_status = (uint16_t)status;
    access_log(c, 0);
}

static void access_log(conn *c, size_t body_len)
{
    if (!log_enabled(LOG_INFO)) return;
    const http_request *r = c->http && c->http->req.method ? &c->http->req : NULL;
    char remote[64];
    double ms = (ev_time() - c->req_start) * 1000.0;
    LOG_KV(LOG_INFO, "access", LOG_S("method", r ? r->method : "-"),
           LOG_SN("path", r ? r->path : "-", r ? r->path_len : 1), LOG_I("status", c->resp_status),
           LOG_I("bytes", body_len), LOG_D("duration_ms", ms),
           LOG_S("remote", conn_remote_addr(c, remote, sizeof(remote))));
}

static void request_done(conn *c)
{
    if (c->http) http_next(c->http);
    if (!c->keep_alive || c->srv->stopping || c->h2_stream) { /* one request a stream */
        conn_close_after_write(c);
        return;
    }
    set_state(c, CONN_HTTP);
    if (c->in_process) return; /* http_input's loop goes on with the next request */
    if (c->pending) {
        http_input(c, c->pending + c->pending_off, c->pending_len - c->pending_off);
    } else {
        free_parser(c);
        arm_timer(c, T_IDLE, c->srv->limits.idle_timeout);
    }
}

/* Appends Date, Content-Length and Connection to the head being built. */
static void finish_head(conn *c, size_t *len)
{
    char hdr[160];
    int status = c->resp_status;
    bool no_body = status == 204 || status == 304 || (status >= 100 && status < 200);
    bool close = !c->keep_alive || c->srv->stopping;
    const char *date = server_date(c->srv);
    size_t dl = strlen(date);
    if (dl > 40) dl = 40; /* an IMF-fixdate has 29 */
    char *p = put_bytes(hdr, STRLIT("Date: "));
    p = put_bytes(put_bytes(p, date, dl), STRLIT("\r\n"));
    const char *connection = close ? "Connection: close\r\n" : "";
    if (no_body) {
        *len = 0;
    } else {
        p = put_bytes(p, STRLIT("Content-Length: "));
        p = put_bytes(put_decimal(p, *len), STRLIT("\r\n"));
        const http_request *r = conn_request(c);
        bool http10 = r && r->version_major == 1 && r->version_minor == 0;
        if (!close && http10) connection = "Connection: keep-alive\r\n";
    }
    p = put_bytes(p, connection, strlen(connection));
    p = put_bytes(p, STRLIT("\r\n"));
    resp_append(c, hdr, (size_t)(p - hdr));
    if (close) c->keep_alive = false;
}

static void finish_done(conn *c, size_t len)
{
    access_log(c, len);
    free(c->resp_head);
    c->resp_head = NULL;
    c->resp_len = c->resp_cap = 0;
    conn_set_extra_head(c, NULL);
    request_done(c);
}

void conn_response_finish(conn *c, const char *body, size_t len)
{
    if (c->state == CONN_CLOSED) return;
    finish_head(c, &len);
    size_t send_body = c->head_request ? 0 : len;
    buf_t *b = buf_new(c->resp_len + send_body);
    if (b) {
        memcpy(b->data, c->resp_head, c->resp_len);
        if (send_body) memcpy(b->data + c->resp_len, body, send_body);
        conn_send(c, b, 0, b->len);
        buf_unref(b);
    } else {
        c->keep_alive = false;
    }
    finish_done(c, len);
}

void conn_response_finish_parts(conn *c, const conn_part *parts, int nparts)
{
    if (c->state == CONN_CLOSED) return;
    size_t len = 0;
    for (int i = 0; i < nparts; i++)
        len += parts[i].len;
    finish_head(c, &len);
    buf_t *b = buf_from(c->resp_head, c->resp_len);
    if (b) {
        conn_send(c, b, 0, b->len);
        buf_unref(b);
        if (!c->head_request)
            for (int i = 0; i < nparts; i++)
                outq_push(&c->out, parts[i].buf, parts[i].off, parts[i].len);
    } else {
        c->keep_alive = false;
    }
    finish_done(c, len);
}

void conn_respond_error(conn *c, int status, const char *msg)
{
    char body[512];
    size_t o = 0;
    body[o++] = '{';
    memcpy(body + o, STRLIT("\"error\":\""));
    o += sizeof("\"error\":\"") - 1;
    for (const char *p = msg; *p && o < sizeof(body) - 8; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '"' || ch == '\\') {
            body[o++] = '\\';
            body[o++] = (char)ch;
        } else if (ch >= 0x20) {
            body[o++] = (char)ch;
        }
    }
    memcpy(body + o, STRLIT("\"}"));
    o += sizeof("\"}") - 1;
    conn_response_start(c, status);
    static const char ct[] = "Content-Type: application/json\r\n";
    conn_response_lines(c, ct, sizeof(ct) - 1);
    if (status == 503) conn_response_lines(c, STRLIT("Retry-After: 1\r\n"));
    conn_response_finish(c, body, o);
}

/* ---- streams ---------------------------------------------------------- */

void conn_start_stream(conn *c, const conn_stream_ops *ops, void *state, buf_t *head)
{
    c->stream = ops;
    c->stream_state = state;
    arm_timer(c, T_NONE, 0);
    set_state(c, CONN_STREAM);
    if (head) conn_send(c, head, 0, head->len);
    conn_set_extra_head(c, NULL);
    free_parser(c);
    if (c->pending) {
        /* Bytes the client sent right after its request (a first frame):
         * the transport gets them once its start is over (see conn.h), and
         * before any later read (do_read). */
        c->input_waiting = true;
        schedule_turn(c);
    }
}

void conn_attach(conn *c, const conn_stream_ops *ops, void *state)
{
    c->stream = ops;
    c->stream_state = state;
}

void conn_detach(conn *c)
{
    c->stream = NULL;
    c->stream_state = NULL;
    c->turn_wanted = false; /* a later stream on c must not get this turn */
    if (c->timer_kind == T_STREAM) arm_timer(c, T_NONE, 0);
}

void conn_pause_input(conn *c, bool pause)
{
    if (c->input_paused == pause || c->state != CONN_STREAM) return;
    c->input_paused = pause;
    update_io(c);
    if (!pause && c->pending) { /* what an on_data gave back comes first */
        c->input_waiting = true;
        schedule_turn(c);
    }
}

int conn_unread(conn *c, const char *data, size_t len)
{
    SLUICE_ASSERT(c->state == CONN_STREAM && !c->pending);
    if (len == 0) return 0;
    if (!(c->pending = malloc(len))) {
        conn_close(c);
        return SL_ENOMEM;
    }
    memcpy(c->pending, data, len);
    c->pending_len = (uint32_t)len;
    c->pending_off = 0;
    if (!c->input_paused) { /* not paused after all: deliver from the loop */
        c->input_waiting = true;
        schedule_turn(c);
    }
    return 0;
}

void conn_stream_timer(conn *c, double seconds)
{
    arm_timer(c, seconds > 0 ? T_STREAM : T_NONE, seconds);
}

/* ---- input ------------------------------------------------------------ */

/* Keeps the unparsed bytes behind a request for when the app is done. */
static void stash(conn *c, const char *data, size_t len)
{
    if (c->pending && data >= c->pending && data <= c->pending + c->pending_len) {
        c->pending_off = (uint32_t)(data - c->pending);
        return;
    }
    free_pending(c);
    if (len == 0) return;
    c->pending = malloc(len);
    if (!c->pending) {
        conn_close(c);
        return;
    }
    memcpy(c->pending, data, len);
    c->pending_len = (uint32_t)len;
}

static void http_error(conn *c, int status, const char *reason)
{
    LOG_KV(LOG_DEBUG, "bad request", LOG_I("status", status), LOG_S("reason", reason));
    server_count_refusal(status);
    c->keep_alive = false;
    c->head_request = false;
    conn_respond_error(c, status, reason);
}

/* Parses requests from `data` and hands each complete one to the app, as
 * long as the app answers at once (pipelining); the rest waits in
 * c->pending while the app holds a request. */
static void http_input(conn *c, const char *data, size_t len)
{
    server *srv = c->srv;
    conn_hold(c);
    c->in_process = true;
    if (!c->h2_stream && !c->pending && (!c->http || !http_in_request(c->http)) &&
        h2_is_preface(data, len)) {
        /* h2c with prior knowledge: the connection is HTTP/2 from here. */
        c->in_process = false;
        h2_start(c, data, len);
        conn_release(c);
        return;
    }
    while (c->state == CONN_HTTP && len > 0) {
        if (c->out.bytes > srv->limits.max_output) {
            /* The client sends requests faster than it reads answers. */
            stash(c, data, len);
            c->drain_wait = true;
            update_io(c);
            break;
        }
        if (!c->http && !(c->http = parser_get(srv))) {
            conn_close(c);
            break;
        }
        bool was_started = http_in_request(c->http);
        size_t used = 0;
        http_event ev = http_feed(c->http, data, len, &used);
        if (!was_started && http_in_request(c->http)) c->req_start = ev_time();
        data += used;
        len -= used;
        if (ev == HTTP_EV_NEED_MORE) {
            if (c->http->req.method) {
                /* The body: the head's time, plus a second for every
                 * min_body_rate bytes that came, counted from the first
                 * byte of the request (re-arming at each read would let a
                 * byte every few seconds hold the connection for good). */
                double left = c->req_start + srv->limits.header_timeout +
                              (double)c->http->body_len / srv->limits.min_body_rate - ev_now(srv->loop);
                arm_timer(c, T_BODY, left > 0.001 ? left : 0.001);
            } else if (c->timer_kind != T_HEADER)
                arm_timer(c, T_HEADER, srv->limits.header_timeout);
            break;
        }
        if (ev == HTTP_EV_CONTINUE) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            conn_send_copy(c, cont, sizeof(cont) - 1);
            continue;
        }
        if (ev == HTTP_EV_ERROR) {
            http_error(c, c->http->error_status, c->http->error_reason);
            break;
        }
        /* HTTP_EV_REQUEST */
        http_request *req = &c->http->req;
        arm_timer(c, T_NONE, 0);
        stash(c, data, len);
        if (c->state == CONN_CLOSED) break;
        c->keep_alive = req->keep_alive;
        c->head_request = strcmp(req->method, "HEAD") == 0;
        set_state(c, CONN_HANDLING);
        srv->on_request(c, req, srv->on_request_ud);
        if (c->state != CONN_HTTP) break;
        /* Answered at once: go on with the bytes behind that request. */
        data = c->pending ? c->pending + c->pending_off : NULL;
        len = c->pending ? c->pending_len - c->pending_off : 0;
    }
    c->in_process = false;
    if (c->state == CONN_HTTP && !c->drain_wait) {
        free_pending(c);
        if (c->http && !http_in_request(c->http)) {
            free_parser(c);
            arm_timer(c, T_IDLE, srv->limits.idle_timeout);
        }
    }
    conn_release(c);
}

static void on_eof(conn *c)
{
    if (c->state == CONN_HTTP && c->http && http_in_request(c->http))
        LOG_KV(LOG_DEBUG, "peer closed mid-request");
    conn_close(c);
}

/* The socket turned readable while the app holds a request. If the peer
 * has gone and the request is a held long-poll, close now: nothing would
 * read the answer, and the poll would sit until its timeout. Otherwise
 * (a pipelined request, a TLS record, a half-close under a handler) the
 * bytes stay in the socket until the answer is out. */
static void held_request_input(conn *c)
{
    int n = io_peek(&c->io);
    if (n == IO_AGAIN) return;
    if (n == IO_ERROR || (n == 0 && c->stream)) {
        LOG_KV(LOG_DEBUG, "peer closed a held request");
        conn_close(c);
        return;
    }
    c->held_input = true;
    update_io(c);
}

static void do_read(conn *c)
{
    if (c->state == CONN_HANDLING) {
        held_request_input(c);
        return;
    }
    if (c->input_waiting) deliver_stream_input(c); /* older bytes first */
    for (int i = 0; i < READS_PER_EVENT; i++) {
        if (c->state == CONN_CLOSED || c->state == CONN_HANDLING || !wants_read(c)) return;
        ssize_t n = io_read(&c->io, read_buf, sizeof(read_buf));
        if (n > 0) {
            c->read_want_w = false;
            switch (c->state) {
            case CONN_HTTP:
                http_input(c, read_buf, (size_t)n);
                break;
            case CONN_STREAM:
                c->stream->on_data(c, c->stream_state, read_buf, (size_t)n);
                break;
            default:
                break; /* lingering: discard */
            }
            /* The socket is empty: spare the read that would say so; the
             * (level-triggered) watcher calls again when more arrives. */
            if (c->io.drained) return;
            continue;
        }
        if (n == IO_AGAIN) {
            bool w = c->io.want == IO_WANT_WRITE;
            if (w != c->read_want_w) {
                c->read_want_w = w;
                update_io(c);
            }
            return;
        }
        if (n == 0)
            on_eof(c);
        else
            conn_close(c);
        return;
    }
    /* Read budget spent; TLS may hold decrypted bytes no socket event shows. */
    if (c->state != CONN_CLOSED && c->io.ssl && SSL_pending(c->io.ssl) > 0)
        ev_feed_event(c->srv->loop, &c->watcher, EV_READ);
}

static void do_handshake(conn *c)
{
    int r = io_handshake(&c->io);
    if (r == 1) {
        set_state(c, CONN_HTTP);
        arm_timer(c, T_IDLE, c->srv->limits.header_timeout);
        const unsigned char *proto = NULL;
        unsigned plen = 0;
        SSL_get0_alpn_selected(c->io.ssl, &proto, &plen);
        if (plen == 2 && memcmp(proto, "h2", 2) == 0) {
            arm_timer(c, T_NONE, 0);
            if (h2_start(c, NULL, 0) < 0) return;
        }
        do_read(c);
    } else if (r == 0) {
        update_io(c);
    } else {
        conn_close(c);
    }
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    conn *c = w->data;
    conn_hold(c);
    if (c->state == CONN_TLS_HANDSHAKE) {
        do_handshake(c);
    } else {
        if (c->write_want && c->state != CONN_CLOSED) {
            bool ready = c->write_want == IO_WANT_READ ? (revents & EV_READ) : (revents & EV_WRITE);
            if (ready) {
                c->write_want = IO_WANT_NONE;
                flush(c);
            }
        }
        if (c->state != CONN_CLOSED) do_read(c);
    }
    conn_release(c);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    conn *c = w->data;
    int kind = c->timer_kind;
    c->timer_kind = T_NONE;
    conn_hold(c);
    switch (kind) {
    case T_HEADER:
    case T_BODY:
        LOG_KV(LOG_DEBUG, "request timeout", LOG_S("phase", kind == T_BODY ? "body" : "head"));
        if (c->state == CONN_HTTP)
            http_error(c, 408, "request timeout");
        else
            conn_close(c);
        break;
    case T_STREAM:
        if (c->stream && c->stream->on_timer) c->stream->on_timer(c, c->stream_state);
        break;
    case T_IDLE:
    case T_HANDSHAKE:
    case T_LINGER:
    default:
        conn_close(c);
        break;
    }
    conn_release(c);
}

/* ---- shutdown --------------------------------------------------------- */

void conn_shutdown(conn *c)
{
    switch (c->state) {
    case CONN_HTTP:
        if (c->http && http_in_request(c->http)) {
            c->keep_alive = false; /* let it finish, answer, then close */
        } else if (c->out.bytes > 0) {
            conn_close_after_write(c); /* an answer is still being written */
        } else {
            conn_close(c);
        }
        break;
    case CONN_TLS_HANDSHAKE:
        conn_close(c);
        break;
    case CONN_HANDLING:
        c->keep_alive = false;
        if (c->stream && c->stream->on_shutdown) c->stream->on_shutdown(c, c->stream_state);
        break;
    case CONN_STREAM:
        if (c->stream->on_shutdown)
            c->stream->on_shutdown(c, c->stream_state);
        else
            conn_close_after_write(c);
        break;
    default:
        break;
    }
}

/* ---- carried connections (HTTP/2 streams, h2.c) ----------------------- */

void conn_carried_init(conn *c, conn *parent)
{
    c->srv = parent->srv;
    c->io.fd = -1;
    c->tls = parent->tls;
    c->h2_stream = true;
    c->remote = parent->remote;
    ev_init(&c->timer, timer_cb);
    c->timer.data = c;
    c->state = CONN_HTTP;
    c->req_start = ev_time();
}

void conn_carried_request(conn *c, const char *data, size_t len)
{
    http_input(c, data, len);
}

int conn_carried_input(conn *c, const char *data, size_t len, size_t max)
{
    if (len == 0 || c->state == CONN_CLOSED || c->state == CONN_CLOSING) return 0;
    size_t have = c->pending ? c->pending_len - c->pending_off : 0;
    if (have + len > max) return -1;
    char *p = malloc(have + len);
    if (!p) return -1;
    if (have) memcpy(p, c->pending + c->pending_off, have);
    memcpy(p + have, data, len);
    free(c->pending);
    c->pending = p;
    c->pending_len = (uint32_t)(have + len);
    c->pending_off = 0;
    if (c->state == CONN_STREAM && !c->input_paused) {
        c->input_waiting = true;
        schedule_turn(c);
    }
    return 0;
}

void conn_carried_drained(conn *c)
{
    if (c->state != CONN_CLOSED) on_drained(c);
}
