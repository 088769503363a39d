/* SPDX-License-Identifier: MIT */
/* Guest CPUID from KVM's supported set, per-vCPU APIC ids. */
#include "vmm/cpuid.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#define CPUID_MAX_ENTRIES      1024
#define CPUID_1_ECX_HYPERVISOR (1u << 31)
#define CPUID_1_EDX_HTT	       (1u << 28)

static size_t cpuid_bytes(unsigned nent)
{
	return sizeof(struct kvm_cpuid2) +
	       nent * sizeof(struct kvm_cpuid_entry2);
}

struct kvm_cpuid2 *kv_cpuid_supported(int kvm_fd, struct kv_error *err)
{
	for (unsigned nent = 64; nent <= CPUID_MAX_ENTRIES; nent *= 2) {
		struct kvm_cpuid2 *c = calloc(1, cpuid_bytes(nent));

		if (!c) {
			kv_error_set(err, -ENOMEM, "CPUID table");
			return NULL;
		}
		c->nent = nent;
		if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0)
			return c;
		free(c);
		if (errno != E2BIG) {
			kv_error_set_errno(err, -errno,
					   "KVM_GET_SUPPORTED_CPUID");
			return NULL;
		}
	}
	kv_error_set(err, -E2BIG,
		     "KVM_GET_SUPPORTED_CPUID: more than %d entries",
		     CPUID_MAX_ENTRIES);
	return NULL;
}

#define CPUID_HV_BASE	0x40000000U
#define CPUID_HV_TIMING 0x40000010U
/* KVM's in-kernel LAPIC counts at 1 GHz. */
#define LAPIC_BUS_KHZ 1000000U

static void add_timing_leaf(struct kvm_cpuid2 *c, uint32_t tsc_khz)
{
	struct kvm_cpuid_entry2 *base = NULL, *e;

	for (unsigned i = 0; i < c->nent; i++) {
		if (c->entries[i].function == CPUID_HV_TIMING)
			return; /* KVM offers its own */
		if (c->entries[i].function == CPUID_HV_BASE)
			base = &c->entries[i];
	}
	if (!base)
		return; /* no hypervisor leaves at all */
	if (base->eax < CPUID_HV_TIMING)
		base->eax = CPUID_HV_TIMING;
	e = &c->entries[c->nent++];
	memset(e, 0, sizeof(*e));
	e->function = CPUID_HV_TIMING;
	e->eax = tsc_khz;
	e->ebx = LAPIC_BUS_KHZ;
}

void kv_cpuid_patch(struct kvm_cpuid2 *c, unsigned apic_id, int ncpus,
		    uint32_t tsc_khz)
{
	if (tsc_khz)
		add_timing_leaf(c, tsc_khz);
	for (unsigned i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];

		switch (e->function) {
		case 1:
			/* EBX[31:24] initial APIC id, [23:16] logical
			 * processors per package. */
			e->ebx = (e->ebx & 0x0000ffff) | (apic_id << 24) |
				 ((unsigned)(ncpus & 0xff) << 16);
			e->ecx |= CPUID_1_ECX_HYPERVISOR;
			if (ncpus > 1)
				e->edx |= CPUID_1_EDX_HTT;
			break;
		case 0xb:
		case 0x1f:
			/* Extended topology: EDX is the x2APIC id on
			 * every sub-leaf. */
			e->edx = apic_id;
			break;
		default:
			break;
		}
	}
}

int kv_cpuid_set_vcpu(int vcpu_fd, const struct kvm_cpuid2 *base,
		      unsigned apic_id, int ncpus, struct kv_error *err)
{
	size_t n = cpuid_bytes(base->nent);
	struct kvm_cpuid2 *c = malloc(cpuid_bytes(base->nent + 1));
	int khz = ioctl(vcpu_fd, KVM_GET_TSC_KHZ, 0);
	int rc = 0;

	if (!c)
		return kv_error_set(err, -ENOMEM, "CPUID table");
	memcpy(c, base, n);
	kv_cpuid_patch(c, apic_id, ncpus, khz > 0 ? (uint32_t)khz : 0);
	if (ioctl(vcpu_fd, KVM_SET_CPUID2, c) < 0)
		rc = kv_error_set_errno(err, -errno,
					"KVM_SET_CPUID2 on vCPU %u", apic_id);
	free(c);
	return rc;
}
