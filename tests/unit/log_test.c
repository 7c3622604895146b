/* log_test.c: unit tests of the log lines (core/log.c): their text and JSON
 * shapes, the hand-written number formatting against printf's, and the
 * batching of a worker's lines into whole-line writes. */
#include "check.h"
#include "core/log.h"

#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* stderr goes to a pipe between capture_begin and capture_end; CHECK
 * prints to stderr, so checks come after capture_end. */
static int saved_stderr = -1, pipe_r = -1;

static void capture_begin(void)
{
    int p[2];
    if (pipe(p) != 0) abort();
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    saved_stderr = dup(STDERR_FILENO);
    dup2(p[1], STDERR_FILENO);
    close(p[1]);
    pipe_r = p[0];
}

/* What was written since capture_begin, or (still capturing) so far. */
static size_t capture_read(char *buf, size_t cap)
{
    size_t len = 0;
    ssize_t n;
    while (len + 1 < cap && (n = read(pipe_r, buf + len, cap - 1 - len)) > 0)
        len += (size_t)n;
    buf[len] = 0;
    return len;
}

static size_t capture_end(char *buf, size_t cap)
{
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    size_t len = capture_read(buf, cap);
    close(pipe_r);
    return len;
}

static int matches(const char *text, const char *pattern)
{
    regex_t re;
    if (regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB) != 0) return 0;
    int ok = regexec(&re, text, 0, NULL, 0) == 0;
    regfree(&re);
    return ok;
}

static void test_text_line(void)
{
    char out[4096];
    log_setup(LOG_INFO, LOG_TEXT);
    capture_begin();
    LOG_KV(LOG_INFO, "access", LOG_S("method", "GET"), LOG_SN("path", "/topics/abcdef", 7),
           LOG_I("status", 200), LOG_I("neg", -42), LOG_I("min", LLONG_MIN),
           LOG_D("duration_ms", 0.0523), LOG_S("note", "two words"), LOG_S("empty", ""));
    LOG_KV(LOG_DEBUG, "hidden", LOG_I("x", 1));
    capture_end(out, sizeof out);
    CHECK(matches(out, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z info "
                       "access method=GET path=/topics status=200 neg=-42 "
                       "min=-9223372036854775808 duration_ms=0\\.052 note=\"two words\" "
                       "empty=\"\"\n$"));
}

static void test_json_line(void)
{
    char out[4096];
    log_setup(LOG_INFO, LOG_JSON);
    capture_begin();
    LOG_KV(LOG_WARN, "script \"error\"", LOG_S("trace", "a\tb\nc\x01\x7f\\"), LOG_I("n", 7),
           LOG_D("ms", -1.5));
    capture_end(out, sizeof out);
    CHECK(matches(out, "^\\{\"ts\":\"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\\.[0-9]{3}Z\","
                       "\"level\":\"warn\",\"msg\":\"script \\\\\"error\\\\\"\","
                       "\"trace\":\"a\\\\tb\\\\nc\\\\u0001\\\\u007f\\\\\\\\\",\"n\":7,"
                       "\"ms\":-1\\.500\\}\n$"));
    log_setup(LOG_INFO, LOG_TEXT);
}

/* put_fixed3 must print what "%.3f" prints (away from exact ties). */
static void test_decimals(void)
{
    static const double values[] = {0,        0.0004,   0.0006,    0.052345,   1,     9.9996,
                                    123.4567, -2.25,    -0.0004,   -1234.5678, 1e14,  99999.9994,
                                    7e-9,     INFINITY, -INFINITY, NAN,        1e300, -0.0};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        char out[512], want[512];
        snprintf(want, sizeof want, "v=%.3f\n", values[i]);
        log_setup(LOG_INFO, LOG_TEXT);
        capture_begin();
        LOG_KV(LOG_INFO, "m", LOG_D("v", values[i]));
        capture_end(out, sizeof out);
        const char *got = strstr(out, " v=");
        CHECK(got && strcmp(got + 1, want) == 0);
        if (!got || strcmp(got + 1, want) != 0)
            fprintf(stderr, "value %d: got %s want %s", (int)i, got ? got + 1 : "(none)", want);
    }
}

