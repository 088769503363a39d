/* SPDX-License-Identifier: MIT */
/* Monotonic time for measurements (never wall-clock: it can jump). */
#ifndef KV_BASE_CLOCK_H
#define KV_BASE_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t kv_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int64_t kv_now_ms(void)
{
	return kv_now_ns() / 1000000;
}

/* Sleep for ns nanoseconds (restarts on EINTR). */
void kv_sleep_ns(int64_t ns);

#endif
