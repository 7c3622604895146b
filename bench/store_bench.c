/* store_bench.c: how fast the storage layer acknowledges and replays.
 *
 * Publishers: P threads (1, 16, 256), each submitting one 100-byte message
 * through the writer and waiting for its acknowledgement before the next,
 * as an HTTP publisher does; durable (the log flushed per batch) and
 * relaxed (the log flushed every second).  Group commit shows as the mean batch
 * size.  Replay: 100,000 messages of one topic read back with store_read,
 * in one walk and in pages of 1000 as a resuming subscriber would.
 *
 * Usage: store_bench [--seconds S] [--dir PARENT]   (defaults: 2, /tmp)
 * Every run is bounded by S seconds per configuration; the directories it
 * makes are removed at the end.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* asprintf, mkdtemp */
#endif
#include "bench/bench_util.h"
#include "storage/store.h"
#include "storage/writer.h"

#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    return clock_s(CLOCK_MONOTONIC);
}

static struct store *open_store(const char *dir, int relaxed)
{
    struct store_opts o = {.relaxed = relaxed};
    struct store *s;
    char err[256];
    if (store_open(&s, dir, &o, err, sizeof err)) {
        fprintf(stderr, "store_open: %s\n", err);
        exit(2);
    }
    return s;
}

/* ---- acknowledged publishes ------------------------------------------------ */

#define MAX_SAMPLES 200000

struct pub {
    struct writer *w;
    int id;
    double until;
    sem_t acked;
    long done, failed;
    double *lat;
    long nlat;
};

static void done_cb(void *ud, struct writer_req *r)
{
    struct pub *p = r->user;
    sem_post(&p->acked);
}

static char payload[100];
static char topics[16][8];

