/* SPDX-License-Identifier: MIT */
/*
 * XBZRLE encoder and decoder (format: xbzrle.h).
 *
 * The encoder alternates two searches over old/new: "the next byte that
 * differs" (end of a zero run) and "the next byte that is equal" (end of a
 * non-zero run). Each search compares many bytes at once (8 with scalar
 * words, 64 per step with SSE2 or AVX2), so a page with a few changed bytes
 * costs one pass of wide compares, and a fully changed page one pass plus
 * one memcpy.
 *
 * The decoder walks the delta twice: a checking pass that touches nothing,
 * then the applying pass, so a bad delta never leaves a half-patched page.
 */
#include "migration/ram/xbzrle.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define XBZRLE_HAVE_X86 1
#else
#define XBZRLE_HAVE_X86 0
#endif

/* ---- searches: the first index in [i, n) where old/new differ or match,
 * n when there is none ---- */

typedef size_t (*xbzrle_find_fn)(const uint8_t *a, const uint8_t *b, size_t i,
				 size_t n);

struct xbzrle_finders {
	xbzrle_find_fn diff; /* first byte that changed */
	xbzrle_find_fn same; /* first byte that did not */
};

static inline uint64_t load_u64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

/* Index of the lowest-addressed non-zero byte of a non-zero word. */
static inline size_t first_marked_byte(uint64_t x)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return (size_t)__builtin_ctzll(x) >> 3;
#else
	return (size_t)__builtin_clzll(x) >> 3;
#endif
}

#define BYTES_01 0x0101010101010101ULL
#define BYTES_80 0x8080808080808080ULL

static size_t find_diff_scalar(const uint8_t *a, const uint8_t *b, size_t i,
			       size_t n)
{
	for (; i + 8 <= n; i += 8) {
		uint64_t x = load_u64(a + i) ^ load_u64(b + i);

		if (x)
			return i + first_marked_byte(x);
	}
	while (i < n && a[i] == b[i])
		i++;
	return i;
}

static size_t find_same_scalar(const uint8_t *a, const uint8_t *b, size_t i,
			       size_t n)
{
	for (; i + 8 <= n; i += 8) {
		uint64_t x = load_u64(a + i) ^ load_u64(b + i);
		/* Marks every zero byte of x; a borrow can only mark bytes
		 * above a real zero byte, so the lowest mark is exact. */
		uint64_t z = (x - BYTES_01) & ~x & BYTES_80;

		if (z)
			return i + first_marked_byte(z);
	}
	while (i < n && a[i] != b[i])
		i++;
	return i;
}

static const struct xbzrle_finders finders_scalar = {
    .diff = find_diff_scalar,
    .same = find_same_scalar,
};

#if XBZRLE_HAVE_X86

/* Bit k set when byte k of the 64 bytes at a and b is equal. */
static inline uint64_t eq_mask64_sse2(const uint8_t *a, const uint8_t *b)
{
	uint64_t m = 0;

	for (int k = 0; k < 4; k++) {
		__m128i va = _mm_loadu_si128((const __m128i *)(a + 16 * k));
		__m128i vb = _mm_loadu_si128((const __m128i *)(b + 16 * k));
		uint32_t e =
		    (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(va, vb));

		m |= (uint64_t)e << (16 * k);
	}
	return m;
}

static size_t find_diff_sse2(const uint8_t *a, const uint8_t *b, size_t i,
			     size_t n)
{
	for (; i + 64 <= n; i += 64) {
		uint64_t eq = eq_mask64_sse2(a + i, b + i);

		if (eq != UINT64_MAX)
			return i + (size_t)__builtin_ctzll(~eq);
	}
	return find_diff_scalar(a, b, i, n);
}

static size_t find_same_sse2(const uint8_t *a, const uint8_t *b, size_t i,
			     size_t n)
{
	for (; i + 64 <= n; i += 64) {
		uint64_t eq = eq_mask64_sse2(a + i, b + i);

		if (eq)
			return i + (size_t)__builtin_ctzll(eq);
	}
	return find_same_scalar(a, b, i, n);
}

static const struct xbzrle_finders finders_sse2 = {
    .diff = find_diff_sse2,
    .same = find_same_sse2,
};

__attribute__((target("avx2"))) static inline uint64_t
eq_mask64_avx2(const uint8_t *a, const uint8_t *b)
{
	__m256i a0 = _mm256_loadu_si256((const __m256i *)a);
	__m256i b0 = _mm256_loadu_si256((const __m256i *)b);
	__m256i a1 = _mm256_loadu_si256((const __m256i *)(a + 32));
	__m256i b1 = _mm256_loadu_si256((const __m256i *)(b + 32));
	uint32_t lo = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(a0, b0));
	uint32_t hi = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(a1, b1));

	return (uint64_t)hi << 32 | lo;
}

