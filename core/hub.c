/* hub.c: the bus (the writer thread and the hubs it hands commits to), the
 * per-worker topic table (chained hash) of subscribers, fan-out after
 * commit, replay from LMDB, and the lazily built wire forms (see hub.h). */
#include "core/hub.h"

#include "core/defs.h"

#include "core/b64.h"
#include "core/log.h"
#include "core/jsonenc.h"
#include "core/sse.h"
#include "core/utf8.h"
#include "core/ws.h"
#include "core/wsz.h"
#include "storage/cluster.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* A topic exists in memory only while it has subscribers. */
struct hub_topic {
    hub_topic *next_in_bucket;
    uint32_t hash;
    uint32_t nsubs;
    uint32_t oneshot_subs; /* subscribers that are oneshot (long-polls) */
    hub_sub *subs;
    uint64_t messages, deliveries; /* hub_each_topic: fanned out, copies queued */
    size_t name_len;
    char name[];
};

struct hub_retention_rule {
    char *pattern;
    size_t len;
    bool prefix;
    hub_retention r;
};
typedef struct hub_retention_rule retention_rule;

/* A publish between submit and its acknowledgement. */
typedef struct pending {
    struct writer_req req; /* first: the writer hands it back */
    double submitted;      /* monotonic seconds, for the latency histogram */
    hub *origin;           /* the publisher's hub: it runs done */
    hub_msg *msg;
    hub_publish_fn done;
    void *ud;
    char ikey[STORE_IKEY_MAX]; /* the writer reads it until the commit */
} pending;

struct hub_bus {
    struct store *store;
    struct writer *writer;
    pthread_mutex_t lock; /* guards hubs[] against attach/detach */
    unsigned max_hubs;
    hub *hubs[HUB_MAX_WORKERS]; /* by inbox index; NULL once detached */
    /* Storage refusing writes (on_committed's, in commit order). */
    bool refusing;
    uint64_t refused;
    double refusing_since;
    /* Cluster mode (hub_bus_cluster): JetStream is the record, the store
     * and its writer stay idle. */
    struct cluster *cluster;
    /* hub_replay_async's pages: read by at most HUB_REPLAY_THREADS
     * threads, the rest wait in a queue (replay_lock guards it). */
    unsigned replays; /* pages read or waiting (atomic): hub_bus_close waits for them */
    unsigned max_replays;     /* their bound (hub_bus_limit_replays) */
    uint64_t replays_refused; /* past it (atomic) */
    bool closing;     /* hub_bus_close has begun: waiting pages are not read (atomic) */
    pthread_mutex_t replay_lock;
    pthread_cond_t replay_cond; /* a page queued for an idle reader */
    unsigned replay_threads;    /* readers, busy or idle */
    unsigned replay_idle;       /* readers waiting for a page */
    struct hub_replay_page *replay_head, *replay_tail;
    unsigned replay_alive; /* reader threads not ended yet (atomic): hub_bus_close waits */
};

/* Counters written by the hub's own thread only and read by any (metrics):
 * relaxed atomics, which cost a plain add on the writing side. */
typedef struct hub_counters {
    uint64_t published, delivered, subscribers, publish_failures, ntopics;
    uint64_t latency_buckets[HUB_LATENCY_BUCKETS + 1];
    uint64_t latency_ns;
    uint64_t flush_buckets[HUB_FLUSH_BUCKETS + 1]; /* hub_count_flush */
    uint64_t flush_ms;
} hub_counters;

#define COUNT(field, n)                                                                            \
    __atomic_store_n(&(field), __atomic_load_n(&(field), __ATOMIC_RELAXED) + (n), __ATOMIC_RELAXED)
#define READ(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

struct hub {
    hub_topic **buckets;
    uint32_t nbuckets;
    hub_bus *bus;
    unsigned index; /* inbox link of this hub in every message */
    hub_wake_fn wake;
    void *wake_ud;
    unsigned inflight;        /* own publishes not yet acknowledged */
    bool uncommitted;         /* own publishes queued since the last hub_commit_pending */
    uint64_t last_seq;        /* newest delivered */
    char last_id[HUB_ID_MAX]; /* ID of the newest message delivered: "now" */
    uint8_t last_id_len;
    hub_retention_rules rules;
    hub_counters stats;
    hub_sub *prefix_subs;         /* wildcard subscriptions */
    uint32_t oneshot_prefix_subs; /* wildcard subscriptions that are oneshot */
    struct hub_replay_page *pages; /* hub_replay_async reads in flight (this thread) */
    unsigned npages;
    pthread_mutex_t inbox_lock;   /* the writer appends, the hub's thread takes */
    hub_msg *inbox_head, *inbox_tail;
    /* Fan-out in progress (a depth: a delivery may run another): an
     * unsubscribe then only marks its subscription dead and lists it in
     * `dead`; the lists are mended and the memory freed once the outermost
     * fan-out returns (see hub_unsubscribe). */
    unsigned fanning;
    hub_sub *dead;
};

const double hub_latency_bounds[HUB_LATENCY_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                        0.05,   0.1,   0.25,   0.5,   1,    2.5};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void record_latency(hub_counters *st, double seconds)
{
    int i = 0;
    while (i < HUB_LATENCY_BUCKETS && seconds > hub_latency_bounds[i])
        i++;
    COUNT(st->latency_buckets[i], 1);
    COUNT(st->latency_ns, (uint64_t)(seconds * 1e9));
}

static uint32_t hash_name(const char *s, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

/* The hub whose own thread is committing (hub_commit_pending): it polls
 * its inbox right after, so it needs no wake. */
static __thread hub *committing_hub;

/* Writer thread (or a committing worker): queue m (with a new reference)
 * in h's inbox; wake h's worker when the inbox was empty. */
static void inbox_push(hub *h, hub_msg *m)
{
    hub_msg_ref(m);
    m->inbox_next[h->index] = NULL;
    pthread_mutex_lock(&h->inbox_lock);
    bool was_empty = h->inbox_head == NULL;
    if (h->inbox_tail)
        h->inbox_tail->inbox_next[h->index] = m;
    else
        h->inbox_head = m;
    h->inbox_tail = m;
    pthread_mutex_unlock(&h->inbox_lock);
    if (was_empty && h->wake && h != committing_hub) h->wake(h->wake_ud);
}

/* Writer thread, in commit order: the message gets its ID here (before any
 * worker sees it), then goes to every hub's inbox; a failed publish goes to
 * its publisher's hub only. */
/* A full disk (or a failing one) refuses every publish until space is
 * back: logged at error when it starts and once when it ends, not per
 * publish.  Seen here, where every result passes in commit order. */
static void note_storage_state(hub_bus *b, int status)
{
    bool refusing = status == SL_EFULL || status == SL_EIO;
    if (status != 0 && !refusing) return; /* not the disk's state */
    if (refusing == b->refusing) {
        b->refused += refusing;
        return;
    }
    b->refusing = refusing;
    if (refusing) {
        b->refused = 1;
        b->refusing_since = mono_now();
        LOG_KV(LOG_ERROR, "storage refuses writes: publishes are answered 503 until it takes them",
               LOG_S("reason", err_str(status)));
    } else {
        LOG_KV(LOG_WARN, "storage takes writes again", LOG_I("refused", b->refused),
               LOG_D("seconds", mono_now() - b->refusing_since));
    }
}

static void on_committed(void *ud, struct writer_req *req)
{
    hub_bus *b = ud;
    pending *p = (pending *)req;
    note_storage_state(b, req->status);
    /* Once m is in its publisher's inbox, that worker may acknowledge and
     * free p at any moment: read p before the first push, never after. */
    hub_msg *m = p->msg;
    hub *origin = p->origin;
    bool ok = req->status == 0;
    /* A duplicate (Idempotency-Key) goes, like a failure, to its
     * publisher only: its first publish had the fan-out. */
    bool to_all = ok && !req->duplicate;
    if (ok) {
        m->seq = req->seq;
        m->time_ms = req->time_ms;
        m->id_len = (uint8_t)store_id_format(req->epoch, req->seq, m->id);
        m->duplicate = req->duplicate != 0;
    }
    pthread_mutex_lock(&b->lock);
    bool origin_attached = false;
    for (unsigned i = 0; i < b->max_hubs; i++)
        if (b->hubs[i] == origin) origin_attached = true;
    if (!origin_attached) /* cannot happen: a hub detaches with nothing in flight */
        free(p);
    for (unsigned i = 0; i < b->max_hubs; i++) {
        hub *h = b->hubs[i];
        if (h && (to_all || h == origin)) inbox_push(h, m);
    }
    pthread_mutex_unlock(&b->lock);
    hub_msg_unref(m); /* the publish's reference: the inboxes hold theirs */
}

/* The newest stored message's real ID, as "now" for cursors; on an empty
 * store "<epoch>-0", which every store reads as "before everything". */
static int newest_topic(void *ud, const struct store_topic_info *t)
{
    struct store_topic_info *best = ud;
    if (t->last_seq > best->last_seq) {
        best->last_seq = t->last_seq;
        best->last_epoch = t->last_epoch;
    }
    return 0;
}

static void find_last_id(hub *h, struct store *st)
{
    struct store_topic_info best = {0};
    store_topics(st, newest_topic, &best);
    uint64_t epoch = best.last_seq ? best.last_epoch : store_epoch(st);
    h->last_id_len = (uint8_t)store_id_format(epoch, best.last_seq, h->last_id);
}

hub_bus *hub_bus_open(struct store *st, unsigned max_hubs, size_t max_queue, char *err,
                      size_t errlen)
{
    if (max_hubs < 1 || max_hubs > HUB_MAX_WORKERS) {
        snprintf(err, errlen, "at most %d workers", HUB_MAX_WORKERS);
        return NULL;
    }
    hub_bus *b = calloc(1, sizeof(hub_bus));
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&b->lock, NULL);
    pthread_mutex_init(&b->replay_lock, NULL);
    pthread_cond_init(&b->replay_cond, NULL);
    b->store = st;
    b->max_hubs = max_hubs;
    struct store_stats ss;
    bool relaxed = store_stats(st, &ss) == 0 && ss.relaxed;
    struct writer_opts wo = {.done = on_committed,
                             .ud = b,
                             .max_queue = max_queue,
                             .commit_on_submitter = relaxed,
                             .lone_commit_max_us = relaxed ? 0 : HUB_LONE_COMMIT_MAX_US};
    int rc = writer_start(&b->writer, st, &wo);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the storage writer: %s", err_str(rc));
        pthread_mutex_destroy(&b->lock);
        free(b);
        return NULL;
    }
    return b;
}

