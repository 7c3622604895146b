/* shared.c: the process-wide tables behind sluice.presence,
 * sluice.subscribers and sluice.limit (the face, with the why: shared.h).
 * Two tables, each a chained hash under its own mutex; what a script gets
 * is copied out under the lock and pushed after it, so that no Lua error
 * (memory) can leave a lock held. */
#include "lua/shared.h"
#include "lua/internal.h"

#include "core/defs.h"
#include "core/err.h"
#include "core/jsonenc.h"
#include "core/log.h"
#include "core/utf8.h"
#include "storage/cluster.h"

#include <lauxlib.h>
#include <lua-cjson.h>
#include <math.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define READ(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define BUMP(x) __atomic_add_fetch(&(x), 1, __ATOMIC_RELAXED)

/* ---- topics: subscriptions and members --------------------------------- */

typedef struct member {
    struct member *next;
    uint32_t conns; /* subscriptions of this id on the topic */
    size_t id_len, info_len;
    char *info; /* JSON, after the id in the same allocation */
    char id[];
} member;

typedef struct topic {
    struct topic *next; /* hash chain */
    uint32_t subs;      /* subscriptions that count here */
    uint32_t nmembers;
    member *members;
    size_t len;
    char name[];
} topic;

struct lxs_sub {
    int n;
    struct {
        topic *t;
        member *m; /* NULL: not a member there */
    } e[];
};

#define TOPIC_CHAINS 4096
static pthread_mutex_t topics_lock = PTHREAD_MUTEX_INITIALIZER;
static topic *chains[TOPIC_CHAINS];
static unsigned long long members_now, members_refused; /* under topics_lock / atomic */
static unsigned long long events_dropped;               /* atomic */
static uint64_t topics_gen; /* bumped by every change (under topics_lock): notes_main sends */

void lxs_count_event_dropped(void)
{
    BUMP(events_dropped);
}

