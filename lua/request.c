/* request.c: a request's life in the Lua layer: the coroutine task that
 * runs its handler, the req object (fields built on first use), and the
 * answer made from what the handler returns. */
#include "lua/api.h"
#include "lua/internal.h"

#include "core/defs.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/route.h"
#include "core/subscriber.h"
#include "storage/store.h"
#include "storage/writer.h"

#include <ctype.h>
#include <lauxlib.h>
#include <lua-cjson.h>
#include <lua.h>
#include <lualib.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char req_src_key = 0; /* registry: the weak table req -> req_src */

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
void lx_req_build_all(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    req_src *s = req_source(L, idx);
    for (int f = 0; f < NLAZY; f++)
        if (build_lazy(L, idx, s, f)) lua_pop(L, 1);
}

/* Whether the value at idx has the metatable at registry slot mt_ref:
 * luaL_testudata without its lookup of the name. */
bool lx_has_metatable(lua_State *L, int idx, int mt_ref)
{
    if (!lua_getmetatable(L, idx)) return false;
    lua_rawgeti(L, LUA_REGISTRYINDEX, mt_ref);
    bool same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same;
}

bool lx_is_req(lua_State *L, int idx)
{
    return lx_has_metatable(L, idx, app_of(L)->req_mt_ref);
}

/* REQ_MT.__index: req:subscribe, and the fields not built yet. */
/* req:header(name): one header's value, the same as req.headers[name]
 * (any case; repeated ones joined with ", "), without building the whole
 * req.headers table: the default app reads Idempotency-Key on every
 * publish, where the table cost about 5,000 instructions. */
static int l_req_header(lua_State *L)
{
    req_src *s = lx_is_req(L, 1) ? req_source(L, 1) : NULL;
    if (!s) return luaL_argerror(L, 1, "req expected");
    size_t want_len;
    const char *want = luaL_checklstring(L, 2, &want_len);
    const char *p = s->text + s->query_len, *name, *value;
    uint32_t name_len, value_len;
    luaL_Buffer b;
    int found = 0;
    for (int i = 0; i < s->nheaders; i++) {
        p = get_pair(p, &name, &name_len, &value, &value_len);
        if (name_len != want_len || strncasecmp(name, want, want_len) != 0) continue;
        if (found++ == 0)
            luaL_buffinit(L, &b);
        else
            luaL_addlstring(&b, ", ", 2);
        luaL_addlstring(&b, value, value_len);
    }
    if (!found) return 0;
    luaL_pushresult(&b);
    return 1;
}

static int l_req_index(lua_State *L)
{
    if (lua_type(L, 2) != LUA_TSTRING) return 0;
    size_t n;
    const char *k = lua_tolstring(L, 2, &n);
    if (STR_IS(k, n, "subscribe")) {
        lua_pushcfunction(L, lx_req_subscribe);
        return 1;
    }
    if (STR_IS(k, n, "header")) {
        lua_pushcfunction(L, l_req_header);
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
    lx_req_build_all(L, 1);
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
    if (t->on_end) t->on_end(t, finished);
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
    if (t->callback)
        LOG_KV(LOG_ERROR, what, LOG_S("script", t->app->script), LOG_S("callback", t->callback),
               LOG_S("error", msg), LOG_S("traceback", lua_tostring(t->app->L, -1)));
    else
        LOG_KV(LOG_ERROR, what, LOG_S("script", t->app->script), LOG_S("error", msg),
               LOG_S("traceback", lua_tostring(t->app->L, -1)));
    lx_count_error();
    lua_pop(t->app->L, 1);
    if (t->c && !conn_closed(t->c)) conn_respond_error(t->c, 500, "script error");
}

static void log_bad_result(lx_task *t, const char *problem);

static void respond_from_results(lx_task *t, int nres)
{
    lua_State *L = t->co;
    conn *c = t->c;
    int base = lua_gettop(L) - nres + 1;
    if (nres >= 1 && lua_type(L, base) == LUA_TUSERDATA &&
        lx_has_metatable(L, base, t->app->sub_mt_ref)) {
        lx_start_subscription(t, base);
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
        log_bad_result(t, problem);
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
            if (STR_IS_CASE(name, nl, "content-type")) has_ctype = true;
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
        conn_response_header(c, STRLIT("Content-Type"), ct, sizeof(ct) - 1);
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
    lx_run_enter(app, &run, &t->budget);
    app->running_task = t;
    const void *prev_origin = app->origin;
    struct sub_session *prev_publisher = app->publisher;
    if (t->callback) {
        sub_session *s = t->session ? *t->session : NULL;
        app->origin = s ? sub_origin(s) : NULL;
        app->publisher = s;
    }
    int nres = 0;
    int st = lua_resume(t->co, app->L, nargs, &nres);
    app->origin = prev_origin;
    app->publisher = prev_publisher;
    lx_run_leave(app, &run, t->co);
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
        lua_pushfstring(t->co, "%s (caught by pcall)", lx_over_what(t->budget.exceeded));
        task_fail(t, lx_run_failure(app, &run, &t->budget, st));
        task_end(t, false);
    } else if (st == LUA_OK) {
        if (t->c && !conn_closed(t->c)) respond_from_results(t, nres);
        task_end(t, true);
    } else {
        task_fail(t, lx_run_failure(app, &run, &t->budget, st));
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

/* GET /healthz and /metrics stay served when the app routes neither
 * (SPEC.md): load balancers and scrapers should not depend on each app
 * remembering them.  True when it answered. */
static bool builtin_path(lx_app *app, conn *c, const http_request *req)
{
    bool get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
    if (!get) return false;
    if (STR_IS(req->path, req->path_len, "/healthz")) {
        conn_response_start(c, 200);
        conn_response_header(c, STRLIT("Content-Type"), STRLIT("text/plain; charset=utf-8"));
        conn_response_finish(c, STRLIT("ok"));
        return true;
    }
    if (!STR_IS(req->path, req->path_len, "/metrics")) return false;
    size_t len;
    char *text = lx_metrics_text(app, &len);
    if (!text) {
        conn_respond_error(c, 503, "out of memory");
        return true;
    }
    conn_response_start(c, 200);
    conn_response_header(c, STRLIT("Content-Type"), STRLIT("text/plain; version=0.0.4"));
    conn_response_finish(c, text, len);
    free(text);
    return true;
}

static const char route_names_key = 0; /* registry: handler ref -> "METHOD pattern" */

void lx_note_route(lua_State *L, int ref, const char *method, const char *pattern)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &route_names_key) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &route_names_key);
    }
    lua_pushfstring(L, "%s %s", strcmp(method, "*") == 0 ? "ANY" : method, pattern);
    lua_rawseti(L, -2, ref);
    lua_pop(L, 1);
}

