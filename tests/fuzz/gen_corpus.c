/* SPDX-License-Identifier: MIT */
/*
 * Writes the loader fuzzer's seed corpus into DIR:
 *
 *   gen_corpus DIR
 *
 * valid-*: real streams from the real source code path (the savevm save
 * phases driven by hand for several dirty passes, and the migration driver
 * for one), saving the machine of fuzz_vm.h. Memory is small (80 KiB) and
 * mostly zero so the seeds stay a few KiB; the random filler is a fixed-seed
 * generator, so the output is the same on every run.
 *
 * bad-*: edge cases made by hand: truncations and single-byte changes of a
 * valid stream, and hand-built RAM records the loader must refuse.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz_vm.h"
#include "io/channel.h"
#include "io/stream.h"
#include "migration/migration.h"
#include "migration/dirty/soft_tracker.h"
#include "migration/postcopy/postcopy_src.h"

/* --- deterministic filler --- */

static uint64_t prng_next(uint64_t *state)
{
	/* xorshift64*: plenty for incompressible-looking page bytes. */
	*state ^= *state >> 12;
	*state ^= *state << 25;
	*state ^= *state >> 27;
	return *state * 2685821657736338717ULL;
}

static void fill_random(uint8_t *page, size_t len, uint64_t *state)
{
	for (size_t i = 0; i + 8 <= len; i += 8) {
		uint64_t v = prng_next(state);

		memcpy(page + i, &v, 8);
	}
}

enum gen_fill { FILL_ZERO, FILL_RANDOM, FILL_MIXED };

/* What page `i` of a block holds. Only the first pages of a block carry
 * data, so seeds stay small: mixed has a random page, a repeated-byte page
 * and a page that is zero but for its last byte (the zero check must read
 * all of it); random has two random pages. mem1 gets only its first
 * two pages filled. */
static void fill_page(uint8_t *page, size_t i, enum gen_fill fill,
		      uint64_t *state)
{
	if (fill == FILL_RANDOM && i < 2) {
		fill_random(page, KV_PAGE_SIZE, state);
	} else if (fill == FILL_MIXED) {
		if (i == 1)
			fill_random(page, KV_PAGE_SIZE, state);
		else if (i == 2)
			memset(page, 0xa5, KV_PAGE_SIZE);
		else if (i == 3)
			page[KV_PAGE_SIZE - 1] = 1;
	}
}

static void fill_block(uint8_t *mem, uint64_t len, enum gen_fill fill,
		       uint64_t *state)
{
	for (size_t i = 0; i < len / KV_PAGE_SIZE; i++)
		fill_page(mem + i * KV_PAGE_SIZE, i, fill, state);
}

static void fill_device(struct fuzz_dev *d, bool extra)
{
	d->a = 0x11;
	d->b = 0x2233;
	d->c = 0x44556677;
	d->d = 0x8899aabbccddeeffULL;
	d->e = -5;
	d->f = true;
	d->g = -1234567890123LL;
	for (size_t i = 0; i < sizeof(d->buf); i++)
		d->buf[i] = (uint8_t)(0xb0 + i);
	for (size_t i = 0; i < 4; i++)
		d->arr[i] = (uint32_t)(0x1000 * (i + 1));
	d->inner.x = 0xbeef;
	d->inner.y = 42;
	d->send_extra = extra;
	d->extra_val = 0xfeedface;
	memset(d->extra_buf, 0x7c, sizeof(d->extra_buf));
}

/* --- valid streams from the source path --- */

struct gen_seed {
	const char *name;
	enum gen_fill fill;
	int passes;        /* 1 = setup + first pass only */
	bool extra;        /* send the device subsection */
	bool driver;       /* run kv_mig_run instead of the phases by hand */
	uint64_t mem2;     /* a third block the destination must allocate */
	bool compress;     /* x-compress always: ZPAGES records */
	bool postcopy;     /* ADVISE, a pass, then postcopy (FORMAT.md 12) */
};

