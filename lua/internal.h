/* internal.h: what the files of the Lua layer share (not a public face:
 * the rest of sluice uses lua/api.h).  api.c holds the runtime, requests and
 * subscriptions; timer.c the timers; crypto.c HMAC and JWT; pattern.c the
 * string library's pattern functions, with their work counted. */
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
    lx_budget *running;            /* the budget charged by the hook */
    struct lx_task *running_task;  /* the coroutine being resumed */
    long long budget;              /* per handler run */
    double timeout;                /* seconds per resume of a handler or callback */
    char *script;                  /* chunk name for logs */
    hub *hub;                      /* where sluice.publish goes (NULL under --check) */
    int worker_id, worker_count;   /* the worker it was loaded for (1-based) */
    lx_timer *timers;              /* sluice.timer / sluice.every of this generation */
    int on_publish;                /* registry ref of a table pattern -> function */
    const void *origin;            /* publisher identity during on_message (skip_self) */
    struct sub_session *publisher; /* the WebSocket client whose on_message runs */
    /* The metatables every request uses, by registry ref (an array slot)
     * rather than by name (a string lookup: about 150 instructions). */
    int req_mt_ref, sub_mt_ref;
    /* Coroutines whose task returned, kept for the next task: a new
     * thread, its registry slot and its collection were about 6k of the
     * 52k instructions of a long-poll (callgrind). */
    struct {
        lua_State *co;
        int ref;
    } idle_co[LX_IDLE_COROUTINES];
    int nidle_co;
};

/* A coroutine running app code: a request handler (c set) or a timer. */
typedef struct lx_task {
    lx_budget budget;
    bool waiting; /* yielded in a sluice call that will resume it */
    lx_app *app;
    lua_State *co;
    int co_ref;
    conn *c;            /* NULL for a timer */
    http_request *req;  /* valid during the first resume only */
    route_match *match; /* idem */
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

/* Stops and frees a generation's timers (reload, exit). */
void lx_cancel_timers(lx_app *app);

#endif
