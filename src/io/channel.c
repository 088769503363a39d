/* SPDX-License-Identifier: MIT */
/*
 * Channel back ends: sockets (tcp, unix, socket fds), other fds (pipes,
 * character devices) and regular files.
 *
 * Every channel that can block is non-blocking underneath: an operation tries
 * the syscall first and only on EAGAIN waits in poll() on the fd together
 * with an eventfd that kv_chan_shutdown() signals. That is what lets another
 * thread cancel a read or write that waits on a silent peer, whatever the
 * kind of fd. Regular files never block for long; they check the shutdown
 * flag before every operation.
 */
#define _GNU_SOURCE
#include "io/channel.h"
#include "base/clock.h"
#include "io/iov.h"
#include "io/tcp_info.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* The public struct plus what only this file needs. */
struct fd_chan {
	struct kv_chan pub;
	int fd;
	int cancel_fd; /* eventfd: readable once shutdown was requested */
};

static struct fd_chan *to_fd_chan(struct kv_chan *c)
{
	return (struct fd_chan *)c;
}

static int chan_fd(const struct kv_chan *c)
{
	return ((const struct fd_chan *)c)->fd;
}

static bool chan_cancelled(const struct kv_chan *c)
{
	return __atomic_load_n(&c->shutdown_req, __ATOMIC_ACQUIRE) != 0;
}

/* poll()'s timeout for an absolute deadline: rounded up, so a wait never
 * ends just before it and spins; -1 without a deadline. */
static int poll_timeout_ms(int64_t deadline_ns)
{
	int64_t left;

	if (deadline_ns < 0)
		return -1;
	left = deadline_ns - kv_now_ns();
	if (left <= 0)
		return 0;
	left = (left + 999999) / 1000000;
	return left > INT_MAX ? INT_MAX : (int)left;
}

/* Wait until fd is ready for events (1; POLLERR/POLLHUP count: the next
 * call reports them), the deadline passes (0; negative: none) or the
 * channel is shut down (-ECANCELED). */
static int wait_fd_until(int fd, short events, int cancel_fd,
			 int64_t deadline_ns)
{
	struct pollfd pfd[2] = {
	    {.fd = fd, .events = events},
	    {.fd = cancel_fd, .events = POLLIN},
	};

	for (;;) {
		int r = poll(pfd, 2, poll_timeout_ms(deadline_ns));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (pfd[1].revents)
			return -ECANCELED;
		return r > 0;
	}
}

static int wait_fd_or_cancel(int fd, short events, int cancel_fd)
{
	return wait_fd_until(fd, events, cancel_fd, -1);
}

/* ---- silence (kv_chan_set_silence) ---- */

void kv_chan_activity_init(struct kv_chan_activity *a, const char *peer,
			   const char *setting)
{
	a->peer = peer;
	a->setting = setting;
	kv_chan_activity_note(a);
}

void kv_chan_activity_note(struct kv_chan_activity *a)
{
	__atomic_store_n(&a->last_ns, kv_now_ns(), __ATOMIC_RELAXED);
}

int64_t kv_chan_activity_last(const struct kv_chan_activity *a)
{
	return __atomic_load_n(&a->last_ns, __ATOMIC_RELAXED);
}

static struct kv_chan_activity *chan_activity(const struct kv_chan *c)
{
	return __atomic_load_n(&c->activity, __ATOMIC_ACQUIRE);
}

uint64_t kv_chan_silence_ms(const struct kv_chan *c)
{
	return __atomic_load_n(&c->silence_ms, __ATOMIC_RELAXED);
}

/* The peer showed life on c: a byte came, or a write found room. */
static void note_life(struct kv_chan *c)
{
	struct kv_chan_activity *a = chan_activity(c);

	if (a)
		kv_chan_activity_note(a);
}

/* When a wait that began at since_ns gives up: the limit after the later
 * of its start and the last sign of life; -1: never. */
static int64_t silence_deadline(const struct kv_chan *c, int64_t since_ns)
{
	struct kv_chan_activity *a = chan_activity(c);
	uint64_t limit = kv_chan_silence_ms(c);
	int64_t base = since_ns, last;

	if (!limit || !a)
		return -1;
	last = kv_chan_activity_last(a);
	if (last > base)
		base = last;
	return base + (int64_t)limit * 1000000;
}

/* Bytes the peer acknowledged since *unsent was taken are a sign of life
 * too: a writer waits for room until a good part of the send buffer
 * drained, which on a slow link takes a while. */
static void note_acks(struct kv_chan *c, int64_t *unsent)
{
	int64_t now = kv_chan_unsent(c);

	if (now < 0 || now > *unsent ||
	    *unsent - now >= KV_CHAN_ACKED_ALIVE_BYTES) {
		if (now >= 0 && now < *unsent)
			note_life(c);
		*unsent = now;
	}
}

/* Wait (cancellably) until c's fd is ready for events: 1, -ECANCELED,
 * -ETIMEDOUT once the channels sharing c's activity record were silent
 * for its limit, or -errno. A writer looks at what the peer
 * acknowledged every quarter of the limit. A limit changed during a
 * wait counts from the next wake-up. */
static int wait_chan(struct kv_chan *c, short events)
{
	int64_t since = 0, unsent = -1;

	for (;;) {
		int64_t deadline = -1, now = kv_now_ns();
		uint64_t limit = kv_chan_silence_ms(c);
		int r;

		if (limit) {
			if (!since) {
				since = now;
				if (events & POLLOUT)
					unsent = kv_chan_unsent(c);
			}
			deadline = silence_deadline(c, since);
			if (deadline >= 0 && now >= deadline)
				return -ETIMEDOUT;
			if (unsent >= 0 &&
			    now + (int64_t)limit * 250000 < deadline)
				deadline = now + (int64_t)limit * 250000;
		}
		r = wait_fd_until(chan_fd(c), events, to_fd_chan(c)->cancel_fd,
				  deadline);
		if (r != 0)
			return r;
		if (unsent >= 0)
			note_acks(c, &unsent);
	}
}

