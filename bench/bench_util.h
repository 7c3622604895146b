/* bench_util.h: what the C benchmarks built with the project share (clocks,
 * scratch directories).  Header-only: each benchmark is one file. */
#ifndef SLUICE_BENCH_UTIL_H
#define SLUICE_BENCH_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "tests/unit/scratch_dir.h"

/* Seconds on `clock`: CLOCK_MONOTONIC for time, CLOCK_PROCESS_CPUTIME_ID
 * for the CPU of every thread of the process, user and system. */
static inline double clock_s(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A fresh directory under parent (free it with remove_dir, which also
 * removes what a store or a log left in it); exits on failure. */
static inline char *make_dir(const char *parent)
{
    return scratch_dir_new(parent, "bench");
}

static inline void remove_dir(char *dir)
{
    scratch_dir_remove(dir);
}

#endif
