/* SPDX-License-Identifier: MIT */
#include "base/units.h"
#include "cli/run_control.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/log.h"
#include "migration/migration.h"
#include "monitor/qmp.h"
#include "monitor/qmp_migration.h"
#include "vmm/runstate.h"
#include "vmm/serial.h"
#include "vmm/vm_migration.h"


struct run_ctl {
	struct kv_vm *vm;
	struct kv_vm_mig *mig;
	struct kv_qmp *qmp;

	struct kv_qmp_mig *qm; /* capabilities and parameters, and the QMP
				* migration commands */

	pthread_mutex_t lock; /* guards the fields below */
	enum kv_runstate state;
	bool started;	      /* the vCPUs ran at least once */
	bool defer;	      /* --incoming defer, not yet given a URI */
	bool in_live;
	pthread_t in_thread;
	char in_uri[300];
	bool quit_requested;  /* SHUTDOWN reason host-qmp-quit */
	bool incoming_failed; /* SHUTDOWN reason host-error */
};

/* Caller holds rc->lock. A move the table does not allow is a bug: it is
 * logged and the state stays. */
static void move_state_locked(struct run_ctl *rc, enum kv_runstate to)
{
	if (!kv_runstate_can_move(rc->state, to)) {
		kv_warn("run", "run state %s cannot become %s; stays %s",
			kv_runstate_name(rc->state), kv_runstate_name(to),
			kv_runstate_name(rc->state));
		return;
	}
	rc->state = to;
}

static void set_state(struct run_ctl *rc, enum kv_runstate to)
{
	pthread_mutex_lock(&rc->lock);
	move_state_locked(rc, to);
	pthread_mutex_unlock(&rc->lock);
}

/* Move only if the state is still from: a QMP command that read it
 * before a switch-over began must not undo the switch-over's move. */
static bool move_state_from(struct run_ctl *rc, enum kv_runstate from,
			    enum kv_runstate to)
{
	bool moved;

	pthread_mutex_lock(&rc->lock);
	moved = rc->state == from;
	if (moved)
		move_state_locked(rc, to);
	pthread_mutex_unlock(&rc->lock);
	return moved;
}

static enum kv_runstate get_state(struct run_ctl *rc)
{
	enum kv_runstate s;

	pthread_mutex_lock(&rc->lock);
	s = rc->state;
	pthread_mutex_unlock(&rc->lock);
	return s;
}

static void event(struct run_ctl *rc, const char *name, json_t *data)
{
	if (rc->qmp)
		kv_qmp_event(rc->qmp, name, data);
	else
		json_decref(data);
}

/* MIGRATION and MIGRATION_PASS go out only with the "events" capability,
 * as in QEMU (where it is off by default; here it is on). */
static void migration_event(struct run_ctl *rc, const char *name, json_t *data)
{
	struct kv_mig_settings s;

	kv_qmp_mig_settings(rc->qm, &s);
	if (s.events)
		event(rc, name, data);
	else
		json_decref(data);
}

/* ---- migration events ---- */

static void print_summary(struct run_ctl *rc)
{
	struct kv_vm_mig_info info;

	kv_vm_mig_query(rc->mig, &info);
	fprintf(stderr,
		"kvmig run: migration %s: total %lld ms, downtime %lld ms (vCPU pause %.2f ms), setup %lld ms, %.1f MiB transferred, %llu zero pages, %llu normal pages, %llu passes\n",
		kv_mig_status_name(info.status),
		(long long)info.stats.total_time_ms,
		(long long)info.stats.downtime_ms,
		(double)kv_vm_last_pause_ns(rc->vm) / 1e6,
		(long long)info.stats.setup_time_ms,
		(double)info.stats.transferred / KV_MiB_F,
		(unsigned long long)info.stats.zero_pages,
		(unsigned long long)info.stats.normal_pages,
		(unsigned long long)info.stats.passes);
	if (info.error[0])
		fprintf(stderr, "kvmig run: migration error: %s\n", info.error);
}

/* As QEMU: STOP only when the switch-over stops a running guest (a paused
 * one just changes state). */
