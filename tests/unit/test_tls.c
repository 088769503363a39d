/* SPDX-License-Identifier: MIT */
/*
 * The TLS channel (io/tls.h) over real socket pairs with PSK credentials
 * written to a temp dir (x509 runs in tests/integration/test_vm_tls.py,
 * whose certificates certtool makes), the authz lists (base/authz.h) and
 * the --object table (io/objects.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
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

#include "base/authz.h"
#include "base/clock.h"
#include "io/channel.h"
#include "io/objects.h"
#include "io/tls.h"

#define KEY_A "0123456789abcdef0123456789abcdef"
#define KEY_B "fedcba9876543210fedcba9876543210"
#define SEC 1000000000LL

struct dirs {
	char good[64]; /* server: qemu:KEY_A */
	char bad[64];  /* qemu:KEY_B */
};

static void write_psk(char *dir, const char *lines)
{
	char path[128];
	FILE *f;

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/keys.psk", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(lines, f);
	fclose(f);
}

static void remove_dir(const char *dir)
{
	char path[128];

	snprintf(path, sizeof(path), "%s/keys.psk", dir);
	unlink(path);
	rmdir(dir);
}

static int setup(void **state)
{
	struct dirs *d = calloc(1, sizeof(*d));

	snprintf(d->good, sizeof(d->good), "/tmp/kvmig-tls-XXXXXX");
	snprintf(d->bad, sizeof(d->bad), "/tmp/kvmig-tls-XXXXXX");
	write_psk(d->good, "alice:" KEY_B "\nqemu:" KEY_A "\n");
	write_psk(d->bad, "qemu:" KEY_B "\n");
	*state = d;
	return 0;
}

static int teardown(void **state)
{
	struct dirs *d = *state;

	remove_dir(d->good);
	remove_dir(d->bad);
	free(d);
	return 0;
}

/* ---- a handshake between two threads ---- */

struct side {
	struct kv_chan *inner;
	struct kv_tls_params p;
	struct kv_chan *out;
	struct kv_error err;
	pthread_t th;
};

static void *wrap_main(void *arg)
{
	struct side *s = arg;

	s->out = kv_tls_wrap(s->inner, &s->p, &s->err);
	return NULL;
}

static void socket_pair(struct kv_chan **a, struct kv_chan **b)
{
	int sv[2];
	struct kv_error err = {0};

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	*a = kv_chan_from_fd(sv[0], "pair:client", &err);
	*b = kv_chan_from_fd(sv[1], "pair:server", &err);
	assert_non_null(*a);
	assert_non_null(*b);
}

/* Both ends shake hands; the inner channels are closed on failure. */
static void handshake(struct side *cl, struct side *sv)
{
	socket_pair(&cl->inner, &sv->inner);
	cl->p.deadline_ns = sv->p.deadline_ns = kv_now_ns() + 5 * SEC;
	assert_int_equal(pthread_create(&sv->th, NULL, wrap_main, sv), 0);
	wrap_main(cl);
	if (!cl->out)
		kv_chan_shutdown(cl->inner); /* the server must not wait */
	pthread_join(sv->th, NULL);
	if (!cl->out)
		kv_chan_close(cl->inner);
	if (!sv->out)
		kv_chan_close(sv->inner);
}

static struct kv_tls_creds *psk(const char *dir, enum kv_tls_endpoint ep,
				const char *user)
{
	struct kv_error err = {0};
	struct kv_tls_creds *c = kv_tls_creds_psk("t", dir, ep, user, &err);

	if (!c)
		fail_msg("%s", err.msg);
	return c;
}

/* ---- transfer ---- */

struct reader {
	struct kv_chan *c;
	uint8_t *buf;
	size_t len;
	int ret;
	pthread_t th;
};

static void *read_main(void *arg)
{
	struct reader *r = arg;
	struct kv_error err = {0};
	size_t half = r->len / 2;
	struct iovec v[2] = {{r->buf, half}, {r->buf + half, r->len - half}};

	r->ret = kv_chan_readv_full(r->c, v, 2, &err);
	return NULL;
}

/* Megabytes one way in uneven writev pieces while small messages go the
 * other way at the same time (the return path): both arrive whole. */
