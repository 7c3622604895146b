/* hub.h: topics, subscribers, message IDs, the durable backlog and fan-out.
 *
 * There is one hub per worker (event loop): its topic table holds that
 * worker's subscribers only, and only that thread touches it.  What workers
 * share is the bus: the store and its one writer thread.  A publish on any
 * worker goes to the writer (storage/writer.h), which appends whatever is
 * queued in one LMDB transaction and one sync (group commit).  After the
 * commit the writer hands the message, by reference and in commit order, to
 * the inbox of every hub on the bus (no copy, no allocation: the message
 * carries one inbox link per hub) and wakes each worker through the `wake`
 * callback its embedder gives (an ev_async).  Each worker then fans out to
 * its own subscribers, and the publisher's worker acknowledges it:
 * hub_poll() does both.  With relaxed durability (no fsync, a commit of
 * microseconds) the writer thread is not woken per publish: each worker
 * commits its own queued publishes at the end of its loop pass
 * (hub_commit_pending), then fans out, in one pass and with no thread
 * hand-off.  A durable store does the same for a publish that is alone in
 * the queue while the disk flushes fast (HUB_LONE_COMMIT_MAX_US): one
 * publish at a time then pays the flush but not the hand-offs.
 *
 * IDs come from the store: "<epoch>-<seq>", one global seq across topics,
 * so one Last-Event-ID resumes a connection subscribed to several topics,
 * and a new epoch at every start, so an ID from a wiped or restored data
 * directory is recognised as unknown instead of mistaken for a position.
 *
 * A message is encoded once per wire form, on first need, into a shared
 * buf_t: the raw data with headroom for a WebSocket frame header, the JSON
 * object (same trick: WebSocket JSON frames and long-poll items share it),
 * and the SSE event.  Subscribers on every worker queue references to those
 * buffers; the first worker to need a form builds it, the others wait for
 * it (a few microseconds), so each form is built exactly once.
 *
 * Replay then live is one path: hub_replay() reads the backlog after an ID
 * from LMDB and hands it over in seq order, then the subscriber is live;
 * both run on the loop thread, and a subscriber drops anything whose seq it
 * has already passed, so the seam has no gap and no duplicate. */
#ifndef SLUICE_HUB_H
#define SLUICE_HUB_H

#include "core/buf.h"
#include "storage/store.h"
#include "storage/writer.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HUB_HEADROOM 10   /* bytes before data/JSON for a frame header */
#define HUB_TOPIC_MAX 200 /* topic names: 1..200 bytes of [A-Za-z0-9_.:-] */
#define HUB_EVENT_MAX 128 /* event names: 1..128 bytes, no CR/LF/NUL */
#define HUB_ID_MAX 40     /* longest ID string, with the NUL */
#define HUB_DEFAULT_BACKLOG 1000

typedef struct hub hub;
typedef struct hub_bus hub_bus;
typedef struct hub_topic hub_topic;

typedef struct hub_msg {
    uint32_t refs; /* atomic: workers share a message */
    uint64_t seq;
    char *topic; /* NUL-terminated */
    size_t topic_len;
    int64_t time_ms; /* publish time, for max_age */
    char *event;     /* NULL when none */
    size_t event_len;
    buf_t *raw;                /* HUB_HEADROOM bytes, then the data */
    size_t len;                /* data bytes */
    bool binary;               /* data is not valid UTF-8: base64 on text transports */
    bool is_json;              /* data is a JSON text published as such
                                  (STORE_MSG_JSON): JSON forms embed it */
    uint8_t raw_hdr, json_hdr; /* WebSocket header bytes in each headroom */
    uint8_t json_state, sse_state; /* built once across workers (see hub.c) */
    buf_t *json;                   /* HUB_HEADROOM bytes, then the JSON object */
    size_t json_len;
    buf_t *sse;         /* the whole SSE event */
    buf_t *sse_topic;   /* the SSE event of streams over several topics */
    uint8_t sse_topic_state;
    /* permessage-deflate forms of the raw and JSON frames (hub_msg_ws_deflated):
     * NULL once built when compressing did not make the payload smaller. */
    buf_t *zraw, *zjson;
    uint32_t zraw_len, zjson_len;   /* compressed payload bytes */
    uint8_t zraw_state, zjson_state; /* built once across workers */
    uint8_t zraw_hdr, zjson_hdr;
    const void *origin; /* who published it (skip_self); not stored */
    char id[HUB_ID_MAX];
    uint8_t id_len;
    struct hub *home;             /* the publisher's hub; NULL: none */
    struct pending *pending;      /* the ack to give; only `home` reads it */
    uint16_t ninbox;              /* hubs it can be queued to */
    bool duplicate;               /* a retry answered with the first publish's ID
                                     (Idempotency-Key): not stored, no fan-out */
    bool ack_only;                /* cluster mode: a PubAck for its publisher; the
                                     fan-out comes from the stream's consumer */
    struct hub_replay_page *page; /* not a message: a page read off the loop, back
                                     (hub_replay_async) */
    bool gap;                     /* cluster mode: no message: retention deleted
                                     messages of `topic` (empty: of any) from seq on
                                     before this node had them: live subscribers
                                     get the gap signal */
    struct hub_msg *inbox_next[]; /* one link per hub on the bus */
} hub_msg;

