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
#include <jansson.h>
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
#include "base/units.h"
#include "cli/cli.h"
#include "cli/memtest_workload.h"
#include "cli/option_args.h"
#include "io/channel.h"
#include "io/stream.h"
#include "migration/incoming.h"
#include "migration/migration.h"
#include "migration/ram/ram.h"
#include "migration/savevm/savevm.h"
#include "migration/dirty/soft_tracker.h"
#include "migration/savevm/vmstate.h"

#define MEMTEST_MACHINE "kvmig-memtest"

static const char memtest_help[] =
    "Usage:\n"
    "  kvmig memtest --size SIZE --to URI [OPTIONS]     (source)\n"
    "  kvmig memtest --incoming URI [OPTIONS]           (destination)\n"
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
    "  --compress MODE        pages on the main stream: off, auto (default:\n"
    "                         zstd while the link is the bottleneck and it\n"
    "                         pays) or always (kvmig's x-compress)\n"
    "\n"
    "Destination options:\n"
    "  --incoming URI         listen on URI (or read file:PATH) and load\n"
    "  --size SIZE            pre-allocate the region before listening, as\n"
    "                         a VMM's destination owns its RAM (QEMU's\n"
    "                         -mem-prealloc): blocks named and split as the\n"
    "                         source's, every page faulted in; the stream\n"
    "                         must announce exactly these blocks\n"
    "  --blocks N             with --size: the number of blocks (default 1)\n"
    "  --max-size SIZE        without --size, blocks are created as the\n"
    "                         stream announces them: refuse streams\n"
    "                         announcing more RAM than this (default 64G)\n"
    "\n"
    "Both sides:\n"
    "  --multifd-channels N   send the pages over N extra connections to\n"
    "                         the same URI, a thread each (QEMU's multifd;\n"
    "                         give the same N on both sides; not file:)\n"
    "  --multifd-compression M  none (default), zlib, zstd or lz4: the\n"
    "                         same on both sides\n"
    "  --json                 print the summary as one JSON object on a\n"
    "                         line of its own instead of the table\n"
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
	uint64_t multifd_channels; /* 0: off */
	enum kv_mfd_method multifd_method;
	enum kv_ram_compress compress;
	uint64_t timeout_s;
	uint64_t blocks;
	enum kv_memtest_pattern pattern;
	uint64_t seed;
	bool print_digest;
	uint64_t max_size;
	bool json;
};

/* The "memtest/digest" device. Only region_size and hash go on the wire. */
struct memtest_digest {
	uint64_t region_size;
	uint8_t hash[16];
	const struct kv_memtest_block *blocks; /* what to hash */
	const size_t *nblocks;
	int64_t digest_ns; /* how long the last hash took */
	bool verified;	   /* destination: post_load matched */
	bool seen;	   /* destination: the section arrived */
};

/* --- the signal watcher --- */

struct sigwatch {
	int sfd;
	int stop_pipe[2];
	pthread_t thread;
	bool running;
	pthread_mutex_t lock; /* guards everything below */
	struct kv_migration *mig; /* source */
	struct kv_incoming *in;	  /* destination */
	int signo; /* 0 until a signal arrived */
};

static void sigwatch_act(struct sigwatch *w)
{
	if (w->mig)
		kv_mig_cancel(w->mig);
	if (w->in)
		kv_incoming_abort(w->in);
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
			 struct kv_incoming *in)
{
	pthread_mutex_lock(&w->lock);
	w->mig = mig;
	w->in = in;
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

/* The digest runs while the workload is stopped (source) or after the load
 * (destination), when the migration itself leaves the CPUs idle. */
static size_t digest_threads(void)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);

	return cpus < 1 ? 1 : cpus > 4 ? 4 : (size_t)cpus;
}

static int digest_pre_save(void *opaque, struct kv_error *err)
{
	struct memtest_digest *d = opaque;

	int64_t t0 = kv_now_ns();
	int rc;

	d->region_size = 0;
	for (size_t i = 0; i < *d->nblocks; i++)
		d->region_size += d->blocks[i].length;
	rc = kv_memtest_digest(d->blocks, *d->nblocks, digest_threads(),
			       d->hash, err);
	d->digest_ns = kv_now_ns() - t0;
	return rc;
}

