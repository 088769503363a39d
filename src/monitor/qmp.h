/* SPDX-License-Identifier: MIT */
/*
 * The QMP monitor: QEMU's JSON machine protocol on a unix (or tcp) socket,
 * several clients at once, one thread polling the listener and clients.
 *
 * Protocol (QEMU's, docs/interop/qmp-spec): on connect the server sends
 *   {"QMP": {"version": {"qemu": {"major","minor","micro"}, "package"},
 *            "capabilities": []}}
 * the client must send {"execute": "qmp_capabilities"} first; then every
 * {"execute": NAME, "arguments": {...}, "id": ANY} gets exactly one
 * {"return": ...} or {"error": {"class": CLASS, "desc": TEXT}} carrying the
 * same "id". Events: {"event": NAME, "data": {...}, "timestamp":
 * {"seconds", "microseconds"}} to every client past negotiation.
 * Parsing uses jansson; a bad JSON document gets a GenericError and the
 * connection stays usable; a client that sends more than 1 MiB without a
 * complete document is dropped. No input can crash or wedge the monitor.
 *
 * Commands are a const table (name -> handler); the VMM supplies their
 * behaviour through struct kv_qmp_ops, the migration commands through the
 * object of qmp_migration.h.
 */
#ifndef KV_MONITOR_QMP_H
#define KV_MONITOR_QMP_H

#include <stdint.h>

#include "base/error.h"

struct kv_qmp_mig;

/* What the monitor needs from the VMM. Every callback is called on the
 * monitor thread; it must not block for long (start work, return). JSON
 * values are jansson json_t * passed as void * to keep jansson out of
 * this header. A callback returns 0, or <0 with err set: the monitor turns
 * that into {"error": {"class": "GenericError", "desc": err->msg}}. */
struct kv_qmp_ops {
	/* {"status": "running"|"paused"|"postmigrate"|"inmigrate"|...,
	 *  "running": bool} */
	int (*query_status)(void *opaque, void **ret, struct kv_error *err);
	int (*stop)(void *opaque, struct kv_error *err);
	int (*cont)(void *opaque, struct kv_error *err);
	/* The monitor replies first, then calls quit. quit runs on the
	 * monitor thread, so it must not call kv_qmp_stop() itself (that
	 * joins the thread): it tells the main loop to stop instead. */
	void (*quit)(void *opaque);
	/* The migration commands (qmp_migration.h); NULL: the VM has
	 * none. */
	struct kv_qmp_mig *migration;
	/* A list of QEMU's CpuInfoFast, one per vCPU. */
	int (*query_cpus_fast)(void *opaque, void **ret, struct kv_error *err);
	/* Ask the guest to power itself off (and send POWERDOWN). */
	int (*system_powerdown)(void *opaque, struct kv_error *err);
	void *opaque;
};

struct kv_qmp;

/*
 * A QMP socket as QEMU's -qmp and -chardev socket write it:
 *   unix:PATH|tcp:HOST:PORT[,server=on][,wait=off][,tls-creds=ID]
 *                          [,tls-authz=ID]
 * (",," is a comma of PATH; server=on and wait=off are what kvmig's
 * monitor always does, so they may be given). kvmig's tools, which
 * connect, take [unix:]PATH|tcp:HOST:PORT[,tls-creds=ID]
 * [,tls-hostname=NAME]. The ids name --object credentials / authz.
 */
enum kv_qmp_side { KV_QMP_LISTEN, KV_QMP_CONNECT };

struct kv_qmp_spec {
	char uri[300];
	char tls_creds[64];    /* "": no TLS */
	char tls_authz[64];    /* listening only */
	char tls_hostname[256]; /* connecting only; "": the URI's host */
};

/* 0, or -EINVAL with err naming the option that is wrong. */
int kv_qmp_spec_parse(const char *text, enum kv_qmp_side side,
		      struct kv_qmp_spec *out, struct kv_error *err);

/* A monitor over TLS (QEMU's chardev tls-creds / tls-authz). */
struct kv_tls_creds;
struct kv_authz;
struct kv_qmp_tls {
	const struct kv_tls_creds *creds; /* endpoint=server */
	const struct kv_authz *authz;	  /* NULL: whoever's credentials pass */
};

/* Listen on "unix:PATH" or "tcp:HOST:PORT" and start the monitor thread
 * (which blocks every signal). A stale unix socket file is replaced; a path
 * that is not a socket, or a socket someone listens on, is refused. */
int kv_qmp_start(const char *uri, const struct kv_qmp_ops *ops,
		 struct kv_qmp **out, struct kv_error *err);
/* The same where every client must complete a TLS handshake first (tls
 * NULL or tls->creds NULL: plaintext). A client that sends no TLS
 * handshake gets one plaintext QMP error line naming the need, then the
 * connection closes; a handshake has 10 s. The credentials and the
 * authz list must outlive the monitor. */
int kv_qmp_start_tls(const char *uri, const struct kv_qmp_tls *tls,
		     const struct kv_qmp_ops *ops, struct kv_qmp **out,
		     struct kv_error *err);
/* The address listened on, as a URI ("unix:PATH", "tcp:HOST:PORT" with the
 * real port when PORT was 0). */
const char *kv_qmp_address(const struct kv_qmp *q);
/* Stop the thread, close every client and the listener (a unix socket file
 * is removed). Not from an ops callback. */
void kv_qmp_stop(struct kv_qmp *q);
/* Send an event to every negotiated client; data is a json_t * (stolen)
 * or NULL. Any thread, until kv_qmp_stop() is called. */
void kv_qmp_event(struct kv_qmp *q, const char *name, void *data);

#endif