/* Logs a handler's wrong result with its route and where the handler is
 * defined (file:line), which a traceback cannot give: the handler has
 * returned. */
static void log_bad_result(lx_task *t, const char *problem)
{
    lua_State *L = t->co;
    int top = lua_gettop(L);
    char where[LUA_IDSIZE + 24] = "?";
    const char *route = "?";
    if (t->handler && lua_checkstack(L, 4)) {
        if (lua_rawgetp(L, LUA_REGISTRYINDEX, &route_names_key) == LUA_TTABLE &&
            lua_rawgeti(L, -1, (lua_Integer)t->handler) == LUA_TSTRING)
            route = lua_tostring(L, -1); /* on the stack until the log line is out */
        lua_Debug ar;
        if (lua_rawgeti(L, LUA_REGISTRYINDEX, (lua_Integer)t->handler) == LUA_TFUNCTION &&
            lua_getinfo(L, ">S", &ar))
            snprintf(where, sizeof(where), "%s:%d", ar.short_src, ar.linedefined);
    }
    LOG_KV(LOG_ERROR, "script error", LOG_S("script", t->app->script), LOG_S("error", problem),
           LOG_S("route", route), LOG_S("handler", where));
    lua_settop(L, top);
}

void lx_on_request(conn *c, http_request *req, void *ud)
{
    lx_runtime *rt = ud;
    lx_app *app = rt->app;
    route_match m;
    route_result rr = route_find(app->routes, req->method, req->path, req->path_len, &m);
    /* CORS first: a preflight or a refused origin is answered here. */
    if (app->cors_on && lx_cors_request(app, c, req, rr, &m)) return;
    if (rr == ROUTE_NOT_FOUND) {
        if (builtin_path(app, c, req)) return;
        conn_respond_error(c, 404, "no route");
        return;
    }
    if (rr == ROUTE_NO_METHOD) {
        char body[160];
        int n = snprintf(body, sizeof(body), "{\"error\":\"method not allowed\"}");
        conn_response_start(c, 405);
        conn_response_header(c, STRLIT("Allow"), m.allow, strlen(m.allow));
        conn_response_header(c, STRLIT("Content-Type"), STRLIT("application/json"));
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
        t->handler = m.handler;
        lua_pushcfunction(t->co, task_main);
        lua_pushlightuserdata(t->co, t);
        lx_task_run(t, 1);
    }
    lx_unprotected_end(app, enforce);
    lx_app_release(app);
}

void lx_req_metatable(lx_app *app, lua_State *L)
{
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
    lx_hide_metatable(L, REQ_MT);
}
