/* http.c: llhttp callbacks that copy a request into the parser's arena while
 * checking limits, pause after each request, and a few HTTP helpers (status
 * texts, dates, percent-decoding, query iteration) that have no I/O. */
#include "core/http.h"

#include "core/defs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HTTP_LINE_OVERHEAD 4 /* ": " and CRLF per header, counted against max_header */

static http_parser *parser_of(llhttp_t *l)
{
    return (http_parser *)l->data;
}

static int fail(http_parser *p, int status, const char *reason)
{
    p->error_status = status;
    p->error_reason = reason;
    return -1;
}

/* Appends to a growable buffer (doubling, room kept for a NUL). */
static int buf_append(http_parser *p, char **buf, size_t *len, size_t *cap, size_t first,
                      const char *at, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t ncap = *cap ? *cap : first;
        while (ncap < *len + n + 1)
            ncap *= 2;
        char *nb = realloc(*buf, ncap);
        if (!nb) return fail(p, 500, "out of memory");
        *buf = nb;
        *cap = ncap;
    }
    memcpy(*buf + *len, at, n);
    *len += n;
    return 0;
}

static int arena_append(http_parser *p, const char *at, size_t len)
{
    return buf_append(p, &p->arena, &p->arena_len, &p->arena_cap, 512, at, len);
}

static int on_message_begin(llhttp_t *l)
{
    http_parser *p = parser_of(l);
    p->started = true;
    return 0;
}

static int on_url(llhttp_t *l, const char *at, size_t len)
{
    http_parser *p = parser_of(l);
    p->started = true;
    p->url_bytes += len;
    p->header_bytes += len;
    if (p->url_bytes > p->limits.max_uri) return fail(p, 414, "URI too long");
    return arena_append(p, at, len);
}

static int on_url_complete(llhttp_t *l)
{
    /* NUL after the URL so it can be used as a C string. */
    http_parser *p = parser_of(l);
    if (arena_append(p, "", 1) < 0) return -1; /* the NUL, 1 byte */
    return 0;
}

/* Room for more headers: doubles from 16 up to HTTP_MAX_HEADERS. */
static int grow_headers(http_parser *p)
{
    int cap = p->hdr_cap ? 2 * p->hdr_cap : 16;
    if (cap > HTTP_MAX_HEADERS) cap = HTTP_MAX_HEADERS;
    uint32_t(*off)[4] = realloc(p->hdr_off, (size_t)cap * sizeof(*off));
    if (!off) return -1;
    p->hdr_off = off;
    http_header *views = realloc(p->headers, (size_t)cap * sizeof(*views));
    if (!views) return -1;
    p->headers = views;
    p->hdr_cap = cap;
    return 0;
}

/* Trailer fields (after a chunked body) and chunk extensions: counted
 * against the header limits, never kept.  Trailers must not grow the arena:
 * the request's url and header views point into it since
 * on_headers_complete. */
static int count_trailer(http_parser *p, size_t len, bool new_line)
{
    if (new_line) {
        if (++p->trailer_lines + p->nheaders > HTTP_MAX_HEADERS)
            return fail(p, 431, "too many headers");
        p->header_bytes += HTTP_LINE_OVERHEAD;
    }
    p->header_bytes += len;
    if (p->header_bytes > p->limits.max_header) return fail(p, 431, "header block too large");
    return 0;
}

static int on_chunk_extension(llhttp_t *l, const char *at, size_t len)
{
    http_parser *p = parser_of(l);
    p->header_bytes += len;
    if (p->header_bytes > p->limits.max_header) return fail(p, 431, "chunk extensions too large");
    return 0;
}

static int on_chunk_extension_complete(llhttp_t *l)
{
    /* The ';' or '=' before it: a run of empty extensions counts too. */
    return on_chunk_extension(l, NULL, 1);
}

static int on_header_field(llhttp_t *l, const char *at, size_t len)
{
    http_parser *p = parser_of(l);
    if (p->in_trailers) {
        bool first = !p->field_open;
        p->field_open = true;
        return count_trailer(p, len, first);
    }
    if (!p->field_open) {
        if (p->nheaders >= HTTP_MAX_HEADERS) return fail(p, 431, "too many headers");
        if (p->nheaders == p->hdr_cap && grow_headers(p) < 0) return fail(p, 500, "out of memory");
        uint32_t *h = p->hdr_off[p->nheaders++];
        h[0] = (uint32_t)p->arena_len;
        h[1] = h[2] = h[3] = 0;
        p->field_open = true;
        p->header_bytes += HTTP_LINE_OVERHEAD;
    }
    p->header_bytes += len;
    if (p->header_bytes > p->limits.max_header) return fail(p, 431, "header block too large");
    p->hdr_off[p->nheaders - 1][1] += (uint32_t)len;
    return arena_append(p, at, len);
}

