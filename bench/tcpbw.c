/* SPDX-License-Identifier: MIT */
/*
 * tcpbw: single-stream TCP throughput over loopback, the ceiling for a
 * migration stream between two processes on this machine.
 *
 *   tcpbw [--seconds S] [--write-size SIZE]
 *
 * A receiver thread accepts one connection on 127.0.0.1 (port chosen by the
 * kernel) and reads into a large buffer until EOF; the sender writes
 * write-size chunks for S seconds, then closes. Throughput is the bytes the
 * receiver got over the time from the first write to the receiver's EOF.
 * One line of key=value pairs on stdout for bench/run.sh:
 *   tcpbw seconds=3 write_size=4194304 bytes=... ns=... bytes_per_sec=...
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/clock.h"

#define TCPBW_READ_SIZE (4U << 20)

struct tcpbw_recv {
	int listen_fd;
	uint64_t bytes;
	int64_t end_ns;
	int err; /* positive errno, 0 on success */
};

static void *receiver_main(void *arg)
{
	struct tcpbw_recv *r = arg;
	uint8_t *buf = malloc(TCPBW_READ_SIZE);
	int fd;

	if (!buf) {
		r->err = ENOMEM;
		return NULL;
	}
	fd = accept(r->listen_fd, NULL, NULL);
	if (fd < 0) {
		r->err = errno;
		free(buf);
		return NULL;
	}
	for (;;) {
		ssize_t n = read(fd, buf, TCPBW_READ_SIZE);

		if (n > 0) {
			r->bytes += (uint64_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			r->err = errno;
		break;
	}
	r->end_ns = kv_now_ns();
	close(fd);
	free(buf);
	return NULL;
}

static int listen_loopback(struct sockaddr_in *addr)
{
	socklen_t len = sizeof(*addr);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	memset(addr, 0, sizeof(*addr));
	addr->sin_family = AF_INET;
	addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)addr, sizeof(*addr)) ||
	    listen(fd, 1) ||
	    getsockname(fd, (struct sockaddr *)addr, &len)) {
		int e = -errno;

		close(fd);
		return e;
	}
	return fd;
}

static int write_all(int fd, const uint8_t *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Send for `seconds`; returns 0 or -errno. */
static int send_for(const struct sockaddr_in *addr, double seconds,
		    size_t write_size, int64_t *start_ns)
{
	uint8_t *buf = malloc(write_size);
	int fd, ret = 0;
	int64_t deadline;

	if (!buf)
		return -ENOMEM;
	/* Not zeros: nothing on the path should get a free ride. */
	for (size_t i = 0; i < write_size; i++)
		buf[i] = (uint8_t)(i * 2654435761U >> 24);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (const struct sockaddr *)addr,
			      sizeof(*addr))) {
		ret = -errno;
		goto out;
	}
	*start_ns = kv_now_ns();
	deadline = *start_ns + (int64_t)(seconds * 1e9);
	while (kv_now_ns() < deadline) {
		ret = write_all(fd, buf, write_size);
		if (ret)
			break;
	}
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	return ret;
}

int main(int argc, char **argv)
{
	double seconds = 3.0;
	size_t write_size = 4U << 20;
	struct sockaddr_in addr;
	struct tcpbw_recv r = { 0 };
	pthread_t th;
	int64_t start_ns = 0, ns;
	int ret;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
			seconds = atof(argv[++i]);
		} else if (!strcmp(argv[i], "--write-size") && i + 1 < argc) {
			write_size = (size_t)strtoul(argv[++i], NULL, 0);
		} else {
			fprintf(stderr, "usage: tcpbw [--seconds S] "
					"[--write-size BYTES]\n");
			return 2;
		}
	}
	if (seconds <= 0 || seconds > 60 || write_size == 0 ||
	    write_size > (256U << 20)) {
		fprintf(stderr, "tcpbw: --seconds must be in (0, 60] and "
				"--write-size in [1, 256 MiB]\n");
		return 2;
	}

	r.listen_fd = listen_loopback(&addr);
	if (r.listen_fd < 0) {
		fprintf(stderr, "tcpbw: cannot listen on 127.0.0.1: %s\n",
			strerror(-r.listen_fd));
		return 1;
	}
	ret = pthread_create(&th, NULL, receiver_main, &r);
	if (ret) {
		fprintf(stderr, "tcpbw: cannot start receiver: %s\n",
			strerror(ret));
		return 1;
	}
	ret = send_for(&addr, seconds, write_size, &start_ns);
	if (ret) {
		/* Unblock a receiver still waiting in accept(). */
		shutdown(r.listen_fd, SHUT_RDWR);
	}
	pthread_join(th, NULL);
	close(r.listen_fd);
	if (ret || r.err) {
		fprintf(stderr, "tcpbw: transfer failed: %s\n",
			strerror(ret ? -ret : r.err));
		return 1;
	}
	ns = r.end_ns - start_ns;
	if (ns <= 0)
		ns = 1;
	printf("tcpbw seconds=%g write_size=%zu bytes=%" PRIu64
	       " ns=%" PRId64 " bytes_per_sec=%.0f\n",
	       seconds, write_size, r.bytes, ns,
	       (double)r.bytes * 1e9 / (double)ns);
	return 0;
}
