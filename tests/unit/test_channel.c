/* SPDX-License-Identifier: MIT */
/* Unit tests of URI parsing and the tcp, unix and file channels. */
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
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/clock.h"
#include "io/channel.h"

/* ---- URI parsing ---- */

static void test_uri_good(void **state)
{
	struct kv_error err = {0};
	struct kv_uri u;

	assert_int_equal(kv_uri_parse("tcp:127.0.0.1:4444", &u, &err), 0);
	assert_int_equal(u.kind, KV_URI_TCP);
	assert_string_equal(u.host, "127.0.0.1");
	assert_string_equal(u.port, "4444");

	assert_int_equal(kv_uri_parse("tcp:[::1]:0", &u, &err), 0);
	assert_string_equal(u.host, "::1");
	assert_string_equal(u.port, "0");

	assert_int_equal(kv_uri_parse("tcp:localhost:65535", &u, &err), 0);
	assert_string_equal(u.host, "localhost");

	assert_int_equal(kv_uri_parse("tcp::4444", &u, &err), 0);
	assert_string_equal(u.host, "");

	assert_int_equal(kv_uri_parse("unix:/tmp/mig.sock", &u, &err), 0);
	assert_int_equal(u.kind, KV_URI_UNIX);
	assert_string_equal(u.path, "/tmp/mig.sock");

	assert_int_equal(kv_uri_parse("file:/var/tmp/vm.mig", &u, &err), 0);
	assert_int_equal(u.kind, KV_URI_FILE);
	assert_string_equal(u.path, "/var/tmp/vm.mig");

	assert_int_equal(kv_uri_parse("fd:17", &u, &err), 0);
	assert_int_equal(u.kind, KV_URI_FD);
	assert_int_equal(u.fd, 17);
	assert_false(kv_error_is_set(&err));
}

static void expect_bad_uri(const char *text, const char *needle)
{
	struct kv_error err = {0};
	struct kv_uri u;

	assert_true(kv_uri_parse(text, &u, &err) < 0);
	assert_true(err.code < 0);
	if (!strstr(err.msg, needle))
		fail_msg("'%s': message '%s' lacks '%s'", text, err.msg,
			 needle);
	if (*text && strlen(text) < 100 && !strstr(err.msg, text))
		fail_msg("'%s': message '%s' does not name the URI", text,
			 err.msg);
}

static void test_uri_bad(void **state)
{
	char long_unix[200] = "unix:";
	char long_file[300] = "file:";

	expect_bad_uri("tcp:127.0.0.1", "missing port");
	expect_bad_uri("tcp:127.0.0.1:", "missing port");
	expect_bad_uri("tcp:[::1]", "missing port");
	expect_bad_uri("tcp:[::1:80", "']'");
	expect_bad_uri("tcp:host:http", "not a number");
	expect_bad_uri("tcp:host:-1", "not a number");
	expect_bad_uri("tcp:host:65536", "out of range");
	expect_bad_uri("tcp:host:99999999999999999999", "out of range");
	expect_bad_uri("tcp:::1:80", "brackets");
	expect_bad_uri("unix:", "empty path");
	expect_bad_uri("file:", "empty path");
	expect_bad_uri("fd:", "not a file descriptor");
	expect_bad_uri("fd:x3", "not a file descriptor");
	expect_bad_uri("http://x", "use tcp:, unix:, file: or fd:");
	expect_bad_uri("", "use tcp:, unix:, file: or fd:");
	memset(long_unix + 5, 'a', 150);
	expect_bad_uri(long_unix, "path too long");
	memset(long_file + 5, 'b', 280);
	expect_bad_uri(long_file, "path too long");
}

/* ---- a peer thread: accept, read a message, echo it back reversed ---- */

struct peer {
	struct kv_listener *l;
	char got[64];
	int result;
};

static void *echo_peer(void *arg)
{
	struct peer *p = arg;
	struct kv_error err = {0};
	struct kv_chan *c = kv_listener_accept(p->l, &err);
	char reply[5];
	struct iovec iov = {reply, sizeof(reply)};

	if (!c) {
		p->result = err.code ? err.code : -EIO;
		return NULL;
	}
	p->result = kv_chan_read_full(c, p->got, 5, &err);
	for (int i = 0; i < 5; i++)
		reply[i] = p->got[4 - i];
	if (p->result == 0)
		p->result = kv_chan_writev_full(c, &iov, 1, &err);
	kv_chan_close(c);
	return NULL;
}

