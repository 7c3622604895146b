/* wal_bench.c: what one durable log append costs, on each of wal.c's two
 * paths: O_DIRECT | O_DSYNC (whole 4 KiB blocks) and pwrite + fdatasync
 * (SLUICE_WAL_NO_DIRECT).  One thread appends records of R bytes, one at a
 * time, as a lone publisher makes the writer do; rounds alternate the two
 * paths so that drift in the disk's speed falls on both.
 *
 * Usage: wal_bench [--count N] [--record R] [--rounds K] [--dir PARENT]
 * (defaults 2000, 120, 3, /tmp).  Prints wall and process CPU (user +
 * system) per append.  Every run is bounded by N appends; the files it
 * makes are removed at the end.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* setenv, asprintf and mkdtemp (bench_util.h) */
#endif
#include "bench/bench_util.h"
#include "storage/wal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One round on one path; returns 0 or an errno value. */
static int run(const char *parent, int direct, long count, size_t record)
{
    char *dir = make_dir(parent);
    if (direct)
        unsetenv("SLUICE_WAL_NO_DIRECT");
    else
        setenv("SLUICE_WAL_NO_DIRECT", "1", 1);
    struct wal *w;
    unsigned char *rec = malloc(record);
    int e = rec ? wal_open(&w, dir, "wal", 0, WAL_DEFAULT_SIZE) : ENOMEM;
    if (e) {
        free(rec);
        remove_dir(dir);
        return e;
    }
    memset(rec, 'r', record);
    double t0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    for (long i = 0; i < count && !e; i++) {
        if (wal_room(w) < record) wal_rewind(w); /* as a checkpoint would */
        e = wal_append(w, rec, record);
    }
    double wall = clock_s(CLOCK_MONOTONIC) - t0, cpu = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
    printf("%-22s %8zu %10.1f %10.1f\n",
           wal_direct(w) ? "O_DIRECT | O_DSYNC" : "pwrite + fdatasync", record,
           wall / count * 1e6, cpu / count * 1e6);
    if (direct && !wal_direct(w)) printf("  (no O_DIRECT on this filesystem)\n");
    wal_close(w);
    free(rec);
    remove_dir(dir);
    return e;
}

int main(int argc, char **argv)
{
    long count = 2000, rounds = 3;
    size_t record = 120;
    const char *parent = "/tmp";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--count"))
            count = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--record"))
            record = (size_t)atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--rounds"))
            rounds = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--dir"))
            parent = argv[i + 1];
    }
    if (count < 1 || count > 1000000 || record < 1 || record > WAL_DEFAULT_SIZE || rounds < 1 ||
        rounds > 100) {
        fprintf(stderr, "usage: wal_bench [--count 1..1000000] [--record 1..2097152] "
                        "[--rounds 1..100] [--dir PARENT]\n");
        return 2;
    }
    printf("%-22s %8s %10s %10s\n", "append", "bytes", "wall µs", "CPU µs");
    for (long r = 0; r < rounds; r++)
        for (int direct = 1; direct >= 0; direct--) {
            int e = run(parent, direct, count, record);
            if (e) {
                fprintf(stderr, "wal_bench: %s\n", strerror(e));
                return 1;
            }
        }
    return 0;
}
