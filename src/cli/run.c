/* SPDX-License-Identifier: MIT */
/*
 * kvmig run: boot a multiboot kernel in a KVM VM and wait until the guest
 * powers off (exit 0), fails (exit 1) or kvmig is told to stop by a signal
 * (exit 128 + signal).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/error.h"
#include "base/units.h"
#include "cli/cli.h"
#include "cli/run_control.h"
#include "io/channel.h"
#include "io/objects.h"
#include "io/tls.h"
#include "monitor/qmp.h"
#include "vmm/vm.h"


struct run_args {
	struct kv_vm_config cfg;
	const char *qmp;
	struct kv_qmp_spec qmp_spec; /* --qmp's address and options */
	struct kv_qmp_tls qmp_tls;   /* its tls-creds / tls-authz objects */
	const char *incoming;
	bool verify_ram;
	struct kv_objects *objects; /* --object, repeatable */
};

struct signal_waiter {
	pthread_t thread;
	sigset_t set;
	struct kv_vm *vm;
};

static void print_help(void)
{
	printf("Usage: kvmig run --kernel ELF [OPTIONS]\n"
	       "       kvmig run [--kernel ELF ...] --incoming URI|defer "
	       "[OPTIONS]\n"
	       "\n"
	       "Run a multiboot v1 kernel in a KVM virtual machine until it "
	       "powers off\n"
	       "(a 16-bit write of 0x2000 to port 0x604 or 0xb004).\n"
	       "\n"
	       "Options:\n"
	       "  --memory SIZE          guest RAM, a multiple of 2M "
	       "(default 1G)\n"
	       "  --cpus N               vCPUs, 1 to %d (default 2)\n"
	       "  --kernel ELF           multiboot v1 kernel (32-bit ELF)\n"
	       "  --append CMDLINE       kernel command line\n"
	       "  --console stdio|file:PATH|none\n"
	       "                         where the serial console goes "
	       "(default stdio;\n"
	       "                         stdio also feeds stdin to the guest)\n"
	       "  --dirty-tracker log|ring\n"
	       "                         KVM dirty tracking for migration "
	       "(default log)\n"
	       "  --qmp unix:PATH|tcp:HOST:PORT[,server=on,wait=off][,tls-creds=ID]"
	       "[,tls-authz=ID]\n"
	       "                         QMP monitor socket, as QEMU's -qmp; "
	       "tls-creds (an\n"
	       "                         endpoint=server --object): clients "
	       "must use TLS\n"
	       "  --incoming URI|defer   wait for a migration instead of "
	       "booting; the rest\n"
	       "                         of the source's command line may "
	       "be repeated\n"
	       "                         (--kernel is checked, not run; "
	       "--memory and --cpus\n"
	       "                         must match the source's)\n"
	       "  --verify-ram           check RAM and every device section "
	       "end to end\n"
	       "                         (both sides; docs/FORMAT.md 9.1)\n"
	       "  --object SPEC          as QEMU's (repeatable): "
	       "tls-creds-x509,id=ID,dir=DIR,\n"
	       "                         endpoint=server|client,verify-peer=on|off; "
	       "tls-creds-psk,\n"
	       "                         id=ID,dir=DIR,endpoint=...,username=U; "
	       "authz-simple,id=ID,\n"
	       "                         identity=NAME; authz-list "
	       "(policy=, rules.N.match/policy/\n"
	       "                         format=, or the JSON form); "
	       "for tls-creds / tls-authz\n"
	       "\n"
	       "Exit status: 0 the guest powered off, 1 failure, 2 usage "
	       "error,\n"
	       "128+N stopped by signal N.\n",
	       KV_VM_MAX_VCPUS);
}

/* QMP controls the VM: on an address others reach without TLS, say so. */
static void warn_open_qmp(const struct run_args *a)
{
	struct kv_uri u;

	if (!a->qmp || a->qmp_tls.creds ||
	    kv_uri_parse(a->qmp_spec.uri, &u, NULL) < 0 || u.kind != KV_URI_TCP)
		return;
	if (!strncmp(u.host, "127.", 4) || !strcmp(u.host, "::1") ||
	    !strcmp(u.host, "localhost"))
		return;
	fprintf(stderr, "kvmig run: warning: QMP listens on %s without TLS: whoever reaches that address controls this VM; add tls-creds=ID (an endpoint=server --object), or listen on unix: or a loopback address\n", a->qmp_spec.uri);
}