struct gen_src {
	struct fuzz_vm vm;
	struct kv_soft_tracker *tracker;
	uint64_t prng;
};

static int open_out(const char *dir, const char *name, struct kv_stream **s,
		    struct kv_error *err)
{
	char path[4096];
	struct kv_chan *chan;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return kv_error_set_errno(err, -errno, "cannot create %s",
					  path);
	chan = kv_chan_from_fd(fd, path, err);
	if (!chan) {
		close(fd);
		return err->code ? err->code : -EIO;
	}
	*s = kv_stream_new(chan, KV_STREAM_WRITE);
	if (!*s) {
		kv_chan_close(chan);
		return kv_error_set(err, -ENOMEM, "out of memory");
	}
	return 0;
}

/* What a guest does between passes: write a byte into one page (a
 * different one each pass) and zero a page again (now a ZERO record). */
static void dirty_some(struct gen_src *g, int pass)
{
	uint64_t off = (uint64_t)(5 + pass % 8) * KV_PAGE_SIZE + 64 * pass;

	g->vm.mem0[off] = (uint8_t)(0x40 + pass);
	kv_soft_tracker_mark(g->tracker, 0, off);
	memset(g->vm.mem1 + KV_PAGE_SIZE, 0, KV_PAGE_SIZE);
	kv_soft_tracker_mark(g->tracker, 1, KV_PAGE_SIZE);
}

static int iterate_until_idle(struct kv_savevm *sv, struct kv_stream *s,
			      struct kv_error *err)
{
	/* Far more rounds than 80 KiB needs: a bound, not an expectation. */
	for (int round = 0; round < 1000; round++) {
		int ret = kv_savevm_save_iterate(sv, s, err);

		if (ret != 0)
			return ret < 0 ? ret : 0;
	}
	return kv_error_set(err, -ETIMEDOUT, "iterate never finished");
}

static int save_by_phases(struct gen_src *g, const struct gen_seed *seed,
			  struct kv_stream *s, struct kv_error *err)
{
	struct kv_savevm *sv = g->vm.sv;
	uint64_t pending;
	int ret;

	ret = kv_savevm_save_header(sv, s, false, err);
	if (!ret)
		ret = kv_savevm_save_setup(sv, s, err);
	if (!ret)
		ret = iterate_until_idle(sv, s, err);
	for (int pass = 1; !ret && pass < seed->passes; pass++) {
		dirty_some(g, pass);
		ret = kv_savevm_pending_exact(sv, &pending, err);
		if (!ret)
			ret = iterate_until_idle(sv, s, err);
	}
	if (!ret && seed->passes > 1) {
		/* "Stop the workload": one last write goes in the END part. */
		dirty_some(g, seed->passes);
		ret = kv_savevm_pending_exact(sv, &pending, err);
	}
	if (!ret)
		ret = kv_savevm_save_complete(sv, s, err);
	kv_savevm_save_cleanup(sv, ret < 0);
	return ret;
}

/* QEMU's postcopy order through the real source path: ADVISE, setup, a
 * pass, the switch (discards for the dirty pages), the package, the
 * rest of the pages, END, EOF. */
static int save_postcopy(struct gen_src *g, struct kv_stream *s,
			 struct kv_error *err)
{
	struct kv_pc_advise a = { true, KV_PAGE_SIZE, KV_PAGE_SIZE };
	struct kv_savevm *sv = g->vm.sv;
	struct kv_pc_blocks blocks;
	struct kv_pc_src *pcs = NULL;
	uint8_t p[KV_PC_ADVISE_LEN];
	size_t n = 0;
	int ret;