static int on_header_field_complete(llhttp_t *l)
{
    parser_of(l)->field_open = false;
    return 0;
}

static int on_header_value(llhttp_t *l, const char *at, size_t len)
{
    http_parser *p = parser_of(l);
    if (p->in_trailers) return count_trailer(p, len, false);
    uint32_t *h = p->hdr_off[p->nheaders - 1];
    if (!p->value_open) {
        h[2] = (uint32_t)p->arena_len;
        p->value_open = true;
    }
    p->header_bytes += len;
    if (p->header_bytes > p->limits.max_header) return fail(p, 431, "header block too large");
    h[3] += (uint32_t)len;
    return arena_append(p, at, len);
}

static int on_header_value_complete(llhttp_t *l)
{
    parser_of(l)->value_open = false;
    return 0;
}

static bool token_eq(const char *s, size_t len, const char *tok)
{
    return strlen(tok) == len && strncasecmp(s, tok, len) == 0;
}

/* Length of the "scheme://authority" of an absolute-form target
 * ("http://host:8080/a?b" -> 16), 0 for any other form, -1 when the
 * target starts like one but has no authority. */
static long absolute_prefix(const char *url, size_t len)
{
    size_t s;
    if (STR_STARTS_CASE(url, len, "http://"))
        s = sizeof("http://") - 1;
    else if (STR_STARTS_CASE(url, len, "https://"))
        s = sizeof("https://") - 1;
    else
        return 0;
    size_t e = s;
    while (e < len && url[e] != '/' && url[e] != '?' && url[e] != '#')
        e++;
    return e > s ? (long)e : -1;
}

static int on_headers_complete(llhttp_t *l)
{
    http_parser *p = parser_of(l);
    http_request *r = &p->req;
    /* HTTP/2 has its own connection preface, and any other major version is
     * not this protocol: RFC 9110 15.6.6 has 505 for both. */
    if (l->http_major != 1) return fail(p, 505, "HTTP version not supported");
    /* The arena no longer grows for this request: pointers are now stable. */
    p->in_trailers = true;
    r->url = p->arena;
    r->url_len = p->url_bytes;
    /* Absolute form (RFC 9112 3.2.2, what a proxy sends): the path and
     * query are taken from it; the authority is not used (no virtual
     * hosts), and Host is still required below. */
    long abs = absolute_prefix(r->url, r->url_len);
    if (abs < 0) return fail(p, 400, "bad request target");
    const char *target = r->url + abs;
    size_t tlen = r->url_len - (size_t)abs;
    const char *hash = memchr(target, '#', tlen); /* never sent by browsers; not ours */
    if (hash) tlen = (size_t)(hash - target);
    const char *qm = memchr(target, '?', tlen);
    r->path = target;
    r->path_len = qm ? (size_t)(qm - target) : tlen;
    r->query = qm ? qm + 1 : NULL;
    r->query_len = qm ? tlen - r->path_len - 1 : 0;
    if (abs && r->path_len == 0) {
        r->path = "/"; /* "http://host?x": the path is "/" (RFC 9112 3.2.1) */
        r->path_len = 1;
    }
    int hosts = 0;
    for (int i = 0; i < p->nheaders; i++) {
        http_header *h = &p->headers[i];
        h->name = p->arena + p->hdr_off[i][0];
        h->name_len = p->hdr_off[i][1];
        h->value = p->arena + p->hdr_off[i][2];
        h->value_len = p->hdr_off[i][3];
        if (STR_IS_CASE(h->name, h->name_len, "host")) hosts++;
    }
    r->headers = p->headers;
    r->nheaders = p->nheaders;
    /* RFC 9112 3.2: a 400 for an HTTP/1.1 request without Host, and for
     * any request with more than one (HTTP/1.0 may omit it). */
    if (hosts > 1) return fail(p, 400, "more than one Host header");
    if (hosts == 0 && l->http_minor >= 1) return fail(p, 400, "missing Host header");
    r->method_id = l->method;
    r->method = llhttp_method_name((llhttp_method_t)l->method);
    r->version_major = l->http_major;
    r->version_minor = l->http_minor;
    r->keep_alive = llhttp_should_keep_alive(l);
    r->upgrade = l->upgrade;

    bool has_body = (l->flags & F_CHUNKED) || ((l->flags & F_CONTENT_LENGTH) && l->content_length);
    if ((l->flags & F_CONTENT_LENGTH) && l->content_length > p->limits.max_body)
        return fail(p, 413, "body too large");
    size_t elen;
    const char *expect = http_header_get(r, "expect", &elen);
    if (expect && has_body) {
        if (!token_eq(expect, elen, "100-continue")) return fail(p, 417, "unsupported Expect");
        r->expect_continue = true;
        p->pause_event = HTTP_EV_CONTINUE;
        return HPE_PAUSED;
    }
    return 0;
}

