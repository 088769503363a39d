/* SPDX-License-Identifier: MIT */
/*
 * The TLS channel and its credentials (tls.h), over GnuTLS.
 *
 * GnuTLS reads and writes through the inner channel's ops (pull/push), so
 * cancellation (kv_chan_shutdown) and every transport work unchanged. A
 * handshake's reads wait no later than its deadline. What failed is kept
 * in the channel (why) by the check that failed, so the error names it
 * rather than GnuTLS's generic "handshake failed".
 */
#define _GNU_SOURCE
#include "io/tls.h"

#include <errno.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <gnutls/socket.h>
#include <gnutls/x509.h>
#include <limits.h>
#include <poll.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/log.h"

/* QEMU's PSK user when none is given. */
#define PSK_DEFAULT_USER "qemu"
/* Records collected before they go to the inner channel in one write. */
#define TX_BATCH (256 * 1024)
/* Ciphertext one read of the inner channel takes at most, after the
 * handshake: GnuTLS asks for a record's 5-byte header, then its body,
 * two reads per 16 KiB record; served from here, one read of the socket
 * covers many records. */
#define RX_AHEAD (128 * 1024)
/* TLS's largest record plaintext. */
#define RECORD_MAX 16384
/* The most ciphertext GnuTLS holds of a record it has not decrypted
 * yet: TLS 1.3's largest record with its header. */
#define RECORD_HELD_MAX (RECORD_MAX + 256 + 5)
/* Plaintext one writev call encrypts at most (then it returns). */
#define TX_PER_CALL (1024 * 1024)
/*
 * GnuTLS's NORMAL with AES-128-GCM preferred: "+" appends, so the others
 * go last. With AES-NI AES-128-GCM is the fastest AEAD; NORMAL would
 * pick AES-256-GCM for certificates, and for a PSK (whose hash is SHA-256
 * in TLS 1.3) CHACHA20-POLY1305, several times slower here.
 */
#define PRIORITY_X509                                                         \
	"NORMAL:-AES-256-GCM:-CHACHA20-POLY1305:+AES-256-GCM:+CHACHA20-POLY1305"
#define PRIORITY_PSK PRIORITY_X509 ":+ECDHE-PSK:+DHE-PSK:+PSK"
/* How long a refusing server reads on before it closes (linger()). */
#define LINGER_NS (300 * 1000000LL)
/* TLS's handshake record type: a ClientHello starts with it. */
#define TLS_HANDSHAKE_BYTE 0x16

enum creds_kind { CREDS_X509, CREDS_PSK };

struct kv_tls_creds {
	char id[64];
	char dir[PATH_MAX];
	enum creds_kind kind;
	enum kv_tls_endpoint endpoint;
	bool verify_peer;
	char username[128];
	gnutls_certificate_credentials_t x509;
	gnutls_psk_client_credentials_t psk_client;
	gnutls_psk_server_credentials_t psk_server;
};

struct tls_chan {
	struct kv_chan pub;
	struct kv_chan *inner;
	gnutls_session_t session;
	const struct kv_tls_params *p; /* during the handshake only */
	int64_t deadline_ns;	       /* pull's limit; -1: none */
	bool handshaken;
	bool saw_first_byte;
	uint8_t first_byte;
	/* The inner channel's last -errno, one per direction (the reader
	 * and the writer are different threads). */
	ssize_t rx_err, tx_err;
	char why[384];	/* the check that failed, for the message */
	int alert;	/* what to tell the peer about it; 0: GnuTLS picks */
	int refused;	/* atomic: -EACCES once the peer sent a fatal alert */
	char peer[300];
	pthread_mutex_t tx_lock; /* reader and writer may both push */
	uint8_t *tx;
	size_t tx_used;
	/* A record's plaintext gathered from small iovec entries (the
	 * writing thread's only; empty between writev calls). */
	uint8_t *pt;
	size_t rec_max; /* plaintext in one record: the session's limit */
	/* Read ahead (the reading thread's only): rx[rx_head, rx_len). */
	uint8_t *rx;
	size_t rx_head, rx_len;
	bool rx_only; /* pull takes only from rx (read_records) */
};

static struct tls_chan *to_tls(struct kv_chan *c)
{
	return (struct tls_chan *)c;
}

static const struct tls_chan *to_tls_const(const struct kv_chan *c)
{
	return (const struct tls_chan *)c;
}

