/* SPDX-License-Identifier: MIT */
/* Unit tests of the VMM's pieces that need no KVM: MP table, multiboot
 * loader, guest memory layout, UART, CPUID patching, QEMU's globalstate
 * section. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/units.h"
#include "io/channel.h"
#include "io/stream.h"
#include "migration/savevm/vmstate.h"
#include "test_vmm_elf.h"
#include "vmm/cpuid.h"
#include "vmm/memory.h"
#include "vmm/mptable.h"
#include "vmm/multiboot.h"
#include "vmm/pio.h"
#include "vmm/serial.h"
#include "vmm/vm.h"
#include "vmm/vm_migration.h"


static uint32_t get32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return v;
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint8_t sum_bytes(const uint8_t *p, size_t n)
{
	uint8_t s = 0;

	while (n--)
		s += *p++;
	return s;
}

/* ---- MP table ---- */

struct mp_counts {
	int cpus, bsp, buses, ioapics, iointr, lintr;
	int irq_pin[16];
	int extint_pin;
};

static void walk_mp_entries(const uint8_t *t, struct mp_counts *c, int ncpus)
{
	uint16_t len = get16(t + 4);
	uint16_t count = get16(t + 34);
	const uint8_t *e = t + 44;

	memset(c, 0, sizeof(*c));
	for (int i = 0; i < 16; i++)
		c->irq_pin[i] = -1;
	c->extint_pin = -1;
	for (uint16_t i = 0; i < count; i++) {
		assert_true(e < t + len);
		switch (e[0]) {
		case 0:
			assert_int_equal(e[1], c->cpus); /* APIC id = index */
			assert_true(e[3] & 1);		 /* enabled */
			if (e[3] & 2) {
				assert_int_equal(e[1], 0);
				c->bsp++;
			}
			c->cpus++;
			e += 20;
			break;
		case 1:
			assert_memory_equal(e + 2, "ISA   ", 6);
			c->buses++;
			e += 8;
			break;
		case 2:
			assert_int_equal(e[1], ncpus);
			assert_int_equal(e[3], 1);
			assert_int_equal(get32(e + 4), KV_IOAPIC_ADDR);
			c->ioapics++;
			e += 8;
			break;
		case 3:
			assert_int_equal(e[6], ncpus); /* to our IOAPIC */
			if (e[1] == 3)
				c->extint_pin = e[7];
			else
				c->irq_pin[e[5]] = e[7];
			c->iointr++;
			e += 8;
			break;
		case 4:
			assert_int_equal(e[6], 0xff);
			c->lintr++;
			e += 8;
			break;
		default:
			fail_msg("unknown MP entry type %u", e[0]);
		}
	}
	assert_ptr_equal(e, t + len);
}

static void test_mptable_layout_and_checksums(void **state)
{
	static const int ncpus_list[] = {1, 2, 7, KV_VM_MAX_VCPUS};
	uint8_t buf[KV_MPTABLE_MAX_BYTES];

	for (size_t k = 0; k < sizeof(ncpus_list) / sizeof(int); k++) {
		int ncpus = ncpus_list[k];
		struct kv_error err = {0};
		struct mp_counts c;
		const uint8_t *t;
		int n;

		memset(buf, 0xaa, sizeof(buf));
		n = kv_mptable_build(buf, sizeof(buf), KV_MPTABLE_ADDR, ncpus,
				     &err);
		assert_true(n > 16);
		/* Floating pointer. */
		assert_memory_equal(buf, "_MP_", 4);
		assert_int_equal(get32(buf + 4), KV_MPTABLE_ADDR + 16);
		assert_int_equal(buf[8], 1);
		assert_int_equal(buf[9], 4);
		assert_int_equal(sum_bytes(buf, 16), 0);
		assert_int_equal(buf[11], 0); /* config table present */
		/* Configuration table. */
		t = buf + 16;
		assert_memory_equal(t, "PCMP", 4);
		assert_int_equal(get16(t + 4), n - 16);
		assert_int_equal(t[6], 4);
		assert_int_equal(sum_bytes(t, get16(t + 4)), 0);
		assert_int_equal(get32(t + 36), KV_LAPIC_ADDR);
		assert_int_equal(get16(t + 34), ncpus + 1 + 1 + 16 + 2);
		walk_mp_entries(t, &c, ncpus);
		assert_int_equal(c.cpus, ncpus);
		assert_int_equal(c.bsp, 1);
		assert_int_equal(c.buses, 1);
		assert_int_equal(c.ioapics, 1);
		assert_int_equal(c.iointr, 16);
		assert_int_equal(c.lintr, 2);
		assert_int_equal(c.extint_pin, 0);
		assert_int_equal(c.irq_pin[0], 2);
		assert_int_equal(c.irq_pin[2], -1);
		for (int irq = 1; irq < 16; irq++)
			if (irq != 2)
				assert_int_equal(c.irq_pin[irq], irq);
	}
}

static void test_mptable_rejects(void **state)
{
	uint8_t buf[KV_MPTABLE_MAX_BYTES];
	struct kv_error err = {0};

	assert_int_equal(
	    kv_mptable_build(buf, sizeof(buf), KV_MPTABLE_ADDR, 0, &err),
	    -EINVAL);
	kv_error_clear(&err);
	assert_int_equal(kv_mptable_build(buf, sizeof(buf), KV_MPTABLE_ADDR,
					  KV_VM_MAX_VCPUS + 1, &err),
			 -EINVAL);
	kv_error_clear(&err);
	assert_int_equal(kv_mptable_build(buf, 64, KV_MPTABLE_ADDR, 2, &err),
			 -ENOSPC);
	assert_non_null(strstr(err.msg, "bytes needed"));
}

