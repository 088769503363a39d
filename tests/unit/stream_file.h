/* SPDX-License-Identifier: MIT */
/* Test helpers: a stream written to a temporary file and read back, and a
 * stream reading given bytes. Failures are cmocka assertions. */
#ifndef KV_TESTS_STREAM_FILE_H
#define KV_TESTS_STREAM_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "io/stream.h"

/* A write stream on a new temporary file; its name goes into path. */
struct kv_stream *open_write(char *path, size_t size);
/* Close s (must succeed), return the file's bytes (malloc'd), unlink it. */
uint8_t *close_and_read(struct kv_stream *s, const char *path, size_t *len);
/* A read stream over a copy of b[0..n). */
struct kv_stream *open_read_bytes(const uint8_t *b, size_t n);

#endif
