/* SPDX-License-Identifier: MIT */
/* vCPU throttling: the throttle thread, the vCPUs' sleeps, the API. */
#define _GNU_SOURCE
#include "vmm/cpu_throttle.h"

#include <errno.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/log.h"
#include "vmm/vm_internal.h"

#define NS_PER_SEC 1000000000LL

int64_t kv_cpu_throttle_sleep_ns(unsigned pct)
{
	if (pct == 0)
		return 0;
	if (pct > KV_THROTTLE_PCT_MAX)
		pct = KV_THROTTLE_PCT_MAX;
	return KV_THROTTLE_TIMESLICE_NS * pct / (100 - pct);
}

int64_t kv_cpu_throttle_period_ns(unsigned pct)
{
	if (pct > KV_THROTTLE_PCT_MAX)
		pct = KV_THROTTLE_PCT_MAX;
	return KV_THROTTLE_TIMESLICE_NS * 100 / (100 - pct);
}

static struct timespec abs_time(clockid_t clock, int64_t from_now_ns)
{
	struct timespec ts;
	int64_t ns;

	clock_gettime(clock, &ts);
	ns = (int64_t)ts.tv_nsec + from_now_ns;
	ts.tv_sec += (time_t)(ns / NS_PER_SEC);
	ts.tv_nsec = (long)(ns % NS_PER_SEC);
	return ts;
}

void kv_cpu_throttle_init(struct kv_cpu_throttle *t)
{
	pthread_condattr_t attr;

	memset(t, 0, sizeof(*t));
	pthread_mutex_init(&t->ctl, NULL);
	pthread_mutex_init(&t->lock, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&t->cond, &attr);
	pthread_condattr_destroy(&attr);
}

void kv_cpu_throttle_fini(struct kv_cpu_throttle *t)
{
	pthread_cond_destroy(&t->cond);
	pthread_mutex_destroy(&t->lock);
	pthread_mutex_destroy(&t->ctl);
}

static unsigned load_pct(const struct kv_cpu_throttle *t)
{
	return __atomic_load_n(&t->pct, __ATOMIC_ACQUIRE);
}

/* Mark every running vCPU pending and kick it out of KVM_RUN; nothing to
 * do while the VM is paused, stopping or not started. */
