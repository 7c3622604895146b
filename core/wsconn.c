/* wsconn.c: the WebSocket transport.  Checks the handshake, answers 101,
 * decodes client frames with the pure codec in ws.c, answers pings, pings
 * quiet peers and drops the dead ones, runs the close handshake, and cuts
 * off a subscriber whose queue stays over the output limit (1013). */
#include "core/session.h"

#include "core/defs.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void ws_on_data(conn *c, void *state, char *data, size_t len);
static void ws_on_timer(conn *c, void *state);
static void ws_on_shutdown(conn *c, void *state);
static void ws_on_drain(conn *c, void *state);
static void ws_on_close(conn *c, void *state);

static const conn_stream_ops ws_ops = {
    .name = "websocket",
    .on_data = ws_on_data,
    .on_timer = ws_on_timer,
    .on_drain = ws_on_drain,
    .on_shutdown = ws_on_shutdown,
    .on_close = ws_on_close,
};

static bool header_has(const http_request *req, const char *name, const char *token)
{
    for (int i = 0; i < req->nheaders; i++) {
        const http_header *h = &req->headers[i];
        if (h->name_len == strlen(name) && strncasecmp(h->name, name, h->name_len) == 0 &&
            ws_token_list_has(h->value, h->value_len, token))
            return true;
    }
    return false;
}

static void ws_session_close(sub_session *s, unsigned code, const char *reason);

/* An Upgrade to anything but websocket (h2c) is ignored, as RFC 9110 lets
 * a server do: the request goes on as plain HTTP. */
static bool ws_serves(const http_request *req)
{
    return req->upgrade && header_contains(req, "upgrade", "websocket");
}

static int ws_start(sub_session *s, const sub_request *r, const http_request *req,
                    const char **why)
{
    size_t klen, vlen;
    const char *key = http_header_get(req, "sec-websocket-key", &klen);
    const char *version = http_header_get(req, "sec-websocket-version", &vlen);
    if (req->method_id != HTTP_GET || req->version_major != 1 || req->version_minor < 1) {
        *why = "WebSocket needs GET over HTTP/1.1";
        return 400;
    }
    if (!header_has(req, "upgrade", "websocket") || !header_has(req, "connection", "upgrade")) {
        *why = "bad WebSocket upgrade headers";
        return 400;
    }
    if (!version || vlen != 2 || memcmp(version, "13", 2) != 0) {
        *why = "unsupported WebSocket version (13 only)";
        return 426;
    }
    if (!key || !ws_key_valid(key, klen)) {
        *why = "bad Sec-WebSocket-Key";
        return 400;
    }
    char accept[WS_ACCEPT_KEY_LEN + 1];
    if (ws_accept_key(key, klen, accept) < 0) {
        *why = "bad Sec-WebSocket-Key";
        return 400;
    }
    if (r->protocol) {
        /* The app chose a subprotocol: it must be one the client offered. */
        bool offered = false;
        for (int i = 0; i < req->nheaders && !offered; i++) {
            const http_header *h = &req->headers[i];
            if (h->name_len != 22 || strncasecmp(h->name, "sec-websocket-protocol", 22) != 0)
                continue;
            const char *pos = h->value, *tok;
            size_t tl;
            while (ws_token_next(&pos, h->value + h->value_len, &tok, &tl))
                if (tl == strlen(r->protocol) && memcmp(tok, r->protocol, tl) == 0) offered = true;
        }
        if (!offered) {
            *why = "subprotocol not offered by the client";
            return 400;
        }
    }
    char fmt[16];
    s->json = r->json == 1 || (r->json == -1 && query_param(req, "format", fmt, sizeof(fmt)) >= 0 &&
                               strcmp(fmt, "json") == 0);
    /* The frame decoder is made when bytes arrive (ws_on_data). */

    char head[512];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s%s%s\r\n",
                     accept, r->protocol ? "Sec-WebSocket-Protocol: " : "",
                     r->protocol ? r->protocol : "", r->protocol ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof(head)) {
        *why = "subprotocol name too long";
        return 400;
    }
    buf_t *hb = buf_from(head, (size_t)n);
    if (!hb) {
        *why = "out of memory";
        return 503;
    }
    /* The 101 goes first; replayed frames queue behind it. */
    resume_point rp;
    session_resume_point(s, r, req, NULL, &rp);
    conn_log_access(s->c, 101);
    conn_start_stream(s->c, &ws_ops, s, hb);
    buf_unref(hb);
    __atomic_add_fetch(&sub_counts.websocket, 1, __ATOMIC_RELAXED);
    int rc = session_subscribe_and_replay(s, r, &rp, 0);
    if (rc == SL_EGONE) return 0; /* cut off while replaying */
    if (rc < 0) {
        ws_session_close(s, WS_CLOSE_INTERNAL_ERROR, "storage error");
        return 0;
    }
    if (!session_ended(s)) conn_stream_timer(s->c, sub_defaults.ws_ping);
    return 0;
}

