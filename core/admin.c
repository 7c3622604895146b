/* admin.c: the read-only operator commands, `sluice topics` and `sluice
 * dump TOPIC [--since ID]`.  They open the data directory read-only (LMDB
 * allows that beside a running server) and print one line per topic or one
 * JSON object per message, so their output pipes into jq or grep. */
#include "core/admin.h"

#include "core/jsonenc.h"
#include "core/utf8.h"
#include "storage/store.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int open_ro(const char *dir, struct store **st)
{
    char err[512] = "";
    struct store_opts so = {.read_only = 1};
    int rc = store_open(st, dir, &so, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "sluice: %s: %s\n", dir, err[0] ? err : store_errmsg(rc));
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
                    "       sluice dump TOPIC [--since ID] [-d DIR]\n");
}

int admin_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"data", required_argument, NULL, 'd'},
        {"since", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cmd = argv[1];
    const char *dir = "./sluice-data", *since = NULL;
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
        case 'h':
            admin_usage();
            return 0;
        default:
            admin_usage();
            return 1;
        }
    }
    struct store *st;
    if (strcmp(cmd, "topics") == 0) {
        if (optind != argc || since) {
            admin_usage();
            return 1;
        }
        if (open_ro(dir, &st) < 0) return 1;
        printf("# topic\tmessages\toldest_id\tnewest_id\n");
        int rc = store_topics(st, print_topic, NULL);
        store_close(st);
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
        fprintf(stderr, "sluice: %s\n", store_errmsg(rc));
        return 1;
    }
    if (!info.exists) fprintf(stderr, "sluice: no topic named %s\n", topic);
    return info.exists ? 0 : 1;
}
