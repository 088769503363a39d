/* SPDX-License-Identifier: MIT */
/*
 * The migration driver: the source's connection setup, phase loop and
 * state machine (the destination's side is incoming.c).
 *
 * State changes go through mig_set_status() only, a compare-and-swap
 * against the transition table below; kv_mig_cancel() may race the
 * migration thread and whichever CAS wins decides.
 *
 *   NONE -> SETUP -> ACTIVE -> DEVICE -> COMPLETED
 *     \        \        \         \
 *      `--------`--------`---------`--> CANCELLING -> CANCELLED
 *               \        \         \
 *                `--------`---------`-> FAILED
 *
 * plus CANCELLING -> COMPLETED when the destination confirmed (SHUT(0))
 * just before a cancel arrived: its answer is final, the source must not
 * resume. SETUP includes the connect (kv_mig_run_uri): a connection that
 * cannot be set up is SETUP -> FAILED; a cancel abandons the connect at
 * once.
 * Locking: `lock` guards `stream` (so cancel and bandwidth changes from
 * other threads never touch a stream the run has let go of) and `stats`.
 */
#include "base/units.h"
#include "migration/migration.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/log.h"
#include "base/rate_limit.h"
#include "migration/options.h"
#include "migration/return_path.h"
#include "migration/savevm/savevm.h"

/* After a stream error, how long to look for the destination's SHUT that
 * explains it. */
#define RP_EXPLAIN_TIMEOUT_MS 2000
/* How often a pass in progress refreshes the statistics and progress. */
#define PROGRESS_EVERY_NS (100 * 1000000LL)

/*
 * When to switch over. The downtime limit only says when switching is
 * allowed (pending <= bandwidth x limit, as QEMU); with QEMU's default of
 * 300 ms that is the first pass that leaves less than about 1 GB here,
 * while a few more short passes shrink the rest to what the guest dirties
 * in a few milliseconds. So past the limit the driver keeps iterating while
 * each pass leaves clearly less than the one before (pending below
 * SHRINK_NUM/SHRINK_DEN of the previous pass's), and switches as soon as
 * that stops, or when what is left is already tiny, or after
 * MAX_EXTRA_PASSES passes, or when the next pass would make the passes
 * past the limit take more than extra_pass_time_pct % of the time
 * migrated so far: on a slow link each extra pass costs real time and bytes (at
 * 1 Gbit/s, unbounded extra passes cost 26 % more bytes than QEMU for a
 * downtime already far below the limit).
 */
#define SHRINK_NUM	 3
#define SHRINK_DEN	 4
#define SMALL_PENDING	 (256 * 1024ULL)
#define MAX_EXTRA_PASSES 32

struct kv_migration {
	struct kv_savevm *sv;
	struct kv_ram_state *rs;
	struct kv_mfd_send *mfd; /* multifd channels, under lock */
	struct kv_mig_params params; /* limits: atomic access */
	struct kv_mig_hooks hooks;
	int status; /* enum kv_mig_status, atomic */

	pthread_mutex_t lock;
	struct kv_stream *stream; /* while kv_mig_run runs */
	struct kv_mig_stats stats;
	/* The RAM handler's counters are this run's: they outlive a
	 * migration (rs is the VM's) and restart only at its setup, so a
	 * run that never got there would show the previous run's pages. */
	bool ram_counted;

	/* Owned by the migration thread. */
	int64_t start_ns;
	uint64_t pass;
	double bandwidth;
	/* Page bytes per wire byte in the last pass (x-compress): what a
	 * byte of bandwidth is worth to the switch-over. */
	double wire_factor;
	struct kv_rp_reader *rp; /* the return path's reader, during a run */
	/* max-bandwidth: the main stream and every multifd channel. */
	struct kv_rate_limit rl;
	uint32_t ping; /* value of the last PING sent */
	/* Triggered by kv_mig_cancel: abandons a connect in progress. */
	struct kv_cancel *connect_cancel;
};

static const char *const status_names[] = {
    [KV_MIG_NONE] = "none",
    [KV_MIG_SETUP] = "setup",
    [KV_MIG_ACTIVE] = "active",
    [KV_MIG_DEVICE] = "device",
    [KV_MIG_COMPLETED] = "completed",
    [KV_MIG_FAILED] = "failed",
    [KV_MIG_CANCELLING] = "cancelling",
    [KV_MIG_CANCELLED] = "cancelled",
};

#define ST(s) (1U << (s))

