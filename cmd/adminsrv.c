/* adminsrv.c: the admin listener (see adminsrv.h and docs/admin.md).
 *
 * One thread, one loop, one core server.  A request that needs the
 * workers' state becomes a `gather`: one job per worker (a `part`), each
 * run on its worker's loop, which fills its part and counts the gather
 * down; the last part hands the gather back to this thread (a locked list
 * and an ev_async), where the answer is built from the parts.  The
 * connection waits under a hold (conn_hold), like a Lua handler waiting
 * for a commit; a timer answers 503 if a worker does not answer in time,
 * and the gather itself is freed only when its last part is back, so a
 * late worker never writes into freed memory.  The thread stops only once
 * every gather it started is back.
 *
 * In cluster mode a gather's JetStream request (the stream's figures for
 * stats, its topics for /api/topics) is one more part, run on a thread of
 * its own: a request waits up to CLUSTER_API_WAIT_MS for a stalled NATS,
 * and this loop answers /healthz, /readyz and /metrics meanwhile. */
#include "cmd/adminsrv.h"

#include "core/conn.h"
#include "core/defs.h"
#include "core/hub.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/server.h"
#include "core/subscriber.h"
#include "lua/api.h"
#include "storage/cluster.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

/* The dashboard, compiled in by CMake (cmake/embed.cmake). */
extern const char adm_index_html_source[], adm_dashboard_js_source[], adm_dashboard_css_source[],
    adm_client_js_source[];
extern const size_t adm_index_html_size, adm_dashboard_js_size, adm_dashboard_css_size,
    adm_client_js_size;

#define ADM_TIMEOUT 5.0        /* seconds for every worker's part */
#define ADM_MAX_SSE 32         /* dashboard streams at once */
#define ADM_TOPICS_MAX 1000    /* rows of /api/topics */
#define ADM_CONNS_MAX 1000     /* rows of /api/connections */
#define ADM_WORKER_TOPICS 4096 /* live topics a worker reports to /api/topics */
#define ADM_WORKER_BUSIEST 64  /* ...and to stats and /metrics: its busiest */
#define ADM_METRIC_TOPICS 20   /* per-topic series in /metrics: a hard cap */
#define ADM_STATS_TOPICS 10    /* busiest topics in a stats event */
#define ADM_HISTORY 300        /* seconds of totals kept for a new dashboard */
#define ADM_TOKEN_MAX 256
#define ADM_NATS_THREADS 4 /* JetStream requests at once; past it, answered without */

/* ---- text --------------------------------------------------------------- */

typedef struct text {
    char *p;
    size_t len, cap;
    bool oom;
} text;

