/* shared_test.c: lua/shared.c, the tables the workers share: join and
 * leave events (a member joins with its first subscription, leaves with its
 * last), the member cap, patterns that count but make no member, counts
 * and members after threads join and leave at once (ASan/UBSan watch the
 * locking), and sluice.limit's buckets: refusal with retry_after, refill,
 * and the table's bound (the least recently used evicted); the notes of
 * other nodes (cluster mode): counts and members added, a member on two
 * nodes listed once, tables in parts, and malformed notes dropped. */
#include "lua/shared.h"

#include "check.h"

#include <lauxlib.h>
#include <lualib.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct seen {
    int joins, leaves;
    char last[256];
} seen;

static void on_event(void *ud, const char *topic, size_t tlen, bool join, const char *json,
                     size_t len)
{
    seen *s = ud;
    (void)topic;
    (void)tlen;
    if (join)
        s->joins++;
    else
        s->leaves++;
    snprintf(s->last, sizeof(s->last), "%.*s", (int)len, json);
}

static lxs_sub *join1(const char *topic, const char *id, const char *info, seen *s)
{
    const char *names[1] = {topic};
    size_t lens[1] = {strlen(topic)};
    return lxs_join(names, lens, 1, id, id ? strlen(id) : 0, info, info ? strlen(info) : 0,
                    on_event, s);
}

/* Runs `code` with the module table as `s`; returns its integer result. */
static long long run(lua_State *L, const char *code)
{
    lua_settop(L, 0);
    if (luaL_loadstring(L, code) != LUA_OK ||
        (lua_getglobal(L, "s"), lua_pcall(L, 1, 1, 0)) != LUA_OK) {
        fprintf(stderr, "lua: %s\n", lua_tostring(L, -1));
        return -999;
    }
    return (long long)lua_tointeger(L, -1);
}

static unsigned long long metric(const char *name, const char *label)
{
    metrics_extra rows[LXS_METRICS];
    size_t n = lxs_metrics(rows);
    for (size_t i = 0; i < n; i++)
        if (strcmp(rows[i].name, name) == 0 &&
            (!label || (rows[i].label && strcmp(rows[i].label, label) == 0)))
            return rows[i].value;
    return ~0ULL;
}

#define THREADS 4
#define ROUNDS 5000

static void *churn(void *arg)
{
    char id[16];
    snprintf(id, sizeof(id), "w%d", (int)(intptr_t)arg);
    const char *names[2] = {"busy", "busy.*"};
    size_t lens[2] = {4, 6};
    for (int i = 0; i < ROUNDS; i++) {
        lxs_sub *a = lxs_join(names, lens, 2, id, strlen(id), "{}", 2, NULL, NULL);
        lxs_sub *b = lxs_join(names, lens, 1, "shared", 6, "{}", 2, NULL, NULL);
        lxs_leave(a, NULL, NULL);
        lxs_leave(b, NULL, NULL);
    }
    return NULL;
}

/* ---- notes of other nodes (cluster mode), built here from the format in
 * lua/shared.c: a test of the format as much as of the code ---- */

typedef struct note {
    char b[4096];
    size_t n;
} note;

static void be(note *w, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--)
        w->b[w->n++] = (char)(v >> (8 * i));
}

static void raw(note *w, const char *s, size_t len)
{
    memcpy(w->b + w->n, s, len);
    w->n += len;
}

static void note_head(note *w, uint64_t node, uint64_t gen, unsigned part, unsigned parts)
{
    w->n = 0;
    raw(w, "SLN1", 4);
    be(w, node, 8);
    be(w, gen, 8);
    be(w, part, 2);
    be(w, parts, 2);
}

/* A topic with `subs` subscriptions and members "id" with info {"n":k}. */
static void note_topic(note *w, const char *name, uint32_t subs, const char *const *ids, int n)
{
    be(w, strlen(name), 2);
    raw(w, name, strlen(name));
    be(w, subs, 4);
    be(w, (unsigned)n, 2);
    for (int i = 0; i < n; i++) {
        char info[32];
        int il = snprintf(info, sizeof(info), "{\"n\":%d}", i);
        be(w, strlen(ids[i]), 1);
        raw(w, ids[i], strlen(ids[i]));
        be(w, (unsigned)il, 2);
        raw(w, info, (size_t)il);
    }
}

