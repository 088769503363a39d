// SPDX-License-Identifier: MIT
/*
 * The workload, at CPL3 (native speed on this platform). Each workload vCPU
 * owns a contiguous slice of the working set, dirties it at a TSC-paced
 * rate, verifies it against the per-page generation table, sends a one-byte
 * heartbeat every 1 ms and a status line every second. vCPU 0 also polls
 * the console for 'q' and watches runtime=, then powers the VM off.
 *
 * Page content for page p at generation n: qword i = mix(p, n, i), so
 * qword 0 is (p << 32 | n). small-writes only rewrites qword 0; the rest
 * keeps the first fill (generation 1). That default (fill=mix) looks
 * random byte by byte but is not to a compressor: qword i differs from
 * qword i of any other page only in the bytes of (p << 32 | n), so zstd
 * finds 4-byte matches one page back (about 6x). fill=noise scrambles
 * every qword but 0 (incompressible); fill=sparse scrambles one qword in
 * SPARSE_STRIDE and puts a fixed filler that depends on i only between
 * them (about 6x with zlib, 7-8x with zstd, 5x with lz4). Every fill is
 * checked byte for byte, and qword 0 is always (p << 32 | n).
 */
#include "guest.h"

#define FIRST_GEN	  1
#define BATCH		  32	/* pages per loop step, keeps heartbeats on time */
#define CORRUPT_LINES_MAX 16	/* per vCPU per second; the count is exact */
#define POWEROFF_VALUE	  0x2000
#define SPARSE_STRIDE	  8	/* fill=sparse: one stamped qword in 8 */

struct wl {
	uint32_t cpu;
	uint64_t first, pages;	/* slice of the working set */
	uint64_t hot_pages;
	uint64_t rng;
	uint64_t hz;		/* TSC Hz */

	uint64_t start, last_now, next_hb, next_status, next_poll;
	uint64_t write_credit, sweep_credit;
	uint64_t seq, sweep_pos;

	uint64_t writes, verified, sweeps, hb, corrupt;
	uint64_t iv_writes, iv_start, iv_corrupt_lines, maxgap;
	bool stopping;
	bool injected;
};

static uint64_t mix(uint64_t p, uint32_t gen, uint64_t i)
{
	return ((p << 32) | gen) ^ (i * 0x9e3779b97f4a7c15ULL);
}

static uint64_t rng_next(struct wl *w)
{
	uint64_t x = w->rng;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	w->rng = x;
	return x * 0x2545f4914f6cdd1dULL;
}

static uint64_t rng_below(struct wl *w, uint64_t n)
{
	return (uint64_t)(((unsigned __int128)rng_next(w) * n) >> 64);
}

static volatile uint64_t *page_addr(uint64_t p)
{
	for (uint32_t i = 0; i < g.next; i++) {
		if (p < g.ext[i].pages)
			return (volatile uint64_t *)(uintptr_t)(g.ext[i].base +
								p * PAGE_SIZE);
		p -= g.ext[i].pages;
	}
	return NULL;
}

/* splitmix64's finalizer: scrambled qwords share nothing a compressor
 * can find with the same qword of other pages. */
