/* bench_util.h: what the C benchmarks built with the project share (clocks,
 * scratch directories).  Header-only: each benchmark is one file. */
#ifndef SLUICE_BENCH_UTIL_H
#define SLUICE_BENCH_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

/* Seconds on `clock`: CLOCK_MONOTONIC for time, CLOCK_PROCESS_CPUTIME_ID
 * for the CPU of every thread of the process, user and system. */
static inline double clock_s(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A fresh directory under parent (free it with remove_dir); exits on
 * failure. */
static inline char *make_dir(const char *parent)
{
    char *d;
    if (asprintf(&d, "%s/sluice_bench_XXXXXX", parent) < 0 || !mkdtemp(d)) {
        perror("mkdtemp");
        exit(2);
    }
    return d;
}

/* Remove what a store (or a log alone) leaves in dir, then dir. */
static inline void remove_dir(char *dir)
{
    static const char *const files[] = {"data.mdb", "lock.mdb", "sluice.lock", "wal", "wal2"};
    char p[1024];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
    free(dir);
}

#endif
