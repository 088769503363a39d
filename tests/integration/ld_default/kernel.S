/* SPDX-License-Identifier: MIT */
/*
 * A multiboot kernel as small as one gets, linked by GNU ld with its
 * default script (see meson.build: only -Ttext and -e), so that ld puts
 * the ELF headers in a read-only segment just below the text. It prints
 * one line on COM1 and powers off through port 0x604.
 */
	.section .text
	.code32
	.globl _start
	.align 4
mb_header:
	.long 0x1BADB002
	.long 0x00000003
	.long -(0x1BADB002 + 0x00000003)
_start:
	mov $msg, %esi
1:	lodsb
	test %al, %al
	jz 2f
	mov $0x3f8, %dx
	out %al, %dx
	jmp 1b
2:	mov $0x604, %dx
	mov $0x2000, %ax
	out %ax, %dx
3:	hlt
	jmp 3b

	.section .rodata
msg:	.asciz "ld-default kernel: hello\n"

	.section .note.GNU-stack, "", @progbits
