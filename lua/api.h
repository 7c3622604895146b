/* api.h: the Lua app runtime (prefix lx_): the `sluice` module, the loaded
 * script, and the dispatch of requests to its handlers.
 *
 * A script generation (lx_app) is one lua_State that ran the app chunk, and
 * the routes and settings it declared.  Each request runs its handler in a
 * fresh coroutine of that state under an instruction budget, so a handler
 * may later wait (a durable publish, a timer) without holding the loop, and
 * a runaway handler is stopped with a 500.  A reload builds a new
 * generation; requests already running finish in the old one, which is
 * freed when its last task ends.  The core never sees Lua: it calls
 * lx_on_request() through server.on_request. */
#ifndef SLUICE_LUA_API_H
#define SLUICE_LUA_API_H

#include "core/conn.h"
#include "core/hub.h"
#include "core/server.h"

#include <stdbool.h>
#include <stddef.h>

#define LX_MAX_LISTEN 16

/* sluice.config{cluster={...}} (docs/lua-api.md): NULL or 0 when not set. */
typedef struct lx_cluster_config {
    char *servers; /* "nats://a:1,nats://b:2" */
    char *stream, *user, *password, *token, *creds, *tls_ca, *tls_cert, *tls_key;
    int replicas;
} lx_cluster_config;

/* What a script declared with sluice.config{}; command-line flags override
 * it. */
typedef struct lx_config {
    char *listen[LX_MAX_LISTEN];
    int nlisten;
    char *tls_listen[LX_MAX_LISTEN];
    int ntls_listen;
    char *tls_cert, *tls_key;
    char *data_dir;
    int relaxed;              /* storage.durability = "relaxed": no fsync per commit */
    uint64_t dedup_window_ms; /* storage.dedup_window: Idempotency-Key (0: 10 min) */
    int workers;
    server_limits limits;
    long long instruction_budget; /* Lua VM instructions per callback run */
    double script_timeout;        /* seconds of wall clock per run (0: default) */
    size_t script_memory;         /* bytes per Lua state (0: default) */
    size_t max_publish_queue;     /* publishes waiting for storage before 503 (0: 65536) */
    size_t max_waiting_resumes;   /* cluster: resume pages read or waiting (0: 16384) */
    char *admin_listen;           /* admin.listen: the admin listener (docs/admin.md) */
    char *admin_token_file;       /* admin.token_file */
    size_t max_ws_message;        /* limits.max_ws_message: bytes, inflated (0: default) */
    int ws_deflate;               /* compression.websocket: 1 on, -1 off, 0 not set */
    bool ws_deflate_min_set;      /* compression.min_size was given: */
    size_t ws_deflate_min;        /* ...bytes */
    lx_cluster_config cluster;
} lx_config;

typedef struct lx_app lx_app;

typedef struct lx_runtime {
    lx_app *app;             /* the generation new requests run in */
    hub *hub;                /* shared by every generation */
    const char *script_path; /* NULL: the built-in default app */
    server *srv;
} lx_runtime;

/* Frees the strings of a config. */
void lx_config_free(lx_config *cfg);

/* The settings read at start only (docs/lua-api.md: listen, tls, data,
 * workers, storage, compression, admin, cluster and some limits) that
 * differ between `was` and `now`: their names, comma-separated, in out.
 * Returns how many. */
int lx_config_start_only_changes(const lx_config *was, const lx_config *now, char *out,
                                 size_t outlen);

/* Loads the app script at `path` (NULL: the built-in default app) into a
 * new generation publishing into `h` (NULL for --check) and fills `cfg`
 * with its settings (cfg may be NULL when the settings are not wanted).
 * Returns the app, or NULL with a message naming file and line in err. */
lx_app *lx_app_load(const char *path, hub *h, lx_config *cfg, char *err, size_t errlen);

/* Drops the runtime's reference on an app; it is freed after its last task. */
void lx_app_release(lx_app *app);

/* The one retention the app's sluice.topic rules at load amount to
 * (hub_rules_single), for cluster mode's stream.  0, or SL_EINVAL with
 * the rules that differ named in err. */
int lx_app_retention(const lx_app *app, hub_retention *out, char *err, size_t errlen);

/* Number of routes the app declared (for --check's report). */
size_t lx_app_route_count(const lx_app *app);

/* The calling thread's event loop, which its apps' timers run on; set it
 * on the worker's thread (an app loaded where none is set gets timers
 * that wait for lx_app_start_timers). */
void lx_set_loop(struct ev_loop *loop);

/* Which worker this thread loads apps for (1..count; 1 of 1 until set):
 * sluice.worker in the script, and top-level timers fire on worker 1 only.
 * Set it before lx_app_load / lx_reload. */
void lx_set_worker(int id, int count);

/* Starts the timers an app made before the loop was set (the first load). */
void lx_app_start_timers(lx_app *app);

/* Sets the runtime up to serve `app` (takes the reference). */
void lx_runtime_init(lx_runtime *rt, server *srv, hub *h, const char *script_path, lx_app *app);

/* Script errors so far (for /metrics). */
unsigned long long lx_script_errors(void);

/* The server's request callback: ud is the lx_runtime. */
void lx_on_request(conn *c, http_request *req, void *ud);

/* Loads the script again (for this thread's worker) and swaps it in; on
 * failure the running app stays and the error is logged.  Returns 0 or
 * SL_EINVAL; success is logged by the caller, once for all workers. */
int lx_reload(lx_runtime *rt);

/* Cancels the current app's timers (a worker that stops). */
void lx_runtime_stop_timers(lx_runtime *rt);

/* Releases the current app at exit. */
void lx_runtime_destroy(lx_runtime *rt);

/* The built-in default app's source (generated from scripts/default.lua). */
extern const char lx_default_app_source[];
extern const size_t lx_default_app_size;

#endif
