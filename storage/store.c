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
#include "storage/store.h"
#include "storage/crc32c.h"
#include "storage/wal.h"

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

/* 2: every message ends with its CRC and may carry an idempotency key.
 * A store of format 1 is read as it is by a read-only handle and
 * rewritten to format 2 by the first read-write open (migrate_v1). */
#define STORE_FORMAT_VERSION 2u
#define DEFAULT_MAP_SIZE ((size_t)64 << 20)
#define MSG_HDR 18 /* epoch u64, time i64, event length u8, key length u8 */
#define MSG_SUM 4  /* the CRC-32C at the end of a format 2 value */
/* msg_parse's answer for a message whose bytes are wrong. */
#define MSG_BAD 1
#define GROW_RETRIES 40

struct topic_rec {
    uint32_t number;
    uint32_t reserved;
    uint64_t count;
    uint64_t first_seq;
    uint64_t last_seq;
    uint64_t dropped_seq; /* newest seq removed by retention */
    uint64_t max_count;
    uint64_t max_age_ms;
};

/* A logged message that LMDB may not have yet. */
struct tail_msg {
    struct tail_msg *next;       /* all topics, seq order */
    struct tail_msg *topic_next; /* this topic, seq order */
    struct tail_topic *topic;
    uint64_t seq, epoch;
    int64_t time_ms;
    uint64_t max_count, max_age_ms;
    size_t event_len, data_len;
    size_t ikey_len;            /* idempotency key (0: none) */
    struct tail_msg *ikey_next; /* struct tail's key index, newest first */
    char bytes[];               /* event, then data, then the key */
};

struct tail_topic {
    struct tail_topic *hnext;
    struct tail_msg *first, *last;
    size_t count;
    uint64_t hash;
    size_t len;
    char name[];
};

struct tail {
    pthread_rwlock_t lock;
    struct tail_topic **buckets; /* nbuckets, a power of two */
    size_t nbuckets, ntopics;
    struct tail_msg *first, *last;
    size_t count;
    uint64_t last_seq;
    /* Messages with an idempotency key by (topic, key), for the dedup of
     * a retry whose first publish is not in LMDB yet (made at the first
     * keyed message, TAIL_IKEY_BUCKETS chains). */
    struct tail_msg **ikeys;
};

#define TAIL_IKEY_BUCKETS 4096

/* The checkpoint thread's one job: a sealed log's messages (pointing into
 * the tail, which keeps them until the job is reaped) for one commit. */
enum { CKPT_IDLE, CKPT_BUSY, CKPT_DONE };
struct ckpt {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    int running, stop;
    _Atomic int state;
    int log; /* the sealed log */
    struct store_msg *msgs;
    int64_t *times;
    size_t n;
    int code; /* the commit's outcome, once CKPT_DONE */
};

struct store {
    MDB_env *env;
    MDB_dbi meta, epochs, topics, msgs;
    pthread_rwlock_t maplock; /* read side: any open txn; write side: resize */
    int read_only, relaxed;
    uint64_t epoch;
    uint64_t epoch_first; /* the first seq of this handle's epoch */
    size_t map_max;
    _Atomic uint64_t last_seq; /* read-write handle: mirror of meta last_seq */
    _Atomic uint64_t grows;
    _Atomic uint64_t checkpoints, checkpoint_failures;
    _Atomic uint64_t damaged, duplicates;
    _Atomic int all_summed; /* format 2 seen: every message has its CRC */
    int has_idem;           /* the idem databases exist (not in format 1) */
    MDB_dbi idem, idem_time;
    uint64_t dedup_window_ms;
    store_damage_fn damage_fn;
    void *damage_ud;
    /* store_sweep's resume point (one sweeping thread at a time) */
    char sweep_pos[STORE_TOPIC_MAX];
    size_t sweep_pos_len;
    char *data_path;
    int lock_fd; /* flock'd sluice.lock of a read-write handle, else -1 */
    /* Read-write handle: the two logs (wal.h), appends going to
     * logs[cur], and the messages they hold that LMDB lacks (the tail).
     * A read-only handle loads the tail of the running server's logs at
     * open.  Only the writing thread changes the tail and these fields;
     * readers take the tail's lock before their LMDB txn. */
    struct wal *logs[2];
    int cur;
    size_t log_msgs[2];    /* messages of each log LMDB lacks; 0: free */
    struct ckpt ckpt;      /* the checkpoint beside appends */
    int salvage;           /* store_opts.salvage: the open keeps every good record */
    size_t log_size;       /* bytes of a log file made by this handle */
    int wal_failed;        /* a log write failed: commits go to LMDB directly */
    uint64_t salt_pending; /* the salt the next commit gives the log */
    uint64_t wal_salt;     /* meta "wal_salt": this store's log records only */
    unsigned char *walbuf;
    size_t walbuf_cap;
    struct tail tail;
    int tail_inited;
};

static int wal_replay(struct store *s, const char *dir, uint64_t *last, int salvage, char *errbuf,
                      size_t errlen);
static int append_commit(struct store *s, struct store_msg *msgs, size_t n, int64_t now_ms,
                         const int64_t *times);
/* What the logs hold past LMDB's last seq (logs_judge). */
enum { LOGS_OK, LOGS_AHEAD, LOGS_DAMAGED };

struct log_verdict {
    int state;
    int chain[2], nchain;  /* the logs of the chain, in order */
    uint64_t chain_last;   /* its last seq (LMDB's if empty) */
    uint64_t behind;       /* good records behind it */
    uint64_t torn;         /* LOGS_OK: of them, a torn batch's (dropped) */
    int log;               /* LOGS_DAMAGED: the log where the chain stops, */
    size_t offset;         /* the offset of the first record it lacks, */
    uint64_t behind_first; /* the lowest seq behind it */
    uint64_t ahead_first;  /* LOGS_AHEAD: the first seq the logs have */
};

static int tail_load(struct store *s, uint64_t after, int salvage, size_t ends[2],
                     size_t counts[2], int *last_log, struct log_verdict *v);
static int checkpoint_all(struct store *s, int64_t now_ms);
static int ckpt_start(struct store *s);
static void ckpt_stop(struct store *s);
static int append_direct(struct store *s, struct store_msg *msgs, size_t n, int64_t now_ms);
static void tail_clear(struct tail *t);
static int read_last_seq(struct store *s, uint64_t *last);

/* ---- small helpers ---------------------------------------------------- */

static void put_be32(unsigned char *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

static void put_be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint32_t get_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static uint64_t get_u64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static void msg_key(unsigned char k[12], uint32_t topic, uint64_t seq)
{
    put_be32(k, topic);
    put_be64(k + 4, seq);
}

static int map_rc(int rc)
{
    switch (rc) {
    case 0:
        return STORE_OK;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
    case MDB_MAP_FULL:
        return STORE_EFULL;
    case ENOMEM:
        return STORE_ENOMEM;
    case EROFS:
    case EACCES:
        return STORE_EROFS;
    case MDB_PANIC:
        return STORE_EPANIC;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
        return STORE_ECORRUPT;
    default:
        return STORE_EIO;
    }
}

const char *store_errmsg(int code)
{
    switch (code) {
    case STORE_OK:
        return "ok";
    case STORE_EINVAL:
        return "invalid argument";
    case STORE_ENOMEM:
        return "out of memory";
    case STORE_EFULL:
        return "storage full";
    case STORE_EIO:
        return "storage I/O error";
    case STORE_ENOTFOUND:
        return "no store there";
    case STORE_EUNKNOWN:
        return "unknown ID";
    case STORE_EROFS:
        return "store is read-only";
    case STORE_EPANIC:
        return "storage environment failed, reopen needed";
    case STORE_EBUSY:
        return "data directory in use by another writer";
    case STORE_ECORRUPT:
        return "the store is damaged (see sluice check)";
    default:
        return "unknown error";
    }
}

static void set_err(char *buf, size_t len, const char *what, int rc)
{
    if (buf && len) snprintf(buf, len, "%s: %s", what, mdb_strerror(rc));
}

/* ---- transactions under the map lock ----------------------------------- */

/* Adopt a map size another process set (read-only handles see this). */
static void adopt_mapsize(struct store *s)
{
    pthread_rwlock_wrlock(&s->maplock);
    mdb_env_set_mapsize(s->env, 0);
    pthread_rwlock_unlock(&s->maplock);
}

/* Begin a transaction holding the read side of maplock; on success the
 * caller ends it with txn_end (or commits and unlocks itself). */
static int txn_begin(struct store *s, unsigned flags, MDB_txn **txn)
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

static void txn_end(struct store *s, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&s->maplock);
}