/* Called for each message a subscriber gets (live or replayed).  It may
 * do anything to any subscription, its own or others' (unsubscribe,
 * subscribe, close a connection): a fan-out in progress skips what was
 * unsubscribed and frees it once it is over. */
typedef void (*hub_deliver_fn)(void *owner, hub_msg *msg);

typedef struct hub_sub {
    hub_topic *topic; /* NULL for a wildcard (prefix) subscription */
    char *prefix;     /* wildcard: the names it follows start with this */
    size_t prefix_len;
    struct hub_sub *prev, *next; /* in the topic */
    void *owner;
    hub_deliver_fn deliver;
    bool oneshot; /* ends at its first delivery (a long-poll) */
    bool dead;    /* unsubscribed during a fan-out: freed after it */
    struct hub_sub *dead_next;
} hub_sub;

typedef struct hub_retention {
    uint32_t backlog; /* newest messages kept; 0 means the default */
    double max_age;   /* seconds; 0: no age limit */
} hub_retention;

/* Called on the writer thread when a hub's inbox turns non-empty. */
typedef void (*hub_wake_fn)(void *ud);

typedef struct hub_opts {
    hub_wake_fn wake;
    void *wake_ud;
} hub_opts;

#define HUB_MAX_WORKERS 256

/* A durable publish alone in the queue is committed on its worker's loop,
 * which stalls for the flush, while such commits take under this (µs):
 * a fast disk's flush costs less than the two thread hand-offs it saves,
 * and stalls the loop less than a fan-out to a few hundred does. */
#define HUB_LONE_COMMIT_MAX_US 500

/* The shared part: starts the writer thread on an open store (read-write)
 * for at most `max_hubs` hubs (1..HUB_MAX_WORKERS); max_queue is the
 * publishes waiting for a commit before 503 (0: 65536).  Returns the bus,
 * or NULL with a message in err. */
hub_bus *hub_bus_open(struct store *st, unsigned max_hubs, size_t max_queue, char *err,
                      size_t errlen);

struct cluster_opts;

/* Cluster mode (SPEC.md, "Cluster"; docs/cluster.md): makes NATS
 * JetStream the bus's record instead of the store, before any hub is
 * attached.  Publishes go to the stream and are answered on its PubAck;
 * every hub gets the stream's messages from one consumer, in stream order;
 * replays read the stream; IDs are the stream's.  Returns 0, or an SL_E*
 * code with the reason in err (NATS unreachable, a stream with other
 * settings...). */
int hub_bus_cluster(hub_bus *b, const struct cluster_opts *o, char *err, size_t errlen);

/* Cluster mode: at most `max_pages` pages of resumes read from the
 * stream or waiting for a reader, all workers together (0: 16,384; at
 * most 2^20; limits.max_waiting_resumes); past it hub_replay_async
 * refuses, counted (hub_stats.cluster_resumes_refused).  Before any hub
 * is attached. */
void hub_bus_limit_replays(hub_bus *b, size_t max_pages);

/* False while cluster mode has no NATS server connected (publishes are
 * refused, /readyz says not ready), or once this node's copy of the stream
 * disagreed with the leader's (cluster_sound); true without cluster mode. */
bool hub_bus_ready(const hub_bus *b);

/* The record of h's bus in cluster mode (storage/cluster.h; its calls may
 * be made from any thread), NULL otherwise. */
struct cluster *hub_cluster(const hub *h);
struct cluster *hub_bus_get_cluster(const hub_bus *b); /* NULL: single node */

/* Stops the writer after committing what is queued (those commits still
 * reach the attached hubs' inboxes), then frees the bus.  Call once every
 * hub is detached or its worker has stopped publishing. */
