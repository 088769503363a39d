/* SPDX-License-Identifier: MIT */
/*
 * The KVM-held state of a VM, as plain structs with field descriptors
 * (migration/savevm/vmstate.h), read and written through KVM ioctls on raw fds so
 * that this file knows nothing of the VMM's threads.
 *
 * Per vCPU (section "cpu", instance = vCPU index): general registers,
 * special registers (segments, descriptor tables, control registers, EFER,
 * APIC base, pending interrupt bitmap), FPU/XSAVE, XCRs, every MSR KVM lists
 * as saveable (KVM_GET_MSR_INDEX_LIST, filtered by what KVM_GET_MSRS
 * accepts; TSC included), LAPIC registers, vCPU events, MP state, debug
 * registers.
 * VM-wide: PIC master and slave and IOAPIC (section "irqchip"), PIT
 * ("pit"), kvmclock ("kvmclock").
 *
 * Restore order matters to KVM and is encoded in kv_vcpu_state_put():
 * sregs, regs, xsave, xcrs, msrs, lapic, debugregs, mp_state, events (the
 * TSC deadline MSR is written once more right after the LAPIC).
 *
 * Clocks: kv_vm_state_put() sets kvmclock to the saved value advanced by
 * the host time since kv_vm_state_get() (KVM_CLOCK_REALTIME when KVM gave
 * a stamp, else our own CLOCK_REALTIME stamp): under PVM the guest's TSC
 * is the host's and cannot be set, so it runs on through the downtime and
 * kvmclock follows it. kvm_state.c explains the choice.
 */
#ifndef KV_VMM_KVM_STATE_H
#define KV_VMM_KVM_STATE_H

#include <stdint.h>

#include "base/error.h"
#include "migration/savevm/vmstate.h"

#define KV_MAX_SAVED_MSRS 128
#define KV_XSAVE_BYTES 4096
#define KV_LAPIC_BYTES 1024

struct kv_vcpu_state; /* defined in kvm_state.c: opaque to users */

/* Allocate and free state holders (one per vCPU). */
struct kv_vcpu_state *kv_vcpu_state_new(void);
void kv_vcpu_state_free(struct kv_vcpu_state *st);

/* Which MSRs to save: built once per VM from KVM_GET_MSR_INDEX_LIST on the
 * /dev/kvm fd, probing each with KVM_GET_MSRS on a vCPU fd. */
struct kv_msr_list;
struct kv_msr_list *kv_msr_list_probe(int kvm_fd, int vcpu_fd,
				      struct kv_error *err);
void kv_msr_list_free(struct kv_msr_list *l);
/* The probed MSR indices (for logs and tests). */
uint32_t kv_msr_list_count(const struct kv_msr_list *l);
uint32_t kv_msr_list_index(const struct kv_msr_list *l, uint32_t i);

/* The loader checks every MSR index in a stream against this list (an MSR
 * this host cannot restore is an error naming it): bind the destination's
 * probed list to each state holder before loading into it.
 * kv_vcpu_state_get() binds the list it is given. */
void kv_vcpu_state_bind_msrs(struct kv_vcpu_state *st,
			     const struct kv_msr_list *msrs);
/* Read access to the saved MSRs (diagnosis, tests). */
uint32_t kv_vcpu_state_msr_count(const struct kv_vcpu_state *st);
int kv_vcpu_state_msr(const struct kv_vcpu_state *st, uint32_t i,
		      uint32_t *index, uint64_t *data);

/* Read every piece of a stopped vCPU's state into st. */
int kv_vcpu_state_get(int vcpu_fd, const struct kv_msr_list *msrs,
		      struct kv_vcpu_state *st, struct kv_error *err);
/* Write st into a (not running) vCPU, in the order KVM needs. */
int kv_vcpu_state_put(int vcpu_fd, const struct kv_vcpu_state *st,
		      struct kv_error *err);
/* The descriptor for section "cpu" (opaque = struct kv_vcpu_state *). */
const struct kv_vmstate_desc *kv_vcpu_state_vmsd(void);

struct kv_vm_state; /* irqchip + pit + clock */
struct kv_vm_state *kv_vm_state_new(void);
void kv_vm_state_free(struct kv_vm_state *st);
int kv_vm_state_get(int vm_fd, struct kv_vm_state *st, struct kv_error *err);
int kv_vm_state_put(int vm_fd, const struct kv_vm_state *st,
		    struct kv_error *err);
/* Descriptors for sections "irqchip", "pit", "kvmclock"
 * (opaque = struct kv_vm_state *). */
const struct kv_vmstate_desc *kv_irqchip_vmsd(void);
const struct kv_vmstate_desc *kv_pit_vmsd(void);
const struct kv_vmstate_desc *kv_kvmclock_vmsd(void);

#endif