/* ---- LMDB's assertions on damaged pages ----------------------------------- */

/* LMDB 0.9 does not check the type of a page it steps or searches to: on a
 * damaged page (a zeroed one is no leaf) an assertion fails and LMDB
 * aborts the process, after calling the environment's assert function.
 * Every lookup and cursor move here is made through the two wrappers
 * below, which arm a jump: the assert function (on_lmdb_assert) jumps
 * back and the lookup returns MDB_CORRUPTED, so a damaged page fails the
 * read that meets it (reported, see report_damage) instead of stopping
 * the server.  Lookups and moves only read pages and hold no lock inside
 * LMDB, so leaving them midway leaves nothing half-done: the cursor is
 * abandoned (closed by its owner) and the transaction aborted as after
 * any error.  Puts and deletes are not wrapped: there the abort stays. */
static __thread jmp_buf *lmdb_guard;

static int lmdb_cursor_get(MDB_cursor *c, MDB_val *k, MDB_val *d, MDB_cursor_op op)
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

static int lmdb_get(MDB_txn *txn, MDB_dbi dbi, MDB_val *k, MDB_val *d)
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
static void on_lmdb_assert(MDB_env *env, const char *msg)
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

typedef int (*write_op)(struct store *s, MDB_txn *txn, void *arg);

/* Run op in a write transaction and commit it, growing the map and redoing
 * the transaction on MDB_MAP_FULL.  op returns an LMDB or errno code. */
static int write_txn(struct store *s, write_op op, void *arg, uint64_t *last_seq_out)
{
    int rc = MDB_MAP_FULL;
    if (s->read_only) return STORE_EROFS;
    for (int attempt = 0; attempt < GROW_RETRIES && rc == MDB_MAP_FULL; attempt++) {
        MDB_txn *txn;
        rc = txn_begin(s, 0, &txn);
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
    return map_rc(rc);
}

/* ---- meta ---------------------------------------------------------------- */

static int meta_get_u64(struct store *s, MDB_txn *txn, const char *name, uint64_t *v)
{
    MDB_val k = {strlen(name), (void *)name}, d;
    int rc = lmdb_get(txn, s->meta, &k, &d);
    if (rc == MDB_NOTFOUND) {
        *v = 0;
        return 0;
    }
    if (rc) return rc;
    if (d.mv_size != 8) return MDB_CORRUPTED;
    *v = get_u64(d.mv_data);
    return 0;
}

static int meta_put_u64(struct store *s, MDB_txn *txn, const char *name, uint64_t v)
{
    MDB_val k = {strlen(name), (void *)name}, d = {8, &v};
    return mdb_put(txn, s->meta, &k, &d, 0);
}

static int topic_get(struct store *s, MDB_txn *txn, const char *name, size_t len,
                     struct topic_rec *rec)
{
    MDB_val k = {len, (void *)name}, d;
    int rc = lmdb_get(txn, s->topics, &k, &d);
    if (rc) return rc;
    if (d.mv_size != sizeof *rec) return MDB_CORRUPTED;
    memcpy(rec, d.mv_data, sizeof *rec);
    return 0;
}

static int topic_put(struct store *s, MDB_txn *txn, const char *name, size_t len,
                     const struct topic_rec *rec)
{
    MDB_val k = {len, (void *)name}, d = {sizeof *rec, (void *)rec};
    return mdb_put(txn, s->topics, &k, &d, 0);
}

static uint64_t random_epoch(uint64_t avoid)
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
static int epoch_start(struct store *s, MDB_txn *txn, uint64_t last_seq)
{
    MDB_cursor *c;
    MDB_val k, d;
    unsigned char key[8];
    uint64_t prev = 0;
    int rc = mdb_cursor_open(txn, s->epochs, &c);
    if (rc) return rc;
    rc = lmdb_cursor_get(c, &k, &d, MDB_LAST);
    if (rc == 0 && k.mv_size == 8 && d.mv_size == 8) {
        prev = get_u64(d.mv_data);
        if (get_be64(k.mv_data) > last_seq) {
            rc = mdb_cursor_del(c, 0);
            if (rc) goto out;
        }
    } else if (rc != MDB_NOTFOUND) {
        rc = rc ? rc : MDB_CORRUPTED;
        goto out;
    }
    s->epoch = random_epoch(prev);
    s->epoch_first = last_seq + 1;
    put_be64(key, last_seq + 1);
    k.mv_size = 8;
    k.mv_data = key;
    d.mv_size = 8;
    d.mv_data = &s->epoch;
    rc = mdb_put(txn, s->epochs, &k, &d, 0);
out:
    mdb_cursor_close(c);
    return rc;
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

/* ---- messages: format, checksum ------------------------------------------ */

/* Which messages of a read transaction's snapshot carry a CRC: all of a
 * format 2 store; of a store of format 1 being migrated (a read-only
 * handle beside the read-write open that migrates it), those whose key
 * sorts before meta "migrated". */
struct fmt {
    int all;
    int has_below;
    unsigned char below[12];
};

static int fmt_load(struct store *s, MDB_txn *txn, struct fmt *f)
{
    uint64_t version;
    f->all = 1;
    f->has_below = 0;
    if (atomic_load(&s->all_summed)) return 0;
    MDB_val k = {8, "migrated"}, d;
    int rc = meta_get_u64(s, txn, "version", &version);
    if (rc) return rc;
    if (version >= 2) {
        atomic_store(&s->all_summed, 1);
        return 0;
    }
    f->all = 0;
    rc = lmdb_get(txn, s->meta, &k, &d);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    if (d.mv_size != 12) return MDB_CORRUPTED;
    memcpy(f->below, d.mv_data, 12);
    f->has_below = 1;
    return 0;
}

static int fmt_summed(const struct fmt *f, const MDB_val *k)
{
    return f->all || (f->has_below && k->mv_size == 12 && memcmp(k->mv_data, f->below, 12) < 0);
}

/* The CRC of a format 2 message: its key, then its value but the CRC. */
static uint32_t msg_sum(const void *key, const void *val, size_t len)
{
    return crc32c_end(crc32c_update(crc32c_update(crc32c_begin(), key, 12), val, len));
}

/* A stored message, taken apart. */
struct msg_parts {
    uint64_t epoch;
    int64_t time_ms;
    const char *event, *ikey;
    size_t event_len, ikey_len;
    const void *data;
    size_t data_len;
};

/* Check and take apart the message (k, d): 0, or MSG_BAD when its layout
 * or its CRC is wrong (damaged: never to be served). */
static int msg_parse(const struct fmt *f, const MDB_val *k, const MDB_val *d, struct msg_parts *m)
{
    const unsigned char *p = d->mv_data;
    size_t size = d->mv_size, sum = 0;
    if (k->mv_size != 12 || size < MSG_HDR) return MSG_BAD;
    if (fmt_summed(f, k)) {
        uint32_t crc;
        sum = MSG_SUM;
        if (size < MSG_HDR + MSG_SUM) return MSG_BAD;
        memcpy(&crc, p + size - MSG_SUM, 4);
        if (crc != msg_sum(k->mv_data, p, size - MSG_SUM)) return MSG_BAD;
    }
    size_t ev = p[16], kl = p[17];
    if (!sum && kl) return MSG_BAD; /* format 1: a u16 event length, at most 255 */
    if (MSG_HDR + ev + kl + sum > size) return MSG_BAD;
    memcpy(&m->epoch, p, 8);
    memcpy(&m->time_ms, p + 8, 8);
    m->event = ev ? (const char *)p + MSG_HDR : NULL;
    m->event_len = ev;
    m->ikey = kl ? (const char *)p + MSG_HDR + ev : NULL;
    m->ikey_len = kl;
    m->data = p + MSG_HDR + ev + kl;
    m->data_len = size - MSG_HDR - ev - kl - sum;
    return 0;
}

/* Bytes of a format 2 value. */
static size_t msg_size(size_t event_len, size_t ikey_len, size_t data_len)
{
    return MSG_HDR + event_len + ikey_len + data_len + MSG_SUM;
}

/* Write a format 2 value at p (msg_size bytes) for key. */
static void msg_write(unsigned char *p, const unsigned char key[12], uint64_t epoch,
                      int64_t time_ms, const char *event, size_t ev, const char *ikey, size_t kl,
                      const void *data, size_t dl)
{
    size_t n = MSG_HDR + ev + kl + dl;
    memcpy(p, &epoch, 8);
    memcpy(p + 8, &time_ms, 8);
    p[16] = (unsigned char)ev;
    p[17] = (unsigned char)kl;
    if (ev) memcpy(p + MSG_HDR, event, ev);
    if (kl) memcpy(p + MSG_HDR + ev, ikey, kl);
    if (dl) memcpy(p + MSG_HDR + ev + kl, data, dl);
    uint32_t crc = msg_sum(key, p, n);
    memcpy(p + n, &crc, 4);
}

/* A damaged message or page met by a read: counted, and told. */
static void report_damage(struct store *s, const char *topic, size_t topic_len, uint64_t seq,
                          const char *what)
{
    atomic_fetch_add(&s->damaged, 1);
    if (s->damage_fn) {
        struct store_damage d = {topic, topic_len, seq, what};
        s->damage_fn(s->damage_ud, &d);
    }
}

/* LMDB's answers that mean a damaged file rather than a failed call. */
static int lmdb_damage(int rc)
{
    return rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND;
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
 * read-only reader tells the two formats apart by "migrated" (fmt_load).
 * A message too short for format 1 is left as it is: read as format 2, it
 * fails its CRC and is reported, never blessed with a checksum. */
static int migrate_op(struct store *s, MDB_txn *txn, void *argp)
{
    struct migrate_arg *a = argp;
    MDB_cursor *c;
    MDB_val k = {8, "migrated"}, d;
    unsigned char key[12];
    int rc = lmdb_get(txn, s->meta, &k, &d), n = 0;
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
    rc = k.mv_size ? lmdb_cursor_get(c, &k, &d, MDB_SET_RANGE)
                   : lmdb_cursor_get(c, &k, &d, MDB_FIRST);
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
            uint32_t crc = msg_sum(key, a->buf, d.mv_size);
            memcpy(a->buf + d.mv_size, &crc, 4);
            MDB_val kk = {12, key}, nd = {len, a->buf};
            if ((rc = mdb_cursor_put(c, &kk, &nd, MDB_CURRENT))) break;
            a->moved++;
        }
        rc = lmdb_cursor_get(c, &k, &d, MDB_NEXT);
    }
    if (rc == MDB_NOTFOUND) {
        MDB_val mk = {8, "migrated"};
        rc = mdb_del(txn, s->meta, &mk, NULL);
        if (rc == MDB_NOTFOUND) rc = 0;
        if (!rc) rc = meta_put_u64(s, txn, "version", STORE_FORMAT_VERSION);
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
        code = write_txn(s, migrate_op, &a, NULL);
    free(a.buf);
    if (code && errbuf && errlen)
        snprintf(errbuf, errlen, "adding checksums to the messages of format 1: %s",
                 store_errmsg(code));
    if (!code) atomic_store(&s->all_summed, 1);
    return code;
}

static int init_rw(struct store *s, const char *dir, char *errbuf, size_t errlen)
{
    MDB_txn *txn;
    uint64_t version, last;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc) {
        set_err(errbuf, errlen, "begin", rc);
        return rc;
    }
    if ((rc = open_dbs(s, txn, MDB_CREATE))) goto fail;
    if ((rc = meta_get_u64(s, txn, "version", &version))) goto fail;
    if (version == 0) {
        if ((rc = meta_put_u64(s, txn, "version", STORE_FORMAT_VERSION))) goto fail;
    } else if (version > STORE_FORMAT_VERSION) {
        rc = MDB_INCOMPATIBLE;
        goto fail;
    }
    if ((rc = meta_get_u64(s, txn, "last_seq", &last))) goto fail;
    if ((rc = meta_get_u64(s, txn, "wal_salt", &s->wal_salt))) goto fail;
    if (!s->wal_salt) {
        s->wal_salt = random_epoch(0);
        if ((rc = meta_put_u64(s, txn, "wal_salt", s->wal_salt))) goto fail;
    }
    /* The log's messages belong to the epoch before this one: replay them
     * before this epoch starts after them. */
    if ((rc = mdb_txn_commit(txn))) {
        set_err(errbuf, errlen, "commit", rc);
        return rc;
    }
    /* Before anything is written in format 2 (the replay, below). */
    if (version && version < STORE_FORMAT_VERSION) {
        int code = migrate_v1(s, errbuf, errlen);
        if (code) return code == STORE_EFULL ? MDB_MAP_FULL : code == STORE_ENOMEM ? ENOMEM : EIO;
    } else {
        atomic_store(&s->all_summed, 1);
    }
    if ((rc = wal_replay(s, dir, &last, s->salvage, errbuf, errlen))) {
        if (rc != MDB_CORRUPTED) set_err(errbuf, errlen, "replaying the log", rc);
        return rc;
    }
    if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn))) {
        set_err(errbuf, errlen, "begin", rc);
        return rc;
    }
    if ((rc = epoch_start(s, txn, last))) goto fail;
    /* The logs' new salt, if the replay's own commit did not record it:
     * durable before the first append. */
    if (s->salt_pending && (rc = meta_put_u64(s, txn, "wal_salt", s->salt_pending))) goto fail;
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

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The two logs' file names in the data directory. */
static const char *const log_names[2] = {"wal", "wal2"};

