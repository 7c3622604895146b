/* fuzz_conn.c: libFuzzer target for the whole connection layer: core/conn.c,
 * the HTTP glue, the upgrade hand-off, the three transports (wsconn.c,
 * sseconn.c, longpoll.c), the hub's fan-out and the Lua callbacks, driven
 * in-process through socket pairs, as a worker of the real binary runs
 * them (cmd/worker.c: one libev loop, one server, one hub on a bus with a
 * real LMDB store, the app runtime as server.on_request).
 *
 * Once per process: a relaxed store in a temporary directory ($TMPDIR),
 * the bus, the hub, the loop, and two app runtimes on them: the built-in
 * default app and tests/fuzz/fuzz_conn_app.lua (its path is compiled in as
 * SLUICE_FUZZ_APP; the environment variable of that name overrides it).
 *
 * An input is a script for up to four clients:
 *
 *   byte 0     settings: bit 0 the Lua app (else the default app), bit 1
 *              small limits (1 KiB of output per connection, 2 KiB
 *              headers, 2 KiB WebSocket messages: the cut-off paths), bit 2
 *              small socket buffers (a peer that stops reading fills them),
 *              bits 3-5 all set: TLS (the connections are a TLS listener's;
 *              each client is an OpenSSL client on its socket, with a
 *              self-signed certificate made at start; three bits, so that
 *              only an eighth of the inputs pay ten times the cost)
 *   then ops   one byte each: the low 3 bits are the op, the next 2 the
 *              client (0..3), bit 6 "no pass after this op" (so that what
 *              two ops do reaches the server in the same pass: a request
 *              and the client's close), bit 7 "raw" (below); a client's
 *              socket pair and connection are made when it is first used
 *     0 SEND   a 16-bit little-endian length N, then N bytes (fewer if the
 *              input ends) written to the client's socket (what the
 *              socket does not take waits and is written at later passes);
 *              through the client's TLS session, or raw onto the socket
 *              (records the server must refuse) when bit 7 is set
 *     1 RUN    the next byte & 7, plus 1, loop passes
 *     2 MUTE   toggles whether the client reads what the server sends
 *     3 SHUT   shutdown(SHUT_WR) on the client's socket (a half-close)
 *     4 CLOSE  closes the client's socket
 *     5 TIMER  fires the connection's armed timer now (a header, idle,
 *              linger, ping, heartbeat or poll timeout), deterministically
 *     6 STOP   graceful shutdown of the server (server_shutdown)
 *     7 RELOAD reloads the app (lx_reload), its subscribers stay open
 *
 * Each op (without bit 6) is followed by two loop passes (ev_run
 * EVRUN_NOWAIT, which runs the prepare watchers: the commit of relaxed
 * publishes, then the output flush) and a read of every client that reads.
 * At the end every client closes, the loop runs until the connections are
 * gone (bounded), what is left is closed as the shutdown timeout would, and
 * the loop runs until every publish is acknowledged: AddressSanitizer sees
 * every free.  Then nothing may be left: no connection, publish in flight,
 * subscription or stream (an abort names what was).
 *
 * What one input leaves for the next: the messages it stored (the Lua
 * app's retention keeps 8 per topic, for both apps, since they share the
 * hub), and the Lua states' globals.  A crash that needs a stored message
 * (a resume replays it through a filter) then passes when its input runs
 * alone: prime it with the publishes it needs (a long-poll whose filter
 * failed on a replayed message needed a message starting with `E` stored
 * in its topic first).
 *
 * tests/fuzz/make_conn_seeds.py writes the seed corpus
 * (tests/fuzz/seeds/fuzz_conn/); tests/fuzz/run.sh builds and runs this. */
#include "core/conn.h"
#include "core/hub.h"
#include "core/log.h"
#include "core/server.h"
#include "core/subscriber.h"
#include "lua/api.h"
#include "storage/store.h"

#include <errno.h>
#include <ev.h>
#include <ftw.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SLUICE_FUZZ_APP
#define SLUICE_FUZZ_APP "tests/fuzz/fuzz_conn_app.lua"
#endif

#define NCLIENTS 4
#define OUTBOX_MAX (256 * 1024)
#define END_PASSES 16 /* after every client closed: passes before forcing */