static void test_notes(lua_State *L)
{
    unsigned long long dropped0 = metric("sluice_presence_notes_dropped_total", NULL);
    /* Node 7's table: "room" with 3 subscriptions, members bob and alice. */
    const char *ids[2] = {"bob", "alice"};
    note w;
    note_head(&w, 7, 1, 0, 1);
    note_topic(&w, "room", 3, ids, 2);
    note_topic(&w, "rooms.*", 2, NULL, 0);
    lxs_note_receive(NULL, w.b, w.n);
    seen ev = {0};
    lxs_sub *mine = join1("room", "alice", "{\"n\":9}", &ev);
    CHECK_EQ_INT(run(L, "local p = ... return p.subscribers('room')"), 4);
    CHECK_EQ_INT(run(L, "local p = ... return p.subscribers('rooms.*')"), 2);
    /* alice is one member (this node's info first), bob the other. */
    CHECK_EQ_INT(run(L, "local p = ... local n, a = 0, -1 for _, m in ipairs(p.presence('room')) "
                        "do n = n + 1 if m.id == 'alice' then a = m.info.n end end "
                        "return n * 100 + a"),
                 209);

    /* A table in two parts replaces the view only when both came. */
    note_head(&w, 7, 2, 0, 2);
    note_topic(&w, "room", 1, ids, 1);
    lxs_note_receive(NULL, w.b, w.n);
    CHECK_EQ_INT(run(L, "local p = ... return p.subscribers('room')"), 4);
    note_head(&w, 7, 2, 1, 2);
    note_topic(&w, "other", 5, NULL, 0);
    lxs_note_receive(NULL, w.b, w.n);
    CHECK_EQ_INT(run(L, "local p = ... return p.subscribers('room') * 10 + p.subscribers('other')"),
                 25);
    CHECK_EQ_INT(metric("sluice_presence_notes_dropped_total", NULL), dropped0);

    /* A part out of order spoils its table: the old view stays. */
    note_head(&w, 7, 3, 1, 2);
    note_topic(&w, "room", 9, NULL, 0);
    lxs_note_receive(NULL, w.b, w.n);
    CHECK_EQ_INT(run(L, "local p = ... return p.subscribers('room')"), 2);
    CHECK(metric("sluice_presence_notes_dropped_total", NULL) > dropped0);

    /* Every truncation of a good note, and every byte of it changed to
     * each of a few values: dropped or taken, never a crash (ASan), and
     * the counts stay sane. */
    note good;
    note_head(&good, 8, 1, 0, 1);
    note_topic(&good, "t8", 4, ids, 2);
    for (size_t cut = 0; cut < good.n; cut++)
        lxs_note_receive(NULL, good.b, cut);
    static const unsigned char vals[] = {0, 1, 0x7f, 0x80, 0xff};
    for (size_t i = 0; i < good.n; i++) {
        for (size_t v = 0; v < sizeof(vals); v++) {
            note bad = good;
            bad.b[i] = (char)vals[v];
            lxs_note_receive(NULL, bad.b, bad.n);
            CHECK(run(L, "local p = ... return #p.presence('t8') + p.subscribers('t8')") >= 0);
        }
    }
    /* (A changed node id is another node: its count adds up.) */
    lxs_note_receive(NULL, good.b, good.n);
    CHECK(run(L, "local p = ... return p.subscribers('t8')") >= 4);
    CHECK_EQ_INT(run(L, "local p = ... return #p.presence('t8')"), 2);
    lxs_leave(mine, NULL, NULL);
}

