/* SPDX-License-Identifier: MIT */
/*
 * kvmig migrate | status | cancel | settle | set: drive a running VM's migration
 * over QMP (kvmig run --qmp, or QEMU's -qmp: the same protocol).
 *
 * Exit codes: 0 success (for a waited-for migration: it completed), 1 the
 * command ran and failed (connection, QMP error reply, a migration that
 * failed or was cancelled), 2 usage error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/error.h"
#include "cli/cli.h"
#include "cli/option_args.h"
#include "cli/qmp_client.h"
#include "io/objects.h"
#include "io/tls.h"
#include "monitor/qmp.h"
#include "monitor/qmp_migration.h"
#include "vmm/runstate.h"

#define CTL_TIMEOUT_MS		10000
#define CTL_DEFAULT_INTERVAL_MS 500
#define CTL_CANCEL_WAIT_MS	30000
#define CTL_SETTLE_TRIES	40
#define CTL_SETTLE_STEP_MS	50
/* How every control command reaches a monitor over TLS. */
#define CTL_TLS_HELP                                                          \
	"  --qmp tcp:HOST:PORT,tls-creds=ID[,tls-hostname=NAME]\n"             \
	"                  TLS to a monitor with tls-creds (kvmig run --qmp "  \
	"...,tls-creds=ID);\n"                                                 \
	"                  the monitor's certificate must name NAME (default "\
	"HOST)\n"                                                              \
	"  --object SPEC   the credentials, as QEMU's (repeatable): "          \
	"tls-creds-x509,id=ID,\n"                                              \
	"                  dir=DIR,endpoint=client or "                        \
	"tls-creds-psk,id=ID,dir=DIR,\n"                                       \
	"                  endpoint=client,username=U\n"

/* ---- argument splitting ---- */

/* kv_cli_parse() knows options only; the control commands also take
 * positional arguments (URI, NAME=VALUE) and a repeatable --capability.
 * This separates them before the options go to kv_cli_parse(). */
struct ctl_args {
	int argc;
	char **argv; /* argv[0] and the options */
	int npos;
	char **pos;
	int ncaps;
	char **caps;
};

static void ctl_args_free(struct ctl_args *a)
{
	free(a->argv);
	free(a->pos);
	free(a->caps);
}

static int ctl_split(const char *cmd, int argc, char **argv,
		     const struct kv_cli_opt *opts, bool want_caps,
		     struct ctl_args *a)
{
	bool options_done = false;

	a->argc = a->npos = a->ncaps = 0;
	a->argv = calloc((size_t)argc + 1, sizeof(char *));
	a->pos = calloc((size_t)argc + 1, sizeof(char *));
	a->caps = calloc((size_t)argc + 1, sizeof(char *));
	if (!a->argv || !a->pos || !a->caps) {
		fprintf(stderr, "kvmig %s: out of memory\n", cmd);
		return KV_EXIT_FAILURE;
	}
	a->argv[a->argc++] = argv[0];
	for (int i = 1; i < argc; i++) {
		char *arg = argv[i];
		const struct kv_cli_opt *o;
		const char *eq;
		size_t len;

		if (options_done || arg[0] != '-' || !arg[1]) {
			a->pos[a->npos++] = arg;
			continue;
		}
		if (!strcmp(arg, "--")) {
			options_done = true;
			continue;
		}
		a->argv[a->argc++] = arg;
		if (strncmp(arg, "--", 2))
			continue; /* "-h", or an error for kv_cli_parse */
		eq = strchr(arg + 2, '=');
		len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
		if (want_caps && len == 10 &&
		    !strncmp(arg + 2, "capability", 10)) {
			a->argc--;
			if (eq) {
				a->caps[a->ncaps++] = (char *)eq + 1;
			} else if (i + 1 < argc) {
				a->caps[a->ncaps++] = argv[++i];
			} else {
				return kv_cli_usage_error(
				    cmd, "option '--capability' needs a value");
			}
			continue;
		}
		o = kv_cli_find_opt(opts, arg + 2, len);
		if (o && o->takes_value && !eq && i + 1 < argc)
			a->argv[a->argc++] = argv[++i];
	}
	return KV_EXIT_OK;
}

/* ---- formatting ---- */

static const char *fmt_bytes(double v, char *buf, size_t len)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	int u = 0;

	while (v >= 1024 && u < 4) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%.0f B", v);
	else
		snprintf(buf, len, "%.*f %s", v < 10 ? 2 : 1, v, units[u]);
	return buf;
}

static bool status_is_final(const char *s)
{
	return s && (!strcmp(s, "completed") || !strcmp(s, "failed") ||
		     !strcmp(s, "cancelled"));
}

static int64_t jint(json_t *o, const char *key, int64_t dflt)
{
	json_t *v = json_object_get(o, key);

	if (json_is_integer(v))
		return json_integer_value(v);
	if (json_is_real(v))
		return (int64_t)json_real_value(v);
	return dflt;
}

/* What the displays need from a query-migrate reply. */
struct mig_view {
	const char *status; /* NULL: no migration yet */
	int64_t total_time, setup_time, downtime, expected_downtime;
	int64_t transferred, remaining, total, passes;
	double mbps;
	const char *error;
	bool has_ram;
	double percent; /* pass-aware, 0..100 */
	double rate;	/* bytes per second */
};

/* Successive samples, for the transfer rate. */
struct progress {
	bool have_sample;
	int64_t last_ms;
	int64_t last_transferred;
	double rate;
};

