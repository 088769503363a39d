/* SPDX-License-Identifier: MIT */
/*
 * The return path: messages from the destination back to the source over
 * the same (full-duplex) channel, in QEMU's layout: be16 type, be16 length,
 * payload. The source asks for it with the OPEN_RETURN_PATH command; the
 * destination answers, after loading everything, with SHUT (be32 0 = loaded
 * and verified, 1 = failed). Only after SHUT(0) may the source give up its
 * workload. A PING command in the stream is answered with PONG carrying
 * the PING's value (as QEMU's destination does).
 */
#ifndef KV_MIGRATION_RETURN_PATH_H
#define KV_MIGRATION_RETURN_PATH_H

#include <stdint.h>

#include "base/error.h"
#include "io/channel.h"

enum kv_rp_msg {
	KV_RP_MSG_INVALID = 0,
	KV_RP_MSG_SHUT = 1,
	KV_RP_MSG_PONG = 2,
};

/* Destination: send SHUT(status). */
int kv_rp_send_shut(struct kv_chan *c, uint32_t status, struct kv_error *err);

/* Destination: answer a PING command (savevm.h) with PONG(value). */
int kv_rp_send_pong(struct kv_chan *c, uint32_t value, struct kv_error *err);

/* Source: wait up to timeout_ms for PONG(value), the destination's answer
 * to PING(value), which it sends once it has read everything before the
 * PING. PONGs with other values are skipped; a SHUT (the destination
 * failed) or anything malformed is an error. */
int kv_rp_wait_pong(struct kv_chan *c, int timeout_ms, uint32_t value,
		    struct kv_error *err);

/* Source: wait up to timeout_ms for SHUT; returns 0 and sets *status, or
 * <0 (peer closed, timeout, malformed message) with err set. */
int kv_rp_wait_shut(struct kv_chan *c, int timeout_ms, uint32_t *status,
		    struct kv_error *err);

#endif