static int on_body(llhttp_t *l, const char *at, size_t len)
{
    http_parser *p = parser_of(l);
    if (p->body_len + len > p->limits.max_body) return fail(p, 413, "body too large");
    return buf_append(p, &p->body, &p->body_len, &p->body_cap, 1024, at, len);
}

static int on_message_complete(llhttp_t *l)
{
    http_parser *p = parser_of(l);
    if (p->body) p->body[p->body_len] = '\0';
    p->req.body = p->body;
    p->req.body_len = p->body_len;
    p->pause_event = HTTP_EV_REQUEST;
    return HPE_PAUSED;
}

static const llhttp_settings_t http_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_url_complete = on_url_complete,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
    .on_chunk_extension_name = on_chunk_extension,
    .on_chunk_extension_value = on_chunk_extension,
    .on_chunk_extension_name_complete = on_chunk_extension_complete,
    .on_chunk_extension_value_complete = on_chunk_extension_complete,
};

void http_parser_init(http_parser *p, const http_limits *limits)
{
    memset(p, 0, sizeof(*p));
    p->limits = *limits;
    llhttp_init(&p->llhttp, HTTP_REQUEST, &http_settings);
    p->llhttp.data = p;
}

void http_parser_reuse(http_parser *p, const http_limits *limits)
{
    char *arena = p->arena, *body = p->body;
    size_t arena_cap = p->arena_cap, body_cap = p->body_cap;
    uint32_t(*hdr_off)[4] = p->hdr_off;
    http_header *headers = p->headers;
    int hdr_cap = p->hdr_cap;
    http_parser_init(p, limits);
    p->arena = arena;
    p->arena_cap = arena_cap;
    p->body = body;
    p->body_cap = body_cap;
    p->hdr_off = hdr_off;
    p->headers = headers;
    p->hdr_cap = hdr_cap;
}

void http_parser_free(http_parser *p)
{
    free(p->arena);
    free(p->body);
    free(p->hdr_off);
    free(p->headers);
    p->arena = p->body = NULL;
    p->arena_cap = p->body_cap = 0;
    p->hdr_off = NULL;
    p->headers = NULL;
    p->hdr_cap = 0;
}

static void reset_request(http_parser *p)
{
    memset(&p->req, 0, sizeof(p->req));
    p->arena_len = 0;
    p->nheaders = 0;
    p->field_open = p->value_open = false;
    p->in_trailers = false;
    p->trailer_lines = 0;
    p->header_bytes = 0;
    p->url_bytes = 0;
    p->body_len = 0;
    p->started = false;
    /* A large body's buffer is not kept for the next request. */
    if (p->body_cap > 64 * 1024) {
        free(p->body);
        p->body = NULL;
        p->body_cap = 0;
    }
}

void http_next(http_parser *p)
{
    reset_request(p);
    if (p->paused) {
        llhttp_resume(&p->llhttp);
        p->paused = false;
    }
}

