/* tail.c: the in-memory tail of logged messages not yet in LMDB, the
 * checkpoint thread that commits a sealed log, and trim and sweep. */
#include "storage/store_internal.h"

#include "core/defs.h"

/* ---- the tail: logged, not yet in LMDB --------------------------------------- */

struct tail_topic *st_tail_find(struct tail *t, const char *name, size_t len, uint64_t h)
{
    if (!t->nbuckets) return NULL;
    for (struct tail_topic *tt = t->buckets[h & (t->nbuckets - 1)]; tt; tt = tt->hnext)
        if (tt->hash == h && tt->len == len && !memcmp(tt->name, name, len)) return tt;
    return NULL;
}

/* The topic's entry, made if missing (writer, under the write lock). */
static struct tail_topic *tail_topic_get(struct tail *t, const char *name, size_t len)
{
    uint64_t h = st_fnv1a(name, len);
    struct tail_topic *tt = st_tail_find(t, name, len, h);
    if (tt) return tt;
    if (t->ntopics >= t->nbuckets) {
        size_t nb = t->nbuckets ? t->nbuckets * 2 : 256;
        struct tail_topic **b = calloc(nb, sizeof *b);
        if (!b) return NULL;
        for (size_t i = 0; i < t->nbuckets; i++)
            for (struct tail_topic *x = t->buckets[i], *nx; x; x = nx) {
                nx = x->hnext;
                x->hnext = b[x->hash & (nb - 1)];
                b[x->hash & (nb - 1)] = x;
            }
        free(t->buckets);
        t->buckets = b;
        t->nbuckets = nb;
    }
    tt = calloc(1, sizeof *tt + len);
    if (!tt) return NULL;
    tt->kept_from = INT64_MIN;
    memcpy(tt->name, name, len);
    tt->len = len;
    tt->hash = h;
    tt->hnext = t->buckets[h & (t->nbuckets - 1)];
    t->buckets[h & (t->nbuckets - 1)] = tt;
    t->ntopics++;
    return tt;
}

static const char *tail_msg_ikey(const struct tail_msg *m)
{
    return m->bytes + m->event_len + m->data_len;
}

static size_t ikey_bucket(const struct tail_topic *tt, const char *key, size_t len)
{
    return (size_t)((tt->hash * 31) ^ st_fnv1a(key, len)) & (TAIL_IKEY_BUCKETS - 1);
}

/* The key index, made if missing (before linking a keyed message). */
static int tail_ikeys_ready(struct tail *t)
{
    if (!t->ikeys) t->ikeys = calloc(TAIL_IKEY_BUCKETS, sizeof *t->ikeys);
    return t->ikeys ? 0 : ENOMEM;
}

/* The newest tail message of the topic with this key (writer). */
static struct tail_msg *tail_ikey_find(const struct tail *t, const char *topic, size_t topic_len,
                                       const char *key, size_t len)
{
    if (!t->ikeys) return NULL;
    struct tail_topic *tt =
        st_tail_find((struct tail *)t, topic, topic_len, st_fnv1a(topic, topic_len));
    if (!tt) return NULL;
    for (struct tail_msg *m = t->ikeys[ikey_bucket(tt, key, len)]; m; m = m->ikey_next)
        if (m->topic == tt && m->ikey_len == len && !memcmp(tail_msg_ikey(m), key, len)) return m;
    return NULL;
}

void st_tail_link(struct tail *t, struct tail_msg *m)
{
    struct tail_topic *tt = m->topic;
    SLUICE_ASSERT(!t->last || t->last->seq < m->seq); /* readers rely on seq order */
    m->next = m->topic_next = NULL;
    m->ikey_next = NULL;
    if (m->ikey_len && t->ikeys) {
        struct tail_msg **b = &t->ikeys[ikey_bucket(tt, tail_msg_ikey(m), m->ikey_len)];
        m->ikey_next = *b;
        *b = m;
    }
    if (t->last)
        t->last->next = m;
    else
        t->first = m;
    t->last = m;
    if (tt->last)
        tt->last->topic_next = m;
    else
        tt->first = m;
    tt->last = m;
    tt->count++;
    m->ord = tt->next_ord++;
    if (m->max_count && m->ord + 1 - (int64_t)m->max_count > tt->kept_from)
        tt->kept_from = m->ord + 1 - (int64_t)m->max_count;
    t->count++;
    t->last_seq = m->seq;
}

