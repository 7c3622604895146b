/* wal.c: the write-ahead log behind wal.h.
 *
 * Record layout (host byte order, like the LMDB values beside it):
 *   u32 size        whole record, padding included, a multiple of 8
 *   u32 crc         CRC-32C of bytes [8, size), seeded with the salt and
 *                   the format's number
 *   u64 seq, u64 epoch, i64 time_ms, u64 max_count, u64 max_age_ms
 *   u16 topic_len, u16 event_len, u32 data_len
 *   u16 ikey_len, u16 flags, u32 zero
 *   topic, ikey, event, data, zero padding
 * The first format (before 2026-12-06) stopped after data_len (56 bytes)
 * and had no key and no flags; its CRC is seeded with the salt alone.  It
 * is still decoded, so that a log a crash left before an upgrade is
 * replayed; a record matches one format only (the CRCs differ).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* asprintf */
#endif
#include "storage/wal.h"

#include "storage/crc32c.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Direct appends write whole blocks of this size at aligned offsets from
 * an aligned buffer: 4096 suits every logical block size up to a page. */
#define WAL_BLOCK 4096
/* Staging grows to a batch's size; past this it is not kept. */
#define WAL_STAGE_KEEP (64 << 10)

struct wal {
    int fd;
    int dfd;             /* O_DIRECT | O_DSYNC twin of fd for wal_append, or -1 */
    size_t size;         /* file size */
    size_t pos;          /* next append */
    unsigned char *blk;  /* dfd's staging: the bytes of pos's block before pos */
    size_t blk_cap;      /* bytes allocated at blk, a multiple of WAL_BLOCK */
};

/* The salt's 8 bytes (least significant first), the format's number
 * (none for the first format), then the bytes. */
static uint32_t rec_crc(uint64_t salt, int format, const unsigned char *p, size_t n)
{
    unsigned char seed[9];
    for (int i = 0; i < 8; i++, salt >>= 8)
        seed[i] = (unsigned char)salt;
    seed[8] = (unsigned char)format;
    uint32_t c = crc32c_update(crc32c_begin(), seed, format > 1 ? 9 : 8);
    return crc32c_end(crc32c_update(c, p, n));
}

#define WAL_REC_HEADER_V1 56

size_t wal_rec_size(size_t topic_len, size_t event_len, size_t data_len, size_t ikey_len)
{
    return (WAL_REC_HEADER + topic_len + ikey_len + event_len + data_len + 7) & ~(size_t)7;
}

size_t wal_rec_encode(unsigned char *out, const struct wal_rec *r, uint64_t salt)
{
    size_t size = wal_rec_size(r->topic_len, r->event_len, r->data_len, r->ikey_len);
    uint32_t size32 = (uint32_t)size, data32 = (uint32_t)r->data_len, zero = 0;
    uint16_t tl = (uint16_t)r->topic_len, el = (uint16_t)r->event_len;
    uint16_t kl = (uint16_t)r->ikey_len, flags = (uint16_t)r->flags;
    unsigned char *p = out + 8;
    memcpy(p, &r->seq, 8);
    memcpy(p + 8, &r->epoch, 8);
    memcpy(p + 16, &r->time_ms, 8);
    memcpy(p + 24, &r->max_count, 8);
    memcpy(p + 32, &r->max_age_ms, 8);
    memcpy(p + 40, &tl, 2);
    memcpy(p + 42, &el, 2);
    memcpy(p + 44, &data32, 4);
    memcpy(p + 48, &kl, 2);
    memcpy(p + 50, &flags, 2);
    memcpy(p + 52, &zero, 4);
    p = out + WAL_REC_HEADER;
    memcpy(p, r->topic, r->topic_len);
    p += r->topic_len;
    if (r->ikey_len) memcpy(p, r->ikey, r->ikey_len);
    p += r->ikey_len;
    if (r->event_len) memcpy(p, r->event, r->event_len);
    p += r->event_len;
    if (r->data_len) memcpy(p, r->data, r->data_len);
    p += r->data_len;
    memset(p, 0, (size_t)(out + size - p));
    uint32_t crc = rec_crc(salt, 2, out + 8, size - 8);
    memcpy(out, &size32, 4);
    memcpy(out + 4, &crc, 4);
    return size;
}

/* Padding is zeroes: one encoding per record. */
static int zero_from(const unsigned char *p, size_t from, size_t size)
{
    for (size_t i = from; i < size; i++)
        if (p[i]) return 0;
    return 1;
}

