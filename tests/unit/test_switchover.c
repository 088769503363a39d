/* SPDX-License-Identifier: MIT */
/*
 * The switch-over protocol's records (switchover.h) over real sockets:
 * OFFER and DECISION on a stream, READY through the return path's reader,
 * RESOLVE and ACK over a real listener; every malformed record refused
 * with what was wrong named.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/clock.h"
#include "io/channel.h"
#include "io/stream.h"
#include "migration/return_path.h"
#include "migration/switchover.h"

#define SEC_NS 1000000000LL

struct link {
	struct kv_stream *w, *r; /* source writes w, destination reads r */
	struct kv_chan *wc, *rc;
};

static void link_open(struct link *l)
{
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	l->wc = kv_chan_from_fd(sv[0], "src", NULL);
	l->rc = kv_chan_from_fd(sv[1], "dst", NULL);
	assert_non_null(l->wc);
	assert_non_null(l->rc);
	l->w = kv_stream_new(l->wc, KV_STREAM_WRITE);
	l->r = kv_stream_new(l->rc, KV_STREAM_READ);
}

static void link_close(struct link *l)
{
	kv_stream_close(l->w);
	kv_stream_close(l->r);
}

static void raw_write(struct kv_stream *s, const void *buf, size_t len)
{
	kv_stream_put_buffer(s, buf, len);
	assert_int_equal(kv_stream_flush(s), 0);
}

static void test_ids(void **state)
{
	struct kv_swo_id a, b;
	char text[KV_SWO_ID_LEN * 2 + 1];

	(void)state;
	assert_int_equal(kv_swo_new_id(&a, NULL), 0);
	assert_int_equal(kv_swo_new_id(&b, NULL), 0);
	assert_memory_not_equal(a.b, b.b, KV_SWO_ID_LEN);
	kv_swo_id_text(&a, text, sizeof(text));
	assert_int_equal(strlen(text), 32);
	assert_int_equal(kv_swo_settle_parse("run"), KV_SWO_SETTLE_RUN);
	assert_int_equal(kv_swo_settle_parse("discard"), KV_SWO_SETTLE_DISCARD);
	assert_int_equal(kv_swo_settle_parse("Run"), KV_SWO_SETTLE_NONE);
	assert_int_equal(kv_swo_settle_parse(NULL), KV_SWO_SETTLE_NONE);
}

/* OFFER then GO, as the source sends them; the destination reads both. */
static void test_offer_and_decision(void **state)
{
	struct kv_error err = {0};
	enum kv_swo_decision d;
	struct kv_swo_id id, got;
	struct link l;
	bool sent;

	(void)state;
	link_open(&l);
	kv_swo_new_id(&id, NULL);
	kv_swo_put_offer(l.w, &id);
	assert_int_equal(kv_stream_flush(l.w), 0);
	assert_int_equal(kv_swo_read_offer(l.r, &got, kv_now_ns() + SEC_NS, &err), 0);
	assert_memory_equal(got.b, id.b, KV_SWO_ID_LEN);
	assert_int_equal(kv_swo_send_decision(l.w, &id, KV_SWO_GO, &sent, &err), 0);
	assert_true(sent);
	assert_int_equal(kv_swo_read_decision(l.r, &id, kv_now_ns() + SEC_NS, &d, &err), 0);
	assert_int_equal(d, KV_SWO_GO);
	/* Every byte crossed: the source's count is the destination's. */
	assert_int_equal(kv_stream_transferred(l.w), kv_stream_transferred(l.r));
	link_close(&l);
}

/* A decision that never comes times out; one cut mid-record fails; the
 * wrong id, magic or byte is refused naming it. */
