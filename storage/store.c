/* store.c: the LMDB backlog behind store.h.
 *
 * Four named databases in one environment:
 *   meta    "version", "last_seq", "next_topic", "wal_salt" -> u64 each
 *   epochs  start seq (BE u64) -> epoch (u64): the epoch in force from that
 *           seq on; used only to tell our IDs from foreign ones
 *   topics  name -> struct topic_rec (number, count, first/last/dropped seq,
 *           retention of the last publish)
 *   msgs    (topic number BE u32, seq BE u64) -> epoch u64, time i64,
 *           event length u8, idempotency key length u8, event bytes, key
 *           bytes, data bytes, CRC-32C u32 of the key and all that
 *           (format 1 had no key and no CRC: see "migrate" below)
 *   idem    topic number BE u32 ‖ idempotency key -> seq, epoch, time
 *   idem_time  time BE u64 ‖ seq BE u64 -> topic number BE u32 ‖ key: the
 *           keys in the order they leave the dedup window
 * Big-endian keys make LMDB's memcmp order the numeric order, so one topic's
 * messages are one contiguous, seq-ordered run: reading from an ID is a
 * SET_RANGE and a walk, retention deletes from the run's front.
 *
 * Map growth: mdb_env_set_mapsize() needs every transaction of this process
 * closed, yet readers run on any thread.  Every transaction (read or write)
 * is therefore taken under the read side of `maplock`, and growth takes the
 * write side between two write transactions.  The lock prefers writers so a
 * stream of readers cannot starve growth; that is also why callbacks may not
 * re-enter the store (a nested read lock behind a waiting grower deadlocks).
 * Growth happens ahead of need (past 3/4 of the map, after a commit) and, as
 * a fallback, on MDB_MAP_FULL, after which the transaction is redone.
 *
 * A log is in front (wal.h; docs/storage.md, "Durability modes"): a batch
 * is appended to the log and flushed (relaxed mode: about once a second),
 * and kept in memory (the tail) until a checkpoint has committed it to
 * LMDB.  There are two
 * logs: when the one taking appends fills (or at the periodic sweep) it
 * is sealed, a checkpoint thread moves its messages into LMDB in one
 * synced commit, and appends go on in the other meanwhile, so a publish
 * never waits for LMDB's flushes.  Reads take the tail's read lock, then
 * their LMDB transaction, and serve LMDB's part then the tail's after it:
 * a tail message that the snapshot already has (a checkpoint committed,
 * its messages not yet dropped from the tail) is skipped by seq.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* asprintf, pthread_rwlockattr_setkind_np, getrandom */
#endif
#include "storage/store_internal.h"

#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* ---- small helpers ---------------------------------------------------- */

