/* SPDX-License-Identifier: MIT */
/*
 * The return path: its message table (QEMU's numbers and length rules) and
 * the source's reader thread over real socket pairs (unix and tcp).
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
#include "migration/return_path.h"

#define LONG_MS 10000

/* ---- the table ---- */

static void expect_header_ok(uint16_t type, uint16_t len)
{
	struct kv_error err = {0};

	if (kv_rp_check_header(type, len, &err) != 0)
		fail_msg("type %u length %u refused: %s", type, len, err.msg);
}

/* Refused, and the message names the type and the length. */
static void expect_header_bad(uint16_t type, uint16_t len)
{
	struct kv_error err = {0};
	char needle[48];

	assert_int_equal(kv_rp_check_header(type, len, &err), -EPROTO);
	snprintf(needle, sizeof(needle), "type %u, length %u", type, len);
	if (!strstr(err.msg, needle))
		fail_msg("'%s' does not name '%s'", err.msg, needle);
	if (kv_rp_msg_name(type) && !strstr(err.msg, kv_rp_msg_name(type)))
		fail_msg("'%s' does not name %s", err.msg,
			 kv_rp_msg_name(type));
}

static void test_table_names_and_numbers(void **state)
{
	static const char *const names[] = {
	    NULL,	 "SHUT",	"PONG",	      "REQ_PAGES_ID",
	    "REQ_PAGES", "RECV_BITMAP", "RESUME_ACK", "SWITCHOVER_ACK",
	};

	(void)state;
	for (uint16_t t = 0; t < 8; t++) {
		if (!names[t])
			assert_null(kv_rp_msg_name(t));
		else
			assert_string_equal(kv_rp_msg_name(t), names[t]);
	}
	assert_null(kv_rp_msg_name(8));
	assert_null(kv_rp_msg_name(0xffff));
	assert_int_equal(KV_RP_MSG_REQ_PAGES_ID, 3);
	assert_int_equal(KV_RP_MSG_SWITCHOVER_ACK, 7);
	/* kvmig's READY, far from QEMU's numbers. */
	assert_string_equal(kv_rp_msg_name(KV_RP_MSG_READY), "READY");
	assert_int_equal(KV_RP_MSG_READY, 0x4b01);
	expect_header_ok(KV_RP_MSG_READY, KV_SWO_ID_LEN);
	expect_header_bad(KV_RP_MSG_READY, KV_SWO_ID_LEN - 1);
	expect_header_bad(KV_RP_MSG_READY, 0);
}

static void test_table_fixed_lengths(void **state)
{
	static const struct {
		uint16_t type, len;
	} fixed[] = {
	    {KV_RP_MSG_SHUT, 4},	   {KV_RP_MSG_PONG, 4},
	    {KV_RP_MSG_REQ_PAGES, 12},	   {KV_RP_MSG_RESUME_ACK, 4},
	    {KV_RP_MSG_SWITCHOVER_ACK, 0},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
		uint8_t payload[16] = {0};
		struct kv_error err = {0};

		expect_header_ok(fixed[i].type, fixed[i].len);
		assert_int_equal(kv_rp_check_message(fixed[i].type, payload,
						     fixed[i].len, &err),
				 0);
		if (fixed[i].len)
			expect_header_bad(fixed[i].type, fixed[i].len - 1);
		expect_header_bad(fixed[i].type, fixed[i].len + 1);
		expect_header_bad(fixed[i].type, 0xffff);
	}
}

