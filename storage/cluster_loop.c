/* cluster_loop.c: the NATS C client's I/O on a libev loop (see
 * cluster_loop.h).
 *
 * The client calls the attach, read, write and detach callbacks from any
 * of its threads (a publish's write from the caller's, a reconnection's
 * attach from its reconnect thread, a stale connection's stop from its
 * timer thread), and closes the socket right after it asks to stop
 * polling it.  libev's watchers belong to the loop's thread and update
 * the kernel only when it next polls, by which time the descriptor's
 * number may be another socket's.  So the socket has an epoll set of its
 * own, which every callback updates under one lock before it returns, and
 * the loop watches that set's descriptor. */
#include "storage/cluster_loop.h"

#include <errno.h>
#include <ev.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

struct cluster_loop {
    struct ev_loop *loop;
    pthread_t thread;
    bool running;
    cluster_loop_fn after_read, on_kick;
    void *ud;
    ev_async wake;
    ev_prepare before_poll;
    ev_io ready; /* epfd has an event */
    int epfd;    /* the socket's own epoll set */
    int stop;    /* atomic */
    /* What the client asked for, and the socket's place in epfd (under
     * mu, which every epoll_ctl of the socket holds). */
    pthread_mutex_t mu;
    natsConnection *nc;
    int fd;         /* -1: detached, or between a socket's close and the next attach */
    int events;     /* EPOLLIN | EPOLLOUT */
    int in_set;     /* the descriptor in epfd, or -1 */
    int set_events; /* its events there */
    bool dirty;     /* changed on the loop's thread, epfd not yet (before_poll) */
};

static __thread const struct cluster_loop *loop_here;

/* Whether the caller is the loop's thread. */
static bool cluster_loop_here(const struct cluster_loop *l)
{
    return loop_here == l;
}

/* epfd made to hold what the client asked for (mu held).  Errors are
 * ignored: a descriptor the client closed has left the set already, and
 * the next attach adds its successor. */
static void apply(struct cluster_loop *l)
{
    l->dirty = false;
    int want = l->fd >= 0 ? l->events : 0;
    if (l->in_set >= 0 && (l->in_set != l->fd || !want)) {
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, l->in_set, NULL);
        l->in_set = -1;
    }
    if (!want || (l->in_set == l->fd && l->set_events == want)) return;
    struct epoll_event e = {.events = (uint32_t)want};
    if (l->in_set < 0) {
        if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->fd, &e) != 0 && errno == EEXIST)
            epoll_ctl(l->epfd, EPOLL_CTL_MOD, l->fd, &e);
        l->in_set = l->fd;
    } else {
        epoll_ctl(l->epfd, EPOLL_CTL_MOD, l->fd, &e);
    }
    l->set_events = want;
}

/* A change the client asked for (mu held), applied at once: the client
 * closes a socket right after it asks to stop polling it, and the
 * descriptor's number may then be any new socket's, a worker's client
 * included (ThreadSanitizer saw a deferred removal reach one).  Only the
 * loop's own changes to the write event of a socket that stays polled for
 * reading wait until it polls again: a publish's write is asked for, then
 * written, in the same pass, with no system call for either. */
static void changed(struct cluster_loop *l)
{
    if (cluster_loop_here(l) && l->fd >= 0 && l->in_set == l->fd && (l->events & EPOLLIN))
        l->dirty = true;
    else
        apply(l);
}

static void on_before_poll(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)revents;
    struct cluster_loop *l = w->data;
    pthread_mutex_lock(&l->mu);
    if (l->dirty) apply(l);
    pthread_mutex_unlock(&l->mu);
}

/* The connection, if the client wants its output written: a write event
 * polled for may be stale by the time it is handled (a wake in the same
 * pass wrote it all), and the client takes a write of nothing for a
 * closed connection. */
static natsConnection *wants_write(struct cluster_loop *l)
{
    pthread_mutex_lock(&l->mu);
    natsConnection *nc = l->fd >= 0 && (l->events & EPOLLOUT) ? l->nc : NULL;
    pthread_mutex_unlock(&l->mu);
    return nc;
}

static void on_ready(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    struct cluster_loop *l = w->data;
    struct epoll_event ev[4];
    int n = epoll_wait(l->epfd, ev, 4, 0);
    uint32_t what = 0;
    for (int i = 0; i < n; i++)
        what |= ev[i].events;
    /* The client checks that the socket is still its own (a reconnection
     * may be under way on its thread). */
    natsConnection *nc;
    if ((what & EPOLLOUT) && (nc = wants_write(l))) {
        natsConnection_ProcessWriteEvent(nc);
        l->on_kick(l->ud); /* publishes held back while the output was full */
    }
    if (what & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        pthread_mutex_lock(&l->mu);
        nc = l->nc;
        pthread_mutex_unlock(&l->mu);
        natsConnection_ProcessReadEvent(nc);
        l->after_read(l->ud);
    }
}