static void exchange_with(struct kv_listener *l)
{
	struct kv_error err = {0};
	struct peer p = {.l = l};
	struct kv_chan *c;
	char out1[] = "he", out2[] = "llo", back[6] = {0};
	struct iovec iov[2] = {{out1, 2}, {out2, 3}};
	pthread_t t;

	assert_int_equal(pthread_create(&t, NULL, echo_peer, &p), 0);
	c = kv_chan_connect(kv_listener_uri(l), &err);
	if (!c)
		fail_msg("connect %s: %s", kv_listener_uri(l), err.msg);
	assert_true(c->is_socket);
	assert_string_equal(c->name, kv_listener_uri(l));
	assert_int_equal(kv_chan_writev_full(c, iov, 2, &err), 0);
	assert_int_equal(kv_chan_read_full(c, back, 5, &err), 0);
	assert_string_equal(back, "olleh");
	/* The peer closed: EOF reads as 0. */
	assert_int_equal(c->ops->read(c, back, 1), 0);
	pthread_join(t, NULL);
	assert_int_equal(p.result, 0);
	assert_memory_equal(p.got, "hello", 5);
	kv_chan_close(c);
}

static void test_tcp_ipv4_port0(void **state)
{
	struct kv_error err = {0};
	struct kv_listener *l = kv_listener_open("tcp:127.0.0.1:0", &err);
	const char *uri;

	if (!l)
		fail_msg("%s", err.msg);
	uri = kv_listener_uri(l);
	assert_true(strncmp(uri, "tcp:127.0.0.1:", 14) == 0);
	assert_int_not_equal(atoi(uri + 14), 0);
	exchange_with(l);
	kv_listener_close(l);
}

static void test_tcp_port_in_use(void **state)
{
	struct kv_error err = {0};
	struct kv_listener *l = kv_listener_open("tcp:127.0.0.1:0", &err);
	struct kv_listener *l2;

	assert_non_null(l);
	l2 = kv_listener_open(kv_listener_uri(l), &err);
	assert_null(l2);
	assert_int_equal(err.code, -EADDRINUSE);
	assert_non_null(strstr(err.msg, kv_listener_uri(l)));
	kv_listener_close(l);
}

static void test_tcp_ipv6(void **state)
{
	struct kv_error err = {0};
	struct kv_listener *l = kv_listener_open("tcp:[::1]:0", &err);

	if (!l) {
		printf("# skipping IPv6 test: %s\n", err.msg);
		skip();
	}
	assert_true(strncmp(kv_listener_uri(l), "tcp:[::1]:", 10) == 0);
	exchange_with(l);
	kv_listener_close(l);
}

static void temp_path(char *buf, size_t size, const char *what)
{
	snprintf(buf, size, "/tmp/kvmig-test-%s-%d", what, (int)getpid());
	unlink(buf);
}

static void test_unix_socket(void **state)
{
	struct kv_error err = {0};
	char path[100], uri[120];
	struct sockaddr_un sun;
	struct kv_listener *l;
	int fd;

	temp_path(path, sizeof(path), "sock");
	snprintf(uri, sizeof(uri), "unix:%s", path);
	l = kv_listener_open(uri, &err);
	if (!l)
		fail_msg("%s", err.msg);
	assert_string_equal(kv_listener_uri(l), uri);
	exchange_with(l);
	/* While it listens, a second listener must not steal the path. */
	assert_null(kv_listener_open(uri, &err));
	assert_int_equal(err.code, -EADDRINUSE);
	kv_listener_close(l);
	assert_int_equal(access(path, F_OK), -1);

	/* A stale socket file (nobody listens) is replaced. */
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	strcpy(sun.sun_path, path);
	assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	close(fd);
	memset(&err, 0, sizeof(err));
	l = kv_listener_open(uri, &err);
	if (!l)
		fail_msg("stale socket not replaced: %s", err.msg);
	kv_listener_close(l);
}

static void test_unix_refuses_regular_file(void **state)
{
	struct kv_error err = {0};
	char path[100], uri[120];
	int fd;

	temp_path(path, sizeof(path), "notsock");
	fd = open(path, O_WRONLY | O_CREAT, 0600);
	assert_true(fd >= 0);
	close(fd);
	snprintf(uri, sizeof(uri), "unix:%s", path);
	assert_null(kv_listener_open(uri, &err));
	assert_non_null(strstr(err.msg, "not a socket"));
	assert_int_equal(access(path, F_OK), 0); /* still there */
	unlink(path);
}

static void test_file_write_then_read(void **state)
{
	struct kv_error err = {0};
	char path[100], uri[120], back[8] = {0};
	struct iovec iov = {"payload", 7};
	struct kv_listener *l;
	struct kv_chan *c;

	temp_path(path, sizeof(path), "file");
	snprintf(uri, sizeof(uri), "file:%s", path);
	assert_null(kv_listener_open(uri, &err)); /* no file yet */
	assert_non_null(strstr(err.msg, uri));
	memset(&err, 0, sizeof(err));

	c = kv_chan_connect(uri, &err);
	assert_non_null(c);
	assert_true(c->is_file);
	assert_false(c->is_socket);
	assert_int_equal(kv_chan_writev_full(c, &iov, 1, &err), 0);
	kv_chan_close(c);

	l = kv_listener_open(uri, &err);
	assert_non_null(l);
	c = kv_listener_accept(l, &err);
	assert_non_null(c);
	assert_int_equal(kv_chan_read_full(c, back, 7, &err), 0);
	assert_string_equal(back, "payload");
	assert_true(kv_chan_read_full(c, back, 1, &err) < 0);
	assert_non_null(strstr(err.msg, "unexpected end"));
	kv_chan_close(c);
	kv_listener_close(l);
	unlink(path);
}

