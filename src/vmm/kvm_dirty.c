/* SPDX-License-Identifier: MIT */
/*
 * KVM dirty trackers: the dirty log with manual protect, and the dirty ring.
 *
 * Both keep one atomic "soft" bitmap over the RAM block's pages, drained at
 * every sync. It collects the pages the VMM wrote (kv_kvm_dirty_mark), the
 * pages a vCPU thread harvested from its full ring, and what a failed stop
 * fetched from KVM, so the next attempt's first sync reports them.
 *
 * Log: each slot keeps `reported`, the bitmap the last KVM_GET_DIRTY_LOG
 * returned. clear() hands KVM only those bits of the range (manual protect
 * re-protects exactly the pages whose bits it is given), so a page written
 * after the sync keeps its bit in KVM and shows up at the next sync. With
 * KVM_DIRTY_LOG_INITIALLY_SET, KVM starts each slot's log all set and leaves
 * pages writable, so `reported` starts all set too.
 *
 * Ring: one lock per ring serialises the harvest from the vCPU thread (ring
 * full) with the harvest at sync (migration thread).
 */
#include "vmm/kvm_dirty.h"

#include <errno.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/bitmap.h"
#include "migration/ram/ram.h"

#define CLEAR_ALIGN_PAGES 64U

enum tracker_kind { TRACK_LOG, TRACK_RING };

struct dirty_slot {
	struct kv_kvm_slot s;
	uint64_t npages;
	uint64_t block_page;
	unsigned long *reported; /* log: bits of the last GET_DIRTY_LOG */
	unsigned long *scratch;	 /* log: bits handed to CLEAR_DIRTY_LOG */
	unsigned long *peeked;	 /* log: bits of the last peek */
};

struct dirty_ring {
	pthread_mutex_t lock;
	struct kvm_dirty_gfn *gfns;
	uint32_t fetch; /* next entry to look at (free-running) */
	size_t map_len;
};

struct kv_kvm_dirty {
	enum tracker_kind kind;
	int vm_fd;
	bool initially_set;
	bool started;
	int nslots;
	struct dirty_slot *slots;
	uint64_t block_pages;
	unsigned long *soft; /* atomic: marks, ring harvests, kept bits */
	int nrings;
	uint32_t ring_entries;
	struct dirty_ring *rings;
};

/* ---- capabilities ---- */

static int enable_cap(int vm_fd, uint32_t cap, uint64_t arg,
		      struct kv_error *err, const char *what)
{
	struct kvm_enable_cap ec;

	memset(&ec, 0, sizeof(ec));
	ec.cap = cap;
	ec.args[0] = arg;
	if (ioctl(vm_fd, KVM_ENABLE_CAP, &ec) < 0)
		return kv_error_set_errno(err, -errno, "enabling %s", what);
	return 0;
}

/* Enable manual protect (with initially-set when offered); returns the
 * flags enabled, or -errno. Enabling again is harmless. */
static int log_enable(int vm_fd, struct kv_error *err)
{
	int have = ioctl(vm_fd, KVM_CHECK_EXTENSION,
			 KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
	int want;

	if (have <= 0 || !(have & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE))
		return kv_error_set(
		    err, -ENOTSUP,
		    "KVM lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: the dirty log tracker needs it");
	want = have & (KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE |
		       KVM_DIRTY_LOG_INITIALLY_SET);
	if (enable_cap(vm_fd, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, (uint64_t)want,
		       err, "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2") < 0)
		return err ? err->code : -EINVAL;
	return want;
}

int kv_kvm_dirty_log_enable_cap(int vm_fd, struct kv_error *err)
{
	int ret = log_enable(vm_fd, err);

	return ret < 0 ? ret : 0;
}

/* The ring capability to use: the acquire/release flavour when offered. */
static uint32_t ring_cap(int vm_fd, int *max_bytes)
{
	int n =
	    ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING_ACQ_REL);

	if (n > 0) {
		*max_bytes = n;
		return KVM_CAP_DIRTY_LOG_RING_ACQ_REL;
	}
	n = ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING);
	*max_bytes = n > 0 ? n : 0;
	return KVM_CAP_DIRTY_LOG_RING;
}