size_t wal_rec_decode(const unsigned char *p, size_t avail, struct wal_rec *r, uint64_t salt)
{
    uint32_t size, crc, data32, zero;
    uint16_t tl, el, kl = 0, flags = 0;
    size_t hdr;
    if (avail < WAL_REC_HEADER_V1) return 0;
    memcpy(&size, p, 4);
    memcpy(&crc, p + 4, 4);
    if (size < WAL_REC_HEADER_V1 || size > avail || size % 8) return 0;
    memcpy(&tl, p + 48, 2);
    memcpy(&el, p + 50, 2);
    memcpy(&data32, p + 52, 4);
    if (tl == 0) return 0;
    if (size >= WAL_REC_HEADER) {
        memcpy(&kl, p + 56, 2);
        memcpy(&flags, p + 58, 2);
        memcpy(&zero, p + 60, 4);
    }
    if (size >= WAL_REC_HEADER && zero == 0 && wal_rec_size(tl, el, data32, kl) == size &&
        zero_from(p, WAL_REC_HEADER + tl + kl + el + (size_t)data32, size) &&
        rec_crc(salt, 2, p + 8, size - 8) == crc) {
        hdr = WAL_REC_HEADER;
    } else {
        /* The first format. */
        kl = flags = 0;
        hdr = WAL_REC_HEADER_V1;
        if (((hdr + tl + el + (size_t)data32 + 7) & ~(size_t)7) != size) return 0;
        if (!zero_from(p, hdr + tl + el + (size_t)data32, size)) return 0;
        if (rec_crc(salt, 1, p + 8, size - 8) != crc) return 0;
    }
    memcpy(&r->seq, p + 8, 8);
    memcpy(&r->epoch, p + 16, 8);
    memcpy(&r->time_ms, p + 24, 8);
    memcpy(&r->max_count, p + 32, 8);
    memcpy(&r->max_age_ms, p + 40, 8);
    r->topic = (const char *)p + hdr;
    r->topic_len = tl;
    r->ikey = kl ? r->topic + tl : NULL;
    r->ikey_len = kl;
    r->event = el ? r->topic + tl + kl : NULL;
    r->event_len = el;
    r->data = p + hdr + tl + kl + el;
    r->data_len = data32;
    r->flags = flags;
    return size;
}

/* Extend the file to size with written zeroes, so that later overwrites
 * allocate nothing and their flush has no metadata to write. */
