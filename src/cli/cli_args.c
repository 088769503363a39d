/* SPDX-License-Identifier: MIT */
/* The option parser and value parsers shared by every kvmig subcommand. */
#include "cli/cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/objects.h"

int kv_cli_usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "kvmig %s: ", cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'kvmig %s --help' for the options.\n", cmd);
	return KV_EXIT_USAGE;
}

const struct kv_cli_opt *kv_cli_find_opt(const struct kv_cli_opt *opts,
					 const char *name, size_t len)
{
	for (; opts->name; opts++)
		if (strlen(opts->name) == len &&
		    !strncmp(opts->name, name, len))
			return opts;
	return NULL;
}

int kv_cli_parse(const char *cmd, int argc, char **argv,
		 const struct kv_cli_opt *opts, bool *help)
{
	*help = false;
	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i];
		const char *name, *eq;
		const struct kv_cli_opt *o;
		size_t len;

		if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
			*help = true;
			continue;
		}
		if (strncmp(arg, "--", 2) || !arg[2])
			return kv_cli_usage_error(
			    cmd, "unexpected argument '%s'", arg);
		name = arg + 2;
		eq = strchr(name, '=');
		len = eq ? (size_t)(eq - name) : strlen(name);
		o = kv_cli_find_opt(opts, name, len);
		if (!o)
			return kv_cli_usage_error(
			    cmd, "unknown option '--%.*s'", (int)len, name);
		if (!o->takes_value) {
			if (eq)
				return kv_cli_usage_error(
				    cmd, "option '--%s' takes no value",
				    o->name);
			*o->value = "1";
			continue;
		}
		if (eq) {
			*o->value = eq + 1;
		} else if (i + 1 < argc) {
			*o->value = argv[++i];
		} else {
			return kv_cli_usage_error(
			    cmd, "option '--%s' needs a value", o->name);
		}
		if (!**o->value)
			return kv_cli_usage_error(
			    cmd, "option '--%s' has an empty value", o->name);
	}
	return KV_EXIT_OK;
}

bool kv_cli_parse_double(const char *text, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(text, &end);
	if (errno || end == text || *end || !isfinite(v) || v < 0)
		return false;
	*out = v;
	return true;
}

bool kv_cli_parse_u64(const char *text, uint64_t *out)
{
	unsigned long long v;
	char *end;

	if (*text < '0' || *text > '9')
		return false;
	errno = 0;
	v = strtoull(text, &end, 10);
	if (errno || *end)
		return false;
	*out = v;
	return true;
}

static int suffix_shift(const char *s)
{
	int shift;

	switch (*s) {
	case '\0':
		return 0;
	case 'b':
	case 'B':
		return s[1] ? -1 : 0;
	case 'k':
	case 'K':
		shift = 10;
		break;
	case 'm':
	case 'M':
		shift = 20;
		break;
	case 'g':
	case 'G':
		shift = 30;
		break;
	case 't':
	case 'T':
		shift = 40;
		break;
	default:
		return -1;
	}
	s++;
	if (!*s || !strcmp(s, "B") || !strcmp(s, "iB"))
		return shift;
	return -1;
}

bool kv_cli_parse_size(const char *text, uint64_t *out)
{
	char *end;
	double v;
	int shift;

	if (*text < '0' || *text > '9')
		return false;
	errno = 0;
	v = strtod(text, &end);
	if (errno || end == text || !isfinite(v) || v < 0)
		return false;
	shift = suffix_shift(end);
	if (shift < 0)
		return false;
	v = ldexp(v, shift);
	if (v >= 18446744073709551616.0)
		return false;
	*out = (uint64_t)v;
	return true;
}

void kv_cli_hex(const uint8_t *bytes, int n, char *buf)
{
	static const char digits[] = "0123456789abcdef";

	for (int i = 0; i < n; i++) {
		buf[2 * i] = digits[bytes[i] >> 4];
		buf[2 * i + 1] = digits[bytes[i] & 15];
	}
	buf[2 * n] = '\0';
}

int kv_cli_take_objects(const char *cmd, int *argc, char **argv,
			struct kv_objects **objects)
{
	int out = 1;

	for (int i = 1; i < *argc; i++) {
		struct kv_error err = {0};
		const char *spec = NULL;

		if (!strcmp(argv[i], "--object") && i + 1 < *argc)
			spec = argv[++i];
		else if (!strncmp(argv[i], "--object=", 9))
			spec = argv[i] + 9;
		if (!spec) {
			argv[out++] = argv[i];
			continue;
		}
		if (!*objects)
			*objects = kv_objects_new();
		if (!*objects || kv_objects_add(*objects, spec, &err) < 0)
			return kv_cli_usage_error(cmd, "--object: %s", *objects ? err.msg : "out of memory");
	}
	*argc = out;
	argv[out] = NULL;
	return KV_EXIT_OK;
}
