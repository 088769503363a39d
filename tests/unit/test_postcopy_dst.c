/* SPDX-License-Identifier: MIT */
/*
 * The destination's pages during postcopy, on real memory registered with
 * userfaultfd: threads standing in for vCPUs touch missing pages and
 * block in the kernel; a "source" thread answers the requests after a
 * delay. Asserted: every page arrives with the right bytes, a page is
 * asked for once however many threads wait on it, the figures (requests,
 * latency percentiles and histogram, blocktime) match what the delays
 * make certain, a late older copy never overwrites a page, discarded
 * pages fault again, and userfaultfd is released once every page is here.
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
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/clock.h"
#include "base/units.h"
#include "migration/postcopy/postcopy_dst.h"
#include "migration/postcopy/uffd.h"

#define NPAGES 64
#define MAXQ 1024

static uint8_t pattern(size_t page, size_t byte, int version)
{
	return (uint8_t)(page * 31 + byte * 7 + (size_t)version * 101 + 1);
}

static void fill_page(uint8_t *p, size_t page, int version)
{
	for (size_t j = 0; j < KV_PAGE_SIZE; j++)
		p[j] = pattern(page, j, version);
}

static bool page_is(const uint8_t *p, size_t page, int version)
{
	for (size_t j = 0; j < KV_PAGE_SIZE; j++)
		if (p[j] != pattern(page, j, version))
			return false;
	return true;
}

/* ---- the source: answers page requests from its own thread ---- */

struct fake_src {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t q[MAXQ];
	size_t head, n;
	bool stop;
	struct kv_pc_dst *d;
	int version;         /* the contents it sends */
	int delay_us;        /* before answering each request */
	int slow_page;       /* this page waits slow_us instead (-1: none) */
	int slow_us;
	uint64_t wait_faults; /* answer only once this many faults were read */
	int fail;            /* refuse this many requests (a broken link) */
	unsigned asked[NPAGES];
	unsigned placed;     /* kv_pc_dst_place returned (under lock) */
	pthread_t th;
};

static int src_request(void *opaque, size_t block, uint64_t off, uint64_t len,
		       struct kv_error *err)
{
	struct fake_src *s = opaque;
	int r = 0;

	assert_int_equal(block, 0);
	assert_int_equal(len, KV_PAGE_SIZE);
	pthread_mutex_lock(&s->lock);
	s->asked[off / KV_PAGE_SIZE]++;
	if (s->fail > 0) {
		s->fail--;
		r = kv_error_set(err, -EPIPE, "test: the link is down");
	} else {
		s->q[(s->head + s->n++) % MAXQ] = off;
		pthread_cond_broadcast(&s->cond);
	}
	pthread_mutex_unlock(&s->lock);
	return r;
}

static void wait_for_faults(struct fake_src *s)
{
	struct kv_pc_dst_stats st;
	int64_t until = kv_now_ms() + 5000;

	do {
		kv_pc_dst_get_stats(s->d, &st);
		if (st.faults >= s->wait_faults)
			return;
		usleep(1000);
	} while (kv_now_ms() < until);
	fail_msg("only %llu of %llu faults within 5 s", (unsigned long long)st.faults, (unsigned long long)s->wait_faults);
}

