/* SPDX-License-Identifier: MIT */
/*
 * The return path over the migration channel. Messages are tiny and rare,
 * so they bypass the stream: the destination writes straight to the
 * channel; on the source one reader thread reads them (the stream only
 * writes there) and records what they say for the migration thread.
 */
#include "migration/return_path.h"
#include "io/tls.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/bytes.h"
#include "base/clock.h"
#include "base/thread_role.h"
#include "migration/postcopy/postcopy_src.h"

#define RP_HEADER_LEN 4
/* How often a reader waiting for the destination looks whether it was
 * asked to stop (a shutdown of the channel wakes it at once anyway). */
#define RP_STOP_SLICE_NS (20 * 1000000LL)
/* Recovery: received bitmaps a reader keeps (one per RAM block), and the
 * largest one it reads (one bit a page: 32 GiB of 4 KiB pages). */
#define RP_MAX_BITMAPS 64
#define RP_MAX_BITMAP_BYTES (1U << 20)

struct kv_rp_reader {
	struct kv_chan *c;
	pthread_t thread;
	int stop; /* atomic: kv_rp_reader_stop asked */

	pthread_mutex_t lock;
	pthread_cond_t cond; /* CLOCK_MONOTONIC: a wait has a deadline */
	/* Under lock: what the messages said, and how the reader ended. */
	bool pong_seen;
	uint32_t pong_last;
	bool shut_seen;
	uint32_t shut_status;
	bool ready_seen;
	struct kv_swo_id ready_id;
	bool ended;
	struct kv_error fail; /* why it ended, unless after SHUT */
	struct kv_pc_src *pcs; /* atomic: postcopy's queue, or NULL */
	/* Postcopy recovery, under lock: the received bitmaps that came
	 * (RECV_BITMAP: the message and the blob after it), RESUME_ACK. */
	struct rp_bitmap {
		char idstr[KV_PC_IDSTR_MAX + 1];
		uint8_t *blob;
		size_t len;
	} bitmaps[RP_MAX_BITMAPS];
	size_t nbitmaps;
	bool resume_ack;
};

/* ---- the message table ---- */

/* FIXED: the payload is exactly len bytes. NAMED: len bytes, then a
 * length byte n, then an n-byte name (a RAM block's idstr). */
enum rp_len_rule { RP_LEN_FIXED, RP_LEN_NAMED };

struct rp_msg_desc {
	uint16_t type;
	const char *name;
	enum rp_len_rule rule;
	uint16_t len;
	/* 0 go on, 1 the last message (the reader ends), <0 fail. NULL:
	 * known to the format but not served by this source. */
	int (*handle)(struct kv_rp_reader *r, const uint8_t *payload,
		      struct kv_error *err);
};

static int handle_shut(struct kv_rp_reader *r, const uint8_t *payload,
		       struct kv_error *err);
static int handle_pong(struct kv_rp_reader *r, const uint8_t *payload,
		       struct kv_error *err);
static int handle_ready(struct kv_rp_reader *r, const uint8_t *payload,
			struct kv_error *err);
static int handle_req_pages(struct kv_rp_reader *r, const uint8_t *payload,
			    struct kv_error *err);
static int handle_req_pages_id(struct kv_rp_reader *r, const uint8_t *payload,
			       struct kv_error *err);
static int handle_recv_bitmap(struct kv_rp_reader *r, const uint8_t *payload,
			      struct kv_error *err);
static int handle_resume_ack(struct kv_rp_reader *r, const uint8_t *payload,
			     struct kv_error *err);

/* QEMU's rp_cmd_args, with the handler beside each, and kvmig's READY:
 * docs/DESIGN.md has the same table for readers. */