	blocks.v = kv_ram_pc_blocks(g->vm.rs, &n);
	blocks.n = n;
	kv_pc_advise_encode(&a, p);
	ret = kv_savevm_save_header(sv, s, false, err);
	if (!ret)
		ret = kv_savevm_save_command(s, KV_MIG_CMD_POSTCOPY_ADVISE, p,
					     sizeof(p), err);
	if (!ret)
		ret = kv_savevm_save_setup(sv, s, err);
	if (!ret)
		ret = kv_savevm_save_iterate(sv, s, err) < 0 ? err->code : 0;
	dirty_some(g, 1);
	if (!ret) {
		pcs = kv_pc_src_new(&blocks, err);
		ret = pcs ? kv_ram_pc_switch(s, g->vm.rs, pcs, err) : err->code;
	}
	if (!ret)
		ret = kv_savevm_save_pc_package(sv, s, err);
	if (!ret)
		ret = iterate_until_idle(sv, s, err);
	if (!ret)
		ret = kv_savevm_save_pc_complete(sv, s, err);
	kv_savevm_save_cleanup(sv, ret < 0);
	kv_ram_pc_src_end(g->vm.rs);
	kv_pc_src_free(pcs);
	free((void *)blocks.v);
	return ret;
}

static int gen_stop_vm(void *opaque, struct kv_error *err)
{
	return 0;
}

static void gen_resume_vm(void *opaque)
{
}

static int save_by_driver(struct gen_src *g, struct kv_stream *s,
			  struct kv_error *err)
{
	struct kv_mig_hooks hooks = {
		.stop_vm = gen_stop_vm,
		.resume_vm = gen_resume_vm,
	};
	struct kv_mig_params params;
	struct kv_migration *m;
	int ret;

	kv_mig_params_default(&params);
	m = kv_mig_new(g->vm.sv, g->vm.rs, &params, &hooks);
	if (!m)
		return kv_error_set(err, -ENOMEM, "out of memory");
	ret = kv_mig_run(m, s, err);
	kv_mig_free(m);
	return ret;
}

static int gen_valid(const char *dir, const struct gen_seed *seed,
		     struct kv_error *err)
{
	const struct fuzz_vm_opts opts = { .extra_block = seed->mem2 };
	struct gen_src g = { .prng = 0x9e3779b97f4a7c15ULL };
	struct kv_stream *s = NULL;
	uint64_t lengths[3] = { FUZZ_MEM0_SIZE, FUZZ_MEM1_SIZE, seed->mem2 };
	int ret, cret;

