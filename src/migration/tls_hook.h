/* SPDX-License-Identifier: MIT */
/*
 * TLS on a migration's channels (QEMU's tls-creds, tls-hostname,
 * tls-authz): every place that connects or accepts one (the main stream,
 * each multifd channel, the switch-over's RESOLVE connections) passes the
 * fresh channel through one of these two, which hand it back as it is
 * when tls-creds is empty, or as a TLS channel once the handshake and
 * every check passed. On failure the channel is closed and err names the
 * check that failed.
 */
#ifndef KV_MIGRATION_TLS_HOOK_H
#define KV_MIGRATION_TLS_HOOK_H

#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"
#include "io/channel.h"
#include "migration/migration.h"

/* Is TLS configured (tls non-NULL with a tls-creds id)? */
bool kv_mig_tls_on(const struct kv_mig_tls *tls);

/* Do tls-creds (and on a destination tls-authz) name objects of the
 * right kind and endpoint? 0 (also without TLS), or <0 with err in QEMU's
 * words, for migrate and migrate-incoming to refuse at once. */
int kv_mig_tls_check(const struct kv_mig_tls *tls, bool destination,
		     struct kv_error *err);

/* Source: c was connected to uri; the destination's certificate must
 * carry tls->hostname, else the URI's host. The handshake may take
 * timeout_ms (0: KV_MIG_TLS_HANDSHAKE_NS). */
struct kv_chan *kv_mig_tls_client(struct kv_chan *c,
				  const struct kv_mig_tls *tls,
				  const char *uri, uint64_t timeout_ms,
				  struct kv_error *err);
/* The same, but on failure c stays open and the caller's (it may be
 * shared with a thread that shuts it down). */
struct kv_chan *kv_mig_tls_client_keep(struct kv_chan *c,
				       const struct kv_mig_tls *tls,
				       const char *uri, uint64_t timeout_ms,
				       struct kv_error *err);
/* Destination: c was accepted; tls->authz decides who may go on. */
struct kv_chan *kv_mig_tls_server(struct kv_chan *c,
				  const struct kv_mig_tls *tls,
				  int64_t deadline_ns, struct kv_error *err);

/* How long a handshake may take after the connection is made. */
#define KV_MIG_TLS_HANDSHAKE_NS (5 * 1000000000LL)

#endif
