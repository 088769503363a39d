/* SPDX-License-Identifier: MIT */
/*
 * Dirty trackers backed by KVM, implementing migration/dirty/dirty_tracker.h:
 *
 *  - log:  KVM_MEM_LOG_DIRTY_PAGES + KVM_GET_DIRTY_LOG with manual protect
 *          (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, initially-all-set): sync
 *          fetches the bitmaps without re-protecting; clear() re-protects
 *          (KVM_CLEAR_DIRTY_LOG) just the chunk about to be sent.
 *  - ring: KVM_CAP_DIRTY_LOG_RING: per-vCPU rings of dirtied gfns, mmapped
 *          from each vCPU fd, harvested at sync, then
 *          KVM_RESET_DIRTY_RINGS. A vCPU whose ring fills exits with
 *          KVM_EXIT_DIRTY_RING_FULL; the VMM calls kv_kvm_ring_harvest()
 *          from that vCPU's thread.
 *
 * Both also OR in a software bitmap of pages the VMM itself wrote
 * (kv_kvm_dirty_mark). A failed migration keeps every bit it collected:
 * stop(failed) fetches KVM's bits into that software bitmap, so the next
 * attempt's first sync (or a sync while stopped) reports them.
 * kv_kvm_dirty_log_new() enables the manual-protect cap itself too (again,
 * harmlessly), to learn whether KVM_DIRTY_LOG_INITIALLY_SET is in effect.
 * Both trackers cover exactly one RAM block (sync with any other block
 * list is an error).
 *
 * A tracker maps KVM memory slots onto RAM-block offsets: slot i covers
 * guest pages [gfn_start, gfn_start + npages) = block pages
 * [block_page, block_page + npages).
 */
#ifndef KV_VMM_KVM_DIRTY_H
#define KV_VMM_KVM_DIRTY_H

#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"
#include "migration/dirty/dirty_tracker.h"

struct kv_kvm_slot {
	uint32_t slot;       /* KVM slot id */
	uint64_t gpa;        /* guest physical start */
	uint64_t size;       /* bytes */
	void *host;          /* userspace address */
	uint64_t block_offset; /* where it starts in the RAM block */
	uint32_t flags;      /* current KVM memslot flags */
};

struct kv_kvm_dirty;

/* Log tracker: toggles KVM_MEM_LOG_DIRTY_PAGES on the slots at start/stop
 * (KVM_SET_USER_MEMORY_REGION); needs MANUAL_DIRTY_LOG_PROTECT2 enabled on
 * vm_fd (kv_kvm_dirty_log_enable_cap, before any slot is created). */
int kv_kvm_dirty_log_enable_cap(int vm_fd, struct kv_error *err);
struct kv_kvm_dirty *kv_kvm_dirty_log_new(int vm_fd,
					  const struct kv_kvm_slot *slots,
					  int nslots, uint64_t block_pages,
					  struct kv_error *err);

/* Ring tracker: kv_kvm_dirty_ring_enable_cap before creating vCPUs; the
 * rings are mapped from the vCPU fds given here. */
int kv_kvm_dirty_ring_enable_cap(int vm_fd, uint32_t entries,
				 struct kv_error *err);
struct kv_kvm_dirty *kv_kvm_dirty_ring_new(int vm_fd,
					   const struct kv_kvm_slot *slots,
					   int nslots, uint64_t block_pages,
					   const int *vcpu_fds, int nvcpus,
					   uint32_t entries,
					   struct kv_error *err);
/* Called by a vCPU thread on KVM_EXIT_DIRTY_RING_FULL. */
int kv_kvm_ring_harvest(struct kv_kvm_dirty *d, int vcpu_index,
			struct kv_error *err);

void kv_kvm_dirty_free(struct kv_kvm_dirty *d);
/* VMM writes to guest RAM: any thread, lock-free. */
void kv_kvm_dirty_mark(struct kv_kvm_dirty *d, uint64_t block_offset,
		       uint64_t len);
struct kv_dirty_tracker kv_kvm_dirty_iface(struct kv_kvm_dirty *d);

#endif
