/* cluster.c: the JetStream record (see cluster.h): the connection and its
 * options, the stream's creation or check, asynchronous publishes and the
 * table that matches each PubAck to its request, the consumer that
 * delivers the stream to this node (and the thread that makes it anew when
 * it fails), and reads of a topic's history for a resume.  All NATS I/O is
 * the NATS C client's (no protocol here), on a libev loop of its own
 * thread (cluster_loop.h): that thread writes the publishes and takes the
 * live consumer's messages, and it and the client's threads call back
 * into the hub, which hands messages to the workers as the writer thread
 * does in single-node mode.
 *
 * No ordered consumer (jsSubOptions.Ordered) anywhere: libnats 3.4.1
 * (Debian's) recreates one on a thread of its own after every reconnect,
 * and when that thread's first write fails (the server it just reached
 * died) it detaches a NULL thread and the process dies (js.c
 * _recreateOrderedCons; fixed upstream in nats.c #840, seen in CI).  sluice
 * makes plain push consumers that acknowledge nothing, as an ordered one
 * is, and makes them anew itself.
 *
 * A worker never calls into the client for a publish: it queues it for
 * the loop's thread (cluster_publish).  The client takes its connection's
 * lock for a publish, which its other threads hold for seconds at times (a
 * reconnection's handshake): on a worker's loop that held every
 * connection of the worker.
 *
 * Nothing on the loop's thread waits for NATS: what needs an answer (a
 * read of what the live consumer skipped, the check of this node's copy of
 * the stream, a consumer made anew) is the keeper thread's. */
#include "storage/cluster.h"
#include "storage/cluster_loop.h"

#include "core/b64.h"
#include "core/defs.h"
#include "core/err.h"
#include "core/log.h"

#include <errno.h>
#include <jansson.h>
#include <nats/nats.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define EVENT_HEADER "Sluice-Event"
/* A message published as JSON (STORE_MSG_JSON): "Content-Type:
 * application/json", the header any NATS client can read. */
#define TYPE_HEADER "Content-Type"
#define TYPE_JSON "application/json"
#define DEFAULT_PER_TOPIC 1000 /* cluster_opts.max_per_topic 0 */
#define PENDING_BUCKETS 4096
#define SEEN_RING 4096

/* A publish between js_PublishMsgAsync and its PubAck, found again by the
 * message pointer the client hands back to the ack handler. */
typedef struct inflight {
    natsMsg *msg;
    void *req;
    struct inflight *next;
    struct inflight *send_next; /* in the loop's queue, until it is given to the client */
    size_t bytes;               /* counted in send_bytes meanwhile */
} inflight;

struct cluster {
    natsOptions *opts;
    natsConnection *nc;
    jsCtx *js;
    struct cluster_loop *loop;
    /* The live consumer on the whole stream, whose messages the loop's
     * thread takes, and the keeper thread, which makes it anew and does
     * what must wait for an answer (keep_lock guards sub, renew, mend and
     * the check; the loop's thread holds it while it takes messages). */
    natsSubscription *sub;
    natsSubscription *notes; /* cluster_listen's */
    cluster_note_fn on_note;
    void *note_ud;
    char notes_subject[96];
    char get_subject[96]; /* "$JS.API.STREAM.MSG.GET.<STREAM>" */
    pthread_t keeper;
    bool keeper_running;
    pthread_mutex_t keep_lock;
    pthread_cond_t keep_cond;
    const char *renew; /* why the consumer must be made anew (NULL: it need not) */
    /* A message after a jump in the stream's seqs: the keeper reads what
     * lies between, then delivers it; the loop takes no more meanwhile. */
    natsMsg *mend;
    /* The message whose copy the keeper checks against the leader's (seq
     * 0: none; check_copy). */
    uint64_t check_seq, check_print;
    char stream[64];
    char filter[80]; /* "<STREAM>.>" */
    uint64_t epoch;
    /* The retention this node's script gives the stream (at start, then
     * as its reloads set it; only cluster_open and then the main thread's
     * cluster_set_retention touch them). */
    uint64_t max_per_topic, max_age_ms;
    /* The count limit that judges gaps (count_limit; under lock): the
     * stream's as last seen, and the smallest one in force before a raise
     * this node saw, with the stream's last seq when it saw it. */
    uint64_t limit_now, limit_before, raised_at;
    cluster_ack_fn ack;
    cluster_msg_fn deliver;
    void *ud;
    /* Publishes queued for the loop's thread (send_lock guards them). */
    pthread_mutex_t send_lock;
    inflight *send_head, *send_tail;
    size_t send_bytes;
    pthread_mutex_t lock; /* guards the in-flight table */
    inflight *table[PENDING_BUCKETS];
    uint64_t ninflight; /* changed under lock, read without it: a relaxed atomic */
    /* relaxed atomics */
    uint64_t last_seq;
    uint64_t published, publish_failures, delivered, reconnects;
    int connected;
    int64_t max_payload;          /* the connected server's, read at (re)connection */
    int closing;                  /* cluster_close has begun: a disconnect is expected */
    int notes_done;               /* its handler has returned for good (sub_close_waiting) */
    /* cluster_horizon's requests, shared by the reads that wait for one
     * (under hz_lock): the started-th is in flight while hz_busy; the
     * done-th is the newest answered: hz_seq, unless hz_status fails. */
    pthread_mutex_t hz_lock;
    pthread_cond_t hz_cond;
    uint64_t hz_started, hz_done, hz_seq;
    natsStatus hz_status;
    bool hz_busy;
    pthread_mutex_t consume_lock; /* one delivery at a time, whatever thread the client uses */
    uint64_t consumed;            /* newest seq delivered (under consume_lock) */
    /* The prints of the last SEEN_RING seqs delivered (under consume_lock):
     * a repeat is checked to be the message delivered at that seq. */
    struct {
        uint64_t seq, print;
    } seen[SEEN_RING];
    uint64_t refetched, repeats, diverged, gaps, renewals; /* relaxed atomics */
    uint64_t read_retries, read_failures, read_gets, read_consumers; /* relaxed atomics */
    int64_t next_check; /* check_copy's next (the loop's thread) */
    int unsound;        /* this node's copy of the stream disagreed with the leader's */
};

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#define ADD(x, n) __atomic_fetch_add(&(x), (n), __ATOMIC_RELAXED)

/* ---- subject tokens --------------------------------------------------------- */

static bool token_plain(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_' || ch == ':' || ch == '-';
}

size_t cluster_token_encode(const char *s, size_t len, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    if (outlen < 3 * len + 1) return 0;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (token_plain(ch)) {
            out[o++] = (char)ch;
        } else {
            out[o++] = '%';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        }
    }
    out[o] = '\0';
    return o;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

long cluster_token_decode(const char *tok, size_t len, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (o >= outlen) return -1;
        unsigned char ch = (unsigned char)tok[i];
        if (token_plain(ch)) {
            out[o++] = (char)ch;
            continue;
        }
        if (ch != '%' || len - i < 3) return -1;
        int hi = hexval(tok[i + 1]), lo = hexval(tok[i + 2]);
        if (hi < 0 || lo < 0) return -1;
        unsigned char v = (unsigned char)(hi << 4 | lo);
        if (token_plain(v)) return -1; /* not canonical: one name, one token */
        out[o++] = (char)v;
        i += 2;
    }
    return (long)o;
}

/* "<STREAM>.<token>" into out (at least 3 * HUB-sized names): 0 or -1. */
static int subject_of(const struct cluster *c, const char *topic, size_t tlen, char *out,
                      size_t outlen)
{
    size_t sl = strlen(c->stream);
    if (outlen < sl + 2) return -1;
    memcpy(out, c->stream, sl);
    out[sl] = '.';
    return cluster_token_encode(topic, tlen, out + sl + 1, outlen - sl - 1) || tlen == 0 ? 0 : -1;
}

/* The topic of a subject of this stream: its length, or -1. */
static long topic_of(const struct cluster *c, const char *subject, char *out, size_t outlen)
{
    size_t sl = strlen(c->stream), len = strlen(subject);
    if (len <= sl + 1 || memcmp(subject, c->stream, sl) != 0 || subject[sl] != '.') return -1;
    return cluster_token_decode(subject + sl + 1, len - sl - 1, out, outlen);
}

/* ---- options ---------------------------------------------------------------- */

static bool stream_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 32) return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-'))
            return false;
    return true;
}

int cluster_opts_check(const struct cluster_opts *o, char *err, size_t errlen)
{
    if (!o->servers || !*o->servers) {
        snprintf(err, errlen, "cluster: servers missing (nats://HOST:PORT[,...])");
        return SL_EINVAL;
    }
    /* Each server: nats:// or tls:// then something. */
    const char *p = o->servers;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        bool ok =
            (n > 7 && strncmp(p, "nats://", 7) == 0) || (n > 6 && strncmp(p, "tls://", 6) == 0);
        if (!ok) {
            snprintf(err, errlen, "cluster: bad server '%.*s' (nats://HOST:PORT)",
                     (int)(n > 200 ? 200 : n), p);
            return SL_EINVAL;
        }
        p += n + (end ? 1 : 0);
        if (end && !*p) {
            snprintf(err, errlen, "cluster: empty server after ','");
            return SL_EINVAL;
        }
    }
    if (o->stream && !stream_name_ok(o->stream)) {
        snprintf(err, errlen, "cluster: stream name must be 1 to 32 of [A-Za-z0-9_-]");
        return SL_EINVAL;
    }
    if (o->replicas < 0 || o->replicas > 5) {
        snprintf(err, errlen, "cluster: replicas must be 1 to 5");
        return SL_EINVAL;
    }
    if ((o->user != NULL) != (o->password != NULL)) {
        snprintf(err, errlen, "cluster: user and password go together");
        return SL_EINVAL;
    }
    if ((o->tls_cert != NULL) != (o->tls_key != NULL)) {
        snprintf(err, errlen, "cluster: tls cert and key go together");
        return SL_EINVAL;
    }
    return 0;
}

/* ---- publishes and their PubAcks -------------------------------------------- */

static const char *last_error(natsStatus s)
{
    const char *t = nats_GetLastError(NULL);
    return t && *t ? t : natsStatus_GetText(s);
}

static size_t bucket_of(const natsMsg *m)
{
    uintptr_t v = (uintptr_t)m;
    return (size_t)((v >> 4) ^ (v >> 16)) % PENDING_BUCKETS;
}

static void *inflight_take(struct cluster *c, natsMsg *m)
{
    void *req = NULL;
    pthread_mutex_lock(&c->lock);
    for (inflight **pp = &c->table[bucket_of(m)]; *pp; pp = &(*pp)->next) {
        if ((*pp)->msg == m) {
            inflight *f = *pp;
            *pp = f->next;
            req = f->req;
            free(f);
            __atomic_fetch_sub(&c->ninflight, 1, __ATOMIC_RELAXED);
            break;
        }
    }
    pthread_mutex_unlock(&c->lock);
    return req;
}

