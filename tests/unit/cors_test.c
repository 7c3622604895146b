/* cors_test.c: the CORS checks and header lines (core/cors.h): which
 * origins a policy allows, what counts as same-origin, the lines of an
 * answer and of a preflight, refusals, hostile values (control bytes,
 * over-long origins and header lists) and the buffer bounds the header
 * promises (malloc'd to the size, so ASan sees any byte past it). */
#include "core/cors.h"
#include "check.h"

#include <stdlib.h>
#include <string.h>

static char *dup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static cors_policy *policy(bool any, const char *o1, const char *o2, const char *methods,
                           const char *headers, const char *expose, bool cred, long max_age)
{
    cors_policy *p = calloc(1, sizeof(*p));
    p->any_origin = any;
    p->origins = calloc(2, sizeof(char *));
    if (o1) p->origins[p->norigins++] = dup(o1);
    if (o2) p->origins[p->norigins++] = dup(o2);
    p->methods = dup(methods);
    p->any_header = headers == NULL;
    p->headers = dup(headers);
    p->expose = dup(expose);
    p->credentials = cred;
    p->max_age = max_age;
    return p;
}

static char *headers_of(const cors_policy *p, const char *origin)
{
    char *out = malloc(cors_lines_size(p) + 1);
    size_t n = cors_headers(p, origin, strlen(origin), out);
    CHECK(n <= cors_lines_size(p));
    out[n] = '\0';
    return out;
}

static int preflight(const cors_policy *p, const char *origin, const char *method,
                     const char *req_headers, const char *route_methods, char **lines)
{
    size_t rhl = req_headers ? strlen(req_headers) : 0;
    *lines = malloc(cors_lines_size(p) + strlen(route_methods) + rhl + 1);
    return cors_preflight(p, origin, strlen(origin), method, strlen(method), req_headers, rhl,
                          route_methods, *lines);
}

static void test_origins(void)
{
    cors_policy *p = policy(false, "https://app.example.com", "http://localhost:3000", NULL, NULL,
                            NULL, false, -1);
    CHECK(cors_origin_allowed(p, "https://app.example.com", 23));
    CHECK(cors_origin_allowed(p, "HTTPS://APP.example.COM", 23));
    CHECK(!cors_origin_allowed(p, "https://app.example.com.evil", 28));
    CHECK(!cors_origin_allowed(p, "https://app.example.co", 22));
    CHECK(!cors_origin_allowed(p, "null", 4));
    CHECK(!cors_origin_allowed(p, "", 0));
    CHECK(cors_origin_allowed(p, "http://localhost:3000", 21));
    cors_policy *any = policy(true, NULL, NULL, NULL, NULL, NULL, false, -1);
    CHECK(cors_origin_allowed(any, "https://x.test", 14));
    CHECK(cors_origin_allowed(any, "null", 4));
    /* Never echoed, whatever the policy: control bytes, spaces, 8-bit, too long. */
    CHECK(!cors_origin_allowed(any, "https://x\r\nSet-Cookie: a=b", 26));
    CHECK(!cors_origin_allowed(any, "https://x y", 11));
    CHECK(!cors_origin_allowed(any, "https://\xc3\xa9.test", 14));
    char longo[CORS_ORIGIN_MAX + 2];
    memset(longo, 'a', sizeof(longo));
    CHECK(cors_origin_allowed(any, longo, CORS_ORIGIN_MAX));
    CHECK(!cors_origin_allowed(any, longo, CORS_ORIGIN_MAX + 1));
    cors_policy_free(p);
    cors_policy_free(any);
    cors_policy_free(NULL);
}

static void test_same_origin(void)
{
    CHECK(cors_same_origin("http://127.0.0.1:8080", 21, "127.0.0.1:8080", 14));
    CHECK(cors_same_origin("https://Example.com", 19, "example.COM", 11));
    CHECK(!cors_same_origin("http://127.0.0.1:8081", 21, "127.0.0.1:8080", 14));
    CHECK(!cors_same_origin("http://127.0.0.1", 16, "127.0.0.1:8080", 14));
    CHECK(!cors_same_origin("127.0.0.1:8080", 14, "127.0.0.1:8080", 14));
    CHECK(!cors_same_origin("null", 4, "null", 4));
    CHECK(!cors_same_origin("http://x", 8, NULL, 0));
    CHECK(!cors_same_origin("://", 3, "", 0));
}