static void set_why(struct tls_chan *t, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void set_why(struct tls_chan *t, const char *fmt, ...)
{
	va_list ap;

	if (t->why[0])
		return;
	va_start(ap, fmt);
	vsnprintf(t->why, sizeof(t->why), fmt, ap);
	va_end(ap);
}

/* ---- credentials ---- */

static struct kv_tls_creds *creds_alloc(const char *id, const char *dir,
					enum creds_kind kind,
					enum kv_tls_endpoint endpoint,
					struct kv_error *err)
{
	struct kv_tls_creds *c = calloc(1, sizeof(*c));

	if (!c) {
		kv_error_set(err, -ENOMEM, "tls-creds '%s': out of memory", id);
		return NULL;
	}
	snprintf(c->id, sizeof(c->id), "%s", id);
	snprintf(c->dir, sizeof(c->dir), "%s", dir ? dir : "");
	c->kind = kind;
	c->endpoint = endpoint;
	return c;
}

static bool file_exists(const char *path)
{
	return access(path, R_OK) == 0;
}

static int load_trust(struct kv_tls_creds *c, struct kv_error *err)
{
	char path[PATH_MAX + 32];
	int r;

	snprintf(path, sizeof(path), "%s/ca-cert.pem", c->dir);
	r = gnutls_certificate_set_x509_trust_file(c->x509, path,
						   GNUTLS_X509_FMT_PEM);
	if (r < 0)
		return kv_error_set(err, -EINVAL, "tls-creds-x509 '%s': cannot load the CA certificate %s: %s", c->id, path, gnutls_strerror(r));
	if (r == 0)
		return kv_error_set(err, -EINVAL, "tls-creds-x509 '%s': %s holds no certificate", c->id, path);
	return 0;
}

static int load_key_pair(struct kv_tls_creds *c, const char *who,
			 bool required, struct kv_error *err)
{
	char cert[PATH_MAX + 32], key[PATH_MAX + 32];
	int r;

	snprintf(cert, sizeof(cert), "%s/%s-cert.pem", c->dir, who);
	snprintf(key, sizeof(key), "%s/%s-key.pem", c->dir, who);
	if (!required && !file_exists(cert))
		return 0;
	r = gnutls_certificate_set_x509_key_file(c->x509, cert, key,
						 GNUTLS_X509_FMT_PEM);
	if (r < 0)
		return kv_error_set(err, -EINVAL, "tls-creds-x509 '%s': cannot load %s with its key %s: %s", c->id, cert, key, gnutls_strerror(r));
	return 0;
}

static int verify_peer_cert(gnutls_session_t session);

struct kv_tls_creds *kv_tls_creds_x509(const char *id, const char *dir,
				       enum kv_tls_endpoint endpoint,
				       bool verify_peer, struct kv_error *err)
{
	struct kv_tls_creds *c =
	    creds_alloc(id, dir, CREDS_X509, endpoint, err);
	int r;

	if (!c)
		return NULL;
	c->verify_peer = verify_peer;
	r = gnutls_certificate_allocate_credentials(&c->x509);
	if (r < 0) {
		kv_error_set(err, -ENOMEM, "tls-creds-x509 '%s': %s", id, gnutls_strerror(r));
		free(c);
		return NULL;
	}
	if (load_trust(c, err) < 0 ||
	    load_key_pair(c, endpoint == KV_TLS_SERVER ? "server" : "client",
			  endpoint == KV_TLS_SERVER, err) < 0) {
		kv_tls_creds_free(c);
		return NULL;
	}
	gnutls_certificate_set_verify_function(c->x509, verify_peer_cert);
	return c;
}

/* The hex key of user in DIR/keys.psk; -ENOENT when the file has none. */
static int psk_lookup(const struct kv_tls_creds *c, const char *user,
		      gnutls_datum_t *key, struct kv_error *err)
{
	char path[PATH_MAX + 32], line[1024];
	size_t ulen = strlen(user);
	int ret = -ENOENT;
	FILE *f;

	snprintf(path, sizeof(path), "%s/keys.psk", c->dir);
	f = fopen(path, "re");
	if (!f)
		return kv_error_set_errno(err, -errno, "tls-creds-psk '%s': cannot read %s", c->id, path);
	while (ret == -ENOENT && fgets(line, sizeof(line), f)) {
		gnutls_datum_t hex;
		size_t size;

		if (strncmp(line, user, ulen) || line[ulen] != ':')
			continue;
		hex.data = (unsigned char *)line + ulen + 1;
		hex.size = (unsigned)strcspn((char *)hex.data, "\r\n");
		size = hex.size / 2;
		key->data = gnutls_malloc(size ? size : 1);
		key->size = (unsigned)size;
		if (!key->data || gnutls_hex_decode(&hex, key->data, &size) < 0) {
			gnutls_free(key->data);
			key->data = NULL;
			ret = kv_error_set(err, -EINVAL, "tls-creds-psk '%s': the key of user '%s' in %s is not hex", c->id, user, path);
		} else {
			key->size = (unsigned)size;
			ret = 0;
		}
	}
	fclose(f);
	if (ret == -ENOENT)
		kv_error_set(err, -ENOENT, "PSK user '%s' is not in %s", user, path);
	return ret;
}

static int psk_server_key(gnutls_session_t session, const char *user,
			  gnutls_datum_t *key);

struct kv_tls_creds *kv_tls_creds_psk(const char *id, const char *dir,
				      enum kv_tls_endpoint endpoint,
				      const char *username,
				      struct kv_error *err)
{
	struct kv_tls_creds *c = creds_alloc(id, dir, CREDS_PSK, endpoint, err);
	gnutls_datum_t key = {0};
	int r;

	if (!c)
		return NULL;
	snprintf(c->username, sizeof(c->username), "%s",
		 username && *username ? username : PSK_DEFAULT_USER);
	if (endpoint == KV_TLS_SERVER) {
		char path[PATH_MAX + 32];

		snprintf(path, sizeof(path), "%s/keys.psk", c->dir);
		if (!file_exists(path)) {
			kv_error_set_errno(err, -errno, "tls-creds-psk '%s': cannot read %s", id, path);
			free(c);
			return NULL;
		}
		r = gnutls_psk_allocate_server_credentials(&c->psk_server);
		if (r == 0) {
			gnutls_psk_set_server_credentials_function(
			    c->psk_server, psk_server_key);
			gnutls_psk_set_server_known_dh_params(
			    c->psk_server, GNUTLS_SEC_PARAM_MEDIUM);
		}
	} else {
		if (psk_lookup(c, c->username, &key, err) < 0) {
			kv_error_prefix(err, "tls-creds-psk '%s'", id);
			free(c);
			return NULL;
		}
		r = gnutls_psk_allocate_client_credentials(&c->psk_client);
		if (r == 0)
			r = gnutls_psk_set_client_credentials(
			    c->psk_client, c->username, &key,
			    GNUTLS_PSK_KEY_RAW);
		gnutls_free(key.data);
	}
	if (r < 0) {
		kv_error_set(err, -EINVAL, "tls-creds-psk '%s': %s", id, gnutls_strerror(r));
		kv_tls_creds_free(c);
		return NULL;
	}
	return c;
}

void kv_tls_creds_free(struct kv_tls_creds *c)
{
	if (!c)
		return;
	if (c->x509)
		gnutls_certificate_free_credentials(c->x509);
	if (c->psk_client)
		gnutls_psk_free_client_credentials(c->psk_client);
	if (c->psk_server)
		gnutls_psk_free_server_credentials(c->psk_server);
	free(c);
}

const char *kv_tls_creds_id(const struct kv_tls_creds *c)
{
	return c->id;
}

enum kv_tls_endpoint kv_tls_creds_endpoint(const struct kv_tls_creds *c)
{
	return c->endpoint;
}

/* ---- checks during the handshake ---- */

static const char *role_of_peer(const struct tls_chan *t)
{
	if (t->p->peer_role)
		return t->p->peer_role;
	return t->p->creds->endpoint == KV_TLS_CLIENT ? "the destination"
						      : "the source";
}

static int authorize(struct tls_chan *t, const char *identity)
{
	const struct kv_authz *a = t->p->authz;

	if (!a || kv_authz_allows(a, identity))
		return 0;
	set_why(t, "%s '%s' is refused by tls-authz '%s'", role_of_peer(t), identity, kv_authz_id(a));
	t->alert = GNUTLS_A_ACCESS_DENIED;
	return -1;
}

/* What a failed verification status means, first the likeliest cause. */
static void explain_status(struct tls_chan *t, unsigned status)
{
	const char *who = role_of_peer(t);
	const char *dir = t->p->creds->dir;
	gnutls_datum_t all = {0};

	t->alert = status & GNUTLS_CERT_EXPIRED ? GNUTLS_A_CERTIFICATE_EXPIRED
		   : status & GNUTLS_CERT_SIGNER_NOT_FOUND ? GNUTLS_A_UNKNOWN_CA
							   : GNUTLS_A_BAD_CERTIFICATE;
	if (status & GNUTLS_CERT_EXPIRED)
		set_why(t, "%s's certificate has expired", who);
	else if (status & GNUTLS_CERT_NOT_ACTIVATED)
		set_why(t, "%s's certificate is not yet valid (its activation time is in the future)", who);
	else if (status & GNUTLS_CERT_SIGNER_NOT_FOUND)
		set_why(t, "%s's certificate is not signed by the CA in %s/ca-cert.pem (wrong CA)", who, dir);
	else if (status & GNUTLS_CERT_UNEXPECTED_OWNER)
		set_why(t, "%s's certificate is not for host '%s' (tls-hostname, or the URI's host)", who, t->p->hostname);
	if (t->why[0])
		return;
	gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509,
						      &all, 0);
	set_why(t, "%s's certificate failed verification: %s", who, all.data ? (char *)all.data : "?");
	gnutls_free(all.data);
}

