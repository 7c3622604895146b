/* jsonenc.h: JSON string literals and message objects, written into a
 * buffer the caller sized exactly.
 *
 * The long-poll answer items {"id":..,"event":..,"data":..} and the WebSocket
 * ?format=json envelopes {"id":..,"topic":..,"event":..,"data":..} are built
 * once per message and shared by every subscriber, so the writer is split in
 * two passes the caller drives: *_size says exactly how many bytes, the
 * caller allocates one buffer (buf_new), *_encode fills it.  Nothing here
 * allocates or reads anything but its arguments.
 *
 * Precondition for every string passed in (ids, topics, event names, data
 * that is not flagged for base64): it is valid UTF-8 (utf8_valid in
 * core/utf8.h).  Valid UTF-8 goes out byte for byte, so non-ASCII text costs
 * nothing; invalid input would make the output invalid JSON, which is why
 * the caller base64-encodes such data first (or lets json_msg_encode do it
 * with JSON_MSG_BASE64).  Builds without NDEBUG assert the precondition.
 *
 * Escapes: '"' and '\\' as \" and \\, \b \f \n \r \t in their short forms,
 * every other byte below 0x20 as \u00XX (lower-case hex).  '/', DEL and
 * U+2028/U+2029 are not escaped: RFC 8259 does not ask for it and JSON.parse
 * accepts them. */
#ifndef SLUICE_CORE_JSONENC_H
#define SLUICE_CORE_JSONENC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "core/err.h"

/* Errors: SL_E* codes of core/err.h, named with each function. */

/* json_string_size: the exact number of bytes json_string_encode writes for
 * the len bytes at s, both quotes included.  s may be NULL when len is 0. */
size_t json_string_size(const char *s, size_t len);

/* json_string_encode: writes s (len bytes, valid UTF-8; NULL allowed when
 * len is 0) as a JSON string literal with its quotes to out, no NUL added.
 * Returns the bytes written (json_string_size(s, len)), or SL_ESPACE when
 * cap is too small (out then holds a partial literal).  s and out must not
 * overlap. */
ssize_t json_string_encode(char *out, size_t cap, const char *s, size_t len);

/* Flags of struct json_msg. */
enum {
    /* Write a "topic" member (WebSocket envelopes); without it there is no
     * topic member at all (long-poll items, whose answer is per topic). */
    JSON_MSG_TOPIC = 1u << 0,
    /* data holds raw bytes (not valid UTF-8): write it base64-encoded
     * (RFC 4648, padded) and add "encoding":"base64" after "data", which is
     * how a client tells.  Without the flag data is written as text and no
     * "encoding" member appears. */
    JSON_MSG_BASE64 = 1u << 1,
    /* data is a JSON text (json_valid): written as it is, as the value of
     * "data", followed by "encoding":"json", which is how a client tells
     * it from a string.  Not with JSON_MSG_BASE64. */
    JSON_MSG_RAW = 1u << 2,
};

/* One message as a JSON object.  Pointers are borrowed for the duration of
 * the call only.  All text must be valid UTF-8 (see above). */
struct json_msg {
    const char *id; /* required, written as a string */
    size_t id_len;
    const char *topic; /* with JSON_MSG_TOPIC: NULL writes "topic":null */
    size_t topic_len;
    const char *event; /* NULL writes "event":null; "" writes "event":"" */
    size_t event_len;
    const void *data; /* NULL allowed when data_len is 0 */
    size_t data_len;
    unsigned flags; /* JSON_MSG_* */
};

/* json_valid: true iff the len bytes at s are one JSON text (RFC 8259):
 * valid UTF-8, one value of any kind, whitespace around it allowed, at
 * most JSON_VALID_DEPTH arrays and objects deep (deeper: false).  Strict:
 * no trailing commas, comments, NaN, single quotes or leading zeros.
 * Linear, allocates nothing. */
#define JSON_VALID_DEPTH 256
bool json_valid(const char *s, size_t len);

/* json_msg_size: the exact number of bytes json_msg_encode writes for m:
 *   {"id":"..","topic":"..","event":"..","data":"..","encoding":"base64"}
 * (with JSON_MSG_RAW: "data":<the JSON text>,"encoding":"json")
 * with no spaces, members in that order, topic and encoding per m->flags. */
size_t json_msg_size(const struct json_msg *m);

/* json_msg_encode: writes m as one JSON object to out, no NUL added.
 * Returns the bytes written (json_msg_size(m)), or SL_ESPACE when cap is
 * too small (out then holds a partial object). */
ssize_t json_msg_encode(char *out, size_t cap, const struct json_msg *m);

#endif
