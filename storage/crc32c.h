/* crc32c.h: CRC-32C (Castagnoli), the checksum of the store's messages.
 *
 * Why CRC-32C: x86-64 computes it with one instruction per 8 bytes
 * (SSE4.2), so checking every message read costs a few nanoseconds; a
 * table serves everywhere else, and both give the same value, so a store
 * moves between machines.  SLUICE_NO_SSE42 in the environment forces the
 * table (the tests run both).
 */
#ifndef SLUICE_CRC32C_H
#define SLUICE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* crc32c_update: continue a CRC over p[0..n).  Start with crc32c_begin(),
 * end with crc32c_end(); chained calls over pieces give the CRC of their
 * concatenation.  Pure, any thread. */
uint32_t crc32c_update(uint32_t crc, const void *p, size_t n);

static inline uint32_t crc32c_begin(void)
{
    return 0xFFFFFFFFu;
}

static inline uint32_t crc32c_end(uint32_t crc)
{
    return ~crc;
}

#endif