static int zero_fill(int fd, size_t from, size_t size)
{
    static const unsigned char zeros[65536];
    while (from < size) {
        size_t n = size - from < sizeof zeros ? size - from : sizeof zeros;
        ssize_t w = pwrite(fd, zeros, n, (off_t)from);
        if (w < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        from += (size_t)w;
    }
    return fsync(fd) ? errno : 0;
}

/* The direct twin of a read-write log, or -1 where the filesystem has no
 * O_DIRECT (tmpfs), the size is not whole blocks, or the operator said
 * SLUICE_WAL_NO_DIRECT: then wal_append writes and fdatasyncs instead. */
static int open_direct(const char *path, size_t size)
{
    if (size % WAL_BLOCK || getenv("SLUICE_WAL_NO_DIRECT")) return -1;
    return open(path, O_WRONLY | O_DIRECT | O_DSYNC | O_CLOEXEC);
}

int wal_open(struct wal **out, const char *dir, const char *name, int read_only, size_t size)
{
    char *path;
    struct stat st;
    int e, dfd = -1;
    *out = NULL;
    if (asprintf(&path, "%s/%s", dir, name) < 0) return ENOMEM;
    int fd = open(path, (read_only ? O_RDONLY : O_RDWR | O_CREAT) | O_CLOEXEC, 0644);
    if (fd < 0) {
        e = errno;
        free(path);
        return read_only && e == ENOENT ? 0 : e;
    }
    if (fstat(fd, &st)) goto fail;
    if (!read_only && (size_t)st.st_size < size) {
        if ((e = zero_fill(fd, (size_t)st.st_size, size))) goto fail_e;
        /* The file may be new: its directory entry must survive a power
         * cut as well as its blocks. */
        if ((e = wal_sync_dir(dir))) goto fail_e;
        st.st_size = (off_t)size;
    }
    if (!read_only) dfd = open_direct(path, (size_t)st.st_size);
    struct wal *w = calloc(1, sizeof *w);
    if (!w) {
        e = ENOMEM;
        goto fail_e;
    }
    w->fd = fd;
    w->dfd = dfd;
    w->size = (size_t)st.st_size;
    free(path);
    *out = w;
    return 0;
fail:
    e = errno;
fail_e:
    if (dfd >= 0) close(dfd);
    close(fd);
    free(path);
    return e;
}

int wal_direct(const struct wal *w)
{
    return w->dfd >= 0;
}

/* Appends go through the page cache from now on. */
static void drop_direct(struct wal *w)
{
    if (w->dfd < 0) return;
    close(w->dfd);
    w->dfd = -1;
    free(w->blk);
    w->blk = NULL;
    w->blk_cap = 0;
}

/* The staging buffer holds at least cap bytes, its block prefix kept. */
static int reserve_blk(struct wal *w, size_t cap)
{
    if (cap <= w->blk_cap) return 0;
    void *p;
    if (posix_memalign(&p, WAL_BLOCK, cap)) return ENOMEM;
    if (w->blk) memcpy(p, w->blk, w->pos % WAL_BLOCK);
    free(w->blk);
    w->blk = p;
    w->blk_cap = cap;
    return 0;
}

/* Write and flush in one: the blocks from pos's block to the end of the
 * append, the prefix before pos rewritten as it was and the rest of the
 * last block zeroed (past pos is stale or zero anyway).  O_DSYNC on a file
 * whose blocks are all written is one device write with no page-cache
 * writeback (bench/HISTORY.md, "Direct writes for the log"). */
static int append_direct(struct wal *w, const void *buf, size_t len)
{
    size_t start = w->pos - w->pos % WAL_BLOCK, head = w->pos - start;
    size_t end = (w->pos + len + WAL_BLOCK - 1) / WAL_BLOCK * WAL_BLOCK;
    size_t n = end - start, done = 0;
    int e = reserve_blk(w, n);
    if (e) return e;
    memcpy(w->blk + head, buf, len);
    memset(w->blk + head + len, 0, n - head - len);
    while (done < n) {
        ssize_t k = pwrite(w->dfd, w->blk + done, n - done, (off_t)(start + done));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return k < 0 ? errno : EIO;
        if ((size_t)k % WAL_BLOCK) return EIO; /* a short direct write must stay aligned */
        done += (size_t)k;
    }
    /* Keep the new position's block prefix at the buffer's start, in a
     * buffer of one block again after a large batch. */
    size_t next = w->pos + len, next_start = next - next % WAL_BLOCK;
    void *small;
    if (w->blk_cap > WAL_STAGE_KEEP && !posix_memalign(&small, WAL_BLOCK, WAL_BLOCK)) {
        memcpy(small, w->blk + (next_start - start), next - next_start);
        free(w->blk);
        w->blk = small;
        w->blk_cap = WAL_BLOCK;
    } else {
        memmove(w->blk, w->blk + (next_start - start), next - next_start);
    }
    return 0;
}

size_t wal_room(const struct wal *w)
{
    return w->size - w->pos;
}

/* Write at the position; the caller advances it. */
static int write_at_pos(struct wal *w, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    size_t done = 0;
    if (len > wal_room(w)) return ENOSPC;
    while (done < len) {
        ssize_t n = pwrite(w->fd, p + done, len - done, (off_t)(w->pos + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        done += (size_t)n;
    }
    return 0;
}

int wal_append(struct wal *w, const void *buf, size_t len)
{
    if (len > wal_room(w)) return ENOSPC;
    if (w->dfd >= 0) {
        int e = append_direct(w, buf, len);
        if (!e) w->pos += len;
        /* EINVAL: the device wants another alignment; go buffered. */
        if (e != EINVAL) return e;
        drop_direct(w);
    }
    int e = write_at_pos(w, buf, len);
    if (e) return e;
    if (fdatasync(w->fd)) return errno;
    w->pos += len;
    return 0;
}

int wal_write(struct wal *w, const void *buf, size_t len)
{
    drop_direct(w); /* the staging prefix would not see this write */
    int e = write_at_pos(w, buf, len);
    if (e) return e;
    w->pos += len;
    return 0;
}

int wal_sync(struct wal *w)
{
    return fdatasync(w->fd) ? errno : 0;
}

void wal_rewind(struct wal *w)
{
    w->pos = 0;
}

void wal_seek(struct wal *w, size_t pos)
{
    w->pos = pos < w->size ? pos : w->size;
    if (w->dfd < 0) return;
    /* The staging buffer starts with what the file has before pos in its
     * block; without it, go buffered. */
    size_t head = w->pos % WAL_BLOCK, done = 0;
    if (reserve_blk(w, WAL_BLOCK)) {
        drop_direct(w);
        return;
    }
    while (done < head) {
        ssize_t k = pread(w->fd, w->blk + done, head - done, (off_t)(w->pos - head + done));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            drop_direct(w);
            return;
        }
        done += (size_t)k;
    }
}

int wal_read(struct wal *w, unsigned char **buf, size_t *len)
{
    struct stat st;
    *buf = NULL;
    *len = 0;
    if (fstat(w->fd, &st)) return errno;
    size_t size = (size_t)st.st_size, done = 0;
    unsigned char *b = malloc(size ? size : 1);
    if (!b) return ENOMEM;
    while (done < size) {
        ssize_t n = pread(w->fd, b + done, size - done, (off_t)done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int e = n < 0 ? errno : 0;
            if (n == 0) break; /* shrank meanwhile: read what there is */
            free(b);
            return e;
        }
        done += (size_t)n;
    }
    *buf = b;
    *len = done;
    return 0;
}

int wal_zero(struct wal *w, size_t from)
{
    if (from >= w->size) return 0;
    return zero_fill(w->fd, from, w->size);
}

int wal_sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return errno;
    int e = fsync(fd) ? errno : 0;
    close(fd);
    return e;
}

void wal_close(struct wal *w)
{
    if (!w) return;
    drop_direct(w);
    close(w->fd);
    free(w);
}