	ret = fuzz_vm_init(&g.vm, &opts, err);
	if (ret < 0)
		goto out;
	fill_block(g.vm.mem0, FUZZ_MEM0_SIZE, seed->fill, &g.prng);
	fill_block(g.vm.mem1, 2 * KV_PAGE_SIZE, seed->fill, &g.prng);
	fill_device(&g.vm.dev, seed->extra);
	g.tracker = kv_soft_tracker_new(lengths, seed->mem2 ? 3 : 2);
	if (!g.tracker) {
		ret = kv_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	kv_ram_set_tracker(g.vm.rs, kv_soft_tracker_iface(g.tracker));
	if (seed->compress)
		kv_ram_set_compress(g.vm.rs, KV_RAM_COMPRESS_ALWAYS);
	ret = open_out(dir, seed->name, &s, err);
	if (ret < 0)
		goto out;
	if (seed->driver)
		ret = save_by_driver(&g, s, err);
	else if (seed->postcopy)
		ret = save_postcopy(&g, s, err);
	else
		ret = save_by_phases(&g, seed, s, err);
	cret = kv_stream_close(s);
	if (!ret && cret < 0)
		ret = kv_error_set(err, cret, "closing %s/%s", dir, seed->name);
out:
	fuzz_vm_fini(&g.vm);
	if (g.tracker)
		kv_soft_tracker_free(g.tracker);
	if (ret < 0) {
		char path[4096];

		/* No half-written seed: it would be a "valid-" file that is
		 * not a valid stream. */
		snprintf(path, sizeof(path), "%s/%s", dir, seed->name);
		unlink(path);
		kv_error_prefix(err, "%s", seed->name);
	}
	return ret;
}

static const struct gen_seed valid_seeds[] = {
	{ "valid-zero.bin", FILL_ZERO, 1, false, false, 0, false, false },
	{ "valid-random.bin", FILL_RANDOM, 1, true, false, 0, false, false },
	{ "valid-mixed.bin", FILL_MIXED, 1, true, false, 0, false, false },
	{ "valid-mixed-passes.bin", FILL_MIXED, 3, true, false, 0, false, false },
	{ "valid-zero-passes-nosub.bin", FILL_ZERO, 3, false, false, 0, false, false },
	{ "valid-driver-mixed.bin", FILL_MIXED, 1, true, true, 0, false, false },
	{ "valid-alloc-block.bin", FILL_MIXED, 2, false, false,
	  8 * KV_PAGE_SIZE, false, false },
	{ "valid-zpages-passes.bin", FILL_MIXED, 3, true, false, 0, true, false },
	{ "valid-postcopy.bin", FILL_MIXED, 1, true, false, 0, false, true },
};

/* --- hand-made edge cases --- */

struct gbuf {
	uint8_t data[64 * 1024];
	size_t len;
};

static void g_bytes(struct gbuf *b, const void *p, size_t n)
{
	if (b->len + n > sizeof(b->data))
		n = sizeof(b->data) - b->len;
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

static void g_u8(struct gbuf *b, uint8_t v)
{
	g_bytes(b, &v, 1);
}

static void g_be32(struct gbuf *b, uint32_t v)
{
	uint8_t p[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16),
			 (uint8_t)(v >> 8), (uint8_t)v };

	g_bytes(b, p, 4);
}

static void g_be64(struct gbuf *b, uint64_t v)
{
	g_be32(b, (uint32_t)(v >> 32));
	g_be32(b, (uint32_t)v);
}

static void g_str8(struct gbuf *b, const char *s)
{
	size_t n = strlen(s);

	g_u8(b, (uint8_t)n);
	g_bytes(b, s, n);
}

static int write_file(const char *dir, const char *name, const void *data,
		      size_t len, struct kv_error *err)
{
	char path[4096];
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f)
		return kv_error_set_errno(err, -errno, "cannot create %s",
					  path);
	n = fwrite(data, 1, len, f);
	if (fclose(f) || n != len)
		return kv_error_set(err, -EIO, "cannot write %s", path);
	return 0;
}

/* Magic, version, configuration, and the RAM START section announcing
 * mem0 and mem1 (section id 0): everything a RAM record needs before it. */
static void g_prefix(struct gbuf *b, uint64_t total)
{
	g_be32(b, KV_VM_FILE_MAGIC);
	g_be32(b, KV_VM_FILE_VERSION);
	g_u8(b, KV_SEC_CONFIGURATION);
	g_be32(b, (uint32_t)strlen(FUZZ_MACHINE));
	g_bytes(b, FUZZ_MACHINE, strlen(FUZZ_MACHINE));
	g_u8(b, KV_SEC_START);
	g_be32(b, 0);
	g_str8(b, "ram");
	g_be32(b, 0);
	g_be32(b, KV_RAM_SECTION_VERSION);
	g_be64(b, total | KV_RAM_FLAG_MEM_SIZE);
	g_str8(b, "mem0");
	g_be64(b, FUZZ_MEM0_SIZE);
	g_str8(b, "mem1");
	g_be64(b, FUZZ_MEM1_SIZE);
	g_be64(b, KV_RAM_FLAG_EOS);
	g_u8(b, KV_SEC_FOOTER);
	g_be32(b, 0);
}

static void g_part_start(struct gbuf *b)
{
	g_u8(b, KV_SEC_PART);
	g_be32(b, 0);
}

static void g_part_end(struct gbuf *b)
{
	g_be64(b, KV_RAM_FLAG_EOS);
	g_u8(b, KV_SEC_FOOTER);
	g_be32(b, 0);
	g_u8(b, KV_SEC_EOF);
}

