/* shared.h: what the workers' Lua states share besides the bus (prefix
 * lxs_): the members of each topic (sluice.presence), the subscriptions per
 * topic (sluice.subscribers) and the token buckets of sluice.limit.
 *
 * Workers are threads of one process with a Lua state each, and a reload
 * makes new states: this state lives in the process, outside every Lua
 * state, so it is the same for every worker and survives a reload (a
 * subscription made before a reload still counts and leaves through the
 * handle it got).  Each table has its own mutex, taken when a subscription
 * starts or ends and when a script calls sluice.presence, .subscribers or
 * .limit: never in the fan-out.  Everything is bounded: members per topic
 * (LXS_MAX_MEMBERS: a member over it is refused, counted, its subscription
 * goes on without presence), an id's and an info's bytes (misuse: raises),
 * and the buckets (LXS_MAX_BUCKETS: the least recently used is evicted).
 * Topic entries exist only while a subscription holds them, so connections
 * bound them.
 *
 * In cluster mode (lxs_cluster_start) each node sends the others its
 * topics' counts and members, and sluice.presence and .subscribers add
 * what the other nodes last sent (cluster-wide, seconds old at worst; a
 * node that stops sending is forgotten after 6 s).  Join and leave events
 * stay per node: a member with connections on two nodes joins from each. */
#ifndef SLUICE_LUA_SHARED_H
#define SLUICE_LUA_SHARED_H

#include "core/metrics.h"

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LXS_MAX_MEMBERS 1000 /* members of one topic */
#define LXS_ID_MAX 128       /* bytes of a member id (valid UTF-8) */
#define LXS_INFO_MAX 1024    /* bytes of a member's info, as JSON */
#define LXS_MAX_BUCKETS 65536
#define LXS_KEY_MAX 256 /* bytes of a sluice.limit key */

/* One subscription's hold on the shared tables: it counts in each of its
 * topics (exact names and patterns alike, by the name it gave) and, with a
 * member id, is that member there (exact names only). */
typedef struct lxs_sub lxs_sub;

/* Called for a member's join (first connection) or leave (last): topic,
 * and the event's data {"topic":..,"id":..,"info":..} (JSON, len bytes). */
typedef void (*lxs_event_fn)(void *ud, const char *topic, size_t tlen, bool join, const char *json,
                             size_t len);

/* Counts a subscription to n names and, when id is not NULL, joins it to
 * each exact name as member id with info (JSON text, "null" when none).
 * fn runs (after the lock is released) for each topic the member newly
 * joined.  Returns the handle, or NULL when memory is short (nothing held
 * then). */
lxs_sub *lxs_join(const char *const *names, const size_t *lens, int n, const char *id, size_t idlen,
                  const char *info, size_t infolen, lxs_event_fn fn, void *ud);

/* Ends what lxs_join began (NULL is a no-op), frees s; fn as above, for
 * each topic the member left with its last connection. */
void lxs_leave(lxs_sub *s, lxs_event_fn fn, void *ud);

/* Counts a join or leave event that could not be published (storage
 * refused it: the queue full, shutting down). */
void lxs_count_event_dropped(void);

struct cluster;
/* Cluster mode: starts the exchange of tables with the other nodes (a
 * thread of its own, and the cluster's notes); 0 or an SL_ error.
 * lxs_cluster_stop ends it, before the cluster is closed. */
int lxs_cluster_start(struct cluster *c);
void lxs_cluster_stop(void);

/* A note of another node as it came (cluster_listen's callback; tests
 * feed it too): checked, assembled, and once a table is whole it is that
 * node's view.  Anything malformed is dropped and counted. */
void lxs_note_receive(void *ud, const void *data, size_t len);

/* Adds sluice.presence, sluice.subscribers and sluice.limit to the module
 * table on the stack top. */
void lxs_open(lua_State *L);

/* The rows for /metrics; returns how many were written (LXS_METRICS at
 * most). */
#define LXS_METRICS 10
size_t lxs_metrics(metrics_extra *out);

#endif
