/* conn.h: one client connection, from accept to close.
 *
 * A connection moves through explicit states, and every transition goes
 * through conn.c's set_state():
 *
 *   TLS_HANDSHAKE -> HTTP (reading a request) -> HANDLING (the app has it)
 *        -> HTTP again (keep-alive) | STREAM (handed to a transport) | CLOSING
 *
 * In STREAM state a transport (WebSocket, SSE, long-poll) owns the
 * connection through conn_stream_ops; conn_end_stream() gives it back to
 * HTTP (a long-poll that answered), or the transport closes it.
 *
 * Memory: an idle connection holds only this struct; the HTTP parser, the
 * leftover bytes of pipelined requests and the output ring are allocated
 * while in use and freed when drained.
 *
 * Lifetime: conn_close() closes the socket at once and takes the
 * connection off every list, but never frees the struct under a caller:
 * the memory goes back at the end of the loop pass (server_defer), and
 * only once no hold is left: conn_hold()/conn_release() pin a connection
 * across loop passes while something (a Lua coroutine, a storage commit)
 * will come back to it.  A late callback sees conn_closed() instead of
 * freed memory. */
#ifndef SLUICE_CONN_H
#define SLUICE_CONN_H

#include "core/buf.h"
#include "core/http.h"
#include "core/io.h"
#include "core/server.h"

#include <ev.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>

typedef enum conn_state {
    CONN_TLS_HANDSHAKE,
    CONN_HTTP,     /* reading a request (or idle between requests) */
    CONN_HANDLING, /* a complete request is with the app */
    CONN_STREAM,   /* a transport owns the connection */
    CONN_CLOSING,  /* flushing a final answer, then lingering, then close */
    CONN_CLOSED
} conn_state;

typedef struct conn_stream_ops {
    const char *name; /* "websocket", "sse", "longpoll": for logs and metrics */
    /* Bytes read from the peer while streaming.  `data` may be modified. */
    void (*on_data)(conn *c, void *state, char *data, size_t len);
    /* The stream's timer (conn_stream_timer) fired. */
    void (*on_timer)(conn *c, void *state);
    /* The output queue was fully written (optional). */
    void (*on_drain)(conn *c, void *state);
    /* Its turn in the server's write order came, asked for with
     * conn_want_turn() (optional): what it queues now is written now. */
    void (*on_turn)(conn *c, void *state);
    /* The server is stopping: end the stream politely (optional). */
    void (*on_shutdown)(conn *c, void *state);
    /* The connection is closing or the stream ended: free `state`. */
    void (*on_close)(conn *c, void *state);
} conn_stream_ops;

struct conn {
    /* First, in one cache line (conn's are allocated 64-aligned in size
     * classes of 320 and 512 bytes): what each message of a fan-out reads
     * and writes (conn_send, schedule_flush, the pending list). */
    server *srv;
    uint8_t state;
    uint8_t io_events; /* events the watcher is started with */
    bool tls;
    uint8_t write_want; /* io_want of a write that met IO_AGAIN */
    uint8_t timer_kind; /* what the armed timer means (conn.c) */
    bool read_want_w;   /* TLS read wants the socket writable */
    bool lingering;     /* CLOSING: write side shut, draining input */
    bool drain_wait;    /* HTTP: too much output queued, parse later */
    bool keep_alive;    /* the current request allows another one */
    bool in_pending;    /* on srv's pending-write list */
    bool in_process;    /* inside the request loop (no re-entry) */
    /* One byte for these bits: a further byte would cost the struct 8. */
    bool head_request : 1;  /* the current request is HEAD: no body */
    bool held_input : 1;    /* HANDLING: bytes wait behind the held request */
    bool turn_wanted : 1;   /* on the pending-write list for the stream's on_turn */
    bool input_waiting : 1; /* STREAM: `pending` bytes wait for on_data (see
                             * conn_start_stream) */
    bool input_paused : 1;  /* STREAM: not read (conn_pause_input) */
    bool h2_stream : 1;     /* an HTTP/2 stream carried by another conn (h2.h):
                             * no socket of its own */
    bool h2_turn_asked : 1; /* h2_stream: its session takes new bytes without
                             * being told (h2.c; here, in the line conn_send
                             * reads, not in the stream's own state) */
    uint16_t refs;
    uint16_t resp_status; /* fills the padding here: a smaller conn */
    outq_t out;
    conn *pending_next; /* srv->pending_head; once closed and unheld,
                         * srv->closed_conns (freed at the pass's end) */
    /* Next, what its turn and write read. */
    io_t io;
    const conn_stream_ops *stream;
    void *stream_state;
    ev_io watcher;
    ev_timer timer;    /* the current state's deadline */
    http_parser *http; /* while a request is being read or handled */
    char *pending;     /* unparsed bytes behind the current request */
    uint32_t pending_len, pending_off;
    ev_tstamp req_start;
    conn *next, *prev; /* srv->conns */
    union {
        struct sockaddr sa;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
    } remote;
    char *resp_head; /* response head being built */
    uint32_t resp_len, resp_cap;
    char *extra_head; /* lines every head of this request's response gets (CORS) */
    uint64_t sent;    /* bytes written to the peer (the end-of-stream line) */
};

