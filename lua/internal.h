/* internal.h: what the files of the Lua layer share (not a public face:
 * the rest of sluice uses lua/api.h).  api.c holds the runtime (budget,
 * loading, reload, the module table); config.c sluice.config; publish.c
 * sluice.publish, topics and /metrics; subscribe.c req:subscribe, the
 * callbacks and the conn object; request.c a request's task, the lazy req
 * object and the answer; sandbox.c the allocator and the library guards;
 * timer.c the timers; crypto.c HMAC; jwt.c JWT and JWS (RFC 7515, 7519);
 * http.c sluice.http (its face: lua/http.h); pattern.c the string
 * library's pattern functions, with their work counted. */
#ifndef SLUICE_LUA_INTERNAL_H
#define SLUICE_LUA_INTERNAL_H

#include "core/route.h"
#include "lua/api.h"

#include <ev.h>
#include <lauxlib.h>
#include <lua.h>

#define HOOK_STEP 1000
#define LOAD_BUDGET 100000000LL /* the top-level chunk at start or reload */
#define LOAD_TIMEOUT 5.0        /* seconds of wall clock for that chunk */
#define DEFAULT_BUDGET 10000000LL
#define DEFAULT_TIMEOUT 2.0                  /* seconds per run of a handler or callback */
#define DEFAULT_MEMORY (64 * 1024 * 1024ULL) /* bytes per Lua state */

/* Why a run was stopped (lx_budget.exceeded). */
enum { LX_WITHIN = 0, LX_OVER_INSTRUCTIONS, LX_OVER_TIME };

/* What one run of script code may spend: VM instructions (charged by the
 * count hook, HOOK_STEP at a time) and wall-clock time (checked by the
 * same hook). */
typedef struct lx_budget {
    long long used, limit;
    double deadline; /* CLOCK_MONOTONIC seconds; 0: none */
    double timeout;  /* what the deadline was set from, for the message */
    int exceeded;    /* LX_OVER_*: the hook then raises at every instruction */
} lx_budget;

/* The allocator's account of one Lua state.  The limit is enforced only
 * while script code runs in protected mode (enforce): an allocation the C
 * side makes outside any pcall must not fail, since a failure there would
 * have nowhere to go but the panic function. */
typedef struct lx_mem {
    size_t used, limit;
    bool enforce;
    unsigned long long refused; /* allocations refused so far */
} lx_mem;

typedef struct lx_timer lx_timer;

#define LX_IDLE_COROUTINES 32

struct lx_app {
    lx_mem mem; /* the allocator's ud: lives as long as L */
    lua_State *L;
    lua_State *hookL; /* runs subscriber callbacks (anchored in the registry) */
    route_table *routes;
    int refs;                      /* the runtime's, plus one per running task */
    bool loading;                  /* the chunk runs: config and route are allowed */
    lx_config *cfg;                /* filled while loading */
    hub_retention_rules rules;     /* sluice.topic's while loading: the hub's once loaded */
    lx_budget *running;            /* the budget charged by the hook */
    struct lx_task *running_task;  /* the coroutine being resumed */
    long long budget;              /* per handler run */
    double timeout;                /* seconds per resume of a handler or callback */
    char *script;                  /* chunk name for logs */
    hub *hub;                      /* where sluice.publish goes (NULL under --check) */
    int worker_id, worker_count;   /* the worker it was loaded for (1-based) */
    lx_timer *timers;              /* sluice.timer / sluice.every of this generation */
    int on_publish;                /* registry ref of a table pattern -> function */
    bool filter_warned;            /* a filter's wrong result was logged (once per load) */
    const void *origin;            /* publisher identity during on_message (skip_self) */
    const char *hook_running;      /* the callback run by call_hook (filter, on_open), or NULL */
    struct sub_session *publisher; /* the WebSocket client whose on_message runs */
    /* The metatables every request uses, by registry ref (an array slot)
     * rather than by name (a string lookup: about 150 instructions). */
    int req_mt_ref, sub_mt_ref;
    /* sluice.config{http = {...}} (http.c; 0: the default). */
    struct {
        int max_in_flight, max_webhooks, webhook_queue;
    } http;
    /* Coroutines whose task returned, kept for the next task: a new
     * thread, its registry slot and its collection were about 6k of the
     * 52k instructions of a long-poll (callgrind). */
    struct {
        lua_State *co;
        int ref;
    } idle_co[LX_IDLE_COROUTINES];
    int nidle_co;
    /* CORS (cors.c): the app's policy (sluice.config{cors=...}), the
     * routes' own (sluice.route's cors option, by handler ref); cors_on
     * once any was set (else requests skip the check). */
    struct cors_policy *cors;
    struct lx_route_cors {
        intptr_t handler;
        struct cors_policy *policy;
        bool off; /* cors = false: no CORS for this route */
    } *route_cors;
    int nroute_cors;
    bool cors_on;
};

