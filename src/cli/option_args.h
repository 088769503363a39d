/* SPDX-License-Identifier: MIT */
/*
 * Migration capabilities and parameters on the command line, from the
 * options table (migration/options.h): `kvmig set NAME=VALUE`, `kvmig
 * memtest --NAME VALUE`, and the lists their --help prints.
 */
#ifndef KV_CLI_OPTION_ARGS_H
#define KV_CLI_OPTION_ARGS_H

#include <stdbool.h>
#include <stdio.h>

#include "base/error.h"
#include "migration/options.h"

/* VALUE as text: integers with their unit's suffixes (bytes and bytes/s:
 * K, M, G, T as in 64M or 1G; ms: 500 or 500ms or 2s; percent: 50 or
 * 50%), on/off/yes/no/true/false for booleans and capabilities, an enum's
 * value names. A parameter's range and values are checked; a capability's
 * support is not (that is the VM's to say: QEMU has more). 0, or -EINVAL
 * with err saying what o expects. */
int kv_cli_mig_value(const struct kv_mig_option *o, const char *text,
		     struct kv_mig_value *v, struct kv_error *err);

/* on/true/yes/1 or off/false/no/0. */
bool kv_cli_mig_parse_bool(const char *text, bool *out);

/* One line per capability (capabilities true) or parameter: name, kind,
 * default, range, help. */
void kv_cli_mig_options_help(FILE *f, bool capabilities);

#endif
