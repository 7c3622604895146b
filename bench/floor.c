/*
 * bench/floor.c: the floor of fan-out cost. A deliberately minimal pub/sub
 * server (one epoll loop, level-triggered, libc + libcrypto's SHA-1 for the
 * WebSocket accept key) that speaks exactly what bench/loadgen sends with
 * nchan's paths: `GET /sub/{topic}` as WebSocket or SSE, `POST /pub/{topic}`
 * (pipelined, keep-alive) and `GET /healthz`. It has no store, no scripting,
 * no per-message allocation beyond what a short write forces: what it costs
 * per delivery is close to what the kernel charges for a send() on loopback,
 * which is the line sluice, nchan and Pushpin are measured against.
 *
 * A published message is encoded once per wire form (one WebSocket text
 * frame, one SSE `data:` event) into a scratch buffer, then handed to every
 * subscriber of the topic. Two modes show what batching buys:
 *   direct   one send() per subscriber per message, right away;
 *   batched  the frame is appended to the subscriber's output buffer, which
 *            is flushed with one send() after all events returned by one
 *            epoll_wait() pass (or early, at BATCH_FLUSH bytes).
 * In both modes a short write keeps the rest in the connection's buffer and
 * waits for EPOLLOUT; a consumer whose backlog passes MAX_OUT is dropped.
 *
 * Idle connections are the other half of the floor: a connection is a
 * 56-byte slot in an fd-indexed array; input and output buffers exist only
 * while they hold bytes. Closing is deferred to the end of the epoll pass
 * (conn_kill), so no fd is reused while events for it may still be queued
 * and no subscriber list changes under a fan-out loop. Every input is
 * bounded (head, body, WebSocket frame, topic name, connection count).
 */
#define _GNU_SOURCE /* memmem, accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#define MAX_HEAD (16u << 10)       /* request head, request line included */
#define MAX_BODY (1u << 20)        /* publish body */
#define MAX_TOPIC 256              /* topic name bytes */
#define MAX_WS_PAYLOAD (64u << 10) /* client frame payload */
#define MAX_OUT (16u << 20)        /* slow consumer: dropped beyond this */
#define BATCH_FLUSH (64u << 10)    /* batched mode: flush a backlog this big early */
#define READ_CHUNK (64u << 10)
#define IN_LIMIT (MAX_HEAD + MAX_BODY + READ_CHUNK)
#define MAX_EVENTS 512
#define MAX_FDS (1u << 20)
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

enum state { ST_FREE, ST_HTTP, ST_WS, ST_SSE };

enum flag {
    F_PENDING = 1,     /* on the pending list */
    F_DIRTY = 2,       /* output to flush at the end of the pass */
    F_DEAD = 4,        /* to close at the end of the pass; ignore meanwhile */
    F_POLLOUT = 8,     /* EPOLLOUT armed */
    F_CLOSE_AFTER = 16 /* close once the output is written; input ignored */
};

/* Bytes d[off, len) of cap; allocated only while non-empty. */
struct buf {
    uint32_t off, len, cap;
    char d[];
};

struct topic;

/* One per fd, in G.conns[fd]. */
struct conn {
    struct conn *next, *prev; /* the topic's subscribers */
    struct conn *pnext;       /* the pending list */
    struct topic *topic;
    struct buf *in, *out;
    int fd;
    uint8_t state, flags;
};

_Static_assert(sizeof(struct conn) <= 64, "an idle connection stays under a cache line");

struct topic {
    struct topic *hnext;
    struct conn *subs;
    uint64_t hash;
    uint32_t nsubs;
    uint16_t len;
    char name[];
};

struct req {
    const char *path;
    size_t plen;
    const char *key; /* Sec-WebSocket-Key */
    size_t klen;
    size_t clen;
    bool get, post, close, ws, sse, has_clen, te, ws13, too_big;
};

