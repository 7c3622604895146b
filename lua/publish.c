/* publish.c: sluice.publish and what a message meets before storage
 * (on_publish, the checks of names), sluice.topic (retention), and the
 * Lua side of /metrics. */
#include "lua/api.h"
#include "lua/http.h"
#include "lua/internal.h"
#include "lua/shared.h"

#include "core/jsonenc.h"
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

/* Event names refused by hub_event_valid, by where they came from: the
 * one check every path to storage or to a subscriber goes through
 * (sluice.publish, so HTTP and WebSocket publishes too; on_publish; a
 * filter).  Counted and logged, at most a line per 10 s each: a peer or a
 * script can cause them at any rate.  The name itself is not logged (it is
 * not valid text), its length is. */
static const char *const badev_source[BADEV_KINDS] = {"publish", "on_publish", "filter"};
static unsigned long long bad_events[BADEV_KINDS];
static log_limit bad_event_log[BADEV_KINDS];

void lx_count_bad_event(int kind, const char *topic, size_t tlen, size_t elen)
{
    __atomic_add_fetch(&bad_events[kind], 1, __ATOMIC_RELAXED);
    LOG_KV_LIMITED(&bad_event_log[kind], 10.0, kind == BADEV_PUBLISH ? LOG_INFO : LOG_WARN,
                   "invalid event name", LOG_S("source", badev_source[kind]),
                   LOG_SN("topic", topic, tlen), LOG_I("event_bytes", elen));
}

/* Publishes declared JSON whose body did not parse: stored as plain data
 * (docs/lua-api.md, sluice.publish), counted and logged. */
static unsigned long long json_invalid;
static log_limit json_invalid_log;

/* True for a JSON media type: application/json or any type/subtype+json
 * (RFC 6839), any case, parameters (";charset=utf-8") and blanks around
 * ignored. */
static bool media_type_json(const char *ct, size_t len)
{
    size_t i = 0, end;
    while (i < len && (ct[i] == ' ' || ct[i] == '\t'))
        i++;
    for (end = i; end < len && ct[end] != ';'; end++)
        ;
    while (end > i && (ct[end - 1] == ' ' || ct[end - 1] == '\t'))
        end--;
    const char *t = ct + i;
    size_t n = end - i;
    if (n == 16 && strncasecmp(t, "application/json", 16) == 0) return true;
    const char *slash = memchr(t, '/', n);
    return slash && slash > t && n - (size_t)(slash - t) > 6 && strncasecmp(t + n - 5, "+json", 5) == 0;
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
        lua_pushstring(t->co, err_str(status));
        lx_task_run(t, 2);
    }
    lx_unprotected_end(app, enforce);
    lx_app_release(app);
}

static int publish_k(lua_State *L, int status, lua_KContext ctx)
{
    return lua_gettop(L) - (int)ctx;
}

/* sluice.publish(topic, data [, {event = NAME, idempotency_key = KEY,
 * content_type = TYPE}]) -> id | nil, reason.
 * In a request handler it returns once the message is durable.  In a
 * filter or a WebSocket callback it queues the message and returns true:
 * the message is still stored before anyone receives it.
 * A key (1 to 200 bytes) makes a retry within the dedup window answer the
 * first publish's ID and store nothing (SPEC.md, "Publishing exactly
 * once"). */
