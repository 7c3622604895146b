/* powercut_test.c: power cuts for the store, simulated on any filesystem.
 *
 * The test records every write and flush the store makes to its data
 * directory (the store's own calls and LMDB's: this program defines
 * open, pwrite, write, writev, pwritev, fsync, fdatasync, unlink and
 * rename, which the linker and the dynamic loader bind before libc's;
 * flushes are recorded, not made), together with what the
 * store told the publisher (acknowledged, or not yet).  From that trace it
 * builds the disk states a power cut can leave at every point: everything
 * flushed (an fsync or fdatasync returned, or an O_DSYNC / O_DIRECT write
 * returned), plus none, all, any prefix, or a random subset of the writes
 * not yet flushed, each torn at 512-byte sectors (first sectors kept or
 * first sectors lost), and files created since the directory was last
 * fsynced present or missing.  Each state is copied to a directory of its
 * own and opened (the recovery), and the test checks:
 *   - the store opens;
 *   - every acknowledged message is there, once, in order (in relaxed mode:
 *     every message acknowledged before the last completed store_sync);
 *   - nothing unacknowledged appears after something lost (a message not
 *     acknowledged may be there only if everything before it is);
 *   - a message a recovery did not bring back never comes back later.
 * The last needs two cuts: the first states are also recovered and given a
 * second workload whose own trace is cut again (issue 25, item 10: stale
 * log records behind a torn write came back after the second cut).
 *
 * Three configurations: durable with O_DIRECT writes where the filesystem
 * has them, durable through the page cache, relaxed.  POWERCUT_LONG=1
 * checks more states (more second workloads, more random subsets); the
 * number of states checked is printed.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "check.h"
#include "scratch_dir.h"
#include "storage/store.h"
#include "storage/wal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* ---- recording ------------------------------------------------------------ */

enum {
    OP_WRITE,     /* a write issued (pending until flushed) */
    OP_PERSIST,   /* an O_DSYNC write returned: that write is on the disk */
    OP_SYNC,      /* fsync/fdatasync of a file returned */
    OP_DIRSYNC,   /* fsync of the directory returned: these entries stay */
    OP_BATCH,     /* messages [id, id + n) submitted */
    OP_ACK,       /* ... acknowledged (store_append_batch returned 0) */
    OP_FAIL,      /* ... refused */
    OP_RSYNC,     /* store_sync returned (relaxed): acknowledged so far are safe */
    OP_OPENED,    /* store_open returned (the recovery of a second workload) */
    OP_UNLINK,    /* a file removed (its content is gone from then on) */
    OP_RENAME,    /* file renamed to file `target` */
};

#define MAX_FILES 8
#define SECTOR 512

struct op {
    int kind;
    int file;
    uint64_t off;
    size_t len;
    unsigned char *data;
    size_t target;          /* OP_PERSIST: the write */
    int id, n;              /* OP_BATCH, OP_ACK, OP_FAIL */
    unsigned entries;       /* OP_DIRSYNC: bit per file */
    int persisted;          /* OP_WRITE: flushed by a later op (filled by the model) */
};

static struct {
    int on;
    char dir[256];
    size_t dirlen;
    pthread_mutex_t mu;
    struct op *ops;
    size_t n, cap;
    char names[MAX_FILES][32];
    int nfiles;
    int unsupported; /* calls the model does not know on a recorded file */
    int writing;     /* recorded writes between write_begin and write_done */
} rec = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Under rec.mu.  Once recording has stopped (a store thread, the
 * checkpoint's, may still write and flush after the workload), what it
 * does goes to a scratch op: the trace was taken, and an op added to it
 * then would be lost (leaked) or land in the next trace. */
static struct op *op_add(int kind)
{
    static struct op discard;
    if (!rec.on) {
        memset(&discard, 0, sizeof discard);
        return &discard;
    }
    if (rec.n == rec.cap) {
        rec.cap = rec.cap ? rec.cap * 2 : 1024;
        rec.ops = realloc(rec.ops, rec.cap * sizeof *rec.ops);
        if (!rec.ops) abort();
    }
    struct op *o = &rec.ops[rec.n++];
    memset(o, 0, sizeof *o);
    o->kind = kind;
    return o;
}

static int file_index(const char *name)
{
    for (int i = 0; i < rec.nfiles; i++)
        if (!strcmp(rec.names[i], name)) return i;
    if (rec.nfiles == MAX_FILES) abort();
    snprintf(rec.names[rec.nfiles], sizeof rec.names[0], "%s", name);
    return rec.nfiles++;
}

/* Files whose content is state: the lock files are rebuilt at every open. */
static int recorded_name(const char *name)
{
    size_t n = strlen(name);
    return strcmp(name, "lock.mdb") && strcmp(name, "sluice.lock") && !strchr(name, '/') &&
           !(n > 5 && !strcmp(name + n - 5, "-lock"));
}

/* The recorded file named by path (in the directory), or -1. */
static int path_file(const char *path)
{
    size_t n = strlen(path);
    if (!rec.on || n <= rec.dirlen + 1 || strncmp(path, rec.dir, rec.dirlen) ||
        path[rec.dirlen] != '/' || !recorded_name(path + rec.dirlen + 1))
        return -1;
    return file_index(path + rec.dirlen + 1);
}

/* open and open64 drop O_DSYNC (the store's direct log writes, LMDB's
 * meta page) and remember it here: the model knows such a write is on the
 * disk when it returns, and the test does not wait for the disk. */
#define MAX_FDS 65536
static unsigned char dsync_fd[MAX_FDS];

static int traced_open(const char *path, int flags, mode_t mode)
{
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, flags & ~O_DSYNC, mode);
    if (fd >= 0 && fd < MAX_FDS) dsync_fd[fd] = (flags & O_DSYNC) != 0;
    return fd;
}

