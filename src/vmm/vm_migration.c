/* SPDX-License-Identifier: MIT */
#include "vmm/vm_migration.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/log.h"
#include "io/channel.h"
#include "io/stream.h"
#include "migration/incoming.h"
#include "migration/ram/ram.h"
#include "migration/savevm/savevm.h"
#include "vmm/kvm_dirty.h"
#include "vmm/kvm_state.h"
#include "vmm/serial.h"

/* --verify-ram: the source's RAM digest (kv_ram_verify_digest: the
 * per-page hashes kept as pages were sent), taken after the last page. */
struct ram_verify {
	uint64_t size;
	uint8_t hash[16];
	struct kv_vm *vm;	  /* not on the wire */
	struct kv_ram_state *rs; /* not on the wire */
};

struct kv_vm_mig {
	struct kv_vm *vm;
	bool verify_ram;
	struct kv_vm_mig_events ev;

	struct kv_savevm *sv;
	struct kv_ram_state *rs;
	struct kv_kvm_dirty *dirty;
	struct kv_vm_dirty_hooks dirty_hooks;
	struct kv_msr_list *msrs;
	struct kv_vcpu_state *cpus[KV_VM_MAX_VCPUS];
	struct kv_vm_state *vmst;
	struct kv_serial_state serial;
	struct ram_verify verify;
	/* Source: what the stop hook found (saved as "globalstate"; a
	 * failed switch-over resumes the vCPUs only if it says running).
	 * Destination: what the source sent; the vCPUs start only if it
	 * says running. Used on the migration's own thread only. */
	struct kv_global_state gstate;

	pthread_mutex_t lock; /* guards everything below */
	struct kv_migration *mig;
	pthread_t thread;
	bool thread_live;
	bool thread_done; /* the current migration's thread has ended */
	char uri[300];
	struct kv_mig_params params;
	struct kv_mig_progress progress;
	enum kv_mig_status last_status; /* last announced */
	char error[KV_ERROR_MSG_MAX];
	struct kv_incoming *in; /* the destination's side, once listening */
	bool in_abort;		/* abort came before the listener */
};

/* ---- the --verify-ram device ---- */

static void hex16(const uint8_t *h, char out[33])
{
	for (int i = 0; i < 16; i++)
		snprintf(out + 2 * i, 3, "%02x", h[i]);
}

static int verify_post_load(void *opaque, int version_id,
			    struct kv_error *err)
{
	struct ram_verify *v = opaque;
	uint8_t here[16];
	char a[33], b[33];

	if (v->size != kv_vm_ram_size(v->vm))
		return kv_error_set(err, -EINVAL,
				    "ram-verify: source RAM is %llu bytes, this VM has %llu",
				    (unsigned long long)v->size,
				    (unsigned long long)kv_vm_ram_size(v->vm));
	if (kv_ram_verify_digest(v->rs, here, err) < 0)
		return err->code;
	if (memcmp(here, v->hash, 16) != 0) {
		hex16(v->hash, a);
		hex16(here, b);
		return kv_error_set(err, -EIO,
				    "ram-verify: RAM differs after loading: source %s, destination %s",
				    a, b);
	}
	kv_info("vmm", "ram-verify: RAM identical (XXH3-128 over the hashes of %llu bytes' pages)",
		(unsigned long long)v->size);
	return 0;
}

/* After the RAM's END section: its last pages are hashed by now. */
static int verify_pre_save(void *opaque, struct kv_error *err)
{
	struct ram_verify *v = opaque;

	v->size = kv_vm_ram_size(v->vm);
	return kv_ram_verify_digest(v->rs, v->hash, err);
}

/* Version 2: the digest of per-page hashes (version 1 hashed RAM flat;
 * the two do not compare, so neither side accepts the other's). */
static const struct kv_vmstate_field verify_fields[] = {
	KV_VMS_FIELD(struct ram_verify, size, KV_VMS_U64, 2),
	KV_VMS_BUF(struct ram_verify, hash, 2),
	KV_VMS_END,
};

static const struct kv_vmstate_desc verify_vmsd = {
	.name = "ram-verify",
	.version_id = 2,
	.minimum_version_id = 2,
	.fields = verify_fields,
	.pre_save = verify_pre_save,
	.post_load = verify_post_load,
};

/* ---- QEMU's "globalstate" ---- */