__attribute__((target("avx2"))) static size_t
find_diff_avx2(const uint8_t *a, const uint8_t *b, size_t i, size_t n)
{
	/* The common case of an unchanged stretch: 128 bytes a step, one
	 * test per step, the exact byte found only once something differs. */
	for (; i + 128 <= n; i += 128) {
		__m256i x0 = _mm256_xor_si256(
		    _mm256_loadu_si256((const __m256i *)(a + i)),
		    _mm256_loadu_si256((const __m256i *)(b + i)));
		__m256i x1 = _mm256_xor_si256(
		    _mm256_loadu_si256((const __m256i *)(a + i + 32)),
		    _mm256_loadu_si256((const __m256i *)(b + i + 32)));
		__m256i x2 = _mm256_xor_si256(
		    _mm256_loadu_si256((const __m256i *)(a + i + 64)),
		    _mm256_loadu_si256((const __m256i *)(b + i + 64)));
		__m256i x3 = _mm256_xor_si256(
		    _mm256_loadu_si256((const __m256i *)(a + i + 96)),
		    _mm256_loadu_si256((const __m256i *)(b + i + 96)));
		__m256i o = _mm256_or_si256(_mm256_or_si256(x0, x1),
					    _mm256_or_si256(x2, x3));

		if (!_mm256_testz_si256(o, o))
			break;
	}
	for (; i + 64 <= n; i += 64) {
		uint64_t eq = eq_mask64_avx2(a + i, b + i);

		if (eq != UINT64_MAX)
			return i + (size_t)__builtin_ctzll(~eq);
	}
	return find_diff_scalar(a, b, i, n);
}

__attribute__((target("avx2"))) static size_t
find_same_avx2(const uint8_t *a, const uint8_t *b, size_t i, size_t n)
{
	for (; i + 64 <= n; i += 64) {
		uint64_t eq = eq_mask64_avx2(a + i, b + i);

		if (eq)
			return i + (size_t)__builtin_ctzll(eq);
	}
	return find_same_scalar(a, b, i, n);
}

static const struct xbzrle_finders finders_avx2 = {
    .diff = find_diff_avx2,
    .same = find_same_avx2,
};

__attribute__((target("avx512bw"))) static size_t
find_diff_avx512(const uint8_t *a, const uint8_t *b, size_t i, size_t n)
{
	for (; i + 128 <= n; i += 128) {
		__mmask64 ne0 = _mm512_cmpneq_epi8_mask(
		    _mm512_loadu_si512((const void *)(a + i)),
		    _mm512_loadu_si512((const void *)(b + i)));
		__mmask64 ne1 = _mm512_cmpneq_epi8_mask(
		    _mm512_loadu_si512((const void *)(a + i + 64)),
		    _mm512_loadu_si512((const void *)(b + i + 64)));

		if (ne0)
			return i + (size_t)__builtin_ctzll(ne0);
		if (ne1)
			return i + 64 + (size_t)__builtin_ctzll(ne1);
	}
	for (; i + 64 <= n; i += 64) {
		__mmask64 ne = _mm512_cmpneq_epi8_mask(
		    _mm512_loadu_si512((const void *)(a + i)),
		    _mm512_loadu_si512((const void *)(b + i)));

		if (ne)
			return i + (size_t)__builtin_ctzll(ne);
	}
	return find_diff_scalar(a, b, i, n);
}

__attribute__((target("avx512bw"))) static size_t
find_same_avx512(const uint8_t *a, const uint8_t *b, size_t i, size_t n)
{
	for (; i + 64 <= n; i += 64) {
		__mmask64 eq = _mm512_cmpeq_epi8_mask(
		    _mm512_loadu_si512((const void *)(a + i)),
		    _mm512_loadu_si512((const void *)(b + i)));

		if (eq)
			return i + (size_t)__builtin_ctzll(eq);
	}
	return find_same_scalar(a, b, i, n);
}

static const struct xbzrle_finders finders_avx512 = {
    .diff = find_diff_avx512,
    .same = find_same_avx512,
};

#endif /* XBZRLE_HAVE_X86 */

/* ---- ULEB128, 14 bits at most ---- */

static inline size_t uleb_size(size_t v)
{
	return v < 0x80 ? 1 : 2;
}

