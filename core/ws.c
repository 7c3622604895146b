/* ws.c: the WebSocket frame decoder and encoder, and the handshake helpers.
 *
 * The decoder has two working states: gathering a frame header (at most 14
 * bytes, copied into the struct so a header may be split anywhere) and
 * passing payload through.  Header rules are checked as soon as the bytes
 * that decide them are in: opcode, RSV bits, mask bit and control-frame
 * limits from the first two bytes, the length and the message size limit
 * once the extended length is in, before the mask and any payload.  Data payload
 * is unmasked in place and validated (text) a whole available chunk at a
 * time before it is reported, so an invalid byte fails the connection in the
 * feed that delivers it.  Control payload is gathered into the struct and
 * reported whole, which is what lets pings and closes arrive split between
 * fragments of a message. */
#include "core/ws.h"

#include <string.h>

#include <openssl/evp.h>

enum {
    ST_HEADER = 0,
    ST_PAYLOAD,
    ST_CLOSED, /* a close frame was read: ignore what follows */
    ST_ERROR,
};

void ws_decoder_init(ws_decoder *d, uint64_t max_message, bool require_mask)
{
    memset(d, 0, sizeof(*d));
    d->max_message = max_message;
    d->require_mask = require_mask;
    d->state = ST_HEADER;
    d->hdr_need = 2;
}

bool ws_decoder_closed(const ws_decoder *d)
{
    return d->state == ST_CLOSED;
}

bool ws_decoder_in_message(const ws_decoder *d)
{
    return d->msg_opcode != 0;
}

bool ws_decoder_idle(const ws_decoder *d)
{
    return d->state == ST_HEADER && d->hdr_have == 0 && d->msg_opcode == 0;
}

bool ws_close_code_valid(unsigned code)
{
    if (code >= 1000 && code <= 1003) return true;
    if (code >= 1007 && code <= 1014) return true;
    return code >= 3000 && code <= 4999;
}

static ssize_t ws_fail(ws_decoder *d, unsigned code, const char *reason)
{
    d->state = ST_ERROR;
    d->err_code = code;
    d->err_reason = reason;
    return -1;
}

/* XOR n bytes at p with the mask, starting at mask byte pos.  Eight bytes a
 * time: as 8 is a multiple of 4, the mask phase is the same for each word. */
static void ws_unmask(uint8_t *p, size_t n, const uint8_t mask[4], unsigned pos)
{
    size_t i = 0;

    if (n >= 16) {
        uint8_t m8[8];
        uint64_t m;
        for (unsigned k = 0; k < 8; k++)
            m8[k] = mask[(pos + k) & 3];
        memcpy(&m, m8, 8);
        for (; i + 8 <= n; i += 8) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            w ^= m;
            memcpy(p + i, &w, 8);
        }
    }
    for (; i < n; i++)
        p[i] ^= mask[(pos + i) & 3];
}

/* The first two header bytes are in: check what they decide and work out
 * where the length ends and where the header ends.  Returns 0 or -1. */
static int ws_header_start(ws_decoder *d)
{
    uint8_t b0 = d->hdr[0], b1 = d->hdr[1];
    unsigned op = b0 & 0x0F, len7 = b1 & 0x7F;

    if (b0 & 0x70) return (int)ws_fail(d, WS_CLOSE_PROTOCOL_ERROR, "reserved bits set");
    switch (op) {
    case WS_OP_CONT:
        if (!d->msg_opcode)
            return (int)ws_fail(d, WS_CLOSE_PROTOCOL_ERROR, "continuation outside a message");
        break;
    case WS_OP_TEXT:
    case WS_OP_BINARY:
        if (d->msg_opcode)
            return (int)ws_fail(d, WS_CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one");
        break;
    case WS_OP_CLOSE:
    case WS_OP_PING:
    case WS_OP_PONG:
        if (!(b0 & 0x80))
            return (int)ws_fail(d, WS_CLOSE_PROTOCOL_ERROR, "fragmented control frame");
        break;
    default:
        return (int)ws_fail(d, WS_CLOSE_PROTOCOL_ERROR, "unknown opcode");
    }
    if (d->require_mask && !(b1 & 0x80))
        return (int)ws_fail(d, WS_CLOSE_PROTOCOL_ERROR, "unmasked client frame");
    d->opcode = (uint8_t)op;
    d->fin = (b0 & 0x80) != 0;
    d->masked = (b1 & 0x80) != 0;
    d->len_end = (uint8_t)(2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0));
    d->hdr_need = (uint8_t)(d->len_end + (d->masked ? 4 : 0));
    return 0;
}

