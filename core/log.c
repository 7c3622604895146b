/* log.c: formatting of log lines into one stack buffer, then one write(). */
#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static log_level log_threshold = LOG_INFO;
static log_format log_fmt = LOG_TEXT;
static const char *level_names[] = {"debug", "info", "warn", "error", "off"};

void log_setup(log_level level, log_format format)
{
    log_threshold = level;
    log_fmt = format;
}

int log_level_parse(const char *s)
{
    for (int i = LOG_DEBUG; i <= LOG_OFF; i++)
        if (strcasecmp(s, level_names[i]) == 0) return i;
    if (strcasecmp(s, "warning") == 0) return LOG_WARN;
    return -1;
}

bool log_enabled(log_level level)
{
    return level >= log_threshold && level < LOG_OFF;
}

typedef struct line {
    char buf[8192];
    size_t len;
} line;

static void put(line *l, const char *s, size_t n)
{
    size_t room = sizeof(l->buf) - 2 - l->len; /* keep room for "\n" */
    if (n > room) n = room;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void puts_(line *l, const char *s)
{
    put(l, s, strlen(s));
}

static void putf(line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(line *l, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t room = sizeof(l->buf) - 2 - l->len;
    int n = vsnprintf(l->buf + l->len, room, fmt, ap);
    va_end(ap);
    if (n > 0) l->len += (size_t)n < room ? (size_t)n : room - 1;
}

static void put_json_str(line *l, const char *s, size_t n)
{
    put(l, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            put(l, e, 2);
        } else if (c == '\n') {
            put(l, "\\n", 2);
        } else if (c == '\t') {
            put(l, "\\t", 2);
        } else if (c < 0x20 || c == 0x7f) {
            putf(l, "\\u%04x", c);
        } else {
            put(l, (const char *)&c, 1);
        }
    }
    put(l, "\"", 1);
}

/* Text values are quoted when they hold spaces, quotes or control bytes, so
 * `k=v` pairs stay machine-splittable; multi-line values (tracebacks) keep
 * their newlines escaped as \n. */
static void put_text_value(line *l, const char *s, size_t n)
{
    bool quote = n == 0;
    for (size_t i = 0; i < n && !quote; i++)
        if (s[i] == ' ' || s[i] == '"' || (unsigned char)s[i] < 0x20 || s[i] == '=') quote = true;
    if (!quote) {
        put(l, s, n);
        return;
    }
    put_json_str(l, s, n);
}

static void put_timestamp(line *l)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    putf(l, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
         tm.tm_hour, tm.tm_min, tm.tm_sec, (long)(tv.tv_usec / 1000));
}

void log_fields(log_level level, const char *msg, const log_field *f, int n)
{
    if (!log_enabled(level)) return;
    line l;
    l.len = 0;
    if (log_fmt == LOG_JSON) {
        puts_(&l, "{\"ts\":\"");
        put_timestamp(&l);
        putf(&l, "\",\"level\":\"%s\",\"msg\":", level_names[level]);
        put_json_str(&l, msg, strlen(msg));
        for (int i = 0; i < n; i++) {
            put(&l, ",", 1);
            put_json_str(&l, f[i].key, strlen(f[i].key));
            put(&l, ":", 1);
            if (f[i].type == LF_STR) {
                const char *s = f[i].v.s ? f[i].v.s : "";
                put_json_str(&l, s, f[i].slen >= 0 ? (size_t)f[i].slen : strlen(s));
            } else if (f[i].type == LF_INT) {
                putf(&l, "%lld", f[i].v.i);
            } else {
                putf(&l, "%.3f", f[i].v.d);
            }
        }
        put(&l, "}", 1);
    } else {
        put_timestamp(&l);
        putf(&l, " %s ", level_names[level]);
        puts_(&l, msg);
        for (int i = 0; i < n; i++) {
            putf(&l, " %s=", f[i].key);
            if (f[i].type == LF_STR) {
                const char *s = f[i].v.s ? f[i].v.s : "";
                put_text_value(&l, s, f[i].slen >= 0 ? (size_t)f[i].slen : strlen(s));
            } else if (f[i].type == LF_INT) {
                putf(&l, "%lld", f[i].v.i);
            } else {
                putf(&l, "%.3f", f[i].v.d);
            }
        }
    }
    l.buf[l.len++] = '\n';
    ssize_t w = write(STDERR_FILENO, l.buf, l.len);
    (void)w;
}

void log_printf(log_level level, const char *fmt, ...)
{
    if (!log_enabled(level)) return;
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    log_fields(level, msg, NULL, 0);
}
