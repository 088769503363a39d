/* SPDX-License-Identifier: MIT */
#include "base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static enum kv_log_level log_threshold(void)
{
	const char *env = getenv("KVMIG_LOG");

	if (!env)
		return KV_LOG_WARN;
	if (!strcmp(env, "debug"))
		return KV_LOG_DEBUG;
	if (!strcmp(env, "info"))
		return KV_LOG_INFO;
	if (!strcmp(env, "error"))
		return KV_LOG_ERROR;
	return KV_LOG_WARN;
}

void kv_log(enum kv_log_level level, const char *subsys, const char *file,
	    int line, const char *fmt, ...)
{
	static const char *const names[] = { "error", "warn", "info", "debug" };
	char msg[1024];
	const char *base;
	va_list ap;

	if (level > log_threshold())
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	base = strrchr(file, '/');
	fprintf(stderr, "kvmig %s [%s] %s:%d: %s\n", names[level], subsys,
		base ? base + 1 : file, line, msg);
}
