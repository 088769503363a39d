/* SPDX-License-Identifier: MIT */
/*
 * The destination's incoming migration (incoming.h).
 *
 * Status changes go through in_set_status() only, checked against the
 * table below. Only the thread that listens or runs changes the status;
 * kv_incoming_abort() from another thread sets a flag and shuts the
 * listener, stream and multifd channels down, and the run then ends
 * CANCELLED.
 *
 *   NONE -> SETUP -> ACTIVE -> COMPLETED
 *             \        \  \
 *              `--------`--`--> FAILED, CANCELLED
 *                           \
 *                            UNDECIDED -> COMPLETED, FAILED, CANCELLED
 *
 * With a return path the switch-over is a commit protocol (switchover.h):
 * loaded and committed, this side sends READY and waits for the source's
 * decision; it starts the guest only on GO. READY sent and no decision
 * (the link broke, or nothing came within x-return-path-timeout):
 * UNDECIDED. The guest stays loaded and stopped, and the incoming address
 * listens again for the source's RESOLVE (or an operator's
 * kv_incoming_settle); a timeout never turns into running. After
 * running, kv_incoming_answer_resolves keeps answering a source that did
 * not hear the confirmation.
 *
 * Postcopy adds its rows here: ACTIVE -> POSTCOPY_ACTIVE when the source
 * says POSTCOPY_RUN, POSTCOPY_ACTIVE -> POSTCOPY_PAUSED when a channel
 * breaks, POSTCOPY_PAUSED -> POSTCOPY_RECOVER when the source reconnects,
 * POSTCOPY_RECOVER -> POSTCOPY_ACTIVE, POSTCOPY_ACTIVE -> COMPLETED.
 *
 * Strangers: until a connection has sent the stream header (magic and
 * version, checked by savevm's own check) within HELLO_TIMEOUT_NS (a
 * third of x-link-timeout when shorter: hello_ns), it is not the source. One that closes, stays silent or sends other bytes is
 * dropped with a warning naming its address, and the listener goes on
 * waiting in SETUP; only a connection that passed moves the migration to
 * ACTIVE. The header bytes read to judge it are handed on to the loader
 * (a replay channel), so the stream is read from its first byte.
 *
 * Locking: `lock` guards the listener, stream, candidate and receiver
 * pointers (so an abort never touches one the run has let go of), the
 * settings and the statistics.
 */
#include "migration/incoming.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/log.h"
#include "io/channel.h"
#include "migration/multifd/multifd.h"
#include "migration/ram/mapped_ram.h"
#include "migration/return_path.h"
#include "migration/switchover.h"
#include "migration/tls_hook.h"
#include "io/tls.h"

/* How long a new connection may take to send its first bytes (the stream
 * header, or a multifd channel's init) before it is dropped as not the
 * source: a real source sends them as soon as it connected. */
#define HELLO_TIMEOUT_NS (3 * 1000000000LL)
/* take_decision(): READY went out and no decision came. */
#define IN_UNANSWERED 1
/* Postcopy: after the stream's EOF every page is here at once; this is
 * only a bound for a destination gone wrong. */
#define PC_COMPLETE_WAIT_MS 10000
/* How often an undecided wait with no listener looks for the operator's
 * word. */
#define SETTLE_POLL_NS (50 * 1000000L)

struct kv_incoming {
	struct kv_savevm *sv;
	struct kv_ram_state *rs;
	struct kv_incoming_hooks hooks;
	int status; /* enum kv_in_status, atomic */

	pthread_mutex_t lock;
	struct kv_mig_params params; /* read once ACTIVE */
	bool params_read;	     /* the source connected: params fixed */
	bool aborted;
	bool ran;
	struct kv_listener *listener;
	struct kv_chan *candidate; /* accepted, not yet judged */
	struct kv_stream *stream;
	struct kv_mfd_recv *mfd;
	char uri[300];
	int64_t accept_ns;
	struct kv_incoming_stats stats;

	/* The switch-over commit protocol (switchover.h). */
	struct kv_swo_id swo_id;
	bool swo_used;	/* READY went out: the source may ask RESOLVE */
	bool started;	/* the workload started (start_vm succeeded) */
	int settle;	/* enum kv_swo_settle, atomic: the operator's */

	/* x-link-timeout: signs of life from the source on the main stream
	 * and every multifd channel (io/channel.h). */
	struct kv_chan_activity life;

	/* Postcopy (postcopy-ram on): the return path's writer shared with
	 * the fault thread, the pages (pc, under lock for the stats), and
	 * the loader's view of them (pc_ops). */
	struct kv_rp_writer rpw;
	bool rpw_live;
	struct kv_pc_in *pc;
	struct kv_savevm_pc_ops pc_ops;
	/* Recovery: the listener migrate-recover opened (under lock), and
	 * the stream of the link that replaced the first. */
	struct kv_listener *recover_l;
	/* The first link's listener, which multifd's receiver still holds
	 * after a recovery replaced it: closed with the receiver's end. */
	struct kv_listener *retired_l;
	struct kv_stream *pc_stream;
};

static const char *const status_names[KV_IN_STATUS_COUNT] = {
    [KV_IN_NONE] = "none",
    [KV_IN_SETUP] = "setup",
    [KV_IN_ACTIVE] = "active",
    [KV_IN_COMPLETED] = "completed",
    [KV_IN_FAILED] = "failed",
    [KV_IN_CANCELLED] = "cancelled",
    [KV_IN_UNDECIDED] = "x-undecided",
    [KV_IN_POSTCOPY_ACTIVE] = "postcopy-active",
    [KV_IN_POSTCOPY_PAUSED] = "postcopy-paused",
    [KV_IN_POSTCOPY_RECOVER] = "postcopy-recover",
};

#define ST(s) (1U << (s))

static const unsigned int transitions[KV_IN_STATUS_COUNT] = {
    [KV_IN_NONE] = ST(KV_IN_SETUP),
    /* SETUP ends without a source: the accept failed or was aborted. */
    [KV_IN_SETUP] = ST(KV_IN_ACTIVE) | ST(KV_IN_FAILED) | ST(KV_IN_CANCELLED),
    [KV_IN_ACTIVE] = ST(KV_IN_COMPLETED) | ST(KV_IN_FAILED) |
		     ST(KV_IN_CANCELLED) | ST(KV_IN_UNDECIDED) |
		     ST(KV_IN_POSTCOPY_ACTIVE),
    /* COMPLETED: every page is here. PAUSED: the link broke with pages
     * missing; the guest runs here and waits on them. FAILED: the guest
     * could not start. CANCELLED: the process is going away. */
    [KV_IN_POSTCOPY_ACTIVE] = ST(KV_IN_COMPLETED) | ST(KV_IN_POSTCOPY_PAUSED) |
			      ST(KV_IN_FAILED) | ST(KV_IN_CANCELLED),
    /* migrate-recover and the source's reconnection; a new break during
     * the recovery pauses again. */
    [KV_IN_POSTCOPY_PAUSED] = ST(KV_IN_POSTCOPY_RECOVER) | ST(KV_IN_CANCELLED),
    [KV_IN_POSTCOPY_RECOVER] = ST(KV_IN_POSTCOPY_ACTIVE) |
			       ST(KV_IN_POSTCOPY_PAUSED) | ST(KV_IN_CANCELLED),
    /* The source's RESOLVE or an operator: COMPLETED runs the guest,
     * FAILED discards it; CANCELLED: the process is going away. */
    [KV_IN_UNDECIDED] =
	ST(KV_IN_COMPLETED) | ST(KV_IN_FAILED) | ST(KV_IN_CANCELLED),
    [KV_IN_COMPLETED] = 0,
    [KV_IN_FAILED] = 0,
    [KV_IN_CANCELLED] = 0,
};

