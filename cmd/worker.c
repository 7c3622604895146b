/* worker.c: a worker thread and its loop (see worker.h). */
#include "cmd/worker.h"

#include "core/log.h"
#include "lua/http.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct worker {
    worker_opts o;
    struct ev_loop *loop;
    server srv;
    hub *hub;
    lx_runtime rt;
    lx_app *app; /* until the thread starts serving it */
    pthread_t thread;
    bool started;
    ev_async committed; /* the bus put commits in our hub's inbox */
    ev_prepare commit;  /* end of a loop pass: relaxed store, commit here */
    ev_prepare log;     /* the very end of a pass: write its log lines */
    ev_async reload, stop;
    ev_async jobs; /* worker_post queued work */
    pthread_mutex_t jobs_lock;
    worker_job *jobs_head, *jobs_tail;
    bool jobs_closed; /* the thread ended: worker_post refuses */
};

static void wake_worker(void *ud)
{
    worker *w = ud;
    ev_async_send(w->loop, &w->committed);
}

static void on_committed(struct ev_loop *loop, ev_async *a, int revents)
{
    worker *w = a->data;
    hub_poll(w->hub);
}

static void on_pass_end(struct ev_loop *loop, ev_prepare *p, int revents)
{
    worker *w = p->data;
    hub_commit_pending(w->hub);
}

static void on_log_flush(struct ev_loop *loop, ev_prepare *p, int revents)
{
    log_flush();
}

static void on_reload(struct ev_loop *loop, ev_async *a, int revents)
{
    worker *w = a->data;
    int status = lx_reload(&w->rt);
    if (w->o.tls_cert) {
        char err[512];
        SSL_CTX *ctx = tls_ctx_new(w->o.tls_cert, w->o.tls_key, err, sizeof(err));
        if (ctx)
            server_set_tls_ctx(&w->srv, ctx);
        else
            LOG_KV(LOG_ERROR, "TLS reload failed: the old certificate stays", LOG_S("error", err),
                   LOG_I("worker", w->o.id));
    }
    if (w->o.on_reloaded) w->o.on_reloaded(w->o.ud, w, status);
}

/* Takes the queued jobs (closing the queue when `close`). */
static worker_job *jobs_take(worker *w, bool close)
{
    pthread_mutex_lock(&w->jobs_lock);
    worker_job *j = w->jobs_head;
    w->jobs_head = w->jobs_tail = NULL;
    if (close) w->jobs_closed = true;
    pthread_mutex_unlock(&w->jobs_lock);
    return j;
}

static void on_jobs(struct ev_loop *loop, ev_async *a, int revents)
{
    worker *w = a->data;
    for (worker_job *j = jobs_take(w, false), *next; j; j = next) {
        next = j->next;
        j->run(j, w);
    }
}

int worker_post(worker *w, worker_job *j)
{
    j->next = NULL;
    pthread_mutex_lock(&w->jobs_lock);
    bool closed = w->jobs_closed;
    if (!closed) {
        if (w->jobs_tail)
            w->jobs_tail->next = j;
        else
            w->jobs_head = j;
        w->jobs_tail = j;
        ev_async_send(w->loop, &w->jobs); /* under the lock: the loop lives */
    }
    pthread_mutex_unlock(&w->jobs_lock);
    return closed ? SL_ESTOPPED : 0;
}

hub *worker_hub(worker *w)
{
    return w->hub;
}

static void on_stop(struct ev_loop *loop, ev_async *a, int revents)
{
    worker *w = a->data;
    server_shutdown(&w->srv);
}

