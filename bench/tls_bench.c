/* SPDX-License-Identifier: MIT */
/*
 * TLS against plain over loopback TCP, through kvmig's own channels
 * (io/tls.h), and this machine's AES-GCM speed in the same run:
 *
 *   tls_bench [MiB]     (default 1024)
 *
 * One line per measurement: the cipher alone (GnuTLS, AES-128-GCM and
 * AES-256-GCM over 64 KiB buffers), then MiB sent over one connection
 * plain and with TLS (PSK, the suite GnuTLS picks: TLS 1.3, AES-GCM), the
 * sender writing 256 KiB iovecs as the multifd channels do, the receiver
 * reading them whole. The ratio says what the record layer costs where
 * the cipher is not the limit. Then the same in the RAM stream's shape
 * (io/stream.h, as the precopy sender and loader use it): an 8-byte
 * header and a 4 KiB page by reference, repeated, flushed every 512
 * pages, read back with a get of the header and one of the page.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/clock.h"
#include "io/channel.h"
#include "io/stream.h"
#include "io/tls.h"

#define CHUNK (256 * 1024)
#define PAGE 4096
/* Pages between flushes in the RAM stream's shape: as many as one
 * writev of the stream takes (IOV_MAX entries, a header and a page). */
#define PAGES_PER_FLUSH 512

enum shape { SHAPE_CHUNKS, SHAPE_PAGES };

static double cipher_gbs(gnutls_cipher_algorithm_t alg, size_t total)
{
	size_t buf_len = 64 * 1024, tag_len = 16;
	uint8_t key[32] = {1}, iv[12] = {2};
	gnutls_datum_t k = {key, (unsigned)gnutls_cipher_get_key_size(alg)};
	uint8_t *in = calloc(1, buf_len), *out = malloc(buf_len + tag_len);
	gnutls_aead_cipher_hd_t h;
	int64_t t0;

	if (gnutls_aead_cipher_init(&h, alg, &k) < 0)
		return 0;
	t0 = kv_now_ns();
	for (size_t done = 0; done < total; done += buf_len) {
		size_t out_len = buf_len + tag_len;

		iv[0]++;
		gnutls_aead_cipher_encrypt(h, iv, sizeof(iv), NULL, 0, tag_len,
					   in, buf_len, out, &out_len);
	}
	t0 = kv_now_ns() - t0;
	gnutls_aead_cipher_deinit(h);
	free(in);
	free(out);
	return (double)total / (double)t0;
}

struct end {
	struct kv_chan *c;
	const struct kv_tls_creds *creds;
	size_t total;
	enum shape shape;
	int ret;
};

static struct kv_chan *maybe_tls(struct kv_chan *c,
				 const struct kv_tls_creds *creds)
{
	struct kv_tls_params p = {.creds = creds, .deadline_ns = kv_now_ns() + 5000000000LL};
	struct kv_error err = {0};
	struct kv_chan *t;

	char what[64];

	if (!creds)
		return c;
	t = kv_tls_wrap(c, &p, &err);
	if (!t) {
		fprintf(stderr, "tls_bench: %s\n", err.msg);
		kv_chan_close(c);
	} else if (kv_tls_creds_endpoint(creds) == KV_TLS_CLIENT &&
		   kv_tls_describe(t, what, sizeof(what)) == 0) {
		printf("negotiated: %s\n", what);
	}
	return t;
}

/* The loader's reads: a header, then its page. */
static int receive_pages(struct end *e)
{
	struct kv_stream *s = kv_stream_new(e->c, KV_STREAM_READ);
	uint8_t *page = malloc(PAGE);
	int ret = 0;

	for (size_t got = 0; s && page && ret == 0 && got < e->total; got += PAGE) {
		if (kv_stream_get_be64(s) != got)
			ret = -EPROTO;
		else
			ret = kv_stream_get_buffer(s, page, PAGE);
	}
	e->c = NULL; /* the stream's; closed with it */
	if (!s)
		ret = -ENOMEM;
	kv_stream_close(s);
	free(page);
	return ret;
}

static void *receive_main(void *arg)
{
	struct end *e = arg;
	uint8_t *buf = malloc(CHUNK);
	struct kv_error err = {0};

	e->c = maybe_tls(e->c, e->creds);
	e->ret = e->c ? 0 : -EPROTO;
	if (e->c && e->shape == SHAPE_PAGES) {
		e->ret = receive_pages(e);
		free(buf);
		return NULL;
	}
	for (size_t got = 0; e->c && e->ret == 0 && got < e->total; got += CHUNK) {
		struct iovec v = {buf, CHUNK};

		e->ret = kv_chan_readv_full(e->c, &v, 1, &err);
	}
	free(buf);
	return NULL;
}

static int tcp_pair(struct kv_chan **a, struct kv_chan **b)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t len = sizeof(sa);
	struct kv_error err = {0};
	int l = socket(AF_INET, SOCK_STREAM, 0), c, s;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof(sa)) ||
	    listen(l, 1) || getsockname(l, (struct sockaddr *)&sa, &len))
		return -errno;
	c = socket(AF_INET, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&sa, sizeof(sa)))
		return -errno;
	s = accept(l, NULL, NULL);
	close(l);
	*a = kv_chan_from_fd(c, "bench:client", &err);
	*b = kv_chan_from_fd(s, "bench:server", &err);
	return *a && *b ? 0 : -ENOMEM;
}

