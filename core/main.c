/* main.c: the sluice command line.  Parses flags, loads the app script,
 * merges its sluice.config{} with the flags (flags win), opens listeners,
 * and runs the event loop until SIGTERM/SIGINT.  SIGHUP reloads the script
 * and the TLS certificate. */
#include "core/admin.h"
#include "core/conn.h"
#include "core/hub.h"
#include "core/log.h"
#include "core/server.h"
#include "lua/api.h"
#include "storage/store.h"

#include <errno.h>
#include <stddef.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_ADDRS 16

typedef struct options {
    const char *app;
    const char *listen[MAX_ADDRS];
    int nlisten;
    const char *tls_listen[MAX_ADDRS];
    int ntls_listen;
    const char *tls_cert, *tls_key;
    const char *data_dir;
    int workers;
    bool check;
    bool watch;
    int log_level;
    log_format log_format;
} options;

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: sluice [options] [APP.lua]\n"
        "\n"
        "A realtime gateway: WebSocket, Server-Sent Events, long-polling and short polling\n"
        "on one URL, with durable resumable topics and Lua apps.\n"
        "\n"
        "  APP.lua                    the application script (default: the built-in app)\n"
        "  -l, --listen ADDR:PORT     plain HTTP listener; repeatable (default 127.0.0.1:8080)\n"
        "      --tls-listen ADDR:PORT HTTPS/WSS listener; repeatable\n"
        "      --tls-cert FILE        PEM certificate chain\n"
        "      --tls-key FILE         PEM private key\n"
        "  -d, --data DIR             LMDB directory, created if missing (default ./sluice-data)\n"
        "  -w, --workers N            event-loop threads (default: number of CPUs)\n"
        "      --check                load the app, report problems, exit 0 or 1\n"
        "      --watch                reload the app when its file changes\n"
        "      --log-level LEVEL      debug, info, warn, error (default info)\n"
        "      --log-format FORMAT    text or json (default text)\n"
        "  -V, --version              print the version\n"
        "  -h, --help                 print this help\n"
        "\n"
        "Signals: SIGHUP reloads the app and the TLS certificate; SIGTERM/SIGINT stop\n"
        "gracefully.\n");
}

static int parse_options(int argc, char **argv, options *o)
{
    enum {
        OPT_TLS_LISTEN = 256,
        OPT_TLS_CERT,
        OPT_TLS_KEY,
        OPT_CHECK,
        OPT_LOG_LEVEL,
        OPT_LOG_FORMAT,
        OPT_WATCH
    };
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"tls-listen", required_argument, NULL, OPT_TLS_LISTEN},
        {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
        {"tls-key", required_argument, NULL, OPT_TLS_KEY},
        {"data", required_argument, NULL, 'd'},
        {"workers", required_argument, NULL, 'w'},
        {"check", no_argument, NULL, OPT_CHECK},
        {"watch", no_argument, NULL, OPT_WATCH},
        {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
        {"log-format", required_argument, NULL, OPT_LOG_FORMAT},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    o->log_level = LOG_INFO;
    o->log_format = LOG_TEXT;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":l:d:w:Vh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'l':
            if (o->nlisten == MAX_ADDRS) goto too_many;
            o->listen[o->nlisten++] = optarg;
            break;
        case OPT_TLS_LISTEN:
            if (o->ntls_listen == MAX_ADDRS) goto too_many;
            o->tls_listen[o->ntls_listen++] = optarg;
            break;
        case OPT_TLS_CERT:
            o->tls_cert = optarg;
            break;
        case OPT_TLS_KEY:
            o->tls_key = optarg;
            break;
        case 'd':
            o->data_dir = optarg;
            break;
        case 'w': {
            char *end;
            long w = strtol(optarg, &end, 10);
            if (*end || w < 1 || w > 1024) {
                fprintf(stderr, "sluice: --workers wants a number from 1 to 1024, not '%s'\n",
                        optarg);
                return -1;
            }
            o->workers = (int)w;
            break;
        }
        case OPT_WATCH:
            o->watch = true;
            break;
        case OPT_CHECK:
            o->check = true;
            break;
        case OPT_LOG_LEVEL:
            o->log_level = log_level_parse(optarg);
            if (o->log_level < 0) {
                fprintf(stderr, "sluice: --log-level wants debug, info, warn or error, not '%s'\n",
                        optarg);
                return -1;
            }
            break;
        case OPT_LOG_FORMAT:
            if (strcmp(optarg, "text") == 0)
                o->log_format = LOG_TEXT;
            else if (strcmp(optarg, "json") == 0)
                o->log_format = LOG_JSON;
            else {
                fprintf(stderr, "sluice: --log-format wants text or json, not '%s'\n", optarg);
                return -1;
            }
            break;
        case 'V':
            printf("sluice %s\n", SLUICE_VERSION);
            exit(0);
        case 'h':
            usage(stdout);
            exit(0);
        case ':':
            fprintf(stderr, "sluice: option '%s' needs a value\n", argv[optind - 1]);
            return -1;
        default:
            fprintf(stderr, "sluice: unknown option '%s' (see sluice --help)\n", argv[optind - 1]);
            return -1;
        }
    }
    if (optind < argc) o->app = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, "sluice: unexpected argument '%s' (one app script at most)\n",
                argv[optind]);
        return -1;
    }
    return 0;
