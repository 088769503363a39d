/* SPDX-License-Identifier: MIT */
/*
 * The migration driver: the source's state machine and phase loop (the
 * destination's side is incoming.h). One struct kv_migration per migration;
 * two can run in one process.
 *
 * Source loop (kv_mig_run, on the caller's thread):
 *   SETUP:  header, setup of every handler
 *   ACTIVE: iterate; after each pass measure bandwidth; when
 *           pending <= bandwidth * downtime_limit (exact pending, after a
 *           dirty sync) switch over; fail after converge_timeout
 *   DEVICE: stop_vm hook; complete (last pages, device sections, EOF)
 *   then, with a return path, the commit protocol (switchover.h): OFFER,
 *   the destination's READY, GO, its SHUT(0); COMPLETED. On any failure
 *   or cancel before GO left: resume_vm if the workload was stopped;
 *   FAILED or CANCELLED. GO sent and unanswered: UNDECIDED, stopped,
 *   until the destination is heard or kv_mig_settle.
 *
 * Status changes go through one function against a transition table
 * (docs/DESIGN.md draws it).
 */
#ifndef KV_MIGRATION_MIGRATION_H
#define KV_MIGRATION_MIGRATION_H

#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"
#include "io/stream.h"
#include "migration/auto_converge.h"
#include "migration/multifd/multifd.h"
#include "migration/codec/codec.h"
#include "migration/ram/ram.h"
#include "migration/savevm/savevm.h"
#include "migration/switchover.h"

enum kv_mig_status {
	KV_MIG_NONE,
	KV_MIG_SETUP,
	KV_MIG_ACTIVE,
	KV_MIG_DEVICE,     /* workload stopped, sending the rest */
	KV_MIG_COMPLETED,
	KV_MIG_FAILED,
	KV_MIG_CANCELLING,
	KV_MIG_CANCELLED,
	/* GO was sent and not answered: the guest stays stopped here until
	 * the destination is heard or an operator settles it. kvmig's own
	 * ("x-undecided"). */
	KV_MIG_UNDECIDED,
	/* Postcopy (QEMU's names): the source stopped its guest and switched
	 * to postcopy (POSTCOPY_RUN is its GO: once it left, this side never
	 * resumes by itself); the link broke after RUN with pages only
	 * here: the guest can complete only with this source. */
	KV_MIG_POSTCOPY_ACTIVE,
	KV_MIG_POSTCOPY_PAUSED,
	/* migrate with resume: reconnecting, the received bitmaps, RESUME. */
	KV_MIG_POSTCOPY_RECOVER,
};

/* QEMU's query-migrate status names: "setup", "active", ... */
const char *kv_mig_status_name(enum kv_mig_status st);

struct kv_objects; /* io/objects.h */

