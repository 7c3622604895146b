/* wal_test.c: unit tests of the log's record codec and file
 * (storage/wal.c).  ctest also runs it with SLUICE_WAL_NO_DIRECT=1, so the
 * file's two append paths (O_DIRECT | O_DSYNC, and pwrite + fdatasync) are
 * both checked. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mkdtemp */
#endif
#include "check.h"
#include "storage/wal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_round_trip(void)
{
    unsigned char buf[256];
    struct wal_rec in = {.seq = 42,
                         .epoch = 7,
                         .time_ms = -5,
                         .max_count = 1000,
                         .max_age_ms = 60000,
                         .topic = "room",
                         .topic_len = 4,
                         .event = "ev",
                         .event_len = 2,
                         .data = "hello",
                         .data_len = 5,
                         .ikey = "k-1",
                         .ikey_len = 3,
                         .flags = WAL_REC_BATCH_FIRST};
    size_t n = wal_rec_encode(buf, &in, 99);
    CHECK_EQ_INT(n, wal_rec_size(4, 2, 5, 3));
    CHECK_EQ_INT(n % 8, 0);
    struct wal_rec out;
    CHECK_EQ_INT(wal_rec_decode(buf, n, &out, 99), n);
    CHECK_EQ_INT(out.seq, 42);
    CHECK_EQ_INT(out.epoch, 7);
    CHECK_EQ_INT(out.time_ms, -5);
    CHECK_EQ_INT(out.max_count, 1000);
    CHECK_EQ_INT(out.max_age_ms, 60000);
    CHECK(out.topic_len == 4 && !memcmp(out.topic, "room", 4));
    CHECK(out.event_len == 2 && !memcmp(out.event, "ev", 2));
    CHECK(out.data_len == 5 && !memcmp(out.data, "hello", 5));
    CHECK(out.ikey_len == 3 && !memcmp(out.ikey, "k-1", 3));
    CHECK_EQ_INT(out.flags, WAL_REC_BATCH_FIRST);

    /* No event, no data, no key, no flag. */
    struct wal_rec bare = {.seq = 1, .topic = "t", .topic_len = 1};
    n = wal_rec_encode(buf, &bare, 0);
    CHECK_EQ_INT(wal_rec_decode(buf, n, &out, 0), n);
    CHECK(out.event == NULL && out.event_len == 0 && out.data_len == 0);
    CHECK(out.ikey == NULL && out.ikey_len == 0 && out.flags == 0);
    /* The flag is under the CRC: flipped, the record is refused. */
    buf[58] ^= 1;
    CHECK_EQ_INT(wal_rec_decode(buf, n, &out, 0), 0);
}

static void test_invalid(void)
{
    unsigned char buf[256], zero[256] = {0};
    struct wal_rec in = {.seq = 9,
                         .topic = "abc",
                         .topic_len = 3,
                         .data = "xyz",
                         .data_len = 3,
                         .ikey = "key",
                         .ikey_len = 3,
                         .flags = WAL_REC_BATCH_FIRST};
    struct wal_rec out;
    size_t n = wal_rec_encode(buf, &in, 5);
    CHECK_EQ_INT(wal_rec_decode(zero, sizeof zero, &out, 5), 0); /* preallocated zeroes */
    CHECK_EQ_INT(wal_rec_decode(buf, n, &out, 6), 0);            /* another store's salt */
    CHECK_EQ_INT(wal_rec_decode(buf, n - 1, &out, 5), 0);        /* cut short */
    CHECK_EQ_INT(wal_rec_decode(buf, 10, &out, 5), 0);
    /* Every single flipped byte is caught. */
    for (size_t i = 0; i < n; i++) {
        buf[i] ^= 0x20;
        CHECK_EQ_INT(wal_rec_decode(buf, n, &out, 5), 0);
        buf[i] ^= 0x20;
    }
    CHECK_EQ_INT(wal_rec_decode(buf, n, &out, 5), n);
    /* A length that does not match the fields. */
    unsigned char bad[256];
    memcpy(bad, buf, n);
    uint32_t size = (uint32_t)n + 8;
    memcpy(bad, &size, 4);
    CHECK_EQ_INT(wal_rec_decode(bad, sizeof bad, &out, 5), 0);
}

/* A record of the first log format (56-byte header, no key, no flags),
 * laid out by hand with the CRC that format's encoder wrote. */