int open(const char *path, int flags, ...)
{
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    return traced_open(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    return traced_open(path, flags, mode);
}

/* The recorded file fd is (its index), -2 for the directory itself, -1
 * for anything else.  *dsync: writes to fd are flushed when they return. */
static int tracked(int fd, int *dsync)
{
    char link[64], path[512];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return -1;
    path[n] = 0;
    if (strncmp(path, rec.dir, rec.dirlen)) return -1;
    if (path[rec.dirlen] == 0) return -2;
    if (path[rec.dirlen] != '/' || !recorded_name(path + rec.dirlen + 1)) return -1;
    *dsync = fd >= 0 && fd < MAX_FDS && dsync_fd[fd];
    pthread_mutex_lock(&rec.mu);
    int f = file_index(path + rec.dirlen + 1);
    pthread_mutex_unlock(&rec.mu);
    return f;
}

#define NOT_RECORDED ((size_t)-1)

/* Record a write of len bytes at off; the caller fixes the length after
 * the call (a short or failed write) with write_done. */
static size_t write_begin(int file, uint64_t off, const void *const *bufs, const size_t *lens,
                          int nbufs)
{
    size_t len = 0;
    for (int i = 0; i < nbufs; i++)
        len += lens[i];
    unsigned char *copy = malloc(len ? len : 1);
    if (!copy) abort();
    for (int i = 0, at = 0; i < nbufs; at += (int)lens[i], i++)
        memcpy(copy + at, bufs[i], lens[i]);
    pthread_mutex_lock(&rec.mu);
    if (!rec.on) { /* stopped since the caller looked */
        pthread_mutex_unlock(&rec.mu);
        free(copy);
        return NOT_RECORDED;
    }
    struct op *o = op_add(OP_WRITE);
    o->file = file;
    o->off = off;
    o->len = len;
    o->data = copy;
    size_t id = rec.n - 1;
    rec.writing++; /* rec_stop waits for its write_done */
    pthread_mutex_unlock(&rec.mu);
    return id;
}

static void write_done(size_t id, ssize_t r, int dsync)
{
    if (id == NOT_RECORDED) return;
    pthread_mutex_lock(&rec.mu);
    rec.ops[id].len = r > 0 ? (size_t)r : 0;
    if (dsync && r > 0) op_add(OP_PERSIST)->target = id;
    rec.writing--;
    pthread_mutex_unlock(&rec.mu);
}

static ssize_t traced_write(int fd, uint64_t off, int use_off, const struct iovec *iov, int cnt)
{
    int dsync = 0, f = rec.on ? tracked(fd, &dsync) : -1;
    size_t id = NOT_RECORDED;
    if (f >= 0) {
        const void *bufs[64];
        size_t lens[64];
        if (cnt > 64) abort();
        for (int i = 0; i < cnt; i++) {
            bufs[i] = iov[i].iov_base;
            lens[i] = iov[i].iov_len;
        }
        uint64_t at = use_off ? off : (uint64_t)lseek(fd, 0, SEEK_CUR);
        id = write_begin(f, at, bufs, lens, cnt);
    }
    ssize_t r;
    if (use_off)
        r = syscall(SYS_pwritev, fd, iov, cnt, (unsigned long)off, 0ul);
    else
        r = syscall(SYS_writev, fd, iov, cnt);
    write_done(id, r, dsync);
    return r;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    struct iovec v = {(void *)buf, n};
    return traced_write(fd, (uint64_t)off, 1, &v, 1);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    return pwrite(fd, buf, n, off);
}

ssize_t write(int fd, const void *buf, size_t n)
{
    struct iovec v = {(void *)buf, n};
    if (!rec.on) return syscall(SYS_write, fd, buf, n);
    return traced_write(fd, 0, 0, &v, 1);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    return traced_write(fd, 0, 0, iov, cnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    return traced_write(fd, (uint64_t)off, 1, iov, cnt);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off)
{
    return pwritev(fd, iov, cnt, off);
}

/* The flushes are recorded, not made: the model decides what a power cut
 * keeps, and the test does not wait for the disk. */
static int traced_sync(int fd)
{
    int dsync;
    if (!rec.on) return 0;
    int f = tracked(fd, &dsync);
    if (f == -1) return 0;
    pthread_mutex_lock(&rec.mu);
    if (f >= 0) {
        op_add(OP_SYNC)->file = f;
    } else {
        unsigned entries = 0;
        DIR *d = opendir(rec.dir);
        struct dirent *e;
        while (d && (e = readdir(d)))
            if (e->d_name[0] != '.' && recorded_name(e->d_name))
                entries |= 1u << file_index(e->d_name);
        if (d) closedir(d);
        op_add(OP_DIRSYNC)->entries = entries;
    }
    pthread_mutex_unlock(&rec.mu);
    return 0;
}

int fsync(int fd)
{
    return traced_sync(fd);
}

int fdatasync(int fd)
{
    return traced_sync(fd);
}

/* Calls the model does not cover: none of the store's on its files. */
static void unsupported(int fd)
{
    int dsync;
    if (rec.on && tracked(fd, &dsync) != -1) rec.unsupported++;
}

int unlink(const char *path)
{
    pthread_mutex_lock(&rec.mu);
    int f = path_file(path);
    if (f >= 0) op_add(OP_UNLINK)->file = f;
    pthread_mutex_unlock(&rec.mu);
    return (int)syscall(SYS_unlinkat, AT_FDCWD, path, 0);
}

/* A rename takes effect in the model at once; the new name's entry lasts
 * only once the directory is synced (cuts with new files gone). */
int rename(const char *from, const char *to)
{
    pthread_mutex_lock(&rec.mu);
    int f = path_file(from), g = path_file(to);
    if (f >= 0 && g >= 0) {
        struct op *o = op_add(OP_RENAME);
        o->file = f;
        o->target = (size_t)g;
    } else if (f >= 0 || g >= 0) {
        rec.unsupported++;
    }
    pthread_mutex_unlock(&rec.mu);
    return (int)syscall(SYS_renameat, AT_FDCWD, from, AT_FDCWD, to);
}

int ftruncate(int fd, off_t len)
{
    unsupported(fd);
    return (int)syscall(SYS_ftruncate, fd, len);
}

int fallocate(int fd, int mode, off_t off, off_t len)
{
    unsupported(fd);
    return (int)syscall(SYS_fallocate, fd, mode, off, len);
}

static void app_event(int kind, int id, int n)
{
    pthread_mutex_lock(&rec.mu);
    struct op *o = op_add(kind);
    o->id = id;
    o->n = n;
    pthread_mutex_unlock(&rec.mu);
}

static void rec_start(const char *dir)
{
    snprintf(rec.dir, sizeof rec.dir, "%s", dir);
    rec.dirlen = strlen(rec.dir);
    rec.nfiles = 0;
    rec.n = 0;
    rec.on = 1;
}

/* Stops recording, then waits for the recorded writes still in flight
 * (another thread's): their write_done must land before the trace is
 * taken, or it would index an array trace_take has handed over (a crash
 * seen once under load). */
static void rec_stop(void)
{
    pthread_mutex_lock(&rec.mu);
    rec.on = 0;
    while (rec.writing) {
        pthread_mutex_unlock(&rec.mu);
        sched_yield();
        pthread_mutex_lock(&rec.mu);
    }
    pthread_mutex_unlock(&rec.mu);
}

static void rec_free(struct op *ops, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(ops[i].data);
    free(ops);
}

/* ---- files ---------------------------------------------------------------- */

struct image {
    unsigned char *data;
    size_t size, cap;
    int present;
};

static void img_write(struct image *im, uint64_t off, const unsigned char *p, size_t len)
{
    size_t end = (size_t)off + len;
    if (end > im->cap) {
        size_t cap = im->cap ? im->cap : 65536;
        while (cap < end)
            cap *= 2;
        im->data = realloc(im->data, cap);
        if (!im->data) abort();
        memset(im->data + im->cap, 0, cap - im->cap);
        im->cap = cap;
    }
    memcpy(im->data + off, p, len);
    if (end > im->size) im->size = end;
    im->present = 1;
}

static void img_copy(struct image *dst, const struct image *src)
{
    dst->size = 0;
    dst->present = src->present;
    if (src->size) img_write(dst, 0, src->data, src->size);
    dst->size = src->size;
    dst->present = src->present;
}

static char *scratch_dir(const char *what)
{
    const char *base = getenv("TMPDIR");
    char name[64];
    snprintf(name, sizeof name, "powercut_%s", what);
    return scratch_dir_new(base && *base ? base : "/tmp", name);
}

static void save_files(const char *dir, char names[][32], const struct image *im, int n)
{
    char p[600];
    scratch_dir_wipe(dir);
    for (int i = 0; i < n; i++) {
        if (!im[i].present) continue;
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) abort();
        size_t done = 0;
        while (done < im[i].size) {
            ssize_t w = syscall(SYS_pwrite64, fd, im[i].data + done, im[i].size - done, done);
            if (w <= 0) abort();
            done += (size_t)w;
        }
        close(fd);
    }
}

/* ---- the workload ----------------------------------------------------------- */

struct config {
    const char *name;
    int relaxed;
    int no_direct;
};

#define MAX_MSGS 4096
#define LOG_SIZE (64 << 10)
#define TOPIC_LEN 2

/* Message `id`: topic "t0".."t2", data "m000123|" and padding, so that
 * every record takes 256 bytes of the log: 16 to a 4 KiB block, so that a
 * new record ends exactly where an old one began. */
static size_t msg_data(int id, char *buf)
{
    size_t len = 256 - WAL_REC_HEADER - TOPIC_LEN;
    memset(buf, 'x', len);
    char head[16];
    int n = snprintf(head, sizeof head, "m%06d|", id);
    memcpy(buf, head, (size_t)n);
    return len;
}

static int next_id;

static uint64_t rng_state;
static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

/* Submit `n` messages as one batch, with the events around it. */
static int publish(struct store *s, int n)
{
    static char data[64][256];
    static char topics[3][4] = {"t0", "t1", "t2"};
    struct store_msg m[64];
    int first = next_id;
    if (n > 64) n = 64;
    for (int i = 0; i < n; i++) {
        int id = next_id++;
        memset(&m[i], 0, sizeof m[i]);
        m[i].topic = topics[id % 3];
        m[i].topic_len = TOPIC_LEN;
        m[i].data_len = msg_data(id, data[i]);
        m[i].data = data[i];
        m[i].max_count = 100000;
    }
    app_event(OP_BATCH, first, n);
    int rc = store_append_batch(s, m, (size_t)n, 1700000000000 + first);
    app_event(rc ? OP_FAIL : OP_ACK, first, n);
    return rc;
}

/* The first workload, on a new store: a batch bigger than a 4 KiB block
 * first (its torn write leaves whole records behind a bad one), then
 * batches of 1 to 6, checkpoints now and then (the sweep seals a log and
 * hands it to the checkpoint thread), and in relaxed mode syncs. */
static void workload_a(struct store *s, const struct config *c)
{
    CHECK_EQ_INT(publish(s, 24), 0);
    for (int i = 0; i < 70; i++) {
        int n = i % 17 == 16 ? 20 : 1 + (int)(rnd() % 6);
        CHECK_EQ_INT(publish(s, n), 0);
        if (i % 11 == 10) CHECK_EQ_INT(store_sweep(s, 1700000000000, 0, NULL), 0);
        if (i % 29 == 28) CHECK_EQ_INT(store_checkpoint(s), 0);
        if (c->relaxed && i % 7 == 6) {
            CHECK_EQ_INT(store_sync(s), 0);
            app_event(OP_RSYNC, 0, 0);
        }
    }
}

/* The second workload, after a recovery: single messages first, so that
 * a new record ends on a block boundary where an old one begins, then
 * some batches. */
static void workload_b(struct store *s, const struct config *c)
{
    for (int i = 0; i < 20; i++)
        CHECK_EQ_INT(publish(s, 1), 0);
    for (int i = 0; i < 8; i++) {
        CHECK_EQ_INT(publish(s, 1 + (int)(rnd() % 5)), 0);
        if (c->relaxed && i % 3 == 2) {
            CHECK_EQ_INT(store_sync(s), 0);
            app_event(OP_RSYNC, 0, 0);
        }
    }
}

/* ---- reading a store back -------------------------------------------------- */

struct got {
    uint64_t seq;
    int id;
};

struct reading {
    struct got *v;
    size_t n, cap;
    int bad;
};

static int on_msg(void *ud, const struct store_view *m)
{
    struct reading *r = ud;
    int id;
    if (m->data_len < 8 || sscanf(m->data, "m%06d|", &id) != 1) {
        r->bad++;
        return 0;
    }
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 256;
        r->v = realloc(r->v, r->cap * sizeof *r->v);
        if (!r->v) abort();
    }
    r->v[r->n++] = (struct got){m->seq, id};
    return 0;
}