/* ---- multiboot ---- */

static const uint8_t some_code[] = {0xf4, 0xeb, 0xfd}; /* hlt; jmp */

static void expect_reject(const uint8_t *img, size_t len, uint64_t lowmem,
			  const char *needle)
{
	struct kv_mb_kernel k;
	struct kv_error err = {0};

	assert_int_equal(kv_multiboot_parse(img, len, lowmem, &k, &err),
			 -ENOEXEC);
	if (!strstr(err.msg, needle))
		fail_msg("error '%s' lacks '%s'", err.msg, needle);
}

static void test_multiboot_parse_elf(void **state)
{
	struct kv_mb_kernel k;
	struct kv_error err = {0};
	size_t len;
	uint8_t *img = test_mb_elf(some_code, sizeof(some_code), 0x3, &len);

	assert_int_equal(kv_multiboot_parse(img, len, 64 * KV_MiB, &k, &err), 0);
	assert_int_equal(k.header_offset, TEST_MB_HDR_OFF);
	assert_int_equal(k.flags, 0x3);
	assert_int_equal(k.entry, TEST_MB_BASE + TEST_MB_CODE_OFF);
	assert_int_equal(k.nsegments, 1);
	assert_int_equal(k.segments[0].paddr, TEST_MB_BASE);
	assert_int_equal(k.segments[0].file_size, len);
	assert_int_equal(k.segments[0].mem_size, len + 0x1000);
	free(img);
}

/* A kernel linked high (vaddr != paddr): the entry becomes physical. */
static void test_multiboot_entry_translated(void **state)
{
	struct kv_mb_kernel k;
	struct kv_error err = {0};
	size_t len;
	uint8_t *img = test_mb_elf(some_code, sizeof(some_code), 0x3, &len);
	Elf32_Ehdr *eh = (Elf32_Ehdr *)img;
	Elf32_Phdr *ph = (Elf32_Phdr *)(img + sizeof(*eh));

	ph->p_vaddr = 0xc0100000;
	eh->e_entry = 0xc0100000 + TEST_MB_CODE_OFF;
	assert_int_equal(kv_multiboot_parse(img, len, 64 * KV_MiB, &k, &err), 0);
	assert_int_equal(k.entry, TEST_MB_BASE + TEST_MB_CODE_OFF);
	free(img);
}

static void test_multiboot_rejects(void **state)
{
	size_t len;
	uint8_t *img = test_mb_elf(some_code, sizeof(some_code), 0x3, &len);
	uint8_t *copy = malloc(len);
	Elf32_Phdr *ph;
	uint8_t *big;

	/* No header at all. */
	memcpy(copy, img, len);
	test_put32(copy + TEST_MB_HDR_OFF, 0x12345678);
	expect_reject(copy, len, 64 * KV_MiB, "no multiboot v1 header");
	/* Bad checksum. */
	memcpy(copy, img, len);
	copy[TEST_MB_HDR_OFF + 8] ^= 1;
	expect_reject(copy, len, 64 * KV_MiB, "checksum");
	/* A required feature we lack (bit 3). */
	free(copy);
	copy = test_mb_elf(some_code, sizeof(some_code), 0x8, &len);
	expect_reject(copy, len, 64 * KV_MiB, "requires features");
	free(copy);
	copy = malloc(len);
	/* Not ELF32. */
	memcpy(copy, img, len);
	copy[EI_CLASS] = ELFCLASS64;
	expect_reject(copy, len, 64 * KV_MiB, "32-bit");
	/* Not an ELF. */
	memcpy(copy, img, len);
	copy[1] = 'X';
	expect_reject(copy, len, 64 * KV_MiB, "not an ELF");
	/* Wrong machine. */
	memcpy(copy, img, len);
	((Elf32_Ehdr *)copy)->e_machine = EM_X86_64;
	expect_reject(copy, len, 64 * KV_MiB, "i386");
	/* Segment beyond guest RAM. */
	expect_reject(img, len, TEST_MB_BASE + 0x80, "beyond guest RAM");
	/* Segment file bytes beyond the file. */
	memcpy(copy, img, len);
	ph = (Elf32_Phdr *)(copy + sizeof(Elf32_Ehdr));
	ph->p_filesz = (uint32_t)len + 1;
	ph->p_memsz = ph->p_filesz;
	expect_reject(copy, len, 64 * KV_MiB, "beyond the end of the file");
	/* Overflowing offset. */
	ph->p_offset = 0xfffffff0;
	expect_reject(copy, len, 64 * KV_MiB, "beyond the end of the file");
	/* Over what the VMM places in low memory: both ranges named. */
	memcpy(copy, img, len);
	ph = (Elf32_Phdr *)(copy + sizeof(Elf32_Ehdr));
	ph->p_paddr = 0x4000;
	expect_reject(copy, len, 64 * KV_MiB, "segment 0 [0x4000, 0x5083) overlaps the multiboot information [0x5000, 0x8000)");
	ph->p_paddr = 0xef800;
	expect_reject(copy, len, 64 * KV_MiB, "overlaps the MP table [0xf0000, 0xf1000)");
	/* Load address near 4 GiB: no wrap-around. */
	ph->p_paddr = 0xfffff000;
	expect_reject(copy, len, 64 * KV_MiB, "beyond guest RAM");
	/* filesz > memsz. */
	memcpy(copy, img, len);
	ph = (Elf32_Phdr *)(copy + sizeof(Elf32_Ehdr));
	ph->p_memsz = 4;
	expect_reject(copy, len, 64 * KV_MiB, "exceeds memory size");
	/* No loadable segment. */
	memcpy(copy, img, len);
	ph = (Elf32_Phdr *)(copy + sizeof(Elf32_Ehdr));
	ph->p_type = PT_NOTE;
	expect_reject(copy, len, 64 * KV_MiB, "no loadable segment");
	/* Program headers beyond the file. */
	memcpy(copy, img, len);
	((Elf32_Ehdr *)copy)->e_phnum = 1000;
	expect_reject(copy, len, 64 * KV_MiB, "program headers");
	/* Header past the first 8 KiB. */
	big = calloc(1, 9000 + 12);
	memcpy(big, img, TEST_MB_HDR_OFF);
	memcpy(big + 9000, img + TEST_MB_HDR_OFF, 12);
	expect_reject(big, 9000 + 12, 64 * KV_MiB, "first 8192 bytes");
	/* Tiny file. */
	expect_reject(img, 8, 64 * KV_MiB, "no multiboot v1 header");
	free(big);
	free(copy);
	free(img);
}