void st_put_be32(unsigned char *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

void st_put_be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

uint32_t st_get_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

uint64_t st_get_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

uint64_t st_get_u64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

void st_msg_key(unsigned char k[12], uint32_t topic, uint64_t seq)
{
    st_put_be32(k, topic);
    st_put_be64(k + 4, seq);
}

int st_map_rc(int rc)
{
    switch (rc) {
    case 0:
        return SL_OK;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
    case MDB_MAP_FULL:
        return SL_EFULL;
    case ENOMEM:
        return SL_ENOMEM;
    case EROFS:
    case EACCES:
        return SL_EROFS;
    case MDB_PANIC:
        return SL_EPANIC;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
        return SL_ECORRUPT;
    default:
        return SL_EIO;
    }
}

static void set_err(char *buf, size_t len, const char *what, int rc)
{
    if (buf && len) snprintf(buf, len, "%s: %s", what, mdb_strerror(rc));
}

/* ---- open / close ---------------------------------------------------------- */

static int open_dbs(struct store *s, MDB_txn *txn, unsigned flags)
{
    int rc;
    if ((rc = mdb_dbi_open(txn, "meta", flags, &s->meta)) ||
        (rc = mdb_dbi_open(txn, "epochs", flags, &s->epochs)) ||
        (rc = mdb_dbi_open(txn, "topics", flags, &s->topics)) ||
        (rc = mdb_dbi_open(txn, "msgs", flags, &s->msgs)))
        return rc;
    /* Made by format 2: a read-only handle on a store of format 1 (no
     * read-write open since the upgrade) has none, and no keys. */
    rc = mdb_dbi_open(txn, "idem", flags, &s->idem);
    if (rc == 0) rc = mdb_dbi_open(txn, "idem_time", flags, &s->idem_time);
    if (rc == MDB_NOTFOUND && !(flags & MDB_CREATE)) return 0;
    if (rc) return rc;
    s->has_idem = 1;
    return 0;
}

/* ---- migration from format 1 --------------------------------------------- */

#define MIGRATE_CHUNK 4096 /* messages per transaction: bounded dirty pages */

struct migrate_arg {
    unsigned char *buf;
    size_t cap;
    int done;
    uint64_t moved;
};

/* Rewrite up to MIGRATE_CHUNK messages from meta "migrated" on (from the
 * first without it) in format 2; the last chunk sets version 2.  Each
 * chunk is one commit, so a crash mid-way resumes where it stopped, and a
 * read-only reader tells the two formats apart by "migrated" (st_fmt_load).
 * A message too short for format 1 is left as it is: read as format 2, it
 * fails its CRC and is reported, never blessed with a checksum. */
static int migrate_op(struct store *s, MDB_txn *txn, void *argp)
{
    struct migrate_arg *a = argp;
    MDB_cursor *c;
    MDB_val k = {8, "migrated"}, d;
    unsigned char key[12];
    int rc = st_lmdb_get(txn, s->meta, &k, &d), n = 0;
    a->done = 0;
    if (rc == 0 && d.mv_size == 12) {
        memcpy(key, d.mv_data, 12);
        k.mv_size = 12;
        k.mv_data = key;
    } else if (rc == 0 || rc == MDB_NOTFOUND) {
        k.mv_size = 0;
    } else {
        return rc;
    }
    if ((rc = mdb_cursor_open(txn, s->msgs, &c))) return rc;
    rc = k.mv_size ? st_lmdb_cursor_get(c, &k, &d, MDB_SET_RANGE)
                   : st_lmdb_cursor_get(c, &k, &d, MDB_FIRST);
    for (; rc == 0 && n < MIGRATE_CHUNK; n++) {
        const unsigned char *p = d.mv_data;
        if (k.mv_size == 12 && d.mv_size >= MSG_HDR && p[17] == 0 &&
            MSG_HDR + (size_t)p[16] <= d.mv_size) {
            size_t len = d.mv_size + MSG_SUM;
            if (len > a->cap) {
                unsigned char *b = realloc(a->buf, len);
                if (!b) {
                    rc = ENOMEM;
                    break;
                }
                a->buf = b;
                a->cap = len;
            }
            memcpy(key, k.mv_data, 12);
            memcpy(a->buf, p, d.mv_size);
            uint32_t crc = st_msg_sum(key, a->buf, d.mv_size);
            memcpy(a->buf + d.mv_size, &crc, 4);
            MDB_val kk = {12, key}, nd = {len, a->buf};
            if ((rc = mdb_cursor_put(c, &kk, &nd, MDB_CURRENT))) break;
            a->moved++;
        }
        rc = st_lmdb_cursor_get(c, &k, &d, MDB_NEXT);
    }
    if (rc == MDB_NOTFOUND) {
        MDB_val mk = {8, "migrated"};
        rc = mdb_del(txn, s->meta, &mk, NULL);
        if (rc == MDB_NOTFOUND) rc = 0;
        if (!rc) rc = st_meta_put_u64(s, txn, "version", 2); /* then format 3: init_rw */
        if (!rc) a->done = 1;
    } else if (rc == 0) {
        MDB_val mk = {8, "migrated"}, mv = {12, key};
        memcpy(key, k.mv_data, 12); /* the first message not rewritten */
        rc = mdb_put(txn, s->meta, &mk, &mv, 0);
    }
    mdb_cursor_close(c);
    return rc;
}

static int migrate_v1(struct store *s, char *errbuf, size_t errlen)
{
    struct migrate_arg a = {0};
    int code = 0;
    while (!a.done && !code)
        code = st_write_txn(s, migrate_op, &a, NULL);
    free(a.buf);
    if (code && errbuf && errlen)
        snprintf(errbuf, errlen, "adding checksums to the messages of format 1: %s",
                 err_str(code));
    if (!code) atomic_store(&s->all_summed, 1);
    return code;
}

/* Format 2 to 3 (after migrate_v1 for a store of format 1): no message is
 * rewritten; those from LMDB's next seq on get the flags byte.  Before the
 * replay, whose messages are past LMDB's last seq. */
static int upgrade_v3(struct store *s, char *errbuf, size_t errlen)
{
    MDB_txn *txn;
    uint64_t last;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc) {
        set_err(errbuf, errlen, "begin", rc);
        return rc;
    }
    if ((rc = st_meta_get_u64(s, txn, "last_seq", &last)) ||
        (rc = st_meta_put_u64(s, txn, "flags_from", last + 1)) ||
        (rc = st_meta_put_u64(s, txn, "version", STORE_FORMAT_VERSION))) {
        set_err(errbuf, errlen, "format 3", rc);
        mdb_txn_abort(txn);
        return rc;
    }
    if ((rc = mdb_txn_commit(txn))) {
        set_err(errbuf, errlen, "commit", rc);
        return rc;
    }
    atomic_store(&s->flags_from, last + 1);
    return 0;
}