/* Free every message and topic entry (under the write lock). */
void st_tail_clear(struct tail *t)
{
    for (struct tail_msg *m = t->first, *next; m; m = next) {
        next = m->next;
        free(m);
    }
    for (size_t i = 0; i < t->nbuckets; i++)
        for (struct tail_topic *x = t->buckets[i], *nx; x; x = nx) {
            nx = x->hnext;
            free(x);
        }
    if (t->buckets) memset(t->buckets, 0, t->nbuckets * sizeof *t->buckets);
    if (t->ikeys) memset(t->ikeys, 0, TAIL_IKEY_BUCKETS * sizeof *t->ikeys);
    t->ntopics = t->count = 0;
    t->first = t->last = NULL;
}

/* A copy of r for the tail, its topic not yet set (no lock needed). */
static struct tail_msg *tail_msg_copy(const struct wal_rec *r)
{
    struct tail_msg *m = malloc(sizeof *m + r->event_len + r->data_len + r->ikey_len);
    if (!m) return NULL;
    m->topic = NULL;
    m->ikey_len = r->ikey_len;
    if (r->ikey_len) memcpy(m->bytes + r->event_len + r->data_len, r->ikey, r->ikey_len);
    m->seq = r->seq;
    m->epoch = r->epoch;
    m->time_ms = r->time_ms;
    m->max_count = r->max_count;
    m->max_age_ms = r->max_age_ms;
    m->event_len = r->event_len;
    m->data_len = r->data_len;
    m->flags = r->flags & WAL_REC_JSON ? STORE_MSG_JSON : 0;
    if (r->event_len) memcpy(m->bytes, r->event, r->event_len);
    if (r->data_len) memcpy(m->bytes + r->event_len, r->data, r->data_len);
    return m;
}

/* A copy of r with its topic entry, made if missing (under the write lock). */
struct tail_msg *st_tail_msg_new(struct tail *t, const struct wal_rec *r)
{
    struct tail_topic *tt = tail_topic_get(t, r->topic, r->topic_len);
    struct tail_msg *m = tt && !(r->ikey_len && tail_ikeys_ready(t)) ? tail_msg_copy(r) : NULL;
    if (m) m->topic = tt;
    return m;
}

/* Drop the tail's first n messages (a checkpoint has moved them), and the
 * topic entries left empty (writer, under the write lock). */
static void tail_drop(struct tail *t, size_t n)
{
    while (n-- && t->first) {
        struct tail_msg *m = t->first;
        struct tail_topic *tt = m->topic;
        if (m->ikey_len && t->ikeys) {
            struct tail_msg **at = &t->ikeys[ikey_bucket(tt, tail_msg_ikey(m), m->ikey_len)];
            while (*at && *at != m)
                at = &(*at)->ikey_next;
            if (*at) *at = m->ikey_next;
        }
        t->first = m->next;
        t->count--;
        tt->first = m->topic_next;
        if (--tt->count == 0) {
            struct tail_topic **at = &t->buckets[tt->hash & (t->nbuckets - 1)];
            while (*at != tt)
                at = &(*at)->hnext;
            *at = tt->hnext;
            t->ntopics--;
            free(tt);
        }
        free(m);
    }
    if (!t->first) t->last = NULL;
}

/* The tail's messages as a checkpoint commits them (pointers into the
 * tail, which must keep them until the commit is done). */
