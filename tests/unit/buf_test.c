/* buf_test.c: shared buffers, the output queue ring and its pool. */
#include "check.h"
#include "core/buf.h"

#include <stdlib.h>

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
    CHECK(buf_new((size_t)UINT32_MAX) == NULL);
    test_pool_follows_connections();
    return CHECK_DONE();
}
