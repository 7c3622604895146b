/* fuzz_wal.c: libFuzzer target for the log's record codec (storage/wal.c).
 * The input is a salt (8 bytes) and a log file's bytes.  Decoding walks it
 * as a replay does; every record it accepts must lie within the input and
 * encode back to the same bytes (a record of the first format, which is
 * decoded but no longer written, must have that format's size). */
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
        if (n > size || n % 8) abort();
        if (n != wal_rec_size(r.topic_len, r.event_len, r.data_len, r.ikey_len)) {
            /* The first format: 56-byte header, no key, no flags. */
            if (r.ikey_len || r.flags || n != ((56 + r.topic_len + r.event_len + r.data_len + 7) & ~(size_t)7))
                abort();
            data += n;
            size -= n;
            continue;
        }
        unsigned char *again = malloc(n);
        if (!again) return 0;
        if (wal_rec_encode(again, &r, salt) != n || memcmp(again, data, n)) abort();
        free(again);
        data += n;
        size -= n;
    }
    return 0;
}
