/* SPDX-License-Identifier: MIT */
/*
 * KVM dirty trackers against real KVM: a one-vCPU VM runs a few bytes of
 * real-mode code that asks the test (IN from port 0x10) which page to write
 * and increments a byte there, so the test decides exactly which guest
 * pages get dirtied. Skipped, with the reason printed, without /dev/kvm.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "kvm_skip.h"
#include "tiny_vcpu.h"

#include "base/bitmap.h"
#include "migration/ram/ram.h"
#include "vmm/kvm_dirty.h"

#define SLOT_PAGES   256U
#define CODE_GPA     0x1000U
#define PAGE_PORT    0x10
#define RING_ENTRIES 256U /* the smallest ring KVM takes (one page) */

/* in ax,0x10; shl ax,8; mov es,ax; inc byte [es:0]; jmp back */
static const uint8_t page_writer[] = {
    0xe5, PAGE_PORT, 0xc1, 0xe0, 0x08, 0x8e, 0xc0,
    0x26, 0xfe,	     0x06, 0x00, 0x00, 0xeb, 0xf2,
};

struct tiny_vm {
	int kvm, vm, vcpu;
	struct kvm_run *run;
	size_t run_len;
	uint8_t *mem;
	struct kv_kvm_slot slot;
	struct kv_kvm_dirty *d;
	struct kv_dirty_tracker t;
	struct kv_ram_block block;
	int ring_full_exits;
};

/* A VM with one slot of SLOT_PAGES at gpa 0 and one vCPU in real mode at
 * the page writer; ring_entries > 0 enables the dirty ring first. */
static void tiny_vm_open(struct tiny_vm *v, uint32_t ring_entries)
{
	struct kv_error err = {0};
	struct kvm_userspace_memory_region r;
	int run_len;

	memset(v, 0, sizeof(*v));
	v->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	assert_true(v->kvm >= 0);
	v->vm = ioctl(v->kvm, KVM_CREATE_VM, 0);
	assert_true(v->vm >= 0);
	if (ring_entries)
		assert_int_equal(
		    kv_kvm_dirty_ring_enable_cap(v->vm, ring_entries, &err), 0);
	else
		assert_int_equal(kv_kvm_dirty_log_enable_cap(v->vm, &err), 0);
	assert_int_equal(ioctl(v->vm, KVM_CREATE_IRQCHIP, 0), 0);
	v->mem = mmap(NULL, SLOT_PAGES * KV_PAGE_SIZE, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(v->mem != MAP_FAILED);
	memcpy(v->mem + CODE_GPA, page_writer, sizeof(page_writer));
	memset(&r, 0, sizeof(r));
	r.slot = 0;
	r.memory_size = SLOT_PAGES * KV_PAGE_SIZE;
	r.userspace_addr = (uint64_t)(uintptr_t)v->mem;
	assert_int_equal(ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &r), 0);
	v->slot = (struct kv_kvm_slot){.slot = 0,
				       .gpa = 0,
				       .size = r.memory_size,
				       .host = v->mem,
				       .block_offset = 0,
				       .flags = 0};
	v->vcpu = ioctl(v->vm, KVM_CREATE_VCPU, 0);
	assert_true(v->vcpu >= 0);
	run_len = ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	assert_true(run_len > 0);
	v->run_len = (size_t)run_len;
	v->run = mmap(NULL, v->run_len, PROT_READ | PROT_WRITE, MAP_SHARED,
		      v->vcpu, 0);
	assert_true(v->run != MAP_FAILED);
	tiny_set_cpuid(v->kvm, v->vcpu);
	tiny_enter_real_mode(v->vcpu, CODE_GPA);
	v->block.host = v->mem;
	v->block.length = r.memory_size;
	v->block.npages = SLOT_PAGES;
	snprintf(v->block.idstr, sizeof(v->block.idstr), "pc.ram");
	v->block.dirty = kv_bitmap_new(SLOT_PAGES);
	assert_non_null(v->block.dirty);
}

