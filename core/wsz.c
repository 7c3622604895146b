/* wsz.c: zlib for permessage-deflate (see wsz.h).  The thread's deflate
 * stream lives under a pthread key whose destructor ends it when a worker
 * thread exits, so sanitizer builds see no leak. */
#include "core/wsz.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define WSZ_LEVEL 6
#define WSZ_MEM_LEVEL 8
#define WSZ_CHUNK (16 * 1024)

static pthread_key_t deflate_key;
static pthread_once_t deflate_once = PTHREAD_ONCE_INIT;

static void deflate_stream_free(void *p)
{
    z_stream *zs = p;
    deflateEnd(zs);
    free(zs);
}

static void deflate_key_make(void)
{
    pthread_key_create(&deflate_key, deflate_stream_free);
}

static z_stream *thread_deflater(void)
{
    pthread_once(&deflate_once, deflate_key_make);
    z_stream *zs = pthread_getspecific(deflate_key);
    if (zs) return zs;
    zs = calloc(1, sizeof(*zs));
    if (!zs) return NULL;
    if (deflateInit2(zs, WSZ_LEVEL, Z_DEFLATED, -15, WSZ_MEM_LEVEL, Z_DEFAULT_STRATEGY) != Z_OK) {
        free(zs);
        return NULL;
    }
    if (pthread_setspecific(deflate_key, zs) != 0) {
        deflate_stream_free(zs);
        return NULL;
    }
    return zs;
}

size_t wsz_deflate_bound(size_t len)
{
    /* deflateBound's figure for raw deflate, plus the sync flush's empty
     * stored block (5 bytes) and a margin. */
    return len + len / 1000 + 64 + (len >> 12) + (len >> 14) + (len >> 25) + 13;
}

long wsz_deflate(const void *in, size_t len, uint8_t *out, size_t cap)
{
    z_stream *zs = thread_deflater();
    if (!zs || deflateReset(zs) != Z_OK) return SL_ENOMEM;
    zs->next_in = (Bytef *)(uintptr_t)in;
    zs->avail_in = (uInt)len;
    zs->next_out = out;
    zs->avail_out = (uInt)cap;
    int rc = deflate(zs, Z_SYNC_FLUSH);
    if (rc != Z_OK || zs->avail_in != 0 || zs->avail_out == 0) return SL_ENOMEM;
    size_t n = cap - zs->avail_out;
    /* A sync flush ends with an empty stored block: 00 00 FF FF, which
     * RFC 7692 section 7.2.1 has the sender remove. */
    if (n < 4 || memcmp(out + n - 4, "\x00\x00\xff\xff", 4) != 0) return SL_ENOMEM;
    return (long)(n - 4);
}

struct wsz_inflater {
    z_stream zs;
    bool ended; /* the final deflate block was seen */
};

wsz_inflater *wsz_inflater_new(void)
{
    wsz_inflater *z = calloc(1, sizeof(*z));
    if (!z) return NULL;
    if (inflateInit2(&z->zs, -15) != Z_OK) {
        free(z);
        return NULL;
    }
    return z;
}

void wsz_inflater_free(wsz_inflater *z)
{
    if (!z) return;
    inflateEnd(&z->zs);
    free(z);
}

/* Inflates in[0..len) through sink.  Returns SL_OK or an error. */
static int inflate_some(wsz_inflater *z, const uint8_t *in, size_t len, uint64_t cap,
                        uint64_t *total, int (*sink)(void *, const uint8_t *, size_t), void *ud)
{
    uint8_t chunk[WSZ_CHUNK];
    z->zs.next_in = (Bytef *)(uintptr_t)in;
    z->zs.avail_in = (uInt)len;
    while (z->zs.avail_in > 0) {
        if (z->ended) return SL_EINPUT; /* bytes after the final block */
        /* Never more output than the cap leaves, plus one byte to see it
         * passed. */
        uint64_t room = cap - *total + 1;
        size_t want = room < sizeof(chunk) ? (size_t)room : sizeof(chunk);
        z->zs.next_out = chunk;
        z->zs.avail_out = (uInt)want;
        int rc = inflate(&z->zs, Z_SYNC_FLUSH);
        size_t got = want - z->zs.avail_out;
        if (rc == Z_MEM_ERROR) return SL_ENOMEM;
        /* Past the cap before a fault: the verdict must not depend on
         * where the frames were cut (the fault can come in the call that
         * passes the cap, or in the next one). */
        if (*total + got > cap) return SL_ELIMIT;
        if (rc == Z_STREAM_END) {
            z->ended = true;
        } else if (rc != Z_OK && !(rc == Z_BUF_ERROR && got == 0 && z->zs.avail_in == 0)) {
            return SL_EINPUT;
        }
        *total += got;
        if (got && sink(ud, chunk, got)) return SL_EGONE;
        if (got == 0 && rc == Z_BUF_ERROR) break;
    }
    return SL_OK;
}

int wsz_inflate(wsz_inflater *z, const uint8_t *in, size_t len, bool fin, uint64_t cap,
                uint64_t *total, int (*sink)(void *ud, const uint8_t *data, size_t len),
                void *ud)
{
    int rc = len ? inflate_some(z, in, len, cap, total, sink, ud) : SL_OK;
    if (rc != SL_OK || !fin) return rc;
    static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};
    /* A sender that ended with a final block (BFINAL) sends no tail to
     * strip; the tail is then not inflated. */
    if (z->ended) return SL_OK;
    rc = inflate_some(z, tail, sizeof(tail), cap, total, sink, ud);
    if (rc != SL_OK) return rc;
    /* Whatever the inflater holds must come out now. */
    for (;;) {
        uint8_t chunk[256];
        uint64_t room = cap - *total + 1;
        size_t want = room < sizeof(chunk) ? (size_t)room : sizeof(chunk);
        z->zs.next_in = NULL;
        z->zs.avail_in = 0;
        z->zs.next_out = chunk;
        z->zs.avail_out = (uInt)want;
        int zr = inflate(&z->zs, Z_SYNC_FLUSH);
        size_t got = want - z->zs.avail_out;
        if (*total + got > cap) return SL_ELIMIT; /* first, as in inflate_some */
        if (zr != Z_OK && zr != Z_STREAM_END && zr != Z_BUF_ERROR) return SL_EINPUT;
        *total += got;
        if (got && sink(ud, chunk, got)) return SL_EGONE;
        if (got < want || zr != Z_OK) break;
    }
    return SL_OK;
}
