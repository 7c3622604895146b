/* hub.c: the topic table (chained hash), the per-topic backlog ring, fan-out
 * and the lazily built wire forms (see hub.h). */
#include "core/hub.h"

#include "core/b64.h"
#include "core/jsonenc.h"
#include "core/sse.h"
#include "core/utf8.h"
#include "core/ws.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

struct hub_topic {
    hub_topic *next_in_bucket;
    uint32_t hash;
    uint32_t nsubs;
    hub_sub *subs;
    hub_msg **ring; /* backlog, oldest at ring_head; grows up to `backlog` */
    uint32_t ring_head, ring_count, ring_cap, backlog;
    double max_age;
    uint64_t trimmed_seq; /* newest seq that left the backlog */
    size_t name_len;
    char name[];
};

typedef struct retention_rule {
    char *pattern;
    size_t len;
    bool prefix;
    hub_retention r;
} retention_rule;

struct hub {
    hub_topic **buckets;
    uint32_t nbuckets, ntopics;
    uint64_t seq;
    char epoch[17];
    uint8_t epoch_len;
    retention_rule *rules;
    size_t nrules;
    hub_stats stats;
};

static uint32_t hash_name(const char *s, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

hub *hub_new(void)
{
    hub *h = calloc(1, sizeof(hub));
    if (!h) return NULL;
    h->nbuckets = 1024;
    h->buckets = calloc(h->nbuckets, sizeof(hub_topic *));
    if (!h->buckets) {
        free(h);
        return NULL;
    }
    uint32_t r = 0;
    if (getrandom(&r, sizeof(r), 0) != sizeof(r)) r = (uint32_t)time(NULL) ^ (uint32_t)getpid();
    h->epoch_len = (uint8_t)snprintf(h->epoch, sizeof(h->epoch), "%08x", r);
    return h;
}

static void topic_free(hub_topic *t)
{
    for (uint32_t i = 0; i < t->ring_count; i++)
        hub_msg_unref(t->ring[(t->ring_head + i) % t->ring_cap]);
    free(t->ring);
    free(t);
}

void hub_free(hub *h)
{
    if (!h) return;
    for (uint32_t i = 0; i < h->nbuckets; i++) {
        hub_topic *t = h->buckets[i];
        while (t) {
            hub_topic *next = t->next_in_bucket;
            while (t->subs)
                hub_unsubscribe(h, t->subs);
            topic_free(t);
            t = next;
        }
    }
    for (size_t i = 0; i < h->nrules; i++)
        free(h->rules[i].pattern);
    free(h->rules);
    free(h->buckets);
    free(h);
}

bool hub_topic_valid(const char *name, size_t len)
{
    if (len < 1 || len > HUB_TOPIC_MAX) return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '.' || c == ':' || c == '-';
        if (!ok) return false;
    }
    return true;
}

bool hub_event_valid(const char *event, size_t len)
{
    if (len < 1 || len > HUB_EVENT_MAX || !sse_field_valid(event, len)) return false;
    static const char reserved[] = ".base64";
    size_t rl = sizeof(reserved) - 1;
    return !(len >= rl && memcmp(event + len - rl, reserved, rl) == 0);
}

int hub_set_retention(hub *h, const char *pattern, size_t len, bool prefix_match,
                      const hub_retention *r)
{
    for (size_t i = 0; i < h->nrules; i++) {
        retention_rule *x = &h->rules[i];
        if (x->len == len && x->prefix == prefix_match && memcmp(x->pattern, pattern, len) == 0) {
            x->r = *r;
            return 0;
        }
    }
    retention_rule *nr = realloc(h->rules, (h->nrules + 1) * sizeof(*nr));
    if (!nr) return -1;
    h->rules = nr;
    retention_rule *x = &h->rules[h->nrules];
    x->pattern = strndup(pattern, len);
    if (!x->pattern) return -1;
    x->len = len;
    x->prefix = prefix_match;
    x->r = *r;
    h->nrules++;
    return 0;
}

static hub_retention retention_for(const hub *h, const char *name, size_t len)
{
    hub_retention best = {HUB_DEFAULT_BACKLOG, 0};
    size_t best_len = 0;
    bool found = false;
    for (size_t i = 0; i < h->nrules; i++) {
        const retention_rule *x = &h->rules[i];
        bool match = x->prefix ? (len >= x->len && memcmp(name, x->pattern, x->len) == 0)
                               : (len == x->len && memcmp(name, x->pattern, len) == 0);
        /* Longest pattern wins; an exact name beats a prefix of equal length. */
        size_t score = x->len * 2 + (x->prefix ? 0 : 1);
        if (match && (!found || score > best_len)) {
            best = x->r;
            best_len = score;
            found = true;
        }
    }
    if (best.backlog == 0) best.backlog = HUB_DEFAULT_BACKLOG;
    return best;
}

