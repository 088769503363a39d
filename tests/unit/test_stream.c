/* SPDX-License-Identifier: MIT */
/* Unit tests of the buffered migration stream over pipes, sockets, files. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
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
#include "io/stream.h"

#define PAGE 4096

static struct kv_stream *stream_on_fd(int fd, enum kv_stream_mode mode)
{
	struct kv_error err = {0};
	struct kv_chan *c = kv_chan_from_fd(fd, NULL, &err);

	assert_non_null(c);
	return kv_stream_new(c, mode);
}

static void make_pipe(int fds[2])
{
	assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
}

/* ---- the full put/get round trip ---- */

static uint8_t pages[8][PAGE];

static void fill_pages(void)
{
	for (int p = 0; p < 8; p++)
		for (int i = 0; i < PAGE; i++)
			pages[p][i] = (uint8_t)(p * 31 + i * 7 + (i >> 8));
}

enum { ROUNDS = 300 }; /* ~1.3 MiB: more than a pipe holds */

static void put_everything(struct kv_stream *out)
{
	static uint8_t blob[100000];

	for (size_t i = 0; i < sizeof(blob); i++)
		blob[i] = (uint8_t)(i * 13);
	kv_stream_put_u8(out, 0xab);
	kv_stream_put_be16(out, 0x1234);
	kv_stream_put_be32(out, 0xdeadbeef);
	kv_stream_put_be64(out, 0x0102030405060708ULL);
	kv_stream_put_str8(out, "pc.ram");
	kv_stream_put_str8(out, "");
	kv_stream_put_buffer(out, blob, sizeof(blob));
	for (int r = 0; r < ROUNDS; r++) {
		kv_stream_put_be64(out, (uint64_t)r << 12 | 0x8);
		kv_stream_put_page_ref(out, pages[r % 8], PAGE);
		if (r % 7 == 0)
			kv_stream_put_u8(out, (uint8_t)r);
	}
	kv_stream_put_be32(out, 0xfeedf00d);
}

static void get_everything(struct kv_stream *in)
{
	static uint8_t blob[100000];
	uint8_t page[PAGE];
	char str[256];

	assert_int_equal(kv_stream_get_u8(in), 0xab);
	assert_int_equal(kv_stream_get_be16(in), 0x1234);
	assert_int_equal(kv_stream_get_be32(in), 0xdeadbeef);
	assert_true(kv_stream_get_be64(in) == 0x0102030405060708ULL);
	assert_int_equal(kv_stream_get_str8(in, str, sizeof(str)), 6);
	assert_string_equal(str, "pc.ram");
	assert_int_equal(kv_stream_get_str8(in, str, sizeof(str)), 0);
	assert_string_equal(str, "");
	assert_int_equal(kv_stream_get_buffer(in, blob, sizeof(blob)), 0);
	for (size_t i = 0; i < sizeof(blob); i++)
		if (blob[i] != (uint8_t)(i * 13))
			fail_msg("blob byte %zu differs", i);
	for (int r = 0; r < ROUNDS; r++) {
		assert_true(kv_stream_get_be64(in) ==
			    ((uint64_t)r << 12 | 0x8));
		assert_int_equal(kv_stream_get_buffer(in, page, PAGE), 0);
		assert_memory_equal(page, pages[r % 8], PAGE);
		if (r % 7 == 0)
			assert_int_equal(kv_stream_get_u8(in), (uint8_t)r);
	}
	assert_int_equal(kv_stream_get_be32(in), 0xfeedf00d);
	assert_int_equal(kv_stream_error(in), 0);
}

static const uint64_t everything_len = 1 + 2 + 4 + 8 + 7 + 1 + 100000 +
				       (uint64_t)ROUNDS * (8 + PAGE) +
				       (ROUNDS + 6) / 7 + 4;

struct putter {
	struct kv_stream *out;
	int flush_result;
};

/* The writer runs in a thread so the main thread (and its asserts) reads. */
static void *put_everything_thread(void *arg)
{
	struct putter *p = arg;

	put_everything(p->out);
	p->flush_result = kv_stream_flush(p->out);
	return NULL;
}

static void round_trip_over(int rfd, int wfd)
{
	struct kv_stream *out = stream_on_fd(wfd, KV_STREAM_WRITE);
	struct kv_stream *in = stream_on_fd(rfd, KV_STREAM_READ);
	struct putter p = {out, -1};
	pthread_t t;

	fill_pages();
	assert_int_equal(pthread_create(&t, NULL, put_everything_thread, &p),
			 0);
	get_everything(in);
	pthread_join(t, NULL);
	assert_int_equal(p.flush_result, 0);
	assert_true(kv_stream_offset(out) == everything_len);
	assert_true(kv_stream_transferred(out) == everything_len);
	assert_int_equal(kv_stream_close(out), 0);
	assert_true(kv_stream_at_eof(in));
	assert_true(kv_stream_offset(in) == everything_len);
	assert_true(kv_stream_transferred(in) == everything_len);
	assert_int_equal(kv_stream_close(in), 0);
}