struct kv_mig_params {
	uint64_t downtime_limit_ms;   /* default 300 */
	uint64_t max_bandwidth;       /* bytes/s, 0 = unlimited (default) */
	uint64_t converge_timeout_ms; /* 0 = never give up; default 0 */
	int rp_timeout_ms;            /* wait for SHUT; default 30000 */
	/* How long a connect (main and multifd channels) waits for the
	 * destination's answer; default 30000 (x-connect-timeout). */
	uint64_t connect_timeout_ms;
	/* How long either side waits for a sign of life from the other
	 * before it fails the migration, in any phase; 0 = never; default
	 * 10000 (x-link-timeout). */
	uint64_t link_timeout_ms;
	/* XBZRLE (ram.h): cache bytes, 0 = off; default off. */
	uint64_t xbzrle_cache_size;
	/* multifd (multifd.h): extra channels, 0 = off (default); their
	 * compression and level, and where zero pages are found. */
	unsigned multifd_channels;
	enum kv_mfd_method multifd_method;
	int multifd_level;
	enum kv_mfd_zero zero_page_detection;
	/* Bytes/s the switch-over may assume instead of the measured
	 * bandwidth (QEMU's avail-switchover-bandwidth); 0 = measured. */
	uint64_t avail_switchover_bw;
	/* background-snapshot: the guest runs on while the stream gets its
	 * RAM as it was when the migration began (bg_migration.h). */
	bool background_snapshot;
	/* auto-converge: throttle the workload (hooks.set_throttle) when
	 * passes stop shrinking the dirty set; QEMU's cpu-throttle-*. */
	bool auto_converge;
	struct kv_autoconv_params throttle;
	/* Passes past the downtime limit may take at most this % of the
	 * time migrated so far (migration.c); 0 = no bound. Default 10. */
	unsigned extra_pass_time_pct;
	/* Postcopy (QEMU's postcopy-ram, postcopy-blocktime): the source may
	 * switch to postcopy (kv_mig_start_postcopy); the destination
	 * accepts it, and with blocktime measures its vCPUs' waits. */
	bool postcopy_ram;
	bool postcopy_blocktime;
	/* postcopy-preempt: requested pages on a connection of their own,
	 * opened at setup (both sides). */
	bool postcopy_preempt;
	/* x-postcopy-auto (kvmig's): with postcopy-ram, the source switches
	 * to postcopy by itself when precopy will not converge
	 * (postcopy/postcopy_auto.h). */
	bool postcopy_auto;
	/* Pages on the main stream compressed: off, auto (the default:
	 * while the link is the bottleneck and it pays) or always (ram.h,
	 * x-compress). */
	enum kv_ram_compress compress;
	/* mapped-ram: a file: migration gives every page its place in the
	 * file (migration/ram/mapped_ram.h); direct-io: its pages with
	 * O_DIRECT. */
	bool mapped_ram;
	bool direct_io;
	/* TLS on every channel (QEMU's tls-creds, tls-hostname, tls-authz;
	 * migration/tls_hook.h): ids of --object's, "" for none, and the
	 * table they are looked up in (the VM's; not a client's setting). */
	struct kv_mig_tls {
		char creds[64];
		char hostname[256];
		char authz[64];
		const struct kv_objects *objects;
	} tls;
};

/* The default of extra_pass_time_pct (not a client's setting). */
#define KV_MIG_EXTRA_PASS_TIME_PCT 10

/* The defaults of the options table (migration/options.h): every
 * capability and parameter at its default. */
void kv_mig_params_default(struct kv_mig_params *p);

struct kv_mig_progress {
	enum kv_mig_status status;
	uint64_t pass;             /* 1 = the first full pass */
	uint64_t transferred;      /* bytes on the wire so far */
	uint64_t remaining;        /* bytes still dirty */
	uint64_t total;            /* RAM bytes */
	double bandwidth;          /* bytes/s over the last pass */
	double expected_downtime_ms;
	uint64_t pass_pages;       /* pages sent in the pass just ended */
	int64_t elapsed_ms;
};

struct kv_mig_hooks {
	/* Stop the workload for switch-over (required). */
	int (*stop_vm)(void *opaque, struct kv_error *err);
	/* Resume it after a failure in DEVICE (required). */
	void (*resume_vm)(void *opaque);
	/* auto-converge: make the workload run only (100 - pct) % of the
	 * time; 0 = full speed (optional; any thread). */
	int (*set_throttle)(void *opaque, unsigned pct, struct kv_error *err);
	/* Called at the end of every pass and at every status change. */
	void (*progress)(void *opaque, const struct kv_mig_progress *p);
	void *opaque;
};

struct kv_mig_stats {
	enum kv_mig_status status;
	int64_t total_time_ms;
	int64_t setup_time_ms;
	int64_t downtime_ms;       /* stop_vm -> destination confirmed (or EOF) */
	uint64_t transferred;      /* all channels */
	uint64_t multifd_bytes;    /* of which on multifd channels */
	uint64_t passes;           /* dirty syncs */
	uint64_t dirty_peeks;	   /* looks at the tracker between syncs */
	uint64_t redirtied_skipped; /* pages a pass left to the next sync */
	uint64_t zero_pages;
	uint64_t normal_pages;
	uint64_t pages_per_pass[64]; /* first 64 passes */
	double bandwidth;          /* bytes/s, last pass */
	struct kv_ram_xbzrle_stats xbzrle;
	struct kv_ram_compress_stats compress;
	unsigned throttle_pct;     /* auto-converge: now, or the last one
				    * once the migration ended */
	unsigned throttle_max_pct; /* the highest it went */
	bool return_path;          /* the destination confirms (sockets) */
	uint64_t postcopy_requests; /* pages the destination asked for */
	char postcopy_auto_reason[384]; /* why x-postcopy-auto switched */
	char error[KV_ERROR_MSG_MAX]; /* why it failed: stored before the
				       * status says failed */
};

