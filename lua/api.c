/* api.c: the app runtime and the `sluice` Lua module (see api.h).
 *
 * Budget: a count hook charges every HOOK_STEP VM instructions to the task
 * that runs (app->running), so the budget also covers coroutines a handler
 * creates (they share the app pointer kept in each thread's extra space).
 * Once a task is over budget every further hook raises again, so a script
 * that catches the error with pcall is stopped anyway. */
#include "lua/api.h"
#include "lua/internal.h"

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

/* Event names refused by hub_event_valid, by where they came from: the
 * one check every path to storage or to a subscriber goes through
 * (sluice.publish, so HTTP and WebSocket publishes too; on_publish; a
 * filter).  Counted and logged, at most a line per 10 s each: a peer or a
 * script can cause them at any rate.  The name itself is not logged (it is
 * not valid text), its length is. */
enum { BADEV_PUBLISH, BADEV_ON_PUBLISH, BADEV_FILTER, BADEV_KINDS };
static const char *const badev_source[BADEV_KINDS] = {"publish", "on_publish", "filter"};
static unsigned long long bad_events[BADEV_KINDS];
static log_limit bad_event_log[BADEV_KINDS];

static void count_bad_event(int kind, const char *topic, size_t tlen, size_t elen)
{
    __atomic_add_fetch(&bad_events[kind], 1, __ATOMIC_RELAXED);
    LOG_KV_LIMITED(&bad_event_log[kind], 10.0, kind == BADEV_PUBLISH ? LOG_INFO : LOG_WARN,
                   "invalid event name", LOG_S("source", badev_source[kind]),
                   LOG_SN("topic", topic, tlen), LOG_I("event_bytes", elen));
}

#define SUB_MT "sluice.subscription"
#define CONN_MT "sluice.conn"
#define REQ_MT "sluice.request"
#define REF_NOT_FUNCTION (-100) /* opt_ref: the option is set but not a function */

/* req and its fields built on demand (see push_req). */
static int l_req_index(lua_State *L);
static int l_req_pairs(lua_State *L);
static int l_req_newindex(lua_State *L);
static bool is_req(lua_State *L, int idx);
static void build_all_lazy(lua_State *L, int idx);
static const char req_src_key = 0; /* registry: the weak table req -> req_src */

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

static const char *over_what(int exceeded)
{
    return exceeded == LX_OVER_TIME ? "time limit exceeded" : "instruction budget exceeded";
}

/* Raises the overrun's error on L and makes every further instruction of
 * L raise it again, until control is back in C: a pcall, an xpcall
 * handler or a loop around them gets at most one instruction before the
 * next error, so an overrun unwinds to the task however deep the pcalls
 * nest.  Another coroutine of the run, resumed from L, hits its own next
 * hook within HOOK_STEP instructions and is switched the same way. */
static void mark_stopped(lua_State *L);

static int budget_raise(lua_State *L, lx_budget *b)
{
    if (lua_gethookcount(L) != 1) lua_sethook(L, lx_budget_hook, LUA_MASKCOUNT, 1);
    mark_stopped(L);
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

static int traceback_handler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg) msg = luaL_typename(L, 1);
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* ---- config ------------------------------------------------------------ */

void lx_config_free(lx_config *cfg)
{
    for (int i = 0; i < cfg->nlisten; i++)
        free(cfg->listen[i]);
    for (int i = 0; i < cfg->ntls_listen; i++)
        free(cfg->tls_listen[i]);
    free(cfg->tls_cert);
    free(cfg->tls_key);
    free(cfg->data_dir);
    cfg->nlisten = cfg->ntls_listen = 0;
    cfg->tls_cert = cfg->tls_key = cfg->data_dir = NULL;
}

/* Replaces out with a copy of the string or list of strings at the top of
 * the stack.  Every element is checked before the old list is freed, so an
 * error leaves out as it was (a Lua error is a longjmp: nothing half-done
 * may stay behind for lx_config_free). */
static void config_addr_list(lua_State *L, const char *what, char **out, int *n)
{
    char *fresh[LX_MAX_LISTEN];
    int nfresh = 0;
    if (lua_type(L, -1) == LUA_TSTRING) {
        fresh[nfresh++] = strdup(lua_tostring(L, -1));
    } else {
        if (!lua_istable(L, -1))
            luaL_error(L, "sluice.config: %s must be a string or a list", what);
        lua_Integer len = luaL_len(L, -1);
        if (len > LX_MAX_LISTEN)
            luaL_error(L, "sluice.config: at most %d %s addresses", LX_MAX_LISTEN, what);
        for (lua_Integer i = 1; i <= len; i++) {
            int type = lua_geti(L, -1, i);
            lua_pop(L, 1);
            if (type != LUA_TSTRING)
                luaL_error(L, "sluice.config: %s[%d] must be a string", what, (int)i);
        }
        for (lua_Integer i = 1; i <= len; i++) {
            lua_geti(L, -1, i);
            fresh[nfresh++] = strdup(lua_tostring(L, -1));
            lua_pop(L, 1);
        }
    }
    bool oom = false;
    for (int i = 0; i < nfresh; i++)
        oom |= fresh[i] == NULL;
    if (oom) {
        for (int i = 0; i < nfresh; i++)
            free(fresh[i]);
        luaL_error(L, "sluice.config: out of memory");
    }
    for (int i = 0; i < *n; i++)
        free(out[i]);
    memcpy(out, fresh, sizeof(fresh[0]) * (size_t)nfresh);
    *n = nfresh;
}

/* Replaces *out with a copy of the string at the top of the stack, which
 * the caller has checked. */
static void config_string(lua_State *L, char **out)
{
    char *copy = strdup(lua_tostring(L, -1));
    if (!copy) luaL_error(L, "sluice.config: out of memory");
    free(*out);
    *out = copy;
}

static double config_positive(lua_State *L, const char *key)
{
    int isnum;
    lua_Number v = lua_tonumberx(L, -1, &isnum);
    if (!isnum || v <= 0) luaL_error(L, "sluice.config: limits.%s must be a positive number", key);
    return v;
}

static void config_limits(lua_State *L, lx_config *cfg)
{
    if (!lua_istable(L, -1)) luaL_error(L, "sluice.config: limits must be a table");
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "sluice.config: limits keys are names");
        const char *k = lua_tostring(L, -2);
        double v = config_positive(L, k);
        server_limits *l = &cfg->limits;
#define LIMIT(name, field, conv)                                                                   \
    if (strcmp(k, name) == 0) {                                                                    \
        l->field = conv;                                                                           \
    } else
        LIMIT("max_header_size", max_header, (size_t)v)
        LIMIT("max_uri_size", max_uri, (size_t)v)
        LIMIT("max_body_size", max_body, (size_t)v)
        LIMIT("max_output_buffer", max_output, (size_t)v)
        LIMIT("max_connections", max_connections, (unsigned)v)
        LIMIT("header_timeout", header_timeout, v)
        LIMIT("min_body_rate", min_body_rate, v)
        LIMIT("idle_timeout", idle_timeout, v)
        LIMIT("tls_handshake_timeout", tls_handshake_timeout, v)
        LIMIT("shutdown_timeout", shutdown_timeout, v)
        if (strcmp(k, "instruction_budget") == 0)
            cfg->instruction_budget = (long long)v;
        else if (strcmp(k, "script_timeout") == 0)
            cfg->script_timeout = v;
        else if (strcmp(k, "max_publish_queue") == 0)
            cfg->max_publish_queue = (size_t)v;
        else if (strcmp(k, "script_memory") == 0)
            cfg->script_memory = v < 1024 * 1024 ? 1024 * 1024 : (size_t)v;
        else
            luaL_error(L, "sluice.config: unknown limit '%s'", k);
#undef LIMIT
        lua_pop(L, 1);
    }
}

/* Checks that the value on top of the stack, option `key` of argument
 * `arg`, has the type wanted; the error names both ("bad argument #2 to
 * 'topic' (backlog must be an integer, not string)"). */
static void check_field(lua_State *L, int arg, int type, const char *key)
{
    if (lua_type(L, -1) != type)
        luaL_argerror(L, arg,
                      lua_pushfstring(L, "%s must be a %s, not %s", key, lua_typename(L, type),
                                      luaL_typename(L, -1)));
}

static lua_Integer field_integer(lua_State *L, int arg, const char *key)
{
    if (!lua_isinteger(L, -1))
        luaL_argerror(
            L, arg, lua_pushfstring(L, "%s must be an integer, not %s", key, luaL_typename(L, -1)));
    return lua_tointeger(L, -1);
}

/* Side effects stop once a run is over budget, even when a script catches
 * the overrun with pcall and tries to go on. */
static void check_budget(lua_State *L)
{
    lx_app *app = app_of(L);
    if (app && app->running && app->running->exceeded) budget_raise(L, app->running);
}

/* A protected run of script code (a resume or a pcall): its budget is the
 * one the hook charges, and the memory limit holds. */
typedef struct lx_run {
    lx_budget *prev;
    lx_task *prev_task;
    bool prev_enforce;
    unsigned long long refused; /* app->mem.refused when the run began */
} lx_run;

static void run_enter(lx_app *app, lx_run *r, lx_budget *b)
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
static void run_leave(lx_app *app, lx_run *r, lua_State *L)
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
static const char *run_failure(lx_app *app, const lx_run *r, const lx_budget *b, int st)
{
    if (b->exceeded == LX_OVER_TIME) return "script stopped: time limit exceeded";
    if (b->exceeded) return "script stopped: instruction budget exceeded";
    if (st == LUA_ERRMEM || app->mem.refused != r->refused)
        return "script stopped: memory limit exceeded";
    return "script error";
}

