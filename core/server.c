/* server.c: listeners and accept, the per-iteration output flush, the Date
 * cache, and graceful shutdown (see server.h). */
#include "core/server.h"

#include "core/conn.h"
#include "core/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define ACCEPTS_PER_EVENT 64
#define ACCEPT_RETRY 0.1 /* seconds between accepts while descriptors are short */
#define ACCEPT_QUIET 1.0 /* seconds of working accepts that end such an episode */

void server_limits_default(server_limits *l)
{
    l->max_header = 16 * 1024;
    l->max_uri = 8 * 1024;
    l->max_body = 1024 * 1024;
    l->max_output = 1024 * 1024;
    l->max_connections = 100000;
    l->header_timeout = 10;
    l->min_body_rate = 1024;
    l->idle_timeout = 60;
    l->tls_handshake_timeout = 10;
    l->shutdown_timeout = 5;
}

/* Connections written per loop pass.  A large fan-out is written over
 * several passes, each polling for input in between (the loop does not
 * block while output is left): a publish that arrives meanwhile reaches
 * the store while the rest is written, instead of after it.  64 writes
 * take about as long as a durable commit's two flushes here (~0.65 ms);
 * only this value was measured. */
#define FLUSH_PER_PASS 64

static void flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    server *srv = w->data;
    server_flush_pending(srv, FLUSH_PER_PASS);
    server_reap(srv);
    if (srv->pending_head)
        ev_idle_start(loop, &srv->flush_more);
    else
        ev_idle_stop(loop, &srv->flush_more);
}

static void flush_more_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
    /* Nothing to do: being active makes the loop poll without blocking,
     * and the flush watcher writes the next part. */
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents);

static void accept_resume_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    server *srv = w->data;
    if (srv->stopping) return;
    for (int i = 0; i < srv->nlisteners; i++)
        ev_io_start(loop, &srv->listeners[i].watcher);
    /* Try at once, whether or not a connection waits: a failure pauses
     * again; while the episode is not over, look again later. */
    for (int i = 0; i < srv->nlisteners && !ev_is_active(&srv->accept_pause); i++)
        accept_cb(loop, &srv->listeners[i].watcher, EV_READ);
    if (srv->accept_failing && !ev_is_active(&srv->accept_pause)) {
        ev_timer_set(&srv->accept_pause, ACCEPT_QUIET / 4, 0.);
        ev_timer_start(loop, &srv->accept_pause);
    }
}

static void shutdown_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    server *srv = w->data;
    LOG_KV(LOG_WARN, "shutdown timeout: closing remaining connections",
           LOG_I("count", srv->nconns));
    while (srv->conns)
        conn_close(srv->conns);
    ev_break(loop, EVBREAK_ALL);
}

void server_init(server *srv, struct ev_loop *loop, const server_limits *limits)
{
    memset(srv, 0, sizeof(*srv));
    srv->loop = loop;
    srv->limits = *limits;
    ev_prepare_init(&srv->flush_watcher, flush_cb);
    srv->flush_watcher.data = srv;
    ev_prepare_start(loop, &srv->flush_watcher);
    ev_idle_init(&srv->flush_more, flush_more_cb);
    ev_init(&srv->accept_pause, accept_resume_cb);
    srv->accept_pause.data = srv;
    ev_init(&srv->shutdown_timer, shutdown_timeout_cb);
    srv->shutdown_timer.data = srv;
}

void server_defer(server *srv, server_deferred *d, void (*fn)(server_deferred *d))
{
    d->fn = fn;
    d->next = srv->graveyard;
    srv->graveyard = d;
}

void server_reap(server *srv)
{
    server_free_closed(srv);
    /* A release may defer more (a session's reap never does today, but
     * the list is taken whole each round so that it could). */
    while (srv->graveyard) {
        server_deferred *d = srv->graveyard;
        srv->graveyard = NULL;
        while (d) {
            server_deferred *next = d->next;
            d->fn(d);
            d = next;
        }
    }
}

const char *server_date(server *srv)
{
    ev_tstamp now = ev_now(srv->loop);
    if ((time_t)now != (time_t)srv->date_at || !srv->date[0]) {
        http_date((time_t)now, srv->date);
        srv->date_at = now;
    }
    return srv->date;
}

/* Refuses a connection over the limit with a complete 503 written straight
 * to the fresh socket (its send buffer has room for it).  A TLS listener
 * cannot answer before a handshake, so it only closes. */
static void refuse_busy(server *srv, int fd, bool tls)
{
    static const char body[] = "{\"error\":\"too many connections\"}";
    if (!tls) {
        char resp[512];
        int n = snprintf(resp, sizeof(resp),
                         "HTTP/1.1 503 Service Unavailable\r\nDate: %s\r\n"
                         "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                         "Retry-After: 1\r\nConnection: close\r\n\r\n%s",
                         server_date(srv), sizeof(body) - 1, body);
        ssize_t w = write(fd, resp, (size_t)n);
        (void)w;
        shutdown(fd, SHUT_WR);
    }
    close(fd);
}