int kv_kvm_dirty_ring_enable_cap(int vm_fd, uint32_t entries,
				 struct kv_error *err)
{
	uint64_t bytes = (uint64_t)entries * sizeof(struct kvm_dirty_gfn);
	int max_bytes;
	uint32_t cap = ring_cap(vm_fd, &max_bytes);

	if (!max_bytes)
		return kv_error_set(err, -ENOTSUP,
				    "KVM lacks KVM_CAP_DIRTY_LOG_RING");
	if (!entries || (entries & (entries - 1)) ||
	    bytes > (uint64_t)max_bytes)
		return kv_error_set(
		    err, -EINVAL,
		    "dirty ring of %u entries: need a power of two of at most %zu entries",
		    entries, (size_t)max_bytes / sizeof(struct kvm_dirty_gfn));
	return enable_cap(vm_fd, cap, bytes, err,
			  cap == KVM_CAP_DIRTY_LOG_RING_ACQ_REL
			      ? "KVM_CAP_DIRTY_LOG_RING_ACQ_REL"
			      : "KVM_CAP_DIRTY_LOG_RING");
}

/* ---- common ---- */

static int set_slot_flags(struct kv_kvm_dirty *d, struct dirty_slot *sl,
			  uint32_t flags, struct kv_error *err)
{
	struct kvm_userspace_memory_region r = {
	    .slot = sl->s.slot,
	    .flags = flags,
	    .guest_phys_addr = sl->s.gpa,
	    .memory_size = sl->s.size,
	    .userspace_addr = (uint64_t)(uintptr_t)sl->s.host,
	};

	if (ioctl(d->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
		return kv_error_set_errno(err, -errno,
					  "KVM_SET_USER_MEMORY_REGION (slot %u, flags %#x)",
					  sl->s.slot, flags);
	sl->s.flags = flags;
	return 0;
}

static struct kv_kvm_dirty *dirty_new(enum tracker_kind kind, int vm_fd,
				      const struct kv_kvm_slot *slots,
				      int nslots, uint64_t block_pages,
				      struct kv_error *err)
{
	struct kv_kvm_dirty *d = calloc(1, sizeof(*d));

	if (!d ||
	    !(d->slots =
		  calloc(nslots > 0 ? (size_t)nslots : 1, sizeof(*d->slots))) ||
	    !(d->soft = kv_bitmap_new(block_pages))) {
		kv_kvm_dirty_free(d);
		kv_error_set(err, -ENOMEM, "dirty tracker: no memory");
		return NULL;
	}
	d->kind = kind;
	d->vm_fd = vm_fd;
	d->nslots = nslots;
	d->block_pages = block_pages;
	for (int i = 0; i < nslots; i++) {
		struct dirty_slot *sl = &d->slots[i];

		sl->s = slots[i];
		sl->npages = slots[i].size >> KV_PAGE_SHIFT;
		sl->block_page = slots[i].block_offset >> KV_PAGE_SHIFT;
		if ((slots[i].size | slots[i].block_offset) &
			(KV_PAGE_SIZE - 1) ||
		    !sl->npages || sl->block_page + sl->npages > block_pages) {
			kv_error_set(err, -EINVAL,
				     "dirty tracker: slot %u (%llu bytes at block offset %#llx) does not fit a block of %llu pages",
				     slots[i].slot,
				     (unsigned long long)slots[i].size,
				     (unsigned long long)slots[i].block_offset,
				     (unsigned long long)block_pages);
			kv_kvm_dirty_free(d);
			return NULL;
		}
	}
	return d;
}

void kv_kvm_dirty_free(struct kv_kvm_dirty *d)
{
	if (!d)
		return;
	for (int i = 0; d->slots && i < d->nslots; i++) {
		kv_bitmap_free(d->slots[i].reported);
		kv_bitmap_free(d->slots[i].scratch);
		kv_bitmap_free(d->slots[i].peeked);
	}
	for (int i = 0; d->rings && i < d->nrings; i++) {
		if (d->rings[i].gfns)
			munmap(d->rings[i].gfns, d->rings[i].map_len);
		pthread_mutex_destroy(&d->rings[i].lock);
	}
	free(d->rings);
	free(d->slots);
	kv_bitmap_free(d->soft);
	free(d);
}

void kv_kvm_dirty_mark(struct kv_kvm_dirty *d, uint64_t block_offset,
		       uint64_t len)
{
	uint64_t first = block_offset >> KV_PAGE_SHIFT;
	uint64_t last;

	if (!len || first >= d->block_pages)
		return;
	last = (block_offset + len - 1) >> KV_PAGE_SHIFT;
	if (last >= d->block_pages)
		last = d->block_pages - 1;
	/* Order the caller's write to guest RAM before the mark. */
	__atomic_thread_fence(__ATOMIC_RELEASE);
	for (uint64_t p = first; p <= last; p++)
		kv_bitmap_set_atomic(d->soft, p);
}

static struct kv_ram_block *tracked_block(struct kv_kvm_dirty *d,
					  struct kv_ram_block *blocks,
					  size_t nblocks, struct kv_error *err)
{
	if (nblocks != 1 || blocks[0].npages != d->block_pages) {
		kv_error_set(err, -EINVAL,
			     "KVM dirty tracker covers one RAM block of %llu pages, asked to sync %zu block(s)%s",
			     (unsigned long long)d->block_pages, nblocks,
			     nblocks == 1 ? " of another size" : "");
		return NULL;
	}
	return &blocks[0];
}

/* OR a slot-relative bitmap into the block's migration bitmap. */
static uint64_t or_slot_bits(struct kv_ram_block *b,
			     const struct dirty_slot *sl,
			     const unsigned long *bits)
{
	uint64_t added = 0;

	if (sl->block_page % KV_BITS_PER_LONG == 0)
		return kv_bitmap_or_atomic(b->dirty + sl->block_page /
							  KV_BITS_PER_LONG,
					   bits, sl->npages);
	for (size_t p = kv_bitmap_find_next(bits, sl->npages, 0);
	     p < sl->npages; p = kv_bitmap_find_next(bits, sl->npages, p + 1))
		added += kv_bitmap_set_atomic(b->dirty, sl->block_page + p);
	return added;
}

static int start_logging(struct kv_kvm_dirty *d, struct kv_error *err)
{
	for (int i = 0; i < d->nslots; i++) {
		struct dirty_slot *sl = &d->slots[i];
		int ret = set_slot_flags(
		    d, sl, sl->s.flags | KVM_MEM_LOG_DIRTY_PAGES, err);

		if (ret < 0)
			return ret;
		if (sl->reported) {
			/* KVM's fresh log: all set (pages still writable)
			 * with initially-set, else all clear. */
			if (d->initially_set)
				kv_bitmap_set_all(sl->reported, sl->npages);
			else
				kv_bitmap_clear_all(sl->reported, sl->npages);
		}
	}
	d->started = true;
	return 0;
}

static void stop_logging(struct kv_kvm_dirty *d)
{
	for (int i = 0; i < d->nslots; i++) {
		struct dirty_slot *sl = &d->slots[i];

		/* Nothing to report upward from a void callback; a slot left
		 * logging only costs write faults. */
		set_slot_flags(d, sl, sl->s.flags & ~KVM_MEM_LOG_DIRTY_PAGES,
			       NULL);
	}
	d->started = false;
}

/* ---- log tracker ---- */

static int log_fetch_into(struct kv_kvm_dirty *d, struct dirty_slot *sl,
			  unsigned long *bits, struct kv_error *err)
{
	struct kvm_dirty_log log;

	memset(&log, 0, sizeof(log));
	log.slot = sl->s.slot;
	log.dirty_bitmap = bits;
	if (ioctl(d->vm_fd, KVM_GET_DIRTY_LOG, &log) < 0)
		return kv_error_set_errno(
		    err, -errno, "KVM_GET_DIRTY_LOG (slot %u)", sl->s.slot);
	return 0;
}

static int log_fetch(struct kv_kvm_dirty *d, struct dirty_slot *sl,
		     struct kv_error *err)
{
	return log_fetch_into(d, sl, sl->reported, err);
}

/* out := the soft bitmap (pages the VMM wrote, kept bits), read, not
 * drained. */
static void peek_soft(const struct kv_kvm_dirty *d, unsigned long *out)
{
	for (size_t w = 0; w < KV_BITMAP_LONGS(d->block_pages); w++)
		out[w] = __atomic_load_n(&d->soft[w], __ATOMIC_RELAXED);
}

/* Set a slot-relative bitmap's bits in a block bitmap (single thread). */
static void set_slot_bits(unsigned long *out, const struct dirty_slot *sl,
			  const unsigned long *bits)
{
	if (sl->block_page % KV_BITS_PER_LONG == 0) {
		unsigned long *dst = out + sl->block_page / KV_BITS_PER_LONG;
		size_t full = sl->npages / KV_BITS_PER_LONG;
		size_t rest = sl->npages % KV_BITS_PER_LONG;

		for (size_t w = 0; w < full; w++)
			dst[w] |= bits[w];
		if (rest)
			dst[full] |= bits[full] & ((1UL << rest) - 1);
		return;
	}
	for (size_t p = kv_bitmap_find_next(bits, sl->npages, 0);
	     p < sl->npages; p = kv_bitmap_find_next(bits, sl->npages, p + 1))
		out[(sl->block_page + p) / KV_BITS_PER_LONG] |=
		    1UL << ((sl->block_page + p) % KV_BITS_PER_LONG);
}

static int log_start(void *opaque, struct kv_error *err)
{
	return start_logging(opaque, err);
}

static int64_t log_sync(void *opaque, struct kv_ram_block *blocks,
			size_t nblocks, struct kv_error *err)
{
	struct kv_kvm_dirty *d = opaque;
	struct kv_ram_block *b = tracked_block(d, blocks, nblocks, err);
	uint64_t added = 0;

	if (!b)
		return -EINVAL;
	/* Stopped (after a failed attempt): only the kept bits remain. */
	for (int i = 0; d->started && i < d->nslots; i++) {
		struct dirty_slot *sl = &d->slots[i];
		int ret = log_fetch(d, sl, err);

		if (ret < 0)
			return ret;
		added += or_slot_bits(b, sl, sl->reported);
	}
	added += kv_bitmap_drain_into(b->dirty, d->soft, d->block_pages);
	return (int64_t)added;
}

/* KVM's log as it is now, into the slots' own `peeked` bitmaps: `reported`
 * stays what the last sync fetched, so clear() hands KVM only pages the
 * sync put into the migration bitmap. */
static int log_peek(void *opaque, struct kv_ram_block *blocks, size_t nblocks,
		    unsigned long *const *out, struct kv_error *err)
{
	struct kv_kvm_dirty *d = opaque;

	if (!tracked_block(d, blocks, nblocks, err))
		return -EINVAL;
	peek_soft(d, out[0]);
	for (int i = 0; d->started && i < d->nslots; i++) {
		struct dirty_slot *sl = &d->slots[i];
		int ret = log_fetch_into(d, sl, sl->peeked, err);

		if (ret < 0)
			return ret;
		set_slot_bits(out[0], sl, sl->peeked);
	}
	return 0;
}

/* Re-protect the pages of slot-relative [first, end) that the last sync
 * reported. KVM wants first_page a multiple of 64 and num_pages a multiple
 * of 64 unless the range ends at the slot's end: widen the range, and pass
 * zero bits for the widened part so that nothing outside is touched. */
static int log_clear_slot(struct kv_kvm_dirty *d, struct dirty_slot *sl,
			  uint64_t first, uint64_t end, struct kv_error *err)
{
	uint64_t a = first & ~(uint64_t)(CLEAR_ALIGN_PAGES - 1);
	uint64_t z =
	    (end + CLEAR_ALIGN_PAGES - 1) & ~(uint64_t)(CLEAR_ALIGN_PAGES - 1);
	struct kvm_clear_dirty_log cl;
	bool any = false;

	if (z > sl->npages)
		z = sl->npages;
	kv_bitmap_clear_all(sl->scratch, (size_t)(z - a));
	for (uint64_t p = first; p < end; p++) {
		if (!kv_bitmap_test(sl->reported, p))
			continue;
		sl->scratch[(p - a) / KV_BITS_PER_LONG] |=
		    1UL << ((p - a) % KV_BITS_PER_LONG);
		sl->reported[p / KV_BITS_PER_LONG] &=
		    ~(1UL << (p % KV_BITS_PER_LONG));
		any = true;
	}
	if (!any)
		return 0;
	memset(&cl, 0, sizeof(cl));
	cl.slot = sl->s.slot;
	cl.first_page = a;
	cl.num_pages = (uint32_t)(z - a);
	cl.dirty_bitmap = sl->scratch;
	if (ioctl(d->vm_fd, KVM_CLEAR_DIRTY_LOG, &cl) < 0)
		return kv_error_set_errno(err, -errno,
					  "KVM_CLEAR_DIRTY_LOG (slot %u, pages %llu..%llu)",
					  sl->s.slot, (unsigned long long)a,
					  (unsigned long long)(z - 1));
	return 0;
}

static int log_clear(void *opaque, struct kv_ram_block *block, size_t first,
		     size_t count, struct kv_error *err)
{
	struct kv_kvm_dirty *d = opaque;
	uint64_t end = (uint64_t)first + count;

	if (block->npages != d->block_pages || end > d->block_pages)
		return kv_error_set(err, -EINVAL,
				    "dirty log clear: pages %zu..%llu outside the tracked block of %llu pages",
				    first, (unsigned long long)end,
				    (unsigned long long)d->block_pages);
	for (int i = 0; i < d->nslots; i++) {
		struct dirty_slot *sl = &d->slots[i];
		uint64_t lo = sl->block_page;
		uint64_t hi = sl->block_page + sl->npages;
		int ret;

		if (end <= lo || first >= hi)
			continue;
		ret = log_clear_slot(d, sl, (first > lo ? first : lo) - lo,
				     (end < hi ? end : hi) - lo, err);
		if (ret < 0)
			return ret;
	}
	return 0;
}

/* A failed migration keeps what KVM collected: fetch it into the soft
 * bitmap before logging stops (which drops KVM's log). */
static void log_keep_bits(struct kv_kvm_dirty *d)
{
	for (int i = 0; i < d->nslots; i++) {
		struct dirty_slot *sl = &d->slots[i];

		if (log_fetch(d, sl, NULL) < 0)
			continue;
		for (size_t p =
			 kv_bitmap_find_next(sl->reported, sl->npages, 0);
		     p < sl->npages;
		     p = kv_bitmap_find_next(sl->reported, sl->npages, p + 1))
			kv_bitmap_set_atomic(d->soft, sl->block_page + p);
	}
}

static void log_stop(void *opaque, int failed)
{
	struct kv_kvm_dirty *d = opaque;

	if (!d->started)
		return;
	if (failed)
		log_keep_bits(d);
	else
		kv_bitmap_clear_all(d->soft, d->block_pages);
	stop_logging(d);
}

static const struct kv_dirty_tracker_ops log_ops = {
    .start = log_start,
    .sync = log_sync,
    .clear = log_clear,
    .peek = log_peek,
    .stop = log_stop,
};

struct kv_kvm_dirty *kv_kvm_dirty_log_new(int vm_fd,
					  const struct kv_kvm_slot *slots,
					  int nslots, uint64_t block_pages,
					  struct kv_error *err)
{
	struct kv_kvm_dirty *d;
	int flags = log_enable(vm_fd, err);

	if (flags < 0)
		return NULL;
	d = dirty_new(TRACK_LOG, vm_fd, slots, nslots, block_pages, err);
	if (!d)
		return NULL;
	d->initially_set = flags & KVM_DIRTY_LOG_INITIALLY_SET;
	for (int i = 0; i < nslots; i++) {
		struct dirty_slot *sl = &d->slots[i];

		sl->reported = kv_bitmap_new(sl->npages);
		sl->scratch = kv_bitmap_new(sl->npages);
		sl->peeked = kv_bitmap_new(sl->npages);
		if (!sl->reported || !sl->scratch || !sl->peeked) {
			kv_kvm_dirty_free(d);
			kv_error_set(err, -ENOMEM, "dirty log: no memory");
			return NULL;
		}
	}
	return d;
}

/* ---- ring tracker ---- */

/* The slot an entry names, or NULL (address space != 0, unknown id). */
static struct dirty_slot *ring_slot(struct kv_kvm_dirty *d, uint32_t id)
{
	for (int i = 0; i < d->nslots; i++)
		if (d->slots[i].s.slot == id)
			return &d->slots[i];
	return NULL;
}

/* Collect every published entry of one ring into the soft bitmap and hand
 * the entries back (RESET). Caller holds the ring's lock. */
static int ring_collect(struct kv_kvm_dirty *d, int vcpu, struct kv_error *err)
{
	struct dirty_ring *r = &d->rings[vcpu];
	uint32_t mask = d->ring_entries - 1;
	int ret = 0;

	for (;;) {
		struct kvm_dirty_gfn *e = &r->gfns[r->fetch & mask];
		uint32_t flags = __atomic_load_n(&e->flags, __ATOMIC_ACQUIRE);
		struct dirty_slot *sl;

		if (!(flags & KVM_DIRTY_GFN_F_DIRTY))
			break;
		sl = ring_slot(d, e->slot);
		if (sl && e->offset < sl->npages)
			kv_bitmap_set_atomic(d->soft,
					     sl->block_page + e->offset);
		else if (!ret)
			ret = kv_error_set(err, -EIO,
					   "dirty ring of vCPU %d: entry for slot %#x page %llu, not a tracked page",
					   vcpu, e->slot,
					   (unsigned long long)e->offset);
		__atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET,
				 __ATOMIC_RELEASE);
		r->fetch++;
	}
	return ret;
}

static int ring_reset(struct kv_kvm_dirty *d, struct kv_error *err)
{
	if (ioctl(d->vm_fd, KVM_RESET_DIRTY_RINGS, 0) < 0)
		return kv_error_set_errno(err, -errno, "KVM_RESET_DIRTY_RINGS");
	return 0;
}

static int ring_harvest_one(struct kv_kvm_dirty *d, int vcpu,
			    struct kv_error *err)
{
	int ret;

	pthread_mutex_lock(&d->rings[vcpu].lock);
	ret = ring_collect(d, vcpu, err);
	pthread_mutex_unlock(&d->rings[vcpu].lock);
	return ret;
}

int kv_kvm_ring_harvest(struct kv_kvm_dirty *d, int vcpu_index,
			struct kv_error *err)
{
	int ret;

	if (d->kind != TRACK_RING || vcpu_index < 0 || vcpu_index >= d->nrings)
		return kv_error_set(err, -EINVAL,
				    "dirty ring harvest: no ring for vCPU %d",
				    vcpu_index);
	ret = ring_harvest_one(d, vcpu_index, err);
	/* Reset even after a bad entry: the entries were handed back, and a
	 * vCPU left with a full ring cannot run. */
	return ring_reset(d, err) ?: ret;
}

static int ring_harvest_all(struct kv_kvm_dirty *d, struct kv_error *err)
{
	int ret = 0;

	for (int i = 0; i < d->nrings; i++) {
		int r = ring_harvest_one(d, i, err);

		ret = ret ?: r;
	}
	return ring_reset(d, err) ?: ret;
}

static int ring_start(void *opaque, struct kv_error *err)
{
	return start_logging(opaque, err);
}

static int64_t ring_sync(void *opaque, struct kv_ram_block *blocks,
			 size_t nblocks, struct kv_error *err)
{
	struct kv_kvm_dirty *d = opaque;
	struct kv_ram_block *b = tracked_block(d, blocks, nblocks, err);
	int ret;

	if (!b)
		return -EINVAL;
	ret = ring_harvest_all(d, err);
	if (ret < 0)
		return ret;
	return (int64_t)kv_bitmap_drain_into(b->dirty, d->soft, d->block_pages);
}

/* The rings harvested into the soft bitmap (which the next sync drains),
 * then the soft bitmap read. */
static int ring_peek(void *opaque, struct kv_ram_block *blocks,
		     size_t nblocks, unsigned long *const *out,
		     struct kv_error *err)
{
	struct kv_kvm_dirty *d = opaque;
	int ret;

	if (!tracked_block(d, blocks, nblocks, err))
		return -EINVAL;
	ret = ring_harvest_all(d, err);
	if (ret < 0)
		return ret;
	peek_soft(d, out[0]);
	return 0;
}

static void ring_stop(void *opaque, int failed)
{
	struct kv_kvm_dirty *d = opaque;

	if (!d->started)
		return;
	/* Empty the rings either way, so that a later start begins clean;
	 * a failed migration keeps what they held. */
	ring_harvest_all(d, NULL);
	if (!failed)
		kv_bitmap_clear_all(d->soft, d->block_pages);
	stop_logging(d);
}

static const struct kv_dirty_tracker_ops ring_ops = {
    .start = ring_start,
    .sync = ring_sync,
    .clear = NULL, /* KVM_RESET_DIRTY_RINGS re-protects at sync */
    .peek = ring_peek,
    .stop = ring_stop,
};

static int map_ring(struct dirty_ring *r, int vcpu_fd, uint32_t entries,
		    int vcpu, struct kv_error *err)
{
	long page = sysconf(_SC_PAGESIZE);
	void *p;

	r->map_len = (size_t)entries * sizeof(struct kvm_dirty_gfn);
	p = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_fd,
		 (off_t)KVM_DIRTY_LOG_PAGE_OFFSET * page);
	if (p == MAP_FAILED)
		return kv_error_set_errno(err, -errno,
					  "mapping the dirty ring of vCPU %d (was the ring enabled before the vCPU was created?)",
					  vcpu);
	r->gfns = p;
	return 0;
}