void hub_bus_close(hub_bus *b);

/* A new hub without storage: topics and retention rules can be set (the
 * app loads), publishing fails and replay finds nothing until hub_attach.
 * NULL when out of memory. */
hub *hub_new(void);

/* Puts the hub on the bus: its worker publishes through the bus and gets
 * every commit in its inbox, announced by opts->wake (from the writer
 * thread).  Returns 0, or SL_ELIMIT when the bus has no room (max_hubs). */
int hub_attach(hub *h, hub_bus *b, const hub_opts *opts);

/* True once hub_attach succeeded. */
bool hub_is_open(const hub *h);

/* Publishes of this hub's worker not yet acknowledged, and pages read off
 * the loop not yet back (hub_replay_async): a worker that stops runs its
 * loop until this is 0, so every publisher gets its answer and every held
 * session is let go. */
unsigned hub_inflight(const hub *h);

/* Takes the hub off the bus (no more commits arrive) and drops what its
 * inbox holds.  Call on the hub's thread, with hub_inflight() == 0. */
void hub_detach(hub *h);

/* Detaches (if attached) and frees. */
void hub_free(hub *h);

/* On the hub's thread: fans out every commit in the inbox to this worker's
 * subscribers and acknowledges this worker's publishes, in commit order.
 * The answers are queued before the fan-outs (after them for a lone
 * publish that reaches long-polls): the server writes first queued, first
 * written, so a publisher hears back after the rest of its last fan-out
 * and before its new one is written. */
void hub_poll(hub *h);

/* On the hub's thread, at the end of each loop pass (an ev_prepare):
 * commits the publishes queued since the last call (a relaxed store's
 * always; a durable store's when one alone is queued and recent lone
 * commits took under HUB_LONE_COMMIT_MAX_US, see writer.h; the rest go to
 * the writer thread) and does what hub_poll does.  When publishes made by
 * that fan-out's callbacks are still queued after a few rounds, wakes the
 * worker so that the loop does not block on them. */
void hub_commit_pending(hub *h);

/* sluice.topic's rules, as one run of a script declares them: each an
 * exact name or a prefix, with its retention (the longest match wins). */
typedef struct hub_retention_rules {
    struct hub_retention_rule *v;
    size_t n;
} hub_retention_rules;

/* Adds the rule for `pattern` (an exact name, or a prefix when
 * `prefix_match`) or replaces its retention.  Returns 0 or SL_ENOMEM. */
int hub_rules_set(hub_retention_rules *rs, const char *pattern, size_t len, bool prefix_match,
                  const hub_retention *r);
void hub_rules_free(hub_retention_rules *rs);

/* Cluster mode's retention (JetStream keeps one per-subject limit for the
 * whole stream): 0 and *out when every rule is the same (a topic no rule
 * matches has the default), else SL_EINVAL with the two rules that differ
 * named in err. */
int hub_rules_single(const hub_retention_rules *rs, hub_retention *out, char *err, size_t errlen);

/* The hub's rules become a copy of `rs` (a script loaded, or reloaded:
 * what the previous run declared goes).  Returns 0 or SL_ENOMEM (the old
 * rules stay). */
int hub_set_rules(hub *h, const hub_retention_rules *rs);

/* Sets one rule of the hub's (sluice.topic called after the load).
 * Returns 0 or SL_ENOMEM. */
int hub_set_retention(hub *h, const char *pattern, size_t len, bool prefix_match,
                      const hub_retention *r);

/* True when `name` is a valid topic name (see HUB_TOPIC_MAX). */
bool hub_topic_valid(const char *name, size_t len);

/* True when `name` is a valid topic name or a wildcard: a valid prefix
 * (possibly empty) followed by '*', which follows every topic whose name
 * starts with the prefix. */
bool hub_pattern_valid(const char *name, size_t len);

/* True when `event` is a valid event name: 1..HUB_EVENT_MAX bytes of valid
 * UTF-8 without control characters (U+0000..U+001F, U+007F..U+009F), not
 * ending in ".base64" (reserved for binary on SSE).  The one check for
 * every publish (hub_publish refuses others) and every filter's change. */
bool hub_event_valid(const char *event, size_t len);

/* Called on the loop thread once a publish is durable (status 0, m the
 * message, borrowed for the call) or failed (status an SL_E* code,
 * m NULL; err_str gives its text): SL_EFULL and SL_EBUSY mean "try later" (503). */
typedef void (*hub_publish_fn)(void *ud, hub_msg *m, int status);