/* ---- cluster mode: JetStream's callbacks, on the NATS client's threads ---- */

static hub_msg *msg_new(const char *topic, size_t tlen, const char *event, size_t elen,
                        const void *data, size_t len, unsigned ninbox);
static void page_free(struct hub_replay_page *q);
static void replay_done(hub *h, struct hub_replay_page *q);

/* A PubAck (or failure) goes to its publisher's hub only: the fan-out
 * comes from the stream's consumer, on every node alike. */
static void on_cluster_ack(void *ud, void *req, int status, uint64_t seq, bool duplicate)
{
    hub_bus *b = ud;
    pending *p = req;
    hub_msg *m = p->msg;
    hub *origin = p->origin;
    p->req.status = status;
    if (status == 0) {
        p->req.seq = seq;
        p->req.epoch = cluster_epoch(b->cluster);
        p->req.duplicate = duplicate;
        m->seq = seq;
        m->id_len = (uint8_t)store_id_format(p->req.epoch, seq, m->id);
        m->duplicate = duplicate;
    }
    m->ack_only = true;
    pthread_mutex_lock(&b->lock);
    bool attached = false;
    for (unsigned i = 0; i < b->max_hubs; i++)
        if (b->hubs[i] == origin) attached = true;
    if (attached)
        inbox_push(origin, m);
    else /* cannot happen: a hub detaches with nothing in flight */
        free(p);
    pthread_mutex_unlock(&b->lock);
    hub_msg_unref(m);
}

/* A gap the stream's consumer found (cluster.h), to every hub in its turn
 * among the messages. */
static void on_cluster_gap(hub_bus *b, const struct cluster_msg *cm)
{
    const char *topic = cm->topic ? cm->topic : "";
    hub_msg *m = msg_new(topic, cm->topic ? cm->topic_len : 0, NULL, 0, "", 0, b->max_hubs);
    if (!m) return; /* out of memory: the signal is lost, the resume path still tells */
    m->gap = true;
    m->seq = cm->seq;
    pthread_mutex_lock(&b->lock);
    for (unsigned i = 0; i < b->max_hubs; i++)
        if (b->hubs[i]) inbox_push(b->hubs[i], m);
    pthread_mutex_unlock(&b->lock);
    hub_msg_unref(m);
}

/* The stream's consumer: every message, in stream order, to every hub. */
static void on_cluster_msg(void *ud, const struct cluster_msg *cm)
{
    hub_bus *b = ud;
    if (cm->gap) {
        on_cluster_gap(b, cm);
        return;
    }
    hub_msg *m = msg_new(cm->topic, cm->topic_len, cm->event, cm->event_len, cm->data,
                         cm->data_len, b->max_hubs);
    if (!m) {
        static log_limit lim = LOG_LIMIT_INIT;
        LOG_KV_LIMITED(&lim, 1.0, LOG_ERROR, "cluster: out of memory, a message not delivered",
                       LOG_I("seq", cm->seq));
        return;
    }
    m->seq = cm->seq;
    m->time_ms = cm->time_ms;
    /* The stream may hold what another program published with the
     * header: embedded only if it parses. */
    m->is_json = (cm->flags & STORE_MSG_JSON) && json_valid(cm->data, cm->data_len);
    /* Not b->cluster's epoch: the consumer starts before cluster_open
     * has returned and set b->cluster (a node that started while another
     * published crashed on it). */
    m->id_len = (uint8_t)store_id_format(cm->epoch, cm->seq, m->id);
    pthread_mutex_lock(&b->lock);
    for (unsigned i = 0; i < b->max_hubs; i++)
        if (b->hubs[i]) inbox_push(b->hubs[i], m);
    pthread_mutex_unlock(&b->lock);
    hub_msg_unref(m);
}

int hub_bus_cluster(hub_bus *b, const struct cluster_opts *o, char *err, size_t errlen)
{
    return cluster_open(&b->cluster, o, on_cluster_ack, on_cluster_msg, b, err, errlen);
}

struct cluster *hub_bus_get_cluster(const hub_bus *b)
{
    return b->cluster;
}

struct cluster *hub_cluster(const hub *h)
{
    return h->bus ? h->bus->cluster : NULL;
}

bool hub_bus_ready(const hub_bus *b)
{
    return !b->cluster || (cluster_connected(b->cluster) && cluster_sound(b->cluster));
}

void hub_bus_close(hub_bus *b)
{
    if (!b) return;
    /* Reads off the loop use the cluster: their requests are bounded
     * (CLUSTER_API_WAIT_MS each), wait for them (bounded too); pages that
     * wait for a reader are dropped unread. */
    __atomic_store_n(&b->closing, true, __ATOMIC_RELEASE);
    pthread_mutex_lock(&b->replay_lock);
    pthread_cond_broadcast(&b->replay_cond); /* idle readers end */
    pthread_mutex_unlock(&b->replay_lock);
    for (int i = 0; i < 600 && (__atomic_load_n(&b->replays, __ATOMIC_ACQUIRE) ||
                                __atomic_load_n(&b->replay_alive, __ATOMIC_ACQUIRE));
         i++)
        usleep(50 * 1000);
    cluster_close(b->cluster);
    writer_stop(b->writer);
    pthread_mutex_destroy(&b->lock);
    pthread_mutex_destroy(&b->replay_lock);
    pthread_cond_destroy(&b->replay_cond);
    free(b);
}

hub *hub_new(void)
{
    hub *h = calloc(1, sizeof(hub));
    if (!h) return NULL;
    pthread_mutex_init(&h->inbox_lock, NULL);
    h->nbuckets = 1024;
    h->buckets = calloc(h->nbuckets, sizeof(hub_topic *));
    if (!h->buckets) {
        hub_free(h);
        return NULL;
    }
    return h;
}

int hub_attach(hub *h, hub_bus *b, const hub_opts *opts)
{
    h->wake = opts->wake;
    h->wake_ud = opts->wake_ud;
    if (b->cluster) {
        h->last_seq = cluster_last_seq(b->cluster);
        h->last_id_len =
            (uint8_t)store_id_format(cluster_epoch(b->cluster), h->last_seq, h->last_id);
    } else {
        h->last_seq = store_last_seq(b->store);
        find_last_id(h, b->store);
    }
    pthread_mutex_lock(&b->lock);
    unsigned i = 0;
    while (i < b->max_hubs && b->hubs[i])
        i++;
    if (i < b->max_hubs) {
        b->hubs[i] = h;
        h->index = i;
        h->bus = b;
    }
    pthread_mutex_unlock(&b->lock);
    return h->bus ? 0 : SL_ELIMIT;
}

bool hub_is_open(const hub *h)
{
    return h->bus != NULL;
}

unsigned hub_inflight(const hub *h)
{
    return h->inflight + h->npages;
}

static void topic_free(hub_topic *t)
{
    free(t);
}

/* Empties h's inbox and returns what it held, oldest first (linked through
 * inbox_next[h->index]). */
static hub_msg *inbox_take(hub *h)
{
    pthread_mutex_lock(&h->inbox_lock);
    hub_msg *m = h->inbox_head;
    h->inbox_head = h->inbox_tail = NULL;
    pthread_mutex_unlock(&h->inbox_lock);
    return m;
}

void hub_detach(hub *h)
{
    if (!h || !h->bus) return;
    pthread_mutex_lock(&h->bus->lock);
    h->bus->hubs[h->index] = NULL;
    pthread_mutex_unlock(&h->bus->lock);
    /* Nothing arrives now: drop what waits (others' messages only). */
    hub_msg *m = inbox_take(h);
    while (m) {
        hub_msg *next = m->inbox_next[h->index];
        /* Only a page's carrier, in this inbox alone, is written: other
         * messages are in other workers' inboxes too, read meanwhile. */
        struct hub_replay_page *q = m->page;
        if (q) m->page = NULL;
        hub_msg_unref(m);
        if (q) page_free(q); /* a page back after the worker stopped */
        m = next;
    }
    h->bus = NULL;
}

void hub_free(hub *h)
{
    if (!h) return;
    hub_detach(h);
    for (uint32_t i = 0; h->buckets && i < h->nbuckets; i++) {
        hub_topic *t = h->buckets[i];
        while (t) {
            hub_topic *next = t->next_in_bucket;
            /* The last unsubscribe frees t: stop before reading it again. */
            for (hub_sub *s = t->subs, *sn; s; s = sn) {
                sn = s->next;
                hub_unsubscribe(h, s);
            }
            t = next;
        }
    }
    hub_rules_free(&h->rules);
    free(h->buckets);
    pthread_mutex_destroy(&h->inbox_lock);
    free(h);
}

/* The bytes a topic name may hold: a table, since every publish and every
 * subscription checks its names two or three times. */
