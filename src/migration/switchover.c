/* SPDX-License-Identifier: MIT */
/*
 * The switch-over commit protocol's records (switchover.h). Every record
 * is a magic, the migration's id and, for some, one byte:
 *
 *   OFFER     "KVMIGOFR" id                 source -> destination, stream
 *   DECISION  "KVMIGDEC" id decision        source -> destination, stream
 *   RESOLVE   "KVMIGRES" id decision        source -> destination, new
 *                                           connection
 *   ACK       "KVMIGACK" id ack             destination -> source, on it
 *
 * READY travels on the return path (return_path.c).
 */
#include "migration/switchover.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "base/clock.h"

static const char magic_offer[KV_SWO_MAGIC_LEN] = "KVMIGOFR";
static const char magic_decision[KV_SWO_MAGIC_LEN] = "KVMIGDEC";
static const char magic_resolve[KV_SWO_MAGIC_LEN] = "KVMIGRES";
static const char magic_ack[KV_SWO_MAGIC_LEN] = "KVMIGACK";

/* magic, id, one byte */
#define RECORD_LEN (KV_SWO_MAGIC_LEN + KV_SWO_ID_LEN + 1)

const char *kv_swo_decision_name(enum kv_swo_decision d)
{
	switch (d) {
	case KV_SWO_GO:
		return "go";
	case KV_SWO_ABORT:
		return "abort";
	default:
		return "undecided";
	}
}

enum kv_swo_settle kv_swo_settle_parse(const char *text)
{
	if (text && strcmp(text, "run") == 0)
		return KV_SWO_SETTLE_RUN;
	if (text && strcmp(text, "discard") == 0)
		return KV_SWO_SETTLE_DISCARD;
	return KV_SWO_SETTLE_NONE;
}

int kv_swo_settle_check(enum kv_swo_settle how, struct kv_error *err)
{
	if (how != KV_SWO_SETTLE_RUN && how != KV_SWO_SETTLE_DISCARD)
		return kv_error_set(err, -EINVAL, "x-migrate-settle: outcome must be run or discard");
	return 0;
}

const char *kv_swo_ack_name(enum kv_swo_ack a)
{
	switch (a) {
	case KV_SWO_ACK_RUNNING:
		return "running";
	case KV_SWO_ACK_DISCARDED:
		return "discarded";
	case KV_SWO_ACK_UNKNOWN:
		return "unknown migration";
	}
	return "invalid";
}

int kv_swo_new_id(struct kv_swo_id *id, struct kv_error *err)
{
	ssize_t n = getrandom(id->b, sizeof(id->b), 0);

	if (n != (ssize_t)sizeof(id->b))
		return kv_error_set_errno(err, n < 0 ? -errno : -EIO, "switch-over: cannot draw a random migration id");
	return 0;
}

void kv_swo_id_text(const struct kv_swo_id *id, char *buf, size_t size)
{
	size_t at = 0;

	if (!size)
		return;
	buf[0] = '\0';
	for (size_t i = 0; i < KV_SWO_ID_LEN && at + 3 <= size; i++)
		at += (size_t)snprintf(buf + at, size - at, "%02x", id->b[i]);
}

static void build(uint8_t *rec, const char *magic, const struct kv_swo_id *id,
		  uint8_t byte)
{
	memcpy(rec, magic, KV_SWO_MAGIC_LEN);
	memcpy(rec + KV_SWO_MAGIC_LEN, id->b, KV_SWO_ID_LEN);
	rec[KV_SWO_MAGIC_LEN + KV_SWO_ID_LEN] = byte;
}

void kv_swo_put_offer(struct kv_stream *s, const struct kv_swo_id *id)
{
	kv_stream_put_buffer(s, magic_offer, KV_SWO_MAGIC_LEN);
	kv_stream_put_buffer(s, id->b, KV_SWO_ID_LEN);
}

/* len bytes from s, waiting at most until the deadline for each part:
 * a source that went silent mid-record must not hold this side. */
static int stream_read_until(struct kv_stream *s, uint8_t *buf, size_t len,
			     int64_t deadline_ns, const char *what,
			     struct kv_error *err)
{
	struct kv_chan *c = kv_stream_chan(s);
	size_t got = 0;

