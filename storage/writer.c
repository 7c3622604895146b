/* writer.c: the storage thread behind writer.h.
 *
 * One mutex-protected FIFO of caller-owned requests and one condition
 * variable.  The thread sleeps until requests arrive or a periodic job is
 * due (after a batch to one topic it also lingers for that batch's
 * publishers; see writer_main), detaches up to one batch, builds the
 * store_msg array outside the lock (so submitters never wait for a
 * commit), appends it in one transaction and completes each request in
 * order.  Submitters only hold the mutex to link a request, so 256
 * publishing threads contend on a pointer swap, not on the disk.
 *
 * A second mutex, commit_mu, is held from detaching a batch to its last
 * completion, and around a sweep: with commits on the submitters, batches
 * then still run one at a time and in queue order, whichever thread runs
 * them.  Lock order: commit_mu, then mu.  The sync takes neither: LMDB's
 * sync is a flush of the file, safe beside a commit.
 */
#include "storage/writer.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Longest a commit waits for the publishers of the previous one (µs). */
#define LINGER_MAX_US 1000

struct writer {
    struct store *store;
    struct writer_opts o;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_mutex_t commit_mu; /* one batch or sweep at a time (see above) */
    pthread_cond_t cv;
    struct writer_req *head, *tail;
    size_t queued;
    size_t linger_want; /* while lingering: wake the thread at this many queued */
    int64_t lone_ns;    /* under mu: recent commits of one request, ns (moving average) */
    int stopping;
    int dirty;              /* under mu: committed since the last sync */
    struct store_msg *msgs; /* max_batch entries, under commit_mu */
    struct writer_stats st; /* under mu */
};

static int64_t now_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t now_mono_us(void)
{
    return now_mono_ns() / 1000;
}

static int64_t now_mono_ms(void)
{
    return now_mono_us() / 1000;
}