static void tiny_vm_close(struct tiny_vm *v)
{
	kv_kvm_dirty_free(v->d);
	kv_bitmap_free(v->block.dirty);
	munmap(v->run, v->run_len);
	munmap(v->mem, SLOT_PAGES * KV_PAGE_SIZE);
	close(v->vcpu);
	close(v->vm);
	close(v->kvm);
}

/* Run until the guest asks for the next page (IN from PAGE_PORT). */
static void run_to_page_request(struct tiny_vm *v)
{
	struct kv_error err = {0};

	for (;;) {
		assert_int_equal(ioctl(v->vcpu, KVM_RUN, 0), 0);
		if (v->run->exit_reason == KVM_EXIT_DIRTY_RING_FULL) {
			v->ring_full_exits++;
			assert_int_equal(kv_kvm_ring_harvest(v->d, 0, &err), 0);
			continue;
		}
		if (v->run->exit_reason != KVM_EXIT_IO)
			fail_msg("unexpected exit %u", v->run->exit_reason);
		assert_int_equal(v->run->io.port, PAGE_PORT);
		assert_int_equal(v->run->io.direction, KVM_EXIT_IO_IN);
		return;
	}
}

static void guest_write(struct tiny_vm *v, uint16_t page)
{
	uint8_t *data = (uint8_t *)v->run + v->run->io.data_offset;
	uint8_t before = v->mem[(size_t)page * KV_PAGE_SIZE];

	memcpy(data, &page, sizeof(page));
	run_to_page_request(v);
	assert_int_equal(v->mem[(size_t)page * KV_PAGE_SIZE],
			 (uint8_t)(before + 1));
}

/* Sync and check that exactly the listed pages were reported; clears the
 * migration bitmap afterwards (as if they were sent). */
static void expect_sync(struct tiny_vm *v, const uint16_t *pages, size_t n)
{
	struct kv_error err = {0};
	int64_t added;

	kv_bitmap_clear_all(v->block.dirty, SLOT_PAGES);
	added = v->t.ops->sync(v->t.opaque, &v->block, 1, &err);
	if (added < 0)
		fail_msg("sync: %s", err.msg);
	for (size_t p = 0; p < SLOT_PAGES; p++) {
		bool want = false;

		for (size_t i = 0; i < n; i++)
			want |= pages[i] == p;
		if (kv_bitmap_test(v->block.dirty, p) != want)
			fail_msg("page %zu: %s", p,
				 want ? "written but not reported"
				      : "reported but not written");
	}
	assert_int_equal(added, (int64_t)n);
	kv_bitmap_clear_all(v->block.dirty, SLOT_PAGES);
}

static void clear_range(struct tiny_vm *v, size_t first, size_t count)
{
	struct kv_error err = {0};

	if (v->t.ops->clear(v->t.opaque, &v->block, first, count, &err) < 0)
		fail_msg("clear: %s", err.msg);
}

static bool have_kvm(void)
{
	if (access("/dev/kvm", R_OK | W_OK) == 0)
		return true;
	printf("# SKIP no /dev/kvm: %s\n", strerror(errno));
	return false;
}

#define PAGES(...)                                                             \
	(const uint16_t[]){__VA_ARGS__},                                       \
	    sizeof((const uint16_t[]){__VA_ARGS__}) / sizeof(uint16_t)