int main(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_newtable(L);
    lxs_open(L);
    lua_setglobal(L, "s");

    /* Members: one join per id, one leave with its last subscription. */
    seen ev = {0};
    lxs_sub *a1 = join1("t", "alice", "{\"n\":1}", &ev);
    lxs_sub *a2 = join1("t", "alice", "{\"n\":2}", &ev);
    lxs_sub *b1 = join1("t", "bob", "{}", &ev);
    lxs_sub *c1 = join1("t", NULL, NULL, &ev); /* counts, no member */
    CHECK_EQ_INT(ev.joins, 2);
    CHECK_EQ_INT(run(L, "local p = ... return #p.presence('t')"), 2);
    CHECK_EQ_INT(run(L, "local p = ... return p.subscribers('t')"), 4);
    CHECK_EQ_INT(run(L, "local p = ... for _, m in ipairs(p.presence('t')) do "
                        "if m.id == 'alice' then return m.info.n end end return -1"),
                 1); /* the first connection's info */
    CHECK_EQ_INT(metric("sluice_presence_members", NULL), 2);
    lxs_leave(a1, on_event, &ev);
    CHECK_EQ_INT(ev.leaves, 0);
    lxs_leave(a2, on_event, &ev);
    CHECK_EQ_INT(ev.leaves, 1);
    CHECK_STR(ev.last, "{\"topic\":\"t\",\"id\":\"alice\",\"info\":{\"n\":1}}");
    lxs_leave(b1, on_event, &ev);
    lxs_leave(c1, on_event, &ev);
    CHECK_EQ_INT(ev.leaves, 2);
    CHECK_EQ_INT(run(L, "local p = ... return #p.presence('t') + p.subscribers('t')"), 0);
    CHECK_EQ_INT(metric("sluice_presence_members", NULL), 0);

    /* A pattern counts under its name and makes no member. */
    seen pev = {0};
    lxs_sub *p = join1("rooms.*", "carol", "{}", &pev);
    CHECK_EQ_INT(pev.joins, 0);
    CHECK_EQ_INT(run(L, "local p = ... return p.subscribers('rooms.*')"), 1);
    CHECK_EQ_INT(run(L, "local p = ... return p.subscribers('rooms.x')"), 0);
    lxs_leave(p, on_event, &pev);
    CHECK_EQ_INT(pev.leaves, 0);

    /* The cap: LXS_MAX_MEMBERS per topic; one more is refused and counted,
     * its subscription still counts. */
    static lxs_sub *many[LXS_MAX_MEMBERS + 1];
    seen cev = {0};
    for (int i = 0; i <= LXS_MAX_MEMBERS; i++) {
        char id[16];
        snprintf(id, sizeof(id), "m%d", i);
        many[i] = join1("cap", id, "{}", &cev);
    }
    CHECK_EQ_INT(cev.joins, LXS_MAX_MEMBERS);
    CHECK_EQ_INT(metric("sluice_presence_refused_total", NULL), 1);
    CHECK_EQ_INT(run(L, "local p = ... return #p.presence('cap')"), LXS_MAX_MEMBERS);
    CHECK_EQ_INT(run(L, "local p = ... return p.subscribers('cap')"), LXS_MAX_MEMBERS + 1);
    for (int i = 0; i <= LXS_MAX_MEMBERS; i++)
        lxs_leave(many[i], on_event, &cev);
    CHECK_EQ_INT(cev.leaves, LXS_MAX_MEMBERS);
    CHECK_EQ_INT(run(L, "local p = ... return p.subscribers('cap')"), 0);

    /* Threads joining and leaving the same topics at once. */
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&th[i], NULL, churn, (void *)(intptr_t)i);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    CHECK_EQ_INT(run(L, "local p = ... return p.subscribers('busy') + p.subscribers('busy.*')"), 0);
    CHECK_EQ_INT(metric("sluice_presence_members", NULL), 0);

    /* Bad arguments raise (misuse). */
    CHECK_EQ_INT(run(L, "local p = ... return pcall(p.presence, 'a b') and 1 or 0"), 0);
    CHECK_EQ_INT(run(L, "local p = ... return pcall(p.limit, '', 1, 1) and 1 or 0"), 0);
    CHECK_EQ_INT(run(L, "local p = ... return pcall(p.limit, 'k', 0, 1) and 1 or 0"), 0);
    CHECK_EQ_INT(run(L, "local p = ... return pcall(p.limit, 'k', 1, 0.5) and 1 or 0"), 0);

    /* A bucket: burst 3, then refused with the wait for one token. */
    CHECK_EQ_INT(run(L, "local p = ... local n = 0 for i = 1, 5 do "
                        "if p.limit('k', 0.5, 3) then n = n + 1 end end return n"),
                 3);
    CHECK_EQ_INT(run(L, "local p = ... local ok, w = p.limit('k', 0.5, 3) "
                        "return (not ok and w > 1.9 and w <= 2.0) and 1 or 0"),
                 1);
    /* A fast rate refills within a few milliseconds. */
    CHECK_EQ_INT(run(L, "local p = ... p.limit('fast', 1000, 1) "
                        "local ok = p.limit('fast', 1000, 1) return ok and 0 or 1"),
                 1);
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    CHECK_EQ_INT(run(L, "local p = ... return p.limit('fast', 1000, 1) and 1 or 0"), 1);

    /* The bound: past LXS_MAX_BUCKETS keys, the least recently used goes. */
    unsigned long long before = metric("sluice_rate_limit_evictions_total", NULL);
    CHECK_EQ_INT(run(L, "local p = ... for i = 1, 70000 do p.limit('b' .. i, 1, 1) end return 0"),
                 0);
    CHECK_EQ_INT(metric("sluice_rate_limit_buckets", NULL), LXS_MAX_BUCKETS);
    CHECK(metric("sluice_rate_limit_evictions_total", NULL) - before >= 70000 - LXS_MAX_BUCKETS);
    /* 'b70000' is recent (kept: refused), 'b1' was evicted (starts full). */
    CHECK_EQ_INT(run(L, "local p = ... return p.limit('b70000', 1, 1) and 1 or 0"), 0);
    CHECK_EQ_INT(run(L, "local p = ... return p.limit('b1', 1, 1) and 1 or 0"), 1);
    CHECK(metric("sluice_rate_limit_total", "result=\"limited\"") > 0);

    test_notes(L);

    lua_close(L);
    return CHECK_DONE();
}
