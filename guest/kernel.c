// SPDX-License-Identifier: MIT
/*
 * The guest's CPL0 part: multiboot info, page tables, per-vCPU GDT/TSS/IDT,
 * LAPIC timer, TSC calibration, MP table and AP start-up; then every vCPU
 * leaves for CPL3 (workload.c) and never comes back except for interrupts.
 *
 * CPL0 code is emulated on this platform (~0.4 M instructions/s), so this
 * file avoids loops over large ranges: the TSS I/O bitmap is one static
 * table shared by every TSS, tables are filled only where needed, and the
 * console banner is printed later, from CPL3.
 */
#include "guest.h"

#define MB_BOOTLOADER_MAGIC 0x2badb002
#define MB_INFO_MEM	    (1u << 0)
#define MB_INFO_CMDLINE	    (1u << 2)
#define MB_INFO_MMAP	    (1u << 6)
#define MAX_PDS		    64	/* identity map up to 64 GiB */
#define MAX_REGIONS	    32

#define LAPIC_ID	0x20
#define LAPIC_TPR	0x80
#define LAPIC_SVR	0xf0
#define LAPIC_ICR_LO	0x300
#define LAPIC_ICR_HI	0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_CUR 0x390
#define LAPIC_TIMER_DIV 0x3e0
#define ICR_INIT	0x00004500
#define ICR_SIPI	0x00004600
#define ICR_BUSY	(1u << 12)
#define LVT_MASKED	(1u << 16)
#define LVT_PERIODIC	(1u << 17)

#define PIT_HZ 1193182ULL


struct guest g;
struct cpu_local *cpu_locals[MAX_CPUS];

/* Shared with boot.S. */
uint32_t boot_magic, boot_info;
uint64_t boot_tsc;
uint32_t kernel_cr3;
uint64_t ap_boot_rsp;
uint32_t ap_boot_index;
uint64_t boot_pml4[512] __attribute__((aligned(4096)));
uint64_t boot_pdpt[512] __attribute__((aligned(4096)));
uint64_t boot_pd[4][512] __attribute__((aligned(4096)));
uint8_t kstacks[MAX_CPUS][KSTACK_SIZE] __attribute__((aligned(KSTACK_SIZE)));

extern const uint64_t exc_stubs[32];
extern const char trampoline_start[], trampoline_end[];
extern char _end[];
void isr_timer(void);
void isr_spurious(void);
void isr_gp(void);
void idle_forever(void) __attribute__((noreturn));
void halt_forever(void) __attribute__((noreturn));
void enter_user(void (*rip)(uint64_t), uint64_t arg, uint64_t rsp)
	__attribute__((noreturn));
void load_gdt_tss(const void *gdtr);
void kernel_main(void);
void ap_main(uint32_t index);
void exception_report(const uint64_t *frame);

static uint64_t pml4[512] __attribute__((aligned(4096)));
static uint64_t pdpt[512] __attribute__((aligned(4096)));
static uint64_t pds[MAX_PDS][512] __attribute__((aligned(4096)));
static uint8_t ustacks[MAX_CPUS][USTACK_SIZE] __attribute__((aligned(16)));

struct tss {
	uint32_t rsvd0;
	uint64_t rsp0, rsp1, rsp2;
	uint64_t rsvd1;
	uint64_t ist[7];
	uint64_t rsvd2;
	uint16_t rsvd3;
	uint16_t iomap_base;
} __attribute__((packed));

/* Every TSS points (iomap_base) at one shared bitmap that follows them;
 * a set bit denies the port. Under PVM, CPL3 port I/O needs the bitmap
 * even with IOPL 3. The ports: COM1, kvmig's power-off, i440fx PM1a. */
static struct {
	struct tss tss[MAX_CPUS];
	uint8_t iomap[8192];
	uint8_t iomap_end;
} __attribute__((packed, aligned(128))) tss_block = {
	.iomap = {
		[0 ... 8191] = 0xff,
		[0x3f8 / 8] = 0x00,
		[0x604 / 8] = 0xff & ~(3u << (0x604 % 8)),
		[0xb004 / 8] = 0xff & ~(3u << (0xb004 % 8)),
	},
	.iomap_end = 0xff,
};

struct idt_entry {
	uint16_t off_lo;
	uint16_t sel;
	uint8_t ist;
	uint8_t type;
	uint16_t off_mid;
	uint32_t off_hi;
	uint32_t rsvd;
};