too_many:
    fprintf(stderr, "sluice: at most %d addresses per listener option\n", MAX_ADDRS);
    return -1;
}

/* mkdir -p */
static int make_dirs(const char *path)
{
    char tmp[4096];
    if (strlen(path) >= sizeof(tmp)) return -1;
    strcpy(tmp, path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, 0755) < 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0755) < 0 && errno != EEXIST) return -1;
    return 0;
}

/* Many connections need many descriptors: take the hard limit. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

typedef struct app_ctx {
    server srv;
    hub *hub;
    ev_async committed; /* the storage writer has commits to fan out */
    lx_runtime rt;
    const char *tls_cert, *tls_key;
    ev_signal sighup, sigterm, sigint;
    ev_stat script_stat;   /* --watch */
    ev_timer watch_settle; /* reload once the file has stopped changing */
} app_ctx;

static void wake_loop(void *ud)
{
    app_ctx *a = ud;
    ev_async_send(a->srv.loop, &a->committed);
}

static void on_committed(struct ev_loop *loop, ev_async *w, int revents)
{
    app_ctx *a = (app_ctx *)((char *)w - offsetof(app_ctx, committed));
    hub_poll(a->hub);
}

static void on_sighup(struct ev_loop *loop, ev_signal *w, int revents)
{
    app_ctx *a = w->data;
    LOG_KV(LOG_INFO, "SIGHUP: reloading");
    lx_reload(&a->rt);
    if (a->tls_cert) {
        char err[512];
        SSL_CTX *ctx = tls_ctx_new(a->tls_cert, a->tls_key, err, sizeof(err));
        if (ctx) {
            server_set_tls_ctx(&a->srv, ctx);
            LOG_KV(LOG_INFO, "reloaded TLS certificate", LOG_S("cert", a->tls_cert));
        } else {
            LOG_KV(LOG_ERROR, "TLS reload failed: the old certificate stays", LOG_S("error", err));
        }
    }
}

static void on_watch_settled(struct ev_loop *loop, ev_timer *w, int revents)
{
    app_ctx *a = w->data;
    LOG_KV(LOG_INFO, "script changed: reloading", LOG_S("script", a->rt.script_path));
    lx_reload(&a->rt);
}

static void on_script_changed(struct ev_loop *loop, ev_stat *w, int revents)
{
    app_ctx *a = w->data;
    /* Editors write in several steps: wait until the file is quiet. */
    ev_timer_stop(loop, &a->watch_settle);
    ev_timer_set(&a->watch_settle, 0.2, 0.);
    ev_timer_start(loop, &a->watch_settle);
}