static int logs_open(struct store *s, const char *dir, int read_only)
{
    int rc = 0;
    for (int i = 0; i < 2 && !rc; i++)
        rc = wal_open(&s->logs[i], dir, log_names[i], read_only, s->log_size);
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
static void verdict_text(const char *dir, const struct log_verdict *v, uint64_t after, char *buf,
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
                 dir, log_names[v->log], v->offset, (unsigned long long)v->chain_last + 1,
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
static int wal_replay(struct store *s, const char *dir, uint64_t *last, int salvage, char *errbuf,
                      size_t errlen)
{
    size_t ends[2] = {0, 0}, counts[2] = {0, 0};
    struct log_verdict v;
    int last_log = -1;
    int rc = logs_open(s, dir, 0);
    if (!rc) rc = tail_load(s, *last, salvage, ends, counts, &last_log, &v);
    if (!rc && v.state != LOGS_OK && !salvage && !s->relaxed) {
        /* Durable: a record acknowledged behind the cut would be lost. */
        verdict_text(dir, &v, *last, errbuf, errlen);
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
    if (!rc) s->salt_pending = random_epoch(s->wal_salt);
    if (!rc && s->tail.count) {
        *last = s->tail.last_seq;
        s->log_msgs[0] = counts[0];
        s->log_msgs[1] = counts[1];
        int code = checkpoint_all(s, wall_ms());
        if (code && !salvage && code != STORE_ENOMEM) {
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
            rc = code == STORE_ENOMEM ? ENOMEM : EIO;
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
        if ((rc = read_last_seq(s, &last))) break;
        rc = tail_load(s, last, 0, ends, counts, &last_log, &v);
        if (rc || v.state == LOGS_OK || attempt == 20) break;
        pthread_rwlock_wrlock(&s->tail.lock);
        tail_clear(&s->tail);
        pthread_rwlock_unlock(&s->tail.lock);
        usleep(2000);
    }
    logs_close(s);
    return rc;
}

static int init_ro(struct store *s, char *errbuf, size_t errlen)
{
    MDB_txn *txn;
    uint64_t version;
    /* txn_begin, not mdb_txn_begin: the server may grow the map between
     * our env open and this begin (MDB_MAP_RESIZED). */
    int rc = txn_begin(s, MDB_RDONLY, &txn);
    if (rc) {
        set_err(errbuf, errlen, "begin", rc);
        return rc;
    }
    if ((rc = open_dbs(s, txn, 0))) goto fail;
    if ((rc = meta_get_u64(s, txn, "version", &version))) goto fail;
    if (version < 1 || version > STORE_FORMAT_VERSION) {
        rc = MDB_INCOMPATIBLE;
        goto fail;
    }
    if ((rc = meta_get_u64(s, txn, "wal_salt", &s->wal_salt))) goto fail;
    /* Commit, not abort: DBI handles opened in an aborted txn are closed. */
    rc = mdb_txn_commit(txn);
    pthread_rwlock_unlock(&s->maplock);
    if (rc) set_err(errbuf, errlen, "commit", rc);
    return rc;
fail:
    set_err(errbuf, errlen, "init", rc);
    txn_end(s, txn);
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
static int check_file_size(struct store *s, char *errbuf, size_t errlen)
{
    MDB_envinfo info;
    MDB_stat st;
    struct stat sb;
    if (mdb_env_info(s->env, &info) || mdb_env_stat(s->env, &st) || stat(s->data_path, &sb))
        return STORE_EIO;
    uint64_t need = ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
    if ((uint64_t)sb.st_size >= need) return 0;
    if (errbuf && errlen)
        snprintf(errbuf, errlen,
                 "%s is %llu bytes but its pages reach %llu: the file is truncated or damaged "
                 "(sluice check tells more)",
                 s->data_path, (unsigned long long)sb.st_size, (unsigned long long)need);
    return STORE_ECORRUPT;
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
    if (txn_begin(s, MDB_RDONLY, &txn)) return;
    if (fmt_load(s, txn, &f) || mdb_cursor_open(txn, s->topics, &c)) {
        txn_end(s, txn);
        return;
    }
    for (rc = lmdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0 && !stop;
         rc = lmdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        struct topic_rec rec;
        if (d.mv_size != sizeof rec) {
            report_damage(s, k.mv_data, k.mv_size, 0, "damaged topic record (found at open)");
            continue;
        }
        memcpy(&rec, d.mv_data, sizeof rec);
        uint64_t ends[2] = {rec.first_seq, rec.last_seq};
        for (int i = 0; i < 2 && rec.count && !stop; i++) {
            unsigned char key[12];
            MDB_val mk = {sizeof key, key}, mv;
            struct msg_parts m;
            msg_key(key, rec.number, ends[i]);
            int r = lmdb_get(txn, s->msgs, &mk, &mv);
            const char *what = r == MDB_NOTFOUND ? "message missing (found at open)"
                               : r               ? "damaged page (found at open)"
                               : msg_parse(&f, &mk, &mv, &m)
                                   ? "message checksum mismatch (found at open)"
                                   : NULL;
            if (what) report_damage(s, k.mv_data, k.mv_size, ends[i], what);
            stop = r && r != MDB_NOTFOUND; /* the transaction may be spent */
        }
    }
    if (rc && rc != MDB_NOTFOUND && !stop)
        report_damage(s, NULL, 0, 0, "damaged page in the topics database (found at open)");
    mdb_cursor_close(c);
    txn_end(s, txn);
}

/* One read-write handle per data directory: a second server (or a second
 * open in this process) on the same directory would interleave epochs.
 * flock on a file of our own, so LMDB's fcntl locks are not disturbed. */
static int take_dir_lock(struct store *s, const char *dir, char *errbuf, size_t errlen)
{
    char *path;
    if (asprintf(&path, "%s/sluice.lock", dir) < 0) return STORE_ENOMEM;
    s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    free(path);
    if (s->lock_fd < 0) {
        if (errbuf && errlen) snprintf(errbuf, errlen, "%s/sluice.lock: %s", dir, strerror(errno));
        return map_rc(errno);
    }
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        if (errbuf && errlen)
            snprintf(errbuf, errlen, "%s: %s", dir,
                     e == EWOULDBLOCK ? "in use by another writer" : strerror(e));
        return e == EWOULDBLOCK ? STORE_EBUSY : map_rc(e);
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
    int rc, code = STORE_EIO, lock_inited = 0;

    if (errbuf && errbuf_len) errbuf[0] = 0;
    *out = NULL;
    if (!dir || !*dir) return STORE_EINVAL;
    if (!opts) opts = &defaults;

    s = calloc(1, sizeof *s);
    if (!s) return STORE_ENOMEM;
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
        code = STORE_ENOMEM;
        goto fail;
    }
    if (s->read_only) {
        if (stat(s->data_path, &sb) != 0) {
            if (errbuf && errbuf_len) snprintf(errbuf, errbuf_len, "%s: no store", dir);
            code = STORE_ENOTFOUND;
            goto fail;
        }
    } else {
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
            if (errbuf && errbuf_len)
                snprintf(errbuf, errbuf_len, "mkdir %s: %s", dir, strerror(errno));
            code = map_rc(errno);
            goto fail;
        }
        if ((code = take_dir_lock(s, dir, errbuf, errbuf_len))) goto fail;
        code = STORE_EIO;
        if (stat(s->data_path, &sb) != 0 && errno == ENOENT &&
            (rc = create_env(dir, s->data_path))) {
            set_err(errbuf, errbuf_len, "creating data.mdb", rc);
            code = map_rc(rc);
            goto fail;
        }
    }

    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    rc = pthread_rwlock_init(&s->maplock, &attr);
    pthread_rwlockattr_destroy(&attr);
    if (rc) {
        code = STORE_ENOMEM;
        goto fail;
    }
    lock_inited = 1;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    rc = pthread_rwlock_init(&s->tail.lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    if (rc) {
        code = STORE_ENOMEM;
        goto fail;
    }
    s->tail_inited = 1;

    if ((rc = mdb_env_create(&s->env))) {
        set_err(errbuf, errbuf_len, "mdb_env_create", rc);
        code = map_rc(rc);
        goto fail;
    }
    mdb_env_set_assert(s->env, on_lmdb_assert);
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
        code = rc == ENOENT ? STORE_ENOTFOUND : map_rc(rc);
        goto fail;
    }
    /* LMDB may have just made lock.mdb; data.mdb's entry was synced by
     * create_env.  Cheap, and what a store relies on is then on disk. */
    if (!s->read_only && (rc = wal_sync_dir(dir))) {
        set_err(errbuf, errbuf_len, "fsync of the data directory", rc);
        code = map_rc(rc);
        goto fail;
    }
    if ((rc = check_file_size(s, errbuf, errbuf_len))) {
        code = rc;
        goto fail;
    }
    if (!s->read_only) open_headroom(s);
    rc = s->read_only ? init_ro(s, errbuf, errbuf_len) : init_rw(s, dir, errbuf, errbuf_len);
    if (rc) {
        code = (s->read_only && rc == MDB_NOTFOUND) ? STORE_ENOTFOUND : map_rc(rc);
        goto fail;
    }
    if (s->read_only && (rc = load_server_tail(s, dir))) {
        set_err(errbuf, errbuf_len, "reading the log", rc);
        code = map_rc(rc);
        goto fail;
    }
    if (s->logs[0] && (code = ckpt_start(s))) {
        set_err(errbuf, errbuf_len, "starting the checkpoint thread", EAGAIN);
        goto fail;
    }
    if (!s->read_only) probe_topics(s);
    *out = s;
    return STORE_OK;

fail:
    logs_close(s);
    if (s->tail_inited) {
        tail_clear(&s->tail);
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
    if (s->logs[0]) checkpoint_all(s, wall_ms()); /* also voids a failed write's records */
    ckpt_stop(s);
    logs_close(s);
    free(s->walbuf);
    tail_clear(&s->tail);
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

static int read_last_seq(struct store *s, uint64_t *last)
{
    MDB_txn *txn;
    int rc = txn_begin(s, MDB_RDONLY, &txn);
    if (rc) return rc;
    rc = meta_get_u64(s, txn, "last_seq", last);
    txn_end(s, txn);
    return rc;
}

uint64_t store_last_seq(struct store *s)
{
    uint64_t last = 0;
    if (!s->read_only) return atomic_load(&s->last_seq);
    if (read_last_seq(s, &last)) return 0;
    return last > s->tail.last_seq ? last : s->tail.last_seq;
}

int store_sync(struct store *s)
{
    int rc = 0;
    if (s->read_only || !s->relaxed) return STORE_OK;
    for (int i = 0; i < 2 && !rc; i++)
        if (s->logs[i]) rc = wal_sync(s->logs[i]);
    return map_rc(rc);
}

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
    if (!id || len == 0 || len >= STORE_ID_MAX) return -1;
    if (id[0] == '0') return -1;
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
            return -1;
        if (__builtin_mul_overflow(e, 36, &e) || __builtin_add_overflow(e, d, &e)) return -1;
    }
    if (i == 0 || i == len) return -1;
    i++;
    if (i == len || id[i] == '0') return -1;
    for (; i < len; i++) {
        if (id[i] < '0' || id[i] > '9') return -1;
        unsigned d = (unsigned)(id[i] - '0');
        if (__builtin_mul_overflow(q, 10, &q) || __builtin_add_overflow(q, d, &q)) return -1;
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
    int rc, code = STORE_EUNKNOWN;

    if (id_text_parse(id, len, &e, &q)) return STORE_EINVAL;
    /* This handle's own epoch, up to what it has committed: the common
     * resume, and no read transaction needed to know it. */
    if (!s->read_only && e == s->epoch && q >= s->epoch_first && q <= atomic_load(&s->last_seq)) {
        *seq = q;
        return STORE_OK;
    }
    if ((rc = txn_begin(s, MDB_RDONLY, &txn))) return map_rc(rc);
    if ((rc = meta_get_u64(s, txn, "last_seq", &last))) goto out;
    if (s->read_only && last < s->tail.last_seq) last = s->tail.last_seq; /* the server's log */
    /* Ours: messages of an earlier run that an open kept in the log (no
     * room in LMDB to replay them) are past LMDB's last seq. */
    if (!s->read_only && last < atomic_load(&s->last_seq)) last = atomic_load(&s->last_seq);
    if (q > last) goto out; /* never committed here (or lost in a crash) */
    if ((rc = mdb_cursor_open(txn, s->epochs, &c))) goto out;
    /* The epoch in force at q: the last entry whose start is <= q. */
    put_be64(key, q + 1);
    k.mv_size = 8;
    k.mv_data = key;
    rc = lmdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
    if (rc == 0)
        rc = lmdb_cursor_get(c, &k, &d, MDB_PREV);
    else if (rc == MDB_NOTFOUND)
        rc = lmdb_cursor_get(c, &k, &d, MDB_LAST);
    if (rc == MDB_NOTFOUND) {
        rc = 0;
        goto out;
    }
    if (rc) goto out;
    if (d.mv_size == 8 && get_u64(d.mv_data) == e) {
        *seq = q;
        code = STORE_OK;
    }
out:
    if (c) mdb_cursor_close(c);
    txn_end(s, txn);
    return rc ? map_rc(rc) : code;
}

/* The epoch and publish time of one message in LMDB (zeroes if missing). */
static int msg_head(struct store *s, MDB_txn *txn, uint32_t number, uint64_t seq, uint64_t *epoch,
                    int64_t *time_ms)
{
    unsigned char key[12];
    MDB_val k = {sizeof key, key}, d;
    msg_key(key, number, seq);
    *epoch = 0;
    *time_ms = 0;
    int rc = lmdb_get(txn, s->msgs, &k, &d);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    if (d.mv_size < MSG_HDR) return MDB_CORRUPTED;
    *epoch = get_u64(d.mv_data);
    memcpy(time_ms, (const char *)d.mv_data + 8, 8);
    return 0;
}

static int msg_epoch(struct store *s, MDB_txn *txn, uint32_t number, uint64_t seq, uint64_t *epoch)
{
    int64_t time_ms;
    return msg_head(s, txn, number, seq, epoch, &time_ms);
}

/* ---- retention inside a write transaction -------------------------------- */

/* Delete from the front of the topic while over max_count or older than
 * max_age_ms; update rec.  O(deleted + 1). */
static int trim_txn(struct store *s, MDB_txn *txn, struct topic_rec *rec, uint64_t max_count,
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
    msg_key(key, rec->number, 0);
    k.mv_size = sizeof key;
    k.mv_data = key;
    rc = lmdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
    while (rc == 0) {
        if (k.mv_size != 12 || get_be32(k.mv_data) != rec->number) break;
        uint64_t seq = get_be64((const unsigned char *)k.mv_data + 4);
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
        rc = lmdb_cursor_get(c, &k, &d, MDB_NEXT);
    }
    if (rc == MDB_NOTFOUND) rc = 0;
    if (rc == 0) {
        if (rec->count == 0)
            rec->first_seq = 0;
        else if (k.mv_size == 12 && get_be32(k.mv_data) == rec->number)
            rec->first_seq = get_be64((const unsigned char *)k.mv_data + 4);
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

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    while (n--)
        h = (h ^ (unsigned char)*p++) * 0x100000001b3ull;
    return h;
}

static int msg_valid(const struct store_msg *m)
{
    if (!m->topic || m->topic_len == 0 || m->topic_len > STORE_TOPIC_MAX) return 0;
    if (m->event_len > STORE_EVENT_MAX || (m->event_len && !m->event)) return 0;
    if (m->data_len && !m->data) return 0;
    if (m->data_len > (size_t)1 << 31) return 0;
    if (m->ikey_len > STORE_IKEY_MAX || (m->ikey_len && !m->ikey)) return 0;
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
    put_be32(out, number);
    memcpy(out + 4, key, len);
    return 4 + len;
}

/* The message of the topic with this key, if published at or after
 * now_ms - the window: 0 and its ID, or MDB_NOTFOUND. */
static int idem_find(struct store *s, MDB_txn *txn, uint32_t number, const char *key, size_t len,
                     int64_t now_ms, uint64_t *seq, uint64_t *epoch)
{
    unsigned char kb[4 + STORE_IKEY_MAX];
    MDB_val k = {idem_key(kb, number, key, len), kb}, d;
    int64_t t;
    if (!s->has_idem) return MDB_NOTFOUND;
    int rc = lmdb_get(txn, s->idem, &k, &d);
    if (rc) return rc;
    if (d.mv_size != 24) return MDB_NOTFOUND; /* damaged: not a duplicate */
    memcpy(&t, (const char *)d.mv_data + 16, 8);
    if (t < now_ms - (int64_t)s->dedup_window_ms) return MDB_NOTFOUND;
    *seq = get_u64(d.mv_data);
    *epoch = get_u64((const char *)d.mv_data + 8);
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
    put_be64(tk, (uint64_t)time_ms);
    put_be64(tk + 8, seq);
    MDB_val tkv = {16, tk};
    return mdb_put(txn, s->idem_time, &tkv, &k, 0);
}

/* Remove up to `budget` keys that left the window before now_ms; *due
 * (dry: look only) says whether one has.  O(removed). */
static int idem_expire(struct store *s, MDB_txn *txn, int64_t now_ms, size_t budget, int dry,
                       int *due)
{
    MDB_cursor *c;
    MDB_val k, d;
    int64_t cutoff = now_ms - (int64_t)s->dedup_window_ms;
    int rc;
    if (!s->has_idem) return 0;
    if ((rc = mdb_cursor_open(txn, s->idem_time, &c))) return rc;
    rc = lmdb_cursor_get(c, &k, &d, MDB_FIRST);
    for (size_t n = 0; rc == 0 && n < budget; n++) {
        if (k.mv_size != 16 || (int64_t)get_be64(k.mv_data) >= cutoff) break;
        if (dry) {
            *due = 1;
            break;
        }
        uint64_t seq = get_be64((const unsigned char *)k.mv_data + 8);
        unsigned char kb[4 + STORE_IKEY_MAX];
        if (d.mv_size > sizeof kb) break;
        memcpy(kb, d.mv_data, d.mv_size);
        MDB_val ik = {d.mv_size, kb}, iv;
        /* Only if no newer message of the topic took the key since. */
        rc = lmdb_get(txn, s->idem, &ik, &iv);
        if (rc == 0 && iv.mv_size == 24 && get_u64(iv.mv_data) == seq)
            rc = mdb_del(txn, s->idem, &ik, NULL);
        if (rc && rc != MDB_NOTFOUND) break;
        if ((rc = mdb_cursor_del(c, 0))) break;
        /* After a delete the cursor sits on the next item already. */
        rc = lmdb_cursor_get(c, &k, &d, MDB_NEXT);
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
    if ((rc = meta_get_u64(s, txn, "last_seq", &last))) return rc;

    for (size_t i = 0; i < a->n; i++) {
        struct store_msg *m = &a->msgs[i];
        m->duplicate = 0; /* (again, if the transaction is redone) */
        if (!msg_valid(m)) {
            m->status = STORE_EINVAL;
            m->seq = 0;
            continue;
        }
        uint64_t h = fnv1a(m->topic, m->topic_len);
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
            rc = topic_get(s, txn, m->topic, m->topic_len, &t->rec);
            if (rc == MDB_NOTFOUND) {
                /* Read only when a batch makes a topic: most make none. */
                if (!new_topics && (rc = meta_get_u64(s, txn, "next_topic", &next_topic)))
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
            rc = idem_find(s, txn, t->rec.number, m->ikey, kl, a->now_ms, &m->seq, &m->epoch);
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
        msg_key(key, t->rec.number, seq);
        size_t ev = m->event ? m->event_len : 0;
        MDB_val k = {sizeof key, key}, d = {msg_size(ev, kl, m->data_len), NULL};
        if ((rc = mdb_put(txn, s->msgs, &k, &d, MDB_RESERVE))) return rc;
        uint64_t epoch = a->times ? m->epoch : s->epoch;
        int64_t time_ms = a->times ? a->times[i] : a->now_ms;
        msg_write(d.mv_data, key, epoch, time_ms, m->event, ev, m->ikey, kl, m->data, m->data_len);
        if (kl && (rc = idem_put(s, txn, t->rec.number, m->ikey, kl, seq, epoch, time_ms)))
            return rc;

        t->rec.count++;
        if (!t->rec.first_seq) t->rec.first_seq = seq;
        t->rec.last_seq = seq;
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
        if ((rc = trim_txn(s, txn, &t->rec, t->max_count, t->max_age_ms, t->now_ms, NULL)))
            return rc;
        if ((rc = topic_put(s, txn, t->name, t->len, &t->rec))) return rc;
    }
    if ((rc = meta_put_u64(s, txn, "last_seq", last))) return rc;
    if (new_topics && (rc = meta_put_u64(s, txn, "next_topic", next_topic))) return rc;
    if (a->salt && (rc = meta_put_u64(s, txn, "wal_salt", a->salt))) return rc;
    a->last_seq = last;
    return 0;
}

/* msgs in one synced LMDB commit, recording salt unless
 * 0; times NULL: new messages, given seqs now, else a checkpoint's (see
 * struct append_arg).  Any one thread at a time: it touches no field of
 * the log's. */
static int commit_msgs(struct store *s, struct store_msg *msgs, size_t n, int64_t now_ms,
                       const int64_t *times, uint64_t salt)
{
    struct append_arg a = {.msgs = msgs, .n = n, .now_ms = now_ms, .times = times, .salt = salt};
    a.cap = 8;
    while (a.cap < n * 2)
        a.cap <<= 1;
    a.t = malloc(a.cap * sizeof *a.t);
    if (!a.t) return STORE_ENOMEM;
    int code = write_txn(s, append_op, &a, times ? NULL : &a.last_seq);
    free(a.t);
    return code;
}

/* commit_msgs for the writing thread, which gives the log a salt that is
 * pending (after a failed log write). */
static int append_commit(struct store *s, struct store_msg *msgs, size_t n, int64_t now_ms,
                         const int64_t *times)
{
    int code = commit_msgs(s, msgs, n, now_ms, times, s->salt_pending);
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

/* ---- the tail: logged, not yet in LMDB --------------------------------------- */

static struct tail_topic *tail_find(struct tail *t, const char *name, size_t len, uint64_t h)
{
    if (!t->nbuckets) return NULL;
    for (struct tail_topic *tt = t->buckets[h & (t->nbuckets - 1)]; tt; tt = tt->hnext)
        if (tt->hash == h && tt->len == len && !memcmp(tt->name, name, len)) return tt;
    return NULL;
}

/* The topic's entry, made if missing (writer, under the write lock). */
static struct tail_topic *tail_topic_get(struct tail *t, const char *name, size_t len)
{
    uint64_t h = fnv1a(name, len);
    struct tail_topic *tt = tail_find(t, name, len, h);
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
    return (size_t)((tt->hash * 31) ^ fnv1a(key, len)) & (TAIL_IKEY_BUCKETS - 1);
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
    struct tail_topic *tt = tail_find((struct tail *)t, topic, topic_len, fnv1a(topic, topic_len));
    if (!tt) return NULL;
    for (struct tail_msg *m = t->ikeys[ikey_bucket(tt, key, len)]; m; m = m->ikey_next)
        if (m->topic == tt && m->ikey_len == len && !memcmp(tail_msg_ikey(m), key, len)) return m;
    return NULL;
}

static void tail_link(struct tail *t, struct tail_msg *m)
{
    struct tail_topic *tt = m->topic;
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
    t->count++;
    t->last_seq = m->seq;
}

/* Free every message and topic entry (under the write lock). */
static void tail_clear(struct tail *t)
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
    if (r->event_len) memcpy(m->bytes, r->event, r->event_len);
    if (r->data_len) memcpy(m->bytes + r->event_len, r->data, r->data_len);
    return m;
}

/* A copy of r with its topic entry, made if missing (under the write lock). */
static struct tail_msg *tail_msg_new(struct tail *t, const struct wal_rec *r)
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
        return STORE_ENOMEM;
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
        msgs[i].seq = m->seq;
        msgs[i].epoch = m->epoch;
        times[i] = m->time_ms;
    }
    *msgs_out = msgs;
    *times_out = times;
    return STORE_OK;
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
        int code = commit_msgs(s, c->msgs, c->n, 0, c->times, 0);
        pthread_mutex_lock(&c->mu);
        c->code = code;
        atomic_store(&c->state, CKPT_DONE);
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static int ckpt_start(struct store *s)
{
    struct ckpt *c = &s->ckpt;
    if (pthread_mutex_init(&c->mu, NULL)) return STORE_ENOMEM;
    if (pthread_cond_init(&c->cv, NULL)) {
        pthread_mutex_destroy(&c->mu);
        return STORE_ENOMEM;
    }
    if (pthread_create(&c->thread, NULL, ckpt_main, s)) {
        pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->mu);
        return STORE_EIO;
    }
    c->running = 1;
    return STORE_OK;
}

/* Take the outcome of a finished job (writer): on success its messages
 * leave the tail and its log is free again; on failure both stay, and the
 * next checkpoint moves them with the rest (checkpoint_all). */
static void ckpt_reap(struct store *s)
{
    struct ckpt *c = &s->ckpt;
    if (atomic_load(&c->state) != CKPT_DONE) return;
    if (c->code == STORE_OK) {
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

static void ckpt_stop(struct store *s)
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
static int checkpoint_all(struct store *s, int64_t now_ms)
{
    struct tail *t = &s->tail;
    struct store_msg *msgs;
    int64_t *times;
    ckpt_wait(s);
    if (t->count == 0) return STORE_OK;
    int code = tail_batch(t, &msgs, &times);
    if (code == STORE_OK) {
        code = append_commit(s, msgs, t->count, now_ms, times);
        free(msgs);
        free(times);
    }
    if (code) {
        atomic_fetch_add(&s->checkpoint_failures, 1);
        return code;
    }
    atomic_fetch_add(&s->checkpoints, 1);
    pthread_rwlock_wrlock(&t->lock);
    tail_clear(t);
    pthread_rwlock_unlock(&t->lock);
    for (int i = 0; i < 2; i++) {
        if (s->logs[i]) wal_rewind(s->logs[i]);
        s->log_msgs[i] = 0;
    }
    return STORE_OK;
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
    if (s->log_msgs[s->cur] == 0) return STORE_OK;
    if (atomic_load(&c->state) == CKPT_BUSY) {
        if (!must) return STORE_OK;
        ckpt_wait(s);
    }
    if (!c->running || s->wal_failed || s->log_msgs[other] || s->tail.count != s->log_msgs[s->cur])
        return checkpoint_all(s, now_ms);
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
    return STORE_OK;
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
 * or STORE_E*. */
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
    int rc = *rtxn ? 0 : txn_begin(s, MDB_RDONLY, rtxn);
    if (rc) {
        *rtxn = NULL;
        return map_rc(rc);
    }
    rc = topic_get(s, *rtxn, m->topic, m->topic_len, &rec);
    if (rc == 0)
        rc = idem_find(s, *rtxn, rec.number, m->ikey, m->ikey_len, now_ms, &m->seq, &m->epoch);
    if (rc == 0) {
        m->duplicate = 1;
        return 0;
    }
    return rc == MDB_NOTFOUND ? 0 : map_rc(rc);
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

    if (s->wal_failed) return append_direct(s, msgs, n, now_ms);
    ckpt_reap(s);
    for (size_t i = 0; i < n; i++) {
        struct store_msg *m = &msgs[i];
        m->seq = 0;
        if (!msg_valid(m)) {
            m->status = STORE_EINVAL;
            continue;
        }
        m->status = 0;
        if (m->ikey_len && (code = dedup_logged(s, msgs, i, now_ms, &rtxn))) {
            if (rtxn) txn_end(s, rtxn);
            return code;
        }
        if (m->duplicate) continue;
        if (m->ikey_len) keyed = 1;
        valid++;
        bytes += wal_rec_size(m->topic_len, m->event ? m->event_len : 0, m->data_len,
                              m->ikey ? m->ikey_len : 0);
    }
    if (rtxn) txn_end(s, rtxn);
    if (!valid) return STORE_OK;
    if (keyed && tail_ikeys_ready(t)) return STORE_ENOMEM;
    if (s->log_msgs[s->cur] + valid > TAIL_MAX || bytes > wal_room(s->logs[s->cur])) {
        if ((code = checkpoint_begin(s, now_ms, 1))) return code;
        /* Bigger than a whole log: straight into LMDB. */
        if (bytes > wal_room(s->logs[s->cur])) return append_direct(s, msgs, n, now_ms);
    }
    if (bytes > s->walbuf_cap) {
        unsigned char *b = realloc(s->walbuf, bytes);
        if (!b) return STORE_ENOMEM;
        s->walbuf = b;
        s->walbuf_cap = bytes;
    }

    /* Copies and log records outside the tail's lock: readers wait only
     * for the topic lookups and the links. */
    struct tail_msg *first = NULL, **link = &first;
    size_t off = 0;
    code = STORE_OK;
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
                            .flags = off ? 0 : WAL_REC_BATCH_FIRST};
        struct tail_msg *tm = tail_msg_copy(&r);
        if (!tm) {
            code = STORE_ENOMEM;
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
    if (code == STORE_OK) {
        struct tail_msg *tm = first;
        pthread_rwlock_wrlock(&t->lock);
        for (size_t i = 0; i < n && code == STORE_OK; i++) {
            if (msgs[i].status || msgs[i].duplicate) continue;
            tm->topic = tail_topic_get(t, msgs[i].topic, msgs[i].topic_len);
            if (!tm->topic) code = STORE_ENOMEM;
            tm = tm->next;
        }
        pthread_rwlock_unlock(&t->lock);
    }

    /* Relaxed: no flush; store_sync's, about once a second, bounds what
     * an OS crash can take. */
    struct wal *log = s->logs[s->cur];
    int logged = code == STORE_OK && (s->relaxed ? wal_write(log, s->walbuf, off)
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
        s->salt_pending = random_epoch(s->wal_salt);
        return append_direct(s, msgs, n, now_ms);
    }
    pthread_rwlock_wrlock(&t->lock);
    for (struct tail_msg *tm = first, *next; tm; tm = next) {
        next = tm->next;
        tail_link(t, tm);
    }
    pthread_rwlock_unlock(&t->lock);
    s->log_msgs[s->cur] += valid;
    atomic_store(&s->last_seq, last);
    return STORE_OK;
}

/* A batch straight into LMDB, after the tail so that seqs stay in order. */
static int append_direct(struct store *s, struct store_msg *msgs, size_t n, int64_t now_ms)
{
    int code = checkpoint_all(s, now_ms);
    return code ? code : append_commit(s, msgs, n, now_ms, NULL);
}

int store_append_batch(struct store *s, struct store_msg *msgs, size_t n, int64_t now_ms)
{
    if (s->read_only) return STORE_EROFS;
    if (n == 0) return STORE_OK;
    if (!msgs) return STORE_EINVAL;
    for (size_t i = 0; i < n; i++)
        msgs[i].duplicate = 0;
    int code = append_logged(s, msgs, n, now_ms); /* a read-write handle has its logs */
    for (size_t i = 0; i < n && code == STORE_OK; i++)
        if (msgs[i].duplicate && !msgs[i].status) atomic_fetch_add(&s->duplicates, 1);
    return code;
}

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
        struct tail_msg *m = tail_msg_new(t, &r);
        if (!m) return ENOMEM;
        tail_link(t, m);
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
    if (tail_log < 0)
        tail_log = n[0] && (!n[1] || low[0] < low[1]) ? 0 : 1;
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
        struct tail_msg *m = tail_msg_new(&s->tail, &r);
        if (!m) {
            rc = ENOMEM;
            break;
        }
        tail_link(&s->tail, m);
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
static int tail_load(struct store *s, uint64_t after, int salvage, size_t ends[2],
                     size_t counts[2], int *last_log, struct log_verdict *v)
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
    if (!dir) return STORE_ENOMEM;
    int rc = read_last_seq(s, &last);
    for (int i = 0; i < 2 && !rc; i++)
        if (!(rc = wal_open(&logs[i], dir, log_names[i], 1, 0)) && logs[i])
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
            verdict_text(dir, &v, last, line, sizeof line);
            if (fn) fn(ud, line);
        }
    }
    for (int i = 0; i < 2; i++) {
        free(buf[i]);
        wal_close(logs[i]);
    }
    free(dir);
    return rc ? map_rc(rc) : STORE_OK;
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
    int rc = topic_get(s, txn, a->topic, a->len, &rec);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    if ((rc = trim_txn(s, txn, &rec, a->max_count, a->max_age_ms, a->now_ms, &a->deleted)))
        return rc;
    return a->deleted ? topic_put(s, txn, a->topic, a->len, &rec) : 0;
}

int store_trim(struct store *s, const char *topic, size_t topic_len, uint64_t max_count,
               uint64_t max_age_ms, int64_t now_ms, uint64_t *deleted)
{
    struct trim_arg a = {topic, topic_len, max_count, max_age_ms, now_ms, 0};
    if (deleted) *deleted = 0;
    if (!topic || topic_len == 0 || topic_len > STORE_TOPIC_MAX) return STORE_EINVAL;
    int rc = checkpoint_all(s, now_ms); /* retention applies to LMDB */
    if (rc) return rc;
    int code = write_txn(s, trim_op, &a, NULL);
    if (code == 0 && deleted) *deleted = a.deleted;
    return code;
}

int store_checkpoint(struct store *s)
{
    if (s->read_only) return STORE_EROFS;
    return checkpoint_all(s, wall_ms());
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
        rc = lmdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
    } else {
        rc = lmdb_cursor_get(c, &k, &d, MDB_FIRST);
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
            if ((rc = msg_head(s, txn, rec.number, rec.first_seq, &epoch, &t))) break;
            if (t < a->now_ms - (int64_t)rec.max_age_ms) {
                a->due = 1;
                break;
            }
        } else if (rec.max_age_ms && rec.count) {
            uint64_t before = a->deleted;
            /* max_count is enforced at append; only age expires with time. */
            if ((rc = trim_txn(s, txn, &rec, 0, rec.max_age_ms, a->now_ms, &a->deleted))) break;
            if (a->deleted != before) {
                MDB_val nd = {sizeof rec, &rec};
                if ((rc = mdb_cursor_put(c, &k, &nd, MDB_CURRENT))) break;
            }
        }
        rc = lmdb_cursor_get(c, &k, &d, MDB_NEXT);
    }
    mdb_cursor_close(c);
    if (rc == MDB_NOTFOUND) rc = 0;
    /* Idempotency keys past the window go too (a lookup ignores them
     * already: this only bounds their room). */
    if (rc == 0 && !(a->dry && a->due)) rc = idem_expire(s, txn, a->now_ms, 10000, a->dry, &a->due);
    return rc;
}

int store_sweep(struct store *s, int64_t now_ms, size_t budget, uint64_t *deleted)
{
    MDB_txn *txn;
    if (deleted) *deleted = 0;
    if (s->read_only) return STORE_EROFS;
    /* The writer's periodic call: it bounds how long a message stays in
     * a log to about the sweep interval. */
    int rc = checkpoint_begin(s, now_ms, 0);
    if (rc) return rc;
    struct sweep_arg *a = calloc(1, sizeof *a);
    if (!a) return STORE_ENOMEM;
    a->now_ms = now_ms;
    a->budget = budget;
    /* Look first in a read transaction: most sweeps find nothing to drop,
     * and then take no write lock (which a checkpoint in flight holds). */
    a->dry = 1;
    int code = map_rc(txn_begin(s, MDB_RDONLY, &txn));
    if (code == 0) {
        code = map_rc(sweep_op(s, txn, a));
        txn_end(s, txn);
    }
    a->dry = 0;
    if (code == 0 && a->due) code = write_txn(s, sweep_op, a, NULL);
    if (code == 0) {
        memcpy(s->sweep_pos, a->pos, a->pos_len);
        s->sweep_pos_len = a->pos_len;
        if (deleted) *deleted = a->deleted;
    }
    free(a);
    return code;
}

/* ---- reads ----------------------------------------------------------------- */

/* The message (k, d) as a reader sees it; MSG_BAD when damaged. */
static int decode_msg(const struct fmt *f, const MDB_val *k, const MDB_val *d, struct store_view *v)
{
    struct msg_parts m;
    if (msg_parse(f, k, d, &m)) return MSG_BAD;
    v->seq = get_be64((const unsigned char *)k->mv_data + 4);
    v->epoch = m.epoch;
    v->time_ms = m.time_ms;
    v->event = m.event;
    v->event_len = m.event_len;
    v->data = m.data;
    v->data_len = m.data_len;
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
 * checkpoint will apply it: the topic's newest max_count, none older than
 * max_age before its newest.  LMDB applied it at its own last append, so
 * only messages in the tail make more of it expire. */
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
    msg_key(key, rec->number, 0);
    k.mv_size = sizeof key;
    k.mv_data = key;
    rc = lmdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size == 12 && get_be32(k.mv_data) == rec->number) {
        int64_t t;
        if (d.mv_size < MSG_HDR) {
            rc = MDB_CORRUPTED;
            break;
        }
        memcpy(&t, (const char *)d.mv_data + 8, 8);
        uint64_t seq = get_be64((const unsigned char *)k.mv_data + 4);
        if (n >= v->hidden_db && t >= v->cutoff) {
            *first_visible = seq;
            break;
        }
        *last_hidden = seq;
        n++;
        rc = lmdb_cursor_get(c, &k, &d, MDB_NEXT);
    }
    mdb_cursor_close(c);
    *nhidden = n;
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int head_valid(const struct head *h)
{
    return h->k.mv_size == 12 && get_be32(h->k.mv_data) == h->number;
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
    uint64_t total = rec->count + tn, max = newest->max_count;
    uint64_t hidden = max && total > max ? total - max : 0;
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

    if (!topics || n == 0 || !fn) return STORE_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!topics[i].name || topics[i].len == 0 || topics[i].len > STORE_TOPIC_MAX)
            return STORE_EINVAL;
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
    if ((rc = txn_begin(s, MDB_RDONLY, &txn))) {
        txn = NULL;
        goto done;
    }
    struct fmt fmt;
    if ((rc = fmt_load(s, txn, &fmt))) goto done;

    for (size_t i = 0; i < n; i++) {
        struct topic_rec rec;
        struct head *h = &hs[i];
        unsigned char key[12];
        rc = topic_get(s, txn, topics[i].name, topics[i].len, &rec);
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
        struct tail_topic *tt = s->tail.count ? tail_find(&s->tail, topics[i].name, topics[i].len,
                                                          fnv1a(topics[i].name, topics[i].len))
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
        msg_key(key, rec.number, from + 1);
        h->k.mv_size = sizeof key;
        h->k.mv_data = key;
        rc = lmdb_cursor_get(h->c, &h->k, &h->d, MDB_SET_RANGE);
        if (rc == MDB_NOTFOUND) {
            rc = 0;
            continue;
        }
        if (lmdb_damage(rc)) {
            /* The transaction is dead: serve nothing more, say so. */
            report_damage(s, topics[i].name, topics[i].len, from, "damaged page");
            infos[i].gap = 1;
            rc = 0;
            broken = 1;
            break;
        }
        if (rc) goto done;
        if (!head_valid(h)) continue;
        h->seq = get_be64((const unsigned char *)h->k.mv_data + 4);
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
            report_damage(s, topics[i].name, topics[i].len, h->seq, "message checksum mismatch");
        }
        rc = lmdb_cursor_get(h->c, &h->k, &h->d, MDB_NEXT);
        if (lmdb_damage(rc)) {
            report_damage(s, topics[i].name, topics[i].len, h->last_delivered, "damaged page");
            infos[i].gap = 1;
            broken = 1;
            rc = 0;
            break;
        }
        if (rc && rc != MDB_NOTFOUND) goto done;
        if (rc == 0 && head_valid(h)) {
            h->seq = get_be64((const unsigned char *)h->k.mv_data + 4);
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
                               .data_len = m->data_len};
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
    if (txn) txn_end(s, txn);
    pthread_rwlock_unlock(&s->tail.lock);
    if (n > 4) {
        free(hs);
        free(heap);
        free(own_infos);
    }
    return map_rc(rc);
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
            (rc = msg_epoch(s, txn, rec->number, tv.first_db, &ti->first_epoch)))
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

    if (!fn) return STORE_EINVAL;
    pthread_rwlock_rdlock(&s->tail.lock);
    if ((rc = txn_begin(s, MDB_RDONLY, &txn))) {
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
                rc = lmdb_get(txn, s->topics, &key, &d);
                if (rc == MDB_NOTFOUND)
                    extra[nextra++] = tt;
                else if (rc)
                    goto out;
            }
        rc = 0;
        qsort(extra, nextra, sizeof *extra, tail_topic_cmp);
    }
    if ((rc = mdb_cursor_open(txn, s->topics, &c))) goto out;
    rc = lmdb_cursor_get(c, &k, &d, MDB_FIRST);
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
            if ((rc = msg_epoch(s, txn, rec.number, rec.first_seq, &ti.first_epoch)) ||
                (rc = msg_epoch(s, txn, rec.number, rec.last_seq, &ti.last_epoch)))
                break;
        }
        struct tail_topic *tt =
            s->tail.count ? tail_find(&s->tail, k.mv_data, k.mv_size, fnv1a(k.mv_data, k.mv_size))
                          : NULL;
        if (tt && (rc = tail_topic_info(s, txn, &rec, tt, &ti))) break;
        if (!ti.count) ti.first_seq = ti.last_seq = ti.first_epoch = ti.last_epoch = 0;
        stop = fn(ud, &ti);
        rc = lmdb_cursor_get(c, &k, &d, MDB_NEXT);
    }
    if (rc == MDB_NOTFOUND) rc = 0;
