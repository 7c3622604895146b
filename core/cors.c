/* cors.c: the CORS protocol's checks and header lines (see cors.h).  No
 * allocation but in cors_policy_free's frees; every input is the peer's,
 * checked before it is echoed. */
#include "core/cors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

cors_stats cors_counts;

void cors_get_stats(cors_stats *st)
{
    st->preflights = __atomic_load_n(&cors_counts.preflights, __ATOMIC_RELAXED);
    st->preflight_refused = __atomic_load_n(&cors_counts.preflight_refused, __ATOMIC_RELAXED);
    st->refused = __atomic_load_n(&cors_counts.refused, __ATOMIC_RELAXED);
    st->websocket_refused = __atomic_load_n(&cors_counts.websocket_refused, __ATOMIC_RELAXED);
}

void cors_policy_free(cors_policy *p)
{
    if (!p) return;
    for (int i = 0; i < p->norigins; i++)
        free(p->origins[i]);
    free(p->origins);
    free(p->methods);
    free(p->headers);
    free(p->expose);
    free(p);
}

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static bool eq_nocase(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen) return false;
    for (size_t i = 0; i < alen; i++)
        if (lower(a[i]) != lower(b[i])) return false;
    return true;
}

/* An Origin fit to echo into a header: printable ASCII, no space. */
static bool origin_clean(const char *o, size_t len)
{
    if (len == 0 || len > CORS_ORIGIN_MAX) return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)o[i] <= 0x20 || (unsigned char)o[i] >= 0x7f) return false;
    return true;
}

bool cors_origin_allowed(const cors_policy *p, const char *origin, size_t len)
{
    if (!origin_clean(origin, len)) return false;
    if (p->any_origin) return true;
    for (int i = 0; i < p->norigins; i++)
        if (eq_nocase(p->origins[i], strlen(p->origins[i]), origin, len)) return true;
    return false;
}

bool cors_same_origin(const char *origin, size_t olen, const char *host, size_t hlen)
{
    const char *sep = olen >= 3 ? memmem(origin, olen, "://", 3) : NULL;
    if (!sep || !host || hlen == 0) return false;
    const char *h = sep + 3;
    return eq_nocase(h, olen - (size_t)(h - origin), host, hlen);
}

static size_t slen(const char *s)
{
    return s ? strlen(s) : 0;
}

size_t cors_lines_size(const cors_policy *p)
{
    /* The fixed names and separators take under 400 bytes. */
    return 512 + CORS_ORIGIN_MAX + slen(p->methods) + slen(p->headers) + slen(p->expose);
}

static char *put(char *o, const char *s, size_t n)
{
    memcpy(o, s, n);
    return o + n;
}
#define PUT(o, lit) put((o), (lit), sizeof(lit) - 1)

size_t cors_headers(const cors_policy *p, const char *origin, size_t olen, char *out)
{
    char *o = out;
    o = PUT(o, "Access-Control-Allow-Origin: ");
    if (p->any_origin && !p->credentials) {
        o = PUT(o, "*\r\n");
    } else {
        o = put(o, origin, olen);
        o = PUT(o, "\r\nVary: Origin\r\n");
    }
    if (p->credentials) o = PUT(o, "Access-Control-Allow-Credentials: true\r\n");
    if (p->expose) {
        o = PUT(o, "Access-Control-Expose-Headers: ");
        o = put(o, p->expose, strlen(p->expose));
        o = PUT(o, "\r\n");
    }
    return (size_t)(o - out);
}

/* Whether the comma-separated list (len bytes) holds tok, case ignored. */
static bool list_has(const char *list, size_t len, const char *tok, size_t tlen)
{
    const char *p = list, *end = list + len;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ',')) p++;
        const char *s = p;
        while (p < end && *p != ',') p++;
        const char *e = p;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t')) e--;
        if (e > s && eq_nocase(s, (size_t)(e - s), tok, tlen)) return true;
    }
    return false;
}

/* Header names: RFC 9110 tokens. */
static bool is_token(const char *s, size_t n)
{
    if (n == 0) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              (c && strchr("!#$%&'*+-.^_`|~", c))))
            return false;
    }
    return true;
}

int cors_preflight(const cors_policy *p, const char *origin, size_t olen, const char *method,
                   size_t mlen, const char *req_headers, size_t rhlen, const char *route_methods,
                   char *out)
{
    if (!cors_origin_allowed(p, origin, olen) || !is_token(method, mlen)) return 403;
    const char *allow = p->methods ? p->methods : route_methods ? route_methods : "";
    if (!list_has(allow, strlen(allow), method, mlen)) return 403;
    /* Each requested header: a token, and allowed. */
    const char *q = req_headers, *end = req_headers ? req_headers + rhlen : NULL;
    while (q && q < end) {
        while (q < end && (*q == ' ' || *q == '\t' || *q == ',')) q++;
        const char *s = q;
        while (q < end && *q != ',') q++;
        const char *e = q;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t')) e--;
        if (e == s) continue;
        if (!is_token(s, (size_t)(e - s))) return 403;
        if (!p->any_header && !list_has(p->headers ? p->headers : "", slen(p->headers), s,
                                        (size_t)(e - s)))
            return 403;
    }
    char *o = out + cors_headers(p, origin, olen, out);
    /* The policy's list, or the one method asked for (checked against the
     * route's): a page learns no more than it asked. */
    o = PUT(o, "Access-Control-Allow-Methods: ");
    o = p->methods ? put(o, allow, strlen(allow)) : put(o, method, mlen);
    o = PUT(o, "\r\n");
    /* The requested headers, checked above, or the listed ones. */
    const char *hv = p->any_header ? req_headers : p->headers;
    size_t hl = p->any_header ? rhlen : slen(p->headers);
    if (hv && hl) {
        o = PUT(o, "Access-Control-Allow-Headers: ");
        o = put(o, hv, hl);
        o = PUT(o, "\r\n");
    }
    if (p->max_age >= 0) o += sprintf(o, "Access-Control-Max-Age: %ld\r\n", p->max_age);
    if (!(p->any_origin && !p->credentials)) {
        /* The preflight's answer also depends on what was asked. */
        o = PUT(o, "Vary: Access-Control-Request-Method, Access-Control-Request-Headers\r\n");
    }
    *o = '\0';
    return 204;
}