int kv_chan_silence_error(const struct kv_chan *c, struct kv_error *err)
{
	struct kv_chan_activity *a = chan_activity(c);
	char peer[300];

	kv_chan_peer_name(c, peer, sizeof(peer));
	return kv_error_set(err, -ETIMEDOUT, "no byte from %s %s for %llu ms (%s)", a && a->peer ? a->peer : "the peer", peer, (unsigned long long)kv_chan_silence_ms(c), a && a->setting ? a->setting : "its silence limit");
}

int kv_chan_check_silence(const struct kv_chan *c, int64_t since_ns,
			  struct kv_error *err)
{
	int64_t deadline = silence_deadline(c, since_ns);

	if (deadline < 0 || kv_now_ns() < deadline)
		return 0;
	return kv_chan_silence_error(c, err);
}

int kv_chan_set_silence(struct kv_chan *c, uint64_t limit_ms,
			struct kv_chan_activity *shared)
{
	if (limit_ms && !shared && !chan_activity(c))
		return -EINVAL;
	if (shared)
		__atomic_store_n(&c->activity, shared, __ATOMIC_RELEASE);
	__atomic_store_n(&c->silence_ms, limit_ms, __ATOMIC_RELAXED);
	return c->ops->set_silence ? c->ops->set_silence(c, limit_ms, shared)
				   : 0;
}

/* Read into some of iov; waits (cancellably) for data. */
static ssize_t chan_readv(struct kv_chan *c, const struct iovec *iov,
			  int iovcnt)
{
	for (;;) {
		ssize_t n;
		int r;

		if (chan_cancelled(c))
			return -ECANCELED;
		n = readv(chan_fd(c), iov, iovcnt);
		if (n > 0)
			note_life(c);
		if (n >= 0)
			return n;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		r = wait_chan(c, POLLIN);
		if (r < 0)
			return r;
	}
}

static ssize_t chan_read(struct kv_chan *c, void *buf, size_t len)
{
	struct iovec v = {buf, len};

	return chan_readv(c, &v, 1);
}

static ssize_t sock_writev_once(int fd, const struct iovec *iov, int iovcnt)
{
	struct msghdr msg = {
	    .msg_iov = (struct iovec *)iov,
	    .msg_iovlen = (size_t)iovcnt,
	};

	return sendmsg(fd, &msg, MSG_NOSIGNAL);
}

/*
 * A pipe whose reader is gone raises SIGPIPE on write. Library code must not
 * change the process' signal disposition, so block SIGPIPE in this thread for
 * the duration of the write and swallow the one the write raised.
 */
static ssize_t pipe_writev_once(int fd, const struct iovec *iov, int iovcnt)
{
	static const struct timespec no_wait;
	sigset_t pipe_set, old_set;
	ssize_t n;
	int saved;

	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
	n = writev(fd, iov, iovcnt);
	saved = errno;
	if (n < 0 && saved == EPIPE && !sigismember(&old_set, SIGPIPE)) {
		while (sigtimedwait(&pipe_set, NULL, &no_wait) < 0 &&
		       errno == EINTR)
			;
	}
	pthread_sigmask(SIG_SETMASK, &old_set, NULL);
	errno = saved;
	return n;
}

static ssize_t file_writev_once(int fd, const struct iovec *iov, int iovcnt)
{
	return writev(fd, iov, iovcnt);
}

static int wait_writable(struct kv_chan *c)
{
	int64_t t0 = kv_now_ns();
	int r = wait_chan(c, POLLOUT);

	c->write_wait_ns += (uint64_t)(kv_now_ns() - t0);
	return r;
}

static ssize_t chan_writev_with(struct kv_chan *c, const struct iovec *iov,
				int iovcnt,
				ssize_t (*once)(int, const struct iovec *, int))
{
	bool waited = false;

	if (iovcnt > IOV_MAX)
		iovcnt = IOV_MAX;
	for (;;) {
		ssize_t n;
		int r;

		if (chan_cancelled(c))
			return -ECANCELED;
		n = once(chan_fd(c), iov, iovcnt);
		/* Room after a full buffer: the peer took bytes. */
		if (n > 0 && waited)
			note_life(c);
		if (n >= 0)
			return n;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		r = wait_writable(c);
		if (r < 0)
			return r;
		waited = true;
	}
}

static ssize_t sock_writev(struct kv_chan *c, const struct iovec *iov,
			   int iovcnt)
{
	return chan_writev_with(c, iov, iovcnt, sock_writev_once);
}

static ssize_t pipe_writev(struct kv_chan *c, const struct iovec *iov,
			   int iovcnt)
{
	return chan_writev_with(c, iov, iovcnt, pipe_writev_once);
}

static ssize_t file_writev(struct kv_chan *c, const struct iovec *iov,
			   int iovcnt)
{
	return chan_writev_with(c, iov, iovcnt, file_writev_once);
}

static void signal_cancel(struct kv_chan *c)
{
	uint64_t one = 1;
	ssize_t n;

	__atomic_store_n(&c->shutdown_req, 1, __ATOMIC_RELEASE);
	do {
		n = write(to_fd_chan(c)->cancel_fd, &one, sizeof(one));
	} while (n < 0 && errno == EINTR);
}

static void sock_shutdown(struct kv_chan *c)
{
	signal_cancel(c);
	/* Let the peer see the end too, so it does not wait on us. */
	shutdown(chan_fd(c), SHUT_RDWR);
}

static void fd_close(struct kv_chan *c)
{
	struct fd_chan *fc = to_fd_chan(c);

	if (fc->fd >= 0)
		close(fc->fd);
	close(fc->cancel_fd);
	free(fc);
}

static int fd_wait_readable(struct kv_chan *c, int64_t deadline_ns)
{
	if (chan_cancelled(c))
		return -ECANCELED;
	return wait_fd_until(chan_fd(c), POLLIN, to_fd_chan(c)->cancel_fd,
			     deadline_ns);
}

static int sock_set_int(const struct kv_chan *c, int level, int name, int value)
{
	if (setsockopt(chan_fd(c), level, name, &value, sizeof(value)) < 0)
		return -errno;
	return 0;
}

