/* SPDX-License-Identifier: MIT */
/*
 * The MP configuration table (Intel MultiProcessor Specification 1.4) that
 * tells the guest how many CPUs there are and where the IOAPIC is: a
 * floating pointer structure ("_MP_") followed by the base configuration
 * table ("PCMP"), placed in the BIOS area that guests scan.
 *
 * Content: one processor entry per vCPU (local APIC id = vCPU index, BSP =
 * 0), one ISA bus, the IOAPIC (id = ncpus, at KV_IOAPIC_ADDR), I/O interrupt
 * entries for ISA IRQs 0-15 (ExtINT on INTIN 0, IRQ 0 on INTIN 2, as the
 * VMM's GSI routing does) and local interrupt entries (ExtINT on LINT0, NMI
 * on LINT1 of every local APIC).
 */
#ifndef KV_VMM_MPTABLE_H
#define KV_VMM_MPTABLE_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

#define KV_MPTABLE_ADDR	     0xf0000U
#define KV_MPTABLE_MAX_BYTES 4096U
#define KV_MP_IOAPIC_PINS    24

/* Build the floating pointer (at gpa `addr`) and the configuration table
 * right after it into buf. Returns the number of bytes written, or <0 if
 * ncpus is out of range or cap is too small. */
int kv_mptable_build(uint8_t *buf, size_t cap, uint32_t addr, int ncpus,
		     struct kv_error *err);

#endif
