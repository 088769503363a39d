/* SPDX-License-Identifier: MIT */
#include "base/zero.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

static bool tail_is_zero(const unsigned char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i])
			return false;
	return true;
}

static bool is_zero_sse2(const void *buf, size_t len)
{
	const unsigned char *p = buf;
	size_t i = 0;

	for (; i + 64 <= len; i += 64) {
		__m128i a = _mm_loadu_si128((const __m128i *)(p + i));
		__m128i b = _mm_loadu_si128((const __m128i *)(p + i + 16));
		__m128i c = _mm_loadu_si128((const __m128i *)(p + i + 32));
		__m128i d = _mm_loadu_si128((const __m128i *)(p + i + 48));
		__m128i o = _mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d));

		if (_mm_movemask_epi8(_mm_cmpeq_epi8(o, _mm_setzero_si128())) !=
		    0xffff)
			return false;
	}
	return tail_is_zero(p + i, len - i);
}

__attribute__((target("avx2"))) static bool is_zero_avx2(const void *buf,
							size_t len)
{
	const unsigned char *p = buf;
	size_t i = 0;

	/* The first 64 bytes decide most non-zero pages cheaply. */
	for (; i + 128 <= len; i += 128) {
		__m256i a = _mm256_loadu_si256((const __m256i *)(p + i));
		__m256i b = _mm256_loadu_si256((const __m256i *)(p + i + 32));
		__m256i c = _mm256_loadu_si256((const __m256i *)(p + i + 64));
		__m256i d = _mm256_loadu_si256((const __m256i *)(p + i + 96));
		__m256i o = _mm256_or_si256(_mm256_or_si256(a, b),
					    _mm256_or_si256(c, d));

		if (!_mm256_testz_si256(o, o))
			return false;
	}
	return is_zero_sse2(p + i, len - i);
}

typedef bool (*zero_fn)(const void *, size_t);

static zero_fn pick_zero_fn(void)
{
	__builtin_cpu_init();
	return __builtin_cpu_supports("avx2") ? is_zero_avx2 : is_zero_sse2;
}

bool kv_buffer_is_zero(const void *buf, size_t len)
{
	/* A constant choice made once; a benign race sets it to the same
	 * value from any thread. */
	static zero_fn fn;
	zero_fn f = __atomic_load_n(&fn, __ATOMIC_RELAXED);

	if (!f) {
		f = pick_zero_fn();
		__atomic_store_n(&fn, f, __ATOMIC_RELAXED);
	}
	/* Cheap early exit on the first word for the common non-zero page. */
	if (len >= 8) {
		uint64_t first;

		memcpy(&first, buf, 8);
		if (first)
			return false;
	}
	return f(buf, len);
}
