/* SPDX-License-Identifier: MIT */
/* x-postcopy-auto: switch to postcopy when precopy will not converge. */
#include "migration/postcopy/postcopy_auto.h"

#include <stdio.h>
#include <string.h>

#include "base/units.h"

void kv_pc_auto_init(struct kv_pc_auto *a)
{
	memset(a, 0, sizeof(*a));
}

static double pass_seconds(const struct kv_pc_auto_sample *s)
{
	return s->pass_ns > 1000000 ? (double)s->pass_ns / 1e9 : 1e-3;
}

static double wire_rate(const struct kv_pc_auto_sample *s)
{
	return (double)s->sent_bytes / pass_seconds(s);
}

/* Page bytes a second: what the dirty set drains at. */
static double page_rate(const struct kv_pc_auto_sample *s)
{
	return wire_rate(s) * (s->wire_factor > 0 ? s->wire_factor : 1.0);
}

/* The most the source may put on the wire: the lower of the link's
 * measured rate and the rate limit; 0 when neither is known. */
static double wire_cap(const struct kv_pc_auto_sample *s)
{
	double limit = (double)s->rate_limit_bps;

	if (s->link_bps > 0 && (limit <= 0 || s->link_bps < limit))
		return s->link_bps;
	return limit;
}

/* Did the pass run as fast as the source will go: at the link (or the
 * cap), or, neither known, as fast as the fastest pass before it? */
static bool at_best_rate(const struct kv_pc_auto *a,
			 const struct kv_pc_auto_sample *s)
{
	double cap = wire_cap(s);

	if (cap > 0)
		return wire_rate(s) >= KV_PC_AUTO_LINK_BOUND * cap;
	return a->best_wire_bps > 0 &&
	       wire_rate(s) >= KV_PC_AUTO_LINK_BOUND * a->best_wire_bps;
}

/* What could go within the downtime limit at the pass's page rate. */
static double fits_in_downtime(const struct kv_pc_auto_sample *s)
{
	return page_rate(s) * (double)s->downtime_limit_ms / 1000.0;
}

static double mib(double bytes)
{
	return bytes / KV_MiB_F;
}

/* "while the link carries ..." or "while the source moves ..., below
 * ...": which one limited the pass. */
static void describe_limit(const struct kv_pc_auto *a,
			   const struct kv_pc_auto_sample *s, char *buf,
			   size_t len)
{
	double cap = wire_cap(s);
	bool by_limit = s->rate_limit_bps && cap == (double)s->rate_limit_bps;

	if (cap <= 0 && at_best_rate(a, s))
		snprintf(
		    buf, len,
		    "the source moves %.0f MiB/s, about as fast as its fastest pass before (%.0f MiB/s; the link's rate unknown)",
		    mib(wire_rate(s)), mib(a->best_wire_bps));
	else if (at_best_rate(a, s))
		snprintf(
		    buf, len, "the link carries %.0f MiB/s (%s %.0f MiB/s)",
		    mib(wire_rate(s)),
		    by_limit ? "max-bandwidth" : "measured rate", mib(cap));
	else if (cap > 0)
		snprintf(
		    buf, len,
		    "the source moves %.0f MiB/s, below the link's %.0f MiB/s (the source, not the link, is the limit)",
		    mib(wire_rate(s)), mib(cap));
	else
		snprintf(
		    buf, len,
		    "the source moves %.0f MiB/s (the link's rate unknown)",
		    mib(wire_rate(s)));
}

static enum kv_pc_auto_verdict fire(struct kv_pc_auto *a,
				    const struct kv_pc_auto_sample *s,
				    char *reason, size_t len)
{
	char limit[160], throttle[64] = "";

	a->fired = true;
	describe_limit(a, s, limit, sizeof(limit));
	if (s->throttle_pct)
		snprintf(throttle, sizeof(throttle),
			 "; auto-converge throttles the guest by %u %%",
			 s->throttle_pct);
	snprintf(
	    reason, len,
	    "the dirty set stopped shrinking for %u %s (%.0f -> %.0f MiB) while the guest dirties at least %.0f MiB/s and %s: %.0f MiB cannot go within the %llu ms downtime limit (%.0f MiB can)%s",
	    a->stalled, a->stalled == 1 ? "pass" : "passes",
	    mib((double)a->stall_from), mib((double)s->dirty_bytes),
	    mib((double)s->dirty_bytes / pass_seconds(s)), limit,
	    mib((double)s->dirty_bytes),
	    (unsigned long long)s->downtime_limit_ms, mib(fits_in_downtime(s)),
	    throttle);
	return KV_PC_AUTO_SWITCH;
}

/* One pass against the previous one (PREV: what it left dirty). */
static enum kv_pc_auto_verdict judge(struct kv_pc_auto *a,
				     const struct kv_pc_auto_sample *s,
				     uint64_t prev, char *reason, size_t len)
{
	unsigned need;

	if (a->passes == 1) {
		snprintf(
		    reason, len,
		    "first pass (all of RAM): nothing to compare yet, %.0f MiB left",
		    mib((double)s->dirty_bytes));
		return KV_PC_AUTO_WAIT;
	}
	if ((double)s->dirty_bytes <= fits_in_downtime(s)) {
		a->stalled = 0;
		snprintf(
		    reason, len,
		    "%.0f MiB left fits the %llu ms downtime limit: precopy can switch over",
		    mib((double)s->dirty_bytes),
		    (unsigned long long)s->downtime_limit_ms);
		return KV_PC_AUTO_WAIT;
	}
	if ((double)s->dirty_bytes < KV_PC_AUTO_SHRINK * (double)prev) {
		a->stalled = 0;
		snprintf(reason, len,
			 "the dirty set shrank from %.0f to %.0f MiB",
			 mib((double)prev), mib((double)s->dirty_bytes));
		return KV_PC_AUTO_WAIT;
	}
	if (a->stalled++ == 0)
		a->stall_from = prev;
	need = at_best_rate(a, s) ? KV_PC_AUTO_STALLS_LINK
				  : KV_PC_AUTO_STALLS_OTHER;
	if (at_best_rate(a, s) &&
	    (double)s->dirty_bytes >= KV_PC_AUTO_GROWTH * (double)prev)
		need = 1;
	if (a->stalled >= need)
		return fire(a, s, reason, len);
	snprintf(
	    reason, len,
	    "the dirty set did not shrink (%.0f -> %.0f MiB): %u of %u passes",
	    mib((double)prev), mib((double)s->dirty_bytes), a->stalled, need);
	return KV_PC_AUTO_WAIT;
}

enum kv_pc_auto_verdict kv_pc_auto_note_pass(struct kv_pc_auto *a,
					     const struct kv_pc_auto_sample *s,
					     char *reason, size_t reason_len)
{
	uint64_t prev = a->prev_dirty;
	enum kv_pc_auto_verdict v;

	if (a->fired) {
		snprintf(reason, reason_len, "already switched to postcopy");
		return KV_PC_AUTO_WAIT;
	}
	a->passes++;
	a->prev_dirty = s->dirty_bytes;
	v = judge(a, s, prev, reason, reason_len);
	/* After judging: "the fastest pass so far" is the passes before. */
	if (wire_rate(s) > a->best_wire_bps)
		a->best_wire_bps = wire_rate(s);
	return v;
}
