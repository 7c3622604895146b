/* config.c: sluice.config{...} and the settings it fills (lx_config), with
 * every check made before anything changes (a second, wrong setting must
 * leave the first one whole), and the argument checks the other sluice.*
 * functions share. */
#include "lua/api.h"
#include "lua/http.h"
#include "lua/internal.h"

#include "core/log.h"
#include "core/metrics.h"
#include "core/route.h"
#include "core/session.h"
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

void lx_config_free(lx_config *cfg)
{
    for (int i = 0; i < cfg->nlisten; i++)
        free(cfg->listen[i]);
    for (int i = 0; i < cfg->ntls_listen; i++)
        free(cfg->tls_listen[i]);
    free(cfg->tls_cert);
    free(cfg->tls_key);
    free(cfg->data_dir);
    free(cfg->admin_listen);
    free(cfg->admin_token_file);
    cfg->admin_listen = cfg->admin_token_file = NULL;
    lx_cluster_config *cl = &cfg->cluster;
    char **cs[] = {&cl->servers, &cl->stream, &cl->user,     &cl->password, &cl->token,
                   &cl->creds,   &cl->tls_ca, &cl->tls_cert, &cl->tls_key};
    for (size_t i = 0; i < sizeof(cs) / sizeof(cs[0]); i++) {
        free(*cs[i]);
        *cs[i] = NULL;
    }
    cl->replicas = 0;
    cfg->nlisten = cfg->ntls_listen = 0;
    cfg->tls_cert = cfg->tls_key = cfg->data_dir = NULL;
}

static bool str_differ(const char *a, const char *b)
{
    return (a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0);
}

static bool list_differ(char *const *a, int na, char *const *b, int nb)
{
    if (na != nb) return true;
    for (int i = 0; i < na; i++)
        if (str_differ(a[i], b[i])) return true;
    return false;
}

int lx_config_start_only_changes(const lx_config *was, const lx_config *now, char *out,
                                 size_t outlen)
{
    const lx_cluster_config *cw = &was->cluster, *cn = &now->cluster;
    const struct {
        const char *name;
        bool differ;
    } s[] = {
        {"listen", list_differ(was->listen, was->nlisten, now->listen, now->nlisten)},
        {"tls", list_differ(was->tls_listen, was->ntls_listen, now->tls_listen, now->ntls_listen) ||
                    str_differ(was->tls_cert, now->tls_cert) ||
                    str_differ(was->tls_key, now->tls_key)},
        {"data", str_differ(was->data_dir, now->data_dir)},
        {"workers", was->workers != now->workers},
        {"storage", was->relaxed != now->relaxed || was->dedup_window_ms != now->dedup_window_ms},
        {"compression", was->ws_deflate != now->ws_deflate ||
                            was->ws_deflate_min_set != now->ws_deflate_min_set ||
                            was->ws_deflate_min != now->ws_deflate_min},
        {"limits.max_ws_message", was->max_ws_message != now->max_ws_message},
        {"limits.max_publish_queue", was->max_publish_queue != now->max_publish_queue},
        {"limits.max_waiting_resumes", was->max_waiting_resumes != now->max_waiting_resumes},
        {"admin", str_differ(was->admin_listen, now->admin_listen) ||
                      str_differ(was->admin_token_file, now->admin_token_file)},
        {"cluster", str_differ(cw->servers, cn->servers) || str_differ(cw->stream, cn->stream) ||
                        str_differ(cw->user, cn->user) || str_differ(cw->password, cn->password) ||
                        str_differ(cw->token, cn->token) || str_differ(cw->creds, cn->creds) ||
                        str_differ(cw->tls_ca, cn->tls_ca) ||
                        str_differ(cw->tls_cert, cn->tls_cert) ||
                        str_differ(cw->tls_key, cn->tls_key) || cw->replicas != cn->replicas},
    };
    int n = 0;
    size_t used = 0;
    if (outlen) out[0] = '\0';
    for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++) {
        if (!s[i].differ) continue;
        int w = snprintf(out + used, outlen - used, "%s%s", n ? "," : "", s[i].name);
        if (w > 0 && (size_t)w < outlen - used) used += (size_t)w;
        n++;
    }
    return n;
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
        if (!server_addr_valid(lua_tostring(L, -1)))
            luaL_error(L, "sluice.config: %s: bad address '%s' (want ADDR:PORT or [V6ADDR]:PORT)",
                       what, lua_tostring(L, -1));
        fresh[nfresh++] = strdup(lua_tostring(L, -1));
    } else {
        if (!lua_istable(L, -1))
            luaL_error(L, "sluice.config: %s must be a string or a list", what);
        lua_Integer len = luaL_len(L, -1);
        if (len > LX_MAX_LISTEN)
            luaL_error(L, "sluice.config: at most %d %s addresses", LX_MAX_LISTEN, what);
        for (lua_Integer i = 1; i <= len; i++) {
            int type = lua_geti(L, -1, i);
            if (type != LUA_TSTRING)
                luaL_error(L, "sluice.config: %s[%d] must be a string", what, (int)i);
            if (!server_addr_valid(lua_tostring(L, -1)))
                luaL_error(L,
                           "sluice.config: %s[%d]: bad address '%s' (want ADDR:PORT or "
                           "[V6ADDR]:PORT)",
                           what, (int)i, lua_tostring(L, -1));
            lua_pop(L, 1);
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
        else if (strcmp(k, "max_waiting_resumes") == 0)
            cfg->max_waiting_resumes = v < 1 ? 1 : (size_t)v;
        else if (strcmp(k, "max_ws_message") == 0) {
            if (v > (double)WS_MESSAGE_MAX)
                luaL_error(L, "sluice.config: limits.max_ws_message: at most %zu bytes (1 GiB)",
                           WS_MESSAGE_MAX);
            cfg->max_ws_message = (size_t)v;
        } else if (strcmp(k, "script_memory") == 0)
            cfg->script_memory = v < 1024 * 1024 ? 1024 * 1024 : (size_t)v;
        else
            luaL_error(L, "sluice.config: unknown limit '%s'", k);
#undef LIMIT
        lua_pop(L, 1);
    }
}

