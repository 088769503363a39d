/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "base/thread_role.h"

#include <errno.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "base/log.h"

/* Urgent at -10: about ten times a nice-0 thread's share (a busy vCPU,
 * a build on the same host), so its wake-up preempts them. Background
 * at +5: it yields to the guest's own vCPUs' bursts without starving
 * (the pages it moves are the ones the guest will fault on next). */
static const struct {
	const char *name;
	int nice;
} roles[KV_THREAD_ROLES] = {
    [KV_THREAD_NORMAL] = {"normal", 0},
    [KV_THREAD_URGENT] = {"urgent", -10},
    [KV_THREAD_BACKGROUND] = {"background", 5},
};

int kv_thread_role_nice(enum kv_thread_role role)
{
	return role < KV_THREAD_ROLES ? roles[role].nice : 0;
}

const char *kv_thread_role_name(enum kv_thread_role role)
{
	return role < KV_THREAD_ROLES ? roles[role].name : "?";
}

int kv_thread_set_role(enum kv_thread_role role)
{
	pid_t tid = (pid_t)syscall(SYS_gettid);

	if (role >= KV_THREAD_ROLES)
		return -EINVAL;
	if (setpriority(PRIO_PROCESS, (id_t)tid, roles[role].nice) < 0) {
		int e = errno;

		kv_debug("thread", "thread %d keeps its priority: nice %d (%s) refused: errno %d", (int)tid, roles[role].nice, roles[role].name, e);
		return -e;
	}
	return 0;
}