static int tail_batch(const struct tail *t, struct store_msg **msgs_out, int64_t **times_out)
{
    struct store_msg *msgs = calloc(t->count, sizeof *msgs);
    int64_t *times = malloc(t->count * sizeof *times);
    if (!msgs || !times) {
        free(msgs);
        free(times);
        return SL_ENOMEM;
    }
    size_t i = 0;
    for (const struct tail_msg *m = t->first; m; m = m->next, i++) {
        msgs[i].topic = m->topic->name;
        msgs[i].topic_len = m->topic->len;
        msgs[i].event = m->event_len ? m->bytes : NULL;
        msgs[i].event_len = m->event_len;
        msgs[i].data = m->bytes + m->event_len;
        msgs[i].data_len = m->data_len;
        msgs[i].max_count = m->max_count;
        msgs[i].max_age_ms = m->max_age_ms;
        msgs[i].ikey = m->ikey_len ? tail_msg_ikey(m) : NULL;
        msgs[i].ikey_len = m->ikey_len;
        msgs[i].flags = m->flags;
        msgs[i].seq = m->seq;
        msgs[i].epoch = m->epoch;
        times[i] = m->time_ms;
    }
    *msgs_out = msgs;
    *times_out = times;
    return SL_OK;
}

static void *ckpt_main(void *arg)
{
    struct store *s = arg;
    struct ckpt *c = &s->ckpt;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (atomic_load(&c->state) != CKPT_BUSY && !c->stop)
            pthread_cond_wait(&c->cv, &c->mu);
        if (atomic_load(&c->state) != CKPT_BUSY) break;
        pthread_mutex_unlock(&c->mu);
        /* Seqs, epochs and times come from the log; now is unused. */
        int code = st_commit_msgs(s, c->msgs, c->n, 0, c->times, 0);
        pthread_mutex_lock(&c->mu);
        c->code = code;
        atomic_store(&c->state, CKPT_DONE);
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

int st_ckpt_start(struct store *s)
{
    struct ckpt *c = &s->ckpt;
    if (pthread_mutex_init(&c->mu, NULL)) return SL_ENOMEM;
    if (pthread_cond_init(&c->cv, NULL)) {
        pthread_mutex_destroy(&c->mu);
        return SL_ENOMEM;
    }
    if (pthread_create(&c->thread, NULL, ckpt_main, s)) {
        pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->mu);
        return SL_EIO;
    }
    c->running = 1;
    return SL_OK;
}

/* Take the outcome of a finished job (writer): on success its messages
 * leave the tail and its log is free again; on failure both stay, and the
 * next checkpoint moves them with the rest (st_checkpoint_all). */
static void ckpt_reap(struct store *s)
{
    struct ckpt *c = &s->ckpt;
    if (atomic_load(&c->state) != CKPT_DONE) return;
    if (c->code == SL_OK) {
        pthread_rwlock_wrlock(&s->tail.lock);
        tail_drop(&s->tail, c->n);
        pthread_rwlock_unlock(&s->tail.lock);
        wal_rewind(s->logs[c->log]);
        s->log_msgs[c->log] = 0;
        atomic_fetch_add(&s->checkpoints, 1);
    } else {
        atomic_fetch_add(&s->checkpoint_failures, 1);
    }
    free(c->msgs);
    free(c->times);
    c->msgs = NULL;
    c->times = NULL;
    atomic_store(&c->state, CKPT_IDLE);
}

/* Wait for the job in flight, if any, and reap it (writer). */
static void ckpt_wait(struct store *s)
{
    struct ckpt *c = &s->ckpt;
    if (atomic_load(&c->state) == CKPT_IDLE) return;
    pthread_mutex_lock(&c->mu);
    while (atomic_load(&c->state) == CKPT_BUSY)
        pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
    ckpt_reap(s);
}

void st_ckpt_stop(struct store *s)
{
    struct ckpt *c = &s->ckpt;
    if (!c->running) return;
    ckpt_wait(s);
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->thread, NULL);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    c->running = 0;
}

/* Move the whole tail into LMDB in one synced commit on this thread, after
 * the job in flight, then start both logs again.  Writer only.  On failure
 * the tail and the logs stay as they were. */
int st_checkpoint_all(struct store *s, int64_t now_ms)
{
    struct tail *t = &s->tail;
    struct store_msg *msgs;
    int64_t *times;
    ckpt_wait(s);
    if (t->count == 0) return SL_OK;
    int code = tail_batch(t, &msgs, &times);
    if (code == SL_OK) {
        code = st_append_commit(s, msgs, t->count, now_ms, times);
        free(msgs);
        free(times);
    }
    if (code) {
        atomic_fetch_add(&s->checkpoint_failures, 1);
        return code;
    }
    atomic_fetch_add(&s->checkpoints, 1);
    pthread_rwlock_wrlock(&t->lock);
    st_tail_clear(t);
    pthread_rwlock_unlock(&t->lock);
    for (int i = 0; i < 2; i++) {
        if (s->logs[i]) wal_rewind(s->logs[i]);
        s->log_msgs[i] = 0;
    }
    return SL_OK;
}

