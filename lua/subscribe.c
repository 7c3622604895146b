/* subscribe.c: req:subscribe, the app's callbacks on a subscription
 * (filter, on_message, on_close, expiry), each run under its own budget,
 * and the conn object handed to them. */
#include "lua/api.h"
#include "lua/internal.h"
#include "lua/shared.h"

#include "core/defs.h"
#include "core/log.h"
#include "core/utf8.h"
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

typedef struct lx_hooks {
    lx_app *app;
    int filter, on_message, on_close, on_open; /* registry refs or LUA_NOREF */
    lxs_sub *shared;                           /* its count and presence (lua/shared.h) */
    int conn_ref;                              /* the conn object handed to callbacks */
    sub_session *session;                      /* NULL once the subscription ended */
    int busy;                                  /* callbacks running: release waits */
    bool released;                             /* release came while busy */
    bool msg_task;                             /* an on_message task runs or waits */
    bool draining;                             /* on_message_end runs the queue */
    struct lx_msgq *queue;                     /* messages behind it (NULL: none yet) */
    /* opts.expires only (most subscriptions have none, and an ev_timer is
     * 56 bytes of every idle WebSocket): ends the subscription; allocated
     * with the hooks, just behind them. */
    ev_timer *expiry;
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
    lua_pushcfunction(L, lx_traceback);
    lua_insert(L, base);
    lx_budget b = {0};
    lx_budget_arm(&b, app->budget, app->timeout);
    lx_run run;
    lx_run_enter(app, &run, &b);
    const char *prev_hook = app->hook_running;
    app->hook_running = what; /* sluice.http.request's message names it */
    int st = lua_pcall(L, nargs, nres, base);
    app->hook_running = prev_hook;
    lx_run_leave(app, &run, L);
    lua_remove(L, base);
    if (st == LUA_OK && b.exceeded) {
        /* The overrun was caught with pcall and the code returned before
         * the next check: still a failure. */
        lua_pop(L, nres);
        lua_pushfstring(L, "%s (caught by pcall)", lx_over_what(b.exceeded));
        luaL_traceback(L, L, lua_tostring(L, -1), 0);
        lua_remove(L, -2);
        st = LUA_ERRRUN;
    }
    if (st == LUA_OK) return true;
    LOG_KV(LOG_ERROR, lx_run_failure(app, &run, &b, st), LOG_S("script", app->script),
           LOG_S("callback", what), LOG_S("traceback", lua_tostring(L, -1)));
    lx_count_error();
    lua_pop(L, 1);
    return false;
}

static void push_conn(lx_hooks *h, lua_State *L)
{
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

/* A member joined a topic or left it (lua/shared.h): the event goes to the
 * topic like any message (stored, on every worker, in order with the
 * rest), to the subscribers that asked for it (opts.presence_events). */
static void presence_event(void *ud, const char *topic, size_t tlen, bool join, const char *json,
                           size_t len)
{
    lx_app *app = ud;
    if (!app->hub) return;
    int rc = join ? hub_publish(app->hub, topic, tlen, STRLIT("sluice.join"), json, len, NULL, NULL,
                                NULL)
                  : hub_publish(app->hub, topic, tlen, STRLIT("sluice.leave"), json, len, NULL,
                                NULL, NULL);
    if (rc < 0) {
        static log_limit dropped_log = LOG_LIMIT_INIT;
        lxs_count_event_dropped();
        LOG_KV_LIMITED(&dropped_log, 10.0, LOG_WARN, "presence event not published",
                       LOG_S("event", join ? "sluice.join" : "sluice.leave"),
                       LOG_SN("topic", topic, tlen), LOG_S("error", err_str(rc)));
    }
}

/* A subscription with no callbacks still counts (sluice.subscribers): its
 * hooks are the count's handle alone. */
static void count_release(void *ud)
{
    lxs_leave(ud, NULL, NULL);
}
static const sub_hooks count_hooks = {NULL, NULL, NULL, count_release, NULL};

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
    lx_app *app = h->app; /* pinned by hook_filter */
    lua_State *L = app->hookL;
    h->session = s;
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->filter);
    lua_pushvalue(L, -1); /* kept: where it is defined, for a wrong result */
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
        lua_pop(L, 2);
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
            lx_count_bad_event(BADEV_FILTER, m->topic, m->topic_len, elen);
        }
        lua_pop(L, 2);
    } else if (!lua_isnil(L, -1) && !(lua_isboolean(L, -1) && !lua_toboolean(L, -1)) &&
               !app->filter_warned) {
        /* Dropped, as nil would be; said once per script load, not per
         * message (a filter runs for each one). */
        app->filter_warned = true;
        lua_Debug ar;
        lua_pushvalue(L, -3);
        lua_getinfo(L, ">S", &ar);
        char where[LUA_IDSIZE + 24];
        snprintf(where, sizeof(where), "%s:%d", ar.short_src, ar.linedefined);
        LOG_KV(LOG_ERROR,
               "filter returned neither a message table, nil nor false (dropped; "
               "logged once per script load)",
               LOG_S("script", app->script), LOG_S("filter", where),
               LOG_S("returned", luaL_typename(L, -1)));
        lx_count_error();
    }
    lua_pop(L, 3); /* result, the kept table and the kept function */
    return out;
}

