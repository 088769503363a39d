/* SPDX-License-Identifier: MIT */
/* Multiboot v1: header and ELF validation, loading, information block. */
#include "vmm/multiboot.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vmm/mptable.h"
#include "vmm/vm.h"

#define MAX_KERNEL_BYTES (256u << 20)
#define LOW_RAM_END	 0x9fc00U /* conventional memory, minus the EBDA */
#define HIGH_MEM_START	 0x100000U
/* Header flag bits 0-15 are requirements: we honour page alignment (every
 * load address is ours to pick anyway) and memory information; a video mode
 * request is advisory, so a kernel asking for one still boots, without a
 * framebuffer. Bits 16-31 are optional features. */
#define SUPPORTED_REQUIRED_FLAGS                                               \
	(KV_MB_FLAG_PAGE_ALIGN | KV_MB_FLAG_MEMORY_INFO | KV_MB_FLAG_VIDEO_MODE)
#define LOADER_NAME "kvmig"

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static uint16_t le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static void put_le64(uint8_t *p, uint64_t v)
{
	put_le32(p, (uint32_t)v);
	put_le32(p + 4, (uint32_t)(v >> 32));
}

static int find_header(const uint8_t *image, size_t len, uint32_t *offset,
		       struct kv_error *err)
{
	size_t limit = len < KV_MB_SEARCH_BYTES ? len : KV_MB_SEARCH_BYTES;
	bool bad_checksum = false;

	for (size_t off = 0; off + 12 <= limit; off += 4) {
		uint32_t magic = le32(image + off);
		uint32_t flags = le32(image + off + 4);
		uint32_t sum = le32(image + off + 8);

		if (magic != KV_MB_HEADER_MAGIC)
			continue;
		if ((uint32_t)(magic + flags + sum) != 0) {
			bad_checksum = true;
			continue;
		}
		*offset = (uint32_t)off;
		return 0;
	}
	if (bad_checksum)
		return kv_error_set(err, -ENOEXEC,
				    "multiboot header has a bad checksum (magic + flags + checksum must be 0)");
	return kv_error_set(err, -ENOEXEC,
			    "no multiboot v1 header (magic 0x%08x) in the first %u bytes: not a multiboot kernel",
			    KV_MB_HEADER_MAGIC, KV_MB_SEARCH_BYTES);
}

static const struct kv_mb_region vmm_regions[] = {
    {KV_MB_INFO_ADDR, KV_MB_INFO_END, "the multiboot information"},
    {KV_MPTABLE_ADDR, KV_MPTABLE_ADDR + KV_MPTABLE_MAX_BYTES, "the MP table"},
};

const struct kv_mb_region *kv_mb_vmm_regions(size_t *n)
{
	*n = sizeof(vmm_regions) / sizeof(vmm_regions[0]);
	return vmm_regions;
}

/* A segment may load anywhere in RAM (QEMU's rule, not GRUB's 1 MiB)
 * except over what the VMM writes there itself. */
static int check_vmm_overlap(const struct kv_mb_segment *s, int index,
			     struct kv_error *err)
{
	uint64_t end = (uint64_t)s->paddr + s->mem_size;

	for (size_t i = 0; i < sizeof(vmm_regions) / sizeof(vmm_regions[0]);
	     i++) {
		const struct kv_mb_region *r = &vmm_regions[i];

		if (s->paddr < r->end && end > r->start)
			return kv_error_set(err, -ENOEXEC, "segment %d [0x%x, 0x%llx) overlaps %s [0x%x, 0x%x), which kvmig places there: link the kernel elsewhere", index, s->paddr, (unsigned long long)end, r->what, r->start, r->end);
	}
	return 0;
}

static int check_segment(const struct kv_mb_segment *s, int index, size_t len,
			 uint64_t lowmem, struct kv_error *err)
{
	uint64_t end = (uint64_t)s->paddr + s->mem_size;

	if (s->file_size > s->mem_size)
		return kv_error_set(err, -ENOEXEC,
				    "segment %d: file size %u exceeds memory size %u",
				    index, s->file_size, s->mem_size);
	if ((uint64_t)s->file_offset + s->file_size > len)
		return kv_error_set(
		    err, -ENOEXEC,
		    "segment %d: bytes [%u, +%u) lie beyond the end of the file (%zu bytes)",
		    index, s->file_offset, s->file_size, len);
	if (end > lowmem)
		return kv_error_set(err, -ENOEXEC,
				    "segment %d: [0x%x, 0x%llx) ends beyond guest RAM below 4 GiB (0x%llx)",
				    index, s->paddr, (unsigned long long)end,
				    (unsigned long long)lowmem);
	return check_vmm_overlap(s, index, err);
}

