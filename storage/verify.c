/* verify.c: `sluice check`'s walk of a whole store: every message's
 * checksum, every database key by key, topics against their messages. */
#include "storage/store_internal.h"

#include "core/defs.h"

/* ---- verification ------------------------------------------------------------ */

struct verify {
    struct store *s;
    MDB_txn *txn;
    store_verify_fn fn;
    void *ud;
    struct store_verify_report *r;
};

static void vreport(struct verify *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void vreport(struct verify *v, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    v->r->problems++;
    if (v->fn) v->fn(v->ud, line);
}

/* Walk one database, calling each(v, k, d) per item; a cursor error (a
 * damaged page) is reported with the last good key's position and ends
 * the walk.  Compares the count with the database's own. */
static void vwalk(struct verify *v, MDB_dbi dbi, const char *name,
                  void (*each)(struct verify *v, const MDB_val *k, const MDB_val *d, void *arg),
                  void *arg)
{
    MDB_cursor *c;
    MDB_val k, d;
    MDB_stat st;
    uint64_t n = 0;
    int rc = mdb_cursor_open(v->txn, dbi, &c);
    if (rc) {
        vreport(v, "%s: cannot open a cursor: %s", name, mdb_strerror(rc));
        return;
    }
    for (rc = st_lmdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0;
         rc = st_lmdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        n++;
        if (each) each(v, &k, &d, arg);
    }
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND) {
        vreport(v, "%s: the walk stopped after %llu items: %s", name, (unsigned long long)n,
                mdb_strerror(rc));
        return;
    }
    if (mdb_stat(v->txn, dbi, &st) == 0 && st.ms_entries != n)
        vreport(v, "%s: %llu items found, %llu recorded", name, (unsigned long long)n,
                (unsigned long long)st.ms_entries);
}

struct vtopic {
    uint32_t number;
    struct topic_rec rec;
    uint64_t count, first, last;
    char name[STORE_TOPIC_MAX + 1];
};

struct vstate {
    uint64_t last_seq, next_topic;
    struct vtopic *topics; /* by number, sorted */
    size_t ntopics, cap;
    struct fmt fmt;
    uint64_t prev_epoch_start;
};

static void v_meta(struct verify *v, const MDB_val *k, const MDB_val *d, void *arg)
{
    (void)arg;
    int migrated = STR_IS(k->mv_data, k->mv_size, "migrated");
    if (migrated ? d->mv_size != 12 : d->mv_size != 8)
        vreport(v, "meta: value of \"%.*s\" has %zu bytes",
                (int)(k->mv_size > 40 ? 40 : k->mv_size), (const char *)k->mv_data, d->mv_size);
}

static void v_epoch(struct verify *v, const MDB_val *k, const MDB_val *d, void *arg)
{
    struct vstate *vs = arg;
    if (k->mv_size != 8 || d->mv_size != 8) {
        vreport(v, "epochs: an entry of %zu/%zu bytes", k->mv_size, d->mv_size);
        return;
    }
    uint64_t start = st_get_be64(k->mv_data);
    if (st_get_u64(d->mv_data) == 0)
        vreport(v, "epochs: epoch 0 from seq %llu", (unsigned long long)start);
    if (start > vs->last_seq + 1)
        vreport(v, "epochs: an epoch starts at seq %llu, past the last seq %llu",
                (unsigned long long)start, (unsigned long long)vs->last_seq);
}

static int vtopic_cmp(const void *a, const void *b)
{
    const struct vtopic *x = a, *y = b;
    return (x->number > y->number) - (x->number < y->number);
}

static void v_topic(struct verify *v, const MDB_val *k, const MDB_val *d, void *arg)
{
    struct vstate *vs = arg;
    struct topic_rec rec;
    v->r->topics++;
    if (k->mv_size == 0 || k->mv_size > STORE_TOPIC_MAX || d->mv_size != sizeof rec) {
        vreport(v, "topics: a record of %zu bytes under a name of %zu bytes", d->mv_size,
                k->mv_size);
        return;
    }
    memcpy(&rec, d->mv_data, sizeof rec);
    if (rec.number >= vs->next_topic)
        vreport(v, "topic %.*s: number %u not below next_topic %llu", (int)k->mv_size,
                (const char *)k->mv_data, rec.number, (unsigned long long)vs->next_topic);
    if (vs->ntopics == vs->cap) {
        size_t nc = vs->cap ? vs->cap * 2 : 64;
        struct vtopic *t = realloc(vs->topics, nc * sizeof *t);
        if (!t) {
            vreport(v, "out of memory");
            return;
        }
        vs->topics = t;
        vs->cap = nc;
    }
    struct vtopic *t = &vs->topics[vs->ntopics++];
    memset(t, 0, sizeof *t);
    t->number = rec.number;
    t->rec = rec;
    memcpy(t->name, k->mv_data, k->mv_size);
}

static struct vtopic *vtopic_find(struct vstate *vs, uint32_t number)
{
    struct vtopic key = {.number = number};
    return vs->ntopics ? bsearch(&key, vs->topics, vs->ntopics, sizeof key, vtopic_cmp) : NULL;
}

