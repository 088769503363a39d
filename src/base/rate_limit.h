/* SPDX-License-Identifier: MIT */
/*
 * One rate limiter (max-bandwidth) for every sender of a migration: the
 * main stream and all multifd channels charge the same limiter, so the cap
 * holds over the sum.
 *
 * A sender charges the bytes it is about to write and learns when they may
 * go (kv_rate_limit_charge), then waits until then (kv_rate_limit_wait).
 * The schedule restarts when a sender was idle for longer than a window,
 * so a pause never builds up credit for a burst.
 *
 * The limit may change from any thread at any time (QMP
 * migrate-set-parameters during a migration) and starts a new schedule;
 * charging is thread-safe.
 */
#ifndef KV_BASE_RATE_LIMIT_H
#define KV_BASE_RATE_LIMIT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

/* The schedule's window: idle longer than this forfeits the credit. */
#define KV_RATE_WINDOW_NS 100000000LL

struct kv_rate_limit {
	uint64_t bps; /* bytes/s, 0 = unlimited; atomic */
	pthread_mutex_t lock;
	int64_t start_ns; /* when the schedule started */
	uint64_t charged; /* bytes charged since start_ns */
};

void kv_rate_limit_init(struct kv_rate_limit *rl, uint64_t bps);
void kv_rate_limit_destroy(struct kv_rate_limit *rl);
void kv_rate_limit_set(struct kv_rate_limit *rl, uint64_t bps);
uint64_t kv_rate_limit_get(const struct kv_rate_limit *rl);

/* The largest write worth charging at once: a tenth of a second's worth
 * (so a large write does not go as one burst), at least one byte; SIZE_MAX
 * when unlimited. */
uint64_t kv_rate_limit_chunk(const struct kv_rate_limit *rl);

/* Charge bytes; returns the monotonic time (kv_now_ns) before which they
 * should not be written: now or earlier when within the limit. */
int64_t kv_rate_limit_charge(struct kv_rate_limit *rl, uint64_t bytes);

/* Sleep until due, in slices of at most 10 ms so that a cancel is seen:
 * stops early when cancelled(opaque) says so (cancelled may be NULL).
 * Returns the nanoseconds slept; *was_cancelled (may be NULL) tells why
 * it returned. */
uint64_t kv_rate_limit_wait(int64_t due, bool (*cancelled)(void *opaque),
			    void *opaque, bool *was_cancelled);

#endif
