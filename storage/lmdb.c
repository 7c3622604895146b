/* lmdb.c: the LMDB layer of the store (see store_internal.h): transactions
 * under the map lock, LMDB's assertions on damaged pages, meta, the message
 * format and its checksum, retention in a write transaction, commits, and
 * the idempotency keys. */
#include "storage/store_internal.h"

/* ---- transactions under the map lock ----------------------------------- */

/* Adopt a map size another process set (read-only handles see this). */
static void adopt_mapsize(struct store *s)
{
    pthread_rwlock_wrlock(&s->maplock);
    mdb_env_set_mapsize(s->env, 0);
    pthread_rwlock_unlock(&s->maplock);
}

/* Begin a transaction holding the read side of maplock; on success the
 * caller ends it with st_txn_end (or commits and unlocks itself). */
int st_txn_begin(struct store *s, unsigned flags, MDB_txn **txn)
{
    int rc = MDB_MAP_RESIZED;
    for (int i = 0; i < 3 && rc == MDB_MAP_RESIZED; i++) {
        pthread_rwlock_rdlock(&s->maplock);
        rc = mdb_txn_begin(s->env, NULL, flags, txn);
        if (rc == 0) return 0;
        pthread_rwlock_unlock(&s->maplock);
        if (rc == MDB_MAP_RESIZED) adopt_mapsize(s);
    }
    return rc;
}

void st_txn_end(struct store *s, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&s->maplock);
}

/* ---- LMDB's assertions on damaged pages ----------------------------------- */

/* LMDB 0.9 does not check the type of a page it steps or searches to: on a
 * damaged page (a zeroed one is no leaf) an assertion fails and LMDB
 * aborts the process, after calling the environment's assert function.
 * Every lookup and cursor move here is made through the two wrappers
 * below, which arm a jump: the assert function (st_on_lmdb_assert) jumps
 * back and the lookup returns MDB_CORRUPTED, so a damaged page fails the
 * read that meets it (reported, see st_report_damage) instead of stopping
 * the server.  Lookups and moves only read pages and hold no lock inside
 * LMDB, so leaving them midway leaves nothing half-done: the cursor is
 * abandoned (closed by its owner) and the transaction aborted as after
 * any error.  Puts and deletes are not wrapped: there the abort stays. */
static __thread jmp_buf *lmdb_guard;

int st_lmdb_cursor_get(MDB_cursor *c, MDB_val *k, MDB_val *d, MDB_cursor_op op)
{
    jmp_buf jb, *volatile prev = lmdb_guard;
    if (setjmp(jb)) {
        lmdb_guard = prev;
        return MDB_CORRUPTED;
    }
    lmdb_guard = &jb;
    int rc = mdb_cursor_get(c, k, d, op);
    lmdb_guard = prev;
    return rc;
}

int st_lmdb_get(MDB_txn *txn, MDB_dbi dbi, MDB_val *k, MDB_val *d)
{
    jmp_buf jb, *volatile prev = lmdb_guard;
    if (setjmp(jb)) {
        lmdb_guard = prev;
        return MDB_CORRUPTED;
    }
    lmdb_guard = &jb;
    int rc = mdb_get(txn, dbi, k, d);
    lmdb_guard = prev;
    return rc;
}

/* The environment's assert function: back to the guarded lookup, or,
 * where there is none, a line that says why LMDB is about to abort. */
void st_on_lmdb_assert(MDB_env *env, const char *msg)
{
    const char *path = NULL;
    if (lmdb_guard) longjmp(*lmdb_guard, 1);
    if (mdb_env_get_path(env, &path) || !path) path = "?";
    fprintf(stderr,
            "sluice: LMDB stopped the process at a damaged page of %s/data.mdb (%s); "
            "`sluice check -d %s` tells what is damaged\n",
            path, msg, path);
    fflush(stderr);
}

/* Grow the map to at least twice its size (bounded by map_max).  No
 * transaction of this thread may be open; others are waited for. */