struct percpu {
	uint64_t gdt[7];
	struct idt_entry idt[256];
};
static struct percpu percpu[MAX_CPUS] __attribute__((aligned(64)));

struct mb_info {
	uint32_t flags, mem_lower, mem_upper, boot_device, cmdline;
	uint32_t mods_count, mods_addr, syms[4];
	uint32_t mmap_length, mmap_addr;
} __attribute__((packed));

struct mb_mmap {
	uint32_t size;
	uint64_t base, len;
	uint32_t type;
} __attribute__((packed));

struct region {
	uint64_t base, end;
	bool ram;	/* type 1; others (ACPI, reserved) are mapped too */
};

struct desc_ptr {
	uint16_t limit;
	uint64_t base;
} __attribute__((packed));

static inline uint32_t lapic_read(uint32_t reg)
{
	return *(volatile uint32_t *)(uintptr_t)(LAPIC_ADDR + reg);
}

static inline void lapic_write(uint32_t reg, uint32_t v)
{
	*(volatile uint32_t *)(uintptr_t)(LAPIC_ADDR + reg) = v;
}

static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
	__asm__ volatile("cpuid"
			 : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
			 : "a"(leaf), "c"(sub));
}

static void fatal(const char *what) __attribute__((noreturn));
static void fatal(const char *what)
{
	gprintf_nolock("guest: FATAL: %s", what);
	halt_forever();
}

static void delay_us(uint64_t us)
{
	uint64_t end = rdtsc() + us * g.tsc_khz / 1000;

	while (rdtsc() < end)
		cpu_relax();
}

static void serial_init(void)
{
	outb(COM1 + 1, 0x00);	/* no UART interrupts: we poll */
	outb(COM1 + 3, 0x03);	/* 8N1, DLAB off */
	outb(COM1 + 2, 0x07);	/* FIFOs on and cleared */
	outb(COM1 + 4, 0x03);	/* DTR, RTS */
}

/* ---- memory: multiboot info, page tables, working-set extents ---- */

static int read_memory_map(const struct mb_info *mbi, struct region *r)
{
	int n = 0;

	if (mbi->flags & MB_INFO_MMAP) {
		uint64_t p = mbi->mmap_addr, end = p + mbi->mmap_length;

		while (p + sizeof(struct mb_mmap) <= end && n < MAX_REGIONS) {
			const struct mb_mmap *e =
				(const struct mb_mmap *)(uintptr_t)p;

			if (e->len) {
				r[n].base = e->base;
				r[n].end = e->base + e->len;
				r[n].ram = e->type == 1;
				n++;
			}
			p += e->size + 4;
		}
	} else if (mbi->flags & MB_INFO_MEM) {
		r[n] = (struct region){ 0, (uint64_t)mbi->mem_lower << 10,
					true };
		n++;
		r[n] = (struct region){ 0x100000, 0x100000 +
					((uint64_t)mbi->mem_upper << 10), true };
		n++;
	}
	return n;
}

static void map_2m(uint64_t addr, uint64_t flags)
{
	uint64_t pdi = addr >> 30;

	if (pdi >= MAX_PDS)
		return;
	pds[pdi][(addr >> 21) & 511] = addr | flags | PTE_PS;
	pdpt[pdi] = (uintptr_t)pds[pdi] | PTE_BOOT;
}

/* Identity map with 2 MiB user pages: every memory-map region (RAM, and
 * ACPI tables the CPU search reads), the first 2 MiB
 * (BIOS data, MP table, trampoline) and the LAPIC/IOAPIC uncached. */
static void build_page_tables(const struct region *r, int n)
{
	const uint64_t rw = PTE_P | PTE_W | PTE_U;

	map_2m(0, rw);
	for (int i = 0; i < n; i++) {
		uint64_t a = r[i].base & ~(HUGE_SIZE - 1);

		for (; a < r[i].end; a += HUGE_SIZE)
			map_2m(a, rw);
	}
	map_2m(IOAPIC_ADDR, rw | PTE_PCD | PTE_PWT);
	map_2m(LAPIC_ADDR, rw | PTE_PCD | PTE_PWT);
	pml4[0] = (uintptr_t)pdpt | PTE_BOOT;
	kernel_cr3 = (uint32_t)(uintptr_t)pml4;
	__asm__ volatile("mov %0, %%cr3" : : "r"((uint64_t)kernel_cr3)
			 : "memory");
}

