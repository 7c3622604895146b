/* session.h: what the three transports share (internal to core/): the
 * session struct, the resume-and-subscribe sequence, and delivery. */
#ifndef SLUICE_SESSION_H
#define SLUICE_SESSION_H

#include "core/subscriber.h"
#include "core/ws.h"

/* A transport, as the session layer sees it: wsconn.c, sseconn.c and
 * longpoll.c each define one, and subscriber.c reaches them only through
 * this table (it picks the first whose `serves` accepts the request). */
typedef struct sub_transport_ops {
    const char *name; /* "websocket", "sse", "longpoll": logs, req.transport */
    /* Ends at its first delivery and replays one page (a poll), instead of
     * streaming the backlog page by page then live. */
    bool oneshot;
    bool (*serves)(const http_request *req);
    /* Answers the handshake and subscribes (session_subscribe_and_replay);
     * returns 0, or an HTTP status and *why when it cannot start. */
    int (*start)(sub_session *s, const sub_request *r, const http_request *req, const char **why);
    /* Every message the subscriber examines, before the filters (a poll's
     * cursor moves past what they drop); may be NULL. */
    void (*seen)(sub_session *s, const hub_msg *m);
    void (*send_msg)(sub_session *s, hub_msg *m);
    /* The gap signal: messages before the first replayed one were missed. */
    void (*send_gap)(sub_session *s, const char *topic, size_t len);
    /* Messages held for the answer (a poll's page), 0 for streams. */
    unsigned (*held)(const sub_session *s);
    /* sub_send (NULL: the transport carries no app messages). */
    int (*send_data)(sub_session *s, const char *data, size_t len, bool binary);
    /* sub_close: a WebSocket close, or the end of the response. */
    void (*close)(sub_session *s, unsigned code, const char *reason);
    /* Frees the transport's part of the session (at the reap). */
    void (*reap)(sub_session *s);
    /* A poll's page read off the loop (cluster mode) is back and delivered
     * (rc 0, or the read's SL_E* code): answer or wait, as start does after
     * a read on the loop.  NULL: the transport's replay is read on the loop
     * or page by page (streams). */
    void (*replayed)(sub_session *s, int rc);
    /* A stream's backlog could not be read, or its read was refused
     * (SL_ELIMIT): it ends, telling the client, which resumes later.
     * NULL for polls (their `replayed` answers). */
    void (*replay_failed)(sub_session *s, int rc);
} sub_transport_ops;

extern const sub_transport_ops ws_transport, sse_transport, lp_transport;

/* A list of names copied into one allocation (pointers, lengths, bytes). */
typedef struct sub_names {
    int n;
    size_t *lens;
    char *names[];
} sub_names;

/* Copies n names; NULL when out of memory.  Free with free(). */
sub_names *sub_names_copy(const char *const *names, const size_t *lens, int n);

/* session_subscribe_and_replay's answer when a poll's replay is read off
 * the loop: the transport's `replayed` comes later. */
#define SESSION_REPLAY_PENDING 1

/* A long-poll's state (allocated only for polls). */
typedef struct lp_state {
    unsigned limit;
    unsigned count;
    unsigned cap; /* msgs grows on demand: most polls answer one message */
    hub_msg **msgs;
    bool gap;
    bool oom;           /* a message could not be held: answer 503 */
    bool waiting;       /* replay done: a live message answers at once */
    int8_t failed;      /* the replay's SL_E* code: answer 503, the cursor kept */
    double timeout;     /* the poll's wait once its replay is done */
    uint8_t since_len;  /* the cursor to answer when nothing came */
    uint8_t cursor_len; /* 0: no message examined yet */
    char since[HUB_ID_MAX];
    char cursor[HUB_ID_MAX]; /* ID of the last message examined */
} lp_state;

/* A session's life.  Every change goes through the functions below:
 * LIVE or CATCHING_UP from sub_start, CATCHING_UP -> LIVE when a stream's
 * replay is done, any -> ENDED through session_end. */
typedef enum session_state {
    SESSION_LIVE,        /* subscribed: messages are delivered as they come */
    SESSION_CATCHING_UP, /* replaying the backlog in pages: live waits for it */
    SESSION_ENDED        /* unsubscribed, hooks released: delivers nothing,
                          * its memory is freed at the end of the loop pass */
} session_state;

/* The largest WebSocket client message limits.max_ws_message may allow:
 * the message being assembled is counted in 32 bits. */
#define WS_MESSAGE_MAX ((size_t)1 << 30)

