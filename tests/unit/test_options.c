/* SPDX-License-Identifier: MIT */
/*
 * The options table (migration/options.c) and everything driven by it:
 * the generic check / set / get, the defaults, what a migration gets from
 * the settings, the QMP apply and query (monitor/qmp_migration.c), the
 * command-line values (cli/option_args.c), and README.md's table, which
 * must say what the table says (KVMIG_README names the file). Also the
 * run state's table (vmm/runstate.c).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "cli/option_args.h"
#include "migration/codec/codec.h"
#include "migration/options.h"
#include "monitor/qmp_internal.h"
#include "vmm/runstate.h"

static const struct kv_mig_option *row(const char *name)
{
	const struct kv_mig_option *o = kv_mig_option_find(name);

	if (!o)
		fail_msg("no row named %s", name);
	return o;
}

/* ---- the table itself ---- */

static void test_rows_are_whole(void **state)
{
	(void)state;
	assert_true(kv_mig_n_options > 30);
	for (size_t i = 0; i < kv_mig_n_options; i++) {
		const struct kv_mig_option *o = &kv_mig_options[i];
		struct kv_mig_value d = {.u = o->dflt};
		struct kv_error err = {0};

		assert_true(o->help && o->help[0]);
		assert_ptr_equal(kv_mig_option_find(o->name), o);
		if (o->kind == KV_MIG_OPT_ENUM)
			assert_non_null(o->value_name);
		if (o->store != KV_MIG_STORE_NONE)
			assert_true(o->offset < sizeof(struct kv_mig_settings));
		else
			assert_int_equal(o->kind, KV_MIG_OPT_CAPABILITY);
		/* Every default passes its own row's check. */
		if (kv_mig_option_check(o, &d, &err) < 0)
			fail_msg("%s: default refused: %s", o->name, err.msg);
	}
	assert_null(kv_mig_option_find("warp-drive"));
	assert_null(kv_mig_param_find("xbzrle"));
	assert_null(kv_mig_cap_find("downtime-limit"));
}

static void test_defaults(void **state)
{
	struct kv_mig_settings s;
	struct kv_mig_params p;

	(void)state;
	kv_mig_settings_default(&s);
	for (size_t i = 0; i < kv_mig_n_options; i++) {
		struct kv_mig_value v;

		kv_mig_option_get(&kv_mig_options[i], &s, &v);
		assert_int_equal(v.u, kv_mig_options[i].dflt);
	}
	/* The engine's defaults are the table's. */
	kv_mig_params_default(&p);
	assert_int_equal(p.downtime_limit_ms, 300);
	assert_int_equal(p.rp_timeout_ms, 30000);
	assert_int_equal(p.link_timeout_ms, 10000); /* x-link-timeout */
	assert_int_equal(p.xbzrle_cache_size, 0); /* capability off */
	assert_int_equal(p.multifd_channels, 0);
	assert_int_equal(p.multifd_level, KV_MFD_LEVEL_DEFAULT);
	assert_int_equal(p.compress, KV_RAM_COMPRESS_AUTO);
	assert_int_equal(p.throttle.initial, 20);
	assert_int_equal(p.throttle.max, 99);
	assert_false(p.auto_converge);
	assert_int_equal(p.extra_pass_time_pct, KV_MIG_EXTRA_PASS_TIME_PCT);
	assert_true(s.events && s.return_path && !s.xbzrle && !s.multifd);
}

/* A capability that is off turns its parameters' effect off; the multifd
 * level follows the compression method. */