static size_t v1_record(unsigned char *out, const struct wal_rec *r, uint32_t crc)
{
    size_t size = (56 + r->topic_len + r->event_len + r->data_len + 7) & ~(size_t)7;
    uint32_t size32 = (uint32_t)size, data32 = (uint32_t)r->data_len;
    uint16_t tl = (uint16_t)r->topic_len, el = (uint16_t)r->event_len;
    memset(out, 0, size);
    memcpy(out, &size32, 4);
    memcpy(out + 4, &crc, 4);
    memcpy(out + 8, &r->seq, 8);
    memcpy(out + 16, &r->epoch, 8);
    memcpy(out + 24, &r->time_ms, 8);
    memcpy(out + 32, &r->max_count, 8);
    memcpy(out + 40, &r->max_age_ms, 8);
    memcpy(out + 48, &tl, 2);
    memcpy(out + 50, &el, 2);
    memcpy(out + 52, &data32, 4);
    memcpy(out + 56, r->topic, r->topic_len);
    if (r->event_len) memcpy(out + 56 + r->topic_len, r->event, r->event_len);
    if (r->data_len) memcpy(out + 56 + r->topic_len + r->event_len, r->data, r->data_len);
    return size;
}

/* Golden records: every CRC implementation must give the same bytes, or
 * a log written before an upgrade or on another CPU would read as empty.
 * ctest runs this twice: with the CPU's crc32 instruction where it has
 * one, and with the table (SLUICE_NO_SSE42=1).  The first format's
 * records (a log left by a crash before the upgrade) still decode, with
 * no key and no flags. */
static void test_golden_crc(void)
{
    unsigned char buf[512];
    char data[301];
    for (int i = 0; i < 301; i++)
        data[i] = (char)(i * 7 + 3);
    struct wal_rec in = {.seq = 123456789,
                         .epoch = 0x1122334455667788ull,
                         .time_ms = 1700000000123,
                         .max_count = 1000,
                         .max_age_ms = 86400000,
                         .topic = "rooms.lobby",
                         .topic_len = 11,
                         .event = "msg",
                         .event_len = 3,
                         .data = data,
                         .data_len = 301};
    struct wal_rec out;
    uint32_t crc;
    /* The first format. */
    size_t n = v1_record(buf, &in, 0xb2cef0cfu);
    CHECK_EQ_INT(n, 376);
    CHECK_EQ_INT(wal_rec_decode(buf, n, &out, 0x0123456789abcdefull), n);
    CHECK_EQ_INT(out.seq, 123456789);
    CHECK(out.data_len == 301 && !memcmp(out.data, data, 301));
    CHECK(out.event_len == 3 && !memcmp(out.event, "msg", 3));
    CHECK(out.ikey_len == 0 && out.flags == 0);
    struct wal_rec bare = {.seq = 1, .topic = "t", .topic_len = 1};
    n = v1_record(buf, &bare, 0xdde51e13u);
    CHECK_EQ_INT(n, 64);
    CHECK_EQ_INT(wal_rec_decode(buf, n, &out, 0), n);
    CHECK(out.seq == 1 && out.topic_len == 1 && out.flags == 0);
    buf[20] ^= 1;
    CHECK_EQ_INT(wal_rec_decode(buf, n, &out, 0), 0);

    /* The second format. */
    in.ikey = "idem-7";
    in.ikey_len = 6;
    in.flags = WAL_REC_BATCH_FIRST;
    n = wal_rec_encode(buf, &in, 0x0123456789abcdefull);
    memcpy(&crc, buf + 4, 4);
    CHECK_EQ_INT(n, 392);
    CHECK_EQ_INT(crc, 0x4777e40au);
    CHECK_EQ_INT(wal_rec_decode(buf, n, &out, 0x0123456789abcdefull), n);
    n = wal_rec_encode(buf, &bare, 0);
    memcpy(&crc, buf + 4, 4);
    CHECK_EQ_INT(n, 72);
    CHECK_EQ_INT(crc, 0xb33ebeceu);
}

/* ---- the file ------------------------------------------------------------ */

#define FILE_SIZE (256 << 10)

/* What the file must hold: [0, pos) exactly as appended; past pos, for
 * each byte, zero or what an earlier round left there. */
static unsigned char want[FILE_SIZE], stale[FILE_SIZE];

