/* SPDX-License-Identifier: MIT */
/*
 * TLS: a channel that wraps any other channel (GnuTLS), and the
 * credentials QEMU's tls-creds-x509 / tls-creds-psk objects declare.
 *
 * The wrapper implements every kv_chan op by asking the inner channel,
 * adjusted for what it buffers itself (decrypted bytes not handed out yet
 * make it readable). Records are written a batch at a time: GnuTLS's
 * records (16 KiB, TLS's largest) of one writev collect in one buffer
 * that goes out in one write to the inner channel. One thread may read
 * while another writes (the return path's reader and the stream's
 * writer), as GnuTLS allows outside a handshake.
 *
 * Checks run during the handshake, so a refused peer never gets to send
 * a migration byte: the certificate's chain, dates and host name (client
 * side: the destination's), the peer's certificate when verify-peer is on
 * (server side), the PSK user, and the server's authorization list
 * (authz.h) on the peer's X.509 distinguished name or PSK user name.
 */
#ifndef KV_IO_TLS_H
#define KV_IO_TLS_H

#include <stdbool.h>
#include <stdint.h>

#include "base/authz.h"
#include "base/error.h"
#include "io/channel.h"

enum kv_tls_endpoint { KV_TLS_CLIENT, KV_TLS_SERVER };

/* Loaded credentials (one tls-creds-* object); immutable once made, so
 * any number of channels in any threads use one. */
struct kv_tls_creds;

/* tls-creds-x509: DIR/ca-cert.pem; a server's DIR/server-cert.pem and
 * server-key.pem; a client's DIR/client-cert.pem and client-key.pem
 * (needed when the server verifies peers). verify_peer: a client checks
 * the server's certificate, a server demands and checks the client's. */
struct kv_tls_creds *kv_tls_creds_x509(const char *id, const char *dir,
				       enum kv_tls_endpoint endpoint,
				       bool verify_peer, struct kv_error *err);
/* tls-creds-psk: DIR/keys.psk, lines "user:hexkey" (GnuTLS's and
 * QEMU's format). A client uses username's key (QEMU's default user
 * "qemu" when username is NULL or empty); a server accepts any user the
 * file lists. */
struct kv_tls_creds *kv_tls_creds_psk(const char *id, const char *dir,
				      enum kv_tls_endpoint endpoint,
				      const char *username,
				      struct kv_error *err);
void kv_tls_creds_free(struct kv_tls_creds *creds);
const char *kv_tls_creds_id(const struct kv_tls_creds *creds);
enum kv_tls_endpoint kv_tls_creds_endpoint(const struct kv_tls_creds *creds);

struct kv_tls_params {
	const struct kv_tls_creds *creds;
	/* Client: the name the server's certificate must carry (QEMU's
	 * tls-hostname, else the URI's host); NULL or "": no name check. */
	const char *hostname;
	/* Server: who may connect; NULL: anyone whose credentials pass. */
	const struct kv_authz *authz;
	/* The handshake must be over by then (kv_now_ns() clock). */
	int64_t deadline_ns;
	/* Who the peer is, for messages ("the monitor", "the QMP client");
	 * NULL: a migration's ("the source" / "the destination"). */
	const char *peer_role;
};

/* Can a server use creds with authz? -EINVAL with err saying what to
 * fix: client credentials, or an authz list over x509 credentials that
 * do not ask for the peer's certificate (verify-peer=off). */
int kv_tls_server_check(const struct kv_tls_creds *creds,
			const struct kv_authz *authz, struct kv_error *err);

/* Handshake over inner as p->creds' endpoint. Returns the TLS channel
 * (which owns inner), or NULL with inner left open (the caller's) and err
 * naming the check that failed ("the destination's certificate has expired", "PSK user
 * 'bob' is not in DIR/keys.psk", ...). */
struct kv_chan *kv_tls_wrap(struct kv_chan *inner,
			    const struct kv_tls_params *p,
			    struct kv_error *err);

/* "TLS1.3 AES-128-GCM" for a TLS channel; -EINVAL for another kind. */
int kv_tls_describe(const struct kv_chan *c, char *buf, size_t size);

/* Do the first bytes of a connection look like a TLS handshake? For a
 * destination without TLS that is sent one (to say so). */
bool kv_tls_looks_like_hello(const uint8_t *buf, size_t len);

/* Do two bytes look like the start of any TLS record (an alert from a
 * TLS peer to a plaintext one)? */
bool kv_tls_looks_like_record(const uint8_t *buf, size_t len);

/*
 * A TLS session over a non-blocking socket, for a poll() loop that serves
 * many peers in one thread (the QMP monitor): no call ever blocks. The
 * checks are kv_tls_wrap's. Encrypted bytes the socket did not take wait
 * in the session; a send encrypts more only once they are out, so at
 * most one call's worth waits.
 */
struct kv_tls_nb;

/* A server (or client) session on fd (which stays the caller's). p is
 * copied; p->deadline_ns bounds the handshake. */
struct kv_tls_nb *kv_tls_nb_new(int fd, const char *name,
				const struct kv_tls_params *p,
				struct kv_error *err);
void kv_tls_nb_free(struct kv_tls_nb *s);
/* Go on with the handshake: 1 done, 0 waiting for the peer (poll for
 * kv_tls_nb_events), <0 failed, err naming the check (as kv_tls_wrap's);
 * a deadline passed is a failure ("stalled"). */
int kv_tls_nb_handshake(struct kv_tls_nb *s, struct kv_error *err);
/* poll() events the session waits for: POLLIN, plus POLLOUT while
 * encrypted bytes wait for the socket. */
short kv_tls_nb_events(const struct kv_tls_nb *s);
/* Decrypted bytes: >0, 0 at the end, -EAGAIN (nothing yet), -errno. */
ssize_t kv_tls_nb_recv(struct kv_tls_nb *s, void *buf, size_t len);
/* Bytes of buf taken (encrypted), -EAGAIN while earlier ones still wait
 * for the socket, -errno. */
ssize_t kv_tls_nb_send(struct kv_tls_nb *s, const void *buf, size_t len);
/* Send what waits: 0 all out, -EAGAIN some left, -errno. */
int kv_tls_nb_flush(struct kv_tls_nb *s);
/* Decrypted bytes kv_tls_nb_recv returns without the socket. */
bool kv_tls_nb_pending(const struct kv_tls_nb *s);
/* Has the peer sent a byte yet / was its first byte not TLS? (A
 * plaintext QMP client waits for the greeting: it sends nothing.) */
bool kv_tls_nb_peer_silent(const struct kv_tls_nb *s);
bool kv_tls_nb_peer_plaintext(const struct kv_tls_nb *s);

/* Can records be handed to the kernel (kTLS)? Fills why with what is
 * missing ("the kernel has no tls module", ...) when not. */
bool kv_tls_ktls_available(char *why, size_t size);

#endif