/* sluice.config{...}: only while the script loads; unknown keys are errors
 * so a typo is caught at --check instead of silently ignored. */
static int l_config(lua_State *L)
{
    lx_app *app = app_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    if (!app->loading || !app->cfg)
        return luaL_error(L, "sluice.config must be called when the script loads");
    lx_config *cfg = app->cfg;
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        if (lua_type(L, -2) != LUA_TSTRING) return luaL_error(L, "sluice.config: keys are names");
        const char *k = lua_tostring(L, -2);
        if (strcmp(k, "listen") == 0) {
            config_addr_list(L, "listen", cfg->listen, &cfg->nlisten);
        } else if (strcmp(k, "tls") == 0) {
            check_field(L, 1, LUA_TTABLE, "tls");
            /* Every type is checked before anything changes (a second
             * call with a bad type once freed the first call's strings
             * and left them to be freed again). */
            if (lua_getfield(L, -1, "cert") != LUA_TNIL) check_field(L, 1, LUA_TSTRING, "tls.cert");
            if (lua_getfield(L, -2, "key") != LUA_TNIL) check_field(L, 1, LUA_TSTRING, "tls.key");
            lua_getfield(L, -3, "listen");
            if (!lua_isnil(L, -1))
                config_addr_list(L, "tls.listen", cfg->tls_listen, &cfg->ntls_listen);
            lua_pop(L, 1);
            if (!lua_isnil(L, -1)) config_string(L, &cfg->tls_key);
            lua_pop(L, 1);
            if (!lua_isnil(L, -1)) config_string(L, &cfg->tls_cert);
            lua_pop(L, 1);
        } else if (strcmp(k, "data") == 0) {
            check_field(L, 1, LUA_TSTRING, "data");
            config_string(L, &cfg->data_dir);
        } else if (strcmp(k, "storage") == 0) {
            check_field(L, 1, LUA_TTABLE, "storage");
            if (lua_getfield(L, -1, "durability") != LUA_TNIL) {
                check_field(L, 1, LUA_TSTRING, "storage.durability");
                const char *d = lua_tostring(L, -1);
                if (strcmp(d, "relaxed") == 0)
                    cfg->relaxed = 1;
                else if (strcmp(d, "durable") == 0)
                    cfg->relaxed = 0;
                else
                    return luaL_error(
                        L, "sluice.config: storage.durability is \"durable\" or \"relaxed\"");
            }
            lua_pop(L, 1);
            if (lua_getfield(L, -1, "dedup_window") != LUA_TNIL) {
                check_field(L, 1, LUA_TNUMBER, "storage.dedup_window");
                lua_Number w = lua_tonumber(L, -1);
                if (!(w >= 0.001 && w <= 2592000))
                    return luaL_error(
                        L, "sluice.config: storage.dedup_window is 0.001 to 2592000 seconds");
                cfg->dedup_window_ms = (uint64_t)(w * 1000);
            }
            lua_pop(L, 1);
        } else if (strcmp(k, "workers") == 0) {
            lua_Integer w = field_integer(L, 1, "workers");
            if (w < 1 || w > 1024) return luaL_error(L, "sluice.config: workers must be 1..1024");
            cfg->workers = (int)w;
        } else if (strcmp(k, "limits") == 0) {
            config_limits(L, cfg);
            /* At once: the rest of the chunk runs under it too. */
            if (cfg->script_memory) app->mem.limit = cfg->script_memory;
        } else {
            return luaL_error(L, "sluice.config: unknown setting '%s'", k);
        }
        lua_pop(L, 1);
    }
    return 0;
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
    for (size_t i = 0; i <= mlen; i++)
        m[i] = (char)toupper((unsigned char)method[i]);
    if (strcmp(m, "ANY") == 0) strcpy(m, "*");
    lua_pushvalue(L, 3);
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    char err[256] = "";
    if (route_add(app->routes, m, pattern, ref, err, sizeof(err)) < 0) {
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        return luaL_argerror(L, 2, err);
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
    if (is_req(L, 3)) build_all_lazy(L, 3); /* cjson reads tables raw */
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

/* ---- publish, topics, metrics -------------------------------------------- */

/* sluice.on_publish(pattern, fn): while the script loads. */
static int l_on_publish(lua_State *L)
{
    lx_app *app = app_of(L);
    size_t plen;
    const char *pattern = luaL_checklstring(L, 1, &plen);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (!app->loading)
        return luaL_error(L, "sluice.on_publish must be called when the script loads");
    bool prefix = plen > 0 && pattern[plen - 1] == '*';
    if ((!prefix || plen > 1) && !hub_topic_valid(pattern, prefix ? plen - 1 : plen))
        return luaL_argerror(L, 1, "a topic name, or a prefix followed by '*'");
    if (app->on_publish == LUA_NOREF) {
        lua_newtable(L);
        app->on_publish = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, app->on_publish);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_rawset(L, -3);
    return 0;
}

/* Pushes the on_publish function for `topic` (the longest matching
 * pattern; an exact name beats a prefix of the same length) and returns
 * true, or pushes nothing and returns false. */
static bool push_on_publish(lua_State *L, lx_app *app, const char *topic, size_t tlen)
{
    if (app->on_publish == LUA_NOREF) return false;
    lua_rawgeti(L, LUA_REGISTRYINDEX, app->on_publish);
    int tbl = lua_gettop(L);
    const char *best = NULL; /* a key of the table: stays valid while it does */
    size_t best_len = 0, best_score = 0;
    lua_pushnil(L);
    while (lua_next(L, tbl)) {
        size_t plen;
        const char *p = lua_tolstring(L, -2, &plen);
        bool prefix = plen > 0 && p[plen - 1] == '*';
        size_t n = prefix ? plen - 1 : plen;
        bool match =
            prefix ? tlen >= n && memcmp(topic, p, n) == 0 : tlen == n && memcmp(topic, p, n) == 0;
        size_t score = 1 + 2 * n + (prefix ? 0 : 1);
        if (match && score > best_score) {
            best = p;
            best_len = plen;
            best_score = score;
        }
        lua_pop(L, 1);
    }
    if (!best) {
        lua_pop(L, 1);
        return false;
    }
    lua_pushlstring(L, best, best_len);
    lua_rawget(L, tbl);
    lua_remove(L, tbl);
    return true;
}

/* The commit of a publish a handler waits for: resume it with the ID, or
 * with nil and the reason. */
static void publish_resume(void *ud, hub_msg *m, int status)
{
    lx_task *t = ud;
    lx_app *app = t->app; /* pinned by the task, which may end below */
    app->refs++;
    bool enforce = lx_unprotected_begin(app);
    t->waiting = false;
    if (status == 0) {
        lua_pushlstring(t->co, m->id, m->id_len);
        lx_task_run(t, 1);
    } else {
        lua_pushnil(t->co);
        lua_pushstring(t->co, hub_strerror(status));
        lx_task_run(t, 2);
    }
    lx_unprotected_end(app, enforce);
    lx_app_release(app);
}

static int publish_k(lua_State *L, int status, lua_KContext ctx)
{
    return lua_gettop(L) - (int)ctx;
}

/* sluice.publish(topic, data [, {event = NAME, idempotency_key = KEY}])
 * -> id | nil, reason.
 * In a request handler it returns once the message is durable.  Where
 * nothing can wait (filters, WebSocket callbacks) it queues the message and
 * returns nothing: the message is still stored before anyone receives it.
 * A key (1 to 200 bytes) makes a retry within the dedup window answer the
 * first publish's ID and store nothing (SPEC.md, "Publishing exactly
 * once"). */
static int l_publish(lua_State *L)
{
    check_budget(L);
    lx_app *app = app_of(L);
    size_t tlen, dlen, elen = 0, iklen = 0;
    const char *topic = luaL_checklstring(L, 1, &tlen);
    const char *data = luaL_checklstring(L, 2, &dlen);
    const char *event = NULL, *ikey = NULL;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        if (lua_getfield(L, 3, "event") != LUA_TNIL) {
            if (lua_type(L, -1) != LUA_TSTRING)
                return luaL_argerror(L, 3, "event must be a string");
            event = lua_tolstring(L, -1, &elen);
        }
        if (lua_getfield(L, 3, "idempotency_key") != LUA_TNIL) {
            if (lua_type(L, -1) != LUA_TSTRING)
                return luaL_argerror(L, 3, "idempotency_key must be a string");
            ikey = lua_tolstring(L, -1, &iklen);
        }
    }
    if (!hub_topic_valid(topic, tlen))
        return luaL_argerror(L, 1, "invalid topic name (1 to 200 bytes of A-Z a-z 0-9 _ . : -)");
    if (ikey && (iklen < 1 || iklen > STORE_IKEY_MAX)) {
        /* A runtime failure: the key comes from a client's header. */
        lua_pushnil(L);
        lua_pushliteral(L, "invalid idempotency key (1 to 200 bytes)");
        return 2;
    }
    if (event && !hub_event_valid(event, elen)) {
        /* A runtime failure, not misuse: the name often comes from a
         * client (?event=, a WebSocket message). */
        count_bad_event(BADEV_PUBLISH, topic, tlen, elen);
        lua_pushnil(L);
        lua_pushliteral(L, "invalid event name");
        return 2;
    }
    if (push_on_publish(L, app, topic, tlen)) {
        /* The app's transform runs before storage, so what is stored,
         * replayed and delivered is the same message.  The ID does not
         * exist yet: msg.id is nil here. */
        lua_createtable(L, 0, 3);
        lua_pushlstring(L, topic, tlen);
        lua_setfield(L, -2, "topic");
        if (event)
            lua_pushlstring(L, event, elen);
        else
            lua_pushnil(L);
        lua_setfield(L, -2, "event");
        lua_pushvalue(L, 2);
        lua_setfield(L, -2, "data");
        lua_call(L, 1, 1);
        if (lua_isnil(L, -1)) {
            lua_pushnil(L);
            lua_pushliteral(L, "dropped by on_publish");
            return 2;
        }
        if (!lua_istable(L, -1)) return luaL_error(L, "on_publish must return the message or nil");
        int m = lua_gettop(L);
        lua_getfield(L, m, "topic");
        lua_getfield(L, m, "data");
        lua_getfield(L, m, "event");
        topic = lua_tolstring(L, m + 1, &tlen);
        data = lua_tolstring(L, m + 2, &dlen);
        event = lua_isnil(L, m + 3) ? NULL : lua_tolstring(L, m + 3, &elen);
        if (!topic || !hub_topic_valid(topic, tlen))
            return luaL_error(L, "on_publish returned an invalid topic");
        if (!data) return luaL_error(L, "on_publish returned a message without data");
        if (!lua_isnil(L, m + 3) && !event)
            return luaL_error(L, "on_publish returned an event that is not a string");
        if (event && !hub_event_valid(event, elen)) {
            count_bad_event(BADEV_ON_PUBLISH, topic, tlen, elen);
            lua_pushnil(L);
            lua_pushliteral(L, "on_publish returned an invalid event name");
            return 2;
        }
    }
    if (!app->hub || !hub_is_open(app->hub)) {
        /* --check, or top-level code before storage opens: nothing to do. */
        lua_pushnil(L);
        lua_pushliteral(L, "not running");
        return 2;
    }
    lx_task *t = app->running_task;
    bool can_wait = t && t->co == L && lua_isyieldable(L);
    /* A WebSocket client's on_message: its publishes pace its reading. */
    hub_publish_fn pacer = can_wait ? NULL : sub_publish_pacer(app->publisher);
    int rc = hub_publish_keyed(app->hub, topic, tlen, event, elen, data, dlen, ikey, iklen,
                               app->origin, can_wait ? publish_resume : pacer,
                               can_wait ? (void *)t
                               : pacer  ? (void *)app->publisher
                                        : NULL);
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushstring(L, hub_strerror(rc));
        return 2;
    }
    if (pacer) sub_publish_queued(app->publisher);
    if (!can_wait) {
        lua_pushboolean(L, 1); /* queued: the ID does not exist yet */
        return 1;
    }
    t->waiting = true;
    return lua_yieldk(L, 0, lua_gettop(L), publish_k);
}

