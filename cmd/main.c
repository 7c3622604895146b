/* main.c: the sluice command line.  Parses flags, loads the app script,
 * merges its sluice.config{} with the flags (flags win), opens storage and
 * the listeners, starts the workers (cmd/worker.h) and keeps the signals:
 * SIGHUP reloads the script and the TLS certificate in every worker,
 * SIGTERM/SIGINT stop them gracefully. */
#include "cmd/admin.h"
#include "cmd/adminsrv.h"
#include "core/conn.h"
#include "core/hub.h"
#include "core/log.h"
#include "core/server.h"
#include "core/subscriber.h"
#include "cmd/worker.h"
#include "lua/api.h"
#include "lua/shared.h"
#include "storage/cluster.h"
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
#ifdef SLUICE_MIMALLOC
#include <mimalloc.h>
#endif

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
    const char *admin_listen, *admin_token_file;
    const char *cluster; /* --cluster nats://HOST:PORT[,...] */
} options;

/* "mimalloc 2.0.9" or "system", for --version and the start-up log: the
 * allocator is a build option (SLUICE_MIMALLOC) that changes the figures. */
static const char *allocator_name(char *buf, size_t cap)
{
#ifdef SLUICE_MIMALLOC
    int v = mi_version(); /* 209 for 2.0.9 */
    snprintf(buf, cap, "mimalloc %d.%d.%d", v / 100, v / 10 % 10, v % 10);
    return buf;
#else
    (void)buf;
    (void)cap;
    return "system";
#endif
}

/* Cluster mode's settings: the script's cluster block, its servers
 * replaced by --cluster.  False when neither names a server (one node). */
static bool cluster_options(const options *o, const lx_config *cfg, struct cluster_opts *co)
{
    const lx_cluster_config *cl = &cfg->cluster;
    *co = (struct cluster_opts){.servers = o->cluster ? o->cluster : cl->servers,
                                .stream = cl->stream,
                                .replicas = cl->replicas,
                                .user = cl->user,
                                .password = cl->password,
                                .token = cl->token,
                                .creds = cl->creds,
                                .tls_ca = cl->tls_ca,
                                .tls_cert = cl->tls_cert,
                                .tls_key = cl->tls_key,
                                .max_message = cfg->limits.max_body};
    return co->servers != NULL;
}

/* The app's retention (sluice.topic) as the stream's limits: one for all
 * topics, or an error that names the rules that differ. */