static void test_round_trip_pipe(void **state)
{
	int fds[2];

	make_pipe(fds);
	round_trip_over(fds[0], fds[1]);
}

static void test_round_trip_socketpair(void **state)
{
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	round_trip_over(sv[0], sv[1]);
}

static void test_round_trip_file(void **state)
{
	char path[] = "/tmp/kvmig-test-stream-XXXXXX";
	int wfd = mkstemp(path);
	int rfd;
	struct kv_stream *out, *in;

	assert_true(wfd >= 0);
	rfd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(rfd >= 0);
	unlink(path);
	fill_pages();
	out = stream_on_fd(wfd, KV_STREAM_WRITE);
	assert_true(kv_chan_from_fd(-1, NULL, NULL) == NULL);
	assert_true(kv_stream_chan(out)->is_file);
	put_everything(out);
	assert_int_equal(kv_stream_close(out), 0);
	in = stream_on_fd(rfd, KV_STREAM_READ);
	get_everything(in);
	assert_true(kv_stream_at_eof(in));
	assert_int_equal(kv_stream_peek_u8(in), -1);
	assert_true(kv_stream_offset(in) == everything_len);
	assert_int_equal(kv_stream_close(in), 0);
}

/* ---- offsets, peek and EOF ---- */

static void test_offsets_and_peek(void **state)
{
	int fds[2];
	struct kv_stream *out, *in;
	uint8_t page[PAGE];

	make_pipe(fds);
	out = stream_on_fd(fds[1], KV_STREAM_WRITE);
	in = stream_on_fd(fds[0], KV_STREAM_READ);
	memset(page, 0x5a, sizeof(page));
	kv_stream_put_be32(out, 7);
	assert_true(kv_stream_offset(out) == 4);
	assert_true(kv_stream_transferred(out) == 0); /* still buffered */
	kv_stream_put_page_ref(out, page, 1000);
	kv_stream_put_u8(out, 9);
	assert_true(kv_stream_offset(out) == 1005);
	assert_int_equal(kv_stream_flush(out), 0);
	assert_true(kv_stream_transferred(out) == 1005);
	assert_int_equal(kv_stream_close(out), 0);

	assert_int_equal(kv_stream_peek_u8(in), 0);
	assert_true(kv_stream_offset(in) == 0);
	assert_false(kv_stream_at_eof(in));
	assert_int_equal(kv_stream_get_be32(in), 7);
	assert_true(kv_stream_offset(in) == 4);
	assert_int_equal(kv_stream_get_buffer(in, page, 1000), 0);
	assert_int_equal(page[999], 0x5a);
	assert_int_equal(kv_stream_peek_u8(in), 9);
	assert_int_equal(kv_stream_get_u8(in), 9);
	assert_true(kv_stream_offset(in) == 1005);
	assert_true(kv_stream_at_eof(in));
	assert_int_equal(kv_stream_error(in), 0);
	assert_int_equal(kv_stream_close(in), 0);
}

/* ---- sticky errors ---- */

static void test_truncated_read_is_sticky(void **state)
{
	int fds[2];
	struct kv_stream *out, *in;
	struct kv_error err = {0};
	uint8_t buf[16];

	make_pipe(fds);
	out = stream_on_fd(fds[1], KV_STREAM_WRITE);
	in = stream_on_fd(fds[0], KV_STREAM_READ);
	kv_stream_put_be32(out, 0x11223344);
	kv_stream_put_be16(out, 0x5566);
	assert_int_equal(kv_stream_close(out), 0);

	assert_int_equal(kv_stream_get_be32(in), 0x11223344);
	/* Wants 8 bytes, only 2 remain. */
	assert_true(kv_stream_get_be64(in) == 0);
	assert_true(kv_stream_error(in) < 0);
	kv_stream_error_get(in, &err);
	assert_non_null(strstr(err.msg, "unexpected end of stream"));
	assert_non_null(strstr(err.msg, "offset"));
	assert_non_null(strstr(err.msg, "fd:"));

	/* Later gets return 0 and keep the first message. */
	kv_stream_set_error(in, -EINVAL, "second error");
	assert_int_equal(kv_stream_get_u8(in), 0);
	memset(buf, 0xff, sizeof(buf));
	assert_true(kv_stream_get_buffer(in, buf, sizeof(buf)) < 0);
	for (size_t i = 0; i < sizeof(buf); i++)
		assert_int_equal(buf[i], 0);
	assert_int_equal(kv_stream_peek_u8(in), -1);
	assert_false(kv_stream_at_eof(in));
	memset(&err, 0, sizeof(err));
	kv_stream_error_get(in, &err);
	assert_non_null(strstr(err.msg, "unexpected end of stream"));
	assert_int_equal(kv_stream_close(in), -EIO);
}

