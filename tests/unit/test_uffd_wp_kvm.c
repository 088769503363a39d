/* SPDX-License-Identifier: MIT */
/*
 * Does KVM honour userfaultfd write-protection on guest memory? (issue 13,
 * background snapshot). A one-vCPU VM runs a few bytes of real-mode code
 * that writes guest pages; its RAM is registered in WP mode and
 * protected. A vCPU write to a protected page must come to the uffd as a
 * WP fault and the vCPU must wait in KVM_RUN until the page is
 * un-protected; a page KVM mapped writable before the protection must be
 * protected too (KVM's shadow mapping dropped), and so must a write by a
 * VMM thread. The last case measures what a WP fault costs the vCPU.
 * Skipped, with the reason printed, without /dev/kvm or uffd-wp.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "kvm_skip.h"
#include "tiny_vcpu.h"

#include "base/units.h"
#include "migration/postcopy/uffd.h"

#define SLOT_PAGES 256U
#define CODE_GPA   0x1000U
#define SWEEP_GPA  0x1100U
#define PAGE_PORT  0x10
#define DONE_PORT  0x11
/* The sweep writes pages 2..255 (0 and 1 hold the IVT and the code). */
#define SWEEP_FIRST 2U
#define SWEEP_PAGES (SLOT_PAGES - SWEEP_FIRST)

/* in ax,0x10; shl ax,8; mov es,ax; inc byte [es:0]; jmp back */
static const uint8_t page_writer[] = {
    0xe5, PAGE_PORT, 0xc1, 0xe0, 0x08, 0x8e, 0xc0,
    0x26, 0xfe,	     0x06, 0x00, 0x00, 0xeb, 0xf2,
};

/* mov ax,0x200; L: mov es,ax; inc byte [es:0]; add ax,0x100; jnz L;
 * out 0x11,al; jmp back to the start: one byte of every page from 2 up. */
static const uint8_t sweeper[] = {
    0xb8, 0x00, 0x02, 0x8e, 0xc0, 0x26, 0xfe, 0x06, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x75, 0xf4, 0xe6, DONE_PORT, 0xeb, 0xed,
};

struct tiny_vm {
	int kvm, vm, vcpu;
	struct kvm_run *run;
	size_t run_len;
	uint8_t *mem;
	struct kv_uffd *u;
	_Atomic int done;     /* the vCPU thread's run ended */
	_Atomic uint32_t tid; /* the vCPU thread */
	uint16_t page;        /* the page the next run writes */
};

/* Opens the uffd first: without uffd-wp the case returns false (it
 * passes, with the reason printed) before any KVM object exists. */
static bool tiny_vm_open(struct tiny_vm *v, uint16_t ip)
{
	struct kv_error err = {0};
	struct kvm_userspace_memory_region r;
	int run_len;

	memset(v, 0, sizeof(*v));
	v->u = kv_uffd_open_wp(true, &err);
	if (!v->u) {
		printf("# skipped: uffd-wp: %s\n", err.msg);
		return false;
	}
	v->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	assert_true(v->kvm >= 0);
	v->vm = ioctl(v->kvm, KVM_CREATE_VM, 0);
	assert_true(v->vm >= 0);
	assert_int_equal(ioctl(v->vm, KVM_CREATE_IRQCHIP, 0), 0);
	v->mem = mmap(NULL, SLOT_PAGES * KV_PAGE_SIZE, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(v->mem != MAP_FAILED);
	memcpy(v->mem + CODE_GPA, page_writer, sizeof(page_writer));
	memcpy(v->mem + SWEEP_GPA, sweeper, sizeof(sweeper));
	memset(&r, 0, sizeof(r));
	r.memory_size = SLOT_PAGES * KV_PAGE_SIZE;
	r.userspace_addr = (uint64_t)(uintptr_t)v->mem;
	assert_int_equal(ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &r), 0);
	v->vcpu = ioctl(v->vm, KVM_CREATE_VCPU, 0);
	assert_true(v->vcpu >= 0);
	run_len = ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	assert_true(run_len > 0);
	v->run_len = (size_t)run_len;
	v->run = mmap(NULL, v->run_len, PROT_READ | PROT_WRITE, MAP_SHARED,
		      v->vcpu, 0);
	assert_true(v->run != MAP_FAILED);
	tiny_set_cpuid(v->kvm, v->vcpu);
	tiny_enter_real_mode(v->vcpu, ip);
	assert_int_equal(kv_uffd_register_wp(v->u, v->mem, r.memory_size, &err),
			 0);
	return true;
}

static void tiny_vm_close(struct tiny_vm *v)
{
	kv_uffd_close(v->u);
	munmap(v->run, v->run_len);
	munmap(v->mem, SLOT_PAGES * KV_PAGE_SIZE);
	close(v->vcpu);
	close(v->vm);
	close(v->kvm);
}

/* Run until the guest does port I/O (the next page request, or the end
 * of a sweep); returns the port. */
