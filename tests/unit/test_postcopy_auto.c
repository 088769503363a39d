/* SPDX-License-Identifier: MIT */
/*
 * x-postcopy-auto's rule, fed pass sequences taken from real precopy runs
 * (kvmig's "pass N ended" lines, KVMIG_LOG=debug, bench/compare with
 * bench/compare/postcopy.py's pass_log): runs that converged must never
 * switch, runs that could not must switch within a few passes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "base/units.h"
#include "migration/postcopy/postcopy_auto.h"

/* One pass as logged: duration, pages sent, the pass's rate (MiB/s, wire
 * bytes), pages left dirty. */
struct pass {
	double ms;
	uint64_t pages;
	double mibs;
	uint64_t dirty_pages;
};

struct run {
	const char *what;
	const struct pass *passes;
	size_t n;
	double link_mibs;  /* the link's measured rate; 0 unknown */
	double limit_mibs; /* max-bandwidth; 0 none */
	uint64_t downtime_ms;
	const unsigned *throttle; /* per pass, or NULL */
};

static struct kv_pc_auto_sample sample_of(const struct run *r, size_t i)
{
	const struct pass *p = &r->passes[i];
	struct kv_pc_auto_sample s = {0};
	double wire = p->mibs * KV_MiB_F * p->ms / 1000.0;

	s.dirty_bytes = p->dirty_pages * 4096;
	s.sent_bytes = (uint64_t)wire;
	/* Pages per wire byte: compression (x-compress) sends fewer bytes
	 * than pages. */
	s.wire_factor = wire > 0 ? (double)p->pages * 4096 / wire : 1.0;
	s.pass_ns = (int64_t)(p->ms * 1e6);
	s.link_bps = r->link_mibs * KV_MiB_F;
	s.rate_limit_bps = (uint64_t)(r->limit_mibs * KV_MiB_F);
	s.downtime_limit_ms = r->downtime_ms;
	s.throttle_pct = r->throttle ? r->throttle[i] : 0;
	return s;
}

/* The pass (1-based) after which the rule fired, 0 if it never did;
 * its reason in REASON (or the last pass's reason to wait). */
static size_t fired_after(const struct run *r, char *reason, size_t len)
{
	struct kv_pc_auto a;
	char why[512] = "";
	size_t i;

	kv_pc_auto_init(&a);
	for (i = 0; i < r->n; i++) {
		struct kv_pc_auto_sample s = sample_of(r, i);

		if (kv_pc_auto_note_pass(&a, &s, why, sizeof(why)) ==
		    KV_PC_AUTO_SWITCH) {
			snprintf(reason, len, "%s", why);
			return i + 1;
		}
	}
	snprintf(reason, len, "%s", why);
	return 0;
}

/* Rates measured on the links of those runs (bench/compare/netlink.py:
 * one TCP stream for 2 s through tc tbf 1gbit). */
#define LINK_1G	   89.4	 /* 0.75 Gbit/s */
#define LINK_1G_AC 106.1 /* 0.89 Gbit/s, the auto-converge run */
#define CAP	   32.0	 /* max-bandwidth 32 MiB/s */
#define DOWNTIME   300	 /* ms: both VMMs' default, the benchmarks' */

#define RUN(name, what_, link, limit)                                          \
	static const struct run name = {                                       \
	    what_, name##_passes, sizeof(name##_passes) / sizeof(struct pass), \
	    link,  limit,	  DOWNTIME,                                    \
	    NULL}

/* loopback, 1G guest at 64 MiB/s: converged in 982 ms, 6 passes logged, load 8.
 */
static const struct pass lo_1g_64_passes[] = {
    {895.1, 262144, 74.0, 2966}, {45.9, 2966, 253.0, 1343},
    {20.7, 1343, 254.0, 879},	 {5.7, 879, 606.0, 266},
    {2.1, 266, 505.0, 127},	 {2.1, 127, 237.0, 63},
};
/* loopback, 1G guest at 256 MiB/s: converged in 5290 ms, 7 passes logged,
 * load 8. */