/* cors.c.  lx_cors_config: sluice.config's cors value at idx (a table, or
 * false for none) becomes the app's policy.  lx_cors_route: sluice.route's
 * options table at idx: *out the route's policy (NULL: none given);
 * returns 1 for cors = false.  Both raise on a bad value, allocating
 * nothing then.  lx_cors_add_route: keeps it for the handler (-1: no
 * memory; p not taken).  lx_cors_request: applies the policy to a request
 * before its route runs; true when it answered (a preflight, or a 403). */
void lx_cors_config(lua_State *L, lx_app *app, int idx);
int lx_cors_route(lua_State *L, lx_app *app, int idx, struct cors_policy **out);
int lx_cors_add_route(lx_app *app, intptr_t handler, struct cors_policy *p, bool off);
void lx_cors_free(lx_app *app);
bool lx_cors_request(lx_app *app, conn *c, http_request *req, int rr, const route_match *m);

/* A coroutine running app code: a request handler (c set), a timer, or a
 * subscription's on_open, on_message or on_close (callback set). */
typedef struct lx_task {
    lx_budget budget;
    bool waiting; /* yielded in a sluice call that will resume it */
    lx_app *app;
    lua_State *co;
    int co_ref;
    conn *c;            /* NULL for a timer or a callback */
    http_request *req;  /* valid during the first resume only */
    route_match *match; /* idem */
    intptr_t handler;   /* its route's handler (registry ref); 0 for a timer */
    /* A callback's task: its name (logs), and where its client's session
     * is read at each resume (NULL, or *session NULL once the client has
     * gone: the hooks clear it, so a resumed task never reaches a freed
     * session).  While it runs that session is app->publisher and
     * app->origin: what it publishes is paced by that client and
     * skip_self knows it (sluice.publish queues there instead of
     * waiting).  on_end runs once, as it ends (ok: it returned), before
     * it is freed. */
    const char *callback;
    struct sub_session *const *session;
    void (*on_end)(struct lx_task *t, bool ok);
    void *end_ud;
} lx_task;

static inline lx_app *app_of(lua_State *L)
{
    return *(lx_app **)lua_getextraspace(L);
}

/* This thread's loop, which its timers run on (NULL under --check and on
 * the main thread: timers are then inert). */
extern __thread struct ev_loop *lx_loop;

/* A task on a new coroutine of app, pinning app and c (may be NULL).  The
 * caller pushes the body function and its arguments on t->co, then calls
 * lx_task_run(t, nargs). */
lx_task *lx_task_new(lx_app *app, conn *c);
void lx_task_run(lx_task *t, int nargs);

/* Counts a script error for /metrics. */
void lx_count_error(void);

/* The count hook that enforces the instruction budget and the deadline. */
void lx_budget_hook(lua_State *L, lua_Debug *ar);

/* Charges n instructions of work done in C (the pattern matcher) to the
 * running budget; raises, as the hook does, when the budget or the
 * deadline is past.  Nothing when no script code runs. */
void lx_budget_charge(lua_State *L, long long n);

/* Replaces string.find, match, gmatch and gsub with the counted matcher
 * (pattern.c). */
void lx_open_patterns(lua_State *L);

/* Starts b for one run: `limit` instructions (kept if b already counts),
 * and a deadline `timeout` seconds from now. */
void lx_budget_arm(lx_budget *b, long long limit, double timeout);

/* The C side of the Lua layer, entered from the core (a callback, a
 * commit, a timer), may work on a state whose script is running further
 * up the stack, outside that script's protected call: the memory limit
 * is lifted until the matching lx_unprotected_end. */
static inline bool lx_unprotected_begin(lx_app *app)
{
    bool was = app->mem.enforce;
    app->mem.enforce = false;
    return was;
}
static inline void lx_unprotected_end(lx_app *app, bool was)
{
    app->mem.enforce = was;
}

/* getmetatable() of the objects with metatable `tname` (made by C code)
 * returns false, so that a script cannot add a finalizer to objects made
 * later (finalizers run outside the budget). */
void lx_hide_metatable(lua_State *L, const char *tname);