static uint32_t hash(const char *s, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

static topic **topic_slot(const char *name, size_t len)
{
    topic **p = &chains[hash(name, len) % TOPIC_CHAINS];
    while (*p && !((*p)->len == len && memcmp((*p)->name, name, len) == 0))
        p = &(*p)->next;
    return p;
}

static void topic_drop_if_unused(topic *t)
{
    if (t->subs || t->members) return;
    topic **p = topic_slot(t->name, t->len);
    *p = t->next;
    free(t);
}

/* A pending join or leave event, made under the lock, sent after it. */
typedef struct event {
    struct event *next;
    bool join;
    size_t tlen, len;
    char *json; /* after the topic name */
    char topic[];
} event;

static event *event_new(const topic *t, const member *m, bool join)
{
    size_t tl = json_string_size(t->name, t->len), il = json_string_size(m->id, m->id_len);
    size_t len = sizeof("{\"topic\":,\"id\":,\"info\":}") - 1 + tl + il + m->info_len;
    event *e = malloc(sizeof(event) + t->len + 1 + len);
    if (!e) return NULL;
    e->join = join;
    e->tlen = t->len;
    e->len = len;
    memcpy(e->topic, t->name, t->len);
    e->topic[t->len] = '\0';
    char *p = e->json = e->topic + t->len + 1;
    p = mempcpy(p, STRLIT("{\"topic\":"));
    p += json_string_encode(p, tl, t->name, t->len);
    p = mempcpy(p, STRLIT(",\"id\":"));
    p += json_string_encode(p, il, m->id, m->id_len);
    p = mempcpy(p, STRLIT(",\"info\":"));
    p = mempcpy(p, m->info, m->info_len);
    *p = '}';
    return e;
}

static void events_send(event *list, lxs_event_fn fn, void *ud)
{
    while (list) {
        event *next = list->next;
        if (fn) fn(ud, list->topic, list->tlen, list->join, list->json, list->len);
        free(list);
        list = next;
    }
}

static bool exact_name(const char *name, size_t len)
{
    return len > 0 && name[len - 1] != '*';
}

lxs_sub *lxs_join(const char *const *names, const size_t *lens, int n, const char *id, size_t idlen,
                  const char *info, size_t infolen, lxs_event_fn fn, void *ud)
{
    lxs_sub *s = calloc(1, sizeof(lxs_sub) + (size_t)n * sizeof(s->e[0]));
    if (!s) return NULL;
    event *events = NULL;
    pthread_mutex_lock(&topics_lock);
    for (int i = 0; i < n; i++) {
        topic **p = topic_slot(names[i], lens[i]);
        topic *t = *p;
        if (!t) {
            t = calloc(1, sizeof(topic) + lens[i] + 1);
            if (!t) break; /* the rest is not counted: s->n says how far */
            memcpy(t->name, names[i], lens[i]);
            t->len = lens[i];
            *p = t;
        }
        t->subs++;
        topics_gen++;
        s->e[i].t = t;
        s->n = i + 1;
        if (!id || !exact_name(names[i], lens[i])) continue;
        member *m = t->members;
        while (m && !(m->id_len == idlen && memcmp(m->id, id, idlen) == 0))
            m = m->next;
        if (!m) {
            if (t->nmembers >= LXS_MAX_MEMBERS) {
                BUMP(members_refused);
                continue;
            }
            m = malloc(sizeof(member) + idlen + infolen);
            if (!m) continue;
            memcpy(m->id, id, idlen);
            m->id_len = idlen;
            m->info = m->id + idlen;
            memcpy(m->info, info, infolen);
            m->info_len = infolen;
            m->conns = 0;
            m->next = t->members;
            t->members = m;
            t->nmembers++;
            members_now++;
            event *e = event_new(t, m, true);
            if (e) {
                e->next = events;
                events = e;
            }
        }
        m->conns++;
        s->e[i].m = m;
    }
    pthread_mutex_unlock(&topics_lock);
    events_send(events, fn, ud);
    return s;
}

void lxs_leave(lxs_sub *s, lxs_event_fn fn, void *ud)
{
    if (!s) return;
    event *events = NULL;
    pthread_mutex_lock(&topics_lock);
    for (int i = 0; i < s->n; i++) {
        topic *t = s->e[i].t;
        member *m = s->e[i].m;
        if (m && --m->conns == 0) {
            event *e = event_new(t, m, false);
            if (e) {
                e->next = events;
                events = e;
            }
            member **p = &t->members;
            while (*p != m)
                p = &(*p)->next;
            *p = m->next;
            free(m);
            t->nmembers--;
            members_now--;
        }
        t->subs--;
        topics_gen++;
        topic_drop_if_unused(t);
    }
    pthread_mutex_unlock(&topics_lock);
    free(s);
    events_send(events, fn, ud);
}

/* ---- the other nodes' tables (cluster mode) ---------------------------- */

/* In cluster mode each node sends every other node, as notes outside the
 * stream (cluster_broadcast), the whole of its topics table: each topic's
 * subscription count and members.  Sent within NOTE_CHECK_MS of a change
 * and every NOTE_EVERY_MS regardless (a node that stops sending is
 * forgotten after NODE_STALE_MS: one killed leaves no ghosts behind for
 * long).  sluice.subscribers and sluice.presence add what the other nodes
 * last sent: cluster-wide, seconds old at worst.  A table larger than one
 * note goes in several parts, cut between topics; a node's view is
 * replaced only when every part of a newer table has come.
 *
 * A note, integers big-endian: "SLN1", the node's id (8 bytes, random at
 * start), the table's number (8), the part's index and the number of parts
 * (2 each), then topics: name length (2), name, subscriptions (4), member
 * count (2), then each member: id length (1), id, info length (2), info
 * (JSON).  Whatever is malformed or over the bounds below is dropped and
 * counted. */
#define NOTE_MAGIC "SLN1"
#define NOTE_HEAD 24
#define NOTE_PART_MAX (256 * 1024)
#define NOTE_PARTS_MAX 256
#define NOTE_CHECK_MS 250
#define NOTE_EVERY_MS 2000
#define NOTE_LARGE (1024 * 1024) /* a table this large is sent every NOTE_EVERY_MS at most */
#define NODE_STALE_MS 6000
#define NODES_MAX 64

typedef struct node_view {
    uint64_t id;
    double seen;            /* monotonic seconds of its last note */
    uint64_t gen;           /* the table being assembled */
    unsigned parts, got;    /* its parts, and how many came in order */
    char *building;         /* their topics, back to back */
    size_t blen, bcap;
    char *data;             /* the last whole table's topics */
    size_t dlen;
    uint32_t *index;        /* offset + 1 of each topic in data, by name hash */
    size_t icap;            /* a power of two; 0: empty table */
} node_view;

static pthread_mutex_t nodes_lock = PTHREAD_MUTEX_INITIALIZER;
static node_view *nodes[NODES_MAX];
static uint64_t self_id;
static unsigned long long notes_sent, notes_received, notes_dropped; /* atomics */

static struct {
    struct cluster *cluster;
    pthread_t thread;
    bool running, stop;
    pthread_mutex_t lock;
    pthread_cond_t cond;
} notes = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* n bytes of v, big-endian (get_be reads them back). */
static void put_be(char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (char)(v >> (8 * (n - 1 - i)));
}

static uint64_t get_be(const char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | (uint8_t)p[i];
    return v;
}

/* One topic of a note at p (end: the note's end): its parts, or false when
 * it runs past the end or breaks a bound (and with `check`, when a name
 * is no topic or pattern, an id not UTF-8 or an info not JSON: what a
 * script gets must be what a subscription could have given).  *next: the
 * topic after it. */
typedef struct note_topic {
    const char *name;
    size_t len;
    uint32_t subs;
    unsigned nmembers;
    const char *members; /* nmembers of (id length, id, info length, info) */
    const char *next;
} note_topic;

static bool note_topic_read(const char *p, const char *end, note_topic *t, bool check)
{
    if (end - p < 2) return false;
    t->len = (size_t)get_be(p, 2);
    p += 2;
    if (t->len == 0 || t->len > HUB_TOPIC_MAX + 1 || (size_t)(end - p) < t->len + 6) return false;
    t->name = p;
    if (check && !hub_pattern_valid(p, t->len)) return false;
    p += t->len;
    t->subs = (uint32_t)get_be(p, 4);
    t->nmembers = (unsigned)get_be(p + 4, 2);
    p += 6;
    if (t->nmembers > LXS_MAX_MEMBERS) return false;
    t->members = p;
    for (unsigned i = 0; i < t->nmembers; i++) {
        if (end - p < 1) return false;
        size_t il = (uint8_t)p[0];
        if (il == 0 || il > LXS_ID_MAX || (size_t)(end - p) < 1 + il + 2) return false;
        if (check && !utf8_valid(p + 1, il)) return false;
        p += 1 + il;
        size_t nl = (size_t)get_be(p, 2);
        if (nl == 0 || nl > LXS_INFO_MAX || (size_t)(end - p) < 2 + nl) return false;
        if (check && !json_valid(p + 2, nl)) return false;
        p += 2 + nl;
    }
    t->next = p;
    return true;
}

static void view_free_table(node_view *v)
{
    free(v->data);
    free(v->index);
    v->data = NULL;
    v->index = NULL;
    v->dlen = v->icap = 0;
}

/* The table just assembled becomes the node's view, indexed; false (the
 * old view kept) when it is malformed or memory is short. */
static bool view_install(node_view *v)
{
    if (v->blen == 0) { /* no topics */
        view_free_table(v);
        return true;
    }
    size_t n = 0;
    const char *end = v->building + v->blen;
    note_topic t;
    for (const char *p = v->building; p < end; p = t.next, n++)
        if (!note_topic_read(p, end, &t, true)) return false;
    size_t icap = 8;
    while (icap < 2 * n)
        icap *= 2;
    uint32_t *index = n ? calloc(icap, sizeof(uint32_t)) : NULL;
    if (n && !index) return false;
    for (const char *p = v->building; p < end; p = t.next) {
        note_topic_read(p, end, &t, false);
        size_t i = hash(t.name, t.len) & (icap - 1);
        while (index[i])
            i = (i + 1) & (icap - 1);
        index[i] = (uint32_t)(p - v->building) + 1;
    }
    view_free_table(v);
    v->data = v->building;
    v->dlen = v->blen;
    v->index = index;
    v->icap = n ? icap : 0;
    v->building = NULL;
    v->blen = v->bcap = 0;
    return true;
}

/* The topic `name` in a node's view (under nodes_lock), or false. */
static bool view_find(const node_view *v, const char *name, size_t len, note_topic *t)
{
    if (!v->icap) return false;
    for (size_t i = hash(name, len) & (v->icap - 1); v->index[i]; i = (i + 1) & (v->icap - 1)) {
        const char *p = v->data + v->index[i] - 1;
        note_topic_read(p, v->data + v->dlen, t, false);
        if (t->len == len && memcmp(t->name, name, len) == 0) return true;
    }
    return false;
}

static bool view_fresh(const node_view *v, double now)
{
    return v && v->icap && now - v->seen < NODE_STALE_MS / 1000.0;
}

/* The client's thread: a note of another node. */
void lxs_note_receive(void *ud, const void *data, size_t len)
{
    (void)ud;
    const char *p = data;
    BUMP(notes_received);
    if (len < NOTE_HEAD || len > NOTE_PART_MAX || memcmp(p, NOTE_MAGIC, 4) != 0) {
        BUMP(notes_dropped);
        return;
    }
    uint64_t id = get_be(p + 4, 8), gen = get_be(p + 12, 8);
    unsigned part = (unsigned)get_be(p + 20, 2), parts = (unsigned)get_be(p + 22, 2);
    if (id == self_id) return;
    if (parts == 0 || parts > NOTE_PARTS_MAX || part >= parts) {
        BUMP(notes_dropped);
        return;
    }
    pthread_mutex_lock(&nodes_lock);
    node_view *v = NULL;
    int free_slot = -1;
    for (int i = 0; i < NODES_MAX && !v; i++) {
        if (nodes[i] && nodes[i]->id == id) v = nodes[i];
        if (!nodes[i] && free_slot < 0) free_slot = i;
    }
    if (!v && free_slot >= 0 && (v = calloc(1, sizeof(node_view)))) {
        v->id = id;
        nodes[free_slot] = v;
    }
    bool ok = v != NULL;
    if (ok) {
        v->seen = mono_s();
        if (part == 0) { /* a new table: what was being assembled is dropped */
            v->gen = gen;
            v->parts = parts;
            v->got = 0;
            v->blen = 0;
        }
        /* Parts come in order (one sender, one connection); one missing
         * spoils its table: the next one mends it. */
        ok = gen == v->gen && part == v->got && parts == v->parts;
    }
    if (ok && v->blen + len - NOTE_HEAD > v->bcap) {
        size_t cap = v->bcap ? v->bcap : 4096;
        while (cap < v->blen + len - NOTE_HEAD)
            cap *= 2;
        char *nb = realloc(v->building, cap);
        ok = nb != NULL;
        if (ok) {
            v->building = nb;
            v->bcap = cap;
        }
    }
    if (ok && len > NOTE_HEAD) {
        memcpy(v->building + v->blen, p + NOTE_HEAD, len - NOTE_HEAD);
        v->blen += len - NOTE_HEAD;
    }
    if (ok) {
        if (++v->got == v->parts) ok = view_install(v);
    }
    pthread_mutex_unlock(&nodes_lock);
    if (!ok) {
        BUMP(notes_dropped);
        static log_limit lim = LOG_LIMIT_INIT;
        LOG_KV_LIMITED(&lim, 10.0, LOG_WARN,
                       "presence: a note of another node dropped (malformed, out of order or "
                       "too many nodes): its table is mended by its next one",
                       LOG_I("bytes", len));
    }
}

/* A growing buffer of notes' topics, then cut into notes. */
typedef struct note_buf {
    char *p;
    size_t len, cap;
    bool oom;
} note_buf;

static char *note_room(note_buf *b, size_t n)
{
    if (b->oom) return NULL;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 16384;
        while (cap < b->len + n)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return NULL;
        }
        b->p = np;
        b->cap = cap;
    }
    char *at = b->p + b->len;
    b->len += n;
    return at;
}