static void test_settings_to_params(void **state)
{
	struct kv_mig_settings s;
	struct kv_mig_params p;

	(void)state;
	kv_mig_settings_default(&s);
	s.xbzrle_cache_size = 1 << 20;
	s.multifd_channels = 4;
	s.multifd_zlib_level = 6;
	s.multifd_zstd_level = 3;
	s.params.multifd_method = KV_MFD_METHOD_ZSTD;
	kv_mig_settings_params(&s, &p);
	assert_int_equal(p.xbzrle_cache_size, 0);
	assert_int_equal(p.multifd_channels, 0);
	assert_int_equal(p.multifd_level, 3);
	s.xbzrle = s.multifd = true;
	s.params.multifd_method = KV_MFD_METHOD_ZLIB;
	kv_mig_settings_params(&s, &p);
	assert_int_equal(p.xbzrle_cache_size, 1 << 20);
	assert_int_equal(p.multifd_channels, 4);
	assert_int_equal(p.multifd_level, 6);
	s.params.multifd_method = KV_MFD_METHOD_LZ4;
	kv_mig_settings_params(&s, &p);
	assert_int_equal(p.multifd_level, KV_MFD_LEVEL_DEFAULT);
}

static void want_check(const char *name, uint64_t u, int want,
			 const char *msg)
{
	struct kv_mig_value v = {.u = u};
	struct kv_error err = {0};

	assert_int_equal(kv_mig_option_check(row(name), &v, &err), want);
	if (msg && strcmp(err.msg, msg))
		fail_msg("%s=%llu: got '%s', want '%s'", name,
			 (unsigned long long)u, err.msg, msg);
}

static void test_check(void **state)
{
	(void)state;
	want_check("downtime-limit", 2000000, 0, NULL);
	want_check("downtime-limit", 2000001, -EINVAL, "Parameter 'downtime-limit' expects an integer in the range of 0 to 2000000 milliseconds");
	want_check("x-return-path-timeout", 0, -EINVAL, NULL);
	want_check("xbzrle-cache-size", 4095, -EINVAL, "Parameter 'xbzrle-cache-size' expects an integer of at least 4096 bytes");
	want_check("max-bandwidth", UINT64_MAX, -EINVAL, "Parameter 'max-bandwidth' expects a non-negative integer (bytes per second)");
	want_check("multifd-compression", KV_MFD_METHOD_COUNT, -EINVAL, "Parameter 'multifd-compression' expects one of 'none', 'zlib', 'zstd', 'lz4'");
	want_check("cpu-throttle-tailslow", 2, -EINVAL, "Parameter 'cpu-throttle-tailslow' expects a boolean");
	want_check("x-colo", 1, -ENOTSUP, "Capability 'x-colo' is not supported by kvmig yet");
	want_check("x-colo", 0, 0, NULL);
	want_check("return-path", 0, -ENOTSUP, NULL);
	want_check("return-path", 1, 0, NULL);
	want_check("xbzrle", 1, 0, NULL);
}

static void test_set_get_every_store(void **state)
{
	struct kv_mig_settings s;
	struct kv_mig_value v = {0};

	(void)state;
	kv_mig_settings_default(&s);
	v.u = 77;
	kv_mig_option_set(row("downtime-limit"), &s, &v); /* u64 */
	kv_mig_option_set(row("x-return-path-timeout"), &s, &v); /* int */
	kv_mig_option_set(row("x-link-timeout"), &s, &v);
	kv_mig_option_set(row("cpu-throttle-initial"), &s, &v); /* unsigned */
	v.u = KV_RAM_COMPRESS_ALWAYS;
	kv_mig_option_set(row("x-compress"), &s, &v); /* enum */
	v.u = 1;
	kv_mig_option_set(row("auto-converge"), &s, &v); /* bool */
	kv_mig_option_set(row("x-colo"), &s, &v); /* nowhere */
	assert_int_equal(s.params.downtime_limit_ms, 77);
	assert_int_equal(s.params.rp_timeout_ms, 77);
	assert_int_equal(s.params.link_timeout_ms, 77);
	assert_int_equal(s.params.throttle.initial, 77);
	assert_int_equal(s.params.compress, KV_RAM_COMPRESS_ALWAYS);
	assert_true(s.params.auto_converge);
	kv_mig_option_get(row("x-colo"), &s, &v);
	assert_int_equal(v.u, 0);
	kv_mig_option_get(row("x-return-path-timeout"), &s, &v);
	assert_int_equal(v.u, 77);
}

