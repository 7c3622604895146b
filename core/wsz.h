/* wsz.h: permessage-deflate's zlib side (RFC 7692 section 7.2): compress a
 * whole message once, and inflate a client's message chunk by chunk under
 * a hard cap on its inflated size.
 *
 * Both sides run without context takeover (see ws_deflate_params in
 * ws.h): a message is compressed from a fresh dictionary, so its one
 * compressed frame can go to every subscriber, and a client message is
 * inflated by a stream made at its first frame and freed at its last, so
 * an idle connection holds no zlib state.  The deflate stream is kept per
 * thread and reset per message (its tables are 256 KiB: making one per
 * message would cost more than compressing). */
#ifndef SLUICE_CORE_WSZ_H
#define SLUICE_CORE_WSZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

/* wsz_deflate_bound: room wsz_deflate wants in `out` for len bytes. */
size_t wsz_deflate_bound(size_t len);

/* wsz_deflate: compresses in[0..len) as one permessage-deflate payload
 * (raw deflate, 2^15 window, no context, the final 00 00 FF FF of the
 * sync flush taken off) into out (cap >= wsz_deflate_bound(len)).
 * Returns the compressed length, or SL_ENOMEM when zlib failed.  Any
 * thread; each uses its own stream. */
long wsz_deflate(const void *in, size_t len, uint8_t *out, size_t cap);

/* Results of wsz_inflate: SL_OK; SL_ELIMIT, the inflated message passed
 * the cap (close 1009); SL_EINPUT, not a valid deflate stream (close
 * 1007); SL_ENOMEM; SL_EGONE, the sink returned non-zero. */

typedef struct wsz_inflater wsz_inflater;

/* wsz_inflater_new: a stream for one compressed message (about 40 KiB
 * with its window, while the message lasts); NULL on no memory. */
wsz_inflater *wsz_inflater_new(void);
void wsz_inflater_free(wsz_inflater *z);

/* wsz_inflate: inflates the next `len` compressed bytes of the message;
 * `fin` on its last chunk (the 00 00 FF FF that the sender took off is put
 * back then).  The output goes to sink in chunks of at most 16 KiB, and
 * before any byte past `cap` bytes of inflated message in total (counted
 * in *total, which the caller zeroes at the message's start) it stops with
 * SL_ELIMIT: a zip bomb costs at most one chunk of work past the cap.
 * Data after the end of a final deflate block is SL_EINPUT. */
int wsz_inflate(wsz_inflater *z, const uint8_t *in, size_t len, bool fin, uint64_t cap,
                uint64_t *total, int (*sink)(void *ud, const uint8_t *data, size_t len),
                void *ud);

#endif
