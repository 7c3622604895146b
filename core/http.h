/* http.h: the HTTP/1.1 request glue around llhttp, and response heads.
 *
 * A pure state machine: http_feed() takes bytes the caller read and reports
 * events; it never touches a socket.  URL and header text are copied into one
 * arena owned by the parser (llhttp hands them over in pieces that may span
 * reads), the body into a second buffer.  Limits are checked as bytes
 * arrive, so an oversized request is refused before it is buffered, with the
 * status SPEC.md names (414, 431, 413; 400 for malformed input).  Chunk
 * extensions and trailer fields are counted against the header limit and
 * dropped.  RFC 9112's rules for the head are applied here: an HTTP/1.1
 * request needs exactly one Host (400), a major version other than 1 gets
 * 505, and an absolute-form target ("http://host/path?q") gives its path
 * and query.
 *
 * One request at a time: the parser pauses after each complete request, the
 * caller answers it, calls http_next() and feeds the remaining bytes, so
 * pipelined requests are answered in order. */
#ifndef SLUICE_HTTP_H
#define SLUICE_HTTP_H

#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

typedef struct http_limits {
    size_t max_uri;    /* request-target bytes; over it: 414 */
    size_t max_header; /* request line + header block bytes; over it: 431 */
    size_t max_body;   /* decoded body bytes; over it: 413 */
} http_limits;

#define HTTP_MAX_HEADERS 100 /* header lines per request; over it: 431 */

typedef struct http_header {
    const char *name; /* not NUL-terminated; valid until http_next() */
    const char *value;
    uint32_t name_len, value_len;
} http_header;

typedef struct http_request {
    const char *method; /* "GET", ... NUL-terminated, static */
    int method_id;      /* llhttp_method_t */
    uint8_t version_major, version_minor;
    bool keep_alive;      /* as llhttp decides from version and Connection */
    bool upgrade;         /* Connection: upgrade with an Upgrade header */
    bool expect_continue; /* Expect: 100-continue with a body to come */
    const char *url;      /* request-target, NUL-terminated */
    size_t url_len;
    const char *path; /* url's path, up to '?' (not NUL-terminated; "/" for
                       * an absolute form without one) */
    size_t path_len;
    const char *query; /* after '?', or NULL */
    size_t query_len;
    http_header *headers;
    int nheaders;
    char *body; /* NUL-terminated for convenience; NULL when empty */
    size_t body_len;
} http_request;

typedef enum http_event {
    HTTP_EV_NEED_MORE, /* all bytes consumed; no complete request yet */
    HTTP_EV_CONTINUE,  /* headers done, Expect: 100-continue and a body follows */
    HTTP_EV_REQUEST,   /* a complete request is in p->req */
    HTTP_EV_ERROR      /* see p->error_status and p->error_reason */
} http_event;

typedef struct http_parser {
    llhttp_t llhttp;
    http_limits limits;
    http_request req;
    char *arena; /* url and header text */
    size_t arena_len, arena_cap;
    /* Per header: name off/len, value off/len in the arena; and the header
     * views built from them.  Both grow with the request (most have a few
     * headers), up to HTTP_MAX_HEADERS, and are kept for the next one. */
    uint32_t (*hdr_off)[4];
    http_header *headers;
    int nheaders, hdr_cap;
    bool field_open, value_open; /* a header name/value spans callbacks */
    bool in_trailers;            /* past the head: trailers are counted, not kept */
    int trailer_lines;
    http_event pause_event;      /* what the current pause reports */
    size_t header_bytes;         /* request line, headers, chunk extensions, trailers */
    size_t url_bytes;
    char *body;
    size_t body_len, body_cap;
    bool started; /* bytes of the current request have arrived */
    bool paused;
    int error_status;
    const char *error_reason;
} http_parser;

/* Initialises `p` (owned by the caller) with the given limits. */
void http_parser_init(http_parser *p, const http_limits *limits);

/* Frees the arena and body; `p` may be initialised again. */
void http_parser_free(http_parser *p);

/* Initialises `p` again for a new connection, at any point of its use,
 * keeping the buffers it has grown (a pool of parsers saves their
 * allocation per request). */
void http_parser_reuse(http_parser *p, const http_limits *limits);

/* Feeds `len` bytes.  Sets *consumed to how many were used; the rest must be
 * fed again (after http_next() for HTTP_EV_REQUEST, or as is for
 * HTTP_EV_CONTINUE).  On HTTP_EV_REQUEST the request is in p->req until
 * http_next().  After HTTP_EV_ERROR the parser accepts nothing more: answer
 * p->error_status and close the connection.  An upgrade request's remaining
 * bytes belong to the new protocol: do not call http_next() then. */
http_event http_feed(http_parser *p, const char *data, size_t len, size_t *consumed);

/* Releases the current request and prepares for the next one. */
void http_next(http_parser *p);

/* True when the bytes of a request have started arriving (for the slow
 * header timeout versus the idle keep-alive timeout). */
static inline bool http_in_request(const http_parser *p)
{
    return p->started;
}

/* The value of the first header named `name` (case-insensitive), or NULL.
 * *len receives its length. */
const char *http_header_get(const http_request *req, const char *name, size_t *len);

/* Reason phrase for a status code ("OK", "Not Found"...), "Unknown" if none. */
const char *http_status_text(int status);

/* Writes the IMF-fixdate for `t` ("Sun, 06 Nov 1994 08:49:37 GMT") into out
 * (30 bytes with the NUL); returns 29. */
size_t http_date(time_t t, char out[30]);

/* Percent-decodes `len` bytes of `in` into `out` (room for len bytes); with
 * `plus_space`, '+' becomes ' ' (query strings).  Invalid escapes are kept
 * as they are.  Returns the decoded length. */
size_t http_pct_decode(const char *in, size_t len, char *out, bool plus_space);

/* Iterates `a=1&b=2` pairs: *pos starts at 0; each call sets key/value
 * (raw, still encoded; value may be empty) and returns false at the end. */
bool http_query_next(const char *q, size_t qlen, size_t *pos, const char **key, size_t *klen,
                     const char **val, size_t *vlen);

#endif