/* A batching thread's info lines wait for log_flush; a warn line takes
 * them out first, in order; a full batch goes out in whole lines. */
static void test_batching(void)
{
    char out[65536];
    log_setup(LOG_INFO, LOG_TEXT);
    capture_begin();
    log_batch_begin();
    LOG_KV(LOG_INFO, "first", LOG_I("n", 1));
    LOG_KV(LOG_INFO, "second", LOG_I("n", 2));
    size_t before_flush = capture_read(out, sizeof out);
    log_flush();
    size_t after_flush = capture_read(out, sizeof out);
    int two_lines = matches(out, "first n=1\n.*second n=2\n$");

    LOG_KV(LOG_INFO, "third", LOG_I("n", 3));
    LOG_KV(LOG_ERROR, "fourth", LOG_I("n", 4));
    capture_read(out, sizeof out);
    int in_order = matches(out, "third n=3\n.*error fourth n=4\n$");

    /* 200 lines of about 60 bytes: more than one batch; every line whole. */
    for (int i = 0; i < 200; i++)
        LOG_KV(LOG_INFO, "many", LOG_I("i", i), LOG_S("pad", "paddingpaddingpaddin"));
    size_t early = capture_read(out, sizeof out);
    log_flush();
    size_t len = early + capture_read(out + early, sizeof out - early);
    capture_end(out + len, sizeof out - len);

    CHECK_EQ_INT(before_flush, 0);
    CHECK(after_flush > 0 && two_lines);
    CHECK(in_order);
    CHECK(early > 0 && out[early - 1] == '\n');
    int lines = 0, next = 0, ok = 1;
    for (char *p = out; (p = strstr(p, "many i=")) != NULL; p++) {
        ok &= atoi(p + 7) == next++;
        lines++;
    }
    CHECK_EQ_INT(lines, 200);
    CHECK(ok);
}

/* One line per interval, the held-back count reported by the next one. */
static void test_limit(void)
{
    log_limit l = LOG_LIMIT_INIT;
    unsigned long long sup = 99;
    CHECK(log_limit_pass_at(&l, 1000, 1.0, &sup));
    CHECK_EQ_INT(sup, 0);
    for (int i = 0; i < 20; i++)
        CHECK(!log_limit_pass_at(&l, 1000 + 50 * i, 1.0, &sup)); /* 1000..1950 */
    CHECK(log_limit_pass_at(&l, 2000, 1.0, &sup));
    CHECK_EQ_INT(sup, 20);
    CHECK(!log_limit_pass_at(&l, 2999, 1.0, &sup));
    CHECK(log_limit_pass_at(&l, 60000, 1.0, &sup));
    CHECK_EQ_INT(sup, 1);

    /* Through the macro: 1,000 calls in a burst write one line. */
    static log_limit burst = LOG_LIMIT_INIT;
    log_setup(LOG_INFO, LOG_TEXT);
    char out[4096];
    capture_begin();
    for (int i = 0; i < 1000; i++)
        LOG_KV_LIMITED(&burst, 60.0, LOG_WARN, "dropped", LOG_I("i", i));
    size_t n = capture_end(out, sizeof out);
    CHECK(n > 0);
    CHECK(matches(out, "^[-0-9T:.]+Z warn dropped i=0\n$"));
    CHECK_EQ_INT(burst.suppressed, 999);
    /* The next line that passes says how many were held back. */
    burst.next_ms = 0;
    capture_begin();
    LOG_KV_LIMITED(&burst, 60.0, LOG_WARN, "dropped", LOG_I("i", 1000));
    capture_end(out, sizeof out);
    CHECK(matches(out, " warn dropped i=1000 suppressed=999\n$"));
}

int main(void)
{
    test_text_line();
    test_json_line();
    test_decimals();
    test_batching();
    test_limit();
    return CHECK_DONE();
}