/* One PART with a single record (flags | addr) in block idstr (NULL: no
 * idstr, as with CONTINUE), followed by its payload. */
static void g_record_stream(struct gbuf *b, uint64_t addr, uint64_t flags,
			    const char *idstr)
{
	g_prefix(b, FUZZ_MEM0_SIZE + FUZZ_MEM1_SIZE);
	g_part_start(b);
	g_be64(b, addr | flags);
	if (idstr)
		g_str8(b, idstr);
	if (flags & KV_RAM_FLAG_ZERO)
		g_u8(b, 0);
	if (flags & (KV_RAM_FLAG_PAGE | KV_RAM_FLAG_ZPAGES)) {
		for (size_t i = 0; i < KV_PAGE_SIZE; i++)
			g_u8(b, (uint8_t)i);
	}
	g_part_end(b);
}

struct gen_record_case {
	const char *name;
	uint64_t addr;
	uint64_t flags;
	const char *idstr;
};

static const struct gen_record_case record_cases[] = {
	{ "bad-ram-compress-flag.bin", 0, KV_RAM_FLAG_COMPRESS_PAGE, "mem0" },
	{ "bad-ram-hook-flag.bin", 0, KV_RAM_FLAG_HOOK, "mem0" },
	{ "bad-ram-xbzrle-not-enabled.bin", 0, KV_RAM_FLAG_XBZRLE, "mem0" },
	{ "bad-ram-unknown-flag.bin", 0, 0x800 | KV_RAM_FLAG_ZERO, "mem0" },
	/* ZPAGES whose count, length and zstd data are a PAGE's bytes */
	{ "bad-ram-zpages-garbage.bin", 0, KV_RAM_FLAG_ZPAGES, "mem0" },
	{ "bad-ram-block-not-found.bin", 0, KV_RAM_FLAG_ZERO, "nope" },
	{ "bad-ram-offset-beyond.bin", FUZZ_MEM1_SIZE, KV_RAM_FLAG_PAGE,
	  "mem1" },
	{ "bad-ram-offset-huge.bin", 0x7ffffffffffff000ULL, KV_RAM_FLAG_ZERO,
	  "mem0" },
	{ "bad-ram-continue-first.bin", 0x1000,
	  KV_RAM_FLAG_ZERO | KV_RAM_FLAG_CONTINUE, NULL },
	{ "edge-ram-zero-fill-byte.bin", 0, KV_RAM_FLAG_ZERO, "mem0" },
};

/* Postcopy's commands out of place or malformed (FORMAT.md 12), each
 * after the RAM's START section, then EOF. */
struct gen_pc_case {
	const char *name;
	uint8_t bytes[64];
	size_t len;
};

#define PC_CMD(n, l) KV_SEC_COMMAND, 0, (n), 0, (l)
#define PC_ADVISE_OK                                                           \
	PC_CMD(3, 16), 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x10, 0

static const struct gen_pc_case pc_cases[] = {
	{ "bad-pc-listen-twice.bin",
	  { PC_ADVISE_OK, PC_CMD(4, 0), PC_CMD(4, 0) }, 31 },
	{ "bad-pc-run-before-listen.bin", { PC_ADVISE_OK, PC_CMD(5, 0) }, 26 },
	{ "bad-pc-advise-page-size.bin",
	  { PC_CMD(3, 16), 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0x10,
	    0 }, 21 },
	/* mem1 is 4 pages: a range that starts at its end goes past it */
	{ "bad-pc-discard-past-block.bin",
	  { PC_ADVISE_OK, PC_CMD(6, 23), 0, 4, 'm', 'e', 'm', '1', 0, 0, 0,
	    0, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0, 0x10, 0 }, 49 },
	{ "bad-pc-discard-version.bin",
	  { PC_ADVISE_OK, PC_CMD(6, 23), 1, 4, 'm', 'e', 'm', '0', 0, 0, 0,
	    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0 }, 49 },
	{ "bad-pc-packaged-empty.bin",
	  { PC_ADVISE_OK, PC_CMD(8, 4), 0, 0, 0, 0 }, 30 },
	{ "bad-pc-packaged-past-end.bin",
	  { PC_ADVISE_OK, PC_CMD(8, 4), 0, 0, 0x10, 0, PC_CMD(4, 0) }, 35 },
	{ "bad-pc-resume-before-run.bin",
	  { PC_ADVISE_OK, PC_CMD(7, 0) }, 26 },
};