static void test_psk_transfer_full_duplex(void **state)
{
	struct dirs *d = *state;
	struct side cl = {0}, sv = {0};
	size_t len = 8u << 20;
	uint8_t *src = malloc(len), *dst = malloc(len);
	uint8_t back[64 * 100], got[sizeof(back)];
	struct reader r = {0}, rb = {0};
	struct kv_error err = {0};
	size_t sent_back = 0;

	for (size_t i = 0; i < len; i++)
		src[i] = (uint8_t)(i * 2654435761u >> 13);
	for (size_t i = 0; i < sizeof(back); i++)
		back[i] = (uint8_t)(i + 7);
	cl.p.creds = psk(d->good, KV_TLS_CLIENT, NULL);
	sv.p.creds = psk(d->good, KV_TLS_SERVER, NULL);
	handshake(&cl, &sv);
	assert_non_null(cl.out);
	assert_non_null(sv.out);
	assert_true(cl.out->is_socket);
	r = (struct reader){.c = sv.out, .buf = dst, .len = len};
	rb = (struct reader){.c = cl.out, .buf = got, .len = sizeof(back)};
	pthread_create(&r.th, NULL, read_main, &r);
	pthread_create(&rb.th, NULL, read_main, &rb);
	for (size_t off = 0, k = 0; off < len; k++) {
		size_t n = 1000 + (k * 7919) % 300000;
		struct iovec v[3];

		if (n > len - off)
			n = len - off;
		v[0] = (struct iovec){src + off, n / 3};
		v[1] = (struct iovec){src + off + n / 3, 0};
		v[2] = (struct iovec){src + off + n / 3, n - n / 3};
		assert_int_equal(kv_chan_writev_full(cl.out, v, 3, &err), 0);
		if (k < 100) {
			struct iovec b = {back + k * 64, 64};

			assert_int_equal(kv_chan_writev_full(sv.out, &b, 1, &err), 0);
			sent_back = k + 1;
		}
		off += n;
	}
	for (size_t k = 0; k < 100; k++) {
		struct iovec b = {back + k * 64, 64};

		if (k >= sent_back)
			assert_int_equal(kv_chan_writev_full(sv.out, &b, 1, &err), 0);
	}
	pthread_join(r.th, NULL);
	pthread_join(rb.th, NULL);
	assert_int_equal(r.ret, 0);
	assert_int_equal(rb.ret, 0);
	assert_memory_equal(src, dst, len);
	assert_memory_equal(back, got, sizeof(back));
	/* EOF reads as a plain channel's: 0. */
	kv_chan_close(cl.out);
	assert_int_equal(sv.out->ops->read(sv.out, got, 1), 0);
	kv_chan_close(sv.out);
	kv_tls_creds_free((struct kv_tls_creds *)cl.p.creds);
	kv_tls_creds_free((struct kv_tls_creds *)sv.p.creds);
	free(src);
	free(dst);
}

/* ---- where records are cut ---- */

#define REC 16384
/* TLS 1.3 with an AEAD: the content type byte and a 16-byte tag. */
#define REC_OVERHEAD 17
#define PAGE 4096

struct writer {
	struct kv_chan *c;
	struct iovec *iov;
	int iovcnt;
	int ret;
	pthread_t th;
};

static void *write_main(void *arg)
{
	struct writer *w = arg;
	struct kv_error err = {0};

	w->ret = kv_chan_writev_full(w->c, w->iov, w->iovcnt, &err);
	return NULL;
}

/* Reads the raw records on fd until they hold plain bytes of plaintext;
 * counts them and the full ones (REC bytes of plaintext). */
static void count_records(int fd, size_t plain, unsigned *records,
			  unsigned *full)
{
	size_t got = 0;

	*records = *full = 0;
	while (got < plain) {
		uint8_t hdr[5], body[REC + 256];
		size_t len;

		assert_int_equal(recv(fd, hdr, 5, MSG_WAITALL), 5);
		assert_int_equal(hdr[0], 0x17); /* application data */
		len = (size_t)hdr[3] << 8 | hdr[4];
		assert_true(len > REC_OVERHEAD && len <= sizeof(body));
		assert_int_equal(recv(fd, body, len, MSG_WAITALL), (ssize_t)len);
		got += len - REC_OVERHEAD;
		(*records)++;
		*full += len - REC_OVERHEAD == REC;
	}
	assert_int_equal(got, plain);
}

