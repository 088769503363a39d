/* SPDX-License-Identifier: MIT */
/*
 * The migration driver end to end, in one process: kv_mig_run on one
 * thread, kv_mig_incoming on another, over a socketpair (so the return path
 * exists). The "workload" is a thread that dirties pages through the soft
 * tracker until stop_vm stops it.
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
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/clock.h"
#include "io/channel.h"
#include "io/stream.h"
#include "migration/incoming.h"
#include "migration/migration.h"
#include "migration/return_path.h"
#include "migration/savevm/savevm.h"
#include "migration/dirty/soft_tracker.h"

#define PG	     KV_PAGE_SIZE
#define NBLOCKS	     2
#define MAX_STATUSES 16

static uint64_t rng_next(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*state = x;
	return x;
}

/* ---- a device with state, whose load can be made to fail ---- */

struct dev {
	uint64_t value;
	uint32_t fail_load;
};

static int dev_post_load(void *opaque, int version_id, struct kv_error *err)
{
	struct dev *d = opaque;

	(void)version_id;
	if (d->fail_load)
		return kv_error_set(err, -EINVAL,
				    "dev: refusing the state "
				    "(test)");
	return 0;
}

static const struct kv_vmstate_field dev_fields[] = {
    KV_VMS_FIELD(struct dev, value, KV_VMS_U64, 1),
    KV_VMS_END,
};

static const struct kv_vmstate_desc dev_vmsd = {
    .name = "testdev",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = dev_fields,
    .post_load = dev_post_load,
};

/* ---- one side of a migration ---- */

struct vm {
	struct kv_savevm *sv;
	struct kv_ram_state *rs;
	struct kv_soft_tracker *tracker;
	uint8_t *mem[NBLOCKS];
	size_t npages[NBLOCKS];
	struct dev dev;

	/* workload */
	pthread_t dirtier;
	bool dirtier_running;
	int stop_dirtier;
	uint64_t writes;
	uint64_t seed;

	/* hooks */
	int stop_calls, resume_calls;
	enum kv_mig_status statuses[MAX_STATUSES];
	int nstatuses;
	uint64_t progress_passes;
};