static const struct pass lo_1g_256_passes[] = {
    {3366.5, 262144, 75.0, 27857}, {935.7, 27857, 117.0, 28610},
    {675.7, 28610, 166.0, 5105},   {153.5, 5105, 130.0, 2131},
    {59.3, 2131, 141.0, 1061},	   {73.4, 1061, 57.0, 356},
    {10.6, 356, 132.0, 0},
};
/* loopback, 1G guest at 1024 MiB/s: converged in 14006 ms, 9 passes logged,
 * load 9. */
static const struct pass lo_1g_1024_passes[] = {
    {11657.1, 262144, 86.0, 116339}, {1374.6, 116339, 331.0, 71133},
    {606.4, 71133, 459.0, 42323},    {215.4, 42323, 769.0, 9421},
    {70.0, 9421, 527.0, 6643},	     {33.6, 6643, 774.0, 2032},
    {16.2, 2032, 492.0, 693},	     {11.2, 693, 241.0, 448},
    {4.1, 448, 431.0, 406},
};
/* loopback, 4G guest at 64 MiB/s: converged in 1960 ms, 4 passes logged,
 * load 10. */
static const struct pass lo_4g_64_passes[] = {
    {1210.1, 1048576, 60.0, 14656},
    {263.8, 14656, 217.0, 2821},
    {57.8, 2821, 191.0, 1018},
    {376.1, 1018, 11.0, 123},
};
/* loopback, 4G guest at 256 MiB/s: converged in 1258 ms, 2 passes logged,
 * load 9. */
static const struct pass lo_4g_256_passes[] = {
    {759.6, 1048576, 349.0, 21807},
    {424.5, 21807, 188.0, 12040},
};
/* loopback, 4G guest at 1024 MiB/s: converged in 28494 ms, 9 passes logged,
 * load 13. */
static const struct pass lo_4g_1024_passes[] = {
    {13551.5, 1048576, 74.0, 150490}, {7338.2, 150490, 80.0, 60074},
    {2560.4, 60074, 91.0, 54669},     {1893.0, 54669, 113.0, 40116},
    {478.8, 40116, 328.0, 5186},      {550.5, 5186, 37.0, 6304},
    {1094.9, 6304, 23.0, 10460},      {696.3, 10460, 55.0, 9113},
    {322.0, 9113, 111.0, 6453},
};
/* 1g, 1G guest at 64 MiB/s: converged in 2074 ms, 6 passes logged, load 13. */
static const struct pass gbit_1g_64_passes[] = {
    {934.7, 262144, 67.0, 7703}, {829.2, 7703, 36.0, 4340},
    {200.7, 4340, 59.0, 2137},	 {79.2, 2137, 103.0, 446},
    {13.2, 446, 132.0, 261},	 {11.9, 261, 86.0, 640},
};
/* 1g, 1G guest at 256 MiB/s: converged in 20203 ms, 12 passes logged, load 14.
 */
static const struct pass gbit_1g_256_passes[] = {
    {9712.2, 262144, 26.0, 40053}, {1526.9, 40053, 101.0, 40613},
    {1501.4, 40613, 95.0, 28478},  {1212.0, 28478, 85.0, 24318},
    {849.5, 24318, 112.0, 25402},  {908.8, 25402, 106.0, 28033},
    {962.4, 28033, 114.0, 28508},  {1110.5, 28508, 90.0, 29617},
    {1273.1, 29617, 81.0, 17853},  {670.6, 17853, 104.0, 8957},
    {321.2, 8957, 109.0, 3678},	   {153.3, 3678, 94.0, 3576},
};
/* 1g, 1G guest at 1024 MiB/s: no convergence in 30 s, 3 passes logged, load 13.
 */
