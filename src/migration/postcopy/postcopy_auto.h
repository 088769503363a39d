/* SPDX-License-Identifier: MIT */
/*
 * x-postcopy-auto's rule (issue 11, 4b): after each precopy pass, should
 * the source switch to postcopy by itself? Pure logic, fed one sample per
 * pass; no clock, no threads. docs/DESIGN.md, "Postcopy: x-postcopy-auto",
 * states the rule and why.
 *
 * In short: it fires only when (1) what the pass left dirty cannot go
 * within the downtime limit at the rate the pass moved pages, and (2) the
 * dirty set has stopped shrinking (not below KV_PC_AUTO_SHRINK of the
 * previous pass's) for a number of passes in a row: 2 when the pass ran
 * at the link's measured rate or the rate limit, or, the link's rate
 * unknown, as fast as the fastest pass so far (more bandwidth will not
 * come), 4 otherwise (the source, not the link, was slow: CPU, the
 * destination's first touch; it may yet speed up); at once when a pass at
 * the link left KV_PC_AUTO_GROWTH times more than the one before. A pass
 * that shrinks
 * the dirty set starts the count again, so a migration that converges by
 * precopy, however slowly, is never switched. The first pass (all of RAM)
 * is only remembered.
 */
#ifndef KV_MIGRATION_POSTCOPY_AUTO_H
#define KV_MIGRATION_POSTCOPY_AUTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A pass "shrank" the dirty set when it left less than this share of what
 * the previous pass left. */
#define KV_PC_AUTO_SHRINK 0.9
/* A pass ran "at the link" when it moved at least this share of the
 * link's measured rate (or of the rate limit, the lower of the two); with
 * neither known, this share of the fastest pass so far. */
#define KV_PC_AUTO_LINK_BOUND 0.8
/* A pass at the link that left at least this many times what the
 * previous one left: the guest dirtied more than the link carried in a
 * whole pass; switch at once. */
#define KV_PC_AUTO_GROWTH 1.1
/* Passes in a row that did not shrink the dirty set before switching. */
#define KV_PC_AUTO_STALLS_LINK	2
#define KV_PC_AUTO_STALLS_OTHER 4

/* One precopy pass, as the source's pass loop measured it. */
struct kv_pc_auto_sample {
	uint64_t dirty_bytes; /* left dirty when the pass ended (the sync) */
	uint64_t sent_bytes;  /* bytes the pass put on the wire */
	double wire_factor;   /* page bytes per wire byte (compression);
			       * 0 is taken as 1 */
	int64_t pass_ns;      /* the pass's duration */
	double link_bps;      /* the link's measured rate, bytes/s; 0 unknown */
	uint64_t rate_limit_bps;    /* max-bandwidth; 0 none */
	uint64_t downtime_limit_ms; /* downtime-limit */
	unsigned throttle_pct;	    /* auto-converge's throttle in the pass */
};

struct kv_pc_auto {
	unsigned passes;  /* samples seen */
	unsigned stalled; /* passes in a row that did not shrink the set */
	uint64_t prev_dirty;
	uint64_t stall_from;  /* the dirty set when the run of stalls began */
	double best_wire_bps; /* the fastest pass so far (wire bytes/s) */
	bool fired;
};

enum kv_pc_auto_verdict {
	KV_PC_AUTO_WAIT,   /* precopy goes on */
	KV_PC_AUTO_SWITCH, /* switch to postcopy now (reason filled) */
};

void kv_pc_auto_init(struct kv_pc_auto *a);

/*
 * One pass ended. Returns KV_PC_AUTO_SWITCH once, with a one-line human
 * reason in REASON (naming the dirty set, the guest's and the link's
 * rates and the downtime limit); KV_PC_AUTO_WAIT otherwise (REASON then
 * says why not, for a debug log). After it fired it answers WAIT.
 */
enum kv_pc_auto_verdict kv_pc_auto_note_pass(struct kv_pc_auto *a,
					     const struct kv_pc_auto_sample *s,
					     char *reason, size_t reason_len);

#endif
