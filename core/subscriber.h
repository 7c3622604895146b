/* subscriber.h: a connection that subscribes to topics, over whichever
 * transport its request asks for.
 *
 * sub_start() reads the request: `Upgrade: websocket` gives WebSocket,
 * `Accept: text/event-stream` gives Server-Sent Events, anything else a
 * long-poll (a short poll with ?timeout=0).  It sends the response head
 * only once the subscription is in place, replays what follows the resume
 * ID (opts, else Last-Event-ID, else ?last_event_id=, else ?since=), then
 * delivers live.  The transports live in wsconn.c, sseconn.c, longpoll.c;
 * what they share is in session.h. */
#ifndef SLUICE_SUBSCRIBER_H
#define SLUICE_SUBSCRIBER_H

#include "core/conn.h"
#include "core/hub.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct sub_session sub_session;

/* Callbacks into the app (the Lua layer); every one may be NULL. */
typedef struct sub_hooks {
    /* Per delivery: returns the message to send (m itself, or a new message
     * carrying a reference for the caller) or NULL to skip it. */
    hub_msg *(*filter)(void *ud, sub_session *s, hub_msg *m);
    /* A complete message a WebSocket client sent. */
    void (*on_message)(void *ud, sub_session *s, const char *data, size_t len, bool binary);
    /* The subscription ends (the connection closes or the poll answers). */
    void (*on_close)(void *ud, sub_session *s);
    /* Frees ud; called once, last. */
    void (*release)(void *ud);
    /* Optional: the session exists and is about to start (before any
     * other hook, and before it can end): `s` is the handle for
     * sub_close() from then until on_close. */
    void (*on_start)(void *ud, sub_session *s);
} sub_hooks;

typedef struct sub_request {
    const char *const *topics;
    const size_t *topic_lens;
    int ntopics;
    const char *last_event_id; /* NULL: take it from the request */
    size_t last_event_id_len;
    const char *protocol;      /* WebSocket subprotocol chosen by the app, or NULL */
    int json;                  /* WebSocket JSON envelopes: 1 yes, 0 no, -1 from ?format= */
    bool skip_self;            /* skip messages whose origin is this session */
    bool presence_events;      /* deliver the events sluice.join and sluice.leave */
    const char *const *events; /* deliver only these event names (nevents > 0) */
    const size_t *event_lens;
    int nevents;
    const sub_hooks *hooks;
    void *hooks_ud;
} sub_request;

typedef struct sub_config {
    double sse_heartbeat;  /* seconds between SSE comment lines */
    unsigned sse_retry_ms; /* the reconnection hint sent first */
    double ws_ping;        /* seconds of silence before a ping */
    size_t ws_max_message; /* bytes; larger client messages close with 1009
                            * (after inflation, with permessage-deflate) */
    bool ws_deflate;       /* accept permessage-deflate offers */
    size_t ws_deflate_min; /* messages shorter than this go uncompressed */
} sub_config;

extern sub_config sub_defaults;

/* Starts a subscription on a connection in CONN_HANDLING.  Returns 0 (the
 * session owns hooks_ud from then on), or an HTTP status with a reason in
 * *why when the request cannot subscribe (the caller answers it and still
 * owns hooks_ud). */
int sub_start(conn *c, hub *h, const sub_request *r, const char **why);

/* req.transport: "websocket" (Upgrade: websocket), "sse" (Accept:
 * text/event-stream), else for a GET "longpoll", or "poll" with
 * ?timeout=0; "http" for any other method.  The same tests as sub_start's
 * choice (an Upgrade to anything but websocket is ignored). */
const char *sub_transport_of(const http_request *req);

/* The session as a publisher identity (hub_publish's origin), so that
 * skip_self can recognise its own messages. */
static inline const void *sub_origin(const sub_session *s)
{
    return s;
}

/* The session's connection and transport name ("websocket", "sse",
 * "longpoll", "poll"). */
conn *sub_conn(sub_session *s);
const char *sub_transport(const sub_session *s);

/* The first topic the session subscribed to, as the app named it: a name,
 * or a prefix when *wildcard (the pattern is the prefix and '*').  NULL
 * when it follows none. */
const char *sub_first_topic(const sub_session *s, size_t *len, bool *wildcard);

/* WebSocket only: sends one message to this client.  Returns 0, SL_EGONE
 * when the session is not a WebSocket or has ended, SL_ELIMIT when the
 * client is too slow (it is then being closed with 1013), or SL_ENOMEM. */
int sub_send(sub_session *s, const char *data, size_t len, bool binary);