static int gen_postcopy_cases(const char *dir, struct kv_error *err)
{
	static struct gbuf b;
	int ret = 0;

	for (size_t i = 0; !ret && i < sizeof(pc_cases) / sizeof(pc_cases[0]);
	     i++) {
		b.len = 0;
		g_prefix(&b, FUZZ_MEM0_SIZE + FUZZ_MEM1_SIZE);
		g_bytes(&b, pc_cases[i].bytes, pc_cases[i].len);
		g_u8(&b, KV_SEC_EOF);
		ret = write_file(dir, pc_cases[i].name, b.data, b.len, err);
	}
	return ret;
}

static int gen_record_cases(const char *dir, struct kv_error *err)
{
	static struct gbuf b;
	int ret = 0;

	for (size_t i = 0; !ret && i < sizeof(record_cases) /
					    sizeof(record_cases[0]); i++) {
		const struct gen_record_case *c = &record_cases[i];

		b.len = 0;
		g_record_stream(&b, c->addr, c->flags, c->idstr);
		if (!strcmp(c->name, "edge-ram-zero-fill-byte.bin")) {
			/* ZERO's fill byte is the record's last byte before
			 * EOS (8), footer (5) and EOF (1). */
			b.data[b.len - 15] = 0x01;
		}
		ret = write_file(dir, c->name, b.data, b.len, err);
	}
	if (ret)
		return ret;

	ret = gen_postcopy_cases(dir, err);
	if (ret)
		return ret;

	/* MEM_SIZE total that is not the sum of the blocks. */
	b.len = 0;
	g_prefix(&b, FUZZ_MEM0_SIZE + FUZZ_MEM1_SIZE + KV_PAGE_SIZE);
	g_u8(&b, KV_SEC_EOF);
	ret = write_file(dir, "bad-ram-mem-size-total.bin", b.data, b.len,
			 err);
	if (ret)
		return ret;

	/* A block bigger than the destination lets a stream allocate. */
	b.len = 0;
	g_be32(&b, KV_VM_FILE_MAGIC);
	g_be32(&b, KV_VM_FILE_VERSION);
	g_u8(&b, KV_SEC_CONFIGURATION);
	g_be32(&b, (uint32_t)strlen(FUZZ_MACHINE));
	g_bytes(&b, FUZZ_MACHINE, strlen(FUZZ_MACHINE));
	g_u8(&b, KV_SEC_START);
	g_be32(&b, 0);
	g_str8(&b, "ram");
	g_be32(&b, 0);
	g_be32(&b, KV_RAM_SECTION_VERSION);
	g_be64(&b, (1ULL << 40) | KV_RAM_FLAG_MEM_SIZE);
	g_str8(&b, "huge");
	g_be64(&b, 1ULL << 40);
	g_be64(&b, KV_RAM_FLAG_EOS);
	g_u8(&b, KV_SEC_FOOTER);
	g_be32(&b, 0);
	g_u8(&b, KV_SEC_EOF);
	ret = write_file(dir, "bad-ram-alloc-over-cap.bin", b.data, b.len,
			 err);
	if (ret)
		return ret;

	/* Footer naming another section. */
	b.len = 0;
	g_prefix(&b, FUZZ_MEM0_SIZE + FUZZ_MEM1_SIZE);
	b.data[b.len - 1] = 7;
	g_u8(&b, KV_SEC_EOF);
	ret = write_file(dir, "bad-footer-id.bin", b.data, b.len, err);
	if (ret)
		return ret;

	/* Section type nobody knows, after a good START. */
	b.len = 0;
	g_prefix(&b, FUZZ_MEM0_SIZE + FUZZ_MEM1_SIZE);
	g_u8(&b, 0x42);
	ret = write_file(dir, "bad-section-type.bin", b.data, b.len, err);
	if (ret)
		return ret;

	/* A FULL section for an idstr that is not registered. */
	b.len = 0;
	g_prefix(&b, FUZZ_MEM0_SIZE + FUZZ_MEM1_SIZE);
	g_u8(&b, KV_SEC_FULL);
	g_be32(&b, 1);
	g_str8(&b, "no-such-device");
	g_be32(&b, 0);
	g_be32(&b, 1);
	g_u8(&b, KV_SEC_FOOTER);
	g_be32(&b, 1);
	g_u8(&b, KV_SEC_EOF);
	return write_file(dir, "bad-unknown-idstr.bin", b.data, b.len, err);
}

