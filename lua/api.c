/* api.c: the app runtime (see api.h): the budget and its runs, loading a
 * script generation, reload, and the `sluice` module table, whose
 * functions live beside what they serve (config.c, publish.c,
 * subscribe.c, request.c, timer.c, crypto.c).
 *
 * Budget: a count hook charges every HOOK_STEP VM instructions to the task
 * that runs (app->running), so the budget also covers coroutines a handler
 * creates (they share the app pointer kept in each thread's extra space).
 * Once a task is over budget every further hook raises again, so a script
 * that catches the error with pcall is stopped anyway. */
#include "lua/api.h"
#include "lua/http.h"
#include "lua/internal.h"
#include "lua/shared.h"

#include "core/cors.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/route.h"
#include "core/subscriber.h"
#include "storage/store.h"
#include "storage/writer.h"

#include <lauxlib.h>
#include <lua-cjson.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <ctype.h>
#include <limits.h>

/* Every worker's: changed and read with relaxed atomics. */
static unsigned long long script_errors;
unsigned long long lx_script_errors(void)
{
    return __atomic_load_n(&script_errors, __ATOMIC_RELAXED);
}
void lx_count_error(void)
{
    __atomic_add_fetch(&script_errors, 1, __ATOMIC_RELAXED);
}

__thread struct ev_loop *lx_loop;
static __thread int worker_id = 1, worker_count = 1;

void lx_set_worker(int id, int count)
{
    worker_id = id;
    worker_count = count;
}

static double now_mono(void)
{
    struct timespec ts;
    /* The coarse clock costs no system call and no TSC read; its tick
     * (a few ms) is far below any deadline. */
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void lx_budget_arm(lx_budget *b, long long limit, double timeout)
{
    b->limit = limit;
    b->timeout = timeout;
    b->deadline = timeout > 0 ? now_mono() + timeout : 0;
}

const char *lx_over_what(int exceeded)
{
    return exceeded == LX_OVER_TIME ? "time limit exceeded" : "instruction budget exceeded";
}

/* Raises the overrun's error on L and makes every further instruction of
 * L raise it again, until control is back in C: a pcall, an xpcall
 * handler or a loop around them gets at most one instruction before the
 * next error, so an overrun unwinds to the task however deep the pcalls
 * nest.  Another coroutine of the run, resumed from L, hits its own next
 * hook within HOOK_STEP instructions and is switched the same way. */
void lx_mark_stopped(lua_State *L);

static int budget_raise(lua_State *L, lx_budget *b)
{
    if (lua_gethookcount(L) != 1) lua_sethook(L, lx_budget_hook, LUA_MASKCOUNT, 1);
    lx_mark_stopped(L);
    if (b->exceeded == LX_OVER_TIME)
        return luaL_error(L, "time limit exceeded (%f s)", (lua_Number)b->timeout);
    return luaL_error(L, "instruction budget exceeded (%I instructions)", (lua_Integer)b->limit);
}

void lx_budget_charge(lua_State *L, long long n)
{
    lx_app *app = app_of(L);
    lx_budget *b = app ? app->running : NULL;
    if (!b) return;
    if (!b->exceeded) {
        if (n > b->limit - b->used) /* (no overflow for any n) */
            b->exceeded = LX_OVER_INSTRUCTIONS;
        else if ((b->used += n) > b->limit)
            b->exceeded = LX_OVER_INSTRUCTIONS;
        else if (b->deadline > 0 && now_mono() > b->deadline)
            b->exceeded = LX_OVER_TIME;
        else
            return;
    }
    budget_raise(L, b);
}

void lx_budget_hook(lua_State *L, lua_Debug *ar)
{
    lx_app *app = app_of(L);
    lx_budget *b = app ? app->running : NULL;
    if (!b) return;
    if (!b->exceeded) {
        b->used += HOOK_STEP;
        if (b->used > b->limit)
            b->exceeded = LX_OVER_INSTRUCTIONS;
        else if (b->deadline > 0 && now_mono() > b->deadline)
            b->exceeded = LX_OVER_TIME;
        else
            return;
    }
    budget_raise(L, b);
}

int lx_traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg) msg = luaL_typename(L, 1);
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Side effects stop once a run is over budget, even when a script catches
 * the overrun with pcall and tries to go on. */
void lx_check_budget(lua_State *L)
{
    lx_app *app = app_of(L);
    if (app && app->running && app->running->exceeded) budget_raise(L, app->running);
}

