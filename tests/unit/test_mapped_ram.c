/* SPDX-License-Identifier: MIT */
/*
 * mapped-ram: the header's bytes, the layout, every field of a header
 * refused when wrong (naming the field, the file and both values), the
 * configuration's capabilities subsection, and RAM round trips through a
 * real file (memfd, and a file on disk for direct-io): with and without
 * I/O threads, with a workload dirtying pages between passes, a page
 * that became zero punched out of the file, and truncated files refused
 * with nothing of them left in memory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/units.h"
#include "io/stream.h"
#include "migration/dirty/soft_tracker.h"
#include "migration/ram/mapped_ram.h"
#include "migration/ram/ram_internal.h"
#include "migration/savevm/config_caps.h"
#include "stream_file.h"

#define PG KV_PAGE_SIZE

#define assert_msg_has(e, needle)                                           \
	do {                                                                \
		if (!strstr((e)->msg, needle))                              \
			fail_msg("message '%s' lacks '%s'", (e)->msg, needle); \
	} while (0)

/* ---- the header ---- */

static void test_header_bytes(void **state)
{
	struct kv_mapped_ram_hdr h = {1, 4096, 0x1234, 0x100000}, back;
	static const uint8_t want[KV_MAPPED_RAM_HDR_SIZE] = {
	    0, 0, 0, 1,			  /* version */
	    0, 0, 0, 0, 0, 0, 0x10, 0,	  /* page_size */
	    0, 0, 0, 0, 0, 0, 0x12, 0x34, /* bitmap_offset */
	    0, 0, 0, 0, 0, 0x10, 0, 0,	  /* pages_offset */
	};
	uint8_t raw[KV_MAPPED_RAM_HDR_SIZE];

	(void)state;
	kv_mapped_ram_hdr_encode(&h, raw);
	assert_memory_equal(raw, want, sizeof(want));
	kv_mapped_ram_hdr_decode(raw, &back);
	assert_int_equal(back.version, h.version);
	assert_int_equal(back.page_size, h.page_size);
	assert_int_equal(back.bitmap_offset, h.bitmap_offset);
	assert_int_equal(back.pages_offset, h.pages_offset);
}

static void test_layout(void **state)
{
	struct kv_mapped_ram_hdr h;

	(void)state;
	/* Host unsigned longs: 70 pages take two of them. */
	assert_int_equal(kv_mapped_ram_bitmap_size(1), 8);
	assert_int_equal(kv_mapped_ram_bitmap_size(64), 8);
	assert_int_equal(kv_mapped_ram_bitmap_size(70), 16);
	kv_mapped_ram_layout(100, 1 * KV_GiB, &h);
	assert_int_equal(h.version, 1);
	assert_int_equal(h.page_size, 4096);
	assert_int_equal(h.bitmap_offset, 128);
	assert_int_equal(h.pages_offset, KV_MiB);
	/* A bitmap that crosses the boundary pushes the pages a step on. */
	kv_mapped_ram_layout(KV_MiB - 40, 70 * PG, &h);
	assert_int_equal(h.bitmap_offset, KV_MiB - 12);
	assert_int_equal(h.pages_offset, 2 * KV_MiB);
}

static void check_refused(const struct kv_mapped_ram_hdr *h, uint64_t size,
			  const char *field, const char *v1, const char *v2)
{
	struct kv_error e = {0};

	assert_int_equal(kv_mapped_ram_hdr_check(h, 100, "pc.ram", 64 * PG,
						 size, "file:/x/snap", &e),
			 -EINVAL);
	assert_msg_has(&e, "file:/x/snap");
	assert_msg_has(&e, "'pc.ram'");
	assert_msg_has(&e, field);
	assert_msg_has(&e, v1);
	assert_msg_has(&e, v2);
}