/* RAM above the kernel image, 2 MiB aligned, for the generation table
 * and then the working set. */
static void plan_working_set(const struct region *r, int n)
{
	uint64_t floor = ((uintptr_t)_end + HUGE_SIZE - 1) & ~(HUGE_SIZE - 1);
	uint64_t want = g.opt.mem_mib * 256, gen_bytes, have = 0;

	gen_bytes = (want * 4 + HUGE_SIZE - 1) & ~(HUGE_SIZE - 1);
	g.ram_bytes = 0;
	for (int i = 0; i < n; i++) {
		uint64_t lo = (r[i].base + HUGE_SIZE - 1) & ~(HUGE_SIZE - 1);
		uint64_t hi = r[i].end & ~(HUGE_SIZE - 1);

		if (!r[i].ram)
			continue;
		g.ram_bytes += r[i].end - r[i].base;
		if (lo < floor)
			lo = floor;
		if (hi > (uint64_t)MAX_PDS << 30)
			hi = (uint64_t)MAX_PDS << 30;
		if (hi <= lo || g.next >= MAX_EXTENTS)
			continue;
		if (!g.gens && hi - lo > gen_bytes) {
			g.gens = (volatile uint32_t *)(uintptr_t)lo;
			lo += gen_bytes;
		}
		if (!g.gens || hi <= lo || have >= want)
			continue;
		g.ext[g.next].base = lo;
		g.ext[g.next].pages = (hi - lo) / PAGE_SIZE;
		if (g.ext[g.next].pages > want - have)
			g.ext[g.next].pages = want - have;
		have += g.ext[g.next].pages;
		g.next++;
	}
	g.ws_pages = have;
}

/* ---- time: TSC frequency and the LAPIC timer ---- */

static uint64_t cpuid_tsc_khz(void)
{
	uint32_t r[4];

	cpuid(1, 0, r);
	if (r[2] & (1u << 31)) { /* hypervisor leaves */
		cpuid(0x40000000, 0, r);
		if (r[0] >= 0x40000010) {
			cpuid(0x40000010, 0, r);
			if (r[0])
				return r[0];
		}
	}
	cpuid(0, 0, r);
	if (r[0] >= 0x15) {
		cpuid(0x15, 0, r);
		if (r[0] && r[1] && r[2])
			return (uint64_t)r[2] * r[1] / r[0] / 1000;
	}
	return 0;
}

/* PIT channel 2, one-shot 50 ms; its output is bit 5 of port 0x61. */
static uint64_t pit_tsc_khz(void)
{
	const uint64_t latch = PIT_HZ / 20;
	uint64_t t0, t1, loops = 0;

	outb(0x61, (inb(0x61) & ~0x02) | 0x01);
	outb(0x43, 0xb0);
	outb(0x42, latch & 0xff);
	outb(0x42, latch >> 8);
	t0 = rdtsc();
	while (!(inb(0x61) & 0x20)) {
		if (++loops > 2000000)
			return 0;
	}
	t1 = rdtsc();
	return (t1 - t0) * PIT_HZ / latch / 1000;
}

static void calibrate_tsc(void)
{
	uint64_t pit = pit_tsc_khz(), id = cpuid_tsc_khz();

	g.tsc_khz_pit = pit;
	g.tsc_khz_cpuid = id;
	/* CPUID is exact when it agrees with the measurement (2%). */
	if (id && (!pit || (id * 50 > pit * 49 && id * 49 < pit * 50)))
		g.tsc_khz = id;
	else if (pit)
		g.tsc_khz = pit;
	else
		g.tsc_khz = 2500000;
}

static void lapic_enable(void)
{
	lapic_write(LAPIC_TPR, 0);
	lapic_write(LAPIC_SVR, 0x100 | VEC_SPURIOUS);
	lapic_write(LAPIC_TIMER_DIV, 0x3); /* divide by 16 */
}

static void calibrate_lapic_timer(void)
{
	lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VEC_TIMER);
	lapic_write(LAPIC_TIMER_INIT, 0xffffffff);
	delay_us(10000);
	g.lapic_ticks_10ms = 0xffffffff - lapic_read(LAPIC_TIMER_CUR);
	lapic_write(LAPIC_TIMER_INIT, 0);
	if (!g.lapic_ticks_10ms)
		g.lapic_ticks_10ms = 625000; /* KVM's 1 GHz bus / 16 */
}