static int digest_post_load(void *opaque, int version_id, struct kv_error *err)
{
	struct memtest_digest *d = opaque;
	char src_hex[33], dst_hex[33];
	uint8_t local[16];
	uint64_t size = 0;
	int64_t t0;
	int rc;

	d->seen = true;
	for (size_t i = 0; i < *d->nblocks; i++)
		size += d->blocks[i].length;
	if (size != d->region_size)
		return kv_error_set(err, -EIO,
				    "region size mismatch: source %" PRIu64
				    " bytes, destination %" PRIu64 " bytes",
				    d->region_size, size);
	t0 = kv_now_ns();
	rc = kv_memtest_digest(d->blocks, *d->nblocks, digest_threads(), local,
			       err);
	d->digest_ns = kv_now_ns() - t0;
	if (rc < 0)
		return rc;
	if (memcmp(local, d->hash, sizeof(local))) {
		kv_cli_hex(d->hash, 16, src_hex);
		kv_cli_hex(local, 16, dst_hex);
		return kv_error_set(err, -EIO,
				    "digest mismatch: source %s, destination %s",
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

/* --as VALUE for the options-table row name (same parsing, range and
 * message as `kvmig set`); *out is left alone when text is NULL. */
static int table_opt_as(const char *as, const char *name, const char *text,
			uint64_t *out)
{
	const struct kv_mig_option *row = kv_mig_param_find(name);
	struct kv_error err = {0};
	struct kv_mig_value v;

	if (!text)
		return KV_EXIT_OK;
	if (kv_cli_mig_value(row, text, &v, &err) < 0)
		return kv_cli_usage_error("memtest", "invalid --%s '%s': %s", as, text, err.msg);
	*out = v.u;
	return KV_EXIT_OK;
}

static int table_opt(const char *name, const char *text, uint64_t *out)
{
	return table_opt_as(name, name, text, out);
}

static int parse_opts(int argc, char **argv, struct memtest_opts *o, bool *help)
{
	const char *size = NULL, *rate = NULL, *downtime = NULL, *bw = NULL,
		   *timeout = NULL, *blocks = NULL, *pattern = NULL,
		   *seed = NULL, *print_digest = NULL, *max_size = NULL,
		   *json = NULL, *mfd_chans = NULL, *mfd_comp = NULL,
		   *compress = NULL;
	uint64_t v = KV_MFD_METHOD_NONE;
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
	    {"json", false, &json},
	    {"multifd-channels", true, &mfd_chans},
	    {"multifd-compression", true, &mfd_comp},
	    {"compress", true, &compress},
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
		return kv_cli_usage_error("memtest", "give exactly one of --to URI (source) and --incoming URI (destination)");
	if (o->incoming && (rate || downtime || bw || timeout || pattern ||
			    seed || print_digest || compress))
		return kv_cli_usage_error("memtest",
					  "--incoming takes only --size, --blocks, --max-size and --json; the workload comes from the source");
	if (o->incoming && blocks && !size)
		return kv_cli_usage_error("memtest",
					  "--blocks on the destination needs --size (pre-allocated blocks)");
	if (o->incoming && size && max_size)
		return kv_cli_usage_error("memtest",
					  "--max-size limits blocks created on demand; with --size the destination takes exactly SIZE");
	if (o->to && max_size)
		return kv_cli_usage_error("memtest",
					  "--max-size is a destination option");
	if (o->to && !size)
		return kv_cli_usage_error("memtest", "--to needs --size");
	if (size && (!kv_cli_parse_size(size, &o->size) || !o->size))
		return kv_cli_usage_error("memtest",
					  "invalid --size '%s' (expected a size such as 64M or 1G)",
					  size);
	if (max_size && !kv_cli_parse_size(max_size, &o->max_size))
		return kv_cli_usage_error("memtest",
					  "invalid --max-size '%s' (expected a size such as 64M or 1G)",
					  max_size);
	if (rate && !kv_cli_parse_double(rate, &o->dirty_rate_mib))
		return kv_cli_usage_error("memtest",
					  "invalid --dirty-rate '%s' (expected MiB/s, a number such as 64)",
					  rate);
	rc = table_opt("downtime-limit", downtime, &o->downtime_ms);
	if (!rc)
		rc = table_opt("max-bandwidth", bw, &o->max_bandwidth);
	if (rc)
		return rc;
	o->has_downtime = downtime != NULL;
	if (timeout && !kv_cli_parse_u64(timeout, &o->timeout_s))
		return kv_cli_usage_error("memtest",
					  "invalid --timeout '%s' (expected seconds)",
					  timeout);
	if (blocks && (!kv_cli_parse_u64(blocks, &o->blocks) || !o->blocks ||
		       o->blocks > KV_MEMTEST_MAX_BLOCKS))
		return kv_cli_usage_error("memtest",
					  "invalid --blocks '%s' (expected 1 to %d)",
					  blocks, KV_MEMTEST_MAX_BLOCKS);
	if (seed && !kv_cli_parse_u64(seed, &o->seed))
		return kv_cli_usage_error("memtest",
					  "invalid --seed '%s' (expected a non-negative integer)",
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
			    "invalid --pattern '%s' (expected mixed, zero or random)",
			    pattern);
	}
	rc = table_opt("multifd-channels", mfd_chans, &o->multifd_channels);
	if (!rc)
		rc = table_opt("multifd-compression", mfd_comp, &v);
	o->multifd_method = (enum kv_mfd_method)v;
	v = KV_RAM_COMPRESS_AUTO;
	/* --compress is kvmig's x-compress parameter. */
	if (!rc)
		rc = table_opt_as("compress", "x-compress", compress, &v);
	o->compress = (enum kv_ram_compress)v;
	if (rc)
		return rc;
	if (mfd_comp && !mfd_chans)
		return kv_cli_usage_error("memtest",
					  "--multifd-compression needs --multifd-channels");
	if (mfd_chans && !strncmp(o->to ? o->to : o->incoming, "file:", 5))
		return kv_cli_usage_error("memtest",
					  "multifd needs a socket URI (tcp: or unix:), not file:");
	o->print_digest = print_digest != NULL;
	o->json = json != NULL;
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
		       p->pass, p->transferred / KV_MiB_F, p->remaining / KV_MiB_F,
		       p->bandwidth / KV_MiB_F, p->expected_downtime_ms,
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

	if (kv_memtest_digest(r->blocks, r->nblocks, digest_threads(), hash,
			      &err) < 0) {
		fprintf(stderr, "memtest: error: %s\n", err.msg);
		return;
	}
	kv_cli_hex(hash, 16, hex);
	printf("memtest: %s %s\n", what, hex);
}

/* One JSON object on one line, for scripts (bench/run.sh). */
static void print_json(json_t *o)
{
	char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER |
				       JSON_REAL_PRECISION(10));

	if (text)
		printf("%s\n", text);
	else
		fprintf(stderr, "memtest: error: cannot format the summary\n");
	free(text);
	json_decref(o);
}

static json_t *json_ms(int64_t ns)
{
	return json_real((double)ns / 1e6);
}

static void print_source_json(const struct kv_mig_stats *st,
			      const struct memtest_source *src,
			      const char *error)
{
	uint64_t n = st->passes < 64 ? st->passes : 64;
	json_t *o = json_object(), *pp = json_array();
	char hex[33];

	for (uint64_t i = 0; i < n; i++)
		json_array_append_new(
		    pp, json_integer((json_int_t)st->pages_per_pass[i]));
	kv_cli_hex(src->digest.hash, 16, hex);
	json_object_set_new(o, "role", json_string("source"));
	json_object_set_new(o, "status",
			    json_string(kv_mig_status_name(st->status)));
	json_object_set_new(o, "size",
			    json_integer((json_int_t)src->region.total));
	json_object_set_new(o, "blocks",
			    json_integer((json_int_t)src->region.nblocks));
	json_object_set_new(o, "total_ms", json_integer(st->total_time_ms));
	json_object_set_new(o, "setup_ms", json_integer(st->setup_time_ms));
	json_object_set_new(o, "downtime_ms", json_integer(st->downtime_ms));
	json_object_set_new(o, "digest_ms", json_ms(src->digest.digest_ns));
	json_object_set_new(o, "transferred",
			    json_integer((json_int_t)st->transferred));
	json_object_set_new(o, "bandwidth", json_real(st->bandwidth));
	json_object_set_new(o, "zero_pages",
			    json_integer((json_int_t)st->zero_pages));
	json_object_set_new(o, "normal_pages",
			    json_integer((json_int_t)st->normal_pages));
	json_object_set_new(o, "passes", json_integer((json_int_t)st->passes));
	json_object_set_new(o, "pages_per_pass", pp);
	json_object_set_new(o, "compressed_pages",
			    json_integer((json_int_t)st->compress.pages));
	json_object_set_new(o, "compressed_bytes",
			    json_integer(
				(json_int_t)st->compress.compressed_size));
	json_object_set_new(o, "digest", json_string(hex));
	json_object_set_new(o, "error",
			    error ? json_string(error) : json_null());
	print_json(o);
}

static void print_summary(const struct kv_mig_stats *st, int64_t digest_ns)
{
	uint64_t n = st->passes < 64 ? st->passes : 64;

	printf("memtest: summary: status %s\n", kv_mig_status_name(st->status));
	printf("  total time      %" PRId64 " ms\n", st->total_time_ms);
	printf("  setup time      %" PRId64 " ms\n", st->setup_time_ms);
	printf("  downtime        %" PRId64 " ms\n", st->downtime_ms);
	printf("  digest          %.0f ms (verification, included in "
	       "downtime)\n",
	       digest_ns / 1e6);
	printf("  transferred     %.1f MiB (%" PRIu64 " bytes)\n",
	       st->transferred / KV_MiB_F, st->transferred);
	printf("  bandwidth       %.1f MiB/s (last pass)\n",
	       st->bandwidth / KV_MiB_F);
	printf("  zero pages      %" PRIu64 "\n", st->zero_pages);
	printf("  normal pages    %" PRIu64 "\n", st->normal_pages);
	printf("  passes          %" PRIu64 "\n", st->passes);
	if (st->compress.pages)
		printf("  compressed      %" PRIu64 " pages in %.1f MiB "
		       "(%.1fx, x-compress %s)\n",
		       st->compress.pages, st->compress.compressed_size / KV_MiB_F,
		       st->compress.compression_rate,
		       kv_ram_compress_name(st->compress.mode));
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
	params.multifd_channels = (unsigned)o->multifd_channels;
	params.multifd_method = o->multifd_method;
	params.compress = o->compress;
	src->mig = kv_mig_new(src->sv, src->rs, &params, &hooks);
	if (!src->mig)
		return kv_error_set(err, -ENOMEM,
				    "no memory for the migration");
	return 0;
}

static void source_teardown(struct memtest_source *src)
{
	kv_memtest_dirtier_stop(&src->dirtier);
	sigwatch_set(&src->sig, NULL, NULL);
	sigwatch_stop(&src->sig);
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
	if (src->opts->json)
		print_source_json(
		    &st, src,
		    rc < 0 ? (err->msg[0] ? err->msg : "unknown error") : NULL);
	else
		print_summary(&st, src->digest.digest_ns);
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
		       hex, src->region.total / KV_MiB_F);
	else
		printf("memtest: saved %.0f MiB to %s, digest %s\n",
		       src->region.total / KV_MiB_F, src->opts->to, hex);
	return KV_EXIT_OK;
}

