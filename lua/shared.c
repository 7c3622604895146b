/* shared.c: the process-wide tables behind sluice.presence,
 * sluice.subscribers and sluice.limit (the face, with the why: shared.h).
 * Two tables, each a chained hash under its own mutex; what a script gets
 * is copied out under the lock and pushed after it, so that no Lua error
 * (memory) can leave a lock held. */
#include "lua/shared.h"
#include "lua/internal.h"

#include "core/defs.h"
#include "core/jsonenc.h"

#include <lauxlib.h>
#include <lua-cjson.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define READ(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define BUMP(x) __atomic_add_fetch(&(x), 1, __ATOMIC_RELAXED)

/* ---- topics: subscriptions and members --------------------------------- */

typedef struct member {
    struct member *next;
    uint32_t conns; /* subscriptions of this id on the topic */
    size_t id_len, info_len;
    char *info; /* JSON, after the id in the same allocation */
    char id[];
} member;

typedef struct topic {
    struct topic *next; /* hash chain */
    uint32_t subs;      /* subscriptions that count here */
    uint32_t nmembers;
    member *members;
    size_t len;
    char name[];
} topic;

struct lxs_sub {
    int n;
    struct {
        topic *t;
        member *m; /* NULL: not a member there */
    } e[];
};

#define TOPIC_CHAINS 4096
static pthread_mutex_t topics_lock = PTHREAD_MUTEX_INITIALIZER;
static topic *chains[TOPIC_CHAINS];
static unsigned long long members_now, members_refused; /* under topics_lock / atomic */
static unsigned long long events_dropped;               /* atomic */

void lxs_count_event_dropped(void)
{
    BUMP(events_dropped);
}