static void tadd(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void tadd(text *t, const char *fmt, ...)
{
    while (!t->oom) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->p ? t->p + t->len : NULL, t->p ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->oom = true;
            return;
        }
        if (t->p && (size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t ncap = t->cap ? t->cap * 2 : 1024;
        while (ncap < t->len + (size_t)n + 1)
            ncap *= 2;
        char *np = realloc(t->p, ncap);
        if (!np) {
            t->oom = true;
            return;
        }
        t->p = np;
        t->cap = ncap;
    }
}

/* A Prometheus histogram: `buckets` holds the cumulative count of each of
 * the n bounds, then the +Inf one (the count). */
static void histogram(text *t, const char *name, const char *help, const double *bounds, int n,
                      const uint64_t *buckets, double sum)
{
    tadd(t, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (int i = 0; i < n; i++)
        tadd(t, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, bounds[i], buckets[i]);
    tadd(t, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n%s_sum %.6f\n%s_count %" PRIu64 "\n", name,
         buckets[n], name, sum, name, buckets[n]);
}

static void tfree(text *t)
{
    free(t->p);
    memset(t, 0, sizeof(*t));
}

/* ---- gathers ------------------------------------------------------------ */

enum gkind { G_STATS, G_METRICS, G_TOPICS, G_CONNS, G_CLOSE, G_PUBLISH, G_PING };

typedef struct topic_row {
    char name[HUB_TOPIC_MAX + 1];
    uint32_t subscribers;
    uint64_t messages, deliveries;
    bool used;
} topic_row;

struct gather;

typedef struct part {
    worker_job job; /* first: the job is the part */
    struct gather *g;
    int worker;           /* index into adm.workers */
    bool ran;             /* false: the worker had ended */
    hub_stats own, total; /* total: worker 0 only */
    unsigned conns, websocket, sse, longpoll;
    uint64_t bytes_websocket, bytes_sse; /* written to its open streams */
    topic_row *topics;                   /* grown as the worker's topics are walked */
    size_t ntopics, topics_cap;
    text out; /* connections' JSON, or (worker 0) the base metrics text */
    int status;
    char id[HUB_ID_MAX];
} part;

typedef struct gather {
    struct adm *a;
    int kind;
    conn *c;          /* held until answered; NULL: the stats tick */
    unsigned pending; /* parts still out: atomic */
    bool answered;
    ev_timer timeout;
    struct gather *next; /* the done list */
    size_t limit;
    bool no_topics;              /* stats for the history only: no topic walk */
    char arg[HUB_TOPIC_MAX + 1]; /* topics: prefix; publish: topic */
    char event[HUB_EVENT_MAX + 1];
    uintptr_t target; /* close: the connection's key */
    char *body;       /* publish: the data (copied) */
    size_t body_len;
    /* Cluster mode: the JetStream part (nats_part_main), read once it is
     * back; stream_ok false when it was not asked or failed. */
    struct cluster *cluster;
    bool stream_ok;
    struct cluster_stream_state stream; /* stats */
    struct store_topic_info *stored;    /* topics: the stream's, names malloc'd */
    size_t nstored;
    bool stored_oom;
    int nparts;
    part parts[];
} gather;

typedef struct sse_client {
    conn *c;
    struct sse_client *prev, *next;
} sse_client;

typedef struct history {
    double t;
    uint64_t published, delivered;
    unsigned connections;
} history;

struct adm {
    struct ev_loop *loop;
    server srv;
    pthread_t thread;
    bool started;
    char *token;
    size_t token_len;
    worker *workers[HUB_MAX_WORKERS];
    int nworkers;
    struct store *store;
    ev_async done_async, stop_async;
    pthread_mutex_t done_lock;
    gather *done_head;
    unsigned outstanding; /* gathers not yet back (this thread only) */
    unsigned nats_parts;  /* JetStream parts running (atomic) */
    bool stopping;
    ev_timer tick; /* a stats event a second while streams are open */
    sse_client *streams;
    unsigned nstreams;
    unsigned long long event_seq, boot; /* event IDs: "<boot>-<seq>", new at each start */
    history hist[ADM_HISTORY];
    unsigned nhist, hist_head;
    uintptr_t key_salt; /* connection keys: pointer ^ salt */
    unsigned long long refused_auth;
    log_limit auth_log;
};

/* The key of a connection in the admin API: its address, masked so that
 * the API does not hand out heap addresses. */
static uintptr_t conn_key(const adm *a, const conn *c)
{
    return (uintptr_t)c ^ a->key_salt;
}

static void gather_free(gather *g)
{
    for (int i = 0; i < g->nparts; i++) {
        free(g->parts[i].topics);
        tfree(&g->parts[i].out);
    }
    for (size_t i = 0; i < g->nstored; i++)
        free((char *)g->stored[i].name);
    free(g->stored);
    free(g->body);
    free(g);
}

/* Any thread: one part is in; the last hands the gather back to the admin
 * thread. */
static void gather_part_done(gather *g)
{
    if (__atomic_sub_fetch(&g->pending, 1, __ATOMIC_ACQ_REL) != 0) return;
    adm *a = g->a;
    pthread_mutex_lock(&a->done_lock);
    g->next = a->done_head;
    a->done_head = g;
    ev_async_send(a->loop, &a->done_async); /* the admin loop runs until it is back */
    pthread_mutex_unlock(&a->done_lock);
}

/* A worker thread: its part is in. */
static void part_finish(part *p)
{
    gather_part_done(p->g);
}

/* --- the JetStream part, on a thread of its own --- */

/* Keeps the stream's topics for answer_topics: one past the row limit is
 * enough to tell that the list is cut. */
static int keep_stored(void *ud, const struct store_topic_info *t)
{
    gather *g = ud;
    if (g->nstored > g->limit) return 1;
    if (!g->stored) g->stored = calloc(g->limit + 1, sizeof(*g->stored));
    char *name = g->stored ? strndup(t->name, t->name_len) : NULL;
    if (!name) {
        g->stored_oom = true;
        return 1;
    }
    g->stored[g->nstored] = *t;
    g->stored[g->nstored++].name = name;
    return 0;
}

static void *nats_part_main(void *arg)
{
    gather *g = arg;
    adm *a = g->a;
    if (g->kind == G_TOPICS) {
        int rc = cluster_topics(g->cluster, g->arg, strlen(g->arg), keep_stored, g);
        g->stream_ok = rc == 0 && !g->stored_oom; /* a list cut short is an error */
    } else {
        g->stream_ok = cluster_stream_state(g->cluster, &g->stream) == 0;
    }
    __atomic_sub_fetch(&a->nats_parts, 1, __ATOMIC_RELAXED);
    gather_part_done(g); /* the last touch of g and a */
    return NULL;
}

/* Starts g's JetStream part when it needs one (cluster mode, stats or
 * topics), unless ADM_NATS_THREADS run already: then g goes without. */
static void nats_part_start(adm *a, gather *g)
{
    g->cluster = a->nworkers ? hub_cluster(worker_hub(a->workers[0])) : NULL;
    bool wanted = g->kind == G_TOPICS || (g->kind == G_STATS && !g->no_topics);
    if (!g->cluster || !wanted) return;
    if (__atomic_add_fetch(&a->nats_parts, 1, __ATOMIC_RELAXED) > ADM_NATS_THREADS) {
        __atomic_sub_fetch(&a->nats_parts, 1, __ATOMIC_RELAXED);
        return;
    }
    __atomic_add_fetch(&g->pending, 1, __ATOMIC_ACQ_REL);
    pthread_attr_t attr;
    pthread_t t;
    bool started = pthread_attr_init(&attr) == 0 &&
                   pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
                   pthread_create(&t, &attr, nats_part_main, g) == 0;
    pthread_attr_destroy(&attr);
    if (!started) { /* g goes without; its workers' parts are not out yet */
        __atomic_sub_fetch(&a->nats_parts, 1, __ATOMIC_RELAXED);
        __atomic_sub_fetch(&g->pending, 1, __ATOMIC_ACQ_REL);
    }
}

/* --- the parts, on the workers' threads --- */

static int collect_topic(void *ud, const hub_topic_info *t)
{
    part *p = ud;
    if (p->g->kind != G_TOPICS && p->ntopics == ADM_WORKER_BUSIEST) {
        /* Stats and metrics want the busiest only: keep this worker's top
         * ADM_WORKER_BUSIEST by messages, whatever the number of topics. */
        size_t min = 0;
        for (size_t i = 1; i < p->ntopics; i++)
            if (p->topics[i].messages < p->topics[min].messages) min = i;
        if (t->messages <= p->topics[min].messages) return 0;
        p->ntopics--;
        p->topics[min] = p->topics[p->ntopics];
    }
    if (p->ntopics == p->topics_cap) {
        if (p->topics_cap >= ADM_WORKER_TOPICS) return 1;
        size_t cap = p->topics_cap ? p->topics_cap * 2 : 64;
        topic_row *nt = realloc(p->topics, cap * sizeof(topic_row));
        if (!nt) return 1;
        p->topics = nt;
        p->topics_cap = cap;
    }
    topic_row *r = &p->topics[p->ntopics++];
    r->used = false;
    size_t n = t->name_len < HUB_TOPIC_MAX ? t->name_len : HUB_TOPIC_MAX;
    memcpy(r->name, t->name, n);
    r->name[n] = '\0';
    r->subscribers = t->subscribers;
    r->messages = t->messages;
    r->deliveries = t->deliveries;
    return 0;
}

/* A connection on its way out (a final answer being flushed, a linger)
 * is no longer listed, counted or closed again. */
static bool conn_gone(const conn *c)
{
    return c->state == CONN_CLOSING || conn_closed(c);
}

static void count_conns(part *p, server *srv)
{
    for (conn *c = srv->conns; c; c = c->next) {
        if (conn_gone(c)) continue;
        p->conns++;
        sub_session *s = sub_session_of(c);
        if (!s) continue;
        const char *tp = sub_transport(s);
        if (strcmp(tp, "websocket") == 0) {
            p->websocket++;
            p->bytes_websocket += c->sent;
        } else if (strcmp(tp, "sse") == 0) {
            p->sse++;
            p->bytes_sse += c->sent;
        } else
            p->longpoll++;
    }
}

static void list_conns(part *p, worker *w)
{
    server *srv = worker_server(w);
    const adm *a = p->g->a;
    double now = ev_now(srv->loop);
    size_t n = 0;
    for (conn *c = srv->conns; c && n < p->g->limit; c = c->next) {
        if (conn_gone(c)) continue;
        sub_session *s = sub_session_of(c);
        char addr[80];
        tadd(&p->out,
             "%s{\"id\":\"%d-%" PRIxPTR "\",\"worker\":%d,\"transport\":\"%s\",\"address\":\"%s\","
             "\"tls\":%s,\"age\":%.1f,\"queued_bytes\":%zu,\"topics\":[",
             p->out.len ? "," : "", worker_id(w), conn_key(a, c), worker_id(w),
             s ? sub_transport(s) : "http", conn_remote_addr(c, addr, sizeof(addr)),
             c->tls ? "true" : "false", c->req_start > 0 ? now - c->req_start : 0.0, c->out.bytes);
        for (int i = 0; s && i < sub_topic_count(s); i++) {
            size_t len;
            bool wild;
            const char *name = sub_topic_at(s, i, &len, &wild);
            if (name) /* names are [A-Za-z0-9_.:-]: nothing to escape */
                tadd(&p->out, "%s\"%.*s%s\"", i ? "," : "", (int)len, name, wild ? "*" : "");
        }
        tadd(&p->out, "]}");
        n++;
    }
}

static void close_conn(part *p, worker *w)
{
    server *srv = worker_server(w);
    p->status = 404;
    /* Compare keys first: only a connection of this server's list is ever
     * touched, whatever the client sent. */
    for (conn *c = srv->conns; c; c = c->next) {
        if (conn_key(p->g->a, c) != p->g->target || conn_gone(c)) continue;
        sub_session *s = sub_session_of(c);
        LOG_KV(LOG_INFO, "admin: closing a connection", LOG_I("worker", worker_id(w)),
               LOG_S("transport", s ? sub_transport(s) : "http"));
        if (s) {
            sub_set_end_reason(s, SUB_END_ADMIN);
            sub_close(s, 1000, "closed by the admin"); /* the transport's own close */
        } else
            conn_close(c);
        p->status = 200;
        return;
    }
}

static void published(void *ud, hub_msg *m, int status)
{
    part *p = ud;
    p->status = status;
    if (m) {
        memcpy(p->id, m->id, m->id_len);
        p->id[m->id_len] = '\0';
    }
    part_finish(p);
}

static void run_part(worker_job *j, worker *w)
{
    part *p = (part *)j;
    gather *g = p->g;
    if (!w) { /* the worker had ended */
        p->status = -1;
        part_finish(p);
        return;
    }
    p->ran = true;
    hub *h = worker_hub(w);
    switch (g->kind) {
    case G_METRICS:
        if (p->worker == 0) {
            metrics_extra extra[] = {{"sluice_script_errors_total", "counter",
                                      "Lua errors in handlers, filters and callbacks.", NULL,
                                      lx_script_errors()}};
            size_t len;
            char *t = metrics_render(h, extra, 1, &len);
            if (t) {
                p->out.p = t;
                p->out.len = p->out.cap = len;
            } else {
                p->out.oom = true;
            }
        }
        /* the per-worker and per-topic series too */
        __attribute__((fallthrough));
    case G_STATS:
        hub_get_own_stats(h, &p->own);
        if (p->worker == 0) hub_get_stats(h, &p->total);
        count_conns(p, worker_server(w));
        __attribute__((fallthrough));
    case G_TOPICS:
        if (!g->no_topics) hub_each_topic(h, collect_topic, p);
        break;
    case G_CONNS:
        list_conns(p, w);
        break;
    case G_CLOSE:
        close_conn(p, w);
        break;
    case G_PUBLISH: {
        int rc = hub_publish(h, g->arg, strlen(g->arg), g->event[0] ? g->event : NULL,
                             strlen(g->event), g->body, g->body_len, NULL, published, p);
        if (rc != 0) {
            p->status = rc;
            break;
        }
        return; /* `published` finishes the part after the commit */
    }
    case G_PING:
        if (p->worker == 0) hub_get_stats(h, &p->total); /* cluster mode: NATS connected? */
        break;
    }
    part_finish(p);
}

/* --- the admin side --- */

static void answer_gather(gather *g);

static void on_gather_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    gather *g = t->data;
    if (g->c && !g->answered) {
        g->answered = true;
        if (!conn_closed(g->c)) conn_respond_error(g->c, 503, "a worker did not answer in time");
        conn_release(g->c);
        g->c = NULL;
    }
}

/* Starts a gather of `kind` over every worker (or only worker `only`, an
 * index, when >= 0) for connection c (held meanwhile; NULL for the tick).
 * Returns the gather to fill before gather_post, or NULL (503 sent). */
static gather *gather_new(adm *a, int kind, conn *c, int only)
{
    /* Never below 1 (GCC's LTO could not tell, and warned of the size). */
    int n = only >= 0 || a->nworkers < 1 ? 1 : a->nworkers;
    gather *g = calloc(1, sizeof(gather) + (size_t)n * sizeof(part));
    if (!g) {
        if (c) conn_respond_error(c, 503, "out of memory");
        return NULL;
    }
    g->a = a;
    g->kind = kind;
    g->c = c;
    g->nparts = n;
    g->pending = (unsigned)n;
    for (int i = 0; i < n; i++) {
        g->parts[i].g = g;
        g->parts[i].worker = only >= 0 ? only : i;
        g->parts[i].job.run = run_part;
    }
    return g;
}

static void gather_post(adm *a, gather *g)
{
    if (g->c) conn_hold(g->c);
    a->outstanding++;
    ev_timer_init(&g->timeout, on_gather_timeout, ADM_TIMEOUT, 0);
    g->timeout.data = g;
    ev_timer_start(a->loop, &g->timeout);
    nats_part_start(a, g);
    for (int i = 0; i < g->nparts; i++) {
        part *p = &g->parts[i];
        if (worker_post(a->workers[p->worker], &p->job) < 0) run_part(&p->job, NULL);
    }
}

static void on_done(struct ev_loop *loop, ev_async *w, int revents)
{
    adm *a = w->data;
    pthread_mutex_lock(&a->done_lock);
    gather *g = a->done_head;
    a->done_head = NULL;
    pthread_mutex_unlock(&a->done_lock);
    while (g) {
        gather *next = g->next;
        ev_timer_stop(loop, &g->timeout);
        if (!g->answered) answer_gather(g);
        if (g->c) conn_release(g->c);
        gather_free(g);
        a->outstanding--;
        g = next;
    }
    if (a->stopping && a->outstanding == 0 && a->srv.nconns == 0) ev_break(loop, EVBREAK_ALL);
}

/* ---- answers ------------------------------------------------------------ */

static void respond(conn *c, int status, const char *type, const char *body, size_t len)
{
    conn_response_start(c, status);
    conn_response_header(c, STRLIT("Content-Type"), type, strlen(type));
    conn_response_header(c, STRLIT("Cache-Control"), STRLIT("no-store"));
    conn_response_finish(c, body, len);
}

static void respond_text(conn *c, int status, const char *type, text *t)
{
    if (t->oom)
        conn_respond_error(c, 503, "out of memory");
    else
        respond(c, status, type, t->p ? t->p : "", t->len);
}

static int row_cmp_name(const void *x, const void *y)
{
    return strcmp(((const topic_row *)x)->name, ((const topic_row *)y)->name);
}

static int row_cmp_busy(const void *x, const void *y)
{
    const topic_row *a = x, *b = y;
    if (a->messages != b->messages) return a->messages < b->messages ? 1 : -1;
    if (a->subscribers != b->subscribers) return a->subscribers < b->subscribers ? 1 : -1;
    return strcmp(a->name, b->name);
}

/* Every worker's live topics merged by name (subscribers and deliveries
 * summed; messages the same on every worker that has the topic, so the
 * largest).  Returns a malloc'd array sorted by name; NULL when none or
 * no memory. */
static topic_row *merge_topics(gather *g, size_t *n)
{
    size_t total = 0;
    for (int i = 0; i < g->nparts; i++)
        total += g->parts[i].ntopics;
    *n = 0;
    if (total == 0) return NULL;
    topic_row *all = malloc(total * sizeof(topic_row));
    if (!all) return NULL;
    for (int i = 0; i < g->nparts; i++)
        if (g->parts[i].ntopics)
            memcpy(all + *n, g->parts[i].topics, g->parts[i].ntopics * sizeof(topic_row)),
                *n += g->parts[i].ntopics;
    qsort(all, *n, sizeof(topic_row), row_cmp_name);
    size_t out = 0;
    for (size_t i = 0; i < *n; i++) {
        if (out && strcmp(all[out - 1].name, all[i].name) == 0) {
            topic_row *r = &all[out - 1];
            r->subscribers += all[i].subscribers;
            r->deliveries += all[i].deliveries;
            if (all[i].messages > r->messages) r->messages = all[i].messages;
        } else {
            all[out++] = all[i];
        }
    }
    *n = out;
    return all;
}

typedef struct topics_walk {
    text *t;
    const char *prefix;
    size_t prefix_len, limit, rows;
    topic_row *live;
    size_t nlive;
    bool truncated;
} topics_walk;

static void topic_json(topics_walk *tw, const char *name, size_t len, const topic_row *r,
                       const struct store_topic_info *st, uint64_t epoch)
{
    text *t = tw->t;
    tadd(t,
         "%s{\"topic\":\"%.*s\",\"subscribers\":%u,\"messages\":%" PRIu64
         ",\"deliveries\":%" PRIu64,
         tw->rows ? "," : "", (int)len, name, r ? r->subscribers : 0, r ? r->messages : 0,
         r ? r->deliveries : 0);
    if (st) {
        char id[HUB_ID_MAX];
        id[0] = '\0';
        if (st->last_seq)
            store_id_format(st->last_epoch ? st->last_epoch : epoch, st->last_seq, id);
        /* Cluster mode lists the stream's subjects with their counts only. */
        tadd(t, ",\"backlog\":%" PRIu64 ",\"newest_id\":%s%s%s", st->count, id[0] ? "\"" : "",
             id[0] ? id : "null", id[0] ? "\"" : "");
    } else {
        tadd(t, ",\"backlog\":0,\"newest_id\":null");
    }
    tadd(t, "}");
    tw->rows++;
}

static int walk_stored(void *ud, const struct store_topic_info *st)
{
    topics_walk *tw = ud;
    if (st->name_len < tw->prefix_len || memcmp(st->name, tw->prefix, tw->prefix_len) != 0)
        return 0;
    if (tw->rows >= tw->limit) {
        tw->truncated = true;
        return 1;
    }
    topic_row key;
    size_t n = st->name_len < HUB_TOPIC_MAX ? st->name_len : HUB_TOPIC_MAX;
    memcpy(key.name, st->name, n);
    key.name[n] = '\0';
    topic_row *r =
        tw->live ? bsearch(&key, tw->live, tw->nlive, sizeof(topic_row), row_cmp_name) : NULL;
    if (r) r->used = true;
    topic_json(tw, st->name, st->name_len, r, st, 0);
    return 0;
}

static void answer_topics(gather *g)
{
    adm *a = g->a;
    text t = {0};
    topics_walk tw = {.t = &t, .prefix = g->arg, .prefix_len = strlen(g->arg), .limit = g->limit};
    tw.live = merge_topics(g, &tw.nlive);
    tadd(&t, "{\"topics\":[");
    /* Cluster mode: the record is the stream, as the JetStream part read
     * it; the store holds nothing. */
    int rc = 0;
    if (!g->cluster)
        rc = store_topics(a->store, walk_stored, &tw);
    else if (!g->stream_ok)
        rc = SL_EIO;
    else
        for (size_t i = 0; i < g->nstored; i++)
            if (walk_stored(&tw, &g->stored[i])) break;
    /* Topics with subscribers and nothing stored yet. */
    for (size_t i = 0; i < tw.nlive; i++) {
        topic_row *r = &tw.live[i];
        if (r->used || strncmp(r->name, tw.prefix, tw.prefix_len) != 0) continue;
        if (tw.rows >= tw.limit) {
            tw.truncated = true;
            break;
        }
        topic_json(&tw, r->name, strlen(r->name), r, NULL, 0);
    }
    tadd(&t, "],\"truncated\":%s%s}", tw.truncated ? "true" : "false",
         rc ? ",\"storage_error\":true" : "");
    free(tw.live);
    respond_text(g->c, 200, "application/json", &t);
    tfree(&t);
}

static void answer_conns(gather *g)
{
    text t = {0};
    size_t rows = 0;
    tadd(&t, "{\"connections\":[");
    for (int i = 0; i < g->nparts; i++) {
        part *p = &g->parts[i];
        if (!p->out.len) continue;
        tadd(&t, "%s%.*s", rows ? "," : "", (int)p->out.len, p->out.p);
        rows++;
    }
    tadd(&t, "]}");
    respond_text(g->c, 200, "application/json", &t);
    tfree(&t);
}

/* The stats JSON of the dashboard and /api/stats. */
static void stats_json(gather *g, text *t)
{
    adm *a = g->a;
    const hub_stats *hs = &g->parts[0].total;
    sub_stats ss;
    sub_get_stats(&ss);
    unsigned conns = 0;
    for (int i = 0; i < g->nparts; i++)
        conns += g->parts[i].conns;
    struct store_stats st;
    memset(&st, 0, sizeof(st));
    store_stats(a->store, &st);
    tadd(t,
         "{\"time\":%.3f,\"connections\":{\"total\":%u,\"websocket\":%u,\"sse\":%u,"
         "\"longpoll\":%u,\"http\":%u},\"published\":%" PRIu64 ",\"delivered\":%" PRIu64
         ",\"publish_failures\":%" PRIu64 ",\"topics\":%" PRIu64 ",\"subscriptions\":%" PRIu64
         ",\"cutoffs\":{\"slow_websocket\":%llu,\"slow_sse\":%llu,\"publish_refused\":%llu},"
         "\"storage\":{\"file_bytes\":%" PRIu64 ",\"messages\":%" PRIu64 ",\"topics\":%" PRIu64
         ",\"log_messages\":%" PRIu64 ",\"commits\":%" PRIu64 ",\"checkpoint_failures\":%" PRIu64
         ",\"damaged\":%" PRIu64 ",\"relaxed\":%s},\"workers\":[",
         ev_time(), conns, ss.websocket, ss.sse, ss.longpoll,
         conns > ss.websocket + ss.sse + ss.longpoll ? conns - ss.websocket - ss.sse - ss.longpoll
                                                     : 0,
         hs->published, hs->delivered, hs->publish_failures, hs->topics, hs->subscribers,
         ss.slow_websocket, ss.slow_sse, ss.publish_refused, st.file_bytes, st.messages, st.topics,
         hs->store_log_messages, hs->commits, hs->checkpoint_failures, st.damaged,
         st.relaxed ? "true" : "false");
    for (int i = 0; i < g->nparts; i++) {
        part *p = &g->parts[i];
        tadd(t,
             "%s{\"id\":%d,\"connections\":%u,\"websocket\":%u,\"sse\":%u,\"longpoll\":%u,"
             "\"published\":%" PRIu64 ",\"delivered\":%" PRIu64 ",\"answered\":%s}",
             i ? "," : "", p->worker + 1, p->conns, p->websocket, p->sse, p->longpoll,
             p->own.published, p->own.delivered, p->ran ? "true" : "false");
    }
    if (g->cluster) {
        /* The record is the stream (the LMDB above holds nothing), as the
         * JetStream part read it. */
        const struct cluster_stream_state *cs = &g->stream;
        tadd(t,
             "],\"cluster\":{\"connected\":%s,\"reconnects\":%" PRIu64 ",\"inflight\":%" PRIu64
             ",\"publish_failures\":%" PRIu64 ",\"diverged\":%" PRIu64 ",\"stream\":",
             hs->cluster_connected ? "true" : "false", hs->cluster_reconnects, hs->cluster_inflight,
             hs->cluster_publish_failures, hs->cluster_diverged);
        if (g->stream_ok)
            tadd(t,
                 "{\"messages\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"topics\":%" PRIu64
                 ",\"first_seq\":%" PRIu64 ",\"last_seq\":%" PRIu64 "}}",
                 cs->messages, cs->bytes, cs->topics, cs->first_seq, cs->last_seq);
        else
            tadd(t, "null}");
    } else

        tadd(t, "],\"cluster\":null");
    tadd(t, ",\"busiest\":[");
    size_t n;
    topic_row *rows = merge_topics(g, &n);
    if (rows) qsort(rows, n, sizeof(topic_row), row_cmp_busy);
    for (size_t i = 0; i < n && i < ADM_STATS_TOPICS; i++)
        tadd(t, "%s{\"topic\":\"%s\",\"subscribers\":%u,\"messages\":%" PRIu64 "}", i ? "," : "",
             rows[i].name, rows[i].subscribers, rows[i].messages);
    free(rows);
    tadd(t, "]}");
}

static void answer_metrics(gather *g)
{
    text t = {0};
    part *p0 = &g->parts[0];
    if (p0->out.oom || !p0->ran) {
        conn_respond_error(g->c, 503, p0->ran ? "out of memory" : "shutting down");
        return;
    }
    tadd(&t, "%.*s", (int)p0->out.len, p0->out.p ? p0->out.p : "");
    tadd(&t, "# HELP sluice_worker_connections Open connections by worker and transport.\n"
             "# TYPE sluice_worker_connections gauge\n");
    for (int i = 0; i < g->nparts; i++) {
        part *p = &g->parts[i];
        unsigned streams = p->websocket + p->sse + p->longpoll;
        tadd(&t,
             "sluice_worker_connections{worker=\"%d\",transport=\"websocket\"} %u\n"
             "sluice_worker_connections{worker=\"%d\",transport=\"sse\"} %u\n"
             "sluice_worker_connections{worker=\"%d\",transport=\"longpoll\"} %u\n"
             "sluice_worker_connections{worker=\"%d\",transport=\"http\"} %u\n",
             p->worker + 1, p->websocket, p->worker + 1, p->sse, p->worker + 1, p->longpoll,
             p->worker + 1, p->conns > streams ? p->conns - streams : 0);
    }
    static const struct {
        const char *name, *help;
        size_t off;
    } per_worker[] = {
        {"sluice_worker_messages_published_total", "Messages published through each worker.",
         offsetof(hub_stats, published)},
        {"sluice_worker_messages_delivered_total", "Messages queued to each worker's subscribers.",
         offsetof(hub_stats, delivered)},
        {"sluice_worker_subscriptions", "Topic subscriptions on each worker.",
         offsetof(hub_stats, subscribers)},
        {"sluice_worker_topics", "Topics with a subscriber on each worker.",
         offsetof(hub_stats, topics)},
    };
    for (size_t k = 0; k < sizeof(per_worker) / sizeof(per_worker[0]); k++) {
        bool counter = strstr(per_worker[k].name, "_total") != NULL;
        tadd(&t, "# HELP %s %s\n# TYPE %s %s\n", per_worker[k].name, per_worker[k].help,
             per_worker[k].name, counter ? "counter" : "gauge");
        for (int i = 0; i < g->nparts; i++) {
            uint64_t v;
            memcpy(&v, (const char *)&g->parts[i].own + per_worker[k].off, sizeof(v));
            tadd(&t, "%s{worker=\"%d\"} %" PRIu64 "\n", per_worker[k].name, g->parts[i].worker + 1,
                 v);
        }
    }
    sub_stats ss;
    sub_get_stats(&ss);
    tadd(&t,
         "# HELP sluice_cutoffs_total Connections cut off by the server, by reason and transport.\n"
         "# TYPE sluice_cutoffs_total counter\n"
         "sluice_cutoffs_total{reason=\"slow_consumer\",transport=\"websocket\"} %llu\n"
         "sluice_cutoffs_total{reason=\"slow_consumer\",transport=\"sse\"} %llu\n"
         "sluice_cutoffs_total{reason=\"publish_refused\",transport=\"websocket\"} %llu\n",
         ss.slow_websocket, ss.slow_sse, ss.publish_refused);
    const hub_stats *hs = &p0->total;
    histogram(&t, "sluice_storage_commit_seconds",
              "Time of each storage commit (a group of publishes: write, and sync when durable).",
              writer_commit_bounds, WRITER_COMMIT_BUCKETS, hs->commit_buckets, hs->commit_sum);
    histogram(&t, "sluice_publish_flush_seconds",
              "From a message's commit to its subscriber's socket write (live WebSocket and SSE "
              "deliveries, one in 16 sampled; ms resolution).",
              hub_flush_bounds, HUB_FLUSH_BUCKETS, hs->flush_buckets, hs->flush_sum);
    uint64_t bws = ss.bytes_websocket, bsse = ss.bytes_sse;
    for (int i = 0; i < g->nparts; i++) {
        bws += g->parts[i].bytes_websocket;
        bsse += g->parts[i].bytes_sse;
    }
    tadd(&t,
         "# HELP sluice_bytes_sent_total Bytes written to WebSocket and SSE streams, open or "
         "ended.\n# TYPE sluice_bytes_sent_total counter\n"
         "sluice_bytes_sent_total{transport=\"websocket\"} %" PRIu64 "\n"
         "sluice_bytes_sent_total{transport=\"sse\"} %" PRIu64 "\n",
         bws, bsse);
    tadd(&t,
         "# HELP sluice_drops_total Messages not delivered or not stored, by reason.\n"
         "# TYPE sluice_drops_total counter\n"
         "sluice_drops_total{reason=\"filter\"} %llu\n"
         "sluice_drops_total{reason=\"storage_refused\"} %" PRIu64 "\n",
         ss.filtered, g->parts[0].total.publish_failures);
    tadd(&t,
         "# HELP sluice_admin_unauthorized_total Admin requests refused for a missing or wrong "
         "token.\n# TYPE sluice_admin_unauthorized_total counter\n"
         "sluice_admin_unauthorized_total %llu\n",
         g->a->refused_auth);
    size_t n;
    topic_row *rows = merge_topics(g, &n);
    if (rows) qsort(rows, n, sizeof(topic_row), row_cmp_busy);
    size_t shown = n < ADM_METRIC_TOPICS ? n : ADM_METRIC_TOPICS;
    tadd(&t,
         "# HELP sluice_topic_messages_total Messages fanned out on the busiest topics "
         "(at most %d topics).\n# TYPE sluice_topic_messages_total counter\n",
         ADM_METRIC_TOPICS);
    for (size_t i = 0; i < shown; i++)
        tadd(&t, "sluice_topic_messages_total{topic=\"%s\"} %" PRIu64 "\n", rows[i].name,
             rows[i].messages);
    tadd(&t, "# HELP sluice_topic_subscribers Subscribers of the busiest topics.\n"
             "# TYPE sluice_topic_subscribers gauge\n");
    for (size_t i = 0; i < shown; i++)
        tadd(&t, "sluice_topic_subscribers{topic=\"%s\"} %u\n", rows[i].name, rows[i].subscribers);
    tadd(&t, "# HELP sluice_topic_deliveries_total Copies queued to the busiest topics' "
             "subscribers.\n# TYPE sluice_topic_deliveries_total counter\n");
    for (size_t i = 0; i < shown; i++)
        tadd(&t, "sluice_topic_deliveries_total{topic=\"%s\"} %" PRIu64 "\n", rows[i].name,
             rows[i].deliveries);
    free(rows);
    respond_text(g->c, 200, "text/plain; version=0.0.4", &t);
    tfree(&t);
}

static void sse_broadcast(adm *a, const char *event, const char *data, size_t len);

static void history_add(adm *a, gather *g)
{
    const hub_stats *hs = &g->parts[0].total;
    unsigned conns = 0;
    for (int i = 0; i < g->nparts; i++)
        conns += g->parts[i].conns;
    history *h = &a->hist[(a->hist_head + a->nhist) % ADM_HISTORY];
    if (a->nhist == ADM_HISTORY)
        a->hist_head = (a->hist_head + 1) % ADM_HISTORY;
    else
        a->nhist++;
    h->t = ev_time();
    h->published = hs->published;
    h->delivered = hs->delivered;
    h->connections = conns;
}

static void answer_gather(gather *g)
{
    adm *a = g->a;
    g->answered = true;
    if (!g->c) { /* the tick */
        history_add(a, g);
        if (g->no_topics) return; /* no dashboard stream to send stats to */
        text t = {0};
        stats_json(g, &t);
        if (!t.oom) sse_broadcast(a, "stats", t.p, t.len);
        tfree(&t);
        return;
    }
    if (conn_closed(g->c)) return;
    switch (g->kind) {
    case G_STATS: {
        text t = {0};
        stats_json(g, &t);
        respond_text(g->c, 200, "application/json", &t);
        tfree(&t);
        break;
    }
    case G_METRICS:
        answer_metrics(g);
        break;
    case G_TOPICS:
        answer_topics(g);
        break;
    case G_CONNS:
        answer_conns(g);
        break;
    case G_CLOSE: {
        bool found = false;
        for (int i = 0; i < g->nparts; i++)
            found |= g->parts[i].status == 200;
        if (found)
            respond(g->c, 200, "application/json", STRLIT("{\"closed\":true}"));
        else
            conn_respond_error(g->c, 404, "no such connection");
        break;
    }
    case G_PUBLISH: {
        part *p = &g->parts[0];
        if (p->status != 0) {
            conn_respond_error(g->c, 503, "not stored: try again");
        } else {
            char body[HUB_ID_MAX + 16];
            int n = snprintf(body, sizeof(body), "{\"id\":\"%s\"}", p->id);
            respond(g->c, 200, "application/json", body, (size_t)n);
        }
        break;
    }
    case G_PING: {
        bool all = true;
        for (int i = 0; i < g->nparts; i++)
            all &= g->parts[i].ran;
        struct store_stats st;
        bool store_ok = store_stats(a->store, &st) == 0;
        const hub_stats *hs = &g->parts[0].total;
        /* Cluster mode: connected, and this node's copy of the stream
         * agreeing with the leader's (storage/cluster.h, cluster_sound). */
        bool cluster_ok = !hs->cluster || (hs->cluster_connected && !hs->cluster_diverged);
        if (all && store_ok && cluster_ok)
            respond(g->c, 200, "text/plain", STRLIT("ready\n"));
        else if (!all)
            respond(g->c, 503, "text/plain", STRLIT("not ready: a worker did not answer\n"));
        else if (!cluster_ok && !hs->cluster_connected)
            respond(g->c, 503, "text/plain", STRLIT("not ready: no NATS server connected\n"));
        else if (!cluster_ok)
            respond(g->c, 503, "text/plain",
                    STRLIT("not ready: this node's copy of the stream disagrees with the NATS "
                           "stream leader's: restart it\n"));
        else
            respond(g->c, 503, "text/plain", STRLIT("not ready: storage does not answer\n"));
        break;
    }
    }
    g->answered = true;
}

/* ---- the stats stream (SSE) --------------------------------------------- */

static void sse_on_data(conn *c, void *state, char *data, size_t len) {}

static void sse_on_close(conn *c, void *state)
{
    sse_client *s = state;
    adm *a = c->srv->on_request_ud;
    if (s->prev)
        s->prev->next = s->next;
    else
        a->streams = s->next;
    if (s->next) s->next->prev = s->prev;
    a->nstreams--;
    free(s);
}

static void sse_on_shutdown(conn *c, void *state)
{
    conn_close_after_write(c);
}

static const conn_stream_ops adm_sse_ops = {
    .name = "admin-sse",
    .on_data = sse_on_data,
    .on_close = sse_on_close,
    .on_shutdown = sse_on_shutdown,
};

static void sse_send(adm *a, conn *c, const char *event, const char *data, size_t len)
{
    char head[96];
    int n = snprintf(head, sizeof(head), "id: %llx-%llu\nevent: %s\ndata: ", a->boot,
                     ++a->event_seq, event);
    /* data is one line of JSON: no newline to split on. */
    if (conn_send_copy(c, head, (size_t)n) < 0 || conn_send_copy(c, data, len) < 0 ||
        conn_send_copy(c, "\n\n", 2) < 0)
        conn_close(c); /* a dashboard that does not read: it reconnects */
}

static void sse_broadcast(adm *a, const char *event, const char *data, size_t len)
{
    for (sse_client *s = a->streams, *next; s; s = next) {
        next = s->next; /* sse_send may close s */
        sse_send(a, s->c, event, data, len);
    }
}

static void start_events(adm *a, conn *c)
{
    if (a->nstreams >= ADM_MAX_SSE) {
        conn_respond_error(c, 503, "too many dashboard streams");
        return;
    }
    sse_client *s = calloc(1, sizeof(*s));
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                     "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: close\r\n"
                     "Date: %s\r\n\r\nretry: 1000\n\n",
                     server_date(&a->srv));
    buf_t *hb = s ? buf_from(head, (size_t)n) : NULL;
    if (!hb) {
        free(s);
        conn_respond_error(c, 503, "out of memory");
        return;
    }
    s->c = c;
    s->next = a->streams;
    if (a->streams) a->streams->prev = s;
    a->streams = s;
    a->nstreams++;
    conn_log_access(c, 200);
    conn_start_stream(c, &adm_sse_ops, s, hb);
    buf_unref(hb);
    /* The last minutes at once, so a new dashboard draws its charts. */
    text t = {0};
    tadd(&t, "{\"history\":[");
    for (unsigned i = 0; i < a->nhist; i++) {
        const history *h = &a->hist[(a->hist_head + i) % ADM_HISTORY];
        tadd(&t, "%s[%.3f,%" PRIu64 ",%" PRIu64 ",%u]", i ? "," : "", h->t, h->published,
             h->delivered, h->connections);
    }
    tadd(&t, "]}");
    if (!t.oom) sse_send(a, c, "history", t.p, t.len);
    tfree(&t);
}

