/* http.c: sluice.http.request and sluice.http.send (see http.h) on
 * libcurl's multi-socket interface.
 *
 * libcurl tells which sockets to watch (socket_cb: one ev_io each, freed
 * when curl says CURL_POLL_REMOVE, which it does before it closes the
 * socket) and when to call it back (timer_cb: one ev_timer).  The watchers
 * call curl_multi_socket_action and then collect finished transfers
 * (check_done), outside every curl callback: a call is freed there and
 * only there, after curl let go of its handle, and its task is resumed
 * after that, so script code that starts another request never runs
 * inside libcurl.
 *
 * A waiting task pins its app generation and its connection (lx_task_new
 * holds both), so neither a reload nor a client that leaves frees what the
 * answer is resumed into; a closed connection's answer is dropped by
 * lx_task_run.  At worker exit the requests still in flight are failed
 * ("shutting down"), which resumes and ends their tasks. */
#include "lua/http.h"
#include "lua/internal.h"

#include "core/defs.h"
#include "core/log.h"

#include <ctype.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_IN_FLIGHT 256    /* sluice.http.request per worker */
#define DEFAULT_WEBHOOKS 16      /* sluice.http.send transfers at once per worker */
#define DEFAULT_QUEUE 1024       /* sluice.http.send waiting per worker */
#define DEFAULT_TIMEOUT_S 5.0    /* seconds, the whole transfer */
#define MAX_TIMEOUT_S 300.0
#define DEFAULT_MAX_BODY (1024 * 1024)
#define MAX_MAX_BODY (64 * 1024 * 1024)
#define MAX_HEAD 65536 /* the response's header lines */
#define MAX_REDIRS 5
#define IDLE_EASY 64 /* easy handles kept per worker for reuse */

typedef struct http_sock {
    ev_io w;
    struct http_sock *next, *prev; /* every watcher (freed at shutdown if curl did not) */
} http_sock;

typedef struct http_call {
    struct http_call *next, *prev; /* in flight, or in the webhook queue */
    CURL *easy;
    struct curl_slist *headers;
    lx_task *task;     /* NULL for a webhook */
    char *body;        /* the response body so far */
    size_t len, cap, max;
    char *head; /* the header lines of the last response (after redirects, 1xx) */
    size_t hlen, hcap;
    bool too_large, head_too_large;
    char err[CURL_ERROR_SIZE];
} http_call;

typedef struct http_ctx {
    struct ev_loop *loop;
    CURLM *multi;
    ev_timer timer;
    http_call *calls;  /* in flight */
    http_call *qhead, *qtail; /* webhooks waiting for a slot */
    http_sock *socks;
    int requests, webhooks, queued;
    /* Easy handles of finished calls, reset, for the next ones: a fresh
     * handle (allocations and defaults) was a measurable part of a
     * callout's cost (bench/auth_callout.sh). */
    CURL *idle[IDLE_EASY];
    int nidle;
    bool closing;
} http_ctx;

static __thread http_ctx *ctx;
/* The thread's client has been shut down: calls that come later (a task
 * resumed by the shutdown, an on_close as the server ends its connections)
 * are refused instead of starting a client no loop will run. */
static __thread bool ctx_closed;

/* Process-wide counters for /metrics. */
static struct {
    unsigned long long requests, failures, busy, in_flight;
    unsigned long long hooks_sent, hooks_failed, hooks_dropped, hooks_queued;
} stats;
#define COUNT(field, d) __atomic_add_fetch(&stats.field, (unsigned long long)(d), __ATOMIC_RELAXED)
#define READ(field) __atomic_load_n(&stats.field, __ATOMIC_RELAXED)

static log_limit hook_fail_log, hook_drop_log, busy_log;

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static bool curl_ok;
static void curl_init_once(void)
{
    curl_ok = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
}

/* ---- the loop's side ----------------------------------------------------- */

static void check_done(http_ctx *x);

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    http_ctx *x = w->data;
    int fd = w->fd; /* w may be freed inside the call */
    int flags = (revents & EV_READ ? CURL_CSELECT_IN : 0) | (revents & EV_WRITE ? CURL_CSELECT_OUT : 0);
    int running;
    curl_multi_socket_action(x->multi, fd, flags, &running);
    check_done(x);
}