/* compression = {websocket = true|false, min_size = bytes}: permessage-deflate
 * (docs/lua-api.md).  Checked whole before anything is set. */
static void config_compression(lua_State *L, lx_config *cfg)
{
    if (!lua_istable(L, -1)) luaL_error(L, "sluice.config: compression must be a table");
    int on = cfg->ws_deflate;
    long long min = cfg->ws_deflate_min_set ? (long long)cfg->ws_deflate_min : -1;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        if (k && strcmp(k, "websocket") == 0) {
            if (!lua_isboolean(L, -1))
                luaL_error(L, "sluice.config: compression.websocket must be a boolean");
            on = lua_toboolean(L, -1) ? 1 : -1;
        } else if (k && strcmp(k, "min_size") == 0) {
            if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0)
                luaL_error(L, "sluice.config: compression.min_size must be an integer >= 0");
            min = (long long)lua_tointeger(L, -1);
        } else {
            luaL_error(L, "sluice.config: unknown compression setting '%s'", k ? k : "?");
        }
        lua_pop(L, 1);
    }
    cfg->ws_deflate = on;
    if (min >= 0) {
        cfg->ws_deflate_min = (size_t)min;
        cfg->ws_deflate_min_set = true;
    }
}

/* cluster = {servers=, stream=, replicas=, user=, password=, token=,
 * creds=, tls={ca=, cert=, key=}}: every key and type checked first, then
 * the copies made, then the old values replaced (an error leaves them). */