static void on_wake(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)revents;
    struct cluster_loop *l = w->data;
    if (__atomic_load_n(&l->stop, __ATOMIC_ACQUIRE)) {
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    l->on_kick(l->ud);
    /* Most wakes bring something to write: publishes just given to the
     * client, or another thread's request, which asked for the socket's
     * write event.  Written now, without a poll for it. */
    natsConnection *nc = wants_write(l);
    if (nc) natsConnection_ProcessWriteEvent(nc);
}

static void *loop_main(void *arg)
{
    struct cluster_loop *l = arg;
    loop_here = l;
    pthread_setname_np(pthread_self(), "sluice-nats"); /* top -H, perf, gdb */
    ev_run(l->loop, 0);
    return NULL;
}

/* ---- the client's callbacks (any of its threads) ---- */

static natsStatus on_attach(void **user, void *loop, natsConnection *nc, natsSock fd)
{
    struct cluster_loop *l = loop;
    *user = l;
    pthread_mutex_lock(&l->mu);
    l->nc = nc;
    l->fd = fd;
    l->events = EPOLLIN;
    if (l->in_set == fd) { /* its number, but a new socket: added anew */
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
        l->in_set = -1;
    }
    changed(l);
    pthread_mutex_unlock(&l->mu);
    return NATS_OK;
}

static natsStatus set_events(struct cluster_loop *l, int ev, bool add)
{
    pthread_mutex_lock(&l->mu);
    l->events = add ? l->events | ev : l->events & ~ev;
    changed(l);
    pthread_mutex_unlock(&l->mu);
    return NATS_OK;
}

static natsStatus on_read(void *user, bool add)
{
    return set_events(user, EPOLLIN, add);
}

static natsStatus on_write(void *user, bool add)
{
    return set_events(user, EPOLLOUT, add);
}

static natsStatus on_detach(void *user)
{
    struct cluster_loop *l = user;
    pthread_mutex_lock(&l->mu);
    l->fd = -1;
    l->events = 0;
    changed(l);
    pthread_mutex_unlock(&l->mu);
    return NATS_OK;
}

/* ---- start, use, kick, stop ---- */

int cluster_loop_start(struct cluster_loop **out, cluster_loop_fn after_read,
                       cluster_loop_fn on_kick, void *ud)
{
    *out = NULL;
    struct cluster_loop *l = calloc(1, sizeof(*l));
    if (!l) return -1;
    l->loop = ev_loop_new(EVFLAG_AUTO);
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!l->loop || l->epfd < 0) {
        if (l->loop) ev_loop_destroy(l->loop);
        if (l->epfd >= 0) close(l->epfd);
        free(l);
        return -1;
    }
    pthread_mutex_init(&l->mu, NULL);
    l->after_read = after_read;
    l->on_kick = on_kick;
    l->ud = ud;
    l->fd = l->in_set = -1;
    ev_async_init(&l->wake, on_wake);
    l->wake.data = l;
    ev_async_start(l->loop, &l->wake);
    ev_prepare_init(&l->before_poll, on_before_poll);
    l->before_poll.data = l;
    ev_prepare_start(l->loop, &l->before_poll);
    ev_io_init(&l->ready, on_ready, l->epfd, EV_READ);
    l->ready.data = l;
    ev_io_start(l->loop, &l->ready);
    if (pthread_create(&l->thread, NULL, loop_main, l) != 0) {
        l->running = false;
        cluster_loop_stop(l);
        return -1;
    }
    l->running = true;
    *out = l;
    return 0;
}

natsStatus cluster_loop_use(struct cluster_loop *l, natsOptions *opts)
{
    return natsOptions_SetEventLoop(opts, l, on_attach, on_read, on_write, on_detach);
}

void cluster_loop_kick(struct cluster_loop *l)
{
    ev_async_send(l->loop, &l->wake);
}

void cluster_loop_stop(struct cluster_loop *l)
{
    if (!l) return;
    if (l->running) {
        __atomic_store_n(&l->stop, 1, __ATOMIC_RELEASE);
        ev_async_send(l->loop, &l->wake);
        pthread_join(l->thread, NULL);
    }
    ev_loop_destroy(l->loop);
    close(l->epfd);
    pthread_mutex_destroy(&l->mu);
    free(l);
}