static void on_stop_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    app_ctx *a = w->data;
    LOG_KV(LOG_INFO, "stopping", LOG_S("signal", w->signum == SIGTERM ? "SIGTERM" : "SIGINT"));
    server_shutdown(&a->srv);
}

int main(int argc, char **argv)
{
    if (argc > 1 && (strcmp(argv[1], "topics") == 0 || strcmp(argv[1], "dump") == 0))
        return admin_main(argc, argv);
    options o;
    memset(&o, 0, sizeof(o));
    if (parse_options(argc, argv, &o) < 0) return 1;
    log_setup((log_level)o.log_level, o.log_format);

    lx_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    server_limits_default(&cfg.limits);
    char err[2048];
    if (o.app && access(o.app, R_OK) < 0) {
        fprintf(stderr, "sluice: %s: %s\n", o.app, strerror(errno));
        return 1;
    }
    /* The app loads once, before storage opens (its sluice.config may name
     * the data directory): its retention rules go to the hub now, and the
     * hub gets its storage below. */
    struct store *st = NULL;
    hub *h = hub_new();
    if (!h) {
        fprintf(stderr, "sluice: out of memory\n");
        return 1;
    }
    lx_app *app = lx_app_load(o.app, h, &cfg, err, sizeof(err));
    if (!app) {
        fprintf(stderr, "sluice: %s\n", err);
        lx_config_free(&cfg);
        hub_free(h);
        return 1;
    }
    if (o.check) {
        printf("%s: ok (%zu routes)\n", o.app ? o.app : "scripts/default.lua",
               lx_app_route_count(app));
        lx_app_release(app);
        lx_config_free(&cfg);
        hub_free(h);
        return 0;
    }

    /* Flags win over the script's settings. */
    const char *tls_cert = o.tls_cert ? o.tls_cert : cfg.tls_cert;
    const char *tls_key = o.tls_key ? o.tls_key : cfg.tls_key;
    const char *data_dir = o.data_dir ? o.data_dir : cfg.data_dir ? cfg.data_dir : "./sluice-data";
    const char **listen = o.listen;
    int nlisten = o.nlisten;
    if (nlisten == 0 && o.ntls_listen == 0) {
        listen = (const char **)cfg.listen;
        nlisten = cfg.nlisten;
    }
    const char **tls_listen = o.ntls_listen ? o.tls_listen : (const char **)cfg.tls_listen;
    int ntls_listen = o.ntls_listen ? o.ntls_listen : (o.nlisten ? 0 : cfg.ntls_listen);
    static const char *default_listen[] = {"127.0.0.1:8080"};
    if (nlisten == 0 && ntls_listen == 0) {
        listen = default_listen;
        nlisten = 1;
    }
    int rc = 1;
    if (ntls_listen > 0 && (!tls_cert || !tls_key)) {
        fprintf(stderr, "sluice: TLS listeners need --tls-cert and --tls-key\n");
        goto out_app;
    }
    if (make_dirs(data_dir) < 0) {
        fprintf(stderr, "sluice: cannot create data directory %s: %s\n", data_dir, strerror(errno));
        goto out_app;
    }
    struct store_opts so = {.relaxed = cfg.relaxed};
    int src = store_open(&st, data_dir, &so, err, sizeof(err));
    if (src != 0) {
        fprintf(stderr, "sluice: %s: %s\n", data_dir, err[0] ? err : store_errmsg(src));
        goto out_app;
    }
    int workers = o.workers ? o.workers : cfg.workers;
    if (workers > 1)
        LOG_KV(LOG_INFO, "one event loop for now: --workers is accepted and runs 1",
               LOG_I("requested", workers));

    signal(SIGPIPE, SIG_IGN);
    /* A file-size limit must fail a write (EFBIG: storage full, 503), not
     * kill the server. */
    signal(SIGXFSZ, SIG_IGN);
    raise_fd_limit();
    struct ev_loop *loop = ev_default_loop(EVFLAG_AUTO);
    static app_ctx a;
    server_init(&a.srv, loop, &cfg.limits);
    ev_async_init(&a.committed, on_committed);
    ev_async_start(loop, &a.committed);
    hub_opts ho = {.wake = wake_loop, .wake_ud = &a};
    if (hub_open(h, st, &ho, err, sizeof(err)) < 0) {
        fprintf(stderr, "sluice: %s\n", err);
        goto out_server;
    }
    a.hub = h;
    /* Timers the script made while loading start with the loop. */
    lx_set_loop(loop);
    lx_app_start_timers(app);
    /* Signals first: a test (or an operator) may signal as soon as the
     * "listening on" line appears. */
    ev_signal_init(&a.sighup, on_sighup, SIGHUP);
    ev_signal_init(&a.sigterm, on_stop_signal, SIGTERM);
    ev_signal_init(&a.sigint, on_stop_signal, SIGINT);
    a.sighup.data = a.sigterm.data = a.sigint.data = &a;
    ev_signal_start(loop, &a.sighup);
    ev_signal_start(loop, &a.sigterm);
    ev_signal_start(loop, &a.sigint);
    a.tls_cert = tls_cert;
    a.tls_key = tls_key;
    if (ntls_listen > 0) {
        SSL_CTX *ctx = tls_ctx_new(tls_cert, tls_key, err, sizeof(err));
        if (!ctx) {
            fprintf(stderr, "sluice: %s\n", err);
            goto out_server;
        }
        server_set_tls_ctx(&a.srv, ctx);
    }
    for (int i = 0; i < nlisten; i++) {
        if (server_listen(&a.srv, listen[i], false, err, sizeof(err)) < 0) {
            fprintf(stderr, "sluice: %s\n", err);
            goto out_server;
        }
    }
    for (int i = 0; i < ntls_listen; i++) {
        if (server_listen(&a.srv, tls_listen[i], true, err, sizeof(err)) < 0) {
            fprintf(stderr, "sluice: %s\n", err);
            goto out_server;
        }
    }
    lx_runtime_init(&a.rt, &a.srv, h, o.app, app);
    app = NULL;
    a.srv.on_request = lx_on_request;
    a.srv.on_request_ud = &a.rt;

    if (o.watch) {
        if (!o.app) {
            LOG_KV(LOG_WARN, "--watch: the built-in app has no file to watch");
        } else {
            ev_stat_init(&a.script_stat, on_script_changed, o.app, 1.0);
            a.script_stat.data = &a;
            ev_stat_start(loop, &a.script_stat);
            ev_init(&a.watch_settle, on_watch_settled);
            a.watch_settle.data = &a;
        }
    }
    server_start(&a.srv);
    LOG_KV(LOG_INFO, "sluice started", LOG_S("version", SLUICE_VERSION),
           LOG_S("app", o.app ? o.app : "scripts/default.lua"), LOG_S("data", data_dir));
    ev_run(loop, 0);
    rc = 0;
    ev_signal_stop(loop, &a.sighup);
    ev_signal_stop(loop, &a.sigterm);
    ev_signal_stop(loop, &a.sigint);
    if (o.watch && o.app) {
        ev_stat_stop(loop, &a.script_stat);
        ev_timer_stop(loop, &a.watch_settle);
    }
    /* Commit what is queued and answer whoever waits for it, then free. */
    hub_stop(h);
    lx_runtime_destroy(&a.rt);
out_server:
    server_destroy(&a.srv);
    ev_async_stop(loop, &a.committed);
out_app:
    if (app) lx_app_release(app);
    lx_config_free(&cfg);
    hub_free(h);
    if (st) store_close(st);
    if (rc == 0) LOG_KV(LOG_INFO, "stopped");
    return rc;
}
