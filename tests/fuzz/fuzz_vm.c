/* SPDX-License-Identifier: MIT */
#include "fuzz_vm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* A byte value the device refuses after loading: exercises the path where
 * a post_load hook fails the whole load. */
#define FUZZ_DEV_REJECTED_A 0xee

static bool extra_needed(void *opaque)
{
	const struct fuzz_dev *d = opaque;

	return d->send_extra;
}

static int extra_post_load(void *opaque, int version_id, struct kv_error *err)
{
	struct fuzz_dev *d = opaque;

	d->extra_post_loads++;
	return 0;
}

static int dev_post_load(void *opaque, int version_id, struct kv_error *err)
{
	struct fuzz_dev *d = opaque;

	d->post_loads++;
	if (d->a == FUZZ_DEV_REJECTED_A)
		return kv_error_set(err, -EINVAL,
				    "fuzzdev: field a=0x%x is reserved", d->a);
	return 0;
}

static const struct kv_vmstate_field inner_fields[] = {
	KV_VMS_FIELD(struct fuzz_dev_inner, x, KV_VMS_U16, 1),
	KV_VMS_FIELD(struct fuzz_dev_inner, y, KV_VMS_U64, 1),
	KV_VMS_END,
};

static const struct kv_vmstate_desc inner_vmsd = {
	.name = "fuzzdev-inner",
	.version_id = 1,
	.minimum_version_id = 1,
	.fields = inner_fields,
};

static const struct kv_vmstate_field extra_fields[] = {
	KV_VMS_FIELD(struct fuzz_dev, extra_val, KV_VMS_U32, 1),
	KV_VMS_BUF(struct fuzz_dev, extra_buf, 1),
	KV_VMS_END,
};

static const struct kv_vmstate_desc extra_vmsd = {
	.name = "fuzzdev/extra",
	.version_id = 1,
	.minimum_version_id = 1,
	.fields = extra_fields,
	.needed = extra_needed,
	.post_load = extra_post_load,
};

static const struct kv_vmstate_desc *const dev_subsections[] = {
	&extra_vmsd,
	NULL,
};

static const struct kv_vmstate_field dev_fields[] = {
	KV_VMS_FIELD(struct fuzz_dev, a, KV_VMS_U8, 1),
	KV_VMS_FIELD(struct fuzz_dev, b, KV_VMS_U16, 1),
	KV_VMS_FIELD(struct fuzz_dev, c, KV_VMS_U32, 1),
	KV_VMS_FIELD(struct fuzz_dev, d, KV_VMS_U64, 1),
	KV_VMS_FIELD(struct fuzz_dev, e, KV_VMS_I32, 1),
	KV_VMS_FIELD(struct fuzz_dev, f, KV_VMS_BOOL, 1),
	KV_VMS_FIELD(struct fuzz_dev, g, KV_VMS_I64, 2),
	KV_VMS_BUF(struct fuzz_dev, buf, 1),
	KV_VMS_ARRAY(struct fuzz_dev, arr, KV_VMS_U32, 4, 1),
	KV_VMS_STRUCT_FIELD(struct fuzz_dev, inner, &inner_vmsd,
			    struct fuzz_dev_inner, 1),
	KV_VMS_END,
};

const struct kv_vmstate_desc fuzz_dev_vmsd = {
	.name = FUZZ_DEV_IDSTR,
	.version_id = FUZZ_DEV_VERSION,
	.minimum_version_id = 1,
	.fields = dev_fields,
	.subsections = dev_subsections,
	.post_load = dev_post_load,
};

static void *fuzz_alloc_block(void *opaque, const char *idstr,
			      uint64_t length, struct kv_error *err)
{
	struct fuzz_alloc *a = opaque;
	void *p;

	/* The RAM loader owns the cap: asking past it is a loader bug, and
	 * trapping here makes the fuzzer report it. */
	if (length > a->max_total || a->live_bytes + length > a->max_total ||
	    length % KV_PAGE_SIZE)
		__builtin_trap();
	p = calloc(1, length ? (size_t)length : 1);
	if (!p) {
		kv_error_set(err, -ENOMEM, "fuzz: cannot allocate block '%s'",
			     idstr);
		return NULL;
	}
	a->live_bytes += length;
	a->live_blocks++;
	return p;
}

static void fuzz_release_block(void *opaque, void *host, uint64_t length)
{
	struct fuzz_alloc *a = opaque;

	/* Releasing more than was handed out means a double release. */
	if (a->live_blocks == 0 || a->live_bytes < length)
		__builtin_trap();
	a->live_bytes -= length;
	a->live_blocks--;
	free(host);
}

static int add_ram(struct fuzz_vm *vm, const struct fuzz_vm_opts *opts,
		   struct kv_error *err)
{
	int ret;

	vm->rs = kv_ram_new();
	vm->mem0 = calloc(1, FUZZ_MEM0_SIZE);
	vm->mem1 = calloc(1, FUZZ_MEM1_SIZE);
	if (!vm->rs || !vm->mem0 || !vm->mem1)
		return kv_error_set(err, -ENOMEM, "fuzz: out of memory");
	ret = kv_ram_add_block(vm->rs, "mem0", vm->mem0, FUZZ_MEM0_SIZE, err);
	if (ret < 0)
		return ret;
	ret = kv_ram_add_block(vm->rs, "mem1", vm->mem1, FUZZ_MEM1_SIZE, err);
	if (ret < 0)
		return ret;
	if (opts->extra_block) {
		vm->mem2_size = opts->extra_block;
		vm->mem2 = calloc(1, (size_t)vm->mem2_size);
		if (!vm->mem2)
			return kv_error_set(err, -ENOMEM, "fuzz: out of memory");
		ret = kv_ram_add_block(vm->rs, "mem2", vm->mem2, vm->mem2_size,
				       err);
		if (ret < 0)
			return ret;
	}
	if (opts->allocator) {
		struct kv_ram_allocator a = {
			.alloc = fuzz_alloc_block,
			.release = fuzz_release_block,
			.opaque = &vm->alloc,
			.max_total = FUZZ_ALLOC_MAX,
		};

		vm->alloc.max_total = FUZZ_ALLOC_MAX;
		kv_ram_set_allocator(vm->rs, a);
	}
	return kv_ram_register(vm->rs, vm->sv, err);
}

int fuzz_vm_init(struct fuzz_vm *vm, const struct fuzz_vm_opts *opts,
		 struct kv_error *err)
{
	int ret;

	memset(vm, 0, sizeof(*vm));
	vm->sv = kv_savevm_new(FUZZ_MACHINE);
	if (!vm->sv)
		return kv_error_set(err, -ENOMEM, "fuzz: out of memory");
	ret = add_ram(vm, opts, err);
	if (ret < 0)
		return ret;
	return kv_savevm_register_device(vm->sv, FUZZ_DEV_IDSTR, 0,
					 &fuzz_dev_vmsd, KV_PRI_DEVICE,
					 &vm->dev, err);
}

void fuzz_vm_fini(struct fuzz_vm *vm)
{
	if (vm->sv)
		kv_savevm_free(vm->sv);
	if (vm->rs)
		kv_ram_free(vm->rs);
	free(vm->mem0);
	free(vm->mem1);
	free(vm->mem2);
	vm->sv = NULL;
	vm->rs = NULL;
	vm->mem0 = vm->mem1 = vm->mem2 = NULL;
}
