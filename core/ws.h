/* ws.h: the WebSocket (RFC 6455) frame codec and handshake helpers.
 *
 * A pure state machine in the manner of wslay and llhttp: the decoder keeps
 * all its state in a struct the caller owns, takes whatever bytes the socket
 * gave (split anywhere, down to one byte per call), unmasks payload in place
 * in the caller's buffer and reports messages through callbacks.  It never
 * allocates and never copies data payload; only control-frame payloads
 * (at most 125 bytes, needed whole) are buffered inside the struct.  Every
 * rule RFC 6455 puts on a server reading client frames is enforced here, so
 * the connection code only has to send the close code the decoder names.
 *
 * The encoder writes server frames (never masked): a header into a small
 * buffer, to be sent ahead of a payload the caller already holds, which lets
 * one published payload be framed once and shared by every subscriber.
 *
 * The handshake helpers compute Sec-WebSocket-Accept (SHA-1 from libcrypto),
 * check Sec-WebSocket-Key, search the comma-separated token lists of
 * Connection, Upgrade and Sec-WebSocket-Protocol, and negotiate the
 * permessage-deflate extension (RFC 7692) from Sec-WebSocket-Extensions.
 * The codec itself never compresses: with the extension on, the decoder
 * lets RSV1 mark a message's first frame and hands that message's bytes,
 * still compressed, to on_compressed; core/wsz.h inflates them. */
#ifndef SLUICE_CORE_WS_H
#define SLUICE_CORE_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/err.h"
#include "core/utf8.h"