static int peer_dn(gnutls_session_t session, char *dn, size_t size)
{
	const gnutls_datum_t *list;
	unsigned n = 0;
	gnutls_x509_crt_t crt;
	int r;

	list = gnutls_certificate_get_peers(session, &n);
	if (!list || !n)
		return -ENOENT;
	if (gnutls_x509_crt_init(&crt) < 0)
		return -ENOMEM;
	r = gnutls_x509_crt_import(crt, &list[0], GNUTLS_X509_FMT_DER);
	if (r == 0)
		r = gnutls_x509_crt_get_dn(crt, dn, &size);
	gnutls_x509_crt_deinit(crt);
	return r < 0 ? -EINVAL : 0;
}

/* GnuTLS calls this once the peer's certificate arrived (both sides). */
static int verify_peer_cert(gnutls_session_t session)
{
	struct tls_chan *t = gnutls_session_get_ptr(session);
	const struct kv_tls_creds *c = t->p->creds;
	const char *host = t->p->hostname;
	unsigned status = 0;
	char dn[512];
	int r;

	if (!c->verify_peer)
		return 0;
	if (c->endpoint == KV_TLS_SERVER || !host || !*host)
		host = NULL;
	r = gnutls_certificate_verify_peers3(session, host, &status);
	if (r < 0) {
		set_why(t, "%s's certificate could not be verified: %s", role_of_peer(t), gnutls_strerror(r));
		return GNUTLS_E_CERTIFICATE_ERROR;
	}
	if (status) {
		explain_status(t, status);
		return GNUTLS_E_CERTIFICATE_ERROR;
	}
	if (c->endpoint != KV_TLS_SERVER)
		return 0;
	if (peer_dn(session, dn, sizeof(dn)) < 0) {
		set_why(t, "cannot read the distinguished name of %s's certificate", role_of_peer(t));
		return GNUTLS_E_CERTIFICATE_ERROR;
	}
	return authorize(t, dn) < 0 ? GNUTLS_E_CERTIFICATE_ERROR : 0;
}

static int psk_server_key(gnutls_session_t session, const char *user,
			  gnutls_datum_t *key)
{
	struct tls_chan *t = gnutls_session_get_ptr(session);
	struct kv_error e = {0};

	if (psk_lookup(t->p->creds, user, key, &e) < 0) {
		set_why(t, "%s's %s (unknown PSK user)", role_of_peer(t), e.msg);
		t->alert = GNUTLS_A_UNKNOWN_PSK_IDENTITY;
		return -1;
	}
	if (authorize(t, user) < 0) {
		gnutls_free(key->data);
		key->data = NULL;
		return -1;
	}
	return 0;
}

/* ---- transport: GnuTLS over the inner channel ---- */

static int flush(struct tls_chan *t);

/* After the handshake: GnuTLS's reads served from one large read. */
static ssize_t pull_ahead(struct tls_chan *t, void *buf, size_t len)
{
	size_t avail = t->rx_len - t->rx_head;

	if (!avail && t->rx_only) {
		gnutls_transport_set_errno(t->session, EAGAIN);
		return -1;
	}
	if (!avail) {
		ssize_t n = t->inner->ops->read(t->inner, t->rx, RX_AHEAD);

		if (n < 0) {
			t->rx_err = n;
			gnutls_transport_set_errno(t->session,
						   n == -EAGAIN ? EIO : (int)-n);
			return -1;
		}
		t->rx_head = 0;
		t->rx_len = (size_t)n;
		avail = (size_t)n;
		if (!n)
			return 0;
	}
	if (len > avail)
		len = avail;
	memcpy(buf, t->rx + t->rx_head, len);
	t->rx_head += len;
	return (ssize_t)len;
}

static ssize_t pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
	struct tls_chan *t = ptr;
	ssize_t n;

	if (t->rx)
		return pull_ahead(t, buf, len);

	/* In the handshake, whatever we said must be out before we wait
	 * for an answer. After it the reader never writes: a reader blocked
	 * on a full socket while the peer's reader is too would hang both
	 * (what GnuTLS says while reading waits for the writer's flush). */
	if (!t->handshaken && flush(t) < 0) {
		gnutls_transport_set_errno(t->session, (int)-t->tx_err);
		return -1;
	}
	if (t->deadline_ns >= 0) {
		int r = kv_chan_wait_readable(t->inner, t->deadline_ns);

		if (r == 0) {
			t->rx_err = -ETIMEDOUT;
			gnutls_transport_set_errno(t->session, ETIMEDOUT);
			return -1;
		}
	}
	n = t->inner->ops->read(t->inner, buf, len);
	if (n < 0) {
		t->rx_err = n;
		gnutls_transport_set_errno(t->session,
					   n == -EAGAIN ? EIO : (int)-n);
		return -1;
	}
	if (n > 0 && !t->saw_first_byte) {
		t->saw_first_byte = true;
		t->first_byte = *(uint8_t *)buf;
	}
	return n;
}

static int write_inner(struct tls_chan *t, struct iovec *iov, int n)
{
	struct kv_error e = {0};
	int r = kv_chan_writev_full(t->inner, iov, n, &e);

	t->pub.write_wait_ns = t->inner->write_wait_ns;
	if (r < 0)
		t->tx_err = r;
	return r;
}

/* Called with tx_lock held. */
static int flush_locked(struct tls_chan *t)
{
	struct iovec v = {t->tx, t->tx_used};
	int r = t->tx_used ? write_inner(t, &v, 1) : 0;

	t->tx_used = 0;
	return r;
}

static int flush(struct tls_chan *t)
{
	int r;

	pthread_mutex_lock(&t->tx_lock);
	r = flush_locked(t);
	pthread_mutex_unlock(&t->tx_lock);
	return r;
}

/* Records collect in tx; whatever does not fit goes out as it is. */
static ssize_t vec_push(gnutls_transport_ptr_t ptr, const giovec_t *iov,
			int iovcnt)
{
	struct tls_chan *t = ptr;
	size_t total = 0;
	int r = 0;

	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	pthread_mutex_lock(&t->tx_lock);
	if (t->tx_used + total > TX_BATCH)
		r = flush_locked(t);
	if (r == 0 && total > TX_BATCH) {
		struct iovec v[16];
		int n = iovcnt < 16 ? iovcnt : 16;

		total = 0;
		for (int i = 0; i < n; i++) {
			v[i].iov_base = iov[i].iov_base;
			v[i].iov_len = iov[i].iov_len;
			total += iov[i].iov_len;
		}
		r = write_inner(t, v, n);
	} else if (r == 0) {
		for (int i = 0; i < iovcnt; i++) {
			memcpy(t->tx + t->tx_used, iov[i].iov_base,
			       iov[i].iov_len);
			t->tx_used += iov[i].iov_len;
		}
	}
	pthread_mutex_unlock(&t->tx_lock);
	if (r < 0) {
		gnutls_transport_set_errno(t->session, -r);
		return -1;
	}
	return (ssize_t)total;
}

