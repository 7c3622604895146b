/* h2.h: HTTP/2 on a connection (libnghttp2's server session; no framing
 * here).
 *
 * A connection turns HTTP/2 when TLS agreed on ALPN "h2", or when a
 * cleartext client opens with the connection preface (h2c with prior
 * knowledge).  The socket's connection then belongs to this module, as a
 * stream transport (conn_stream_ops), and each HTTP/2 stream becomes a
 * connection of its own: a `conn` carried inside the first one
 * (conn->h2_stream).  A stream's request is handed to the same request
 * path as an HTTP/1.1 request (it is written out as one and parsed by the
 * same parser, with the same limits), so routes, Lua handlers and every
 * transport (SSE, long-poll, poll, publish, WebSocket by RFC 8441's
 * extended CONNECT) run on a stream unchanged: what they queue with
 * conn_send() goes to the stream's own output queue, shared buffers and
 * all, and the session sends it from there in DATA frames as the
 * stream's flow-control window allows (a pass's short events copied once
 * into the socket's buffer, long bodies handed on by reference).  A stream whose
 * queue passes the output limit (its reader stalled) is reset alone.
 *
 * Limits against the known attacks (rapid reset, CONTINUATION floods,
 * HPACK bombs, too many streams, SETTINGS and PING floods) end the
 * connection with GOAWAY; each is counted (h2_get_stats) and logged at a
 * limited rate.  docs/protocol.md, "HTTP/2", lists them.
 *
 * Loop thread only; lifetimes follow conn.h: a stream's conn is freed like
 * any other, the session at the end of the loop pass after its
 * connection closed. */
#ifndef SLUICE_H2_H
#define SLUICE_H2_H

#include "core/conn.h"

#include <stdbool.h>
#include <stddef.h>

#define H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define H2_PREFACE_LEN (sizeof(H2_PREFACE) - 1)

/* Streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_
 * STREAMS): a stream past it is refused (REFUSED_STREAM) before the client
 * acknowledged the setting, and ends the connection (GOAWAY
 * PROTOCOL_ERROR, libnghttp2's answer) after. */
#define H2_MAX_STREAMS 256

/* Whether `data` starts like the connection preface: its first 4 bytes
 * ("PRI "), and as much of the rest as there is, match. */
bool h2_is_preface(const char *data, size_t len);

/* Turns `c` (in CONN_HTTP, nothing queued, no request started) into an
 * HTTP/2 connection and feeds it `len` bytes already read (the preface,
 * for h2c; none after a TLS handshake that chose "h2").  Returns 0, or
 * SL_ENOMEM with the connection closed. */
int h2_start(conn *c, const char *data, size_t len);

/* For conn.c, on a stream's conn (c->h2_stream): output was queued (the
 * server's flush reached it); the transport asked to end it after its
 * output (conn_close_after_write); it is closing now (conn_close). */
void h2_stream_flush(conn *c);
void h2_stream_end(conn *c);
void h2_stream_closed(conn *c);

/* Marks a stream whose output passed the limit: its end resets it
 * (RST_STREAM CANCEL) rather than finishing its data. */
void h2_stream_cut(conn *c);

/* Whether queuing `len` more bytes on a stream that has output queued
 * would take its connection's streams past H2_CONN_OUTPUT_FACTOR times
 * max_output in all: a stalled connection holds about that, however many
 * streams it has (each stream alone is held to max_output).  A stream
 * whose queue stays under max_output / H2_MAX_STREAMS is not checked, so
 * the streams may hold up to one max_output more than the factor. */
#define H2_CONN_OUTPUT_FACTOR 4
bool h2_stream_over(conn *c, size_t len);

/* Counters over every worker, for /metrics. */
typedef struct h2_stats {
    unsigned long long connections; /* open HTTP/2 connections (gauge) */
    unsigned long long streams;     /* open streams (gauge) */
    unsigned long long streams_total;
    unsigned long long streams_cut; /* reset: their reader fell past the output limit */
    /* Connections ended (GOAWAY) or streams refused, by cause. */
    unsigned long long rapid_reset, continuation_flood, header_list, too_many_streams,
        settings_flood, ping_flood, flood, protocol_error;
} h2_stats;
void h2_get_stats(h2_stats *out);

#endif