static int init_rw(struct store *s, const char *dir, char *errbuf, size_t errlen)
{
    MDB_txn *txn;
    uint64_t version, last, from;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc) {
        set_err(errbuf, errlen, "begin", rc);
        return rc;
    }
    if ((rc = open_dbs(s, txn, MDB_CREATE))) goto fail;
    if ((rc = st_meta_get_u64(s, txn, "version", &version))) goto fail;
    if (version == 0) {
        if ((rc = st_meta_put_u64(s, txn, "version", STORE_FORMAT_VERSION))) goto fail;
    } else if (version > STORE_FORMAT_VERSION) {
        rc = MDB_INCOMPATIBLE;
        goto fail;
    }
    if ((rc = st_flags_from_load(s, txn, version ? version : STORE_FORMAT_VERSION, &from)))
        goto fail;
    if ((rc = st_meta_get_u64(s, txn, "last_seq", &last))) goto fail;
    if ((rc = st_meta_get_u64(s, txn, "wal_salt", &s->wal_salt))) goto fail;
    if (!s->wal_salt) {
        s->wal_salt = st_random_epoch(0);
        if ((rc = st_meta_put_u64(s, txn, "wal_salt", s->wal_salt))) goto fail;
    }
    /* The log's messages belong to the epoch before this one: replay them
     * before this epoch starts after them. */
    if ((rc = mdb_txn_commit(txn))) {
        set_err(errbuf, errlen, "commit", rc);
        return rc;
    }
    /* Before anything is written in format 2 (the replay, below). */
    atomic_store(&s->flags_from, from);
    if (version && version < 2) {
        int code = migrate_v1(s, errbuf, errlen);
        if (code) return code == SL_EFULL ? MDB_MAP_FULL : code == SL_ENOMEM ? ENOMEM : EIO;
    } else {
        atomic_store(&s->all_summed, 1);
    }
    if (version && version < 3 && (rc = upgrade_v3(s, errbuf, errlen))) return rc;
    if ((rc = st_wal_replay(s, dir, &last, s->salvage, errbuf, errlen))) {
        if (rc != MDB_CORRUPTED) set_err(errbuf, errlen, "replaying the log", rc);
        return rc;
    }
    if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn))) {
        set_err(errbuf, errlen, "begin", rc);
        return rc;
    }
    if ((rc = st_epoch_start(s, txn, last))) goto fail;
    /* The logs' new salt, if the replay's own commit did not record it:
     * durable before the first append. */
    if (s->salt_pending && (rc = st_meta_put_u64(s, txn, "wal_salt", s->salt_pending))) goto fail;
    if ((rc = mdb_txn_commit(txn))) {
        set_err(errbuf, errlen, "commit", rc);
        return rc;
    }
    if (s->salt_pending) {
        s->wal_salt = s->salt_pending;
        s->salt_pending = 0;
    }
    atomic_store(&s->last_seq, last);
    return 0;
fail:
    set_err(errbuf, errlen, "init", rc);
    mdb_txn_abort(txn);
    return rc;
}