/* Frame opcodes (RFC 6455 section 5.2). */
enum ws_opcode {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

/* Close status codes (RFC 6455 section 7.4.1) that sluice sends or reports. */
enum ws_close_code {
    WS_CLOSE_NORMAL = 1000,
    WS_CLOSE_GOING_AWAY = 1001,
    WS_CLOSE_PROTOCOL_ERROR = 1002,
    WS_CLOSE_UNSUPPORTED = 1003,
    WS_CLOSE_NO_STATUS = 1005, /* never on the wire: "close frame had no code" */
    WS_CLOSE_ABNORMAL = 1006,  /* never on the wire: "no close frame at all" */
    WS_CLOSE_INVALID_DATA = 1007,
    WS_CLOSE_POLICY = 1008,
    WS_CLOSE_TOO_BIG = 1009,
    WS_CLOSE_INTERNAL_ERROR = 1011,
    WS_CLOSE_TRY_AGAIN_LATER = 1013,
};

#define WS_MAX_HEADER 10           /* server frame header: 2 + 8, no mask */
#define WS_MAX_CONTROL_PAYLOAD 125 /* RFC 6455 section 5.5 */
#define WS_MAX_CONTROL_FRAME (2 + WS_MAX_CONTROL_PAYLOAD)
#define WS_DEFAULT_MAX_MESSAGE (1024 * 1024)
#define WS_ACCEPT_KEY_LEN 28 /* base64 of a SHA-1; ws_accept_key adds a NUL */

/* ---------------------------------------------------------------------------
 * Decoder
 * ------------------------------------------------------------------------- */

/* Events of ws_decoder_feed.  Each member may be NULL to ignore that event.
 * Each returns 0 to go on, or non-zero to make ws_decoder_feed return at
 * once (see there for how many bytes count as consumed).  Pointers passed
 * to a callback are valid only during that call.
 *
 * on_data: a chunk of a text or binary message.  opcode is the message's
 *   (WS_OP_TEXT or WS_OP_BINARY, also for the chunks of continuation frames).
 *   data points into the caller's buffer, already unmasked; chunks follow
 *   frame and feed boundaries, so a message may come in any number of
 *   chunks.  fin is true on the last chunk of the message, and only then may
 *   len be 0 (an empty message, or a final empty continuation frame); no
 *   other empty chunk is reported.  For text, the bytes reported so far are
 *   always a valid UTF-8 prefix, and the whole message is valid UTF-8 once
 *   fin is seen.  The decoder has checked the message size limit already.
 * on_ping / on_pong: a whole ping or pong frame, its payload (0..125 bytes).
 *   The reply to a ping (a pong with the same payload) is the caller's job.
 * on_compressed: like on_data, for a message whose first frame had RSV1 set
 *   (permessage-deflate, only once ws_decoder_allow_deflate was called):
 *   the bytes are the compressed payload, not checked as UTF-8 (the caller
 *   checks the inflated text) and bounded by max_message as sent.  When it
 *   is NULL such messages go to on_data.
 * on_close: a whole, valid close frame.  code is the status it carries, or
 *   WS_CLOSE_NO_STATUS (1005) if it had none; reason is its UTF-8 reason
 *   (len 0..123, not NUL-terminated).  The decoder is finished afterwards
 *   (see ws_decoder_closed); the caller answers with its own close frame,
 *   usually echoing code (but send none for 1005: see ws_close_frame). */
typedef struct ws_callbacks {
    int (*on_data)(void *ud, int opcode, const uint8_t *data, size_t len, bool fin);
    int (*on_ping)(void *ud, const uint8_t *payload, size_t len);
    int (*on_pong)(void *ud, const uint8_t *payload, size_t len);
    int (*on_close)(void *ud, unsigned code, const char *reason, size_t len);
    int (*on_compressed)(void *ud, int opcode, const uint8_t *data, size_t len, bool fin);
} ws_callbacks;

/* Decoder state.  The caller owns it (embed it in the connection); it owns
 * nothing and needs no cleanup.  Fields are private except err_code and
 * err_reason, readable after ws_decoder_feed returned SL_EPROTO.
 *
 * Rules enforced (close code): client frames masked (1002, if required);
 * RSV bits clear (1002), except RSV1 on the first frame of a text or binary
 * message once permessage-deflate is on (RSV1 on a continuation or control
 * frame stays 1002: RFC 7692 section 6); opcode known (1002); control frames final and at
 * most 125 bytes (1002); continuation only inside a message, a new text or
 * binary frame only outside one (1002); a 64-bit length below 2^63 (1002);
 * a message's total size within max_message, checked from each frame's
 * header (1009); text valid UTF-8 across fragments, checked as bytes arrive
 * (1007); close payload not 1 byte long (1002), its code valid on the wire
 * (1002), its reason valid UTF-8 (1007).  Non-minimal length encodings are
 * accepted, as RFC 6455 does not forbid them on receipt. */
typedef struct ws_decoder {
    /* limits */
    uint64_t max_message; /* 0: none */
    bool require_mask;
    bool deflate; /* permessage-deflate negotiated: RSV1 allowed (see above) */
    /* current frame */
    uint8_t state;
    uint8_t hdr_have, len_end, hdr_need;
    uint8_t hdr[14];
    uint8_t opcode;
    bool fin;
    bool masked;
    uint8_t mask[4];
    uint8_t mask_pos;
    uint64_t remaining;
    /* current data message (msg_opcode 0: none in progress) */
    uint8_t msg_opcode;
    bool msg_compressed; /* its first frame had RSV1 */
    uint64_t msg_size;
    utf8_state utf8;
    /* control frame payload, gathered whole */
    uint8_t ctl_len;
    uint8_t ctl[WS_MAX_CONTROL_PAYLOAD];
    /* the violation, once state is the error state */
    unsigned err_code;      /* close code to send: 1002, 1007 or 1009 */
    const char *err_reason; /* static string, short enough for a close reason */
} ws_decoder;

/* ws_decoder_init: set up d for a new connection.  max_message bounds a data
 * message's total payload across its fragments (0: no bound; sluice passes
 * its max message size, WS_DEFAULT_MAX_MESSAGE by default).  require_mask:
 * true for a server (client frames must be masked, RFC 6455 section 5.1);
 * false accepts masked and unmasked frames alike (a client reading server
 * frames, or tests).  No extension is negotiated, so RSV bits are errors. */
void ws_decoder_init(ws_decoder *d, uint64_t max_message, bool require_mask);

/* ws_decoder_allow_deflate: permessage-deflate was negotiated: from now on
 * RSV1 on the first frame of a text or binary message marks it compressed
 * and its bytes go to on_compressed.  Call it after ws_decoder_init. */
void ws_decoder_allow_deflate(ws_decoder *d);

/* ws_decoder_feed: consume len bytes of the stream from the peer.
 *
 * data is modified: payload bytes are unmasked in place, and on_data's
 * pointers point into it (data may be NULL when len is 0).  cb must not be
 * NULL (its members may be); ud is passed to every callback.  Bytes may
 * arrive in any split; a header or control payload cut short is kept in d
 * until the next feed.
 *
 * Returns:
 *  - len when all bytes were consumed and no callback stopped the feed;
 *  - when a callback returned non-zero: the count of bytes up to and
 *    including those of the event it was told of (the chunk's bytes for
 *    on_data, the frame's last byte for the others), which may be len.
 *    Nothing after them has been read or unmasked, so the caller resumes by
 *    feeding data + count later (or drops the rest).  The caller knows a
 *    stop happened since its own callback asked for it;
 *  - SL_EPROTO on a protocol violation: d->err_code is the close code to send
 *    (1002 protocol error, 1007 invalid UTF-8, 1009 message too big) and
 *    d->err_reason a short static text for the close reason and the log.
 *    Events before the violation were reported; the chunk holding invalid
 *    UTF-8 is not.  From then on every feed returns SL_EPROTO at once.
 *
 * After a valid close frame (on_close) the decoder is finished: the bytes
 * after it, in this feed and later ones, are consumed and ignored (a peer
 * may send nothing after its close frame, and a server is closing anyway). */
ssize_t ws_decoder_feed(ws_decoder *d, uint8_t *data, size_t len, const ws_callbacks *cb, void *ud);

/* ws_decoder_closed: true once a close frame was decoded. */
bool ws_decoder_closed(const ws_decoder *d);

/* ws_decoder_in_message: true while a fragmented data message is open (its
 * final frame not yet seen); a server that closes for going away may use it
 * for logging. */
bool ws_decoder_in_message(const ws_decoder *d);

/* ws_decoder_idle: true iff the decoder sits between frames with no message
 * in progress, so it holds no state a fresh ws_decoder_init would not: the
 * caller may free it and make a new one when bytes arrive (an idle
 * connection then keeps no decoder). */
bool ws_decoder_idle(const ws_decoder *d);

/* ws_close_code_valid: true iff code may appear in a close frame on the
 * wire: 1000-1003, 1007-1014, 3000-4999 (RFC 6455 section 7.4 and the IANA
 * registry; 1004-1006 and 1015 are reserved, 1016-2999 unassigned). */
bool ws_close_code_valid(unsigned code);

/* ---------------------------------------------------------------------------
 * Encoder (server to client: never masked)
 * ------------------------------------------------------------------------- */

/* Or'ed into ws_frame_header's opcode: set RSV1, the frame (the first, or
 * only, of a message) carries a permessage-deflate payload. */
#define WS_FRAME_COMPRESSED 0x40

/* ws_frame_header: write the header of one unmasked frame into out (room for
 * WS_MAX_HEADER bytes) and return its length (2, 4 or 10), using the
 * shortest length encoding.  opcode is a WS_OP_* value, with
 * WS_FRAME_COMPRESSED or'ed in for a compressed message; fin false starts or
 * continues a fragmented message.  The caller sends payload_len bytes of
 * payload after it and keeps control frames within 125 bytes and FIN set. */
size_t ws_frame_header(uint8_t *out, int opcode, bool fin, uint64_t payload_len);

/* ws_frame_size: bytes of a whole unmasked frame (header + payload) for a
 * payload of payload_len bytes, for sizing one buffer ahead. */
uint64_t ws_frame_size(uint64_t payload_len);

/* ws_close_payload: build a close frame's payload into out (room for
 * WS_MAX_CONTROL_PAYLOAD bytes): code in network order, then reason cut to
 * fit 123 bytes at a code-point boundary.  Returns the payload length.  A
 * reason that is not valid UTF-8 is left out rather than sent, since the
 * peer would fail the connection on it.  code 0 builds the empty payload
 * (a close without status, the answer to a close that carried none);
 * reason may be NULL when reason_len is 0. */
size_t ws_close_payload(uint8_t *out, unsigned code, const char *reason, size_t reason_len);

/* ws_close_frame: a whole close frame (header + ws_close_payload) into out
 * (room for WS_MAX_CONTROL_FRAME bytes); returns its length.  Same rules as
 * ws_close_payload; pass code WS_CLOSE_NO_STATUS or 0 for an empty close. */
size_t ws_close_frame(uint8_t *out, unsigned code, const char *reason, size_t reason_len);

/* ws_control_frame: a whole ping, pong or close frame with the given payload
 * into out (room for WS_MAX_CONTROL_FRAME bytes); returns its length, or 0
 * if opcode is not a control opcode or len exceeds 125 (nothing written).
 * payload may be NULL when len is 0. */
size_t ws_control_frame(uint8_t *out, int opcode, const void *payload, size_t len);

/* ---------------------------------------------------------------------------
 * Handshake helpers (RFC 6455 section 4.2)
 * ------------------------------------------------------------------------- */

/* ws_key_valid: true iff the Sec-WebSocket-Key value (len bytes, surrounding
 * whitespace already trimmed, as the HTTP parser does) is the base64 form of
 * exactly 16 bytes: 22 base64 characters then "==". */
bool ws_key_valid(const char *key, size_t len);

/* ws_accept_key: Sec-WebSocket-Accept for key (len bytes, trimmed): base64
 * of SHA-1(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").  Writes 28
 * characters and a NUL into out.  Returns 0, SL_EINVAL if len > 256 (no
 * valid key is that long) or SL_ENOMEM if libcrypto fails; out is then the
 * empty string. */
int ws_accept_key(const char *key, size_t len, char out[WS_ACCEPT_KEY_LEN + 1]);

/* ws_token_next: step through a comma-separated HTTP header list (RFC 9110
 * section 5.6.1: elements separated by commas and optional whitespace, empty
 * elements skipped).  *pos starts at value and advances through the list;
 * end is value + its length.  On each element, sets *tok and *tok_len (not
 * NUL-terminated, whitespace trimmed) and returns true; returns false when
 * none is left.  Elements are returned as they are (a Sec-WebSocket-Protocol
 * token, or "keep-alive", or even "a=b" for lists with parameters). */
bool ws_token_next(const char **pos, const char *end, const char **tok, size_t *tok_len);

/* ws_token_list_has: true iff the header list value (len bytes) has an
 * element equal to token (NUL-terminated), ignoring ASCII case: for
 * "Connection: keep-alive, Upgrade" and token "upgrade", true.  Call it once
 * per header line when a header repeats (the elements add up). */
bool ws_token_list_has(const char *value, size_t len, const char *token);

/* ---------------------------------------------------------------------------
 * permessage-deflate negotiation (RFC 7692 sections 5 and 7.1)
 * ------------------------------------------------------------------------- */

/* What the server agreed to.  sluice always compresses without context
 * takeover, so that one compressed frame of a message can be shared by
 * every subscriber (the response says server_no_context_takeover), and
 * always asks the client for client_no_context_takeover (section 7.1.1.2
 * lets the server ask whether or not the offer had it), so that nothing of
 * zlib outlives a message on either side and an idle connection holds no
 * inflate state. */
typedef struct ws_deflate_params {
    /* The client's window for what the server sends (server_max_window_bits
     * of the offer, 8..15; 15 when the offer had none).  sluice compresses
     * with a 2^15 window, whose matches never reach further back than the
     * message's length: a message of at most 2^bits bytes fits any such
     * client; longer ones go to it uncompressed (section 7.2.1 lets any
     * message go uncompressed).  Echoed in the response when offered. */
    uint8_t server_max_window_bits;
    bool server_window_offered;
} ws_deflate_params;

/* ws_deflate_negotiate: reads one Sec-WebSocket-Extensions header value
 * (len bytes: a comma-separated list of offers, each a name and
 * ;-separated parameters, values as tokens or quoted strings) and takes
 * the first permessage-deflate offer the server can accept.  Pure: no
 * allocation, any bytes.  Offers of other extensions are skipped.  An
 * offer is declined (section 7.1: the next one is tried) when it has an
 * unknown parameter, a parameter twice, a value where none belongs, or a
 * window size outside 8..15.  Returns:
 *    1  accepted: *out is filled (call ws_deflate_response for the answer);
 *    0  no acceptable offer in this value: no extension (the handshake goes
 *       on without it); *declined counts the permessage-deflate offers
 *       declined (may be NULL);
 *   SL_EINPUT  the value does not parse as an extension list (RFC 6455 section
 *       9.1): the server may fail the handshake with 400.
 * A header that repeats gives one value per line: call it on each, in
 * order, until one returns 1. */
int ws_deflate_negotiate(const char *value, size_t len, ws_deflate_params *out,
                         unsigned *declined);

/* ws_deflate_response: the Sec-WebSocket-Extensions value that accepts p
 * ("permessage-deflate; server_no_context_takeover;
 * client_no_context_takeover[; server_max_window_bits=N]") into out (room
 * for WS_DEFLATE_RESPONSE_MAX bytes with the NUL); returns its length. */
#define WS_DEFLATE_RESPONSE_MAX 112
size_t ws_deflate_response(const ws_deflate_params *p, char *out);

/* ws_deflate_fits: whether a message of len bytes may go compressed to a
 * client with these parameters (see server_max_window_bits). */
static inline bool ws_deflate_fits(const ws_deflate_params *p, uint64_t len)
{
    return p->server_max_window_bits >= 15 || len <= (1ULL << p->server_max_window_bits);
}

#endif
