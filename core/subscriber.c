/* subscriber.c: picking the transport, resolving the resume point,
 * subscribing and replaying in order, and delivering (see subscriber.h).
 * The transport-specific parts are in wsconn.c, sseconn.c and longpoll.c. */
#include "core/session.h"

#include "core/defs.h"
#include "core/log.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

sub_config sub_defaults = {
    .sse_heartbeat = 15,
    .sse_retry_ms = 2000,
    .ws_ping = 30,
    .ws_max_message = 1024 * 1024,
    .ws_deflate = true,
    .ws_deflate_min = 64,
};

/* Process-wide (every worker's connections): changed and read with
 * relaxed atomics. */
sub_stats sub_counts;

void sub_get_stats(sub_stats *st)
{
    st->websocket = __atomic_load_n(&sub_counts.websocket, __ATOMIC_RELAXED);
    st->sse = __atomic_load_n(&sub_counts.sse, __ATOMIC_RELAXED);
    st->longpoll = __atomic_load_n(&sub_counts.longpoll, __ATOMIC_RELAXED);
    st->publish_refused = __atomic_load_n(&sub_counts.publish_refused, __ATOMIC_RELAXED);
    st->slow_websocket = __atomic_load_n(&sub_counts.slow_websocket, __ATOMIC_RELAXED);
    st->slow_sse = __atomic_load_n(&sub_counts.slow_sse, __ATOMIC_RELAXED);
    st->filtered = __atomic_load_n(&sub_counts.filtered, __ATOMIC_RELAXED);
    st->bytes_websocket = __atomic_load_n(&sub_counts.bytes_websocket, __ATOMIC_RELAXED);
    st->bytes_sse = __atomic_load_n(&sub_counts.bytes_sse, __ATOMIC_RELAXED);
}

sub_session *sub_session_of(conn *c)
{
    if (conn_closed(c) || !c->stream || !c->stream_state) return NULL;
    /* The three transports put their session in stream_state. */
    const char *n = c->stream->name;
    if (strcmp(n, "websocket") && strcmp(n, "sse") && strcmp(n, "longpoll")) return NULL;
    return c->stream_state;
}

int sub_topic_count(const sub_session *s)
{
    return session_ended(s) ? 0 : s->nsubs;
}

const char *sub_topic_at(const sub_session *s, int i, size_t *len, bool *wildcard)
{
    if (i < 0 || i >= sub_topic_count(s) || !s->subs[i]) return NULL;
    return hub_sub_name(s->subs[i], len, wildcard);
}

conn *sub_conn(sub_session *s)
{
    return s->c;
}

const char *sub_transport(const sub_session *s)
{
    return s->short_poll ? "poll" : s->tp->name;
}

const char *sub_first_topic(const sub_session *s, size_t *len, bool *wildcard)
{
    if (s->nsubs < 1 || !s->subs[0]) return NULL;
    return hub_sub_name(s->subs[0], len, wildcard);
}

void query_find(const http_request *req, const char *const *names, int n, query_span *out)
{
    for (int i = 0; i < n; i++) {
        out[i].v = NULL;
        out[i].len = 0;
    }
    if (!req->query) return;
    size_t nl[QUERY_FIND_MAX];
    if (n > QUERY_FIND_MAX) n = QUERY_FIND_MAX;
    for (int i = 0; i < n; i++)
        nl[i] = strlen(names[i]);
    size_t pos = 0, kl, vl;
    const char *k, *v;
    int left = n;
    while (left && http_query_next(req->query, req->query_len, &pos, &k, &kl, &v, &vl)) {
        /* Keys compare decoded, as req.query has them ("time%6Fut"). */
        char kbuf[32];
        if (kl < sizeof kbuf && (memchr(k, '%', kl) || memchr(k, '+', kl))) {
            kl = http_pct_decode(k, kl, kbuf, true);
            k = kbuf;
        }
        for (int i = 0; i < n; i++) {
            if (out[i].v || kl != nl[i] || memcmp(k, names[i], kl) != 0) continue;
            out[i].v = v;
            out[i].len = vl;
            left--;
            break;
        }
    }
}

int query_decode(const query_span *sp, char *out, size_t cap)
{
    if (!sp->v) return SL_ENOTFOUND;
    if (sp->len >= cap) return SL_ESPACE;
    size_t n = http_pct_decode(sp->v, sp->len, out, true);
    out[n] = '\0';
    return (int)n;
}