/* ---- QMP: apply and query, all or nothing ---- */

static int apply_params(struct kv_mig_settings *s, const char *json,
			struct kv_error *err)
{
	json_t *args = json_loads(json, 0, NULL);
	int ret;

	assert_non_null(args);
	kv_error_clear(err);
	ret = kv_qmp_mig_apply_params(s, args, err);
	json_decref(args);
	return ret;
}

static void expect_params_refused(struct kv_mig_settings *s, const char *json,
				  const char *msg)
{
	struct kv_mig_settings before = *s;
	struct kv_error err = {0};

	assert_true(apply_params(s, json, &err) < 0);
	if (strcmp(err.msg, msg))
		fail_msg("%s: got '%s', want '%s'", json, err.msg, msg);
	assert_memory_equal(&before, s, sizeof(before));
}

static void test_qmp_params(void **state)
{
	struct kv_mig_settings s;
	struct kv_error err = {0};
	json_t *q;

	(void)state;
	kv_mig_settings_default(&s);
	assert_int_equal(apply_params(&s, "{\"downtime-limit\": 40, \"multifd-compression\": \"zstd\", \"cpu-throttle-tailslow\": true, \"xbzrle-cache-size\": 8192}", &err), 0);
	q = kv_qmp_mig_query_params(&s);
	assert_int_equal(json_integer_value(json_object_get(q, "downtime-limit")), 40);
	assert_string_equal(json_string_value(json_object_get(q, "multifd-compression")), "zstd");
	assert_true(json_is_true(json_object_get(q, "cpu-throttle-tailslow")));
	assert_int_equal(json_integer_value(json_object_get(q, "xbzrle-cache-size")), 8192);
	assert_string_equal(json_string_value(json_object_get(q, "x-compress")), "auto");
	/* every parameter, no capability */
	for (size_t i = 0; i < kv_mig_n_options; i++)
		if (kv_mig_options[i].kind != KV_MIG_OPT_CAPABILITY)
			assert_non_null(json_object_get(q, kv_mig_options[i].name));
	assert_null(json_object_get(q, "xbzrle"));
	json_decref(q);

	/* Each refusal names the parameter; a good value beside a bad one
	 * is not applied either. */
	expect_params_refused(&s, "{\"downtime-limit\": 10, \"max-bandwidth\": -1}", "Parameter 'max-bandwidth' expects a non-negative integer (bytes per second)");
	expect_params_refused(&s, "{\"downtime-limit\": 10, \"multifd-channels\": 256}", "Parameter 'multifd-channels' expects an integer in the range of 1 to 255");
	expect_params_refused(&s, "{\"downtime-limit\": \"10\"}", "Invalid parameter type for 'downtime-limit', expected: integer");
	expect_params_refused(&s, "{\"x-compress\": true}", "Invalid parameter type for 'x-compress', expected: string");
	expect_params_refused(&s, "{\"cpu-throttle-tailslow\": 1}", "Invalid parameter type for 'cpu-throttle-tailslow', expected: boolean");
	expect_params_refused(&s, "{\"zero-page-detection\": \"some\"}", "Parameter 'zero-page-detection' expects one of 'none', 'legacy', 'multifd'");
	expect_params_refused(&s, "{\"downtime-limit\": 10, \"x-nope\": 1}", "Parameter 'x-nope' is unexpected");
	/* capabilities are not parameters */
	expect_params_refused(&s, "{\"xbzrle\": true}", "Parameter 'xbzrle' is unexpected");
	/* types are checked before names, names before values (QEMU) */
	expect_params_refused(&s, "{\"x-nope\": 1, \"downtime-limit\": -4, \"max-bandwidth\": \"x\"}", "Invalid parameter type for 'max-bandwidth', expected: integer");
	expect_params_refused(&s, "{\"x-nope\": 1, \"downtime-limit\": -4}", "Parameter 'x-nope' is unexpected");
}