static const struct pass gbit_1g_1024_passes[] = {
    {14978.1, 262144, 66.0, 159238},
    {6041.5, 159238, 100.0, 194553},
    {7518.0, 194553, 77.0, 181961},
};
/* 1g, 4G guest at 64 MiB/s: converged in 495 ms, 2 passes logged, load 13. */
static const struct pass gbit_4g_64_passes[] = {
    {345.4, 1048576, 92.0, 5905},
    {106.2, 5905, 94.0, 2456},
};
/* 1g, 4G guest at 256 MiB/s: converged in 16073 ms, 15 passes logged, load 14.
 */
static const struct pass gbit_4g_256_passes[] = {
    {3644.6, 1048576, 69.0, 48428}, {2942.8, 48428, 62.0, 29568},
    {1229.9, 29568, 94.0, 27225},   {935.3, 27225, 114.0, 28193},
    {962.3, 28193, 99.0, 27025},    {772.3, 27025, 57.0, 15118},
    {670.6, 15118, 63.0, 19507},    {695.4, 19507, 110.0, 26300},
    {1131.7, 26300, 88.0, 29389},   {994.1, 29389, 108.0, 22444},
    {764.4, 22444, 110.0, 13968},   {475.8, 13968, 67.0, 11871},
    {426.2, 11871, 109.0, 4619},    {260.1, 4619, 63.0, 3298},
    {157.8, 3298, 82.0, 2872},
};
/* 1g, 4G guest at 1024 MiB/s: no convergence in 30 s, 2 passes logged, load 14.
 */
static const struct pass gbit_4g_1024_passes[] = {
    {11292.2, 1048576, 87.0, 232403},
    {10609.1, 232403, 80.0, 178143},
};
/* loopback, 1G guest at 16 MiB/s, max-bandwidth 32 MiB/s: converged in 1585 ms,
 * 5 passes logged, load 13. */
static const struct pass cap_1g_16_passes[] = {
    {1355.5, 262144, 24.0, 4187}, {119.0, 4187, 27.0, 1109},
    {45.1, 1109, 30.0, 442},	  {25.5, 442, 31.0, 170},
    {11.2, 170, 35.0, 209},
};
/* loopback, 1G guest at 64 MiB/s, max-bandwidth 32 MiB/s: converged in 2025 ms,
 * 3 passes logged, load 13. */
static const struct pass cap_1g_64_passes[] = {
    {1274.9, 262144, 19.0, 10418},
    {298.0, 10418, 28.0, 4445},
    {152.7, 4445, 30.0, 2551},
};
/* 1g, 1G guest at 1024 MiB/s, auto-converge (throttle up to 70 %): converged in
 * 75512 ms, 23 passes logged, load 12. */
static const struct pass gbit_1g_1024_ac_passes[] = {
    {12494.0, 262144, 75.0, 243150}, {9474.0, 243150, 86.0, 206545},
    {8247.1, 206545, 84.0, 174062},  {5966.4, 174062, 76.0, 148284},
    {7264.6, 148284, 67.0, 154537},  {5870.6, 154537, 97.0, 154017},
    {6125.1, 154017, 95.0, 98783},   {3749.4, 98783, 96.0, 91556},
    {4464.1, 91556, 70.0, 48162},    {3018.0, 48162, 57.0, 19012},
    {774.3, 19012, 93.0, 35269},     {941.1, 35269, 100.0, 16367},
    {511.8, 16367, 99.0, 6955},	     {221.1, 6955, 109.0, 14230},
    {488.1, 14230, 114.0, 26724},    {999.8, 26724, 105.0, 52959},
    {2752.3, 52959, 58.0, 36885},    {938.2, 36885, 108.0, 27658},
    {726.9, 27658, 109.0, 10165},    {319.4, 10165, 110.0, 3037},
    {94.1, 3037, 111.0, 1659},	     {47.9, 1659, 114.0, 814},
    {22.5, 814, 115.0, 859},
};