static struct {
    bool batched;
    int ep, lfd;
    bool listen_paused;
    struct conn *conns;
    size_t maxfd;
    struct conn *pending;
    struct topic **tab;
    size_t tabsize, ntopics;
    char *wsf, *ssef; /* scratch: the current message's frames */
    size_t wscap, ssecap;
    uint64_t published, deliveries, dropped;
    volatile sig_atomic_t stop;
    char rbuf[READ_CHUNK];
} G;

/* ---- buffers ---- */

/* Make room for n more bytes at the end of *bp, allocating it when NULL,
 * never holding more than limit live bytes. False on limit or no memory
 * (*bp unchanged). */
static bool buf_reserve(struct buf **bp, size_t n, size_t limit)
{
    struct buf *b = *bp;
    size_t used = b ? b->len - b->off : 0;
    if (b && b->cap - b->len >= n) return true;
    if (used + n > limit) return false;
    if (b && b->off) {
        memmove(b->d, b->d + b->off, used);
        b->off = 0;
        b->len = (uint32_t)used;
        if (b->cap - used >= n) return true;
    }
    /* A first buffer fits its bytes (a batched pass often holds one frame);
     * growth doubles. */
    size_t cap = b ? b->cap : (n + 255) & ~(size_t)255;
    while (cap < used + n)
        cap *= 2;
    if (cap > limit) cap = limit;
    struct buf *nb = realloc(b, sizeof *nb + cap);
    if (!nb) return false;
    if (!b) nb->off = nb->len = 0;
    nb->cap = (uint32_t)cap;
    *bp = nb;
    return true;
}

/* ---- connections ---- */

static void pending_add(struct conn *c)
{
    if (c->flags & F_PENDING) return;
    c->flags |= F_PENDING;
    c->pnext = G.pending;
    G.pending = c;
}

/* Schedule c's close for the end of the pass (see the file comment). */
static void conn_kill(struct conn *c)
{
    c->flags |= F_DEAD;
    pending_add(c);
}

static void conn_dirty(struct conn *c)
{
    c->flags |= F_DIRTY;
    pending_add(c);
}

static void conn_want_out(struct conn *c, bool on)
{
    if (!!(c->flags & F_POLLOUT) == on) return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.fd = c->fd};
    if (epoll_ctl(G.ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
        conn_kill(c);
        return;
    }
    c->flags ^= F_POLLOUT;
}

/* Append to c's output (no write); drops c when the backlog would pass
 * MAX_OUT. */
static void conn_queue(struct conn *c, const void *p, size_t n)
{
    if (c->flags & F_DEAD) return;
    if (!buf_reserve(&c->out, n, MAX_OUT)) {
        G.dropped++;
        conn_kill(c);
        return;
    }
    memcpy(c->out->d + c->out->len, p, n);
    c->out->len += (uint32_t)n;
}

/* One send() of c's backlog; frees the buffer once empty. */
static void conn_flush(struct conn *c)
{
    c->flags &= ~F_DIRTY;
    if (c->flags & F_DEAD) return;
    struct buf *b = c->out;
    if (b) {
        ssize_t w = send(c->fd, b->d + b->off, b->len - b->off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                conn_kill(c);
                return;
            }
            w = 0;
        }
        b->off += (uint32_t)w;
        if (b->off < b->len) {
            conn_want_out(c, true);
            return;
        }
        free(b);
        c->out = NULL;
    }
    conn_want_out(c, false);
    if (c->flags & F_CLOSE_AFTER) conn_kill(c);
}

/* Direct mode: write p right away unless older bytes wait before it. */
static void conn_send(struct conn *c, const char *p, size_t n)
{
    if (c->flags & F_DEAD) return;
    if (!c->out) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w == (ssize_t)n) return;
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                conn_kill(c);
                return;
            }
            w = 0;
        }
        p += w;
        n -= (size_t)w;
    }
    conn_queue(c, p, n);
    if (c->out && !(c->flags & F_POLLOUT)) conn_want_out(c, true);
}

/* Batched mode: append, flush at the end of the pass (or now if big). */
static void conn_append(struct conn *c, const char *p, size_t n)
{
    conn_queue(c, p, n);
    if (c->flags & (F_DEAD | F_POLLOUT)) return; /* a full socket: EPOLLOUT flushes */
    if (c->out->len - c->out->off >= BATCH_FLUSH)
        conn_flush(c);
    else if (!(c->flags & F_DIRTY))
        conn_dirty(c);
}

