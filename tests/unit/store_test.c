/* store_test.c: unit tests of storage/store.c on temporary directories.
 *
 * Each case makes its own mkdtemp directory so cases cannot see each
 * other's state.  The read-only case runs a second process (this binary
 * re-executed with --ro-child), because LMDB forbids one process to open
 * the same environment twice and the operator commands are another process
 * anyway.  The disk-full case uses RLIMIT_FSIZE, which makes writes past a
 * size fail like a full disk, without root or a small filesystem.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mkdtemp, clock_gettime, RTLD_NEXT */
#endif
#include "check.h"
#include "scratch_dir.h"
#include "storage/store.h"
#include "storage/wal.h"

#include <dlfcn.h>
#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char *make_dir(void)
{
    return scratch_dir_new("/tmp", "store");
}

static void wipe_dir(const char *dir)
{
    char p[512];
    snprintf(p, sizeof p, "%s/data.mdb", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/lock.mdb", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/sluice.lock", dir);
    unlink(p);
}

static void remove_dir(char *dir)
{
    scratch_dir_remove(dir);
}

static struct store *open_store(const char *dir, size_t map, size_t map_max, int relaxed)
{
    struct store_opts o = {.map_size = map, .map_max = map_max, .relaxed = relaxed};
    struct store *s = NULL;
    char err[256];
    int rc = store_open(&s, dir, &o, err, sizeof err);
    if (rc) fprintf(stderr, "store_open(%s): %d %s\n", dir, rc, err);
    CHECK_EQ_INT(rc, 0);
    return s;
}

static struct store_msg mk(const char *topic, const char *event, const char *data)
{
    struct store_msg m = {0};
    m.topic = topic;
    m.topic_len = strlen(topic);
    m.event = event;
    m.event_len = event ? strlen(event) : 0;
    m.data = data;
    m.data_len = strlen(data);
    return m;
}

/* Collects what store_read delivers. */
struct got {
    int n;
    uint64_t seq[4096];
    char data[4096][32];
    char event[4096][16];
    int64_t time[4096];
    unsigned flags[4096];
};

static int collect(void *ud, const struct store_view *v)
{
    struct got *g = ud;
    if (g->n >= 4096) return 1;
    g->seq[g->n] = v->seq;
    snprintf(g->data[g->n], sizeof g->data[0], "%.*s", (int)v->data_len, (const char *)v->data);
    snprintf(g->event[g->n], sizeof g->event[0], "%.*s", (int)v->event_len,
             v->event ? v->event : "");
    g->time[g->n] = v->time_ms;
    g->flags[g->n] = v->flags;
    g->n++;
    return 0;
}

static struct got G; /* big: keep it off the stack */

static int read_topic(struct store *s, const char *topic, uint64_t after, size_t limit,
                      struct store_read_info *info)
{
    memset(&G, 0, sizeof G);
    return store_read(s, topic, strlen(topic), after, limit, collect, &G, info);
}

static void test_append_read_order(void)
{
    char *dir = make_dir();
    struct store *s = open_store(dir, 0, 0, 0);
    struct store_msg m[5] = {mk("a", "e1", "one"), mk("b", NULL, "two"), mk("a", NULL, "three"),
                             mk("", NULL, "bad"), mk("a", "e4", "")};
    CHECK_EQ_INT(store_append_batch(s, m, 5, 1234), 0);
    CHECK_EQ_INT(m[3].status, SL_EINVAL);
    CHECK(m[0].seq < m[1].seq && m[1].seq < m[2].seq && m[2].seq < m[4].seq);
    CHECK(m[0].epoch == store_epoch(s) && m[0].epoch != 0);
    CHECK_EQ_INT(store_last_seq(s), m[4].seq);

    struct store_read_info info;
    CHECK_EQ_INT(read_topic(s, "a", 0, 0, &info), 0);
    CHECK_EQ_INT(G.n, 3);
    CHECK_STR(G.data[0], "one");
    CHECK_STR(G.event[0], "e1");
    CHECK_STR(G.data[1], "three");
    CHECK_STR(G.event[1], "");
    CHECK_STR(G.data[2], "");
    CHECK_STR(G.event[2], "e4");
    CHECK_EQ_INT(G.time[0], 1234);
    CHECK_EQ_INT(G.seq[2], m[4].seq);
    CHECK(info.exists && !info.gap && !info.more);
    CHECK_EQ_INT(info.count, 3);
    CHECK_EQ_INT(info.first_seq, m[0].seq);
    CHECK_EQ_INT(info.last_seq, m[4].seq);

    /* After an ID, with a limit. */
    CHECK_EQ_INT(read_topic(s, "a", m[0].seq, 1, &info), 0);
    CHECK_EQ_INT(G.n, 1);
    CHECK_STR(G.data[0], "three");
    CHECK(info.more);
    CHECK_EQ_INT(read_topic(s, "a", m[4].seq, 0, &info), 0);
    CHECK_EQ_INT(G.n, 0);
    CHECK(!info.more && !info.gap);

    /* Unknown topic: nothing, not an error. */
    CHECK_EQ_INT(read_topic(s, "nope", 0, 0, &info), 0);
    CHECK_EQ_INT(G.n, 0);
    CHECK(!info.exists);

    /* Topics sharing a prefix do not bleed into each other. */
    struct store_msg p[2] = {mk("ab", NULL, "x"), mk("a\x01", NULL, "y")};
    CHECK_EQ_INT(store_append_batch(s, p, 2, 1), 0);
    CHECK_EQ_INT(read_topic(s, "a", 0, 0, NULL), 0);
    CHECK_EQ_INT(G.n, 3);

    struct store_stats st;
    CHECK_EQ_INT(store_stats(s, &st), 0);
    CHECK_EQ_INT(st.messages, 6);
    CHECK_EQ_INT(st.topics, 4);
    CHECK(st.file_bytes > 0 && st.map_bytes >= st.used_bytes);
    store_close(s);
    remove_dir(dir);
}

struct merged {
    int n;
    uint64_t seq[64];
    size_t topic[64];
};

static int merge_cb(void *ud, const struct store_view *v)
{
    struct merged *mg = ud;
    if (mg->n < 64) {
        mg->seq[mg->n] = v->seq;
        mg->topic[mg->n] = v->topic_index;
        mg->n++;
    }
    return mg->n == 1000; /* never: the limit stops the walk */
}

/* One Last-Event-ID resumes several topics, merged in seq order. */
static void test_read_multi(void)
{
    char *dir = make_dir();
    struct store *s = open_store(dir, 0, 0, 0);
    const char *names[6] = {"m0", "m1", "m2", "m3", "m4", "absent"};
    struct store_msg m[30];
    for (int i = 0; i < 30; i++) {
        m[i] = mk(names[(i * 7) % 5], NULL, "x");
        m[i].max_count = 4; /* m0..m4 get 6 each: the 2 oldest go */
    }
    CHECK_EQ_INT(store_append_batch(s, m, 30, 1), 0);
    struct store_topic_ref refs[6];
    for (int i = 0; i < 6; i++)
        refs[i] = (struct store_topic_ref){names[i], strlen(names[i])};
    struct store_read_info infos[6];
    struct merged mg = {0};

    /* Two topics (stack path), after m[11]. */
    CHECK_EQ_INT(store_read_multi(s, refs, 2, m[11].seq, 0, merge_cb, &mg, infos), 0);
    int ok = 1;
    for (int i = 1; i < mg.n; i++)
        ok &= mg.seq[i] > mg.seq[i - 1];
    CHECK(ok);
    CHECK_EQ_INT(mg.n, (int)(infos[0].delivered + infos[1].delivered));
    for (int i = 0; i < mg.n; i++) {
        /* the topic index matches the message's topic */
        int src = (int)(mg.seq[i] - m[0].seq);
        CHECK_EQ_INT(mg.topic[i], (size_t)((src * 7) % 5));
    }

    /* Six topics (heap allocation path), from the start, limited. */
    memset(&mg, 0, sizeof mg);
    CHECK_EQ_INT(store_read_multi(s, refs, 6, 0, 7, merge_cb, &mg, infos), 0);
    CHECK_EQ_INT(mg.n, 7);
    ok = 1;
    for (int i = 1; i < mg.n; i++)
        ok &= mg.seq[i] > mg.seq[i - 1];
    CHECK(ok);
    CHECK(!infos[5].exists);
    CHECK(infos[0].gap && infos[0].exists);
    CHECK_EQ_INT(infos[0].count, 4);
    int more = 0;
    for (int i = 0; i < 5; i++)
        more |= infos[i].more;
    CHECK(more);
    /* All of it, no limit: 5 topics x 4 retained. */
    memset(&mg, 0, sizeof mg);
    CHECK_EQ_INT(store_read_multi(s, refs, 6, 0, 0, merge_cb, &mg, NULL), 0);
    CHECK_EQ_INT(mg.n, 20);
    store_close(s);
    remove_dir(dir);
}