/* Seal the log taking appends and hand its messages to the checkpoint
 * thread; appends go on in the other log, which is free.  When it is not
 * (its own checkpoint failed), or after a failed log write, everything is
 * checkpointed here and now.  A job still in flight is waited for when
 * `must` (the log is full), else left alone (the periodic call).  Writer
 * only. */
static int checkpoint_begin(struct store *s, int64_t now_ms, int must)
{
    struct ckpt *c = &s->ckpt;
    int other = s->cur ^ 1;
    ckpt_reap(s);
    if (s->log_msgs[s->cur] == 0) return SL_OK;
    if (atomic_load(&c->state) == CKPT_BUSY) {
        if (!must) return SL_OK;
        ckpt_wait(s);
    }
    if (!c->running || s->wal_failed || s->log_msgs[other] || s->tail.count != s->log_msgs[s->cur])
        return st_checkpoint_all(s, now_ms);
    /* Reaped and the other log free: the tail is this log's messages. */
    int code = tail_batch(&s->tail, &c->msgs, &c->times);
    if (code) return code;
    pthread_mutex_lock(&c->mu);
    c->log = s->cur;
    c->n = s->tail.count;
    atomic_store(&c->state, CKPT_BUSY);
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    s->cur = other;
    return SL_OK;
}

/* The most messages a log holds before a checkpoint: it bounds what a
 * read skips for retention (store_read_multi) to twice this. */
#define TAIL_MAX 16384

static int same_key(const struct store_msg *a, const struct store_msg *b)
{
    return a->topic_len == b->topic_len && a->ikey_len == b->ikey_len &&
           !memcmp(a->topic, b->topic, a->topic_len) && !memcmp(a->ikey, b->ikey, a->ikey_len);
}

/* msgs[i] repeats the key of an earlier message of its batch, now given
 * its ID: take that ID. */
static void dedup_in_batch(struct store_msg *msgs, size_t i)
{
    for (size_t j = 0; j < i; j++)
        if (!msgs[j].status && msgs[j].seq && same_key(&msgs[j], &msgs[i])) {
            msgs[i].seq = msgs[j].seq;
            msgs[i].epoch = msgs[j].epoch;
            return;
        }
}

/* Is msgs[i] (valid, with a key) a retry?  Of a message in the tail (the
 * newest), earlier in this batch (its ID comes once it is logged:
 * dedup_in_batch), or in LMDB (*rtxn: a read transaction begun at the
 * first need).  Sets duplicate, and seq and epoch when known.  Returns 0
 * or SL_E*. */
static int dedup_logged(struct store *s, struct store_msg *msgs, size_t i, int64_t now_ms,
                        MDB_txn **rtxn)
{
    struct store_msg *m = &msgs[i];
    int64_t since = now_ms - (int64_t)s->dedup_window_ms;
    m->duplicate = 0;
    struct tail_msg *tm = tail_ikey_find(&s->tail, m->topic, m->topic_len, m->ikey, m->ikey_len);
    if (tm && tm->time_ms >= since) {
        m->duplicate = 1;
        m->seq = tm->seq;
        m->epoch = tm->epoch;
        return 0;
    }
    for (size_t j = 0; j < i; j++)
        if (!msgs[j].status && msgs[j].ikey_len && same_key(&msgs[j], m)) {
            m->duplicate = 1; /* seq 0 until msgs[j] (or what it repeats) has one */
            m->seq = msgs[j].duplicate ? msgs[j].seq : 0;
            m->epoch = msgs[j].duplicate ? msgs[j].epoch : 0;
            return 0;
        }
    if (tm) return 0; /* the tail has a newer one than LMDB, past the window */
    struct topic_rec rec;
    int rc = *rtxn ? 0 : st_txn_begin(s, MDB_RDONLY, rtxn);
    if (rc) {
        *rtxn = NULL;
        return st_map_rc(rc);
    }
    rc = st_topic_get(s, *rtxn, m->topic, m->topic_len, &rec);
    if (rc == 0)
        rc = st_idem_find(s, *rtxn, rec.number, m->ikey, m->ikey_len, now_ms, &m->seq, &m->epoch);
    if (rc == 0) {
        m->duplicate = 1;
        return 0;
    }
    return rc == MDB_NOTFOUND ? 0 : st_map_rc(rc);
}

