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

void ws_decoder_allow_deflate(ws_decoder *d)
{
    d->deflate = true;
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
    return SL_EPROTO;
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

    /* RSV1 is permessage-deflate's "compressed" bit, legal only on the
     * first frame of a data message (RFC 7692 section 6). */
    bool rsv1 = (b0 & 0x40) != 0;
    if ((b0 & 0x30) || (rsv1 && (!d->deflate || (op != WS_OP_TEXT && op != WS_OP_BINARY))))
        return (int)ws_fail(d, WS_CLOSE_PROTOCOL_ERROR, "reserved bits set");
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
            d->msg_compressed = (d->hdr[0] & 0x40) != 0;
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
    if (d->state == ST_ERROR) return SL_EPROTO;
    if (len == 0) return 0; /* data may be NULL */

    uint8_t *p = data, *end = data + len;
    for (;;) {
        switch (d->state) {
        case ST_CLOSED:
            return (ssize_t)len;
        case ST_ERROR:
            return SL_EPROTO;
        case ST_HEADER:
            if (p == end) return (ssize_t)len;
            d->hdr[d->hdr_have++] = *p++;
            if (d->hdr_have == 2 && ws_header_start(d) < 0) return SL_EPROTO;
            if (d->hdr_have == d->len_end && ws_header_length(d) < 0) return SL_EPROTO;
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
            if (rc < 0) return SL_EPROTO;
            if (rc) return p - data;
            continue;
        }

        bool last = d->remaining == 0;
        bool msg_end = last && d->fin;
        unsigned mop = d->msg_opcode;
        bool compressed = d->msg_compressed;
        if (mop == WS_OP_TEXT && !compressed) {
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
        int (*deliver)(void *, int, const uint8_t *, size_t, bool) =
            compressed && cb->on_compressed ? cb->on_compressed : cb->on_data;
        if ((n || msg_end) && deliver && deliver(ud, (int)mop, chunk, n, msg_end))
            return p - data;
        if (!last) return (ssize_t)len; /* p == end */
    }
}

/* ---------------------------------------------------------------------------
 * Encoder
 * ------------------------------------------------------------------------- */

size_t ws_frame_header(uint8_t *out, int opcode, bool fin, uint64_t payload_len)
{
    out[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & (WS_FRAME_COMPRESSED | 0x0F)));
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
    if (len > 256) return SL_EINVAL;
    memcpy(buf, key, len);
    memcpy(buf + len, ws_guid, sizeof(ws_guid) - 1);
    if (!EVP_Digest(buf, len + sizeof(ws_guid) - 1, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20)
        return SL_ENOMEM;
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

/* ---------------------------------------------------------------------------
 * permessage-deflate negotiation
 * ------------------------------------------------------------------------- */

/* RFC 9110 tchar. */
static bool ws_is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* A cursor over an extension list, RFC 6455 section 9.1:
 *   list  = 1#( name *( OWS ";" OWS param ) )
 *   param = token [ OWS "=" OWS ( token / quoted-string ) ]
 * with the quoted string's content a token once unquoted (RFC 6455 9.1). */
typedef struct ext_cursor {
    const char *p, *end;
} ext_cursor;

static void ext_ows(ext_cursor *c)
{
    while (c->p < c->end && ws_is_ows(*c->p))
        c->p++;
}

/* A token at the cursor into (*t, *tl); false when there is none. */
static bool ext_token(ext_cursor *c, const char **t, size_t *tl)
{
    const char *s = c->p;
    while (c->p < c->end && ws_is_tchar((unsigned char)*c->p))
        c->p++;
    *t = s;
    *tl = (size_t)(c->p - s);
    return *tl > 0;
}

/* A value: a token, or a quoted string whose content (after unescaping
 * quoted pairs) must be a token; copied into out (cap bytes, NUL added).
 * Returns its length, -1 for bad syntax, -2 when it does not fit. */
static int ext_value(ext_cursor *c, char *out, size_t cap)
{
    size_t n = 0;
    if (c->p < c->end && *c->p == '"') {
        c->p++;
        for (;;) {
            if (c->p >= c->end) return -1;
            char ch = *c->p++;
            if (ch == '"') break;
            if (ch == '\\') {
                if (c->p >= c->end) return -1;
                ch = *c->p++;
            }
            if (!ws_is_tchar((unsigned char)ch)) return -1;
            if (n + 1 >= cap) return -2;
            out[n++] = ch;
        }
        if (n == 0) return -1;
    } else {
        const char *t;
        size_t tl;
        if (!ext_token(c, &t, &tl)) return -1;
        if (tl + 1 > cap) return -2;
        memcpy(out, t, tl);
        n = tl;
    }
    out[n] = '\0';
    return (int)n;
}

static bool ext_name_is(const char *t, size_t tl, const char *name)
{
    size_t n = strlen(name);
    if (tl != n) return false;
    for (size_t i = 0; i < n; i++)
        if (ws_lower(t[i]) != name[i]) return false;
    return true;
}

/* A window size value: "8".."15" exactly (no sign, no leading zero). */
static int ext_window_bits(const char *v, int vl)
{
    if (vl == 1 && v[0] == '8') return 8;
    if (vl == 1 && v[0] == '9') return 9;
    if (vl == 2 && v[0] == '1' && v[1] >= '0' && v[1] <= '5') return 10 + (v[1] - '0');
    return -1;
}

enum {
    PMD_SNCT = 1,  /* server_no_context_takeover */
    PMD_CNCT = 2,  /* client_no_context_takeover */
    PMD_SMWB = 4,  /* server_max_window_bits */
    PMD_CMWB = 8,  /* client_max_window_bits */
};

int ws_deflate_negotiate(const char *value, size_t len, ws_deflate_params *out,
                         unsigned *declined)
{
    ext_cursor c = {value, value + len};
    unsigned ndeclined = 0;
    int found = 0;

    for (;;) {
        /* Skip empty list elements (RFC 9110 5.6.1). */
        while (c.p < c.end && (ws_is_ows(*c.p) || *c.p == ','))
            c.p++;
        if (c.p >= c.end) break;
        const char *name;
        size_t nl;
        if (!ext_token(&c, &name, &nl)) return SL_EINPUT;
        bool pmd = ext_name_is(name, nl, "permessage-deflate");
        bool ok = pmd && !found;
        unsigned seen = 0;
        ws_deflate_params p = {.server_max_window_bits = 15};
        ext_ows(&c);
        while (c.p < c.end && *c.p == ';') {
            c.p++;
            ext_ows(&c);
            const char *pn;
            size_t pl;
            if (!ext_token(&c, &pn, &pl)) return SL_EINPUT;
            ext_ows(&c);
            char v[16];
            int vl = -3; /* no value */
            if (c.p < c.end && *c.p == '=') {
                c.p++;
                ext_ows(&c);
                vl = ext_value(&c, v, sizeof(v));
                if (vl == -1) return SL_EINPUT;
                ext_ows(&c);
            }
            if (!ok) continue; /* another extension's, or an offer already out */
            unsigned bit = ext_name_is(pn, pl, "server_no_context_takeover")   ? PMD_SNCT
                           : ext_name_is(pn, pl, "client_no_context_takeover") ? PMD_CNCT
                           : ext_name_is(pn, pl, "server_max_window_bits")     ? PMD_SMWB
                           : ext_name_is(pn, pl, "client_max_window_bits")     ? PMD_CMWB
                                                                               : 0;
            if (!bit || (seen & bit)) {
                ok = false; /* unknown or repeated parameter */
                continue;
            }
            seen |= bit;
            if (bit == PMD_SNCT || bit == PMD_CNCT) {
                if (vl != -3) ok = false; /* these take no value */
            } else if (bit == PMD_SMWB) {
                int w = vl >= 0 ? ext_window_bits(v, vl) : -1;
                if (w < 0) {
                    ok = false; /* a value is required, 8..15 */
                } else {
                    p.server_max_window_bits = (uint8_t)w;
                    p.server_window_offered = true;
                }
            } else if (vl != -3 && (vl < 0 || ext_window_bits(v, vl) < 0)) {
                ok = false; /* client_max_window_bits: none, or 8..15 */
            }
        }
        if (c.p < c.end && *c.p != ',') return SL_EINPUT; /* junk after the offer */
        if (ok) {
            *out = p;
            found = 1; /* the rest is still parsed: a bad list is a 400 */
        } else if (pmd && !found) {
            ndeclined++;
        }
    }
    if (declined) *declined = ndeclined;
    return found;
}

size_t ws_deflate_response(const ws_deflate_params *p, char *out)
{
    static const char base[] =
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
    size_t n = sizeof(base) - 1;
    memcpy(out, base, n);
    if (p->server_window_offered) {
        static const char w[] = "; server_max_window_bits=";
        memcpy(out + n, w, sizeof(w) - 1);
        n += sizeof(w) - 1;
        unsigned b = p->server_max_window_bits;
        if (b >= 10) out[n++] = (char)('0' + b / 10);
        out[n++] = (char)('0' + b % 10);
    }
    out[n] = '\0';
    return n;
}
