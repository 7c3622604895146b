/* jsonenc.c: JSON string literals and message objects.
 *
 * One 256-entry table gives, for each byte, how many bytes its escape adds
 * (0 for bytes that go out as they are).  Both passes skip plain bytes
 * eight at a time (a SWAR test per 64-bit word) and the encode pass copies
 * whole runs of them with memcpy, which is what most payloads are.  Output is bounds-checked per
 * run and per escape, so a wrong cap yields SL_ESPACE, never an overrun. */
#include "core/jsonenc.h"

#include <assert.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "core/b64.h"
#include "core/utf8.h"

/* Extra bytes each input byte costs: \X short forms add 1, \u00XX adds 5. */
static const uint8_t json_extra[256] = {
    [0x00] = 5, [0x01] = 5, [0x02] = 5, [0x03] = 5, [0x04] = 5, [0x05] = 5, [0x06] = 5,
    [0x07] = 5, [0x08] = 1, [0x09] = 1, [0x0a] = 1, [0x0b] = 5, [0x0c] = 1, [0x0d] = 1,
    [0x0e] = 5, [0x0f] = 5, [0x10] = 5, [0x11] = 5, [0x12] = 5, [0x13] = 5, [0x14] = 5,
    [0x15] = 5, [0x16] = 5, [0x17] = 5, [0x18] = 5, [0x19] = 5, [0x1a] = 5, [0x1b] = 5,
    [0x1c] = 5, [0x1d] = 5, [0x1e] = 5, [0x1f] = 5, ['"'] = 1,  ['\\'] = 1,
};

/* True iff any of the 8 bytes in v needs escaping (below 0x20, '"' or
 * '\\').  The classic SWAR tests: (x - 0x01..) & ~x & 0x80.. is non-zero iff
 * some byte of x is zero (resp. below n for x - n*0x01..), exactly for the
 * "any" question. */
static inline bool json_word_special(uint64_t v)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t q = v ^ (ones * '"'), b = v ^ (ones * '\\');
    return (((v - ones * 0x20) & ~v) | ((q - ones) & ~q) | ((b - ones) & ~b)) & highs;
}

/* Length of the run of plain bytes at p (at most end - p). */
static inline size_t json_plain_run(const uint8_t *p, const uint8_t *end)
{
    const uint8_t *r = p;
    uint64_t v;
    while ((size_t)(end - r) >= 8 && (memcpy(&v, r, 8), !json_word_special(v)))
        r += 8;
    while (r < end && !json_extra[*r])
        r++;
    return (size_t)(r - p);
}

size_t json_string_size(const char *s, size_t len)
{
    if (!s) /* NULL + 0 is undefined behaviour */
        return 2;
    const uint8_t *p = (const uint8_t *)s, *end = p + len;
    size_t n = len + 2;
    while (p < end) {
        p += json_plain_run(p, end);
        if (p < end) n += json_extra[*p++];
    }
    return n;
}

/* Output cursor: o advances, end is fixed; put() fails rather than overrun. */
struct jw {
    char *o, *end;
};

static inline int jw_put(struct jw *w, const void *src, size_t n)
{
    if ((size_t)(w->end - w->o) < n) return SL_ESPACE;
    if (n) memcpy(w->o, src, n);
    w->o += n;
    return 0;
}

#define JW_LIT(w, lit) jw_put((w), (lit), sizeof(lit) - 1)

static int jw_string(struct jw *w, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    if (!s) /* NULL + 0 is undefined behaviour */
        s = "";
#ifndef NDEBUG
    assert(utf8_valid(s, len) && "json: input must be valid UTF-8 (base64 it first)");
#endif
    if (JW_LIT(w, "\"")) return SL_ESPACE;
    const uint8_t *p = (const uint8_t *)s, *end = p + len;
    while (p < end) {
        const uint8_t *r = p + json_plain_run(p, end);
        if (jw_put(w, p, (size_t)(r - p))) return SL_ESPACE;
        if (r == end) break;
        char e[6] = {'\\', 0, '0', '0', 0, 0};
        size_t n = 2;
        switch (*r) {
        case '"':
            e[1] = '"';
            break;
        case '\\':
            e[1] = '\\';
            break;
        case '\b':
            e[1] = 'b';
            break;
        case '\f':
            e[1] = 'f';
            break;
        case '\n':
            e[1] = 'n';
            break;
        case '\r':
            e[1] = 'r';
            break;
        case '\t':
            e[1] = 't';
            break;
        default:
            e[1] = 'u';
            e[4] = hex[*r >> 4];
            e[5] = hex[*r & 15];
            n = 6;
        }
        if (jw_put(w, e, n)) return SL_ESPACE;
        p = r + 1;
    }
    return JW_LIT(w, "\"");
}

ssize_t json_string_encode(char *out, size_t cap, const char *s, size_t len)
{
    struct jw w = {out, out + cap};
    if (jw_string(&w, s, len)) return SL_ESPACE;
    return w.o - out;
}

/* The optional string members: NULL is JSON null. */
static size_t json_opt_size(const char *s, size_t len)
{
    return s ? json_string_size(s, len) : 4;
}

static int jw_opt_string(struct jw *w, const char *s, size_t len)
{
    return s ? jw_string(w, s, len) : JW_LIT(w, "null");
}