/* 1 kHz when the workload halts between steps (it wakes on the tick for
 * its 1 ms heartbeat), else 100 Hz. */
static void lapic_timer_start(void)
{
	uint32_t period = g.opt.idle_spin ? g.lapic_ticks_10ms
					  : g.lapic_ticks_10ms / 10;

	lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | VEC_TIMER);
	lapic_write(LAPIC_TIMER_INIT, period ? period : 1);
}


/* ---- per-vCPU descriptor tables ---- */

static void set_gate(struct idt_entry *e, uint64_t fn, unsigned dpl)
{
	e->off_lo = fn & 0xffff;
	e->sel = SEL_KCODE;
	e->ist = 0;
	e->type = 0x8e | (dpl << 5);
	e->off_mid = (fn >> 16) & 0xffff;
	e->off_hi = fn >> 32;
}

static void cpu_tables_load(uint32_t i)
{
	struct percpu *pc = &percpu[i];
	struct tss *t = &tss_block.tss[i];
	uint64_t base = (uintptr_t)t;
	uint32_t iomap = (uint32_t)((uintptr_t)tss_block.iomap - base);
	uint32_t limit = iomap + sizeof(tss_block.iomap);
	struct desc_ptr gdtr = { sizeof(pc->gdt) - 1, (uintptr_t)pc->gdt };
	struct desc_ptr idtr = { sizeof(pc->idt) - 1, (uintptr_t)pc->idt };

	t->rsp0 = (uintptr_t)kstacks[i] + KSTACK_SIZE;
	t->iomap_base = (uint16_t)iomap;
	pc->gdt[1] = 0x00209a0000000000ULL; /* kernel code, 64-bit */
	pc->gdt[2] = 0x0000920000000000ULL; /* kernel data */
	pc->gdt[3] = 0x0000f20000000000ULL; /* user data */
	pc->gdt[4] = 0x0020fa0000000000ULL; /* user code, 64-bit */
	pc->gdt[5] = (limit & 0xffff) | ((base & 0xffffff) << 16) |
		     (0x89ULL << 40) | ((uint64_t)(limit >> 16) << 48) |
		     (((base >> 24) & 0xff) << 56);
	pc->gdt[6] = base >> 32;
	for (int v = 0; v < 32; v++)
		set_gate(&pc->idt[v], exc_stubs[v], 0);
	set_gate(&pc->idt[13], (uintptr_t)isr_gp, 0);
	set_gate(&pc->idt[VEC_TIMER], (uintptr_t)isr_timer, 0);
	set_gate(&pc->idt[VEC_SPURIOUS], (uintptr_t)isr_spurious, 0);
	load_gdt_tss(&gdtr);
	__asm__ volatile("lidt %0" : : "m"(idtr));
}

static void cpu_setup(uint32_t i)
{
	struct cpu_local *cl = (struct cpu_local *)kstacks[i];

	cl->index = i;
	cpu_locals[i] = cl;
	cpu_tables_load(i);
}

static void cpu_timer_setup(uint32_t i)
{
	cpu_locals[i]->apic_id = lapic_read(LAPIC_ID) >> 24;
	lapic_enable();
	lapic_timer_start();
}

static void go_user(uint32_t i) __attribute__((noreturn));
static void go_user(uint32_t i)
{
	__atomic_add_fetch(&g.cpus_up, 1, __ATOMIC_SEQ_CST);
	if (g.opt.vcpus && i >= g.opt.vcpus)
		idle_forever();
	/* As if called: RSP = 8 mod 16 at function entry. */
	enter_user(user_main, i, (uintptr_t)ustacks[i] + USTACK_SIZE - 8);
}

/* ---- SMP: MP table, INIT/SIPI ---- */

static bool checksum_ok(const uint8_t *p, uint32_t len)
{
	uint8_t s = 0;

	while (len--)
		s += *p++;
	return s == 0;
}

static const uint8_t *mp_scan(uint64_t base, uint64_t len)
{
	for (uint64_t a = base; a + 16 <= base + len; a += 16) {
		const uint8_t *p = (const uint8_t *)(uintptr_t)a;

		if (*(const uint32_t *)p == 0x5f504d5f && /* "_MP_" */
		    checksum_ok(p, 16))
			return p;
	}
	return NULL;
}

