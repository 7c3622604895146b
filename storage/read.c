/* read.c: the readers: replay after an ID across topics, from LMDB and
 * the tail in seq order, skipping (and reporting) damaged messages. */
#include "storage/store_internal.h"

/* ---- reads ----------------------------------------------------------------- */

/* The message (k, d) as a reader sees it; MSG_BAD when damaged. */
static int decode_msg(const struct fmt *f, const MDB_val *k, const MDB_val *d, struct store_view *v)
{
    struct msg_parts m;
    if (st_msg_parse(f, k, d, &m)) return MSG_BAD;
    v->seq = st_get_be64((const unsigned char *)k->mv_data + 4);
    v->epoch = m.epoch;
    v->time_ms = m.time_ms;
    v->event = m.event;
    v->event_len = m.event_len;
    v->data = m.data;
    v->data_len = m.data_len;
    v->flags = m.flags;
    return 0;
}

/* One topic's cursor in a merged read. */
struct head {
    MDB_cursor *c;
    uint32_t number;
    uint64_t seq; /* seq under the cursor */
    uint64_t last_delivered, last_seq;
    MDB_val k, d;
    struct tail_msg *tm; /* next message from the tail, after LMDB's */
};

/* Retention over LMDB's part and the tail together, as the next
 * checkpoint will apply it: each message's max_count as of its append,
 * none older than max_age before its newest.  LMDB applied it at its own
 * last append, so only messages in the tail make more of it expire. */
struct visible {
    uint64_t hidden_db; /* oldest LMDB messages past the count limit */
    int64_t cutoff;     /* older than this is past max_age (INT64_MIN: none) */
};

/* Walk LMDB's part of the topic from its front over what retention hides
 * from readers; *last_hidden gets the newest such seq (0: none),
 * *first_visible the next one (0: none), *nhidden how many.  O(hidden). */
static int skip_hidden(struct store *s, MDB_txn *txn, const struct topic_rec *rec,
                       const struct visible *v, uint64_t *last_hidden, uint64_t *first_visible,
                       uint64_t *nhidden)
{
    MDB_cursor *c;
    MDB_val k, d;
    unsigned char key[12];
    uint64_t n = 0;
    int rc;
    *last_hidden = *first_visible = 0;
    if ((rc = mdb_cursor_open(txn, s->msgs, &c))) return rc;
    st_msg_key(key, rec->number, 0);
    k.mv_size = sizeof key;
    k.mv_data = key;
    rc = st_lmdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size == 12 && st_get_be32(k.mv_data) == rec->number) {
        int64_t t;
        if (d.mv_size < MSG_HDR) {
            rc = MDB_CORRUPTED;
            break;
        }
        memcpy(&t, (const char *)d.mv_data + 8, 8);
        uint64_t seq = st_get_be64((const unsigned char *)k.mv_data + 4);
        if (n >= v->hidden_db && t >= v->cutoff) {
            *first_visible = seq;
            break;
        }
        *last_hidden = seq;
        n++;
        rc = st_lmdb_cursor_get(c, &k, &d, MDB_NEXT);
    }
    mdb_cursor_close(c);
    *nhidden = n;
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int head_valid(const struct head *h)
{
    return h->k.mv_size == 12 && st_get_be32(h->k.mv_data) == h->number;
}

/* Min-heap of head indices by seq: the merge costs O(log topics) a message. */
static void heap_down(size_t *heap, size_t n, size_t i, const struct head *hs)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && hs[heap[l]].seq < hs[heap[m]].seq) m = l;
        if (r < n && hs[heap[r]].seq < hs[heap[m]].seq) m = r;
        if (m == i) return;
        size_t t = heap[i];
        heap[i] = heap[m];
        heap[m] = t;
        i = m;
    }
}

/* A topic as readers see it: LMDB's part (rec, zeroes when it has none)
 * and the tail's messages after it, with retention over both applied. */
struct topic_view {
    struct tail_msg *tm;           /* first visible tail message (NULL: none) */
    uint64_t tn;                   /* visible tail messages */
    uint64_t keep_db;              /* visible LMDB messages */
    uint64_t first_db;             /* oldest visible LMDB seq (0: none) */
    uint64_t dropped;              /* newest seq removed or hidden by retention */
    const struct tail_msg *newest; /* the tail's newest (NULL: the tail adds none) */
};

/* Fill *tv.  walk: also walk LMDB's part over what retention hides there
 * (O(hidden)); without it keep_db and first_db ignore max_age there, and
 * first_db may name a message the next checkpoint trims. */