/* sluice.valid_topic(name): the server's own check, for an app that
 * answers 400 itself (the Lua pattern it replaced in the default app was
 * about a tenth of a long-poll's instructions). */
static int l_valid_topic(lua_State *L)
{
    size_t len = 0;
    const char *name = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &len) : NULL;
    lua_pushboolean(L, name && hub_topic_valid(name, len));
    return 1;
}

/* sluice.valid_event(name): the check sluice.publish makes of an event
 * name, for an app that answers 400 itself. */
static int l_valid_event(lua_State *L)
{
    size_t len = 0;
    const char *name = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &len) : NULL;
    lua_pushboolean(L, name && hub_event_valid(name, len));
    return 1;
}

/* sluice.topic(pattern, {backlog = N, max_age = S}) */
static int l_topic(lua_State *L)
{
    lx_app *app = app_of(L);
    size_t plen;
    const char *pattern = luaL_checklstring(L, 1, &plen);
    luaL_checktype(L, 2, LUA_TTABLE);
    bool prefix = plen > 0 && pattern[plen - 1] == '*';
    size_t name_len = prefix ? plen - 1 : plen;
    if ((!prefix || name_len > 0) && !hub_topic_valid(pattern, name_len))
        return luaL_argerror(L, 1, "a topic name, or a prefix followed by '*'");
    hub_retention r = {0, 0};
    if (lua_getfield(L, 2, "backlog") != LUA_TNIL) {
        lua_Integer n = field_integer(L, 2, "backlog");
        if (n < 1 || n > 10000000) return luaL_argerror(L, 2, "backlog must be 1 to 10000000");
        r.backlog = (uint32_t)n;
    }
    if (lua_getfield(L, 2, "max_age") != LUA_TNIL) {
        check_field(L, 2, LUA_TNUMBER, "max_age");
        lua_Number a = lua_tonumber(L, -1);
        if (a <= 0) return luaL_argerror(L, 2, "max_age must be a positive number of seconds");
        r.max_age = a;
    }
    if (app->hub && hub_set_retention(app->hub, pattern, name_len, prefix, &r) < 0)
        return luaL_error(L, "sluice.topic: out of memory");
    return 0;
}

static __thread lx_runtime *current_rt;

/* sluice.metrics() -> the Prometheus text exposition of the counters
 * (core/metrics.c), with the Lua layer's own. */
static int l_metrics(lua_State *L)
{
    lx_app *app = app_of(L);
    metrics_extra extra[1 + BADEV_KINDS];
    size_t n = 0;
    extra[n++] = (metrics_extra){"sluice_script_errors_total", "counter",
                                 "Errors raised by the app's Lua code.", NULL,
                                 lx_script_errors()};
    static const char *const labels[BADEV_KINDS] = {
        "source=\"publish\"", "source=\"on_publish\"", "source=\"filter\""};
    for (int i = 0; i < BADEV_KINDS; i++)
        extra[n++] = (metrics_extra){
            "sluice_invalid_events_total", "counter",
            "Event names refused (not UTF-8, control characters, too long), by source.", labels[i],
            __atomic_load_n(&bad_events[i], __ATOMIC_RELAXED)};
    size_t len;
    char *text = metrics_render(app->hub, extra, n, &len);
    if (!text) return luaL_error(L, "out of memory");
    lua_pushlstring(L, text, len);
    free(text);
    return 1;
}

/* ---- subscriptions and their callbacks -------------------------------------- */

typedef struct lx_hooks {
    lx_app *app;
    int filter, on_message, on_close; /* registry refs or LUA_NOREF */
    int conn_ref;                     /* the conn object handed to callbacks */
    sub_session *session;             /* NULL once the subscription ended */
    int busy;                         /* callbacks running: release waits */
    bool released;                    /* release came while busy */
    ev_timer expiry;                  /* opts.expires: ends the subscription */
} lx_hooks;

typedef struct lx_connud {
    lx_hooks *hooks; /* NULL once the connection is gone */
} lx_connud;

/* Runs a callback (function and `nargs` arguments on app->hookL) under its
 * own budget.  Returns true on success with `nres` results left on the
 * stack; on error logs the traceback and returns false with nothing left. */
static bool call_hook(lx_app *app, const char *what, int nargs, int nres)
{
    lua_State *L = app->hookL;
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, traceback_handler);
    lua_insert(L, base);
    lx_budget b = {0};
    lx_budget_arm(&b, app->budget, app->timeout);
    lx_run run;
    run_enter(app, &run, &b);
    int st = lua_pcall(L, nargs, nres, base);
    run_leave(app, &run, L);
    lua_remove(L, base);
    if (st == LUA_OK && b.exceeded) {
        /* The overrun was caught with pcall and the code returned before
         * the next check: still a failure. */
        lua_pop(L, nres);
        lua_pushfstring(L, "%s (caught by pcall)", over_what(b.exceeded));
        luaL_traceback(L, L, lua_tostring(L, -1), 0);
        lua_remove(L, -2);
        st = LUA_ERRRUN;
    }
    if (st == LUA_OK) return true;
    LOG_KV(LOG_ERROR, run_failure(app, &run, &b, st), LOG_S("script", app->script),
           LOG_S("callback", what), LOG_S("traceback", lua_tostring(L, -1)));
    lx_count_error();
    lua_pop(L, 1);
    return false;
}

static void push_conn(lx_hooks *h)
{
    lua_State *L = h->app->hookL;
    if (h->conn_ref == LUA_NOREF) {
        lx_connud *u = lua_newuserdatauv(L, sizeof(lx_connud), 0);
        u->hooks = h;
        luaL_setmetatable(L, CONN_MT);
        lua_pushvalue(L, -1);
        h->conn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        return;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->conn_ref);
}

static void hook_release(void *ud);
static hub_msg *run_filter(lx_hooks *h, sub_session *s, hub_msg *m);

/* Whatever a callback does (conn:close ends the session, which releases
 * the hooks), the hooks outlive the call. */
static void hooks_enter(lx_hooks *h)
{
    h->busy++;
}
static void hooks_leave(lx_hooks *h)
{
    if (--h->busy == 0 && h->released) hook_release(h);
}

static void hook_on_start(void *ud, sub_session *s)
{
    ((lx_hooks *)ud)->session = s;
}

/* opts.expires came: a WebSocket is closed with 4001 "expired", a stream
 * or a held poll ends (docs/protocol.md). */
static void expiry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    lx_hooks *h = w->data;
    if (h->session) sub_close(h->session, 4001, "expired");
}

static hub_msg *hook_filter(void *ud, sub_session *s, hub_msg *m)
{
    lx_hooks *h = ud;
    lx_app *app = h->app; /* pinned by h, and by the subscription past h */
    app->refs++;
    bool enforce = lx_unprotected_begin(app);
    hub_msg *out = run_filter(h, s, m);
    lx_unprotected_end(app, enforce);
    lx_app_release(app);
    return out;
}

