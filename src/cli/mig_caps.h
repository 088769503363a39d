/* SPDX-License-Identifier: MIT */
/*
 * Migration capabilities as QMP shows them (migrate-set-capabilities,
 * query-migrate-capabilities): QEMU's names, each either something kvmig
 * does (settable) or not yet (may only be false).
 *
 *   events       settable; MIGRATION and MIGRATION_PASS are sent only while
 *                it is on. On by default (QEMU's default is off: kvmig's
 *                own clients and scripts expect the events unasked).
 *   return-path  always on: every socket migration opens one (the source
 *                waits for the destination's SHUT before it completes);
 *                file: migrations have none. Setting it true is accepted,
 *                false is refused.
 *   the rest     (xbzrle, auto-converge, multifd, postcopy-ram, ...) not
 *                implemented yet: false, and true is refused.
 *
 * Not thread-safe: the run controller holds its lock around every call.
 */
#ifndef KV_CLI_MIG_CAPS_H
#define KV_CLI_MIG_CAPS_H

#include <stdbool.h>

#include <jansson.h>

#include "base/error.h"

enum mig_cap {
	MIG_CAP_XBZRLE,
	MIG_CAP_RDMA_PIN_ALL,
	MIG_CAP_AUTO_CONVERGE,
	MIG_CAP_ZERO_BLOCKS,
	MIG_CAP_EVENTS,
	MIG_CAP_POSTCOPY_RAM,
	MIG_CAP_X_COLO,
	MIG_CAP_RELEASE_RAM,
	MIG_CAP_RETURN_PATH,
	MIG_CAP_PAUSE_BEFORE_SWITCHOVER,
	MIG_CAP_MULTIFD,
	MIG_CAP_DIRTY_BITMAPS,
	MIG_CAP_POSTCOPY_BLOCKTIME,
	MIG_CAP_LATE_BLOCK_ACTIVATE,
	MIG_CAP_X_IGNORE_SHARED,
	MIG_CAP_VALIDATE_UUID,
	MIG_CAP_BACKGROUND_SNAPSHOT,
	MIG_CAP_ZERO_COPY_SEND,
	MIG_CAP_POSTCOPY_PREEMPT,
	MIG_CAP_SWITCHOVER_ACK,
	MIG_CAP_DIRTY_LIMIT,
	MIG_CAP_COUNT,
};

struct mig_caps {
	bool on[MIG_CAP_COUNT];
};

/* kvmig's defaults: events and return-path on, the rest off. */
void mig_caps_init(struct mig_caps *c);
bool mig_caps_get(const struct mig_caps *c, enum mig_cap cap);
/* Apply a list of {"capability": NAME, "state": bool} (shape already
 * checked by the monitor), all or nothing: an unknown name or a state
 * kvmig cannot honour changes nothing and fills err naming it. */
int mig_caps_apply(struct mig_caps *c, const json_t *list,
		   struct kv_error *err);
/* [{"capability": NAME, "state": bool}, ...] for every capability, in
 * QEMU's order. New reference, NULL when out of memory. */
json_t *mig_caps_query(const struct mig_caps *c);

#endif
