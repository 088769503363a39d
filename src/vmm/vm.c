/* SPDX-License-Identifier: MIT */
/* The VM: KVM setup, lifecycle (boot, start, pause, resume, wait). */
#define _GNU_SOURCE
#include "vmm/vm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/log.h"
#include "vmm/cpuid.h"
#include "vmm/kvm_dirty.h"
#include "vmm/mptable.h"
#include "vmm/multiboot.h"
#include "vmm/vm_internal.h"

#define KVM_DEVICE "/dev/kvm"
/* TSS (3 pages) and EPT identity map page: in the hole, clear of the
 * IOAPIC (0xfec00000) and LAPIC (0xfee00000) pages. */
#define KV_TSS_ADDR		0xfeffd000UL
#define KV_IDENTITY_MAP_ADDR	0xfeffc000ULL
#define KV_IOAPIC_PINS		24
#define KV_DEFAULT_RING_ENTRIES 16384
#define PAUSE_REKICK_NS		(100 * 1000 * 1000LL)
#define PAUSE_TIMEOUT_NS	(10 * 1000 * 1000 * 1000LL)

struct kvm_cap_need {
	int cap;
	const char *name;
};

static const struct kvm_cap_need base_caps[] = {
    {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"},
    {KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR"},
    {KVM_CAP_SET_IDENTITY_MAP_ADDR, "KVM_CAP_SET_IDENTITY_MAP_ADDR"},
    {KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"},
    {KVM_CAP_IRQ_ROUTING, "KVM_CAP_IRQ_ROUTING"},
    {KVM_CAP_PIT2, "KVM_CAP_PIT2"},
    {KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"},
    {KVM_CAP_MP_STATE, "KVM_CAP_MP_STATE"},
    {KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"},
    {0, NULL},
};

static int check_caps(int kvm_fd, const struct kvm_cap_need *caps,
		      struct kv_error *err)
{
	for (; caps->name; caps++)
		if (ioctl(kvm_fd, KVM_CHECK_EXTENSION, caps->cap) <= 0)
			return kv_error_set(err, -ENOTSUP,
					    "this KVM lacks %s, which kvmig needs",
					    caps->name);
	return 0;
}

static int open_kvm(struct kv_vm *vm, struct kv_error *err)
{
	int version;

	vm->kvm_fd = open(KVM_DEVICE, O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0) {
		int e = -errno;

		if (e == -ENOENT)
			return kv_error_set(err, e,
					    "no %s: KVM is not available on this host (kvm module not loaded?)",
					    KVM_DEVICE);
		return kv_error_set_errno(err, e, "opening %s", KVM_DEVICE);
	}
	version = ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0);
	if (version != KVM_API_VERSION)
		return kv_error_set(err, -ENOTSUP,
				    "%s speaks KVM API version %d, kvmig needs %d",
				    KVM_DEVICE, version, KVM_API_VERSION);
	if (check_caps(vm->kvm_fd, base_caps, err))
		return -ENOTSUP;
	if (vm->cfg.dirty_mode == KV_DIRTY_RING &&
	    ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING) <= 0)
		return kv_error_set(err, -ENOTSUP,
				    "this KVM lacks KVM_CAP_DIRTY_LOG_RING (needed by --dirty-tracker ring)");
	if (vm->cfg.dirty_mode == KV_DIRTY_LOG &&
	    ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION,
		  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) <= 0)
		return kv_error_set(err, -ENOTSUP,
				    "this KVM lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (needed by the dirty log tracker)");
	vm->run_size = (size_t)ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if ((long)vm->run_size <= 0)
		return kv_error_set_errno(err, -errno,
					  "KVM_GET_VCPU_MMAP_SIZE");
	return 0;
}

/* The PC's interrupt wiring, as QEMU sets it: ISA IRQs to the 8259s, GSI
 * 0-23 to the IOAPIC pins of the same number except the timer (GSI 0) on
 * pin 2, where pin 0 carries the 8259's ExtINT. The MP table says so. */
static int set_gsi_routing(struct kv_vm *vm, struct kv_error *err)
{
	size_t max = 16 + KV_IOAPIC_PINS;
	struct kvm_irq_routing *r =
	    calloc(1, sizeof(*r) + max * sizeof(r->entries[0]));
	uint32_t n = 0;
	int rc = 0;

	if (!r)
		return kv_error_set(err, -ENOMEM, "IRQ routing table");
	for (uint32_t gsi = 0; gsi < 16; gsi++) {
		if (gsi == 2)
			continue;
		r->entries[n].gsi = gsi;
		r->entries[n].type = KVM_IRQ_ROUTING_IRQCHIP;
		r->entries[n].u.irqchip.irqchip =
		    gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE;
		r->entries[n].u.irqchip.pin = gsi % 8;
		n++;
	}
	for (uint32_t gsi = 0; gsi < KV_IOAPIC_PINS; gsi++) {
		if (gsi == 2)
			continue;
		r->entries[n].gsi = gsi;
		r->entries[n].type = KVM_IRQ_ROUTING_IRQCHIP;
		r->entries[n].u.irqchip.irqchip = KVM_IRQCHIP_IOAPIC;
		r->entries[n].u.irqchip.pin = gsi == 0 ? 2 : gsi;
		n++;
	}
	r->nr = n;
	if (ioctl(vm->vm_fd, KVM_SET_GSI_ROUTING, r) < 0)
		rc = kv_error_set_errno(err, -errno, "KVM_SET_GSI_ROUTING");
	free(r);
	return rc;
}

static int enable_dirty_cap(struct kv_vm *vm, struct kv_error *err)
{
	if (vm->cfg.dirty_mode == KV_DIRTY_RING)
		return kv_kvm_dirty_ring_enable_cap(
		    vm->vm_fd, vm->cfg.dirty_ring_entries, err);
	return kv_kvm_dirty_log_enable_cap(vm->vm_fd, err);
}

static int create_vm(struct kv_vm *vm, struct kv_error *err)
{
	do {
		vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	} while (vm->vm_fd < 0 && errno == EINTR);
	if (vm->vm_fd < 0)
		return kv_error_set_errno(err, -errno, "KVM_CREATE_VM");
	if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, KV_TSS_ADDR) < 0)
		return kv_error_set_errno(err, -errno, "KVM_SET_TSS_ADDR");
	{
		uint64_t addr = KV_IDENTITY_MAP_ADDR;

		if (ioctl(vm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &addr) < 0)
			return kv_error_set_errno(err, -errno,
						  "KVM_SET_IDENTITY_MAP_ADDR");
	}
	if (ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
		return kv_error_set_errno(err, -errno, "KVM_CREATE_IRQCHIP");
	if (set_gsi_routing(vm, err))
		return -EINVAL;
	{
		/* SPEAKER_DUMMY: the kernel also serves port 0x61 (gate and
		 * output of channel 2, which guests use to time the TSC). */
		struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};

		if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) < 0)
			return kv_error_set_errno(err, -errno,
						  "KVM_CREATE_PIT2");
	}
	/* Dirty-tracking capabilities must precede slots and vCPUs. */
	return enable_dirty_cap(vm, err);
}