static void test_header_check(void **state)
{
	struct kv_mapped_ram_hdr good, h;
	struct kv_error e = {0};
	const uint64_t size = 3 * KV_MiB;

	(void)state;
	kv_mapped_ram_layout(100, 64 * PG, &good);
	assert_int_equal(kv_mapped_ram_hdr_check(&good, 100, "pc.ram", 64 * PG,
						 size, "file:/x/snap", &e),
			 0);
	h = good;
	h.version = 2;
	check_refused(&h, size, "version", "version 2", "version 1");
	h.version = 0;
	check_refused(&h, size, "version", "version 0", "version 1");
	h = good;
	h.page_size = 8192;
	check_refused(&h, size, "page_size", "8192", "4096");
	h = good;
	h.bitmap_offset = 129;
	check_refused(&h, size, "bitmap_offset", "129", "128");
	h = good;
	h.pages_offset = 2 * KV_MiB;
	check_refused(&h, size, "pages_offset", "2097152", "1048576");
	h = good;
	h.pages_offset = KV_MiB + PG; /* unaligned */
	check_refused(&h, size, "pages_offset", "1052672", "1048576");
	/* The pages and the stream after them must be in the file. */
	check_refused(&good, KV_MiB + 64 * PG, "pages end", "1310720",
		      "1310720 bytes");
	check_refused(&good, KV_MiB, "truncated", "1310720", "1048576");
}

/* ---- file:PATH,offset=N ---- */

static void test_uri_offset(void **state)
{
	struct kv_error e = {0};
	struct kv_uri u;

	(void)state;
	assert_int_equal(kv_uri_parse("file:/a/b", &u, &e), 0);
	assert_string_equal(u.path, "/a/b");
	assert_int_equal(u.offset, 0);
	assert_int_equal(kv_uri_parse("file:/a/b,offset=4096", &u, &e), 0);
	assert_string_equal(u.path, "/a/b");
	assert_int_equal(u.offset, 4096);
	assert_int_equal(kv_uri_parse("file:/a/b,offset=1M", &u, &e), 0);
	assert_int_equal(u.offset, KV_MiB);
	assert_int_equal(kv_uri_parse("file:/a/b,offset=2g", &u, &e), 0);
	assert_int_equal(u.offset, 2 * KV_GiB);
	assert_int_equal(kv_uri_parse("file:/a/b,offset=1X", &u, &e), -EINVAL);
	assert_msg_has(&e, "bad offset '1X'");
	kv_error_clear(&e);
	assert_int_equal(kv_uri_parse("file:/a/b,offset=", &u, &e), -EINVAL);
	kv_error_clear(&e);
	assert_int_equal(kv_uri_parse("file:,offset=1", &u, &e), -EINVAL);
	assert_msg_has(&e, "empty path");
}

/* ---- the configuration's capabilities subsection ---- */

static void test_config_caps(void **state)
{
	static const char name[] = "configuration/capabilities";
	char path[64];
	struct kv_error e = {0};
	struct kv_stream *s;
	uint8_t *b;
	size_t n, at = 0;
	bool on;

	(void)state;
	s = open_write(path, sizeof(path));
	kv_config_caps_put(s, false);
	kv_config_caps_put(s, true);
	kv_stream_put_u8(s, 0x01); /* what follows: a START section */
	b = close_and_read(s, path, &n);
	assert_int_equal(n, 1 + 1 + 26 + 4 + 4 + 1 + 10 + 1);
	assert_int_equal(b[at++], 0x05);
	assert_int_equal(b[at++], 26);
	assert_memory_equal(b + at, name, 26);
	at += 26;
	assert_memory_equal(b + at, "\0\0\0\1\0\0\0\1\x0amapped-ram", 19);

	/* Both agree: read, and the next byte is the START. */
	on = true;
	s = open_read_bytes(b, n);
	assert_int_equal(kv_config_caps_load(s, &on, false, &e), 0);
	assert_int_equal(kv_stream_get_u8(s), 0x01);
	kv_stream_close(s);
	/* The stream has it, this side not. */
	on = false;
	s = open_read_bytes(b, n);
	assert_int_equal(kv_config_caps_load(s, &on, false, &e), -EINVAL);
	assert_msg_has(&e, "mapped-ram on, this destination has it off");
	kv_stream_close(s);
	/* A file: destination follows the file. */
	on = false;
	s = open_read_bytes(b, n);
	assert_int_equal(kv_config_caps_load(s, &on, true, &e), 0);
	assert_true(on);
	kv_stream_close(s);
	/* This side has it, the stream not. */
	kv_error_clear(&e);
	s = open_read_bytes(b + n - 1, 1);
	assert_int_equal(kv_config_caps_load(s, &on, true, &e), -EINVAL);
	assert_msg_has(&e, "mapped-ram off, this destination has it on");
	kv_stream_close(s);
	/* Damaged: another subsection, version, count, capability. */
	b[2] = 'C';
	kv_error_clear(&e);
	s = open_read_bytes(b, n);
	assert_int_equal(kv_config_caps_load(s, &on, false, &e), -EINVAL);
	assert_msg_has(&e, "subsection 'Configuration/capabilities' (section type 0x05");
	kv_stream_close(s);
	b[2] = 'c';
	b[31] = 2;
	kv_error_clear(&e);
	s = open_read_bytes(b, n);
	assert_int_equal(kv_config_caps_load(s, &on, false, &e), -EINVAL);
	assert_msg_has(&e, "version 2");
	kv_stream_close(s);
	b[31] = 1;
	b[35] = 200;
	kv_error_clear(&e);
	s = open_read_bytes(b, n);
	assert_int_equal(kv_config_caps_load(s, &on, false, &e), -EINVAL);
	assert_msg_has(&e, "200 capabilities");
	kv_stream_close(s);
	b[35] = 1;
	b[37] = 'M';
	kv_error_clear(&e);
	s = open_read_bytes(b, n);
	assert_int_equal(kv_config_caps_load(s, &on, false, &e), -EINVAL);
	assert_msg_has(&e, "'Mapped-ram'");
	kv_stream_close(s);
	free(b);
}