void lx_run_enter(lx_app *app, lx_run *r, lx_budget *b)
{
    r->prev = app->running;
    r->prev_task = app->running_task;
    r->prev_enforce = app->mem.enforce;
    r->refused = app->mem.refused;
    app->running = b;
    app->mem.enforce = true;
}

/* Ends the run: what follows is C working outside a protected call (the
 * limit is lifted until the caller's scope ends), and thread L counts in
 * steps of HOOK_STEP again if the run left it raising at every
 * instruction.  (An enclosing run on the same thread that is over budget
 * itself is switched back at its next hook, HOOK_STEP instructions on.) */
void lx_run_leave(lx_app *app, lx_run *r, lua_State *L)
{
    app->running = r->prev;
    app->running_task = r->prev_task;
    app->mem.enforce = false;
    if (lua_gethookcount(L) != HOOK_STEP) lua_sethook(L, lx_budget_hook, LUA_MASKCOUNT, HOOK_STEP);
    /* A run that met the limit leaves its garbage behind (a failed run's
     * whole heap): collect it now, since a buffer that lauxlib grows
     * through the allocator directly is refused without the collection
     * Lua makes before it refuses its own allocations. */
    if (app->mem.refused != r->refused) lua_gc(app->L, LUA_GCCOLLECT);
}

/* The log message for a run that failed with status st. */
const char *lx_run_failure(lx_app *app, const lx_run *r, const lx_budget *b, int st)
{
    if (b->exceeded == LX_OVER_TIME) return "script stopped: time limit exceeded";
    if (b->exceeded) return "script stopped: instruction budget exceeded";
    if (st == LUA_ERRMEM || app->mem.refused != r->refused)
        return "script stopped: memory limit exceeded";
    return "script error";
}

/* ---- routes, log, json ------------------------------------------------- */

static int l_route(lua_State *L)
{
    lx_app *app = app_of(L);
    const char *method = luaL_checkstring(L, 1);
    const char *pattern = luaL_checkstring(L, 2);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    if (!app->loading) return luaL_error(L, "sluice.route must be called when the script loads");
    char m[16];
    size_t mlen = strlen(method);
    if (mlen == 0 || mlen >= sizeof(m)) return luaL_argerror(L, 1, "not an HTTP method");
    /* Options (a 4th argument): checked, and the CORS policy made, first. */
    cors_policy *cors = NULL;
    int cors_off = lua_isnoneornil(L, 4) ? 0 : lx_cors_route(L, app, 4, &cors);
    for (size_t i = 0; i <= mlen; i++)
        m[i] = (char)toupper((unsigned char)method[i]);
    if (strcmp(m, "ANY") == 0) strcpy(m, "*");
    lua_pushvalue(L, 3);
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lx_note_route(L, ref, m, pattern); /* (a ref given back is renamed when reused) */
    char err[256] = "";
    if (route_add(app->routes, m, pattern, ref, err, sizeof(err)) < 0) {
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        cors_policy_free(cors);
        return luaL_argerror(L, 2, err);
    }
    if ((cors || cors_off) && lx_cors_add_route(app, ref, cors, cors_off) < 0) {
        cors_policy_free(cors);
        return luaL_error(L, "sluice.route: out of memory");
    }
    return 0;
}

static int l_log(lua_State *L)
{
    const char *lvl = luaL_checkstring(L, 1);
    int level = log_level_parse(lvl);
    if (level < 0 || level == LOG_OFF) return luaL_argerror(L, 1, "debug, info, warn or error");
    if (!log_enabled((log_level)level)) return 0;
    luaL_Buffer b;
    int n = lua_gettop(L);
    luaL_buffinit(L, &b);
    for (int i = 2; i <= n; i++) {
        if (i > 2) luaL_addchar(&b, ' ');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    lua_Debug ar;
    char where[256] = "?";
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar))
        snprintf(where, sizeof(where), "%s:%d", ar.short_src, ar.currentline);
    LOG_KV((log_level)level, lua_tostring(L, -1), LOG_S("src", where));
    return 0;
}

/* sluice.json(status, value) -> status, encoded value, JSON content type. */
static int l_json_call(lua_State *L)
{
    lua_Integer status = luaL_checkinteger(L, 2);
    luaL_checkany(L, 3);
    if (lx_is_req(L, 3)) lx_req_build_all(L, 3); /* cjson reads tables raw */
    lua_pushinteger(L, status);
    lua_pushvalue(L, lua_upvalueindex(1)); /* cjson.encode */
    lua_pushvalue(L, 3);
    lua_call(L, 1, 1);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "application/json");
    lua_setfield(L, -2, "content-type");
    return 3;
}