static void test_decision_refusals(void **state)
{
	struct kv_error err = {0};
	enum kv_swo_decision d;
	struct kv_swo_id id, other;
	struct link l;
	int64_t t0;

	(void)state;
	kv_swo_new_id(&id, NULL);
	kv_swo_new_id(&other, NULL);

	link_open(&l);
	t0 = kv_now_ns();
	assert_int_equal(kv_swo_read_decision(l.r, &id, t0 + SEC_NS / 5, &d, &err), -ETIMEDOUT);
	assert_true(kv_now_ns() - t0 >= SEC_NS / 5);
	assert_non_null(strstr(err.msg, "no decision"));
	assert_int_equal(d, KV_SWO_UNDECIDED);
	/* Half a record, then silence: still bounded. */
	kv_error_clear(&err);
	raw_write(l.w, "KVMIGDEC", 8);
	assert_int_equal(kv_swo_read_decision(l.r, &id, kv_now_ns() + SEC_NS / 5, &d, &err), -ETIMEDOUT);
	assert_non_null(strstr(err.msg, "8 of 25 bytes"));
	link_close(&l);

	link_open(&l);
	kv_error_clear(&err);
	{
		bool sent;

		assert_int_equal(kv_swo_send_decision(l.w, &other, KV_SWO_GO, &sent, &err), 0);
	}
	assert_int_equal(kv_swo_read_decision(l.r, &id, kv_now_ns() + SEC_NS, &d, &err), -EPROTO);
	assert_non_null(strstr(err.msg, "names migration"));
	link_close(&l);

	link_open(&l);
	kv_error_clear(&err);
	raw_write(l.w, "KVMIGDEX", 8);
	raw_write(l.w, id.b, KV_SWO_ID_LEN);
	raw_write(l.w, "\1", 1);
	assert_int_equal(kv_swo_read_decision(l.r, &id, kv_now_ns() + SEC_NS, &d, &err), -EPROTO);
	assert_non_null(strstr(err.msg, "magic KVMIGDEC"));
	link_close(&l);

	link_open(&l);
	kv_error_clear(&err);
	raw_write(l.w, "KVMIGDEC", 8);
	raw_write(l.w, id.b, KV_SWO_ID_LEN);
	raw_write(l.w, "\3", 1);
	assert_int_equal(kv_swo_read_decision(l.r, &id, kv_now_ns() + SEC_NS, &d, &err), -EPROTO);
	assert_non_null(strstr(err.msg, "decision byte is 3"));
	link_close(&l);

	/* The peer closed mid-record. */
	link_open(&l);
	kv_error_clear(&err);
	raw_write(l.w, "KVMIG", 5);
	kv_chan_shutdown(l.wc);
	assert_true(kv_swo_read_decision(l.r, &id, kv_now_ns() + SEC_NS, &d, &err) < 0);
	assert_int_equal(d, KV_SWO_UNDECIDED);
	link_close(&l);
}

/* A GO written to a peer that is gone: nothing left, so *sent is false
 * and the source may still run the guest. */
static void test_decision_to_closed_peer(void **state)
{
	struct kv_error err = {0};
	struct kv_swo_id id;
	struct link l;
	bool sent = true;

	(void)state;
	link_open(&l);
	kv_swo_new_id(&id, NULL);
	kv_stream_close(l.r);
	assert_true(kv_swo_send_decision(l.w, &id, KV_SWO_GO, &sent, &err) < 0);
	assert_false(sent);
	assert_non_null(strstr(err.msg, "decision (go)"));
	kv_stream_close(l.w);
}

