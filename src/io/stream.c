/* SPDX-License-Identifier: MIT */
/*
 * The buffered migration stream.
 *
 * Write side: small puts are copied into one buffer; the iovec list points
 * at runs of that buffer and, in between, at callers' pages queued by
 * reference. A flush hands the whole list to writev, so the page data of
 * the RAM sender (8-byte header + 4 KiB page, repeated) is never copied and
 * one syscall moves up to IOV_MAX / 2 pages.
 *
 * Read side: reads fill the buffer as far as the channel gives; a large get
 * that finds the buffer empty reads straight into the caller's memory.
 */
#define _GNU_SOURCE
#include "io/stream.h"
#include "io/iov.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/rate_limit.h"

#define STREAM_BUF_SIZE (256 * 1024)
#define STREAM_IOV_MAX	IOV_MAX
/* A get at least this big bypasses the read buffer when it is empty. */
#define STREAM_DIRECT_READ_MIN 4096
/* Refs smaller than this are cheaper copied than given an iovec slot. */
#define STREAM_REF_COPY_MAX 64


#define likely(x) __builtin_expect(!!(x), 1)

struct kv_stream {
	struct kv_chan *chan;
	enum kv_stream_mode mode;
	struct kv_error err; /* err.code is also read by other threads */

	uint64_t offset;      /* logical bytes put or got */
	uint64_t transferred; /* bytes that crossed the channel */

	/* max-bandwidth: the stream's own limiter, or one it shares with
	 * other senders of the same migration (multifd channels). */
	struct kv_rate_limit own_rl;
	struct kv_rate_limit *rl;
	uint64_t rate_wait_ns; /* slept for the rate limit (writer only) */

	uint8_t *buf;

	/* write side */
	size_t buf_used;
	struct iovec *iov;
	int iov_cnt;
	bool tail_open; /* iov[iov_cnt - 1] ends at buf + buf_used */

	/* read side */
	size_t rpos, rend;
	bool eof;

	kv_stream_tap_fn tap; /* kv_stream_set_tap; NULL: none */
	void *tap_opaque;
};

struct kv_stream *kv_stream_new(struct kv_chan *chan, enum kv_stream_mode mode)
{
	struct kv_stream *s;

	if (!chan)
		return NULL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->chan = chan;
	s->mode = mode;
	s->buf = malloc(STREAM_BUF_SIZE);
	if (mode == KV_STREAM_WRITE)
		s->iov = malloc(sizeof(*s->iov) * STREAM_IOV_MAX);
	if (!s->buf || (mode == KV_STREAM_WRITE && !s->iov)) {
		free(s->buf);
		free(s->iov);
		free(s);
		return NULL;
	}
	kv_rate_limit_init(&s->own_rl, 0);
	s->rl = &s->own_rl;
	return s;
}

int kv_stream_close(struct kv_stream *s)
{
	int code;

	if (!s)
		return 0;
	if (s->mode == KV_STREAM_WRITE)
		kv_stream_flush(s);
	code = s->err.code;
	kv_chan_close(s->chan);
	kv_rate_limit_destroy(&s->own_rl);
	free(s->iov);
	free(s->buf);
	free(s);
	return code;
}

struct kv_chan *kv_stream_chan(struct kv_stream *s)
{
	return s->chan;
}

void kv_stream_set_tap(struct kv_stream *s, kv_stream_tap_fn fn,
		       void *opaque)
{
	s->tap = fn;
	s->tap_opaque = opaque;
}

/* ---- errors ---- */

__attribute__((format(printf, 3, 0))) static void
stream_verror(struct kv_stream *s, int code, const char *fmt, va_list ap)
{
	if (s->err.code != 0)
		return;
	vsnprintf(s->err.msg, sizeof(s->err.msg), fmt, ap);
	__atomic_store_n(&s->err.code, code < 0 ? code : -code,
			 __ATOMIC_RELEASE);
}

void kv_stream_set_error(struct kv_stream *s, int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	stream_verror(s, code ? code : -EIO, fmt, ap);
	va_end(ap);
}

int kv_stream_error(const struct kv_stream *s)
{
	return __atomic_load_n(&s->err.code, __ATOMIC_ACQUIRE);
}

void kv_stream_error_get(const struct kv_stream *s, struct kv_error *err)
{
	if (err && err->code == 0 && s->err.code != 0)
		*err = s->err;
}

static void set_io_error(struct kv_stream *s, int code, const char *what)
{
	struct kv_error silence = {0};

	if (code == -ETIMEDOUT && kv_chan_silence_ms(s->chan)) {
		kv_chan_silence_error(s->chan, &silence);
		kv_stream_set_error(s, code, "%s (%s at stream offset %llu)",
				    silence.msg, what,
				    (unsigned long long)s->offset);
	} else if (code == -ECANCELED)
		kv_stream_set_error(s, code,
				    "%s: %s cancelled by shutdown at stream offset %llu",
				    s->chan->name, what,
				    (unsigned long long)s->offset);
	else
		kv_stream_set_error(
		    s, code, "%s: %s failed at stream offset %llu: %s",
		    s->chan->name, what, (unsigned long long)s->offset,
		    strerror(-code));
}