/* Why a session ended, for the line logged when a stream (WebSocket, SSE)
 * ends: the first reason given wins, so the admin or a slow-consumer
 * cut-off is not overwritten by the close they cause. */
typedef enum sub_end_reason {
    SUB_END_PEER = 0,       /* the client closed or the network failed */
    SUB_END_SLOW,           /* cut off: output over max_output */
    SUB_END_SHUTDOWN,       /* the server is stopping */
    SUB_END_ADMIN,          /* closed through the admin API */
    SUB_END_APP,            /* the app closed it (conn:close, expiry) */
    SUB_END_REFUSED,        /* its publish was refused (WebSocket 1013) */
    SUB_END_PROTOCOL,       /* the client broke the protocol or a limit */
    SUB_END_ERROR,          /* an error of ours (storage, memory) */
    SUB_END_RESUME_REFUSED, /* its resume was refused: too many at once (cluster) */
} sub_end_reason;
void sub_set_end_reason(sub_session *s, sub_end_reason why);

/* Ends the session: WebSocket close with `code` and `reason`; SSE and
 * long-poll end the response. */
void sub_close(sub_session *s, unsigned code, const char *reason);

/* Backpressure on what a WebSocket client publishes (from its
 * on_message): the app passes sub_publish_done and the session to
 * hub_publish, then calls sub_publish_queued(s) once hub_publish accepted
 * the message.  While SUB_MAX_PUBLISHING of a client's publishes wait for
 * their commit, its connection is not read, so a client that sends faster
 * than storage commits is slowed down instead of losing messages.  A
 * publish that storage refuses after it was queued closes the connection
 * with 1013 (try again later), is logged and counted.  The session stays
 * in memory until its last publish is answered. */
#define SUB_MAX_PUBLISHING 64
/* The done callback for a publish by s's on_message (NULL when s has
 * ended: nothing left to pace). */
hub_publish_fn sub_publish_pacer(const sub_session *s);
void sub_publish_queued(sub_session *s);
void sub_publish_done(void *ud, hub_msg *m, int status);

/* An on_message that waits (the app's coroutine yielded in
 * sluice.http.request): from sub_message_wait until sub_message_done the
 * session hands the app no further message, so a client's messages are
 * handled one at a time and in order.  Its input is paused at the end of
 * the message being handled (bytes already read are kept for after, as
 * for publishes waiting for storage), and the session stays in memory
 * (ended or not) until sub_message_done.  WebSocket only, one wait at a
 * time, loop thread. */
void sub_message_wait(sub_session *s);
void sub_message_done(sub_session *s);

/* Closes a WebSocket client whose publish was refused (1013, the reason
 * given), logs it (rate-limited) and counts it; for the app, when
 * hub_publish itself refuses. */
void sub_publish_refused(sub_session *s, const char *reason);

/* Connections by transport, and WebSocket clients cut off because their
 * publishes were refused, for /metrics. */
typedef struct sub_stats {
    unsigned websocket, sse, longpoll;
    unsigned long long publish_refused;
    /* Streams cut off because their output passed max_output (slow
     * consumers), by transport. */
    unsigned long long slow_websocket, slow_sse;
    /* Messages a subscriber's filter (the app's opts.filter) dropped. */
    unsigned long long filtered;
    /* Bytes written to WebSocket and SSE streams that have ended (add the
     * open ones' conn.sent for a total). */
    unsigned long long bytes_websocket, bytes_sse;
} sub_stats;
void sub_get_stats(sub_stats *st);

/* permessage-deflate on WebSocket connections, for /metrics: handshakes
 * that negotiated it, offers declined (bad parameters: no extension) and
 * handshakes refused (a Sec-WebSocket-Extensions that does not parse:
 * 400); client messages inflated, their bytes before and after, and
 * clients closed for a message past limits.max_ws_message once inflated
 * (1009) or for data that did not inflate (1007). */
typedef struct sub_deflate_stats {
    unsigned long long negotiated, declined, refused;
    unsigned long long inflated, inflated_in, inflated_out, too_big, bad_data;
} sub_deflate_stats;
void sub_deflate_get_stats(sub_deflate_stats *st);

/* The session a connection streams or holds (a WebSocket, an SSE stream,
 * a held long-poll), or NULL (plain HTTP, or none yet).  Loop thread. */
sub_session *sub_session_of(conn *c);

/* The i-th name the session follows (0 <= i < sub_topic_count): a topic,
 * or a prefix when *wildcard.  NULL past the end or once ended. */
int sub_topic_count(const sub_session *s);
const char *sub_topic_at(const sub_session *s, int i, size_t *len, bool *wildcard);

#endif