static void enter_finish_migrate(struct run_ctl *rc)
{
	bool was_running;

	pthread_mutex_lock(&rc->lock);
	was_running = rc->state == KV_RUNSTATE_RUNNING;
	move_state_locked(rc, KV_RUNSTATE_FINISH_MIGRATE);
	pthread_mutex_unlock(&rc->lock);
	if (was_running)
		event(rc, "STOP", NULL);
}

/* A failed or cancelled switch-over: the engine has resumed the vCPUs if
 * they ran before its stop (vm_migration.c), and they are the truth here:
 * running again (RESUME), or still paused by the operator's QMP stop. */
static void leave_finish_migrate(struct run_ctl *rc)
{
	bool runs = kv_vm_running(rc->vm), resumed = false;

	pthread_mutex_lock(&rc->lock);
	if (rc->state == KV_RUNSTATE_FINISH_MIGRATE) {
		move_state_locked(rc, runs ? KV_RUNSTATE_RUNNING
					   : KV_RUNSTATE_PAUSED);
		resumed = runs;
	}
	pthread_mutex_unlock(&rc->lock);
	if (resumed)
		event(rc, "RESUME", NULL);
}

static bool is_background(struct run_ctl *rc)
{
	struct kv_vm_mig_info i;

	kv_vm_mig_query(rc->mig, &i);
	return i.background;
}

/* x-postcopy-auto switched (kvmig's event): why, as query-migrate's
 * x-postcopy-auto-reason. */
static void postcopy_auto_event(struct run_ctl *rc)
{
	struct kv_vm_mig_info info;

	kv_vm_mig_query(rc->mig, &info);
	if (info.stats.postcopy_auto_reason[0])
		event(rc, "X_POSTCOPY_AUTO",
		      json_pack("{s:s}", "reason",
				info.stats.postcopy_auto_reason));
}

static void on_mig_status(void *opaque, enum kv_mig_status st)
{
	struct run_ctl *rc = opaque;

	migration_event(rc, "MIGRATION",
			json_pack("{s:s}", "status", kv_mig_status_name(st)));
	switch (st) {
	case KV_MIG_POSTCOPY_ACTIVE:
		postcopy_auto_event(rc);
		enter_finish_migrate(rc);
		break;
	case KV_MIG_DEVICE:
		enter_finish_migrate(rc);
		break;
	case KV_MIG_COMPLETED:
		/* The destination runs the guest now; this side keeps it
		 * paused for good. A background snapshot's guest runs on. */
		if (!is_background(rc))
			set_state(rc, KV_RUNSTATE_POSTMIGRATE);
		print_summary(rc);
		break;
	case KV_MIG_FAILED:
	case KV_MIG_CANCELLED:
		leave_finish_migrate(rc);
		print_summary(rc);
		break;
	default:
		break;
	}
}

static void on_mig_pass(void *opaque, uint64_t pass)
{
	struct run_ctl *rc = opaque;

	migration_event(rc, "MIGRATION_PASS",
			json_pack("{s:I}", "pass", (json_int_t)pass));
}

/* ---- QMP commands ---- */

/* The driver makes COMPLETED visible to query-migrate a moment before the
 * status callback moves the run state on; a client that saw "completed"
 * must not then see "finish-migrate" here. */
static enum kv_runstate current_state(struct run_ctl *rc)
{
	enum kv_runstate st = get_state(rc);
	struct kv_vm_mig_info i;

	if (st != KV_RUNSTATE_FINISH_MIGRATE)
		return st;
	kv_vm_mig_query(rc->mig, &i);
	return i.status == KV_MIG_COMPLETED ? KV_RUNSTATE_POSTMIGRATE : st;
}

static int qmp_query_status(void *opaque, void **ret, struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	enum kv_runstate st = current_state(rc);

	*ret = json_pack("{s:s,s:b,s:b}", "status", kv_runstate_name(st),
			 "running", st == KV_RUNSTATE_RUNNING, "singlestep", 0);
	return *ret ? 0 : kv_error_set(err, -ENOMEM, "out of memory");
}

