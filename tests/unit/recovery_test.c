/* recovery_test.c: what a read-write open does with the logs a crash left
 * (storage/store.c's replay; docs/storage.md, "Damage"): records it does
 * not replay never come back (issue 25, item 10), damage with acknowledged
 * records behind it is refused with the file and offset, a repair keeps
 * every good record, and a torn last write is not damage (item 11).
 * "A crash" is a child process that appends and exits without closing the
 * store; the damage is made by hand in the log file. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "check.h"
#include "scratch_dir.h"
#include "storage/store.h"
#include "storage/wal.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define LOG_SIZE (64 << 10)
/* Every record takes 256 bytes: 16 to a 4 KiB block. */
#define DATA_LEN (256 - WAL_REC_HEADER - 1)

static char *make_dir(void)
{
    return scratch_dir_new("/tmp", "recovery");
}

static void remove_dir(char *dir)
{
    scratch_dir_remove(dir);
}

static int open_store(struct store **s, const char *dir, int relaxed, int salvage, int read_only,
                      char *err, size_t errlen)
{
    struct store_opts o = {.relaxed = relaxed,
                           .salvage = salvage,
                           .read_only = read_only,
                           .log_size = LOG_SIZE};
    return store_open(s, dir, &o, err, errlen);
}

/* Messages "<run>:<n>", n from first, in batches of `batch`. */
static int publish(struct store *s, int run, int first, int n, int batch)
{
    static char data[64][DATA_LEN];
    struct store_msg m[64];
    for (int i = 0; i < n; i += batch) {
        int k = n - i < batch ? n - i : batch;
        for (int j = 0; j < k; j++) {
            memset(data[j], '.', DATA_LEN);
            snprintf(data[j], DATA_LEN, "%d:%d", run, first + i + j);
            memset(&m[j], 0, sizeof m[j]);
            m[j].topic = "t";
            m[j].topic_len = 1;
            m[j].data = data[j];
            m[j].data_len = DATA_LEN;
        }
        if (store_append_batch(s, m, (size_t)k, 1000)) return -1;
    }
    return 0;
}