const char *kv_in_status_name(enum kv_in_status st)
{
	if ((unsigned int)st >= KV_IN_STATUS_COUNT)
		return "unknown";
	return status_names[st];
}

bool kv_in_transition_allowed(enum kv_in_status from, enum kv_in_status to)
{
	if ((unsigned int)from >= KV_IN_STATUS_COUNT ||
	    (unsigned int)to >= KV_IN_STATUS_COUNT)
		return false;
	return transitions[from] & ST(to);
}

enum kv_in_status kv_incoming_status(const struct kv_incoming *in)
{
	return (enum kv_in_status)__atomic_load_n(&in->status,
						  __ATOMIC_ACQUIRE);
}

/* The one place the status changes; the observer hears every change. */
static bool in_set_status(struct kv_incoming *in, enum kv_in_status from,
			  enum kv_in_status to)
{
	int expected = (int)from;

	if (!kv_in_transition_allowed(from, to)) {
		kv_err("incoming", "refused status change %s -> %s",
		       kv_in_status_name(from), kv_in_status_name(to));
		return false;
	}
	if (!__atomic_compare_exchange_n(&in->status, &expected, (int)to,
					 false, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE))
		return false;
	if (in->hooks.status)
		in->hooks.status(in->hooks.opaque, to);
	return true;
}

struct kv_incoming *kv_incoming_new(struct kv_savevm *sv,
				    struct kv_ram_state *rs,
				    const struct kv_mig_params *params,
				    const struct kv_incoming_hooks *hooks)
{
	struct kv_incoming *in;

	if (!sv)
		return NULL;
	in = calloc(1, sizeof(*in));
	if (!in)
		return NULL;
	in->sv = sv;
	in->rs = rs;
	if (hooks)
		in->hooks = *hooks;
	if (params)
		in->params = *params;
	else
		kv_mig_params_default(&in->params);
	in->status = KV_IN_NONE;
	pthread_mutex_init(&in->lock, NULL);
	kv_chan_activity_init(&in->life, "the source", "x-link-timeout");
	return in;
}

void kv_incoming_free(struct kv_incoming *in)
{
	if (!in)
		return;
	if (in->listener)
		kv_listener_close(in->listener);
	if (in->recover_l)
		kv_listener_close(in->recover_l);
	if (in->retired_l)
		kv_listener_close(in->retired_l);
	pthread_mutex_destroy(&in->lock);
	free(in);
}

/* What of the settings the destination reads, and in which words a
 * refusal names it. */
static const char *dest_setting_changed(const struct kv_mig_params *was,
					const struct kv_mig_params *now)
{
	if (!was->multifd_channels != !now->multifd_channels)
		return "the multifd capability";
	if (!was->multifd_channels)
		return NULL;
	if (was->multifd_channels != now->multifd_channels)
		return "multifd-channels";
	if (was->multifd_method != now->multifd_method)
		return "multifd-compression";
	return NULL;
}

int kv_incoming_set_params(struct kv_incoming *in,
			   const struct kv_mig_params *p, struct kv_error *err)
{
	const char *what = NULL;

	pthread_mutex_lock(&in->lock);
	/* Read, and the run has not ended: what it uses cannot change. */
	if (in->params_read && transitions[kv_incoming_status(in)])
		what = dest_setting_changed(&in->params, p);
	else if (!in->params_read)
		in->params = *p;
	pthread_mutex_unlock(&in->lock);
	if (what)
		return kv_error_set(err, -EBUSY, "%s cannot change now: the source of the incoming migration already connected, and a destination reads its settings when the source connects; set it before the source connects (migrate on the source again after this migration ended)", what);
	return 0;
}

int kv_incoming_listen(struct kv_incoming *in, const char *uri,
		       struct kv_error *err)
{
	struct kv_listener *l;
	struct kv_mig_tls tls;

	if (kv_incoming_status(in) != KV_IN_NONE)
		return kv_error_set(err, -EBUSY, "already waiting for an incoming migration (status %s)", kv_in_status_name(kv_incoming_status(in)));
	pthread_mutex_lock(&in->lock);
	tls = in->params.tls;
	pthread_mutex_unlock(&in->lock);
	if (kv_mig_tls_check(&tls, true, err) < 0)
		return err && err->code ? err->code : -EINVAL;
	l = kv_listener_open(uri, err);
	if (!l)
		return err && err->code ? err->code : -EIO;
	pthread_mutex_lock(&in->lock);
	in->listener = l;
	snprintf(in->uri, sizeof(in->uri), "%s", kv_listener_uri(l));
	if (in->aborted)
		kv_listener_shutdown(l);
	pthread_mutex_unlock(&in->lock);
	in_set_status(in, KV_IN_NONE, KV_IN_SETUP);
	return 0;
}

const char *kv_incoming_uri(const struct kv_incoming *in)
{
	return in->uri;
}

void kv_incoming_abort(struct kv_incoming *in)
{
	pthread_mutex_lock(&in->lock);
	in->aborted = true;
	if (in->listener)
		kv_listener_shutdown(in->listener);
	kv_chan_shutdown(in->candidate);
	if (in->stream)
		kv_stream_shutdown(in->stream);
	if (in->mfd)
		kv_mfd_recv_abort(in->mfd);
	pthread_mutex_unlock(&in->lock);
}

static bool aborted(struct kv_incoming *in)
{
	bool a;

	pthread_mutex_lock(&in->lock);
	a = in->aborted;
	pthread_mutex_unlock(&in->lock);
	return a;
}

void kv_incoming_get_stats(const struct kv_incoming *in,
			   struct kv_incoming_stats *st)
{
	struct kv_incoming *m = (struct kv_incoming *)in;
	/* The status first: the error of a FAILED status is stored before
	 * it, so it is there. */
	enum kv_in_status status = kv_incoming_status(in);

	pthread_mutex_lock(&m->lock);
	*st = in->stats;
	if (in->stream) {
		st->transferred = kv_stream_transferred(in->stream);
		st->load_ns = kv_now_ns() - in->accept_ns;
	}
	if (in->pc)
		kv_pc_in_get_stats(in->pc, &st->pc);
	st->postcopy_blocktime = in->params.postcopy_blocktime;
	pthread_mutex_unlock(&m->lock);
	st->status = status;
}

static struct kv_mfd_config mfd_config(const struct kv_mig_params *p)
{
	return (struct kv_mfd_config){
	    .channels = p->multifd_channels,
	    .method = p->multifd_method,
	    .level = p->multifd_level,
	    .zero = p->zero_page_detection,
	    .tls = &p->tls,
	};
}

/* mapped-ram: the RAM handler reads the file with its own threads
 * (migration/ram/mapped_ram.h) and the configuration must name it; set
 * when the source connects, as every setting. A file: destination reads
 * a mapped-ram file whatever its own setting: the file says how it is
 * laid out. True when it is on (or may be: a file, multifd's sockets
 * have no part in it). */
static bool in_mapped_ram(struct kv_incoming *in, const struct kv_chan *c)
{
	struct kv_mapped_ram_cfg cfg;

	pthread_mutex_lock(&in->lock);
	cfg = kv_mapped_ram_cfg_of(&in->params);
	pthread_mutex_unlock(&in->lock);
	if (!in->rs)
		return false;
	kv_ram_set_mapped_ram(in->rs, &cfg);
	kv_savevm_set_mapped_ram(in->sv, kv_ram_mapped_ram_on(in->rs),
				 c->is_file);
	return cfg.on || c->is_file;
}

/* With multifd, a receiver that accepts the channels from l (which stays
 * open for them) and writes pages into the RAM; without, l closes at
 * once: a source that tries to open channels is refused. */