/* This node's table, topic after topic (under topics_lock).  A topic whose
 * members would not fit in one note keeps those that fit. */
static void table_write(note_buf *b)
{
    for (size_t c = 0; c < TOPIC_CHAINS; c++) {
        for (topic *t = chains[c]; t; t = t->next) {
            size_t at = b->len;
            char *h = note_room(b, 2 + t->len + 6);
            if (!h) return;
            put_be(h, (unsigned)t->len, 2);
            memcpy(h + 2, t->name, t->len);
            put_be(h + 2 + t->len, t->subs, 4);
            unsigned nm = 0;
            for (member *m = t->members; m; m = m->next) {
                size_t need = 1 + m->id_len + 2 + m->info_len;
                if (b->len - at + need > NOTE_PART_MAX - NOTE_HEAD) break;
                char *q = note_room(b, need);
                if (!q) return;
                q[0] = (char)m->id_len;
                memcpy(q + 1, m->id, m->id_len);
                put_be(q + 1 + m->id_len, (unsigned)m->info_len, 2);
                memcpy(q + 3 + m->id_len, m->info, m->info_len);
                nm++;
            }
            put_be(b->p + at + 2 + t->len + 4, nm, 2);
        }
    }
}

/* Sends this node's table, in as many notes as it takes; its size. */
static size_t table_send(struct cluster *c, uint64_t gen)
{
    note_buf b = {0};
    pthread_mutex_lock(&topics_lock);
    table_write(&b);
    pthread_mutex_unlock(&topics_lock);
    if (b.oom) {
        free(b.p);
        return 0;
    }
    /* Cut between topics, each note at most NOTE_PART_MAX (table_write
     * keeps every topic under it); past NOTE_PARTS_MAX notes the rest of
     * the table is left out, logged. */
    size_t cuts[NOTE_PARTS_MAX + 1];
    unsigned parts = 0;
    cuts[0] = 0;
    size_t upto = b.len;
    note_topic t;
    const char *end = b.p ? b.p + b.len : NULL; /* NULL: no topics, one empty note */
    for (const char *p = b.p; p && p < end; p = t.next) {
        note_topic_read(p, end, &t, false);
        if ((size_t)(t.next - b.p) - cuts[parts] <= NOTE_PART_MAX - NOTE_HEAD) continue;
        if (parts + 1 == NOTE_PARTS_MAX) {
            upto = (size_t)(p - b.p);
            static log_limit lim = LOG_LIMIT_INIT;
            LOG_KV_LIMITED(&lim, 60.0, LOG_WARN,
                           "presence: this node's table is too large for the other nodes: "
                           "the topics past it are left out",
                           LOG_I("bytes", b.len), LOG_I("sent", upto));
            break;
        }
        cuts[++parts] = (size_t)(p - b.p);
    }
    cuts[++parts] = upto;
    char *note = malloc(NOTE_PART_MAX);
    for (unsigned i = 0; note && i < parts; i++) {
        size_t n = cuts[i + 1] - cuts[i];
        if (n > NOTE_PART_MAX - NOTE_HEAD) break; /* cannot be: table_write bounds a topic */
        memcpy(note, NOTE_MAGIC, 4);
        put_be(note + 4, self_id, 8);
        put_be(note + 12, gen, 8);
        put_be(note + 20, i, 2);
        put_be(note + 22, parts, 2);
        if (n) memcpy(note + NOTE_HEAD, b.p + cuts[i], n);
        if (cluster_broadcast(c, note, NOTE_HEAD + n) != 0) break; /* the next table mends it */
        BUMP(notes_sent);
    }
    free(note);
    free(b.p);
    return b.len;
}