static int topic_view(struct store *s, MDB_txn *txn, const struct topic_rec *rec,
                      const struct tail_topic *tt, int walk, struct topic_view *tv)
{
    memset(tv, 0, sizeof *tv);
    tv->keep_db = rec->count;
    tv->first_db = rec->count ? rec->first_seq : 0;
    tv->dropped = rec->dropped_seq;
    struct tail_msg *tm = tt ? tt->first : NULL;
    uint64_t tn = tt ? tt->count : 0;
    for (; tm && tm->seq <= rec->last_seq; tm = tm->topic_next)
        tn--;
    if (!tn) return 0;
    const struct tail_msg *newest = tt->last;
    uint64_t total = rec->count + tn;
    /* Count retention as each message set it (struct tail_topic): LMDB's
     * messages are the ords just before tm's. */
    int64_t first_ord = tm->ord - (int64_t)rec->count;
    uint64_t hidden = tt->kept_from > first_ord ? (uint64_t)(tt->kept_from - first_ord) : 0;
    if (hidden > total) hidden = total;
    struct visible v = {.hidden_db = hidden < rec->count ? hidden : rec->count,
                        .cutoff = newest->max_age_ms ? newest->time_ms - (int64_t)newest->max_age_ms
                                                     : INT64_MIN};
    tv->keep_db = rec->count - v.hidden_db;
    if (rec->count && (v.hidden_db || v.cutoff != INT64_MIN) && walk) {
        uint64_t last_hidden, nhidden;
        int rc = skip_hidden(s, txn, rec, &v, &last_hidden, &tv->first_db, &nhidden);
        if (rc) return rc;
        if (last_hidden > tv->dropped) tv->dropped = last_hidden;
        tv->keep_db = rec->count - nhidden;
    } else if (tv->keep_db == 0) {
        tv->first_db = 0;
    }
    for (uint64_t k = hidden - v.hidden_db; k && tm; k--, tn--, tm = tm->topic_next)
        tv->dropped = tm->seq;
    for (; tm && tm->time_ms < v.cutoff; tn--, tm = tm->topic_next)
        tv->dropped = tm->seq;
    tv->tm = tm;
    tv->tn = tn;
    tv->newest = newest;
    return 0;
}

int store_read_multi(struct store *s, const struct store_topic_ref *topics, size_t n,
                     uint64_t after_seq, size_t limit, store_read_fn fn, void *ud,
                     struct store_read_info *infos)
{
    struct head hs_local[4];
    size_t heap_local[4];
    struct store_read_info info_local[4];
    struct head *hs = hs_local;
    size_t *heap = heap_local, nheap = 0, delivered = 0;
    MDB_txn *txn = NULL;
    struct store_read_info *own_infos = NULL;
    int rc = 0, stopped = 0, broken = 0;

