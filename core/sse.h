/* sse.h: the Server-Sent Events wire format (WHATWG HTML, "Server-sent
 * events", section 9.2), encoder and a small whole-stream parser.
 *
 * Each published message is encoded once into a buffer that every SSE
 * subscriber shares, so encoding is two passes the caller drives: the *_size
 * function gives the exact byte count, the caller allocates one buffer
 * (buf_new), the *_encode function fills it.  Nothing here allocates, does
 * I/O or keeps state between calls.
 *
 * An event is written as
 *     id: <id>\n            (only when id_len > 0)
 *     event: <event>\n      (only when event is non-NULL and non-empty)
 *     data: <line>\n        (one per line of the data; "data:\n" when empty)
 *     \n
 * The data is split at every CR, LF and CRLF, as EventSource's own line
 * parser would split it, so no CR ever reaches the wire inside a line.  What
 * a client's EventSource dispatches for such an event (a MessageEvent) is:
 *   - data: the input with every CRLF, lone CR and lone LF replaced by one
 *     LF; byte-exact whenever the input has no CR.  Empty data gives one
 *     "data:" line and an event whose data is "" (it is still dispatched);
 *     data ending in a line break gives a trailing empty "data:" line and
 *     the client's data ends in "\n".
 *   - type: event, or "message" when event is NULL or empty (an event named
 *     "message" is therefore indistinguishable from an unnamed one).
 *   - lastEventId: id; with no id line the previous event's id stays.
 * A browser decodes the stream as UTF-8, replacing invalid sequences, so
 * data that is not valid UTF-8 must be base64-encoded by the caller first.
 *
 * id, event and comments are single-line fields: they must not contain CR,
 * LF or NUL (a NUL in an id makes EventSource ignore the id; CR/LF would let
 * one field inject others).  The encoders reject them with SL_EFIELD;
 * sse_field_valid lets a publisher reject a bad event name up front. */
#ifndef SLUICE_CORE_SSE_H
#define SLUICE_CORE_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/err.h"

/* Errors: SL_E* codes of core/err.h, named with each function. */

/* sse_field_valid: true iff the len bytes at s (NULL allowed when len is 0)
 * contain no CR, LF or NUL, i.e. can be an id, event name or comment. */
bool sse_field_valid(const char *s, size_t len);

/* sse_event_size: the exact number of bytes sse_event_encode writes for the
 * same arguments, or SL_EFIELD when id or event is not a valid field.
 *   id, id_len:       the event id; id_len 0 writes no id line (id may then
 *                     be NULL).
 *   event, event_len: the event name, or NULL (or event_len 0) for none.
 *   data, data_len:   the payload, any bytes (NULL allowed when data_len is
 *                     0); see the header comment for what a client sees.
 * Costs one scan of data for line breaks. */
ssize_t sse_event_size(const char *id, size_t id_len, const char *event, size_t event_len,
                       const char *data, size_t data_len);

/* sse_event_encode: writes the event to out (cap bytes), no NUL added.
 * Returns the bytes written, equal to sse_event_size of the same arguments;
 * SL_EFIELD when id or event is not a valid field (nothing written); or
 * SL_ESPACE when cap is too small (out then holds a partial event).
 * Inputs must not overlap out. */
ssize_t sse_event_encode(char *out, size_t cap, const char *id, size_t id_len, const char *event,
                         size_t event_len, const char *data, size_t data_len);

/* sse_comment_size: the exact size of the comment ": <text>\n\n" (":\n\n" when
 * len is 0), the heartbeat that keeps proxies from timing the stream out;
 * EventSource ignores it.  SL_EFIELD when text is not a valid field. */
ssize_t sse_comment_size(const char *text, size_t len);

/* sse_comment_encode: writes that comment to out; returns the bytes written,
 * SL_EFIELD (nothing written) or SL_ESPACE (nothing written). */
ssize_t sse_comment_encode(char *out, size_t cap, const char *text, size_t len);

/* sse_retry_size: the exact size of "retry: <ms>\n\n", the hint that sets the
 * client's reconnection delay in milliseconds. */
size_t sse_retry_size(uint32_t ms);

/* sse_retry_encode: writes that hint to out; returns the bytes written or
 * SL_ESPACE (nothing written). */
ssize_t sse_retry_encode(char *out, size_t cap, uint32_t ms);

/* ---- Parser ----
 * An EventSource model for tests and fuzzing (and any client-side tool):
 * feed it a whole stream and it reports what a browser would dispatch,
 * following the spec's algorithm byte for byte (lines end at CRLF, CR or
 * LF; one leading space of a value is dropped; a leading UTF-8 BOM is
 * skipped; "data" appends value + LF; dispatch on an empty line strips the
 * last LF and drops events with no data field at all; an "id" value with a
 * NUL is ignored; "retry" needs ASCII digits only; unknown fields are
 * ignored; an unterminated last line and an undispatched last event are
 * discarded, as at end of stream).  It works on bytes: no UTF-8 decoding. */

/* One dispatched event.  Pointers are valid during the callback only. */
struct sse_parsed {
    const char *id; /* the last event ID string ("" when none yet) */
    size_t id_len;
    const char *type; /* the event type, "message" when none was given */
    size_t type_len;
    const char *data; /* the data buffer with its last LF removed */
    size_t data_len;
};

/* Callbacks of sse_parse; any may be NULL.  A non-zero return stops the
 * parse, and sse_parse returns that value (use positive values, so they
 * cannot be mistaken for SL_ESPACE). */
struct sse_parse_cb {
    int (*on_event)(void *ud, const struct sse_parsed *ev);
    int (*on_retry)(void *ud, uint64_t ms);                    /* saturates at UINT64_MAX */
    int (*on_comment)(void *ud, const char *text, size_t len); /* after ':' */
};

/* sse_parse: parses the len bytes at in (NULL allowed when len is 0) as a
 * complete event stream, calling cb with ud.  scratch (scratch_cap bytes)
 * holds the data buffer being assembled; scratch_cap >= len always
 * suffices and is required.  Returns 0, a callback's non-zero value, or
 * SL_ESPACE when scratch_cap < len (nothing parsed). */
int sse_parse(const char *in, size_t len, char *scratch, size_t scratch_cap,
              const struct sse_parse_cb *cb, void *ud);

#endif
