/*
 * bench/loadgen.c: a pub/sub load generator for sluice and, for comparison,
 * nchan. One process, one epoll loop, non-blocking sockets, libc only.
 *
 * A run opens N subscribers of one transport (WebSocket, SSE or long-poll)
 * spread over T topics, waits until every one is subscribed, then publishes
 * M messages with HTTP POST on a few keep-alive connections and counts what
 * arrives. Each message carries its sequence number and its send time
 * (CLOCK_MONOTONIC ns; publisher and subscribers are this one process), so
 * the receiver measures publish-to-receive latency and keeps a bitmap per
 * subscriber of the sequences it got: losses and duplicates are exact, per
 * subscriber and per message. An idle mode holds N subscribers open and
 * reports the server's memory per connection from /proc.
 *
 * The wire parsers are minimal and strict where it matters to the numbers:
 * an HTTP response reader (Content-Length, chunked, until-close), a
 * WebSocket frame reader (client frames are masked, as RFC 6455 requires),
 * SSE `data:` lines, and long-poll answers. For long-poll, the next poll
 * resumes from the `last_id` of a JSON answer (sluice) and also sends back
 * Etag/Last-Modified as If-None-Match/If-Modified-Since (nchan's protocol),
 * so one tool drives both servers with URL templates.
 *
 * A message body is "SLB" + 8 hex digits of sequence + 16 hex digits of
 * send time, padded with '.' to the requested size: plain ASCII, so it goes
 * unchanged through text frames, SSE and JSON strings, and the receiver
 * finds it by scanning for the marker whatever the envelope.
 *
 * Publishing may go to another port than subscribing (--pub-port) and wrap
 * the body in another server's publish format (--pub-format): Pushpin takes
 * a JSON item per message on its handler's port, in the format of the
 * subscriber transport (ws-message, http-stream or http-response), and
 * answers each request with Connection: close, without pipelining; there,
 * every publish in flight has a connection of its own.
 *
 * --deflate offers WebSocket permessage-deflate (RFC 7692) and inflates
 * the compressed frames (RSV1) it gets with zlib, one message at a time as
 * the server asks (no context takeover), and counts them; --body json
 * pads the message with JSON records of varied values instead of dots,
 * so that compression meets realistic data.
 *
 * Everything is bounded: connection attempts in flight, connect and
 * subscribe timeouts, a drain period and an overall deadline. The exit
 * status says which part failed (see usage()).
 */
#define _GNU_SOURCE /* memmem */
#include <arpa/inet.h>
#include <errno.h>
#include <dirent.h>
#include <getopt.h>
#include <zlib.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MARK "SLB"
#define MARK_LEN 27           /* "SLB" + 8 hex seq + 16 hex send time */
#define MAX_IN (64u << 20)    /* per-connection input bound */
#define MAX_FRAME (16u << 20) /* largest WebSocket frame accepted */
#define MAX_HEAD 65536        /* largest response head accepted */
#define MAX_REOPENS 1000      /* reconnects per long-poll/publisher conn */
#define MAX_PIDS 32

enum pub_format { PF_RAW, PF_PUSHPIN };

enum exit_code {
    EXIT_OK = 0,
    EXIT_USAGE = 1, /* bad options or a local resource problem */
    EXIT_SUBSCRIBE = 2,
    EXIT_PUBLISH = 3, /* publisher connection or publish errors */
    EXIT_DELIVERY = 4 /* lost or duplicated messages, dropped subscribers */
};

enum kind { K_WS, K_SSE, K_LP, K_PUB };
static const char *const kind_names[] = {"ws", "sse", "longpoll", "pub"};

enum cstate { S_NEW, S_CONNECTING, S_OPEN, S_CLOSED };

/* HTTP response reader phases. */
enum rphase { RP_HEAD, RP_LEN, RP_CSIZE, RP_CDATA, RP_CCRLF, RP_TRAILER, RP_EOF, RP_DONE };
enum rfeed { RF_ERR = -1, RF_MORE = 0, RF_HEAD = 1, RF_DONE = 2 };

enum phase { PH_SUBSCRIBE, PH_SETTLE, PH_PUBLISH, PH_DRAIN, PH_HOLD, PH_DONE };

/* A byte buffer with a read offset: data is p[off, len). */
struct buf {
    char *p;
    size_t off, len, cap;
};

struct resp {
    uint8_t phase;
    bool close;
    int status;
    uint64_t left;
};

struct conn {
    int fd;
    uint8_t kind, state;
    bool subscribed, streaming, ws_frag, counted_fail;
    uint32_t reopens;
    uint32_t idx, topic;
    uint32_t gen; /* tags epoll events: a reopened conn ignores its old fd's */
    uint64_t t_start;
    struct buf in, out, body;
    struct resp r;
    /* subscribers */
    uint8_t *seen; /* bitmap of received sequences, NULL in idle mode */
    uint64_t got, dups;
    char last_id[96], etag[96], lastmod[48];
    /* publishers: FIFO of in-flight requests */
    uint32_t *ring_seq;
    uint64_t *ring_t;
    unsigned ring_head, ring_n;
};

#define HSUB 5
#define HBUCKETS ((64 - HSUB + 1) << HSUB)
/* Log-linear histogram of nanoseconds: 32 sub-buckets per power of two, so
 * a reported percentile is within ~3% of the true value. */
struct hist {
    uint64_t n, max, sum;
    uint64_t b[HBUCKETS];
};

struct mem {
    long rss_kb, pss_kb, pdirty_kb;
};

static struct {
    /* options */
    char host[64];
    int port, pub_port, sub_port2;
    int kind, pub_format;
    bool idle, json;
    bool deflate;   /* offer permessage-deflate, inflate RSV1 frames */
    bool body_json; /* pad messages with JSON records */
    uint64_t zframes, zbytes_in, zbytes_out; /* compressed frames received */
    uint32_t n, topics, m, size, pubconns, pipeline, batch;
    double rate, settle, drain, hold, deadline, connect_timeout, sub_timeout;
    char prefix[64], sub_path[512], pub_path[512], since_param[32];
    int pids[MAX_PIDS];
    int npids;

    /* state */
    struct sockaddr_storage addr, pub_addr, addr2;
    socklen_t addrlen, pub_addrlen, addrlen2;
    int ep;
    struct conn *subs, *pubs;
    struct conn **byfd; /* fd -> conn, for epoll events */
    size_t nfd;
    uint32_t gen;
    int phase;
    uint32_t started, subscribed, sub_failed, sub_dropped, pub_rr;
    uint32_t next_seq, acked, pub_errors;
    uint32_t *subs_per_topic, *acked_topic;
    uint8_t *pub_ok;
    uint64_t received, dups, bogus, wrong_topic, lp_polls, reopens_total;
    uint64_t t0, t_subscribed, t_pub_start, t_pub_end, t_last_delivery, t_end;
    uint64_t t_settle_end, t_drain_end, t_hold_end, t_deadline, t_sub_deadline;
    struct hist lat, ack;
    struct mem mem_before, mem_after;
    long cpu_before, cpu_after; /* server clock ticks */
    uint64_t cpuns_before[MAX_PIDS], cpuns_after[MAX_PIDS]; /* schedstat ns per pid */
    double ccpu_before, ccpu_after;
    int fail_code;
    char fail_reason[256];
    char first_error[256];
    uint64_t rng;
    volatile sig_atomic_t stop;
} G;

/* ---- small utilities ---- */

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t rng_next(void)
{
    G.rng ^= G.rng << 13;
    G.rng ^= G.rng >> 7;
    G.rng ^= G.rng << 17;
    return G.rng;
}

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p) {
        fprintf(stderr, "loadgen: out of memory\n");
        exit(EXIT_USAGE);
    }
    return p;
}

/* Remember the first error of the run (and why): the summary shows it. */
static void note_error(const char *fmt, ...)
{
    if (G.first_error[0]) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(G.first_error, sizeof G.first_error, fmt, ap);
    va_end(ap);
}

static long cpu_read(void);
static void cpu_read_ns(uint64_t *out);
static double self_cpu(void);

/* s with the characters JSON forbids in a string replaced by '?', for the
 * one free-text field (the failure reason). Returns a static buffer. */
static const char *json_safe(const char *s)
{
    static char out[256];
    size_t i = 0;
    for (; s[i] && i + 1 < sizeof out; i++)
        out[i] = s[i] == '"' || s[i] == '\\' || (unsigned char)s[i] < 0x20 ? '?' : s[i];
    out[i] = '\0';
    return out;
}

static void finish(int code, const char *fmt, ...)
{
    if (G.phase == PH_DONE) return;
    G.phase = PH_DONE;
    G.t_end = mono_ns();
    G.cpu_after = cpu_read();
    cpu_read_ns(G.cpuns_after);
    G.ccpu_after = self_cpu();
    if (code && !G.fail_code) {
        G.fail_code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(G.fail_reason, sizeof G.fail_reason, fmt, ap);
        va_end(ap);
    }
}

static bool buf_reserve(struct buf *b, size_t extra)
{
    if (b->off == b->len) b->off = b->len = 0;
    if (b->cap - b->len >= extra) return true;
    if (b->off > 0) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->cap - b->len >= extra) return true;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < extra)
        cap *= 2;
    if (cap > MAX_IN) return false;
    char *p = realloc(b->p, cap);
    if (!p) return false;
    b->p = p;
    b->cap = cap;
    return true;
}

static bool buf_append(struct buf *b, const void *data, size_t n)
{
    if (!buf_reserve(b, n)) return false;
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return true;
}

static void buf_reset(struct buf *b)
{
    b->off = b->len = 0;
}