static void test_table_named_lengths(void **state)
{
	struct kv_error err = {0};
	uint8_t req[12 + 1 + 255] = {0};
	uint8_t bitmap[1 + 255] = {0};

	(void)state;
	/* REQ_PAGES_ID: be64 start, be32 length, name length, name. */
	expect_header_bad(KV_RP_MSG_REQ_PAGES_ID, 12);
	expect_header_ok(KV_RP_MSG_REQ_PAGES_ID, 13);
	expect_header_ok(KV_RP_MSG_REQ_PAGES_ID, 12 + 1 + 255);
	expect_header_bad(KV_RP_MSG_REQ_PAGES_ID, 12 + 1 + 256);
	req[12] = 6;
	memcpy(req + 13, "pc.ram", 6);
	assert_int_equal(
	    kv_rp_check_message(KV_RP_MSG_REQ_PAGES_ID, req, 19, &err), 0);
	assert_int_equal(
	    kv_rp_check_message(KV_RP_MSG_REQ_PAGES_ID, req, 18, &err),
	    -EPROTO);
	assert_non_null(strstr(err.msg, "type 3, length 18"));
	kv_error_clear(&err);
	assert_int_equal(
	    kv_rp_check_message(KV_RP_MSG_REQ_PAGES_ID, req, 20, &err),
	    -EPROTO);
	kv_error_clear(&err);

	/* RECV_BITMAP: name length, name. */
	expect_header_bad(KV_RP_MSG_RECV_BITMAP, 0);
	expect_header_ok(KV_RP_MSG_RECV_BITMAP, 1);
	expect_header_bad(KV_RP_MSG_RECV_BITMAP, 257);
	assert_int_equal(
	    kv_rp_check_message(KV_RP_MSG_RECV_BITMAP, bitmap, 1, &err), 0);
	bitmap[0] = 4;
	memcpy(bitmap + 1, "ram0", 4);
	assert_int_equal(
	    kv_rp_check_message(KV_RP_MSG_RECV_BITMAP, bitmap, 5, &err), 0);
	assert_int_equal(
	    kv_rp_check_message(KV_RP_MSG_RECV_BITMAP, bitmap, 4, &err),
	    -EPROTO);
	assert_non_null(strstr(err.msg, "RECV_BITMAP"));
}

static void test_table_unknown_types(void **state)
{
	struct kv_error err = {0};

	(void)state;
	expect_header_bad(KV_RP_MSG_INVALID, 4);
	expect_header_bad(8, 4);
	expect_header_bad(0x1234, 0);
	assert_int_equal(kv_rp_check_header(8, 4, &err), -EPROTO);
	assert_non_null(strstr(err.msg, "unknown"));
}

/* ---- the reader over real sockets ---- */

struct rp_pair {
	struct kv_chan *src, *dst; /* src reads, dst sends */
	struct kv_rp_reader *r;
};

static void pair_unix(struct rp_pair *p)
{
	struct kv_error err = {0};
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	p->src = kv_chan_from_fd(sv[0], "src", &err);
	p->dst = kv_chan_from_fd(sv[1], "dst", &err);
	assert_non_null(p->src);
	assert_non_null(p->dst);
	p->r = kv_rp_reader_start(p->src, &err);
	assert_non_null(p->r);
}

struct acceptor {
	struct kv_listener *l;
	struct kv_chan *c;
	struct kv_error err;
};

static void *accept_thread(void *arg)
{
	struct acceptor *a = arg;

	a->c = kv_listener_accept(a->l, &a->err);
	return NULL;
}

static void pair_tcp(struct rp_pair *p)
{
	struct acceptor acc = {0};
	struct kv_error err = {0};
	pthread_t t;

	acc.l = kv_listener_open("tcp:127.0.0.1:0", &acc.err);
	assert_non_null(acc.l);
	assert_int_equal(pthread_create(&t, NULL, accept_thread, &acc), 0);
	p->src = kv_chan_connect(kv_listener_uri(acc.l), &err);
	pthread_join(t, NULL);
	if (!p->src || !acc.c)
		fail_msg("tcp pair: %s%s", err.msg, acc.err.msg);
	p->dst = acc.c;
	kv_listener_close(acc.l);
	p->r = kv_rp_reader_start(p->src, &err);
	assert_non_null(p->r);
}

/* The reader is joined before its channel closes. */
static void pair_free(struct rp_pair *p)
{
	kv_rp_reader_stop(p->r);
	kv_chan_close(p->src);
	if (p->dst)
		kv_chan_close(p->dst);
}

static void send_raw(struct kv_chan *c, const void *bytes, size_t len)
{
	struct kv_error err = {0};
	struct iovec iov = {(void *)bytes, len};

	assert_int_equal(kv_chan_writev_full(c, &iov, 1, &err), 0);
}

