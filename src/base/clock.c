/* SPDX-License-Identifier: MIT */
#include "base/clock.h"

#include <errno.h>

void kv_sleep_ns(int64_t ns)
{
	struct timespec ts;

	if (ns <= 0)
		return;
	ts.tv_sec = ns / 1000000000;
	ts.tv_nsec = ns % 1000000000;
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}
