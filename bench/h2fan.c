/*
 * bench/h2fan.c: SSE fan-out over HTTP/2 against HTTP/1.1, on the same load.
 *
 * Opens N SSE subscribers to one topic, either each on its own HTTP/1.1
 * connection (--mode h1) or as HTTP/2 streams (--mode h2, h2c with prior
 * knowledge) with S streams per connection (--streams S: 1 is one
 * subscriber per connection, 100 is a browser page's worth), waits until
 * every one has its stream head, then publishes M messages of B bytes
 * from a second thread over one keep-alive HTTP/1.1 connection (8 in
 * flight) and counts the events that arrive ("\ndata: " per event) until
 * all N x M have, or the deadline.  It prints deliveries per second (first
 * publish to last delivery) and, with --pid, the server's CPU time per
 * delivery (utime + stime from /proc, before and after; utime alone as
 * server_user_s: the system part is mostly the loopback's TCP, which the
 * server pays for both ends, and varies most from run to run).
 *
 * HTTP/2 framing is libnghttp2's client session (the server uses the same
 * library); the client opens a 16 MiB connection window and 1 MiB stream
 * windows, as browsers open large ones, so that flow control is not what
 * is measured.  One epoll loop, non-blocking sockets; bounded in time.
 *
 *   h2fan --port 8080 --mode h1 --subs 1000 --messages 200
 *   h2fan --port 8080 --mode h2 --streams 100 --subs 1000 --messages 200 --pid PID
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char NEEDLE[] = "\ndata: ";
#define NEEDLE_LEN (sizeof(NEEDLE) - 1)

typedef struct sub {
    int match;  /* chars of NEEDLE matched so far */
    bool ready; /* got the stream head and the retry line */
    int retry_match;
} sub;

typedef struct client {
    int fd;
    nghttp2_session *h2; /* NULL for HTTP/1.1 */
    sub *subs;           /* one (h1) or the connection's streams (h2, indexed by stream) */
    int nsubs;
    int first; /* index of its first subscriber */
} client;

static int port = 8080, nsubs = 100, per_conn = 1, messages = 100, size = 64, pid = 0;
static bool h2mode = false;
static long long delivered, ready_count;
static sub *all_subs;
static volatile int publishing_done;
static double t_first_pub;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* This process's own CPU (both threads): a load generator at a core's
 * worth is what limits the rate, not the server. */
static double self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double server_user; /* the user part of server_cpu()'s last answer */

static double server_cpu(void)
{
    if (!pid) return 0;
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return 0;
    unsigned long ut = 0, st = 0;
    /* fields after ")": state(3) ... utime(14) stime(15) */
    int field = 2;
    for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
        field++;
        if (field == 14) ut = strtoul(tok, NULL, 10);
        if (field == 15) {
            st = strtoul(tok, NULL, 10);
            break;
        }
    }
    server_user = (double)ut / (double)sysconf(_SC_CLK_TCK);
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static int dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        perror("connect");
        exit(1);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

/* Counts events in bytes of one subscriber's stream. */
static void scan(sub *s, const uint8_t *p, size_t n)
{
    static const char retry[] = "retry: ";
    for (size_t i = 0; i < n; i++) {
        char ch = (char)p[i];
        if (!s->ready) {
            s->retry_match = ch == retry[s->retry_match] ? s->retry_match + 1 : ch == 'r';
            if (s->retry_match == (int)sizeof(retry) - 1) {
                s->ready = true;
                ready_count++;
            }
        }
        if (ch == NEEDLE[s->match]) {
            if (++s->match == (int)NEEDLE_LEN) {
                delivered++;
                s->match = 0;
            }
        } else {
            s->match = ch == '\n';
        }
    }
}

/* ---- HTTP/2 client ---------------------------------------------------- */

static ssize_t h2_send_cb(nghttp2_session *session, const uint8_t *data, size_t len, int flags,
                          void *ud)
{
    client *c = ud;
    ssize_t w = send(c->fd, data, len, MSG_NOSIGNAL);
    if (w < 0) return errno == EAGAIN ? NGHTTP2_ERR_WOULDBLOCK : NGHTTP2_ERR_CALLBACK_FAILURE;
    return w;
}

static int h2_data_cb(nghttp2_session *session, uint8_t flags, int32_t id, const uint8_t *data,
                      size_t len, void *ud)
{
    sub *s = nghttp2_session_get_stream_user_data(session, id);
    if (s) scan(s, data, len);
    return 0;
}

static int h2_close_cb(nghttp2_session *session, int32_t id, uint32_t code, void *ud)
{
    if (nghttp2_session_get_stream_user_data(session, id))
        fprintf(stderr, "stream %d closed (error %u)\n", id, code);
    return 0;
}

static void h2_open(client *c)
{
    nghttp2_session_callbacks *cbs;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_send_callback(cbs, h2_send_cb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, h2_data_cb);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, h2_close_cb);
    nghttp2_session_client_new(&c->h2, cbs, c);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20},
                                   {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1000}};
    nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 2);
    nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0, 16 << 20);
    char auth[32];
    snprintf(auth, sizeof(auth), "127.0.0.1:%d", port);
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE}
    nghttp2_nv nva[] = {NV(":method", "GET"), NV(":scheme", "http"), NV(":path", "/topics/h2fan"),
                        NV(":authority", auth), NV("accept", "text/event-stream")};
    for (int i = 0; i < c->nsubs; i++)
        nghttp2_submit_request(c->h2, NULL, nva, sizeof(nva) / sizeof(nva[0]), NULL, &c->subs[i]);
    nghttp2_session_send(c->h2);
}