static hub_msg *run_filter(lx_hooks *h, sub_session *s, hub_msg *m)
{
    lua_State *L = h->app->hookL;
    h->session = s;
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->filter);
    lua_createtable(L, 0, 4);
    lua_pushlstring(L, m->id, m->id_len);
    lua_setfield(L, -2, "id");
    lua_pushlstring(L, m->topic, m->topic_len);
    lua_setfield(L, -2, "topic");
    if (m->event)
        lua_pushlstring(L, m->event, m->event_len);
    else
        lua_pushnil(L);
    lua_setfield(L, -2, "event");
    lua_pushlstring(L, m->raw->data + HUB_HEADROOM, m->len);
    lua_setfield(L, -2, "data");
    lua_pushvalue(L, -1); /* keep the table to compare after the call */
    lua_insert(L, -3);
    hooks_enter(h);
    if (!call_hook(h->app, "filter", 1, 1)) {
        lua_pop(L, 1);
        if (h->session) sub_close(h->session, 1011, "script error");
        hooks_leave(h);
        return NULL;
    }
    hooks_leave(h); /* h may be gone now: only L and m below */
    hub_msg *out = NULL;
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "data");
        lua_getfield(L, -2, "event");
        size_t dlen = 0, elen = 0;
        const char *data = lua_tolstring(L, -2, &dlen);
        const char *event = lua_tolstring(L, -1, &elen);
        bool same_data =
            data && dlen == m->len && memcmp(data, m->raw->data + HUB_HEADROOM, dlen) == 0;
        bool same_event = (!event && !m->event) || (event && m->event && elen == m->event_len &&
                                                    memcmp(event, m->event, elen) == 0);
        if (same_data && same_event) {
            out = m; /* unchanged: the shared encodings serve */
        } else if (data && (!event || hub_event_valid(event, elen))) {
            out = hub_msg_derive(m, event, elen, data, dlen);
        } else if (data) {
            /* Not delivered to this subscriber: what it would send could
             * break the client (invalid UTF-8 closes a WebSocket). */
            count_bad_event(BADEV_FILTER, m->topic, m->topic_len, elen);
        }
        lua_pop(L, 2);
    }
    lua_pop(L, 2); /* result and the kept table */
    return out;
}

static void hook_on_message(void *ud, sub_session *s, const char *data, size_t len, bool binary)
{
    lx_hooks *h = ud;
    if (h->on_message == LUA_NOREF) return; /* hooks for a filter or expires only */
    lx_app *app = h->app;
    app->refs++;
    bool enforce = lx_unprotected_begin(app);
    lua_State *L = h->app->hookL;
    h->session = s;
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->on_message);
    push_conn(h);
    lua_pushlstring(L, data, len);
    lua_pushboolean(L, binary);
    /* What the callback publishes comes from this client (skip_self). */
    const void *prev = h->app->origin;
    sub_session *prev_publisher = h->app->publisher;
    h->app->origin = sub_origin(s);
    h->app->publisher = s; /* its publishes pace its reading (sub_publish_queued) */
    hooks_enter(h);
    bool ok = call_hook(h->app, "on_message", 3, 0);
    h->app->origin = prev;
    h->app->publisher = prev_publisher;
    if (!ok && h->session) sub_close(h->session, 1011, "script error");
    hooks_leave(h);
    lx_unprotected_end(app, enforce);
    lx_app_release(app);
}

static void hook_on_close(void *ud, sub_session *s)
{
    lx_hooks *h = ud;
    h->session = NULL; /* the conn object can no longer send */
    if (h->on_close == LUA_NOREF) return;
    lx_app *app = h->app;
    app->refs++;
    bool enforce = lx_unprotected_begin(app);
    lua_rawgeti(h->app->hookL, LUA_REGISTRYINDEX, h->on_close);
    push_conn(h);
    hooks_enter(h);
    call_hook(h->app, "on_close", 1, 0);
    hooks_leave(h);
    lx_unprotected_end(app, enforce);
    lx_app_release(app);
}

static void hook_release(void *ud)
{
    lx_hooks *h = ud;
    h->session = NULL;
    ev_timer_stop(lx_loop, &h->expiry);
    if (h->busy) {
        h->released = true; /* hooks_leave finishes it */
        return;
    }
    lx_app *app = h->app;
    lua_State *L = app->L;
    bool enforce = lx_unprotected_begin(app);
    if (h->conn_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, h->conn_ref);
        ((lx_connud *)lua_touserdata(L, -1))->hooks = NULL;
        lua_pop(L, 1);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, h->filter);
    luaL_unref(L, LUA_REGISTRYINDEX, h->on_message);
    luaL_unref(L, LUA_REGISTRYINDEX, h->on_close);
    luaL_unref(L, LUA_REGISTRYINDEX, h->conn_ref);
    free(h);
    lx_unprotected_end(app, enforce);
    lx_app_release(app);
}

static const sub_hooks lua_hooks = {hook_filter, hook_on_message, hook_on_close, hook_release,
                                    hook_on_start};
static const sub_hooks lua_hooks_nofilter = {NULL, hook_on_message, hook_on_close, hook_release,
                                             hook_on_start};

static lx_connud *check_conn(lua_State *L)
{
    lx_connud *u = luaL_checkudata(L, 1, CONN_MT);
    return u;
}

/* conn:send(data [, binary]) -> true, or nil and a reason */
static int l_conn_send(lua_State *L)
{
    check_budget(L);
    lx_connud *u = check_conn(L);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    bool binary = lua_toboolean(L, 3);
    if (!u->hooks || !u->hooks->session) {
        luaL_pushfail(L);
        lua_pushliteral(L, "connection closed");
        return 2;
    }
    if (sub_send(u->hooks->session, data, len, binary) < 0) {
        luaL_pushfail(L);
        lua_pushliteral(L, "cannot send");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:close([code [, reason]]) */
static int l_conn_close(lua_State *L)
{
    check_budget(L);
    lx_connud *u = check_conn(L);
    lua_Integer code = luaL_optinteger(L, 2, 1000);
    const char *reason = luaL_optstring(L, 3, NULL);
    /* The codes RFC 6455 lets a server send for its own reasons (normal,
     * going away, policy, internal error, try again later), and the
     * application range. */
    bool standard = code == 1000 || code == 1001 || code == 1008 || code == 1011 || code == 1013;
    if (!standard && (code < 3000 || code > 4999))
        return luaL_argerror(L, 2, "1000, 1001, 1008, 1011, 1013, or 3000 to 4999");
    if (u->hooks && u->hooks->session) sub_close(u->hooks->session, (unsigned)code, reason);
    return 0;
}

/* conn.topic: the first name req:subscribe was given (a pattern keeps its
 * '*'), or nil once the connection is gone.  With it one on_message
 * function serves every connection, instead of a closure for each. */
static void push_conn_topic(lua_State *L, const lx_connud *u)
{
    size_t len;
    bool wildcard;
    const char *name =
        u->hooks && u->hooks->session ? sub_first_topic(u->hooks->session, &len, &wildcard) : NULL;
    if (!name) {
        lua_pushnil(L);
        return;
    }
    lua_pushlstring(L, name, len);
    if (wildcard) {
        lua_pushliteral(L, "*");
        lua_concat(L, 2);
    }
}

static int l_conn_index(lua_State *L)
{
    lx_connud *u = check_conn(L);
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "send") == 0)
        lua_pushcfunction(L, l_conn_send);
    else if (strcmp(k, "close") == 0)
        lua_pushcfunction(L, l_conn_close);
    else if (strcmp(k, "transport") == 0)
        lua_pushstring(L,
                       u->hooks && u->hooks->session ? sub_transport(u->hooks->session) : "closed");
    else if (strcmp(k, "closed") == 0)
        lua_pushboolean(L, !u->hooks || !u->hooks->session);
    else if (strcmp(k, "topic") == 0)
        push_conn_topic(L, u);
    else
        lua_pushnil(L);
    return 1;
}

/* req:subscribe(topics [, opts]): a userdata that the handler returns, its
 * user values the topics and the options.  One name is kept as the string
 * it is (the usual case: no table to build), several as a list. */
static int l_req_subscribe(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 3); /* opts at 3, nil when not given, below the topics */
    int topics = 2;
    if (lua_istable(L, 2)) {
        lua_Integer n = luaL_len(L, 2);
        if (n < 1 || n > 64) return luaL_argerror(L, 2, "1 to 64 topics");
        lua_createtable(L, (int)n, 0);
        topics = lua_gettop(L);
        for (lua_Integer i = 1; i <= n; i++) {
            if (lua_geti(L, 2, i) != LUA_TSTRING)
                return luaL_argerror(L, 2, "topic names are strings");
            lua_rawseti(L, topics, i);
        }
    } else if (lua_type(L, 2) != LUA_TSTRING) {
        return luaL_argerror(L, 2, "a topic name or a list of names");
    }
    bool one = topics == 2;
    lua_Integer n = one ? 1 : (lua_Integer)lua_rawlen(L, topics);
    int base = lua_gettop(L);
    for (lua_Integer i = 1; i <= n; i++) {
        size_t len;
        if (!one) lua_rawgeti(L, topics, i);
        const char *t = lua_tolstring(L, one ? 2 : -1, &len);
        if (!hub_pattern_valid(t, len))
            return luaL_argerror(
                L, 2,
                "invalid topic name (1 to 200 bytes of A-Z a-z 0-9 _ . : -, or a prefix and *)");
        lua_settop(L, base);
    }
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    lua_newuserdatauv(L, 1, 2);
    lua_rawgeti(L, LUA_REGISTRYINDEX, app_of(L)->sub_mt_ref);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, topics);
    lua_setiuservalue(L, -2, 1);
    lua_pushvalue(L, 3);
    lua_setiuservalue(L, -2, 2);
    return 1;
}