static int grow_map(struct store *s, size_t at_least)
{
    MDB_envinfo info;
    int rc = 0;
    pthread_rwlock_wrlock(&s->maplock);
    if (mdb_env_info(s->env, &info) == 0) {
        size_t cur = info.me_mapsize, want = cur * 2;
        if (want < at_least) want = at_least;
        if (s->map_max && want > s->map_max) want = s->map_max;
        if (want <= cur) {
            rc = MDB_MAP_FULL;
        } else {
            rc = mdb_env_set_mapsize(s->env, want);
            if (rc == 0) atomic_fetch_add(&s->grows, 1);
        }
    } else {
        rc = EIO;
    }
    pthread_rwlock_unlock(&s->maplock);
    return rc;
}

/* Past 3/4 of the map, grow now rather than meet MDB_MAP_FULL mid-batch. */
static void grow_ahead(struct store *s)
{
    MDB_envinfo info;
    MDB_stat st;
    if (mdb_env_info(s->env, &info) || mdb_env_stat(s->env, &st)) return;
    size_t used = (info.me_last_pgno + 1) * (size_t)st.ms_psize;
    if (used > info.me_mapsize / 4 * 3) grow_map(s, 0);
}

/* Run op in a write transaction and commit it, growing the map and redoing
 * the transaction on MDB_MAP_FULL.  op returns an LMDB or errno code. */
int st_write_txn(struct store *s, write_op op, void *arg, uint64_t *last_seq_out)
{
    int rc = MDB_MAP_FULL;
    if (s->read_only) return SL_EROFS;
    for (int attempt = 0; attempt < GROW_RETRIES && rc == MDB_MAP_FULL; attempt++) {
        MDB_txn *txn;
        rc = st_txn_begin(s, 0, &txn);
        if (rc) break;
        rc = op(s, txn, arg);
        if (rc == 0) {
            rc = mdb_txn_commit(txn);
        } else {
            mdb_txn_abort(txn);
        }
        pthread_rwlock_unlock(&s->maplock);
        if (rc == MDB_MAP_FULL) {
            int g = grow_map(s, 0);
            if (g) {
                rc = g;
                break;
            }
        }
    }
    if (rc == 0) {
        if (last_seq_out) atomic_store(&s->last_seq, *last_seq_out);
        grow_ahead(s);
    }
    return st_map_rc(rc);
}

/* ---- meta ---------------------------------------------------------------- */

int st_meta_get_u64(struct store *s, MDB_txn *txn, const char *name, uint64_t *v)
{
    MDB_val k = {strlen(name), (void *)name}, d;
    int rc = st_lmdb_get(txn, s->meta, &k, &d);
    if (rc == MDB_NOTFOUND) {
        *v = 0;
        return 0;
    }
    if (rc) return rc;
    if (d.mv_size != 8) return MDB_CORRUPTED;
    *v = st_get_u64(d.mv_data);
    return 0;
}

int st_meta_put_u64(struct store *s, MDB_txn *txn, const char *name, uint64_t v)
{
    MDB_val k = {strlen(name), (void *)name}, d = {8, &v};
    return mdb_put(txn, s->meta, &k, &d, 0);
}

int st_topic_get(struct store *s, MDB_txn *txn, const char *name, size_t len, struct topic_rec *rec)
{
    MDB_val k = {len, (void *)name}, d;
    int rc = st_lmdb_get(txn, s->topics, &k, &d);
    if (rc) return rc;
    if (d.mv_size != sizeof *rec) return MDB_CORRUPTED;
    memcpy(rec, d.mv_data, sizeof *rec);
    return 0;
}

int st_topic_put(struct store *s, MDB_txn *txn, const char *name, size_t len,
                 const struct topic_rec *rec)
{
    MDB_val k = {len, (void *)name}, d = {sizeof *rec, (void *)rec};
    return mdb_put(txn, s->topics, &k, &d, 0);
}

uint64_t st_random_epoch(uint64_t avoid)
{
    uint64_t e = 0;
    for (int i = 0; i < 16 && (e == 0 || e == avoid); i++) {
        if (getrandom(&e, sizeof e, 0) != (ssize_t)sizeof e) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            e = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec ^
                (uint64_t)getpid() << 32;
        }
    }
    return e ? e : 1;
}

/* Start this handle's epoch at last_seq + 1.  If the newest epoch never got
 * a committed message, it is replaced: that keeps the table to one entry per
 * run that stored something, and IDs handed out by a run whose commits were
 * all lost (relaxed mode, OS crash) still become unknown. */
