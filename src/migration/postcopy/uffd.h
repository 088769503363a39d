/* SPDX-License-Identifier: MIT */
/*
 * userfaultfd for postcopy (issue 11): the destination registers guest RAM
 * in MISSING mode before the guest runs; a vCPU (or any thread) touching
 * a page that never arrived blocks in the kernel and a fault message
 * names the page; the page is placed atomically with UFFDIO_COPY (or
 * UFFDIO_ZEROPAGE), which wakes every thread waiting on it. A page is
 * placed once: placing it again fails with EEXIST, which is how a late
 * background copy can never overwrite a newer one.
 *
 * This file owns the descriptor and the ioctls, nothing else: which page
 * to ask for and when is the postcopy code's.
 */
#ifndef KV_MIGRATION_POSTCOPY_UFFD_H
#define KV_MIGRATION_POSTCOPY_UFFD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

struct kv_uffd;

/* A fault: the page address (page-aligned) and the faulting thread. */
struct kv_uffd_fault {
	uint64_t addr;
	uint32_t tid; /* 0 when the kernel does not say */
	bool write;
	bool wp; /* a write to a write-protected page, not a missing one */
};

/* Open a userfaultfd and agree on the API. NULL with err set when the
 * kernel has none or this process may not use it (the message says which
 * and what to change). */
struct kv_uffd *kv_uffd_open(struct kv_error *err);
void kv_uffd_close(struct kv_uffd *u);

/* Faults on [addr, addr + len) (page-aligned) now come to u. */
int kv_uffd_register(struct kv_uffd *u, void *addr, size_t len,
		     struct kv_error *err);
int kv_uffd_unregister(struct kv_uffd *u, void *addr, size_t len,
		       struct kv_error *err);

/* Wait up to timeout_ms (-1: no limit) for the next fault. 1 with *f set,
 * 0 on timeout or after kv_uffd_wakeup, <0 with err set. */
int kv_uffd_wait_fault(struct kv_uffd *u, int timeout_ms,
		       struct kv_uffd_fault *f, struct kv_error *err);

/* Make a kv_uffd_wait_fault in another thread return 0 now. */
void kv_uffd_wakeup(struct kv_uffd *u);

/* Place len bytes from src at dst (page-aligned, registered) and wake
 * the threads waiting there. 0 placed; 1 already there (placed before:
 * nothing changed); <0 with err set. */
int kv_uffd_place(struct kv_uffd *u, void *dst, const void *src, size_t len,
		  struct kv_error *err);
/* The same with zeros (UFFDIO_ZEROPAGE: no copy at all). */
int kv_uffd_place_zero(struct kv_uffd *u, void *dst, size_t len,
		       struct kv_error *err);

/*
 * Write-protection (background snapshot): registered memory stays
 * readable, and a write to a protected page, from any thread or from KVM
 * on behalf of a vCPU, blocks until the page is un-protected; the fault
 * message has wp set. Only pages that exist (present or swapped) are
 * protected, unless the descriptor was opened with unpopulated_too.
 */

/* Open a userfaultfd that can write-protect anonymous memory; with
 * unpopulated_too, pages never touched are protected as well where the
 * kernel can (UFFD_FEATURE_WP_UNPOPULATED, Linux 6.4: a marker in every
 * empty page-table entry, which costs page tables and time).
 * NULL with err set (naming the missing feature) where the kernel cannot
 * write-protect at all. */
struct kv_uffd *kv_uffd_open_wp(bool unpopulated_too, struct kv_error *err);

/* Whether never-touched pages are protected too (opened with
 * unpopulated_too on a kernel that has it); without it the caller must
 * populate memory before protecting it, or know those pages otherwise. */
bool kv_uffd_wp_unpopulated(const struct kv_uffd *u);

/* Faults from writes to protected pages of [addr, addr + len) now come to
 * u (page-aligned, anonymous private memory). */
int kv_uffd_register_wp(struct kv_uffd *u, void *addr, size_t len,
			struct kv_error *err);

/* Protect (protect = true) or un-protect [addr, addr + len); un-protecting
 * wakes the threads waiting there. */
int kv_uffd_write_protect(struct kv_uffd *u, void *addr, size_t len,
			  bool protect, struct kv_error *err);

#endif