/* GNU ld's default layout for a kernel linked at 1 MiB: the ELF headers
 * in a read-only segment at 0xff000, then the text. QEMU loads it, and
 * so do we: below 1 MiB is RAM like any other, apart from what the VMM
 * writes there (kv_mb_vmm_regions, all of which the checks cover). */
static void test_multiboot_segment_below_1mib(void **state)
{
	struct kv_gmem mem;
	struct kv_mb_kernel k;
	struct kv_error err = {0};
	size_t len, nreg;
	uint8_t *img = test_mb_elf(some_code, sizeof(some_code), 0x3, &len);
	Elf32_Phdr *ph = (Elf32_Phdr *)(img + sizeof(Elf32_Ehdr));
	const struct kv_mb_region *reg = kv_mb_vmm_regions(&nreg);
	uint32_t info = 0;

	(void)state;
	ph->p_paddr = ph->p_vaddr = 0xff000;
	((Elf32_Ehdr *)img)->e_entry = 0xff000 + TEST_MB_CODE_OFF;
	assert_int_equal(kv_gmem_init(&mem, 16 * KV_MiB, &err), 0);
	assert_int_equal(kv_multiboot_parse(img, len, mem.lowmem, &k, &err), 0);
	assert_int_equal(k.segments[0].paddr, 0xff000);
	assert_int_equal(k.entry, 0xff000 + TEST_MB_CODE_OFF);
	assert_int_equal(kv_multiboot_load(img, &k, &mem, "", &info, &err), 0);
	assert_memory_equal(mem.host + 0xff000, img, len);
	/* Right below and right above every region: accepted; one byte
	 * into it: refused. */
	for (size_t i = 0; i < nreg; i++) {
		uint32_t size = ph->p_memsz;

		ph->p_paddr = reg[i].start - size;
		assert_int_equal(
		    kv_multiboot_parse(img, len, mem.lowmem, &k, &err), 0);
		ph->p_paddr = reg[i].end;
		assert_int_equal(
		    kv_multiboot_parse(img, len, mem.lowmem, &k, &err), 0);
		ph->p_paddr = reg[i].start - size + 1;
		expect_reject(img, len, mem.lowmem, reg[i].what);
		ph->p_paddr = reg[i].end - 1;
		expect_reject(img, len, mem.lowmem, reg[i].what);
	}
	kv_gmem_fini(&mem);
	free(img);
}

/* The command line is checked without writing guest RAM (a destination
 * started with the source's options checks it and loads nothing). */
static void test_multiboot_check_info(void **state)
{
	struct kv_gmem mem;
	struct kv_error err = {0};
	char *cmd = malloc(20000);

	(void)state;
	memset(cmd, 'a', 19999);
	cmd[19999] = 0;
	assert_int_equal(kv_gmem_init(&mem, 16 * KV_MiB, &err), 0);
	assert_int_equal(kv_multiboot_check_info(&mem, "mem=64", &err), 0);
	assert_int_equal(kv_multiboot_check_info(&mem, cmd, &err), -E2BIG);
	assert_non_null(strstr(err.msg, "command line"));
	for (size_t i = 0; i < 16 * KV_MiB; i++)
		if (mem.host[i])
			fail_msg("guest RAM written at 0x%zx", i);
	kv_gmem_fini(&mem);
	free(cmd);
}

static void test_multiboot_aout_kludge(void **state)
{
	/* Raw binary: header at offset 16, loaded at 2 MiB. */
	uint8_t img[256] = {0};
	uint32_t flags = KV_MB_FLAG_AOUT_KLUDGE | KV_MB_FLAG_MEMORY_INFO;
	uint32_t load = 0x200000;
	struct kv_mb_kernel k;
	struct kv_error err = {0};

	test_put32(img + 16, KV_MB_HEADER_MAGIC);
	test_put32(img + 20, flags);
	test_put32(img + 24, -(KV_MB_HEADER_MAGIC + flags));
	test_put32(img + 28, load + 16);   /* header_addr */
	test_put32(img + 32, load);	   /* load_addr */
	test_put32(img + 36, load + 200);  /* load_end_addr */
	test_put32(img + 40, load + 4096); /* bss_end_addr */
	test_put32(img + 44, load + 64);   /* entry */
	assert_int_equal(
	    kv_multiboot_parse(img, sizeof(img), 64 * KV_MiB, &k, &err), 0);
	assert_int_equal(k.entry, load + 64);
	assert_int_equal(k.nsegments, 1);
	assert_int_equal(k.segments[0].paddr, load);
	assert_int_equal(k.segments[0].file_offset, 0);
	assert_int_equal(k.segments[0].file_size, 200);
	assert_int_equal(k.segments[0].mem_size, 4096);
	/* Entry outside the image. */
	test_put32(img + 44, load + 8192);
	test_put32(img + 24, -(KV_MB_HEADER_MAGIC + flags));
	expect_reject(img, sizeof(img), 64 * KV_MiB, "entry");
	/* header_addr inconsistent with its file offset. */
	test_put32(img + 44, load + 64);
	test_put32(img + 28, load + 100);
	expect_reject(img, sizeof(img), 64 * KV_MiB, "header_addr");
	/* Load end beyond the file. */
	test_put32(img + 28, load + 16);
	test_put32(img + 36, load + 1000);
	expect_reject(img, sizeof(img), 64 * KV_MiB, "beyond the end");
}

