/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target over the destination loader (kv_savevm_load with the RAM
 * handler and a device). The input is served from a memfd through an fd
 * channel, so the loader reads it exactly as it would read a file stream.
 *
 * Beyond "no crash, no leak, no hang" (the sanitizers and libFuzzer's
 * timeout watch those), every run checks the loader's contract:
 *  - it fails if and only if it filled the error, with a message;
 *  - it never claims to have consumed more bytes than there were;
 *  - every block the allocator handed out is released by the time the
 *    machine is freed, and never more than the cap is asked for
 *    (fuzz_vm.c traps on that one).
 */
#define _GNU_SOURCE
#include "fuzz_loader.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz_target.h"
#include "fuzz_vm.h"
#include "io/channel.h"
#include "io/stream.h"
#include "migration/ram/ram.h"
#include "migration/savevm/savevm.h"

static void fuzz_check(int ok, const char *what, const struct kv_error *err)
{
	if (ok)
		return;
	fprintf(stderr, "fuzz_loader: invariant broken: %s (error %d: %s)\n",
		what, err ? err->code : 0, err ? err->msg : "");
	__builtin_trap();
}

/* A memfd holding the input, positioned at its start. */
static int input_fd(const uint8_t *data, size_t size)
{
	int fd = memfd_create("kvmig-fuzz-input", MFD_CLOEXEC);
	size_t done = 0;

	if (fd < 0)
		return -errno;
	while (done < size) {
		ssize_t n = write(fd, data + done, size - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int e = n < 0 ? -errno : -EIO;

			close(fd);
			return e;
		}
		done += (size_t)n;
	}
	if (lseek(fd, 0, SEEK_SET) != 0) {
		int e = -errno;

		close(fd);
		return e;
	}
	return fd;
}

static int load_into(struct fuzz_vm *vm, const uint8_t *data, size_t size,
		     struct kv_error *err)
{
	struct kv_load_result res = { 0 };
	struct kv_stream *s;
	struct kv_chan *chan;
	int fd, ret;

	fd = input_fd(data, size);
	if (fd < 0)
		return kv_error_set_errno(err, fd, "fuzz: memfd");
	chan = kv_chan_from_fd(fd, "fuzz-input", err);
	if (!chan) {
		close(fd);
		return err->code ? err->code : -EIO;
	}
	s = kv_stream_new(chan, KV_STREAM_READ);
	if (!s) {
		kv_chan_close(chan);
		return kv_error_set(err, -ENOMEM, "fuzz: stream");
	}
	ret = kv_savevm_load(vm->sv, s, &res, err);
	kv_stream_close(s);

	fuzz_check(ret <= 0, "kv_savevm_load returned a positive value", err);
	fuzz_check((ret < 0) == kv_error_is_set(err),
		   "failure and a filled error must go together", err);
	fuzz_check(ret == 0 || (err->code < 0 && err->msg[0] != '\0'),
		   "a failure must carry a negative code and a message", err);
	fuzz_check(res.bytes <= size, "consumed more bytes than the input",
		   err);
	return ret;
}

/* Postcopy's commands reach the loader's checks (lengths, order, the
 * decoders against the machine's blocks, the package and its listen
 * thread); the pages stay plain memory here (no userfaultfd). */
struct fuzz_pc {
	struct kv_pc_blocks blocks;
};

static int fpc_advise(void *o, const struct kv_pc_advise *a,
		      struct kv_error *err)
{
	(void)o;
	(void)a;
	(void)err;
	return 0;
}

static const struct kv_pc_blocks *fpc_blocks(void *o)
{
	return &((struct fuzz_pc *)o)->blocks;
}

static int fpc_discard(void *o, const struct kv_pc_discard *d,
		       struct kv_error *err)
{
	const struct kv_pc_blocks *b = fpc_blocks(o);

	for (size_t i = 0; i < d->nranges; i++)
		if (kv_pc_check_range(&b->v[d->block], d->ranges[i].start,
				      d->ranges[i].len, "fuzz: discard",
				      err) < 0)
			fuzz_check(0, "a discard range the decoder let through is not a range of the block", err);
	return 0;
}

static int fpc_step(void *o, struct kv_error *err)
{
	(void)o;
	(void)err;
	return 0;
}

static int fpc_pong(void *o, uint32_t value, struct kv_error *err)
{
	(void)o;
	(void)value;
	(void)err;
	return 0;
}

int fuzz_load_stream(const uint8_t *data, size_t size, struct kv_error *err)
{
	const struct fuzz_vm_opts opts = { .allocator = true };
	struct fuzz_pc pc = { 0 };
	const struct kv_savevm_pc_ops pc_ops = {
		.advise = fpc_advise,
		.blocks = fpc_blocks,
		.discard = fpc_discard,
		.listen = fpc_step,
		.run = fpc_step,
		.send_pong = fpc_pong,
		.opaque = &pc,
	};
	struct fuzz_vm vm;
	size_t n = 0;
	int ret;

	kv_error_clear(err);
	ret = fuzz_vm_init(&vm, &opts, err);
	if (ret < 0) {
		/* The harness's own set-up must work on every input. */
		fuzz_check(0, "fuzz machine set-up failed", err);
	}
	/* The blocks as the machine has them before the stream (the
	 * allocator's come later and are not postcopy's). */
	pc.blocks.v = kv_ram_pc_blocks(vm.rs, &n);
	pc.blocks.n = n;
	kv_savevm_set_postcopy(vm.sv, &pc_ops);
	ret = load_into(&vm, data, size, err);
	/* A stream that breaks after POSTCOPY_RUN pauses the load; a
	 * destination gives it up when it ends (incoming.c does the same). */
	kv_savevm_load_abandon(vm.sv);
	fuzz_vm_fini(&vm);
	free((void *)pc.blocks.v);
	fuzz_check(vm.alloc.live_blocks == 0 && vm.alloc.live_bytes == 0,
		   "allocated RAM blocks were not released", NULL);
	return ret;
}

int fuzz_target_run(const uint8_t *data, size_t size, struct kv_error *err)
{
	return fuzz_load_stream(data, size, err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kv_error err = { 0 };

	fuzz_load_stream(data, size, &err);
	return 0;
}
