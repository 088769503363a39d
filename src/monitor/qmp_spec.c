/* SPDX-License-Identifier: MIT */
/* The QMP socket's spec (qmp.h): QEMU's chardev options, one table. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "monitor/qmp.h"

enum opt_kind {
	OPT_ON,	    /* must be on (a bare name is on) */
	OPT_OFF,    /* must be off */
	OPT_BARE,   /* a bare name, no value (QEMU's old "nowait") */
	OPT_STRING, /* copied to the spec at offset */
};

struct spec_opt {
	const char *name;
	enum kv_qmp_side side;
	enum opt_kind kind;
	size_t offset, size; /* OPT_STRING */
	const char *why;     /* OPT_ON / OPT_OFF: what kvmig's monitor does */
};

#define STR_FIELD(f) offsetof(struct kv_qmp_spec, f), sizeof(((struct kv_qmp_spec *)0)->f)

static const struct spec_opt spec_opts[] = {
    {"server", KV_QMP_LISTEN, OPT_ON, 0, 0, "kvmig's monitor always listens"},
    {"wait", KV_QMP_LISTEN, OPT_OFF, 0, 0, "kvmig's monitor never waits for a client before the VM starts"},
    {"nowait", KV_QMP_LISTEN, OPT_BARE, 0, 0, NULL},
    {"tls-creds", KV_QMP_LISTEN, OPT_STRING, STR_FIELD(tls_creds), NULL},
    {"tls-authz", KV_QMP_LISTEN, OPT_STRING, STR_FIELD(tls_authz), NULL},
    {"tls-creds", KV_QMP_CONNECT, OPT_STRING, STR_FIELD(tls_creds), NULL},
    {"tls-hostname", KV_QMP_CONNECT, OPT_STRING, STR_FIELD(tls_hostname), NULL},
};

static const struct spec_opt *find_opt(const char *name, enum kv_qmp_side side)
{
	for (size_t i = 0; i < sizeof(spec_opts) / sizeof(spec_opts[0]); i++)
		if (spec_opts[i].side == side && !strcmp(spec_opts[i].name, name))
			return &spec_opts[i];
	return NULL;
}

static void list_opts(enum kv_qmp_side side, char *buf, size_t size)
{
	size_t used = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < sizeof(spec_opts) / sizeof(spec_opts[0]); i++)
		if (spec_opts[i].side == side && used < size)
			used += (size_t)snprintf(buf + used, size - used, "%s%s",
						 used ? ", " : "",
						 spec_opts[i].name);
}

static bool is_on(const char *v)
{
	return !v || !strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true");
}

static bool is_off(const char *v)
{
	return v && (!strcmp(v, "off") || !strcmp(v, "no") || !strcmp(v, "false"));
}

static int take_opt(const char *text, char *item, enum kv_qmp_side side,
		    struct kv_qmp_spec *out, struct kv_error *err)
{
	char *eq = strchr(item, '=');
	const char *value = eq ? eq + 1 : NULL;
	const struct spec_opt *o;
	char known[160];

	if (eq)
		*eq = '\0';
	o = find_opt(item, side);
	if (!o) {
		list_opts(side, known, sizeof(known));
		return kv_error_set(err, -EINVAL, "QMP socket '%s': unknown option '%s' (known: %s)", text, item, known);
	}
	if ((o->kind == OPT_ON && !is_on(value)) ||
	    (o->kind == OPT_OFF && !is_off(value)))
		return kv_error_set(err, -EINVAL, "QMP socket '%s': %s=%s is not supported (%s)", text, o->name, value ? value : "on", o->why);
	switch (o->kind) {
	case OPT_ON:
	case OPT_OFF:
		return 0;
	case OPT_BARE:
		if (value)
			return kv_error_set(err, -EINVAL, "QMP socket '%s': option '%s' takes no value", text, o->name);
		return 0;
	case OPT_STRING:
		if (!value || !*value || strlen(value) >= o->size)
			return kv_error_set(err, -EINVAL, "QMP socket '%s': option '%s' needs a value of 1 to %zu characters", text, o->name, o->size - 1);
		memcpy((char *)out + o->offset, value, strlen(value) + 1);
		return 0;
	}
	return -EINVAL;
}

/* Cut text at its first single comma into out->uri (",," stays one
 * comma); returns where the options start, or NULL when there are none. */
static const char *take_uri(const char *text, struct kv_qmp_spec *out)
{
	size_t n = 0;
	const char *p = text;

	for (; *p && n + 1 < sizeof(out->uri); p++) {
		if (*p == ',' && p[1] == ',') {
			out->uri[n++] = ',';
			p++;
			continue;
		}
		if (*p == ',')
			break;
		out->uri[n++] = *p;
	}
	out->uri[n] = '\0';
	return *p == ',' ? p + 1 : NULL;
}

int kv_qmp_spec_parse(const char *text, enum kv_qmp_side side,
		      struct kv_qmp_spec *out, struct kv_error *err)
{
	char opts[512], *item, *save = NULL;
	const char *rest;

	memset(out, 0, sizeof(*out));
	rest = take_uri(text, out);
	if (!out->uri[0])
		return kv_error_set(err, -EINVAL, "QMP socket '%s': no address before the options", text);
	if (!rest)
		return 0;
	if (strlen(rest) >= sizeof(opts))
		return kv_error_set(err, -EINVAL, "QMP socket '%s': options longer than %zu characters", text, sizeof(opts) - 1);
	memcpy(opts, rest, strlen(rest) + 1);
	for (item = strtok_r(opts, ",", &save); item;
	     item = strtok_r(NULL, ",", &save)) {
		int rc = take_opt(text, item, side, out, err);

		if (rc < 0)
			return rc;
	}
	if (out->tls_authz[0] && !out->tls_creds[0])
		return kv_error_set(err, -EINVAL, "QMP socket '%s': tls-authz needs tls-creds", text);
	return 0;
}
