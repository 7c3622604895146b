/* b64.h: standard base64 (RFC 4648 section 4, "+/" alphabet, with padding).
 *
 * Data that is not valid UTF-8 crosses the text-only transports (SSE, JSON)
 * base64-encoded, once per message for every subscriber, so the encoder
 * writes into a buffer the caller sized with b64_encoded_size and never
 * allocates.  The decoder is strict (RFC 4648 section 3.3 and 3.5): no
 * whitespace, no missing padding, no non-zero pad bits, so every byte string
 * has exactly one accepted encoding and a client's bytes are never guessed
 * at. */
#ifndef SLUICE_CORE_B64_H
#define SLUICE_CORE_B64_H

#include <stddef.h>
#include <sys/types.h>

#include "core/err.h"

/* Errors: SL_E* codes of core/err.h, named with each function. */

/* b64_encoded_size: the exact number of characters b64_encode writes for len
 * input bytes, 4 * ceil(len / 3) (no terminating NUL).  len must be at most
 * SIZE_MAX / 4 * 3 - 2 (far above anything a message can hold). */
static inline size_t b64_encoded_size(size_t len)
{
    return (len + 2) / 3 * 4;
}

/* b64_encode: writes the base64 text of the len bytes at in (in may be NULL
 * when len is 0) to out, no NUL added.  Returns the number of characters
 * written (b64_encoded_size(len)), or SL_ESPACE when cap is smaller than
 * that, in which case nothing is written.  in and out must not overlap. */
ssize_t b64_encode(char *out, size_t cap, const void *in, size_t len);

/* b64_decoded_max: an upper bound on the bytes b64_decode produces from len
 * characters, len / 4 * 3; exact unless the text ends in padding (then 1 or
 * 2 less). */
static inline size_t b64_decoded_max(size_t len)
{
    return len / 4 * 3;
}

/* b64_decode: decodes the len characters at in (in may be NULL when len is
 * 0) to out.  The text must be canonical padded base64: len a multiple of 4,
 * only "A-Za-z0-9+/", "=" only as the last one or two characters, and the
 * bits the padding leaves over zero.  Returns the number of bytes written,
 * SL_EINPUT when the text breaks a rule (out may then hold partial output),
 * or SL_ESPACE when cap < the decoded size (nothing written); cap >=
 * b64_decoded_max(len) always suffices.  in and out must not overlap. */
ssize_t b64_decode(void *out, size_t cap, const char *in, size_t len);

#endif
