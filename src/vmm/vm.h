/* SPDX-License-Identifier: MIT */
/*
 * The virtual machine: KVM VM, guest RAM, vCPU threads and the few devices
 * the guest needs (in-kernel LAPIC/IOAPIC/PIC and PIT, a 16550 UART, a
 * power-off port). Owned by one `kvmig run` process; no globals.
 *
 * Guest physical layout (docs/DESIGN.md draws it):
 *   [0, lowmem)            RAM, lowmem = min(size, 3 GiB)
 *   [3 GiB, 4 GiB)         hole: IOAPIC 0xfec00000, LAPIC 0xfee00000
 *   [4 GiB, 4 GiB + rest)  RAM above the hole, when size > 3 GiB
 * One RAM block "pc.ram" (one host mapping) backs both KVM memory slots;
 * block offset = gpa below the hole, gpa - 1 GiB above it.
 *
 * Lifecycle: kv_vm_create -> (kv_vm_boot_kernel | incoming load) ->
 * kv_vm_start -> kv_vm_pause / kv_vm_resume ... -> kv_vm_destroy.
 */
#ifndef KV_VMM_VM_H
#define KV_VMM_VM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

#define KV_VM_MAX_VCPUS 64
#define KV_VM_HOLE_START 0xc0000000ULL
#define KV_VM_HIGH_START 0x100000000ULL
#define KV_IOAPIC_ADDR 0xfec00000U
#define KV_LAPIC_ADDR 0xfee00000U
/* Power off: a 16-bit write of KV_POWEROFF_VALUE to either port (the second
 * is where QEMU's i440fx machine has its ACPI PM1a control register, so the
 * same guest powers off under QEMU). */
#define KV_POWEROFF_PORT 0x604
#define KV_POWEROFF_PORT_PIIX 0xb004
#define KV_POWEROFF_VALUE 0x2000

enum kv_dirty_mode { KV_DIRTY_LOG, KV_DIRTY_RING };

struct kv_vm_config {
	uint64_t mem_size;          /* bytes, multiple of 2 MiB */
	int ncpus;
	const char *kernel;         /* multiboot v1 ELF; may be NULL when incoming */
	const char *cmdline;        /* multiboot command line */
	const char *console;        /* "stdio" or "file:PATH" */
	enum kv_dirty_mode dirty_mode;
	uint32_t dirty_ring_entries; /* per vCPU, power of two */
};

struct kv_vm;

int kv_vm_create(const struct kv_vm_config *cfg, struct kv_vm **out,
		 struct kv_error *err);
void kv_vm_destroy(struct kv_vm *vm);

/* Load the kernel, build multiboot info + MP table, set the boot vCPU's
 * registers (32-bit protected mode, EAX = 0x2BADB002, EBX = info). */
int kv_vm_boot_kernel(struct kv_vm *vm, struct kv_error *err);
/* For a destination started with the source's command line (--kernel
 * plus --incoming, QEMU's convention): check that the kernel could boot
 * in this VM (readable, a multiboot kernel whose segments fit its RAM,
 * the command line fits) without writing guest RAM or vCPU state. As
 * QEMU does not load ROMs on an incoming migration, RAM stays fresh for
 * the stream, which brings the kernel along with everything else; a zero
 * page the loader skips must read as zero. 0 when there is no kernel. */
int kv_vm_check_kernel(struct kv_vm *vm, struct kv_error *err);

/* Start (or restart after kv_vm_pause) every vCPU thread. */
int kv_vm_start(struct kv_vm *vm, struct kv_error *err);
/* Kick every vCPU out of KVM_RUN (signal + immediate_exit) and return once
 * all are parked; their state can then be read or written. */
int kv_vm_pause(struct kv_vm *vm, struct kv_error *err);
void kv_vm_resume(struct kv_vm *vm);
bool kv_vm_running(const struct kv_vm *vm);

/* Block until the guest powers off (returns 0), a vCPU fails (<0, err set)
 * or kv_vm_request_exit() is called (returns the given code). */
int kv_vm_wait(struct kv_vm *vm, struct kv_error *err);
void kv_vm_request_exit(struct kv_vm *vm, int code);

/* For the migration glue (vmm/vm_migration.c). */
int kv_vm_fd(const struct kv_vm *vm);
int kv_vm_ncpus(const struct kv_vm *vm);
int kv_vm_vcpu_fd(const struct kv_vm *vm, int index);
/* The Linux thread id of a vCPU's thread (QMP query-cpus-fast), 0 before
 * the thread first runs, -1 for an index out of range. */
int kv_vm_vcpu_tid(const struct kv_vm *vm, int index);
void *kv_vm_ram(const struct kv_vm *vm);         /* host address of "pc.ram" */
uint64_t kv_vm_ram_size(const struct kv_vm *vm);
struct kv_serial *kv_vm_serial(struct kv_vm *vm);
/* Mark guest RAM the VMM itself wrote as dirty (offset in "pc.ram"). */
void kv_vm_mark_dirty(struct kv_vm *vm, uint64_t ram_offset, uint64_t len);

/* The /dev/kvm fd (for KVM_GET_MSR_INDEX_LIST and friends). */
int kv_vm_kvm_fd(const struct kv_vm *vm);
/* The configuration the VM was created with. */
const struct kv_vm_config *kv_vm_get_config(const struct kv_vm *vm);

/* The KVM memory slots backing "pc.ram" (to build a dirty tracker). */
struct kv_kvm_slot;
const struct kv_kvm_slot *kv_vm_slots(const struct kv_vm *vm, int *n);

/* Dirty-tracking hooks installed by the migration glue. `mark` receives
 * every range the VMM writes into guest RAM (kv_vm_mark_dirty); `ring_full`
 * runs on the vCPU's own thread at KVM_EXIT_DIRTY_RING_FULL (with the ring
 * tracker: kv_kvm_ring_harvest) and a negative return fails the VM. The
 * struct must outlive its installation; NULL uninstalls. Install at any
 * time (vCPU threads load the pointer atomically); uninstall with the vCPUs
 * paused before freeing what the hooks use, as a vCPU may be inside one. */
struct kv_vm_dirty_hooks {
	void (*mark)(void *opaque, uint64_t ram_offset, uint64_t len);
	int (*ring_full)(void *opaque, int vcpu_index, struct kv_error *err);
	void *opaque;
};
void kv_vm_set_dirty_hooks(struct kv_vm *vm,
			   const struct kv_vm_dirty_hooks *hooks);

/* Throttle every vCPU to run (100 - pct) % of the time (auto-converge):
 * each sleeps pct/(100-pct) x 10 ms after every 10 ms it runs. pct 0..99,
 * 0 stops throttling; -EINVAL with a message otherwise. Any thread, any
 * time (also before start and while paused: it applies while running). A
 * pause does not wait for a sleeping vCPU; kv_vm_destroy stops it. */
int kv_vm_set_throttle(struct kv_vm *vm, unsigned pct, struct kv_error *err);
unsigned kv_vm_throttle_pct(const struct kv_vm *vm);
/* Total time the vCPUs spent in throttle sleeps (all vCPUs added). */
uint64_t kv_vm_throttle_slept_ns(const struct kv_vm *vm);

/* How long the last kv_vm_pause took, from the request until every vCPU
 * was parked (part of the downtime). */
int64_t kv_vm_last_pause_ns(const struct kv_vm *vm);

#endif