static const unsigned int transitions[] = {
    [KV_MIG_NONE] = ST(KV_MIG_SETUP) | ST(KV_MIG_CANCELLING),
    [KV_MIG_SETUP] =
	ST(KV_MIG_ACTIVE) | ST(KV_MIG_FAILED) | ST(KV_MIG_CANCELLING),
    [KV_MIG_ACTIVE] =
	ST(KV_MIG_DEVICE) | ST(KV_MIG_FAILED) | ST(KV_MIG_CANCELLING),
    [KV_MIG_DEVICE] =
	ST(KV_MIG_COMPLETED) | ST(KV_MIG_FAILED) | ST(KV_MIG_CANCELLING),
    [KV_MIG_COMPLETED] = 0,
    [KV_MIG_FAILED] = 0,
    /* COMPLETED: a cancel that lost the race against the destination's
     * SHUT(0); the destination owns the workload then. */
    [KV_MIG_CANCELLING] = ST(KV_MIG_CANCELLED) | ST(KV_MIG_COMPLETED),
    [KV_MIG_CANCELLED] = 0,
};

const char *kv_mig_status_name(enum kv_mig_status st)
{
	if ((unsigned int)st >= sizeof(status_names) / sizeof(status_names[0]))
		return "unknown";
	return status_names[st];
}

void kv_mig_params_default(struct kv_mig_params *p)
{
	struct kv_mig_settings s;

	kv_mig_settings_default(&s);
	kv_mig_settings_params(&s, p);
}

struct kv_migration *kv_mig_new(struct kv_savevm *sv, struct kv_ram_state *rs,
				const struct kv_mig_params *params,
				const struct kv_mig_hooks *hooks)
{
	struct kv_migration *m;

	if (!sv || !hooks || !hooks->stop_vm || !hooks->resume_vm)
		return NULL;
	m = calloc(1, sizeof(*m));
	if (!m)
		return NULL;
	m->sv = sv;
	m->rs = rs;
	if (params)
		m->params = *params;
	else
		kv_mig_params_default(&m->params);
	m->hooks = *hooks;
	m->status = KV_MIG_NONE;
	m->connect_cancel = kv_cancel_new(NULL);
	if (!m->connect_cancel) {
		free(m);
		return NULL;
	}
	pthread_mutex_init(&m->lock, NULL);
	kv_rate_limit_init(&m->rl, m->params.max_bandwidth);
	return m;
}

void kv_mig_free(struct kv_migration *m)
{
	if (!m)
		return;
	kv_rate_limit_destroy(&m->rl);
	pthread_mutex_destroy(&m->lock);
	kv_cancel_free(m->connect_cancel);
	free(m);
}

enum kv_mig_status kv_mig_status(const struct kv_migration *m)
{
	return (enum kv_mig_status)__atomic_load_n(&m->status,
						   __ATOMIC_ACQUIRE);
}

static void report_progress(struct kv_migration *m, uint64_t remaining,
			    uint64_t pass_pages)
{
	struct kv_mig_progress p = {0};
	uint64_t total = 0;

	if (!m->hooks.progress)
		return;
	if (m->rs)
		for (size_t i = 0; i < kv_ram_block_count(m->rs); i++)
			total += kv_ram_block(m->rs, i)->length;
	pthread_mutex_lock(&m->lock);
	p.transferred = m->stats.transferred;
	pthread_mutex_unlock(&m->lock);
	p.status = kv_mig_status(m);
	p.pass = m->pass;
	p.remaining = remaining;
	p.total = total;
	p.bandwidth = m->bandwidth;
	p.expected_downtime_ms =
	    m->bandwidth > 0 ? (double)remaining * 1000.0 /
				   (m->bandwidth * m->wire_factor)
			     : 0;
	p.pass_pages = pass_pages;
	p.elapsed_ms = (kv_now_ns() - m->start_ns) / 1000000;
	m->hooks.progress(m->hooks.opaque, &p);
}

/* The one place a status changes. notify: called on the migration thread,
 * which is where the progress hook runs. */
static bool mig_set_status(struct kv_migration *m, enum kv_mig_status from,
			   enum kv_mig_status to, bool notify)
{
	int expected = (int)from;

