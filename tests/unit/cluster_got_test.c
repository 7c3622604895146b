/* cluster_got_test.c: the parser of $JS.API.STREAM.MSG.GET answers
 * (cluster_got_parse, storage/cluster.h), through which a cluster resume
 * reads a topic's first messages.  The vectors are answers nats-server
 * 2.9.10 gave for messages sluice published (an event, a JSON body, an
 * empty one), and its "no message found"; then what must be refused
 * (another subject, malformed fields, other errors), every truncation of
 * an answer, and random corruptions, which must parse or be refused
 * without a fault (this runs under ASan/UBSan in the test suite). */
#include "storage/cluster.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "check.h"

#define SUBJECT "SLUICE.room%2E1"

/* POST /topics/room.1?event=tick.tock, Content-Type: application/json,
 * body {"a":"é"}; then an empty plain one; then a get past the newest. */
static const char with_all[] =
    "{\"type\":\"io.nats.jetstream.api.v1.stream_msg_get_response\",\"message\":{\"subject\":"
    "\"SLUICE.room%2E1\",\"seq\":1,\"hdrs\":\"TkFUUy8xLjANClNsdWljZS1FdmVudDogdGljayUyRXRvY2sNCk"
    "NvbnRlbnQtVHlwZTogYXBwbGljYXRpb24vanNvbg0KDQo=\",\"data\":\"eyJhIjoiw6kifQ==\",\"time\":"
    "\"2026-12-07T08:10:31.098642757Z\"}}";
static const char empty[] =
    "{\"type\":\"io.nats.jetstream.api.v1.stream_msg_get_response\",\"message\":{\"subject\":"
    "\"SLUICE.room%2E1\",\"seq\":2,\"time\":\"2026-12-07T08:10:31.099969802Z\"}}";
static const char not_found[] =
    "{\"type\":\"io.nats.jetstream.api.v1.stream_msg_get_response\",\"error\":{\"code\":404,"
    "\"err_code\":10037,\"description\":\"no message found\"}}";

static int parse(const char *json, struct cluster_got *g)
{
    return cluster_got_parse(json, strlen(json), SUBJECT, g);
}

static void test_vectors(void)
{
    struct cluster_got g;
    CHECK_EQ_INT(parse(with_all, &g), 0);
    CHECK_EQ_INT(g.seq, 1);
    CHECK_EQ_INT(g.time_ms, 1796631031098ll);
    CHECK_EQ_INT(g.flags, STORE_MSG_JSON);
    CHECK_EQ_MEM(g.event, g.event_len, "tick.tock", 9);
    CHECK_EQ_MEM(g.data, g.data_len, "{\"a\":\"\xc3\xa9\"}", 10);
    CHECK_EQ_INT(g.data[g.data_len], '\0');
    cluster_got_free(&g);

    CHECK_EQ_INT(parse(empty, &g), 0);
    CHECK_EQ_INT(g.seq, 2);
    CHECK_EQ_INT(g.time_ms, 1796631031099ll);
    CHECK_EQ_INT(g.flags, 0);
    CHECK_EQ_INT(g.event_len, 0);
    CHECK_EQ_INT(g.data_len, 0);
    CHECK(g.data && g.data[0] == '\0');
    cluster_got_free(&g);

    CHECK_EQ_INT(parse(not_found, &g), SL_ENOTFOUND);
    CHECK(g.data == NULL);
}

static void test_times(void)
{
    static const struct {
        const char *time;
        long long ms; /* -1: refused */
    } v[] = {
        {"1970-01-01T00:00:00Z", 0},
        {"1970-01-01T00:00:01.5Z", 1500},
        {"1970-01-01T00:00:01.000999999Z", 1000},
        {"1970-01-01T01:00:00+01:00", 0},
        {"1970-01-01T00:00:00-00:30", 1800000},
        {"1970-01-01T00:00:00", -1},
        {"1970-01-01T00:00:00.Z", -1},
        {"1970-01-01T00:00:00Zjunk", -1},
        {"1970-01-01 00:00:00Z", -1},
        {"70-01-01T00:00:00Z", -1},
        {"1970-01-01T00:00:00+0100", -1},
        {"", -1},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        char json[256];
        snprintf(json, sizeof json, "{\"message\":{\"subject\":\"%s\",\"seq\":7,\"time\":\"%s\"}}",
                 SUBJECT, v[i].time);
        struct cluster_got g;
        int rc = parse(json, &g);
        CHECK_EQ_INT(rc, v[i].ms < 0 ? SL_EPROTO : 0);
        if (rc == 0) {
            CHECK_EQ_INT(g.time_ms, v[i].ms);
            cluster_got_free(&g);
        }
    }
}