static void mig_view_read(json_t *mig, struct mig_view *v)
{
	json_t *ram = json_object_get(mig, "ram");

	memset(v, 0, sizeof(*v));
	v->status = json_string_value(json_object_get(mig, "status"));
	if (v->status && !strcmp(v->status, "none"))
		v->status = NULL; /* QEMU's word for "no migration yet" */
	v->total_time = jint(mig, "total-time", -1);
	v->setup_time = jint(mig, "setup-time", -1);
	v->downtime = jint(mig, "downtime", -1);
	v->expected_downtime = jint(mig, "expected-downtime", -1);
	v->has_ram = json_is_object(ram);
	v->transferred = jint(ram, "transferred", 0);
	v->remaining = jint(ram, "remaining", 0);
	v->total = jint(ram, "total", 0);
	v->passes = jint(ram, "dirty-sync-count", 0);
	v->mbps = json_number_value(json_object_get(ram, "mbps"));
	v->error = json_string_value(json_object_get(mig, "error-desc"));
	v->rate = v->mbps * 1e6 / 8; /* QEMU's mbps is megabits per second */
}

/*
 * Percent done. The first pass walks all of RAM, so it is measured against
 * the total (zero pages cost almost no bytes on the wire, so "transferred"
 * would understate it); a later pass re-sends only what was dirtied, so
 * there it is transferred / (transferred + remaining).
 */
static void progress_update(struct progress *p, struct mig_view *v,
			    int64_t now_ms)
{
	/* The VM's own clock when it gives one: a VM that refreshes its
	 * counters only now and then must not look like a falling rate. */
	int64_t t = v->total_time >= 0 ? v->total_time : now_ms;

	if (p->have_sample && t > p->last_ms &&
	    v->transferred >= p->last_transferred) {
		double sample = (double)(v->transferred - p->last_transferred) *
				1000.0 / (double)(t - p->last_ms);

		p->rate = p->rate > 0 ? 0.5 * p->rate + 0.5 * sample : sample;
	}
	if (p->rate > 0)
		v->rate = p->rate;
	if (!p->have_sample || t != p->last_ms) {
		p->have_sample = true;
		p->last_ms = t;
		p->last_transferred = v->transferred;
	}

	if (v->status && !strcmp(v->status, "completed"))
		v->percent = 100;
	else if (v->passes == 0 && v->transferred == 0)
		v->percent = 0; /* not started (or failed before sending) */
	else if (v->passes <= 1 && v->total > 0)
		v->percent = 100.0 * (double)(v->total - v->remaining) /
			     (double)v->total;
	else if (v->transferred + v->remaining > 0)
		v->percent = 100.0 * (double)v->transferred /
			     (double)(v->transferred + v->remaining);
	if (v->percent < 0)
		v->percent = 0;
	if (v->percent > 100)
		v->percent = 100;
}

static void print_summary(FILE *f, const struct mig_view *v)
{
	char b1[32], b2[32];

	if (!strcmp(v->status, "completed")) {
		double avg = v->total_time > 0
				 ? (double)v->transferred * 1000.0 /
				       (double)v->total_time
				 : 0;

		fprintf(f,
			"migration completed in %lld ms: downtime %lld ms, "
			"setup %lld ms, %s transferred in %lld passes, "
			"%s/s average\n",
			(long long)v->total_time, (long long)v->downtime,
			(long long)v->setup_time,
			fmt_bytes((double)v->transferred, b1, sizeof(b1)),
			(long long)v->passes, fmt_bytes(avg, b2, sizeof(b2)));
	} else if (!strcmp(v->status, "failed")) {
		fprintf(f, "migration failed after %lld ms: %s\n",
			(long long)v->total_time,
			v->error ? v->error : "(no error-desc given)");
	} else {
		fprintf(f,
			"migration %s after %lld ms (%s transferred in %lld "
			"passes)\n",
			v->status, (long long)v->total_time,
			fmt_bytes((double)v->transferred, b1, sizeof(b1)),
			(long long)v->passes);
	}
}

/* QEMU reports expected-downtime only once it has measured a pass. */
static const char *fmt_expected_downtime(const struct mig_view *v, char *buf,
					 size_t len)
{
	if (v->expected_downtime < 0)
		return "? ms";
	snprintf(buf, len, "~%lld ms", (long long)v->expected_downtime);
	return buf;
}

/* One plain line per update, for logs and pipes. */
static void print_progress_line(FILE *f, const struct mig_view *v)
{
	char b1[32], b2[32], b3[32], dt[32];

	fprintf(f,
		"migration %s: pass %lld, %.1f%%, %s/s, transferred %s, "
		"remaining %s, expected downtime %s, total time %lld ms\n",
		v->status, (long long)v->passes, v->percent,
		fmt_bytes(v->rate, b1, sizeof(b1)),
		fmt_bytes((double)v->transferred, b2, sizeof(b2)),
		fmt_bytes((double)v->remaining, b3, sizeof(b3)),
		fmt_expected_downtime(v, dt, sizeof(dt)),
		(long long)v->total_time);
	fflush(f);
}

static int terminal_columns(int fd)
{
	struct winsize ws;

	if (ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20)
		return ws.ws_col;
	return 80;
}

/* The live bar, redrawn in place. Fields have fixed widths so nothing
 * jumps between redraws; the line never wraps (that would break the
 * carriage-return redraw): a narrow terminal loses the last fields, so the
 * least needed one ("sent") comes last. */
