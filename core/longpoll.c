/* longpoll.c: long-polling and short polling.  The request stays with the
 * app (CONN_HANDLING) while it waits: it costs a timer and one hub entry
 * per topic.  The answer is built from the messages' shared JSON objects,
 * joined by literal separators, without copying them. */
#include "core/session.h"

#include "core/defs.h"
#include "core/log.h"

#include <stdlib.h>
#include <string.h>

#define LP_DEFAULT_TIMEOUT 30.0
#define LP_MAX_TIMEOUT 120.0
#define LP_MAX_LIMIT 1000

static void lp_on_data(conn *c, void *state, char *data, size_t len) {}
static void lp_answer_now(conn *c, void *state);
static void lp_on_close(conn *c, void *state);

static const conn_stream_ops lp_ops = {
    .name = "longpoll",
    .on_data = lp_on_data,
    /* The poll's timeout, its turn to be written after a message, and the
     * server's stop all end it the same way: an answer with what it has. */
    .on_timer = lp_answer_now,
    .on_turn = lp_answer_now,
    .on_shutdown = lp_answer_now,
    .on_close = lp_on_close,
};

/* A literal part of every answer: one immortal buffer, made by whichever
 * worker needs it first (buffer references are atomic). */
static buf_t *literal(buf_t **slot, const char *text, size_t len)
{
    buf_t *b = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (b) return b;
    buf_t *made = buf_from(text, len);
    if (!made) return NULL;
    if (__atomic_compare_exchange_n(slot, &b, made, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return made;
    buf_unref(made); /* another worker's came first: b is it */
    return b;
}

/* Answers with what was collected and frees the session. */
static void lp_answer(sub_session *s)
{
    SLUICE_ASSERT(!session_ended(s)); /* answered once, counted out once */
    conn *c = s->c;
    unsigned n = s->t.lp->count;
    conn_part *parts = calloc(2 * (size_t)n + 2, sizeof(conn_part));
    /* Items built for this answer alone (JSON messages as strings). */
    buf_t **own = calloc((size_t)n + 1, sizeof(buf_t *));
    unsigned nown = 0;
    char tail[HUB_ID_MAX + 64];
    const char *last = NULL;
    char cursor[HUB_ID_MAX];
    size_t last_len;
    if (n) {
        last = s->t.lp->msgs[n - 1]->id;
        last_len = s->t.lp->msgs[n - 1]->id_len;
    } else if (s->t.lp->cursor_len) {
        /* Nothing passed the filters: go on after what was examined. */
        last = s->t.lp->cursor;
        last_len = s->t.lp->cursor_len;
    } else if (s->t.lp->since_len && !s->t.lp->gap) {
        /* Nothing new: the client's own cursor still stands. */
        last = s->t.lp->since;
        last_len = s->t.lp->since_len;
    } else {
        /* No cursor yet, or the client was just told of a gap: go on from
         * now (a real ID, so it still resumes after a restart). */
        last_len = hub_last_id(s->hub, cursor);
        last = cursor;
    }
    /* By hand: snprintf showed in the long-poll profile. */
    static const char id_key[] = "],\"last_id\":\"";
    const char *end = s->t.lp->gap ? "\",\"gap\":true}" : "\"}";
    if (last_len > HUB_ID_MAX) last_len = HUB_ID_MAX;
    size_t el = strlen(end), tl = 0;
    memcpy(tail, id_key, sizeof(id_key) - 1);
    tl += sizeof(id_key) - 1;
    memcpy(tail + tl, last, last_len);
    tl += last_len;
    memcpy(tail + tl, end, el);
    tl += el;
    static buf_t *head_slot, *comma_slot;
    buf_t *head = literal(&head_slot, STRLIT("{\"messages\":["));
    buf_t *comma = literal(&comma_slot, STRLIT(","));
    buf_t *tb = buf_from(tail, tl);
    conn_detach(c);
    if (s->t.lp->failed) {
        /* Not an empty answer, which the client would ask again at once:
         * a refusal (limits.max_waiting_resumes) or a read that failed. */
        conn_respond_error(c, 503,
                           s->t.lp->failed == SL_ELIMIT ? "too many resumes at once: retry later"
                                                        : err_str(s->t.lp->failed));
    } else if (s->t.lp->oom || !parts || !own || !head || !comma || !tb) {
        conn_respond_error(c, 503, "out of memory");
    } else {
        int np = 0;
        parts[np++] = (conn_part){head, 0, head->len};
        for (unsigned i = 0; i < n; i++) {
            hub_msg *m = s->t.lp->msgs[i];
            buf_t *b;
            size_t off, len;
            if (m->is_json && !s->json) {
                /* SPEC.md's item, data a string, unless ?format=json. */
                if (!(b = own[nown++] = hub_msg_json_string(m))) continue;
                off = 0;
                len = b->len;
            } else if (hub_msg_json(m, &b, &off, &len) < 0) {
                continue;
            }
            if (np > 1) parts[np++] = (conn_part){comma, 0, 1};
            parts[np++] = (conn_part){b, off, len};
        }
        parts[np++] = (conn_part){tb, 0, tb->len};
        conn_response_start(c, 200);
        static const char lines[] = "Content-Type: application/json\r\n"
                                    "Cache-Control: no-store\r\n";
        conn_response_lines(c, lines, sizeof(lines) - 1);
        conn_response_finish_parts(c, parts, np);
    }
    buf_unref(tb);
    for (unsigned i = 0; i < nown; i++)
        if (own[i]) buf_unref(own[i]);
    free(own);
    free(parts);
    __atomic_sub_fetch(&sub_counts.longpoll, 1, __ATOMIC_RELAXED);
    session_end(s);
}

static bool lp_serves(const http_request *req)
{
    return true; /* the fallback: what is neither WebSocket nor SSE */
}

static int lp_start(sub_session *s, const sub_request *r, const http_request *req,
                    const char **why)
{
    static const char *const names[] = {"timeout", "limit", "last_event_id", "since"};
    query_span sp[4];
    query_find(req, names, 4, sp);
    char v[32];
    double timeout = LP_DEFAULT_TIMEOUT;
    if (poll_timeout_parse(&sp[0], &timeout) < 0) {
        *why = "timeout must be a number of seconds";
        return 400;
    }
    if (timeout > LP_MAX_TIMEOUT) timeout = LP_MAX_TIMEOUT;
    /* ?format=json (or the app's format option): JSON messages embedded. */
    s->json = session_format_json(r, req);
    unsigned limit = LP_MAX_LIMIT;
    if (query_decode(&sp[1], v, sizeof(v)) >= 0) {
        char *end;
        long l = strtol(v, &end, 10);
        if (end == v || *end || l < 1) {
            *why = "limit must be a positive integer";
            return 400;
        }
        if (l < LP_MAX_LIMIT) limit = (unsigned)l;
    }
    s->short_poll = timeout == 0;
    s->t.lp = calloc(1, sizeof(lp_state));
    if (!s->t.lp) {
        *why = "out of memory";
        return 503;
    }
    s->t.lp->limit = limit;
    resume_point rp;
    session_resume_point(s, r, req, &sp[2], &rp);
    /* The cursor of an empty answer: the resume ID if it is ours. */
    memcpy(s->t.lp->since, rp.id, rp.id_len);
    s->t.lp->since_len = rp.id_len;
    conn_attach(s->c, &lp_ops, s);
    __atomic_add_fetch(&sub_counts.longpoll, 1, __ATOMIC_RELAXED);
    s->t.lp->timeout = timeout;
    int rc = session_subscribe_and_replay(s, r, &rp, limit);
    /* A filter that failed (or closed it) during the replay ended the
     * poll: its close counted it out, and there is nothing to answer. */
    if (rc == SL_EGONE) return 0;
    if (rc == SESSION_REPLAY_PENDING) return 0; /* lp_replayed goes on */
    if (rc < 0) {
        s->t.lp->failed = (int8_t)rc;
        lp_answer(s);
        return 0;
    }
    if (s->t.lp->count > 0 || s->t.lp->gap || s->t.lp->oom || s->short_poll) {
        lp_answer(s);
        return 0;
    }
    s->t.lp->waiting = true;
    conn_stream_timer(s->c, timeout);
    return 0;
}

/* The replay read off the loop (cluster mode) is back: as lp_start goes on
 * after a replay read on it. */
static void lp_replayed(sub_session *s, int rc)
{
    lp_state *lp = s->t.lp;
    if (rc < 0) lp->failed = (int8_t)rc;
    if (rc < 0 || lp->count > 0 || lp->gap || lp->oom || s->short_poll) {
        lp_answer(s);
        return;
    }
    lp->waiting = true;
    conn_stream_timer(s->c, lp->timeout);
}

static void lp_add_msg(sub_session *s, hub_msg *m)
{
    lp_state *lp = s->t.lp;
    if (lp->count >= lp->limit) return;
    if (lp->count == lp->cap) {
        unsigned cap = lp->cap ? 2 * lp->cap : 4;
        if (cap > lp->limit) cap = lp->limit;
        hub_msg **msgs = realloc(lp->msgs, cap * sizeof(hub_msg *));
        if (!msgs) {
            /* The cursor has moved past m: a 503 keeps the client's own. */
            lp->oom = true;
            lp->limit = lp->count;
            if (lp->waiting) lp_answer(s);
            return;
        }
        lp->msgs = msgs;
        lp->cap = cap;
    }
    hub_msg_ref(m);
    lp->msgs[lp->count++] = m;
    /* Live: answer when this connection's turn to write comes, with
     * what else arrives before it (a large fan-out is written over several
     * loop passes: the next message may come first).  During replay the
     * caller answers after it. */
    if (lp->waiting) conn_want_turn(s->c);
}

static void lp_answer_now(conn *c, void *state)
{
    lp_answer(state);
}

static void lp_on_close(conn *c, void *state)
{
    __atomic_sub_fetch(&sub_counts.longpoll, 1, __ATOMIC_RELAXED);
    session_end(state);
}

/* A poll's cursor moves past what filters drop, too. */
static void lp_seen(sub_session *s, const hub_msg *m)
{
    memcpy(s->t.lp->cursor, m->id, m->id_len);
    s->t.lp->cursor_len = m->id_len;
}

static void lp_gap(sub_session *s, const char *topic, size_t len)
{
    s->t.lp->gap = true; /* the answer says "gap":true */
    /* Live (cluster mode: messages deleted before this node had them):
     * answered now, the client resumes from its cursor and reads the rest. */
    if (s->t.lp->waiting) conn_want_turn(s->c);
}

static unsigned lp_held(const sub_session *s)
{
    return s->t.lp->count;
}

static void lp_close(sub_session *s, unsigned code, const char *reason)
{
    conn_close_after_write(s->c);
}

static void lp_reap(sub_session *s)
{
    if (!s->t.lp) return;
    for (unsigned i = 0; i < s->t.lp->count; i++)
        hub_msg_unref(s->t.lp->msgs[i]);
    free(s->t.lp->msgs);
    free(s->t.lp);
}

const sub_transport_ops lp_transport = {
    .name = "longpoll",
    .oneshot = true,
    .serves = lp_serves,
    .start = lp_start,
    .seen = lp_seen,
    .send_msg = lp_add_msg,
    .send_gap = lp_gap,
    .replayed = lp_replayed,
    .held = lp_held,
    .close = lp_close,
    .reap = lp_reap,
};