/* A WebSocket client's messages that arrived while its on_message waits
 * (sluice.http.request), handled in order once it is done.  Reading goes
 * on meanwhile (so a client that leaves is seen at once) until the queue
 * holds MSGQ_MAX messages or MSGQ_BYTES bytes; then the session stops
 * handing messages over (sub_message_wait: its input paused) until the
 * queue is down to half. */
#define MSGQ_MAX 16
#define MSGQ_BYTES (1024 * 1024)

typedef struct lx_qmsg {
    struct lx_qmsg *next;
    size_t len;
    bool binary;
    char data[];
} lx_qmsg;

typedef struct lx_msgq {
    lx_qmsg *head, *tail;
    unsigned n;
    size_t bytes;
    sub_session *paused; /* told to wait (sub_message_wait), held till done */
} lx_msgq;

static void run_message(lx_hooks *h, const char *data, size_t len, bool binary);

/* Queue full: the session hands no more messages over, until drained. */
static void msgq_resume_input(lx_msgq *q)
{
    if (q->paused) {
        sub_message_done(q->paused);
        q->paused = NULL;
    }
}

/* Drops what is queued (the client was closed for a failure). */
static void msgq_drop(lx_hooks *h)
{
    lx_msgq *q = h->queue;
    if (!q) return;
    while (q->head) {
        lx_qmsg *m = q->head;
        q->head = m->next;
        free(m);
    }
    q->tail = NULL;
    q->n = 0;
    q->bytes = 0;
}

/* An on_message task ended (ok: it returned): a failure closes the
 * client (1011) and drops what is queued; else the next queued message
 * runs (the session, if it ended meanwhile, is not touched: its conn
 * object reads closed). */
static void on_message_end(lx_task *t, bool ok)
{
    lx_hooks *h = t->end_ud;
    lx_msgq *q = h->queue;
    h->msg_task = false;
    if (!ok) {
        if (h->session) sub_close(h->session, 1011, "script error");
        msgq_drop(h);
    }
    if (h->draining) { /* a queued message that ended at once: the loop below goes on */
        hooks_leave(h);
        return;
    }
    h->draining = true;
    while (q && q->head && !h->msg_task) {
        lx_qmsg *m = q->head;
        q->head = m->next;
        if (!q->head) q->tail = NULL;
        q->n--;
        q->bytes -= m->len;
        if (q->paused && q->n <= MSGQ_MAX / 2 && q->bytes <= MSGQ_BYTES / 2) msgq_resume_input(q);
        run_message(h, m->data, m->len, m->binary);
        free(m);
    }
    h->draining = false;
    if (q && !q->head && !h->msg_task) {
        msgq_resume_input(q);
        free(q);
        h->queue = NULL;
    }
    hooks_leave(h);
}

/* Runs on_message(conn, data, binary) in a task of its own, so that it can
 * wait (sluice.http.request).  h->session is NULL once the client has
 * gone (its messages queued before still run). */