static uint16_t run_to_io(struct tiny_vm *v)
{
	for (;;) {
		int r = ioctl(v->vcpu, KVM_RUN, 0);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			fail_msg("KVM_RUN: %s", strerror(errno));
		if (v->run->exit_reason != KVM_EXIT_IO)
			fail_msg("unexpected exit %u", v->run->exit_reason);
		return v->run->io.port;
	}
}

/* The vCPU thread: answers the pending IN with v->page and runs until
 * the guest asks again, i.e. until it wrote the page. */
static void *vcpu_write_page(void *arg)
{
	struct tiny_vm *v = arg;
	uint8_t *data = (uint8_t *)v->run + v->run->io.data_offset;

	v->tid = (uint32_t)gettid();
	memcpy(data, &v->page, sizeof(v->page));
	if (run_to_io(v) != PAGE_PORT)
		fail_msg("the page writer did not ask for the next page");
	v->done = 1;
	return NULL;
}

static void guest_write_sync(struct tiny_vm *v, uint16_t page)
{
	pthread_t th;

	v->page = page;
	pthread_create(&th, NULL, vcpu_write_page, v);
	pthread_join(th, NULL);
}

static uint8_t *page_at(struct tiny_vm *v, size_t page)
{
	return v->mem + page * KV_PAGE_SIZE;
}

static void protect(struct tiny_vm *v, size_t first, size_t n, bool on)
{
	struct kv_error err = {0};

	if (kv_uffd_write_protect(v->u, page_at(v, first), n * KV_PAGE_SIZE,
				  on, &err) < 0)
		fail_msg("%s", err.msg);
}

/* The next fault must be a WP write fault on `page` within 2 s. */
static struct kv_uffd_fault expect_wp_fault(struct tiny_vm *v, size_t page)
{
	struct kv_error err = {0};
	struct kv_uffd_fault f = {0};
	int r = kv_uffd_wait_fault(v->u, 2000, &f, &err);

	if (r != 1)
		fail_msg("no write-protect fault on page %zu within 2 s (%d: %s)", page, r, err.msg);
	assert_true(f.wp);
	assert_true(f.write);
	assert_int_equal(f.addr, (uintptr_t)page_at(v, page));
	return f;
}

/* The writer is blocked: no fault-free progress for 50 ms. */
static void expect_blocked(struct tiny_vm *v, size_t page, uint8_t before)
{
	usleep(50 * 1000);
	assert_int_equal(v->done, 0);
	assert_int_equal(page_at(v, page)[0], before);
}

static void test_vcpu_write_waits_for_unprotect(void **state)
{
	struct tiny_vm v;
	struct kv_uffd_fault f;
	struct kv_error err = {0};
	pthread_t th;

	(void)state;
	if (!tiny_vm_open(&v, CODE_GPA))
		return;
	assert_int_equal(run_to_io(&v), PAGE_PORT);
	/* KVM maps pages 7 and 9 writable before the protection. */
	guest_write_sync(&v, 7);
	guest_write_sync(&v, 9);
	assert_int_equal(page_at(&v, 7)[0], 1);
	memset(page_at(&v, 20), 0, KV_PAGE_SIZE);
	protect(&v, 0, SLOT_PAGES, true);

	v.page = 7;
	v.done = 0;
	pthread_create(&th, NULL, vcpu_write_page, &v);
	f = expect_wp_fault(&v, 7);
	assert_int_equal(f.tid, v.tid);
	expect_blocked(&v, 7, 1);
	/* Another page's un-protection does not release it. */
	protect(&v, 9, 1, false);
	expect_blocked(&v, 7, 1);
	protect(&v, 7, 1, false);
	pthread_join(th, NULL);
	assert_int_equal(page_at(&v, 7)[0], 2);
	/* Un-protected pages write without a fault. */
	guest_write_sync(&v, 7);
	guest_write_sync(&v, 9);
	assert_int_equal(page_at(&v, 9)[0], 2);
	assert_int_equal(kv_uffd_wait_fault(v.u, 0, &f, &err), 0);
	/* A page the host populated but KVM never mapped faults too. */
	v.page = 20;
	v.done = 0;
	pthread_create(&th, NULL, vcpu_write_page, &v);
	expect_wp_fault(&v, 20);
	expect_blocked(&v, 20, 0);
	protect(&v, 20, 1, false);
	pthread_join(th, NULL);
	assert_int_equal(page_at(&v, 20)[0], 1);
	tiny_vm_close(&v);
}

/* Pages nobody touched yet are protected too where the kernel has
 * WP_UNPOPULATED (else the snapshot must populate RAM first). */
static void test_unpopulated_page_faults(void **state)
{
	struct tiny_vm v;
	pthread_t th;

	(void)state;
	if (!tiny_vm_open(&v, CODE_GPA))
		return;
	if (!kv_uffd_wp_unpopulated(v.u)) {
		tiny_vm_close(&v);
		printf("# skipped: this kernel has no UFFD_FEATURE_WP_UNPOPULATED\n");
		return;
	}
	assert_int_equal(run_to_io(&v), PAGE_PORT);
	protect(&v, 0, SLOT_PAGES, true);
	v.page = 100;
	pthread_create(&th, NULL, vcpu_write_page, &v);
	expect_wp_fault(&v, 100);
	expect_blocked(&v, 100, 0);
	protect(&v, 100, 1, false);
	pthread_join(th, NULL);
	assert_int_equal(page_at(&v, 100)[0], 1);
	tiny_vm_close(&v);
}