static void kick_vcpus(struct kv_vm *vm)
{
	struct kv_cpu_throttle *t = &vm->throttle;

	pthread_mutex_lock(&vm->lock);
	if (vm->started && !vm->pause_req && !vm->stop_req) {
		for (int i = 0; i < vm->ncpus; i++)
			t->pending[i] = vm->vcpus[i].thread_started;
		kv_vm_kick_all(vm);
		__atomic_add_fetch(&t->kicks, 1, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&vm->lock);
}

/* Kicks one timeslice after starting, then every period of the current
 * percentage after the previous kick (a changed percentage takes effect
 * at the next wake-up). */
static void *throttle_main(void *arg)
{
	struct kv_vm *vm = arg;
	struct kv_cpu_throttle *t = &vm->throttle;
	int64_t next = kv_now_ns() + KV_THROTTLE_TIMESLICE_NS;
	int64_t last_kick = -1;

	pthread_mutex_lock(&t->lock);
	while (!t->quit) {
		int64_t now = kv_now_ns();
		struct timespec ts;

		if (last_kick >= 0)
			next = last_kick + kv_cpu_throttle_period_ns(t->pct);
		if (now < next) {
			ts = abs_time(CLOCK_MONOTONIC, next - now);
			pthread_cond_timedwait(&t->cond, &t->lock, &ts);
			continue;
		}
		pthread_mutex_unlock(&t->lock);
		kick_vcpus(vm);
		last_kick = now;
		pthread_mutex_lock(&t->lock);
	}
	pthread_mutex_unlock(&t->lock);
	return NULL;
}

static int start_thread(struct kv_vm *vm, struct kv_error *err)
{
	struct kv_cpu_throttle *t = &vm->throttle;
	int rc;

	t->quit = false;
	rc = pthread_create(&t->thread, NULL, throttle_main, vm);
	if (rc)
		return kv_error_set_errno(err, -rc,
					  "creating the vCPU throttle thread");
	pthread_setname_np(t->thread, "vcpu-throttle");
	t->thread_started = true;
	return 0;
}

static void stop_thread(struct kv_cpu_throttle *t)
{
	if (!t->thread_started)
		return;
	pthread_mutex_lock(&t->lock);
	t->quit = true;
	pthread_cond_signal(&t->cond);
	pthread_mutex_unlock(&t->lock);
	pthread_join(t->thread, NULL);
	t->thread_started = false;
}

static void store_pct(struct kv_vm *vm, unsigned pct)
{
	struct kv_cpu_throttle *t = &vm->throttle;

	pthread_mutex_lock(&t->lock);
	__atomic_store_n(&t->pct, pct, __ATOMIC_RELEASE);
	pthread_cond_signal(&t->cond);
	pthread_mutex_unlock(&t->lock);
	/* Sleeping vCPUs re-read it: a lower throttle shortens the sleep. */
	pthread_mutex_lock(&vm->lock);
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
}

int kv_vm_set_throttle(struct kv_vm *vm, unsigned pct, struct kv_error *err)
{
	struct kv_cpu_throttle *t = &vm->throttle;
	int rc = 0;

	if (pct > KV_THROTTLE_PCT_MAX)
		return kv_error_set(err, -EINVAL,
				    "vCPU throttle of %u %%: must be 0 to %d",
				    pct, KV_THROTTLE_PCT_MAX);
	pthread_mutex_lock(&t->ctl);
	if (load_pct(t) != pct)
		kv_debug("throttle", "vCPU throttle %u%% -> %u%%", load_pct(t),
			 pct);
	store_pct(vm, pct);
	if (pct && !t->thread_started)
		rc = start_thread(vm, err);
	if (rc)
		store_pct(vm, 0);
	if (!pct)
		stop_thread(t);
	pthread_mutex_unlock(&t->ctl);
	return rc;
}

unsigned kv_vm_throttle_pct(const struct kv_vm *vm)
{
	return load_pct(&vm->throttle);
}

uint64_t kv_vm_throttle_slept_ns(const struct kv_vm *vm)
{
	return __atomic_load_n(&vm->throttle.slept_ns, __ATOMIC_RELAXED);
}

void kv_cpu_throttle_stop(struct kv_vm *vm)
{
	struct kv_cpu_throttle *t = &vm->throttle;

	pthread_mutex_lock(&t->ctl);
	store_pct(vm, 0);
	stop_thread(t);
	pthread_mutex_unlock(&t->ctl);
}

void kv_cpu_throttle_forget_locked(struct kv_vcpu *v)
{
	v->vm->throttle.pending[v->index] = false;
}

static bool sleep_must_end(const struct kv_vm *vm)
{
	return vm->pause_req || vm->stop_req;
}

/*
 * The sleep is measured from its start against the current percentage,
 * so lowering the throttle shortens it; a kick that lands meanwhile is
 * dropped (as QEMU skips a vCPU whose throttle work is still queued).
 */
void kv_cpu_throttle_vcpu_locked(struct kv_vcpu *v)
{
	struct kv_vm *vm = v->vm;
	struct kv_cpu_throttle *t = &vm->throttle;
	int64_t start, now;

	if (!t->pending[v->index])
		return;
	t->pending[v->index] = false;
	start = now = kv_now_ns();
	while (!sleep_must_end(vm)) {
		int64_t end = start + kv_cpu_throttle_sleep_ns(load_pct(t));
		struct timespec ts;

		if (now >= end)
			break;
		ts = abs_time(CLOCK_REALTIME, end - now);
		pthread_cond_timedwait(&vm->cond, &vm->lock, &ts);
		now = kv_now_ns();
	}
	t->pending[v->index] = false;
	__atomic_add_fetch(&t->slept_ns, (uint64_t)(now - start),
			   __ATOMIC_RELAXED);
}