/* Publishes a message (`origin` identifies the publisher for skip_self, or
 * NULL): the data is copied once, into the buffer that later
 * carries it to subscribers; the writer stores it; after the commit it is
 * delivered to every subscriber and `done` runs (may be NULL).  Returns 0,
 * or a negative code (SL_EINVAL for a bad name, SL_ENOMEM,
 * SL_EBUSY, SL_ESTOPPED) when nothing was queued and `done` will
 * not run. */
int hub_publish(hub *h, const char *topic, size_t tlen, const char *event, size_t elen,
                const void *data, size_t len, const void *origin, hub_publish_fn done, void *ud);

/* hub_publish with an idempotency key (1..STORE_IKEY_MAX bytes, copied;
 * NULL: none): a publish of the same topic and key within the store's
 * dedup window (SPEC.md, "Publishing exactly once") stores nothing and
 * is delivered to no one; `done` gets a message with the first publish's
 * ID and `duplicate` set.  SL_EINVAL for a key of a bad length.
 * flags: STORE_MSG_JSON when the data is a JSON text its publisher
 * declared (the caller checked json_valid, core/jsonenc.h): stored with
 * the message, and the JSON forms embed it (hub_msg.is_json); else 0. */
int hub_publish_keyed(hub *h, const char *topic, size_t tlen, const char *event, size_t elen,
                      const void *data, size_t len, const char *ikey, size_t iklen,
                      unsigned flags, const void *origin, hub_publish_fn done, void *ud);

/* Subscribes `owner` to a topic or a wildcard (see hub_pattern_valid).
 * `oneshot`: the subscriber ends at its first delivery and must come back
 * for the next (a long-poll); a lone publish to such subscribers is
 * answered after its fan-out (see hub_poll).  Returns the subscription,
 * or NULL for an invalid name or no memory. */
hub_sub *hub_subscribe(hub *h, const char *topic, size_t len, void *owner, hub_deliver_fn fn,
                       bool oneshot);

/* Detaches and frees a subscription (NULL is a no-op).  During a fan-out
 * on this hub, the entry is only marked dead and freed when the fan-out
 * ends: `s` must not be used after this call either way. */
void hub_unsubscribe(hub *h, hub_sub *s);

/* The name a subscription follows: its topic, or for a wildcard its prefix
 * (*wildcard set; the name is without the '*'). */
const char *hub_sub_name(const hub_sub *s, size_t *len, bool *wildcard);

/* Parses a resume ID, with no I/O.  Returns true and the seq when the ID
 * is of this hub's epoch; false for anything else (unknown: resume from
 * the oldest).  *unverified is set (cluster mode) for an ID past what this
 * node has seen: a replay must read after it (hub_replay_async), which
 * tells whether the stream had it (hub_replay_page_id_unknown). */
bool hub_id_parse(const hub *h, const char *id, size_t len, uint64_t *seq, bool *unverified);

/* Writes the ID of the newest message delivered (a real ID, valid across
 * restarts; "<epoch>-0" before any) into out; returns its length. */
size_t hub_last_id(const hub *h, char out[HUB_ID_MAX]);

/* The seq of the newest message delivered so far (0: none): where a
 * subscriber without a resume point starts. */
uint64_t hub_last_seq(const hub *h);

/* The seq of the newest message committed (0: none).  It can be ahead of
 * hub_last_seq: another worker's publish may be answered before this
 * worker has taken it from its inbox. */
uint64_t hub_committed_seq(const hub *h);

#define HUB_REPLAY_MAX_TOPICS 64

/* Replays the backlog of `n` topics or wildcards after `after_seq` (all
 * retained when !known), merged in seq order, at most `limit` messages (0:
 * no limit) and about `max_bytes` of data (0: no limit; at least one
 * message), through fn; *more tells whether it stopped at a limit (a page:
 * call again after the last seq delivered).  A wildcard replays the stored topics it matches;
 * at most HUB_REPLAY_MAX_TOPICS topics in all are replayed.  Before any
 * message, on_gap(owner, topic, len) runs for each topic that lost messages
 * after the resume point (every topic when the ID was unknown).  Returns
 * the messages replayed, or the store's SL_E* code, or SL_ENOMEM. */
long hub_replay(hub *h, const char *const *topics, const size_t *lens, int n, uint64_t after_seq,
                bool known, size_t limit, size_t max_bytes, hub_deliver_fn fn,
                void (*on_gap)(void *owner, const char *topic, size_t len), void *owner,
                bool *more);