static int sock_set_recv_lowat(struct kv_chan *c, size_t bytes)
{
	int v = bytes == 0 ? 1 : bytes > INT_MAX ? INT_MAX : (int)bytes;

	/* A hint: a kernel that refuses it only costs wake-ups. */
	(void)sock_set_int(c, SOL_SOCKET, SO_RCVLOWAT, v);
	return 0;
}

static int sock_set_nodelay(struct kv_chan *c, bool on)
{
	return sock_set_int(c, IPPROTO_TCP, TCP_NODELAY, on);
}

static int64_t sock_unsent(const struct kv_chan *c)
{
	int v;

	if (ioctl(chan_fd(c), SIOCOUTQ, &v) < 0 || v < 0)
		return -1;
	return v;
}

/* Data the peer never acknowledges ends the connection after the limit
 * too (the kernel would retransmit for about 15 minutes). Not TCP: no
 * such option, nothing to do. */
static int sock_set_silence(struct kv_chan *c, uint64_t limit_ms,
			    struct kv_chan_activity *shared)
{
	unsigned int v = limit_ms > UINT_MAX ? UINT_MAX : (unsigned int)limit_ms;
	int r;

	(void)shared;
	r = sock_set_int(c, IPPROTO_TCP, TCP_USER_TIMEOUT, (int)v);
	return r == -EOPNOTSUPP || r == -ENOPROTOOPT ? 0 : r;
}

static int sock_tcp_limits(const struct kv_chan *c, struct kv_tcp_limits *out)
{
	return kv_tcp_info_limits(chan_fd(c), out);
}

static int sock_peer_name(const struct kv_chan *c, char *buf, size_t size)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char host[INET6_ADDRSTRLEN], port[8];
	struct ucred cred;

	if (getpeername(chan_fd(c), (struct sockaddr *)&ss, &len) < 0)
		return -errno;
	if (ss.ss_family == AF_UNIX) {
		len = sizeof(cred);
		if (getsockopt(chan_fd(c), SOL_SOCKET, SO_PEERCRED, &cred,
			       &len) < 0)
			return -errno;
		snprintf(buf, size, "unix:pid %ld", (long)cred.pid);
		return 0;
	}
	if (getnameinfo((struct sockaddr *)&ss, len, host, sizeof(host), port,
			sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV))
		return -EINVAL;
	snprintf(buf, size, ss.ss_family == AF_INET6 ? "tcp:[%s]:%s" : "tcp:%s:%s",
		 host, port);
	return 0;
}

static const struct kv_chan_ops sock_ops = {
    .read = chan_read,
    .readv = chan_readv,
    .writev = sock_writev,
    .shutdown = sock_shutdown,
    .close = fd_close,
    .wait_readable = fd_wait_readable,
    .set_recv_lowat = sock_set_recv_lowat,
    .set_nodelay = sock_set_nodelay,
    .unsent = sock_unsent,
    .tcp_limits = sock_tcp_limits,
    .peer_name = sock_peer_name,
    .set_silence = sock_set_silence,
};

static const struct kv_chan_ops pipe_ops = {
    .read = chan_read,
    .readv = chan_readv,
    .writev = pipe_writev,
    .shutdown = signal_cancel,
    .close = fd_close,
    .wait_readable = fd_wait_readable,
};

static const struct kv_chan_ops file_ops = {
    .read = chan_read,
    .readv = chan_readv,
    .writev = file_writev,
    .shutdown = signal_cancel,
    .close = fd_close,
};

/* ---- positioned I/O on regular files (mapped-ram) ---- */

static int need_file(const struct kv_chan *c, const char *what,
		     struct kv_error *err)
{
	if (c->ops != &file_ops)
		return kv_error_set(err, -ESPIPE, "%s: %s needs a regular file", c->name, what);
	if (chan_cancelled(c))
		return kv_error_set(err, -ECANCELED, "%s: %s cancelled by shutdown", c->name, what);
	return 0;
}

int64_t kv_chan_file_seek(struct kv_chan *c, int64_t off, int whence,
			  struct kv_error *err)
{
	int r = need_file(c, "seek", err);
	off_t pos;

	if (r < 0)
		return r;
	pos = lseek(chan_fd(c), (off_t)off, whence);
	if (pos < 0)
		return kv_error_set_errno(err, -errno, "%s: seek to %lld", c->name, (long long)off);
	return (int64_t)pos;
}

/* Copy iov into a scratch array the loops may advance. */
static int copy_iov(const struct iovec *iov, int iovcnt, struct iovec *out,
		    int max)
{
	if (iovcnt > max)
		return -E2BIG;
	memcpy(out, iov, sizeof(*iov) * (size_t)iovcnt);
	return iovcnt;
}

#define FILE_IOV_MAX 1024

static uint64_t iov_left(const struct iovec *iov, int iovcnt)
{
	uint64_t n = 0;

	for (int i = 0; i < iovcnt; i++)
		n += iov[i].iov_len;
	return n;
}