int st_epoch_start(struct store *s, MDB_txn *txn, uint64_t last_seq)
{
    MDB_cursor *c;
    MDB_val k, d;
    unsigned char key[8];
    uint64_t prev = 0;
    int rc = mdb_cursor_open(txn, s->epochs, &c);
    if (rc) return rc;
    rc = st_lmdb_cursor_get(c, &k, &d, MDB_LAST);
    if (rc == 0 && k.mv_size == 8 && d.mv_size == 8) {
        prev = st_get_u64(d.mv_data);
        if (st_get_be64(k.mv_data) > last_seq) {
            rc = mdb_cursor_del(c, 0);
            if (rc) goto out;
        }
    } else if (rc != MDB_NOTFOUND) {
        rc = rc ? rc : MDB_CORRUPTED;
        goto out;
    }
    s->epoch = st_random_epoch(prev);
    s->epoch_first = last_seq + 1;
    st_put_be64(key, last_seq + 1);
    k.mv_size = 8;
    k.mv_data = key;
    d.mv_size = 8;
    d.mv_data = &s->epoch;
    rc = mdb_put(txn, s->epochs, &k, &d, 0);
out:
    mdb_cursor_close(c);
    return rc;
}

/* ---- messages: format, checksum ------------------------------------------ */

/* The first seq whose message has a flags byte, for a store of this
 * version: FLAGS_NEVER below format 3; else meta "flags_from" (absent: 0,
 * a store made in format 3). */
int st_flags_from_load(struct store *s, MDB_txn *txn, uint64_t version, uint64_t *from)
{
    if (version < 3) {
        *from = FLAGS_NEVER;
        return 0;
    }
    return st_meta_get_u64(s, txn, "flags_from", from);
}

int st_fmt_load(struct store *s, MDB_txn *txn, struct fmt *f)
{
    uint64_t version;
    f->all = 1;
    f->has_below = 0;
    f->flags_from = atomic_load(&s->flags_from);
    if (s->read_only) {
        /* The server beside us may have moved the store to format 3
         * since our open. */
        int rc = st_meta_get_u64(s, txn, "version", &version);
        if (!rc) rc = st_flags_from_load(s, txn, version, &f->flags_from);
        if (rc) return rc;
    }
    if (atomic_load(&s->all_summed)) return 0;
    MDB_val k = {8, "migrated"}, d;
    int rc = st_meta_get_u64(s, txn, "version", &version);
    if (rc) return rc;
    if (version >= 2) {
        atomic_store(&s->all_summed, 1);
        return 0;
    }
    f->all = 0;
    rc = st_lmdb_get(txn, s->meta, &k, &d);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    if (d.mv_size != 12) return MDB_CORRUPTED;
    memcpy(f->below, d.mv_data, 12);
    f->has_below = 1;
    return 0;
}

int st_fmt_summed(const struct fmt *f, const MDB_val *k)
{
    return f->all || (f->has_below && k->mv_size == 12 && memcmp(k->mv_data, f->below, 12) < 0);
}

/* The CRC of a format 2 message: its key, then its value but the CRC. */
uint32_t st_msg_sum(const void *key, const void *val, size_t len)
{
    return crc32c_end(crc32c_update(crc32c_update(crc32c_begin(), key, 12), val, len));
}

/* Check and take apart the message (k, d): 0, or MSG_BAD when its layout
 * or its CRC is wrong (damaged: never to be served). */
int st_msg_parse(const struct fmt *f, const MDB_val *k, const MDB_val *d, struct msg_parts *m)
{
    const unsigned char *p = d->mv_data;
    size_t size = d->mv_size, sum = 0, hdr = MSG_HDR;
    if (k->mv_size != 12 || size < MSG_HDR) return MSG_BAD;
    if (st_fmt_summed(f, k)) {
        uint32_t crc;
        sum = MSG_SUM;
        if (size < MSG_HDR + MSG_SUM) return MSG_BAD;
        memcpy(&crc, p + size - MSG_SUM, 4);
        if (crc != st_msg_sum(k->mv_data, p, size - MSG_SUM)) return MSG_BAD;
        if (st_get_be64((const unsigned char *)k->mv_data + 4) >= f->flags_from) hdr = MSG_HDR3;
    }
    size_t ev = p[16], kl = p[17];
    if (!sum && kl) return MSG_BAD; /* format 1: a u16 event length, at most 255 */
    if (hdr + ev + kl + sum > size) return MSG_BAD;
    memcpy(&m->epoch, p, 8);
    memcpy(&m->time_ms, p + 8, 8);
    m->flags = hdr == MSG_HDR3 ? p[18] & STORE_MSG_JSON : 0;
    m->event = ev ? (const char *)p + hdr : NULL;
    m->event_len = ev;
    m->ikey = kl ? (const char *)p + hdr + ev : NULL;
    m->ikey_len = kl;
    m->data = p + hdr + ev + kl;
    m->data_len = size - hdr - ev - kl - sum;
    return 0;
}

