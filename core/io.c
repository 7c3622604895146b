/* io.c: plain and TLS socket I/O behind one interface (see io.h). */
#include "core/io.h"

#include "core/log.h"

#include <errno.h>
#include <openssl/err.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* One TLS record's worth of gathered bytes: gathering many small frames into
 * one SSL_write makes one record instead of one per frame.  Per thread
 * because each event loop runs on its own thread. */
#define TLS_GATHER 16384
static __thread char tls_gather[TLS_GATHER];

static ssize_t tls_result(io_t *io, int ret)
{
    int e = SSL_get_error(io->ssl, ret);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        io->want = IO_WANT_READ;
        return IO_AGAIN;
    case SSL_ERROR_WANT_WRITE:
        io->want = IO_WANT_WRITE;
        return IO_AGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0 && errno == 0) return 0; /* EOF without close_notify */
        /* fall through */
    default: {
        unsigned long err = ERR_get_error();
        if (log_enabled(LOG_DEBUG)) {
            char msg[256];
            ERR_error_string_n(err, msg, sizeof(msg));
            LOG_KV(LOG_DEBUG, "tls error", LOG_S("error", err ? msg : strerror(errno)));
        }
        ERR_clear_error();
        return IO_ERROR;
    }
    }
}

ssize_t io_read(io_t *io, void *buf, size_t len)
{
    io->want = IO_WANT_NONE;
    io->drained = 0;
    if (io->ssl) {
        ERR_clear_error();
        errno = 0;
        int n = SSL_read(io->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
        if (n > 0) return n;
        return tls_result(io, n);
    }
    for (;;) {
        ssize_t n = read(io->fd, buf, len);
        if (n >= 0) {
            io->drained = (size_t)n < len;
            return n;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            io->want = IO_WANT_READ;
            return IO_AGAIN;
        }
        return IO_ERROR;
    }
}

int io_peek(io_t *io)
{
    char byte;
    for (;;) {
        ssize_t n = recv(io->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n >= 0) return (int)n;
        if (errno == EINTR) continue;
        return errno == EAGAIN || errno == EWOULDBLOCK ? IO_AGAIN : IO_ERROR;
    }
}

ssize_t io_writev(io_t *io, const struct iovec *iov, int iovcnt)
{
    io->want = IO_WANT_NONE;
    io->full = 0;
    if (io->ssl) {
        const void *data;
        size_t len;
        if (iovcnt == 1 || iov[0].iov_len >= TLS_GATHER) {
            data = iov[0].iov_base;
            len = iov[0].iov_len;
        } else {
            len = 0;
            for (int i = 0; i < iovcnt && len < TLS_GATHER; i++) {
                size_t n = iov[i].iov_len;
                if (n > TLS_GATHER - len) n = TLS_GATHER - len;
                memcpy(tls_gather + len, iov[i].iov_base, n);
                len += n;
            }
            data = tls_gather;
        }
        /* OpenSSL requires a retried write to offer at least the bytes of
         * the failed one; offering exactly them keeps that simple. */
        if (io->tls_retry_len && len > io->tls_retry_len) len = io->tls_retry_len;
        if (len > INT32_MAX) len = INT32_MAX;
        ERR_clear_error();
        errno = 0;
        int n = SSL_write(io->ssl, data, (int)len);
        if (n > 0) {
            io->tls_retry_len = 0;
            return n;
        }
        ssize_t r = tls_result(io, n);
        if (r == IO_AGAIN) io->tls_retry_len = (uint32_t)len;
        return r == 0 ? IO_ERROR : r;
    }
    /* send/sendmsg, not writev: on a socket they skip the VFS write path
     * (about 5% of server CPU in a fan-out profile).  MSG_NOSIGNAL: a reset
     * peer is EPIPE here even if SIGPIPE were not ignored (main.c). */
    struct msghdr mh = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt};
    for (;;) {
        ssize_t n = iovcnt == 1 ? send(io->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL)
                                : sendmsg(io->fd, &mh, MSG_NOSIGNAL);
        if (n >= 0) {
            size_t offered = 0;
            for (int i = 0; i < iovcnt; i++)
                offered += iov[i].iov_len;
            io->full = (size_t)n < offered;
            if (io->full) io->want = IO_WANT_WRITE;
            return n;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            io->want = IO_WANT_WRITE;
            return IO_AGAIN;
        }
        return IO_ERROR;
    }
}

int io_handshake(io_t *io)
{
    io->want = IO_WANT_NONE;
    ERR_clear_error();
    errno = 0;
    int r = SSL_do_handshake(io->ssl);
    if (r == 1) return 1;
    ssize_t res = tls_result(io, r);
    return res == IO_AGAIN ? 0 : IO_ERROR;
}

void io_shutdown_write(io_t *io)
{
    if (io->ssl && SSL_is_init_finished(io->ssl)) {
        ERR_clear_error();
        SSL_shutdown(io->ssl); /* non-blocking: sends close_notify if it can */
        ERR_clear_error();
    }
    shutdown(io->fd, SHUT_WR);
}

void io_close(io_t *io)
{
    if (io->ssl) {
        SSL_free(io->ssl);
        io->ssl = NULL;
    }
    if (io->fd >= 0) close(io->fd);
    io->fd = -1;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    /* HTTP/2 first (h2.h), HTTP/1.1 for the clients without it. */
    static const unsigned char ours[] = "\x02h2\x08http/1.1";
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, ours, sizeof(ours) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* no ALPN agreement: go on without it */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

SSL_CTX *tls_ctx_new(const char *cert_file, const char *key_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) goto fail;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* TLS 1.2: forward-secret AEAD suites only (Mozilla's "intermediate"
     * profile without DHE, which needs parameters of our own): OpenSSL's
     * default list also offers static-RSA key exchange and CBC suites.
     * Every client that speaks TLS 1.2 today has one of these.  TLS 1.3's
     * suites are all of that kind already and keep OpenSSL's list. */
    static const char tls12_ciphers[] =
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
        "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
        "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
    if (SSL_CTX_set_cipher_list(ctx, tls12_ciphers) != 1 ||
        SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384") != 1)
        goto fail;
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        snprintf(err, errlen, "%s: cannot load certificate chain", cert_file);
        goto fail_msg;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        snprintf(err, errlen, "%s: cannot load private key", key_file);
        goto fail_msg;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "%s: key does not match certificate %s", key_file, cert_file);
        goto fail_msg;
    }
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    ERR_clear_error();
    return ctx;
fail:
    snprintf(err, errlen, "cannot create TLS context");
fail_msg : {
    unsigned long e = ERR_get_error();
    if (e) {
        size_t l = strlen(err);
        if (l + 3 < errlen) {
            snprintf(err + l, errlen - l, ": ");
            ERR_error_string_n(e, err + l + 2, errlen - l - 2);
        }
    }
}
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
}

int io_tls_start(io_t *io, SSL_CTX *ctx)
{
    io->ssl = SSL_new(ctx);
    if (!io->ssl || SSL_set_fd(io->ssl, io->fd) != 1) {
        ERR_clear_error();
        return IO_ERROR;
    }
    SSL_set_accept_state(io->ssl);
    return 0;
}