int kv_chan_file_pwritev(struct kv_chan *c, const struct iovec *iov,
			 int iovcnt, uint64_t off, struct kv_error *err)
{
	struct iovec buf[FILE_IOV_MAX], *v = buf;
	int r = need_file(c, "positioned write", err);
	int n;

	if (r < 0)
		return r;
	n = copy_iov(iov, iovcnt, buf, FILE_IOV_MAX);
	if (n < 0)
		return kv_error_set(err, n, "%s: %d buffers in one write (at most %d)", c->name, iovcnt, FILE_IOV_MAX);
	while (n > 0) {
		ssize_t w = pwritev(chan_fd(c), v, n > IOV_MAX ? IOV_MAX : n,
				    (off_t)off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return kv_error_set_errno(err, -errno, "%s: write at file offset %llu", c->name, (unsigned long long)off);
		if (w == 0)
			return kv_error_set(err, -EIO, "%s: write at file offset %llu wrote nothing", c->name, (unsigned long long)off);
		off += (uint64_t)w;
		kv_iov_advance(&v, &n, (size_t)w);
	}
	return 0;
}

int kv_chan_file_preadv(struct kv_chan *c, const struct iovec *iov,
			int iovcnt, uint64_t off, struct kv_error *err)
{
	struct iovec buf[FILE_IOV_MAX], *v = buf;
	uint64_t start = off;
	int r = need_file(c, "positioned read", err);
	int n;

	if (r < 0)
		return r;
	n = copy_iov(iov, iovcnt, buf, FILE_IOV_MAX);
	if (n < 0)
		return kv_error_set(err, n, "%s: %d buffers in one read (at most %d)", c->name, iovcnt, FILE_IOV_MAX);
	while (n > 0) {
		ssize_t got = preadv(chan_fd(c), v, n > IOV_MAX ? IOV_MAX : n,
				     (off_t)off);

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return kv_error_set_errno(err, -errno, "%s: read at file offset %llu", c->name, (unsigned long long)off);
		if (got == 0)
			return kv_error_set(err, -ENODATA, "%s: the file ends at offset %llu, inside the %llu bytes expected from offset %llu (truncated?)", c->name, (unsigned long long)off, (unsigned long long)(off - start + iov_left(v, n)), (unsigned long long)start);
		off += (uint64_t)got;
		kv_iov_advance(&v, &n, (size_t)got);
	}
	return 0;
}

int kv_chan_file_punch(struct kv_chan *c, uint64_t off, uint64_t len,
		       struct kv_error *err)
{
	int r = need_file(c, "punching a hole", err);

	if (r < 0)
		return r;
	if (fallocate(chan_fd(c), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      (off_t)off, (off_t)len) < 0)
		return kv_error_set_errno(err, -errno, "%s: punching a hole at file offset %llu", c->name, (unsigned long long)off);
	return 0;
}

int64_t kv_chan_file_size(struct kv_chan *c, struct kv_error *err)
{
	int r = need_file(c, "size", err);
	struct stat st;

	if (r < 0)
		return r;
	if (fstat(chan_fd(c), &st) < 0)
		return kv_error_set_errno(err, -errno, "%s: fstat", c->name);
	return (int64_t)st.st_size;
}

int kv_chan_file_truncate(struct kv_chan *c, uint64_t len,
			  struct kv_error *err)
{
	int r = need_file(c, "truncate", err);

	if (r < 0)
		return r;
	if (ftruncate(chan_fd(c), (off_t)len) < 0)
		return kv_error_set_errno(err, -errno, "%s: cutting the file at %llu bytes", c->name, (unsigned long long)len);
	return 0;
}

struct kv_chan *kv_chan_file_reopen(struct kv_chan *c, bool write, bool direct,
				    struct kv_error *err)
{
	char proc[64];
	struct kv_chan *nc;
	int fd;

	if (need_file(c, "reopening", err) < 0)
		return NULL;
	/* Through /proc: the same inode even if the path was renamed. */
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", chan_fd(c));
	fd = open(proc, (write ? O_WRONLY : O_RDONLY) | O_CLOEXEC |
			    (direct ? O_DIRECT : 0));
	if (fd < 0) {
		kv_error_set_errno(err, -errno, "%s: opening it again%s", c->name, direct ? " with O_DIRECT (direct-io)" : "");
		return NULL;
	}
	nc = kv_chan_from_fd(fd, c->name, err);
	if (!nc)
		close(fd);
	return nc;
}

static int set_nonblock(int fd)
{
	int flags = fcntl(fd, F_GETFL);

	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

struct kv_chan *kv_chan_from_fd(int fd, const char *name, struct kv_error *err)
{
	char default_name[32];
	struct fd_chan *fc;
	struct stat st;
	int r;

	if (!name) {
		snprintf(default_name, sizeof(default_name), "fd:%d", fd);
		name = default_name;
	}
	if (fd < 0 || fstat(fd, &st) < 0) {
		kv_error_set(err, -EBADF, "%s: not an open file descriptor",
			     name);
		return NULL;
	}
	fc = calloc(1, sizeof(*fc));
	if (!fc) {
		kv_error_set(err, -ENOMEM, "%s: out of memory", name);
		return NULL;
	}
	fc->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (fc->cancel_fd < 0) {
		kv_error_set_errno(err, -errno, "%s: eventfd", name);
		free(fc);
		return NULL;
	}
	fc->fd = fd;
	fc->pub.is_socket = S_ISSOCK(st.st_mode);
	fc->pub.is_file = S_ISREG(st.st_mode);
	if (fc->pub.is_socket)
		fc->pub.ops = &sock_ops;
	else if (fc->pub.is_file)
		fc->pub.ops = &file_ops;
	else
		fc->pub.ops = &pipe_ops;
	snprintf(fc->pub.name, sizeof(fc->pub.name), "%s", name);
	if (!fc->pub.is_file) {
		r = set_nonblock(fd);
		if (r < 0) {
			kv_error_set_errno(err, r, "%s: set O_NONBLOCK", name);
			close(fc->cancel_fd);
			free(fc);
			return NULL;
		}
	}
	return &fc->pub;
}

/* One read into the first non-empty buffers of *iov, which it advances;
 * *done counts the bytes of want read so far. */
static int readv_step(struct kv_chan *c, struct iovec **iov, int *iovcnt,
		      size_t *done, size_t want, struct kv_error *err)
{
	ssize_t n;

	while (*iovcnt > 0 && (*iov)->iov_len == 0) {
		(*iov)++;
		(*iovcnt)--;
	}
	n = c->ops->readv ? c->ops->readv(c, *iov, *iovcnt)
			  : c->ops->read(c, (*iov)->iov_base, (*iov)->iov_len);
	if (n == 0)
		return kv_error_set(
		    err, -EIO,
		    "%s: unexpected end of input after %zu of %zu bytes",
		    c->name, *done, want);
	if (n == -ECANCELED)
		return kv_error_set(err, -ECANCELED,
				    "%s: read cancelled by shutdown", c->name);
	if (n == -ETIMEDOUT && kv_chan_silence_ms(c))
		return kv_chan_silence_error(c, err);
	if (n < 0)
		return kv_error_set_errno(err, (int)n, "%s: read failed",
					  c->name);
	*done += (size_t)n;
	kv_iov_advance(iov, iovcnt, (size_t)n);
	return 0;
}

static size_t iov_total(const struct iovec *iov, int iovcnt)
{
	size_t len = 0;

	for (int i = 0; i < iovcnt; i++)
		len += iov[i].iov_len;
	return len;
}

int kv_chan_readv_full(struct kv_chan *c, struct iovec *iov, int iovcnt,
		       struct kv_error *err)
{
	size_t want = iov_total(iov, iovcnt), done = 0;
	int ret = 0;

	while (done < want && ret == 0)
		ret = readv_step(c, &iov, &iovcnt, &done, want, err);
	return ret;
}

/*
 * Before every wait the low-water mark is what is still missing (at most
 * batch). Set once to the whole payload and left there, a payload read in
 * parts would leave the socket unreadable for its last part until bytes
 * beyond it arrive, which at a SYNC never happens.
 */
int kv_chan_readv_full_batched(struct kv_chan *c, struct iovec *iov, int iovcnt,
			       size_t batch, struct kv_error *err)
{
	size_t want = iov_total(iov, iovcnt), done = 0, lowat = 1;
	int ret = 0;

	while (done < want && ret == 0) {
		size_t left = want - done;
		size_t mark = left < batch ? left : batch;

		if (mark != lowat && kv_chan_set_recv_lowat(c, mark) == 0)
			lowat = mark;
		ret = readv_step(c, &iov, &iovcnt, &done, want, err);
	}
	if (lowat != 1)
		kv_chan_set_recv_lowat(c, 1);
	return ret;
}

int kv_chan_read_full_until(struct kv_chan *c, void *buf, size_t len,
			    int64_t deadline_ns, struct kv_error *err)
{
	size_t got = 0;

	while (got < len) {
		int r = kv_chan_wait_readable(c, deadline_ns);
		ssize_t n;

		if (r == 0)
			return kv_error_set(err, -ETIMEDOUT, "%s: %zu of %zu bytes came in the time allowed", c->name, got, len);
		n = r < 0 ? r : c->ops->read(c, (uint8_t *)buf + got, len - got);
		if (n == 0)
			return kv_error_set(err, -EPIPE, "%s: the peer closed after %zu of %zu bytes", c->name, got, len);
		if (n < 0)
			return kv_error_set_errno(err, (int)n, "%s: read failed after %zu of %zu bytes", c->name, got, len);
		got += (size_t)n;
	}
	return 0;
}

int kv_chan_read_full(struct kv_chan *c, void *buf, size_t len,
		      struct kv_error *err)
{
	struct iovec v = {buf, len};

	return kv_chan_readv_full(c, &v, 1, err);
}

int kv_chan_writev_full(struct kv_chan *c, struct iovec *iov, int iovcnt,
			struct kv_error *err)
{
	while (iovcnt > 0) {
		ssize_t n;

		if (iov->iov_len == 0) {
			iov++;
			iovcnt--;
			continue;
		}
		n = c->ops->writev(c, iov, iovcnt);
		if (n == -ECANCELED)
			return kv_error_set(err, -ECANCELED,
					    "%s: write cancelled by shutdown",
					    c->name);
		if (n == -ETIMEDOUT && kv_chan_silence_ms(c))
			return kv_chan_silence_error(c, err);
		if (n < 0)
			return kv_error_set_errno(err, (int)n,
						  "%s: write failed", c->name);
		kv_iov_advance(&iov, &iovcnt, (size_t)n);
	}
	return 0;
}

int kv_chan_wait_readable(struct kv_chan *c, int64_t deadline_ns)
{
	if (c->ops->wait_readable)
		return c->ops->wait_readable(c, deadline_ns);
	return chan_cancelled(c) ? -ECANCELED : 1;
}

int kv_chan_set_recv_lowat(struct kv_chan *c, size_t bytes)
{
	return c->ops->set_recv_lowat ? c->ops->set_recv_lowat(c, bytes) : 0;
}

int kv_chan_set_nodelay(struct kv_chan *c, bool on)
{
	return c->ops->set_nodelay ? c->ops->set_nodelay(c, on) : -EOPNOTSUPP;
}

int64_t kv_chan_unsent(const struct kv_chan *c)
{
	return c->ops->unsent ? c->ops->unsent(c) : -1;
}

int kv_chan_tcp_limits(const struct kv_chan *c, struct kv_tcp_limits *out)
{
	return c->ops->tcp_limits ? c->ops->tcp_limits(c, out) : -ENOTSOCK;
}

void kv_chan_peer_name(const struct kv_chan *c, char *buf, size_t size)
{
	if (!c->ops->peer_name || c->ops->peer_name(c, buf, size) < 0)
		snprintf(buf, size, "%s", c->name);
}

void kv_chan_shutdown(struct kv_chan *c)
{
	if (c)
		c->ops->shutdown(c);
}

void kv_chan_close(struct kv_chan *c)
{
	if (c)
		c->ops->close(c);
}

/* ---- connecting ---- */

struct kv_cancel {
	int fd; /* eventfd: readable once triggered, and it stays so */
	int triggered;
};

struct kv_cancel *kv_cancel_new(struct kv_error *err)
{
	struct kv_cancel *t = calloc(1, sizeof(*t));

	if (!t) {
		kv_error_set(err, -ENOMEM, "cancel token: out of memory");
		return NULL;
	}
	t->fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (t->fd < 0) {
		kv_error_set_errno(err, -errno, "cancel token: eventfd");
		free(t);
		return NULL;
	}
	return t;
}

void kv_cancel_trigger(struct kv_cancel *t)
{
	uint64_t one = 1;
	ssize_t n;

	if (!t || __atomic_exchange_n(&t->triggered, 1, __ATOMIC_ACQ_REL))
		return;
	do {
		n = write(t->fd, &one, sizeof(one));
	} while (n < 0 && errno == EINTR);
}

bool kv_cancel_triggered(const struct kv_cancel *t)
{
	return t && __atomic_load_n(&t->triggered, __ATOMIC_ACQUIRE);
}

void kv_cancel_free(struct kv_cancel *t)
{
	if (!t)
		return;
	close(t->fd);
	free(t);
}

/* What a connect may wait for, and until when. */
struct connect_ctl {
	const char *uri;
	const struct kv_cancel *cancel;
	uint64_t timeout_ms; /* 0: no deadline of our own */
	int64_t deadline_ns; /* -1: none */
};

static int ctl_cancel_fd(const struct connect_ctl *ctl)
{
	return ctl->cancel ? ctl->cancel->fd : -1;
}

/* A unix listener with a full backlog says EAGAIN rather than making a
 * non-blocking connect wait: try again this often. */
#define UNIX_BACKLOG_RETRY_NS (10 * 1000000LL)

static int64_t earlier(int64_t deadline_ns, int64_t other_ns)
{
	return deadline_ns < 0 || other_ns < deadline_ns ? other_ns
							 : deadline_ns;
}

/* Connect the non-blocking socket fd, waiting in poll() on the socket and
 * the cancel token: 0, -ECANCELED, -ETIMEDOUT, or connect's -errno. */
static int connect_wait(int fd, const struct sockaddr *sa, socklen_t len,
			const struct connect_ctl *ctl)
{
	int r, soerr = 0;
	socklen_t sl = sizeof(soerr);

	for (;;) {
		if (kv_cancel_triggered(ctl->cancel))
			return -ECANCELED;
		if (connect(fd, sa, len) == 0)
			return 0;
		if (errno != EAGAIN)
			break;
		r = wait_fd_until(-1, 0, ctl_cancel_fd(ctl),
				  earlier(ctl->deadline_ns,
					  kv_now_ns() + UNIX_BACKLOG_RETRY_NS));
		if (r < 0)
			return r;
		if (ctl->deadline_ns >= 0 && kv_now_ns() >= ctl->deadline_ns)
			return -ETIMEDOUT;
	}
	if (errno != EINPROGRESS && errno != EINTR)
		return -errno;
	r = wait_fd_until(fd, POLLOUT, ctl_cancel_fd(ctl), ctl->deadline_ns);
	if (r < 0)
		return r;
	if (r == 0)
		return -ETIMEDOUT;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
		return -errno;
	return -soerr;
}

/* The message for a connect that did not succeed. */
static int connect_failed(const struct connect_ctl *ctl, int code,
			  struct kv_error *err)
{
	if (code == -ECANCELED)
		return kv_error_set(err, code, "%s: connect cancelled", ctl->uri);
	if (code == -ETIMEDOUT && ctl->timeout_ms)
		return kv_error_set(err, code, "%s: no answer to connect within %llu ms", ctl->uri, (unsigned long long)ctl->timeout_ms);
	return kv_error_set_errno(err, code, "%s: cannot connect", ctl->uri);
}

/* One socket of the given kind connected to sa, or -errno. */
static int socket_connect(int family, int type, int protocol,
			  const struct sockaddr *sa, socklen_t len,
			  const struct connect_ctl *ctl)
{
	int fd, r;

	fd = socket(family, type | SOCK_CLOEXEC | SOCK_NONBLOCK, protocol);
	if (fd < 0)
		return -errno;
	r = connect_wait(fd, sa, len, ctl);
	if (r < 0) {
		close(fd);
		return r;
	}
	return fd;
}

/* Every address the name resolves to in turn, within the one deadline;
 * a cancel or our deadline ends the search (the kernel's own timeout on
 * one address does not). */
static int tcp_connect_fd(const struct kv_uri *u,
			  const struct connect_ctl *ctl, struct kv_error *err)
{
	struct addrinfo hints = {
	    .ai_family = AF_UNSPEC,
	    .ai_socktype = SOCK_STREAM,
	};
	struct addrinfo *res, *ai;
	int r, fd = -ECONNREFUSED;

	r = getaddrinfo(u->host[0] ? u->host : NULL, u->port, &hints, &res);
	if (r != 0)
		return kv_error_set(err, -EHOSTUNREACH,
				    "%s: cannot resolve '%s': %s", ctl->uri,
				    u->host, gai_strerror(r));
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket_connect(ai->ai_family, ai->ai_socktype,
				    ai->ai_protocol, ai->ai_addr,
				    ai->ai_addrlen, ctl);
		if (fd >= 0 || fd == -ECANCELED ||
		    (fd == -ETIMEDOUT && ctl->deadline_ns >= 0))
			break;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return connect_failed(ctl, fd, err);
	return fd;
}

static void unix_addr(const struct kv_uri *u, struct sockaddr_un *sun)
{
	memset(sun, 0, sizeof(*sun));
	sun->sun_family = AF_UNIX;
	/* kv_uri_parse checked that the path fits. */
	memcpy(sun->sun_path, u->path, strlen(u->path) + 1);
}

static int unix_connect_fd(const struct kv_uri *u,
			   const struct connect_ctl *ctl, struct kv_error *err)
{
	struct sockaddr_un sun;
	int fd;

	unix_addr(u, &sun);
	fd = socket_connect(AF_UNIX, SOCK_STREAM, 0, (struct sockaddr *)&sun,
			    sizeof(sun), ctl);
	if (fd < 0)
		return connect_failed(ctl, fd, err);
	return fd;
}

/* file:PATH[,offset=N]: what is before the offset stays (QEMU's option
 * is for a file that holds something else first), what was after it goes. */
static int create_file_fd(const struct kv_uri *u, const char *uri,
			  struct kv_error *err)
{
	int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (u->offset ? 0 : O_TRUNC);
	int fd = open(u->path, flags, 0600);

	if (fd < 0)
		return kv_error_set_errno(err, -errno, "%s: cannot create file",
					  uri);
	if (u->offset && (ftruncate(fd, (off_t)u->offset) < 0 ||
			  lseek(fd, (off_t)u->offset, SEEK_SET) < 0)) {
		int e = -errno;

		close(fd);
		return kv_error_set_errno(err, e, "%s: cannot start the stream at offset %llu", uri, (unsigned long long)u->offset);
	}
	return fd;
}

static int open_target_fd(const struct kv_uri *u,
			  const struct connect_ctl *ctl, struct kv_error *err)
{
	if (kv_cancel_triggered(ctl->cancel))
		return connect_failed(ctl, -ECANCELED, err);
	switch (u->kind) {
	case KV_URI_TCP:
		return tcp_connect_fd(u, ctl, err);
	case KV_URI_UNIX:
		return unix_connect_fd(u, ctl, err);
	case KV_URI_FILE:
		return create_file_fd(u, ctl->uri, err);
	case KV_URI_FD:
	default:
		return u->fd;
	}
}

struct kv_chan *kv_chan_connect_cancellable(const char *uri,
					    const struct kv_cancel *cancel,
					    uint64_t timeout_ms,
					    struct kv_error *err)
{
	struct connect_ctl ctl = {
	    .uri = uri,
	    .cancel = cancel,
	    .timeout_ms = timeout_ms,
	    .deadline_ns = -1,
	};
	struct kv_uri u;
	struct kv_chan *c;
	int fd;

	if (kv_uri_parse(uri, &u, err) < 0)
		return NULL;
	if (timeout_ms)
		ctl.deadline_ns = kv_now_ns() + (int64_t)timeout_ms * 1000000;
	fd = open_target_fd(&u, &ctl, err);
	if (fd < 0)
		return NULL;
	c = kv_chan_from_fd(fd, uri, err);
	if (!c && u.kind != KV_URI_FD)
		close(fd);
	/* The return path sends small messages that must not wait. */
	if (c && u.kind == KV_URI_TCP)
		kv_chan_set_nodelay(c, true);
	return c;
}

struct kv_chan *kv_chan_connect(const char *uri, struct kv_error *err)
{
	return kv_chan_connect_cancellable(uri, NULL, 0, err);
}

/* ---- listening ---- */

struct kv_listener {
	struct kv_uri uri;
	char text[300]; /* the bound address as a URI */
	int fd;		/* listening socket; -1 for file: and fd: */
	int cancel_fd;	/* eventfd signalled by kv_listener_shutdown */
	int shutdown_req;
	bool handed_out;  /* file: and fd: accept once */
	bool unlink_path; /* we created the unix socket file */
};

static int sockaddr_port(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
	return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

/* Fill l->text with the real address (the port may have been 0). */
static void tcp_describe(struct kv_listener *l)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char host[INET6_ADDRSTRLEN];
	const char *h = l->uri.host;

	if (getsockname(l->fd, (struct sockaddr *)&ss, &len) < 0) {
		snprintf(l->text, sizeof(l->text), "tcp:%s:%s", h, l->uri.port);
		return;
	}
	if (!*h && getnameinfo((struct sockaddr *)&ss, len, host, sizeof(host),
			       NULL, 0, NI_NUMERICHOST) == 0)
		h = host;
	if (strchr(h, ':'))
		snprintf(l->text, sizeof(l->text), "tcp:[%s]:%d", h,
			 sockaddr_port(&ss));
	else
		snprintf(l->text, sizeof(l->text), "tcp:%s:%d", h,
			 sockaddr_port(&ss));
}

static int tcp_listen_fd(struct kv_listener *l, const char *uri,
			 struct kv_error *err)
{
	struct addrinfo hints = {
	    .ai_family = AF_UNSPEC,
	    .ai_socktype = SOCK_STREAM,
	    .ai_flags = AI_PASSIVE,
	};
	struct addrinfo *res, *ai;
	int r, fd = -1, last = -EADDRNOTAVAIL;

	r = getaddrinfo(l->uri.host[0] ? l->uri.host : NULL, l->uri.port,
			&hints, &res);
	if (r != 0)
		return kv_error_set(err, -EADDRNOTAVAIL,
				    "%s: cannot resolve '%s': %s", uri,
				    l->uri.host, gai_strerror(r));
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
			    ai->ai_protocol);
		if (fd < 0) {
			last = -errno;
			continue;
		}
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &(int){1},
			   sizeof(int));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
		    listen(fd, 16) == 0)
			break;
		last = -errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return kv_error_set_errno(err, last, "%s: cannot listen", uri);
	l->fd = fd;
	tcp_describe(l);
	return 0;
}

