/* SPDX-License-Identifier: MIT */
/*
 * The run controller of `kvmig run`: one VM, its migration glue, its QMP
 * monitor and its run state (QEMU's RunState names: "running", "paused",
 * "inmigrate", "finish-migrate", "postmigrate", "shutdown").
 *
 * It answers QMP commands, turns migration progress into QMP events
 * (MIGRATION, MIGRATION_PASS, STOP, RESUME) and runs the incoming side on a
 * thread of its own, so that the monitor stays responsive throughout.
 */
#ifndef KV_CLI_RUN_CONTROL_H
#define KV_CLI_RUN_CONTROL_H

#include <stdbool.h>

#include "base/error.h"
#include "vmm/vm.h"

struct run_ctl;

/* vm must outlive the controller. qmp_uri may be NULL. */
int run_ctl_new(struct kv_vm *vm, bool verify_ram, const char *qmp_uri,
		struct run_ctl **out, struct kv_error *err);
void run_ctl_free(struct run_ctl *rc);

/* The VM booted a kernel and its vCPUs run. */
void run_ctl_booted(struct run_ctl *rc);

/* Receive a migration on uri (on the controller's thread); on success the
 * vCPUs start; on failure the process is asked to exit with status 1.
 * With uri "defer", wait for QMP migrate-incoming. */
int run_ctl_incoming(struct run_ctl *rc, const char *uri,
		     struct kv_error *err);

/* Main loop ended: no more events. */
void run_ctl_shutdown(struct run_ctl *rc);

#endif