static void test_connect_refused_names_address(void **state)
{
	struct kv_error err = {0};
	struct kv_listener *l = kv_listener_open("tcp:127.0.0.1:0", &err);
	char uri[64];

	/* Take a port that was free a moment ago, then free it again. */
	assert_non_null(l);
	snprintf(uri, sizeof(uri), "%s", kv_listener_uri(l));
	kv_listener_close(l);
	assert_null(kv_chan_connect(uri, &err));
	assert_int_equal(err.code, -ECONNREFUSED);
	assert_non_null(strstr(err.msg, uri));
	assert_non_null(strstr(err.msg, "refused"));
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

static void test_listener_shutdown_unblocks_accept(void **state)
{
	struct acceptor a = {0};
	pthread_t t;
	int64_t t0;

	a.l = kv_listener_open("tcp:127.0.0.1:0", &a.err);
	assert_non_null(a.l);
	assert_int_equal(pthread_create(&t, NULL, accept_thread, &a), 0);
	kv_sleep_ns(50 * 1000000LL);
	t0 = kv_now_ns();
	kv_listener_shutdown(a.l);
	pthread_join(t, NULL);
	assert_true(kv_now_ns() - t0 < 2000000000LL);
	assert_null(a.c);
	assert_int_equal(a.err.code, -ECANCELED);
	kv_listener_close(a.l);
}

static void test_chan_shutdown_unblocks_socket_read(void **state)
{
	struct kv_error err = {0};
	struct kv_chan *c;
	int sv[2];
	char b;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	c = kv_chan_from_fd(sv[0], "test", &err);
	assert_non_null(c);
	kv_chan_shutdown(c);
	assert_int_equal(c->ops->read(c, &b, 1), -ECANCELED);
	kv_chan_close(c);
	close(sv[1]);
}

static void test_write_to_closed_socket_is_epipe(void **state)
{
	struct kv_error err = {0};
	struct kv_chan *c;
	struct iovec iov = {"x", 1};
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	close(sv[1]);
	c = kv_chan_from_fd(sv[0], "peer-gone", &err);
	assert_non_null(c);
	/* Without MSG_NOSIGNAL the process would die of SIGPIPE here. */
	assert_int_equal(kv_chan_writev_full(c, &iov, 1, &err), -EPIPE);
	assert_non_null(strstr(err.msg, "peer-gone"));
	kv_chan_close(c);
}

static void test_fd_uri(void **state)
{
	struct kv_error err = {0};
	struct kv_listener *l;
	struct kv_chan *w, *r;
	char uri[32], back[4] = {0};
	struct iovec iov = {"abc", 3};
	int fds[2];

	assert_int_equal(pipe(fds), 0);
	snprintf(uri, sizeof(uri), "fd:%d", fds[1]);
	w = kv_chan_connect(uri, &err);
	assert_non_null(w);
	assert_string_equal(w->name, uri);
	assert_false(w->is_socket);
	snprintf(uri, sizeof(uri), "fd:%d", fds[0]);
	l = kv_listener_open(uri, &err);
	assert_non_null(l);
	r = kv_listener_accept(l, &err);
	assert_non_null(r);
	assert_null(kv_listener_accept(l, &err)); /* only once */
	assert_int_equal(kv_chan_writev_full(w, &iov, 1, &err), 0);
	assert_int_equal(kv_chan_read_full(r, back, 3, &err), 0);
	assert_string_equal(back, "abc");
	kv_chan_close(w);
	kv_chan_close(r);
	kv_listener_close(l);
	assert_null(kv_chan_connect("fd:100000", &err));
}

struct blocked_reader {
	struct kv_chan *c;
	ssize_t result;
};

static void *blocked_read_thread(void *arg)
{
	struct blocked_reader *b = arg;
	char x;

	b->result = b->c->ops->read(b->c, &x, 1);
	return NULL;
}

static void test_chan_shutdown_unblocks_pipe_read(void **state)
{
	struct kv_error err = {0};
	struct blocked_reader b = {0};
	pthread_t t;
	int64_t t0;
	int fds[2];

	assert_int_equal(pipe(fds), 0);
	b.c = kv_chan_from_fd(fds[0], NULL, &err);
	assert_non_null(b.c);
	assert_int_equal(pthread_create(&t, NULL, blocked_read_thread, &b), 0);
	kv_sleep_ns(50 * 1000000LL);
	t0 = kv_now_ns();
	kv_chan_shutdown(b.c);
	pthread_join(t, NULL);
	assert_true(kv_now_ns() - t0 < 2000000000LL);
	assert_int_equal(b.result, -ECANCELED);
	kv_chan_close(b.c);
	close(fds[1]);
}

/* ---- operations beyond read and write ---- */

/* A connected tcp pair over loopback: *a connected, *b accepted. */
static void tcp_pair(struct kv_chan **a, struct kv_chan **b)
{
	struct acceptor acc = {0};
	struct kv_error err = {0};
	pthread_t t;

	acc.l = kv_listener_open("tcp:127.0.0.1:0", &acc.err);
	assert_non_null(acc.l);
	assert_int_equal(pthread_create(&t, NULL, accept_thread, &acc), 0);
	*a = kv_chan_connect(kv_listener_uri(acc.l), &err);
	pthread_join(t, NULL);
	if (!*a || !acc.c)
		fail_msg("tcp pair: %s%s", err.msg, acc.err.msg);
	*b = acc.c;
	kv_listener_close(acc.l);
}

static void write_bytes(struct kv_chan *c, size_t len, uint8_t fill)
{
	struct kv_error err = {0};
	uint8_t *buf = malloc(len);
	struct iovec iov = {buf, len};

	assert_non_null(buf);
	memset(buf, fill, len);
	assert_int_equal(kv_chan_writev_full(c, &iov, 1, &err), 0);
	free(buf);
}

static int64_t ms_since(int64_t t0)
{
	return (kv_now_ns() - t0) / 1000000;
}

struct delayed_write {
	struct kv_chan *c;
	int64_t delay_ns;
	size_t len;
};

static void *delayed_write_thread(void *arg)
{
	struct delayed_write *d = arg;

	kv_sleep_ns(d->delay_ns);
	write_bytes(d->c, d->len, 0x5a);
	return NULL;
}

struct waiter {
	struct kv_chan *c;
	int result;
};

static void *wait_forever_thread(void *arg)
{
	struct waiter *w = arg;

	w->result = kv_chan_wait_readable(w->c, -1);
	return NULL;
}

static void test_wait_readable_deadline(void **state)
{
	struct delayed_write d;
	struct waiter w = {0};
	struct kv_chan *a, *b;
	pthread_t t;
	int64_t t0;
	char x;

	tcp_pair(&a, &b);
	/* Nothing comes: the deadline ends the wait, not before it. */
	t0 = kv_now_ns();
	assert_int_equal(kv_chan_wait_readable(b, t0 + 80 * 1000000LL), 0);
	assert_true(ms_since(t0) >= 79);
	assert_true(ms_since(t0) < 2000);
	/* A deadline already past: a look, no wait. */
	assert_int_equal(kv_chan_wait_readable(b, t0), 0);

	/* Data wakes it long before a far deadline. */
	d = (struct delayed_write){a, 50 * 1000000LL, 1};
	assert_int_equal(pthread_create(&t, NULL, delayed_write_thread, &d), 0);
	t0 = kv_now_ns();
	assert_int_equal(kv_chan_wait_readable(b, t0 + 10000000000LL), 1);
	assert_true(ms_since(t0) < 5000);
	pthread_join(t, NULL);
	assert_int_equal(b->ops->read(b, &x, 1), 1);

	/* A shutdown from another thread wakes a wait without deadline. */
	w.c = b;
	assert_int_equal(pthread_create(&t, NULL, wait_forever_thread, &w), 0);
	kv_sleep_ns(50 * 1000000LL);
	t0 = kv_now_ns();
	kv_chan_shutdown(b);
	pthread_join(t, NULL);
	assert_true(ms_since(t0) < 2000);
	assert_int_equal(w.result, -ECANCELED);
	assert_int_equal(kv_chan_wait_readable(b, -1), -ECANCELED);
	kv_chan_close(a);
	kv_chan_close(b);

	/* EOF is readable: the read says 0. */
	tcp_pair(&a, &b);
	kv_chan_close(a);
	assert_int_equal(kv_chan_wait_readable(b, kv_now_ns() + 5000000000LL),
			 1);
	assert_int_equal(b->ops->read(b, &x, 1), 0);
	kv_chan_close(b);
}

static void test_wait_readable_pipe_and_file(void **state)
{
	struct kv_error err = {0};
	struct kv_chan *r, *f;
	char path[64];
	int fds[2], fd;

	assert_int_equal(pipe(fds), 0);
	r = kv_chan_from_fd(fds[0], "pipe", &err);
	assert_non_null(r);
	assert_int_equal(kv_chan_wait_readable(r, kv_now_ns() + 20000000), 0);
	assert_int_equal(write(fds[1], "x", 1), 1);
	assert_int_equal(kv_chan_wait_readable(r, -1), 1);
	kv_chan_close(r);
	close(fds[1]);

	/* A regular file never blocks: always readable, until shut down. */
	snprintf(path, sizeof(path), "/tmp/kvmig-wait-%d", getpid());
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	unlink(path);
	f = kv_chan_from_fd(fd, "file", &err);
	assert_non_null(f);
	assert_int_equal(kv_chan_wait_readable(f, kv_now_ns()), 1);
	kv_chan_shutdown(f);
	assert_int_equal(kv_chan_wait_readable(f, -1), -ECANCELED);
	kv_chan_close(f);
}

static void test_recv_lowat(void **state)
{
	struct kv_error err = {0};
	struct kv_chan *a, *b, *p;
	char buf[1000];
	int64_t t0;
	int fds[2];

	tcp_pair(&a, &b);
	assert_int_equal(kv_chan_set_recv_lowat(b, 1000), 0);
	write_bytes(a, 500, 1);
	/* 500 of 1000 buffered: not readable yet. */
	t0 = kv_now_ns();
	assert_int_equal(kv_chan_wait_readable(b, t0 + 100 * 1000000LL), 0);
	write_bytes(a, 500, 2);
	assert_int_equal(kv_chan_wait_readable(b, kv_now_ns() + 5000000000LL),
			 1);
	assert_int_equal(kv_chan_read_full(b, buf, sizeof(buf), &err), 0);
	/* Back to 1: a single byte wakes the reader again. */
	assert_int_equal(kv_chan_set_recv_lowat(b, 1), 0);
	write_bytes(a, 1, 3);
	assert_int_equal(kv_chan_wait_readable(b, kv_now_ns() + 5000000000LL),
			 1);
	kv_chan_close(a);
	kv_chan_close(b);

	/* A pipe has no low-water mark: a hint, silently nothing. */
	assert_int_equal(pipe(fds), 0);
	p = kv_chan_from_fd(fds[0], "pipe", &err);
	assert_non_null(p);
	assert_int_equal(kv_chan_set_recv_lowat(p, 4096), 0);
	assert_int_equal(write(fds[1], "x", 1), 1);
	assert_int_equal(kv_chan_wait_readable(p, kv_now_ns() + 5000000000LL),
			 1);
	kv_chan_close(p);
	close(fds[1]);
}

struct batched_reader {
	struct kv_chan *c;
	uint8_t *buf;
	size_t len;
	int result;
	int done; /* atomic */
};

static void *batched_read_thread(void *arg)
{
	struct batched_reader *br = arg;
	struct kv_error err = {0};
	struct iovec iov[2] = {{br->buf, br->len / 2},
			       {br->buf + br->len / 2, br->len - br->len / 2}};

	br->result = kv_chan_readv_full_batched(br->c, iov, 2, 256 << 10, &err);
	__atomic_store_n(&br->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

/*
 * Issue 10's stall: a payload read in parts, then nothing after it (a
 * multifd SYNC). A low-water mark left at the whole payload kept the
 * socket unreadable with its last part buffered; it must follow what is
 * left. And it is back to 1 afterwards.
 */
static void test_batched_read_gets_last_part(void **state)
{
	struct batched_reader br = {0};
	struct kv_chan *a;
	int64_t t0;
	pthread_t t;

	tcp_pair(&a, &br.c);
	br.len = 512 << 10;
	br.buf = malloc(br.len);
	assert_non_null(br.buf);
	assert_int_equal(pthread_create(&t, NULL, batched_read_thread, &br), 0);
	write_bytes(a, 300 << 10, 7);
	kv_sleep_ns(100 * 1000000LL);
	write_bytes(a, br.len - (300 << 10), 7);
	t0 = kv_now_ns();
	while (!__atomic_load_n(&br.done, __ATOMIC_ACQUIRE) &&
	       ms_since(t0) < 5000)
		kv_sleep_ns(1000000);
	if (!__atomic_load_n(&br.done, __ATOMIC_ACQUIRE))
		kv_chan_shutdown(br.c);
	pthread_join(t, NULL);
	assert_int_equal(br.result, 0);
	for (size_t i = 0; i < br.len; i++)
		if (br.buf[i] != 7)
			fail_msg("byte %zu is %u", i, br.buf[i]);
	write_bytes(a, 1, 8);
	assert_int_equal(
	    kv_chan_wait_readable(br.c, kv_now_ns() + 5000000000LL), 1);
	free(br.buf);
	kv_chan_close(a);
	kv_chan_close(br.c);
}

static void test_socket_options_and_counters(void **state)
{
	struct kv_error err = {0};
	struct kv_tcp_limits lim;
	struct kv_chan *a, *b, *u, *p;
	int sv[2], fds[2];

	tcp_pair(&a, &b);
	assert_int_equal(kv_chan_set_nodelay(a, false), 0);
	assert_int_equal(kv_chan_set_nodelay(a, true), 0);
	assert_int_equal(kv_chan_unsent(a), 0);
	assert_int_equal(kv_chan_tcp_limits(a, &lim), 0);
	kv_chan_close(a);
	kv_chan_close(b);

	/* unix: a socket, but not TCP. */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	u = kv_chan_from_fd(sv[0], "unix", &err);
	assert_non_null(u);
	assert_true(kv_chan_set_nodelay(u, true) < 0);
	assert_int_equal(kv_chan_tcp_limits(u, &lim), -EOPNOTSUPP);
	assert_int_equal(write(sv[1], "x", 1), 1);
	kv_chan_close(u);
	close(sv[1]);

	/* A pipe has none of it. */
	assert_int_equal(pipe(fds), 0);
	p = kv_chan_from_fd(fds[1], "pipe", &err);
	assert_non_null(p);
	assert_int_equal(kv_chan_set_nodelay(p, true), -EOPNOTSUPP);
	assert_int_equal(kv_chan_unsent(p), -1);
	assert_int_equal(kv_chan_tcp_limits(p, &lim), -ENOTSOCK);
	kv_chan_close(p);
	close(fds[0]);
}

/* ---- cancellable connects ---- */

/*
 * A listener nobody accepts from, with its one-entry backlog taken by a
 * first connection: the kernel drops a further tcp SYN (the peer retries
 * for about 2 minutes, as with a firewall's DROP), and a further unix
 * connect would block. The real thing, no mock.
 */
struct black_hole {
	int listen_fd;
	int filler_fd;
	char uri[160];
	char path[100];
};

static void black_hole_tcp(struct black_hole *b)
{
	struct sockaddr_in sin = {.sin_family = AF_INET};
	socklen_t len = sizeof(sin);

	memset(b, 0, sizeof(*b));
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	b->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(b->listen_fd >= 0);
	assert_int_equal(bind(b->listen_fd, (struct sockaddr *)&sin,
			      sizeof(sin)), 0);
	assert_int_equal(listen(b->listen_fd, 0), 0);
	assert_int_equal(getsockname(b->listen_fd, (struct sockaddr *)&sin,
				     &len), 0);
	b->filler_fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(connect(b->filler_fd, (struct sockaddr *)&sin,
				 sizeof(sin)), 0);
	snprintf(b->uri, sizeof(b->uri), "tcp:127.0.0.1:%d",
		 ntohs(sin.sin_port));
	kv_sleep_ns(20 * 1000000LL); /* the filler reaches the queue */
}

static void black_hole_unix(struct black_hole *b)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};

	memset(b, 0, sizeof(*b));
	snprintf(b->path, sizeof(b->path), "/tmp/kvmig-bh-%d.sock", getpid());
	unlink(b->path);
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", b->path);
	b->listen_fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(b->listen_fd, (struct sockaddr *)&sun,
			      sizeof(sun)), 0);
	assert_int_equal(listen(b->listen_fd, 0), 0);
	b->filler_fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(connect(b->filler_fd, (struct sockaddr *)&sun,
				 sizeof(sun)), 0);
	snprintf(b->uri, sizeof(b->uri), "unix:%s", b->path);
}