static void draw_bar(FILE *f, int cols, const struct mig_view *v)
{
	char line[512], bar[64];
	char b1[32], b2[32], b3[32], dt[32];
	int width = cols >= 130 ? 30 : cols >= 100 ? 20 : 10;
	int fill = (int)(v->percent * width / 100.0 + 0.5);

	for (int i = 0; i < width; i++)
		bar[i] = i < fill ? '#' : '.';
	bar[width] = '\0';
	snprintf(line, sizeof(line),
		 "%s [%s] %5.1f%% pass %lld %10s/s  left %9s  downtime %s  sent %s",
		 v->status, bar, v->percent, (long long)v->passes,
		 fmt_bytes(v->rate, b1, sizeof(b1)),
		 fmt_bytes((double)v->remaining, b2, sizeof(b2)),
		 fmt_expected_downtime(v, dt, sizeof(dt)),
		 fmt_bytes((double)v->transferred, b3, sizeof(b3)));
	if ((int)strlen(line) > cols - 1)
		line[cols - 1] = '\0';
	fprintf(f, "\r\033[K%s", line);
	fflush(f);
}

/* ---- talking to the VM ---- */

struct ctl {
	const char *cmd;
	struct kv_qmpc *qmp;
};

/* The QMP address's tls-creds (an endpoint=client --object) and
 * tls-hostname: TLS to a monitor started with tls-creds. */
static int ctl_tls(const char *cmd, const char *addr,
		   const struct kv_objects *objects, struct kv_qmp_spec *spec,
		   struct kv_qmpc_tls *tls)
{
	struct kv_error err = {0};

	memset(tls, 0, sizeof(*tls));
	if (kv_qmp_spec_parse(addr, KV_QMP_CONNECT, spec, &err) < 0)
		return kv_cli_usage_error(cmd, "--qmp: %s", err.msg);
	if (!spec->tls_creds[0])
		return KV_EXIT_OK;
	if (!objects)
		return kv_cli_usage_error(cmd, "--qmp: tls-creds=%s needs an --object tls-creds-x509 or tls-creds-psk with id=%s, endpoint=client", spec->tls_creds, spec->tls_creds);
	tls->creds = kv_objects_tls_creds(objects, spec->tls_creds, &err);
	if (!tls->creds)
		return kv_cli_usage_error(cmd, "--qmp: %s", err.msg);
	if (kv_tls_creds_endpoint(tls->creds) != KV_TLS_CLIENT)
		return kv_cli_usage_error(cmd, "--qmp: tls-creds '%s' has endpoint=server: connecting needs endpoint=client", spec->tls_creds);
	tls->hostname = spec->tls_hostname;
	return KV_EXIT_OK;
}

static int ctl_fail(const struct ctl *c, const struct kv_error *err)
{
	fprintf(stderr, "kvmig %s: %s\n", c->cmd, err->msg);
	return KV_EXIT_FAILURE;
}

static int ctl_connect(struct ctl *c, const char *cmd, const char *addr,
		       const struct kv_objects *objects)
{
	struct kv_error err = {0};
	struct kv_qmp_spec spec;
	struct kv_qmpc_tls tls;
	int rc;

	c->cmd = cmd;
	c->qmp = NULL;
	rc = ctl_tls(cmd, addr, objects, &spec, &tls);
	if (rc)
		return rc;
	if (kv_qmpc_connect_tls(spec.uri, &tls, CTL_TIMEOUT_MS, &c->qmp,
				&err) < 0)
		return ctl_fail(c, &err);
	return KV_EXIT_OK;
}

/* The --object options every control command takes, for tls-creds. */
typedef int (*ctl_main)(int argc, char **argv,
			const struct kv_objects *objects);

static int with_objects(const char *cmd, int argc, char **argv, ctl_main fn)
{
	struct kv_objects *objects = NULL;
	int rc = kv_cli_take_objects(cmd, &argc, argv, &objects);

	if (rc == KV_EXIT_OK)
		rc = fn(argc, argv, objects);
	kv_objects_free(objects);
	return rc;
}

/* Run a command; on failure print the error (a QMP error reply with its
 * class and desc) and return KV_EXIT_FAILURE. */
static int ctl_exec(struct ctl *c, const char *name, json_t *args, json_t **ret)
{
	struct kv_error err = {0};

	if (kv_qmpc_execute(c->qmp, name, args, ret, CTL_TIMEOUT_MS, &err) < 0)
		return ctl_fail(c, &err);
	return KV_EXIT_OK;
}

/* query-migrate and query-status as one JSON object for scripts. */
static json_t *status_json(json_t *mig, json_t *vm, const struct mig_view *v)
{
	json_t *o = json_object();

	json_object_set_new(o, "status",
			    json_string(v->status ? v->status : "none"));
	if (vm) {
		json_object_set(o, "vm-status", json_object_get(vm, "status"));
		json_object_set(o, "running", json_object_get(vm, "running"));
	}
	json_object_set_new(o, "progress",
			    json_pack("{s:f,s:I,s:f}", "percent", v->percent,
				      "pass", (json_int_t)v->passes,
				      "bytes-per-second", v->rate));
	json_object_set(o, "migrate", mig);
	return o;
}

static void print_json_line(json_t *o)
{
	char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);

	if (text) {
		printf("%s\n", text);
		fflush(stdout);
		free(text);
	}
}

static bool completed_unsettled(json_t *mig, json_t *vm)
{
	const char *st = json_string_value(json_object_get(mig, "status"));
	const char *run = json_string_value(json_object_get(vm, "status"));
	enum kv_runstate rs;

	if (!st || strcmp(st, "completed"))
		return false;
	if (kv_runstate_parse(run, &rs) && rs == KV_RUNSTATE_FINISH_MIGRATE)
		return true;
	/* only a source has RAM counters and times */
	return json_is_object(json_object_get(mig, "ram")) &&
	       jint(mig, "total-time", 0) <= 0;
}