static void test_lines(void)
{
    cors_policy *any = policy(true, NULL, NULL, NULL, NULL, NULL, false, -1);
    char *h = headers_of(any, "https://x.test");
    CHECK(strcmp(h, "Access-Control-Allow-Origin: *\r\n") == 0);
    free(h);
    cors_policy *cred = policy(true, NULL, NULL, NULL, NULL, "X-Id, X-Seq", true, -1);
    h = headers_of(cred, "https://x.test");
    CHECK(strcmp(h, "Access-Control-Allow-Origin: https://x.test\r\nVary: Origin\r\n"
                    "Access-Control-Allow-Credentials: true\r\n"
                    "Access-Control-Expose-Headers: X-Id, X-Seq\r\n") == 0);
    free(h);
    char *l;
    CHECK_EQ_INT(preflight(any, "https://x.test", "GET", "Last-Event-ID", "GET, POST", &l), 204);
    CHECK(strcmp(l, "Access-Control-Allow-Origin: *\r\nAccess-Control-Allow-Methods: GET\r\n"
                    "Access-Control-Allow-Headers: Last-Event-ID\r\n") == 0);
    free(l);
    /* A method the path has no route for; a header that is not a token. */
    CHECK_EQ_INT(preflight(any, "https://x.test", "PUT", NULL, "GET, POST", &l), 403);
    free(l);
    CHECK_EQ_INT(preflight(any, "https://x.test", "GET", "X-A, X\r\nB", "GET", &l), 403);
    free(l);
    CHECK_EQ_INT(preflight(any, "https://x.test", "G ET", NULL, "G ET", &l), 403);
    free(l);
    cors_policy *list = policy(false, "https://a.test", NULL, "GET, PUT", "Content-Type, X-A", NULL,
                               false, 600);
    CHECK_EQ_INT(preflight(list, "https://a.test", "PUT", "content-type,x-a", "GET", &l), 204);
    CHECK(strcmp(l, "Access-Control-Allow-Origin: https://a.test\r\nVary: Origin\r\n"
                    "Access-Control-Allow-Methods: GET, PUT\r\n"
                    "Access-Control-Allow-Headers: Content-Type, X-A\r\n"
                    "Access-Control-Max-Age: 600\r\n"
                    "Vary: Access-Control-Request-Method, Access-Control-Request-Headers\r\n") == 0);
    free(l);
    CHECK_EQ_INT(preflight(list, "https://a.test", "PUT", "X-B", "GET", &l), 403);
    free(l);
    CHECK_EQ_INT(preflight(list, "https://b.test", "PUT", NULL, "GET", &l), 403);
    free(l);
    CHECK_EQ_INT(preflight(list, "https://a.test", "DELETE", NULL, "DELETE", &l), 403);
    free(l);
    /* The largest answer fits the size the header promises. */
    char big[CORS_ORIGIN_MAX + 1];
    memset(big, 'o', CORS_ORIGIN_MAX);
    big[CORS_ORIGIN_MAX] = '\0';
    char hdrs[2000];
    memset(hdrs, 'h', sizeof(hdrs) - 1);
    hdrs[sizeof(hdrs) - 1] = '\0';
    cors_policy *huge = policy(true, NULL, NULL, NULL, NULL, hdrs, true, 86400 * 365);
    CHECK_EQ_INT(preflight(huge, big, "PROPPATCH", hdrs, "PROPPATCH", &l), 204);
    CHECK(strlen(l) <= cors_lines_size(huge) + strlen("PROPPATCH") + strlen(hdrs));
    free(l);
    h = headers_of(huge, big);
    free(h);
    cors_policy_free(any);
    cors_policy_free(cred);
    cors_policy_free(list);
    cors_policy_free(huge);
}

int main(void)
{
    test_origins();
    test_same_origin();
    test_lines();
    return CHECK_DONE();
}