static int apply_caps(struct kv_mig_settings *s, const char *json,
		      struct kv_error *err)
{
	json_t *list = json_loads(json, 0, NULL);
	int ret;

	assert_non_null(list);
	kv_error_clear(err);
	ret = kv_qmp_mig_apply_caps(s, list, err);
	json_decref(list);
	return ret;
}

static void test_qmp_caps(void **state)
{
	struct kv_mig_settings s, before;
	struct kv_error err = {0};
	json_t *q;
	size_t n = 0;

	(void)state;
	kv_mig_settings_default(&s);
	assert_int_equal(apply_caps(&s, "[{\"capability\": \"multifd\", \"state\": true}, {\"capability\": \"events\", \"state\": false}]", &err), 0);
	assert_true(s.multifd);
	assert_false(s.events);
	before = s;
	assert_int_equal(apply_caps(&s, "[{\"capability\": \"xbzrle\", \"state\": true}, {\"capability\": \"x-colo\", \"state\": true}]", &err), -ENOTSUP);
	assert_string_equal(err.msg, "Capability 'x-colo' is not supported by kvmig yet");
	assert_int_equal(apply_caps(&s, "[{\"capability\": \"xbzrle\", \"state\": true}, {\"capability\": \"return-path\", \"state\": false}]", &err), -ENOTSUP);
	assert_non_null(strstr(err.msg, "Capability 'return-path' cannot be turned off: "));
	assert_int_equal(apply_caps(&s, "[{\"capability\": \"xbzrle\", \"state\": true}, {\"capability\": \"max-bandwidth\", \"state\": true}]", &err), -EINVAL);
	assert_string_equal(err.msg, "Parameter 'capabilities[1].capability' does not accept value 'max-bandwidth'");
	assert_memory_equal(&before, &s, sizeof(s));

	q = kv_qmp_mig_query_caps(&s);
	for (size_t i = 0; i < kv_mig_n_options; i++) {
		const struct kv_mig_option *o = &kv_mig_options[i];
		json_t *el;

		if (o->kind != KV_MIG_OPT_CAPABILITY)
			continue;
		/* In the table's order, QEMU's names. */
		el = json_array_get(q, n++);
		assert_string_equal(json_string_value(json_object_get(el, "capability")), o->name);
		assert_int_equal(json_is_true(json_object_get(el, "state")), !strcmp(o->name, "multifd") || !strcmp(o->name, "return-path"));
	}
	assert_int_equal(json_array_size(q), n);
	json_decref(q);
}

/* ---- the command line ---- */

static void expect_text(const char *name, const char *text, int want,
			uint64_t u)
{
	struct kv_mig_value v = {0};
	struct kv_error err = {0};

	assert_int_equal(kv_cli_mig_value(row(name), text, &v, &err), want);
	if (want == 0 && v.u != u)
		fail_msg("%s=%s: got %llu, want %llu", name, text,
			 (unsigned long long)v.u, (unsigned long long)u);
	if (want < 0 && !strstr(err.msg, name))
		fail_msg("%s=%s: the message does not name it: %s", name, text,
			 err.msg);
}

static void test_cli_values(void **state)
{
	(void)state;
	expect_text("max-bandwidth", "1G", 0, 1ULL << 30);
	expect_text("xbzrle-cache-size", "64M", 0, 64ULL << 20);
	expect_text("xbzrle-cache-size", "1K", -EINVAL, 0); /* < 4096 */
	expect_text("downtime-limit", "500", 0, 500);
	expect_text("downtime-limit", "500ms", 0, 500);
	expect_text("downtime-limit", "2s", 0, 2000);
	expect_text("downtime-limit", "soon", -EINVAL, 0);
	expect_text("downtime-limit", "2001s", -EINVAL, 0);
	expect_text("cpu-throttle-initial", "30%", 0, 30);
	expect_text("cpu-throttle-initial", "0", -EINVAL, 0);
	expect_text("cpu-throttle-tailslow", "on", 0, 1);
	expect_text("cpu-throttle-tailslow", "no", 0, 0);
	expect_text("cpu-throttle-tailslow", "maybe", -EINVAL, 0);
	expect_text("multifd-compression", "lz4", 0, KV_MFD_METHOD_LZ4);
	expect_text("multifd-compression", "gzip", -EINVAL, 0);
	expect_text("x-compress", "always", 0, KV_RAM_COMPRESS_ALWAYS);
	expect_text("xbzrle", "on", 0, 1);
	/* a capability's support is the VM's to judge (QEMU has more) */
	expect_text("postcopy-ram", "on", 0, 1);
	expect_text("postcopy-ram", "sure", -EINVAL, 0);
}