/* Accepts `fd` (non-blocking, already accepted) into the server. */
void conn_accept(server *srv, int fd, const struct sockaddr *addr, socklen_t alen, bool tls);

/* Frees the parsers this thread keeps for reuse (at the thread's end). */
void conn_parser_pool_drain(void);

/* Pins `c` (see above).  Every hold needs one release. */
void conn_hold(conn *c);
void conn_release(conn *c);
static inline bool conn_closed(const conn *c)
{
    return c->state == CONN_CLOSED;
}

/* Closes the connection now: the stream's on_close runs, queued output is
 * dropped, the socket closed.  The struct lives until the end of the loop
 * pass, or of the last release if later (see "Lifetime" above). */
void conn_close(conn *c);

/* Writes "ADDR:PORT" of the peer into out; returns out. */
const char *conn_remote_addr(const conn *c, char *out, size_t len);

/* --- Answering the request in CONN_HANDLING --------------------------- */

/* The request the app is handling (valid until the response is finished). */
http_request *conn_request(conn *c);

/* Starts a response.  Then any number of conn_response_header(), then
 * conn_response_finish().  Date, Content-Length and Connection are added by
 * the connection. */
void conn_response_start(conn *c, int status);

/* Adds a header.  Returns 0, SL_EINVAL (header not added) when the name
 * is not a token or the value holds CR, LF or NUL, or SL_ENOMEM. */
int conn_response_header(conn *c, const char *name, size_t nlen, const char *value, size_t vlen);

/* Adds header lines the server wrote itself ("Name: value\r\n"...), as
 * they are: no checks, for the constant headers of poll answers and
 * error bodies. */
void conn_response_lines(conn *c, const char *lines, size_t len);

/* Header lines ("Name: value\r\n"..., NUL-terminated, malloc'd: the
 * connection takes it; NULL clears) that the response to the current
 * request gets in its head, whichever code writes it (an app's answer, an
 * error, a poll's answer, an SSE head through conn_extra_head): the CORS
 * headers (core/cors.h).  Dropped once the response is finished or the
 * connection streams. */
void conn_set_extra_head(conn *c, char *lines);
const char *conn_extra_head(const conn *c); /* "" when none */

/* Finishes the response with `body` (copied; omitted on the wire for HEAD),
 * logs the access line and lets the connection read the next request. */
void conn_response_finish(conn *c, const char *body, size_t len);

/* A complete JSON error response {"error": msg}. */
void conn_respond_error(conn *c, int status, const char *msg);

/* --- Streaming --------------------------------------------------------- */

/* Switches a connection in CONN_HANDLING to a transport.  `head` (may be
 * NULL) is queued first: the 101 or 200 response head.  Bytes the client
 * already sent after the request (a first WebSocket frame in the same
 * packet as the Upgrade) are delivered to ops->on_data later, from the
 * loop, before anything read after them: never inside this call, so the
 * transport finishes its start (subscribing) before it sees any input. */
void conn_start_stream(conn *c, const conn_stream_ops *ops, void *state, buf_t *head);

