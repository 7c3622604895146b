/* utf8.h: strict, incremental UTF-8 validation.
 *
 * WebSocket text messages arrive in fragments split anywhere, and RFC 6455
 * wants a connection failed as soon as the bytes so far cannot be valid
 * UTF-8, so the validator is a tiny DFA whose whole state is one byte the
 * caller keeps between chunks.  The DFA rejects at the first byte that no
 * valid continuation can follow (an overlong lead such as E0 80, a surrogate
 * such as ED A0, anything past U+10FFFF such as F4 90), not at the end of the
 * sequence.  The same code serves the one-shot check that picks text or
 * binary frames for every published message, so it skips ASCII a word at a
 * time.
 *
 * Strict means RFC 3629: no overlong forms, no UTF-16 surrogates
 * (U+D800..U+DFFF), nothing above U+10FFFF, no C0/C1/F5..FF bytes. */
#ifndef SLUICE_CORE_UTF8_H
#define SLUICE_CORE_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Validator state: treat as opaque, copy freely.  Zero-initialised (or after
 * utf8_init) it is at a code-point boundary with nothing seen. */
typedef struct utf8_state {
    uint8_t s;
} utf8_state;

/* What utf8_feed found, for all the bytes fed since utf8_init. */
typedef enum utf8_result {
    UTF8_OK = 0,         /* valid so far and ends on a code-point boundary */
    UTF8_INCOMPLETE = 1, /* valid so far but ends inside a sequence */
    UTF8_INVALID = -1,   /* no continuation can make it valid; sticky */
} utf8_result;

/* utf8_init: reset st to the start of a new text. */
void utf8_init(utf8_state *st);

/* utf8_feed: validate the next len bytes of a text (len may be 0; data may
 * be NULL when len is 0).  Returns the verdict for everything fed so far.
 * Once UTF8_INVALID, further feeds return UTF8_INVALID without reading data
 * until utf8_init. */
utf8_result utf8_feed(utf8_state *st, const void *data, size_t len);

/* utf8_state_result: the verdict of st without feeding (as utf8_feed(st,
 * NULL, 0) would return).  A text is complete and valid iff this is UTF8_OK. */
utf8_result utf8_state_result(const utf8_state *st);

/* utf8_valid: true iff the len bytes at data are a whole valid UTF-8 text
 * (the empty text is valid). */
bool utf8_valid(const void *data, size_t len);

#endif