/* Bytes of a format 3 value (format 2: one less). */
static size_t msg_size(size_t event_len, size_t ikey_len, size_t data_len)
{
    return MSG_HDR3 + event_len + ikey_len + data_len + MSG_SUM;
}

/* Write a format 3 value at p (msg_size bytes) for key; hdr MSG_HDR
 * writes format 2 instead (no flags byte, one byte shorter). */
static void msg_write(unsigned char *p, const unsigned char key[12], size_t hdr, uint64_t epoch,
                      int64_t time_ms, unsigned flags, const char *event, size_t ev,
                      const char *ikey, size_t kl, const void *data, size_t dl)
{
    size_t n = hdr + ev + kl + dl;
    memcpy(p, &epoch, 8);
    memcpy(p + 8, &time_ms, 8);
    p[16] = (unsigned char)ev;
    p[17] = (unsigned char)kl;
    if (hdr == MSG_HDR3) p[18] = (unsigned char)flags;
    if (ev) memcpy(p + hdr, event, ev);
    if (kl) memcpy(p + hdr + ev, ikey, kl);
    if (dl) memcpy(p + hdr + ev + kl, data, dl);
    uint32_t crc = st_msg_sum(key, p, n);
    memcpy(p + n, &crc, 4);
}

/* A damaged message or page met by a read: counted, and told. */
void st_report_damage(struct store *s, const char *topic, size_t topic_len, uint64_t seq,
                      const char *what)
{
    atomic_fetch_add(&s->damaged, 1);
    if (s->damage_fn) {
        struct store_damage d = {topic, topic_len, seq, what};
        s->damage_fn(s->damage_ud, &d);
    }
}

/* LMDB's answers that mean a damaged file rather than a failed call. */
int st_lmdb_damage(int rc)
{
    return rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND;
}

/* ---- retention inside a write transaction -------------------------------- */

/* Delete from the front of the topic while over max_count or older than
 * max_age_ms; update rec.  O(deleted + 1). */
int st_trim_txn(struct store *s, MDB_txn *txn, struct topic_rec *rec, uint64_t max_count,
                uint64_t max_age_ms, int64_t now_ms, uint64_t *deleted)
{
    MDB_cursor *c;
    MDB_val k, d;
    unsigned char key[12];
    uint64_t excess = (max_count && rec->count > max_count) ? rec->count - max_count : 0;
    int64_t cutoff = max_age_ms ? now_ms - (int64_t)max_age_ms : INT64_MIN;
    int rc;

    if (rec->count == 0 || (excess == 0 && max_age_ms == 0)) return 0;
    if ((rc = mdb_cursor_open(txn, s->msgs, &c))) return rc;
    st_msg_key(key, rec->number, 0);
    k.mv_size = sizeof key;
    k.mv_data = key;
    rc = st_lmdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
    while (rc == 0) {
        if (k.mv_size != 12 || st_get_be32(k.mv_data) != rec->number) break;
        uint64_t seq = st_get_be64((const unsigned char *)k.mv_data + 4);
        if (excess == 0) {
            int64_t t;
            if (d.mv_size < MSG_HDR) {
                rc = MDB_CORRUPTED;
                break;
            }
            memcpy(&t, (const char *)d.mv_data + 8, 8);
            if (t >= cutoff) break;
        } else {
            excess--;
        }
        if ((rc = mdb_cursor_del(c, 0))) break;
        rec->dropped_seq = seq;
        rec->count--;
        if (deleted) (*deleted)++;
        /* After a delete LMDB's cursor already sits on the next item and
         * MDB_NEXT returns it without moving. */
        rc = st_lmdb_cursor_get(c, &k, &d, MDB_NEXT);
    }
    if (rc == MDB_NOTFOUND) rc = 0;
    if (rc == 0) {
        if (rec->count == 0)
            rec->first_seq = 0;
        else if (k.mv_size == 12 && st_get_be32(k.mv_data) == rec->number)
            rec->first_seq = st_get_be64((const unsigned char *)k.mv_data + 4);
        else
            rc = MDB_CORRUPTED; /* count says messages remain, none found */
    }
    mdb_cursor_close(c);
    return rc;
}