/*
 * QEMU says "completed" a moment before it fills in total-time and
 * downtime and leaves finish-migrate: ask again (briefly) so a summary
 * does not show zeros. *vm is fetched if NULL; both may be replaced.
 */
static int settle_completed(struct ctl *c, json_t **mig, json_t **vm)
{
	for (int i = 0; i < CTL_SETTLE_TRIES; i++) {
		int rc;

		if (!*vm) {
			rc = ctl_exec(c, "query-status", NULL, vm);
			if (rc)
				return rc;
		}
		if (!completed_unsettled(*mig, *vm))
			return KV_EXIT_OK;
		kv_sleep_ns(CTL_SETTLE_STEP_MS * 1000000LL);
		json_decref(*mig);
		json_decref(*vm);
		*mig = *vm = NULL;
		rc = ctl_exec(c, "query-migrate", NULL, mig);
		if (rc)
			return rc;
	}
	return KV_EXIT_OK;
}

/* Sleep for interval_ms while taking events off the socket, so they do not
 * pile up; a MIGRATION event ends the wait early (the status changed). */
static int ctl_pause(struct ctl *c, int interval_ms)
{
	int64_t deadline = kv_now_ms() + interval_ms;
	struct kv_error err = {0};

	for (;;) {
		int64_t left = deadline - kv_now_ms();
		json_t *ev;
		int rc;
		bool migration;

		if (left <= 0)
			return KV_EXIT_OK;
		rc = kv_qmpc_next_event(c->qmp, (int)left, &ev, &err);
		if (rc < 0)
			return ctl_fail(c, &err);
		if (rc == 0)
			return KV_EXIT_OK;
		migration = !strcmp(
		    json_string_value(json_object_get(ev, "event")) ?: "",
		    "MIGRATION");
		json_decref(ev);
		if (migration)
			return KV_EXIT_OK;
	}
}

enum watch_style {
	WATCH_LINES,	  /* one plain line per update, then the summary */
	WATCH_BAR,	  /* a bar redrawn in place, then the summary */
	WATCH_JSON,	  /* one JSON object per update */
	WATCH_SUMMARY,	  /* only the summary at the end */
	WATCH_JSON_FINAL, /* only the final JSON object */
};

/* Poll until the migration reaches a final status: 0 if it completed. */
static int ctl_watch(struct ctl *c, enum watch_style style, int interval_ms,
		     bool announce_wait)
{
	struct progress prog = {0};
	bool told_waiting = false, told_undecided = false, drawn = false;
	int cols = terminal_columns(STDOUT_FILENO);

	for (;;) {
		json_t *mig = NULL, *vm = NULL;
		struct mig_view v;
		bool json = style == WATCH_JSON || style == WATCH_JSON_FINAL;
		bool final;
		int rc;

		rc = ctl_exec(c, "query-migrate", NULL, &mig);
		if (!rc && json)
			rc = ctl_exec(c, "query-status", NULL, &vm);
		if (!rc)
			rc = settle_completed(c, &mig, &vm);
		if (rc) {
			json_decref(mig);
			json_decref(vm);
			if (drawn)
				printf("\n");
			return rc;
		}
		mig_view_read(mig, &v);
		progress_update(&prog, &v, kv_now_ms());
		final = status_is_final(v.status);
		if (json && (final || style == WATCH_JSON)) {
			json_t *o = status_json(mig, vm, &v);

			print_json_line(o);
			json_decref(o);
		} else if (!v.status) {
			if (!told_waiting && !json && announce_wait)
				fprintf(stderr,
					"kvmig %s: no migration yet, waiting for one\n",
					c->cmd);
			told_waiting = true;
		} else if (final) {
			if (drawn)
				printf("\r\033[K");
			print_summary(stdout, &v);
		} else if (!strcmp(v.status, "x-undecided")) {
			if (!told_undecided)
				fprintf(stderr, "\nkvmig %s: switch-over undecided (%s): the guest stays stopped on both sides until the destination answers (the source keeps asking it) or x-migrate-settle settles it by hand\n", c->cmd, v.error ? v.error : "no confirmation from the destination");
			told_undecided = true;
		} else if (style == WATCH_BAR) {
			draw_bar(stdout, cols, &v);
			drawn = true;
		} else if (style == WATCH_LINES) {
			print_progress_line(stdout, &v);
		}
		/* v points into mig: decide before letting it go. */
		rc = final && strcmp(v.status, "completed") ? KV_EXIT_FAILURE
							    : KV_EXIT_OK;
		json_decref(mig);
		json_decref(vm);
		if (final)
			return rc;
		rc = ctl_pause(c, interval_ms);
		if (rc) {
			if (drawn)
				printf("\n");
			return rc;
		}
	}
}

static int parse_interval(const char *cmd, const char *text, int *out)
{
	uint64_t v;

	*out = CTL_DEFAULT_INTERVAL_MS;
	if (!text)
		return KV_EXIT_OK;
	if (!kv_cli_parse_u64(text, &v) || v < 10 || v > 3600000)
		return kv_cli_usage_error(cmd,
					  "--interval '%s': expected milliseconds, 10 to 3600000",
					  text);
	*out = (int)v;
	return KV_EXIT_OK;
}

static int need_qmp(const char *cmd, const char *qmp)
{
	if (!qmp)
		return kv_cli_usage_error(cmd,
					  "--qmp PATH is required (the VM's QMP socket: PATH, unix:PATH or tcp:HOST:PORT)");
	return KV_EXIT_OK;
}

/* ---- kvmig status ---- */

/* One line of "label value" items, leaving out what the VM did not report
 * (a destination has no times or RAM counters). */