/* ---- topics ---- */

static uint64_t topic_hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static struct topic *topic_find(const char *name, size_t len, uint64_t h)
{
    for (struct topic *t = G.tab[h & (G.tabsize - 1)]; t; t = t->hnext)
        if (t->hash == h && t->len == len && memcmp(t->name, name, len) == 0) return t;
    return NULL;
}

static void topic_grow(void)
{
    size_t nsize = G.tabsize * 2;
    struct topic **nt = calloc(nsize, sizeof *nt);
    if (!nt) return; /* chains just get longer */
    for (size_t i = 0; i < G.tabsize; i++) {
        struct topic *t = G.tab[i], *next;
        for (; t; t = next) {
            next = t->hnext;
            t->hnext = nt[t->hash & (nsize - 1)];
            nt[t->hash & (nsize - 1)] = t;
        }
    }
    free(G.tab);
    G.tab = nt;
    G.tabsize = nsize;
}

/* Add c to the topic name (created on first use). False on no memory. */
static bool topic_join(struct conn *c, const char *name, size_t len)
{
    uint64_t h = topic_hash(name, len);
    struct topic *t = topic_find(name, len, h);
    if (!t) {
        t = malloc(sizeof *t + len);
        if (!t) return false;
        memcpy(t->name, name, len);
        t->len = (uint16_t)len;
        t->hash = h;
        t->subs = NULL;
        t->nsubs = 0;
        t->hnext = G.tab[h & (G.tabsize - 1)];
        G.tab[h & (G.tabsize - 1)] = t;
        if (++G.ntopics > G.tabsize) topic_grow();
    }
    c->topic = t;
    c->prev = NULL;
    c->next = t->subs;
    if (t->subs) t->subs->prev = c;
    t->subs = c;
    t->nsubs++;
    return true;
}

/* Remove c from its topic; frees the topic when it was the last. Only
 * called from conn_close, never under a fan-out loop. */
static void topic_leave(struct conn *c)
{
    struct topic *t = c->topic;
    if (!t) return;
    if (c->prev)
        c->prev->next = c->next;
    else
        t->subs = c->next;
    if (c->next) c->next->prev = c->prev;
    c->topic = NULL;
    c->next = c->prev = NULL;
    if (--t->nsubs) return;
    struct topic **pp = &G.tab[t->hash & (G.tabsize - 1)];
    while (*pp != t)
        pp = &(*pp)->hnext;
    *pp = t->hnext;
    free(t);
    G.ntopics--;
}

static bool scratch(char **p, size_t *cap, size_t need)
{
    if (*cap >= need) return true;
    char *np = realloc(*p, need);
    if (!np) return false;
    *p = np;
    *cap = need;
    return true;
}

/* The WebSocket text frame of body into G.wsf; its length, 0 on no memory. */
static size_t frame_ws(const char *body, size_t n)
{
    if (!scratch(&G.wsf, &G.wscap, n + 10)) return 0;
    unsigned char *h = (unsigned char *)G.wsf;
    size_t hl = 2;
    h[0] = 0x81;
    if (n < 126) {
        h[1] = (unsigned char)n;
    } else if (n <= 0xffff) {
        h[1] = 126;
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
        hl = 4;
    } else {
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
        hl = 10;
    }
    memcpy(G.wsf + hl, body, n);
    return hl + n;
}

/* The SSE event of body into G.ssef: one `data: ` line per line of the
 * body (CR, LF or CRLF end a line), then a blank line. 0 on no memory. */
