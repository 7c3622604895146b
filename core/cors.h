/* cors.h: Cross-Origin Resource Sharing (the Fetch standard's CORS
 * protocol) for every response sluice writes, over HTTP/1.1 or HTTP/2.
 *
 * A policy says which origins may read responses (and, for requests that
 * change things, send them at all), which methods and request headers a
 * preflight allows, whether credentials are allowed, and how long a
 * browser may cache a preflight.  The functions here are pure: they read
 * the request's Origin and preflight headers as bytes and write header
 * lines ("Name: value\r\n") into a caller's buffer, so the HTTP/1.1 head
 * writer (core/conn.c) and the HTTP/2 one (core/h2.c, which reads the head
 * back into HEADERS) share them.  The Lua layer (lua/cors.c) builds the
 * policies from sluice.config{cors=...} and route options, and decides per
 * request; the counters below feed /metrics. */
#ifndef SLUICE_CORE_CORS_H
#define SLUICE_CORE_CORS_H

#include <stdbool.h>
#include <stddef.h>

typedef struct cors_policy {
    bool any_origin; /* origins = "*" */
    int norigins;
    char **origins;   /* "https://app.example.com[:port]", compared ignoring case */
    char *methods;    /* Access-Control-Allow-Methods; NULL: the route's methods */
    bool any_header;  /* headers = "*" (or not set): the requested ones are allowed */
    char *headers;    /* the allowed request headers, ", "-separated, when not any */
    char *expose;     /* Access-Control-Expose-Headers, or NULL */
    bool credentials; /* Access-Control-Allow-Credentials: true (and the origin
                       * echoed, never "*") */
    long max_age;     /* Access-Control-Max-Age seconds; < 0: not sent */
} cors_policy;

/* Frees a policy made with malloc'd strings (NULL is fine). */
void cors_policy_free(cors_policy *p);

/* Room for any answer's header lines: names, an origin of at most
 * CORS_ORIGIN_MAX bytes, the policy's lists (cors_lines_size). */
#define CORS_ORIGIN_MAX 512

/* Whether origin (len bytes, the Origin header's value) may use p: "*"
 * allows any, else it must equal one of the list, ASCII case ignored.
 * An Origin longer than CORS_ORIGIN_MAX or with bytes outside printable
 * ASCII is never allowed ("null" is allowed only when listed). */
bool cors_origin_allowed(const cors_policy *p, const char *origin, size_t len);

/* Whether the Origin names the server the request came to: its host and
 * port (after "scheme://") equal the Host header, ASCII case ignored.
 * Such a request is not cross-origin and no policy refuses it. */
bool cors_same_origin(const char *origin, size_t olen, const char *host, size_t hlen);

/* Bytes cors_headers or cors_preflight may write for p. */
size_t cors_lines_size(const cors_policy *p);

/* The header lines of an actual response to an allowed origin:
 * Access-Control-Allow-Origin ("*", or the origin echoed when the policy
 * lists origins or allows credentials), Access-Control-Allow-Credentials,
 * Access-Control-Expose-Headers, and Vary: Origin when the answer depends
 * on the origin.  out has room for cors_lines_size(p); returns the length
 * written (no NUL). */
size_t cors_headers(const cors_policy *p, const char *origin, size_t olen, char *out);

/* A preflight (OPTIONS with Origin and Access-Control-Request-Method):
 * allowed when the origin is, the requested method is one of `allow`
 * (the policy's methods, else the `route_methods` list the router gives,
 * e.g. "GET, HEAD, POST") and, unless any_header, each requested header
 * (req_headers, the Access-Control-Request-Headers value, may be NULL) is
 * in the policy's list.  Returns 204 with the lines in out (those of
 * cors_headers, then Access-Control-Allow-Methods (the policy's list, or
 * the method asked for), -Headers and -Max-Age), or 403 with nothing
 * written.  out has room for
 * cors_lines_size(p) + route_methods' length + req_headers' length. */
int cors_preflight(const cors_policy *p, const char *origin, size_t olen, const char *method,
                   size_t mlen, const char *req_headers, size_t rhlen, const char *route_methods,
                   char *out);

/* Requests refused by a policy, for /metrics (relaxed atomics, any thread):
 * preflights refused, requests with side effects (not GET/HEAD/OPTIONS)
 * from an origin not allowed, WebSocket handshakes from an origin not
 * allowed (cross-site WebSocket hijacking); and preflights answered. */
typedef struct cors_stats {
    unsigned long long preflights, preflight_refused, refused, websocket_refused;
} cors_stats;
extern cors_stats cors_counts;
void cors_get_stats(cors_stats *st);

#endif
