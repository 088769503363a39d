/* SPDX-License-Identifier: MIT */
/*
 * The error object: one per failing call chain, filled once at the point of
 * failure and reported once at the top.
 *
 * Convention across kvmig: a function that can fail returns a negative errno
 * (or false) and, when given a non-NULL `struct kv_error *`, fills it with a
 * message a user can act on. The first error wins: later kv_error_set() calls
 * on an already-set error are ignored, so the root cause is what gets shown.
 * kv_error_prefix() adds context ("loading section 'ram': ...") on the way up.
 */
#ifndef KV_BASE_ERROR_H
#define KV_BASE_ERROR_H

#include <stdbool.h>
#include <stddef.h>

#define KV_ERROR_MSG_MAX 512

struct kv_error {
	int code;                   /* negative errno, 0 when unset */
	char msg[KV_ERROR_MSG_MAX]; /* human-readable, no trailing newline */
};

/* Set err (if non-NULL and not yet set). Returns code, so callers can write
 * `return kv_error_set(err, -EINVAL, "...")`. code must be negative. */
int kv_error_set(struct kv_error *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Like kv_error_set, appending ": strerror(-code)". */
int kv_error_set_errno(struct kv_error *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Prepend context to an already-set error: "<prefix>: <old message>". */
void kv_error_prefix(struct kv_error *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static inline bool kv_error_is_set(const struct kv_error *err)
{
	return err && err->code != 0;
}

static inline void kv_error_clear(struct kv_error *err)
{
	if (err) {
		err->code = 0;
		err->msg[0] = '\0';
	}
}

/* Copy src into dst if dst is unset. */
void kv_error_propagate(struct kv_error *dst, const struct kv_error *src);

#endif
