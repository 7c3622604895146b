/* timer.c: sluice.timer(seconds, fn) and sluice.every(seconds, fn).
 *
 * Each firing runs fn in a new task (a coroutine under the instruction
 * budget), so it may publish and wait for the commit like a handler.  Timers
 * belong to the script generation that made them: a reload cancels them and
 * the new script sets up its own.  Without a running loop (--check, the
 * first load before storage opens) a timer is accepted and never fires.
 *
 * The script runs once per worker, but a timer made by its top-level code
 * is the app's, not the worker's: it fires on the first worker only, so a
 * timer that publishes publishes once.  {all_workers = true} makes it fire
 * on every worker (per-worker housekeeping); a timer made by a handler or
 * another timer fires on the worker that made it. */
#include "lua/internal.h"

#include "core/log.h"

#include <stdlib.h>

#define TIMER_MT "sluice.timer"

struct lx_timer {
    ev_timer w;
    lx_app *app;
    int fn_ref;
    int ud_ref; /* the script's handle, cleared when the timer goes */
    bool repeat;
    bool inert; /* another worker's: never started */
    lx_timer *next;
};

typedef struct timer_ud {
    lx_timer *t; /* NULL once cancelled or fired (one-shot) */
} timer_ud;

static void timer_release(lx_timer *t);

static void timer_release(lx_timer *t)
{
    lx_app *app = t->app;
    bool enforce = lx_unprotected_begin(app);
    if (lx_loop) ev_timer_stop(lx_loop, &t->w);
    luaL_unref(app->L, LUA_REGISTRYINDEX, t->fn_ref);
    lua_rawgeti(app->L, LUA_REGISTRYINDEX, t->ud_ref);
    ((timer_ud *)lua_touserdata(app->L, -1))->t = NULL;
    lua_pop(app->L, 1);
    luaL_unref(app->L, LUA_REGISTRYINDEX, t->ud_ref);
    lx_timer **pp = &app->timers;
    while (*pp && *pp != t)
        pp = &(*pp)->next;
    if (*pp) *pp = t->next;
    free(t);
    lx_unprotected_end(app, enforce);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    lx_timer *t = w->data;
    lx_app *app = t->app;
    app->refs++;
    bool enforce = lx_unprotected_begin(app);
    lx_task *task = lx_task_new(app, NULL);
    if (!task) {
        LOG_KV(LOG_ERROR, "timer skipped: out of memory");
    } else {
        lua_rawgeti(task->co, LUA_REGISTRYINDEX, t->fn_ref);
        if (!t->repeat) timer_release(t); /* the task's stack keeps fn alive */
        lx_task_run(task, 0);
    }
    lx_unprotected_end(app, enforce);
    lx_app_release(app);
}

static int start_timer(lua_State *L, bool repeat)
{
    lx_app *app = app_of(L);
    lua_Number secs = luaL_checknumber(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (!(secs >= 0.001 && secs <= 365 * 86400.0))
        return luaL_argerror(L, 1, "seconds from 0.001 to one year");
    bool all_workers = false;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_getfield(L, 3, "all_workers");
        all_workers = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    lx_timer *t = calloc(1, sizeof(lx_timer));
    if (!t) return luaL_error(L, "out of memory");
    timer_ud *u = lua_newuserdatauv(L, sizeof(timer_ud), 0);
    u->t = t;
    luaL_setmetatable(L, TIMER_MT);
    t->app = app;
    t->repeat = repeat;
    t->inert = app->loading && app->worker_id > 1 && !all_workers;
    lua_pushvalue(L, 2);
    t->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    t->ud_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    t->next = app->timers;
    app->timers = t;
    ev_timer_init(&t->w, timer_cb, secs, repeat ? secs : 0.);
    t->w.data = t;
    if (lx_loop && !t->inert) ev_timer_start(lx_loop, &t->w);
    return 1;
}

static int l_timer(lua_State *L)
{
    return start_timer(L, false);
}
static int l_every(lua_State *L)
{
    return start_timer(L, true);
}

/* timer:cancel(): stops it; harmless when it already fired or was cancelled. */
static int l_cancel(lua_State *L)
{
    timer_ud *u = luaL_checkudata(L, 1, TIMER_MT);
    if (u->t) timer_release(u->t); /* clears u->t */
    return 0;
}

void lx_app_start_timers(lx_app *app)
{
    if (!lx_loop) return;
    for (lx_timer *t = app->timers; t; t = t->next)
        if (!t->inert && !ev_is_active(&t->w)) ev_timer_start(lx_loop, &t->w);
}

void lx_cancel_timers(lx_app *app)
{
    while (app->timers)
        timer_release(app->timers);
}

void lx_open_timers(lua_State *L)
{
    if (luaL_newmetatable(L, TIMER_MT)) {
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, l_cancel);
        lua_setfield(L, -2, "cancel");
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lx_hide_metatable(L, TIMER_MT);
    lua_pushcfunction(L, l_timer);
    lua_setfield(L, -2, "timer");
    lua_pushcfunction(L, l_every);
    lua_setfield(L, -2, "every");
}