static bool mem_icontains(const char *s, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (strncasecmp(s + i, needle, k) == 0) return true;
    return false;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void b64_encode(const unsigned char *in, size_t n, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        out[o++] = tab[(v >> 18) & 63];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tab[v & 63] : '=';
    }
    out[o] = '\0';
}

/* ---- histogram ---- */

static unsigned hist_index(uint64_t v)
{
    if (v < (1u << HSUB)) return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v);
    return ((e - HSUB + 1) << HSUB) + (unsigned)((v >> (e - HSUB)) & ((1u << HSUB) - 1));
}

/* The largest value that falls in bucket i. */
static uint64_t hist_upper(unsigned i)
{
    if (i < (1u << HSUB)) return i;
    unsigned e = (i >> HSUB) + HSUB - 1, sub = i & ((1u << HSUB) - 1);
    uint64_t low = ((uint64_t)(1u << HSUB) + sub) << (e - HSUB);
    return low + ((uint64_t)1 << (e - HSUB)) - 1;
}

static void hist_add(struct hist *h, uint64_t v)
{
    h->n++;
    h->sum += v;
    if (v > h->max) h->max = v;
    h->b[hist_index(v)]++;
}

static uint64_t hist_pct(const struct hist *h, double p)
{
    if (!h->n) return 0;
    uint64_t want = (uint64_t)(p * (double)h->n + 0.999999), acc = 0;
    if (want < 1) want = 1;
    for (unsigned i = 0; i < HBUCKETS; i++) {
        acc += h->b[i];
        if (acc >= want) {
            uint64_t u = hist_upper(i);
            return u < h->max ? u : h->max;
        }
    }
    return h->max;
}

/* ---- /proc readings of the server ---- */

static long proc_field_kb(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    size_t k = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, k) == 0) {
            v = strtol(line + k, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

static struct mem mem_read(void)
{
    struct mem m = {0, 0, 0};
    char path[64];
    for (int i = 0; i < G.npids; i++) {
        snprintf(path, sizeof path, "/proc/%d/status", G.pids[i]);
        long v = proc_field_kb(path, "VmRSS:");
        if (v > 0) m.rss_kb += v;
        snprintf(path, sizeof path, "/proc/%d/smaps_rollup", G.pids[i]);
        v = proc_field_kb(path, "Pss:");
        if (v > 0) m.pss_kb += v;
        v = proc_field_kb(path, "Private_Dirty:");
        if (v > 0) m.pdirty_kb += v;
    }
    return m;
}

/* utime + stime in clock ticks, summed over the server pids. */
static long cpu_read(void)
{
    long total = 0;
    char path[64], line[1024];
    for (int i = 0; i < G.npids; i++) {
        snprintf(path, sizeof path, "/proc/%d/stat", G.pids[i]);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t n = fread(line, 1, sizeof line - 1, f);
        fclose(f);
        line[n] = '\0';
        char *p = strrchr(line, ')');
        if (!p) continue;
        /* Fields after "pid (comm)": state is field 3, utime 14, stime 15. */
        unsigned long ut = 0, st = 0;
        if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) == 2)
            total += (long)(ut + st);
    }
    return total;
}

/* Each pid's CPU time in ns: the sum of its threads' run time
 * (/proc/PID/task/TID/schedstat, first field), not quantised to clock
 * ticks as utime + stime are.  A thread that ends during the run takes its
 * time with it (the servers measured here keep theirs). */
static void cpu_read_ns(uint64_t *out)
{
    char path[64], line[128];
    for (int i = 0; i < G.npids; i++) {
        out[i] = 0;
        snprintf(path, sizeof path, "/proc/%d/task", G.pids[i]);
        DIR *d = opendir(path);
        if (!d) continue;
        for (struct dirent *e; (e = readdir(d));) {
            if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
            snprintf(path, sizeof path, "/proc/%d/task/%.16s/schedstat", G.pids[i], e->d_name);
            FILE *f = fopen(path, "r");
            if (!f) continue;
            unsigned long long ns = 0;
            if (fgets(line, sizeof line, f) && sscanf(line, "%llu", &ns) == 1) out[i] += ns;
            fclose(f);
        }
        closedir(d);
    }
}

static double self_cpu(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* ---- connections ---- */

static void conn_fail(struct conn *c, const char *fmt, ...);
static int conn_open(struct conn *c);
static void pub_pump(uint64_t now);

static void topic_name(uint32_t t, char *out, size_t n)
{
    snprintf(out, n, "%s%u", G.prefix, t);
}

/* Expand "{topic}" in a path template. */
static void path_expand(const char *tmpl, uint32_t topic, char *out, size_t n)
{
    char name[96];
    topic_name(topic, name, sizeof name);
    size_t o = 0;
    for (const char *p = tmpl; *p && o + 1 < n;) {
        if (strncmp(p, "{topic}", 7) == 0) {
            o += (size_t)snprintf(out + o, n - o, "%s", name);
            if (o >= n) o = n - 1;
            p += 7;
        } else {
            out[o++] = *p++;
        }
    }
    out[o] = '\0';
}

static void sub_mark_subscribed(struct conn *c)
{
    if (c->subscribed) return;
    c->subscribed = true;
    G.subscribed++;
    G.subs_per_topic[c->topic]++;
}

static void conn_flush(struct conn *c)
{
    while (c->state == S_OPEN && c->out.off < c->out.len) {
        ssize_t w = send(c->fd, c->out.p + c->out.off, c->out.len - c->out.off, MSG_NOSIGNAL);
        if (w > 0) {
            c->out.off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        conn_fail(c, "send: %s", strerror(errno));
        return;
    }
    if (c->state != S_OPEN) return;
    buf_reset(&c->out);
    /* A long-poll has no head until it answers; count it subscribed once its
     * first request has left (see the README's caveat). */
    if (c->kind == K_LP) sub_mark_subscribed(c);
}

/* Percent-encode an ID for a query string. */
static void url_encode(const char *s, char *out, size_t n)
{
    size_t o = 0;
    for (; *s && o + 4 < n; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
            ch == '-' || ch == '_' || ch == '.' || ch == '~')
            out[o++] = (char)ch;
        else
            o += (size_t)snprintf(out + o, n - o, "%%%02X", ch);
    }
    out[o] = '\0';
}

/* Queue the subscriber's request (WebSocket upgrade, SSE GET or a poll). */
static void sub_queue_request(struct conn *c)
{
    char path[1024], req[2048];
    path_expand(G.sub_path, c->topic, path, sizeof path);
    int n = 0;
    if (c->kind == K_WS) {
        unsigned char key[16];
        char k64[32];
        for (int i = 0; i < 16; i++)
            key[i] = (unsigned char)rng_next();
        b64_encode(key, 16, k64);
        n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n%s\r\n",
                     path, G.host, G.port, k64,
                     G.deflate ? "Sec-WebSocket-Extensions: permessage-deflate; "
                                 "client_max_window_bits\r\n"
                               : "");
    } else if (c->kind == K_SSE) {
        n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
                     "Cache-Control: no-cache\r\n\r\n",
                     path, G.host, G.port);
    } else {
        char since[400] = "", hdrs[256] = "";
        if (c->last_id[0] && G.since_param[0]) {
            char enc[300];
            url_encode(c->last_id, enc, sizeof enc);
            snprintf(since, sizeof since, "%c%s=%s", strchr(path, '?') ? '&' : '?', G.since_param,
                     enc);
        }
        if (c->etag[0] || c->lastmod[0])
            snprintf(hdrs, sizeof hdrs, "%s%s%s%s%s%s", c->lastmod[0] ? "If-Modified-Since: " : "",
                     c->lastmod, c->lastmod[0] ? "\r\n" : "", c->etag[0] ? "If-None-Match: " : "",
                     c->etag, c->etag[0] ? "\r\n" : "");
        n = snprintf(req, sizeof req,
                     "GET %s%s HTTP/1.1\r\nHost: %s:%d\r\nAccept: application/json\r\n%s\r\n", path,
                     since, G.host, G.port, hdrs);
        G.lp_polls++;
    }
    if (n <= 0 || (size_t)n >= sizeof req || !buf_append(&c->out, req, (size_t)n))
        conn_fail(c, "request too large");
}