    if (!topics || n == 0 || !fn) return SL_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!topics[i].name || topics[i].len == 0 || topics[i].len > STORE_TOPIC_MAX)
            return SL_EINVAL;
    /* The tail before the transaction: a checkpoint that empties the tail
     * has committed first, so this snapshot then has what it emptied. */
    pthread_rwlock_rdlock(&s->tail.lock);
    if (n > 4) {
        hs = calloc(n, sizeof *hs);
        heap = calloc(n, sizeof *heap);
        if (!infos) infos = own_infos = calloc(n, sizeof *infos);
        if (!hs || !heap || !infos) {
            rc = ENOMEM;
            goto done;
        }
    } else {
        memset(hs_local, 0, sizeof hs_local);
        if (!infos) infos = info_local;
    }
    memset(infos, 0, n * sizeof *infos);
    if ((rc = st_txn_begin(s, MDB_RDONLY, &txn))) {
        txn = NULL;
        goto done;
    }
    struct fmt fmt;
    if ((rc = st_fmt_load(s, txn, &fmt))) goto done;

    for (size_t i = 0; i < n; i++) {
        struct topic_rec rec;
        struct head *h = &hs[i];
        unsigned char key[12];
        rc = st_topic_get(s, txn, topics[i].name, topics[i].len, &rec);
        if (rc == MDB_NOTFOUND)
            memset(&rec, 0, sizeof rec);
        else if (rc)
            goto done;
        else
            infos[i].exists = 1;
        rc = 0;

        /* The tail's messages of the topic that this snapshot lacks.  LMDB's
         * part is walked for retention only when the reader starts inside
         * it: past it, what retention hides there is behind the reader. */
        struct tail_topic *tt = s->tail.count
                                    ? st_tail_find(&s->tail, topics[i].name, topics[i].len,
                                                   st_fnv1a(topics[i].name, topics[i].len))
                                    : NULL;
        struct topic_view tv;
        if ((rc = topic_view(s, txn, &rec, tt, after_seq < rec.last_seq, &tv))) goto done;
        if (tv.newest) infos[i].exists = 1;
        infos[i].last_seq = tv.newest ? tv.newest->seq : rec.last_seq;
        infos[i].count = tv.keep_db + tv.tn;
        uint64_t first = tv.keep_db ? tv.first_db : tv.tm ? tv.tm->seq : 0;
        infos[i].first_seq = infos[i].count ? first : 0;
        infos[i].gap = after_seq < tv.dropped;
        uint64_t from = after_seq > tv.dropped ? after_seq : tv.dropped;
        struct tail_msg *tm = tv.tm;
        h->tm = tm;
        while (h->tm && h->tm->seq <= from)
            h->tm = h->tm->topic_next;
        if (rec.count == 0 || from >= rec.last_seq) continue;
        if ((rc = mdb_cursor_open(txn, s->msgs, &h->c))) goto done;
        h->number = rec.number;
        h->last_seq = rec.last_seq;
        h->last_delivered = from;
        st_msg_key(key, rec.number, from + 1);
        h->k.mv_size = sizeof key;
        h->k.mv_data = key;
        rc = st_lmdb_cursor_get(h->c, &h->k, &h->d, MDB_SET_RANGE);
        if (rc == MDB_NOTFOUND) {
            rc = 0;
            continue;
        }
        if (st_lmdb_damage(rc)) {
            /* The transaction is dead: serve nothing more, say so. */
            st_report_damage(s, topics[i].name, topics[i].len, from, "damaged page");
            infos[i].gap = 1;
            rc = 0;
            broken = 1;
            break;
        }
        if (rc) goto done;
        if (!head_valid(h)) continue;
        h->seq = st_get_be64((const unsigned char *)h->k.mv_data + 4);
        heap[nheap++] = i;
    }
    for (size_t i = nheap / 2; i-- > 0;)
        heap_down(heap, nheap, i, hs);

    while (nheap && !stopped && !broken) {
        struct store_view v;
        size_t i = heap[0];
        struct head *h = &hs[i];
        if (limit && delivered == limit) break;
        if (decode_msg(&fmt, &h->k, &h->d, &v) == 0) {
            v.topic_index = i;
            delivered++;
            infos[i].delivered++;
            h->last_delivered = v.seq;
            stopped = fn(ud, &v);
        } else {
            /* Never served: skipped, and the reader told of a gap. */
            h->last_delivered = h->seq;
            infos[i].gap = 1;
            st_report_damage(s, topics[i].name, topics[i].len, h->seq, "message checksum mismatch");
        }
        rc = st_lmdb_cursor_get(h->c, &h->k, &h->d, MDB_NEXT);
        if (st_lmdb_damage(rc)) {
            st_report_damage(s, topics[i].name, topics[i].len, h->last_delivered, "damaged page");
            infos[i].gap = 1;
            broken = 1;
            rc = 0;
            break;
        }
        if (rc && rc != MDB_NOTFOUND) goto done;
        if (rc == 0 && head_valid(h)) {
            h->seq = st_get_be64((const unsigned char *)h->k.mv_data + 4);
        } else {
            heap[0] = heap[--nheap];
        }
        rc = 0;
        heap_down(heap, nheap, 0, hs);
    }
    /* Then the tail: every seq in it is above every seq in the snapshot. */
    while (!stopped && !broken && !(limit && delivered == limit)) {
        struct head *h = NULL;
        size_t at = 0;
        for (size_t i = 0; i < n; i++)
            if (hs[i].tm && (!h || hs[i].tm->seq < h->tm->seq)) {
                h = &hs[i];
                at = i;
            }
        if (!h) break;
        struct tail_msg *m = h->tm;
        struct store_view v = {.topic_index = at,
                               .seq = m->seq,
                               .epoch = m->epoch,
                               .time_ms = m->time_ms,
                               .event = m->event_len ? m->bytes : NULL,
                               .event_len = m->event_len,
                               .data = m->bytes + m->event_len,
                               .data_len = m->data_len,
                               .flags = m->flags};
        delivered++;
        infos[at].delivered++;
        h->tm = m->topic_next;
        stopped = fn(ud, &v);
    }
    /* Retention only removes from the front, so while a topic has messages
     * its newest retained one is last_seq. */
    for (size_t i = 0; i < n; i++)
        infos[i].more = (hs[i].c && hs[i].last_delivered < hs[i].last_seq) || hs[i].tm;

