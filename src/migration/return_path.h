/* SPDX-License-Identifier: MIT */
/*
 * The return path: messages from the destination back to the source over
 * the same (full-duplex) channel, in QEMU's layout: be16 type, be16 length,
 * payload. The source asks for it with the OPEN_RETURN_PATH command; the
 * destination answers, after loading everything, with SHUT (be32 0 = loaded
 * and verified, 1 = failed). Only after SHUT(0) may the source give up its
 * workload. A PING command in the stream is answered with PONG carrying
 * the PING's value (as QEMU's destination does).
 *
 * On the source a reader thread reads every message as it comes, checks it
 * against the message table in return_path.c (type, name, length rule,
 * handler) and hands it to its handler; the migration thread waits on what
 * the handlers recorded. So the source notices a SHUT(1) or a broken
 * return path while it is still sending, not only when it next waits, and
 * messages that need an answer at any time (postcopy's page requests) have
 * a thread to serve them.
 */
#ifndef KV_MIGRATION_RETURN_PATH_H
#define KV_MIGRATION_RETURN_PATH_H

#include <pthread.h>
#include <stdint.h>

#include "base/error.h"
#include "io/channel.h"
#include "migration/switchover.h"

/* QEMU's numbers (enum mig_rp_message_type in its migration.c). */
enum kv_rp_msg {
	KV_RP_MSG_INVALID = 0,
	KV_RP_MSG_SHUT = 1,
	KV_RP_MSG_PONG = 2,
	KV_RP_MSG_REQ_PAGES_ID = 3,
	KV_RP_MSG_REQ_PAGES = 4,
	KV_RP_MSG_RECV_BITMAP = 5,
	KV_RP_MSG_RESUME_ACK = 6,
	KV_RP_MSG_SWITCHOVER_ACK = 7,
	/* kvmig's own (switchover.h): loaded, committed, waiting for the
	 * decision. Far above QEMU's numbers, so that none of QEMU's
	 * future messages can be taken for it. */
	KV_RP_MSG_READY = 0x4b01,
};

/* The longest payload a source accepts (QEMU's return-path buffer). */
#define KV_RP_MAX_PAYLOAD 512

/* The table's name of a message type ("SHUT"), NULL for an unknown one. */
const char *kv_rp_msg_name(uint16_t type);

/* Is a header acceptable, before its payload is read: a known type, and a
 * length its rule allows? 0, or -EPROTO with err naming type and length. */
int kv_rp_check_header(uint16_t type, uint16_t len, struct kv_error *err);

/* The whole message, for rules that depend on the payload (a name length
 * byte inside it). 0 or -EPROTO. */
int kv_rp_check_message(uint16_t type, const uint8_t *payload, uint16_t len,
			struct kv_error *err);

/* Destination: send SHUT(status). */
int kv_rp_send_shut(struct kv_chan *c, uint32_t status, struct kv_error *err);

/* Destination: READY(id), loaded and committed, waiting for the
 * source's decision. */
int kv_rp_send_ready(struct kv_chan *c, const struct kv_swo_id *id,
		     struct kv_error *err);

/* Destination: answer a PING command (savevm.h) with PONG(value). */
int kv_rp_send_pong(struct kv_chan *c, uint32_t value, struct kv_error *err);

/* Destination: a return path that several threads write (postcopy: the
 * loader's PONG and SHUT, the fault thread's page requests), one whole
 * message at a time (QEMU's rp_mutex). */
struct kv_rp_writer {
	struct kv_chan *c;
	pthread_mutex_t lock;
};
void kv_rp_writer_init(struct kv_rp_writer *w, struct kv_chan *c);
void kv_rp_writer_destroy(struct kv_rp_writer *w);
/* Header (type, len) and payload in one write, under the lock. */
int kv_rp_writer_send(struct kv_rp_writer *w, uint16_t type,
		      const void *payload, uint16_t len, struct kv_error *err);
int kv_rp_writer_send_u32(struct kv_rp_writer *w, uint16_t type,
			  uint32_t value, struct kv_error *err);
