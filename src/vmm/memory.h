/* SPDX-License-Identifier: MIT */
/*
 * Guest RAM: one anonymous host mapping ("pc.ram") split into at most two
 * KVM memory slots around the 3-4 GiB hole (layout in vm.h), and the
 * bounds-checked way the VMM itself writes guest memory.
 *
 * Every VMM write goes through kv_gmem_write(), which reports the written
 * range to the `written` hook so that a running migration resends it.
 */
#ifndef KV_VMM_MEMORY_H
#define KV_VMM_MEMORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "vmm/kvm_dirty.h"

#define KV_GMEM_MAX_SLOTS 2

struct kv_gmem {
	uint8_t *host;	 /* start of "pc.ram" */
	uint64_t size;	 /* bytes in "pc.ram" */
	uint64_t lowmem; /* bytes mapped below the hole */
	struct kv_kvm_slot slots[KV_GMEM_MAX_SLOTS];
	int nslots;
	/* Called after every VMM write (offset in "pc.ram"); may be NULL. */
	void (*written)(void *opaque, uint64_t ram_offset, uint64_t len);
	void *written_opaque;
};

/* Map size bytes (a multiple of 2 MiB, >= 4 MiB) and lay out the slots;
 * KVM is not involved (see kv_gmem_register). */
int kv_gmem_init(struct kv_gmem *m, uint64_t size, struct kv_error *err);
void kv_gmem_fini(struct kv_gmem *m);
/* Hand every slot to KVM (KVM_SET_USER_MEMORY_REGION). */
int kv_gmem_register(struct kv_gmem *m, int vm_fd, struct kv_error *err);

/* Where [gpa, gpa + len) lives in "pc.ram": false when any byte of it is
 * outside RAM or the range crosses the hole. Overflow-safe. */
bool kv_gmem_gpa_to_offset(const struct kv_gmem *m, uint64_t gpa, uint64_t len,
			   uint64_t *offset);
/* Copy len bytes into guest memory at gpa (bounds-checked, reported to the
 * written hook). */
int kv_gmem_write(struct kv_gmem *m, uint64_t gpa, const void *src,
		  uint64_t len, struct kv_error *err);

#endif
