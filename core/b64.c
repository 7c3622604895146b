/* b64.c: RFC 4648 base64, table-driven in both directions.
 *
 * Encoding is three bytes to four characters in a straight loop, the tail
 * handled once; decoding maps each character through a 256-entry table in
 * which 0xff marks "not in the alphabet", so one OR across a quantum tells
 * whether any of its characters was bad. */
#include "core/b64.h"

#include <stdint.h>

static const char b64_alphabet[64] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Character -> 6-bit value, 0xff for everything outside the alphabet
 * (including '=', which the decoder handles by position). */
static const uint8_t b64_value[256] = {
    /* 0x00 */ 255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    /* 0x10 */ 255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    /* 0x20 */ 255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    62,
    255,
    255,
    255,
    63,
    /* 0x30 */ 52,
    53,
    54,
    55,
    56,
    57,
    58,
    59,
    60,
    61,
    255,
    255,
    255,
    255,
    255,
    255,
    /* 0x40 */ 255,
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    /* 0x50 */ 15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    255,
    255,
    255,
    255,
    255,
    /* 0x60 */ 255,
    26,
    27,
    28,
    29,
    30,
    31,
    32,
    33,
    34,
    35,
    36,
    37,
    38,
    39,
    40,
    /* 0x70 */ 41,
    42,
    43,
    44,
    45,
    46,
    47,
    48,
    49,
    50,
    51,
    255,
    255,
    255,
    255,
    255,
    /* 0x80 */ 255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    /* 0x90 */ 255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    /* 0xa0 */ 255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    /* 0xb0 */ 255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    /* 0xc0 */ 255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    /* 0xd0 */ 255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    /* 0xe0 */ 255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    /* 0xf0 */ 255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
};

ssize_t b64_encode(char *out, size_t cap, const void *in, size_t len)
{
    size_t need = b64_encoded_size(len);
    if (cap < need) return SL_ESPACE;
    const uint8_t *s = in;
    char *o = out;
    size_t i = 0;
    for (; len - i >= 3; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        o[0] = b64_alphabet[v >> 18];
        o[1] = b64_alphabet[(v >> 12) & 63];
        o[2] = b64_alphabet[(v >> 6) & 63];
        o[3] = b64_alphabet[v & 63];
        o += 4;
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        o[0] = b64_alphabet[v >> 18];
        o[1] = b64_alphabet[(v >> 12) & 63];
        o[2] = '=';
        o[3] = '=';
        o += 4;
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        o[0] = b64_alphabet[v >> 18];
        o[1] = b64_alphabet[(v >> 12) & 63];
        o[2] = b64_alphabet[(v >> 6) & 63];
        o[3] = '=';
        o += 4;
    }
    return (ssize_t)need;
}

ssize_t b64_decode(void *out, size_t cap, const char *in, size_t len)
{
    if (len % 4 != 0) return SL_EINPUT;
    if (len == 0) return 0;
    const uint8_t *s = (const uint8_t *)in;
    size_t pad = (s[len - 1] == '=') + (s[len - 1] == '=' && s[len - 2] == '=');
    size_t need = len / 4 * 3 - pad;
    if (cap < need) return SL_ESPACE;
    uint8_t *o = out;
    size_t full = pad ? len - 4 : len; /* quanta without padding */
    for (size_t i = 0; i < full; i += 4) {
        uint8_t a = b64_value[s[i]], b = b64_value[s[i + 1]], c = b64_value[s[i + 2]],
                d = b64_value[s[i + 3]];
        if ((a | b | c | d) == 0xff) return SL_EINPUT;
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | d;
        o[0] = (uint8_t)(v >> 16);
        o[1] = (uint8_t)(v >> 8);
        o[2] = (uint8_t)v;
        o += 3;
    }
    if (pad) {
        const uint8_t *q = s + len - 4;
        uint8_t a = b64_value[q[0]], b = b64_value[q[1]];
        if ((a | b) == 0xff) return SL_EINPUT;
        if (pad == 2) {
            if (b & 0x0f) /* pad bits must be zero */
                return SL_EINPUT;
            o[0] = (uint8_t)(a << 2 | b >> 4);
        } else {
            uint8_t c = b64_value[q[2]];
            if (c == 0xff || (c & 0x03)) return SL_EINPUT;
            o[0] = (uint8_t)(a << 2 | b >> 4);
            o[1] = (uint8_t)(b << 4 | c >> 2);
        }
    }
    return (ssize_t)need;
}