static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    http_ctx *x = w->data;
    int running;
    curl_multi_socket_action(x->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(x);
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *sockp)
{
    http_ctx *x = userp;
    http_sock *s = sockp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            ev_io_stop(x->loop, &s->w);
            if (s->prev) s->prev->next = s->next;
            else x->socks = s->next;
            if (s->next) s->next->prev = s->prev;
            free(s);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof(http_sock));
        if (!s) return -1; /* curl fails the transfer */
        s->next = x->socks;
        if (x->socks) x->socks->prev = s;
        x->socks = s;
        curl_multi_assign(x->multi, fd, s);
    } else {
        ev_io_stop(x->loop, &s->w);
    }
    int ev = (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    ev_io_init(&s->w, io_cb, fd, ev);
    s->w.data = x;
    ev_io_start(x->loop, &s->w);
    return 0;
}

static int timer_cb(CURLM *multi, long ms, void *userp)
{
    http_ctx *x = userp;
    ev_timer_stop(x->loop, &x->timer);
    if (ms >= 0) {
        /* 0: at once, but from the loop (curl must not be re-entered). */
        ev_timer_set(&x->timer, (double)ms / 1000.0, 0.);
        ev_timer_start(x->loop, &x->timer);
    }
    return 0;
}

/* This thread's client, made at its first call; NULL without a loop
 * (--check, the main thread) or when curl cannot start. */
static http_ctx *get_ctx(void)
{
    if (ctx) return ctx->closing ? NULL : ctx;
    if (!lx_loop || ctx_closed) return NULL;
    pthread_once(&curl_once, curl_init_once);
    if (!curl_ok) return NULL;
    http_ctx *x = calloc(1, sizeof(http_ctx));
    if (!x) return NULL;
    x->loop = lx_loop;
    x->multi = curl_multi_init();
    if (!x->multi) {
        free(x);
        return NULL;
    }
    curl_multi_setopt(x->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(x->multi, CURLMOPT_SOCKETDATA, x);
    curl_multi_setopt(x->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(x->multi, CURLMOPT_TIMERDATA, x);
    ev_timer_init(&x->timer, timeout_cb, 0., 0.);
    x->timer.data = x;
    ctx = x;
    return x;
}

/* ---- a call -------------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    http_call *c = ud;
    size_t len = size * n;
    if (len > c->max - c->len) {
        c->too_large = true;
        return 0; /* curl stops with CURLE_WRITE_ERROR */
    }
    if (c->len + len > c->cap) {
        size_t cap = c->cap ? c->cap : 4096;
        while (cap < c->len + len)
            cap *= 2;
        if (cap > c->max) cap = c->max;
        char *np = realloc(c->body, cap);
        if (!np) return 0;
        c->body = np;
        c->cap = cap;
    }
    memcpy(c->body + c->len, p, len);
    c->len += len;
    return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    http_call *c = ud;
    size_t len = size * n;
    /* A status line starts the headers of another response (a 100
     * Continue, a redirect followed): only the last one's are kept. */
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) c->hlen = 0;
    if (len > MAX_HEAD - c->hlen) {
        c->head_too_large = true;
        return 0;
    }
    if (c->hlen + len > c->hcap) {
        size_t cap = c->hcap ? c->hcap : 1024;
        while (cap < c->hlen + len)
            cap *= 2;
        if (cap > MAX_HEAD) cap = MAX_HEAD;
        char *np = realloc(c->head, cap);
        if (!np) return 0;
        c->head = np;
        c->hcap = cap;
    }
    memcpy(c->head + c->hlen, p, len);
    c->hlen += len;
    return len;
}

static void call_free(http_call *c)
{
    http_ctx *x = ctx;
    if (c->easy && x && !x->closing && x->nidle < IDLE_EASY) {
        curl_easy_reset(c->easy);
        x->idle[x->nidle++] = c->easy;
    } else if (c->easy) {
        curl_easy_cleanup(c->easy);
    }
    curl_slist_free_all(c->headers);
    free(c->body);
    free(c->head);
    free(c);
}

static void link_call(http_call **head, http_call *c)
{
    c->prev = NULL;
    c->next = *head;
    if (*head) (*head)->prev = c;
    *head = c;
}

static void unlink_call(http_call **head, http_call *c)
{
    if (c->prev) c->prev->next = c->next;
    else *head = c->next;
    if (c->next) c->next->prev = c->prev;
    c->next = c->prev = NULL;
}