/* ---- the channel ops ---- */

/* A GnuTLS error after the handshake as the -errno callers know. */
static ssize_t record_errno(struct tls_chan *t, ssize_t r)
{
	int refused;

	if (r == GNUTLS_E_FATAL_ALERT_RECEIVED)
		__atomic_store_n(&t->refused, -EACCES, __ATOMIC_RELEASE);
	/* The peer's refusal, whichever thread heard it: after it the
	 * session is dead, and the writer's error says the same. */
	refused = __atomic_load_n(&t->refused, __ATOMIC_ACQUIRE);
	if (refused)
		return refused;
	if (r == GNUTLS_E_PULL_ERROR)
		return t->rx_err ? t->rx_err : -EIO;
	if (r == GNUTLS_E_PUSH_ERROR)
		return t->tx_err ? t->tx_err : -EIO;
	return -EPROTO;
}

/* Decrypted bytes into buf: >0, 0 at the end, -errno. Without may_block
 * only from what is here already (GnuTLS's and the read-ahead buffer):
 * -EAGAIN when that holds no whole record, and GnuTLS keeps the part it
 * took for the next call. */
static ssize_t read_records(struct tls_chan *t, void *buf, size_t len,
			    bool may_block)
{
	for (;;) {
		ssize_t r;

		if (__atomic_load_n(&t->pub.shutdown_req, __ATOMIC_ACQUIRE))
			return -ECANCELED;
		/* No read-ahead buffer: GnuTLS would read the socket. */
		if (!may_block && !t->rx &&
		    !gnutls_record_check_pending(t->session))
			return -EAGAIN;
		t->rx_only = !may_block;
		r = gnutls_record_recv(t->session, buf, len);
		t->rx_only = false;
		if (r >= 0)
			return r;
		if (r == GNUTLS_E_AGAIN && !may_block)
			return -EAGAIN;
		if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED ||
		    r == GNUTLS_E_REHANDSHAKE)
			continue;
		/* A peer that closed without close_notify: the end, as
		 * on a plain socket. */
		if (r == GNUTLS_E_PREMATURE_TERMINATION)
			return 0;
		return record_errno(t, r);
	}
}

/*
 * One read takes every whole record that is here already, not only the
 * first: the read-ahead buffer holds up to 8 of them, and a caller that
 * asked for 256 KiB (the stream's buffer, a multifd payload) would
 * otherwise come back once per 16 KiB, each time setting the socket's
 * low-water mark again. It waits only for the first.
 */
static ssize_t tls_readv(struct kv_chan *c, const struct iovec *iov,
			 int iovcnt)
{
	struct tls_chan *t = to_tls(c);
	ssize_t total = 0;

	for (int i = 0; i < iovcnt; i++) {
		size_t got = 0;

		while (got < iov[i].iov_len) {
			ssize_t n = read_records(t, (uint8_t *)iov[i].iov_base + got,
						 iov[i].iov_len - got, total == 0);

			if (n <= 0)
				return total ? total : n;
			got += (size_t)n;
			total += n;
		}
	}
	return total;
}

static ssize_t tls_read(struct kv_chan *c, void *buf, size_t len)
{
	struct iovec v = {buf, len};

	return tls_readv(c, &v, 1);
}

/* All len bytes, in as many records as the session's limit needs: 0,
 * or GnuTLS's error (GNUTLS_E_PUSH_ERROR after a shutdown). */