static void on_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
    adm *a = t->data;
    if (a->stopping) return;
    gather *g = gather_new(a, G_STATS, NULL, -1);
    if (!g) return;
    g->no_topics = a->nstreams == 0; /* the busiest topics are for the streams */
    gather_post(a, g);
}

/* ---- requests ----------------------------------------------------------- */

/* Compares in time independent of where the first difference is. */
static bool token_equal(const adm *a, const char *v, size_t len)
{
    if (len != a->token_len) return false;
    unsigned char d = 0;
    for (size_t i = 0; i < len; i++)
        d |= (unsigned char)(v[i] ^ a->token[i]);
    return d == 0;
}

/* The first value of `name` in the query, decoded into out (cap bytes
 * with the NUL).  Returns its length, -1 when absent, -2 when too long. */
static int query_get(const http_request *req, const char *name, char *out, size_t cap)
{
    size_t pos = 0, klen, vlen;
    const char *k, *v;
    while (req->query && http_query_next(req->query, req->query_len, &pos, &k, &klen, &v, &vlen)) {
        if (klen != strlen(name) || memcmp(k, name, klen) != 0) continue;
        if (vlen >= cap) return -2;
        size_t n = http_pct_decode(v, vlen, out, true);
        out[n] = '\0';
        return (int)n;
    }
    return -1;
}

