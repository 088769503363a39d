/* SPDX-License-Identifier: MIT */
/*
 * The switch-over commit protocol: the records that decide which side
 * runs the guest (docs/DESIGN.md, "The switch-over: at most one copy
 * runs"; docs/FORMAT.md §11 has every byte). kvmig-only; they appear only
 * on a connection with a return path, after QEMU's VM description.
 *
 *   source                                destination
 *   stop; devices; EOF; VM description
 *   OFFER(id)                      ->
 *                                         load, verify, commit into KVM
 *                                  <-     READY(id)   (return path)
 *   DECISION(id, GO|ABORT)         ->
 *                                         GO: start; ABORT: discard
 *                                  <-     SHUT(0) running / SHUT(1) not
 *
 * A side that cannot know the outcome stays stopped ("x-undecided"); the
 * source then delivers its decision over a new connection to the
 * destination's incoming address (RESOLVE, answered by ACK).
 */
#ifndef KV_MIGRATION_SWITCHOVER_H
#define KV_MIGRATION_SWITCHOVER_H

#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"
#include "io/channel.h"
#include "io/stream.h"

#define KV_SWO_ID_LEN	 16
#define KV_SWO_MAGIC_LEN 8

/* A migration's identity: the destination settles only its own. */
struct kv_swo_id {
	uint8_t b[KV_SWO_ID_LEN];
};

enum kv_swo_decision {
	KV_SWO_UNDECIDED = 0,
	KV_SWO_GO = 1,	  /* the destination runs the guest */
	KV_SWO_ABORT = 2, /* the source keeps it; the destination discards */
};

/* The destination's answer to a RESOLVE. */
enum kv_swo_ack {
	KV_SWO_ACK_RUNNING = 1,	  /* it runs (or ran) the guest */
	KV_SWO_ACK_DISCARDED = 2, /* it discarded it: it never ran */
	KV_SWO_ACK_UNKNOWN = 3,	  /* no such migration here */
};

/* What an operator says with QMP x-migrate-settle about an undecided
 * migration: this side runs the guest, or drops its copy. */
enum kv_swo_settle {
	KV_SWO_SETTLE_NONE = 0,
	KV_SWO_SETTLE_RUN = 1,
	KV_SWO_SETTLE_DISCARD = 2,
};

const char *kv_swo_decision_name(enum kv_swo_decision d);
/* "run" / "discard"; NONE for anything else. */
enum kv_swo_settle kv_swo_settle_parse(const char *text);
/* 0 for RUN or DISCARD; else -EINVAL with err saying what is allowed. */
int kv_swo_settle_check(enum kv_swo_settle how, struct kv_error *err);
const char *kv_swo_ack_name(enum kv_swo_ack a);

/* A fresh random identity; 0 or <0 with err set. */
int kv_swo_new_id(struct kv_swo_id *id, struct kv_error *err);
/* Hex text of an id (33 bytes with the NUL). */
void kv_swo_id_text(const struct kv_swo_id *id, char *buf, size_t size);

/* ---- on the main stream ---- */

/* Source: queue OFFER(id) (the caller flushes). */
void kv_swo_put_offer(struct kv_stream *s, const struct kv_swo_id *id);
/* Destination: read OFFER within the deadline. */
int kv_swo_read_offer(struct kv_stream *s, struct kv_swo_id *id,
		      int64_t deadline_ns, struct kv_error *err);

/* Source: write DECISION and flush. *sent says whether any byte of it
 * reached the kernel: if none did, the destination cannot
 * have it, whatever the return value. */
int kv_swo_send_decision(struct kv_stream *s, const struct kv_swo_id *id,
			 enum kv_swo_decision d, bool *sent,
			 struct kv_error *err);
/* Destination: read DECISION for id within the deadline. */
int kv_swo_read_decision(struct kv_stream *s, const struct kv_swo_id *id,
			 int64_t deadline_ns, enum kv_swo_decision *d,
			 struct kv_error *err);

/* ---- RESOLVE, on a connection of its own ---- */

/* Do the first 8 bytes of a connection open a RESOLVE? */
bool kv_swo_is_resolve(const uint8_t *hello, size_t len);

/* Source: connect to uri, say the decision, read the answer. */
int kv_swo_resolve(const char *uri, const struct kv_swo_id *id,
		   enum kv_swo_decision d, struct kv_cancel *cancel,
		   int timeout_ms, enum kv_swo_ack *ack, struct kv_error *err);

/* Destination: the rest of a RESOLVE after its magic. */
int kv_swo_read_resolve(struct kv_chan *c, struct kv_swo_id *id,
			enum kv_swo_decision *d, int64_t deadline_ns,
			struct kv_error *err);
int kv_swo_send_ack(struct kv_chan *c, const struct kv_swo_id *id,
		    enum kv_swo_ack a, struct kv_error *err);

#endif
