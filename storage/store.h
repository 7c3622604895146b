/* store.h: sluice's durable message backlog, one LMDB environment.
 *
 * The store knows topics, messages and IDs; it knows nothing of sockets,
 * event loops or Lua.  Everything the server, the writer thread and the
 * operator commands need goes through this header.
 *
 * Shape, in brief (docs/storage.md has the full story):
 * - One global sequence, strictly increasing across all topics and restarts.
 *   A message's ID is "<epoch>-<seq>": the epoch is a random 64-bit value
 *   written in base 36, the seq is decimal.  A new epoch starts at every
 *   read-write open, so an ID from a wiped, restored or crash-truncated
 *   store is recognised as unknown instead of being taken for a newer
 *   message.  Because the seq is global, one Last-Event-ID resumes any set
 *   of topics.
 * - Messages are keyed (topic number BE32, seq BE64), so reading a topic
 *   from an ID is one cursor walk, and retention deletes from the front of
 *   a topic in O(deleted).
 * - Each batch is logged (wal.h: one write, and in durable mode one
 *   fdatasync); checkpoints move what was logged into LMDB about once a
 *   second, on a thread of their own while appends go on in a second
 *   log.  Reads see LMDB and the logged tail together.
 * - One process writes (the server); others may open read-only at the same
 *   time (`sluice topics`, `sluice dump`).  Within the writing process any
 *   thread may read while one thread writes.
 *
 * Thread rules: a store handle may be shared by threads.  Write functions
 * (store_append_batch, store_trim, store_sweep, store_checkpoint) must be
 * called one at a time; in the server only the writer thread (writer.h)
 * calls them.  Read functions
 * may run on any thread at any time.  No store function may be called from
 * inside a store callback (store_read_fn, store_topic_fn): the callback
 * runs while the store holds a read lock that map growth waits for.
 */
#ifndef SLUICE_STORE_H
#define SLUICE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

/* Errors are the SL_E* codes of core/err.h; the ones a store returns:
 *   SL_EINVAL    bad argument or malformed ID
 *   SL_ENOMEM    allocation failed
 *   SL_EFULL     disk full (ENOSPC/EDQUOT/EFBIG) or map cannot grow: the
 *                batch is not stored, earlier commits are intact
 *   SL_EIO       other I/O or LMDB failure
 *   SL_ENOTFOUND no store in the directory (read-only open)
 *   SL_EUNKNOWN  a well-formed ID that this store never issued
 *   SL_EROFS     write attempted on a read-only handle
 *   SL_EPANIC    LMDB declared the environment unusable: reopen it
 *   SL_ELOCKED   another read-write handle has the directory
 *   SL_ECORRUPT  LMDB's file is damaged (a bad page, a truncated file):
 *                `sluice check -d DIR` tells what */

/* Longest ID text including its NUL: 13 base-36 digits, '-', 20 digits. */
#define STORE_ID_MAX 40
/* Longest topic name accepted (LMDB keys are at most 511 bytes). */
#define STORE_TOPIC_MAX 400
/* Longest event name accepted. */
#define STORE_EVENT_MAX 255
/* Longest idempotency key accepted (SPEC.md, "Publishing exactly once"). */
#define STORE_IKEY_MAX 200
/* store_msg.flags and store_view.flags: the data is a JSON text that its
 * publisher declared as such (Content-Type: application/json) and that
 * parsed; stored with the message (docs/storage.md, format 3), so that a
 * replay embeds it in JSON envelopes as live delivery does. */
#define STORE_MSG_JSON 1u
/* How long an idempotency key is remembered by default: 10 minutes. */
#define STORE_DEDUP_WINDOW_MS 600000u

/* A damaged message or page met by a read (see store_opts.damage). */
struct store_damage {
    const char *topic; /* the topic being read (NULL: not known) */
    size_t topic_len;
    uint64_t seq;     /* the damaged message's seq, or the last good one
                         before a damaged page (0: none) */
    const char *what; /* "checksum mismatch", "malformed message",
                         "damaged page: ..." (static text) */
};

/* Called on the reading thread, inside the read, for each damaged message
 * or page a read meets: it must be quick and must not call the store.
 * The server logs it (store.h knows no logger). */
typedef void (*store_damage_fn)(void *ud, const struct store_damage *d);

struct store;