static bool authorized(adm *a, const http_request *req)
{
    if (!a->token) return true;
    size_t len;
    const char *v = http_header_get(req, "authorization", &len);
    if (v && len > 7 && strncasecmp(v, "Bearer ", 7) == 0 && token_equal(a, v + 7, len - 7))
        return true;
    /* Browsers: a cookie the dashboard page set (EventSource and page
     * loads carry no Authorization header), or ?token= on the page URL. */
    const char *ck = http_header_get(req, "cookie", &len);
    for (size_t i = 0; ck && i < len;) {
        while (i < len && (ck[i] == ' ' || ck[i] == ';'))
            i++;
        size_t j = i;
        while (j < len && ck[j] != ';')
            j++;
        if (j - i > 13 && memcmp(ck + i, "sluice_admin=", 13) == 0 &&
            token_equal(a, ck + i + 13, j - i - 13))
            return true;
        i = j;
    }
    char tok[ADM_TOKEN_MAX + 1];
    int n = query_get(req, "token", tok, sizeof(tok));
    return n > 0 && token_equal(a, tok, (size_t)n);
}

static bool path_is(const http_request *req, const char *p)
{
    return req->path_len == strlen(p) && memcmp(req->path, p, req->path_len) == 0;
}

static bool method_is(const http_request *req, const char *m)
{
    return strcmp(req->method, m) == 0;
}

