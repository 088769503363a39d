/* SPDX-License-Identifier: MIT */
/*
 * Guest CPUID: what KVM supports (KVM_GET_SUPPORTED_CPUID), with each
 * vCPU's own APIC id written into the leaves that report it. Must be set
 * (KVM_SET_CPUID2) before the guest enables long mode.
 */
#ifndef KV_VMM_CPUID_H
#define KV_VMM_CPUID_H

#include <linux/kvm.h>
#include <stdint.h>

#include "base/error.h"

/* KVM_GET_SUPPORTED_CPUID on the /dev/kvm fd; free() the result. */
struct kvm_cpuid2 *kv_cpuid_supported(int kvm_fd, struct kv_error *err);

/* Apply `base`, adjusted for vCPU `apic_id` of `ncpus`, to vcpu_fd. */
int kv_cpuid_set_vcpu(int vcpu_fd, const struct kvm_cpuid2 *base,
		      unsigned apic_id, int ncpus, struct kv_error *err);

/* Patch one copy of the table for a vCPU (exposed for tests). When
 * tsc_khz is non-zero, also offer the timing leaf 0x40000010 (EAX = TSC
 * kHz, EBX = LAPIC bus kHz, as VMware and QEMU do): c must have room for
 * one more entry than c->nent. */
void kv_cpuid_patch(struct kvm_cpuid2 *c, unsigned apic_id, int ncpus,
		    uint32_t tsc_khz);

#endif