enum { OP_SEND, OP_RUN, OP_MUTE, OP_SHUT, OP_CLOSE, OP_TIMER, OP_STOP, OP_RELOAD };

typedef struct client {
    int fd;      /* our end; -1 when closed or never opened */
    int sfd;     /* the server's end, as its connection knows it */
    bool opened; /* used once in this input: never reopened */
    bool mute;   /* does not read what the server sends */
    char *outbox; /* bytes the socket did not take yet */
    size_t out_len;
    SSL *ssl; /* TLS inputs: the client's session on fd */
} client;

static bool echo; /* SLUICE_FUZZ_ECHO=1: what each client reads goes to stderr */

static struct {
    bool ready;
    char dir[256];
    struct ev_loop *loop;
    struct store *st;
    hub_bus *bus;
    hub *hub;
    server srv;
    lx_runtime rt[2]; /* [0] the built-in app, [1] fuzz_conn_app.lua */
    const char *app_path;
    ev_async committed;
    ev_prepare commit;
    SSL_CTX *client_tls;
    server_limits normal, small;
    sub_config sub_normal;
    client cl[NCLIENTS];
} F;

/* As cmd/worker.c does for its worker. */
static void wake_worker(void *ud)
{
    ev_async_send(F.loop, &F.committed);
}

static void on_committed(struct ev_loop *loop, ev_async *a, int revents)
{
    hub_poll(F.hub);
}

static void on_pass_end(struct ev_loop *loop, ev_prepare *p, int revents)
{
    hub_commit_pending(F.hub);
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void teardown(void)
{
    if (!F.ready) return;
    F.ready = false;
    while (F.srv.conns)
        conn_close(F.srv.conns);
    server_flush_pending(&F.srv, SIZE_MAX);
    for (int i = 0; i < 100 && hub_inflight(F.hub) > 0; i++) {
        hub_commit_pending(F.hub);
        ev_run(F.loop, EVRUN_NOWAIT);
    }
    lx_runtime_stop_timers(&F.rt[0]);
    lx_runtime_stop_timers(&F.rt[1]);
    hub_detach(F.hub);
    lx_runtime_destroy(&F.rt[0]);
    lx_runtime_destroy(&F.rt[1]);
    server_destroy(&F.srv);
    ev_prepare_stop(F.loop, &F.commit);
    ev_async_stop(F.loop, &F.committed);
    hub_free(F.hub);
    hub_bus_close(F.bus);
    store_close(F.st);
    outq_pool_drain();
    conn_parser_pool_drain();
    ev_loop_destroy(F.loop);
    SSL_CTX_free(F.client_tls);
    nftw(F.dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void die(const char *what, const char *err)
{
    /* stdout too: run.sh sends stderr to /dev/null (-close_fd_mask=2). */
    fprintf(stderr, "fuzz_conn: %s: %s\n", what, err);
    printf("fuzz_conn: %s: %s\n", what, err);
    fflush(stdout);
    abort();
}

/* A self-signed P-256 certificate and its key, written as PEM files into
 * dir for tls_ctx_new, as an operator's would be. */
static void make_cert(const char *cert, const char *key)
{
    EVP_PKEY *pk = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (!pk || !x) die("make_cert", "cannot make a key");
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600L * 24 * 365);
    X509_set_pubkey(x, pk);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1,
                               -1, 0);
    X509_set_issuer_name(x, name);
    if (!X509_sign(x, pk, EVP_sha256())) die("make_cert", "cannot sign");
    FILE *f = fopen(cert, "w");
    if (!f || !PEM_write_X509(f, x)) die("make_cert", cert);
    fclose(f);
    f = fopen(key, "w");
    if (!f || !PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL)) die("make_cert", key);
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(pk);
}