static const struct rp_msg_desc rp_msgs[] = {
    {KV_RP_MSG_SHUT, "SHUT", RP_LEN_FIXED, 4, handle_shut},
    {KV_RP_MSG_PONG, "PONG", RP_LEN_FIXED, 4, handle_pong},
    /* be64 start, be32 length, then the block's idstr */
    {KV_RP_MSG_REQ_PAGES_ID, "REQ_PAGES_ID", RP_LEN_NAMED, 12,
     handle_req_pages_id},
    /* be64 start, be32 length, in the last block named */
    {KV_RP_MSG_REQ_PAGES, "REQ_PAGES", RP_LEN_FIXED, 12, handle_req_pages},
    /* the block's idstr; its bitmap follows on the stream */
    {KV_RP_MSG_RECV_BITMAP, "RECV_BITMAP", RP_LEN_NAMED, 0,
     handle_recv_bitmap},
    /* be32 1: the destination is ready to resume postcopy */
    {KV_RP_MSG_RESUME_ACK, "RESUME_ACK", RP_LEN_FIXED, 4, handle_resume_ack},
    {KV_RP_MSG_SWITCHOVER_ACK, "SWITCHOVER_ACK", RP_LEN_FIXED, 0, NULL},
    /* kvmig: the migration's 16-byte id (switchover.h) */
    {KV_RP_MSG_READY, "READY", RP_LEN_FIXED, KV_SWO_ID_LEN, handle_ready},
};

#define RP_NMSGS (sizeof(rp_msgs) / sizeof(rp_msgs[0]))

static const struct rp_msg_desc *rp_msg_find(uint16_t type)
{
	for (size_t i = 0; i < RP_NMSGS; i++)
		if (rp_msgs[i].type == type)
			return &rp_msgs[i];
	return NULL;
}

const char *kv_rp_msg_name(uint16_t type)
{
	const struct rp_msg_desc *d = rp_msg_find(type);

	return d ? d->name : NULL;
}

int kv_rp_check_header(uint16_t type, uint16_t len, struct kv_error *err)
{
	const struct rp_msg_desc *d = rp_msg_find(type);
	const uint8_t head[2] = {(uint8_t)(type >> 8), (uint8_t)type};

	if (!d && kv_tls_looks_like_record(head, sizeof(head)))
		return kv_error_set(err, -EPROTO, "return path: the destination answered with a TLS record: it has tls-creds set, this source none (set tls-creds here too)");
	if (!d)
		return kv_error_set(
		    err, -EPROTO,
		    "return path: unknown message from the destination (type %u, length %u)",
		    type, len);
	if (d->rule == RP_LEN_FIXED && len != d->len)
		return kv_error_set(
		    err, -EPROTO,
		    "return path: malformed %s message from the destination (type %u, length %u; expected %u bytes)",
		    d->name, type, len, d->len);
	if (d->rule == RP_LEN_NAMED &&
	    (len < d->len + 1 || len > d->len + 1 + 255))
		return kv_error_set(
		    err, -EPROTO,
		    "return path: malformed %s message from the destination (type %u, length %u; expected %u bytes, a name length byte and the name)",
		    d->name, type, len, d->len);
	if (len > KV_RP_MAX_PAYLOAD)
		return kv_error_set(
		    err, -EPROTO,
		    "return path: %s message from the destination too long (type %u, length %u; at most %u bytes)",
		    d->name, type, len, KV_RP_MAX_PAYLOAD);
	return 0;
}

int kv_rp_check_message(uint16_t type, const uint8_t *payload, uint16_t len,
			struct kv_error *err)
{
	const struct rp_msg_desc *d = rp_msg_find(type);
	int ret = kv_rp_check_header(type, len, err);

	if (ret < 0 || d->rule != RP_LEN_NAMED)
		return ret;
	if (len != d->len + 1 + payload[d->len])
		return kv_error_set(
		    err, -EPROTO,
		    "return path: malformed %s message from the destination (type %u, length %u; its name of %u bytes makes it %u)",
		    d->name, type, len, payload[d->len],
		    d->len + 1 + payload[d->len]);
	return 0;
}

/* ---- sending (destination) ---- */

/* SHUT and PONG both carry one be32. */
static int rp_send_u32(struct kv_chan *c, uint16_t type, uint32_t value,
		       struct kv_error *err)
{
	uint8_t msg[RP_HEADER_LEN + 4];
	struct iovec iov = {.iov_base = msg, .iov_len = sizeof(msg)};
	int ret;

	kv_put_be16(msg, type);
	kv_put_be16(msg + 2, 4);
	kv_put_be32(msg + 4, value);
	ret = kv_chan_writev_full(c, &iov, 1, err);
	if (ret < 0)
		kv_error_prefix(err, "return path: sending %s(%u)",
				kv_rp_msg_name(type), value);
	return ret;
}