static ssize_t send_records(struct tls_chan *t, const uint8_t *buf,
			    size_t len)
{
	while (len) {
		ssize_t n;

		if (__atomic_load_n(&t->pub.shutdown_req, __ATOMIC_ACQUIRE))
			return GNUTLS_E_PUSH_ERROR;
		n = gnutls_record_send(t->session, buf, len);
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n < 0)
			return n;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/*
 * A record costs GnuTLS about as much as encrypting a few KiB (its
 * buffer, nonce, tag, header, a push), so records are cut only where
 * they are full or where the call ends, never at an iovec entry: the
 * RAM stream's 8-byte headers and 4 KiB pages, and a multifd packet's
 * pages, gather in pt into full records. An entry that starts a record
 * and fills one goes to GnuTLS as it is, without the copy.
 */
static ssize_t tls_writev(struct kv_chan *c, const struct iovec *iov,
			  int iovcnt)
{
	struct tls_chan *t = to_tls(c);
	size_t sent = 0, staged = 0;
	ssize_t e = 0;
	int r;

	for (int i = 0; i < iovcnt && e == 0; i++) {
		const uint8_t *p = iov[i].iov_base;
		size_t left = iov[i].iov_len;

		while (left && e == 0 && sent + staged < TX_PER_CALL) {
			size_t take = t->rec_max - staged;

			if (take > left)
				take = left;
			if (take > TX_PER_CALL - sent - staged)
				take = TX_PER_CALL - sent - staged;
			if (!staged && take == t->rec_max) {
				e = send_records(t, p, take);
				sent += e == 0 ? take : 0;
			} else {
				memcpy(t->pt + staged, p, take);
				staged += take;
				if (staged == t->rec_max) {
					e = send_records(t, t->pt, staged);
					sent += e == 0 ? staged : 0;
					staged = 0;
				}
			}
			p += take;
			left -= take;
		}
	}
	if (e == 0 && staged) {
		e = send_records(t, t->pt, staged);
		sent += e == 0 ? staged : 0;
	}
	r = flush(t);
	if (e < 0 && __atomic_load_n(&c->shutdown_req, __ATOMIC_ACQUIRE))
		return sent ? (ssize_t)sent : -ECANCELED;
	if (e < 0)
		return sent ? (ssize_t)sent : record_errno(t, e);
	if (r < 0)
		return r;
	return (ssize_t)sent;
}

static void tls_shutdown(struct kv_chan *c)
{
	__atomic_store_n(&c->shutdown_req, 1, __ATOMIC_RELEASE);
	kv_chan_shutdown(to_tls(c)->inner);
}

static void tls_close(struct kv_chan *c)
{
	struct tls_chan *t = to_tls(c);

	if (t->session)
		gnutls_deinit(t->session);
	kv_chan_close(t->inner);
	pthread_mutex_destroy(&t->tx_lock);
	free(t->tx);
	free(t->pt);
	free(t->rx);
	free(t);
}

static int tls_wait_readable(struct kv_chan *c, int64_t deadline_ns)
{
	struct tls_chan *t = to_tls(c);

	if (__atomic_load_n(&c->shutdown_req, __ATOMIC_ACQUIRE))
		return -ECANCELED;
	if (gnutls_record_check_pending(t->session) || t->rx_head < t->rx_len)
		return 1;
	return kv_chan_wait_readable(t->inner, deadline_ns);
}

/*
 * The caller counts plaintext; the socket, ciphertext. What the socket
 * will still get for `bytes` of plaintext may be less than `bytes`:
 * GnuTLS may already hold most of a record (read ahead stops at a
 * record's end only by chance). A mark of `bytes` could then wait for
 * bytes the peer never sends (at the end of a payload before a SYNC), so
 * the inner channel is asked for a record's worth less.
 */
static int tls_set_recv_lowat(struct kv_chan *c, size_t bytes)
{
	return kv_chan_set_recv_lowat(to_tls(c)->inner,
				      bytes > RECORD_HELD_MAX ? bytes - RECORD_HELD_MAX
							     : 1);
}

static int tls_set_nodelay(struct kv_chan *c, bool on)
{
	return kv_chan_set_nodelay(to_tls(c)->inner, on);
}

static int64_t tls_unsent(const struct kv_chan *c)
{
	return kv_chan_unsent(to_tls_const(c)->inner);
}

static int tls_tcp_limits(const struct kv_chan *c, struct kv_tcp_limits *out)
{
	return kv_chan_tcp_limits(to_tls_const(c)->inner, out);
}

/* The limit and the record go to the socket beneath, whose waits are the
 * ones that time out (and, on TCP, its TCP_USER_TIMEOUT). */
static int tls_set_silence(struct kv_chan *c, uint64_t limit_ms,
			   struct kv_chan_activity *shared)
{
	if (!shared)
		shared = __atomic_load_n(&c->activity, __ATOMIC_ACQUIRE);
	return kv_chan_set_silence(to_tls(c)->inner, limit_ms, shared);
}

static int tls_peer_name(const struct kv_chan *c, char *buf, size_t size)
{
	kv_chan_peer_name(to_tls_const(c)->inner, buf, size);
	return 0;
}

static const struct kv_chan_ops tls_ops = {
    .read = tls_read,
    .readv = tls_readv,
    .writev = tls_writev,
    .shutdown = tls_shutdown,
    .close = tls_close,
    .wait_readable = tls_wait_readable,
    .set_recv_lowat = tls_set_recv_lowat,
    .set_nodelay = tls_set_nodelay,
    .unsent = tls_unsent,
    .tcp_limits = tls_tcp_limits,
    .peer_name = tls_peer_name,
    .set_silence = tls_set_silence,
};

/* ---- the handshake ---- */

int kv_tls_server_check(const struct kv_tls_creds *creds,
			const struct kv_authz *authz, struct kv_error *err)
{
	if (creds->endpoint != KV_TLS_SERVER)
		return kv_error_set(err, -EINVAL, "tls-creds '%s' has endpoint=client: a server needs endpoint=server", creds->id);
	if (authz && creds->kind == CREDS_X509 && !creds->verify_peer)
		return kv_error_set(err, -EINVAL, "tls-authz '%s' needs the peer's certificate: set verify-peer=on on tls-creds '%s'", kv_authz_id(authz), creds->id);
	return 0;
}

static int session_setup(struct tls_chan *t, struct kv_error *err)
{
	const struct kv_tls_creds *c = t->p->creds;
	bool server = c->endpoint == KV_TLS_SERVER;
	unsigned flags = (server ? GNUTLS_SERVER : GNUTLS_CLIENT) |
			 GNUTLS_NO_TICKETS;
	int r = gnutls_init(&t->session, flags);

	if (r == 0 && c->kind == CREDS_X509) {
		r = gnutls_priority_set_direct(t->session, PRIORITY_X509, NULL);
		if (r == 0)
			r = gnutls_credentials_set(t->session,
						   GNUTLS_CRD_CERTIFICATE,
						   c->x509);
		if (r == 0 && server && c->verify_peer)
			gnutls_certificate_server_set_request(
			    t->session, GNUTLS_CERT_REQUIRE);
	} else if (r == 0) {
		r = gnutls_priority_set_direct(t->session, PRIORITY_PSK, NULL);
		if (r == 0)
			r = gnutls_credentials_set(
			    t->session, GNUTLS_CRD_PSK,
			    server ? (void *)c->psk_server
				   : (void *)c->psk_client);
	}
	if (r < 0)
		return kv_error_set(err, -EINVAL, "TLS over %s: cannot set up a session with tls-creds '%s': %s", t->pub.name, c->id, gnutls_strerror(r));
	gnutls_session_set_ptr(t->session, t);
	gnutls_transport_set_ptr(t->session, t);
	gnutls_transport_set_pull_function(t->session, pull);
	gnutls_transport_set_vec_push_function(t->session, vec_push);
	return 0;
}

/* Why a handshake failed where no check of ours said already. */
static void explain_failure(struct tls_chan *t, int r)
{
	bool server = t->p->creds->endpoint == KV_TLS_SERVER;
	const char *who = role_of_peer(t);

	if (server && t->saw_first_byte && t->first_byte != TLS_HANDSHAKE_BYTE)
		set_why(t, "%s sent plaintext, not a TLS handshake (no tls-creds on its side?)", who);
	if (r == GNUTLS_E_PULL_ERROR && t->rx_err == -ETIMEDOUT)
		set_why(t, "%s did not complete the TLS handshake in time (stalled)", who);
	if (r == GNUTLS_E_PULL_ERROR && t->rx_err == -ECANCELED)
		set_why(t, "the TLS handshake was cancelled");
	if (r == GNUTLS_E_PREMATURE_TERMINATION || r == GNUTLS_E_PULL_ERROR ||
	    r == GNUTLS_E_PUSH_ERROR)
		set_why(t, "%s closed the connection during the TLS handshake (%s without TLS, or one that refused this side's credentials: see its log)", who, who);
	if (!server && (r == GNUTLS_E_UNEXPECTED_PACKET_LENGTH ||
			r == GNUTLS_E_UNSUPPORTED_VERSION_PACKET ||
			r == GNUTLS_E_UNEXPECTED_PACKET))
		set_why(t, "%s answered in plaintext, not TLS (no tls-creds on its side?)", who);
	if (r == GNUTLS_E_FATAL_ALERT_RECEIVED) {
		int a = gnutls_alert_get(t->session);

		if (a == GNUTLS_A_ACCESS_DENIED)
			set_why(t, "%s refused this side's identity (its tls-authz): alert '%s'", who, gnutls_alert_get_name(a));
		if (a == GNUTLS_A_UNKNOWN_CA || a == GNUTLS_A_BAD_CERTIFICATE ||
		    a == GNUTLS_A_CERTIFICATE_EXPIRED ||
		    a == GNUTLS_A_CERTIFICATE_UNKNOWN)
			set_why(t, "%s refused this side's certificate: alert '%s' (its log says which check failed)", who, gnutls_alert_get_name(a));
		if (a == GNUTLS_A_UNKNOWN_PSK_IDENTITY ||
		    (t->p->creds->kind == CREDS_PSK &&
		     (a == GNUTLS_A_DECRYPT_ERROR || a == GNUTLS_A_BAD_RECORD_MAC ||
		      a == GNUTLS_A_HANDSHAKE_FAILURE || a == GNUTLS_A_ILLEGAL_PARAMETER)))
			set_why(t, "%s refused this side's PSK (PSK mismatch or unknown user '%s'): alert '%s'", who, t->p->creds->username, gnutls_alert_get_name(a));
		else
			set_why(t, "%s refused the handshake: alert '%s' (its log says why)", who, gnutls_alert_get_name(a));
	}
	if (t->p->creds->kind == CREDS_PSK &&
	    (r == GNUTLS_E_DECRYPTION_FAILED || r == GNUTLS_E_KEY_USAGE_VIOLATION ||
	     r == GNUTLS_E_RECEIVED_ILLEGAL_PARAMETER ||
	     r == GNUTLS_E_ILLEGAL_PARAMETER))
		set_why(t, "%s's PSK differs from this side's (PSK mismatch)", who);
	if (r == GNUTLS_E_NO_CERTIFICATE_FOUND)
		set_why(t, "%s sent no certificate, and verify-peer is on", who);
	set_why(t, "the TLS handshake failed: %s", gnutls_strerror(r));
}

/*
 * A refusing server reads what the peer still sends for a moment before
 * the caller closes: closing with unread bytes resets the connection, and
 * the peer's writer would report the reset before its reader could read
 * the alert that says why.
 */
static void linger(struct tls_chan *t)
{
	int64_t end = kv_now_ns() + LINGER_NS;
	uint8_t sink[4096];

	if (t->deadline_ns >= 0 && t->deadline_ns < end)
		end = t->deadline_ns;
	while (kv_chan_wait_readable(t->inner, end) == 1 &&
	       t->inner->ops->read(t->inner, sink, sizeof(sink)) > 0)
		;
}

static int handshake(struct tls_chan *t)
{
	int r;

	do {
		r = gnutls_handshake(t->session);
	} while (r < 0 && !gnutls_error_is_fatal(r));
	if (r == 0)
		return flush(t) < 0 ? GNUTLS_E_PUSH_ERROR : 0;
	/* Tell the peer which check failed, so its message can say. */
	if (t->alert)
		gnutls_alert_send(t->session, GNUTLS_AL_FATAL,
				  (gnutls_alert_description_t)t->alert);
	else if (r != GNUTLS_E_PULL_ERROR && r != GNUTLS_E_PUSH_ERROR &&
		 r != GNUTLS_E_FATAL_ALERT_RECEIVED &&
		 r != GNUTLS_E_PREMATURE_TERMINATION)
		gnutls_alert_send_appropriate(t->session, r);
	if (flush(t) == 0 && t->p->creds->endpoint == KV_TLS_SERVER)
		linger(t);
	return r;
}

struct kv_chan *kv_tls_wrap(struct kv_chan *inner,
			    const struct kv_tls_params *p,
			    struct kv_error *err)
{
	struct tls_chan *t = calloc(1, sizeof(*t));
	int64_t t0;
	int r;

	if (t) {
		t->tx = malloc(TX_BATCH);
		t->pt = malloc(RECORD_MAX);
	}
	if (!t || !t->tx || !t->pt) {
		if (t) {
			free(t->tx);
			free(t->pt);
		}
		free(t);
		kv_error_set(err, -ENOMEM, "TLS: out of memory");
		return NULL;
	}
	pthread_mutex_init(&t->tx_lock, NULL);
	t->inner = inner;
	t->p = p;
	t->deadline_ns = p->deadline_ns;
	t->pub.ops = &tls_ops;
	t->pub.is_socket = inner->is_socket;
	t->pub.is_file = inner->is_file;
	snprintf(t->pub.name, sizeof(t->pub.name), "%s", inner->name);
	kv_chan_peer_name(inner, t->peer, sizeof(t->peer));
	if (p->creds->endpoint == KV_TLS_SERVER &&
	    kv_tls_server_check(p->creds, p->authz, err) < 0) {
		t->inner = NULL; /* the caller's again */
		tls_close(&t->pub);
		return NULL;
	}
	if (session_setup(t, err) < 0) {
		t->inner = NULL; /* the caller's again */
		tls_close(&t->pub);
		return NULL;
	}
	t0 = kv_now_ns();
	r = handshake(t);
	kv_switch_log("TLS handshake with %s: %s in %.3f ms", t->peer, r < 0 ? "failed" : "done", (double)(kv_now_ns() - t0) / 1e6);
	if (r < 0) {
		explain_failure(t, r);
		kv_error_set(err, r == GNUTLS_E_PULL_ERROR && t->rx_err == -ETIMEDOUT ? -ETIMEDOUT : -EACCES, "TLS with %s (%s) failed: %s", t->peer, kv_tls_creds_id(p->creds), t->why);
		t->inner = NULL; /* the caller's again */
		tls_close(&t->pub);
		return NULL;
	}
	t->p = NULL;
	t->deadline_ns = -1;
	t->handshaken = true;
	t->rec_max = gnutls_record_get_max_size(t->session);
	if (t->rec_max == 0 || t->rec_max > RECORD_MAX)
		t->rec_max = RECORD_MAX;
	t->rx = malloc(RX_AHEAD); /* NULL: GnuTLS reads the socket itself */
	return &t->pub;
}

int kv_tls_describe(const struct kv_chan *c, char *buf, size_t size)
{
	const struct tls_chan *t = to_tls_const(c);

	if (c->ops != &tls_ops)
		return -EINVAL;
	snprintf(buf, size, "%s %s",
		 gnutls_protocol_get_name(gnutls_protocol_get_version(t->session)),
		 gnutls_cipher_get_name(gnutls_cipher_get(t->session)));
	return 0;
}

bool kv_tls_looks_like_hello(const uint8_t *buf, size_t len)
{
	return len >= 3 && buf[0] == TLS_HANDSHAKE_BYTE && buf[1] == 3 &&
	       buf[2] <= 4;
}

bool kv_tls_looks_like_record(const uint8_t *buf, size_t len)
{
	/* change_cipher_spec, alert, handshake, application_data; 3.x */
	return len >= 2 && buf[0] >= 0x14 && buf[0] <= 0x17 && buf[1] == 3;
}

/* ---- a non-blocking session, for a poll() loop (kv_tls_nb_*) ---- */

/* Plaintext one send encrypts at most: what may wait in out. */
#define NB_PER_SEND (64 * 1024)
/* out's size: one send's records and their overhead, or a handshake's
 * flight (a certificate chain); grows if a flight is larger. */
#define NB_OUT_START (96 * 1024)

struct kv_tls_nb {
	struct tls_chan t; /* first: GnuTLS's callbacks take it */
	struct kv_tls_params params;
	int fd;
	bool done;
	int failed; /* -errno once the handshake failed */
	uint8_t *out;
	size_t out_head, out_len, out_cap;
};

static struct kv_tls_nb *to_nb(gnutls_transport_ptr_t ptr)
{
	return (struct kv_tls_nb *)ptr;
}

static ssize_t nb_pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
	struct kv_tls_nb *s = to_nb(ptr);
	struct tls_chan *t = &s->t;
	ssize_t n = recv(s->fd, buf, len, MSG_DONTWAIT);

	if (n < 0) {
		int e = errno == EWOULDBLOCK ? EAGAIN : errno;

		if (e != EAGAIN && e != EINTR)
			t->rx_err = -e;
		gnutls_transport_set_errno(t->session, e);
		return -1;
	}
	if (n > 0 && !t->saw_first_byte) {
		t->saw_first_byte = true;
		t->first_byte = *(uint8_t *)buf;
		/* A server need not wait for a plaintext peer's whole line
		 * to know it is not TLS. */
		if (s->params.creds->endpoint == KV_TLS_SERVER &&
		    t->first_byte != TLS_HANDSHAKE_BYTE) {
			t->rx_err = -EPROTO;
			gnutls_transport_set_errno(t->session, EPROTO);
			return -1;
		}
	}
	return n;
}