/* Out of descriptors (or memory) is an episode, logged when it starts and
 * when it ends, not at every retry (ten a second).  It ends once accept
 * has worked for ACCEPT_QUIET seconds without failing, so that a server
 * at the edge of its limit, where accepts fail and pass in turn, logs one
 * episode, not one per flap.  Workers in one at the same time share it,
 * since the limit is the process's. */
static int accept_failing_workers; /* atomic */

static void accept_failed(server *srv, int err)
{
    srv->accept_failed_last = ev_now(srv->loop);
    if (srv->accept_failing) return;
    srv->accept_failing = true;
    srv->accept_failed_at = srv->accept_failed_last;
    if (__atomic_add_fetch(&accept_failing_workers, 1, __ATOMIC_RELAXED) == 1)
        LOG_KV(LOG_WARN, "accept paused: new connections wait until descriptors are freed",
               LOG_S("error", strerror(err)), LOG_D("retry_ms", ACCEPT_RETRY * 1000));
}

/* An accept worked (or found the queue empty, which means a descriptor was
 * free: Linux takes it before it looks at the queue). */
static void accept_worked(server *srv)
{
    if (ev_now(srv->loop) - srv->accept_failed_last < ACCEPT_QUIET) return;
    srv->accept_failing = false;
    if (__atomic_sub_fetch(&accept_failing_workers, 1, __ATOMIC_RELAXED) == 0)
        LOG_KV(LOG_WARN, "accept resumed",
               LOG_D("paused_ms", (srv->accept_failed_last - srv->accept_failed_at) * 1000.0));
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    listener *l = w->data;
    server *srv = l->srv;
    for (int i = 0; i < ACCEPTS_PER_EVENT; i++) {
        struct sockaddr_storage ss;
        socklen_t slen = sizeof(ss);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &slen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                accept_failed(srv, errno);
                for (int j = 0; j < srv->nlisteners; j++)
                    ev_io_stop(loop, &srv->listeners[j].watcher);
                ev_timer_set(&srv->accept_pause, ACCEPT_RETRY, 0.);
                ev_timer_start(loop, &srv->accept_pause);
            } else if (errno == EAGAIN && srv->accept_failing) {
                accept_worked(srv); /* drained */
            }
            return;
        }
        if (srv->accept_failing) accept_worked(srv);
        if (server_count_connection(0) >= srv->limits.max_connections || srv->stopping) {
            refuse_busy(srv, fd, l->tls);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        conn_accept(srv, fd, (struct sockaddr *)&ss, slen, l->tls);
    }
}

/* Splits "ADDR:PORT" or "[V6]:PORT" into a socket address. */
static int parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *slen)
{
    char host[INET6_ADDRSTRLEN + 2];
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s) return SL_EINVAL;
    size_t hlen = (size_t)(colon - s);
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || port < 0 || port > 65535) return SL_EINVAL;
    memset(ss, 0, sizeof(*ss));
    if (s[0] == '[') {
        if (hlen < 3 || s[hlen - 1] != ']' || hlen - 2 >= sizeof(host)) return SL_EINVAL;
        memcpy(host, s + 1, hlen - 2);
        host[hlen - 2] = '\0';
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) return SL_EINVAL;
        *slen = sizeof(*a);
        return 0;
    }
    if (hlen >= sizeof(host)) return SL_EINVAL;
    memcpy(host, s, hlen);
    host[hlen] = '\0';
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    if (strcmp(host, "*") == 0 || strcmp(host, "0.0.0.0") == 0)
        a->sin_addr.s_addr = INADDR_ANY;
    else if (strcmp(host, "localhost") == 0)
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    else if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
        return SL_EINVAL;
    *slen = sizeof(*a);
    return 0;
}

bool server_addr_valid(const char *addr)
{
    struct sockaddr_storage ss;
    socklen_t slen;
    return parse_addr(addr, &ss, &slen) == 0;
}

static unsigned open_connections; /* every worker's: atomic */

unsigned server_count_connection(int delta)
{
    if (delta == 0) return __atomic_load_n(&open_connections, __ATOMIC_RELAXED);
    return __atomic_add_fetch(&open_connections, (unsigned)delta, __ATOMIC_RELAXED);
}

static const int refusal_status[SERVER_REFUSAL_KINDS] = SERVER_REFUSAL_STATUSES;
static unsigned long long refusals[SERVER_REFUSAL_KINDS]; /* atomic */

static int refusal_index(int status)
{
    for (int i = 0; i < SERVER_REFUSAL_KINDS; i++)
        if (refusal_status[i] == status) return i;
    return -1;
}

