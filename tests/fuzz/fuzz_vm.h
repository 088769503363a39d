/* SPDX-License-Identifier: MIT */
/*
 * The small "machine" the loader fuzzer loads into and the corpus generator
 * saves from: two RAM blocks, an allocator for blocks a stream announces
 * that were not added, and one device with a nested struct, an array, a
 * buffer and an optional subsection. Both sides must agree on every name
 * and size here, or the seeds would not be valid streams for the harness.
 */
#ifndef KV_FUZZ_VM_H
#define KV_FUZZ_VM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "migration/ram/ram.h"
#include "migration/savevm/savevm.h"
#include "migration/savevm/vmstate.h"

#define FUZZ_MACHINE "kvmig-fuzz"
#define FUZZ_MEM0_SIZE (64U * 1024)
#define FUZZ_MEM1_SIZE (16U * 1024)
/* What a stream may make the destination allocate beyond mem0 and mem1. */
#define FUZZ_ALLOC_MAX (256U * 1024)
#define FUZZ_DEV_IDSTR "fuzzdev"
#define FUZZ_DEV_VERSION 2

struct fuzz_dev_inner {
	uint16_t x;
	uint64_t y;
};

struct fuzz_dev {
	uint8_t a;
	uint16_t b;
	uint32_t c;
	uint64_t d;
	int32_t e;
	bool f;
	int64_t g;     /* version 2 and later */
	uint8_t buf[16];
	uint32_t arr[4];
	struct fuzz_dev_inner inner;
	/* The "fuzzdev/extra" subsection. */
	bool send_extra;
	uint32_t extra_val;
	uint8_t extra_buf[8];
	/* Set by post_load: how many times each hook ran. */
	unsigned post_loads;
	unsigned extra_post_loads;
};

/* Counts what the allocator handed out, to catch leaks and over-asks. */
struct fuzz_alloc {
	uint64_t live_bytes;
	uint64_t live_blocks;
	uint64_t max_total;
};

struct fuzz_vm {
	struct kv_savevm *sv;
	struct kv_ram_state *rs;
	uint8_t *mem0;
	uint8_t *mem1;
	uint8_t *mem2;
	uint64_t mem2_size;
	struct fuzz_dev dev;
	struct fuzz_alloc alloc;
};

extern const struct kv_vmstate_desc fuzz_dev_vmsd;

struct fuzz_vm_opts {
	bool allocator;       /* destination: create announced blocks */
	uint64_t extra_block; /* source: also send a zeroed "mem2" this big */
};

/* Build the machine: savevm named FUZZ_MACHINE, "ram" with mem0 and mem1
 * (zero-filled), then what opts asks for, and the device. */
int fuzz_vm_init(struct fuzz_vm *vm, const struct fuzz_vm_opts *opts,
		 struct kv_error *err);
/* Free everything; afterwards vm->alloc.live_* must be 0. */
void fuzz_vm_fini(struct fuzz_vm *vm);

#endif
