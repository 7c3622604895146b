/* sandbox.c: a Lua state's allocator with its memory limit, its panic
 * function, and the guards on the standard library that keep the budget
 * and the limit out of a script's reach. */
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
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Every state's allocator: counts what it holds and, while script code
 * runs, refuses to grow past the limit.  Lua then collects in full and
 * tries once more before it raises "not enough memory", so a refusal
 * happens only when the live data does not fit. */
void *lx_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
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
int lx_panic(lua_State *L)
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
 * functions that reach past that are gone (see lx_guard_libraries). */
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

void lx_mark_stopped(lua_State *L)
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
void lx_guard_libraries(lua_State *L)
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