struct store_opts {
    size_t map_size; /* initial map size in bytes; 0 = 64 MiB.  Rounded up
                        to the page size; grown by doubling as needed */
    size_t map_max;  /* growth stops here (SL_EFULL); 0 = no limit */
    int relaxed;     /* nonzero: batches are logged without a flush; the
                        caller must call store_sync() periodically.  A
                        process crash loses nothing; an OS crash or power
                        loss loses the batches since the last sync */
    int read_only;   /* nonzero: open an existing store read-only, beside a
                        running server; no epoch is started */
    int salvage;     /* read-write: where the logs are damaged (a bad record
                        with good ones of later batches behind it), keep
                        every good record instead of refusing to open
                        (`sluice check --repair`; docs/storage.md, "Damage") */
    size_t log_size; /* bytes of each log file a read-write open makes; 0 =
                        WAL_DEFAULT_SIZE (2 MiB).  Tests use small ones */
    uint64_t dedup_window_ms; /* how long an idempotency key makes a retry a
                                 duplicate; 0 = STORE_DEDUP_WINDOW_MS */
    store_damage_fn damage;   /* NULL, or told of each damaged message read */
    void *damage_ud;
};

/* store_open: open (creating the directory and the environment if missing,
 * unless read_only) the store in `dir`.  opts may be NULL for defaults.
 * On success *out is the handle and 0 is returned; otherwise an SL_E*
 * code, with a human-readable reason in errbuf (if errbuf_len > 0).
 * A read-write open starts a new epoch (see the file comment) and takes an
 * exclusive flock on <dir>/sluice.lock: a second read-write open, from any
 * process, fails with SL_ELOCKED.  A read-only open must come from another
 * process than any open handle on the directory: LMDB forbids opening the
 * same environment twice in one process. */
int store_open(struct store **out, const char *dir, const struct store_opts *opts, char *errbuf,
               size_t errbuf_len);

/* store_close: close the handle.  All other threads must be done with it.
 * It checkpoints the logs first, so a clean stop leaves everything in
 * LMDB. */
void store_close(struct store *s);

/* ---- IDs ---------------------------------------------------------------- */

/* store_id_format: write the ID of (epoch, seq) into buf (at least
 * STORE_ID_MAX bytes), NUL-terminated; returns its length.  The epoch of a
 * message comes with it (store_msg.epoch after an append, store_view.epoch
 * on reads).  Pure: needs no handle. */
size_t store_id_format(uint64_t epoch, uint64_t seq, char *buf);

/* store_id_parse: decide what an ID a client sent means here.
 * Returns 0 and sets *seq when the ID was issued by this store (its epoch
 * was in force for that seq, and that seq was committed); the caller resumes
 * every topic after *seq.  SL_EUNKNOWN for a well-formed ID from a
 * different data directory, a restored or wiped one, or a commit lost to a
 * crash in relaxed mode; SL_EINVAL for a malformed one (only canonical
 * text is accepted).  In both error cases the caller replays from the
 * oldest retained message and signals a gap.  Any thread. */
int store_id_parse(struct store *s, const char *id, size_t len, uint64_t *seq);

/* store_epoch: the epoch this handle assigns to new messages (0 for a
 * read-only handle). */
uint64_t store_epoch(const struct store *s);

/* store_last_seq: the last committed seq of the whole store (0 if empty).
 * A new subscriber that wants only new messages starts after it. */
uint64_t store_last_seq(struct store *s);

/* ---- Appending ---------------------------------------------------------- */

/* One message to append.  The caller fills the inputs; the store fills the
 * outputs.  Pointers are only read during store_append_batch. */
struct store_msg {
    /* in */
    const char *topic;
    size_t topic_len;  /* 1..STORE_TOPIC_MAX */
    const char *event; /* NULL or empty: no event name */
    size_t event_len;  /* 0..STORE_EVENT_MAX */
    const void *data;
    size_t data_len;
    uint64_t max_count;  /* retention for this topic: keep the newest N (0 = no limit) */
    uint64_t max_age_ms; /* and/or drop messages older than this (0 = no limit) */
    const char *ikey;    /* NULL or empty: no idempotency key */
    size_t ikey_len;     /* 0..STORE_IKEY_MAX */
    unsigned flags;      /* STORE_MSG_JSON or 0 */
    /* out */
    int status;     /* 0, or SL_EINVAL for this message alone */
    uint64_t seq;   /* assigned seq when status == 0 */
    uint64_t epoch; /* with seq, forms the ID (store_id_format) */
    int duplicate;  /* 1: a message of this topic with this idempotency key
                       was stored within the dedup window (earlier, or
                       earlier in this batch): seq and epoch are its ID and
                       nothing new was stored */
};