int64_t st_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The two logs' file names in the data directory. */
const char *const st_log_names[2] = {"wal", "wal2"};

static int logs_open(struct store *s, const char *dir, int read_only)
{
    int rc = 0;
    for (int i = 0; i < 2 && !rc; i++)
        rc = wal_open(&s->logs[i], dir, st_log_names[i], read_only, s->log_size);
    return rc;
}

static void logs_close(struct store *s)
{
    for (int i = 0; i < 2; i++) {
        wal_close(s->logs[i]);
        s->logs[i] = NULL;
    }
}

/* What is wrong with logs judged unsound, in one line. */
void st_verdict_text(const char *dir, const struct log_verdict *v, uint64_t after, char *buf,
                     size_t len)
{
    if (!buf || !len) return;
    if (v->state == LOGS_AHEAD)
        snprintf(buf, len,
                 "%s/wal, wal2: the logs do not follow the store's last message (seq %llu; the "
                 "logs start at %llu): a data.mdb restored from a backup? Move both files away "
                 "to open the store as it is",
                 dir, (unsigned long long)after, (unsigned long long)v->ahead_first);
    else
        snprintf(buf, len,
                 "%s/%s: damaged log record at offset %zu (seq %llu expected), followed by %llu "
                 "good records from seq %llu on: refusing to lose acknowledged messages. "
                 "`sluice check -d %s` reports, `sluice check --repair -d %s` keeps every good "
                 "record",
                 dir, st_log_names[v->log], v->offset, (unsigned long long)v->chain_last + 1,
                 (unsigned long long)v->behind, (unsigned long long)v->behind_first, dir, dir);
}

/* At a read-write open: checkpoint what the logs hold past LMDB's last
 * seq (a crash came before its checkpoint), and give the logs a new salt
 * in the same commit (or in the epoch's, when there is nothing to
 * replay), before anything is appended: records this open did not
 * replay (behind a torn write, or a relaxed log's hole) can then never
 * be read again, whatever lands in front of them later.  The logs stay
 * open for appends.  Returns 0, an errno value, or MDB_CORRUPTED with
 * errbuf saying what is wrong. */
int st_wal_replay(struct store *s, const char *dir, uint64_t *last, int salvage, char *errbuf,
                  size_t errlen)
{
    size_t ends[2] = {0, 0}, counts[2] = {0, 0};
    struct log_verdict v;
    int last_log = -1;
    int rc = logs_open(s, dir, 0);
    if (!rc) rc = st_tail_load(s, *last, salvage, ends, counts, &last_log, &v);
    if (!rc && v.state != LOGS_OK && !salvage && !s->relaxed) {
        /* Durable: a record acknowledged behind the cut would be lost. */
        st_verdict_text(dir, &v, *last, errbuf, errlen);
        rc = MDB_CORRUPTED;
    }
    if (!rc && v.state != LOGS_OK && s->relaxed) {
        /* Relaxed: an OS crash can lose any unflushed write and keep a
         * later one; the hole ends the replay.  Counted and said, not
         * refused. */
        struct store_damage d = {NULL, 0, v.chain_last + 1,
                                 "log: records behind a hole not replayed (relaxed mode: "
                                 "writes since the last sync were lost)"};
        atomic_fetch_add(&s->damaged, v.behind);
        if (s->damage_fn) s->damage_fn(s->damage_ud, &d);
    }
    if (!rc) s->salt_pending = st_random_epoch(s->wal_salt);
    if (!rc && s->tail.count) {
        *last = s->tail.last_seq;
        s->log_msgs[0] = counts[0];
        s->log_msgs[1] = counts[1];
        int code = st_checkpoint_all(s, st_wall_ms());
        if (code && !salvage && code != SL_ENOMEM) {
            /* No room in LMDB (a full disk: ENOSPC, or EIO from a write
             * the limit cut short; the map at its bound): keep the
             * records in the logs and the tail, under the old salt, and
             * open all the same; checkpoints retry, publishes hear "full"
             * once the log fills.  What lies past the kept records is
             * zeroed (flushed) instead: appends go on after them. */
            s->salt_pending = 0;
            for (int i = 0; i < 2 && !rc; i++) {
                rc = wal_zero(s->logs[i], counts[i] ? ends[i] : 0);
                if (counts[i]) wal_seek(s->logs[i], ends[i]);
            }
            s->cur = last_log;
        } else if (code) {
            rc = code == SL_ENOMEM ? ENOMEM : EIO;
        }
    }
    if (rc) logs_close(s);
    return rc;
}