/* Cluster mode: the same page read off the worker's loop, so that a
 * resume waiting on JetStream (seconds when NATS is slow or paused) stalls
 * no other connection of the worker.  The reads run on a thread of their
 * own; later, on h's worker in its turn among the inbox's messages,
 * done(owner, page) is called (even when owner has ended meanwhile: the
 * caller keeps owner's memory until then, session_hold), which delivers
 * it with hub_replay_page_deliver; the page is freed after done returns.
 * Live messages for owner that the hub fans out meanwhile go to
 * hub_replay_live.  At most 64 pages are read at once; the others wait
 * their turn.  Returns 0, SL_EINVAL outside cluster mode, SL_ELIMIT when
 * 16,384 pages are read or waiting (logged), SL_ENOMEM: then the caller
 * fails the resume (a read on the loop would stall the worker). */
typedef struct hub_replay_page hub_replay_page;
typedef void (*hub_replay_done_fn)(void *owner, hub_replay_page *page);
int hub_replay_async(hub *h, const char *const *topics, const size_t *lens, int n,
                     uint64_t after_seq, bool known, size_t limit, size_t max_bytes,
                     hub_replay_done_fn done, void *owner);

/* What hub_replay delivers and returns, for a page back from
 * hub_replay_async; when it is the last (*more false), then the live
 * messages kept for owner meanwhile, through fn (owner drops by seq what
 * the page had); *more is set when more came than were kept. */
long hub_replay_page_deliver(hub_replay_page *page, hub_deliver_fn fn,
                             void (*on_gap)(void *owner, const char *topic, size_t len),
                             void *owner, bool *more);

/* True when the page's resume ID was past the stream's last message
 * (hub_id_parse's *unverified): the page was read from the oldest, with
 * the gap signal, as for an unknown ID; its owner resets its cursor. */
bool hub_replay_page_id_unknown(const hub_replay_page *page);

/* The page after `page` (which done is handling): the same topics and
 * limits, after after_seq; as hub_replay_async. */
int hub_replay_async_next(hub *h, hub_replay_page *page, uint64_t after_seq,
                          hub_replay_done_fn done, void *owner);

/* A live message for owner while a page of its is read off the loop: kept
 * (a reference) for hub_replay_page_deliver.  False when owner has no page
 * in flight (m NULL: only asks). */
bool hub_replay_live(hub *h, void *owner, hub_msg *m);

/* A message for one subscriber: same ID, topic and seq as `m`, other event
 * and data (a filter's transform: not marked JSON, is_json false).  Not
 * in the backlog.  NULL on no memory. */
hub_msg *hub_msg_derive(const hub_msg *m, const char *event, size_t elen, const void *data,
                        size_t len);

void hub_msg_ref(hub_msg *m);
void hub_msg_unref(hub_msg *m);

/* Wire forms, built on first use and shared.  Each sets the buffer and the
 * byte range to send; they return 0, or SL_ENOMEM when memory is short. */
int hub_msg_ws(hub_msg *m, bool json, buf_t **b, size_t *off, size_t *len);
int hub_msg_json(hub_msg *m, buf_t **b, size_t *off, size_t *len);
/* hub_msg_json's object with a JSON message's text as a string in "data"
 * (no "encoding"), as SPEC.md's long-poll answer has it: for a poll that
 * did not ask for ?format=json.  Built for one answer, not shared; NULL
 * when memory is short. */
buf_t *hub_msg_json_string(const hub_msg *m);
int hub_msg_sse(hub_msg *m, buf_t **b);
/* The SSE event for a stream over several topics or a pattern, which must
 * tell which topic each message is from: the same id: and event: lines
 * (no ".base64" suffix), and data: lines holding the JSON object of
 * hub_msg_json {"id","topic","event","data"} (binary data base64 with
 * "encoding":"base64", JSON embedded with "encoding":"json", as there; one
 * line unless embedded JSON has line breaks, which SSE splits and
 * EventSource joins again with "\n").  Built once, shared like the others. */
int hub_msg_sse_topic(hub_msg *m, buf_t **b);

/* The permessage-deflate frame of the raw (json false) or JSON form:
 * the payload compressed once (core/wsz.h) for every subscriber that
 * negotiated the extension, its frame header with RSV1 set.  Returns 0
 * with the range set, 1 when the compressed payload would not be smaller
 * (send hub_msg_ws's frame instead), -1 when memory is short. */
int hub_msg_ws_deflated(hub_msg *m, bool json, buf_t **b, size_t *off, size_t *len);