static int nb_reserve(struct kv_tls_nb *s, size_t more)
{
	size_t cap = s->out_cap;
	uint8_t *p;

	if (s->out_head && s->out_head == s->out_len)
		s->out_head = s->out_len = 0;
	if (s->out_len + more <= cap)
		return 0;
	while (cap < s->out_len + more)
		cap = cap ? cap * 2 : NB_OUT_START;
	p = realloc(s->out, cap);
	if (!p)
		return -ENOMEM;
	s->out = p;
	s->out_cap = cap;
	return 0;
}

/* Records collect in out; nb_flush sends them as the socket takes them. */
static ssize_t nb_push(gnutls_transport_ptr_t ptr, const giovec_t *iov,
		       int iovcnt)
{
	struct kv_tls_nb *s = to_nb(ptr);
	size_t total = 0;

	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	if (nb_reserve(s, total) < 0) {
		s->t.tx_err = -ENOMEM;
		gnutls_transport_set_errno(s->t.session, ENOMEM);
		return -1;
	}
	for (int i = 0; i < iovcnt; i++) {
		memcpy(s->out + s->out_len, iov[i].iov_base, iov[i].iov_len);
		s->out_len += iov[i].iov_len;
	}
	return (ssize_t)total;
}

int kv_tls_nb_flush(struct kv_tls_nb *s)
{
	while (s->out_head < s->out_len) {
		ssize_t n = send(s->fd, s->out + s->out_head,
				 s->out_len - s->out_head,
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno == EAGAIN || errno == EWOULDBLOCK ? -EAGAIN
								       : -errno;
		s->out_head += (size_t)n;
	}
	s->out_head = s->out_len = 0;
	return 0;
}

struct kv_tls_nb *kv_tls_nb_new(int fd, const char *name,
				const struct kv_tls_params *p,
				struct kv_error *err)
{
	struct kv_tls_nb *s = calloc(1, sizeof(*s));
	struct tls_chan *t;

	if (!s) {
		kv_error_set(err, -ENOMEM, "TLS: out of memory");
		return NULL;
	}
	s->params = *p;
	s->fd = fd;
	t = &s->t;
	pthread_mutex_init(&t->tx_lock, NULL);
	t->p = &s->params;
	t->deadline_ns = p->deadline_ns;
	snprintf(t->pub.name, sizeof(t->pub.name), "%s", name);
	snprintf(t->peer, sizeof(t->peer), "%s", name);
	if ((p->creds->endpoint == KV_TLS_SERVER &&
	     kv_tls_server_check(p->creds, p->authz, err) < 0) ||
	    session_setup(t, err) < 0) {
		kv_tls_nb_free(s);
		return NULL;
	}
	gnutls_transport_set_pull_function(t->session, nb_pull);
	gnutls_transport_set_vec_push_function(t->session, nb_push);
	return s;
}

void kv_tls_nb_free(struct kv_tls_nb *s)
{
	if (!s)
		return;
	if (s->t.session)
		gnutls_deinit(s->t.session);
	pthread_mutex_destroy(&s->t.tx_lock);
	free(s->out);
	free(s);
}

static int nb_fail(struct kv_tls_nb *s, int r, struct kv_error *err)
{
	struct tls_chan *t = &s->t;

	if (t->alert)
		gnutls_alert_send(t->session, GNUTLS_AL_FATAL,
				  (gnutls_alert_description_t)t->alert);
	else if (r != GNUTLS_E_PULL_ERROR && r != GNUTLS_E_PUSH_ERROR &&
		 r != GNUTLS_E_FATAL_ALERT_RECEIVED &&
		 r != GNUTLS_E_PREMATURE_TERMINATION)
		gnutls_alert_send_appropriate(t->session, r);
	kv_tls_nb_flush(s); /* the alert, if the socket takes it now */
	explain_failure(t, r);
	s->failed = r == GNUTLS_E_PULL_ERROR && t->rx_err == -ETIMEDOUT
			? -ETIMEDOUT
			: -EACCES;
	return kv_error_set(err, s->failed, "TLS with %s (%s) failed: %s", t->peer, kv_tls_creds_id(s->params.creds), t->why);
}

int kv_tls_nb_handshake(struct kv_tls_nb *s, struct kv_error *err)
{
	struct tls_chan *t = &s->t;
	int r;

	if (s->done)
		return 1;
	if (s->failed)
		return kv_error_set(err, s->failed, "TLS with %s (%s) failed: %s", t->peer, kv_tls_creds_id(s->params.creds), t->why);
	do {
		r = gnutls_handshake(t->session);
	} while (r < 0 && r != GNUTLS_E_AGAIN && !gnutls_error_is_fatal(r));
	if (r == 0) {
		s->done = true;
		t->handshaken = true;
		r = kv_tls_nb_flush(s);
		return r == 0 || r == -EAGAIN ? 1 : nb_fail(s, GNUTLS_E_PUSH_ERROR, err);
	}
	if (r == GNUTLS_E_AGAIN) {
		r = kv_tls_nb_flush(s);
		if (r < 0 && r != -EAGAIN) {
			t->tx_err = r;
			return nb_fail(s, GNUTLS_E_PUSH_ERROR, err);
		}
		if (t->deadline_ns < 0 || kv_now_ns() < t->deadline_ns)
			return 0;
		t->rx_err = -ETIMEDOUT;
		r = GNUTLS_E_PULL_ERROR;
	}
	return nb_fail(s, r, err);
}

short kv_tls_nb_events(const struct kv_tls_nb *s)
{
	return (short)(POLLIN | (s->out_head < s->out_len ? POLLOUT : 0));
}

ssize_t kv_tls_nb_recv(struct kv_tls_nb *s, void *buf, size_t len)
{
	for (;;) {
		ssize_t r = gnutls_record_recv(s->t.session, buf, len);

		if (r >= 0)
			return r;
		if (r == GNUTLS_E_INTERRUPTED || r == GNUTLS_E_REHANDSHAKE)
			continue;
		if (r == GNUTLS_E_AGAIN)
			return -EAGAIN;
		if (r == GNUTLS_E_PREMATURE_TERMINATION)
			return 0;
		return record_errno(&s->t, r);
	}
}

ssize_t kv_tls_nb_send(struct kv_tls_nb *s, const void *buf, size_t len)
{
	size_t done = 0;
	int r = kv_tls_nb_flush(s);

	if (r < 0)
		return r;
	while (done < len && done < NB_PER_SEND) {
		ssize_t n = gnutls_record_send(s->t.session,
					       (const uint8_t *)buf + done,
					       len - done);

		if (n == GNUTLS_E_INTERRUPTED || n == GNUTLS_E_AGAIN)
			continue;
		if (n < 0)
			return done ? (ssize_t)done : record_errno(&s->t, n);
		done += (size_t)n;
	}
	r = kv_tls_nb_flush(s);
	if (r < 0 && r != -EAGAIN)
		return r;
	return (ssize_t)done;
}

bool kv_tls_nb_pending(const struct kv_tls_nb *s)
{
	return gnutls_record_check_pending(s->t.session) > 0;
}

bool kv_tls_nb_peer_silent(const struct kv_tls_nb *s)
{
	return !s->t.saw_first_byte;
}

bool kv_tls_nb_peer_plaintext(const struct kv_tls_nb *s)
{
	return s->t.saw_first_byte && s->t.first_byte != TLS_HANDSHAKE_BYTE;
}

/* ---- kTLS ---- */

static bool kernel_has_tls_ulp(char *why, size_t size)
{
	char ulps[256] = "";
	FILE *f = fopen("/proc/sys/net/ipv4/tcp_available_ulp", "re");
	bool ok;

	if (f) {
		if (!fgets(ulps, sizeof(ulps), f))
			ulps[0] = '\0';
		fclose(f);
	}
	ok = strstr(ulps, "tls") != NULL;
	if (!ok) {
		int s = socket(AF_INET, SOCK_STREAM, 0);

		/* Only a connected socket takes a ULP: ENOTCONN means the
		 * kernel knows "tls", ENOENT that it does not. */
		ok = s >= 0 && setsockopt(s, IPPROTO_TCP, TCP_ULP, "tls", 3) < 0 &&
		     errno == ENOTCONN;
		if (s >= 0)
			close(s);
	}
	if (!ok)
		snprintf(why, size, "the kernel has no TLS upper layer (no \"tls\" in /proc/sys/net/ipv4/tcp_available_ulp)");
	return ok;
}

/* ---- the probe: one throwaway PSK session over loopback TCP with
 * GnuTLS's own socket transport, the only one it hands to the kernel;
 * gnutls_transport_is_ktls_enabled then says what the whole stack (the
 * kernel, GnuTLS's build and its system configuration) does. ---- */

static int probe_key(gnutls_session_t session, const char *user,
		     gnutls_datum_t *key)
{
	static const uint8_t k[16] = {1, 2, 3, 4};

	(void)session;
	(void)user;
	key->data = gnutls_malloc(sizeof(k));
	if (!key->data)
		return -1;
	memcpy(key->data, k, sizeof(k));
	key->size = sizeof(k);
	return 0;
}

static int probe_pair(int fd[2])
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t len = sizeof(sa);
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	fd[0] = fd[1] = -1;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof(sa)) ||
	    listen(l, 1) || getsockname(l, (struct sockaddr *)&sa, &len))
		goto fail;
	fd[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd[0] < 0 || connect(fd[0], (struct sockaddr *)&sa, sizeof(sa)))
		goto fail;
	fd[1] = accept4(l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd[1] < 0 || fcntl(fd[0], F_SETFL, O_NONBLOCK) < 0)
		goto fail;
	close(l);
	return 0;