/* clang-format off */
#define TOPIC_RANGE(lo, hi) [(lo)...(hi)] = 1
static const unsigned char topic_byte_ok[256] = {
    TOPIC_RANGE('a', 'z'), TOPIC_RANGE('A', 'Z'), TOPIC_RANGE('0', '9'),
    ['_'] = 1, ['.'] = 1, [':'] = 1, ['-'] = 1,
};
#undef TOPIC_RANGE
/* clang-format on */

bool hub_topic_valid(const char *name, size_t len)
{
    if (len < 1 || len > HUB_TOPIC_MAX) return false;
    unsigned char bad = 0;
    for (size_t i = 0; i < len; i++)
        bad |= (unsigned char)!topic_byte_ok[(unsigned char)name[i]];
    return !bad;
}

bool hub_pattern_valid(const char *name, size_t len)
{
    if (len >= 1 && name[len - 1] == '*') return len == 1 || hub_topic_valid(name, len - 1);
    return hub_topic_valid(name, len);
}

bool hub_event_valid(const char *event, size_t len)
{
    /* Every client sees the name as text: in JSON, in a WebSocket text
     * frame (where invalid UTF-8 fails the connection), as an SSE field. */
    if (len < 1 || len > HUB_EVENT_MAX || !utf8_valid(event, len)) return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)event[i];
        if (c < 0x20 || c == 0x7f) return false; /* C0 (CR, LF, NUL...) and DEL */
        if (c == 0xc2 && (unsigned char)event[i + 1] < 0xa0) return false; /* C1: U+0080..9F */
    }
    static const char reserved[] = ".base64";
    size_t rl = sizeof(reserved) - 1;
    return !(len >= rl && memcmp(event + len - rl, reserved, rl) == 0);
}

int hub_rules_set(hub_retention_rules *rs, const char *pattern, size_t len, bool prefix_match,
                  const hub_retention *r)
{
    for (size_t i = 0; i < rs->n; i++) {
        retention_rule *x = &rs->v[i];
        if (x->len == len && x->prefix == prefix_match && memcmp(x->pattern, pattern, len) == 0) {
            x->r = *r;
            return 0;
        }
    }
    char *copy = strndup(pattern, len);
    retention_rule *nr = copy ? realloc(rs->v, (rs->n + 1) * sizeof(*nr)) : NULL;
    if (!nr) {
        free(copy);
        return SL_ENOMEM;
    }
    rs->v = nr;
    rs->v[rs->n++] = (retention_rule){.pattern = copy, .len = len, .prefix = prefix_match, .r = *r};
    return 0;
}

void hub_rules_free(hub_retention_rules *rs)
{
    for (size_t i = 0; i < rs->n; i++)
        free(rs->v[i].pattern);
    free(rs->v);
    rs->v = NULL;
    rs->n = 0;
}

int hub_set_retention(hub *h, const char *pattern, size_t len, bool prefix_match,
                      const hub_retention *r)
{
    return hub_rules_set(&h->rules, pattern, len, prefix_match, r);
}

int hub_set_rules(hub *h, const hub_retention_rules *rs)
{
    hub_retention_rules copy = {0};
    for (size_t i = 0; i < rs->n; i++) {
        const retention_rule *x = &rs->v[i];
        if (hub_rules_set(&copy, x->pattern, x->len, x->prefix, &x->r) != 0) {
            hub_rules_free(&copy);
            return SL_ENOMEM;
        }
    }
    hub_rules_free(&h->rules);
    h->rules = copy;
    return 0;
}

int hub_rules_single(const hub_retention_rules *rs, hub_retention *out, char *err, size_t errlen)
{
    /* Topics no rule matches keep the default, unless a "*" rule covers
     * every name. */
    hub_retention one = {HUB_DEFAULT_BACKLOG, 0};
    const char *from = "the default (backlog 1000, no max_age)";
    for (size_t i = 0; i < rs->n; i++)
        if (rs->v[i].prefix && rs->v[i].len == 0) {
            one = rs->v[i].r;
            from = "'*'";
        }
    if (one.backlog == 0) one.backlog = HUB_DEFAULT_BACKLOG;
    for (size_t i = 0; i < rs->n; i++) {
        hub_retention r = rs->v[i].r;
        if (r.backlog == 0) r.backlog = HUB_DEFAULT_BACKLOG;
        if (r.backlog != one.backlog || r.max_age != one.max_age) {
            snprintf(err, errlen,
                     "cluster mode keeps one retention for every topic (JetStream's per-subject "
                     "limits): '%s%s' (backlog %u, max_age %g) differs from %s (backlog %u, "
                     "max_age %g); set it once with sluice.topic(\"*\", {...})",
                     rs->v[i].pattern, rs->v[i].prefix ? "*" : "", r.backlog, r.max_age, from,
                     one.backlog, one.max_age);
            return SL_EINVAL;
        }
    }
    *out = one;
    return 0;
}

static hub_retention retention_for(const hub *h, const char *name, size_t len)
{
    hub_retention best = {HUB_DEFAULT_BACKLOG, 0};
    size_t best_score = 0;
    for (size_t i = 0; i < h->rules.n; i++) {
        const retention_rule *x = &h->rules.v[i];
        bool match = x->prefix ? (len >= x->len && memcmp(name, x->pattern, x->len) == 0)
                               : (len == x->len && memcmp(name, x->pattern, len) == 0);
        /* Longest pattern wins; an exact name beats a prefix of equal length. */
        size_t score = 1 + x->len * 2 + (x->prefix ? 0 : 1);
        if (match && score > best_score) {
            best = x->r;
            best_score = score;
        }
    }
    if (best.backlog == 0) best.backlog = HUB_DEFAULT_BACKLOG;
    return best;
}

static hub_topic *topic_find(const hub *h, const char *name, size_t len, uint32_t hash)
{
    for (hub_topic *t = h->buckets[hash & (h->nbuckets - 1)]; t; t = t->next_in_bucket)
        if (t->hash == hash && t->name_len == len && memcmp(t->name, name, len) == 0) return t;
    return NULL;
}

static void grow_buckets(hub *h)
{
    uint32_t nb = h->nbuckets * 2;
    hub_topic **nbk = calloc(nb, sizeof(hub_topic *));
    if (!nbk) return; /* keep the longer chains */
    for (uint32_t i = 0; i < h->nbuckets; i++) {
        hub_topic *t = h->buckets[i];
        while (t) {
            hub_topic *next = t->next_in_bucket;
            t->next_in_bucket = nbk[t->hash & (nb - 1)];
            nbk[t->hash & (nb - 1)] = t;
            t = next;
        }
    }
    free(h->buckets);
    h->buckets = nbk;
    h->nbuckets = nb;
}

static hub_topic *topic_get(hub *h, const char *name, size_t len)
{
    if (!hub_topic_valid(name, len)) return NULL;
    uint32_t hash = hash_name(name, len);
    hub_topic *t = topic_find(h, name, len, hash);
    if (t) return t;
    t = calloc(1, sizeof(hub_topic) + len + 1);
    if (!t) return NULL;
    memcpy(t->name, name, len);
    t->name_len = len;
    t->hash = hash;
    if (h->stats.ntopics + 1 > h->nbuckets) grow_buckets(h);
    t->next_in_bucket = h->buckets[hash & (h->nbuckets - 1)];
    h->buckets[hash & (h->nbuckets - 1)] = t;
    COUNT(h->stats.ntopics, 1);
    return t;
}

static void topic_maybe_drop(hub *h, hub_topic *t)
{
    if (t->subs) return;
    hub_topic **pp = &h->buckets[t->hash & (h->nbuckets - 1)];
    while (*pp != t)
        pp = &(*pp)->next_in_bucket;
    *pp = t->next_in_bucket;
    COUNT(h->stats.ntopics, -1);
    topic_free(t);
}

/* ---- messages ----------------------------------------------------------- */

void hub_msg_ref(hub_msg *m)
{
    uint32_t was = __atomic_fetch_add(&m->refs, 1, __ATOMIC_RELAXED);
    SLUICE_ASSERT(was > 0); /* a reference to a freed message */
    (void)was;
}

void hub_msg_unref(hub_msg *m)
{
    if (!m) return;
    uint32_t was = __atomic_fetch_sub(&m->refs, 1, __ATOMIC_ACQ_REL);
    SLUICE_ASSERT(was > 0); /* one unref too many */
    if (was > 1) return;
    buf_unref(m->raw);
    buf_unref(m->json);
    buf_unref(m->sse);
    buf_unref(m->sse_topic);
    buf_unref(m->zraw);
    buf_unref(m->zjson);
    free(m->event);
    free(m->topic);
    free(m);
}

static uint8_t put_ws_header(buf_t *b, int opcode, size_t len);

/* A message with its data copied once into a buffer with frame headroom,
 * and `ninbox` inbox links (0 for a message that stays on one worker). */
static hub_msg *msg_new(const char *topic, size_t tlen, const char *event, size_t elen,
                        const void *data, size_t len, unsigned ninbox)
{
    hub_msg *m = calloc(1, sizeof(hub_msg) + ninbox * sizeof(hub_msg *));
    if (!m) return NULL;
    m->refs = 1;
    m->ninbox = (uint16_t)ninbox;
    m->raw = buf_new(HUB_HEADROOM + len);
    m->topic = strndup(topic, tlen);
    if (!m->raw || !m->topic || (event && elen && !(m->event = strndup(event, elen)))) {
        hub_msg_unref(m);
        return NULL;
    }
    m->topic_len = tlen;
    m->event_len = m->event ? elen : 0;
    if (len) memcpy(m->raw->data + HUB_HEADROOM, data, len);
    m->len = len;
    m->binary = !utf8_valid(m->raw->data + HUB_HEADROOM, len);
    /* The raw frame header is written now, before any worker shares it. */
    m->raw_hdr = put_ws_header(m->raw, m->binary ? WS_OP_BINARY : WS_OP_TEXT, len);
    return m;
}