static int parse_aout_kludge(const uint8_t *image, size_t len, uint64_t lowmem,
			     struct kv_mb_kernel *k, struct kv_error *err)
{
	const uint8_t *h = image + k->header_offset;
	uint32_t header_addr, load_addr, load_end, bss_end;
	struct kv_mb_segment *s = &k->segments[0];
	uint64_t file_start;

	if ((size_t)k->header_offset + 32 > len)
		return kv_error_set(err, -ENOEXEC,
				    "multiboot header with the a.out kludge flag is cut short by the end of the file");
	header_addr = le32(h + 12);
	load_addr = le32(h + 16);
	load_end = le32(h + 20);
	bss_end = le32(h + 24);
	k->entry = le32(h + 28);
	if (header_addr < load_addr ||
	    header_addr - load_addr > k->header_offset)
		return kv_error_set(err, -ENOEXEC,
				    "a.out kludge: header_addr 0x%x and load_addr 0x%x do not fit the header's file offset %u",
				    header_addr, load_addr, k->header_offset);
	file_start = k->header_offset - (header_addr - load_addr);
	s->paddr = load_addr;
	s->file_offset = (uint32_t)file_start;
	if (load_end == 0)
		s->file_size = (uint32_t)(len - file_start);
	else if (load_end < load_addr)
		return kv_error_set(err, -ENOEXEC,
				    "a.out kludge: load_end_addr 0x%x is below load_addr 0x%x",
				    load_end, load_addr);
	else
		s->file_size = load_end - load_addr;
	s->mem_size = s->file_size;
	if (bss_end) {
		if (bss_end < load_addr + s->file_size)
			return kv_error_set(err, -ENOEXEC,
					    "a.out kludge: bss_end_addr 0x%x is below the loaded image's end",
					    bss_end);
		s->mem_size = bss_end - load_addr;
	}
	k->nsegments = 1;
	if (check_segment(s, 0, len, lowmem, err))
		return -ENOEXEC;
	if (k->entry < s->paddr || k->entry >= s->paddr + s->mem_size)
		return kv_error_set(err, -ENOEXEC,
				    "a.out kludge: entry 0x%x is outside the loaded image",
				    k->entry);
	return 0;
}

static int check_elf_header(const uint8_t *image, size_t len,
			    struct kv_error *err)
{
	const uint8_t *id = image;

	if (len < sizeof(Elf32_Ehdr) || memcmp(id, ELFMAG, SELFMAG))
		return kv_error_set(err, -ENOEXEC,
				    "not an ELF file and no a.out kludge in the multiboot header");
	if (id[EI_CLASS] != ELFCLASS32 || id[EI_DATA] != ELFDATA2LSB)
		return kv_error_set(err, -ENOEXEC,
				    "not a 32-bit little-endian ELF (a multiboot v1 kernel is ELF32 i386)");
	if (le16(image + offsetof(Elf32_Ehdr, e_type)) != ET_EXEC ||
	    le16(image + offsetof(Elf32_Ehdr, e_machine)) != EM_386)
		return kv_error_set(err, -ENOEXEC,
				    "ELF is not an i386 executable");
	if (le16(image + offsetof(Elf32_Ehdr, e_phentsize)) !=
	    sizeof(Elf32_Phdr))
		return kv_error_set(err, -ENOEXEC,
				    "ELF program header size is not %zu",
				    sizeof(Elf32_Phdr));
	return 0;
}

/* The entry is a virtual address; like GRUB, translate it through the
 * segment holding it for kernels linked with vaddr != paddr. */
static uint32_t entry_to_physical(uint32_t entry, const uint8_t *ph,
				  uint16_t phnum)
{
	for (uint16_t i = 0; i < phnum; i++, ph += sizeof(Elf32_Phdr)) {
		uint32_t vaddr = le32(ph + offsetof(Elf32_Phdr, p_vaddr));
		uint32_t paddr = le32(ph + offsetof(Elf32_Phdr, p_paddr));
		uint32_t memsz = le32(ph + offsetof(Elf32_Phdr, p_memsz));

		if (le32(ph) != PT_LOAD)
			continue;
		if (entry >= vaddr && entry - vaddr < memsz)
			return entry - vaddr + paddr;
	}
	return entry;
}

static int parse_elf(const uint8_t *image, size_t len, uint64_t lowmem,
		     struct kv_mb_kernel *k, struct kv_error *err)
{
	uint32_t phoff;
	uint16_t phnum;
	const uint8_t *ph;
	int rc = check_elf_header(image, len, err);