http_event http_feed(http_parser *p, const char *data, size_t len, size_t *consumed)
{
    *consumed = 0;
    if (p->error_status) return HTTP_EV_ERROR;
    if (p->paused) {
        /* Paused on Expect: 100-continue; the caller has answered it. */
        llhttp_resume(&p->llhttp);
        p->paused = false;
    }
    if (len == 0) return HTTP_EV_NEED_MORE;
    llhttp_errno_t err = llhttp_execute(&p->llhttp, data, len);
    if (err == HPE_PAUSED_UPGRADE && !p->started) {
        /* The request before these bytes asked for an Upgrade and was
         * answered as plain HTTP (http_next was called): llhttp stops at
         * the first byte after such a request; what follows is the next
         * request, on the same connection. */
        size_t skip = (size_t)(llhttp_get_error_pos(&p->llhttp) - data);
        llhttp_resume_after_upgrade(&p->llhttp);
        http_event ev = http_feed(p, data + skip, len - skip, consumed);
        *consumed += skip;
        return ev;
    }
    if (err == HPE_OK) {
        *consumed = len;
        return HTTP_EV_NEED_MORE;
    }
    if (err == HPE_PAUSED) {
        *consumed = (size_t)(llhttp_get_error_pos(&p->llhttp) - data);
        p->paused = true;
        return p->pause_event;
    }
    if (err == HPE_PAUSED_UPGRADE) {
        *consumed = (size_t)(llhttp_get_error_pos(&p->llhttp) - data);
        return HTTP_EV_REQUEST;
    }
    *consumed = (size_t)(llhttp_get_error_pos(&p->llhttp) - data);
    if (!p->error_status && err == HPE_PAUSED_H2_UPGRADE) {
        /* "PRI * HTTP/2.0", the HTTP/2 preface: not spoken on this listener. */
        fail(p, 505, "HTTP version not supported");
    } else if (!p->error_status && err == HPE_INVALID_VERSION && p->llhttp.http_major != 1 &&
               strcmp(llhttp_get_error_reason(&p->llhttp), "Invalid HTTP version") == 0) {
        /* llhttp parsed both digits and knows no such version ("HTTP/3.0");
         * a malformed one ("HTTP/x") stays a 400. */
        fail(p, 505, "HTTP version not supported");
    }
    if (!p->error_status) {
        p->error_status = 400;
        p->error_reason = llhttp_get_error_reason(&p->llhttp);
        if (!p->error_reason) p->error_reason = "bad request";
    }
    return HTTP_EV_ERROR;
}

const char *http_header_get(const http_request *req, const char *name, size_t *len)
{
    size_t nlen = strlen(name);
    for (int i = 0; i < req->nheaders; i++) {
        const http_header *h = &req->headers[i];
        if (h->name_len == nlen && strncasecmp(h->name, name, nlen) == 0) {
            if (len) *len = h->value_len;
            return h->value;
        }
    }
    return NULL;
}

const char *http_status_text(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 417:
        return "Expectation Failed";
    case 422:
        return "Unprocessable Content";
    case 426:
        return "Upgrade Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

size_t http_date(time_t t, char out[30])
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct tm tm;
    gmtime_r(&t, &tm);
    /* Years past 9999 do not fit the format; clamp rather than truncate. */
    int year = tm.tm_year + 1900;
    if (year > 9999) year = 9999;
    char tmp[64];
    snprintf(tmp, sizeof(tmp), "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday % 7],
             tm.tm_mday % 100, months[tm.tm_mon % 12], year, tm.tm_hour % 100, tm.tm_min % 100,
             tm.tm_sec % 100);
    memcpy(out, tmp, 29);
    out[29] = '\0';
    return 29;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

size_t http_pct_decode(const char *in, size_t len, char *out, bool plus_space)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c == '%' && i + 2 < len && hexval(in[i + 1]) >= 0 && hexval(in[i + 2]) >= 0) {
            out[o++] = (char)(hexval(in[i + 1]) * 16 + hexval(in[i + 2]));
            i += 2;
        } else if (c == '+' && plus_space) {
            out[o++] = ' ';
        } else {
            out[o++] = c;
        }
    }
    return o;
}

bool http_query_next(const char *q, size_t qlen, size_t *pos, const char **key, size_t *klen,
                     const char **val, size_t *vlen)
{
    while (*pos < qlen) {
        size_t start = *pos;
        const char *amp = memchr(q + start, '&', qlen - start);
        size_t end = amp ? (size_t)(amp - q) : qlen;
        *pos = end + 1;
        if (end == start) continue; /* "a=1&&b=2" */
        const char *eq = memchr(q + start, '=', end - start);
        *key = q + start;
        if (eq) {
            *klen = (size_t)(eq - (q + start));
            *val = eq + 1;
            *vlen = end - (size_t)(eq + 1 - q);
        } else {
            *klen = end - start;
            *val = q + end;
            *vlen = 0;
        }
        return true;
    }
    return false;
}
