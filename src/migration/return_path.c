/* SPDX-License-Identifier: MIT */
/*
 * The return path over the migration channel. Messages are tiny and rare,
 * so they bypass the stream: the destination writes straight to the
 * channel, and the source polls the channel's fd with a deadline, in short
 * slices so a shutdown of the channel is noticed promptly.
 */
#include "migration/return_path.h"

#include <errno.h>
#include <poll.h>

#include "base/clock.h"

#define RP_HEADER_LEN	 4
#define RP_SHUT_LEN	 4
#define RP_POLL_SLICE_MS 100

static void put_be16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void put_be32(uint8_t *p, uint32_t v)
{
	put_be16(p, (uint16_t)(v >> 16));
	put_be16(p + 2, (uint16_t)v);
}

static uint16_t get_be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)get_be16(p) << 16 | get_be16(p + 2);
}

/* SHUT and PONG both carry one be32. */
static int rp_send(struct kv_chan *c, uint16_t type, uint32_t value,
		   struct kv_error *err)
{
	uint8_t msg[RP_HEADER_LEN + RP_SHUT_LEN];
	struct iovec iov = {.iov_base = msg, .iov_len = sizeof(msg)};
	int ret;

	put_be16(msg, type);
	put_be16(msg + 2, RP_SHUT_LEN);
	put_be32(msg + 4, value);
	ret = kv_chan_writev_full(c, &iov, 1, err);
	if (ret < 0)
		kv_error_prefix(err, "return path: sending %s(%u)",
				type == KV_RP_MSG_SHUT ? "SHUT" : "PONG",
				value);
	return ret;
}

int kv_rp_send_shut(struct kv_chan *c, uint32_t status, struct kv_error *err)
{
	return rp_send(c, KV_RP_MSG_SHUT, status, err);
}

int kv_rp_send_pong(struct kv_chan *c, uint32_t value, struct kv_error *err)
{
	return rp_send(c, KV_RP_MSG_PONG, value, err);
}

/* Read exactly len bytes before deadline_ns. */
static int rp_read(struct kv_chan *c, void *buf, size_t len,
		   int64_t deadline_ns, int timeout_ms, struct kv_error *err)
{
	size_t done = 0;

	while (done < len) {
		struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
		int64_t left_ms = (deadline_ns - kv_now_ns()) / 1000000;
		ssize_t n;
		int r;

		if (__atomic_load_n(&c->shutdown_req, __ATOMIC_ACQUIRE))
			return kv_error_set(err, -ECANCELED,
					    "return path: "
					    "cancelled while waiting for the "
					    "destination");
		if (left_ms <= 0)
			return kv_error_set(err, -ETIMEDOUT,
					    "return path: no "
					    "answer from the destination on "
					    "%s within %d ms",
					    c->name, timeout_ms);
		r = poll(&pfd, 1,
			 left_ms < RP_POLL_SLICE_MS ? (int)left_ms
						    : RP_POLL_SLICE_MS);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return kv_error_set_errno(err, -errno,
						  "return path: "
						  "poll on %s",
						  c->name);
		if (r == 0)
			continue;
		n = c->ops->read(c, (uint8_t *)buf + done, len - done);
		if (n == 0)
			return kv_error_set(err, -EPIPE,
					    "return path: the "
					    "destination closed %s without "
					    "confirming the migration",
					    c->name);
		if (n == -ECANCELED)
			continue; /* reported at the top of the loop */
		if (n < 0)
			return kv_error_set_errno(err, (int)n,
						  "return path: "
						  "reading from %s",
						  c->name);
		done += (size_t)n;
	}
	return 0;
}

/* One SHUT or PONG message and its value. */
static int rp_read_msg(struct kv_chan *c, int64_t deadline, int timeout_ms,
		       uint16_t *type, uint32_t *value, struct kv_error *err)
{
	uint8_t hdr[RP_HEADER_LEN], payload[RP_SHUT_LEN];
	uint16_t len;
	int ret;

	ret = rp_read(c, hdr, sizeof(hdr), deadline, timeout_ms, err);
	if (ret < 0)
		return ret;
	*type = get_be16(hdr);
	len = get_be16(hdr + 2);
	if ((*type != KV_RP_MSG_SHUT && *type != KV_RP_MSG_PONG) ||
	    len != RP_SHUT_LEN)
		return kv_error_set(err, -EPROTO,
				    "return path: "
				    "malformed message from the "
				    "destination (type %u, length %u; "
				    "expected SHUT or PONG with 4 "
				    "bytes)",
				    *type, len);
	ret = rp_read(c, payload, sizeof(payload), deadline, timeout_ms, err);
	if (ret < 0)
		return ret;
	*value = get_be32(payload);
	return 0;
}

int kv_rp_wait_shut(struct kv_chan *c, int timeout_ms, uint32_t *status,
		    struct kv_error *err)
{
	int64_t deadline = kv_now_ns() + (int64_t)timeout_ms * 1000000;
	uint16_t type;
	uint32_t value;
	int ret;

	for (;;) {
		ret = rp_read_msg(c, deadline, timeout_ms, &type, &value, err);
		if (ret < 0)
			return ret;
		if (type == KV_RP_MSG_SHUT) {
			*status = value;
			return 0;
		}
		/* PONG answers a PING we may have sent: not what we wait
		 * for, keep reading. */
	}
}

int kv_rp_wait_pong(struct kv_chan *c, int timeout_ms, uint32_t value,
		    struct kv_error *err)
{
	int64_t deadline = kv_now_ns() + (int64_t)timeout_ms * 1000000;
	uint16_t type;
	uint32_t got;
	int ret;

	for (;;) {
		ret = rp_read_msg(c, deadline, timeout_ms, &type, &got, err);
		if (ret < 0)
			return ret;
		if (type == KV_RP_MSG_SHUT)
			return kv_error_set(err, -EREMOTEIO,
					    "the destination failed to load "
					    "the migration stream (it "
					    "answered SHUT with status %u "
					    "while the source waited for "
					    "PONG %u; see its log)",
					    got, value);
		if (got == value)
			return 0;
		/* An answer to an earlier PING: keep reading. */
	}
}