static inline size_t uleb_put(uint8_t *dst, size_t v)
{
	if (v < 0x80) {
		dst[0] = (uint8_t)v;
		return 1;
	}
	dst[0] = (uint8_t)(0x80 | (v & 0x7f));
	dst[1] = (uint8_t)(v >> 7);
	return 2;
}

/* ---- the encoder ---- */

/* Most runs of a sparsely written page are a few bytes: no memcpy call. */
static inline void copy_run(uint8_t *dst, const uint8_t *src, size_t n)
{
	if (n <= 8) {
		for (size_t k = 0; k < n; k++)
			dst[k] = src[k];
		return;
	}
	memcpy(dst, src, n);
}

static int encode_with(const struct xbzrle_finders *f, const uint8_t *old,
		       const uint8_t *new, size_t page, uint8_t *dst,
		       size_t dst_max)
{
	size_t i = 0, d = 0;

	if (page > KV_XBZRLE_PAGE_MAX)
		return -1;
	if (dst_max > INT_MAX)
		dst_max = INT_MAX;
	while (i < page) {
		size_t zrun_start = i, nzrun_start, zrun, nzrun, lim;

		i = f->diff(old, new, i, page);
		if (i == page)
			break; /* an unchanged tail is not sent */
		nzrun_start = i;
		/* new[i] differs: the non-zero run is at least one byte. A
		 * run longer than the room left cannot fit whatever its end:
		 * search no further than that (a fully rewritten page fails
		 * after scanning what fits, not the whole page). */
		lim = page - nzrun_start > dst_max - d
			  ? nzrun_start + (dst_max - d) + 1
			  : page;
		i = f->same(old, new, i + 1, lim);
		if (i == lim && lim < page)
			return -1;
		zrun = nzrun_start - zrun_start;
		nzrun = i - nzrun_start;
		if (uleb_size(zrun) + uleb_size(nzrun) + nzrun > dst_max - d)
			return -1;
		d += uleb_put(dst + d, zrun);
		d += uleb_put(dst + d, nzrun);
		copy_run(dst + d, new + nzrun_start, nzrun);
		d += nzrun;
	}
	return (int)d;
}

static const struct xbzrle_finders *finders_of(enum kv_xbzrle_impl impl)
{
	switch (impl) {
	case KV_XBZRLE_IMPL_SCALAR:
		return &finders_scalar;
#if XBZRLE_HAVE_X86
	case KV_XBZRLE_IMPL_SSE2:
		return &finders_sse2;
	case KV_XBZRLE_IMPL_AVX2:
		__builtin_cpu_init();
		return __builtin_cpu_supports("avx2") ? &finders_avx2 : NULL;
	case KV_XBZRLE_IMPL_AVX512:
		__builtin_cpu_init();
		return __builtin_cpu_supports("avx512bw") ? &finders_avx512
							  : NULL;
#endif
	default:
		return NULL;
	}
}

static const struct xbzrle_finders *best_finders(void)
{
	/* A constant choice made once; a benign race stores the same value
	 * from any thread. */
	static const struct xbzrle_finders *best;
	const struct xbzrle_finders *f =
	    __atomic_load_n(&best, __ATOMIC_RELAXED);

	if (!f) {
		/* Not AVX-512: measured no faster on a page with few changes
		 * (the common case) and it may lower the clock on some CPUs. */
		f = finders_of(KV_XBZRLE_IMPL_AVX2);
		if (!f)
			f = finders_of(KV_XBZRLE_IMPL_SSE2);
		if (!f)
			f = &finders_scalar;
		__atomic_store_n(&best, f, __ATOMIC_RELAXED);
	}
	return f;
}

int kv_xbzrle_encode(const uint8_t *old, const uint8_t *new, size_t page,
		     uint8_t *dst, size_t dst_max)
{
	return encode_with(best_finders(), old, new, page, dst, dst_max);
}

int kv_xbzrle_encode_impl(enum kv_xbzrle_impl impl, const uint8_t *old,
			  const uint8_t *new, size_t page, uint8_t *dst,
			  size_t dst_max)
{
	const struct xbzrle_finders *f =
	    impl == KV_XBZRLE_IMPL_AUTO ? best_finders() : finders_of(impl);

	if (!f)
		return -2;
	return encode_with(f, old, new, page, dst, dst_max);
}

