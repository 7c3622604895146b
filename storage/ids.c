/* ids.c: message IDs ("<epoch>-<seq>"): formatting, parsing, and the
 * lookups that tell an ID of ours from an unknown one. */
#include "storage/store_internal.h"

/* ---- IDs ------------------------------------------------------------------ */

static const char b36[] = "0123456789abcdefghijklmnopqrstuvwxyz";

size_t store_id_format(uint64_t epoch, uint64_t seq, char *buf)
{
    char tmp[24];
    size_t n = 0, len = 0;
    do {
        tmp[n++] = b36[epoch % 36];
        epoch /= 36;
    } while (epoch);
    while (n)
        buf[len++] = tmp[--n];
    buf[len++] = '-';
    do {
        tmp[n++] = (char)('0' + seq % 10);
        seq /= 10;
    } while (seq);
    while (n)
        buf[len++] = tmp[--n];
    buf[len] = 0;
    return len;
}

/* Parse the canonical text only: no leading zeros, lower-case, no zero
 * values, so that every message has exactly one ID string. */
static int id_text_parse(const char *id, size_t len, uint64_t *epoch, uint64_t *seq)
{
    size_t i = 0;
    uint64_t e = 0, q = 0;
    if (!id || len == 0 || len >= STORE_ID_MAX) return SL_EINVAL;
    if (id[0] == '0') return SL_EINVAL;
    /* Range checks and overflow builtins: this runs for every resuming
     * poll, where a table search and a division per digit showed. */
    for (; i < len && id[i] != '-'; i++) {
        char c = id[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'z')
            d = (unsigned)(c - 'a') + 10;
        else
            return SL_EINVAL;
        if (__builtin_mul_overflow(e, 36, &e) || __builtin_add_overflow(e, d, &e)) return SL_EINVAL;
    }
    if (i == 0 || i == len) return SL_EINVAL;
    i++;
    if (i == len || id[i] == '0') return SL_EINVAL;
    for (; i < len; i++) {
        if (id[i] < '0' || id[i] > '9') return SL_EINVAL;
        unsigned d = (unsigned)(id[i] - '0');
        if (__builtin_mul_overflow(q, 10, &q) || __builtin_add_overflow(q, d, &q)) return SL_EINVAL;
    }
    *epoch = e;
    *seq = q;
    return 0;
}

int store_id_parse(struct store *s, const char *id, size_t len, uint64_t *seq)
{
    uint64_t e, q, last;
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    MDB_val k, d;
    unsigned char key[8];
    int rc, code = SL_EUNKNOWN;

    if (id_text_parse(id, len, &e, &q)) return SL_EINVAL;
    /* This handle's own epoch, up to what it has committed: the common
     * resume, and no read transaction needed to know it. */
    if (!s->read_only && e == s->epoch && q >= s->epoch_first && q <= atomic_load(&s->last_seq)) {
        *seq = q;
        return SL_OK;
    }
    if ((rc = st_txn_begin(s, MDB_RDONLY, &txn))) return st_map_rc(rc);
    if ((rc = st_meta_get_u64(s, txn, "last_seq", &last))) goto out;
    if (s->read_only && last < s->tail.last_seq) last = s->tail.last_seq; /* the server's log */
    /* Ours: messages of an earlier run that an open kept in the log (no
     * room in LMDB to replay them) are past LMDB's last seq. */
    if (!s->read_only && last < atomic_load(&s->last_seq)) last = atomic_load(&s->last_seq);
    if (q > last) goto out; /* never committed here (or lost in a crash) */
    if ((rc = mdb_cursor_open(txn, s->epochs, &c))) goto out;
    /* The epoch in force at q: the last entry whose start is <= q. */
    st_put_be64(key, q + 1);
    k.mv_size = 8;
    k.mv_data = key;
    rc = st_lmdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
    if (rc == 0)
        rc = st_lmdb_cursor_get(c, &k, &d, MDB_PREV);
    else if (rc == MDB_NOTFOUND)
        rc = st_lmdb_cursor_get(c, &k, &d, MDB_LAST);
    if (rc == MDB_NOTFOUND) {
        rc = 0;
        goto out;
    }
    if (rc) goto out;
    if (d.mv_size == 8 && st_get_u64(d.mv_data) == e) {
        *seq = q;
        code = SL_OK;
    }
out:
    if (c) mdb_cursor_close(c);
    st_txn_end(s, txn);
    return rc ? st_map_rc(rc) : code;
}

/* The epoch and publish time of one message in LMDB (zeroes if missing). */
int st_msg_head(struct store *s, MDB_txn *txn, uint32_t number, uint64_t seq, uint64_t *epoch,
                int64_t *time_ms)
{
    unsigned char key[12];
    MDB_val k = {sizeof key, key}, d;
    st_msg_key(key, number, seq);
    *epoch = 0;
    *time_ms = 0;
    int rc = st_lmdb_get(txn, s->msgs, &k, &d);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    if (d.mv_size < MSG_HDR) return MDB_CORRUPTED;
    *epoch = st_get_u64(d.mv_data);
    memcpy(time_ms, (const char *)d.mv_data + 8, 8);
    return 0;
}

int st_msg_epoch(struct store *s, MDB_txn *txn, uint32_t number, uint64_t seq, uint64_t *epoch)
{
    int64_t time_ms;
    return st_msg_head(s, txn, number, seq, epoch, &time_ms);
}