static void black_hole_close(struct black_hole *b)
{
	close(b->filler_fd);
	close(b->listen_fd);
	if (b->path[0])
		unlink(b->path);
}

struct connector {
	const char *uri;
	struct kv_cancel *cancel;
	uint64_t timeout_ms;
	struct kv_chan *c;
	struct kv_error err;
	int64_t took_ns;
};

static void *connect_thread(void *arg)
{
	struct connector *k = arg;
	int64_t t0 = kv_now_ns();

	k->c = kv_chan_connect_cancellable(k->uri, k->cancel, k->timeout_ms,
					   &k->err);
	k->took_ns = kv_now_ns() - t0;
	return NULL;
}

/* A cancel from another thread ends a connect that gets no answer. */
static void cancel_black_hole(struct black_hole *b)
{
	struct connector k = {.uri = b->uri};
	pthread_t t;
	int64_t t0;

	k.cancel = kv_cancel_new(&k.err);
	assert_non_null(k.cancel);
	assert_int_equal(pthread_create(&t, NULL, connect_thread, &k), 0);
	kv_sleep_ns(300 * 1000000LL);
	t0 = kv_now_ns();
	kv_cancel_trigger(k.cancel);
	pthread_join(t, NULL);
	assert_null(k.c);
	if (k.took_ns < 250 * 1000000LL)
		fail_msg("%s: the connect ended before the cancel: %s", b->uri,
			 k.err.msg);
	assert_true(kv_now_ns() - t0 < 200 * 1000000LL);
	assert_int_equal(k.err.code, -ECANCELED);
	assert_non_null(strstr(k.err.msg, b->uri));
	assert_non_null(strstr(k.err.msg, "cancelled"));
	/* Triggered stays triggered: the next connect fails at once. */
	kv_error_clear(&k.err);
	assert_true(kv_cancel_triggered(k.cancel));
	assert_null(kv_chan_connect_cancellable(b->uri, k.cancel, 0, &k.err));
	assert_int_equal(k.err.code, -ECANCELED);
	kv_cancel_free(k.cancel);
}

