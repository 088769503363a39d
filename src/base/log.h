/* SPDX-License-Identifier: MIT */
/*
 * Logging: every line carries the subsystem and file:line. Output goes to
 * stderr; the level comes from a struct passed by the caller where one exists,
 * and from the KVMIG_LOG environment variable (error|warn|info|debug) read once
 * at the call site otherwise. Library code logs; it never exits.
 */
#ifndef KV_BASE_LOG_H
#define KV_BASE_LOG_H

enum kv_log_level { KV_LOG_ERROR, KV_LOG_WARN, KV_LOG_INFO, KV_LOG_DEBUG };

void kv_log(enum kv_log_level level, const char *subsys, const char *file,
	    int line, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

#define KV_LOG(level, subsys, ...) \
	kv_log(level, subsys, __FILE__, __LINE__, __VA_ARGS__)
#define kv_err(subsys, ...) KV_LOG(KV_LOG_ERROR, subsys, __VA_ARGS__)
#define kv_warn(subsys, ...) KV_LOG(KV_LOG_WARN, subsys, __VA_ARGS__)
#define kv_info(subsys, ...) KV_LOG(KV_LOG_INFO, subsys, __VA_ARGS__)
#define kv_debug(subsys, ...) KV_LOG(KV_LOG_DEBUG, subsys, __VA_ARGS__)

#endif