	while (got < len) {
		size_t n = kv_stream_buffered(s);
		int w;

		if (!n) {
			w = kv_chan_wait_readable(c, deadline_ns);
			if (w == 0)
				return kv_error_set(err, -ETIMEDOUT, "switch-over: no %s from the source on %s in the time allowed (%zu of %zu bytes came)", what, c->name, got, len);
			if (w < 0)
				return kv_error_set_errno(err, w, "switch-over: waiting for the source's %s on %s", what, c->name);
			n = 1; /* fills the stream's buffer */
		}
		n = n < len - got ? n : len - got;
		if (kv_stream_get_buffer(s, buf + got, n) < 0) {
			kv_stream_error_get(s, err);
			kv_error_prefix(err, "switch-over: reading the source's %s", what);
			return err->code ? err->code : -EIO;
		}
		got += n;
	}
	return 0;
}

static int check_record(const uint8_t *rec, const char *magic,
			const struct kv_swo_id *id, const char *what,
			struct kv_error *err)
{
	char want[KV_SWO_ID_LEN * 2 + 1], got[KV_SWO_ID_LEN * 2 + 1];
	struct kv_swo_id seen;

	if (memcmp(rec, magic, KV_SWO_MAGIC_LEN))
		return kv_error_set(err, -EPROTO, "switch-over: expected the source's %s (magic %.8s), found bytes %02x %02x %02x %02x %02x %02x %02x %02x", what, magic, rec[0], rec[1], rec[2], rec[3], rec[4], rec[5], rec[6], rec[7]);
	if (!id)
		return 0;
	memcpy(seen.b, rec + KV_SWO_MAGIC_LEN, KV_SWO_ID_LEN);
	if (memcmp(seen.b, id->b, KV_SWO_ID_LEN) == 0)
		return 0;
	kv_swo_id_text(id, want, sizeof(want));
	kv_swo_id_text(&seen, got, sizeof(got));
	return kv_error_set(err, -EPROTO, "switch-over: the source's %s names migration %s, this one is %s", what, got, want);
}

int kv_swo_read_offer(struct kv_stream *s, struct kv_swo_id *id,
		      int64_t deadline_ns, struct kv_error *err)
{
	uint8_t rec[KV_SWO_MAGIC_LEN + KV_SWO_ID_LEN];
	int ret;

	ret = stream_read_until(s, rec, sizeof(rec), deadline_ns, "OFFER",
				err);
	if (ret == 0)
		ret = check_record(rec, magic_offer, NULL, "OFFER", err);
	if (ret == 0)
		memcpy(id->b, rec + KV_SWO_MAGIC_LEN, KV_SWO_ID_LEN);
	return ret;
}

/* The stream's buffer is empty here (flushed with OFFER), so what it
 * counts as crossed the channel during this flush is this record: if
 * nothing did, the destination cannot have it. */
int kv_swo_send_decision(struct kv_stream *s, const struct kv_swo_id *id,
			 enum kv_swo_decision d, bool *sent,
			 struct kv_error *err)
{
	uint8_t rec[RECORD_LEN];
	uint64_t before;

	*sent = false;
	if (kv_stream_flush(s) < 0) {
		kv_stream_error_get(s, err);
		return err->code ? err->code : -EIO;
	}
	before = kv_stream_transferred(s);
	build(rec, magic_decision, id, (uint8_t)d);
	kv_stream_put_buffer(s, rec, sizeof(rec));
	if (kv_stream_flush(s) == 0) {
		*sent = true;
		return 0;
	}
	*sent = kv_stream_transferred(s) != before;
	kv_stream_error_get(s, err);
	kv_error_prefix(err, "switch-over: sending the decision (%s)", kv_swo_decision_name(d));
	return err->code ? err->code : -EIO;
}

int kv_swo_read_decision(struct kv_stream *s, const struct kv_swo_id *id,
			 int64_t deadline_ns, enum kv_swo_decision *d,
			 struct kv_error *err)
{
	uint8_t rec[RECORD_LEN];
	int ret;

