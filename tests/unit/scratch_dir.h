/* scratch_dir.h: a fresh directory per test case (or benchmark run), and
 * its removal together with every file a store leaves in it (whatever
 * their names: LMDB's, the lock file, the logs, a data.mdb.new a cut open
 * left), so that runs leave nothing behind.  The unit tests and
 * bench/bench_util.h share it. */
#ifndef SLUICE_TEST_SCRATCH_DIR_H
#define SLUICE_TEST_SCRATCH_DIR_H

#include <dirent.h>
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

/* Removes every file in dir (a store makes no subdirectories), leaving
 * the directory. */
static inline void scratch_dir_wipe(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[1024];
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    if (d) closedir(d);
}

static inline void scratch_dir_remove(char *dir)
{
    scratch_dir_wipe(dir);
    rmdir(dir);
    free(dir);
}

#endif