/* The payload length is in (the mask may still be to come): decode it and
 * check the message size limit, so an oversized message fails before any
 * of its payload or even its mask arrives.  Returns 0 or -1. */
static int ws_header_length(ws_decoder *d)
{
    unsigned len7 = d->hdr[1] & 0x7F;
    uint64_t len = len7;

    if (len7 == 126) {
        len = (uint64_t)d->hdr[2] << 8 | d->hdr[3];
    } else if (len7 == 127) {
        len = 0;
        for (unsigned i = 0; i < 8; i++)
            len = len << 8 | d->hdr[2 + i];
        if (len >> 63)
            return (int)ws_fail(d, WS_CLOSE_PROTOCOL_ERROR, "64-bit length with top bit set");
    }
    d->remaining = len;
    if (d->opcode & 0x8) {
        /* checked on the length, not the 7-bit field: a non-minimal
         * encoding of a short length is allowed here as everywhere */
        if (len > WS_MAX_CONTROL_PAYLOAD)
            return (int)ws_fail(d, WS_CLOSE_PROTOCOL_ERROR, "control frame too long");
    } else {
        uint64_t so_far = d->opcode == WS_OP_CONT ? d->msg_size : 0;
        if (len > UINT64_MAX - so_far || (d->max_message && so_far + len > d->max_message))
            return (int)ws_fail(d, WS_CLOSE_TOO_BIG, "message too big");
    }
    return 0;
}

/* The whole header is in: take the mask and open the message or the
 * control frame. */
static void ws_header_end(ws_decoder *d)
{
    if (d->masked) memcpy(d->mask, d->hdr + d->len_end, 4);
    d->mask_pos = 0;
    if (d->opcode & 0x8) {
        d->ctl_len = 0;
    } else {
        if (d->opcode != WS_OP_CONT) {
            d->msg_opcode = d->opcode;
            d->msg_size = 0;
            utf8_init(&d->utf8);
        }
        d->msg_size += d->remaining;
    }
    d->state = ST_PAYLOAD;
}

/* A control frame's payload is whole in d->ctl: validate and report it.
 * Returns the callback's verdict (0 go on), or -1 when d failed. */
static int ws_control_end(ws_decoder *d, const ws_callbacks *cb, void *ud)
{
    const uint8_t *pl = d->ctl;
    size_t n = d->ctl_len;

    d->state = ST_HEADER;
    d->hdr_have = 0;
    d->hdr_need = 2;
    switch (d->opcode) {
    case WS_OP_PING:
        return cb->on_ping ? (cb->on_ping(ud, pl, n) != 0) : 0;
    case WS_OP_PONG:
        return cb->on_pong ? (cb->on_pong(ud, pl, n) != 0) : 0;
    default: {
        unsigned code = WS_CLOSE_NO_STATUS;
        if (n == 1) return (int)ws_fail(d, WS_CLOSE_PROTOCOL_ERROR, "close payload of 1 byte");
        if (n >= 2) {
            code = (unsigned)pl[0] << 8 | pl[1];
            if (!ws_close_code_valid(code))
                return (int)ws_fail(d, WS_CLOSE_PROTOCOL_ERROR, "invalid close code");
            if (!utf8_valid(pl + 2, n - 2))
                return (int)ws_fail(d, WS_CLOSE_INVALID_DATA, "close reason not UTF-8");
        }
        d->state = ST_CLOSED;
        return cb->on_close ? (cb->on_close(ud, code, n > 2 ? (const char *)pl + 2 : "",
                                            n > 2 ? n - 2 : 0) != 0)
                            : 0;
    }
    }
}

