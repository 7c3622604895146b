/* http_test.c: the HTTP glue fed whole, split byte by byte, pipelined, and
 * pushed past every limit. */
#include "check.h"
#include "core/http.h"

#include <stdlib.h>

static const http_limits limits = {.max_uri = 64, .max_header = 256, .max_body = 32};

/* Feeds `in` in chunks of `step` bytes (0: all at once) until one event other
 * than NEED_MORE; returns it and how many bytes of `in` were used. */
static http_event feed(http_parser *p, const char *in, size_t len, size_t step, size_t *used)
{
    size_t pos = 0;
    http_event ev = HTTP_EV_NEED_MORE;
    while (pos < len) {
        size_t n = step ? (len - pos < step ? len - pos : step) : len - pos;
        size_t c = 0;
        ev = http_feed(p, in + pos, n, &c);
        pos += c;
        if (ev != HTTP_EV_NEED_MORE) break;
    }
    *used = pos;
    return ev;
}

static void test_simple(size_t step)
{
    http_parser p;
    http_parser_init(&p, &limits);
    const char *in = "GET /a/b?x=1&y=%20z HTTP/1.1\r\nHost: h\r\nX-Long: one two\r\n\r\n";
    size_t used;
    http_event ev = feed(&p, in, strlen(in), step, &used);
    CHECK_EQ_INT(ev, HTTP_EV_REQUEST);
    CHECK_EQ_INT(used, strlen(in));
    CHECK_STR(p.req.method, "GET");
    CHECK_EQ_MEM(p.req.path, p.req.path_len, "/a/b", 4);
    CHECK_EQ_MEM(p.req.query, p.req.query_len, "x=1&y=%20z", 10);
    CHECK_EQ_INT(p.req.nheaders, 2);
    size_t vl;
    const char *v = http_header_get(&p.req, "x-long", &vl);
    CHECK(v != NULL);
    if (v) CHECK_EQ_MEM(v, vl, "one two", 7);
    CHECK(p.req.keep_alive);
    CHECK(!p.req.upgrade);
    CHECK_EQ_INT(p.req.body_len, 0);
    http_parser_free(&p);
}

static void test_pipelined(size_t step)
{
    http_parser p;
    http_parser_init(&p, &limits);
    const char *in =
        "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
        "POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
        "POST /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        "GET /4 HTTP/1.0\r\n\r\n";
    size_t len = strlen(in), pos = 0, used;
    const char *paths[] = {"/1", "/2", "/3", "/4"};
    const char *bodies[] = {"", "hello", "abcde", ""};
    for (int i = 0; i < 4; i++) {
        http_event ev = feed(&p, in + pos, len - pos, step, &used);
        CHECK_EQ_INT(ev, HTTP_EV_REQUEST);
        pos += used;
        CHECK_EQ_MEM(p.req.path, p.req.path_len, paths[i], strlen(paths[i]));
        CHECK_EQ_MEM(p.req.body ? p.req.body : "", p.req.body_len, bodies[i], strlen(bodies[i]));
        if (i == 3) CHECK(!p.req.keep_alive);
        http_next(&p);
    }
    CHECK_EQ_INT(pos, len);
    http_parser_free(&p);
}

static void test_limit(const char *in, int status, size_t step)
{
    http_parser p;
    http_parser_init(&p, &limits);
    size_t used;
    http_event ev = feed(&p, in, strlen(in), step, &used);
    CHECK_EQ_INT(ev, HTTP_EV_ERROR);
    CHECK_EQ_INT(p.error_status, status);
    /* Once failed, it stays failed. */
    size_t c;
    CHECK_EQ_INT(http_feed(&p, "GET / HTTP/1.1\r\n\r\n", 18, &c), HTTP_EV_ERROR);
    http_parser_free(&p);
}

