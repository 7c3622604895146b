/* utf8.c: the DFA behind utf8.h.
 *
 * Bytes fall into twelve classes (ASCII, three continuation ranges that the
 * second byte of E0/ED/F0/F4 sequences must pick between, the lead-byte
 * kinds, and bytes never allowed).  Nine states: boundary, rejected, "n
 * continuation bytes left" for n = 1..3, and four states for the second byte
 * after E0, ED, F0 and F4, whose allowed range is narrower; that narrowing
 * is what rejects overlongs, surrogates and code points past U+10FFFF at
 * the earliest byte.  Both tables are written out so the hot loop is two
 * loads per byte; ASCII runs skip the DFA eight bytes at a time. */
#include "core/utf8.h"

#include <string.h>

enum {
    S_OK = 0, /* at a boundary */
    S_BAD = 1,
    S_C1 = 2, /* one continuation byte (80..BF) left */
    S_C2 = 3,
    S_C3 = 4,
    S_E0 = 5, /* after E0: A0..BF, then one more */
    S_ED = 6, /* after ED: 80..9F (no surrogates), then one more */
    S_F0 = 7, /* after F0: 90..BF, then two more */
    S_F4 = 8, /* after F4: 80..8F (<= U+10FFFF), then two more */
};

/* Byte classes: 0 ASCII, 1 80..8F, 2 90..9F, 3 A0..BF, 4 never valid
 * (C0, C1, F5..FF), 5 C2..DF, 6 E0, 7 E1..EC and EE..EF, 8 ED, 9 F0,
 * 10 F1..F3, 11 F4. */
static const uint8_t utf8_class[256] = {
    [0x00 ... 0x7F] = 0, [0x80 ... 0x8F] = 1, [0x90 ... 0x9F] = 2, [0xA0 ... 0xBF] = 3,
    [0xC0 ... 0xC1] = 4, [0xC2 ... 0xDF] = 5, [0xE0] = 6,          [0xE1 ... 0xEC] = 7,
    [0xED] = 8,          [0xEE ... 0xEF] = 7, [0xF0] = 9,          [0xF1 ... 0xF3] = 10,
    [0xF4] = 11,         [0xF5 ... 0xFF] = 4,
};

#define B S_BAD
static const uint8_t utf8_next[9][12] = {
    /*          asc  80   90   A0   bad  C2   E0    E1   ED    F0    F1    F4 */
    [S_OK] = {S_OK, B, B, B, B, S_C1, S_E0, S_C2, S_ED, S_F0, S_C3, S_F4},
    [S_BAD] = {B, B, B, B, B, B, B, B, B, B, B, B},
    [S_C1] = {B, S_OK, S_OK, S_OK, B, B, B, B, B, B, B, B},
    [S_C2] = {B, S_C1, S_C1, S_C1, B, B, B, B, B, B, B, B},
    [S_C3] = {B, S_C2, S_C2, S_C2, B, B, B, B, B, B, B, B},
    [S_E0] = {B, B, B, S_C1, B, B, B, B, B, B, B, B},
    [S_ED] = {B, S_C1, S_C1, B, B, B, B, B, B, B, B, B},
    [S_F0] = {B, B, S_C2, S_C2, B, B, B, B, B, B, B, B},
    [S_F4] = {B, S_C2, B, B, B, B, B, B, B, B, B, B},
};
#undef B

void utf8_init(utf8_state *st)
{
    st->s = S_OK;
}

utf8_result utf8_state_result(const utf8_state *st)
{
    if (st->s == S_OK) return UTF8_OK;
    return st->s == S_BAD ? UTF8_INVALID : UTF8_INCOMPLETE;
}

utf8_result utf8_feed(utf8_state *st, const void *data, size_t len)
{
    if (st->s == S_BAD || len == 0) return utf8_state_result(st);

    const uint8_t *p = data, *end = p + len;
    unsigned s = st->s;

    while (p < end) {
        if (s == S_OK) {
            /* ASCII run: most published text is ASCII, so skip words. */
            while (end - p >= 8) {
                uint64_t w;
                memcpy(&w, p, 8);
                if (w & 0x8080808080808080ull) break;
                p += 8;
            }
            while (p < end && *p < 0x80)
                p++;
            if (p == end) break;
        }
        s = utf8_next[s][utf8_class[*p++]];
        if (s == S_BAD) break;
    }
    st->s = (uint8_t)s;
    return utf8_state_result(st);
}

bool utf8_valid(const void *data, size_t len)
{
    utf8_state st = {S_OK};
    return utf8_feed(&st, data, len) == UTF8_OK;
}
