/* SPDX-License-Identifier: MIT */
/*
 * A small synchronous QMP client, for the kvmig control commands (migrate,
 * status, cancel, set). It speaks to kvmig's monitor and to QEMU's alike.
 *
 * Address: "unix:PATH", "tcp:HOST:PORT" (HOST may be "[v6]") or a bare
 * path (taken as a unix socket).
 *
 * Call order: kv_qmpc_connect() (reads the greeting and negotiates with
 * qmp_capabilities), any number of kv_qmpc_execute(), kv_qmpc_close().
 * Events that arrive while waiting for a reply are kept (the newest
 * KV_QMPC_MAX_EVENTS) for kv_qmpc_next_event().
 *
 * Errors fill struct kv_error. A QMP error reply returns -EREMOTEIO, fills
 * err with "NAME: CLASS: DESC" and keeps CLASS and DESC for
 * kv_qmpc_error_class() / kv_qmpc_error_desc().
 */
#ifndef KV_CLI_QMP_CLIENT_H
#define KV_CLI_QMP_CLIENT_H

#include <jansson.h>

#include "base/error.h"

#define KV_QMPC_MAX_EVENTS 64
/* A reply bigger than this is refused (a runaway peer). */
#define KV_QMPC_MAX_MESSAGE (16u << 20)

struct kv_qmpc;

/* Connect, read the greeting and send qmp_capabilities, each step within
 * timeout_ms. Messages name the address. */
int kv_qmpc_connect(const char *addr, int timeout_ms, struct kv_qmpc **out,
		    struct kv_error *err);

/* TLS to a monitor with tls-creds: the client's credentials
 * (endpoint=client) and the name the monitor's certificate must carry
 * (NULL or "": the host of a tcp: address). */
struct kv_tls_creds;
struct kv_qmpc_tls {
	const struct kv_tls_creds *creds; /* NULL: plaintext */
	const char *hostname;
};
/* kv_qmpc_connect over TLS when tls has credentials (the handshake too
 * within timeout_ms); its errors name the check that failed. */
int kv_qmpc_connect_tls(const char *addr, const struct kv_qmpc_tls *tls,
			int timeout_ms, struct kv_qmpc **out,
			struct kv_error *err);

/* The address as given to kv_qmpc_connect (for messages). */
const char *kv_qmpc_address(const struct kv_qmpc *c);

/* The greeting's "QMP" object (borrowed; NULL if absent). */
json_t *kv_qmpc_greeting(const struct kv_qmpc *c);

/* Run command name with args (a JSON object, stolen; NULL for none) and
 * wait up to timeout_ms for its reply. On success *ret (if ret is
 * non-NULL) gets a new reference to the "return" value. */
int kv_qmpc_execute(struct kv_qmpc *c, const char *name, json_t *args,
		    json_t **ret, int timeout_ms, struct kv_error *err);

/* After -EREMOTEIO from kv_qmpc_execute: the error's class and desc. */
const char *kv_qmpc_error_class(const struct kv_qmpc *c);
const char *kv_qmpc_error_desc(const struct kv_qmpc *c);

/* The oldest kept event (new reference), waiting up to timeout_ms for one
 * (0: do not wait). Returns 1 with *ev, 0 when none came, <0 on error. */
int kv_qmpc_next_event(struct kv_qmpc *c, int timeout_ms, json_t **ev,
		       struct kv_error *err);

void kv_qmpc_close(struct kv_qmpc *c);

#endif
