/* SPDX-License-Identifier: MIT */
/*
 * The guest's assembly: multiboot v1 header, 32-bit entry, the switch to
 * long mode (BSP and APs), the 16-bit AP trampoline (copied to 0x8000),
 * interrupt stubs and the drop to CPL3.
 *
 * Everything here runs at CPL0, which this platform emulates (~0.4 M
 * instructions/s): keep it short. The boot page tables map only the first
 * 4 GiB; kernel.c builds the real ones from the memory map.
 */
#include "layout.h"

#define MB_MAGIC	0x1badb002
#define MB_FLAGS	0x00000003	/* page-align modules, memory info */

	.section .multiboot, "a"
	.balign 4
	.long MB_MAGIC
	.long MB_FLAGS
	.long -(MB_MAGIC + MB_FLAGS)

/* ------------------------------------------------------------------ */
/* 32-bit entry: EAX = 0x2BADB002, EBX = multiboot info, no stack.      */
	.section .text.boot, "ax"
	.code32
	.globl _start
_start:
	cli
	cld
	movl	$(kstacks + KSTACK_SIZE), %esp
	movl	%eax, boot_magic
	movl	%ebx, boot_info
	rdtsc
	movl	%eax, boot_tsc
	movl	%edx, boot_tsc + 4

	/* Boot tables: PML4[0] -> PDPT, PDPT[0..3] -> 4 PDs of 2 MiB pages
	 * covering [0, 4 GiB). Low dwords only; the high ones stay zero. */
	movl	$(boot_pdpt + PTE_BOOT), boot_pml4
	movl	$(boot_pd + PTE_BOOT), %eax
	movl	$boot_pdpt, %edi
	movl	$4, %ecx
1:	movl	%eax, (%edi)
	addl	$4096, %eax
	addl	$8, %edi
	loop	1b
	movl	$(PTE_BOOT | PTE_PS), %eax
	movl	$boot_pd, %edi
	movl	$2048, %ecx
1:	movl	%eax, (%edi)
	addl	$0x200000, %eax
	addl	$8, %edi
	loop	1b

	movl	$boot_pml4, %eax
	movl	$long_entry_bsp, %esi
	jmp	enter_long_mode

/* AP, arriving from the trampoline in 32-bit protected mode. The BSP
 * already built the final page tables (kernel_cr3). */
	.globl ap_entry32
ap_entry32:
	movl	kernel_cr3, %eax
	movl	$long_entry_ap, %esi

/* EAX = CR3, ESI = 64-bit entry point. */
enter_long_mode:
	movl	%eax, %cr3
	movl	%cr4, %eax
	orl	$(CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT), %eax
	movl	%eax, %cr4
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	movl	%cr0, %eax
	andl	$~(CR0_EM | CR0_NW | CR0_CD), %eax
	orl	$(CR0_PG | CR0_PE | CR0_MP | CR0_NE | CR0_WP), %eax
	movl	%eax, %cr0
	lgdt	boot_gdt_ptr
	movw	$SEL_KDATA, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs
	pushl	$SEL_KCODE
	pushl	%esi
	lret

	.code64
long_entry_bsp:
	movq	$(kstacks + KSTACK_SIZE), %rsp
	xorl	%ebp, %ebp
	call	kernel_main
	jmp	halt_forever

long_entry_ap:
	movq	ap_boot_rsp(%rip), %rsp
	xorl	%ebp, %ebp
	movl	ap_boot_index(%rip), %edi
	call	ap_main
	jmp	halt_forever

	.globl halt_forever
halt_forever:
	cli
1:	hlt
	jmp	1b

/* ------------------------------------------------------------------ */
/* AP trampoline: copied to TRAMPOLINE_ADDR, entered by SIPI vector 0x08
 * (CS = 0x0800, IP = 0) in real mode.                                 */
	.section .rodata
	.globl trampoline_start, trampoline_end
	.code16
trampoline_start:
	cli
	cld
	movw	%cs, %ax
	movw	%ax, %ds
	lgdtl	(tr_gdt_ptr - trampoline_start)
	movl	%cr0, %eax
	orl	$CR0_PE, %eax
	movl	%eax, %cr0
	ljmpl	$0x08, $(TRAMPOLINE_ADDR + tr_pm - trampoline_start)
	.code32
tr_pm:
	movw	$0x10, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movl	ap_boot_rsp, %esp	/* below 4 GiB; enter_long_mode pushes */
	movl	$ap_entry32, %eax
	jmp	*%eax
	.balign 8
tr_gdt:
	.quad	0
	.quad	0x00cf9a000000ffff	/* 0x08: flat 32-bit code */
	.quad	0x00cf92000000ffff	/* 0x10: flat data */