/* ---- position in a file (mapped-ram) ---- */

int64_t kv_stream_file_pos(struct kv_stream *s, struct kv_error *err)
{
	int64_t pos;

	if (s->err.code) {
		kv_stream_error_get(s, err);
		return s->err.code;
	}
	if (s->mode == KV_STREAM_WRITE && kv_stream_flush(s) < 0) {
		kv_stream_error_get(s, err);
		return s->err.code;
	}
	pos = kv_chan_file_seek(s->chan, 0, SEEK_CUR, err);
	if (pos < 0)
		return pos;
	if (s->mode == KV_STREAM_READ)
		pos -= (int64_t)(s->rend - s->rpos);
	return pos;
}

int kv_stream_file_seek(struct kv_stream *s, uint64_t pos,
			struct kv_error *err)
{
	int64_t r;

	if (s->err.code) {
		kv_stream_error_get(s, err);
		return s->err.code;
	}
	if (s->mode == KV_STREAM_WRITE && kv_stream_flush(s) < 0) {
		kv_stream_error_get(s, err);
		return s->err.code;
	}
	if (pos > INT64_MAX)
		return kv_error_set(err, -EINVAL, "%s: file offset %llu is out of range", s->chan->name, (unsigned long long)pos);
	r = kv_chan_file_seek(s->chan, (int64_t)pos, SEEK_SET, err);
	if (r < 0) {
		kv_stream_set_error(s, (int)r, "%s", err->msg);
		return (int)r;
	}
	s->rpos = 0;
	s->rend = 0;
	s->eof = false;
	return 0;
}

/* ---- counters, rate limit, shutdown ---- */

uint64_t kv_stream_offset(const struct kv_stream *s)
{
	return s->offset;
}

uint64_t kv_stream_transferred(const struct kv_stream *s)
{
	return s->transferred;
}

uint64_t kv_stream_write_wait_ns(const struct kv_stream *s)
{
	return s->rate_wait_ns + s->chan->write_wait_ns;
}

void kv_stream_set_rate_limit(struct kv_stream *s, uint64_t bytes_per_sec)
{
	kv_rate_limit_set(s->rl, bytes_per_sec);
}

uint64_t kv_stream_rate_limit(const struct kv_stream *s)
{
	return kv_rate_limit_get(s->rl);
}

void kv_stream_share_rate_limit(struct kv_stream *s, struct kv_rate_limit *rl)
{
	s->rl = rl ? rl : &s->own_rl;
}

void kv_stream_shutdown(struct kv_stream *s)
{
	kv_chan_shutdown(s->chan);
}

static bool stream_cancelled(const struct kv_stream *s)
{
	return __atomic_load_n(&s->chan->shutdown_req, __ATOMIC_ACQUIRE) != 0;
}

static bool stream_cancelled_cb(void *opaque)
{
	return stream_cancelled(opaque);
}

/* After n bytes went: wait until the limiter lets the next ones go. */
static int rate_wait(struct kv_stream *s, size_t n)
{
	int64_t due;
	bool cancelled = false;

	if (!kv_rate_limit_get(s->rl))
		return 0; /* no limit: nothing to charge, no clock to read */
	due = kv_rate_limit_charge(s->rl, n);
	if (due > kv_now_ns())
		s->rate_wait_ns +=
		    kv_rate_limit_wait(due, stream_cancelled_cb, s, &cancelled);
	return cancelled ? -ECANCELED : 0;
}

/* ---- writing ---- */

/* Writes iov[0..cnt) (modified as it goes), honouring the rate limit. */
static int write_iov(struct kv_stream *s, struct iovec *iov, int cnt)
{
	while (cnt > 0) {
		size_t budget, covered = 0, saved_len = 0;
		uint64_t chunk;
		int n_iov = 0;
		ssize_t n;

		if (iov->iov_len == 0) {
			iov++;
			cnt--;
			continue;
		}
		chunk = kv_rate_limit_chunk(s->rl);
		budget = chunk > SIZE_MAX ? SIZE_MAX : (size_t)chunk;
		/* Take the entries the budget covers, cutting the last. */
		while (n_iov < cnt && n_iov < STREAM_IOV_MAX &&
		       covered < budget) {
			covered += iov[n_iov].iov_len;
			n_iov++;
		}
		if (covered > budget) {
			saved_len = iov[n_iov - 1].iov_len;
			iov[n_iov - 1].iov_len -= covered - budget;
		}
		n = s->chan->ops->writev(s->chan, iov, n_iov);
		if (saved_len)
			iov[n_iov - 1].iov_len = saved_len;
		if (n < 0)
			return (int)n;
		s->transferred += (uint64_t)n;
		kv_iov_advance(&iov, &cnt, (size_t)n);
		if (rate_wait(s, (size_t)n) < 0)
			return -ECANCELED;
	}
	return 0;
}