static int multifd_start(struct kv_incoming *in, struct kv_listener *l,
			 struct kv_chan *main, struct kv_error *err)
{
	bool mapped = in_mapped_ram(in, main);
	struct kv_mfd_config cfg;
	struct kv_mfd_target target;
	struct kv_mfd_recv *r;

	pthread_mutex_lock(&in->lock);
	cfg = mfd_config(&in->params);
	pthread_mutex_unlock(&in->lock);
	cfg.activity = &in->life;
	if (mapped || !cfg.channels || !in->rs || !l)
		return 0;
	target = kv_ram_multifd_target(in->rs);
	r = kv_mfd_recv_new(&cfg, &target, main, err);
	if (!r)
		return err->code ? err->code : -ENOMEM;
	if (kv_mfd_recv_accept(r, l, HELLO_TIMEOUT_NS, err) < 0) {
		kv_mfd_recv_free(r, NULL);
		return err->code;
	}
	kv_ram_set_multifd_recv(in->rs, r);
	pthread_mutex_lock(&in->lock);
	in->mfd = r;
	if (in->aborted)
		kv_mfd_recv_abort(r);
	pthread_mutex_unlock(&in->lock);
	return 0;
}

/* Detach and free the receiver. Returns ret, or a channel's error, which
 * then replaces err (the loader only saw the main stream shut down
 * because of it). */
static int multifd_end(struct kv_incoming *in, int ret, struct kv_error *err)
{
	struct kv_error cerr = {0};
	struct kv_mfd_recv *r;
	int cret;

	pthread_mutex_lock(&in->lock);
	r = in->mfd;
	in->mfd = NULL;
	pthread_mutex_unlock(&in->lock);
	if (!r)
		return ret;
	kv_ram_set_multifd_recv(in->rs, NULL);
	cret = kv_mfd_recv_free(r, &cerr); /* stops the threads first */
	if (ret < 0 && cret < 0) {
		kv_error_clear(err);
		kv_error_set(err, cret, "%s", cerr.msg);
		return cret;
	}
	return ret;
}

static void abort_multifd(struct kv_incoming *in)
{
	pthread_mutex_lock(&in->lock);
	if (in->mfd)
		kv_mfd_recv_abort(in->mfd);
	pthread_mutex_unlock(&in->lock);
}

static void close_listener(struct kv_incoming *in)
{
	struct kv_listener *l;

	pthread_mutex_lock(&in->lock);
	l = in->listener;
	in->listener = NULL;
	pthread_mutex_unlock(&in->lock);
	if (l)
		kv_listener_close(l);
}

/* The loader's reads of the main stream (and its waits for the multifd
 * channels) fail once the source showed no sign of life on any channel
 * for x-link-timeout: the source keeps the main stream busy with
 * keepalives meanwhile. They need the return path: sockets only. Read
 * when the source connected, as every setting. */
static void watch_source(struct kv_incoming *in, struct kv_chan *c)
{
	if (c->is_socket)
		kv_chan_set_silence(c, in->params.link_timeout_ms, &in->life);
}


/* GO: start the guest, then confirm with SHUT(0). A confirmation lost on
 * the way is answered again when the source asks (RESOLVE). */
static int start_on_go(struct kv_incoming *in, struct kv_chan *c,
		       struct kv_error *err)
{
	struct kv_error e = {0};
	int ret = 0;

	if (in->hooks.start_vm)
		ret = in->hooks.start_vm(in->hooks.opaque, err);
	kv_switch_log("dst: workload started (%d)", ret);
	if (ret < 0) {
		kv_error_prefix(err, "starting the guest after the source's GO");
		if (c)
			kv_rp_send_shut(c, 1, &e);
		return ret;
	}
	in->started = true;
	if (c && kv_rp_send_shut(c, 0, &e) < 0)
		kv_warn("incoming", "the guest runs here, but the confirmation to the source failed (%s); the source will ask again", e.msg);
	kv_switch_log("dst: SHUT(0) sent");
	return 0;
}

/* How long the decision may take once READY went out: the source answers
 * at once, so a silence of x-link-timeout (or x-return-path-timeout,
 * whichever is shorter) means the link or the source is gone. Either way
 * the end of the wait is x-undecided, never running. */
static int64_t decision_wait_ns(const struct kv_mig_params *p)
{
	uint64_t ms = (uint64_t)p->rp_timeout_ms;

	if (p->link_timeout_ms && p->link_timeout_ms < ms)
		ms = p->link_timeout_ms;
	return (int64_t)ms * 1000000;
}

/* The commit protocol's destination half, after the state is loaded and
 * committed: OFFER, READY, the decision. 0: GO, the guest runs here. <0:
 * the source keeps it (err says why). IN_UNANSWERED: READY went out and
 * no decision came (err says why): undecided. */
static int take_decision(struct kv_incoming *in, struct kv_stream *s,
			 struct kv_error *err)
{
	int64_t wait_ns = decision_wait_ns(&in->params);
	struct kv_chan *c = kv_stream_chan(s);
	enum kv_swo_decision d;
	struct kv_error e = {0};
	int ret;

	ret = kv_swo_read_offer(s, &in->swo_id, kv_now_ns() + wait_ns, err);
	if (ret < 0) {
		kv_rp_send_shut(c, 1, &e);
		return ret;
	}
	in->swo_used = true;
	ret = kv_rp_send_ready(c, &in->swo_id, err);
	kv_switch_log("dst: READY sent (%d)", ret);
	if (ret == 0)
		ret = kv_swo_read_decision(s, &in->swo_id,
					   kv_now_ns() + wait_ns, &d, err);
	if (ret < 0)
		return IN_UNANSWERED;
	if (d == KV_SWO_ABORT) {
		kv_rp_send_shut(c, 1, &e);
		return kv_error_set(err, -ECANCELED, "the source took its guest back at the switch-over (it decided ABORT); nothing runs here");
	}
	kv_switch_log("dst: GO");
	return start_on_go(in, c, err);
}

/* ---- postcopy (docs/DESIGN.md "Postcopy") ---- */

static int postcopy_wait_recover(struct kv_incoming *in, struct kv_error *err);
static int postcopy_pause(struct kv_incoming *in, struct kv_error *err);
static int64_t hello_ns(struct kv_incoming *in);
static void close_listener(struct kv_incoming *in);
static void preempt_reaccept(struct kv_incoming *in);
static struct kv_chan *tls_accept(struct kv_incoming *in, struct kv_chan *c,
				  struct kv_error *err);

int kv_incoming_recover(struct kv_incoming *in, const char *uri,
			struct kv_error *err)
{
	struct kv_listener *l;

	if (kv_incoming_status(in) != KV_IN_POSTCOPY_PAUSED)
		return kv_error_set(err, -EBUSY, "Migrate recover can only be run when postcopy is paused (status %s)", kv_in_status_name(kv_incoming_status(in)));
	l = kv_listener_open(uri, err);
	if (!l)
		return err->code ? err->code : -EIO;
	pthread_mutex_lock(&in->lock);
	if (in->recover_l)
		kv_listener_close(in->recover_l);
	in->recover_l = l;
	pthread_mutex_unlock(&in->lock);
	kv_info("incoming", "postcopy: waiting for the source to resume on %s", kv_listener_uri(l));
	return 0;
}

int kv_incoming_pause(struct kv_incoming *in, struct kv_error *err)
{
	enum kv_in_status st = kv_incoming_status(in);

	if (st != KV_IN_POSTCOPY_ACTIVE && st != KV_IN_POSTCOPY_RECOVER)
		return kv_mig_pause_refused(err);
	kv_warn("incoming", "migrate-pause: the destination breaks the link of postcopy on purpose");
	pthread_mutex_lock(&in->lock);
	if (in->stream)
		kv_stream_shutdown(in->stream);
	pthread_mutex_unlock(&in->lock);
	return 0;
}