static void setup(void)
{
    char err[2048];
    signal(SIGPIPE, SIG_IGN);
    /* Every line is built (the access log reads the request, a path to
     * fuzz too); run.sh sends them to /dev/null with -close_fd_mask=2.
     * SLUICE_FUZZ_LOG=off|error|warn|info|debug for a quieter reproduction. */
    const char *lvl = getenv("SLUICE_FUZZ_LOG");
    int level = lvl ? log_level_parse(lvl) : -1;
    log_setup(level >= 0 ? (log_level)level : LOG_DEBUG, LOG_TEXT);
    echo = getenv("SLUICE_FUZZ_ECHO") && *getenv("SLUICE_FUZZ_ECHO") == '1';
    const char *tmp = getenv("TMPDIR");
    snprintf(F.dir, sizeof(F.dir), "%s/fuzz_conn.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(F.dir)) die("mkdtemp", strerror(errno));
    struct store_opts so = {.relaxed = 1, .map_size = 8 << 20};
    int rc = store_open(&F.st, F.dir, &so, err, sizeof(err));
    if (rc != 0) die("store_open", err[0] ? err : err_str(rc));
    /* A short queue (sluice.config's max_publish_queue): a few clients
     * flooding publishes reach the refusals (503, WebSocket 1013). */
    F.bus = hub_bus_open(F.st, 1, 100, err, sizeof(err));
    if (!F.bus) die("hub_bus_open", err);

    F.loop = ev_loop_new(EVFLAG_AUTO);
    if (!F.loop) die("ev_loop_new", "no loop");
    lx_set_loop(F.loop);
    lx_set_worker(1, 1);
    F.hub = hub_new();
    if (!F.hub) die("hub_new", "out of memory");
    F.app_path = getenv("SLUICE_FUZZ_APP");
    if (!F.app_path || !*F.app_path) F.app_path = SLUICE_FUZZ_APP;
    lx_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    server_limits_default(&cfg.limits);
    lx_app *def = lx_app_load(NULL, F.hub, NULL, err, sizeof(err));
    if (!def) die("the built-in app", err);
    lx_app *lua = lx_app_load(F.app_path, F.hub, &cfg, err, sizeof(err));
    if (!lua) die(F.app_path, err);
    lx_config_free(&cfg);

    server_limits_default(&F.normal);
    F.small = F.normal;
    F.small.max_header = 2048;
    F.small.max_uri = 1024;
    F.small.max_body = 4096;
    F.small.max_output = 1024; /* a few pongs or messages reach it */
    F.sub_normal = sub_defaults;
    server_init(&F.srv, F.loop, &F.normal);

    char cert[300], key[300];
    snprintf(cert, sizeof(cert), "%s/cert.pem", F.dir);
    snprintf(key, sizeof(key), "%s/key.pem", F.dir);
    make_cert(cert, key);
    SSL_CTX *tls = tls_ctx_new(cert, key, err, sizeof(err));
    if (!tls) die("tls_ctx_new", err);
    server_set_tls_ctx(&F.srv, tls);
    F.client_tls = SSL_CTX_new(TLS_client_method());
    if (!F.client_tls) die("SSL_CTX_new", "no client context");
    SSL_CTX_set_verify(F.client_tls, SSL_VERIFY_NONE, NULL);
    /* The outbox moves its bytes down as the session takes them. */
    SSL_CTX_set_mode(F.client_tls, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                       SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

    ev_async_init(&F.committed, on_committed);
    ev_prepare_init(&F.commit, on_pass_end);
    ev_set_priority(&F.commit, EV_MAXPRI); /* before the server's flush */
    ev_prepare_start(F.loop, &F.commit);
    ev_async_start(F.loop, &F.committed);
    hub_opts ho = {.wake = wake_worker, .wake_ud = NULL};
    if (hub_attach(F.hub, F.bus, &ho) < 0) die("hub_attach", "bus full");

    lx_runtime_init(&F.rt[0], &F.srv, F.hub, NULL, def);
    lx_runtime_init(&F.rt[1], &F.srv, F.hub, F.app_path, lua);
    lx_app_start_timers(def);
    lx_app_start_timers(lua);
    F.srv.on_request = lx_on_request;
    for (int i = 0; i < NCLIENTS; i++)
        F.cl[i].fd = F.cl[i].sfd = -1;
    F.ready = true;
    atexit(teardown);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    setup();
    return 0;
}

/* ---- clients ------------------------------------------------------------ */

static bool small_buffers, tls;

static client *client_get(int i)
{
    client *k = &F.cl[i];
    if (k->opened) return k->fd >= 0 ? k : NULL;
    if (F.srv.stopping) return NULL; /* the real server refuses them then */
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) return NULL;
    if (small_buffers) {
        int sz = 4096; /* the kernel's minimum is about this */
        for (int j = 0; j < 2; j++) {
            setsockopt(sv[j], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
            setsockopt(sv[j], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
        }
    }
    k->opened = true;
    k->fd = sv[0];
    k->sfd = sv[1];
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)(40000 + i))};
    a.sin_addr.s_addr = htonl(0x7f000001);
    if (tls && (k->ssl = SSL_new(F.client_tls))) {
        SSL_set_fd(k->ssl, k->fd);
        SSL_set_connect_state(k->ssl);
        SSL_do_handshake(k->ssl); /* the ClientHello: nothing to wait for yet */
        ERR_clear_error(); /* the thread's queue is the server's too (io.c) */
    }
    conn_accept(&F.srv, sv[1], (struct sockaddr *)&a, sizeof(a), tls);
    return k;
}

