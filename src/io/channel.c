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
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* The public struct plus what only this file needs. */
struct fd_chan {
	struct kv_chan pub;
	int cancel_fd; /* eventfd: readable once shutdown was requested */
};

static struct fd_chan *to_fd_chan(struct kv_chan *c)
{
	return (struct fd_chan *)c;
}

static bool chan_cancelled(const struct kv_chan *c)
{
	return __atomic_load_n(&c->shutdown_req, __ATOMIC_ACQUIRE) != 0;
}

/* Wait until fd is ready for events or the channel is shut down. */
static int wait_fd_or_cancel(int fd, short events, int cancel_fd)
{
	struct pollfd pfd[2] = {
		{ .fd = fd, .events = events },
		{ .fd = cancel_fd, .events = POLLIN },
	};

	for (;;) {
		int r = poll(pfd, 2, -1);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (pfd[1].revents)
			return -ECANCELED;
		return 0; /* ready, or POLLERR/POLLHUP: the retry reports it */
	}
}

static ssize_t chan_read(struct kv_chan *c, void *buf, size_t len)
{
	for (;;) {
		ssize_t n;
		int r;

		if (chan_cancelled(c))
			return -ECANCELED;
		n = read(c->fd, buf, len);
		if (n >= 0)
			return n;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		r = wait_fd_or_cancel(c->fd, POLLIN, to_fd_chan(c)->cancel_fd);
		if (r < 0)
			return r;
	}
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

static ssize_t chan_writev_with(struct kv_chan *c, const struct iovec *iov,
				int iovcnt,
				ssize_t (*once)(int, const struct iovec *, int))
{
	if (iovcnt > IOV_MAX)
		iovcnt = IOV_MAX;
	for (;;) {
		ssize_t n;
		int r;

		if (chan_cancelled(c))
			return -ECANCELED;
		n = once(c->fd, iov, iovcnt);
		if (n >= 0)
			return n;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		r = wait_fd_or_cancel(c->fd, POLLOUT, to_fd_chan(c)->cancel_fd);
		if (r < 0)
			return r;
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
	shutdown(c->fd, SHUT_RDWR);
}

static void fd_close(struct kv_chan *c)
{
	struct fd_chan *fc = to_fd_chan(c);

	if (c->fd >= 0)
		close(c->fd);
	close(fc->cancel_fd);
	free(fc);
}

static const struct kv_chan_ops sock_ops = {
	.read = chan_read,
	.writev = sock_writev,
	.shutdown = sock_shutdown,
	.close = fd_close,
};

static const struct kv_chan_ops pipe_ops = {
	.read = chan_read,
	.writev = pipe_writev,
	.shutdown = signal_cancel,
	.close = fd_close,
};

static const struct kv_chan_ops file_ops = {
	.read = chan_read,
	.writev = file_writev,
	.shutdown = signal_cancel,
	.close = fd_close,
};

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
	fc->pub.fd = fd;
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

int kv_chan_read_full(struct kv_chan *c, void *buf, size_t len,
		      struct kv_error *err)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = c->ops->read(c, (char *)buf + done, len - done);

		if (n == 0)
			return kv_error_set(err, -EIO,
					    "%s: unexpected end of input after "
					    "%zu of %zu bytes",
					    c->name, done, len);
		if (n == -ECANCELED)
			return kv_error_set(err, -ECANCELED,
					    "%s: read cancelled by shutdown",
					    c->name);
		if (n < 0)
			return kv_error_set_errno(err, (int)n, "%s: read failed",
						  c->name);
		done += (size_t)n;
	}
	return 0;
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
		if (n < 0)
			return kv_error_set_errno(err, (int)n,
						  "%s: write failed", c->name);
		while (n > 0) {
			size_t step = (size_t)n < iov->iov_len ? (size_t)n
							      : iov->iov_len;

			iov->iov_base = (char *)iov->iov_base + step;
			iov->iov_len -= step;
			n -= (ssize_t)step;
			if (iov->iov_len == 0) {
				iov++;
				iovcnt--;
			}
		}
	}
	return 0;
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

/* ---- connecting and listening ---- */

struct kv_chan *kv_chan_connect(const char *uri, struct kv_error *err)
{
	kv_error_set(err, -ENOSYS, "%s: connect not implemented yet", uri);
	return NULL;
}

struct kv_listener *kv_listener_open(const char *uri, struct kv_error *err)
{
	kv_error_set(err, -ENOSYS, "%s: listen not implemented yet", uri);
	return NULL;
}

struct kv_chan *kv_listener_accept(struct kv_listener *l, struct kv_error *err)
{
	return NULL;
}

const char *kv_listener_uri(const struct kv_listener *l)
{
	return "";
}

void kv_listener_shutdown(struct kv_listener *l)
{
}

void kv_listener_close(struct kv_listener *l)
{
}