static int gstate_pre_save(void *opaque, struct kv_error *err)
{
	struct kv_global_state *gs = opaque;

	(void)err;
	gs->size = (uint32_t)strnlen((const char *)gs->runstate,
				     sizeof(gs->runstate) - 1) + 1;
	return 0;
}

/* A name from the wire for an error message: printable characters only,
 * so a corrupt byte cannot garble the log. out holds n bytes. */
static void printable_name(const uint8_t *b, char *out, size_t n)
{
	size_t i;

	for (i = 0; i + 1 < n && b[i]; i++)
		out[i] = b[i] >= 0x20 && b[i] < 0x7f ? (char)b[i] : '?';
	out[i] = '\0';
}

static int gstate_post_load(void *opaque, int version_id,
			    struct kv_error *err)
{
	struct kv_global_state *gs = opaque;
	char name[KV_GLOBAL_STATE_BUF];

	(void)version_id;
	if (gs->size < 1 || gs->size > sizeof(gs->runstate))
		return kv_error_set(err, -EINVAL, "globalstate: the run state's size %u is outside 1..%zu (its name and a NUL)", gs->size, sizeof(gs->runstate));
	if (gs->runstate[gs->size - 1] != 0 ||
	    memchr(gs->runstate, 0, gs->size - 1))
		return kv_error_set(err, -EINVAL, "globalstate: the run state's name does not end with a NUL at its size %u", gs->size);
	if (!kv_runstate_parse((const char *)gs->runstate, &gs->state)) {
		printable_name(gs->runstate, name, sizeof(name));
		return kv_error_set(err, -EINVAL, "globalstate: unknown run state '%s' from the source", name);
	}
	return 0;
}

static const struct kv_vmstate_field gstate_fields[] = {
	KV_VMS_FIELD(struct kv_global_state, size, KV_VMS_U32, 1),
	KV_VMS_BUF(struct kv_global_state, runstate, 1),
	KV_VMS_END,
};

static const struct kv_vmstate_desc gstate_vmsd = {
	.name = "globalstate",
	.version_id = 1,
	.minimum_version_id = 1,
	.fields = gstate_fields,
	.pre_save = gstate_pre_save,
	.post_load = gstate_post_load,
};

const struct kv_vmstate_desc *kv_global_state_vmsd(void)
{
	return &gstate_vmsd;
}

void kv_global_state_set(struct kv_global_state *gs, enum kv_runstate st)
{
	memset(gs, 0, sizeof(*gs));
	snprintf((char *)gs->runstate, sizeof(gs->runstate), "%s",
		 kv_runstate_name(st));
	gs->state = st;
}

/* ---- dirty tracking ---- */

static void hook_mark(void *opaque, uint64_t off, uint64_t len)
{
	struct kv_vm_mig *g = opaque;

	kv_kvm_dirty_mark(g->dirty, off, len);
}

static int hook_ring_full(void *opaque, int vcpu, struct kv_error *err)
{
	struct kv_vm_mig *g = opaque;

	return kv_kvm_ring_harvest(g->dirty, vcpu, err);
}

static int make_tracker(struct kv_vm_mig *g, struct kv_error *err)
{
	const struct kv_vm_config *cfg = kv_vm_get_config(g->vm);
	uint64_t pages = kv_vm_ram_size(g->vm) / KV_PAGE_SIZE;
	const struct kv_kvm_slot *slots;
	int nslots, fds[KV_VM_MAX_VCPUS];

	slots = kv_vm_slots(g->vm, &nslots);
	if (cfg->dirty_mode == KV_DIRTY_RING) {
		for (int i = 0; i < kv_vm_ncpus(g->vm); i++)
			fds[i] = kv_vm_vcpu_fd(g->vm, i);
		g->dirty = kv_kvm_dirty_ring_new(
		    kv_vm_fd(g->vm), slots, nslots, pages, fds,
		    kv_vm_ncpus(g->vm), cfg->dirty_ring_entries, err);
	} else {
		g->dirty = kv_kvm_dirty_log_new(kv_vm_fd(g->vm), slots, nslots,
						pages, err);
	}
	if (!g->dirty)
		return err && err->code ? err->code : -ENOMEM;
	g->dirty_hooks.mark = hook_mark;
	g->dirty_hooks.ring_full =
	    cfg->dirty_mode == KV_DIRTY_RING ? hook_ring_full : NULL;
	g->dirty_hooks.opaque = g;
	kv_vm_set_dirty_hooks(g->vm, &g->dirty_hooks);
	return 0;
}

