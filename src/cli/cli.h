/* SPDX-License-Identifier: MIT */
/*
 * Shared pieces of the kvmig command line: exit codes, the option parser
 * every subcommand uses, and the value parsers (sizes, rates, numbers).
 *
 * Exit codes: 0 success, 1 the command ran and failed, 2 usage error (an
 * unknown subcommand or option, a missing or malformed value).
 */
#ifndef KV_CLI_CLI_H
#define KV_CLI_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KV_EXIT_OK	0
#define KV_EXIT_FAILURE 1
#define KV_EXIT_USAGE	2

/* One option of a subcommand. Options are "--name VALUE", "--name=VALUE"
 * or, when takes_value is false, a plain "--name" flag. */
struct kv_cli_opt {
	const char *name; /* without the leading "--"; NULL ends the table */
	bool takes_value;
	const char **value; /* where the value (or "1" for a flag) goes */
};

/* Parse argv[1..argc) against opts. "-h" and "--help" set *help. Prints a
 * message naming the offending argument and a hint to run
 * "kvmig <cmd> --help" on error; returns KV_EXIT_OK or KV_EXIT_USAGE. */
/* The option named name[0..len) in opts (NULL-name terminated), or NULL. */
const struct kv_cli_opt *kv_cli_find_opt(const struct kv_cli_opt *opts,
					 const char *name, size_t len);
int kv_cli_parse(const char *cmd, int argc, char **argv,
		 const struct kv_cli_opt *opts, bool *help);

/* Print "kvmig <cmd>: <message>" and the usage hint; returns KV_EXIT_USAGE. */
int kv_cli_usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Take every --object SPEC (or --object=SPEC, QEMU's form) out of argv
 * into *objects (made on the first one; NULL when there is none); argc
 * is what is left. KV_EXIT_OK, or KV_EXIT_USAGE with the message shown. */
struct kv_objects;
int kv_cli_take_objects(const char *cmd, int *argc, char **argv,
			struct kv_objects **objects);

/* "64M", "1G", "4096", "2.5G": bytes with binary suffixes K, M, G, T
 * (optionally followed by "iB" or "B"). */
bool kv_cli_parse_size(const char *text, uint64_t *out);
/* A non-negative decimal number (fractions allowed). */
bool kv_cli_parse_double(const char *text, double *out);
/* A non-negative integer. */
bool kv_cli_parse_u64(const char *text, uint64_t *out);

/* Format a 16-byte digest as 32 lowercase hex digits (buf >= 33 bytes). */
void kv_cli_hex(const uint8_t *bytes, int n, char *buf);

int kv_cmd_memtest(int argc, char **argv);
int kv_cmd_run(int argc, char **argv);
/* ctl.c: drive a VM's migration over QMP */
int kv_cmd_migrate(int argc, char **argv);
int kv_cmd_status(int argc, char **argv);
int kv_cmd_cancel(int argc, char **argv);
int kv_cmd_settle(int argc, char **argv);
int kv_cmd_set(int argc, char **argv);

#endif
