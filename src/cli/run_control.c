/* SPDX-License-Identifier: MIT */
#include "cli/run_control.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/log.h"
#include "migration/migration.h"
#include "monitor/qmp.h"
#include "vmm/vm_migration.h"

#define MIB (1024.0 * 1024.0)

struct run_ctl {
	struct kv_vm *vm;
	struct kv_vm_mig *mig;
	struct kv_qmp *qmp;

	pthread_mutex_t lock; /* guards the fields below */
	const char *state;    /* QEMU RunState name */
	bool started;         /* the vCPUs ran at least once */
	bool defer;           /* --incoming defer, not yet given a URI */
	bool in_live;
	pthread_t in_thread;
	char in_uri[300];
};

static void set_state(struct run_ctl *rc, const char *state)
{
	pthread_mutex_lock(&rc->lock);
	rc->state = state;
	pthread_mutex_unlock(&rc->lock);
}

static const char *get_state(struct run_ctl *rc)
{
	const char *s;

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

/* ---- migration events ---- */

static void print_summary(struct run_ctl *rc)
{
	struct kv_vm_mig_info info;

	kv_vm_mig_query(rc->mig, &info);
	fprintf(stderr,
		"kvmig run: migration %s: total %lld ms, downtime %lld ms "
		"(vCPU pause %.2f ms), setup %lld ms, %.1f MiB transferred, "
		"%llu zero pages, %llu normal pages, %llu passes\n",
		kv_mig_status_name(info.status),
		(long long)info.stats.total_time_ms,
		(long long)info.stats.downtime_ms,
		(double)kv_vm_last_pause_ns(rc->vm) / 1e6,
		(long long)info.stats.setup_time_ms,
		(double)info.stats.transferred / MIB,
		(unsigned long long)info.stats.zero_pages,
		(unsigned long long)info.stats.normal_pages,
		(unsigned long long)info.stats.passes);
	if (info.error[0])
		fprintf(stderr, "kvmig run: migration error: %s\n", info.error);
}

static void on_mig_status(void *opaque, enum kv_mig_status st)
{
	struct run_ctl *rc = opaque;

	event(rc, "MIGRATION",
	      json_pack("{s:s}", "status", kv_mig_status_name(st)));
	switch (st) {
	case KV_MIG_DEVICE:
		set_state(rc, "finish-migrate");
		event(rc, "STOP", NULL);
		break;
	case KV_MIG_COMPLETED:
		/* The destination runs the guest now; this side keeps it
		 * paused for good. */
		set_state(rc, "postmigrate");
		print_summary(rc);
		break;
	case KV_MIG_FAILED:
	case KV_MIG_CANCELLED:
		if (!strcmp(get_state(rc), "finish-migrate")) {
			set_state(rc, "running");
			event(rc, "RESUME", NULL);
		}
		print_summary(rc);
		break;
	default:
		break;
	}
}

static void on_mig_pass(void *opaque, uint64_t pass)
{
	struct run_ctl *rc = opaque;

	event(rc, "MIGRATION_PASS", json_pack("{s:I}", "pass", (json_int_t)pass));
}

/* ---- QMP commands ---- */

static int qmp_query_status(void *opaque, void **ret, struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	const char *st = get_state(rc);

	*ret = json_pack("{s:s,s:b,s:b}", "status", st, "running",
			 !strcmp(st, "running"), "singlestep", 0);
	return *ret ? 0 : kv_error_set(err, -ENOMEM, "out of memory");
}

static int qmp_stop(void *opaque, struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	int ret;

	if (strcmp(get_state(rc), "running"))
		return 0; /* QEMU: stop on a stopped VM is not an error */
	ret = kv_vm_pause(rc->vm, err);
	if (ret < 0)
		return ret;
	set_state(rc, "paused");
	event(rc, "STOP", NULL);
	return 0;
}

static int qmp_cont(void *opaque, struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	const char *st = get_state(rc);
	int ret;

	if (!strcmp(st, "running"))
		return 0;
	if (!strcmp(st, "inmigrate"))
		return kv_error_set(err, -EBUSY,
				    "the guest is waiting for an incoming "
				    "migration; it starts by itself once the "
				    "migration completes");
	if (!strcmp(st, "postmigrate") || !strcmp(st, "finish-migrate"))
		return kv_error_set(err, -EBUSY,
				    "the guest migrated to another kvmig; "
				    "resuming it here would run it twice");
	if (strcmp(st, "paused"))
		return kv_error_set(err, -EINVAL, "cannot continue a guest in "
						  "state '%s'",
				    st);
	ret = kv_vm_start(rc->vm, err);
	if (ret < 0)
		return ret;
	set_state(rc, "running");
	event(rc, "RESUME", NULL);
	return 0;
}

static void qmp_quit(void *opaque)
{
	struct run_ctl *rc = opaque;

	kv_vm_request_exit(rc->vm, 0);
}

static int qmp_migrate(void *opaque, const char *uri, struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	const char *st = get_state(rc);

	if (strcmp(st, "running") && strcmp(st, "paused"))
		return kv_error_set(err, -EBUSY,
				    "cannot migrate a guest in state '%s'", st);
	return kv_vm_mig_start(rc->mig, uri, NULL, err);
}

static int start_incoming(struct run_ctl *rc, const char *uri,
			  struct kv_error *err);

static int qmp_migrate_incoming(void *opaque, const char *uri,
				struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	bool defer;

	pthread_mutex_lock(&rc->lock);
	defer = rc->defer;
	rc->defer = false;
	pthread_mutex_unlock(&rc->lock);
	if (!defer)
		return kv_error_set(err, -EINVAL,
				    "migrate-incoming needs kvmig run "
				    "--incoming defer (and is accepted once)");
	return start_incoming(rc, uri, err);
}

static int qmp_migrate_cancel(void *opaque, struct kv_error *err)
{
	struct run_ctl *rc = opaque;

	return kv_vm_mig_cancel(rc->mig, err);
}

static int qmp_query_migrate(void *opaque, void **ret, struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	struct kv_vm_mig_info i;
	uint64_t remaining, elapsed_ms;
	json_t *o, *ram;
	double mbps;

	kv_vm_mig_query(rc->mig, &i);
	if (!i.started) {
		*ret = json_object(); /* QEMU: {} before any migration */
		return 0;
	}
	remaining = i.status == KV_MIG_COMPLETED ? 0 : i.progress.remaining;
	elapsed_ms = i.stats.total_time_ms > 0 ? (uint64_t)i.stats.total_time_ms
					       : (uint64_t)i.progress.elapsed_ms;
	mbps = i.stats.bandwidth * 8.0 / 1e6;
	ram = json_pack(
	    "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:I,s:I}", "transferred",
	    (json_int_t)i.stats.transferred, "remaining", (json_int_t)remaining,
	    "total", (json_int_t)i.ram_total, "duplicate",
	    (json_int_t)i.stats.zero_pages, "normal",
	    (json_int_t)i.stats.normal_pages, "normal-bytes",
	    (json_int_t)(i.stats.normal_pages * KV_PAGE_SIZE), "page-size",
	    (json_int_t)KV_PAGE_SIZE, "mbps", mbps, "dirty-sync-count",
	    (json_int_t)i.stats.passes, "pages-per-second",
	    (json_int_t)(i.stats.bandwidth / KV_PAGE_SIZE));
	o = json_pack("{s:s,s:I,s:I,s:o}", "status",
		      kv_mig_status_name(i.status), "total-time",
		      (json_int_t)elapsed_ms, "setup-time",
		      (json_int_t)i.stats.setup_time_ms, "ram", ram);
	if (!o)
		return kv_error_set(err, -ENOMEM, "out of memory");
	if (i.status == KV_MIG_COMPLETED)
		json_object_set_new(o, "downtime",
				    json_integer(i.stats.downtime_ms));
	else
		json_object_set_new(
		    o, "expected-downtime",
		    json_integer((json_int_t)i.progress.expected_downtime_ms));
	if (i.error[0])
		json_object_set_new(o, "error-desc", json_string(i.error));
	*ret = o;
	return 0;
}

static int qmp_migrate_set_parameters(void *opaque, void *args,
				      struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	json_t *dl = json_object_get(args, "downtime-limit");
	json_t *bw = json_object_get(args, "max-bandwidth");
	struct kv_mig_params p;

	kv_vm_mig_get_params(rc->mig, &p);
	/* QEMU's bounds: downtime-limit up to 2000 s, in ms. */
	if (dl && (json_integer_value(dl) < 0 ||
		   json_integer_value(dl) > 2000000))
		return kv_error_set(err, -EINVAL,
				    "Parameter 'downtime-limit' expects an "
				    "integer in the range of 0 to 2000000 "
				    "milliseconds");
	if (bw && json_integer_value(bw) < 0)
		return kv_error_set(err, -EINVAL,
				    "Parameter 'max-bandwidth' expects a "
				    "non-negative number of bytes per second");
	if (dl)
		p.downtime_limit_ms = (uint64_t)json_integer_value(dl);
	if (bw)
		p.max_bandwidth = (uint64_t)json_integer_value(bw);
	kv_vm_mig_set_params(rc->mig, &p);
	return 0;
}

static int qmp_query_migrate_parameters(void *opaque, void **ret,
					struct kv_error *err)
{
	struct run_ctl *rc = opaque;
	struct kv_mig_params p;

	kv_vm_mig_get_params(rc->mig, &p);
	*ret = json_pack("{s:I,s:I}", "downtime-limit",
			 (json_int_t)p.downtime_limit_ms, "max-bandwidth",
			 (json_int_t)p.max_bandwidth);
	return *ret ? 0 : kv_error_set(err, -ENOMEM, "out of memory");
}

static const struct kv_qmp_ops qmp_ops_template = {
    .query_status = qmp_query_status,
    .stop = qmp_stop,
    .cont = qmp_cont,
    .quit = qmp_quit,
    .migrate = qmp_migrate,
    .migrate_incoming = qmp_migrate_incoming,
    .migrate_cancel = qmp_migrate_cancel,
    .query_migrate = qmp_query_migrate,
    .migrate_set_parameters = qmp_migrate_set_parameters,
    .query_migrate_parameters = qmp_query_migrate_parameters,
};

/* ---- incoming ---- */

static void *incoming_main(void *arg)
{
	struct run_ctl *rc = arg;
	struct kv_error err = {0};
	int64_t t0 = kv_now_ns();
	int ret;

	ret = kv_vm_mig_incoming(rc->mig, rc->in_uri, &err);
	if (ret == 0)
		ret = kv_vm_start(rc->vm, &err);
	kv_debug("switchover", "@%.3f dst: vCPUs started (%d)",
		 (double)kv_now_ns() / 1e6, ret);
	if (ret < 0) {
		/* Nothing of the stream reached a running vCPU. */
		fprintf(stderr, "kvmig run: %s\n", err.msg);
		fprintf(stderr, "kvmig run: no guest was started\n");
		event(rc, "MIGRATION", json_pack("{s:s}", "status", "failed"));
		set_state(rc, "shutdown");
		kv_vm_request_exit(rc->vm, 1);
		return NULL;
	}
	pthread_mutex_lock(&rc->lock);
	rc->state = "running";
	rc->started = true;
	pthread_mutex_unlock(&rc->lock);
	event(rc, "MIGRATION", json_pack("{s:s}", "status", "completed"));
	event(rc, "RESUME", NULL);
	fprintf(stderr,
		"kvmig run: incoming migration complete, guest running "
		"(%.1f ms from the first byte wait)\n",
		(double)(kv_now_ns() - t0) / 1e6);
	return NULL;
}

static int start_incoming(struct run_ctl *rc, const char *uri,
			  struct kv_error *err)
{
	struct kv_uri parsed;
	int ret;

	ret = kv_uri_parse(uri, &parsed, err);
	if (ret < 0)
		return ret;
	/* Listening before this returns: a peer (or a QMP client told the
	 * destination is ready) can connect at once. */
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

int run_ctl_incoming(struct run_ctl *rc, const char *uri,
		     struct kv_error *err)
{
	set_state(rc, "inmigrate");
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
			  struct kv_error *err)
{
	struct kv_qmp_ops ops = qmp_ops_template;

	if (!qmp_uri)
		return 0;
	ops.opaque = rc;
	return kv_qmp_start(qmp_uri, &ops, &rc->qmp, err);
}

int run_ctl_new(struct kv_vm *vm, bool verify_ram, struct run_ctl **out,
		struct kv_error *err)
{
	struct kv_vm_mig_events ev = {
	    .status = on_mig_status,
	    .pass = on_mig_pass,
	};
	struct run_ctl *rc = calloc(1, sizeof(*rc));
	int ret;

	if (!rc)
		return kv_error_set(err, -ENOMEM, "out of memory");
	rc->vm = vm;
	rc->state = "paused";
	pthread_mutex_init(&rc->lock, NULL);
	ev.opaque = rc;
	ret = kv_vm_mig_new(vm, verify_ram, &ev, &rc->mig, err);
	if (ret < 0) {
		run_ctl_free(rc);
		return ret;
	}
	*out = rc;
	return 0;
}

void run_ctl_booted(struct run_ctl *rc)
{
	pthread_mutex_lock(&rc->lock);
	rc->state = "running";
	rc->started = true;
	pthread_mutex_unlock(&rc->lock);
}

void run_ctl_shutdown(struct run_ctl *rc)
{
	set_state(rc, "shutdown");
	event(rc, "SHUTDOWN", json_pack("{s:b,s:s}", "guest", 1, "reason",
					"guest-shutdown"));
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
	pthread_mutex_destroy(&rc->lock);
	free(rc);
}