/* store_append_batch: append msgs[0..n), assigning seqs in array order,
 * except to duplicates (store_msg.duplicate: same topic and idempotency
 * key as a message stored less than the dedup window before now_ms,
 * across restarts; the key is logged and committed with its message),
 * and apply each touched topic's retention (that of its last message in
 * the batch), deleting only what expires (readers see it
 * applied at once, LMDB deletes at the checkpoint).  All messages get
 * publish time now_ms (wall clock, ms since the epoch).
 * The batch is written to the log and flushed (one fdatasync; relaxed
 * mode: no flush, see store_sync); LMDB takes it at a checkpoint.  One begins when the log is
 * full and in store_sweep, and runs beside later appends, which go to a
 * second log meanwhile; this call waits for it only when the second log
 * fills too.  store_checkpoint, store_trim and store_close run one to the
 * end.
 * Checkpoints are synced LMDB commits in both modes, and grow the map
 * when it fills.
 * Returns 0 when the batch is stored: every message with status 0 is then
 * durable (in relaxed mode: safe from a process crash) and readable.  Otherwise nothing of
 * the batch is stored and the code is returned (SL_EFULL: disk or map
 * full, found by the commit or the checkpoint; SL_EIO; SL_EPANIC;
 * SL_EROFS); earlier batches are intact; statuses and seqs are then
 * meaningless.  Messages that fail validation get status
 * SL_EINVAL and are skipped while the rest commit.  Message pointers are
 * only read during the call.  n is bounded by what one transaction can
 * dirty (keep batches to thousands of messages, not millions). */
int store_append_batch(struct store *s, struct store_msg *msgs, size_t n, int64_t now_ms);

/* ---- Reading ------------------------------------------------------------ */

/* One message as read.  Every pointer points into the LMDB map and is valid
 * only until the callback returns: copy what must outlive it. */
struct store_view {
    size_t topic_index; /* store_read_multi: index into its topics (else 0) */
    uint64_t seq;
    uint64_t epoch;
    int64_t time_ms; /* publish time, ms since the Unix epoch */
    const char *event;
    size_t event_len; /* 0: no event name */
    const void *data;
    size_t data_len;
    unsigned flags; /* STORE_MSG_JSON or 0 */
};

/* Return nonzero to stop the walk after this message. */
typedef int (*store_read_fn)(void *ud, const struct store_view *m);

/* What store_read learnt about the topic, filled even when nothing is
 * delivered. */
struct store_read_info {
    int exists;         /* the topic has ever been published to */
    int gap;            /* messages after after_seq were deleted by retention:
                           the reader missed some (send a gap signal) */
    int more;           /* stopped by limit or callback with messages left */
    size_t delivered;   /* callbacks made */
    uint64_t count;     /* messages retained */
    uint64_t first_seq; /* oldest retained (0 if none); for a reader that
                           starts past LMDB's part of the topic, retention
                           due at the next checkpoint is not walked for it
                           and an older one may be named */
    uint64_t last_seq;  /* newest ever appended (0 if none) */
};

/* store_read: deliver the topic's retained messages with seq > after_seq in
 * seq order, at most `limit` (0 = no limit), one cursor walk in one read
 * transaction.  after_seq 0 means from the oldest.  info may be NULL.
 * The callback runs on the calling thread inside the read transaction, so
 * it should be quick and must not call the store.  Any thread, concurrently
 * with the writer.  Returns 0 or an SL_E* code. */
int store_read(struct store *s, const char *topic, size_t topic_len, uint64_t after_seq,
               size_t limit, store_read_fn fn, void *ud, struct store_read_info *info);

struct store_topic_ref {
    const char *name;
    size_t len;
};

/* store_read_multi: the same for a connection subscribed to several topics:
 * their messages with seq > after_seq merged in seq order (the order they
 * were committed and fanned out), so that the ID of the last message a
 * client received resumes all its topics at once.  One read transaction,
 * one cursor per topic, O(log n) per message.  limit bounds the total.
 * infos is NULL or an array of n, filled per topic (delivered, gap, more
 * per topic).  Same callback and thread rules as store_read. */
int store_read_multi(struct store *s, const struct store_topic_ref *topics, size_t n,
                     uint64_t after_seq, size_t limit, store_read_fn fn, void *ud,
                     struct store_read_info *infos);

/* ---- Retention ---------------------------------------------------------- */

/* store_trim: apply retention to one topic now, in its own write
 * transaction: keep at most max_count newest (0 = any), drop those older
 * than now_ms - max_age_ms (0 = any age).  *deleted (may be NULL) gets the
 * number removed.  Costs O(deleted).  Returns 0 or SL_E*. */
int store_trim(struct store *s, const char *topic, size_t topic_len, uint64_t max_count,
               uint64_t max_age_ms, int64_t now_ms, uint64_t *deleted);

/* store_checkpoint: move everything logged into LMDB now, in one synced
 * commit, after any checkpoint in flight.
 * Returns 0 or SL_E*. */
int store_checkpoint(struct store *s);