struct written_log {
	uint64_t lo, hi; /* union of the ranges reported */
	int calls;
};

static void note_written(void *opaque, uint64_t off, uint64_t len)
{
	struct written_log *w = opaque;

	if (!w->calls || off < w->lo)
		w->lo = off;
	if (!w->calls || off + len > w->hi)
		w->hi = off + len;
	w->calls++;
}

static void test_multiboot_load_and_info(void **state)
{
	struct kv_gmem mem;
	struct kv_mb_kernel k;
	struct kv_error err = {0};
	struct written_log wl = {0};
	size_t len;
	uint8_t *img = test_mb_elf(some_code, sizeof(some_code), 0x3, &len);
	uint32_t info = 0;
	const uint8_t *mi, *mm;

	assert_int_equal(kv_gmem_init(&mem, 16 * KV_MiB, &err), 0);
	mem.written = note_written;
	mem.written_opaque = &wl;
	assert_int_equal(kv_multiboot_parse(img, len, mem.lowmem, &k, &err), 0);
	assert_int_equal(
	    kv_multiboot_load(img, &k, &mem, "wss=64 pattern=x", &info, &err),
	    0);
	assert_int_equal(info, KV_MB_INFO_ADDR);
	assert_memory_equal(mem.host + TEST_MB_BASE, img, len);
	assert_true(wl.calls >= 2);
	assert_true(wl.lo <= KV_MB_INFO_ADDR);
	assert_true(wl.hi >= TEST_MB_BASE + len);

	mi = mem.host + info;
	assert_int_equal(get32(mi), KV_MBI_MEMORY | KV_MBI_CMDLINE |
					KV_MBI_MMAP | KV_MBI_LOADER_NAME);
	assert_int_equal(get32(mi + 4), 639);
	assert_int_equal(get32(mi + 8), (16 * KV_MiB - KV_MiB) / 1024);
	assert_string_equal((const char *)mem.host + get32(mi + 16),
			    "wss=64 pattern=x");
	assert_string_equal((const char *)mem.host + get32(mi + 64), "kvmig");
	assert_true(get32(mi + 16) < KV_MB_INFO_END);
	/* Memory map: low RAM, reserved, RAM from 1 MiB, the hole. */
	assert_int_equal(get32(mi + 44), 4 * 24);
	mm = mem.host + get32(mi + 48);
	assert_int_equal(get32(mm), 20);
	assert_int_equal(get32(mm + 4), 0);
	assert_int_equal(get32(mm + 12), 0x9fc00);
	assert_int_equal(get32(mm + 20), 1);
	assert_int_equal(get32(mm + 24 + 4), 0x9fc00);
	assert_int_equal(get32(mm + 24 + 20), 2);
	assert_int_equal(get32(mm + 48 + 4), 0x100000);
	assert_int_equal(get32(mm + 48 + 12), 15 * KV_MiB);
	assert_int_equal(get32(mm + 48 + 20), 1);
	assert_int_equal(get32(mm + 72 + 4), 0xc0000000u);
	assert_int_equal(get32(mm + 72 + 20), 2);
	kv_gmem_fini(&mem);
	free(img);
}

static void test_multiboot_cmdline_too_long(void **state)
{
	struct kv_gmem mem;
	struct kv_mb_kernel k;
	struct kv_error err = {0};
	size_t len;
	uint8_t *img = test_mb_elf(some_code, sizeof(some_code), 0x3, &len);
	char *cmd = malloc(20000);
	uint32_t info;

	memset(cmd, 'a', 19999);
	cmd[19999] = 0;
	assert_int_equal(kv_gmem_init(&mem, 16 * KV_MiB, &err), 0);
	assert_int_equal(kv_multiboot_parse(img, len, mem.lowmem, &k, &err), 0);
	assert_int_equal(kv_multiboot_load(img, &k, &mem, cmd, &info, &err),
			 -E2BIG);
	assert_non_null(strstr(err.msg, "command line"));
	kv_gmem_fini(&mem);
	free(cmd);
	free(img);
}

static void test_multiboot_read_file_errors(void **state)
{
	struct kv_error err = {0};
	uint8_t *img;
	size_t len;

	assert_int_equal(
	    kv_multiboot_read_file("/nonexistent/kernel.elf", &img, &len, &err),
	    -ENOENT);
	assert_non_null(strstr(err.msg, "/nonexistent/kernel.elf"));
	kv_error_clear(&err);
	assert_true(kv_multiboot_read_file("/tmp", &img, &len, &err) < 0);
}

/* ---- guest memory ---- */

