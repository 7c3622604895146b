/* store_internal.h: what the files behind storage/store.h share (private:
 * the rest of sluice sees only store.h).  store.c opens and closes a store
 * (the directory, migration, replay at open); lmdb.c is the LMDB layer
 * (transactions, damaged pages, meta, the message format and checksum,
 * retention, commits, idempotency keys); ids.c message IDs; tail.c the
 * in-memory tail of logged messages, the checkpoint thread, trim and
 * sweep; logs.c reading the logs back and checking them; read.c the
 * readers; verify.c `sluice check`'s walk of a whole store. */
#ifndef SLUICE_STORE_INTERNAL_H
#define SLUICE_STORE_INTERNAL_H

#include "storage/crc32c.h"
#include "storage/store.h"
#include "storage/wal.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* 2: every message ends with its CRC and may carry an idempotency key.
 * A store of format 1 is read as it is by a read-only handle and
 * rewritten to format 2 by the first read-write open (migrate_v1).
 * 3: a message's header has a flags byte (STORE_MSG_JSON).  A store of
 * format 2 is not rewritten: the first read-write open records in meta
 * "flags_from" the first seq it will write, and messages below it are
 * read as format 2 (the seq is global, so one number tells them apart). */
#define STORE_FORMAT_VERSION 3u
#define DEFAULT_MAP_SIZE ((size_t)64 << 20)
#define MSG_HDR 18 /* epoch u64, time i64, event length u8, key length u8 */
#define MSG_HDR3 19 /* format 3: MSG_HDR, then flags u8 */
/* No message has a flags byte (a store of format 1 or 2). */
#define FLAGS_NEVER UINT64_MAX
#define MSG_SUM 4  /* the CRC-32C at the end of a format 2 value */
/* st_msg_parse's answer for a message whose bytes are wrong. */
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
    int64_t ord; /* its place among its topic's tail messages (tail_topic.next_ord) */
    size_t event_len, data_len;
    size_t ikey_len;            /* idempotency key (0: none) */
    unsigned flags;             /* STORE_MSG_JSON or 0 */
    struct tail_msg *ikey_next; /* struct tail's key index, newest first */
    char bytes[];               /* event, then data, then the key */
};