/* The RAM stream writes 8-byte headers and 4 KiB pages by reference, a
 * multifd packet a header and its pages: each writev's bytes go out in
 * full records (the last one cut where the call ends), not a record per
 * iovec entry, which costs several times the encryption itself. Read
 * on the wire, beneath the TLS channel. */
static void test_records_are_full(void **state)
{
	struct dirs *d = *state;
	struct side cl = {0}, sv = {0};
	enum { PAGES = 64 };
	struct iovec v[2 * PAGES];
	uint8_t hdr[PAGES][8], *pages = calloc(PAGES, PAGE);
	struct writer w = {0};
	struct kv_error err = {0};
	size_t plain = 0;
	unsigned records, full;
	int fd[2];

	for (int i = 0; i < PAGES; i++) {
		memset(hdr[i], i, sizeof(hdr[i]));
		v[2 * i] = (struct iovec){hdr[i], sizeof(hdr[i])};
		v[2 * i + 1] = (struct iovec){pages + (size_t)i * PAGE, PAGE};
		plain += sizeof(hdr[i]) + PAGE;
	}
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, fd), 0);
	cl.inner = kv_chan_from_fd(fd[0], "pair:client", &err);
	sv.inner = kv_chan_from_fd(dup(fd[1]), "pair:server", &err);
	assert_non_null(cl.inner);
	assert_non_null(sv.inner);
	cl.p.creds = psk(d->good, KV_TLS_CLIENT, NULL);
	sv.p.creds = psk(d->good, KV_TLS_SERVER, NULL);
	cl.p.deadline_ns = sv.p.deadline_ns = kv_now_ns() + 5 * SEC;
	assert_int_equal(pthread_create(&sv.th, NULL, wrap_main, &sv), 0);
	wrap_main(&cl);
	pthread_join(sv.th, NULL);
	assert_non_null(cl.out);
	assert_non_null(sv.out);
	/* The channel made the socket non-blocking; the raw reads wait. */
	assert_int_equal(fcntl(fd[1], F_SETFL, 0), 0);

	/* The RAM stream's shape: 64 x (header, page) in one writev. */
	w = (struct writer){.c = cl.out, .iov = v, .iovcnt = 2 * PAGES};
	pthread_create(&w.th, NULL, write_main, &w);
	count_records(fd[1], plain, &records, &full);
	pthread_join(w.th, NULL);
	assert_int_equal(w.ret, 0);
	assert_int_equal(records, (plain + REC - 1) / REC);
	assert_int_equal(full, plain / REC);

	/* A multifd packet's: a header, then its pages; the header and the
	 * first pages share a record. */
	v[0] = (struct iovec){hdr, 100};
	for (int i = 0; i < PAGES; i++)
		v[1 + i] = (struct iovec){pages + (size_t)i * PAGE, PAGE};
	plain = 100 + (size_t)PAGES * PAGE;
	w = (struct writer){.c = cl.out, .iov = v, .iovcnt = 1 + PAGES};
	pthread_create(&w.th, NULL, write_main, &w);
	count_records(fd[1], plain, &records, &full);
	pthread_join(w.th, NULL);
	assert_int_equal(w.ret, 0);
	assert_int_equal(records, (plain + REC - 1) / REC);

	/* A small message (the return path's) is one small record, sent at
	 * once: nothing waits for more. */
	v[0] = (struct iovec){hdr, 12};
	assert_int_equal(kv_chan_writev_full(cl.out, v, 1, &err), 0);
	count_records(fd[1], 12, &records, &full);
	assert_int_equal(records, 1);

	kv_chan_close(cl.out);
	kv_chan_close(sv.out);
	close(fd[1]);
	kv_tls_creds_free((struct kv_tls_creds *)cl.p.creds);
	kv_tls_creds_free((struct kv_tls_creds *)sv.p.creds);
	free(pages);
}

/* Decrypted bytes not handed out yet make the channel readable though the
 * socket is empty; a shutdown ends a blocked read promptly. */