static void print_ms_items(const struct mig_view *v)
{
	const char *sep = "  ";

	if (v->total_time >= 0) {
		printf("%stotal time %lld ms", sep, (long long)v->total_time);
		sep = ", ";
	}
	if (v->setup_time >= 0) {
		printf("%ssetup %lld ms", sep, (long long)v->setup_time);
		sep = ", ";
	}
	if (v->downtime >= 0)
		printf("%sdowntime %lld ms", sep, (long long)v->downtime);
	else if (v->expected_downtime >= 0)
		printf("%sexpected downtime %lld ms", sep,
		       (long long)v->expected_downtime);
	else if (!strcmp(sep, "  "))
		return;
	printf("\n");
}

static void print_status_text(json_t *vm, const struct mig_view *v)
{
	char b1[32], b2[32], b3[32], b4[32];

	printf("VM: %s\n",
	       json_string_value(json_object_get(vm, "status")) ?: "unknown");
	if (!v->status) {
		printf("migration: none\n");
		return;
	}
	if (v->has_ram)
		printf("migration: %s, pass %lld, %.1f%%\n", v->status,
		       (long long)v->passes, v->percent);
	else
		printf("migration: %s\n", v->status);
	print_ms_items(v);
	if (v->has_ram)
		printf("  transferred %s, remaining %s, RAM %s, rate %s/s\n",
		       fmt_bytes((double)v->transferred, b1, sizeof(b1)),
		       fmt_bytes((double)v->remaining, b2, sizeof(b2)),
		       fmt_bytes((double)v->total, b3, sizeof(b3)),
		       fmt_bytes(v->rate, b4, sizeof(b4)));
	if (v->error)
		printf("  error: %s\n", v->error);
}

static void status_help(void)
{
	printf("Usage: kvmig status --qmp PATH [--watch] [--json] "
	       "[--interval MS]\n"
	       "\n"
	       "Show the VM's run state and its migration (query-status and "
	       "query-migrate).\n"
	       "\n"
	       "Options:\n"
	       "  --qmp PATH|unix:PATH|tcp:HOST:PORT\n"
	       "                  the VM's QMP socket (kvmig run --qmp, or "
	       "QEMU's -qmp)\n"
	       CTL_TLS_HELP
	       "  --watch         follow the migration until it completes, "
	       "fails or is\n"
	       "                  cancelled: a live progress bar on a "
	       "terminal, one line per\n"
	       "                  update otherwise, then a summary; exit 0 "
	       "only if it completed\n"
	       "  --json          machine-readable: one JSON object (one per "
	       "line with --watch)\n"
	       "                  {status, vm-status, running, progress "
	       "{percent, pass,\n"
	       "                  bytes-per-second}, migrate: the raw "
	       "query-migrate reply}\n"
	       "  --interval MS   time between updates with --watch (default "
	       "%d)\n",
	       CTL_DEFAULT_INTERVAL_MS);
}

static int status_main(int argc, char **argv, const struct kv_objects *objects)
{
	const char *qmp = NULL, *watch = NULL, *json = NULL, *interval = NULL;
	const struct kv_cli_opt opts[] = {
	    {"qmp", true, &qmp},    {"watch", false, &watch},
	    {"json", false, &json}, {"interval", true, &interval},
	    {NULL, false, NULL},
	};
	struct ctl_args a;
	struct ctl c;
	json_t *mig = NULL, *vm = NULL;
	struct mig_view v;
	struct progress prog = {0};
	bool help;
	int interval_ms;
	int rc;

	rc = ctl_split("status", argc, argv, opts, false, &a);
	if (!rc)
		rc = kv_cli_parse("status", a.argc, a.argv, opts, &help);
	if (!rc && help) {
		status_help();
		ctl_args_free(&a);
		return KV_EXIT_OK;
	}
	if (!rc && a.npos)
		rc = kv_cli_usage_error("status", "unexpected argument '%s'",
					a.pos[0]);
	ctl_args_free(&a);
	if (!rc)
		rc = need_qmp("status", qmp);
	if (!rc)
		rc = parse_interval("status", interval, &interval_ms);
	if (rc)
		return rc;
	rc = ctl_connect(&c, "status", qmp, objects);
	if (rc)
		return rc;
	if (watch) {
		enum watch_style style = json			 ? WATCH_JSON
					 : isatty(STDOUT_FILENO) ? WATCH_BAR
								 : WATCH_LINES;

		rc = ctl_watch(&c, style, interval_ms, true);
		kv_qmpc_close(c.qmp);
		return rc;
	}
	rc = ctl_exec(&c, "query-migrate", NULL, &mig);
	if (!rc)
		rc = ctl_exec(&c, "query-status", NULL, &vm);
	if (!rc)
		rc = settle_completed(&c, &mig, &vm);
	if (!rc) {
		mig_view_read(mig, &v);
		progress_update(&prog, &v, kv_now_ms());
		if (json) {
			json_t *o = status_json(mig, vm, &v);

			print_json_line(o);
			json_decref(o);
		} else {
			print_status_text(vm, &v);
		}
	}
	json_decref(mig);
	json_decref(vm);
	kv_qmpc_close(c.qmp);
	return rc;
}

/* ---- kvmig migrate ---- */

