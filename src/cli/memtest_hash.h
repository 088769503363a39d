/* SPDX-License-Identifier: MIT */
/*
 * XXH3-128 compiled for AVX2. Debian's libxxhash is built for baseline
 * x86-64 (SSE2) and hashes at about half the speed AVX2 reaches; the digest
 * runs inside memtest's downtime, so it picks this one when the CPU has
 * AVX2. XXH3's result does not depend on the vector width.
 */
#ifndef KV_CLI_MEMTEST_HASH_H
#define KV_CLI_MEMTEST_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* True if kv_memtest_xxh3_128_avx2 can run on this CPU. */
bool kv_memtest_have_avx2(void);
/* XXH3-128 of p[0..len) in canonical (big-endian) bytes. */
void kv_memtest_xxh3_128_avx2(const void *p, size_t len, uint8_t out[16]);

#endif