/* ---- registration ---- */

static int register_devices(struct kv_vm_mig *g, struct kv_error *err)
{
	int ret, n = kv_vm_ncpus(g->vm);

	for (int i = 0; i < n; i++) {
		g->cpus[i] = kv_vcpu_state_new();
		if (!g->cpus[i])
			return kv_error_set(err, -ENOMEM, "vCPU state: no memory");
		kv_vcpu_state_bind_msrs(g->cpus[i], g->msrs);
		ret = kv_savevm_register_device(g->sv, "cpu", (uint32_t)i,
						kv_vcpu_state_vmsd(),
						KV_PRI_DEVICE, g->cpus[i], err);
		if (ret < 0)
			return ret;
	}
	ret = kv_savevm_set_count_option(g->sv, "cpu", "vCPU", "--cpus", err);
	if (ret < 0)
		return ret;
	g->vmst = kv_vm_state_new();
	if (!g->vmst)
		return kv_error_set(err, -ENOMEM, "VM state: no memory");
	ret = kv_savevm_register_device(g->sv, "irqchip", 0, kv_irqchip_vmsd(),
					KV_PRI_DEVICE, g->vmst, err);
	if (!ret)
		ret = kv_savevm_register_device(g->sv, "pit", 0, kv_pit_vmsd(),
						KV_PRI_DEVICE, g->vmst, err);
	if (!ret)
		ret = kv_savevm_register_device(g->sv, "serial", 0,
						kv_serial_vmsd(), KV_PRI_DEVICE,
						&g->serial, err);
	if (!ret)
		ret = kv_savevm_register_device(g->sv, "globalstate", 0,
						&gstate_vmsd, KV_PRI_DEVICE,
						&g->gstate, err);
	if (!ret && g->verify_ram)
		ret = kv_savevm_register_device(g->sv, "ram-verify", 0,
						&verify_vmsd, KV_PRI_DEVICE,
						&g->verify, err);
	/* Postcopy: the RAM digest only once every page went. */
	if (!ret && g->verify_ram)
		ret = kv_savevm_set_postcopy_late(g->sv, "ram-verify", err);
	/* Lowest priority: the clock goes last on the wire. */
	if (!ret)
		ret = kv_savevm_register_device(g->sv, "kvmclock", 0,
						kv_kvmclock_vmsd(),
						KV_PRI_DEFAULT, g->vmst, err);
	/* After everything it covers: the digests of every section. */
	if (!ret && g->verify_ram)
		ret = kv_savevm_enable_verify(g->sv, err);
	return ret;
}

int kv_vm_mig_new(struct kv_vm *vm, bool verify_ram,
		  const struct kv_vm_mig_events *ev, struct kv_vm_mig **out,
		  struct kv_error *err)
{
	struct kv_vm_mig *g = calloc(1, sizeof(*g));
	int ret;

	if (!g)
		return kv_error_set(err, -ENOMEM, "migration: no memory");
	g->vm = vm;
	g->verify_ram = verify_ram;
	g->verify.vm = vm;
	/* As QEMU: a destination that never got the section would run. */
	kv_global_state_set(&g->gstate, KV_RUNSTATE_RUNNING);
	if (ev)
		g->ev = *ev;
	pthread_mutex_init(&g->lock, NULL);
	kv_mig_params_default(&g->params);

	g->sv = kv_savevm_new(KV_VM_MACHINE_NAME);
	g->rs = kv_ram_new();
	if (!g->sv || !g->rs) {
		ret = kv_error_set(err, -ENOMEM, "migration: no memory");
		goto fail;
	}
	g->verify.rs = g->rs;
	kv_ram_set_verify(g->rs, verify_ram);
	ret = kv_ram_add_block(g->rs, "pc.ram", kv_vm_ram(vm),
			       kv_vm_ram_size(vm), err);
	if (ret < 0)
		goto fail;
	/* What a destination started with other options is told to fix. */
	kv_ram_block(g->rs, 0)->size_option = "--memory";
	ret = make_tracker(g, err);
	if (ret < 0)
		goto fail;
	kv_ram_set_tracker(g->rs, kv_kvm_dirty_iface(g->dirty));
	ret = kv_ram_register(g->rs, g->sv, err);
	if (ret < 0)
		goto fail;
	g->msrs = kv_msr_list_probe(kv_vm_kvm_fd(vm), kv_vm_vcpu_fd(vm, 0), err);
	if (!g->msrs) {
		ret = err && err->code ? err->code : -EIO;
		goto fail;
	}
	ret = register_devices(g, err);
	if (ret < 0)
		goto fail;
	*out = g;
	return 0;
fail:
	kv_error_prefix(err, "setting up migration");
	kv_vm_mig_free(g);
	return ret;
}