/* ---- append ---------------------------------------------------------------- */

struct touched {
    const char *name;
    size_t len;
    uint64_t hash;
    struct topic_rec rec;
    uint64_t max_count, max_age_ms;
    int64_t now_ms; /* of its last message: age retention counts from it */
    /* The most of its oldest messages any message of the batch drops: each
     * keeps its own max_count newest as of its append, so a later, larger
     * limit brings none back. */
    uint64_t drop;
};

struct append_arg {
    struct store_msg *msgs;
    size_t n;
    int64_t now_ms;
    /* A checkpoint (NULL otherwise): the messages come with their seqs and
     * epochs (in msgs) and publish times (here) from the log. */
    const int64_t *times;
    uint64_t salt; /* the log's next salt, to record (0: none) */
    uint64_t last_seq;
    struct touched *t; /* open-addressed by name, cap slots */
    size_t cap;
};

uint64_t st_fnv1a(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    while (n--)
        h = (h ^ (unsigned char)*p++) * 0x100000001b3ull;
    return h;
}

int st_msg_valid(const struct store_msg *m)
{
    if (!m->topic || m->topic_len == 0 || m->topic_len > STORE_TOPIC_MAX) return 0;
    if (m->event_len > STORE_EVENT_MAX || (m->event_len && !m->event)) return 0;
    if (m->data_len && !m->data) return 0;
    if (m->data_len > (size_t)1 << 31) return 0;
    if (m->ikey_len > STORE_IKEY_MAX || (m->ikey_len && !m->ikey)) return 0;
    if (m->flags & ~STORE_MSG_JSON) return 0;
    return 1;
}

/* ---- idempotency keys ----------------------------------------------------- */

/* idem: topic number BE32 ‖ key -> seq, epoch, time (24 bytes), the
 * newest message of the topic with that key; idem_time: time BE64 ‖ seq
 * BE64 -> topic number BE32 ‖ key, in the order they leave the window
 * (store_sweep removes both then).  Written in the message's own
 * transaction, so a key is never without its message nor the reverse. */
static size_t idem_key(unsigned char *out, uint32_t number, const char *key, size_t len)
{
    st_put_be32(out, number);
    memcpy(out + 4, key, len);
    return 4 + len;
}

/* The message of the topic with this key, if published at or after
 * now_ms - the window: 0 and its ID, or MDB_NOTFOUND. */
int st_idem_find(struct store *s, MDB_txn *txn, uint32_t number, const char *key, size_t len,
                 int64_t now_ms, uint64_t *seq, uint64_t *epoch)
{
    unsigned char kb[4 + STORE_IKEY_MAX];
    MDB_val k = {idem_key(kb, number, key, len), kb}, d;
    int64_t t;
    if (!s->has_idem) return MDB_NOTFOUND;
    int rc = st_lmdb_get(txn, s->idem, &k, &d);
    if (rc) return rc;
    if (d.mv_size != 24) return MDB_NOTFOUND; /* damaged: not a duplicate */
    memcpy(&t, (const char *)d.mv_data + 16, 8);
    if (t < now_ms - (int64_t)s->dedup_window_ms) return MDB_NOTFOUND;
    *seq = st_get_u64(d.mv_data);
    *epoch = st_get_u64((const char *)d.mv_data + 8);
    return 0;
}

static int idem_put(struct store *s, MDB_txn *txn, uint32_t number, const char *key, size_t len,
                    uint64_t seq, uint64_t epoch, int64_t time_ms)
{
    unsigned char kb[4 + STORE_IKEY_MAX], tk[16];
    uint64_t v[3] = {seq, epoch, (uint64_t)time_ms};
    MDB_val k = {idem_key(kb, number, key, len), kb}, d = {24, v};
    int rc = mdb_put(txn, s->idem, &k, &d, 0);
    if (rc) return rc;
    st_put_be64(tk, (uint64_t)time_ms);
    st_put_be64(tk + 8, seq);
    MDB_val tkv = {16, tk};
    return mdb_put(txn, s->idem_time, &tkv, &k, 0);
}