RUN(lo_1g_64, "loopback 1G 64", 0, 0);
RUN(lo_1g_256, "loopback 1G 256", 0, 0);
RUN(lo_1g_1024, "loopback 1G 1024", 0, 0);
RUN(lo_4g_64, "loopback 4G 64", 0, 0);
RUN(lo_4g_256, "loopback 4G 256", 0, 0);
RUN(lo_4g_1024, "loopback 4G 1024", 0, 0);
RUN(gbit_1g_64, "1 Gbit/s 1G 64", LINK_1G, 0);
RUN(gbit_4g_64, "1 Gbit/s 4G 64", LINK_1G, 0);
RUN(cap_1g_16, "32 MiB/s cap 1G 16", 0, CAP);
RUN(cap_1g_64, "32 MiB/s cap 1G 64", 0, CAP);
RUN(gbit_1g_256, "1 Gbit/s 1G 256", LINK_1G, 0);
RUN(gbit_4g_256, "1 Gbit/s 4G 256", LINK_1G, 0);
RUN(gbit_1g_1024, "1 Gbit/s 1G 1024", LINK_1G, 0);
RUN(gbit_4g_1024, "1 Gbit/s 4G 1024", LINK_1G, 0);
RUN(gbit_1g_1024_ac, "1 Gbit/s 1G 1024 auto-converge", LINK_1G_AC, 0);

/* Runs that converged by precopy with the dirty set shrinking pass after
 * pass (some growing for a pass or two on the way): never switched. On
 * loopback the link's rate is unknown (the source is the limit); under
 * the cap x-compress made the 64 MiB/s guest converge. */
static void test_converging_runs_never_switch(void **state)
{
	static const struct run *const runs[] = {
	    &lo_1g_64,	 &lo_1g_256,  &lo_1g_1024, &lo_4g_64,  &lo_4g_256,
	    &lo_4g_1024, &gbit_1g_64, &gbit_4g_64, &cap_1g_16, &cap_1g_64,
	};
	char reason[512];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
		size_t at = fired_after(runs[i], reason, sizeof(reason));

		if (at)
			fail_msg("%s: switched after pass %zu: %s",
				 runs[i]->what, at, reason);
	}
}

/* 1 GiB rewritten at 1024 MiB/s over 1 Gbit/s: pass 2, at the link's
 * rate, left 22 % more than pass 1 (the guest dirtied more than the link
 * carried in a whole pass): switched at once, with the figures in the
 * reason. */
static void test_growing_at_the_link_switches_at_once(void **state)
{
	char reason[512];

	(void)state;
	assert_int_equal(fired_after(&gbit_1g_1024, reason, sizeof(reason)), 2);
	assert_non_null(
	    strstr(reason, "stopped shrinking for 1 pass (622 -> 760 MiB)"));
	assert_non_null(strstr(
	    reason, "the link carries 100 MiB/s (measured rate 89 MiB/s)"));
	assert_non_null(strstr(
	    reason, "760 MiB cannot go within the 300 ms downtime limit"));
	assert_null(strstr(reason, "auto-converge"));
	/* The 4G guest's run logged two passes in its 30 s, the second
	 * leaving 696 of 908 MiB: shrinking, no switch yet. */
	assert_int_equal(fired_after(&gbit_4g_1024, reason, sizeof(reason)), 0);
	assert_non_null(strstr(reason, "shrank from 908 to 696 MiB"));
}

/* Two runs that converged only after the dirty set stopped shrinking for
 * 4-5 passes at the link (1 Gbit/s, 256 MiB/s, at load 14: zstd starved,
 * x-compress gained almost nothing; the set shrank again when the
 * guest's rate fell). The rule cannot tell those from a run that never
 * ends and switches; what it must not do is make them slower: the
 * postcopy that follows moves the dirty set once, at the pass's page
 * rate, which must take no longer than what precopy still took. */