static void run_message(lx_hooks *h, const char *data, size_t len, bool binary)
{
    lx_app *app = h->app;
    lx_task *t = lx_task_new(app, NULL);
    if (!t) {
        LOG_KV(LOG_ERROR, "on_message not run: out of memory", LOG_S("script", app->script));
        if (h->session) sub_close(h->session, 1011, "out of memory");
        return;
    }
    lua_rawgeti(t->co, LUA_REGISTRYINDEX, h->on_message);
    push_conn(h, t->co);
    lua_pushlstring(t->co, data, len);
    lua_pushboolean(t->co, binary);
    /* What the callback publishes comes from this client (skip_self) and
     * paces its reading (sub_publish_queued), while it is there. */
    t->callback = "on_message";
    t->session = &h->session;
    t->on_end = on_message_end;
    t->end_ud = h;
    hooks_enter(h); /* the task's, left by on_message_end */
    h->msg_task = true;
    lx_task_run(t, 3);
}

/* A message of a WebSocket client: to on_message now, or behind the one
 * that waits.  The hooks outlive the wait (hooks_enter); a client that
 * leaves meanwhile has its on_close run at once, and what it sent before
 * still runs after, its conn object reading closed. */
static void hook_on_message(void *ud, sub_session *s, const char *data, size_t len, bool binary)
{
    lx_hooks *h = ud;
    if (h->on_message == LUA_NOREF) return; /* hooks for a filter or expires only */
    lx_app *app = h->app;
    app->refs++;
    bool enforce = lx_unprotected_begin(app);
    h->session = s;
    hooks_enter(h); /* this call's: the task may end, and release, below */
    if (!h->msg_task) {
        run_message(h, data, len, binary);
    } else {
        lx_msgq *q = h->queue ? h->queue : calloc(1, sizeof(lx_msgq));
        lx_qmsg *m = q ? malloc(sizeof(lx_qmsg) + len) : NULL;
        if (!m) {
            if (q && !h->queue) free(q);
            LOG_KV(LOG_ERROR, "on_message not run: out of memory", LOG_S("script", app->script));
            sub_close(s, 1011, "out of memory");
        } else {
            h->queue = q;
            m->next = NULL;
            m->len = len;
            m->binary = binary;
            if (len) memcpy(m->data, data, len);
            if (q->tail)
                q->tail->next = m;
            else
                q->head = m;
            q->tail = m;
            q->n++;
            q->bytes += len;
            if (!q->paused && (q->n >= MSGQ_MAX || q->bytes >= MSGQ_BYTES)) {
                q->paused = s;
                sub_message_wait(s);
            }
        }
    }
    hooks_leave(h);
    lx_unprotected_end(app, enforce);
    lx_app_release(app);
}

static void on_close_end(lx_task *t, bool ok)
{
    (void)ok; /* logged by the task; the connection is gone */
    hooks_leave(t->end_ud);
}

/* on_close(conn) runs detached, in a task of its own, so that it can wait
 * (sluice.http.request): the connection is gone (conn.closed is true, send
 * and close do nothing) and nothing of it is touched after a wait; the
 * hooks, which the conn object points to, live until the task ends. */
static void hook_on_close(void *ud, sub_session *s)
{
    lx_hooks *h = ud;
    h->session = NULL; /* the conn object can no longer send */
    if (h->on_close == LUA_NOREF) return;
    lx_app *app = h->app;
    app->refs++;
    bool enforce = lx_unprotected_begin(app);
    lx_task *t = lx_task_new(app, NULL);
    if (!t) {
        LOG_KV(LOG_ERROR, "on_close not run: out of memory", LOG_S("script", app->script));
    } else {
        lua_rawgeti(t->co, LUA_REGISTRYINDEX, h->on_close);
        push_conn(h, t->co);
        t->callback = "on_close";
        t->on_end = on_close_end;
        t->end_ud = h;
        hooks_enter(h);
        lx_task_run(t, 1);
    }
    lx_unprotected_end(app, enforce);
    lx_app_release(app);
}

/* An on_open task ended: a failure closes the client (1011) if it is
 * still there. */
static void on_open_end(lx_task *t, bool ok)
{
    lx_hooks *h = t->end_ud;
    if (!ok && h->session) sub_close(h->session, 1011, "script error");
    hooks_leave(h);
}

