/* SPDX-License-Identifier: MIT */
/*
 * The glue between a VM and the migration engine: what a running VM is, in
 * sections, and how it stops, resumes and confirms.
 *
 * Sections (same registration on both sides, in this order):
 *   "ram"       instance 0  live, the RAM block "pc.ram" (both KVM slots)
 *   "cpu"       instance i  each vCPU's KVM state (kvm_state.h)
 *   "irqchip"   0           PIC master/slave + IOAPIC
 *   "pit"       0           the in-kernel PIT
 *   "serial"    0           the 16550 UART's registers
 *   "globalstate" 0         QEMU's: the source's run state before its stop
 *   "ram-verify" 0          with --verify-ram: size + the RAM digest
 *                           (kv_ram_verify_digest, kept as pages go)
 *   "kvmclock"  0           so the clock is read as late as possible
 *   "kvmig-verify" 0        with --verify-ram, last: the XXH3-128 of
 *                           every other START/FULL payload (savevm.h)
 * Source: the stop hook notes whether the vCPUs ran, pauses every vCPU and
 * captures all of this; complete writes it (the RAM digest once the last
 * page went); a failed or
 * cancelled switch-over resumes the vCPUs only if they ran before (an
 * operator's QMP stop is kept). Destination: the whole stream is loaded
 * and validated, then committed into KVM (VM state, every vCPU, serial),
 * and only then confirmed with SHUT(0); the vCPUs start right after if
 * the source's ran, else the guest stays paused (QMP cont starts it).
 */
#ifndef KV_VMM_VM_MIGRATION_H
#define KV_VMM_VM_MIGRATION_H

#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"
#include "migration/incoming.h"
#include "migration/migration.h"
#include "vmm/runstate.h"
#include "vmm/vm.h"

#define KV_VM_MACHINE_NAME "kvmig-pc-1"

struct kv_vm_mig_events {
	/* Status changes and finished passes (QMP events). Any thread. */
	void (*status)(void *opaque, enum kv_mig_status st);
	void (*pass)(void *opaque, uint64_t pass);
	/* The incoming migration's status changes (its own table,
	 * incoming.h): on the thread that listens or runs it. */
	void (*incoming_status)(void *opaque, enum kv_in_status st);
	void *opaque;
};

struct kv_vm_mig;
struct kv_vmstate_desc;

/* QEMU's "globalstate" section (docs/FORMAT.md section 9): be32 size (the
 * name's length with its NUL), then a 100-byte buffer holding the run
 * state's name, NUL-padded. state is not on the wire: set with the name,
 * or parsed from it by the post_load, which refuses a size outside
 * 1..100, a name with no NUL at size - 1 (or one before it) and a name
 * the run-state table does not know. */
#define KV_GLOBAL_STATE_BUF 100
struct kv_global_state {
	uint32_t size;
	uint8_t runstate[KV_GLOBAL_STATE_BUF];
	enum kv_runstate state;
};
const struct kv_vmstate_desc *kv_global_state_vmsd(void);
/* gs as a source saves it for state st. */
void kv_global_state_set(struct kv_global_state *gs, enum kv_runstate st);

int kv_vm_mig_new(struct kv_vm *vm, bool verify_ram,
		  const struct kv_vm_mig_events *ev, struct kv_vm_mig **out,
		  struct kv_error *err);
/* Cancels and joins a running migration first. */
void kv_vm_mig_free(struct kv_vm_mig *g);

/* Source: start migrating to uri on a thread of its own. Fails if one is
 * already running. On success the VM stays paused ("postmigrate"); on
 * failure or cancel it runs on if it ran (a guest paused with QMP stop
 * stays paused). */
int kv_vm_mig_start(struct kv_vm_mig *g, const char *uri,
		    const struct kv_mig_params *params, struct kv_error *err);