worker *worker_new(const worker_opts *o, lx_app *app, hub *h, hub_bus *bus, char *err,
                   size_t errlen)
{
    worker *w = calloc(1, sizeof(worker));
    if (!w) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    w->o = *o;
    w->loop = ev_loop_new(EVFLAG_AUTO);
    if (!w->loop) {
        snprintf(err, errlen, "cannot create an event loop");
        goto fail;
    }
    server_init(&w->srv, w->loop, o->limits);
    ev_async_init(&w->committed, on_committed);
    ev_async_init(&w->reload, on_reload);
    ev_async_init(&w->stop, on_stop);
    ev_async_init(&w->jobs, on_jobs);
    pthread_mutex_init(&w->jobs_lock, NULL);
    ev_prepare_init(&w->commit, on_pass_end);
    /* Before the server's flush (a prepare watcher too), so the fan-out
     * and answers it queues are written in this same pass. */
    ev_set_priority(&w->commit, EV_MAXPRI);
    /* After every other prepare watcher (the server's flush may log). */
    ev_prepare_init(&w->log, on_log_flush);
    ev_set_priority(&w->log, EV_MINPRI);
    w->committed.data = w->reload.data = w->stop.data = w->commit.data = w->jobs.data = w;
    ev_prepare_start(w->loop, &w->commit);
    ev_prepare_start(w->loop, &w->log);
    ev_async_start(w->loop, &w->committed);
    ev_async_start(w->loop, &w->reload);
    ev_async_start(w->loop, &w->stop);
    ev_async_start(w->loop, &w->jobs);
    hub_opts ho = {.wake = wake_worker, .wake_ud = w};
    if (hub_attach(h, bus, &ho) < 0) {
        snprintf(err, errlen, "too many workers for the bus");
        goto fail;
    }
    w->hub = h;
    w->app = app;
    return w;
fail:
    if (w && w->loop) {
        server_destroy(&w->srv);
        ev_loop_destroy(w->loop);
    }
    free(w);
    lx_app_release(app);
    hub_free(h);
    return NULL;
}

server *worker_server(worker *w)
{
    return &w->srv;
}

int worker_id(const worker *w)
{
    return w->o.id;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    log_batch_begin();
    lx_set_loop(w->loop);
    lx_set_worker(w->o.id, w->o.count);
    lx_runtime_init(&w->rt, &w->srv, w->hub, w->o.script_path, w->app);
    w->app = NULL;
    w->srv.on_request = lx_on_request;
    w->srv.on_request_ud = &w->rt;
    lx_app_start_timers(w->rt.app);
    server_start(&w->srv);
    ev_run(w->loop, 0);
    /* Connections are gone; the writer is still up: wait for the commits
     * of our own publishes so each publisher (a Lua task) gets its
     * answer.  No timer may start new ones meanwhile. */
    lx_runtime_stop_timers(&w->rt);
    lx_http_shutdown(); /* requests still waiting (timers' tasks) are answered */
    while (hub_inflight(w->hub) > 0) {
        /* Publishes may wait for their worker to commit them (or to hand
         * them to the writer thread): do that first, or the loop would
         * block with nothing left to wake it. */
        hub_commit_pending(w->hub);
        if (hub_inflight(w->hub) > 0) ev_run(w->loop, EVRUN_ONCE);
    }
    for (worker_job *j = jobs_take(w, true), *next; j; j = next) {
        next = j->next;
        j->run(j, NULL);
    }
    hub_detach(w->hub);
    lx_runtime_destroy(&w->rt);
    server_destroy(&w->srv);
    outq_pool_drain();
    conn_parser_pool_drain();
    log_flush();
    return NULL;
}

int worker_start(worker *w, char *err, size_t errlen)
{
    /* Signals belong to the main thread: a worker never sees one. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&w->thread, NULL, worker_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start worker %d: %s", w->o.id, strerror(rc));
        return SL_ESYS;
    }
    w->started = true;
    return 0;
}

void worker_reload(worker *w)
{
    ev_async_send(w->loop, &w->reload);
}

void worker_stop(worker *w)
{
    ev_async_send(w->loop, &w->stop);
}

void worker_free(worker *w)
{
    if (!w) return;
    if (w->started) pthread_join(w->thread, NULL);
    if (w->app) lx_app_release(w->app);
    if (!w->started) server_destroy(&w->srv);
    ev_prepare_stop(w->loop, &w->commit);
    ev_prepare_stop(w->loop, &w->log);
    ev_async_stop(w->loop, &w->committed);
    ev_async_stop(w->loop, &w->reload);
    ev_async_stop(w->loop, &w->stop);
    ev_async_stop(w->loop, &w->jobs);
    for (worker_job *j = jobs_take(w, true), *next; j; j = next) { /* never started */
        next = j->next;
        j->run(j, NULL);
    }
    pthread_mutex_destroy(&w->jobs_lock);
    hub_free(w->hub);
    ev_loop_destroy(w->loop);
    free(w);
}