static void bump_last(struct cluster *c, uint64_t seq)
{
    uint64_t cur = LOAD(c->last_seq);
    while (seq > cur && !__atomic_compare_exchange_n(&c->last_seq, &cur, seq, false,
                                                     __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

/* A retry that JetStream calls a duplicate (same Nats-Msg-Id within the
 * window) is answered with the first publish's seq: checked against the
 * stream before it is acknowledged, since a leader that was stopped and
 * comes back may judge a retry by an entry it never committed (seen under
 * SIGSTOP in test_cluster.py: a "duplicate" of a seq the stream never
 * kept).  A message that is not there, or another one, answers 503 and the
 * client retries.  Rare (retries only), on the client's thread. */
static bool duplicate_stored(struct cluster *c, natsMsg *sent, uint64_t seq)
{
    const char *want = NULL;
    if (natsMsgHeader_Get(sent, "Nats-Msg-Id", &want) != NATS_OK || !want) return false;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = CLUSTER_API_WAIT_MS;
    natsMsg *m = NULL;
    jsErrCode jerr = 0;
    bool ok = false;
    if (js_GetMsg(&m, c->js, c->stream, seq, &jo, &jerr) == NATS_OK) {
        const char *have = NULL;
        ok = natsMsgHeader_Get(m, "Nats-Msg-Id", &have) == NATS_OK && have &&
             strcmp(have, want) == 0 &&
             strcmp(natsMsg_GetSubject(m), natsMsg_GetSubject(sent)) == 0;
    }
    natsMsg_Destroy(m);
    return ok;
}

/* The client's thread: a PubAck, a JetStream error, or MaxWait passed. */
static void on_puback(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js;
    struct cluster *c = closure;
    void *req = inflight_take(c, msg);
    bool verified = !(pa && !pae && pa->Duplicate) || duplicate_stored(c, msg, pa->Sequence);
    natsMsg_Destroy(msg); /* the handler's to free (nats.h), and only the key here */
    if (!req) return;     /* answered already (cluster_close) */
    if (!verified) {
        ADD(c->publish_failures, 1);
        LOG_KV(LOG_WARN,
               "cluster: a retry was called a duplicate of a message the stream does "
               "not hold: answered 503",
               LOG_I("seq", pa->Sequence));
        c->ack(c->ud, req, SL_EIO, 0, false);
        return;
    }
    if (pa && !pae) {
        bump_last(c, pa->Sequence);
        ADD(c->published, 1);
        c->ack(c->ud, req, 0, pa->Sequence, pa->Duplicate);
        return;
    }
    ADD(c->publish_failures, 1);
    static log_limit lim = LOG_LIMIT_INIT;
    LOG_KV_LIMITED(&lim, 1.0, LOG_WARN, "cluster publish failed",
                   LOG_S("reason", pae && pae->ErrText ? pae->ErrText
                                   : pae               ? natsStatus_GetText(pae->Err)
                                                       : "no ack"));
    c->ack(c->ud, req, SL_EIO, 0, false);
}

int cluster_publish(struct cluster *c, const char *topic, size_t tlen, const char *event,
                    size_t elen, const void *data, size_t len, const char *ikey, size_t iklen,
                    unsigned flags, void *req)
{
    /* Not the client's status call: it waits for the connection's lock,
     * which a write to a stalled server holds. */
    if (!LOAD(c->connected)) return SL_EUNREACHABLE;
    if (LOAD(c->ninflight) >= CLUSTER_MAX_INFLIGHT) return SL_EBUSY;
    if (len > INT32_MAX) return SL_EINVAL;
    char subject[64 + 3 * 256 + 2];
    if (subject_of(c, topic, tlen, subject, sizeof(subject)) != 0) return SL_EINVAL;
    natsMsg *msg = NULL;
    if (natsMsg_Create(&msg, subject, NULL, data, (int)len) != NATS_OK) return SL_ENOMEM;
    char hv[3 * 256 + 1];
    char idv[2 * (3 * 256) + 4];
    natsStatus s = NATS_OK;
    /* What the server counts against its max_payload: the data and the
     * header block ("NATS/1.0\r\n", "Key: value\r\n" each, "\r\n"). */
    size_t headers = 0;
    if (event && elen) {
        /* Encoded as a token: a header value keeps no edge spaces. */
        if (!cluster_token_encode(event, elen, hv, sizeof(hv))) s = NATS_INVALID_ARG;
        if (s == NATS_OK) s = natsMsgHeader_Set(msg, EVENT_HEADER, hv);
        headers += sizeof(EVENT_HEADER) + 3 + strlen(hv);
    }
    if (s == NATS_OK && ikey && iklen) {
        /* JetStream's dedup key is per stream: the topic is part of it. */
        size_t a = cluster_token_encode(topic, tlen, idv, sizeof(idv));
        idv[a] = '/';
        size_t b = cluster_token_encode(ikey, iklen, idv + a + 1, sizeof(idv) - a - 1);
        if (!a || !b) s = NATS_INVALID_ARG;
        if (s == NATS_OK) s = natsMsgHeader_Set(msg, "Nats-Msg-Id", idv);
        headers += sizeof("Nats-Msg-Id") + 3 + a + 1 + b;
    }
    if (s == NATS_OK && (flags & STORE_MSG_JSON)) {
        s = natsMsgHeader_Set(msg, TYPE_HEADER, TYPE_JSON);
        headers += sizeof(TYPE_HEADER) + 3 + strlen(TYPE_JSON);
    }
    if (headers) headers += 12;
    int64_t max = LOAD(c->max_payload);
    if (s == NATS_OK && max > 0 && len + headers > (uint64_t)max) {
        natsMsg_Destroy(msg);
        return SL_ETOOBIG;
    }
    inflight *f = s == NATS_OK ? malloc(sizeof(inflight)) : NULL;
    if (!f) {
        natsMsg_Destroy(msg);
        return SL_ENOMEM;
    }
    /* In the table before the send: the ack may come before the loop's
     * call returns. */
    f->msg = msg;
    f->req = req;
    f->send_next = NULL;
    f->bytes = len + strlen(subject);
    size_t bkt = bucket_of(msg);
    pthread_mutex_lock(&c->lock);
    f->next = c->table[bkt];
    c->table[bkt] = f;
    ADD(c->ninflight, 1);
    pthread_mutex_unlock(&c->lock);
    size_t bytes = f->bytes;
    pthread_mutex_lock(&c->send_lock);
    /* Past the bound (a stalled server), refused: an empty queue takes
     * any one publish. */
    bool over = c->send_head && c->send_bytes + bytes > CLUSTER_SEND_QUEUE_MAX;
    bool wake = false;
    if (!over) {
        /* An empty queue: the loop has taken what it had (or is about
         * to), so it is woken for this one. */
        wake = !c->send_head;
        if (c->send_tail)
            c->send_tail->send_next = f;
        else
            c->send_head = f;
        c->send_tail = f;
        c->send_bytes += bytes;
    }
    pthread_mutex_unlock(&c->send_lock);
    if (over) {
        inflight_take(c, msg); /* not sent: no ack can have come */
        natsMsg_Destroy(msg);
        return SL_EBUSY;
    }
    if (wake) cluster_loop_kick(c->loop);
    return 0;
}

/* The loop's thread gives one publish to the client.  f may be freed by
 * the ack as soon as the client has the message. */
static void send_one(struct cluster *c, inflight *f)
{
    natsMsg *msg = f->msg;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = CLUSTER_PUBLISH_TIMEOUT_MS;
    natsMsg *sent = msg;
    natsStatus s = js_PublishMsgAsync(c->js, &sent, &po);
    if (s == NATS_OK) return;
    /* Not taken: no ack will come. */
    void *req = inflight_take(c, msg);
    natsMsg_Destroy(sent);
    if (!req) return; /* cannot be: the ack came for a send that failed */
    ADD(c->publish_failures, 1);
    static log_limit lim = LOG_LIMIT_INIT;
    LOG_KV_LIMITED(&lim, 1.0, LOG_WARN, "cluster publish failed", LOG_S("reason", last_error(s)));
    c->ack(c->ud, req, SL_EIO, 0, false);
}

static bool output_full(struct cluster *c)
{
    int n = natsConnection_Buffered(c->nc); /* -1 when closed: the send says so */
    return n > 0 && (size_t)n > CLUSTER_OUTPUT_MAX;
}

/* The loop's thread: the queued publishes, in their order, given to the
 * client, which the loop then writes.  While the client holds more than
 * CLUSTER_OUTPUT_MAX unwritten (a server that reads slowly, or not at
 * all until the pings give it up), the rest waits here, where
 * CLUSTER_SEND_QUEUE_MAX bounds it; the socket's next write brings the
 * loop back. */
static void send_queued(struct cluster *c)
{
    pthread_mutex_lock(&c->send_lock);
    inflight *f = c->send_head, *last = c->send_tail;
    c->send_head = c->send_tail = NULL;
    pthread_mutex_unlock(&c->send_lock);
    size_t sent = 0;
    while (f && !output_full(c)) {
        inflight *next = f->send_next;
        sent += f->bytes;
        send_one(c, f);
        f = next;
    }
    pthread_mutex_lock(&c->send_lock);
    c->send_bytes -= sent;
    if (f) { /* held back (f to last): ahead of what came meanwhile */
        last->send_next = c->send_head;
        if (!c->send_head) c->send_tail = last;
        c->send_head = f;
    }
    pthread_mutex_unlock(&c->send_lock);
}

/* ---- the stream's consumers ---------------------------------------------------- */

/* A push consumer from seq `start` (0: the first) that acknowledges
 * nothing and lives in one server's memory: what an ordered consumer is,
 * made by sluice (see the top of this file).  Its reader checks that the
 * consumer seqs follow each other: the client library does not for it. */
static void consumer_options(struct cluster *c, jsSubOptions *so, uint64_t start)
{
    jsSubOptions_Init(so);
    so->Stream = c->stream; /* no lookup of the stream by subject */
    so->Config.AckPolicy = js_AckNone;
    so->Config.MemoryStorage = true;
    so->Config.Replicas = 1;
    if (start) {
        so->Config.DeliverPolicy = js_DeliverByStartSequence;
        so->Config.OptStartSeq = start;
    }
}

static void sub_close(natsSubscription *sub)
{
    if (!sub) return;
    natsSubscription_Unsubscribe(sub); /* deletes its consumer (one request, bounded) */
    natsSubscription_Destroy(sub);
}

static void on_sub_done(void *closure)
{
    __atomic_store_n((int *)closure, 1, __ATOMIC_RELEASE);
}

/* At close: an asynchronous subscription's handler (cluster_listen's) may
 * still be running: its end is waited for (bounded) before the client is
 * torn down.  A
 * message the handler destroys once nats_CloseAndWait has begun is never
 * freed: the client's collector thread has ended (LeakSanitizer showed
 * 1 MiB messages lost so, stopping a node in test_cluster). */
static void sub_close_waiting(natsSubscription *sub, int *done)
{
    if (!sub) return;
    bool wait = natsSubscription_SetOnCompleteCB(sub, on_sub_done, done) == NATS_OK;
    natsSubscription_Unsubscribe(sub);
    for (int i = 0; wait && i < CLUSTER_API_WAIT_MS && !__atomic_load_n(done, __ATOMIC_ACQUIRE);
         i++)
        nats_Sleep(1);
    natsSubscription_Destroy(sub);
}

/* What tells two messages of a stream apart cheaply: the time the stream
 * leader stamped it with (replicated with the entry: the same on every
 * server), its subject and its length. */
static uint64_t print_of(const char *subject, int64_t time_ns, int len)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *p = subject; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return h ^ (uint64_t)time_ns ^ ((uint64_t)len << 40);
}

static uint64_t msg_print(natsMsg *msg, const jsMsgMetaData *meta)
{
    return print_of(natsMsg_GetSubject(msg), meta->Timestamp, natsMsg_GetDataLength(msg));
}

/* The copy of the stream this node's consumer reads is checked against the
 * stream leader's (js_GetMsg is answered by the leader) once a second
 * while messages come: the message delivered at `seq` must be the
 * leader's at that seq.  A server that was the leader, paused (SIGSTOP)
 * with keyed publishes queued, came back with a copy one message short and
 * the later seqs one lower (nats-server 2.9.10; docs/cluster.md "Not
 * yet"): a consumer on it delivers every message but that one, with other
 * IDs, and its seqs follow each other.  Such a node says so (an error,
 * counted) and reports not ready (/readyz) until it is restarted.  The
 * keeper's thread (the loop's picks the message: check_due). */
static void check_copy(struct cluster *c, uint64_t seq, uint64_t print)
{
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = CLUSTER_CHECK_WAIT_MS;
    natsMsg *lm = NULL;
    if (js_GetMsg(&lm, c->js, c->stream, seq, &jo, NULL) == NATS_OK &&
        print_of(natsMsg_GetSubject(lm), natsMsg_GetTime(lm), natsMsg_GetDataLength(lm)) != print) {
        ADD(c->diverged, 1);
        STORE(c->unsound, 1);
        static log_limit lim = LOG_LIMIT_INIT;
        LOG_KV_LIMITED(&lim, 10.0, LOG_ERROR,
                       "cluster: this node's consumer reads a copy of the stream that disagrees "
                       "with the stream leader's (the NATS servers disagree): messages may be "
                       "missing here or carry other IDs; /readyz says not ready; restart this "
                       "node (its new consumer reads another copy)",
                       LOG_I("seq", seq));
    }
    natsMsg_Destroy(lm); /* not found (retention took it) or no answer: checked later */
}

/* The loop's thread, keep_lock held: at most once a second, the message
 * just delivered is the keeper's to check. */
static void check_due(struct cluster *c, natsMsg *msg, const jsMsgMetaData *meta)
{
    int64_t now = nats_Now();
    if (now < c->next_check) return;
    c->next_check = now + CLUSTER_CHECK_MS;
    c->check_seq = meta->Sequence.Stream;
    c->check_print = msg_print(msg, meta);
    pthread_cond_signal(&c->keep_cond);
}

/* Hands one message of the stream to the hub (the loop's thread, or the keeper's). */
static void deliver_one(struct cluster *c, natsMsg *msg, const jsMsgMetaData *meta)
{
    char topic[256], event[256];
    long tl = topic_of(c, natsMsg_GetSubject(msg), topic, sizeof(topic) - 1);
    if (tl <= 0) {
        static log_limit lim = LOG_LIMIT_INIT;
        LOG_KV_LIMITED(&lim, 10.0, LOG_WARN, "cluster: message not of sluice's form skipped",
                       LOG_S("subject", natsMsg_GetSubject(msg)));
        return;
    }
    topic[tl] = '\0';
    struct cluster_msg m = {.topic = topic,
                            .topic_len = (size_t)tl,
                            .data = natsMsg_GetData(msg),
                            .data_len = (size_t)natsMsg_GetDataLength(msg),
                            .seq = meta->Sequence.Stream,
                            .epoch = c->epoch,
                            .time_ms = meta->Timestamp / 1000000};
    const char *hv = NULL;
    if (natsMsgHeader_Get(msg, TYPE_HEADER, &hv) == NATS_OK && hv && !strcmp(hv, TYPE_JSON))
        m.flags = STORE_MSG_JSON;
    hv = NULL;
    if (natsMsgHeader_Get(msg, EVENT_HEADER, &hv) == NATS_OK && hv) {
        long el = cluster_token_decode(hv, strlen(hv), event, sizeof(event) - 1);
        if (el > 0) {
            event[el] = '\0';
            m.event = event;
            m.event_len = (size_t)el;
        }
    }
    c->seen[m.seq % SEEN_RING].seq = m.seq;
    c->seen[m.seq % SEEN_RING].print = msg_print(msg, meta);
    bump_last(c, m.seq);
    ADD(c->delivered, 1);
    if (!m.data) m.data = "";
    c->deliver(c->ud, &m);
}

/* The stream's info, with the message count of each subject matching
 * `subjects` (NULL: none), bounded by CLUSTER_API_WAIT_MS.  NULL when
 * JetStream does not answer, and then *why (if not NULL) says why.  Free
 * with jsStreamInfo_Destroy. */
static jsStreamInfo *stream_info(struct cluster *c, const char *subjects, natsStatus *why)
{
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = CLUSTER_API_WAIT_MS;
    jo.Stream.Info.SubjectsFilter = subjects;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, c->js, c->stream, &jo, &jerr);
    if (why) *why = s;
    return s == NATS_OK ? si : NULL;
}

/* The stream's description: "sluice epoch=<base36>" (as cluster_open
 * writes it), then, once a sluice reload has raised the count limit,
 * " floor=<N>@<seq>": the smallest limit that held before seq <seq>
 * (cluster_set_retention), so that every node, one started after the
 * raise too, judges gaps before it by that limit (count_limit). */
struct stream_desc {
    uint64_t epoch, floor, floor_at;
};

/* 1 to 19 decimal digits at *p, past them. */
static bool digits_u64(const char **p, uint64_t *out)
{
    uint64_t v = 0;
    size_t n = 0;
    for (; (*p)[n] >= '0' && (*p)[n] <= '9'; n++) {
        if (n == 19) return false;
        v = v * 10 + (uint64_t)((*p)[n] - '0');
    }
    *p += n;
    *out = v;
    return n > 0;
}

/* 0, and *d (floor 0: none); -1 for any other text. */
static int desc_parse(const char *desc, struct stream_desc *d)
{
    static const char pre[] = "sluice epoch=", fl[] = " floor=";
    memset(d, 0, sizeof(*d));
    if (strncmp(desc, pre, sizeof(pre) - 1) != 0) return -1;
    const char *p = desc + sizeof(pre) - 1;
    size_t n = strcspn(p, " ");
    if (n < 1 || n > 12 || p[0] == '0') return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (p[i] >= '0' && p[i] <= '9')
            v = (unsigned)(p[i] - '0');
        else if (p[i] >= 'a' && p[i] <= 'z')
            v = (unsigned)(p[i] - 'a') + 10;
        else
            return -1;
        d->epoch = d->epoch * 36 + v;
    }
    p += n;
    if (!*p) return 0;
    if (strncmp(p, fl, sizeof(fl) - 1) != 0) return -1;
    p += sizeof(fl) - 1;
    uint64_t floor, at;
    if (!digits_u64(&p, &floor) || *p++ != '@' || !digits_u64(&p, &at) || *p) return -1;
    d->floor = floor;
    d->floor_at = at;
    return 0;
}