	if (rc)
		return rc;
	phoff = le32(image + offsetof(Elf32_Ehdr, e_phoff));
	phnum = le16(image + offsetof(Elf32_Ehdr, e_phnum));
	if ((uint64_t)phoff + (uint64_t)phnum * sizeof(Elf32_Phdr) > len)
		return kv_error_set(err, -ENOEXEC,
				    "ELF program headers lie beyond the end of the file");
	ph = image + phoff;
	k->nsegments = 0;
	for (uint16_t i = 0; i < phnum; i++) {
		const uint8_t *p = ph + (size_t)i * sizeof(Elf32_Phdr);
		struct kv_mb_segment *s;

		if (le32(p) != PT_LOAD ||
		    le32(p + offsetof(Elf32_Phdr, p_memsz)) == 0)
			continue;
		if (k->nsegments == KV_MB_MAX_SEGMENTS)
			return kv_error_set(err, -ENOEXEC,
					    "more than %d loadable ELF segments",
					    KV_MB_MAX_SEGMENTS);
		s = &k->segments[k->nsegments];
		s->paddr = le32(p + offsetof(Elf32_Phdr, p_paddr));
		s->file_offset = le32(p + offsetof(Elf32_Phdr, p_offset));
		s->file_size = le32(p + offsetof(Elf32_Phdr, p_filesz));
		s->mem_size = le32(p + offsetof(Elf32_Phdr, p_memsz));
		if (check_segment(s, k->nsegments, len, lowmem, err))
			return -ENOEXEC;
		k->nsegments++;
	}
	if (k->nsegments == 0)
		return kv_error_set(err, -ENOEXEC,
				    "ELF has no loadable segment");
	k->entry = entry_to_physical(
	    le32(image + offsetof(Elf32_Ehdr, e_entry)), ph, phnum);
	return 0;
}

int kv_multiboot_parse(const uint8_t *image, size_t len, uint64_t lowmem,
		       struct kv_mb_kernel *k, struct kv_error *err)
{
	uint32_t unsupported;
	int rc;

	memset(k, 0, sizeof(*k));
	rc = find_header(image, len, &k->header_offset, err);
	if (rc)
		return rc;
	k->flags = le32(image + k->header_offset + 4);
	unsupported = k->flags & 0xffff & ~SUPPORTED_REQUIRED_FLAGS;
	if (unsupported)
		return kv_error_set(err, -ENOEXEC,
				    "multiboot header requires features we do not provide (flags 0x%x)",
				    unsupported);
	if (k->flags & KV_MB_FLAG_AOUT_KLUDGE)
		return parse_aout_kludge(image, len, lowmem, k, err);
	return parse_elf(image, len, lowmem, k, err);
}

struct mb_info_writer {
	uint8_t buf[KV_MB_INFO_END - KV_MB_INFO_ADDR];
	uint32_t used;
};

/* Reserve n bytes (8-aligned) in the info area; returns its gpa. */
static int info_alloc(struct mb_info_writer *w, uint32_t n, uint32_t *gpa,
		      struct kv_error *err)
{
	uint32_t start = (w->used + 7) & ~7u;

	if (n > sizeof(w->buf) - start)
		return kv_error_set(err, -E2BIG,
				    "multiboot information does not fit in %zu bytes (command line too long?)",
				    sizeof(w->buf));
	w->used = start + n;
	*gpa = KV_MB_INFO_ADDR + start;
	return 0;
}

static void put_mmap_entry(uint8_t *p, uint64_t base, uint64_t len,
			   uint32_t type)
{
	put_le32(p, 20); /* size of the rest of the entry */
	put_le64(p + 4, base);
	put_le64(p + 12, len);
	put_le32(p + 20, type);
}

static int build_mmap(struct mb_info_writer *w, const struct kv_gmem *mem,
		      uint8_t *info, struct kv_error *err)
{
	struct {
		uint64_t base, len;
		uint32_t type;
	} e[5];
	int n = 0;
	uint32_t gpa = 0;

	e[n++] = (typeof(e[0])){0, LOW_RAM_END, KV_MB_MEM_AVAILABLE};
	e[n++] = (typeof(e[0])){LOW_RAM_END, HIGH_MEM_START - LOW_RAM_END,
				KV_MB_MEM_RESERVED};
	e[n++] = (typeof(e[0])){HIGH_MEM_START, mem->lowmem - HIGH_MEM_START,
				KV_MB_MEM_AVAILABLE};
	e[n++] = (typeof(e[0])){KV_VM_HOLE_START,
				KV_VM_HIGH_START - KV_VM_HOLE_START,
				KV_MB_MEM_RESERVED};
	if (mem->size > mem->lowmem)
		e[n++] =
		    (typeof(e[0])){KV_VM_HIGH_START, mem->size - mem->lowmem,
				   KV_MB_MEM_AVAILABLE};
	if (info_alloc(w, (uint32_t)n * 24, &gpa, err))
		return -E2BIG;
	for (int i = 0; i < n; i++)
		put_mmap_entry(w->buf + (gpa - KV_MB_INFO_ADDR) + i * 24,
			       e[i].base, e[i].len, e[i].type);
	put_le32(info + KV_MBI_OFF_MMAP_LENGTH, (uint32_t)n * 24);
	put_le32(info + KV_MBI_OFF_MMAP_ADDR, gpa);
	return 0;
}

