/* fuzz_wal.c: libFuzzer target for the log's record codec (storage/wal.c).
 * The input is a salt (8 bytes) and a log file's bytes.  Decoding walks it
 * as a replay does; every record it accepts must lie within the input and
 * encode back to the same bytes. */
#include "storage/wal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    uint64_t salt;
    struct wal_rec r;
    size_t n;
    if (size < 8) return 0;
    memcpy(&salt, data, 8);
    data += 8;
    size -= 8;
    while ((n = wal_rec_decode(data, size, &r, salt)) > 0) {
        if (n > size || n % 8 || n != wal_rec_size(r.topic_len, r.event_len, r.data_len)) abort();
        unsigned char *again = malloc(n);
        if (!again) return 0;
        if (wal_rec_encode(again, &r, salt) != n || memcmp(again, data, n)) abort();
        free(again);
        data += n;
        size -= n;
    }
    return 0;
}