/* The per-subject count limit to judge a gap after `after_seq` with,
 * given the stream's info just read.  The limit can change while nodes
 * run (a node's reload, `nats stream edit`): a lower one holds at once; a
 * raise does not bring back what the smaller one deleted, so points
 * before it keep the smaller: before the stream's last seq when this node
 * saw the raise, and before the floor's seq in the stream's description,
 * which a sluice reload's raise writes for every node (desc_parse).  Two
 * raises merge into the smaller limit and the later point: told too
 * often, never too seldom.  Unlimited (-1) is UINT64_MAX. */
static uint64_t count_limit(struct cluster *c, const jsStreamInfo *si, uint64_t after_seq)
{
    struct stream_desc sd = {0};
    if (si && si->Config && si->Config->Description &&
        desc_parse(si->Config->Description, &sd) != 0)
        sd.floor = 0;
    pthread_mutex_lock(&c->lock);
    if (si && si->Config) {
        int64_t m = si->Config->MaxMsgsPerSubject;
        uint64_t live = m > 0 ? (uint64_t)m : UINT64_MAX;
        if (live > c->limit_now) {
            if (c->limit_now < c->limit_before) c->limit_before = c->limit_now;
            c->raised_at = si->State.LastSeq;
        }
        c->limit_now = live;
    }
    if (sd.floor) {
        if (sd.floor < c->limit_before) c->limit_before = sd.floor;
        if (sd.floor_at > c->raised_at) c->raised_at = sd.floor_at;
    }
    uint64_t limit = c->limit_now;
    if (after_seq < c->raised_at && c->limit_before < limit) limit = c->limit_before;
    pthread_mutex_unlock(&c->lock);
    return limit;
}

/* Tells live subscribers that messages from seq `from` on were deleted
 * before this node's consumer had them, or could not be read.  Which
 * topics lost some is judged as the resume path does (cluster_read): age
 * and size limits take the stream's oldest, so when the stream now starts
 * past `from` any topic may have; the count limit only takes from a topic
 * at its maximum.  When neither tells (or the stream does not answer),
 * every topic is told: never missed, sometimes told for nothing.  Rare (a
 * node cut off while retention turned over), on the keeper's thread. */
static void tell_gap(struct cluster *c, uint64_t from)
{
    ADD(c->gaps, 1);
    jsStreamInfo *si = stream_info(c, c->filter, NULL);
    uint64_t told = 0;
    if (si && si->State.FirstSeq <= from && si->State.Subjects) {
        uint64_t limit = count_limit(c, si, from - 1);
        for (int i = 0; i < si->State.Subjects->Count; i++) {
            if (si->State.Subjects->List[i].Msgs < limit) continue;
            char name[256];
            long nl = topic_of(c, si->State.Subjects->List[i].Subject, name, sizeof(name) - 1);
            if (nl <= 0) continue;
            name[nl] = '\0';
            struct cluster_msg g = {
                .gap = true, .topic = name, .topic_len = (size_t)nl, .seq = from, .data = ""};
            c->deliver(c->ud, &g);
            told++;
        }
    }
    jsStreamInfo_Destroy(si);
    if (!told) {
        struct cluster_msg g = {.gap = true, .seq = from, .data = ""};
        c->deliver(c->ud, &g);
    }
    LOG_KV(LOG_WARN,
           "cluster: messages deleted or unreadable before this node had them: live "
           "subscribers get the gap signal",
           LOG_I("from", from), LOG_I("topics", told),
           LOG_S("which", told ? "at their limit" : "all"));
}

/* The messages after `after` and before `upto`, read from the stream and
 * delivered in order: what the live consumer skipped (a message lost on
 * the way, a consumer made anew past it).  The keeper's thread
 * (mend_jump): the loop takes no live message meanwhile. */
static void refetch(struct cluster *c, uint64_t after, uint64_t upto)
{
    uint64_t got = 0;
    natsStatus s = NATS_OK;
    /* Until the stream shows what lies between (a timeout while the
     * stream elects a leader is waited out, for a bounded time: the
     * consumer's next messages wait behind this). */
    int64_t until = nats_Now() + CLUSTER_REFETCH_WAIT_MS;
    bool done = false, gapped = false; /* a gap told since the last message given */
    while (!done && !LOAD(c->closing) && nats_Now() < until) {
        jsSubOptions so;
        consumer_options(c, &so, after + 1);
        natsSubscription *sub = NULL;
        jsErrCode jerr = 0;
        s = js_SubscribeSync(&sub, c->js, c->filter, NULL, &so, &jerr);
        for (uint64_t dseq = 1; s == NATS_OK && !done; dseq++) {
            natsMsg *msg = NULL;
            jsMsgMetaData *meta = NULL;
            s = natsSubscription_NextMsg(&msg, sub, CLUSTER_API_WAIT_MS);
            if (s == NATS_OK) s = natsMsg_GetMetaData(&meta, msg);
            if (s == NATS_OK && meta->Sequence.Consumer != dseq)
                s = NATS_MISMATCH; /* one lost on the way: this consumer again, anew */
            if (s == NATS_OK) {
                uint64_t seq = meta->Sequence.Stream;
                if (seq > after + 1 && !gapped) {
                    /* Deleted since (retention): what the stream still has
                     * follows.  Every jump is told, not only the first: a
                     * server that catches up applies deletions while it is
                     * read, so a read can find 10-14 and then 17 (seen in
                     * test_cluster: 15 and 16 went untold). */
                    tell_gap(c, after + 1);
                    gapped = true;
                }
                if (seq >= upto) {
                    done = true; /* what lay between was deleted: nothing to give */
                } else if (seq > after) {
                    deliver_one(c, msg, meta);
                    after = seq;
                    gapped = false;
                    got++;
                    done = after + 1 >= upto;
                }
            }
            jsMsgMetaData_Destroy(meta);
            natsMsg_Destroy(msg);
        }
        sub_close(sub);
        if (!done) nats_Sleep(100);
    }
    ADD(c->refetched, got);
    if (!done && !gapped) tell_gap(c, after + 1);
    if (done)
        LOG_KV(LOG_WARN, "cluster: the stream's consumer skipped messages: read them again",
               LOG_I("refetched", got), LOG_I("upto", upto));
    else
        LOG_KV(LOG_ERROR, "cluster: messages the stream's consumer skipped could not be read",
               LOG_I("refetched", got), LOG_I("from", after + 1), LOG_I("upto", upto),
               LOG_S("status", natsStatus_GetText(s)));
}

/* One message of the live consumer, in stream order (consume_lock held,
 * on the loop's thread or the keeper's).  The seqs of a stream that only
 * sluice writes follow each other (retention takes old messages, never
 * ones not yet delivered): an older seq (a renewed consumer's repeat, or
 * the last messages of the one it replaced) is dropped, so every node
 * delivers every message once and in order.  A seq past the next one is
 * the caller's affair.  Whether it was delivered. */
static bool take_one(struct cluster *c, natsMsg *msg, const jsMsgMetaData *meta)
{
    uint64_t seq = meta->Sequence.Stream;
    if (seq > c->consumed) {
        deliver_one(c, msg, meta);
        c->consumed = seq;
        return true;
    }
    ADD(c->repeats, 1);
    /* A recreated consumer starts where the last one's messages ended: a
     * repeat is rare, and one that is another message than the one
     * delivered at its seq means that the servers disagree on the stream's
     * seqs (it is not delivered: its ID is taken). */
    const __typeof__(c->seen[0]) *was = &c->seen[seq % SEEN_RING];
    bool other = was->seq == seq && was->print != msg_print(msg, meta);
    if (other) {
        ADD(c->diverged, 1);
        STORE(c->unsound, 1);
    }
    static log_limit lim = LOG_LIMIT_INIT;
    LOG_KV_LIMITED(&lim, 1.0, other ? LOG_ERROR : LOG_WARN,
                   other ? "cluster: the stream gave another message at a seq already "
                           "delivered (its servers disagree): dropped"
                         : "cluster: the stream's consumer repeated a message: dropped",
                   LOG_I("seq", seq), LOG_I("delivered", c->consumed));
    return false;
}

