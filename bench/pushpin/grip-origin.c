/*
 * bench/pushpin/grip-origin.c: the GRIP origin behind the benchmark's Pushpin.
 *
 * Pushpin is a proxy: it holds the subscribers' connections, but only after
 * an origin server told it, per request, what to do with them. This is that
 * origin, as small as the benchmark allows: one thread, one epoll loop,
 * level-triggered, blocking nothing, libc only. It answers what Pushpin's
 * proxy (through zurl) forwards to it:
 *
 *   GET /healthz            200 "ok" (passed through to the client)
 *   GET /sub/{topic}        SSE: 200 text/event-stream with Grip-Hold:
 *                           stream and Grip-Channel: {topic}; Pushpin keeps
 *                           the client's response open and appends what is
 *                           published (format "http-stream")
 *   POST /sub/{topic}       WebSocket-over-HTTP (the route has over_http):
 *                           an OPEN event is accepted with the "grip"
 *                           extension and a control message subscribing the
 *                           connection to {topic} (format "ws-message");
 *                           CLOSE is echoed, other events get an empty answer
 *   GET /lp/{topic}         long-poll: Grip-Hold: response, the held answer is
 *                           what is published next (format "http-response")
 *
 * The origin sees traffic only while subscribers connect; publishing goes
 * from the load generator to Pushpin's handler directly, so this server's
 * speed does not enter the delivery figures. Requests are HTTP/1.1 with
 * keep-alive and pipelining, bodies by Content-Length or chunked. Every
 * buffer is bounded; a malformed request closes its connection.
 *
 * Functions carry the prefix org_. usage: grip-origin [-l ADDR] -p PORT
 */
#define _GNU_SOURCE /* memmem, accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_IN (1u << 20) /* a request (head + body) must fit */
#define MAX_TOPIC 200

struct oconn {
    int fd;
    bool want_out; /* EPOLLOUT registered */
    bool close_after;
    char *in, *out;
    size_t in_len, in_cap, out_len, out_off, out_cap;
};

static struct {
    int ep, lfd;
    struct oconn **byfd;
    size_t nfd;
    volatile sig_atomic_t stop;
    unsigned long requests;
} O;

static void org_on_signal(int sig)
{
    (void)sig;
    O.stop = 1;
}

static bool org_grow(char **p, size_t *cap, size_t need)
{
    if (need <= *cap) return true;
    size_t c = *cap ? *cap : 4096;
    while (c < need)
        c *= 2;
    if (c > 2 * (size_t)MAX_IN) return false;
    char *n = realloc(*p, c);
    if (!n) return false;
    *p = n;
    *cap = c;
    return true;
}

static bool org_out_add(struct oconn *c, const char *data, size_t n)
{
    if (!org_grow(&c->out, &c->out_cap, c->out_len + n)) return false;
    memcpy(c->out + c->out_len, data, n);
    c->out_len += n;
    return true;
}

static void org_close(struct oconn *c)
{
    epoll_ctl(O.ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    O.byfd[c->fd] = NULL;
    free(c->in);
    free(c->out);
    free(c);
}

/* Write what is queued; keep EPOLLOUT registered only while something is
 * left. Returns -1 when c was closed. */
static int org_flush(struct oconn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w > 0) {
            c->out_off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        org_close(c);
        return -1;
    }
    bool pending = c->out_off < c->out_len;
    if (!pending) {
        c->out_off = c->out_len = 0;
        if (c->close_after) {
            org_close(c);
            return -1;
        }
    }
    if (pending != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (pending ? EPOLLOUT : 0), .data.fd = c->fd};
        if (epoll_ctl(O.ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
            org_close(c);
            return -1;
        }
        c->want_out = pending;
    }
    return 0;
}

/* Queue a whole response. extra: more header lines, each ending in CRLF. */
static bool org_respond(struct oconn *c, int status, const char *reason, const char *extra,
                        const char *body, size_t blen)
{
    char head[1024];
    int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\n%sContent-Length: %zu\r\n%s\r\n", status,
                     reason, extra, blen, c->close_after ? "Connection: close\r\n" : "");
    if (n <= 0 || (size_t)n >= sizeof head) return false;
    return org_out_add(c, head, (size_t)n) && org_out_add(c, body, blen);
}

