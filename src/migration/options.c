/* SPDX-License-Identifier: MIT */
/* The table of migration capabilities and parameters (options.h). */
#include "base/units.h"
#include "migration/options.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "migration/auto_converge.h"
#include "migration/codec/codec.h"
#include "migration/multifd/multifd.h"
#include "migration/ram/ram.h"

/* QMP integers are int64: "no upper bound" is the largest of those. */
#define NO_MAX ((uint64_t)INT64_MAX)

/* Enum fields are stored through an int. */
_Static_assert(sizeof(enum kv_mfd_method) == sizeof(int), "enum size");
_Static_assert(sizeof(enum kv_mfd_zero) == sizeof(int), "enum size");
_Static_assert(sizeof(enum kv_ram_compress) == sizeof(int), "enum size");

static const char *mfd_method_value(int v)
{
	return v >= 0 && v < KV_MFD_METHOD_COUNT
		   ? kv_mfd_method_name((enum kv_mfd_method)v)
		   : NULL;
}

static const char *mfd_zero_value(int v)
{
	return v >= 0 && v <= KV_MFD_ZERO_MULTIFD
		   ? kv_mfd_zero_name((enum kv_mfd_zero)v)
		   : NULL;
}

static const char *ram_compress_value(int v)
{
	return v >= 0 && v <= KV_RAM_COMPRESS_ALWAYS
		   ? kv_ram_compress_name((enum kv_ram_compress)v)
		   : NULL;
}

#define AT(field) offsetof(struct kv_mig_settings, field)

/* A capability kvmig does not implement yet: listed with QEMU's name,
 * false, refused when set true. */
#define CAP_NOT_YET(qmp_name)                                                 \
	{                                                                     \
		.name = qmp_name, .kind = KV_MIG_OPT_CAPABILITY, .min = 0,    \
		.max = 0, .sides = KV_MIG_SIDE_NONE,                          \
		.help = "not implemented yet", .store = KV_MIG_STORE_NONE,    \
	}

#define CAP(qmp_name, lo, hi, dflt_on, side, field, text)                     \
	{                                                                     \
		.name = qmp_name, .kind = KV_MIG_OPT_CAPABILITY, .min = lo,   \
		.max = hi, .dflt = dflt_on, .sides = side, .help = text,      \
		.store = KV_MIG_STORE_BOOL, .offset = AT(field),              \
	}

#define UINT(qmp_name, u, lo, hi, d, side, is_live, st, field, text)          \
	{                                                                     \
		.name = qmp_name, .kind = KV_MIG_OPT_UINT, .unit = u,         \
		.min = lo, .max = hi, .dflt = d, .sides = side,               \
		.live = is_live, .help = text, .store = st,                   \
		.offset = AT(field),                                          \
	}

#define STRING(qmp_name, size, side, field, text)                             \
	{                                                                     \
		.name = qmp_name, .kind = KV_MIG_OPT_STRING, .max = size,     \
		.sides = side, .help = text, .store = KV_MIG_STORE_STR,       \
		.offset = AT(field),                                          \
	}

#define ENUM(qmp_name, names, d, side, field, text)                           \
	{                                                                     \
		.name = qmp_name, .kind = KV_MIG_OPT_ENUM, .dflt = d,         \
		.value_name = names, .sides = side, .help = text,             \
		.store = KV_MIG_STORE_INT, .offset = AT(field),               \
	}

/*
 * Capabilities in QEMU's order (qapi/migration.json), then parameters in
 * the order query-migrate-parameters lists them. Ranges and defaults are
 * QEMU's where QEMU has the setting; kvmig's own carry QEMU's "x-" prefix.
 */