static bool metadata_of(natsMsg *msg, jsMsgMetaData **meta)
{
    if (natsMsg_GetMetaData(meta, msg) == NATS_OK) return true;
    static log_limit lim = LOG_LIMIT_INIT;
    LOG_KV_LIMITED(&lim, 10.0, LOG_WARN, "cluster: message without JetStream metadata skipped",
                   LOG_S("subject", natsMsg_GetSubject(msg)));
    return false;
}

/* The loop's thread, after each read and each kick: the live consumer's
 * messages that came, handed to the hub.  A jump in the seqs (a message
 * lost on the way, a consumer made anew past it) needs a read of the
 * stream, which waits for an answer: the message after the jump goes to
 * the keeper (c->mend), and the loop takes no more until the keeper has
 * delivered what lay between and it, and kicks the loop again. */
static void take_live(struct cluster *c)
{
    pthread_mutex_lock(&c->keep_lock);
    natsSubscription *sub = c->mend ? NULL : c->sub;
    int pending = 0;
    if (sub) natsSubscription_GetPending(sub, &pending, NULL);
    /* As many as are pending (asking an empty subscription costs an error
     * report).  A consumer seq mismatch is told once by a call that takes
     * no message: skipped (the error handler renews the consumer). */
    for (int taken = 0, calls = 0; taken < pending && calls <= pending && !c->mend; calls++) {
        natsMsg *msg = NULL;
        natsStatus st = natsSubscription_NextMsg(&msg, sub, 0);
        if (st == NATS_MISMATCH) continue;
        if (st != NATS_OK) break;
        taken++;
        jsMsgMetaData *meta = NULL;
        if (metadata_of(msg, &meta)) {
            pthread_mutex_lock(&c->consume_lock);
            if (meta->Sequence.Stream > c->consumed + 1) {
                c->mend = msg;
                msg = NULL;
                pthread_cond_signal(&c->keep_cond);
            } else if (take_one(c, msg, meta)) {
                check_due(c, msg, meta);
            }
            pthread_mutex_unlock(&c->consume_lock);
        }
        jsMsgMetaData_Destroy(meta);
        natsMsg_Destroy(msg);
    }
    pthread_mutex_unlock(&c->keep_lock);
}

/* The keeper's thread: what the live consumer skipped before c->mend, read
 * from the stream, then c->mend itself; the loop takes messages again. */
static void mend_jump(struct cluster *c, natsMsg *msg)
{
    jsMsgMetaData *meta = NULL;
    if (metadata_of(msg, &meta)) {
        pthread_mutex_lock(&c->consume_lock);
        uint64_t seq = meta->Sequence.Stream;
        if (seq > c->consumed + 1) refetch(c, c->consumed, seq);
        take_one(c, msg, meta);
        pthread_mutex_unlock(&c->consume_lock);
    }
    jsMsgMetaData_Destroy(meta);
    natsMsg_Destroy(msg);
}

/* The loop's callbacks (cluster_loop.h). */
static void on_loop_read(void *ud)
{
    take_live(ud);
}

static void on_loop_kick(void *ud)
{
    struct cluster *c = ud;
    send_queued(c);
    take_live(c); /* a consumer just made, or a mend done, may have messages waiting */
}

/* ---- the live consumer, made anew when it fails ------------------------------ */

/* Asks the keeper for a new live consumer, from the message after the last
 * one delivered (any thread). */
static void renew_consumer(struct cluster *c, const char *why)
{
    pthread_mutex_lock(&c->keep_lock);
    if (!c->renew) c->renew = why;
    pthread_cond_signal(&c->keep_cond);
    pthread_mutex_unlock(&c->keep_lock);
}

/* The client's thread: what it reports of a subscription.  For the live
 * consumer: heartbeats missed (its server died, or the consumer was
 * deleted), a heartbeat naming a later message than the last one that
 * came (lost on the way, none after it yet), or messages dropped. */
static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    (void)nc;
    struct cluster *c = closure;
    pthread_mutex_lock(&c->keep_lock);
    bool live = sub && sub == c->sub;
    pthread_mutex_unlock(&c->keep_lock);
    if (live &&
        (err == NATS_MISSED_HEARTBEAT || err == NATS_MISMATCH || err == NATS_SLOW_CONSUMER)) {
        renew_consumer(c, natsStatus_GetText(err));
        return;
    }
    /* A consumer being replaced or made misses its heartbeats: its
     * successor is the keeper's affair. */
    if (err == NATS_MISSED_HEARTBEAT) return;
    static log_limit lim = LOG_LIMIT_INIT;
    LOG_KV_LIMITED(&lim, 10.0, LOG_WARN, "cluster: the NATS client reported an error",
                   LOG_S("error", natsStatus_GetText(err)), LOG_S("live", live ? "yes" : "no"));
}

/* Makes the live consumer, from the message after the last one delivered,
 * with heartbeats (a consumer that died is noticed) and flow control (the
 * client answers it). */
static natsStatus live_subscribe(struct cluster *c, jsErrCode *jerr)
{
    pthread_mutex_lock(&c->consume_lock);
    uint64_t start = c->consumed + 1;
    pthread_mutex_unlock(&c->consume_lock);
    jsSubOptions so;
    consumer_options(c, &so, start);
    so.Config.FlowControl = true;
    so.Config.Heartbeat = (int64_t)CLUSTER_HEARTBEAT_MS * 1000000;
    natsSubscription *sub = NULL;
    /* Synchronous: the loop's thread takes its messages (take_live). */
    natsStatus s = js_SubscribeSync(&sub, c->js, c->filter, NULL, &so, jerr);
    if (s != NATS_OK) return s;
    /* A slow worker must not make the client drop messages of the record. */
    natsSubscription_SetPendingLimits(sub, -1, -1);
    pthread_mutex_lock(&c->keep_lock);
    c->sub = sub;
    pthread_mutex_unlock(&c->keep_lock);
    cluster_loop_kick(c->loop); /* what came before c->sub was set */
    return NATS_OK;
}

/* The keeper's thread: what waits for an answer from NATS, off the
 * loop's thread: a jump in the live consumer's seqs mended, this node's
 * copy checked, and the live consumer replaced when asked (and again
 * after a pause while that fails).  Messages of the old consumer that are
 * still on their way are dropped as repeats, or delivered (take_one
 * orders them). */
static void *keeper_main(void *arg)
{
    struct cluster *c = arg;
    pthread_setname_np(pthread_self(), "sluice-keeper");
    pthread_mutex_lock(&c->keep_lock);
    while (!LOAD(c->closing)) {
        if (c->mend) {
            natsMsg *msg = c->mend;
            pthread_mutex_unlock(&c->keep_lock);
            mend_jump(c, msg);
            pthread_mutex_lock(&c->keep_lock);
            c->mend = NULL;
            cluster_loop_kick(c->loop);
            continue;
        }
        if (c->check_seq) {
            uint64_t seq = c->check_seq, print = c->check_print;
            c->check_seq = 0;
            pthread_mutex_unlock(&c->keep_lock);
            check_copy(c, seq, print);
            pthread_mutex_lock(&c->keep_lock);
            continue;
        }
        if (!c->renew || !LOAD(c->connected)) {
            struct timespec ts = deadline_in_ms(CLUSTER_RENEW_RETRY_MS);
            pthread_cond_timedwait(&c->keep_cond, &c->keep_lock, &ts);
            continue;
        }
        const char *why = c->renew;
        c->renew = NULL;
        natsSubscription *old = c->sub;
        c->sub = NULL;
        pthread_mutex_unlock(&c->keep_lock);
        sub_close(old);
        jsErrCode jerr = 0;
        natsStatus s = live_subscribe(c, &jerr);
        ADD(c->renewals, 1);
        static log_limit lim = LOG_LIMIT_INIT;
        LOG_KV_LIMITED(&lim, 1.0, s == NATS_OK ? LOG_INFO : LOG_WARN,
                       s == NATS_OK ? "cluster: the stream's consumer made anew"
                                    : "cluster: the stream's consumer could not be made anew: "
                                      "tried again",
                       LOG_S("reason", why), LOG_S("status", s == NATS_OK ? "ok" : last_error(s)));
        pthread_mutex_lock(&c->keep_lock);
        if (s != NATS_OK && !c->renew) c->renew = why;
    }
    pthread_mutex_unlock(&c->keep_lock);
    return NULL;
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    struct cluster *c = closure;
    STORE(c->connected, 0);
    if (LOAD(c->closing)) return;
    const char *why = NULL;
    natsStatus s = natsConnection_GetLastError(nc, &why);
    LOG_KV(LOG_WARN, "cluster: disconnected from NATS: publishes answer 503 until it is back",
           LOG_S("reason", why && *why ? why : natsStatus_GetText(s)));
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    struct cluster *c = closure;
    char url[256] = "";
    natsConnection_GetConnectedUrl(nc, url, sizeof(url));
    STORE(c->max_payload, natsConnection_GetMaxPayload(nc));
    STORE(c->connected, 1);
    ADD(c->reconnects, 1);
    LOG_KV(LOG_INFO, "cluster: reconnected to NATS", LOG_S("server", url));
    /* Its consumer may have been on a server that is gone, and messages
     * sent while no one listened are not sent again. */
    renew_consumer(c, "reconnected");
}

/* ---- open, check, close ------------------------------------------------------- */

static const char *description_of(const jsStreamInfo *si)
{
    return si->Config && si->Config->Description ? si->Config->Description : "";
}

/* *si, read again once the stream has settled.  Nodes that start together
 * may each create the stream: nats-server 2.9 checks a create against the
 * streams it has applied, not the ones proposed, so a racing create's
 * config (its description: another epoch) can replace the first one's
 * just after a node has read it (three nodes started together got two
 * epochs in one CI run of test_nodes_started_together_share_one_stream_-
 * and_epoch).  Such creates are proposed before the first is applied,
 * and applied within milliseconds of it: a stream read when it was
 * CLUSTER_SETTLED_MS old (by its servers' clocks) has taken them all.  A
 * younger one is read again then (a creating node waits about that long
 * at start); bounded by `until`. */
static natsStatus settled_info(struct cluster *c, jsStreamInfo **si, int64_t until)
{
    for (;;) {
        int64_t age_ms = (nats_NowInNanoSeconds() - (*si)->Created) / 1000000;
        if (age_ms >= CLUSTER_SETTLED_MS || nats_Now() > until) return NATS_OK;
        nats_Sleep(age_ms < 0 ? CLUSTER_SETTLED_MS : CLUSTER_SETTLED_MS - age_ms);
        jsStreamInfo *next = NULL;
        natsStatus s = js_GetStreamInfo(&next, c->js, c->stream, NULL, NULL);
        if (s != NATS_OK) {
            if (nats_Now() > until) return s;
            continue; /* a leader being elected: asked again */
        }
        if (strcmp(description_of(*si), description_of(next)) != 0)
            LOG_KV(LOG_INFO, "cluster: another node's create replaced the stream's description",
                   LOG_S("was", description_of(*si)), LOG_S("now", description_of(next)));
        jsStreamInfo_Destroy(*si);
        *si = next;
    }
}

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        snprintf(err, errlen, __VA_ARGS__);                                                        \
        goto fail;                                                                                 \
    } while (0)

