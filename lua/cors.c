/* cors.c: CORS policies from the script (sluice.config{cors=...} and
 * sluice.route's cors option) and the per-request decision that applies
 * them (lx_cors_request, called by lx_on_request before the route runs).
 *
 * The checks and header lines themselves are core/cors.c's, shared with
 * HTTP/2.  Here: which policy a request falls under (its route's, else the
 * app's), answering a preflight, refusing what an unlisted origin may not
 * do (a WebSocket handshake: cross-site WebSocket hijacking; a request with
 * side effects: a browser sends a "simple" POST without asking first), and
 * handing the allowed origin's header lines to the connection, which puts
 * them in whatever head answers the request (conn_set_extra_head). */
#include "lua/api.h"
#include "lua/internal.h"

#include "core/cors.h"
#include "core/log.h"
#include "core/ws.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Checks a string or a list of strings at the top of the stack (key names
 * it in errors); returns how many bytes joining them with ", " takes. */
static size_t check_list(lua_State *L, const char *what, const char *key, int *n)
{
    size_t total = 0;
    if (lua_type(L, -1) == LUA_TSTRING) {
        *n = 1;
        return lua_rawlen(L, -1);
    }
    if (!lua_istable(L, -1))
        luaL_error(L, "%s: cors.%s must be a string or a list of strings", what, key);
    lua_Integer len = luaL_len(L, -1);
    if (len > 256) luaL_error(L, "%s: cors.%s has more than 256 entries", what, key);
    for (lua_Integer i = 1; i <= len; i++) {
        int t = lua_geti(L, -1, i);
        if (t != LUA_TSTRING) luaL_error(L, "%s: cors.%s[%d] must be a string", what, key, (int)i);
        size_t l = lua_rawlen(L, -1);
        const char *s = lua_tostring(L, -1);
        for (size_t k = 0; k < l; k++)
            if ((unsigned char)s[k] < 0x20 || (unsigned char)s[k] == 0x7f || s[k] == ',')
                luaL_error(L, "%s: cors.%s[%d] holds a control character or a comma", what, key,
                           (int)i);
        total += l + 2;
        lua_pop(L, 1);
    }
    *n = (int)len;
    return total;
}

/* The list at the top of the stack joined with ", " (NULL when empty or
 * out of memory: *oom says which). */
static char *join_list(lua_State *L, bool *oom)
{
    if (lua_type(L, -1) == LUA_TSTRING) {
        char *s = strdup(lua_tostring(L, -1));
        *oom |= !s;
        return s;
    }
    int n;
    size_t cap = check_list(L, "", "", &n) + 1;
    if (n == 0) return NULL;
    char *out = malloc(cap), *o = out;
    if (!out) {
        *oom = true;
        return NULL;
    }
    for (int i = 1; i <= n; i++) {
        lua_geti(L, -1, i);
        size_t l;
        const char *s = lua_tolstring(L, -1, &l);
        if (i > 1) o = memcpy(o, ", ", 2), o += 2;
        memcpy(o, s, l);
        o += l;
        lua_pop(L, 1);
    }
    *o = '\0';
    return out;
}

static bool is_star(lua_State *L)
{
    return lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "*") == 0;
}