static void test_ids(void)
{
    char *dir = make_dir();
    char id1[STORE_ID_MAX], id2[STORE_ID_MAX], idx[STORE_ID_MAX];
    uint64_t seq = 0;

    struct store *s = open_store(dir, 0, 0, 0);
    uint64_t e1 = store_epoch(s);
    struct store_msg m = mk("t", NULL, "1");
    CHECK_EQ_INT(store_append_batch(s, &m, 1, 1), 0);
    size_t n = store_id_format(m.epoch, m.seq, id1);
    CHECK_EQ_INT(n, strlen(id1));
    CHECK_EQ_INT(store_id_parse(s, id1, n, &seq), 0);
    CHECK_EQ_INT(seq, m.seq);
    uint64_t s1 = m.seq;
    /* A seq not yet committed in our epoch is unknown. */
    store_id_format(m.epoch, m.seq + 1, idx);
    CHECK_EQ_INT(store_id_parse(s, idx, strlen(idx), &seq), SL_EUNKNOWN);
    store_close(s);

    /* Reopen: new epoch, larger seqs, old IDs still ours. */
    s = open_store(dir, 0, 0, 0);
    CHECK(store_epoch(s) != e1);
    /* A second writer on the same directory is refused. */
    struct store *twice = NULL;
    char err[128];
    CHECK_EQ_INT(store_open(&twice, dir, NULL, err, sizeof err), SL_ELOCKED);
    CHECK(twice == NULL);
    CHECK_EQ_INT(store_id_parse(s, id1, strlen(id1), &seq), 0);
    CHECK_EQ_INT(seq, s1);
    m = mk("t", NULL, "2");
    CHECK_EQ_INT(store_append_batch(s, &m, 1, 2), 0);
    CHECK(m.seq > s1);
    store_id_format(m.epoch, m.seq, id2);
    CHECK_EQ_INT(store_id_parse(s, id2, strlen(id2), &seq), 0);
    /* The old epoch paired with a seq of the new one is not ours. */
    store_id_format(e1, m.seq, idx);
    CHECK_EQ_INT(store_id_parse(s, idx, strlen(idx), &seq), SL_EUNKNOWN);
    /* Nor the new epoch paired with a seq committed before it began. */
    store_id_format(store_epoch(s), s1, idx);
    CHECK_EQ_INT(store_id_parse(s, idx, strlen(idx), &seq), SL_EUNKNOWN);
    /* A reopen that commits nothing does not grow the epoch table, and the
     * replaced epoch's IDs stay unknown. */
    store_close(s);
    s = open_store(dir, 0, 0, 0);
    uint64_t e3 = store_epoch(s);
    store_close(s);
    s = open_store(dir, 0, 0, 0);
    store_id_format(e3, m.seq + 1, idx);
    m = mk("t", NULL, "3");
    CHECK_EQ_INT(store_append_batch(s, &m, 1, 3), 0);
    CHECK_EQ_INT(store_id_parse(s, idx, strlen(idx), &seq), SL_EUNKNOWN);
    store_close(s);

    /* Malformed. */
    s = open_store(dir, 0, 0, 0);
    const char *bad[] = {"",
                         "-",
                         "abc",
                         "abc-",
                         "-12",
                         "0abc-1",
                         "abc-01",
                         "abc-0",
                         "ABC-1",
                         "ab c-1",
                         "abc-1x",
                         "abc-1-2",
                         "zzzzzzzzzzzzzz-1",
                         "abc-99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_EQ_INT(store_id_parse(s, bad[i], strlen(bad[i]), &seq), SL_EINVAL);
    /* Round trip at the extremes. */
    store_id_format(UINT64_MAX, UINT64_MAX, idx);
    CHECK_STR(idx, "3w5e11264sgsf-18446744073709551615");
    store_close(s);

    /* Wiped directory: a new epoch, and the stale client's ID is unknown
     * even once the new store's seqs pass it. */
    wipe_dir(dir);
    s = open_store(dir, 0, 0, 0);
    CHECK(store_epoch(s) != e1);
    for (int i = 0; i < 5; i++) {
        m = mk("t", NULL, "new");
        CHECK_EQ_INT(store_append_batch(s, &m, 1, 4), 0);
    }
    CHECK(m.seq >= s1);
    CHECK_EQ_INT(store_id_parse(s, id1, strlen(id1), &seq), SL_EUNKNOWN);
    CHECK_EQ_INT(store_id_parse(s, id2, strlen(id2), &seq), SL_EUNKNOWN);
    store_close(s);
    remove_dir(dir);
}

static int copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    char buf[65536];
    size_t n;
    int rc = (a && b) ? 0 : -1;
    while (rc == 0 && (n = fread(buf, 1, sizeof buf, a)) > 0)
        if (fwrite(buf, 1, n, b) != n) rc = -1;
    if (a) fclose(a);
    if (b && fclose(b)) rc = -1;
    return rc;
}

/* A data directory restored from an older copy: IDs issued after the copy
 * was taken must be unknown, even when the restored store reissues those
 * seq numbers. */
static void test_restore(void)
{
    char *dir = make_dir();
    char data[512], saved[512], id[STORE_ID_MAX];
    uint64_t seq;
    snprintf(data, sizeof data, "%s/data.mdb", dir);
    snprintf(saved, sizeof saved, "%s.saved", dir);

    struct store *s = open_store(dir, 0, 0, 0);
    struct store_msg m = mk("t", NULL, "before");
    CHECK_EQ_INT(store_append_batch(s, &m, 1, 1), 0);
    store_close(s);
    CHECK_EQ_INT(copy_file(data, saved), 0);

    s = open_store(dir, 0, 0, 0);
    m = mk("t", NULL, "after");
    CHECK_EQ_INT(store_append_batch(s, &m, 1, 2), 0);
    store_id_format(m.epoch, m.seq, id);
    store_close(s);

    CHECK_EQ_INT(copy_file(saved, data), 0);
    unlink(saved);
    s = open_store(dir, 0, 0, 0);
    for (int i = 0; i < 3; i++) {
        struct store_msg r = mk("t", NULL, "restored");
        CHECK_EQ_INT(store_append_batch(s, &r, 1, 3), 0);
    }
    CHECK(store_last_seq(s) >= m.seq);
    CHECK_EQ_INT(store_id_parse(s, id, strlen(id), &seq), SL_EUNKNOWN);
    store_close(s);
    remove_dir(dir);
}

static void test_trim(void)
{
    char *dir = make_dir();
    struct store *s = open_store(dir, 0, 0, 0);
    struct store_read_info info;
    uint64_t seqs[10], deleted = 0;
    char text[10][16];

    /* By count, inside the append. */
    for (int i = 0; i < 10; i++) {
        snprintf(text[i], sizeof text[i], "m%d", i);
        struct store_msg m = mk("c", NULL, text[i]);
        m.max_count = 3;
        CHECK_EQ_INT(store_append_batch(s, &m, 1, 100 + i), 0);
        seqs[i] = m.seq;
    }
    CHECK_EQ_INT(read_topic(s, "c", 0, 0, &info), 0);
    CHECK_EQ_INT(G.n, 3);
    CHECK_STR(G.data[0], "m7");
    CHECK_EQ_INT(info.count, 3);
    CHECK_EQ_INT(info.first_seq, seqs[7]);
    CHECK(info.gap); /* from the start: 7 messages are gone */
    CHECK_EQ_INT(read_topic(s, "c", seqs[5], 0, &info), 0);
    CHECK(info.gap);
    CHECK_EQ_INT(G.n, 3);
    CHECK_EQ_INT(read_topic(s, "c", seqs[6], 0, &info), 0);
    CHECK(!info.gap); /* seqs[6] was the last deleted: nothing missed */
    CHECK_EQ_INT(G.n, 3);

    /* A batch much larger than the limit. */
    struct store_msg big[50];
    for (int i = 0; i < 50; i++) {
        big[i] = mk("c", NULL, "b");
        big[i].max_count = 5;
    }
    CHECK_EQ_INT(store_append_batch(s, big, 50, 200), 0);
    CHECK_EQ_INT(read_topic(s, "c", 0, 0, &info), 0);
    CHECK_EQ_INT(G.n, 5);
    CHECK_EQ_INT(G.seq[0], big[45].seq);

    /* By age: publish at t=1000, 2000, 3000 with max_age 1500. */
    for (int i = 0; i < 3; i++) {
        struct store_msg m = mk("age", NULL, text[i]);
        m.max_age_ms = 1500;
        CHECK_EQ_INT(store_append_batch(s, &m, 1, 1000 * (i + 1)), 0);
        seqs[i] = m.seq;
    }
    CHECK_EQ_INT(read_topic(s, "age", 0, 0, &info), 0);
    CHECK_EQ_INT(G.n, 2); /* t=1000 < 3000-1500 went at the third append */
    CHECK_EQ_INT(G.time[0], 2000);
    CHECK_EQ_INT(store_trim(s, "age", 3, 0, 1500, 3600, &deleted), 0);
    CHECK_EQ_INT(deleted, 1);
    CHECK_EQ_INT(store_trim(s, "age", 3, 0, 1500, 3600, &deleted), 0);
    CHECK_EQ_INT(deleted, 0);
    CHECK_EQ_INT(store_trim(s, "nope", 4, 1, 0, 0, &deleted), 0);

    /* The sweep expires idle topics by the retention they last saw. */
    CHECK_EQ_INT(store_sweep(s, 100000, 1, &deleted), 0); /* visits "age" first */
    uint64_t total = deleted;
    CHECK_EQ_INT(store_sweep(s, 100000, 0, &deleted), 0);
    total += deleted;
    CHECK_EQ_INT(total, 1);
    CHECK_EQ_INT(read_topic(s, "age", seqs[1], 0, &info), 0);
    CHECK_EQ_INT(G.n, 0);
    CHECK(info.exists && info.gap);
    CHECK_EQ_INT(info.count, 0);
    CHECK_EQ_INT(info.first_seq, 0);
    /* The emptied topic fills again. */
    struct store_msg m = mk("age", NULL, "again");
    CHECK_EQ_INT(store_append_batch(s, &m, 1, 100001), 0);
    CHECK_EQ_INT(read_topic(s, "age", seqs[2], 0, &info), 0);
    CHECK_EQ_INT(G.n, 1);
    CHECK(!info.gap);
    CHECK_EQ_INT(info.first_seq, m.seq);
    store_close(s);
    remove_dir(dir);
}

static void test_map_growth(void)
{
    char *dir = make_dir();
    struct store *s = open_store(dir, 64 << 10, 0, 1);
    char payload[1024];
    struct store_msg m[50];
    uint64_t acked = 0;
    memset(payload, 'x', sizeof payload);
    for (int b = 0; b < 60; b++) {
        for (int i = 0; i < 50; i++) {
            m[i] = mk(b % 2 ? "g1" : "g2", NULL, "");
            m[i].data = payload;
            m[i].data_len = sizeof payload;
        }
        int rc = store_append_batch(s, m, 50, 1);
        CHECK_EQ_INT(rc, 0);
        if (rc) break;
        acked += 50;
    }
    /* The map grows at checkpoints: wait for them. */
    CHECK_EQ_INT(store_checkpoint(s), 0);
    struct store_stats st;
    CHECK_EQ_INT(store_stats(s, &st), 0);
    CHECK(st.map_grows > 0);
    CHECK(st.map_bytes > (3000u << 10));
    CHECK_EQ_INT(st.messages, acked);
    store_close(s);

    /* A bounded map ends in SL_EFULL, and keeps what was acknowledged.
     * The bound shows at a checkpoint: at the latest when the 2 MiB log
     * fills, so write more than that. */
    wipe_dir(dir);
    s = open_store(dir, 64 << 10, 512 << 10, 0);
    acked = 0;
    int rc = 0;
    for (int b = 0; b < 400 && rc == 0; b++) {
        for (int i = 0; i < 10; i++) {
            m[i] = mk("bounded", NULL, "");
            m[i].data = payload;
            m[i].data_len = sizeof payload;
        }
        rc = store_append_batch(s, m, 10, 1);
        if (rc == 0) acked += 10;
    }
    CHECK_EQ_INT(rc, SL_EFULL);
    CHECK(acked > 0);
    store_close(s);
    /* A store filled to its bound still opens under the same bound. */
    s = open_store(dir, 64 << 10, 512 << 10, 0);
    store_close(s);
    s = open_store(dir, 64 << 10, 0, 0);
    struct store_read_info info;
    CHECK_EQ_INT(read_topic(s, "bounded", 0, 0, &info), 0);
    CHECK_EQ_INT((uint64_t)G.n, acked);
    store_close(s);
    remove_dir(dir);
}