int kv_rp_send_shut(struct kv_chan *c, uint32_t status, struct kv_error *err)
{
	return rp_send_u32(c, KV_RP_MSG_SHUT, status, err);
}

int kv_rp_send_pong(struct kv_chan *c, uint32_t value, struct kv_error *err)
{
	return rp_send_u32(c, KV_RP_MSG_PONG, value, err);
}

int kv_rp_send_ready(struct kv_chan *c, const struct kv_swo_id *id,
		     struct kv_error *err)
{
	uint8_t msg[RP_HEADER_LEN + KV_SWO_ID_LEN];
	struct iovec iov = {.iov_base = msg, .iov_len = sizeof(msg)};
	int ret;

	kv_put_be16(msg, KV_RP_MSG_READY);
	kv_put_be16(msg + 2, KV_SWO_ID_LEN);
	memcpy(msg + RP_HEADER_LEN, id->b, KV_SWO_ID_LEN);
	ret = kv_chan_writev_full(c, &iov, 1, err);
	if (ret < 0)
		kv_error_prefix(err, "return path: sending READY");
	return ret;
}

/* ---- the writer shared by threads (destination) ---- */

void kv_rp_writer_init(struct kv_rp_writer *w, struct kv_chan *c)
{
	w->c = c;
	pthread_mutex_init(&w->lock, NULL);
}

void kv_rp_writer_destroy(struct kv_rp_writer *w)
{
	pthread_mutex_destroy(&w->lock);
}

void kv_rp_writer_switch(struct kv_rp_writer *w, struct kv_chan *c)
{
	pthread_mutex_lock(&w->lock);
	w->c = c;
	pthread_mutex_unlock(&w->lock);
}

int kv_rp_writer_send(struct kv_rp_writer *w, uint16_t type,
		      const void *payload, uint16_t len, struct kv_error *err)
{
	return kv_rp_writer_send_tail(w, type, payload, len, NULL, 0, err);
}

int kv_rp_writer_send_tail(struct kv_rp_writer *w, uint16_t type,
			   const void *payload, uint16_t len, const void *tail,
			   size_t tail_len, struct kv_error *err)
{
	uint8_t msg[RP_HEADER_LEN + KV_RP_MAX_PAYLOAD];
	struct iovec iov[2] = {
	    {.iov_base = msg, .iov_len = RP_HEADER_LEN + len},
	    {.iov_base = (void *)tail, .iov_len = tail_len},
	};
	int ret;

	if (len > KV_RP_MAX_PAYLOAD)
		return kv_error_set(err, -EINVAL, "return path: a %s message of %u bytes (at most %u)", kv_rp_msg_name(type), len, KV_RP_MAX_PAYLOAD);
	kv_put_be16(msg, type);
	kv_put_be16(msg + 2, len);
	if (len)
		memcpy(msg + RP_HEADER_LEN, payload, len);
	pthread_mutex_lock(&w->lock);
	ret = kv_chan_writev_full(w->c, iov, tail_len ? 2 : 1, err);
	pthread_mutex_unlock(&w->lock);
	if (ret < 0)
		kv_error_prefix(err, "return path: sending %s", kv_rp_msg_name(type));
	return ret;
}

int kv_rp_writer_send_u32(struct kv_rp_writer *w, uint16_t type,
			  uint32_t value, struct kv_error *err)
{
	uint8_t p[4];

	kv_put_be32(p, value);
	return kv_rp_writer_send(w, type, p, sizeof(p), err);
}

/* ---- the reader (source) ---- */

void kv_rp_reader_set_postcopy(struct kv_rp_reader *r, struct kv_pc_src *pcs)
{
	__atomic_store_n(&r->pcs, pcs, __ATOMIC_RELEASE);
}

/* A page request: queued for the sender, or the migration fails (a
 * request for a page that is no page of ours is a destination gone
 * wrong). Before postcopy began nobody asks. */
static int handle_request(struct kv_rp_reader *r, uint16_t type,
			  const uint8_t *payload, uint16_t len,
			  struct kv_error *err)
{
	struct kv_pc_src *pcs = __atomic_load_n(&r->pcs, __ATOMIC_ACQUIRE);

	if (!pcs)
		return kv_error_set(err, -EPROTO, "return path: the destination sent %s before postcopy began", kv_rp_msg_name(type));
	if (kv_pc_src_handle_message(pcs, type, payload, len, err) < 0) {
		kv_error_prefix(err, "return path");
		return err->code;
	}
	return 0;
}