static size_t frame_sse(const char *body, size_t n)
{
    size_t lines = 1;
    for (size_t i = 0; i < n; i++)
        if (body[i] == '\n' || (body[i] == '\r' && (i + 1 == n || body[i + 1] != '\n'))) lines++;
    if (!scratch(&G.ssef, &G.ssecap, n + lines * 7 + 1)) return 0;
    char *o = G.ssef;
    memcpy(o, "data: ", 6);
    o += 6;
    for (size_t i = 0; i < n; i++) {
        if (body[i] != '\r' && body[i] != '\n') {
            *o++ = body[i];
            continue;
        }
        if (body[i] == '\r' && i + 1 < n && body[i + 1] == '\n') i++;
        memcpy(o, "\ndata: ", 7);
        o += 7;
    }
    memcpy(o, "\n\n", 2);
    o += 2;
    return (size_t)(o - G.ssef);
}

/* Deliver body to every live subscriber of t. False on no memory. */
static bool topic_publish(struct topic *t, const char *body, size_t n)
{
    size_t wl = 0, sl = 0;
    for (struct conn *c = t->subs; c; c = c->next) {
        if (c->flags & (F_DEAD | F_CLOSE_AFTER)) continue; /* nothing after a close frame */
        const char *f;
        size_t fl;
        if (c->state == ST_WS) {
            if (!wl && !(wl = frame_ws(body, n))) return false;
            f = G.wsf, fl = wl;
        } else {
            if (!sl && !(sl = frame_sse(body, n))) return false;
            f = G.ssef, fl = sl;
        }
        if (G.batched)
            conn_append(c, f, fl);
        else
            conn_send(c, f, fl);
        G.deliveries++;
    }
    return true;
}

/* ---- HTTP ---- */

static bool mem_icontains(const char *p, size_t n, const char *word)
{
    size_t wl = strlen(word);
    for (size_t i = 0; i + wl <= n; i++)
        if (strncasecmp(p + i, word, wl) == 0) return true;
    return false;
}

/* Queue a complete response; close after it when close is set. */
static void http_reply(struct conn *c, const char *status, const char *extra, const char *body,
                       bool close)
{
    char h[512];
    int n = snprintf(h, sizeof h,
                     "HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%s%s\r\n%s",
                     status, strlen(body), extra, close ? "Connection: close\r\n" : "", body);
    if (n <= 0 || (size_t)n >= sizeof h) {
        conn_kill(c);
        return;
    }
    conn_queue(c, h, (size_t)n);
    if (close) c->flags |= F_CLOSE_AFTER;
}

static void http_error(struct conn *c, const char *status)
{
    http_reply(c, status, "", "error\n", true);
}

/* Parse the head p[0, hl) (ending with the blank line) into r. False on a
 * malformed head. */
