/* SPDX-License-Identifier: MIT */
/*
 * The three postcopy parts in one loop over loopback TCP, before the
 * engine calls them: the destination's fault thread writes REQ_PAGES_ID /
 * REQ_PAGES (return-path framing) on a preempt connection; the source's
 * reader queues them (postcopy_src), a preempt sender answers on the same
 * connection while a background sender streams every other page on a
 * second one, moving its scan to just after each requested page; the
 * destination's two receivers place what comes. Two vCPU threads read
 * scattered pages of registered memory meanwhile.
 *
 * Asserted: the guest memory ends equal to the source's, every page
 * crossed the network exactly once (nothing placed twice, nothing
 * dropped), both sides counted the same requests, and the destination
 * released userfaultfd.
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
#include <sys/uio.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/units.h"
#include "io/channel.h"
#include "migration/postcopy/postcopy_dst.h"
#include "migration/postcopy/postcopy_src.h"
#include "migration/postcopy/postcopy_wire.h"
#include "migration/postcopy/uffd.h"
#include "migration/return_path.h"

#define NPAGES 512
#define END_MARK UINT64_MAX

struct loop {
	/* source */
	uint8_t *src_mem;
	struct kv_pc_src *src;
	struct kv_chan *src_pre, *src_bg; /* preempt (+ requests), background */
	bool src_stop; /* atomic */
	/* destination */
	uint8_t *dst_mem;
	struct kv_pc_dst *dst;
	struct kv_chan *dst_pre, *dst_bg;
	pthread_mutex_t rp_lock; /* the fault thread and the end share dst_pre */
	int last_block;
	unsigned frames; /* pages received, both connections (atomic) */
	/* vCPUs */
	uint32_t tids[2];
	pthread_barrier_t ready, go;
	unsigned bad_reads;
};

/* ---- framing: page frames (be64 offset, page) and rp messages ---- */

static void put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint64_t get_be64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

static int send_frame(struct kv_chan *c, uint64_t off, const uint8_t *page)
{
	struct kv_error err = {0};
	uint8_t hdr[8];
	struct iovec iov[2] = {{hdr, 8}, {(void *)page, page ? KV_PAGE_SIZE : 0}};

	put_be64(hdr, off);
	return kv_chan_writev_full(c, iov, page ? 2 : 1, &err);
}

/* ---- source ---- */

static void *src_reader(void *arg)
{
	struct loop *l = arg;
	uint8_t hdr[4], payload[KV_RP_MAX_PAYLOAD];

	for (;;) {
		struct kv_error err = {0};
		uint16_t type, len;

		if (kv_chan_read_full(l->src_pre, hdr, 4, &err) < 0)
			break; /* the destination closed: done */
		type = (uint16_t)(hdr[0] << 8 | hdr[1]);
		len = (uint16_t)(hdr[2] << 8 | hdr[3]);
		if (kv_rp_check_header(type, len, &err) < 0 ||
		    kv_chan_read_full(l->src_pre, payload, len, &err) < 0 ||
		    kv_pc_src_handle_message(l->src, type, payload, len, &err) < 0)
			fail_msg("source reader: %s", err.msg);
	}
	return NULL;
}

static void *src_preempt(void *arg)
{
	struct loop *l = arg;
	struct kv_pc_page pg;

	while (!__atomic_load_n(&l->src_stop, __ATOMIC_ACQUIRE)) {
		if (kv_pc_src_wait_urgent(l->src, 20) == 0)
			continue;
		while (kv_pc_src_next_urgent(l->src, &pg))
			if (send_frame(l->src_pre, pg.offset, l->src_mem + pg.offset) < 0)
				return NULL;
	}
	return NULL;
}

/* Every page not sent yet, in order from wherever the last request
 * points, slowly enough that the vCPUs fault on most of them first. */
static void *src_background(void *arg)
{
	struct loop *l = arg;
	struct kv_pc_page hint;
	uint64_t p = 0, idle = 0;

	while (idle < NPAGES) {
		if (kv_pc_src_take_scan_hint(l->src, &hint))
			p = hint.offset / KV_PAGE_SIZE;
		if (kv_pc_src_claim(l->src, 0, p * KV_PAGE_SIZE)) {
			idle = 0;
			if (send_frame(l->src_bg, p * KV_PAGE_SIZE, l->src_mem + p * KV_PAGE_SIZE) < 0)
				fail_msg("background sender: the destination went away");
			usleep(300);
		} else {
			idle++;
		}
		p = (p + 1) % NPAGES;
	}
	send_frame(l->src_bg, END_MARK, NULL);
	return NULL;
}