static void test_gmem_layout(void **state)
{
	struct kv_gmem mem;
	struct kv_error err = {0};
	uint64_t off;
	uint8_t b = 0x5a;

	/* 5 GiB: 3 GiB below the hole, 2 GiB above 4 GiB (never touched). */
	assert_int_equal(kv_gmem_init(&mem, 5ULL << 30, &err), 0);
	assert_int_equal(mem.nslots, 2);
	assert_int_equal(mem.slots[0].gpa, 0);
	assert_int_equal(mem.slots[0].size, 3ULL << 30);
	assert_int_equal(mem.slots[1].gpa, 4ULL << 30);
	assert_int_equal(mem.slots[1].size, 2ULL << 30);
	assert_int_equal(mem.slots[1].block_offset, 3ULL << 30);
	assert_ptr_equal(mem.slots[1].host, mem.host + (3ULL << 30));
	assert_true(kv_gmem_gpa_to_offset(&mem, 4ULL << 30, 8, &off));
	assert_int_equal(off, 3ULL << 30);
	assert_true(kv_gmem_gpa_to_offset(&mem, (3ULL << 30) - 8, 8, &off));
	assert_false(kv_gmem_gpa_to_offset(&mem, (3ULL << 30) - 8, 9, &off));
	assert_false(kv_gmem_gpa_to_offset(&mem, 0xfee00000, 4, &off));
	assert_false(kv_gmem_gpa_to_offset(&mem, (6ULL << 30) - 4, 8, &off));
	assert_false(kv_gmem_gpa_to_offset(&mem, ~0ULL - 2, 8, &off));
	assert_false(kv_gmem_gpa_to_offset(&mem, 16, ~0ULL, &off));
	assert_int_equal(kv_gmem_write(&mem, 0xfec00000, &b, 1, &err), -EFAULT);
	kv_gmem_fini(&mem);

	kv_error_clear(&err);
	assert_int_equal(kv_gmem_init(&mem, 64 * KV_MiB, &err), 0);
	assert_int_equal(mem.nslots, 1);
	assert_int_equal(mem.lowmem, 64 * KV_MiB);
	kv_gmem_fini(&mem);

	kv_error_clear(&err);
	assert_int_equal(kv_gmem_init(&mem, 3 * KV_MiB, &err), -EINVAL);
	kv_error_clear(&err);
	assert_int_equal(kv_gmem_init(&mem, 65 * KV_MiB, &err), -EINVAL);
}

/* ---- UART ---- */

struct uart_fixture {
	struct kv_serial *s;
	int pipe[2];
	int level;
	int irq_changes;
};

static void record_irq(void *opaque, int level)
{
	struct uart_fixture *f = opaque;

	f->level = level;
	f->irq_changes++;
}

static int uart_setup(void **state)
{
	struct uart_fixture *f = calloc(1, sizeof(*f));

	assert_int_equal(pipe2(f->pipe, O_NONBLOCK), 0);
	f->s = kv_serial_new(f->pipe[1], record_irq, f);
	*state = f;
	return 0;
}

static int uart_teardown(void **state)
{
	struct uart_fixture *f = *state;

	kv_serial_free(f->s);
	close(f->pipe[0]);
	close(f->pipe[1]);
	free(f);
	return 0;
}

static void test_uart_transmit_and_thri(void **state)
{
	struct uart_fixture *f = *state;
	char out[8] = {0};

	assert_int_equal(kv_serial_read(f->s, KV_UART_LSR) &
			     (KV_UART_LSR_THRE | KV_UART_LSR_TEMT),
			 KV_UART_LSR_THRE | KV_UART_LSR_TEMT);
	assert_int_equal(kv_serial_read(f->s, KV_UART_IIR_FCR),
			 KV_UART_IIR_NO_INT);
	kv_serial_write(f->s, KV_UART_RBR_THR, 'h');
	kv_serial_write(f->s, KV_UART_RBR_THR, 'i');
	assert_int_equal(read(f->pipe[0], out, sizeof(out)), 2);
	assert_string_equal(out, "hi");
	/* THRI enabled, OUT2 off: pending in IIR, line low. */
	kv_serial_write(f->s, KV_UART_IER, KV_UART_IER_THRI);
	assert_int_equal(f->level, 0);
	kv_serial_write(f->s, KV_UART_MCR, KV_UART_MCR_OUT2);
	assert_int_equal(f->level, 1);
	/* Reading IIR reports THRI once and drops the line. */
	assert_int_equal(kv_serial_read(f->s, KV_UART_IIR_FCR),
			 KV_UART_IIR_THRI);
	assert_int_equal(f->level, 0);
	assert_int_equal(kv_serial_read(f->s, KV_UART_IIR_FCR),
			 KV_UART_IIR_NO_INT);
	/* Another byte out: THR empty again, interrupt again. */
	kv_serial_write(f->s, KV_UART_RBR_THR, '!');
	assert_int_equal(f->level, 1);
	assert_int_equal(read(f->pipe[0], out, sizeof(out)), 1);
	assert_int_equal(out[0], '!');
}