/* Log the batch (one write and, durable, one fdatasync), then make it
 * readable in the tail.  LMDB gets it at a later checkpoint. */
static int append_logged(struct store *s, struct store_msg *msgs, size_t n, int64_t now_ms)
{
    struct tail *t = &s->tail;
    uint64_t last = atomic_load(&s->last_seq);
    size_t bytes = 0, valid = 0;
    int code, keyed = 0;
    MDB_txn *rtxn = NULL;

    if (s->wal_failed) return st_append_direct(s, msgs, n, now_ms);
    ckpt_reap(s);
    for (size_t i = 0; i < n; i++) {
        struct store_msg *m = &msgs[i];
        m->seq = 0;
        if (!st_msg_valid(m)) {
            m->status = SL_EINVAL;
            continue;
        }
        m->status = 0;
        if (m->ikey_len && (code = dedup_logged(s, msgs, i, now_ms, &rtxn))) {
            if (rtxn) st_txn_end(s, rtxn);
            return code;
        }
        if (m->duplicate) continue;
        if (m->ikey_len) keyed = 1;
        valid++;
        bytes += wal_rec_size(m->topic_len, m->event ? m->event_len : 0, m->data_len,
                              m->ikey ? m->ikey_len : 0);
    }
    if (rtxn) st_txn_end(s, rtxn);
    if (!valid) return SL_OK;
    if (keyed && tail_ikeys_ready(t)) return SL_ENOMEM;
    if (s->log_msgs[s->cur] + valid > TAIL_MAX || bytes > wal_room(s->logs[s->cur])) {
        if ((code = checkpoint_begin(s, now_ms, 1))) return code;
        /* Bigger than a whole log: straight into LMDB. */
        if (bytes > wal_room(s->logs[s->cur])) return st_append_direct(s, msgs, n, now_ms);
    }
    if (bytes > s->walbuf_cap) {
        unsigned char *b = realloc(s->walbuf, bytes);
        if (!b) return SL_ENOMEM;
        s->walbuf = b;
        s->walbuf_cap = bytes;
    }

    /* Copies and log records outside the tail's lock: readers wait only
     * for the topic lookups and the links. */
    struct tail_msg *first = NULL, **link = &first;
    size_t off = 0;
    code = SL_OK;
    for (size_t i = 0; i < n; i++) {
        struct store_msg *m = &msgs[i];
        if (m->status) continue;
        if (m->duplicate) {
            if (!m->seq) dedup_in_batch(msgs, i); /* of one logged just above */
            continue;
        }
        struct wal_rec r = {.seq = ++last,
                            .epoch = s->epoch,
                            .time_ms = now_ms,
                            .max_count = m->max_count,
                            .max_age_ms = m->max_age_ms,
                            .topic = m->topic,
                            .topic_len = m->topic_len,
                            .event = m->event,
                            .event_len = m->event ? m->event_len : 0,
                            .data = m->data,
                            .data_len = m->data_len,
                            .ikey = m->ikey_len ? m->ikey : NULL,
                            .ikey_len = m->ikey ? m->ikey_len : 0,
                            /* The replay tells damage from a torn write by it. */
                            .flags = (off ? 0 : WAL_REC_BATCH_FIRST) |
                                     (m->flags & STORE_MSG_JSON ? WAL_REC_JSON : 0)};
        struct tail_msg *tm = tail_msg_copy(&r);
        if (!tm) {
            code = SL_ENOMEM;
            break;
        }
        *link = tm;
        link = &tm->next;
        off += wal_rec_encode(s->walbuf + off, &r, s->wal_salt);
        m->seq = r.seq;
        m->epoch = r.epoch;
    }
    *link = NULL;
    /* Topic entries before the log write: once a batch is logged, linking
     * it must not fail. */
    if (code == SL_OK) {
        struct tail_msg *tm = first;
        pthread_rwlock_wrlock(&t->lock);
        for (size_t i = 0; i < n && code == SL_OK; i++) {
            if (msgs[i].status || msgs[i].duplicate) continue;
            tm->topic = tail_topic_get(t, msgs[i].topic, msgs[i].topic_len);
            if (!tm->topic) code = SL_ENOMEM;
            tm = tm->next;
        }
        pthread_rwlock_unlock(&t->lock);
    }

    /* Relaxed: no flush; store_sync's, about once a second, bounds what
     * an OS crash can take. */
    struct wal *log = s->logs[s->cur];
    int logged = code == SL_OK && (s->relaxed ? wal_write(log, s->walbuf, off)
                                                 : wal_append(log, s->walbuf, off)) == 0;
    if (!logged) {
        for (struct tail_msg *tm = first, *next; tm; tm = next) {
            next = tm->next;
            free(tm);
        }
        if (code) return code;
        /* Part of the batch may be in the file, records that a replay
         * would take for acknowledged ones.  The next commit gives the
         * log a new salt, which voids them; until then LMDB takes every
         * batch directly, this one first. */
        s->wal_failed = 1;
        s->salt_pending = st_random_epoch(s->wal_salt);
        return st_append_direct(s, msgs, n, now_ms);
    }
    pthread_rwlock_wrlock(&t->lock);
    for (struct tail_msg *tm = first, *next; tm; tm = next) {
        next = tm->next;
        st_tail_link(t, tm);
    }
    pthread_rwlock_unlock(&t->lock);
    s->log_msgs[s->cur] += valid;
    atomic_store(&s->last_seq, last);
    return SL_OK;
}