static bool req_parse(struct req *r, const char *p, size_t hl)
{
    memset(r, 0, sizeof *r);
    const char *lim = p + hl - 2; /* the blank line's CRLF */
    const char *eol = memmem(p, hl, "\r\n", 2);
    /* Request line: METHOD SP /target SP HTTP/1.x */
    const char *sp1 = memchr(p, ' ', (size_t)(eol - p));
    if (!sp1) return false;
    const char *tgt = sp1 + 1;
    const char *sp2 = memchr(tgt, ' ', (size_t)(eol - tgt));
    if (!sp2 || sp2 == tgt || *tgt != '/') return false;
    for (const char *q = tgt; q < sp2; q++)
        if ((unsigned char)*q <= 0x20 || *q == 0x7f) return false;
    size_t vl = (size_t)(eol - sp2 - 1);
    if (vl != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0 || (sp2[8] != '0' && sp2[8] != '1'))
        return false;
    r->close = sp2[8] == '0';
    r->get = sp1 - p == 3 && memcmp(p, "GET", 3) == 0;
    r->post = sp1 - p == 4 && memcmp(p, "POST", 4) == 0;
    r->path = tgt;
    r->plen = (size_t)(sp2 - tgt);
    const char *q = memchr(tgt, '?', r->plen);
    if (q) r->plen = (size_t)(q - tgt);

    for (const char *line = eol + 2; line < lim; line = eol + 2) {
        eol = memmem(line, (size_t)(lim + 2 - line), "\r\n", 2);
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (!colon || colon == line) return false;
        size_t nl = (size_t)(colon - line);
        for (size_t i = 0; i < nl; i++)
            if ((unsigned char)line[i] <= 0x20 || line[i] == 0x7f) return false;
        const char *v = colon + 1, *ve = eol;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        size_t n = (size_t)(ve - v);
        if (nl == 14 && strncasecmp(line, "content-length", 14) == 0) {
            size_t len = 0;
            if (!n) return false;
            for (size_t i = 0; i < n; i++) {
                if (v[i] < '0' || v[i] > '9') return false;
                if (len <= MAX_BODY) len = len * 10 + (size_t)(v[i] - '0');
            }
            if (r->has_clen && len != r->clen) return false;
            if (len > MAX_BODY) r->too_big = true;
            r->has_clen = true;
            r->clen = len;
        } else if (nl == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
            r->te = true;
        } else if (nl == 10 && strncasecmp(line, "connection", 10) == 0) {
            if (mem_icontains(v, n, "close")) r->close = true;
            if (mem_icontains(v, n, "keep-alive")) r->close = false;
        } else if (nl == 7 && strncasecmp(line, "upgrade", 7) == 0) {
            r->ws = mem_icontains(v, n, "websocket");
        } else if (nl == 6 && strncasecmp(line, "accept", 6) == 0) {
            r->sse = mem_icontains(v, n, "text/event-stream");
        } else if (nl == 17 && strncasecmp(line, "sec-websocket-key", 17) == 0) {
            r->key = v;
            r->klen = n;
        } else if (nl == 21 && strncasecmp(line, "sec-websocket-version", 21) == 0) {
            r->ws13 = n == 2 && memcmp(v, "13", 2) == 0;
        }
    }
    return true;
}

static bool topic_name_ok(const char *s, size_t n)
{
    if (!n || n > MAX_TOPIC) return false;
    return !memchr(s, '/', n);
}

