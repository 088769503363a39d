/* SPDX-License-Identifier: MIT */
/*
 * The run controller of `kvmig run`: one VM, its migration glue, its QMP
 * monitor and its run state (vmm/runstate.h: an enum with QEMU's names and
 * a table of allowed moves).
 *
 * It answers the run-state QMP commands (query-status, stop, cont,
 * system_powerdown, ...), gives the monitor's migration commands
 * (monitor/qmp_migration.h) their access to the VM, turns migration
 * progress into QMP events (MIGRATION, MIGRATION_PASS, STOP, RESUME) and
 * runs the incoming side on a thread of its own, so that the monitor stays
 * responsive throughout.
 */
#ifndef KV_CLI_RUN_CONTROL_H
#define KV_CLI_RUN_CONTROL_H

#include <stdbool.h>

#include "base/error.h"
#include "vmm/vm.h"

struct run_ctl;
struct kv_objects; /* io/objects.h */

/* vm must outlive the controller. */
int run_ctl_new(struct kv_vm *vm, bool verify_ram, struct run_ctl **out,
		struct kv_error *err);
/* The --object table tls-creds and tls-authz name (outlives rc). */
void run_ctl_set_objects(struct run_ctl *rc, const struct kv_objects *objects);
struct kv_qmp_tls;
/* Start the QMP monitor on qmp_uri (NULL: none), over TLS when tls has
 * credentials. Called once the VM is
 * booted or listening for its migration, so that a client who sees the
 * monitor can rely on the incoming listener being there. */
int run_ctl_start_monitor(struct run_ctl *rc, const char *qmp_uri,
			  const struct kv_qmp_tls *tls, struct kv_error *err);
void run_ctl_free(struct run_ctl *rc);

/* The VM booted a kernel and its vCPUs run. */
void run_ctl_booted(struct run_ctl *rc);

/* Listen on uri now, then receive a migration on the controller's
 * thread; on success the vCPUs start; on failure the process is asked to
 * exit with status 1. With uri "defer", wait for QMP migrate-incoming. */
int run_ctl_incoming(struct run_ctl *rc, const char *uri,
		     struct kv_error *err);

/* The incoming listener's bound address (real port for tcp port 0). */
const char *run_ctl_listen_uri(struct run_ctl *rc);

/* Main loop ended: the last event. exit_code: what the main loop ended with (0 power-off or quit, 128+N a
 * signal, <0 or 1 a failure): it decides SHUTDOWN's reason. */
void run_ctl_shutdown(struct run_ctl *rc, int exit_code);

#endif