/* BIOS data area words; the asm hides the constant address from gcc's
 * array-bounds analysis. */
static uint16_t bda_read16(uintptr_t addr)
{
	__asm__("" : "+r"(addr));
	return *(volatile uint16_t *)addr;
}

static const uint8_t *mp_find(void)
{
	uint64_t ebda = (uint64_t)bda_read16(0x40e) << 4;
	uint64_t basemem = (uint64_t)bda_read16(0x413) << 10;
	const uint8_t *p = NULL;

	if (ebda >= 0x80000 && ebda < 0xa0000)
		p = mp_scan(ebda, 1024);
	if (!p && basemem >= 0x80000 && basemem <= 0xa0000)
		p = mp_scan(basemem - 1024, 1024);
	if (!p)
		p = mp_scan(0x9fc00, 1024);
	if (!p)
		p = mp_scan(0xf0000, 0x10000);
	return p;
}

static void add_cpu(uint32_t apic_id, uint32_t *ids, uint32_t *n)
{
	if (apic_id != ids[0] && *n < MAX_CPUS)
		ids[(*n)++] = apic_id;
}

static const uint8_t *acpi_scan(uint64_t base, uint64_t len)
{
	for (uint64_t a = base; a + 20 <= base + len; a += 16) {
		const uint8_t *p = (const uint8_t *)(uintptr_t)a;

		if (*(const uint64_t *)p == 0x2052545020445352ULL && /* RSD PTR */
		    checksum_ok(p, 20))
			return p;
	}
	return NULL;
}

/* ACPI MADT: QEMU's own list of CPUs. SeaBIOS's MP table lists only the
 * CPUs that answered its SIPI in time, which under emulated CPL0 may be
 * the BSP alone. */
static uint32_t madt_cpus(uint32_t *ids)
{
	uint64_t ebda = (uint64_t)bda_read16(0x40e) << 4;
	const uint8_t *rsdp = NULL, *rsdt, *madt = NULL, *e, *end;
	uint32_t n = 1;

	if (ebda >= 0x80000 && ebda < 0xa0000)
		rsdp = acpi_scan(ebda, 1024);
	if (!rsdp)
		rsdp = acpi_scan(0xe0000, 0x20000);
	if (!rsdp)
		return 0;
	rsdt = (const uint8_t *)(uintptr_t)*(const uint32_t *)(rsdp + 16);
	if (!rsdt || *(const uint32_t *)rsdt != 0x54445352) /* "RSDT" */
		return 0;
	for (uint32_t off = 36; off + 4 <= *(const uint32_t *)(rsdt + 4);
	     off += 4) {
		const uint8_t *t = (const uint8_t *)(uintptr_t)
			*(const uint32_t *)(rsdt + off);

		if (t && *(const uint32_t *)t == 0x43495041) { /* "APIC" */
			madt = t;
			break;
		}
	}
	if (!madt)
		return 0;
	end = madt + *(const uint32_t *)(madt + 4);
	for (e = madt + 44; e + 2 <= end && e[1] >= 2; e += e[1]) {
		if (e[0] == 0 && (e[4] & 1)) /* enabled local APIC */
			add_cpu(e[3], ids, &n);
	}
	return n;
}

/* CPUs in MP-table (or MADT) order, the BSP first. */
static void find_cpus(void)
{
	const uint8_t *fp = mp_find(), *cfg, *e;
	uint32_t bsp = lapic_read(LAPIC_ID) >> 24;
	uint32_t madt_ids[MAX_CPUS] = { bsp }, nmadt = madt_cpus(madt_ids);
	uint16_t count;

	g.apic_ids[0] = bsp;
	g.ncpus = 1;
	if (fp)
		g.mp_addr = (uintptr_t)fp;
	if (nmadt > 1) {
		memcpy(g.apic_ids, madt_ids, nmadt * sizeof(madt_ids[0]));
		g.ncpus = nmadt;
		g.cpus_from_madt = true;
		return;
	}
	if (!fp)
		return;
	cfg = (const uint8_t *)(uintptr_t)*(const uint32_t *)(fp + 4);
	if (!cfg || *(const uint32_t *)cfg != 0x504d4350 || /* "PCMP" */
	    !checksum_ok(cfg, *(const uint16_t *)(cfg + 4)))
		return;
	count = *(const uint16_t *)(cfg + 34);
	e = cfg + 44;
	for (uint16_t i = 0; i < count; i++) {
		if (e[0] != 0) { /* not a processor: 8 bytes */
			e += 8;
			continue;
		}
		if (e[3] & 1)
			add_cpu(e[1], g.apic_ids, &g.ncpus);
		e += 20;
	}
}