static void http_subscribe(struct conn *c, const struct req *r, const char *name, size_t nlen)
{
    char h[256];
    int n;
    if (r->ws) {
        if (!r->ws13) {
            http_reply(c, "426 Upgrade Required", "Sec-WebSocket-Version: 13\r\n", "error\n", true);
            return;
        }
        if (!r->key || r->klen < 16 || r->klen > 64) {
            http_error(c, "400 Bad Request");
            return;
        }
        unsigned char cat[64 + sizeof WS_GUID], md[SHA_DIGEST_LENGTH];
        unsigned char acc[4 * ((SHA_DIGEST_LENGTH + 2) / 3) + 1];
        memcpy(cat, r->key, r->klen);
        memcpy(cat + r->klen, WS_GUID, sizeof WS_GUID - 1);
        SHA1(cat, r->klen + sizeof WS_GUID - 1, md);
        EVP_EncodeBlock(acc, md, SHA_DIGEST_LENGTH);
        n = snprintf(h, sizeof h,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     (const char *)acc);
    } else if (r->sse) {
        n = snprintf(h, sizeof h,
                     "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     "Cache-Control: no-cache\r\nConnection: close\r\n\r\n");
    } else {
        http_error(c, "406 Not Acceptable");
        return;
    }
    if (!topic_join(c, name, nlen)) {
        http_error(c, "503 Service Unavailable");
        return;
    }
    c->state = r->ws ? ST_WS : ST_SSE;
    conn_queue(c, h, (size_t)n);
}

static void http_route(struct conn *c, const struct req *r, const char *body)
{
    const char *p = r->path;
    size_t n = r->plen;
    if (r->get && n == 8 && memcmp(p, "/healthz", 8) == 0) {
        http_reply(c, "200 OK", "", "ok\n", r->close);
    } else if (n > 5 && memcmp(p, "/sub/", 5) == 0) {
        if (!r->get)
            http_reply(c, "405 Method Not Allowed", "Allow: GET\r\n", "error\n", true);
        else if (!topic_name_ok(p + 5, n - 5))
            http_error(c, "400 Bad Request");
        else
            http_subscribe(c, r, p + 5, n - 5);
    } else if (n > 5 && memcmp(p, "/pub/", 5) == 0) {
        if (!r->post) {
            http_reply(c, "405 Method Not Allowed", "Allow: POST\r\n", "error\n", true);
        } else if (!topic_name_ok(p + 5, n - 5)) {
            http_error(c, "400 Bad Request");
        } else {
            struct topic *t = topic_find(p + 5, n - 5, topic_hash(p + 5, n - 5));
            G.published++;
            if (t && !topic_publish(t, body, r->clen))
                http_error(c, "500 Internal Server Error");
            else
                http_reply(c, "200 OK", "", "ok\n", r->close);
        }
    } else {
        http_error(c, "404 Not Found");
    }
}

/* One request from p[0, n): bytes consumed, 0 when incomplete (or when c
 * is now closing). */
static size_t http_consume(struct conn *c, char *p, size_t n)
{
    char *e = memmem(p, n < MAX_HEAD ? n : MAX_HEAD, "\r\n\r\n", 4);
    if (!e) {
        if (n >= MAX_HEAD) http_error(c, "431 Request Header Fields Too Large");
        return 0;
    }
    size_t hl = (size_t)(e - p) + 4;
    struct req r;
    if (!req_parse(&r, p, hl)) {
        http_error(c, "400 Bad Request");
        return 0;
    }
    if (r.te) {
        http_error(c, "501 Not Implemented");
        return 0;
    }
    if (r.too_big) {
        http_error(c, "413 Content Too Large");
        return 0;
    }
    if (r.post && !r.has_clen) {
        http_error(c, "411 Length Required");
        return 0;
    }
    if (n - hl < r.clen) return 0;
    http_route(c, &r, p + hl);
    return hl + r.clen;
}

/* ---- WebSocket client frames ---- */

static void ws_control(struct conn *c, unsigned op, const unsigned char *pl, size_t n)
{
    unsigned char f[2 + 125];
    f[0] = (unsigned char)(0x80 | op);
    f[1] = (unsigned char)n;
    memcpy(f + 2, pl, n);
    conn_queue(c, f, 2 + n);
}

static void ws_fail(struct conn *c, unsigned code)
{
    unsigned char pl[2] = {(unsigned char)(code >> 8), (unsigned char)code};
    ws_control(c, 0x8, pl, 2);
    c->flags |= F_CLOSE_AFTER;
}

/* One client frame from p[0, n): bytes consumed, 0 when incomplete (or when
 * c is now closing). Pings get a pong, a close gets a close; the rest is
 * skipped. */
static size_t ws_consume(struct conn *c, char *p, size_t n)
{
    unsigned char *u = (unsigned char *)p;
    if (n < 2) return 0;
    unsigned op = u[0] & 0x0f;
    bool fin = u[0] & 0x80;
    uint64_t len = u[1] & 0x7f;
    size_t hl = 2;
    if ((u[0] & 0x70) || !(u[1] & 0x80) || (op > 2 && op < 8) || op > 10 ||
        (op >= 8 && (!fin || len > 125))) {
        ws_fail(c, 1002);
        return 0;
    }
    if (len == 126) {
        if (n < 4) return 0;
        len = ((uint64_t)u[2] << 8) | u[3];
        hl = 4;
    } else if (len == 127) {
        if (n < 10) return 0;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = (len << 8) | u[2 + i];
        hl = 10;
    }
    if (len > MAX_WS_PAYLOAD) {
        ws_fail(c, 1009);
        return 0;
    }
    const unsigned char *mk = u + hl;
    hl += 4;
    if (n < hl || n - hl < len) return 0;
    unsigned char *pl = u + hl;
    if (op >= 8)
        for (size_t i = 0; i < len; i++)
            pl[i] ^= mk[i & 3];
    if (op == 0x9) {
        ws_control(c, 0xA, pl, (size_t)len);
    } else if (op == 0x8) {
        ws_control(c, 0x8, pl, len >= 2 ? 2 : 0);
        c->flags |= F_CLOSE_AFTER;
    }
    return hl + (size_t)len;
}

/* ---- event handlers ---- */

/* Consume what p[0, n) holds for c's state: bytes used (the rest is an
 * incomplete request or frame, kept for the next read). */
static size_t conn_consume(struct conn *c, char *p, size_t n)
{
    size_t used = 0;
    while (used < n && !(c->flags & (F_DEAD | F_CLOSE_AFTER))) {
        size_t k;
        if (c->state == ST_HTTP)
            k = http_consume(c, p + used, n - used);
        else if (c->state == ST_WS)
            k = ws_consume(c, p + used, n - used);
        else
            k = n - used; /* SSE: the client has nothing to say */
        if (!k) break;
        used += k;
    }
    return c->flags & (F_DEAD | F_CLOSE_AFTER) ? n : used;
}

static void on_readable(struct conn *c)
{
    ssize_t r;
    if (c->state == ST_SSE || (c->flags & F_CLOSE_AFTER)) {
        r = recv(c->fd, G.rbuf, sizeof G.rbuf, 0);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            conn_kill(c);
        return;
    }
    if (c->in) {
        if (!buf_reserve(&c->in, READ_CHUNK, IN_LIMIT)) {
            conn_kill(c);
            return;
        }
        r = recv(c->fd, c->in->d + c->in->len, c->in->cap - c->in->len, 0);
    } else {
        r = recv(c->fd, G.rbuf, sizeof G.rbuf, 0);
    }
    if (r <= 0) {
        if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) conn_kill(c);
        return;
    }
    if (c->in) {
        c->in->len += (uint32_t)r;
        size_t used = conn_consume(c, c->in->d + c->in->off, c->in->len - c->in->off);
        c->in->off += (uint32_t)used;
        if (c->in->off == c->in->len) {
            free(c->in);
            c->in = NULL;
        }
    } else {
        size_t used = conn_consume(c, G.rbuf, (size_t)r);
        if (used < (size_t)r) {
            if (!buf_reserve(&c->in, (size_t)r - used, IN_LIMIT)) {
                conn_kill(c);
                return;
            }
            memcpy(c->in->d, G.rbuf + used, (size_t)r - used);
            c->in->len = (uint32_t)((size_t)r - used);
        }
    }
    if (c->out || (c->flags & F_CLOSE_AFTER)) {
        if (G.batched)
            conn_dirty(c);
        else
            conn_flush(c);
    }
}