/* --qmp's spec, and the objects its tls-creds / tls-authz name. */
static int parse_qmp(struct run_args *a)
{
	struct kv_error err = {0};
	struct kv_uri u;

	if (kv_qmp_spec_parse(a->qmp, KV_QMP_LISTEN, &a->qmp_spec, &err) < 0)
		return kv_cli_usage_error("run", "--qmp: %s", err.msg);
	if (kv_uri_parse(a->qmp_spec.uri, &u, NULL) < 0 ||
	    (u.kind != KV_URI_UNIX && u.kind != KV_URI_TCP))
		return kv_cli_usage_error("run", "--qmp '%s': expected unix:PATH or tcp:HOST:PORT", a->qmp);
	if (!a->qmp_spec.tls_creds[0])
		return KV_EXIT_OK;
	if (!a->objects)
		a->objects = kv_objects_new(); /* for QEMU's "No TLS credentials" */
	if (!a->objects)
		return kv_cli_usage_error("run", "--qmp: out of memory");
	a->qmp_tls.creds = kv_objects_tls_creds(a->objects, a->qmp_spec.tls_creds, &err);
	if (!a->qmp_tls.creds)
		return kv_cli_usage_error("run", "--qmp: %s", err.msg);
	if (a->qmp_spec.tls_authz[0]) {
		a->qmp_tls.authz = kv_objects_authz(a->objects, a->qmp_spec.tls_authz, &err);
		if (!a->qmp_tls.authz)
			return kv_cli_usage_error("run", "--qmp: %s", err.msg);
	}
	if (kv_tls_server_check(a->qmp_tls.creds, a->qmp_tls.authz, &err) < 0)
		return kv_cli_usage_error("run", "--qmp: %s", err.msg);
	return KV_EXIT_OK;
}

static int parse_args(int argc, char **argv, struct run_args *a, bool *help)
{
	const char *memory = NULL, *cpus = NULL, *tracker = NULL;
	const char *verify = NULL;
	const struct kv_cli_opt opts[] = {
	    {"memory", true, &memory},
	    {"cpus", true, &cpus},
	    {"kernel", true, &a->cfg.kernel},
	    {"append", true, &a->cfg.cmdline},
	    {"console", true, &a->cfg.console},
	    {"dirty-tracker", true, &tracker},
	    {"qmp", true, &a->qmp},
	    {"incoming", true, &a->incoming},
	    {"verify-ram", false, &verify},
	    {NULL, false, NULL},
	};
	uint64_t n;
	int rc = kv_cli_take_objects("run", &argc, argv, &a->objects);

	if (rc == KV_EXIT_OK)
		rc = kv_cli_parse("run", argc, argv, opts, help);

	if (rc || *help)
		return rc;
	a->cfg.mem_size = 1024 * KV_MiB;
	a->cfg.ncpus = 2;
	if (memory &&
	    (!kv_cli_parse_size(memory, &a->cfg.mem_size) ||
	     a->cfg.mem_size % (2 * KV_MiB) || a->cfg.mem_size < 4 * KV_MiB))
		return kv_cli_usage_error("run", "--memory '%s': need a size of at least 4M, a multiple of 2M", memory);
	if (cpus &&
	    (!kv_cli_parse_u64(cpus, &n) || n < 1 || n > KV_VM_MAX_VCPUS))
		return kv_cli_usage_error("run", "--cpus '%s': need 1 to %d",
					  cpus, KV_VM_MAX_VCPUS);
	if (cpus)
		a->cfg.ncpus = (int)n;
	if (!a->cfg.console)
		a->cfg.console = "stdio";
	if (strcmp(a->cfg.console, "stdio") && strcmp(a->cfg.console, "none") &&
	    (strncmp(a->cfg.console, "file:", 5) || !a->cfg.console[5]))
		return kv_cli_usage_error(
		    "run", "--console '%s': expected stdio, none or file:PATH",
		    a->cfg.console);
	if (!tracker || !strcmp(tracker, "log"))
		a->cfg.dirty_mode = KV_DIRTY_LOG;
	else if (!strcmp(tracker, "ring"))
		a->cfg.dirty_mode = KV_DIRTY_RING;
	else
		return kv_cli_usage_error(
		    "run", "--dirty-tracker '%s': expected log or ring",
		    tracker);
	if (a->qmp && (rc = parse_qmp(a)) != KV_EXIT_OK)
		return rc;
	if (!a->cfg.kernel && !a->incoming)
		return kv_cli_usage_error("run", "--kernel ELF is required (or --incoming)");
	a->verify_ram = verify != NULL;
	warn_open_qmp(a);
	return KV_EXIT_OK;
}

