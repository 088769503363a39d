/* SPDX-License-Identifier: MIT */
#include "base/rate_limit.h"

#include <stddef.h>

#include "base/clock.h"

#define WAIT_SLICE_NS 10000000LL

void kv_rate_limit_init(struct kv_rate_limit *rl, uint64_t bps)
{
	rl->bps = bps;
	pthread_mutex_init(&rl->lock, NULL);
	rl->start_ns = kv_now_ns();
	rl->charged = 0;
}

void kv_rate_limit_destroy(struct kv_rate_limit *rl)
{
	pthread_mutex_destroy(&rl->lock);
}

/* A new limit starts a new schedule: the bytes already charged were paid
 * for at the old rate (reading them at a lower one would stall the senders
 * for the difference). */
void kv_rate_limit_set(struct kv_rate_limit *rl, uint64_t bps)
{
	pthread_mutex_lock(&rl->lock);
	__atomic_store_n(&rl->bps, bps, __ATOMIC_RELAXED);
	rl->start_ns = kv_now_ns();
	rl->charged = 0;
	pthread_mutex_unlock(&rl->lock);
}

uint64_t kv_rate_limit_get(const struct kv_rate_limit *rl)
{
	return __atomic_load_n(&rl->bps, __ATOMIC_RELAXED);
}

uint64_t kv_rate_limit_chunk(const struct kv_rate_limit *rl)
{
	uint64_t bps = kv_rate_limit_get(rl);

	if (!bps)
		return UINT64_MAX;
	return bps / 10 ? bps / 10 : 1;
}

static int64_t ns_for(uint64_t bytes, uint64_t bps)
{
	return (int64_t)((double)bytes * 1e9 / (double)bps);
}

int64_t kv_rate_limit_charge(struct kv_rate_limit *rl, uint64_t bytes)
{
	int64_t now = kv_now_ns(), due;
	uint64_t bps;

	pthread_mutex_lock(&rl->lock);
	bps = rl->bps; /* read with the schedule it started */
	if (!bps) {
		pthread_mutex_unlock(&rl->lock);
		return now;
	}
	/* Behind schedule after an idle window: start again from now, no
	 * saved credit. */
	if (now - rl->start_ns > KV_RATE_WINDOW_NS &&
	    rl->start_ns + ns_for(rl->charged, bps) < now) {
		rl->start_ns = now;
		rl->charged = 0;
	}
	rl->charged += bytes;
	due = rl->start_ns + ns_for(rl->charged, bps);
	pthread_mutex_unlock(&rl->lock);
	return due;
}

uint64_t kv_rate_limit_wait(int64_t due, bool (*cancelled)(void *opaque),
			    void *opaque, bool *was_cancelled)
{
	int64_t start = kv_now_ns(), now = start;
	bool stop = false;

	while (due > now) {
		if (cancelled && cancelled(opaque)) {
			stop = true;
			break;
		}
		kv_sleep_ns(due - now < WAIT_SLICE_NS ? due - now
						      : WAIT_SLICE_NS);
		now = kv_now_ns();
	}
	if (was_cancelled)
		*was_cancelled = stop;
	return (uint64_t)(now - start);
}