int kv_vm_mig_cancel(struct kv_vm_mig *g, struct kv_error *err);
/* QMP migrate-start-postcopy: the migration in progress switches to
 * postcopy (kv_mig_start_postcopy). */
int kv_vm_mig_start_postcopy(struct kv_vm_mig *g, struct kv_error *err);
/* Postcopy recovery: QMP migrate {uri, resume: true} (source),
 * migrate-recover {uri} (destination), migrate-pause (either side). */
int kv_vm_mig_resume(struct kv_vm_mig *g, const char *uri,
		     struct kv_error *err);
int kv_vm_mig_recover(struct kv_vm_mig *g, const char *uri,
		      struct kv_error *err);
int kv_vm_mig_pause(struct kv_vm_mig *g, struct kv_error *err);
/* Parameters for the next migration; downtime limit and bandwidth also
 * apply at once to one in progress, and an incoming migration reads them
 * when its source connects. Refused (-EBUSY, err says which and what to
 * do) when an incoming migration already runs with other multifd
 * settings. params NULL in start = these. */
int kv_vm_mig_set_params(struct kv_vm_mig *g,
			 const struct kv_mig_params *params,
			 struct kv_error *err);
void kv_vm_mig_get_params(struct kv_vm_mig *g, struct kv_mig_params *params);
/* Wait for a started migration's thread to end; returns its result. */
int kv_vm_mig_join(struct kv_vm_mig *g, struct kv_error *err);

struct kv_vm_mig_info {
	bool started;                 /* a migration was ever started */
	enum kv_mig_status status;
	struct kv_mig_stats stats;
	struct kv_mig_progress progress; /* last reported */
	uint64_t ram_total;
	char error[KV_ERROR_MSG_MAX]; /* when failed */
	int64_t pause_ms;             /* time to park the vCPUs */
	bool auto_converge;           /* the migration may throttle */
	bool incoming_started;        /* kv_vm_mig_listen succeeded */
	struct kv_incoming_stats incoming;
};
void kv_vm_mig_query(struct kv_vm_mig *g, struct kv_vm_mig_info *info);

/* Destination: open the listener now, so that "address in use" is
 * reported at once and a peer can connect as soon as this returns. */
int kv_vm_mig_listen(struct kv_vm_mig *g, const char *uri,
		     struct kv_error *err);
/* The address listened on ("tcp:HOST:PORT" with the real port for port
 * 0); empty before kv_vm_mig_listen. */
const char *kv_vm_mig_listen_uri(struct kv_vm_mig *g);
/* Destination: (listen on uri unless kv_vm_mig_listen did,) receive one
 * migration, validate it, commit it into KVM, confirm and start the
 * vCPUs if the source's ran (globalstate; else the guest stays paused).
 * Blocks. On failure nothing of the stream reaches the vCPUs.
 * Statuses go to events.incoming_status. */
int kv_vm_mig_incoming(struct kv_vm_mig *g, const char *uri,
		       struct kv_error *err);
/* The run state the guest took when the incoming migration completed:
 * running, or paused when the source's guest was paused (its globalstate
 * section). Call on the incoming migration's thread (its status events). */
enum kv_runstate kv_vm_mig_incoming_runstate(struct kv_vm_mig *g);
/* Abort a blocked kv_vm_mig_incoming (accept or load) from another
 * thread. */
void kv_vm_mig_incoming_abort(struct kv_vm_mig *g);

/* QMP x-migrate-settle: an undecided incoming migration (run: start the
 * guest here; discard: drop it) or outgoing one (run: resume here;
 * discard: give it up). -EBUSY with err set when nothing is undecided. */
int kv_vm_mig_settle(struct kv_vm_mig *g, enum kv_swo_settle how,
		     struct kv_error *err);

/* After an incoming migration completed: answer a source that did not
 * hear the confirmation, until kv_vm_mig_incoming_abort (blocks). */
void kv_vm_mig_answer_resolves(struct kv_vm_mig *g);

#endif