hub_msg *hub_msg_derive(const hub_msg *m, const char *event, size_t elen, const void *data,
                        size_t len)
{
    hub_msg *d = msg_new(m->topic, m->topic_len, event, elen, data, len, 0);
    if (!d) return NULL;
    d->time_ms = m->time_ms;
    d->seq = m->seq;
    memcpy(d->id, m->id, sizeof(d->id));
    d->id_len = m->id_len;
    return d;
}

size_t hub_last_id(const hub *h, char out[HUB_ID_MAX])
{
    memcpy(out, h->last_id, h->last_id_len);
    out[h->last_id_len] = '\0';
    return h->last_id_len;
}

bool hub_id_parse(const hub *h, const char *id, size_t len, uint64_t *seq, bool *unverified)
{
    *unverified = false;
    if (!h->bus) return false;
    if (h->bus->cluster) {
        int rc = cluster_id_parse(h->bus->cluster, id, len, seq);
        *unverified = rc == CLUSTER_ID_AHEAD;
        if (rc >= 0) return true;
    } else if (store_id_parse(h->bus->store, id, len, seq) == 0) {
        return true;
    }
    /* "<epoch>-0" is "before everything" in any store (an empty store's
     * cursor): replay all retained, no gap unless retention removed some. */
    if (len >= 3 && id[len - 1] == '0' && id[len - 2] == '-') {
        for (size_t i = 0; i < len - 2; i++)
            if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'z'))) return false;
        *seq = 0;
        return true;
    }
    return false;
}

uint64_t hub_last_seq(const hub *h)
{
    return h->last_seq;
}

uint64_t hub_committed_seq(const hub *h)
{
    uint64_t committed = !h->bus           ? 0
                         : h->bus->cluster ? cluster_last_seq(h->bus->cluster)
                                           : store_last_seq(h->bus->store);
    return committed > h->last_seq ? committed : h->last_seq;
}

int hub_publish(hub *h, const char *topic, size_t tlen, const char *event, size_t elen,
                const void *data, size_t len, const void *origin, hub_publish_fn done, void *ud)
{
    return hub_publish_keyed(h, topic, tlen, event, elen, data, len, NULL, 0, 0, origin, done,
                             ud);
}

int hub_publish_keyed(hub *h, const char *topic, size_t tlen, const char *event, size_t elen,
                      const void *data, size_t len, const char *ikey, size_t iklen,
                      unsigned flags, const void *origin, hub_publish_fn done, void *ud)
{
    if (!hub_topic_valid(topic, tlen) || (event && elen && !hub_event_valid(event, elen)))
        return SL_EINVAL;
    if (ikey && (iklen < 1 || iklen > STORE_IKEY_MAX)) return SL_EINVAL;
    if (!h->bus) return SL_ESTOPPED;
    pending *p = calloc(1, sizeof(pending));
    hub_msg *m = p ? msg_new(topic, tlen, event, elen, data, len, h->bus->max_hubs) : NULL;
    if (!m) {
        free(p);
        return SL_ENOMEM;
    }
    hub_retention r = retention_for(h, topic, tlen);
    m->is_json = (flags & STORE_MSG_JSON) && !m->binary;
    m->origin = origin;
    m->home = h;
    m->pending = p;
    p->origin = h;
    p->msg = m;
    p->done = done;
    p->ud = ud;
    /* The writer reads the message's own buffers: no second copy. */
    p->req.topic = m->topic;
    p->req.topic_len = m->topic_len;
    p->req.event = m->event;
    p->req.event_len = m->event_len;
    p->req.data = m->raw->data + HUB_HEADROOM;
    p->req.data_len = len;
    p->req.max_count = r.backlog;
    p->req.max_age_ms = (uint64_t)(r.max_age * 1000);
    p->req.flags = m->is_json ? STORE_MSG_JSON : 0;
    if (ikey) {
        memcpy(p->ikey, ikey, iklen);
        p->req.ikey = p->ikey;
        p->req.ikey_len = iklen;
    }
    p->submitted = mono_now();
    int rc = h->bus->cluster ? cluster_publish(h->bus->cluster, m->topic, m->topic_len, m->event,
                                               m->event_len, p->req.data, len, ikey, iklen,
                                               p->req.flags, p)
                             : writer_submit(h->bus->writer, &p->req);
    if (rc != 0) {
        COUNT(h->stats.publish_failures, 1); /* refused before it was queued */
        static log_limit refused = LOG_LIMIT_INIT;
        LOG_KV_LIMITED(&refused, 1.0, LOG_WARN, "publish refused", LOG_S("reason", err_str(rc)),
                       LOG_SN("topic", topic, tlen));
        hub_msg_unref(m);
        free(p);
        return rc;
    }
    h->inflight++;
    h->uncommitted = !h->bus->cluster;
    return 0;
}

/* m's pending publish when this hub is its publisher's; only that hub was
 * given a failed publish, and only it reads m->pending (set before the
 * writer saw m). */
static pending *own_pending(hub *h, hub_msg *m)
{
    return m->home == h ? m->pending : NULL;
}

/* Bookkeeping for a committed message before anyone hears of it. */
static void note_committed(hub *h, hub_msg *m, pending *p)
{
    /* Cluster mode: a PubAck (ack_only) comes before the stream's copy,
     * which is what this worker delivers; newest delivered is the copy's
     * (a resume at or after last_seq waits for live messages, which would
     * drop that copy by seq). */
    if (m->seq > h->last_seq && !m->ack_only) {
        h->last_seq = m->seq;
        memcpy(h->last_id, m->id, m->id_len);
        h->last_id_len = m->id_len;
    }
    if (p) {
        COUNT(h->stats.published, 1);
        record_latency(&h->stats, mono_now() - p->submitted);
    }
}

static void unlink_sub(hub *h, hub_sub *s);

/* A delivery may unsubscribe anyone (itself, another subscriber of the
 * topic, a wildcard) or subscribe new ones: while `fanning`, unsubscribed
 * entries stay linked, marked dead, so `next` is always valid; they are
 * unlinked and freed when the outermost fan-out ends. */
static void fan_out(hub *h, hub_msg *m)
{
    hub_topic *t = topic_find(h, m->topic, m->topic_len, hash_name(m->topic, m->topic_len));
    h->fanning++;
    if (t) t->messages++;
    for (hub_sub *s = t ? t->subs : NULL; s; s = s->next)
        if (!s->dead) {
            t->deliveries++;
            s->deliver(s->owner, m);
        }
    for (hub_sub *s = h->prefix_subs; s; s = s->next)
        if (!s->dead && m->topic_len >= s->prefix_len &&
            memcmp(m->topic, s->prefix, s->prefix_len) == 0)
            s->deliver(s->owner, m);
    SLUICE_ASSERT(h->fanning > 0);
    if (--h->fanning == 0) {
        while (h->dead) {
            hub_sub *s = h->dead;
            h->dead = s->dead_next;
            unlink_sub(h, s);
        }
    }
}

/* One gap signal (m->gap) to one subscription, with `name` as its topic. */
static void gap_to(hub_sub *s, hub_msg *m, const char *name, size_t len)
{
    if (s->dead) return;
    hub_msg *g = msg_new(name, len, NULL, 0, "", 0, 0);
    if (!g) return;
    g->gap = true;
    g->seq = m->seq;
    s->deliver(s->owner, g);
    hub_msg_unref(g);
}

/* Cluster mode: retention deleted messages before this node's consumer had
 * them (m->gap).  Each subscription that follows the topic (its exact name
 * or a wildcard matching it) gets the signal once, with the topic's name;
 * for a gap of any topic (m->topic empty) every subscription of this hub
 * does, a wildcard with its pattern.  A gap runs no Lua: the tables stay
 * as they are, what a delivery unsubscribes is freed after. */
static void gap_out(hub *h, hub_msg *m)
{
    h->fanning++;
    if (m->topic_len) {
        hub_topic *t =
            topic_find(h, m->topic, m->topic_len, hash_name(m->topic, m->topic_len));
        for (hub_sub *s = t ? t->subs : NULL; s; s = s->next)
            gap_to(s, m, m->topic, m->topic_len);
        for (hub_sub *s = h->prefix_subs; s; s = s->next)
            if (m->topic_len >= s->prefix_len && memcmp(m->topic, s->prefix, s->prefix_len) == 0)
                gap_to(s, m, m->topic, m->topic_len);
    } else {
        for (uint32_t i = 0; i < h->nbuckets; i++)
            for (hub_topic *t = h->buckets[i]; t; t = t->next_in_bucket)
                for (hub_sub *s = t->subs; s; s = s->next)
                    gap_to(s, m, t->name, t->name_len);
        for (hub_sub *s = h->prefix_subs; s; s = s->next) {
            char pat[HUB_TOPIC_MAX + 2];
            memcpy(pat, s->prefix, s->prefix_len);
            pat[s->prefix_len] = '*';
            gap_to(s, m, pat, s->prefix_len + 1);
        }
    }
    if (--h->fanning == 0) {
        while (h->dead) {
            hub_sub *s = h->dead;
            h->dead = s->dead_next;
            unlink_sub(h, s);
        }
    }
}

/* Tell m's publisher how its publish ended; frees p. */
static void answer(hub *h, hub_msg *m, pending *p)
{
    int status = p->req.status;
    if (status != 0) COUNT(h->stats.publish_failures, 1);
    h->inflight--;
    if (p->done) p->done(p->ud, status == 0 ? m : NULL, status);
    free(p);
}

/* Whether m's local fan-out reaches a subscriber that ends with it. */
static bool reaches_oneshot(const hub *h, const hub_msg *m)
{
    if (h->oneshot_prefix_subs) return true;
    const hub_topic *t = topic_find(h, m->topic, m->topic_len, hash_name(m->topic, m->topic_len));
    return t && t->oneshot_subs;
}

