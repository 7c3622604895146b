/* metrics.c: the Prometheus text of /metrics (see metrics.h).  Built with
 * snprintf into a growing buffer: it runs once per scrape, not per
 * message, so clarity wins over speed here. */
#include "core/metrics.h"
#include "core/cors.h"

#include "core/h2.h"
#include "core/server.h"
#include "core/subscriber.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct text {
    char *p;
    size_t len, cap;
    bool oom;
} text;

static void add(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void add(text *t, const char *fmt, ...)
{
    if (t->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->oom = true;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t ncap = t->cap * 2 > t->len + (size_t)n + 1 ? t->cap * 2 : t->len + (size_t)n + 1;
        char *np = realloc(t->p, ncap);
        if (!np) {
            t->oom = true;
            return;
        }
        t->p = np;
        t->cap = ncap;
    }
}

static void head(text *t, const char *name, const char *type, const char *help)
{
    add(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Families of one unlabelled value each. */
typedef struct scalar {
    const char *name, *type, *help;
    unsigned long long value;
} scalar;

static void put_scalars(text *t, const scalar *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        head(t, s[i].name, s[i].type, s[i].help);
        add(t, "%s %llu\n", s[i].name, s[i].value);
    }
}

char *metrics_render(const hub *h, const metrics_extra *extra, size_t nextra, size_t *len)
{
    text t = {.cap = 8192};
    if (!(t.p = malloc(t.cap))) return NULL;
    hub_stats hs;
    memset(&hs, 0, sizeof(hs));
    if (h) hub_get_stats(h, &hs);
    sub_stats ss;
    sub_get_stats(&ss);
    unsigned total = server_count_connection(0);
    unsigned streams = ss.websocket + ss.sse + ss.longpoll;

    head(&t, "sluice_connections", "gauge", "Open connections by transport.");
    add(&t, "sluice_connections{transport=\"websocket\"} %u\n", ss.websocket);
    add(&t, "sluice_connections{transport=\"sse\"} %u\n", ss.sse);
    add(&t, "sluice_connections{transport=\"longpoll\"} %u\n", ss.longpoll);
    /* Sockets that carry no subscription of their own: subscriptions on
     * HTTP/2 streams share their connection's socket, so they are taken
     * out (all open streams, a slight overcount of them). */
    h2_stats h2c;
    h2_get_stats(&h2c);
    unsigned own = streams > h2c.streams ? streams - (unsigned)h2c.streams : 0;
    add(&t, "sluice_connections{transport=\"http\"} %u\n", total > own ? total - own : 0);
    const scalar scalars[] = {
        {"sluice_messages_published_total", "counter", "Messages committed to storage.",
         hs.published},
        {"sluice_messages_delivered_total", "counter", "Messages queued to subscribers.",
         hs.delivered},
        {"sluice_publish_failures_total", "counter", "Publishes refused by storage.",
         hs.publish_failures},
        {"sluice_ws_publish_refused_total", "counter",
         "WebSocket clients closed (1013) because storage refused their publish.",
         ss.publish_refused},
        {"sluice_topics", "gauge", "Topics with a subscriber.", hs.topics},
        {"sluice_subscriptions", "gauge", "Topic subscriptions.", hs.subscribers},
        {"sluice_storage_bytes", "gauge", "Size of the LMDB data file.", hs.store_file_bytes},
        {"sluice_storage_messages", "gauge", "Messages retained in storage.", hs.store_messages},
        {"sluice_storage_commits_total", "counter", "Storage write transactions.", hs.commits},
        {"sluice_storage_log_messages", "gauge", "Logged messages awaiting a checkpoint into LMDB.",
         hs.store_log_messages},
        {"sluice_storage_checkpoints_total", "counter", "Checkpoints of the log into LMDB.",
         hs.checkpoints},
        {"sluice_storage_checkpoint_failures_total", "counter",
         "Checkpoints that failed (disk or map full: publishes are refused until one passes).",
         hs.checkpoint_failures},
        {"sluice_storage_damaged_total", "counter",
         "Damaged stored messages or pages that reads skipped (see sluice check).",
         hs.store_damaged},
        {"sluice_publish_duplicates_total", "counter",
         "Publishes answered with the ID of an earlier one (same Idempotency-Key).",
         hs.publish_duplicates},
    };
    put_scalars(&t, scalars, sizeof(scalars) / sizeof(scalars[0]));
    head(&t, "sluice_publish_latency_seconds", "histogram",
         "From publish to fan-out: storage queue, commit and sync.");
    for (int i = 0; i < HUB_LATENCY_BUCKETS; i++)
        add(&t, "sluice_publish_latency_seconds_bucket{le=\"%g\"} %llu\n", hub_latency_bounds[i],
            (unsigned long long)hs.latency_buckets[i]);
    add(&t, "sluice_publish_latency_seconds_bucket{le=\"+Inf\"} %llu\n",
        (unsigned long long)hs.latency_buckets[HUB_LATENCY_BUCKETS]);
    add(&t, "sluice_publish_latency_seconds_sum %.6f\n", hs.latency_sum);
    add(&t, "sluice_publish_latency_seconds_count %llu\n",
        (unsigned long long)hs.latency_buckets[HUB_LATENCY_BUCKETS]);
    /* permessage-deflate (RFC 7692) on WebSocket connections. */
    sub_deflate_stats zs;
    sub_deflate_get_stats(&zs);
    hub_deflate_stats zh;
    hub_deflate_get_stats(&zh);
    head(&t, "sluice_ws_deflate_negotiations_total", "counter",
         "WebSocket handshakes by permessage-deflate outcome: accepted, offers declined for bad "
         "parameters (no extension), handshakes refused for a malformed header (400).");
    add(&t, "sluice_ws_deflate_negotiations_total{result=\"accepted\"} %llu\n", zs.negotiated);
    add(&t, "sluice_ws_deflate_negotiations_total{result=\"declined\"} %llu\n", zs.declined);
    add(&t, "sluice_ws_deflate_negotiations_total{result=\"refused\"} %llu\n", zs.refused);
    head(&t, "sluice_ws_deflate_bytes_total", "counter",
         "Payload bytes through permessage-deflate: messages compressed once for their "
         "subscribers (out_plain before, out_compressed after) and client messages inflated "
         "(in_compressed before, in_plain after).");
    add(&t, "sluice_ws_deflate_bytes_total{dir=\"out_plain\"} %llu\n", zh.bytes_in);
    add(&t, "sluice_ws_deflate_bytes_total{dir=\"out_compressed\"} %llu\n", zh.bytes_out);
    add(&t, "sluice_ws_deflate_bytes_total{dir=\"in_compressed\"} %llu\n", zs.inflated_in);
    add(&t, "sluice_ws_deflate_bytes_total{dir=\"in_plain\"} %llu\n", zs.inflated_out);
    head(&t, "sluice_ws_deflate_messages_total", "counter",
         "Messages through permessage-deflate: compressed forms built (once per message and "
         "form), forms sent plain because deflate did not shrink them, client messages "
         "inflated.");
    add(&t, "sluice_ws_deflate_messages_total{kind=\"compressed\"} %llu\n", zh.forms);
    add(&t, "sluice_ws_deflate_messages_total{kind=\"incompressible\"} %llu\n", zh.incompressible);
    add(&t, "sluice_ws_deflate_messages_total{kind=\"inflated\"} %llu\n", zs.inflated);
    head(&t, "sluice_ws_deflate_refused_total", "counter",
         "WebSocket clients closed for a compressed message: past limits.max_ws_message once "
         "inflated (1009), or not valid deflate data (1007).");
    add(&t, "sluice_ws_deflate_refused_total{reason=\"too_big\"} %llu\n", zs.too_big);
    add(&t, "sluice_ws_deflate_refused_total{reason=\"bad_data\"} %llu\n", zs.bad_data);
    if (hs.cluster) {
        const scalar cl[] = {
            {"sluice_cluster_connected", "gauge",
             "1 while a NATS server is connected (cluster mode; 0: publishes answer 503).",
             hs.cluster_connected},
            {"sluice_cluster_reconnects_total", "counter", "Reconnections to NATS.",
             hs.cluster_reconnects},
            {"sluice_cluster_publishes_inflight", "gauge", "Publishes waiting for JetStream's ack.",
             hs.cluster_inflight},
            {"sluice_cluster_publish_failures_total", "counter",
             "Publishes JetStream refused or did not acknowledge in time (answered 503).",
             hs.cluster_publish_failures},
            {"sluice_cluster_refetched_total", "counter",
             "Messages the stream's consumer skipped (lost on the way, or a new consumer past "
             "them), read again.",
             hs.cluster_refetched},
            {"sluice_cluster_repeats_total", "counter",
             "Messages the stream's consumer gave again (a new consumer), dropped.",
             hs.cluster_repeats},
            {"sluice_cluster_consumer_renewals_total", "counter",
             "Times this node's consumer of the stream was made anew, from the message after the "
             "last one delivered: after a reconnect, missed heartbeats or a message lost on the "
             "way.",
             hs.cluster_renewals},
            {"sluice_cluster_diverged_total", "counter",
             "Repeats that were another message than the one delivered at their seq (the NATS "
             "servers disagree on the stream), dropped.",
             hs.cluster_diverged},
            {"sluice_cluster_gaps_total", "counter",
             "Times messages were deleted (or unreadable) before this node's consumer had them: "
             "live subscribers got the gap signal.",
             hs.cluster_gaps},
            {"sluice_cluster_resumes_refused_total", "counter",
             "Resumes refused: limits.max_waiting_resumes pages were already read from the "
             "stream or waiting for a reader (the client was told: SSE stream ended, WebSocket "
             "1013, long-poll 503).",
             hs.cluster_resumes_refused},
            {"sluice_cluster_read_retries_total", "counter",
             "Reads of the stream (resumes, polls) tried again after one of their requests "
             "failed or timed out (logged).",
             hs.cluster_read_retries},
            {"sluice_cluster_read_failures_total", "counter",
             "Reads of the stream that failed on their second try, or with NATS disconnected: "
             "the client was told (long-poll 503, SSE stream ended, WebSocket close 1011).",
             hs.cluster_read_failures},
            {"sluice_cluster_read_gets_total", "counter",
             "Messages read for resumes and polls one request each (the stream leader answers "
             "alone; the first 8 of a topic's read).",
             hs.cluster_read_gets},
            {"sluice_cluster_read_consumers_total", "counter",
             "Topic reads for resumes and polls that made a short-lived consumer (more than "
             "8 messages behind: the servers' meta group makes and deletes it).",
             hs.cluster_read_consumers},
        };
        put_scalars(&t, cl, sizeof(cl) / sizeof(cl[0]));
    }
    head(&t, "sluice_http_refused_total", "counter",
         "Requests refused by the HTTP layer before the app saw them, by status.");
    static const int refused[SERVER_REFUSAL_KINDS] = SERVER_REFUSAL_STATUSES;
    for (int i = 0; i < SERVER_REFUSAL_KINDS; i++)
        add(&t, "sluice_http_refused_total{status=\"%d\"} %llu\n", refused[i],
            server_refusals(refused[i]));
    cors_stats cs;
    cors_get_stats(&cs);
    head(&t, "sluice_cors_preflights_total", "counter", "CORS preflights answered with 204.");
    add(&t, "sluice_cors_preflights_total %llu\n", cs.preflights);
    head(&t, "sluice_cors_refused_total", "counter",
         "Requests refused (403) by a CORS policy: preflights, requests with side effects from "
         "an origin not allowed, WebSocket handshakes from an origin not allowed.");
    add(&t, "sluice_cors_refused_total{kind=\"preflight\"} %llu\n", cs.preflight_refused);
    add(&t, "sluice_cors_refused_total{kind=\"request\"} %llu\n", cs.refused);
    add(&t, "sluice_cors_refused_total{kind=\"websocket\"} %llu\n", cs.websocket_refused);
    h2_stats h2;
    h2_get_stats(&h2);
    head(&t, "sluice_http2_connections", "gauge", "Open HTTP/2 connections.");
    add(&t, "sluice_http2_connections %llu\n", h2.connections);
    head(&t, "sluice_http2_streams", "gauge", "Open HTTP/2 streams.");
    add(&t, "sluice_http2_streams %llu\n", h2.streams);
    head(&t, "sluice_http2_streams_total", "counter", "HTTP/2 streams opened.");
    add(&t, "sluice_http2_streams_total %llu\n", h2.streams_total);
    head(&t, "sluice_http2_streams_cut_total", "counter",
         "HTTP/2 streams reset because their reader fell past the output limit.");
    add(&t, "sluice_http2_streams_cut_total %llu\n", h2.streams_cut);
    head(&t, "sluice_http2_refused_total", "counter",
         "HTTP/2 connections ended (GOAWAY) or streams refused, by cause.");
    const struct {
        const char *cause;
        unsigned long long n;
    } h2r[] = {{"rapid_reset", h2.rapid_reset},
               {"continuation_flood", h2.continuation_flood},
               {"header_list", h2.header_list},
               {"too_many_streams", h2.too_many_streams},
               {"settings_flood", h2.settings_flood},
               {"ping_flood", h2.ping_flood},
               {"flood", h2.flood},
               {"protocol_error", h2.protocol_error}};
    for (size_t i = 0; i < sizeof(h2r) / sizeof(h2r[0]); i++)
        add(&t, "sluice_http2_refused_total{cause=\"%s\"} %llu\n", h2r[i].cause, h2r[i].n);
    for (size_t i = 0; i < nextra; i++) {
        const metrics_extra *e = &extra[i];
        if (i == 0 || strcmp(extra[i - 1].name, e->name) != 0) head(&t, e->name, e->type, e->help);
        if (e->label)
            add(&t, "%s{%s} %llu\n", e->name, e->label, e->value);
        else
            add(&t, "%s %llu\n", e->name, e->value);
    }
    if (t.oom) {
        free(t.p);
        return NULL;
    }
    *len = t.len;
    return t.p;
}