int query_param(const http_request *req, const char *name, char *out, size_t cap)
{
    query_span sp;
    query_find(req, &name, 1, &sp);
    return query_decode(&sp, out, cap);
}

bool session_format_json(const sub_request *r, const http_request *req)
{
    if (r->json != -1) return r->json == 1;
    char fmt[16];
    int n = query_param(req, "format", fmt, sizeof(fmt));
    return n >= 0 && STR_IS(fmt, n, "json");
}

int poll_timeout_parse(const query_span *sp, double *seconds)
{
    char v[32];
    if (query_decode(sp, v, sizeof(v)) < 0) return 0; /* absent, or too long to be one */
    char *end;
    double t = strtod(v, &end);
    if (end == v || *end || t < 0 || t != t) return SL_EINVAL;
    *seconds = t;
    return 1;
}

int poll_timeout_param(const http_request *req, double *seconds)
{
    static const char *const name = "timeout";
    query_span sp;
    query_find(req, &name, 1, &sp);
    return poll_timeout_parse(&sp, seconds);
}

bool header_contains(const http_request *req, const char *name, const char *token)
{
    size_t len;
    const char *v = http_header_get(req, name, &len);
    if (!v) return false;
    size_t tl = strlen(token);
    for (size_t i = 0; i + tl <= len; i++)
        if (strncasecmp(v + i, token, tl) == 0) return true;
    return false;
}

/* In order of preference: the first that serves a request gets it (the
 * long-poll serves any). */
static const sub_transport_ops *const transports[] = {&ws_transport, &sse_transport, &lp_transport};

static const sub_transport_ops *transport_for(const http_request *req)
{
    for (size_t i = 0;; i++)
        if (transports[i]->serves(req)) return transports[i];
}

const char *sub_transport_of(const http_request *req)
{
    const sub_transport_ops *tp = transport_for(req);
    if (!tp->oneshot) return tp->name;
    if (strcmp(req->method, "GET") != 0) return "http";
    double t;
    return poll_timeout_param(req, &t) > 0 && t == 0 ? "poll" : "longpoll";
}

int sub_start(conn *c, hub *h, const sub_request *r, const char **why)
{
    http_request *req = conn_request(c);
    if (!req || r->ntopics < 1) {
        *why = "no topic";
        return 400;
    }
    for (int i = 0; i < r->ntopics; i++) {
        if (!hub_pattern_valid(r->topics[i], r->topic_lens[i])) {
            *why = "bad topic name";
            return 400;
        }
    }
    sub_session *s = calloc(1, sizeof(sub_session));
    if (!s) {
        *why = "out of memory";
        return 503;
    }
    s->c = c;
    s->hub = h;
    s->hooks = r->hooks;
    s->hooks_ud = r->hooks_ud;
    s->skip_self = r->skip_self;
    s->presence_events = r->presence_events;
    if (r->nevents > 0 && !(s->events = sub_names_copy(r->events, r->event_lens, r->nevents))) {
        free(s);
        *why = "out of memory";
        return 503;
    }
    if (s->hooks && s->hooks->on_start) s->hooks->on_start(s->hooks_ud, s);
    s->tp = transport_for(req);
    int status = s->tp->start(s, r, req, why);
    if (status) {
        /* Not started: the caller keeps hooks_ud and answers the error. */
        s->hooks = NULL;
        s->hooks_ud = NULL;
        session_end(s);
    }
    return status;
}

/* ---- resume and replay ----------------------------------------------------- */

static void replay_gap(void *owner, const char *topic, size_t len)
{
    sub_session *s = owner;
    if (session_ended(s) || conn_closed(s->c)) return;
    s->tp->send_gap(s, topic, len);
}

static void free_replay(sub_session *s)
{
    free(s->replay);
    s->replay = NULL;
}

static void replay_one(void *owner, hub_msg *m);

/* After a page: caught up, or the next page when the output drains. */
static void replay_page_end(sub_session *s, bool more)
{
    if (!more) {
        /* Caught up: everything committed so far was read, so live
         * delivery (deduplicated by last_seq) continues without a seam. */
        SLUICE_ASSERT(s->state == SESSION_CATCHING_UP);
        s->state = SESSION_LIVE;
        free_replay(s);
    }
}

static int replay_page(sub_session *s, bool known);