static int qmp_stop(void *opaque, struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	int ret;

	if (get_state(rc) != KV_RUNSTATE_RUNNING)
		return 0; /* QEMU: stop on a stopped VM is not an error */
	ret = kv_vm_pause(rc->vm, err);
	if (ret < 0)
		return ret;
	if (move_state_from(rc, KV_RUNSTATE_RUNNING, KV_RUNSTATE_PAUSED))
		event(rc, "STOP", NULL);
	return 0;
}

static int qmp_cont(void *opaque, struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	enum kv_runstate st = get_state(rc);
	int ret;

	switch (st) {
	case KV_RUNSTATE_RUNNING:
		return 0;
	case KV_RUNSTATE_PAUSED:
		break;
	case KV_RUNSTATE_INMIGRATE:
		return kv_error_set(err, -EBUSY, "the guest is waiting for an incoming migration; it starts by itself once the migration completes");
	case KV_RUNSTATE_POSTMIGRATE:
	case KV_RUNSTATE_FINISH_MIGRATE:
		return kv_error_set(err, -EBUSY, "the guest migrated to another kvmig; resuming it here would run it twice");
	default:
		return kv_error_set(err, -EINVAL, "cannot continue a guest in state '%s'", kv_runstate_name(st));
	}
	ret = kv_vm_start(rc->vm, err);
	if (ret < 0)
		return ret;
	set_state(rc, KV_RUNSTATE_RUNNING);
	event(rc, "RESUME", NULL);
	return 0;
}

static void qmp_quit(void *opaque)
{
	struct run_ctl *rc = opaque;

	pthread_mutex_lock(&rc->lock);
	rc->quit_requested = true;
	pthread_mutex_unlock(&rc->lock);
	kv_vm_request_exit(rc->vm, 0);
}

/* What the capabilities and parameters set over QMP ask of the engine. */
static void migrate_params(struct run_ctl *rc, struct kv_mig_params *p)
{
	kv_qmp_mig_params(rc->qm, p);
}

static int mig_start(void *opaque, const char *uri,
		     const struct kv_mig_params *p, struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	enum kv_runstate st = get_state(rc);

	if (st != KV_RUNSTATE_RUNNING && st != KV_RUNSTATE_PAUSED)
		return kv_error_set(err, -EBUSY, "cannot migrate a guest in state '%s'", kv_runstate_name(st));
	return kv_vm_mig_start(rc->mig, uri, p, err);
}

static int start_incoming(struct run_ctl *rc, const char *uri,
			  struct kv_error *err);

static int mig_incoming(void *opaque, const char *uri, struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	bool defer;
	int ret;

	pthread_mutex_lock(&rc->lock);
	defer = rc->defer;
	rc->defer = false;
	pthread_mutex_unlock(&rc->lock);
	if (!defer)
		return kv_error_set(err, -EINVAL, "migrate-incoming needs kvmig run --incoming defer (and is accepted once)");
	ret = start_incoming(rc, uri, err);
	/* As QEMU: one that did not start (a bad URI, tls-creds naming
	 * nothing) may be given again. */
	pthread_mutex_lock(&rc->lock);
	if (ret < 0 && !rc->in_live)
		rc->defer = true;
	pthread_mutex_unlock(&rc->lock);
	return ret;
}

static int mig_cancel(void *opaque, struct kv_error *err)
{
	struct run_ctl *rc = opaque;

	return kv_vm_mig_cancel(rc->mig, err);
}

static int mig_settle(void *opaque, enum kv_swo_settle how,
		      struct kv_error *err)
{
	struct run_ctl *rc = opaque;

	return kv_vm_mig_settle(rc->mig, how, err);
}

static int mig_start_postcopy(void *opaque, struct kv_error *err)
{
	struct run_ctl *rc = opaque;

	return kv_vm_mig_start_postcopy(rc->mig, err);
}

static int mig_resume(void *opaque, const char *uri, struct kv_error *err)
{
	struct run_ctl *rc = opaque;

	return kv_vm_mig_resume(rc->mig, uri, err);
}