static int handle_req_pages(struct kv_rp_reader *r, const uint8_t *payload,
			    struct kv_error *err)
{
	return handle_request(r, KV_RP_MSG_REQ_PAGES, payload, 12, err);
}

static int handle_req_pages_id(struct kv_rp_reader *r, const uint8_t *payload,
			       struct kv_error *err)
{
	return handle_request(r, KV_RP_MSG_REQ_PAGES_ID, payload,
			      (uint16_t)(13 + payload[12]), err);
}

static int rp_read(struct kv_rp_reader *r, void *buf, size_t len,
		   struct kv_error *err);

/* RECV_BITMAP (recovery): the block's name, then on the return path its
 * received bitmap (be64 size, the bits, the end mark; FORMAT.md 12.5),
 * kept whole for kv_rp_reader_wait_bitmap, which decodes it. */
static int handle_recv_bitmap(struct kv_rp_reader *r, const uint8_t *payload,
			      struct kv_error *err)
{
	struct rp_bitmap *b;
	uint8_t head[8];
	uint64_t size = 0;
	uint8_t *blob;
	int ret;

	if (!__atomic_load_n(&r->pcs, __ATOMIC_ACQUIRE) || r->nbitmaps >= RP_MAX_BITMAPS)
		return kv_error_set(err, -EPROTO, "return path: the destination sent RECV_BITMAP, which this source did not ask for");
	ret = rp_read(r, head, sizeof(head), err);
	if (ret < 0)
		return ret;
	for (int i = 0; i < 8; i++)
		size = size << 8 | head[i];
	if (size > RP_MAX_BITMAP_BYTES)
		return kv_error_set(err, -EPROTO, "return path: a received bitmap of %llu bytes (at most %u)", (unsigned long long)size, RP_MAX_BITMAP_BYTES);
	blob = malloc(16 + size);
	if (!blob)
		return kv_error_set(err, -ENOMEM, "return path: out of memory");
	memcpy(blob, head, 8);
	ret = rp_read(r, blob + 8, size + 8, err);
	if (ret < 0) {
		free(blob);
		return ret;
	}
	pthread_mutex_lock(&r->lock);
	b = &r->bitmaps[r->nbitmaps++];
	memcpy(b->idstr, payload + 1, payload[0]);
	b->idstr[payload[0]] = '\0';
	b->blob = blob;
	b->len = 16 + size;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	return 0;
}

static int handle_resume_ack(struct kv_rp_reader *r, const uint8_t *payload,
			     struct kv_error *err)
{
	int ret = kv_pc_resume_ack_decode(payload, 4, err);

	if (ret < 0)
		return ret;
	pthread_mutex_lock(&r->lock);
	r->resume_ack = true;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	return 0;
}

static int handle_shut(struct kv_rp_reader *r, const uint8_t *payload,
		       struct kv_error *err)
{
	(void)err;
	pthread_mutex_lock(&r->lock);
	r->shut_seen = true;
	r->shut_status = kv_get_be32(payload);
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	return 1; /* the destination sends nothing after it */
}

static int handle_pong(struct kv_rp_reader *r, const uint8_t *payload,
		       struct kv_error *err)
{
	(void)err;
	pthread_mutex_lock(&r->lock);
	r->pong_seen = true;
	r->pong_last = kv_get_be32(payload);
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	return 0;
}

static int handle_ready(struct kv_rp_reader *r, const uint8_t *payload,
			struct kv_error *err)
{
	(void)err;
	pthread_mutex_lock(&r->lock);
	r->ready_seen = true;
	memcpy(r->ready_id.b, payload, KV_SWO_ID_LEN);
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	return 0; /* SHUT follows, after the decision */
}

static bool stop_requested(const struct kv_rp_reader *r)
{
	return __atomic_load_n(&r->stop, __ATOMIC_ACQUIRE) != 0;
}

/* Read exactly len bytes, looking at the stop request between waits. */
static int rp_read(struct kv_rp_reader *r, void *buf, size_t len,
		   struct kv_error *err)
{
	struct kv_chan *c = r->c;
	size_t done = 0;