static int64_t ms_since(int64_t t0)
{
	return (kv_now_ns() - t0) / 1000000;
}

struct later {
	struct kv_chan *c;
	int what; /* 0 PONG(value), 1 SHUT(value), 2 close */
	uint32_t value;
};

static void *later_thread(void *arg)
{
	struct later *l = arg;
	struct kv_error err = {0};

	kv_sleep_ns(50 * 1000000LL);
	if (l->what == 0)
		kv_rp_send_pong(l->c, l->value, &err);
	else if (l->what == 1)
		kv_rp_send_shut(l->c, l->value, &err);
	else
		kv_chan_shutdown(l->c);
	return NULL;
}

static void pong_wakes_waiter(struct rp_pair *p)
{
	struct kv_error err = {0};
	struct later l = {p->dst, 0, 5};
	pthread_t t;
	int64_t t0;

	assert_int_equal(pthread_create(&t, NULL, later_thread, &l), 0);
	t0 = kv_now_ns();
	assert_int_equal(kv_rp_reader_wait_pong(p->r, 5, LONG_MS, &err), 0);
	assert_true(ms_since(t0) < 5000);
	pthread_join(t, NULL);

	/* Nothing comes: a timeout naming the channel, not a hang. */
	t0 = kv_now_ns();
	assert_int_equal(kv_rp_reader_wait_pong(p->r, 6, 100, &err),
			 -ETIMEDOUT);
	assert_true(ms_since(t0) >= 99);
	assert_non_null(strstr(err.msg, "within 100 ms"));
	kv_error_clear(&err);

	/* PONGs answer PINGs in order: PONG 7 says 6 was read too. */
	assert_int_equal(kv_rp_send_pong(p->dst, 7, &err), 0);
	assert_int_equal(kv_rp_reader_wait_pong(p->r, 6, LONG_MS, &err), 0);
	assert_int_equal(kv_rp_reader_wait_pong(p->r, 7, LONG_MS, &err), 0);
}

static void test_reader_pong_unix(void **state)
{
	struct rp_pair p;

	(void)state;
	pair_unix(&p);
	pong_wakes_waiter(&p);
	pair_free(&p);
}

static void test_reader_pong_tcp(void **state)
{
	struct rp_pair p;

	(void)state;
	pair_tcp(&p);
	pong_wakes_waiter(&p);
	pair_free(&p);
}

static void test_reader_shut0(void **state)
{
	struct kv_error err = {0};
	struct later l;
	struct rp_pair p;
	uint32_t status = 99;
	pthread_t t;
	struct iovec iov = {"x", 1};

	(void)state;
	pair_tcp(&p);
	l = (struct later){p.dst, 1, 0};
	assert_int_equal(pthread_create(&t, NULL, later_thread, &l), 0);
	assert_int_equal(kv_rp_reader_wait_shut(p.r, LONG_MS, &status, &err),
			 0);
	pthread_join(t, NULL);
	assert_int_equal(status, 0);
	/* It stays the answer, and a wait for a PONG now gets it. */
	assert_int_equal(kv_rp_reader_wait_shut(p.r, 0, &status, &err), 0);
	assert_int_equal(kv_rp_reader_wait_pong(p.r, 1, LONG_MS, &err),
			 -EREMOTEIO);
	kv_error_clear(&err);
	/* SHUT(0) leaves the channel usable. */
	assert_int_equal(kv_chan_writev_full(p.src, &iov, 1, &err), 0);
	pair_free(&p);
}

struct blocked_writer {
	struct kv_chan *c;
	int result;
};

/* Writes until the channel fails: the peer does not read. */
static void *write_until_fail(void *arg)
{
	struct blocked_writer *w = arg;
	static uint8_t chunk[64 << 10];
	struct kv_error err = {0};

	for (;;) {
		struct iovec iov = {chunk, sizeof(chunk)};

		w->result = kv_chan_writev_full(w->c, &iov, 1, &err);
		if (w->result < 0)
			return NULL;
	}
}

