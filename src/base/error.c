/* SPDX-License-Identifier: MIT */
#include "base/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

__attribute__((format(printf, 3, 0))) static int
error_vset(struct kv_error *err, int code, const char *fmt, va_list ap)
{
	if (!err || err->code != 0)
		return code;
	err->code = code < 0 ? code : -code;
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	return code;
}

int kv_error_set(struct kv_error *err, int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	error_vset(err, code, fmt, ap);
	va_end(ap);
	return code;
}

int kv_error_set_errno(struct kv_error *err, int code, const char *fmt, ...)
{
	va_list ap;
	size_t len;

	if (!err || err->code != 0)
		return code;
	va_start(ap, fmt);
	error_vset(err, code, fmt, ap);
	va_end(ap);
	len = strlen(err->msg);
	snprintf(err->msg + len, sizeof(err->msg) - len, ": %s",
		 strerror(code < 0 ? -code : code));
	return code;
}

/* dst = "<a>: <b>", cut to size (snprintf would warn about the cut). */
static void append_joined(char *dst, size_t size, const char *a, const char *b)
{
	const char *parts[3] = {a, ": ", b};
	size_t used = 0;

	for (int i = 0; i < 3; i++) {
		size_t len = strlen(parts[i]);

		if (len > size - 1 - used)
			len = size - 1 - used;
		memcpy(dst + used, parts[i], len);
		used += len;
	}
	dst[used] = '\0';
}

void kv_error_prefix(struct kv_error *err, const char *fmt, ...)
{
	char prefix[KV_ERROR_MSG_MAX];
	char old[KV_ERROR_MSG_MAX];
	va_list ap;

	if (!err || err->code == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	memcpy(old, err->msg, sizeof(old));
	append_joined(err->msg, sizeof(err->msg), prefix, old);
}

void kv_error_propagate(struct kv_error *dst, const struct kv_error *src)
{
	if (!dst || dst->code != 0 || !src || src->code == 0)
		return;
	*dst = *src;
}