fail:
	if (l >= 0)
		close(l);
	if (fd[0] >= 0)
		close(fd[0]);
	return -1;
}

/* Both ends' handshakes in turn (non-blocking sockets), at most 2 s. */
static unsigned probe_sessions(int fd[2])
{
	static const uint8_t k[16] = {1, 2, 3, 4};
	gnutls_datum_t key = {(unsigned char *)k, sizeof(k)};
	gnutls_psk_client_credentials_t cc = NULL;
	gnutls_psk_server_credentials_t sc = NULL;
	gnutls_session_t s[2] = {NULL, NULL};
	int r[2] = {-1, -1};
	unsigned flags = 0;
	int64_t end = kv_now_ns() + 2000 * 1000000LL;

	if (gnutls_psk_allocate_client_credentials(&cc) < 0 ||
	    gnutls_psk_set_client_credentials(cc, "probe", &key, GNUTLS_PSK_KEY_RAW) < 0 ||
	    gnutls_psk_allocate_server_credentials(&sc) < 0 ||
	    gnutls_init(&s[0], GNUTLS_CLIENT | GNUTLS_NONBLOCK) < 0 ||
	    gnutls_init(&s[1], GNUTLS_SERVER | GNUTLS_NONBLOCK) < 0)
		goto out;
	gnutls_psk_set_server_credentials_function(sc, probe_key);
	for (int i = 0; i < 2; i++) {
		gnutls_priority_set_direct(s[i], PRIORITY_PSK, NULL);
		gnutls_credentials_set(s[i], GNUTLS_CRD_PSK,
				       i ? (void *)sc : (void *)cc);
		gnutls_transport_set_int(s[i], fd[i]);
	}
	while ((r[0] || r[1]) && kv_now_ns() < end) {
		struct pollfd p[2] = {{fd[0], POLLIN, 0}, {fd[1], POLLIN, 0}};

		for (int i = 0; i < 2; i++)
			if (r[i])
				r[i] = gnutls_handshake(s[i]);
		if ((r[0] && gnutls_error_is_fatal(r[0])) ||
		    (r[1] && gnutls_error_is_fatal(r[1])))
			goto out;
		if (r[0] || r[1])
			poll(p, 2, 10);
	}
	if (!r[0] && !r[1])
		flags = gnutls_transport_is_ktls_enabled(s[0]);
out:
	for (int i = 0; i < 2; i++)
		if (s[i])
			gnutls_deinit(s[i]);
	if (cc)
		gnutls_psk_free_client_credentials(cc);
	if (sc)
		gnutls_psk_free_server_credentials(sc);
	return flags;
}

