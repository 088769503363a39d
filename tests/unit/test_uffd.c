/* SPDX-License-Identifier: MIT */
/*
 * userfaultfd as postcopy uses it, on real anonymous memory: a thread
 * touching missing pages blocks until they are placed; zero pages; a page
 * placed twice keeps its first contents; a waiter woken with no fault.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/units.h"
#include "migration/postcopy/uffd.h"

#define NPAGES 64

struct toucher {
	uint8_t *mem;
	uint8_t seen[NPAGES];
	uint32_t tid;
};

/* Reads one byte of every page, in an order that is not the address
 * order, so faults come from all over the region. */
static void *touch(void *arg)
{
	struct toucher *t = arg;

	t->tid = (uint32_t)gettid();
	for (int i = 0; i < NPAGES; i++) {
		int p = (i * 37) % NPAGES;

		t->seen[p] = ((volatile uint8_t *)t->mem)[p * KV_PAGE_SIZE + 100];
	}
	return NULL;
}

static struct kv_uffd *open_or_skip(void)
{
	struct kv_error err = {0};
	struct kv_uffd *u = kv_uffd_open(&err);

	if (!u) {
		printf("# skipped: %s\n", err.msg);
		skip();
	}
	return u;
}

static void test_faults_served(void **state)
{
	struct kv_error err = {0};
	struct toucher t = {0};
	uint8_t page[KV_PAGE_SIZE];
	struct kv_uffd *u;
	pthread_t th;
	int served = 0, zeros = 0;

	(void)state;
	u = open_or_skip();
	t.mem = mmap(NULL, NPAGES * KV_PAGE_SIZE, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(t.mem != MAP_FAILED);
	assert_int_equal(kv_uffd_register(u, t.mem, NPAGES * KV_PAGE_SIZE, &err), 0);
	pthread_create(&th, NULL, touch, &t);
	while (served < NPAGES) {
		struct kv_uffd_fault f;
		size_t idx;
		int r = kv_uffd_wait_fault(u, 5000, &f, &err);

		if (r != 1)
			fail_msg("no fault within 5 s after %d pages (%d): %s", served, r, err.msg);
		assert_true(f.addr >= (uintptr_t)t.mem);
		idx = (f.addr - (uintptr_t)t.mem) / KV_PAGE_SIZE;
		assert_true(idx < NPAGES);
		assert_false(f.write);
		if (idx % 4 == 0) {
			assert_int_equal(kv_uffd_place_zero(u, (void *)(uintptr_t)f.addr, KV_PAGE_SIZE, &err), 0);
			zeros++;
		} else {
			memset(page, (int)(idx + 1), sizeof(page));
			assert_int_equal(kv_uffd_place(u, (void *)(uintptr_t)f.addr, page, sizeof(page), &err), 0);
		}
		served++;
	}
	pthread_join(th, NULL);
	for (int i = 0; i < NPAGES; i++)
		assert_int_equal(t.seen[i], i % 4 == 0 ? 0 : i + 1);
	assert_int_equal(zeros, NPAGES / 4);
	/* A late copy never overwrites what is there. */
	memset(page, 0xee, sizeof(page));
	assert_int_equal(kv_uffd_place(u, t.mem + KV_PAGE_SIZE, page, sizeof(page), &err), 1);
	assert_int_equal(t.mem[KV_PAGE_SIZE + 5], 2);
	assert_int_equal(kv_uffd_place_zero(u, t.mem + KV_PAGE_SIZE, KV_PAGE_SIZE, &err), 1);
	assert_int_equal(t.mem[KV_PAGE_SIZE + 5], 2);
	assert_int_equal(kv_uffd_unregister(u, t.mem, NPAGES * KV_PAGE_SIZE, &err), 0);
	munmap(t.mem, NPAGES * KV_PAGE_SIZE);
	kv_uffd_close(u);
}

/* A page placed ahead of any fault: touching it does not fault. */
static void test_placed_before_touch(void **state)
{
	struct kv_error err = {0};
	uint8_t page[KV_PAGE_SIZE];
	struct kv_uffd_fault f;
	struct kv_uffd *u;
	uint8_t *mem;

	(void)state;
	u = open_or_skip();
	mem = mmap(NULL, 4 * KV_PAGE_SIZE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(mem != MAP_FAILED);
	assert_int_equal(kv_uffd_register(u, mem, 4 * KV_PAGE_SIZE, &err), 0);
	memset(page, 0x5a, sizeof(page));
	assert_int_equal(kv_uffd_place(u, mem + 2 * KV_PAGE_SIZE, page, sizeof(page), &err), 0);
	assert_int_equal(mem[2 * KV_PAGE_SIZE + 17], 0x5a);
	assert_int_equal(kv_uffd_wait_fault(u, 50, &f, &err), 0);
	/* Outside the registered range: refused, naming the address. */
	assert_true(kv_uffd_place(u, mem + 8 * KV_PAGE_SIZE, page, sizeof(page), &err) < 0);
	assert_non_null(strstr(err.msg, "placing"));
	munmap(mem, 4 * KV_PAGE_SIZE);
	kv_uffd_close(u);
}

struct waiter {
	struct kv_uffd *u;
	int ret;
};

static void *wait_one(void *arg)
{
	struct waiter *w = arg;
	struct kv_uffd_fault f;
	struct kv_error err = {0};

	w->ret = kv_uffd_wait_fault(w->u, -1, &f, &err);
	return NULL;
}

static void test_wakeup(void **state)
{
	struct waiter w = {.ret = -99};
	pthread_t th;

	(void)state;
	w.u = open_or_skip();
	pthread_create(&th, NULL, wait_one, &w);
	usleep(50 * 1000);
	kv_uffd_wakeup(w.u);
	pthread_join(th, NULL);
	assert_int_equal(w.ret, 0);
	kv_uffd_close(w.u);
}

/* ---- write-protection (background snapshot) ---- */

struct wp_writer {
	uint8_t *p;
	int done; /* atomic */
};

static void *wp_write(void *arg)
{
	struct wp_writer *w = arg;

	*(volatile uint8_t *)w->p = 0x42;
	__atomic_store_n(&w->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

/* A write to a protected page waits until the page is un-protected,
 * reads never wait, and a fault names the page with wp set; a page never
 * touched is protected too where the kernel says it can. */
static void test_write_protect(void **state)
{
	struct kv_error err = {0};
	struct wp_writer w = {0};
	struct kv_uffd_fault f;
	struct kv_uffd *u;
	uint8_t *mem;
	pthread_t th;

	(void)state;
	u = kv_uffd_open_wp(true, &err);
	if (!u) {
		printf("# skipped: %s\n", err.msg);
		return;
	}
	mem = mmap(NULL, 8 * KV_PAGE_SIZE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(mem != MAP_FAILED);
	memset(mem, 7, 4 * KV_PAGE_SIZE); /* pages 4..7 never touched */
	assert_int_equal(kv_uffd_register_wp(u, mem, 8 * KV_PAGE_SIZE, &err), 0);
	assert_int_equal(kv_uffd_write_protect(u, mem, 8 * KV_PAGE_SIZE, true, &err), 0);
	assert_int_equal(mem[2 * KV_PAGE_SIZE + 9], 7);

	w.p = mem + 2 * KV_PAGE_SIZE + 9;
	pthread_create(&th, NULL, wp_write, &w);
	assert_int_equal(kv_uffd_wait_fault(u, 2000, &f, &err), 1);
	assert_true(f.wp);
	assert_true(f.write);
	assert_int_equal(f.addr, (uintptr_t)(mem + 2 * KV_PAGE_SIZE));
	usleep(30 * 1000);
	assert_int_equal(__atomic_load_n(&w.done, __ATOMIC_ACQUIRE), 0);
	assert_int_equal(mem[2 * KV_PAGE_SIZE + 9], 7);
	assert_int_equal(kv_uffd_write_protect(u, mem + 2 * KV_PAGE_SIZE, KV_PAGE_SIZE, false, &err), 0);
	pthread_join(th, NULL);
	assert_int_equal(mem[2 * KV_PAGE_SIZE + 9], 0x42);
	/* Un-protected: no fault any more. */
	mem[2 * KV_PAGE_SIZE] = 1;
	assert_int_equal(kv_uffd_wait_fault(u, 0, &f, &err), 0);

	if (kv_uffd_wp_unpopulated(u)) {
		w.p = mem + 6 * KV_PAGE_SIZE;
		w.done = 0;
		pthread_create(&th, NULL, wp_write, &w);
		assert_int_equal(kv_uffd_wait_fault(u, 2000, &f, &err), 1);
		assert_true(f.wp);
		assert_int_equal(f.addr, (uintptr_t)(mem + 6 * KV_PAGE_SIZE));
		assert_int_equal(kv_uffd_write_protect(u, mem + 6 * KV_PAGE_SIZE, KV_PAGE_SIZE, false, &err), 0);
		pthread_join(th, NULL);
		assert_int_equal(mem[6 * KV_PAGE_SIZE], 0x42);
	} else {
		printf("# no UFFD_FEATURE_WP_UNPOPULATED: untouched pages not checked\n");
	}
	/* Unregistering drops the protection of the rest. */
	assert_int_equal(kv_uffd_unregister(u, mem, 8 * KV_PAGE_SIZE, &err), 0);
	mem[0] = 3;
	mem[7 * KV_PAGE_SIZE] = 3;
	/* Outside a registered range: refused, naming it. */
	assert_true(kv_uffd_write_protect(u, mem, KV_PAGE_SIZE, true, &err) < 0);
	assert_non_null(strstr(err.msg, "write-protect"));
	munmap(mem, 8 * KV_PAGE_SIZE);
	kv_uffd_close(u);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_faults_served),
	    cmocka_unit_test(test_placed_before_touch),
	    cmocka_unit_test(test_wakeup),
	    cmocka_unit_test(test_write_protect),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