const struct kv_mig_option kv_mig_options[] = {
    CAP("xbzrle", 0, 1, false, KV_MIG_SIDE_SOURCE, xbzrle,
	"send a re-dirtied page that is cached as its delta against the copy sent before"),
    CAP_NOT_YET("rdma-pin-all"),
    CAP("auto-converge", 0, 1, false, KV_MIG_SIDE_SOURCE,
	params.auto_converge,
	"slow the vCPUs down when passes stop shrinking the dirty set"),
    CAP_NOT_YET("zero-blocks"),
    CAP("events", 0, 1, true, KV_MIG_SIDE_BOTH, events,
	"send the MIGRATION and MIGRATION_PASS events (QEMU's default is off)"),
    CAP("postcopy-ram", 0, 1, false, KV_MIG_SIDE_BOTH, params.postcopy_ram,
	"allow migrate-start-postcopy: the guest moves at once and pulls its missing pages; set it on the destination too"),
    CAP_NOT_YET("x-colo"),
    CAP_NOT_YET("release-ram"),
    CAP("return-path", 1, 1, true, KV_MIG_SIDE_BOTH, return_path,
	"kvmig always opens a return path on socket migrations (file: migrations have none)"),
    CAP_NOT_YET("pause-before-switchover"),
    CAP("multifd", 0, 1, false, KV_MIG_SIDE_BOTH, multifd,
	"send pages over multifd-channels extra connections, a thread each; set it on the destination too"),
    CAP_NOT_YET("dirty-bitmaps"),
    CAP("postcopy-blocktime", 0, 1, false, KV_MIG_SIDE_BOTH,
	params.postcopy_blocktime,
	"measure how long the destination's vCPUs wait for postcopy pages (query-migrate on the destination)"),
    CAP_NOT_YET("late-block-activate"),
    CAP_NOT_YET("x-ignore-shared"),
    CAP_NOT_YET("validate-uuid"),
    CAP("background-snapshot", 0, 1, false, KV_MIG_SIDE_SOURCE,
	params.background_snapshot,
	"migrate saves the guest's state at one moment while the guest runs on (userfaultfd write-protection); not with multifd, xbzrle, auto-converge, postcopy-ram, mapped-ram"),
    CAP_NOT_YET("zero-copy-send"),
    CAP("postcopy-preempt", 0, 1, false, KV_MIG_SIDE_BOTH,
	params.postcopy_preempt,
	"postcopy: requested pages on a connection and a thread of their own, never behind the background pages; set it on the destination too; not with multifd"),
    CAP_NOT_YET("switchover-ack"),
    CAP_NOT_YET("dirty-limit"),
    CAP("mapped-ram", 0, 1, false, KV_MIG_SIDE_BOTH, params.mapped_ram,
	"file: migrations give every page its own place in the file (QEMU's layout), written and read in parallel with multifd; set it on the destination too"),

    UINT("downtime-limit", KV_MIG_UNIT_MS, 0, 2000000, 300,
	 KV_MIG_SIDE_SOURCE, true, KV_MIG_STORE_U64, params.downtime_limit_ms,
	 "switch over once what is left fits in this time at the measured bandwidth"),
    UINT("max-bandwidth", KV_MIG_UNIT_BYTES_PER_SEC, 0, NO_MAX, 0,
	 KV_MIG_SIDE_SOURCE, true, KV_MIG_STORE_U64, params.max_bandwidth,
	 "cap on the bytes sent per second, multifd channels included (0: no limit)"),
    UINT("avail-switchover-bandwidth", KV_MIG_UNIT_BYTES_PER_SEC, 0, NO_MAX,
	 0, KV_MIG_SIDE_SOURCE, false, KV_MIG_STORE_U64,
	 params.avail_switchover_bw,
	 "bandwidth the switch-over rule assumes instead of the measured one (0: measured)"),
    UINT("x-converge-timeout", KV_MIG_UNIT_MS, 0, NO_MAX, 0,
	 KV_MIG_SIDE_SOURCE, false, KV_MIG_STORE_U64,
	 params.converge_timeout_ms,
	 "fail a migration that has not switched over after this long (0: never give up)"),
    UINT("x-return-path-timeout", KV_MIG_UNIT_MS, 1, 3600000, 30000,
	 KV_MIG_SIDE_SOURCE, false, KV_MIG_STORE_INT, params.rp_timeout_ms,
	 "how long the source waits for the destination's answer after the last byte"),
    UINT("x-connect-timeout", KV_MIG_UNIT_MS, 1, 3600000, 30000,
	 KV_MIG_SIDE_SOURCE, false, KV_MIG_STORE_U64,
	 params.connect_timeout_ms,
	 "how long a connect to the destination waits for an answer before the migration fails"),
    UINT("x-link-timeout", KV_MIG_UNIT_MS, 0, 3600000, 10000,
	 KV_MIG_SIDE_BOTH, false, KV_MIG_STORE_U64, params.link_timeout_ms,
	 "fail the migration when the other side showed no sign of life for this long, in any phase (0: never); set it on both sides"),
    UINT("xbzrle-cache-size", KV_MIG_UNIT_BYTES, KV_PAGE_SIZE, NO_MAX, 64 * KV_MiB,
	 KV_MIG_SIDE_SOURCE, false, KV_MIG_STORE_U64, xbzrle_cache_size,
	 "xbzrle's cache of pages sent, rounded down to a power of two"),
    UINT("multifd-channels", KV_MIG_UNIT_COUNT, 1, 255, 2, KV_MIG_SIDE_BOTH,
	 false, KV_MIG_STORE_UNSIGNED, multifd_channels,
	 "extra connections for pages with multifd; the same number on both sides"),
    ENUM("multifd-compression", mfd_method_value, KV_MFD_METHOD_NONE,
	 KV_MIG_SIDE_BOTH, params.multifd_method,
	 "how multifd compresses pages (lz4 is kvmig's); the same on both sides"),
    UINT("multifd-zlib-level", KV_MIG_UNIT_COUNT, 0, KV_MFD_ZLIB_LEVEL_MAX, 1,
	 KV_MIG_SIDE_SOURCE, false, KV_MIG_STORE_UNSIGNED, multifd_zlib_level,
	 "zlib's level with multifd-compression zlib"),
    UINT("multifd-zstd-level", KV_MIG_UNIT_COUNT, 0, KV_MFD_ZSTD_LEVEL_MAX, 1,
	 KV_MIG_SIDE_SOURCE, false, KV_MIG_STORE_UNSIGNED, multifd_zstd_level,
	 "zstd's level with multifd-compression zstd"),
    ENUM("zero-page-detection", mfd_zero_value, KV_MFD_ZERO_MULTIFD,
	 KV_MIG_SIDE_SOURCE, params.zero_page_detection,
	 "who finds zero pages: nobody, the migration thread (legacy) or the multifd channel threads"),
    {
	.name = "direct-io",
	.kind = KV_MIG_OPT_BOOL,
	.max = 1,
	.sides = KV_MIG_SIDE_BOTH,
	.help = "with mapped-ram, pages go to and come from the file with O_DIRECT (not through the page cache)",
	.store = KV_MIG_STORE_BOOL,
	.offset = AT(params.direct_io),
    },
    UINT("cpu-throttle-initial", KV_MIG_UNIT_PERCENT, 1, 99,
	 KV_AUTOCONV_DEFAULT_INITIAL, KV_MIG_SIDE_SOURCE, false,
	 KV_MIG_STORE_UNSIGNED, params.throttle.initial,
	 "auto-converge's first throttle step"),
    UINT("cpu-throttle-increment", KV_MIG_UNIT_PERCENT, 1, 100,
	 KV_AUTOCONV_DEFAULT_INCREMENT, KV_MIG_SIDE_SOURCE, false,
	 KV_MIG_STORE_UNSIGNED, params.throttle.increment,
	 "auto-converge's further throttle steps"),
    {
	.name = "cpu-throttle-tailslow",
	.kind = KV_MIG_OPT_BOOL,
	.max = 1,
	.sides = KV_MIG_SIDE_SOURCE,
	.help = "auto-converge steps no further than the dirty rate calls for",
	.store = KV_MIG_STORE_BOOL,
	.offset = AT(params.throttle.tailslow),
    },
    UINT("max-cpu-throttle", KV_MIG_UNIT_PERCENT, 1, 99,
	 KV_AUTOCONV_DEFAULT_MAX, KV_MIG_SIDE_SOURCE, false,
	 KV_MIG_STORE_UNSIGNED, params.throttle.max,
	 "auto-converge's highest throttle"),
    UINT("throttle-trigger-threshold", KV_MIG_UNIT_PERCENT, 1, 100,
	 KV_AUTOCONV_DEFAULT_THRESHOLD, KV_MIG_SIDE_SOURCE, false,
	 KV_MIG_STORE_UNSIGNED, params.throttle.trigger_threshold,
	 "a pass that dirtied more than this share of what it sent counts towards throttling"),
    STRING("tls-creds", sizeof(((struct kv_mig_tls *)0)->creds),
	   KV_MIG_SIDE_BOTH, params.tls.creds,
	   "id of a tls-creds-x509 or tls-creds-psk --object: every channel of the migration is TLS (empty: none)"),
    STRING("tls-hostname", sizeof(((struct kv_mig_tls *)0)->hostname),
	   KV_MIG_SIDE_SOURCE, params.tls.hostname,
	   "the host name the destination's certificate must carry (empty: the URI's host)"),
    STRING("tls-authz", sizeof(((struct kv_mig_tls *)0)->authz),
	   KV_MIG_SIDE_DESTINATION, params.tls.authz,
	   "id of an authz-simple or authz-list --object: which sources may connect (empty: any with valid credentials)"),
    ENUM("x-compress", ram_compress_value, KV_RAM_COMPRESS_AUTO,
	 KV_MIG_SIDE_SOURCE, params.compress,
	 "zstd on the main stream: auto while the link is the bottleneck and it pays, always, or off"),
    {
	.name = "x-postcopy-auto",
	.kind = KV_MIG_OPT_BOOL,
	.max = 1,
	.sides = KV_MIG_SIDE_SOURCE,
	.help = "with postcopy-ram, switch to postcopy by itself when precopy will not converge within the downtime limit",
	.store = KV_MIG_STORE_BOOL,
	.offset = AT(params.postcopy_auto),
    },
};