static int pc_advise(void *opaque, const struct kv_pc_advise *a,
		     struct kv_error *err)
{
	struct kv_incoming *in = opaque;

	return kv_pc_in_advise(in->pc, a, err);
}

static const struct kv_pc_blocks *pc_blocks(void *opaque)
{
	struct kv_incoming *in = opaque;

	return kv_pc_in_blocks(in->pc);
}

static int pc_discard(void *opaque, const struct kv_pc_discard *d,
		      struct kv_error *err)
{
	struct kv_incoming *in = opaque;

	return kv_pc_in_discard(in->pc, d, err);
}

static int pc_listen(void *opaque, struct kv_error *err)
{
	struct kv_incoming *in = opaque;

	kv_switch_log("dst: postcopy LISTEN");
	return kv_pc_in_listen(in->pc, err);
}

/* Blocktime counts the vCPU threads, which start at RUN: wait a moment
 * for each to say who it is. */
static void postcopy_blocktime_vcpus(struct kv_incoming *in)
{
	uint32_t tids[KV_PC_IN_MAX_VCPUS];
	struct timespec slice = {0, 1000000L};
	size_t n = 0, was = 0;

	if (!in->params.postcopy_blocktime || !in->hooks.vcpu_tids)
		return;
	for (int i = 0; i < 100; i++) {
		n = in->hooks.vcpu_tids(in->hooks.opaque, tids,
					KV_PC_IN_MAX_VCPUS);
		if (n && n == was)
			break;
		was = n;
		nanosleep(&slice, NULL);
	}
	kv_pc_in_set_vcpus(in->pc, tids, n);
}

/* POSTCOPY_RUN, postcopy's GO: the device state of the package is
 * loaded; commit it and start the guest while its pages still come. */
static int pc_run(void *opaque, struct kv_error *err)
{
	struct kv_incoming *in = opaque;
	int ret = 0;

	if (in->hooks.commit)
		ret = in->hooks.commit(in->hooks.opaque, err);
	if (ret < 0) {
		kv_error_prefix(err, "committing the loaded state at POSTCOPY_RUN");
		return ret;
	}
	kv_pc_in_running(in->pc);
	if (in->hooks.start_vm)
		ret = in->hooks.start_vm(in->hooks.opaque, err);
	if (ret < 0) {
		kv_error_prefix(err, "starting the guest at POSTCOPY_RUN");
		return ret;
	}
	in->started = true;
	postcopy_blocktime_vcpus(in);
	kv_switch_log("dst: postcopy RUN: the guest runs here");
	in_set_status(in, KV_IN_ACTIVE, KV_IN_POSTCOPY_ACTIVE);
	return 0;
}

/* RECV_BITMAP: the block's received bitmap back on the return path. */
static int pc_recv_bitmap(void *opaque, size_t block, struct kv_error *err)
{
	struct kv_incoming *in = opaque;
	const unsigned long *map;
	uint8_t name[1 + KV_PC_IDSTR_MAX];
	uint64_t npages = 0;
	uint8_t *blob;
	size_t len;
	int n, ret;

	map = kv_pc_in_received_map(in->pc, block, &npages);
	n = kv_pc_named_encode(kv_pc_in_blocks(in->pc)->v[block].idstr, name,
			       err);
	if (n < 0)
		return n;
	blob = malloc(kv_pc_recv_bitmap_size(npages));
	if (!blob)
		return kv_error_set(err, -ENOMEM, "postcopy: out of memory");
	len = kv_pc_recv_bitmap_encode(map, npages, blob);
	ret = kv_rp_writer_send_tail(&in->rpw, KV_RP_MSG_RECV_BITMAP, name,
				     (uint16_t)n, blob, len, err);
	free(blob);
	return ret;
}

/* POSTCOPY_RESUME: postcopy goes on; the pages vCPUs wait on are asked
 * for again (their requests went with the old link). */
static int pc_resume(void *opaque, struct kv_error *err)
{
	struct kv_incoming *in = opaque;
	struct kv_error old = {0};
	int ret;

	/* The multifd channels are not used after a recovery: their end
	 * (the source closes them) is no reason for a later pause. */
	if (in->mfd)
		kv_mfd_recv_take_error(in->mfd, &old);
	preempt_reaccept(in);
	in_set_status(in, KV_IN_POSTCOPY_RECOVER, KV_IN_POSTCOPY_ACTIVE);
	kv_ram_pc_dst_resume(in->rs);
	ret = kv_rp_writer_send_u32(&in->rpw, KV_RP_MSG_RESUME_ACK,
				    KV_PC_RESUME_ACK_VALUE, err);
	if (ret == 0)
		ret = kv_pc_in_rerequest(in->pc, err);
	kv_info("incoming", "postcopy resumed (RESUME_ACK sent)");
	return ret;
}

static void pc_listen_thread(void *opaque)
{
	struct kv_incoming *in = opaque;

	kv_pc_in_listen_thread(in->pc);
}

static int pc_send_pong(void *opaque, uint32_t value, struct kv_error *err)
{
	struct kv_incoming *in = opaque;

	return kv_rp_writer_send_u32(&in->rpw, KV_RP_MSG_PONG, value, err);
}

/* The source connected with postcopy-ram on here: its commands may come
 * (without this they are refused). */
static int postcopy_prepare(struct kv_incoming *in, struct kv_chan *c,
			    struct kv_error *err)
{
	struct kv_pc_in_config cfg = {.rs = in->rs, .rp = &in->rpw};
	struct kv_pc_in *pc;

	if (!in->params.postcopy_ram || !c->is_socket || !in->rs)
		return 0;
	kv_rp_writer_init(&in->rpw, c);
	in->rpw_live = true;
	pc = kv_pc_in_new(&cfg, err);
	if (!pc)
		return err->code;
	pthread_mutex_lock(&in->lock);
	in->pc = pc;
	pthread_mutex_unlock(&in->lock);
	in->pc_ops = (struct kv_savevm_pc_ops){
	    .advise = pc_advise,
	    .blocks = pc_blocks,
	    .discard = pc_discard,
	    .listen = pc_listen,
	    .run = pc_run,
	    .send_pong = pc_send_pong,
	    .recv_bitmap = pc_recv_bitmap,
	    .resume = pc_resume,
	    .listen_thread = pc_listen_thread,
	    .opaque = in,
	};
	kv_savevm_set_postcopy(in->sv, &in->pc_ops);
	return 0;
}

/* postcopy-preempt (QEMU 7.2): the connection after the main one is
 * the preempt channel; it says nothing before postcopy, so it is taken
 * as the next connection within the hello bound. None: requested pages
 * come on the main stream (the source may not have it on). */
static struct kv_chan *preempt_take(struct kv_incoming *in,
				    struct kv_listener *l)
{
	struct kv_error e = {0};
	struct pollfd pfd = {.fd = l ? kv_listener_fd(l) : -1, .events = POLLIN};
	struct kv_chan *c;
	int fd;

	if (!in->params.postcopy_preempt || pfd.fd < 0)
		return NULL;
	if (in->mfd) {
		kv_warn("incoming", "postcopy-preempt is on here with multifd, which kvmig does not combine (the source refuses the pair): requested pages come on the main stream");
		return NULL;
	}
	if (poll(&pfd, 1, (int)(hello_ns(in) / 1000000)) <= 0) {
		kv_warn("incoming", "postcopy-preempt is on here but the source opened no preempt channel within %lld ms: requested pages come on the main stream", (long long)(hello_ns(in) / 1000000));
		return NULL;
	}
	fd = kv_listener_accept_fd(l, &e);
	c = fd >= 0 ? kv_chan_from_fd(fd, "postcopy-preempt", &e) : NULL;
	c = c ? tls_accept(in, c, &e) : NULL;
	if (!c) {
		kv_warn("incoming", "postcopy-preempt channel: %s", e.msg);
		return NULL;
	}
	watch_source(in, c);
	return c;
}

