/* SPDX-License-Identifier: MIT */
/*
 * What the corpus replay test (replay_main.c) runs: each fuzz target file
 * defines this once, and one replay binary is linked per target.
 */
#ifndef KV_FUZZ_TARGET_H
#define KV_FUZZ_TARGET_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

/* Run one input through the target's invariant checks (a broken one
 * traps). Returns 0 when the input was accepted as a whole, <0 with err
 * set when the target rejected it (what "bad-*" seeds must do). */
int fuzz_target_run(const uint8_t *data, size_t size, struct kv_error *err);

#endif