static void *shutdown_later(void *arg)
{
	struct timespec ts = {0, 100 * 1000000L};

	nanosleep(&ts, NULL);
	kv_chan_shutdown(arg);
	return NULL;
}

static void test_pending_and_shutdown(void **state)
{
	struct dirs *d = *state;
	struct side cl = {0}, sv = {0};
	uint8_t msg[100] = {1, 2, 3}, b[100];
	struct iovec v = {msg, sizeof(msg)};
	struct kv_error err = {0};
	pthread_t th;
	int64_t t0;

	cl.p.creds = psk(d->good, KV_TLS_CLIENT, "qemu");
	sv.p.creds = psk(d->good, KV_TLS_SERVER, NULL);
	handshake(&cl, &sv);
	assert_non_null(sv.out);
	assert_int_equal(kv_chan_writev_full(cl.out, &v, 1, &err), 0);
	assert_int_equal(sv.out->ops->read(sv.out, b, 1), 1);
	assert_int_equal(kv_chan_wait_readable(sv.out, kv_now_ns()), 1);
	assert_int_equal(kv_chan_read_full(sv.out, b + 1, 99, &err), 0);
	assert_memory_equal(msg, b, sizeof(msg));
	assert_int_equal(kv_chan_wait_readable(sv.out, kv_now_ns() + SEC / 20), 0);
	pthread_create(&th, NULL, shutdown_later, sv.out);
	t0 = kv_now_ns();
	assert_int_equal(sv.out->ops->read(sv.out, b, 1), -ECANCELED);
	assert_true(kv_now_ns() - t0 < 2 * SEC);
	pthread_join(th, NULL);
	kv_chan_close(cl.out);
	kv_chan_close(sv.out);
	kv_tls_creds_free((struct kv_tls_creds *)cl.p.creds);
	kv_tls_creds_free((struct kv_tls_creds *)sv.p.creds);
}

struct watchdog {
	struct kv_chan *c;
	int done; /* atomic */
	pthread_t th;
};

/* Shuts c down after 3 s unless done: a read that would wait forever
 * fails the test instead. */
static void *watchdog_main(void *arg)
{
	struct watchdog *w = arg;
	struct timespec slice = {0, 50 * 1000000L};

	for (int i = 0; i < 60; i++) {
		if (__atomic_load_n(&w->done, __ATOMIC_ACQUIRE))
			return NULL;
		nanosleep(&slice, NULL);
	}
	kv_chan_shutdown(w->c);
	return NULL;
}

/* The silence limit (x-link-timeout) holds over TLS as over a plain
 * socket: a read that hears nothing for it fails, saying so, and a byte
 * that came counts as life. */
static void test_silence_through_tls(void **state)
{
	struct dirs *d = *state;
	struct side cl = {0}, sv = {0};
	struct kv_chan_activity life;
	struct kv_error err = {0};
	uint8_t msg[8] = {1}, b[8];
	struct iovec v = {msg, sizeof(msg)};
	struct watchdog w = {0};
	int64_t t0;
	int ret;

	cl.p.creds = psk(d->good, KV_TLS_CLIENT, NULL);
	sv.p.creds = psk(d->good, KV_TLS_SERVER, NULL);
	handshake(&cl, &sv);
	assert_non_null(cl.out);
	assert_non_null(sv.out);
	kv_chan_activity_init(&life, "the source", "x-link-timeout");
	assert_int_equal(kv_chan_set_silence(sv.out, 300, &life), 0);
	assert_int_equal(kv_chan_writev_full(cl.out, &v, 1, &err), 0);
	assert_int_equal(kv_chan_read_full(sv.out, b, sizeof(b), &err), 0);
	w.c = sv.out;
	pthread_create(&w.th, NULL, watchdog_main, &w);
	t0 = kv_now_ns();
	ret = kv_chan_read_full(sv.out, b, sizeof(b), &err);
	__atomic_store_n(&w.done, 1, __ATOMIC_RELEASE);
	pthread_join(w.th, NULL);
	assert_int_equal(ret, -ETIMEDOUT);
	assert_true(kv_now_ns() - t0 >= SEC / 5);
	if (!strstr(err.msg, "no byte from the source"))
		fail_msg("%s", err.msg);
	kv_chan_close(cl.out);
	kv_chan_close(sv.out);
	kv_tls_creds_free((struct kv_tls_creds *)cl.p.creds);
	kv_tls_creds_free((struct kv_tls_creds *)sv.p.creds);
}