static void preempt_accept(struct kv_incoming *in, struct kv_listener *l)
{
	struct kv_chan *c = preempt_take(in, l);

	if (c)
		kv_pc_in_set_preempt(in->pc, c);
}

/* A recovery (POSTCOPY_RESUME read): the source connected a new preempt
 * channel on migrate-recover's listener after the main one, if the
 * first link had one; it replaces the broken one. */
static void preempt_reaccept(struct kv_incoming *in)
{
	struct kv_listener *l;
	struct kv_chan *c = NULL;

	pthread_mutex_lock(&in->lock);
	l = in->listener;
	pthread_mutex_unlock(&in->lock);
	if (l && kv_pc_in_had_preempt(in->pc))
		c = preempt_take(in, l);
	close_listener(in);
	if (c)
		kv_pc_in_restart_preempt(in->pc, c);
}

/* The incoming run ends: the fault thread stops and userfaultfd is
 * released before the channel it writes on is closed. */
static void postcopy_release(struct kv_incoming *in)
{
	struct kv_pc_in *pc;

	kv_savevm_load_abandon(in->sv);
	kv_savevm_set_postcopy(in->sv, NULL);
	pthread_mutex_lock(&in->lock);
	pc = in->pc;
	pthread_mutex_unlock(&in->lock);
	if (pc) {
		/* Keep the last figures for query-migrate. */
		pthread_mutex_lock(&in->lock);
		kv_pc_in_get_stats(pc, &in->stats.pc);
		in->pc = NULL;
		pthread_mutex_unlock(&in->lock);
		kv_pc_in_free(pc);
	}
	if (in->rpw_live)
		kv_rp_writer_destroy(&in->rpw);
	in->rpw_live = false;
	pthread_mutex_lock(&in->lock);
	if (in->stream == in->pc_stream)
		in->stream = NULL;
	pthread_mutex_unlock(&in->lock);
	kv_stream_close(in->pc_stream);
	in->pc_stream = NULL;
}

/* Paused: until migrate-recover opened a listener (1, *l taken) or the
 * process ends (0). */
static int take_recover_listener(struct kv_incoming *in, struct kv_listener **l)
{
	struct timespec slice = {0, 50 * 1000000L};

	for (;;) {
		pthread_mutex_lock(&in->lock);
		*l = in->recover_l;
		in->recover_l = NULL;
		if (*l) {
			/* Only the first link's listener can still be here
			 * (kept open for multifd's channels); a recovery's is
			 * closed once its source connected. */
			if (in->listener && in->listener != *l)
				in->retired_l = in->listener;
			in->listener = *l; /* an abort shuts it down */
		}
		pthread_mutex_unlock(&in->lock);
		if (*l)
			return 1;
		if (aborted(in))
			return 0;
		nanosleep(&slice, NULL);
	}
}

/* The source reconnected (migrate with resume): its stream replaces the
 * broken one, for the loader and the return path. */
static struct kv_stream *recover_stream(struct kv_incoming *in,
					struct kv_listener *l,
					struct kv_error *err)
{
	struct kv_chan *c = kv_listener_accept(l, err);
	struct kv_stream *s;

	/* A new preempt channel comes on it too (POSTCOPY_RESUME's). */
	if (!kv_pc_in_had_preempt(in->pc))
		close_listener(in);
	c = c ? tls_accept(in, c, err) : NULL;
	s = c ? kv_stream_new(c, KV_STREAM_READ) : NULL;
	if (!s) {
		kv_chan_close(c);
		return NULL;
	}
	watch_source(in, c);
	kv_rp_writer_switch(&in->rpw, c);
	pthread_mutex_lock(&in->lock);
	in->stream = s;
	if (in->aborted)
		kv_stream_shutdown(s);
	pthread_mutex_unlock(&in->lock);
	kv_stream_close(in->pc_stream); /* the previous recovery's */
	in->pc_stream = s;
	return s;
}

/* Paused: wait for migrate-recover and the source, resume the load over
 * the new link; a break pauses again. 0 completed; <0 the process ends
 * with the guest incomplete. */
static int postcopy_wait_recover(struct kv_incoming *in, struct kv_error *err)
{
	struct kv_error e = {0};
	struct kv_listener *l;
	struct kv_stream *s;
	int ret;

	if (!take_recover_listener(in, &l))
		return -ECANCELED;
	in_set_status(in, KV_IN_POSTCOPY_PAUSED, KV_IN_POSTCOPY_RECOVER);
	kv_error_clear(err);
	s = recover_stream(in, l, err);
	ret = s ? kv_savevm_load_resume(in->sv, s, err) : err->code;
	close_listener(in); /* a resume that broke before POSTCOPY_RESUME */
	if (ret == 0)
		ret = kv_pc_in_complete(in->pc, PC_COMPLETE_WAIT_MS, err);
	if (ret == 0) {
		in_set_status(in, KV_IN_POSTCOPY_RECOVER, KV_IN_POSTCOPY_ACTIVE);
		kv_rp_writer_send_u32(&in->rpw, KV_RP_MSG_SHUT, 0, &e);
		kv_info("incoming", "postcopy complete after a recovery");
		return 0;
	}
	if (!kv_error_is_set(err))
		kv_error_set(err, ret, "postcopy recovery failed");
	return postcopy_pause(in, err);
}

/* The link broke after the guest started here with pages missing: it
 * cannot complete without the source, and nothing may be given up. The
 * guest's vCPUs wait on the missing pages; this run waits until the
 * process ends (kv_incoming_abort). */
static int postcopy_pause(struct kv_incoming *in, struct kv_error *err)
{
	struct kv_error mfd_err = {0};
	struct kv_pc_in_stats st;
	char why[KV_ERROR_MSG_MAX];

	kv_pc_in_get_stats(in->pc, &st);
	snprintf(why, sizeof(why), "%s", err->msg);
	/* A multifd channel that broke shut the main stream: say so. */
	if (in->mfd && kv_mfd_recv_take_error(in->mfd, &mfd_err) < 0)
		snprintf(why, sizeof(why), "%s", mfd_err.msg);
	kv_error_clear(err);
	kv_error_set(err, -EPIPE, "postcopy paused: the link to the source broke (%s); %llu pages of the guest are only on the source, so the guest cannot be completed here until the source reconnects: its vCPUs wait on those pages", why, (unsigned long long)st.missing);
	pthread_mutex_lock(&in->lock);
	snprintf(in->stats.error, sizeof(in->stats.error), "%s", err->msg);
	pthread_mutex_unlock(&in->lock);
	if (!in_set_status(in, KV_IN_POSTCOPY_ACTIVE, KV_IN_POSTCOPY_PAUSED))
		in_set_status(in, KV_IN_POSTCOPY_RECOVER,
			      KV_IN_POSTCOPY_PAUSED);
	kv_err("incoming", "%s", err->msg);
	return postcopy_wait_recover(in, err);
}

/* After a load that reached POSTCOPY_LISTEN: every page here, then
 * SHUT(0) (QEMU's order); a failure before RUN is any failure (SHUT(1),
 * nothing ran); after it the guest runs here and the migration pauses. */