static void test_set_error_keeps_first(void **state)
{
	int fds[2];
	struct kv_stream *out;
	struct kv_error err = {0};

	make_pipe(fds);
	close(fds[0]);
	out = stream_on_fd(fds[1], KV_STREAM_WRITE);
	kv_stream_set_error(out, -EPROTO, "bad section %d", 42);
	kv_stream_set_error(out, -EINVAL, "later");
	assert_int_equal(kv_stream_error(out), -EPROTO);
	kv_stream_put_be64(out, 1);
	assert_true(kv_stream_offset(out) == 0);
	kv_stream_error_get(out, &err);
	assert_int_equal(err.code, -EPROTO);
	assert_string_equal(err.msg, "bad section 42");
	assert_int_equal(kv_stream_close(out), -EPROTO);
}

static void test_str8_too_long(void **state)
{
	int fds[2];
	struct kv_stream *out;
	char big[300];

	make_pipe(fds);
	out = stream_on_fd(fds[1], KV_STREAM_WRITE);
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	kv_stream_put_str8(out, big);
	assert_int_equal(kv_stream_error(out), -EINVAL);
	assert_int_equal(kv_stream_close(out), -EINVAL);
	close(fds[0]);
}

static void test_write_to_closed_pipe(void **state)
{
	int fds[2];
	struct kv_stream *out;
	struct kv_error err = {0};

	make_pipe(fds);
	close(fds[0]);
	out = stream_on_fd(fds[1], KV_STREAM_WRITE);
	kv_stream_put_be64(out, 1);
	/* Without SIGPIPE handling this would kill the test process. */
	assert_int_equal(kv_stream_flush(out), -EPIPE);
	kv_stream_error_get(out, &err);
	assert_non_null(strstr(err.msg, "write failed"));
	assert_int_equal(kv_stream_close(out), -EPIPE);
}

/* ---- rate limit ---- */

/* Reads and discards until EOF or error, counting bytes. */
struct sink {
	struct kv_stream *in;
	uint64_t bytes;
	int64_t blocked_ns; /* how long the last get waited (shutdown test) */
	int err;
};

static void *sink_thread(void *arg)
{
	struct sink *k = arg;
	uint8_t buf[PAGE];

	while (kv_stream_get_buffer(k->in, buf, 1) == 0)
		k->bytes++;
	return NULL;
}

static void *sink_pages_thread(void *arg)
{
	struct sink *k = arg;
	uint8_t buf[PAGE];

	while (kv_stream_get_buffer(k->in, buf, sizeof(buf)) == 0)
		k->bytes += sizeof(buf);
	return NULL;
}

static void write_pages(struct kv_stream *out, size_t bytes)
{
	static uint8_t page[PAGE];

	for (size_t done = 0; done < bytes; done += PAGE)
		kv_stream_put_page_ref(out, page, PAGE);
	kv_stream_flush(out);
}

static void test_rate_limit_slows_writer(void **state)
{
	int sv[2];
	struct kv_stream *out;
	struct sink k = {0};
	pthread_t t;
	int64_t t0, elapsed;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	out = stream_on_fd(sv[1], KV_STREAM_WRITE);
	k.in = stream_on_fd(sv[0], KV_STREAM_READ);
	assert_int_equal(pthread_create(&t, NULL, sink_pages_thread, &k), 0);
	kv_stream_set_rate_limit(out, 4 << 20);
	assert_true(kv_stream_rate_limit(out) == 4 << 20);
	t0 = kv_now_ns();
	write_pages(out, 2 << 20);
	elapsed = kv_now_ns() - t0;
	assert_int_equal(kv_stream_error(out), 0);
	assert_true(kv_stream_transferred(out) == 2 << 20);
	/* 2 MiB at 4 MiB/s is 0.5 s; the first window is free. */
	if (elapsed < 350000000LL)
		fail_msg("2 MiB at 4 MiB/s took only %lld ms",
			 (long long)(elapsed / 1000000));
	assert_int_equal(kv_stream_close(out), 0);
	pthread_join(t, NULL);
	assert_true(k.bytes == 2 << 20);
	kv_stream_close(k.in);
}

