/* cluster.h: the record on NATS JetStream, for sluice nodes that share
 * their topics (SPEC.md, "Cluster"; docs/cluster.md).
 *
 * In cluster mode the record is a JetStream stream instead of the local
 * LMDB store: one stream per sluice cluster, one subject per topic
 * ("<STREAM>.<token>", the token a reversible encoding of the topic name,
 * see cluster_token_encode).  A publish goes to JetStream asynchronously
 * (js_PublishMsgAsync, never a blocking call on a worker's loop) and is
 * answered when JetStream's PubAck arrives, i.e. once the stream's
 * replicas (a quorum of them) have it.  Every node delivers from one
 * push consumer on the whole stream, so all nodes deliver in the stream's
 * order, the publishing node included.
 *
 * IDs are "<epoch>-<seq>" as in the store: the seq is the stream sequence,
 * the epoch one the creating node writes into the stream's description
 * ("sluice epoch=<base36>"), so an ID is valid on every node and an ID from
 * a deleted and re-created stream is recognised as unknown.
 *
 * Threads: the connection's I/O runs on a libev loop of its own thread
 * (cluster_loop.h), which also takes the live consumer's messages; the
 * NATS client still runs a few threads (the PubAcks' delivery, timers,
 * reconnection).  The ack callback given to cluster_open runs on the
 * client's PubAck thread (the loop's, for a publish the client refused,
 * and cluster_close's at close), the message callback on the loop's (or
 * the keeper's, after a jump in the stream's seqs): one at a time per
 * kind, the messages in stream order.  cluster_publish may be called from
 * any thread.  cluster_read and cluster_topics make JetStream API requests
 * and wait for their answers (bounded by CLUSTER_API_WAIT_MS each), from
 * any thread but the loop's: a resume calls them off the worker's loop
 * (hub_replay_async).  They fail at once (SL_EIO) while no NATS server is
 * connected. */
#ifndef SLUICE_CLUSTER_H
#define SLUICE_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/store.h"

#define CLUSTER_API_WAIT_MS 2000           /* one JetStream API request */
#define CLUSTER_PUBLISH_TIMEOUT_MS 5000    /* a publish without PubAck: 503 */
#define CLUSTER_WRITE_DEADLINE_MS 2000     /* a write to NATS that cannot proceed */
#define CLUSTER_DUPLICATE_WINDOW_S 600     /* Idempotency-Key window (SPEC.md) */
#define CLUSTER_MAX_INFLIGHT 65536         /* publishes waiting for a PubAck */
#define CLUSTER_SEND_QUEUE_MAX (16u << 20) /* publish bytes waiting for the loop's thread */
#define CLUSTER_OUTPUT_MAX (1u << 20)      /* bytes the client holds unwritten: no more given */
#define CLUSTER_READ_MAX 4096              /* messages one topic read brings */
#define CLUSTER_READ_TRIES 2               /* tries of a read whose request failed */
/* A topic's messages read one request each, before a consumer is made for
 * the rest: a get costs sluice and the servers together about a tenth of
 * a consumer, so past 8 the gets a large read wastes first add about a
 * fifth to its cost (bench/cluster_resume_herd.py, docs/cluster.md). */
#define CLUSTER_GET_MAX 8
#define CLUSTER_LOCK_SPINS 200   /* the client's mutexes: tries before waiting */
#define CLUSTER_HEADER_ROOM 2048 /* the most a publish's headers take (event, key, type) */
#define CLUSTER_START_WAIT_MS 30000        /* at start: JetStream answering, placing */
#define CLUSTER_SETTLED_MS 1000 /* a stream this old has taken every racing node's create */
#define CLUSTER_REFETCH_WAIT_MS 30000      /* reading again what the consumer skipped */
#define CLUSTER_CHECK_MS 1000              /* the consumer's copy checked against the leader's */
#define CLUSTER_CHECK_WAIT_MS 500          /* one such check */
#define CLUSTER_HEARTBEAT_MS 1000  /* the live consumer's idle heartbeat (2 missed: made anew) */
#define CLUSTER_RENEW_RETRY_MS 500 /* a consumer that could not be made anew: tried again */

struct cluster_opts {
    const char *servers; /* "nats://h:p[,nats://...]" (required) */
    const char *stream;  /* stream name; NULL: "SLUICE" */
    int replicas;        /* 0: 1 */
    const char *user, *password, *token, *creds;
    const char *tls_ca, *tls_cert, *tls_key;
    uint64_t max_per_topic; /* retention: messages kept per topic (0: 1000) */
    uint64_t max_age_ms;    /* retention: age (0: none) */
    size_t max_message;     /* the largest body the node takes: a warning at start when
                               the servers' max_payload cannot carry it with its headers */
};

/* A message delivered by the stream's consumer, borrowed for the call.
 * Or, with `gap` set, no message: retention deleted messages from seq on
 * before this node's consumer reached them, of this topic (topic NULL:
 * of topics this node cannot tell), told before the messages after them;
 * live subscribers get the gap signal (docs/cluster.md). */