static int got_cmp(const void *x, const void *y)
{
    const struct got *a = x, *b = y;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

/* Every message of the store, in seq order. */
static int read_all(struct store *s, struct reading *r)
{
    static const char *topics[3] = {"t0", "t1", "t2"};
    r->n = 0;
    r->bad = 0;
    for (int t = 0; t < 3; t++) {
        int rc = store_read(s, topics[t], TOPIC_LEN, 0, 0, on_msg, r, NULL);
        if (rc) return rc;
    }
    if (r->n) qsort(r->v, r->n, sizeof *r->v, got_cmp);
    return 0;
}

/* ---- what a recovery must show ------------------------------------------------ */

enum { MUST = 1, MAY = 2, NEVER = 3 };

struct expect {
    unsigned char st[MAX_MSGS]; /* 0: never submitted */
    int first_may;              /* ids of MAY form the tail of the order */
};

/* From a trace cut at p: a first workload's messages (prior: NULL), or
 * a second's on top of a first (prior: what the first's recovery found,
 * and what it must have had). */
static void expect_at(const struct op *ops, size_t p, int relaxed, const struct expect *prior,
                      const unsigned char *found, struct expect *e)
{
    int acked_upto = -1, synced_upto = -1, opened = 0;
    memset(e, 0, sizeof *e);
    if (prior) {
        for (int i = 0; i < MAX_MSGS; i++)
            if (prior->st[i]) e->st[i] = found[i] ? MUST : NEVER;
    }
    for (size_t i = 0; i < p; i++) {
        const struct op *o = &ops[i];
        if (o->kind == OP_OPENED) opened = 1;
        if (o->kind == OP_BATCH)
            for (int k = 0; k < o->n; k++)
                e->st[o->id + k] = MAY;
        if (o->kind == OP_ACK) acked_upto = o->id + o->n - 1;
        if (o->kind == OP_RSYNC) synced_upto = acked_upto;
    }
    /* A cut inside the recovery itself: what it replayed from the log but
     * had not acknowledged may be replayed again or not (the same log),
     * but what was acknowledged before the first cut must stay. */
    if (prior && !opened)
        for (int i = 0; i < MAX_MSGS; i++)
            if (prior->st[i] == MAY && found[i]) e->st[i] = MAY;
    int must_upto = relaxed ? synced_upto : acked_upto;
    for (int i = 0; i <= must_upto; i++)
        if (e->st[i] == MAY) e->st[i] = MUST;
    e->first_may = MAX_MSGS;
    for (int i = 0; i < MAX_MSGS; i++)
        if (e->st[i] == MAY && i < e->first_may) e->first_may = i;
}

static int failures;
static long states_checked;

/* What went wrong, counted by kind; the first two of each kind are shown. */
enum { F_OPEN, F_READ, F_FOREIGN, F_TWICE, F_BACK, F_ORDER, F_LOST, F_HOLE, F_KINDS };
static const char *const kind_names[F_KINDS] = {
    "the store does not open",
    "read failed",
    "a message never published",
    "a message twice",
    "a message an earlier recovery lost is back",
    "out of order",
    "an acknowledged message lost",
    "an unacknowledged message after a lost one",
};
static int kind_count[F_KINDS];

static void fail(int kind, const char *cfg, const char *where, const char *fmt, ...)
{
    failures++;
    if (kind_count[kind]++ >= 2) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "powercut_test [%s] %s: ", cfg, where);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

/* Open the state saved in dir (the recovery) and check it against e.
 * found (may be NULL) gets the ids present. */
static int recover_and_check(const char *dir, const struct config *c, const struct expect *e,
                             const char *where, unsigned char *found)
{
    struct store *s = NULL;
    struct store_opts o = {.relaxed = c->relaxed, .log_size = LOG_SIZE};
    char err[512];
    struct reading r = {0};
    int ok = 1;
    states_checked++;
    int rc = store_open(&s, dir, &o, err, sizeof err);
    if (rc) {
        fail(F_OPEN, c->name, where, "the store does not open: %s", err);
        if (getenv("POWERCUT_DEBUG")) {
            char cmd[700];
            snprintf(cmd, sizeof cmd, "ls -la %s; od -A d -t x1 %s/data.mdb | head -5", dir, dir);
            if (system(cmd)) {}
        }
        return 0;
    }
    if ((rc = read_all(s, &r)) || r.bad) {
        fail(F_READ, c->name, where, "read failed (%d) or foreign data (%d)", rc, r.bad);
        ok = 0;
    }
    unsigned char seen[MAX_MSGS] = {0};
    int prev = -1, missing_may = -1;
    for (size_t i = 0; ok && i < r.n; i++) {
        int id = r.v[i].id;
        if (id < 0 || id >= MAX_MSGS || !e->st[id]) {
            fail(F_FOREIGN, c->name, where, "message %d was never published", id);
            ok = 0;
        } else if (seen[id]) {
            fail(F_TWICE, c->name, where, "message %d is there twice", id);
            ok = 0;
        } else if (e->st[id] == NEVER) {
            fail(F_BACK, c->name, where,
                 "message %d, which an earlier recovery did not bring back, is back (seq %llu)",
                 id, (unsigned long long)r.v[i].seq);
            ok = 0;
        } else if (id < prev) {
            fail(F_ORDER, c->name, where, "message %d comes after %d", id, prev);
            ok = 0;
        }
        seen[id] = 1;
        prev = id;
    }
    for (int id = 0; ok && id < MAX_MSGS; id++) {
        if (e->st[id] == MUST && !seen[id]) {
            fail(F_LOST, c->name, where, "acknowledged message %d is lost", id);
            ok = 0;
        }
        if (e->st[id] == MAY && !seen[id] && missing_may < 0) missing_may = id;
        if (e->st[id] == MAY && seen[id] && missing_may >= 0) {
            fail(F_HOLE, c->name, where, "message %d is there, but %d before it was lost", id,
                 missing_may);
            ok = 0;
        }
    }
    if (found) memcpy(found, seen, sizeof seen);
    free(r.v);
    store_close(s);
    return ok;
}

/* ---- crash states ------------------------------------------------------------ */

/* One disk state: which pending writes are kept, and of each which sectors. */
enum { KEEP_NONE, KEEP_ALL, KEEP_HEAD, KEEP_TAIL, KEEP_RANDOM };

struct cut {
    size_t p;     /* ops [0, p) happened */
    int prefix;   /* pending writes [0, prefix) kept whole */
    int torn;     /* then pending write `prefix` kept: KEEP_HEAD/TAIL sectors */
    int k;        /* sectors kept (HEAD) or lost (TAIL) */
    int random;   /* nonzero: every pending sector kept with p = 1/2, seeded */
    int drop_new; /* files not yet in a synced directory are missing */
};

struct trace {
    struct op *ops;
    size_t n;
    char names[MAX_FILES][32];
    int nfiles;
    struct image base[MAX_FILES]; /* the files before the trace */
    size_t *flushed_at;           /* per op: the op that flushed this write (n: none) */
    size_t entry_at[MAX_FILES];   /* 1 + the first directory sync that kept the
                                     file (0: it was there before the trace) */
};

/* When each write was flushed, and each file's entry synced. */
static void trace_index(struct trace *t)
{
    size_t last_sync[MAX_FILES];
    t->flushed_at = malloc((t->n + 1) * sizeof *t->flushed_at);
    if (!t->flushed_at) abort();
    for (int f = 0; f < MAX_FILES; f++) {
        t->entry_at[f] = t->base[f].present ? 0 : t->n + 2;
        last_sync[f] = t->n;
    }
    /* Backwards: a sync flushes every earlier write of its file. */
    for (size_t i = t->n; i-- > 0;) {
        const struct op *o = &t->ops[i];
        t->flushed_at[i] = t->n;
        if (o->kind == OP_SYNC) last_sync[o->file] = i;
        if (o->kind == OP_WRITE) t->flushed_at[i] = last_sync[o->file];
    }
    for (size_t i = 0; i < t->n; i++) {
        const struct op *o = &t->ops[i];
        if (o->kind == OP_PERSIST && i < t->flushed_at[o->target]) t->flushed_at[o->target] = i;
        if (o->kind == OP_DIRSYNC)
            for (int f = 0; f < MAX_FILES; f++)
                if ((o->entries & (1u << f)) && t->entry_at[f] > i + 1) t->entry_at[f] = i + 1;
    }
}

/* The files after the cut. */
static void build_state(const struct trace *t, const struct cut *c, struct image *out)
{
    for (int f = 0; f < t->nfiles; f++)
        img_copy(&out[f], &t->base[f]);
    uint64_t seed = (uint64_t)c->random * 0x9e3779b97f4a7c15ull + c->p;
    int idx = 0; /* pending writes met so far */
    for (size_t i = 0; i < c->p; i++) {
        const struct op *o = &t->ops[i];
        if (o->kind == OP_UNLINK) {
            out[o->file].size = 0;
            out[o->file].present = 0;
        }
        if (o->kind == OP_RENAME) {
            img_copy(&out[o->target], &out[o->file]);
            out[o->file].size = 0;
            out[o->file].present = 0;
        }
        if (o->kind != OP_WRITE || !o->len) continue;
        if (t->flushed_at[i] < c->p) {
            img_write(&out[o->file], o->off, o->data, o->len);
            continue;
        }
        /* Pending: its sectors ([off, end) cut at 512-byte boundaries)
         * kept or not, as the cut says. */
        uint64_t end = o->off + o->len;
        int sec = 0;
        for (uint64_t s = o->off; s < end; sec++) {
            uint64_t e = (s / SECTOR + 1) * SECTOR;
            if (e > end) e = end;
            int keep;
            if (c->random) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                keep = (seed >> 40) & 1;
            } else if (idx < c->prefix) {
                keep = 1;
            } else if (idx == c->prefix && c->torn == KEEP_HEAD) {
                keep = sec < c->k;
            } else if (idx == c->prefix && c->torn == KEEP_TAIL) {
                keep = sec >= c->k;
            } else {
                keep = 0;
            }
            if (keep) img_write(&out[o->file], s, o->data + (s - o->off), (size_t)(e - s));
            s = e;
        }
        idx++;
    }
    for (int f = 0; f < t->nfiles; f++)
        if (c->drop_new && t->entry_at[f] > c->p) out[f].present = 0;
}