/* A read-only handle beside a running durable server: what its logs hold
 * past LMDB, as of now, so that a dump shows every acknowledged message.
 * The server may checkpoint and reuse a log between our reads of LMDB and
 * of the files, which leaves a chain that does not follow LMDB's last
 * seq: read again (bounded).  Logs that stay unsound (damage: the server
 * will not start on them) are served up to the damage. */
static int load_server_tail(struct store *s, const char *dir)
{
    size_t ends[2], counts[2];
    struct log_verdict v;
    int last_log, rc = logs_open(s, dir, 1);
    for (int attempt = 1; rc == 0; attempt++) {
        uint64_t last;
        if ((rc = st_read_last_seq(s, &last))) break;
        rc = st_tail_load(s, last, 0, ends, counts, &last_log, &v);
        if (rc || v.state == LOGS_OK || attempt == 20) break;
        pthread_rwlock_wrlock(&s->tail.lock);
        st_tail_clear(&s->tail);
        pthread_rwlock_unlock(&s->tail.lock);
        usleep(2000);
    }
    logs_close(s);
    return rc;
}

static int init_ro(struct store *s, char *errbuf, size_t errlen)
{
    MDB_txn *txn;
    uint64_t version, from;
    /* st_txn_begin, not mdb_txn_begin: the server may grow the map between
     * our env open and this begin (MDB_MAP_RESIZED). */
    int rc = st_txn_begin(s, MDB_RDONLY, &txn);
    if (rc) {
        set_err(errbuf, errlen, "begin", rc);
        return rc;
    }
    if ((rc = open_dbs(s, txn, 0))) goto fail;
    if ((rc = st_meta_get_u64(s, txn, "version", &version))) goto fail;
    if (version < 1 || version > STORE_FORMAT_VERSION) {
        rc = MDB_INCOMPATIBLE;
        goto fail;
    }
    if ((rc = st_flags_from_load(s, txn, version, &from))) goto fail;
    atomic_store(&s->flags_from, from);
    if ((rc = st_meta_get_u64(s, txn, "wal_salt", &s->wal_salt))) goto fail;
    /* Commit, not abort: DBI handles opened in an aborted txn are closed. */
    rc = mdb_txn_commit(txn);
    pthread_rwlock_unlock(&s->maplock);
    if (rc) set_err(errbuf, errlen, "commit", rc);
    return rc;
fail:
    set_err(errbuf, errlen, "init", rc);
    st_txn_end(s, txn);
    return rc;
}

/* LMDB maps at least the used size of an existing file, which may be all
 * of it; the epoch written at open needs a few free pages.  Give room now,
 * while no transaction exists: twice the used size, within map_max, but
 * always 1 MiB beyond the used size so that a store filled to map_max can
 * still open (and be trimmed). */
static void open_headroom(struct store *s)
{
    MDB_envinfo info;
    MDB_stat st;
    if (mdb_env_info(s->env, &info) || mdb_env_stat(s->env, &st)) return;
    size_t used = (info.me_last_pgno + 1) * (size_t)st.ms_psize;
    if (used <= info.me_mapsize / 4 * 3) return;
    size_t want = used * 2;
    if (s->map_max && want > s->map_max) want = s->map_max;
    if (want < used + ((size_t)1 << 20)) want = used + ((size_t)1 << 20);
    mdb_env_set_mapsize(s->env, want);
}

/* A data file shorter than its pages (truncated, or a page count damaged
 * in the meta page) would make a read of the map past its end die with
 * SIGBUS: refuse it at open, with a message, instead. */
int st_check_file_size(struct store *s, char *errbuf, size_t errlen)
{
    MDB_envinfo info;
    MDB_stat st;
    struct stat sb;
    if (mdb_env_info(s->env, &info) || mdb_env_stat(s->env, &st) || stat(s->data_path, &sb))
        return SL_EIO;
    uint64_t need = ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
    if ((uint64_t)sb.st_size >= need) return 0;
    if (errbuf && errlen)
        snprintf(errbuf, errlen,
                 "%s is %llu bytes but its pages reach %llu: the file is truncated or damaged "
                 "(sluice check tells more)",
                 s->data_path, (unsigned long long)sb.st_size, (unsigned long long)need);
    return SL_ECORRUPT;
}