struct cluster_msg {
    bool gap;
    const char *topic; /* decoded, NUL-terminated */
    size_t topic_len;
    const char *event; /* NULL: none */
    size_t event_len;
    const void *data;
    size_t data_len;
    uint64_t seq;   /* stream sequence */
    uint64_t epoch; /* the stream's, for the message's ID (cluster_epoch) */
    int64_t time_ms;
    unsigned flags; /* STORE_MSG_JSON: sent with Content-Type: application/json */
};

/* A PubAck (status 0, seq, duplicate: an Idempotency-Key retry whose seq
 * is the first publish's) or a failure (status SL_EIO: not known to be
 * stored, answer 503) for the `req` given to cluster_publish. */
typedef void (*cluster_ack_fn)(void *ud, void *req, int status, uint64_t seq, bool duplicate);
typedef void (*cluster_msg_fn)(void *ud, const struct cluster_msg *m);

struct cluster;

/* Checks the options without connecting (--check): 0, or SL_EINVAL with
 * the reason in err. */
int cluster_opts_check(const struct cluster_opts *o, char *err, size_t errlen);

/* Connects, creates the stream or checks that the existing one has these
 * settings (a stream with others is an error that names each difference),
 * and starts delivering every message published after now through
 * `deliver`.  Returns 0 and *out, or SL_EIO / SL_EINVAL / SL_ENOMEM with
 * the reason in err. */
int cluster_open(struct cluster **out, const struct cluster_opts *o, cluster_ack_fn ack,
                 cluster_msg_fn deliver, void *ud, char *err, size_t errlen);

/* Stops delivering, waits (bounded) for the PubAcks of publishes in
 * flight (each still gets its ack callback), and closes.  NULL: no-op. */
void cluster_close(struct cluster *c);

/* Queues a publish for the loop's thread (never waits for NATS: any
 * thread, a worker's loop included); `req` comes back in exactly one ack
 * callback when this returns 0, within CLUSTER_PUBLISH_TIMEOUT_MS of its
 * write.  ikey (NULL: none) makes JetStream drop a retry within
 * CLUSTER_DUPLICATE_WINDOW_S.  flags STORE_MSG_JSON: the message carries
 * the header Content-Type: application/json (reads and deliveries set the
 * flag back).  Returns 0, SL_EUNREACHABLE (not connected, as the client
 * last said), SL_EBUSY (too many in flight, or CLUSTER_SEND_QUEUE_MAX
 * bytes waiting for the loop: a server that reads nothing), SL_ETOOBIG
 * (the message with its headers is over the servers' max_payload: no
 * retry can store it), SL_ENOMEM. */
int cluster_publish(struct cluster *c, const char *topic, size_t tlen, const char *event,
                    size_t elen, const void *data, size_t len, const char *ikey, size_t iklen,
                    unsigned flags, void *req);

/* The epoch of the stream's IDs (from its description). */
uint64_t cluster_epoch(const struct cluster *c);

/* Parses a resume ID, with no request (a worker's loop calls it): 0 and
 * *seq for an ID of this stream (its epoch) at or before what this node
 * has seen; CLUSTER_ID_AHEAD and *seq for one of its epoch past that (a
 * message published through another node and not here yet, or a seq the
 * stream never had: cluster_read tells which); SL_EUNKNOWN for any other
 * well-formed or malformed ID.  Canonical text only, as store_id_parse. */
#define CLUSTER_ID_AHEAD 1
int cluster_id_parse(struct cluster *c, const char *id, size_t len, uint64_t *seq);

/* The newest stream seq this node has seen (delivered or acknowledged). */
uint64_t cluster_last_seq(const struct cluster *c);

/* True while a NATS server is connected. */
bool cluster_connected(const struct cluster *c);

/* False once the copy of the stream this node's consumer reads was seen to
 * disagree with the stream leader's (checked once a second while messages
 * come): its deliveries may miss messages or carry other IDs; restart. */
bool cluster_sound(const struct cluster *c);

/* Where a read must stop, taken before its topics are chosen (a
 * wildcard's expansion included): the newest of the stream's last message
 * now and what this node has seen.  A read up to it has everything
 * acknowledged before, on any node; what comes later reaches a reader
 * subscribed before live.  One JetStream request; 0 or SL_EIO. */
int cluster_horizon(struct cluster *c, uint64_t *seq);

/* As store_read_multi: the topics' messages with seq > after_seq, up to
 * `upto` (cluster_horizon's), merged in seq order, at most `limit` (0: no limit; a topic brings at
 * most CLUSTER_READ_MAX per call, and infos[i].more tells that a later call must go on), infos
 * filled per topic (exists, gap, more, delivered). A topic's gap is reported when retention may
 * have dropped a message of it after after_seq (docs/cluster.md says when: never missed, rarely
 * reported when nothing was).  Returns 0 or SL_EIO / SL_ENOMEM, or
 * SL_EUNKNOWN when after_seq is past `upto` (an ID cluster_id_parse
 * found ahead, that the stream never had). */