static hub_topic *topic_find(const hub *h, const char *name, size_t len, uint32_t hash)
{
    for (hub_topic *t = h->buckets[hash & (h->nbuckets - 1)]; t; t = t->next_in_bucket)
        if (t->hash == hash && t->name_len == len && memcmp(t->name, name, len) == 0) return t;
    return NULL;
}

static void grow_buckets(hub *h)
{
    uint32_t nb = h->nbuckets * 2;
    hub_topic **nbk = calloc(nb, sizeof(hub_topic *));
    if (!nbk) return; /* keep the longer chains */
    for (uint32_t i = 0; i < h->nbuckets; i++) {
        hub_topic *t = h->buckets[i];
        while (t) {
            hub_topic *next = t->next_in_bucket;
            t->next_in_bucket = nbk[t->hash & (nb - 1)];
            nbk[t->hash & (nb - 1)] = t;
            t = next;
        }
    }
    free(h->buckets);
    h->buckets = nbk;
    h->nbuckets = nb;
}

static hub_topic *topic_get(hub *h, const char *name, size_t len)
{
    if (!hub_topic_valid(name, len)) return NULL;
    uint32_t hash = hash_name(name, len);
    hub_topic *t = topic_find(h, name, len, hash);
    if (t) return t;
    t = calloc(1, sizeof(hub_topic) + len + 1);
    if (!t) return NULL;
    memcpy(t->name, name, len);
    t->name_len = len;
    t->hash = hash;
    hub_retention r = retention_for(h, name, len);
    t->backlog = r.backlog;
    t->max_age = r.max_age;
    if (h->ntopics + 1 > h->nbuckets) grow_buckets(h);
    t->next_in_bucket = h->buckets[hash & (h->nbuckets - 1)];
    h->buckets[hash & (h->nbuckets - 1)] = t;
    h->ntopics++;
    return t;
}

/* A topic with no subscriber and no backlog costs memory for nothing. */
static void topic_maybe_drop(hub *h, hub_topic *t)
{
    if (t->subs || t->ring_count) return;
    hub_topic **pp = &h->buckets[t->hash & (h->nbuckets - 1)];
    while (*pp != t)
        pp = &(*pp)->next_in_bucket;
    *pp = t->next_in_bucket;
    h->ntopics--;
    topic_free(t);
}

/* ---- messages ----------------------------------------------------------- */

void hub_msg_ref(hub_msg *m)
{
    m->refs++;
}

const char *hub_msg_topic(const hub_msg *m, size_t *len)
{
    *len = m->topic->name_len;
    return m->topic->name;
}

void hub_msg_unref(hub_msg *m)
{
    if (!m || --m->refs > 0) return;
    buf_unref(m->raw);
    buf_unref(m->json);
    buf_unref(m->sse);
    free(m->event);
    free(m);
}

hub_msg *hub_msg_derive(const hub_msg *m, const char *event, size_t elen, const void *data,
                        size_t len)
{
    hub_msg *d = calloc(1, sizeof(hub_msg));
    if (!d) return NULL;
    d->refs = 1;
    d->raw = buf_new(HUB_HEADROOM + len);
    if (!d->raw || (event && elen && !(d->event = strndup(event, elen)))) {
        hub_msg_unref(d);
        return NULL;
    }
    if (len) memcpy(d->raw->data + HUB_HEADROOM, data, len);
    d->len = len;
    d->event_len = d->event ? elen : 0;
    d->binary = !utf8_valid(d->raw->data + HUB_HEADROOM, len);
    d->topic = m->topic;
    d->time_ms = m->time_ms;
    d->seq = m->seq;
    memcpy(d->id, m->id, sizeof(d->id));
    d->id_len = m->id_len;
    return d;
}

size_t hub_id_format(const hub *h, uint64_t seq, char out[HUB_ID_MAX])
{
    return (size_t)snprintf(out, HUB_ID_MAX, "%s-%llu", h->epoch, (unsigned long long)seq);
}

bool hub_id_parse(const hub *h, const char *id, size_t len, uint64_t *seq)
{
    if (len <= (size_t)h->epoch_len + 1 || memcmp(id, h->epoch, h->epoch_len) != 0 ||
        id[h->epoch_len] != '-')
        return false;
    uint64_t v = 0;
    for (size_t i = h->epoch_len + 1; i < len; i++) {
        if (id[i] < '0' || id[i] > '9' || v > (UINT64_MAX - 9) / 10) return false;
        v = v * 10 + (uint64_t)(id[i] - '0');
    }
    if (v > h->seq) return false; /* from the future: not ours */
    *seq = v;
    return true;
}