/* Writes past RLIMIT_FSIZE fail with EFBIG, as a full disk fails with
 * ENOSPC: the batch fails with SL_EFULL, the store stays usable, and
 * what was acknowledged survives a reopen. */
static void test_disk_full(void)
{
    char *dir = make_dir();
    char data[512];
    struct stat sb;
    struct rlimit old, lim;
    char payload[4000];
    uint64_t acked = 0;
    int rc = 0;

    snprintf(data, sizeof data, "%s/data.mdb", dir);
    memset(payload, 'y', sizeof payload);
    struct store *s = open_store(dir, 8 << 20, 0, 0);
    struct store_msg m = mk("full", NULL, "first");
    CHECK_EQ_INT(store_append_batch(s, &m, 1, 1), 0);
    acked++;
    CHECK_EQ_INT(stat(data, &sb), 0);
    signal(SIGXFSZ, SIG_IGN);
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = (rlim_t)sb.st_size + (64 << 10);
    CHECK_EQ_INT(setrlimit(RLIMIT_FSIZE, &lim), 0);
    for (int i = 0; i < 200 && rc == 0; i++) {
        struct store_msg b[4];
        for (int j = 0; j < 4; j++) {
            b[j] = mk("full", NULL, "");
            b[j].data = payload;
            b[j].data_len = sizeof payload;
        }
        rc = store_append_batch(s, b, 4, 2);
        if (rc == 0) acked += 4;
    }
    /* The log's write fails first (EFBIG), then LMDB's, which a write cut
     * short by the limit reaches as EIO: either way the batch is refused. */
    CHECK(rc == SL_EFULL || rc == SL_EIO);
    /* Still full: fails again, cleanly. */
    struct store_msg again = mk("full", NULL, "");
    again.data = payload;
    again.data_len = sizeof payload;
    rc = store_append_batch(s, &again, 1, 3);
    CHECK(rc == SL_EFULL || rc == SL_EIO);
    CHECK_EQ_INT(setrlimit(RLIMIT_FSIZE, &old), 0);
    /* Space is back: the same handle writes again. */
    CHECK_EQ_INT(store_append_batch(s, &again, 1, 4), 0);
    acked++;
    store_close(s);
    signal(SIGXFSZ, SIG_DFL);

    s = open_store(dir, 0, 0, 0);
    struct store_read_info info;
    CHECK_EQ_INT(read_topic(s, "full", 0, 0, &info), 0);
    CHECK_EQ_INT((uint64_t)G.n, acked);
    CHECK_EQ_INT(info.count, acked);
    store_close(s);
    remove_dir(dir);
}

/* ---- concurrency -------------------------------------------------------- */

struct reader_arg {
    struct store *s;
    atomic_int *stop;
    atomic_int reads; /* the writer waits for a read by each before it stops them */
    int errors, max_seen;
};

struct walk {
    uint64_t prev;
    int n, bad, sparse; /* sparse: seqs increase but other topics' sit between */
};

static int check_walk(void *ud, const struct store_view *v)
{
    struct walk *w = ud;
    char want[32];
    /* Data names its seq; when one topic has the store alone, its seqs are
     * consecutive. */
    if (w->prev && (w->sparse ? v->seq <= w->prev : v->seq != w->prev + 1)) w->bad++;
    snprintf(want, sizeof want, "%llu", (unsigned long long)v->seq);
    if (v->data_len != strlen(want) || memcmp(v->data, want, v->data_len)) w->bad++;
    w->prev = v->seq;
    w->n++;
    return 0;
}

static void *reader_main(void *p)
{
    struct reader_arg *a = p;
    for (int i = 0; i < 100000 && !atomic_load(a->stop); i++) {
        struct walk w = {0};
        struct store_read_info info;
        if (store_read(a->s, "conc", 4, 0, 0, check_walk, &w, &info)) a->errors++;
        if (w.bad || (uint64_t)w.n != info.count) a->errors++;
        if (w.n > a->max_seen) a->max_seen = w.n;
        atomic_fetch_add(&a->reads, 1);
    }
    return NULL;
}

/* Readers beside log appends and checkpoints (begun by the sweep), which
 * move the tail into LMDB, growing the map, while they read: no message
 * may be missed or seen twice at that boundary.  Both modes. */
static void test_concurrent_readers(int relaxed)
{
    char *dir = make_dir();
    /* A tiny map so that growth happens while readers are active. */
    struct store *s = open_store(dir, 64 << 10, 0, relaxed);
    atomic_int stop = 0;
    pthread_t th[3];
    struct reader_arg ra[3];
    char text[400][24];
    for (int i = 0; i < 3; i++) {
        ra[i] = (struct reader_arg){.s = s, .stop = &stop};
        CHECK_EQ_INT(pthread_create(&th[i], NULL, reader_main, &ra[i]), 0);
    }
    uint64_t next = store_last_seq(s) + 1;
    for (int b = 0; b < 40; b++) {
        struct store_msg m[10];
        for (int i = 0; i < 10; i++) {
            int k = b * 10 + i;
            snprintf(text[k], sizeof text[k], "%llu", (unsigned long long)next++);
            m[i] = mk("conc", NULL, text[k]);
            m[i].max_count = 300;
        }
        CHECK_EQ_INT(store_append_batch(s, m, 10, 1), 0);
        if (b % 4 == 3) CHECK_EQ_INT(store_sweep(s, 1, 0, NULL), 0);
        usleep(500);
    }
    CHECK_EQ_INT(store_checkpoint(s), 0); /* readers still at work */
    /* On a loaded machine (sanitizers, parallel tests) a reader may not
     * have been scheduled yet: give each time for one read (bounded). */
    for (int w = 0; w < 1000; w++) {
        int ready = 0;
        for (int i = 0; i < 3; i++)
            ready += atomic_load(&ra[i].reads) > 0;
        if (ready == 3) break;
        usleep(10000);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_INT(ra[i].errors, 0);
        CHECK(atomic_load(&ra[i].reads) > 0);
    }
    struct store_stats st;
    CHECK_EQ_INT(store_stats(s, &st), 0);
    CHECK(st.map_grows > 0);
    store_close(s);
    remove_dir(dir);
}

/* ---- the log: a crash before the checkpoint ---------------------------- */

/* Child: append `n` messages "c0".."c<n-1>" to topic "log" one batch each,
 * then die without closing: the messages are in the log, not in LMDB. */
static int crash_child(const char *dir, long n)
{
    struct store *s = NULL;
    struct store_opts o = {0};
    char text[64][8];
    if (store_open(&s, dir, &o, NULL, 0)) return 10;
    for (long i = 0; i < n && i < 64; i++) {
        snprintf(text[i], sizeof text[i], "c%ld", i);
        struct store_msg m = mk("log", NULL, text[i]);
        m.max_count = 50;
        m.flags = i % 2 ? STORE_MSG_JSON : 0; /* the log keeps the mark */
        if (store_append_batch(s, &m, 1, 1000 + i)) return 11;
    }
    _exit(0);
}