static int run_source(struct memtest_opts *o)
{
	struct memtest_source src = {.opts = o};
	struct kv_error err = {0};
	struct kv_mig_stats st;
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
	       src.region.total / KV_MiB_F, src.region.nblocks,
	       pattern_name(o->pattern), (kv_now_ns() - t0) / 1e6);
	if (o->print_digest)
		print_digest_line("source digest", &src.region);
	fflush(stdout);
	if (source_build(&src, &err) < 0)
		goto fail;
	sigwatch_set(&src.sig, src.mig, NULL);
	if (sigwatch_signo(&src.sig)) {
		printf("memtest: cancelled\n");
		print_digest_line("source digest", &src.region);
		source_teardown(&src);
		return KV_EXIT_FAILURE;
	}

	printf("memtest: migrating to %s (dirty rate %.1f MiB/s)\n", o->to,
	       o->dirty_rate_mib);
	fflush(stdout);
	if (o->dirty_rate_mib > 0 &&
	    kv_memtest_dirtier_start(&src.dirtier, &src.region, src.tracker,
				     o->dirty_rate_mib, &err) < 0)
		goto fail;

	rc = kv_mig_run_uri(src.mig, o->to, &err);
	/* The digest printed after a cancel must be of quiet memory. */
	kv_memtest_dirtier_stop(&src.dirtier);
	kv_mig_get_stats(src.mig, &st);
	rc = source_report(&src, rc, &err, st.return_path);
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
	struct kv_memtest_region pre; /* --size: owned by us, not the engine */
	int64_t prealloc_ns;
	struct memtest_digest digest;
	struct sigwatch sig;
	struct kv_incoming *in;
};