static void migrate_help(void)
{
	printf("Usage: kvmig migrate --qmp PATH URI [--wait] [--json] "
	       "[--downtime-limit MS]\n"
	       "                     [--max-bandwidth RATE] "
	       "[--interval MS]\n"
	       "\n"
	       "Start a live migration of the VM behind PATH to URI "
	       "(tcp:HOST:PORT, unix:PATH,\n"
	       "file:PATH), where a destination waits (kvmig run --incoming, "
	       "or QEMU's\n"
	       "-incoming).\n"
	       "\n"
	       "Options:\n"
	       "  --qmp PATH|unix:PATH|tcp:HOST:PORT\n"
	       "                        the source VM's QMP socket\n"
	       CTL_TLS_HELP
	       "  --wait                wait for the end (a progress bar on a "
	       "terminal) and\n"
	       "                        print a summary; exit 0 only if it "
	       "completed\n"
	       "  --json                with --wait: print the final status "
	       "as JSON instead\n"
	       "  --downtime-limit MS   set downtime-limit first\n"
	       "  --max-bandwidth RATE  set max-bandwidth first, bytes per "
	       "second (64M, 1G)\n"
	       "  --interval MS         progress update interval (default "
	       "%d)\n",
	       CTL_DEFAULT_INTERVAL_MS);
}

static int migrate_parameters(const char *dl, const char *bw, json_t **out)
{
	uint64_t v;

	*out = NULL;
	if (!dl && !bw)
		return KV_EXIT_OK;
	*out = json_object();
	if (dl) {
		if (!kv_cli_parse_u64(dl, &v))
			return kv_cli_usage_error(
			    "migrate",
			    "--downtime-limit '%s': expected milliseconds", dl);
		json_object_set_new(*out, "downtime-limit",
				    json_integer((json_int_t)v));
	}
	if (bw) {
		if (!kv_cli_parse_size(bw, &v) || v > INT64_MAX)
			return kv_cli_usage_error(
			    "migrate",
			    "--max-bandwidth '%s': expected bytes per second (64M, 1G)",
			    bw);
		json_object_set_new(*out, "max-bandwidth",
				    json_integer((json_int_t)v));
	}
	return KV_EXIT_OK;
}

static int migrate_main(int argc, char **argv, const struct kv_objects *objects)
{
	const char *qmp = NULL, *wait = NULL, *json = NULL, *interval = NULL;
	const char *dl = NULL, *bw = NULL;
	const struct kv_cli_opt opts[] = {
	    {"qmp", true, &qmp},	   {"wait", false, &wait},
	    {"json", false, &json},	   {"interval", true, &interval},
	    {"downtime-limit", true, &dl}, {"max-bandwidth", true, &bw},
	    {NULL, false, NULL},
	};
	struct ctl_args a;
	struct ctl c;
	json_t *params = NULL;
	const char *uri = NULL;
	bool help;
	int interval_ms;
	int rc;

	rc = ctl_split("migrate", argc, argv, opts, false, &a);
	if (!rc)
		rc = kv_cli_parse("migrate", a.argc, a.argv, opts, &help);
	if (!rc && help) {
		migrate_help();
		ctl_args_free(&a);
		return KV_EXIT_OK;
	}
	if (!rc && a.npos != 1)
		rc = a.npos ? kv_cli_usage_error("migrate",
						 "unexpected argument '%s'",
						 a.pos[1])
			    : kv_cli_usage_error("migrate",
						 "missing the destination URI (e.g. tcp:HOST:PORT)");
	if (!rc)
		uri = a.pos[0];
	ctl_args_free(&a);
	if (!rc)
		rc = need_qmp("migrate", qmp);
	if (!rc)
		rc = parse_interval("migrate", interval, &interval_ms);
	if (!rc && json && !wait)
		rc = kv_cli_usage_error("migrate", "--json needs --wait");
	if (!rc)
		rc = migrate_parameters(dl, bw, &params);
	if (rc) {
		json_decref(params);
		return rc;
	}
	rc = ctl_connect(&c, "migrate", qmp, objects);
	if (rc) {
		json_decref(params);
		return rc;
	}
	if (params)
		rc = ctl_exec(&c, "migrate-set-parameters", params, NULL);
	if (!rc)
		rc = ctl_exec(&c, "migrate", json_pack("{s:s}", "uri", uri),
			      NULL);
	if (!rc && !json)
		fprintf(wait ? stderr : stdout, "migration to %s started\n",
			uri);
	if (!rc && wait) {
		enum watch_style style = json ? WATCH_JSON_FINAL
					 : isatty(STDOUT_FILENO)
					     ? WATCH_BAR
					     : WATCH_SUMMARY;

		rc = ctl_watch(&c, style, interval_ms, false);
	}
	kv_qmpc_close(c.qmp);
	return rc;
}

/* ---- kvmig cancel ---- */

static int query_status_name(struct ctl *c, char *buf, size_t len)
{
	json_t *mig = NULL;
	const char *s;
	int rc = ctl_exec(c, "query-migrate", NULL, &mig);

	if (rc)
		return rc;
	s = json_string_value(json_object_get(mig, "status"));
	snprintf(buf, len, "%s", s ? s : "none");
	json_decref(mig);
	return KV_EXIT_OK;
}