static void run_crash_child(const char *dir, long n)
{
    char arg[16];
    snprintf(arg, sizeof arg, "%ld", n);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/proc/self/exe", "store_test", "--crash-child", dir, arg, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    CHECK_EQ_INT(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void test_log_recovery(void)
{
    char *dir = make_dir();
    struct store_read_info info;

    /* Acknowledged, then the process dies: the next open replays them, in
     * order, with their IDs, and a new epoch follows them. */
    run_crash_child(dir, 20);
    struct store *s = open_store(dir, 0, 0, 0);
    CHECK_EQ_INT(read_topic(s, "log", 0, 0, &info), 0);
    CHECK_EQ_INT(G.n, 20);
    CHECK_STR(G.data[0], "c0");
    CHECK_STR(G.data[19], "c19");
    CHECK_EQ_INT(G.time[19], 1019);
    for (int i = 1; i < G.n; i++)
        CHECK(G.seq[i] == G.seq[i - 1] + 1);
    for (int i = 0; i < G.n; i++)
        CHECK_EQ_INT(G.flags[i], i % 2 ? STORE_MSG_JSON : 0);
    CHECK_EQ_INT(store_last_seq(s), G.seq[19]);
    uint64_t last = G.seq[19];
    struct store_msg m = mk("log", NULL, "after");
    CHECK_EQ_INT(store_append_batch(s, &m, 1, 2000), 0);
    CHECK_EQ_INT(m.seq, last + 1);
    store_close(s);

    /* Once replayed the records are stale: a second open adds nothing. */
    s = open_store(dir, 0, 0, 0);
    CHECK_EQ_INT(read_topic(s, "log", 0, 0, &info), 0);
    CHECK_EQ_INT(G.n, 21);
    store_close(s);

    /* A write torn by the crash: the damaged record of the last batch is
     * not replayed (it was never acknowledged), the rest are.  (A damaged
     * record with later batches behind it is damage, not a torn write:
     * recovery_test.) */
    run_crash_child(dir, 10);
    char path[512];
    snprintf(path, sizeof path, "%s/wal", dir);
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    size_t rec = wal_rec_size(3, 0, 2, 0); /* "log", "c0".."c9" */
    if (f) {
        fseek(f, (long)(9 * rec + WAL_REC_HEADER + 3), SEEK_SET); /* c9's data */
        fputc('X', f);
        fclose(f);
    }
    s = open_store(dir, 0, 0, 0);
    CHECK_EQ_INT(read_topic(s, "log", last, 0, &info), 0);
    CHECK_EQ_INT(G.n, 10); /* "after", then c0..c8 of the second run */
    CHECK_STR(G.data[0], "after");
    CHECK_STR(G.data[9], "c8");
    CHECK(!info.gap);
    store_close(s);

    /* Retention holds across the replay: the newest 50. */
    run_crash_child(dir, 64);
    s = open_store(dir, 0, 0, 0);
    CHECK_EQ_INT(read_topic(s, "log", 0, 0, &info), 0);
    CHECK_EQ_INT(G.n, 50);
    CHECK_STR(G.data[49], "c63");
    CHECK_EQ_INT(info.count, 50);
    store_close(s);
    remove_dir(dir);
}

/* Append <prefix>0..<prefix>29 to topic, one batch each, keeping the
 * newest 10; a synchronous checkpoint after index checkpoint_at (-1:
 * none). */
static void append_thirty(struct store *s, const char *topic, char prefix, char text[30][8],
                          uint64_t seqs[30], int checkpoint_at)
{
    for (int i = 0; i < 30; i++) {
        snprintf(text[i], 8, "%c%d", prefix, i);
        struct store_msg m = mk(topic, NULL, text[i]);
        m.max_count = 10;
        CHECK_EQ_INT(store_append_batch(s, &m, 1, 1 + i), 0);
        seqs[i] = m.seq;
        if (i == checkpoint_at) CHECK_EQ_INT(store_checkpoint(s), 0);
    }
}

/* Retention over the tail and LMDB together, read before a checkpoint:
 * the newest N, as if each append had trimmed. */
static void test_tail_retention(void)
{
    char *dir = make_dir();
    struct store *s = open_store(dir, 0, 0, 0);
    struct store_read_info info;
    char text[30][8];
    uint64_t seqs[30];
    append_thirty(s, "ret", 'r', text, seqs, 14); /* r5..r14 into LMDB */
    /* LMDB holds r5..r14, the tail r15..r29: r20..r29 are what stays. */
    CHECK_EQ_INT(read_topic(s, "ret", 0, 0, &info), 0);
    CHECK_EQ_INT(G.n, 10);
    CHECK_STR(G.data[0], "r20");
    CHECK(info.gap);
    CHECK_EQ_INT(info.count, 10);
    CHECK_EQ_INT(info.first_seq, seqs[20]);
    CHECK_EQ_INT(info.last_seq, seqs[29]);
    /* Resuming inside LMDB's hidden part: a gap, then the newest ten. */
    CHECK_EQ_INT(read_topic(s, "ret", seqs[8], 0, &info), 0);
    CHECK(info.gap);
    CHECK_EQ_INT(G.n, 10);
    /* Resuming at the last hidden one: no gap. */
    CHECK_EQ_INT(read_topic(s, "ret", seqs[19], 0, &info), 0);
    CHECK(!info.gap);
    CHECK_EQ_INT(G.n, 10);
    /* With a limit, across the two parts. */
    CHECK_EQ_INT(read_topic(s, "ret", seqs[24], 3, &info), 0);
    CHECK_EQ_INT(G.n, 3);
    CHECK_STR(G.data[0], "r25");
    CHECK(info.more);
    /* The same after the checkpoint. */
    CHECK_EQ_INT(store_checkpoint(s), 0);
    CHECK_EQ_INT(read_topic(s, "ret", 0, 0, &info), 0);
    CHECK_EQ_INT(G.n, 10);
    CHECK_STR(G.data[0], "r20");
    CHECK_EQ_INT(info.first_seq, seqs[20]);
    store_close(s);
    remove_dir(dir);
}

/* Count retention as each message set it: a message keeps its topic's
 * max_count newest as of its append, and a later, larger limit brings back
 * none of what a smaller one dropped, in the tail, in LMDB, in one batch. */
static void expect_data(struct store *s, const char *topic, const char *const *want, int n)
{
    struct store_read_info info;
    CHECK_EQ_INT(read_topic(s, topic, 0, 0, &info), 0);
    CHECK_EQ_INT(G.n, n);
    for (int i = 0; i < n && i < G.n; i++)
        CHECK_STR(G.data[i], want[i]);
}

static void append_limited(struct store *s, const char *topic, const char *data, uint64_t max)
{
    struct store_msg m = mk(topic, NULL, data);
    m.max_count = max;
    CHECK_EQ_INT(store_append_batch(s, &m, 1, 1), 0);
}

static void test_retention_as_each_message_set_it(void)
{
    char *dir = make_dir();
    struct store *s = open_store(dir, 0, 0, 0);
    static const char *const x[] = {"x2", "x3", "x4", "x5", "x6", "x7"};
    static const char *const xd[] = {"x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7"};
    for (int i = 0; i < 8; i++)
        append_limited(s, "x", xd[i], i < 4 ? 2 : 1000);
    expect_data(s, "x", x, 6); /* all in the tail */
    CHECK_EQ_INT(store_checkpoint(s), 0);
    expect_data(s, "x", x, 6); /* all in LMDB */

    /* LMDB holds y2, y3; the tail's y6 (4) drops y2 there, y7 (1000) keeps it dropped. */
    static const char *const y[] = {"y3", "y4", "y5", "y6", "y7"};
    static const char *const yd[] = {"y0", "y1", "y2", "y3", "y4", "y5", "y6", "y7"};
    for (int i = 0; i < 4; i++)
        append_limited(s, "y", yd[i], 2);
    CHECK_EQ_INT(store_checkpoint(s), 0);
    for (int i = 4; i < 8; i++)
        append_limited(s, "y", yd[i], i == 6 ? 4 : 1000);
    expect_data(s, "y", y, 5);
    CHECK_EQ_INT(store_checkpoint(s), 0);
    expect_data(s, "y", y, 5);

    /* One batch: z1 (1) drops z0, z2 (5) does not bring it back. */
    struct store_msg z[3] = {mk("z", NULL, "z0"), mk("z", NULL, "z1"), mk("z", NULL, "z2")};
    z[0].max_count = 5;
    z[1].max_count = 1;
    z[2].max_count = 5;
    CHECK_EQ_INT(store_append_batch(s, z, 3, 1), 0);
    static const char *const zk[] = {"z1", "z2"};
    expect_data(s, "z", zk, 2);
    CHECK_EQ_INT(store_checkpoint(s), 0);
    expect_data(s, "z", zk, 2);
    store_close(s);
    /* And as the log's replay at open rebuilds the tail. */
    s = open_store(dir, 0, 0, 0);
    expect_data(s, "x", x, 6);
    expect_data(s, "y", y, 5);
    expect_data(s, "z", zk, 2);
    store_close(s);
    remove_dir(dir);
}

/* Wait (bounded) until the checkpoint begun by a sweep has committed: the
 * log then holds `left` messages LMDB lacks.  Nothing here reaps it. */
static int wait_log_messages(struct store *s, uint64_t left)
{
    for (int i = 0; i < 5000; i++) {
        struct store_stats st;
        if (store_stats(s, &st)) return 0;
        if (st.log_messages == left) return 1;
        usleep(1000);
    }
    return 0;
}

static int topic_count_cb(void *ud, const struct store_topic_info *t)
{
    struct store_topic_info *want = ud;
    if (t->name_len == want->name_len && !memcmp(t->name, want->name, t->name_len)) *want = *t;
    return 0;
}

/* The checkpoint runs beside appends and its messages leave the tail only
 * when the writer next comes by: in between, LMDB and the tail both hold
 * them.  Reads, topics and stats must count each once, with retention
 * over the whole. */
static void test_checkpoint_window(void)
{
    char *dir = make_dir();
    struct store *s = open_store(dir, 0, 0, 0);
    struct store_read_info info;
    char text[30][8];
    uint64_t seqs[30];
    append_thirty(s, "win", 'w', text, seqs, -1);
    CHECK_EQ_INT(store_sweep(s, 100, 0, NULL), 0); /* seals the log: w0..w29 */
    CHECK(wait_log_messages(s, 0));
    for (int pass = 0; pass < 2; pass++) {
        CHECK_EQ_INT(read_topic(s, "win", 0, 0, &info), 0);
        CHECK_EQ_INT(G.n, 10);
        CHECK_STR(G.data[0], "w20");
        CHECK_STR(G.data[9], "w29");
        CHECK(info.gap);
        CHECK_EQ_INT(info.count, 10);
        CHECK_EQ_INT(info.first_seq, seqs[20]);
        CHECK_EQ_INT(info.last_seq, seqs[29]);
        CHECK_EQ_INT(read_topic(s, "win", seqs[25], 0, &info), 0);
        CHECK_EQ_INT(G.n, 4);
        CHECK(!info.gap);
        struct store_topic_info ti = {.name = "win", .name_len = 3};
        CHECK_EQ_INT(store_topics(s, topic_count_cb, &ti), 0);
        CHECK_EQ_INT(ti.count, 10);
        CHECK_EQ_INT(ti.first_seq, seqs[20]);
        CHECK_EQ_INT(ti.last_seq, seqs[29]);
        struct store_stats st;
        CHECK_EQ_INT(store_stats(s, &st), 0);
        CHECK_EQ_INT(st.messages, 10 + pass); /* and "other" once appended */
        CHECK_EQ_INT(st.log_messages, pass);
        CHECK_EQ_INT(st.checkpoints, pass);
        /* An append reaps the checkpoint: the same view after it. */
        if (pass == 0) {
            struct store_msg m = mk("other", NULL, "x");
            CHECK_EQ_INT(store_append_batch(s, &m, 1, 50), 0);
        }
    }
    store_close(s);
    remove_dir(dir);
}

/* Child: append t0..t9, then u0..u9 after a sweep has sealed the log of
 * t*, whose checkpoint cannot commit: the parent holds LMDB's write lock.
 * With `flip`, one checkpoint first, so that the sealed log is the second
 * file and the chain runs wal2 -> wal.  Then die: both logs hold
 * messages LMDB lacks. */
static int two_logs_child(const char *dir, int flip, int relaxed, int to_parent, int from_parent)
{
    struct store *s = NULL;
    struct store_opts o = {.relaxed = relaxed};
    static char text[2][10][8];
    char c = 0;
    if (store_open(&s, dir, &o, NULL, 0)) return 10;
    if (flip) {
        struct store_msg m = mk("two", NULL, "f");
        if (store_append_batch(s, &m, 1, 1)) return 11;
        if (store_sweep(s, 1, 0, NULL)) return 12;
        if (!wait_log_messages(s, 0)) return 13;
    }
    for (int round = 0; round < 2; round++) {
        if (round == 1) {
            /* Hold here while the parent takes LMDB's write lock. */
            if (write(to_parent, "r", 1) != 1 || read(from_parent, &c, 1) != 1) return 14;
            if (store_sweep(s, 1, 0, NULL)) return 15;
        }
        for (int i = 0; i < 10; i++) {
            snprintf(text[round][i], sizeof text[0][0], "%c%d", round ? 'u' : 't', i);
            struct store_msg m = mk("two", NULL, text[round][i]);
            if (store_append_batch(s, &m, 1, 10 + round * 10 + i)) return 16;
        }
    }
    _exit(0);
}

/* Run two_logs_child on dir and wait for it to die. */
static void crash_with_two_logs(const char *dir, int flip, int relaxed)
{
    int up[2], down[2];
    char c, arg[4][16];
    CHECK_EQ_INT(pipe(up), 0);
    CHECK_EQ_INT(pipe(down), 0);
    snprintf(arg[0], sizeof arg[0], "%d", flip);
    snprintf(arg[1], sizeof arg[1], "%d", relaxed);
    snprintf(arg[2], sizeof arg[2], "%d", up[1]);
    snprintf(arg[3], sizeof arg[3], "%d", down[0]);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/proc/self/exe", "store_test", "--two-logs-child", dir, arg[0], arg[1], arg[2],
              arg[3], (char *)NULL);
        _exit(127);
    }
    CHECK(pid > 0);
    close(up[1]);
    close(down[0]);
    /* LMDB's writer lock is shared between processes: hold it so the
     * child's checkpoint waits, and its messages stay in the logs only. */
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    CHECK_EQ_INT(read(up[0], &c, 1), 1);
    CHECK_EQ_INT(mdb_env_create(&env), 0);
    CHECK_EQ_INT(mdb_env_set_maxdbs(env, 8), 0);
    CHECK_EQ_INT(mdb_env_open(env, dir, MDB_NOTLS, 0644), 0);
    CHECK_EQ_INT(mdb_txn_begin(env, NULL, 0, &txn), 0);
    CHECK_EQ_INT(write(down[1], "g", 1), 1);
    int status = 0;
    CHECK_EQ_INT(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status));
    CHECK_EQ_INT(WEXITSTATUS(status), 0);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    close(up[0]);
    close(down[1]);
}