/* The reason a transfer failed, for the script: short and stable. */
static const char *failure(const http_call *c, CURLcode rc)
{
    if (c->too_large) return "response too large";
    if (c->head_too_large) return "response headers too large";
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_COULDNT_CONNECT:
        return "cannot connect";
    case CURLE_COULDNT_RESOLVE_HOST:
        return "cannot resolve host";
    case CURLE_PEER_FAILED_VERIFICATION:
        return "tls: certificate not trusted";
    case CURLE_SSL_CONNECT_ERROR:
        return "tls: handshake failed";
    case CURLE_UNSUPPORTED_PROTOCOL:
        return "unsupported URL scheme";
    case CURLE_URL_MALFORMAT:
        return "malformed URL";
    case CURLE_TOO_MANY_REDIRECTS:
        return "too many redirects";
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
        return "connection lost";
    default:
        return curl_easy_strerror(rc);
    }
}

/* res = {status =, headers = {lower-case name = value}, body =} on L. */
static void push_response(lua_State *L, http_call *c)
{
    long status = 0;
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
    lua_createtable(L, 0, 8);
    size_t pos = 0;
    bool first = true;
    while (pos < c->hlen) {
        const char *line = c->head + pos;
        const char *end = memchr(line, '\n', c->hlen - pos);
        size_t n = end ? (size_t)(end - line) : c->hlen - pos;
        pos += n + (end ? 1 : 0);
        if (n && line[n - 1] == '\r') n--;
        if (first) { /* the status line */
            first = false;
            continue;
        }
        const char *colon = memchr(line, ':', n);
        if (!colon || colon == line) continue;
        size_t nl = (size_t)(colon - line);
        const char *v = colon + 1;
        size_t vl = n - nl - 1;
        while (vl && (*v == ' ' || *v == '\t'))
            v++, vl--;
        while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
            vl--;
        char name[256];
        if (nl >= sizeof(name)) continue;
        for (size_t i = 0; i < nl; i++)
            name[i] = (char)tolower((unsigned char)line[i]);
        lua_pushlstring(L, name, nl);
        lua_pushvalue(L, -1);
        if (lua_rawget(L, -3) == LUA_TSTRING) {
            lua_pushliteral(L, ", "); /* a repeated header, joined as RFC 9110 allows */
            lua_pushlstring(L, v, vl);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, v, vl);
        }
        lua_rawset(L, -3);
    }
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, c->body ? c->body : "", c->len);
    lua_setfield(L, -2, "body");
}

static void start_queued(http_ctx *x);

/* A transfer ended (rc) or was abandoned (shutdown): answer its task or
 * count its webhook, then free it.  curl has let go of c->easy. */
static void finish(http_ctx *x, http_call *c, CURLcode rc, const char *why)
{
    if (!c->task) {
        x->webhooks--;
        long status = 0;
        if (!why && rc == CURLE_OK) curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
        if (!why && rc == CURLE_OK && status >= 200 && status < 300) {
            COUNT(hooks_sent, 1);
        } else {
            COUNT(hooks_failed, 1);
            char *url = NULL;
            curl_easy_getinfo(c->easy, CURLINFO_EFFECTIVE_URL, &url);
            LOG_KV_LIMITED(&hook_fail_log, 10.0, LOG_WARN, "webhook failed",
                           LOG_S("url", url ? url : "?"), LOG_I("status", status),
                           LOG_S("error", why ? why : rc != CURLE_OK ? failure(c, rc) : "status"));
        }
        call_free(c);
        start_queued(x);
        return;
    }
    lx_task *t = c->task;
    lx_app *app = t->app; /* pinned by the task, which may end below */
    app->refs++;
    bool enforce = lx_unprotected_begin(app);
    x->requests--;
    COUNT(in_flight, -1);
    t->waiting = false;
    int nres;
    if (why || rc != CURLE_OK) {
        COUNT(failures, 1);
        lua_pushnil(t->co);
        lua_pushstring(t->co, why ? why : failure(c, rc));
        nres = 2;
    } else {
        push_response(t->co, c);
        nres = 1;
    }
    call_free(c);
    lx_task_run(t, nres);
    lx_unprotected_end(app, enforce);
    lx_app_release(app);
}

static void check_done(http_ctx *x)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(x->multi, &left))) {
        if (m->msg != CURLMSG_DONE) continue;
        CURL *easy = m->easy_handle;
        CURLcode rc = m->data.result; /* m is void after the removal */
        char *priv = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
        http_call *c = (http_call *)(void *)priv;
        curl_multi_remove_handle(x->multi, easy);
        unlink_call(&x->calls, c);
        finish(x, c, rc, NULL);
    }
}

