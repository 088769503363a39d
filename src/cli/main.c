/* SPDX-License-Identifier: MIT */
/* kvmig: the front door. Dispatches to one function per subcommand. */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

#ifndef KVMIG_VERSION
#define KVMIG_VERSION "unknown"
#endif

struct kv_subcommand {
	const char *name;
	const char *summary;
	int (*run)(int argc, char **argv);
};

static int cmd_version(int argc, char **argv);
static int cmd_help(int argc, char **argv);

static const struct kv_subcommand subcommands[] = {
    {"memtest",
     "migrate a memory region between two kvmig processes "
     "(or through a file)",
     kv_cmd_memtest},
    {"run", "run a multiboot kernel in a KVM virtual machine", kv_cmd_run},
    {"migrate", "start a VM's live migration over QMP (--wait to follow)",
     kv_cmd_migrate},
    {"status", "show a VM's migration (--watch: live progress, --json)",
     kv_cmd_status},
    {"cancel", "cancel a VM's migration", kv_cmd_cancel},
    {"settle", "settle an undecided switch-over by hand (run or discard)",
     kv_cmd_settle},
    {"set", "set migration parameters and capabilities over QMP",
     kv_cmd_set},
    {"version", "print the version", cmd_version},
    {"help", "print this help, or a subcommand's with 'help CMD'", cmd_help},
    {NULL, NULL, NULL},
};

static void print_usage(FILE *f)
{
	fprintf(f, "Usage: kvmig COMMAND [OPTIONS]\n\nCommands:\n");
	for (const struct kv_subcommand *c = subcommands; c->name; c++)
		fprintf(f, "  %-10s %s\n", c->name, c->summary);
	fprintf(f, "\nRun 'kvmig COMMAND --help' for a command's options.\n"
		   "Exit status: 0 success, 1 failure, 2 usage error.\n");
}

static const struct kv_subcommand *find_subcommand(const char *name)
{
	for (const struct kv_subcommand *c = subcommands; c->name; c++)
		if (!strcmp(c->name, name))
			return c;
	return NULL;
}

static int cmd_version(int argc, char **argv)
{
	bool help;
	static const struct kv_cli_opt opts[] = {{NULL, false, NULL}};
	int rc = kv_cli_parse("version", argc, argv, opts, &help);

	if (rc)
		return rc;
	if (help) {
		printf("Usage: kvmig version\n\nPrint the version of kvmig.\n");
		return KV_EXIT_OK;
	}
	printf("kvmig %s\n", KVMIG_VERSION);
	return KV_EXIT_OK;
}

static int cmd_help(int argc, char **argv)
{
	const struct kv_subcommand *c;
	char *sub_argv[3];

	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		print_usage(stdout);
		return KV_EXIT_OK;
	}
	if (argc > 2)
		return kv_cli_usage_error("help", "unexpected argument '%s'",
					  argv[2]);
	c = find_subcommand(argv[1]);
	if (!c || c->run == cmd_help) {
		if (!c)
			return kv_cli_usage_error(
			    "help", "unknown command '%s'", argv[1]);
		print_usage(stdout);
		return KV_EXIT_OK;
	}
	sub_argv[0] = argv[1];
	sub_argv[1] = "--help";
	sub_argv[2] = NULL;
	return c->run(2, sub_argv);
}

int main(int argc, char **argv)
{
	const struct kv_subcommand *c;

	/* A peer that goes away must show up as an EPIPE error on the write,
	 * not kill the process. */
	signal(SIGPIPE, SIG_IGN);
	/* Keep allocator traffic off the mm lock: a free() that munmaps a
	 * big chunk or trims the heap needs it for writing, and waited
	 * 1.3-5 ms here behind page faults in flight (the destination's
	 * prefault helper) while the guest was stopped for the switch-over.
	 * Chunks up to 32 MiB come from the heap, which keeps 64 MiB of
	 * slack: nothing next to a VM's gigabytes. */
	mallopt(M_MMAP_THRESHOLD, 32 << 20);
	mallopt(M_TRIM_THRESHOLD, 64 << 20);

	if (argc < 2) {
		print_usage(stderr);
		return KV_EXIT_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		print_usage(stdout);
		return KV_EXIT_OK;
	}
	if (!strcmp(argv[1], "--version"))
		return cmd_version(1, argv + 1);
	c = find_subcommand(argv[1]);
	if (!c) {
		if (argv[1][0] == '-')
			fprintf(stderr, "kvmig: unknown option '%s'\n",
				argv[1]);
		else
			fprintf(stderr, "kvmig: unknown command '%s'\n",
				argv[1]);
		fprintf(stderr, "Try 'kvmig --help' for the commands.\n");
		return KV_EXIT_USAGE;
	}
	return c->run(argc - 1, argv + 1);
}