static void test_late_convergence_is_switched_no_slower(void **state)
{
	static const struct run *const runs[] = {&gbit_1g_256, &gbit_4g_256};
	char reason[512];
	size_t i, k;

	(void)state;
	for (i = 0; i < 2; i++) {
		const struct run *r = runs[i];
		size_t at = fired_after(r, reason, sizeof(reason));
		struct kv_pc_auto_sample s;
		double postcopy_ms, precopy_left_ms = 0;

		assert_true(at >= 4);
		s = sample_of(r, at - 1);
		postcopy_ms = (double)s.dirty_bytes /
			      ((double)s.sent_bytes * s.wire_factor) *
			      (double)s.pass_ns / 1e6;
		for (k = at; k < r->n; k++)
			precopy_left_ms += r->passes[k].ms;
		if (postcopy_ms > precopy_left_ms)
			fail_msg(
			    "%s: switched after pass %zu, postcopy ~%.0f ms against %.0f ms of precopy left",
			    r->what, at, postcopy_ms, precopy_left_ms);
	}
}

/* auto-converge at 1024 MiB/s over 1 Gbit/s: the set shrinks while the
 * throttle climbs (passes 2-4), then stops shrinking at 20-70 %: a
 * migration converging only by throttling the guest harder (it took
 * 75 s) is switched, after pass 6 (49 s in). */
static void test_throttled_switches_when_it_stops_shrinking(void **state)
{
	char reason[512];

	(void)state;
	assert_int_equal(fired_after(&gbit_1g_1024_ac, reason, sizeof(reason)),
			 6);
	assert_non_null(strstr(reason, "for 2 passes (579 -> 602 MiB)"));
}

/* The same 1024 MiB/s run as if the link were 1024 MiB/s: the passes
 * ran at a tenth of it, so the source, not the link, was slow; it may
 * speed up, and the rule waits for 4 stalled passes (the run's last pass
 * repeated stands for the passes after its 30 s limit). */
static void test_source_bound_waits_for_four_stalls(void **state)
{
	struct pass passes[5];
	struct run r = gbit_1g_1024;
	char reason[512];

	(void)state;
	r.link_mibs = 1024;
	assert_int_equal(fired_after(&r, reason, sizeof(reason)), 0);
	memcpy(passes, gbit_1g_1024_passes, sizeof(gbit_1g_1024_passes));
	passes[3] = passes[4] = passes[2];
	r.passes = passes;
	r.n = 5;
	assert_int_equal(fired_after(&r, reason, sizeof(reason)), 5);
	assert_non_null(strstr(reason, "for 4 passes"));
	assert_non_null(strstr(
	    reason, "the source moves 77 MiB/s, below the link's 1024 MiB/s"));
}

/* The auto-converge run with the link's rate unknown (x-compress
 * measured none: loopback, or a destination holding the sender back): a
 * pass about as fast as the fastest before it counts as at the link.
 * Pass 5 (67 MiB/s, the fastest before 86) is not: 1 stall of 4; pass 6
 * (97 MiB/s) is: switched after it, as with the link's rate known. */
static void test_link_unknown_steady_rate_counts_as_the_link(void **state)
{
	struct run r = gbit_1g_1024_ac;
	char reason[512];

	(void)state;
	r.link_mibs = 0;
	r.n = 5;
	assert_int_equal(fired_after(&r, reason, sizeof(reason)), 0);
	assert_non_null(strstr(reason, "1 of 4 passes"));
	r.n = gbit_1g_1024_ac.n;
	assert_int_equal(fired_after(&r, reason, sizeof(reason)), 6);
	assert_non_null(strstr(
	    reason,
	    "about as fast as its fastest pass before (86 MiB/s; the link's rate unknown)"));
}

/* Stalled, but what is left fits the downtime limit: precopy switches
 * over by itself. The loopback 1G run's last passes, held at 406 pages. */
static void test_what_fits_is_left_to_precopy(void **state)
{
	struct pass passes[6];
	struct run r = lo_1g_1024;
	char reason[512];
	size_t i;

	(void)state;
	for (i = 0; i < 6; i++)
		passes[i] = lo_1g_1024_passes[8];
	r.passes = passes;
	r.n = 6;
	assert_int_equal(fired_after(&r, reason, sizeof(reason)), 0);
}