/* A batch straight into LMDB, after the tail so that seqs stay in order. */
int st_append_direct(struct store *s, struct store_msg *msgs, size_t n, int64_t now_ms)
{
    int code = st_checkpoint_all(s, now_ms);
    return code ? code : st_append_commit(s, msgs, n, now_ms, NULL);
}

int store_append_batch(struct store *s, struct store_msg *msgs, size_t n, int64_t now_ms)
{
    if (s->read_only) return SL_EROFS;
    if (n == 0) return SL_OK;
    if (!msgs) return SL_EINVAL;
    for (size_t i = 0; i < n; i++)
        msgs[i].duplicate = 0;
    int code = append_logged(s, msgs, n, now_ms); /* a read-write handle has its logs */
    for (size_t i = 0; i < n && code == SL_OK; i++)
        if (msgs[i].duplicate && !msgs[i].status) atomic_fetch_add(&s->duplicates, 1);
    return code;
}

/* ---- trim and sweep ---------------------------------------------------------- */

struct trim_arg {
    const char *topic;
    size_t len;
    uint64_t max_count, max_age_ms;
    int64_t now_ms;
    uint64_t deleted;
};

static int trim_op(struct store *s, MDB_txn *txn, void *argp)
{
    struct trim_arg *a = argp;
    struct topic_rec rec;
    a->deleted = 0;
    int rc = st_topic_get(s, txn, a->topic, a->len, &rec);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    if ((rc = st_trim_txn(s, txn, &rec, a->max_count, a->max_age_ms, a->now_ms, &a->deleted)))
        return rc;
    return a->deleted ? st_topic_put(s, txn, a->topic, a->len, &rec) : 0;
}

int store_trim(struct store *s, const char *topic, size_t topic_len, uint64_t max_count,
               uint64_t max_age_ms, int64_t now_ms, uint64_t *deleted)
{
    struct trim_arg a = {topic, topic_len, max_count, max_age_ms, now_ms, 0};
    if (deleted) *deleted = 0;
    if (!topic || topic_len == 0 || topic_len > STORE_TOPIC_MAX) return SL_EINVAL;
    int rc = st_checkpoint_all(s, now_ms); /* retention applies to LMDB */
    if (rc) return rc;
    int code = st_write_txn(s, trim_op, &a, NULL);
    if (code == 0 && deleted) *deleted = a.deleted;
    return code;
}