/* SHUT(1) while the source is blocked sending to a destination that gave
 * up: the reader sees it and the write returns at once. */
static void test_reader_shut1_stops_sender(void **state)
{
	struct blocked_writer w = {0};
	struct kv_error err = {0};
	struct rp_pair p;
	uint32_t status = 0;
	pthread_t t;
	int64_t t0;

	(void)state;
	pair_tcp(&p);
	w.c = p.src;
	assert_int_equal(pthread_create(&t, NULL, write_until_fail, &w), 0);
	kv_sleep_ns(200 * 1000000LL); /* the socket buffers fill up */
	t0 = kv_now_ns();
	assert_int_equal(kv_rp_send_shut(p.dst, 1, &err), 0);
	pthread_join(t, NULL);
	assert_true(ms_since(t0) < 2000);
	assert_int_equal(w.result, -ECANCELED);
	assert_int_equal(kv_rp_reader_wait_shut(p.r, 0, &status, &err), 0);
	assert_int_equal(status, 1);
	assert_int_equal(kv_rp_reader_wait_pong(p.r, 3, LONG_MS, &err),
			 -EREMOTEIO);
	assert_non_null(strstr(err.msg, "status 1"));
	assert_non_null(strstr(err.msg, "PONG 3"));
	pair_free(&p);
}

static void test_reader_eof_fails_waiter(void **state)
{
	struct kv_error err = {0};
	struct rp_pair p;
	struct later l;
	uint32_t status;
	pthread_t t;
	int64_t t0;

	(void)state;
	pair_unix(&p);
	l = (struct later){p.dst, 2, 0};
	assert_int_equal(pthread_create(&t, NULL, later_thread, &l), 0);
	t0 = kv_now_ns();
	assert_int_equal(kv_rp_reader_wait_pong(p.r, 1, LONG_MS, &err), -EPIPE);
	assert_true(ms_since(t0) < 5000);
	assert_non_null(strstr(err.msg, "without confirming"));
	pthread_join(t, NULL);
	kv_error_clear(&err);
	assert_int_equal(kv_rp_reader_wait_shut(p.r, LONG_MS, &status, &err),
			 -EPIPE);
	pair_free(&p);
}

/* Half a header, then the destination goes away. */
static void test_reader_eof_mid_message(void **state)
{
	static const uint8_t half[] = {0, 1, 0};
	struct kv_error err = {0};
	struct rp_pair p;
	uint32_t status;

	(void)state;
	pair_unix(&p);
	send_raw(p.dst, half, sizeof(half));
	kv_chan_close(p.dst);
	p.dst = NULL;
	assert_int_equal(kv_rp_reader_wait_shut(p.r, LONG_MS, &status, &err),
			 -EPIPE);
	pair_free(&p);
}

/* What the reader refuses ends it with a message naming type and length;
 * whatever came before is still delivered. */
static void expect_reader_refuses(const uint8_t *bytes, size_t len,
				  const char *needle1, const char *needle2)
{
	static const uint8_t pong9[] = {0, 2, 0, 4, 0, 0, 0, 9};
	struct kv_error err = {0};
	struct rp_pair p;
	uint32_t status;

	pair_unix(&p);
	send_raw(p.dst, pong9, sizeof(pong9));
	send_raw(p.dst, bytes, len);
	assert_int_equal(kv_rp_reader_wait_shut(p.r, LONG_MS, &status, &err),
			 -EPROTO);
	if (!strstr(err.msg, needle1) || !strstr(err.msg, needle2))
		fail_msg("'%s' lacks '%s' or '%s'", err.msg, needle1, needle2);
	kv_error_clear(&err);
	assert_int_equal(kv_rp_reader_wait_pong(p.r, 9, 0, &err), 0);
	pair_free(&p);
}