static struct kv_pc_auto_sample stalled_sample(void)
{
	struct kv_pc_auto_sample s = {0};

	s.dirty_bytes = 64 * KV_MiB;
	s.sent_bytes = 32 * KV_MiB;
	s.wire_factor = 1.0;
	s.pass_ns = 1000000000LL;
	s.rate_limit_bps = 32 * KV_MiB;
	s.downtime_limit_ms = 300;
	s.throttle_pct = 60;
	return s;
}

/* The first pass is only remembered; the rule fires once; the reason
 * names max-bandwidth and the throttle when they are what limits. */
static void test_first_pass_fires_once_reason_names_cap(void **state)
{
	struct kv_pc_auto_sample s = stalled_sample();
	struct kv_pc_auto a;
	char reason[512];

	(void)state;
	kv_pc_auto_init(&a);
	assert_int_equal(kv_pc_auto_note_pass(&a, &s, reason, sizeof(reason)),
			 KV_PC_AUTO_WAIT);
	assert_non_null(strstr(reason, "first pass"));
	assert_int_equal(kv_pc_auto_note_pass(&a, &s, reason, sizeof(reason)),
			 KV_PC_AUTO_WAIT);
	assert_non_null(strstr(reason, "1 of 2 passes"));
	assert_int_equal(kv_pc_auto_note_pass(&a, &s, reason, sizeof(reason)),
			 KV_PC_AUTO_SWITCH);
	assert_string_equal(
	    reason,
	    "the dirty set stopped shrinking for 2 passes (64 -> 64 MiB) while the guest dirties at least 64 MiB/s and the link carries 32 MiB/s (max-bandwidth 32 MiB/s): 64 MiB cannot go within the 300 ms downtime limit (10 MiB can); auto-converge throttles the guest by 60 %");
	assert_int_equal(kv_pc_auto_note_pass(&a, &s, reason, sizeof(reason)),
			 KV_PC_AUTO_WAIT);
	assert_non_null(strstr(reason, "already switched"));
}

/* A pass that shrinks the set starts the count again. */
static void test_a_shrinking_pass_restarts_the_count(void **state)
{
	struct kv_pc_auto_sample s = stalled_sample(), small = s;
	struct kv_pc_auto a;
	char reason[512];

	(void)state;
	small.dirty_bytes = s.dirty_bytes / 2;
	kv_pc_auto_init(&a);
	kv_pc_auto_note_pass(&a, &s, reason, sizeof(reason));
	assert_int_equal(kv_pc_auto_note_pass(&a, &s, reason, sizeof(reason)),
			 KV_PC_AUTO_WAIT);
	assert_int_equal(
	    kv_pc_auto_note_pass(&a, &small, reason, sizeof(reason)),
	    KV_PC_AUTO_WAIT);
	assert_non_null(strstr(reason, "shrank from 64 to 32 MiB"));
	assert_int_equal(
	    kv_pc_auto_note_pass(&a, &small, reason, sizeof(reason)),
	    KV_PC_AUTO_WAIT);
	assert_int_equal(
	    kv_pc_auto_note_pass(&a, &small, reason, sizeof(reason)),
	    KV_PC_AUTO_SWITCH);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_converging_runs_never_switch),
	    cmocka_unit_test(test_growing_at_the_link_switches_at_once),
	    cmocka_unit_test(test_late_convergence_is_switched_no_slower),
	    cmocka_unit_test(test_throttled_switches_when_it_stops_shrinking),
	    cmocka_unit_test(test_source_bound_waits_for_four_stalls),
	    cmocka_unit_test(test_link_unknown_steady_rate_counts_as_the_link),
	    cmocka_unit_test(test_what_fits_is_left_to_precopy),
	    cmocka_unit_test(test_first_pass_fires_once_reason_names_cap),
	    cmocka_unit_test(test_a_shrinking_pass_restarts_the_count),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