out:
    if (c) mdb_cursor_close(c);
    if (txn) txn_end(s, txn);
    pthread_rwlock_unlock(&s->tail.lock);
    free(extra);
    return map_rc(rc);
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
    if ((rc = txn_begin(s, MDB_RDONLY, &txn))) {
        pthread_rwlock_unlock(&s->tail.lock);
        return map_rc(rc);
    }
    if ((rc = mdb_env_info(s->env, &info))) goto out;
    if ((rc = mdb_stat(txn, s->msgs, &ms))) goto out;
    st->messages = ms.ms_entries;
    st->page_size = ms.ms_psize;
    if ((rc = mdb_stat(txn, s->topics, &ms))) goto out;
    st->topics = ms.ms_entries;
    if ((rc = meta_get_u64(s, txn, "last_seq", &st->last_seq))) goto out;
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
            rc = lmdb_get(txn, s->topics, &key, &val);
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
    txn_end(s, txn);
    pthread_rwlock_unlock(&s->tail.lock);
    return map_rc(rc);
}

uint64_t store_wal_salt(const struct store *s)
{
    return s->wal_salt;
}

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
    for (rc = lmdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0;
         rc = lmdb_cursor_get(c, &k, &d, MDB_NEXT)) {
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
    int migrated = k->mv_size == 8 && !memcmp(k->mv_data, "migrated", 8);
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
    uint64_t start = get_be64(k->mv_data);
    if (get_u64(d->mv_data) == 0)
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
    uint32_t number = get_be32(k->mv_data);
    uint64_t seq = get_be64((const unsigned char *)k->mv_data + 4);
    struct vtopic *t = vtopic_find(vs, number);
    const char *name = t ? t->name : "?";
    if (msg_parse(&vs->fmt, k, d, &m)) {
        v->r->bad_messages++;
        vreport(v, "topic %s (number %u), seq %llu: damaged message (%s)", name, number,
                (unsigned long long)seq,
                fmt_summed(&vs->fmt, k) ? "checksum or layout wrong" : "layout wrong");
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
    if (get_u64(d->mv_data) > vs->last_seq)
        vreport(v, "idem: a key answers seq %llu, past the last seq",
                (unsigned long long)get_u64(d->mv_data));
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
    int rc = check_file_size(s, err, sizeof err);
    if (rc) {
        vreport(&v, "%s", err);
        return 0; /* walking would read past the file's end */
    }
    if ((rc = txn_begin(s, MDB_RDONLY, &txn))) return map_rc(rc);
    v.txn = txn;
    if ((rc = fmt_load(s, txn, &vs.fmt))) {
        vreport(&v, "meta: %s", mdb_strerror(rc));
        vs.fmt.all = 1;
    }
    if ((rc = meta_get_u64(s, txn, "last_seq", &vs.last_seq)) ||
        (rc = meta_get_u64(s, txn, "next_topic", &vs.next_topic)))
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
    txn_end(s, txn);
    free(vs.topics);
    return STORE_OK;
}
