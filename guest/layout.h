/* SPDX-License-Identifier: MIT */
/* Constants shared by the guest's assembly and C. */
#ifndef GUEST_LAYOUT_H
#define GUEST_LAYOUT_H

#define MAX_CPUS	64
#define KSTACK_SIZE	16384	/* power of two: cpu_local sits at its base */
#define USTACK_SIZE	16384
#define TRAMPOLINE_ADDR	0x8000	/* SIPI vector 0x08 */
#define SIPI_VECTOR	(TRAMPOLINE_ADDR >> 12)

#define LAPIC_ADDR	0xfee00000
#define IOAPIC_ADDR	0xfec00000
#define LAPIC_EOI	0xb0

#define SEL_KCODE	0x08
#define SEL_KDATA	0x10
#define SEL_UDATA	0x1b	/* 0x18 | RPL 3 */
#define SEL_UCODE	0x23	/* 0x20 | RPL 3 */
#define SEL_TSS		0x28

#define VEC_TIMER	32
#define VEC_SPURIOUS	0xff

#define PTE_P		0x001
#define PTE_W		0x002
#define PTE_U		0x004
#define PTE_PWT		0x008
#define PTE_PCD		0x010
#define PTE_PS		0x080
#define PTE_BOOT	(PTE_P | PTE_W | PTE_U)

#define CR0_PE		0x00000001
#define CR0_MP		0x00000002
#define CR0_EM		0x00000004
#define CR0_NE		0x00000020
#define CR0_WP		0x00010000
#define CR0_NW		0x20000000
#define CR0_CD		0x40000000
#define CR0_PG		0x80000000
#define CR4_PAE		0x00000020
#define CR4_OSFXSR	0x00000200
#define CR4_OSXMMEXCPT	0x00000400
#define MSR_EFER	0xc0000080
#define EFER_LME	0x00000100

#define RFLAGS_IF	0x0200
#define RFLAGS_IOPL3	0x3000

#endif