/* Hands c to curl; false (c untouched) when curl refuses it. */
static bool add_call(http_ctx *x, http_call *c)
{
    if (curl_multi_add_handle(x->multi, c->easy) != CURLM_OK) return false;
    link_call(&x->calls, c);
    return true;
}

static void start_queued(http_ctx *x)
{
    while (x->qhead && !x->closing) {
        http_call *c = x->qhead;
        unlink_call(&x->qhead, c);
        if (!x->qhead) x->qtail = NULL;
        x->queued--;
        COUNT(hooks_queued, -1);
        x->webhooks++;
        if (!add_call(x, c)) {
            x->webhooks--;
            COUNT(hooks_failed, 1);
            call_free(c);
            continue;
        }
        break; /* one slot came free: one starts */
    }
}

/* ---- the script's side --------------------------------------------------- */

typedef struct call_opts {
    const char *method, *url, *body, *ca;
    size_t body_len;
    double timeout;
    size_t max_body;
    bool follow;
} call_opts;

static bool token_char(unsigned char ch)
{
    return isalnum(ch) || strchr("!#$%&'*+-.^_`|~", ch);
}

/* Reads the options table at index 1 into o and the header list into
 * *headers.  Misuse (wrong types, out of range) raises; a header value
 * with CR, LF or NUL, which often comes from a client, returns its
 * message instead (with nothing allocated). */
static const char *read_opts(lua_State *L, call_opts *o, struct curl_slist **headers)
{
    *headers = NULL;
    memset(o, 0, sizeof(*o));
    o->timeout = DEFAULT_TIMEOUT_S;
    o->max_body = DEFAULT_MAX_BODY;
    if (lua_type(L, 1) == LUA_TSTRING) {
        size_t ulen;
        o->url = lua_tolstring(L, 1, &ulen);
        o->method = "GET";
        return strlen(o->url) == ulen ? NULL : "malformed URL";
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    static const char *const known[] = {"method", "url", "headers", "body", "timeout",
                                        "max_body", "follow_redirects", "ca", NULL};
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) luaL_argerror(L, 1, "option names are strings");
        const char *k = lua_tostring(L, -1);
        int i = 0;
        while (known[i] && strcmp(known[i], k) != 0)
            i++;
        if (!known[i]) luaL_argerror(L, 1, lua_pushfstring(L, "unknown option '%s'", k));
    }
    if (lua_getfield(L, 1, "url") != LUA_TSTRING)
        luaL_argerror(L, 1, "url must be a string");
    size_t ulen;
    o->url = lua_tolstring(L, -1, &ulen);
    if (strlen(o->url) != ulen) return "malformed URL"; /* a NUL would cut it short */
    lua_pop(L, 1); /* the table keeps it */
    if (lua_getfield(L, 1, "body") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TSTRING) luaL_argerror(L, 1, "body must be a string");
        o->body = lua_tolstring(L, -1, &o->body_len);
    }
    lua_pop(L, 1);
    o->method = o->body ? "POST" : "GET";
    if (lua_getfield(L, 1, "method") != LUA_TNIL) {
        size_t n;
        if (lua_type(L, -1) != LUA_TSTRING) luaL_argerror(L, 1, "method must be a string");
        o->method = lua_tolstring(L, -1, &n);
        bool ok = n >= 1 && n <= 16;
        for (size_t i = 0; ok && i < n; i++)
            ok = token_char((unsigned char)o->method[i]);
        if (!ok) luaL_argerror(L, 1, "method must be an HTTP method");
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "timeout") != LUA_TNIL) {
        lx_check_field(L, 1, LUA_TNUMBER, "timeout");
        o->timeout = lua_tonumber(L, -1);
        if (!(o->timeout >= 0.001 && o->timeout <= MAX_TIMEOUT_S))
            luaL_argerror(L, 1, "timeout must be 0.001 to 300 seconds");
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "max_body") != LUA_TNIL) {
        lua_Integer n = lx_field_integer(L, 1, "max_body");
        if (n < 1 || n > MAX_MAX_BODY) luaL_argerror(L, 1, "max_body must be 1 to 67108864 bytes");
        o->max_body = (size_t)n;
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "follow_redirects") != LUA_TNIL) {
        lx_check_field(L, 1, LUA_TBOOLEAN, "follow_redirects");
        o->follow = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "ca") != LUA_TNIL) {
        lx_check_field(L, 1, LUA_TSTRING, "ca");
        size_t cl;
        o->ca = lua_tolstring(L, -1, &cl);
        if (strlen(o->ca) != cl) luaL_argerror(L, 1, "ca must be a file name");
    }
    lua_pop(L, 1);
    /* Headers last: they are the only part that allocates in C, and
     * nothing below raises once the list exists. */
    if (lua_getfield(L, 1, "headers") != LUA_TNIL) {
        lx_check_field(L, 1, LUA_TTABLE, "headers");
        int h = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, h)) {
            if (lua_type(L, -2) != LUA_TSTRING ||
                (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER))
                luaL_argerror(L, 1, "headers maps names to strings");
            lua_pop(L, 1);
        }
        const char *bad = NULL;
        lua_pushnil(L);
        while (!bad && lua_next(L, h)) {
            size_t nl, vl;
            const char *name = lua_tolstring(L, -2, &nl);
            lua_pushvalue(L, -1); /* a number is turned into a string on the copy */
            const char *v = lua_tolstring(L, -1, &vl);
            bool ok = nl >= 1 && nl <= 256 && vl <= 8192;
            for (size_t i = 0; ok && i < nl; i++)
                ok = token_char((unsigned char)name[i]);
            for (size_t i = 0; ok && i < vl; i++)
                ok = v[i] != '\r' && v[i] != '\n' && v[i] != '\0';
            if (!ok) {
                bad = "invalid header";
            } else {
                char line[256 + 2 + 8192 + 1];
                memcpy(line, name, nl);
                line[nl] = ':';
                line[nl + 1] = ' ';
                memcpy(line + nl + 2, v, vl);
                line[nl + 2 + vl] = '\0';
                if (vl == 0) line[nl + 1] = ';'; /* "Name;": curl sends it empty */
                struct curl_slist *l = curl_slist_append(*headers, line);
                if (!l) bad = "out of memory";
                else *headers = l;
            }
            lua_pop(L, 2);
        }
        if (bad) {
            lua_pop(L, 2); /* key, headers table */
            curl_slist_free_all(*headers);
            *headers = NULL;
            return bad;
        }
    }
    lua_pop(L, 1);
    return NULL;
}

