/* SPDX-License-Identifier: MIT */
/*
 * kvmig memtest: migrate a memory region between two kvmig processes (or
 * through a file) while a thread keeps dirtying it, and verify it arrived.
 *
 * The source registers two handlers in a "kvmig-memtest" savevm: "ram"
 * over the region's blocks (software dirty tracking) and the device
 * "memtest/digest" (region size + XXH3-128 of the region, taken in pre_save,
 * i.e. after the workload was stopped). The destination creates the blocks
 * the stream announces, loads, and the digest device's post_load compares
 * the hash of what arrived with the source's; a mismatch fails the load, and
 * through the return path (SHUT 1) the source's migration too.
 *
 * SIGINT and SIGTERM are blocked in every thread and read from a signalfd
 * by a watcher thread, which cancels the migration (source) or shuts the
 * stream down (destination): no work happens in a signal handler.
 */
#define _GNU_SOURCE /* pipe2 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/error.h"
#include "cli/cli.h"
#include "cli/memtest_workload.h"
#include "io/channel.h"
#include "io/stream.h"
#include "migration/migration.h"
#include "migration/ram.h"
#include "migration/savevm.h"
#include "migration/soft_tracker.h"
#include "migration/vmstate.h"

#define MEMTEST_MACHINE "kvmig-memtest"
#define MIB		(1024.0 * 1024.0)

static const char memtest_help[] =
    "Usage:\n"
    "  kvmig memtest --size SIZE --to URI [OPTIONS]     (source)\n"
    "  kvmig memtest --incoming URI [--max-size SIZE]   (destination)\n"
    "\n"
    "Migrate a memory region filled with zero, random and repeated pages\n"
    "while a thread keeps dirtying it, and verify on the destination that\n"
    "it arrived intact (XXH3-128 digest taken with the workload stopped).\n"
    "\n"
    "URIs: tcp:HOST:PORT, tcp:[IPV6]:PORT, unix:PATH, file:PATH.\n"
    "  --to file:PATH saves the whole stream into a file; --incoming\n"
    "  file:PATH loads one. tcp port 0 picks a free port (printed).\n"
    "\n"
    "Source options:\n"
    "  --size SIZE            region size: bytes, or with a binary suffix\n"
    "                         K, M, G, T (64M, 1G, 1.5G)\n"
    "  --to URI               where to send the migration\n"
    "  --dirty-rate MIBPS     pages dirtied per second, in MiB/s of pages\n"
    "                         (default 0: an idle region)\n"
    "  --downtime-limit MS    switch over when what is left fits in this\n"
    "                         time at the measured bandwidth (default 300)\n"
    "  --max-bandwidth RATE   cap the stream at RATE bytes per second;\n"
    "                         suffixes are binary: 100M = 100 MiB/s\n"
    "                         (default 0: unlimited)\n"
    "  --timeout SECONDS      fail if not converged in time (default:\n"
    "                         never give up)\n"
    "  --blocks N             split the region into N RAM blocks (default 1)\n"
    "  --pattern P            mixed (default: a third each of zero, random\n"
    "                         and repeated pages), zero or random\n"
    "  --seed N               fill seed (default 1)\n"
    "  --print-digest         print the region's digest before migrating\n"
    "\n"
    "Destination options:\n"
    "  --incoming URI         listen on URI (or read file:PATH) and load\n"
    "  --max-size SIZE        refuse streams announcing more RAM than this\n"
    "                         (default 64G)\n"
    "\n"
    "SIGINT or SIGTERM cancels: the source prints 'cancelled' and the\n"
    "digest of its region; the destination drops what it loaded.\n"
    "Exit status: 0 success, 1 failure or cancel, 2 usage error.\n";

struct memtest_opts {
	uint64_t size;
	double dirty_rate_mib;
	const char *to;
	const char *incoming;
	uint64_t downtime_ms;
	bool has_downtime;
	uint64_t max_bandwidth;
	uint64_t timeout_s;
	uint64_t blocks;
	enum kv_memtest_pattern pattern;
	uint64_t seed;
	bool print_digest;
	uint64_t max_size;
};