static void listen_pause(bool pause)
{
    if (G.listen_paused == pause) return;
    struct epoll_event ev = {.events = pause ? 0 : EPOLLIN, .data.fd = G.lfd};
    if (epoll_ctl(G.ep, EPOLL_CTL_MOD, G.lfd, &ev) == 0) G.listen_paused = pause;
}

static void on_accept(void)
{
    for (int i = 0; i < 64; i++) {
        int fd = accept4(G.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == ECONNABORTED || errno == EINTR) continue;
            /* Out of fds or memory: stop accepting until a close. */
            if (errno != EAGAIN && errno != EWOULDBLOCK) listen_pause(true);
            return;
        }
        if ((size_t)fd >= G.maxfd) {
            close(fd);
            listen_pause(true);
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = &G.conns[fd];
        memset(c, 0, sizeof *c);
        c->fd = fd;
        c->state = ST_HTTP;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(G.ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            c->state = ST_FREE;
            close(fd);
        }
    }
}

static void conn_close(struct conn *c)
{
    topic_leave(c);
    close(c->fd);
    free(c->in);
    free(c->out);
    memset(c, 0, sizeof *c);
    listen_pause(false);
}

/* End of a pass: close the dead, flush the dirty (a flush may kill, which
 * puts the connection back on the list). */
static void pending_run(void)
{
    while (G.pending) {
        struct conn *c = G.pending;
        G.pending = c->pnext;
        c->pnext = NULL;
        c->flags &= ~F_PENDING;
        if (c->flags & F_DEAD)
            conn_close(c);
        else if (c->flags & F_DIRTY)
            conn_flush(c);
    }
}

/* ---- setup ---- */