static uint64_t state_hash(const struct image *im, int n, const struct expect *e)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (int f = 0; f < n; f++) {
        h = (h ^ (uint64_t)(im[f].present * 7 + f)) * 0x100000001b3ull;
        for (size_t i = 0; i < im[f].size; i += 8) {
            uint64_t v = 0;
            memcpy(&v, im[f].data + i, im[f].size - i < 8 ? im[f].size - i : 8);
            h = (h ^ v) * 0x100000001b3ull;
        }
    }
    for (int i = 0; i < MAX_MSGS; i++)
        if (e->st[i]) h = (h ^ (uint64_t)(i * 4 + e->st[i])) * 0x100000001b3ull;
    return h;
}

/* Checked states, so that a state met at several cuts is opened once. */
static uint64_t *seen_states;
static size_t nseen, capseen;

static int seen_before(uint64_t h)
{
    for (size_t i = 0; i < nseen; i++)
        if (seen_states[i] == h) return 1;
    if (nseen == capseen) {
        capseen = capseen ? capseen * 2 : 4096;
        seen_states = realloc(seen_states, capseen * sizeof *seen_states);
        if (!seen_states) abort();
    }
    seen_states[nseen++] = h;
    return 0;
}

/* The cuts to try at point p. */
static int cuts_at(const struct trace *t, size_t p, int long_mode, struct cut *out, int max)
{
    int npending = 0, nsec_last = 0, has_new = 0;
    for (size_t i = 0; i < p; i++) {
        const struct op *o = &t->ops[i];
        if (o->kind != OP_WRITE || !o->len || t->flushed_at[i] < p) continue;
        npending++;
        nsec_last = (int)((o->off + o->len + SECTOR - 1) / SECTOR - o->off / SECTOR);
    }
    for (int f = 0; f < t->nfiles; f++)
        if (t->entry_at[f] > p) has_new = 1;

    int n = 0;
#define ADD(...)                                                                                 \
    do {                                                                                         \
        if (n < max) out[n++] = (struct cut){__VA_ARGS__};                                       \
    } while (0)
    ADD(.p = p, .prefix = 0);
    if (has_new) ADD(.p = p, .prefix = 0, .drop_new = 1);
    if (!npending) return n;
    ADD(.p = p, .prefix = npending);
    if (has_new) ADD(.p = p, .prefix = npending, .drop_new = 1);
    for (int w = 1; w < npending; w++)
        ADD(.p = p, .prefix = w);
    /* The last pending write torn: its first sectors only, or all but its
     * first ones (the case that leaves whole records behind a bad one). */
    int steps[] = {1, 2, 3, nsec_last / 2, nsec_last - 1};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        int k = steps[i];
        if (k <= 0 || k >= nsec_last) continue;
        ADD(.p = p, .prefix = npending - 1, .torn = KEEP_HEAD, .k = k);
        ADD(.p = p, .prefix = npending - 1, .torn = KEEP_TAIL, .k = k);
    }
    int randoms = long_mode ? 8 : 2;
    for (int r = 1; r <= randoms; r++)
        ADD(.p = p, .random = r);
