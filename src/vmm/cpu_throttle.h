/* SPDX-License-Identifier: MIT */
/*
 * vCPU throttling for auto-converge (the mechanism; the policy is
 * migration/auto_converge.h). Users call kv_vm_set_throttle (vm.h); this
 * header is the VMM's inside.
 *
 * At p percent every vCPU sleeps p/(100-p) x 10 ms after each 10 ms
 * timeslice it runs, i.e. its thread is off the CPU p % of the time, as
 * QEMU's cpu_throttle. A throttle thread per VM (running while p > 0) kicks
 * the vCPUs every 10 ms / (1 - p/100): it marks each one pending and uses
 * the pause kick (immediate_exit + signal). A vCPU back from KVM_RUN with
 * EINTR finds its mark and sleeps on the VM's condition variable, so a
 * pause, a stop or a lower throttle ends the sleep at once.
 *
 * Locks: `ctl` serialises kv_vm_set_throttle; `lock` guards pct and quit
 * for the throttle thread's waits; `pending` is guarded by the VM lock.
 */
#ifndef KV_VMM_CPU_THROTTLE_H
#define KV_VMM_CPU_THROTTLE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "vmm/vm.h"

#define KV_THROTTLE_TIMESLICE_NS (10 * 1000 * 1000LL)
#define KV_THROTTLE_PCT_MAX	 99

struct kv_vcpu;

struct kv_cpu_throttle {
	pthread_mutex_t ctl;
	pthread_mutex_t lock;
	pthread_cond_t cond; /* CLOCK_MONOTONIC; pct or quit changed */
	unsigned pct;	     /* written under lock, read atomically */
	bool quit;
	bool thread_started;
	pthread_t thread;
	bool pending[KV_VM_MAX_VCPUS]; /* under the VM lock */
	uint64_t kicks;		       /* atomic */
	uint64_t slept_ns;	       /* atomic, all vCPUs together */
};

/* How long a vCPU sleeps after each timeslice, and how often the throttle
 * thread kicks, at pct percent (1..99). */
int64_t kv_cpu_throttle_sleep_ns(unsigned pct);
int64_t kv_cpu_throttle_period_ns(unsigned pct);

/* vm.c: at creation (before anything can fail), and at destroy: stop
 * before the vCPU threads are joined, fini last. */
void kv_cpu_throttle_init(struct kv_cpu_throttle *t);
void kv_cpu_throttle_stop(struct kv_vm *vm);
void kv_cpu_throttle_fini(struct kv_cpu_throttle *t);

/* vcpu.c, VM lock held, after KVM_RUN returned EINTR: if the throttle
 * kicked this vCPU, sleep its share (the lock is released while waiting);
 * returns early on a pause or stop request or a lower throttle. */
void kv_cpu_throttle_vcpu_locked(struct kv_vcpu *v);
/* vcpu.c, VM lock held, when parking: a kick before a pause is void. */
void kv_cpu_throttle_forget_locked(struct kv_vcpu *v);

#endif