/* At a read-write open, each topic's first and last message: readable
 * and whole (two lookups a topic).  A damaged page under a topic's ends
 * is reported now (store_opts.damage: the server logs it at error) rather
 * than met by the first reader; the store opens all the same, since reads
 * skip what is damaged, and `sluice check` walks everything. */
static void probe_topics(struct store *s)
{
    MDB_txn *txn;
    MDB_cursor *c;
    MDB_val k, d;
    struct fmt f;
    int rc, stop = 0;
    if (st_txn_begin(s, MDB_RDONLY, &txn)) return;
    if (st_fmt_load(s, txn, &f) || mdb_cursor_open(txn, s->topics, &c)) {
        st_txn_end(s, txn);
        return;
    }
    for (rc = st_lmdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0 && !stop;
         rc = st_lmdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        struct topic_rec rec;
        if (d.mv_size != sizeof rec) {
            st_report_damage(s, k.mv_data, k.mv_size, 0, "damaged topic record (found at open)");
            continue;
        }
        memcpy(&rec, d.mv_data, sizeof rec);
        uint64_t ends[2] = {rec.first_seq, rec.last_seq};
        for (int i = 0; i < 2 && rec.count && !stop; i++) {
            unsigned char key[12];
            MDB_val mk = {sizeof key, key}, mv;
            struct msg_parts m;
            st_msg_key(key, rec.number, ends[i]);
            int r = st_lmdb_get(txn, s->msgs, &mk, &mv);
            const char *what = r == MDB_NOTFOUND ? "message missing (found at open)"
                               : r               ? "damaged page (found at open)"
                               : st_msg_parse(&f, &mk, &mv, &m)
                                   ? "message checksum mismatch (found at open)"
                                   : NULL;
            if (what) st_report_damage(s, k.mv_data, k.mv_size, ends[i], what);
            stop = r && r != MDB_NOTFOUND; /* the transaction may be spent */
        }
    }
    if (rc && rc != MDB_NOTFOUND && !stop)
        st_report_damage(s, NULL, 0, 0, "damaged page in the topics database (found at open)");
    mdb_cursor_close(c);
    st_txn_end(s, txn);
}

/* One read-write handle per data directory: a second server (or a second
 * open in this process) on the same directory would interleave epochs.
 * flock on a file of our own, so LMDB's fcntl locks are not disturbed. */
static int take_dir_lock(struct store *s, const char *dir, char *errbuf, size_t errlen)
{
    char *path;
    if (asprintf(&path, "%s/sluice.lock", dir) < 0) return SL_ENOMEM;
    s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    free(path);
    if (s->lock_fd < 0) {
        if (errbuf && errlen) snprintf(errbuf, errlen, "%s/sluice.lock: %s", dir, strerror(errno));
        return st_map_rc(errno);
    }
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        if (errbuf && errlen)
            snprintf(errbuf, errlen, "%s: %s", dir,
                     e == EWOULDBLOCK ? "in use by another writer" : strerror(e));
        return e == EWOULDBLOCK ? SL_ELOCKED : st_map_rc(e);
    }
    return 0;
}

/* A new data directory's environment.  LMDB writes a new file's two meta
 * pages with one write that it does not flush, and a power cut before the
 * first synced commit can leave a file that LMDB refuses for good (its
 * first page lost: MDB_INVALID).  So the file is made under another name,
 * given a first commit (synced), and only then renamed to data.mdb, the
 * directory synced: data.mdb is whole or absent.  Returns 0, an errno
 * value or an LMDB code. */