/* store_sweep: begin a checkpoint of the log (it runs beside
 * later appends, see store_append_batch; none begins while one is in
 * flight), then age-based retention for topics that get no publishes.  Each topic remembers the
 * retention of its last publish; this visits at most
 * `budget` topics (0 = all), resuming where the previous call stopped,
 * trimming those whose oldest message is past its max_age, in one write
 * transaction.  Cost: O(budget + deleted), never a scan of messages.
 * Returns 0 or SL_E*; *deleted (may be NULL) gets the number removed. */
int store_sweep(struct store *s, int64_t now_ms, size_t budget, uint64_t *deleted);

/* store_sync: flush the logs (the periodic sync of relaxed mode; a no-op
 * in durable mode).  Any thread, beside appends.  Returns 0 or SL_E*. */
int store_sync(struct store *s);

/* ---- Operator view ------------------------------------------------------ */

struct store_topic_info {
    const char *name; /* valid during the callback only */
    size_t name_len;
    uint32_t number;
    uint64_t count;
    uint64_t first_seq, last_seq;     /* 0 when none */
    uint64_t first_epoch, last_epoch; /* epochs of those messages (0 when none) */
    uint64_t dropped_seq;             /* newest seq deleted by retention (0: none) */
    uint64_t max_count, max_age_ms;   /* retention of the last publish */
};

/* Return nonzero to stop. */
typedef int (*store_topic_fn)(void *ud, const struct store_topic_info *t);

/* store_topics: call fn for every topic in name order, in one read
 * transaction.  Same callback rules as store_read.  Returns 0 or SL_E*. */
int store_topics(struct store *s, store_topic_fn fn, void *ud);

struct store_stats {
    uint64_t file_bytes; /* data file size on disk (allocated blocks) */
    uint64_t map_bytes;  /* current map size */
    uint64_t used_bytes; /* pages in use up to the high-water mark */
    uint32_t page_size;
    uint64_t topics;
    uint64_t messages;
    uint64_t last_seq;
    uint64_t epoch;     /* this handle's epoch (0 if read-only) */
    uint64_t map_grows; /* times this handle grew the map */
    int relaxed;
    /* The logs: messages in them that LMDB does not have yet,
     * checkpoints that moved some there, and those that failed (a full
     * disk or map: publishes are refused until one passes). */
    uint64_t log_messages;
    uint64_t checkpoints, checkpoint_failures;
    /* Damaged messages and pages that reads of this handle met and
     * skipped (each also told to store_opts.damage). */
    uint64_t damaged;
    uint64_t duplicates; /* publishes answered as duplicates (idempotency) */
};

/* store_stats: fill *st.  Any thread.  Returns 0 or SL_E*. */
int store_stats(struct store *s, struct store_stats *st);

/* ---- Verification (`sluice check`) --------------------------------------- */

struct store_verify_report {
    uint64_t topics, messages; /* walked */
    uint64_t bad_messages;     /* checksum or layout wrong */
    uint64_t problems;         /* everything reported, bad messages included */
};

/* Called once per problem found, with a one-line description. */
typedef void (*store_verify_fn)(void *ud, const char *problem);

/* store_verify: walk the whole store in one read transaction: every
 * database and key, every message's checksum and layout, every topic's
 * record against its messages (count, first and last seq), the IDs' epochs
 * and the meta values.  Slow (reads every page); for `sluice check`.  A
 * damaged page that LMDB refuses ends the walk of its database (reported).
 * Returns 0 when the walk ran (look at report->problems), else SL_E*.
 * Any thread; a read-only handle beside a running server is fine. */
int store_verify(struct store *s, store_verify_fn fn, void *ud, struct store_verify_report *report);

/* store_wal_salt: the salt of this store's log records (wal.h), for a
 * check of the logs. */
uint64_t store_wal_salt(const struct store *s);

/* ---- The logs (`sluice check`) ------------------------------------------- */

struct store_log_report {
    uint64_t pending;  /* messages in the logs past data.mdb's last: the next
                          read-write open replays them */
    uint64_t torn;     /* records of a write a crash cut short (never
                          acknowledged): the next open drops them */
    int damaged;       /* the logs are damaged (a bad record with records of
                          later batches behind it), or ahead of data.mdb: a
                          durable read-write open refuses them */
    uint64_t stranded; /* damaged: good records behind the damage, which an
                          open with store_opts.salvage keeps */
};

/* Called once per finding, with a line naming the file (and offset). */
typedef void (*store_log_fn)(void *ud, const char *line);

/* store_log_check: read the logs of s's directory and judge them as a
 * read-write open would (docs/storage.md, "Damage"), without changing
 * anything.  Meant for a read-only handle (`sluice check`; a read-write
 * handle has already replayed them).  Returns 0 (see *r) or SL_E*. */
int store_log_check(struct store *s, store_log_fn fn, void *ud, struct store_log_report *r);

#endif
