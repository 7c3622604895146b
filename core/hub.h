/* hub.h: topics, subscribers, message IDs, the backlog and fan-out.
 *
 * Every message gets its ID here, from one global sequence: IDs are
 * "<epoch>-<seq>", where seq strictly increases across all topics, so one
 * Last-Event-ID resumes a connection subscribed to several topics.  The
 * epoch changes when the backlog is lost (a new process while the backlog
 * is in memory; a wiped data directory once it is on disk), so an ID from
 * another epoch is recognised as unknown instead of mistaken for a position.
 *
 * A message is encoded once per wire form, on first need, into a shared
 * buf_t: the raw data with headroom for a WebSocket frame header, the JSON
 * object (same trick: WebSocket JSON frames and long-poll items share it),
 * and the SSE event.  Subscribers queue references to those buffers.
 *
 * Replay then live is one path: hub_replay() walks the backlog after an ID,
 * then the subscriber is attached; both run on the loop thread, so nothing
 * published in between is missed, and subscribers drop anything whose seq
 * they have already passed, so nothing is seen twice. */
#ifndef SLUICE_HUB_H
#define SLUICE_HUB_H

#include "core/buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HUB_HEADROOM 10   /* bytes before data/JSON for a frame header */
#define HUB_TOPIC_MAX 200 /* topic names: 1..200 bytes of [A-Za-z0-9_.:-] */
#define HUB_EVENT_MAX 128 /* event names: 1..128 bytes, no CR/LF/NUL */
#define HUB_ID_MAX 40     /* longest ID string, with the NUL */
#define HUB_DEFAULT_BACKLOG 1000

typedef struct hub hub;
typedef struct hub_topic hub_topic;

typedef struct hub_msg {
    uint32_t refs;
    uint64_t seq;
    hub_topic *topic;
    int64_t time_ms; /* publish time, for max_age */
    char *event;     /* NULL when none */
    size_t event_len;
    buf_t *raw;                /* HUB_HEADROOM bytes, then the data */
    size_t len;                /* data bytes */
    bool binary;               /* data is not valid UTF-8: base64 on text transports */
    uint8_t raw_hdr, json_hdr; /* WebSocket header bytes in each headroom, 0: not yet */
    buf_t *json;               /* HUB_HEADROOM bytes, then the JSON object */
    size_t json_len;
    buf_t *sse; /* the whole SSE event */
    char id[HUB_ID_MAX];
    uint8_t id_len;
} hub_msg;

/* Called for each message a subscriber gets (live or replayed).  It may
 * unsubscribe (even close the connection) but must not free other subs. */
typedef void (*hub_deliver_fn)(void *owner, hub_msg *msg);

typedef struct hub_sub {
    hub_topic *topic;
    struct hub_sub *prev, *next; /* in the topic */
    void *owner;
    hub_deliver_fn deliver;
} hub_sub;

typedef struct hub_retention {
    uint32_t backlog; /* newest messages kept; 0 means the default */
    double max_age;   /* seconds; 0: no age limit */
} hub_retention;

/* A new hub with a fresh epoch.  NULL when out of memory. */
hub *hub_new(void);
void hub_free(hub *h);

/* Sets the retention used for topics whose names start with `prefix` (an
 * exact name, or a prefix when `prefix_match`); the longest match wins. */
int hub_set_retention(hub *h, const char *pattern, size_t len, bool prefix_match,
                      const hub_retention *r);

/* True when `name` is a valid topic name (see HUB_TOPIC_MAX). */
bool hub_topic_valid(const char *name, size_t len);

/* True when `event` is a valid event name: 1..HUB_EVENT_MAX bytes without
 * CR, LF or NUL, not ending in ".base64" (reserved for binary on SSE). */
bool hub_event_valid(const char *event, size_t len);

/* Publishes a message: assigns its ID, keeps it in the topic's backlog,
 * delivers it to every subscriber.  Returns the message (borrowed: valid
 * until it leaves the backlog; take a ref to keep it) or NULL when a name is
 * invalid or memory is short. */
hub_msg *hub_publish(hub *h, const char *topic, size_t tlen, const char *event, size_t elen,
                     const void *data, size_t len);

/* Subscribes `owner` to a topic.  Returns the subscription, or NULL for an
 * invalid name or no memory. */
hub_sub *hub_subscribe(hub *h, const char *topic, size_t len, void *owner, hub_deliver_fn fn);

/* Detaches and frees a subscription (NULL is a no-op). */
void hub_unsubscribe(hub *h, hub_sub *s);

/* Parses a resume ID.  Returns true and the seq when the ID is of this
 * hub's epoch; false for anything else (unknown: resume from the oldest). */
bool hub_id_parse(const hub *h, const char *id, size_t len, uint64_t *seq);

/* Writes the ID of `seq` into out; returns its length. */
size_t hub_id_format(const hub *h, uint64_t seq, char out[HUB_ID_MAX]);

/* The seq of the newest message published so far (0: none). */
uint64_t hub_last_seq(const hub *h);

/* Replays the backlog of `topic` after `after_seq` (all retained messages
 * when !known) through fn, at most `limit` messages (0: no limit).  Sets
 * *gap when messages after the resume point are no longer retained (or the
 * ID was unknown).  Returns the number of messages replayed. */
size_t hub_replay(hub *h, const char *topic, size_t len, uint64_t after_seq, bool known,
                  size_t limit, hub_deliver_fn fn, void *owner, bool *gap);

/* A message for one subscriber: same ID, topic and seq as `m`, other event
 * and data (a filter's transform).  Not in the backlog.  NULL on no memory. */
hub_msg *hub_msg_derive(const hub_msg *m, const char *event, size_t elen, const void *data,
                        size_t len);

/* The message's topic name (not NUL-terminated). */
const char *hub_msg_topic(const hub_msg *m, size_t *len);

void hub_msg_ref(hub_msg *m);
void hub_msg_unref(hub_msg *m);

/* Wire forms, built on first use and shared.  Each sets the buffer and the
 * byte range to send; they return -1 when memory is short. */
int hub_msg_ws(hub_msg *m, bool json, buf_t **b, size_t *off, size_t *len);
int hub_msg_json(hub_msg *m, buf_t **b, size_t *off, size_t *len);
int hub_msg_sse(hub_msg *m, buf_t **b);

/* Counters for /metrics. */
typedef struct hub_stats {
    uint64_t published, delivered, topics, subscribers;
} hub_stats;
void hub_get_stats(const hub *h, hub_stats *st);

/* Counts one delivery (transports call it when they queue a message). */
void hub_count_delivery(hub *h);

#endif