done:
    for (size_t i = 0; i < n && hs; i++)
        if (hs[i].c) mdb_cursor_close(hs[i].c);
    if (txn) st_txn_end(s, txn);
    pthread_rwlock_unlock(&s->tail.lock);
    if (n > 4) {
        free(hs);
        free(heap);
        free(own_infos);
    }
    return st_map_rc(rc);
}

int store_read(struct store *s, const char *topic, size_t topic_len, uint64_t after_seq,
               size_t limit, store_read_fn fn, void *ud, struct store_read_info *info)
{
    struct store_topic_ref ref = {topic, topic_len};
    struct store_read_info local;
    if (!info) info = &local;
    memset(info, 0, sizeof *info);
    return store_read_multi(s, &ref, 1, after_seq, limit, fn, ud, info);
}

/* LMDB's default key order: bytes, then length. */
static int name_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    return c ? c : (alen > blen) - (alen < blen);
}

static int tail_topic_cmp(const void *x, const void *y)
{
    const struct tail_topic *a = *(struct tail_topic *const *)x,
                            *b = *(struct tail_topic *const *)y;
    return name_cmp(a->name, a->len, b->name, b->len);
}

/* Add to ti what the tail holds past LMDB's part of the topic (rec, or
 * zeroes), with retention over both applied as in store_read_multi. */
static int tail_topic_info(struct store *s, MDB_txn *txn, const struct topic_rec *rec,
                           const struct tail_topic *tt, struct store_topic_info *ti)
{
    struct topic_view tv;
    int rc = topic_view(s, txn, rec, tt, 1, &tv);
    if (rc || !tv.newest) return rc;
    ti->count = tv.keep_db + tv.tn;
    ti->dropped_seq = tv.dropped;
    if (tv.keep_db) {
        if (tv.first_db != rec->first_seq &&
            (rc = st_msg_epoch(s, txn, rec->number, tv.first_db, &ti->first_epoch)))
            return rc;
        ti->first_seq = tv.first_db;
    } else if (tv.tm) {
        ti->first_seq = tv.tm->seq;
        ti->first_epoch = tv.tm->epoch;
    }
    ti->last_seq = tv.newest->seq;
    ti->last_epoch = tv.newest->epoch;
    ti->max_count = tv.newest->max_count;
    ti->max_age_ms = tv.newest->max_age_ms;
    return 0;
}

int store_topics(struct store *s, store_topic_fn fn, void *ud)
{
    MDB_txn *txn = NULL;
    MDB_cursor *c = NULL;
    MDB_val k, d;
    struct tail_topic **extra = NULL;
    size_t nextra = 0, ei = 0;
    int rc, stop = 0;

    if (!fn) return SL_EINVAL;
    pthread_rwlock_rdlock(&s->tail.lock);
    if ((rc = st_txn_begin(s, MDB_RDONLY, &txn))) {
        txn = NULL;
        goto out;
    }
    /* Topics only the tail has yet, in LMDB's order, to merge in. */
    if (s->tail.ntopics) {
        extra = malloc(s->tail.ntopics * sizeof *extra);
        if (!extra) {
            rc = ENOMEM;
            goto out;
        }
        for (size_t b = 0; b < s->tail.nbuckets; b++)
            for (struct tail_topic *tt = s->tail.buckets[b]; tt; tt = tt->hnext) {
                MDB_val key = {tt->len, tt->name};
                if (!tt->count) continue;
                rc = st_lmdb_get(txn, s->topics, &key, &d);
                if (rc == MDB_NOTFOUND)
                    extra[nextra++] = tt;
                else if (rc)
                    goto out;
            }
        rc = 0;
        qsort(extra, nextra, sizeof *extra, tail_topic_cmp);
    }
    if ((rc = mdb_cursor_open(txn, s->topics, &c))) goto out;
    rc = st_lmdb_cursor_get(c, &k, &d, MDB_FIRST);
    while (!stop) {
        struct topic_rec rec;
        struct store_topic_info ti;
        memset(&ti, 0, sizeof ti);
        int from_db = rc == 0;
        if (rc && rc != MDB_NOTFOUND) break;
        if (ei < nextra &&
            (!from_db || name_cmp(extra[ei]->name, extra[ei]->len, k.mv_data, k.mv_size) < 0)) {
            struct topic_rec none = {0};
            ti.name = extra[ei]->name;
            ti.name_len = extra[ei]->len;
            if ((rc = tail_topic_info(s, txn, &none, extra[ei++], &ti))) break;
            stop = fn(ud, &ti);
            rc = from_db ? 0 : MDB_NOTFOUND;
            continue;
        }
        if (!from_db) break;
        if (d.mv_size != sizeof rec) {
            rc = MDB_CORRUPTED;
            break;
        }
        memcpy(&rec, d.mv_data, sizeof rec);
        ti.name = k.mv_data;
        ti.name_len = k.mv_size;
        ti.number = rec.number;
        ti.count = rec.count;
        ti.dropped_seq = rec.dropped_seq;
        ti.max_count = rec.max_count;
        ti.max_age_ms = rec.max_age_ms;
        if (rec.count) {
            ti.last_seq = rec.last_seq;
            ti.first_seq = rec.first_seq;
            if ((rc = st_msg_epoch(s, txn, rec.number, rec.first_seq, &ti.first_epoch)) ||
                (rc = st_msg_epoch(s, txn, rec.number, rec.last_seq, &ti.last_epoch)))
                break;
        }
        struct tail_topic *tt = s->tail.count ? st_tail_find(&s->tail, k.mv_data, k.mv_size,
                                                             st_fnv1a(k.mv_data, k.mv_size))
                                              : NULL;
        if (tt && (rc = tail_topic_info(s, txn, &rec, tt, &ti))) break;
        if (!ti.count) ti.first_seq = ti.last_seq = ti.first_epoch = ti.last_epoch = 0;
        stop = fn(ud, &ti);
        rc = st_lmdb_cursor_get(c, &k, &d, MDB_NEXT);
    }
    if (rc == MDB_NOTFOUND) rc = 0;
out:
    if (c) mdb_cursor_close(c);
    if (txn) st_txn_end(s, txn);
    pthread_rwlock_unlock(&s->tail.lock);
    free(extra);
    return st_map_rc(rc);
}