	while (done < len) {
		ssize_t n;
		int w;

		if (stop_requested(r))
			return kv_error_set(err, -ECANCELED,
					    "return path: reader stopped");
		w = kv_chan_wait_readable(c, kv_now_ns() + RP_STOP_SLICE_NS);
		if (w == 0)
			continue;
		n = w < 0 ? w
			  : c->ops->read(c, (uint8_t *)buf + done, len - done);
		if (n == 0)
			return kv_error_set(
			    err, -EPIPE,
			    "return path: the destination closed %s without confirming the migration",
			    c->name);
		if (n == -ECANCELED)
			return kv_error_set(
			    err, -ECANCELED,
			    "return path: cancelled while waiting for the destination");
		/* The kernel gave up (TCP_USER_TIMEOUT): the same silence. */
		if (n == -ETIMEDOUT && kv_chan_silence_ms(c))
			return kv_chan_silence_error(c, err);
		if (n < 0)
			return kv_error_set_errno(
			    err, (int)n, "return path: reading from %s",
			    c->name);
		done += (size_t)n;
	}
	return 0;
}

/* One message, checked against the table and handed to its handler. */
static int rp_read_message(struct kv_rp_reader *r, struct kv_error *err)
{
	uint8_t hdr[RP_HEADER_LEN], payload[KV_RP_MAX_PAYLOAD];
	const struct rp_msg_desc *d;
	uint16_t type, len;
	int ret;

	ret = rp_read(r, hdr, sizeof(hdr), err);
	if (ret < 0)
		return ret;
	type = kv_get_be16(hdr);
	len = kv_get_be16(hdr + 2);
	ret = kv_rp_check_header(type, len, err);
	if (ret < 0)
		return ret;
	ret = rp_read(r, payload, len, err);
	if (ret < 0)
		return ret;
	ret = kv_rp_check_message(type, payload, len, err);
	if (ret < 0)
		return ret;
	d = rp_msg_find(type);
	if (!d->handle)
		return kv_error_set(
		    err, -EPROTO,
		    "return path: the destination sent %s (type %u, length %u), which this source does not support",
		    d->name, type, len);
	return d->handle(r, payload, err);
}

/* A destination that failed or broke the return path will not take the
 * rest of the stream: shut the channel so the migration thread stops
 * writing to it now. A cancel or a stop is not the destination's doing. */
static bool destination_gave_up(const struct kv_rp_reader *r, int ret)
{
	if (ret < 0)
		return ret != -ECANCELED;
	return r->shut_status != 0;
}

static void *reader_main(void *opaque)
{
	struct kv_rp_reader *r = opaque;
	struct kv_error err = {0};
	bool gave_up;
	int ret;

	/* In postcopy a vCPU on the destination waits on each REQ_PAGES it
	 * reads; otherwise it reads a few small messages. */
	kv_thread_set_role(KV_THREAD_URGENT);
	do
		ret = rp_read_message(r, &err);
	while (ret == 0);
	pthread_mutex_lock(&r->lock);
	if (ret < 0)
		kv_error_propagate(&r->fail, &err);
	r->ended = true;
	gave_up = destination_gave_up(r, ret);
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	if (gave_up)
		kv_chan_shutdown(r->c);
	return NULL;
}

struct kv_rp_reader *kv_rp_reader_start(struct kv_chan *c, struct kv_error *err)
{
	struct kv_rp_reader *r = calloc(1, sizeof(*r));
	pthread_condattr_t attr;

	if (!r) {
		kv_error_set(err, -ENOMEM, "return path: out of memory");
		return NULL;
	}
	r->c = c;
	pthread_mutex_init(&r->lock, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&r->cond, &attr);
	pthread_condattr_destroy(&attr);
	if (pthread_create(&r->thread, NULL, reader_main, r) != 0) {
		kv_error_set(
		    err, -EAGAIN,
		    "return path: cannot start the reader thread on %s",
		    c->name);
		pthread_cond_destroy(&r->cond);
		pthread_mutex_destroy(&r->lock);
		free(r);
		return NULL;
	}
	return r;
}