/* Delivers a page read off the loop to s, still there, as a replay read on
 * the loop is delivered; hub_replay_page_deliver's count or error. */
static long page_deliver(sub_session *s, hub_replay_page *page, bool *more)
{
    /* The resume ID was past the stream's end: the page starts at the
     * oldest, and the cursor with it. */
    if (hub_replay_page_id_unknown(page)) s->last_seq = 0;
    s->in_replay = true;
    long n = hub_replay_page_deliver(page, replay_one, replay_gap, s, more);
    s->in_replay = false;
    return n;
}

/* A poll's page read off the loop is back (cluster mode): delivered, then
 * the next page while a filter dropped everything and more is left, else
 * the transport answers or waits (its `replayed`). */
static void poll_page_back(void *owner, hub_replay_page *page)
{
    sub_session *s = owner;
    if (!session_ended(s) && !conn_closed(s->c)) {
        bool more = false;
        long n = page_deliver(s, page, &more);
        if (!session_ended(s) && n >= 0 && more && s->tp->held(s) == 0 &&
            hub_replay_async_next(s->hub, page, s->last_seq, poll_page_back, s) == 0)
            return; /* the next page keeps the hold */
        if (!session_ended(s)) {
            s->state = SESSION_LIVE;
            /* Everything this worker has taken from its inbox meanwhile
             * was kept for the page or is not the poll's. */
            uint64_t now = hub_last_seq(s->hub);
            if (!more && s->last_seq < now) s->last_seq = now;
            s->tp->replayed(s, n < 0 ? (int)n : 0);
        }
    }
    session_release(s); /* last: it may free s */
}

/* A page read off the loop is back (cluster mode): delivered as
 * replay_page delivers one read on it. */
static void replay_page_back(void *owner, hub_replay_page *page)
{
    sub_session *s = owner;
    if (!session_ended(s) && !conn_closed(s->c)) {
        bool more = false;
        long n = page_deliver(s, page, &more);
        if (!session_ended(s)) {
            int rc = (int)n;
            if (n >= 0) {
                replay_page_end(s, more);
                /* Its output drains into the next page; nothing written
                 * (every message filtered out) drains nothing: go on now. */
                rc = more && s->c->out.bytes == 0 ? replay_page(s, true) : 0;
            }
            if (rc < 0 && !session_ended(s)) s->tp->replay_failed(s, rc);
        }
    }
    session_release(s); /* last: it may free s */
}

/* One page of a stream's catch-up.  Delivery may cut the client off and end
 * the session, whose memory lasts until the end of the loop pass.  In
 * cluster mode the page is read off the loop (hub_replay_async) and
 * delivered when it is back; the catch-up goes on from there. */
static int replay_page(sub_session *s, bool known)
{
    if (hub_cluster(s->hub)) {
        /* Never on the loop (NATS requests would stall the worker). */
        int rc = hub_replay_async(s->hub, (const char *const *)s->replay->names, s->replay->lens,
                                  s->replay->n, s->last_seq, known, 0, REPLAY_PAGE_BYTES,
                                  replay_page_back, s);
        if (rc < 0) return rc;
        session_hold(s);
        return 0;
    }
    bool more = false;
    s->in_replay = true;
    /* Every page checks for a gap: while the subscriber drains one page,
     * publishers go on and retention may delete what the next page would
     * have read. */
    long n = hub_replay(s->hub, (const char *const *)s->replay->names, s->replay->lens,
                        s->replay->n, s->last_seq, known, 0, REPLAY_PAGE_BYTES, replay_one,
                        replay_gap, s, &more);
    s->in_replay = false;
    if (session_ended(s)) return SL_EGONE;
    if (n < 0) return (int)n;
    replay_page_end(s, more);
    return 0;
}

int session_replay_more(sub_session *s)
{
    /* Not while a page is read off the loop (cluster mode). */
    if (s->state != SESSION_CATCHING_UP || s->in_replay || hub_replay_live(s->hub, s, NULL))
        return 0;
    return replay_page(s, true);
}

static void replay_one(void *owner, hub_msg *m)
{
    sub_session *s = owner;
    if (!session_ended(s) && !conn_closed(s->c)) session_deliver(s, m);
}

