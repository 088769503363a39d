/* SPDX-License-Identifier: MIT */
/* vCPU creation, boot registers, the KVM_RUN loop and its exits. */
#define _GNU_SOURCE
#include "vmm/vcpu.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/log.h"
#include "vmm/cpuid.h"
#include "vmm/vm_internal.h"

#define KICK_SIGNAL SIGUSR1

enum exit_action { EXIT_CONTINUE, EXIT_PARK_CHECK, EXIT_STOP };

static void kick_handler(int sig)
{
	(void)sig; /* only there to make KVM_RUN return EINTR */
}

void kv_vcpu_install_kick_handler(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = kick_handler;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; /* no SA_RESTART: KVM_RUN must return */
	sigaction(KICK_SIGNAL, &sa, NULL);
}

int kv_vcpu_init(struct kv_vm *vm, int index, struct kv_error *err)
{
	struct kv_vcpu *v = &vm->vcpus[index];
	void *run;

	v->vm = vm;
	v->index = index;
	v->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)index);
	if (v->fd < 0) {
		v->fd = -1;
		return kv_error_set_errno(err, -errno, "KVM_CREATE_VCPU %d",
					  index);
	}
	run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED,
		   v->fd, 0);
	if (run == MAP_FAILED)
		return kv_error_set_errno(err, -errno,
					  "mapping kvm_run of vCPU %d", index);
	v->run = run;
	return kv_cpuid_set_vcpu(v->fd, vm->cpuid, (unsigned)index, vm->ncpus,
				 err);
}

void kv_vcpu_fini(struct kv_vcpu *v)
{
	if (v->run)
		munmap(v->run, v->vm->run_size);
	if (v->fd >= 0)
		close(v->fd);
	v->run = NULL;
	v->fd = -1;
}

static void flat_segment(struct kvm_segment *s, uint16_t selector, uint8_t type)
{
	memset(s, 0, sizeof(*s));
	s->base = 0;
	s->limit = 0xffffffff;
	s->selector = selector;
	s->type = type;
	s->present = 1;
	s->dpl = 0;
	s->db = 1;
	s->s = 1;
	s->g = 1;
}

int kv_vcpu_set_boot_regs(struct kv_vcpu *v, uint32_t entry, uint32_t info,
			  struct kv_error *err)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;

	if (ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
		return kv_error_set_errno(err, -errno, "KVM_GET_SREGS");
	/* Multiboot machine state: flat 4 GiB code (execute/read) and data
	 * (read/write) segments, protected mode, paging off. */
	flat_segment(&sregs.cs, 0x10, 0xb);
	flat_segment(&sregs.ds, 0x18, 0x3);
	sregs.es = sregs.ds;
	sregs.fs = sregs.ds;
	sregs.gs = sregs.ds;
	sregs.ss = sregs.ds;
	sregs.cr0 = 0x11; /* PE | ET */
	sregs.cr4 = 0;
	sregs.efer = 0;
	if (ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0)
		return kv_error_set_errno(err, -errno, "KVM_SET_SREGS");
	memset(&regs, 0, sizeof(regs));
	regs.rflags = 0x2;
	regs.rip = entry;
	regs.rax = 0x2BADB002;
	regs.rbx = info;
	if (ioctl(v->fd, KVM_SET_REGS, &regs) < 0)
		return kv_error_set_errno(err, -errno, "KVM_SET_REGS");
	return 0;
}

void kv_vcpu_format_regs(int vcpu_fd, char *buf, size_t len)
{
	struct kvm_regs r;
	struct kvm_sregs s;

	if (ioctl(vcpu_fd, KVM_GET_REGS, &r) < 0 ||
	    ioctl(vcpu_fd, KVM_GET_SREGS, &s) < 0) {
		snprintf(buf, len, "(registers unavailable: %s)",
			 strerror(errno));
		return;
	}
	snprintf(buf, len,
		 "rip=%llx rsp=%llx rflags=%llx rax=%llx rbx=%llx rcx=%llx rdx=%llx rsi=%llx rdi=%llx rbp=%llx cs=%x:%llx ss=%x cr0=%llx cr2=%llx cr3=%llx cr4=%llx efer=%llx",
		 r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi,
		 r.rdi, r.rbp, s.cs.selector, s.cs.base, s.ss.selector, s.cr0,
		 s.cr2, s.cr3, s.cr4, s.efer);
}

