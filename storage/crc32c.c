/* crc32c.c: CRC-32C behind crc32c.h, reflected, polynomial 0x82F63B78.
 * The hardware path is chosen once, at the first call. */
#include "storage/crc32c.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static uint32_t crc_table[256];

static uint32_t crc_by_table(uint32_t c, const unsigned char *p, size_t n)
{
    while (n--)
        c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define HAVE_CRC32C_SSE42 1

__attribute__((target("sse4.2"))) static uint32_t crc_by_sse42(uint32_t c, const unsigned char *p,
                                                               size_t n)
{
    uint64_t c64 = c;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c64 = _mm_crc32_u64(c64, v);
    }
    c = (uint32_t)c64;
    while (n--)
        c = _mm_crc32_u8(c, *p++);
    return c;
}
#endif

static uint32_t (*crc_fn)(uint32_t c, const unsigned char *p, size_t n) = crc_by_table;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
        crc_table[i] = c;
    }
#ifdef HAVE_CRC32C_SSE42
    if (!getenv("SLUICE_NO_SSE42") && __builtin_cpu_supports("sse4.2")) crc_fn = crc_by_sse42;
#endif
}

uint32_t crc32c_update(uint32_t crc, const void *p, size_t n)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, crc_init);
    return crc_fn(crc, p, n);
}