/* Adds sluice.timer, sluice.every (timer.c) and sluice.hmac_sha256,
 * sluice.jwt, sluice.hex (crypto.c) to the module table on the stack top. */
void lx_open_timers(lua_State *L);
void lx_open_crypto(lua_State *L);
/* Adds sluice.jwt and sluice.jws (jwt.c), after sluice.http (they fetch
 * key sets with it). */
void lx_open_jwt(lua_State *L);

/* Stops and frees a generation's timers (reload, exit). */
void lx_cancel_timers(lx_app *app);

#define SUB_MT "sluice.subscription"
#define CONN_MT "sluice.conn"
#define REQ_MT "sluice.request"

/* A protected run of script code (a resume or a pcall): its budget is the
 * one the hook charges, and the memory limit holds. */
typedef struct lx_run {
    lx_budget *prev;
    lx_task *prev_task;
    bool prev_enforce;
    unsigned long long refused; /* app->mem.refused when the run began */
} lx_run;

/* ---- api.c ---- */

/* The text of an overrun (LX_OVER_*), for logs. */
const char *lx_over_what(int exceeded);
/* The message handler of every protected call: the error with a traceback. */
int lx_traceback(lua_State *L);
/* Raises when the running budget is spent: side effects (publish, send)
 * stop once a run is over, even when the script catches the error. */
void lx_check_budget(lua_State *L);
/* A protected run of script code begins (b charged by the hook, the memory
 * limit enforced) and ends; lx_run_failure is the log message of one that
 * failed with status st. */
void lx_run_enter(lx_app *app, lx_run *r, lx_budget *b);
void lx_run_leave(lx_app *app, lx_run *r, lua_State *L);
const char *lx_run_failure(lx_app *app, const lx_run *r, const lx_budget *b, int st);

/* ---- config.c ---- */

/* Argument checks whose errors name the argument and the option:
 * lx_check_field (the value on the stack top has type `type`) and
 * lx_field_integer (it is an integer). */
void lx_check_field(lua_State *L, int arg, int type, const char *key);
lua_Integer lx_field_integer(lua_State *L, int arg, const char *key);
/* Adds sluice.config to the module table on the stack top. */
void lx_open_config(lua_State *L);

/* ---- publish.c ---- */

/* Where a refused event name came from (sluice_invalid_events_total). */
enum { BADEV_PUBLISH, BADEV_ON_PUBLISH, BADEV_FILTER, BADEV_KINDS };
/* Counts and logs (rate-limited) an event name hub_event_valid refused. */
void lx_count_bad_event(int kind, const char *topic, size_t tlen, size_t elen);
/* Adds publish, topic, metrics, on_publish, valid_topic, valid_event. */
void lx_open_publish(lua_State *L);

/* ---- subscribe.c ---- */

/* req:subscribe(topics [, opts]): the subscription value a handler returns. */
int lx_req_subscribe(lua_State *L);
/* The handler returned the subscription at idx: start it on t's connection
 * (or answer the error). */
void lx_start_subscription(lx_task *t, int idx);
/* The subscription's and the conn object's metatables. */
void lx_sub_metatables(lx_app *app, lua_State *L);

/* ---- request.c ---- */

/* sluice.route keeps "METHOD pattern" of each handler (by its registry
 * ref), for the log line of a handler that returns a wrong value. */
void lx_note_route(lua_State *L, int ref, const char *method, const char *pattern);
/* The Prometheus text of /metrics with the Lua layer's rows (malloc'd,
 * *len its length; NULL when memory is short): publish.c. */
char *lx_metrics_text(lx_app *app, size_t *len);

/* Whether the value at idx has the metatable registered at mt_ref. */
bool lx_has_metatable(lua_State *L, int idx, int mt_ref);
/* Whether the value at idx is a req, and makes all its lazy fields (for
 * code that reads tables raw, as lua-cjson does). */
bool lx_is_req(lua_State *L, int idx);
void lx_req_build_all(lua_State *L, int idx);
/* The req metatable and the registry table behind the lazy fields. */
void lx_req_metatable(lx_app *app, lua_State *L);

/* ---- sandbox.c ---- */

/* The allocator of every Lua state (ud: its lx_mem) and its panic function. */
void *lx_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
int lx_panic(lua_State *L);
/* Makes the budget and the memory limit unbeatable from Lua: the library
 * functions that could switch them off are wrapped or refused. */
void lx_guard_libraries(lua_State *L);
/* Marks L's run as stopped by the budget (its coroutines are never closed
 * hookless). */
void lx_mark_stopped(lua_State *L);

#endif