const size_t kv_mig_n_options =
    sizeof(kv_mig_options) / sizeof(kv_mig_options[0]);

const struct kv_mig_option *kv_mig_option_find(const char *name)
{
	for (size_t i = 0; i < kv_mig_n_options; i++)
		if (!strcmp(kv_mig_options[i].name, name))
			return &kv_mig_options[i];
	return NULL;
}

const struct kv_mig_option *kv_mig_param_find(const char *name)
{
	const struct kv_mig_option *o = kv_mig_option_find(name);

	return o && o->kind != KV_MIG_OPT_CAPABILITY ? o : NULL;
}

const struct kv_mig_option *kv_mig_cap_find(const char *name)
{
	const struct kv_mig_option *o = kv_mig_option_find(name);

	return o && o->kind == KV_MIG_OPT_CAPABILITY ? o : NULL;
}

/* ---- storage ---- */

void kv_mig_option_set(const struct kv_mig_option *o, struct kv_mig_settings *s,
		       const struct kv_mig_value *v)
{
	char *at = (char *)s + o->offset;

	switch (o->store) {
	case KV_MIG_STORE_NONE:
		break;
	case KV_MIG_STORE_BOOL:
		*(bool *)at = v->u != 0;
		break;
	case KV_MIG_STORE_U64:
		*(uint64_t *)at = v->u;
		break;
	case KV_MIG_STORE_UNSIGNED:
		*(unsigned *)at = (unsigned)v->u;
		break;
	case KV_MIG_STORE_INT:
		*(int *)at = (int)v->u;
		break;
	case KV_MIG_STORE_STR:
		snprintf(at, o->max, "%s", v->s);
		break;
	}
}

