/* SPDX-License-Identifier: MIT */
/*
 * Who may connect: QEMU's authz-simple (one identity) and authz-list (an
 * ordered list of allow/deny rules, first match wins, else the list's
 * policy; a rule matches exactly or as a shell glob with * and ?).
 * Identities are an X.509 distinguished name as GnuTLS prints it
 * ("C=GB,O=kvmig,CN=source.example") or a PSK user name.
 * Immutable once made: any thread may ask.
 */
#ifndef KV_BASE_AUTHZ_H
#define KV_BASE_AUTHZ_H

#include <stdbool.h>
#include <stddef.h>

#include "base/error.h"

enum kv_authz_policy { KV_AUTHZ_DENY, KV_AUTHZ_ALLOW };
enum kv_authz_format { KV_AUTHZ_EXACT, KV_AUTHZ_GLOB };

struct kv_authz_rule {
	const char *match;
	enum kv_authz_policy policy;
	enum kv_authz_format format;
};

struct kv_authz;

struct kv_authz *kv_authz_simple(const char *id, const char *identity,
				 struct kv_error *err);
/* Copies the rules. */
struct kv_authz *kv_authz_list(const char *id, enum kv_authz_policy policy,
			       const struct kv_authz_rule *rules, size_t n,
			       struct kv_error *err);
void kv_authz_free(struct kv_authz *a);
const char *kv_authz_id(const struct kv_authz *a);

/* Is identity allowed? */
bool kv_authz_allows(const struct kv_authz *a, const char *identity);

/* QEMU's names: "deny"/"allow", "exact"/"glob". -EINVAL otherwise. */
int kv_authz_policy_parse(const char *s, enum kv_authz_policy *out);
int kv_authz_format_parse(const char *s, enum kv_authz_format *out);

#endif