void hub_poll(hub *h)
{
    if (!h->bus) return;
    hub_msg *first = inbox_take(h);
    /* Publishers are answered first, fan-outs follow.  The server writes
     * output first queued, first written, and a large fan-out over several
     * loop passes with input read in between (server.c, FLUSH_PER_PASS).
     * So an answer goes out after the output queued before it (the rest of
     * the publisher's last fan-out) and before its own fan-out: the
     * publisher's next message reaches the store while this fan-out is
     * written, a durable commit's flush overlaps the writes, and a message
     * that finds a subscriber's output still unwritten shares its write.
     *
     * Except a lone publish whose fan-out reaches long-polls: each poll
     * ends with it, and a next message published before the polls come
     * back would reach most of them only by a read of the store.  That one
     * is answered after its fan-out, which paces its publisher by it. */
    bool answer_first = h->inflight > 1;
    for (hub_msg *m = first; !answer_first && m; m = m->inbox_next[h->index])
        if (own_pending(h, m)) {
            answer_first = m->seq == 0 || m->duplicate || m->ack_only || !reaches_oneshot(h, m);
            break;
        }
    for (hub_msg *m = first; answer_first && m; m = m->inbox_next[h->index]) {
        pending *p = own_pending(h, m);
        if (!p) continue;
        if (m->seq != 0 && !m->duplicate) note_committed(h, m, p);
        answer(h, m, p);
        m->pending = NULL; /* freed by answer() */
    }
    for (hub_msg *m = first, *next; m; m = next) {
        next = m->inbox_next[h->index];
        if (m->page) {
            struct hub_replay_page *q = m->page;
            m->page = NULL; /* the page holds the carrier: let go of it first */
            hub_msg_unref(m);
            replay_done(h, q);
            continue;
        }
        pending *p = own_pending(h, m);
        /* A failed publish keeps seq 0 (stored IDs start at 1) and is in
         * no other hub's inbox: it gets no fan-out; nor does a duplicate,
         * whose first publish had it. */
        if (m->gap) {
            gap_out(h, m);
        } else if (m->seq != 0 && !m->duplicate) {
            note_committed(h, m, p);
            /* Cluster mode: the PubAck answers, the stream's consumer fans out. */
            if (!m->ack_only) fan_out(h, m);
        }
        if (p) answer(h, m, p);
        hub_msg_unref(m);
    }
}

void hub_commit_pending(hub *h)
{
    /* Answers resume Lua tasks, which may publish again: a few rounds
     * here, then the next loop pass. */
    for (int round = 0; round < 4 && h->uncommitted && h->bus; round++) {
        h->uncommitted = false;
        committing_hub = h;
        writer_commit_queued(h->bus->writer);
        committing_hub = NULL;
        hub_poll(h);
    }
    if (h->uncommitted && h->wake) h->wake(h->wake_ud);
}

const char *hub_sub_name(const hub_sub *s, size_t *len, bool *wildcard)
{
    *wildcard = !s->topic;
    *len = s->topic ? s->topic->name_len : s->prefix_len;
    return s->topic ? s->topic->name : s->prefix;
}

hub_sub *hub_subscribe(hub *h, const char *topic, size_t len, void *owner, hub_deliver_fn fn,
                       bool oneshot)
{
    if (len >= 1 && topic[len - 1] == '*') {
        if (!hub_pattern_valid(topic, len)) return NULL;
        hub_sub *s = calloc(1, sizeof(hub_sub));
        if (!s || !(s->prefix = strndup(topic, len - 1))) {
            free(s);
            return NULL;
        }
        s->prefix_len = len - 1;
        s->owner = owner;
        s->deliver = fn;
        s->oneshot = oneshot;
        h->oneshot_prefix_subs += oneshot;
        s->next = h->prefix_subs;
        if (h->prefix_subs) h->prefix_subs->prev = s;
        h->prefix_subs = s;
        COUNT(h->stats.subscribers, 1);
        return s;
    }
    hub_topic *t = topic_get(h, topic, len);
    if (!t) return NULL;
    hub_sub *s = calloc(1, sizeof(hub_sub));
    if (!s) {
        topic_maybe_drop(h, t);
        return NULL;
    }
    s->topic = t;
    s->owner = owner;
    s->deliver = fn;
    s->oneshot = oneshot;
    t->oneshot_subs += oneshot;
    s->next = t->subs;
    if (t->subs) t->subs->prev = s;
    t->subs = s;
    t->nsubs++;
    COUNT(h->stats.subscribers, 1);
    return s;
}

/* Takes s off its list, frees it and drops its topic if that was the last. */
static void unlink_sub(hub *h, hub_sub *s)
{
    if (!s->topic) {
        if (s->prev)
            s->prev->next = s->next;
        else
            h->prefix_subs = s->next;
        if (s->next) s->next->prev = s->prev;
        free(s->prefix);
        free(s);
        return;
    }
    hub_topic *t = s->topic;
    if (s->prev)
        s->prev->next = s->next;
    else
        t->subs = s->next;
    if (s->next) s->next->prev = s->prev;
    free(s);
    topic_maybe_drop(h, t);
}

void hub_unsubscribe(hub *h, hub_sub *s)
{
    if (!s) return;
    SLUICE_ASSERT(!s->dead);
    /* Counted out at once: a dead entry is no subscriber, even while a
     * fan-out keeps it linked. */
    if (s->topic) {
        s->topic->nsubs--;
        s->topic->oneshot_subs -= s->oneshot;
    } else {
        h->oneshot_prefix_subs -= s->oneshot;
    }
    COUNT(h->stats.subscribers, -1);
    s->dead = true;
    if (h->fanning) {
        s->dead_next = h->dead;
        h->dead = s;
        return;
    }
    unlink_sub(h, s);
}

/* ---- replay ------------------------------------------------------------- */

typedef struct replay_acc {
    const char *const *topics;
    const size_t *lens;
    hub_msg **msgs;
    size_t n, cap;
    size_t bytes, max_bytes;
    bool oom, full;
    bool check_json; /* cluster mode: a JSON mark is checked (collect) */
} replay_acc;

/* Inside the read transaction: copy each message out (the store's pointers
 * die with the transaction) and deliver after it ends. */
static int collect(void *ud, const struct store_view *v)
{
    replay_acc *a = ud;
    if (a->n == a->cap) {
        size_t ncap = a->cap ? a->cap * 2 : 64;
        hub_msg **nm = realloc(a->msgs, ncap * sizeof(hub_msg *));
        if (!nm) {
            a->oom = true;
            return 1;
        }
        a->msgs = nm;
        a->cap = ncap;
    }
    size_t i = v->topic_index;
    /* A name stored before names had to be UTF-8 without controls would
     * break the clients that resume past it: served without it. */
    bool bad_event = v->event && v->event_len && !hub_event_valid(v->event, v->event_len);
    if (bad_event) {
        static log_limit lim;
        LOG_KV_LIMITED(&lim, 10.0, LOG_WARN, "stored message with an invalid event name",
                       LOG_SN("topic", a->topics[i], a->lens[i]), LOG_I("seq", v->seq));
    }
    hub_msg *m = msg_new(a->topics[i], a->lens[i], bad_event ? NULL : v->event,
                         bad_event ? 0 : v->event_len, v->data, v->data_len, 0);
    if (!m) {
        a->oom = true;
        return 1;
    }
    m->seq = v->seq;
    m->time_ms = v->time_ms;
    /* A cluster's stream may hold what another program published with
     * the header: embedded only if it parses (the store's are checked). */
    m->is_json = (v->flags & STORE_MSG_JSON) && !m->binary &&
                 (!a->check_json || json_valid(v->data, v->data_len));
    m->id_len = (uint8_t)store_id_format(v->epoch, v->seq, m->id);
    a->msgs[a->n++] = m;
    a->bytes += v->data_len;
    if (a->max_bytes && a->bytes >= a->max_bytes) {
        a->full = true;
        return 1; /* a page's worth */
    }
    return 0;
}

typedef struct expand_acc {
    const char *prefix;
    size_t prefix_len;
    char **names;
    size_t *lens;
    int n, max;
} expand_acc;

/* Collects the stored topics a wildcard follows (the topics table is in
 * name order: stop after the prefix's run). */
static int expand_one(void *ud, const struct store_topic_info *t)
{
    expand_acc *a = ud;
    if (t->name_len < a->prefix_len || memcmp(t->name, a->prefix, a->prefix_len) != 0)
        return memcmp(t->name, a->prefix,
                      t->name_len < a->prefix_len ? t->name_len : a->prefix_len) > 0;
    if (a->n >= a->max) return 1;
    a->names[a->n] = strndup(t->name, t->name_len);
    if (!a->names[a->n]) return 1;
    a->lens[a->n++] = t->name_len;
    return 0;
}

/* One replay's reads and what they found: hub_replay's on the caller's
 * stack, hub_replay_async's on the heap (its reads on a thread of their
 * own, the delivery on the hub's). */
struct hub_replay_page {
    uint64_t after_seq;
    bool known;
    bool id_unknown; /* the read found the resume ID past the stream's end */
    size_t limit, max_bytes;
    char *names[HUB_REPLAY_MAX_TOPICS]; /* the topics read, wildcards expanded */
    size_t nlens[HUB_REPLAY_MAX_TOPICS];
    bool owned[HUB_REPLAY_MAX_TOPICS];
    bool gaps[HUB_REPLAY_MAX_TOPICS];
    struct store_read_info infos[HUB_REPLAY_MAX_TOPICS];
    int nn;
    long result;
    replay_acc acc;
    /* hub_replay_async only */
    hub *h;
    hub_bus *bus;
    unsigned index;       /* h's inbox link */
    hub_msg *carrier;     /* brings the page back through h's inbox */
    void *owner;
    hub_replay_done_fn done;
    char **in_topics;     /* copies of what was asked */
    size_t *in_lens;
    int in_n;
    hub_msg **live;       /* the owner's live messages meanwhile (hub_replay_live) */
    size_t nlive, live_cap;
    bool live_over;       /* more came than it keeps: another page reads them */
    struct hub_replay_page *next;  /* in h->pages */
    struct hub_replay_page *queued; /* in the bus's queue of pages waiting for a reader */
};