static void run_two_logs(int flip)
{
    char *dir = make_dir();
    crash_with_two_logs(dir, flip, 0);
    struct store *s = open_store(dir, 0, 0, 0);
    struct store_read_info info;
    CHECK_EQ_INT(read_topic(s, "two", 0, 0, &info), 0);
    CHECK_EQ_INT(G.n, 20 + flip);
    CHECK_STR(G.data[flip], "t0");
    CHECK_STR(G.data[flip + 9], "t9");
    CHECK_STR(G.data[flip + 10], "u0");
    CHECK_STR(G.data[flip + 19], "u9");
    for (int i = 1; i < G.n; i++)
        CHECK(G.seq[i] == G.seq[i - 1] + 1);
    CHECK_EQ_INT(store_last_seq(s), G.seq[G.n - 1]);
    struct store_msg m = mk("two", NULL, "after");
    CHECK_EQ_INT(store_append_batch(s, &m, 1, 100), 0);
    CHECK_EQ_INT(m.seq, G.seq[G.n - 1] + 1);
    store_close(s);
    /* Replayed once: a second open finds the same, and no more. */
    s = open_store(dir, 0, 0, 0);
    CHECK_EQ_INT(read_topic(s, "two", 0, 0, &info), 0);
    CHECK_EQ_INT(G.n, 21 + flip);
    store_close(s);
    remove_dir(dir);
}

/* A crash while a sealed log's checkpoint has not committed: the next
 * open replays the sealed log and then the other, in either file order. */
static void test_two_logs_recovery(void)
{
    run_two_logs(0);
    run_two_logs(1);
}

/* A relaxed store's logs are not flushed per batch, so an OS crash can
 * lose the sealed log's records (t0..t9, in "wal") and keep the next
 * one's (u0..u9, in "wal2"), which then follow a hole.  Zeroing the
 * sealed log's start makes that state.  A durable open refuses it (there
 * it means a restored backup); a relaxed one opens with what precedes the
 * hole (nothing here), and the records after it never come back. */
static void test_relaxed_lost_log(void)
{
    char *dir = make_dir(), path[512], err[256];
    static const char zeros[4096];
    crash_with_two_logs(dir, 0, 1);
    snprintf(path, sizeof path, "%s/wal", dir);
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    if (f) {
        CHECK_EQ_INT(fwrite(zeros, 1, sizeof zeros, f), sizeof zeros);
        fclose(f);
    }
    struct store *s = NULL;
    struct store_opts durable = {0}, relaxed = {.relaxed = 1};
    CHECK(store_open(&s, dir, &durable, err, sizeof err) != 0);
    CHECK(strstr(err, "wal2") != NULL);
    CHECK_EQ_INT(store_open(&s, dir, &relaxed, err, sizeof err), 0);
    struct store_read_info info;
    CHECK_EQ_INT(read_topic(s, "two", 0, 0, &info), 0);
    CHECK_EQ_INT(G.n, 0);
    struct store_msg m = mk("two", NULL, "after");
    CHECK_EQ_INT(store_append_batch(s, &m, 1, 100), 0);
    store_close(s);
    s = open_store(dir, 0, 0, 0);
    CHECK_EQ_INT(read_topic(s, "two", 0, 0, &info), 0);
    CHECK_EQ_INT(G.n, 1);
    CHECK_STR(G.data[0], "after");
    store_close(s);
    remove_dir(dir);
}

/* ---- read-only handle in another process ------------------------------- */

struct topics_seen {
    int n;
    uint64_t ro_count;
};

static int topic_cb(void *ud, const struct store_topic_info *t)
{
    struct topics_seen *ts = ud;
    ts->n++;
    if (t->name_len == 2 && !memcmp(t->name, "ro", 2)) ts->ro_count = t->count;
    return 0;
}

/* Child: open read-only while the parent writes, read until it has seen
 * `want` messages of topic "ro" (bounded in time), exit 0 on success. */
static int ro_child(const char *dir, long want)
{
    struct store *s = NULL;
    struct store_opts o = {.read_only = 1};
    char err[256];
    int rc = store_open(&s, dir, &o, err, sizeof err);
    if (rc) {
        fprintf(stderr, "ro open: %s\n", err);
        return 10;
    }
    struct store_msg m = mk("ro", NULL, "x");
    if (store_append_batch(s, &m, 1, 1) != SL_EROFS) return 11;
    for (int i = 0; i < 2000; i++) {
        struct topics_seen ts = {0};
        struct walk w = {.sparse = 1};
        if (store_topics(s, topic_cb, &ts)) return 12;
        if (store_read(s, "ro", 2, 0, 0, check_walk, &w, NULL)) return 13;
        if (w.bad) return 14;
        if (w.n >= want && (long)ts.ro_count >= want) {
            store_close(s);
            return 0;
        }
        usleep(5000);
    }
    store_close(s);
    return 15;
}

/* This executable's mdb_txn_begin wins over the library's, so a test can
 * act just before a transaction begins: between a read-only handle's env
 * open and its first transaction, where another process growing the map
 * shows as MDB_MAP_RESIZED. */
typedef int txn_begin_fn(MDB_env *, MDB_txn *, unsigned, MDB_txn **);
static txn_begin_fn *real_txn_begin;
static void (*before_next_begin)(void);

int mdb_txn_begin(MDB_env *env, MDB_txn *parent, unsigned flags, MDB_txn **txn)
{
    void (*hook)(void) = before_next_begin;
    before_next_begin = NULL;
    if (hook) hook();
    return real_txn_begin(env, parent, flags, txn);
}

static int grow_pipe[2], grown_pipe[2];

/* Ask the parent to grow the map, and wait until it has. */
static void wait_for_growth(void)
{
    char c = 'r';
    if (write(grow_pipe[1], &c, 1) != 1 || read(grown_pipe[0], &c, 1) != 1) _exit(20);
}

/* `sluice dump` opening while the server grows the map: the read-only
 * open must adopt the new size, not fail. */
static void test_read_only_open_meets_growth(void)
{
    char *dir = make_dir();
    struct store *s = open_store(dir, 64 << 10, 0, 0);
    /* Each "ro" message's data is its seq, as check_walk wants. */
    uint64_t next = store_last_seq(s) + 1;
    char text[61][24];
    snprintf(text[0], sizeof text[0], "%llu", (unsigned long long)next++);
    struct store_msg first = mk("ro", NULL, text[0]);
    CHECK_EQ_INT(store_append_batch(s, &first, 1, 1), 0);
    CHECK_EQ_INT(store_checkpoint(s), 0);
    CHECK(pipe(grow_pipe) == 0 && pipe(grown_pipe) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        struct store *r = NULL;
        struct store_opts o = {.read_only = 1};
        char err[256];
        before_next_begin = wait_for_growth;
        if (store_open(&r, dir, &o, err, sizeof err)) {
            fprintf(stderr, "ro open: %s\n", err);
            _exit(10);
        }
        struct walk w = {.sparse = 1};
        int rc = store_read(r, "ro", 2, 0, 0, check_walk, &w, NULL);
        store_close(r);
        _exit(rc || w.bad || w.n != 61 ? 11 : 0);
    }
    CHECK(pid > 0);
    char c;
    CHECK_EQ_INT(read(grow_pipe[0], &c, 1), 1);
    /* 60 more messages with 2 KiB each of padding: far past the 64 KiB map
     * the child's env opened with, committed before the child begins. */
    char pad[2048];
    memset(pad, 'p', sizeof pad);
    for (int i = 1; i <= 60; i++) {
        snprintf(text[i], sizeof text[i], "%llu", (unsigned long long)next);
        next += 2;
        struct store_msg m[2] = {mk("ro", NULL, text[i]), mk("pad", NULL, "")};
        m[1].data = pad;
        m[1].data_len = sizeof pad;
        CHECK_EQ_INT(store_append_batch(s, m, 2, 1), 0);
    }
    CHECK_EQ_INT(store_checkpoint(s), 0);
    struct store_stats st;
    CHECK_EQ_INT(store_stats(s, &st), 0);
    CHECK(st.map_grows > 0);
    CHECK_EQ_INT(write(grown_pipe[1], &c, 1), 1);
    int status = 0;
    CHECK_EQ_INT(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status));
    CHECK_EQ_INT(WEXITSTATUS(status), 0);
    for (int i = 0; i < 2; i++) {
        close(grow_pipe[i]);
        close(grown_pipe[i]);
    }
    store_close(s);
    remove_dir(dir);
}