/* opts.on_open(conn): the subscription is in place (its head sent).  It
 * runs in a task of its own, so that it can wait (sluice.http.request):
 * what it does before a wait happens before any delivery, as before; after
 * one, messages may have come first, and the client may be gone (its conn
 * object reads closed; the hooks live until the task ends). */
static void run_on_open(lx_hooks *h)
{
    lx_app *app = h->app;
    app->refs++;
    bool enforce = lx_unprotected_begin(app);
    lx_task *t = lx_task_new(app, NULL);
    if (!t) {
        LOG_KV(LOG_ERROR, "on_open not run: out of memory", LOG_S("script", app->script));
        if (h->session) sub_close(h->session, 1011, "out of memory");
    } else {
        lua_rawgeti(t->co, LUA_REGISTRYINDEX, h->on_open);
        push_conn(h, t->co);
        t->callback = "on_open";
        t->on_end = on_open_end;
        t->end_ud = h;
        hooks_enter(h); /* the task's, left by on_open_end */
        lx_task_run(t, 1);
    }
    lx_unprotected_end(app, enforce);
    lx_app_release(app);
}

static void hook_release(void *ud)
{
    lx_hooks *h = ud;
    h->session = NULL;
    if (h->expiry) ev_timer_stop(lx_loop, h->expiry);
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
    luaL_unref(L, LUA_REGISTRYINDEX, h->on_open);
    luaL_unref(L, LUA_REGISTRYINDEX, h->conn_ref);
    lxs_leave(h->shared, presence_event, app);
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
    lx_check_budget(L);
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
    lx_check_budget(L);
    lx_connud *u = check_conn(L);
    lua_Integer code = luaL_optinteger(L, 2, 1000);
    const char *reason = luaL_optstring(L, 3, NULL);
    /* The codes RFC 6455 lets a server send for its own reasons (normal,
     * going away, policy, a message too big to take, internal error, try
     * again later), and the application range. */
    bool standard = code == 1000 || code == 1001 || code == 1008 || code == 1009 || code == 1011 ||
                    code == 1013;
    if (!standard && (code < 3000 || code > 4999))
        return luaL_argerror(L, 2, "1000, 1001, 1008, 1009, 1011, 1013, or 3000 to 4999");
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

/* The options req:subscribe knows and the type of each: anything else is
 * a mistake, raised where the handler called it (file:line). */
static const struct {
    const char *name;
    int type;
} sub_options[] = {
    {"last_event_id", LUA_TSTRING}, {"protocol", LUA_TSTRING},
    {"skip_self", LUA_TBOOLEAN},    {"expires", LUA_TNUMBER},
    {"events", LUA_TTABLE},         {"format", LUA_TSTRING},
    {"filter", LUA_TFUNCTION},      {"on_message", LUA_TFUNCTION},
    {"on_close", LUA_TFUNCTION},    {"on_open", LUA_TFUNCTION},
    {"presence", LUA_TTABLE},       {"presence_events", LUA_TBOOLEAN},
};

static void check_options(lua_State *L, int opts)
{
    lua_pushnil(L);
    while (lua_next(L, opts)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "req:subscribe: option names are strings (got a %s)",
                       luaL_typename(L, -2));
        const char *k = lua_tostring(L, -2);
        size_t i = 0, n = sizeof(sub_options) / sizeof(sub_options[0]);
        while (i < n && strcmp(sub_options[i].name, k) != 0)
            i++;
        if (i == n) luaL_error(L, "req:subscribe: unknown option '%s'", k);
        if (lua_type(L, -1) != sub_options[i].type)
            luaL_error(L, "req:subscribe: opts.%s must be a %s, not a %s", k,
                       lua_typename(L, sub_options[i].type), luaL_typename(L, -1));
        if (strcmp(k, "events") == 0) {
            lua_Integer ne = (lua_Integer)lua_rawlen(L, -1);
            if (ne > 32) luaL_error(L, "req:subscribe: opts.events: at most 32 event names");
            for (lua_Integer j = 1; j <= ne; j++)
                if (lua_rawgeti(L, -1, j) != LUA_TSTRING)
                    luaL_error(L, "req:subscribe: opts.events must list strings");
                else
                    lua_pop(L, 1);
        } else if (strcmp(k, "format") == 0) {
            const char *f = lua_tostring(L, -1);
            if (strcmp(f, "json") != 0 && strcmp(f, "text") != 0)
                luaL_error(L, "req:subscribe: opts.format must be \"json\" or \"text\"");
        }
        lua_pop(L, 1);
    }
}