#undef ADD
    return n;
}

/* Whether the cut may have kept a later sector of a log write and lost an
 * earlier one: the states where a recovery leaves good records of the log
 * unreplayed, on which a second workload is run. */
static int cut_has_hole(const struct trace *t, const struct cut *c)
{
    if (!c->random && c->torn != KEEP_TAIL) return 0;
    int idx = 0;
    for (size_t i = 0; i < c->p; i++) {
        const struct op *o = &t->ops[i];
        if (o->kind != OP_WRITE || !o->len || t->flushed_at[i] < c->p) continue;
        /* A write of records (not the zeroes of a new log). */
        int records = 0;
        for (size_t b = 0; b < o->len && !records; b++)
            records = o->data[b] != 0;
        if ((c->random || idx == c->prefix) && records && !strncmp(t->names[o->file], "wal", 3))
            return 1;
        idx++;
    }
    return 0;
}

/* ---- running it ---------------------------------------------------------------- */

static void trace_take(struct trace *t)
{
    t->ops = rec.ops;
    t->n = rec.n;
    t->nfiles = rec.nfiles;
    memcpy(t->names, rec.names, sizeof t->names);
    rec.ops = NULL;
    rec.n = rec.cap = 0;
}

/* A workload on the files `base` (none: a new store), recorded.  Returns
 * the trace; *found_out gets what the opening recovery found. */
