/* SPDX-License-Identifier: MIT */
/*
 * firsttouch: how fast this machine hands out fresh anonymous memory, i.e.
 * the first write to pages never touched before (page fault, the kernel
 * zeroing the page, and on a VM whatever the host does to back it). A
 * migration destination that receives into fresh memory cannot go faster.
 *
 *   firsttouch [--size SIZE] [--idle-ms MS]
 *
 * Maps SIZE bytes (default 1 GiB) as memtest does (private, anonymous,
 * MADV_HUGEPAGE), optionally sleeps MS milliseconds first (so memory freed
 * just before by another process is no longer at hand), then times one
 * memset of the whole region (first touch) and a second memset (touched
 * memory, for comparison). Prints one line of key=value pairs:
 *   firsttouch size=... first_ns=... first_bytes_per_sec=...
 *   second_ns=... second_bytes_per_sec=...
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "base/clock.h"

static int parse_size(const char *text, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(text, &end, 10);
	if (errno || end == text)
		return -1;
	switch (*end) {
	case 'G':
		v <<= 30;
		end++;
		break;
	case 'M':
		v <<= 20;
		end++;
		break;
	case 'K':
		v <<= 10;
		end++;
		break;
	default:
		break;
	}
	if (*end || !v)
		return -1;
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	uint64_t size = 1ULL << 30, idle_ms = 0;
	int64_t t0, t1, t2;
	uint8_t *p;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--size") && i + 1 < argc) {
			if (parse_size(argv[++i], &size) < 0) {
				fprintf(stderr, "firsttouch: bad --size '%s'\n",
					argv[i]);
				return 2;
			}
		} else if (!strcmp(argv[i], "--idle-ms") && i + 1 < argc) {
			idle_ms = strtoull(argv[++i], NULL, 10);
		} else {
			fprintf(stderr, "usage: firsttouch [--size SIZE] "
					"[--idle-ms MS]\n");
			return 2;
		}
	}
	p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED) {
		fprintf(stderr,
			"firsttouch: cannot map %" PRIu64 " bytes: %s\n", size,
			strerror(errno));
		return 1;
	}
	madvise(p, size, MADV_HUGEPAGE);
	if (idle_ms)
		kv_sleep_ns((int64_t)idle_ms * 1000000);
	t0 = kv_now_ns();
	memset(p, 1, size);
	t1 = kv_now_ns();
	memset(p, 2, size);
	t2 = kv_now_ns();
	printf("firsttouch size=%" PRIu64 " first_ns=%" PRId64
	       " first_bytes_per_sec=%.0f second_ns=%" PRId64
	       " second_bytes_per_sec=%.0f\n",
	       size, t1 - t0, (double)size * 1e9 / (double)(t1 - t0), t2 - t1,
	       (double)size * 1e9 / (double)(t2 - t1));
	munmap(p, size);
	return 0;
}
