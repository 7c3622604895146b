/* wsconn.c: the WebSocket transport.  Checks the handshake, answers 101,
 * decodes client frames with the pure codec in ws.c, answers pings, pings
 * quiet peers and drops the dead ones, runs the close handshake, and cuts
 * off a subscriber whose queue stays over the output limit (1013). */
#include "core/session.h"

#include "core/defs.h"
#include "core/log.h"
#include "core/wsz.h"

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

static void ws_replay_failed(sub_session *s, int rc)
{
    sub_set_end_reason(s, rc == SL_ELIMIT ? SUB_END_RESUME_REFUSED : SUB_END_ERROR);
    if (rc == SL_ELIMIT)
        ws_session_close(s, WS_CLOSE_TRY_AGAIN_LATER, "too many resumes at once");
    else
        ws_session_close(s, WS_CLOSE_INTERNAL_ERROR, "storage error");
}

static sub_deflate_stats deflate_counts; /* relaxed atomics: every worker */
#define DEFLATE_COUNT(field, n) __atomic_add_fetch(&deflate_counts.field, (n), __ATOMIC_RELAXED)

void sub_deflate_get_stats(sub_deflate_stats *st)
{
    unsigned long long *dst = (unsigned long long *)st,
                       *src = (unsigned long long *)&deflate_counts;
    for (size_t i = 0; i < sizeof(*st) / sizeof(*dst); i++)
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

static log_limit deflate_log = LOG_LIMIT_INIT;

/* permessage-deflate from the request's Sec-WebSocket-Extensions lines, in
 * order: 1 accepted (*p set), 0 none, -1 a line that does not parse. */
static int ws_negotiate_deflate(const http_request *req, ws_deflate_params *p)
{
    unsigned declined = 0;
    int rc = 0;
    for (int i = 0; i < req->nheaders && rc == 0; i++) {
        const http_header *h = &req->headers[i];
        if (!STR_IS_CASE(h->name, h->name_len, "sec-websocket-extensions")) continue;
        unsigned d = 0;
        rc = ws_deflate_negotiate(h->value, h->value_len, p, &d);
        declined += d;
    }
    if (declined) {
        DEFLATE_COUNT(declined, declined);
        LOG_KV_LIMITED(&deflate_log, 1.0, LOG_INFO,
                       "websocket: permessage-deflate offer declined (bad parameters)",
                       LOG_I("offers", declined));
    }
    return rc;
}

/* An Upgrade to anything but websocket (h2c) is ignored, as RFC 9110 lets
 * a server do: the request goes on as plain HTTP. */
static bool ws_serves(const http_request *req)
{
    return req->upgrade && header_contains(req, "upgrade", "websocket");
}

static int ws_start(sub_session *s, const sub_request *r, const http_request *req, const char **why)
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
    if (!version || !STR_IS(version, vlen, "13")) {
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
            if (!STR_IS_CASE(h->name, h->name_len, "sec-websocket-protocol")) continue;
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
    ws_deflate_params zp;
    int zrc = sub_defaults.ws_deflate ? ws_negotiate_deflate(req, &zp) : 0;
    if (zrc < 0) {
        DEFLATE_COUNT(refused, 1);
        *why = "bad Sec-WebSocket-Extensions";
        return 400;
    }
    char zresp[WS_DEFLATE_RESPONSE_MAX];
    if (zrc == 1) {
        ws_deflate_response(&zp, zresp);
        s->ws_deflate_bits = zp.server_max_window_bits;
        DEFLATE_COUNT(negotiated, 1);
    }
    s->json = session_format_json(r, req);
    /* The frame decoder is made when bytes arrive (ws_on_data). */

    char head[640];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s%s%s%s%s%s\r\n",
                     accept, r->protocol ? "Sec-WebSocket-Protocol: " : "",
                     r->protocol ? r->protocol : "", r->protocol ? "\r\n" : "",
                     zrc == 1 ? "Sec-WebSocket-Extensions: " : "", zrc == 1 ? zresp : "",
                     zrc == 1 ? "\r\n" : "");
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
        ws_replay_failed(s, rc);
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
    sub_set_end_reason(s, code == WS_CLOSE_TRY_AGAIN_LATER  ? SUB_END_SLOW
                          : code == WS_CLOSE_GOING_AWAY     ? SUB_END_SHUTDOWN
                          : code == WS_CLOSE_INTERNAL_ERROR ? SUB_END_ERROR
                          : code == WS_CLOSE_NORMAL || code == WS_CLOSE_NO_STATUS
                              ? SUB_END_PEER /* an answer to the client's close */
                              : SUB_END_PROTOCOL);
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

/* The message's compressed frame for this client, when it negotiated
 * permessage-deflate and the message is long enough and fits its window:
 * 0 with the range set, 1 to send the plain frame, -1 no memory. */
static int ws_deflated_form(sub_session *s, hub_msg *m, buf_t **b, size_t *off, size_t *len)
{
    if (!s->ws_deflate_bits) return 1;
    size_t plain;
    if (s->json) {
        if (hub_msg_json(m, b, off, &plain) < 0) return -1;
    } else {
        plain = m->len;
    }
    ws_deflate_params p = {.server_max_window_bits = s->ws_deflate_bits};
    if (plain < sub_defaults.ws_deflate_min || !ws_deflate_fits(&p, plain)) return 1;
    return hub_msg_ws_deflated(m, s->json, b, off, len);
}

static void ws_send_msg(sub_session *s, hub_msg *m)
{
    buf_t *b;
    size_t off, len;
    int z = ws_deflated_form(s, m, &b, &off, &len);
    if (z < 0 || (z == 1 && hub_msg_ws(m, s->json, &b, &off, &len) < 0) ||
        conn_send(s->c, b, off, len) < 0) {
        __atomic_add_fetch(&sub_counts.slow_websocket, 1, __ATOMIC_RELAXED);
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

/* Appends to the message being assembled; 0, or 1 when out of memory
 * (the session is then closing). */
static int ws_msg_append(void *ud, const uint8_t *data, size_t len)
{
    sub_session *s = ud;
    if (s->t.ws.msg_len + len > s->t.ws.msg_cap) {
        size_t ncap = s->t.ws.msg_cap ? s->t.ws.msg_cap : 256;
        while (ncap < s->t.ws.msg_len + len)
            ncap *= 2;
        /* The decoder and the inflater stop a message at max_ws_message,
         * which config keeps at most WS_MESSAGE_MAX (so this never fires). */
        SLUICE_ASSERT(ncap <= 2 * (size_t)WS_MESSAGE_MAX);
        char *nm = ncap <= UINT32_MAX ? realloc(s->t.ws.msg, ncap) : NULL;
        if (!nm) {
            ws_session_close(s, WS_CLOSE_INTERNAL_ERROR, "out of memory");
            return 1;
        }
        s->t.ws.msg = nm;
        s->t.ws.msg_cap = (uint32_t)ncap;
    }
    memcpy(s->t.ws.msg + s->t.ws.msg_len, data, len);
    s->t.ws.msg_len += (uint32_t)len;
    return 0;
}

static int ws_msg_end(sub_session *s);

static int on_frame_data(void *ud, int opcode, const uint8_t *data, size_t len, bool fin)
{
    sub_session *s = ud;
    if (s->t.ws.msg_len == 0) s->ws_msg_op = (uint8_t)opcode;
    /* The decoder bounds the total by ws_max_message. */
    if (len && ws_msg_append(s, data, len)) return 1;
    return fin ? ws_msg_end(s) : 0;
}

static log_limit inflate_log = LOG_LIMIT_INIT;

/* A chunk of a compressed message: inflated into the message buffer under
 * the same bound on its inflated size, the stream made at its first chunk
 * and freed at its last (client_no_context_takeover was asked for). */
static int on_frame_compressed(void *ud, int opcode, const uint8_t *data, size_t len, bool fin)
{
    sub_session *s = ud;
    if (!s->t.ws.inflater) {
        s->ws_msg_op = (uint8_t)opcode;
        if (!(s->t.ws.inflater = wsz_inflater_new())) {
            ws_session_close(s, WS_CLOSE_INTERNAL_ERROR, "out of memory");
            return 1;
        }
    }
    uint64_t total = s->t.ws.msg_len;
    int rc = wsz_inflate(s->t.ws.inflater, data, len, fin, sub_defaults.ws_max_message, &total,
                         ws_msg_append, s);
    if (rc == SL_EGONE || session_ended(s)) return 1;
    if (rc != SL_OK) {
        char remote[64];
        bool big = rc == SL_ELIMIT;
        if (big)
            DEFLATE_COUNT(too_big, 1);
        else if (rc == SL_EINPUT)
            DEFLATE_COUNT(bad_data, 1);
        LOG_KV_LIMITED(&inflate_log, 1.0, LOG_INFO,
                       big ? "websocket client closed: message too big once inflated"
                           : "websocket client closed: its message did not inflate",
                       LOG_S("remote", conn_remote_addr(s->c, remote, sizeof(remote))));
        ws_session_close(s,
                         big               ? WS_CLOSE_TOO_BIG
                         : rc == SL_ENOMEM ? WS_CLOSE_INTERNAL_ERROR
                                           : WS_CLOSE_INVALID_DATA,
                         big               ? "message too big"
                         : rc == SL_ENOMEM ? "out of memory"
                                           : "bad compressed data");
        return 1;
    }
    DEFLATE_COUNT(inflated_in, len);
    if (!fin) return 0;
    wsz_inflater_free(s->t.ws.inflater);
    s->t.ws.inflater = NULL;
    DEFLATE_COUNT(inflated, 1);
    DEFLATE_COUNT(inflated_out, s->t.ws.msg_len);
    if (s->ws_msg_op == WS_OP_TEXT && !utf8_valid(s->t.ws.msg, s->t.ws.msg_len)) {
        ws_session_close(s, WS_CLOSE_INVALID_DATA, "invalid UTF-8 in text message");
        return 1;
    }
    return ws_msg_end(s);
}

/* The whole message is in the buffer: hand it to the app. */
static int ws_msg_end(sub_session *s)
{
    if (session_ended(s)) return 1;
    if (s->hooks && s->hooks->on_message)
        s->hooks->on_message(s->hooks_ud, s, s->t.ws.msg ? s->t.ws.msg : "", s->t.ws.msg_len,
                             s->ws_msg_op == WS_OP_BINARY);
    if (session_ended(s)) return 1; /* the hook closed it */
    /* Its publishes wait for storage (sub_publish_queued paused input),
     * or the app waits in on_message (sub_message_wait): stop at this
     * message; ws_on_data gives the rest back. */
    bool paused = s->ws_publishing >= SUB_MAX_PUBLISHING || s->ws_app_waiting;
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
    ((sub_session *)ud)->ws_pong_pending = false;
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
    .on_compressed = on_frame_compressed,
    .on_ping = on_frame_ping,
    .on_pong = on_frame_pong,
    .on_close = on_frame_close,
};

static void ws_on_data(conn *c, void *state, char *data, size_t len)
{
    sub_session *s = state;
    s->ws_pong_pending = false; /* any byte shows the peer is alive */
    if (!s->t.ws.dec) {
        s->t.ws.dec = malloc(sizeof(ws_decoder));
        if (!s->t.ws.dec) {
            ws_session_close(s, WS_CLOSE_INTERNAL_ERROR, "out of memory");
            return;
        }
        ws_decoder_init(s->t.ws.dec, sub_defaults.ws_max_message, true);
        if (s->ws_deflate_bits) ws_decoder_allow_deflate(s->t.ws.dec);
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
        if (pos < len && !session_ended(s) &&
            (s->ws_publishing >= SUB_MAX_PUBLISHING || s->ws_app_waiting)) {
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
    if (s->ws_pong_pending) {
        LOG_KV(LOG_DEBUG, "websocket peer did not answer a ping: dropped");
        conn_close(c);
        return;
    }
    s->ws_pong_pending = true;
    ws_send_control(s, WS_OP_PING, NULL, 0);
    if (!session_ended(s)) conn_stream_timer(c, sub_defaults.ws_ping);
}

static void ws_on_drain(conn *c, void *state)
{
    session_flushed(state);
    int rc = session_replay_more(state);
    if (rc < 0 && rc != SL_EGONE) ws_replay_failed(state, rc);
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

/* A message for one client (sub_send), compressed when it negotiated
 * permessage-deflate: into a buffer of header room + bound, the frame
 * header written just before the payload.  NULL when compression is not
 * for it (or saved nothing), or out of memory. */
static buf_t *ws_deflate_one(sub_session *s, const char *data, size_t len, bool binary, size_t *off)
{
    ws_deflate_params p = {.server_max_window_bits = s->ws_deflate_bits};
    if (!s->ws_deflate_bits || len < sub_defaults.ws_deflate_min || !ws_deflate_fits(&p, len))
        return NULL;
    buf_t *b = buf_new(WS_MAX_HEADER + wsz_deflate_bound(len));
    if (!b) return NULL;
    long n = wsz_deflate(data, len, (uint8_t *)b->data + WS_MAX_HEADER, b->len - WS_MAX_HEADER);
    if (n < 0 || (size_t)n >= len) {
        buf_unref(b);
        return NULL;
    }
    uint8_t hdr[WS_MAX_HEADER];
    size_t h = ws_frame_header(hdr, (binary ? WS_OP_BINARY : WS_OP_TEXT) | WS_FRAME_COMPRESSED,
                               true, (uint64_t)n);
    memcpy(b->data + WS_MAX_HEADER - h, hdr, h);
    *off = WS_MAX_HEADER - h;
    b->len = (uint32_t)(WS_MAX_HEADER + (size_t)n);
    return b;
}

static int ws_send_data(sub_session *s, const char *data, size_t len, bool binary)
{
    size_t zoff;
    buf_t *zb = ws_deflate_one(s, data, len, binary, &zoff);
    if (zb) {
        int zrc = conn_send(s->c, zb, zoff, zb->len - zoff);
        buf_unref(zb);
        if (zrc < 0) ws_session_close(s, WS_CLOSE_TRY_AGAIN_LATER, "slow consumer");
        return zrc;
    }
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
    wsz_inflater_free(s->t.ws.inflater);
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
    .replay_failed = ws_replay_failed,
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
    if (s->ws_publishing++ == 0) session_hold(s);
    if (s->ws_publishing >= SUB_MAX_PUBLISHING) conn_pause_input(s->c, true);
}

static log_limit refused_log = LOG_LIMIT_INIT;

void sub_publish_refused(sub_session *s, const char *reason)
{
    __atomic_add_fetch(&sub_counts.publish_refused, 1, __ATOMIC_RELAXED);
    sub_set_end_reason(s, SUB_END_REFUSED);
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
    SLUICE_ASSERT(s->tp == &ws_transport && s->ws_publishing > 0);
    s->ws_publishing--;
    if (!session_ended(s)) {
        if (status != 0)
            sub_publish_refused(s, err_str(status));
        else if (s->ws_publishing < SUB_MAX_PUBLISHING / 2 && !s->ws_app_waiting)
            conn_pause_input(s->c, false);
    }
    if (s->ws_publishing == 0) session_release(s);
}

void sub_message_wait(sub_session *s)
{
    SLUICE_ASSERT(s->tp == &ws_transport && !s->ws_app_waiting);
    s->ws_app_waiting = true;
    session_hold(s);
    if (!session_ended(s)) conn_pause_input(s->c, true);
}

void sub_message_done(sub_session *s)
{
    SLUICE_ASSERT(s->tp == &ws_transport && s->ws_app_waiting);
    s->ws_app_waiting = false;
    if (!session_ended(s) && s->ws_publishing < SUB_MAX_PUBLISHING)
        conn_pause_input(s->c, false); /* what was kept comes first */
    session_release(s);
}