static void check_file(struct wal *w, size_t pos)
{
    unsigned char *buf;
    size_t len;
    CHECK_EQ_INT(wal_read(w, &buf, &len), 0);
    CHECK_EQ_INT(len, FILE_SIZE);
    CHECK_EQ_MEM(buf, pos, want, pos);
    size_t odd = 0;
    for (size_t i = pos; i < len; i++)
        if (buf[i] && buf[i] != stale[i]) odd++;
    CHECK_EQ_INT(odd, 0);
    CHECK_EQ_INT(wal_room(w), FILE_SIZE - pos);
    free(buf);
}

/* Append n bytes of a pattern of its own and check the whole file. */
static size_t append(struct wal *w, size_t pos, size_t n, int buffered)
{
    unsigned char *b = malloc(n);
    for (size_t i = 0; i < n; i++)
        b[i] = (unsigned char)(pos + i * 13 + n);
    CHECK_EQ_INT(buffered ? wal_write(w, b, n) : wal_append(w, b, n), 0);
    memcpy(want + pos, b, n);
    free(b);
    check_file(w, pos + n);
    return pos + n;
}

static void test_file(void)
{
    char dir[] = "/tmp/sluice_wal_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    struct wal *w = NULL;
    CHECK_EQ_INT(wal_open(&w, dir, "wal", 0, FILE_SIZE), 0);
    int direct = wal_direct(w);
    if (getenv("SLUICE_WAL_NO_DIRECT")) CHECK_EQ_INT(direct, 0);
    printf("wal_test: appends %s\n", direct ? "O_DIRECT | O_DSYNC" : "pwrite + fdatasync");

    /* Sizes that start and end inside blocks, cross one or several block
     * boundaries, and end on one. */
    static const size_t sizes[] = {24, 40, 4000, 8, 5000, 9000, 1, 2407};
    size_t pos = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        pos = append(w, pos, sizes[i], 0);
    CHECK_EQ_INT(pos % 4096, 0);
    pos = append(w, pos, 3, 0);
    pos = append(w, pos, 500, 0);

    /* Too big for the room left: refused, nothing moves. */
    static unsigned char big[FILE_SIZE];
    CHECK_EQ_INT(wal_append(w, big, wal_room(w) + 1), ENOSPC);
    check_file(w, pos);

    /* A restart: reopen and go on from mid-block, where the direct path
     * must rewrite the block's earlier bytes as they were. */
    wal_close(w);
    CHECK_EQ_INT(wal_open(&w, dir, "wal", 0, FILE_SIZE), 0);
    pos -= 500; /* as if the last record had not been kept: mid-block */
    memcpy(stale + pos, want + pos, 500);
    wal_seek(w, pos);
    check_file(w, pos);
    pos = append(w, pos, 100, 0);
    pos = append(w, pos, 7000, 0);
    /* A batch larger than the staging buffer keeps, then small ones. */
    pos = append(w, pos, 100000, 0);
    pos = append(w, pos, 30, 0);
    pos = append(w, pos, 5000, 0);

    /* A checkpoint's rewind: the new round overwrites the old from 0. */
    memcpy(stale, want, FILE_SIZE);
    wal_rewind(w);
    pos = append(w, 0, 10, 0);
    pos = append(w, pos, 4200, 0);

    /* Unflushed writes (a relaxed store's), then appends again. */
    pos = append(w, pos, 50, 1);
    CHECK_EQ_INT(wal_sync(w), 0);
    CHECK_EQ_INT(wal_direct(w), 0);
    pos = append(w, pos, 60, 0);
    wal_close(w);

    /* Zeroes from an offset to the end, the position left alone (what an
     * open that keeps records does past them). */
    CHECK_EQ_INT(wal_open(&w, dir, "wal", 0, FILE_SIZE), 0);
    wal_seek(w, 100);
    CHECK_EQ_INT(wal_zero(w, 100), 0);
    memset(want + 100, 0, FILE_SIZE - 100);
    memset(stale, 0, sizeof stale);
    check_file(w, 100);
    CHECK_EQ_INT(wal_zero(w, FILE_SIZE), 0);
    wal_close(w);
    CHECK_EQ_INT(wal_sync_dir(dir), 0);
    CHECK(wal_sync_dir("/nonexistent/sluice") != 0);

    char path[64];
    snprintf(path, sizeof path, "%s/wal", dir);
    CHECK_EQ_INT(unlink(path), 0);
    CHECK_EQ_INT(rmdir(dir), 0);
}

int main(void)
{
    test_golden_crc();
    test_round_trip();
    test_invalid();
    test_file();
    return CHECK_DONE();
}