static void serve_asset(conn *c, const http_request *req, const char *type, const char *body,
                        size_t len, adm *a)
{
    conn_response_start(c, 200);
    conn_response_header(c, STRLIT("Content-Type"), type, strlen(type));
    conn_response_header(c, STRLIT("Cache-Control"), STRLIT("no-cache"));
    conn_response_header(c, STRLIT("X-Content-Type-Options"), STRLIT("nosniff"));
    conn_response_header(c, STRLIT("Content-Security-Policy"),
                         STRLIT("default-src 'self'; style-src 'self'; script-src 'self'; "
                                "connect-src 'self'; frame-ancestors 'none'"));
    char tok[ADM_TOKEN_MAX + 1];
    if (a->token && query_get(req, "token", tok, sizeof(tok)) > 0 &&
        token_equal(a, tok, strlen(tok))) {
        char cookie[ADM_TOKEN_MAX + 96];
        int n = snprintf(cookie, sizeof(cookie),
                         "sluice_admin=%s; Path=/; HttpOnly; SameSite=Strict", tok);
        conn_response_header(c, STRLIT("Set-Cookie"), cookie, (size_t)n);
    }
    conn_response_finish(c, body, len);
}

/* The connection ID of /api/connections/{id}: "W-HEX". */
static bool parse_conn_id(const char *s, size_t len, int nworkers, int *w, uintptr_t *key)
{
    char buf[48];
    if (len == 0 || len >= sizeof(buf)) return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *dash = strchr(buf, '-'), *end;
    if (!dash || dash == buf) return false;
    *dash = '\0';
    errno = 0;
    long wid = strtol(buf, &end, 10);
    if (*end || wid < 1 || wid > nworkers) return false;
    if (!isxdigit((unsigned char)dash[1])) return false;
    unsigned long long k = strtoull(dash + 1, &end, 16);
    if (*end || errno) return false;
    *w = (int)wid - 1;
    *key = (uintptr_t)k;
    return true;
}

