/* SPDX-License-Identifier: MIT */
/*
 * The destination's side of a migration: one struct kv_incoming per
 * incoming migration, the counterpart of the source's struct kv_migration
 * (QEMU's MigrationIncomingState, without its global).
 *
 * It owns the listener, the accepted main channel and its stream, the
 * multifd receiver, the load, the commit into the caller's state, the SHUT
 * answer, the start of the workload, cleanup, statistics, and abort from
 * another thread. Its status has its own transition table (incoming.c;
 * docs/DESIGN.md draws it):
 *
 *   NONE -> SETUP (listening) -> ACTIVE (the source connected) ->
 *     COMPLETED / FAILED / CANCELLED
 *   postcopy: ACTIVE -> POSTCOPY_ACTIVE (POSTCOPY_RUN: the guest runs
 *     here) -> COMPLETED, or POSTCOPY_PAUSED (the link broke)
 *
 * The settings (struct kv_mig_params, kv_incoming_set_params) are read when
 * the source's main channel is accepted, as QEMU does: whatever was set
 * before the source connects takes effect, whenever the listener opened.
 */
#ifndef KV_MIGRATION_INCOMING_H
#define KV_MIGRATION_INCOMING_H

#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"
#include "io/stream.h"
#include "migration/migration.h"
#include "migration/postcopy/postcopy_incoming.h"
#include "migration/ram/ram.h"
#include "migration/savevm/savevm.h"

enum kv_in_status {
	KV_IN_NONE,
	KV_IN_SETUP,  /* listening: waiting for the source */
	KV_IN_ACTIVE, /* the source connected: loading */
	KV_IN_COMPLETED,
	KV_IN_FAILED,
	KV_IN_CANCELLED,
	/* READY sent, no decision: loaded and stopped, waiting for the
	 * source's RESOLVE or an operator ("x-undecided"). */
	KV_IN_UNDECIDED,
	/* Postcopy (QEMU's names): the guest runs here since POSTCOPY_RUN
	 * and pulls its missing pages; the link broke with pages missing
	 * (its vCPUs wait on them). */
	KV_IN_POSTCOPY_ACTIVE,
	KV_IN_POSTCOPY_PAUSED,
	/* migrate-recover: a new link from the source, the handshake. */
	KV_IN_POSTCOPY_RECOVER,
	KV_IN_STATUS_COUNT,
};

/* QEMU's names: "none", "setup", "active", "completed", ... */
const char *kv_in_status_name(enum kv_in_status st);
/* The transition table: may an incoming migration go from one to the
 * other? */
bool kv_in_transition_allowed(enum kv_in_status from, enum kv_in_status to);

struct kv_incoming_hooks {
	/* After a successful load, before SHUT(0) (optional): a VMM writes
	 * the loaded state into KVM here, so that a failure still reaches
	 * the source as SHUT(1) and the source resumes. */
	int (*commit)(void *opaque, struct kv_error *err);
	/* After SHUT(0) was sent, before COMPLETED (optional): start the
	 * workload (a VMM's vCPUs). A failure makes the migration FAILED. */
	int (*start_vm)(void *opaque, struct kv_error *err);
	/* Every status change, on the thread that made it (optional). */
	void (*status)(void *opaque, enum kv_in_status st);
	/* Postcopy's blocktime: the vCPU threads' ids into tids (at most
	 * max), their number (optional). */
	size_t (*vcpu_tids)(void *opaque, uint32_t *tids, size_t max);
	void *opaque;
};

struct kv_incoming_stats {
	enum kv_in_status status;
	int64_t load_ns;      /* from the accept to the end (so far) */
	uint64_t transferred; /* main stream bytes read */
	char peer[300];       /* the source's address, once connected */
	char error[KV_ERROR_MSG_MAX]; /* why it failed */
	bool postcopy_blocktime;      /* the capability was on */
	struct kv_pc_in_stats pc;     /* pc.advised: postcopy was advised */
};

struct kv_incoming;