uint64_t hub_last_seq(const hub *h)
{
    return h->seq;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void ring_drop_oldest(hub_topic *t)
{
    hub_msg *old = t->ring[t->ring_head];
    t->trimmed_seq = old->seq;
    t->ring_head = (t->ring_head + 1) % t->ring_cap;
    t->ring_count--;
    hub_msg_unref(old);
}

static void trim_by_age(hub_topic *t, int64_t now)
{
    if (t->max_age <= 0) return;
    int64_t cutoff = now - (int64_t)(t->max_age * 1000);
    while (t->ring_count && t->ring[t->ring_head]->time_ms < cutoff)
        ring_drop_oldest(t);
}

static int ring_push(hub_topic *t, hub_msg *m)
{
    if (t->ring_count == t->backlog) {
        ring_drop_oldest(t);
    } else if (t->ring_count == t->ring_cap) {
        /* Start small and double: most topics hold few messages. */
        uint32_t ncap = t->ring_cap ? t->ring_cap * 2 : 8;
        if (ncap > t->backlog) ncap = t->backlog;
        hub_msg **nr = malloc(ncap * sizeof(hub_msg *));
        if (!nr) return -1;
        for (uint32_t i = 0; i < t->ring_count; i++)
            nr[i] = t->ring[(t->ring_head + i) % t->ring_cap];
        free(t->ring);
        t->ring = nr;
        t->ring_cap = ncap;
        t->ring_head = 0;
    }
    t->ring[(t->ring_head + t->ring_count) % t->ring_cap] = m;
    t->ring_count++;
    return 0;
}

hub_msg *hub_publish(hub *h, const char *topic, size_t tlen, const char *event, size_t elen,
                     const void *data, size_t len)
{
    if (event && elen && !hub_event_valid(event, elen)) return NULL;
    hub_topic *t = topic_get(h, topic, tlen);
    if (!t) return NULL;
    hub_msg *m = calloc(1, sizeof(hub_msg));
    if (!m) goto fail;
    m->refs = 1; /* the backlog's */
    m->raw = buf_new(HUB_HEADROOM + len);
    if (!m->raw) goto fail;
    if (len) memcpy(m->raw->data + HUB_HEADROOM, data, len);
    m->len = len;
    m->binary = !utf8_valid(m->raw->data + HUB_HEADROOM, len);
    if (event && elen) {
        m->event = strndup(event, elen);
        if (!m->event) goto fail;
        m->event_len = elen;
    }
    m->topic = t;
    m->time_ms = now_ms();
    m->seq = ++h->seq;
    m->id_len = (uint8_t)hub_id_format(h, m->seq, m->id);
    trim_by_age(t, m->time_ms);
    if (ring_push(t, m) < 0) goto fail;
    h->stats.published++;
    /* Fan-out.  `next` is read first: a delivery may unsubscribe itself. */
    for (hub_sub *s = t->subs, *next; s; s = next) {
        next = s->next;
        s->deliver(s->owner, m);
    }
    return m;
fail:
    if (m) {
        m->refs = 1;
        hub_msg_unref(m);
    }
    topic_maybe_drop(h, t);
    return NULL;
}

hub_sub *hub_subscribe(hub *h, const char *topic, size_t len, void *owner, hub_deliver_fn fn)
{
    hub_topic *t = topic_get(h, topic, len);
    if (!t) return NULL;
    hub_sub *s = calloc(1, sizeof(hub_sub));
    if (!s) {
        topic_maybe_drop(h, t);
        return NULL;
    }
    s->topic = t;
    s->owner = owner;
    s->deliver = fn;
    s->next = t->subs;
    if (t->subs) t->subs->prev = s;
    t->subs = s;
    t->nsubs++;
    h->stats.subscribers++;
    return s;
}

void hub_unsubscribe(hub *h, hub_sub *s)
{
    if (!s) return;
    hub_topic *t = s->topic;
    if (s->prev)
        s->prev->next = s->next;
    else
        t->subs = s->next;
    if (s->next) s->next->prev = s->prev;
    t->nsubs--;
    h->stats.subscribers--;
    free(s);
    topic_maybe_drop(h, t);
}

size_t hub_replay(hub *h, const char *topic, size_t len, uint64_t after_seq, bool known,
                  size_t limit, hub_deliver_fn fn, void *owner, bool *gap)
{
    *gap = !known;
    if (!hub_topic_valid(topic, len)) return 0;
    hub_topic *t = topic_find(h, topic, len, hash_name(topic, len));
    if (!t) return 0;
    trim_by_age(t, now_ms());
    if (known && after_seq < t->trimmed_seq) *gap = true;
    size_t n = 0;
    /* The backlog is short (bounded by retention): a scan finds the start. */
    for (uint32_t i = 0; i < t->ring_count && (limit == 0 || n < limit); i++) {
        hub_msg *m = t->ring[(t->ring_head + i) % t->ring_cap];
        if (known && m->seq <= after_seq) continue;
        hub_msg_ref(m);
        fn(owner, m);
        hub_msg_unref(m);
        n++;
    }
    return n;
}

/* ---- wire forms ----------------------------------------------------------- */

/* Writes a frame header for `len` payload bytes just before data at
 * HUB_HEADROOM; returns the header length. */
static uint8_t put_ws_header(buf_t *b, int opcode, size_t len)
{
    uint8_t hdr[WS_MAX_HEADER];
    size_t n = ws_frame_header(hdr, opcode, true, len);
    memcpy(b->data + HUB_HEADROOM - n, hdr, n);
    return (uint8_t)n;
}

int hub_msg_json(hub_msg *m, buf_t **b, size_t *off, size_t *len)
{
    if (!m->json) {
        struct json_msg jm = {
            .id = m->id,
            .id_len = m->id_len,
            .topic = m->topic->name,
            .topic_len = m->topic->name_len,
            .event = m->event,
            .event_len = m->event_len,
            .data = m->raw->data + HUB_HEADROOM,
            .data_len = m->len,
            .flags = JSON_MSG_TOPIC | (m->binary ? JSON_MSG_BASE64 : 0),
        };
        size_t n = json_msg_size(&jm);
        buf_t *jb = buf_new(HUB_HEADROOM + n);
        if (!jb) return -1;
        if (json_msg_encode(jb->data + HUB_HEADROOM, n, &jm) != (ssize_t)n) {
            buf_unref(jb);
            return -1;
        }
        m->json = jb;
        m->json_len = n;
    }
    *b = m->json;
    *off = HUB_HEADROOM;
    *len = m->json_len;
    return 0;
}

int hub_msg_ws(hub_msg *m, bool json, buf_t **b, size_t *off, size_t *len)
{
    if (json) {
        if (hub_msg_json(m, b, off, len) < 0) return -1;
        if (!m->json_hdr) m->json_hdr = put_ws_header(m->json, WS_OP_TEXT, m->json_len);
        *off = HUB_HEADROOM - m->json_hdr;
        *len = m->json_hdr + m->json_len;
        return 0;
    }
    if (!m->raw_hdr)
        m->raw_hdr = put_ws_header(m->raw, m->binary ? WS_OP_BINARY : WS_OP_TEXT, m->len);
    *b = m->raw;
    *off = HUB_HEADROOM - m->raw_hdr;
    *len = m->raw_hdr + m->len;
    return 0;
}

int hub_msg_sse(hub_msg *m, buf_t **b)
{
    if (!m->sse) {
        const char *data = m->raw->data + HUB_HEADROOM;
        size_t dlen = m->len;
        char *tmp = NULL;
        char evbuf[HUB_EVENT_MAX + 16];
        const char *ev = m->event;
        size_t evlen = m->event_len;
        if (m->binary) {
            /* Binary data goes base64, flagged by the event name suffix. */
            dlen = b64_encoded_size(m->len);
            tmp = malloc(dlen ? dlen : 1);
            if (!tmp) return -1;
            b64_encode(tmp, dlen, data, m->len);
            data = tmp;
            evlen = (size_t)snprintf(evbuf, sizeof(evbuf), "%.*s.base64", (int)(ev ? evlen : 7),
                                     ev ? ev : "message");
            ev = evbuf;
        }
        ssize_t n = sse_event_size(m->id, m->id_len, ev, evlen, data, dlen);
        buf_t *sb = n > 0 ? buf_new((size_t)n) : NULL;
        if (!sb ||
            sse_event_encode(sb->data, (size_t)n, m->id, m->id_len, ev, evlen, data, dlen) != n) {
            buf_unref(sb);
            free(tmp);
            return -1;
        }
        free(tmp);
        m->sse = sb;
    }
    *b = m->sse;
    return 0;
}

void hub_get_stats(const hub *h, hub_stats *st)
{
    *st = h->stats;
    st->topics = h->ntopics;
}

void hub_count_delivery(hub *h)
{
    h->stats.delivered++;
}