static void push_json_table(lua_State *L)
{
    luaL_requiref(L, "cjson", luaopen_cjson, 0);
    int cj = lua_gettop(L);
    /* Slashes need no escape in JSON; turn it off where the library can. */
    lua_getfield(L, cj, "encode_escape_forward_slash");
    if (lua_isfunction(L, -1)) {
        lua_pushboolean(L, 0);
        lua_call(L, 1, 0);
    } else {
        lua_pop(L, 1);
    }
    lua_createtable(L, 0, 3);
    lua_getfield(L, cj, "encode");
    lua_setfield(L, -2, "encode");
    lua_getfield(L, cj, "decode");
    lua_setfield(L, -2, "decode");
    lua_getfield(L, cj, "null");
    lua_setfield(L, -2, "null");
    lua_createtable(L, 0, 1);
    lua_getfield(L, cj, "encode");
    lua_pushcclosure(L, l_json_call, 1);
    lua_setfield(L, -2, "__call");
    lua_setmetatable(L, -2);
    lua_remove(L, cj);
}

static void create_metatables(lx_app *app, lua_State *L);
static int luaopen_sluice(lua_State *L);

/* ---- loading ----------------------------------------------------------- */

size_t lx_app_route_count(const lx_app *app)
{
    return route_count(app->routes);
}

static void app_free(lx_app *app)
{
    lx_cancel_timers(app);
    route_table_free(app->routes, NULL, NULL); /* lua_close frees the handlers */
    lx_cors_free(app);
    hub_rules_free(&app->rules);
    if (app->L) lua_close(app->L);
    free(app->script);
    free(app);
}

void lx_app_release(lx_app *app)
{
    if (app && --app->refs == 0) app_free(app);
}

/* Lets a script `require` modules that sit beside it. */
static void add_script_dir_to_path(lua_State *L, const char *path)
{
    const char *slash = strrchr(path, '/');
    lua_getglobal(L, "package");
    if (slash)
        lua_pushlstring(L, path, (size_t)(slash - path));
    else
        lua_pushliteral(L, ".");
    lua_pushliteral(L, "/?.lua;");
    lua_getfield(L, -3, "path");
    lua_concat(L, 3);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
}

lx_app *lx_app_load(const char *path, hub *h, lx_config *cfg, char *err, size_t errlen)
{
    lx_app *app = calloc(1, sizeof(lx_app));
    lx_config scratch;
    if (!app) goto oom;
    app->refs = 1;
    app->hub = h;
    app->worker_id = worker_id;
    app->worker_count = worker_count;
    app->on_publish = LUA_NOREF;
    app->budget = DEFAULT_BUDGET;
    app->timeout = DEFAULT_TIMEOUT;
    app->mem.limit = DEFAULT_MEMORY;
    app->routes = route_table_new();
    app->script = strdup(path ? path : "scripts/default.lua");
    app->L = lua_newstate(lx_alloc, &app->mem);
    if (!app->routes || !app->script || !app->L) goto oom;
    lua_State *L = app->L;
    *(lx_app **)lua_getextraspace(L) = app;
    lua_atpanic(L, lx_panic);
    luaL_openlibs(L);
    lx_guard_libraries(L);
    lx_open_patterns(L);
    /* Each request runs in a coroutine that dies young: the generational
     * collector frees those at once instead of letting garbage grow to
     * twice the live heap. */
    lua_gc(L, LUA_GCGEN, 0, 0);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_sluice);
    lua_setfield(L, -2, "sluice");
    lua_pop(L, 1);
    create_metatables(app, L);
    app->hookL = lua_newthread(L);
    luaL_ref(L, LUA_REGISTRYINDEX); /* anchored for the state's life */
    lua_sethook(app->hookL, lx_budget_hook, LUA_MASKCOUNT, HOOK_STEP);

    lua_pushcfunction(L, lx_traceback);
    int st;
    if (path) {
        add_script_dir_to_path(L, path);
        st = luaL_loadfilex(L, path, "t");
    } else {
        st = luaL_loadbufferx(L, lx_default_app_source, lx_default_app_size, "@scripts/default.lua",
                              "t");
    }
    if (st != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        goto fail;
    }
    if (!cfg) {
        memset(&scratch, 0, sizeof(scratch));
        cfg = &scratch;
    }
    cfg->instruction_budget = 0;
    cfg->script_timeout = 0;
    cfg->script_memory = 0;
    app->cfg = cfg;
    app->loading = true;
    lx_budget load = {0};
    lx_budget_arm(&load, LOAD_BUDGET, LOAD_TIMEOUT);
    lx_run run;
    lx_run_enter(app, &run, &load);
    lua_sethook(L, lx_budget_hook, LUA_MASKCOUNT, HOOK_STEP);
    st = lua_pcall(L, 0, 0, -2);
    lx_run_leave(app, &run, L);
    lua_sethook(L, NULL, 0, 0);
    app->loading = false;
    app->cfg = NULL;
    if (cfg->instruction_budget > 0) app->budget = cfg->instruction_budget;
    if (cfg->script_timeout > 0) app->timeout = cfg->script_timeout;
    /* (the memory limit took effect when sluice.config set it) */
    if (cfg == &scratch) lx_config_free(&scratch);
    if (st == LUA_OK && load.exceeded) {
        /* Caught by pcall, and the chunk ended before the next check. */
        lua_pushfstring(L, "%s: %s (caught by pcall)", app->script, lx_over_what(load.exceeded));
        st = LUA_ERRRUN;
    }
    if (st != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        if (!msg) msg = "(error object is not a string)";
        if (!load.exceeded && (st == LUA_ERRMEM || app->mem.refused != run.refused))
            snprintf(err, errlen, "%s: memory limit exceeded (%zu bytes): %s", app->script,
                     app->mem.limit, msg);
        else
            snprintf(err, errlen, "%s", msg);
        goto fail;
    }
    lua_settop(L, 0);
    /* The rules replace the previous run's only now that it loaded. */
    if (h && hub_set_rules(h, &app->rules) != 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    return app;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    if (app) app_free(app);
    return NULL;
}

