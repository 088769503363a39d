/* SPDX-License-Identifier: MIT */
/*
 * Who wins the CPU when it is short (docs/DESIGN.md "Postcopy", "Who
 * gets the CPU"). In postcopy a vCPU waits on a handful of threads (the
 * destination's fault thread, the source's return-path reader and
 * preempt sender, the destination's preempt reader) while others move
 * bulk pages nobody waits on; on a loaded host the first must not queue
 * behind the second. A thread states its role once, on itself.
 */
#ifndef KV_BASE_THREAD_ROLE_H
#define KV_BASE_THREAD_ROLE_H

enum kv_thread_role {
	KV_THREAD_NORMAL,     /* back to the default (nice 0) */
	KV_THREAD_URGENT,     /* a vCPU waits on what it does */
	KV_THREAD_BACKGROUND, /* bulk work nobody waits on */
	KV_THREAD_ROLES
};

/* The calling thread's nice value for its role (Linux: per thread).
 * 0, or -errno when the process may not (a nice below 0 needs
 * CAP_SYS_NICE or RLIMIT_NICE): the thread then keeps its priority,
 * which is no error for the caller's work. */
int kv_thread_set_role(enum kv_thread_role role);

/* The nice value of a role (the table's), for tests and logs. */
int kv_thread_role_nice(enum kv_thread_role role);
const char *kv_thread_role_name(enum kv_thread_role role);

#endif
