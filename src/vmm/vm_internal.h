/* SPDX-License-Identifier: MIT */
/*
 * The VM's insides, shared by vm.c (lifecycle), vcpu.c (threads, exits)
 * and pio.c (port I/O). Not for users of vm.h.
 */
#ifndef KV_VMM_VM_INTERNAL_H
#define KV_VMM_VM_INTERNAL_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "vmm/cpu_throttle.h"
#include "vmm/memory.h"
#include "vmm/serial.h"
#include "vmm/vm.h"

struct kv_vcpu {
	struct kv_vm *vm;
	int index;
	int fd;
	struct kvm_run *run;
	pthread_t thread;
	bool thread_started;
	int tid; /* the thread's Linux id once it runs, else 0 (atomic) */
};

struct kv_vm {
	struct kv_vm_config cfg; /* strings point at the copies below */
	char *kernel;
	char *cmdline;
	char *console;
	int kvm_fd;
	int vm_fd;
	size_t run_size;
	struct kv_gmem mem;
	struct kvm_cpuid2 *cpuid;
	int ncpus;
	struct kv_vcpu vcpus[KV_VM_MAX_VCPUS];
	struct kv_serial *serial;
	int console_fd;
	bool console_owned;
	/* Set by the migration glue; read with atomic loads. */
	const struct kv_vm_dirty_hooks *hooks;

	pthread_mutex_t lock;
	pthread_cond_t cond; /* any change below */
	bool booted;
	bool started; /* vCPU threads exist */
	bool pause_req;
	bool stop_req;	  /* threads must leave */
	int parked;	  /* threads waiting in the pause */
	int live_threads; /* threads not yet returned */
	bool finished;	  /* kv_vm_wait may return */
	int exit_code;
	struct kv_error fail;
	int64_t last_pause_ns;
	struct kv_cpu_throttle throttle; /* auto-converge (cpu_throttle.c) */

	uint64_t unhandled_io; /* atomic */
	int mmio_logged;       /* atomic */
};

/* vcpu.c */
int kv_vcpu_init(struct kv_vm *vm, int index, struct kv_error *err);
void kv_vcpu_fini(struct kv_vcpu *v);
int kv_vcpu_start_thread(struct kv_vcpu *v, struct kv_error *err);
int kv_vcpu_set_boot_regs(struct kv_vcpu *v, uint32_t entry, uint32_t info,
			  struct kv_error *err);
/* Force every vCPU out of KVM_RUN (immediate_exit + signal). Lock held. */
void kv_vm_kick_all(struct kv_vm *vm);
void kv_vcpu_install_kick_handler(void);

/* vm.c: end the VM; first caller's code and error win. */
void kv_vm_finish(struct kv_vm *vm, int code, const struct kv_error *err);

/* pio.c: one port access from a vCPU. Returns 1 if the guest asked to
 * power off, 0 otherwise. */
int kv_pio_access(struct kv_vm *vm, uint16_t port, bool is_write, int size,
		  uint8_t *data);

#endif
