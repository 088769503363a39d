/* SPDX-License-Identifier: MIT */
/*
 * multifd: RAM pages over N extra channels, each its own socket and thread
 * (QEMU's "multifd" capability). The main channel keeps the sections, the
 * ZERO records of legacy zero-page detection, and the sync points; the
 * channels carry packets of up to 128 pages of one RAM block
 * (multifd_packet.h), raw or compressed (codec/codec.h).
 *
 * Ordering. A page is sent at most once per pass; every pass (and the
 * switch-over) ends with a sync: the source puts a SYNC packet on every
 * channel after all its pages and waits until every channel wrote all of
 * it, then writes MULTIFD_FLUSH on the main stream. A destination channel
 * thread that reads SYNC waits there until the loader reaches that
 * MULTIFD_FLUSH and has seen every channel's SYNC. So everything of pass k
 * (on any channel, or ZERO on the main stream) is in guest memory before
 * anything of pass k+1 lands: an older copy never overwrites a newer one.
 *
 * Failure. Any channel error fails the migration: the source's next call
 * returns it (the driver then resumes the guest), the destination shuts its
 * main channel so the loader stops at once, and no vCPU ever runs.
 *
 * Postcopy (kvmig's extension; QEMU 7.2 refuses multifd with postcopy):
 * after the switch's sync the background pages go on the channels in
 * POSTCOPY packets, which the destination holds until LISTEN and then
 * places through userfaultfd (kv_mfd_target.place). Each page leaves the
 * source once, so no sync orders them; the last one before END makes sure
 * every page is placed. A channel error then pauses postcopy instead
 * (the guest runs on the destination): the caller shuts the main stream.
 */
#ifndef KV_MIGRATION_MULTIFD_H
#define KV_MIGRATION_MULTIFD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "base/rate_limit.h"
#include "io/channel.h"
#include "migration/multifd/multifd_packet.h"

struct kv_mig_tls; /* migration/migration.h */

/* zero-page-detection (QEMU's names). */
enum kv_mfd_zero {
	KV_MFD_ZERO_NONE,    /* every page goes as data */
	KV_MFD_ZERO_LEGACY,  /* the migration thread: ZERO records, main */
	KV_MFD_ZERO_MULTIFD, /* the channel threads: packets' zero lists */
};

struct kv_mfd_config {
	unsigned channels; /* 1..255 */
	enum kv_mfd_method method;
	int level; /* KV_MFD_LEVEL_DEFAULT or the method's level */
	enum kv_mfd_zero zero;
	/* Source: max-bandwidth, the limiter the main stream charges too
	 * (NULL: none). The caller keeps it alive until the channels end. */
	struct kv_rate_limit *rate_limit;
	/* Source: abandons the channels' connects (NULL: none), and how
	 * long each may wait for an answer (0: the kernel's limit). */
	const struct kv_cancel *cancel;
	uint64_t connect_timeout_ms;
	/* x-link-timeout (io/channel.h, kv_chan_set_silence): every channel
	 * notes its signs of life in activity (NULL: not watched); the
	 * source's fail a write that waited silence_ms with none on any
	 * channel of the migration. The destination's never fail by
	 * themselves: its loader judges (kv_mfd_recv_sync too). */
	uint64_t silence_ms;
	struct kv_chan_activity *activity;
	/* TLS on every channel (migration/tls_hook.h; NULL: none). The
	 * caller keeps it alive until the channels end. */
	const struct kv_mig_tls *tls;
};

/* "none", "legacy", "multifd" <-> enum; -EINVAL with err on a bad name. */
int kv_mfd_zero_parse(const char *name, enum kv_mfd_zero *zero,
		      struct kv_error *err);
const char *kv_mfd_zero_name(enum kv_mfd_zero zero);

/* ---- source ---- */

struct kv_mfd_send;

/* Connect cfg->channels channels to uri (after the main channel), send
 * each its init message and start its thread. */
struct kv_mfd_send *kv_mfd_send_start(const char *uri,
				      const struct kv_mfd_config *cfg,
				      struct kv_error *err);
/* Queue one page (block name, its host address, its offset in the block)
 * for a channel; known_zero: the caller knows it reads as zero. The same
 * block must always come with the same name pointer (a page of another
 * block starts a new packet). Blocks while every channel is busy. Returns
 * 0 or a channel's error. */
int kv_mfd_send_page(struct kv_mfd_send *m, const char *block,
		     const uint8_t *page, uint64_t offset, bool known_zero,
		     struct kv_error *err);
/* The end of a pass or of the switch-over: send what is queued, a SYNC
 * packet on every channel, and wait until all of it is written. The
 * caller then writes MULTIFD_FLUSH on the main stream. */
int kv_mfd_send_sync(struct kv_mfd_send *m, struct kv_error *err);
/* Postcopy (docs/DESIGN.md "Postcopy", multifd during postcopy): called
 * once after the switch's sync, with nothing queued. From then on every
 * packet carries the POSTCOPY flag (the destination places its pages
 * through userfaultfd) and max-bandwidth no longer holds them back (QEMU's
 * max-postcopy-bandwidth, 0: none). */