/* ---- source ---- */

static int capture_state(struct kv_vm_mig *g, struct kv_error *err)
{
	int ret, n = kv_vm_ncpus(g->vm);

	for (int i = 0; i < n; i++) {
		ret = kv_vcpu_state_get(kv_vm_vcpu_fd(g->vm, i), g->msrs,
					g->cpus[i], err);
		if (ret < 0) {
			kv_error_prefix(err, "saving vCPU %d", i);
			return ret;
		}
	}
	kv_switch_log("vCPU states read");
	ret = kv_vm_state_get(kv_vm_fd(g->vm), g->vmst, err);
	if (ret < 0)
		return ret;
	kv_serial_state_get(kv_vm_serial(g->vm), &g->serial);
	kv_switch_log("VM state read");
	return 0;
}

/* Give the vCPUs back the state they had before the stop hook: an
 * operator's pause (QMP stop) is kept. */
static void resume_if_was_running(struct kv_vm_mig *g)
{
	if (g->gstate.state == KV_RUNSTATE_RUNNING)
		kv_vm_resume(g->vm);
}

static int hook_stop_vm(void *opaque, struct kv_error *err)
{
	struct kv_vm_mig *g = opaque;
	int ret;

	kv_global_state_set(&g->gstate, kv_vm_running(g->vm)
					    ? KV_RUNSTATE_RUNNING
					    : KV_RUNSTATE_PAUSED);
	ret = kv_vm_pause(g->vm, err);
	if (ret < 0)
		return ret;
	kv_switch_log("paused");
	ret = capture_state(g, err);
	if (ret < 0)
		resume_if_was_running(g);
	return ret;
}

static void hook_resume_vm(void *opaque)
{
	resume_if_was_running(opaque);
}

static int hook_set_throttle(void *opaque, unsigned pct, struct kv_error *err)
{
	struct kv_vm_mig *g = opaque;

	return kv_vm_set_throttle(g->vm, pct, err);
}

static void hook_progress(void *opaque, const struct kv_mig_progress *p)
{
	struct kv_vm_mig *g = opaque;
	bool new_pass, new_status;

	pthread_mutex_lock(&g->lock);
	new_pass = p->pass != g->progress.pass;
	new_status = p->status != g->last_status;
	g->last_status = p->status;
	g->progress = *p;
	pthread_mutex_unlock(&g->lock);
	if (new_status && g->ev.status)
		g->ev.status(g->ev.opaque, p->status);
	if (new_pass && g->ev.pass)
		g->ev.pass(g->ev.opaque, p->pass);
}

static void *migration_thread(void *arg)
{
	struct kv_vm_mig *g = arg;
	struct kv_error err = {0};
	int ret;

	ret = kv_mig_run_uri(g->mig, g->uri, &err);
	pthread_mutex_lock(&g->lock);
	snprintf(g->error, sizeof(g->error), "%s", ret < 0 ? err.msg : "");
	g->thread_done = true;
	pthread_mutex_unlock(&g->lock);
	if (ret < 0)
		kv_err("migration", "migration to %s failed: %s", g->uri,
		       err.msg);
	return NULL;
}

int kv_vm_mig_join(struct kv_vm_mig *g, struct kv_error *err)
{
	pthread_t t;
	bool live;

	pthread_mutex_lock(&g->lock);
	live = g->thread_live;
	t = g->thread;
	g->thread_live = false;
	pthread_mutex_unlock(&g->lock);
	if (live)
		pthread_join(t, NULL);
	if (!g->mig)
		return 0;
	if (kv_mig_status(g->mig) == KV_MIG_COMPLETED)
		return 0;
	return kv_error_set(err, -EIO, "%s",
			    g->error[0] ? g->error : "migration did not complete");
}