static int mig_recover(void *opaque, const char *uri, struct kv_error *err)
{
	struct run_ctl *rc = opaque;

	return kv_vm_mig_recover(rc->mig, uri, err);
}

static int mig_pause(void *opaque, struct kv_error *err)
{
	struct run_ctl *rc = opaque;

	return kv_vm_mig_pause(rc->mig, err);
}

static void mig_query(void *opaque, struct kv_vm_mig_info *info)
{
	struct run_ctl *rc = opaque;

	kv_vm_mig_query(rc->mig, info);
}

static int mig_set_params(void *opaque, const struct kv_mig_params *p,
			  struct kv_error *err)
{
	struct run_ctl *rc = opaque;

	return kv_vm_mig_set_params(rc->mig, p, err);
}

/* QEMU's CpuInfoFast. The topology is the one CPUID shows the guest: one
 * socket, one core per vCPU, one thread per core. thread-id is 0 until
 * the vCPU's thread has run (a destination before its migration). */
static json_t *cpu_info(struct run_ctl *rc, int i)
{
	char qom[64];

	snprintf(qom, sizeof(qom), "/machine/unattached/device[%d]", i);
	return json_pack("{s:i,s:s,s:i,s:{s:i,s:i,s:i},s:s}", "cpu-index", i,
			 "qom-path", qom, "thread-id",
			 kv_vm_vcpu_tid(rc->vm, i), "props", "core-id", i,
			 "thread-id", 0, "socket-id", 0, "target", "x86_64");
}

static int qmp_query_cpus_fast(void *opaque, void **ret, struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	int n = kv_vm_ncpus(rc->vm);
	json_t *list = json_array();

	for (int i = 0; list && i < n; i++) {
		json_t *cpu = cpu_info(rc, i);

		if (!cpu || json_array_append_new(list, cpu)) {
			json_decref(list);
			list = NULL;
		}
	}
	*ret = list;
	return list ? 0 : kv_error_set(err, -ENOMEM, "out of memory");
}

/*
 * kvmig has no ACPI: the guest's documented power button is a 'q' on its
 * console (guest/README.md), so that byte goes into the UART's receive
 * FIFO; the guest checks its workload and powers off (SHUTDOWN follows,
 * reason guest-shutdown). A paused guest acts on it once continued.
 */
static int qmp_system_powerdown(void *opaque, struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	enum kv_runstate st = get_state(rc);
	static const uint8_t button = 'q';

	switch (st) {
	case KV_RUNSTATE_RUNNING:
	case KV_RUNSTATE_PAUSED:
		break;
	case KV_RUNSTATE_INMIGRATE:
		return kv_error_set(err, -EBUSY, "no guest runs here yet: it is waiting for an incoming migration");
	case KV_RUNSTATE_POSTMIGRATE:
	case KV_RUNSTATE_FINISH_MIGRATE:
		return kv_error_set(err, -EBUSY, "the guest migrated to another kvmig; power it down there");
	default:
		return kv_error_set(err, -EINVAL, "cannot power down a guest in state '%s'", kv_runstate_name(st));
	}
	if (kv_serial_receive(kv_vm_serial(rc->vm), &button, 1) != 1)
		return kv_error_set(err, -EAGAIN,
				    "the guest's console input is full (the guest is not reading its UART); try again later");
	event(rc, "POWERDOWN", NULL);
	return 0;
}

static const struct kv_qmp_ops qmp_ops_template = {
    .query_status = qmp_query_status,
    .stop = qmp_stop,
    .cont = qmp_cont,
    .quit = qmp_quit,
    .query_cpus_fast = qmp_query_cpus_fast,
    .system_powerdown = qmp_system_powerdown,
};

/* ---- incoming ---- */

/* The incoming migration's status (its own table, incoming.h) becomes
 * QMP's MIGRATION event and the run state: the vCPUs started just before
 * COMPLETED (QEMU's order: RESUME, then MIGRATION completed), unless the
 * source's guest was paused: then it stays paused here, with no RESUME. */
