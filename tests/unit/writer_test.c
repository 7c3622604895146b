/* writer_test.c: unit tests of storage/writer.c, the storage thread.
 *
 * The properties the server relies on: every accepted request completes
 * exactly once, completions arrive in seq order (so per topic and per
 * submitter in submit order), many concurrent submitters end up sharing
 * commits, a stop commits what was queued, a full queue says EBUSY, and the
 * periodic sync and age sweep run.  With commits on the submitters, the
 * same, and each submitter's requests are complete when its
 * writer_commit_queued returns, their completions run on the submitters.
 * With lone commits on the submitters (a durable store's), the same
 * order and exactly-once, a lone request committed by its submitter and
 * anything else by the thread, woken for it.
 * Meant to run under -fsanitize=thread as well.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mkdtemp, clock_gettime */
#endif
#include "check.h"
#include "scratch_dir.h"
#include "storage/writer.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *make_dir(void)
{
    return scratch_dir_new("/tmp", "writer");
}

static void remove_dir(char *dir)
{
    scratch_dir_remove(dir);
}

static struct store *open_store(const char *dir, int relaxed)
{
    struct store_opts o = {.relaxed = relaxed, .map_size = 1 << 20};
    struct store *s = NULL;
    char err[256];
    int rc = store_open(&s, dir, &o, err, sizeof err);
    if (rc) fprintf(stderr, "store_open: %s\n", err);
    CHECK_EQ_INT(rc, 0);
    return s;
}

/* ---- many submitters ------------------------------------------------------ */

#define SUBMITTERS 8
#define PER_SUBMITTER 400
#define TOPICS 4

struct req {
    struct writer_req r;
    atomic_int completions;
    char data[32];
    atomic_int acked;
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
};

/* Set on the submitter threads: where a completion runs. */
static __thread int on_submitter_thread;

struct ctx {
    atomic_int completed, out_of_order, failed, off_submitter;
    atomic_ullong last_seq; /* written on the writer thread only */
};

static const char *topic_names[TOPICS] = {"t0", "t1", "t2", "t3"};

static void done_cb(void *ud, struct writer_req *wr)
{
    struct ctx *c = ud;
    struct req *r = wr->user;
    if (wr->status) atomic_fetch_add(&c->failed, 1);
    if (!on_submitter_thread) atomic_fetch_add(&c->off_submitter, 1);
    if (wr->seq <= atomic_load(&c->last_seq)) atomic_fetch_add(&c->out_of_order, 1);
    atomic_store(&c->last_seq, wr->seq);
    atomic_fetch_add(&r->completions, 1);
    atomic_fetch_add(&c->completed, 1);
    if (r->mu) {
        pthread_mutex_lock(r->mu);
        atomic_store(&r->acked, 1);
        pthread_cond_signal(r->cv);
        pthread_mutex_unlock(r->mu);
    }
}

struct submitter {
    struct writer *w;
    struct req *reqs;
    int id, wait_each, commit_here, lone;
    int submit_errors, not_done; /* incomplete after commit_queued, or unacked */
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

static void *submit_main(void *p)
{
    struct submitter *sb = p;
    on_submitter_thread = 1;
    for (int i = 0; i < PER_SUBMITTER; i++) {
        struct req *r = &sb->reqs[i];
        snprintf(r->data, sizeof r->data, "%d:%d", sb->id, i);
        r->r.topic = topic_names[(sb->id + i) % TOPICS];
        r->r.topic_len = 2;
        r->r.data = r->data;
        r->r.data_len = strlen(r->data);
        r->r.user = r;
        if (sb->wait_each) {
            r->mu = &sb->mu;
            r->cv = &sb->cv;
        }
        if (writer_submit(sb->w, &r->r)) {
            sb->submit_errors++;
            continue;
        }
        if (sb->commit_here) {
            /* Fire and forget commits every 8th; waiting commits each. */
            if (!sb->wait_each && i % 8 != 7 && i != PER_SUBMITTER - 1) continue;
            writer_commit_queued(sb->w);
            for (int k = i; k >= 0 && atomic_load(&sb->reqs[k].completions) == 0; k--)
                sb->not_done++;
            continue;
        }
        if (sb->lone) writer_commit_queued(sb->w); /* as a loop pass ends */
        if (sb->wait_each) {
            pthread_mutex_lock(&sb->mu);
            for (int k = 0; k < 5000 && !atomic_load(&r->acked); k++) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_nsec += 1000000;
                if (ts.tv_nsec >= 1000000000) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000;
                }
                pthread_cond_timedwait(&sb->cv, &sb->mu, &ts);
            }
            pthread_mutex_unlock(&sb->mu);
            /* Handed to the thread, it must have been woken for it. */
            if (sb->lone && !atomic_load(&r->acked)) sb->not_done++;
        }
    }
    return NULL;
}