/* Kept small: every subscriber has one, and most sit idle. */
struct sub_session {
    conn *c;
    hub *hub;
    hub_sub **subs;
    uint64_t last_seq; /* newest seq delivered: older ones are duplicates */
    /* The app's hooks while the session lives.  Once it has ended the same
     * bytes are the node that hands it to the server (server_defer): an
     * ended session's hooks are never read (every call checks
     * session_ended first), and an idle subscriber stays 16 bytes smaller. */
    union {
        struct {
            const sub_hooks *hooks;
            void *hooks_ud;
        };
        server_deferred reap;
    };
    sub_names *replay; /* while catching up: the topics to read */
    sub_names *events; /* the events option: deliver only these names */
    const sub_transport_ops *tp;
    /* Packed by size, so that the session stays 128 bytes (mimalloc's
     * 128-byte bin): 8 bytes more cost every subscriber 32. */
    uint16_t nsubs;
    uint16_t holds;       /* session_hold: work that comes back to it later */
    uint8_t state;        /* session_state */
    bool json;            /* WebSocket JSON envelopes */
    bool short_poll;      /* long-poll with timeout=0 */
    bool in_replay;       /* inside a replay pass: no nested one */
    bool skip_self;       /* not the messages this session's client published */
    uint8_t end_why;      /* sub_end_reason: why it ended (the end-of-stream line) */
    bool presence_events; /* sluice.join and sluice.leave are delivered */
    uint8_t ws_msg_op;    /* WebSocket: the opcode of the message being assembled */
    uint32_t msgs;        /* messages handed to the transport (the same line) */
    /* WebSocket and SSE: the commit time (wall ms, low 32 bits, | 1) of
     * the oldest live message queued and not yet written (0: none), for
     * the publish-to-flush histogram. */
    uint32_t flush_from;
    bool ws_pong_pending : 1; /* WebSocket: a ping went out, its pong not yet seen */
    bool ws_app_waiting : 1;  /* WebSocket: the app waits in on_message
                                 (sub_message_wait): the next message waits */
    uint8_t ws_deflate_bits; /* permessage-deflate: 0 when not negotiated, else the
                              * client's server_max_window_bits (ws_deflate_fits) */
    uint16_t ws_publishing;  /* WebSocket: its publishes not yet committed */
    union {
        struct {
            ws_decoder *dec;               /* only while a frame is partly received */
            char *msg;                     /* the client message being assembled */
            struct wsz_inflater *inflater; /* only while a compressed
                                            * client message is arriving */
            uint32_t msg_len, msg_cap;     /* below WS_MESSAGE_MAX */
        } ws;
        lp_state *lp;
    } t;
};

/* A stream's output was all written (its on_drain): the time from the
 * oldest live message's commit to now goes to the hub's publish-to-flush
 * histogram. */
void session_flushed(sub_session *s);

/* Delivers a message to the session (the hub's callback). */
void session_deliver(void *owner, hub_msg *m);

/* A query parameter's raw (still encoded) value; v is NULL when absent. */
typedef struct query_span {
    const char *v;
    size_t len;
} query_span;

/* Where a subscriber resumes: read from the request before the transport
 * takes the connection (the request is freed then).  `ids` is NULL, or the
 * ?last_event_id and ?since values the caller found with its own
 * query_find (one pass over the query for all a poll reads). */
typedef struct resume_point {
    bool present; /* a resume ID was given */
    bool known;   /* ...and it is one of ours: replay after `after` */
    bool unverified; /* ...past what this node has seen (cluster mode): the read tells */
    uint64_t after;
    char id[HUB_ID_MAX]; /* the ID as given, when known (a poll echoes it) */
    uint8_t id_len;
} resume_point;
void session_resume_point(const sub_session *s, const sub_request *r, const http_request *req,
                          const query_span ids[2], resume_point *rp);

#define REPLAY_PAGE_BYTES (256 * 1024) /* data replayed per page to a stream */

/* Subscribes to every topic and replays after the resume point in global
 * seq order, sending the transport's gap signal first when messages were
 * missed.  A oneshot transport (a poll) gets one page of `replay_limit`
 * messages; a stream gets pages of REPLAY_PAGE_BYTES, the next one each
 * time its output has drained (session_replay_more), and live messages
 * flow once it has caught up.  Returns 0, SL_EGONE when the client was
 * cut off during the replay (s has ended, still readable until the pass
 * ends), or another SL_E* code (no memory, a storage error). */
int session_subscribe_and_replay(sub_session *s, const sub_request *r, const resume_point *rp,
                                 unsigned replay_limit);

/* A stream's output drained: replay the next page if catching up.  Returns
 * 0, SL_EGONE or another SL_E* code as above. */
int session_replay_more(sub_session *s);

static inline bool session_ended(const sub_session *s)
{
    return s->state == SESSION_ENDED;
}

/* Ends the session: unsubscribes everything, runs on_close and release, and
 * hands the memory to the server, which frees it at the end of the loop
 * pass (server_defer): whoever called in with `s` (a frame decoder, a
 * fan-out, a replay) may still read it, and sees session_ended().  A
 * second call does nothing. */
void session_end(sub_session *s);

/* Pins the session (and its connection) for work that comes back to it
 * in a later loop pass (a WebSocket client's publishes waiting for their
 * commit): an ended session is handed to the reap at the last release. */
void session_hold(sub_session *s);
void session_release(sub_session *s);

/* Whether a header holds `token`, case-insensitively (transport choice). */
bool header_contains(const http_request *req, const char *name, const char *token);

/* The first value of each of names[0..n), in one pass over the query: a
 * poll reads several parameters, and the query was scanned once per name.
 * Names past QUERY_FIND_MAX are not looked for (their v stays NULL). */
#define QUERY_FIND_MAX 8
void query_find(const http_request *req, const char *const *names, int n, query_span *out);

/* A found value decoded into out (NUL-terminated); returns its length,
 * SL_ENOTFOUND when absent, SL_ESPACE when longer than cap - 1. */
int query_decode(const query_span *sp, char *out, size_t cap);

/* query_find and query_decode for one name. */
int query_param(const http_request *req, const char *name, char *out, size_t cap);

/* Whether the subscriber gets JSON envelopes with JSON messages embedded:
 * the app's format option, else ?format=json. */
bool session_format_json(const sub_request *r, const http_request *req);

/* A poll's ?timeout: 0 when absent (*seconds untouched), 1 with the value
 * in *seconds, SL_EINVAL when it is not a number of seconds.  The _parse form
 * takes the value query_find found. */
int poll_timeout_param(const http_request *req, double *seconds);
int poll_timeout_parse(const query_span *sp, double *seconds);

/* Counters by transport. */
extern sub_stats sub_counts;

#endif