static int cluster_retention(const lx_app *app, struct cluster_opts *co, char *err, size_t errlen)
{
    hub_retention r;
    int rc = lx_app_retention(app, &r, err, errlen);
    if (rc != 0) return rc;
    co->max_per_topic = r.backlog;
    co->max_age_ms = (uint64_t)(r.max_age * 1000);
    return 0;
}

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
        "      --cluster URLS         one node of a cluster on NATS JetStream\n"
        "                             (nats://HOST:PORT[,nats://...]; docs/cluster.md)\n"
        "  -w, --workers N            event-loop threads (default: number of CPUs)\n"
        "      --check                load the app, report problems, exit 0 or 1\n"
        "      --watch                reload the app when its file changes\n"
        "      --log-level LEVEL      debug, info, warn, error (default info)\n"
        "      --log-format FORMAT    text or json (default text)\n"
        "      --admin-listen ADDR:PORT  admin listener: /metrics, JSON API, dashboard\n"
        "                             (PORT alone: 127.0.0.1:PORT)\n"
        "      --admin-token-file FILE   bearer token the admin listener requires\n"
        "                             (or the SLUICE_ADMIN_TOKEN environment variable)\n"
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
        OPT_CLUSTER,
        OPT_LOG_LEVEL,
        OPT_LOG_FORMAT,
        OPT_WATCH,
        OPT_ADMIN_LISTEN,
        OPT_ADMIN_TOKEN_FILE
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
        {"admin-listen", required_argument, NULL, OPT_ADMIN_LISTEN},
        {"admin-token-file", required_argument, NULL, OPT_ADMIN_TOKEN_FILE},
        {"cluster", required_argument, NULL, OPT_CLUSTER},
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
            if (*end || w < 1 || w > HUB_MAX_WORKERS) {
                fprintf(stderr, "sluice: --workers wants a number from 1 to %d, not '%s'\n",
                        HUB_MAX_WORKERS, optarg);
                return SL_EINVAL;
            }
            o->workers = (int)w;
            break;
        }
        case OPT_WATCH:
            o->watch = true;
            break;
        case OPT_ADMIN_LISTEN:
            o->admin_listen = optarg;
            break;
        case OPT_ADMIN_TOKEN_FILE:
            o->admin_token_file = optarg;
            break;
        case OPT_CHECK:
            o->check = true;
            break;
        case OPT_CLUSTER:
            o->cluster = optarg;
            break;
        case OPT_LOG_LEVEL:
            o->log_level = log_level_parse(optarg);
            if (o->log_level < 0) {
                fprintf(stderr, "sluice: --log-level wants debug, info, warn or error, not '%s'\n",
                        optarg);
                return SL_EINVAL;
            }
            break;
        case OPT_LOG_FORMAT:
            if (strcmp(optarg, "text") == 0)
                o->log_format = LOG_TEXT;
            else if (strcmp(optarg, "json") == 0)
                o->log_format = LOG_JSON;
            else {
                fprintf(stderr, "sluice: --log-format wants text or json, not '%s'\n", optarg);
                return SL_EINVAL;
            }
            break;
        case 'V': {
            char alloc[32];
            printf("sluice %s (allocator: %s)\n", SLUICE_VERSION,
                   allocator_name(alloc, sizeof(alloc)));
            exit(0);
        }
        case 'h':
            usage(stdout);
            exit(0);
        case ':':
            fprintf(stderr, "sluice: option '%s' needs a value\n", argv[optind - 1]);
            return SL_EINVAL;
        default:
            fprintf(stderr, "sluice: unknown option '%s' (see sluice --help)\n", argv[optind - 1]);
            return SL_EINVAL;
        }
    }
    if (optind < argc) o->app = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, "sluice: unexpected argument '%s' (one app script at most)\n",
                argv[optind]);
        return SL_EINVAL;
    }
    return 0;
too_many:
    fprintf(stderr, "sluice: at most %d addresses per listener option\n", MAX_ADDRS);
    return SL_EINVAL;
}

/* mkdir -p */
static int make_dirs(const char *path)
{
    char tmp[4096];
    if (strlen(path) >= sizeof(tmp)) return SL_EINVAL;
    strcpy(tmp, path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, 0755) < 0 && errno != EEXIST) return SL_ESYS;
        *p = '/';
    }
    if (mkdir(tmp, 0755) < 0 && errno != EEXIST) return SL_ESYS;
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

/* The main thread: signals, --watch, and the workers. */
typedef struct app_ctx {
    struct ev_loop *loop;
    worker *workers[HUB_MAX_WORKERS];
    int nworkers;
    const char *script_path;
    int reloads_pending;   /* workers still reloading (atomic) */
    int reload_failures;   /* of this round (atomic) */
    bool reload_again;     /* a signal came during a round */
    ev_async reloaded;     /* the last worker of a round finished */
    ev_signal sighup, sigterm, sigint;
    ev_stat script_stat;   /* --watch */
    ev_timer watch_settle; /* reload once the file has stopped changing */
    adm *admin;            /* --admin-listen */
    struct cluster *cluster; /* cluster mode: the stream a reload's retention goes to */
    const lx_config *start_cfg; /* what the script declared at start */
} app_ctx;

/* Worker threads: count the round down; the last one wakes main. */
static void on_worker_reloaded(void *ud, worker *w, int status)
{
    app_ctx *a = ud;
    if (status < 0) __atomic_add_fetch(&a->reload_failures, 1, __ATOMIC_RELAXED);
    if (__atomic_sub_fetch(&a->reloads_pending, 1, __ATOMIC_ACQ_REL) == 0)
        ev_async_send(a->loop, &a->reloaded);
}

