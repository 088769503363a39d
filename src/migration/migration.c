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
 *
 * The switch-over is a commit protocol (switchover.h): once the source's
 * GO left this host it never resumes by itself. GO sent and no answer:
 * DEVICE (or CANCELLING) -> UNDECIDED, the guest stays stopped and the
 * source delivers GO over new connections until the destination answers
 * (-> COMPLETED, or FAILED if it had discarded the guest: the source then
 * runs it) or an operator settles it (kv_mig_settle).
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
#include <time.h>

#include "base/bitmap.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/rate_limit.h"
#include "base/thread_role.h"
#include "migration/bg_migration.h"
#include "migration/options.h"
#include "migration/postcopy/postcopy_auto.h"
#include "migration/ram/mapped_ram.h"
#include "migration/postcopy/postcopy_src.h"
#include "migration/tls_hook.h"
#include "migration/return_path.h"
#include "migration/savevm/savevm.h"
#include "migration/switchover.h"

/* After a stream error, how long to look for the destination's SHUT that
 * explains it. */
#define RP_EXPLAIN_TIMEOUT_MS 2000
/* An undecided switch-over: how long one RESOLVE may take, and the pause
 * between attempts. */
#define RESOLVE_TIMEOUT_MS 2000
#define RESOLVE_RETRY_NS   (1000 * 1000000LL)
/* After ABORT was written: how long to wait for the destination's SHUT
 * saying it heard it, before delivering ABORT over new connections. */
#define ABORT_HEARD_TIMEOUT_MS 2000
/* switch_over(): GO left this host and the destination did not answer. */
#define SWO_UNANSWERED 1
/* iterate_until_converged(): switch to postcopy now. */
#define MIG_PC_SWITCH 2
/* postcopy_run(): POSTCOPY_RUN left and the link broke (err says how):
 * the guest runs on the destination and lacks pages only this side has. */
#define MIG_PC_PAUSED 3
#define MIG_PC_SETTLED 4 /* paused, then x-migrate-settle run */
/* How long a source that took its guest back keeps telling an unreachable
 * destination ABORT. */
#define ABORT_DELIVERY_NS (120 * 1000000000LL)
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

	/* The switch-over commit protocol (switchover.h). */
	struct kv_swo_id swo_id;
	bool offered;	   /* OFFER left: the destination may wait */
	int decision;	   /* enum kv_swo_decision, atomic: GO and a
			    * cancel race on it, the first one decides */
	int settle;	   /* enum kv_swo_settle, atomic: the operator's */
	int stop_resolving; /* atomic: kv_mig_cancel or kv_mig_free */
	bool abort_unheard; /* ABORT may not have reached the destination */
	char uri[300];	    /* the destination's, for RESOLVE */

	/* x-link-timeout: signs of life from the destination on any channel
	 * of the migration (io/channel.h), and the keepalive's last look
	 * (migration thread): when, the stream offset and the bytes not yet
	 * acknowledged then. */
	struct kv_chan_activity life;
	int64_t ka_ns;
	uint64_t ka_offset;
	int64_t ka_unsent;

	/* Postcopy: migrate-start-postcopy asked (atomic); the queue of the
	 * destination's page requests, from the switch on (freed with m:
	 * the return path's reader hands it requests until it stops). */
	int pc_requested;
	struct kv_pc_src *pcs;
	/* Recovery: migrate with resume asked (under lock), and the stream
	 * of the link that replaced the first (the run closes it). */
	bool resume_req;
	char resume_uri[300];
	struct kv_stream *pc_stream;
	uint64_t pc_bytes; /* on the links before it */
	/* postcopy-preempt: the second connection (made at setup), its
	 * stream and thread from RUN on; pre_stop (atomic) ends it. */
	struct kv_chan *pre_chan;
	struct kv_stream *pre_stream;
	pthread_t pre_thread;
	bool pre_running;
	int pre_stop;
	struct kv_error pre_err;
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
    [KV_MIG_UNDECIDED] = "x-undecided",
    [KV_MIG_POSTCOPY_ACTIVE] = "postcopy-active",
    [KV_MIG_POSTCOPY_PAUSED] = "postcopy-paused",
    [KV_MIG_POSTCOPY_RECOVER] = "postcopy-recover",
};

#define ST(s) (1U << (s))

static const unsigned int transitions[] = {
    [KV_MIG_NONE] = ST(KV_MIG_SETUP) | ST(KV_MIG_CANCELLING),
    [KV_MIG_SETUP] =
	ST(KV_MIG_ACTIVE) | ST(KV_MIG_FAILED) | ST(KV_MIG_CANCELLING),
    /* COMPLETED: a background snapshot, whose guest never stops at the
     * end (bg_migration.h). */
    [KV_MIG_ACTIVE] = ST(KV_MIG_DEVICE) | ST(KV_MIG_FAILED) |
		      ST(KV_MIG_CANCELLING) | ST(KV_MIG_COMPLETED) |
		      ST(KV_MIG_POSTCOPY_ACTIVE),
    /* FAILED and CANCELLING only before POSTCOPY_RUN left (the guest is
     * resumed here); after it COMPLETED, or PAUSED when the link broke. */
    [KV_MIG_POSTCOPY_ACTIVE] = ST(KV_MIG_COMPLETED) | ST(KV_MIG_FAILED) |
			       ST(KV_MIG_CANCELLING) |
			       ST(KV_MIG_POSTCOPY_PAUSED),
    /* migrate with resume; then ACTIVE on RESUME_ACK, or PAUSED again
     * when the new link breaks too. */
    [KV_MIG_POSTCOPY_PAUSED] = ST(KV_MIG_POSTCOPY_RECOVER) | ST(KV_MIG_FAILED),
    [KV_MIG_POSTCOPY_RECOVER] =
	ST(KV_MIG_POSTCOPY_ACTIVE) | ST(KV_MIG_POSTCOPY_PAUSED),
    [KV_MIG_DEVICE] = ST(KV_MIG_COMPLETED) | ST(KV_MIG_FAILED) |
		      ST(KV_MIG_CANCELLING) | ST(KV_MIG_UNDECIDED),
    [KV_MIG_COMPLETED] = 0,
    [KV_MIG_FAILED] = 0,
    /* COMPLETED: a cancel that lost the race against the destination's
     * SHUT(0); the destination owns the workload then. UNDECIDED: it lost
     * the race against GO, which was sent but not answered. */
    [KV_MIG_CANCELLING] =
	ST(KV_MIG_CANCELLED) | ST(KV_MIG_COMPLETED) | ST(KV_MIG_UNDECIDED),
    [KV_MIG_CANCELLED] = 0,
    /* COMPLETED: the destination runs the guest (its ACK, or an operator
     * dropped this copy); FAILED: it never will, this side runs it. */
    [KV_MIG_UNDECIDED] = ST(KV_MIG_COMPLETED) | ST(KV_MIG_FAILED),
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
	kv_chan_activity_init(&m->life, "the destination", "x-link-timeout");
	return m;
}