static void test_uart_receive_fifo(void **state)
{
	struct uart_fixture *f = *state;
	uint8_t in[20];

	for (int i = 0; i < 20; i++)
		in[i] = (uint8_t)('a' + i);
	kv_serial_write(f->s, KV_UART_MCR, KV_UART_MCR_OUT2);
	/* FIFO off: one byte holds. */
	assert_int_equal(kv_serial_receive(f->s, in, 20), 1);
	assert_int_equal(f->level, 0); /* RDI not enabled */
	kv_serial_write(f->s, KV_UART_IER, KV_UART_IER_RDI);
	assert_int_equal(f->level, 1);
	assert_int_equal(kv_serial_read(f->s, KV_UART_IIR_FCR),
			 KV_UART_IIR_RDI);
	assert_true(kv_serial_read(f->s, KV_UART_LSR) & KV_UART_LSR_DR);
	assert_int_equal(kv_serial_read(f->s, KV_UART_RBR_THR), 'a');
	assert_false(kv_serial_read(f->s, KV_UART_LSR) & KV_UART_LSR_DR);
	assert_int_equal(f->level, 0);
	/* FIFO on: 16 bytes, in order; IIR shows the FIFO bits. */
	kv_serial_write(f->s, KV_UART_IIR_FCR, KV_UART_FCR_ENABLE);
	assert_int_equal(kv_serial_receive(f->s, in, 20), KV_SERIAL_FIFO);
	assert_int_equal(kv_serial_read(f->s, KV_UART_IIR_FCR),
			 KV_UART_IIR_FIFO | KV_UART_IIR_RDI);
	for (int i = 0; i < KV_SERIAL_FIFO; i++)
		assert_int_equal(kv_serial_read(f->s, KV_UART_RBR_THR),
				 'a' + i);
	assert_int_equal(f->level, 0);
	/* FCR clear empties the FIFO. */
	assert_int_equal(kv_serial_receive(f->s, in, 3), 3);
	kv_serial_write(f->s, KV_UART_IIR_FCR,
			KV_UART_FCR_ENABLE | KV_UART_FCR_CLEAR_RX);
	assert_false(kv_serial_read(f->s, KV_UART_LSR) & KV_UART_LSR_DR);
}

static void test_uart_registers(void **state)
{
	struct uart_fixture *f = *state;
	char c;

	kv_serial_write(f->s, KV_UART_LCR, 0x83); /* DLAB, 8N1 */
	kv_serial_write(f->s, KV_UART_RBR_THR, 0x01);
	kv_serial_write(f->s, KV_UART_IER, 0x00);
	assert_int_equal(kv_serial_read(f->s, KV_UART_RBR_THR), 0x01);
	assert_int_equal(kv_serial_read(f->s, KV_UART_IER), 0x00);
	assert_int_equal(read(f->pipe[0], &c, 1), -1); /* nothing sent */
	kv_serial_write(f->s, KV_UART_LCR, 0x03);
	assert_int_equal(kv_serial_read(f->s, KV_UART_LCR), 0x03);
	kv_serial_write(f->s, KV_UART_SCR, 0x5a);
	assert_int_equal(kv_serial_read(f->s, KV_UART_SCR), 0x5a);
	assert_int_equal(kv_serial_read(f->s, KV_UART_MSR), 0xb0);
	/* Loopback: bytes come back in, nothing leaves. */
	kv_serial_write(f->s, KV_UART_MCR, KV_UART_MCR_LOOP | 0x03);
	assert_int_equal(kv_serial_read(f->s, KV_UART_MSR), 0x30);
	kv_serial_write(f->s, KV_UART_RBR_THR, 'L');
	assert_int_equal(read(f->pipe[0], &c, 1), -1);
	assert_int_equal(kv_serial_read(f->s, KV_UART_RBR_THR), 'L');
}

static void test_uart_state_roundtrip(void **state)
{
	struct uart_fixture *f = *state;
	const struct kv_vmstate_desc *d = kv_serial_vmsd();
	struct kv_serial_state st, back;
	struct kv_error err = {0};
	struct kv_stream *s;
	struct kv_chan *c;
	uint8_t in[3] = {'x', 'y', 'z'};
	FILE *tmp = tmpfile();
	int fd = dup(fileno(tmp));
	struct kv_serial *s2;
	struct uart_fixture f2 = {0};

	assert_int_equal(kv_vmstate_validate(d, &err), 0);
	kv_serial_write(f->s, KV_UART_IIR_FCR, KV_UART_FCR_ENABLE);
	kv_serial_write(f->s, KV_UART_IER, KV_UART_IER_RDI);
	kv_serial_write(f->s, KV_UART_MCR, KV_UART_MCR_OUT2);
	kv_serial_write(f->s, KV_UART_SCR, 0x77);
	kv_serial_receive(f->s, in, 3);
	kv_serial_state_get(f->s, &st);
	assert_int_equal(st.rx_count, 3);

	c = kv_chan_from_fd(fd, "serial-state", &err);
	s = kv_stream_new(c, KV_STREAM_WRITE);
	assert_int_equal(kv_vmstate_save(s, d, &st, &err), 0);
	assert_int_equal(kv_stream_close(s), 0);
	rewind(tmp);
	fd = dup(fileno(tmp));
	c = kv_chan_from_fd(fd, "serial-state", &err);
	s = kv_stream_new(c, KV_STREAM_READ);
	memset(&back, 0, sizeof(back));
	assert_int_equal(kv_vmstate_load(s, d, &back, 1, &err), 0);
	kv_stream_close(s);
	fclose(tmp);

	/* A fresh device takes the state and raises the pending RX IRQ. */
	s2 = kv_serial_new(-1, record_irq, &f2);
	assert_int_equal(kv_serial_state_put(s2, &back, &err), 0);
	assert_int_equal(f2.level, 1);
	assert_int_equal(kv_serial_read(s2, KV_UART_SCR), 0x77);
	assert_int_equal(kv_serial_read(s2, KV_UART_RBR_THR), 'x');
	assert_int_equal(kv_serial_read(s2, KV_UART_RBR_THR), 'y');
	assert_int_equal(kv_serial_read(s2, KV_UART_RBR_THR), 'z');
	assert_int_equal(f2.level, 0);
	/* A corrupt FIFO count is refused. */
	back.rx_count = 200;
	assert_int_equal(kv_serial_state_put(s2, &back, &err), -EINVAL);
	kv_serial_free(s2);
}

