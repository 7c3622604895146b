/* sse.c: Server-Sent Events encoder and whole-stream parser.
 *
 * The encoder walks the data once per pass (size, then encode) from line
 * break to line break.  A break is the nearest CR or LF, found with memchr;
 * the position of the next CR and of the next LF are each kept until the
 * scan passes them, so data with many breaks of one kind and none of the
 * other is still one linear scan per pass, and the common case (no break at
 * all) is two memchr calls.  Writes go through a bounds-checked cursor so a
 * wrong cap is an error, never an overrun.
 *
 * The parser follows the WHATWG "interpreting an event stream" steps on a
 * buffer that holds the whole stream; field values point into the input, so
 * only the data buffer (which concatenates lines) needs the caller's
 * scratch. */
#include "core/sse.h"

#include "core/defs.h"

#include <string.h>

bool sse_field_valid(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '\r' || c == '\n' || c == '\0') return false;
    }
    return true;
}

/* ---- Line splitting of the data ---- */

struct sse_lines {
    const char *p;       /* start of the next line */
    const char *end;     /* end of the data */
    const char *cr, *lf; /* next CR / LF at or after p, or end */
    bool done;
};

static const char *sse_find(const char *p, const char *end, int c)
{
    const char *r = p < end ? memchr(p, c, (size_t)(end - p)) : NULL;
    return r ? r : end;
}

static void sse_lines_init(struct sse_lines *ls, const char *data, size_t len)
{
    if (!data) /* NULL + 0 is undefined behaviour */
        data = "";
    ls->p = data;
    ls->end = data + len;
    ls->cr = sse_find(data, ls->end, '\r');
    ls->lf = sse_find(data, ls->end, '\n');
    ls->done = false;
}

/* Next line of the data (without its break); false after the last one.  The
 * data always has at least one line, and one more after a final break. */
static bool sse_lines_next(struct sse_lines *ls, const char **line, size_t *len)
{
    if (ls->done) return false;
    const char *brk = ls->cr < ls->lf ? ls->cr : ls->lf;
    *line = ls->p;
    *len = (size_t)(brk - ls->p);
    if (brk == ls->end) {
        ls->done = true;
        return true;
    }
    const char *q = brk + 1;
    if (*brk == '\r' && q < ls->end && *q == '\n') q++;
    ls->p = q;
    if (ls->cr < q) ls->cr = sse_find(q, ls->end, '\r');
    if (ls->lf < q) ls->lf = sse_find(q, ls->end, '\n');
    return true;
}

/* ---- Bounds-checked output ---- */

struct sse_w {
    char *o, *end;
};

static inline int sse_put(struct sse_w *w, const void *src, size_t n)
{
    if ((size_t)(w->end - w->o) < n) return SL_ESPACE;
    if (n) memcpy(w->o, src, n);
    w->o += n;
    return 0;
}

#define SSE_LIT(w, lit) sse_put((w), (lit), sizeof(lit) - 1)

/* ---- Events ---- */

ssize_t sse_event_size(const char *id, size_t id_len, const char *event, size_t event_len,
                       const char *data, size_t data_len)
{
    if (!event) event_len = 0;
    if (!sse_field_valid(id, id_len) || !sse_field_valid(event, event_len)) return SL_EFIELD;
    size_t n = 1; /* the blank line that dispatches */
    if (id_len) n += sizeof("id: \n") - 1 + id_len;
    if (event_len) n += sizeof("event: \n") - 1 + event_len;
    struct sse_lines ls;
    const char *line;
    size_t len;
    sse_lines_init(&ls, data, data_len);
    while (sse_lines_next(&ls, &line, &len))
        n += len ? sizeof("data: \n") - 1 + len : sizeof("data:\n") - 1;
    return (ssize_t)n;
}

ssize_t sse_event_encode(char *out, size_t cap, const char *id, size_t id_len, const char *event,
                         size_t event_len, const char *data, size_t data_len)
{
    if (!event) event_len = 0;
    if (!sse_field_valid(id, id_len) || !sse_field_valid(event, event_len)) return SL_EFIELD;
    struct sse_w w = {out, out + cap};
    if (id_len && (SSE_LIT(&w, "id: ") || sse_put(&w, id, id_len) || SSE_LIT(&w, "\n")))
        return SL_ESPACE;
    if (event_len && (SSE_LIT(&w, "event: ") || sse_put(&w, event, event_len) || SSE_LIT(&w, "\n")))
        return SL_ESPACE;
    struct sse_lines ls;
    const char *line;
    size_t len;
    sse_lines_init(&ls, data, data_len);
    while (sse_lines_next(&ls, &line, &len)) {
        if (len ? SSE_LIT(&w, "data: ") || sse_put(&w, line, len) || SSE_LIT(&w, "\n")
                : SSE_LIT(&w, "data:\n"))
            return SL_ESPACE;
    }
    if (SSE_LIT(&w, "\n")) return SL_ESPACE;
    return w.o - out;
}