/* ---- RAM through a file ---- */

#define NPAGES 2048 /* 8 MiB per block */

struct side {
	struct kv_ram_state *rs;
	uint8_t *mem[2];
};

static uint8_t *map_pages(size_t n)
{
	void *p = mmap(NULL, n * PG, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	assert_true(p != MAP_FAILED);
	return p;
}

static void side_init_instant(struct side *sd, bool on, unsigned threads,
			      bool direct, bool instant)
{
	struct kv_mapped_ram_cfg cfg = {on, threads, direct, instant};
	struct kv_error err = {0};

	sd->rs = kv_ram_new();
	assert_non_null(sd->rs);
	for (int i = 0; i < 2; i++) {
		char name[16];

		snprintf(name, sizeof(name), "blk%d", i);
		sd->mem[i] = map_pages(NPAGES);
		assert_int_equal(kv_ram_add_block(sd->rs, name, sd->mem[i],
						  NPAGES * PG, &err),
				 0);
	}
	kv_ram_set_mapped_ram(sd->rs, &cfg);
}

static void side_init(struct side *sd, bool on, unsigned threads,
		      bool direct)
{
	side_init_instant(sd, on, threads, direct, false);
}

static void side_free(struct side *sd)
{
	kv_ram_free(sd->rs);
	for (int i = 0; i < 2; i++)
		munmap(sd->mem[i], NPAGES * PG);
}

/* Pages 0..NPAGES/2 of each block written, every third one left zero. */
static void fill(struct side *sd)
{
	for (int i = 0; i < 2; i++)
		for (size_t pg = 0; pg < NPAGES / 2; pg++)
			if (pg % 3)
				memset(sd->mem[i] + pg * PG, (int)(pg * 7 + i + 1),
				       PG);
}

static void assert_same(const struct side *a, const struct side *b)
{
	for (int i = 0; i < 2; i++)
		for (size_t pg = 0; pg < NPAGES; pg++)
			if (memcmp(a->mem[i] + pg * PG, b->mem[i] + pg * PG, PG))
				fail_msg("block %d page %zu differs", i, pg);
}

static bool all_zero(const struct side *sd)
{
	for (int i = 0; i < 2; i++)
		for (size_t j = 0; j < NPAGES * PG; j++)
			if (sd->mem[i][j])
				return false;
	return true;
}

static int file_fd(bool on_disk, char *path, size_t size)
{
	int fd;

	if (!on_disk) {
		path[0] = '\0';
		fd = memfd_create("mapped", MFD_CLOEXEC);
	} else {
		snprintf(path, size, "/var/tmp/kvmig-mapped-XXXXXX");
		fd = mkstemp(path);
	}
	assert_true(fd >= 0);
	return fd;
}

static struct kv_stream *stream_on(int fd, enum kv_stream_mode mode)
{
	struct kv_error err = {0};
	struct kv_chan *c;
	struct kv_stream *s;

	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	c = kv_chan_from_fd(dup(fd), "file:test", &err);
	assert_non_null(c);
	s = kv_stream_new(c, mode);
	assert_non_null(s);
	return s;
}

/* Source: setup, passes (with writes between them), complete. The
 * workload's writes between passes are marked in the tracker. Returns
 * how many sections it wrote. */
static int save(struct side *src, int fd, struct kv_soft_tracker *tr,
		 void (*between)(struct side *, struct kv_soft_tracker *, int))
{
	const struct kv_savevm_live_ops *ops = kv_ram_live_ops();
	struct kv_stream *s = stream_on(fd, KV_STREAM_WRITE);
	struct kv_error err = {0};
	int ret, sections = 2;

	assert_int_equal(ftruncate(fd, 0), 0);
	if (ops->save_setup(s, src->rs, &err) < 0)
		fail_msg("%s", err.msg);
	for (int pass = 0; pass < 3; pass++) {
		do {
			ret = ops->save_iterate(s, src->rs, &err);
			sections++;
		} while (ret == 0);
		if (ret < 0)
			fail_msg("%s", err.msg);
		if (between)
			between(src, tr, pass);
		ops->pending_exact(src->rs, &err);
	}
	if (ops->save_complete(s, src->rs, &err) < 0)
		fail_msg("%s", err.msg);
	ops->save_cleanup(src->rs, false);
	/* Something after the RAM section, as the devices are. */
	kv_stream_put_be64(s, 0x5aa5);
	assert_int_equal(kv_stream_close(s), 0);
	return sections;
}

static int load(struct side *dst, int fd, int sections, struct kv_error *err)
{
	const struct kv_savevm_live_ops *ops = kv_ram_live_ops();
	struct kv_stream *s = stream_on(fd, KV_STREAM_READ);
	int ret = ops->load_setup(dst->rs, err);

	/* The pages come with START. */
	for (int i = 0; ret == 0 && i < sections; i++)
		ret = ops->load_state(s, dst->rs, KV_RAM_SECTION_VERSION, err);
	if (ret == 0 && kv_stream_get_be64(s) != 0x5aa5)
		ret = kv_error_set(err, -EIO, "the stream after the RAM: %s",
				   kv_stream_error(s) ? "unreadable" : "wrong");
	ops->load_cleanup(dst->rs, ret < 0);
	kv_stream_close(s);
	return ret;
}

static struct kv_soft_tracker *tracker(struct side *sd)
{
	uint64_t lens[2] = {NPAGES * PG, NPAGES * PG};
	struct kv_soft_tracker *t = kv_soft_tracker_new(lens, 2);

	assert_non_null(t);
	kv_ram_set_tracker(sd->rs, kv_soft_tracker_iface(t));
	return t;
}

/* Between passes: rewrite some pages, write new ones, zero page 1 of
 * block 0 (written in pass 1: it must be punched out of the file). */
static void dirty(struct side *sd, struct kv_soft_tracker *tr, int pass)
{
	for (size_t pg = 10; pg < 200; pg += 7) {
		memset(sd->mem[1] + pg * PG, 0xa0 + pass, PG);
		kv_soft_tracker_mark(tr, 1, pg * PG);
	}
	memset(sd->mem[0] + (NPAGES - 1 - pass) * PG, 0x33, PG);
	kv_soft_tracker_mark(tr, 0, (NPAGES - 1 - pass) * PG);
	if (pass == 1) {
		memset(sd->mem[0] + 1 * PG, 0, PG);
		kv_soft_tracker_mark(tr, 0, 1 * PG);
	}
}

static uint64_t nonzero_bytes(const struct side *sd)
{
	static const uint8_t zero[PG];
	uint64_t n = 0;

	for (int i = 0; i < 2; i++)
		for (size_t pg = 0; pg < NPAGES; pg++)
			n += memcmp(sd->mem[i] + pg * PG, zero, PG) ? PG : 0;
	return n;
}

/* The file's copy of block 0's page 1 (which became zero) reads zero. */
static void assert_page1_hole(int fd)
{
	static const uint8_t zero[PG];
	uint8_t buf[PG];
	uint8_t raw[KV_MAPPED_RAM_HDR_SIZE];
	struct kv_mapped_ram_hdr h;
	/* The first header: after the stream's MEM_SIZE, str8 "blk0", be64. */
	off_t at = 8 + 1 + 4 + 8;

	assert_int_equal(pread(fd, raw, sizeof(raw), at), sizeof(raw));
	kv_mapped_ram_hdr_decode(raw, &h);
	assert_int_equal(h.pages_offset, KV_MiB);
	assert_int_equal(pread(fd, buf, PG, (off_t)h.pages_offset + PG), PG);
	assert_memory_equal(buf, zero, PG);
}

static void roundtrip(unsigned threads, bool direct)
{
	struct side src, dst;
	struct kv_error err = {0};
	struct kv_soft_tracker *tr;
	struct kv_ram_stats st;
	struct stat sb;
	char path[64];
	int fd = file_fd(direct, path, sizeof(path));

	side_init(&src, true, threads, direct);
	side_init(&dst, true, threads, direct);
	fill(&src);
	tr = tracker(&src);
	int sections = save(&src, fd, tr, dirty);

	assert_page1_hole(fd);
	assert_int_equal(fstat(fd, &sb), 0);
	/* On disk: the non-zero pages, plus a 1 MiB step per block for the
	 * headers, bitmaps and the stream. */
	if ((uint64_t)sb.st_blocks * 512 > nonzero_bytes(&src) + 3 * KV_MiB)
		fail_msg("%llu bytes on disk for %llu of non-zero memory",
			 (unsigned long long)sb.st_blocks * 512,
			 (unsigned long long)nonzero_bytes(&src));
	if (load(&dst, fd, sections, &err) < 0)
		fail_msg("%s", err.msg);
	assert_same(&src, &dst);
	kv_ram_get_stats(dst.rs, &st);
	assert_int_equal(st.normal_pages + st.zero_pages, 2 * NPAGES);
	assert_int_equal(st.normal_pages * PG, nonzero_bytes(&src));
	kv_soft_tracker_free(tr);
	side_free(&src);
	side_free(&dst);
	if (path[0])
		unlink(path);
	close(fd);
}

static void test_roundtrip_inline(void **state)
{
	(void)state;
	roundtrip(0, false);
}

static void test_roundtrip_threads(void **state)
{
	(void)state;
	roundtrip(3, false);
}

static void test_roundtrip_direct_io(void **state)
{
	(void)state;
	roundtrip(0, true);
	roundtrip(2, true);
}

/* Instant resume: the load reads no page; every page the destination
 * touches afterwards comes from the file through userfaultfd, the rest
 * from the filler thread, and the memory ends equal. */
static void test_instant(void **state)
{
	struct side src, dst;
	struct kv_error err = {0};
	struct kv_soft_tracker *tr;
	char path[64];
	int fd = file_fd(false, path, sizeof(path));
	int sections;

	(void)state;
	side_init(&src, true, 0, false);
	fill(&src);
	tr = tracker(&src);
	sections = save(&src, fd, tr, dirty);
	side_init_instant(&dst, true, 0, false, true);
	if (load(&dst, fd, sections, &err) < 0)
		fail_msg("%s", err.msg);
	/* Touch the last pages first (the filler goes in file order). */
	for (int i = 1; i >= 0; i--)
		for (size_t pg = NPAGES; pg-- > 0;)
			if (memcmp(src.mem[i] + pg * PG, dst.mem[i] + pg * PG, PG))
				fail_msg("block %d page %zu differs", i, pg);
	side_free(&dst);
	/* With --verify-ram it is refused: nothing could be checked first. */
	side_init_instant(&dst, true, 0, false, true);
	kv_ram_set_verify(dst.rs, true);
	assert_true(load(&dst, fd, sections, &err) < 0);
	assert_msg_has(&err, "--verify-ram");
	assert_true(all_zero(&dst));
	side_free(&dst);
	kv_soft_tracker_free(tr);
	side_free(&src);
	close(fd);
}

/* A file cut anywhere (in the pages, in the stream after them, in the
 * header) is refused, and nothing of it stays in memory. */
static void test_truncated(void **state)
{
	static const struct {
		off_t at;
		const char *why;
	} cuts[] = {
	    {KV_MiB + 100 * PG, "truncated?"},	       /* block 0's pages */
	    {KV_MiB + NPAGES * PG + 30, "reading the header of block 'blk1'"},
	    {40, "reading the header of block 'blk0'"},
	};
	struct side src, dst;
	struct kv_soft_tracker *tr;
	char path[64];
	int fd = file_fd(false, path, sizeof(path));
	int sections;

	(void)state;
	side_init(&src, true, 0, false);
	fill(&src);
	tr = tracker(&src);
	sections = save(&src, fd, tr, NULL);
	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
		struct kv_error err = {0};

		for (int threads = 0; threads <= 2; threads += 2) {
			int cfd = memfd_create("cut", MFD_CLOEXEC);
			off_t done = 0;
			uint8_t buf[65536];

			while (done < cuts[i].at) {
				size_t want = sizeof(buf);
				ssize_t n;

				if ((off_t)want > cuts[i].at - done)
					want = (size_t)(cuts[i].at - done);
				n = pread(fd, buf, want, done);
				assert_true(n > 0);
				assert_int_equal(pwrite(cfd, buf, (size_t)n, done), n);
				done += n;
			}
			side_init(&dst, true, (unsigned)threads, false);
			assert_true(load(&dst, cfd, sections, &err) < 0);
			assert_msg_has(&err, cuts[i].why);
			assert_true(all_zero(&dst));
			side_free(&dst);
			close(cfd);
			kv_error_clear(&err);
		}
	}
	kv_soft_tracker_free(tr);
	side_free(&src);
	close(fd);
}