/* Queues a close frame (past the output limit: it is the last thing sent)
 * and closes once it is written. */
static void ws_session_close(sub_session *s, unsigned code, const char *reason)
{
    if (session_ended(s) || conn_closed(s->c)) return;
    uint8_t frame[WS_MAX_CONTROL_FRAME];
    size_t n = ws_close_frame(frame, code, reason, reason ? strlen(reason) : 0);
    conn_send_final(s->c, frame, n); /* runs ws_on_close: s ends */
}

static void ws_send_control(sub_session *s, int opcode, const void *payload, size_t len)
{
    uint8_t frame[WS_MAX_CONTROL_FRAME];
    size_t n = ws_control_frame(frame, opcode, payload, len);
    if (n && conn_send_copy(s->c, frame, n) < 0)
        ws_session_close(s, WS_CLOSE_TRY_AGAIN_LATER, "slow consumer");
}

static void ws_send_msg(sub_session *s, hub_msg *m)
{
    buf_t *b;
    size_t off, len;
    if (hub_msg_ws(m, s->json, &b, &off, &len) < 0 || conn_send(s->c, b, off, len) < 0) {
        LOG_KV(LOG_INFO, "websocket subscriber cut off: output over the limit",
               LOG_I("queued", s->c->out.bytes));
        ws_session_close(s, WS_CLOSE_TRY_AGAIN_LATER, "slow consumer");
    }
}

static void ws_send_gap(sub_session *s, const char *topic, size_t len)
{
    if (!s->json) return; /* raw frames carry only data: see docs/protocol.md */
    char frame[WS_MAX_HEADER + HUB_TOPIC_MAX + 64];
    char body[HUB_TOPIC_MAX + 48];
    int n = snprintf(body, sizeof(body), "{\"gap\":true,\"topic\":\"%.*s\"}", (int)len, topic);
    size_t h = ws_frame_header((uint8_t *)frame, WS_OP_TEXT, true, (size_t)n);
    memcpy(frame + h, body, (size_t)n);
    conn_send_copy(s->c, frame, h + (size_t)n);
}

/* ---- client frames -------------------------------------------------------- */