static void on_request(conn *c, http_request *req, void *ud)
{
    adm *a = ud;
    if (path_is(req, "/healthz")) {
        respond(c, 200, "text/plain", STRLIT("ok\n"));
        return;
    }
    if (path_is(req, "/favicon.ico")) { /* browsers ask; nothing to give */
        conn_response_start(c, 204);
        conn_response_finish(c, NULL, 0);
        return;
    }
    if (path_is(req, "/readyz")) {
        gather *g = gather_new(a, G_PING, c, -1);
        if (g) gather_post(a, g);
        return;
    }
    if (!authorized(a, req)) {
        a->refused_auth++;
        char remote[80];
        LOG_KV_LIMITED(&a->auth_log, 10.0, LOG_WARN, "admin: request without a valid token",
                       LOG_S("remote", conn_remote_addr(c, remote, sizeof(remote))));
        conn_response_start(c, 401);
        conn_response_header(c, STRLIT("WWW-Authenticate"), STRLIT("Bearer realm=\"sluice\""));
        conn_response_header(c, STRLIT("Content-Type"), STRLIT("application/json"));
        conn_response_finish(c, STRLIT("{\"error\":\"a valid admin token is required\"}"));
        return;
    }
    bool get = method_is(req, "GET") || method_is(req, "HEAD");
    if (get && (path_is(req, "/") || path_is(req, "/index.html")))
        return serve_asset(c, req, "text/html; charset=utf-8", adm_index_html_source,
                           adm_index_html_size, a);
    if (get && path_is(req, "/dashboard.js"))
        return serve_asset(c, req, "text/javascript; charset=utf-8", adm_dashboard_js_source,
                           adm_dashboard_js_size, a);
    if (get && path_is(req, "/dashboard.css"))
        return serve_asset(c, req, "text/css; charset=utf-8", adm_dashboard_css_source,
                           adm_dashboard_css_size, a);
    if (get && path_is(req, "/sluice.js"))
        return serve_asset(c, req, "text/javascript; charset=utf-8", adm_client_js_source,
                           adm_client_js_size, a);
    int kind = -1;
    if (path_is(req, "/metrics"))
        kind = G_METRICS;
    else if (path_is(req, "/api/stats"))
        kind = G_STATS;
    else if (path_is(req, "/api/topics"))
        kind = G_TOPICS;
    else if (path_is(req, "/api/connections"))
        kind = G_CONNS;
    if (kind >= 0) {
        if (!get) return conn_respond_error(c, 405, "method not allowed");
        char num[16], prefix[HUB_TOPIC_MAX + 1] = "";
        size_t limit = kind == G_CONNS ? 100 : ADM_TOPICS_MAX;
        int n = query_get(req, "limit", num, sizeof(num));
        if (n >= 0) {
            char *end;
            long v = strtol(num, &end, 10);
            if (n == 0 || *end || v < 1 || v > (kind == G_CONNS ? ADM_CONNS_MAX : ADM_TOPICS_MAX))
                return conn_respond_error(c, 400, "limit: 1 to 1000");
            limit = (size_t)v;
        } else if (n == -2) {
            return conn_respond_error(c, 400, "limit: 1 to 1000");
        }
        if (kind == G_TOPICS && query_get(req, "prefix", prefix, sizeof(prefix)) == -2)
            return conn_respond_error(c, 400, "prefix too long");
        gather *g = gather_new(a, kind, c, -1);
        if (!g) return;
        g->limit = limit;
        /* Per worker, at most `limit` connections: the answer is bounded
         * by limit * workers rows, then cut. */
        memcpy(g->arg, prefix, sizeof(prefix));
        gather_post(a, g);
        return;
    }
    if (path_is(req, "/api/events")) {
        if (!get) return conn_respond_error(c, 405, "method not allowed");
        return start_events(a, c);
    }
    static const char conns_prefix[] = "/api/connections/";
    if (req->path_len > sizeof(conns_prefix) - 1 &&
        memcmp(req->path, conns_prefix, sizeof(conns_prefix) - 1) == 0) {
        const char *rest = req->path + sizeof(conns_prefix) - 1;
        size_t rlen = req->path_len - (sizeof(conns_prefix) - 1);
        static const char close_sfx[] = "/close";
        bool post_close =
            method_is(req, "POST") && rlen > sizeof(close_sfx) - 1 &&
            memcmp(rest + rlen - (sizeof(close_sfx) - 1), close_sfx, sizeof(close_sfx) - 1) == 0;
        if (post_close) rlen -= sizeof(close_sfx) - 1;
        if (!post_close && !method_is(req, "DELETE"))
            return conn_respond_error(c, 405, "POST .../close or DELETE");
        int w;
        uintptr_t key;
        if (!parse_conn_id(rest, rlen, a->nworkers, &w, &key))
            return conn_respond_error(c, 404, "no such connection");
        gather *g = gather_new(a, G_CLOSE, c, w);
        if (!g) return;
        g->target = key;
        gather_post(a, g);
        return;
    }
    static const char topics_prefix[] = "/api/topics/";
    if (req->path_len > sizeof(topics_prefix) - 1 &&
        memcmp(req->path, topics_prefix, sizeof(topics_prefix) - 1) == 0) {
        if (!method_is(req, "POST")) return conn_respond_error(c, 405, "POST to publish");
        const char *name = req->path + sizeof(topics_prefix) - 1;
        size_t nlen = req->path_len - (sizeof(topics_prefix) - 1);
        if (!hub_topic_valid(name, nlen)) return conn_respond_error(c, 400, "invalid topic name");
        char event[HUB_EVENT_MAX + 1] = "";
        int elen = query_get(req, "event", event, sizeof(event));
        if (elen == -2 || elen == 0 || (elen > 0 && !hub_event_valid(event, (size_t)elen)))
            return conn_respond_error(c, 400, "invalid event name");
        /* Spread the publishes over the workers. */
        static unsigned next_worker;
        gather *g = gather_new(a, G_PUBLISH, c, (int)(next_worker++ % (unsigned)a->nworkers));
        if (!g) return;
        memcpy(g->arg, name, nlen);
        g->arg[nlen] = '\0';
        memcpy(g->event, event, sizeof(event));
        if (req->body_len && !(g->body = malloc(req->body_len))) {
            gather_free(g);
            return conn_respond_error(c, 503, "out of memory");
        }
        if (req->body_len) memcpy(g->body, req->body, req->body_len);
        g->body_len = req->body_len;
        gather_post(a, g);
        return;
    }
    conn_respond_error(c, 404, "no such admin resource");
}