static int read_seed(const char *dir, const char *name, uint8_t *buf,
		     size_t size, size_t *len, struct kv_error *err)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "rb");
	if (!f)
		return kv_error_set_errno(err, -errno, "cannot read %s", path);
	*len = fread(buf, 1, size, f);
	fclose(f);
	if (*len < 64)
		return kv_error_set(err, -EINVAL, "%s is too short", path);
	return 0;
}

/* Variants of valid streams: truncations and single-byte changes. */
static int gen_mutations(const char *dir, struct kv_error *err)
{
	static uint8_t buf[1 << 20];
	size_t len;
	int ret;

	ret = read_seed(dir, "valid-mixed.bin", buf, sizeof(buf), &len, err);
	if (ret)
		return ret;

	ret = write_file(dir, "bad-truncated-header.bin", buf, 6, err);
	if (!ret)
		ret = write_file(dir, "bad-truncated-in-config.bin", buf, 14,
				 err);
	if (!ret)
		ret = write_file(dir, "bad-truncated-half.bin", buf, len / 2,
				 err);
	if (!ret)
		ret = write_file(dir, "bad-truncated-last-byte.bin", buf,
				 len - 1, err);
	if (!ret)
		ret = write_file(dir, "bad-empty.bin", buf, 0, err);
	if (!ret)
		ret = read_seed(dir, "valid-zero.bin", buf, sizeof(buf), &len,
				err);
	if (ret)
		return ret;

	buf[0] ^= 0x20;
	ret = write_file(dir, "bad-magic.bin", buf, len, err);
	buf[0] ^= 0x20;
	buf[7] = 4;
	if (!ret)
		ret = write_file(dir, "bad-version.bin", buf, len, err);
	buf[7] = (uint8_t)KV_VM_FILE_VERSION;
	/* The machine name starts after magic, version, type and length. */
	buf[13] ^= 0x01;
	if (!ret)
		ret = write_file(dir, "bad-machine-name.bin", buf, len, err);
	buf[13] ^= 0x01;
	return ret;
}

int main(int argc, char **argv)
{
	struct kv_error err = { 0 };
	int failed = 0;

	if (argc != 2) {
		fprintf(stderr, "usage: gen_corpus DIR\n");
		return 2;
	}
	/* One failing seed does not stop the others: report each. */
	for (size_t i = 0; i < sizeof(valid_seeds) / sizeof(valid_seeds[0]);
	     i++) {
		if (gen_valid(argv[1], &valid_seeds[i], &err) < 0) {
			fprintf(stderr, "gen_corpus: %s\n", err.msg);
			kv_error_clear(&err);
			failed = 1;
		}
	}
	if (gen_record_cases(argv[1], &err) < 0 ||
	    gen_mutations(argv[1], &err) < 0) {
		fprintf(stderr, "gen_corpus: %s\n", err.msg);
		failed = 1;
	}
	return failed;
}