static uint32_t hash(const char *s, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

static topic **topic_slot(const char *name, size_t len)
{
    topic **p = &chains[hash(name, len) % TOPIC_CHAINS];
    while (*p && !((*p)->len == len && memcmp((*p)->name, name, len) == 0))
        p = &(*p)->next;
    return p;
}

static void topic_drop_if_unused(topic *t)
{
    if (t->subs || t->members) return;
    topic **p = topic_slot(t->name, t->len);
    *p = t->next;
    free(t);
}

/* A pending join or leave event, made under the lock, sent after it. */
typedef struct event {
    struct event *next;
    bool join;
    size_t tlen, len;
    char *json; /* after the topic name */
    char topic[];
} event;

static event *event_new(const topic *t, const member *m, bool join)
{
    size_t tl = json_string_size(t->name, t->len), il = json_string_size(m->id, m->id_len);
    size_t len = sizeof("{\"topic\":,\"id\":,\"info\":}") - 1 + tl + il + m->info_len;
    event *e = malloc(sizeof(event) + t->len + 1 + len);
    if (!e) return NULL;
    e->join = join;
    e->tlen = t->len;
    e->len = len;
    memcpy(e->topic, t->name, t->len);
    e->topic[t->len] = '\0';
    char *p = e->json = e->topic + t->len + 1;
    p = mempcpy(p, STRLIT("{\"topic\":"));
    p += json_string_encode(p, tl, t->name, t->len);
    p = mempcpy(p, STRLIT(",\"id\":"));
    p += json_string_encode(p, il, m->id, m->id_len);
    p = mempcpy(p, STRLIT(",\"info\":"));
    p = mempcpy(p, m->info, m->info_len);
    *p = '}';
    return e;
}

static void events_send(event *list, lxs_event_fn fn, void *ud)
{
    while (list) {
        event *next = list->next;
        if (fn) fn(ud, list->topic, list->tlen, list->join, list->json, list->len);
        free(list);
        list = next;
    }
}

static bool exact_name(const char *name, size_t len)
{
    return len > 0 && name[len - 1] != '*';
}

lxs_sub *lxs_join(const char *const *names, const size_t *lens, int n, const char *id, size_t idlen,
                  const char *info, size_t infolen, lxs_event_fn fn, void *ud)
{
    lxs_sub *s = calloc(1, sizeof(lxs_sub) + (size_t)n * sizeof(s->e[0]));
    if (!s) return NULL;
    event *events = NULL;
    pthread_mutex_lock(&topics_lock);
    for (int i = 0; i < n; i++) {
        topic **p = topic_slot(names[i], lens[i]);
        topic *t = *p;
        if (!t) {
            t = calloc(1, sizeof(topic) + lens[i] + 1);
            if (!t) break; /* the rest is not counted: s->n says how far */
            memcpy(t->name, names[i], lens[i]);
            t->len = lens[i];
            *p = t;
        }
        t->subs++;
        s->e[i].t = t;
        s->n = i + 1;
        if (!id || !exact_name(names[i], lens[i])) continue;
        member *m = t->members;
        while (m && !(m->id_len == idlen && memcmp(m->id, id, idlen) == 0))
            m = m->next;
        if (!m) {
            if (t->nmembers >= LXS_MAX_MEMBERS) {
                BUMP(members_refused);
                continue;
            }
            m = malloc(sizeof(member) + idlen + infolen);
            if (!m) continue;
            memcpy(m->id, id, idlen);
            m->id_len = idlen;
            m->info = m->id + idlen;
            memcpy(m->info, info, infolen);
            m->info_len = infolen;
            m->conns = 0;
            m->next = t->members;
            t->members = m;
            t->nmembers++;
            members_now++;
            event *e = event_new(t, m, true);
            if (e) {
                e->next = events;
                events = e;
            }
        }
        m->conns++;
        s->e[i].m = m;
    }
    pthread_mutex_unlock(&topics_lock);
    events_send(events, fn, ud);
    return s;
}

void lxs_leave(lxs_sub *s, lxs_event_fn fn, void *ud)
{
    if (!s) return;
    event *events = NULL;
    pthread_mutex_lock(&topics_lock);
    for (int i = 0; i < s->n; i++) {
        topic *t = s->e[i].t;
        member *m = s->e[i].m;
        if (m && --m->conns == 0) {
            event *e = event_new(t, m, false);
            if (e) {
                e->next = events;
                events = e;
            }
            member **p = &t->members;
            while (*p != m)
                p = &(*p)->next;
            *p = m->next;
            free(m);
            t->nmembers--;
            members_now--;
        }
        t->subs--;
        topic_drop_if_unused(t);
    }
    pthread_mutex_unlock(&topics_lock);
    free(s);
    events_send(events, fn, ud);
}

/* The members of a topic, copied under the lock into buf (cap bytes): ids
 * and infos back to back, each pair preceded by its two lengths.  Returns
 * the bytes needed (more than cap: nothing copied) and *count. */
static size_t members_copy(const char *name, size_t len, char *buf, size_t cap, size_t *count)
{
    size_t bytes = 0;
    *count = 0;
    pthread_mutex_lock(&topics_lock);
    topic *t = *topic_slot(name, len);
    for (member *m = t ? t->members : NULL; m; m = m->next)
        bytes += 2 * sizeof(size_t) + m->id_len + m->info_len;
    if (bytes <= cap) {
        char *p = buf;
        for (member *m = t ? t->members : NULL; m; m = m->next, (*count)++) {
            memcpy(p, &m->id_len, sizeof(size_t));
            memcpy(p + sizeof(size_t), &m->info_len, sizeof(size_t));
            p = mempcpy(p + 2 * sizeof(size_t), m->id, m->id_len);
            p = mempcpy(p, m->info, m->info_len);
        }
    }
    pthread_mutex_unlock(&topics_lock);
    return bytes;
}

/* sluice.presence(topic) -> a list of {id = ..., info = ...}, on every
 * worker, in no particular order ({} when none). */
static int l_presence(lua_State *L)
{
    size_t len;
    const char *name = luaL_checklstring(L, 1, &len);
    if (!hub_topic_valid(name, len)) return luaL_argerror(L, 1, "invalid topic name");
    /* The copy goes into a userdata that Lua allocates outside the lock
     * (an allocation that fails raises with nothing held), sized by a
     * first look; the list may grow meanwhile: a few tries. */
    size_t count = 0, need = members_copy(name, len, NULL, 0, &count), cap = 0;
    char *buf = NULL;
    for (int tries = 0; need > cap; tries++) {
        if (tries == 8) return luaL_error(L, "sluice.presence: the member list keeps changing");
        cap = need + need / 4 + 256;
        lua_settop(L, 1);
        buf = lua_newuserdatauv(L, cap, 0);
        need = members_copy(name, len, buf, cap, &count);
    }
    int copy = lua_gettop(L);
    lua_createtable(L, (int)count, 0);
    int list = lua_gettop(L);
    luaL_requiref(L, "cjson", luaopen_cjson, 0);
    lua_getfield(L, -1, "decode");
    int decode = lua_gettop(L);
    const char *p = buf;
    for (size_t i = 0; i < count; i++) {
        size_t il, nl;
        memcpy(&il, p, sizeof(size_t));
        memcpy(&nl, p + sizeof(size_t), sizeof(size_t));
        p += 2 * sizeof(size_t);
        lua_createtable(L, 0, 2);
        lua_pushlstring(L, p, il);
        lua_setfield(L, -2, "id");
        lua_pushvalue(L, decode);
        lua_pushlstring(L, p + il, nl);
        lua_call(L, 1, 1); /* stored by lxs_join from cjson.encode: decodes */
        lua_setfield(L, -2, "info");
        lua_rawseti(L, list, (lua_Integer)i + 1);
        p += il + nl;
    }
    lua_settop(L, list);
    (void)copy;
    return 1;
}

/* sluice.subscribers(name) -> the subscriptions to that name (a topic, or
 * a pattern such as "rooms.*" as it was given) on every worker. */
static int l_subscribers(lua_State *L)
{
    size_t len;
    const char *name = luaL_checklstring(L, 1, &len);
    if (!hub_pattern_valid(name, len)) return luaL_argerror(L, 1, "invalid topic name or pattern");
    pthread_mutex_lock(&topics_lock);
    topic *t = *topic_slot(name, len);
    lua_Integer n = t ? t->subs : 0;
    pthread_mutex_unlock(&topics_lock);
    lua_pushinteger(L, n);
    return 1;
}

/* ---- token buckets ------------------------------------------------------- */

typedef struct bucket {
    struct bucket *hnext;       /* hash chain */
    struct bucket *prev, *next; /* use order: most recent first */
    double tokens, last;
    size_t len;
    char key[];
} bucket;

#define BUCKET_CHAINS 16384
static pthread_mutex_t buckets_lock = PTHREAD_MUTEX_INITIALIZER;
static bucket *bchains[BUCKET_CHAINS];
static bucket *recent, *oldest;
static size_t nbuckets;
static unsigned long long limit_allowed, limit_refused, limit_evicted; /* atomics */

static bucket **bucket_slot(const char *key, size_t len)
{
    bucket **p = &bchains[hash(key, len) % BUCKET_CHAINS];
    while (*p && !((*p)->len == len && memcmp((*p)->key, key, len) == 0))
        p = &(*p)->hnext;
    return p;
}

static void use_unlink(bucket *b)
{
    if (b->prev)
        b->prev->next = b->next;
    else
        recent = b->next;
    if (b->next)
        b->next->prev = b->prev;
    else
        oldest = b->prev;
}

static void use_front(bucket *b)
{
    b->prev = NULL;
    b->next = recent;
    if (recent) recent->prev = b;
    recent = b;
    if (!oldest) oldest = b;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One token from key's bucket (rate tokens per second, at most burst):
 * 0 when taken, else the seconds until one is there; -1 when memory is
 * short. */
static double bucket_take(const char *key, size_t len, double rate, double burst)
{
    double now = now_s(), wait = 0;
    pthread_mutex_lock(&buckets_lock);
    bucket **p = bucket_slot(key, len);
    bucket *b = *p;
    if (b) {
        use_unlink(b);
        b->tokens = fmin(burst, b->tokens + (now - b->last) * rate);
    } else {
        if (nbuckets >= LXS_MAX_BUCKETS) {
            /* The least recently used goes: a bucket idle long enough to
             * have refilled loses nothing; one that had not starts full
             * again (counted). */
            bucket *o = oldest;
            use_unlink(o);
            *bucket_slot(o->key, o->len) = o->hnext;
            free(o);
            nbuckets--;
            BUMP(limit_evicted);
            p = bucket_slot(key, len);
        }
        b = malloc(sizeof(bucket) + len);
        if (!b) {
            pthread_mutex_unlock(&buckets_lock);
            return -1;
        }
        memcpy(b->key, key, len);
        b->len = len;
        b->tokens = burst;
        b->hnext = NULL;
        *p = b;
        nbuckets++;
    }
    b->last = now;
    if (b->tokens >= 1)
        b->tokens -= 1;
    else
        wait = (1 - b->tokens) / rate;
    use_front(b);
    pthread_mutex_unlock(&buckets_lock);
    return wait;
}

/* sluice.limit(key, rate, burst) -> true, or false and the seconds after
 * which a call would pass (a token bucket shared by the workers: rate
 * tokens a second, at most burst, one per call that passes). */
static int l_limit(lua_State *L)
{
    size_t len;
    const char *key = luaL_checklstring(L, 1, &len);
    lua_Number rate = luaL_checknumber(L, 2), burst = luaL_checknumber(L, 3);
    if (len < 1 || len > LXS_KEY_MAX) return luaL_argerror(L, 1, "1 to 256 bytes");
    if (!(rate > 0) || !isfinite(rate)) return luaL_argerror(L, 2, "a positive number");
    if (!(burst >= 1) || !isfinite(burst)) return luaL_argerror(L, 3, "a number, at least 1");
    double wait = bucket_take(key, len, rate, burst);
    if (wait < 0) {
        luaL_pushfail(L);
        lua_pushliteral(L, "out of memory");
        return 2;
    }
    if (wait == 0) {
        BUMP(limit_allowed);
        lua_pushboolean(L, 1);
        return 1;
    }
    BUMP(limit_refused);
    lua_pushboolean(L, 0);
    lua_pushnumber(L, wait);
    return 2;
}

void lxs_open(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"presence", l_presence},
        {"subscribers", l_subscribers},
        {"limit", l_limit},
        {NULL, NULL},
    };
    luaL_setfuncs(L, fns, 0);
}

