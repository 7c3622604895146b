/* fuzz_http.c: libFuzzer target for the HTTP glue (core/http.c).
 *
 * Build: clang -fsanitize=fuzzer,address,undefined -I. -I/usr/share/include/llhttp
 *        core/http.c /usr/share/llhttp/{llhttp,api,http}.c tests/fuzz/fuzz_http.c
 *
 * The first input byte picks a chunk size; the rest is fed in chunks the way
 * the connection does it: pause at each request, http_next, go on with the
 * unconsumed bytes.  Checked: consumed counts never exceed what was offered,
 * a parsed request's pointers stay within limits, errors carry a status, and
 * the parser never runs past an error. */
#include "core/http.h"

#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static const http_limits limits = {.max_uri = 256, .max_header = 1024, .max_body = 4096};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    size_t step = (size_t)(data[0] % 16) + 1;
    const char *in = (const char *)data + 1;
    size_t len = size - 1, pos = 0;
    http_parser p;
    http_parser_init(&p, &limits);
    int requests = 0;
    while (pos < len && requests < 1000) {
        size_t n = len - pos < step ? len - pos : step;
        size_t used = 0;
        http_event ev = http_feed(&p, in + pos, n, &used);
        assert(used <= n);
        pos += used;
        if (ev == HTTP_EV_ERROR) {
            assert(p.error_status >= 400 && p.error_status < 600);
            size_t again;
            assert(http_feed(&p, "GET / HTTP/1.1\r\n\r\n", 18, &again) == HTTP_EV_ERROR);
            break;
        }
        if (ev == HTTP_EV_REQUEST) {
            requests++;
            assert(p.req.url_len <= limits.max_uri);
            assert(p.req.body_len <= limits.max_body);
            assert(p.req.path_len <= p.req.url_len);
            for (int i = 0; i < p.req.nheaders; i++) {
                volatile char c = p.req.headers[i].name_len ? p.req.headers[i].name[0] : 0;
                (void)c;
            }
            if (p.req.upgrade) break; /* the rest belongs to another protocol */
            http_next(&p);
        }
        if (ev == HTTP_EV_NEED_MORE && used < n) break; /* cannot happen: all consumed */
    }
    http_parser_free(&p);
    return 0;
}