static void test_log_reports_written_pages(void **state)
{
	struct kv_error err = {0};
	struct tiny_vm v;
	int64_t n;

	(void)state;
	if (!have_kvm())
		skip();
	tiny_vm_open(&v, 0);
	v.d = kv_kvm_dirty_log_new(v.vm, &v.slot, 1, SLOT_PAGES, &err);
	assert_non_null(v.d);
	v.t = kv_kvm_dirty_iface(v.d);
	assert_non_null(v.t.ops->clear);
	assert_int_equal(v.t.ops->start(v.t.opaque, &err), 0);
	run_to_page_request(&v);

	/* Initially-set: the first sync reports every page, nothing is
	 * protected until a clear. */
	n = v.t.ops->sync(v.t.opaque, &v.block, 1, &err);
	assert_int_equal(n, SLOT_PAGES);
	clear_range(&v, 0, SLOT_PAGES);
	expect_sync(&v, NULL, 0);

	guest_write(&v, 5);
	guest_write(&v, 70);
	guest_write(&v, 130);
	expect_sync(&v, PAGES(5, 70, 130));

	/* Page 80 is written after the sync: clearing 64..127 re-arms 70
	 * only, 80 keeps its bit, 5 and 130 were not cleared. */
	guest_write(&v, 80);
	clear_range(&v, 64, 64);
	expect_sync(&v, PAGES(5, 80, 130));
	/* 70 is protected again: a new write is seen. */
	clear_range(&v, 0, SLOT_PAGES);
	expect_sync(&v, NULL, 0);
	guest_write(&v, 70);
	guest_write(&v, 255);
	expect_sync(&v, PAGES(70, 255));

	/* The VMM's own writes are reported too. */
	kv_kvm_dirty_mark(v.d, 200 * KV_PAGE_SIZE + 10, KV_PAGE_SIZE);
	expect_sync(&v, PAGES(70, 200, 201, 255));

	v.t.ops->stop(v.t.opaque, 0);
	tiny_vm_close(&v);
}

static void test_log_clear_unaligned_range(void **state)
{
	struct kv_error err = {0};
	struct tiny_vm v;

	(void)state;
	if (!have_kvm())
		skip();
	tiny_vm_open(&v, 0);
	v.d = kv_kvm_dirty_log_new(v.vm, &v.slot, 1, SLOT_PAGES, &err);
	assert_non_null(v.d);
	v.t = kv_kvm_dirty_iface(v.d);
	assert_int_equal(v.t.ops->start(v.t.opaque, &err), 0);
	run_to_page_request(&v);
	clear_range(&v, 0, SLOT_PAGES);
	guest_write(&v, 10);
	guest_write(&v, 12);
	guest_write(&v, 250);
	expect_sync(&v, PAGES(10, 12, 250));
	/* 11..12 and 200..255 are not 64-aligned: only 12 and 250 re-arm. */
	clear_range(&v, 11, 2);
	clear_range(&v, 200, 56);
	expect_sync(&v, PAGES(10));
	v.t.ops->stop(v.t.opaque, 0);
	tiny_vm_close(&v);
}

static void test_log_failed_stop_keeps_bits(void **state)
{
	struct kv_error err = {0};
	struct tiny_vm v;
	struct kvm_dirty_log log = {.slot = 0};

	(void)state;
	if (!have_kvm())
		skip();
	tiny_vm_open(&v, 0);
	v.d = kv_kvm_dirty_log_new(v.vm, &v.slot, 1, SLOT_PAGES, &err);
	assert_non_null(v.d);
	v.t = kv_kvm_dirty_iface(v.d);
	assert_int_equal(v.t.ops->start(v.t.opaque, &err), 0);
	run_to_page_request(&v);
	clear_range(&v, 0, SLOT_PAGES);
	guest_write(&v, 33);
	expect_sync(&v, PAGES(33));
	guest_write(&v, 90);
	kv_kvm_dirty_mark(v.d, 7 * KV_PAGE_SIZE, 1);
	v.t.ops->stop(v.t.opaque, 1);

	/* Logging is off in KVM now... */
	log.dirty_bitmap = v.block.dirty;
	assert_int_equal(ioctl(v.vm, KVM_GET_DIRTY_LOG, &log), -1);
	/* ...but the next attempt's first sync reports what was pending:
	 * 33 (reported, never re-armed), 90 (unsynced), 7 (VMM mark). */
	expect_sync(&v, PAGES(7, 33, 90));

	/* A completed migration drops them. */
	assert_int_equal(v.t.ops->start(v.t.opaque, &err), 0);
	kv_kvm_dirty_mark(v.d, 9 * KV_PAGE_SIZE, 1);
	v.t.ops->stop(v.t.opaque, 0);
	expect_sync(&v, NULL, 0);
	tiny_vm_close(&v);
}

