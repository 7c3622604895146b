/* err.h: the one error convention of sluice's C modules.
 *
 * A function that can fail returns an int: 0 (or a count, where its header
 * says so) on success, a negative SL_E* code on failure.  Every code has one
 * name and one message, in the table below; err_str() gives the message
 * (what logs and HTTP error bodies show), err_name() the code's name (for
 * tests and debug output).  Codes never mix with errno values or HTTP
 * statuses: a module that needs the errno says so in its header.
 *
 * Header-only, so that every layer (storage/ below core/ too) can use it
 * without a link dependency. */
#ifndef SLUICE_ERR_H
#define SLUICE_ERR_H

/* X(name, value, message).  Messages of the storage codes are part of the
 * HTTP API (docs/protocol.md: a publish's 503 body): keep them. */
#define SL_ERRORS(X)                                                                               \
    X(SL_EINVAL, -1, "invalid argument")                                                           \
    X(SL_ENOMEM, -2, "out of memory")                                                              \
    X(SL_EFULL, -3, "storage full")                                                                \
    X(SL_EIO, -4, "storage I/O error")                                                             \
    X(SL_ENOTFOUND, -5, "not found")                                                               \
    X(SL_EUNKNOWN, -6, "unknown ID")                                                               \
    X(SL_EROFS, -7, "store is read-only")                                                          \
    X(SL_EPANIC, -8, "storage environment failed, reopen needed")                                  \
    X(SL_ELOCKED, -9, "data directory in use by another writer")                                   \
    X(SL_ECORRUPT, -10, "the store is damaged (see sluice check)")                                 \
    X(SL_ESTOPPED, -11, "shutting down")                                                           \
    X(SL_EBUSY, -12, "too many publishes waiting for storage")                                     \
    X(SL_ESPACE, -13, "output buffer too small")                                                   \
    X(SL_EINPUT, -14, "malformed input")                                                           \
    X(SL_EFIELD, -15, "field contains CR, LF or NUL")                                              \
    X(SL_EGONE, -16, "ended meanwhile")                                                            \
    X(SL_EPROTO, -17, "protocol violation")                                                        \
    X(SL_ELIMIT, -18, "over a configured limit")                                                   \
    X(SL_ESYS, -19, "system call failed")                                                          \
    X(SL_EUNREACHABLE, -20, "storage unreachable: no NATS server connected")                       \
    X(SL_ETOOBIG, -21, "message too large for the cluster (NATS max_payload)")

enum sl_err {
    SL_OK = 0,
#define SL_ERR_ENUM(name, value, msg) name = value,
    SL_ERRORS(SL_ERR_ENUM)
#undef SL_ERR_ENUM
};

/* The message of a code ("ok" for 0, "unknown error" for what is not one). */
static inline const char *err_str(int code)
{
    switch (code) {
    case SL_OK:
        return "ok";
#define SL_ERR_STR(name, value, msg)                                                               \
    case name:                                                                                     \
        return msg;
        SL_ERRORS(SL_ERR_STR)
#undef SL_ERR_STR
    default:
        return "unknown error";
    }
}

/* The name of a code ("SL_OK", "SL_EFULL", ...; "?" for what is not one). */
static inline const char *err_name(int code)
{
    switch (code) {
    case SL_OK:
        return "SL_OK";
#define SL_ERR_NAME(name, value, msg)                                                              \
    case name:                                                                                     \
        return #name;
        SL_ERRORS(SL_ERR_NAME)
#undef SL_ERR_NAME
    default:
        return "?";
    }
}

#endif