static int opt_get(lua_State *L, int opts, const char *key);

static int opt_ref(lua_State *L, int opts, const char *name)
{
    if (opts == 0) return LUA_NOREF;
    if (opt_get(L, opts, name) == LUA_TNIL) {
        lua_pop(L, 1);
        return LUA_NOREF;
    }
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1);
        return REF_NOT_FUNCTION;
    }
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

static void create_metatables(lx_app *app, lua_State *L)
{
    luaL_newmetatable(L, SUB_MT);
    app->sub_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    luaL_newmetatable(L, CONN_MT);
    lua_pushcfunction(L, l_conn_index);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newmetatable(L, REQ_MT);
    lua_pushcfunction(L, l_req_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_req_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pushcfunction(L, l_req_newindex);
    lua_setfield(L, -2, "__newindex");
    app->req_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_createtable(L, 0, 0); /* req -> its req_src, as long as req lives */
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &req_src_key);
    lx_hide_metatable(L, SUB_MT);
    lx_hide_metatable(L, CONN_MT);
    lx_hide_metatable(L, REQ_MT);
}

static int luaopen_sluice(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"config", l_config},
        {"route", l_route},
        {"log", l_log},
        {"publish", l_publish},
        {"topic", l_topic},
        {"metrics", l_metrics},
        {"on_publish", l_on_publish},
        {"valid_topic", l_valid_topic},
        {"valid_event", l_valid_event},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    lx_open_timers(L);
    lx_open_crypto(L);
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

/* ---- the state: memory, and what a script may not switch off ------------ */

/* Every state's allocator: counts what it holds and, while script code
 * runs, refuses to grow past the limit.  Lua then collects in full and
 * tries once more before it raises "not enough memory", so a refusal
 * happens only when the live data does not fit. */
static void *lx_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    lx_mem *m = ud;
    size_t old = ptr ? osize : 0; /* without ptr, osize is a type tag */
    if (nsize == 0) {
        free(ptr);
        m->used -= old;
        return NULL;
    }
    if (nsize > old && m->enforce && m->used - old + nsize > m->limit) {
        m->refused++;
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (p) m->used = m->used - old + nsize;
    return p;
}

/* A Lua error outside any protected call: a bug of the C side (the memory
 * limit is lifted there, see lx_mem). */
static int lx_panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    LOG_KV(LOG_ERROR, "Lua panic: unprotected error", LOG_S("error", msg ? msg : "?"));
    abort();
}

/* collectgarbage(opt, ...) without the options that would stop the
 * collector or slow it down for good: "stop" (a state that no longer
 * collects grows to its memory limit and stays there), "incremental",
 * "generational" (with their pause and step parameters), "setpause",
 * "setstepmul".  The server chose the mode; "collect", "step", "count",
 * "isrunning" and "restart" stay. */
static int l_collectgarbage(lua_State *L)
{
    static const char *const allowed[] = {"collect", "step", "count", "isrunning", "restart"};
    const char *opt = luaL_optstring(L, 1, "collect");
    bool ok = false;
    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
        ok |= strcmp(opt, allowed[i]) == 0;
    if (!ok)
        return luaL_argerror(
            L, 1, lua_pushfstring(L, "'%s' is not allowed: the server runs the collector", opt));
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* setmetatable refuses a metatable with a __gc field: Lua runs finalizers
 * with hooks off, so a finalizer is code the budget could never stop (run
 * at any allocation, or when the state closes).  A __gc added to a
 * metatable afterwards is never called for that object: Lua marks an
 * object for finalization when its metatable is set.  So that nothing
 * marks objects on the script's behalf, the metatables C code gives its
 * objects are hidden from getmetatable (see hide_metatable), and the debug
 * functions that reach past that are gone (see guard_libraries). */
static int l_setmetatable_guard(lua_State *L)
{
    /* The original's checks, here so that errors name 'setmetatable' (a
     * C function called from C has no name to give). */
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argexpected(L, lua_isnoneornil(L, 2) || lua_istable(L, 2), 2, "nil or table");
    if (lua_istable(L, 2)) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_argerror(L, 2,
                                 "__gc metamethods are not allowed (they would run "
                                 "outside the instruction budget)");
    }
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 2, 1);
    return 1;
}

/* What the removed debug functions do instead (upvalue 1: the name). */
static int l_debug_refused(lua_State *L)
{
    return luaL_error(L,
                      "debug.%s is not available: it would reach past the instruction budget "
                      "or the memory limit",
                      lua_tostring(L, lua_upvalueindex(1)));
}

/* Wraps function `name` of the table on top of the stack with fn (the
 * original as its upvalue). */
static void wrap_function(lua_State *L, const char *name, lua_CFunction fn)
{
    lua_getfield(L, -1, name);
    lua_pushcclosure(L, fn, 1);
    lua_setfield(L, -2, name);
}

/* getmetatable(obj) returns false for an object made by C code (a file, a
 * timer, req...), so that a script cannot add a __gc that objects made
 * later would get. */
void lx_hide_metatable(lua_State *L, const char *tname)
{
    if (luaL_getmetatable(L, tname) == LUA_TTABLE) {
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
}

/* An error raised from inside a hook leaves the thread with hooks off
 * (Lua turns them off while a hook runs and turns them back on when the
 * hook returns, or when a pcall catches the error).  Script code that
 * would run in that window runs unbounded: an xpcall message handler (it
 * runs before the unwinding), and the __close handlers of a coroutine
 * that died of the overrun, run when it is closed (coroutine.close,
 * coroutine.wrap).  So: message handlers are skipped while the run is
 * over budget, and a coroutine the budget stopped is never closed (its
 * __close handlers do not run).  The registry's weak table below marks
 * those coroutines. */
static const char stopped_key = 0;

static void mark_stopped(lua_State *L)
{
    lx_app *app = app_of(L);
    bool enforce = lx_unprotected_begin(app); /* a mark that cannot fail */
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &stopped_key) == LUA_TTABLE) {
        lua_pushthread(L);
        lua_pushboolean(L, 1);
        lua_rawset(L, -3);
    }
    lua_pop(L, 1);
    lx_unprotected_end(app, enforce);
}

static bool was_stopped(lua_State *L, lua_State *co)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &stopped_key);
    lua_pushthread(co);
    lua_xmove(co, L, 1);
    bool stopped = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 2);
    return stopped;
}

static bool over_budget(lua_State *L)
{
    lx_app *app = app_of(L);
    return app && app->running && app->running->exceeded;
}

static int msgh_guard(lua_State *L)
{
    if (over_budget(L)) return 1; /* the error as it is */
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

static int xpcall_k(lua_State *L, int status, lua_KContext ctx)
{
    return lua_gettop(L);
}

/* xpcall(f, msgh, ...) with msgh behind msgh_guard (upvalue: xpcall). */
static int l_xpcall(lua_State *L)
{
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, msgh_guard, 1);
    lua_replace(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, xpcall_k); /* a handler may yield */
    return xpcall_k(L, LUA_OK, 0);
}

/* coroutine.close(co) (upvalue: the original) refuses a coroutine the
 * budget stopped. */