	if (!(transitions[from] & ST(to)))
		return false;
	if (!__atomic_compare_exchange_n(&m->status, &expected, (int)to, false,
					 __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
		return false;
	pthread_mutex_lock(&m->lock);
	m->stats.status = to;
	pthread_mutex_unlock(&m->lock);
	if (notify)
		report_progress(m, m->rs ? kv_ram_pending_estimate(m->rs) : 0,
				0);
	return true;
}

static bool cancel_requested(const struct kv_migration *m)
{
	return kv_mig_status(m) == KV_MIG_CANCELLING;
}

void kv_mig_cancel(struct kv_migration *m)
{
	for (;;) {
		enum kv_mig_status st = kv_mig_status(m);

		if (!(transitions[st] & ST(KV_MIG_CANCELLING)))
			return; /* finished, or cancelling already */
		if (mig_set_status(m, st, KV_MIG_CANCELLING, false))
			break;
	}
	kv_cancel_trigger(m->connect_cancel);
	pthread_mutex_lock(&m->lock);
	if (m->stream)
		kv_stream_shutdown(m->stream);
	if (m->mfd)
		kv_mfd_send_cancel(m->mfd);
	pthread_mutex_unlock(&m->lock);
}

void kv_mig_set_downtime_limit(struct kv_migration *m, uint64_t ms)
{
	__atomic_store_n(&m->params.downtime_limit_ms, ms, __ATOMIC_RELAXED);
}

/* Bytes on the wire: the main stream and any multifd channels. */
static uint64_t transferred(const struct kv_migration *m,
			    struct kv_stream *s)
{
	return kv_stream_transferred(s) +
	       (m->rs ? kv_ram_multifd_bytes(m->rs) : 0);
}

void kv_mig_set_max_bandwidth(struct kv_migration *m, uint64_t bytes_per_sec)
{
	__atomic_store_n(&m->params.max_bandwidth, bytes_per_sec,
			 __ATOMIC_RELAXED);
	kv_rate_limit_set(&m->rl, bytes_per_sec);
}

void kv_mig_get_stats(const struct kv_migration *m, struct kv_mig_stats *st)
{
	struct kv_migration *mm = (struct kv_migration *)m;
	/* The status first: a FAILED one has its error stored already. */
	enum kv_mig_status status = kv_mig_status(m);
	bool ram_counted;

	pthread_mutex_lock(&mm->lock);
	*st = m->stats;
	ram_counted = m->ram_counted;
	pthread_mutex_unlock(&mm->lock);
	st->status = status;
	if (m->rs && ram_counted) {
		struct kv_ram_stats rst;

		kv_ram_get_stats(m->rs, &rst);
		st->zero_pages = rst.zero_pages;
		st->normal_pages = rst.normal_pages;
		st->passes = rst.dirty_sync_count;
		kv_ram_get_xbzrle_stats(m->rs, &st->xbzrle);
		kv_ram_get_compress_stats(m->rs, &st->compress);
	}
}

static void update_stats(struct kv_migration *m, struct kv_stream *s)
{
	uint64_t bytes = transferred(m, s);
	uint64_t mfd = m->rs ? kv_ram_multifd_bytes(m->rs) : 0;

	pthread_mutex_lock(&m->lock);
	m->stats.transferred = bytes;
	m->stats.multifd_bytes = mfd;
	m->stats.bandwidth = m->bandwidth;
	m->stats.total_time_ms = (kv_now_ns() - m->start_ns) / 1000000;
	pthread_mutex_unlock(&m->lock);
}

/* Pages the pass just ended sent, kept for the summary. */
static uint64_t record_pass_pages(struct kv_migration *m)
{
	struct kv_ram_stats rst;

	if (!m->rs || !m->ram_counted) /* written on this thread */
		return 0;
	kv_ram_get_stats(m->rs, &rst);
	pthread_mutex_lock(&m->lock);
	if (rst.dirty_sync_count >= 1 && rst.dirty_sync_count <= 64)
		m->stats.pages_per_pass[rst.dirty_sync_count - 1] =
		    rst.pass_pages;
	pthread_mutex_unlock(&m->lock);
	return rst.pass_pages;
}

/* bw: the last pass's bandwidth, or the current one's when none ended. */
static int not_converged(struct kv_migration *m, uint64_t pending,
			 uint64_t downtime_ms, double bw, struct kv_error *err)
{
	double allowed = bw * (double)downtime_ms / 1000.0;
	double needed_ms = bw > 0 ? (double)pending * 1000.0 / bw : 0;

	return kv_error_set(err, -ETIMEDOUT,
			    "migration did not converge within %llu ms: %.1f MiB still to send in pass %llu at %.1f MiB/s, and a downtime limit of %llu ms allows %.1f MiB at switch-over (about %.0f ms needed); raise the downtime limit or the bandwidth limit, or slow the workload's dirtying; the source keeps running",
			    (unsigned long long)m->params.converge_timeout_ms,
			    (double)pending / KV_MiB_F, (unsigned long long)m->pass,
			    bw / KV_MiB_F, (unsigned long long)downtime_ms,
			    allowed / KV_MiB_F, needed_ms);
}

/* What the switch-over can move per second: the measured bandwidth, or
 * what the user says is available for it (avail-switchover-bandwidth,
 * e.g. when the migration shares the link and precopy was capped). */
static double switchover_bandwidth(const struct kv_migration *m)
{
	uint64_t avail = __atomic_load_n(&m->params.avail_switchover_bw,
					 __ATOMIC_RELAXED);

	return (avail ? (double)avail : m->bandwidth) * m->wire_factor;
}

/* Whether to stop iterating: pending fits the downtime limit and more
 * passes would not shrink it much (see SHRINK_NUM). extra: passes run so
 * far past the limit. */
static bool time_to_switch(uint64_t pending, uint64_t prev_pending,
			   double threshold, unsigned int extra,
			   bool over_budget)
{
	if ((double)pending > threshold)
		return false;
	if (pending <= SMALL_PENDING || extra >= MAX_EXTRA_PASSES ||
	    over_budget)
		return true;
	/* prev_pending is UINT64_MAX before the first sync: doubles. */
	return (double)pending * SHRINK_DEN >=
	       (double)prev_pending * SHRINK_NUM;
}

/* Would one more pass past the limit (about pending / bandwidth) bring
 * the extra passes' time above extra_pass_time_pct % of the time so far?
 * Asked
 * from the second extra pass on: the first pass's bandwidth (bound by the
 * destination faulting its memory in) says little about later ones. */
static bool over_budget(const struct kv_migration *m, uint64_t pending,
			int64_t extra_ns, int64_t elapsed_ns)
{
	double next_ns =
	    m->bandwidth > 0
		? (double)pending * 1e9 / (m->bandwidth * m->wire_factor)
		: 0.0;

	return m->params.extra_pass_time_pct &&
	       ((double)extra_ns + next_ns) * 100.0 >
		   (double)elapsed_ns * m->params.extra_pass_time_pct;
}

/* auto-converge: after each sync, let the policy decide and apply a new
 * throttle. dirtied: what the pass left dirty (the bitmaps are empty
 * when a pass ends); sent: the pass's bytes. */
static int throttle_after_sync(struct kv_migration *m, struct kv_autoconv *ac,
			       uint64_t dirtied, uint64_t sent,
			       struct kv_error *err)
{
	unsigned before = kv_autoconv_pct(ac), pct;
	int ret;

	if (!m->params.auto_converge || !m->hooks.set_throttle)
		return 0;
	pct = kv_autoconv_note_sync(ac, kv_now_ns(), dirtied, sent);
	if (pct == before)
		return 0;
	ret = m->hooks.set_throttle(m->hooks.opaque, pct, err);
	if (ret < 0) {
		kv_error_prefix(err, "auto-converge: throttling to %u %%", pct);
		return ret;
	}
	kv_switch_log("auto-converge: throttle %u %%", pct);
	pthread_mutex_lock(&m->lock);
	m->stats.throttle_pct = pct;
	if (pct > m->stats.throttle_max_pct)
		m->stats.throttle_max_pct = pct;
	pthread_mutex_unlock(&m->lock);
	return 0;
}

/* The workload runs at full speed again (QEMU's cpu_throttle_stop). */
static void throttle_off(struct kv_migration *m)
{
	struct kv_error ignored = {0};

	if (!m->params.auto_converge || !m->hooks.set_throttle)
		return;
	/* stats.throttle_pct keeps the last value: what it took. */
	m->hooks.set_throttle(m->hooks.opaque, 0, &ignored);
}

/* With a return path: PING and wait for the PONG, so the pass is counted
 * as done once the destination has read it. The bandwidth is then what
 * the destination absorbs, and no backlog sits in socket buffers when the
 * workload stops (it would add to the downtime). */
static int wait_destination(struct kv_migration *m, struct kv_stream *s,
			    struct kv_error *err)
{
	int ret;

	if (!m->rp)
		return 0;
	ret = kv_savevm_save_ping(s, ++m->ping, err);
	if (ret < 0)
		return ret;
	ret = kv_rp_reader_wait_pong(m->rp, m->ping, m->params.rp_timeout_ms,
				     err);
	if (ret < 0)
		kv_error_prefix(err,
				"waiting for the destination to read pass %llu",
				(unsigned long long)m->pass);
	return ret;
}

/*
 * ACTIVE: iterate; at the end of every pass measure its bandwidth, sync
 * and decide (time_to_switch). Returns 0 when it is time to switch over.
 */
static int iterate_until_converged(struct kv_migration *m, struct kv_stream *s,
				   struct kv_error *err)
{
	int64_t active_start = kv_now_ns(), pass_start = active_start;
	uint64_t pass_bytes0 = transferred(m, s);
	uint64_t timeout_ms = m->params.converge_timeout_ms;
	uint64_t prev_pending = UINT64_MAX;
	int64_t last_report_ns = active_start, extra_ns = 0;
	unsigned int extra = 0;
	struct kv_autoconv ac;
	int ret;

	kv_autoconv_init(&ac, &m->params.throttle);
	/* The setup sync saw all of RAM dirty: not a period to judge. */
	kv_autoconv_note_sync(&ac, active_start, 0, 0);

	m->pass = 1;
	for (;;) {
		uint64_t pending, downtime_ms, pass_pages;
		int64_t now, pass_ns;
		double threshold;

		if (cancel_requested(m))
			return -ECANCELED;
		ret = kv_savevm_save_iterate(m->sv, s, err);
		if (ret < 0)
			return ret;
		now = kv_now_ns();
		/* Mid-pass: keep query-migrate and progress watchers current
		 * (bytes, pages, what is left of this pass). */
		if (ret == 0 && now - last_report_ns >= PROGRESS_EVERY_NS) {
			update_stats(m, s);
			report_progress(m, kv_savevm_pending_estimate(m->sv),
					0);
			last_report_ns = now;
		}
		if (ret == 1) {
			if (kv_stream_flush(s) < 0) {
				kv_stream_error_get(s, err);
				return kv_stream_error(s);
			}
			ret = wait_destination(m, s, err);
			if (ret < 0)
				return ret;
			now = kv_now_ns();
			pass_ns = now - pass_start;
			if (pass_ns < 1000000)
				pass_ns = 1000000;
			m->bandwidth =
			    (double)(transferred(m, s) - pass_bytes0) *
			    1e9 / (double)pass_ns;
			if (m->rs)
				m->wire_factor = kv_ram_wire_factor(m->rs);
			pass_pages = record_pass_pages(m);
			ret = kv_savevm_pending_exact(m->sv, &pending, err);
			if (ret < 0)
				return ret;
			kv_switch_log(
			    "pass %llu ended: %.1f ms, %llu pages, %.0f MiB/s; sync %.3f ms, %llu pages dirty",
			    (unsigned long long)m->pass, (double)pass_ns / 1e6,
			    (unsigned long long)pass_pages, m->bandwidth / KV_MiB_F,
			    (double)(kv_now_ns() - now) / 1e6,
			    (unsigned long long)(pending / KV_PAGE_SIZE));
			ret = throttle_after_sync(
			    m, &ac, pending, transferred(m, s) - pass_bytes0,
			    err);
			if (ret < 0)
				return ret;
			downtime_ms = __atomic_load_n(
			    &m->params.downtime_limit_ms, __ATOMIC_RELAXED);
			threshold = switchover_bandwidth(m) *
				    (double)downtime_ms / 1000.0;
			update_stats(m, s);
			report_progress(m, pending, pass_pages);
			if (extra)
				extra_ns += pass_ns;
			if (time_to_switch(pending, prev_pending, threshold,
					   extra,
					   extra &&
					       over_budget(m, pending, extra_ns,
							   now - active_start)))
				return 0;
			if ((double)pending <= threshold)
				extra++;
			prev_pending = pending;
			m->pass++;
			pass_start = now;
			pass_bytes0 = transferred(m, s);
		}
		if (timeout_ms &&
		    (uint64_t)(now - active_start) / 1000000 >= timeout_ms)
			return not_converged(
			    m, kv_savevm_pending_estimate(m->sv),
			    __atomic_load_n(&m->params.downtime_limit_ms,
					    __ATOMIC_RELAXED),
			    m->pass > 1
				? m->bandwidth
				: (double)(transferred(m, s) -
					   pass_bytes0) *
				      1e9 / (double)(now - pass_start + 1),
			    err);
	}
}

/* After a stream failure with a return path: if the destination said why
 * (it failed and answered SHUT(1)), say that instead of "broken pipe".
 * A stream cancelled with no cancel requested was shut down by the
 * return path's reader (or a multifd channel): the reader's verdict, if
 * it has one already, is then the whole story. */
static void explain_by_destination(struct kv_migration *m, struct kv_stream *s,
				   struct kv_error *err)
{
	bool shut_here = kv_stream_error(s) == -ECANCELED;
	struct kv_error rerr = {0};
	uint32_t status;
	int ret;

	ret = kv_rp_reader_wait_shut(
	    m->rp, shut_here ? 0 : RP_EXPLAIN_TIMEOUT_MS, &status, &rerr);
	if (ret == 0 && status == 0)
		return;
	if (ret < 0 && (!shut_here || ret == -ECANCELED || ret == -ETIMEDOUT))
		return;
	if (shut_here)
		kv_error_clear(err);
	if (ret < 0)
		kv_error_propagate(err, &rerr);
	else if (shut_here)
		kv_error_set(
		    err, -EREMOTEIO,
		    "the destination failed to load the migration stream (it answered SHUT with status %u; see its log)",
		    status);
	else
		kv_error_prefix(
		    err,
		    "the destination failed to load the migration stream (it answered SHUT with status %u; see its log); here",
		    status);
}

/* Switch-over: stop, send the rest, wait for the destination's verdict. */
static int switch_over(struct kv_migration *m, struct kv_stream *s,
		       bool return_path, bool *stopped, struct kv_error *err)
{
	int64_t stop_ns;
	uint32_t status;
	int ret;

	/* The downtime starts with the request to stop: parking the vCPUs
	 * and reading their state are part of it. */
	stop_ns = kv_now_ns();
	kv_switch_log("stop");
	ret = m->hooks.stop_vm(m->hooks.opaque, err);
	*stopped = true; /* even a failed stop may have stopped a part */
	if (ret < 0) {
		kv_error_prefix(err, "stopping the workload for switch-over");
		return ret;
	}
	if (!mig_set_status(m, KV_MIG_ACTIVE, KV_MIG_DEVICE, true))
		return -ECANCELED;
	kv_switch_log("stopped");
	ret = kv_savevm_save_complete(m->sv, s, err);
	if (ret < 0)
		return ret;
	kv_switch_log("complete sent");
	record_pass_pages(m);
	if (return_path) {
		ret = kv_rp_reader_wait_shut(m->rp, m->params.rp_timeout_ms,
					     &status, err);
		if (ret < 0)
			return ret;
		if (status != 0)
			return kv_error_set(err, -EREMOTEIO,
					    "the destination failed to load the migration stream (it answered SHUT with status %u; see its log); the source keeps its guest",
					    status);
		kv_switch_log("SHUT(0) received");
	}
	pthread_mutex_lock(&m->lock);
	m->stats.downtime_ms = (kv_now_ns() - stop_ns) / 1000000;
	pthread_mutex_unlock(&m->lock);
	return 0;
}

static int run_phases(struct kv_migration *m, struct kv_stream *s,
		      bool return_path, bool *stopped, struct kv_error *err)
{
	int ret;

	if (m->rs) {
		ret = kv_ram_set_xbzrle(m->rs, m->params.xbzrle_cache_size,
					err);
		if (ret < 0)
			return ret;
		kv_ram_set_compress(m->rs, m->params.compress);
	}
	ret = kv_savevm_save_header(m->sv, s, return_path, err);
	if (ret < 0)
		return ret;
	kv_switch_log("setup begins");
	pthread_mutex_lock(&m->lock);
	m->ram_counted = true;
	pthread_mutex_unlock(&m->lock);
	ret = kv_savevm_save_setup(m->sv, s, err);
	if (ret < 0)
		return ret;
	kv_switch_log("setup done (tracking on)");
	pthread_mutex_lock(&m->lock);
	m->stats.setup_time_ms = (kv_now_ns() - m->start_ns) / 1000000;
	pthread_mutex_unlock(&m->lock);
	if (!mig_set_status(m, KV_MIG_SETUP, KV_MIG_ACTIVE, true))
		return -ECANCELED;
	ret = iterate_until_converged(m, s, err);
	if (ret < 0)
		return ret;
	return switch_over(m, s, return_path, stopped, err);
}

struct kv_mfd_config kv_mig_params_mfd(const struct kv_mig_params *p)
{
	return (struct kv_mfd_config){
	    .channels = p->multifd_channels,
	    .method = p->multifd_method,
	    .level = p->multifd_level,
	    .zero = p->zero_page_detection,
	};
}

/* After the main channel connected: with params.multifd_channels,
 * connect that many channels to uri and send the pages over them
 * (kv_mig_run closes them when it ends). */
static int multifd_connect(struct kv_migration *m, const char *uri,
			   struct kv_error *err)
{
	struct kv_mfd_config cfg = kv_mig_params_mfd(&m->params);
	struct kv_mfd_send *mfd;

	cfg.rate_limit = &m->rl;
	cfg.cancel = m->connect_cancel;
	cfg.connect_timeout_ms = m->params.connect_timeout_ms;
	if (!cfg.channels || !m->rs)
		return 0;
	mfd = kv_mfd_send_start(uri, &cfg, err);
	if (!mfd)
		return err->code ? err->code : -EIO;
	pthread_mutex_lock(&m->lock);
	m->mfd = mfd;
	pthread_mutex_unlock(&m->lock);
	kv_ram_set_multifd_send(m->rs, mfd, cfg.zero);
	return 0;
}

/* The channels close when the run ends: after SHUT(0), or on failure. */
static void multifd_close(struct kv_migration *m)
{
	struct kv_mfd_send *mfd;

	pthread_mutex_lock(&m->lock);
	mfd = m->mfd;
	m->mfd = NULL;
	pthread_mutex_unlock(&m->lock);
	if (!mfd)
		return;
	kv_ram_set_multifd_send(m->rs, NULL, KV_MFD_ZERO_LEGACY);
	kv_mfd_send_free(mfd);
}

/* Why it failed, for query-migrate: stored before the status says
 * FAILED, so that no reader sees one without the other. */
static void keep_error(struct kv_migration *m, const struct kv_error *err)
{
	pthread_mutex_lock(&m->lock);
	snprintf(m->stats.error, sizeof(m->stats.error), "%s",
		 err && err->msg[0] ? err->msg : "migration failed");
	pthread_mutex_unlock(&m->lock);
}

/* A struct kv_migration runs once: a new migration is a new object. */
static int refuse_second_run(const struct kv_migration *m,
			     struct kv_error *err)
{
	return kv_error_set(err, -EBUSY, "migration: this migration already ran (status %s)", kv_mig_status_name(kv_mig_status(m)));
}

/* QEMU emits "cancelling" before "cancelled"; kv_mig_cancel changes the
 * status on the canceller's thread, so the hook hears it from here. */
static void announce_cancelling(struct kv_migration *m)
{
	report_progress(m, m->rs ? kv_ram_pending_estimate(m->rs) : 0, 0);
}

/* The run from SETUP (or CANCELLING, after a cancel that came first). */
static int run_from_setup(struct kv_migration *m, struct kv_stream *s,
			  struct kv_error *err)
{
	struct kv_error lerr = {0};
	bool return_path = false, stopped = false, cancelled;
	enum kv_mig_status st;
	int ret;

	m->wire_factor = 1.0;
	kv_switch_log("run begins");
	pthread_mutex_lock(&m->lock);
	m->stream = s;
	pthread_mutex_unlock(&m->lock);
	/* A cancel before the stream was there did not shut it down. */
	if (cancel_requested(m)) {
		ret = -ECANCELED;
		goto out;
	}
	/* max-bandwidth holds for everything together: the main stream and
	 * every multifd channel charge one limiter. */
	kv_stream_share_rate_limit(s, &m->rl);
	return_path = kv_stream_chan(s)->is_socket;
	if (return_path) {
		m->rp = kv_rp_reader_start(kv_stream_chan(s), &lerr);
		if (!m->rp) {
			ret = lerr.code;
			goto out;
		}
	}
	pthread_mutex_lock(&m->lock);
	m->stats.return_path = return_path;
	pthread_mutex_unlock(&m->lock);
	ret = run_phases(m, s, return_path, &stopped, &lerr);
	if (ret == 0 &&
	    !mig_set_status(m, KV_MIG_DEVICE, KV_MIG_COMPLETED, true))
		mig_set_status(m, KV_MIG_CANCELLING, KV_MIG_COMPLETED, true);
out:
	cancelled = ret < 0 && cancel_requested(m);
	if (ret < 0 && !cancelled && m->rp && kv_stream_error(s))
		explain_by_destination(m, s, &lerr);
	if (ret < 0)
		record_pass_pages(m); /* the pass it stopped in */
	kv_savevm_save_cleanup(m->sv, ret < 0);
	throttle_off(m);
	if (ret < 0 && stopped)
		m->hooks.resume_vm(m->hooks.opaque);
	update_stats(m, s);
	kv_stream_share_rate_limit(s, NULL); /* m may go before s */
	pthread_mutex_lock(&m->lock);
	m->stream = NULL;
	pthread_mutex_unlock(&m->lock);
	kv_rp_reader_stop(m->rp); /* before the caller closes the channel */
	m->rp = NULL;
	multifd_close(m);
	if (ret == 0)
		return 0;
	if (cancelled) {
		announce_cancelling(m);
		mig_set_status(m, KV_MIG_CANCELLING, KV_MIG_CANCELLED, true);
		kv_error_clear(&lerr);
		kv_error_set(&lerr, -ECANCELED, "migration cancelled%s",
			     stopped ? "; the source took its guest back" : "");
		ret = -ECANCELED;
	} else {
		if (!kv_error_is_set(&lerr))
			kv_error_set(&lerr, ret, "migration failed");
		keep_error(m, &lerr);
		/* A cancel may still race the failure: it then wins. */
		do
			st = kv_mig_status(m);
		while (st != KV_MIG_CANCELLING &&
		       !mig_set_status(m, st, KV_MIG_FAILED, true));
		if (st == KV_MIG_CANCELLING) {
			announce_cancelling(m);
			mig_set_status(m, st, KV_MIG_CANCELLED, true);
		}
	}
	kv_error_propagate(err, &lerr);
	return ret;
}

/* NONE -> SETUP, or CANCELLING when a cancel came first; false when this
 * migration already ran. */
static bool enter_setup(struct kv_migration *m)
{
	enum kv_mig_status st = kv_mig_status(m);

	if (st != KV_MIG_NONE && st != KV_MIG_CANCELLING)
		return false;
	m->start_ns = kv_now_ns();
	return mig_set_status(m, KV_MIG_NONE, KV_MIG_SETUP, true) ||
	       cancel_requested(m);
}

int kv_mig_run(struct kv_migration *m, struct kv_stream *s,
	       struct kv_error *err)
{
	if (!enter_setup(m))
		return refuse_second_run(m, err);
	return run_from_setup(m, s, err);
}

/* The run ended before its phases began (the connection could not be set
 * up, or a cancel came while connecting): the status says which. */
static int end_before_run(struct kv_migration *m, int ret,
			  struct kv_error *err)
{
	enum kv_mig_status st;

	keep_error(m, err);
	do
		st = kv_mig_status(m);
	while (st == KV_MIG_SETUP &&
	       !mig_set_status(m, st, KV_MIG_FAILED, true));
	if (st != KV_MIG_CANCELLING)
		return ret;
	announce_cancelling(m);
	mig_set_status(m, st, KV_MIG_CANCELLED, true);
	kv_error_clear(err);
	return kv_error_set(err, -ECANCELED, "migration cancelled");
}

/* The main channel, abandoned at once by kv_mig_cancel and after
 * x-connect-timeout. */
/* Settings that cannot work together are refused before anything
 * connects: a destination never sees a source that gives up at once. */
static int refuse_conflicting_params(const struct kv_migration *m,
				     struct kv_error *err)
{
	if (m->rs && m->params.multifd_channels && m->params.xbzrle_cache_size)
		return kv_error_set(err, -EINVAL, "the xbzrle and multifd capabilities cannot be used together (as in QEMU): turn one of them off");
	return 0;
}

static struct kv_chan *connect_main(struct kv_migration *m, const char *uri,
				    int *ret, struct kv_error *err)
{
	struct kv_chan *c;

	c = kv_chan_connect_cancellable(uri, m->connect_cancel,
					m->params.connect_timeout_ms, err);
	if (c && cancel_requested(m)) {
		kv_chan_close(c);
		c = NULL;
	}
	if (cancel_requested(m))
		*ret = -ECANCELED;
	else
		*ret = c ? 0 : (err->code ? err->code : -EIO);
	return c;
}

int kv_mig_run_uri(struct kv_migration *m, const char *uri,
		   struct kv_error *err)
{
	struct kv_error lerr = {0};
	struct kv_stream *s;
	struct kv_chan *c = NULL;
	int ret = -ECANCELED;

	/* query-migrate says "setup" while connecting, as QEMU's does. */
	if (!enter_setup(m))
		return refuse_second_run(m, err);
	ret = refuse_conflicting_params(m, &lerr);
	if (ret == 0 && cancel_requested(m))
		ret = -ECANCELED;
	if (ret == 0)
		c = connect_main(m, uri, &ret, &lerr);
	s = c ? kv_stream_new(c, KV_STREAM_WRITE) : NULL;
	if (c && !s) {
		kv_chan_close(c);
		c = NULL;
		ret = kv_error_set(&lerr, -ENOMEM, "no memory for the stream");
	}
	if (ret == 0)
		ret = multifd_connect(m, uri, &lerr);
	if (ret == 0) {
		ret = run_from_setup(m, s, &lerr);
	} else {
		multifd_close(m);
		ret = end_before_run(m, ret, &lerr);
	}
	if (s)
		kv_stream_close(s);
	kv_error_propagate(err, &lerr);
	return ret;
}
