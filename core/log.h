/* log.h: structured logging to stderr, as text or as one JSON object a line.
 *
 * A line is a level, a message and key/value fields.  Text lines read
 * `2026-11-24T06:30:00.123Z info access method=GET status=200`; JSON lines
 * hold `ts`, `level`, `msg` and the fields.  Lines are written whole, one
 * write() each or, on a thread that batches, several lines in one write()
 * of at most PIPE_BUF bytes, so lines from several threads never
 * interleave. */
#ifndef SLUICE_LOG_H
#define SLUICE_LOG_H

#include <stdbool.h>
#include <stdint.h>

#include "core/err.h"

typedef enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_OFF } log_level;
typedef enum log_format { LOG_TEXT, LOG_JSON } log_format;

typedef struct log_field {
    const char *key;
    enum { LF_STR, LF_INT, LF_DBL } type;
    union {
        const char *s;
        long long i;
        double d;
    } v;
    int slen; /* LF_STR: length, or -1 for NUL-terminated */
} log_field;

#define LOG_S(k, val) ((log_field){.key = (k), .type = LF_STR, .v.s = (val), .slen = -1})
#define LOG_SN(k, val, n) ((log_field){.key = (k), .type = LF_STR, .v.s = (val), .slen = (int)(n)})
#define LOG_I(k, val) ((log_field){.key = (k), .type = LF_INT, .v.i = (long long)(val)})
#define LOG_D(k, val) ((log_field){.key = (k), .type = LF_DBL, .v.d = (double)(val)})

/* Sets the threshold and the format; call before any thread logs. */
void log_setup(log_level level, log_format format);

/* Parses "debug", "info", "warn", "error"; returns SL_EINVAL if unknown. */
int log_level_parse(const char *s);

/* True when lines of `level` are written (skip building costly fields). */
bool log_enabled(log_level level);

/* Writes one line with `n` fields. */
void log_fields(log_level level, const char *msg, const log_field *fields, int n);

/* log_batch_begin: from now on the calling thread's info and debug lines
 * wait in a per-thread buffer (up to PIPE_BUF bytes) for log_flush, which
 * the thread must call at the end of each loop pass and before it exits:
 * an event loop then makes one write() a pass, not one a request.  Warn
 * and error lines flush the buffer and go out at once. */
void log_batch_begin(void);

/* log_flush: write what the calling thread's batch holds (if anything). */
void log_flush(void);

/* Writes one line whose message is formatted printf-style, no fields. */
void log_printf(log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A rate limit for one kind of line that a peer or a script can cause at
 * any rate (a refused request, a dropped message): one line per `interval`
 * seconds gets through, and the lines held back meanwhile are counted and
 * reported by the next line that passes.  Keep one log_limit per kind of
 * line, static and zero-initialised (LOG_LIMIT_INIT); any thread may use it
 * (relaxed atomics: two threads may both pass at the same instant, never
 * more). */
typedef struct log_limit {
    long long next_ms;             /* monotonic ms before which lines are held */
    unsigned long long suppressed; /* held back since the last line */
} log_limit;
#define LOG_LIMIT_INIT {0, 0}

/* True when a line may be written now; *suppressed (may be NULL) then
 * receives how many lines were held back since the last one (log it as a
 * field, LOG_I("suppressed", n)).  False (the line is counted as held back)
 * within `interval` seconds of the last line that passed. */
bool log_limit_pass(log_limit *l, double interval, unsigned long long *suppressed);

/* The same at a given time (monotonic milliseconds), for tests. */
bool log_limit_pass_at(log_limit *l, long long now_ms, double interval,
                       unsigned long long *suppressed);

/* LOG_KV for lines under a limit: adds the `suppressed` field when lines
 * were held back.  The limit is passed (and counts) even when `level` is
 * not logged, so that turning a level on does not report old counts. */
#define LOG_KV_LIMITED(lim, interval, level, msg, ...)                                             \
    do {                                                                                           \
        unsigned long long log_sup_;                                                               \
        if (log_limit_pass((lim), (interval), &log_sup_) && log_enabled(level)) {                  \
            const log_field log_kv_f_[] = {__VA_ARGS__, LOG_I("suppressed", log_sup_)};            \
            int log_kv_n_ = (int)(sizeof(log_kv_f_) / sizeof(log_field));                          \
            log_fields((level), (msg), log_kv_f_, log_sup_ ? log_kv_n_ : log_kv_n_ - 1);          \
        }                                                                                          \
    } while (0)

#define LOG_KV(level, msg, ...)                                                                    \
    do {                                                                                           \
        if (log_enabled(level)) {                                                                  \
            const log_field log_kv_f_[] = {__VA_ARGS__};                                           \
            log_fields((level), (msg), log_kv_f_, (int)(sizeof(log_kv_f_) / sizeof(log_field)));   \
        }                                                                                          \
    } while (0)

#endif