static void test_uart_input_thread(void **state)
{
	struct uart_fixture *f = *state;
	struct kv_error err = {0};
	int in[2];
	char got[6] = {0};

	assert_int_equal(pipe(in), 0);
	kv_serial_write(f->s, KV_UART_IIR_FCR, KV_UART_FCR_ENABLE);
	assert_int_equal(kv_serial_start_input(f->s, in[0], &err), 0);
	assert_int_equal(write(in[1], "hello", 5), 5);
	for (int i = 0; i < 5; i++) {
		/* Wait up to ~5 s per byte: the thread may be slow. */
		for (int t = 0;
		     t < 5000 &&
		     !(kv_serial_read(f->s, KV_UART_LSR) & KV_UART_LSR_DR);
		     t++)
			usleep(1000);
		got[i] = (char)kv_serial_read(f->s, KV_UART_RBR_THR);
	}
	assert_string_equal(got, "hello");
	close(in[1]);
	/* kv_serial_free (teardown) stops and joins the thread. */
	uart_teardown(state);
	close(in[0]);
	uart_setup(state);
}

/* ---- CPUID, port decoding ---- */

static void test_cpuid_patch(void **state)
{
	struct kvm_cpuid2 *c =
	    calloc(1, sizeof(*c) + 5 * sizeof(struct kvm_cpuid_entry2));

	c->nent = 4;
	c->entries[3].function = 0x40000000;
	c->entries[3].eax = 0x40000001;
	c->entries[0].function = 1;
	c->entries[0].ebx = 0xff00abcd;
	c->entries[1].function = 0xb;
	c->entries[1].index = 1;
	c->entries[1].edx = 99;
	c->entries[2].function = 0;
	c->entries[2].ebx = 0x756e6547;
	kv_cpuid_patch(c, 5, 8, 2500000);
	assert_int_equal(c->entries[0].ebx, 0x0508abcd);
	/* The timing leaf is added and announced. */
	assert_int_equal(c->nent, 5);
	assert_int_equal(c->entries[3].eax, 0x40000010);
	assert_int_equal(c->entries[4].function, 0x40000010);
	assert_int_equal(c->entries[4].eax, 2500000);
	assert_int_equal(c->entries[4].ebx, 1000000);
	assert_true(c->entries[0].ecx & (1u << 31));
	assert_int_equal(c->entries[1].edx, 5);
	assert_int_equal(c->entries[2].ebx, 0x756e6547);
	free(c);
}

static void test_poweroff_decoding(void **state)
{
	uint8_t v[2] = {0x00, 0x20};
	uint8_t w[2] = {0x01, 0x20};

	assert_true(kv_pio_is_poweroff(0x604, true, 2, v));
	assert_true(kv_pio_is_poweroff(0xb004, true, 2, v));
	assert_false(kv_pio_is_poweroff(0x604, false, 2, v));
	assert_false(kv_pio_is_poweroff(0x604, true, 1, v));
	assert_false(kv_pio_is_poweroff(0x604, true, 2, w));
	assert_false(kv_pio_is_poweroff(0x600, true, 2, v));
}

/* ---- QEMU's "globalstate" section ---- */

#define GSTATE_WIRE (4 + KV_GLOBAL_STATE_BUF)

static uint8_t *gstate_save(struct kv_global_state *gs, size_t *len)
{
	struct kv_error err = {0};
	FILE *tmp = tmpfile();
	struct kv_chan *c = kv_chan_from_fd(dup(fileno(tmp)), "globalstate",
					    &err);
	struct kv_stream *s = kv_stream_new(c, KV_STREAM_WRITE);
	uint8_t *b;

	assert_int_equal(kv_vmstate_save(s, kv_global_state_vmsd(), gs, &err),
			 0);
	assert_int_equal(kv_stream_close(s), 0);
	fseek(tmp, 0, SEEK_END);
	*len = (size_t)ftell(tmp);
	rewind(tmp);
	b = malloc(*len + 1);
	assert_non_null(b);
	assert_int_equal(fread(b, 1, *len, tmp), *len);
	fclose(tmp);
	return b;
}

/* Load the bytes as the destination does; the whole input is read on
 * success. */
static int gstate_load(const uint8_t *b, size_t n, struct kv_global_state *gs,
		       struct kv_error *err)
{
	FILE *tmp = tmpfile();
	struct kv_stream *s;
	int ret;

	assert_int_equal(fwrite(b, 1, n, tmp), n);
	fflush(tmp);
	rewind(tmp);
	s = kv_stream_new(kv_chan_from_fd(dup(fileno(tmp)), "globalstate",
					  err),
			  KV_STREAM_READ);
	memset(gs, 0, sizeof(*gs));
	ret = kv_vmstate_load(s, kv_global_state_vmsd(), gs, 1, err);
	if (ret == 0)
		assert_true(kv_stream_at_eof(s));
	kv_stream_close(s);
	fclose(tmp);
	return ret;
}

/* The wire bytes: be32 size, then name padded with NULs to 100 bytes. */
static void gstate_wire(uint8_t out[GSTATE_WIRE], uint32_t size,
			const char *name, size_t name_len)
{
	memset(out, 0, GSTATE_WIRE);
	out[0] = (uint8_t)(size >> 24);
	out[1] = (uint8_t)(size >> 16);
	out[2] = (uint8_t)(size >> 8);
	out[3] = (uint8_t)size;
	memcpy(out + 4, name, name_len);
}