static void run_traced(const struct config *c, const struct trace *prior_trace,
                       const struct image *base, int first, struct trace *t,
                       unsigned char *found_out)
{
    char *dir = scratch_dir("work");
    memset(t, 0, sizeof *t);
    if (base) save_files(dir, (char(*)[32])prior_trace->names, base, prior_trace->nfiles);
    rec_start(dir);
    /* The same names, in the same order, as the trace the base came from. */
    if (prior_trace)
        for (int f = 0; f < prior_trace->nfiles; f++)
            file_index(prior_trace->names[f]);
    struct store *s = NULL;
    struct store_opts o = {.relaxed = c->relaxed, .log_size = LOG_SIZE};
    char err[512];
    int rc = store_open(&s, dir, &o, err, sizeof err);
    app_event(OP_OPENED, 0, 0);
    if (rc) {
        rec_stop();
        fail(F_OPEN, c->name, "traced open", "%s", err);
        trace_take(t);
        trace_index(t);
        scratch_dir_remove(dir);
        return;
    }
    if (found_out) {
        struct reading r = {0};
        memset(found_out, 0, MAX_MSGS);
        if (read_all(s, &r) == 0)
            for (size_t i = 0; i < r.n; i++)
                if (r.v[i].id >= 0 && r.v[i].id < MAX_MSGS) found_out[r.v[i].id] = 1;
        free(r.v);
    }
    if (first)
        workload_a(s, c);
    else
        workload_b(s, c);
    rec_stop();
    trace_take(t);
    store_close(s);
    if (base)
        for (int f = 0; f < prior_trace->nfiles; f++)
            img_copy(&t->base[f], &base[f]);
    trace_index(t);
    scratch_dir_remove(dir);
}