struct limiter {
	struct kv_stream *out;
	uint64_t new_limit;
};

static void *lift_limit_thread(void *arg)
{
	struct limiter *m = arg;

	kv_sleep_ns(200 * 1000000LL);
	kv_stream_set_rate_limit(m->out, m->new_limit);
	return NULL;
}

static void test_rate_limit_change_takes_effect(void **state)
{
	int sv[2];
	struct kv_stream *out;
	struct sink k = {0};
	struct limiter m;
	pthread_t t, lt;
	int64_t t0, elapsed;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	out = stream_on_fd(sv[1], KV_STREAM_WRITE);
	k.in = stream_on_fd(sv[0], KV_STREAM_READ);
	assert_int_equal(pthread_create(&t, NULL, sink_pages_thread, &k), 0);
	/* 8 MiB at 100 KiB/s would take 80 s; lifting the limit after
	 * 0.2 s must let it finish in a few seconds at most. */
	kv_stream_set_rate_limit(out, 100 << 10);
	m.out = out;
	m.new_limit = 0;
	assert_int_equal(pthread_create(&lt, NULL, lift_limit_thread, &m), 0);
	t0 = kv_now_ns();
	write_pages(out, 8 << 20);
	elapsed = kv_now_ns() - t0;
	pthread_join(lt, NULL);
	assert_int_equal(kv_stream_error(out), 0);
	if (elapsed > 10000000000LL)
		fail_msg("lifting the limit was ignored: %lld ms",
			 (long long)(elapsed / 1000000));
	assert_true(elapsed >= 150000000LL);
	assert_int_equal(kv_stream_close(out), 0);
	pthread_join(t, NULL);
	assert_true(k.bytes == 8 << 20);
	kv_stream_close(k.in);
}

/* ---- shutdown from another thread ---- */

struct canceller {
	struct kv_stream *s;
	int64_t when_ns;
};

static void *shutdown_later_thread(void *arg)
{
	struct canceller *c = arg;

	kv_sleep_ns(100 * 1000000LL);
	c->when_ns = kv_now_ns();
	kv_stream_shutdown(c->s);
	return NULL;
}

static void test_shutdown_unblocks_reader(void **state)
{
	int fds[2];
	struct kv_stream *in;
	struct canceller c;
	struct kv_error err = {0};
	pthread_t t;
	int64_t done;

	make_pipe(fds);
	in = stream_on_fd(fds[0], KV_STREAM_READ);
	c.s = in;
	assert_int_equal(pthread_create(&t, NULL, shutdown_later_thread, &c),
			 0);
	/* Nobody writes: this blocks until the shutdown. */
	assert_true(kv_stream_get_be32(in) == 0);
	done = kv_now_ns();
	pthread_join(t, NULL);
	assert_int_equal(kv_stream_error(in), -ECANCELED);
	if (done - c.when_ns > 2000000000LL)
		fail_msg("reader took %lld ms to notice the shutdown",
			 (long long)((done - c.when_ns) / 1000000));
	kv_stream_error_get(in, &err);
	assert_non_null(strstr(err.msg, "cancelled"));
	assert_int_equal(kv_stream_close(in), -ECANCELED);
	close(fds[1]);
}

static void shutdown_blocked_writer(int rate_limit)
{
	int fds[2];
	struct kv_stream *out;
	struct canceller c;
	pthread_t t;
	int64_t done;

	make_pipe(fds);
	out = stream_on_fd(fds[1], KV_STREAM_WRITE);
	kv_stream_set_rate_limit(out, (uint64_t)rate_limit);
	c.s = out;
	assert_int_equal(pthread_create(&t, NULL, shutdown_later_thread, &c),
			 0);
	/* Nobody reads: the pipe fills (or the limit holds) and we block. */
	write_pages(out, 16 << 20);
	done = kv_now_ns();
	pthread_join(t, NULL);
	assert_int_equal(kv_stream_error(out), -ECANCELED);
	if (done - c.when_ns > 2000000000LL)
		fail_msg("writer took %lld ms to notice the shutdown",
			 (long long)((done - c.when_ns) / 1000000));
	assert_int_equal(kv_stream_close(out), -ECANCELED);
	close(fds[0]);
}

static void test_shutdown_unblocks_writer_on_full_pipe(void **state)
{
	shutdown_blocked_writer(0);
}

static void test_shutdown_unblocks_rate_limited_writer(void **state)
{
	shutdown_blocked_writer(1024);
}