static void serial_set_irq(void *opaque, int level)
{
	struct kv_vm *vm = opaque;
	struct kvm_irq_level irq = {.irq = KV_SERIAL_COM1_IRQ,
				    .level = (uint32_t)level};

	if (ioctl(vm->vm_fd, KVM_IRQ_LINE, &irq) < 0)
		kv_warn("serial", "KVM_IRQ_LINE %d: %s", KV_SERIAL_COM1_IRQ,
			strerror(errno));
}

static int open_console(struct kv_vm *vm, struct kv_error *err)
{
	const char *c = vm->cfg.console;

	if (!strcmp(c, "stdio")) {
		vm->console_fd = STDOUT_FILENO;
	} else if (!strcmp(c, "none")) {
		vm->console_fd = -1;
	} else if (!strncmp(c, "file:", 5) && c[5]) {
		vm->console_fd =
		    open(c + 5, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (vm->console_fd < 0)
			return kv_error_set_errno(err, -errno,
						  "console file '%s'", c + 5);
		vm->console_owned = true;
	} else {
		return kv_error_set(err, -EINVAL,
				    "console '%s': expected stdio, none or file:PATH",
				    c);
	}
	vm->serial = kv_serial_new(vm->console_fd, serial_set_irq, vm);
	if (!vm->serial)
		return kv_error_set(err, -ENOMEM, "serial device");
	if (!strcmp(c, "stdio"))
		return kv_serial_start_input(vm->serial, STDIN_FILENO, err);
	return 0;
}

static void gmem_written(void *opaque, uint64_t off, uint64_t len)
{
	kv_vm_mark_dirty(opaque, off, len);
}

static int check_config(const struct kv_vm_config *cfg, struct kv_error *err)
{
	if (cfg->ncpus < 1 || cfg->ncpus > KV_VM_MAX_VCPUS)
		return kv_error_set(err, -EINVAL, "%d vCPUs: must be 1 to %d",
				    cfg->ncpus, KV_VM_MAX_VCPUS);
	if (cfg->dirty_mode == KV_DIRTY_RING && cfg->dirty_ring_entries &&
	    (cfg->dirty_ring_entries & (cfg->dirty_ring_entries - 1)))
		return kv_error_set(err, -EINVAL,
				    "dirty ring of %u entries: must be a power of two",
				    cfg->dirty_ring_entries);
	return 0;
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

static int copy_config(struct kv_vm *vm, const struct kv_vm_config *cfg,
		       struct kv_error *err)
{
	vm->cfg = *cfg;
	vm->kernel = dup_or_null(cfg->kernel);
	vm->cmdline = strdup(cfg->cmdline ? cfg->cmdline : "");
	vm->console = strdup(cfg->console ? cfg->console : "stdio");
	if ((cfg->kernel && !vm->kernel) || !vm->cmdline || !vm->console)
		return kv_error_set(err, -ENOMEM, "VM configuration");
	vm->cfg.kernel = vm->kernel;
	vm->cfg.cmdline = vm->cmdline;
	vm->cfg.console = vm->console;
	if (vm->cfg.dirty_mode == KV_DIRTY_RING && !vm->cfg.dirty_ring_entries)
		vm->cfg.dirty_ring_entries = KV_DEFAULT_RING_ENTRIES;
	return 0;
}

static int build_vm(struct kv_vm *vm, const struct kv_vm_config *cfg,
		    struct kv_error *err)
{
	int rc;

	if ((rc = copy_config(vm, cfg, err)) || (rc = open_kvm(vm, err)) ||
	    (rc = create_vm(vm, err)) ||
	    (rc = kv_gmem_init(&vm->mem, cfg->mem_size, err)))
		return rc;
	vm->mem.written = gmem_written;
	vm->mem.written_opaque = vm;
	if ((rc = kv_gmem_register(&vm->mem, vm->vm_fd, err)))
		return rc;
	vm->cpuid = kv_cpuid_supported(vm->kvm_fd, err);
	if (!vm->cpuid)
		return -ENOTSUP;
	for (int i = 0; i < vm->ncpus; i++)
		if ((rc = kv_vcpu_init(vm, i, err)))
			return rc;
	return open_console(vm, err);
}

int kv_vm_create(const struct kv_vm_config *cfg, struct kv_vm **out,
		 struct kv_error *err)
{
	struct kv_vm *vm;
	int rc = check_config(cfg, err);

	*out = NULL;
	if (rc)
		return rc;
	vm = calloc(1, sizeof(*vm));
	if (!vm)
		return kv_error_set(err, -ENOMEM, "VM");
	vm->kvm_fd = vm->vm_fd = vm->console_fd = -1;
	vm->ncpus = cfg->ncpus;
	for (int i = 0; i < KV_VM_MAX_VCPUS; i++) {
		vm->vcpus[i].fd = -1;
		vm->vcpus[i].vm = vm;
	}
	pthread_mutex_init(&vm->lock, NULL);
	pthread_cond_init(&vm->cond, NULL);
	kv_cpu_throttle_init(&vm->throttle);
	kv_vcpu_install_kick_handler();
	rc = build_vm(vm, cfg, err);
	if (rc) {
		kv_vm_destroy(vm);
		return rc;
	}
	*out = vm;
	return 0;
}

static void stop_threads(struct kv_vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	vm->stop_req = true;
	pthread_cond_broadcast(&vm->cond);
	kv_vm_kick_all(vm);
	pthread_mutex_unlock(&vm->lock);
	for (int i = 0; i < vm->ncpus; i++) {
		if (vm->vcpus[i].thread_started)
			pthread_join(vm->vcpus[i].thread, NULL);
		vm->vcpus[i].thread_started = false;
	}
}

void kv_vm_destroy(struct kv_vm *vm)
{
	if (!vm)
		return;
	/* Before the joins: the throttle thread signals vCPU threads. */
	kv_cpu_throttle_stop(vm);
	stop_threads(vm);
	kv_serial_free(vm->serial);
	for (int i = 0; i < vm->ncpus; i++)
		kv_vcpu_fini(&vm->vcpus[i]);
	if (vm->console_owned)
		close(vm->console_fd);
	if (vm->vm_fd >= 0)
		close(vm->vm_fd);
	if (vm->kvm_fd >= 0)
		close(vm->kvm_fd);
	kv_gmem_fini(&vm->mem);
	free(vm->cpuid);
	free(vm->kernel);
	free(vm->cmdline);
	free(vm->console);
	kv_cpu_throttle_fini(&vm->throttle);
	pthread_cond_destroy(&vm->cond);
	pthread_mutex_destroy(&vm->lock);
	free(vm);
}

static int write_mptable(struct kv_vm *vm, struct kv_error *err)
{
	uint8_t buf[KV_MPTABLE_MAX_BYTES];
	int n =
	    kv_mptable_build(buf, sizeof(buf), KV_MPTABLE_ADDR, vm->ncpus, err);

	if (n < 0)
		return n;
	return kv_gmem_write(&vm->mem, KV_MPTABLE_ADDR, buf, (uint64_t)n, err);
}

/* Read the kernel and check it fits this VM: its segments in RAM clear
 * of what the VMM places there, the command line in its area. */
static int read_kernel(struct kv_vm *vm, uint8_t **image, size_t *len,
		       struct kv_mb_kernel *k, struct kv_error *err)
{
	int rc = kv_multiboot_read_file(vm->cfg.kernel, image, len, err);

	if (rc)
		return rc;
	rc = kv_multiboot_parse(*image, *len, vm->mem.lowmem, k, err);
	if (!rc)
		rc = kv_multiboot_check_info(&vm->mem, vm->cfg.cmdline, err);
	if (rc) {
		free(*image);
		*image = NULL;
	}
	return rc;
}

int kv_vm_check_kernel(struct kv_vm *vm, struct kv_error *err)
{
	struct kv_mb_kernel k;
	uint8_t *image = NULL;
	size_t len = 0;
	int rc;

	if (!vm->cfg.kernel)
		return 0;
	rc = read_kernel(vm, &image, &len, &k, err);
	free(image);
	if (rc)
		kv_error_prefix(err, "kernel '%s'", vm->cfg.kernel);
	return rc;
}

int kv_vm_boot_kernel(struct kv_vm *vm, struct kv_error *err)
{
	struct kv_mb_kernel k;
	uint8_t *image = NULL;
	size_t len = 0;
	uint32_t info = 0;
	int rc;

	if (!vm->cfg.kernel)
		return kv_error_set(err, -EINVAL, "no kernel to boot");
	if (vm->booted || vm->started)
		return kv_error_set(err, -EBUSY,
				    "the VM was already booted or started");
	rc = read_kernel(vm, &image, &len, &k, err);
	if (!rc)
		rc = kv_multiboot_load(image, &k, &vm->mem, vm->cfg.cmdline,
				       &info, err);
	free(image);
	if (!rc)
		rc = write_mptable(vm, err);
	if (!rc)
		rc = kv_vcpu_set_boot_regs(&vm->vcpus[0], k.entry, info, err);
	if (rc) {
		kv_error_prefix(err, "kernel '%s'", vm->cfg.kernel);
		return rc;
	}
	kv_info("vm", "kernel '%s': entry 0x%x, %d segment(s)", vm->cfg.kernel,
		k.entry, k.nsegments);
	vm->booted = true;
	return 0;
}

int kv_vm_start(struct kv_vm *vm, struct kv_error *err)
{
	pthread_mutex_lock(&vm->lock);
	if (vm->started) {
		pthread_mutex_unlock(&vm->lock);
		kv_vm_resume(vm);
		return 0;
	}
	vm->started = true;
	for (int i = 0; i < vm->ncpus; i++) {
		int rc = kv_vcpu_start_thread(&vm->vcpus[i], err);

		if (rc) {
			pthread_mutex_unlock(&vm->lock);
			return rc;
		}
		vm->live_threads++;
	}
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

int kv_vm_pause(struct kv_vm *vm, struct kv_error *err)
{
	int64_t start = kv_now_ns();
	int64_t last_kick;
	int rc = 0;

	pthread_mutex_lock(&vm->lock);
	/* Not started: nothing runs, and kv_vm_start will start it. */
	if (vm->pause_req || !vm->started) {
		pthread_mutex_unlock(&vm->lock);
		return 0;
	}
	vm->pause_req = true;
	kv_vm_kick_all(vm);
	/* A vCPU in a throttle sleep waits on the cond: wake it to park. */
	pthread_cond_broadcast(&vm->cond);
	last_kick = kv_now_ns();
	while (vm->parked < vm->live_threads) {
		struct timespec ts;
		int64_t now = kv_now_ns();

		if (now - start > PAUSE_TIMEOUT_NS) {
			rc = kv_error_set(err, -ETIMEDOUT,
					  "vCPUs did not stop within %lld s (%d of %d parked)",
					  PAUSE_TIMEOUT_NS / 1000000000LL,
					  vm->parked, vm->live_threads);
			break;
		}
		/* A signal can land just before a thread blocks in the
		 * kernel without immediate_exit having been seen; kick
		 * again now and then rather than trust one delivery. */
		if (now - last_kick > PAUSE_REKICK_NS) {
			kv_vm_kick_all(vm);
			last_kick = now;
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 10 * 1000 * 1000;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&vm->cond, &vm->lock, &ts);
	}
	vm->last_pause_ns = kv_now_ns() - start;
	pthread_mutex_unlock(&vm->lock);
	if (rc)
		kv_vm_resume(vm);
	return rc;
}

void kv_vm_resume(struct kv_vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	for (int i = 0; i < vm->ncpus; i++)
		if (vm->vcpus[i].run)
			__atomic_store_n(&vm->vcpus[i].run->immediate_exit, 0,
					 __ATOMIC_SEQ_CST);
	vm->pause_req = false;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
}

bool kv_vm_running(const struct kv_vm *vm)
{
	struct kv_vm *m = (struct kv_vm *)vm;
	bool r;

	pthread_mutex_lock(&m->lock);
	r = m->started && !m->pause_req && !m->stop_req && m->live_threads;
	pthread_mutex_unlock(&m->lock);
	return r;
}

void kv_vm_finish(struct kv_vm *vm, int code, const struct kv_error *err)
{
	pthread_mutex_lock(&vm->lock);
	if (!vm->finished) {
		vm->finished = true;
		vm->exit_code = code;
		if (err)
			kv_error_propagate(&vm->fail, err);
	}
	/* The guest is over (powered off or failed): stop every vCPU. */
	vm->stop_req = true;
	kv_vm_kick_all(vm);
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
}

int kv_vm_wait(struct kv_vm *vm, struct kv_error *err)
{
	int code;

	pthread_mutex_lock(&vm->lock);
	while (!vm->finished)
		pthread_cond_wait(&vm->cond, &vm->lock);
	code = vm->exit_code;
	if (code < 0)
		kv_error_propagate(err, &vm->fail);
	pthread_mutex_unlock(&vm->lock);
	return code;
}

void kv_vm_request_exit(struct kv_vm *vm, int code)
{
	pthread_mutex_lock(&vm->lock);
	if (!vm->finished) {
		vm->finished = true;
		vm->exit_code = code;
		if (code < 0)
			kv_error_set(&vm->fail, code, "VM exit requested");
	}
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
}

int kv_vm_fd(const struct kv_vm *vm)
{
	return vm->vm_fd;
}

int kv_vm_kvm_fd(const struct kv_vm *vm)
{
	return vm->kvm_fd;
}

int kv_vm_ncpus(const struct kv_vm *vm)
{
	return vm->ncpus;
}

int kv_vm_vcpu_fd(const struct kv_vm *vm, int index)
{
	if (index < 0 || index >= vm->ncpus)
		return -1;
	return vm->vcpus[index].fd;
}

int kv_vm_vcpu_tid(const struct kv_vm *vm, int index)
{
	if (index < 0 || index >= vm->ncpus)
		return -1;
	return __atomic_load_n(&vm->vcpus[index].tid, __ATOMIC_ACQUIRE);
}

void *kv_vm_ram(const struct kv_vm *vm)
{
	return vm->mem.host;
}

uint64_t kv_vm_ram_size(const struct kv_vm *vm)
{
	return vm->mem.size;
}

struct kv_serial *kv_vm_serial(struct kv_vm *vm)
{
	return vm->serial;
}

const struct kv_vm_config *kv_vm_get_config(const struct kv_vm *vm)
{
	return &vm->cfg;
}

const struct kv_kvm_slot *kv_vm_slots(const struct kv_vm *vm, int *n)
{
	*n = vm->mem.nslots;
	return vm->mem.slots;
}

void kv_vm_set_dirty_hooks(struct kv_vm *vm,
			   const struct kv_vm_dirty_hooks *hooks)
{
	__atomic_store_n(&vm->hooks, hooks, __ATOMIC_RELEASE);
}

void kv_vm_mark_dirty(struct kv_vm *vm, uint64_t ram_offset, uint64_t len)
{
	const struct kv_vm_dirty_hooks *h =
	    __atomic_load_n(&vm->hooks, __ATOMIC_ACQUIRE);

	if (h && h->mark)
		h->mark(h->opaque, ram_offset, len);
}

int64_t kv_vm_last_pause_ns(const struct kv_vm *vm)
{
	struct kv_vm *m = (struct kv_vm *)vm;
	int64_t ns;

	pthread_mutex_lock(&m->lock);
	ns = m->last_pause_ns;
	pthread_mutex_unlock(&m->lock);
	return ns;
}