static int postcopy_end(struct kv_incoming *in, int ret, struct kv_error *err)
{
	struct kv_error e = {0};

	if (ret == 0)
		ret = kv_pc_in_complete(in->pc, PC_COMPLETE_WAIT_MS, err);
	if (ret == 0) {
		kv_rp_writer_send_u32(&in->rpw, KV_RP_MSG_SHUT, 0, &e);
		kv_switch_log("dst: postcopy complete, SHUT(0) sent");
		return 0;
	}
	if (!in->started) {
		kv_rp_writer_send_u32(&in->rpw, KV_RP_MSG_SHUT, 1, &e);
		kv_error_prefix(err, "postcopy: no guest ran here (the load ended before POSTCOPY_RUN started it); the source keeps the whole guest stopped: if it is postcopy-paused, resume it there with x-migrate-settle run");
		return ret;
	}
	return postcopy_pause(in, err);
}

/* Load, commit, decide. Without a return path (file:, fd: one way) the
 * caller starts the guest once the stream loaded. */
static int load_and_answer(struct kv_incoming *in, struct kv_stream *s,
			   struct kv_error *err)
{
	struct kv_load_result res = {0};
	struct kv_chan *c = kv_stream_chan(s);
	struct kv_error e = {0};
	int ret;

	ret = kv_savevm_load(in->sv, s, &res, err);
	kv_switch_log("dst: loaded (%d)", ret);
	if (res.postcopy)
		return postcopy_end(in, ret, err);
	if (ret == 0 && in->hooks.commit) {
		ret = in->hooks.commit(in->hooks.opaque, err);
		if (ret < 0)
			kv_error_prefix(err, "committing the loaded state");
	}
	kv_switch_log("dst: committed (%d)", ret);
	if (ret == 0 && res.return_path_requested)
		return take_decision(in, s, err);
	/* On failure, answer on any socket: the source may have asked in a
	 * part of the stream we never got to read. */
	if (ret < 0 && c->is_socket)
		kv_rp_send_shut(c, 1, &e);
	return ret;
}

/* The source connected over s: read the settings, accept the multifd
 * channels from l (NULL: none), load, answer and start the workload. */
static int run_connected(struct kv_incoming *in, struct kv_stream *s,
			 struct kv_listener *l, struct kv_error *err)
{
	struct kv_chan *c = kv_stream_chan(s);
	int ret;

	pthread_mutex_lock(&in->lock);
	in->stream = s;
	in->params_read = true;
	in->accept_ns = kv_now_ns();
	kv_chan_peer_name(c, in->stats.peer, sizeof(in->stats.peer));
	watch_source(in, c);
	if (in->aborted)
		kv_stream_shutdown(s);
	pthread_mutex_unlock(&in->lock);
	in_set_status(in, KV_IN_SETUP, KV_IN_ACTIVE);
	ret = multifd_start(in, l, c, err);
	if (ret == 0)
		ret = postcopy_prepare(in, c, err);
	if (ret == 0 && in->pc)
		preempt_accept(in, l);
	if (!in->mfd)
		close_listener(in);
	if (ret == 0)
		ret = load_and_answer(in, s, err);
	postcopy_release(in);
	/* The channel threads end once the source closed them, after it
	 * read SHUT; undecided, the source may be unreachable: end them. */
	if (ret == IN_UNANSWERED)
		abort_multifd(in);
	ret = multifd_end(in, ret, err);
	pthread_mutex_lock(&in->lock);
	in->stats.transferred = kv_stream_transferred(s);
	in->stats.load_ns = kv_now_ns() - in->accept_ns;
	in->stream = NULL;
	pthread_mutex_unlock(&in->lock);
	close_listener(in);
	if (ret == 0 && !in->started && in->hooks.start_vm) {
		ret = in->hooks.start_vm(in->hooks.opaque, err);
		in->started = ret == 0;
		kv_switch_log("dst: workload started (%d)", ret);
	}
	return ret;
}

/* The end, through the table: an answer already given (ret 0) stands
 * against a late abort. */
static int finish(struct kv_incoming *in, int ret, struct kv_error *err)
{
	enum kv_in_status from = kv_incoming_status(in);
	bool cancel = ret < 0 && aborted(in);

	if (cancel) {
		kv_error_clear(err);
		ret = kv_error_set(err, -ECANCELED, "incoming migration aborted");
	} else if (ret < 0 && !kv_error_is_set(err)) {
		kv_error_set(err, ret, "incoming migration failed");
	}
	pthread_mutex_lock(&in->lock);
	snprintf(in->stats.error, sizeof(in->stats.error), "%s",
		 ret < 0 ? err->msg : "");
	pthread_mutex_unlock(&in->lock);
	in_set_status(in, from,
		      ret == 0 ? KV_IN_COMPLETED
			       : cancel ? KV_IN_CANCELLED : KV_IN_FAILED);
	return ret;
}

/* ---- telling the source from a stranger ---- */

/* A connection handed on with the first bytes read to judge it: reads
 * return those first; everything else is the connection's own. */
struct replay_chan {
	struct kv_chan chan; /* first: the ops get &chan */
	struct kv_chan *inner;
	uint8_t head[KV_VM_HEADER_SIZE];
	size_t pos;
};

static struct replay_chan *to_replay(const struct kv_chan *c)
{
	return (struct replay_chan *)c;
}

static ssize_t replay_read(struct kv_chan *c, void *buf, size_t len)
{
	struct replay_chan *rc = to_replay(c);
	size_t n = sizeof(rc->head) - rc->pos;

	if (!n)
		return rc->inner->ops->read(rc->inner, buf, len);
	n = n < len ? n : len;
	memcpy(buf, rc->head + rc->pos, n);
	rc->pos += n;
	return (ssize_t)n;
}

static ssize_t replay_readv(struct kv_chan *c, const struct iovec *iov,
			    int iovcnt)
{
	struct replay_chan *rc = to_replay(c);

	while (iovcnt > 0 && !iov->iov_len) {
		iov++;
		iovcnt--;
	}
	if (!iovcnt)
		return 0;
	if (rc->pos < sizeof(rc->head) || !rc->inner->ops->readv)
		return replay_read(c, iov->iov_base, iov->iov_len);
	return rc->inner->ops->readv(rc->inner, iov, iovcnt);
}

static ssize_t replay_writev(struct kv_chan *c, const struct iovec *iov,
			     int iovcnt)
{
	struct replay_chan *rc = to_replay(c);

	return rc->inner->ops->writev(rc->inner, iov, iovcnt);
}

static void replay_shutdown(struct kv_chan *c)
{
	__atomic_store_n(&c->shutdown_req, 1, __ATOMIC_RELEASE);
	kv_chan_shutdown(to_replay(c)->inner);
}

static void replay_close(struct kv_chan *c)
{
	kv_chan_close(to_replay(c)->inner);
	free(c);
}

static int replay_wait_readable(struct kv_chan *c, int64_t deadline_ns)
{
	struct replay_chan *rc = to_replay(c);

	if (rc->pos < sizeof(rc->head))
		return 1;
	return kv_chan_wait_readable(rc->inner, deadline_ns);
}

static int replay_set_recv_lowat(struct kv_chan *c, size_t bytes)
{
	return kv_chan_set_recv_lowat(to_replay(c)->inner, bytes);
}

static int replay_set_nodelay(struct kv_chan *c, bool on)
{
	return kv_chan_set_nodelay(to_replay(c)->inner, on);
}

static int64_t replay_unsent(const struct kv_chan *c)
{
	return kv_chan_unsent(to_replay(c)->inner);
}

static int replay_tcp_limits(const struct kv_chan *c,
			     struct kv_tcp_limits *out)
{
	return kv_chan_tcp_limits(to_replay(c)->inner, out);
}

static int replay_peer_name(const struct kv_chan *c, char *buf, size_t size)
{
	kv_chan_peer_name(to_replay(c)->inner, buf, size);
	return 0;
}