/*
 * A unix socket path left by a dead process is replaced; a live socket (some
 * other process listens) or any other kind of file is refused.
 */
/* Does a process accept connections on this socket file? Non-blocking,
 * so a live listener with a full backlog answers EAGAIN at once instead of
 * making us wait in connect(). */
static bool unix_socket_live(const struct kv_uri *u)
{
	struct sockaddr_un sun;
	int fd, r;

	unix_addr(u, &sun);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return false;
	do {
		r = connect(fd, (struct sockaddr *)&sun, sizeof(sun));
	} while (r < 0 && errno == EINTR);
	if (r < 0 && errno == EAGAIN)
		r = 0;
	close(fd);
	return r == 0;
}

static int unix_prepare_path(const struct kv_uri *u, const char *uri,
			     struct kv_error *err)
{
	struct stat st;

	if (lstat(u->path, &st) < 0)
		return errno == ENOENT ? 0
				       : kv_error_set_errno(err, -errno,
							    "%s: cannot stat path",
							    uri);
	if (!S_ISSOCK(st.st_mode))
		return kv_error_set(err, -EEXIST,
				    "%s: '%s' exists and is not a socket; refusing to replace it",
				    uri, u->path);
	if (unix_socket_live(u))
		return kv_error_set(err, -EADDRINUSE,
				    "%s: another process is listening on '%s'",
				    uri, u->path);
	if (unlink(u->path) < 0 && errno != ENOENT)
		return kv_error_set_errno(
		    err, -errno, "%s: cannot remove stale socket", uri);
	return 0;
}

