/* SPDX-License-Identifier: MIT */
/*
 * membw: memcpy bandwidth of a large buffer, the yardstick for how fast a
 * migration can possibly read guest memory.
 *
 *   membw [--size SIZE] [--runs N]
 *
 * Both buffers are pre-faulted (written once) so page faults are not timed;
 * the best of N runs is reported, as one line of key=value pairs that
 * bench/run.sh parses:
 *   membw size=1073741824 runs=5 best_ns=... best_bytes_per_sec=...
 *   median_bytes_per_sec=...
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "base/clock.h"

#define MEMBW_DEFAULT_SIZE (1ULL << 30)
#define MEMBW_DEFAULT_RUNS 5
#define MEMBW_MAX_RUNS 64

struct membw_opts {
	uint64_t size;
	int runs;
};

static int parse_size(const char *text, uint64_t *out)
{
	char *end;
	unsigned long long v;
	uint64_t mult = 1;

	errno = 0;
	v = strtoull(text, &end, 10);
	if (errno || end == text)
		return -EINVAL;
	switch (*end) {
	case '\0':
		break;
	case 'K': case 'k':
		mult = 1ULL << 10;
		break;
	case 'M': case 'm':
		mult = 1ULL << 20;
		break;
	case 'G': case 'g':
		mult = 1ULL << 30;
		break;
	default:
		return -EINVAL;
	}
	if (*end && end[1] != '\0')
		return -EINVAL;
	*out = (uint64_t)v * mult;
	return 0;
}

static int parse_opts(int argc, char **argv, struct membw_opts *o)
{
	o->size = MEMBW_DEFAULT_SIZE;
	o->runs = MEMBW_DEFAULT_RUNS;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--size") && i + 1 < argc) {
			if (parse_size(argv[++i], &o->size) || o->size == 0) {
				fprintf(stderr, "membw: bad --size '%s'\n",
					argv[i]);
				return -EINVAL;
			}
		} else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
			o->runs = atoi(argv[++i]);
			if (o->runs < 1 || o->runs > MEMBW_MAX_RUNS) {
				fprintf(stderr, "membw: --runs must be 1..%d\n",
					MEMBW_MAX_RUNS);
				return -EINVAL;
			}
		} else {
			fprintf(stderr,
				"usage: membw [--size SIZE[K|M|G]] [--runs N]\n");
			return -EINVAL;
		}
	}
	return 0;
}

static void *map_prefaulted(uint64_t size, int fill)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	/* Real bytes, not the shared zero page: every page gets its frame. */
	memset(p, fill, size);
	return p;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	struct membw_opts o;
	int64_t ns[MEMBW_MAX_RUNS];
	uint8_t *src, *dst;
	volatile uint8_t sink = 0;

	if (parse_opts(argc, argv, &o))
		return 2;
	src = map_prefaulted(o.size, 0x5a);
	dst = map_prefaulted(o.size, 0);
	if (!src || !dst) {
		fprintf(stderr, "membw: cannot map 2 x %" PRIu64 " bytes: %s\n",
			o.size, strerror(errno));
		return 1;
	}
	for (int r = 0; r < o.runs; r++) {
		int64_t t0 = kv_now_ns();

		memcpy(dst, src, o.size);
		ns[r] = kv_now_ns() - t0;
		/* Keep the copy observable so it cannot be elided. */
		sink ^= dst[(uint64_t)r * 4096 % o.size];
	}
	qsort(ns, (size_t)o.runs, sizeof(ns[0]), cmp_i64);
	if (ns[0] <= 0)
		ns[0] = 1;
	printf("membw size=%" PRIu64 " runs=%d best_ns=%" PRId64
	       " best_bytes_per_sec=%.0f median_bytes_per_sec=%.0f\n",
	       o.size, o.runs, ns[0], (double)o.size * 1e9 / (double)ns[0],
	       (double)o.size * 1e9 / (double)ns[o.runs / 2]);
	(void)sink;
	munmap(src, o.size);
	munmap(dst, o.size);
	return 0;
}