static int on_frame_data(void *ud, int opcode, const uint8_t *data, size_t len, bool fin)
{
    sub_session *s = ud;
    if (s->t.ws.msg_len == 0) s->t.ws.msg_op = (uint8_t)opcode;
    if (len) {
        /* The decoder bounds the total by ws_max_message. */
        if (s->t.ws.msg_len + len > s->t.ws.msg_cap) {
            size_t ncap = s->t.ws.msg_cap ? s->t.ws.msg_cap : 256;
            while (ncap < s->t.ws.msg_len + len)
                ncap *= 2;
            char *nm = realloc(s->t.ws.msg, ncap);
            if (!nm) {
                ws_session_close(s, WS_CLOSE_INTERNAL_ERROR, "out of memory");
                return 1;
            }
            s->t.ws.msg = nm;
            s->t.ws.msg_cap = ncap;
        }
        memcpy(s->t.ws.msg + s->t.ws.msg_len, data, len);
        s->t.ws.msg_len += len;
    }
    if (!fin) return 0;
    if (session_ended(s)) return 1;
    if (s->hooks && s->hooks->on_message)
        s->hooks->on_message(s->hooks_ud, s, s->t.ws.msg ? s->t.ws.msg : "", s->t.ws.msg_len,
                             s->t.ws.msg_op == WS_OP_BINARY);
    if (session_ended(s)) return 1; /* the hook closed it */
    /* Its publishes wait for storage (sub_publish_queued paused input):
     * stop at this message; ws_on_data gives the rest back. */
    bool paused = s->t.ws.publishing >= SUB_MAX_PUBLISHING;
    /* An idle connection keeps no message buffer. */
    free(s->t.ws.msg);
    s->t.ws.msg = NULL;
    s->t.ws.msg_len = s->t.ws.msg_cap = 0;
    return paused;
}

static int on_frame_ping(void *ud, const uint8_t *payload, size_t len)
{
    sub_session *s = ud;
    ws_send_control(s, WS_OP_PONG, payload, len);
    return session_ended(s); /* a pong over the output limit cut it off */
}

static int on_frame_pong(void *ud, const uint8_t *payload, size_t len)
{
    ((sub_session *)ud)->t.ws.pong_pending = false;
    return 0;
}

static int on_frame_close(void *ud, unsigned code, const char *reason, size_t len)
{
    sub_session *s = ud;
    /* Echo the code (RFC 6455 5.5.1); a close without one gets one without. */
    ws_session_close(s, code == WS_CLOSE_NO_STATUS ? 0 : code, NULL);
    return 1;
}

static const ws_callbacks frame_callbacks = {
    .on_data = on_frame_data,
    .on_ping = on_frame_ping,
    .on_pong = on_frame_pong,
    .on_close = on_frame_close,
};

static void ws_on_data(conn *c, void *state, char *data, size_t len)
{
    sub_session *s = state;
    s->t.ws.pong_pending = false; /* any byte shows the peer is alive */
    if (!s->t.ws.dec) {
        s->t.ws.dec = malloc(sizeof(ws_decoder));
        if (!s->t.ws.dec) {
            ws_session_close(s, WS_CLOSE_INTERNAL_ERROR, "out of memory");
            return;
        }
        ws_decoder_init(s->t.ws.dec, sub_defaults.ws_max_message, true);
    }
    size_t pos = 0;
    while (pos < len && !session_ended(s)) {
        ssize_t n =
            ws_decoder_feed(s->t.ws.dec, (uint8_t *)data + pos, len - pos, &frame_callbacks, s);
        if (n < 0) {
            LOG_KV(LOG_DEBUG, "websocket protocol error", LOG_I("code", s->t.ws.dec->err_code),
                   LOG_S("reason", s->t.ws.dec->err_reason));
            ws_session_close(s, s->t.ws.dec->err_code, s->t.ws.dec->err_reason);
            break;
        }
        pos += (size_t)n;
        if (pos < len && !session_ended(s) && s->t.ws.publishing >= SUB_MAX_PUBLISHING) {
            conn_unread(c, data + pos, len - pos); /* after the publishes commit */
            break;
        }
    }
    /* Between frames the decoder holds nothing worth keeping. */
    if (!session_ended(s) && ws_decoder_idle(s->t.ws.dec)) {
        free(s->t.ws.dec);
        s->t.ws.dec = NULL;
    }
}

