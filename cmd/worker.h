/* worker.h: one worker: a thread running its own libev loop, server (its
 * own socket in each listener's SO_REUSEPORT group), hub and Lua runtime.
 *
 * sluice runs N workers that share nothing but the bus (storage and its
 * writer thread, see hub.h) and process-wide counters.  The main thread
 * keeps signals and file watching and talks to workers only through
 * ev_async: reload, stop.  A worker that stops finishes like the single
 * server did: its listeners close, connections end gracefully, and it
 * keeps its loop running until every publish it made is acknowledged, so
 * no publisher loses its answer. */
#ifndef SLUICE_WORKER_H
#define SLUICE_WORKER_H

#include "core/hub.h"
#include "core/server.h"
#include "lua/api.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct worker worker;

/* Called on the worker's thread when a reload it was asked for ended
 * (status 0, or SL_EINVAL when the script failed and the old one stays). */
typedef void (*worker_reloaded_fn)(void *ud, worker *w, int status);

typedef struct worker_opts {
    int id, count;                /* 1..count */
    const char *script_path;      /* NULL: the built-in app */
    const char *tls_cert, *tls_key; /* reloaded with the script; NULL: no TLS */
    const server_limits *limits;
    worker_reloaded_fn on_reloaded;
    void *ud;
} worker_opts;

/* A worker with a new loop and server, serving `app` (loaded for this
 * worker, takes the reference) with `h` (takes it; attached to `bus`
 * here).  Nothing runs until worker_start.  Returns NULL with a message
 * in err. */
worker *worker_new(const worker_opts *o, lx_app *app, hub *h, hub_bus *bus, char *err,
                   size_t errlen);

/* The worker's server, for listening and TLS before worker_start. */
server *worker_server(worker *w);

/* Starts the thread.  Returns 0, or SL_ESYS with a message in err. */
int worker_start(worker *w, char *err, size_t errlen);

/* Asks the worker to reload its script and TLS certificate; it reports
 * through opts.on_reloaded.  Any thread. */
void worker_reload(worker *w);

/* Asks the worker to stop gracefully (see above).  Any thread. */
void worker_stop(worker *w);

/* Waits for the thread to end, then frees everything the worker owned
 * (its hub is detached from the bus).  For a worker never started, just
 * frees. */
void worker_free(worker *w);

/* The worker's id (1..count). */
int worker_id(const worker *w);

/* Work another thread (the admin listener) asks of a worker: the worker's
 * own state (its connections, its hub) is touched only by its thread, so
 * whoever wants to read or change it posts a job, and the job posts its
 * result back.  `run` is called once: on the worker's thread with `w`, or
 * with w == NULL when the worker ended before it could run (the job then
 * only gives back what it holds). */
typedef struct worker_job {
    struct worker_job *next;
    void (*run)(struct worker_job *j, worker *w);
} worker_job;

/* Queues `j` for the worker's loop.  Any thread.  Returns 0, or
 * SL_ESTOPPED when the worker no longer takes jobs (it has stopped): j is
 * not run then. */
int worker_post(worker *w, worker_job *j);

/* The worker's hub, for jobs (its thread only). */
hub *worker_hub(worker *w);

#endif