static void test_connect_cancel_tcp(void **state)
{
	struct black_hole b;

	black_hole_tcp(&b);
	cancel_black_hole(&b);
	black_hole_close(&b);
}

static void test_connect_cancel_unix(void **state)
{
	struct black_hole b;

	black_hole_unix(&b);
	cancel_black_hole(&b);
	black_hole_close(&b);
}

/* No answer within the timeout: -ETIMEDOUT naming the address and the
 * time, about when it is due. */
static void test_connect_timeout(void **state)
{
	struct black_hole b;
	struct connector k = {.timeout_ms = 200};

	black_hole_tcp(&b);
	k.uri = b.uri;
	connect_thread(&k);
	assert_null(k.c);
	assert_int_equal(k.err.code, -ETIMEDOUT);
	assert_non_null(strstr(k.err.msg, b.uri));
	assert_non_null(strstr(k.err.msg, "200 ms"));
	assert_true(k.took_ns >= 190 * 1000000LL);
	assert_true(k.took_ns < 1000 * 1000000LL);
	black_hole_close(&b);
}

/* With a token and a timeout, a listening peer is still connected to:
 * tcp and unix; a refused port is still reported as refused. */
static void test_connect_cancellable_connects(void **state)
{
	const char *uris[] = {"tcp:127.0.0.1:0", "unix:/tmp/kvmig-cc.sock"};
	struct kv_error err = {0};
	struct kv_cancel *cancel = kv_cancel_new(&err);
	char uri[300];

	assert_non_null(cancel);
	for (size_t i = 0; i < 2; i++) {
		struct kv_listener *l = kv_listener_open(uris[i], &err);
		struct kv_chan *c, *a;
		char buf[2] = {0};

		assert_non_null(l);
		snprintf(uri, sizeof(uri), "%s", kv_listener_uri(l));
		c = kv_chan_connect_cancellable(uri, cancel, 1000, &err);
		assert_non_null(c);
		a = kv_listener_accept(l, &err);
		assert_non_null(a);
		assert_int_equal(kv_chan_writev_full(c, &(struct iovec){"h", 1},
						     1, &err), 0);
		assert_int_equal(kv_chan_read_full(a, buf, 1, &err), 0);
		assert_string_equal(buf, "h");
		kv_chan_close(a);
		kv_chan_close(c);
		kv_listener_close(l);
	}
	/* Refused stays refused (not a timeout, not a cancel). */
	{
		struct kv_listener *l = kv_listener_open("tcp:127.0.0.1:0", &err);

		snprintf(uri, sizeof(uri), "%s", kv_listener_uri(l));
		kv_listener_close(l);
		assert_null(kv_chan_connect_cancellable(uri, cancel, 1000,
							&err));
		assert_int_equal(err.code, -ECONNREFUSED);
	}
	kv_cancel_free(cancel);
}