void session_resume_point(const sub_session *s, const sub_request *r, const http_request *req,
                          const query_span ids[2], resume_point *rp)
{
    /* The app's resume ID, then the standard places. */
    char idbuf[256];
    const char *id = r->last_event_id;
    size_t idlen = r->last_event_id_len;
    if (!id) id = http_header_get(req, "last-event-id", &idlen);
    if (!id) {
        static const char *const names[] = {"last_event_id", "since"};
        query_span found[2];
        if (!ids) {
            query_find(req, names, 2, found);
            ids = found;
        }
        int n = query_decode(&ids[0], idbuf, sizeof(idbuf));
        if (n == SL_ENOTFOUND) n = query_decode(&ids[1], idbuf, sizeof(idbuf));
        if (n >= 0) {
            id = idbuf;
            idlen = (size_t)n;
        } else if (n == SL_ESPACE) {
            id = "?"; /* too long to be ours: unknown */
            idlen = 1;
        }
    }
    rp->present = id && idlen > 0; /* an empty ID is no resume point */
    rp->after = 0;
    rp->unverified = false;
    rp->known = rp->present && hub_id_parse(s->hub, id, idlen, &rp->after, &rp->unverified);
    rp->id_len = 0;
    if (rp->known && idlen < HUB_ID_MAX) {
        memcpy(rp->id, id, idlen);
        rp->id_len = (uint8_t)idlen;
    }
}

int session_subscribe_and_replay(sub_session *s, const sub_request *r, const resume_point *rp,
                                 unsigned replay_limit)
{
    /* Where live delivery starts: nothing before now is live.  A client
     * that resumes compares its cursor with the newest message this worker
     * has delivered: anything newer reaches it live, and a re-poll or
     * reconnect at that point reads nothing from the store.  Otherwise
     * "now" is the newest commit, which can be ahead of this worker's
     * inbox (a publish answered on another worker): a subscription
     * without a resume point is owed nothing committed before it, and a
     * short poll, which has no live part, reads what is committed (the
     * inbox's copies are then dropped by seq). */
    s->last_seq = rp->present && !s->short_poll ? hub_last_seq(s->hub) : hub_committed_seq(s->hub);

    s->subs = calloc((size_t)r->ntopics, sizeof(hub_sub *));
    if (!s->subs) return SL_ENOMEM;
    for (int i = 0; i < r->ntopics; i++) {
        bool dup = false;
        for (int j = 0; j < i; j++)
            if (r->topic_lens[j] == r->topic_lens[i] &&
                memcmp(r->topics[j], r->topics[i], r->topic_lens[i]) == 0)
                dup = true;
        if (dup) continue;
        s->subs[s->nsubs] =
            hub_subscribe(s->hub, r->topics[i], r->topic_lens[i], s, session_deliver,
                          s->tp->oneshot);
        if (!s->subs[s->nsubs]) return SL_ENOMEM;
        s->nsubs++;
    }
    if (!rp->present) return 0;
    /* Resuming at or after "now" (the usual re-poll or reconnect):
     * whatever is newer comes live, so there is nothing to read (unless
     * the stream may never have had the ID: the read tells).  A short
     * poll in cluster mode reads all the same: "now" is this node's, and
     * a publish acknowledged on another node may not have reached it. */
    bool now_is_all = !(s->short_poll && hub_cluster(s->hub));
    if (rp->known && rp->after >= s->last_seq && !rp->unverified && now_is_all) {
        s->last_seq = rp->after;
        return 0;
    }

    if (s->tp->oneshot) {
        /* Pages until a message passes the filters (or none is left): the
         * client asks again from the last ID examined, so messages a
         * filter drops never stall it. */
        uint64_t live_from = s->last_seq;
        s->last_seq = rp->known ? rp->after : 0;
        /* Cluster mode: read off the loop (live messages meanwhile are
         * kept for the poll), answered when the page is back; never on
         * it (NATS requests would stall the worker). */
        if (hub_cluster(s->hub) && s->tp->replayed) {
            int rc = hub_replay_async(s->hub, r->topics, r->topic_lens, r->ntopics, s->last_seq,
                                      rp->known, replay_limit - s->tp->held(s), 0,
                                      poll_page_back, s);
            if (rc < 0) return rc;
            s->state = SESSION_CATCHING_UP;
            session_hold(s);
            return SESSION_REPLAY_PENDING;
        }
        bool more = false, known = rp->known;
        long n = 0;
        for (int page = 0; page < 100; page++) {
            n = hub_replay(s->hub, r->topics, r->topic_lens, r->ntopics, s->last_seq, known,
                           replay_limit - s->tp->held(s), 0, replay_one, replay_gap, s,
                           &more);
            known = true;
            if (n < 0 || !more || s->tp->held(s) > 0 || session_ended(s)) break;
        }
        if (!more && s->last_seq < live_from) s->last_seq = live_from;
        if (session_ended(s)) return SL_EGONE;
        return n < 0 ? (int)n : 0;
    }
    /* A stream catches up page by page: keep the topic names for later pages. */
    s->replay = sub_names_copy(r->topics, r->topic_lens, r->ntopics);
    if (!s->replay) return SL_ENOMEM;
    SLUICE_ASSERT(s->state == SESSION_LIVE); /* a session subscribes once */
    s->state = SESSION_CATCHING_UP;
    s->last_seq = rp->known ? rp->after : 0;
    return replay_page(s, rp->known);
}

