/* server.h: listeners, the connection set, limits and graceful shutdown of
 * one event loop (one worker: each worker has its own server, and its own
 * socket on every listening address, in a SO_REUSEPORT group, so the
 * kernel spreads new connections over the workers).
 *
 * The server owns the libev loop's accept watchers and every connection it
 * accepts.  It knows nothing of Lua: a request that is complete is handed
 * to `on_request`, set by whoever embeds the server (the Lua app runtime).
 * Output is coalesced: connections that queued bytes during this loop
 * iteration are written once, from an ev_prepare watcher, just before the
 * loop waits again. */
#ifndef SLUICE_SERVER_H
#define SLUICE_SERVER_H

#include "core/http.h"
#include "core/io.h"

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

typedef struct conn conn;

typedef struct server_limits {
    size_t max_header;            /* request line + headers: 431 over it */
    size_t max_uri;               /* request-target: 414 over it */
    size_t max_body;              /* request body: 413 over it */
    size_t max_output;            /* queued output per connection before it is cut off */
    unsigned max_connections;     /* accepted connections, all workers; 503 over it */
    double header_timeout;        /* seconds for a request head; 408 after it */
    double min_body_rate;         /* body bytes a second past header_timeout; 408 under it */
    double idle_timeout;          /* seconds a keep-alive connection may stay quiet */
    double tls_handshake_timeout; /* seconds for the TLS handshake */
    double shutdown_timeout;      /* seconds to finish in-flight work on SIGTERM */
} server_limits;

/* The defaults of SPEC.md. */
void server_limits_default(server_limits *l);

#define SERVER_MAX_LISTENERS 16

typedef struct listener {
    ev_io watcher;
    int fd;
    bool tls;
    struct server *srv;
    char name[64]; /* "127.0.0.1:8080", "[::1]:8443" */
} listener;

typedef void (*server_request_fn)(conn *c, http_request *req, void *ud);

/* Deferred release: the one rule for connections and sessions (see
 * docs/architecture.md, "Never free under a caller").  Closing an object
 * takes it off every list at once, but its memory is handed to the server
 * with server_defer() and released at the end of the loop pass, when no
 * callback that might still hold a pointer to it is on the stack.  The
 * node is embedded in the object; `fn` frees the object.  (Connections
 * use their own list, closed_conns, linked through a field they no longer
 * need: 16 bytes less per connection.) */
typedef struct server_deferred {
    struct server_deferred *next;
    void (*fn)(struct server_deferred *d);
} server_deferred;

typedef struct server {
    struct ev_loop *loop;
    server_limits limits;
    listener listeners[SERVER_MAX_LISTENERS];
    int nlisteners;
    SSL_CTX *tls_ctx; /* for new TLS connections; reload swaps it */
    server_request_fn on_request;
    void *on_request_ud;

    conn *conns; /* every open connection (for shutdown) */
    unsigned nconns;
    conn *pending_head; /* connections with output queued this iteration, */
    conn *pending_tail; /* in the order they were queued */
    ev_prepare flush_watcher;
    ev_idle flush_more; /* active while output is left for the next pass */
    ev_timer accept_pause; /* after EMFILE: retry accepting later */
    server_deferred *graveyard; /* closed objects to free at the pass's end */
    conn *closed_conns;         /* closed connections, the same (conn.c) */
    ev_timer shutdown_timer;
    bool stopping;
    bool accept_failing;   /* an accept failed for want of descriptors or memory */
    ev_tstamp accept_failed_at, accept_failed_last; /* the episode's first and last */

    char date[30]; /* cached IMF-fixdate, refreshed once a second */
    ev_tstamp date_at;
} server;

/* Initialises `srv` on `loop` with the given limits. */
void server_init(server *srv, struct ev_loop *loop, const server_limits *limits);

/* Opens a listener on "ADDR:PORT" ("[::1]:0" for IPv6; port 0 picks one)
 * as a SO_REUSEPORT socket.  The first worker passes join = false: the
 * address must be free (another process listening there is an error, not
 * a silent share) and "listening on ADDR:PORT" is logged with the chosen
 * port.  The other workers pass join = true and the first one's
 * listener name (the real port), and add their own socket to the group.
 * TLS listeners need srv->tls_ctx set before connections arrive.  Returns
 * 0, or with a message in err SL_EINVAL (a bad address), SL_ELIMIT (too
 * many listeners) or SL_ESYS (the socket calls failed: errno's text). */
int server_listen(server *srv, const char *addr, bool tls, bool join, char *err, size_t errlen);

/* True when server_listen would parse addr (ADDR:PORT, [V6ADDR]:PORT, a
 * port 0 to 65535; the host an IP address, "*" or "localhost"): what
 * sluice.config checks at load, so that --check reports a bad one. */
bool server_addr_valid(const char *addr);

/* Counts a connection opened (+1) or closed (-1) in the process, and
 * returns how many are open over every worker (the connection limit and
 * /metrics read it).  Any thread. */
unsigned server_count_connection(int delta);

/* Requests the HTTP layer refused (answered 400, 408, 413, 414, 417, 431
 * or 505 before the app saw them), counted by status over every worker for
 * /metrics.  Any thread. */
#define SERVER_REFUSAL_STATUSES {400, 408, 413, 414, 417, 431, 505}
#define SERVER_REFUSAL_KINDS 7
void server_count_refusal(int status);
/* How many were refused with `status` (0 for a status not counted). */
unsigned long long server_refusals(int status);

/* Starts accepting on every listener. */
void server_start(server *srv);

/* Replaces the TLS context used for new connections (takes ownership;
 * the old context is released once its sessions end). */
void server_set_tls_ctx(server *srv, SSL_CTX *ctx);

/* Begins a graceful stop: closes the listeners, closes idle connections,
 * lets requests in flight finish and streams end, and breaks the loop when
 * the last connection is gone or shutdown_timeout passes. */
void server_shutdown(server *srv);

/* Hands a closed object to the server: `fn(d)` runs at the end of this
 * loop pass (after the flush), or in server_destroy.  Loop thread only. */
void server_defer(server *srv, server_deferred *d, void (*fn)(server_deferred *d));

/* Runs every deferred release (the flush watcher calls it each pass). */
void server_reap(server *srv);

/* The cached Date header value for responses. */
const char *server_date(server *srv);

/* Frees what server_init and server_listen acquired (after the loop ends). */
void server_destroy(server *srv);

#endif