static cors_policy *lx_cors_parse(lua_State *L, int idx, const char *what)
{
    idx = lua_absindex(L, idx);
    if (!lua_istable(L, idx)) luaL_error(L, "%s: cors must be a table (or false)", what);
    /* Check everything first: a Lua error must leave nothing allocated. */
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
        int n;
        if (strcmp(k, "origins") == 0 || strcmp(k, "methods") == 0 || strcmp(k, "headers") == 0 ||
            strcmp(k, "expose") == 0) {
            check_list(L, what, k, &n);
            if (strcmp(k, "origins") == 0 && lua_istable(L, -1)) {
                for (int i = 1; i <= n; i++) {
                    lua_geti(L, -1, i);
                    if (lua_rawlen(L, -1) > CORS_ORIGIN_MAX || strchr(lua_tostring(L, -1), ' '))
                        luaL_error(L, "%s: cors.origins[%d] is not an origin", what, i);
                    lua_pop(L, 1);
                }
            }
        } else if (strcmp(k, "credentials") == 0) {
            if (!lua_isboolean(L, -1)) luaL_error(L, "%s: cors.credentials must be a boolean", what);
        } else if (strcmp(k, "max_age") == 0) {
            if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0 ||
                lua_tointeger(L, -1) > 86400 * 365)
                luaL_error(L, "%s: cors.max_age must be an integer of seconds >= 0", what);
        } else {
            luaL_error(L, "%s: unknown cors setting '%s'", what, k);
        }
        lua_pop(L, 1);
    }
    cors_policy *p = calloc(1, sizeof(*p));
    if (!p) luaL_error(L, "%s: out of memory", what);
    bool oom = false;
    p->max_age = -1;
    p->any_header = true;
    if (lua_getfield(L, idx, "origins") != LUA_TNIL) {
        if (is_star(L)) {
            p->any_origin = true;
        } else {
            int n = 1;
            if (lua_istable(L, -1)) check_list(L, what, "origins", &n);
            p->origins = calloc((size_t)(n ? n : 1), sizeof(char *));
            oom |= !p->origins;
            for (int i = 1; p->origins && i <= n; i++) {
                if (lua_istable(L, -1)) lua_geti(L, -1, i);
                else lua_pushvalue(L, -1);
                if (!(p->origins[p->norigins++] = strdup(lua_tostring(L, -1)))) oom = true;
                lua_pop(L, 1);
            }
        }
    }
    lua_pop(L, 1);
    if (lua_getfield(L, idx, "methods") != LUA_TNIL) p->methods = join_list(L, &oom);
    lua_pop(L, 1);
    if (lua_getfield(L, idx, "headers") != LUA_TNIL && !is_star(L)) {
        p->any_header = false;
        p->headers = join_list(L, &oom);
    }
    lua_pop(L, 1);
    if (lua_getfield(L, idx, "expose") != LUA_TNIL) p->expose = join_list(L, &oom);
    lua_pop(L, 1);
    if (lua_getfield(L, idx, "credentials") != LUA_TNIL) p->credentials = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (lua_getfield(L, idx, "max_age") != LUA_TNIL) p->max_age = (long)lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (oom) {
        cors_policy_free(p);
        luaL_error(L, "%s: out of memory", what);
    }
    return p;
}

void lx_cors_config(lua_State *L, lx_app *app, int idx)
{
    cors_policy *p = NULL;
    if (!(lua_isboolean(L, idx) && !lua_toboolean(L, idx)))
        p = lx_cors_parse(L, idx, "sluice.config");
    cors_policy_free(app->cors);
    app->cors = p;
    if (p) app->cors_on = true;
}

int lx_cors_route(lua_State *L, lx_app *app, int idx, cors_policy **out)
{
    *out = NULL;
    idx = lua_absindex(L, idx);
    if (!lua_istable(L, idx)) return luaL_argerror(L, 4, "route options must be a table");
    bool off = false;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
        if (strcmp(k, "cors") != 0)
            return luaL_argerror(L, 4, lua_pushfstring(L, "unknown route option '%s'", k));
        if (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) off = true;
        lua_pop(L, 1);
    }
    if (lua_getfield(L, idx, "cors") != LUA_TNIL && !off)
        *out = lx_cors_parse(L, -1, "sluice.route");
    lua_pop(L, 1);
    return off ? 1 : 0;
}

int lx_cors_add_route(lx_app *app, intptr_t handler, cors_policy *p, bool off)
{
    struct lx_route_cors *n =
        realloc(app->route_cors, (size_t)(app->nroute_cors + 1) * sizeof(*app->route_cors));
    if (!n) return -1;
    app->route_cors = n;
    n[app->nroute_cors].handler = handler;
    n[app->nroute_cors].policy = p;
    n[app->nroute_cors].off = off;
    app->nroute_cors++;
    app->cors_on = true;
    return 0;
}

void lx_cors_free(lx_app *app)
{
    cors_policy_free(app->cors);
    for (int i = 0; i < app->nroute_cors; i++)
        cors_policy_free(app->route_cors[i].policy);
    free(app->route_cors);
    app->cors = NULL;
    app->route_cors = NULL;
    app->nroute_cors = 0;
}

/* The policy of a route (its own, none when it said cors = false, else
 * the app's). */