/* The reads: the topics (each wildcard expanded to the topics it
 * matches), then their messages after q->after_seq into q->acc. */
static void replay_gather(hub_bus *bus, struct hub_replay_page *q, const char *const *topics,
                          const size_t *lens, int n)
{
    /* A cluster read stops at its horizon, taken first: a topic a
     * wildcard misses was made after it, and comes live. */
    uint64_t upto = 0;
    if (bus && bus->cluster && cluster_horizon(bus->cluster, &upto) != 0) {
        q->nn = 0;
        q->result = SL_EIO;
        return;
    }
    int nn = 0;
    for (int i = 0; i < n && nn < HUB_REPLAY_MAX_TOPICS; i++) {
        if (lens[i] >= 1 && topics[i][lens[i] - 1] == '*') {
            if (!bus) continue;
            expand_acc a = {topics[i],     lens[i] - 1, q->names + nn,
                            q->nlens + nn, 0,           HUB_REPLAY_MAX_TOPICS - nn};
            if (bus->cluster)
                cluster_topics(bus->cluster, topics[i], lens[i] - 1, expand_one, &a);
            else
                store_topics(bus->store, expand_one, &a);
            for (int j = 0; j < a.n; j++)
                q->owned[nn + j] = true;
            nn += a.n;
        } else {
            q->names[nn] = (char *)topics[i];
            q->nlens[nn++] = lens[i];
        }
    }
    q->nn = nn;
    q->result = 0;
    q->acc = (replay_acc){.topics = (const char *const *)q->names,
                          .lens = q->nlens,
                          .max_bytes = q->max_bytes,
                          .check_json = bus && bus->cluster};
    if (bus && nn > 0) {
        struct store_topic_ref refs[HUB_REPLAY_MAX_TOPICS];
        for (int i = 0; i < nn; i++)
            refs[i] = (struct store_topic_ref){q->names[i], q->nlens[i]};
        int rc;
        for (;;) {
            for (int i = 0; i < nn; i++)
                q->gaps[i] = !q->known;
            uint64_t after = q->known ? q->after_seq : 0;
            rc = bus->cluster ? cluster_read(bus->cluster, refs, (size_t)nn, after, upto, q->limit,
                                             collect, &q->acc, q->infos)
                              : store_read_multi(bus->store, refs, (size_t)nn, after, q->limit,
                                                 collect, &q->acc, q->infos);
            /* A cluster ID past the stream's end (cluster_id_parse could
             * not tell on the loop): unknown, read from the start. */
            if (rc != SL_EUNKNOWN || !q->known) break;
            q->known = false;
            q->id_unknown = true;
        }
        if (rc != 0 || q->acc.oom) q->result = rc != 0 ? rc : SL_ENOMEM;
        for (int i = 0; i < nn && q->result == 0; i++) {
            if (q->known && q->infos[i].gap) q->gaps[i] = true;
            /* A cluster read brings a bounded part of each topic. */
            if (bus->cluster && q->infos[i].more) q->acc.full = true;
        }
    }
}

/* The page's gaps and messages to their owner, as hub_replay tells. */
static long replay_deliver(struct hub_replay_page *q, hub_deliver_fn fn,
                           void (*on_gap)(void *owner, const char *topic, size_t len), void *owner,
                           bool *more)
{
    *more = q->result == 0 && (q->acc.full || (q->limit && q->acc.n >= q->limit));
    if (q->result == 0 && on_gap)
        for (int i = 0; i < q->nn; i++)
            if (q->gaps[i]) on_gap(owner, q->names[i], q->nlens[i]);
    size_t n = q->acc.n;
    for (size_t i = 0; i < n; i++) {
        if (q->result == 0) fn(owner, q->acc.msgs[i]);
        hub_msg_unref(q->acc.msgs[i]);
    }
    free(q->acc.msgs);
    q->acc.msgs = NULL;
    q->acc.n = 0;
    return q->result == 0 ? (long)n : q->result;
}

static void replay_names_free(struct hub_replay_page *q)
{
    for (int i = 0; i < q->nn; i++)
        if (q->owned[i]) free(q->names[i]);
    q->nn = 0;
}

long hub_replay(hub *h, const char *const *topics, const size_t *lens, int n, uint64_t after_seq,
                bool known, size_t limit, size_t max_bytes, hub_deliver_fn fn,
                void (*on_gap)(void *owner, const char *topic, size_t len), void *owner, bool *more)
{
    struct hub_replay_page q = {
        .after_seq = after_seq, .known = known, .limit = limit, .max_bytes = max_bytes};
    replay_gather(h->bus, &q, topics, lens, n);
    long r = replay_deliver(&q, fn, on_gap, owner, more);
    replay_names_free(&q);
    return r;
}

/* ---- replay off the loop (cluster mode) ------------------------------------ */

#define HUB_REPLAY_THREADS 64       /* reader threads at once, per process */
#define HUB_REPLAY_PAGES_MAX 16384  /* pages read or waiting for a reader, per process */
#define HUB_REPLAY_LIVE_MAX 4096 /* live messages a page in flight keeps for its owner */
#define HUB_REPLAY_IDLE_MS 2000  /* how long a reader with nothing to read waits for a page */

void hub_bus_limit_replays(hub_bus *b, size_t max_pages)
{
    /* 0 stays 0: hub_replay_async takes the default then. */
    b->max_replays = (unsigned)(max_pages < (1u << 20) ? max_pages : (1u << 20));
}

static void page_free(struct hub_replay_page *q)
{
    replay_names_free(q);
    for (size_t i = 0; i < q->acc.n; i++)
        hub_msg_unref(q->acc.msgs[i]);
    free(q->acc.msgs);
    for (size_t i = 0; i < q->nlive; i++)
        hub_msg_unref(q->live[i]);
    free(q->live);
    for (int i = 0; i < q->in_n; i++)
        free(q->in_topics ? q->in_topics[i] : NULL);
    free(q->in_topics);
    free(q->in_lens);
    hub_msg_unref(q->carrier);
    free(q);
}

/* The oldest page waiting for a reader, or NULL (under replay_lock). */
static struct hub_replay_page *replay_pop(hub_bus *b)
{
    struct hub_replay_page *q = b->replay_head;
    if (q && !(b->replay_head = q->queued)) b->replay_tail = NULL;
    return q;
}

/* A reader: its page, then those that wait; with none, it waits
 * HUB_REPLAY_IDLE_MS for one before it ends.  (A thread made for each
 * page was most of the CPU of a caught-up short poll in cluster mode.) */
static void *replay_thread(void *arg)
{
    struct hub_replay_page *q = arg;
    hub_bus *b = q->bus;
    while (q) {
        if (__atomic_load_n(&b->closing, __ATOMIC_ACQUIRE))
            q->result = SL_ESTOPPED; /* the process stops: not read */
        else
            replay_gather(b, q, (const char *const *)q->in_topics, q->in_lens, q->in_n);
        pthread_mutex_lock(&b->lock);
        bool home = b->hubs[q->index] == q->h;
        if (home) inbox_push(q->h, q->carrier); /* hub_poll hands it to replay_done */
        pthread_mutex_unlock(&b->lock);
        if (!home) page_free(q); /* the worker has ended: no one to tell */
        __atomic_sub_fetch(&b->replays, 1, __ATOMIC_RELEASE);
        pthread_mutex_lock(&b->replay_lock);
        q = replay_pop(b);
        if (!q && !__atomic_load_n(&b->closing, __ATOMIC_ACQUIRE)) {
            struct timespec ts = deadline_in_ms(HUB_REPLAY_IDLE_MS);
            b->replay_idle++;
            int rc = 0;
            while (!(q = replay_pop(b)) && rc != ETIMEDOUT &&
                   !__atomic_load_n(&b->closing, __ATOMIC_ACQUIRE))
                rc = pthread_cond_timedwait(&b->replay_cond, &b->replay_lock, &ts);
            b->replay_idle--;
        }
        if (!q) b->replay_threads--;
        pthread_mutex_unlock(&b->replay_lock);
    }
    /* Last: once every reader has ended, hub_bus_close may free b. */
    __atomic_sub_fetch(&b->replay_alive, 1, __ATOMIC_RELEASE);
    return NULL;
}