/* Differences between the stream as it is and as this node wants it. */
static int check_stream(const jsStreamConfig *have, const jsStreamConfig *want, char *err,
                        size_t errlen)
{
    char diff[512] = "";
    size_t dl = 0;
#define DIFF(...)                                                                                  \
    do {                                                                                           \
        int w_ = snprintf(diff + dl, sizeof(diff) - dl, __VA_ARGS__);                              \
        if (w_ > 0 && (size_t)w_ < sizeof(diff) - dl) dl += (size_t)w_;                            \
    } while (0)
    if (have->SubjectsLen != 1 || strcmp(have->Subjects[0], want->Subjects[0]) != 0)
        DIFF(" subjects (want %s)", want->Subjects[0]);
    if (have->Replicas != want->Replicas)
        DIFF(" replicas %ld (want %ld)", (long)have->Replicas, (long)want->Replicas);
    if (have->MaxMsgsPerSubject != want->MaxMsgsPerSubject)
        DIFF(" max_msgs_per_subject %lld (want %lld)", (long long)have->MaxMsgsPerSubject,
             (long long)want->MaxMsgsPerSubject);
    if (have->MaxAge != want->MaxAge)
        DIFF(" max_age %llds (want %llds)", (long long)(have->MaxAge / 1000000000),
             (long long)(want->MaxAge / 1000000000));
    if (have->Storage != want->Storage) DIFF(" storage (want file)");
    if (have->Retention != want->Retention) DIFF(" retention policy (want limits)");
    if (have->Discard != want->Discard) DIFF(" discard policy (want old)");
    if (have->Duplicates != want->Duplicates)
        DIFF(" duplicate_window %llds (want %ds)", (long long)(have->Duplicates / 1000000000),
             CLUSTER_DUPLICATE_WINDOW_S);
#undef DIFF
    if (!dl) return 0;
    snprintf(err, errlen,
             "cluster: stream %s exists with other settings:%s; change sluice's settings or the "
             "stream (nats stream edit/rm)",
             want->Name, diff);
    return SL_EINVAL;
}

int cluster_open(struct cluster **out, const struct cluster_opts *o, cluster_ack_fn ack,
                 cluster_msg_fn deliver, void *ud, char *err, size_t errlen)
{
    *out = NULL;
    if (cluster_opts_check(o, err, errlen) != 0) return SL_EINVAL;
    struct cluster *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return SL_ENOMEM;
    }
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->consume_lock, NULL);
    pthread_mutex_init(&c->keep_lock, NULL);
    pthread_cond_init(&c->keep_cond, NULL);
    pthread_mutex_init(&c->hz_lock, NULL);
    pthread_cond_init(&c->hz_cond, NULL);
    pthread_mutex_init(&c->send_lock, NULL);
    snprintf(c->stream, sizeof(c->stream), "%s", o->stream ? o->stream : "SLUICE");
    snprintf(c->filter, sizeof(c->filter), "%s.>", c->stream);
    snprintf(c->notes_subject, sizeof(c->notes_subject), "sluice-nodes.%s", c->stream);
    snprintf(c->get_subject, sizeof(c->get_subject), "$JS.API.STREAM.MSG.GET.%s", c->stream);
    c->ack = ack;
    c->deliver = deliver;
    c->ud = ud;
    c->max_per_topic = o->max_per_topic ? o->max_per_topic : DEFAULT_PER_TOPIC;
    c->max_age_ms = o->max_age_ms;
    c->limit_now = c->max_per_topic; /* the stream's, once checked */
    c->limit_before = UINT64_MAX;
    jsStreamInfo *si = NULL;
    natsStatus s;
    jsErrCode jerr = 0;
    /* The client's locks spin 2,000 times before they wait (its default):
     * with reader threads, the NATS loop and the client's own threads on two
     * cores, a profile of 3,000 resumes at once had 43% of the node's CPU
     * in that spinning (bench/cluster_resume_herd.py 3000 300 6: 1.5-1.6 s
     * of the node's CPU, 1.2 s with 200 spins, 1.1 s with none; the live
     * path's CPU per delivery showed no difference beyond its noise).
     * Before any other call into the client. */
    nats_Open(CLUSTER_LOCK_SPINS);
    if (natsOptions_Create(&c->opts) != NATS_OK) FAIL("out of memory");
    /* One URL each: natsOptions_SetURL takes no list. */
    char *list = strdup(o->servers);
    const char *urls[16];
    int nurls = 0;
    for (char *save = NULL, *u = list ? strtok_r(list, ",", &save) : NULL; u && nurls < 16;
         u = strtok_r(NULL, ",", &save))
        urls[nurls++] = u;
    s = list ? natsOptions_SetServers(c->opts, urls, nurls) : NATS_NO_MEMORY;
    free(list);
    if (s == NATS_OK) s = natsOptions_SetTimeout(c->opts, CLUSTER_API_WAIT_MS);
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(c->opts, -1); /* forever */
    if (s == NATS_OK) s = natsOptions_SetReconnectWait(c->opts, 250);
    /* A dead server is noticed within two pings. */
    if (s == NATS_OK) s = natsOptions_SetPingInterval(c->opts, 1000);
    if (s == NATS_OK) s = natsOptions_SetMaxPingsOut(c->opts, 2);
    /* The connection's I/O on the loop's thread (cluster_loop.h). */
    if (s == NATS_OK && cluster_loop_start(&c->loop, on_loop_read, on_loop_kick, c) != 0)
        s = NATS_NO_MEMORY;
    if (s == NATS_OK) s = cluster_loop_use(c->loop, c->opts);
    /* What is given to the client is written by the loop in the same pass
     * (cluster_loop.c), not by the client's flusher thread, which waits
     * 1 ms for more before each write: that made every publish one
     * wake-up and 1 ms later (bench/cluster.sh: a third of the CPU per
     * delivery at one publish in flight).  The write deadline bounds the
     * writes the client still makes itself (a reconnection's handshake)
     * to a server that reads nothing. */
    if (s == NATS_OK) s = natsOptions_SetSendAsap(c->opts, true);
    if (s == NATS_OK) s = natsOptions_SetWriteDeadline(c->opts, CLUSTER_WRITE_DEADLINE_MS);
    if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(c->opts, on_disconnected, c);
    if (s == NATS_OK) s = natsOptions_SetReconnectedCB(c->opts, on_reconnected, c);
    if (s == NATS_OK) s = natsOptions_SetErrorHandler(c->opts, on_async_error, c);
    if (s == NATS_OK && o->user) s = natsOptions_SetUserInfo(c->opts, o->user, o->password);
    if (s == NATS_OK && o->token) s = natsOptions_SetToken(c->opts, o->token);
    if (s == NATS_OK && o->creds)
        s = natsOptions_SetUserCredentialsFromFiles(c->opts, o->creds, NULL);
    if (s == NATS_OK && (o->tls_ca || o->tls_cert)) s = natsOptions_SetSecure(c->opts, true);
    if (s == NATS_OK && o->tls_ca) s = natsOptions_LoadCATrustedCertificates(c->opts, o->tls_ca);
    if (s == NATS_OK && o->tls_cert)
        s = natsOptions_LoadCertificatesChain(c->opts, o->tls_cert, o->tls_key);
    if (s != NATS_OK) FAIL("cluster: options: %s", last_error(s));
    s = natsConnection_Connect(&c->nc, c->opts);
    if (s != NATS_OK) FAIL("cluster: cannot connect to %s: %s", o->servers, last_error(s));
    STORE(c->max_payload, natsConnection_GetMaxPayload(c->nc));
    STORE(c->connected, 1);
    if (o->max_message && (uint64_t)c->max_payload < o->max_message + CLUSTER_HEADER_ROOM)
        LOG_KV(LOG_WARN,
               "cluster: the NATS servers' max_payload is below the largest message this node "
               "takes and its headers: a larger publish is refused (HTTP 413, WebSocket 1009); "
               "raise max_payload on every NATS server, or lower limits.max_body_size",
               LOG_I("max_payload", c->max_payload), LOG_I("max_body_size", o->max_message),
               LOG_I("header_room", CLUSTER_HEADER_ROOM));
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = CLUSTER_API_WAIT_MS;
    jo.PublishAsync.AckHandler = on_puback;
    jo.PublishAsync.AckHandlerClosure = c;
    jo.PublishAsync.MaxPending = CLUSTER_MAX_INFLIGHT;
    s = natsConnection_JetStream(&c->js, c->nc, &jo);
    if (s != NATS_OK) FAIL("cluster: JetStream: %s", last_error(s));

    jsStreamConfig want;
    jsStreamConfig_Init(&want);
    const char *subjects[1] = {c->filter};
    want.Name = c->stream;
    want.Subjects = subjects;
    want.SubjectsLen = 1;
    want.Storage = js_FileStorage;
    want.Retention = js_LimitsPolicy;
    want.Discard = js_DiscardOld;
    want.Replicas = o->replicas ? o->replicas : 1;
    want.MaxMsgsPerSubject = (int64_t)c->max_per_topic;
    want.MaxAge = (int64_t)o->max_age_ms * 1000000;
    want.Duplicates = (int64_t)CLUSTER_DUPLICATE_WINDOW_S * 1000000000;
    /* The IDs' epoch, kept in the stream's replicated config: every node
     * reads the same (the creation time each server reports differs). */
    char desc_buf[64];
    char epoch_txt[24];
    store_id_format((uint64_t)nats_NowInNanoSeconds() / 1000, 1, epoch_txt); /* µs: 10 digits */
    *strchr(epoch_txt, '-') = '\0';
    snprintf(desc_buf, sizeof(desc_buf), "sluice epoch=%s", epoch_txt);
    want.Description = desc_buf;
    /* Nodes that start together race to create the stream, and a cluster
     * just formed may not answer JetStream requests yet, nor place a
     * stream's replicas: its leader learns each server's resources from
     * that server's first report (nats-server 2.10 refused a create right
     * after the cluster formed, 1 test run in 27).  All are waited out, for
     * a bounded time. */
    int64_t until = nats_Now() + CLUSTER_START_WAIT_MS;
    bool created = false, told = false;
    for (;;) {
        jerr = 0;
        s = js_GetStreamInfo(&si, c->js, c->stream, NULL, &jerr);
        if (s == NATS_NOT_FOUND) {
            jerr = 0;
            s = js_AddStream(&si, c->js, &want, NULL, &jerr);
            created = s == NATS_OK;
        }
        if (s == NATS_OK || nats_Now() > until) break;
        if (jerr != 0 && jerr != JSStreamNameExistErr && jerr != JSClusterNoPeersErr &&
            s != NATS_TIMEOUT)
            break; /* refused */
        if (jerr == JSClusterNoPeersErr && !told) {
            LOG_KV(LOG_WARN,
                   "cluster: fewer NATS servers with JetStream than the stream's replicas (yet): "
                   "waiting",
                   LOG_S("stream", c->stream), LOG_I("replicas", (uint64_t)want.Replicas),
                   LOG_I("wait_ms", CLUSTER_START_WAIT_MS));
            told = true;
        }
        jsStreamInfo_Destroy(si);
        si = NULL;
        nats_Sleep(250);
    }
    if (s != NATS_OK)
        FAIL("cluster: cannot read or create stream %s: %s (JetStream error %d; %s)", c->stream,
             last_error(s), (int)jerr,
             jerr == JSClusterNoPeersErr
                 ? "fewer NATS servers with JetStream than the stream's replicas"
                 : "is JetStream enabled?");
    if (created)
        LOG_KV(LOG_INFO, "cluster: stream created", LOG_S("stream", c->stream),
               LOG_I("replicas", (uint64_t)want.Replicas));
    /* The epoch is the stream's creation time as the stream keeps it. */
    s = settled_info(c, &si, until);
    if (s != NATS_OK) FAIL("cluster: cannot read stream %s: %s", c->stream, last_error(s));
    /* Checked even when this node created it: a racing node's create
     * with other settings may have replaced this one's. */
    if (check_stream(si->Config, &want, err, errlen) != 0) goto fail;
    const char *desc = si->Config ? si->Config->Description : NULL;
    struct stream_desc sd;
    if (!desc || desc_parse(desc, &sd) != 0)
        FAIL("cluster: stream %s has no sluice epoch in its description (\"%s\"): let sluice "
             "create it, or describe it as \"sluice epoch=<1-12 of [0-9a-z]>\"",
             c->stream, desc ? desc : "");
    c->epoch = sd.epoch;
    count_limit(c, si, 0); /* its floor */
    c->last_seq = si->State.LastSeq;
    c->consumed = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    si = NULL;

    /* A stream just created elects its leader first: a consumer request
     * may time out meanwhile (seen on a loaded machine), waited out. */
    until = nats_Now() + CLUSTER_START_WAIT_MS;
    for (;;) {
        jerr = 0;
        s = live_subscribe(c, &jerr);
        if (s == NATS_OK || s != NATS_TIMEOUT || nats_Now() > until) break;
        nats_Sleep(250);
    }
    if (s != NATS_OK)
        FAIL("cluster: cannot consume stream %s: %s (JetStream error %d)", c->stream, last_error(s),
             (int)jerr);
    if (pthread_create(&c->keeper, NULL, keeper_main, c) != 0) FAIL("cluster: no thread");
    c->keeper_running = true;
    *out = c;
    return 0;