static void free_trace(struct trace *t)
{
    rec_free(t->ops, t->n);
    free(t->flushed_at);
    for (int f = 0; f < MAX_FILES; f++)
        free(t->base[f].data);
}

/* Every cut of t, recovered in rdir and checked.  With holes (not NULL),
 * the cuts that left a hole are collected for second workloads. */
static void check_cuts(const struct config *c, const struct trace *t, const struct expect *prior,
                       const unsigned char *prior_found, int long_mode, const char *level,
                       struct cut *holes, int *nholes, int maxholes)
{
    char *rdir = scratch_dir("state");
    struct image im[MAX_FILES];
    memset(im, 0, sizeof im);
    struct cut cuts[64];
    struct expect e;
    for (size_t p = 0; p <= t->n; p++) {
        /* Cut after ops that change the disk or what was promised. */
        if (p && p < t->n && t->ops[p - 1].kind == OP_BATCH) continue;
        int nc = cuts_at(t, p, long_mode, cuts, 64);
        expect_at(t->ops, p, c->relaxed, prior, prior_found, &e);
        for (int i = 0; i < nc; i++) {
            build_state(t, &cuts[i], im);
            if (seen_before(state_hash(im, t->nfiles, &e))) continue;
            save_files(rdir, (char(*)[32])t->names, im, t->nfiles);
            char where[128];
            snprintf(where, sizeof where, "%s cut at op %zu/%zu (kept %d%s%s k=%d random=%d%s)",
                     level, p, t->n, cuts[i].prefix,
                     cuts[i].torn == KEEP_HEAD ? ", torn: head" : "",
                     cuts[i].torn == KEEP_TAIL ? ", torn: tail" : "", cuts[i].k, cuts[i].random,
                     cuts[i].drop_new ? ", new files gone" : "");
            recover_and_check(rdir, c, &e, where, NULL);
            if (holes && cut_has_hole(t, &cuts[i]) && *nholes < maxholes) holes[(*nholes)++] = cuts[i];
        }
    }
    for (int f = 0; f < MAX_FILES; f++)
        free(im[f].data);
    scratch_dir_remove(rdir);
}