static int create_env(const char *dir, const char *data_path)
{
    char *tmp = NULL, *tmp_lock = NULL;
    MDB_env *env = NULL;
    MDB_txn *txn;
    MDB_dbi dbi;
    int rc = ENOMEM;
    if (asprintf(&tmp, "%s/data.mdb.new", dir) < 0) tmp = NULL;
    if (!tmp || asprintf(&tmp_lock, "%s/data.mdb.new-lock", dir) < 0) {
        tmp_lock = NULL;
        goto out;
    }
    unlink(tmp); /* a creation a crash cut short */
    if ((rc = mdb_env_create(&env)) || (rc = mdb_env_set_maxdbs(env, 8)) ||
        (rc = mdb_env_open(env, tmp, MDB_NOSUBDIR, 0644)))
        goto out;
    if ((rc = mdb_txn_begin(env, NULL, 0, &txn))) goto out;
    if ((rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &dbi))) {
        mdb_txn_abort(txn);
        goto out;
    }
    if ((rc = mdb_txn_commit(txn))) goto out;
    mdb_env_close(env);
    env = NULL;
    if (rename(tmp, data_path)) {
        rc = errno;
        goto out;
    }
    rc = wal_sync_dir(dir);
out:
    if (env) mdb_env_close(env);
    if (tmp_lock) unlink(tmp_lock);
    free(tmp);
    free(tmp_lock);
    return rc;
}

int store_open(struct store **out, const char *dir, const struct store_opts *opts, char *errbuf,
               size_t errbuf_len)
{
    static const struct store_opts defaults = {0};
    struct store *s = NULL;
    pthread_rwlockattr_t attr;
    struct stat sb;
    int rc, code = SL_EIO, lock_inited = 0;

    if (errbuf && errbuf_len) errbuf[0] = 0;
    *out = NULL;
    if (!dir || !*dir) return SL_EINVAL;
    if (!opts) opts = &defaults;

    s = calloc(1, sizeof *s);
    if (!s) return SL_ENOMEM;
    s->lock_fd = -1;
    s->read_only = !!opts->read_only;
    s->relaxed = !!opts->relaxed;
    s->map_max = opts->map_max;
    s->salvage = !!opts->salvage;
    s->log_size = opts->log_size ? opts->log_size : WAL_DEFAULT_SIZE;
    s->dedup_window_ms = opts->dedup_window_ms ? opts->dedup_window_ms : STORE_DEDUP_WINDOW_MS;
    s->damage_fn = opts->damage;
    s->damage_ud = opts->damage_ud;
    if (asprintf(&s->data_path, "%s/data.mdb", dir) < 0) {
        s->data_path = NULL;
        code = SL_ENOMEM;
        goto fail;
    }
    if (s->read_only) {
        if (stat(s->data_path, &sb) != 0) {
            if (errbuf && errbuf_len) snprintf(errbuf, errbuf_len, "%s: no store", dir);
            code = SL_ENOTFOUND;
            goto fail;
        }
    } else {
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
            if (errbuf && errbuf_len)
                snprintf(errbuf, errbuf_len, "mkdir %s: %s", dir, strerror(errno));
            code = st_map_rc(errno);
            goto fail;
        }
        if ((code = take_dir_lock(s, dir, errbuf, errbuf_len))) goto fail;
        code = SL_EIO;
        if (stat(s->data_path, &sb) != 0 && errno == ENOENT &&
            (rc = create_env(dir, s->data_path))) {
            set_err(errbuf, errbuf_len, "creating data.mdb", rc);
            code = st_map_rc(rc);
            goto fail;
        }
    }

    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    rc = pthread_rwlock_init(&s->maplock, &attr);
    pthread_rwlockattr_destroy(&attr);
    if (rc) {
        code = SL_ENOMEM;
        goto fail;
    }
    lock_inited = 1;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    rc = pthread_rwlock_init(&s->tail.lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    if (rc) {
        code = SL_ENOMEM;
        goto fail;
    }
    s->tail_inited = 1;

    if ((rc = mdb_env_create(&s->env))) {
        set_err(errbuf, errbuf_len, "mdb_env_create", rc);
        code = st_map_rc(rc);
        goto fail;
    }
    mdb_env_set_assert(s->env, st_on_lmdb_assert);
    if ((rc = mdb_env_set_maxdbs(s->env, 8)) || (rc = mdb_env_set_maxreaders(s->env, 510))) {
        set_err(errbuf, errbuf_len, "mdb_env_set", rc);
        goto fail;
    }
    if (!s->read_only) {
        size_t map = opts->map_size ? opts->map_size : DEFAULT_MAP_SIZE;
        if (s->map_max && map > s->map_max) map = s->map_max;
        if ((rc = mdb_env_set_mapsize(s->env, map))) {
            set_err(errbuf, errbuf_len, "mdb_env_set_mapsize", rc);
            goto fail;
        }
    }
    unsigned flags = MDB_NOTLS;
    if (s->read_only) flags |= MDB_RDONLY;
    if ((rc = mdb_env_open(s->env, dir, flags, 0644))) {
        set_err(errbuf, errbuf_len, dir, rc);
        code = rc == ENOENT ? SL_ENOTFOUND : st_map_rc(rc);
        goto fail;
    }
    /* LMDB may have just made lock.mdb; data.mdb's entry was synced by
     * create_env.  Cheap, and what a store relies on is then on disk. */
    if (!s->read_only && (rc = wal_sync_dir(dir))) {
        set_err(errbuf, errbuf_len, "fsync of the data directory", rc);
        code = st_map_rc(rc);
        goto fail;
    }
    if ((rc = st_check_file_size(s, errbuf, errbuf_len))) {
        code = rc;
        goto fail;
    }
    if (!s->read_only) open_headroom(s);
    rc = s->read_only ? init_ro(s, errbuf, errbuf_len) : init_rw(s, dir, errbuf, errbuf_len);
    if (rc) {
        code = (s->read_only && rc == MDB_NOTFOUND) ? SL_ENOTFOUND : st_map_rc(rc);
        goto fail;
    }
    if (s->read_only && (rc = load_server_tail(s, dir))) {
        set_err(errbuf, errbuf_len, "reading the log", rc);
        code = st_map_rc(rc);
        goto fail;
    }
    if (s->logs[0] && (code = st_ckpt_start(s))) {
        set_err(errbuf, errbuf_len, "starting the checkpoint thread", EAGAIN);
        goto fail;
    }
    if (!s->read_only) probe_topics(s);
    *out = s;
    return SL_OK;

fail:
    logs_close(s);
    if (s->tail_inited) {
        st_tail_clear(&s->tail);
        free(s->tail.buckets);
        free(s->tail.ikeys);
        pthread_rwlock_destroy(&s->tail.lock);
    }
    if (s->env) mdb_env_close(s->env);
    if (lock_inited) pthread_rwlock_destroy(&s->maplock);
    if (s->lock_fd >= 0) close(s->lock_fd);
    free(s->data_path);
    free(s);
    return code;
}