struct tail_topic {
    struct tail_topic *hnext;
    struct tail_msg *first, *last;
    size_t count;
    /* Count retention as each message set it: messages get ords 0, 1, ...
     * as they come, and each keeps its max_count newest, so the topic's
     * messages before ord `kept_from` are dropped (INT64_MIN: none).  The
     * messages LMDB has come just before the first it lacks, in ord order:
     * a checkpoint applies the same rules. */
    int64_t next_ord, kept_from;
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
    /* Messages of seq >= this have format 3's flags byte (0: all of
     * them; FLAGS_NEVER: none, a store of format 1 or 2).  A read-write
     * handle sets it at open; a read-only one reads it at each read. */
    _Atomic uint64_t flags_from;
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

typedef int (*write_op)(struct store *s, MDB_txn *txn, void *arg);

/* Which messages of a read transaction's snapshot carry a CRC: all of a
 * format 2 store; of a store of format 1 being migrated (a read-only
 * handle beside the read-write open that migrates it), those whose key
 * sorts before meta "migrated". */
struct fmt {
    int all;
    int has_below;
    unsigned char below[12];
    uint64_t flags_from; /* messages of seq >= this have a flags byte */
};

/* A stored message, taken apart. */
struct msg_parts {
    uint64_t epoch;
    int64_t time_ms;
    const char *event, *ikey;
    size_t event_len, ikey_len;
    const void *data;
    size_t data_len;
    unsigned flags; /* STORE_MSG_JSON or 0 */
};

/* ---- store.c ---- */

/* The two log files of a data directory, by index. */
extern const char *const st_log_names[2];

int st_check_file_size(struct store *s, char *errbuf, size_t errlen);
uint32_t st_get_be32(const unsigned char *p);
uint64_t st_get_be64(const unsigned char *p);
uint64_t st_get_u64(const void *p);
int st_map_rc(int rc);
void st_msg_key(unsigned char k[12], uint32_t topic, uint64_t seq);
void st_put_be32(unsigned char *p, uint32_t v);
void st_put_be64(unsigned char *p, uint64_t v);
int st_read_last_seq(struct store *s, uint64_t *last);
void st_verdict_text(const char *dir, const struct log_verdict *v, uint64_t after, char *buf,
                     size_t len);
int st_wal_replay(struct store *s, const char *dir, uint64_t *last, int salvage, char *errbuf,
                  size_t errlen);
int64_t st_wall_ms(void);

/* ---- lmdb.c ---- */

int st_append_commit(struct store *s, struct store_msg *msgs, size_t n, int64_t now_ms,
                     const int64_t *times);
int st_commit_msgs(struct store *s, struct store_msg *msgs, size_t n, int64_t now_ms,
                   const int64_t *times, uint64_t salt);
int st_epoch_start(struct store *s, MDB_txn *txn, uint64_t last_seq);
int st_flags_from_load(struct store *s, MDB_txn *txn, uint64_t version, uint64_t *from);
int st_fmt_load(struct store *s, MDB_txn *txn, struct fmt *f);
int st_fmt_summed(const struct fmt *f, const MDB_val *k);
uint64_t st_fnv1a(const char *p, size_t n);
int st_idem_expire(struct store *s, MDB_txn *txn, int64_t now_ms, size_t budget, int dry, int *due);
int st_idem_find(struct store *s, MDB_txn *txn, uint32_t number, const char *key, size_t len,
                 int64_t now_ms, uint64_t *seq, uint64_t *epoch);
int st_lmdb_cursor_get(MDB_cursor *c, MDB_val *k, MDB_val *d, MDB_cursor_op op);
int st_lmdb_damage(int rc);
int st_lmdb_get(MDB_txn *txn, MDB_dbi dbi, MDB_val *k, MDB_val *d);
int st_meta_get_u64(struct store *s, MDB_txn *txn, const char *name, uint64_t *v);
int st_meta_put_u64(struct store *s, MDB_txn *txn, const char *name, uint64_t v);
int st_msg_parse(const struct fmt *f, const MDB_val *k, const MDB_val *d, struct msg_parts *m);
uint32_t st_msg_sum(const void *key, const void *val, size_t len);
int st_msg_valid(const struct store_msg *m);
void st_on_lmdb_assert(MDB_env *env, const char *msg);
uint64_t st_random_epoch(uint64_t avoid);
void st_report_damage(struct store *s, const char *topic, size_t topic_len, uint64_t seq,
                      const char *what);
int st_topic_get(struct store *s, MDB_txn *txn, const char *name, size_t len,
                 struct topic_rec *rec);
int st_topic_put(struct store *s, MDB_txn *txn, const char *name, size_t len,
                 const struct topic_rec *rec);
int st_trim_txn(struct store *s, MDB_txn *txn, struct topic_rec *rec, uint64_t max_count,
                uint64_t max_age_ms, int64_t now_ms, uint64_t *deleted);
int st_txn_begin(struct store *s, unsigned flags, MDB_txn **txn);
void st_txn_end(struct store *s, MDB_txn *txn);
int st_write_txn(struct store *s, write_op op, void *arg, uint64_t *last_seq_out);

/* ---- ids.c ---- */

int st_msg_epoch(struct store *s, MDB_txn *txn, uint32_t number, uint64_t seq, uint64_t *epoch);
int st_msg_head(struct store *s, MDB_txn *txn, uint32_t number, uint64_t seq, uint64_t *epoch,
                int64_t *time_ms);

/* ---- tail.c ---- */

int st_append_direct(struct store *s, struct store_msg *msgs, size_t n, int64_t now_ms);
int st_checkpoint_all(struct store *s, int64_t now_ms);
int st_ckpt_start(struct store *s);
void st_ckpt_stop(struct store *s);
void st_tail_clear(struct tail *t);
struct tail_topic *st_tail_find(struct tail *t, const char *name, size_t len, uint64_t h);
void st_tail_link(struct tail *t, struct tail_msg *m);
struct tail_msg *st_tail_msg_new(struct tail *t, const struct wal_rec *r);

/* ---- logs.c ---- */

int st_tail_load(struct store *s, uint64_t after, int salvage, size_t ends[2], size_t counts[2],
                 int *last_log, struct log_verdict *v);

#endif
