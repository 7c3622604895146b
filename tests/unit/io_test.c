/* io_test.c: plain-socket writes through io_writev: what a full socket
 * reports, so the flush waits for it instead of asking again. */
#include "check.h"
#include "core/io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* Reads whatever the peer has queued; returns the byte count. */
static size_t drain(int fd)
{
    static char sink[65536];
    size_t total = 0;
    ssize_t n;
    while ((n = read(fd, sink, sizeof sink)) > 0)
        total += (size_t)n;
    return total;
}

int main(void)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        perror("socketpair");
        return 1;
    }
    int small = 4096;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    io_t io = {.fd = sv[0]};

    /* What fits is written whole and leaves the socket writable. */
    struct iovec two[2] = {{"hello ", 6}, {"world", 5}};
    CHECK_EQ_INT(io_writev(&io, two, 2), 11);
    CHECK_EQ_INT(io.full, 0);
    CHECK_EQ_INT(io.want, IO_WANT_NONE);
    CHECK_EQ_INT(drain(sv[1]), 11);

    /* More than the buffers hold: a short write, reported as full. */
    size_t big = 4u << 20;
    char *a = calloc(1, big / 2), *b = calloc(1, big / 2);
    struct iovec halves[2] = {{a, big / 2}, {b, big / 2}};
    ssize_t w = io_writev(&io, halves, 2);
    CHECK(w > 0 && (size_t)w < big);
    CHECK_EQ_INT(io.full, 1);
    CHECK_EQ_INT(io.want, IO_WANT_WRITE);
    /* The write a full socket saves: it would have said only this. */
    struct iovec rest = {a, 1};
    CHECK_EQ_INT(io_writev(&io, &rest, 1), IO_AGAIN);
    CHECK_EQ_INT(io.full, 0);
    CHECK_EQ_INT(io.want, IO_WANT_WRITE);

    /* Drained by the peer, the socket takes writes again and is not full. */
    CHECK_EQ_INT(drain(sv[1]), w);
    CHECK_EQ_INT(io_writev(&io, two, 2), 11);
    CHECK_EQ_INT(io.full, 0);
    CHECK_EQ_INT(io.want, IO_WANT_NONE);

    /* A broken peer is an error, not a full socket. */
    close(sv[1]);
    CHECK_EQ_INT(io_writev(&io, two, 2), IO_ERROR);
    CHECK_EQ_INT(io.full, 0);

    free(a);
    free(b);
    close(sv[0]);
    return CHECK_DONE();
}
