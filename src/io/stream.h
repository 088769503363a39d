/* SPDX-License-Identifier: MIT */
/*
 * The buffered migration stream (the role of QEMU's QEMUFile).
 *
 * Writes gather into an internal buffer and an iovec list; page data goes by
 * reference (kv_stream_put_page_ref) and reaches the channel through writev
 * without a copy. All multi-byte values are big-endian.
 *
 * Sticky error: the first failure (I/O error, EOF on read, shutdown, or an
 * error a caller sets with kv_stream_set_error) is kept with its message;
 * every later call is a no-op (gets return 0). Callers check
 * kv_stream_error() at points where a decision depends on it.
 *
 * Rate limit: bytes per second over 100 ms windows, applied when the stream
 * flushes; may be changed from any thread while running (0 = unlimited).
 *
 * Threading: one thread writes (or reads) a stream. kv_stream_shutdown() and
 * kv_stream_set_rate_limit() may be called from any other thread.
 */
#ifndef KV_IO_STREAM_H
#define KV_IO_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "io/channel.h"

struct kv_stream;

enum kv_stream_mode { KV_STREAM_WRITE, KV_STREAM_READ };

/* The stream takes ownership of chan (closed by kv_stream_close). */
struct kv_stream *kv_stream_new(struct kv_chan *chan, enum kv_stream_mode mode);
/* Flush (write mode) and free; returns the sticky error code (0 if none). */
int kv_stream_close(struct kv_stream *s);

struct kv_chan *kv_stream_chan(struct kv_stream *s);

/* --- writing --- */
void kv_stream_put_u8(struct kv_stream *s, uint8_t v);
void kv_stream_put_be16(struct kv_stream *s, uint16_t v);
void kv_stream_put_be32(struct kv_stream *s, uint32_t v);
void kv_stream_put_be64(struct kv_stream *s, uint64_t v);
void kv_stream_put_buffer(struct kv_stream *s, const void *buf, size_t len);
/* u8 length + bytes; strings longer than 255 set the sticky error. */
void kv_stream_put_str8(struct kv_stream *s, const char *str);
/* Queue len bytes at buf by reference: buf must stay valid (and is read)
 * until the next kv_stream_flush(), which happens at the latest when
 * the reference list fills. */
void kv_stream_put_page_ref(struct kv_stream *s, const void *buf, size_t len);
/* Write everything queued to the channel (obeying the rate limit). */
int kv_stream_flush(struct kv_stream *s);

/* --- reading --- */
uint8_t kv_stream_get_u8(struct kv_stream *s);
uint16_t kv_stream_get_be16(struct kv_stream *s);
uint32_t kv_stream_get_be32(struct kv_stream *s);
uint64_t kv_stream_get_be64(struct kv_stream *s);
/* Read exactly len bytes; on error the buffer is zero-filled. */
int kv_stream_get_buffer(struct kv_stream *s, void *buf, size_t len);
/* Read a u8-length string into buf (size >= 256), NUL-terminated. */
int kv_stream_get_str8(struct kv_stream *s, char *buf, size_t size);
/* Look at the next byte without consuming it; -1 at EOF/error. */
int kv_stream_peek_u8(struct kv_stream *s);
/* True at a clean end of input (no more bytes, no error). */
bool kv_stream_at_eof(struct kv_stream *s);
/* Read side: bytes already read from the channel, not yet got. */
size_t kv_stream_buffered(const struct kv_stream *s);

/* --- position in a file (mapped-ram) --- */
/* Where the next byte put or got is in the file (a regular file's
 * channel only; -ESPIPE otherwise). Write side: flushes first. */
int64_t kv_stream_file_pos(struct kv_stream *s, struct kv_error *err);
/* Go on at file offset pos: a writer flushes what it queued first, a
 * reader drops what it buffered. kv_stream_offset does not move: it
 * counts the bytes of the stream, not of the file. */
int kv_stream_file_seek(struct kv_stream *s, uint64_t pos,
			struct kv_error *err);

/* --- errors --- */
/* 0 or the sticky negative errno. */
int kv_stream_error(const struct kv_stream *s);
/* Copy the sticky error (code and message) into err. */
void kv_stream_error_get(const struct kv_stream *s, struct kv_error *err);
/* Set the sticky error if none is set yet. */
void kv_stream_set_error(struct kv_stream *s, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* --- counters --- */
/* Bytes handed to the stream by puts (write) or consumed by gets (read):
 * this is "the stream offset" used in error messages. */
uint64_t kv_stream_offset(const struct kv_stream *s);
/* Bytes actually written to / read from the channel. */
uint64_t kv_stream_transferred(const struct kv_stream *s);
/* Time the writer waited for the channel to take more or for the rate
 * limit (to a sender a cap is a slow link). The writing thread only. */
uint64_t kv_stream_write_wait_ns(const struct kv_stream *s);

/* --- tap --- */
/* Hand every byte put (write) or got (read) to fn, in stream order, until
 * set again with fn NULL: the section digests of --verify-ram
 * (savevm.c) see exactly the bytes on the wire. Page references are
 * handed over when put, not when flushed. The stream's own thread. */
typedef void (*kv_stream_tap_fn)(void *opaque, const void *buf, size_t len);
void kv_stream_set_tap(struct kv_stream *s, kv_stream_tap_fn fn,
		       void *opaque);

/* --- rate limit and cancellation --- */
void kv_stream_set_rate_limit(struct kv_stream *s, uint64_t bytes_per_sec);
uint64_t kv_stream_rate_limit(const struct kv_stream *s);
/* Charge rl instead of the stream's own limiter (NULL: its own again), so
 * that the stream and other senders of one migration share one limit;
 * set_rate_limit then changes rl. Before writing; rl outlives the
 * stream's writes. */
struct kv_rate_limit;
void kv_stream_share_rate_limit(struct kv_stream *s, struct kv_rate_limit *rl);
/* From any thread: abort blocked and later I/O with -ECANCELED. */
void kv_stream_shutdown(struct kv_stream *s);

#endif