static bool has_header(const struct curl_slist *l, const char *name)
{
    size_t n = strlen(name);
    for (; l; l = l->next)
        if (strncasecmp(l->data, name, n) == 0 && (l->data[n] == ':' || l->data[n] == ';'))
            return true;
    return false;
}

/* A call ready for curl, or NULL with the reason in *why. */
static http_call *make_call(const call_opts *o, struct curl_slist *headers, const char **why)
{
    http_call *c = calloc(1, sizeof(http_call));
    http_ctx *x = ctx;
    CURL *e = !c ? NULL : x && x->nidle > 0 ? x->idle[--x->nidle] : curl_easy_init();
    if (!e) {
        free(c);
        curl_slist_free_all(headers);
        *why = "out of memory";
        return NULL;
    }
    c->easy = e;
    c->max = o->max_body;
    /* curl adds these on its own: a form type the body is not, and a
     * 100-continue round trip for large bodies. */
    bool ok = true;
    c->headers = headers;
    if (o->body && !has_header(c->headers, "content-type")) {
        struct curl_slist *l = curl_slist_append(c->headers, "Content-Type:");
        ok = l != NULL;
        if (l) c->headers = l;
    }
    if (ok) {
        struct curl_slist *l = curl_slist_append(c->headers, "Expect:");
        ok = l != NULL;
        if (l) c->headers = l;
    }
    ok = ok && curl_easy_setopt(e, CURLOPT_URL, o->url) == CURLE_OK;
    curl_easy_setopt(e, CURLOPT_PRIVATE, c);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->err);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(o->timeout * 1000));
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "sluice/" SLUICE_VERSION);
    if (o->follow) {
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(e, CURLOPT_MAXREDIRS, (long)MAX_REDIRS);
    }
    if (o->ca) ok = ok && curl_easy_setopt(e, CURLOPT_CAINFO, o->ca) == CURLE_OK;
    if (c->headers) curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers);
    if (strcmp(o->method, "HEAD") == 0) curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    if (o->body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
        ok = ok && curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, o->body) == CURLE_OK;
    }
    /* A body makes curl send POST, no body GET (or HEAD with NOBODY):
     * any other method, a GET with a body included, is named. */
    bool plain = o->body ? strcmp(o->method, "POST") == 0
                         : strcmp(o->method, "GET") == 0 || strcmp(o->method, "HEAD") == 0;
    if (!plain) ok = ok && curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, o->method) == CURLE_OK;
    if (!ok) {
        call_free(c);
        *why = "out of memory";
        return NULL;
    }
    return c;
}