static void test_read_only_process(void)
{
    char *dir = make_dir();
    char want[16];
    struct store *s = open_store(dir, 64 << 10, 0, 0);
    /* The empty store can already be opened read-only. */
    uint64_t next = store_last_seq(s) + 1;
    snprintf(want, sizeof want, "%d", 300);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/proc/self/exe", "store_test", "--ro-child", dir, want, (char *)NULL);
        _exit(127);
    }
    CHECK(pid > 0);
    char text[300][24], pad[2048];
    memset(pad, 'p', sizeof pad);
    for (int b = 0; b < 30; b++) {
        /* Ten messages for the child to check, and padding in another topic
         * so that the map grows under the child's feet (MDB_MAP_RESIZED). */
        struct store_msg m[20];
        for (int i = 0; i < 10; i++) {
            snprintf(text[b * 10 + i], sizeof text[0], "%llu", (unsigned long long)next++);
            m[i] = mk("ro", NULL, text[b * 10 + i]);
            m[10 + i] = mk("pad", NULL, "");
            m[10 + i].data = pad;
            m[10 + i].data_len = sizeof pad;
        }
        CHECK_EQ_INT(store_append_batch(s, m, 20, 1), 0);
        /* The writer's periodic call, which begins a checkpoint of the
         * log into LMDB: what a read-only handle sees after its open. */
        CHECK_EQ_INT(store_sweep(s, 1, 1, NULL), 0);
        next += 10;
        usleep(2000);
    }
    /* The last sweeps may have found a checkpoint in flight. */
    CHECK_EQ_INT(store_checkpoint(s), 0);
    struct store_stats st;
    CHECK_EQ_INT(store_stats(s, &st), 0);
    CHECK(st.map_grows > 0);
    int status = 0;
    CHECK_EQ_INT(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status));
    CHECK_EQ_INT(WEXITSTATUS(status), 0);
    store_close(s);

    /* Read-only open of a missing store. */
    struct store *r = NULL;
    struct store_opts o = {.read_only = 1};
    CHECK_EQ_INT(store_open(&r, "/tmp/sluice-no-such-store", &o, NULL, 0), SL_ENOTFOUND);
    remove_dir(dir);
}

/* ---- damage in LMDB's file (issue 25, item 13) ---------------------------- */

/* The offset of the only occurrence of needle in <dir>/data.mdb (-1: none
 * or several). */
static long find_in_data(const char *dir, const char *needle)
{
    char p[512];
    snprintf(p, sizeof p, "%s/data.mdb", dir);
    FILE *f = fopen(p, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)size);
    long at = -1;
    size_t nl = strlen(needle);
    if (buf && fread(buf, 1, (size_t)size, f) == (size_t)size) {
        for (long i = 0; i + (long)nl <= size; i++)
            if (!memcmp(buf + i, needle, nl)) {
                if (at >= 0) {
                    at = -1;
                    break;
                }
                at = i;
            }
    }
    free(buf);
    fclose(f);
    return at;
}

/* The offset of the first occurrence of needle in <dir>/data.mdb (-1:
 * none). */
static long find_first_in_data(const char *dir, const char *needle)
{
    char p[512];
    snprintf(p, sizeof p, "%s/data.mdb", dir);
    FILE *f = fopen(p, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long size = ftell(f), at = -1;
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)size);
    size_t nl = strlen(needle);
    if (buf && fread(buf, 1, (size_t)size, f) == (size_t)size) {
        char *hit = memmem(buf, (size_t)size, needle, nl);
        if (hit) at = hit - buf;
    }
    free(buf);
    fclose(f);
    return at;
}

/* Overwrite n bytes of <dir>/data.mdb at off with byte b. */
static void poke_data(const char *dir, long off, int b, size_t n)
{
    char p[512];
    snprintf(p, sizeof p, "%s/data.mdb", dir);
    FILE *f = fopen(p, "r+b");
    CHECK(f != NULL);
    if (!f) return;
    fseek(f, off, SEEK_SET);
    for (size_t i = 0; i < n; i++)
        fputc(b, f);
    fclose(f);
}

struct damage_seen {
    int n;
    uint64_t seq;
    char what[64];
    char topic[32];
};

static void on_damage(void *ud, const struct store_damage *d)
{
    struct damage_seen *ds = ud;
    ds->n++;
    ds->seq = d->seq;
    snprintf(ds->what, sizeof ds->what, "%s", d->what);
    snprintf(ds->topic, sizeof ds->topic, "%.*s", (int)d->topic_len, d->topic ? d->topic : "");
}

static struct store *open_watched(const char *dir, int read_only, struct damage_seen *ds)
{
    struct store_opts o = {.read_only = read_only, .damage = on_damage, .damage_ud = ds};
    struct store *s = NULL;
    char err[256];
    int rc = store_open(&s, dir, &o, err, sizeof err);
    if (rc) fprintf(stderr, "store_open(%s): %d %s\n", dir, rc, err);
    CHECK_EQ_INT(rc, 0);
    return s;
}

struct verify_seen {
    int n;
    char first[256];
};

static void on_problem(void *ud, const char *problem)
{
    struct verify_seen *vs = ud;
    if (!vs->n++) snprintf(vs->first, sizeof vs->first, "%s", problem);
}

/* store_verify finds no problem (the first one is printed if it does). */
static struct store_verify_report verify_clean(struct store *s)
{
    struct verify_seen vs = {0};
    struct store_verify_report r;
    CHECK_EQ_INT(store_verify(s, on_problem, &vs, &r), 0);
    if (r.problems) fprintf(stderr, "verify: %s\n", vs.first);
    CHECK_EQ_INT(r.problems, 0);
    return r;
}

/* A flipped payload byte: the message is skipped with a gap, reported,
 * counted, never served; the others are served; store_verify finds it. */
static void test_damaged_message(void)
{
    char *dir = make_dir();
    struct store *s = open_store(dir, 0, 0, 0);
    char data[5][32];
    struct store_msg m[5];
    for (int i = 0; i < 5; i++) {
        snprintf(data[i], sizeof data[i], "payload-%d-unique", i);
        m[i] = mk("dmg", "ev", data[i]);
    }
    CHECK_EQ_INT(store_append_batch(s, m, 5, 1000), 0);
    store_close(s); /* checkpointed: the messages are in data.mdb */

    long at = find_in_data(dir, "payload-2-unique");
    CHECK(at > 0);
    poke_data(dir, at + 3, 'X', 1);

    for (int ro = 0; ro < 2; ro++) {
        struct damage_seen ds = {0};
        s = open_watched(dir, ro, &ds);
        struct store_read_info info;
        CHECK_EQ_INT(read_topic(s, "dmg", 0, 0, &info), 0);
        CHECK_EQ_INT(G.n, 4);
        for (int i = 0; i < G.n; i++)
            CHECK(strstr(G.data[i], "payload-2") == NULL);
        CHECK_EQ_INT(info.gap, 1);
        CHECK_EQ_INT(ds.n, 1);
        CHECK_EQ_INT(ds.seq, m[2].seq);
        CHECK(strcmp(ds.topic, "dmg") == 0);
        /* Resuming after the damaged message: no gap, nothing skipped. */
        CHECK_EQ_INT(read_topic(s, "dmg", m[2].seq, 0, &info), 0);
        CHECK_EQ_INT(G.n, 2);
        CHECK_EQ_INT(info.gap, 0);
        /* A multi-topic read skips it too. */
        struct store_topic_ref refs[2] = {{"dmg", 3}, {"none", 4}};
        struct store_read_info infos[2];
        memset(&G, 0, sizeof G);
        CHECK_EQ_INT(store_read_multi(s, refs, 2, 0, 0, collect, &G, infos), 0);
        CHECK_EQ_INT(G.n, 4);
        CHECK_EQ_INT(infos[0].gap, 1);
        struct store_stats st;
        CHECK_EQ_INT(store_stats(s, &st), 0);
        CHECK_EQ_INT(st.damaged, 2);
        struct verify_seen vs = {0};
        struct store_verify_report r;
        CHECK_EQ_INT(store_verify(s, on_problem, &vs, &r), 0);
        CHECK_EQ_INT(r.bad_messages, 1);
        CHECK_EQ_INT(r.messages, 5);
        CHECK(r.problems >= 1);
        CHECK(strstr(vs.first, "dmg") != NULL);
        store_close(s);
    }
    remove_dir(dir);
}

/* A clean store verifies clean. */
static void test_verify_clean(void)
{
    char *dir = make_dir();
    struct store *s = open_store(dir, 0, 0, 0);
    for (int i = 0; i < 50; i++) {
        char d[32];
        snprintf(d, sizeof d, "m%d", i);
        struct store_msg m[2] = {mk(i % 2 ? "a" : "b", NULL, d), mk("c", "e", d)};
        m[0].max_count = 10;
        CHECK_EQ_INT(store_append_batch(s, m, 2, 1000 + i), 0);
    }
    CHECK_EQ_INT(store_checkpoint(s), 0);
    struct store_verify_report r = verify_clean(s);
    CHECK_EQ_INT(r.topics, 3);
    CHECK_EQ_INT(r.messages, 70);
    store_close(s);
    remove_dir(dir);
}

/* A data file cut short: every open refuses it with a message instead of
 * dying of SIGBUS at the first read of a page past the end. */
static void test_truncated_file(void)
{
    char *dir = make_dir();
    struct store *s = open_store(dir, 0, 0, 0);
    static char big[3000];
    memset(big, 'b', sizeof big - 1);
    for (int i = 0; i < 40; i++) {
        struct store_msg m = mk("big", NULL, big);
        CHECK_EQ_INT(store_append_batch(s, &m, 1, 1000), 0);
    }
    store_close(s);
    char p[512];
    struct stat sb;
    snprintf(p, sizeof p, "%s/data.mdb", dir);
    CHECK_EQ_INT(stat(p, &sb), 0);
    CHECK_EQ_INT(truncate(p, sb.st_size / 2 / 4096 * 4096), 0);
    for (int ro = 0; ro < 2; ro++) {
        struct store_opts o = {.read_only = ro};
        char err[512] = "";
        s = NULL;
        CHECK_EQ_INT(store_open(&s, dir, &o, err, sizeof err), SL_ECORRUPT);
        CHECK(strstr(err, "truncated") != NULL);
        CHECK(s == NULL);
    }
    remove_dir(dir);
}

/* A zeroed page under a topic's messages: reads report it and give a gap
 * instead of an empty topic; store_verify says where. */