/* ---- the thread --------------------------------------------------------- */

static void on_stop(struct ev_loop *loop, ev_async *w, int revents)
{
    adm *a = w->data;
    if (a->stopping) return;
    a->stopping = true;
    ev_timer_stop(loop, &a->tick);
    server_shutdown(&a->srv);
}

static void *adm_main(void *arg)
{
    adm *a = arg;
    log_batch_begin();
    server_start(&a->srv);
    ev_run(a->loop, 0);
    /* The server's connections are gone: wait for the workers' parts. */
    while (a->outstanding > 0)
        ev_run(a->loop, EVRUN_ONCE);
    /* On this thread: what the server frees goes back to this thread's
     * pools, which are drained here. */
    server_destroy(&a->srv);
    outq_pool_drain();
    conn_parser_pool_drain();
    log_flush();
    return NULL;
}

static void on_log_flush(struct ev_loop *loop, ev_prepare *p, int revents)
{
    log_flush();
}

static ev_prepare log_watcher;

/* Whether another socket listens on "ADDR:PORT" ("[V6]:PORT"): the admin
 * socket is opened with SO_REUSEPORT like the public ones (server_listen),
 * which would let it share the port with another sluice of the same user,
 * so a plain bind proves the port free first.  Port 0 is always free. */
static bool address_taken(const char *addr)
{
    char host[INET6_ADDRSTRLEN + 2];
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= sizeof(host)) return false; /* server_listen says */
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port <= 0 || port > 65535) return false;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t len;
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        host[hl - 1] = '\0';
        if (inet_pton(AF_INET6, host + 1, &a->sin6_addr) != 1) return false;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        len = sizeof(*a);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1) return false;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        len = sizeof(*a);
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    bool taken = bind(fd, (struct sockaddr *)&ss, len) < 0 && errno == EADDRINUSE;
    close(fd);
    return taken;
}