/* ---- README.md's table ---- */

/* The row README.md must have for o (cells between '|', trimmed). */
static int expected_cells(const struct kv_mig_option *o, char cells[][200])
{
	char dflt[32], kind[32], range[96];

	kv_mig_option_format(o, o->dflt, dflt, sizeof(dflt));
	kv_mig_option_kind_text(o, kind, sizeof(kind));
	kv_mig_option_range_text(o, range, sizeof(range));
	snprintf(cells[0], 200, "`%s`", o->name);
	if (o->kind == KV_MIG_OPT_CAPABILITY) {
		snprintf(cells[1], 200, "%s", dflt);
		snprintf(cells[2], 200, "%s", range);
		snprintf(cells[3], 200, "%s", kv_mig_option_side_text(o));
		snprintf(cells[4], 200, "%s", o->help);
		return 5;
	}
	snprintf(cells[1], 200, "%s", kind);
	snprintf(cells[2], 200, "%s", range);
	snprintf(cells[3], 200, "%s", dflt);
	snprintf(cells[4], 200, "%s", kv_mig_option_side_text(o));
	snprintf(cells[5], 200, "%s", o->live ? "yes" : "no");
	snprintf(cells[6], 200, "%s", o->help);
	return 7;
}

static void expected_line(const struct kv_mig_option *o, char *buf,
			  size_t len)
{
	char cells[7][200];
	int n = expected_cells(o, cells);
	size_t k = 0;

	for (int i = 0; i < n && k < len; i++)
		k += (size_t)snprintf(buf + k, len - k, "| %s ", cells[i]);
	if (k < len)
		snprintf(buf + k, len - k, "|");
}

/* Split "| a | b |" into trimmed cells; returns their number. */
static int split_cells(char *line, char cells[][200], int max)
{
	int n = 0;
	char *p = strchr(line, '|');

	while (p && n < max) {
		char *end = strchr(p + 1, '|');
		char *a = p + 1, *b;

		if (!end)
			break;
		b = end;
		while (a < b && *a == ' ')
			a++;
		while (b > a && b[-1] == ' ')
			b--;
		snprintf(cells[n++], 200, "%.*s", (int)(b - a), a);
		p = end;
	}
	return n;
}

