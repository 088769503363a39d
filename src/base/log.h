/* SPDX-License-Identifier: MIT */
/*
 * Logging: every line carries the subsystem and file:line. Output goes to
 * stderr; the threshold is the KVMIG_LOG environment variable
 * (error|warn|info|debug; warn when unset), read at every call, so a test
 * may change it between calls. Library code logs; it never exits.
 */
#ifndef KV_BASE_LOG_H
#define KV_BASE_LOG_H

#include "base/clock.h"

enum kv_log_level { KV_LOG_ERROR, KV_LOG_WARN, KV_LOG_INFO, KV_LOG_DEBUG };

void kv_log(enum kv_log_level level, const char *subsys, const char *file,
	    int line, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

#define KV_LOG(level, subsys, ...) \
	kv_log(level, subsys, __FILE__, __LINE__, __VA_ARGS__)
#define kv_err(subsys, ...) KV_LOG(KV_LOG_ERROR, subsys, __VA_ARGS__)
#define kv_warn(subsys, ...) KV_LOG(KV_LOG_WARN, subsys, __VA_ARGS__)
#define kv_info(subsys, ...) KV_LOG(KV_LOG_INFO, subsys, __VA_ARGS__)
#define kv_debug(subsys, ...) KV_LOG(KV_LOG_DEBUG, subsys, __VA_ARGS__)

/* The switch-over timeline (KVMIG_LOG=debug): "@MS what", MS on the host's
 * monotonic clock, so both sides' lines and the guest's heartbeats line
 * up (docs/DESIGN.md). */
#define kv_switch_log(fmt, ...)                                               \
	kv_debug("switchover", "@%.3f " fmt, (double)kv_now_ns() / 1e6,       \
		 ##__VA_ARGS__)

#endif