static struct timespec mono_us_timespec(int64_t us)
{
    return (struct timespec){(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
}

static int64_t now_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Commit one detached batch and complete its requests in order (on a
 * submitter's thread when on_submitter).  Returns how many requests have
 * the same topic as the one before them. */
static size_t run_batch(struct writer *w, struct writer_req *batch, size_t n, int on_submitter)
{
    struct writer_req *r = batch;
    int64_t now = now_wall_ms();
    size_t failed = 0, repeats = 0;

    for (size_t i = 0; i < n; i++, r = r->next_) {
        struct store_msg *m = &w->msgs[i];
        if (i && r->topic_len == m[-1].topic_len && !memcmp(r->topic, m[-1].topic, r->topic_len))
            repeats++;
        memset(m, 0, sizeof *m);
        m->topic = r->topic;
        m->topic_len = r->topic_len;
        m->event = r->event;
        m->event_len = r->event ? r->event_len : 0;
        m->data = r->data;
        m->data_len = r->data_len;
        m->max_count = r->max_count;
        m->max_age_ms = r->max_age_ms;
        m->ikey = r->ikey;
        m->ikey_len = r->ikey ? r->ikey_len : 0;
        m->flags = r->flags;
    }
    int64_t start_ns = now_mono_ns();
    int rc = store_append_batch(w->store, w->msgs, n, now);
    int64_t took_ns = now_mono_ns() - start_ns;
    int64_t lone_ns = n == 1 ? took_ns : -1;
    r = batch;
    for (size_t i = 0; i < n; i++) {
        /* Read next before done(): the request may be freed from then on. */
        struct writer_req *next = r->next_;
        r->status = rc ? rc : w->msgs[i].status;
        r->seq = r->status ? 0 : w->msgs[i].seq;
        r->epoch = r->status ? 0 : w->msgs[i].epoch;
        r->duplicate = r->status ? 0 : w->msgs[i].duplicate;
        r->time_ms = now;
        r->next_ = NULL;
        if (r->status) failed++;
        w->o.done(w->o.ud, r);
        r = next;
    }
    pthread_mutex_lock(&w->mu);
    /* A relaxed store's thread sleeps past the sync when nothing was
     * dirty; with commits on the submitters it is told of the first. */
    if (!w->dirty && w->o.commit_on_submitter) pthread_cond_signal(&w->cv);
    w->dirty = 1;
    if (lone_ns >= 0) w->lone_ns += (lone_ns - w->lone_ns) / 4;
    int b = 0;
    while (b < WRITER_COMMIT_BUCKETS && (double)took_ns > writer_commit_bounds[b] * 1e9)
        b++;
    w->st.commit_buckets[b]++;
    w->st.commit_ns += (uint64_t)took_ns;
    w->st.batches++;
    w->st.on_submitter += on_submitter != 0;
    w->st.messages += n;
    w->st.failures += failed;
    if (n > w->st.max_batch) w->st.max_batch = n;
    pthread_mutex_unlock(&w->mu);
    return repeats;
}

/* Detach at most one batch from the queue and commit it; the caller holds
 * commit_mu, not mu.  Returns the batch's size, and in *repeats how many of
 * its requests have the topic of the one before. */
static size_t commit_one_batch(struct writer *w, size_t *repeats, int on_submitter)
{
    pthread_mutex_lock(&w->mu);
    struct writer_req *batch = w->head, *last = NULL, *r = w->head;
    size_t n = 0, bytes = 0;
    while (r && n < w->o.max_batch && (n == 0 || bytes + r->data_len <= w->o.max_batch_bytes)) {
        bytes += r->data_len;
        last = r;
        r = r->next_;
        n++;
    }
    if (n) {
        w->head = r;
        if (!r) w->tail = NULL;
        last->next_ = NULL;
        w->queued -= n;
    }
    pthread_mutex_unlock(&w->mu);
    *repeats = n ? run_batch(w, batch, n, on_submitter) : 0;
    return n;
}

/* Requests for the storage thread to commit (under mu).  With commits on
 * the submitters, the queue is theirs until the stop. */
static int has_work(const struct writer *w)
{
    return w->head && (!w->o.commit_on_submitter || w->stopping);
}

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    int relaxed = 0;
    struct store_stats ss;
    if (store_stats(w->store, &ss) == 0) relaxed = ss.relaxed;
    int64_t next_sync = now_mono_ms() + w->o.sync_interval_ms;
    int64_t next_sweep = now_mono_ms() + w->o.sweep_interval_ms;

    /* Group commit linger: the publishers of the batch just completed were
     * answered and will likely submit again within a round trip.  Rather
     * than commit the requests queued meanwhile and leave the returning
     * ones for a commit of their own, wait until those queued plus as many
     * as were just completed are in, for at most half a commit.  Publishers
     * that wait for their answers then share commits instead of splitting
     * into groups that alternate, and the fan-out of a commit's messages
     * to one topic reaches each subscriber in one write.  That is where it
     * pays (ws-100-64, 16 in flight: up to a third less server CPU); after
     * batches spread over many topics it only added latency (ws-1kx10
     * lost about a tenth of its deliveries/s), so those are not followed
     * by a linger.  A lone publisher never waits: its group is itself. */
    size_t linger_want = 0, linger_n = 0;
    int64_t linger_until_us = 0;

    pthread_mutex_lock(&w->mu);
    for (;;) {
        if (!has_work(w)) {
            if (w->stopping && !w->head) break;
            int64_t due = next_sweep;
            if (relaxed && w->dirty && next_sync < due) due = next_sync;
            struct timespec ts = mono_us_timespec(due * 1000);
            pthread_cond_timedwait(&w->cv, &w->mu, &ts);
        }
        int take = has_work(w);
        while (take && w->queued < linger_want && !w->stopping) {
            if (now_mono_us() >= linger_until_us) break;
            struct timespec ts = mono_us_timespec(linger_until_us);
            w->linger_want = linger_want;
            pthread_cond_timedwait(&w->cv, &w->mu, &ts);
        }
        w->linger_want = 0;
        pthread_mutex_unlock(&w->mu);

        linger_want = linger_n = 0;
        int64_t start_us = now_mono_us();
        size_t repeats, n = 0;
        if (take) {
            pthread_mutex_lock(&w->commit_mu);
            n = commit_one_batch(w, &repeats, 0);
            pthread_mutex_unlock(&w->commit_mu);
        }
        if (n) {
            if (2 * repeats >= n) linger_n = n;
            int64_t end_us = now_mono_us(), linger_us = (end_us - start_us) / 2;
            linger_until_us = end_us + (linger_us < LINGER_MAX_US ? linger_us : LINGER_MAX_US);
        }
        int64_t now = now_mono_ms();
        pthread_mutex_lock(&w->mu);
        int dirty = w->dirty, sync_due = relaxed && dirty && now >= next_sync;
        if (sync_due) w->dirty = 0; /* a commit during the sync sets it again */
        pthread_mutex_unlock(&w->mu);
        if (sync_due) {
            int rc = store_sync(w->store);
            next_sync = now + w->o.sync_interval_ms;
            pthread_mutex_lock(&w->mu);
            w->st.syncs++;
            if (rc) w->dirty = 1;
            pthread_mutex_unlock(&w->mu);
        } else if (!dirty) {
            next_sync = now + w->o.sync_interval_ms;
        }
        if (now >= next_sweep) {
            uint64_t deleted = 0;
            pthread_mutex_lock(&w->commit_mu);
            store_sweep(w->store, now_wall_ms(), w->o.sweep_budget, &deleted);
            pthread_mutex_unlock(&w->commit_mu);
            next_sweep = now + w->o.sweep_interval_ms;
            pthread_mutex_lock(&w->mu);
            w->st.swept += deleted;
            pthread_mutex_unlock(&w->mu);
        }
        pthread_mutex_lock(&w->mu);
        if (linger_n) {
            linger_want = w->queued + linger_n;
            if (linger_want > w->o.max_batch) linger_want = w->o.max_batch;
        }
    }
    int dirty = w->dirty;
    pthread_mutex_unlock(&w->mu);
    if (relaxed && dirty) store_sync(w->store);
    return NULL;
}

int writer_start(struct writer **out, struct store *store, const struct writer_opts *opts)
{
    struct writer *w;
    pthread_condattr_t ca;
    int mu_ok = 0, commit_mu_ok = 0, cv_ok = 0;

    *out = NULL;
    if (!store || !opts || !opts->done) return SL_EINVAL;
    w = calloc(1, sizeof *w);
    if (!w) return SL_ENOMEM;
    w->store = store;
    w->o = *opts;
    if (!w->o.max_batch) w->o.max_batch = 1024;
    if (!w->o.max_batch_bytes) w->o.max_batch_bytes = (size_t)16 << 20;
    if (!w->o.max_queue) w->o.max_queue = 65536;
    if (!w->o.sync_interval_ms) w->o.sync_interval_ms = 1000;
    if (!w->o.sweep_interval_ms) w->o.sweep_interval_ms = 1000;
    if (!w->o.sweep_budget) w->o.sweep_budget = 1000;
    w->msgs = calloc(w->o.max_batch, sizeof *w->msgs);
    if (!w->msgs) goto fail;
    if (pthread_mutex_init(&w->mu, NULL)) goto fail;
    mu_ok = 1;
    if (pthread_mutex_init(&w->commit_mu, NULL)) goto fail;
    commit_mu_ok = 1;
    /* Deadlines are monotonic so a wall-clock jump cannot stall the syncs. */
    if (pthread_condattr_init(&ca)) goto fail;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc) goto fail;
    cv_ok = 1;
    if (pthread_create(&w->thread, NULL, writer_main, w)) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->commit_mu);
        pthread_mutex_destroy(&w->mu);
        free(w->msgs);
        free(w);
        return SL_EIO;
    }
    *out = w;
    return 0;