/* A process that opens the store, publishes, and dies without closing. */
static void crash_run(const char *dir, int relaxed, int run, int n, int batch)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        struct store *s;
        char err[256];
        if (open_store(&s, dir, relaxed, 0, 0, err, sizeof err)) {
            fprintf(stderr, "crash_run: %s\n", err);
            _exit(10);
        }
        if (publish(s, run, 1, n, batch)) _exit(11);
        if (relaxed && store_sync(s)) _exit(12);
        _exit(0);
    }
    int status = 0;
    CHECK_EQ_INT(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static char got[256][16];
static int ngot;

static int on_msg(void *ud, const struct store_view *m)
{
    (void)ud;
    if (ngot < 256) {
        snprintf(got[ngot], sizeof got[0], "%.*s", (int)(m->data_len < 15 ? m->data_len : 15),
                 (const char *)m->data);
        char *dot = strchr(got[ngot], '.');
        if (dot) *dot = 0;
    }
    ngot++;
    return 0;
}

static void read_all(struct store *s)
{
    ngot = 0;
    CHECK_EQ_INT(store_read(s, "t", 1, 0, 0, on_msg, NULL, NULL), 0);
}

/* Overwrite len bytes at off in <dir>/<name> with byte b (or xor 0x20). */
static void poke(const char *dir, const char *name, long off, size_t len, int b)
{
    char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int fd = open(p, O_RDWR);
    CHECK(fd >= 0);
    for (size_t i = 0; i < len; i++) {
        unsigned char c;
        CHECK_EQ_INT(pread(fd, &c, 1, off + (long)i), 1);
        c = b < 0 ? c ^ 0x20 : (unsigned char)b;
        CHECK_EQ_INT(pwrite(fd, &c, 1, off + (long)i), 1);
    }
    close(fd);
}

/* Item 10: a batch of 24 whose write lost its first sector (a power cut
 * tears a write at any sector): the open replays none of it.  Then 16
 * acknowledged single messages, and a crash: their records end exactly
 * where the torn batch's 17th begins, whole, with the seq that follows.
 * It must not come back. */
static void test_stale_behind_torn_write(int relaxed)
{
    char *dir = make_dir();
    char err[512];
    struct store *s;
    crash_run(dir, relaxed, 1, 24, 24);
    poke(dir, "wal", 0, 512, 0);
    crash_run(dir, relaxed, 2, 16, 1);
    CHECK_EQ_INT(open_store(&s, dir, relaxed, 0, 0, err, sizeof err), 0);
    read_all(s);
    CHECK_EQ_INT(ngot, 16);
    for (int i = 0; i < ngot && i < 16; i++) {
        char want[16];
        snprintf(want, sizeof want, "2:%d", i + 1);
        CHECK_STR(got[i], want);
    }
    store_close(s);
    remove_dir(dir);
}

struct lines {
    int n;
    char first[768];
};

static void on_line(void *ud, const char *line)
{
    struct lines *l = ud;
    if (!l->n++) snprintf(l->first, sizeof l->first, "%s", line);
}

/* Item 11: ten acknowledged single messages, a crash, one byte of the
 * fifth flipped: the open refuses, naming the file and offset; the check
 * says so; a repair keeps the nine good ones, and the store goes on. */
static void test_damage_refused_and_repaired(void)
{
    char *dir = make_dir();
    char err[512];
    struct store *s;
    crash_run(dir, 0, 1, 10, 1);
    poke(dir, "wal", 4 * 256 + WAL_REC_HEADER + 4, 1, -1);
    int rc = open_store(&s, dir, 0, 0, 0, err, sizeof err);
    CHECK(rc != 0);
    if (!rc) store_close(s);
    CHECK(strstr(err, "/wal: damaged log record at offset 1024 (seq 5 expected)") != NULL);
    CHECK(strstr(err, "followed by 5 good records from seq 6 on") != NULL);

    /* The check, on a read-only handle, says the same. */
    CHECK_EQ_INT(open_store(&s, dir, 0, 0, 1, err, sizeof err), 0);
    struct lines l = {0};
    struct store_log_report r;
    CHECK_EQ_INT(store_log_check(s, on_line, &l, &r), 0);
    CHECK_EQ_INT(r.damaged, 1);
    CHECK_EQ_INT(r.stranded, 5);
    CHECK_EQ_INT(r.pending, 4);
    CHECK(strstr(l.first, "4 messages after the store's last seq") != NULL);
    store_close(s);

    /* The repair: every good record. */
    CHECK_EQ_INT(open_store(&s, dir, 0, 1, 0, err, sizeof err), 0);
    store_close(s);
    CHECK_EQ_INT(open_store(&s, dir, 0, 0, 0, err, sizeof err), 0);
    read_all(s);
    CHECK_EQ_INT(ngot, 9);
    CHECK_STR(got[3], "1:4");
    CHECK_STR(got[4], "1:6");
    CHECK_STR(got[8], "1:10");
    CHECK_EQ_INT(publish(s, 3, 1, 1, 1), 0);
    CHECK_EQ_INT(store_last_seq(s), 11);
    store_close(s);
    CHECK_EQ_INT(open_store(&s, dir, 0, 0, 1, err, sizeof err), 0);
    CHECK_EQ_INT(store_log_check(s, NULL, NULL, &r), 0);
    CHECK(!r.damaged && !r.pending && !r.torn);
    store_close(s);
    remove_dir(dir);
}

/* A bad record in the last batch, with the rest of that batch behind it:
 * the write a crash cut (never acknowledged), not damage.  The records
 * before it are replayed; the open goes on. */
static void test_torn_last_batch(void)
{
    char *dir = make_dir();
    char err[512];
    struct store *s;
    crash_run(dir, 0, 1, 10, 10);
    poke(dir, "wal", 4 * 256 + WAL_REC_HEADER + 4, 1, -1);
    CHECK_EQ_INT(open_store(&s, dir, 0, 0, 1, err, sizeof err), 0);
    struct store_log_report r;
    CHECK_EQ_INT(store_log_check(s, NULL, NULL, &r), 0);
    CHECK(!r.damaged);
    CHECK_EQ_INT(r.torn, 5);
    store_close(s);
    CHECK_EQ_INT(open_store(&s, dir, 0, 0, 0, err, sizeof err), 0);
    read_all(s);
    CHECK_EQ_INT(ngot, 4);
    store_close(s);
    remove_dir(dir);
}

static int told;

static void on_damage(void *ud, const struct store_damage *d)
{
    (void)ud;
    (void)d;
    told++;
}

/* Relaxed mode: an OS crash may lose any write since the last sync and
 * keep a later one, so a hole is not refused: the replay stops there, and
 * what lies behind it never comes back. */
static void test_relaxed_hole(void)
{
    char *dir = make_dir();
    char err[512];
    struct store *s;
    crash_run(dir, 1, 1, 10, 1);
    poke(dir, "wal", 4 * 256 + WAL_REC_HEADER + 4, 1, -1);
    struct store_opts o = {.relaxed = 1, .log_size = LOG_SIZE, .damage = on_damage};
    told = 0;
    CHECK_EQ_INT(store_open(&s, dir, &o, err, sizeof err), 0);
    CHECK_EQ_INT(told, 1); /* said (the server logs it) */
    struct store_stats st;
    CHECK_EQ_INT(store_stats(s, &st), 0);
    CHECK_EQ_INT(st.damaged, 5); /* and counted: the five behind the hole */
    read_all(s);
    CHECK_EQ_INT(ngot, 4);
    CHECK_EQ_INT(publish(s, 2, 1, 1, 1), 0);
    store_close(s);
    CHECK_EQ_INT(open_store(&s, dir, 1, 0, 0, err, sizeof err), 0);
    read_all(s);
    CHECK_EQ_INT(ngot, 5);
    CHECK_STR(got[4], "2:1");
    store_close(s);
    remove_dir(dir);
}

int main(void)
{
    test_stale_behind_torn_write(0);
    test_stale_behind_torn_write(1);
    test_damage_refused_and_repaired();
    test_torn_last_batch();
    test_relaxed_hole();
    return CHECK_DONE();
}