static void *pub_main(void *arg)
{
    struct pub *p = arg;
    struct writer_req r;
    while (now_s() < p->until) {
        memset(&r, 0, sizeof r);
        r.topic = topics[p->id % 16];
        r.topic_len = strlen(r.topic);
        r.data = payload;
        r.data_len = sizeof payload;
        r.max_count = 1000;
        r.user = p;
        double t0 = now_s();
        if (writer_submit(p->w, &r)) {
            p->failed++;
            usleep(1000);
            continue;
        }
        sem_wait(&p->acked);
        if (r.status) p->failed++;
        p->done++;
        if (p->nlat < MAX_SAMPLES / 16) p->lat[p->nlat++] = now_s() - t0;
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void bench_publish(const char *parent, int relaxed, int nthreads, double seconds)
{
    char *dir = make_dir(parent);
    struct store *s = open_store(dir, relaxed);
    struct writer *w;
    struct writer_opts o = {.done = done_cb};
    if (writer_start(&w, s, &o)) exit(2);
    struct pub *p = calloc((size_t)nthreads, sizeof *p);
    pthread_t *th = calloc((size_t)nthreads, sizeof *th);
    if (!p || !th) exit(2);
    double t0 = now_s(), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    for (int i = 0; i < nthreads; i++) {
        p[i].w = w;
        p[i].id = i;
        p[i].until = t0 + seconds;
        p[i].lat = malloc(sizeof(double) * (MAX_SAMPLES / 16));
        sem_init(&p[i].acked, 0, 0);
        if (pthread_create(&th[i], NULL, pub_main, &p[i])) exit(2);
    }
    long total = 0, failed = 0, nlat = 0;
    for (int i = 0; i < nthreads; i++) {
        pthread_join(th[i], NULL);
        total += p[i].done;
        failed += p[i].failed;
        nlat += p[i].nlat;
    }
    double elapsed = now_s() - t0, cpu = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
    struct writer_stats st;
    writer_stats(w, &st);
    writer_stop(w);
    double *all = malloc(sizeof(double) * (size_t)(nlat ? nlat : 1));
    long k = 0;
    for (int i = 0; i < nthreads; i++) {
        memcpy(all + k, p[i].lat, sizeof(double) * (size_t)p[i].nlat);
        k += p[i].nlat;
        free(p[i].lat);
        sem_destroy(&p[i].acked);
    }
    qsort(all, (size_t)nlat, sizeof *all, cmp_double);
    double p50 = nlat ? all[nlat / 2] : 0, p99 = nlat ? all[nlat * 99 / 100] : 0;
    printf("%-8s %5d %12.0f %10.1f %10.2f %10.2f %10.1f %8ld\n", relaxed ? "relaxed" : "durable",
           nthreads, total / elapsed, st.batches ? (double)st.messages / st.batches : 0, p50 * 1e3,
           p99 * 1e3, total ? cpu / (double)total * 1e6 : 0, failed);
    fflush(stdout);
    free(all);
    free(p);
    free(th);
    store_close(s);
    remove_dir(dir);
}

/* ---- replay ------------------------------------------------------------------ */

static int count_cb(void *ud, const struct store_view *v)
{
    uint64_t *sum = ud;
    *sum += v->data_len + v->event_len;
    return 0;
}

static void bench_replay(const char *parent)
{
    enum { N = 100000, BATCH = 1000 };
    char *dir = make_dir(parent);
    struct store *s = open_store(dir, 1);
    struct store_msg m[BATCH];
    for (int b = 0; b < N / BATCH; b++) {
        for (int i = 0; i < BATCH; i++) {
            memset(&m[i], 0, sizeof m[i]);
            m[i].topic = "replay";
            m[i].topic_len = 6;
            m[i].event = "tick";
            m[i].event_len = 4;
            m[i].data = payload;
            m[i].data_len = sizeof payload;
            m[i].max_count = N;
        }
        if (store_append_batch(s, m, BATCH, 1)) exit(2);
    }
    store_sync(s);

    double best_walk = 1e9, best_paged = 1e9;
    for (int rep = 0; rep < 5; rep++) {
        uint64_t sum = 0;
        struct store_read_info info;
        double t0 = now_s();
        store_read(s, "replay", 6, 0, 0, count_cb, &sum, &info);
        double t = now_s() - t0;
        if (info.delivered != N) fprintf(stderr, "replay delivered %zu\n", info.delivered);
        if (t < best_walk) best_walk = t;

        t0 = now_s();
        uint64_t after = 0;
        size_t got = 0;
        for (int page = 0; page < N / 1000 + 2; page++) {
            store_read(s, "replay", 6, after, 1000, count_cb, &sum, &info);
            got += info.delivered;
            if (!info.delivered) break;
            after += info.delivered; /* seqs of one topic are consecutive here */
            if (!info.more) break;
        }
        t = now_s() - t0;
        if (got != N) fprintf(stderr, "paged replay delivered %zu\n", got);
        if (t < best_paged) best_paged = t;
    }
    printf("replay of %d messages (100 B): one walk %.1f ms (%.2f M msg/s); "
           "pages of 1000 %.1f ms (%.2f M msg/s)\n",
           N, best_walk * 1e3, N / best_walk / 1e6, best_paged * 1e3, N / best_paged / 1e6);
    store_close(s);
    remove_dir(dir);
}

int main(int argc, char **argv)
{
    double seconds = 2;
    const char *parent = "/tmp";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--seconds"))
            seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--dir"))
            parent = argv[i + 1];
    }
    if (seconds <= 0 || seconds > 60) seconds = 2;
    memset(payload, 'p', sizeof payload);
    for (int i = 0; i < 16; i++)
        snprintf(topics[i], sizeof topics[i], "t%d", i);

    printf("acknowledged publishes through the writer, %.0f s each, data dir under %s\n", seconds,
           parent);
    printf("%-8s %5s %12s %10s %10s %10s %10s %8s\n", "mode", "pubs", "acks/s", "msgs/txn",
           "p50 ms", "p99 ms", "CPU µs/ack", "errors");
    int threads[] = {1, 16, 256};
    for (int relaxed = 0; relaxed <= 1; relaxed++)
        for (int i = 0; i < 3; i++)
            bench_publish(parent, relaxed, threads[i], seconds);
    bench_replay(parent);
    return 0;
}
