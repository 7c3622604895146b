/* check.h: the smallest test harness that serves the unit tests.
 *
 * CHECK(cond) records a failure with file:line and goes on, so one run shows
 * every broken case; CHECK_EQ_INT/CHECK_EQ_MEM print both sides.  main()
 * ends with CHECK_DONE(), which prints "N passed, N failed" and returns the
 * exit status ctest reads. */
#ifndef SLUICE_TEST_CHECK_H
#define SLUICE_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_passed, check_failed;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (cond) {                                                                                \
            check_passed++;                                                                        \
        } else {                                                                                   \
            check_failed++;                                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                         \
    do {                                                                                           \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);                            \
        if (check_a_ == check_b_) {                                                                \
            check_passed++;                                                                        \
        } else {                                                                                   \
            check_failed++;                                                                        \
            fprintf(stderr, "%s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, #a, #b,  \
                    check_a_, check_b_);                                                           \
        }                                                                                          \
    } while (0)

#define CHECK_EQ_MEM(a, alen, b, blen)                                                             \
    do {                                                                                           \
        size_t check_al_ = (alen), check_bl_ = (blen);                                             \
        if (check_al_ == check_bl_ && memcmp((a), (b), check_al_) == 0) {                          \
            check_passed++;                                                                        \
        } else {                                                                                   \
            check_failed++;                                                                        \
            fprintf(stderr, "%s:%d: %s != %s (%zu vs %zu bytes): \"%.*s\" vs \"%.*s\"\n",         \
                    __FILE__, __LINE__, #a, #b, check_al_, check_bl_, (int)check_al_,              \
                    (const char *)(a), (int)check_bl_, (const char *)(b));                         \
        }                                                                                          \
    } while (0)

#define CHECK_STR(a, b) CHECK_EQ_MEM((a), strlen(a), (b), strlen(b))

/* A fixed-seed xorshift generator for random cases: every run draws the
 * same inputs, so a failure repeats. */
static inline unsigned check_rnd(void)
{
    static unsigned long long s = 0x9e3779b97f4a7c15ull;
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return (unsigned)s;
}

#define CHECK_DONE()                                                                               \
    (printf("%d passed, %d failed\n", check_passed, check_failed), check_failed ? 1 : 0)

#endif
