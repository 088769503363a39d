/* SPDX-License-Identifier: MIT */
/*
 * Migration capabilities and parameters: ONE const table (options.c), one
 * row each, with QEMU's QMP names. Everything that sets, shows, checks or
 * documents them reads this table:
 *   QMP migrate-set-* / query-migrate-*   monitor/qmp_migration.c
 *   `kvmig set` (values, units, help)     cli/ctl.c via cli/option_args.c
 *   `kvmig memtest`'s migration options   cli/memtest.c (same checks)
 *   kv_mig_params_default                 migration.c (the defaults)
 *   README.md's table                     tests/unit/test_options.c fails
 *                                         when the two disagree
 *
 * A row says what a value is (kind, unit, range, enum values), its default,
 * which side it acts on, whether a change reaches a migration in progress,
 * its help text, and where it lives in struct kv_mig_settings. Adding a
 * parameter is one row (plus the field it lives in) and its use.
 *
 * Values are kept as clients set them (struct kv_mig_settings); what a
 * migration gets is derived from them in one place
 * (kv_mig_settings_params: a capability that is off turns its parameters'
 * effect off, the multifd level follows the compression method).
 *
 * No locking here: the owner of a struct kv_mig_settings serializes.
 */
#ifndef KV_MIGRATION_OPTIONS_H
#define KV_MIGRATION_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "migration/migration.h"

enum kv_mig_opt_kind {
	KV_MIG_OPT_CAPABILITY, /* migrate-set-capabilities: a bool */
	KV_MIG_OPT_UINT,       /* an integer in [min, max] */
	KV_MIG_OPT_BOOL,
	KV_MIG_OPT_ENUM,       /* one of value_name(0), value_name(1), ... */
	KV_MIG_OPT_STRING,     /* text of fewer than max bytes, default "" */
};

enum kv_mig_opt_unit {
	KV_MIG_UNIT_NONE,
	KV_MIG_UNIT_MS,
	KV_MIG_UNIT_BYTES,
	KV_MIG_UNIT_BYTES_PER_SEC,
	KV_MIG_UNIT_PERCENT,
	KV_MIG_UNIT_COUNT, /* a number of things (channels, a level) */
};

/* Which side(s) of a migration a setting acts on (a bitmask). */
enum kv_mig_opt_side {
	KV_MIG_SIDE_NONE = 0, /* not implemented: acts nowhere yet */
	KV_MIG_SIDE_SOURCE = 1,
	KV_MIG_SIDE_DESTINATION = 2,
	KV_MIG_SIDE_BOTH = 3,
};

/* How the value is stored at the row's offset. */
enum kv_mig_opt_store {
	KV_MIG_STORE_NONE, /* nowhere: an unimplemented capability */
	KV_MIG_STORE_BOOL,
	KV_MIG_STORE_U64,
	KV_MIG_STORE_UNSIGNED,
	KV_MIG_STORE_INT, /* also every enum field */
	KV_MIG_STORE_STR, /* a char[max] */
};

/* Every setting QMP shows, as clients set them. params holds those the
 * engine takes as they are; the other fields are kept even while their
 * capability is off (QEMU shows xbzrle-cache-size with xbzrle off). */
struct kv_mig_settings {
	struct kv_mig_params params;
	bool events;
	bool return_path;
	bool xbzrle;
	bool multifd;
	uint64_t xbzrle_cache_size;
	unsigned multifd_channels;
	unsigned multifd_zlib_level;
	unsigned multifd_zstd_level;
};

/* The longest STRING value's buffer (a row's max is at most this). */
#define KV_MIG_STR_MAX 256

/* One value, whatever the kind: u for UINT, BOOL and CAPABILITY (0/1),
 * the enum's value for ENUM; s for STRING. */
struct kv_mig_value {
	uint64_t u;
	char s[KV_MIG_STR_MAX];
};

struct kv_mig_option {
	const char *name; /* QMP name */
	enum kv_mig_opt_kind kind;
	enum kv_mig_opt_unit unit;
	/* UINT: the range. CAPABILITY: 0..0 not implemented yet (only
	 * false), 1..1 always on (only true), 0..1 settable. STRING: max
	 * is the size of its buffer. */
	uint64_t min, max;
	uint64_t dflt;
	/* ENUM: the name of value v, NULL past the last one. */
	const char *(*value_name)(int v);
	unsigned sides; /* enum kv_mig_opt_side */
	bool live;	/* a change reaches a migration in progress */
	const char *help;
	enum kv_mig_opt_store store;
	size_t offset; /* in struct kv_mig_settings */
};

extern const struct kv_mig_option kv_mig_options[];
extern const size_t kv_mig_n_options;

/* The row named name, or NULL. */
const struct kv_mig_option *kv_mig_option_find(const char *name);
/* The row of a parameter (not a capability) named name, or NULL; same
 * for a capability. */
const struct kv_mig_option *kv_mig_param_find(const char *name);
const struct kv_mig_option *kv_mig_cap_find(const char *name);

/* Every row's default. */
void kv_mig_settings_default(struct kv_mig_settings *s);
/* What a migration gets from s (see the file comment). */
void kv_mig_settings_params(const struct kv_mig_settings *s,
			    struct kv_mig_params *p);

/* Can o take v? 0, or -EINVAL (-ENOTSUP for a capability kvmig cannot
 * honour) with a message naming o and what it expects. */
int kv_mig_option_check(const struct kv_mig_option *o,
			const struct kv_mig_value *v, struct kv_error *err);
/* Store a checked value; read one. */
void kv_mig_option_set(const struct kv_mig_option *o, struct kv_mig_settings *s,
		       const struct kv_mig_value *v);
void kv_mig_option_get(const struct kv_mig_option *o,
		       const struct kv_mig_settings *s, struct kv_mig_value *v);

/* ENUM: the value named name; -EINVAL with err listing the values. */
int kv_mig_option_enum_parse(const struct kv_mig_option *o, const char *name,
			     struct kv_mig_value *v, struct kv_error *err);
const char *kv_mig_option_enum_name(const struct kv_mig_option *o,
				    uint64_t v);

/* Text for people (help, README): a value as `kvmig set` takes it
 * ("300", "64M", "on", "zstd"); the kind ("milliseconds", "bytes",
 * "none / zlib / zstd / lz4", ...); the range ("0..2000000", "any");
 * the side ("source", "destination", "both", "-"). */
void kv_mig_option_format(const struct kv_mig_option *o, uint64_t v,
			  char *buf, size_t len);
void kv_mig_option_kind_text(const struct kv_mig_option *o, char *buf,
			     size_t len);
void kv_mig_option_range_text(const struct kv_mig_option *o, char *buf,
			      size_t len);
const char *kv_mig_option_side_text(const struct kv_mig_option *o);

#endif