/* A flipped byte in a header field, or a bitmap bit past the block. */
static void test_flipped(void **state)
{
	struct side src, dst;
	struct kv_soft_tracker *tr;
	struct kv_error err = {0};
	char path[64];
	int fd = file_fd(false, path, sizeof(path));
	const off_t hdr = 8 + 1 + 4 + 8;
	static const struct {
		off_t at;
		const char *why;
	} flips[] = {
	    {hdr + 3, "version"},
	    {hdr + 10, "page_size"},
	    {hdr + 19, "bitmap_offset"},
	    {hdr + 25, "pages_offset"},
	};
	uint8_t b;
	int sections;

	(void)state;
	side_init(&src, true, 0, false);
	fill(&src);
	tr = tracker(&src);
	sections = save(&src, fd, tr, NULL);
	for (size_t i = 0; i < sizeof(flips) / sizeof(flips[0]); i++) {
		assert_int_equal(pread(fd, &b, 1, flips[i].at), 1);
		b ^= 0x40;
		assert_int_equal(pwrite(fd, &b, 1, flips[i].at), 1);
		side_init(&dst, true, 0, false);
		assert_true(load(&dst, fd, sections, &err) < 0);
		assert_msg_has(&err, flips[i].why);
		assert_msg_has(&err, "file:test");
		assert_true(all_zero(&dst));
		side_free(&dst);
		kv_error_clear(&err);
		b ^= 0x40;
		assert_int_equal(pwrite(fd, &b, 1, flips[i].at), 1);
	}
	/* The last word of block 0's bitmap: a bit past its 2048 pages is
	 * impossible with 2048 (a whole word), so check block sizes that
	 * leave a partial word in test_layout; here, a cleared bit drops a
	 * page (what --verify-ram catches): the load succeeds, page 2 is
	 * zero. */
	assert_int_equal(pread(fd, &b, 1, hdr + KV_MAPPED_RAM_HDR_SIZE), 1);
	b &= (uint8_t)~0x04;
	assert_int_equal(pwrite(fd, &b, 1, hdr + KV_MAPPED_RAM_HDR_SIZE), 1);
	side_init(&dst, true, 0, false);
	if (load(&dst, fd, sections, &err) < 0)
		fail_msg("%s", err.msg);
	assert_int_equal(dst.mem[0][2 * PG], 0);
	assert_int_not_equal(src.mem[0][2 * PG], 0);
	side_free(&dst);
	kv_soft_tracker_free(tr);
	side_free(&src);
	close(fd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_header_bytes),
	    cmocka_unit_test(test_layout),
	    cmocka_unit_test(test_header_check),
	    cmocka_unit_test(test_uri_offset),
	    cmocka_unit_test(test_config_caps),
	    cmocka_unit_test(test_roundtrip_inline),
	    cmocka_unit_test(test_roundtrip_threads),
	    cmocka_unit_test(test_roundtrip_direct_io),
	    cmocka_unit_test(test_instant),
	    cmocka_unit_test(test_truncated),
	    cmocka_unit_test(test_flipped),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