int kv_vm_mig_start(struct kv_vm_mig *g, const char *uri,
		    const struct kv_mig_params *params, struct kv_error *err)
{
	struct kv_mig_hooks hooks = {
	    .stop_vm = hook_stop_vm,
	    .resume_vm = hook_resume_vm,
	    .set_throttle = hook_set_throttle,
	    .progress = hook_progress,
	    .opaque = g,
	};
	struct kv_uri parsed;
	enum kv_mig_status st;
	int ret;

	ret = kv_uri_parse(uri, &parsed, err);
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&g->lock);
	st = g->mig ? kv_mig_status(g->mig) : KV_MIG_NONE;
	if (g->mig && (st == KV_MIG_COMPLETED)) {
		pthread_mutex_unlock(&g->lock);
		return kv_error_set(err, -EBUSY,
				    "this VM already migrated away; it cannot migrate again");
	}
	/* A thread that ended (even before the driver ran, e.g. it could
	 * not connect) leaves room for the next attempt. */
	if (g->thread_live && !g->thread_done && st != KV_MIG_FAILED &&
	    st != KV_MIG_CANCELLED) {
		pthread_mutex_unlock(&g->lock);
		return kv_error_set(err, -EBUSY,
				    "a migration is already in progress (status %s)",
				    kv_mig_status_name(st));
	}
	/* An ended migration may still be telling its destination ABORT:
	 * the new one supersedes it. */
	if (g->mig)
		kv_mig_cancel(g->mig);
	pthread_mutex_unlock(&g->lock);
	kv_vm_mig_join(g, NULL);

	pthread_mutex_lock(&g->lock);
	if (g->mig)
		kv_mig_free(g->mig);
	if (params)
		g->params = *params;
	g->mig = kv_mig_new(g->sv, g->rs, &g->params, &hooks);
	snprintf(g->uri, sizeof(g->uri), "%s", uri);
	memset(&g->progress, 0, sizeof(g->progress));
	g->last_status = KV_MIG_NONE;
	g->thread_done = false;
	g->error[0] = '\0';
	if (!g->mig) {
		pthread_mutex_unlock(&g->lock);
		return kv_error_set(err, -ENOMEM, "migration: no memory");
	}
	ret = pthread_create(&g->thread, NULL, migration_thread, g);
	g->thread_live = ret == 0;
	pthread_mutex_unlock(&g->lock);
	if (ret != 0)
		return kv_error_set_errno(err, -ret,
					  "cannot start the migration thread");
	return 0;
}

int kv_vm_mig_cancel(struct kv_vm_mig *g, struct kv_error *err)
{
	pthread_mutex_lock(&g->lock);
	if (g->mig)
		kv_mig_cancel(g->mig);
	pthread_mutex_unlock(&g->lock);
	return 0;
}

int kv_vm_mig_start_postcopy(struct kv_vm_mig *g, struct kv_error *err)
{
	int ret;

	pthread_mutex_lock(&g->lock);
	if (g->mig)
		ret = kv_mig_start_postcopy(g->mig, err);
	else
		ret = kv_error_set(err, -EINVAL, "Postcopy must be started after migration has been started");
	pthread_mutex_unlock(&g->lock);
	return ret;
}

int kv_vm_mig_resume(struct kv_vm_mig *g, const char *uri,
		     struct kv_error *err)
{
	int ret;

	pthread_mutex_lock(&g->lock);
	if (g->mig)
		ret = kv_mig_resume(g->mig, uri, err);
	else
		ret = kv_error_set(err, -EBUSY, "migrate with resume: no outgoing migration to resume");
	pthread_mutex_unlock(&g->lock);
	return ret;
}

int kv_vm_mig_recover(struct kv_vm_mig *g, const char *uri,
		      struct kv_error *err)
{
	int ret;

	pthread_mutex_lock(&g->lock);
	if (g->in)
		ret = kv_incoming_recover(g->in, uri, err);
	else
		ret = kv_error_set(err, -EBUSY, "Migrate recover can only be run when postcopy is paused (no incoming migration here)");
	pthread_mutex_unlock(&g->lock);
	return ret;
}

int kv_vm_mig_pause(struct kv_vm_mig *g, struct kv_error *err)
{
	int ret;

	pthread_mutex_lock(&g->lock);
	if (g->in && kv_incoming_status(g->in) != KV_IN_COMPLETED)
		ret = kv_incoming_pause(g->in, err);
	else if (g->mig)
		ret = kv_mig_pause(g->mig, err);
	else
		ret = kv_mig_pause_refused(err);
	pthread_mutex_unlock(&g->lock);
	return ret;
}