void kv_mig_option_get(const struct kv_mig_option *o,
		       const struct kv_mig_settings *s, struct kv_mig_value *v)
{
	const char *at = (const char *)s + o->offset;

	switch (o->store) {
	case KV_MIG_STORE_NONE:
		v->u = 0;
		break;
	case KV_MIG_STORE_BOOL:
		v->u = *(const bool *)at;
		break;
	case KV_MIG_STORE_U64:
		v->u = *(const uint64_t *)at;
		break;
	case KV_MIG_STORE_UNSIGNED:
		v->u = *(const unsigned *)at;
		break;
	case KV_MIG_STORE_INT:
		v->u = (uint64_t)*(const int *)at;
		break;
	case KV_MIG_STORE_STR:
		v->u = 0;
		snprintf(v->s, sizeof(v->s), "%s", at);
		break;
	}
}

void kv_mig_settings_default(struct kv_mig_settings *s)
{
	memset(s, 0, sizeof(*s));
	for (size_t i = 0; i < kv_mig_n_options; i++) {
		struct kv_mig_value v = {.u = kv_mig_options[i].dflt};

		kv_mig_option_set(&kv_mig_options[i], s, &v);
	}
	/* Not a client's setting: the engine's own bound. */
	s->params.extra_pass_time_pct = KV_MIG_EXTRA_PASS_TIME_PCT;
}