int kv_stream_flush(struct kv_stream *s)
{
	int r;

	if (s->mode != KV_STREAM_WRITE)
		return s->err.code;
	if (s->err.code == 0 && s->iov_cnt > 0) {
		r = write_iov(s, s->iov, s->iov_cnt);
		if (r < 0)
			set_io_error(s, r, "write");
	}
	s->buf_used = 0;
	s->iov_cnt = 0;
	s->tail_open = false;
	return s->err.code;
}

static void put_bytes_slow(struct kv_stream *s, const void *p, size_t len)
{
	const uint8_t *src = p;

	while (len > 0 && s->err.code == 0) {
		size_t room, chunk;

		if (s->buf_used == STREAM_BUF_SIZE ||
		    (!s->tail_open && s->iov_cnt == STREAM_IOV_MAX)) {
			kv_stream_flush(s);
			continue;
		}
		if (!s->tail_open) {
			s->iov[s->iov_cnt].iov_base = s->buf + s->buf_used;
			s->iov[s->iov_cnt].iov_len = 0;
			s->iov_cnt++;
			s->tail_open = true;
		}
		room = STREAM_BUF_SIZE - s->buf_used;
		chunk = len < room ? len : room;
		memcpy(s->buf + s->buf_used, src, chunk);
		s->iov[s->iov_cnt - 1].iov_len += chunk;
		s->buf_used += chunk;
		s->offset += chunk;
		src += chunk;
		len -= chunk;
	}
}

/* The common case in one test: room in an open tail run. */
static inline void put_bytes(struct kv_stream *s, const void *p, size_t len)
{
	if (s->tap && s->err.code == 0)
		s->tap(s->tap_opaque, p, len);
	if (likely(s->tail_open && s->buf_used + len <= STREAM_BUF_SIZE &&
		   s->err.code == 0)) {
		memcpy(s->buf + s->buf_used, p, len);
		s->iov[s->iov_cnt - 1].iov_len += len;
		s->buf_used += len;
		s->offset += len;
		return;
	}
	put_bytes_slow(s, p, len);
}

void kv_stream_put_u8(struct kv_stream *s, uint8_t v)
{
	put_bytes(s, &v, 1);
}

void kv_stream_put_be16(struct kv_stream *s, uint16_t v)
{
	v = __builtin_bswap16(v);
	put_bytes(s, &v, 2);
}

void kv_stream_put_be32(struct kv_stream *s, uint32_t v)
{
	v = __builtin_bswap32(v);
	put_bytes(s, &v, 4);
}

void kv_stream_put_be64(struct kv_stream *s, uint64_t v)
{
	v = __builtin_bswap64(v);
	put_bytes(s, &v, 8);
}

void kv_stream_put_buffer(struct kv_stream *s, const void *buf, size_t len)
{
	put_bytes(s, buf, len);
}

void kv_stream_put_str8(struct kv_stream *s, const char *str)
{
	size_t len = strlen(str);

	if (len > 255) {
		kv_stream_set_error(s, -EINVAL,
				    "%s: string of %zu bytes is too long for a u8 length at stream offset %llu",
				    s->chan->name, len,
				    (unsigned long long)s->offset);
		return;
	}
	kv_stream_put_u8(s, (uint8_t)len);
	put_bytes(s, str, len);
}

void kv_stream_put_page_ref(struct kv_stream *s, const void *buf, size_t len)
{
	if (s->err.code != 0 || len == 0)
		return;
	if (len <= STREAM_REF_COPY_MAX) {
		put_bytes(s, buf, len);
		return;
	}
	if (s->tap)
		s->tap(s->tap_opaque, buf, len);
	if (s->iov_cnt == STREAM_IOV_MAX) {
		kv_stream_flush(s);
		if (s->err.code != 0)
			return;
	}
	s->iov[s->iov_cnt].iov_base = (void *)buf;
	s->iov[s->iov_cnt].iov_len = len;
	s->iov_cnt++;
	s->tail_open = false;
	s->offset += len;
}

/* ---- reading ---- */

static void set_eof_error(struct kv_stream *s, size_t wanted)
{
	kv_stream_set_error(s, -EIO,
			    "%s: unexpected end of stream at offset %llu (%zu more bytes expected)",
			    s->chan->name, (unsigned long long)s->offset,
			    wanted);
}

/* One channel read into the empty buffer. Returns bytes buffered, 0 at EOF
 * or on error (the sticky error says which). */