static int unix_listen_fd(struct kv_listener *l, const char *uri,
			  struct kv_error *err)
{
	struct sockaddr_un sun;
	int fd, r;

	r = unix_prepare_path(&l->uri, uri, err);
	if (r < 0)
		return r;
	unix_addr(&l->uri, &sun);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return kv_error_set_errno(err, -errno, "%s: socket", uri);
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 ||
	    listen(fd, 16) < 0) {
		r = -errno;
		close(fd);
		return kv_error_set_errno(err, r, "%s: cannot listen", uri);
	}
	l->fd = fd;
	l->unlink_path = true;
	return 0;
}

struct kv_listener *kv_listener_open(const char *uri, struct kv_error *err)
{
	struct kv_listener *l = calloc(1, sizeof(*l));
	int r = 0;

	if (!l) {
		kv_error_set(err, -ENOMEM, "%s: out of memory", uri);
		return NULL;
	}
	l->fd = -1;
	l->cancel_fd = -1;
	if (kv_uri_parse(uri, &l->uri, err) < 0)
		goto fail;
	snprintf(l->text, sizeof(l->text), "%s", uri);
	l->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (l->cancel_fd < 0) {
		kv_error_set_errno(err, -errno, "%s: eventfd", uri);
		goto fail;
	}
	switch (l->uri.kind) {
	case KV_URI_TCP:
		r = tcp_listen_fd(l, uri, err);
		break;
	case KV_URI_UNIX:
		r = unix_listen_fd(l, uri, err);
		break;
	case KV_URI_FILE:
		/* Opened at accept; tell about a missing file now. */
		if (access(l->uri.path, R_OK) < 0)
			r = kv_error_set_errno(err, -errno,
					       "%s: cannot read file", uri);
		break;
	case KV_URI_FD:
		break;
	}
	if (r < 0)
		goto fail;
	if (l->fd >= 0 && set_nonblock(l->fd) < 0) {
		kv_error_set_errno(err, -errno, "%s: set O_NONBLOCK", uri);
		goto fail;
	}
	return l;
fail:
	kv_listener_close(l);
	return NULL;
}

