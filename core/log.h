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

/* Parses "debug", "info", "warn", "error"; returns -1 if unknown. */
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

#define LOG_KV(level, msg, ...)                                                                    \
    do {                                                                                           \
        if (log_enabled(level)) {                                                                  \
            const log_field log_kv_f_[] = {__VA_ARGS__};                                           \
            log_fields((level), (msg), log_kv_f_, (int)(sizeof(log_kv_f_) / sizeof(log_field)));   \
        }                                                                                          \
    } while (0)

#endif