static void test_zeroed_page(void)
{
    char *dir = make_dir();
    struct store *s = open_store(dir, 0, 0, 0);
    char d[64];
    for (int i = 0; i < 300; i++) {
        snprintf(d, sizeof d, "zeroed-page-%04d-%s", i, "................................");
        struct store_msg m = mk("zp", NULL, d);
        CHECK_EQ_INT(store_append_batch(s, &m, 1, 1000), 0);
    }
    store_close(s);
    long at = find_in_data(dir, "zeroed-page-0150-");
    CHECK(at > 0);
    poke_data(dir, at / 4096 * 4096, 0, 4096);

    struct damage_seen ds = {0};
    s = open_watched(dir, 1, &ds);
    struct store_read_info info;
    int rc = read_topic(s, "zp", 0, 0, &info);
    CHECK_EQ_INT(rc, 0);
    CHECK(G.n < 300);
    CHECK_EQ_INT(info.gap, 1);
    CHECK(ds.n >= 1);
    CHECK(strstr(ds.what, "page") != NULL);
    struct verify_seen vs = {0};
    struct store_verify_report r;
    CHECK_EQ_INT(store_verify(s, on_problem, &vs, &r), 0);
    CHECK(r.problems >= 1);
    CHECK(strstr(vs.first, "msgs") != NULL || strstr(vs.first, "zp") != NULL);
    store_close(s);

    /* Under the topic's last message: a read-write open tells of it at
     * once, and opens. */
    at = find_in_data(dir, "zeroed-page-0299-");
    CHECK(at > 0);
    poke_data(dir, at / 4096 * 4096, 0, 4096);
    memset(&ds, 0, sizeof ds);
    s = open_watched(dir, 0, &ds);
    CHECK_EQ_INT(ds.n, 1);
    CHECK(strstr(ds.what, "at open") != NULL);
    CHECK(strcmp(ds.topic, "zp") == 0);
    store_close(s);
    remove_dir(dir);
}

/* A store of format 1 (no checksums), made with LMDB directly as the
 * sluice before format 2 made it: a read-only open reads it as it is, the
 * first read-write open adds the checksums (version 2), and the messages
 * read the same; a byte flipped after that is caught. */