fail:
    if (cv_ok) pthread_cond_destroy(&w->cv);
    if (commit_mu_ok) pthread_mutex_destroy(&w->commit_mu);
    if (mu_ok) pthread_mutex_destroy(&w->mu);
    free(w->msgs);
    free(w);
    return SL_ENOMEM;
}

int writer_submit(struct writer *w, struct writer_req *req)
{
    int rc = 0;
    req->next_ = NULL;
    pthread_mutex_lock(&w->mu);
    if (w->stopping) {
        rc = SL_ESTOPPED;
    } else if (w->queued >= w->o.max_queue) {
        rc = SL_EBUSY;
    } else {
        if (w->tail)
            w->tail->next_ = req;
        else
            w->head = req;
        w->tail = req;
        /* Wake only on the empty->non-empty edge (with lone commits on
         * the submitter, on the lone->batch edge), or when a lingering
         * thread's group is complete: it takes the whole queue each round,
         * so further signals would be wasted syscalls.  With commits on
         * the submitters, not at all. */
        size_t q = ++w->queued, wake_at = w->o.lone_commit_max_us ? 2 : 1;
        if (!w->o.commit_on_submitter && (q == wake_at || q == w->linger_want))
            pthread_cond_signal(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

/* writer_commit_queued with lone commits on the submitter (writer.h). */
static size_t commit_lone(struct writer *w)
{
    size_t n = 0, repeats;
    /* A commit running now (the thread's, or another submitter's) would
     * make this loop wait: leave the queue to the thread instead. */
    int free_to_commit = pthread_mutex_trylock(&w->commit_mu) == 0;
    pthread_mutex_lock(&w->mu);
    int here = free_to_commit && w->queued == 1 &&
               w->lone_ns < (int64_t)w->o.lone_commit_max_us * 1000;
    if (!here && w->queued) pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (here) n = commit_one_batch(w, &repeats, 1);
    if (free_to_commit) pthread_mutex_unlock(&w->commit_mu);
    return n;
}

size_t writer_commit_queued(struct writer *w)
{
    if (w->o.lone_commit_max_us && !w->o.commit_on_submitter) return commit_lone(w);
    size_t done = 0, n, repeats;
    pthread_mutex_lock(&w->commit_mu);
    pthread_mutex_lock(&w->mu);
    size_t want = w->queued; /* not those its completions submit */
    pthread_mutex_unlock(&w->mu);
    while (done < want && (n = commit_one_batch(w, &repeats, 1)) > 0)
        done += n;
    pthread_mutex_unlock(&w->commit_mu);
    return done;
}

void writer_stop(struct writer *w)
{
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->stopping = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->commit_mu);
    pthread_mutex_destroy(&w->mu);
    free(w->msgs);
    free(w);
}

const double writer_commit_bounds[WRITER_COMMIT_BUCKETS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1};

void writer_stats(struct writer *w, struct writer_stats *st)
{
    pthread_mutex_lock(&w->mu);
    *st = w->st;
    st->queued = w->queued;
    pthread_mutex_unlock(&w->mu);
}
