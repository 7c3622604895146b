/* buf.c: shared buffers and the output queue ring (see buf.h).  The ring
 * doubles when full and is freed when drained, so memory follows the
 * connection's backlog instead of its lifetime. */
#include "core/buf.h"

#include "core/defs.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

buf_t *buf_new(size_t len)
{
    if (len > UINT32_MAX - sizeof(buf_t)) return NULL;
    buf_t *b = malloc(sizeof(buf_t) + len);
    if (!b) return NULL;
    b->refs = 1;
    b->len = (uint32_t)len;
    return b;
}

buf_t *buf_from(const void *data, size_t len)
{
    buf_t *b = buf_new(len);
    if (b && len) memcpy(b->data, data, len);
    return b;
}

buf_t *buf_ref(buf_t *b)
{
    uint32_t was = __atomic_fetch_add(&b->refs, 1, __ATOMIC_RELAXED);
    SLUICE_ASSERT(was > 0); /* a reference to a freed buffer */
    (void)was;
    return b;
}

void buf_unref(buf_t *b)
{
    if (!b) return;
    uint32_t was = __atomic_fetch_sub(&b->refs, 1, __ATOMIC_ACQ_REL);
    SLUICE_ASSERT(was > 0); /* one unref too many */
    if (was == 1) free(b);
}

/* Rings of the first size are recycled per thread: a subscriber that
 * receives one message at a time would otherwise allocate and free its
 * ring on every delivery.  The pool is a list threaded through the free
 * rings themselves; it keeps at most ring_pool_max of them, which the
 * server raises to its number of connections (outq_pool_limit), so that a
 * fan-out to all of them takes every ring from the pool once it is warm. */
#define OUTQ_FIRST_CAP 4
#define OUTQ_POOL_MIN 1024
static __thread outq_seg *ring_pool;
static __thread size_t ring_pool_len, ring_pool_max = OUTQ_POOL_MIN;
static __thread uint64_t ring_allocs;

static outq_seg *ring_pool_pop(void)
{
    outq_seg *r = ring_pool;
    memcpy(&ring_pool, r, sizeof ring_pool);
    ring_pool_len--;
    return r;
}

static outq_seg *ring_alloc(uint32_t cap)
{
    if (cap == OUTQ_FIRST_CAP && ring_pool) return ring_pool_pop();
    ring_allocs++;
    return malloc(sizeof(outq_seg) * cap);
}

static void ring_free(outq_seg *r, uint32_t cap)
{
    if (r && cap == OUTQ_FIRST_CAP && ring_pool_len < ring_pool_max) {
        memcpy(r, &ring_pool, sizeof ring_pool);
        ring_pool = r;
        ring_pool_len++;
    } else {
        free(r);
    }
}

void outq_pool_limit(size_t n)
{
    ring_pool_max = n > OUTQ_POOL_MIN ? n : OUTQ_POOL_MIN;
    while (ring_pool_len > ring_pool_max)
        free(ring_pool_pop());
}

uint64_t outq_ring_allocs(void)
{
    return ring_allocs;
}

void outq_pool_drain(void)
{
    while (ring_pool)
        free(ring_pool_pop());
}

static int outq_resize(outq_t *q, uint32_t ncap)
{
    outq_seg *ns = ring_alloc(ncap);
    if (!ns) return SL_ENOMEM;
    for (uint32_t i = 0; i < q->count; i++)
        ns[i] = q->segs[(q->head + i) & (q->cap - 1)];
    ring_free(q->segs, q->cap);
    q->segs = ns;
    q->cap = ncap;
    q->head = 0;
    return 0;
}

static int outq_grow(outq_t *q)
{
    return outq_resize(q, q->cap ? q->cap * 2 : OUTQ_FIRST_CAP);
}

/* A segment (a reference to b) at the tail of q, or at its head. */
static inline int outq_put(outq_t *q, bool front, buf_t *b, size_t off, size_t len)
{
    SLUICE_ASSERT(off <= b->len && len <= b->len - off);
    if (len == 0) return 0;
    if (q->count == q->cap && outq_grow(q) < 0) return SL_ENOMEM;
    if (front) q->head = (q->head - 1) & (q->cap - 1);
    outq_seg *s = &q->segs[front ? q->head : (q->head + q->count) & (q->cap - 1)];
    s->buf = buf_ref(b);
    s->off = (uint32_t)off;
    s->len = (uint32_t)len;
    q->count++;
    q->bytes += len;
    return 0;
}

int outq_push(outq_t *q, buf_t *b, size_t off, size_t len)
{
    return outq_put(q, false, b, off, len);
}

int outq_push_front(outq_t *q, buf_t *b, size_t off, size_t len)
{
    return outq_put(q, true, b, off, len);
}

int outq_iov(const outq_t *q, struct iovec *iov, int max)
{
    int n = 0;
    for (uint32_t i = 0; i < q->count && n < max; i++, n++) {
        const outq_seg *s = &q->segs[(q->head + i) & (q->cap - 1)];
        iov[n].iov_base = s->buf->data + s->off;
        iov[n].iov_len = s->len;
    }
    return n;
}

void outq_consume(outq_t *q, size_t n)
{
    q->bytes -= n;
    while (n > 0 && q->count > 0) {
        outq_seg *s = &q->segs[q->head];
        if (n < s->len) {
            s->off += (uint32_t)n;
            s->len -= (uint32_t)n;
            return;
        }
        n -= s->len;
        buf_unref(s->buf);
        q->head = (q->head + 1) & (q->cap - 1);
        q->count--;
    }
    if (q->count == 0) outq_clear(q);
}

int outq_move(outq_t *dst, outq_t *src, size_t n)
{
    SLUICE_ASSERT(n <= src->bytes);
    if (n == src->bytes && dst->count == 0) { /* all of it to an empty queue: the ring goes */
        ring_free(dst->segs, dst->cap);
        *dst = *src;
        memset(src, 0, sizeof(*src));
        return 0;
    }
    /* One growth to the size needed, not a doubling per segment. */
    uint32_t need = dst->count + src->count, ncap = dst->cap ? dst->cap : OUTQ_FIRST_CAP;
    while (ncap < need)
        ncap *= 2;
    if (ncap != dst->cap && outq_resize(dst, ncap) < 0) return SL_ENOMEM;
    while (n > 0) {
        outq_seg *s = &src->segs[src->head];
        if (n < s->len) { /* cut: the head is pushed with a reference of its own */
            int r = outq_push(dst, s->buf, s->off, n);
            if (r == 0) outq_consume(src, n);
            return r;
        }
        if (dst->count == dst->cap && outq_grow(dst) < 0) return SL_ENOMEM;
        dst->segs[(dst->head + dst->count) & (dst->cap - 1)] = *s;
        dst->count++;
        dst->bytes += s->len;
        n -= s->len;
        src->bytes -= s->len;
        src->head = (src->head + 1) & (src->cap - 1);
        src->count--;
    }
    if (src->count == 0) outq_clear(src);
    return 0;
}

void outq_clear(outq_t *q)
{
    for (uint32_t i = 0; i < q->count; i++)
        buf_unref(q->segs[(q->head + i) & (q->cap - 1)].buf);
    ring_free(q->segs, q->cap);
    memset(q, 0, sizeof(*q));
}