/* A peer that never answers: the handshake ends at its deadline, says
 * so, and leaves the inner channel to the caller. */
static void test_handshake_deadline(void **state)
{
	struct dirs *d = *state;
	struct kv_chan *a, *b;
	struct kv_tls_params p = {0};
	struct kv_error err = {0};
	int64_t t0 = kv_now_ns();

	socket_pair(&a, &b);
	p.creds = psk(d->good, KV_TLS_CLIENT, NULL);
	p.deadline_ns = t0 + SEC / 5;
	assert_null(kv_tls_wrap(a, &p, &err));
	assert_int_equal(err.code, -ETIMEDOUT);
	assert_non_null(strstr(err.msg, "did not complete the TLS handshake in time"));
	assert_true(kv_now_ns() - t0 < 2 * SEC);
	kv_chan_close(a); /* still the caller's */
	kv_chan_close(b);
	kv_tls_creds_free((struct kv_tls_creds *)p.creds);
}

static void expect_refusal(struct side *cl, struct side *sv,
			   const char *client_says, const char *server_says)
{
	handshake(cl, sv);
	if (cl->out || sv->out)
		fail_msg("handshake passed: %s / %s", cl->err.msg, sv->err.msg);
	if (!strstr(cl->err.msg, client_says))
		fail_msg("client: %s", cl->err.msg);
	if (!strstr(sv->err.msg, server_says))
		fail_msg("server: %s", sv->err.msg);
	kv_tls_creds_free((struct kv_tls_creds *)cl->p.creds);
	kv_tls_creds_free((struct kv_tls_creds *)sv->p.creds);
}

static void test_psk_refusals(void **state)
{
	struct dirs *d = *state;
	struct kv_error err = {0};
	struct kv_authz *only_alice = kv_authz_simple("a0", "alice", &err);
	struct side cl = {0}, sv = {0};

	cl.p.creds = psk(d->bad, KV_TLS_CLIENT, NULL);
	sv.p.creds = psk(d->good, KV_TLS_SERVER, NULL);
	expect_refusal(&cl, &sv, "PSK mismatch", "PSK mismatch");

	memset(&cl, 0, sizeof(cl));
	memset(&sv, 0, sizeof(sv));
	cl.p.creds = psk(d->good, KV_TLS_CLIENT, "qemu");
	sv.p.creds = psk(d->good, KV_TLS_SERVER, NULL);
	sv.p.authz = only_alice;
	expect_refusal(&cl, &sv, "refused this side's identity",
		       "the source 'qemu' is refused by tls-authz 'a0'");

	/* alice is allowed, and her key is hers. */
	memset(&cl, 0, sizeof(cl));
	memset(&sv, 0, sizeof(sv));
	cl.p.creds = psk(d->good, KV_TLS_CLIENT, "alice");
	sv.p.creds = psk(d->good, KV_TLS_SERVER, NULL);
	sv.p.authz = only_alice;
	handshake(&cl, &sv);
	assert_non_null(cl.out);
	assert_non_null(sv.out);
	kv_chan_close(cl.out);
	kv_chan_close(sv.out);
	kv_tls_creds_free((struct kv_tls_creds *)cl.p.creds);
	kv_tls_creds_free((struct kv_tls_creds *)sv.p.creds);
	kv_authz_free(only_alice);
}

/* A client whose user the file does not list fails when it is made. */
static void test_psk_client_needs_its_key(void **state)
{
	struct dirs *d = *state;
	struct kv_error err = {0};

	assert_null(kv_tls_creds_psk("t", d->bad, KV_TLS_CLIENT, "bob", &err));
	assert_non_null(strstr(err.msg, "PSK user 'bob' is not in"));
}

/* ---- authz ---- */