int store_checkpoint(struct store *s)
{
    if (s->read_only) return SL_EROFS;
    return st_checkpoint_all(s, st_wall_ms());
}

struct sweep_arg {
    int64_t now_ms;
    size_t budget;
    int dry; /* only look: set `due` if a visited topic has messages to drop */
    int due;
    uint64_t deleted;
    char pos[STORE_TOPIC_MAX];
    size_t pos_len;
};

static int sweep_op(struct store *s, MDB_txn *txn, void *argp)
{
    struct sweep_arg *a = argp;
    MDB_cursor *c;
    MDB_val k, d;
    size_t visited = 0;
    int rc;

    a->deleted = 0;
    a->pos_len = 0;
    if ((rc = mdb_cursor_open(txn, s->topics, &c))) return rc;
    if (s->sweep_pos_len) {
        k.mv_size = s->sweep_pos_len;
        k.mv_data = s->sweep_pos;
        rc = st_lmdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
    } else {
        rc = st_lmdb_cursor_get(c, &k, &d, MDB_FIRST);
    }
    while (rc == 0) {
        if (a->budget && visited == a->budget) {
            /* Resume here next time: this topic has not been visited. */
            if (k.mv_size <= sizeof a->pos) {
                memcpy(a->pos, k.mv_data, k.mv_size);
                a->pos_len = k.mv_size;
            }
            break;
        }
        visited++;
        struct topic_rec rec;
        if (d.mv_size != sizeof rec) {
            rc = MDB_CORRUPTED;
            break;
        }
        memcpy(&rec, d.mv_data, sizeof rec);
        if (rec.max_age_ms && rec.count && a->dry) {
            uint64_t epoch;
            int64_t t;
            if ((rc = st_msg_head(s, txn, rec.number, rec.first_seq, &epoch, &t))) break;
            if (t < a->now_ms - (int64_t)rec.max_age_ms) {
                a->due = 1;
                break;
            }
        } else if (rec.max_age_ms && rec.count) {
            uint64_t before = a->deleted;
            /* max_count is enforced at append; only age expires with time. */
            if ((rc = st_trim_txn(s, txn, &rec, 0, rec.max_age_ms, a->now_ms, &a->deleted))) break;
            if (a->deleted != before) {
                MDB_val nd = {sizeof rec, &rec};
                if ((rc = mdb_cursor_put(c, &k, &nd, MDB_CURRENT))) break;
            }
        }
        rc = st_lmdb_cursor_get(c, &k, &d, MDB_NEXT);
    }
    mdb_cursor_close(c);
    if (rc == MDB_NOTFOUND) rc = 0;
    /* Idempotency keys past the window go too (a lookup ignores them
     * already: this only bounds their room). */
    if (rc == 0 && !(a->dry && a->due))
        rc = st_idem_expire(s, txn, a->now_ms, 10000, a->dry, &a->due);
    return rc;
}

int store_sweep(struct store *s, int64_t now_ms, size_t budget, uint64_t *deleted)
{
    MDB_txn *txn;
    if (deleted) *deleted = 0;
    if (s->read_only) return SL_EROFS;
    /* The writer's periodic call: it bounds how long a message stays in
     * a log to about the sweep interval. */
    int rc = checkpoint_begin(s, now_ms, 0);
    if (rc) return rc;
    struct sweep_arg *a = calloc(1, sizeof *a);
    if (!a) return SL_ENOMEM;
    a->now_ms = now_ms;
    a->budget = budget;
    /* Look first in a read transaction: most sweeps find nothing to drop,
     * and then take no write lock (which a checkpoint in flight holds). */
    a->dry = 1;
    int code = st_map_rc(st_txn_begin(s, MDB_RDONLY, &txn));
    if (code == 0) {
        code = st_map_rc(sweep_op(s, txn, a));
        st_txn_end(s, txn);
    }
    a->dry = 0;
    if (code == 0 && a->due) code = st_write_txn(s, sweep_op, a, NULL);
    if (code == 0) {
        memcpy(s->sweep_pos, a->pos, a->pos_len);
        s->sweep_pos_len = a->pos_len;
        if (deleted) *deleted = a->deleted;
    }
    free(a);
    return code;
}
