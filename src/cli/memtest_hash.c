/* SPDX-License-Identifier: MIT */
/* XXH3-128 with AVX2, for memtest's digest (see memtest_hash.h). */
#include "cli/memtest_hash.h"

#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/* Every function below, xxhash's inlined ones included, may use AVX2;
 * they are only called after the CPU check. */
#pragma GCC target("avx2")
#define XXH_VECTOR 2 /* XXH_AVX2 */
#define XXH_INLINE_ALL
#include <xxhash.h>

bool kv_memtest_have_avx2(void)
{
	__builtin_cpu_init();
	return __builtin_cpu_supports("avx2");
}

void kv_memtest_xxh3_128_avx2(const void *p, size_t len, uint8_t out[16])
{
	XXH128_canonical_t canon;

	XXH128_canonicalFromHash(&canon, XXH3_128bits(p, len));
	memcpy(out, canon.digest, 16);
}
#else
bool kv_memtest_have_avx2(void)
{
	return false;
}

void kv_memtest_xxh3_128_avx2(const void *p, size_t len, uint8_t out[16])
{
	(void)p;
	(void)len;
	memset(out, 0, 16); /* never called: have_avx2 is false */
}
#endif