int hub_replay_async(hub *h, const char *const *topics, const size_t *lens, int n,
                     uint64_t after_seq, bool known, size_t limit, size_t max_bytes,
                     hub_replay_done_fn done, void *owner)
{
    hub_bus *b = h->bus;
    if (!b || !b->cluster) return SL_EINVAL;
    unsigned max = b->max_replays ? b->max_replays : HUB_REPLAY_PAGES_MAX;
    if (__atomic_add_fetch(&b->replays, 1, __ATOMIC_ACQ_REL) > max) {
        __atomic_sub_fetch(&b->replays, 1, __ATOMIC_RELEASE);
        __atomic_add_fetch(&b->replays_refused, 1, __ATOMIC_RELAXED);
        static log_limit lim = LOG_LIMIT_INIT;
        LOG_KV_LIMITED(&lim, 10.0, LOG_WARN,
                       "cluster: too many resumes waiting for a read of the stream: refused "
                       "(limits.max_waiting_resumes)",
                       LOG_I("waiting", max));
        return SL_ELIMIT;
    }
    struct hub_replay_page *q = calloc(1, sizeof(*q));
    if (q) {
        q->after_seq = after_seq;
        q->known = known;
        q->limit = limit;
        q->max_bytes = max_bytes;
        q->h = h;
        q->bus = b;
        q->index = h->index;
        q->owner = owner;
        q->done = done;
        q->carrier = msg_new("", 0, NULL, 0, "", 0, b->max_hubs);
        q->in_topics = calloc((size_t)(n > 0 ? n : 1), sizeof(char *));
        q->in_lens = calloc((size_t)(n > 0 ? n : 1), sizeof(size_t));
    }
    bool ok = q && q->carrier && q->in_topics && q->in_lens;
    for (int i = 0; ok && i < n; i++) {
        ok = (q->in_topics[i] = strndup(topics[i], lens[i])) != NULL;
        q->in_lens[i] = lens[i];
        q->in_n = i + 1;
    }
    bool start = false;
    if (ok) {
        q->carrier->page = q;
        /* A reader of its own, or the queue: a reader takes it when done. */
        pthread_mutex_lock(&b->replay_lock);
        start = b->replay_idle == 0 && b->replay_threads < HUB_REPLAY_THREADS;
        if (start) {
            b->replay_threads++;
            __atomic_add_fetch(&b->replay_alive, 1, __ATOMIC_RELAXED);
        } else {
            if (b->replay_tail)
                b->replay_tail->queued = q;
            else
                b->replay_head = q;
            b->replay_tail = q;
            if (b->replay_idle) pthread_cond_signal(&b->replay_cond);
        }
        pthread_mutex_unlock(&b->replay_lock);
    }
    pthread_t t;
    pthread_attr_t attr;
    if (start) {
        ok = pthread_attr_init(&attr) == 0;
        if (ok) {
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            ok = pthread_create(&t, &attr, replay_thread, q) == 0;
            pthread_attr_destroy(&attr);
        }
        if (!ok) {
            pthread_mutex_lock(&b->replay_lock);
            b->replay_threads--;
            pthread_mutex_unlock(&b->replay_lock);
            __atomic_sub_fetch(&b->replay_alive, 1, __ATOMIC_RELEASE);
        }
    }
    if (!ok) {
        if (q) page_free(q);
        __atomic_sub_fetch(&b->replays, 1, __ATOMIC_RELEASE);
        return SL_ENOMEM;
    }
    q->next = h->pages; /* read by this thread only; the reader thread never looks */
    h->pages = q;
    h->npages++;
    return 0;
}

int hub_replay_async_next(hub *h, hub_replay_page *page, uint64_t after_seq,
                          hub_replay_done_fn done, void *owner)
{
    return hub_replay_async(h, (const char *const *)page->in_topics, page->in_lens, page->in_n,
                            after_seq, true, page->limit, page->max_bytes, done, owner);
}

bool hub_replay_live(hub *h, void *owner, hub_msg *m)
{
    struct hub_replay_page *q = h->pages;
    while (q && q->owner != owner)
        q = q->next;
    if (!q || !m) return q != NULL;
    if (q->nlive == q->live_cap && !q->live_over) {
        size_t cap = q->live_cap ? 2 * q->live_cap : 16;
        hub_msg **nl = cap <= HUB_REPLAY_LIVE_MAX ? realloc(q->live, cap * sizeof(hub_msg *)) : NULL;
        if (nl) {
            q->live = nl;
            q->live_cap = cap;
        } else {
            q->live_over = true;
        }
    }
    if (q->live_over) return true;
    hub_msg_ref(m);
    q->live[q->nlive++] = m;
    return true;
}

bool hub_replay_page_id_unknown(const hub_replay_page *page)
{
    return page->id_unknown;
}

long hub_replay_page_deliver(struct hub_replay_page *q, hub_deliver_fn fn,
                             void (*on_gap)(void *owner, const char *topic, size_t len),
                             void *owner, bool *more)
{
    long r = replay_deliver(q, fn, on_gap, owner, more);
    if (r >= 0 && !*more) {
        /* The last page: what was published while it was read follows
         * it (the owner drops what the page had, by seq); unless more came
         * than was kept, which one more page reads. */
        if (q->live_over)
            *more = true;
        else
            for (size_t i = 0; i < q->nlive; i++)
                fn(owner, q->live[i]);
    }
    return r;
}

/* hub_poll: a page read off the loop is back. */
static void replay_done(hub *h, struct hub_replay_page *q)
{
    for (struct hub_replay_page **pp = &h->pages; *pp; pp = &(*pp)->next)
        if (*pp == q) {
            *pp = q->next;
            h->npages--;
            break;
        }
    q->done(q->owner, q);
    page_free(q);
}

/* ---- wire forms ----------------------------------------------------------- */

/* Writes a frame header for `len` payload bytes just before data at
 * HUB_HEADROOM; returns the header length. */
static uint8_t put_ws_header(buf_t *b, int opcode, size_t len)
{
    uint8_t hdr[WS_MAX_HEADER];
    size_t n = ws_frame_header(hdr, opcode, true, len);
    memcpy(b->data + HUB_HEADROOM - n, hdr, n);
    return (uint8_t)n;
}

/* A wire form is built once although several workers may want it at the
 * same moment: the first to move its state from FORM_NONE to FORM_BUILDING
 * builds it; the others wait (a few microseconds) and read it once
 * FORM_READY is published with release order.  A build that fails (no
 * memory) puts FORM_NONE back, so a later caller tries again. */
enum { FORM_NONE, FORM_BUILDING, FORM_READY };

/* True when the caller must build the form; false once it is ready. */
static bool form_claim(uint8_t *state)
{
    for (;;) {
        uint8_t st = __atomic_load_n(state, __ATOMIC_ACQUIRE);
        if (st == FORM_READY) return false;
        if (st == FORM_NONE) {
            uint8_t expected = FORM_NONE;
            if (__atomic_compare_exchange_n(state, &expected, FORM_BUILDING, false,
                                            __ATOMIC_ACQUIRE, __ATOMIC_ACQUIRE))
                return true;
            continue;
        }
        sched_yield();
    }
}

static void form_done(uint8_t *state, bool ok)
{
    __atomic_store_n(state, ok ? FORM_READY : FORM_NONE, __ATOMIC_RELEASE);
}

/* The form whose state is *state, built by build(m) unless it is ready:
 * 0, or SL_ENOMEM when building it failed. */
static int form_get(hub_msg *m, uint8_t *state, bool (*build)(hub_msg *))
{
    if (form_claim(state)) {
        bool ok = build(m);
        form_done(state, ok);
        if (!ok) return SL_ENOMEM;
    }
    return 0;
}

/* The message as a struct json_msg; embed: a JSON message's value itself
 * in "data" (else its text as a string). */
static struct json_msg json_msg_of(const hub_msg *m, bool embed)
{
    return (struct json_msg){
        .id = m->id,
        .id_len = m->id_len,
        .topic = m->topic,
        .topic_len = m->topic_len,
        .event = m->event,
        .event_len = m->event_len,
        .data = m->raw->data + HUB_HEADROOM,
        .data_len = m->len,
        .flags = JSON_MSG_TOPIC | (m->binary              ? JSON_MSG_BASE64
                                   : m->is_json && embed ? JSON_MSG_RAW
                                                         : 0),
    };
}

/* Builds the JSON object, with its WebSocket text frame header in the
 * headroom. */
static bool build_json(hub_msg *m)
{
    struct json_msg jm = json_msg_of(m, true);
    size_t n = json_msg_size(&jm);
    buf_t *jb = buf_new(HUB_HEADROOM + n);
    if (!jb) return false;
    if (json_msg_encode(jb->data + HUB_HEADROOM, n, &jm) != (ssize_t)n) {
        buf_unref(jb);
        return false;
    }
    m->json = jb;
    m->json_len = n;
    m->json_hdr = put_ws_header(jb, WS_OP_TEXT, n);
    return true;
}

int hub_msg_json(hub_msg *m, buf_t **b, size_t *off, size_t *len)
{
    if (form_get(m, &m->json_state, build_json) < 0) return SL_ENOMEM;
    *b = m->json;
    *off = HUB_HEADROOM;
    *len = m->json_len;
    return 0;
}

buf_t *hub_msg_json_string(const hub_msg *m)
{
    struct json_msg jm = json_msg_of(m, false);
    size_t n = json_msg_size(&jm);
    buf_t *b = buf_new(n);
    if (b && json_msg_encode(b->data, n, &jm) != (ssize_t)n) {
        buf_unref(b);
        return NULL;
    }
    return b;
}

int hub_msg_ws(hub_msg *m, bool json, buf_t **b, size_t *off, size_t *len)
{
    if (json) {
        if (hub_msg_json(m, b, off, len) < 0) return SL_ENOMEM;
        *off = HUB_HEADROOM - m->json_hdr;
        *len = m->json_hdr + m->json_len;
        return 0;
    }
    *b = m->raw;
    *off = HUB_HEADROOM - m->raw_hdr;
    *len = m->raw_hdr + m->len;
    return 0;
}

static hub_deflate_stats deflate_counts; /* atomics: any worker builds */

void hub_deflate_get_stats(hub_deflate_stats *st)
{
    st->forms = __atomic_load_n(&deflate_counts.forms, __ATOMIC_RELAXED);
    st->bytes_in = __atomic_load_n(&deflate_counts.bytes_in, __ATOMIC_RELAXED);
    st->bytes_out = __atomic_load_n(&deflate_counts.bytes_out, __ATOMIC_RELAXED);
    st->incompressible = __atomic_load_n(&deflate_counts.incompressible, __ATOMIC_RELAXED);
}

