/* SPDX-License-Identifier: MIT */
/* The --object table (objects.h): one row per kind QEMU names. */
#include "io/objects.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

enum obj_class { OBJ_TLS_CREDS, OBJ_AUTHZ };

struct obj_kind {
	const char *name;
	enum obj_class cls;
	const char *props[6]; /* accepted besides qom-type and id */
	void *(*make)(const char *id, json_t *props, struct kv_error *err);
	void (*release)(void *obj);
};

struct kv_object {
	char *id;
	const struct obj_kind *kind;
	void *obj;
};

struct kv_objects {
	size_t n;
	struct kv_object *v;
};

/* ---- property values: JSON, or keyval's strings ---- */

static const char *prop_str(json_t *props, const char *key)
{
	return json_string_value(json_object_get(props, key));
}

static int prop_bool(const char *id, json_t *props, const char *key,
		     bool dflt, bool *out, struct kv_error *err)
{
	json_t *j = json_object_get(props, key);
	const char *s = json_string_value(j);

	if (!j)
		*out = dflt;
	else if (json_is_boolean(j))
		*out = json_is_true(j);
	else if (s && (!strcmp(s, "on") || !strcmp(s, "yes") || !strcmp(s, "true")))
		*out = true;
	else if (s && (!strcmp(s, "off") || !strcmp(s, "no") || !strcmp(s, "false")))
		*out = false;
	else
		return kv_error_set(err, -EINVAL, "object '%s': property '%s' expects on or off", id, key);
	return 0;
}

static int prop_endpoint(const char *id, json_t *props,
			 enum kv_tls_endpoint *out, struct kv_error *err)
{
	const char *s = prop_str(props, "endpoint");

	if (!s || !strcmp(s, "client"))
		*out = KV_TLS_CLIENT; /* QEMU's default */
	else if (!strcmp(s, "server"))
		*out = KV_TLS_SERVER;
	else
		return kv_error_set(err, -EINVAL, "object '%s': property 'endpoint' expects server or client, not '%s'", id, s);
	return 0;
}

static const char *prop_dir(const char *id, json_t *props,
			    struct kv_error *err)
{
	const char *dir = prop_str(props, "dir");

	if (!dir || !*dir)
		kv_error_set(err, -EINVAL, "object '%s': property 'dir' (the directory of the credentials) is required", id);
	return dir && *dir ? dir : NULL;
}

/* ---- the kinds ---- */

static void *make_x509(const char *id, json_t *props, struct kv_error *err)
{
	enum kv_tls_endpoint ep;
	const char *dir = prop_dir(id, props, err);
	bool verify = true;

	if (!dir || prop_endpoint(id, props, &ep, err) < 0 ||
	    prop_bool(id, props, "verify-peer", true, &verify, err) < 0)
		return NULL;
	return kv_tls_creds_x509(id, dir, ep, verify, err);
}

static void *make_psk(const char *id, json_t *props, struct kv_error *err)
{
	enum kv_tls_endpoint ep;
	const char *dir = prop_dir(id, props, err);

	if (!dir || prop_endpoint(id, props, &ep, err) < 0)
		return NULL;
	return kv_tls_creds_psk(id, dir, ep, prop_str(props, "username"), err);
}

static void release_creds(void *obj)
{
	kv_tls_creds_free(obj);
}

static void *make_authz_simple(const char *id, json_t *props,
			       struct kv_error *err)
{
	const char *identity = prop_str(props, "identity");

	if (!identity) {
		kv_error_set(err, -EINVAL, "object '%s': authz-simple needs property 'identity'", id);
		return NULL;
	}
	return kv_authz_simple(id, identity, err);
}

static int rule_from_json(const char *id, size_t i, json_t *j,
			  struct kv_authz_rule *r, struct kv_error *err)
{
	const char *fmt = prop_str(j, "format");

	r->match = prop_str(j, "match");
	if (!r->match)
		return kv_error_set(err, -EINVAL, "object '%s': rules.%zu.match is missing", id, i);
	if (kv_authz_policy_parse(prop_str(j, "policy"), &r->policy) < 0)
		return kv_error_set(err, -EINVAL, "object '%s': rules.%zu.policy must be allow or deny", id, i);
	r->format = KV_AUTHZ_EXACT;
	if (fmt && kv_authz_format_parse(fmt, &r->format) < 0)
		return kv_error_set(err, -EINVAL, "object '%s': rules.%zu.format must be exact or glob, not '%s'", id, i, fmt);
	return 0;
}

