/* buf_test.c: shared buffers, the output queue ring and its pool. */
#include "check.h"
#include "core/buf.h"

#include <stdlib.h>
#include <string.h>

/* One message to each of n queues, then each drained: a fan-out to n
 * subscribers that read it.  Returns the rings allocated meanwhile. */
static uint64_t fan_out_rings(outq_t *qs, size_t n, buf_t *msg)
{
    uint64_t before = outq_ring_allocs();
    for (size_t i = 0; i < n; i++)
        outq_push(&qs[i], msg, 0, msg->len);
    for (size_t i = 0; i < n; i++)
        outq_consume(&qs[i], msg->len);
    return outq_ring_allocs() - before;
}

static void test_pool_follows_connections(void)
{
    enum { MANY = 5000 };
    outq_t *qs = calloc(MANY, sizeof(outq_t));
    buf_t *msg = buf_from("event", 5);

    /* Within the least pool, the second fan-out allocates nothing. */
    outq_pool_drain();
    fan_out_rings(qs, 1000, msg);
    CHECK_EQ_INT(fan_out_rings(qs, 1000, msg), 0);

    /* Beyond it, every fan-out allocates what the pool cannot keep... */
    outq_pool_limit(0);
    fan_out_rings(qs, MANY, msg);
    CHECK_EQ_INT(fan_out_rings(qs, MANY, msg), MANY - 1024);

    /* ...until the limit follows the connections: then once warm, none. */
    outq_pool_limit(MANY);
    fan_out_rings(qs, MANY, msg);
    CHECK_EQ_INT(fan_out_rings(qs, MANY, msg), 0);
    CHECK_EQ_INT(msg->refs, 1);

    /* Fewer connections: the pool shrinks to what it may keep. */
    outq_pool_limit(2000);
    fan_out_rings(qs, 2000, msg);
    CHECK_EQ_INT(fan_out_rings(qs, 2000, msg), 0);
    CHECK_EQ_INT(fan_out_rings(qs, 2001, msg), 1);

    outq_pool_drain();
    CHECK_EQ_INT(fan_out_rings(qs, 1, msg), 1);
    outq_pool_drain();
    buf_unref(msg);
    free(qs);
}

/* outq_move: whole segments change queues with their references, a cut
 * one is shared, and the order holds across the destination's growth. */
static void test_move(void)
{
    buf_t *a = buf_from("abcdef", 6), *b = buf_from("XYZ", 3);
    outq_t src = {0}, dst = {0};
    outq_push(&dst, b, 0, 1); /* "X" already there */
    for (int i = 0; i < 20; i++)
        outq_push(&src, a, (size_t)(i % 3), 2);
    outq_push(&src, b, 1, 2);
    CHECK_EQ_INT(a->refs, 21);
    CHECK_EQ_INT(outq_move(&dst, &src, 5), 0); /* 2 + 2 + 1 of the third */
    CHECK_EQ_INT(dst.bytes, 6);
    CHECK_EQ_INT(src.bytes, 37);
    CHECK_EQ_INT(a->refs, 22); /* the cut segment is in both */
    struct iovec iov[64];
    char got[64];
    size_t gl = 0;
    int n = outq_iov(&dst, iov, 64);
    for (int i = 0; i < n; i++) {
        memcpy(got + gl, iov[i].iov_base, iov[i].iov_len);
        gl += iov[i].iov_len;
    }
    CHECK_EQ_MEM(got, gl, "Xabbcc", 6);
    CHECK_EQ_INT(outq_push_front(&src, b, 2, 1), 0); /* "Z" goes first */
    CHECK_EQ_INT(outq_move(&dst, &src, 2), 0);
    CHECK_EQ_INT(outq_iov(&dst, iov, 64), 6);
    CHECK_EQ_MEM(iov[4].iov_base, iov[4].iov_len, "Z", 1);
    CHECK_EQ_MEM(iov[5].iov_base, iov[5].iov_len, "d", 1);
    CHECK_EQ_INT(outq_move(&dst, &src, src.bytes), 0); /* the rest: dst grows */
    CHECK(src.segs == NULL);
    CHECK_EQ_INT(src.bytes, 0);
    CHECK_EQ_INT(dst.bytes, 44);
    n = outq_iov(&dst, iov, 64);
    gl = 0;
    for (int i = 0; i < n; i++) {
        memcpy(got + gl, iov[i].iov_base, iov[i].iov_len);
        gl += iov[i].iov_len;
    }
    CHECK_EQ_MEM(got + 38, 6, "abbcYZ", 6);
    CHECK_EQ_INT(a->refs, 22); /* the cut one's two halves, each holding one */
    outq_seg *ring = dst.segs;
    CHECK_EQ_INT(outq_move(&src, &dst, dst.bytes), 0); /* whole, to an empty queue */
    CHECK(src.segs == ring && dst.segs == NULL && dst.bytes == 0);
    CHECK_EQ_INT(src.bytes, 44);
    outq_clear(&src);
    CHECK_EQ_INT(a->refs, 1);
    CHECK_EQ_INT(b->refs, 1);
    buf_unref(a);
    buf_unref(b);
}

int main(void)
{
    buf_t *a = buf_from("hello ", 6), *b = buf_from("world", 5);
    outq_t q = {0};
    CHECK_EQ_INT(outq_push(&q, a, 0, 6), 0);
    CHECK_EQ_INT(outq_push(&q, b, 0, 5), 0);
    CHECK_EQ_INT(outq_push(&q, a, 0, 0), 0); /* empty: ignored */
    CHECK_EQ_INT(q.count, 2);
    CHECK_EQ_INT(q.bytes, 11);
    CHECK_EQ_INT(a->refs, 2);
    struct iovec iov[8];
    CHECK_EQ_INT(outq_iov(&q, iov, 8), 2);
    outq_consume(&q, 3);
    CHECK_EQ_INT(outq_iov(&q, iov, 8), 2);
    CHECK_EQ_MEM(iov[0].iov_base, iov[0].iov_len, "lo ", 3);
    outq_consume(&q, 3);
    CHECK_EQ_INT(a->refs, 1); /* released once fully sent */
    CHECK_EQ_INT(q.count, 1);
    outq_consume(&q, 5);
    CHECK(q.segs == NULL); /* drained: storage returned */
    CHECK_EQ_INT(b->refs, 1);

    /* Growth across the ring's wrap point keeps order. */
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 37; i++)
            outq_push(&q, b, (size_t)(i % 5), 1);
        outq_consume(&q, 10);
        for (int i = 0; i < 11; i++)
            outq_push(&q, a, 0, 1);
        CHECK_EQ_INT(q.bytes, 38);
        int n = outq_iov(&q, iov, 8);
        CHECK_EQ_INT(n, 8);
        CHECK_EQ_MEM(iov[0].iov_base, 1, &"world"[10 % 5], 1);
        outq_clear(&q);
        CHECK_EQ_INT(b->refs, 1);
    }
    CHECK_EQ_INT(a->refs, 1);
    buf_unref(a);
    buf_unref(b);
    test_move();
    CHECK(buf_new((size_t)UINT32_MAX) == NULL);
    test_pool_follows_connections();
    return CHECK_DONE();
}