void server_count_refusal(int status)
{
    int i = refusal_index(status);
    if (i >= 0) __atomic_add_fetch(&refusals[i], 1, __ATOMIC_RELAXED);
}

unsigned long long server_refusals(int status)
{
    int i = refusal_index(status);
    return i < 0 ? 0 : __atomic_load_n(&refusals[i], __ATOMIC_RELAXED);
}

/* SO_REUSEPORT lets any socket of the same user join a group, another
 * sluice started by mistake on our port included: before opening a group,
 * bind a plain socket to prove nobody listens there. */
static int check_address_free(const struct sockaddr_storage *ss, socklen_t slen)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss->ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    int rc = bind(fd, (const struct sockaddr *)ss, slen);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

int server_listen(server *srv, const char *addr, bool tls, bool join, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t slen;
    if (srv->nlisteners >= SERVER_MAX_LISTENERS) {
        snprintf(err, errlen, "too many listeners (at most %d)", SERVER_MAX_LISTENERS);
        return SL_ELIMIT;
    }
    if (parse_addr(addr, &ss, &slen) < 0) {
        snprintf(err, errlen, "bad listen address '%s' (want ADDR:PORT or [V6ADDR]:PORT)", addr);
        return SL_EINVAL;
    }
    int fd = -1;
    bool any_port = ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port == 0
                                             : ((struct sockaddr_in *)&ss)->sin_port == 0;
    if (!join && !any_port && check_address_free(&ss, slen) < 0) goto fail;
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) goto fail;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) goto fail;
    if (ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, slen) < 0) goto fail;
    if (listen(fd, 4096) < 0) goto fail;
    slen = sizeof(ss);
    getsockname(fd, (struct sockaddr *)&ss, &slen);
    listener *l = &srv->listeners[srv->nlisteners++];
    l->fd = fd;
    l->tls = tls;
    l->srv = srv;
    char ip[INET6_ADDRSTRLEN];
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        snprintf(l->name, sizeof(l->name), "[%s]:%u", ip, ntohs(a->sin6_port));
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
        snprintf(l->name, sizeof(l->name), "%s:%u", ip, ntohs(a->sin_port));
    }
    ev_io_init(&l->watcher, accept_cb, fd, EV_READ);
    l->watcher.data = l;
    if (!join) {
        char msg[96];
        snprintf(msg, sizeof(msg), "listening on %s", l->name);
        LOG_KV(LOG_INFO, msg, LOG_S("scheme", tls ? "https" : "http"));
    }
    return 0;
fail:
    snprintf(err, errlen, "cannot listen on %s: %s", addr, strerror(errno));
    if (fd >= 0) close(fd);
    return SL_ESYS;
}

void server_start(server *srv)
{
    for (int i = 0; i < srv->nlisteners; i++)
        ev_io_start(srv->loop, &srv->listeners[i].watcher);
}

void server_set_tls_ctx(server *srv, SSL_CTX *ctx)
{
    /* SSL objects hold their own reference to the context they were made
     * from, so freeing ours leaves open sessions intact. */
    if (srv->tls_ctx) SSL_CTX_free(srv->tls_ctx);
    srv->tls_ctx = ctx;
}

void server_shutdown(server *srv)
{
    if (srv->stopping) return;
    srv->stopping = true;
    for (int i = 0; i < srv->nlisteners; i++) {
        ev_io_stop(srv->loop, &srv->listeners[i].watcher);
        close(srv->listeners[i].fd);
        srv->listeners[i].fd = -1;
    }
    ev_timer_stop(srv->loop, &srv->accept_pause);
    LOG_KV(LOG_INFO, "shutting down", LOG_I("connections", srv->nconns));
    for (conn *c = srv->conns, *next; c; c = next) {
        next = c->next; /* conn_shutdown may close (unlink) c, never another */
        conn_shutdown(c);
    }
    if (srv->nconns == 0) {
        ev_break(srv->loop, EVBREAK_ALL);
        return;
    }
    ev_timer_set(&srv->shutdown_timer, srv->limits.shutdown_timeout, 0.);
    ev_timer_start(srv->loop, &srv->shutdown_timer);
}

void server_destroy(server *srv)
{
    while (srv->conns)
        conn_close(srv->conns);
    server_flush_pending(srv, SIZE_MAX); /* releases the closed ones */
    server_reap(srv);
    for (int i = 0; i < srv->nlisteners; i++)
        if (srv->listeners[i].fd >= 0) close(srv->listeners[i].fd);
    ev_prepare_stop(srv->loop, &srv->flush_watcher);
    ev_idle_stop(srv->loop, &srv->flush_more);
    ev_timer_stop(srv->loop, &srv->shutdown_timer);
    ev_timer_stop(srv->loop, &srv->accept_pause);
    if (srv->tls_ctx) SSL_CTX_free(srv->tls_ctx);
    srv->tls_ctx = NULL;
}