static void conn_close_fd(struct conn *c)
{
    if (c->fd >= 0) {
        if ((size_t)c->fd < G.nfd) G.byfd[c->fd] = NULL;
        epoll_ctl(G.ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    c->state = S_CLOSED;
}

/* Open (or reopen) c's socket; the request goes out once connected. */
static int conn_open(struct conn *c)
{
    buf_reset(&c->in);
    buf_reset(&c->out);
    buf_reset(&c->body);
    memset(&c->r, 0, sizeof c->r);
    c->streaming = c->ws_frag = false;
    c->t_start = mono_ns();
    const struct sockaddr_storage *to = c->kind == K_PUB ? &G.pub_addr : &G.addr;
    socklen_t tolen = c->kind == K_PUB ? G.pub_addrlen : G.addrlen;
    /* --sub-port2: the subscribers of each topic alternate between the two
     * ports (the topic's k-th subscriber, i / T, on port k % 2). */
    if (c->kind != K_PUB && G.sub_port2 && (c->idx / G.topics) % 2) {
        to = &G.addr2;
        tolen = G.addrlen2;
    }
    int fd = socket(to->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        c->state = S_CLOSED;
        conn_fail(c, "socket: %s", strerror(errno));
        return -1;
    }
    if ((size_t)fd >= G.nfd) {
        close(fd);
        c->state = S_CLOSED;
        conn_fail(c, "descriptor %d beyond the table", fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->gen = ++G.gen;
    G.byfd[fd] = c;
    c->state = S_CONNECTING;
    if (connect(fd, (const struct sockaddr *)to, tolen) < 0 && errno != EINPROGRESS) {
        conn_fail(c, "connect: %s", strerror(errno));
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                             .data.u64 = ((uint64_t)c->gen << 32) | (uint32_t)fd};
    if (epoll_ctl(G.ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        conn_fail(c, "epoll_ctl: %s", strerror(errno));
        return -1;
    }
    if (c->kind != K_PUB) sub_queue_request(c);
    return 0;
}

/* Reconnect a long-poller or publisher (the server may close keep-alive
 * connections); bounded per connection. Pushpin's publishers reconnect
 * after every answer by design: once per message more. */
static void conn_reopen(struct conn *c)
{
    conn_close_fd(c);
    uint32_t limit = MAX_REOPENS + (c->kind == K_PUB && G.pub_format == PF_PUSHPIN ? G.m : 0);
    if (++c->reopens > limit || G.phase == PH_DONE) {
        conn_fail(c, "too many reconnects");
        return;
    }
    G.reopens_total++;
    conn_open(c);
}

static void conn_fail(struct conn *c, const char *fmt, ...)
{
    char why[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    conn_close_fd(c);
    if (G.phase == PH_DONE) return;
    note_error("%s #%u: %s", kind_names[c->kind], c->idx, why);
    if (c->kind == K_PUB) {
        G.pub_errors += c->ring_n;
        c->ring_n = 0;
        if (!c->counted_fail) {
            c->counted_fail = true;
            finish(EXIT_PUBLISH, "publisher connection failed: %s", why);
        }
        return;
    }
    if (c->counted_fail) return;
    c->counted_fail = true;
    if (!c->subscribed)
        G.sub_failed++;
    else
        G.sub_dropped++;
}

/* ---- HTTP response reader ---- */

static void copy_value(char *dst, size_t n, const char *v, size_t vl)
{
    if (vl >= n) vl = n - 1;
    memcpy(dst, v, vl);
    dst[vl] = '\0';
}

/* Parse a response head (p, n: up to and excluding the blank line). */
static int resp_head(struct conn *c, const char *p, size_t n)
{
    struct resp *r = &c->r;
    if (n < 12 || memcmp(p, "HTTP/1.", 7) != 0) return -1;
    if (p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9')
        return -1;
    r->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    r->close = p[7] == '0';
    bool chunked = false, has_len = false;
    uint64_t len = 0;
    const char *end = p + n, *line = memchr(p, '\n', n);
    line = line ? line + 1 : end;
    while (line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol) eol = end;
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon) {
            size_t nl = (size_t)(colon - line);
            const char *v = colon + 1, *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            size_t vl = (size_t)(ve - v);
            if (nl == 14 && strncasecmp(line, "content-length", 14) == 0) {
                has_len = true;
                len = 0;
                for (size_t i = 0; i < vl; i++) {
                    if (v[i] < '0' || v[i] > '9' || len > (UINT64_MAX / 10)) return -1;
                    len = len * 10 + (uint64_t)(v[i] - '0');
                }
            } else if (nl == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
                chunked = mem_icontains(v, vl, "chunked");
            } else if (nl == 10 && strncasecmp(line, "connection", 10) == 0) {
                if (mem_icontains(v, vl, "close")) r->close = true;
                if (mem_icontains(v, vl, "keep-alive")) r->close = false;
            } else if (c->kind == K_LP && nl == 4 && strncasecmp(line, "etag", 4) == 0) {
                copy_value(c->etag, sizeof c->etag, v, vl);
            } else if (c->kind == K_LP && nl == 13 && strncasecmp(line, "last-modified", 13) == 0) {
                copy_value(c->lastmod, sizeof c->lastmod, v, vl);
            }
        }
        line = eol + 1;
    }
    if (r->status / 100 == 1 || r->status == 204 || r->status == 304)
        r->phase = RP_DONE;
    else if (chunked)
        r->phase = RP_CSIZE;
    else if (has_len)
        r->phase = len ? RP_LEN : RP_DONE, r->left = len;
    else
        r->phase = RP_EOF;
    return 0;
}

/* Consume response bytes from c->in, appending the decoded body to
 * c->body. RF_HEAD right after the head (the caller may take over the
 * stream, as WebSocket does), RF_DONE once the body is complete, RF_MORE
 * when the input is used up, RF_ERR on a malformed response. */
static int resp_feed(struct conn *c)
{
    struct resp *r = &c->r;
    struct buf *in = &c->in;
    for (;;) {
        char *p = in->p + in->off;
        size_t avail = in->len - in->off;
        switch (r->phase) {
        case RP_HEAD: {
            char *e = avail >= 4 ? memmem(p, avail, "\r\n\r\n", 4) : NULL;
            if (!e) return avail > MAX_HEAD ? RF_ERR : RF_MORE;
            if (resp_head(c, p, (size_t)(e - p) + 2) < 0) return RF_ERR;
            in->off += (size_t)(e - p) + 4;
            return RF_HEAD;
        }
        case RP_LEN:
        case RP_CDATA: {
            if (!avail) return RF_MORE;
            size_t k = avail < r->left ? avail : (size_t)r->left;
            if (!buf_append(&c->body, p, k)) return RF_ERR;
            in->off += k;
            r->left -= k;
            if (r->left) return RF_MORE;
            r->phase = r->phase == RP_LEN ? RP_DONE : RP_CCRLF;
            break;
        }
        case RP_EOF:
            if (!avail) return RF_MORE;
            if (!buf_append(&c->body, p, avail)) return RF_ERR;
            in->off += avail;
            return RF_MORE;
        case RP_CSIZE: {
            char *e = memchr(p, '\n', avail);
            if (!e) return avail > 1024 ? RF_ERR : RF_MORE;
            uint64_t sz = 0;
            int digits = 0, h;
            while (p < e && (h = hexval(*p)) >= 0 && digits < 15) {
                sz = sz * 16 + (uint64_t)h;
                p++;
                digits++;
            }
            if (!digits || sz > MAX_IN) return RF_ERR;
            in->off = (size_t)(e + 1 - in->p);
            r->left = sz;
            r->phase = sz ? RP_CDATA : RP_TRAILER;
            break;
        }
        case RP_CCRLF:
            if (avail < 1 || (p[0] == '\r' && avail < 2)) return RF_MORE;
            if (p[0] == '\r' && p[1] == '\n')
                in->off += 2;
            else if (p[0] == '\n')
                in->off += 1;
            else
                return RF_ERR;
            r->phase = RP_CSIZE;
            break;
        case RP_TRAILER: {
            char *e = memchr(p, '\n', avail);
            if (!e) return avail > MAX_HEAD ? RF_ERR : RF_MORE;
            bool blank = e == p || (e == p + 1 && p[0] == '\r');
            in->off = (size_t)(e + 1 - in->p);
            if (blank) r->phase = RP_DONE;
            break;
        }
        case RP_DONE:
            return RF_DONE;
        default:
            return RF_ERR;
        }
    }
}

static void resp_reset(struct conn *c)
{
    memset(&c->r, 0, sizeof c->r);
    buf_reset(&c->body);
}

/* ---- deliveries ---- */

static void record(struct conn *c, uint32_t seq, uint64_t ts, uint64_t now)
{
    if (!c->seen || seq >= G.m) {
        G.bogus++;
        return;
    }
    uint8_t bit = (uint8_t)(1u << (seq & 7)), *b = &c->seen[seq >> 3];
    if (*b & bit) {
        c->dups++;
        G.dups++;
        return;
    }
    *b |= bit;
    c->got++;
    G.received++;
    if (seq % G.topics != c->topic) G.wrong_topic++;
    hist_add(&G.lat, now > ts ? now - ts : 0);
    G.t_last_delivery = now;
}

/* Find every message marker in a delivered payload (one WebSocket message,
 * one SSE data line, or a whole long-poll answer). */
static void deliver(struct conn *c, const char *data, size_t len, uint64_t now)
{
    const char *p = data, *end = data + len;
    while (p < end && (p = memmem(p, (size_t)(end - p), MARK, 3)) != NULL) {
        if (end - p < MARK_LEN) break;
        uint64_t v[2] = {0, 0};
        bool ok = true;
        for (int i = 0; i < 24 && ok; i++) {
            int h = hexval(p[3 + i]);
            if (h < 0)
                ok = false;
            else
                v[i >= 8] = v[i >= 8] * 16 + (uint64_t)h;
        }
        if (ok) {
            record(c, (uint32_t)v[0], v[1], now);
            p += MARK_LEN;
        } else {
            p += 3;
        }
    }
}

/* --body json: n bytes of JSON-looking records with varied values (ids,
 * names, prices, timestamps), as a chat or feed message would carry; cut
 * at n. */
static void json_padding(char *out, size_t n, uint32_t seq)
{
    static const char *const names[] = {"alice", "bob", "carol", "dave", "erin", "frank"};
    static const char *const words[] = {"price", "update", "order", "filled", "cancelled", "new",
                                        "bid", "ask", "volume", "market"};
    size_t o = 0;
    uint64_t x = seq * 0x9E3779B97F4A7C15ULL + 1;
    char rec[160];
    while (o < n) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        int k = snprintf(rec, sizeof rec,
                         ",{\"id\":%u,\"user\":\"%s\",\"text\":\"%s %s\",\"price\":%u.%02u,"
                         "\"ts\":%u}",
                         (unsigned)(x % 100000), names[x % 6], words[(x >> 8) % 10],
                         words[(x >> 16) % 10], (unsigned)((x >> 20) % 1000),
                         (unsigned)((x >> 30) % 100), (unsigned)(1765000000 + (x >> 34) % 100000));
        size_t take = (size_t)k < n - o ? (size_t)k : n - o;
        memcpy(out + o, rec, take);
        o += take;
    }
}

/* ---- WebSocket ---- */

/* Queue a masked client frame (control frames: pong, close). */
static void ws_send(struct conn *c, int op, const unsigned char *data, size_t n)
{
    unsigned char h[14];
    size_t hl = 0;
    h[hl++] = (unsigned char)(0x80 | op);
    if (n < 126) {
        h[hl++] = (unsigned char)(0x80 | n);
    } else {
        h[hl++] = 0x80 | 126;
        h[hl++] = (unsigned char)(n >> 8);
        h[hl++] = (unsigned char)n;
    }
    uint32_t mk = (uint32_t)rng_next();
    memcpy(h + hl, &mk, 4);
    const unsigned char *mask = h + hl;
    hl += 4;
    if (n > 65535 || !buf_append(&c->out, h, hl) || !buf_reserve(&c->out, n)) return;
    for (size_t i = 0; i < n; i++)
        c->out.p[c->out.len++] = (char)(data[i] ^ mask[i & 3]);
    conn_flush(c);
}

/* A compressed message (permessage-deflate, no context takeover): inflate
 * it whole with the 00 00 FF FF the sender took off, then deliver it.
 * One stream for the process, reset per message. */
static int ws_inflate_deliver(struct conn *c, const unsigned char *pl, size_t len, uint64_t now)
{
    static z_stream zs;
    static bool ready;
    static unsigned char *out;
    static size_t cap;
    if (!ready) {
        if (inflateInit2(&zs, -15) != Z_OK) return conn_fail(c, "ws: zlib"), -1;
        ready = true;
    }
    inflateReset(&zs);
    static const unsigned char tail[4] = {0, 0, 0xff, 0xff};
    size_t n = 0;
    for (int part = 0; part < 2; part++) {
        zs.next_in = (unsigned char *)(part ? tail : pl);
        zs.avail_in = (uInt)(part ? 4 : len);
        while (zs.avail_in) {
            if (n + 65536 > cap) {
                size_t ncap = cap ? cap * 2 : 1 << 20;
                unsigned char *np = realloc(out, ncap);
                if (!np) return conn_fail(c, "ws: out of memory"), -1;
                out = np;
                cap = ncap;
            }
            zs.next_out = out + n;
            zs.avail_out = (uInt)(cap - n);
            int rc = inflate(&zs, Z_SYNC_FLUSH);
            n = cap - zs.avail_out;
            if (rc != Z_OK && rc != Z_BUF_ERROR && rc != Z_STREAM_END)
                return conn_fail(c, "ws: bad compressed data"), -1;
            if (rc == Z_BUF_ERROR && zs.avail_out) break;
            if (n > MAX_FRAME) return conn_fail(c, "ws: inflated message too large"), -1;
        }
    }
    G.zframes++;
    G.zbytes_in += len;
    G.zbytes_out += n;
    deliver(c, (const char *)out, n, now);
    return 0;
}

/* Parse server frames from c->in. Returns -1 when c was closed. */
static int ws_process(struct conn *c, uint64_t now)
{
    struct buf *in = &c->in;
    for (;;) {
        unsigned char *p = (unsigned char *)in->p + in->off;
        size_t avail = in->len - in->off;
        if (avail < 2) return 0;
        bool fin = p[0] & 0x80, masked = p[1] & 0x80;
        int op = p[0] & 0x0f;
        uint64_t len = p[1] & 0x7f;
        size_t hl = 2;
        bool rsv1 = (p[0] & 0x40) != 0;
        if ((p[0] & 0x30) || (rsv1 && (!G.deflate || op == 0 || op >= 8))) {
            conn_fail(c, "ws: reserved bits set");
            return -1;
        }
        if (len == 126) {
            if (avail < 4) return 0;
            len = ((uint64_t)p[2] << 8) | p[3];
            hl = 4;
        } else if (len == 127) {
            if (avail < 10) return 0;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = (len << 8) | p[2 + i];
            hl = 10;
        }
        if (len > MAX_FRAME) {
            conn_fail(c, "ws: frame of %" PRIu64 " bytes", len);
            return -1;
        }
        size_t mk = hl;
        if (masked) hl += 4;
        if (avail < hl + len) return 0;
        unsigned char *pl = p + hl;
        if (masked)
            for (size_t i = 0; i < len; i++)
                pl[i] ^= p[mk + (i & 3)];
        in->off += hl + (size_t)len;
        switch (op) {
        case 1:
        case 2:
            if (c->ws_frag) {
                conn_fail(c, "ws: new message inside a fragmented one");
                return -1;
            }
            if (rsv1 && !fin) {
                conn_fail(c, "ws: fragmented compressed message (the server sends one frame)");
                return -1;
            }
            if (rsv1) {
                if (ws_inflate_deliver(c, pl, (size_t)len, now) < 0) return -1;
            } else if (fin) {
                deliver(c, (const char *)pl, (size_t)len, now);
            } else {
                c->ws_frag = true;
                buf_reset(&c->body);
                if (!buf_append(&c->body, pl, (size_t)len)) goto too_big;
            }
            break;
        case 0:
            if (!c->ws_frag) {
                conn_fail(c, "ws: continuation without a message");
                return -1;
            }
            if (!buf_append(&c->body, pl, (size_t)len)) goto too_big;
            if (fin) {
                deliver(c, c->body.p + c->body.off, c->body.len - c->body.off, now);
                buf_reset(&c->body);
                c->ws_frag = false;
            }
            break;
        case 8: {
            int code = len >= 2 ? (pl[0] << 8) | pl[1] : 1005;
            ws_send(c, 8, pl, len >= 2 ? 2 : 0);
            conn_fail(c, "ws: server closed with %d", code);
            return -1;
        }
        case 9:
            if (len <= 125) ws_send(c, 10, pl, (size_t)len);
            if (c->state != S_OPEN) return -1;
            break;
        case 10:
            break;
        default:
            conn_fail(c, "ws: opcode %d", op);
            return -1;
        }
    }
too_big:
    conn_fail(c, "ws: message too large");
    return -1;
}

/* ---- SSE ---- */

/* Take the complete lines of c->body; each `data:` line is delivered. */
static void sse_process(struct conn *c, uint64_t now)
{
    struct buf *b = &c->body;
    for (;;) {
        char *p = b->p + b->off;
        size_t avail = b->len - b->off;
        char *nl = avail ? memchr(p, '\n', avail) : NULL;
        if (!nl) break;
        size_t ll = (size_t)(nl - p);
        if (ll && p[ll - 1] == '\r') ll--;
        if (ll >= 5 && memcmp(p, "data:", 5) == 0) {
            const char *v = p + 5;
            size_t vl = ll - 5;
            if (vl && *v == ' ') v++, vl--;
            deliver(c, v, vl, now);
        }
        b->off += (size_t)(nl - p) + 1;
    }
    if (b->off == b->len) buf_reset(b);
}

/* ---- long-poll ---- */

/* A complete poll answer is in c->body: count its messages, keep the
 * resume point, poll again at once. */
static void lp_answer(struct conn *c, uint64_t now)
{
    const char *body = c->body.p + c->body.off;
    size_t bl = c->body.len - c->body.off;
    int st = c->r.status;
    if (st == 200) {
        deliver(c, body, bl, now);
        const char *k = memmem(body, bl, "\"last_id\"", 9);
        if (k) {
            const char *p = k + 9, *end = body + bl;
            while (p < end && (*p == ' ' || *p == ':' || *p == '\t'))
                p++;
            if (p < end && *p == '"') {
                const char *q = memchr(p + 1, '"', (size_t)(end - p - 1));
                if (q) copy_value(c->last_id, sizeof c->last_id, p + 1, (size_t)(q - p - 1));
            } else if (p < end && *p != 'n') {
                const char *q = p;
                while (q < end && *q != ',' && *q != '}' && *q != ' ')
                    q++;
                copy_value(c->last_id, sizeof c->last_id, p, (size_t)(q - p));
            }
        }
    } else if (st != 304 && st != 408 && st != 204) {
        conn_fail(c, "longpoll: status %d", st);
        return;
    }
    bool want_close = c->r.close;
    resp_reset(c);
    if (G.phase == PH_DONE) return;
    if (want_close) {
        conn_reopen(c);
        return;
    }
    sub_queue_request(c);
    conn_flush(c);
}

/* ---- publishers ---- */

/* Pushpin's publish envelope around a message for topic t: one JSON item
 * in the format the subscribers' transport takes, the message as a JSON
 * string (it is ASCII without quotes or backslashes; the topic name is
 * escaped). SSE gets an event of one data line. */
static void pushpin_envelope(uint32_t t, char *pre, size_t pn, char *post, size_t sn)
{
    static const char *const fmt[] = {"ws-message\":{\"content", "http-stream\":{\"content",
                                      "http-response\":{\"body"};
    char name[96], esc[200];
    size_t o = 0;
    topic_name(t, name, sizeof name);
    for (const char *p = name; *p && o + 7 < sizeof esc; p++) {
        if (*p == '"' || *p == '\\')
            esc[o++] = '\\', esc[o++] = *p;
        else if ((unsigned char)*p < 0x20)
            o += (size_t)snprintf(esc + o, sizeof esc - o, "\\u%04x", *p);
        else
            esc[o++] = *p;
    }
    esc[o] = '\0';
    int k = G.kind == K_SSE ? 1 : G.kind == K_LP ? 2 : 0;
    snprintf(pre, pn, "{\"items\":[{\"channel\":\"%s\",\"formats\":{\"%s\":\"%s", esc, fmt[k],
             k == 1 ? "data: " : "");
    snprintf(post, sn, "%s\"}}}]}", k == 1 ? "\\n\\n" : "");
}

static void pub_send(struct conn *c, uint32_t seq)
{
    char path[1024], head[1200], pre[512] = "", post[32] = "";
    path_expand(G.pub_path, seq % G.topics, path, sizeof path);
    if (G.pub_format == PF_PUSHPIN)
        pushpin_envelope(seq % G.topics, pre, sizeof pre, post, sizeof post);
    size_t pl = strlen(pre), sl = strlen(post);
    int hn =
        snprintf(head, sizeof head,
                 "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: %s\r\n"
                 "Content-Length: %zu\r\n\r\n",
                 path, G.host, G.pub_port,
                 G.pub_format == PF_PUSHPIN ? "application/json" : "text/plain", pl + G.size + sl);
    if (hn <= 0 || (size_t)hn >= sizeof head ||
        !buf_reserve(&c->out, (size_t)hn + pl + G.size + sl + 1)) {
        conn_fail(c, "publish request too large");
        return;
    }
    memcpy(c->out.p + c->out.len, head, (size_t)hn);
    c->out.len += (size_t)hn;
    memcpy(c->out.p + c->out.len, pre, pl);
    c->out.len += pl;
    uint64_t now = mono_ns(), stamp = now;
    if (G.rate > 0) {
        /* Rate-limited: latency counts from the message's slot in the
         * schedule, not from when it could be sent.  A message held back
         * by a late answer has been waiting since its slot; counting from
         * the send would leave that wait out (coordinated omission) and
         * favour servers that answer later. */
        uint64_t slot = G.t_pub_start + (uint64_t)((double)seq / G.rate * 1e9);
        if (slot < stamp) stamp = slot;
    }
    char *body = c->out.p + c->out.len;
    snprintf(body, MARK_LEN + 1, MARK "%08x%016" PRIx64, seq, stamp);
    if (G.body_json)
        json_padding(body + MARK_LEN, G.size - MARK_LEN, seq);
    else
        memset(body + MARK_LEN, '.', G.size - MARK_LEN);
    c->out.len += G.size;
    memcpy(c->out.p + c->out.len, post, sl);
    c->out.len += sl;
    unsigned slot = (c->ring_head + c->ring_n) % G.pipeline;
    c->ring_seq[slot] = seq;
    c->ring_t[slot] = now;
    c->ring_n++;
    conn_flush(c);
}

/* The server answered with Connection: close (nginx does so after
 * keepalive_requests): the pipelined requests behind that answer were not
 * processed, so send them again on a new connection. */
static void pub_requeue(struct conn *c)
{
    uint32_t n = c->ring_n, *seqs = xcalloc(n, sizeof *seqs);
    for (uint32_t i = 0; i < n; i++)
        seqs[i] = c->ring_seq[(c->ring_head + i) % G.pipeline];
    c->ring_n = 0;
    conn_reopen(c);
    /* Queued while connecting; on_writable flushes them. */
    for (uint32_t i = 0; i < n && c->state == S_CONNECTING; i++)
        pub_send(c, seqs[i]);
    free(seqs);
}

static void pub_answer(struct conn *c, uint64_t now)
{
    if (!c->ring_n) {
        conn_fail(c, "publish: answer without a request");
        return;
    }
    uint32_t seq = c->ring_seq[c->ring_head];
    uint64_t t = c->ring_t[c->ring_head];
    c->ring_head = (c->ring_head + 1) % G.pipeline;
    c->ring_n--;
    int st = c->r.status;
    if (st >= 200 && st < 300) {
        G.acked++;
        G.pub_ok[seq] = 1;
        G.acked_topic[seq % G.topics]++;
        hist_add(&G.ack, now > t ? now - t : 0);
    } else {
        G.pub_errors++;
        note_error("publish seq %u: status %d", seq, st);
    }
    bool want_close = c->r.close;
    resp_reset(c);
    if (want_close && G.phase != PH_DONE) pub_requeue(c);
}

static void pub_pump(uint64_t now)
{
    if (G.phase != PH_PUBLISH) return;
    while (G.next_seq < G.m) {
        if (G.rate > 0) {
            double allowed = (double)(now - G.t_pub_start) / 1e9 * G.rate + 1;
            if ((double)G.next_seq >= allowed) return;
        }
        struct conn *c = NULL;
        for (uint32_t i = 0; i < G.pubconns; i++) {
            struct conn *k = &G.pubs[(G.pub_rr + i) % G.pubconns];
            if (k->state == S_OPEN && k->ring_n < G.pipeline) {
                c = k;
                G.pub_rr = (G.pub_rr + i + 1) % G.pubconns;
                break;
            }
        }
        if (!c) return;
        pub_send(c, G.next_seq++);
    }
}

/* ---- event handlers ---- */

/* Parse what arrived on c. Returns -1 when c was closed meanwhile. */
static int conn_process(struct conn *c, uint64_t now)
{
    int rc;
    switch (c->kind) {
    case K_WS:
        if (!c->streaming) {
            rc = resp_feed(c);
            if (rc == RF_ERR) goto bad;
            if (rc == RF_MORE) return 0;
            if (c->r.status != 101) {
                conn_fail(c, "ws: status %d", c->r.status);
                return -1;
            }
            c->streaming = true;
            sub_mark_subscribed(c);
        }
        return ws_process(c, now);
    case K_SSE:
        if (!c->streaming) {
            rc = resp_feed(c);
            if (rc == RF_ERR) goto bad;
            if (rc == RF_MORE) return 0;
            if (c->r.status != 200) {
                conn_fail(c, "sse: status %d", c->r.status);
                return -1;
            }
            c->streaming = true;
            sub_mark_subscribed(c);
        }
        rc = resp_feed(c);
        if (rc == RF_ERR) goto bad;
        sse_process(c, now);
        if (rc == RF_DONE) {
            conn_fail(c, "sse: stream ended");
            return -1;
        }
        return 0;
    case K_LP:
    case K_PUB:
        for (;;) {
            rc = resp_feed(c);
            if (rc == RF_ERR) goto bad;
            if (rc == RF_MORE) return 0;
            if (rc == RF_HEAD) {
                if (c->r.phase == RP_EOF) {
                    conn_fail(c, "response without a length");
                    return -1;
                }
                continue;
            }
            int fd = c->fd;
            if (c->kind == K_LP)
                lp_answer(c, now);
            else
                pub_answer(c, now);
            if (c->state != S_OPEN || c->fd != fd) return -1;
        }
    }
    return 0;
bad:
    conn_fail(c, "malformed response");
    return -1;
}

static void on_readable(struct conn *c)
{
    for (;;) {
        if (!buf_reserve(&c->in, 16384)) {
            conn_fail(c, "input buffer limit");
            return;
        }
        ssize_t n = recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len, 0);
        if (n > 0) {
            size_t room = c->in.cap - c->in.len;
            c->in.len += (size_t)n;
            if (conn_process(c, mono_ns()) < 0) return;
            /* A short read drained the socket; with edge triggering, later
             * data (or EOF) raises a new event, so skip the EAGAIN read:
             * it would double the syscalls per delivery. */
            if ((size_t)n < room) return;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n < 0) {
            conn_fail(c, "recv: %s", strerror(errno));
            return;
        }
        /* EOF */
        if (c->kind == K_SSE && c->streaming && c->r.phase == RP_EOF) {
            conn_fail(c, "sse: stream ended");
        } else if ((c->kind == K_LP || c->kind == K_PUB) && c->r.phase == RP_HEAD &&
                   c->in.off == c->in.len && c->subscribed == (c->kind == K_LP)) {
            /* Keep-alive connection closed between requests: reconnect.
             * A publisher's in-flight requests are lost and counted. */
            if (c->kind == K_PUB) {
                G.pub_errors += c->ring_n;
                c->ring_n = 0;
            }
            conn_reopen(c);
        } else {
            conn_fail(c, "connection closed by server");
        }
        return;
    }
}

static void on_writable(struct conn *c)
{
    if (c->state == S_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0) err = errno;
        if (err) {
            conn_fail(c, "connect: %s", strerror(err));
            return;
        }
        c->state = S_OPEN;
        if (c->kind == K_PUB) pub_pump(mono_ns());
    }
    conn_flush(c);
}

/* ---- phases ---- */

static uint64_t expected_deliveries(void)
{
    uint64_t e = 0;
    for (uint32_t t = 0; t < G.topics; t++)
        e += (uint64_t)G.acked_topic[t] * G.subs_per_topic[t];
    return e;
}

static void start_subscriber(uint32_t i)
{
    struct conn *c = &G.subs[i];
    c->idx = i;
    c->topic = i % G.topics;
    c->kind = (uint8_t)G.kind;
    c->fd = -1;
    if (!G.idle) c->seen = xcalloc((G.m + 7) / 8, 1);
    conn_open(c);
}

static bool pubs_open(void)
{
    for (uint32_t i = 0; i < G.pubconns; i++)
        if (G.pubs[i].state != S_OPEN) return false;
    return true;
}

static void check_timeouts(uint64_t now)
{
    uint64_t lim = (uint64_t)(G.connect_timeout * 1e9);
    for (uint32_t i = 0; i < G.started; i++) {
        struct conn *c = &G.subs[i];
        if (!c->subscribed && c->state != S_CLOSED && now - c->t_start > lim)
            conn_fail(c, "no subscription within %.1f s", G.connect_timeout);
    }
    for (uint32_t i = 0; i < G.pubconns; i++) {
        struct conn *c = &G.pubs[i];
        if (c->state == S_CONNECTING && now - c->t_start > lim) conn_fail(c, "connect timeout");
    }
}

static void tick(uint64_t now)
{
    if (G.stop) {
        finish(EXIT_USAGE, "interrupted");
        return;
    }
    if (now >= G.t_deadline) {
        finish(G.phase == PH_SUBSCRIBE ? EXIT_SUBSCRIBE : EXIT_DELIVERY,
               "overall deadline of %.0f s reached", G.deadline);
        return;
    }
    switch (G.phase) {
    case PH_SUBSCRIBE:
        while (G.started < G.n && G.started - G.subscribed - G.sub_failed < G.batch)
            start_subscriber(G.started++);
        if (G.sub_failed) {
            finish(EXIT_SUBSCRIBE, "subscribing failed: %u failed, %u subscribed of %u",
                   G.sub_failed, G.subscribed, G.n);
        } else if (G.subscribed == G.n && (G.idle || pubs_open())) {
            G.t_subscribed = now;
            G.phase = PH_SETTLE;
            G.t_settle_end = now + (uint64_t)(G.settle * 1e9);
        } else if (now >= G.t_sub_deadline) {
            finish(EXIT_SUBSCRIBE, "only %u of %u subscribed within %.0f s", G.subscribed, G.n,
                   G.sub_timeout);
        }
        break;
    case PH_SETTLE:
        if (now < G.t_settle_end) break;
        if (G.idle) {
            G.phase = PH_HOLD;
            G.t_hold_end = now + (uint64_t)(G.hold * 1e9);
            break;
        }
        G.phase = PH_PUBLISH;
        G.cpu_before = cpu_read();
    cpu_read_ns(G.cpuns_before);
        G.ccpu_before = self_cpu();
        G.t_pub_start = mono_ns();
        pub_pump(G.t_pub_start);
        break;
    case PH_PUBLISH:
        pub_pump(now);
        if (G.acked + G.pub_errors >= G.m && G.next_seq >= G.m) {
            G.t_pub_end = now;
            G.phase = PH_DRAIN;
            G.t_drain_end = now + (uint64_t)(G.drain * 1e9);
        }
        break;
    case PH_DRAIN:
        if (G.received >= expected_deliveries() || now >= G.t_drain_end) finish(0, "");
        break;
    case PH_HOLD:
        if (now >= G.t_hold_end) {
            G.mem_after = mem_read();
            finish(0, "");
        }
        break;
    default:
        break;
    }
}

/* ---- report ---- */

static double ms(uint64_t ns)
{
    return (double)ns / 1e6;
}
static double secs(uint64_t a, uint64_t b)
{
    return b > a ? (double)(b - a) / 1e9 : 0;
}

static int report(void)
{
    long tck = sysconf(_SC_CLK_TCK);
    double scpu =
        G.npids ? (double)(G.cpu_after - G.cpu_before) / (double)(tck > 0 ? tck : 100) : -1;
    double ccpu = G.ccpu_after - G.ccpu_before;
    /* The same over the same span from schedstat, in ns, and per pid
     * ("pid:seconds,..."), to tell the processes of a system apart. */
    double cpu_ns_total = G.npids ? 0 : -1;
    char by_pid[MAX_PIDS * 24] = "";
    size_t bl = 0;
    for (int i = 0; i < G.npids; i++) {
        double sec = (double)(G.cpuns_after[i] - G.cpuns_before[i]) / 1e9;
        cpu_ns_total += sec;
        int w = snprintf(by_pid + bl, sizeof by_pid - bl, "%s%d:%.6f", i ? "," : "", G.pids[i], sec);
        if (w > 0 && (size_t)w < sizeof by_pid - bl) bl += (size_t)w;
    }
    int code = G.fail_code;
    FILE *hout = G.json ? stderr : stdout;

    if (G.idle) {
        uint32_t open = 0;
        for (uint32_t i = 0; i < G.started; i++)
            if (G.subs[i].state == S_OPEN) open++;
        if (!code && open < G.n) {
            code = EXIT_DELIVERY;
            snprintf(G.fail_reason, sizeof G.fail_reason, "%u of %u connections dropped",
                     G.n - open, G.n);
        }
        double per = G.subscribed ? 1024.0 / G.subscribed : 0;
        double rss = (double)(G.mem_after.rss_kb - G.mem_before.rss_kb) * per;
        double pss = (double)(G.mem_after.pss_kb - G.mem_before.pss_kb) * per;
        double pd = (double)(G.mem_after.pdirty_kb - G.mem_before.pdirty_kb) * per;
        fprintf(hout, "loadgen idle %s: %u connections to %s:%d\n", kind_names[G.kind], G.n, G.host,
                G.port);
        fprintf(hout, "  subscribed    %u/%u in %.2f s, %u open after %.1f s hold\n", G.subscribed,
                G.n, secs(G.t0, G.t_subscribed), open, G.hold);
        if (G.npids && G.phase == PH_DONE && G.mem_after.rss_kb) {
            fprintf(hout, "  server RSS    %ld -> %ld kB: %.0f B/conn\n", G.mem_before.rss_kb,
                    G.mem_after.rss_kb, rss);
            fprintf(hout,
                    "  server PSS    %ld -> %ld kB: %.0f B/conn (Private_Dirty %.0f B/conn)\n",
                    G.mem_before.pss_kb, G.mem_after.pss_kb, pss, pd);
        }
        if (G.npids) fprintf(hout, "  server cpu    %.2f s\n", scpu);
        fprintf(hout, "  result        %s%s\n", code ? "FAIL: " : "OK", code ? G.fail_reason : "");
        if (G.first_error[0]) fprintf(hout, "  first error   %s\n", G.first_error);
        if (G.json)
            printf("{\"mode\":\"idle\",\"transport\":\"%s\",\"conns\":%u,\"subscribed\":%u,"
                   "\"open\":%u,\"connect_s\":%.3f,\"rss_before_kb\":%ld,\"rss_after_kb\":%ld,"
                   "\"rss_per_conn_b\":%.0f,\"pss_per_conn_b\":%.0f,"
                   "\"private_dirty_per_conn_b\":%.0f,\"server_cpu_s\":%.3f,\"status\":%d,"
                   "\"reason\":\"%s\"}\n",
                   kind_names[G.kind], G.n, G.subscribed, open, secs(G.t0, G.t_subscribed),
                   G.mem_before.rss_kb, G.mem_after.rss_kb, rss, pss, pd, scpu, code,
                   json_safe(code ? G.fail_reason : ""));
        return code;
    }

    uint64_t expected = expected_deliveries(), lost = 0;
    for (uint32_t i = 0; i < G.started; i++) {
        struct conn *c = &G.subs[i];
        if (!c->subscribed || !c->seen) continue;
        for (uint32_t s = c->topic; s < G.m; s += G.topics)
            if (G.pub_ok[s] && !(c->seen[s >> 3] & (1u << (s & 7)))) lost++;
    }
    double dsec = secs(G.t_pub_start, G.t_last_delivery);
    double psec = secs(G.t_pub_start, G.t_pub_end);
    double rate = dsec > 0 ? (double)G.received / dsec : 0;
    if (!code && G.pub_errors) {
        code = EXIT_PUBLISH;
        snprintf(G.fail_reason, sizeof G.fail_reason, "%u publish errors", G.pub_errors);
    }
    if (!code && (lost || G.dups || G.sub_dropped || G.wrong_topic)) {
        code = EXIT_DELIVERY;
        snprintf(G.fail_reason, sizeof G.fail_reason,
                 "%" PRIu64 " lost, %" PRIu64 " duplicates, %u subscribers dropped, %" PRIu64
                 " on a wrong topic",
                 lost, G.dups, G.sub_dropped, G.wrong_topic);
    }
    uint64_t p50 = hist_pct(&G.lat, 0.50), p99 = hist_pct(&G.lat, 0.99);
    fprintf(hout,
            "loadgen %s: %u subscribers on %u topic(s) at %s:%d, %u msgs x %u B, "
            "%u pub conn(s) x %u in flight, rate %s\n",
            kind_names[G.kind], G.n, G.topics, G.host, G.port, G.m, G.size, G.pubconns, G.pipeline,
            G.rate > 0 ? "limited" : "unlimited");
    if (G.rate > 0) fprintf(hout, "  rate limit    %.0f msgs/s\n", G.rate);
    /* Only with --pub-port/--pub-format, so that other runs print (and
     * scripts parse) what they always did. */
    char pubinfo[80] = "";
    if (G.pub_port != G.port || G.pub_format != PF_RAW) {
        const char *f = G.pub_format == PF_PUSHPIN ? "pushpin" : "raw";
        fprintf(hout, "  publishing    to %s:%d, %s format\n", G.host, G.pub_port, f);
        snprintf(pubinfo, sizeof pubinfo, ",\"pub_port\":%d,\"pub_format\":\"%s\"", G.pub_port, f);
    }
    fprintf(hout, "  subscribed    %u/%u in %.2f s\n", G.subscribed, G.n,
            secs(G.t0, G.t_subscribed));
    fprintf(hout,
            "  published     %u acked, %u errors in %.2f s (%.0f/s); ack p50 %.3f ms, "
            "p99 %.3f ms\n",
            G.acked, G.pub_errors, psec, psec > 0 ? G.acked / psec : 0, ms(hist_pct(&G.ack, 0.5)),
            ms(hist_pct(&G.ack, 0.99)));
    fprintf(hout, "  deliveries    %" PRIu64 "/%" PRIu64 " in %.2f s: %.0f/s\n", G.received,
            expected, dsec, rate);
    fprintf(hout, "  latency       p50 %.3f ms, p99 %.3f ms, max %.3f ms\n", ms(p50), ms(p99),
            ms(G.lat.max));
    fprintf(hout,
            "  lost %" PRIu64 ", duplicates %" PRIu64 ", dropped subscribers %u, unparsed %" PRIu64
            "\n",
            lost, G.dups, G.sub_dropped, G.bogus);
    if (G.kind == K_LP)
        fprintf(hout, "  polls         %" PRIu64 " (reconnects %" PRIu64 ")\n", G.lp_polls,
                G.reopens_total);
    if (G.npids) fprintf(hout, "  server cpu    %.2f s\n", scpu);
    if (G.deflate)
        fprintf(hout,
                "  compressed    %" PRIu64 " frames, %" PRIu64 " -> %" PRIu64 " B inflated\n",
                G.zframes, G.zbytes_in, G.zbytes_out);
    fprintf(hout, "  loadgen cpu   %.2f s; elapsed %.2f s\n", ccpu, secs(G.t0, G.t_end));
    fprintf(hout, "  result        %s%s\n", code ? "FAIL: " : "OK", code ? G.fail_reason : "");
    if (G.first_error[0]) fprintf(hout, "  first error   %s\n", G.first_error);
    if (G.json)
        printf("{\"mode\":\"pubsub\",\"transport\":\"%s\",\"subs\":%u,\"topics\":%u,"
               "\"messages\":%u,\"size\":%u,\"pub_conns\":%u,\"pipeline\":%u,\"rate\":%.0f%s,"
               "\"subscribed\":%u,\"acked\":%u,\"pub_errors\":%u,\"expected\":%" PRIu64 ","
               "\"received\":%" PRIu64 ",\"lost\":%" PRIu64 ",\"dups\":%" PRIu64 ","
               "\"dropped\":%u,\"deliveries_per_s\":%.0f,\"publish_s\":%.3f,"
               "\"deliver_s\":%.3f,\"lat_p50_ms\":%.3f,\"lat_p99_ms\":%.3f,"
               "\"lat_max_ms\":%.3f,\"ack_p50_ms\":%.3f,\"ack_p99_ms\":%.3f,"
               "\"server_cpu_s\":%.3f,\"client_cpu_s\":%.3f,\"elapsed_s\":%.3f,"
               "\"server_cpu_ns_s\":%.6f,\"server_cpu_by_pid\":\"%s\","
               "\"status\":%d,\"reason\":\"%s\"}\n",
               kind_names[G.kind], G.n, G.topics, G.m, G.size, G.pubconns, G.pipeline, G.rate,
               pubinfo, G.subscribed, G.acked, G.pub_errors, expected, G.received, lost, G.dups,
               G.sub_dropped, rate, psec, dsec, ms(p50), ms(p99), ms(G.lat.max),
               ms(hist_pct(&G.ack, 0.5)), ms(hist_pct(&G.ack, 0.99)), scpu, ccpu,
               secs(G.t0, G.t_end), cpu_ns_total, by_pid, code,
               json_safe(code ? G.fail_reason : ""));
    return code;
}

/* ---- setup ---- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: loadgen [options]\n"
            "  -H, --host ADDR          server address (127.0.0.1)\n"
            "  -p, --port PORT          server port (8080)\n"
            "  -k, --kind ws|sse|longpoll  subscriber transport (ws)\n"
            "  -I, --idle               idle mode: hold N connections, report memory\n"
            "  -n, --subs N             subscribers (100)\n"
            "  -T, --topics T           topics; subscriber i uses topic i%%T (1)\n"
            "      --topic-prefix STR   topic name prefix (unique per run)\n"
            "  -S, --sub-path TMPL      subscribe path, {topic} expanded (/topics/{topic})\n"
            "  -P, --pub-path TMPL      publish path (/topics/{topic})\n"
            "      --pub-port PORT      publish to this port (the -p port)\n"
            "      --sub-port2 PORT     half the subscribers of each topic on this port\n"
            "                           (subscriber i on it when (i / T) is odd)\n"
            "      --pub-format F       raw: the message is the body (default); pushpin: a\n"
            "                           Pushpin JSON item for the -k transport, one\n"
            "                           connection per publish in flight (-c x -K of them),\n"
            "                           --batch 32 unless given\n"
            "  -m, --messages M         messages to publish (1000); message i goes to topic i%%T\n"
            "  -s, --size S             message size in bytes, >= %d (64)\n"
            "  -c, --pub-conns P        keep-alive publisher connections (1)\n"
            "  -K, --pipeline K         requests in flight per publisher connection (1)\n"
            "  -r, --rate R             publish at most R msgs/s (0: as fast as acked); latency\n"
            "                           then counts from each message's slot in the schedule\n"
            "      --since-param NAME   long-poll resume query parameter (since; '' = none)\n"
            "      --batch B            connection attempts in flight (256; pushpin 32)\n"
            "      --connect-timeout S  per subscriber, until subscribed (10)\n"
            "      --sub-timeout S      all subscribers (60)\n"
            "      --settle S           pause after subscribing (0.2; long-poll 1)\n"
            "      --drain S            wait for deliveries after the last ack (10)\n"
            "      --hold S             idle mode: hold time (5)\n"
            "      --deadline S         overall bound (300)\n"
            "      --pid PID[,PID...]   server processes: CPU time and memory from /proc\n"
            "      --json               one JSON line on stdout (summary goes to stderr)\n"
            "      --deflate            WebSocket: offer permessage-deflate, inflate what comes\n"
            "      --body dots|json     message padding: '.' (default) or JSON records\n"
            "exit status: 0 ok, 1 usage/local error, 2 subscribe phase failed,\n"
            "             3 publish failed, 4 lost/duplicate messages or dropped subscribers\n",
            MARK_LEN);
}

static void on_signal(int sig)
{
    (void)sig;
    G.stop = 1;
}

static int parse_opts(int argc, char **argv)
{
    enum {
        O_PREFIX = 256,
        O_SINCE,
        O_BATCH,
        O_CTO,
        O_STO,
        O_SETTLE,
        O_DRAIN,
        O_HOLD,
        O_DL,
        O_PID,
        O_JSON,
        O_PUBPORT,
        O_SUBPORT2,
        O_PUBFMT,
        O_DEFLATE,
        O_BODY
    };
    static const struct option lo[] = {{"host", 1, 0, 'H'},
                                       {"port", 1, 0, 'p'},
                                       {"kind", 1, 0, 'k'},
                                       {"idle", 0, 0, 'I'},
                                       {"subs", 1, 0, 'n'},
                                       {"topics", 1, 0, 'T'},
                                       {"topic-prefix", 1, 0, O_PREFIX},
                                       {"sub-path", 1, 0, 'S'},
                                       {"pub-path", 1, 0, 'P'},
                                       {"messages", 1, 0, 'm'},
                                       {"size", 1, 0, 's'},
                                       {"pub-conns", 1, 0, 'c'},
                                       {"pipeline", 1, 0, 'K'},
                                       {"rate", 1, 0, 'r'},
                                       {"since-param", 1, 0, O_SINCE},
                                       {"batch", 1, 0, O_BATCH},
                                       {"connect-timeout", 1, 0, O_CTO},
                                       {"sub-timeout", 1, 0, O_STO},
                                       {"settle", 1, 0, O_SETTLE},
                                       {"drain", 1, 0, O_DRAIN},
                                       {"hold", 1, 0, O_HOLD},
                                       {"deadline", 1, 0, O_DL},
                                       {"pid", 1, 0, O_PID},
                                       {"json", 0, 0, O_JSON},
                                       {"pub-port", 1, 0, O_PUBPORT},
                                       {"sub-port2", 1, 0, O_SUBPORT2},
                                       {"pub-format", 1, 0, O_PUBFMT},
                                       {"deflate", 0, 0, O_DEFLATE},
                                       {"body", 1, 0, O_BODY},
                                       {"help", 0, 0, 'h'},
                                       {0, 0, 0, 0}};
    snprintf(G.host, sizeof G.host, "127.0.0.1");
    G.port = 8080;
    G.kind = K_WS;
    G.n = 100;
    G.topics = 1;
    G.m = 1000;
    G.size = 64;
    G.pubconns = 1;
    G.pipeline = 1;
    G.batch = 256;
    G.settle = -1;
    G.drain = 10;
    G.hold = 5;
    G.deadline = 300;
    G.connect_timeout = 10;
    G.sub_timeout = 60;
    snprintf(G.sub_path, sizeof G.sub_path, "/topics/{topic}");
    snprintf(G.pub_path, sizeof G.pub_path, "/topics/{topic}");
    snprintf(G.since_param, sizeof G.since_param, "since");
    int o;
    bool batch_set = false;
    while ((o = getopt_long(argc, argv, "H:p:k:In:T:S:P:m:s:c:K:r:h", lo, NULL)) != -1) {
        switch (o) {
        case 'H':
            snprintf(G.host, sizeof G.host, "%s", optarg);
            break;
        case 'p':
            G.port = atoi(optarg);
            break;
        case 'k':
            if (!strcmp(optarg, "ws"))
                G.kind = K_WS;
            else if (!strcmp(optarg, "sse"))
                G.kind = K_SSE;
            else if (!strcmp(optarg, "longpoll") || !strcmp(optarg, "lp"))
                G.kind = K_LP;
            else
                return -1;
            break;
        case 'I':
            G.idle = true;
            break;
        case 'n':
            G.n = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'T':
            G.topics = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case O_PREFIX:
            snprintf(G.prefix, sizeof G.prefix, "%s", optarg);
            break;
        case 'S':
            snprintf(G.sub_path, sizeof G.sub_path, "%s", optarg);
            break;
        case 'P':
            snprintf(G.pub_path, sizeof G.pub_path, "%s", optarg);
            break;
        case 'm':
            G.m = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 's':
            G.size = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'c':
            G.pubconns = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'K':
            G.pipeline = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'r':
            G.rate = atof(optarg);
            break;
        case O_SINCE:
            snprintf(G.since_param, sizeof G.since_param, "%s", optarg);
            break;
        case O_BATCH:
            G.batch = (uint32_t)strtoul(optarg, NULL, 10);
            batch_set = true;
            break;
        case O_CTO:
            G.connect_timeout = atof(optarg);
            break;
        case O_STO:
            G.sub_timeout = atof(optarg);
            break;
        case O_SETTLE:
            G.settle = atof(optarg);
            break;
        case O_DRAIN:
            G.drain = atof(optarg);
            break;
        case O_HOLD:
            G.hold = atof(optarg);
            break;
        case O_DL:
            G.deadline = atof(optarg);
            break;
        case O_PID:
            for (char *s = optarg; *s && G.npids < MAX_PIDS;) {
                char *e;
                long v = strtol(s, &e, 10);
                if (e == s || v <= 0) return -1;
                G.pids[G.npids++] = (int)v;
                s = *e == ',' ? e + 1 : e;
            }
            break;
        case O_JSON:
            G.json = true;
            break;
        case O_PUBPORT:
            G.pub_port = atoi(optarg);
            if (G.pub_port <= 0 || G.pub_port > 65535) return -1;
            break;
        case O_SUBPORT2:
            G.sub_port2 = atoi(optarg);
            if (G.sub_port2 <= 0 || G.sub_port2 > 65535) return -1;
            break;
        case O_PUBFMT:
            if (!strcmp(optarg, "raw"))
                G.pub_format = PF_RAW;
            else if (!strcmp(optarg, "pushpin"))
                G.pub_format = PF_PUSHPIN;
            else
                return -1;
            break;
        case O_DEFLATE:
            G.deflate = true;
            break;
        case O_BODY:
            if (!strcmp(optarg, "json"))
                G.body_json = true;
            else if (strcmp(optarg, "dots"))
                return -1;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            return -1;
        }
    }
    if (optind != argc) return -1;
    if (G.port <= 0 || G.port > 65535 || !G.n || !G.topics || G.topics > G.n || !G.pubconns ||
        !G.pipeline || G.pipeline > 4096 || G.pubconns > 256 || !G.batch)
        return -1;
    if (!G.idle && (!G.m || G.size < MARK_LEN || G.size > (1u << 24))) return -1;
    if (G.idle && G.kind == K_LP) {
        fprintf(stderr, "loadgen: idle mode takes ws or sse\n");
        return -1;
    }
    if (G.settle < 0) G.settle = G.kind == K_LP ? 1.0 : 0.2;
    if (!G.pub_port) G.pub_port = G.port;
    /* Pushpin's proxy queues at most 100 requests towards its origin (zhttp
     * client OUT_HWM) and answers 502 beyond; 64 attempts in flight still
     * met it now and then at 10,000 subscribers: subscribe in waves of 32. */
    if (G.pub_format == PF_PUSHPIN && !batch_set) G.batch = 32;
    if (G.pub_format == PF_PUSHPIN && G.pipeline > 1) {
        /* Pushpin's publish server closes the connection after each answer
         * and refuses pipelined requests: K requests in flight on one
         * connection become K connections with one each. */
        if ((uint64_t)G.pubconns * G.pipeline > 4096) {
            fprintf(stderr, "loadgen: --pub-format pushpin: -c x -K above 4096\n");
            return -1;
        }
        G.pubconns *= G.pipeline;
        G.pipeline = 1;
    }
    if (G.idle) G.pubconns = 0; /* no publishers: every pubs loop is empty */
    if (!G.idle && (uint64_t)G.n * ((G.m + 7) / 8) > (2ull << 30)) {
        fprintf(stderr, "loadgen: N x M too large for the per-subscriber bitmaps\n");
        return -1;
    }
    return 0;
}

static int setup_one_addr(int port, struct sockaddr_storage *addr, socklen_t *len)
{
    struct sockaddr_in *a4 = (struct sockaddr_in *)addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)addr;
    memset(addr, 0, sizeof *addr);
    if (inet_pton(AF_INET, G.host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof *a4;
        return 0;
    }
    if (inet_pton(AF_INET6, G.host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof *a6;
        return 0;
    }
    fprintf(stderr, "loadgen: --host takes a numeric address, not '%s'\n", G.host);
    return -1;
}

static int setup_addr(void)
{
    if (setup_one_addr(G.port, &G.addr, &G.addrlen) < 0) return -1;
    if (G.sub_port2 && setup_one_addr(G.sub_port2, &G.addr2, &G.addrlen2) < 0) return -1;
    return setup_one_addr(G.pub_port, &G.pub_addr, &G.pub_addrlen);
}

static int raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
    rlim_t need = (rlim_t)G.n + G.pubconns + 64;
    if (rl.rlim_cur < need) {
        rl.rlim_cur =
            rl.rlim_max == RLIM_INFINITY || rl.rlim_max > need * 2 ? need * 2 : rl.rlim_max;
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
            rl.rlim_max = need;
            rl.rlim_cur = need;
        }
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < need) {
        fprintf(stderr, "loadgen: RLIMIT_NOFILE is %lu, %lu needed\n", (unsigned long)rl.rlim_cur,
                (unsigned long)need);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (parse_opts(argc, argv) < 0) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (setup_addr() < 0 || raise_nofile() < 0) return EXIT_USAGE;
    G.rng = (uint64_t)mono_ns() ^ ((uint64_t)getpid() << 32) ^ 0x9E3779B97F4A7C15ull;
    if (!G.prefix[0]) {
        /* Fresh topics per run: a server's retained backlog from an earlier
         * run cannot leak into this one. */
        snprintf(G.prefix, sizeof G.prefix, "lg%x%05x-", (unsigned)getpid(),
                 (unsigned)(rng_next() & 0xfffff));
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    G.nfd = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1u << 22) ? (1u << 22) : rl.rlim_cur;
    G.byfd = xcalloc(G.nfd, sizeof *G.byfd);
    G.ep = epoll_create1(EPOLL_CLOEXEC);
    if (G.ep < 0) {
        perror("loadgen: epoll_create1");
        return EXIT_USAGE;
    }
    G.subs = xcalloc(G.n, sizeof *G.subs);
    G.subs_per_topic = xcalloc(G.topics, sizeof *G.subs_per_topic);
    G.acked_topic = xcalloc(G.topics, sizeof *G.acked_topic);
    if (!G.idle) {
        G.pub_ok = xcalloc(G.m, 1);
        G.pubs = xcalloc(G.pubconns, sizeof *G.pubs);
    }
    G.mem_before = mem_read();
    G.t0 = mono_ns();
    G.t_deadline = G.t0 + (uint64_t)(G.deadline * 1e9);
    G.t_sub_deadline = G.t0 + (uint64_t)(G.sub_timeout * 1e9);
    /* Re-read when publishing starts; this covers runs that fail before. */
    G.cpu_before = cpu_read();
    cpu_read_ns(G.cpuns_before);
    G.ccpu_before = self_cpu();
    for (uint32_t i = 0; !G.idle && i < G.pubconns; i++) {
        struct conn *c = &G.pubs[i];
        c->kind = K_PUB;
        c->idx = i;
        c->fd = -1;
        c->ring_seq = xcalloc(G.pipeline, sizeof *c->ring_seq);
        c->ring_t = xcalloc(G.pipeline, sizeof *c->ring_t);
        conn_open(c);
    }

    struct epoll_event evs[512];
    uint64_t last_scan = G.t0;
    while (G.phase != PH_DONE) {
        int timeout = G.phase == PH_PUBLISH && G.rate > 0 ? 1 : 10;
        int k = epoll_wait(G.ep, evs, 512, timeout);
        if (k < 0 && errno != EINTR) {
            perror("loadgen: epoll_wait");
            finish(EXIT_USAGE, "epoll_wait failed");
            break;
        }
        for (int i = 0; i < k; i++) {
            uint64_t tag = evs[i].data.u64;
            uint32_t fd = (uint32_t)tag, e = evs[i].events;
            struct conn *c = fd < G.nfd ? G.byfd[fd] : NULL;
            if (!c || c->gen != (uint32_t)(tag >> 32) || c->state == S_CLOSED) continue;
            if (e & EPOLLOUT) on_writable(c);
            if (c->state == S_CLOSED) continue;
            if (e & (EPOLLIN | EPOLLHUP | EPOLLRDHUP | EPOLLERR)) {
                if (c->state == S_CONNECTING && (e & (EPOLLERR | EPOLLHUP))) {
                    on_writable(c); /* reports the connect error */
                    continue;
                }
                on_readable(c);
            }
        }
        uint64_t now = mono_ns();
        if (now - last_scan > 100000000u) {
            last_scan = now;
            check_timeouts(now);
        }
        tick(now);
    }
    int code = report();
    for (uint32_t i = 0; i < G.started; i++) {
        conn_close_fd(&G.subs[i]);
        free(G.subs[i].in.p);
        free(G.subs[i].out.p);
        free(G.subs[i].body.p);
        free(G.subs[i].seen);
    }
    for (uint32_t i = 0; !G.idle && i < G.pubconns; i++) {
        conn_close_fd(&G.pubs[i]);
        free(G.pubs[i].in.p);
        free(G.pubs[i].out.p);
        free(G.pubs[i].body.p);
        free(G.pubs[i].ring_seq);
        free(G.pubs[i].ring_t);
    }
    free(G.subs);
    free(G.pubs);
    free(G.pub_ok);
    free(G.subs_per_topic);
    free(G.acked_topic);
    free(G.byfd);
    close(G.ep);
    return code;
}