static void *make_authz_list(const char *id, json_t *props,
			     struct kv_error *err)
{
	json_t *rules = json_object_get(props, "rules");
	const char *policy = prop_str(props, "policy");
	size_t n = rules ? json_array_size(rules) : 0;
	struct kv_authz_rule *r = calloc(n ? n : 1, sizeof(*r));
	enum kv_authz_policy dflt = KV_AUTHZ_DENY; /* QEMU's default */
	void *a = NULL;

	if (!r) {
		kv_error_set(err, -ENOMEM, "object '%s': out of memory", id);
		return NULL;
	}
	if (rules && !json_is_array(rules))
		kv_error_set(err, -EINVAL, "object '%s': property 'rules' must be a list", id);
	else if (policy && kv_authz_policy_parse(policy, &dflt) < 0)
		kv_error_set(err, -EINVAL, "object '%s': property 'policy' must be allow or deny, not '%s'", id, policy);
	for (size_t i = 0; i < n && !kv_error_is_set(err); i++)
		rule_from_json(id, i, json_array_get(rules, i), &r[i], err);
	if (!kv_error_is_set(err))
		a = kv_authz_list(id, dflt, r, n, err);
	free(r);
	return a;
}

static void release_authz(void *obj)
{
	kv_authz_free(obj);
}

static const struct obj_kind kinds[] = {
    {"tls-creds-x509", OBJ_TLS_CREDS,
     {"dir", "endpoint", "verify-peer", NULL}, make_x509, release_creds},
    {"tls-creds-psk", OBJ_TLS_CREDS,
     {"dir", "endpoint", "username", "verify-peer", NULL}, make_psk,
     release_creds},
    {"authz-simple", OBJ_AUTHZ, {"identity", NULL}, make_authz_simple,
     release_authz},
    {"authz-list", OBJ_AUTHZ, {"policy", "rules", NULL}, make_authz_list,
     release_authz},
};

static const struct obj_kind *kind_find(const char *name)
{
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		if (name && !strcmp(kinds[i].name, name))
			return &kinds[i];
	return NULL;
}

static int check_props(const struct obj_kind *k, const char *id,
		       json_t *props, struct kv_error *err)
{
	const char *key;
	json_t *v;

	json_object_foreach(props, key, v)
	{
		bool known = !strcmp(key, "qom-type") || !strcmp(key, "id");

		for (size_t i = 0; !known && k->props[i]; i++)
			known = !strcmp(key, k->props[i]);
		if (!known)
			return kv_error_set(err, -EINVAL, "object '%s': %s has no property '%s'", id, k->name, key);
	}
	return 0;
}

/* ---- QEMU's keyval form into the JSON form ---- */

/* Next element of a keyval string, ",," read as ','. */
static const char *keyval_next(const char *s, char *out, size_t size)
{
	size_t n = 0;

	while (*s && !(*s == ',' && s[1] != ',')) {
		if (*s == ',')
			s++;
		if (n + 1 < size)
			out[n++] = *s;
		s++;
	}
	out[n] = '\0';
	return *s ? s + 1 : s;
}

/* rules.N.field=value: the list member N (made as needed). */
static int keyval_list_member(json_t *obj, const char *key, const char *value,
			      struct kv_error *err)
{
	char list[64], field[64];
	unsigned long idx;
	json_t *arr, *el;
	char *end;

	if (sscanf(key, "%63[^.].", list) != 1)
		return kv_error_set(err, -EINVAL, "--object: bad key '%s'", key);
	idx = strtoul(key + strlen(list) + 1, &end, 10);
	if (*end != '.' || idx > 1024 || sscanf(end + 1, "%63s", field) != 1)
		return kv_error_set(err, -EINVAL, "--object: bad key '%s' (expected %s.N.member)", key, list);
	arr = json_object_get(obj, list);
	if (!arr) {
		arr = json_array();
		json_object_set_new(obj, list, arr);
	}
	while (json_array_size(arr) <= idx)
		json_array_append_new(arr, json_object());
	el = json_array_get(arr, idx);
	json_object_set_new(el, field, json_string(value));
	return 0;
}

