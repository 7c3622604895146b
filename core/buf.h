/* buf.h: reference-counted byte buffers and the per-connection output queue.
 *
 * A message is encoded once per wire form into one buf_t; every subscriber's
 * output queue holds a reference to it plus an offset, so fan-out never copies
 * the payload.  Reference counts are atomic because a later multi-worker hub
 * hands the same buffer to several event-loop threads.
 *
 * outq_t is a ring of (buffer, offset, length) segments, allocated only while
 * the queue holds something: an idle connection keeps no memory here.  The
 * caller turns the head of the queue into an iovec array for one gathered
 * send. */
#ifndef SLUICE_BUF_H
#define SLUICE_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "core/err.h"

typedef struct buf {
    uint32_t refs; /* atomic */
    uint32_t len;  /* bytes used in data */
    char data[];
} buf_t;

/* Allocates a buffer of `len` bytes (contents undefined, len set) holding one
 * reference.  Returns NULL when out of memory or when len exceeds 4 GiB - 1. */
buf_t *buf_new(size_t len);

/* Allocates a buffer holding a copy of `data`.  NULL when out of memory. */
buf_t *buf_from(const void *data, size_t len);

/* Takes one more reference; returns `b` for convenience.  Any thread. */
buf_t *buf_ref(buf_t *b);

/* Drops one reference and frees the buffer with the last one.  NULL is a
 * no-op.  Any thread. */
void buf_unref(buf_t *b);

typedef struct outq_seg {
    buf_t *buf;
    uint32_t off; /* first unsent byte in buf->data */
    uint32_t len; /* unsent bytes from off */
} outq_seg;

typedef struct outq {
    outq_seg *segs; /* ring storage, NULL while empty */
    uint32_t head;  /* index of the first segment */
    uint32_t count; /* segments queued */
    uint32_t cap;   /* ring capacity (power of two) */
    size_t bytes;   /* unsent bytes in all segments */
} outq_t;

/* Appends `len` bytes of `b` from `off`, taking a new reference on `b`.
 * Returns 0, or SL_ENOMEM when out of memory (nothing queued, no reference taken).
 * An empty range (len 0) is accepted and ignored. */
int outq_push(outq_t *q, buf_t *b, size_t off, size_t len);

/* The same, at the head of the queue: sent first. */
int outq_push_front(outq_t *q, buf_t *b, size_t off, size_t len);

/* Fills up to `max` iovecs from the head of the queue; returns how many. */
int outq_iov(const outq_t *q, struct iovec *iov, int max);

/* Removes `n` sent bytes from the head, dropping the references of the
 * segments fully sent.  n must not exceed q->bytes.  Frees the ring storage
 * when the queue becomes empty. */
void outq_consume(outq_t *q, size_t n);

/* Moves the first `n` bytes of `src` (n <= src->bytes) to the end of
 * `dst`, with their references: no byte copied, no count touched but
 * that of a segment cut in two (its head goes, its tail stays).  For a
 * queue handed on whole (an HTTP/2 stream's bytes to its socket).
 * Returns 0, or SL_ENOMEM with part of the range moved (in order). */
int outq_move(outq_t *dst, outq_t *src, size_t n);

/* Drops everything queued (references released, storage freed). */
void outq_clear(outq_t *q);

/* Frees the calling thread's pool of recycled rings: a thread that ends
 * calls it last. */
void outq_pool_drain(void);

/* Sets how many drained rings the calling thread keeps for reuse: n, but
 * at least 1,024 (freeing any beyond).  A server keeps it at its number of
 * connections, so that a fan-out to all of them allocates no ring once
 * each has had one: the pool then holds 64 bytes per connection at most. */
void outq_pool_limit(size_t n);

/* Rings the calling thread has allocated (not taken from its pool) so far:
 * for tests. */
uint64_t outq_ring_allocs(void);

#endif