size_t json_msg_size(const struct json_msg *m)
{
    /* {"id": ,"event": ,"data": } */
    size_t n = sizeof("{\"id\":,\"event\":,\"data\":}") - 1;
    n += json_string_size(m->id, m->id_len);
    if (m->flags & JSON_MSG_TOPIC)
        n += sizeof(",\"topic\":") - 1 + json_opt_size(m->topic, m->topic_len);
    n += json_opt_size(m->event, m->event_len);
    if (m->flags & JSON_MSG_BASE64)
        n += b64_encoded_size(m->data_len) + 2 + sizeof(",\"encoding\":\"base64\"") - 1;
    else if (m->flags & JSON_MSG_RAW)
        n += m->data_len + sizeof(",\"encoding\":\"json\"") - 1;
    else
        n += json_string_size(m->data, m->data_len);
    return n;
}

ssize_t json_msg_encode(char *out, size_t cap, const struct json_msg *m)
{
    struct jw w = {out, out + cap};
    if (JW_LIT(&w, "{\"id\":") || jw_string(&w, m->id, m->id_len)) return SL_ESPACE;
    if (m->flags & JSON_MSG_TOPIC) {
        if (JW_LIT(&w, ",\"topic\":") || jw_opt_string(&w, m->topic, m->topic_len))
            return SL_ESPACE;
    }
    if (JW_LIT(&w, ",\"event\":") || jw_opt_string(&w, m->event, m->event_len) ||
        JW_LIT(&w, ",\"data\":"))
        return SL_ESPACE;
    if (m->flags & JSON_MSG_BASE64) {
        /* The base64 alphabet needs no JSON escaping: encode in place. */
        if (JW_LIT(&w, "\"")) return SL_ESPACE;
        ssize_t n = b64_encode(w.o, (size_t)(w.end - w.o), m->data, m->data_len);
        if (n < 0) return SL_ESPACE;
        w.o += n;
        if (JW_LIT(&w, "\",\"encoding\":\"base64\"}")) return SL_ESPACE;
    } else if (m->flags & JSON_MSG_RAW) {
        if (jw_put(&w, m->data, m->data_len) || JW_LIT(&w, ",\"encoding\":\"json\"}"))
            return SL_ESPACE;
    } else {
        if (jw_string(&w, m->data, m->data_len) || JW_LIT(&w, "}")) return SL_ESPACE;
    }
    return w.o - out;
}

/* ---- validation ------------------------------------------------------------ */

static const char *jv_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static int jv_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* The string whose opening quote is at p: the byte after its closing
 * quote, or NULL.  Bytes from 0x80 on were checked as UTF-8 already. */
static const char *jv_string(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') return p + 1;
        if (c < 0x20) return NULL;
        if (c != '\\') continue;
        if (++p == end) return NULL;
        switch (*p) {
        case '"':
        case '\\':
        case '/':
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't':
            break;
        case 'u':
            if (end - p < 5 || !jv_hex(p[1]) || !jv_hex(p[2]) || !jv_hex(p[3]) || !jv_hex(p[4]))
                return NULL;
            p += 4;
            break;
        default:
            return NULL;
        }
    }
    return NULL;
}

static const char *jv_digits(const char *p, const char *end)
{
    const char *q = p;
    while (q < end && *q >= '0' && *q <= '9')
        q++;
    return q > p ? q : NULL;
}

static const char *jv_number(const char *p, const char *end)
{
    if (*p == '-') p++;
    if (p == end) return NULL;
    if (*p == '0')
        p++;
    else if (!(p = jv_digits(p, end)))
        return NULL;
    if (p < end && *p == '.' && !(p = jv_digits(p + 1, end))) return NULL;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (!(p = jv_digits(p, end))) return NULL;
    }
    return p;
}

static const char *jv_word(const char *p, const char *end, const char *w, size_t n)
{
    return (size_t)(end - p) >= n && memcmp(p, w, n) == 0 ? p + n : NULL;
}

bool json_valid(const char *s, size_t len)
{
    /* Iterative: stack[d] is '{' or '[' for each open container. */
    char stack[JSON_VALID_DEPTH];
    int depth = 0;
    const char *p = s, *end = s + len;
    if (!s || !utf8_valid(s, len)) return false;
    for (;;) {
        /* A value is expected at p. */
        p = jv_ws(p, end);
        if (p == end) return false;
        switch (*p) {
        case '{':
        case '[':
            if (depth == JSON_VALID_DEPTH) return false;
            stack[depth++] = *p;
            p = jv_ws(p + 1, end);
            if (p < end && *p == (stack[depth - 1] == '{' ? '}' : ']')) {
                depth--;
                p++;
                break; /* empty: a value ended */
            }
            if (stack[depth - 1] == '{') {
                if (p == end || *p != '"' || !(p = jv_string(p, end))) return false;
                p = jv_ws(p, end);
                if (p == end || *p++ != ':') return false;
            }
            continue; /* the first member's value */
        case '"':
            p = jv_string(p, end);
            break;
        case 't':
            p = jv_word(p, end, "true", 4);
            break;
        case 'f':
            p = jv_word(p, end, "false", 5);
            break;
        case 'n':
            p = jv_word(p, end, "null", 4);
            break;
        default:
            p = (*p == '-' || (*p >= '0' && *p <= '9')) ? jv_number(p, end) : NULL;
        }
        if (!p) return false;
        /* A value ended: close containers, or go on to the next member. */
        for (;;) {
            p = jv_ws(p, end);
            if (depth == 0) return p == end;
            if (p == end) return false;
            char open = stack[depth - 1];
            if (*p == (open == '{' ? '}' : ']')) {
                depth--;
                p++;
                continue;
            }
            if (*p++ != ',') return false;
            if (open == '{') {
                p = jv_ws(p, end);
                if (p == end || *p != '"' || !(p = jv_string(p, end))) return false;
                p = jv_ws(p, end);
                if (p == end || *p++ != ':') return false;
            }
            break;
        }
    }
}
