/* SPDX-License-Identifier: MIT */
/*
 * multifd end to end through the real driver (src/migration/multifd/multifd.c with
 * migration.c and the RAM handler): a source and a destination in one
 * process, over a unix socket listener, with channels of their own. Memory
 * is dirtied while the passes run and must arrive equal, for every
 * compression and zero-page mode; a mismatch between the two sides fails
 * both cleanly with a message saying what to set.
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
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "io/channel.h"
#include "io/stream.h"
#include "migration/incoming.h"
#include "migration/migration.h"
#include "migration/multifd/multifd.h"
#include "migration/ram/ram.h"
#include "migration/savevm/savevm.h"
#include "migration/dirty/soft_tracker.h"

#define PG	  4096U
#define NBLOCKS	  2
#define MACHINE	  "mfd-test"

static const size_t block_pages[NBLOCKS] = {3000, 517};

struct side {
	struct kv_ram_state *rs;
	struct kv_savevm *sv;
	uint8_t *mem[NBLOCKS];
	struct kv_soft_tracker *tracker; /* source */
};

static void side_init(struct side *sd, bool source, uint64_t seed)
{
	struct kv_error err = {0};
	uint64_t lens[NBLOCKS];
	char name[16];

	memset(sd, 0, sizeof(*sd));
	sd->rs = kv_ram_new();
	sd->sv = kv_savevm_new(MACHINE);
	assert_non_null(sd->rs);
	assert_non_null(sd->sv);
	for (size_t b = 0; b < NBLOCKS; b++) {
		sd->mem[b] = mmap(NULL, block_pages[b] * PG,
				  PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		assert_true(sd->mem[b] != MAP_FAILED);
		lens[b] = block_pages[b] * PG;
		snprintf(name, sizeof(name), "blk%zu", b);
		assert_int_equal(kv_ram_add_block(sd->rs, name, sd->mem[b],
						  lens[b], &err),
				 0);
		/* a third zero (never touched), a third random, a third
		 * compressible */
		for (size_t p = 0; source && p < block_pages[b]; p++) {
			uint8_t *pg = sd->mem[b] + p * PG;

			if (p % 3 == 1) {
				uint64_t x = seed ^ (p * 0x9e3779b97f4a7c15ULL);

				for (size_t i = 0; i < PG; i += 8) {
					x ^= x << 13;
					x ^= x >> 7;
					x ^= x << 17;
					memcpy(pg + i, &x, 8);
				}
			} else if (p % 3 == 2) {
				memset(pg, (int)(p & 0x7f) | 1, PG);
				memcpy(pg, &p, sizeof(p));
			}
		}
	}
	if (source) {
		sd->tracker = kv_soft_tracker_new(lens, NBLOCKS);
		assert_non_null(sd->tracker);
		kv_ram_set_tracker(sd->rs, kv_soft_tracker_iface(sd->tracker));
	}
	assert_int_equal(kv_ram_register(sd->rs, sd->sv, &err), 0);
}

static void side_free(struct side *sd)
{
	kv_savevm_free(sd->sv);
	kv_ram_free(sd->rs);
	if (sd->tracker)
		kv_soft_tracker_free(sd->tracker);
	for (size_t b = 0; b < NBLOCKS; b++)
		munmap(sd->mem[b], block_pages[b] * PG);
}

/* ---- the source: a writer thread, the driver on another ---- */

struct source {
	struct side sd;
	struct kv_mig_params params;
	const char *uri;
	int stop;	 /* the writer: atomic */
	uint64_t writes; /* atomic */
	pthread_t writer, runner;
	int ret;
	struct kv_error err;
	struct kv_mig_stats stats;
	struct kv_incoming *in; /* the destination */
};

static void *writer_main(void *arg)
{
	struct source *src = arg;
	uint64_t x = 0x1234567;

	while (!__atomic_load_n(&src->stop, __ATOMIC_ACQUIRE)) {
		size_t b, p, off;

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		b = x % NBLOCKS;
		p = (x >> 8) % block_pages[b];
		off = ((x >> 32) % (PG / 8)) * 8;
		__atomic_store_n((uint64_t *)(src->sd.mem[b] + p * PG + off),
				 x | 1, __ATOMIC_RELAXED);
		kv_soft_tracker_mark(src->sd.tracker, b, p * PG + off);
		__atomic_add_fetch(&src->writes, 1, __ATOMIC_RELAXED);
		/* At most ~20 MiB/s of pages: zlib must still converge. */
		usleep(200);
	}
	return NULL;
}

static int stop_writer(void *opaque, struct kv_error *err)
{
	struct source *src = opaque;

	(void)err;
	if (!__atomic_exchange_n(&src->stop, 1, __ATOMIC_ACQ_REL))
		pthread_join(src->writer, NULL);
	return 0;
}

static void resume_nothing(void *opaque)
{
	(void)opaque;
}

static void *runner_main(void *arg)
{
	struct source *src = arg;
	struct kv_mig_hooks hooks = {.stop_vm = stop_writer,
				     .resume_vm = resume_nothing,
				     .opaque = src};
	struct kv_migration *m;

	m = kv_mig_new(src->sd.sv, src->sd.rs, &src->params, &hooks);
	if (!m) {
		src->ret = -ENOMEM;
		return NULL;
	}
	src->ret = kv_mig_run_uri(m, src->uri, &src->err);
	kv_mig_get_stats(m, &src->stats);
	kv_mig_free(m);
	/* A source that failed before sending the stream header was no
	 * source to the destination, which waits on for the real one. */
	for (int i = 0; src->ret < 0 && i < 500; i++) {
		if (kv_incoming_status(src->in) > KV_IN_ACTIVE)
			break;
		usleep(10000);
	}
	if (src->ret < 0)
		kv_incoming_abort(src->in);
	return NULL;
}

/* ---- one migration ---- */

struct outcome {
	int src_ret, dst_ret;
	char src_msg[KV_ERROR_MSG_MAX], dst_msg[KV_ERROR_MSG_MAX];
	uint64_t writes, passes, transferred;
	int64_t total_ms;
};

static void sock_uri(char *buf, size_t len)
{
	static int n;

	snprintf(buf, len, "unix:/tmp/kvmig-test-mfd-%d-%d.sock", getpid(),
		 n++);
}

/* Migrate with src_p on the source and dst_p on the destination (with a
 * thread writing on the source if writer); with check, the
 * destination's memory must equal the source's. */
static struct outcome migrate(const struct kv_mig_params *src_p,
			      const struct kv_mig_params *dst_p, bool check,
			      bool writer)
{
	struct source *src = calloc(1, sizeof(*src));
	struct side dst;
	struct outcome out = {0};
	struct kv_error err = {0};
	struct kv_incoming *in;
	char uri[108];

	assert_non_null(src);
	side_init(&src->sd, true, 42);
	side_init(&dst, false, 0);
	sock_uri(uri, sizeof(uri));
	src->uri = uri;
	src->params = *src_p;
	in = kv_incoming_new(dst.sv, dst.rs, dst_p, NULL);
	assert_non_null(in);
	assert_int_equal(kv_incoming_listen(in, uri, &err), 0);
	src->in = in;
	if (writer)
		assert_int_equal(
		    pthread_create(&src->writer, NULL, writer_main, src), 0);
	else
		src->stop = 1;
	assert_int_equal(pthread_create(&src->runner, NULL, runner_main, src),
			 0);
	/* The connection closes when the run returns: a failure reaches
	 * the source at once. */
	out.dst_ret = kv_incoming_run(in, &err);
	snprintf(out.dst_msg, sizeof(out.dst_msg), "%s", err.msg);
	pthread_join(src->runner, NULL);
	stop_writer(src, NULL);
	kv_incoming_free(in);
	unlink(uri + 5);
	out.src_ret = src->ret;
	snprintf(out.src_msg, sizeof(out.src_msg), "%s", src->err.msg);
	out.writes = src->writes;
	out.passes = src->stats.passes;
	out.transferred = src->stats.transferred;
	out.total_ms = src->stats.total_time_ms;
	if (check) {
		if (out.src_ret || out.dst_ret)
			fail_msg("source %d '%s', destination %d '%s'",
				 out.src_ret, out.src_msg, out.dst_ret,
				 out.dst_msg);
		for (size_t b = 0; b < NBLOCKS; b++)
			for (size_t p = 0; p < block_pages[b]; p++)
				if (memcmp(src->sd.mem[b] + p * PG,
					   dst.mem[b] + p * PG, PG))
					fail_msg("block %zu page %zu differs",
						 b, p);
	}
	side_free(&src->sd);
	side_free(&dst);
	free(src);
	return out;
}

static void params_multifd(struct kv_mig_params *p, unsigned channels,
			   enum kv_mfd_method method, enum kv_mfd_zero zero)
{
	kv_mig_params_default(p);
	p->downtime_limit_ms = 50;
	p->rp_timeout_ms = 20000;
	p->converge_timeout_ms = 60000;
	p->multifd_channels = channels;
	p->multifd_method = method;
	p->zero_page_detection = zero;
}

static void roundtrip(enum kv_mfd_method method, enum kv_mfd_zero zero,
		      unsigned channels)
{
	struct kv_mig_params p;
	struct outcome o;

	params_multifd(&p, channels, method, zero);
	o = migrate(&p, &p, true, true);
	/* The writer ran during the passes, and more than one pass went
	 * (each ending with a sync). */
	assert_true(o.writes > 0);
	assert_true(o.passes >= 2);
	assert_true(o.transferred > 0);
}

static void test_none_multifd_zero(void **state)
{
	(void)state;
	roundtrip(KV_MFD_METHOD_NONE, KV_MFD_ZERO_MULTIFD, 2);
}

static void test_none_legacy_zero(void **state)
{
	(void)state;
	roundtrip(KV_MFD_METHOD_NONE, KV_MFD_ZERO_LEGACY, 3);
}

static void test_none_no_zero_detection(void **state)
{
	(void)state;
	roundtrip(KV_MFD_METHOD_NONE, KV_MFD_ZERO_NONE, 1);
}

static void test_zlib(void **state)
{
	(void)state;
	roundtrip(KV_MFD_METHOD_ZLIB, KV_MFD_ZERO_MULTIFD, 2);
}

static void test_zstd(void **state)
{
	(void)state;
	roundtrip(KV_MFD_METHOD_ZSTD, KV_MFD_ZERO_MULTIFD, 2);
}

static void test_lz4(void **state)
{
	(void)state;
	roundtrip(KV_MFD_METHOD_LZ4, KV_MFD_ZERO_MULTIFD, 4);
}

/* max-bandwidth holds for the channels together: 2 MiB/s for about
 * 5 MiB of data pages (plus the zero ones, which cost only offsets). */
static void test_max_bandwidth_across_channels(void **state)
{
	struct kv_mig_params p;
	struct outcome o;
	double rate;

	(void)state;
	params_multifd(&p, 3, KV_MFD_METHOD_NONE, KV_MFD_ZERO_MULTIFD);
	p.max_bandwidth = 2 << 20;
	o = migrate(&p, &p, true, false);
	rate = (double)o.transferred / ((double)o.total_ms / 1000.0);
	print_message("# %.2f MiB in %lld ms: %.2f MiB/s\n",
		      (double)o.transferred / (1 << 20), (long long)o.total_ms,
		      rate / (1 << 20));
	/* Three channels at the cap each would be 6 MiB/s. */
	assert_true(rate < 1.3 * (2 << 20));
	assert_true(o.transferred > (4 << 20));
}

/* The destination decodes zstd, the source sends raw: the first packet's
 * flags are refused, and both sides fail (the source resumes). */
static void test_compression_mismatch_fails_both(void **state)
{
	struct kv_mig_params sp, dp;
	struct outcome o;

	(void)state;
	params_multifd(&sp, 2, KV_MFD_METHOD_NONE, KV_MFD_ZERO_MULTIFD);
	params_multifd(&dp, 2, KV_MFD_METHOD_ZSTD, KV_MFD_ZERO_MULTIFD);
	o = migrate(&sp, &dp, false, true);
	assert_true(o.dst_ret < 0);
	assert_true(o.src_ret < 0);
	if (!strstr(o.dst_msg, "multifd channel"))
		fail_msg("destination: '%s'", o.dst_msg);
}

/* More channels on the source than the destination expects: the extra
 * channel's id is refused, with what to set. */
static void test_channel_count_mismatch(void **state)
{
	struct kv_mig_params sp, dp;
	struct outcome o;

	(void)state;
	params_multifd(&sp, 3, KV_MFD_METHOD_NONE, KV_MFD_ZERO_MULTIFD);
	params_multifd(&dp, 2, KV_MFD_METHOD_NONE, KV_MFD_ZERO_MULTIFD);
	o = migrate(&sp, &dp, false, true);
	assert_true(o.dst_ret < 0);
	assert_true(o.src_ret < 0);
	if (!strstr(o.dst_msg, "set the same multifd-channels on both sides"))
		fail_msg("destination: '%s'", o.dst_msg);
}

/* A destination without multifd: the source's channels are refused, and
 * the source says what to check. */
static void test_destination_without_multifd(void **state)
{
	struct kv_mig_params sp, dp;
	struct outcome o;

	(void)state;
	params_multifd(&sp, 2, KV_MFD_METHOD_NONE, KV_MFD_ZERO_MULTIFD);
	params_multifd(&dp, 0, KV_MFD_METHOD_NONE, KV_MFD_ZERO_MULTIFD);
	o = migrate(&sp, &dp, false, true);
	assert_true(o.src_ret < 0);
	if (!strstr(o.src_msg, "is multifd on at the destination too"))
		fail_msg("source: '%s'", o.src_msg);
}

static void test_xbzrle_with_multifd_refused(void **state)
{
	struct kv_mig_params sp, dp;
	struct outcome o;

	(void)state;
	params_multifd(&sp, 2, KV_MFD_METHOD_NONE, KV_MFD_ZERO_MULTIFD);
	sp.xbzrle_cache_size = 1 << 20;
	params_multifd(&dp, 2, KV_MFD_METHOD_NONE, KV_MFD_ZERO_MULTIFD);
	o = migrate(&sp, &dp, false, true);
	assert_true(o.src_ret < 0);
	if (!strstr(o.src_msg, "xbzrle and multifd capabilities cannot be "
			       "used together"))
		fail_msg("source: '%s'", o.src_msg);
}

static void test_zero_parse(void **state)
{
	struct kv_error err = {0};
	enum kv_mfd_zero z;

	(void)state;
	assert_int_equal(kv_mfd_zero_parse("legacy", &z, &err), 0);
	assert_int_equal(z, KV_MFD_ZERO_LEGACY);
	assert_int_equal(kv_mfd_zero_parse("multifd", &z, &err), 0);
	assert_int_equal(z, KV_MFD_ZERO_MULTIFD);
	assert_true(kv_mfd_zero_parse("maybe", &z, &err) < 0);
	assert_non_null(strstr(err.msg, "'none', 'legacy' or 'multifd'"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_zero_parse),
	    cmocka_unit_test(test_none_multifd_zero),
	    cmocka_unit_test(test_none_legacy_zero),
	    cmocka_unit_test(test_none_no_zero_detection),
	    cmocka_unit_test(test_zlib),
	    cmocka_unit_test(test_zstd),
	    cmocka_unit_test(test_lz4),
	    cmocka_unit_test(test_max_bandwidth_across_channels),
	    cmocka_unit_test(test_compression_mismatch_fails_both),
	    cmocka_unit_test(test_channel_count_mismatch),
	    cmocka_unit_test(test_destination_without_multifd),
	    cmocka_unit_test(test_xbzrle_with_multifd_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