static json_t *keyval_parse(const char *spec, struct kv_error *err)
{
	json_t *obj = json_object();
	char item[1024];
	const char *s = spec;
	bool first = true;

	while (obj && *s) {
		char *eq;

		s = keyval_next(s, item, sizeof(item));
		eq = strchr(item, '=');
		if (!eq && first) {
			json_object_set_new(obj, "qom-type", json_string(item));
		} else if (!eq) {
			kv_error_set(err, -EINVAL, "--object %s: '%s' is not key=value", spec, item);
		} else {
			*eq = '\0';
			if (strchr(item, '.'))
				keyval_list_member(obj, item, eq + 1, err);
			else
				json_object_set_new(obj, item, json_string(eq + 1));
		}
		first = false;
		if (kv_error_is_set(err)) {
			json_decref(obj);
			return NULL;
		}
	}
	return obj;
}

static json_t *spec_parse(const char *spec, struct kv_error *err)
{
	json_error_t je;
	json_t *j;

	if (spec[0] != '{')
		return keyval_parse(spec, err);
	j = json_loads(spec, 0, &je);
	if (!j || !json_is_object(j)) {
		json_decref(j);
		kv_error_set(err, -EINVAL, "--object: not a JSON object: %s", j ? "another JSON value" : je.text);
		return NULL;
	}
	return j;
}

/* ---- the table of objects ---- */

struct kv_objects *kv_objects_new(void)
{
	return calloc(1, sizeof(struct kv_objects));
}

void kv_objects_free(struct kv_objects *o)
{
	if (!o)
		return;
	for (size_t i = 0; i < o->n; i++) {
		o->v[i].kind->release(o->v[i].obj);
		free(o->v[i].id);
	}
	free(o->v);
	free(o);
}

static const struct kv_object *object_find(const struct kv_objects *o,
					   const char *id)
{
	for (size_t i = 0; o && i < o->n; i++)
		if (!strcmp(o->v[i].id, id))
			return &o->v[i];
	return NULL;
}

static int object_store(struct kv_objects *o, const struct obj_kind *k,
			const char *id, void *obj, struct kv_error *err)
{
	struct kv_object *v = realloc(o->v, (o->n + 1) * sizeof(*v));
	char *dup = strdup(id);

	if (v)
		o->v = v;
	if (!v || !dup) {
		free(dup);
		k->release(obj);
		return kv_error_set(err, -ENOMEM, "object '%s': out of memory", id);
	}
	o->v[o->n++] = (struct kv_object){dup, k, obj};
	return 0;
}

int kv_objects_add(struct kv_objects *o, const char *spec,
		   struct kv_error *err)
{
	json_t *props = spec_parse(spec, err);
	const struct obj_kind *k;
	const char *type, *id;
	void *obj = NULL;

	if (!props)
		return err ? err->code : -EINVAL;
	type = prop_str(props, "qom-type");
	id = prop_str(props, "id");
	k = kind_find(type);
	if (!k)
		kv_error_set(err, -EINVAL, "--object %s: unknown object type '%s' (kvmig knows tls-creds-x509, tls-creds-psk, authz-simple, authz-list)", spec, type ? type : "");
	else if (!id || !*id)
		kv_error_set(err, -EINVAL, "--object %s: property 'id' is required", spec);
	else if (object_find(o, id))
		kv_error_set(err, -EEXIST, "--object: an object with id '%s' already exists", id);
	else if (check_props(k, id, props, err) == 0)
		obj = k->make(id, props, err);
	if (obj)
		object_store(o, k, id, obj, err);
	json_decref(props);
	return kv_error_is_set(err) ? err->code : (obj ? 0 : -EINVAL);
}

const struct kv_tls_creds *kv_objects_tls_creds(const struct kv_objects *o,
						const char *id,
						struct kv_error *err)
{
	const struct kv_object *v = object_find(o, id);

	if (!v)
		kv_error_set(err, -ENOENT, "No TLS credentials with id '%s'", id);
	else if (v->kind->cls != OBJ_TLS_CREDS)
		kv_error_set(err, -EINVAL, "Object with id '%s' is not TLS credentials", id);
	return v && v->kind->cls == OBJ_TLS_CREDS ? v->obj : NULL;
}

const struct kv_authz *kv_objects_authz(const struct kv_objects *o,
					const char *id, struct kv_error *err)
{
	const struct kv_object *v = object_find(o, id);

	if (!v)
		kv_error_set(err, -ENOENT, "Cannot find access control object '%s'", id);
	else if (v->kind->cls != OBJ_AUTHZ)
		kv_error_set(err, -EINVAL, "Object with id '%s' is not an authorization object", id);
	return v && v->kind->cls == OBJ_AUTHZ ? v->obj : NULL;
}