static void on_in_status(void *opaque, enum kv_in_status st)
{
	struct run_ctl *rc = opaque;
	enum kv_runstate to;
	bool resumed;

	switch (st) {
	case KV_IN_POSTCOPY_ACTIVE:
	case KV_IN_COMPLETED:
		/* Postcopy started the guest at RUN already. */
		to = kv_vm_mig_incoming_runstate(rc->mig);
		pthread_mutex_lock(&rc->lock);
		resumed = rc->state != to;
		if (resumed)
			move_state_locked(rc, to);
		if (to == KV_RUNSTATE_RUNNING)
			rc->started = true;
		pthread_mutex_unlock(&rc->lock);
		if (resumed && to == KV_RUNSTATE_RUNNING)
			event(rc, "RESUME", NULL);
		break;
	case KV_IN_FAILED:
	case KV_IN_CANCELLED:
		pthread_mutex_lock(&rc->lock);
		rc->incoming_failed = true;
		move_state_locked(rc, KV_RUNSTATE_SHUTDOWN);
		pthread_mutex_unlock(&rc->lock);
		break;
	default:
		break;
	}
	migration_event(rc, "MIGRATION",
			json_pack("{s:s}", "status", kv_in_status_name(st)));
}

static void *incoming_main(void *arg)
{
	struct run_ctl *rc = arg;
	struct kv_error err = {0};
	int64_t t0 = kv_now_ns();

	if (kv_vm_mig_incoming(rc->mig, rc->in_uri, &err) < 0) {
		/* Nothing of the stream reached a running vCPU. */
		fprintf(stderr, "kvmig run: %s\n", err.msg);
		fprintf(stderr, "kvmig run: no guest was started\n");
		kv_vm_request_exit(rc->vm, 1);
		return NULL;
	}
	fprintf(stderr,
		"kvmig run: incoming migration complete, guest %s (%.1f ms from the first byte wait)\n",
		kv_vm_mig_incoming_runstate(rc->mig) == KV_RUNSTATE_RUNNING
		    ? "running"
		    : "paused as on the source (QMP cont starts it)",
		(double)(kv_now_ns() - t0) / 1e6);
	/* A source that missed the confirmation asks again: answer it. */
	kv_vm_mig_answer_resolves(rc->mig);
	return NULL;
}

static int start_incoming(struct run_ctl *rc, const char *uri,
			  struct kv_error *err)
{
	struct kv_mig_params p;
	struct kv_uri parsed;
	int ret;

	ret = kv_uri_parse(uri, &parsed, err);
	if (ret < 0)
		return ret;
	/* The settings so far; later ones reach the incoming migration
	 * until its source connects (mig_set_params). */
	kv_vm_mig_get_params(rc->mig, &p);
	migrate_params(rc, &p);
	ret = kv_vm_mig_set_params(rc->mig, &p, err);
	if (ret < 0)
		return ret;
	/* Listening before this returns: a peer (or a QMP client told the
	 * destination is ready) can connect at once. The incoming
	 * migration reports "setup" now (only clients of a deferred
	 * incoming are connected yet to see it). */
	ret = kv_vm_mig_listen(rc->mig, uri, err);
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&rc->lock);
	snprintf(rc->in_uri, sizeof(rc->in_uri), "%s", uri);
	ret = pthread_create(&rc->in_thread, NULL, incoming_main, rc);
	rc->in_live = ret == 0;
	pthread_mutex_unlock(&rc->lock);
	if (ret)
		return kv_error_set_errno(err, -ret,
					  "cannot start the incoming thread");
	return 0;
}

const char *run_ctl_listen_uri(struct run_ctl *rc)
{
	return kv_vm_mig_listen_uri(rc->mig);
}

int run_ctl_incoming(struct run_ctl *rc, const char *uri, struct kv_error *err)
{
	set_state(rc, KV_RUNSTATE_INMIGRATE);
	if (!strcmp(uri, "defer")) {
		pthread_mutex_lock(&rc->lock);
		rc->defer = true;
		pthread_mutex_unlock(&rc->lock);
		return 0;
	}
	return start_incoming(rc, uri, err);
}

/* ---- lifecycle ---- */