struct host_writer {
	uint8_t *p;
	_Atomic int done;
};

static void *host_write(void *arg)
{
	struct host_writer *w = arg;

	*(volatile uint8_t *)w->p = 0x77;
	w->done = 1;
	return NULL;
}

static void test_host_write_waits_for_unprotect(void **state)
{
	struct host_writer w = {0};
	struct tiny_vm v;
	pthread_t th;

	(void)state;
	if (!tiny_vm_open(&v, CODE_GPA))
		return;
	memset(page_at(&v, 30), 0x11, KV_PAGE_SIZE);
	protect(&v, 0, SLOT_PAGES, true);
	/* Reads go on. */
	assert_int_equal(page_at(&v, 30)[5], 0x11);
	w.p = page_at(&v, 30) + 5;
	pthread_create(&th, NULL, host_write, &w);
	expect_wp_fault(&v, 30);
	usleep(50 * 1000);
	assert_int_equal(w.done, 0);
	assert_int_equal(page_at(&v, 30)[5], 0x11);
	protect(&v, 30, 1, false);
	pthread_join(th, NULL);
	assert_int_equal(page_at(&v, 30)[5], 0x77);
	tiny_vm_close(&v);
}

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

struct sweeps {
	struct tiny_vm *v;
	int n;
	_Atomic int finished;
};

static void *run_sweeps(void *arg)
{
	struct sweeps *s = arg;

	for (int i = 0; i < s->n; i++)
		if (run_to_io(s->v) != DONE_PORT)
			fail_msg("the sweep stopped at another port");
	s->finished = 1;
	return NULL;
}

/* Serve WP faults as the snapshot will (un-protect the faulting page)
 * until the sweeps end; returns the faults served. */
static int serve_faults(struct tiny_vm *v, struct sweeps *s)
{
	struct kv_error err = {0};
	int served = 0;

	while (!s->finished) {
		struct kv_uffd_fault f;
		int r = kv_uffd_wait_fault(v->u, 10, &f, &err);

		if (r < 0)
			fail_msg("%s", err.msg);
		if (r == 0)
			continue;
		assert_true(f.wp);
		if (kv_uffd_write_protect(v->u, (void *)(uintptr_t)f.addr,
					  KV_PAGE_SIZE, false, &err) < 0)
			fail_msg("%s", err.msg);
		served++;
	}
	return served;
}

/* Time `rounds` sweeps; with wp, every page protected before each. */
static double time_sweeps(struct tiny_vm *v, int rounds, bool wp, int *faults)
{
	double total = 0;

	*faults = 0;
	for (int i = 0; i < rounds; i++) {
		struct sweeps s = {.v = v, .n = 1};
		pthread_t th;
		double t0;

		if (wp)
			protect(v, SWEEP_FIRST, SWEEP_PAGES, true);
		t0 = now_us();
		pthread_create(&th, NULL, run_sweeps, &s);
		*faults += serve_faults(v, &s);
		pthread_join(th, NULL);
		total += now_us() - t0;
	}
	return total;
}

static void test_wp_fault_cost(void **state)
{
	enum { ROUNDS = 20 };
	double plain = 0, wp = 0;
	int faults = 0, none = 0;
	struct tiny_vm v;

	(void)state;
	if (!tiny_vm_open(&v, SWEEP_GPA))
		return;
	/* Warm: every page populated and mapped by KVM. */
	time_sweeps(&v, 2, false, &none);
	for (int i = 0; i < 3; i++) {
		int f;

		plain += time_sweeps(&v, ROUNDS, false, &f);
		none += f;
		wp += time_sweeps(&v, ROUNDS, true, &f);
		faults += f;
	}
	assert_int_equal(none, 0);
	assert_int_equal(faults, 3 * ROUNDS * (int)SWEEP_PAGES);
	for (size_t p = SWEEP_FIRST; p < SLOT_PAGES; p++)
		assert_int_equal(page_at(&v, p)[0], (uint8_t)(2 + 6 * ROUNDS));
	printf("# sweep of %u pages: %.1f us plain, %.1f us write-protected: %.2f us per WP fault (fault read, un-protect, vCPU resumed)\n",
	       SWEEP_PAGES, plain / (3 * ROUNDS), wp / (3 * ROUNDS),
	       (wp - plain) / faults);
	tiny_vm_close(&v);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_vcpu_write_waits_for_unprotect),
	    cmocka_unit_test(test_unpopulated_page_faults),
	    cmocka_unit_test(test_host_write_waits_for_unprotect),
	    cmocka_unit_test(test_wp_fault_cost),
	};
	const bool needs_kvm[] = {true, true, true, true};

	return RUN_TESTS_KVM_OPTIONAL(tests, needs_kvm);
}