/* sv (and rs, NULL when nothing is RAM) must outlive the object.
 * params NULL: kv_mig_params_default. hooks may be NULL. */
struct kv_incoming *kv_incoming_new(struct kv_savevm *sv,
				    struct kv_ram_state *rs,
				    const struct kv_mig_params *params,
				    const struct kv_incoming_hooks *hooks);
/* Aborts nothing: the caller has joined any thread in kv_incoming_run. */
void kv_incoming_free(struct kv_incoming *in);

/* Bind and listen on uri now (SETUP), so that "address in use" is
 * reported at once and a source may connect as soon as this returns. A
 * failure leaves the status NONE: nothing started, try another uri. */
int kv_incoming_listen(struct kv_incoming *in, const char *uri,
		       struct kv_error *err);
/* The address listened on ("tcp:HOST:PORT" with the real port for port
 * 0); empty before kv_incoming_listen. */
const char *kv_incoming_uri(const struct kv_incoming *in);

/* After kv_incoming_listen: accept the source, read the settings, accept
 * its multifd channels, load, commit, answer SHUT, start the workload.
 * A connection that does not send the stream header within a few seconds
 * (closes, stays silent, sends other bytes) is not the source: it is
 * dropped with a warning and the status stays SETUP. Blocks. Returns 0 when COMPLETED; <0 with err set when FAILED or
 * CANCELLED (kv_incoming_abort). Runs once. */
int kv_incoming_run(struct kv_incoming *in, struct kv_error *err);
/* The same over a main stream already connected (fd:, tests): no
 * listener, so no multifd channels. The caller keeps s. */
int kv_incoming_run_stream(struct kv_incoming *in, struct kv_stream *s,
			   struct kv_error *err);

/* From any thread: make a blocked accept, load or channel wait fail; the
 * run ends CANCELLED (unless SHUT(0) already went: then the answer
 * stands). Before kv_incoming_run, it makes the run end at once. */
void kv_incoming_abort(struct kv_incoming *in);

enum kv_in_status kv_incoming_status(const struct kv_incoming *in);
void kv_incoming_get_stats(const struct kv_incoming *in,
			   struct kv_incoming_stats *st);

/* New settings (any thread). They take effect when the source connects;
 * once it has, a change to what the destination reads (multifd on or
 * off, its channels, its compression) is refused with -EBUSY naming the
 * setting, so that the caller refuses it instead of accepting it
 * silently; other changes are accepted and do nothing here. */
int kv_incoming_set_params(struct kv_incoming *in,
			   const struct kv_mig_params *p, struct kv_error *err);

/* An operator's word on an UNDECIDED incoming migration (QMP
 * x-migrate-settle, any thread): RUN starts the guest here (COMPLETED),
 * DISCARD drops it (FAILED). -EBUSY with err set when not undecided. */
int kv_incoming_settle(struct kv_incoming *in, enum kv_swo_settle how,
		       struct kv_error *err);

/* QMP migrate-recover (any thread): a POSTCOPY_PAUSED migration listens
 * on uri now (its errors reported here) for the source's migrate with
 * resume; -EBUSY with err set when not paused. */
int kv_incoming_recover(struct kv_incoming *in, const char *uri,
			struct kv_error *err);
/* QMP migrate-pause: break the link of a postcopy in progress on
 * purpose. -EBUSY when not postcopy-active or postcopy-recover. */
int kv_incoming_pause(struct kv_incoming *in, struct kv_error *err);

/* After a run that ended COMPLETED with the guest started through the
 * commit protocol: listen on the incoming address again and answer a
 * source that did not hear the confirmation (its RESOLVE) that the guest
 * runs here; other connections are dropped. Blocks until
 * kv_incoming_abort; returns at once when there is nothing to answer. */
void kv_incoming_answer_resolves(struct kv_incoming *in);

/* Load one migration from a connected stream with no hooks (memtest-like
 * callers and tests): kv_incoming_run_stream on an object of its own. */
int kv_mig_incoming(struct kv_savevm *sv, struct kv_stream *s,
		    struct kv_error *err);

#endif