static void *notes_main(void *arg)
{
    (void)arg;
    uint64_t sent_gen = UINT64_MAX, number = 0;
    double sent_at = 0, gap = 0;
    pthread_mutex_lock(&notes.lock);
    while (!notes.stop) {
        struct timespec ts = deadline_in_ms(NOTE_CHECK_MS);
        pthread_cond_timedwait(&notes.cond, &notes.lock, &ts);
        if (notes.stop) break;
        pthread_mutex_unlock(&notes.lock);
        pthread_mutex_lock(&topics_lock);
        uint64_t gen = topics_gen;
        pthread_mutex_unlock(&topics_lock);
        double now = mono_s();
        if ((gen != sent_gen && now - sent_at >= gap) || now - sent_at >= NOTE_EVERY_MS / 1000.0) {
            /* A large table (many topics) changing all the time goes out
             * every NOTE_EVERY_MS, not four times a second. */
            gap = table_send(notes.cluster, ++number) > NOTE_LARGE ? NOTE_EVERY_MS / 1000.0 : 0;
            sent_gen = gen;
            sent_at = now;
        }
        /* Nodes that went quiet are forgotten. */
        pthread_mutex_lock(&nodes_lock);
        for (int i = 0; i < NODES_MAX; i++) {
            node_view *v = nodes[i];
            if (v && now - v->seen >= NODE_STALE_MS / 1000.0) {
                view_free_table(v);
                free(v->building);
                free(v);
                nodes[i] = NULL;
            }
        }
        pthread_mutex_unlock(&nodes_lock);
        pthread_mutex_lock(&notes.lock);
    }
    pthread_mutex_unlock(&notes.lock);
    return NULL;
}

