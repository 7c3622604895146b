/* io.h: one read/write interface over a plain socket or a TLS session.
 *
 * Everything above this module (connections, transports) reads and writes
 * through io_read()/io_writev() and never asks which one it has.  TLS is
 * OpenSSL on a non-blocking socket: a call may need the socket readable when
 * writing, or writable when reading, so each call reports which readiness it
 * waits for in io->want.  The TLS context (certificate, protocol versions,
 * ALPN) is built by tls_ctx_new() and may be replaced on reload; sessions
 * already open keep the context they started with. */
#ifndef SLUICE_IO_H
#define SLUICE_IO_H

#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

enum io_want { IO_WANT_NONE = 0, IO_WANT_READ = 1, IO_WANT_WRITE = 2 };

#define IO_AGAIN (-1) /* nothing now; wait for io->want */
#define IO_ERROR (-2) /* the connection is broken: close it */

typedef struct io {
    int fd;
    uint8_t want;           /* io_want after IO_AGAIN or a full write */
    uint8_t drained;        /* the last read emptied a plain socket */
    uint8_t full;           /* the last write filled a plain socket */
    SSL *ssl;               /* NULL for plain TCP */
    uint32_t tls_retry_len; /* TLS: length of an SSL_write to repeat */
} io_t;

/* Reads up to `len` bytes.  Returns the count, 0 at end of stream, IO_AGAIN
 * or IO_ERROR.  A plain socket that gave fewer than `len` bytes had no more
 * queued: io->drained is then set, and another read would only say IO_AGAIN
 * (never set for TLS, which may hold decrypted bytes). */
ssize_t io_read(io_t *io, void *buf, size_t len);

/* Looks at the socket without reading: 1 when bytes wait (for TLS, record
 * bytes not yet decrypted), 0 when the peer has closed, IO_AGAIN when
 * nothing has come, IO_ERROR when the connection is broken. */
int io_peek(io_t *io);

/* Writes from `iovcnt` iovecs in one send or sendmsg.  Returns the bytes
 * written (maybe fewer than offered), IO_AGAIN or IO_ERROR.  A plain socket
 * that took fewer bytes than offered is full: io->full is then set and
 * io->want is IO_WANT_WRITE, since another write before the socket turns
 * writable would only say IO_AGAIN (never set for TLS, whose writes stop
 * at a record by design).  For TLS the
 * iovecs are gathered into one record-sized write; after IO_AGAIN the
 * caller must offer the same bytes again (it does, since it consumes only
 * what was written). */
ssize_t io_writev(io_t *io, const struct iovec *iov, int iovcnt);

/* Drives the TLS handshake.  Returns 1 when done, 0 to wait (see io->want),
 * IO_ERROR on failure (details logged at debug). */
int io_handshake(io_t *io);

/* Sends close_notify when TLS (best effort), then shuts down the write side
 * of the socket; the fd stays open for a lingering read. */
void io_shutdown_write(io_t *io);

/* Frees the TLS session (if any) and closes the fd. */
void io_close(io_t *io);

/* Builds a server context from PEM files: TLS 1.2 and 1.3 only, TLS 1.2
 * with forward-secret AEAD suites only (ECDHE with AES-GCM or
 * ChaCha20-Poly1305), ALPN h2 (preferred) and http/1.1.  Returns NULL with a message in err on failure. */
SSL_CTX *tls_ctx_new(const char *cert_file, const char *key_file, char *err, size_t errlen);

/* Starts a server-side TLS session on io->fd.  Returns 0 or IO_ERROR. */
int io_tls_start(io_t *io, SSL_CTX *ctx);

#endif