/* ---- the publisher ---------------------------------------------------- */

static void *publisher(void *arg)
{
    int fd = dial();
    char *body = malloc((size_t)size + 1);
    memset(body, 'x', (size_t)size);
    char req[256];
    int hl = snprintf(req, sizeof(req),
                      "POST /topics/h2fan HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", size);
    char in[65536];
    int sent = 0, answered = 0, inflight_max = 8;
    size_t carry = 0;
    t_first_pub = now();
    while (answered < messages) {
        while (sent < messages && sent - answered < inflight_max) {
            memcpy(body, "SLB", 3);
            if (send(fd, req, (size_t)hl, MSG_NOSIGNAL) < 0 ||
                send(fd, body, (size_t)size, MSG_NOSIGNAL) < 0) {
                perror("publish");
                exit(3);
            }
            sent++;
        }
        ssize_t r = recv(fd, in + carry, sizeof(in) - carry - 1, 0);
        if (r <= 0) {
            perror("publish answer");
            exit(3);
        }
        carry += (size_t)r;
        in[carry] = 0;
        /* answers are small: count "HTTP/1.1 200" heads and drop what is read */
        char *p = in;
        for (char *q; (q = strstr(p, "HTTP/1.1 ")); p = q + 9) {
            if (strncmp(q + 9, "200", 3) != 0) {
                fprintf(stderr, "publish answered %.3s\n", q + 9);
                exit(3);
            }
            answered++;
        }
        size_t keep = strlen(p) < 8 ? strlen(p) : 8;
        memmove(in, in + carry - keep, keep);
        carry = keep;
    }
    publishing_done = 1;
    free(body);
    close(fd);
    return NULL;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"port", 1, 0, 'p'},     {"mode", 1, 0, 'm'}, {"subs", 1, 0, 'n'}, {"streams", 1, 0, 's'},
        {"messages", 1, 0, 'M'}, {"size", 1, 0, 'b'}, {"pid", 1, 0, 'P'},  {0, 0, 0, 0}};
    for (int o; (o = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        switch (o) {
        case 'p':
            port = atoi(optarg);
            break;
        case 'm':
            h2mode = strcmp(optarg, "h2") == 0;
            break;
        case 'n':
            nsubs = atoi(optarg);
            break;
        case 's':
            per_conn = atoi(optarg);
            break;
        case 'M':
            messages = atoi(optarg);
            break;
        case 'b':
            size = atoi(optarg) < 3 ? 3 : atoi(optarg);
            break;
        case 'P':
            pid = atoi(optarg);
            break;
        default:
            fprintf(stderr, "usage: see the comment at the top of h2fan.c\n");
            return 1;
        }
    }
    if (!h2mode) per_conn = 1;
    int nconns = (nsubs + per_conn - 1) / per_conn;
    client *cl = calloc((size_t)nconns, sizeof(client));
    all_subs = calloc((size_t)nsubs, sizeof(sub));
    int ep = epoll_create1(0);
    for (int i = 0; i < nconns; i++) {
        client *c = &cl[i];
        c->fd = dial();
        c->first = i * per_conn;
        c->nsubs = nsubs - c->first < per_conn ? nsubs - c->first : per_conn;
        c->subs = &all_subs[c->first];
        if (h2mode) {
            h2_open(c); /* nghttp2 sends the preface */
        } else {
            static const char get[] =
                "GET /topics/h2fan HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
            if (send(c->fd, get, sizeof(get) - 1, MSG_NOSIGNAL) < 0) return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    static uint8_t buf[1 << 18];
    struct epoll_event evs[256];
    double deadline = now() + 60;
    bool started = false;
    double cpu0 = 0, t_last = 0, self0 = 0, user0 = 0;
    pthread_t pub;
    long long want = (long long)nsubs * messages;
    while (now() < deadline && delivered < want) {
        if (!started && ready_count == nsubs) {
            started = true;
            cpu0 = server_cpu();
            user0 = server_user;
            self0 = self_cpu();
            pthread_create(&pub, NULL, publisher, NULL);
        }
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            client *c = evs[i].data.ptr;
            for (;;) {
                ssize_t r = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
                if (r <= 0) {
                    if (r == 0) {
                        fprintf(stderr, "connection closed by the server\n");
                        return 4;
                    }
                    break;
                }
                if (c->h2) {
                    if (nghttp2_session_mem_recv(c->h2, buf, (size_t)r) < 0) return 4;
                    nghttp2_session_send(c->h2);
                } else {
                    scan(c->subs, buf, (size_t)r);
                }
                if ((size_t)r < sizeof(buf)) break;
            }
        }
        if (delivered) t_last = now();
    }
    double cpu1 = server_cpu(), self1 = self_cpu();
    if (!started) {
        fprintf(stderr, "only %lld of %d subscribed\n", ready_count, nsubs);
        return 2;
    }
    pthread_join(pub, NULL);
    double secs = t_last - t_first_pub;
    printf("mode=%s subs=%d streams_per_conn=%d conns=%d messages=%d size=%d delivered=%lld/%lld "
           "seconds=%.3f deliveries_per_s=%.0f",
           h2mode ? "h2" : "h1", nsubs, per_conn, nconns, messages, size, delivered, want, secs,
           (double)delivered / secs);
    if (pid)
        printf(" server_cpu_s=%.2f cpu_us_per_delivery=%.3f server_user_s=%.2f", cpu1 - cpu0,
               (cpu1 - cpu0) * 1e6 / (double)(delivered ? delivered : 1), server_user - user0);
    printf(" client_cpu_s=%.2f\n", self1 - self0);
    return delivered == want ? 0 : 4;
}