/* ---- destination ---- */

static int dst_request(void *opaque, size_t block, uint64_t offset,
		       uint64_t len, struct kv_error *err)
{
	struct loop *l = opaque;
	uint8_t msg[4 + 13 + KV_PC_IDSTR_MAX];
	struct iovec iov;
	uint16_t type;
	int n, r;

	pthread_mutex_lock(&l->rp_lock);
	n = kv_pc_req_encode_next(&l->last_block, (int)block, "pc.ram", offset, (uint32_t)len, &type, msg + 4, err);
	msg[0] = (uint8_t)(type >> 8);
	msg[1] = (uint8_t)type;
	msg[2] = (uint8_t)(n >> 8);
	msg[3] = (uint8_t)n;
	iov = (struct iovec){msg, 4 + (size_t)n};
	r = n < 0 ? n : kv_chan_writev_full(l->dst_pre, &iov, 1, err);
	pthread_mutex_unlock(&l->rp_lock);
	return r;
}

struct receiver {
	struct loop *l;
	struct kv_chan *c;
	bool until_end; /* the background connection ends with END_MARK */
};

static void *dst_receive(void *arg)
{
	struct receiver *rc = arg;
	uint8_t hdr[8], page[KV_PAGE_SIZE];

	for (;;) {
		struct kv_error err = {0};
		uint64_t off;

		if (kv_chan_read_full(rc->c, hdr, 8, &err) < 0)
			break; /* preempt: closed at the end */
		off = get_be64(hdr);
		if (off == END_MARK)
			break;
		if (kv_chan_read_full(rc->c, page, KV_PAGE_SIZE, &err) < 0)
			fail_msg("receiver: %s", err.msg);
		if (kv_pc_dst_place(rc->l->dst, 0, off, page, &err) < 0)
			fail_msg("receiver: %s", err.msg);
		__atomic_fetch_add(&rc->l->frames, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

struct vcpu {
	struct loop *l;
	int idx;
};

static void *vcpu_run(void *arg)
{
	struct vcpu *v = arg;
	struct loop *l = v->l;
	unsigned seed = (unsigned)v->idx * 7919 + 1;

	l->tids[v->idx] = (uint32_t)gettid();
	pthread_barrier_wait(&l->ready);
	pthread_barrier_wait(&l->go);
	for (int i = 0; i < 96; i++) {
		size_t p = rand_r(&seed) % NPAGES;
		size_t at = p * KV_PAGE_SIZE + (size_t)(rand_r(&seed) % KV_PAGE_SIZE);

		if (((volatile uint8_t *)l->dst_mem)[at] != l->src_mem[at])
			__atomic_fetch_add(&l->bad_reads, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

/* ---- the loop ---- */

static void connect_pair(struct kv_listener *ls, struct kv_chan **a,
			 struct kv_chan **b)
{
	struct kv_error err = {0};

	*a = kv_chan_connect(kv_listener_uri(ls), &err);
	assert_non_null(*a);
	*b = kv_listener_accept(ls, &err);
	assert_non_null(*b);
}

static uint8_t *map_pages(void)
{
	uint8_t *m = mmap(NULL, NPAGES * KV_PAGE_SIZE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	assert_true(m != MAP_FAILED);
	return m;
}

static void make_source(struct loop *l)
{
	struct kv_pc_block b = {"pc.ram", NPAGES * KV_PAGE_SIZE, KV_PAGE_SIZE};
	struct kv_pc_blocks bs = {&b, 1};
	struct kv_error err = {0};

	l->src_mem = map_pages();
	for (size_t i = 0; i < NPAGES * KV_PAGE_SIZE; i++)
		l->src_mem[i] = (uint8_t)(i * 13 + i / KV_PAGE_SIZE);
	memset(l->src_mem + 5 * KV_PAGE_SIZE, 0, KV_PAGE_SIZE);
	l->src = kv_pc_src_new(&bs, &err);
	assert_non_null(l->src);
}

static void make_destination(struct loop *l)
{
	struct kv_pc_dst_block b = {"pc.ram", NULL, NPAGES * KV_PAGE_SIZE};
	struct kv_pc_dst_config cfg;
	struct kv_error err = {0};

	l->dst_mem = map_pages();
	b.host = l->dst_mem;
	cfg = (struct kv_pc_dst_config){&b, 1, dst_request, l, l->tids, 2};
	l->dst = kv_pc_dst_new(&cfg, &err);
	assert_non_null(l->dst);
	if (kv_pc_dst_listen(l->dst, &err) < 0)
		fail_msg("%s", err.msg);
}

static void test_loop_over_tcp(void **state)
{
	static struct loop l;
	struct kv_error err = {0};
	struct kv_pc_dst_stats dst_st;
	struct kv_pc_src_stats src_st;
	struct kv_listener *ls;
	struct kv_uffd *probe;
	pthread_t rd, pre, bg, rx_pre, rx_bg, vc[2];
	struct receiver r_pre = {&l, NULL, false}, r_bg = {&l, NULL, true};
	struct vcpu v[2] = {{&l, 0}, {&l, 1}};

	(void)state;
	probe = kv_uffd_open(&err);
	if (!probe) {
		printf("# skipped: %s\n", err.msg);
		skip();
	}
	kv_uffd_close(probe);
	memset(&l, 0, sizeof(l));
	l.last_block = -1;
	pthread_mutex_init(&l.rp_lock, NULL);
	pthread_barrier_init(&l.ready, NULL, 3);
	pthread_barrier_init(&l.go, NULL, 3);
	ls = kv_listener_open("tcp:127.0.0.1:0", &err);
	assert_non_null(ls);
	connect_pair(ls, &l.dst_pre, &l.src_pre);
	connect_pair(ls, &l.src_bg, &l.dst_bg);
	kv_listener_close(ls);
	make_source(&l);
	for (int i = 0; i < 2; i++)
		pthread_create(&vc[i], NULL, vcpu_run, &v[i]);
	pthread_barrier_wait(&l.ready);
	make_destination(&l);
	r_pre.c = l.dst_pre;
	r_bg.c = l.dst_bg;
	pthread_create(&rx_pre, NULL, dst_receive, &r_pre);
	pthread_create(&rx_bg, NULL, dst_receive, &r_bg);
	pthread_create(&rd, NULL, src_reader, &l);
	pthread_create(&pre, NULL, src_preempt, &l);
	pthread_barrier_wait(&l.go);
	pthread_create(&bg, NULL, src_background, &l);

	for (int i = 0; i < 2; i++)
		pthread_join(vc[i], NULL);
	assert_int_equal(kv_pc_dst_wait_complete(l.dst, 20000, &err), 1);
	pthread_join(bg, NULL);
	pthread_join(rx_bg, NULL);
	/* The end: the destination closes the preempt connection. */
	__atomic_store_n(&l.src_stop, true, __ATOMIC_RELEASE);
	kv_pc_src_wake(l.src);
	pthread_join(pre, NULL);
	kv_chan_shutdown(l.dst_pre);
	pthread_join(rx_pre, NULL);
	pthread_join(rd, NULL);
	/* Requests that came after their page left: each a duplicate. */
	{
		struct kv_pc_page pg;

		assert_false(kv_pc_src_next_urgent(l.src, &pg));
	}

	assert_int_equal(l.bad_reads, 0);
	assert_memory_equal(l.dst_mem, l.src_mem, NPAGES * KV_PAGE_SIZE);
	kv_pc_dst_get_stats(l.dst, &dst_st);
	kv_pc_src_get_stats(l.src, &src_st);
	assert_int_equal(l.frames, NPAGES);
	assert_int_equal(dst_st.placed, NPAGES);
	assert_int_equal(dst_st.duplicates, 0);
	assert_int_equal(src_st.urgent + src_st.background, NPAGES);
	assert_true(dst_st.requests > 0);
	assert_int_equal(src_st.requests, dst_st.requests);
	assert_int_equal(src_st.urgent + src_st.duplicates, dst_st.requests);
	printf("# %llu requests, %llu served first, latency p50 %llu us p99 %llu us\n",
	       (unsigned long long)dst_st.requests, (unsigned long long)src_st.urgent,
	       (unsigned long long)dst_st.lat_p50_ns / 1000, (unsigned long long)dst_st.lat_p99_ns / 1000);
	assert_int_equal(kv_pc_dst_finish(l.dst, &err), 0);

	kv_pc_dst_free(l.dst);
	kv_pc_src_free(l.src);
	kv_chan_close(l.src_pre);
	kv_chan_close(l.src_bg);
	kv_chan_close(l.dst_pre);
	kv_chan_close(l.dst_bg);
	munmap(l.src_mem, NPAGES * KV_PAGE_SIZE);
	munmap(l.dst_mem, NPAGES * KV_PAGE_SIZE);
	pthread_barrier_destroy(&l.ready);
	pthread_barrier_destroy(&l.go);
	pthread_mutex_destroy(&l.rp_lock);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_loop_over_tcp),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