/* READY through the reader: the waiter wakes for the right id only. */
static void test_ready_through_reader(void **state)
{
	struct kv_error err = {0};
	struct kv_rp_reader *r;
	struct kv_swo_id id, other;
	struct link l;

	(void)state;
	link_open(&l);
	kv_swo_new_id(&id, NULL);
	kv_swo_new_id(&other, NULL);
	r = kv_rp_reader_start(l.wc, &err);
	assert_non_null(r);
	assert_int_equal(kv_rp_reader_wait_ready(r, &id, 100, &err), -ETIMEDOUT);
	kv_error_clear(&err);
	assert_int_equal(kv_rp_send_ready(l.rc, &id, &err), 0);
	assert_int_equal(kv_rp_reader_wait_ready(r, &id, 5000, &err), 0);
	assert_int_equal(kv_rp_reader_wait_ready(r, &other, 5000, &err), -EPROTO);
	assert_non_null(strstr(err.msg, "another migration"));
	kv_rp_reader_stop(r);
	link_close(&l);

	/* SHUT(1) before READY: the destination failed; the waiter says so. */
	link_open(&l);
	kv_error_clear(&err);
	r = kv_rp_reader_start(l.wc, &err);
	assert_int_equal(kv_rp_send_shut(l.rc, 1, &err), 0);
	assert_int_equal(kv_rp_reader_wait_ready(r, &id, 5000, &err), -EREMOTEIO);
	assert_non_null(strstr(err.msg, "before READY"));
	kv_rp_reader_stop(r);
	link_close(&l);
}

/* RESOLVE over a real listener, answered by a thread playing the
 * destination. */
struct answerer {
	struct kv_listener *l;
	struct kv_swo_id id;
	enum kv_swo_ack ack;
	enum kv_swo_decision got;
	bool is_resolve;
	bool id_matched;
	int ret;
};

static void *answer(void *arg)
{
	struct answerer *a = arg;
	struct kv_error err = {0};
	struct kv_chan *c = kv_listener_accept(a->l, &err);
	uint8_t hello[KV_SWO_MAGIC_LEN];
	struct kv_swo_id id;

	a->ret = -1;
	if (!c)
		return NULL;
	if (kv_chan_read_full(c, hello, sizeof(hello), &err) == 0) {
		a->is_resolve = kv_swo_is_resolve(hello, sizeof(hello));
		a->ret = kv_swo_read_resolve(c, &id, &a->got, kv_now_ns() + SEC_NS, &err);
		a->id_matched = memcmp(id.b, a->id.b, KV_SWO_ID_LEN) == 0;
		if (a->ret == 0)
			a->ret = kv_swo_send_ack(c, &a->id, a->ack, &err);
	}
	kv_chan_close(c);
	return NULL;
}

static void test_resolve_round_trip(void **state)
{
	struct kv_error err = {0};
	struct answerer a = {0};
	enum kv_swo_ack ack = 0;
	pthread_t t;
	char uri[128];

	(void)state;
	a.l = kv_listener_open("tcp:127.0.0.1:0", &err);
	assert_non_null(a.l);
	snprintf(uri, sizeof(uri), "%s", kv_listener_uri(a.l));
	kv_swo_new_id(&a.id, NULL);
	a.ack = KV_SWO_ACK_RUNNING;
	pthread_create(&t, NULL, answer, &a);
	assert_int_equal(kv_swo_resolve(uri, &a.id, KV_SWO_GO, NULL, 2000, &ack, &err), 0);
	pthread_join(t, NULL);
	assert_int_equal(a.ret, 0);
	assert_true(a.is_resolve);
	assert_true(a.id_matched);
	assert_int_equal(a.got, KV_SWO_GO);
	assert_int_equal(ack, KV_SWO_ACK_RUNNING);

	/* Nobody listening any more: the attempt fails, bounded. */
	kv_listener_close(a.l);
	kv_error_clear(&err);
	assert_true(kv_swo_resolve(uri, &a.id, KV_SWO_ABORT, NULL, 500, &ack, &err) < 0);
	assert_true(err.msg[0] != '\0');
	assert_false(kv_swo_is_resolve((const uint8_t *)"QEVM\0\0\0\3", 8));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_ids),
	    cmocka_unit_test(test_offer_and_decision),
	    cmocka_unit_test(test_decision_refusals),
	    cmocka_unit_test(test_decision_to_closed_peer),
	    cmocka_unit_test(test_ready_through_reader),
	    cmocka_unit_test(test_resolve_round_trip),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