static int l_coclose(lua_State *L)
{
    lua_State *co = lua_tothread(L, 1);
    luaL_argexpected(L, co, 1, "coroutine");
    if (was_stopped(L, co)) {
        luaL_pushfail(L);
        lua_pushliteral(L, "coroutine stopped by the instruction budget");
        return 2;
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* The function coroutine.wrap returns (upvalue: the coroutine): Lua's own,
 * but a coroutine the budget stopped is not closed. */
static int wrap_call(lua_State *L)
{
    lua_State *co = lua_tothread(L, lua_upvalueindex(1));
    int n = lua_gettop(L), nres;
    if (!lua_checkstack(co, n)) return luaL_error(L, "too many arguments to resume");
    lua_xmove(L, co, n);
    int st = lua_resume(co, L, n, &nres);
    if (st == LUA_OK || st == LUA_YIELD) {
        if (!lua_checkstack(L, nres + 1)) {
            lua_pop(co, nres);
            return luaL_error(L, "too many results to resume");
        }
        lua_xmove(co, L, nres);
        return nres;
    }
    int cst = lua_status(co);
    if (cst != LUA_OK && cst != LUA_YIELD && !was_stopped(L, co))
        st = lua_resetthread(co); /* close its to-be-closed variables */
    lua_xmove(co, L, 1);
    if (st != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
        luaL_where(L, 1);
        lua_insert(L, -2);
        lua_concat(L, 2);
    }
    return lua_error(L);
}

static int l_cowrap(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_State *co = lua_newthread(L);
    lua_pushvalue(L, 1);
    lua_xmove(L, co, 1);
    lua_pushcclosure(L, wrap_call, 1);
    return 1;
}

/* string.rep(s, n [, sep]) with an empty result returns at once: Lua's
 * loop would copy nothing n times (n up to 2^63), the one standard call
 * the memory limit does not bound that way.  (upvalue: the original) */
static int l_rep_guard(lua_State *L)
{
    size_t len, seplen = 0;
    luaL_checklstring(L, 1, &len);
    lua_Integer n = luaL_checkinteger(L, 2);
    if (!lua_isnoneornil(L, 3)) luaL_checklstring(L, 3, &seplen);
    if (n > 0 && len == 0 && seplen == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

/* table.move(a1, f, e, t [, a2]) charges its e - f + 1 steps first:
 * moving a range of nils allocates nothing, so only the budget bounds
 * table.move({}, 1, 1e15, 2).  (upvalue: the original) */
static int l_move_guard(lua_State *L)
{
    lua_Integer f = luaL_checkinteger(L, 2), e = luaL_checkinteger(L, 3);
    luaL_checkinteger(L, 4);
    if (e >= f) {
        lua_Unsigned n = (lua_Unsigned)e - (lua_Unsigned)f + 1; /* 0: all 2^64 */
        lx_budget_charge(L, n == 0 || n > (lua_Unsigned)LLONG_MAX ? LLONG_MAX : (long long)n);
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

/* load(chunk, name, mode, env) and loadfile(name, mode, env) with the mode
 * forced to "t": precompiled chunks are not checked by the VM, and a
 * crafted one can break its invariants (the budget's among them).  The
 * upvalue is the original; `modearg` is where its mode goes. */
static int text_only(lua_State *L, int modearg)
{
    if (lua_gettop(L) < modearg) lua_settop(L, modearg); /* env stays absent */
    lua_pushliteral(L, "t");
    lua_replace(L, modearg);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

static int l_load_text(lua_State *L)
{
    return text_only(L, 3);
}

static int l_loadfile_text(lua_State *L)
{
    return text_only(L, 2);
}

/* dofile(name), text chunks only (see text_only). */
static int dofile_k(lua_State *L, int status, lua_KContext ctx)
{
    return lua_gettop(L) - 1;
}

static int l_dofile_text(lua_State *L)
{
    const char *name = luaL_optstring(L, 1, NULL);
    lua_settop(L, 1);
    if (luaL_loadfilex(L, name, "t") != LUA_OK) return lua_error(L);
    lua_callk(L, 0, LUA_MULTRET, 0, dofile_k);
    return dofile_k(L, 0, 0);
}

/* What keeps the budget and the memory limit unbeatable from Lua. */
static void guard_libraries(lua_State *L)
{
    lua_newtable(L); /* coroutine -> true, weak keys */
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &stopped_key);
    lua_pushglobaltable(L);
    wrap_function(L, "collectgarbage", l_collectgarbage);
    wrap_function(L, "setmetatable", l_setmetatable_guard);
    wrap_function(L, "xpcall", l_xpcall);
    wrap_function(L, "load", l_load_text);
    wrap_function(L, "loadfile", l_loadfile_text);
    lua_pushcfunction(L, l_dofile_text);
    lua_setfield(L, -2, "dofile");
    lua_pop(L, 1);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (lua_getfield(L, -1, "coroutine") == LUA_TTABLE) {
        wrap_function(L, "close", l_coclose);
        lua_pushcfunction(L, l_cowrap);
        lua_setfield(L, -2, "wrap");
    }
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "string") == LUA_TTABLE) wrap_function(L, "rep", l_rep_guard);
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "table") == LUA_TTABLE) wrap_function(L, "move", l_move_guard);
    lua_pop(L, 2);
    lx_hide_metatable(L, LUA_FILEHANDLE);
    /* debug keeps what reads (traceback, getinfo, getlocal, gethook,
     * getuservalue, upvalueid); the rest would remove the hook
     * (sethook), or reach metatables and values that C code owns:
     * getregistry, getmetatable, setmetatable, getupvalue (a library's
     * private userdata), setupvalue, upvaluejoin, setlocal, setuservalue,
     * setcstacklimit. */
    static const char *const refused[] = {
        "sethook",    "getregistry", "getmetatable", "setmetatable", "getupvalue",
        "setupvalue", "upvaluejoin", "setlocal",     "setuservalue", "setcstacklimit",
    };
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (lua_getfield(L, -1, "debug") == LUA_TTABLE) {
        for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
            lua_pushstring(L, refused[i]);
            lua_pushcclosure(L, l_debug_refused, 1);
            lua_setfield(L, -2, refused[i]);
        }
    }
    lua_pop(L, 2);
}

/* ---- loading ----------------------------------------------------------- */

size_t lx_app_route_count(const lx_app *app)
{
    return route_count(app->routes);
}

static void app_free(lx_app *app)
{
    lx_cancel_timers(app);
    route_table_free(app->routes, NULL, NULL); /* lua_close frees the handlers */
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
    guard_libraries(L);
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

    lua_pushcfunction(L, traceback_handler);
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
    run_enter(app, &run, &load);
    lua_sethook(L, lx_budget_hook, LUA_MASKCOUNT, HOOK_STEP);
    st = lua_pcall(L, 0, 0, -2);
    run_leave(app, &run, L);
    lua_sethook(L, NULL, 0, 0);
    app->loading = false;
    app->cfg = NULL;
    if (cfg->instruction_budget > 0) app->budget = cfg->instruction_budget;
    if (cfg->script_timeout > 0) app->timeout = cfg->script_timeout;
    /* (the memory limit took effect when sluice.config set it) */
    if (cfg == &scratch) lx_config_free(&scratch);
    if (st == LUA_OK && load.exceeded) {
        /* Caught by pcall, and the chunk ended before the next check. */
        lua_pushfstring(L, "%s: %s (caught by pcall)", app->script, over_what(load.exceeded));
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
    return app;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    if (app) app_free(app);
    return NULL;
}

/* ---- requests ---------------------------------------------------------- */

/* req.query, req.headers and req.remote_addr are built when a handler
 * first reads them; the other fields, which handlers read most, when req is
 * made.  Building every field was 12.7k of the 29k instructions of an
 * answered long-poll (bench/instructions.sh), and a browser sends ten or
 * more headers.  What the lazy fields are built from is copied into a
 * req_src when the request comes, so a field read after the handler
 * yielded, or by a closure long after, is the request as it came.  The
 * req_src is found through a weak-keyed registry table, not a field of
 * req: req stays a plain table of the documented fields. */
typedef struct req_src {
    uint32_t query_len; /* text: the raw query, then the headers as */
    uint16_t nheaders;  /* (u32 length, u32 length, name, value) */
    uint8_t built;      /* LAZY_* bits of the fields made so far */
    char remote_addr[64];
    char text[];
} req_src;

enum { LAZY_QUERY, LAZY_HEADERS, LAZY_REMOTE_ADDR, NLAZY };
static const struct {
    const char *name;
    size_t len;
} lazy_fields[NLAZY] = {{"query", 5}, {"headers", 7}, {"remote_addr", 11}};

static char *put_pair(char *p, const char *a, uint32_t alen, const char *b, uint32_t blen)
{
    memcpy(p, &alen, 4);
    memcpy(p + 4, &blen, 4);
    memcpy(p + 8, a, alen);
    memcpy(p + 8 + alen, b, blen);
    return p + 8 + alen + blen;
}

static const char *get_pair(const char *p, const char **a, uint32_t *alen, const char **b,
                            uint32_t *blen)
{
    memcpy(alen, p, 4);
    memcpy(blen, p + 4, 4);
    *a = p + 8;
    *b = p + 8 + *alen;
    return *b + *blen;
}

static void push_lower(lua_State *L, const char *s, size_t n)
{
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, n);
    for (size_t i = 0; i < n; i++)
        p[i] = (char)tolower((unsigned char)s[i]);
    luaL_pushresultsize(&b, n);
}

static void push_decoded(lua_State *L, const char *s, size_t n, bool plus_space)
{
    if (n == 0 || (!memchr(s, '%', n) && !(plus_space && memchr(s, '+', n)))) {
        lua_pushlstring(L, s, n); /* the common case: nothing to decode */
        return;
    }
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, n);
    luaL_pushresultsize(&b, http_pct_decode(s, n, p, plus_space));
}

/* A parameter given more than once: the first occurrence counts, as in the
 * C code that reads a poll's parameters (docs/protocol.md). */
static void push_query(lua_State *L, const req_src *s)
{
    lua_createtable(L, 0, s->query_len ? 4 : 0);
    size_t pos = 0, kl, vl;
    const char *k, *v;
    while (http_query_next(s->text, s->query_len, &pos, &k, &kl, &v, &vl)) {
        push_decoded(L, k, kl, true);
        lua_pushvalue(L, -1);
        if (lua_rawget(L, -3) != LUA_TNIL) {
            lua_pop(L, 2);
            continue;
        }
        lua_pop(L, 1);
        push_decoded(L, v, vl, true);
        lua_rawset(L, -3);
    }
}

static void push_headers(lua_State *L, const req_src *s)
{
    lua_createtable(L, 0, s->nheaders);
    const char *p = s->text + s->query_len, *name, *value;
    uint32_t name_len, value_len;
    for (int i = 0; i < s->nheaders; i++) {
        p = get_pair(p, &name, &name_len, &value, &value_len);
        push_lower(L, name, name_len);
        lua_pushvalue(L, -1);
        if (lua_rawget(L, -3) == LUA_TSTRING) {
            /* A repeated header: values joined as RFC 9110 allows. */
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, value, value_len);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, value, value_len);
        }
        lua_rawset(L, -3);
    }
}

/* The LAZY_* field named k, or -1. */
static int lazy_field(const char *k, size_t n)
{
    for (int f = 0; f < NLAZY; f++)
        if (n == lazy_fields[f].len && memcmp(k, lazy_fields[f].name, n) == 0) return f;
    return -1;
}

/* The req_src of the req at idx, or NULL (not a req). */
static req_src *req_source(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &req_src_key);
    lua_pushvalue(L, idx);
    lua_rawget(L, -2);
    req_src *s = lua_touserdata(L, -1);
    lua_pop(L, 2); /* the weak table keeps s while req lives, and req is at idx */
    return s;
}