static void ws_on_timer(conn *c, void *state)
{
    sub_session *s = state;
    if (s->t.ws.pong_pending) {
        LOG_KV(LOG_DEBUG, "websocket peer did not answer a ping: dropped");
        conn_close(c);
        return;
    }
    s->t.ws.pong_pending = true;
    ws_send_control(s, WS_OP_PING, NULL, 0);
    if (!session_ended(s)) conn_stream_timer(c, sub_defaults.ws_ping);
}

static void ws_on_drain(conn *c, void *state)
{
    int rc = session_replay_more(state);
    if (rc < 0 && rc != SL_EGONE) ws_session_close(state, WS_CLOSE_INTERNAL_ERROR, "storage error");
}

static void ws_on_shutdown(conn *c, void *state)
{
    ws_session_close(state, WS_CLOSE_GOING_AWAY, "server shutting down");
}

static void ws_on_close(conn *c, void *state)
{
    __atomic_sub_fetch(&sub_counts.websocket, 1, __ATOMIC_RELAXED);
    session_end(state);
}

static int ws_send_data(sub_session *s, const char *data, size_t len, bool binary)
{
    uint8_t hdr[WS_MAX_HEADER];
    size_t h = ws_frame_header(hdr, binary ? WS_OP_BINARY : WS_OP_TEXT, true, len);
    buf_t *b = buf_new(h + len);
    if (!b) return SL_ENOMEM;
    memcpy(b->data, hdr, h);
    if (len) memcpy(b->data + h, data, len);
    int rc = conn_send(s->c, b, 0, b->len);
    buf_unref(b);
    if (rc < 0) ws_session_close(s, WS_CLOSE_TRY_AGAIN_LATER, "slow consumer");
    return rc;
}

static void ws_reap(sub_session *s)
{
    free(s->t.ws.dec);
    free(s->t.ws.msg);
}

const sub_transport_ops ws_transport = {
    .name = "websocket",
    .serves = ws_serves,
    .start = ws_start,
    .send_msg = ws_send_msg,
    .send_gap = ws_send_gap,
    .send_data = ws_send_data,
    .close = ws_session_close,
    .reap = ws_reap,
};

/* ---- backpressure on the client's publishes (subscriber.h) ---------------- */

hub_publish_fn sub_publish_pacer(const sub_session *s)
{
    return s && s->tp == &ws_transport && !session_ended(s) ? sub_publish_done : NULL;
}

void sub_publish_queued(sub_session *s)
{
    SLUICE_ASSERT(s->tp == &ws_transport && !session_ended(s));
    /* One hold for all of them: an ended session stays readable until
     * the last answer. */
    if (s->t.ws.publishing++ == 0) session_hold(s);
    if (s->t.ws.publishing >= SUB_MAX_PUBLISHING) conn_pause_input(s->c, true);
}

static log_limit refused_log = LOG_LIMIT_INIT;

void sub_publish_refused(sub_session *s, const char *reason)
{
    __atomic_add_fetch(&sub_counts.publish_refused, 1, __ATOMIC_RELAXED);
    char remote[64];
    LOG_KV_LIMITED(&refused_log, 1.0, LOG_WARN, "websocket client cut off: its publish was refused",
                   LOG_S("reason", reason),
                   LOG_S("remote", conn_remote_addr(s->c, remote, sizeof(remote))));
    char why[64];
    snprintf(why, sizeof(why), "publish refused: %s", reason);
    sub_close(s, WS_CLOSE_TRY_AGAIN_LATER, why);
}

void sub_publish_done(void *ud, hub_msg *m, int status)
{
    sub_session *s = ud;
    SLUICE_ASSERT(s->tp == &ws_transport && s->t.ws.publishing > 0);
    s->t.ws.publishing--;
    if (!session_ended(s)) {
        if (status != 0)
            sub_publish_refused(s, err_str(status));
        else if (s->t.ws.publishing < SUB_MAX_PUBLISHING / 2)
            conn_pause_input(s->c, false);
    }
    if (s->t.ws.publishing == 0) session_release(s);
}