/* Attaches transport state to a connection still in CONN_HANDLING (a held
 * long-poll): its on_close runs if the connection closes, on_timer when the
 * stream timer fires, on_shutdown when the server stops.  conn_detach()
 * removes it without calling on_close (the owner frees its own state). */
void conn_attach(conn *c, const conn_stream_ops *ops, void *state);
void conn_detach(conn *c);

/* Finishes a response whose body is made of shared buffer ranges (a
 * long-poll answer built from messages' encoded JSON): no copy. */
typedef struct conn_part {
    buf_t *buf;
    size_t off, len;
} conn_part;
void conn_response_finish_parts(conn *c, const conn_part *parts, int nparts);

/* Logs the access line for a stream that starts (101, 200). */
void conn_log_access(conn *c, int status);

/* STREAM: stops (true) or resumes (false) reading the peer, for
 * backpressure on what it sends: its bytes wait in the kernel, and its
 * TCP window closes. */
void conn_pause_input(conn *c, bool pause);

/* STREAM, inside on_data: gives back the bytes from `data` on that
 * on_data did not take (it paused input in the middle of a read): they
 * come again, before anything read later, once input resumes.  At most
 * one read's worth is held.  Returns 0, or SL_ENOMEM (the connection is
 * then closed). */
int conn_unread(conn *c, const char *data, size_t len);

/* (Re)arms the connection timer for the stream; 0 stops it. */
void conn_stream_timer(conn *c, double seconds);

/* Queues `len` bytes of `b` from `off` (a reference is taken).  Returns 0,
 * SL_ELIMIT when the connection is over its output limit (the caller
 * decides: a stream usually closes then), SL_ENOMEM, or SL_EGONE when it
 * is closed. */
int conn_send(conn *c, buf_t *b, size_t off, size_t len);

/* Queues a copy of `data`.  Same returns as conn_send(). */
int conn_send_copy(conn *c, const void *data, size_t len);

/* Queues a last message past the output limit (a close frame), then
 * closes once everything is written. */
void conn_send_final(conn *c, const void *data, size_t len);

/* Closes after the queued output is written (a final frame, an error). */
void conn_close_after_write(conn *c);

/* Puts `c` last in the server's write order, as if it had queued output,
 * and calls its stream's on_turn when its turn comes: a long-poll that got
 * a message answers then, with whatever else reached it meanwhile. */
void conn_want_turn(conn *c);

/* --- For server.c ------------------------------------------------------ */

/* Writes the output of the connections that queued some, oldest first,
 * until `budget` of them have written.  The rest stay queued, in order,
 * for the next call. */
void server_flush_pending(server *srv, size_t budget);

/* Frees the connections closed during this loop pass that nothing holds
 * (server_reap calls it). */
void server_free_closed(server *srv);

/* Asks a connection to end as the server stops: idle ones close, requests
 * in flight finish first, streams end through their on_shutdown. */
void conn_shutdown(conn *c);

/* --- For h2.c: a connection carried inside another -------------------- */

/* Initialises `c` (zeroed, the first member of the caller's stream
 * struct, freed with it) as an HTTP/2 stream of `parent`: same server,
 * peer and TLS flag, no socket, not in the server's connection list (the
 * limit and the gauges count sockets), state CONN_HTTP. */
void conn_carried_init(conn *c, conn *parent);

/* Feeds a carried conn its request, written as HTTP/1.1 (head and body):
 * parsed and handed to the app as a request read from a socket. */
void conn_carried_request(conn *c, const char *data, size_t len);

/* Bytes the peer sent on the stream after its request (WebSocket frames):
 * kept, and given to the transport's on_data from the loop.  Returns 0, or
 * -1 when more than `max` bytes would wait or out of memory (nothing
 * kept). */
int conn_carried_input(conn *c, const char *data, size_t len, size_t max);

/* Queues on `c` the first `n` bytes of `from` (a carried conn's queue),
 * moved with their references (outq_move): the HTTP/2 session hands a
 * DATA frame's body to its socket this way, never copying it.  Same
 * returns as conn_send(). */
int conn_send_moved(conn *c, outq_t *from, size_t n);

/* The carried conn's output queue was emptied by its carrier. */
void conn_carried_drained(conn *c);

#endif