ssize_t ws_decoder_feed(ws_decoder *d, uint8_t *data, size_t len, const ws_callbacks *cb, void *ud)
{
    if (d->state == ST_ERROR) return -1;
    if (len == 0) return 0; /* data may be NULL */

    uint8_t *p = data, *end = data + len;
    for (;;) {
        switch (d->state) {
        case ST_CLOSED:
            return (ssize_t)len;
        case ST_ERROR:
            return -1;
        case ST_HEADER:
            if (p == end) return (ssize_t)len;
            d->hdr[d->hdr_have++] = *p++;
            if (d->hdr_have == 2 && ws_header_start(d) < 0) return -1;
            if (d->hdr_have == d->len_end && ws_header_length(d) < 0) return -1;
            if (d->hdr_have == d->hdr_need) ws_header_end(d);
            continue;
        case ST_PAYLOAD:
            break;
        }

        /* ST_PAYLOAD: take what this feed has of it (maybe none, when the
         * frame is empty or the feed ended right after the header). */
        size_t n = (size_t)(end - p);
        if (d->remaining < n) n = (size_t)d->remaining;
        if (d->masked && n) {
            ws_unmask(p, n, d->mask, d->mask_pos);
            d->mask_pos = (uint8_t)((d->mask_pos + n) & 3);
        }
        d->remaining -= n;

        if (d->opcode & 0x8) {
            if (n) memcpy(d->ctl + d->ctl_len, p, n); /* remaining <= 125 - ctl_len */
            d->ctl_len = (uint8_t)(d->ctl_len + n);
            p += n;
            if (d->remaining) return (ssize_t)len; /* p == end */
            int rc = ws_control_end(d, cb, ud);
            if (rc < 0) return -1;
            if (rc) return p - data;
            continue;
        }

        bool last = d->remaining == 0;
        bool msg_end = last && d->fin;
        unsigned mop = d->msg_opcode;
        if (mop == WS_OP_TEXT) {
            utf8_result r = utf8_feed(&d->utf8, p, n);
            if (r == UTF8_INVALID || (msg_end && r != UTF8_OK))
                return ws_fail(d, WS_CLOSE_INVALID_DATA, "invalid UTF-8 in text message");
        }
        uint8_t *chunk = p;
        p += n;
        if (last) {
            d->state = ST_HEADER;
            d->hdr_have = 0;
            d->hdr_need = 2;
            if (msg_end) {
                d->msg_opcode = 0;
                d->msg_size = 0;
            }
        }
        if ((n || msg_end) && cb->on_data && cb->on_data(ud, (int)mop, chunk, n, msg_end))
            return p - data;
        if (!last) return (ssize_t)len; /* p == end */
    }
}

/* ---------------------------------------------------------------------------
 * Encoder
 * ------------------------------------------------------------------------- */

size_t ws_frame_header(uint8_t *out, int opcode, bool fin, uint64_t payload_len)
{
    out[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0F));
    if (payload_len < 126) {
        out[1] = (uint8_t)payload_len;
        return 2;
    }
    if (payload_len <= 0xFFFF) {
        out[1] = 126;
        out[2] = (uint8_t)(payload_len >> 8);
        out[3] = (uint8_t)payload_len;
        return 4;
    }
    out[1] = 127;
    for (unsigned i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)(payload_len >> (56 - 8 * i));
    return 10;
}

uint64_t ws_frame_size(uint64_t payload_len)
{
    return payload_len + (payload_len < 126 ? 2 : payload_len <= 0xFFFF ? 4 : 10);
}