/* --size: the region, made and faulted in before anything listens. */
static int dest_prealloc(struct memtest_dest *d, struct kv_error *err)
{
	int64_t t0 = kv_now_ns();
	int rc;

	rc =
	    kv_memtest_region_map(&d->pre, d->opts->size, d->opts->blocks, err);
	if (rc < 0)
		return rc;
	rc = kv_memtest_region_prefault(&d->pre, 2, err);
	if (rc < 0)
		return rc;
	d->prealloc_ns = kv_now_ns() - t0;
	printf("memtest: destination: pre-allocated %.0f MiB in %zu "
	       "block(s) in %.0f ms\n",
	       d->pre.total / KV_MiB_F, d->pre.nblocks, d->prealloc_ns / 1e6);
	return 0;
}

/* A stream whose block list does not match pre-allocated blocks fails in
 * the RAM loader's MEM_SIZE record; say what this side has. */
static void dest_explain_mismatch(const struct memtest_dest *d,
				  const struct kv_error *err)
{
	if (!d->pre.nblocks || !strstr(err->msg, "MEM_SIZE"))
		return;
	fprintf(stderr,
		"memtest: this destination was pre-allocated with --size %" PRIu64 " (%.0f MiB) --blocks %zu (blocks '%s'..'%s'); the source must migrate the same --size and --blocks\n",
		d->pre.total, d->pre.total / KV_MiB_F, d->pre.nblocks,
		d->pre.blocks[0].idstr,
		d->pre.blocks[d->pre.nblocks - 1].idstr);
}

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
	if (d->pre.nblocks) {
		/* Fixed blocks, as in a VMM: the loader checks the stream's
		 * block list against them and creates nothing. */
		for (size_t i = 0; i < d->pre.nblocks; i++) {
			rc = kv_ram_add_block(*rs, d->pre.blocks[i].idstr,
					      d->pre.blocks[i].host,
					      d->pre.blocks[i].length, err);
			if (rc < 0)
				return rc;
		}
		d->digest.blocks = d->pre.blocks;
		d->digest.nblocks = &d->pre.nblocks;
	} else {
		kv_ram_set_allocator(*rs, a);
		d->digest.blocks = d->blocks;
		d->digest.nblocks = &d->nblocks;
	}
	rc = kv_ram_register(*rs, *sv, err);
	if (rc < 0)
		return rc;
	return kv_savevm_register_device(*sv, "memtest/digest", 0, &digest_vmsd,
					 KV_PRI_DEVICE, &d->digest, err);
}