/* End the VM because of this vCPU, registers in the message. */
static void vcpu_fail(struct kv_vcpu *v, const char *what)
{
	struct kv_error err;
	char regs[320];

	kv_vcpu_format_regs(v->fd, regs, sizeof(regs));
	kv_error_clear(&err);
	kv_error_set(&err, -EFAULT, "vCPU %d: %s; %s", v->index, what, regs);
	kv_err("vcpu", "%s", err.msg);
	kv_vm_finish(v->vm, err.code, &err);
}

static enum exit_action handle_io(struct kv_vcpu *v)
{
	struct kvm_run *run = v->run;
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	bool is_write = run->io.direction == KVM_EXIT_IO_OUT;

	/* String instructions (rep outsb) arrive as count back-to-back
	 * elements. */
	for (uint32_t i = 0; i < run->io.count; i++, data += run->io.size) {
		if (kv_pio_access(v->vm, run->io.port, is_write, run->io.size,
				  data)) {
			kv_info("vcpu", "vCPU %d: guest powered off", v->index);
			kv_vm_finish(v->vm, 0, NULL);
			return EXIT_STOP;
		}
	}
	return EXIT_CONTINUE;
}

static enum exit_action handle_mmio(struct kv_vcpu *v)
{
	struct kvm_run *run = v->run;

	if (!run->mmio.is_write)
		memset(run->mmio.data, 0xff, sizeof(run->mmio.data));
	if (!__atomic_exchange_n(&v->vm->mmio_logged, 1, __ATOMIC_RELAXED))
		kv_warn("vcpu",
			"vCPU %d: unhandled MMIO %s of %u bytes at 0x%llx (logged once)",
			v->index, run->mmio.is_write ? "write" : "read",
			run->mmio.len, (unsigned long long)run->mmio.phys_addr);
	return EXIT_CONTINUE;
}

static enum exit_action handle_ring_full(struct kv_vcpu *v)
{
	const struct kv_vm_dirty_hooks *h =
	    __atomic_load_n(&v->vm->hooks, __ATOMIC_ACQUIRE);
	struct kv_error err;

	kv_error_clear(&err);
	if (!h || !h->ring_full) {
		vcpu_fail(v, "dirty ring full and no tracker to harvest it");
		return EXIT_STOP;
	}
	if (h->ring_full(h->opaque, v->index, &err) < 0) {
		kv_error_prefix(&err, "vCPU %d: harvesting its dirty ring",
				v->index);
		kv_vm_finish(v->vm, err.code, &err);
		return EXIT_STOP;
	}
	return EXIT_CONTINUE;
}

static enum exit_action handle_system_event(struct kv_vcpu *v)
{
	char what[64];

	if (v->run->system_event.type == KVM_SYSTEM_EVENT_SHUTDOWN) {
		kv_vm_finish(v->vm, 0, NULL);
		return EXIT_STOP;
	}
	snprintf(what, sizeof(what), "system event %u (reset or crash)",
		 v->run->system_event.type);
	vcpu_fail(v, what);
	return EXIT_STOP;
}

static enum exit_action handle_exit(struct kv_vcpu *v)
{
	struct kvm_run *run = v->run;
	char what[128];

