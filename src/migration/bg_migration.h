/* SPDX-License-Identifier: MIT */
/*
 * The background snapshot's phases (background-snapshot capability), run
 * by migration.c in place of precopy's iterate and switch-over, in QEMU's
 * order (bg_migration_thread):
 *
 *   header (no return path) and setup sections  [migration.c, as always]
 *   stop the workload; write-protect every RAM block (ram.h,
 *   kv_ram_bg_protect); save the device state into a buffer; resume
 *   RAM in address order, a page written by the guest saved first
 *   the END sections, then the buffered device state, EOF, description
 *
 * The guest runs throughout but for the stop, and keeps running after
 * COMPLETED: the stream is an ordinary one, which any destination loads.
 */
#ifndef KV_MIGRATION_BG_MIGRATION_H
#define KV_MIGRATION_BG_MIGRATION_H

#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"
#include "io/stream.h"
#include "migration/migration.h"

/* What the driver (migration.c) lends the phases: its handlers, its
 * hooks, and three calls on its state. */
struct kv_bg_driver {
	struct kv_savevm *sv;
	struct kv_ram_state *rs;
	const struct kv_mig_hooks *hooks;
	/* A cancel was asked for. */
	bool (*cancelled)(void *mig);
	/* Statistics and the progress hook; pending: bytes left. */
	void (*progress)(void *mig, struct kv_stream *s, uint64_t pending);
	/* The workload was stopped for stop_ns (query-migrate's downtime). */
	void (*paused)(void *mig, int64_t stop_ns);
	void *mig;
};

/* Capabilities a background snapshot cannot run with (QEMU refuses the
 * same: "Snapshot not compatible with ..."). 0 or -EINVAL with err set. */
int kv_bg_check_params(const struct kv_mig_params *p, struct kv_error *err);

/* From ACTIVE (header and setup written) to the stream's last byte,
 * flushed. *stopped is true while the workload is stopped by these
 * phases (the caller resumes it after a failure). 0, or <0 with err set;
 * RAM's save_cleanup un-protects whatever is left protected. */
int kv_bg_run(const struct kv_bg_driver *d, struct kv_stream *s,
	      bool *stopped, struct kv_error *err);

#endif
