/* SPDX-License-Identifier: MIT */
/*
 * The loader fuzz target, shared by the libFuzzer build and the corpus replay
 * test: one input = the bytes of a migration stream, loaded into the machine
 * of fuzz_vm.h. Any broken invariant traps (libFuzzer then saves the input).
 */
#ifndef KV_FUZZ_LOADER_H
#define KV_FUZZ_LOADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

/* Load data as a stream; returns what kv_savevm_load returned (err filled
 * on failure), or a negative errno if the harness itself could not run. */
int fuzz_load_stream(const uint8_t *data, size_t size, struct kv_error *err);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