size_t ws_close_payload(uint8_t *out, unsigned code, const char *reason, size_t reason_len)
{
    if (code == 0) return 0;
    out[0] = (uint8_t)(code >> 8);
    out[1] = (uint8_t)code;
    size_t n = reason_len;
    if (n > WS_MAX_CONTROL_PAYLOAD - 2) {
        n = WS_MAX_CONTROL_PAYLOAD - 2;
        /* Back off to the lead byte of a sequence cut in two. */
        while (n > 0 && ((uint8_t)reason[n] & 0xC0) == 0x80)
            n--;
    }
    if (n && !utf8_valid(reason, n)) n = 0;
    if (n) memcpy(out + 2, reason, n);
    return 2 + n;
}

size_t ws_close_frame(uint8_t *out, unsigned code, const char *reason, size_t reason_len)
{
    if (code == WS_CLOSE_NO_STATUS) code = 0;
    size_t n = ws_close_payload(out + 2, code, reason, reason_len);
    ws_frame_header(out, WS_OP_CLOSE, true, n);
    return 2 + n;
}

size_t ws_control_frame(uint8_t *out, int opcode, const void *payload, size_t len)
{
    if ((opcode != WS_OP_PING && opcode != WS_OP_PONG && opcode != WS_OP_CLOSE) ||
        len > WS_MAX_CONTROL_PAYLOAD)
        return 0;
    ws_frame_header(out, opcode, true, len);
    if (len) memcpy(out + 2, payload, len);
    return 2 + len;
}

/* ---------------------------------------------------------------------------
 * Handshake helpers
 * ------------------------------------------------------------------------- */

static const char ws_b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

static bool ws_is_b64(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

bool ws_key_valid(const char *key, size_t len)
{
    if (len != 24 || key[22] != '=' || key[23] != '=') return false;
    for (size_t i = 0; i < 22; i++)
        if (!ws_is_b64(key[i])) return false;
    return true;
}

int ws_accept_key(const char *key, size_t len, char out[WS_ACCEPT_KEY_LEN + 1])
{
    char buf[256 + sizeof(ws_guid)];
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    out[0] = '\0';
    if (len > 256) return -1;
    memcpy(buf, key, len);
    memcpy(buf + len, ws_guid, sizeof(ws_guid) - 1);
    if (!EVP_Digest(buf, len + sizeof(ws_guid) - 1, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20)
        return -1;
    /* 20 bytes: six full groups of three, then two bytes and one '='. */
    char *o = out;
    for (unsigned i = 0; i < 18; i += 3) {
        uint32_t v = (uint32_t)md[i] << 16 | (uint32_t)md[i + 1] << 8 | md[i + 2];
        *o++ = ws_b64[v >> 18];
        *o++ = ws_b64[(v >> 12) & 63];
        *o++ = ws_b64[(v >> 6) & 63];
        *o++ = ws_b64[v & 63];
    }
    uint32_t v = (uint32_t)md[18] << 16 | (uint32_t)md[19] << 8;
    *o++ = ws_b64[v >> 18];
    *o++ = ws_b64[(v >> 12) & 63];
    *o++ = ws_b64[(v >> 6) & 63];
    *o++ = '=';
    *o = '\0';
    return 0;
}

static bool ws_is_ows(char c)
{
    return c == ' ' || c == '\t';
}

bool ws_token_next(const char **pos, const char *end, const char **tok, size_t *tok_len)
{
    const char *p = *pos;

    while (p < end) {
        while (p < end && (ws_is_ows(*p) || *p == ','))
            p++;
        const char *s = p;
        while (p < end && *p != ',')
            p++;
        const char *e = p;
        while (e > s && ws_is_ows(e[-1]))
            e--;
        if (e > s) {
            *tok = s;
            *tok_len = (size_t)(e - s);
            *pos = p;
            return true;
        }
    }
    *pos = p;
    return false;
}

static char ws_lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

bool ws_token_list_has(const char *value, size_t len, const char *token)
{
    const char *pos = value, *end = value + len, *t;
    size_t tl, want = strlen(token);

    while (ws_token_next(&pos, end, &t, &tl)) {
        if (tl != want) continue;
        size_t i = 0;
        while (i < tl && ws_lower(t[i]) == ws_lower(token[i]))
            i++;
        if (i == tl) return true;
    }
    return false;
}