static char *read_readme(void)
{
	const char *path = getenv("KVMIG_README");
	FILE *f = path ? fopen(path, "r") : NULL;
	char *text;
	long n;

	if (!f)
		fail_msg("KVMIG_README (%s) cannot be read", path ? path : "unset");
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	text = calloc(1, (size_t)n + 1);
	assert_non_null(text);
	assert_int_equal(fread(text, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	return text;
}

#define README_SECTION "## Migration capabilities and parameters"

/* Every row of the section that names an option: checked against the
 * table; every row of the table: present once. On a mismatch the line
 * README.md should have is printed. */
static void test_readme_matches_table(void **state)
{
	char *text = read_readme(), *line, *save = NULL;
	char *section = strstr(text, README_SECTION);
	unsigned seen[128] = {0};
	int bad = 0;

	(void)state;
	assert_true(kv_mig_n_options <= 128);
	if (!section)
		fail_msg("README.md has no '%s' section", README_SECTION);
	section += strlen(README_SECTION);
	for (line = strtok_r(section, "\n", &save); line && strncmp(line, "## ", 3); line = strtok_r(NULL, "\n", &save)) {
		char got[7][200], want[7][200], name[128], expect[600];
		const struct kv_mig_option *o;
		int n, m;

		if (strncmp(line, "| `", 3))
			continue;
		n = split_cells(line, got, 7);
		snprintf(name, sizeof(name), "%.*s", (int)strlen(got[0]) - 2, got[0] + 1);
		o = kv_mig_option_find(name);
		if (!o) {
			print_message("README.md lists '%s', which the options table does not have\n", name);
			bad++;
			continue;
		}
		seen[o - kv_mig_options]++;
		m = expected_cells(o, want);
		for (int i = 0; i < m && n == m; i++)
			if (strcmp(got[i], want[i]))
				n = -1;
		if (n != m) {
			expected_line(o, expect, sizeof(expect));
			print_message("README.md's row of '%s' differs from the table; it should read:\n%s\n", name, expect);
			bad++;
		}
	}
	for (size_t i = 0; i < kv_mig_n_options; i++) {
		if (seen[i] != 1) {
			char expect[600];

			expected_line(&kv_mig_options[i], expect, sizeof(expect));
			print_message("README.md lists '%s' %u times (once: %s)\n", kv_mig_options[i].name, seen[i], expect);
			bad++;
		}
	}
	free(text);
	assert_int_equal(bad, 0);
}

/* ---- the run state's table ---- */

static void test_runstate(void **state)
{
	enum kv_runstate st;

	(void)state;
	for (int i = 0; i < KV_RUNSTATE_COUNT; i++) {
		assert_true(kv_runstate_parse(kv_runstate_name(i), &st));
		assert_int_equal(st, i);
		assert_true(kv_runstate_can_move(i, i));
	}
	assert_string_equal(kv_runstate_name(KV_RUNSTATE_FINISH_MIGRATE), "finish-migrate");
	assert_false(kv_runstate_parse("prelaunch", &st));
	assert_false(kv_runstate_parse(NULL, &st));
	assert_true(kv_runstate_can_move(KV_RUNSTATE_PAUSED, KV_RUNSTATE_INMIGRATE));
	assert_true(kv_runstate_can_move(KV_RUNSTATE_FINISH_MIGRATE, KV_RUNSTATE_RUNNING));
	/* a migrated guest never runs here again; shutdown is final */
	assert_false(kv_runstate_can_move(KV_RUNSTATE_POSTMIGRATE, KV_RUNSTATE_RUNNING));
	/* an operator's pause is kept: a paused source's failed switch-over
	 * and a paused source's guest arriving here */
	assert_true(kv_runstate_can_move(KV_RUNSTATE_FINISH_MIGRATE, KV_RUNSTATE_PAUSED));
	assert_true(kv_runstate_can_move(KV_RUNSTATE_INMIGRATE, KV_RUNSTATE_PAUSED));
	assert_false(kv_runstate_can_move(KV_RUNSTATE_POSTMIGRATE, KV_RUNSTATE_PAUSED));
	assert_false(kv_runstate_can_move(KV_RUNSTATE_INMIGRATE, KV_RUNSTATE_FINISH_MIGRATE));
	for (int i = 0; i < KV_RUNSTATE_COUNT; i++)
		assert_int_equal(kv_runstate_can_move(KV_RUNSTATE_SHUTDOWN, i), i == KV_RUNSTATE_SHUTDOWN);
	assert_false(kv_runstate_can_move(KV_RUNSTATE_COUNT, KV_RUNSTATE_RUNNING));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_rows_are_whole),
	    cmocka_unit_test(test_defaults),
	    cmocka_unit_test(test_settings_to_params),
	    cmocka_unit_test(test_check),
	    cmocka_unit_test(test_set_get_every_store),
	    cmocka_unit_test(test_qmp_params),
	    cmocka_unit_test(test_qmp_caps),
	    cmocka_unit_test(test_cli_values),
	    cmocka_unit_test(test_readme_matches_table),
	    cmocka_unit_test(test_runstate),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