/* opts.presence = {id = "...", info = {...}} (opts at idx, maybe nil):
 * checks it and pushes its info as JSON (nil when no presence), made here
 * where an error can be raised: the subscription starts outside any
 * protected call. */
static int push_presence_info(lua_State *L, int opts)
{
    /* Raw, like every option: an __index on opts never runs (it could raise
     * or yield where the subscription is half made). */
    if (lua_istable(L, opts)) {
        lua_pushliteral(L, "presence");
        lua_rawget(L, opts);
    }
    if (!lua_istable(L, opts) || lua_isnil(L, -1)) {
        if (lua_istable(L, opts)) lua_pop(L, 1);
        lua_pushnil(L);
        return lua_gettop(L);
    }
    int p = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, p)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
        if (strcmp(k, "id") != 0 && strcmp(k, "info") != 0)
            luaL_error(L, "req:subscribe: unknown key '%s' in opts.presence (id, info)", k);
        lua_pop(L, 1);
    }
    size_t idlen;
    lua_pushliteral(L, "id");
    if (lua_rawget(L, p) != LUA_TSTRING)
        luaL_error(L, "req:subscribe: opts.presence.id must be a string");
    const char *id = lua_tolstring(L, -1, &idlen);
    if (idlen < 1 || idlen > LXS_ID_MAX || !utf8_valid(id, idlen))
        luaL_error(L, "req:subscribe: opts.presence.id must be 1 to %d bytes of UTF-8", LXS_ID_MAX);
    lua_pushliteral(L, "info");
    int t = lua_rawget(L, p);
    if (t != LUA_TNIL && t != LUA_TTABLE)
        luaL_error(L, "req:subscribe: opts.presence.info must be a table");
    if (t == LUA_TNIL) {
        lua_pushliteral(L, "{}");
    } else {
        luaL_requiref(L, "cjson", luaopen_cjson, 0);
        lua_getfield(L, -1, "encode");
        lua_pushvalue(L, -3);
        lua_call(L, 1, 1);
        size_t len;
        lua_tolstring(L, -1, &len);
        if (len > LXS_INFO_MAX)
            luaL_error(L, "req:subscribe: opts.presence.info is %d bytes of JSON (at most %d)",
                       (int)len, LXS_INFO_MAX);
    }
    return lua_gettop(L);
}

/* req:subscribe(topics [, opts]): a userdata that the handler returns, its
 * user values the topics and the options.  One name is kept as the string
 * it is (the usual case: no table to build), several as a list. */
int lx_req_subscribe(lua_State *L)
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
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        check_options(L, 3);
    }
    int info = push_presence_info(L, 3);
    lua_newuserdatauv(L, 1, 3);
    lua_rawgeti(L, LUA_REGISTRYINDEX, app_of(L)->sub_mt_ref);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, topics);
    lua_setiuservalue(L, -2, 1);
    lua_pushvalue(L, 3);
    lua_setiuservalue(L, -2, 2);
    lua_pushvalue(L, info);
    lua_setiuservalue(L, -2, 3);
    return 1;
}

static int opt_get(lua_State *L, int opts, const char *key);

#define REF_NOT_FUNCTION (-100) /* opt_ref: the option is set but not a function */

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

/* The handler returned req:subscribe(...): hand the connection over. */
/* opts[key], raw: lx_start_subscription runs outside any protected call, where
 * an __index metamethod that raised would abort the process. */
static int opt_get(lua_State *L, int opts, const char *key)
{
    lua_pushstring(L, key);
    return lua_rawget(L, opts);
}