/* A message and bytes that follow it on the return path (RECV_BITMAP and
 * its bitmap), in one write. */
int kv_rp_writer_send_tail(struct kv_rp_writer *w, uint16_t type,
			   const void *payload, uint16_t len, const void *tail,
			   size_t tail_len, struct kv_error *err);
/* The return path moved to a new channel (postcopy recovery). */
void kv_rp_writer_switch(struct kv_rp_writer *w, struct kv_chan *c);

/*
 * Source: the reader thread. Started when the migration opens its return
 * path; it ends by itself after SHUT, at EOF, on a malformed or
 * unsupported message, or when the channel is shut down. A failure (and
 * SHUT with a non-zero status) also shuts the channel down, so a
 * migration thread blocked writing to a destination that gave up returns
 * at once. Stop it (joins) before closing the channel.
 */
struct kv_rp_reader;

struct kv_rp_reader *kv_rp_reader_start(struct kv_chan *c,
					struct kv_error *err);
void kv_rp_reader_stop(struct kv_rp_reader *r);

/* The reader's own failure (a malformed message, a silent link past
 * x-link-timeout, ...) once it ended on one, with err set; 0 while it
 * runs or when it ended on SHUT, EOF or a cancel. Any thread. */
int kv_rp_reader_verdict(struct kv_rp_reader *r, struct kv_error *err);

/* Postcopy: from now on REQ_PAGES and REQ_PAGES_ID are queued in pcs
 * (postcopy_src.h), which must outlive the reader; before, they are
 * refused as unsupported. Any thread. */
struct kv_pc_src;
void kv_rp_reader_set_postcopy(struct kv_rp_reader *r, struct kv_pc_src *pcs);
/* Postcopy recovery: wait up to timeout_ms for the received bitmap of
 * block idstr (the whole blob of FORMAT.md 12.5, not yet checked; the
 * caller frees it), or for RESUME_ACK. <0 with err set: it never came. */
int kv_rp_reader_wait_bitmap(struct kv_rp_reader *r, const char *idstr,
			     int timeout_ms, uint8_t **blob, size_t *len,
			     struct kv_error *err);
int kv_rp_reader_wait_resume_ack(struct kv_rp_reader *r, int timeout_ms,
				 struct kv_error *err);

/* Wait up to timeout_ms for PONG(value), the destination's answer to
 * PING(value), which it sends once it has read everything before the
 * PING. PONGs answer PINGs in order: a later value means value came too.
 * A SHUT (the destination failed) or the reader's failure is an error. */
int kv_rp_reader_wait_pong(struct kv_rp_reader *r, uint32_t value,
			   int timeout_ms, struct kv_error *err);

/* kv_rp_reader_wait_pong in slices, for a waiter that does something
 * between them (keepalives, the x-link-timeout check): 1 when the PONG
 * came, 0 when it did not within timeout_ns, <0 with err set when it
 * never will. */
int kv_rp_reader_wait_pong_for(struct kv_rp_reader *r, uint32_t value,
			       int64_t timeout_ns, struct kv_error *err);
/* The same for SHUT (*status set when it came). */
int kv_rp_reader_wait_shut_for(struct kv_rp_reader *r, int64_t timeout_ns,
			       uint32_t *status, struct kv_error *err);
/* The same for READY(id). */
int kv_rp_reader_wait_ready_for(struct kv_rp_reader *r,
				const struct kv_swo_id *id,
				int64_t timeout_ns, struct kv_error *err);

/* Wait up to timeout_ms (0: just look) for SHUT; returns 0 and sets
 * *status, or <0 (peer closed, timeout, malformed message) with err set. */
int kv_rp_reader_wait_shut(struct kv_rp_reader *r, int timeout_ms,
			   uint32_t *status, struct kv_error *err);

/* Wait up to timeout_ms for READY(id). A SHUT before it (the destination
 * failed), the reader's failure or the timeout is an error. */
int kv_rp_reader_wait_ready(struct kv_rp_reader *r,
			    const struct kv_swo_id *id, int timeout_ms,
			    struct kv_error *err);

#endif