int kv_vm_mig_set_params(struct kv_vm_mig *g,
			 const struct kv_mig_params *params,
			 struct kv_error *err)
{
	int ret = 0;

	pthread_mutex_lock(&g->lock);
	if (g->in)
		ret = kv_incoming_set_params(g->in, params, err);
	if (ret == 0) {
		g->params = *params;
		if (g->mig) {
			kv_mig_set_downtime_limit(g->mig,
						  params->downtime_limit_ms);
			kv_mig_set_max_bandwidth(g->mig,
						 params->max_bandwidth);
		}
	}
	pthread_mutex_unlock(&g->lock);
	return ret;
}

void kv_vm_mig_get_params(struct kv_vm_mig *g, struct kv_mig_params *params)
{
	pthread_mutex_lock(&g->lock);
	*params = g->params;
	pthread_mutex_unlock(&g->lock);
}

void kv_vm_mig_query(struct kv_vm_mig *g, struct kv_vm_mig_info *info)
{
	memset(info, 0, sizeof(*info));
	pthread_mutex_lock(&g->lock);
	info->started = g->mig != NULL;
	if (g->mig) {
		info->status = kv_mig_status(g->mig);
		kv_mig_get_stats(g->mig, &info->stats);
	}
	if (g->in) {
		kv_incoming_get_stats(g->in, &info->incoming);
		info->incoming_started = true;
	}
	info->progress = g->progress;
	info->auto_converge = g->params.auto_converge;
	/* The migration's own copy is there as soon as it says failed; the
	 * thread's comes after it returned. */
	snprintf(info->error, sizeof(info->error), "%s",
		 g->error[0] ? g->error : info->stats.error);
	pthread_mutex_unlock(&g->lock);
	info->ram_total = kv_vm_ram_size(g->vm);
	info->pause_ms = kv_vm_last_pause_ns(g->vm) / 1000000;
}

/* ---- destination ---- */

static int commit_state(void *opaque, struct kv_error *err)
{
	struct kv_vm_mig *g = opaque;
	int ret, n = kv_vm_ncpus(g->vm);

	/* The interrupt controllers and PIT first: a vCPU's LAPIC state
	 * refers to vectors the IOAPIC routes. */
	ret = kv_vm_state_put(kv_vm_fd(g->vm), g->vmst, err);
	if (ret < 0)
		return ret;
	kv_switch_log("dst: VM state written");
	for (int i = 0; i < n; i++) {
		ret = kv_vcpu_state_put(kv_vm_vcpu_fd(g->vm, i), g->cpus[i],
					err);
		if (ret < 0) {
			kv_error_prefix(err, "restoring vCPU %d", i);
			return ret;
		}
	}
	return kv_serial_state_put(kv_vm_serial(g->vm), &g->serial, err);
}

/* As QEMU: the guest runs here only if it ran on the source; a paused
 * one waits, loaded, for QMP cont. */
static int start_vcpus(void *opaque, struct kv_error *err)
{
	struct kv_vm_mig *g = opaque;

	if (g->gstate.state != KV_RUNSTATE_RUNNING) {
		kv_info("vmm", "the source's guest was %s: it stays paused here until QMP cont", kv_runstate_name(g->gstate.state));
		return 0;
	}
	return kv_vm_start(g->vm, err);
}

/* Postcopy's blocktime counts these threads as vCPUs. */
static size_t vcpu_tids(void *opaque, uint32_t *tids, size_t max)
{
	struct kv_vm_mig *g = opaque;
	size_t n = 0;

	for (int i = 0; i < kv_vm_ncpus(g->vm) && n < max; i++) {
		int tid = kv_vm_vcpu_tid(g->vm, i);

		if (tid > 0)
			tids[n++] = (uint32_t)tid;
	}
	return n;
}

enum kv_runstate kv_vm_mig_incoming_runstate(struct kv_vm_mig *g)
{
	return g->gstate.state == KV_RUNSTATE_RUNNING ? KV_RUNSTATE_RUNNING
						     : KV_RUNSTATE_PAUSED;
}

static void incoming_status(void *opaque, enum kv_in_status st)
{
	struct kv_vm_mig *g = opaque;

	if (g->ev.incoming_status)
		g->ev.incoming_status(g->ev.opaque, st);
}