static void test_format1_store(void)
{
    char *dir = make_dir();
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi meta, epochs, topics, msgs;
    CHECK_EQ_INT(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 8);
    CHECK_EQ_INT(mdb_env_open(env, dir, 0, 0644), 0);
    CHECK_EQ_INT(mdb_txn_begin(env, NULL, 0, &txn), 0);
    mdb_dbi_open(txn, "meta", MDB_CREATE, &meta);
    mdb_dbi_open(txn, "epochs", MDB_CREATE, &epochs);
    mdb_dbi_open(txn, "topics", MDB_CREATE, &topics);
    mdb_dbi_open(txn, "msgs", MDB_CREATE, &msgs);
    uint64_t one = 1, epoch = 12345, last = 5000, next_topic = 1, salt = 99;
    struct {
        const char *k;
        uint64_t *v;
    } metas[] = {
        {"version", &one}, {"last_seq", &last}, {"next_topic", &next_topic}, {"wal_salt", &salt}};
    for (int i = 0; i < 4; i++) {
        MDB_val k = {strlen(metas[i].k), (void *)metas[i].k}, v = {8, metas[i].v};
        CHECK_EQ_INT(mdb_put(txn, meta, &k, &v, 0), 0);
    }
    unsigned char ek[8] = {0, 0, 0, 0, 0, 0, 0, 1};
    MDB_val k = {8, ek}, v = {8, &epoch};
    CHECK_EQ_INT(mdb_put(txn, epochs, &k, &v, 0), 0);
    /* topic_rec: number u32, reserved u32, count, first, last, dropped,
     * max_count, max_age_ms */
    uint64_t rec[7] = {0, 5000, 1, 5000, 0, 0, 0};
    rec[0] = 0; /* number 0 */
    MDB_val tk = {2, "v1"}, tv = {sizeof rec, rec};
    CHECK_EQ_INT(mdb_put(txn, topics, &tk, &tv, 0), 0);
    for (uint64_t seq = 1; seq <= 5000; seq++) {
        unsigned char key[12] = {0};
        for (int b = 0; b < 8; b++)
            key[4 + b] = (unsigned char)(seq >> (56 - 8 * b));
        char val[64];
        int64_t t = 1000 + (int64_t)seq;
        uint16_t ev = seq == 7 ? 2 : 0;
        memcpy(val, &epoch, 8);
        memcpy(val + 8, &t, 8);
        memcpy(val + 16, &ev, 2);
        size_t n = 18;
        if (ev) {
            memcpy(val + 18, "hi", 2);
            n += 2;
        }
        n += (size_t)snprintf(val + n, sizeof val - n, "old-%llu", (unsigned long long)seq);
        MDB_val mk1 = {12, key}, mv = {n, val};
        CHECK_EQ_INT(mdb_put(txn, msgs, &mk1, &mv, 0), 0);
    }
    CHECK_EQ_INT(mdb_txn_commit(txn), 0);
    mdb_env_close(env);

    for (int pass = 0; pass < 3; pass++) {
        /* pass 0: read-only, format 1; 1: read-write (migrates); 2: read-only, format 2 */
        struct damage_seen ds = {0};
        struct store *s = open_watched(dir, pass != 1, &ds);
        struct store_read_info info;
        CHECK_EQ_INT(read_topic(s, "v1", 0, 0, &info), 0);
        CHECK_EQ_INT(G.n, 4096); /* G's size */
        CHECK(strcmp(G.data[0], "old-1") == 0);
        CHECK(strcmp(G.data[6], "old-7") == 0);
        CHECK(strcmp(G.event[6], "hi") == 0);
        CHECK_EQ_INT(G.time[6], 1007);
        CHECK_EQ_INT(read_topic(s, "v1", 4990, 0, &info), 0);
        CHECK_EQ_INT(G.n, pass == 2 ? 11 : 10);
        CHECK(strcmp(G.data[9], "old-5000") == 0);
        CHECK_EQ_INT(ds.n, 0);
        struct store_verify_report r = verify_clean(s);
        CHECK_EQ_INT(r.messages, pass == 2 ? 5001 : 5000);
        if (pass == 2) {
            /* Format 2 below flags_from, format 3 from it. */
            CHECK_EQ_INT(G.flags[0], 0);
            CHECK_STR(G.data[10], "[1]");
            CHECK_EQ_INT(G.flags[10], STORE_MSG_JSON);
        }
        if (pass == 1) {
            struct store_msg m = mk("v1", NULL, "[1]");
            m.flags = STORE_MSG_JSON;
            CHECK_EQ_INT(store_append_batch(s, &m, 1, 9000), 0);
            CHECK_EQ_INT(m.seq, 5001);
        }
        store_close(s);
    }
    /* Version 2 now, with every old message summed. */
    CHECK_EQ_INT(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 8);
    CHECK_EQ_INT(mdb_env_open(env, dir, MDB_RDONLY, 0644), 0);
    CHECK_EQ_INT(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    CHECK_EQ_INT(mdb_dbi_open(txn, "meta", 0, &meta), 0);
    MDB_val vk = {7, "version"}, vv;
    CHECK_EQ_INT(mdb_get(txn, meta, &vk, &vv), 0);
    uint64_t version = 0;
    if (vv.mv_size == 8) memcpy(&version, vv.mv_data, 8);
    CHECK_EQ_INT(version, 3);
    MDB_val ffk = {10, "flags_from"};
    CHECK_EQ_INT(mdb_get(txn, meta, &ffk, &vv), 0);
    uint64_t flags_from = 0;
    if (vv.mv_size == 8) memcpy(&flags_from, vv.mv_data, 8);
    CHECK_EQ_INT(flags_from, 5001); /* LMDB's last seq + 1 at the upgrade */
    MDB_val mgk = {8, "migrated"};
    CHECK_EQ_INT(mdb_get(txn, meta, &mgk, &vv), MDB_NOTFOUND);
    mdb_txn_abort(txn);
    mdb_env_close(env);

    /* Every copy: LMDB's free pages may keep the page of format 1. */
    long at;
    int copies = 0;
    while ((at = find_first_in_data(dir, "old-4321")) > 0 && copies++ < 8)
        poke_data(dir, at + 1, 'X', 1);
    CHECK(copies >= 1);
    struct damage_seen ds = {0};
    struct store *s = open_watched(dir, 1, &ds);
    struct store_read_info info;
    CHECK_EQ_INT(read_topic(s, "v1", 4300, 0, &info), 0);
    CHECK_EQ_INT(G.n, 700); /* 4301..5001 but 4321 */
    CHECK_EQ_INT(info.gap, 1);
    CHECK_EQ_INT(ds.n, 1);
    CHECK_EQ_INT(ds.seq, 4321);
    store_close(s);
    remove_dir(dir);
}

/* The JSON mark (format 3's flags byte): kept from the log's tail into
 * LMDB, across a reopen, for a read-only handle, beside events and keys;
 * an unknown flag is refused for that message alone. */
static void test_json_flag(void)
{
    char *dir = make_dir();
    struct store *s = open_store(dir, 0, 0, 0);
    struct store_msg m[4] = {mk("j", NULL, "plain"), mk("j", NULL, "{\"a\":1}"),
                             mk("j", "ev", "[2]"), mk("j", NULL, "odd")};
    m[1].flags = STORE_MSG_JSON;
    m[2].flags = STORE_MSG_JSON;
    m[2].ikey = "key-1";
    m[2].ikey_len = 5;
    m[3].flags = 4;
    CHECK_EQ_INT(store_append_batch(s, m, 4, 5000), 0);
    CHECK_EQ_INT(m[3].status, SL_EINVAL);
    struct store_read_info info;
    for (int pass = 0; pass < 4; pass++) {
        /* 0: the tail; 1: LMDB; 2: reopened; 3: read-only */
        if (pass == 1) CHECK_EQ_INT(store_checkpoint(s), 0);
        if (pass == 2) {
            store_close(s);
            s = open_store(dir, 0, 0, 0);
        }
        if (pass == 3) {
            store_close(s);
            struct store_opts o = {.read_only = 1};
            char err[256];
            CHECK_EQ_INT(store_open(&s, dir, &o, err, sizeof err), 0);
        }
        CHECK_EQ_INT(read_topic(s, "j", 0, 0, &info), 0);
        CHECK_EQ_INT(G.n, 3);
        CHECK_STR(G.data[0], "plain");
        CHECK_EQ_INT(G.flags[0], 0);
        CHECK_STR(G.data[1], "{\"a\":1}");
        CHECK_EQ_INT(G.flags[1], STORE_MSG_JSON);
        CHECK_STR(G.data[2], "[2]");
        CHECK_STR(G.event[2], "ev");
        CHECK_EQ_INT(G.flags[2], STORE_MSG_JSON);
        verify_clean(s);
    }
    store_close(s);
    remove_dir(dir);
}

/* ---- idempotency keys (issue 25, item 15) ------------------------------ */

static struct store_msg mkk(const char *topic, const char *data, const char *key)
{
    struct store_msg m = mk(topic, NULL, data);
    m.ikey = key;
    m.ikey_len = key ? strlen(key) : 0;
    return m;
}

static struct store *open_window(const char *dir, int relaxed, uint64_t window_ms)
{
    struct store_opts o = {.relaxed = relaxed, .dedup_window_ms = window_ms};
    struct store *s = NULL;
    char err[256];
    int rc = store_open(&s, dir, &o, err, sizeof err);
    if (rc) fprintf(stderr, "store_open(%s): %d %s\n", dir, rc, err);
    CHECK_EQ_INT(rc, 0);
    return s;
}

static int count_topic(struct store *s, const char *topic)
{
    struct store_read_info info;
    CHECK_EQ_INT(read_topic(s, topic, 0, 0, &info), 0);
    return G.n;
}

/* The child: publishes with a key and dies without closing (the message
 * is only in the log); prints its seq. */
static int idem_child(const char *dir)
{
    struct store *s = NULL;
    if (store_open(&s, dir, NULL, NULL, 0)) return 10;
    struct store_msg m = mkk("idem", "crash", "key-crash");
    if (store_append_batch(s, &m, 1, 50000)) return 11;
    printf("%llu\n", (unsigned long long)m.seq);
    fflush(stdout);
    _exit(0);
}

static uint64_t run_idem_child(const char *dir)
{
    char cmd[1200], self[512];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    CHECK(n > 0);
    self[n > 0 ? n : 0] = 0;
    snprintf(cmd, sizeof cmd, "%s --idem-child %s", self, dir);
    FILE *p = popen(cmd, "r");
    unsigned long long seq = 0;
    CHECK(p != NULL);
    if (p) {
        CHECK_EQ_INT(fscanf(p, "%llu", &seq), 1);
        CHECK_EQ_INT(pclose(p), 0);
    }
    return seq;
}

static void test_idempotency(int relaxed)
{
    char *dir = make_dir();
    struct store *s = open_window(dir, relaxed, 0);

    /* A retry within the window: the first ID, nothing stored. */
    struct store_msg a = mkk("idem", "first", "key-1");
    CHECK_EQ_INT(store_append_batch(s, &a, 1, 1000), 0);
    CHECK_EQ_INT(a.duplicate, 0);
    struct store_msg b = mkk("idem", "retry", "key-1");
    CHECK_EQ_INT(store_append_batch(s, &b, 1, 2000), 0);
    CHECK_EQ_INT(b.duplicate, 1);
    CHECK_EQ_INT(b.seq, a.seq);
    CHECK_EQ_INT(b.epoch, a.epoch);
    CHECK_EQ_INT(count_topic(s, "idem"), 1);
    CHECK(strcmp(G.data[0], "first") == 0);

    /* Another topic, the same key: a message of its own.  No key: always. */
    struct store_msg c[3] = {mkk("idem2", "other", "key-1"), mkk("idem", "nokey", NULL),
                             mkk("idem", "nokey", NULL)};
    CHECK_EQ_INT(store_append_batch(s, c, 3, 3000), 0);
    CHECK(!c[0].duplicate && !c[1].duplicate && !c[2].duplicate);
    CHECK(c[0].seq != a.seq && c[1].seq != c[2].seq);

    /* Within one batch: the second and third take the first's ID. */
    struct store_msg d[4] = {mkk("idem", "d0", "key-2"), mkk("idem", "d1", "key-2"),
                             mkk("idem", "d2", "key-3"), mkk("idem", "d3", "key-2")};
    CHECK_EQ_INT(store_append_batch(s, d, 4, 4000), 0);
    CHECK(!d[0].duplicate && d[1].duplicate && !d[2].duplicate && d[3].duplicate);
    CHECK_EQ_INT(d[1].seq, d[0].seq);
    CHECK_EQ_INT(d[3].seq, d[0].seq);
    CHECK_EQ_INT(count_topic(s, "idem"), 5); /* first, nokey x2, d0, d2 */

    /* From LMDB after a checkpoint, and after a restart. */
    CHECK_EQ_INT(store_checkpoint(s), 0);
    struct store_msg e = mkk("idem", "retry2", "key-1");
    CHECK_EQ_INT(store_append_batch(s, &e, 1, 5000), 0);
    CHECK_EQ_INT(e.duplicate, 1);
    CHECK_EQ_INT(e.seq, a.seq);
    store_close(s);
    s = open_window(dir, relaxed, 0);
    struct store_msg f[2] = {mkk("idem", "retry3", "key-1"), mkk("idem", "retry3", "key-3")};
    CHECK_EQ_INT(store_append_batch(s, f, 2, 6000), 0);
    CHECK(f[0].duplicate && f[1].duplicate);
    CHECK_EQ_INT(f[0].seq, a.seq);
    CHECK_EQ_INT(f[1].seq, d[2].seq);
    CHECK_EQ_INT(count_topic(s, "idem"), 5);
    struct store_stats st;
    CHECK_EQ_INT(store_stats(s, &st), 0);
    CHECK_EQ_INT(st.duplicates, 2);

    /* Past the window (10 minutes by default): a new message, which
     * takes the key for the next window. */
    int64_t later = 1000 + STORE_DEDUP_WINDOW_MS + 1;
    struct store_msg g = mkk("idem", "late", "key-1");
    CHECK_EQ_INT(store_append_batch(s, &g, 1, later), 0);
    CHECK_EQ_INT(g.duplicate, 0);
    CHECK(g.seq > a.seq);
    struct store_msg h = mkk("idem", "late-retry", "key-1");
    CHECK_EQ_INT(store_append_batch(s, &h, 1, later + 10), 0);
    CHECK_EQ_INT(h.duplicate, 1);
    CHECK_EQ_INT(h.seq, g.seq);
    /* The sweep drops the keys past the window; the store verifies clean. */
    CHECK_EQ_INT(store_checkpoint(s), 0);
    CHECK_EQ_INT(store_sweep(s, later + STORE_DEDUP_WINDOW_MS, 0, NULL), 0);
    struct store_msg i2 = mkk("idem", "after-sweep", "key-2");
    CHECK_EQ_INT(store_append_batch(s, &i2, 1, later + STORE_DEDUP_WINDOW_MS), 0);
    CHECK_EQ_INT(i2.duplicate, 0);
    verify_clean(s);
    store_close(s);

    /* A batch bigger than a log goes straight to LMDB: deduplicated there. */
    s = open_window(dir, relaxed, 0);
    size_t big_len = WAL_DEFAULT_SIZE + 4096;
    char *big = malloc(big_len + 1);
    CHECK(big != NULL);
    if (big) {
        memset(big, 'b', big_len);
        big[big_len] = 0;
        struct store_msg j = mkk("idem-big", big, "key-big");
        CHECK_EQ_INT(store_append_batch(s, &j, 1, 7000), 0);
        struct store_msg k = mkk("idem-big", big, "key-big");
        CHECK_EQ_INT(store_append_batch(s, &k, 1, 7001), 0);
        CHECK_EQ_INT(k.duplicate, 1);
        CHECK_EQ_INT(k.seq, j.seq);
        free(big);
    }
    /* A bad key length is refused for that message alone. */
    char longkey[STORE_IKEY_MAX + 2];
    memset(longkey, 'k', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = 0;
    struct store_msg bad = mkk("idem", "x", longkey);
    CHECK_EQ_INT(store_append_batch(s, &bad, 1, 8000), 0);
    CHECK_EQ_INT(bad.status, SL_EINVAL);
    store_close(s);
    remove_dir(dir);

    /* A crash before any checkpoint: the key comes back with the log. */
    if (!relaxed) {
        dir = make_dir();
        uint64_t seq = run_idem_child(dir);
        CHECK(seq > 0);
        s = open_window(dir, 0, 0);
        struct store_msg m = mkk("idem", "after-crash", "key-crash");
        CHECK_EQ_INT(store_append_batch(s, &m, 1, 51000), 0);
        CHECK_EQ_INT(m.duplicate, 1);
        CHECK_EQ_INT(m.seq, seq);
        CHECK_EQ_INT(count_topic(s, "idem"), 1);
        store_close(s);
        remove_dir(dir);
    }
}

/* A shorter window (store_opts.dedup_window_ms), through the tail and LMDB. */
static void test_idempotency_window(void)
{
    char *dir = make_dir();
    struct store *s = open_window(dir, 0, 1000);
    struct store_msg a = mkk("w", "a", "k");
    CHECK_EQ_INT(store_append_batch(s, &a, 1, 10000), 0);
    struct store_msg b = mkk("w", "b", "k");
    CHECK_EQ_INT(store_append_batch(s, &b, 1, 11000), 0); /* the window's last ms */
    CHECK_EQ_INT(b.duplicate, 1);
    struct store_msg c = mkk("w", "c", "k");
    CHECK_EQ_INT(store_append_batch(s, &c, 1, 11001), 0);
    CHECK_EQ_INT(c.duplicate, 0);
    CHECK_EQ_INT(store_checkpoint(s), 0);
    struct store_msg d = mkk("w", "d", "k");
    CHECK_EQ_INT(store_append_batch(s, &d, 1, 12001), 0);
    CHECK_EQ_INT(d.duplicate, 1);
    CHECK_EQ_INT(d.seq, c.seq);
    struct store_msg e = mkk("w", "e", "k");
    CHECK_EQ_INT(store_append_batch(s, &e, 1, 12002), 0);
    CHECK_EQ_INT(e.duplicate, 0);
    CHECK_EQ_INT(count_topic(s, "w"), 3);
    store_close(s);
    remove_dir(dir);
}

int main(int argc, char **argv)
{
    real_txn_begin = (txn_begin_fn *)dlsym(RTLD_NEXT, "mdb_txn_begin");
    if (!real_txn_begin) return 2;
    if (argc == 4 && !strcmp(argv[1], "--ro-child")) return ro_child(argv[2], atol(argv[3]));
    if (argc == 4 && !strcmp(argv[1], "--crash-child")) return crash_child(argv[2], atol(argv[3]));
    if (argc == 3 && !strcmp(argv[1], "--idem-child")) return idem_child(argv[2]);
    if (argc == 7 && !strcmp(argv[1], "--two-logs-child"))
        return two_logs_child(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]));
    test_append_read_order();
    test_read_multi();
    test_ids();
    test_restore();
    test_trim();
    test_map_growth();
    test_concurrent_readers(1);
    test_concurrent_readers(0);
    test_read_only_process();
    test_read_only_open_meets_growth();
    test_log_recovery();
    test_tail_retention();
    test_retention_as_each_message_set_it();
    test_checkpoint_window();
    test_two_logs_recovery();
    test_relaxed_lost_log();
    test_disk_full();
    test_damaged_message();
    test_verify_clean();
    test_truncated_file();
    test_zeroed_page();
    test_format1_store();
    test_json_flag();
    test_idempotency(0);
    test_idempotency(1);
    test_idempotency_window();
    return CHECK_DONE();
}