void store_close(struct store *s)
{
    if (!s) return;
    /* A failed checkpoint loses nothing: the next open replays the logs. */
    if (s->logs[0]) st_checkpoint_all(s, st_wall_ms()); /* also voids a failed write's records */
    st_ckpt_stop(s);
    logs_close(s);
    free(s->walbuf);
    st_tail_clear(&s->tail);
    free(s->tail.buckets);
    free(s->tail.ikeys);
    pthread_rwlock_destroy(&s->tail.lock);
    mdb_env_close(s->env);
    pthread_rwlock_destroy(&s->maplock);
    if (s->lock_fd >= 0) close(s->lock_fd);
    free(s->data_path);
    free(s);
}

uint64_t store_epoch(const struct store *s)
{
    return s->read_only ? 0 : s->epoch;
}

int st_read_last_seq(struct store *s, uint64_t *last)
{
    MDB_txn *txn;
    int rc = st_txn_begin(s, MDB_RDONLY, &txn);
    if (rc) return rc;
    rc = st_meta_get_u64(s, txn, "last_seq", last);
    st_txn_end(s, txn);
    return rc;
}

uint64_t store_last_seq(struct store *s)
{
    uint64_t last = 0;
    if (!s->read_only) return atomic_load(&s->last_seq);
    if (st_read_last_seq(s, &last)) return 0;
    return last > s->tail.last_seq ? last : s->tail.last_seq;
}

int store_sync(struct store *s)
{
    int rc = 0;
    if (s->read_only || !s->relaxed) return SL_OK;
    for (int i = 0; i < 2 && !rc; i++)
        if (s->logs[i]) rc = wal_sync(s->logs[i]);
    return st_map_rc(rc);
}
