/* SPDX-License-Identifier: MIT */
/*
 * The background snapshot end to end in one process, on real memory and
 * real threads: a writer thread rewrites random words all over two RAM
 * blocks throughout; the stop hook parks it and keeps a copy of RAM as it
 * is at that moment; the snapshot goes to a memory file at a capped
 * bandwidth (so the writer keeps hitting protected pages), and the stream
 * loaded into a fresh destination must equal that copy byte for byte.
 * Also: the writer runs on, unhindered, once the snapshot completed or
 * was cancelled; a second snapshot in the same process; the capabilities
 * QEMU refuses with it are refused. Skipped, with the reason printed,
 * where userfaultfd cannot write-protect.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
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
#include "io/channel.h"
#include "io/stream.h"
#include "migration/incoming.h"
#include "migration/migration.h"
#include "migration/postcopy/uffd.h"
#include "migration/ram/ram.h"
#include "migration/savevm/savevm.h"

#define PG	KV_PAGE_SIZE
#define NBLOCKS 2

/* 25 MiB in two blocks, the second one smaller than a 2 MiB window (the
 * fault thread's windows are clipped to it). */
static const size_t block_pages[NBLOCKS] = {6144, 300};

struct dev {
	uint64_t value;
};

static const struct kv_vmstate_field dev_fields[] = {
    KV_VMS_FIELD(struct dev, value, KV_VMS_U64, 1),
    KV_VMS_END,
};

static const struct kv_vmstate_desc dev_vmsd = {
    .name = "testdev",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = dev_fields,
};

/* One side: registry, RAM, a device; on the source, the writer. */
struct side {
	struct kv_savevm *sv;
	struct kv_ram_state *rs;
	uint8_t *mem[NBLOCKS];
	struct dev dev;

	pthread_t writer;
	int run, pause_req, parked; /* atomics */
	/* atomic: until the first resume the writer keeps to the even pages
	 * (fill's), so that the odd ones are never populated at the stop;
	 * after it, it writes everywhere. */
	int everywhere;
	uint64_t writes;	    /* atomic */
	uint64_t writes_at_resume, writes_at_end;
	uint8_t *at_stop[NBLOCKS]; /* RAM when the stop hook ran */
	int stops, resumes;
	struct kv_ram_bg_stats bg; /* the last seen by the progress hook */
};