static void config_cluster(lua_State *L, lx_config *cfg)
{
    static const char *const strs[] = {"stream", "user", "password", "token", "creds"};
    static const char *const tls_keys[] = {"ca", "cert", "key"};
    if (!lua_istable(L, -1)) luaL_error(L, "sluice.config: cluster must be a table");
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "sluice.config: cluster keys are names");
        const char *k = lua_tostring(L, -2);
        bool known =
            strcmp(k, "servers") == 0 || strcmp(k, "replicas") == 0 || strcmp(k, "tls") == 0;
        for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
            if (strcmp(k, strs[i]) == 0) {
                known = true;
                if (lua_type(L, -1) != LUA_TSTRING)
                    luaL_error(L, "sluice.config: cluster.%s must be a string", k);
            }
        if (!known) luaL_error(L, "sluice.config: unknown cluster setting '%s'", k);
        lua_pop(L, 1);
    }
    luaL_Buffer servers;
    int stype = lua_getfield(L, -1, "servers");
    if (stype == LUA_TTABLE) {
        lua_Integer n = luaL_len(L, -1);
        if (n < 1 || n > 16) luaL_error(L, "sluice.config: cluster.servers: 1 to 16 URLs");
        for (lua_Integer i = 1; i <= n; i++) {
            if (lua_geti(L, -1, i) != LUA_TSTRING)
                luaL_error(L, "sluice.config: cluster.servers[%d] must be a string", (int)i);
            lua_pop(L, 1);
        }
        luaL_buffinit(L, &servers);
        for (lua_Integer i = 1; i <= n; i++) {
            if (i > 1) luaL_addchar(&servers, ',');
            lua_geti(L, -2, i); /* the buffer may hold a slot */
            luaL_addvalue(&servers);
        }
        luaL_pushresult(&servers);
        lua_remove(L, -2);
    } else if (stype != LUA_TSTRING && stype != LUA_TNIL) {
        luaL_error(L, "sluice.config: cluster.servers must be a string or a list of strings");
    }
    int replicas = 0;
    if (lua_getfield(L, -2, "replicas") != LUA_TNIL) {
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > 5)
            luaL_error(L, "sluice.config: cluster.replicas must be an integer from 1 to 5");
        replicas = (int)lua_tointeger(L, -1);
    }
    lua_pop(L, 1);
    int ttype = lua_getfield(L, -2, "tls");
    if (ttype != LUA_TNIL) {
        if (ttype != LUA_TTABLE) luaL_error(L, "sluice.config: cluster.tls must be a table");
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
            bool known = false;
            for (size_t i = 0; i < 3; i++)
                known |= strcmp(k, tls_keys[i]) == 0;
            if (!known) luaL_error(L, "sluice.config: unknown cluster.tls setting '%s'", k);
            if (lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "sluice.config: cluster.tls.%s must be a string", k);
            lua_pop(L, 1);
        }
    }
    /* Stack: cluster, servers, tls.  Checked: now the copies. */
    lx_cluster_config fresh = {.replicas = replicas};
    char **tls_out[] = {&fresh.tls_ca, &fresh.tls_cert, &fresh.tls_key};
    char **str_out[] = {&fresh.stream, &fresh.user, &fresh.password, &fresh.token, &fresh.creds};
    bool oom = false;
    if (lua_type(L, -2) == LUA_TSTRING) oom |= !(fresh.servers = strdup(lua_tostring(L, -2)));
    for (size_t i = 0; i < 3 && ttype == LUA_TTABLE; i++) {
        if (lua_getfield(L, -1, tls_keys[i]) == LUA_TSTRING)
            oom |= !(*tls_out[i] = strdup(lua_tostring(L, -1)));
        lua_pop(L, 1);
    }
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
        if (lua_getfield(L, -3, strs[i]) == LUA_TSTRING)
            oom |= !(*str_out[i] = strdup(lua_tostring(L, -1)));
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
    lx_config old = {.cluster = cfg->cluster};
    cfg->cluster = fresh;
    lx_config_free(&old);
    if (oom) {
        old.cluster = cfg->cluster;
        memset(&cfg->cluster, 0, sizeof(cfg->cluster));
        lx_config_free(&old);
        luaL_error(L, "sluice.config: out of memory");
    }
}

/* Checks that the value on top of the stack, option `key` of argument
 * `arg`, has the type wanted; the error names both ("bad argument #2 to
 * 'topic' (backlog must be an integer, not string)"). */
void lx_check_field(lua_State *L, int arg, int type, const char *key)
{
    if (lua_type(L, -1) != type)
        luaL_argerror(L, arg,
                      lua_pushfstring(L, "%s must be a %s, not %s", key, lua_typename(L, type),
                                      luaL_typename(L, -1)));
}