/* Builds lazy field f of the req at idx unless it was built before (a
 * script may have set it to nil since), stores it in req and leaves it on
 * the stack.  Returns false, pushing nothing, when there is nothing to build. */
static bool build_lazy(lua_State *L, int idx, req_src *s, int f)
{
    if (!s || (s->built & (1u << f))) return false;
    switch (f) {
    case LAZY_QUERY:
        push_query(L, s);
        break;
    case LAZY_HEADERS:
        push_headers(L, s);
        break;
    default:
        lua_pushstring(L, s->remote_addr);
        break;
    }
    s->built |= (uint8_t)(1u << f);
    lua_pushlstring(L, lazy_fields[f].name, lazy_fields[f].len);
    lua_pushvalue(L, -2);
    lua_rawset(L, idx);
    return true;
}

/* Builds every field not built yet: what pairs() and sluice.json see. */
static void build_all_lazy(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    req_src *s = req_source(L, idx);
    for (int f = 0; f < NLAZY; f++)
        if (build_lazy(L, idx, s, f)) lua_pop(L, 1);
}

/* Whether the value at idx has the metatable at registry slot mt_ref:
 * luaL_testudata without its lookup of the name. */
static bool has_metatable(lua_State *L, int idx, int mt_ref)
{
    if (!lua_getmetatable(L, idx)) return false;
    lua_rawgeti(L, LUA_REGISTRYINDEX, mt_ref);
    bool same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same;
}

static bool is_req(lua_State *L, int idx)
{
    return has_metatable(L, idx, app_of(L)->req_mt_ref);
}

/* REQ_MT.__index: req:subscribe, and the fields not built yet. */
static int l_req_index(lua_State *L)
{
    if (lua_type(L, 2) != LUA_TSTRING) return 0;
    size_t n;
    const char *k = lua_tolstring(L, 2, &n);
    if (n == 9 && memcmp(k, "subscribe", 9) == 0) {
        lua_pushcfunction(L, l_req_subscribe);
        return 1;
    }
    int f = lazy_field(k, n);
    return f >= 0 && build_lazy(L, 1, req_source(L, 1), f) ? 1 : 0;
}

/* REQ_MT.__newindex: a field the handler sets before reading it is its
 * own from then on, even nil: mark it built. */
static int l_req_newindex(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    if (lua_type(L, 2) == LUA_TSTRING) {
        size_t n;
        const char *k = lua_tolstring(L, 2, &n);
        int f = lazy_field(k, n);
        req_src *s = f >= 0 ? req_source(L, 1) : NULL;
        if (s) s->built |= (uint8_t)(1u << f);
    }
    lua_settop(L, 3);
    lua_rawset(L, 1);
    return 0;
}

static int req_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (lua_next(L, 1)) return 2;
    lua_pushnil(L);
    return 1;
}

/* REQ_MT.__pairs: every field, built or not. */
static int l_req_pairs(lua_State *L)
{
    build_all_lazy(L, 1);
    lua_pushcfunction(L, req_next);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* Builds `req` on the task's coroutine (inside lua_resume, so a memory
 * error is an ordinary Lua error). */
static void push_req(lua_State *L, lx_task *t)
{
    const http_request *r = t->req;
    const route_match *m = t->match;
    size_t query_len = r->query ? r->query_len : 0, text = query_len;
    for (int i = 0; i < r->nheaders; i++)
        text += 8 + r->headers[i].name_len + r->headers[i].value_len;

    lua_createtable(L, 0, 8); /* room for the lazy fields: no rehash */
    lua_pushstring(L, r->method);
    lua_setfield(L, -2, "method");
    lua_pushlstring(L, r->path, r->path_len);
    lua_setfield(L, -2, "path");
    lua_createtable(L, 0, m->nparams);
    for (int i = 0; i < m->nparams; i++) {
        push_decoded(L, m->params[i].value, m->params[i].value_len, false);
        lua_setfield(L, -2, m->params[i].name);
    }
    lua_setfield(L, -2, "params");
    lua_pushlstring(L, r->body ? r->body : "", r->body_len);
    lua_setfield(L, -2, "body");
    lua_pushstring(L, sub_transport_of(r));
    lua_setfield(L, -2, "transport");
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->app->req_mt_ref);
    lua_setmetatable(L, -2);

    lua_rawgetp(L, LUA_REGISTRYINDEX, &req_src_key);
    lua_pushvalue(L, -2);
    req_src *s = lua_newuserdatauv(L, sizeof(req_src) + text, 0);
    s->query_len = (uint32_t)query_len;
    s->nheaders = (uint16_t)r->nheaders;
    s->built = 0;
    conn_remote_addr(t->c, s->remote_addr, sizeof(s->remote_addr));
    if (query_len) memcpy(s->text, r->query, query_len);
    char *p = s->text + query_len;
    for (int i = 0; i < r->nheaders; i++) {
        const http_header *h = &r->headers[i];
        p = put_pair(p, h->name, h->name_len, h->value, h->value_len);
    }
    lua_rawset(L, -3);
    lua_pop(L, 1); /* the weak table */
}

static int task_main_k(lua_State *L, int status, lua_KContext ctx)
{
    return lua_gettop(L) - 1; /* everything above the task light userdata */
}

/* The coroutine body: builds req, then calls the handler with it. */
static int task_main(lua_State *L)
{
    lx_task *t = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, (lua_Integer)t->match->handler);
    push_req(L, t);
    t->req = NULL;
    t->match = NULL;
    lua_callk(L, 1, LUA_MULTRET, 0, task_main_k);
    return task_main_k(L, LUA_OK, 0);
}

/* `finished`: the coroutine returned, so it can serve another task. One
 * that failed is dropped: its stack may hold anything. */
static void task_end(lx_task *t, bool finished)
{
    lx_app *app = t->app;
    if (finished && app->nidle_co < LX_IDLE_COROUTINES) {
        lua_settop(t->co, 0);
        app->idle_co[app->nidle_co].co = t->co;
        app->idle_co[app->nidle_co].ref = t->co_ref;
        app->nidle_co++;
    } else {
        luaL_unref(app->L, LUA_REGISTRYINDEX, t->co_ref);
    }
    if (t->c) conn_release(t->c);
    lx_app_release(t->app);
    free(t);
}

static void task_fail(lx_task *t, const char *what)
{
    const char *msg = lua_tostring(t->co, -1);
    if (!msg) msg = "(error object is not a string)";
    luaL_traceback(t->app->L, t->co, msg, 0);
    LOG_KV(LOG_ERROR, what, LOG_S("script", t->app->script), LOG_S("error", msg),
           LOG_S("traceback", lua_tostring(t->app->L, -1)));
    lx_count_error();
    lua_pop(t->app->L, 1);
    if (t->c && !conn_closed(t->c)) conn_respond_error(t->c, 500, "script error");
}

/* The handler returned req:subscribe(...): hand the connection over. */
/* opts[key], raw: start_subscription runs outside any protected call, where
 * an __index metamethod that raised would abort the process. */
static int opt_get(lua_State *L, int opts, const char *key)
{
    lua_pushstring(L, key);
    return lua_rawget(L, opts);
}

