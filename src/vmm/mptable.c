/* SPDX-License-Identifier: MIT */
/* MP table builder: plain bytes, little-endian, no KVM involved. */
#include "vmm/mptable.h"

#include <errno.h>
#include <string.h>

#include "vmm/vm.h"

#define MP_SPEC_REV	   4 /* 1.4 */
#define MP_FLOAT_LEN	   16
#define MP_HEADER_LEN	   44
#define MP_PROC_LEN	   20
#define MP_SHORT_ENTRY_LEN 8

enum mp_entry_type {
	MP_PROCESSOR = 0,
	MP_BUS = 1,
	MP_IOAPIC = 2,
	MP_IOINTR = 3,
	MP_LINTR = 4,
};

enum mp_intr_type { MP_INT = 0, MP_NMI = 1, MP_SMI = 2, MP_EXTINT = 3 };

#define MP_CPU_ENABLED	  0x01
#define MP_CPU_BSP	  0x02
#define MP_LAPIC_VERSION  0x14
#define MP_IOAPIC_VERSION 0x11
#define MP_ALL_LAPICS	  0xff
#define MP_ISA_BUS	  0

struct mp_writer {
	uint8_t *buf;
	size_t pos;
};

static void put8(struct mp_writer *w, uint8_t v)
{
	w->buf[w->pos++] = v;
}

static void put16(struct mp_writer *w, uint16_t v)
{
	put8(w, (uint8_t)v);
	put8(w, (uint8_t)(v >> 8));
}

static void put32(struct mp_writer *w, uint32_t v)
{
	put16(w, (uint16_t)v);
	put16(w, (uint16_t)(v >> 16));
}

static void put_bytes(struct mp_writer *w, const char *s, size_t n)
{
	memcpy(w->buf + w->pos, s, n);
	w->pos += n;
}

static uint8_t checksum_for(const uint8_t *p, size_t n)
{
	uint8_t sum = 0;

	for (size_t i = 0; i < n; i++)
		sum += p[i];
	return (uint8_t)-sum;
}

static void put_processor(struct mp_writer *w, int id)
{
	put8(w, MP_PROCESSOR);
	put8(w, (uint8_t)id);
	put8(w, MP_LAPIC_VERSION);
	put8(w, MP_CPU_ENABLED | (id == 0 ? MP_CPU_BSP : 0));
	/* Signature and features: family 6, FPU + APIC present. */
	put32(w, 0x600);
	put32(w, (1u << 0) | (1u << 9));
	put32(w, 0);
	put32(w, 0);
}

static void put_intr(struct mp_writer *w, enum mp_entry_type type,
		     enum mp_intr_type itype, uint8_t src_irq, uint8_t dst_id,
		     uint8_t dst_pin)
{
	put8(w, type);
	put8(w, itype);
	put16(w, 0); /* polarity and trigger conform to the bus */
	put8(w, MP_ISA_BUS);
	put8(w, src_irq);
	put8(w, dst_id);
	put8(w, dst_pin);
}

/* ISA IRQ -> IOAPIC pin, as set up by the VMM's GSI routing: the timer
 * moves to pin 2 because pin 0 carries the 8259's ExtINT; IRQ 2 is the
 * cascade and has no entry. */
static int isa_irq_pin(int irq)
{
	return irq == 0 ? 2 : irq;
}

static size_t config_table_len(int ncpus)
{
	/* processors + bus + IOAPIC + ExtINT + 15 ISA IRQs + 2 LINT */
	return MP_HEADER_LEN + (size_t)ncpus * MP_PROC_LEN +
	       (2 + 1 + 15 + 2) * MP_SHORT_ENTRY_LEN;
}

int kv_mptable_build(uint8_t *buf, size_t cap, uint32_t addr, int ncpus,
		     struct kv_error *err)
{
	struct mp_writer w = {.buf = buf, .pos = 0};
	size_t table_len = config_table_len(ncpus);
	size_t table_start = MP_FLOAT_LEN;
	uint16_t entries = 0;
	uint8_t ioapic_id = (uint8_t)ncpus;

	if (ncpus < 1 || ncpus > KV_VM_MAX_VCPUS)
		return kv_error_set(err, -EINVAL,
				    "MP table: %d CPUs, must be 1..%d", ncpus,
				    KV_VM_MAX_VCPUS);
	if (cap < table_start + table_len)
		return kv_error_set(err, -ENOSPC,
				    "MP table: %zu bytes needed, %zu available",
				    table_start + table_len, cap);
	memset(buf, 0, table_start + table_len);

	/* Floating pointer structure. */
	put_bytes(&w, "_MP_", 4);
	put32(&w, addr + (uint32_t)table_start);
	put8(&w, 1); /* length in 16-byte units */
	put8(&w, MP_SPEC_REV);
	put8(&w, 0); /* checksum, below */
	put8(&w, 0); /* feature 1: a configuration table is present */
	put8(&w, 0); /* feature 2: virtual wire mode, no IMCR */
	put8(&w, 0);
	put8(&w, 0);
	put8(&w, 0);
	buf[10] = checksum_for(buf, MP_FLOAT_LEN);

	/* Configuration table header; count and checksum filled last. */
	put_bytes(&w, "PCMP", 4);
	put16(&w, (uint16_t)table_len);
	put8(&w, MP_SPEC_REV);
	put8(&w, 0);
	put_bytes(&w, "KVMIG   ", 8);
	put_bytes(&w, "KVMIG-VM    ", 12);
	put32(&w, 0); /* no OEM table */
	put16(&w, 0);
	put16(&w, 0); /* entry count, below */
	put32(&w, KV_LAPIC_ADDR);
	put16(&w, 0); /* no extended table */
	put8(&w, 0);
	put8(&w, 0);

	for (int i = 0; i < ncpus; i++, entries++)
		put_processor(&w, i);

	put8(&w, MP_BUS);
	put8(&w, MP_ISA_BUS);
	put_bytes(&w, "ISA   ", 6);
	entries++;

	put8(&w, MP_IOAPIC);
	put8(&w, ioapic_id);
	put8(&w, MP_IOAPIC_VERSION);
	put8(&w, 1); /* enabled */
	put32(&w, KV_IOAPIC_ADDR);
	entries++;

	put_intr(&w, MP_IOINTR, MP_EXTINT, 0, ioapic_id, 0);
	entries++;
	for (int irq = 0; irq < 16; irq++) {
		if (irq == 2)
			continue;
		put_intr(&w, MP_IOINTR, MP_INT, (uint8_t)irq, ioapic_id,
			 (uint8_t)isa_irq_pin(irq));
		entries++;
	}
	put_intr(&w, MP_LINTR, MP_EXTINT, 0, MP_ALL_LAPICS, 0);
	put_intr(&w, MP_LINTR, MP_NMI, 0, MP_ALL_LAPICS, 1);
	entries += 2;

	buf[table_start + 34] = (uint8_t)entries;
	buf[table_start + 35] = (uint8_t)(entries >> 8);
	buf[table_start + 7] = checksum_for(buf + table_start, table_len);
	return (int)w.pos;
}