static int replay_set_silence(struct kv_chan *c, uint64_t limit_ms,
			      struct kv_chan_activity *shared)
{
	return kv_chan_set_silence(to_replay(c)->inner, limit_ms, shared);
}

static const struct kv_chan_ops replay_ops = {
    .read = replay_read,
    .readv = replay_readv,
    .writev = replay_writev,
    .shutdown = replay_shutdown,
    .close = replay_close,
    .wait_readable = replay_wait_readable,
    .set_recv_lowat = replay_set_recv_lowat,
    .set_nodelay = replay_set_nodelay,
    .unsent = replay_unsent,
    .tcp_limits = replay_tcp_limits,
    .peer_name = replay_peer_name,
    .set_silence = replay_set_silence,
};

/* c with hdr in front of what it reads next; c is closed on failure. */
static struct kv_chan *replay_new(struct kv_chan *c, const uint8_t *hdr,
				  struct kv_error *err)
{
	struct replay_chan *rc = calloc(1, sizeof(*rc));

	if (!rc) {
		kv_chan_close(c);
		kv_error_set(err, -ENOMEM, "no memory for the stream");
		return NULL;
	}
	rc->chan.ops = &replay_ops;
	rc->chan.is_socket = c->is_socket;
	rc->chan.is_file = c->is_file;
	snprintf(rc->chan.name, sizeof(rc->chan.name), "%s", c->name);
	rc->inner = c;
	memcpy(rc->head, hdr, sizeof(rc->head));
	return &rc->chan;
}

static void set_candidate(struct kv_incoming *in, struct kv_chan *c)
{
	pthread_mutex_lock(&in->lock);
	in->candidate = c;
	if (c && in->aborted)
		kv_chan_shutdown(c);
	pthread_mutex_unlock(&in->lock);
}

/* How long a new connection may take to say who it is: HELLO_TIMEOUT_NS,
 * or a third of x-link-timeout when that is shorter, so that a silent
 * stranger ahead of the source in the backlog cannot outlast the
 * source's own patience (its writes wait for us meanwhile). */
static int64_t hello_ns(struct kv_incoming *in)
{
	int64_t third;
	uint64_t ms;

	pthread_mutex_lock(&in->lock);
	ms = in->params.link_timeout_ms;
	pthread_mutex_unlock(&in->lock);
	third = (int64_t)ms * 1000000 / 3;
	return ms && third < HELLO_TIMEOUT_NS ? third : HELLO_TIMEOUT_NS;
}

/* Does c send a stream header within the bound? */
static int read_hello(struct kv_incoming *in, struct kv_chan *c,
		      uint8_t *hdr, struct kv_error *err)
{
	int ret;

	set_candidate(in, c);
	ret = kv_chan_read_full_until(c, hdr, KV_VM_HEADER_SIZE,
				      kv_now_ns() + hello_ns(in), err);
	set_candidate(in, NULL);
	if (ret == 0)
		ret = kv_savevm_check_header(hdr, err);
	return ret;
}

/* With tls-creds: c once its handshake passed every check, else NULL (c
 * closed, err says which check failed). A migration byte is read only
 * after this. The handshake is bounded by the hello's time, not by an
 * abort (which waits for it). */
static struct kv_chan *tls_accept(struct kv_incoming *in, struct kv_chan *c,
				  struct kv_error *err)
{
	struct kv_mig_tls tls;

	pthread_mutex_lock(&in->lock);
	tls = in->params.tls;
	pthread_mutex_unlock(&in->lock);
	return kv_mig_tls_server(c, &tls, kv_now_ns() + hello_ns(in), err);
}

/* Accept until a connection shows a stream header; drop the others with
 * a warning. NULL with err set when the accept failed or was aborted. A
 * file: or fd: listener has one stream only: the loader judges it. */
static struct kv_chan *accept_source(struct kv_incoming *in,
				     struct kv_listener *l,
				     struct kv_error *err)
{
	for (;;) {
		uint8_t hdr[KV_VM_HEADER_SIZE] = {0};
		struct kv_error why = {0};
		char peer[300];
		struct kv_chan *c, *t;

		c = aborted(in) ? NULL : kv_listener_accept(l, err);
		if (!c || kv_listener_fd(l) < 0)
			return c;
		kv_chan_peer_name(c, peer, sizeof(peer));
		t = tls_accept(in, c, &why);
		if (t && read_hello(in, t, hdr, &why) == 0)
			return replay_new(t, hdr, err);
		if (t && kv_tls_looks_like_hello(hdr, sizeof(hdr))) {
			kv_error_clear(&why);
			kv_error_set(&why, -EPROTO, "it began a TLS handshake, but this destination has no tls-creds (set tls-creds here too, or none on the source)");
		}
		kv_chan_close(t);
		if (aborted(in)) {
			kv_error_set(err, -ECANCELED, "%s", why.msg);
			return NULL;
		}
		kv_warn("incoming", "dropped a connection from %s, not a migration source: %s; still waiting for the source", peer, why.msg);
	}
}

/* ---- after READY: RESOLVE connections and the operator ---- */

static enum kv_swo_settle settle_word(const struct kv_incoming *in)
{
	return (enum kv_swo_settle)__atomic_load_n(&in->settle,
						   __ATOMIC_ACQUIRE);
}

/* Listen again on the incoming address (tcp, unix: the source knows it);
 * NULL for file: and fd:, where only an operator can settle. */
static struct kv_listener *listen_again(struct kv_incoming *in)
{
	struct kv_error e = {0};
	struct kv_listener *l;
	struct kv_uri u;

	if (kv_uri_parse(in->uri, &u, &e) < 0 ||
	    (u.kind != KV_URI_TCP && u.kind != KV_URI_UNIX))
		return NULL;
	l = kv_listener_open(in->uri, &e);
	if (!l) {
		kv_err("incoming", "cannot listen again on %s for the source's decision: %s; settle by hand with x-migrate-settle", in->uri, e.msg);
		return NULL;
	}
	pthread_mutex_lock(&in->lock);
	in->listener = l;
	if (in->aborted || settle_word(in))
		kv_listener_shutdown(l);
	pthread_mutex_unlock(&in->lock);
	return l;
}

/* One connection while a decision is awaited or after running: a RESOLVE
 * for this migration returns its decision with c still open (the caller
 * answers it); anything else is answered or dropped here, and NULL. */
static struct kv_chan *read_resolve(struct kv_incoming *in, struct kv_chan *c,
				    enum kv_swo_decision *d)
{
	uint8_t hello[KV_SWO_MAGIC_LEN];
	struct kv_error e = {0};
	struct kv_swo_id id;
	char peer[300];
	int ret;

	kv_chan_peer_name(c, peer, sizeof(peer));
	c = tls_accept(in, c, &e);
	ret = c ? 0 : e.code;
	set_candidate(in, c);
	if (ret == 0)
		ret = kv_chan_read_full_until(c, hello, sizeof(hello),
					      kv_now_ns() + HELLO_TIMEOUT_NS, &e);
	if (ret == 0 && !kv_swo_is_resolve(hello, sizeof(hello)))
		ret = kv_error_set(&e, -EPROTO, "%s", kv_savevm_check_header(hello, NULL) == 0 ? "a new migration source, but this destination already holds a migrated guest" : "not a migration source");
	if (ret == 0)
		ret = kv_swo_read_resolve(c, &id, d,
					  kv_now_ns() + HELLO_TIMEOUT_NS, &e);
	set_candidate(in, NULL);
	if (ret == 0 && memcmp(id.b, in->swo_id.b, KV_SWO_ID_LEN) != 0) {
		kv_swo_send_ack(c, &id, KV_SWO_ACK_UNKNOWN, &e);
		ret = kv_error_set(&e, -EPROTO, "a RESOLVE for another migration");
	}
	if (ret == 0)
		return c;
	kv_warn("incoming", "dropped a connection from %s while %s: %s", peer, kv_incoming_status(in) == KV_IN_UNDECIDED ? "waiting for the source's decision" : "running the migrated guest", e.msg);
	kv_chan_close(c);
	return NULL;
}

