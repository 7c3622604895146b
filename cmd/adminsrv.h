/* adminsrv.h: the admin listener (--admin-listen), prefix adm_.
 *
 * A thread of its own, with its own libev loop and core server (the same
 * HTTP parsing, limits and output queue as the public listeners), away
 * from the public addresses and from the Lua app: an operator can read
 * /metrics and the dashboard while the workers are saturated, and nothing
 * a public client sends reaches it.  It serves /metrics (the public text
 * plus per-worker, per-topic and cut-off series), /healthz, /readyz, a
 * JSON API (/api/stats, /api/topics, /api/connections, closing one,
 * publishing), a live stream of stats (/api/events, Server-Sent Events)
 * and the dashboard page, whose HTML, CSS and JS (with clients/js) are
 * compiled into the binary.
 *
 * Workers share nothing, so the admin thread never reads a worker's
 * connections or topics: it posts a job to every worker (worker_post),
 * each job reads or changes its own worker's state on that worker's loop
 * (closing a connection goes through the normal close path there) and
 * posts its part back; the answer is sent when every part is in, or 503
 * after a few seconds.  See docs/admin.md. */
#ifndef SLUICE_ADMINSRV_H
#define SLUICE_ADMINSRV_H

#include "cmd/worker.h"
#include "storage/store.h"

#include <stddef.h>

typedef struct adm adm;

typedef struct adm_opts {
    const char *listen; /* "ADDR:PORT", or "PORT" for 127.0.0.1:PORT */
    const char *token;  /* bearer token (NULL: none); copied */
    worker *const *workers;
    int nworkers;
    struct store *store;
    const server_limits *limits; /* header and body limits; copied */
} adm_opts;

/* Opens the listener (logs "admin listening on ADDR:PORT") and starts the
 * thread.  Call after the workers are started.  NULL with a message in
 * err. */
adm *adm_start(const adm_opts *o, char *err, size_t errlen);

/* Asks the admin thread to stop: its connections end, jobs in flight are
 * waited for.  Any thread. */
void adm_stop(adm *a);

/* Waits for the thread and frees everything: call before the workers are
 * freed (the thread posts jobs to them).  NULL is a no-op. */
void adm_free(adm *a);

/* Reads a token file: the first line, without surrounding white space, 1
 * to 256 bytes.  Returns a malloc'd string, or NULL with a message. */
char *adm_read_token_file(const char *path, char *err, size_t errlen);

#endif