static void test_global_state_bytes(void **state)
{
	struct kv_global_state gs;
	struct kv_error err = {0};
	uint8_t want[GSTATE_WIRE];
	uint8_t *b;
	size_t n;

	(void)state;
	assert_int_equal(kv_vmstate_validate(kv_global_state_vmsd(), &err), 0);
	kv_global_state_set(&gs, KV_RUNSTATE_RUNNING);
	b = gstate_save(&gs, &n);
	gstate_wire(want, 8, "running", 7);
	assert_int_equal(n, GSTATE_WIRE);
	assert_memory_equal(b, want, GSTATE_WIRE);
	free(b);

	kv_global_state_set(&gs, KV_RUNSTATE_PAUSED);
	b = gstate_save(&gs, &n);
	gstate_wire(want, 7, "paused", 6);
	assert_int_equal(n, GSTATE_WIRE);
	assert_memory_equal(b, want, GSTATE_WIRE);
	free(b);
}

static void test_global_state_accepts(void **state)
{
	struct kv_global_state gs;
	struct kv_error err = {0};
	uint8_t w[GSTATE_WIRE];

	(void)state;
	gstate_wire(w, 8, "running", 7);
	assert_int_equal(gstate_load(w, sizeof(w), &gs, &err), 0);
	assert_int_equal(gs.state, KV_RUNSTATE_RUNNING);
	gstate_wire(w, 7, "paused", 6);
	assert_int_equal(gstate_load(w, sizeof(w), &gs, &err), 0);
	assert_int_equal(gs.state, KV_RUNSTATE_PAUSED);
	/* A newer QEMU's layout: bytes after the 32-byte name (its
	 * suspended flags) are not the name's concern. */
	gstate_wire(w, 8, "running", 7);
	w[4 + 32] = 1;
	assert_int_equal(gstate_load(w, sizeof(w), &gs, &err), 0);
	assert_int_equal(gs.state, KV_RUNSTATE_RUNNING);
}

static void expect_refused(const uint8_t *w, const char *what)
{
	struct kv_global_state gs;
	struct kv_error err = {0};

	assert_int_equal(gstate_load(w, GSTATE_WIRE, &gs, &err), -EINVAL);
	if (!strstr(err.msg, what))
		fail_msg("error '%s' does not say '%s'", err.msg, what);
	assert_non_null(strstr(err.msg, "globalstate"));
}

static void test_global_state_refuses(void **state)
{
	uint8_t w[GSTATE_WIRE];

	(void)state;
	gstate_wire(w, 0, "paused", 6);
	expect_refused(w, "size 0 is outside 1..100");
	gstate_wire(w, 101, "paused", 6);
	expect_refused(w, "size 101 is outside 1..100");
	/* No NUL where the size says the name ends. */
	gstate_wire(w, 6, "paused", 6);
	expect_refused(w, "does not end with a NUL at its size 6");
	/* A NUL before it: size and name disagree. */
	gstate_wire(w, 9, "paused", 6);
	expect_refused(w, "does not end with a NUL at its size 9");
	/* 100 bytes and no NUL at all. */
	memset(w, 'x', sizeof(w));
	gstate_wire(w, 100, "", 0);
	memset(w + 4, 'x', KV_GLOBAL_STATE_BUF);
	expect_refused(w, "does not end with a NUL at its size 100");
	/* Names kvmig does not know: refused, named, unprintable bytes
	 * masked. */
	gstate_wire(w, 10, "suspended", 9);
	expect_refused(w, "unknown run state 'suspended'");
	gstate_wire(w, 5, "\001run", 4);
	expect_refused(w, "unknown run state '?run'");
	gstate_wire(w, 1, "", 0);
	expect_refused(w, "unknown run state ''");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_mptable_layout_and_checksums),
	    cmocka_unit_test(test_mptable_rejects),
	    cmocka_unit_test(test_multiboot_parse_elf),
	    cmocka_unit_test(test_multiboot_entry_translated),
	    cmocka_unit_test(test_multiboot_rejects),
	    cmocka_unit_test(test_multiboot_segment_below_1mib),
	    cmocka_unit_test(test_multiboot_check_info),
	    cmocka_unit_test(test_multiboot_aout_kludge),
	    cmocka_unit_test(test_multiboot_load_and_info),
	    cmocka_unit_test(test_multiboot_cmdline_too_long),
	    cmocka_unit_test(test_multiboot_read_file_errors),
	    cmocka_unit_test(test_gmem_layout),
	    cmocka_unit_test_setup_teardown(test_uart_transmit_and_thri,
					    uart_setup, uart_teardown),
	    cmocka_unit_test_setup_teardown(test_uart_receive_fifo, uart_setup,
					    uart_teardown),
	    cmocka_unit_test_setup_teardown(test_uart_registers, uart_setup,
					    uart_teardown),
	    cmocka_unit_test_setup_teardown(test_uart_state_roundtrip,
					    uart_setup, uart_teardown),
	    cmocka_unit_test_setup_teardown(test_uart_input_thread, uart_setup,
					    uart_teardown),
	    cmocka_unit_test(test_cpuid_patch),
	    cmocka_unit_test(test_poweroff_decoding),
	    cmocka_unit_test(test_global_state_bytes),
	    cmocka_unit_test(test_global_state_accepts),
	    cmocka_unit_test(test_global_state_refuses),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