static int count_found(const unsigned char *found)
{
    int n = 0;
    for (int i = 0; i < MAX_MSGS; i++)
        n += found[i];
    return n;
}

static void run_config(const struct config *c, int long_mode)
{
    if (c->no_direct)
        setenv("SLUICE_WAL_NO_DIRECT", "1", 1);
    else
        unsetenv("SLUICE_WAL_NO_DIRECT");
    long before = states_checked;
    int fails_before = failures;
    memset(kind_count, 0, sizeof kind_count);
    next_id = 0;
    rng_state = 42;
    nseen = 0;

    struct trace t1;
    run_traced(c, NULL, NULL, 1, &t1, NULL);
    CHECK_EQ_INT(rec.unsupported, 0);
    static struct cut holes[4096];
    int nholes = 0;
    check_cuts(c, &t1, NULL, NULL, long_mode, "first", holes, &nholes, 4096);

    /* Second cuts, on top of first cuts that left a hole: the earliest
     * torn writes that kept their end (the first batch's: a new record
     * will end where one of its whole records begins), then cuts spread
     * over the trace. */
    int want = long_mode ? 80 : 16, picked = 0;
    static int order[4096];
    for (int i = 0; i < nholes && picked < want / 2; i++)
        if (holes[i].torn == KEEP_TAIL) order[picked++] = i;
    for (int k = picked; k < want && k < nholes; k++)
        order[picked++] = (int)((size_t)nholes * (size_t)k / (size_t)want);
    for (int k = 0; k < picked; k++) {
        int i = order[k];
        struct image s1[MAX_FILES];
        memset(s1, 0, sizeof s1);
        build_state(&t1, &holes[i], s1);
        struct expect e1;
        expect_at(t1.ops, holes[i].p, c->relaxed, NULL, NULL, &e1);
        unsigned char found[MAX_MSGS];
        int saved_next = next_id;
        next_id = 2000; /* the second workload's ids */
        struct trace t2;
        run_traced(c, &t1, s1, 0, &t2, found);
        next_id = saved_next;
        char level[64];
        snprintf(level, sizeof level, "second (after first cut at op %zu)", holes[i].p);
        if (getenv("POWERCUT_DEBUG"))
            printf("powercut_test [%s]: second workload after the cut at op %zu (kept %d, torn "
                   "%d, k=%d, random=%d): the recovery found %d messages\n",
                   c->name, holes[i].p, holes[i].prefix, holes[i].torn, holes[i].k,
                   holes[i].random, count_found(found));
        check_cuts(c, &t2, &e1, found, long_mode, level, NULL, NULL, 0);
        free_trace(&t2);
        for (int f = 0; f < MAX_FILES; f++)
            free(s1[f].data);
    }
    free_trace(&t1);
    printf("powercut_test [%s]: %ld crash states checked, %d failed\n", c->name,
           states_checked - before, failures - fails_before);
    for (int k = 0; k < F_KINDS; k++)
        if (kind_count[k]) printf("    %d: %s\n", kind_count[k], kind_names[k]);
}

int main(void)
{
    int long_mode = getenv("POWERCUT_LONG") && *getenv("POWERCUT_LONG") == '1';
    static const struct config configs[] = {
        {"durable", 0, 0},
        {"durable, page cache", 0, 1},
        {"relaxed", 1, 0},
    };
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++)
        run_config(&configs[i], long_mode);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("powercut_test: %ld crash states checked in %.1f s, %d failed\n", states_checked,
           (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9, failures);
    CHECK_EQ_INT(failures, 0);
    return CHECK_DONE();
}
