/* buf_test.c: shared buffers and the output queue ring. */
#include "check.h"
#include "core/buf.h"

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
    return CHECK_DONE();
}
