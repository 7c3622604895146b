/* http.h: sluice.http, the app's HTTP client (prefix lx_http_): outgoing
 * requests from script code on libcurl's multi-socket interface, driven by
 * the worker's libev loop, so a request never blocks the loop.
 *
 * Each worker thread has one curl multi handle (made at its first request):
 * its connections are reused across requests, its sockets are libev
 * watchers, its timeout a libev timer.  Two kinds of calls share it:
 *
 * - sluice.http.request{...}: the calling task (a handler's or a timer's
 *   coroutine) yields and is resumed with the answer or with nil and a
 *   reason.  At most `http.max_in_flight` per worker (sluice.config); over
 *   it the call answers nil, "busy" at once.  The task holds its connection
 *   and its app generation (conn_hold, the app's refs), so a client that
 *   goes away or a reload meanwhile frees nothing the answer needs: the
 *   handler is resumed and its response dropped.
 * - sluice.http.send{...}: a webhook, fire and forget, callable anywhere
 *   (filters, on_message, on_close too): queued (bounded), sent in the
 *   background, at most `http.max_webhooks` at a time; a full queue drops
 *   it, counted in /metrics.
 *
 * TLS peers are verified (the system's CAs, or opts.ca), redirects are not
 * followed unless asked, a response body is capped, and every call has a
 * total timeout.  Counters for /metrics are process-wide. */
#ifndef SLUICE_LUA_HTTP_H
#define SLUICE_LUA_HTTP_H

#include "core/metrics.h"

#include <lua.h>
#include <stddef.h>

typedef struct lx_app lx_app;

/* Ends this thread's client (a worker that stops, after its loop ended):
 * every request in flight is answered nil, "shutting down" (its task
 * resumes and finishes), queued webhooks are dropped (counted), and the
 * multi handle and its connections are closed.  Nothing when the thread
 * never made a request.  Loop thread only. */
void lx_http_shutdown(void);

/* Adds sluice.http to the module table on the stack top. */
void lx_open_http(lua_State *L);

/* sluice.config{http = {...}}: the value on the stack top, checked (raises
 * naming the key) and stored in the app loading. */
void lx_http_config(lua_State *L, lx_app *app);

/* The client's rows for /metrics, written to out (room for at least
 * LX_HTTP_METRICS rows); returns how many. */
#define LX_HTTP_METRICS 8
size_t lx_http_metrics(metrics_extra *out);

#endif
