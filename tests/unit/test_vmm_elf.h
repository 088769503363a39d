/* SPDX-License-Identifier: MIT */
/*
 * Builds tiny multiboot kernels for the vmm tests: an ELF32 i386 executable
 * with one PT_LOAD segment at 1 MiB holding the ELF and program headers,
 * the multiboot header at TEST_MB_HDR_OFF and the code at TEST_MB_CODE_OFF.
 */
#ifndef KV_TEST_VMM_ELF_H
#define KV_TEST_VMM_ELF_H

#include <elf.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TEST_MB_BASE	 0x100000U
#define TEST_MB_HDR_OFF	 0x60U
#define TEST_MB_CODE_OFF 0x80U

static inline void test_put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4); /* x86 hosts only: little-endian */
}

/* Returns a malloc'ed image of *len bytes. */
static inline uint8_t *test_mb_elf(const uint8_t *code, size_t code_len,
				   uint32_t mb_flags, size_t *len)
{
	size_t n = TEST_MB_CODE_OFF + code_len;
	uint8_t *img = calloc(1, n);
	Elf32_Ehdr *eh = (Elf32_Ehdr *)img;
	Elf32_Phdr *ph = (Elf32_Phdr *)(img + sizeof(*eh));

	memcpy(eh->e_ident, ELFMAG, SELFMAG);
	eh->e_ident[EI_CLASS] = ELFCLASS32;
	eh->e_ident[EI_DATA] = ELFDATA2LSB;
	eh->e_ident[EI_VERSION] = EV_CURRENT;
	eh->e_type = ET_EXEC;
	eh->e_machine = EM_386;
	eh->e_version = EV_CURRENT;
	eh->e_entry = TEST_MB_BASE + TEST_MB_CODE_OFF;
	eh->e_phoff = sizeof(*eh);
	eh->e_ehsize = sizeof(*eh);
	eh->e_phentsize = sizeof(*ph);
	eh->e_phnum = 1;
	ph->p_type = PT_LOAD;
	ph->p_offset = 0;
	ph->p_vaddr = TEST_MB_BASE;
	ph->p_paddr = TEST_MB_BASE;
	ph->p_filesz = (uint32_t)n;
	ph->p_memsz = (uint32_t)n + 0x1000; /* some bss */
	ph->p_flags = PF_R | PF_W | PF_X;
	ph->p_align = 0x1000;
	test_put32(img + TEST_MB_HDR_OFF, 0x1BADB002);
	test_put32(img + TEST_MB_HDR_OFF + 4, mb_flags);
	test_put32(img + TEST_MB_HDR_OFF + 8, -(0x1BADB002u + mb_flags));
	memcpy(img + TEST_MB_CODE_OFF, code, code_len);
	*len = n;
	return img;
}

#endif