static void test_ring_reports_written_pages(void **state)
{
	struct kv_error err = {0};
	struct tiny_vm v;

	(void)state;
	if (!have_kvm())
		skip();
	tiny_vm_open(&v, RING_ENTRIES);
	v.d = kv_kvm_dirty_ring_new(v.vm, &v.slot, 1, SLOT_PAGES, &v.vcpu, 1,
				    RING_ENTRIES, &err);
	if (!v.d)
		fail_msg("ring: %s", err.msg);
	v.t = kv_kvm_dirty_iface(v.d);
	assert_null(v.t.ops->clear);
	assert_int_equal(v.t.ops->start(v.t.opaque, &err), 0);
	run_to_page_request(&v);
	expect_sync(&v, NULL, 0);

	guest_write(&v, 5);
	guest_write(&v, 70);
	guest_write(&v, 130);
	expect_sync(&v, PAGES(5, 70, 130));
	/* The reset at sync re-protected them. */
	guest_write(&v, 70);
	kv_kvm_dirty_mark(v.d, 200 * KV_PAGE_SIZE, 1);
	expect_sync(&v, PAGES(70, 200));

	/* A failed stop keeps what the ring held. */
	guest_write(&v, 90);
	v.t.ops->stop(v.t.opaque, 1);
	expect_sync(&v, PAGES(90));
	tiny_vm_close(&v);
}

static void test_ring_full_harvested_by_vcpu(void **state)
{
	uint16_t pages[SLOT_PAGES];
	struct kv_error err = {0};
	struct tiny_vm v;
	size_t n = 0;

	(void)state;
	if (!have_kvm())
		skip();
	tiny_vm_open(&v, RING_ENTRIES);
	v.d = kv_kvm_dirty_ring_new(v.vm, &v.slot, 1, SLOT_PAGES, &v.vcpu, 1,
				    RING_ENTRIES, &err);
	assert_non_null(v.d);
	v.t = kv_kvm_dirty_iface(v.d);
	assert_int_equal(v.t.ops->start(v.t.opaque, &err), 0);
	run_to_page_request(&v);
	/* More distinct pages than the ring holds: KVM exits with
	 * DIRTY_RING_FULL and the "vCPU thread" harvests. */
	for (uint16_t p = 2; p < SLOT_PAGES; p++) {
		guest_write(&v, p);
		pages[n++] = p;
	}
	assert_true(v.ring_full_exits >= 1);
	expect_sync(&v, pages, n);
	v.t.ops->stop(v.t.opaque, 0);
	tiny_vm_close(&v);
}

static void test_bad_slots_rejected(void **state)
{
	struct kv_kvm_slot s = {.slot = 0,
				.size = 8 * KV_PAGE_SIZE,
				.block_offset = 4 * KV_PAGE_SIZE};
	struct kv_error err = {0};
	int fd = -1;

	(void)state;
	/* No ioctl reaches KVM before the slot check: fd -1 is fine. */
	assert_null(kv_kvm_dirty_ring_new(-1, &s, 1, 8, &fd, 1, 256, &err));
	assert_non_null(strstr(err.msg, "does not fit"));
	assert_int_equal(err.code, -EINVAL);
	kv_error_clear(&err);
	assert_int_equal(kv_kvm_dirty_ring_enable_cap(-1, 100, &err) < 0, 1);
}


int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_log_reports_written_pages),
	    cmocka_unit_test(test_log_clear_unaligned_range),
	    cmocka_unit_test(test_log_failed_stop_keeps_bits),
	    cmocka_unit_test(test_ring_reports_written_pages),
	    cmocka_unit_test(test_ring_full_harvested_by_vcpu),
	    cmocka_unit_test(test_bad_slots_rejected),
	};

	const bool needs_kvm[] = {true, true, true, true, true, false};

	return RUN_TESTS_KVM_OPTIONAL(tests, needs_kvm);
}