static void test_byte_sink_counts(void **state)
{
	int sv[2];
	struct kv_stream *out;
	struct sink k = {0};
	pthread_t t;

	/* Byte-sized gets across many buffer refills. */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	out = stream_on_fd(sv[1], KV_STREAM_WRITE);
	k.in = stream_on_fd(sv[0], KV_STREAM_READ);
	assert_int_equal(pthread_create(&t, NULL, sink_thread, &k), 0);
	write_pages(out, 1 << 20);
	assert_int_equal(kv_stream_close(out), 0);
	pthread_join(t, NULL);
	assert_true(k.bytes == 1 << 20);
	assert_true(kv_stream_offset(k.in) == 1 << 20);
	kv_stream_close(k.in);
}

/* ---- the tap (kv_stream_set_tap) ---- */

struct tap_log {
	uint8_t bytes[2 * PAGE];
	size_t n;
};

static void tap_record(void *opaque, const void *buf, size_t len)
{
	struct tap_log *t = opaque;

	assert_true(t->n + len <= sizeof(t->bytes));
	memcpy(t->bytes + t->n, buf, len);
	t->n += len;
}

/* The tap sees exactly the bytes on the wire between set and clear:
 * big-endian values, strings, page references (small and large), on
 * both sides; a peek is not a read. */
static void test_tap_sees_wire_bytes(void **state)
{
	struct tap_log wr = {0}, rd = {0};
	uint8_t page[PAGE], back[PAGE], wire[2 * PAGE];
	struct kv_stream *out, *in;
	char str[256];
	int fds[2];
	ssize_t n;

	(void)state;
	make_pipe(fds);
	out = stream_on_fd(fds[1], KV_STREAM_WRITE);
	memset(page, 0x3c, sizeof(page));
	kv_stream_put_u8(out, 0xee); /* before the tap */
	kv_stream_set_tap(out, tap_record, &wr);
	kv_stream_put_be32(out, 0x01020304);
	kv_stream_put_str8(out, "tap");
	kv_stream_put_page_ref(out, page, 16);
	kv_stream_put_page_ref(out, page, 1000);
	kv_stream_set_tap(out, NULL, NULL);
	kv_stream_put_u8(out, 0xff); /* after it */
	assert_int_equal(kv_stream_close(out), 0);
	n = read(fds[0], wire, sizeof(wire));
	assert_int_equal(n, 1 + 4 + 4 + 16 + 1000 + 1);
	assert_int_equal(wr.n, (size_t)n - 2);
	assert_memory_equal(wr.bytes, wire + 1, wr.n);
	close(fds[0]);

	make_pipe(fds);
	assert_int_equal(write(fds[1], wire, (size_t)n), n);
	close(fds[1]);
	in = stream_on_fd(fds[0], KV_STREAM_READ);
	assert_int_equal(kv_stream_get_u8(in), 0xee);
	kv_stream_set_tap(in, tap_record, &rd);
	assert_int_equal(kv_stream_peek_u8(in), 0x01);
	assert_int_equal(kv_stream_get_be32(in), 0x01020304);
	assert_int_equal(kv_stream_get_str8(in, str, sizeof(str)), 3);
	assert_int_equal(kv_stream_get_buffer(in, back, 1016), 0);
	kv_stream_set_tap(in, NULL, NULL);
	assert_int_equal(kv_stream_get_u8(in), 0xff);
	assert_int_equal(rd.n, wr.n);
	assert_memory_equal(rd.bytes, wr.bytes, wr.n);
	assert_int_equal(kv_stream_close(in), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_round_trip_pipe),
	    cmocka_unit_test(test_round_trip_socketpair),
	    cmocka_unit_test(test_tap_sees_wire_bytes),
	    cmocka_unit_test(test_round_trip_file),
	    cmocka_unit_test(test_offsets_and_peek),
	    cmocka_unit_test(test_truncated_read_is_sticky),
	    cmocka_unit_test(test_set_error_keeps_first),
	    cmocka_unit_test(test_str8_too_long),
	    cmocka_unit_test(test_write_to_closed_pipe),
	    cmocka_unit_test(test_rate_limit_slows_writer),
	    cmocka_unit_test(test_rate_limit_change_takes_effect),
	    cmocka_unit_test(test_shutdown_unblocks_reader),
	    cmocka_unit_test(test_shutdown_unblocks_writer_on_full_pipe),
	    cmocka_unit_test(test_shutdown_unblocks_rate_limited_writer),
	    cmocka_unit_test(test_byte_sink_counts),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