static void on_signal(int sig)
{
    (void)sig;
    G.stop = 1;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: floor -p PORT [-m direct|batched]\n"
               "  -p PORT   listen on 127.0.0.1:PORT (0: any free port)\n"
               "  -m MODE   direct: one send() per subscriber per message (default)\n"
               "            batched: one send() per subscriber per epoll pass\n");
}

static int listen_on(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 4096) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) < 0) {
        close(fd);
        return -1;
    }
    fprintf(stderr, "listening on 127.0.0.1:%d\n", ntohs(sa.sin_port));
    return fd;
}

int main(int argc, char **argv)
{
    int port = -1, opt, rc = 1;
    while ((opt = getopt(argc, argv, "p:m:h")) != -1) {
        char *end;
        switch (opt) {
        case 'p':
            port = (int)strtol(optarg, &end, 10);
            if (*end || port < 0 || port > 65535) port = -2;
            break;
        case 'm':
            if (strcmp(optarg, "batched") == 0)
                G.batched = true;
            else if (strcmp(optarg, "direct") == 0)
                G.batched = false;
            else
                port = -2;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (port < 0 || optind != argc) {
        usage(stderr);
        return 1;
    }

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > MAX_FDS ? MAX_FDS : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) getrlimit(RLIMIT_NOFILE, &rl);
        G.maxfd = rl.rlim_cur;
    } else {
        G.maxfd = 1024;
    }

    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* Batched mode allocates and frees a buffer per subscriber per pass: keep
     * glibc from handing the heap top back to the kernel after each pass
     * (and from mmap'ing buffers up to a few MiB), or page faults dominate. */
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    mallopt(M_MMAP_THRESHOLD, 4 << 20);

    /* libcrypto allocates its tables on first use: do it now, so that a
     * fixed cost does not show up as memory per WebSocket connection. */
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)WS_GUID, sizeof WS_GUID - 1, md);

    G.ep = G.lfd = -1;
    G.tabsize = 1024;
    /* Large calloc is mmap'd: pages are touched only as fds are used. */
    G.conns = calloc(G.maxfd, sizeof *G.conns);
    G.tab = calloc(G.tabsize, sizeof *G.tab);
    if (!G.conns || !G.tab) {
        fprintf(stderr, "floor: out of memory\n");
        goto out;
    }
    G.ep = epoll_create1(EPOLL_CLOEXEC);
    if (G.ep < 0) {
        perror("floor: epoll_create1");
        goto out;
    }
    G.lfd = listen_on(port);
    if (G.lfd < 0) {
        perror("floor: listen");
        goto out;
    }
    struct epoll_event lev = {.events = EPOLLIN, .data.fd = G.lfd};
    if (epoll_ctl(G.ep, EPOLL_CTL_ADD, G.lfd, &lev) < 0) {
        perror("floor: epoll_ctl");
        goto out;
    }

    static struct epoll_event evs[MAX_EVENTS];
    while (!G.stop) {
        int n = epoll_wait(G.ep, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("floor: epoll_wait");
            goto out;
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == G.lfd) {
                on_accept();
                continue;
            }
            struct conn *c = &G.conns[fd];
            if (c->state == ST_FREE || (c->flags & F_DEAD)) continue;
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
            if ((evs[i].events & EPOLLOUT) && !(c->flags & F_DEAD)) conn_flush(c);
        }
        pending_run();
    }
    rc = 0;
    fprintf(stderr,
            "floor: %s mode, %llu published, %llu deliveries, %llu slow subscribers dropped\n",
            G.batched ? "batched" : "direct", (unsigned long long)G.published,
            (unsigned long long)G.deliveries, (unsigned long long)G.dropped);
out:
    if (G.conns) {
        G.pending = NULL;
        for (size_t fd = 0; fd < G.maxfd; fd++)
            if (G.conns[fd].state != ST_FREE) conn_close(&G.conns[fd]);
    }
    if (G.lfd >= 0) close(G.lfd);
    if (G.ep >= 0) close(G.ep);
    free(G.conns);
    free(G.tab);
    free(G.wsf);
    free(G.ssef);
    return rc;
}