static bool listener_cancelled(const struct kv_listener *l)
{
	return __atomic_load_n(&l->shutdown_req, __ATOMIC_ACQUIRE) != 0;
}

/* One accept4() (retried on EINTR and aborted handshakes): the fd,
 * -EAGAIN when no peer waits, or another -errno with err set. */
static int accept_once(struct kv_listener *l, int flags, struct kv_error *err)
{
	for (;;) {
		int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC | flags);

		if (fd >= 0) {
			/* Small messages (return path, QMP) must not wait. */
			if (l->uri.kind == KV_URI_TCP)
				setsockopt(fd, IPPROTO_TCP, TCP_NODELAY,
					   &(int){1}, sizeof(int));
			return fd;
		}
		if (errno == EINTR || errno == ECONNABORTED)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return -EAGAIN;
		return kv_error_set_errno(err, -errno, "%s: accept failed",
					  l->text);
	}
}

static int accept_socket(struct kv_listener *l, struct kv_error *err)
{
	for (;;) {
		int fd, r;

		if (listener_cancelled(l))
			break;
		fd = accept_once(l, 0, err);
		if (fd != -EAGAIN)
			return fd;
		r = wait_fd_or_cancel(l->fd, POLLIN, l->cancel_fd);
		if (r == -ECANCELED)
			break;
		if (r < 0)
			return kv_error_set_errno(err, r, "%s: poll", l->text);
	}
	return kv_error_set(err, -ECANCELED, "%s: accept cancelled by shutdown",
			    l->text);
}