static uint64_t scramble(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* fill=sparse between the stamps: runs of one byte value, the same in
 * every page (a compressor finds them within the page and across pages). */
static uint64_t sparse_filler(uint64_t i)
{
	return 0x0101010101010101ULL * (0x20 + (i / SPARSE_STRIDE) % 64);
}

/* Qword i of page p at generation gen; qword 0 is always mix(p, gen, 0),
 * the stamp a CORRUPT line reports. */
static uint64_t page_word(enum fill fill, uint64_t p, uint32_t gen,
			  uint64_t i)
{
	if (fill == FILL_MIX || !i)
		return mix(p, gen, i);
	if (fill == FILL_SPARSE && i % SPARSE_STRIDE)
		return sparse_filler(i);
	return scramble(mix(p, gen, i));
}

static void fill_page(uint64_t p, uint32_t gen)
{
	volatile uint64_t *q = page_addr(p);
	const enum fill fill = g.opt.fill;

	for (uint64_t i = 0; i < PAGE_SIZE / 8; i++)
		q[i] = page_word(fill, p, gen, i);
}

static void write_page(uint64_t p)
{
	uint32_t gen = g.gens[p] + 1;

	if (gen < FIRST_GEN + 1)
		gen = FIRST_GEN + 1; /* wrapped */
	if (g.opt.pattern == PAT_SMALL)
		page_addr(p)[0] = mix(p, gen, 0);
	else
		fill_page(p, gen);
	g.gens[p] = gen;
}

/* Put page p back to a consistent state after reporting it. */
static void restore_page(uint64_t p)
{
	uint32_t gen = g.gens[p];

	fill_page(p, g.opt.pattern == PAT_SMALL ? FIRST_GEN : gen);
	page_addr(p)[0] = mix(p, gen, 0);
}

static void report_corrupt(struct wl *w, uint64_t p, uint32_t gen,
			   uint64_t word, uint64_t value)
{
	uint64_t stamp = page_addr(p)[0];

	w->corrupt++;
	if (w->iv_corrupt_lines++ >= CORRUPT_LINES_MAX)
		return;
	gprintf("CORRUPT vcpu=%u page=%lu expected=%u found=%u word=%lu "
		"value=0x%lx stamp_page=%lu addr=0x%lx",
		w->cpu, p, gen, (uint32_t)stamp, word, value, stamp >> 32,
		(uint64_t)(uintptr_t)page_addr(p));
}

static bool verify_page(struct wl *w, uint64_t p)
{
	volatile uint64_t *q = page_addr(p);
	uint32_t gen = g.gens[p];
	uint32_t rest = g.opt.pattern == PAT_SMALL ? FIRST_GEN : gen;
	const enum fill fill = g.opt.fill;

	w->verified++;
	if (q[0] != mix(p, gen, 0)) {
		report_corrupt(w, p, gen, 0, q[0]);
		restore_page(p);
		return false;
	}
	for (uint64_t i = 1; i < PAGE_SIZE / 8; i++) {
		if (q[i] != page_word(fill, p, rest, i)) {
			report_corrupt(w, p, gen, i, q[i]);
			restore_page(p);
			return false;
		}
	}
	return true;
}

static uint64_t pick_page(struct wl *w)
{
	switch (g.opt.pattern) {
	case PAT_SEQUENTIAL:
		if (w->seq >= w->pages)
			w->seq = 0;
		return w->first + w->seq++;
	case PAT_HOT_COLD: /* 90% of writes to the first eighth */
		if (rng_below(w, 10) < 9)
			return w->first + rng_below(w, w->hot_pages);
		return w->first + rng_below(w, w->pages);
	case PAT_RANDOM:
	case PAT_SMALL:
		break;
	}
	return w->first + rng_below(w, w->pages);
}

static void heartbeat(struct wl *w, uint64_t now)
{
	uint64_t period = w->hz / 1000;

	print_lock();
	outb(COM1, HEARTBEAT_BYTE);
	print_unlock();
	w->hb++;
	w->next_hb += period;
	if (w->next_hb <= now) /* no catch-up burst after a pause */
		w->next_hb = now + period;
}

static void status(struct wl *w, uint64_t now)
{
	uint64_t dt = now - w->iv_start;
	uint64_t tenths = dt ? w->iv_writes * 10 * w->hz / (256 * dt) : 0;

	gprintf("guest: vcpu=%u t=%lu passes=%lu rate=%lu.%luMiB/s "
		"writes=%lu verified=%lu sweeps=%lu ticks=%lu hb=%lu "
		"maxgap_us=%lu corrupt=%lu",
		w->cpu, (now - w->start) / w->hz, w->writes / w->pages,
		tenths / 10, tenths % 10, w->writes, w->verified, w->sweeps,
		cpu_locals[w->cpu]->ticks, w->hb, w->maxgap * 1000000 / w->hz,
		w->corrupt);
	w->iv_writes = 0;
	w->iv_start = now;
	w->iv_corrupt_lines = 0;
	w->maxgap = 0;
	w->next_status += w->hz;
	if (w->next_status <= now)
		w->next_status = now + w->hz;
}

static void request_stop(const char *why)
{
	if (__atomic_exchange_n(&g.stop, 1, __ATOMIC_SEQ_CST))
		return;
	gprintf("guest: stopping: %s", why);
}

/* vCPU 0, every 10 ms: a 'q' on the console or the end of runtime=. */
static void poll_stop(struct wl *w, uint64_t now)
{
	w->next_poll = now + w->hz / 100;
	if ((inb(COM1 + 5) & 1) && inb(COM1) == 'q')
		request_stop("'q' on the console");
	if (g.opt.runtime_s && now - w->start >= g.opt.runtime_s * w->hz)
		request_stop("runtime elapsed");
}

/* Heartbeat, status and stop polling; called between small steps. */
static void tick(struct wl *w)
{
	uint64_t now = rdtsc();

	if (now - w->last_now > w->maxgap)
		w->maxgap = now - w->last_now;
	w->last_now = now;
	if (g.stop) {
		w->stopping = true;
		return;
	}
	if (now >= w->next_hb)
		heartbeat(w, now);
	if (now >= w->next_status) {
		if (g.opt.inject && w->cpu == 0 && now - w->start >= w->hz &&
		    !w->injected) {
			/* Self-test (inject=1): break one page behind the
			 * generation table's back; verification must see it. */
			page_addr(w->first)[7] ^= 1;
			w->injected = true;
		}
		status(w, now);
	}
	if (w->cpu == 0 && now >= w->next_poll)
		poll_stop(w, now);
}

/* Credits are in page * TSC-cycle units, so the pace is exact over time;
 * at most 10 ms of backlog is kept (a paused guest does not burst). */
static uint64_t take_credit(uint64_t *credit, uint64_t dt, uint64_t per_s,
			    uint64_t cost, uint64_t max_pages)
{
	uint64_t n, cap = per_s * cost / 100 + cost * BATCH;

	*credit += dt * per_s;
	if (*credit > cap)
		*credit = cap;
	n = *credit / cost;
	if (n > max_pages)
		n = max_pages;
	*credit -= n * cost;
	return n;
}

/* Returns whether the step did all it was owed (then the vCPU may halt
 * until its next tick). */
static bool step(struct wl *w, uint64_t dt)
{
	uint64_t total_pps = g.opt.rate_mib * 256;
	uint64_t sweep_pps = w->pages / g.opt.sweep_s + 1;
	uint64_t n, sweep_n;

	n = take_credit(&w->write_credit, dt, total_pps, w->hz * g.workers,
			BATCH);
	for (uint64_t i = 0; i < n; i++) {
		write_page(pick_page(w));
		verify_page(w, w->first + rng_below(w, w->pages));
	}
	w->writes += n;
	w->iv_writes += n;

	sweep_n = take_credit(&w->sweep_credit, dt, sweep_pps, w->hz, BATCH);
	for (uint64_t i = 0; i < sweep_n; i++) {
		verify_page(w, w->first + w->sweep_pos);
		if (++w->sweep_pos == w->pages) {
			w->sweep_pos = 0;
			w->sweeps++;
		}
	}
	return n < BATCH && sweep_n < BATCH;
}

static void first_fill(struct wl *w)
{
	for (uint64_t i = 0; i < w->pages; i++) {
		fill_page(w->first + i, FIRST_GEN);
		g.gens[w->first + i] = FIRST_GEN;
		if (!(i % BATCH))
			tick(w);
	}
}

static void final_check(struct wl *w)
{
	uint64_t bad = w->corrupt;

	for (uint64_t i = 0; i < w->pages; i++)
		verify_page(w, w->first + i);
	__atomic_add_fetch(&g.final_pages, w->pages, __ATOMIC_SEQ_CST);
	__atomic_add_fetch(&g.final_corrupt, w->corrupt - bad,
			   __ATOMIC_SEQ_CST);
	__atomic_add_fetch(&g.stopped, 1, __ATOMIC_SEQ_CST);
}

static void power_off(struct wl *w)
{
	uint64_t end = rdtsc() + 10 * w->hz;

	while (g.stopped < g.workers && rdtsc() < end)
		cpu_relax();
	gprintf("guest: final check: %lu pages verified by %u of %u vcpus, "
		"%lu corrupt",
		g.final_pages, g.stopped, g.workers, g.final_corrupt);
	gprintf("guest: power off");
	outw(0x604, POWEROFF_VALUE);
	outw(0xb004, POWEROFF_VALUE);
	/* The VMM may take a moment to stop the vCPUs. */
	end = rdtsc() + w->hz;
	while (rdtsc() < end)
		cpu_relax();
	gprintf("guest: still running 1 s after the power-off ports");
}

/* Done: wait for the power-off at CPL3 (no way down to CPL0 under PVM). */
static void park(void) __attribute__((noreturn));
static void park(void)
{
	for (;;)
		cpu_relax();
}

/* Timer-interrupt cost as seen from CPL3: the gaps in a tight TSC loop
 * during which this vCPU's tick count moved (interrupt entry, the CPL0
 * handler and IRETQ, all emulated here). */
static void measure_irq_cost(uint64_t hz)
{
	volatile uint64_t *ticks = &cpu_locals[0]->ticks;
	uint64_t start = rdtsc(), prev = start, t_prev = *ticks;
	uint64_t stolen = 0, n = 0, min = ~0ULL, prev_gap = 0;

	while (prev - start < hz / 5) {
		uint64_t t = *ticks, now = rdtsc(), gap = now - prev;

		/* The tick may land between the two reads: then the gap
		 * showed in the previous step. */
		if (t != t_prev) {
			if (prev_gap > gap)
				gap = prev_gap;
			stolen += gap;
			n++;
			if (gap < min)
				min = gap;
		}
		prev_gap = now - prev;
		t_prev = t;
		prev = now;
	}
	gprintf("guest: timer interrupt at CPL0 costs %lu us on average, "
		"%lu us at best (%lu ticks in 200 ms)",
		n ? stolen * 1000000 / hz / n : 0,
		n ? min * 1000000 / hz : 0, n);
}

static void banner(uint64_t hz)
{
	uint64_t now = rdtsc();

	gprintf("guest: kvmig guest booted, command line \"%s\"", g.cmdline);
	gprintf("guest: tsc %lu kHz (pit %lu kHz, cpuid %lu kHz), lapic "
		"timer %s Hz (%u ticks/10 ms), idle %s",
		g.tsc_khz, g.tsc_khz_pit, g.tsc_khz_cpuid,
		g.opt.idle_spin ? "100" : "1000", g.lapic_ticks_10ms,
		g.opt.idle_spin ? "spins" : "halts until the next tick");
	gprintf("guest: cpus %u (%s, mp table at 0x%lx), workload vcpus %u, "
		"ram %lu MiB",
		g.ncpus,
		g.cpus_from_madt ? "from the acpi madt" : "from the mp table",
		g.mp_addr,
		g.workers, g.ram_bytes >> 20);
	gprintf("guest: working set %lu MiB (%lu pages) at 0x%lx, pattern %s, "
		"fill %s, rate %lu MiB/s, seed %lu, sweep %u s, runtime %lu s",
		g.ws_pages >> 8, g.ws_pages, g.ext[0].base,
		pattern_name(g.opt.pattern), fill_name(g.opt.fill),
		g.opt.rate_mib, g.opt.seed, g.opt.sweep_s, g.opt.runtime_s);
	if (g.ws_pages < g.opt.mem_mib * 256)
		gprintf("guest: WARNING: mem=%lu MiB does not fit, using %lu",
			g.opt.mem_mib, g.ws_pages >> 8);
	gprintf("guest: cpl0 boot took %lu ms (entry to cpu 0 at CPL3)",
		(now - g.boot_tsc) / (hz / 1000));
	measure_irq_cost(hz);
}

static void wl_init(struct wl *w, uint32_t cpu)
{
	uint64_t per = g.ws_pages / g.workers;

	memset(w, 0, sizeof(*w));
	w->cpu = cpu;
	w->hz = g.tsc_khz * 1000;
	w->first = per * cpu;
	w->pages = cpu == g.workers - 1 ? g.ws_pages - w->first : per;
	if (!w->pages) /* more vCPUs than pages */
		w->pages = 1, w->first = 0;
	w->hot_pages = w->pages / 8 ? w->pages / 8 : 1;
	w->rng = (g.opt.seed + 1) * 0x9e3779b97f4a7c15ULL ^ (cpu + 1);
	if (!w->rng)
		w->rng = 1;
	w->start = w->last_now = w->iv_start = rdtsc();
	w->next_hb = w->start;
	w->next_status = w->start + w->hz;
	w->next_poll = w->start;
}

void user_main(uint64_t cpu)
{
	struct wl w;

	while (!g.go)
		cpu_relax();
	if (cpu >= g.workers)
		park();
	if (cpu == 0)
		banner(g.tsc_khz * 1000);
	wl_init(&w, (uint32_t)cpu);
	first_fill(&w);
	if (__atomic_add_fetch(&g.running, 1, __ATOMIC_SEQ_CST) == g.workers)
		gprintf("guest: workload started (%u vcpus, %lu ms after entry)",
			g.workers, (rdtsc() - g.boot_tsc) / (w.hz / 1000));
	while (!w.stopping) {
		uint64_t prev = w.last_now;

		tick(&w);
		if (step(&w, w.last_now - prev) && !g.opt.idle_spin &&
		    !w.stopping)
			halt_until_tick();
	}
	final_check(&w);
	if (cpu == 0)
		power_off(&w);
	park();
}