void kv_mig_free(struct kv_migration *m)
{
	if (!m)
		return;
	/* The caller joined the thread that ran it; nothing resolves now. */
	kv_pc_src_free(m->pcs);
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
	enum kv_mig_status now = kv_mig_status(m);
	int d = KV_SWO_UNDECIDED;

	/* Over: only an ABORT still being delivered is left to stop. */
	if (now == KV_MIG_COMPLETED || now == KV_MIG_FAILED ||
	    now == KV_MIG_CANCELLED) {
		__atomic_store_n(&m->stop_resolving, 1, __ATOMIC_RELEASE);
		return;
	}
	if (!__atomic_compare_exchange_n(&m->decision, &d, KV_SWO_ABORT, false,
					 __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE) &&
	    d == KV_SWO_GO) {
		if (now == KV_MIG_POSTCOPY_ACTIVE || now == KV_MIG_POSTCOPY_PAUSED)
			kv_warn("migration", "migrate_cancel does nothing now: the guest runs on the destination since POSTCOPY_RUN, and the pages it still lacks are only here");
		else
			kv_warn("migration", "migrate_cancel does nothing now: the guest was handed over to the destination (the source sent GO); if the destination is gone for good, settle it with x-migrate-settle");
		return;
	}
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

int kv_mig_start_postcopy(struct kv_migration *m, struct kv_error *err)
{
	enum kv_mig_status st = kv_mig_status(m);

	if (!m->params.postcopy_ram)
		return kv_error_set(err, -EINVAL, "Enable postcopy with migrate_set_capability before the start of migration");
	/* NONE: migrate returned and its thread has not begun yet. */
	if (st != KV_MIG_NONE && st != KV_MIG_SETUP && st != KV_MIG_ACTIVE &&
	    st != KV_MIG_POSTCOPY_ACTIVE)
		return kv_error_set(err, -EBUSY, "migrate-start-postcopy: the migration is %s, not in precopy", kv_mig_status_name(st));
	__atomic_store_n(&m->pc_requested, 1, __ATOMIC_RELEASE);
	return 0;
}

static bool postcopy_requested(const struct kv_migration *m)
{
	return __atomic_load_n(&m->pc_requested, __ATOMIC_ACQUIRE) != 0;
}

void kv_mig_set_downtime_limit(struct kv_migration *m, uint64_t ms)
{
	__atomic_store_n(&m->params.downtime_limit_ms, ms, __ATOMIC_RELAXED);
}

/* Bytes on the wire: the main stream and any multifd channels. */
static uint64_t transferred(const struct kv_migration *m,
			    struct kv_stream *s)
{
	/* After a postcopy recovery the link in use is the last one. */
	struct kv_stream *cur = m->pc_stream ? m->pc_stream : s;

	return kv_stream_transferred(cur) + m->pc_bytes +
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
		st->dirty_peeks = rst.dirty_peeks;
		st->redirtied_skipped = rst.redirtied_skipped;
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
	if (m->pcs) {
		struct kv_pc_src_stats ps;

		kv_pc_src_get_stats(m->pcs, &ps);
		m->stats.postcopy_requests = ps.requests;
	}
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

/* ---- liveness (x-link-timeout) ---- */

/* A keepalive goes out at most this long after the main stream's last
 * byte, whatever our own limit: a destination reads its own x-link-timeout
 * and must hear from us well within it. A quarter of a shorter limit. */
#define KEEPALIVE_MAX_NS (1000 * 1000000LL)

static int64_t keepalive_interval_ns(const struct kv_migration *m)
{
	int64_t quarter = (int64_t)m->params.link_timeout_ms * 1000000 / 4;

	return quarter > 0 && quarter < KEEPALIVE_MAX_NS ? quarter
							 : KEEPALIVE_MAX_NS;
}

/* The main channel fails a wait with no sign of life for the limit;
 * the multifd channels share the record (multifd_connect). */
static void watch_link(struct kv_migration *m, struct kv_stream *s)
{
	if (kv_stream_chan(s)->is_socket)
		kv_chan_set_silence(kv_stream_chan(s),
				    m->params.link_timeout_ms, &m->life);
	m->ka_ns = kv_now_ns();
	m->ka_offset = kv_stream_offset(s);
}

/* Bytes the destination acknowledged since the last look are a sign of
 * life: the end of a pass waits while it drains what is in flight, which
 * on a slow link takes a while. */
static void note_acks(struct kv_migration *m, struct kv_stream *s)
{
	int64_t unsent = kv_chan_unsent(kv_stream_chan(s));

	if (m->mfd)
		unsent += kv_mfd_send_unsent(m->mfd);
	if (unsent > m->ka_unsent ||
	    m->ka_unsent - unsent >= KV_CHAN_ACKED_ALIVE_BYTES) {
		if (unsent < m->ka_unsent)
			kv_chan_activity_note(&m->life);
		m->ka_unsent = unsent;
	}
}

/* Every interval, what the stream holds goes out; when nothing was put
 * since the last look (multifd passes leave the main stream idle, as do
 * the waits at the end of a pass), a PING (QEMU's MIG_CMD_PING, answered
 * with PONG) first, so that the destination hears from us. */
static int keepalive(struct kv_migration *m, struct kv_stream *s,
		     struct kv_error *err)
{
	int64_t now = kv_now_ns();
	int ret = 0;

	if (!m->rp || now - m->ka_ns < keepalive_interval_ns(m))
		return 0;
	m->ka_ns = now;
	if (kv_stream_offset(s) == m->ka_offset)
		ret = kv_savevm_save_ping(s, ++m->ping, err);
	else if (kv_stream_flush(s) < 0)
		ret = kv_stream_error(s);
	kv_stream_error_get(s, err);
	m->ka_offset = kv_stream_offset(s);
	return ret;
}

/* What a wait for the destination's answer waits for: SHUT (its status
 * in *status) or PONG(value). The commit protocol's READY is one more. */
struct answer {
	bool shut;
	uint32_t value;
	uint32_t *status;
	const struct kv_swo_id *ready; /* READY(ready), after the stream */
};

/* 1 it came, 0 not within slice_ns, <0 (err set) it never will. */
static int answer_slice(struct kv_migration *m, const struct answer *a,
			int64_t slice_ns, struct kv_error *err)
{
	if (a->ready)
		return kv_rp_reader_wait_ready_for(m->rp, a->ready, slice_ns,
						   err);
	if (a->shut)
		return kv_rp_reader_wait_shut_for(m->rp, slice_ns, a->status,
						  err);
	return kv_rp_reader_wait_pong_for(m->rp, a->value, slice_ns, err);
}

/* The destination's answer: x-return-path-timeout as before, and sooner
 * the x-link-timeout when the destination showed no sign of life
 * meanwhile (a message, bytes acknowledged). While waiting for a PONG,
 * keepalives go out; nothing may follow the end of the stream (SHUT). */
static int wait_answer(struct kv_migration *m, struct kv_stream *s,
		       const struct answer *a, struct kv_error *err)
{
	int64_t since = kv_now_ns();
	int64_t end = since + (int64_t)m->params.rp_timeout_ms * 1000000;
	int ret;

	m->ka_unsent = kv_chan_unsent(kv_stream_chan(s)) +
		       (m->mfd ? kv_mfd_send_unsent(m->mfd) : 0);
	for (;;) {
		int64_t left = end - kv_now_ns();
		int64_t slice = keepalive_interval_ns(m);

		if (left <= 0)
			return kv_error_set(err, -ETIMEDOUT, "return path: no answer from the destination on %s within %d ms (x-return-path-timeout)", kv_stream_chan(s)->name, m->params.rp_timeout_ms);
		ret = answer_slice(m, a, left < slice ? left : slice, err);
		if (ret != 0)
			return ret < 0 ? ret : 0;
		note_acks(m, s);
		ret = kv_chan_check_silence(kv_stream_chan(s), since, err);
		if (ret == 0 && !a->shut && !a->ready)
			ret = keepalive(m, s, err);
		if (ret < 0)
			return ret;
	}
}

/* The destination went silent (x-link-timeout): it will not explain
 * anything, so nobody waits for its SHUT. */
static bool link_went_silent(const struct kv_migration *m,
			     const struct kv_error *err)
{
	return err->code == -ETIMEDOUT && strstr(err->msg, m->life.setting);
}

/* Where the silence struck, for the message. */
static void name_silent_phase(const struct kv_migration *m,
			      struct kv_error *err)
{
	enum kv_mig_status st = kv_mig_status(m);

	if (st == KV_MIG_ACTIVE)
		kv_error_prefix(err, "the link went silent in pass %llu",
				(unsigned long long)m->pass);
	else
		kv_error_prefix(err, "the link went silent in %s",
				st == KV_MIG_DEVICE ? "the switch-over"
						    : "setup");
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
	ret = wait_answer(m, s, &(struct answer){.value = m->ping}, err);
	if (ret < 0)
		kv_error_prefix(err,
				"waiting for the destination to read pass %llu",
				(unsigned long long)m->pass);
	return ret;
}

/* x-postcopy-auto (postcopy/postcopy_auto.h): at the end of a pass that
 * did not switch over, whether precopy will not converge and postcopy
 * should take over. Never without postcopy-ram. The reason goes to
 * query-migrate and the X_POSTCOPY_AUTO event. */
static bool postcopy_auto_says_switch(struct kv_migration *m,
				      struct kv_pc_auto *pca, uint64_t pending,
				      uint64_t pass_bytes, int64_t pass_ns)
{
	struct kv_pc_auto_sample smp = {0};
	char why[sizeof(m->stats.postcopy_auto_reason)];

	if (!m->params.postcopy_ram || !m->params.postcopy_auto)
		return false;
	smp.dirty_bytes = pending;
	smp.sent_bytes = pass_bytes;
	smp.wire_factor = m->wire_factor;
	smp.pass_ns = pass_ns;
	smp.link_bps = m->rs ? kv_ram_link_bps(m->rs) : 0;
	smp.rate_limit_bps =
	    __atomic_load_n(&m->params.max_bandwidth, __ATOMIC_RELAXED);
	smp.downtime_limit_ms =
	    __atomic_load_n(&m->params.downtime_limit_ms, __ATOMIC_RELAXED);
	pthread_mutex_lock(&m->lock);
	smp.throttle_pct = m->stats.throttle_pct;
	pthread_mutex_unlock(&m->lock);
	if (kv_pc_auto_note_pass(pca, &smp, why, sizeof(why)) !=
	    KV_PC_AUTO_SWITCH) {
		kv_switch_log("x-postcopy-auto waits: %s", why);
		return false;
	}
	kv_switch_log("x-postcopy-auto switches: %s", why);
	pthread_mutex_lock(&m->lock);
	snprintf(m->stats.postcopy_auto_reason,
		 sizeof(m->stats.postcopy_auto_reason), "%s", why);
	pthread_mutex_unlock(&m->lock);
	return true;
}

/*
 * ACTIVE: iterate; at the end of every pass measure its bandwidth, sync
 * and decide (time_to_switch). Returns 0 when it is time to switch over,
 * MIG_PC_SWITCH when it is time for postcopy.
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
	struct kv_pc_auto pca;
	int ret;

	kv_pc_auto_init(&pca);
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
		if (ret >= 0 && keepalive(m, s, err) < 0)
			ret = err->code;
		if (ret < 0)
			return ret;
		if (postcopy_requested(m))
			return MIG_PC_SWITCH;
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
			if (postcopy_auto_says_switch(
				m, &pca, pending,
				transferred(m, s) - pass_bytes0, pass_ns))
				return MIG_PC_SWITCH;
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

	if (shut_here && kv_rp_reader_verdict(m->rp, &rerr) < 0) {
		/* The reader shut the channel: its reason, not the write it
		 * cancelled. */
		kv_error_clear(err);
		kv_error_propagate(err, &rerr);
		return;
	}
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

/* The commit protocol's source half, after the device state went out:
 * OFFER, wait for READY, GO, wait for SHUT. 0: the destination runs the
 * guest. <0: it does not and never will (the caller resumes).
 * SWO_UNANSWERED: GO left this host and no answer came (err says why):
 * neither side may run until the destination is heard. */
static int hand_over(struct kv_migration *m, struct kv_stream *s,
		     struct kv_error *err)
{
	int expected = KV_SWO_UNDECIDED;
	uint32_t status = 0;
	bool sent;
	int ret;

	ret = kv_swo_new_id(&m->swo_id, err);
	if (ret < 0)
		return ret;
	kv_swo_put_offer(s, &m->swo_id);
	m->offered = true;
	if (kv_stream_flush(s) < 0) {
		kv_stream_error_get(s, err);
		return kv_stream_error(s);
	}
	kv_switch_log("OFFER sent");
	ret = wait_answer(m, s, &(struct answer){.ready = &m->swo_id}, err);
	if (ret < 0)
		return ret;
	kv_switch_log("READY received");
	if (!__atomic_compare_exchange_n(&m->decision, &expected, KV_SWO_GO,
					 false, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE))
		return kv_error_set(err, -ECANCELED, "migration cancelled before the switch-over was decided");
	ret = kv_swo_send_decision(s, &m->swo_id, KV_SWO_GO, &sent, err);
	if (ret < 0 && !sent) {
		/* Not a byte of GO left this host: the destination cannot
		 * have it, so this side may still run the guest. */
		__atomic_store_n(&m->decision, KV_SWO_ABORT, __ATOMIC_RELEASE);
		return ret;
	}
	kv_switch_log("GO sent");
	if (ret == 0)
		ret = wait_answer(
		    m, s, &(struct answer){.shut = true, .status = &status},
		    err);
	if (ret == 0 && status == 0) {
		kv_switch_log("SHUT(0) received");
		return 0;
	}
	if (ret == 0) {
		/* Anything but SHUT(0) after GO is not proof that the guest
		 * does not run there (a status damaged on the way would make
		 * two copies): ask again over a new connection, or let an
		 * operator settle. */
		kv_error_set(err, -EREMOTEIO, "the destination answered SHUT with status %u after the source's GO (it could not start the guest, or the answer was damaged); the source keeps its copy stopped and asks the destination again: if the destination exited without running the guest, settle here with x-migrate-settle run", status);
		return SWO_UNANSWERED;
	}
	kv_error_prefix(err, "no confirmation from the destination after the source's GO");
	return SWO_UNANSWERED;
}

/* ---- postcopy (docs/DESIGN.md "Postcopy") ---- */

/* The queue the return path's reader fills with the destination's page
 * requests, from the switch on. */
static int postcopy_queue(struct kv_migration *m, struct kv_error *err)
{
	struct kv_pc_blocks blocks;
	struct kv_pc_block *v;
	size_t n = 0;

	v = kv_ram_pc_blocks(m->rs, &n);
	if (!v)
		return kv_error_set(err, -ENOMEM, "postcopy: out of memory");
	blocks = (struct kv_pc_blocks){.v = v, .n = n};
	m->pcs = kv_pc_src_new(&blocks, err);
	free(v);
	if (!m->pcs)
		return err->code ? err->code : -ENOMEM;
	kv_rp_reader_set_postcopy(m->rp, m->pcs);
	return 0;
}

/* Stopped: the dirty pages as discards, then PACKAGED { LISTEN, devices,
 * RUN }. RUN is postcopy's GO: a cancel races it on the decision, and
 * once its bytes reached the kernel (the flush returned) this side never
 * resumes by itself. */
static int postcopy_handover(struct kv_migration *m, struct kv_stream *s,
			     struct kv_error *err)
{
	int expected = KV_SWO_UNDECIDED;
	int ret;

	ret = postcopy_queue(m, err);
	if (ret == 0)
		ret = kv_ram_pc_multifd_sync(m->sv, s, m->rs, m->pcs, err);
	if (ret == 0)
		ret = kv_ram_pc_switch(s, m->rs, m->pcs, err);
	if (ret == 0)
		ret = kv_savevm_save_pc_package(m->sv, s, err);
	if (ret < 0)
		return ret;
	if (!__atomic_compare_exchange_n(&m->decision, &expected, KV_SWO_GO,
					 false, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE))
		return kv_error_set(err, -ECANCELED, "migration cancelled before POSTCOPY_RUN left");
	if (kv_stream_flush(s) < 0) {
		/* The package's last bytes (RUN) never left: the destination
		 * cannot run the guest; this side takes it back. */
		__atomic_store_n(&m->decision, KV_SWO_ABORT, __ATOMIC_RELEASE);
		kv_stream_error_get(s, err);
		kv_error_prefix(err, "sending the postcopy package (POSTCOPY_RUN did not leave)");
		return kv_stream_error(s);
	}
	return 0;
}

/* After RUN: pages, requested ones first, until none is left. */
static int postcopy_pages(struct kv_migration *m, struct kv_stream *s,
			  struct kv_error *err)
{
	int64_t last_report_ns = kv_now_ns();
	int ret;

	for (;;) {
		ret = kv_savevm_save_iterate(m->sv, s, err);
		if (ret >= 0 && keepalive(m, s, err) < 0)
			ret = err->code;
		if (ret < 0)
			return ret;
		if (kv_now_ns() - last_report_ns >= PROGRESS_EVERY_NS) {
			update_stats(m, s);
			report_progress(m, kv_savevm_pending_estimate(m->sv),
					0);
			last_report_ns = kv_now_ns();
		}
		if (ret == 1)
			return 0;
	}
}

/* Whether the destination showed it runs the guest: a page request
 * comes only from a vCPU started by RUN (or a device touching RAM after
 * LISTEN; no device of kvmig's does). */
static bool postcopy_heard_since_run(struct kv_migration *m)
{
	struct kv_pc_src_stats ps = {0};

	if (m->pcs)
		kv_pc_src_get_stats(m->pcs, &ps);
	return ps.requests > 0;
}

/* The link broke after RUN: say what it means. */
static int postcopy_broken(struct kv_migration *m, struct kv_error *err)
{
	char why[KV_ERROR_MSG_MAX];

	snprintf(why, sizeof(why), "%s", err->msg[0] ? err->msg : "the link broke");
	kv_error_clear(err);
	if (!postcopy_heard_since_run(m))
		kv_error_set(err, -EPIPE, "postcopy paused: %s; POSTCOPY_RUN left the source but the destination asked for no page since, so it may never have received it: if the destination says no guest was started there, resume the guest here with x-migrate-settle run; otherwise the guest runs there and %llu of its pages are only here: it cannot be completed until the destination is reachable again; the source keeps its copy stopped", why, (unsigned long long)(kv_ram_pending_estimate(m->rs) / KV_PAGE_SIZE));
	else
		kv_error_set(err, -EPIPE, "postcopy paused: %s; the guest runs on the destination since POSTCOPY_RUN and %llu of its pages are only here: it cannot be completed until the destination is reachable again (if the destination is gone, so is the guest); the source keeps its copy stopped", why, (unsigned long long)(kv_ram_pending_estimate(m->rs) / KV_PAGE_SIZE));
	return MIG_PC_PAUSED;
}

/* The preempt channel broke under its thread: the requests it would
 * have served must not wait for the background scan, so postcopy pauses
 * as for any broken link (QEMU's too); a recovery connects both again. */
static void preempt_broke(struct kv_migration *m)
{
	kv_warn("migration", "postcopy-preempt channel: %s; postcopy pauses", m->pre_err.msg);
	pthread_mutex_lock(&m->lock);
	if (m->stream)
		kv_stream_shutdown(m->stream);
	pthread_mutex_unlock(&m->lock);
}

/* The preempt thread: every requested page at once on its own
 * connection, EOS when told to stop (QEMU's shutdown of the channel). */
static void *preempt_main(void *opaque)
{
	struct kv_migration *m = opaque;
	size_t last = KV_RAM_PC_NO_BLOCK;
	struct kv_pc_page pg;
	int ret = 0;

	kv_thread_set_role(KV_THREAD_URGENT); /* requested pages only */
	while (ret == 0 && !__atomic_load_n(&m->pre_stop, __ATOMIC_ACQUIRE)) {
		bool any = false;

		kv_pc_src_wait_urgent(m->pcs, 100);
		while (ret == 0 && kv_pc_src_next_urgent(m->pcs, &pg)) {
			ret = kv_ram_pc_send_urgent(m->pre_stream, m->rs, &pg,
						    &last, &m->pre_err);
			any = true;
		}
		if (ret == 0 && any && kv_stream_flush(m->pre_stream) < 0)
			ret = kv_stream_error(m->pre_stream);
	}
	if (ret == 0) {
		kv_stream_put_be64(m->pre_stream, KV_RAM_FLAG_EOS);
		kv_stream_flush(m->pre_stream);
	}
	if (ret < 0 && !kv_error_is_set(&m->pre_err))
		kv_stream_error_get(m->pre_stream, &m->pre_err);
	if (ret < 0 && !__atomic_load_n(&m->pre_stop, __ATOMIC_ACQUIRE))
		preempt_broke(m);
	return NULL;
}

static void preempt_start(struct kv_migration *m)
{
	if (!m->pre_chan || !m->pcs)
		return;
	m->pre_stream = kv_stream_new(m->pre_chan, KV_STREAM_WRITE);
	if (!m->pre_stream)
		return;
	kv_chan_set_silence(m->pre_chan, m->params.link_timeout_ms, &m->life);
	kv_error_clear(&m->pre_err);
	__atomic_store_n(&m->pre_stop, 0, __ATOMIC_RELEASE);
	kv_ram_pc_set_preempt(m->rs, true);
	kv_pc_src_set_resend(m->pcs, true);
	m->pre_running = pthread_create(&m->pre_thread, NULL, preempt_main,
					m) == 0;
	if (!m->pre_running)
		kv_ram_pc_set_preempt(m->rs, false);
	/* On the migration thread: nobody waits on its pages now. */
	if (m->pre_running)
		kv_thread_set_role(KV_THREAD_BACKGROUND);
}

/* The preempt thread ends: at the end of postcopy with EOS; after a
 * break (broken) at once, its channel shut down (a thread blocked on a
 * dead link would hold the pause up). Requested pages go on the main
 * stream until a recovery connects a new preempt channel. */
static void preempt_stop(struct kv_migration *m, bool broken)
{
	if (!m->pre_running)
		return;
	__atomic_store_n(&m->pre_stop, 1, __ATOMIC_RELEASE);
	if (broken)
		kv_stream_shutdown(m->pre_stream);
	kv_pc_src_wake(m->pcs);
	pthread_join(m->pre_thread, NULL);
	m->pre_running = false;
	kv_thread_set_role(KV_THREAD_NORMAL); /* it serves requests again */
	kv_ram_pc_set_preempt(m->rs, false);
	kv_pc_src_set_resend(m->pcs, false);
	if (!broken && kv_error_is_set(&m->pre_err))
		kv_warn("migration", "postcopy-preempt channel: %s", m->pre_err.msg);
}

/* After RUN (or a recovery): the rest of the pages, END, EOF, and the
 * destination's SHUT(0) once it has them all. 0, or MIG_PC_PAUSED. */
static int postcopy_finish(struct kv_migration *m, struct kv_stream *s,
			   struct kv_error *err)
{
	uint32_t status = 0;
	int ret;

	ret = postcopy_pages(m, s, err);
	preempt_stop(m, ret < 0);
	if (ret == 0)
		ret = kv_savevm_save_pc_complete(m->sv, s, err);
	if (ret == 0)
		ret = wait_answer(
		    m, s, &(struct answer){.shut = true, .status = &status},
		    err);
	if (ret == 0 && status != 0)
		ret = kv_error_set(err, -EREMOTEIO, "the destination answered SHUT with status %u at the end of postcopy", status);
	if (ret < 0)
		return postcopy_broken(m, err);
	kv_switch_log("postcopy: SHUT(0) received");
	return 0;
}

/* Postcopy from ACTIVE: stop, hand over, send the rest, wait for the
 * destination's SHUT(0) once it has every page. 0 completed; <0 before
 * RUN left (the caller resumes the guest); MIG_PC_PAUSED after. */
static int postcopy_run(struct kv_migration *m, struct kv_stream *s,
			bool *stopped, struct kv_error *err)
{
	int64_t stop_ns;
	int ret;

	if (!mig_set_status(m, KV_MIG_ACTIVE, KV_MIG_POSTCOPY_ACTIVE, true))
		return -ECANCELED;
	stop_ns = kv_now_ns();
	kv_switch_log("postcopy: stop");
	ret = m->hooks.stop_vm(m->hooks.opaque, err);
	*stopped = true;
	if (ret < 0) {
		kv_error_prefix(err, "stopping the workload for postcopy");
		return ret;
	}
	ret = postcopy_handover(m, s, err);
	if (ret < 0)
		return ret;
	kv_switch_log("postcopy: RUN sent");
	pthread_mutex_lock(&m->lock);
	m->stats.downtime_ms = (kv_now_ns() - stop_ns) / 1000000;
	pthread_mutex_unlock(&m->lock);
	/* QEMU's max-postcopy-bandwidth (0: none): a vCPU waits on these. */
	kv_stream_share_rate_limit(s, NULL);
	preempt_start(m);
	return postcopy_finish(m, s, err);
}

/* Switch-over: stop, send the rest, let the destination decide with the
 * commit protocol (a return path), or just flush (file, fd: no answer). */
static int switch_over(struct kv_migration *m, struct kv_stream *s,
		       bool return_path, bool *stopped, struct kv_error *err)
{
	int64_t stop_ns;
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
	if (return_path)
		ret = hand_over(m, s, err);
	if (ret != 0)
		return ret;
	pthread_mutex_lock(&m->lock);
	m->stats.downtime_ms = (kv_now_ns() - stop_ns) / 1000000;
	pthread_mutex_unlock(&m->lock);
	return 0;
}

/* ---- background-snapshot: bg_migration.c runs the phases ---- */

static bool bg_cancelled(void *mig)
{
	return cancel_requested(mig);
}

static void bg_progress(void *mig, struct kv_stream *s, uint64_t pending)
{
	update_stats(mig, s);
	report_progress(mig, pending, 0);
}

static void bg_paused(void *mig, int64_t stop_ns)
{
	struct kv_migration *m = mig;

	pthread_mutex_lock(&m->lock);
	m->stats.downtime_ms = stop_ns / 1000000;
	pthread_mutex_unlock(&m->lock);
}

static int run_background(struct kv_migration *m, struct kv_stream *s,
			  bool *stopped, struct kv_error *err)
{
	const struct kv_bg_driver d = {
	    .sv = m->sv,
	    .rs = m->rs,
	    .hooks = &m->hooks,
	    .cancelled = bg_cancelled,
	    .progress = bg_progress,
	    .paused = bg_paused,
	    .mig = m,
	};

	m->pass = 1;
	return kv_bg_run(&d, s, stopped, err);
}

/* mapped-ram: the RAM handler's layout and writers, and the
 * configuration section that names it (migration/ram/mapped_ram.h). */
static void set_mapped_ram(struct kv_migration *m)
{
	struct kv_mapped_ram_cfg cfg = kv_mapped_ram_cfg_of(&m->params);

	kv_ram_set_mapped_ram(m->rs, &cfg);
	kv_savevm_set_mapped_ram(m->sv, kv_ram_mapped_ram_on(m->rs), false);
}

/* With postcopy-ram: ADVISE after the header (QEMU's place), and only
 * where the destination can ask for pages. */
static int postcopy_advise(struct kv_migration *m, struct kv_stream *s,
			   bool return_path, struct kv_error *err)
{
	struct kv_pc_advise a = {.has_sizes = true,
				 .host_page_size = KV_PAGE_SIZE,
				 .target_page_size = KV_PAGE_SIZE};
	uint8_t p[KV_PC_ADVISE_LEN];

	if (!m->params.postcopy_ram)
		return 0;
	if (!return_path || !m->rs)
		return kv_error_set(err, -EINVAL, "postcopy-ram needs a return path for the destination's page requests: migrate to a tcp: or unix: URI, or turn postcopy-ram off");
	kv_pc_advise_encode(&a, p);
	return kv_savevm_save_command(s, KV_MIG_CMD_POSTCOPY_ADVISE, p,
				      sizeof(p), err);
}

static int run_phases(struct kv_migration *m, struct kv_stream *s,
		      bool return_path, bool *stopped, struct kv_error *err)
{
	int ret;

	if (m->rs) {
		kv_ram_set_background(m->rs, m->params.background_snapshot);
		ret = kv_ram_set_xbzrle(m->rs, m->params.xbzrle_cache_size,
					err);
		if (ret < 0)
			return ret;
		kv_ram_set_compress(m->rs, m->params.compress);
		/* A page re-dirtied during a pass goes again after the
		 * switch: with postcopy-ram the pass skips it. */
		kv_ram_set_skip_redirtied(m->rs, m->params.postcopy_ram);
		set_mapped_ram(m);
	}
	ret = kv_savevm_save_header(m->sv, s, return_path, err);
	if (ret == 0)
		ret = postcopy_advise(m, s, return_path, err);
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
	if (m->params.background_snapshot)
		return run_background(m, s, stopped, err);
	ret = iterate_until_converged(m, s, err);
	if (ret == MIG_PC_SWITCH)
		return postcopy_run(m, s, stopped, err);
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
	    .tls = &p->tls,
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
	cfg.silence_ms = m->params.link_timeout_ms;
	cfg.activity = &m->life;
	/* mapped-ram's channels are the RAM handler's file writers. */
	if (!cfg.channels || !m->rs || m->params.mapped_ram)
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

/* ---- the switch-over's loose ends ---- */

/* GO left and was not answered: stopped, and saying so. */
static void enter_undecided(struct kv_migration *m, const struct kv_error *why)
{
	keep_error(m, why);
	if (!mig_set_status(m, KV_MIG_DEVICE, KV_MIG_UNDECIDED, true))
		mig_set_status(m, KV_MIG_CANCELLING, KV_MIG_UNDECIDED, true);
	kv_err("migration", "switch-over undecided: %s; the guest stays stopped here until the destination answers (kvmig asks it again every second) or an operator settles it with x-migrate-settle", why->msg);
}

/* The switch-over failed after OFFER and this side runs the guest: tell
 * the destination ABORT, so that one waiting with the guest loaded
 * discards it. True when it was written, or when the destination already
 * failed and said so (it waits for nothing). */
static bool send_abort(struct kv_migration *m, struct kv_stream *s)
{
	struct kv_error e = {0};
	uint32_t status;
	bool sent;

	__atomic_store_n(&m->decision, KV_SWO_ABORT, __ATOMIC_RELEASE);
	if (!m->rp)
		return false;
	if (kv_rp_reader_wait_shut(m->rp, 0, &status, &e) == 0)
		return true;
	return kv_swo_send_decision(s, &m->swo_id, KV_SWO_ABORT, &sent,
				    &e) == 0;
}

/* Did the destination hear ABORT (its SHUT says so)? If not, the caller
 * delivers it over new connections. */
static bool abort_heard(struct kv_migration *m, bool sent)
{
	struct kv_error e = {0};
	uint32_t status;

	return sent && m->rp &&
	       kv_rp_reader_wait_shut(m->rp, ABORT_HEARD_TIMEOUT_MS, &status,
				      &e) == 0;
}

/* The return path's reader and the multifd channels end with the run. */
static void release_channels(struct kv_migration *m)
{
	kv_rp_reader_stop(m->rp); /* before the caller closes the channel */
	m->rp = NULL;
	multifd_close(m);
}

static bool stop_resolving(const struct kv_migration *m)
{
	return __atomic_load_n(&m->stop_resolving, __ATOMIC_ACQUIRE) != 0;
}

/* One RESOLVE to the destination; logs what came of it now and then. */
static int resolve_once(struct kv_migration *m, enum kv_swo_decision d,
			unsigned attempt, enum kv_swo_ack *ack)
{
	struct kv_error e = {0};
	int ret;

	ret = kv_swo_resolve(m->uri, &m->params.tls, &m->swo_id, d, NULL, RESOLVE_TIMEOUT_MS,
			     ack, &e);
	if (ret == 0)
		kv_info("migration", "switch-over: the destination at %s answered %s to %s", m->uri, kv_swo_ack_name(*ack), kv_swo_decision_name(d));
	else if (attempt == 1 || attempt % 30 == 0)
		kv_warn("migration", "switch-over: cannot tell the destination at %s the decision (%s) yet, attempt %u: %s", m->uri, kv_swo_decision_name(d), attempt, e.msg);
	return ret;
}

/* Sleep until the next attempt, waking for an operator's word. */
static void resolve_pause(const struct kv_migration *m)
{
	int64_t until = kv_now_ns() + RESOLVE_RETRY_NS;
	struct timespec slice = {0, 50 * 1000000L};

	while (kv_now_ns() < until &&
	       !__atomic_load_n(&m->settle, __ATOMIC_ACQUIRE) &&
	       !stop_resolving(m))
		nanosleep(&slice, NULL);
}

/* The end of an undecided migration: the destination's answer or an
 * operator's word. 0: the destination runs the guest; <0: this side does. */
static int end_undecided(struct kv_migration *m, bool here, const char *why,
			 struct kv_error *err)
{
	kv_error_clear(err);
	if (!here) {
		pthread_mutex_lock(&m->lock);
		m->stats.error[0] = '\0'; /* completed: nothing failed */
		pthread_mutex_unlock(&m->lock);
		mig_set_status(m, KV_MIG_UNDECIDED, KV_MIG_COMPLETED, true);
		kv_info("migration", "switch-over settled: %s", why);
		return 0;
	}
	m->hooks.resume_vm(m->hooks.opaque);
	kv_error_set(err, -ECANCELED, "switch-over settled: %s", why);
	keep_error(m, err);
	mig_set_status(m, KV_MIG_UNDECIDED, KV_MIG_FAILED, true);
	return -ECANCELED;
}

/* UNDECIDED until the destination answers a RESOLVE(GO) or an operator
 * settles it; without an address (kv_mig_run) only the operator can. */
static int settle_undecided(struct kv_migration *m, struct kv_error *err)
{
	unsigned attempt = 0;

	for (;;) {
		enum kv_swo_settle how = (enum kv_swo_settle)__atomic_load_n(
		    &m->settle, __ATOMIC_ACQUIRE);
		enum kv_swo_ack ack;

		if (how == KV_SWO_SETTLE_RUN)
			return end_undecided(m, true, "the operator said the source runs the guest (x-migrate-settle run); the destination must not", err);
		if (how == KV_SWO_SETTLE_DISCARD)
			return end_undecided(m, false, "the operator dropped the source's copy (x-migrate-settle discard)", err);
		if (stop_resolving(m))
			return kv_error_set(err, -ECANCELED, "the process ends with the switch-over undecided: the guest stays with the destination if it heard GO, else nowhere runs it; settle the destination by hand");
		if (m->uri[0] &&
		    resolve_once(m, KV_SWO_GO, ++attempt, &ack) == 0) {
			if (ack == KV_SWO_ACK_RUNNING)
				return end_undecided(m, false, "the destination runs the guest (it answered the source's GO)", err);
			if (ack == KV_SWO_ACK_DISCARDED)
				return end_undecided(m, true, "the destination had discarded the guest (settled there by its operator); the source runs it", err);
		}
		resolve_pause(m);
	}
}

/* The guest runs here after a switch-over that failed past OFFER, and
 * the destination may not have heard ABORT: tell it over new
 * connections, for ABORT_DELIVERY_NS at most (a kv_mig_cancel stops it
 * sooner), so that it discards its copy instead of waiting. */
static void deliver_abort(struct kv_migration *m)
{
	int64_t end = kv_now_ns() + ABORT_DELIVERY_NS;
	unsigned attempt = 0;
	enum kv_swo_ack ack;

	while (m->uri[0] && !stop_resolving(m) && kv_now_ns() < end) {
		if (resolve_once(m, KV_SWO_ABORT, ++attempt, &ack) == 0)
			return;
		resolve_pause(m);
	}
	if (m->uri[0] && !stop_resolving(m))
		kv_warn("migration", "switch-over: the destination at %s never heard ABORT; if it still waits with the guest loaded (x-undecided), settle it there with x-migrate-settle discard: the source runs the guest", m->uri);
}

void kv_mig_stop_resolving(struct kv_migration *m)
{
	__atomic_store_n(&m->stop_resolving, 1, __ATOMIC_RELEASE);
}

int kv_mig_settle(struct kv_migration *m, enum kv_swo_settle how,
		  struct kv_error *err)
{
	int expected = KV_SWO_SETTLE_NONE;

	if (kv_swo_settle_check(how, err) < 0)
		return err->code;
	if (kv_mig_status(m) == KV_MIG_POSTCOPY_PAUSED &&
	    how == KV_SWO_SETTLE_DISCARD)
		return kv_error_set(err, -EINVAL, "x-migrate-settle: discard does not apply to a postcopy-paused source (its copy is the only one of the pages the destination lacks); run resumes the guest here when the destination never started it");
	if (kv_mig_status(m) != KV_MIG_UNDECIDED &&
	    kv_mig_status(m) != KV_MIG_POSTCOPY_PAUSED)
		return kv_error_set(err, -EBUSY, "x-migrate-settle: the outgoing migration is not undecided or postcopy-paused (status %s); only a switch-over whose GO or POSTCOPY_RUN the destination never confirmed can be settled by hand", kv_mig_status_name(kv_mig_status(m)));
	if (!__atomic_compare_exchange_n(&m->settle, &expected, (int)how,
					 false, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE))
		return kv_error_set(err, -EBUSY, "x-migrate-settle: already settled");
	return 0;
}

static int postcopy_take_bitmap(struct kv_migration *m, size_t i,
				struct kv_error *err);
static struct kv_chan *connect_main(struct kv_migration *m, const char *uri,
				    int *ret, struct kv_error *err);
static int preempt_connect(struct kv_migration *m, const char *uri,
			   struct kv_error *err);
static void preempt_close(struct kv_migration *m);

/* POSTCOPY_RUN left and the link broke: stopped for good here (the
 * guest runs on the destination), saying why. */
static int enter_postcopy_paused(struct kv_migration *m, struct kv_error *why)
{
	keep_error(m, why);
	if (!mig_set_status(m, KV_MIG_POSTCOPY_ACTIVE, KV_MIG_POSTCOPY_PAUSED,
			    true))
		mig_set_status(m, KV_MIG_POSTCOPY_RECOVER,
			       KV_MIG_POSTCOPY_PAUSED, true);
	kv_err("migration", "%s", why->msg);
	return why->code < 0 ? why->code : -EPIPE;
}

/* Paused: wait for migrate with resume (0, *uri set) or the end of the
 * process (<0: the guest stays stopped here). */
static int wait_resume(struct kv_migration *m, char *uri, size_t size,
		       struct kv_error *err)
{
	struct timespec slice = {0, 50 * 1000000L};

	for (;;) {
		bool asked;

		pthread_mutex_lock(&m->lock);
		asked = m->resume_req;
		m->resume_req = false;
		if (asked)
			snprintf(uri, size, "%s", m->resume_uri);
		pthread_mutex_unlock(&m->lock);
		if (asked)
			return 0;
		if (__atomic_load_n(&m->settle, __ATOMIC_ACQUIRE) ==
		    KV_SWO_SETTLE_RUN)
			return MIG_PC_SETTLED;
		/* query-migrate while paused: the last bytes the broken
		 * links (multifd's channels too) carried count. */
		update_stats(m, m->stream);
		if (stop_resolving(m))
			return kv_error_set(err, -ECANCELED, "the process ends with postcopy paused: the guest runs on the destination, which lacks pages only this source had; it cannot be completed");
		nanosleep(&slice, NULL);
	}
}

/* Recovery, QEMU's order: RECV_BITMAP for every block, each answered by
 * the destination's received bitmap (what it lacks is sent again), then
 * POSTCOPY_RESUME, answered by RESUME_ACK. With postcopy-preempt a new
 * preempt channel is connected after POSTCOPY_RESUME left: the
 * destination, which tells the channels apart by their order, has taken
 * the main one by then, and accepts this one (TLS handshake included)
 * when it reads POSTCOPY_RESUME, before its RESUME_ACK. */
static int postcopy_handshake(struct kv_migration *m, struct kv_stream *s,
			      const char *uri, struct kv_error *err)
{
	size_t n = kv_ram_block_count(m->rs);
	int ret = 0;

	for (size_t i = 0; i < n && ret == 0; i++) {
		uint8_t p[1 + KV_PC_IDSTR_MAX];
		int len = kv_pc_named_encode(kv_ram_block(m->rs, i)->idstr, p,
					     err);

		ret = len < 0 ? len
			      : kv_savevm_save_command(s, KV_MIG_CMD_RECV_BITMAP,
						       p, (uint16_t)len, err);
	}
	if (ret == 0 && kv_stream_flush(s) < 0)
		ret = kv_stream_error(s);
	for (size_t i = 0; i < n && ret == 0; i++)
		ret = postcopy_take_bitmap(m, i, err);
	if (ret == 0)
		ret = kv_savevm_save_command(s, KV_MIG_CMD_POSTCOPY_RESUME, NULL,
					     0, err);
	if (ret == 0 && kv_stream_flush(s) < 0)
		ret = kv_stream_error(s);
	if (ret == 0)
		ret = preempt_connect(m, uri, err);
	if (ret == 0)
		ret = kv_rp_reader_wait_resume_ack(m->rp,
						   m->params.rp_timeout_ms, err);
	if (ret < 0 && !kv_error_is_set(err))
		kv_stream_error_get(s, err);
	return ret;
}

/* One block's received bitmap, from the return path into the queue and
 * the RAM's bitmap of pages to send. */
static int postcopy_take_bitmap(struct kv_migration *m, size_t i,
				struct kv_error *err)
{
	struct kv_ram_block *b = kv_ram_block(m->rs, i);
	unsigned long *map = kv_bitmap_new(b->npages);
	uint8_t *blob = NULL;
	size_t len = 0;
	int ret;

	if (!map)
		return kv_error_set(err, -ENOMEM, "postcopy: out of memory");
	ret = kv_rp_reader_wait_bitmap(m->rp, b->idstr, m->params.rp_timeout_ms,
				       &blob, &len, err);
	if (ret == 0)
		ret = kv_pc_recv_bitmap_decode(blob, len, b->npages, b->idstr,
					       map, err);
	if (ret == 0) {
		kv_pc_src_set_received(m->pcs, i, map);
		kv_ram_pc_src_resume(m->rs, i, map);
	}
	free(blob);
	kv_bitmap_free(map);
	return ret;
}

/* migrate with resume: a new link to uri, the handshake, then the rest
 * of postcopy. 0 completed; MIG_PC_PAUSED (err says why) otherwise. */
static int postcopy_resume(struct kv_migration *m, const char *uri,
			   struct kv_error *err)
{
	struct kv_stream *s;
	struct kv_chan *c;
	int ret;

	kv_info("migration", "postcopy: resuming over %s", uri);
	preempt_close(m); /* the broken link's; its thread has ended */
	c = connect_main(m, uri, &ret, err);
	s = c ? kv_stream_new(c, KV_STREAM_WRITE) : NULL;
	if (!s) {
		kv_chan_close(c);
		if (!kv_error_is_set(err))
			kv_error_set(err, -ENOMEM, "no memory for the stream");
		return postcopy_broken(m, err);
	}
	pthread_mutex_lock(&m->lock);
	m->pc_bytes += kv_stream_transferred(m->stream);
	pthread_mutex_unlock(&m->lock);
	kv_stream_close(m->pc_stream); /* the previous recovery's */
	pthread_mutex_lock(&m->lock);
	m->pc_stream = s;
	m->stream = s;
	pthread_mutex_unlock(&m->lock);
	watch_link(m, s);
	kv_pc_src_flush(m->pcs); /* the broken link's requests */
	m->rp = kv_rp_reader_start(c, err);
	if (!m->rp)
		return postcopy_broken(m, err);
	kv_rp_reader_set_postcopy(m->rp, m->pcs);
	ret = postcopy_handshake(m, s, uri, err);
	if (ret < 0)
		return postcopy_broken(m, err);
	mig_set_status(m, KV_MIG_POSTCOPY_RECOVER, KV_MIG_POSTCOPY_ACTIVE, true);
	kv_info("migration", "postcopy: resumed (RESUME_ACK)%s", m->pre_chan ? " with a new preempt channel" : "");
	preempt_start(m);
	return postcopy_finish(m, s, err);
}

/* POSTCOPY_RUN left and the link broke: paused until migrate with
 * resume brings a new link (again after each break), or the process
 * ends. 0: completed after a recovery; <0: still paused. */
static int postcopy_paused_loop(struct kv_migration *m, struct kv_error *err)
{
	char uri[sizeof(m->resume_uri)];
	int ret;

	for (;;) {
		enter_postcopy_paused(m, err);
		kv_rp_reader_stop(m->rp); /* the broken link's */
		m->rp = NULL;
		kv_error_clear(err);
		ret = wait_resume(m, uri, sizeof(uri), err);
		if (ret == MIG_PC_SETTLED) {
			kv_error_set(err, -ECANCELED, "postcopy settled: the operator said the source runs the guest (x-migrate-settle run): the destination never started it");
			keep_error(m, err);
			/* Running before FAILED is told: the run state
			 * follows the vCPUs (as after a failed switch-over). */
			m->hooks.resume_vm(m->hooks.opaque);
			mig_set_status(m, KV_MIG_POSTCOPY_PAUSED, KV_MIG_FAILED,
				       true);
			kv_info("migration", "%s", err->msg);
			return -ECANCELED;
		}
		if (ret < 0)
			return ret;
		mig_set_status(m, KV_MIG_POSTCOPY_PAUSED, KV_MIG_POSTCOPY_RECOVER,
			       true);
		ret = postcopy_resume(m, uri, err);
		if (ret == 0)
			return 0;
	}
}

int kv_mig_resume(struct kv_migration *m, const char *uri,
		  struct kv_error *err)
{
	if (kv_mig_status(m) != KV_MIG_POSTCOPY_PAUSED)
		return kv_error_set(err, -EBUSY, "migrate with resume: the migration is %s, not postcopy-paused", kv_mig_status_name(kv_mig_status(m)));
	pthread_mutex_lock(&m->lock);
	snprintf(m->resume_uri, sizeof(m->resume_uri), "%s", uri);
	snprintf(m->uri, sizeof(m->uri), "%s", uri);
	m->resume_req = true;
	pthread_mutex_unlock(&m->lock);
	return 0;
}

int kv_mig_pause_refused(struct kv_error *err)
{
	return kv_error_set(err, -EBUSY, "migrate-pause is currently only supported during postcopy-active or postcopy-recover state");
}

int kv_mig_pause(struct kv_migration *m, struct kv_error *err)
{
	enum kv_mig_status st = kv_mig_status(m);

	if (st != KV_MIG_POSTCOPY_ACTIVE && st != KV_MIG_POSTCOPY_RECOVER)
		return kv_mig_pause_refused(err);
	kv_warn("migration", "migrate-pause: the source breaks the link of postcopy on purpose");
	pthread_mutex_lock(&m->lock);
	if (m->stream)
		kv_stream_shutdown(m->stream);
	pthread_mutex_unlock(&m->lock);
	return 0;
}

/* A recovery's stream, once its reader stopped. */
static void postcopy_close_stream(struct kv_migration *m)
{
	kv_stream_close(m->pc_stream);
	m->pc_stream = NULL;
}

/* The run from SETUP (or CANCELLING, after a cancel that came first). */
static int run_from_setup(struct kv_migration *m, struct kv_stream *s,
			  struct kv_error *err)
{
	struct kv_error lerr = {0};
	bool return_path = false, stopped = false, cancelled, paused;
	bool settled = false; /* postcopy-paused, then x-migrate-settle run */
	bool abort_sent = false;
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
	/* A background snapshot has none, as QEMU's (which refuses the
	 * return-path capability with it): nothing to hand over. */
	return_path = kv_stream_chan(s)->is_socket &&
		      !m->params.background_snapshot;
	watch_link(m, s);
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
	    !mig_set_status(m, m->params.background_snapshot ? KV_MIG_ACTIVE
							     : KV_MIG_DEVICE,
			    KV_MIG_COMPLETED, true) &&
	    !mig_set_status(m, KV_MIG_POSTCOPY_ACTIVE, KV_MIG_COMPLETED, true))
		mig_set_status(m, KV_MIG_CANCELLING, KV_MIG_COMPLETED, true);
	if (ret == SWO_UNANSWERED)
		enter_undecided(m, &lerr);
	if (ret == MIG_PC_PAUSED) {
		ret = postcopy_paused_loop(m, &lerr);
		settled = ret < 0 && kv_mig_status(m) == KV_MIG_FAILED;
	}
	if (ret == 0 && kv_mig_status(m) == KV_MIG_POSTCOPY_ACTIVE)
		mig_set_status(m, KV_MIG_POSTCOPY_ACTIVE, KV_MIG_COMPLETED, true);
out:
	paused = kv_mig_status(m) == KV_MIG_POSTCOPY_PAUSED;
	cancelled = ret < 0 && cancel_requested(m);
	if (paused || settled)
		;
	else if (ret < 0 && !cancelled && link_went_silent(m, &lerr))
		name_silent_phase(m, &lerr);
	else if (ret < 0 && !cancelled && m->rp && kv_stream_error(s)) {
		explain_by_destination(m, s, &lerr);
		if (link_went_silent(m, &lerr)) /* the reader saw it first */
			name_silent_phase(m, &lerr);
	}
	if (ret < 0)
		record_pass_pages(m); /* the pass it stopped in */
	kv_savevm_save_cleanup(m->sv, ret != 0);
	if (m->rs)
		kv_ram_pc_src_end(m->rs);
	throttle_off(m);
	if (ret < 0 && stopped && !paused && !settled)
		m->hooks.resume_vm(m->hooks.opaque);
	/* The guest runs here again; a destination that may be waiting
	 * with it loaded must hear that it will not. */
	if (ret < 0 && m->offered)
		abort_sent = send_abort(m, s);
	update_stats(m, s);
	kv_stream_share_rate_limit(s, NULL); /* m may go before s */
	pthread_mutex_lock(&m->lock);
	m->stream = NULL;
	pthread_mutex_unlock(&m->lock);
	if (ret >= 0) {
		release_channels(m);
		postcopy_close_stream(m);
		return ret; /* COMPLETED, or UNDECIDED (the caller settles) */
	}
	if (cancelled) {
		announce_cancelling(m);
		mig_set_status(m, KV_MIG_CANCELLING, KV_MIG_CANCELLED, true);
		kv_error_clear(&lerr);
		kv_error_set(&lerr, -ECANCELED, "migration cancelled%s",
			     stopped ? "; the source took its guest back" : "");
		ret = -ECANCELED;
	} else if (!paused) {
		if (!kv_error_is_set(&lerr))
			kv_error_set(&lerr, ret, "migration failed");
		keep_error(m, &lerr);
		/* A cancel may still race the failure: it then wins. */
		do
			st = kv_mig_status(m);
		while (st != KV_MIG_CANCELLING && st != KV_MIG_FAILED &&
		       !mig_set_status(m, st, KV_MIG_FAILED, true));
		if (st == KV_MIG_CANCELLING) {
			announce_cancelling(m);
			mig_set_status(m, st, KV_MIG_CANCELLED, true);
		}
	}
	/* The status is final and the guest runs: now there is time to
	 * hear whether the destination got ABORT. */
	if (m->offered && !abort_heard(m, abort_sent))
		m->abort_unheard = true;
	release_channels(m);
	postcopy_close_stream(m);
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
	int ret;

	if (!enter_setup(m))
		return refuse_second_run(m, err);
	ret = run_from_setup(m, s, err);
	if (ret == SWO_UNANSWERED)
		ret = settle_undecided(m, err);
	return ret;
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
	/* A cancel is no failure: the connect it abandoned says nothing. */
	pthread_mutex_lock(&m->lock);
	m->stats.error[0] = '\0';
	pthread_mutex_unlock(&m->lock);
	announce_cancelling(m);
	mig_set_status(m, st, KV_MIG_CANCELLED, true);
	kv_error_clear(err);
	return kv_error_set(err, -ECANCELED, "migration cancelled");
}

/* Settings that cannot work together are refused before anything
 * connects: a destination never sees a source that gives up at once. */
static int refuse_conflicting_params(const struct kv_migration *m,
				     struct kv_error *err)
{
	int ret;

	if (m->rs && m->params.multifd_channels && m->params.postcopy_ram &&
	    m->params.postcopy_preempt)
		return kv_error_set(err, -EINVAL, "postcopy-preempt with multifd is not supported by kvmig: the destination tells the preempt channel by its place after the main one (QEMU 7.2's rule), where multifd's channels come; turn postcopy-preempt off (with multifd, background pages take the multifd channels and requested pages the main stream) or multifd off");
	if (m->rs && m->params.multifd_channels && m->params.xbzrle_cache_size)
		return kv_error_set(err, -EINVAL, "the xbzrle and multifd capabilities cannot be used together (as in QEMU): turn one of them off");
	ret = kv_bg_check_params(&m->params, err);
	if (ret < 0)
		return ret;
	return kv_mapped_ram_check_params(&m->params, m->uri, err);
}

/* postcopy-preempt: QEMU 7.2's second connection, made at setup (the
 * destination takes the one after the main channel as the preempt
 * channel); nothing goes on it before POSTCOPY_RUN. */
static int preempt_connect(struct kv_migration *m, const char *uri,
			   struct kv_error *err)
{
	int ret;

	if (!m->params.postcopy_ram || !m->params.postcopy_preempt || !m->rs)
		return 0;
	m->pre_chan = connect_main(m, uri, &ret, err);
	if (!m->pre_chan)
		kv_error_prefix(err, "postcopy-preempt channel");
	return m->pre_chan ? 0 : ret;
}

static void preempt_close(struct kv_migration *m)
{
	if (m->pre_stream)
		kv_stream_close(m->pre_stream);
	else
		kv_chan_close(m->pre_chan);
	m->pre_stream = NULL;
	m->pre_chan = NULL;
}

/* The main channel, abandoned at once by kv_mig_cancel and after
 * x-connect-timeout. */
static struct kv_chan *connect_main(struct kv_migration *m, const char *uri,
				    int *ret, struct kv_error *err)
{
	struct kv_chan *c;

	c = kv_chan_connect_cancellable(uri, m->connect_cancel,
					m->params.connect_timeout_ms, err);
	c = kv_mig_tls_client(c, &m->params.tls, uri,
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
	snprintf(m->uri, sizeof(m->uri), "%s", uri);
	ret = refuse_conflicting_params(m, &lerr);
	if (ret == 0)
		ret = kv_mig_tls_check(&m->params.tls, false, &lerr);
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
	if (ret == 0)
		ret = preempt_connect(m, uri, &lerr);
	if (ret == 0) {
		ret = run_from_setup(m, s, &lerr);
	} else {
		multifd_close(m);
		ret = end_before_run(m, ret, &lerr);
	}
	if (s)
		kv_stream_close(s);
	preempt_close(m);
	if (ret == SWO_UNANSWERED)
		ret = settle_undecided(m, &lerr);
	else if (ret < 0 && m->abort_unheard)
		deliver_abort(m);
	kv_error_propagate(err, &lerr);
	return ret;
}
