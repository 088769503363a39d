/* SPDX-License-Identifier: MIT */
/*
 * Zero-page detection, the hottest loop of an idle guest's migration.
 * Vectorized (AVX2 when the CPU has it, SSE2 otherwise), chosen once at the
 * first call. The check reads the buffer front, then the rest, so a page that
 * is not zero usually fails within its first cache line.
 */
#ifndef KV_BASE_ZERO_H
#define KV_BASE_ZERO_H

#include <stdbool.h>
#include <stddef.h>

/* True if len bytes at buf are all zero. len may be any size. */
bool kv_buffer_is_zero(const void *buf, size_t len);

#endif