static void v_msg(struct verify *v, const MDB_val *k, const MDB_val *d, void *arg)
{
    struct vstate *vs = arg;
    struct msg_parts m;
    v->r->messages++;
    if (k->mv_size != 12) {
        vreport(v, "msgs: a key of %zu bytes", k->mv_size);
        return;
    }
    uint32_t number = st_get_be32(k->mv_data);
    uint64_t seq = st_get_be64((const unsigned char *)k->mv_data + 4);
    struct vtopic *t = vtopic_find(vs, number);
    const char *name = t ? t->name : "?";
    if (st_msg_parse(&vs->fmt, k, d, &m)) {
        v->r->bad_messages++;
        vreport(v, "topic %s (number %u), seq %llu: damaged message (%s)", name, number,
                (unsigned long long)seq,
                st_fmt_summed(&vs->fmt, k) ? "checksum or layout wrong" : "layout wrong");
    }
    if (!t) {
        vreport(v, "msgs: seq %llu under topic number %u, which has no record",
                (unsigned long long)seq, number);
        return;
    }
    if (seq > vs->last_seq)
        vreport(v, "topic %s: seq %llu past the store's last seq %llu", name,
                (unsigned long long)seq, (unsigned long long)vs->last_seq);
    if (seq <= t->rec.dropped_seq)
        vreport(v, "topic %s: seq %llu kept although retention dropped up to %llu", name,
                (unsigned long long)seq, (unsigned long long)t->rec.dropped_seq);
    t->count++;
    if (!t->first) t->first = seq;
    t->last = seq;
}

static void v_idem(struct verify *v, const MDB_val *k, const MDB_val *d, void *arg)
{
    struct vstate *vs = arg;
    if (k->mv_size < 5 || k->mv_size > 4 + STORE_IKEY_MAX || d->mv_size != 24) {
        vreport(v, "idem: an entry of %zu/%zu bytes", k->mv_size, d->mv_size);
        return;
    }
    if (st_get_u64(d->mv_data) > vs->last_seq)
        vreport(v, "idem: a key answers seq %llu, past the last seq",
                (unsigned long long)st_get_u64(d->mv_data));
}

static void v_idem_time(struct verify *v, const MDB_val *k, const MDB_val *d, void *arg)
{
    (void)arg;
    if (k->mv_size != 16 || d->mv_size < 5 || d->mv_size > 4 + STORE_IKEY_MAX)
        vreport(v, "idem_time: an entry of %zu/%zu bytes", k->mv_size, d->mv_size);
}

int store_verify(struct store *s, store_verify_fn fn, void *ud, struct store_verify_report *report)
{
    struct store_verify_report local;
    struct vstate vs;
    MDB_txn *txn;
    char err[512];
    if (!report) report = &local;
    memset(report, 0, sizeof *report);
    memset(&vs, 0, sizeof vs);
    struct verify v = {s, NULL, fn, ud, report};
    int rc = st_check_file_size(s, err, sizeof err);
    if (rc) {
        vreport(&v, "%s", err);
        return 0; /* walking would read past the file's end */
    }
    if ((rc = st_txn_begin(s, MDB_RDONLY, &txn))) return st_map_rc(rc);
    v.txn = txn;
    if ((rc = st_fmt_load(s, txn, &vs.fmt))) {
        vreport(&v, "meta: %s", mdb_strerror(rc));
        vs.fmt.all = 1;
    }
    if ((rc = st_meta_get_u64(s, txn, "last_seq", &vs.last_seq)) ||
        (rc = st_meta_get_u64(s, txn, "next_topic", &vs.next_topic)))
        vreport(&v, "meta: %s", mdb_strerror(rc));
    vwalk(&v, s->meta, "meta", v_meta, &vs);
    vwalk(&v, s->epochs, "epochs", v_epoch, &vs);
    vwalk(&v, s->topics, "topics", v_topic, &vs);
    if (vs.ntopics) qsort(vs.topics, vs.ntopics, sizeof *vs.topics, vtopic_cmp);
    for (size_t i = 1; i < vs.ntopics; i++)
        if (vs.topics[i].number == vs.topics[i - 1].number)
            vreport(&v, "topics %s and %s share number %u", vs.topics[i - 1].name,
                    vs.topics[i].name, vs.topics[i].number);
    vwalk(&v, s->msgs, "msgs", v_msg, &vs);
    for (size_t i = 0; i < vs.ntopics; i++) {
        struct vtopic *t = &vs.topics[i];
        uint64_t first = t->rec.count ? t->rec.first_seq : 0,
                 last = t->rec.count ? t->rec.last_seq : 0;
        if (t->count != t->rec.count || t->first != first || (t->count && t->last != last))
            vreport(&v,
                    "topic %s: its record says %llu messages (seqs %llu to %llu), found %llu "
                    "(%llu to %llu)",
                    t->name, (unsigned long long)t->rec.count, (unsigned long long)first,
                    (unsigned long long)last, (unsigned long long)t->count,
                    (unsigned long long)t->first, (unsigned long long)t->last);
    }
    if (s->has_idem) {
        vwalk(&v, s->idem, "idem", v_idem, &vs);
        vwalk(&v, s->idem_time, "idem_time", v_idem_time, &vs);
    }
    st_txn_end(s, txn);
    free(vs.topics);
    return SL_OK;
}