/* Undecided: wait for the source's RESOLVE or the operator's word. 0: the
 * guest runs here; <0: it never will (err says why). */
static int settle_undecided(struct kv_incoming *in, struct kv_error *err)
{
	struct timespec poll = {0, SETTLE_POLL_NS};
	struct kv_listener *l;
	struct kv_error e = {0};
	char id[KV_SWO_ID_LEN * 2 + 1];
	int ret;

	kv_swo_id_text(&in->swo_id, id, sizeof(id));
	pthread_mutex_lock(&in->lock);
	snprintf(in->stats.error, sizeof(in->stats.error), "undecided: %.480s", err->msg);
	pthread_mutex_unlock(&in->lock);
	kv_err("incoming", "switch-over undecided (migration %s): %s; the guest stays loaded and stopped until the source says (it reconnects to %s) or an operator settles it with x-migrate-settle", id, err->msg, in->uri);
	in_set_status(in, KV_IN_ACTIVE, KV_IN_UNDECIDED);
	kv_error_clear(err);
	l = listen_again(in);
	for (;;) {
		enum kv_swo_settle how = settle_word(in);
		enum kv_swo_decision d;
		struct kv_chan *c;

		if (how == KV_SWO_SETTLE_RUN) {
			close_listener(in);
			return start_on_go(in, NULL, err);
		}
		if (how == KV_SWO_SETTLE_DISCARD) {
			close_listener(in);
			return kv_error_set(err, -ECANCELED, "the operator discarded the guest (x-migrate-settle discard); nothing runs here");
		}
		if (aborted(in)) {
			close_listener(in);
			return kv_error_set(err, -ECANCELED, "incoming migration aborted while undecided");
		}
		c = l ? kv_listener_accept(l, &e) : NULL;
		if (!c) {
			nanosleep(&poll, NULL);
			continue;
		}
		c = read_resolve(in, c, &d);
		if (!c)
			continue;
		if (d == KV_SWO_GO) {
			ret = start_on_go(in, NULL, err);
			kv_swo_send_ack(c, &in->swo_id, ret == 0 ? KV_SWO_ACK_RUNNING : KV_SWO_ACK_DISCARDED, &e);
		} else {
			kv_swo_send_ack(c, &in->swo_id, KV_SWO_ACK_DISCARDED, &e);
			ret = kv_error_set(err, -ECANCELED, "the source took its guest back at the switch-over (it decided ABORT, heard over a new connection); nothing runs here");
		}
		kv_chan_close(c);
		close_listener(in);
		return ret;
	}
}

int kv_incoming_settle(struct kv_incoming *in, enum kv_swo_settle how,
		       struct kv_error *err)
{
	int expected = KV_SWO_SETTLE_NONE;

	if (kv_swo_settle_check(how, err) < 0)
		return err->code;
	if (kv_incoming_status(in) != KV_IN_UNDECIDED)
		return kv_error_set(err, -EBUSY, "x-migrate-settle: the incoming migration is not undecided (status %s); only a switch-over whose decision never arrived can be settled by hand", kv_in_status_name(kv_incoming_status(in)));
	if (!__atomic_compare_exchange_n(&in->settle, &expected, (int)how,
					 false, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE))
		return kv_error_set(err, -EBUSY, "x-migrate-settle: already settled");
	pthread_mutex_lock(&in->lock);
	if (in->listener)
		kv_listener_shutdown(in->listener);
	pthread_mutex_unlock(&in->lock);
	return 0;
}

void kv_incoming_answer_resolves(struct kv_incoming *in)
{
	struct kv_listener *l;
	struct kv_error e = {0};

	if (!in->swo_used || !in->started ||
	    kv_incoming_status(in) != KV_IN_COMPLETED)
		return;
	l = listen_again(in);
	while (l && !aborted(in)) {
		enum kv_swo_decision d;
		struct kv_chan *c = kv_listener_accept(l, &e);

		if (c)
			c = read_resolve(in, c, &d);
		if (!c)
			continue;
		if (d != KV_SWO_GO)
			kv_err("incoming", "the source says ABORT for a migration whose GO this side had: its guest runs here");
		kv_swo_send_ack(c, &in->swo_id, KV_SWO_ACK_RUNNING, &e);
		kv_chan_close(c);
	}
	close_listener(in);
}

static int claim_run(struct kv_incoming *in, struct kv_error *err)
{
	bool ran;

	pthread_mutex_lock(&in->lock);
	ran = in->ran;
	in->ran = true;
	pthread_mutex_unlock(&in->lock);
	if (ran)
		return kv_error_set(err, -EBUSY, "this incoming migration already ran (status %s)", kv_in_status_name(kv_incoming_status(in)));
	return 0;
}

int kv_incoming_run(struct kv_incoming *in, struct kv_error *err)
{
	struct kv_error lerr = {0};
	struct kv_listener *l;
	struct kv_stream *s;
	struct kv_chan *c;
	int ret;

	ret = claim_run(in, err);
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&in->lock);
	l = in->listener;
	pthread_mutex_unlock(&in->lock);
	if (!l || kv_incoming_status(in) != KV_IN_SETUP)
		return kv_error_set(err, -EINVAL, "an incoming migration runs only after kv_incoming_listen succeeded");
	c = accept_source(in, l, &lerr);
	if (!c) {
		close_listener(in);
		ret = finish(in, lerr.code ? lerr.code : -ECANCELED, &lerr);
		kv_error_prefix(&lerr, "incoming migration on %s", in->uri);
		kv_error_propagate(err, &lerr);
		return ret;
	}
	s = kv_stream_new(c, KV_STREAM_READ);
	if (!s) {
		kv_chan_close(c);
		close_listener(in);
		kv_error_set(&lerr, -ENOMEM, "no memory for the stream");
		ret = finish(in, -ENOMEM, &lerr);
		kv_error_propagate(err, &lerr);
		return ret;
	}
	ret = run_connected(in, s, l, &lerr);
	kv_stream_close(s);
	if (ret == IN_UNANSWERED)
		ret = settle_undecided(in, &lerr);
	ret = finish(in, ret, &lerr);
	if (ret < 0)
		kv_error_prefix(&lerr, "incoming migration from %s",
				in->stats.peer);
	kv_error_propagate(err, &lerr);
	return ret;
}

int kv_incoming_run_stream(struct kv_incoming *in, struct kv_stream *s,
			   struct kv_error *err)
{
	int ret;

	ret = claim_run(in, err);
	if (ret < 0)
		return ret;
	if (!in_set_status(in, KV_IN_NONE, KV_IN_SETUP))
		return kv_error_set(err, -EINVAL, "an incoming migration over a connected stream cannot also listen");
	ret = run_connected(in, s, NULL, err);
	if (ret == IN_UNANSWERED)
		ret = settle_undecided(in, err);
	return finish(in, ret, err);
}

int kv_mig_incoming(struct kv_savevm *sv, struct kv_stream *s,
		    struct kv_error *err)
{
	struct kv_incoming *in = kv_incoming_new(sv, NULL, NULL, NULL);
	int ret;

	if (!in)
		return kv_error_set(err, -ENOMEM, "no memory for the incoming migration");
	ret = kv_incoming_run_stream(in, s, err);
	kv_incoming_free(in);
	return ret;
}
