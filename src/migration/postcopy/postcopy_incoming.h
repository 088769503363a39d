/* SPDX-License-Identifier: MIT */
/*
 * The destination's postcopy for one incoming migration (incoming.c's
 * helper, docs/DESIGN.md "Postcopy"): the pages it has (postcopy_dst.h)
 * over the RAM blocks, the page requests it writes on the return path
 * (REQ_PAGES_ID, or REQ_PAGES for the block of the previous request, as
 * QEMU's), and the figures query-migrate shows.
 *
 *   kv_pc_in_new          when the source connected (postcopy-ram on)
 *   kv_pc_in_advise       POSTCOPY_ADVISE: page sizes agreed, pages
 *                         loaded from now on are counted as received
 *   kv_pc_in_discard      each POSTCOPY_RAM_DISCARD range
 *   kv_pc_in_listen       POSTCOPY_LISTEN: prefault stopped, userfaultfd
 *                         armed, fault thread started
 *   kv_pc_in_running      POSTCOPY_RUN: the guest runs here now
 *   kv_pc_in_complete     the stream ended: every page here, userfaultfd
 *                         released
 *   kv_pc_in_free         at the end of the process's incoming migration
 */
#ifndef KV_MIGRATION_POSTCOPY_INCOMING_H
#define KV_MIGRATION_POSTCOPY_INCOMING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "migration/postcopy/postcopy_dst.h"
#include "migration/postcopy/postcopy_wire.h"
#include "migration/return_path.h"

struct kv_ram_state;
struct kv_pc_in;

struct kv_pc_in_config {
	struct kv_ram_state *rs;
	struct kv_rp_writer *rp; /* outlives the object */
	/* Blocktime (postcopy-blocktime): the vCPU threads' ids. */
	const uint32_t *vcpu_tids;
	size_t nvcpus;
};

struct kv_pc_in *kv_pc_in_new(const struct kv_pc_in_config *cfg,
			      struct kv_error *err);
void kv_pc_in_free(struct kv_pc_in *p);

int kv_pc_in_advise(struct kv_pc_in *p, const struct kv_pc_advise *a,
		    struct kv_error *err);
/* The blocks commands are checked against (valid after ADVISE). */
const struct kv_pc_blocks *kv_pc_in_blocks(struct kv_pc_in *p);
int kv_pc_in_discard(struct kv_pc_in *p, const struct kv_pc_discard *d,
		     struct kv_error *err);
int kv_pc_in_listen(struct kv_pc_in *p, struct kv_error *err);
void kv_pc_in_running(struct kv_pc_in *p);
/* On the listen thread, first: with a preempt channel it is background
 * work (base/thread_role.h). */
void kv_pc_in_listen_thread(struct kv_pc_in *p);
/* postcopy-preempt: c (taken) carries requested pages; from
 * kv_pc_in_listen on a thread of its own places them until EOS. */
void kv_pc_in_set_preempt(struct kv_pc_in *p, struct kv_chan *c);
/* Did the first link have a preempt channel (a recovery expects one)? */
bool kv_pc_in_had_preempt(const struct kv_pc_in *p);
/* Recovery (POSTCOPY_RESUME): c (taken) replaces the broken channel; the
 * old thread is stopped, a new one places what c brings. */
void kv_pc_in_restart_preempt(struct kv_pc_in *p, struct kv_chan *c);
/* Recovery: a block's received bitmap (RECV_BITMAP), and asking again
 * for every page a thread waits on (POSTCOPY_RESUME). */
const unsigned long *kv_pc_in_received_map(struct kv_pc_in *p, size_t block,
					   uint64_t *npages);
int kv_pc_in_rerequest(struct kv_pc_in *p, struct kv_error *err);
/* The vCPU threads for blocktime, once the guest started. */
void kv_pc_in_set_vcpus(struct kv_pc_in *p, const uint32_t *tids, size_t n);
bool kv_pc_in_advised(const struct kv_pc_in *p);
/* Wait (up to timeout_ms; -1 none) for every page, then release
 * userfaultfd. 0, or <0 with err saying how many pages are missing. */
int kv_pc_in_complete(struct kv_pc_in *p, int timeout_ms,
		      struct kv_error *err);

/* query-migrate's postcopy figures (QEMU's names). */
#define KV_PC_IN_MAX_VCPUS 64
#define KV_PC_IN_LAT_BUCKETS 24 /* QEMU's postcopy-latency-dist */
struct kv_pc_in_stats {
	bool advised;
	uint64_t requests;     /* postcopy-requests */
	uint64_t blocktime_ms; /* postcopy-blocktime */
	size_t nvcpus;
	uint64_t vcpu_blocktime_ms[KV_PC_IN_MAX_VCPUS];
	uint64_t latency_ns;   /* postcopy-latency: mean */
	uint64_t latency_p50_ns, latency_p99_ns, latency_max_ns;
	uint64_t latency_dist[KV_PC_IN_LAT_BUCKETS];
	uint64_t faults, placed, missing;
	uint64_t preempt_pages; /* x-postcopy-preempt-pages: on every link */
};
void kv_pc_in_get_stats(struct kv_pc_in *p, struct kv_pc_in_stats *st);

#endif