/* Reloads every worker.  The script is loaded here first, so that a
 * broken script is reported once and no worker is asked; a round in
 * progress is followed by one more. */
static void reload_all(app_ctx *a)
{
    if (__atomic_load_n(&a->reloads_pending, __ATOMIC_ACQUIRE) > 0) {
        a->reload_again = true;
        return;
    }
    char err[2048];
    lx_set_worker(1, a->nworkers);
    lx_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    server_limits_default(&cfg.limits);
    lx_app *probe = lx_app_load(a->script_path, NULL, &cfg, err, sizeof(err));
    if (!probe) {
        LOG_KV(LOG_ERROR, "reload failed: the running app stays", LOG_S("error", err));
        lx_config_free(&cfg);
        return;
    }
    /* What the reload cannot apply is said, not dropped in silence. */
    char changed[256];
    if (a->start_cfg && lx_config_start_only_changes(a->start_cfg, &cfg, changed, sizeof(changed)))
        LOG_KV(LOG_WARN,
               "reload: settings read at start only changed; they apply at the next start",
               LOG_S("settings", changed));
    lx_config_free(&cfg);
    /* Cluster mode: the stream keeps the retention (one for all topics),
     * so the new rules go to it first; a reload they cannot go with fails
     * whole.  Blocks this thread for the requests (at most a few s). */
    struct cluster_opts want = {0};
    if (a->cluster && (cluster_retention(probe, &want, err, sizeof(err)) != 0 ||
                       cluster_set_retention(a->cluster, want.max_per_topic, want.max_age_ms, err,
                                             sizeof(err)) != 0)) {
        LOG_KV(LOG_ERROR, "reload failed: the running app stays", LOG_S("error", err));
        lx_app_release(probe);
        return;
    }
    lx_app_release(probe);
    __atomic_store_n(&a->reload_failures, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&a->reloads_pending, a->nworkers, __ATOMIC_RELEASE);
    for (int i = 0; i < a->nworkers; i++)
        worker_reload(a->workers[i]);
}

static void on_reloaded(struct ev_loop *loop, ev_async *w, int revents)
{
    app_ctx *a = w->data;
    int failed = __atomic_load_n(&a->reload_failures, __ATOMIC_RELAXED);
    if (failed == 0)
        LOG_KV(LOG_INFO, "reloaded app",
               LOG_S("script", a->script_path ? a->script_path : "scripts/default.lua"),
               LOG_I("workers", a->nworkers));
    else /* the file changed between the check and a worker's load */
        LOG_KV(LOG_ERROR, "reload failed on some workers: they keep the old app",
               LOG_I("failed", failed), LOG_I("workers", a->nworkers));
    if (a->reload_again) {
        a->reload_again = false;
        reload_all(a);
    }
}

static void on_sighup(struct ev_loop *loop, ev_signal *w, int revents)
{
    LOG_KV(LOG_INFO, "SIGHUP: reloading");
    reload_all(w->data);
}

static void on_watch_settled(struct ev_loop *loop, ev_timer *w, int revents)
{
    app_ctx *a = w->data;
    LOG_KV(LOG_INFO, "script changed: reloading", LOG_S("script", a->script_path));
    reload_all(a);
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
    adm_stop(a->admin);
    for (int i = 0; i < a->nworkers; i++)
        worker_stop(a->workers[i]);
    ev_break(loop, EVBREAK_ALL);
}

/* Loads the app for worker `id` of `count` into a new hub; the first
 * worker's load also fills cfg.  NULL with a message in err. */