int lxs_cluster_start(struct cluster *c)
{
    unsigned char r[8];
    if (RAND_bytes(r, sizeof(r)) != 1) return SL_EIO;
    self_id = get_be((const char *)r, 8);
    notes.cluster = c;
    if (cluster_listen(c, lxs_note_receive, NULL) != 0) return SL_EIO;
    if (pthread_create(&notes.thread, NULL, notes_main, NULL) != 0) return SL_ENOMEM;
    notes.running = true;
    return 0;
}

void lxs_cluster_stop(void)
{
    if (!notes.running) return;
    pthread_mutex_lock(&notes.lock);
    notes.stop = true;
    pthread_cond_signal(&notes.cond);
    pthread_mutex_unlock(&notes.lock);
    pthread_join(notes.thread, NULL);
    notes.running = false;
}

/* The subscriptions to `name` the other nodes last told of. */
static uint64_t nodes_subs(const char *name, size_t len)
{
    uint64_t n = 0;
    double now = mono_s();
    note_topic t;
    pthread_mutex_lock(&nodes_lock);
    for (int i = 0; i < NODES_MAX; i++)
        if (view_fresh(nodes[i], now) && view_find(nodes[i], name, len, &t)) n += t.subs;
    pthread_mutex_unlock(&nodes_lock);
    return n;
}