lua_Integer lx_field_integer(lua_State *L, int arg, const char *key)
{
    if (!lua_isinteger(L, -1))
        luaL_argerror(
            L, arg, lua_pushfstring(L, "%s must be an integer, not %s", key, luaL_typename(L, -1)));
    return lua_tointeger(L, -1);
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
            lx_check_field(L, 1, LUA_TTABLE, "tls");
            /* Every type is checked before anything changes (a second
             * call with a bad type once freed the first call's strings
             * and left them to be freed again). */
            if (lua_getfield(L, -1, "cert") != LUA_TNIL)
                lx_check_field(L, 1, LUA_TSTRING, "tls.cert");
            if (lua_getfield(L, -2, "key") != LUA_TNIL)
                lx_check_field(L, 1, LUA_TSTRING, "tls.key");
            lua_getfield(L, -3, "listen");
            if (!lua_isnil(L, -1))
                config_addr_list(L, "tls.listen", cfg->tls_listen, &cfg->ntls_listen);
            lua_pop(L, 1);
            if (!lua_isnil(L, -1)) config_string(L, &cfg->tls_key);
            lua_pop(L, 1);
            if (!lua_isnil(L, -1)) config_string(L, &cfg->tls_cert);
            lua_pop(L, 1);
        } else if (strcmp(k, "cors") == 0) {
            lx_cors_config(L, app, -1);
        } else if (strcmp(k, "admin") == 0) {
            /* { listen = "ADDR:PORT", token_file = FILE }: flags win. */
            lx_check_field(L, 1, LUA_TTABLE, "admin");
            lua_pushnil(L);
            while (lua_next(L, -2)) {
                const char *ak = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
                if (strcmp(ak, "listen") == 0) {
                    lx_check_field(L, 1, LUA_TSTRING, "admin.listen");
                    if (!server_addr_valid(lua_tostring(L, -1)))
                        return luaL_error(L,
                                          "sluice.config: admin.listen: bad address '%s' (want "
                                          "ADDR:PORT or [V6ADDR]:PORT)",
                                          lua_tostring(L, -1));
                    config_string(L, &cfg->admin_listen);
                } else if (strcmp(ak, "token_file") == 0) {
                    lx_check_field(L, 1, LUA_TSTRING, "admin.token_file");
                    config_string(L, &cfg->admin_token_file);
                } else {
                    return luaL_error(L, "sluice.config: unknown key admin.%s", ak);
                }
                lua_pop(L, 1);
            }
        } else if (strcmp(k, "data") == 0) {
            lx_check_field(L, 1, LUA_TSTRING, "data");
            config_string(L, &cfg->data_dir);
        } else if (strcmp(k, "storage") == 0) {
            lx_check_field(L, 1, LUA_TTABLE, "storage");
            if (lua_getfield(L, -1, "durability") != LUA_TNIL) {
                lx_check_field(L, 1, LUA_TSTRING, "storage.durability");
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
                lx_check_field(L, 1, LUA_TNUMBER, "storage.dedup_window");
                lua_Number w = lua_tonumber(L, -1);
                if (!(w >= 0.001 && w <= 2592000))
                    return luaL_error(
                        L, "sluice.config: storage.dedup_window is 0.001 to 2592000 seconds");
                cfg->dedup_window_ms = (uint64_t)(w * 1000);
            }
            lua_pop(L, 1);
        } else if (strcmp(k, "compression") == 0) {
            config_compression(L, cfg);
        } else if (strcmp(k, "workers") == 0) {
            lua_Integer w = lx_field_integer(L, 1, "workers");
            if (w < 1 || w > 1024) return luaL_error(L, "sluice.config: workers must be 1..1024");
            cfg->workers = (int)w;
        } else if (strcmp(k, "http") == 0) {
            lx_http_config(L, app);
        } else if (strcmp(k, "cluster") == 0) {
            config_cluster(L, cfg);
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

void lx_open_config(lua_State *L)
{
    lua_pushcfunction(L, l_config);
    lua_setfield(L, -2, "config");
}