void lx_start_subscription(lx_task *t, int idx)
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
    /* Presence (checked by req:subscribe; again here, the table may have
     * changed since) and presence events. */
    const char *pid = NULL, *pinfo = NULL;
    size_t pidlen = 0, pinfolen = 0;
    if (opts) {
        if (opt_get(L, opts, "presence_events") != LUA_TNIL)
            r.presence_events = lua_toboolean(L, -1);
        if (opt_get(L, opts, "presence") == LUA_TTABLE) {
            lua_pushliteral(L, "id");
            if (lua_rawget(L, -2) == LUA_TSTRING) pid = lua_tolstring(L, -1, &pidlen);
            if (lua_getiuservalue(L, idx, 3) == LUA_TSTRING)
                pinfo = lua_tolstring(L, -1, &pinfolen);
            if (!pid || pidlen < 1 || pidlen > LXS_ID_MAX || !utf8_valid(pid, pidlen) || !pinfo)
                problem = "opts.presence.id must be 1 to 128 bytes of UTF-8";
        } else if (!lua_isnil(L, -1)) {
            problem = "opts.presence must be a table";
        }
    }
    lx_hooks *h = NULL;
    int fref = opt_ref(L, opts, "filter"), mref = opt_ref(L, opts, "on_message"),
        cref = opt_ref(L, opts, "on_close"), oref = opt_ref(L, opts, "on_open");
    if (fref == REF_NOT_FUNCTION || mref == REF_NOT_FUNCTION || cref == REF_NOT_FUNCTION ||
        oref == REF_NOT_FUNCTION)
        problem = "opts.filter, opts.on_message, opts.on_close and opts.on_open must be functions";
    if (!problem && (fref != LUA_NOREF || mref != LUA_NOREF || cref != LUA_NOREF ||
                     oref != LUA_NOREF || expires || pid)) {
        h = calloc(1, sizeof(lx_hooks) + (expires ? sizeof(ev_timer) : 0));
        if (!h)
            problem = "out of memory";
        else if (expires)
            h->expiry = (ev_timer *)(h + 1);
    }
    if (problem) {
        for (int i = 0; i < 4; i++) {
            int ref = i == 0 ? fref : i == 1 ? mref : i == 2 ? cref : oref;
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
        h->on_open = oref;
        h->conn_ref = LUA_NOREF;
        r.hooks = fref != LUA_NOREF ? &lua_hooks : &lua_hooks_nofilter;
        r.hooks_ud = h;
        if (expires) {
            /* Armed before the session starts: the start may end it (a
             * poll answered at once), and release stops the timer.  From
             * the loop's time, which lags the clock: never early (a token
             * is valid until its exp). */
            double left = expires - ev_now(lx_loop);
            ev_timer_init(h->expiry, expiry_cb, left > 0 ? left : 0., 0.);
            h->expiry->data = h;
            ev_timer_start(lx_loop, h->expiry);
        }
    }
    /* Counted (and joined) before it starts: once its head is sent, the
     * subscription shows in sluice.subscribers and sluice.presence. */
    lxs_sub *shared = lxs_join(names, lens, n, pid, pidlen, pinfo, pinfolen, presence_event, app);
    if (h) {
        h->shared = shared;
        hooks_enter(h); /* the start may end it (a poll answered at once) */
    } else if (shared) {
        r.hooks = &count_hooks;
        r.hooks_ud = shared;
    }
    const char *why = "cannot subscribe";
    int status = sub_start(c, app->hub, &r, &why);
    if (status == 0) {
        if (h && h->on_open != LUA_NOREF && h->session) run_on_open(h);
        if (h) hooks_leave(h);
        return;
    }
    if (h) {
        hook_release(h); /* (leaves the shared tables) */
        hooks_leave(h);
    } else {
        lxs_leave(shared, presence_event, app);
    }
    if (status == 426) {
        static const char body[] = "{\"error\":\"unsupported WebSocket version (13 only)\"}";
        conn_response_start(c, 426);
        conn_response_header(c, STRLIT("Sec-WebSocket-Version"), STRLIT("13"));
        conn_response_header(c, STRLIT("Content-Type"), STRLIT("application/json"));
        conn_response_finish(c, body, sizeof(body) - 1);
        return;
    }
    conn_respond_error(c, status, why);
}

void lx_sub_metatables(lx_app *app, lua_State *L)
{
    luaL_newmetatable(L, SUB_MT);
    app->sub_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    luaL_newmetatable(L, CONN_MT);
    lua_pushcfunction(L, l_conn_index);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lx_hide_metatable(L, SUB_MT);
    lx_hide_metatable(L, CONN_MT);
}