static int request_k(lua_State *L, int status, lua_KContext kctx)
{
    return lua_gettop(L) - (int)kctx; /* what the answer pushed */
}

static int fail(lua_State *L, const char *why)
{
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
}

static int max_of(int set, int dflt)
{
    return set > 0 ? set : dflt;
}

/* sluice.http.request{method=, url=, headers=, body=, timeout=, max_body=,
 * follow_redirects=, ca=} -> res | nil, reason; yields. */
static int l_request(lua_State *L)
{
    lx_check_budget(L);
    lx_app *app = app_of(L);
    lx_task *t = app->running_task;
    call_opts o;
    struct curl_slist *headers;
    /* Where nothing can wait (the script's top level, filters,
     * on_publish, a coroutine of the script's own), this is a mistake in
     * the script, found at its first run. */
    if (!(t && t->co == L && lua_isyieldable(L))) {
        if (app->hook_running && strcmp(app->hook_running, "filter") == 0)
            return luaL_error(L, "sluice.http.request cannot wait in a filter: a filter runs once "
                                 "per message and subscriber, inside the fan-out, which must not "
                                 "wait; fetch what it needs in the subscribe handler, or in a "
                                 "timer that refreshes a table the filter reads "
                                 "(sluice.http.send sends a webhook from anywhere)");
        return luaL_error(L, "sluice.http.request waits, so it runs only in a handler, a timer, "
                             "on_open, on_message or on_close (not at load, nor in a filter or "
                             "on_publish: use sluice.http.send there)");
    }
    const char *bad = read_opts(L, &o, &headers);
    if (bad) return fail(L, bad);
    http_ctx *x = get_ctx();
    if (!x) {
        curl_slist_free_all(headers);
        return fail(L, lx_loop ? "shutting down" : "not running");
    }
    if (x->requests >= max_of(app->http.max_in_flight, DEFAULT_IN_FLIGHT)) {
        curl_slist_free_all(headers);
        COUNT(busy, 1);
        LOG_KV_LIMITED(&busy_log, 10.0, LOG_WARN, "sluice.http.request refused: busy",
                       LOG_S("url", o.url), LOG_I("in_flight", x->requests));
        return fail(L, "busy");
    }
    const char *why = NULL;
    http_call *c = make_call(&o, headers, &why);
    if (!c) return fail(L, why);
    c->task = t;
    if (!add_call(x, c)) {
        call_free(c);
        return fail(L, "out of memory");
    }
    x->requests++;
    COUNT(requests, 1);
    COUNT(in_flight, 1);
    t->waiting = true;
    return lua_yieldk(L, 0, lua_gettop(L), request_k);
}

/* sluice.http.send{...}: the same options; queued, never waits -> true |
 * nil, reason ("queue full": dropped, counted). */
static int l_send(lua_State *L)
{
    lx_check_budget(L);
    lx_app *app = app_of(L);
    call_opts o;
    struct curl_slist *headers;
    const char *bad = read_opts(L, &o, &headers);
    if (bad) return fail(L, bad);
    /* The top level runs at every load, on every worker (and first on the
     * main thread, where no loop runs): a webhook from there would be sent
     * once per worker and reload, or not at all. */
    http_ctx *x = app->loading ? NULL : get_ctx();
    if (!x) {
        curl_slist_free_all(headers);
        return fail(L, lx_loop && !app->loading ? "shutting down" : "not running");
    }
    bool slot = x->webhooks < max_of(app->http.max_webhooks, DEFAULT_WEBHOOKS);
    if (!slot && x->queued >= max_of(app->http.webhook_queue, DEFAULT_QUEUE)) {
        curl_slist_free_all(headers);
        COUNT(hooks_dropped, 1);
        LOG_KV_LIMITED(&hook_drop_log, 10.0, LOG_WARN, "webhook dropped: queue full",
                       LOG_S("url", o.url), LOG_I("queued", x->queued));
        return fail(L, "queue full");
    }
    const char *why = NULL;
    http_call *c = make_call(&o, headers, &why);
    if (!c) return fail(L, why);
    if (slot) {
        if (!add_call(x, c)) {
            call_free(c);
            return fail(L, "out of memory");
        }
        x->webhooks++;
    } else {
        c->prev = x->qtail;
        if (x->qtail) x->qtail->next = c;
        else x->qhead = c;
        x->qtail = c;
        x->queued++;
        COUNT(hooks_queued, 1);
    }
    lua_pushboolean(L, 1);
    return 1;
}