/* The connection whose socket is the client's other end, if still open. */
static conn *server_conn(const client *k)
{
    for (conn *c = F.srv.conns; c; c = c->next)
        if (c->io.fd == k->sfd) return c;
    return NULL;
}

static void client_write(client *k)
{
    size_t off = 0;
    while (off < k->out_len) {
        ssize_t n;
        if (k->ssl) {
            size_t want = k->out_len - off > 16384 ? 16384 : k->out_len - off;
            n = SSL_write(k->ssl, k->outbox + off, (int)want);
        } else {
            n = send(k->fd, k->outbox + off, k->out_len - off, MSG_NOSIGNAL);
        }
        if (k->ssl) ERR_clear_error(); /* the thread's queue is the server's too */
        if (n <= 0) break; /* full (the server is not reading), or the peer is gone */
        off += (size_t)n;
    }
    memmove(k->outbox, k->outbox + off, k->out_len - off);
    k->out_len -= off;
}

static void client_send(client *k, const uint8_t *data, size_t len, bool raw)
{
    if (raw && k->ssl) { /* beside the session: bytes that are no record of it */
        ssize_t n = send(k->fd, data, len, MSG_NOSIGNAL);
        (void)n;
        return;
    }
    if (k->out_len + len > OUTBOX_MAX) len = OUTBOX_MAX - k->out_len;
    if (!len) return;
    char *nb = realloc(k->outbox, k->out_len + len);
    if (!nb) return;
    k->outbox = nb;
    memcpy(k->outbox + k->out_len, data, len);
    k->out_len += len;
    client_write(k);
}

static void client_read(client *k)
{
    static char sink[65536];
    for (int i = 0; i < 64; i++) {
        ssize_t n = k->ssl ? SSL_read(k->ssl, sink, sizeof(sink))
                           : recv(k->fd, sink, sizeof(sink), MSG_DONTWAIT);
        if (k->ssl) ERR_clear_error();
        if (n <= 0) return;
        if (echo) {
            fprintf(stderr, "--- client %d reads %zd bytes:\n", (int)(k - F.cl), n);
            fwrite(sink, 1, (size_t)(n > 2000 ? 2000 : n), stderr);
            fputc('\n', stderr);
        }
    }
}

static void client_close(client *k)
{
    SSL_free(k->ssl);
    k->ssl = NULL;
    if (k->fd >= 0) close(k->fd);
    k->fd = -1;
    free(k->outbox);
    k->outbox = NULL;
    k->out_len = 0;
}

/* ---- the loop ----------------------------------------------------------- */

/* One pass: what arrived is read and handled, and at the pass's end
 * publishes are committed and fanned out and output is written. */
static void pass(void)
{
    for (int i = 0; i < NCLIENTS; i++) {
        client *k = &F.cl[i];
        if (k->fd < 0) continue;
        if (k->ssl && !SSL_is_init_finished(k->ssl) && !k->mute) {
            SSL_do_handshake(k->ssl);
            ERR_clear_error();
        }
        if (k->out_len) client_write(k);
    }
    ev_run(F.loop, EVRUN_NOWAIT);
    ev_run(F.loop, EVRUN_NOWAIT);
    for (int i = 0; i < NCLIENTS; i++)
        if (F.cl[i].fd >= 0 && !F.cl[i].mute) client_read(&F.cl[i]);
}