void kv_mig_settings_params(const struct kv_mig_settings *s,
			    struct kv_mig_params *p)
{
	*p = s->params;
	p->xbzrle_cache_size = s->xbzrle ? s->xbzrle_cache_size : 0;
	p->multifd_channels = s->multifd ? s->multifd_channels : 0;
	switch (p->multifd_method) {
	case KV_MFD_METHOD_ZLIB:
		p->multifd_level = (int)s->multifd_zlib_level;
		break;
	case KV_MFD_METHOD_ZSTD:
		p->multifd_level = (int)s->multifd_zstd_level;
		break;
	default:
		p->multifd_level = KV_MFD_LEVEL_DEFAULT;
		break;
	}
}

/* ---- checks ---- */

static const char *unit_words(enum kv_mig_opt_unit u)
{
	switch (u) {
	case KV_MIG_UNIT_MS:
		return " milliseconds";
	case KV_MIG_UNIT_BYTES:
		return " bytes";
	case KV_MIG_UNIT_BYTES_PER_SEC:
		return " bytes per second";
	case KV_MIG_UNIT_PERCENT:
		return " percent";
	case KV_MIG_UNIT_NONE:
	case KV_MIG_UNIT_COUNT:
		break;
	}
	return "";
}

static void enum_values_text(const struct kv_mig_option *o, const char *quote,
			     const char *sep, char *buf, size_t len)
{
	size_t n = 0;

	buf[0] = '\0';
	for (int i = 0; o->value_name(i) && n < len; i++)
		n += (size_t)snprintf(buf + n, len - n, "%s%s%s%s",
				      i ? sep : "", quote, o->value_name(i),
				      quote);
}

static int uint_refused(const struct kv_mig_option *o, struct kv_error *err)
{
	if (o->max == NO_MAX && o->min == 0)
		return kv_error_set(err, -EINVAL, "Parameter '%s' expects a non-negative integer (%s)", o->name, unit_words(o->unit) + 1);
	if (o->max == NO_MAX)
		return kv_error_set(err, -EINVAL, "Parameter '%s' expects an integer of at least %" PRIu64 "%s", o->name, o->min, unit_words(o->unit));
	return kv_error_set(err, -EINVAL, "Parameter '%s' expects an integer in the range of %" PRIu64 " to %" PRIu64 "%s", o->name, o->min, o->max, unit_words(o->unit));
}

static int cap_check(const struct kv_mig_option *o, bool on,
		     struct kv_error *err)
{
	if (on && o->max == 0)
		return kv_error_set(err, -ENOTSUP, "Capability '%s' is not supported by kvmig yet", o->name);
	if (!on && o->min == 1)
		return kv_error_set(err, -ENOTSUP, "Capability '%s' cannot be turned off: %s", o->name, o->help);
	return 0;
}

int kv_mig_option_check(const struct kv_mig_option *o,
			const struct kv_mig_value *v, struct kv_error *err)
{
	char values[128];

	switch (o->kind) {
	case KV_MIG_OPT_CAPABILITY:
		return cap_check(o, v->u != 0, err);
	case KV_MIG_OPT_UINT:
		return v->u < o->min || v->u > o->max ? uint_refused(o, err) : 0;
	case KV_MIG_OPT_BOOL:
		return v->u > 1 ? kv_error_set(err, -EINVAL, "Parameter '%s' expects a boolean", o->name) : 0;
	case KV_MIG_OPT_ENUM:
		if (v->u <= INT32_MAX && o->value_name((int)v->u))
			return 0;
		enum_values_text(o, "'", ", ", values, sizeof(values));
		return kv_error_set(err, -EINVAL, "Parameter '%s' expects one of %s", o->name, values);
	case KV_MIG_OPT_STRING:
		if (strnlen(v->s, sizeof(v->s)) < o->max)
			return 0;
		return kv_error_set(err, -EINVAL, "Parameter '%s' expects a string shorter than %" PRIu64 " bytes", o->name, o->max);
	}
	return kv_error_set(err, -EINVAL, "Parameter '%s' has no kind", o->name);
}

int kv_mig_option_enum_parse(const struct kv_mig_option *o, const char *name,
			     struct kv_mig_value *v, struct kv_error *err)
{
	char values[128];

