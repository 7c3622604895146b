/* admin.c: the read-only operator commands, `sluice topics`, `sluice
 * dump TOPIC [--since ID]` and `sluice check`.  They open the data
 * directory read-only (LMDB allows that beside a running server) and print
 * one line per topic, one JSON object per message, or one line per problem
 * found, so their output pipes into jq or grep.  Also the server's side of
 * a damaged store: the log line for a damaged message a read skipped, and
 * a last word on SIGBUS. */
#include "cmd/admin.h"

#include "core/jsonenc.h"
#include "core/log.h"
#include "core/utf8.h"
#include "storage/store.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void admin_log_damage(void *ud, const struct store_damage *d)
{
    (void)ud;
    static log_limit lim = LOG_LIMIT_INIT;
    LOG_KV_LIMITED(&lim, 10.0, LOG_ERROR,
                   "storage: damaged data skipped, readers told of a gap; run sluice check",
                   LOG_S("what", d->what), LOG_SN("topic", d->topic ? d->topic : "", d->topic_len),
                   LOG_I("seq", d->seq));
}

/* The SIGBUS line, made at install time: the handler may only write(). */
static char bus_msg[1024];
static size_t bus_len;

static void on_bus_error(int sig)
{
    ssize_t w = write(STDERR_FILENO, bus_msg, bus_len);
    (void)w;
    signal(sig, SIG_DFL);
    raise(sig);
}

void admin_catch_bus_errors(const char *dir)
{
    int n = snprintf(bus_msg, sizeof bus_msg,
                     "sluice: bus error (SIGBUS) reading a mapped file: %s/data.mdb is shorter "
                     "than its pages or the disk failed a read; `sluice check -d %s` tells more\n",
                     dir, dir);
    bus_len = n < 0 ? 0 : (size_t)n < sizeof bus_msg ? (size_t)n : sizeof bus_msg - 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_bus_error;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    sigaction(SIGBUS, &sa, NULL);
}

/* Reads in `sluice dump` and `sluice topics` skip a damaged message (and
 * the rest of a topic behind a damaged page): say so on stderr. */
static int damage_seen;

static void print_damage(void *ud, const struct store_damage *d)
{
    (void)ud;
    damage_seen++;
    fprintf(stderr, "sluice: topic %.*s: %s (seq %llu): skipped, see sluice check\n",
            (int)d->topic_len, d->topic ? d->topic : "", d->what, (unsigned long long)d->seq);
}

static int open_ro(const char *dir, struct store **st)
{
    char err[512] = "";
    struct store_opts so = {.read_only = 1, .damage = print_damage};
    admin_catch_bus_errors(dir);
    int rc = store_open(st, dir, &so, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "sluice: %s: %s\n", dir, err[0] ? err : err_str(rc));
        return -1;
    }
    return 0;
}

static int print_topic(void *ud, const struct store_topic_info *t)
{
    char first[STORE_ID_MAX] = "-", last[STORE_ID_MAX] = "-";
    if (t->first_seq) store_id_format(t->first_epoch, t->first_seq, first);
    if (t->last_seq) store_id_format(t->last_epoch, t->last_seq, last);
    printf("%.*s\t%llu\t%s\t%s\n", (int)t->name_len, t->name, (unsigned long long)t->count, first,
           last);
    return 0;
}

static int print_message(void *ud, const struct store_view *v)
{
    const char *topic = ud;
    char id[STORE_ID_MAX];
    size_t idlen = store_id_format(v->epoch, v->seq, id);
    bool binary = !utf8_valid(v->data, v->data_len);
    bool event_ok = v->event_len && utf8_valid(v->event, v->event_len);
    struct json_msg m = {
        .id = id,
        .id_len = idlen,
        .topic = topic,
        .topic_len = strlen(topic),
        .event = event_ok ? v->event : NULL,
        .event_len = event_ok ? v->event_len : 0,
        .data = v->data,
        .data_len = v->data_len,
        .flags = JSON_MSG_TOPIC | (binary ? JSON_MSG_BASE64 : 0),
    };
    size_t n = json_msg_size(&m);
    char *out = malloc(n);
    if (!out || json_msg_encode(out, n, &m) != (ssize_t)n) {
        free(out);
        return 1;
    }
    fwrite(out, 1, n, stdout);
    printf("\n");
    free(out);
    return 0;
}

static void admin_usage(void)
{
    fprintf(stderr, "usage: sluice topics [-d DIR]\n"
                    "       sluice dump TOPIC [--since ID] [-d DIR]\n"
                    "       sluice check [--repair] [-d DIR]\n");
}

static void print_problem(void *ud, const char *problem)
{
    (void)ud;
    printf("  problem: %s\n", problem);
}