static void *signal_main(void *arg)
{
	struct signal_waiter *w = arg;
	int sig;

	if (sigwait(&w->set, &sig) == 0 && sig != SIGUSR2) {
		fprintf(stderr, "kvmig run: %s, stopping the VM\n",
			strsignal(sig));
		kv_vm_request_exit(w->vm, 128 + sig);
	}
	return NULL;
}

/* Termination signals are blocked everywhere (vCPU threads inherit the
 * mask) and taken by one thread; SIGUSR2 tells it to leave. */
static void block_signals(struct signal_waiter *w)
{
	sigemptyset(&w->set);
	sigaddset(&w->set, SIGINT);
	sigaddset(&w->set, SIGTERM);
	sigaddset(&w->set, SIGHUP);
	sigaddset(&w->set, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &w->set, NULL);
}

/* Boot the kernel, or wait for an incoming migration, then run until the
 * guest powers off, QMP says quit or a signal arrives. */
static int run_vm(struct run_args *a, struct kv_vm *vm, struct run_ctl *rc,
		  struct kv_error *err)
{
	int64_t t0 = kv_now_ns();
	int ret;

	if (a->incoming && !strcmp(a->incoming, "defer") && !a->qmp)
		return kv_error_set(err, -EINVAL, "--incoming defer needs --qmp (migrate-incoming gives the URI)");
	if (a->incoming) {
		/* The source's command line plus --incoming (QEMU's and
		 * libvirt's way): the kernel must be one this VM could boot,
		 * but it is never loaded nor run here; the stream brings RAM
		 * and the vCPUs start only once it is loaded. */
		ret = kv_vm_check_kernel(vm, err);
		if (!ret)
			ret = run_ctl_incoming(rc, a->incoming, err);
		if (!ret)
			ret = run_ctl_start_monitor(rc, a->qmp ? a->qmp_spec.uri : NULL,
						    &a->qmp_tls, err);
		if (ret < 0)
			return ret;
		fprintf(stderr, "kvmig run: waiting for an incoming migration on %s\n",
			strcmp(a->incoming, "defer") ? run_ctl_listen_uri(rc)
						     : "(deferred: QMP migrate-incoming)");
	} else {
		ret = kv_vm_boot_kernel(vm, err);
		if (!ret)
			ret = run_ctl_start_monitor(rc, a->qmp ? a->qmp_spec.uri : NULL,
						    &a->qmp_tls, err);
		if (!ret)
			ret = kv_vm_start(vm, err);
		if (ret < 0)
			return ret;
		run_ctl_booted(rc);
		fprintf(stderr,
			"kvmig run: guest started: %d vCPU(s), %llu MiB, set up in %.1f ms\n",
			a->cfg.ncpus,
			(unsigned long long)(a->cfg.mem_size / KV_MiB),
			(double)(kv_now_ns() - t0) / 1e6);
	}
	return kv_vm_wait(vm, err);
}

static int boot_and_wait(struct run_args *a, struct kv_error *err)
{
	struct signal_waiter w = {0};
	struct run_ctl *rc = NULL;
	struct kv_vm *vm = NULL;
	bool waiter = false;
	int ret;

	block_signals(&w);
	ret = kv_vm_create(&a->cfg, &vm, err);
	if (!ret)
		ret = run_ctl_new(vm, a->verify_ram, &rc, err);
	if (!ret && a->objects)
		run_ctl_set_objects(rc, a->objects);
	if (!ret) {
		w.vm = vm;
		waiter = !pthread_create(&w.thread, NULL, signal_main, &w);
		ret = run_vm(a, vm, rc, err);
		run_ctl_shutdown(rc, ret);
	}
	if (waiter) {
		pthread_kill(w.thread, SIGUSR2);
		pthread_join(w.thread, NULL);
	}
	/* The controller's threads use the VM: stop them first. */
	run_ctl_free(rc);
	kv_vm_destroy(vm);
	return ret;
}

int kv_cmd_run(int argc, char **argv)
{
	struct run_args a;
	struct kv_error err;
	bool help;
	int rc;

	memset(&a, 0, sizeof(a));
	kv_error_clear(&err);
	rc = parse_args(argc, argv, &a, &help);
	if (rc) {
		kv_objects_free(a.objects);
		return rc;
	}
	if (help) {
		print_help();
		return KV_EXIT_OK;
	}
	rc = boot_and_wait(&a, &err);
	kv_objects_free(a.objects);
	if (rc < 0) {
		fprintf(stderr, "kvmig run: %s\n",
			err.msg[0] ? err.msg : strerror(-rc));
		return KV_EXIT_FAILURE;
	}
	return rc;
}