adm *adm_start(const adm_opts *o, char *err, size_t errlen)
{
    adm *a = calloc(1, sizeof(adm));
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->nworkers = o->nworkers;
    memcpy(a->workers, o->workers, (size_t)o->nworkers * sizeof(worker *));
    a->store = o->store;
    if (o->token) {
        a->token = strdup(o->token);
        a->token_len = strlen(o->token);
    }
    if (getrandom(&a->key_salt, sizeof(a->key_salt), 0) != sizeof(a->key_salt))
        a->key_salt = (uintptr_t)ev_time() * 2654435761u;
    a->boot = (unsigned long long)(ev_time() * 1000);
    a->loop = ev_loop_new(EVFLAG_AUTO);
    if (!a->loop || (o->token && !a->token)) {
        snprintf(err, errlen, "cannot create the admin loop");
        goto fail;
    }
    server_limits lim = *o->limits;
    /* The public limit counts every connection of the process: leave the
     * operator room above it. */
    lim.max_connections = lim.max_connections > UINT_MAX - 64 ? UINT_MAX : lim.max_connections + 64;
    server_init(&a->srv, a->loop, &lim);
    a->srv.on_request = on_request;
    a->srv.on_request_ud = a;
    /* "PORT" alone: loopback. */
    char addr[128];
    const char *l = o->listen;
    if (strspn(l, "0123456789") == strlen(l)) {
        snprintf(addr, sizeof(addr), "127.0.0.1:%s", l);
        l = addr;
    }
    if (address_taken(l)) {
        snprintf(err, errlen, "cannot listen on %s: %s", l, strerror(EADDRINUSE));
        goto fail_srv;
    }
    /* join: the admin address is not a worker group, and its line below
     * says "admin". */
    if (server_listen(&a->srv, l, false, true, err, errlen) < 0) goto fail_srv;
    const char *name = a->srv.listeners[0].name;
    bool loopback = strncmp(name, "127.", 4) == 0 || strncmp(name, "[::1]", 5) == 0;
    if (!loopback && !a->token)
        LOG_KV(LOG_WARN, "the admin listener is not on loopback and has no token",
               LOG_S("address", name));
    char msg[96];
    snprintf(msg, sizeof(msg), "admin listening on %s", name);
    LOG_KV(LOG_INFO, msg, LOG_S("token", a->token ? "required" : "none"));
    pthread_mutex_init(&a->done_lock, NULL);
    ev_async_init(&a->done_async, on_done);
    ev_async_init(&a->stop_async, on_stop);
    a->done_async.data = a->stop_async.data = a;
    ev_async_start(a->loop, &a->done_async);
    ev_async_start(a->loop, &a->stop_async);
    ev_timer_init(&a->tick, on_tick, 1.0, 1.0);
    a->tick.data = a;
    ev_timer_start(a->loop, &a->tick);
    ev_prepare_init(&log_watcher, on_log_flush);
    ev_set_priority(&log_watcher, EV_MINPRI);
    ev_prepare_start(a->loop, &log_watcher);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&a->thread, NULL, adm_main, a);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the admin thread: %s", strerror(rc));
        goto fail_srv;
    }
    a->started = true;
    return a;
fail_srv:
    server_destroy(&a->srv);
fail:
    if (a->loop) ev_loop_destroy(a->loop);
    free(a->token);
    free(a);
    return NULL;
}

void adm_stop(adm *a)
{
    if (a) ev_async_send(a->loop, &a->stop_async);
}

void adm_free(adm *a)
{
    if (!a) return;
    if (a->started) {
        adm_stop(a);
        pthread_join(a->thread, NULL);
    }
    ev_timer_stop(a->loop, &a->tick);
    ev_async_stop(a->loop, &a->done_async);
    ev_async_stop(a->loop, &a->stop_async);
    ev_prepare_stop(a->loop, &log_watcher);
    if (!a->started) server_destroy(&a->srv);
    ev_loop_destroy(a->loop);
    pthread_mutex_destroy(&a->done_lock);
    if (a->token) memset(a->token, 0, a->token_len);
    free(a->token);
    free(a);
}

char *adm_read_token_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char buf[ADM_TOKEN_MAX + 2];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *nl = strpbrk(buf, "\r\n");
    if (nl) *nl = '\0';
    char *s = buf;
    while (*s == ' ' || *s == '\t')
        s++;
    size_t len = strlen(s);
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        s[--len] = '\0';
    if (len == 0 || len > ADM_TOKEN_MAX || (!nl && n == sizeof(buf) - 1)) {
        snprintf(err, errlen, "%s: the token must be one line of 1 to %d bytes", path,
                 ADM_TOKEN_MAX);
        return NULL;
    }
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e || s[i] == ';') {
            snprintf(err, errlen, "%s: the token must be printable ASCII without spaces or ';'",
                     path);
            return NULL;
        }
    char *t = strdup(s);
    if (!t) snprintf(err, errlen, "out of memory");
    return t;
}