/* sluice check: every message's checksum and LMDB's structure as far as a
 * walk of every key reaches, and the logs as a read-write open would judge
 * them.  Exit 0 when clean, 1 otherwise. */
static int check_once(const char *dir, uint64_t *log_damage)
{
    struct store *st;
    char err[512] = "";
    struct store_opts so = {.read_only = 1, .damage = print_damage};
    admin_catch_bus_errors(dir);
    *log_damage = 0;
    printf("sluice check %s\n", dir);
    int rc = store_open(&st, dir, &so, err, sizeof(err));
    if (rc != 0) {
        printf("  problem: %s\nresult: cannot open the store: %s\n", err[0] ? err : "",
               err_str(rc));
        return 1;
    }
    struct store_verify_report r;
    struct store_log_report lr;
    rc = store_verify(st, print_problem, NULL, &r);
    int lrc = rc ? 0 : store_log_check(st, print_problem, NULL, &lr);
    store_close(st);
    if (rc != 0 || lrc != 0) {
        printf("result: the check failed: %s\n", err_str(rc ? rc : lrc));
        return 1;
    }
    printf("  data.mdb: %llu topics, %llu messages, %llu damaged\n", (unsigned long long)r.topics,
           (unsigned long long)r.messages, (unsigned long long)r.bad_messages);
    printf("  logs: %llu messages to replay, %llu records of a cut write, %s\n",
           (unsigned long long)lr.pending, (unsigned long long)lr.torn,
           lr.damaged ? "damaged" : "sound");
    uint64_t problems = r.problems + (lr.damaged ? 1 : 0);
    if (lr.damaged) *log_damage = 1 + lr.stranded;
    if (problems == 0) {
        printf("result: clean\n");
        return 0;
    }
    printf("result: %llu problems\n", (unsigned long long)problems);
    return 1;
}

/* sluice check --repair: damaged logs are replayed keeping every good
 * record (store_opts.salvage: a read-write open, so no server may run on
 * the directory), then the store is checked again. */
static int check_main(const char *dir, bool repair)
{
    uint64_t log_damage;
    int rc = check_once(dir, &log_damage);
    if (!repair || !log_damage) return rc;
    struct store *st;
    char err[512] = "";
    struct store_opts so = {.salvage = 1, .damage = print_damage};
    printf("sluice check --repair: replaying the logs, keeping every good record\n");
    int orc = store_open(&st, dir, &so, err, sizeof(err));
    if (orc != 0) {
        printf("result: the repair failed: %s\n", err[0] ? err : err_str(orc));
        return 1;
    }
    store_close(st);
    return check_once(dir, &log_damage);
}

int admin_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"data", required_argument, NULL, 'd'},
        {"since", required_argument, NULL, 's'},
        {"repair", no_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cmd = argv[1];
    const char *dir = "./sluice-data", *since = NULL;
    bool repair = false;
    int ch;
    optind = 2;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "d:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'd':
            dir = optarg;
            break;
        case 's':
            since = optarg;
            break;
        case 'r':
            repair = true;
            break;
        case 'h':
            admin_usage();
            return 0;
        default:
            admin_usage();
            return 1;
        }
    }
    struct store *st;
    if (strcmp(cmd, "check") == 0) {
        if (optind != argc || since) {
            admin_usage();
            return 1;
        }
        return check_main(dir, repair);
    }
    if (repair) {
        admin_usage();
        return 1;
    }
    if (strcmp(cmd, "topics") == 0) {
        if (optind != argc || since) {
            admin_usage();
            return 1;
        }
        if (open_ro(dir, &st) < 0) return 1;
        printf("# topic\tmessages\toldest_id\tnewest_id\n");
        int rc = store_topics(st, print_topic, NULL);
        store_close(st);
        if (rc != 0) fprintf(stderr, "sluice: %s: %s\n", dir, err_str(rc));
        return rc == 0 ? 0 : 1;
    }
    if (optind != argc - 1) {
        admin_usage();
        return 1;
    }
    const char *topic = argv[optind];
    if (open_ro(dir, &st) < 0) return 1;
    uint64_t after = 0;
    if (since && store_id_parse(st, since, strlen(since), &after) != 0) {
        fprintf(stderr, "sluice: %s: not an ID of this data directory\n", since);
        store_close(st);
        return 1;
    }
    struct store_read_info info;
    int rc = store_read(st, topic, strlen(topic), after, 0, print_message, (void *)topic, &info);
    store_close(st);
    if (rc != 0) {
        fprintf(stderr, "sluice: %s\n", err_str(rc));
        return 1;
    }
    if (!info.exists) fprintf(stderr, "sluice: no topic named %s\n", topic);
    return info.exists && !damage_seen ? 0 : 1;
}
