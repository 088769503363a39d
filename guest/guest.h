/* SPDX-License-Identifier: MIT */
/*
 * The guest kernel's shared state. A kernel has exactly one instance of its
 * machine, so this is the one place with global state: `struct guest g`,
 * written by the CPL0 boot code and then read (and, for the workload
 * fields, written) by the CPL3 workloads. Every page is user-accessible.
 */
#ifndef GUEST_GUEST_H
#define GUEST_GUEST_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layout.h"

#define HEARTBEAT_BYTE	'*'	/* never printed anywhere else */
#define COM1		0x3f8
#define PAGE_SIZE	4096ULL
#define HUGE_SIZE	0x200000ULL
#define MAX_EXTENTS	16

enum pattern { PAT_RANDOM, PAT_SEQUENTIAL, PAT_HOT_COLD, PAT_SMALL };

/* What a page holds besides its generation stamp (see workload.c). */
enum fill { FILL_MIX, FILL_SPARSE, FILL_NOISE };

struct options {
	uint64_t mem_mib;	/* working set */
	uint64_t rate_mib;	/* MiB/s dirtied, all workload vCPUs together */
	enum pattern pattern;
	enum fill fill;
	uint32_t vcpus;		/* 0: all */
	uint64_t seed;
	uint64_t runtime_s;	/* 0: until 'q' */
	uint32_t sweep_s;	/* full verification sweep period */
	bool inject;		/* self-test: corrupt one page after 1 s */
	bool idle_spin;		/* idle=spin: never halt between steps */
};

/* At the base of each vCPU's kernel stack; the timer stub bumps ticks. */
struct cpu_local {
	volatile uint64_t ticks;
	uint32_t index;
	uint32_t apic_id;
};

/* Physical RAM usable for the working set, 2 MiB aligned. */
struct extent {
	uint64_t base;
	uint64_t pages;		/* 4 KiB pages */
};

struct guest {
	struct options opt;
	char cmdline[512];
	uint64_t tsc_khz;
	uint64_t tsc_khz_pit;	/* measured */
	uint64_t tsc_khz_cpuid;	/* 0: not offered */
	uint64_t boot_tsc;	/* TSC at the multiboot entry */
	uint64_t cpl0_done_tsc;	/* last vCPU entered CPL3 */
	uint64_t ram_bytes;	/* usable RAM in the memory map */
	uint32_t lapic_ticks_10ms;

	uint32_t ncpus;		/* from the MP table */
	uint64_t mp_addr;	/* its floating pointer; 0: none found */
	bool cpus_from_madt;	/* the ACPI MADT listed more CPUs */
	uint32_t apic_ids[MAX_CPUS];
	volatile uint32_t cpus_up;
	uint32_t workers;

	/* Working set: page i of the set is in extent order; gens[i] is
	 * the generation last written to it. */
	struct extent ext[MAX_EXTENTS];
	uint32_t next;
	uint64_t ws_pages;
	volatile uint32_t *gens;

	volatile uint32_t print_lock;
	volatile uint32_t go;		/* BSP: every vCPU is up */
	volatile uint32_t running;	/* workload vCPUs in their loop */
	volatile uint32_t stop;		/* power off requested */
	volatile uint32_t stopped;	/* workload vCPUs done verifying */
	volatile uint64_t final_pages;
	volatile uint64_t final_corrupt;
};

extern struct guest g;
extern struct cpu_local *cpu_locals[MAX_CPUS];

/* lib.c: formatting and port I/O, usable at CPL0 and CPL3. */
static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outw(uint16_t port, uint16_t v)
{
	__asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;

	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;

	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

static inline void cpu_relax(void)
{
	__asm__ volatile("pause" ::: "memory");
}

void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
size_t strlen(const char *s);
int vfmt(char *buf, size_t size, const char *fmt, va_list ap);
int fmt(char *buf, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void serial_write(const char *s, size_t n);
void print_lock(void);
void print_unlock(void);
/* One whole line under the print lock. */
void gprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Without the lock: for exceptions, where the lock may be held. */
void gprintf_nolock(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));
void parse_cmdline(const char *s, struct options *o);
const char *pattern_name(enum pattern p);
const char *fill_name(enum fill f);

/* From CPL3: halt this vCPU until its next timer tick. HLT faults at CPL3;
 * boot.S's #GP handler halts at CPL0 and resumes after it. */
static inline void halt_until_tick(void)
{
	__asm__ volatile("hlt" : : : "memory");
}

/* workload.c: runs at CPL3. */
void user_main(uint64_t cpu);

#endif
