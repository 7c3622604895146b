/* writer.h: the storage thread, sluice's one writer to the store.
 *
 * Why a thread: a durable commit ends in an fdatasync of the log (store.h;
 * LMDB's checkpoints have a thread of their own), which takes a tenth of a
 * millisecond or more and would stall every connection if the event loop
 * waited for it.  Any thread
 * submits append requests to a queue; the storage thread takes everything
 * queued (up to a batch bound) into one transaction and one commit, so group
 * commit falls out of the queue: the slower the disk, the larger the
 * batches.  After the commit it calls the completion callback for each
 * request, on the storage thread, in queue order (hence in seq order per
 * topic, and in global seq order overall).  The server's callback pushes
 * the request to the loop's own queue and wakes the loop (ev_async_send);
 * this module knows nothing of libev.  After a batch mostly to one topic
 * the thread lingers briefly (at most half a commit) for the publishers it
 * just answered, so that they share the next commit rather than split
 * into alternating groups (see writer.c).
 *
 * The thread also runs the periodic jobs that must not run on the loop: the
 * sync of relaxed mode and the age-retention sweep of idle topics.
 *
 * Commits on the submitter (opts.commit_on_submitter, for a relaxed store,
 * whose commit is a log write without fsync and takes microseconds): the
 * thread is not woken per request; instead each submitting thread calls
 * writer_commit_queued() at the end of its loop pass, and the commit and
 * its completions run there.  That saves the two thread hand-offs per
 * publish (a futex wake of this thread, a wake of the loop back), which
 * cost more than the commit itself.  One commit runs at a time, on
 * whichever thread, in queue order: still one writer.
 *
 * Lone commits on the submitter (opts.lone_commit_max_us, for a durable
 * store): the thread is woken only once two requests are queued; a
 * request alone in the queue is committed by the submitter's
 * writer_commit_queued() while lone commits lately took less than that
 * many microseconds, and handed to the thread otherwise.  A publisher
 * that sends one message at a time then pays no hand-off, and its
 * submitter's loop stalls only for a flush known to be short; batches,
 * and every commit on a slow disk, still run on the thread while the
 * loop goes on.  Each submit must then be followed by a call to
 * writer_commit_queued() on that thread.
 */
#ifndef SLUICE_WRITER_H
#define SLUICE_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "storage/store.h"

/* Besides the store's codes, writer_submit refuses with SL_ESTOPPED
 * (writer_stop has begun: no new requests) or SL_EBUSY (queue at max_queue:
 * shed load, HTTP 503). */

/* One append request, owned by the caller (intrusive: the writer allocates
 * nothing per request and copies no payload).  The caller fills the inputs
 * and keeps the request and every buffer it points to valid and unchanged
 * from writer_submit until its completion callback has been called; the
 * writer never touches the request after the callback returns. */
struct writer_req {
    /* in */
    const char *topic;
    size_t topic_len;
    const char *event; /* NULL: no event name */
    size_t event_len;
    const void *data;
    size_t data_len;
    uint64_t max_count;  /* topic retention: newest N (0 = no limit) */
    uint64_t max_age_ms; /* and/or max age (0 = no limit) */
    const char *ikey;    /* NULL: no idempotency key; else 1..STORE_IKEY_MAX bytes */
    size_t ikey_len;
    unsigned flags; /* STORE_MSG_JSON or 0 (store.h) */
    void *user;     /* for the caller; untouched */
    /* out, valid in and after the callback */
    int status;   /* 0, or SL_E* (SL_EFULL: answer 503) */
    uint64_t seq; /* with epoch, the message ID (store_id_format) */
    uint64_t epoch;
    int64_t time_ms; /* publish time */
    int duplicate;   /* 1: a retry (same topic and ikey within the store's
                        dedup window): seq and epoch are the first
                        publish's, nothing new was stored */
    /* private */
    struct writer_req *next_;
};

/* Completion: called on the storage thread once per accepted request,
 * after its batch committed (status 0) or failed.  It should be quick (push
 * to a queue, wake a loop); it may call writer_submit, not writer_stop. */
typedef void (*writer_done_fn)(void *ud, struct writer_req *req);

struct writer_opts {
    writer_done_fn done;        /* required */
    void *ud;                   /* first argument of done */
    size_t max_batch;           /* requests per transaction; 0 = 1024 */
    size_t max_batch_bytes;     /* payload bytes per transaction; 0 = 16 MiB */
    size_t max_queue;           /* queued requests before SL_EBUSY; 0 = 65536 */
    unsigned sync_interval_ms;  /* relaxed store: sync period; 0 = 1000 */
    unsigned sweep_interval_ms; /* age-retention sweep period; 0 = 1000 */
    size_t sweep_budget;        /* topics visited per sweep; 0 = 1000 */
    int commit_on_submitter;    /* submitters commit (writer_commit_queued) */
    unsigned lone_commit_max_us; /* else: lone requests too, while this quick; 0 = no */
};

struct writer;

/* writer_start: start the storage thread writing to `store`, which must
 * outlive the writer and get no other writer.  Returns 0 and *out, or
 * SL_EINVAL / SL_ENOMEM / SL_EIO (thread creation). */
int writer_start(struct writer **out, struct store *store, const struct writer_opts *opts);

/* writer_submit: queue req (see struct writer_req for ownership).  Any
 * thread.  Returns 0 (done will be called exactly once), SL_ESTOPPED or
 * SL_EBUSY (done will not be called; the request is the caller's
 * again). */
int writer_submit(struct writer *w, struct writer_req *req);

/* writer_commit_queued: commit the requests queued now, on the calling
 * thread, and call their completions there before returning.  It waits
 * while another thread commits (a batch or a sweep: one at a time), never
 * for a sync.  Any thread, not from the completion callback.  Returns the
 * number of requests completed.  Meant for opts.commit_on_submitter.  With
 * opts.lone_commit_max_us it commits only a lone request, and only when
 * lone commits are quick and no other commit is running; otherwise it
 * wakes the storage thread for whatever is queued and returns 0.  In the
 * remaining mode it only takes work from the storage thread. */
size_t writer_commit_queued(struct writer *w);

/* writer_stop: refuse new requests, commit everything queued (calling each
 * completion), sync in relaxed mode, join the thread and free the writer.
 * Call once, not from the completion callback. */
void writer_stop(struct writer *w);

/* Upper bounds (seconds) of the commit-time histogram's buckets. */
#define WRITER_COMMIT_BUCKETS 12
extern const double writer_commit_bounds[WRITER_COMMIT_BUCKETS];

struct writer_stats {
    uint64_t batches;   /* transactions committed or failed */
    uint64_t messages;  /* requests completed */
    uint64_t failures;  /* requests completed with status != 0 */
    uint64_t max_batch; /* largest batch so far */
    uint64_t syncs;     /* periodic syncs (relaxed) */
    uint64_t swept;     /* messages removed by the age sweep */
    uint64_t on_submitter; /* batches committed by writer_commit_queued */
    /* Time in store_append_batch per batch (the commit, and its sync when
     * durable), per bucket of writer_commit_bounds (not cumulative; the
     * last is above them all), and their sum in ns. */
    uint64_t commit_buckets[WRITER_COMMIT_BUCKETS + 1];
    uint64_t commit_ns;
    size_t queued;      /* requests waiting now */
};

/* writer_stats: a snapshot of the counters.  Any thread. */
void writer_stats(struct writer *w, struct writer_stats *st);

#endif