static void start_subscription(lx_task *t, int idx)
{
    lua_State *L = t->co;
    lx_app *app = t->app;
    conn *c = t->c;
    bool one = lua_getiuservalue(L, idx, 1) == LUA_TSTRING; /* else a list */
    int topics = lua_gettop(L);
    lua_getiuservalue(L, idx, 2);
    int opts = lua_istable(L, -1) ? lua_gettop(L) : 0;
    int n = one ? 1 : (int)lua_rawlen(L, topics);
    const char *names[64];
    size_t lens[64];
    if (one) names[0] = lua_tolstring(L, topics, &lens[0]);
    for (int i = 0; !one && i < n && i < 64; i++) {
        lua_rawgeti(L, topics, i + 1);
        names[i] = lua_tolstring(L, -1, &lens[i]); /* kept alive by the topics table */
        lua_pop(L, 1);
    }
    sub_request r = {.topics = names, .topic_lens = lens, .ntopics = n, .json = -1};
    double expires = 0; /* opts.expires, unix time; 0: none */
    const char *event_names[32];
    size_t event_lens[32];
    const char *problem = NULL;
    if (opts) {
        if (opt_get(L, opts, "last_event_id") == LUA_TSTRING)
            r.last_event_id = lua_tolstring(L, -1, &r.last_event_id_len);
        else if (!lua_isnil(L, -1))
            problem = "opts.last_event_id must be a string";
        if (opt_get(L, opts, "protocol") == LUA_TSTRING)
            r.protocol = lua_tostring(L, -1);
        else if (!lua_isnil(L, -1))
            problem = "opts.protocol must be a string";
        if (opt_get(L, opts, "skip_self") != LUA_TNIL) r.skip_self = lua_toboolean(L, -1);
        if (opt_get(L, opts, "expires") == LUA_TNUMBER)
            expires = lua_tonumber(L, -1);
        else if (!lua_isnil(L, -1))
            problem = "opts.expires must be a number (unix time)";
        if (opt_get(L, opts, "events") == LUA_TTABLE) {
            int ev = lua_gettop(L);
            int ne = (int)lua_rawlen(L, ev);
            if (ne > 32) problem = "opts.events: at most 32 event names";
            for (int i = 0; i < ne && i < 32 && !problem; i++) {
                lua_rawgeti(L, ev, i + 1);
                if (lua_type(L, -1) != LUA_TSTRING)
                    problem = "opts.events must list strings";
                else
                    event_names[i] = lua_tolstring(L, -1, &event_lens[i]);
                lua_pop(L, 1); /* the table keeps the string alive */
            }
            if (!problem) {
                r.events = event_names;
                r.event_lens = event_lens;
                r.nevents = ne;
            }
        } else if (!lua_isnil(L, -1)) {
            problem = "opts.events must be a list of event names";
        }
        if (opt_get(L, opts, "format") == LUA_TSTRING)
            r.json = strcmp(lua_tostring(L, -1), "json") == 0;
        else if (!lua_isnil(L, -1))
            problem = "opts.format must be a string";
    }
    lx_hooks *h = NULL;
    int fref = opt_ref(L, opts, "filter"), mref = opt_ref(L, opts, "on_message"),
        cref = opt_ref(L, opts, "on_close");
    if (fref == REF_NOT_FUNCTION || mref == REF_NOT_FUNCTION || cref == REF_NOT_FUNCTION)
        problem = "opts.filter, opts.on_message and opts.on_close must be functions";
    if (!problem && (fref != LUA_NOREF || mref != LUA_NOREF || cref != LUA_NOREF || expires)) {
        h = calloc(1, sizeof(lx_hooks));
        if (!h) problem = "out of memory";
    }
    if (problem) {
        for (int i = 0; i < 3; i++) {
            int ref = i == 0 ? fref : i == 1 ? mref : cref;
            if (ref >= 0) luaL_unref(L, LUA_REGISTRYINDEX, ref);
        }
        LOG_KV(LOG_ERROR, "script error", LOG_S("script", app->script), LOG_S("error", problem));
        lx_count_error();
        conn_respond_error(c, 500, "script error");
        return;
    }
    if (h) {
        h->app = app;
        app->refs++;
        h->filter = fref;
        h->on_message = mref;
        h->on_close = cref;
        h->conn_ref = LUA_NOREF;
        r.hooks = fref != LUA_NOREF ? &lua_hooks : &lua_hooks_nofilter;
        r.hooks_ud = h;
        ev_timer_init(&h->expiry, expiry_cb, 0., 0.);
        h->expiry.data = h;
        if (expires) {
            /* Armed before the session starts: the start may end it (a
             * poll answered at once), and release stops the timer.  From
             * the loop's time, which lags the clock: never early (a token
             * is valid until its exp). */
            double left = expires - ev_now(lx_loop);
            ev_timer_set(&h->expiry, left > 0 ? left : 0., 0.);
            ev_timer_start(lx_loop, &h->expiry);
        }
    }
    const char *why = "cannot subscribe";
    int status = sub_start(c, app->hub, &r, &why);
    if (status == 0) return;
    if (h) hook_release(h);
    if (status == 426) {
        static const char body[] = "{\"error\":\"unsupported WebSocket version (13 only)\"}";
        conn_response_start(c, 426);
        conn_response_header(c, "Sec-WebSocket-Version", 21, "13", 2);
        conn_response_header(c, "Content-Type", 12, "application/json", 16);
        conn_response_finish(c, body, sizeof(body) - 1);
        return;
    }
    conn_respond_error(c, status, why);
}

static void respond_from_results(lx_task *t, int nres)
{
    lua_State *L = t->co;
    conn *c = t->c;
    int base = lua_gettop(L) - nres + 1;
    if (nres >= 1 && lua_type(L, base) == LUA_TUSERDATA &&
        has_metatable(L, base, t->app->sub_mt_ref)) {
        start_subscription(t, base);
        return;
    }
    int isint = 0;
    lua_Integer status = nres >= 1 ? lua_tointegerx(L, base, &isint) : 0;
    const char *problem = NULL;
    if (!isint || status < 200 || status > 599)
        problem = "handler must return a status from 200 to 599";
    else if (nres >= 2 && !lua_isnil(L, base + 1) && lua_type(L, base + 1) != LUA_TSTRING)
        problem = "handler's body must be a string or nil";
    else if (nres >= 3 && !lua_isnil(L, base + 2) && !lua_istable(L, base + 2))
        problem = "handler's headers must be a table or nil";
    if (problem) {
        LOG_KV(LOG_ERROR, "script error", LOG_S("script", t->app->script), LOG_S("error", problem));
        lx_count_error();
        conn_respond_error(c, 500, "script error");
        return;
    }
    size_t blen = 0;
    const char *body = nres >= 2 ? lua_tolstring(L, base + 1, &blen) : NULL;
    conn_response_start(c, (int)status);
    bool has_ctype = false;
    if (nres >= 3 && lua_istable(L, base + 2)) {
        lua_pushnil(L);
        while (lua_next(L, base + 2)) {
            size_t nl, vl;
            const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &nl) : NULL;
            if (!name) {
                lua_pop(L, 1);
                continue;
            }
            if (nl == 12 && strncasecmp(name, "content-type", 12) == 0) has_ctype = true;
            if (lua_istable(L, -1)) {
                /* A list gives the header once per value (Set-Cookie). */
                lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
                for (lua_Integer i = 1; i <= n; i++) {
                    lua_rawgeti(L, -1, i);
                    const char *v = lua_tolstring(L, -1, &vl);
                    if (v && conn_response_header(c, name, nl, v, vl) < 0) problem = name;
                    lua_pop(L, 1);
                }
            } else {
                /* lua_tolstring would turn a number key's value in place;
                 * copy it so lua_next still sees the original. */
                lua_pushvalue(L, -1);
                const char *v = lua_tolstring(L, -1, &vl);
                if (v && conn_response_header(c, name, nl, v, vl) < 0) problem = name;
                lua_pop(L, 1);
            }
            lua_pop(L, 1);
        }
    }
    if (problem) {
        LOG_KV(LOG_ERROR, "script error", LOG_S("script", t->app->script),
               LOG_S("error", "invalid response header"), LOG_S("header", problem));
        lx_count_error();
        conn_respond_error(c, 500, "script error");
        return;
    }
    if (blen > 0 && !has_ctype) {
        static const char ct[] = "text/plain; charset=utf-8";
        conn_response_header(c, "Content-Type", 12, ct, sizeof(ct) - 1);
    }
    conn_response_finish(c, body, blen);
}

/* Resumes the task's coroutine and deals with how it stopped. */
void lx_task_run(lx_task *t, int nargs)
{
    lx_app *app = t->app;
    app->refs++; /* task_end may drop the task's reference */
    /* Each resume has its own deadline; the instructions add up. */
    lx_budget_arm(&t->budget, t->budget.limit, app->timeout);
    lx_run run;
    run_enter(app, &run, &t->budget);
    app->running_task = t;
    int nres = 0;
    int st = lua_resume(t->co, app->L, nargs, &nres);
    run_leave(app, &run, t->co);
    if (st == LUA_YIELD && t->waiting) {
        /* a sluice call resumes it later */
    } else if (st == LUA_YIELD) {
        /* Nothing resumes a bare coroutine.yield from a handler. */
        lua_pushliteral(t->co, "handler yielded outside a sluice call");
        task_fail(t, "script error");
        task_end(t, false);
    } else if (st == LUA_OK && t->budget.exceeded) {
        /* The overrun was caught with pcall and the code returned before
         * the next check: still a failure. */
        lua_pushfstring(t->co, "%s (caught by pcall)", over_what(t->budget.exceeded));
        task_fail(t, run_failure(app, &run, &t->budget, st));
        task_end(t, false);
    } else if (st == LUA_OK) {
        if (t->c && !conn_closed(t->c)) respond_from_results(t, nres);
        task_end(t, true);
    } else {
        task_fail(t, run_failure(app, &run, &t->budget, st));
        task_end(t, false);
    }
    app->mem.enforce = run.prev_enforce;
    lx_app_release(app);
}

lx_task *lx_task_new(lx_app *app, conn *c)
{
    lx_task *t = calloc(1, sizeof(lx_task));
    if (!t) return NULL;
    t->budget.limit = app->budget;
    t->app = app;
    app->refs++;
    t->c = c;
    if (c) conn_hold(c);
    if (app->nidle_co > 0) {
        app->nidle_co--;
        t->co = app->idle_co[app->nidle_co].co;
        t->co_ref = app->idle_co[app->nidle_co].ref;
    } else {
        lua_State *L = app->L;
        t->co = lua_newthread(L);
        t->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    /* Set again on reuse: it restarts the count, so no step of the last
     * task is charged to this one. */
    lua_sethook(t->co, lx_budget_hook, LUA_MASKCOUNT, HOOK_STEP);
    return t;
}

void lx_on_request(conn *c, http_request *req, void *ud)
{
    lx_runtime *rt = ud;
    lx_app *app = rt->app;
    route_match m;
    route_result rr = route_find(app->routes, req->method, req->path, req->path_len, &m);
    if (rr == ROUTE_NOT_FOUND) {
        conn_respond_error(c, 404, "no route");
        return;
    }
    if (rr == ROUTE_NO_METHOD) {
        char body[160];
        int n = snprintf(body, sizeof(body), "{\"error\":\"method not allowed\"}");
        conn_response_start(c, 405);
        conn_response_header(c, "Allow", 5, m.allow, strlen(m.allow));
        conn_response_header(c, "Content-Type", 12, "application/json", 16);
        conn_response_finish(c, body, (size_t)n);
        return;
    }
    app->refs++;
    bool enforce = lx_unprotected_begin(app);
    lx_task *t = lx_task_new(app, c);
    if (!t) {
        conn_respond_error(c, 503, "out of memory");
    } else {
        t->req = req;
        t->match = &m;
        lua_pushcfunction(t->co, task_main);
        lua_pushlightuserdata(t->co, t);
        lx_task_run(t, 1);
    }
    lx_unprotected_end(app, enforce);
    lx_app_release(app);
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
    current_rt = rt;
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
        return -1;
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
