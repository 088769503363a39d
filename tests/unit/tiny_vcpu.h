/* A one-vCPU test VM's setup shared by the unit tests that run real KVM
 * (test_kvm_dirty.c, test_uffd_wp_kvm.c). Include after <cmocka.h> and
 * <linux/kvm.h>. */
#ifndef KV_TEST_TINY_VCPU_H
#define KV_TEST_TINY_VCPU_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

/* The host's CPUID as the vCPU's. */
static inline void tiny_set_cpuid(int kvm, int vcpu)
{
	size_t sz =
	    sizeof(struct kvm_cpuid2) + 256 * sizeof(struct kvm_cpuid_entry2);
	struct kvm_cpuid2 *c = calloc(1, sz);

	c->nent = 256;
	assert_int_equal(ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c), 0);
	assert_int_equal(ioctl(vcpu, KVM_SET_CPUID2, c), 0);
	free(c);
}

/* Real mode, flat segments at 0, execution from ip. */
static inline void tiny_enter_real_mode(int vcpu, uint16_t ip)
{
	struct kvm_sregs sr;
	struct kvm_regs r;

	assert_int_equal(ioctl(vcpu, KVM_GET_SREGS, &sr), 0);
	sr.cs.base = 0;
	sr.cs.selector = 0;
	sr.ds.base = sr.es.base = sr.ss.base = 0;
	sr.ds.selector = sr.es.selector = sr.ss.selector = 0;
	assert_int_equal(ioctl(vcpu, KVM_SET_SREGS, &sr), 0);
	memset(&r, 0, sizeof(r));
	r.rip = ip;
	r.rflags = 2;
	r.rsp = 0xff00;
	assert_int_equal(ioctl(vcpu, KVM_SET_REGS, &r), 0);
}

#endif
