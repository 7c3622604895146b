/* wal.h: the write-ahead log of a durable store.
 *
 * Why: an LMDB commit that must survive an OS crash flushes the device
 * twice (the pages, then the meta page that points at them), about 0.45 ms
 * here, and a lone publisher waits for both.  The log needs one flush: a
 * batch's records are written in place into a preallocated, zero-filled
 * file and flushed (O_DSYNC, or fdatasync), which is when the batch is
 * durable and may be acknowledged.  LMDB takes the messages later, many batches in one
 * ordinary synced commit (a checkpoint; store.c), after which the log
 * starts again at offset 0.  A durable store has two such files, so that
 * appends go on in one while the other's checkpoint runs.
 *
 * The file never grows once made, so a flush has no metadata to write
 * and a write cannot fail for want of space.  Records carry their global
 * seq: after a checkpoint up to seq L, what follows L in the file is the
 * current round and everything else is stale, so the log needs no header
 * and no truncation.  A record is valid when its length and CRC-32C hold;
 * a torn or zeroed one ends the log.  The CRC is seeded with a salt of the
 * store's own, so the log of a wiped or replaced store reads as empty; the
 * store draws a new salt at every read-write open, so records an open did
 * not replay can never be read again.  The first record of every batch
 * says so (WAL_REC_BATCH_FIRST): a good batch-first record behind a bad
 * record proves the bad one was written and flushed before it, i.e.
 * damage, not a write torn by a crash (docs/storage.md, "Damage").
 *
 * This module is the codec (pure, I/O-free: wal_rec_*) and the file; it
 * knows nothing of LMDB, topics or threads.  One thread appends.
 */
#ifndef SLUICE_WAL_H
#define SLUICE_WAL_H

#include <stddef.h>
#include <stdint.h>

/* wal_rec.flags: the record is its batch's first (one write, one flush). */
#define WAL_REC_BATCH_FIRST 1u
/* wal_rec.flags: the message is marked JSON (STORE_MSG_JSON).  A sluice
 * that predates the flag ignores it. */
#define WAL_REC_JSON 2u

/* One message as logged. */
struct wal_rec {
    uint64_t seq, epoch;
    int64_t time_ms;
    uint64_t max_count, max_age_ms; /* the topic's retention at publish */
    const char *topic;
    size_t topic_len; /* 1..65535 */
    const char *event;
    size_t event_len; /* 0..65535 */
    const void *data;
    size_t data_len; /* < 4 GiB */
    const char *ikey;
    size_t ikey_len; /* 0..65535: the publish's idempotency key, if any */
    unsigned flags;  /* WAL_REC_BATCH_FIRST, WAL_REC_JSON; a record of the first format
                        (before the flag, read for an upgrade) has 0 */
};

/* Bytes of a record's fixed part (the first format's: 56). */
#define WAL_REC_HEADER 64

/* wal_rec_size: bytes the record takes in the log (a multiple of 8). */
size_t wal_rec_size(size_t topic_len, size_t event_len, size_t data_len, size_t ikey_len);

/* wal_rec_encode: write r at out (wal_rec_size bytes, padding zeroed),
 * its CRC seeded with salt; returns the size. */
size_t wal_rec_encode(unsigned char *out, const struct wal_rec *r, uint64_t salt);

/* wal_rec_decode: the record at p, of at most avail bytes.  Returns its
 * size and fills *r (pointers into p), or 0 when no valid record with this
 * salt starts there: zeroes, a torn write, garbage, another store's.
 * Records of the first format (56-byte header, no key, no flags) decode
 * too, so that a log left by a crash before an upgrade is replayed. */
size_t wal_rec_decode(const unsigned char *p, size_t avail, struct wal_rec *r, uint64_t salt);

/* Size of the log file: 2 MiB, a checkpoint at the latest every 2 MiB of
 * records (and every second: the writer's sweep). */
#define WAL_DEFAULT_SIZE ((size_t)2 << 20)

struct wal;

/* wal_open: open <dir>/<name>.  Read-write: create it, or extend a shorter
 * one, to `size` bytes of written zeroes (synced, and the directory synced
 * after a creation, so that the file survives a power cut).  Read-only:
 * open it if it exists; *out is NULL and 0 is returned when it does not.
 * Returns 0 or an errno value. */
int wal_open(struct wal **out, const char *dir, const char *name, int read_only, size_t size);

/* wal_room: bytes left after the current position. */
size_t wal_room(const struct wal *w);

/* wal_append: write len bytes at the current position and make them
 * durable; the position advances only on success.  Where the filesystem
 * allows, one O_DIRECT | O_DSYNC write of whole 4 KiB blocks (the rest of
 * the last block zeroed), else pwrite and fdatasync.  Returns 0, ENOSPC
 * when len is more than wal_room, or the errno of the failed write or
 * flush (after which the file's state past the position is unknown). */
int wal_append(struct wal *w, const void *buf, size_t len);

/* wal_direct: 1 while wal_append writes with O_DIRECT | O_DSYNC; 0 on a
 * filesystem without O_DIRECT, with SLUICE_WAL_NO_DIRECT set in the
 * environment, or once wal_write was used. */
int wal_direct(const struct wal *w);

/* wal_write: wal_append without the flush (a relaxed store's), always
 * through the page cache: the records reach the disk at wal_sync, or
 * whenever the kernel writes them back.  The position advances on
 * success. */
int wal_write(struct wal *w, const void *buf, size_t len);

/* wal_sync: fdatasync what was written.  Any thread, beside writes. */
int wal_sync(struct wal *w);

/* wal_rewind: the next append goes to offset 0 (after a checkpoint). */
void wal_rewind(struct wal *w);

/* wal_seek: the next append goes to pos (after records kept at open). */
void wal_seek(struct wal *w, size_t pos);

/* wal_read: the whole file into a new buffer (*buf, free() it) of *len
 * bytes.  Returns 0 or an errno value. */
int wal_read(struct wal *w, unsigned char **buf, size_t *len);

/* wal_zero: write zeroes over [from, end of file) and flush them (not
 * through the direct path).  The position is unchanged.  Returns 0 or an
 * errno value. */
int wal_zero(struct wal *w, size_t from);

/* wal_sync_dir: fsync the directory dir, so that files created or renamed
 * in it survive a power cut.  Returns 0 or an errno value. */
int wal_sync_dir(const char *dir);

void wal_close(struct wal *w);

#endif