/* ---- Comments and retry ---- */

ssize_t sse_comment_size(const char *text, size_t len)
{
    if (!sse_field_valid(text, len)) return SL_EFIELD;
    return (ssize_t)(len ? sizeof(": \n\n") - 1 + len : sizeof(":\n\n") - 1);
}

ssize_t sse_comment_encode(char *out, size_t cap, const char *text, size_t len)
{
    ssize_t n = sse_comment_size(text, len);
    if (n < 0) return n;
    if (cap < (size_t)n) return SL_ESPACE;
    if (len)
        mempcpy(mempcpy(mempcpy(out, STRLIT(": ")), text, len), STRLIT("\n\n"));
    else
        mempcpy(out, STRLIT(":\n\n"));
    return n;
}

static size_t sse_digits(uint32_t v)
{
    size_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

size_t sse_retry_size(uint32_t ms)
{
    return sizeof("retry: \n\n") - 1 + sse_digits(ms);
}

ssize_t sse_retry_encode(char *out, size_t cap, uint32_t ms)
{
    size_t n = sse_retry_size(ms), d = sse_digits(ms);
    if (cap < n) return SL_ESPACE;
    char *digits = mempcpy(out, STRLIT("retry: "));
    for (size_t i = d; i > 0; i--) {
        digits[i - 1] = (char)('0' + ms % 10);
        ms /= 10;
    }
    mempcpy(digits + d, STRLIT("\n\n"));
    return (ssize_t)n;
}

/* ---- Parser ---- */

static bool sse_name_is(const char *name, size_t len, const char *lit)
{
    return len == strlen(lit) && memcmp(name, lit, len) == 0;
}

int sse_parse(const char *in, size_t len, char *scratch, size_t scratch_cap,
              const struct sse_parse_cb *cb, void *ud)
{
    if (scratch_cap < len) return SL_ESPACE;
    if (len == 0) return 0;
    const char *p = in, *end = in + len;
    if (STR_STARTS(p, len, "\xEF\xBB\xBF")) p += 3; /* a UTF-8 BOM */
    size_t dlen = 0;         /* data buffer, in scratch */
    const char *type = NULL; /* event type buffer; NULL = empty */
    size_t type_len = 0;
    const char *idbuf = ""; /* last event ID buffer */
    size_t idbuf_len = 0;
    int rc;

    while (p < end) {
        const char *e = p;
        while (e < end && *e != '\r' && *e != '\n')
            e++;
        if (e == end) break; /* unterminated last line: discarded at end of stream */
        const char *next = e + 1;
        if (*e == '\r' && next < end && *next == '\n') next++;
        size_t ll = (size_t)(e - p);

        if (ll == 0) {
            /* Dispatch.  The last event ID string becomes the buffer's value
             * even when nothing is dispatched; idbuf already is that. */
            if (dlen) {
                dlen--; /* the data buffer always ends in LF here */
                struct sse_parsed ev = {
                    .id = idbuf,
                    .id_len = idbuf_len,
                    .type = type && type_len ? type : "message",
                    .type_len = type && type_len ? type_len : 7,
                    .data = scratch,
                    .data_len = dlen,
                };
                if (cb && cb->on_event && (rc = cb->on_event(ud, &ev)) != 0) return rc;
            }
            dlen = 0;
            type = NULL;
            type_len = 0;
        } else if (*p == ':') {
            if (cb && cb->on_comment && (rc = cb->on_comment(ud, p + 1, ll - 1)) != 0) return rc;
        } else {
            const char *colon = memchr(p, ':', ll);
            const char *name = p, *val = e;
            size_t nlen = ll, vlen = 0;
            if (colon) {
                nlen = (size_t)(colon - p);
                val = colon + 1;
                if (val < e && *val == ' ') val++;
                vlen = (size_t)(e - val);
            }
            if (sse_name_is(name, nlen, "event")) {
                type = val;
                type_len = vlen;
            } else if (sse_name_is(name, nlen, "data")) {
                if (vlen) memcpy(scratch + dlen, val, vlen);
                dlen += vlen;
                scratch[dlen++] = '\n';
            } else if (sse_name_is(name, nlen, "id")) {
                if (!memchr(val, '\0', vlen)) {
                    idbuf = vlen ? val : "";
                    idbuf_len = vlen;
                }
            } else if (sse_name_is(name, nlen, "retry")) {
                bool digits = vlen > 0;
                uint64_t ms = 0;
                for (size_t i = 0; i < vlen && digits; i++) {
                    unsigned d = (unsigned char)val[i] - '0';
                    if (d > 9)
                        digits = false;
                    else
                        ms = ms > (UINT64_MAX - d) / 10 ? UINT64_MAX : ms * 10 + d;
                }
                if (digits && cb && cb->on_retry && (rc = cb->on_retry(ud, ms)) != 0) return rc;
            }
        }
        p = next;
    }
    return 0;
}