	for (int i = 0; o->value_name(i); i++)
		if (!strcmp(o->value_name(i), name)) {
			v->u = (uint64_t)i;
			return 0;
		}
	enum_values_text(o, "'", ", ", values, sizeof(values));
	return kv_error_set(err, -EINVAL, "Parameter '%s' expects one of %s", o->name, values);
}

const char *kv_mig_option_enum_name(const struct kv_mig_option *o, uint64_t v)
{
	const char *name = v <= INT32_MAX ? o->value_name((int)v) : NULL;

	return name ? name : "?";
}

/* ---- text for people ---- */

static void format_bytes(uint64_t v, char *buf, size_t len)
{
	static const char suffix[] = "KMGT";
	int i = -1;

	while (v && i < 3 && v % 1024 == 0) {
		v /= 1024;
		i++;
	}
	if (i < 0)
		snprintf(buf, len, "%" PRIu64, v);
	else
		snprintf(buf, len, "%" PRIu64 "%c", v, suffix[i]);
}

void kv_mig_option_format(const struct kv_mig_option *o, uint64_t v,
			  char *buf, size_t len)
{
	switch (o->kind) {
	case KV_MIG_OPT_CAPABILITY:
	case KV_MIG_OPT_BOOL:
		snprintf(buf, len, "%s", v ? "on" : "off");
		return;
	case KV_MIG_OPT_ENUM:
		snprintf(buf, len, "%s", kv_mig_option_enum_name(o, v));
		return;
	case KV_MIG_OPT_STRING:
		/* Only the default is ever formatted from a number. */
		snprintf(buf, len, "\"\"");
		return;
	case KV_MIG_OPT_UINT:
		break;
	}
	if (o->unit == KV_MIG_UNIT_BYTES || o->unit == KV_MIG_UNIT_BYTES_PER_SEC)
		format_bytes(v, buf, len);
	else
		snprintf(buf, len, "%" PRIu64, v);
}

void kv_mig_option_kind_text(const struct kv_mig_option *o, char *buf,
			     size_t len)
{
	static const char *const units[] = {
	    [KV_MIG_UNIT_NONE] = "integer",
	    [KV_MIG_UNIT_MS] = "ms",
	    [KV_MIG_UNIT_BYTES] = "bytes",
	    [KV_MIG_UNIT_BYTES_PER_SEC] = "bytes/s",
	    [KV_MIG_UNIT_PERCENT] = "percent",
	    [KV_MIG_UNIT_COUNT] = "integer",
	};

	switch (o->kind) {
	case KV_MIG_OPT_CAPABILITY:
		snprintf(buf, len, "capability");
		return;
	case KV_MIG_OPT_BOOL:
		snprintf(buf, len, "bool");
		return;
	case KV_MIG_OPT_ENUM:
		snprintf(buf, len, "enum");
		return;
	case KV_MIG_OPT_STRING:
		snprintf(buf, len, "string");
		return;
	case KV_MIG_OPT_UINT:
		snprintf(buf, len, "%s", units[o->unit]);
		return;
	}
}

void kv_mig_option_range_text(const struct kv_mig_option *o, char *buf,
			      size_t len)
{
	switch (o->kind) {
	case KV_MIG_OPT_CAPABILITY:
		snprintf(buf, len, "%s",
			 o->max == 0   ? "off (not implemented yet)"
			 : o->min == 1 ? "on (always)"
				       : "on / off");
		return;
	case KV_MIG_OPT_BOOL:
		snprintf(buf, len, "on / off");
		return;
	case KV_MIG_OPT_ENUM:
		enum_values_text(o, "", " / ", buf, len);
		return;
	case KV_MIG_OPT_STRING:
		snprintf(buf, len, "< %" PRIu64 " bytes", o->max);
		return;
	case KV_MIG_OPT_UINT:
		if (o->max == NO_MAX)
			snprintf(buf, len, ">= %" PRIu64, o->min);
		else
			snprintf(buf, len, "%" PRIu64 "..%" PRIu64, o->min,
				 o->max);
		return;
	}
}

const char *kv_mig_option_side_text(const struct kv_mig_option *o)
{
	switch (o->sides) {
	case KV_MIG_SIDE_SOURCE:
		return "source";
	case KV_MIG_SIDE_DESTINATION:
		return "destination";
	case KV_MIG_SIDE_BOTH:
		return "both";
	default:
		return "-";
	}
}