static void test_refused(void)
{
    static const char *const bad[] = {
        "",
        "{",
        "[]",
        "{}",
        "{\"message\":null}",
        "{\"message\":{}}",
        /* another subject than the one asked for */
        "{\"message\":{\"subject\":\"SLUICE.room%2E2\",\"seq\":1,\"time\":\"1970-01-01T00:00:00Z\"}"
        "}",
        "{\"message\":{\"subject\":\"" SUBJECT "\",\"seq\":0,\"time\":\"1970-01-01T00:00:00Z\"}}",
        "{\"message\":{\"subject\":\"" SUBJECT "\",\"seq\":-1,\"time\":\"1970-01-01T00:00:00Z\"}}",
        "{\"message\":{\"subject\":\"" SUBJECT
        "\",\"seq\":\"1\",\"time\":\"1970-01-01T00:00:00Z\"}}",
        "{\"message\":{\"subject\":\"" SUBJECT "\",\"seq\":1}}",
        "{\"message\":{\"subject\":\"" SUBJECT "\",\"seq\":1,\"time\":1}}",
        /* data and headers that are not canonical base64, or not strings */
        "{\"message\":{\"subject\":\"" SUBJECT
        "\",\"seq\":1,\"time\":\"1970-01-01T00:00:00Z\",\"data\":\"abc\"}}",
        "{\"message\":{\"subject\":\"" SUBJECT
        "\",\"seq\":1,\"time\":\"1970-01-01T00:00:00Z\",\"data\":5}}",
        "{\"message\":{\"subject\":\"" SUBJECT
        "\",\"seq\":1,\"time\":\"1970-01-01T00:00:00Z\",\"hdrs\":\"!!!!\"}}",
        "{\"message\":{\"subject\":\"" SUBJECT
        "\",\"seq\":1,\"time\":\"1970-01-01T00:00:00Z\",\"hdrs\":[]}}",
        /* errors other than "not found" */
        "{\"error\":{\"code\":503,\"description\":\"JetStream system temporarily unavailable\"}}",
        "{\"error\":{}}",
        "{\"error\":{\"code\":\"404\"}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct cluster_got g;
        int rc = parse(bad[i], &g);
        CHECK_EQ_INT(rc, SL_EPROTO);
        if (rc != SL_EPROTO) fprintf(stderr, "  accepted: %s\n", bad[i]);
        if (rc == 0) cluster_got_free(&g);
        CHECK(g.data == NULL);
    }
}

/* Headers: the keys sluice writes, found whatever their case or place; an
 * event that is not a token of sluice's form is left out, as the live path
 * does; a header block with no line ends at all is no fault. */
static void test_headers(void)
{
    static const struct {
        const char *b64; /* the header block */
        const char *event;
        unsigned flags;
    } v[] = {
        /* "NATS/1.0\r\ncontent-type: application/json\r\n\r\n" */
        {"TkFUUy8xLjANCmNvbnRlbnQtdHlwZTogYXBwbGljYXRpb24vanNvbg0KDQo=", "", STORE_MSG_JSON},
        /* "NATS/1.0\r\nSluice-Event: a%2\r\n\r\n": a bad escape */
        {"TkFUUy8xLjANClNsdWljZS1FdmVudDogYSUyDQoNCg==", "", 0},
        /* "NATS/1.0\r\nSluice-Event:x" with no line end */
        {"TkFUUy8xLjANClNsdWljZS1FdmVudDp4", "x", 0},
        /* "NATS/1.0" alone */
        {"TkFUUy8xLjA=", "", 0},
        /* "NATS/1.0\r\nContent-Type: text/plain\r\n\r\n" */
        {"TkFUUy8xLjANCkNvbnRlbnQtVHlwZTogdGV4dC9wbGFpbg0KDQo=", "", 0},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        char json[512];
        snprintf(json, sizeof json,
                 "{\"message\":{\"subject\":\"%s\",\"seq\":3,\"time\":\"1970-01-01T00:00:00Z\","
                 "\"hdrs\":\"%s\"}}",
                 SUBJECT, v[i].b64);
        struct cluster_got g;
        CHECK_EQ_INT(parse(json, &g), 0);
        CHECK_EQ_MEM(g.event, g.event_len, v[i].event, strlen(v[i].event));
        CHECK_EQ_INT(g.flags, v[i].flags);
        cluster_got_free(&g);
    }
}

/* Every prefix of an answer, and answers with random bytes changed: parsed
 * or refused, never a fault, never a leak. */
static void test_damaged(void)
{
    size_t n = strlen(with_all);
    char buf[sizeof with_all];
    int parsed = 0;
    for (size_t cut = 0; cut < n; cut++) {
        struct cluster_got g;
        int rc = cluster_got_parse(with_all, cut, SUBJECT, &g);
        CHECK(rc == SL_EPROTO);
        if (rc == 0) cluster_got_free(&g);
    }
    for (int i = 0; i < 20000; i++) {
        memcpy(buf, with_all, n);
        for (int k = 1 + (int)(check_rnd() % 4); k > 0; k--)
            buf[check_rnd() % n] = (char)(check_rnd() & 0xff);
        struct cluster_got g;
        int rc = cluster_got_parse(buf, n, SUBJECT, &g);
        CHECK(rc == 0 || rc == SL_EPROTO || rc == SL_ENOTFOUND);
        if (rc == 0) {
            parsed++;
            CHECK(g.data != NULL && g.data[g.data_len] == '\0');
            CHECK(g.event_len < sizeof g.event);
            cluster_got_free(&g);
        }
    }
    CHECK(parsed > 0); /* a change inside a string's unused bits, say */
}

int main(void)
{
    test_vectors();
    test_times();
    test_refused();
    test_headers();
    test_damaged();
    return CHECK_DONE();
}