int store_stats(struct store *s, struct store_stats *st)
{
    MDB_txn *txn;
    MDB_envinfo info;
    MDB_stat ms;
    struct stat sb;
    int rc;

    memset(st, 0, sizeof *st);
    pthread_rwlock_rdlock(&s->tail.lock); /* before the txn, as every reader */
    if ((rc = st_txn_begin(s, MDB_RDONLY, &txn))) {
        pthread_rwlock_unlock(&s->tail.lock);
        return st_map_rc(rc);
    }
    if ((rc = mdb_env_info(s->env, &info))) goto out;
    if ((rc = mdb_stat(txn, s->msgs, &ms))) goto out;
    st->messages = ms.ms_entries;
    st->page_size = ms.ms_psize;
    if ((rc = mdb_stat(txn, s->topics, &ms))) goto out;
    st->topics = ms.ms_entries;
    if ((rc = st_meta_get_u64(s, txn, "last_seq", &st->last_seq))) goto out;
    /* The tail's messages that this snapshot lacks count as stored
     * (retention trims some of them at the checkpoint); topics only the
     * tail has count too. */
    uint64_t in_db = 0;
    for (const struct tail_msg *m = s->tail.first; m && m->seq <= st->last_seq; m = m->next)
        in_db++;
    st->messages += s->tail.count - in_db;
    st->log_messages = s->tail.count - in_db;
    st->checkpoints = atomic_load(&s->checkpoints);
    st->checkpoint_failures = atomic_load(&s->checkpoint_failures);
    st->damaged = atomic_load(&s->damaged);
    st->duplicates = atomic_load(&s->duplicates);
    if (st->last_seq < s->tail.last_seq && s->tail.count) st->last_seq = s->tail.last_seq;
    for (size_t b = 0; b < s->tail.nbuckets && rc == 0; b++)
        for (struct tail_topic *tt = s->tail.buckets[b]; tt && rc == 0; tt = tt->hnext) {
            MDB_val key = {tt->len, tt->name}, val;
            if (!tt->count) continue;
            rc = st_lmdb_get(txn, s->topics, &key, &val);
            if (rc == MDB_NOTFOUND) {
                st->topics++;
                rc = 0;
            }
        }
    if (rc) goto out;
    st->map_bytes = info.me_mapsize;
    st->used_bytes = (uint64_t)(info.me_last_pgno + 1) * st->page_size;
    if (stat(s->data_path, &sb) == 0) st->file_bytes = (uint64_t)sb.st_blocks * 512;
    st->epoch = store_epoch(s);
    st->map_grows = atomic_load(&s->grows);
    st->relaxed = s->relaxed;
out:
    st_txn_end(s, txn);
    pthread_rwlock_unlock(&s->tail.lock);
    return st_map_rc(rc);
}

uint64_t store_wal_salt(const struct store *s)
{
    return s->wal_salt;
}
