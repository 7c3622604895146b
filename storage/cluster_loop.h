/* cluster_loop.h: the NATS C client's I/O on a libev loop of sluice's own
 * thread (natsOptions_SetEventLoop; Debian's libnats ships adapters for
 * libuv and libevent only).
 *
 * Without it the client reads on a thread of its own and hands every
 * message to one more thread per subscription (and PubAcks to another):
 * two or three thread wake-ups per message on every node.  On this loop the
 * socket is read, and the messages of synchronous subscriptions taken, on
 * one thread (cluster_loop_fn after each read), and publishes are written
 * from it without a thread of their own.
 *
 * Nothing on the loop may wait for an answer from NATS (a request, a
 * flush, a consumer made or deleted): the answer is read by this very
 * thread.  Such calls run on other threads, as before. */
#ifndef SLUICE_CLUSTER_LOOP_H
#define SLUICE_CLUSTER_LOOP_H

#include <nats/nats.h>
#include <stdbool.h>

struct cluster_loop;

/* Runs on the loop's thread. */
typedef void (*cluster_loop_fn)(void *ud);

/* Starts the loop's thread.  after_read runs after each read of the
 * socket (the messages it brought are queued in their subscriptions);
 * on_kick after cluster_loop_kick, and after each write of the socket (a
 * kick's work may wait for room in the client's output).  0, or -1 (no
 * memory, no thread). */
int cluster_loop_start(struct cluster_loop **out, cluster_loop_fn after_read,
                       cluster_loop_fn on_kick, void *ud);

/* Makes connections made with opts do their I/O on this loop. */
natsStatus cluster_loop_use(struct cluster_loop *l, natsOptions *opts);

/* Any thread: on_kick runs on the loop soon (once for many kicks). */
void cluster_loop_kick(struct cluster_loop *l);

/* Ends the loop's thread and frees it: after the connection is closed
 * (natsConnection_Close detaches it), before it is destroyed. */
void cluster_loop_stop(struct cluster_loop *l);

#endif
