/* SPDX-License-Identifier: MIT */
/*
 * The VM's run state as QMP shows it (query-status), with QEMU's RunState
 * names, and the moves between states that are allowed. Only the states
 * kvmig uses are listed; docs/DESIGN.md draws the table.
 *
 *   paused          created, not started yet; or stopped by QMP stop
 *   running         the vCPUs run
 *   inmigrate       waiting for (or loading) an incoming migration
 *   finish-migrate  source: the vCPUs stopped for the switch-over
 *   postmigrate     source: the guest now runs on the destination
 *   shutdown        the process is ending
 */
#ifndef KV_VMM_RUNSTATE_H
#define KV_VMM_RUNSTATE_H

#include <stdbool.h>

enum kv_runstate {
	KV_RUNSTATE_PAUSED,
	KV_RUNSTATE_RUNNING,
	KV_RUNSTATE_INMIGRATE,
	KV_RUNSTATE_FINISH_MIGRATE,
	KV_RUNSTATE_POSTMIGRATE,
	KV_RUNSTATE_SHUTDOWN,
	KV_RUNSTATE_COUNT,
};

/* QEMU's name ("finish-migrate"); "unknown" out of range. */
const char *kv_runstate_name(enum kv_runstate st);
/* The state named name (a VM's query-status, maybe QEMU's); false for a
 * name kvmig does not use. */
bool kv_runstate_parse(const char *name, enum kv_runstate *out);
/* May a VM in state from move to state to? Staying put is always
 * allowed. */
bool kv_runstate_can_move(enum kv_runstate from, enum kv_runstate to);

#endif