/* ---- silence (x-link-timeout) ---- */

static struct kv_chan *pair_chan(int sv[2], const char *name)
{
	struct kv_error err = {0};
	struct kv_chan *c;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	c = kv_chan_from_fd(sv[0], name, &err);
	assert_non_null(c);
	return c;
}

static void test_silence_ends_a_read(void **state)
{
	struct kv_chan_activity life;
	struct kv_error err = {0};
	struct kv_chan *c;
	int64_t t0, took;
	int sv[2];
	char b[4];

	(void)state;
	kv_chan_activity_init(&life, "the source", "x-link-timeout");
	c = pair_chan(sv, "silent");
	assert_int_equal(kv_chan_set_silence(c, 100, &life), 0);
	assert_int_equal(kv_chan_silence_ms(c), 100);
	/* A byte is a sign of life; the read goes on for the rest. */
	assert_int_equal(write(sv[1], "x", 1), 1);
	t0 = kv_now_ns();
	assert_int_equal(kv_chan_read_full(c, b, sizeof(b), &err), -ETIMEDOUT);
	took = (kv_now_ns() - t0) / 1000000;
	assert_true(took >= 100 && took < 2000);
	assert_non_null(strstr(err.msg, "no byte from the source"));
	assert_non_null(strstr(err.msg, "for 100 ms (x-link-timeout)"));
	kv_chan_close(c);
	close(sv[1]);
}

