/* defs.h: the few conventions every C module of sluice shares.
 *
 * - STRLIT(s): a string literal and its length, counted by the compiler
 *   (a hand-counted length was once wrong: "Retry-After: 1\r\n" sent as 15
 *   bytes).  Use it wherever a literal goes with its length; STR_IS and
 *   STR_STARTS (and their _CASE forms, ASCII case-insensitive) compare n
 *   bytes at p with a literal the same way.
 * - SLUICE_ASSERT(cond): an invariant of our own code.  Checked in the
 *   sanitizer and debug builds (SLUICE_ASSERTS), where a broken one aborts
 *   with the file and line; compiled out of release builds, which must not
 *   pay for checks on the hot path.  Never for what a peer sends: that is
 *   an error with a status or close code, not an abort.
 * - deadline_in_ms(ms): the absolute time pthread_cond_timedwait wants
 *   (CLOCK_REALTIME, a condition variable's default), ms from now. */
#ifndef SLUICE_DEFS_H
#define SLUICE_DEFS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define STRLIT(s) ("" s), (sizeof(s) - 1)
#define STR_IS(p, n, lit) ((size_t)(n) == sizeof(lit) - 1 && memcmp((p), "" lit, sizeof(lit) - 1) == 0)
#define STR_IS_CASE(p, n, lit)                                                                     \
    ((size_t)(n) == sizeof(lit) - 1 && strncasecmp((p), "" lit, sizeof(lit) - 1) == 0)
#define STR_STARTS(p, n, lit)                                                                      \
    ((size_t)(n) >= sizeof(lit) - 1 && memcmp((p), "" lit, sizeof(lit) - 1) == 0)
#define STR_STARTS_CASE(p, n, lit)                                                                 \
    ((size_t)(n) >= sizeof(lit) - 1 && strncasecmp((p), "" lit, sizeof(lit) - 1) == 0)

#if defined(SLUICE_ASSERTS) || !defined(NDEBUG)
#define SLUICE_ASSERT(cond)                                                                        \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)
#else
#define SLUICE_ASSERT(cond) ((void)0)
#endif

static inline struct timespec deadline_in_ms(long ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000;
    ts.tv_nsec %= 1000000000;
    return ts;
}

#endif