static void test_limits(size_t step)
{
    char big[1024];
    snprintf(big, sizeof(big), "GET /%0100d HTTP/1.1\r\n\r\n", 0);
    test_limit(big, 414, step);
    snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nX: %0300d\r\n\r\n", 0);
    test_limit(big, 431, step);
    test_limit("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 33\r\n\r\n", 413, step);
    test_limit("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
               "20\r\n01234567890123456789012345678901\r\n1\r\nx\r\n0\r\n\r\n",
               413, step);
    test_limit("BREW / HTTP/1.1\r\n\r\n", 400, step);
    test_limit("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, step);
    test_limit("GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400, step);
    test_limit("POST / HTTP/1.1\r\nHost: h\r\nExpect: something\r\nContent-Length: 1\r\n\r\nx",
               417, step);
    /* Smuggling shapes llhttp refuses by default. */
    test_limit("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
               step);
    /* Many small headers: the count limit. */
    char many[4096] = "GET / HTTP/1.1\r\n";
    for (int i = 0; i < HTTP_MAX_HEADERS + 1; i++)
        strcat(many, "a:\r\n");
    strcat(many, "\r\n");
    http_limits wide = limits;
    wide.max_header = 100000;
    http_parser p;
    http_parser_init(&p, &wide);
    size_t used;
    CHECK_EQ_INT(feed(&p, many, strlen(many), step, &used), HTTP_EV_ERROR);
    CHECK_EQ_INT(p.error_status, 431);
    http_parser_free(&p);

    /* Exactly the limit, twice on one parser: the header arrays grow past
     * their first size and are kept, and every header still reads back. */
    char full[8192] = "GET / HTTP/1.1\r\nHost: h\r\n";
    for (int i = 1; i < HTTP_MAX_HEADERS; i++)
        snprintf(full + strlen(full), sizeof full - strlen(full), "h%d: v%d\r\n", i, i);
    strcat(full, "\r\n");
    http_parser_init(&p, &wide);
    for (int round = 0; round < 2; round++) {
        CHECK_EQ_INT(feed(&p, full, strlen(full), step, &used), HTTP_EV_REQUEST);
        CHECK_EQ_INT(p.req.nheaders, HTTP_MAX_HEADERS);
        for (int i = 1; i < HTTP_MAX_HEADERS; i += 33) {
            char name[16], want[16];
            snprintf(name, sizeof name, "h%d", i);
            snprintf(want, sizeof want, "v%d", i);
            size_t vl = 0;
            const char *v = http_header_get(&p.req, name, &vl);
            CHECK(v && vl == strlen(want) && memcmp(v, want, vl) == 0);
        }
        http_next(&p);
    }
    http_parser_free(&p);
}

static void test_expect_continue(size_t step)
{
    http_parser p;
    http_parser_init(&p, &limits);
    const char *head =
        "PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
    size_t used;
    CHECK_EQ_INT(feed(&p, head, strlen(head), step, &used), HTTP_EV_CONTINUE);
    CHECK_EQ_INT(used, strlen(head));
    CHECK(p.req.expect_continue);
    CHECK_EQ_INT(feed(&p, "body", 4, step, &used), HTTP_EV_REQUEST);
    CHECK_EQ_MEM(p.req.body, p.req.body_len, "body", 4);
    http_parser_free(&p);
    /* Too large with Expect: refused before any 100. */
    test_limit("PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n",
               413, step);
}

static void test_upgrade(size_t step)
{
    http_parser p;
    http_parser_init(&p, &limits);
    const char *in =
        "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x80";
    size_t used;
    CHECK_EQ_INT(feed(&p, in, strlen(in), step, &used), HTTP_EV_REQUEST);
    CHECK(p.req.upgrade);
    CHECK_EQ_INT(used, strlen(in) - 2); /* the frame bytes are left for WebSocket */
    http_parser_free(&p);
}

/* Feeds `in` whole and expects one request; the caller checks p->req. */
static void expect_request(http_parser *p, const http_limits *lim, const char *in, size_t step)
{
    http_parser_init(p, lim);
    size_t used;
    CHECK_EQ_INT(feed(p, in, strlen(in), step, &used), HTTP_EV_REQUEST);
    CHECK_EQ_INT(used, strlen(in));
}

/* RFC 9112 3.2: Host is required in HTTP/1.1, optional in 1.0, never twice. */
static void test_host(size_t step)
{
    test_limit("GET / HTTP/1.1\r\n\r\n", 400, step);
    test_limit("GET / HTTP/1.1\r\nX: y\r\n\r\n", 400, step);
    test_limit("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, step);
    test_limit("GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n", 400, step);
    http_parser p;
    expect_request(&p, &limits, "GET / HTTP/1.0\r\n\r\n", step);
    http_parser_free(&p);
    expect_request(&p, &limits, "GET / HTTP/1.1\r\nhOsT: x\r\n\r\n", step);
    http_parser_free(&p);
    /* The reason names the missing header. */
    http_parser_init(&p, &limits);
    size_t used;
    feed(&p, "GET / HTTP/1.1\r\n\r\n", 18, step, &used);
    CHECK_STR(p.error_reason, "missing Host header");
    http_parser_free(&p);
}

/* Absolute-form targets: the path and query come from them. */
static void test_absolute_form(size_t step)
{
    static const struct {
        const char *in, *path, *query;
    } cases[] = {
        {"GET http://example.com:8080/topics/x?since=1 HTTP/1.1\r\nHost: e\r\n\r\n",
         "/topics/x", "since=1"},
        {"GET HTTPS://example.com/a/b HTTP/1.1\r\nHost: e\r\n\r\n", "/a/b", NULL},
        {"GET http://example.com HTTP/1.1\r\nHost: e\r\n\r\n", "/", NULL},
        {"GET http://example.com?x=1 HTTP/1.1\r\nHost: e\r\n\r\n", "/", "x=1"},
        {"GET /plain?q HTTP/1.1\r\nHost: e\r\n\r\n", "/plain", "q"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        http_parser p;
        expect_request(&p, &limits, cases[i].in, step);
        CHECK_EQ_MEM(p.req.path, p.req.path_len, cases[i].path, strlen(cases[i].path));
        if (cases[i].query)
            CHECK_EQ_MEM(p.req.query, p.req.query_len, cases[i].query, strlen(cases[i].query));
        else
            CHECK(p.req.query == NULL);
        http_parser_free(&p);
    }
    test_limit("GET http:///x HTTP/1.1\r\nHost: e\r\n\r\n", 400, step);
}

/* Any major version but 1 is not this protocol: 505. */
static void test_version(size_t step)
{
    test_limit("GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505, step);
    test_limit("GET / HTTP/3.0\r\nHost: h\r\n\r\n", 505, step);
    test_limit("GET / HTTP/0.9\r\nHost: h\r\n\r\n", 505, step);
    test_limit("GET / HTTP/x.1\r\nHost: h\r\n\r\n", 400, step);
    test_limit("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, step);
}

/* Chunk extensions count toward the header limit; trailers too, and they
 * never move the request's url and headers (ASan checks the reads). */
static void test_chunk_extensions_and_trailers(size_t step)
{
    char in[8192];
    char ext[400];
    memset(ext, 'e', sizeof ext - 1);
    ext[sizeof ext - 1] = '\0';
    snprintf(in, sizeof in,
             "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;%s\r\nx\r\n0\r\n\r\n",
             ext);
    test_limit(in, 431, step);
    snprintf(in, sizeof in,
             "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;a=%s\r\nx\r\n0\r\n\r\n",
             ext);
    test_limit(in, 431, step);
    /* Many small ones over many chunks add up. */
    size_t o = (size_t)snprintf(in, sizeof in,
                                "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 30; i++)
        o += (size_t)snprintf(in + o, sizeof in - o, "1;ab=cd\r\nx\r\n1;ef\r\ny\r\n");
    snprintf(in + o, sizeof in - o, "0\r\n\r\n");
    http_limits big_body = limits;
    big_body.max_body = 1000;
    http_parser p;
    http_parser_init(&p, &big_body);
    size_t used;
    CHECK_EQ_INT(feed(&p, in, strlen(in), step, &used), HTTP_EV_ERROR);
    CHECK_EQ_INT(p.error_status, 431);
    http_parser_free(&p);
    /* A few short ones pass. */
    expect_request(&p, &limits,
                   "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                   "3;a=b\r\nabc\r\n0;c\r\n\r\n",
                   step);
    CHECK_EQ_MEM(p.req.body, p.req.body_len, "abc", 3);
    http_parser_free(&p);

    /* Trailers larger than the arena's room: the url and headers stay. */
    http_limits wide = limits;
    wide.max_header = 100000;
    o = (size_t)snprintf(in, sizeof in,
                         "POST /path?q=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "3\r\nabc\r\n0\r\n");
    for (int i = 0; i < 40; i++)
        o += (size_t)snprintf(in + o, sizeof in - o, "Trailer-%d: %0100d\r\n", i, i);
    snprintf(in + o, sizeof in - o, "\r\n");
    expect_request(&p, &wide, in, step);
    CHECK_EQ_MEM(p.req.path, p.req.path_len, "/path", 5);
    CHECK_EQ_MEM(p.req.query, p.req.query_len, "q=1", 3);
    CHECK_EQ_INT(p.req.nheaders, 2);
    size_t vl = 0;
    const char *v = http_header_get(&p.req, "host", &vl);
    CHECK(v && vl == 1 && v[0] == 'h');
    CHECK_EQ_MEM(p.req.body, p.req.body_len, "abc", 3);
    http_parser_free(&p);
    /* Trailers count toward the header limit. */
    test_limit("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
               "1\r\nx\r\n0\r\nT: "
               "0123456789012345678901234567890123456789012345678901234567890123456789"
               "0123456789012345678901234567890123456789012345678901234567890123456789"
               "0123456789012345678901234567890123456789012345678901234567890123456789"
               "0123456789012345678901234567890123456789012345678901234567890123456789\r\n\r\n",
               431, step);
}

static void test_helpers(void)
{
    char out[64];
    size_t n = http_pct_decode("a%20b+c%2x%", 11, out, true);
    CHECK_EQ_MEM(out, n, "a b c%2x%", 9);
    n = http_pct_decode("a+b", 3, out, false);
    CHECK_EQ_MEM(out, n, "a+b", 3);
    char d[30];
    CHECK_EQ_INT(http_date(784111777, d), 29);
    CHECK_STR(d, "Sun, 06 Nov 1994 08:49:37 GMT");
    CHECK_STR(http_status_text(431), "Request Header Fields Too Large");
    const char *q = "a=1&&b&c=x=y";
    size_t pos = 0, kl, vl;
    const char *k, *v;
    CHECK(http_query_next(q, strlen(q), &pos, &k, &kl, &v, &vl));
    CHECK_EQ_MEM(k, kl, "a", 1);
    CHECK_EQ_MEM(v, vl, "1", 1);
    CHECK(http_query_next(q, strlen(q), &pos, &k, &kl, &v, &vl));
    CHECK_EQ_MEM(k, kl, "b", 1);
    CHECK_EQ_INT(vl, 0);
    CHECK(http_query_next(q, strlen(q), &pos, &k, &kl, &v, &vl));
    CHECK_EQ_MEM(k, kl, "c", 1);
    CHECK_EQ_MEM(v, vl, "x=y", 3);
    CHECK(!http_query_next(q, strlen(q), &pos, &k, &kl, &v, &vl));
}

int main(void)
{
    size_t steps[] = {0, 1, 2, 3, 7};
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        test_simple(steps[i]);
        test_pipelined(steps[i]);
        test_limits(steps[i]);
        test_expect_continue(steps[i]);
        test_upgrade(steps[i]);
        test_host(steps[i]);
        test_absolute_form(steps[i]);
        test_version(steps[i]);
        test_chunk_extensions_and_trailers(steps[i]);
    }
    test_helpers();
    return CHECK_DONE();
}