static uint8_t *map_pages(size_t n)
{
	void *p = mmap(NULL, n * PG, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	assert_true(p != MAP_FAILED);
	return p;
}

static void fill(struct vm *v, uint64_t seed)
{
	uint64_t st = seed | 1;

	for (size_t b = 0; b < NBLOCKS; b++)
		for (size_t pg = 0; pg < v->npages[b]; pg++) {
			uint8_t *p = v->mem[b] + pg * PG;

			if (pg % 3 == 0)
				continue; /* zero */
			for (size_t i = 0; i < PG; i += 8) {
				uint64_t r = rng_next(&st);

				memcpy(p + i, &r, 8);
			}
		}
}

/* machine: configuration name; npages0/1: block sizes; with_blocks: add
 * the blocks (a destination may get them from an allocator instead). */
static void vm_init(struct vm *v, const char *machine, size_t np0, size_t np1,
		    bool with_blocks)
{
	struct kv_error err = {0};
	uint64_t lens[NBLOCKS];

	memset(v, 0, sizeof(*v));
	v->sv = kv_savevm_new(machine);
	v->rs = kv_ram_new();
	assert_non_null(v->sv);
	assert_non_null(v->rs);
	v->npages[0] = np0;
	v->npages[1] = np1;
	for (size_t b = 0; b < NBLOCKS; b++) {
		char name[16];

		lens[b] = v->npages[b] * PG;
		if (!with_blocks)
			continue;
		v->mem[b] = map_pages(v->npages[b]);
		snprintf(name, sizeof(name), "blk%zu", b);
		assert_int_equal(
		    kv_ram_add_block(v->rs, name, v->mem[b], lens[b], &err), 0);
	}
	v->tracker = kv_soft_tracker_new(lens, NBLOCKS);
	kv_ram_set_tracker(v->rs, kv_soft_tracker_iface(v->tracker));
	assert_int_equal(kv_ram_register(v->rs, v->sv, &err), 0);
	assert_int_equal(kv_savevm_register_device(v->sv, "testdev", 0,
						   &dev_vmsd, KV_PRI_DEVICE,
						   &v->dev, &err),
			 0);
}

static void vm_free(struct vm *v)
{
	kv_savevm_free(v->sv);
	kv_ram_free(v->rs);
	kv_soft_tracker_free(v->tracker);
	for (size_t b = 0; b < NBLOCKS; b++)
		if (v->mem[b])
			munmap(v->mem[b], v->npages[b] * PG);
}

static void *dirtier_main(void *arg)
{
	struct vm *v = arg;
	uint64_t st = v->seed | 1;

	while (!__atomic_load_n(&v->stop_dirtier, __ATOMIC_ACQUIRE)) {
		uint64_t r = rng_next(&st);
		size_t b = (size_t)(r % NBLOCKS);
		size_t pg = (size_t)((r >> 8) % v->npages[b]);
		size_t off = pg * PG + (size_t)((r >> 40) % (PG / 8)) * 8;

		__atomic_store_n((uint64_t *)(v->mem[b] + off), r,
				 __ATOMIC_RELAXED);
		kv_soft_tracker_mark(v->tracker, b, off);
		__atomic_store_n(&v->writes, v->writes + 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

static void dirtier_start(struct vm *v)
{
	v->stop_dirtier = 0;
	assert_int_equal(pthread_create(&v->dirtier, NULL, dirtier_main, v), 0);
	v->dirtier_running = true;
}

static void dirtier_stop(struct vm *v)
{
	if (!v->dirtier_running)
		return;
	__atomic_store_n(&v->stop_dirtier, 1, __ATOMIC_RELEASE);
	pthread_join(v->dirtier, NULL);
	v->dirtier_running = false;
}

static int hook_stop(void *opaque, struct kv_error *err)
{
	struct vm *v = opaque;

	(void)err;
	dirtier_stop(v);
	v->stop_calls++;
	return 0;
}

static void hook_resume(void *opaque)
{
	struct vm *v = opaque;

	v->resume_calls++;
}

static void hook_progress(void *opaque, const struct kv_mig_progress *p)
{
	struct vm *v = opaque;

	if (v->nstatuses == 0 || v->statuses[v->nstatuses - 1] != p->status) {
		if (v->nstatuses < MAX_STATUSES)
			v->statuses[v->nstatuses++] = p->status;
	}
	if (p->pass > v->progress_passes)
		v->progress_passes = p->pass;
}

static struct kv_mig_hooks vm_hooks(struct vm *v)
{
	struct kv_mig_hooks h = {
	    .stop_vm = hook_stop,
	    .resume_vm = hook_resume,
	    .progress = hook_progress,
	    .opaque = v,
	};

	return h;
}

static void assert_same_memory(const struct vm *a, const struct vm *b)
{
	for (size_t i = 0; i < NBLOCKS; i++) {
		const uint8_t *bm = kv_ram_block(b->rs, i)->host;

		assert_int_equal(kv_ram_block(b->rs, i)->length,
				 a->npages[i] * PG);
		for (size_t pg = 0; pg < a->npages[i]; pg++)
			if (memcmp(a->mem[i] + pg * PG, bm + pg * PG, PG))
				fail_msg("block %zu page %zu differs", i, pg);
	}
}

/* ---- the two ends ---- */

struct job {
	struct vm *vm;
	struct kv_migration *m; /* source only */
	struct kv_stream *s;
	pthread_t thread;
	int ret;
	struct kv_error err;
};

static struct kv_stream *stream_on(int fd, enum kv_stream_mode mode)
{
	struct kv_error err = {0};
	struct kv_chan *c = kv_chan_from_fd(fd, "socketpair", &err);

	assert_non_null(c);
	return kv_stream_new(c, mode);
}

static void *source_main(void *arg)
{
	struct job *j = arg;

	j->ret = kv_mig_run(j->m, j->s, &j->err);
	return NULL;
}

static void *dest_main(void *arg)
{
	struct job *j = arg;

	j->ret = kv_mig_incoming(j->vm->sv, j->s, &j->err);
	/* As a real destination process would on exit. */
	kv_stream_close(j->s);
	j->s = NULL;
	return NULL;
}

struct pair {
	struct job src, dst;
};

static void pair_start(struct pair *p, struct vm *src, struct vm *dst,
		       const struct kv_mig_params *params)
{
	int sv[2];
	struct kv_mig_hooks h = vm_hooks(src);

	memset(p, 0, sizeof(*p));
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	p->src.vm = src;
	p->src.m = kv_mig_new(src->sv, src->rs, params, &h);
	assert_non_null(p->src.m);
	p->src.s = stream_on(sv[0], KV_STREAM_WRITE);
	p->dst.vm = dst;
	p->dst.s = stream_on(sv[1], KV_STREAM_READ);
	assert_int_equal(
	    pthread_create(&p->dst.thread, NULL, dest_main, &p->dst), 0);
	assert_int_equal(
	    pthread_create(&p->src.thread, NULL, source_main, &p->src), 0);
}

/* Join both ends. The source's stream is closed before the destination
 * is joined: one still reading then sees the end, as from a real peer. */
static void pair_join(struct pair *p)
{
	pthread_join(p->src.thread, NULL);
	kv_stream_close(p->src.s);
	pthread_join(p->dst.thread, NULL);
}

static void pair_free(struct pair *p)
{
	kv_mig_free(p->src.m);
}

static void wait_status(struct kv_migration *m, enum kv_mig_status st)
{
	int64_t deadline = kv_now_ms() + 10000;

	while (kv_mig_status(m) != st) {
		assert_true(kv_now_ms() < deadline);
		kv_sleep_ns(1000000);
	}
}

/* ---- tests ---- */

struct full {
	struct vm src, dst;
	struct pair p;
	uint64_t seed;
	size_t np0, np1;
};

/* Set up and start a migration with a dirtying workload. */
static void full_start(struct full *f, uint64_t seed, size_t np0, size_t np1)
{
	f->seed = seed;
	f->np0 = np0;
	f->np1 = np1;
	vm_init(&f->src, "kvmig-test", np0, np1, true);
	vm_init(&f->dst, "kvmig-test", np0, np1, true);
	fill(&f->src, seed);
	f->src.dev.value = seed * 3 + 1;
	f->src.seed = seed;
	dirtier_start(&f->src);
	while (__atomic_load_n(&f->src.writes, __ATOMIC_RELAXED) < 1000)
		sched_yield();
	pair_start(&f->p, &f->src, &f->dst, NULL);
}

/* Wait for it and check everything arrived. */
static void full_finish(struct full *f)
{
	struct kv_mig_stats st;
	size_t total = f->np0 + f->np1;

	pair_join(&f->p);
	if (f->p.src.ret || f->p.dst.ret)
		fail_msg("source %d '%s', destination %d '%s'", f->p.src.ret,
			 f->p.src.err.msg, f->p.dst.ret, f->p.dst.err.msg);
	assert_int_equal(kv_mig_status(f->p.src.m), KV_MIG_COMPLETED);
	assert_int_equal(f->src.stop_calls, 1);
	assert_int_equal(f->src.resume_calls, 0);
	assert_true(f->src.writes > 1000);
	assert_same_memory(&f->src, &f->dst);
	assert_int_equal(f->dst.dev.value, f->seed * 3 + 1);

	kv_mig_get_stats(f->p.src.m, &st);
	assert_int_equal(st.status, KV_MIG_COMPLETED);
	assert_true(st.passes >= 1);
	assert_int_equal(st.pages_per_pass[0], total);
	assert_true(st.transferred > total / 2 * PG);
	/* The workload wrote into zero pages too: only the sum is known. */
	assert_true(st.zero_pages + st.normal_pages >= total);
	assert_true(st.normal_pages >= total / 2);
	assert_true(st.downtime_ms >= 0 && st.downtime_ms <= st.total_time_ms);
	assert_true(f->src.progress_passes >= 1);
	pair_free(&f->p);
	vm_free(&f->src);
	vm_free(&f->dst);
}

static void test_full_migration(void **state)
{
	struct full f;

	(void)state;
	full_start(&f, 11, 1100, 301);
	full_finish(&f);
}

static void test_status_transitions(void **state)
{
	struct vm src, dst;
	struct pair p;
	struct kv_error err = {0};
	static const enum kv_mig_status want[] = {
	    KV_MIG_SETUP, KV_MIG_ACTIVE, KV_MIG_DEVICE, KV_MIG_COMPLETED};

	(void)state;
	assert_string_equal(kv_mig_status_name(KV_MIG_ACTIVE), "active");
	assert_string_equal(kv_mig_status_name(KV_MIG_CANCELLING),
			    "cancelling");
	assert_string_equal(kv_mig_status_name((enum kv_mig_status)99),
			    "unknown");
	vm_init(&src, "m", 40, 9, true);
	vm_init(&dst, "m", 40, 9, true);
	fill(&src, 5);
	pair_start(&p, &src, &dst, NULL);
	pair_join(&p);
	assert_int_equal(p.src.ret, 0);
	assert_int_equal(src.nstatuses, 4);
	for (int i = 0; i < 4; i++)
		assert_int_equal(src.statuses[i], want[i]);
	/* Finished: a cancel changes nothing, a second run is refused. */
	kv_mig_cancel(p.src.m);
	assert_int_equal(kv_mig_status(p.src.m), KV_MIG_COMPLETED);
	assert_int_equal(kv_mig_run(p.src.m, p.src.s, &err), -EBUSY);
	assert_non_null(strstr(err.msg, "already ran"));
	pair_free(&p);
	vm_free(&src);
	vm_free(&dst);
}

/* Two migrations at once (4 threads): no shared state between them. */
static void test_two_at_once(void **state)
{
	struct full *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));

	(void)state;
	full_start(a, 21, 700, 150);
	full_start(b, 22, 900, 77);
	full_finish(a);
	full_finish(b);
	free(a);
	free(b);
}

/* Destination memory from an allocator, to see it released. */
struct track_alloc {
	uint64_t live;
	int allocs, releases;
};

static void *ta_alloc(void *o, const char *id, uint64_t len,
		      struct kv_error *err)
{
	struct track_alloc *t = o;
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		kv_error_set(err, -ENOMEM, "no memory for %s", id);
		return NULL;
	}
	__atomic_add_fetch(&t->live, len, __ATOMIC_RELAXED);
	t->allocs++;
	return p;
}

static void ta_release(void *o, void *host, uint64_t len)
{
	struct track_alloc *t = o;

	munmap(host, len);
	__atomic_sub_fetch(&t->live, len, __ATOMIC_RELAXED);
	t->releases++;
}

static uint64_t digest(const struct vm *v)
{
	uint64_t h = 1469598103934665603ULL;

	for (size_t b = 0; b < NBLOCKS; b++)
		for (size_t i = 0; i < v->npages[b] * PG; i += 64) {
			uint64_t w;

			memcpy(&w, v->mem[b] + i, 8);
			h = (h ^ w) * 1099511628211ULL;
		}
	return h;
}

static void test_cancel_during_iterate(void **state)
{
	struct vm src, dst;
	struct pair p;
	struct kv_mig_params params;
	struct track_alloc ta = {0};
	struct kv_ram_allocator a = {ta_alloc, ta_release, &ta, 1 << 30};
	uint64_t before;

	(void)state;
	vm_init(&src, "m", 2048, 2048, true);
	vm_init(&dst, "m", 2048, 2048, false);
	kv_ram_set_allocator(dst.rs, a);
	fill(&src, 9);
	before = digest(&src);
	kv_mig_params_default(&params);
	params.max_bandwidth = 2 << 20; /* 16 MiB would take 8 s */
	pair_start(&p, &src, &dst, &params);
	wait_status(p.src.m, KV_MIG_ACTIVE);
	kv_sleep_ns(200 * 1000000LL);
	assert_int_equal(kv_mig_status(p.src.m), KV_MIG_ACTIVE);
	kv_mig_cancel(p.src.m);
	pair_join(&p);

	assert_int_equal(p.src.ret, -ECANCELED);
	assert_int_equal(kv_mig_status(p.src.m), KV_MIG_CANCELLED);
	assert_non_null(strstr(p.src.err.msg, "cancelled"));
	assert_int_equal(src.stop_calls, 0);
	assert_int_equal(src.resume_calls, 0);
	assert_int_equal(digest(&src), before);
	/* The destination saw a broken stream and let everything go. */
	assert_true(p.dst.ret < 0);
	assert_true(kv_error_is_set(&p.dst.err));
	assert_int_equal(ta.allocs, NBLOCKS);
	assert_int_equal(ta.releases, NBLOCKS);
	assert_int_equal(ta.live, 0);
	assert_int_equal(kv_ram_block_count(dst.rs), 0);
	pair_free(&p);
	vm_free(&src);
	vm_free(&dst);
}

static void test_cancel_before_run(void **state)
{
	struct vm src, dst;
	struct pair p;
	struct kv_mig_hooks h;
	int sv[2];

	(void)state;
	vm_init(&src, "m", 8, 8, true);
	vm_init(&dst, "m", 8, 8, true);
	h = vm_hooks(&src);
	memset(&p, 0, sizeof(p));
	p.src.m = kv_mig_new(src.sv, src.rs, NULL, &h);
	kv_mig_cancel(p.src.m);
	assert_int_equal(kv_mig_status(p.src.m), KV_MIG_CANCELLING);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	p.src.s = stream_on(sv[0], KV_STREAM_WRITE);
	assert_int_equal(kv_mig_run(p.src.m, p.src.s, &p.src.err), -ECANCELED);
	assert_int_equal(kv_mig_status(p.src.m), KV_MIG_CANCELLED);
	kv_stream_close(p.src.s);
	close(sv[1]);
	pair_free(&p);
	vm_free(&src);
	vm_free(&dst);
}

static void test_non_convergence(void **state)
{
	struct vm src, dst;
	struct pair p;
	struct kv_mig_params params;
	int64_t t0;

	(void)state;
	/* 1080 pages take 2 s at 2 MiB/s: even a dirtier starved of CPU on
	 * a loaded machine cannot let the first pass end (and switch over
	 * with nothing dirty) before the 1 s timeout. */
	vm_init(&src, "m", 1024, 56, true);
	vm_init(&dst, "m", 1024, 56, true);
	fill(&src, 4);
	src.seed = 4;
	dirtier_start(&src);
	kv_mig_params_default(&params);
	params.max_bandwidth = 2 << 20;
	params.downtime_limit_ms = 1;
	params.converge_timeout_ms = 1000;
	t0 = kv_now_ms();
	pair_start(&p, &src, &dst, &params);
	pthread_join(p.src.thread, NULL);
	/* Failed cleanly, in time, and the workload never stopped. */
	assert_true(kv_now_ms() - t0 < 8000);
	assert_true(src.dirtier_running);
	assert_int_equal(src.stop_calls, 0);
	assert_int_equal(src.resume_calls, 0);
	dirtier_stop(&src);
	kv_stream_close(p.src.s);
	pthread_join(p.dst.thread, NULL);

	assert_int_equal(p.src.ret, -ETIMEDOUT);
	assert_int_equal(kv_mig_status(p.src.m), KV_MIG_FAILED);
	assert_non_null(strstr(p.src.err.msg, "did not converge within "
					      "1000 ms"));
	assert_non_null(strstr(p.src.err.msg, "MiB still to send in pass"));
	assert_non_null(strstr(p.src.err.msg, "MiB/s"));
	assert_non_null(strstr(p.src.err.msg, "downtime limit of 1 ms"));
	assert_non_null(strstr(p.src.err.msg, "raise the downtime limit"));
	assert_non_null(strstr(p.src.err.msg, "source keeps running"));
	assert_true(p.dst.ret < 0);
	{
		struct kv_mig_stats st;

		kv_mig_get_stats(p.src.m, &st);
		assert_int_equal(st.status, KV_MIG_FAILED);
		assert_true(st.pages_per_pass[0] > 0);
	}
	pair_free(&p);
	vm_free(&src);
	vm_free(&dst);
}

/* The destination fails after everything arrived: the source, stopped
 * for switch-over, must resume and say why. */
static void test_destination_failure_resumes_source(void **state)
{
	struct vm src, dst;
	struct pair p;

	(void)state;
	vm_init(&src, "m", 64, 64, true);
	vm_init(&dst, "m", 64, 64, true);
	fill(&src, 8);
	dst.dev.fail_load = 1;
	pair_start(&p, &src, &dst, NULL);
	pair_join(&p);
	assert_true(p.src.ret < 0);
	assert_int_equal(kv_mig_status(p.src.m), KV_MIG_FAILED);
	assert_int_equal(src.stop_calls, 1);
	assert_int_equal(src.resume_calls, 1);
	assert_non_null(strstr(p.src.err.msg, "destination failed to load"));
	assert_true(p.dst.ret < 0);
	assert_non_null(strstr(p.dst.err.msg, "refusing the state"));
	/* And what it had loaded is gone. */
	for (size_t b = 0; b < NBLOCKS; b++)
		for (size_t i = 0; i < dst.npages[b] * PG; i++)
			if (dst.mem[b][i])
				fail_msg("destination block %zu byte %zu kept",
					 b, i);
	pair_free(&p);
	vm_free(&src);
	vm_free(&dst);
}

/* A destination for another machine refuses at once; the source reports
 * the destination's verdict and its workload keeps running. */
static void test_wrong_machine(void **state)
{
	struct vm src, dst;
	struct pair p;

	(void)state;
	vm_init(&src, "pc-a", 1024, 1024, true);
	vm_init(&dst, "pc-b", 1024, 1024, true);
	fill(&src, 3);
	pair_start(&p, &src, &dst, NULL);
	pair_join(&p);
	assert_true(p.dst.ret < 0);
	assert_non_null(strstr(p.dst.err.msg, "pc-a"));
	assert_true(p.src.ret < 0);
	assert_int_equal(kv_mig_status(p.src.m), KV_MIG_FAILED);
	assert_non_null(strstr(p.src.err.msg, "destination failed"));
	assert_int_equal(src.resume_calls, src.stop_calls);
	pair_free(&p);
	vm_free(&src);
	vm_free(&dst);
}

/* A file has no return path: the run completes once the stream is flushed,
 * and the file loads later. */
static void test_file_round_trip(void **state)
{
	struct vm src, dst;
	struct kv_mig_hooks h;
	struct kv_migration *m;
	struct kv_error err = {0};
	struct kv_stream *s;
	struct kv_mig_stats st;
	int fd = memfd_create("mig", MFD_CLOEXEC);

	(void)state;
	assert_true(fd >= 0);
	vm_init(&src, "m", 300, 40, true);
	vm_init(&dst, "m", 300, 40, true);
	fill(&src, 6);
	src.dev.value = 4242;
	h = vm_hooks(&src);
	m = kv_mig_new(src.sv, src.rs, NULL, &h);
	s = stream_on(dup(fd), KV_STREAM_WRITE);
	assert_int_equal(kv_mig_run(m, s, &err), 0);
	assert_int_equal(kv_stream_close(s), 0);
	kv_mig_get_stats(m, &st);
	assert_int_equal(st.status, KV_MIG_COMPLETED);
	assert_int_equal(src.stop_calls, 1);

	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	s = stream_on(dup(fd), KV_STREAM_READ);
	assert_int_equal(kv_mig_incoming(dst.sv, s, &err), 0);
	kv_stream_close(s);
	assert_same_memory(&src, &dst);
	assert_int_equal(dst.dev.value, 4242);
	kv_mig_free(m);
	close(fd);
	vm_free(&src);
	vm_free(&dst);
}

/* The bandwidth limit changes while the migration runs. */
static void test_bandwidth_change_live(void **state)
{
	struct vm src, dst;
	struct pair p;
	struct kv_mig_params params;
	int64_t t0;

	(void)state;
	vm_init(&src, "m", 2048, 2048, true);
	vm_init(&dst, "m", 2048, 2048, true);
	fill(&src, 12);
	kv_mig_params_default(&params);
	params.max_bandwidth = 1 << 20; /* 11 MiB of data: 11 s */
	pair_start(&p, &src, &dst, &params);
	wait_status(p.src.m, KV_MIG_ACTIVE);
	kv_sleep_ns(100 * 1000000LL);
	t0 = kv_now_ms();
	kv_mig_set_max_bandwidth(p.src.m, 0);
	pair_join(&p);
	assert_int_equal(p.src.ret, 0);
	assert_int_equal(p.dst.ret, 0);
	assert_true(kv_now_ms() - t0 < 5000);
	assert_same_memory(&src, &dst);
	pair_free(&p);
	vm_free(&src);
	vm_free(&dst);
}

/* The destination answers PING with PONG only when the source opened the
 * return path (as QEMU): nothing else is written back. */
static void ping_stream(bool return_path, bool *ponged)
{
	struct kv_savevm *a = kv_savevm_new("p"), *b = kv_savevm_new("p");
	struct kv_load_result res;
	struct kv_error err = {0};
	struct kv_stream *w, *r;
	char byte;
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	w = stream_on(sv[0], KV_STREAM_WRITE);
	r = stream_on(sv[1], KV_STREAM_READ);
	assert_int_equal(kv_savevm_save_header(a, w, return_path, &err), 0);
	assert_int_equal(kv_savevm_save_setup(a, w, &err), 0);
	assert_int_equal(kv_savevm_save_ping(w, 7, &err), 0);
	assert_int_equal(kv_savevm_save_complete(a, w, &err), 0);
	/* Without a return path the loader reads up to the end. */
	assert_int_equal(shutdown(sv[0], SHUT_WR), 0);
	assert_int_equal(kv_savevm_load(b, r, &res, &err), 0);
	assert_int_equal(res.return_path_requested, return_path);
	*ponged = recv(sv[0], &byte, 1, MSG_DONTWAIT | MSG_PEEK) == 1;
	if (*ponged) {
		struct kv_rp_reader *rp =
		    kv_rp_reader_start(kv_stream_chan(w), &err);

		assert_non_null(rp);
		assert_int_equal(kv_rp_reader_wait_pong(rp, 7, 1000, &err), 0);
		kv_rp_reader_stop(rp);
	}
	kv_stream_close(w);
	kv_stream_close(r);
	kv_savevm_free(a);
	kv_savevm_free(b);
}

static void test_ping_answered_with_return_path_only(void **state)
{
	bool ponged;

	(void)state;
	ping_stream(true, &ponged);
	assert_true(ponged);
	ping_stream(false, &ponged);
	assert_false(ponged);
}

/* ---- when the driver switches over ---- */

/*
 * A live handler whose pending_exact follows a script, to check the
 * switch-over policy: the downtime limit only permits switching; past it
 * the driver iterates while each pass leaves at most 3/4 of the previous
 * one, and stops when that plateaus, when the rest is tiny (256 KiB) or
 * after 32 such passes. Each pass writes 64 KiB so the bandwidth, and with
 * a huge downtime limit the threshold, is far above every scripted value.
 */
#define SCRIPT_PASS_BYTES (64 * 1024)

struct script {
	uint64_t (*pending)(unsigned int call); /* call: 1, 2, ... */
	unsigned int calls;
	unsigned int iterations;
	bool completed;
	unsigned int cleanups;
	bool cleanup_failed; /* what the last save_cleanup was told */
	/* destination */
	bool fail_load; /* refuse the first section */
	unsigned int loaded;
	uint8_t pad[SCRIPT_PASS_BYTES];
};

static int script_setup(struct kv_stream *s, void *opaque, struct kv_error *err)
{
	(void)opaque;
	(void)err;
	kv_stream_put_be64(s, 0);
	return 0;
}

static int script_iterate(struct kv_stream *s, void *opaque,
			  struct kv_error *err)
{
	struct script *sc = opaque;

	(void)err;
	sc->iterations++;
	kv_stream_put_buffer(s, sc->pad, sizeof(sc->pad));
	return 1;
}

static int script_complete(struct kv_stream *s, void *opaque,
			   struct kv_error *err)
{
	struct script *sc = opaque;

	(void)err;
	sc->completed = true;
	kv_stream_put_be64(s, 2);
	return 0;
}

static uint64_t script_estimate(void *opaque)
{
	struct script *sc = opaque;

	return sc->calls ? sc->pending(sc->calls) : UINT64_MAX / 2;
}

static uint64_t script_exact(void *opaque, struct kv_error *err)
{
	struct script *sc = opaque;

	(void)err;
	return sc->pending(++sc->calls);
}

/* Setup and complete carry a be64 (first byte 0); a pass its 64 KiB of
 * 0x11. */
static int script_load(struct kv_stream *s, void *opaque, int version_id,
		       struct kv_error *err)
{
	struct script *sc = opaque;

	(void)version_id;
	if (sc->fail_load)
		return kv_error_set(err, -EINVAL, "script: refusing the section as told");
	sc->loaded++;
	if (kv_stream_peek_u8(s) == 0x11)
		kv_stream_get_buffer(s, sc->pad, sizeof(sc->pad));
	else
		kv_stream_get_be64(s);
	return kv_stream_error(s) ? -EIO : 0;
}

static void script_cleanup(void *opaque, bool failed)
{
	struct script *sc = opaque;

	sc->cleanups++;
	sc->cleanup_failed = failed;
}

static const struct kv_savevm_live_ops script_ops = {
    .save_setup = script_setup,
    .save_iterate = script_iterate,
    .save_complete = script_complete,
    .pending_estimate = script_estimate,
    .pending_exact = script_exact,
    .save_cleanup = script_cleanup,
    .load_state = script_load,
};

static int script_stop(void *opaque, struct kv_error *err)
{
	(void)opaque;
	(void)err;
	return 0;
}

static void script_resume(void *opaque)
{
	(void)opaque;
}

struct script_side {
	struct kv_savevm *sv;
	struct kv_stream *s;
	struct script sc;
	int ret;
	struct kv_error err;
};

static void *script_dest_main(void *arg)
{
	struct script_side *d = arg;

	d->ret = kv_mig_incoming(d->sv, d->s, &d->err);
	kv_stream_close(d->s);
	return NULL;
}

/* Run one migration with the script; returns the pending_exact calls the
 * driver made before it switched over. */
static unsigned int run_script(uint64_t (*pending)(unsigned int),
			       unsigned budget_pct)
{
	struct kv_mig_hooks h = {.stop_vm = script_stop,
				 .resume_vm = script_resume};
	struct script_side *src = calloc(1, sizeof(*src));
	struct script_side *dst = calloc(1, sizeof(*dst));
	struct kv_mig_params params;
	struct kv_error err = {0};
	struct kv_migration *m;
	pthread_t t;
	unsigned int calls;
	int sv[2];

	assert_non_null(src);
	assert_non_null(dst);
	memset(src->sc.pad, 0x11, sizeof(src->sc.pad));
	src->sc.pending = pending;
	src->sv = kv_savevm_new("script");
	dst->sv = kv_savevm_new("script");
	assert_int_equal(kv_savevm_register_live(src->sv, "script", 0, 1,
						 KV_PRI_RAM, &script_ops,
						 &src->sc, &err),
			 0);
	assert_int_equal(kv_savevm_register_live(dst->sv, "script", 0, 1,
						 KV_PRI_RAM, &script_ops,
						 &dst->sc, &err),
			 0);
	kv_mig_params_default(&params);
	params.downtime_limit_ms = 1000000000000000ULL;
	params.rp_timeout_ms = 10000;
	params.extra_pass_time_pct = budget_pct;
	m = kv_mig_new(src->sv, NULL, &params, &h);
	assert_non_null(m);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	src->s = stream_on(sv[0], KV_STREAM_WRITE);
	dst->s = stream_on(sv[1], KV_STREAM_READ);
	assert_int_equal(pthread_create(&t, NULL, script_dest_main, dst), 0);
	src->ret = kv_mig_run(m, src->s, &src->err);
	kv_stream_close(src->s);
	pthread_join(t, NULL);
	if (src->ret || dst->ret)
		fail_msg("source %d '%s', destination %d '%s'", src->ret,
			 src->err.msg, dst->ret, dst->err.msg);
	assert_true(src->sc.completed);
	assert_int_equal(src->sc.cleanups, 1);
	assert_false(src->sc.cleanup_failed);
	/* One pass, then one sync, each time: the passes went through the
	 * PING/PONG wait (a socketpair has a return path). */
	assert_int_equal(src->sc.iterations, src->sc.calls);
	calls = src->sc.calls;
	kv_mig_free(m);
	kv_savevm_free(src->sv);
	kv_savevm_free(dst->sv);
	free(src);
	free(dst);
	return calls;
}

/* 1 GiB, 100, 50, 30, 29 MiB: 29 is not below 3/4 of 30. */
static uint64_t plateau(unsigned int call)
{
	static const uint64_t mib[] = {1024, 100, 50, 30, 29, 1, 1, 1};

	return mib[call < 8 ? call - 1 : 7] << 20;
}

/* Tiny after the first pass. */
static uint64_t tiny(unsigned int call)
{
	return call == 1 ? 1ULL << 30 : 200 * 1024;
}

/* Shrinks by 0.7 forever, from 2^50: only the pass cap ends it. */
static uint64_t shrinking(unsigned int call)
{
	uint64_t v = 1ULL << 50;

	for (unsigned int i = 1; i < call; i++)
		v = v / 10 * 7;
	return v;
}

/* Grows after the first pass: the dirty set is not shrinking at all. */
static uint64_t growing(unsigned int call)
{
	return (uint64_t)call << 30;
}

static void test_switch_over_policy(void **state)
{
	(void)state;
	/* Without the time budget: the shrink rule alone. */
	assert_int_equal(run_script(plateau, 0), 5);
	assert_int_equal(run_script(tiny, 0), 2);
	assert_int_equal(run_script(shrinking, 0), 33);
	assert_int_equal(run_script(growing, 0), 2);
	/* With it: the scripted passes move a few bytes while they claim
	 * gigabytes pending, so another pass would take far more than 10 %
	 * of the time so far. The limit is met at the first sync; the first
	 * extra pass (pass 2) always runs, and is the last. */
	assert_int_equal(run_script(plateau, 10), 2);
	assert_int_equal(run_script(shrinking, 10), 2);
}

/* ---- the incoming object and the outgoing entry (URI in, run out) ---- */

/* The table, cell by cell, postcopy's rows included. */
static void test_incoming_table(void **state)
{
	static const char *const allowed[] = {
	    "none>setup",	 "setup>active",      "setup>failed",
	    "setup>cancelled", "active>completed", "active>failed",
	    "active>cancelled", "active>x-undecided",
	    "x-undecided>completed", "x-undecided>failed",
	    "x-undecided>cancelled",
	    "active>postcopy-active", "postcopy-active>completed",
	    "postcopy-active>postcopy-paused", "postcopy-active>failed",
	    "postcopy-active>cancelled", "postcopy-paused>cancelled",
	    "postcopy-paused>postcopy-recover",
	    "postcopy-recover>postcopy-active",
	    "postcopy-recover>postcopy-paused",
	    "postcopy-recover>cancelled",
	};
	int n_allowed = 0;

	(void)state;
	for (int f = 0; f < KV_IN_STATUS_COUNT; f++)
		for (int t = 0; t < KV_IN_STATUS_COUNT; t++) {
			char cell[64];
			bool want = false;

			snprintf(cell, sizeof(cell), "%s>%s",
				 kv_in_status_name((enum kv_in_status)f),
				 kv_in_status_name((enum kv_in_status)t));
			for (size_t i = 0;
			     i < sizeof(allowed) / sizeof(allowed[0]); i++)
				want |= !strcmp(cell, allowed[i]);
			n_allowed += want;
			if (kv_in_transition_allowed((enum kv_in_status)f,
						     (enum kv_in_status)t) !=
			    want)
				fail_msg("%s: table says %d", cell, !want);
		}
	assert_int_equal(n_allowed, 21);
	assert_false(kv_in_transition_allowed(KV_IN_NONE, KV_IN_STATUS_COUNT));
	assert_false(
	    kv_in_transition_allowed((enum kv_in_status)-1, KV_IN_SETUP));
	assert_string_equal(kv_in_status_name(KV_IN_CANCELLED), "cancelled");
	assert_string_equal(kv_in_status_name(KV_IN_STATUS_COUNT), "unknown");
}

struct in_side {
	struct vm *vm;
	struct kv_incoming *in;
	enum kv_in_status seen[MAX_STATUSES];
	int nseen;
	int commit_calls, start_calls;
	bool commit_fails;
	/* On ACTIVE: what a settings change gets (the source connected). */
	int multifd_change_ret, other_change_ret;
	char change_msg[KV_ERROR_MSG_MAX];
	pthread_t thread;
	int ret;
	struct kv_error err;
};

static void in_status(void *opaque, enum kv_in_status st)
{
	struct in_side *d = opaque;
	struct kv_mig_params p;
	struct kv_error err = {0};

	if (d->nseen < MAX_STATUSES)
		d->seen[d->nseen++] = st;
	if (st != KV_IN_ACTIVE)
		return;
	kv_mig_params_default(&p);
	p.multifd_channels = 2;
	d->multifd_change_ret = kv_incoming_set_params(d->in, &p, &err);
	snprintf(d->change_msg, sizeof(d->change_msg), "%s", err.msg);
	kv_mig_params_default(&p);
	p.downtime_limit_ms = 5;
	d->other_change_ret = kv_incoming_set_params(d->in, &p, NULL);
}

static int in_commit(void *opaque, struct kv_error *err)
{
	struct in_side *d = opaque;

	d->commit_calls++;
	if (d->commit_fails)
		return kv_error_set(err, -EIO, "commit refused (test)");
	return 0;
}

static int in_start(void *opaque, struct kv_error *err)
{
	struct in_side *d = opaque;

	(void)err;
	/* The source's answer went before the workload starts. */
	assert_int_equal(d->commit_calls, 1);
	d->start_calls++;
	return 0;
}

static void *in_main(void *arg)
{
	struct in_side *d = arg;

	d->ret = kv_incoming_run(d->in, &d->err);
	return NULL;
}

static void in_side_listen(struct in_side *d, struct vm *v, char *uri,
			   size_t len)
{
	static int n;
	struct kv_incoming_hooks h = {.status = in_status,
				      .commit = in_commit,
				      .start_vm = in_start,
				      .opaque = d};
	struct kv_error err = {0};

	memset(d, 0, sizeof(*d));
	d->vm = v;
	snprintf(uri, len, "unix:/tmp/kvmig-test-in-%d-%d.sock", getpid(),
		 n++);
	d->in = kv_incoming_new(v->sv, v->rs, NULL, &h);
	assert_non_null(d->in);
	assert_int_equal(kv_incoming_status(d->in), KV_IN_NONE);
	assert_int_equal(kv_incoming_listen(d->in, uri, &err), 0);
	assert_string_equal(kv_incoming_uri(d->in), uri);
	assert_int_equal(pthread_create(&d->thread, NULL, in_main, d), 0);
}

static void in_side_free(struct in_side *d, const char *uri)
{
	kv_incoming_free(d->in);
	unlink(uri + 5);
}

/* kv_mig_run_uri against kv_incoming_run: both ends set up by the engine,
 * every status through the tables, the hooks in order. */
static void test_incoming_object(void **state)
{
	static const enum kv_in_status want[] = {KV_IN_SETUP, KV_IN_ACTIVE,
						 KV_IN_COMPLETED};
	struct vm src, dst;
	struct in_side d;
	struct kv_mig_hooks h;
	struct kv_migration *m;
	struct kv_incoming_stats ist;
	struct kv_mig_params later;
	struct kv_mig_stats st;
	struct kv_error err = {0};
	char uri[108];

	(void)state;
	vm_init(&src, "m", 60, 7, true);
	vm_init(&dst, "m", 60, 7, true);
	fill(&src, 9);
	src.dev.value = 77;
	h = vm_hooks(&src);
	m = kv_mig_new(src.sv, src.rs, NULL, &h);
	in_side_listen(&d, &dst, uri, sizeof(uri));
	assert_int_equal(kv_mig_run_uri(m, uri, &err), 0);
	pthread_join(d.thread, NULL);
	if (d.ret)
		fail_msg("destination: %s", d.err.msg);
	assert_same_memory(&src, &dst);
	assert_int_equal(dst.dev.value, 77);
	assert_int_equal(d.nseen, 3);
	for (int i = 0; i < 3; i++)
		assert_int_equal(d.seen[i], want[i]);
	assert_int_equal(d.commit_calls, 1);
	assert_int_equal(d.start_calls, 1);
	/* Read when the source connected: a multifd change is refused,
	 * naming it; another change is accepted. */
	assert_int_equal(d.multifd_change_ret, -EBUSY);
	assert_non_null(strstr(d.change_msg, "the multifd capability"));
	assert_non_null(strstr(d.change_msg, "before the source connects"));
	assert_int_equal(d.other_change_ret, 0);
	kv_incoming_get_stats(d.in, &ist);
	assert_int_equal(ist.status, KV_IN_COMPLETED);
	assert_true(ist.peer[0] != '\0');
	assert_string_equal(ist.error, "");
	kv_mig_get_stats(m, &st);
	/* Every byte the source wrote was read. */
	assert_int_equal(ist.transferred, st.transferred);
	assert_true(st.return_path);
	assert_int_equal(kv_mig_status(m), KV_MIG_COMPLETED);
	/* Ended: settings may change again (for a later migration); a
	 * second run is refused and changes nothing. */
	kv_mig_params_default(&later);
	later.multifd_channels = 4;
	assert_int_equal(kv_incoming_set_params(d.in, &later, NULL), 0);
	assert_int_equal(kv_incoming_run(d.in, &err), -EBUSY);
	assert_non_null(strstr(err.msg, "already ran"));
	assert_int_equal(kv_incoming_status(d.in), KV_IN_COMPLETED);
	kv_mig_free(m);
	in_side_free(&d, uri);
	vm_free(&src);
	vm_free(&dst);
}

/* A commit that fails: the destination is FAILED and never starts the
 * workload; the source hears SHUT(1) and resumes. */
static void test_incoming_commit_failure(void **state)
{
	struct vm src, dst;
	struct in_side d;
	struct kv_mig_hooks h;
	struct kv_migration *m;
	struct kv_error err = {0};
	char uri[108];

	(void)state;
	vm_init(&src, "m", 30, 3, true);
	vm_init(&dst, "m", 30, 3, true);
	fill(&src, 4);
	h = vm_hooks(&src);
	m = kv_mig_new(src.sv, src.rs, NULL, &h);
	in_side_listen(&d, &dst, uri, sizeof(uri));
	d.commit_fails = true;
	assert_true(kv_mig_run_uri(m, uri, &err) < 0);
	pthread_join(d.thread, NULL);
	assert_true(d.ret < 0);
	assert_non_null(strstr(d.err.msg, "commit refused (test)"));
	assert_int_equal(d.seen[d.nseen - 1], KV_IN_FAILED);
	assert_int_equal(d.start_calls, 0);
	assert_int_equal(kv_mig_status(m), KV_MIG_FAILED);
	assert_int_equal(src.resume_calls, 1);
	kv_mig_free(m);
	in_side_free(&d, uri);
	vm_free(&src);
	vm_free(&dst);
}

/* Abort while listening (no source ever came): SETUP -> CANCELLED. */
static void test_incoming_abort_listening(void **state)
{
	struct vm dst;
	struct in_side d;
	char uri[108];

	(void)state;
	vm_init(&dst, "m", 8, 1, true);
	in_side_listen(&d, &dst, uri, sizeof(uri));
	kv_sleep_ns(20 * 1000000LL);
	kv_incoming_abort(d.in);
	pthread_join(d.thread, NULL);
	assert_int_equal(d.ret, -ECANCELED);
	assert_int_equal(d.nseen, 2);
	assert_int_equal(d.seen[0], KV_IN_SETUP);
	assert_int_equal(d.seen[1], KV_IN_CANCELLED);
	assert_int_equal(d.commit_calls, 0);
	in_side_free(&d, uri);
	vm_free(&dst);
}

/* The outgoing entry: SETUP while it connects (QEMU's query-migrate
 * says so too), then a connection that cannot be set up is FAILED; a
 * cancel before it is CANCELLED without connecting. */
static void test_run_uri_connect(void **state)
{
	struct vm src;
	struct kv_mig_hooks h;
	struct kv_migration *m;
	struct kv_error err = {0};

	(void)state;
	vm_init(&src, "m", 8, 1, true);
	h = vm_hooks(&src);
	m = kv_mig_new(src.sv, src.rs, NULL, &h);
	assert_true(kv_mig_run_uri(m, "unix:/nonexistent/kvmig.sock", &err) <
		    0);
	assert_non_null(strstr(err.msg, "/nonexistent/kvmig.sock"));
	assert_int_equal(kv_mig_status(m), KV_MIG_FAILED);
	assert_int_equal(src.nstatuses, 2);
	assert_int_equal(src.statuses[0], KV_MIG_SETUP);
	assert_int_equal(src.statuses[1], KV_MIG_FAILED);
	assert_int_equal(kv_mig_run_uri(m, "unix:/nonexistent/x", &err),
			 -EBUSY);
	kv_mig_free(m);

	src.nstatuses = 0;
	m = kv_mig_new(src.sv, src.rs, NULL, &h);
	kv_mig_cancel(m);
	kv_error_clear(&err);
	assert_int_equal(kv_mig_run_uri(m, "unix:/nonexistent/kvmig.sock",
					&err),
			 -ECANCELED);
	assert_null(strstr(err.msg, "nonexistent"));
	assert_int_equal(kv_mig_status(m), KV_MIG_CANCELLED);
	assert_int_equal(src.statuses[src.nstatuses - 1], KV_MIG_CANCELLED);
	assert_int_equal(src.stop_calls, 0);
	kv_mig_free(m);
	vm_free(&src);
}

/* A tcp listener nobody accepts from, its one-entry backlog taken by a
 * first connection: further SYNs are dropped (a firewall's DROP, in
 * effect). Returns the listener; *filler is the first connection. */
static int black_hole(char *uri, size_t len, int *filler)
{
	struct sockaddr_in sin = {.sin_family = AF_INET};
	socklen_t sl = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(fd, 0), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
	*filler = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(connect(*filler, (struct sockaddr *)&sin,
				 sizeof(sin)), 0);
	snprintf(uri, len, "tcp:127.0.0.1:%d", ntohs(sin.sin_port));
	kv_sleep_ns(20 * 1000000LL);
	return fd;
}

struct uri_job {
	struct kv_migration *m;
	const char *uri;
	int ret;
	struct kv_error err;
};

static void *run_uri_main(void *arg)
{
	struct uri_job *j = arg;

	j->ret = kv_mig_run_uri(j->m, j->uri, &j->err);
	return NULL;
}

/* A cancel while connecting to a destination that never answers ends the
 * migration at once: SETUP -> CANCELLING -> CANCELLED, the workload never
 * stopped. multifd: the main channel lands in the backlog, the first
 * multifd channel's SYN is dropped. */
static void cancel_connect(unsigned multifd_channels)
{
	struct vm src;
	struct kv_mig_hooks h;
	struct kv_mig_params params;
	struct uri_job j = {0};
	char uri[64];
	pthread_t t;
	int filler, lfd = black_hole(uri, sizeof(uri), &filler);
	int64_t t0;

	vm_init(&src, "m", 8, 1, true);
	h = vm_hooks(&src);
	kv_mig_params_default(&params);
	params.multifd_channels = multifd_channels;
	j.m = kv_mig_new(src.sv, src.rs, &params, &h);
	j.uri = uri;
	assert_int_equal(pthread_create(&t, NULL, run_uri_main, &j), 0);
	kv_sleep_ns(300 * 1000000LL);
	assert_int_equal(kv_mig_status(j.m), KV_MIG_SETUP);
	t0 = kv_now_ns();
	kv_mig_cancel(j.m);
	pthread_join(t, NULL);
	assert_true(kv_now_ns() - t0 < 500 * 1000000LL);
	assert_int_equal(j.ret, -ECANCELED);
	assert_non_null(strstr(j.err.msg, "cancelled"));
	assert_int_equal(kv_mig_status(j.m), KV_MIG_CANCELLED);
	assert_int_equal(src.nstatuses, 3);
	assert_int_equal(src.statuses[0], KV_MIG_SETUP);
	assert_int_equal(src.statuses[1], KV_MIG_CANCELLING);
	assert_int_equal(src.statuses[2], KV_MIG_CANCELLED);
	assert_int_equal(src.stop_calls, 0);
	kv_mig_free(j.m);
	vm_free(&src);
	close(filler);
	close(lfd);
}

static void test_run_uri_cancel_connect(void **state)
{
	(void)state;
	cancel_connect(0);
	cancel_connect(2);
}

/* x-connect-timeout: no answer in time fails the migration, naming the
 * address and the time. */
static void test_run_uri_connect_timeout(void **state)
{
	struct vm src;
	struct kv_mig_hooks h;
	struct kv_mig_params params;
	struct kv_migration *m;
	struct kv_error err = {0};
	char uri[64];
	int filler, lfd = black_hole(uri, sizeof(uri), &filler);
	int64_t t0 = kv_now_ns();

	(void)state;
	vm_init(&src, "m", 8, 1, true);
	h = vm_hooks(&src);
	kv_mig_params_default(&params);
	assert_int_equal(params.connect_timeout_ms, 30000);
	params.connect_timeout_ms = 200;
	m = kv_mig_new(src.sv, src.rs, &params, &h);
	assert_int_equal(kv_mig_run_uri(m, uri, &err), -ETIMEDOUT);
	assert_true(kv_now_ns() - t0 < 1500 * 1000000LL);
	assert_non_null(strstr(err.msg, uri));
	assert_non_null(strstr(err.msg, "200 ms"));
	assert_int_equal(kv_mig_status(m), KV_MIG_FAILED);
	assert_int_equal(src.statuses[0], KV_MIG_SETUP);
	assert_int_equal(src.statuses[src.nstatuses - 1], KV_MIG_FAILED);
	kv_mig_free(m);
	vm_free(&src);
	close(filler);
	close(lfd);
}

/* 1 TiB dirty for ever: never fits a real downtime limit. */
static uint64_t endless(unsigned int call)
{
	(void)call;
	return 1ULL << 40;
}

enum script_end { END_COMPLETED, END_DEST_REFUSES, END_CANCELLED };

struct canceller {
	struct kv_migration *m;
	pthread_t thread;
};

/* Cancels once the migration iterates (no cmocka asserts off the test's
 * thread: a migration that never gets there fails the test on its own). */
static void *canceller_main(void *arg)
{
	struct canceller *c = arg;
	int64_t deadline = kv_now_ms() + 10000;

	while (kv_mig_status(c->m) != KV_MIG_ACTIVE && kv_now_ms() < deadline)
		kv_sleep_ns(1000000);
	kv_sleep_ns(20 * 1000000LL);
	kv_mig_cancel(c->m);
	return NULL;
}

/* Run a scripted migration that ends as told; returns what the source's
 * handler got in save_cleanup (asserting it was called once). */
static bool cleanup_told_failed(enum script_end end,
				enum kv_mig_status want_status)
{
	struct kv_mig_hooks h = {.stop_vm = script_stop,
				 .resume_vm = script_resume};
	struct script_side *src = calloc(1, sizeof(*src));
	struct script_side *dst = calloc(1, sizeof(*dst));
	struct canceller c = {0};
	struct kv_mig_params params;
	struct kv_error err = {0};
	pthread_t t;
	bool failed;
	int sv[2];

	assert_non_null(src);
	assert_non_null(dst);
	memset(src->sc.pad, 0x11, sizeof(src->sc.pad));
	src->sc.pending = end == END_CANCELLED ? endless : tiny;
	dst->sc.fail_load = end == END_DEST_REFUSES;
	src->sv = kv_savevm_new("script");
	dst->sv = kv_savevm_new("script");
	assert_int_equal(kv_savevm_register_live(src->sv, "script", 0, 1,
						 KV_PRI_RAM, &script_ops,
						 &src->sc, &err),
			 0);
	assert_int_equal(kv_savevm_register_live(dst->sv, "script", 0, 1,
						 KV_PRI_RAM, &script_ops,
						 &dst->sc, &err),
			 0);
	kv_mig_params_default(&params);
	/* endless never fits the default limit: only the cancel ends it. */
	if (end != END_CANCELLED)
		params.downtime_limit_ms = 1000000000000000ULL;
	params.rp_timeout_ms = 10000;
	c.m = kv_mig_new(src->sv, NULL, &params, &h);
	assert_non_null(c.m);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	src->s = stream_on(sv[0], KV_STREAM_WRITE);
	dst->s = stream_on(sv[1], KV_STREAM_READ);
	assert_int_equal(pthread_create(&t, NULL, script_dest_main, dst), 0);
	if (end == END_CANCELLED)
		assert_int_equal(
		    pthread_create(&c.thread, NULL, canceller_main, &c), 0);
	src->ret = kv_mig_run(c.m, src->s, &src->err);
	if (end == END_CANCELLED)
		pthread_join(c.thread, NULL);
	kv_stream_close(src->s);
	pthread_join(t, NULL);
	assert_int_equal(kv_mig_status(c.m), want_status);
	assert_int_equal(src->ret == 0, end == END_COMPLETED);
	assert_int_equal(src->sc.cleanups, 1);
	failed = src->sc.cleanup_failed;
	kv_mig_free(c.m);
	kv_savevm_free(src->sv);
	kv_savevm_free(dst->sv);
	free(src);
	free(dst);
	return failed;
}

/* save_cleanup(failed) says how the migration ended: false only when it
 * completed (RAM's tracker keeps its marks for a retry otherwise). */
static void test_save_cleanup_told_outcome(void **state)
{
	(void)state;
	assert_false(cleanup_told_failed(END_COMPLETED, KV_MIG_COMPLETED));
	assert_true(cleanup_told_failed(END_DEST_REFUSES, KV_MIG_FAILED));
	assert_true(cleanup_told_failed(END_CANCELLED, KV_MIG_CANCELLED));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_switch_over_policy),
	    cmocka_unit_test(test_save_cleanup_told_outcome),
	    cmocka_unit_test(test_ping_answered_with_return_path_only),
	    cmocka_unit_test(test_full_migration),
	    cmocka_unit_test(test_status_transitions),
	    cmocka_unit_test(test_two_at_once),
	    cmocka_unit_test(test_cancel_before_run),
	    cmocka_unit_test(test_cancel_during_iterate),
	    cmocka_unit_test(test_non_convergence),
	    cmocka_unit_test(test_destination_failure_resumes_source),
	    cmocka_unit_test(test_wrong_machine),
	    cmocka_unit_test(test_file_round_trip),
	    cmocka_unit_test(test_bandwidth_change_live),
	    cmocka_unit_test(test_incoming_table),
	    cmocka_unit_test(test_incoming_object),
	    cmocka_unit_test(test_incoming_commit_failure),
	    cmocka_unit_test(test_incoming_abort_listening),
	    cmocka_unit_test(test_run_uri_connect),
	    cmocka_unit_test(test_run_uri_cancel_connect),
	    cmocka_unit_test(test_run_uri_connect_timeout),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
