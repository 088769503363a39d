/* SPDX-License-Identifier: MIT */
/* authz-simple and authz-list (authz.h). */
#include "base/authz.h"

#include <errno.h>
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

struct kv_authz {
	char *id;
	enum kv_authz_policy policy; /* when no rule matches */
	size_t n;
	struct kv_authz_rule rules[]; /* match strings owned */
};

static struct kv_authz *authz_alloc(const char *id, size_t n,
				    struct kv_error *err)
{
	struct kv_authz *a = calloc(1, sizeof(*a) + n * sizeof(a->rules[0]));

	if (a)
		a->id = strdup(id);
	if (!a || !a->id) {
		free(a);
		kv_error_set(err, -ENOMEM, "authz '%s': out of memory", id);
		return NULL;
	}
	return a;
}

struct kv_authz *kv_authz_list(const char *id, enum kv_authz_policy policy,
			       const struct kv_authz_rule *rules, size_t n,
			       struct kv_error *err)
{
	struct kv_authz *a = authz_alloc(id, n, err);

	if (!a)
		return NULL;
	a->policy = policy;
	for (size_t i = 0; i < n; i++) {
		a->rules[i] = rules[i];
		a->rules[i].match = strdup(rules[i].match);
		a->n = i + 1;
		if (!a->rules[i].match) {
			kv_authz_free(a);
			kv_error_set(err, -ENOMEM, "authz '%s': out of memory", id);
			return NULL;
		}
	}
	return a;
}

struct kv_authz *kv_authz_simple(const char *id, const char *identity,
				 struct kv_error *err)
{
	struct kv_authz_rule r = {identity, KV_AUTHZ_ALLOW, KV_AUTHZ_EXACT};

	return kv_authz_list(id, KV_AUTHZ_DENY, &r, 1, err);
}

void kv_authz_free(struct kv_authz *a)
{
	if (!a)
		return;
	for (size_t i = 0; i < a->n; i++)
		free((char *)a->rules[i].match);
	free(a->id);
	free(a);
}

const char *kv_authz_id(const struct kv_authz *a)
{
	return a->id;
}

static bool rule_matches(const struct kv_authz_rule *r, const char *identity)
{
	if (r->format == KV_AUTHZ_GLOB)
		return fnmatch(r->match, identity, 0) == 0;
	return strcmp(r->match, identity) == 0;
}

bool kv_authz_allows(const struct kv_authz *a, const char *identity)
{
	for (size_t i = 0; i < a->n; i++)
		if (rule_matches(&a->rules[i], identity))
			return a->rules[i].policy == KV_AUTHZ_ALLOW;
	return a->policy == KV_AUTHZ_ALLOW;
}

int kv_authz_policy_parse(const char *s, enum kv_authz_policy *out)
{
	if (s && !strcmp(s, "deny"))
		*out = KV_AUTHZ_DENY;
	else if (s && !strcmp(s, "allow"))
		*out = KV_AUTHZ_ALLOW;
	else
		return -EINVAL;
	return 0;
}

int kv_authz_format_parse(const char *s, enum kv_authz_format *out)
{
	if (s && !strcmp(s, "exact"))
		*out = KV_AUTHZ_EXACT;
	else if (s && !strcmp(s, "glob"))
		*out = KV_AUTHZ_GLOB;
	else
		return -EINVAL;
	return 0;
}