void kv_rp_reader_stop(struct kv_rp_reader *r)
{
	if (!r)
		return;
	__atomic_store_n(&r->stop, 1, __ATOMIC_RELEASE);
	pthread_join(r->thread, NULL);
	for (size_t i = 0; i < r->nbitmaps; i++)
		free(r->bitmaps[i].blob);
	pthread_cond_destroy(&r->cond);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

static struct timespec deadline_after_ns(int64_t timeout_ns)
{
	int64_t ns = kv_now_ns() + timeout_ns;

	return (struct timespec){.tv_sec = ns / 1000000000,
				 .tv_nsec = ns % 1000000000};
}

/* Under lock: wait for news until the deadline; false once it passed
 * (the caller looks once more: news may have come with the deadline). */
static bool wait_news(struct kv_rp_reader *r, const struct timespec *until)
{
	return pthread_cond_timedwait(&r->cond, &r->lock, until) != ETIMEDOUT;
}

/* Under lock: the reader ended without SHUT; say why. */
static int reader_failure(struct kv_rp_reader *r, struct kv_error *err)
{
	if (!r->fail.code)
		kv_error_set(&r->fail, -EPIPE,
			     "return path: the reader on %s ended", r->c->name);
	kv_error_propagate(err, &r->fail);
	return r->fail.code;
}

int kv_rp_reader_verdict(struct kv_rp_reader *r, struct kv_error *err)
{
	int ret = 0;

	pthread_mutex_lock(&r->lock);
	if (r->ended && r->fail.code && r->fail.code != -ECANCELED) {
		kv_error_propagate(err, &r->fail);
		ret = r->fail.code;
	}
	pthread_mutex_unlock(&r->lock);
	return ret;
}

static int no_answer(const struct kv_rp_reader *r, int timeout_ms,
		     struct kv_error *err)
{
	return kv_error_set(
	    err, -ETIMEDOUT,
	    "return path: no answer from the destination on %s within %d ms",
	    r->c->name, timeout_ms);
}

static bool pong_arrived(const struct kv_rp_reader *r, uint32_t value)
{
	return r->pong_seen && (int32_t)(r->pong_last - value) >= 0;
}

enum rp_want { WANT_PONG, WANT_SHUT, WANT_READY };

/* Under r->lock: 1 when what the waiter wants has arrived, 0 not yet,
 * <0 with err set when it never will. WANT_PONG: a PONG answering value
 * (a SHUT then means the destination failed); WANT_SHUT: a SHUT
 * (*status); WANT_READY: READY for id (a SHUT(n) before it: the
 * destination failed, *status = n). */
static int arrived(struct kv_rp_reader *r, enum rp_want want, uint32_t value,
		   const struct kv_swo_id *id, uint32_t *status,
		   struct kv_error *err)
{
	if (want == WANT_PONG && pong_arrived(r, value))
		return 1;
	if (want == WANT_READY && r->ready_seen) {
		if (memcmp(r->ready_id.b, id->b, KV_SWO_ID_LEN))
			return kv_error_set(err, -EPROTO, "return path: the destination's READY names another migration");
		return 1;
	}
	if (r->shut_seen && want == WANT_SHUT) {
		*status = r->shut_status;
		return 1;
	}
	if (r->shut_seen && want == WANT_READY) {
		*status = r->shut_status;
		return kv_error_set(err, -EREMOTEIO, "the destination failed to load the migration stream (it answered SHUT with status %u before READY; see its log); the source keeps its guest", r->shut_status);
	}
	if (r->shut_seen)
		return kv_error_set(err, -EREMOTEIO, "the destination failed to load the migration stream (it answered SHUT with status %u while the source waited for PONG %u; see its log)", r->shut_status, value);
	if (r->ended)
		return reader_failure(r, err);
	return 0;
}

/* One slice of a wait: 1 arrived, 0 not within timeout_ns, <0 never. */
static int reader_wait_slice(struct kv_rp_reader *r, enum rp_want want,
			     uint32_t value, const struct kv_swo_id *id,
			     int64_t timeout_ns, uint32_t *status,
			     struct kv_error *err)
{
	struct timespec until = deadline_after_ns(timeout_ns);
	int ret;

	pthread_mutex_lock(&r->lock);
	while ((ret = arrived(r, want, value, id, status, err)) == 0 &&
	       wait_news(r, &until))
		;
	if (ret == 0)
		ret = arrived(r, want, value, id, status, err);
	pthread_mutex_unlock(&r->lock);
	return ret;
}

/* A whole wait: 0 arrived, <0 with err set (the timeout included). */
static int reader_wait(struct kv_rp_reader *r, enum rp_want want,
		       uint32_t value, const struct kv_swo_id *id,
		       int timeout_ms, uint32_t *status, struct kv_error *err)
{
	int ret = reader_wait_slice(r, want, value, id,
				    (int64_t)timeout_ms * 1000000, status, err);

	if (ret == 0)
		ret = no_answer(r, timeout_ms, err);
	return ret < 0 ? ret : 0;
}

int kv_rp_reader_wait_pong(struct kv_rp_reader *r, uint32_t value,
			   int timeout_ms, struct kv_error *err)
{
	uint32_t unused;

	return reader_wait(r, WANT_PONG, value, NULL, timeout_ms, &unused,
			   err);
}

int kv_rp_reader_wait_shut(struct kv_rp_reader *r, int timeout_ms,
			   uint32_t *status, struct kv_error *err)
{
	return reader_wait(r, WANT_SHUT, 0, NULL, timeout_ms, status, err);
}

int kv_rp_reader_wait_ready(struct kv_rp_reader *r,
			    const struct kv_swo_id *id, int timeout_ms,
			    struct kv_error *err)
{
	uint32_t unused;

	return reader_wait(r, WANT_READY, 0, id, timeout_ms, &unused, err);
}

int kv_rp_reader_wait_pong_for(struct kv_rp_reader *r, uint32_t value,
			       int64_t timeout_ns, struct kv_error *err)
{
	uint32_t unused;

	return reader_wait_slice(r, WANT_PONG, value, NULL, timeout_ns,
				 &unused, err);
}

int kv_rp_reader_wait_shut_for(struct kv_rp_reader *r, int64_t timeout_ns,
			       uint32_t *status, struct kv_error *err)
{
	return reader_wait_slice(r, WANT_SHUT, 0, NULL, timeout_ns, status,
				 err);
}

int kv_rp_reader_wait_ready_for(struct kv_rp_reader *r,
				const struct kv_swo_id *id,
				int64_t timeout_ns, struct kv_error *err)
{
	uint32_t unused;

	return reader_wait_slice(r, WANT_READY, 0, id, timeout_ns, &unused,
				 err);
}

/* Under lock: the bitmap of idstr, taken out of the reader. */
static bool take_bitmap(struct kv_rp_reader *r, const char *idstr,
			uint8_t **blob, size_t *len)
{
	for (size_t i = 0; i < r->nbitmaps; i++) {
		if (!r->bitmaps[i].blob || strcmp(r->bitmaps[i].idstr, idstr))
			continue;
		*blob = r->bitmaps[i].blob;
		*len = r->bitmaps[i].len;
		r->bitmaps[i].blob = NULL;
		return true;
	}
	return false;
}

int kv_rp_reader_wait_bitmap(struct kv_rp_reader *r, const char *idstr,
			     int timeout_ms, uint8_t **blob, size_t *len,
			     struct kv_error *err)
{
	struct timespec until = deadline_after_ns((int64_t)timeout_ms * 1000000);
	int ret = 0;

	pthread_mutex_lock(&r->lock);
	while (!take_bitmap(r, idstr, blob, len)) {
		if (r->ended) {
			ret = reader_failure(r, err);
			break;
		}
		if (!wait_news(r, &until)) {
			if (take_bitmap(r, idstr, blob, len))
				break;
			ret = kv_error_set(err, -ETIMEDOUT, "return path: no received bitmap of block '%s' from the destination within %d ms", idstr, timeout_ms);
			break;
		}
	}
	pthread_mutex_unlock(&r->lock);
	return ret;
}

int kv_rp_reader_wait_resume_ack(struct kv_rp_reader *r, int timeout_ms,
				 struct kv_error *err)
{
	struct timespec until = deadline_after_ns((int64_t)timeout_ms * 1000000);
	int ret = 0;

	pthread_mutex_lock(&r->lock);
	while (!r->resume_ack) {
		if (r->ended) {
			ret = reader_failure(r, err);
			break;
		}
		if (!wait_news(r, &until) && !r->resume_ack) {
			ret = kv_error_set(err, -ETIMEDOUT, "return path: no RESUME_ACK from the destination within %d ms", timeout_ms);
			break;
		}
	}
	pthread_mutex_unlock(&r->lock);
	return ret;
}