static lx_app *load_for_worker(const char *path, int id, int count, hub **h, lx_config *cfg,
                               char *err, size_t errlen)
{
    *h = hub_new();
    if (!*h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    lx_set_worker(id, count);
    lx_app *app = lx_app_load(path, *h, cfg, err, errlen);
    if (!app) {
        hub_free(*h);
        *h = NULL;
    }
    return app;
}

static int default_workers(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > HUB_MAX_WORKERS ? HUB_MAX_WORKERS : (int)n;
}

int main(int argc, char **argv)
{
    if (argc > 1 && (strcmp(argv[1], "topics") == 0 || strcmp(argv[1], "dump") == 0 ||
                     strcmp(argv[1], "check") == 0))
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
    /* The app loads before storage opens (its sluice.config may name the
     * data directory and the number of workers): its retention rules go to
     * the first worker's hub now, which gets the bus below.  Loaded with
     * the flag's worker count, or the CPU count; if the script asks for
     * another count, it loads again so sluice.worker.count is true. */
    static app_ctx a;
    int nworkers = o.workers ? o.workers : default_workers();
    hub *first_hub = NULL;
    /* --watch: the script as loaded, to catch a change made before the
     * watcher starts (ev_stat's first stat would take it as the base). */
    struct stat loaded_stat;
    bool have_loaded_stat = o.watch && o.app && stat(o.app, &loaded_stat) == 0;
    lx_app *first_app = load_for_worker(o.app, 1, nworkers, &first_hub, &cfg, err, sizeof(err));
    if (first_app && !o.workers && cfg.workers > 0 && cfg.workers != nworkers) {
        nworkers = cfg.workers > HUB_MAX_WORKERS ? HUB_MAX_WORKERS : cfg.workers;
        lx_app_release(first_app);
        hub_free(first_hub);
        lx_config_free(&cfg);
        memset(&cfg, 0, sizeof(cfg));
        server_limits_default(&cfg.limits);
        first_app = load_for_worker(o.app, 1, nworkers, &first_hub, &cfg, err, sizeof(err));
    }
    if (!first_app) {
        fprintf(stderr, "sluice: %s\n", err);
        lx_config_free(&cfg);
        return 1;
    }
    struct cluster_opts cco;
    if (o.check && cluster_options(&o, &cfg, &cco)) {
        if (cluster_opts_check(&cco, err, sizeof(err)) != 0 ||
            cluster_retention(first_app, &cco, err, sizeof(err)) != 0) {
            fprintf(stderr, "sluice: %s\n", err);
            lx_app_release(first_app);
            lx_config_free(&cfg);
            hub_free(first_hub);
            return 1;
        }
    }
    if (o.check) {
        printf("%s: ok (%zu routes)\n", o.app ? o.app : "scripts/default.lua",
               lx_app_route_count(first_app));
        lx_app_release(first_app);
        lx_config_free(&cfg);
        hub_free(first_hub);
        return 0;
    }
    /* WebSocket settings of the script (core/subscriber.h), before any worker runs. */
    if (cfg.max_ws_message) sub_defaults.ws_max_message = cfg.max_ws_message;
    if (cfg.ws_deflate) sub_defaults.ws_deflate = cfg.ws_deflate > 0;
    if (cfg.ws_deflate_min_set) sub_defaults.ws_deflate_min = cfg.ws_deflate_min;

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
    struct store *st = NULL;
    hub_bus *bus = NULL;
    if (ntls_listen > 0 && (!tls_cert || !tls_key)) {
        fprintf(stderr, "sluice: TLS listeners need --tls-cert and --tls-key\n");
        goto out;
    }
    if (make_dirs(data_dir) < 0) {
        fprintf(stderr, "sluice: cannot create data directory %s: %s\n", data_dir, strerror(errno));
        goto out;
    }
    struct store_opts so = {
        .relaxed = cfg.relaxed, .dedup_window_ms = cfg.dedup_window_ms, .damage = admin_log_damage};
    admin_catch_bus_errors(data_dir);
    int src = store_open(&st, data_dir, &so, err, sizeof(err));
    if (src != 0) {
        fprintf(stderr, "sluice: %s: %s\n", data_dir, err[0] ? err : err_str(src));
        goto out;
    }
    bus = hub_bus_open(st, (unsigned)nworkers, cfg.max_publish_queue, err, sizeof(err));
    if (!bus) {
        fprintf(stderr, "sluice: %s\n", err);
        goto out;
    }
    struct cluster_opts co;
    if (cluster_options(&o, &cfg, &co)) {
        if (cluster_retention(first_app, &co, err, sizeof(err)) != 0 ||
            hub_bus_cluster(bus, &co, err, sizeof(err)) != 0) {
            fprintf(stderr, "sluice: %s\n", err);
            goto out;
        }
        hub_bus_limit_replays(bus, cfg.max_waiting_resumes);
        if (lxs_cluster_start(hub_bus_get_cluster(bus)) != 0) {
            fprintf(stderr, "sluice: cluster: cannot share presence with the other nodes\n");
            goto out;
        }
        LOG_KV(LOG_INFO, "cluster mode: JetStream is the record", LOG_S("servers", co.servers));
        a.cluster = hub_bus_get_cluster(bus);
    }
    a.start_cfg = &cfg;

    signal(SIGPIPE, SIG_IGN);
    /* A file-size limit must fail a write (EFBIG: storage full, 503), not
     * kill the server. */
    signal(SIGXFSZ, SIG_IGN);
    raise_fd_limit();
    a.loop = ev_default_loop(EVFLAG_AUTO);
    a.script_path = o.app;
    /* Signals first: a test (or an operator) may signal as soon as the
     * "listening on" line appears. */
    ev_signal_init(&a.sighup, on_sighup, SIGHUP);
    ev_signal_init(&a.sigterm, on_stop_signal, SIGTERM);
    ev_signal_init(&a.sigint, on_stop_signal, SIGINT);
    a.sighup.data = a.sigterm.data = a.sigint.data = &a;
    ev_signal_start(a.loop, &a.sighup);
    ev_signal_start(a.loop, &a.sigterm);
    ev_signal_start(a.loop, &a.sigint);
    ev_async_init(&a.reloaded, on_reloaded);
    a.reloaded.data = &a;
    ev_async_start(a.loop, &a.reloaded);

    for (int i = 0; i < nworkers; i++) {
        hub *h = first_hub;
        lx_app *app = first_app;
        first_hub = NULL;
        first_app = NULL;
        if (i > 0 && !(app = load_for_worker(o.app, i + 1, nworkers, &h, NULL, err, sizeof(err)))) {
            fprintf(stderr, "sluice: %s\n", err);
            goto out_workers;
        }
        worker_opts wo = {.id = i + 1,
                          .count = nworkers,
                          .script_path = o.app,
                          .tls_cert = ntls_listen > 0 ? tls_cert : NULL,
                          .tls_key = tls_key,
                          .limits = &cfg.limits,
                          .on_reloaded = on_worker_reloaded,
                          .ud = &a};
        worker *w = worker_new(&wo, app, h, bus, err, sizeof(err));
        if (!w) {
            fprintf(stderr, "sluice: %s\n", err);
            goto out_workers;
        }
        a.workers[a.nworkers++] = w;
        server *srv = worker_server(w);
        if (ntls_listen > 0) {
            SSL_CTX *ctx = tls_ctx_new(tls_cert, tls_key, err, sizeof(err));
            if (!ctx) {
                fprintf(stderr, "sluice: %s\n", err);
                goto out_workers;
            }
            server_set_tls_ctx(srv, ctx);
        }
        /* The first worker opens each address; the others join its
         * SO_REUSEPORT group on the port it got. */
        server *first = worker_server(a.workers[0]);
        for (int j = 0; j < nlisten + ntls_listen; j++) {
            bool tls = j >= nlisten;
            const char *addr = i == 0 ? (tls ? tls_listen[j - nlisten] : listen[j])
                                      : first->listeners[j].name;
            if (server_listen(srv, addr, tls, i > 0, err, sizeof(err)) < 0) {
                fprintf(stderr, "sluice: %s\n", err);
                goto out_workers;
            }
        }
    }
    for (int i = 0; i < a.nworkers; i++) {
        if (worker_start(a.workers[i], err, sizeof(err)) < 0) {
            fprintf(stderr, "sluice: %s\n", err);
            for (int j = 0; j < i; j++)
                worker_stop(a.workers[j]);
            goto out_workers;
        }
    }
    /* sluice.config{admin = {...}}: flags win. */
    if (!o.admin_listen) o.admin_listen = cfg.admin_listen;
    if (!o.admin_token_file && !getenv("SLUICE_ADMIN_TOKEN"))
        o.admin_token_file = cfg.admin_token_file;
    if (o.admin_listen) {
        char *token = NULL;
        const char *env = getenv("SLUICE_ADMIN_TOKEN");
        if (o.admin_token_file &&
            !(token = adm_read_token_file(o.admin_token_file, err, sizeof(err)))) {
            fprintf(stderr, "sluice: %s\n", err);
            goto out_stop;
        }
        if (!token && env && *env && !(token = strdup(env))) goto out_stop;
        adm_opts ao = {.listen = o.admin_listen,
                       .token = token,
                       .workers = a.workers,
                       .nworkers = a.nworkers,
                       .store = st,
                       .limits = &cfg.limits};
        a.admin = adm_start(&ao, err, sizeof(err));
        free(token);
        if (!a.admin) {
            fprintf(stderr, "sluice: --admin-listen: %s\n", err);
            goto out_stop;
        }
    }
    if (o.watch) {
        if (!o.app) {
            LOG_KV(LOG_WARN, "--watch: the built-in app has no file to watch");
        } else {
            ev_stat_init(&a.script_stat, on_script_changed, o.app, 1.0);
            a.script_stat.data = &a;
            ev_stat_start(a.loop, &a.script_stat);
            ev_init(&a.watch_settle, on_watch_settled);
            a.watch_settle.data = &a;
            const struct stat *now = &a.script_stat.attr;
            if (have_loaded_stat &&
                (now->st_ino != loaded_stat.st_ino || now->st_size != loaded_stat.st_size ||
                 now->st_mtim.tv_sec != loaded_stat.st_mtim.tv_sec ||
                 now->st_mtim.tv_nsec != loaded_stat.st_mtim.tv_nsec))
                on_script_changed(a.loop, &a.script_stat, 0); /* changed while starting */
        }
    }
    char alloc[32];
    LOG_KV(LOG_INFO, "sluice started", LOG_S("version", SLUICE_VERSION),
           LOG_S("allocator", allocator_name(alloc, sizeof(alloc))),
           LOG_S("app", o.app ? o.app : "scripts/default.lua"), LOG_S("data", data_dir),
           LOG_I("workers", nworkers));
    ev_run(a.loop, 0);
    rc = 0;
    if (0) {
    out_stop:
        for (int i = 0; i < a.nworkers; i++)
            worker_stop(a.workers[i]);
    }
out_workers:
    /* The admin thread posts jobs to the workers: it goes first. */
    adm_free(a.admin);
    a.admin = NULL;
    /* Each worker ends once its connections are gone and its publishes are
     * acknowledged; then the writer commits whatever is left. */
    for (int i = 0; i < a.nworkers; i++)
        worker_free(a.workers[i]);
    a.nworkers = 0;
    ev_signal_stop(a.loop, &a.sighup);
    ev_signal_stop(a.loop, &a.sigterm);
    ev_signal_stop(a.loop, &a.sigint);
    ev_async_stop(a.loop, &a.reloaded);
    if (o.watch && o.app) {
        ev_stat_stop(a.loop, &a.script_stat);
        ev_timer_stop(a.loop, &a.watch_settle);
    }
out:
    lxs_cluster_stop();
    hub_bus_close(bus);
    if (first_app) lx_app_release(first_app);
    hub_free(first_hub);
    lx_config_free(&cfg);
    if (st) store_close(st);
    if (rc == 0) LOG_KV(LOG_INFO, "stopped");
    return rc;
}