int run_ctl_start_monitor(struct run_ctl *rc, const char *qmp_uri,
			  const struct kv_qmp_tls *tls, struct kv_error *err)
{
	struct kv_qmp_ops ops = qmp_ops_template;

	if (!qmp_uri)
		return 0;
	ops.opaque = rc;
	ops.migration = rc->qm;
	return kv_qmp_start_tls(qmp_uri, tls, &ops, &rc->qmp, err);
}

int run_ctl_new(struct kv_vm *vm, bool verify_ram, struct run_ctl **out,
		struct kv_error *err)
{
	struct kv_vm_mig_events ev = {
	    .status = on_mig_status,
	    .pass = on_mig_pass,
	    .incoming_status = on_in_status,
	};
	struct run_ctl *rc = calloc(1, sizeof(*rc));
	int ret;

	if (!rc)
		return kv_error_set(err, -ENOMEM, "out of memory");
	const struct kv_qmp_mig_ops mig_ops = {
	    .start = mig_start,
	    .incoming = mig_incoming,
	    .cancel = mig_cancel,
	    .start_postcopy = mig_start_postcopy,
	    .resume = mig_resume,
	    .recover = mig_recover,
	    .pause = mig_pause,
	    .settle = mig_settle,
	    .query = mig_query,
	    .set_params = mig_set_params,
	    .opaque = rc,
	};

	rc->vm = vm;
	rc->state = KV_RUNSTATE_PAUSED;
	pthread_mutex_init(&rc->lock, NULL);
	rc->qm = kv_qmp_mig_new(&mig_ops);
	if (!rc->qm) {
		run_ctl_free(rc);
		return kv_error_set(err, -ENOMEM, "out of memory");
	}
	ev.opaque = rc;
	ret = kv_vm_mig_new(vm, verify_ram, &ev, &rc->mig, err);
	if (ret < 0) {
		run_ctl_free(rc);
		return ret;
	}
	*out = rc;
	return 0;
}

void run_ctl_set_objects(struct run_ctl *rc, const struct kv_objects *objects)
{
	kv_qmp_mig_set_objects(rc->qm, objects);
}

void run_ctl_booted(struct run_ctl *rc)
{
	pthread_mutex_lock(&rc->lock);
	move_state_locked(rc, KV_RUNSTATE_RUNNING);
	rc->started = true;
	pthread_mutex_unlock(&rc->lock);
}

/* QEMU's SHUTDOWN {guest, reason}: guest is true when the guest itself
 * asked (a power-off, also after system_powerdown). The main loop does not
 * say why it ended, so a signal or a failed vCPU reads as guest-shutdown
 * too. */
void run_ctl_shutdown(struct run_ctl *rc, int exit_code)
{
	const char *reason = "guest-shutdown";

	pthread_mutex_lock(&rc->lock);
	if (rc->quit_requested)
		reason = "host-qmp-quit";
	else if (rc->incoming_failed || exit_code < 0 || exit_code == 1)
		reason = "host-error";
	else if (exit_code > 128)
		reason = "host-signal";
	move_state_locked(rc, KV_RUNSTATE_SHUTDOWN);
	pthread_mutex_unlock(&rc->lock);
	event(rc, "SHUTDOWN",
	      json_pack("{s:b,s:s}", "guest", !strcmp(reason, "guest-shutdown"),
			"reason", reason));
}

void run_ctl_free(struct run_ctl *rc)
{
	bool live;

	if (!rc)
		return;
	if (rc->mig)
		kv_vm_mig_incoming_abort(rc->mig);
	pthread_mutex_lock(&rc->lock);
	live = rc->in_live;
	rc->in_live = false;
	pthread_mutex_unlock(&rc->lock);
	if (live)
		pthread_join(rc->in_thread, NULL);
	/* Stop the monitor before the migration it reports on. */
	if (rc->qmp)
		kv_qmp_stop(rc->qmp);
	kv_vm_mig_free(rc->mig);
	kv_qmp_mig_free(rc->qm);
	pthread_mutex_destroy(&rc->lock);
	free(rc);
}