/* ---- presence lists -------------------------------------------------------- */

/* A member list being copied out: ids and infos back to back, each pair
 * preceded by its two lengths; an id already in it is skipped (a member
 * with connections on several nodes is one member).  Without a buffer (or
 * once it is full) only the bytes are counted, duplicates included: a
 * bound of what a copy needs. */
typedef struct member_copy {
    char *buf;
    size_t cap, bytes, count;
    bool over;
    uint32_t *seen; /* offset + 1 of each id copied, by hash */
    size_t seen_cap;
} member_copy;

static void member_put(member_copy *mc, const char *id, size_t il, const char *info, size_t nl)
{
    size_t need = 2 * sizeof(size_t) + il + nl;
    if (!mc->buf || mc->over || mc->bytes + need > mc->cap) {
        mc->over = mc->buf != NULL;
        mc->bytes += need;
        return;
    }
    size_t i = hash(id, il) & (mc->seen_cap - 1);
    for (; mc->seen[i]; i = (i + 1) & (mc->seen_cap - 1)) {
        const char *at = mc->buf + mc->seen[i] - 1;
        size_t al;
        memcpy(&al, at, sizeof(size_t));
        if (al == il && memcmp(at + 2 * sizeof(size_t), id, il) == 0) return;
    }
    char *p = mc->buf + mc->bytes;
    mc->seen[i] = (uint32_t)mc->bytes + 1;
    memcpy(p, &il, sizeof(size_t));
    memcpy(p + sizeof(size_t), &nl, sizeof(size_t));
    p = mempcpy(p + 2 * sizeof(size_t), id, il);
    memcpy(p, info, nl);
    mc->bytes += need;
    mc->count++;
}

/* The members of a topic on this node and on the others, copied into buf
 * (cap bytes, under 4 GiB).  Returns the bytes copied and *count, or a
 * bound of the bytes needed, over cap, when they do not fit (nothing
 * usable copied then); SIZE_MAX when memory is short. */
static size_t members_copy(const char *name, size_t len, char *buf, size_t cap, size_t *count)
{
    member_copy mc = {.buf = buf, .cap = cap};
    *count = 0;
    if (buf) {
        /* Each member takes at least 2 * sizeof(size_t) + 2 bytes. */
        size_t most = cap / (2 * sizeof(size_t) + 2) + 1;
        mc.seen_cap = 8;
        while (mc.seen_cap < 2 * most)
            mc.seen_cap *= 2;
        if (!(mc.seen = calloc(mc.seen_cap, sizeof(uint32_t)))) return SIZE_MAX;
    }
    pthread_mutex_lock(&topics_lock);
    pthread_mutex_lock(&nodes_lock);
    topic *t = *topic_slot(name, len);
    for (member *m = t ? t->members : NULL; m; m = m->next)
        member_put(&mc, m->id, m->id_len, m->info, m->info_len);
    double now = mono_s();
    note_topic nt;
    for (int i = 0; i < NODES_MAX; i++) {
        if (!view_fresh(nodes[i], now) || !view_find(nodes[i], name, len, &nt)) continue;
        const char *p = nt.members; /* checked when the table came */
        for (unsigned k = 0; k < nt.nmembers; k++) {
            size_t il = (uint8_t)p[0], nl = (size_t)get_be(p + 1 + il, 2);
            member_put(&mc, p + 1, il, p + 3 + il, nl);
            p += 3 + il + nl;
        }
    }
    pthread_mutex_unlock(&nodes_lock);
    pthread_mutex_unlock(&topics_lock);
    free(mc.seen);
    if (mc.over) return mc.bytes > cap ? mc.bytes : cap + 1;
    *count = mc.count;
    return mc.bytes;
}

/* sluice.presence(topic) -> a list of {id = ..., info = ...}, on every
 * worker and (cluster mode) every node, in no particular order ({} when
 * none). */