static const cors_policy *policy_for(const lx_app *app, intptr_t handler)
{
    for (int i = 0; i < app->nroute_cors; i++)
        if (app->route_cors[i].handler == handler)
            return app->route_cors[i].off ? NULL : app->route_cors[i].policy;
    return app->cors;
}

static log_limit cors_log = LOG_LIMIT_INIT;

static void refuse(conn *c, unsigned long long *counter, const char *why, const char *origin,
                   size_t olen)
{
    __atomic_add_fetch(counter, 1, __ATOMIC_RELAXED);
    char remote[64];
    LOG_KV_LIMITED(&cors_log, 1.0, LOG_INFO, why,
                   LOG_S("origin", olen > 200 ? "(long)" : origin),
                   LOG_S("remote", conn_remote_addr(c, remote, sizeof(remote))));
    conn_respond_error(c, 403, why);
}

bool lx_cors_request(lx_app *app, conn *c, http_request *req, int rr, const route_match *m)
{
    size_t olen, hlen;
    const char *origin = http_header_get(req, "origin", &olen);
    if (!origin) return false; /* not from a browser's cross-origin fetch */
    char o[CORS_ORIGIN_MAX + 1];
    if (olen > CORS_ORIGIN_MAX) olen = 0; /* never allowed: see cors_origin_allowed */
    memcpy(o, origin, olen);
    o[olen] = '\0';
    if (rr == ROUTE_NO_METHOD && req->method_id == HTTP_OPTIONS) {
        size_t ml, rhl = 0;
        const char *acrm = http_header_get(req, "access-control-request-method", &ml);
        if (!acrm) return false; /* a plain OPTIONS: 405 as before */
        const char *acrh = http_header_get(req, "access-control-request-headers", &rhl);
        char method[16];
        route_match pm;
        const cors_policy *p = NULL;
        if (ml > 0 && ml < sizeof(method)) {
            memcpy(method, acrm, ml);
            method[ml] = '\0';
            if (route_find(app->routes, method, req->path, req->path_len, &pm) == ROUTE_FOUND)
                p = policy_for(app, pm.handler);
        }
        if (!p) return false; /* no policy for that method here: 405 */
        size_t cap = cors_lines_size(p) + strlen(m->allow) + rhl + 1;
        char *lines = malloc(cap);
        if (!lines) {
            conn_respond_error(c, 503, "out of memory");
            return true;
        }
        int st = cors_preflight(p, o, olen, acrm, ml, acrh, rhl, m->allow, lines);
        if (st == 204) {
            __atomic_add_fetch(&cors_counts.preflights, 1, __ATOMIC_RELAXED);
            conn_response_start(c, 204);
            conn_response_lines(c, lines, strlen(lines));
            conn_response_finish(c, NULL, 0);
        } else {
            refuse(c, &cors_counts.preflight_refused, "CORS preflight refused", o, olen);
        }
        free(lines);
        return true;
    }
    const cors_policy *p = rr == ROUTE_FOUND ? policy_for(app, m->handler) : app->cors;
    if (!p) return false;
    const char *host = http_header_get(req, "host", &hlen);
    if (cors_same_origin(o, olen, host, hlen)) return false;
    if (cors_origin_allowed(p, o, olen)) {
        char *lines = malloc(cors_lines_size(p) + 1);
        if (!lines) {
            conn_respond_error(c, 503, "out of memory");
            return true;
        }
        lines[cors_headers(p, o, olen, lines)] = '\0';
        conn_set_extra_head(c, lines);
        return false;
    }
    size_t ul;
    const char *up = req->upgrade ? http_header_get(req, "upgrade", &ul) : NULL;
    if (up && ws_token_list_has(up, ul, "websocket")) {
        refuse(c, &cors_counts.websocket_refused, "WebSocket origin not allowed", o, olen);
        return true;
    }
    if (req->method_id != HTTP_GET && req->method_id != HTTP_HEAD &&
        req->method_id != HTTP_OPTIONS) {
        refuse(c, &cors_counts.refused, "origin not allowed", o, olen);
        return true;
    }
    /* A read: answered, without the headers that would let the page see
     * it; Vary tells caches the answer depends on Origin. */
    char *vary = strdup("Vary: Origin\r\n");
    if (vary) conn_set_extra_head(c, vary);
    return false;
}