int kv_vm_mig_listen(struct kv_vm_mig *g, const char *uri,
		     struct kv_error *err)
{
	struct kv_incoming_hooks hooks = {
	    .commit = commit_state,
	    .start_vm = start_vcpus,
	    .status = incoming_status,
	    .vcpu_tids = vcpu_tids,
	    .opaque = g,
	};
	struct kv_incoming *in;
	int ret;

	pthread_mutex_lock(&g->lock);
	if (g->in) {
		pthread_mutex_unlock(&g->lock);
		return kv_error_set(err, -EBUSY, "already waiting for an incoming migration");
	}
	in = kv_incoming_new(g->sv, g->rs, &g->params, &hooks);
	if (!in) {
		pthread_mutex_unlock(&g->lock);
		return kv_error_set(err, -ENOMEM, "migration: no memory");
	}
	g->in = in;
	if (g->in_abort)
		kv_incoming_abort(in);
	pthread_mutex_unlock(&g->lock);
	/* Not under the lock: the status hook reports SETUP from here. */
	ret = kv_incoming_listen(in, uri, err);
	if (ret < 0) {
		pthread_mutex_lock(&g->lock);
		g->in = NULL;
		pthread_mutex_unlock(&g->lock);
		kv_incoming_free(in);
	}
	return ret;
}

const char *kv_vm_mig_listen_uri(struct kv_vm_mig *g)
{
	const char *uri;

	pthread_mutex_lock(&g->lock);
	uri = g->in ? kv_incoming_uri(g->in) : "";
	pthread_mutex_unlock(&g->lock);
	return uri;
}

int kv_vm_mig_incoming(struct kv_vm_mig *g, const char *uri,
		       struct kv_error *err)
{
	struct kv_incoming *in;
	int ret;

	pthread_mutex_lock(&g->lock);
	in = g->in;
	pthread_mutex_unlock(&g->lock);
	if (!in) {
		ret = kv_vm_mig_listen(g, uri, err);
		if (ret < 0)
			return ret;
		pthread_mutex_lock(&g->lock);
		in = g->in;
		pthread_mutex_unlock(&g->lock);
	}
	return kv_incoming_run(in, err);
}

int kv_vm_mig_settle(struct kv_vm_mig *g, enum kv_swo_settle how,
		     struct kv_error *err)
{
	struct kv_incoming *in;
	int ret;

	pthread_mutex_lock(&g->lock);
	in = g->in;
	if (in && kv_incoming_status(in) == KV_IN_UNDECIDED)
		ret = kv_incoming_settle(in, how, err);
	else if (g->mig)
		ret = kv_mig_settle(g->mig, how, err);
	else if (in)
		ret = kv_incoming_settle(in, how, err);
	else
		ret = kv_error_set(err, -EBUSY, "x-migrate-settle: no migration here");
	pthread_mutex_unlock(&g->lock);
	return ret;
}

void kv_vm_mig_answer_resolves(struct kv_vm_mig *g)
{
	struct kv_incoming *in;

	pthread_mutex_lock(&g->lock);
	in = g->in;
	pthread_mutex_unlock(&g->lock);
	if (in)
		kv_incoming_answer_resolves(in);
}

void kv_vm_mig_incoming_abort(struct kv_vm_mig *g)
{
	pthread_mutex_lock(&g->lock);
	g->in_abort = true;
	if (g->in)
		kv_incoming_abort(g->in);
	pthread_mutex_unlock(&g->lock);
}

void kv_vm_mig_free(struct kv_vm_mig *g)
{
	if (!g)
		return;
	pthread_mutex_lock(&g->lock);
	if (g->mig)
		kv_mig_stop_resolving(g->mig);
	pthread_mutex_unlock(&g->lock);
	kv_vm_mig_cancel(g, NULL);
	kv_vm_mig_join(g, NULL);
	if (g->mig)
		kv_mig_free(g->mig);
	kv_incoming_free(g->in);
	if (g->dirty) {
		kv_vm_set_dirty_hooks(g->vm, NULL);
		kv_kvm_dirty_free(g->dirty);
	}
	if (g->sv)
		kv_savevm_free(g->sv);
	if (g->rs)
		kv_ram_free(g->rs);
	for (int i = 0; i < KV_VM_MAX_VCPUS; i++)
		kv_vcpu_state_free(g->cpus[i]);
	kv_vm_state_free(g->vmst);
	kv_msr_list_free(g->msrs);
	pthread_mutex_destroy(&g->lock);
	free(g);
}