tr_gdt_ptr:
	.word	tr_gdt_ptr - tr_gdt - 1
	.long	TRAMPOLINE_ADDR + tr_gdt - trampoline_start
trampoline_end:

	.balign 8
boot_gdt:
	.quad	0
	.quad	0x00af9a000000ffff	/* SEL_KCODE: 64-bit code */
	.quad	0x00cf92000000ffff	/* SEL_KDATA */
boot_gdt_ptr:
	.word	boot_gdt_ptr - boot_gdt - 1
	.long	boot_gdt

/* ------------------------------------------------------------------ */
/* Interrupt stubs. The per-vCPU data sits at the base of the kernel
 * stack (KSTACK_SIZE-aligned), so a handler finds it from RSP alone.  */
	.text
	.code64

	.globl isr_timer
isr_timer:
	pushq	%rax
	movq	%rsp, %rax
	andq	$~(KSTACK_SIZE - 1), %rax
	incq	(%rax)			/* struct cpu_local.ticks */
	movl	$(LAPIC_ADDR + LAPIC_EOI), %eax
	movl	$0, (%rax)
	popq	%rax
	iretq

	.globl isr_spurious
isr_spurious:
	iretq

/* A vCPU that runs no workload waits here at CPL0 with interrupts on,
 * costing the host nothing between timer ticks. */
/* #GP. A HLT at CPL3 (halt_until_tick) lands here: halt at CPL0 until
 * the next interrupt, then resume the workload after the HLT. A real OS
 * idles this way; a vCPU that spins instead takes a host core from
 * everything else. (SYSCALL and `int $n` do not reach CPL0 from CPL3
 * under PVM; a fault does.) Any other #GP is reported.
 * Stack: saved RAX, error code, RIP, CS, RFLAGS, RSP, SS. */
	.globl isr_gp
isr_gp:
	pushq	%rax
	testb	$3, 24(%rsp)
	jz	1f
	movq	16(%rsp), %rax
	cmpb	$0xf4, (%rax)
	jne	1f
	incq	16(%rsp)
	popq	%rax
	addq	$8, %rsp
	sti
	hlt
	iretq
1:	popq	%rax
	jmp	isr_exc13

	.globl idle_forever
idle_forever:
	sti
1:	hlt
	jmp	1b

.macro EXC_NOERR n
	.globl isr_exc\n
isr_exc\n:
	pushq	$0
	pushq	$\n
	jmp	exc_common
.endm
.macro EXC_ERR n
	.globl isr_exc\n
isr_exc\n:
	pushq	$\n
	jmp	exc_common
.endm

EXC_NOERR 0
EXC_NOERR 1
EXC_NOERR 2
EXC_NOERR 3
EXC_NOERR 4
EXC_NOERR 5
EXC_NOERR 6
EXC_NOERR 7
EXC_ERR   8
EXC_NOERR 9
EXC_ERR   10
EXC_ERR   11
EXC_ERR   12
EXC_ERR   13
EXC_ERR   14
EXC_NOERR 15
EXC_NOERR 16
EXC_ERR   17
EXC_NOERR 18
EXC_NOERR 19
EXC_NOERR 20
EXC_ERR   21
EXC_NOERR 22
EXC_NOERR 23
EXC_NOERR 24
EXC_NOERR 25
EXC_NOERR 26
EXC_NOERR 27
EXC_NOERR 28
EXC_ERR   29
EXC_ERR   30
EXC_NOERR 31

/* Stack: vector, error code, RIP, CS, RFLAGS, RSP, SS. */
exc_common:
	cld
	movq	%rsp, %rdi
	andq	$~15, %rsp
	call	exception_report
	jmp	halt_forever

	.section .rodata
	.balign 8
	.globl exc_stubs
exc_stubs:
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.quad	isr_exc\n
	.endr

	.text
/* enter_user(rip, arg, rsp): IRETQ to CPL3 with IF = 1 and IOPL = 3. */
	.globl enter_user
enter_user:
	pushq	$SEL_UDATA
	pushq	%rdx
	pushq	$(RFLAGS_IF | RFLAGS_IOPL3 | 2)
	pushq	$SEL_UCODE
	pushq	%rdi
	movq	%rsi, %rdi
	xorl	%eax, %eax
	movw	%ax, %ds
	movw	%ax, %es
	iretq

/* load_gdt_tss(gdtr): new GDT, reload CS/SS and TR. */
	.globl load_gdt_tss
load_gdt_tss:
	lgdt	(%rdi)
	movw	$SEL_KDATA, %ax
	movw	%ax, %ss
	movw	%ax, %ds
	movw	%ax, %es
	pushq	$SEL_KCODE
	leaq	1f(%rip), %rax
	pushq	%rax
	lretq
1:	movw	$SEL_TSS, %ax
	ltr	%ax
	ret