/* Remove up to `budget` keys that left the window before now_ms; *due
 * (dry: look only) says whether one has.  O(removed). */
int st_idem_expire(struct store *s, MDB_txn *txn, int64_t now_ms, size_t budget, int dry, int *due)
{
    MDB_cursor *c;
    MDB_val k, d;
    int64_t cutoff = now_ms - (int64_t)s->dedup_window_ms;
    int rc;
    if (!s->has_idem) return 0;
    if ((rc = mdb_cursor_open(txn, s->idem_time, &c))) return rc;
    rc = st_lmdb_cursor_get(c, &k, &d, MDB_FIRST);
    for (size_t n = 0; rc == 0 && n < budget; n++) {
        if (k.mv_size != 16 || (int64_t)st_get_be64(k.mv_data) >= cutoff) break;
        if (dry) {
            *due = 1;
            break;
        }
        uint64_t seq = st_get_be64((const unsigned char *)k.mv_data + 8);
        unsigned char kb[4 + STORE_IKEY_MAX];
        if (d.mv_size > sizeof kb) break;
        memcpy(kb, d.mv_data, d.mv_size);
        MDB_val ik = {d.mv_size, kb}, iv;
        /* Only if no newer message of the topic took the key since. */
        rc = st_lmdb_get(txn, s->idem, &ik, &iv);
        if (rc == 0 && iv.mv_size == 24 && st_get_u64(iv.mv_data) == seq)
            rc = mdb_del(txn, s->idem, &ik, NULL);
        if (rc && rc != MDB_NOTFOUND) break;
        if ((rc = mdb_cursor_del(c, 0))) break;
        /* After a delete the cursor sits on the next item already. */
        rc = st_lmdb_cursor_get(c, &k, &d, MDB_NEXT);
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int append_op(struct store *s, MDB_txn *txn, void *argp)
{
    struct append_arg *a = argp;
    uint64_t last, next_topic = 0;
    int rc, new_topics = 0;

    memset(a->t, 0, a->cap * sizeof *a->t);
    if ((rc = st_meta_get_u64(s, txn, "last_seq", &last))) return rc;

    for (size_t i = 0; i < a->n; i++) {
        struct store_msg *m = &a->msgs[i];
        m->duplicate = 0; /* (again, if the transaction is redone) */
        if (!st_msg_valid(m)) {
            m->status = SL_EINVAL;
            m->seq = 0;
            continue;
        }
        uint64_t h = st_fnv1a(m->topic, m->topic_len);
        size_t slot = h & (a->cap - 1);
        struct touched *t;
        for (;;) {
            t = &a->t[slot];
            if (!t->name) break;
            if (t->hash == h && t->len == m->topic_len && !memcmp(t->name, m->topic, t->len)) break;
            slot = (slot + 1) & (a->cap - 1);
        }
        if (!t->name) {
            t->name = m->topic;
            t->len = m->topic_len;
            t->hash = h;
            rc = st_topic_get(s, txn, m->topic, m->topic_len, &t->rec);
            if (rc == MDB_NOTFOUND) {
                /* Read only when a batch makes a topic: most make none. */
                if (!new_topics && (rc = st_meta_get_u64(s, txn, "next_topic", &next_topic)))
                    return rc;
                if (next_topic >= UINT32_MAX) return EOVERFLOW;
                memset(&t->rec, 0, sizeof t->rec);
                t->rec.number = (uint32_t)next_topic++;
                new_topics = 1;
            } else if (rc) {
                return rc;
            }
            /* Kept as they are if the batch brings only duplicates. */
            t->max_count = t->rec.max_count;
            t->max_age_ms = t->rec.max_age_ms;
            t->now_ms = a->now_ms;
        }
        size_t kl = m->ikey ? m->ikey_len : 0;
        if (kl && !a->times) {
            /* A retry of a publish stored within the window?  (An entry
             * of this batch is found too: it is put in this txn.) */
            rc = st_idem_find(s, txn, t->rec.number, m->ikey, kl, a->now_ms, &m->seq, &m->epoch);
            if (rc == 0) {
                m->status = 0;
                m->duplicate = 1;
                continue;
            }
            if (rc != MDB_NOTFOUND) return rc;
        }
        uint64_t seq = a->times ? m->seq : last + 1;
        if (seq <= last) return MDB_CORRUPTED; /* a log behind the store */
        last = seq;
        unsigned char key[12];
        st_msg_key(key, t->rec.number, seq);
        size_t ev = m->event ? m->event_len : 0;
        /* Format 3 from flags_from on (every write of an open store). */
        size_t hdr = seq >= atomic_load(&s->flags_from) ? MSG_HDR3 : MSG_HDR;
        MDB_val k = {sizeof key, key},
                d = {msg_size(ev, kl, m->data_len) - (MSG_HDR3 - hdr), NULL};
        if ((rc = mdb_put(txn, s->msgs, &k, &d, MDB_RESERVE))) return rc;
        uint64_t epoch = a->times ? m->epoch : s->epoch;
        int64_t time_ms = a->times ? a->times[i] : a->now_ms;
        msg_write(d.mv_data, key, hdr, epoch, time_ms, m->flags, m->event, ev, m->ikey, kl,
                  m->data, m->data_len);
        if (kl && (rc = idem_put(s, txn, t->rec.number, m->ikey, kl, seq, epoch, time_ms)))
            return rc;

        t->rec.count++;
        if (!t->rec.first_seq) t->rec.first_seq = seq;
        t->rec.last_seq = seq;
        if (m->max_count && t->rec.count > m->max_count && t->rec.count - m->max_count > t->drop)
            t->drop = t->rec.count - m->max_count;
        t->max_count = m->max_count;
        t->max_age_ms = m->max_age_ms;
        t->now_ms = a->times ? a->times[i] : a->now_ms;
        m->status = 0;
        m->seq = seq;
        m->epoch = epoch;
    }
    for (size_t i = 0; i < a->cap; i++) {
        struct touched *t = &a->t[i];
        if (!t->name) continue;
        t->rec.max_count = t->max_count;
        t->rec.max_age_ms = t->max_age_ms;
        /* (drop < count: every max_count is at least 1.) */
        uint64_t keep = t->drop ? t->rec.count - t->drop : 0;
        if ((rc = st_trim_txn(s, txn, &t->rec, keep, t->max_age_ms, t->now_ms, NULL))) return rc;
        if ((rc = st_topic_put(s, txn, t->name, t->len, &t->rec))) return rc;
    }
    if ((rc = st_meta_put_u64(s, txn, "last_seq", last))) return rc;
    if (new_topics && (rc = st_meta_put_u64(s, txn, "next_topic", next_topic))) return rc;
    if (a->salt && (rc = st_meta_put_u64(s, txn, "wal_salt", a->salt))) return rc;
    a->last_seq = last;
    return 0;
}

/* msgs in one synced LMDB commit, recording salt unless
 * 0; times NULL: new messages, given seqs now, else a checkpoint's (see
 * struct append_arg).  Any one thread at a time: it touches no field of
 * the log's. */
int st_commit_msgs(struct store *s, struct store_msg *msgs, size_t n, int64_t now_ms,
                   const int64_t *times, uint64_t salt)
{
    struct append_arg a = {.msgs = msgs, .n = n, .now_ms = now_ms, .times = times, .salt = salt};
    a.cap = 8;
    while (a.cap < n * 2)
        a.cap <<= 1;
    a.t = malloc(a.cap * sizeof *a.t);
    if (!a.t) return SL_ENOMEM;
    int code = st_write_txn(s, append_op, &a, times ? NULL : &a.last_seq);
    free(a.t);
    return code;
}

/* st_commit_msgs for the writing thread, which gives the log a salt that is
 * pending (after a failed log write). */
int st_append_commit(struct store *s, struct store_msg *msgs, size_t n, int64_t now_ms,
                     const int64_t *times)
{
    int code = st_commit_msgs(s, msgs, n, now_ms, times, s->salt_pending);
    if (code == 0 && s->salt_pending) {
        /* The logs' old records are now another salt's: start them anew.
         * (Only ever with no checkpoint in flight and the tail empty.) */
        s->wal_salt = s->salt_pending;
        s->salt_pending = 0;
        s->wal_failed = 0;
        for (int i = 0; i < 2; i++)
            if (s->logs[i]) wal_rewind(s->logs[i]);
    }
    return code;
}
