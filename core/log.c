/* log.c: formatting of log lines into one stack buffer, then one write():
 * of the line, or, on a thread that batches (a worker), of the lines of a
 * loop pass.  Formatting avoids stdio: an access line per request is the
 * most frequent thing sluice writes. */
#include "core/log.h"

#include "core/defs.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
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
    return SL_EINVAL;
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

/* Numbers by hand: vsnprintf was most of an access line's cost. */
static void put_int(line *l, long long v)
{
    char d[24], *p = d + sizeof d;
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) *--p = '-';
    put(l, p, (size_t)(d + sizeof d - p));
}

/* Three decimals, as "%.3f" prints them, rounded half away from zero. */
static void put_fixed3(line *l, double v)
{
    /* NaN, infinities, huge values: the slow way (DBL_MAX has 309 digits). */
    if (!(v > -1e15 && v < 1e15)) {
        char b[320];
        int n = snprintf(b, sizeof b, "%.3f", v);
        if (n > 0) put(l, b, (size_t)n < sizeof b ? (size_t)n : sizeof b - 1);
        return;
    }
    if (signbit(v)) { /* "-0.000" too, as printf has it */
        put(l, STRLIT("-"));
        v = -v;
    }
    unsigned long long a = (unsigned long long)(v * 1000.0 + 0.5);
    put_int(l, (long long)(a / 1000));
    char frac[4] = {'.', (char)('0' + a / 100 % 10), (char)('0' + a / 10 % 10),
                    (char)('0' + a % 10)};
    put(l, frac, 4);
}

static void put_json_str(line *l, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    put(l, STRLIT("\""));
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            put(l, e, 2);
        } else if (c == '\n') {
            put(l, STRLIT("\\n"));
        } else if (c == '\t') {
            put(l, STRLIT("\\t"));
        } else if (c < 0x20 || c == 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(l, e, 6);
        } else {
            put(l, (const char *)&c, 1);
        }
    }
    put(l, STRLIT("\""));
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

static void put_2(char *p, int v)
{
    p[0] = (char)('0' + v / 10 % 10);
    p[1] = (char)('0' + v % 10);
}

/* The date and time to the second change once a second: each thread keeps
 * the last one formatted and adds the milliseconds. */
static __thread struct {
    time_t sec;
    char text[20]; /* 2026-11-24T06:30:00 */
} ts_cache = {-1, ""};

static void put_timestamp(line *l)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != ts_cache.sec) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        char *t = ts_cache.text;
        int year = tm.tm_year + 1900;
        if (year < 0 || year > 9999) year = 0;
        put_2(t, year / 100);
        put_2(t + 2, year % 100);
        t[4] = '-';
        put_2(t + 5, tm.tm_mon + 1);
        t[7] = '-';
        put_2(t + 8, tm.tm_mday);
        t[10] = 'T';
        put_2(t + 11, tm.tm_hour);
        t[13] = ':';
        put_2(t + 14, tm.tm_min);
        t[16] = ':';
        put_2(t + 17, tm.tm_sec);
        ts_cache.sec = ts.tv_sec;
    }
    int ms = (int)(ts.tv_nsec / 1000000);
    char frac[5] = {'.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10),
                    'Z'};
    put(l, ts_cache.text, 19);
    put(l, frac, 5);
}

static void write_out(const char *p, size_t n)
{
    ssize_t w = write(STDERR_FILENO, p, n);
    (void)w; /* nowhere to report a failed log write */
}

/* Lines of every thread come out in time order: a line's timestamp is
 * rewritten, under one process-wide lock, with the time its write() is
 * made, and writes are made under that lock.  A worker's line is thus
 * stamped when its loop pass writes it, at most one pass after the event
 * (durations in the line are measured, not derived from it). */
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

/* Where a line's 24 bytes of timestamp sit: first in text, after
 * {"ts":" in JSON. */
static size_t ts_offset(void)
{
    return log_fmt == LOG_JSON ? 7 : 0;
}

/* Writes lines, each starting at one of starts[0..n) in p, with their
 * timestamps set to now. */
static void write_stamped(char *p, size_t len, const uint16_t *starts, size_t n)
{
    pthread_mutex_lock(&out_lock);
    line now;
    now.len = 0;
    put_timestamp(&now);
    for (size_t i = 0; i < n; i++)
        if (starts[i] + ts_offset() + 24 <= len) memcpy(p + starts[i] + ts_offset(), now.buf, 24);
    write_out(p, len);
    pthread_mutex_unlock(&out_lock);
}

