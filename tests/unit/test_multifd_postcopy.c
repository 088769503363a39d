/* SPDX-License-Identifier: MIT */
/*
 * multifd during postcopy (kvmig's extension), at the channels' level:
 * a real sender and receiver (multifd.c) over unix sockets, two channels.
 * Precopy packets are written in place; after kv_mfd_send_set_postcopy
 * every packet carries the POSTCOPY flag, and the receiver holds them
 * until kv_mfd_recv_pc_listen, then hands each page to target.place once
 * (never writing guest memory itself); the last sync returns only once
 * every one of them was placed. A precopy packet after LISTEN, and a
 * POSTCOPY packet where postcopy was never advised, fail the receiver
 * with a message saying so.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/units.h"
#include "io/channel.h"
#include "migration/multifd/multifd.h"

#define NPAGES	   200
#define PRE_PAGES  80 /* 0..79 before the switch, the rest after */
#define CHANNELS   2
#define BLOCK	   "blk"

struct rig {
	uint8_t *src, *dst;	/* the block on each side */
	uint8_t *placed;	/* what target.place received */
	unsigned place_count[NPAGES]; /* atomic */
	unsigned place_calls;	       /* atomic */
	struct kv_mfd_send *m;
	struct kv_mfd_recv *r;
	struct kv_listener *l;
	struct kv_chan *main_src, *main_dst; /* the loader's main channel */
	char uri[108];
	/* the source's sync on a thread of its own */
	pthread_t syncer;
	int sync_ret;
	struct kv_error sync_err;
};

static int block(void *opaque, const char *name, uint8_t **host,
		 uint64_t *len, unsigned long **written)
{
	struct rig *g = opaque;

	if (strcmp(name, BLOCK))
		return -ENOENT;
	*host = g->dst;
	*len = (uint64_t)NPAGES * KV_PAGE_SIZE;
	*written = NULL;
	return 0;
}

/* userfaultfd's stand-in: each page into g->placed, counted. */
static int place(void *opaque, const uint8_t *host, const uint64_t *offs,
		 const uint8_t *data, uint32_t normal, uint32_t zero,
		 struct kv_error *err)
{
	struct rig *g = opaque;

	(void)err;
	assert_ptr_equal(host, g->dst);
	for (uint32_t i = 0; i < normal + zero; i++) {
		uint64_t pg = offs[i] / KV_PAGE_SIZE;

		if (i < normal)
			memcpy(g->placed + offs[i],
			       data + (size_t)i * KV_PAGE_SIZE, KV_PAGE_SIZE);
		else
			memset(g->placed + offs[i], 0, KV_PAGE_SIZE);
		__atomic_add_fetch(&g->place_count[pg], 1, __ATOMIC_RELAXED);
	}
	__atomic_add_fetch(&g->place_calls, 1, __ATOMIC_RELAXED);
	return 0;
}

static struct kv_mfd_config config(void)
{
	return (struct kv_mfd_config){.channels = CHANNELS,
				      .method = KV_MFD_METHOD_NONE,
				      .zero = KV_MFD_ZERO_MULTIFD};
}

static void rig_up(struct rig *g, bool advise)
{
	static int n;
	struct kv_mfd_config cfg = config();
	struct kv_mfd_target t = {.block = block, .place = place, .opaque = g};
	struct kv_error err = {0};
	int sv[2];

	memset(g, 0, sizeof(*g));
	g->src = calloc(NPAGES, KV_PAGE_SIZE);
	g->dst = calloc(NPAGES, KV_PAGE_SIZE);
	g->placed = calloc(NPAGES, KV_PAGE_SIZE);
	assert_true(g->src && g->dst && g->placed);
	/* every fifth page zero, the others numbered */
	for (size_t p = 0; p < NPAGES; p++)
		if (p % 5)
			memset(g->src + p * KV_PAGE_SIZE, (int)(p & 0xff) | 1,
			       KV_PAGE_SIZE);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	g->main_src = kv_chan_from_fd(sv[0], "main-src", &err);
	g->main_dst = kv_chan_from_fd(sv[1], "main-dst", &err);
	assert_true(g->main_src && g->main_dst);
	snprintf(g->uri, sizeof(g->uri), "unix:/tmp/kvmig-test-mfdpc-%d-%d.sock",
		 getpid(), n++);
	g->l = kv_listener_open(g->uri, &err);
	assert_non_null(g->l);
	g->r = kv_mfd_recv_new(&cfg, &t, g->main_dst, &err);
	assert_non_null(g->r);
	g->m = kv_mfd_send_start(g->uri, &cfg, &err);
	if (!g->m)
		fail_msg("%s", err.msg);
	for (unsigned i = 0; i < CHANNELS; i++) {
		struct kv_chan *c = kv_listener_accept(g->l, &err);

		assert_non_null(c);
		assert_int_equal(kv_mfd_recv_add_channel(g->r, c, &err), 0);
	}
	if (advise)
		kv_mfd_recv_pc_advise(g->r);
	kv_mfd_recv_blocks_ready(g->r);
}