fail:
    jsStreamInfo_Destroy(si);
    cluster_close(c);
    return SL_EIO;
}

void cluster_close(struct cluster *c)
{
    if (!c) return;
    pthread_mutex_lock(&c->keep_lock);
    STORE(c->closing, 1);
    pthread_cond_signal(&c->keep_cond);
    pthread_mutex_unlock(&c->keep_lock);
    if (c->keeper_running) pthread_join(c->keeper, NULL);
    /* The loop takes no more messages; what it was given to publish still
     * goes (it never waits: bounded by the PubAcks' wait below). */
    pthread_mutex_lock(&c->keep_lock);
    natsSubscription *live = c->sub;
    c->sub = NULL;
    natsMsg_Destroy(c->mend);
    c->mend = NULL;
    pthread_mutex_unlock(&c->keep_lock);
    for (int i = 0; c->loop && i < CLUSTER_API_WAIT_MS; i++) {
        pthread_mutex_lock(&c->send_lock);
        bool queued = c->send_head;
        pthread_mutex_unlock(&c->send_lock);
        if (!queued) break;
        cluster_loop_kick(c->loop);
        nats_Sleep(1);
    }
    sub_close(live);
    sub_close_waiting(c->notes, &c->notes_done);
    if (c->js) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = CLUSTER_PUBLISH_TIMEOUT_MS + 1000;
        js_PublishAsyncComplete(c->js, &po);
    }
    if (c->nc) natsConnection_Close(c->nc); /* detaches it from the loop */
    cluster_loop_stop(c->loop);
    /* Publishes never given to the client (the loop held them back): freed
     * here; the table below answers them. */
    for (inflight *f = c->send_head; f; f = f->send_next)
        natsMsg_Destroy(f->msg);
    /* What is still in the table got no ack: not known to be stored. */
    for (size_t i = 0; i < PENDING_BUCKETS; i++) {
        while (c->table[i]) {
            inflight *f = c->table[i];
            c->table[i] = f->next;
            c->ack(c->ud, f->req, SL_EIO, 0, false);
            free(f);
        }
    }
    jsCtx_Destroy(c->js);
    natsConnection_Destroy(c->nc);
    natsOptions_Destroy(c->opts);
    /* The client's threads may still be in a callback that reads c (a
     * disconnect is reported from its own thread): wait until every one
     * has ended.  One cluster per process, closed at exit, so the
     * library's end is this one's. */
    nats_CloseAndWait(CLUSTER_API_WAIT_MS);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->consume_lock);
    pthread_mutex_destroy(&c->keep_lock);
    pthread_cond_destroy(&c->keep_cond);
    pthread_mutex_destroy(&c->hz_lock);
    pthread_cond_destroy(&c->hz_cond);
    pthread_mutex_destroy(&c->send_lock);
    free(c);
}

uint64_t cluster_epoch(const struct cluster *c)
{
    return c->epoch;
}

uint64_t cluster_last_seq(const struct cluster *c)
{
    return LOAD(((struct cluster *)c)->last_seq);
}

bool cluster_sound(const struct cluster *c)
{
    return !LOAD(((struct cluster *)c)->unsound);
}

bool cluster_connected(const struct cluster *c)
{
    /* As the client's callbacks last said: its status call waits for the
     * connection's lock (see cluster_publish). */
    return LOAD(((struct cluster *)c)->connected) != 0;
}

void cluster_get_stats(const struct cluster *c, struct cluster_stats *st)
{
    struct cluster *m = (struct cluster *)c;
    st->published = LOAD(m->published);
    st->publish_failures = LOAD(m->publish_failures);
    st->delivered = LOAD(m->delivered);
    st->reconnects = LOAD(m->reconnects);
    st->inflight = LOAD(m->ninflight);
    st->refetched = LOAD(m->refetched);
    st->repeats = LOAD(m->repeats);
    st->gaps = LOAD(m->gaps);
    st->diverged = LOAD(m->diverged);
    st->renewals = LOAD(m->renewals);
    st->read_retries = LOAD(m->read_retries);
    st->read_failures = LOAD(m->read_failures);
    st->read_gets = LOAD(m->read_gets);
    st->read_consumers = LOAD(m->read_consumers);
    st->connected = cluster_connected(c);
}

static int id_text_parse(const char *id, size_t len, uint64_t *epoch, uint64_t *seq)
{
    size_t i = 0;
    uint64_t e = 0, q = 0;
    if (!id || len == 0 || len >= STORE_ID_MAX || id[0] == '0') return -1;
    for (; i < len && id[i] != '-'; i++) {
        char ch = id[i];
        unsigned d;
        if (ch >= '0' && ch <= '9')
            d = (unsigned)(ch - '0');
        else if (ch >= 'a' && ch <= 'z')
            d = (unsigned)(ch - 'a') + 10;
        else
            return -1;
        if (__builtin_mul_overflow(e, 36, &e) || __builtin_add_overflow(e, d, &e)) return -1;
    }
    if (i == 0 || i == len) return -1;
    i++;
    if (i == len || id[i] == '0') return -1;
    for (; i < len; i++) {
        if (id[i] < '0' || id[i] > '9') return -1;
        unsigned d = (unsigned)(id[i] - '0');
        if (__builtin_mul_overflow(q, 10, &q) || __builtin_add_overflow(q, d, &q)) return -1;
    }
    *epoch = e;
    *seq = q;
    return 0;
}

int cluster_id_parse(struct cluster *c, const char *id, size_t len, uint64_t *seq)
{
    uint64_t e, q;
    if (id_text_parse(id, len, &e, &q) != 0 || e != c->epoch) return SL_EUNKNOWN;
    *seq = q;
    return q > LOAD(c->last_seq) ? CLUSTER_ID_AHEAD : 0;
}

/* ---- a message read by one request ------------------------------------------ */

/* The value of header `key` in a NATS header block ("NATS/1.0\r\nKey:
 * Value\r\n...\r\n"), NUL-terminated into out: its length, or -1 when it
 * is absent or longer than outlen - 1. */
static long header_value(const char *block, size_t len, const char *key, char *out, size_t outlen)
{
    size_t kl = strlen(key);
    const char *end = block + len;
    const char *p = memchr(block, '\n', len); /* past the version line */
    while (p && ++p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *le = eol ? eol : end;
        if (le > p && le[-1] == '\r') le--;
        if ((size_t)(le - p) > kl && p[kl] == ':' && strncasecmp(p, key, kl) == 0) {
            const char *v = p + kl + 1;
            while (v < le && (*v == ' ' || *v == '\t'))
                v++;
            size_t vl = (size_t)(le - v);
            if (vl >= outlen) return -1;
            memcpy(out, v, vl);
            out[vl] = '\0';
            return (long)vl;
        }
        p = eol;
    }
    return -1;
}

/* Milliseconds since the epoch of an RFC 3339 time as nats-server writes
 * one ("2026-12-07T08:03:58.827551531Z"; an offset is read too): 0 or -1. */
static int rfc3339_ms(const char *s, int64_t *ms)
{
    struct tm tm = {0};
    int n = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &n) != 6 ||
        n != 19)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    const char *p = s + n;
    int64_t frac = 0;
    if (*p == '.') {
        int digits = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, digits++)
            if (digits < 3) frac = frac * 10 + (*p - '0');
        if (digits == 0) return -1;
        for (; digits < 3; digits++)
            frac *= 10;
    }
    int64_t offset = 0;
    if (*p == 'Z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh = 0, om = 0, on = 0;
        if (sscanf(p + 1, "%2d:%2d%n", &oh, &om, &on) != 2 || on != 5) return -1;
        offset = (*p == '-' ? -1 : 1) * ((int64_t)oh * 60 + om) * 60;
        p += 6;
    } else {
        return -1;
    }
    if (*p) return -1;
    time_t t = timegm(&tm);
    if (t == (time_t)-1) return -1;
    *ms = ((int64_t)t - offset) * 1000 + frac;
    return 0;
}

/* The fields of the answer's "message" into g (data allocated). */
static int got_fill(json_t *m, const char *subject, struct cluster_got *g)
{
    const char *subj = json_string_value(json_object_get(m, "subject"));
    const char *time = json_string_value(json_object_get(m, "time"));
    json_t *seq = json_object_get(m, "seq");
    json_t *hdrs = json_object_get(m, "hdrs"), *data = json_object_get(m, "data");
    if (!subj || strcmp(subj, subject) != 0 || !json_is_integer(seq) ||
        json_integer_value(seq) <= 0 || !time || rfc3339_ms(time, &g->time_ms) != 0 ||
        (hdrs && !json_is_string(hdrs)) || (data && !json_is_string(data)))
        return SL_EPROTO;
    g->seq = (uint64_t)json_integer_value(seq);
    if (hdrs) {
        size_t hl = json_string_length(hdrs);
        char *block = malloc(b64_decoded_max(hl) + 1);
        if (!block) return SL_ENOMEM;
        ssize_t bl = b64_decode(block, b64_decoded_max(hl), json_string_value(hdrs), hl);
        char v[3 * sizeof(g->event) + 1];
        if (bl >= 0 && header_value(block, (size_t)bl, TYPE_HEADER, v, sizeof v) > 0 &&
            strcmp(v, TYPE_JSON) == 0)
            g->flags = STORE_MSG_JSON;
        long vl = bl >= 0 ? header_value(block, (size_t)bl, EVENT_HEADER, v, sizeof v) : -1;
        free(block);
        if (bl < 0) return SL_EPROTO;
        long el = vl > 0 ? cluster_token_decode(v, (size_t)vl, g->event, sizeof(g->event)) : -1;
        if (el > 0) g->event_len = (size_t)el; /* one not of sluice's form: none, as live */
    }
    size_t dl = data ? json_string_length(data) : 0;
    if (!(g->data = malloc(b64_decoded_max(dl) + 1))) return SL_ENOMEM;
    ssize_t n = b64_decode(g->data, b64_decoded_max(dl), data ? json_string_value(data) : NULL, dl);
    if (n < 0) {
        free(g->data);
        g->data = NULL;
        return SL_EPROTO;
    }
    g->data[n] = '\0';
    g->data_len = (size_t)n;
    return 0;
}

int cluster_got_parse(const char *json, size_t len, const char *subject, struct cluster_got *g)
{
    memset(g, 0, sizeof(*g));
    json_t *root = json_loadb(json, len, 0, NULL);
    if (!root) return SL_EPROTO;
    json_t *err = json_object_get(root, "error"), *m = json_object_get(root, "message");
    int rc = SL_EPROTO;
    if (err)
        rc = json_integer_value(json_object_get(err, "code")) == 404 ? SL_ENOTFOUND : SL_EPROTO;
    else if (json_is_object(m))
        rc = got_fill(m, subject, g);
    json_decref(root);
    return rc;
}

void cluster_got_free(struct cluster_got *g)
{
    free(g->data);
    g->data = NULL;
}

/* ---- reads for a resume ------------------------------------------------------- */

typedef struct rmsg {
    uint64_t seq;
    int64_t time_ms;
    size_t topic_index;
    char *event; /* NULL: none */
    size_t event_len;
    unsigned flags; /* STORE_MSG_JSON */
    size_t data_len;
    char data[];
} rmsg;

/* A request of a read that failed: logged with the step and what NATS
 * said (cluster_read and cluster_horizon count, and try once more). */
static int read_failed(const char *step, const char *subject, natsStatus s)
{
    static log_limit lim = LOG_LIMIT_INIT;
    LOG_KV_LIMITED(&lim, 10.0, LOG_WARN, "cluster: a request of a read of the stream failed",
                   LOG_S("step", step), LOG_S("subject", subject ? subject : ""),
                   LOG_S("nats", natsStatus_GetText(s)));
    return SL_EIO;
}

/* Stream state for one subject: its message count, the stream's first
 * seq, and the count limit for a gap after after_seq (count_limit). */