static int l_publish(lua_State *L)
{
    lx_check_budget(L);
    lx_app *app = app_of(L);
    size_t tlen, dlen, elen = 0, iklen = 0;
    const char *topic = luaL_checklstring(L, 1, &tlen);
    const char *data = luaL_checklstring(L, 2, &dlen);
    const char *event = NULL, *ikey = NULL;
    bool json = false;
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
        if (lua_getfield(L, 3, "content_type") != LUA_TNIL) {
            if (lua_type(L, -1) != LUA_TSTRING)
                return luaL_argerror(L, 3, "content_type must be a string");
            size_t ctlen;
            const char *ct = lua_tolstring(L, -1, &ctlen);
            json = media_type_json(ct, ctlen);
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
        lx_count_bad_event(BADEV_PUBLISH, topic, tlen, elen);
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
            lx_count_bad_event(BADEV_ON_PUBLISH, topic, tlen, elen);
            lua_pushnil(L);
            lua_pushliteral(L, "on_publish returned an invalid event name");
            return 2;
        }
    }
    if (json && !json_valid(data, dlen)) {
        /* Stored as the bytes they are, a string to JSON readers: SPEC.md
         * makes any body a message, so it is not refused. */
        json = false;
        __atomic_add_fetch(&json_invalid, 1, __ATOMIC_RELAXED);
        LOG_KV_LIMITED(&json_invalid_log, 10.0, LOG_INFO,
                       "publish declared JSON that does not parse: stored as plain data",
                       LOG_SN("topic", topic, tlen), LOG_I("bytes", dlen));
    }
    if (!app->hub || !hub_is_open(app->hub)) {
        /* --check, or top-level code before storage opens: nothing to do. */
        lua_pushnil(L);
        lua_pushliteral(L, "not running");
        return 2;
    }
    lx_task *t = app->running_task;
    /* A callback's task (on_message, on_close) can wait for sluice.http
     * but queues its publishes, as before: waiting for each commit would
     * stop a WebSocket client's pipelining. */
    bool can_wait = t && t->co == L && lua_isyieldable(L) && !t->callback;
    /* A WebSocket client's on_message: its publishes pace its reading. */
    hub_publish_fn pacer = can_wait ? NULL : sub_publish_pacer(app->publisher);
    int rc = hub_publish_keyed(app->hub, topic, tlen, event, elen, data, dlen, ikey, iklen,
                               json ? STORE_MSG_JSON : 0, app->origin, can_wait ? publish_resume : pacer,
                               can_wait ? (void *)t
                               : pacer  ? (void *)app->publisher
                                        : NULL);
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushstring(L, err_str(rc));
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
        lua_Integer n = lx_field_integer(L, 2, "backlog");
        if (n < 1 || n > 10000000) return luaL_argerror(L, 2, "backlog must be 1 to 10000000");
        r.backlog = (uint32_t)n;
    }
    if (lua_getfield(L, 2, "max_age") != LUA_TNIL) {
        lx_check_field(L, 2, LUA_TNUMBER, "max_age");
        lua_Number a = lua_tonumber(L, -1);
        if (a <= 0) return luaL_argerror(L, 2, "max_age must be a positive number of seconds");
        r.max_age = a;
    }
    /* Cluster mode: the stream keeps the retention, set from the rules at
     * load (and at a reload); a later call could change nothing. */
    if (!app->loading && app->hub && hub_cluster(app->hub))
        return luaL_error(L, "sluice.topic: in cluster mode retention is set while the script "
                             "loads (the stream's limits; docs/cluster.md)");
    /* At load, the rules go to the hub once the script has loaded. */
    int rc = app->loading ? hub_rules_set(&app->rules, pattern, name_len, prefix, &r)
             : app->hub   ? hub_set_retention(app->hub, pattern, name_len, prefix, &r)
                          : 0;
    if (rc < 0) return luaL_error(L, "sluice.topic: out of memory");
    return 0;
}

/* sluice.metrics() -> the Prometheus text exposition of the counters
 * (core/metrics.c), with the Lua layer's own. */
char *lx_metrics_text(lx_app *app, size_t *len)
{
    metrics_extra extra[2 + BADEV_KINDS + LX_HTTP_METRICS + LXS_METRICS];
    size_t n = 0;
    extra[n++] = (metrics_extra){"sluice_script_errors_total", "counter",
                                 "Errors raised by the app's Lua code.", NULL, lx_script_errors()};
    static const char *const labels[BADEV_KINDS] = {"source=\"publish\"", "source=\"on_publish\"",
                                                    "source=\"filter\""};
    for (int i = 0; i < BADEV_KINDS; i++)
        extra[n++] = (metrics_extra){
            "sluice_invalid_events_total", "counter",
            "Event names refused (not UTF-8, control characters, too long), by source.", labels[i],
            __atomic_load_n(&bad_events[i], __ATOMIC_RELAXED)};
    extra[n++] = (metrics_extra){
        "sluice_publish_json_invalid_total", "counter",
        "Publishes declared as JSON whose data did not parse, stored as plain data.", NULL,
        __atomic_load_n(&json_invalid, __ATOMIC_RELAXED)};
    n += lx_http_metrics(extra + n);
    n += lxs_metrics(extra + n);
    return metrics_render(app->hub, extra, n, len);
}

static int l_metrics(lua_State *L)
{
    size_t len;
    char *text = lx_metrics_text(app_of(L), &len);
    if (!text) return luaL_error(L, "out of memory");
    lua_pushlstring(L, text, len);
    free(text);
    return 1;
}

void lx_open_publish(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"publish", l_publish},
        {"topic", l_topic},
        {"metrics", l_metrics},
        {"on_publish", l_on_publish},
        {"valid_topic", l_valid_topic},
        {"valid_event", l_valid_event},
        {NULL, NULL},
    };
    luaL_setfuncs(L, fns, 0);
}