struct kv_migration;

/* sv and rs must outlive the migration; rs may be NULL if nothing is RAM. */
struct kv_migration *kv_mig_new(struct kv_savevm *sv, struct kv_ram_state *rs,
				const struct kv_mig_params *params,
				const struct kv_mig_hooks *hooks);
void kv_mig_free(struct kv_migration *m);

/* Run a whole source migration over s (which it does not close). Returns
 * 0 when COMPLETED; <0 with err set otherwise. */
int kv_mig_run(struct kv_migration *m, struct kv_stream *s,
	       struct kv_error *err);

/* Connect to uri (tcp, unix, file, fd), open the multifd channels the
 * parameters ask for, and run the whole migration (kv_mig_run); the
 * connection closes when it returns. The status is SETUP while it
 * connects; kv_mig_cancel abandons a connect at once, and a connect with
 * no answer within params.connect_timeout_ms fails. A connection that
 * cannot be set up makes the migration FAILED (CANCELLED after a cancel).
 * Returns 0 when COMPLETED; <0 with err set otherwise. */
int kv_mig_run_uri(struct kv_migration *m, const char *uri,
		   struct kv_error *err);

/* The multifd part of the parameters (channels 0: multifd off). */
struct kv_mfd_config kv_mig_params_mfd(const struct kv_mig_params *p);

/* From any thread. A cancel after GO left does nothing (the guest is the
 * destination's); it also stops an ABORT still being delivered. */
void kv_mig_cancel(struct kv_migration *m);
/* The process is going away: an undecided migration stops asking the
 * destination (its status stays UNDECIDED, its guest stopped) and an
 * ABORT being delivered stops; kv_mig_run_uri then returns. */
void kv_mig_stop_resolving(struct kv_migration *m);
/* An operator's word on an UNDECIDED migration (QMP x-migrate-settle):
 * RUN resumes the guest here (FAILED), DISCARD gives it up (COMPLETED).
 * -EBUSY with err set when the migration is not undecided. */
int kv_mig_settle(struct kv_migration *m, enum kv_swo_settle how,
		  struct kv_error *err);
/* QMP migrate-start-postcopy (any thread): switch to postcopy as soon as
 * the current section is written, in any pass (the first one too).
 * -EINVAL with err set when postcopy-ram is off, -EBUSY when the
 * migration has not started or is past the point where it could. */
int kv_mig_start_postcopy(struct kv_migration *m, struct kv_error *err);
/* QMP migrate {uri, resume: true} (any thread): a POSTCOPY_PAUSED
 * migration reconnects to uri (the destination's migrate-recover
 * address) and goes on. -EBUSY with err set when it is not paused. */
int kv_mig_resume(struct kv_migration *m, const char *uri,
		  struct kv_error *err);
/* QMP migrate-pause: break the link of a postcopy in progress on purpose
 * (it pauses, as for any break). -EBUSY when not in postcopy-active. */
int kv_mig_pause(struct kv_migration *m, struct kv_error *err);
/* QEMU's refusal of migrate-pause outside postcopy (-EBUSY), for the
 * destination's and the VM's callers too. */
int kv_mig_pause_refused(struct kv_error *err);
void kv_mig_set_downtime_limit(struct kv_migration *m, uint64_t ms);
void kv_mig_set_max_bandwidth(struct kv_migration *m, uint64_t bytes_per_sec);
enum kv_mig_status kv_mig_status(const struct kv_migration *m);
void kv_mig_get_stats(const struct kv_migration *m, struct kv_mig_stats *st);

#endif