/* Counters of the compressed forms built (once per message and form):
 * payload bytes before and after, and forms left uncompressed because
 * deflate did not make them smaller.  Any thread. */
typedef struct hub_deflate_stats {
    unsigned long long forms, bytes_in, bytes_out, incompressible;
} hub_deflate_stats;
void hub_deflate_get_stats(hub_deflate_stats *st);

/* Counters for /metrics, summed over every hub on the bus (storage figures
 * read from the store).  Any hub's thread. */
#define HUB_LATENCY_BUCKETS 12
#define HUB_FLUSH_BUCKETS 12 /* hub_count_flush's */
/* Upper bounds (seconds) of the publish latency histogram's buckets. */
extern const double hub_latency_bounds[HUB_LATENCY_BUCKETS];

typedef struct hub_stats {
    uint64_t published, delivered, subscribers, publish_failures;
    uint64_t topics; /* topics with a subscriber, counted once per worker */
    uint64_t store_file_bytes, store_messages, commits;
    uint64_t store_log_messages, checkpoints, checkpoint_failures; /* durable mode's log */
    uint64_t store_damaged;      /* damaged messages or pages that reads skipped */
    uint64_t publish_duplicates; /* publishes answered with an earlier ID (Idempotency-Key) */
    /* Publish to fan-out (storage queue + commit + sync), cumulative per
     * bucket as Prometheus wants; the last bucket is +Inf. */
    uint64_t latency_buckets[HUB_LATENCY_BUCKETS + 1];
    double latency_sum;
    /* Storage commits (the writer's store_append_batch), cumulative per
     * bucket of writer_commit_bounds; the last bucket is +Inf. */
    uint64_t commit_buckets[WRITER_COMMIT_BUCKETS + 1];
    double commit_sum;
    /* From commit to the subscriber's socket (hub_count_flush),
     * cumulative; the last bucket is +Inf. */
    uint64_t flush_buckets[HUB_FLUSH_BUCKETS + 1];
    double flush_sum;
    /* Cluster mode only (cluster set): NATS connected now (0/1), reconnects,
     * publishes waiting for a PubAck, publishes JetStream refused or never
     * acknowledged (answered 503). */
    bool cluster;
    uint64_t cluster_connected, cluster_reconnects, cluster_inflight, cluster_publish_failures;
    uint64_t cluster_refetched; /* messages the stream's consumer skipped, read again */
    uint64_t cluster_repeats;   /* messages the stream's consumer gave twice, dropped */
    uint64_t cluster_gaps;      /* gaps found by the stream's consumer, told live */
    uint64_t cluster_diverged;  /* repeats that were another message (servers disagree) */
    uint64_t cluster_renewals;  /* the stream's consumer made anew */
    uint64_t cluster_resumes_refused; /* past hub_bus_limit_replays's bound */
    uint64_t cluster_read_retries;    /* reads of the stream tried again */
    uint64_t cluster_read_failures;   /* reads of the stream that failed: readers told */
    uint64_t cluster_read_gets;       /* messages read for resumes one request each */
    uint64_t cluster_read_consumers;  /* topic reads for resumes that made a consumer */
} hub_stats;
void hub_get_stats(const hub *h, hub_stats *st);

/* Counts the time from a message's commit to the moment a subscriber's
 * output holding it was all written (publish-to-flush, seconds, ms
 * resolution).  Hub's thread. */
extern const double hub_flush_bounds[HUB_FLUSH_BUCKETS];
void hub_count_flush(hub *h, double seconds);

/* Counts one delivery (transports call it when they queue a message). */
void hub_count_delivery(hub *h);

/* The topics this hub's worker has subscribers for (the admin API and the
 * per-topic series of the admin /metrics), one call of fn per topic, in
 * no particular order; fn returns nonzero to stop.  `messages` counts the
 * messages fanned out on the topic by this worker since it got its first
 * subscriber, `deliveries` the copies queued for its exact-name
 * subscribers (wildcards are not counted per topic).  Hub's thread only. */
typedef struct hub_topic_info {
    const char *name; /* valid during the call */
    size_t name_len;
    uint32_t subscribers;
    uint64_t messages, deliveries;
} hub_topic_info;
void hub_each_topic(const hub *h, int (*fn)(void *ud, const hub_topic_info *t), void *ud);

/* This hub's own counters (not summed over the bus; no storage figures):
 * the per-worker series of the admin /metrics.  Any thread. */
void hub_get_own_stats(const hub *h, hub_stats *st);

#endif