static void fire_timer(client *k)
{
    conn *c = server_conn(k);
    if (!c || !ev_is_active(&c->timer)) return;
    ev_timer_stop(F.loop, &c->timer);
    ev_invoke(F.loop, &c->timer, EV_TIMER);
}

static void finish(void)
{
    for (int i = 0; i < NCLIENTS; i++)
        F.cl[i].mute = false;
    pass();
    for (int i = 0; i < NCLIENTS; i++)
        client_close(&F.cl[i]);
    for (int i = 0; i < END_PASSES && F.srv.conns; i++)
        pass();
    /* Lingering and held connections: closed as the shutdown timeout does. */
    while (F.srv.conns)
        conn_close(F.srv.conns);
    server_flush_pending(&F.srv, SIZE_MAX);
    for (int i = 0; i < 1000 && hub_inflight(F.hub) > 0; i++) {
        hub_commit_pending(F.hub);
        ev_run(F.loop, EVRUN_NOWAIT);
    }
    ev_run(F.loop, EVRUN_NOWAIT); /* the pass's end frees what closed */
    ev_run(F.loop, EVRUN_NOWAIT);
    /* Everything is gone: a subscription or a stream left behind would be
     * fanned out to later (freed memory, or a leak). */
    if (hub_inflight(F.hub) > 0) die("end of input", "a publish was never acknowledged");
    if (F.srv.nconns || F.srv.pending_head) die("end of input", "connections left");
    hub_stats hs;
    hub_get_stats(F.hub, &hs);
    sub_stats ss;
    sub_get_stats(&ss);
    if (hs.subscribers || ss.websocket || ss.sse || ss.longpoll) {
        char left[160];
        snprintf(left, sizeof(left),
                 "left: %llu hub subscriptions, %u websocket, %u sse, %u long-poll sessions",
                 (unsigned long long)hs.subscribers, ss.websocket, ss.sse, ss.longpoll);
        die("end of input", left);
    }
    ev_timer_stop(F.loop, &F.srv.shutdown_timer);
    F.srv.stopping = false;
    for (int i = 0; i < NCLIENTS; i++) {
        F.cl[i].opened = F.cl[i].mute = false;
        F.cl[i].sfd = -1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!F.ready) setup();
    if (size < 1) return 0;
    uint8_t settings = data[0];
    lx_runtime *rt = &F.rt[settings & 1];
    F.srv.limits = settings & 2 ? F.small : F.normal;
    sub_defaults = F.sub_normal;
    if (settings & 2) sub_defaults.ws_max_message = 2048;
    small_buffers = settings & 4;
    tls = (settings & 0x38) == 0x38;
    F.srv.on_request_ud = rt;
    size_t pos = 1;
    while (pos < size) {
        uint8_t op = data[pos++];
        client *k = NULL;
        int ci = (op >> 3) & 3;
        switch (op & 7) {
        case OP_SEND: {
            size_t n = 0;
            if (pos < size) n = data[pos++];
            if (pos < size) n |= (size_t)data[pos++] << 8;
            if (n > size - pos) n = size - pos;
            if ((k = client_get(ci))) client_send(k, data + pos, n, op & 0x80);
            pos += n;
            break;
        }
        case OP_RUN: {
            int n = pos < size ? (data[pos++] & 7) + 1 : 1;
            for (int i = 0; i < n; i++)
                pass();
            break;
        }
        case OP_MUTE:
            F.cl[ci].mute = !F.cl[ci].mute;
            break;
        case OP_SHUT:
            if ((k = client_get(ci))) shutdown(k->fd, SHUT_WR);
            break;
        case OP_CLOSE:
            if (F.cl[ci].fd >= 0) client_close(&F.cl[ci]);
            break;
        case OP_TIMER:
            if (F.cl[ci].fd >= 0) fire_timer(&F.cl[ci]);
            break;
        case OP_STOP:
            server_shutdown(&F.srv);
            break;
        case OP_RELOAD:
            lx_reload(rt);
            /* A reload applies the script's limits: keep this input's. */
            F.srv.limits = settings & 2 ? F.small : F.normal;
            break;
        }
        if (!(op & 0x40)) pass();
    }
    finish();
    return 0;
}