static void test_authz_lists(void **state)
{
	struct kv_authz_rule rules[] = {
	    {"CN=mallory*", KV_AUTHZ_DENY, KV_AUTHZ_GLOB},
	    {"O=kvmig,CN=*", KV_AUTHZ_ALLOW, KV_AUTHZ_GLOB},
	    {"bob", KV_AUTHZ_ALLOW, KV_AUTHZ_EXACT},
	};
	struct kv_error err = {0};
	struct kv_authz *a = kv_authz_list("l", KV_AUTHZ_DENY, rules, 3, &err);
	struct kv_authz *open = kv_authz_list("o", KV_AUTHZ_ALLOW, rules, 1, &err);
	enum kv_authz_policy pol;
	enum kv_authz_format fmt;

	(void)state;
	assert_true(kv_authz_allows(a, "O=kvmig,CN=source"));
	assert_false(kv_authz_allows(a, "O=other,CN=source"));
	assert_true(kv_authz_allows(a, "bob"));
	assert_false(kv_authz_allows(a, "bobby")); /* exact is exact */
	assert_false(kv_authz_allows(open, "CN=mallory.example"));
	assert_true(kv_authz_allows(open, "anyone")); /* the list's policy */
	assert_string_equal(kv_authz_id(a), "l");
	assert_int_equal(kv_authz_policy_parse("allow", &pol), 0);
	assert_int_equal(pol, KV_AUTHZ_ALLOW);
	assert_int_equal(kv_authz_policy_parse("maybe", &pol), -EINVAL);
	assert_int_equal(kv_authz_format_parse("glob", &fmt), 0);
	assert_int_equal(kv_authz_format_parse("regex", &fmt), -EINVAL);
	kv_authz_free(a);
	kv_authz_free(open);
}

/* ---- the --object table ---- */

static void expect_add_error(struct kv_objects *o, const char *spec,
			     const char *says)
{
	struct kv_error err = {0};

	assert_true(kv_objects_add(o, spec, &err) < 0);
	if (!strstr(err.msg, says))
		fail_msg("%s: %s", spec, err.msg);
}

static void test_objects(void **state)
{
	struct dirs *d = *state;
	struct kv_objects *o = kv_objects_new();
	struct kv_error err = {0};
	char spec[256];
	const struct kv_authz *a;

	snprintf(spec, sizeof(spec), "tls-creds-psk,id=tls0,dir=%s,endpoint=server", d->good);
	assert_int_equal(kv_objects_add(o, spec, &err), 0);
	snprintf(spec, sizeof(spec), "{\"qom-type\": \"tls-creds-psk\", \"id\": \"c\", \"dir\": \"%s\", \"endpoint\": \"client\", \"username\": \"alice\"}", d->good);
	assert_int_equal(kv_objects_add(o, spec, &err), 0);
	assert_int_equal(kv_objects_add(o, "authz-list,id=l,policy=allow,rules.1.match=b*,rules.1.policy=allow,rules.1.format=glob,rules.0.match=bad,,one,rules.0.policy=deny", &err), 0);
	assert_int_equal(kv_objects_add(o, "{\"qom-type\": \"authz-simple\", \"id\": \"s\", \"identity\": \"CN=x\"}", &err), 0);
	assert_int_equal(kv_tls_creds_endpoint(kv_objects_tls_creds(o, "tls0", &err)), KV_TLS_SERVER);
	assert_int_equal(kv_tls_creds_endpoint(kv_objects_tls_creds(o, "c", &err)), KV_TLS_CLIENT);
	a = kv_objects_authz(o, "l", &err);
	assert_non_null(a);
	assert_false(kv_authz_allows(a, "bad,one")); /* ",," is a comma */
	assert_true(kv_authz_allows(a, "bob"));
	assert_true(kv_authz_allows(kv_objects_authz(o, "s", &err), "CN=x"));

	assert_null(kv_objects_tls_creds(o, "nope", &err));
	assert_string_equal(err.msg, "No TLS credentials with id 'nope'");
	kv_error_clear(&err);
	assert_null(kv_objects_tls_creds(o, "l", &err));
	assert_non_null(strstr(err.msg, "is not TLS credentials"));
	kv_error_clear(&err);
	assert_null(kv_objects_authz(o, "tls0", &err));
	assert_non_null(strstr(err.msg, "not an authorization object"));

	expect_add_error(o, "tls-creds-gss,id=g", "unknown object type 'tls-creds-gss'");
	expect_add_error(o, "authz-simple,id=s,identity=y", "already exists");
	expect_add_error(o, "authz-simple,id=t,identity=y,colour=red", "authz-simple has no property 'colour'");
	expect_add_error(o, "tls-creds-x509,id=x,endpoint=server", "property 'dir'");
	expect_add_error(o, "tls-creds-psk,id=p,dir=/nonexistent,endpoint=middle", "expects server or client");
	expect_add_error(o, "tls-creds-psk,id=p,dir=/nonexistent,endpoint=server", "/nonexistent/keys.psk");
	expect_add_error(o, "tls-creds-x509,id=x,dir=/nonexistent,endpoint=client", "/nonexistent/ca-cert.pem");
	expect_add_error(o, "authz-list,id=m,rules.0.match=a,rules.0.policy=perhaps", "rules.0.policy must be allow or deny");
	expect_add_error(o, "{\"qom-type\": \"authz-list\", \"id\": \"m\", \"rules\": 3}", "must be a list");
	expect_add_error(o, "{nope", "not a JSON object");
	expect_add_error(o, "authz-simple,identity=y", "'id' is required");
	kv_objects_free(o);
}