static void rig_down(struct rig *g)
{
	kv_mfd_send_free(g->m);
	kv_mfd_recv_free(g->r, NULL);
	kv_listener_close(g->l);
	unlink(g->uri + 5);
	kv_chan_close(g->main_src);
	kv_chan_close(g->main_dst);
	free(g->src);
	free(g->dst);
	free(g->placed);
}

static void send_pages(struct rig *g, size_t from, size_t to)
{
	struct kv_error err = {0};

	for (size_t p = from; p < to; p++)
		assert_int_equal(kv_mfd_send_page(g->m, BLOCK,
						  g->src + p * KV_PAGE_SIZE,
						  p * KV_PAGE_SIZE, false,
						  &err),
				 0);
}

static void *sync_main(void *opaque)
{
	struct rig *g = opaque;

	g->sync_ret = kv_mfd_send_sync(g->m, &g->sync_err);
	return NULL;
}

/* The source's sync may wait for the receiver: on a thread. */
static void sync_start(struct rig *g)
{
	assert_int_equal(pthread_create(&g->syncer, NULL, sync_main, g), 0);
}

/* Precopy's pass: written in place, nothing through place. */
static void precopy_pass(struct rig *g)
{
	struct kv_error err = {0};

	send_pages(g, 0, PRE_PAGES);
	sync_start(g);
	assert_int_equal(kv_mfd_recv_sync(g->r, &err), 0);
	pthread_join(g->syncer, NULL);
	assert_int_equal(g->sync_ret, 0);
	assert_memory_equal(g->dst, g->src, (size_t)PRE_PAGES * KV_PAGE_SIZE);
	assert_int_equal(__atomic_load_n(&g->place_calls, __ATOMIC_RELAXED),
			 0);
}

static void test_postcopy_pages_placed_once_after_listen(void **state)
{
	struct kv_error err = {0};
	uint64_t normal = 0, zero = 0;
	struct rig g;

	(void)state;
	rig_up(&g, true);
	precopy_pass(&g);
	kv_mfd_send_set_postcopy(g.m);
	send_pages(&g, PRE_PAGES, NPAGES);
	sync_start(&g);
	/* Before LISTEN the pages wait on the channels. */
	usleep(200 * 1000);
	assert_int_equal(__atomic_load_n(&g.place_calls, __ATOMIC_RELAXED), 0);
	kv_mfd_recv_pc_listen(g.r);
	/* The last sync: every POSTCOPY page is placed when it returns. */
	if (kv_mfd_recv_sync(g.r, &err) < 0)
		fail_msg("%s", err.msg);
	pthread_join(g.syncer, NULL);
	assert_int_equal(g.sync_ret, 0);
	for (size_t p = 0; p < NPAGES; p++)
		assert_int_equal(g.place_count[p], p < PRE_PAGES ? 0 : 1);
	assert_memory_equal(g.placed + (size_t)PRE_PAGES * KV_PAGE_SIZE,
			    g.src + (size_t)PRE_PAGES * KV_PAGE_SIZE,
			    (size_t)(NPAGES - PRE_PAGES) * KV_PAGE_SIZE);
	/* The receiver never wrote those pages itself. */
	for (size_t p = PRE_PAGES; p < NPAGES; p++)
		for (size_t i = 0; i < KV_PAGE_SIZE; i++)
			if (g.dst[p * KV_PAGE_SIZE + i])
				fail_msg("page %zu written around place", p);
	kv_mfd_recv_pages(g.r, &normal, &zero);
	assert_int_equal(normal + zero, NPAGES);
	assert_int_equal(zero, NPAGES / 5);
	rig_down(&g);
}

/* The receiver fails by itself: kv_mfd_recv_sync says why. */
static void expect_recv_failure(struct rig *g, const char *needle)
{
	struct kv_error err = {0};

	sync_start(g);
	assert_true(kv_mfd_recv_sync(g->r, &err) < 0);
	if (!strstr(err.msg, needle))
		fail_msg("message '%s' lacks '%s'", err.msg, needle);
	pthread_join(g->syncer, NULL);
	assert_int_equal(__atomic_load_n(&g->place_calls, __ATOMIC_RELAXED),
			 0);
}

static void test_precopy_packet_after_listen_refused(void **state)
{
	struct rig g;

	(void)state;
	rig_up(&g, true);
	precopy_pass(&g);
	kv_mfd_recv_pc_listen(g.r);
	send_pages(&g, PRE_PAGES, PRE_PAGES + 3);
	expect_recv_failure(&g, "pages without the POSTCOPY flag after POSTCOPY_LISTEN");
	rig_down(&g);
}

static void test_postcopy_packet_without_advise_refused(void **state)
{
	struct rig g;

	(void)state;
	rig_up(&g, false);
	kv_mfd_send_set_postcopy(g.m);
	send_pages(&g, 1, 4);
	expect_recv_failure(&g, "but postcopy-ram is off on this destination");
	rig_down(&g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_postcopy_pages_placed_once_after_listen),
	    cmocka_unit_test(test_precopy_packet_after_listen_refused),
	    cmocka_unit_test(test_postcopy_packet_without_advise_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