struct noter {
	struct kv_chan_activity *life;
	int64_t until_ns;
};

static void *note_until(void *opaque)
{
	struct noter *n = opaque;

	while (kv_now_ns() < n->until_ns) {
		kv_chan_activity_note(n->life);
		kv_sleep_ns(20 * 1000000LL);
	}
	return NULL;
}

/* Life on another channel of the migration (multifd pages) keeps a
 * reader of this one waiting. */
static void test_silence_shared_activity(void **state)
{
	struct kv_chan_activity life;
	struct kv_error err = {0};
	struct noter n = {&life, 0};
	struct kv_chan *c;
	pthread_t t;
	int64_t t0, took;
	int sv[2];
	char b;

	(void)state;
	kv_chan_activity_init(&life, "the source", "x-link-timeout");
	c = pair_chan(sv, "shared");
	kv_chan_set_silence(c, 100, &life);
	t0 = kv_now_ns();
	n.until_ns = t0 + 400 * 1000000LL;
	assert_int_equal(pthread_create(&t, NULL, note_until, &n), 0);
	assert_int_equal(kv_chan_read_full(c, &b, 1, &err), -ETIMEDOUT);
	took = (kv_now_ns() - t0) / 1000000;
	pthread_join(t, NULL);
	assert_true(took >= 400 && took < 2500);
	/* Outside a read (a condition variable), the same verdict. */
	kv_chan_activity_note(&life);
	assert_int_equal(kv_chan_check_silence(c, t0, &err), 0);
	kv_sleep_ns(120 * 1000000LL);
	assert_int_equal(kv_chan_check_silence(c, t0, &err), -ETIMEDOUT);
	assert_non_null(strstr(err.msg, "x-link-timeout"));
	kv_chan_close(c);
	close(sv[1]);
}