static int cancel_main(int argc, char **argv, const struct kv_objects *objects)
{
	const char *qmp = NULL;
	const struct kv_cli_opt opts[] = {
	    {"qmp", true, &qmp},
	    {NULL, false, NULL},
	};
	char status[64];
	struct ctl c;
	bool help;
	int64_t deadline;
	int rc;

	rc = kv_cli_parse("cancel", argc, argv, opts, &help);
	if (!rc && help) {
		printf("Usage: kvmig cancel --qmp PATH\n\n"
		       "Cancel the VM's outgoing migration (migrate_cancel) "
		       "and wait until it\n"
		       "is cancelled; the VM keeps running on the source. "
		       "Exit 1 if no migration\n"
		       "was in progress or it ended another way.\n\n"
		       CTL_TLS_HELP);
		return KV_EXIT_OK;
	}
	if (!rc)
		rc = need_qmp("cancel", qmp);
	if (rc)
		return rc;
	rc = ctl_connect(&c, "cancel", qmp, objects);
	if (!rc)
		rc = query_status_name(&c, status, sizeof(status));
	if (!rc && (!strcmp(status, "none") || status_is_final(status))) {
		fprintf(stderr,
			"kvmig cancel: no migration in progress (status: %s)\n",
			status);
		rc = KV_EXIT_FAILURE;
	}
	if (!rc)
		rc = ctl_exec(&c, "migrate_cancel", NULL, NULL);
	deadline = kv_now_ms() + CTL_CANCEL_WAIT_MS;
	while (!rc && !status_is_final(status) && kv_now_ms() < deadline) {
		rc = ctl_pause(&c, 50);
		if (!rc)
			rc = query_status_name(&c, status, sizeof(status));
	}
	if (!rc && !strcmp(status, "cancelled")) {
		printf("migration cancelled\n");
	} else if (!rc) {
		fprintf(stderr,
			"kvmig cancel: the migration is %s, not cancelled\n",
			status);
		rc = KV_EXIT_FAILURE;
	}
	kv_qmpc_close(c.qmp);
	return rc;
}

/* ---- kvmig settle ---- */

static int settle_main(int argc, char **argv, const struct kv_objects *objects)
{
	const char *qmp = NULL, *outcome = NULL;
	const struct kv_cli_opt opts[] = {
	    {"qmp", true, &qmp},
	    {"outcome", true, &outcome},
	    {NULL, false, NULL},
	};
	char status[64] = "";
	struct ctl c = {0};
	int64_t deadline;
	bool help;
	int rc;

	rc = kv_cli_parse("settle", argc, argv, opts, &help);
	if (!rc && help) {
		printf("Usage: kvmig settle --qmp PATH --outcome run|discard\n\n"
		       "Settle by hand a switch-over left undecided (query-migrate status\n"
		       "x-undecided) when the other host is gone for good (x-migrate-settle):\n"
		       "  run      this side runs the guest (the other must never run it)\n"
		       "  discard  this side drops its copy\n"
		       "On a link that comes back the two sides settle by themselves.\n\n"
		       CTL_TLS_HELP);
		return KV_EXIT_OK;
	}
	if (!rc)
		rc = need_qmp("settle", qmp);
	if (!rc && (!outcome || (strcmp(outcome, "run") && strcmp(outcome, "discard"))))
		rc = kv_cli_usage_error("settle", "--outcome must be run or discard");
	if (rc)
		return rc;
	rc = ctl_connect(&c, "settle", qmp, objects);
	if (!rc)
		rc = ctl_exec(&c, "x-migrate-settle",
			      json_pack("{s:s}", "outcome", outcome), NULL);
	deadline = kv_now_ms() + CTL_CANCEL_WAIT_MS;
	while (!rc && !status_is_final(status) && kv_now_ms() < deadline) {
		rc = query_status_name(&c, status, sizeof(status));
		if (!rc && !status_is_final(status))
			rc = ctl_pause(&c, 50);
	}
	if (!rc)
		printf("switch-over settled (%s here): migration %s\n", outcome,
		       status);
	kv_qmpc_close(c.qmp);
	return rc;
}

/* ---- kvmig set ---- */

/* A name the options table does not know (QEMU has more): on/off/yes/no
 * as booleans, JSON when it parses (numbers, true, "text", {...}), else a
 * string. The VM says which type it expects if we guessed wrong. */
static json_t *guessed_value(const char *text)
{
	json_t *v;

	if (!strcmp(text, "on") || !strcmp(text, "yes"))
		return json_true();
	if (!strcmp(text, "off") || !strcmp(text, "no"))
		return json_false();
	v = json_loads(text, JSON_DECODE_ANY, NULL);
	return v ? v : json_string(text);
}

/* NAME=VALUE (or, for --capability, NAME=on|off) split at the '='. */
static int split_setting(const char *arg, const char *what, char *name,
			 size_t len, const char **value)
{
	const char *eq = strchr(arg, '=');

	if (!eq || eq == arg || (size_t)(eq - arg) >= len)
		return kv_cli_usage_error("set", "%s'%s': expected %s", what,
					  arg,
					  *what ? "NAME=on|off" : "NAME=VALUE");
	memcpy(name, arg, (size_t)(eq - arg));
	name[eq - arg] = '\0';
	*value = eq + 1;
	return KV_EXIT_OK;
}

/* A value of a name in the options table, checked against its row (a
 * wrong value changes nothing: exit 1 before anything is sent). */
static int table_value(const struct kv_mig_option *o, const char *text,
		       json_t **out)
{
	struct kv_error err = {0};
	struct kv_mig_value v;

	if (kv_cli_mig_value(o, text, &v, &err) < 0) {
		fprintf(stderr, "kvmig set: %s=%s: %s\n", o->name, text, err.msg);
		return KV_EXIT_FAILURE;
	}
	*out = kv_qmp_mig_value_json(o, &v);
	return KV_EXIT_OK;
}