void kv_mfd_send_set_postcopy(struct kv_mfd_send *m);
/* Whether a channel has room for a job now (or a failure is waiting to
 * be reported): the postcopy scan serves requested pages instead of
 * blocking behind busy channels. */
bool kv_mfd_send_has_room(struct kv_mfd_send *m);
/* Bytes written to the channels that the destination has not
 * acknowledged yet (the sum of their kv_chan_unsent). */
int64_t kv_mfd_send_unsent(struct kv_mfd_send *m);
/* Counters, any thread. */
uint64_t kv_mfd_send_bytes(const struct kv_mfd_send *m);
void kv_mfd_send_pages(const struct kv_mfd_send *m, uint64_t *normal,
		       uint64_t *zero);
/* Make every blocked or later call fail with -ECANCELED. Any thread. */
void kv_mfd_send_cancel(struct kv_mfd_send *m);
/* Stop the threads, close the channels, free. */
void kv_mfd_send_free(struct kv_mfd_send *m);

/* ---- destination ---- */

/* Where received pages go: the block's memory and length by name, and a
 * bitmap of pages written in this load (set atomically; NULL: unknown, a
 * zero page is then always written). Called by channel threads after the
 * loader said the blocks are known (kv_mfd_recv_blocks_ready). */
struct kv_mfd_target {
	int (*block)(void *opaque, const char *name, uint8_t **host,
		     uint64_t *len, unsigned long **written);
	/* Optional: a packet's pages are in memory (offs: the normal ones,
	 * then the zero ones), called on the channel's thread. */
	void (*placed)(void *opaque, const uint8_t *host, const uint64_t *offs,
		       uint32_t normal, uint32_t zero);
	/* Optional (postcopy-ram): a POSTCOPY packet's pages, once
	 * kv_mfd_recv_pc_listen opened the way: data holds the normal
	 * pages one after the other (offs: the normal ones, then the zero
	 * ones). Each page is placed once, whichever path brings it first;
	 * 0, or <0 with err set. NULL: POSTCOPY packets are refused. */
	int (*place)(void *opaque, const uint8_t *host, const uint64_t *offs,
		     const uint8_t *data, uint32_t normal, uint32_t zero,
		     struct kv_error *err);
	void *opaque;
};

struct kv_mfd_recv;

/* A receiver for cfg->channels channels; main: the main channel, shut
 * down when a channel fails so that the loader stops. */
struct kv_mfd_recv *kv_mfd_recv_new(const struct kv_mfd_config *cfg,
				    const struct kv_mfd_target *target,
				    struct kv_chan *main, struct kv_error *err);
/* Accept the channels from l on a thread of its own (each sends its init
 * message first; any order). A connection that does not send the multifd
 * magic within hello_ns, or names a channel that came already, is not
 * one of them: it is dropped with a warning and the migration goes on. */
int kv_mfd_recv_accept(struct kv_mfd_recv *r, struct kv_listener *l,
		       int64_t hello_ns, struct kv_error *err);
/* Hand over one connected channel (tests, fd: migrations). */
int kv_mfd_recv_add_channel(struct kv_mfd_recv *r, struct kv_chan *c,
			    struct kv_error *err);
/* The loader read the block list: channel threads may write pages. */
void kv_mfd_recv_blocks_ready(struct kv_mfd_recv *r);
/* The loader read MULTIFD_FLUSH: wait until every channel delivered all
 * it had before its SYNC, then let them go on. Fails when the main
 * channel's silence limit passes with no sign of life from the source
 * on any channel (kv_chan_check_silence). */
int kv_mfd_recv_sync(struct kv_mfd_recv *r, struct kv_error *err);
/* Postcopy's ADVISE came: POSTCOPY packets are accepted from now on
 * (refused before, and always without target->place). */
void kv_mfd_recv_pc_advise(struct kv_mfd_recv *r);
/* Postcopy's LISTEN happened (userfaultfd armed): POSTCOPY packets,
 * which wait until then, go to target->place. A packet without the flag
 * is refused from then on: its pages would land around userfaultfd. */
void kv_mfd_recv_pc_listen(struct kv_mfd_recv *r);
/* A channel's failure (its error, once: 0 when none or told already),
 * for a loader that only saw its main stream shut down because of it. */
int kv_mfd_recv_take_error(struct kv_mfd_recv *r, struct kv_error *err);
void kv_mfd_recv_pages(const struct kv_mfd_recv *r, uint64_t *normal,
		       uint64_t *zero);
/* Abort from any thread (accept, reads and waits fail). */
void kv_mfd_recv_abort(struct kv_mfd_recv *r);
/* The load ended: stop and join every thread (the channels' pages are
 * all written when this returns). Idempotent. */
void kv_mfd_recv_stop(struct kv_mfd_recv *r);
/* Stop, then free. Returns the first channel error (0 when none). */
int kv_mfd_recv_free(struct kv_mfd_recv *r, struct kv_error *err);

#endif
