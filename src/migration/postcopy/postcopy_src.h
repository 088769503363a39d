/* SPDX-License-Identifier: MIT */
/*
 * The source's side of postcopy's page requests: the return path's reader
 * queues every REQ_PAGES / REQ_PAGES_ID after checking it against the RAM
 * blocks (a known block, or the previous request's for REQ_PAGES; aligned
 * to the block's pages; inside it); the RAM saver asks for the next
 * urgent page before each background page, and moves its background scan
 * to just after the page it served (the guest tends to touch neighbours
 * next). Every page is sent at most once after the switch: the urgent
 * path and the background scan claim a page in one "sent since the
 * switch" bitmap, so a request for a page already on its way is dropped.
 *
 * Threads: kv_pc_src_request on the return path's reader; the rest on the
 * sending threads (main stream, preempt channel). All may run at once.
 */
#ifndef KV_MIGRATION_POSTCOPY_SRC_H
#define KV_MIGRATION_POSTCOPY_SRC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "migration/postcopy/postcopy_wire.h"

struct kv_pc_src;

/* More requests waiting than this means a destination gone wrong. */
#define KV_PC_SRC_QUEUE_MAX 4096U

struct kv_pc_page {
	size_t block;
	uint64_t offset; /* bytes, a multiple of KV_PAGE_SIZE */
};

struct kv_pc_src_stats {
	uint64_t requests;   /* requests queued (QEMU's postcopy-requests) */
	uint64_t urgent;     /* pages served from requests */
	uint64_t duplicates; /* requested pages already sent since the switch */
	uint64_t background; /* pages the background scan claimed */
};

/* blocks (names copied) with their page sizes. */
struct kv_pc_src *kv_pc_src_new(const struct kv_pc_blocks *blocks,
				struct kv_error *err);
void kv_pc_src_free(struct kv_pc_src *s);

/* A decoded request (postcopy_wire.h's kv_pc_req_decode) checked and
 * queued; -EINVAL with err naming the block, the range and the rule, or
 * -ENOSPC when KV_PC_SRC_QUEUE_MAX requests wait. */
int kv_pc_src_request(struct kv_pc_src *s, const struct kv_pc_req *r,
		      struct kv_error *err);
/* The same from a return-path message (type REQ_PAGES or REQ_PAGES_ID). */
int kv_pc_src_handle_message(struct kv_pc_src *s, uint16_t type,
			     const uint8_t *p, size_t len,
			     struct kv_error *err);

/* The next requested page not yet sent since the switch, claimed: the
 * caller sends it. false when no request waits. */
bool kv_pc_src_next_urgent(struct kv_pc_src *s, struct kv_pc_page *pg);
/* Wait up to timeout_ms (-1: no limit) for a request: 1 one waits, 0
 * timeout or kv_pc_src_wake. */
int kv_pc_src_wait_urgent(struct kv_pc_src *s, int timeout_ms);
/* postcopy-preempt, or multifd during postcopy: kv_pc_src_next_urgent
 * serves a requested page even when the background already sent it
 * (still queued behind other pages on the main stream or a multifd
 * channel, while a vCPU waits); the destination keeps the first copy
 * that arrives. Off by default. */
void kv_pc_src_set_resend(struct kv_pc_src *s, bool on);
void kv_pc_src_wake(struct kv_pc_src *s);

/* The background scan claims a page before sending it: false if it was
 * sent since the switch (skip it). */
bool kv_pc_src_claim(struct kv_pc_src *s, size_t block, uint64_t offset);
/* Where the background scan goes next: true once after each urgent page
 * served, with the page just after it (the next block's first page at a
 * block's end). */
bool kv_pc_src_take_scan_hint(struct kv_pc_src *s, struct kv_pc_page *pg);

/* Recovery: the destination's received bitmap of a block (RECV_BITMAP)
 * replaces what was sent: a page sent but lost with the link is sent
 * again, a page it has is never resent. */
void kv_pc_src_set_received(struct kv_pc_src *s, size_t block,
			    const unsigned long *received);
/* Drop every queued request (the link broke: the destination asks again). */
void kv_pc_src_flush(struct kv_pc_src *s);

void kv_pc_src_get_stats(struct kv_pc_src *s, struct kv_pc_src_stats *st);

#endif