static void print_dest_json(const struct memtest_dest *d, int rc,
			    const struct kv_error *err,
			    const struct kv_ram_stats *rst, int64_t load_ns,
			    uint64_t transferred)
{
	json_t *o = json_object();
	uint64_t size = d->pre.nblocks ? d->pre.total : d->total;
	char hex[33];

	kv_cli_hex(d->digest.hash, 16, hex);
	json_object_set_new(o, "role", json_string("destination"));
	json_object_set_new(o, "status",
			    json_string(rc == 0 ? "completed" : "failed"));
	json_object_set_new(o, "size", json_integer((json_int_t)size));
	json_object_set_new(o, "preallocated", json_boolean(d->pre.nblocks));
	json_object_set_new(o, "prealloc_ms", json_ms(d->prealloc_ns));
	json_object_set_new(o, "load_ms", json_ms(load_ns));
	json_object_set_new(o, "digest_ms", json_ms(d->digest.digest_ns));
	json_object_set_new(o, "transferred",
			    json_integer((json_int_t)transferred));
	json_object_set_new(o, "zero_pages",
			    json_integer((json_int_t)rst->zero_pages));
	json_object_set_new(o, "normal_pages",
			    json_integer((json_int_t)rst->normal_pages));
	json_object_set_new(o, "digest_ok", json_boolean(d->digest.verified));
	json_object_set_new(o, "digest", json_string(hex));
	json_object_set_new(
	    o, "error",
	    rc == 0 ? json_null()
		    : json_string(err->msg[0] ? err->msg : "unknown error"));
	print_json(o);
}