/* Compresses a form's payload into a new buffer with a frame header (RSV1
 * set) in its headroom.  *out stays NULL when compressing saved nothing.
 * False when memory is short. */
static bool build_deflated(const uint8_t *data, size_t len, bool binary, buf_t **out,
                           uint32_t *zlen, uint8_t *hdr)
{
    *out = NULL;
    buf_t *zb = buf_new(HUB_HEADROOM + wsz_deflate_bound(len));
    if (!zb) return false;
    long n = wsz_deflate(data, len, (uint8_t *)zb->data + HUB_HEADROOM, zb->len - HUB_HEADROOM);
    if (n < 0) {
        buf_unref(zb);
        return false;
    }
    __atomic_add_fetch(&deflate_counts.forms, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&deflate_counts.bytes_in, len, __ATOMIC_RELAXED);
    if ((size_t)n >= len) {
        __atomic_add_fetch(&deflate_counts.incompressible, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&deflate_counts.bytes_out, len, __ATOMIC_RELAXED);
        buf_unref(zb);
        return true;
    }
    __atomic_add_fetch(&deflate_counts.bytes_out, (unsigned long long)n, __ATOMIC_RELAXED);
    *hdr = put_ws_header(zb, (binary ? WS_OP_BINARY : WS_OP_TEXT) | WS_FRAME_COMPRESSED, (size_t)n);
    *zlen = (uint32_t)n;
    *out = zb;
    return true;
}

int hub_msg_ws_deflated(hub_msg *m, bool json, buf_t **b, size_t *off, size_t *len)
{
    if (json) {
        buf_t *jb;
        size_t joff, jlen;
        if (hub_msg_json(m, &jb, &joff, &jlen) < 0) return -1;
        if (form_claim(&m->zjson_state)) {
            bool ok = build_deflated((const uint8_t *)jb->data + joff, jlen, false, &m->zjson,
                                     &m->zjson_len, &m->zjson_hdr);
            form_done(&m->zjson_state, ok);
            if (!ok) return -1;
        }
        if (!m->zjson) return 1;
        *b = m->zjson;
        *off = HUB_HEADROOM - m->zjson_hdr;
        *len = m->zjson_hdr + (size_t)m->zjson_len;
        return 0;
    }
    if (form_claim(&m->zraw_state)) {
        bool ok = build_deflated((const uint8_t *)m->raw->data + HUB_HEADROOM, m->len, m->binary,
                                 &m->zraw, &m->zraw_len, &m->zraw_hdr);
        form_done(&m->zraw_state, ok);
        if (!ok) return -1;
    }
    if (!m->zraw) return 1;
    *b = m->zraw;
    *off = HUB_HEADROOM - m->zraw_hdr;
    *len = m->zraw_hdr + (size_t)m->zraw_len;
    return 0;
}

static bool build_sse(hub_msg *m)
{
    const char *data = m->raw->data + HUB_HEADROOM;
    size_t dlen = m->len;
    char *tmp = NULL;
    char evbuf[HUB_EVENT_MAX + 16];
    const char *ev = m->event;
    size_t evlen = m->event_len;
    if (m->binary) {
        /* Binary data goes base64, flagged by the event name suffix. */
        dlen = b64_encoded_size(m->len);
        tmp = malloc(dlen ? dlen : 1);
        if (!tmp) return false;
        b64_encode(tmp, dlen, data, m->len);
        data = tmp;
        evlen = (size_t)snprintf(evbuf, sizeof(evbuf), "%.*s.base64", (int)(ev ? evlen : 7),
                                 ev ? ev : "message");
        ev = evbuf;
    }
    ssize_t n = sse_event_size(m->id, m->id_len, ev, evlen, data, dlen);
    buf_t *sb = n > 0 ? buf_new((size_t)n) : NULL;
    if (!sb || sse_event_encode(sb->data, (size_t)n, m->id, m->id_len, ev, evlen, data, dlen) != n) {
        buf_unref(sb);
        free(tmp);
        return false;
    }
    free(tmp);
    m->sse = sb;
    return true;
}

int hub_msg_sse(hub_msg *m, buf_t **b)
{
    if (form_get(m, &m->sse_state, build_sse) < 0) return SL_ENOMEM;
    *b = m->sse;
    return 0;
}

static bool build_sse_topic(hub_msg *m)
{
    buf_t *jb;
    size_t off, jlen;
    if (hub_msg_json(m, &jb, &off, &jlen) < 0) return false;
    const char *ev = m->event;
    size_t evlen = m->event_len;
    ssize_t n = sse_event_size(m->id, m->id_len, ev, evlen, jb->data + off, jlen);
    buf_t *sb = n > 0 ? buf_new((size_t)n) : NULL;
    if (!sb || sse_event_encode(sb->data, (size_t)n, m->id, m->id_len, ev, evlen, jb->data + off,
                                jlen) != n) {
        buf_unref(sb);
        return false;
    }
    m->sse_topic = sb;
    return true;
}

int hub_msg_sse_topic(hub_msg *m, buf_t **b)
{
    if (form_get(m, &m->sse_topic_state, build_sse_topic) < 0) return SL_ENOMEM;
    *b = m->sse_topic;
    return 0;
}

/* Adds one hub's counters to st. */
static void add_counters(hub_stats *st, const hub_counters *c)
{
    st->published += READ(c->published);
    st->delivered += READ(c->delivered);
    st->subscribers += READ(c->subscribers);
    st->publish_failures += READ(c->publish_failures);
    st->topics += READ(c->ntopics);
    for (int i = 0; i <= HUB_LATENCY_BUCKETS; i++)
        st->latency_buckets[i] += READ(c->latency_buckets[i]);
    st->latency_sum += (double)READ(c->latency_ns) / 1e9;
    for (int i = 0; i <= HUB_FLUSH_BUCKETS; i++)
        st->flush_buckets[i] += READ(c->flush_buckets[i]);
    st->flush_sum += (double)READ(c->flush_ms) / 1e3;
}

void hub_get_stats(const hub *h, hub_stats *st)
{
    memset(st, 0, sizeof(*st));
    hub_bus *b = h->bus;
    if (b) {
        pthread_mutex_lock(&b->lock);
        for (unsigned i = 0; i < b->max_hubs; i++)
            if (b->hubs[i]) add_counters(st, &b->hubs[i]->stats);
        pthread_mutex_unlock(&b->lock);
    } else {
        add_counters(st, &h->stats);
    }
    for (int i = 1; i <= HUB_LATENCY_BUCKETS; i++) /* cumulative */
        st->latency_buckets[i] += st->latency_buckets[i - 1];
    for (int i = 1; i <= HUB_FLUSH_BUCKETS; i++)
        st->flush_buckets[i] += st->flush_buckets[i - 1];
    struct store_stats ss;
    if (b && store_stats(b->store, &ss) == 0) {
        st->store_file_bytes = ss.file_bytes;
        st->store_messages = ss.messages;
        st->store_log_messages = ss.log_messages;
        st->checkpoints = ss.checkpoints;
        st->checkpoint_failures = ss.checkpoint_failures;
        st->store_damaged = ss.damaged;
        st->publish_duplicates = ss.duplicates;
    }
    struct writer_stats ws;
    if (b) {
        writer_stats(b->writer, &ws);
        st->commits = ws.batches;
        for (int i = 0; i <= WRITER_COMMIT_BUCKETS; i++) /* cumulative */
            st->commit_buckets[i] = ws.commit_buckets[i] + (i ? st->commit_buckets[i - 1] : 0);
        st->commit_sum = (double)ws.commit_ns / 1e9;
    }
    if (b && b->cluster) {
        struct cluster_stats cs;
        cluster_get_stats(b->cluster, &cs);
        st->cluster = true;
        st->cluster_connected = cs.connected;
        st->cluster_reconnects = cs.reconnects;
        st->cluster_inflight = cs.inflight;
        st->cluster_publish_failures = cs.publish_failures;
        st->cluster_refetched = cs.refetched;
        st->cluster_repeats = cs.repeats;
        st->cluster_gaps = cs.gaps;
        st->cluster_diverged = cs.diverged;
        st->cluster_renewals = cs.renewals;
        st->cluster_read_retries = cs.read_retries;
        st->cluster_read_failures = cs.read_failures;
        st->cluster_read_gets = cs.read_gets;
        st->cluster_read_consumers = cs.read_consumers;
        st->cluster_resumes_refused = __atomic_load_n(&b->replays_refused, __ATOMIC_RELAXED);
    }
}

const double hub_flush_bounds[HUB_FLUSH_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                    0.1,   0.25,   0.5,   1,    2.5,   5};

void hub_count_flush(hub *h, double seconds)
{
    int i = 0;
    while (i < HUB_FLUSH_BUCKETS && seconds > hub_flush_bounds[i])
        i++;
    COUNT(h->stats.flush_buckets[i], 1);
    COUNT(h->stats.flush_ms, (uint64_t)(seconds * 1e3 + 0.5));
}

void hub_count_delivery(hub *h)
{
    COUNT(h->stats.delivered, 1);
}

void hub_each_topic(const hub *h, int (*fn)(void *ud, const hub_topic_info *t), void *ud)
{
    for (uint32_t i = 0; i < h->nbuckets; i++)
        for (const hub_topic *t = h->buckets[i]; t; t = t->next_in_bucket) {
            hub_topic_info ti = {t->name, t->name_len, t->nsubs, t->messages, t->deliveries};
            if (fn(ud, &ti)) return;
        }
}

void hub_get_own_stats(const hub *h, hub_stats *st)
{
    memset(st, 0, sizeof(*st));
    add_counters(st, &h->stats);
    for (int i = 1; i <= HUB_LATENCY_BUCKETS; i++) /* cumulative */
        st->latency_buckets[i] += st->latency_buckets[i - 1];
}
