/* scratch_dir.h: a fresh directory per test case (or benchmark run), and
 * its removal together with every file a store leaves in it (LMDB's two,
 * the lock file and the two logs), so that runs leave nothing behind.
 * The unit tests and bench/bench_util.h share it. */
#ifndef SLUICE_TEST_SCRATCH_DIR_H
#define SLUICE_TEST_SCRATCH_DIR_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A new directory PARENT/sluice_NAME_XXXXXX (free it with
 * scratch_dir_remove); exits on failure. */
static inline char *scratch_dir_new(const char *parent, const char *name)
{
    char *d = NULL;
    if (asprintf(&d, "%s/sluice_%s_XXXXXX", parent, name) < 0 || !mkdtemp(d)) {
        perror("mkdtemp");
        exit(2);
    }
    return d;
}

/* Removes a store's files from dir, leaving the directory. */
static inline void scratch_dir_wipe(const char *dir)
{
    static const char *const files[] = {"data.mdb", "lock.mdb", "sluice.lock", "wal", "wal2"};
    char p[1024];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
}

static inline void scratch_dir_remove(char *dir)
{
    scratch_dir_wipe(dir);
    rmdir(dir);
    free(dir);
}

#endif
