/* SPDX-License-Identifier: MIT */
/*
 * PACKAGED's bytes in memory (docs/FORMAT.md §12.1): the source writes
 * LISTEN, the device state and RUN into a memory channel, then sends its
 * length and its bytes; the destination reads those L bytes first and
 * loads them from a memory channel while the main stream goes on
 * carrying pages (QEMU's reason for the package: the device state must be
 * read off the socket before a device's load may fault on a page).
 *
 * A channel here is an ordinary struct kv_chan, so a struct kv_stream
 * runs over it unchanged; it has no return path and never blocks.
 */
#ifndef KV_MIGRATION_POSTCOPY_PACKAGE_H
#define KV_MIGRATION_POSTCOPY_PACKAGE_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "io/channel.h"

/* A channel that keeps every byte written to it. */
struct kv_chan *kv_pc_pkg_writer_new(struct kv_error *err);
/* The bytes written so far (valid until the channel is closed). */
const uint8_t *kv_pc_pkg_bytes(const struct kv_chan *c, size_t *len);

/* A channel that reads buf[0..len) and then EOF; it frees buf when
 * closed (also when this fails). */
struct kv_chan *kv_pc_pkg_reader_new(uint8_t *buf, size_t len,
				     struct kv_error *err);

#endif