static void send_ipi(uint32_t apic_id, uint32_t icr)
{
	lapic_write(LAPIC_ICR_HI, apic_id << 24);
	lapic_write(LAPIC_ICR_LO, icr);
	for (int i = 0; i < 1000 && (lapic_read(LAPIC_ICR_LO) & ICR_BUSY); i++)
		cpu_relax();
}

static bool wait_cpus_up(uint32_t n, uint64_t us)
{
	uint64_t end = rdtsc() + us * g.tsc_khz / 1000;

	while (g.cpus_up < n) {
		if (rdtsc() > end)
			return false;
		cpu_relax();
	}
	return true;
}

static void start_aps(void)
{
	memcpy((void *)TRAMPOLINE_ADDR, trampoline_start,
	       (size_t)(trampoline_end - trampoline_start));
	for (uint32_t i = 1; i < g.ncpus; i++) {
		uint32_t up = g.cpus_up;

		ap_boot_index = i;
		ap_boot_rsp = (uintptr_t)kstacks[i] + KSTACK_SIZE;
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		send_ipi(g.apic_ids[i], ICR_INIT);
		delay_us(10000);
		send_ipi(g.apic_ids[i], ICR_SIPI | SIPI_VECTOR);
		if (wait_cpus_up(up + 1, 200000))
			continue;
		send_ipi(g.apic_ids[i], ICR_SIPI | SIPI_VECTOR);
		if (!wait_cpus_up(up + 1, 2000000)) {
			gprintf_nolock("guest: cpu %u (apic %u) did not start",
				       i, g.apic_ids[i]);
			g.ncpus = i; /* keep indexes dense */
			break;
		}
	}
}

/* ---- entry points ---- */

void exception_report(const uint64_t *f)
{
	const struct cpu_local *cl =
		(const struct cpu_local *)((uintptr_t)f & ~(KSTACK_SIZE - 1ULL));
	uint64_t cr2;

	__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
	gprintf_nolock("\nguest: EXCEPTION vector=%lu rip=0x%lx err=0x%lx "
		       "cs=0x%lx rsp=0x%lx cr2=0x%lx cpu=%u",
		       f[0], f[2], f[1], f[3], f[5], cr2, cl->index);
}

void kernel_main(void)
{
	const struct mb_info *mbi = (const struct mb_info *)(uintptr_t)boot_info;
	struct region r[MAX_REGIONS];
	int nr;

	serial_init();
	cpu_setup(0); /* exceptions are reported from here on */
	if (boot_magic != MB_BOOTLOADER_MAGIC)
		fatal("not started by a multiboot loader (EAX)");
	g.boot_tsc = boot_tsc;
	g.opt = (struct options){ .mem_mib = 64, .rate_mib = 64,
				  .pattern = PAT_RANDOM, .sweep_s = 5 };
	if (mbi->flags & MB_INFO_CMDLINE) {
		const char *c = (const char *)(uintptr_t)mbi->cmdline;
		size_t n = 0;

		while (c[n] && n < sizeof(g.cmdline) - 1) {
			g.cmdline[n] = c[n];
			n++;
		}
		g.cmdline[n] = 0;
	}
	parse_cmdline(g.cmdline, &g.opt);
	nr = read_memory_map(mbi, r);
	if (!nr)
		fatal("no memory map from the boot loader");
	build_page_tables(r, nr);
	plan_working_set(r, nr);
	if (!g.ws_pages)
		fatal("no RAM for the working set");

	outb(0x21, 0xff); /* mask the legacy PIC: the LAPIC timer is ours */
	outb(0xa1, 0xff);
	calibrate_tsc();
	lapic_enable();
	calibrate_lapic_timer();
	find_cpus();
	cpu_timer_setup(0);
	start_aps();
	g.workers = g.opt.vcpus && g.opt.vcpus < g.ncpus ? g.opt.vcpus
							  : g.ncpus;
	g.go = 1;
	go_user(0);
}

void ap_main(uint32_t index)
{
	cpu_setup(index);
	cpu_timer_setup(index);
	go_user(index);
}