int lx_app_retention(const lx_app *app, hub_retention *out, char *err, size_t errlen)
{
    return hub_rules_single(&app->rules, out, err, errlen);
}

/* ---- runtime ----------------------------------------------------------- */

void lx_set_loop(struct ev_loop *loop)
{
    /* This thread's: each worker has its loop. */
    lx_loop = loop;
}

void lx_runtime_init(lx_runtime *rt, server *srv, hub *h, const char *script_path, lx_app *app)
{
    rt->hub = h;
    rt->srv = srv;
    rt->script_path = script_path;
    rt->app = app;
}

int lx_reload(lx_runtime *rt)
{
    char err[2048];
    lx_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    server_limits_default(&cfg.limits);
    lx_app *app = lx_app_load(rt->script_path, rt->hub, &cfg, err, sizeof(err));
    if (!app) {
        LOG_KV(LOG_ERROR, "reload failed: the running app stays", LOG_S("error", err));
        lx_config_free(&cfg);
        return SL_EINVAL;
    }
    /* Limits follow the new script; addresses, TLS files, data and workers
     * are read at start only. */
    rt->srv->limits = cfg.limits;
    lx_config_free(&cfg);
    lx_app *old = rt->app;
    rt->app = app;
    lx_cancel_timers(old); /* the new script set up its own */
    lx_app_release(old);
    LOG_KV(LOG_DEBUG, "worker reloaded app", LOG_S("script", app->script),
           LOG_I("routes", (long long)route_count(app->routes)), LOG_I("worker", app->worker_id));
    return 0;
}

void lx_runtime_stop_timers(lx_runtime *rt)
{
    if (rt->app) lx_cancel_timers(rt->app);
}

void lx_runtime_destroy(lx_runtime *rt)
{
    lx_app_release(rt->app);
    rt->app = NULL;
}

static void create_metatables(lx_app *app, lua_State *L)
{
    lx_sub_metatables(app, L);
    lx_req_metatable(app, L);
}

static int luaopen_sluice(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"route", l_route},
        {"log", l_log},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    lx_open_config(L);
    lx_open_publish(L);
    lx_open_timers(L);
    lx_open_crypto(L);
    lx_open_http(L);
    lx_open_jwt(L);
    lxs_open(L);
    push_json_table(L);
    lua_setfield(L, -2, "json");
    lua_pushliteral(L, SLUICE_VERSION);
    lua_setfield(L, -2, "version");
    lx_app *app = app_of(L);
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, app->worker_id);
    lua_setfield(L, -2, "id");
    lua_pushinteger(L, app->worker_count);
    lua_setfield(L, -2, "count");
    lua_setfield(L, -2, "worker");
    return 1;
}