static uint64_t rng_next(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static uint8_t *map_pages(size_t n)
{
	void *p = mmap(NULL, n * PG, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	assert_true(p != MAP_FAILED);
	return p;
}

static void side_init(struct side *sd)
{
	struct kv_error err = {0};

	memset(sd, 0, sizeof(*sd));
	sd->sv = kv_savevm_new("bg");
	sd->rs = kv_ram_new();
	for (size_t b = 0; b < NBLOCKS; b++) {
		char name[16];

		sd->mem[b] = map_pages(block_pages[b]);
		snprintf(name, sizeof(name), "blk%zu", b);
		assert_int_equal(kv_ram_add_block(sd->rs, name, sd->mem[b],
						  block_pages[b] * PG, &err),
				 0);
	}
	assert_int_equal(kv_ram_register(sd->rs, sd->sv, &err), 0);
	assert_int_equal(kv_savevm_register_device(sd->sv, "testdev", 0,
						   &dev_vmsd, KV_PRI_DEVICE,
						   &sd->dev, &err),
			 0);
}

static void side_free(struct side *sd)
{
	kv_savevm_free(sd->sv);
	kv_ram_free(sd->rs);
	for (size_t b = 0; b < NBLOCKS; b++) {
		munmap(sd->mem[b], block_pages[b] * PG);
		free(sd->at_stop[b]);
	}
}

/* The even pages get data, the odd ones stay never touched. */
static void fill(struct side *sd)
{
	uint64_t x = 0x1234567;

	for (size_t b = 0; b < NBLOCKS; b++)
		for (size_t pg = 0; pg < block_pages[b]; pg += 2)
			for (size_t i = 0; i < PG; i += 8) {
				uint64_t r = rng_next(&x);

				memcpy(sd->mem[b] + pg * PG + i, &r, 8);
			}
}

/* Random words anywhere, zero pages included, until told to stop; parks
 * while the stop hook holds it. */
static void *writer_main(void *arg)
{
	struct side *sd = arg;
	uint64_t x = 0x9e3779b97f4a7c15ULL;

	while (__atomic_load_n(&sd->run, __ATOMIC_ACQUIRE)) {
		uint64_t r = rng_next(&x);
		size_t b = (size_t)(r % NBLOCKS);
		size_t off = (size_t)((r >> 8) % (block_pages[b] * PG / 8)) * 8;

		if (!__atomic_load_n(&sd->everywhere, __ATOMIC_ACQUIRE))
			off &= ~(size_t)PG; /* an even page */

		if (__atomic_load_n(&sd->pause_req, __ATOMIC_ACQUIRE)) {
			__atomic_store_n(&sd->parked, 1, __ATOMIC_RELEASE);
			while (__atomic_load_n(&sd->pause_req,
					       __ATOMIC_ACQUIRE))
				sched_yield();
			__atomic_store_n(&sd->parked, 0, __ATOMIC_RELEASE);
			continue;
		}
		__atomic_store_n((uint64_t *)(sd->mem[b] + off), r | 1,
				 __ATOMIC_RELAXED);
		__atomic_add_fetch(&sd->writes, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

static void writer_start(struct side *sd)
{
	sd->run = 1;
	assert_int_equal(pthread_create(&sd->writer, NULL, writer_main, sd), 0);
}

static void writer_stop(struct side *sd)
{
	__atomic_store_n(&sd->run, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&sd->pause_req, 0, __ATOMIC_RELEASE);
	pthread_join(sd->writer, NULL);
}

static uint64_t writes(struct side *sd)
{
	return __atomic_load_n(&sd->writes, __ATOMIC_RELAXED);
}

/* Park the writer and keep RAM as it is now: the snapshot must be this.
 * Before the first resume the odd pages were never touched: they are
 * zero, and not read here (a read would populate them). */
static int hook_stop(void *opaque, struct kv_error *err)
{
	struct side *sd = opaque;
	bool all = __atomic_load_n(&sd->everywhere, __ATOMIC_ACQUIRE);

	(void)err;
	__atomic_store_n(&sd->pause_req, 1, __ATOMIC_RELEASE);
	while (!__atomic_load_n(&sd->parked, __ATOMIC_ACQUIRE))
		sched_yield();
	for (size_t b = 0; b < NBLOCKS; b++) {
		if (!sd->at_stop[b])
			sd->at_stop[b] = malloc(block_pages[b] * PG);
		for (size_t pg = 0; pg < block_pages[b]; pg++)
			if (all || pg % 2 == 0)
				memcpy(sd->at_stop[b] + pg * PG,
				       sd->mem[b] + pg * PG, PG);
			else
				memset(sd->at_stop[b] + pg * PG, 0, PG);
	}
	sd->stops++;
	return 0;
}

static void hook_resume(void *opaque)
{
	struct side *sd = opaque;

	sd->writes_at_resume = writes(sd);
	__atomic_store_n(&sd->everywhere, 1, __ATOMIC_RELEASE);
	__atomic_store_n(&sd->pause_req, 0, __ATOMIC_RELEASE);
	sd->resumes++;
}

static void hook_progress(void *opaque, const struct kv_mig_progress *p)
{
	struct side *sd = opaque;
	struct kv_ram_bg_stats st;

	kv_ram_bg_get_stats(sd->rs, &st); /* the migration thread */
	if (st.faults >= sd->bg.faults)
		sd->bg = st;
	if (p->status == KV_MIG_COMPLETED)
		sd->writes_at_end = writes(sd);
}

static struct kv_mig_hooks hooks_of(struct side *sd)
{
	return (struct kv_mig_hooks){
	    .stop_vm = hook_stop,
	    .resume_vm = hook_resume,
	    .progress = hook_progress,
	    .opaque = sd,
	};
}

static struct kv_stream *stream_on(int fd, enum kv_stream_mode mode)
{
	struct kv_error err = {0};
	struct kv_chan *c = kv_chan_from_fd(fd, "memfd", &err);

	assert_non_null(c);
	return kv_stream_new(c, mode);
}

static bool have_uffd_wp(void)
{
	struct kv_error err = {0};
	struct kv_uffd *u = kv_uffd_open_wp(false, &err);

	if (!u) {
		printf("# skipped: %s\n", err.msg);
		return false;
	}
	kv_uffd_close(u);
	return true;
}

static struct kv_mig_params bg_params(uint64_t bandwidth)
{
	struct kv_mig_params p;

	kv_mig_params_default(&p);
	p.background_snapshot = true;
	p.max_bandwidth = bandwidth;
	return p;
}

/* A thread that writes one word into every page: it would wait forever
 * on a page left protected (nobody serves faults after the snapshot). */
static void *touch_all(void *arg)
{
	struct side *sd = arg;

	for (size_t b = 0; b < NBLOCKS; b++)
		for (size_t pg = 0; pg < block_pages[b]; pg++)
			__atomic_store_n((uint64_t *)(sd->mem[b] + pg * PG + 8),
					 0xabcdULL, __ATOMIC_RELAXED);
	return NULL;
}

static void assert_writable(struct side *sd)
{
	struct timespec until;
	pthread_t th;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 5;
	assert_int_equal(pthread_create(&th, NULL, touch_all, sd), 0);
	if (pthread_timedjoin_np(th, NULL, &until) != 0)
		fail_msg("a write to RAM still blocks after the snapshot ended: pages were left write-protected");
}

/* The writer goes on by itself: nothing holds it (within 5 s, however
 * loaded the machine). */
static void assert_writer_runs(struct side *sd)
{
	uint64_t w0 = writes(sd);

	for (int i = 0; i < 500 && writes(sd) <= w0 + 1000; i++)
		usleep(10 * 1000);
	assert_true(writes(sd) > w0 + 1000);
}

/* Load the stream in fd into a fresh side; its RAM must be the source's
 * at the stop, its device the value then. */
static void assert_loads_as_at_stop(int fd, struct side *src)
{
	struct kv_error err = {0};
	struct kv_stream *s;
	struct side dst;

	side_init(&dst);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	s = stream_on(dup(fd), KV_STREAM_READ);
	if (kv_mig_incoming(dst.sv, s, &err) < 0)
		fail_msg("loading the snapshot: %s", err.msg);
	kv_stream_close(s);
	for (size_t b = 0; b < NBLOCKS; b++)
		for (size_t pg = 0; pg < block_pages[b]; pg++)
			if (memcmp(dst.mem[b] + pg * PG,
				   src->at_stop[b] + pg * PG, PG))
				fail_msg("block %zu page %zu differs from the moment the snapshot began", b, pg);
	assert_int_equal(dst.dev.value, 4242);
	side_free(&dst);
}

static struct kv_migration *new_snapshot(struct side *sd, uint64_t bandwidth)
{
	struct kv_mig_params p = bg_params(bandwidth);
	struct kv_mig_hooks h = hooks_of(sd);
	struct kv_migration *m = kv_mig_new(sd->sv, sd->rs, &p, &h);

	assert_non_null(m);
	return m;
}

/* Run snapshot m into fd; returns kv_mig_run's result. */
static int run_into(struct kv_migration *m, int fd)
{
	struct kv_error err = {0};
	struct kv_stream *s;
	int ret;

	assert_int_equal(ftruncate(fd, 0), 0);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	s = stream_on(dup(fd), KV_STREAM_WRITE);
	ret = kv_mig_run(m, s, &err);
	if (ret < 0)
		printf("# snapshot: %s\n", err.msg);
	kv_stream_close(s);
	return ret;
}

static int snapshot(struct side *sd, int fd, uint64_t bandwidth,
		    struct kv_migration **out)
{
	*out = new_snapshot(sd, bandwidth);
	return run_into(*out, fd);
}

static void test_snapshot_is_the_moment_it_began(void **state)
{
	struct side src;
	struct kv_migration *m;
	struct kv_mig_stats st;
	int fd;

	(void)state;
	if (!have_uffd_wp())
		return;
	fd = memfd_create("bgsnap", MFD_CLOEXEC);
	assert_true(fd >= 0);
	side_init(&src);
	fill(&src);
	src.dev.value = 4242;
	writer_start(&src);
	usleep(10 * 1000);
	/* 25 MiB at 32 MiB/s: the writer hits protected pages for ~0.8 s. */
	assert_int_equal(snapshot(&src, fd, 32 * KV_MiB, &m), 0);
	kv_mig_get_stats(m, &st);
	assert_int_equal(st.status, KV_MIG_COMPLETED);
	assert_int_equal(src.stops, 1);
	assert_int_equal(src.resumes, 1);
	assert_true(st.passes == 1);
	printf("# %llu writes during the snapshot, %llu write faults, %llu pages copied by the fault thread, %llu waits for room\n",
	       (unsigned long long)(src.writes_at_end - src.writes_at_resume),
	       (unsigned long long)src.bg.faults,
	       (unsigned long long)src.bg.copies,
	       (unsigned long long)src.bg.pool_waits);
	assert_true(src.writes_at_end > src.writes_at_resume + 1000);
	assert_true(src.bg.faults > 0);
	assert_true(src.bg.copies > 0);
	assert_writer_runs(&src);
	writer_stop(&src);
	assert_writable(&src);
	assert_loads_as_at_stop(fd, &src);
	kv_mig_free(m);
	side_free(&src);
	close(fd);
}

struct runner {
	struct kv_migration *m;
	int fd;
	int ret;
};

static void *run_snapshot(void *arg)
{
	struct runner *r = arg;

	r->ret = run_into(r->m, r->fd);
	return NULL;
}

/* Cancelled midway: the writer runs on with nothing protected, and the
 * next snapshot in the same process is whole. */
static void test_cancel_midway_leaves_ram_unprotected(void **state)
{
	struct runner r = {0};
	struct kv_migration *m2;
	struct kv_mig_stats st;
	struct side src;
	pthread_t th;
	int fd;

	(void)state;
	if (!have_uffd_wp())
		return;
	fd = memfd_create("bgsnap", MFD_CLOEXEC);
	assert_true(fd >= 0);
	side_init(&src);
	fill(&src);
	src.dev.value = 4242;
	writer_start(&src);
	r.fd = fd;
	r.m = new_snapshot(&src, 1 * KV_MiB);
	assert_int_equal(pthread_create(&th, NULL, run_snapshot, &r), 0);
	while (!__atomic_load_n(&src.resumes, __ATOMIC_ACQUIRE))
		usleep(1000);
	usleep(200 * 1000); /* at 1 MiB/s: a fifth of the pages at most */
	assert_int_equal(kv_mig_status(r.m), KV_MIG_ACTIVE);
	kv_mig_cancel(r.m);
	pthread_join(th, NULL);
	assert_int_equal(r.ret, -ECANCELED);
	kv_mig_get_stats(r.m, &st);
	assert_int_equal(st.status, KV_MIG_CANCELLED);
	assert_int_equal(src.resumes, 1); /* resumed once, at the start */
	assert_writer_runs(&src);
	/* The writer itself would hang on a protected page: it runs, and a
	 * thread writing every page gets through. */
	assert_writable(&src);
	assert_writer_runs(&src);

	/* The next one, unlimited, is whole. */
	assert_int_equal(snapshot(&src, fd, 0, &m2), 0);
	assert_int_equal(kv_mig_status(m2), KV_MIG_COMPLETED);
	writer_stop(&src);
	assert_writable(&src);
	assert_loads_as_at_stop(fd, &src);
	kv_mig_free(r.m);
	kv_mig_free(m2);
	side_free(&src);
	close(fd);
}

static void test_refused_with_multifd_and_xbzrle(void **state)
{
	struct kv_mig_params p = bg_params(0);
	struct kv_error err = {0};
	struct kv_migration *m;
	struct side sd;
	struct kv_mig_hooks h;

	(void)state;
	side_init(&sd);
	h = hooks_of(&sd);
	p.multifd_channels = 2;
	m = kv_mig_new(sd.sv, sd.rs, &p, &h);
	assert_true(kv_mig_run_uri(m, "file:/nonexistent/bg", &err) < 0);
	assert_non_null(strstr(err.msg, "Snapshot not compatible with multifd"));
	assert_int_equal(sd.stops, 0);
	kv_mig_free(m);

	kv_error_clear(&err);
	p = bg_params(0);
	p.xbzrle_cache_size = 1 * KV_MiB;
	m = kv_mig_new(sd.sv, sd.rs, &p, &h);
	assert_true(kv_mig_run_uri(m, "file:/nonexistent/bg", &err) < 0);
	assert_non_null(strstr(err.msg, "Snapshot not compatible with xbzrle"));
	kv_mig_free(m);
	side_free(&sd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_snapshot_is_the_moment_it_began),
	    cmocka_unit_test(test_cancel_midway_leaves_ram_unprotected),
	    cmocka_unit_test(test_refused_with_multifd_and_xbzrle),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