/* A peer that stopped reading: the write fails once the buffers are full
 * and nothing moved for the limit. */
static void test_silence_ends_a_write(void **state)
{
	static uint8_t buf[1 << 20];
	struct kv_chan_activity life;
	struct kv_error err = {0};
	struct iovec iov;
	struct kv_chan *c;
	int sv[2], r = 0;

	(void)state;
	kv_chan_activity_init(&life, "the destination", "x-link-timeout");
	c = pair_chan(sv, "stalled");
	kv_chan_set_silence(c, 100, &life);
	for (int i = 0; i < 64 && r == 0; i++) {
		iov = (struct iovec){buf, sizeof(buf)};
		r = kv_chan_writev_full(c, &iov, 1, &err);
	}
	assert_int_equal(r, -ETIMEDOUT);
	assert_non_null(strstr(err.msg, "no byte from the destination"));
	kv_chan_close(c);
	close(sv[1]);
}

struct shutter {
	struct kv_chan *c;
	int64_t after_ns;
};

static void *shut_later(void *opaque)
{
	struct shutter *s = opaque;

	kv_sleep_ns(s->after_ns);
	kv_chan_shutdown(s->c);
	return NULL;
}

/* Cleared (the destination waiting for the decision), a wait never ends
 * by itself; a shutdown still ends it. */
static void test_silence_cleared(void **state)
{
	struct kv_chan_activity life;
	struct shutter sh;
	struct kv_chan *c;
	pthread_t t;
	int64_t t0;
	int sv[2];
	char b;

	(void)state;
	kv_chan_activity_init(&life, "the source", "x-link-timeout");
	c = pair_chan(sv, "cleared");
	kv_chan_set_silence(c, 50, &life);
	kv_chan_set_silence(c, 0, NULL);
	assert_int_equal(kv_chan_silence_ms(c), 0);
	sh = (struct shutter){c, 300 * 1000000LL};
	t0 = kv_now_ns();
	assert_int_equal(pthread_create(&t, NULL, shut_later, &sh), 0);
	assert_int_equal(c->ops->read(c, &b, 1), -ECANCELED);
	assert_true(kv_now_ns() - t0 >= 300 * 1000000LL);
	pthread_join(t, NULL);
	kv_chan_close(c);
	close(sv[1]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_uri_good),
	    cmocka_unit_test(test_uri_bad),
	    cmocka_unit_test(test_tcp_ipv4_port0),
	    cmocka_unit_test(test_tcp_port_in_use),
	    cmocka_unit_test(test_tcp_ipv6),
	    cmocka_unit_test(test_unix_socket),
	    cmocka_unit_test(test_unix_refuses_regular_file),
	    cmocka_unit_test(test_file_write_then_read),
	    cmocka_unit_test(test_connect_refused_names_address),
	    cmocka_unit_test(test_listener_shutdown_unblocks_accept),
	    cmocka_unit_test(test_chan_shutdown_unblocks_socket_read),
	    cmocka_unit_test(test_write_to_closed_socket_is_epipe),
	    cmocka_unit_test(test_fd_uri),
	    cmocka_unit_test(test_chan_shutdown_unblocks_pipe_read),
	    cmocka_unit_test(test_wait_readable_deadline),
	    cmocka_unit_test(test_wait_readable_pipe_and_file),
	    cmocka_unit_test(test_recv_lowat),
	    cmocka_unit_test(test_batched_read_gets_last_part),
	    cmocka_unit_test(test_socket_options_and_counters),
	    cmocka_unit_test(test_connect_cancel_tcp),
	    cmocka_unit_test(test_connect_cancel_unix),
	    cmocka_unit_test(test_connect_timeout),
	    cmocka_unit_test(test_connect_cancellable_connects),
	    cmocka_unit_test(test_silence_ends_a_read),
	    cmocka_unit_test(test_silence_shared_activity),
	    cmocka_unit_test(test_silence_ends_a_write),
	    cmocka_unit_test(test_silence_cleared),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
