/* SPDX-License-Identifier: MIT */
/* Migration options as command-line text (option_args.h). */
#include "cli/option_args.h"

#include <errno.h>
#include <string.h>

#include "cli/cli.h"

bool kv_cli_mig_parse_bool(const char *text, bool *out)
{
	static const char *const yes[] = {"on", "true", "yes", "1"};
	static const char *const no[] = {"off", "false", "no", "0"};

	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		if (!strcmp(text, yes[i]) || !strcmp(text, no[i])) {
			*out = !strcmp(text, yes[i]);
			return true;
		}
	}
	return false;
}

/* text with suffix cut off (if it ends so) as a non-negative integer. */
static bool parse_u64_suffix(const char *text, const char *suffix,
			     uint64_t *out)
{
	size_t n = strlen(text), k = strlen(suffix);
	char buf[32];

	if (n > k && !strcmp(text + n - k, suffix)) {
		if (n - k >= sizeof(buf))
			return false;
		memcpy(buf, text, n - k);
		buf[n - k] = '\0';
		return kv_cli_parse_u64(buf, out);
	}
	return false;
}

static bool parse_ms(const char *text, uint64_t *out)
{
	uint64_t s;

	if (kv_cli_parse_u64(text, out) || parse_u64_suffix(text, "ms", out))
		return true;
	if (!parse_u64_suffix(text, "s", &s) || s > UINT64_MAX / 1000)
		return false;
	*out = s * 1000;
	return true;
}

static bool parse_uint(const struct kv_mig_option *o, const char *text,
		       uint64_t *out)
{
	switch (o->unit) {
	case KV_MIG_UNIT_BYTES:
	case KV_MIG_UNIT_BYTES_PER_SEC:
		return kv_cli_parse_size(text, out);
	case KV_MIG_UNIT_MS:
		return parse_ms(text, out);
	case KV_MIG_UNIT_PERCENT:
		return kv_cli_parse_u64(text, out) ||
		       parse_u64_suffix(text, "%", out);
	case KV_MIG_UNIT_NONE:
	case KV_MIG_UNIT_COUNT:
		break;
	}
	return kv_cli_parse_u64(text, out);
}

int kv_cli_mig_value(const struct kv_mig_option *o, const char *text,
		     struct kv_mig_value *v, struct kv_error *err)
{
	bool b;

	switch (o->kind) {
	case KV_MIG_OPT_CAPABILITY:
		if (!kv_cli_mig_parse_bool(text, &b))
			return kv_error_set(err, -EINVAL, "Capability '%s' expects on or off, not '%s'", o->name, text);
		v->u = b;
		return 0;
	case KV_MIG_OPT_BOOL:
		/* Anything else is 2: refused by the check, naming o. */
		v->u = kv_cli_mig_parse_bool(text, &b) ? b : 2;
		break;
	case KV_MIG_OPT_ENUM:
		return kv_mig_option_enum_parse(o, text, v, err);
	case KV_MIG_OPT_STRING:
		memset(v->s, 'x', sizeof(v->s)); /* too long: refused below */
		if (strlen(text) < sizeof(v->s))
			snprintf(v->s, sizeof(v->s), "%s", text);
		break;
	case KV_MIG_OPT_UINT:
		/* Unparsable is out of every range: refused, naming o. */
		if (!parse_uint(o, text, &v->u))
			v->u = UINT64_MAX;
		break;
	}
	return kv_mig_option_check(o, v, err);
}

void kv_cli_mig_options_help(FILE *f, bool capabilities)
{
	for (size_t i = 0; i < kv_mig_n_options; i++) {
		const struct kv_mig_option *o = &kv_mig_options[i];
		char dflt[32], kind[32], range[64];

		if ((o->kind == KV_MIG_OPT_CAPABILITY) != capabilities)
			continue;
		kv_mig_option_format(o, o->dflt, dflt, sizeof(dflt));
		kv_mig_option_kind_text(o, kind, sizeof(kind));
		kv_mig_option_range_text(o, range, sizeof(range));
		if (capabilities)
			fprintf(f, "  %-26s %-4s %s\n", o->name, dflt, o->help);
		else
			fprintf(f, "  %-26s %s, %s, default %s (%s)\n      %s\n",
				o->name, kind, range, dflt,
				kv_mig_option_side_text(o), o->help);
	}
}