const char *kv_xbzrle_impl_name(enum kv_xbzrle_impl impl)
{
	static const char *const names[KV_XBZRLE_IMPL_COUNT] = {
	    [KV_XBZRLE_IMPL_AUTO] = "auto",
	    [KV_XBZRLE_IMPL_SCALAR] = "scalar",
	    [KV_XBZRLE_IMPL_SSE2] = "sse2",
	    [KV_XBZRLE_IMPL_AVX2] = "avx2",
	    [KV_XBZRLE_IMPL_AVX512] = "avx512",
	};

	return (unsigned)impl < KV_XBZRLE_IMPL_COUNT ? names[impl] : "?";
}

/* ---- the decoder ---- */

/* Read one run length at *pos ("zero-run" or "non-zero-run" in what). */
static int get_length(const uint8_t *src, size_t len, size_t *pos,
		      const char *what, uint32_t *val, struct kv_error *err)
{
	size_t at = *pos;
	uint8_t b0, b1;

	b0 = src[at]; /* callers check at < len */
	if (!(b0 & 0x80)) {
		*val = b0;
		*pos = at + 1;
		return 0;
	}
	if (len - at < 2)
		return kv_error_set(err, -EINVAL,
				    "XBZRLE delta offset %zu: %s length truncated: byte 0x%02x announces a second ULEB128 byte but the delta ends",
				    at, what, b0);
	b1 = src[at + 1];
	if (b1 & 0x80)
		return kv_error_set(err, -EINVAL,
				    "XBZRLE delta offset %zu: %s length overlong: ULEB128 0x%02x 0x%02x continues past 2 bytes (run lengths are at most 14 bits, %u)",
				    at, what, b0, b1, KV_XBZRLE_RUN_MAX);
	*val = (uint32_t)(b0 & 0x7f) | (uint32_t)b1 << 7;
	*pos = at + 2;
	return 0;
}

/* One pass over the delta; copies into page only when apply is set. */
static int walk_delta(const uint8_t *src, size_t len, uint8_t *page,
		      size_t page_size, bool apply, struct kv_error *err)
{
	size_t pos = 0, d = 0;
	int ret;

	if (len == 0)
		return kv_error_set(err, -EINVAL,
				    "XBZRLE delta is empty: a changed page needs at least one run");
	while (pos < len) {
		size_t pair_at = pos, nzrun_at;
		uint32_t zrun, nzrun;

		if (d == page_size)
			return kv_error_set(
			    err, -EINVAL,
			    "XBZRLE delta offset %zu: %zu trailing bytes after the runs that cover the whole %zu-byte page",
			    pos, len - pos, page_size);
		ret = get_length(src, len, &pos, "zero-run", &zrun, err);
		if (ret < 0)
			return ret;
		if (zrun == 0 && pair_at > 0)
			return kv_error_set(err, -EINVAL,
					    "XBZRLE delta offset %zu: zero run of length 0 (only the first run may be empty)",
					    pair_at);
		if (zrun > page_size - d)
			return kv_error_set(err, -EINVAL,
					    "XBZRLE delta offset %zu: zero run of %u bytes at page offset %zu goes past the page end (%zu)",
					    pair_at, zrun, d, page_size);
		d += zrun;
		if (pos == len)
			return kv_error_set(
			    err, -EINVAL,
			    "XBZRLE delta offset %zu: the delta ends after a zero run; a non-zero run must follow",
			    pos);
		nzrun_at = pos;
		ret = get_length(src, len, &pos, "non-zero-run", &nzrun, err);
		if (ret < 0)
			return ret;
		if (nzrun == 0)
			return kv_error_set(err, -EINVAL,
					    "XBZRLE delta offset %zu: non-zero run of length 0",
					    nzrun_at);
		if (nzrun > page_size - d)
			return kv_error_set(
			    err, -EINVAL,
			    "XBZRLE delta offset %zu: non-zero run of %u bytes at page offset %zu goes past the page end (%zu)",
			    nzrun_at, nzrun, d, page_size);
		if (nzrun > len - pos)
			return kv_error_set(
			    err, -EINVAL,
			    "XBZRLE delta offset %zu: non-zero run of %u bytes needs data past the end of the delta (%zu bytes left)",
			    nzrun_at, nzrun, len - pos);
		if (apply)
			memcpy(page + d, src + pos, nzrun);
		pos += nzrun;
		d += nzrun;
	}
	return 0;
}

int kv_xbzrle_decode(const uint8_t *src, size_t len, uint8_t *page,
		     size_t page_size, struct kv_error *err)
{
	int ret = walk_delta(src, len, page, page_size, false, err);

	if (ret < 0)
		return ret;
	return walk_delta(src, len, page, page_size, true, err);
}