struct order_check {
    uint64_t prev_by_submitter[SUBMITTERS];
    int n, bad;
};

static int order_cb(void *ud, const struct store_view *v)
{
    struct order_check *oc = ud;
    int sid, idx;
    char buf[32];
    snprintf(buf, sizeof buf, "%.*s", (int)v->data_len, (const char *)v->data);
    if (sscanf(buf, "%d:%d", &sid, &idx) != 2 || sid < 0 || sid >= SUBMITTERS) {
        oc->bad++;
        return 0;
    }
    /* Per topic, one submitter's messages appear in its submit order. */
    if ((uint64_t)idx + 1 <= oc->prev_by_submitter[sid]) oc->bad++;
    oc->prev_by_submitter[sid] = (uint64_t)idx + 1;
    oc->n++;
    return 0;
}

/* commit_here: a relaxed store committed by the submitters; lone: a
 * durable one with lone commits on the submitters, always quick enough. */
static void run_submitters(int wait_each, int commit_here, int lone)
{
    char *dir = make_dir();
    struct store *s = open_store(dir, commit_here);
    struct ctx c = {0};
    struct writer *w = NULL;
    struct writer_opts o = {.done = done_cb,
                            .ud = &c,
                            .commit_on_submitter = commit_here,
                            .lone_commit_max_us = lone ? 10000000 : 0};
    CHECK_EQ_INT(writer_start(&w, s, &o), 0);

    static struct submitter sb[SUBMITTERS];
    pthread_t th[SUBMITTERS];
    for (int i = 0; i < SUBMITTERS; i++) {
        memset(&sb[i], 0, sizeof sb[i]);
        sb[i].w = w;
        sb[i].id = i;
        sb[i].wait_each = wait_each;
        sb[i].commit_here = commit_here;
        sb[i].lone = lone;
        sb[i].reqs = calloc(PER_SUBMITTER, sizeof(struct req));
        pthread_mutex_init(&sb[i].mu, NULL);
        pthread_cond_init(&sb[i].cv, NULL);
        CHECK_EQ_INT(pthread_create(&th[i], NULL, submit_main, &sb[i]), 0);
    }
    for (int i = 0; i < SUBMITTERS; i++)
        pthread_join(th[i], NULL);
    struct writer_stats st;
    writer_stop(w); /* commits whatever is still queued */

    int once = 1;
    for (int i = 0; i < SUBMITTERS; i++) {
        CHECK_EQ_INT(sb[i].submit_errors, 0);
        CHECK_EQ_INT(sb[i].not_done, 0);
        for (int j = 0; j < PER_SUBMITTER; j++)
            if (atomic_load(&sb[i].reqs[j].completions) != 1) once = 0;
    }
    CHECK(once);
    CHECK_EQ_INT(atomic_load(&c.completed), SUBMITTERS * PER_SUBMITTER);
    CHECK_EQ_INT(atomic_load(&c.failed), 0);
    CHECK_EQ_INT(atomic_load(&c.out_of_order), 0);
    /* Committed by the submitters, never left for the storage thread
     * (which is not woken for them and sleeps a second at a time). */
    if (commit_here) CHECK_EQ_INT(atomic_load(&c.off_submitter), 0);

    int total = 0;
    for (int t = 0; t < TOPICS; t++) {
        struct order_check oc;
        memset(&oc, 0, sizeof oc);
        CHECK_EQ_INT(store_read(s, topic_names[t], 2, 0, 0, order_cb, &oc, NULL), 0);
        CHECK_EQ_INT(oc.bad, 0);
        total += oc.n;
    }
    CHECK_EQ_INT(total, SUBMITTERS * PER_SUBMITTER);
    (void)st;
    for (int i = 0; i < SUBMITTERS; i++) {
        pthread_mutex_destroy(&sb[i].mu);
        pthread_cond_destroy(&sb[i].cv);
        free(sb[i].reqs);
    }
    store_close(s);
    remove_dir(dir);
}