struct kv_chan *kv_listener_accept(struct kv_listener *l, struct kv_error *err)
{
	struct kv_chan *c;
	int fd;

	if (listener_cancelled(l)) {
		kv_error_set(err, -ECANCELED,
			     "%s: accept cancelled by shutdown", l->text);
		return NULL;
	}
	switch (l->uri.kind) {
	case KV_URI_TCP:
	case KV_URI_UNIX:
		fd = accept_socket(l, err);
		break;
	case KV_URI_FILE:
	case KV_URI_FD:
	default:
		if (l->handed_out) {
			kv_error_set(err, -EALREADY,
				     "%s: already accepted once", l->text);
			return NULL;
		}
		if (l->uri.kind == KV_URI_FD) {
			fd = l->uri.fd;
		} else {
			fd = open(l->uri.path, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				fd = kv_error_set_errno(err, -errno,
							"%s: cannot open file",
							l->text);
			if (fd >= 0 && l->uri.offset &&
			    lseek(fd, (off_t)l->uri.offset, SEEK_SET) < 0) {
				fd = kv_error_set_errno(err, -errno, "%s: cannot seek to offset %llu", l->text, (unsigned long long)l->uri.offset);
			}
		}
		if (fd >= 0)
			l->handed_out = true;
		break;
	}
	if (fd < 0)
		return NULL;
	c = kv_chan_from_fd(fd, l->text, err);
	if (!c && l->uri.kind != KV_URI_FD)
		close(fd);
	return c;
}

const char *kv_listener_uri(const struct kv_listener *l)
{
	return l->text;
}

int kv_listener_fd(const struct kv_listener *l)
{
	return l->fd;
}

int kv_listener_accept_fd(struct kv_listener *l, struct kv_error *err)
{
	if (l->fd < 0)
		return kv_error_set(err, -EINVAL,
				    "%s: not a socket listener", l->text);
	return accept_once(l, SOCK_NONBLOCK, err);
}

void kv_listener_shutdown(struct kv_listener *l)
{
	uint64_t one = 1;
	ssize_t n;

	if (!l)
		return;
	__atomic_store_n(&l->shutdown_req, 1, __ATOMIC_RELEASE);
	do {
		n = write(l->cancel_fd, &one, sizeof(one));
	} while (n < 0 && errno == EINTR);
}

void kv_listener_close(struct kv_listener *l)
{
	if (!l)
		return;
	if (l->fd >= 0)
		close(l->fd);
	if (l->cancel_fd >= 0)
		close(l->cancel_fd);
	if (l->unlink_path)
		unlink(l->uri.path);
	free(l);
}