/* ---- delivery ------------------------------------------------------------- */

sub_names *sub_names_copy(const char *const *names, const size_t *lens, int n)
{
    size_t bytes = 0;
    for (int i = 0; i < n; i++)
        bytes += lens[i] + 1;
    sub_names *l =
        malloc(sizeof(sub_names) + (size_t)n * (sizeof(char *) + sizeof(size_t)) + bytes);
    if (!l) return NULL;
    l->n = n;
    l->lens = (size_t *)(l->names + n);
    char *p = (char *)(l->lens + n);
    for (int i = 0; i < n; i++) {
        memcpy(p, names[i], lens[i]);
        p[lens[i]] = '\0';
        l->names[i] = p;
        l->lens[i] = lens[i];
        p += lens[i] + 1;
    }
    return l;
}

/* The declarative options, evaluated without entering Lua. */
static bool wanted(const sub_session *s, const hub_msg *m)
{
    if (s->skip_self && m->origin == s) return false;
    /* Presence events (lua/shared.h) go only to who asked for them. */
    if (!s->presence_events && m->event && m->event_len >= 11 &&
        (STR_IS(m->event, m->event_len, "sluice.join") ||
         STR_IS(m->event, m->event_len, "sluice.leave")))
        return false;
    if (!s->events) return true;
    for (int i = 0; i < s->events->n; i++)
        if (m->event && m->event_len == s->events->lens[i] &&
            memcmp(m->event, s->events->names[i], m->event_len) == 0)
            return true;
    return false;
}

#define FLUSH_SAMPLE 16