struct kv_kvm_dirty *
kv_kvm_dirty_ring_new(int vm_fd, const struct kv_kvm_slot *slots, int nslots,
		      uint64_t block_pages, const int *vcpu_fds, int nvcpus,
		      uint32_t entries, struct kv_error *err)
{
	struct kv_kvm_dirty *d;

	if (!entries || (entries & (entries - 1)) || nvcpus <= 0) {
		kv_error_set(err, -EINVAL,
			     "dirty ring: %u entries for %d vCPUs", entries,
			     nvcpus);
		return NULL;
	}
	d = dirty_new(TRACK_RING, vm_fd, slots, nslots, block_pages, err);
	if (!d)
		return NULL;
	d->ring_entries = entries;
	d->rings = calloc((size_t)nvcpus, sizeof(*d->rings));
	if (!d->rings) {
		kv_kvm_dirty_free(d);
		kv_error_set(err, -ENOMEM, "dirty ring: no memory");
		return NULL;
	}
	for (int i = 0; i < nvcpus; i++) {
		pthread_mutex_init(&d->rings[i].lock, NULL);
		d->nrings = i + 1;
		if (map_ring(&d->rings[i], vcpu_fds[i], entries, i, err) < 0) {
			kv_kvm_dirty_free(d);
			return NULL;
		}
	}
	return d;
}

struct kv_dirty_tracker kv_kvm_dirty_iface(struct kv_kvm_dirty *d)
{
	struct kv_dirty_tracker t = {
	    .ops = d->kind == TRACK_LOG ? &log_ops : &ring_ops,
	    .opaque = d,
	};

	return t;
}