int cluster_read(struct cluster *c, const struct store_topic_ref *topics, size_t n,
                 uint64_t after_seq, uint64_t upto, size_t limit, store_read_fn fn, void *ud,
                 struct store_read_info *infos);

/* Calls fn for each topic of the stream whose name starts with prefix
 * (name, count, first/last seq are not filled: only name and name_len).
 * Returns 0 or SL_EIO. */
int cluster_topics(struct cluster *c, const char *prefix, size_t plen, store_topic_fn fn, void *ud);

/* Node-to-node notes that are not messages of the stream (the presence
 * tables of lua/shared.c): published with core NATS on the subject
 * "sluice-nodes.<STREAM>", not stored, at most once, to every node
 * connected now (this one included).  cluster_broadcast gives the note
 * to the client, whose loop writes it (never on a worker's loop: the call
 * takes the connection's lock, which a reconnection's handshake holds up
 * to CLUSTER_WRITE_DEADLINE_MS); 0, SL_EIO (not connected) or
 * SL_EINVAL (over the server's payload limit).  cluster_listen: fn(ud,
 * data, len) on the client's thread for each note, until cluster_close;
 * once per cluster.  Returns 0 or SL_EIO. */
typedef void (*cluster_note_fn)(void *ud, const void *data, size_t len);
int cluster_broadcast(struct cluster *c, const void *data, size_t len);
int cluster_listen(struct cluster *c, cluster_note_fn fn, void *ud);

/* The stream's own figures, asked of JetStream (one request, bounded at
 * 2 s; not for a worker's loop).  Returns 0 or SL_EIO. */
struct cluster_stream_state {
    uint64_t messages, bytes, topics, first_seq, last_seq;
};
int cluster_stream_state(struct cluster *c, struct cluster_stream_state *st);

/* Sets the stream's retention (max_msgs_per_subject, 0: 1000; max_age,
 * 0: none) for a reload whose sluice.topic rules changed it: every node
 * judges gaps by the stream's limit as it reads it, so one node's change
 * holds for all.  No request when this node's script gave the stream the
 * same at start or at its last reload, nor an update when the stream has
 * it already; else two requests, bounded at CLUSTER_API_WAIT_MS each (not
 * for a worker's loop).  One thread (the main one) calls it.  Returns 0,
 * or SL_EIO with the reason in err. */
int cluster_set_retention(struct cluster *c, uint64_t max_per_topic, uint64_t max_age_ms, char *err,
                          size_t errlen);

struct cluster_stats {
    uint64_t published, publish_failures, delivered, reconnects;
    uint64_t inflight;
    uint64_t refetched; /* messages the consumer skipped, read again */
    uint64_t repeats;   /* messages the consumer gave twice, dropped */
    uint64_t gaps;      /* messages deleted (or unreadable) before the consumer had them */
    uint64_t diverged;  /* repeats that were another message than the one at their seq */
    uint64_t renewals;  /* times the live consumer was made anew (reconnect, heartbeats) */
    uint64_t read_retries;  /* reads of the stream tried again after a request failed */
    uint64_t read_failures; /* reads of the stream that failed twice (their readers were told) */
    uint64_t read_gets;     /* messages read for a resume one request each */
    uint64_t read_consumers; /* topic reads for a resume that made a short-lived consumer */
    bool connected;
};
void cluster_get_stats(const struct cluster *c, struct cluster_stats *st);

/* A message as the stream leader answers $JS.API.STREAM.MSG.GET: a JSON
 * object with its subject, seq, time, and its headers and data in base64
 * (how a resume reads a few messages of a topic: cluster_read).
 * cluster_got_parse fills g from the answer's len bytes and returns 0;
 * SL_ENOTFOUND when the answer says the stream has no such message;
 * SL_EPROTO for another error answer, a malformed one, or a message of
 * another subject than `subject`; SL_ENOMEM.  On 0, free g->data (NUL-
 * terminated) with cluster_got_free; on an error nothing is left to free. */
struct cluster_got {
    uint64_t seq;
    int64_t time_ms;
    unsigned flags; /* STORE_MSG_JSON */
    char event[256];
    size_t event_len; /* 0: none */
    char *data;
    size_t data_len;
};
int cluster_got_parse(const char *json, size_t len, const char *subject, struct cluster_got *g);
void cluster_got_free(struct cluster_got *g);

/* The subject token of a topic name: bytes of [A-Za-z0-9_:-] as they are,
 * every other byte (dots, '*', '>', spaces, '%', non-ASCII) as "%XX"
 * (upper-case hex), so any byte string maps to one valid, wildcard-free
 * NATS token and back.  Writes at most 3 * len bytes and a NUL into out
 * (outlen at least 3 * len + 1); returns the token's length, or 0 when
 * outlen is too small. */
size_t cluster_token_encode(const char *s, size_t len, char *out, size_t outlen);

/* The inverse: returns the decoded length, or -1 for a token that
 * cluster_token_encode does not produce (bad escape, lower-case hex, a
 * byte escaped that needs none, or one that needed escaping left bare). */
long cluster_token_decode(const char *tok, size_t len, char *out, size_t outlen);

#endif
