/* wal_test.c: unit tests of the log's record codec (storage/wal.c). */
#include "check.h"
#include "storage/wal.h"

#include <string.h>

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
                         .data_len = 5};
    size_t n = wal_rec_encode(buf, &in, 99);
    CHECK_EQ_INT(n, wal_rec_size(4, 2, 5));
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

    /* No event, no data. */
    struct wal_rec bare = {.seq = 1, .topic = "t", .topic_len = 1};
    n = wal_rec_encode(buf, &bare, 0);
    CHECK_EQ_INT(wal_rec_decode(buf, n, &out, 0), n);
    CHECK(out.event == NULL && out.event_len == 0 && out.data_len == 0);
}

static void test_invalid(void)
{
    unsigned char buf[256], zero[256] = {0};
    struct wal_rec in = {.seq = 9, .topic = "abc", .topic_len = 3, .data = "xyz", .data_len = 3};
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

/* Records encoded by the first log format (a byte-at-a-time table CRC):
 * every CRC implementation must give the same bytes, or a log written
 * before an upgrade or on another CPU would read as empty.  ctest runs this
 * twice: with the CPU's crc32 instruction where it has one, and with the
 * table (SLUICE_NO_SSE42=1). */
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
    uint32_t crc;
    size_t n = wal_rec_encode(buf, &in, 0x0123456789abcdefull);
    memcpy(&crc, buf + 4, 4);
    CHECK_EQ_INT(n, 376);
    CHECK_EQ_INT(crc, 0xb2cef0cfu);
    struct wal_rec out;
    CHECK_EQ_INT(wal_rec_decode(buf, n, &out, 0x0123456789abcdefull), n);
    struct wal_rec bare = {.seq = 1, .topic = "t", .topic_len = 1};
    n = wal_rec_encode(buf, &bare, 0);
    memcpy(&crc, buf + 4, 4);
    CHECK_EQ_INT(n, 64);
    CHECK_EQ_INT(crc, 0xdde51e13u);
}

int main(void)
{
    test_golden_crc();
    test_round_trip();
    test_invalid();
    return CHECK_DONE();
}