void session_flushed(sub_session *s)
{
    if (!s->flush_from || session_ended(s)) return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts); /* the clock of hub_msg.time_ms */
    uint32_t now = (uint32_t)((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
    uint32_t ms = now - (s->flush_from & ~1u); /* modulo 2^32: fine below 49 days */
    s->flush_from = 0;
    if (ms < 0x80000000u) hub_count_flush(s->hub, ms / 1000.0);
}

void session_deliver(void *owner, hub_msg *m)
{
    sub_session *s = owner;
    hub *h = s->hub;
    if (m->gap) {
        /* Cluster mode: messages from m->seq on were deleted before this
         * node had them.  A live session owed them is told; one catching
         * up reads the stream, which tells it. */
        if (!session_ended(s) && s->state == SESSION_LIVE && m->seq > s->last_seq)
            s->tp->send_gap(s, m->topic, m->topic_len);
        return;
    }
    if (session_ended(s) || m->seq <= s->last_seq) return;
    /* Catching up, live messages come from the backlog pages instead
     * (a page read off the loop keeps them: they follow it if it is the
     * last). */
    if (s->state == SESSION_CATCHING_UP && !s->in_replay) {
        hub_replay_live(h, s, m);
        return;
    }
    if (s->tp->seen) s->tp->seen(s, m);
    s->last_seq = m->seq;
    if (!wanted(s, m)) return;
    hub_msg *out = m;
    if (s->hooks && s->hooks->filter) {
        out = s->hooks->filter(s->hooks_ud, s, m);
        if (!out) {
            __atomic_add_fetch(&sub_counts.filtered, 1, __ATOMIC_RELAXED);
            return;
        }
    }
    s->msgs++;
    /* The flush latency histogram samples one live delivery in
     * FLUSH_SAMPLE per worker: timing every one (a clock read and two
     * counters at each drained write) cost the SSE fan-out a tenth of its
     * CPU per delivery. */
    static __thread unsigned flush_tick;
    if (!s->tp->oneshot && !s->in_replay && !s->flush_from && ++flush_tick % FLUSH_SAMPLE == 0)
        s->flush_from = (uint32_t)m->time_ms | 1;
    s->tp->send_msg(s, out);
    if (out != m) hub_msg_unref(out);
    hub_count_delivery(h);
}

/* The second half of session_end, at the end of the loop pass. */
static void session_reap(server_deferred *d)
{
    sub_session *s = (sub_session *)((char *)d - offsetof(sub_session, reap));
    free(s->events);
    free_replay(s);
    if (s->tp) s->tp->reap(s);
    free(s);
}

void sub_set_end_reason(sub_session *s, sub_end_reason why)
{
    if (!s->end_why) s->end_why = (uint8_t)why;
}

/* The operator's line for a stream that ends (a poll has its access line
 * per answer instead). */
static void log_stream_end(sub_session *s)
{
    static const char *const why[] = {"peer",     "slow_consumer", "shutdown",
                                      "admin",    "app",           "publish_refused",
                                      "protocol", "error",         "resume_refused"};
    if (s->tp->oneshot) return;
    __atomic_add_fetch(s->tp == &ws_transport ? &sub_counts.bytes_websocket : &sub_counts.bytes_sse,
                       s->c->sent, __ATOMIC_RELAXED);
    if (!log_enabled(LOG_INFO)) return;
    conn *c = s->c;
    if (!s->end_why && c->srv->stopping) s->end_why = SUB_END_SHUTDOWN;
    size_t tlen = 0;
    bool wild = false;
    const char *topic = sub_first_topic(s, &tlen, &wild);
    char remote[64], topics[HUB_TOPIC_MAX + 32];
    snprintf(topics, sizeof(topics), "%.*s%s%s", (int)tlen, topic ? topic : "", wild ? "*" : "",
             s->nsubs > 1 ? ",..." : "");
    double age = c->req_start > 0 ? ev_now(c->srv->loop) - c->req_start : 0;
    LOG_KV(LOG_INFO, "stream ended", LOG_S("transport", s->tp->name),
           LOG_S("remote", conn_remote_addr(c, remote, sizeof(remote))), LOG_S("topics", topics),
           LOG_I("ntopics", s->nsubs), LOG_D("duration", age), LOG_I("bytes", c->sent),
           LOG_I("messages", s->msgs),
           LOG_S("reason", s->end_why < sizeof(why) / sizeof(why[0]) ? why[s->end_why] : "?"));
}

void session_end(sub_session *s)
{
    if (session_ended(s)) return;
    log_stream_end(s);
    s->state = SESSION_ENDED;
    for (int i = 0; i < s->nsubs; i++)
        hub_unsubscribe(s->hub, s->subs[i]);
    free(s->subs);
    s->subs = NULL;
    s->nsubs = 0;
    const sub_hooks *hooks = s->hooks;
    void *ud = s->hooks_ud;
    if (hooks && hooks->on_close) hooks->on_close(ud, s);
    if (hooks && hooks->release) hooks->release(ud);
    s->hooks = NULL; /* until server_defer reuses the bytes */
    s->hooks_ud = NULL;
    /* With publishes in flight, the last answer (sub_publish_done) hands
     * it over instead. */
    if (s->holds == 0) server_defer(s->c->srv, &s->reap, session_reap);
}

void session_hold(sub_session *s)
{
    s->holds++;
    conn_hold(s->c);
}

void session_release(sub_session *s)
{
    SLUICE_ASSERT(s->holds > 0);
    conn *c = s->c;
    if (--s->holds == 0 && session_ended(s)) server_defer(c->srv, &s->reap, session_reap);
    conn_release(c); /* last: the reap above needs c->srv */
}

int sub_send(sub_session *s, const char *data, size_t len, bool binary)
{
    if (!s->tp->send_data || session_ended(s) || conn_closed(s->c)) return SL_EGONE;
    return s->tp->send_data(s, data, len, binary);
}

void sub_close(sub_session *s, unsigned code, const char *reason)
{
    if (session_ended(s) || conn_closed(s->c)) return;
    sub_set_end_reason(s, SUB_END_APP);
    s->tp->close(s, code, reason);
}
