/* SPDX-License-Identifier: MIT */
/*
 * tcp_limit: loopback TCP throughput with 1 and with N parallel streams,
 * the machine's ceiling for a migration over M channels (issue 5: multifd
 * with 2 channels is measured against the 2-stream number).
 *
 *   tcp_limit [--seconds S] [--streams N] [--write-size BYTES]
 *
 * For each stream count k in {1, N}: k connections on 127.0.0.1, each with
 * a sender thread writing write-size chunks from a page-aligned buffer (not
 * zeros) for S seconds and a receiver thread reading and discarding until
 * EOF. Throughput = all bytes received / (last receiver's EOF - first
 * write). One JSON object on stdout:
 *   {"seconds":3,"write_size":4194304,"streams":{"1":B1,"2":B2}} (bytes/s)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TL_MAX_STREAMS 16
#define TL_READ_SIZE   (4U << 20)
#define TL_PAGE	       4096U

struct tl_stream {
	int listen_fd;
	struct sockaddr_in addr;
	double seconds;
	size_t write_size;
	const uint8_t *buf; /* shared, read-only */
	int64_t start_ns, end_ns;
	uint64_t bytes;
	int send_err, recv_err; /* positive errno */
	pthread_t sender, receiver;
};

static int64_t tl_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void *tl_receive(void *arg)
{
	struct tl_stream *s = arg;
	uint8_t *buf = malloc(TL_READ_SIZE);
	int fd;

	if (!buf) {
		s->recv_err = ENOMEM;
		return NULL;
	}
	fd = accept(s->listen_fd, NULL, NULL);
	if (fd < 0) {
		s->recv_err = errno;
		free(buf);
		return NULL;
	}
	for (;;) {
		ssize_t n = read(fd, buf, TL_READ_SIZE);

		if (n > 0) {
			s->bytes += (uint64_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			s->recv_err = errno;
		break;
	}
	s->end_ns = tl_now_ns();
	close(fd);
	free(buf);
	return NULL;
}

static int tl_write_all(int fd, const uint8_t *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static void *tl_send(void *arg)
{
	struct tl_stream *s = arg;
	int64_t deadline;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 ||
	    connect(fd, (const struct sockaddr *)&s->addr, sizeof(s->addr))) {
		s->send_err = errno;
		if (fd >= 0)
			close(fd);
		/* Unblock the receiver still waiting in accept(). */
		shutdown(s->listen_fd, SHUT_RDWR);
		return NULL;
	}
	s->start_ns = tl_now_ns();
	deadline = s->start_ns + (int64_t)(s->seconds * 1e9);
	while (tl_now_ns() < deadline) {
		s->send_err = tl_write_all(fd, s->buf, s->write_size);
		if (s->send_err)
			break;
	}
	close(fd);
	return NULL;
}

static int tl_listen(struct tl_stream *s)
{
	socklen_t len = sizeof(s->addr);

	s->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s->listen_fd < 0)
		return errno;
	memset(&s->addr, 0, sizeof(s->addr));
	s->addr.sin_family = AF_INET;
	s->addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(s->listen_fd, (struct sockaddr *)&s->addr, sizeof(s->addr)) ||
	    listen(s->listen_fd, 1) ||
	    getsockname(s->listen_fd, (struct sockaddr *)&s->addr, &len)) {
		int e = errno;

		close(s->listen_fd);
		return e;
	}
	return 0;
}

/* k streams at once; bytes/s into *bps, or a positive errno. */
static int tl_measure(int k, double seconds, size_t write_size,
		      const uint8_t *buf, double *bps)
{
	struct tl_stream s[TL_MAX_STREAMS];
	int64_t start = INT64_MAX, end = 0;
	uint64_t bytes = 0;
	int err = 0, started = 0;

	memset(s, 0, sizeof(s));
	for (; started < k; started++) {
		struct tl_stream *t = &s[started];

		t->seconds = seconds;
		t->write_size = write_size;
		t->buf = buf;
		err = tl_listen(t);
		if (err)
			break;
		err = pthread_create(&t->receiver, NULL, tl_receive, t);
		if (err) {
			close(t->listen_fd);
			break;
		}
		err = pthread_create(&t->sender, NULL, tl_send, t);
		if (err) {
			shutdown(t->listen_fd, SHUT_RDWR);
			pthread_join(t->receiver, NULL);
			close(t->listen_fd);
			break;
		}
	}
	for (int i = 0; i < started; i++) {
		pthread_join(s[i].sender, NULL);
		pthread_join(s[i].receiver, NULL);
		close(s[i].listen_fd);
		if (!err)
			err = s[i].send_err ? s[i].send_err : s[i].recv_err;
		bytes += s[i].bytes;
		if (s[i].start_ns && s[i].start_ns < start)
			start = s[i].start_ns;
		if (s[i].end_ns > end)
			end = s[i].end_ns;
	}
	if (err)
		return err;
	*bps = end > start ? (double)bytes * 1e9 / (double)(end - start) : 0;
	return 0;
}

static int tl_usage(void)
{
	fprintf(stderr, "usage: tcp_limit [--seconds S (0-60]] [--streams N "
			"(1-%d)] [--write-size BYTES (4096-256M)]\n",
		TL_MAX_STREAMS);
	return 2;
}

int main(int argc, char **argv)
{
	double seconds = 3.0, bps[2] = { 0, 0 };
	int streams = 2, counts[2];
	size_t write_size = 4U << 20;
	uint8_t *buf;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
			seconds = atof(argv[++i]);
		else if (!strcmp(argv[i], "--streams") && i + 1 < argc)
			streams = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--write-size") && i + 1 < argc)
			write_size = (size_t)strtoul(argv[++i], NULL, 0);
		else
			return tl_usage();
	}
	if (seconds <= 0 || seconds > 60 || streams < 1 ||
	    streams > TL_MAX_STREAMS || write_size < TL_PAGE ||
	    write_size > (256U << 20))
		return tl_usage();
	if (posix_memalign((void **)&buf, TL_PAGE, write_size)) {
		fprintf(stderr, "tcp_limit: cannot allocate %zu bytes\n",
			write_size);
		return 1;
	}
	/* Not zeros: nothing on the path should get a free ride. */
	for (size_t i = 0; i < write_size; i++)
		buf[i] = (uint8_t)(i * 2654435761U >> 24);
	counts[0] = 1;
	counts[1] = streams;
	for (int i = 0; i < (streams > 1 ? 2 : 1); i++) {
		int err = tl_measure(counts[i], seconds, write_size, buf,
				     &bps[i]);

		if (err) {
			fprintf(stderr, "tcp_limit: %d stream(s) over "
					"127.0.0.1 failed: %s\n",
				counts[i], strerror(err));
			free(buf);
			return 1;
		}
	}
	free(buf);
	printf("{\"seconds\":%g,\"write_size\":%zu,\"streams\":{\"1\":%.0f",
	       seconds, write_size, bps[0]);
	if (streams > 1)
		printf(",\"%d\":%.0f", streams, bps[1]);
	printf("}}\n");
	return 0;
}