static void test_looks_like(void **state)
{
	const uint8_t hello[] = {0x16, 3, 1, 0, 0xc8};
	const uint8_t qevm[] = {'Q', 'E', 'V', 'M'};
	const uint8_t alert[] = {0x15, 3};
	char why[256];

	(void)state;
	assert_true(kv_tls_looks_like_hello(hello, sizeof(hello)));
	assert_false(kv_tls_looks_like_hello(qevm, sizeof(qevm)));
	assert_true(kv_tls_looks_like_record(alert, sizeof(alert)));
	assert_false(kv_tls_looks_like_record(qevm, sizeof(qevm)));
	/* Whatever this machine has, the answer says what (and why not). */
	(void)kv_tls_ktls_available(why, sizeof(why));
	assert_true(why[0] != '\0');
}

/* ---- the non-blocking session (kv_tls_nb, the QMP monitor's) ---- */

/* Drive a server session in this thread: poll, advance, until done. */
static int nb_serve_handshake(struct kv_tls_nb *s, int fd,
			      struct kv_error *err)
{
	int64_t end = kv_now_ns() + 5 * SEC;
	int r;

	while ((r = kv_tls_nb_handshake(s, err)) == 0) {
		struct pollfd p = {fd, kv_tls_nb_events(s), 0};

		if (kv_now_ns() > end)
			return -ETIMEDOUT;
		poll(&p, 1, 50);
	}
	return r;
}

static void test_nb_session(void **state)
{
	struct dirs *d = *state;
	struct kv_error err = {0};
	struct kv_tls_creds *cc, *sc;
	struct side cl = {0};
	struct kv_tls_params sp = {0};
	struct kv_tls_nb *s;
	char buf[64] = "";
	ssize_t n = -EAGAIN;
	int sv[2], r;

	cc = kv_tls_creds_psk("c", d->good, KV_TLS_CLIENT, NULL, &err);
	sc = kv_tls_creds_psk("s", d->good, KV_TLS_SERVER, NULL, &err);
	assert_non_null(cc);
	assert_non_null(sc);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
	cl.inner = kv_chan_from_fd(sv[0], "pair:client", &err);
	assert_non_null(cl.inner);
	cl.p.creds = cc;
	cl.p.deadline_ns = kv_now_ns() + 5 * SEC;
	sp.creds = sc;
	sp.deadline_ns = kv_now_ns() + 5 * SEC;
	sp.peer_role = "the QMP client";
	s = kv_tls_nb_new(sv[1], "pair:server", &sp, &err);
	assert_non_null(s);
	assert_true(kv_tls_nb_peer_silent(s));
	assert_int_equal(pthread_create(&cl.th, NULL, wrap_main, &cl), 0);
	r = nb_serve_handshake(s, sv[1], &err);
	pthread_join(cl.th, NULL);
	assert_int_equal(r, 1);
	assert_non_null(cl.out);
	assert_false(kv_tls_nb_peer_plaintext(s));

	/* Both ways: what one side sends the other reads as sent. */
	{
		struct iovec v = {(void *)"ping", 4};

		assert_int_equal(kv_chan_writev_full(cl.out, &v, 1, &err), 0);
	}
	for (int i = 0; i < 100 && n == -EAGAIN; i++) {
		struct pollfd p = {sv[1], POLLIN, 0};

		poll(&p, 1, 50);
		n = kv_tls_nb_recv(s, buf, sizeof(buf));
	}
	assert_int_equal(n, 4);
	assert_memory_equal(buf, "ping", 4);
	assert_int_equal(kv_tls_nb_send(s, "pong", 4), 4);
	assert_int_equal(kv_tls_nb_flush(s), 0);
	assert_int_equal(kv_chan_read_full(cl.out, buf, 4, &err), 0);
	assert_memory_equal(buf, "pong", 4);
	kv_chan_close(cl.out);
	n = -EAGAIN;
	for (int i = 0; i < 100 && n == -EAGAIN; i++) {
		struct pollfd p = {sv[1], POLLIN, 0};

		poll(&p, 1, 50);
		n = kv_tls_nb_recv(s, buf, sizeof(buf));
	}
	assert_int_equal(n, 0); /* the end, as on a plain socket */
	kv_tls_nb_free(s);
	close(sv[1]);
	kv_tls_creds_free(cc);
	kv_tls_creds_free(sc);
}