/* CPU seconds this process used so far (every thread, user + system):
 * a figure that a loaded machine does not distort as it does wall time. */
static double cpu_s(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* The RAM sender's writes: header and page by reference, a flush every
 * PAGES_PER_FLUSH pages. */
static int send_pages(struct kv_chan *tx, const uint8_t *buf, size_t total)
{
	struct kv_stream *s = kv_stream_new(tx, KV_STREAM_WRITE);
	int ret;

	if (!s)
		return -ENOMEM;
	for (size_t sent = 0; sent < total; sent += PAGE) {
		kv_stream_put_be64(s, sent);
		kv_stream_put_page_ref(s, buf + sent % CHUNK, PAGE);
		if ((sent / PAGE + 1) % PAGES_PER_FLUSH == 0)
			kv_stream_flush(s);
	}
	kv_stream_flush(s);
	ret = kv_stream_error(s);
	kv_stream_close(s);
	return ret;
}

/* GB/s through one connection, or a negative errno. */
static double stream_gbs(const struct kv_tls_creds *client,
			 const struct kv_tls_creds *server, size_t total,
			 enum shape shape)
{
	struct end rx = {.creds = server, .total = total, .shape = shape};
	uint8_t *buf = calloc(1, CHUNK);
	struct kv_error err = {0};
	struct kv_chan *tx = NULL;
	pthread_t th;
	int64_t t0;
	int ret = 0;

	if (tcp_pair(&tx, &rx.c) < 0)
		return -1;
	pthread_create(&th, NULL, receive_main, &rx);
	tx = maybe_tls(tx, client);
	ret = tx ? 0 : -EPROTO;
	t0 = kv_now_ns();
	if (tx && shape == SHAPE_PAGES) {
		ret = send_pages(tx, buf, total);
		tx = NULL; /* closed with its stream */
	}
	for (size_t sent = 0; tx && ret == 0 && sent < total; sent += CHUNK) {
		struct iovec v[2] = {{buf, CHUNK / 2}, {buf + CHUNK / 2, CHUNK / 2}};

		buf[0]++;
		ret = kv_chan_writev_full(tx, v, 2, &err);
	}
	pthread_join(th, NULL);
	t0 = kv_now_ns() - t0;
	kv_chan_close(tx);
	kv_chan_close(rx.c);
	free(buf);
	return ret || rx.ret ? -1 : (double)total / (double)t0;
}

static char *psk_dir(void)
{
	static char dir[] = "/tmp/kvmig-tls-bench-XXXXXX";
	char path[64];
	FILE *f;

	if (!mkdtemp(dir))
		return NULL;
	snprintf(path, sizeof(path), "%s/keys.psk", dir);
	f = fopen(path, "w");
	if (!f)
		return NULL;
	fputs("qemu:000102030405060708090a0b0c0d0e0f\n", f);
	fclose(f);
	return dir;
}

int main(int argc, char **argv)
{
	size_t total = (size_t)(argc > 1 ? atol(argv[1]) : 1024) << 20;
	struct kv_error err = {0};
	struct kv_tls_creds *cl, *sv;
	char why[256], path[96];
	char *dir = psk_dir();
	double plain, tls, c0, plain_cpu, tls_cpu, gib;

	if (!dir)
		return 1;
	cl = kv_tls_creds_psk("c", dir, KV_TLS_CLIENT, NULL, &err);
	sv = kv_tls_creds_psk("s", dir, KV_TLS_SERVER, NULL, &err);
	snprintf(path, sizeof(path), "%s/keys.psk", dir);
	if (!cl || !sv) {
		fprintf(stderr, "tls_bench: %s\n", err.msg);
		return 1;
	}
	printf("aes-128-gcm (GnuTLS, one thread)   %.2f GB/s\n",
	       cipher_gbs(GNUTLS_CIPHER_AES_128_GCM, total));
	printf("aes-256-gcm (GnuTLS, one thread)   %.2f GB/s\n",
	       cipher_gbs(GNUTLS_CIPHER_AES_256_GCM, total));
	gib = (double)total / (1024.0 * 1024 * 1024);
	for (int shape = SHAPE_CHUNKS; shape <= SHAPE_PAGES; shape++) {
		const char *how = shape == SHAPE_CHUNKS ? "256 KiB writes" : "the RAM stream's pages";

		c0 = cpu_s();
		plain = stream_gbs(NULL, NULL, total, (enum shape)shape);
		plain_cpu = (cpu_s() - c0) / gib;
		c0 = cpu_s();
		tls = stream_gbs(cl, sv, total, (enum shape)shape);
		tls_cpu = (cpu_s() - c0) / gib;
		printf("loopback tcp, plain, 1 stream, %s      %.2f GB/s, %.2f CPU s per GiB (both ends)\n", how, plain, plain_cpu);
		printf("loopback tcp, TLS (PSK), 1 stream, %s  %.2f GB/s (%.2fx the plain time), %.2f CPU s per GiB (both ends)\n", how, tls, tls > 0 ? plain / tls : 0, tls_cpu);
		if (plain <= 0 || tls <= 0)
			break;
	}
	kv_tls_ktls_available(why, sizeof(why));
	printf("kTLS: %s\n", why);
	fflush(stdout);
	kv_tls_creds_free(cl);
	kv_tls_creds_free(sv);
	unlink(path); /* the server reads it at each handshake */
	rmdir(dir);
	return plain > 0 && tls > 0 ? 0 : 1;
}
