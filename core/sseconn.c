/* sseconn.c: the Server-Sent Events transport.  A 200 text/event-stream
 * whose body never ends: each message is its shared SSE encoding, a comment
 * line is the heartbeat, and the stream ends by closing the connection
 * (no Content-Length, no chunking: nothing to re-frame per message). */
#include "core/session.h"

#include "core/jsonenc.h"
#include "core/log.h"
#include "core/sse.h"
#include "core/utf8.h"

#include <stdio.h>
#include <string.h>

static void sse_on_data(conn *c, void *state, char *data, size_t len) {} /* nothing to read */
static void sse_on_timer(conn *c, void *state);
static void sse_on_close(conn *c, void *state);

/* It ends after its retry line: the client asks again later. */
static void sse_replay_failed(sub_session *s, int rc)
{
    sub_set_end_reason(s, rc == SL_ELIMIT ? SUB_END_RESUME_REFUSED : SUB_END_ERROR);
    conn_close_after_write(s->c);
}

static void sse_on_drain(conn *c, void *state)
{
    session_flushed(state);
    int rc = session_replay_more(state);
    if (rc < 0 && rc != SL_EGONE) sse_replay_failed(state, rc);
}

static const conn_stream_ops sse_ops = {
    .name = "sse",
    .on_data = sse_on_data,
    .on_timer = sse_on_timer,
    .on_drain = sse_on_drain,
    .on_close = sse_on_close,
};

static bool sse_serves(const http_request *req)
{
    return header_contains(req, "accept", "text/event-stream");
}

static int sse_start(sub_session *s, const sub_request *r, const http_request *req,
                     const char **why)
{
    resume_point rp;
    session_resume_point(s, r, req, NULL, &rp);
    char head[4096];
    /* conn_extra_head: the CORS headers the app's policy gave this request. */
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                     "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: close\r\n"
                     "Date: %s\r\n%s\r\nretry: %u\n\n",
                     server_date(s->c->srv), conn_extra_head(s->c), sub_defaults.sse_retry_ms);
    if (n < 0 || (size_t)n >= sizeof(head)) {
        *why = "response head too long";
        return 500;
    }
    buf_t *hb = buf_from(head, (size_t)n);
    if (!hb) {
        *why = "out of memory";
        return 503;
    }
    conn_log_access(s->c, 200);
    conn_start_stream(s->c, &sse_ops, s, hb);
    buf_unref(hb);
    __atomic_add_fetch(&sub_counts.sse, 1, __ATOMIC_RELAXED);
    int rc = session_subscribe_and_replay(s, r, &rp, 0);
    if (rc == SL_EGONE) return 0; /* cut off while replaying */
    if (rc < 0) {
        sse_replay_failed(s, rc);
        return 0;
    }
    if (!session_ended(s)) conn_stream_timer(s->c, sub_defaults.sse_heartbeat);
    return 0;
}

static void sse_send_msg(sub_session *s, hub_msg *m)
{
    buf_t *b;
    /* Over several topics or a pattern, each event names its topic (the
     * JSON form); over one topic the plain event, byte for byte. */
    bool several = s->nsubs > 1 || (s->nsubs == 1 && s->subs[0] && !s->subs[0]->topic);
    int rc = several ? hub_msg_sse_topic(m, &b) : hub_msg_sse(m, &b);
    if (rc < 0 || conn_send(s->c, b, 0, b->len) < 0) {
        __atomic_add_fetch(&sub_counts.slow_sse, 1, __ATOMIC_RELAXED);
        sub_set_end_reason(s, SUB_END_SLOW);
        LOG_KV(LOG_INFO, "sse subscriber cut off: output over the limit",
               LOG_I("queued", s->c->out.bytes));
        conn_close_after_write(s->c); /* it resumes with Last-Event-ID */
    }
}

static void sse_send_gap(sub_session *s, const char *topic, size_t len)
{
    char ev[HUB_TOPIC_MAX + 64];
    int n = snprintf(ev, sizeof(ev), "event: sluice.gap\ndata: {\"topic\":\"%.*s\"}\n\n", (int)len,
                     topic);
    conn_send_copy(s->c, ev, (size_t)n);
}

static void sse_on_timer(conn *c, void *state)
{
    static const char beat[] = ":\n\n";
    conn_send_copy(c, beat, sizeof(beat) - 1); /* over the limit: skipped, fine */
    conn_stream_timer(c, sub_defaults.sse_heartbeat);
}

static void sse_on_close(conn *c, void *state)
{
    __atomic_sub_fetch(&sub_counts.sse, 1, __ATOMIC_RELAXED);
    session_end(state);
}

/* An SSE stream ends by closing; the app's close (conn:close, an
 * opts.expires that passed: 4001) says why first, in an event the client
 * can tell from a dropped connection (EventSource would reconnect):
 * `event: sluice.close` with data {"code":N,"reason":"..."}. */
static void sse_close(sub_session *s, unsigned code, const char *reason)
{
    size_t rlen = reason ? strlen(reason) : 0;
    if (rlen > 123 || !utf8_valid(reason, rlen)) rlen = 0; /* a WebSocket's bound */
    char ev[64 + 6 * 123];
    int n = snprintf(ev, sizeof(ev), "event: sluice.close\ndata: {\"code\":%u,\"reason\":", code);
    ssize_t r = json_string_encode(ev + n, sizeof(ev) - (size_t)n, reason, rlen);
    static const char end[] = "}\n\n";
    if (r >= 0 && (size_t)n + (size_t)r + sizeof(end) <= sizeof(ev)) {
        size_t len = (size_t)n + (size_t)r;
        memcpy(ev + len, end, sizeof(end) - 1);
        conn_send_copy(s->c, ev, len + sizeof(end) - 1);
    }
    conn_close_after_write(s->c);
}

static void sse_reap(sub_session *s) {}

const sub_transport_ops sse_transport = {
    .name = "sse",
    .serves = sse_serves,
    .start = sse_start,
    .send_msg = sse_send_msg,
    .send_gap = sse_send_gap,
    .close = sse_close,
    .replay_failed = sse_replay_failed,
    .reap = sse_reap,
};