static int l_presence(lua_State *L)
{
    size_t len;
    const char *name = luaL_checklstring(L, 1, &len);
    if (!hub_topic_valid(name, len)) return luaL_argerror(L, 1, "invalid topic name");
    /* The copy goes into a userdata that Lua allocates outside the lock
     * (an allocation that fails raises with nothing held), sized by a
     * first look; the list may grow meanwhile: a few tries. */
    size_t count = 0, need = members_copy(name, len, NULL, 0, &count), cap = 0;
    char *buf = NULL;
    for (int tries = 0; need > cap; tries++) {
        if (need == SIZE_MAX) return luaL_error(L, "sluice.presence: out of memory");
        if (tries == 8) return luaL_error(L, "sluice.presence: the member list keeps changing");
        cap = need + need / 4 + 256;
        lua_settop(L, 1);
        buf = lua_newuserdatauv(L, cap, 0);
        need = members_copy(name, len, buf, cap, &count);
    }
    int copy = lua_gettop(L);
    lua_createtable(L, (int)count, 0);
    int list = lua_gettop(L);
    luaL_requiref(L, "cjson", luaopen_cjson, 0);
    lua_getfield(L, -1, "decode");
    int decode = lua_gettop(L);
    const char *p = buf;
    for (size_t i = 0; i < count; i++) {
        size_t il, nl;
        memcpy(&il, p, sizeof(size_t));
        memcpy(&nl, p + sizeof(size_t), sizeof(size_t));
        p += 2 * sizeof(size_t);
        lua_createtable(L, 0, 2);
        lua_pushlstring(L, p, il);
        lua_setfield(L, -2, "id");
        lua_pushvalue(L, decode);
        lua_pushlstring(L, p + il, nl);
        lua_call(L, 1, 1); /* stored by lxs_join from cjson.encode: decodes */
        lua_setfield(L, -2, "info");
        lua_rawseti(L, list, (lua_Integer)i + 1);
        p += il + nl;
    }
    lua_settop(L, list);
    (void)copy;
    return 1;
}

/* sluice.subscribers(name) -> the subscriptions to that name (a topic, or
 * a pattern such as "rooms.*" as it was given) on every worker and (cluster
 * mode) every node. */
static int l_subscribers(lua_State *L)
{
    size_t len;
    const char *name = luaL_checklstring(L, 1, &len);
    if (!hub_pattern_valid(name, len)) return luaL_argerror(L, 1, "invalid topic name or pattern");
    pthread_mutex_lock(&topics_lock);
    topic *t = *topic_slot(name, len);
    lua_Integer n = t ? t->subs : 0;
    pthread_mutex_unlock(&topics_lock);
    lua_pushinteger(L, n + (lua_Integer)nodes_subs(name, len));
    return 1;
}

/* ---- token buckets ------------------------------------------------------- */

typedef struct bucket {
    struct bucket *hnext;       /* hash chain */
    struct bucket *prev, *next; /* use order: most recent first */
    double tokens, last;
    size_t len;
    char key[];
} bucket;

#define BUCKET_CHAINS 16384
static pthread_mutex_t buckets_lock = PTHREAD_MUTEX_INITIALIZER;
static bucket *bchains[BUCKET_CHAINS];
static bucket *recent, *oldest;
static size_t nbuckets;
static unsigned long long limit_allowed, limit_refused, limit_evicted; /* atomics */

static bucket **bucket_slot(const char *key, size_t len)
{
    bucket **p = &bchains[hash(key, len) % BUCKET_CHAINS];
    while (*p && !((*p)->len == len && memcmp((*p)->key, key, len) == 0))
        p = &(*p)->hnext;
    return p;
}

static void use_unlink(bucket *b)
{
    if (b->prev)
        b->prev->next = b->next;
    else
        recent = b->next;
    if (b->next)
        b->next->prev = b->prev;
    else
        oldest = b->prev;
}