static int subject_state(struct cluster *c, const char *subject, uint64_t after_seq,
                         uint64_t *count, uint64_t *stream_first, uint64_t *limit)
{
    natsStatus why = NATS_OK;
    jsStreamInfo *si = stream_info(c, subject, &why);
    if (!si) return read_failed("subject state", subject, why);
    *count = 0;
    *stream_first = si->State.FirstSeq;
    *limit = count_limit(c, si, after_seq);
    if (si->State.Subjects)
        for (int i = 0; i < si->State.Subjects->Count; i++)
            if (strcmp(si->State.Subjects->List[i].Subject, subject) == 0)
                *count = si->State.Subjects->List[i].Msgs;
    jsStreamInfo_Destroy(si);
    return 0;
}

static void rmsgs_free(rmsg **v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i]->event);
        free(v[i]);
    }
}

/* A message of a read appended to *v (its data and event copied): 0 or
 * SL_ENOMEM. */
static int rmsg_add(rmsg ***v, size_t *n, size_t *vcap, const rmsg *m, const char *data)
{
    if (*n == *vcap) {
        size_t nc = *vcap ? *vcap * 2 : 64;
        rmsg **nv = realloc(*v, nc * sizeof(rmsg *));
        if (!nv) return SL_ENOMEM;
        *v = nv;
        *vcap = nc;
    }
    rmsg *r = malloc(sizeof(rmsg) + m->data_len + 1);
    char *ev = m->event_len ? malloc(m->event_len) : NULL;
    if (!r || (m->event_len && !ev)) {
        free(r);
        free(ev);
        return SL_ENOMEM;
    }
    *r = *m;
    if (m->data_len) memcpy(r->data, data, m->data_len);
    r->event = ev;
    if (ev) memcpy(ev, m->event, m->event_len);
    (*v)[(*n)++] = r;
    return 0;
}

/* The messages of one subject read for a resume, appended to v; read_by_gets
 * and read_by_consumer go on from `after` and move it. */
typedef struct subject_read {
    const char *subject;
    size_t index;    /* the topic's */
    uint64_t after;  /* the newest read so far (at first the reader's point) */
    uint64_t first;  /* the first read (0: none yet) */
    uint64_t last;   /* the subject's newest, as the stream leader said */
    size_t got, cap; /* read, and at most */
    rmsg ***v;
    size_t *n, *vcap;
} subject_read;

/* The first message of `subject` at or after seq `from`, asked of the
 * stream leader ($JS.API.STREAM.MSG.GET with next_by_subj): one request.
 * 0 with *g to free; SL_ENOTFOUND when the leader has none; SL_EIO. */
static int get_next(struct cluster *c, const char *subject, uint64_t from, struct cluster_got *g)
{
    char body[64 + 3 * 256 + 64];
    int bl = snprintf(body, sizeof body, "{\"seq\":%llu,\"next_by_subj\":\"%s\"}",
                      (unsigned long long)from, subject);
    if (bl < 0 || (size_t)bl >= sizeof body) return SL_EINVAL;
    natsMsg *reply = NULL;
    natsStatus s =
        natsConnection_Request(&reply, c->nc, c->get_subject, body, bl, CLUSTER_API_WAIT_MS);
    if (s != NATS_OK) return read_failed("get", subject, s);
    const char *answer = natsMsg_GetData(reply);
    int alen = natsMsg_GetDataLength(reply);
    int rc = cluster_got_parse(answer, (size_t)alen, subject, g);
    if (rc == SL_EPROTO) {
        /* An error JetStream answered (a leader being elected, say) or
         * an answer not of its form: what it said is logged. */
        static log_limit lim = LOG_LIMIT_INIT;
        LOG_KV_LIMITED(
            &lim, 10.0, LOG_WARN, "cluster: a get of the stream was not answered a message",
            LOG_S("subject", subject), LOG_SN("answer", answer, alen < 300 ? alen : 300));
        rc = SL_EIO; /* logged once, with the answer: not read_failed's line too */
    }
    natsMsg_Destroy(reply);
    return rc;
}

/* Up to CLUSTER_GET_MAX of the subject's messages after r->after, through
 * r->last, one request each: a clustered stream makes and deletes a
 * consumer through its meta group's Raft log, which costs its servers
 * ten times the CPU of a request the leader answers alone
 * (bench/cluster_shortpoll.py --behind), and most resumes are a few
 * messages behind.  0, SL_EIO or SL_ENOMEM. */
static int read_by_gets(struct cluster *c, subject_read *r)
{
    for (size_t n = 0; n < CLUSTER_GET_MAX && r->got < r->cap && r->after < r->last; n++) {
        struct cluster_got g;
        int rc = get_next(c, r->subject, r->after + 1, &g);
        /* None left through `last`: deleted since (age), or a leader that
         * lacks what the one before told.  This try fails (tried once
         * more, with the topic's newest asked for again). */
        if (rc == SL_ENOTFOUND)
            return read_failed("get: the newest is gone", r->subject, NATS_NOT_FOUND);
        if (rc != 0) return rc;
        rmsg m = {.seq = g.seq,
                  .time_ms = g.time_ms,
                  .topic_index = r->index,
                  .event = g.event,
                  .event_len = g.event_len,
                  .flags = g.flags,
                  .data_len = g.data_len};
        rc = g.seq > r->after ? rmsg_add(r->v, r->n, r->vcap, &m, g.data)
                              : read_failed("get: an older message", r->subject, NATS_MISMATCH);
        cluster_got_free(&g);
        if (rc != 0) return rc;
        ADD(c->read_gets, 1);
        if (!r->first) r->first = g.seq;
        r->after = g.seq;
        r->got++;
    }
    return 0;
}

/* The rest of the subject's messages after r->after, from a short-lived
 * consumer: up to r->cap in all, through r->last. */
static int read_by_consumer(struct cluster *c, subject_read *r)
{
    jsSubOptions so;
    consumer_options(c, &so, r->after + 1);
    natsSubscription *sub = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_SubscribeSync(&sub, c->js, r->subject, NULL, &so, &jerr);
    if (s != NATS_OK) return read_failed("consumer", r->subject, s);
    ADD(c->read_consumers, 1);
    int rc = 0;
    for (uint64_t dseq = 1; r->got < r->cap; dseq++) {
        natsMsg *msg = NULL;
        if ((s = natsSubscription_NextMsg(&msg, sub, CLUSTER_API_WAIT_MS)) != NATS_OK) {
            rc = read_failed("next message", r->subject, s);
            break;
        }
        jsMsgMetaData *meta = NULL;
        /* One lost on the way: this try of the read fails (cluster_read
         * tries once more). */
        if ((s = natsMsg_GetMetaData(&meta, msg)) != NATS_OK || meta->Sequence.Consumer != dseq) {
            jsMsgMetaData_Destroy(meta);
            natsMsg_Destroy(msg);
            rc = read_failed(s != NATS_OK ? "metadata" : "message lost on the way", r->subject, s);
            break;
        }
        uint64_t pending = meta->NumPending;
        rmsg m = {.seq = meta->Sequence.Stream,
                  .time_ms = meta->Timestamp / 1000000,
                  .topic_index = r->index,
                  .data_len = (size_t)natsMsg_GetDataLength(msg)};
        const char *hv = NULL;
        if (natsMsgHeader_Get(msg, TYPE_HEADER, &hv) == NATS_OK && hv && !strcmp(hv, TYPE_JSON))
            m.flags = STORE_MSG_JSON;
        hv = NULL;
        char ev[256];
        if (natsMsgHeader_Get(msg, EVENT_HEADER, &hv) == NATS_OK && hv) {
            long el = cluster_token_decode(hv, strlen(hv), ev, sizeof(ev));
            if (el > 0) {
                m.event = ev;
                m.event_len = (size_t)el;
            }
        }
        rc = rmsg_add(r->v, r->n, r->vcap, &m, natsMsg_GetData(msg));
        jsMsgMetaData_Destroy(meta);
        natsMsg_Destroy(msg);
        if (rc != 0) break;
        if (!r->first) r->first = m.seq;
        r->after = m.seq;
        r->got++;
        /* The consumer's server may be behind the leader: it then counts
         * nothing pending before `last`, which it delivers once it has it.
         * Stopping there made pages end short, and the reader's cursor
         * could pass what they lacked. */
        if (pending == 0 && m.seq >= r->last) break;
    }
    sub_close(sub);
    return rc;
}

/* Whether the subject has a message at or before `seq` (the leader's
 * first of it, one request): 1, 0, or SL_EIO. */
static int has_at_or_before(struct cluster *c, const char *subject, uint64_t seq)
{
    struct cluster_got g;
    int rc = get_next(c, subject, 1, &g);
    if (rc == SL_ENOTFOUND) return 0;
    if (rc != 0) return rc;
    cluster_got_free(&g);
    return g.seq <= seq;
}

