/* SPDX-License-Identifier: MIT */
/*
 * Auto-converge policy: how hard to throttle the vCPUs, decided after each
 * dirty-bitmap sync from what the guest dirtied and what the link carried
 * during the period. Pure logic (no threads, no clock of its own); the
 * mechanism that makes vCPUs sleep is kv_vm_set_throttle (vmm/vm.h).
 *
 * QEMU's rules (migration/ram/ram.c), parameters under QEMU's QMP names:
 *  - a period is "high" when bytes dirtied > throttle-trigger-threshold %
 *    of bytes transferred;
 *  - the second high period since the last throttle step (QEMU counts high
 *    periods, a low period does not reset the count) throttles: first to
 *    cpu-throttle-initial, then + cpu-throttle-increment each time, never
 *    above max-cpu-throttle;
 *  - cpu-throttle-tailslow: the increment is at most what would bring the
 *    guest's CPU share to the share at which its dirty rate would meet the
 *    threshold, so the throttle does not overshoot near the top.
 * Difference from QEMU: the first step is also capped by max-cpu-throttle
 * (QEMU applies cpu-throttle-initial even when it is above the maximum).
 */
#ifndef KV_MIGRATION_AUTO_CONVERGE_H
#define KV_MIGRATION_AUTO_CONVERGE_H

#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"

#define KV_AUTOCONV_DEFAULT_INITIAL   20
#define KV_AUTOCONV_DEFAULT_INCREMENT 10
#define KV_AUTOCONV_DEFAULT_MAX	      99
#define KV_AUTOCONV_DEFAULT_THRESHOLD 50
/* QEMU looks at the dirty rate only once a period lasted this long. */
#define KV_AUTOCONV_MIN_PERIOD_NS 1000000000LL

struct kv_autoconv_params {
	unsigned initial;	    /* cpu-throttle-initial, 1..99 */
	unsigned increment;	    /* cpu-throttle-increment, 1..100 */
	unsigned max;		    /* max-cpu-throttle, 1..99 */
	unsigned trigger_threshold; /* throttle-trigger-threshold, 1..100 */
	bool tailslow;		    /* cpu-throttle-tailslow */
};

struct kv_autoconv {
	struct kv_autoconv_params p;
	unsigned pct;	     /* current throttle, 0 = none */
	unsigned high_count; /* QEMU's dirty_rate_high_cnt */
	uint64_t steps;	     /* times the throttle was raised */
	/* kv_autoconv_note_sync's accumulation of the current period */
	int64_t period_start_ns;
	uint64_t period_dirtied;
	uint64_t period_sent;
};

/* QEMU's defaults: 20, 10, 99, 50, tailslow off. */
void kv_autoconv_params_default(struct kv_autoconv_params *p);

/* 0, or -EINVAL with a message naming the parameter and its range. */
int kv_autoconv_params_check(const struct kv_autoconv_params *p,
			     struct kv_error *err);

/* Start a migration's policy at no throttle (params copied). */
void kv_autoconv_init(struct kv_autoconv *ac,
		      const struct kv_autoconv_params *p);

/* Parameters changed mid-migration (migrate-set-parameters): used from the
 * next decision on; the current throttle and count stay. */
void kv_autoconv_set_params(struct kv_autoconv *ac,
			    const struct kv_autoconv_params *p);

/* One period ended: bytes the guest dirtied and bytes sent during it.
 * Returns the throttle percentage to apply now (0 = none); unchanged
 * unless this period made a step. */
unsigned kv_autoconv_after_sync(struct kv_autoconv *ac,
				uint64_t bytes_dirtied_in_period,
				uint64_t bytes_sent_in_period);

/* QEMU's framing of periods for callers that sync more often than once a
 * second: adds one sync's dirtied/sent bytes to the running period and
 * decides (kv_autoconv_after_sync) only once the period lasted
 * KV_AUTOCONV_MIN_PERIOD_NS, then starts the next. The first call only
 * starts the period. Returns the throttle percentage to apply now. */
unsigned kv_autoconv_note_sync(struct kv_autoconv *ac, int64_t now_ns,
			       uint64_t bytes_dirtied_since_last_sync,
			       uint64_t bytes_sent_since_last_sync);

static inline unsigned kv_autoconv_pct(const struct kv_autoconv *ac)
{
	return ac->pct;
}

#endif
