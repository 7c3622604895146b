/* logs.c: reading the write-ahead logs back at open (replay, the verdict
 * on a torn write or damage) and checking them for `sluice check`. */
#include "storage/store_internal.h"

/* ---- reading the logs back --------------------------------------------------- */

/* The run of log records at the start of buf: consecutive seqs (what
 * follows is an older round's, or damage).  *first and *last get its
 * bounds (0 when empty), *stop the offset after it.  With t, its records
 * after seq `after` are linked into t, and *end gets the offset after the
 * last of them. */
static int log_run(const unsigned char *buf, size_t len, uint64_t salt, uint64_t after,
                   struct tail *t, uint64_t *first, uint64_t *last, size_t *end, size_t *stop)
{
    struct wal_rec r;
    size_t off = 0, sz;
    uint64_t expect = 0;
    *first = *last = 0;
    while (buf && (sz = wal_rec_decode(buf + off, len - off, &r, salt)) > 0) {
        if (expect && r.seq != expect) break; /* a stale record of an older round */
        expect = r.seq + 1;
        off += sz;
        if (!*first) *first = r.seq;
        *last = r.seq;
        if (!t || r.seq <= after) continue;
        struct tail_msg *m = st_tail_msg_new(t, &r);
        if (!m) return ENOMEM;
        st_tail_link(t, m);
        *end = off;
    }
    if (stop) *stop = off;
    return 0;
}

/* Every good record of buf with a seq past `after`: *n of them, *batch
 * when one is a batch's first, *low the lowest seq (0: none). */
static void log_behind(const unsigned char *buf, size_t len, uint64_t salt, uint64_t after,
                       uint64_t *n, int *batch, uint64_t *low)
{
    struct wal_rec r;
    size_t off = 0, sz;
    *n = 0;
    *batch = 0;
    *low = 0;
    while (buf && off + WAL_REC_HEADER <= len) {
        sz = wal_rec_decode(buf + off, len - off, &r, salt);
        if (!sz) {
            off += 8; /* records are 8-aligned: look for the next one */
            continue;
        }
        if (r.seq > after) {
            (*n)++;
            if (r.flags & WAL_REC_BATCH_FIRST) *batch = 1;
            if (!*low || r.seq < *low) *low = r.seq;
        }
        off += sz;
    }
}

/* What the logs hold past LMDB's last seq, and whether it reads as a
 * log that only a crash has touched (docs/storage.md, "Damage").
 *
 * Each log starts with a run of consecutive seqs; the runs that matter
 * chain from LMDB's last seq + 1, one log's into the other's.  Every good
 * record (this salt) with a later seq than the chain's end is *behind*
 * it.  In durable mode a crash leaves such records only inside the batch
 * whose write it cut (the last write: earlier writes had returned, which
 * is when they were on the disk), and that batch's first record is before
 * the cut.  That batch is in the chain's last log, or it is the first
 * batch of the other log's round (which the chain then does not reach).
 * So records behind the chain are a torn tail when they all lie in one
 * such log and none of them is a batch's first record; otherwise the
 * chain was cut by damage (or the logs are ahead of a store restored from
 * a backup). */
static void logs_judge(unsigned char *const buf[2], const size_t len[2], uint64_t salt,
                       uint64_t after, struct log_verdict *v)
{
    uint64_t first[2], last[2], n[2], low[2];
    size_t stop[2];
    int used[2] = {0, 0}, batch[2];
    memset(v, 0, sizeof *v);
    v->log = -1;
    for (int i = 0; i < 2; i++)
        log_run(buf[i], len[i], salt, 0, NULL, &first[i], &last[i], NULL, &stop[i]);
    for (;;) {
        int next = -1;
        for (int i = 0; i < 2; i++)
            if (!used[i] && first[i] && first[i] <= after + 1 && last[i] > after) next = i;
        if (next < 0) break;
        used[next] = 1;
        v->chain[v->nchain++] = next;
        after = last[next];
    }
    v->chain_last = after;
    for (int i = 0; i < 2; i++) {
        log_behind(buf[i], len[i], salt, after, &n[i], &batch[i], &low[i]);
        v->behind += n[i];
    }
    if (!v->behind) return;
    /* The cut batch is in the chain's last log, after its run, or at the
     * start of a log that the chain does not reach (its first sectors
     * lost: the first batch of a log's round). */
    int tail_log = v->nchain ? v->chain[v->nchain - 1] : -1;
    for (int i = 0; i < 2; i++) {
        int in_chain = 0;
        for (int k = 0; k < v->nchain; k++)
            in_chain |= v->chain[k] == i;
        if (v->behind == n[i] && !batch[i] && (i == tail_log || !in_chain)) {
            v->torn = v->behind;
            return;
        }
    }
    if (!v->nchain) {
        /* A log whose run starts cleanly, at its first byte, past
         * LMDB's end: the store is behind its logs. */
        for (int i = 0; i < 2; i++)
            if (first[i] > after + 1 && (!v->ahead_first || first[i] < v->ahead_first))
                v->ahead_first = first[i];
        if (v->ahead_first) {
            v->state = LOGS_AHEAD;
            return;
        }
    }
    v->state = LOGS_DAMAGED;
    if (tail_log < 0) tail_log = n[0] && (!n[1] || low[0] < low[1]) ? 0 : 1;
    v->log = tail_log;
    v->offset = stop[tail_log];
    v->behind_first = n[0] && n[1] ? (low[0] < low[1] ? low[0] : low[1]) : n[0] ? low[0] : low[1];
}