void lx_http_shutdown(void)
{
    http_ctx *x = ctx;
    if (!x) return;
    x->closing = true;
    while (x->qhead) {
        http_call *c = x->qhead;
        unlink_call(&x->qhead, c);
        x->queued--;
        COUNT(hooks_queued, -1);
        COUNT(hooks_dropped, 1);
        call_free(c);
    }
    x->qtail = NULL;
    /* Resumed tasks may try again: closing refuses them. */
    while (x->calls) {
        http_call *c = x->calls;
        curl_multi_remove_handle(x->multi, c->easy);
        unlink_call(&x->calls, c);
        finish(x, c, CURLE_OK, "shutting down");
    }
    ev_timer_stop(x->loop, &x->timer);
    while (x->nidle > 0)
        curl_easy_cleanup(x->idle[--x->nidle]);
    curl_multi_cleanup(x->multi);
    while (x->socks) { /* curl said REMOVE for every socket it closed; any other is ours */
        http_sock *s = x->socks;
        x->socks = s->next;
        ev_io_stop(x->loop, &s->w);
        free(s);
    }
    ctx = NULL;
    ctx_closed = true;
    free(x);
}

void lx_http_config(lua_State *L, lx_app *app)
{
    lx_check_field(L, 1, LUA_TTABLE, "http");
    int tbl = lua_gettop(L);
    int vals[3] = {app->http.max_in_flight, app->http.max_webhooks, app->http.webhook_queue};
    static const char *const keys[3] = {"max_in_flight", "max_webhooks", "webhook_queue"};
    lua_pushnil(L);
    while (lua_next(L, tbl)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
        int i = 0;
        while (i < 3 && strcmp(keys[i], k) != 0)
            i++;
        if (i == 3) luaL_error(L, "sluice.config: unknown setting 'http.%s'", k);
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > 1000000)
            luaL_error(L, "sluice.config: http.%s must be an integer from 1 to 1000000", k);
        vals[i] = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
    }
    app->http.max_in_flight = vals[0];
    app->http.max_webhooks = vals[1];
    app->http.webhook_queue = vals[2];
}

size_t lx_http_metrics(metrics_extra *out)
{
    size_t n = 0;
    out[n++] = (metrics_extra){"sluice_lua_http_requests_total", "counter",
                               "sluice.http.request calls sent.", NULL, READ(requests)};
    out[n++] = (metrics_extra){"sluice_lua_http_failures_total", "counter",
                               "sluice.http.request calls that failed (no answer: timeout, "
                               "connection, TLS, size cap).",
                               NULL, READ(failures)};
    out[n++] = (metrics_extra){"sluice_lua_http_busy_total", "counter",
                               "sluice.http.request calls refused: too many in flight.", NULL,
                               READ(busy)};
    out[n++] = (metrics_extra){"sluice_lua_http_in_flight", "gauge",
                               "sluice.http.request calls waiting for their answer.", NULL,
                               READ(in_flight)};
    out[n++] = (metrics_extra){"sluice_webhooks_total", "counter",
                               "sluice.http.send calls, by outcome (failed: no 2xx answer; "
                               "dropped: queue full or shutdown).",
                               "result=\"sent\"", READ(hooks_sent)};
    out[n++] = (metrics_extra){"sluice_webhooks_total", "counter", "", "result=\"failed\"",
                               READ(hooks_failed)};
    out[n++] = (metrics_extra){"sluice_webhooks_total", "counter", "", "result=\"dropped\"",
                               READ(hooks_dropped)};
    out[n++] = (metrics_extra){"sluice_webhooks_queued", "gauge",
                               "sluice.http.send calls waiting for a free slot.", NULL,
                               READ(hooks_queued)};
    return n;
}

void lx_open_http(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"request", l_request},
        {"send", l_send},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    lua_setfield(L, -2, "http");
}