static int put_string(struct mb_info_writer *w, const char *s, uint8_t *info,
		      uint32_t field, struct kv_error *err)
{
	uint32_t n = (uint32_t)strnlen(s, sizeof(w->buf)) + 1;
	uint32_t gpa = 0;

	if (info_alloc(w, n, &gpa, err))
		return -E2BIG;
	memcpy(w->buf + (gpa - KV_MB_INFO_ADDR), s, n - 1);
	put_le32(info + field, gpa);
	return 0;
}

static int build_info(struct mb_info_writer *w, const struct kv_gmem *mem,
		      const char *cmdline, struct kv_error *err)
{
	uint8_t *info;
	uint32_t gpa = 0;

	if (info_alloc(w, KV_MBI_SIZE, &gpa, err))
		return -E2BIG;
	info = w->buf + (gpa - KV_MB_INFO_ADDR);
	put_le32(info + KV_MBI_OFF_FLAGS, KV_MBI_MEMORY | KV_MBI_CMDLINE |
					      KV_MBI_MMAP | KV_MBI_LOADER_NAME);
	put_le32(info + KV_MBI_OFF_MEM_LOWER, LOW_RAM_END / 1024);
	put_le32(info + KV_MBI_OFF_MEM_UPPER,
		 (uint32_t)((mem->lowmem - HIGH_MEM_START) / 1024));
	if (build_mmap(w, mem, info, err) ||
	    put_string(w, cmdline ? cmdline : "", info, KV_MBI_OFF_CMDLINE,
		       err) ||
	    put_string(w, LOADER_NAME, info, KV_MBI_OFF_LOADER_NAME, err))
		return -E2BIG;
	return 0;
}

int kv_multiboot_check_info(const struct kv_gmem *mem, const char *cmdline,
			    struct kv_error *err)
{
	struct mb_info_writer *w = calloc(1, sizeof(*w));
	int rc;

	if (!w)
		return kv_error_set(err, -ENOMEM, "multiboot information");
	rc = build_info(w, mem, cmdline, err);
	free(w);
	return rc;
}

int kv_multiboot_load(const uint8_t *image, const struct kv_mb_kernel *k,
		      struct kv_gmem *mem, const char *cmdline,
		      uint32_t *info_addr, struct kv_error *err)
{
	struct mb_info_writer *w;
	int rc;

	for (int i = 0; i < k->nsegments; i++) {
		const struct kv_mb_segment *s = &k->segments[i];

		rc = kv_gmem_write(mem, s->paddr, image + s->file_offset,
				   s->file_size, err);
		if (rc)
			return rc;
	}
	w = calloc(1, sizeof(*w));
	if (!w)
		return kv_error_set(err, -ENOMEM, "multiboot information");
	rc = build_info(w, mem, cmdline, err);
	if (!rc)
		rc = kv_gmem_write(mem, KV_MB_INFO_ADDR, w->buf, w->used, err);
	free(w);
	if (rc)
		return rc;
	*info_addr = KV_MB_INFO_ADDR;
	return 0;
}

int kv_multiboot_read_file(const char *path, uint8_t **image, size_t *len,
			   struct kv_error *err)
{
	struct stat st;
	uint8_t *buf;
	size_t done = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return kv_error_set_errno(err, -errno, "kernel '%s'", path);
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    st.st_size > MAX_KERNEL_BYTES || st.st_size == 0) {
		close(fd);
		return kv_error_set(err, -EINVAL,
				    "kernel '%s': not a regular file of 1 byte to 256 MiB",
				    path);
	}
	buf = malloc((size_t)st.st_size);
	if (!buf) {
		close(fd);
		return kv_error_set(err, -ENOMEM, "kernel '%s'", path);
	}
	while (done < (size_t)st.st_size) {
		ssize_t r = read(fd, buf + done, (size_t)st.st_size - done);

		if (r <= 0) {
			int e = r < 0 ? -errno : -EIO;

			free(buf);
			close(fd);
			return kv_error_set_errno(err, e, "reading kernel '%s'",
						  path);
		}
		done += (size_t)r;
	}
	close(fd);
	*image = buf;
	*len = done;
	return 0;
}