/* The topic of "/PREFIX/{topic}[?query]" into out; false if target does not
 * start with prefix or the name has characters unsafe in a header. */
static bool org_topic(const char *target, const char *prefix, char *out, size_t n)
{
    size_t pl = strlen(prefix), i = 0;
    if (strncmp(target, prefix, pl) != 0) return false;
    for (const char *p = target + pl; *p && *p != '?'; p++) {
        char ch = *p;
        bool ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                  (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.' || ch == ':';
        if (!ok || i + 1 >= n) return false;
        out[i++] = ch;
    }
    out[i] = '\0';
    return i > 0;
}

/* WebSocket-over-HTTP: the body is a list of events, each "NAME\r\n" or
 * "NAME HEXLEN\r\nCONTENT\r\n". Returns false on a malformed body. */
static bool org_ws_events(struct oconn *c, const char *topic, const char *body, size_t blen)
{
    bool open = false;
    char out[512];
    size_t on = 0;
    const char *p = body, *end = body + blen;
    while (p < end) {
        const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (!eol) return false;
        const char *sp = memchr(p, ' ', (size_t)(eol - p));
        size_t name_len = (size_t)((sp ? sp : eol) - p), clen = 0;
        if (sp) {
            char *e;
            unsigned long v = strtoul(sp + 1, &e, 16);
            if (e != eol || v > (unsigned long)(end - eol)) return false;
            clen = v;
        }
        const char *content = eol + 2;
        if (sp && (size_t)(end - content) < clen + 2) return false;
        if (name_len == 4 && memcmp(p, "OPEN", 4) == 0) {
            open = true;
        } else if (name_len == 5 && memcmp(p, "CLOSE", 5) == 0 && on == 0) {
            /* Agree to the close, with the client's code. */
            int k = snprintf(out, sizeof out, "CLOSE %zx\r\n", clen > 2 ? (size_t)2 : clen);
            memcpy(out + k, content, clen > 2 ? 2 : clen);
            on = (size_t)k + (clen > 2 ? 2 : clen);
            memcpy(out + on, "\r\n", 2);
            on += 2;
        }
        p = sp ? content + clen + 2 : content;
    }
    const char *hdrs = "Content-Type: application/websocket-events\r\n";
    if (open) {
        char msg[300];
        int ml = snprintf(msg, sizeof msg, "c:{\"type\":\"subscribe\",\"channel\":\"%s\"}", topic);
        on = (size_t)snprintf(out, sizeof out, "OPEN\r\nTEXT %x\r\n%s\r\n", ml, msg);
        hdrs = "Content-Type: application/websocket-events\r\nSec-WebSocket-Extensions: grip\r\n";
    }
    return org_respond(c, 200, "OK", hdrs, out, on);
}

/* One complete request: head (a C string, without the blank line) and body. */
static bool org_handle(struct oconn *c, const char *head, const char *body, size_t blen, bool ws)
{
    char method[16], target[512], topic[MAX_TOPIC + 1], extra[512];
    if (sscanf(head, "%15s %511s", method, target) != 2) return false;
    O.requests++;
    if (strcmp(target, "/healthz") == 0)
        return org_respond(c, 200, "OK", "Content-Type: text/plain\r\n", "ok\n", 3);
    if (org_topic(target, "/sub/", topic, sizeof topic)) {
        if (ws) return org_ws_events(c, topic, body, blen);
        if (strcmp(method, "GET") != 0) return org_respond(c, 405, "Method Not Allowed", "", "", 0);
        snprintf(extra, sizeof extra,
                 "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                 "Grip-Hold: stream\r\nGrip-Channel: %s\r\n",
                 topic);
        return org_respond(c, 200, "OK", extra, "", 0);
    }
    if (org_topic(target, "/lp/", topic, sizeof topic) && strcmp(method, "GET") == 0) {
        snprintf(extra, sizeof extra,
                 "Content-Type: application/json\r\nGrip-Hold: response\r\n"
                 "Grip-Channel: %s\r\nGrip-Timeout: 30\r\n",
                 topic);
        return org_respond(c, 200, "OK", extra, "{\"messages\":[]}\n", 16);
    }
    return org_respond(c, 404, "Not Found", "Content-Type: text/plain\r\n", "not found\n", 10);
}

static bool org_header_is(const char *line, size_t n, const char *name, const char **val,
                          size_t *vl)
{
    size_t k = strlen(name);
    if (n <= k || line[k] != ':' || strncasecmp(line, name, k) != 0) return false;
    const char *v = line + k + 1, *e = line + n;
    while (v < e && (*v == ' ' || *v == '\t'))
        v++;
    while (e > v && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
        e--;
    *val = v;
    *vl = (size_t)(e - v);
    return true;
}

/* Decode a chunked body in place at b (n bytes available). Returns the
 * bytes consumed from b (through the final CRLF), 0 if incomplete, -1 if
 * malformed; *out_len gets the decoded length (decoded data starts at b). */
static long org_chunked_decode(char *b, size_t n, size_t *out_len)
{
    size_t r = 0, w = 0;
    for (;;) {
        char *eol = memmem(b + r, n - r, "\r\n", 2);
        if (!eol) return n - r > 32 ? -1 : 0;
        char *e;
        unsigned long sz = strtoul(b + r, &e, 16);
        if (e == b + r || sz > MAX_IN) return -1;
        r = (size_t)(eol - b) + 2;
        if (sz == 0) {
            /* Trailers (none expected) end with an empty line. */
            char *end = memmem(b + r, n - r, "\r\n", 2);
            if (!end) return 0;
            if (end != b + r) return -1;
            *out_len = w;
            return (long)(r + 2);
        }
        if (n - r < sz + 2) return 0;
        memmove(b + w, b + r, sz);
        w += sz;
        r += sz;
        if (b[r] != '\r' || b[r + 1] != '\n') return -1;
        r += 2;
    }
}

/* The blank line ending a request head in p[0, n), or NULL. (A loop, not
 * memmem: gcc 12 with -fsanitize mistakes p for a null argument there.) */
static char *org_head_end(char *p, size_t n)
{
    for (size_t i = 0; i + 4 <= n; i++)
        if (p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' && p[i + 3] == '\n') return p + i;
    return NULL;
}

/* Handle every complete request in c->in. Returns false to drop c. */
static bool org_parse(struct oconn *c)
{
    size_t off = 0;
    char *base = c->in; /* org_handle() appends to c->out only: c->in stays put */
    if (!base) return true;
    while (!c->close_after) {
        char *p = base + off;
        size_t avail = c->in_len - off;
        char *e = org_head_end(p, avail);
        if (!e) {
            if (avail > 65536) return false;
            break;
        }
        size_t hlen = (size_t)(e - p) + 2;
        size_t clen = 0;
        bool chunked = false, ws = false, keep = true;
        const char *line = memchr(p, '\n', hlen);
        if (!line) return false;
        if (memmem(p, (size_t)(line - p), "HTTP/1.0", 8)) keep = false;
        for (line++; line < p + hlen;) {
            const char *eol = memchr(line, '\n', (size_t)(p + hlen - line));
            if (!eol) break;
            size_t n = (size_t)(eol - line), vl;
            const char *v;
            if (org_header_is(line, n, "Content-Length", &v, &vl)) {
                clen = strtoul(v, NULL, 10);
                if (clen > MAX_IN) return false;
            } else if (org_header_is(line, n, "Transfer-Encoding", &v, &vl)) {
                chunked = vl >= 7 && strncasecmp(v + vl - 7, "chunked", 7) == 0;
            } else if (org_header_is(line, n, "Content-Type", &v, &vl)) {
                ws = vl >= 25 && strncasecmp(v, "application/websocket-events", 25) == 0;
            } else if (org_header_is(line, n, "Connection", &v, &vl)) {
                if (vl == 5 && strncasecmp(v, "close", 5) == 0) keep = false;
                if (vl == 10 && strncasecmp(v, "keep-alive", 10) == 0) keep = true;
            }
            line = eol + 1;
        }
        char *body = p + hlen + 2;
        size_t blen = clen, used = hlen + 2;
        if (chunked) {
            long k = org_chunked_decode(body, avail - used, &blen);
            if (k < 0) return false;
            if (k == 0) break;
            used += (size_t)k;
        } else {
            if (avail - used < clen) break;
            used += clen;
        }
        p[hlen] = '\0'; /* the head is a C string for sscanf */
        c->close_after = !keep;
        if (!org_handle(c, p, body, blen, ws)) return false;
        off += used;
    }
    if (off) {
        memmove(base, base + off, c->in_len - off);
        c->in_len -= off;
    }
    return true;
}

static void org_on_readable(struct oconn *c)
{
    for (int rounds = 0; rounds < 16; rounds++) {
        if (!org_grow(&c->in, &c->in_cap, c->in_len + 16384) || c->in_len > MAX_IN) {
            org_close(c);
            return;
        }
        size_t room = c->in_cap - c->in_len;
        ssize_t n = recv(c->fd, c->in + c->in_len, room, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n <= 0) {
            org_close(c);
            return;
        }
        c->in_len += (size_t)n;
        if ((size_t)n < room) break; /* a short read drained the socket */
    }
    if (!org_parse(c)) {
        org_close(c);
        return;
    }
    org_flush(c);
}

static void org_on_accept(void)
{
    for (int i = 0; i < 256; i++) {
        int fd = accept4(O.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                fprintf(stderr, "grip-origin: accept: %s\n", strerror(errno));
            return;
        }
        struct oconn *c = (size_t)fd < O.nfd ? calloc(1, sizeof *c) : NULL;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        if (!c || epoll_ctl(O.ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            free(c);
            close(fd);
            continue;
        }
        c->fd = fd;
        O.byfd[fd] = c;
    }
}

static int org_listen(const char *addr, int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
        fprintf(stderr, "grip-origin: bad address %s\n", addr);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0) return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 4096) < 0) {
        fprintf(stderr, "grip-origin: %s:%d: %s\n", addr, port, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static int org_usage(void)
{
    fprintf(stderr, "usage: grip-origin [-l ADDR] -p PORT\n");
    return 1;
}

int main(int argc, char **argv)
{
    const char *addr = "127.0.0.1";
    int port = 0, o;
    while ((o = getopt(argc, argv, "l:p:h")) != -1) {
        if (o == 'l')
            addr = optarg;
        else if (o == 'p')
            port = atoi(optarg);
        else
            return org_usage();
    }
    if (optind != argc || port <= 0 || port > 65535) return org_usage();

    /* Pushpin's zurl may open as many connections as it has requests in
     * flight (max_open_requests): take what the hard limit allows. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    O.nfd = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > 65536 ? 65536 : rl.rlim_cur;
    O.byfd = calloc(O.nfd, sizeof *O.byfd);
    O.ep = epoll_create1(EPOLL_CLOEXEC);
    if (!O.byfd || O.ep < 0) {
        perror("grip-origin: setup");
        return 1;
    }
    O.lfd = org_listen(addr, port);
    if (O.lfd < 0) return 1;
    struct epoll_event lev = {.events = EPOLLIN, .data.fd = O.lfd};
    if (epoll_ctl(O.ep, EPOLL_CTL_ADD, O.lfd, &lev) < 0) {
        perror("grip-origin: epoll_ctl");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, org_on_signal);
    signal(SIGTERM, org_on_signal);

    struct epoll_event evs[256];
    while (!O.stop) {
        int k = epoll_wait(O.ep, evs, 256, 1000);
        if (k < 0 && errno != EINTR) {
            perror("grip-origin: epoll_wait");
            return 1;
        }
        for (int i = 0; i < k; i++) {
            int fd = evs[i].data.fd;
            if (fd == O.lfd) {
                org_on_accept();
                continue;
            }
            struct oconn *c = (size_t)fd < O.nfd ? O.byfd[fd] : NULL;
            if (!c) continue;
            if ((evs[i].events & EPOLLOUT) && org_flush(c) < 0) continue;
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) org_on_readable(c);
        }
    }
    for (size_t fd = 0; fd < O.nfd; fd++)
        if (O.byfd[fd]) org_close(O.byfd[fd]);
    fprintf(stderr, "grip-origin: %lu requests\n", O.requests);
    free(O.byfd);
    close(O.lfd);
    close(O.ep);
    return 0;
}