static void dest_status(void *opaque, enum kv_in_status st)
{
	struct memtest_dest *d = opaque;
	struct kv_incoming_stats ist;

	if (st != KV_IN_ACTIVE)
		return;
	kv_incoming_get_stats(d->in, &ist);
	printf("memtest: incoming migration from %s\n", ist.peer);
	fflush(stdout);
}

/* The incoming object with memtest's settings. */
static int dest_incoming(struct memtest_dest *d, struct kv_ram_state *rs,
			 struct kv_savevm *sv, struct kv_error *err)
{
	struct kv_incoming_hooks hooks = {.status = dest_status, .opaque = d};
	struct kv_mig_params params;

	kv_mig_params_default(&params);
	params.multifd_channels = (unsigned)d->opts->multifd_channels;
	params.multifd_method = d->opts->multifd_method;
	d->in = kv_incoming_new(sv, rs, &params, &hooks);
	if (!d->in)
		return kv_error_set(err, -ENOMEM, "no memory for the incoming migration");
	return 0;
}

static int run_dest(struct memtest_opts *o)
{
	struct memtest_dest d = {.opts = o};
	struct kv_error err = {0};
	struct kv_ram_state *rs = NULL;
	struct kv_savevm *sv = NULL;
	struct kv_ram_stats rst = {0};
	struct kv_incoming_stats ist = {0};
	int rc = -1;
	char hex[33];

	pthread_mutex_init(&d.lock, NULL);
	if (sigwatch_start(&d.sig, &err) < 0)
		goto out;
	if (o->size && dest_prealloc(&d, &err) < 0)
		goto out;
	if (dest_build(&d, &rs, &sv, &err) < 0)
		goto out;
	if (dest_incoming(&d, rs, sv, &err) < 0)
		goto out;
	if (kv_incoming_listen(d.in, o->incoming, &err) < 0)
		goto out;
	printf("memtest: %s %s\n",
	       strncmp(o->incoming, "file:", 5) ? "listening on" : "reading",
	       kv_incoming_uri(d.in));
	fflush(stdout);
	sigwatch_set(&d.sig, NULL, d.in);
	rc = kv_incoming_run(d.in, &err);
	kv_incoming_get_stats(d.in, &ist);
	if (rc == 0 && !d.digest.verified) {
		rc = kv_error_set(&err, -EIO,
				  "the stream carried no memtest/digest section: nothing was verified");
	}
	kv_ram_get_stats(rs, &rst);
	if (rc < 0 && !d.pre.nblocks && ist.peer[0])
		report_release(&d);

out:
	sigwatch_set(&d.sig, NULL, NULL);
	if (rc == 0) {
		kv_cli_hex(d.digest.hash, 16, hex);
		printf("memtest: loaded in %.0f ms (digest %.0f ms): zero "
		       "pages %" PRIu64 ", normal pages %" PRIu64 "\n",
		       ist.load_ns / 1e6, d.digest.digest_ns / 1e6,
		       rst.zero_pages, rst.normal_pages);
		printf("memtest: digest OK (%s), %.0f MiB\n", hex,
		       (d.pre.nblocks ? d.pre.total : d.total) / KV_MiB_F);
	} else {
		if (sigwatch_signo(&d.sig))
			printf("memtest: interrupted by %s\n",
			       signal_name(sigwatch_signo(&d.sig)));
		fprintf(stderr, "memtest: incoming migration failed: %s\n",
			err.msg[0] ? err.msg : "unknown error");
		dest_explain_mismatch(&d, &err);
	}
	if (o->json)
		print_dest_json(&d, rc, &err, &rst, ist.load_ns,
				ist.transferred);
	fflush(stdout);
	sigwatch_stop(&d.sig);
	kv_incoming_free(d.in);
	if (sv)
		kv_savevm_free(sv);
	if (rs)
		kv_ram_free(rs);
	/* Whatever the engine did not hand back: the memory goes now. */
	dest_release_all(&d);
	if (d.pre.nblocks) {
		kv_memtest_region_unmap(&d.pre);
		if (rc < 0 && ist.peer[0])
			printf("memtest: received memory released\n");
	}
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
