/* SPDX-License-Identifier: MIT */
/* Auto-converge: the throttle decision after each dirty sync. */
#include "migration/auto_converge.h"

#include <errno.h>
#include <string.h>

/* What the vCPU throttle itself accepts (kv_vm_set_throttle). */
#define THROTTLE_PCT_MAX 99

void kv_autoconv_params_default(struct kv_autoconv_params *p)
{
	p->initial = KV_AUTOCONV_DEFAULT_INITIAL;
	p->increment = KV_AUTOCONV_DEFAULT_INCREMENT;
	p->max = KV_AUTOCONV_DEFAULT_MAX;
	p->trigger_threshold = KV_AUTOCONV_DEFAULT_THRESHOLD;
	p->tailslow = false;
}

static int check_range(const char *name, unsigned v, unsigned lo, unsigned hi,
		       struct kv_error *err)
{
	if (v >= lo && v <= hi)
		return 0;
	return kv_error_set(err, -EINVAL,
			    "parameter '%s' is %u: expects an integer in the range of %u to %u",
			    name, v, lo, hi);
}

int kv_autoconv_params_check(const struct kv_autoconv_params *p,
			     struct kv_error *err)
{
	int rc;

	if ((rc =
		 check_range("cpu-throttle-initial", p->initial, 1, 99, err)) ||
	    (rc = check_range("cpu-throttle-increment", p->increment, 1, 100,
			      err)) ||
	    (rc = check_range("max-cpu-throttle", p->max, 1, 99, err)) ||
	    (rc = check_range("throttle-trigger-threshold",
			      p->trigger_threshold, 1, 100, err)))
		return rc;
	return 0;
}

void kv_autoconv_init(struct kv_autoconv *ac,
		      const struct kv_autoconv_params *p)
{
	memset(ac, 0, sizeof(*ac));
	ac->p = *p;
	ac->period_start_ns = -1;
}

void kv_autoconv_set_params(struct kv_autoconv *ac,
			    const struct kv_autoconv_params *p)
{
	ac->p = *p;
}

static unsigned min_u(unsigned a, unsigned b)
{
	return a < b ? a : b;
}

/* The ceiling of a step: max-cpu-throttle, and never beyond what the
 * vCPU throttle accepts even if the caller skipped the check. */
static unsigned ceiling(const struct kv_autoconv *ac)
{
	return min_u(ac->p.max ? ac->p.max : 1, THROTTLE_PCT_MAX);
}

/*
 * Tailslow: the guest runs cpu_now = 100 - pct percent of the time and
 * dirtied `dirtied` bytes, `allowed` being what the threshold allows. At
 * the same dirty rate per unit of CPU, it would meet the threshold with
 * cpu_now * allowed / dirtied percent: raise the throttle by the
 * difference, but never by more than the configured increment. Rounding
 * the ideal share down keeps the step at least 1 (allowed < dirtied).
 */
static unsigned tailslow_increment(const struct kv_autoconv *ac,
				   uint64_t dirtied, uint64_t allowed)
{
	unsigned cpu_now = 100 - ac->pct;
	unsigned cpu_ideal =
	    (unsigned)((double)cpu_now * ((double)allowed / (double)dirtied));

	if (cpu_ideal >= cpu_now) /* cannot happen for allowed < dirtied */
		cpu_ideal = cpu_now - 1;
	return min_u(cpu_now - cpu_ideal, ac->p.increment);
}

static unsigned next_pct(const struct kv_autoconv *ac, uint64_t dirtied,
			 uint64_t allowed)
{
	unsigned step;

	if (ac->pct == 0)
		return min_u(ac->p.initial, ceiling(ac));
	step = ac->p.tailslow ? tailslow_increment(ac, dirtied, allowed)
			      : ac->p.increment;
	return min_u(ac->pct + step, ceiling(ac));
}

unsigned kv_autoconv_after_sync(struct kv_autoconv *ac,
				uint64_t bytes_dirtied_in_period,
				uint64_t bytes_sent_in_period)
{
	/* The product stays in 64 bits for any sent below 2^57 bytes. */
	uint64_t allowed = bytes_sent_in_period * ac->p.trigger_threshold / 100;

	if (bytes_dirtied_in_period <= allowed)
		return ac->pct;
	if (++ac->high_count < 2)
		return ac->pct;
	ac->high_count = 0;
	ac->pct = next_pct(ac, bytes_dirtied_in_period, allowed);
	ac->steps++;
	return ac->pct;
}

unsigned kv_autoconv_note_sync(struct kv_autoconv *ac, int64_t now_ns,
			       uint64_t bytes_dirtied_since_last_sync,
			       uint64_t bytes_sent_since_last_sync)
{
	uint64_t dirtied, sent;

	if (ac->period_start_ns < 0) {
		/* The setup sync sees all of RAM dirty: not a rate. */
		ac->period_start_ns = now_ns;
		return ac->pct;
	}
	ac->period_dirtied += bytes_dirtied_since_last_sync;
	ac->period_sent += bytes_sent_since_last_sync;
	if (now_ns - ac->period_start_ns < KV_AUTOCONV_MIN_PERIOD_NS)
		return ac->pct;
	dirtied = ac->period_dirtied;
	sent = ac->period_sent;
	ac->period_start_ns = now_ns;
	ac->period_dirtied = 0;
	ac->period_sent = 0;
	return kv_autoconv_after_sync(ac, dirtied, sent);
}