static void *src_thread(void *arg)
{
	struct fake_src *s = arg;
	uint8_t page[KV_PAGE_SIZE];

	pthread_mutex_lock(&s->lock);
	for (;;) {
		struct kv_error err = {0};
		uint64_t off;

		while (!s->n && !s->stop)
			pthread_cond_wait(&s->cond, &s->lock);
		if (!s->n)
			break;
		off = s->q[s->head];
		s->head = (s->head + 1) % MAXQ;
		s->n--;
		pthread_mutex_unlock(&s->lock);
		if (s->wait_faults)
			wait_for_faults(s);
		usleep((useconds_t)(off / KV_PAGE_SIZE == (uint64_t)s->slow_page ? s->slow_us : s->delay_us));
		fill_page(page, off / KV_PAGE_SIZE, s->version);
		if (kv_pc_dst_place(s->d, 0, off, page, &err) < 0)
			fail_msg("placing page %llu: %s", (unsigned long long)(off / KV_PAGE_SIZE), err.msg);
		pthread_mutex_lock(&s->lock);
		s->placed++;
		pthread_cond_broadcast(&s->cond);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

/* UFFDIO_COPY wakes the vCPUs before kv_pc_dst_place counts the page:
 * figures are read once the source saw its placements return. */
static void src_wait_placed(struct fake_src *s, unsigned n)
{
	int64_t until = kv_now_ms() + 5000;
	unsigned placed;

	do {
		pthread_mutex_lock(&s->lock);
		placed = s->placed;
		pthread_mutex_unlock(&s->lock);
		if (placed >= n)
			return;
		usleep(1000);
	} while (kv_now_ms() < until);
	fail_msg("the source placed %u of %u pages within 5 s", placed, n);
}

static void src_start(struct fake_src *s)
{
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	pthread_create(&s->th, NULL, src_thread, s);
}

static void src_stop(struct fake_src *s)
{
	pthread_mutex_lock(&s->lock);
	s->stop = true;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	pthread_join(s->th, NULL);
}

/* ---- vCPUs: threads that read pages ---- */

struct vcpu {
	pthread_t th;
	uint32_t tid;
	uint8_t *mem;
	int first, step, count; /* pages first, first + step, ... */
	pthread_barrier_t *ready, *go;
	uint8_t seen[NPAGES];
};

static void *vcpu_run(void *arg)
{
	struct vcpu *v = arg;

	v->tid = (uint32_t)gettid();
	pthread_barrier_wait(v->ready);
	pthread_barrier_wait(v->go);
	for (int i = 0; i < v->count; i++) {
		int p = (v->first + i * v->step) % NPAGES;

		v->seen[p] = ((volatile uint8_t *)v->mem)[(size_t)p * KV_PAGE_SIZE + 9];
	}
	return NULL;
}

struct rig {
	uint8_t *mem;
	struct fake_src src;
	struct kv_pc_dst *d;
	struct vcpu v[4];
	size_t nv;
	pthread_barrier_t ready, go;
};

static uint8_t *map_pages(void)
{
	uint8_t *m = mmap(NULL, NPAGES * KV_PAGE_SIZE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	assert_true(m != MAP_FAILED);
	return m;
}

static bool uffd_usable(void)
{
	struct kv_error err = {0};
	struct kv_uffd *u = kv_uffd_open(&err);

	if (!u) {
		printf("# skipped: %s\n", err.msg);
		return false;
	}
	kv_uffd_close(u);
	return true;
}

/* Memory, the destination (vCPU tids known), the source thread. The
 * vCPUs wait at `go`; the caller may discard before rig_listen. */
static void rig_init(struct rig *r, size_t nv)
{
	struct kv_error err = {0};
	uint32_t tids[4];
	struct kv_pc_dst_block b;
	struct kv_pc_dst_config cfg;

	if (!uffd_usable())
		skip();
	r->mem = map_pages();
	r->nv = nv;
	pthread_barrier_init(&r->ready, NULL, (unsigned)nv + 1);
	pthread_barrier_init(&r->go, NULL, (unsigned)nv + 1);
	for (size_t i = 0; i < nv; i++) {
		r->v[i].mem = r->mem;
		r->v[i].ready = &r->ready;
		r->v[i].go = &r->go;
		pthread_create(&r->v[i].th, NULL, vcpu_run, &r->v[i]);
	}
	pthread_barrier_wait(&r->ready);
	for (size_t i = 0; i < nv; i++)
		tids[i] = r->v[i].tid;
	b = (struct kv_pc_dst_block){"pc.ram", r->mem, NPAGES * KV_PAGE_SIZE};
	cfg = (struct kv_pc_dst_config){&b, 1, src_request, &r->src, tids, nv};
	r->d = kv_pc_dst_new(&cfg, &err);
	assert_non_null(r->d);
	r->src.d = r->d;
	src_start(&r->src);
}

static void rig_listen_and_go(struct rig *r)
{
	struct kv_error err = {0};

	if (kv_pc_dst_listen(r->d, &err) < 0)
		fail_msg("listen: %s", err.msg);
	pthread_barrier_wait(&r->go);
}

static void rig_join(struct rig *r)
{
	for (size_t i = 0; i < r->nv; i++)
		pthread_join(r->v[i].th, NULL);
}

static void rig_free(struct rig *r)
{
	src_stop(&r->src);
	kv_pc_dst_free(r->d);
	munmap(r->mem, NPAGES * KV_PAGE_SIZE);
	pthread_barrier_destroy(&r->ready);
	pthread_barrier_destroy(&r->go);
}

/* Four vCPUs read every page, each in its own order, so most pages are
 * touched by several; the source answers after 2 ms. */
static void test_faults_requested_once(void **state)
{
	static struct rig r;
	struct kv_error err = {0};
	struct kv_pc_dst_stats st;
	uint64_t bt[4], hist_sum = 0, slow = 0;
	const int steps[4] = {1, 3, 5, 7};

	(void)state;
	memset(&r, 0, sizeof(r));
	r.src.slow_page = -1;
	r.src.delay_us = 2000;
	r.src.version = 1;
	for (int i = 0; i < 4; i++) {
		r.v[i].first = i * 16;
		r.v[i].step = steps[i];
		r.v[i].count = NPAGES;
	}
	rig_init(&r, 4);
	/* Nothing is here yet: releasing userfaultfd is refused. */
	rig_listen_and_go(&r);
	assert_true(kv_pc_dst_finish(r.d, &err) < 0);
	assert_non_null(strstr(err.msg, "pages are still missing: userfaultfd stays armed"));
	rig_join(&r);
	for (int p = 0; p < NPAGES; p++) {
		assert_int_equal(r.src.asked[p], 1);
		assert_true(page_is(r.mem + (size_t)p * KV_PAGE_SIZE, (size_t)p, 1));
		for (int i = 0; i < 4; i++)
			assert_int_equal(r.v[i].seen[p], pattern((size_t)p, 9, 1));
	}
	assert_int_equal(kv_pc_dst_wait_complete(r.d, 5000, &err), 1);
	kv_pc_dst_get_stats(r.d, &st);
	assert_int_equal(st.requests, NPAGES);
	assert_int_equal(st.received, NPAGES);
	assert_int_equal(st.placed, NPAGES);
	assert_int_equal(st.duplicates, 0);
	/* Every page's first waiter waited the 2 ms delay at least (later
	 * waiters on the same request may wait less). */
	assert_true(st.lat_count >= NPAGES && st.lat_count <= st.faults);
	for (int i = 10; i < KV_PC_LAT_BUCKETS; i++) /* from 1024 µs */
		slow += st.lat_hist[i];
	for (int i = 0; i < KV_PC_LAT_BUCKETS; i++)
		hist_sum += st.lat_hist[i];
	assert_true(slow >= NPAGES);
	assert_int_equal(hist_sum, st.lat_count);
	assert_true(st.lat_mean_ns * st.lat_count >= NPAGES * 2000000ULL);
	assert_true(st.lat_p50_ns <= st.lat_p99_ns && st.lat_p99_ns <= st.lat_max_ns);
	/* Each vCPU waited on at least the pages it was first to touch. */
	kv_pc_dst_vcpu_blocktime(r.d, bt, 4);
	for (int i = 0; i < 4; i++) {
		assert_true(bt[i] >= 2000000);
		assert_true(st.blocktime_ns <= bt[i]);
	}
	assert_int_equal(kv_pc_dst_finish(r.d, &err), 0);
	/* Plain memory again: writes need nobody. */
	memset(r.mem, 0x5a, KV_PAGE_SIZE);
	assert_int_equal(r.mem[100], 0x5a);
	rig_free(&r);
}

/* Four vCPUs touch one page at once: one request, four waiters woken by
 * one placement, and all four blocked together for at least the 50 ms the
 * source waits once it has seen the four faults. */
static void test_one_page_many_waiters(void **state)
{
	static struct rig r;
	struct kv_error err = {0};
	struct kv_pc_dst_stats st;
	uint64_t bt[4];

	(void)state;
	memset(&r, 0, sizeof(r));
	r.src.slow_page = -1;
	r.src.delay_us = 50000;
	r.src.wait_faults = 4;
	for (int i = 0; i < 4; i++)
		r.v[i] = (struct vcpu){.first = 5, .step = 0, .count = 1};
	rig_init(&r, 4);
	rig_listen_and_go(&r);
	rig_join(&r);
	src_wait_placed(&r.src, 1);
	assert_int_equal(r.src.asked[5], 1);
	kv_pc_dst_get_stats(r.d, &st);
	assert_int_equal(st.requests, 1);
	assert_int_equal(st.faults, 4);
	assert_int_equal(st.lat_count, 4);
	assert_true(st.lat_p50_ns >= 50000000);
	assert_true(st.blocktime_ns >= 50000000);
	kv_pc_dst_vcpu_blocktime(r.d, bt, 4);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(r.v[i].seen[5], pattern(5, 9, 0));
		assert_true(bt[i] >= st.blocktime_ns);
	}
	assert_int_equal(kv_pc_dst_wait_complete(r.d, 10, &err), 0);
	rig_free(&r);
}

/* A page placed on request is never overwritten by the background
 * stream's older copy, nor a zero page by data; two placers racing on
 * every page leave whole pages of one of them, each placed once. */
struct placer {
	struct kv_pc_dst *d;
	int version;
	int dups;
};

static void *place_all(void *arg)
{
	struct placer *p = arg;
	uint8_t page[KV_PAGE_SIZE];

	for (size_t i = 0; i < NPAGES; i++) {
		struct kv_error err = {0};
		int r;

		fill_page(page, i, p->version);
		r = kv_pc_dst_place(p->d, 0, i * KV_PAGE_SIZE, page, &err);
		if (r < 0)
			fail_msg("placing %zu: %s", i, err.msg);
		p->dups += r;
	}
	return NULL;
}

static void test_never_overwritten(void **state)
{
	static struct rig r;
	struct kv_error err = {0};
	struct kv_pc_dst_stats st;
	uint8_t page[KV_PAGE_SIZE];
	struct placer a, b;
	pthread_t ta, tb;

	(void)state;
	memset(&r, 0, sizeof(r));
	r.src.slow_page = -1;
	r.src.version = 2; /* the newer copy, on request */
	r.v[0] = (struct vcpu){.first = 3, .step = 0, .count = 1};
	rig_init(&r, 1);
	rig_listen_and_go(&r);
	rig_join(&r);
	src_wait_placed(&r.src, 1);
	assert_true(page_is(r.mem + 3 * KV_PAGE_SIZE, 3, 2));
	fill_page(page, 3, 1); /* the background stream's older copy */
	assert_int_equal(kv_pc_dst_place(r.d, 0, 3 * KV_PAGE_SIZE, page, &err), 1);
	assert_true(page_is(r.mem + 3 * KV_PAGE_SIZE, 3, 2));
	assert_int_equal(kv_pc_dst_place(r.d, 0, 3 * KV_PAGE_SIZE, NULL, &err), 1);
	assert_true(page_is(r.mem + 3 * KV_PAGE_SIZE, 3, 2));
	/* Zeros first, then data: the zeros stay. */
	assert_int_equal(kv_pc_dst_place(r.d, 0, 4 * KV_PAGE_SIZE, NULL, &err), 0);
	fill_page(page, 4, 1);
	assert_int_equal(kv_pc_dst_place(r.d, 0, 4 * KV_PAGE_SIZE, page, &err), 1);
	assert_int_equal(r.mem[4 * KV_PAGE_SIZE + 100], 0);
	/* Bad pages are refused. */
	assert_true(kv_pc_dst_place(r.d, 0, NPAGES * KV_PAGE_SIZE, page, &err) < 0);
	assert_non_null(strstr(err.msg, "unaligned or past its end"));
	/* Two placers race over every page. */
	a = (struct placer){r.d, 5, 0};
	b = (struct placer){r.d, 6, 0};
	pthread_create(&ta, NULL, place_all, &a);
	pthread_create(&tb, NULL, place_all, &b);
	pthread_join(ta, NULL);
	pthread_join(tb, NULL);
	assert_int_equal(a.dups + b.dups, NPAGES + 2);
	for (size_t i = 0; i < NPAGES; i++) {
		const uint8_t *p = r.mem + i * KV_PAGE_SIZE;

		if (i == 3 || i == 4)
			continue;
		assert_true(page_is(p, i, 5) || page_is(p, i, 6));
	}
	kv_pc_dst_get_stats(r.d, &st);
	assert_int_equal(st.received, NPAGES);
	assert_int_equal(st.placed, NPAGES);
	assert_int_equal(st.placed_zero, 1);
	assert_int_equal(st.duplicates, 3 + NPAGES + 2);
	assert_int_equal(kv_pc_dst_wait_complete(r.d, 0, &err), 1);
	assert_int_equal(kv_pc_dst_finish(r.d, &err), 0);
	rig_free(&r);
}

/* Precopy wrote pages 0..47 (version 1) and sent 48..55 as zeros it
 * never wrote; 56..63 never came, but a prefault populated them (with
 * junk here). The source then discards 10..19 and 40. After LISTEN the
 * discarded pages and 56..63, and only those, are asked for (version 2);
 * the zero pages fault and are filled locally. */
static void test_discard_then_refault(void **state)
{
	static struct rig r;
	struct kv_error err = {0};
	struct kv_pc_dst_stats st;

	(void)state;
	memset(&r, 0, sizeof(r));
	r.src.slow_page = -1;
	r.src.version = 2;
	r.v[0] = (struct vcpu){.first = 0, .step = 1, .count = NPAGES};
	rig_init(&r, 1);
	for (size_t i = 0; i < 48; i++)
		fill_page(r.mem + i * KV_PAGE_SIZE, i, 1);
	memset(r.mem + 56 * KV_PAGE_SIZE, 0xee, 8 * KV_PAGE_SIZE);
	kv_pc_dst_mark_received(r.d, 0, 0, 56 * KV_PAGE_SIZE);
	assert_int_equal(kv_pc_dst_discard(r.d, 0, 10 * KV_PAGE_SIZE, 10 * KV_PAGE_SIZE, &err), 0);
	assert_int_equal(kv_pc_dst_discard(r.d, 0, 40 * KV_PAGE_SIZE, KV_PAGE_SIZE, &err), 0);
	assert_true(kv_pc_dst_discard(r.d, 0, 62 * KV_PAGE_SIZE, 4 * KV_PAGE_SIZE, &err) < 0);
	assert_non_null(strstr(err.msg, "postcopy: discard range at offset 0x3e000 length 0x4000 goes past the end of block 'pc.ram'"));
	kv_error_clear(&err);
	assert_true(kv_pc_dst_discard(r.d, 0, 100, KV_PAGE_SIZE, &err) < 0);
	assert_non_null(strstr(err.msg, "not aligned"));
	assert_false(kv_pc_dst_has_page(r.d, 0, 10 * KV_PAGE_SIZE));
	assert_false(kv_pc_dst_has_page(r.d, 0, 40 * KV_PAGE_SIZE));
	assert_true(kv_pc_dst_has_page(r.d, 0, 41 * KV_PAGE_SIZE));
	kv_pc_dst_get_stats(r.d, &st);
	assert_int_equal(st.received, 56 - 11);
	rig_listen_and_go(&r);
	rig_join(&r);
	src_wait_placed(&r.src, 19);
	for (size_t i = 0; i < NPAGES; i++) {
		bool ask = (i >= 10 && i < 20) || i == 40 || i >= 56;
		const uint8_t *p = r.mem + i * KV_PAGE_SIZE;

		assert_int_equal(r.src.asked[i], ask ? 1 : 0);
		if (ask)
			assert_true(page_is(p, i, 2));
		else if (i < 48)
			assert_true(page_is(p, i, 1));
		else
			assert_int_equal(p[9] | p[4095], 0);
	}
	kv_pc_dst_get_stats(r.d, &st);
	assert_int_equal(st.requests, 19);
	assert_int_equal(st.received, NPAGES);
	assert_int_equal(kv_pc_dst_wait_complete(r.d, 0, &err), 1);
	assert_int_equal(kv_pc_dst_finish(r.d, &err), 0);
	rig_free(&r);
}

/* The request cannot go out (the link is down): the vCPU stays blocked
 * until the recovery asks again. */
static void test_rerequest_after_failure(void **state)
{
	static struct rig r;
	struct kv_error err = {0};
	struct kv_pc_dst_stats st;
	int64_t until;

	(void)state;
	memset(&r, 0, sizeof(r));
	r.src.slow_page = -1;
	r.src.fail = 1;
	r.v[0] = (struct vcpu){.first = 7, .step = 0, .count = 1};
	rig_init(&r, 1);
	rig_listen_and_go(&r);
	until = kv_now_ms() + 5000;
	do {
		kv_pc_dst_get_stats(r.d, &st);
		usleep(1000);
	} while (st.faults == 0 && kv_now_ms() < until);
	usleep(20000);
	assert_int_equal(r.src.asked[7], 1);
	assert_false(kv_pc_dst_has_page(r.d, 0, 7 * KV_PAGE_SIZE));
	assert_int_equal(kv_pc_dst_rerequest(r.d, &err), 0);
	rig_join(&r);
	src_wait_placed(&r.src, 1);
	assert_int_equal(r.src.asked[7], 2);
	assert_int_equal(r.v[0].seen[7], pattern(7, 9, 0));
	kv_pc_dst_get_stats(r.d, &st);
	assert_int_equal(st.requests, 2);
	assert_int_equal(st.lat_count, 1);
	rig_free(&r);
}

/* One vCPU, so every fault is a page's only waiter: 63 pages served
 * after 1 ms, one after 20 ms. p50 is the 1 ms, p99 the 20 ms; the
 * histogram has nothing under 512 µs and one fault from 16 ms on. */
static void test_latency_figures(void **state)
{
	static struct rig r;
	struct kv_error err = {0};
	struct kv_pc_dst_stats st;
	uint64_t bt, late = 0;

	(void)state;
	memset(&r, 0, sizeof(r));
	r.src.delay_us = 1000;
	r.src.slow_page = 33;
	r.src.slow_us = 20000;
	r.v[0] = (struct vcpu){.first = 0, .step = 1, .count = NPAGES};
	rig_init(&r, 1);
	rig_listen_and_go(&r);
	rig_join(&r);
	assert_int_equal(kv_pc_dst_wait_complete(r.d, 5000, &err), 1);
	kv_pc_dst_get_stats(r.d, &st);
	assert_int_equal(st.faults, NPAGES);
	assert_int_equal(st.lat_count, NPAGES);
	assert_true(st.lat_p50_ns >= 1000000 && st.lat_p50_ns < 20000000);
	assert_true(st.lat_p99_ns >= 20000000);
	assert_true(st.lat_max_ns >= st.lat_p99_ns);
	assert_true(st.lat_mean_ns >= 1000000);
	for (int i = 0; i < 9; i++)
		assert_int_equal(st.lat_hist[i], 0);
	for (int i = 14; i < KV_PC_LAT_BUCKETS; i++)
		late += st.lat_hist[i];
	assert_true(late >= 1);
	/* One vCPU: it alone blocked is every vCPU blocked. */
	kv_pc_dst_vcpu_blocktime(r.d, &bt, 1);
	assert_true(bt >= NPAGES * 1000000ULL);
	assert_int_equal(st.blocktime_ns, bt);
	rig_free(&r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_faults_requested_once),
	    cmocka_unit_test(test_one_page_many_waiters),
	    cmocka_unit_test(test_latency_figures),
	    cmocka_unit_test(test_never_overwritten),
	    cmocka_unit_test(test_discard_then_refault),
	    cmocka_unit_test(test_rerequest_after_failure),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