	switch (run->exit_reason) {
	case KVM_EXIT_IO:
		return handle_io(v);
	case KVM_EXIT_MMIO:
		return handle_mmio(v);
	case KVM_EXIT_HLT:
		/* With the in-kernel LAPIC the kernel handles HLT; seeing it
		 * means nothing to do but run again. */
		return EXIT_CONTINUE;
	case KVM_EXIT_INTR:
		return EXIT_PARK_CHECK;
	case KVM_EXIT_DIRTY_RING_FULL:
		return handle_ring_full(v);
	case KVM_EXIT_SYSTEM_EVENT:
		return handle_system_event(v);
	case KVM_EXIT_SHUTDOWN:
		vcpu_fail(v, "guest triple fault (KVM_EXIT_SHUTDOWN)");
		return EXIT_STOP;
	case KVM_EXIT_INTERNAL_ERROR:
		snprintf(what, sizeof(what),
			 "KVM internal error, suberror %u (ndata %u, data0 0x%llx)",
			 run->internal.suberror, run->internal.ndata,
			 run->internal.ndata
			     ? (unsigned long long)run->internal.data[0]
			     : 0ULL);
		vcpu_fail(v, what);
		return EXIT_STOP;
	case KVM_EXIT_FAIL_ENTRY:
		snprintf(what, sizeof(what), "VM entry failed, reason 0x%llx",
			 (unsigned long long)
			     run->fail_entry.hardware_entry_failure_reason);
		vcpu_fail(v, what);
		return EXIT_STOP;
	default:
		snprintf(what, sizeof(what), "unexpected KVM exit reason %u",
			 run->exit_reason);
		vcpu_fail(v, what);
		return EXIT_STOP;
	}
}

/* After KVM_RUN returned EINTR: serve a throttle kick (sleep), park while
 * a pause is requested. Returns false when the thread must leave. */
static bool park_if_asked(struct kv_vcpu *v)
{
	struct kv_vm *vm = v->vm;
	bool keep_running;

	pthread_mutex_lock(&vm->lock);
	kv_cpu_throttle_vcpu_locked(v);
	if (vm->pause_req && !vm->stop_req) {
		kv_cpu_throttle_forget_locked(v);
		vm->parked++;
		pthread_cond_broadcast(&vm->cond);
		while (vm->pause_req && !vm->stop_req)
			pthread_cond_wait(&vm->cond, &vm->lock);
		vm->parked--;
	}
	keep_running = !vm->stop_req;
	/* A throttle kick set immediate_exit outside any pause; a pause or
	 * stop sets it under this lock, and resume clears it itself. */
	if (keep_running && !vm->pause_req)
		__atomic_store_n(&v->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(&vm->lock);
	return keep_running;
}

static void thread_gone(struct kv_vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	vm->live_threads--;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
}

static void *vcpu_main(void *arg)
{
	struct kv_vcpu *v = arg;
	sigset_t kick;
	char what[96];

	__atomic_store_n(&v->tid, (int)gettid(), __ATOMIC_RELEASE);
	sigemptyset(&kick);
	sigaddset(&kick, KICK_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &kick, NULL);

	for (;;) {
		enum exit_action a;

		if (ioctl(v->fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN) {
				if (!park_if_asked(v))
					break;
				continue;
			}
			snprintf(what, sizeof(what), "KVM_RUN failed: %s",
				 strerror(errno));
			vcpu_fail(v, what);
			break;
		}
		a = handle_exit(v);
		if (a == EXIT_STOP)
			break;
		if (a == EXIT_PARK_CHECK && !park_if_asked(v))
			break;
	}
	thread_gone(v->vm);
	return NULL;
}

int kv_vcpu_start_thread(struct kv_vcpu *v, struct kv_error *err)
{
	char name[16];
	int rc = pthread_create(&v->thread, NULL, vcpu_main, v);

	if (rc)
		return kv_error_set_errno(
		    err, -rc, "creating the thread of vCPU %d", v->index);
	v->thread_started = true;
	snprintf(name, sizeof(name), "vcpu%d", v->index);
	pthread_setname_np(v->thread, name);
	return 0;
}

void kv_vm_kick_all(struct kv_vm *vm)
{
	for (int i = 0; i < vm->ncpus; i++) {
		struct kv_vcpu *v = &vm->vcpus[i];

		if (v->run)
			__atomic_store_n(&v->run->immediate_exit, 1,
					 __ATOMIC_SEQ_CST);
	}
	for (int i = 0; i < vm->ncpus; i++)
		if (vm->vcpus[i].thread_started)
			pthread_kill(vm->vcpus[i].thread, KICK_SIGNAL);
}