/* A plaintext first byte ends the handshake at once, naming it; a peer
 * that says nothing reaches the deadline ("stalled"). */
static void test_nb_refusals(void **state)
{
	struct dirs *d = *state;
	struct kv_error err = {0};
	struct kv_tls_params sp = {0};
	struct kv_tls_creds *sc;
	struct kv_tls_nb *s;
	int sv[2];

	sc = kv_tls_creds_psk("s", d->good, KV_TLS_SERVER, NULL, &err);
	assert_non_null(sc);
	sp.creds = sc;
	sp.peer_role = "the QMP client";

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
	sp.deadline_ns = kv_now_ns() + 5 * SEC;
	s = kv_tls_nb_new(sv[1], "pair:server", &sp, &err);
	assert_non_null(s);
	assert_int_equal(write(sv[0], "{\"execute\"", 11), 11);
	assert_int_equal(nb_serve_handshake(s, sv[1], &err), -EACCES);
	assert_true(kv_tls_nb_peer_plaintext(s));
	assert_non_null(strstr(err.msg, "the QMP client sent plaintext, not a TLS handshake"));
	kv_tls_nb_free(s);
	close(sv[0]);
	close(sv[1]);

	kv_error_clear(&err);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
	sp.deadline_ns = kv_now_ns() + SEC / 5;
	s = kv_tls_nb_new(sv[1], "pair:server", &sp, &err);
	assert_non_null(s);
	assert_int_equal(nb_serve_handshake(s, sv[1], &err), -ETIMEDOUT);
	assert_true(kv_tls_nb_peer_silent(s));
	assert_non_null(strstr(err.msg, "did not complete the TLS handshake in time (stalled)"));
	kv_tls_nb_free(s);
	close(sv[0]);
	close(sv[1]);

	/* Client credentials cannot serve. */
	kv_error_clear(&err);
	kv_tls_creds_free(sc);
	sc = kv_tls_creds_psk("c", d->good, KV_TLS_CLIENT, NULL, &err);
	assert_non_null(sc);
	assert_int_equal(kv_tls_server_check(sc, NULL, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "has endpoint=client"));
	kv_tls_creds_free(sc);
}


int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_psk_transfer_full_duplex),
	    cmocka_unit_test(test_records_are_full),
	    cmocka_unit_test(test_silence_through_tls),
	    cmocka_unit_test(test_nb_session),
	    cmocka_unit_test(test_nb_refusals),
	    cmocka_unit_test(test_pending_and_shutdown),
	    cmocka_unit_test(test_handshake_deadline),
	    cmocka_unit_test(test_psk_refusals),
	    cmocka_unit_test(test_psk_client_needs_its_key),
	    cmocka_unit_test(test_authz_lists),
	    cmocka_unit_test(test_objects),
	    cmocka_unit_test(test_looks_like),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
