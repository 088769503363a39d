/* SPDX-License-Identifier: MIT */
/* Guest RAM: the host mapping, its KVM slots and checked VMM writes. */
#define _GNU_SOURCE
#include "base/units.h"
#include "vmm/memory.h"

#include <errno.h>
#include <linux/kvm.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include "vmm/vm.h"

#define MIN_RAM	  (4 * KV_MiB)
#define RAM_ALIGN (2 * KV_MiB)
/* 1 TiB: keeps every gpa computation far from overflow. */
#define MAX_RAM (1ULL << 40)

static void add_slot(struct kv_gmem *m, uint64_t gpa, uint64_t size,
		     uint64_t block_offset)
{
	struct kv_kvm_slot *s = &m->slots[m->nslots];

	s->slot = (uint32_t)m->nslots;
	s->gpa = gpa;
	s->size = size;
	s->host = m->host + block_offset;
	s->block_offset = block_offset;
	s->flags = 0;
	m->nslots++;
}

int kv_gmem_init(struct kv_gmem *m, uint64_t size, struct kv_error *err)
{
	void *p;

	memset(m, 0, sizeof(*m));
	if (size < MIN_RAM || size % RAM_ALIGN || size > MAX_RAM)
		return kv_error_set(err, -EINVAL,
				    "guest memory size %llu bytes: must be a multiple of 2 MiB between 4 MiB and 1 TiB",
				    (unsigned long long)size);
	p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return kv_error_set_errno(err, -errno,
					  "mapping %llu MiB of guest memory",
					  (unsigned long long)(size / KV_MiB));
	/* Transparent huge pages: fewer faults at first touch and cheaper
	 * shadow paging; a refusal only costs speed. */
	(void)madvise(p, size, MADV_HUGEPAGE);
	m->host = p;
	m->size = size;
	m->lowmem = size < KV_VM_HOLE_START ? size : KV_VM_HOLE_START;
	add_slot(m, 0, m->lowmem, 0);
	if (size > m->lowmem)
		add_slot(m, KV_VM_HIGH_START, size - m->lowmem, m->lowmem);
	return 0;
}

void kv_gmem_fini(struct kv_gmem *m)
{
	if (m->host)
		munmap(m->host, m->size);
	m->host = NULL;
	m->nslots = 0;
}

int kv_gmem_register(struct kv_gmem *m, int vm_fd, struct kv_error *err)
{
	for (int i = 0; i < m->nslots; i++) {
		const struct kv_kvm_slot *s = &m->slots[i];
		struct kvm_userspace_memory_region r = {
		    .slot = s->slot,
		    .flags = s->flags,
		    .guest_phys_addr = s->gpa,
		    .memory_size = s->size,
		    .userspace_addr = (uintptr_t)s->host,
		};

		if (ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
			return kv_error_set_errno(
			    err, -errno,
			    "KVM_SET_USER_MEMORY_REGION slot %u (gpa 0x%llx, %llu MiB)",
			    s->slot, (unsigned long long)s->gpa,
			    (unsigned long long)(s->size / KV_MiB));
	}
	return 0;
}

bool kv_gmem_gpa_to_offset(const struct kv_gmem *m, uint64_t gpa, uint64_t len,
			   uint64_t *offset)
{
	for (int i = 0; i < m->nslots; i++) {
		const struct kv_kvm_slot *s = &m->slots[i];

		if (gpa < s->gpa || gpa - s->gpa > s->size ||
		    len > s->size - (gpa - s->gpa))
			continue;
		*offset = s->block_offset + (gpa - s->gpa);
		return true;
	}
	return false;
}

int kv_gmem_write(struct kv_gmem *m, uint64_t gpa, const void *src,
		  uint64_t len, struct kv_error *err)
{
	uint64_t off;

	if (!kv_gmem_gpa_to_offset(m, gpa, len, &off))
		return kv_error_set(err, -EFAULT,
				    "guest write of %llu bytes at 0x%llx is outside guest RAM",
				    (unsigned long long)len,
				    (unsigned long long)gpa);
	memcpy(m->host + off, src, len);
	if (m->written && len)
		m->written(m->written_opaque, off, len);
	return 0;
}