static int build_set_requests(struct ctl_args *a, json_t *params, json_t *caps)
{
	const struct kv_mig_option *o;
	const char *text;
	char name[128];
	json_t *v;
	bool on;
	int rc;

	for (int i = 0; i < a->npos; i++) {
		rc = split_setting(a->pos[i], "", name, sizeof(name), &text);
		o = rc ? NULL : kv_mig_param_find(name);
		v = NULL;
		if (!rc && o)
			rc = table_value(o, text, &v);
		else if (!rc)
			v = guessed_value(text);
		if (rc)
			return rc;
		json_object_set_new(params, name, v);
	}
	for (int i = 0; i < a->ncaps; i++) {
		rc = split_setting(a->caps[i], "--capability ", name,
				   sizeof(name), &text);
		if (rc)
			return rc;
		/* A capability's state is on or off, whatever its name. */
		if (!kv_cli_mig_parse_bool(text, &on))
			return kv_cli_usage_error("set", "--capability '%s': expected NAME=on|off", a->caps[i]);
		v = json_boolean(on);
		json_array_append_new(caps, json_pack("{s:s,s:o}", "capability",
						      name, "state", v));
	}
	return KV_EXIT_OK;
}

/* Echo what the VM now has for the names that were set. Best effort: a
 * VM without the query commands still got the settings. */
static void print_settings(struct ctl *c, json_t *params, json_t *caps)
{
	struct kv_error err = {0};
	json_t *now = NULL, *v;
	const char *name;
	size_t i;

	if (json_object_size(params) &&
	    kv_qmpc_execute(c->qmp, "query-migrate-parameters", NULL, &now,
			    CTL_TIMEOUT_MS, &err) == 0) {
		json_object_foreach(params, name, v)
		{
			json_t *cur = json_object_get(now, name);
			char *text =
			    cur ? json_dumps(cur, JSON_ENCODE_ANY) : NULL;

			printf("%s = %s\n", name, text ? text : "(not shown)");
			free(text);
		}
		json_decref(now);
		now = NULL;
	}
	if (!json_array_size(caps) ||
	    kv_qmpc_execute(c->qmp, "query-migrate-capabilities", NULL, &now,
			    CTL_TIMEOUT_MS, &err) < 0)
		return;
	json_array_foreach(caps, i, v)
	{
		const char *want =
		    json_string_value(json_object_get(v, "capability"));
		size_t j;
		json_t *e;

		json_array_foreach(now, j, e)
		{
			if (!strcmp(json_string_value(
					json_object_get(e, "capability"))
					?: "",
				    want))
				printf("capability %s = %s\n", want,
				       json_is_true(json_object_get(e, "state"))
					   ? "on"
					   : "off");
		}
	}
	json_decref(now);
}

static void set_help(void)
{
	printf("Usage: kvmig set --qmp PATH NAME=VALUE... "
	       "[--capability NAME=on|off]...\n"
	       "\n"
	       "Set migration parameters (migrate-set-parameters) and "
	       "capabilities\n"
	       "(migrate-set-capabilities), with QEMU's names, e.g.\n"
	       "  kvmig set --qmp vm.sock downtime-limit=50 max-bandwidth=1G\n"
	       "  kvmig set --qmp vm.sock --capability xbzrle=on\n"
	       "\n"
	       "VALUE: bytes take K/M/G/T suffixes (64M, 1G), milliseconds "
	       "500, 500ms or 2s,\n"
	       "booleans on/off/yes/no/true/false. Values of the names below "
	       "are checked\n"
	       "here; other names (QEMU has more) go to the VM as they are.\n"
	       "\n"
	       "To a monitor with tls-creds (every command):\n"
	       CTL_TLS_HELP
	       "\n"
	       "Parameters (kind, range, default, the side they act on):\n");
	kv_cli_mig_options_help(stdout, false);
	printf("\nCapabilities (default):\n");
	kv_cli_mig_options_help(stdout, true);
}

static int set_main(int argc, char **argv, const struct kv_objects *objects)
{
	const char *qmp = NULL;
	const struct kv_cli_opt opts[] = {
	    {"qmp", true, &qmp},
	    {NULL, false, NULL},
	};
	json_t *params = json_object(), *caps = json_array();
	struct ctl_args a = {0};
	struct ctl c = {0};
	bool help = false;
	int rc;

	rc = ctl_split("set", argc, argv, opts, true, &a);
	if (!rc)
		rc = kv_cli_parse("set", a.argc, a.argv, opts, &help);
	if (!rc && help) {
		set_help();
		goto out;
	}
	if (!rc && !a.npos && !a.ncaps)
		rc =
		    kv_cli_usage_error("set", "nothing to set (give NAME=VALUE or --capability NAME=on|off)");
	if (!rc)
		rc = need_qmp("set", qmp);
	if (!rc)
		rc = build_set_requests(&a, params, caps);
	if (!rc)
		rc = ctl_connect(&c, "set", qmp, objects);
	if (!rc && json_array_size(caps))
		rc = ctl_exec(&c, "migrate-set-capabilities",
			      json_pack("{s:O}", "capabilities", caps), NULL);
	if (!rc && json_object_size(params))
		rc = ctl_exec(&c, "migrate-set-parameters", json_incref(params),
			      NULL);
	if (!rc)
		print_settings(&c, params, caps);
out:
	kv_qmpc_close(c.qmp);
	ctl_args_free(&a);
	json_decref(params);
	json_decref(caps);
	return rc;
}

int kv_cmd_status(int argc, char **argv)
{
	return with_objects("status", argc, argv, status_main);
}

int kv_cmd_migrate(int argc, char **argv)
{
	return with_objects("migrate", argc, argv, migrate_main);
}

int kv_cmd_cancel(int argc, char **argv)
{
	return with_objects("cancel", argc, argv, cancel_main);
}

int kv_cmd_settle(int argc, char **argv)
{
	return with_objects("settle", argc, argv, settle_main);
}

int kv_cmd_set(int argc, char **argv)
{
	return with_objects("set", argc, argv, set_main);
}