static void test_reader_refuses_malformed(void **state)
{
	static const uint8_t long_shut[] = {0, 1, 0, 9, 0, 0, 0,
					    0, 0, 0, 0, 0, 0};
	static const uint8_t short_pong[] = {0, 2, 0, 2, 0, 0};
	static const uint8_t unknown[] = {0, 9, 0, 4, 0, 0, 0, 0};
	static const uint8_t invalid[] = {0, 0, 0, 0};
	static const uint8_t bad_name[] = {0, 5, 0, 3, 5, 'r', 'a'};

	(void)state;
	expect_reader_refuses(long_shut, sizeof(long_shut), "SHUT",
			      "type 1, length 9");
	expect_reader_refuses(short_pong, sizeof(short_pong), "PONG",
			      "type 2, length 2");
	expect_reader_refuses(unknown, sizeof(unknown), "unknown",
			      "type 9, length 4");
	expect_reader_refuses(invalid, sizeof(invalid), "unknown",
			      "type 0, length 0");
	expect_reader_refuses(bad_name, sizeof(bad_name), "RECV_BITMAP",
			      "type 5, length 3");
}

/* Known to the format, not served yet: a clear failure, not a hang. */
static void test_reader_refuses_unsupported(void **state)
{
	static const uint8_t req_pages[] = {0, 4, 0,	12, 0, 0, 0,	0,
					    0, 0, 0x10, 0,  0, 0, 0x10, 0};
	static const uint8_t req_pages_id[] = {
	    0, 3, 0, 15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 2, 'p', 'c'};
	static const uint8_t resume_ack[] = {0, 6, 0, 4, 0, 0, 0, 2};
	static const uint8_t switchover_ack[] = {0, 7, 0, 0};
	static const uint8_t recv_bitmap[] = {0, 5, 0, 3, 2, 'p', 'c'};

	(void)state;
	/* Page requests are served once postcopy began, not before. */
	expect_reader_refuses(req_pages, sizeof(req_pages), "REQ_PAGES",
			      "before postcopy began");
	expect_reader_refuses(req_pages_id, sizeof(req_pages_id),
			      "REQ_PAGES_ID", "before postcopy began");
	/* RESUME_ACK is served, its value checked; RECV_BITMAP only after
	 * the source asked, in a recovery. */
	expect_reader_refuses(resume_ack, sizeof(resume_ack), "RESUME_ACK",
			      "2");
	expect_reader_refuses(switchover_ack, sizeof(switchover_ack),
			      "SWITCHOVER_ACK (type 7, length 0)",
			      "not support");
	expect_reader_refuses(recv_bitmap, sizeof(recv_bitmap), "RECV_BITMAP",
			      "did not ask for");
}

/* A reader with nothing to read stops promptly when asked (the end of
 * a migration that failed on its own side); a shutdown wakes waiters. */
static void test_reader_stop_and_shutdown(void **state)
{
	struct kv_error err = {0};
	struct rp_pair p;
	uint32_t status;
	int64_t t0;

	(void)state;
	pair_tcp(&p);
	kv_sleep_ns(30 * 1000000LL);
	t0 = kv_now_ns();
	kv_rp_reader_stop(p.r);
	assert_true(ms_since(t0) < 1000);

	p.r = kv_rp_reader_start(p.src, &err);
	assert_non_null(p.r);
	kv_chan_shutdown(p.src);
	t0 = kv_now_ns();
	assert_int_equal(kv_rp_reader_wait_shut(p.r, LONG_MS, &status, &err),
			 -ECANCELED);
	assert_true(ms_since(t0) < 5000);
	pair_free(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_table_names_and_numbers),
	    cmocka_unit_test(test_table_fixed_lengths),
	    cmocka_unit_test(test_table_named_lengths),
	    cmocka_unit_test(test_table_unknown_types),
	    cmocka_unit_test(test_reader_pong_unix),
	    cmocka_unit_test(test_reader_pong_tcp),
	    cmocka_unit_test(test_reader_shut0),
	    cmocka_unit_test(test_reader_shut1_stops_sender),
	    cmocka_unit_test(test_reader_eof_fails_waiter),
	    cmocka_unit_test(test_reader_eof_mid_message),
	    cmocka_unit_test(test_reader_refuses_malformed),
	    cmocka_unit_test(test_reader_refuses_unsupported),
	    cmocka_unit_test(test_reader_stop_and_shutdown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
