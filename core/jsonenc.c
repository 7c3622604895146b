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
#ifndef NDEBUG
#include "core/utf8.h"
#endif

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
    } else {
        if (jw_string(&w, m->data, m->data_len) || JW_LIT(&w, "}")) return SL_ESPACE;
    }
    return w.o - out;
}