	*d = KV_SWO_UNDECIDED;
	ret = stream_read_until(s, rec, sizeof(rec), deadline_ns, "decision",
				err);
	if (ret == 0)
		ret = check_record(rec, magic_decision, id, "decision", err);
	if (ret < 0)
		return ret;
	if (rec[RECORD_LEN - 1] != KV_SWO_GO &&
	    rec[RECORD_LEN - 1] != KV_SWO_ABORT)
		return kv_error_set(err, -EPROTO, "switch-over: the source's decision byte is %u (1 go, 2 abort)", rec[RECORD_LEN - 1]);
	*d = (enum kv_swo_decision)rec[RECORD_LEN - 1];
	return 0;
}

bool kv_swo_is_resolve(const uint8_t *hello, size_t len)
{
	return len >= KV_SWO_MAGIC_LEN &&
	       memcmp(hello, magic_resolve, KV_SWO_MAGIC_LEN) == 0;
}

static int read_ack(struct kv_chan *c, const struct kv_swo_id *id,
		    int64_t deadline_ns, enum kv_swo_ack *ack,
		    struct kv_error *err)
{
	uint8_t rec[RECORD_LEN];
	uint8_t a;
	int ret;

	ret = kv_chan_read_full_until(c, rec, sizeof(rec), deadline_ns, err);
	if (ret < 0) {
		kv_error_prefix(err, "switch-over: the destination's answer to RESOLVE");
		return ret;
	}
	if (memcmp(rec, magic_ack, KV_SWO_MAGIC_LEN) ||
	    memcmp(rec + KV_SWO_MAGIC_LEN, id->b, KV_SWO_ID_LEN))
		return kv_error_set(err, -EPROTO, "switch-over: the answer to RESOLVE from %s is not an ACK for this migration", c->name);
	a = rec[RECORD_LEN - 1];
	if (a < KV_SWO_ACK_RUNNING || a > KV_SWO_ACK_UNKNOWN)
		return kv_error_set(err, -EPROTO, "switch-over: the destination's ACK byte is %u (1 running, 2 discarded, 3 unknown)", a);
	*ack = (enum kv_swo_ack)a;
	return 0;
}

int kv_swo_resolve(const char *uri, const struct kv_swo_id *id,
		   enum kv_swo_decision d, struct kv_cancel *cancel,
		   int timeout_ms, enum kv_swo_ack *ack, struct kv_error *err)
{
	uint8_t rec[RECORD_LEN];
	struct iovec v = {rec, sizeof(rec)};
	struct kv_chan *c;
	int ret;

	c = kv_chan_connect_cancellable(uri, cancel, (uint64_t)timeout_ms,
					err);
	if (!c)
		return err->code ? err->code : -EIO;
	build(rec, magic_resolve, id, (uint8_t)d);
	ret = kv_chan_writev_full(c, &v, 1, err);
	if (ret == 0)
		ret = read_ack(c, id, kv_now_ns() + (int64_t)timeout_ms * 1000000,
			       ack, err);
	kv_chan_close(c);
	return ret;
}

int kv_swo_read_resolve(struct kv_chan *c, struct kv_swo_id *id,
			enum kv_swo_decision *d, int64_t deadline_ns,
			struct kv_error *err)
{
	uint8_t rest[KV_SWO_ID_LEN + 1];
	int ret;

	ret = kv_chan_read_full_until(c, rest, sizeof(rest), deadline_ns, err);
	if (ret < 0)
		return ret;
	if (rest[KV_SWO_ID_LEN] != KV_SWO_GO &&
	    rest[KV_SWO_ID_LEN] != KV_SWO_ABORT)
		return kv_error_set(err, -EPROTO, "switch-over: RESOLVE from %s carries decision byte %u (1 go, 2 abort)", c->name, rest[KV_SWO_ID_LEN]);
	memcpy(id->b, rest, KV_SWO_ID_LEN);
	*d = (enum kv_swo_decision)rest[KV_SWO_ID_LEN];
	return 0;
}

int kv_swo_send_ack(struct kv_chan *c, const struct kv_swo_id *id,
		    enum kv_swo_ack a, struct kv_error *err)
{
	uint8_t rec[RECORD_LEN];
	struct iovec v = {rec, sizeof(rec)};

	build(rec, magic_ack, id, (uint8_t)a);
	return kv_chan_writev_full(c, &v, 1, err);
}