static size_t fill(struct kv_stream *s)
{
	ssize_t n;

	s->rpos = 0;
	s->rend = 0;
	if (s->eof || s->err.code != 0 || s->mode != KV_STREAM_READ)
		return 0;
	n = s->chan->ops->read(s->chan, s->buf, STREAM_BUF_SIZE);
	if (n < 0) {
		set_io_error(s, (int)n, "read");
		return 0;
	}
	if (n == 0) {
		s->eof = true;
		return 0;
	}
	s->rend = (size_t)n;
	s->transferred += (uint64_t)n;
	return (size_t)n;
}

/* Reads straight into dst; returns bytes read, 0 at EOF or on error. */
static size_t read_direct(struct kv_stream *s, void *dst, size_t len)
{
	ssize_t n;

	if (s->eof || s->err.code != 0)
		return 0;
	n = s->chan->ops->read(s->chan, dst, len);
	if (n < 0) {
		set_io_error(s, (int)n, "read");
		return 0;
	}
	if (n == 0)
		s->eof = true;
	s->transferred += (uint64_t)n;
	return (size_t)n;
}

static bool get_bytes_slow(struct kv_stream *s, void *p, size_t len)
{
	uint8_t *dst = p;
	size_t total = len;

	while (len > 0 && s->err.code == 0) {
		size_t avail = s->rend - s->rpos;
		size_t chunk = 0;

		if (avail == 0 && len >= STREAM_DIRECT_READ_MIN) {
			chunk = read_direct(s, dst, len);
		} else if (avail > 0 || fill(s) > 0) {
			avail = s->rend - s->rpos;
			chunk = len < avail ? len : avail;
			memcpy(dst, s->buf + s->rpos, chunk);
			s->rpos += chunk;
		}
		if (chunk == 0) {
			if (s->err.code == 0)
				set_eof_error(s, len);
			break;
		}
		s->offset += chunk;
		dst += chunk;
		len -= chunk;
	}
	if (len > 0) {
		/* A half-read value is worse than none: hand back zeros. */
		memset(p, 0, total);
		return false;
	}
	return true;
}

static inline bool get_bytes(struct kv_stream *s, void *p, size_t len)
{
	bool ok;

	if (likely(s->rend - s->rpos >= len && s->err.code == 0)) {
		memcpy(p, s->buf + s->rpos, len);
		s->rpos += len;
		s->offset += len;
		ok = true;
	} else {
		ok = get_bytes_slow(s, p, len);
	}
	if (s->tap && ok)
		s->tap(s->tap_opaque, p, len);
	return ok;
}

uint8_t kv_stream_get_u8(struct kv_stream *s)
{
	uint8_t v;

	get_bytes(s, &v, 1);
	return v;
}

uint16_t kv_stream_get_be16(struct kv_stream *s)
{
	uint16_t v;

	get_bytes(s, &v, 2);
	return __builtin_bswap16(v);
}

uint32_t kv_stream_get_be32(struct kv_stream *s)
{
	uint32_t v;

	get_bytes(s, &v, 4);
	return __builtin_bswap32(v);
}

uint64_t kv_stream_get_be64(struct kv_stream *s)
{
	uint64_t v;

	get_bytes(s, &v, 8);
	return __builtin_bswap64(v);
}

int kv_stream_get_buffer(struct kv_stream *s, void *buf, size_t len)
{
	if (!get_bytes(s, buf, len))
		return s->err.code;
	return 0;
}

int kv_stream_get_str8(struct kv_stream *s, char *buf, size_t size)
{
	uint8_t len = kv_stream_get_u8(s);

	if (s->err.code != 0) {
		if (size)
			buf[0] = '\0';
		return s->err.code;
	}
	if (size < (size_t)len + 1) {
		kv_stream_set_error(s, -EINVAL,
				    "%s: string of %u bytes at stream offset %llu does not fit a %zu-byte buffer",
				    s->chan->name, len,
				    (unsigned long long)s->offset, size);
		if (size)
			buf[0] = '\0';
		return s->err.code;
	}
	if (!get_bytes(s, buf, len)) {
		buf[0] = '\0';
		return s->err.code;
	}
	buf[len] = '\0';
	return len;
}

int kv_stream_peek_u8(struct kv_stream *s)
{
	if (s->err.code != 0)
		return -1;
	if (s->rpos == s->rend && fill(s) == 0)
		return -1;
	return s->buf[s->rpos];
}

size_t kv_stream_buffered(const struct kv_stream *s)
{
	return s->mode == KV_STREAM_READ ? s->rend - s->rpos : 0;
}

bool kv_stream_at_eof(struct kv_stream *s)
{
	if (s->err.code != 0)
		return false;
	if (s->rpos < s->rend)
		return false;
	return fill(s) == 0 && s->err.code == 0;
}