bool kv_tls_ktls_available(char *why, size_t size)
{
	unsigned flags;
	int fd[2];

	snprintf(why, size, "%s", "");
	if (!kernel_has_tls_ulp(why, size))
		return false;
	/* GnuTLS hands a session to the kernel only when built with it
	 * and when its configuration turns ktls on (3.7.3 and later). */
	if (gnutls_check_version("3.7.3") == NULL) {
		snprintf(why, size, "GnuTLS %s predates kTLS support (3.7.3)", gnutls_check_version(NULL));
		return false;
	}
	if (probe_pair(fd) < 0) {
		snprintf(why, size, "cannot open a loopback connection to ask GnuTLS: %s", strerror(errno));
		return false;
	}
	flags = probe_sessions(fd);
	close(fd[0]);
	close(fd[1]);
	if (flags != GNUTLS_KTLS_DUPLEX) {
		snprintf(why, size, "GnuTLS %s did not hand a test session to the kernel (gnutls_transport_is_ktls_enabled: %u; needs GnuTLS built with kTLS and [global] ktls = true in its system configuration)", gnutls_check_version(NULL), flags);
		return false;
	}
	snprintf(why, size, "the kernel and GnuTLS %s take TLS sessions (kTLS both ways)", gnutls_check_version(NULL));
	return true;
}