size_t lxs_metrics(metrics_extra *out)
{
    size_t n = 0;
    pthread_mutex_lock(&topics_lock);
    unsigned long long members = members_now;
    pthread_mutex_unlock(&topics_lock);
    pthread_mutex_lock(&buckets_lock);
    unsigned long long buckets = nbuckets;
    pthread_mutex_unlock(&buckets_lock);
    out[n++] = (metrics_extra){"sluice_presence_members", "gauge",
                               "Presence members (id and topic) on every worker.", NULL, members};
    out[n++] = (metrics_extra){"sluice_presence_refused_total", "counter",
                               "Presence joins refused: the topic had its maximum of members.",
                               NULL, READ(members_refused)};
    out[n++] = (metrics_extra){"sluice_presence_events_dropped_total", "counter",
                               "sluice.join / sluice.leave events storage refused (not published).",
                               NULL, READ(events_dropped)};
    out[n++] =
        (metrics_extra){"sluice_rate_limit_total", "counter", "sluice.limit calls, by result.",
                        "result=\"allowed\"", READ(limit_allowed)};
    out[n++] = (metrics_extra){"sluice_rate_limit_total", "counter", "", "result=\"limited\"",
                               READ(limit_refused)};
    out[n++] =
        (metrics_extra){"sluice_rate_limit_buckets", "gauge",
                        "Token buckets of sluice.limit held (at most 65536).", NULL, buckets};
    out[n++] = (metrics_extra){"sluice_rate_limit_evictions_total", "counter",
                               "Token buckets evicted to make room (least recently used).", NULL,
                               READ(limit_evicted)};
    return n;
}