/* A thread that batches keeps its info and debug lines here until
 * log_flush, at most PIPE_BUF bytes, so that one write() of whole lines
 * stays atomic on a pipe and cannot interleave with another thread's. */
static __thread struct {
    bool on;
    size_t len;
    uint16_t nlines;
    uint16_t starts[PIPE_BUF / 25]; /* a line is at least a timestamp and \n */
    char buf[PIPE_BUF];
} batch;

void log_batch_begin(void)
{
    batch.on = true;
}

void log_flush(void)
{
    if (batch.len) write_stamped(batch.buf, batch.len, batch.starts, batch.nlines);
    batch.len = 0;
    batch.nlines = 0;
}

static void emit(log_level level, char *p, size_t n)
{
    if (!batch.on || level > LOG_INFO || n > sizeof batch.buf) {
        log_flush(); /* this thread's lines stay in order */
        static const uint16_t first = 0;
        write_stamped(p, n, &first, 1);
        return;
    }
    if (batch.len + n > sizeof batch.buf ||
        batch.nlines == sizeof batch.starts / sizeof batch.starts[0])
        log_flush();
    batch.starts[batch.nlines++] = (uint16_t)batch.len;
    memcpy(batch.buf + batch.len, p, n);
    batch.len += n;
}

void log_fields(log_level level, const char *msg, const log_field *f, int n)
{
    if (!log_enabled(level)) return;
    line l;
    l.len = 0;
    if (log_fmt == LOG_JSON) {
        puts_(&l, "{\"ts\":\"");
        put_timestamp(&l);
        puts_(&l, "\",\"level\":\"");
        puts_(&l, level_names[level]);
        puts_(&l, "\",\"msg\":");
        put_json_str(&l, msg, strlen(msg));
        for (int i = 0; i < n; i++) {
            put(&l, STRLIT(","));
            put_json_str(&l, f[i].key, strlen(f[i].key));
            put(&l, STRLIT(":"));
            if (f[i].type == LF_STR) {
                const char *s = f[i].v.s ? f[i].v.s : "";
                put_json_str(&l, s, f[i].slen >= 0 ? (size_t)f[i].slen : strlen(s));
            } else if (f[i].type == LF_INT) {
                put_int(&l, f[i].v.i);
            } else {
                put_fixed3(&l, f[i].v.d);
            }
        }
        put(&l, STRLIT("}"));
    } else {
        put_timestamp(&l);
        put(&l, STRLIT(" "));
        puts_(&l, level_names[level]);
        put(&l, STRLIT(" "));
        puts_(&l, msg);
        for (int i = 0; i < n; i++) {
            put(&l, STRLIT(" "));
            puts_(&l, f[i].key);
            put(&l, STRLIT("="));
            if (f[i].type == LF_STR) {
                const char *s = f[i].v.s ? f[i].v.s : "";
                put_text_value(&l, s, f[i].slen >= 0 ? (size_t)f[i].slen : strlen(s));
            } else if (f[i].type == LF_INT) {
                put_int(&l, f[i].v.i);
            } else {
                put_fixed3(&l, f[i].v.d);
            }
        }
    }
    l.buf[l.len++] = '\n';
    emit(level, l.buf, l.len);
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

bool log_limit_pass_at(log_limit *l, long long now_ms, double interval,
                       unsigned long long *suppressed)
{
    long long next = __atomic_load_n(&l->next_ms, __ATOMIC_RELAXED);
    long long want = now_ms + (long long)(interval * 1000.0);
    if (now_ms < next ||
        !__atomic_compare_exchange_n(&l->next_ms, &next, want, false, __ATOMIC_RELAXED,
                                     __ATOMIC_RELAXED)) {
        __atomic_add_fetch(&l->suppressed, 1, __ATOMIC_RELAXED);
        return false;
    }
    unsigned long long n = __atomic_exchange_n(&l->suppressed, 0, __ATOMIC_RELAXED);
    if (suppressed) *suppressed = n;
    return true;
}

bool log_limit_pass(log_limit *l, double interval, unsigned long long *suppressed)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    /* +1: a zeroed limit (next_ms 0) lets the first line through at once. */
    long long now_ms = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + 1;
    return log_limit_pass_at(l, now_ms, interval, suppressed);
}
