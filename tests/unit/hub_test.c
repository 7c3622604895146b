/* hub_test: fan-out against every change a delivery may make (issue 26
 * #1).  A real store (relaxed, in a scratch directory) and bus; one hub
 * whose subscribers, on each delivery, pseudo-randomly unsubscribe
 * themselves, unsubscribe another subscriber, subscribe new ones (to the
 * topic or to a wildcard), or do nothing.  Checked after every publish:
 *
 *   - no unsubscribed owner is ever called (a freed entry would be, or
 *     ASan would see the read);
 *   - each subscription sees strictly increasing seqs;
 *   - an owner subscribed before the fan-out and still subscribed after it
 *     got the message exactly once (a change made by another's delivery
 *     never makes the loop skip or repeat an entry);
 *   - the hub's subscriber count equals the live owners.
 *
 * On the code before the deferred unsubscribe, unsubscribing the next
 * entry freed it under the loop (use-after-free under ASan). */
#include "core/hub.h"
#include "check.h"
#include "scratch_dir.h"
#include "storage/store.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OWNERS 96
#define PUBLISHES 3000

typedef struct owner {
    hub_sub *sub;
    bool live;
    bool before; /* live when the current fan-out began */
    uint64_t last_seq;
    unsigned got_now; /* deliveries of the current message */
} owner;

static owner owners[OWNERS];
static hub *H;
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static unsigned long deliveries, unsubs, subs;

static uint32_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)rng;
}

static void deliver(void *ud, hub_msg *m);

static void subscribe(owner *o)
{
    bool wildcard = next_rand() % 4 == 0;
    o->sub = wildcard ? hub_subscribe(H, "t*", 2, o, deliver, false)
                      : hub_subscribe(H, "t", 1, o, deliver, false);
    CHECK(o->sub != NULL);
    /* A new subscription is a new subscriber: its own order, its own
     * count (one made during a fan-out may or may not get the message in
     * flight: a wildcard's list is walked after the topic's). */
    o->live = true;
    o->before = false;
    o->got_now = 0;
    o->last_seq = 0;
    subs++;
}

static void unsubscribe(owner *o)
{
    hub_unsubscribe(H, o->sub);
    o->sub = NULL;
    o->live = false;
    unsubs++;
}

static owner *random_owner(void)
{
    return &owners[next_rand() % OWNERS];
}

static void deliver(void *ud, hub_msg *m)
{
    owner *o = ud;
    CHECK(o->live); /* never called after its unsubscribe */
    CHECK(m->seq > o->last_seq);
    o->last_seq = m->seq;
    o->got_now++;
    deliveries++;
    switch (next_rand() % 8) {
    case 0:
        unsubscribe(o);
        break;
    case 1:
    case 2: { /* another one: often the next entry of the list */
        owner *other = random_owner();
        if (other->live && other != o) unsubscribe(other);
        break;
    }
    case 3: {
        owner *fresh = random_owner();
        if (!fresh->live) subscribe(fresh);
        break;
    }
    default:
        break;
    }
}

static void wake(void *ud) {}

static void check_counts(void)
{
    unsigned live = 0;
    for (int i = 0; i < OWNERS; i++)
        live += owners[i].live;
    hub_stats st;
    memset(&st, 0, sizeof st);
    hub_get_stats(H, &st);
    CHECK_EQ_INT((int)st.subscribers, (int)live);
}

int main(void)
{
    char *dir = scratch_dir_new("/tmp", "hub_test");
    struct store_opts so = {.relaxed = 1};
    struct store *st = NULL;
    char err[256] = "";
    int rc = store_open(&st, dir, &so, err, sizeof err);
    if (rc) fprintf(stderr, "store_open: %d %s\n", rc, err);
    CHECK_EQ_INT(rc, 0);
    hub_bus *bus = hub_bus_open(st, 1, 0, err, sizeof err);
    CHECK(bus != NULL);
    H = hub_new();
    CHECK(H != NULL);
    hub_opts ho = {.wake = wake};
    CHECK_EQ_INT(hub_attach(H, bus, &ho), 0);

    for (int i = 0; i < OWNERS; i++)
        if (i % 3) subscribe(&owners[i]);
    for (int n = 0; n < PUBLISHES; n++) {
        for (int i = 0; i < OWNERS; i++) {
            owners[i].before = owners[i].live;
            owners[i].got_now = 0;
        }
        char data[32];
        int len = snprintf(data, sizeof data, "m%d", n);
        CHECK_EQ_INT(hub_publish(H, "t", 1, NULL, 0, data, (size_t)len, NULL, NULL, NULL), 0);
        hub_commit_pending(H); /* relaxed: commits and fans out here */
        for (int i = 0; i < OWNERS; i++) {
            owner *o = &owners[i];
            if (o->before && o->live) CHECK_EQ_INT((int)o->got_now, 1);
            CHECK(o->got_now <= 1);
        }
        check_counts();
        /* Keep the population up: at least a third subscribed. */
        for (int i = 0; i < OWNERS; i++)
            if (!owners[i].live && next_rand() % 3 == 0) subscribe(&owners[i]);
    }
    printf("hub_test: %d publishes, %lu deliveries, %lu unsubscribes and %lu subscribes during "
           "fan-outs\n",
           PUBLISHES, deliveries, unsubs, subs);
    for (int i = 0; i < OWNERS; i++)
        if (owners[i].live) unsubscribe(&owners[i]);
    check_counts();
    hub_free(H);
    hub_bus_close(bus);
    store_close(st);
    scratch_dir_remove(dir);
    printf("%d checks passed, %d failed\n", check_passed, check_failed);
    return check_failed ? 1 : 0;
}