/* The "memtest/digest" device. Only region_size and hash go on the wire. */
struct memtest_digest {
	uint64_t region_size;
	uint8_t hash[16];
	const struct kv_memtest_block *blocks; /* what to hash */
	const size_t *nblocks;
	bool verified; /* destination: post_load matched */
	bool seen;     /* destination: the section arrived */
};

/* --- the signal watcher --- */

struct sigwatch {
	int sfd;
	int stop_pipe[2];
	pthread_t thread;
	bool running;
	pthread_mutex_t lock; /* guards everything below */
	struct kv_migration *mig;
	struct kv_stream *stream;
	struct kv_listener *listener;
	int signo; /* 0 until a signal arrived */
};

static void sigwatch_act(struct sigwatch *w)
{
	if (w->mig)
		kv_mig_cancel(w->mig);
	if (w->stream)
		kv_stream_shutdown(w->stream);
	if (w->listener)
		kv_listener_shutdown(w->listener);
}

static const char *signal_name(int signo)
{
	switch (signo) {
	case SIGINT:
		return "SIGINT";
	case SIGTERM:
		return "SIGTERM";
	default:
		return "a signal";
	}
}

static void *sigwatch_thread(void *arg)
{
	struct sigwatch *w = arg;
	struct pollfd fds[2] = {
	    {.fd = w->sfd, .events = POLLIN},
	    {.fd = w->stop_pipe[0], .events = POLLIN},
	};

	for (;;) {
		struct signalfd_siginfo si;

		if (poll(fds, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (fds[1].revents)
			break;
		if (!(fds[0].revents & POLLIN))
			continue;
		if (read(w->sfd, &si, sizeof(si)) != sizeof(si))
			continue;
		pthread_mutex_lock(&w->lock);
		if (!w->signo) {
			w->signo = (int)si.ssi_signo;
			printf("memtest: %s received, cancelling\n",
			       signal_name((int)si.ssi_signo));
		}
		sigwatch_act(w);
		pthread_mutex_unlock(&w->lock);
	}
	return NULL;
}

static int sigwatch_start(struct sigwatch *w, struct kv_error *err)
{
	sigset_t set;
	int rc;

	memset(w, 0, sizeof(*w));
	w->sfd = -1;
	w->stop_pipe[0] = w->stop_pipe[1] = -1;
	pthread_mutex_init(&w->lock, NULL);
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	/* Blocked before any thread starts, so every thread inherits it. */
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	w->sfd = signalfd(-1, &set, SFD_CLOEXEC);
	if (w->sfd < 0)
		return kv_error_set_errno(err, -errno, "signalfd");
	if (pipe2(w->stop_pipe, O_CLOEXEC) < 0)
		return kv_error_set_errno(err, -errno, "pipe");
	rc = pthread_create(&w->thread, NULL, sigwatch_thread, w);
	if (rc)
		return kv_error_set_errno(err, -rc,
					  "cannot start the signal thread");
	w->running = true;
	return 0;
}

static void sigwatch_stop(struct sigwatch *w)
{
	if (w->running) {
		if (write(w->stop_pipe[1], "x", 1) < 0)
			perror("memtest: stopping the signal thread");
		pthread_join(w->thread, NULL);
		w->running = false;
	}
	if (w->sfd >= 0)
		close(w->sfd);
	for (int i = 0; i < 2; i++)
		if (w->stop_pipe[i] >= 0)
			close(w->stop_pipe[i]);
	w->sfd = w->stop_pipe[0] = w->stop_pipe[1] = -1;
	pthread_mutex_destroy(&w->lock);
}

/* Publish what a signal should act on; acts at once if one already came. */
static void sigwatch_set(struct sigwatch *w, struct kv_migration *mig,
			 struct kv_stream *stream, struct kv_listener *l)
{
	pthread_mutex_lock(&w->lock);
	w->mig = mig;
	w->stream = stream;
	w->listener = l;
	if (w->signo)
		sigwatch_act(w);
	pthread_mutex_unlock(&w->lock);
}

static int sigwatch_signo(struct sigwatch *w)
{
	int signo;

	pthread_mutex_lock(&w->lock);
	signo = w->signo;
	pthread_mutex_unlock(&w->lock);
	return signo;
}

/* --- the digest device --- */

static int digest_pre_save(void *opaque, struct kv_error *err)
{
	struct memtest_digest *d = opaque;

	d->region_size = 0;
	for (size_t i = 0; i < *d->nblocks; i++)
		d->region_size += d->blocks[i].length;
	return kv_memtest_digest(d->blocks, *d->nblocks, d->hash, err);
}

static int digest_post_load(void *opaque, int version_id, struct kv_error *err)
{
	struct memtest_digest *d = opaque;
	char src_hex[33], dst_hex[33];
	uint8_t local[16];
	uint64_t size = 0;
	int rc;

	d->seen = true;
	for (size_t i = 0; i < *d->nblocks; i++)
		size += d->blocks[i].length;
	if (size != d->region_size)
		return kv_error_set(err, -EIO,
				    "region size mismatch: source %" PRIu64
				    " bytes, destination %" PRIu64 " bytes",
				    d->region_size, size);
	rc = kv_memtest_digest(d->blocks, *d->nblocks, local, err);
	if (rc < 0)
		return rc;
	if (memcmp(local, d->hash, sizeof(local))) {
		kv_cli_hex(d->hash, 16, src_hex);
		kv_cli_hex(local, 16, dst_hex);
		return kv_error_set(err, -EIO,
				    "digest mismatch: source %s, "
				    "destination %s",
				    src_hex, dst_hex);
	}
	d->verified = true;
	return 0;
}

static const struct kv_vmstate_field digest_fields[] = {
    KV_VMS_FIELD(struct memtest_digest, region_size, KV_VMS_U64, 1),
    KV_VMS_BUF(struct memtest_digest, hash, 1),
    KV_VMS_END,
};

static const struct kv_vmstate_desc digest_vmsd = {
    .name = "memtest/digest",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = digest_fields,
    .pre_save = digest_pre_save,
    .post_load = digest_post_load,
};

/* --- options --- */

static int parse_opts(int argc, char **argv, struct memtest_opts *o, bool *help)
{
	const char *size = NULL, *rate = NULL, *downtime = NULL, *bw = NULL,
		   *timeout = NULL, *blocks = NULL, *pattern = NULL,
		   *seed = NULL, *print_digest = NULL, *max_size = NULL;
	const struct kv_cli_opt opts[] = {
	    {"size", true, &size},
	    {"dirty-rate", true, &rate},
	    {"to", true, &o->to},
	    {"incoming", true, &o->incoming},
	    {"downtime-limit", true, &downtime},
	    {"max-bandwidth", true, &bw},
	    {"timeout", true, &timeout},
	    {"blocks", true, &blocks},
	    {"pattern", true, &pattern},
	    {"seed", true, &seed},
	    {"print-digest", false, &print_digest},
	    {"max-size", true, &max_size},
	    {NULL, false, NULL},
	};
	int rc;

	memset(o, 0, sizeof(*o));
	o->blocks = 1;
	o->seed = 1;
	o->max_size = 64ULL << 30;
	rc = kv_cli_parse("memtest", argc, argv, opts, help);
	if (rc || *help)
		return rc;

	if (!o->to == !o->incoming)
		return kv_cli_usage_error("memtest", "give exactly one of "
						     "--to URI (source) and "
						     "--incoming URI "
						     "(destination)");
	if (o->incoming && (size || rate || downtime || bw || timeout ||
			    blocks || pattern || seed || print_digest))
		return kv_cli_usage_error("memtest",
					  "--incoming takes only --max-size; "
					  "the size and workload come from "
					  "the source");
	if (o->to && max_size)
		return kv_cli_usage_error("memtest",
					  "--max-size is a destination option");
	if (o->to && !size)
		return kv_cli_usage_error("memtest", "--to needs --size");
	if (size && (!kv_cli_parse_size(size, &o->size) || !o->size))
		return kv_cli_usage_error("memtest",
					  "invalid --size '%s' (expected a "
					  "size such as 64M or 1G)",
					  size);
	if (max_size && !kv_cli_parse_size(max_size, &o->max_size))
		return kv_cli_usage_error("memtest",
					  "invalid --max-size '%s' (expected "
					  "a size such as 64M or 1G)",
					  max_size);
	if (rate && !kv_cli_parse_double(rate, &o->dirty_rate_mib))
		return kv_cli_usage_error("memtest",
					  "invalid --dirty-rate '%s' (expected "
					  "MiB/s, a number such as 64)",
					  rate);
	if (downtime) {
		if (!kv_cli_parse_u64(downtime, &o->downtime_ms) ||
		    !o->downtime_ms)
			return kv_cli_usage_error(
			    "memtest",
			    "invalid --downtime-limit '%s' (expected "
			    "milliseconds, at least 1)",
			    downtime);
		o->has_downtime = true;
	}
	if (bw && !kv_cli_parse_size(bw, &o->max_bandwidth))
		return kv_cli_usage_error("memtest",
					  "invalid --max-bandwidth '%s' "
					  "(expected bytes/s such as 100M "
					  "for 100 MiB/s)",
					  bw);
	if (timeout && !kv_cli_parse_u64(timeout, &o->timeout_s))
		return kv_cli_usage_error("memtest",
					  "invalid --timeout '%s' (expected "
					  "seconds)",
					  timeout);
	if (blocks && (!kv_cli_parse_u64(blocks, &o->blocks) || !o->blocks ||
		       o->blocks > KV_MEMTEST_MAX_BLOCKS))
		return kv_cli_usage_error("memtest",
					  "invalid --blocks '%s' (expected "
					  "1 to %d)",
					  blocks, KV_MEMTEST_MAX_BLOCKS);
	if (seed && !kv_cli_parse_u64(seed, &o->seed))
		return kv_cli_usage_error("memtest",
					  "invalid --seed '%s' (expected a "
					  "non-negative integer)",
					  seed);
	if (pattern) {
		if (!strcmp(pattern, "mixed"))
			o->pattern = KV_MEMTEST_MIXED;
		else if (!strcmp(pattern, "zero"))
			o->pattern = KV_MEMTEST_ZERO;
		else if (!strcmp(pattern, "random"))
			o->pattern = KV_MEMTEST_RANDOM;
		else
			return kv_cli_usage_error(
			    "memtest",
			    "invalid --pattern '%s' (expected mixed, "
			    "zero or random)",
			    pattern);
	}
	o->print_digest = print_digest != NULL;
	return KV_EXIT_OK;
}

static const char *pattern_name(enum kv_memtest_pattern p)
{
	switch (p) {
	case KV_MEMTEST_ZERO:
		return "zero";
	case KV_MEMTEST_RANDOM:
		return "random";
	default:
		return "mixed";
	}
}

/* --- source --- */

struct memtest_source {
	struct memtest_opts *opts;
	struct kv_memtest_region region;
	struct kv_soft_tracker *tracker;
	struct kv_memtest_dirtier dirtier;
	struct kv_ram_state *rs;
	struct kv_savevm *sv;
	struct kv_migration *mig;
	struct kv_stream *stream;
	struct memtest_digest digest;
	enum kv_mig_status last_status;
	uint64_t last_pass;
	struct sigwatch sig;
};

static int source_stop_vm(void *opaque, struct kv_error *err)
{
	struct memtest_source *src = opaque;

	kv_memtest_dirtier_pause(&src->dirtier);
	return 0;
}

static void source_resume_vm(void *opaque)
{
	struct memtest_source *src = opaque;

	kv_memtest_dirtier_resume(&src->dirtier);
}

static void source_progress(void *opaque, const struct kv_mig_progress *p)
{
	struct memtest_source *src = opaque;

	/* The engine calls at every status change (with the pass still in
	 * progress) and at the end of every pass (status unchanged). */
	if (p->status != src->last_status) {
		src->last_status = p->status;
		printf("memtest: status %s\n", kv_mig_status_name(p->status));
	} else if (p->pass > src->last_pass) {
		src->last_pass = p->pass;
		printf("memtest: pass %" PRIu64 ": transferred %.1f MiB, "
		       "remaining %.1f MiB, bandwidth %.1f MiB/s, expected "
		       "downtime %.0f ms, pages %" PRIu64 ", elapsed %" PRId64
		       " ms\n",
		       p->pass, p->transferred / MIB, p->remaining / MIB,
		       p->bandwidth / MIB, p->expected_downtime_ms,
		       p->pass_pages, p->elapsed_ms);
	}
	fflush(stdout);
}

static void print_digest_line(const char *what,
			      const struct kv_memtest_region *r)
{
	struct kv_error err = {0};
	uint8_t hash[16];
	char hex[33];

	if (kv_memtest_digest(r->blocks, r->nblocks, hash, &err) < 0) {
		fprintf(stderr, "memtest: error: %s\n", err.msg);
		return;
	}
	kv_cli_hex(hash, 16, hex);
	printf("memtest: %s %s\n", what, hex);
}

static void print_summary(const struct kv_mig_stats *st)
{
	uint64_t n = st->passes < 64 ? st->passes : 64;

	printf("memtest: summary: status %s\n", kv_mig_status_name(st->status));
	printf("  total time      %" PRId64 " ms\n", st->total_time_ms);
	printf("  setup time      %" PRId64 " ms\n", st->setup_time_ms);
	printf("  downtime        %" PRId64 " ms\n", st->downtime_ms);
	printf("  transferred     %.1f MiB (%" PRIu64 " bytes)\n",
	       st->transferred / MIB, st->transferred);
	printf("  bandwidth       %.1f MiB/s (last pass)\n",
	       st->bandwidth / MIB);
	printf("  zero pages      %" PRIu64 "\n", st->zero_pages);
	printf("  normal pages    %" PRIu64 "\n", st->normal_pages);
	printf("  passes          %" PRIu64 "\n", st->passes);
	printf("  pages per pass ");
	for (uint64_t i = 0; i < n; i++)
		printf(" %" PRIu64, st->pages_per_pass[i]);
	printf("%s\n", st->passes > n ? " ..." : "");
}

static int source_build(struct memtest_source *src, struct kv_error *err)
{
	struct memtest_opts *o = src->opts;
	uint64_t lengths[KV_MEMTEST_MAX_BLOCKS];
	struct kv_mig_params params;
	struct kv_mig_hooks hooks = {
	    .stop_vm = source_stop_vm,
	    .resume_vm = source_resume_vm,
	    .progress = source_progress,
	    .opaque = src,
	};
	int rc;

	src->rs = kv_ram_new();
	src->sv = kv_savevm_new(MEMTEST_MACHINE);
	if (!src->rs || !src->sv)
		return kv_error_set(err, -ENOMEM,
				    "no memory for the migration");
	for (size_t i = 0; i < src->region.nblocks; i++) {
		struct kv_memtest_block *b = &src->region.blocks[i];

		lengths[i] = b->length;
		rc = kv_ram_add_block(src->rs, b->idstr, b->host, b->length,
				      err);
		if (rc < 0)
			return rc;
	}
	src->tracker = kv_soft_tracker_new(lengths, src->region.nblocks);
	if (!src->tracker)
		return kv_error_set(err, -ENOMEM, "no memory for the tracker");
	kv_ram_set_tracker(src->rs, kv_soft_tracker_iface(src->tracker));
	rc = kv_ram_register(src->rs, src->sv, err);
	if (rc < 0)
		return rc;
	src->digest.blocks = src->region.blocks;
	src->digest.nblocks = &src->region.nblocks;
	rc = kv_savevm_register_device(src->sv, "memtest/digest", 0,
				       &digest_vmsd, KV_PRI_DEVICE,
				       &src->digest, err);
	if (rc < 0)
		return rc;

	kv_mig_params_default(&params);
	if (o->has_downtime)
		params.downtime_limit_ms = o->downtime_ms;
	params.max_bandwidth = o->max_bandwidth;
	params.converge_timeout_ms = o->timeout_s * 1000;
	src->mig = kv_mig_new(src->sv, src->rs, &params, &hooks);
	if (!src->mig)
		return kv_error_set(err, -ENOMEM,
				    "no memory for the migration");
	return 0;
}

static void source_teardown(struct memtest_source *src)
{
	kv_memtest_dirtier_stop(&src->dirtier);
	sigwatch_set(&src->sig, NULL, NULL, NULL);
	sigwatch_stop(&src->sig);
	if (src->stream)
		kv_stream_close(src->stream);
	if (src->mig)
		kv_mig_free(src->mig);
	if (src->sv)
		kv_savevm_free(src->sv);
	if (src->rs)
		kv_ram_free(src->rs);
	if (src->tracker)
		kv_soft_tracker_free(src->tracker);
	kv_memtest_region_unmap(&src->region);
}

/* Say how it ended; returns the exit code. */
static int source_report(struct memtest_source *src, int rc,
			 const struct kv_error *err, bool return_path)
{
	struct kv_mig_stats st;
	char hex[33];

	kv_mig_get_stats(src->mig, &st);
	print_summary(&st);
	if (st.status == KV_MIG_CANCELLED ||
	    (rc < 0 && sigwatch_signo(&src->sig))) {
		printf("memtest: cancelled\n");
		print_digest_line("source digest", &src->region);
		return KV_EXIT_FAILURE;
	}
	if (rc < 0) {
		printf("memtest: migration failed: %s\n",
		       err->msg[0] ? err->msg : "unknown error");
		return KV_EXIT_FAILURE;
	}
	kv_cli_hex(src->digest.hash, 16, hex);
	if (return_path)
		printf("memtest: completed: destination verified digest %s, "
		       "%.0f MiB\n",
		       hex, src->region.total / MIB);
	else
		printf("memtest: saved %.0f MiB to %s, digest %s\n",
		       src->region.total / MIB, src->opts->to, hex);
	return KV_EXIT_OK;
}

static int run_source(struct memtest_opts *o)
{
	struct memtest_source src = {.opts = o};
	struct kv_error err = {0};
	struct kv_chan *chan;
	bool return_path;
	int64_t t0;
	int rc;

	if (sigwatch_start(&src.sig, &err) < 0)
		goto fail;
	if (kv_memtest_region_map(&src.region, o->size, o->blocks, &err) < 0)
		goto fail;
	t0 = kv_now_ns();
	kv_memtest_region_fill(&src.region, o->pattern, o->seed);
	printf("memtest: source: %.0f MiB in %zu block(s), %s pages, filled "
	       "in %.0f ms\n",
	       src.region.total / MIB, src.region.nblocks,
	       pattern_name(o->pattern), (kv_now_ns() - t0) / 1e6);
	if (o->print_digest)
		print_digest_line("source digest", &src.region);
	fflush(stdout);
	if (source_build(&src, &err) < 0)
		goto fail;
	sigwatch_set(&src.sig, src.mig, NULL, NULL);
	if (sigwatch_signo(&src.sig)) {
		printf("memtest: cancelled\n");
		print_digest_line("source digest", &src.region);
		source_teardown(&src);
		return KV_EXIT_FAILURE;
	}

	printf("memtest: migrating to %s (dirty rate %.1f MiB/s)\n", o->to,
	       o->dirty_rate_mib);
	fflush(stdout);
	chan = kv_chan_connect(o->to, &err);
	if (!chan)
		goto fail;
	return_path = chan->is_socket;
	src.stream = kv_stream_new(chan, KV_STREAM_WRITE);
	if (!src.stream) {
		kv_chan_close(chan);
		kv_error_set(&err, -ENOMEM, "no memory for the stream");
		goto fail;
	}
	if (o->dirty_rate_mib > 0 &&
	    kv_memtest_dirtier_start(&src.dirtier, &src.region, src.tracker,
				     o->dirty_rate_mib, &err) < 0)
		goto fail;

	rc = kv_mig_run(src.mig, src.stream, &err);
	/* The digest printed after a cancel must be of quiet memory. */
	kv_memtest_dirtier_stop(&src.dirtier);
	rc = source_report(&src, rc, &err, return_path);
	fflush(stdout);
	source_teardown(&src);
	return rc;

fail:
	fprintf(stderr, "memtest: error: %s\n", err.msg);
	source_teardown(&src);
	return KV_EXIT_FAILURE;
}

/* --- destination --- */

struct memtest_dest {
	struct memtest_opts *opts;
	pthread_mutex_t lock; /* the allocator may run on a loader thread */
	struct kv_memtest_block blocks[KV_MEMTEST_MAX_BLOCKS];
	size_t nblocks;
	uint64_t total;
	struct memtest_digest digest;
	struct sigwatch sig;
};

static void *dest_alloc(void *opaque, const char *idstr, uint64_t length,
			struct kv_error *err)
{
	struct memtest_dest *d = opaque;
	struct kv_memtest_block *b;
	void *p;

	pthread_mutex_lock(&d->lock);
	if (d->nblocks == KV_MEMTEST_MAX_BLOCKS) {
		pthread_mutex_unlock(&d->lock);
		kv_error_set(err, -ENOSPC,
			     "block '%s': memtest takes at most %d blocks",
			     idstr, KV_MEMTEST_MAX_BLOCKS);
		return NULL;
	}
	p = mmap(NULL, length, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED) {
		int e = -errno;

		pthread_mutex_unlock(&d->lock);
		kv_error_set_errno(
		    err, e, "cannot map %" PRIu64 " bytes for block '%s'",
		    length, idstr);
		return NULL;
	}
	madvise(p, length, MADV_HUGEPAGE);
	b = &d->blocks[d->nblocks++];
	snprintf(b->idstr, sizeof(b->idstr), "%s", idstr);
	b->host = p;
	b->length = length;
	d->total += length;
	pthread_mutex_unlock(&d->lock);
	return p;
}

static void dest_release_locked(struct memtest_dest *d, size_t i)
{
	munmap(d->blocks[i].host, d->blocks[i].length);
	d->total -= d->blocks[i].length;
	memmove(&d->blocks[i], &d->blocks[i + 1],
		(d->nblocks - i - 1) * sizeof(d->blocks[0]));
	d->nblocks--;
}

static void dest_release(void *opaque, void *host, uint64_t length)
{
	struct memtest_dest *d = opaque;

	pthread_mutex_lock(&d->lock);
	for (size_t i = 0; i < d->nblocks; i++) {
		if (d->blocks[i].host == host) {
			dest_release_locked(d, i);
			break;
		}
	}
	pthread_mutex_unlock(&d->lock);
}

static void dest_release_all(struct memtest_dest *d)
{
	pthread_mutex_lock(&d->lock);
	while (d->nblocks)
		dest_release_locked(d, d->nblocks - 1);
	pthread_mutex_unlock(&d->lock);
}

/* After a failed load the engine must have dropped every block it had us
 * create: say so, so that it can be checked from outside. */
static void report_release(struct memtest_dest *d)
{
	size_t left;

	pthread_mutex_lock(&d->lock);
	left = d->nblocks;
	pthread_mutex_unlock(&d->lock);
	if (!left)
		printf("memtest: received memory released\n");
	else
		printf("memtest: warning: %zu block(s) still mapped after the "
		       "failed load; releasing them\n",
		       left);
}

static int dest_build(struct memtest_dest *d, struct kv_ram_state **rs,
		      struct kv_savevm **sv, struct kv_error *err)
{
	struct kv_ram_allocator a = {
	    .alloc = dest_alloc,
	    .release = dest_release,
	    .opaque = d,
	    .max_total = d->opts->max_size,
	};
	int rc;

	*rs = kv_ram_new();
	*sv = kv_savevm_new(MEMTEST_MACHINE);
	if (!*rs || !*sv)
		return kv_error_set(err, -ENOMEM,
				    "no memory for the migration");
	kv_ram_set_allocator(*rs, a);
	rc = kv_ram_register(*rs, *sv, err);
	if (rc < 0)
		return rc;
	d->digest.blocks = d->blocks;
	d->digest.nblocks = &d->nblocks;
	return kv_savevm_register_device(*sv, "memtest/digest", 0, &digest_vmsd,
					 KV_PRI_DEVICE, &d->digest, err);
}

static int run_dest(struct memtest_opts *o)
{
	struct memtest_dest d = {.opts = o};
	struct kv_error err = {0};
	struct kv_listener *l = NULL;
	struct kv_stream *s = NULL;
	struct kv_ram_state *rs = NULL;
	struct kv_savevm *sv = NULL;
	struct kv_ram_stats rst = {0};
	struct kv_chan *chan;
	int64_t t0 = 0, ms;
	int rc = -1;
	char hex[33];

	pthread_mutex_init(&d.lock, NULL);
	if (sigwatch_start(&d.sig, &err) < 0)
		goto out;
	if (dest_build(&d, &rs, &sv, &err) < 0)
		goto out;
	l = kv_listener_open(o->incoming, &err);
	if (!l) {
		goto out;
	}
	printf("memtest: %s %s\n",
	       strncmp(o->incoming, "file:", 5) ? "listening on" : "reading",
	       kv_listener_uri(l));
	fflush(stdout);
	sigwatch_set(&d.sig, NULL, NULL, l);
	chan = kv_listener_accept(l, &err);
	if (!chan) {
		goto out;
	}
	s = kv_stream_new(chan, KV_STREAM_READ);
	if (!s) {
		kv_chan_close(chan);
		kv_error_set(&err, -ENOMEM, "no memory for the stream");
		goto out;
	}
	sigwatch_set(&d.sig, NULL, s, l);
	printf("memtest: incoming migration from %s\n", chan->name);
	fflush(stdout);
	t0 = kv_now_ns();
	rc = kv_mig_incoming(sv, s, &err);
	if (rc == 0 && !d.digest.verified) {
		rc = kv_error_set(&err, -EIO,
				  "the stream carried no memtest/digest "
				  "section: nothing was verified");
	}
	kv_ram_get_stats(rs, &rst);
	if (rc < 0)
		report_release(&d);

out:
	ms = t0 ? (kv_now_ns() - t0) / 1000000 : 0;
	sigwatch_set(&d.sig, NULL, NULL, NULL);
	if (rc == 0) {
		kv_cli_hex(d.digest.hash, 16, hex);
		printf("memtest: loaded in %" PRId64 " ms: zero pages %" PRIu64
		       ", normal pages %" PRIu64 "\n",
		       ms, rst.zero_pages, rst.normal_pages);
		printf("memtest: digest OK (%s), %.0f MiB\n", hex,
		       d.total / MIB);
	} else {
		if (sigwatch_signo(&d.sig))
			printf("memtest: interrupted by %s\n",
			       signal_name(sigwatch_signo(&d.sig)));
		fprintf(stderr, "memtest: incoming migration failed: %s\n",
			err.msg[0] ? err.msg : "unknown error");
	}
	fflush(stdout);
	sigwatch_stop(&d.sig);
	if (s)
		kv_stream_close(s);
	if (l)
		kv_listener_close(l);
	if (sv)
		kv_savevm_free(sv);
	if (rs)
		kv_ram_free(rs);
	/* Whatever the engine did not hand back: the memory goes now. */
	dest_release_all(&d);
	pthread_mutex_destroy(&d.lock);
	return rc == 0 ? KV_EXIT_OK : KV_EXIT_FAILURE;
}

int kv_cmd_memtest(int argc, char **argv)
{
	struct memtest_opts o;
	bool help;
	int rc;

	rc = parse_opts(argc, argv, &o, &help);
	if (rc)
		return rc;
	if (help) {
		fputs(memtest_help, stdout);
		return KV_EXIT_OK;
	}
	/* Progress lines must reach a pipe as they happen. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	return o.incoming ? run_dest(&o) : run_source(&o);
}