/* A good record found by a salvage. */
struct salvaged {
    uint64_t seq;
    const unsigned char *at;
    size_t len;
    int log;
};

static int salvaged_cmp(const void *x, const void *y)
{
    const struct salvaged *a = x, *b = y;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

/* Every good record of both logs past `after`, in seq order (one per
 * seq), into the tail: what a repair keeps of damaged logs. */
static int salvage_load(struct store *s, unsigned char *const buf[2], const size_t len[2],
                        uint64_t after, size_t counts[2])
{
    struct salvaged *v = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (int i = 0; i < 2; i++) {
        size_t off = 0, sz;
        struct wal_rec r;
        while (buf[i] && off + WAL_REC_HEADER <= len[i]) {
            if (!(sz = wal_rec_decode(buf[i] + off, len[i] - off, &r, s->wal_salt))) {
                off += 8;
                continue;
            }
            if (r.seq > after) {
                if (n == cap) {
                    size_t nc = cap ? cap * 2 : 256;
                    struct salvaged *nv = realloc(v, nc * sizeof *v);
                    if (!nv) {
                        free(v);
                        return ENOMEM;
                    }
                    v = nv;
                    cap = nc;
                }
                v[n++] = (struct salvaged){r.seq, buf[i] + off, sz, i};
            }
            off += sz;
        }
    }
    if (n) qsort(v, n, sizeof *v, salvaged_cmp);
    for (size_t i = 0; i < n && !rc; i++) {
        struct wal_rec r;
        if (i && v[i].seq == v[i - 1].seq) continue;
        wal_rec_decode(v[i].at, v[i].len, &r, s->wal_salt);
        struct tail_msg *m = st_tail_msg_new(&s->tail, &r);
        if (!m) {
            rc = ENOMEM;
            break;
        }
        st_tail_link(&s->tail, m);
        counts[v[i].log]++;
    }
    free(v);
    return rc;
}

/* Read the logs' messages after seq `after` into the tail: the chain
 * (logs_judge), or with `salvage` every good record when the chain is
 * not sound.  ends[i] gets the offset after the last record taken from
 * log i, counts[i] how many, *last_log the log the chain ends in (-1:
 * none), *v the verdict.  Returns 0 or an errno value. */
int st_tail_load(struct store *s, uint64_t after, int salvage, size_t ends[2], size_t counts[2],
                 int *last_log, struct log_verdict *v)
{
    unsigned char *buf[2] = {NULL, NULL};
    size_t len[2] = {0, 0};
    int rc = 0;
    *last_log = -1;
    for (int i = 0; i < 2; i++) {
        ends[i] = counts[i] = 0;
        if (!rc && s->logs[i]) rc = wal_read(s->logs[i], &buf[i], &len[i]);
    }
    if (!rc) logs_judge(buf, len, s->wal_salt, after, v);
    pthread_rwlock_wrlock(&s->tail.lock);
    if (!rc && salvage && v->state != LOGS_OK) {
        rc = salvage_load(s, buf, len, after, counts);
    } else {
        for (int k = 0; !rc && k < v->nchain; k++) {
            int i = v->chain[k];
            uint64_t first, last;
            size_t before = s->tail.count;
            rc = log_run(buf[i], len[i], s->wal_salt, after, &s->tail, &first, &last, &ends[i],
                         NULL);
            counts[i] = s->tail.count - before;
            after = last;
            *last_log = i;
        }
    }
    pthread_rwlock_unlock(&s->tail.lock);
    free(buf[0]);
    free(buf[1]);
    return rc;
}

/* ---- checking the logs (`sluice check`) ------------------------------------- */

int store_log_check(struct store *s, store_log_fn fn, void *ud, struct store_log_report *r)
{
    struct wal *logs[2] = {NULL, NULL};
    unsigned char *buf[2] = {NULL, NULL};
    size_t len[2] = {0, 0};
    struct log_verdict v;
    uint64_t last;
    char line[768];
    memset(r, 0, sizeof *r);
    size_t dlen = strlen(s->data_path) - strlen("/data.mdb");
    char *dir = strndup(s->data_path, dlen);
    if (!dir) return SL_ENOMEM;
    int rc = st_read_last_seq(s, &last);
    for (int i = 0; i < 2 && !rc; i++)
        if (!(rc = wal_open(&logs[i], dir, st_log_names[i], 1, 0)) && logs[i])
            rc = wal_read(logs[i], &buf[i], &len[i]);
    if (!rc) {
        logs_judge(buf, len, s->wal_salt, last, &v);
        r->pending = v.chain_last - last;
        if (r->pending && fn) {
            snprintf(line, sizeof line,
                     "%s/wal, wal2: %llu messages after the store's last seq (%llu) are in the "
                     "logs: the next read-write open moves them into data.mdb",
                     dir, (unsigned long long)r->pending, (unsigned long long)last);
            fn(ud, line);
        }
        if (v.state == LOGS_OK && v.torn) {
            r->torn = v.torn;
            if (fn) {
                snprintf(line, sizeof line,
                         "%s/wal, wal2: %llu records of a write a crash cut short (never "
                         "acknowledged): the next open drops them",
                         dir, (unsigned long long)v.torn);
                fn(ud, line);
            }
        } else if (v.state != LOGS_OK) {
            r->damaged = 1;
            r->stranded = v.behind;
            st_verdict_text(dir, &v, last, line, sizeof line);
            if (fn) fn(ud, line);
        }
    }
    for (int i = 0; i < 2; i++) {
        free(buf[i]);
        wal_close(logs[i]);
    }
    free(dir);
    return rc ? st_map_rc(rc) : SL_OK;
}