/* Submitters that wait for each ack must still share commits: batches are
 * fewer than messages.  Checked through the stats of a separate run. */
static void test_group_commit(void)
{
    char *dir = make_dir();
    struct store *s = open_store(dir, 0);
    struct ctx c = {0};
    struct writer *w = NULL;
    struct writer_opts o = {.done = done_cb, .ud = &c};
    CHECK_EQ_INT(writer_start(&w, s, &o), 0);
    /* Queue many before the thread can take them: they land in few batches. */
    static struct req reqs[3000];
    memset(reqs, 0, sizeof reqs);
    for (int i = 0; i < 3000; i++) {
        reqs[i].r.topic = "g";
        reqs[i].r.topic_len = 1;
        reqs[i].r.data = "x";
        reqs[i].r.data_len = 1;
        reqs[i].r.event = i % 2 ? "ev" : NULL;
        reqs[i].r.event_len = 2;
        reqs[i].r.max_count = 1000;
        reqs[i].r.user = &reqs[i];
        CHECK_EQ_INT(writer_submit(w, &reqs[i].r), 0);
    }
    /* Stop right away: everything queued still commits. */
    struct writer_stats st;
    writer_stats(w, &st);
    writer_stop(w);
    CHECK_EQ_INT(atomic_load(&c.completed), 3000);
    CHECK_EQ_INT(atomic_load(&c.out_of_order), 0);
    CHECK(reqs[2999].r.seq > reqs[0].r.seq);
    CHECK(reqs[0].r.epoch == store_epoch(s));
    CHECK(reqs[0].r.time_ms > 0);
    struct store_read_info info;
    struct order_check oc;
    memset(&oc, 0, sizeof oc);
    CHECK_EQ_INT(store_read(s, "g", 1, 0, 0, order_cb, &oc, &info), 0);
    CHECK_EQ_INT(info.count, 1000); /* retention applied */
    CHECK_EQ_INT(info.last_seq, reqs[2999].r.seq);
    store_close(s);
    remove_dir(dir);
}

/* ---- EBUSY, ESTOPPED and invalid requests --------------------------------- */

struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int open, entered;
    atomic_int completed;
};

static void gate_cb(void *ud, struct writer_req *r)
{
    struct gate *g = ud;
    pthread_mutex_lock(&g->mu);
    g->entered = 1;
    pthread_cond_broadcast(&g->cv);
    for (int i = 0; i < 5000 && !g->open; i++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&g->cv, &g->mu, &ts);
    }
    pthread_mutex_unlock(&g->mu);
    atomic_fetch_add(&g->completed, 1);
}

/* n requests of one byte ("d") to a one-letter topic. */
static void one_byte_reqs(struct writer_req *r, int n, const char *topic)
{
    memset(r, 0, (size_t)n * sizeof *r);
    for (int i = 0; i < n; i++) {
        r[i].topic = topic;
        r[i].topic_len = 1;
        r[i].data = "d";
        r[i].data_len = 1;
    }
}

/* Waits (bounded) until a completion is held in gate_cb. */
static void gate_wait_entered(struct gate *g)
{
    pthread_mutex_lock(&g->mu);
    for (int i = 0; i < 50 && !g->entered; i++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&g->cv, &g->mu, &ts);
    }
    CHECK(g->entered);
    pthread_mutex_unlock(&g->mu);
}