static void use_front(bucket *b)
{
    b->prev = NULL;
    b->next = recent;
    if (recent) recent->prev = b;
    recent = b;
    if (!oldest) oldest = b;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One token from key's bucket (rate tokens per second, at most burst):
 * 0 when taken, else the seconds until one is there; -1 when memory is
 * short. */
static double bucket_take(const char *key, size_t len, double rate, double burst)
{
    double now = now_s(), wait = 0;
    pthread_mutex_lock(&buckets_lock);
    bucket **p = bucket_slot(key, len);
    bucket *b = *p;
    if (b) {
        use_unlink(b);
        b->tokens = fmin(burst, b->tokens + (now - b->last) * rate);
    } else {
        if (nbuckets >= LXS_MAX_BUCKETS) {
            /* The least recently used goes: a bucket idle long enough to
             * have refilled loses nothing; one that had not starts full
             * again (counted). */
            bucket *o = oldest;
            use_unlink(o);
            *bucket_slot(o->key, o->len) = o->hnext;
            free(o);
            nbuckets--;
            BUMP(limit_evicted);
            p = bucket_slot(key, len);
        }
        b = malloc(sizeof(bucket) + len);
        if (!b) {
            pthread_mutex_unlock(&buckets_lock);
            return -1;
        }
        memcpy(b->key, key, len);
        b->len = len;
        b->tokens = burst;
        b->hnext = NULL;
        *p = b;
        nbuckets++;
    }
    b->last = now;
    if (b->tokens >= 1)
        b->tokens -= 1;
    else
        wait = (1 - b->tokens) / rate;
    use_front(b);
    pthread_mutex_unlock(&buckets_lock);
    return wait;
}

/* sluice.limit(key, rate, burst) -> true, or false and the seconds after
 * which a call would pass (a token bucket shared by the workers: rate
 * tokens a second, at most burst, one per call that passes). */
static int l_limit(lua_State *L)
{
    size_t len;
    const char *key = luaL_checklstring(L, 1, &len);
    lua_Number rate = luaL_checknumber(L, 2), burst = luaL_checknumber(L, 3);
    if (len < 1 || len > LXS_KEY_MAX) return luaL_argerror(L, 1, "1 to 256 bytes");
    if (!(rate > 0) || !isfinite(rate)) return luaL_argerror(L, 2, "a positive number");
    if (!(burst >= 1) || !isfinite(burst)) return luaL_argerror(L, 3, "a number, at least 1");
    double wait = bucket_take(key, len, rate, burst);
    if (wait < 0) {
        luaL_pushfail(L);
        lua_pushliteral(L, "out of memory");
        return 2;
    }
    if (wait == 0) {
        BUMP(limit_allowed);
        lua_pushboolean(L, 1);
        return 1;
    }
    BUMP(limit_refused);
    lua_pushboolean(L, 0);
    lua_pushnumber(L, wait);
    return 2;
}

void lxs_open(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"presence", l_presence},
        {"subscribers", l_subscribers},
        {"limit", l_limit},
        {NULL, NULL},
    };
    luaL_setfuncs(L, fns, 0);
}

size_t lxs_metrics(metrics_extra *out)
{
    size_t n = 0;
    pthread_mutex_lock(&topics_lock);
    unsigned long long members = members_now;
    pthread_mutex_unlock(&topics_lock);
    pthread_mutex_lock(&buckets_lock);
    unsigned long long buckets = nbuckets;
    pthread_mutex_unlock(&buckets_lock);
    out[n++] = (metrics_extra){"sluice_presence_members", "gauge",
                               "Presence members (id and topic) on every worker.", NULL, members};
    out[n++] = (metrics_extra){"sluice_presence_refused_total", "counter",
                               "Presence joins refused: the topic had its maximum of members.",
                               NULL, READ(members_refused)};
    out[n++] = (metrics_extra){"sluice_presence_notes_total", "counter",
                               "Tables of presence and counts sent to and received from other "
                               "nodes (cluster mode), by direction.",
                               "direction=\"sent\"", READ(notes_sent)};
    out[n++] = (metrics_extra){"sluice_presence_notes_total", "counter", "",
                               "direction=\"received\"", READ(notes_received)};
    out[n++] = (metrics_extra){"sluice_presence_notes_dropped_total", "counter",
                               "Notes of other nodes dropped: malformed, out of order, or past "
                               "64 nodes (mended by the node's next table).",
                               NULL, READ(notes_dropped)};
    out[n++] = (metrics_extra){"sluice_presence_events_dropped_total", "counter",
                               "sluice.join / sluice.leave events storage refused (not published).",
                               NULL, READ(events_dropped)};
    out[n++] =
        (metrics_extra){"sluice_rate_limit_total", "counter", "sluice.limit calls, by result.",
                        "result=\"allowed\"", READ(limit_allowed)};
    out[n++] = (metrics_extra){"sluice_rate_limit_total", "counter", "", "result=\"limited\"",
                               READ(limit_refused)};
    out[n++] =
        (metrics_extra){"sluice_rate_limit_buckets", "gauge",
                        "Token buckets of sluice.limit held (at most 65536).", NULL, buckets};
    out[n++] = (metrics_extra){"sluice_rate_limit_evictions_total", "counter",
                               "Token buckets evicted to make room (least recently used).", NULL,
                               READ(limit_evicted)};
    return n;
}