static int by_seq(const void *a, const void *b)
{
    const rmsg *x = *(rmsg *const *)a, *y = *(rmsg *const *)b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* The stream's last seq now: one request. */
static natsStatus stream_last_seq(struct cluster *c, uint64_t *seq)
{
    natsStatus why = NATS_OK;
    jsStreamInfo *si = stream_info(c, NULL, &why);
    if (!si) return why;
    *seq = si->State.LastSeq;
    count_limit(c, si, 0); /* seen often: a change of the limit is seen soon */
    jsStreamInfo_Destroy(si);
    return NATS_OK;
}

int cluster_horizon(struct cluster *c, uint64_t *seq)
{
    uint64_t seen = LOAD(c->last_seq);
    if (!cluster_connected(c)) {
        ADD(c->read_failures, 1);
        return read_failed("horizon", NULL, NATS_CONNECTION_DISCONNECTED);
    }
    /* Any request that starts after this call began will do, so reads
     * that come together share one (a caught-up short poll's read is
     * this request alone).  The one in flight now may have started
     * before: wait for the next.  After one that failed, the next (a
     * second try, as cluster_read's). */
    pthread_mutex_lock(&c->hz_lock);
    uint64_t need = c->hz_started + 1;
    struct timespec give_up = deadline_in_ms(3 * CLUSTER_API_WAIT_MS);
    natsStatus st = NATS_TIMEOUT;
    for (int tries = 1;; tries++) {
        while (c->hz_done < need) {
            if (!c->hz_busy) {
                c->hz_busy = true;
                uint64_t gen = ++c->hz_started;
                pthread_mutex_unlock(&c->hz_lock);
                uint64_t last = 0;
                natsStatus got = stream_last_seq(c, &last);
                if (got != NATS_OK) read_failed("horizon", NULL, got);
                pthread_mutex_lock(&c->hz_lock);
                c->hz_seq = last;
                c->hz_status = got;
                c->hz_done = gen;
                c->hz_busy = false;
                pthread_cond_broadcast(&c->hz_cond);
                continue;
            }
            if (pthread_cond_timedwait(&c->hz_cond, &c->hz_lock, &give_up) == ETIMEDOUT) break;
        }
        st = c->hz_done >= need ? c->hz_status : NATS_TIMEOUT;
        if (st == NATS_OK || c->hz_done < need || tries == CLUSTER_READ_TRIES ||
            !cluster_connected(c))
            break;
        ADD(c->read_retries, 1);
        need = c->hz_started + 1;
        give_up = deadline_in_ms(3 * CLUSTER_API_WAIT_MS);
    }
    uint64_t last = c->hz_seq;
    pthread_mutex_unlock(&c->hz_lock);
    if (st != NATS_OK) {
        ADD(c->read_failures, 1);
        return SL_EIO;
    }
    *seq = last > seen ? last : seen;
    return 0;
}

/* One try of cluster_read's requests: each topic's messages after
 * after_seq (at most cap) appended to *v, infos filled, *horizon the last
 * read of the first topic that has more (UINT64_MAX: none).  0 or an SL_E*
 * code. */
static int read_topics(struct cluster *c, const struct store_topic_ref *topics, size_t n,
                       uint64_t after_seq, size_t cap, rmsg ***v, size_t *nv, size_t *vcap,
                       struct store_read_info *infos, uint64_t *horizon)
{
    int rc = 0;
    memset(infos, 0, n * sizeof(*infos));
    *horizon = UINT64_MAX;
    for (size_t i = 0; i < n && rc == 0; i++) {
        struct store_read_info *info = &infos[i];
        char subject[64 + 3 * 256 + 2];
        if (subject_of(c, topics[i].name, topics[i].len, subject, sizeof(subject)) != 0) continue;
        /* Its newest (0: none): nothing to read when the reader has it. */
        uint64_t last = 0;
        natsMsg *lm = NULL;
        jsOptions jo;
        jsOptions_Init(&jo);
        jo.Wait = CLUSTER_API_WAIT_MS;
        natsStatus ls = js_GetLastMsg(&lm, c->js, c->stream, subject, &jo, NULL);
        if (ls == NATS_OK) last = natsMsg_GetSequence(lm);
        natsMsg_Destroy(lm);
        if (ls != NATS_OK && ls != NATS_NOT_FOUND) {
            rc = read_failed("last message", subject, ls);
            break;
        }
        info->exists = last > 0;
        /* Every message of the subject up to the horizon is at or before
         * `last` (asked after it): reading through `last` is enough. */
        subject_read r = {.subject = subject,
                          .index = i,
                          .after = after_seq,
                          .last = last,
                          .cap = cap,
                          .v = v,
                          .n = nv,
                          .vcap = vcap};
        rc = read_by_gets(c, &r);
        if (rc == 0 && r.after < r.last && r.got < r.cap) rc = read_by_consumer(c, &r);
        if (rc != 0) break;
        info->more = r.got == r.cap && r.after < r.last;
        info->last_seq = r.got ? r.after : last;
        info->first_seq = r.first;
        /* A message of this topic after after_seq was dropped only if
         * retention took it: by count (the topic holds its maximum, all of
         * them after the point) or by age or bytes (which take the
         * stream's oldest first, so the stream starts past the point).
         * Either way what is dropped is older than what is kept: a topic
         * whose newest is at or before the point lost nothing after it.
         * A topic with nothing left may have lost something: told when
         * the stream starts past the point. */
        bool lost_before = last > 0 && last <= after_seq;
        if (after_seq && !lost_before && (r.first == 0 || r.first > after_seq + 1)) {
            /* Only then is the subject's state asked for (one request):
             * a topic read from the message right after the point, or
             * whose newest is at or before it, lost nothing. */
            uint64_t count = 0, stream_first = 0, count_max = 0;
            rc = subject_state(c, subject, after_seq, &count, &stream_first, &count_max);
            if (rc != 0) break;
            bool full = false;
            if (r.first && count >= count_max && !info->more) {
                full = r.got >= count_max; /* all it holds is after the point */
            } else if (r.first && count >= count_max) {
                int before = has_at_or_before(c, subject, after_seq);
                if (before < 0) {
                    rc = before;
                    break;
                }
                full = !before;
            }
            info->gap = full || stream_first > after_seq + 1;
        }
        if (info->more && info->last_seq < *horizon) *horizon = info->last_seq;
    }
    return rc;
}

int cluster_read(struct cluster *c, const struct store_topic_ref *topics, size_t n,
                 uint64_t after_seq, uint64_t upto, size_t limit, store_read_fn fn, void *ud,
                 struct store_read_info *infos)
{
    if (!cluster_connected(c)) {
        ADD(c->read_failures, 1);
        return SL_EIO;
    }
    /* An ID past the stream's last message (CLUSTER_ID_AHEAD that was not
     * published through another node a moment ago): never the stream's. */
    if (after_seq > upto) return SL_EUNKNOWN;
    memset(infos, 0, n * sizeof(*infos));
    if (after_seq == upto) return 0; /* nothing was stored after it */
    size_t cap = limit && limit < CLUSTER_READ_MAX ? limit : CLUSTER_READ_MAX;
    rmsg **v = NULL;
    size_t nv = 0, vcap = 0;
    int rc = 0;
    /* The topics are read one after another, not as one snapshot: a
     * message of one stored while another is read would have a seq below
     * what the page delivers, and the reader's cursor would pass it.  So
     * the page stops at `upto`, taken before the topics were chosen: every
     * message up to it is in the stream, so every topic's read has it,
     * and every later one reaches the reader live (it subscribed before
     * the horizon was taken), so it is neither lost nor sent twice. */
    uint64_t live_from = upto;
    /* Messages past the first truncated topic's last read may lack another
     * topic's: deliver only up to it, the next call goes on from there. */
    uint64_t horizon;
    /* A request that fails while NATS is connected (a consumer made or a
     * message sent late under load, a leader being elected) is tried once
     * more before the reader is told: a poll answered 503 on a healthy
     * cluster looks like an outage to its client. */
    for (int tries = 1;; tries++) {
        rc = read_topics(c, topics, n, after_seq, cap, &v, &nv, &vcap, infos, &horizon);
        if (rc != SL_EIO || tries == CLUSTER_READ_TRIES || !cluster_connected(c)) break;
        rmsgs_free(v, nv);
        nv = 0;
        ADD(c->read_retries, 1);
    }
    if (rc != 0) ADD(c->read_failures, 1);
    if (rc == 0) {
        if (nv) qsort(v, nv, sizeof(rmsg *), by_seq); /* v is NULL when nothing was read */
        size_t delivered = 0;
        for (size_t i = 0; i < nv; i++) {
            if (v[i]->seq > live_from) continue; /* comes live */
            if (v[i]->seq > horizon || (limit && delivered >= limit)) {
                infos[v[i]->topic_index].more = 1;
                continue;
            }
            struct store_view sv = {.topic_index = v[i]->topic_index,
                                    .seq = v[i]->seq,
                                    .epoch = c->epoch,
                                    .time_ms = v[i]->time_ms,
                                    .event = v[i]->event,
                                    .event_len = v[i]->event_len,
                                    .data = v[i]->data,
                                    .data_len = v[i]->data_len,
                                    .flags = v[i]->flags};
            infos[v[i]->topic_index].delivered++;
            delivered++;
            if (fn(ud, &sv)) {
                limit = delivered; /* the reader stopped: the rest is more */
            }
        }
    }
    rmsgs_free(v, nv);
    free(v);
    return rc;
}

/* ---- notes between nodes ------------------------------------------------------ */

static void on_note_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    struct cluster *c = closure;
    c->on_note(c->note_ud, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
    natsMsg_Destroy(msg);
}

int cluster_broadcast(struct cluster *c, const void *data, size_t len)
{
    if (!cluster_connected(c)) return SL_EIO;
    if (len > (size_t)natsConnection_GetMaxPayload(c->nc)) return SL_EINVAL;
    return natsConnection_Publish(c->nc, c->notes_subject, data, (int)len) == NATS_OK ? 0 : SL_EIO;
}

int cluster_listen(struct cluster *c, cluster_note_fn fn, void *ud)
{
    if (c->notes) return SL_EINVAL;
    c->on_note = fn;
    c->note_ud = ud;
    if (natsConnection_Subscribe(&c->notes, c->nc, c->notes_subject, on_note_msg, c) != NATS_OK)
        return SL_EIO;
    /* Notes replace each other: a slow reader drops, never queues for ever. */
    natsSubscription_SetPendingLimits(c->notes, 1024, 64 * 1024 * 1024);
    return 0;
}

int cluster_stream_state(struct cluster *c, struct cluster_stream_state *st)
{
    memset(st, 0, sizeof(*st));
    jsStreamInfo *si = cluster_connected(c) ? stream_info(c, NULL, NULL) : NULL;
    if (!si) return SL_EIO;
    *st = (struct cluster_stream_state){
        .messages = si->State.Msgs,
        .bytes = si->State.Bytes,
        .topics = si->State.NumSubjects > 0 ? (uint64_t)si->State.NumSubjects : 0,
        .first_seq = si->State.FirstSeq,
        .last_seq = si->State.LastSeq,
    };
    jsStreamInfo_Destroy(si);
    return 0;
}

/* js_UpdateStream of cfg, bounded; with a floor (not 0), the description
 * says it holds before seq `at` (desc_parse). */
static natsStatus update_stream(struct cluster *c, jsStreamConfig *cfg, uint64_t floor, uint64_t at,
                                jsStreamInfo **now, jsErrCode *jerr)
{
    const char *had = cfg->Description;
    char desc[128];
    if (floor && had) {
        const char *old_floor = strstr(had, " floor=");
        int epoch_part = old_floor ? (int)(old_floor - had) : (int)strlen(had);
        snprintf(desc, sizeof(desc), "%.*s floor=%llu@%llu", epoch_part, had,
                 (unsigned long long)floor, (unsigned long long)at);
        cfg->Description = desc;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = CLUSTER_API_WAIT_MS;
    natsStatus s = js_UpdateStream(now, c->js, cfg, &jo, jerr);
    cfg->Description = had; /* the library's, freed with its info */
    return s;
}

int cluster_set_retention(struct cluster *c, uint64_t max_per_topic, uint64_t max_age_ms, char *err,
                          size_t errlen)
{
    if (!max_per_topic) max_per_topic = DEFAULT_PER_TOPIC;
    /* A script that keeps its retention asks nothing of NATS: a reload
     * works while NATS is away, and leaves a change made elsewhere (another
     * node's reload, `nats stream edit`) as it is. */
    if (max_per_topic == c->max_per_topic && max_age_ms == c->max_age_ms) return 0;
    int64_t per = (int64_t)max_per_topic;
    int64_t age = (int64_t)max_age_ms * 1000000;
    jsStreamInfo *si = cluster_connected(c) ? stream_info(c, NULL, NULL) : NULL;
    if (!si || !si->Config) {
        jsStreamInfo_Destroy(si);
        snprintf(err, errlen, "cluster: stream %s did not answer: its retention stays", c->stream);
        return SL_EIO;
    }
    jsStreamConfig *cfg = si->Config;
    int64_t had_per = cfg->MaxMsgsPerSubject, had_age = cfg->MaxAge;
    if (had_per != per || had_age != age) {
        cfg->MaxMsgsPerSubject = per;
        cfg->MaxAge = age;
        /* A raise: the smaller limit still judges gaps before the point
         * where the larger one took hold, on every node (count_limit). */
        struct stream_desc sd;
        uint64_t was = had_per > 0 ? (uint64_t)had_per : UINT64_MAX, floor = 0;
        if (max_per_topic > was && cfg->Description && desc_parse(cfg->Description, &sd) == 0)
            floor = sd.floor && sd.floor < was ? sd.floor : was;
        jsStreamInfo *now = NULL;
        jsErrCode jerr = 0;
        natsStatus s = update_stream(c, cfg, floor, si->State.LastSeq, &now, &jerr);
        if (s != NATS_OK) {
            jsStreamInfo_Destroy(si);
            snprintf(err, errlen,
                     "cluster: stream %s refused the new retention: %s (JetStream error %d)",
                     c->stream, last_error(s), (int)jerr);
            return SL_EIO;
        }
        /* Messages stored between the read and the update were under the
         * smaller limit too: the point moves to the update's. */
        if (floor && now->Config && now->State.LastSeq > si->State.LastSeq) {
            jsStreamInfo *again = NULL;
            if (update_stream(c, now->Config, floor, now->State.LastSeq, &again, &jerr) ==
                NATS_OK) {
                jsStreamInfo_Destroy(now);
                now = again;
            } else {
                LOG_KV(LOG_WARN,
                       "cluster: the point of the raised retention was not written: gaps just "
                       "before it may go untold on other nodes",
                       LOG_S("stream", c->stream), LOG_I("seq", now->State.LastSeq));
            }
        }
        count_limit(c, now, 0);
        jsStreamInfo_Destroy(now);
        LOG_KV(LOG_INFO, "cluster: the stream's retention changed", LOG_S("stream", c->stream),
               LOG_I("max_msgs_per_subject", per), LOG_I("was_max_msgs_per_subject", had_per),
               LOG_I("max_age_ms", age / 1000000), LOG_I("was_max_age_ms", had_age / 1000000));
    }
    jsStreamInfo_Destroy(si);
    c->max_per_topic = max_per_topic;
    c->max_age_ms = max_age_ms;
    return 0;
}

int cluster_topics(struct cluster *c, const char *prefix, size_t plen, store_topic_fn fn, void *ud)
{
    jsStreamInfo *si = cluster_connected(c) ? stream_info(c, c->filter, NULL) : NULL;
    if (!si) return SL_EIO;
    for (int i = 0; si->State.Subjects && i < si->State.Subjects->Count; i++) {
        char name[256];
        long nl = topic_of(c, si->State.Subjects->List[i].Subject, name, sizeof(name) - 1);
        if (nl <= 0 || (size_t)nl < plen || memcmp(name, prefix, plen) != 0) continue;
        name[nl] = '\0';
        struct store_topic_info t = {
            .name = name, .name_len = (size_t)nl, .count = si->State.Subjects->List[i].Msgs};
        if (fn(ud, &t)) break;
    }
    jsStreamInfo_Destroy(si);
    return 0;
}