/* Lets every held and later completion through. */
static void gate_open(struct gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void test_busy(void)
{
    char *dir = make_dir();
    struct store *s = open_store(dir, 0);
    struct gate g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    struct writer *w = NULL;
    struct writer_opts o = {.done = gate_cb, .ud = &g, .max_queue = 4};
    CHECK_EQ_INT(writer_start(&w, s, &o), 0);
    struct writer_req r[8];
    one_byte_reqs(r, 8, "b");
    r[1].topic_len = 0; /* invalid: completes with SL_EINVAL */
    /* The first request blocks the writer thread in its completion. */
    CHECK_EQ_INT(writer_submit(w, &r[0]), 0);
    gate_wait_entered(&g);
    for (int i = 1; i <= 4; i++)
        CHECK_EQ_INT(writer_submit(w, &r[i]), 0);
    CHECK_EQ_INT(writer_submit(w, &r[5]), SL_EBUSY);
    struct writer_stats st;
    writer_stats(w, &st);
    CHECK_EQ_INT(st.queued, 4);
    gate_open(&g);
    writer_stop(w);
    CHECK_EQ_INT(atomic_load(&g.completed), 5);
    CHECK_EQ_INT(r[0].status, 0);
    CHECK_EQ_INT(r[1].status, SL_EINVAL);
    CHECK_EQ_INT(r[2].status, 0);
    CHECK(r[4].seq > r[2].seq);
    store_close(s);
    remove_dir(dir);
}

/* ---- periodic jobs ---------------------------------------------------------- */

static void test_periodic(void)
{
    char *dir = make_dir();
    struct store *s = open_store(dir, 1);
    struct ctx c = {0};
    struct writer *w = NULL;
    struct writer_opts o = {
        .done = done_cb, .ud = &c, .sync_interval_ms = 20, .sweep_interval_ms = 20};
    CHECK_EQ_INT(writer_start(&w, s, &o), 0);
    struct req r = {0};
    r.r.topic = "old";
    r.r.topic_len = 3;
    r.r.data = "z";
    r.r.data_len = 1;
    r.r.max_age_ms = 1;
    r.r.user = &r;
    CHECK_EQ_INT(writer_submit(w, &r.r), 0);
    struct writer_stats st = {0};
    for (int i = 0; i < 200; i++) {
        writer_stats(w, &st);
        if (st.syncs > 0 && st.swept > 0) break;
        usleep(10000);
    }
    CHECK(st.syncs > 0);
    CHECK_EQ_INT(st.swept, 1);
    CHECK_EQ_INT(st.messages, 1);
    writer_stop(w);
    struct store_read_info info;
    struct order_check oc;
    memset(&oc, 0, sizeof oc);
    CHECK_EQ_INT(store_read(s, "old", 3, 0, 0, order_cb, &oc, &info), 0);
    CHECK_EQ_INT(info.count, 0);
    CHECK(info.gap);
    store_close(s);
    remove_dir(dir);
}

/* ---- the group commit linger ------------------------------------------------ */

/* After a batch of 8 to one topic the writer waits for 8 requests (the
 * publishers it just answered) before it commits again, but only for a
 * while: a lone request that follows must still commit without anything
 * else arriving, and without writer_stop. */
static void test_linger_ends(void)
{
    char *dir = make_dir();
    struct store *s = open_store(dir, 0);
    struct gate g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    struct writer *w = NULL;
    struct writer_opts o = {.done = gate_cb, .ud = &g};
    CHECK_EQ_INT(writer_start(&w, s, &o), 0);
    struct writer_req r[10];
    one_byte_reqs(r, 10, "l");
    /* r[0] holds the thread in its completion while r[1..8] queue up, so
     * they make one batch. */
    CHECK_EQ_INT(writer_submit(w, &r[0]), 0);
    gate_wait_entered(&g);
    for (int i = 1; i <= 8; i++)
        CHECK_EQ_INT(writer_submit(w, &r[i]), 0);
    gate_open(&g);
    for (int i = 0; i < 500 && atomic_load(&g.completed) < 9; i++)
        usleep(10000);
    CHECK_EQ_INT(atomic_load(&g.completed), 9);

    CHECK_EQ_INT(writer_submit(w, &r[9]), 0);
    for (int i = 0; i < 500 && atomic_load(&g.completed) < 10; i++)
        usleep(10000);
    CHECK_EQ_INT(atomic_load(&g.completed), 10);
    struct writer_stats st = {0};
    for (int i = 0; i < 500 && st.batches < 3; i++) {
        usleep(1000); /* the counters follow the completions */
        writer_stats(w, &st);
    }
    CHECK_EQ_INT(st.batches, 3);
    CHECK_EQ_INT(st.max_batch, 8);
    writer_stop(w);
    for (int i = 0; i < 10; i++)
        CHECK_EQ_INT(r[i].status, 0);
    CHECK(r[9].seq > r[8].seq);
    store_close(s);
    remove_dir(dir);
}

/* ---- lone commits on the submitter ------------------------------------------ */

/* Waits (bounded) until c has n completions. */
static void wait_completed(struct ctx *c, int n)
{
    for (int i = 0; i < 500 && atomic_load(&c->completed) < n; i++)
        usleep(10000);
    CHECK_EQ_INT(atomic_load(&c->completed), n);
}

static void submit_one(struct writer *w, struct req *r, const char *data)
{
    memset(r, 0, sizeof *r);
    snprintf(r->data, sizeof r->data, "%s", data);
    r->r.topic = "t0";
    r->r.topic_len = 2;
    r->r.data = r->data;
    r->r.data_len = strlen(r->data);
    r->r.user = r;
    CHECK_EQ_INT(writer_submit(w, &r->r), 0);
}

/* A durable store with lone_commit_max_us: a request alone in the queue is
 * not the thread's (it stays queued) and is committed by the submitter's
 * writer_commit_queued; two queued wake the thread, which commits them;
 * and once lone commits are slower than the bound, a lone request goes to
 * the thread too.  Seq order holds throughout. */
static void test_lone_commits(void)
{
    char *dir = make_dir();
    struct store *s = open_store(dir, 0);
    struct ctx c = {0};
    struct writer *w = NULL;
    /* No periodic wake of the thread while the test looks. */
    struct writer_opts o = {
        .done = done_cb, .ud = &c, .lone_commit_max_us = 10000000, .sweep_interval_ms = 600000};
    CHECK_EQ_INT(writer_start(&w, s, &o), 0);
    on_submitter_thread = 1;
    static struct req r[16];
    usleep(100000); /* the thread asleep: it would take a request it finds */

    submit_one(w, &r[0], "lone");
    usleep(50000);
    CHECK_EQ_INT(atomic_load(&c.completed), 0); /* the thread was not woken */
    CHECK_EQ_INT(writer_commit_queued(w), 1);
    CHECK_EQ_INT(atomic_load(&c.completed), 1);
    CHECK_EQ_INT(atomic_load(&c.off_submitter), 0);
    CHECK_EQ_INT(r[0].r.status, 0);

    submit_one(w, &r[1], "pair 1");
    submit_one(w, &r[2], "pair 2");
    CHECK_EQ_INT(writer_commit_queued(w), 0); /* a batch: the thread's */
    wait_completed(&c, 3);
    CHECK_EQ_INT(atomic_load(&c.off_submitter), 2);

    struct writer_stats st;
    writer_stats(w, &st);
    CHECK_EQ_INT(st.on_submitter, 1);
    CHECK_EQ_INT(st.messages, 3);
    writer_stop(w);

    /* A bound no real commit meets: after at most a few lone commits
     * here (the average starts at zero), lone requests go to the thread. */
    memset(&c, 0, sizeof c);
    o.lone_commit_max_us = 1;
    CHECK_EQ_INT(writer_start(&w, s, &o), 0);
    usleep(100000);
    int here = 0, handed = 0;
    for (int i = 0; i < 12 && !handed; i++) {
        submit_one(w, &r[3 + i], "slow");
        if (writer_commit_queued(w) == 1) {
            here++;
        } else {
            handed = 1;
            wait_completed(&c, i + 1);
        }
    }
    CHECK(handed);
    CHECK(here >= 1);
    CHECK_EQ_INT(atomic_load(&c.off_submitter), 1);
    CHECK_EQ_INT(atomic_load(&c.out_of_order), 0);
    writer_stop(w);
    on_submitter_thread = 0;
    store_close(s);
    remove_dir(dir);
}

int main(void)
{
    run_submitters(0, 0, 0); /* fire and forget */
    run_submitters(1, 0, 0); /* each waits for its ack, as a publisher does */
    run_submitters(0, 1, 0); /* the same, committed by the submitters */
    run_submitters(1, 1, 0);
    run_submitters(0, 0, 1); /* lone requests committed by their submitters */
    run_submitters(1, 0, 1);
    test_group_commit();
    test_busy();
    test_periodic();
    test_linger_ends();
    test_lone_commits();
    return CHECK_DONE();
}
