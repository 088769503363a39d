/* SPDX-License-Identifier: MIT */
/*
 * Inside the QMP monitor: one client's protocol state (input framing,
 * negotiation, output buffer) and the command table. Nothing here touches a
 * socket, so the parser and dispatcher can be driven directly by unit tests
 * and a fuzz target: create a client with kv_qmp_client_new(), push bytes
 * with kv_qmp_feed(), read what the server would send from client->out.
 *
 * Internal to src/monitor (and its tests); the VMM uses qmp.h only.
 */
#ifndef KV_MONITOR_QMP_INTERNAL_H
#define KV_MONITOR_QMP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "monitor/qmp.h"

/* More than this many bytes of one unfinished document: drop the client. */
#define KV_QMP_MAX_PENDING (1024 * 1024)
/* More than this many bytes of replies and events not yet taken by the
 * peer: it is not reading, drop it rather than grow without bound. */
#define KV_QMP_MAX_OUTPUT (4 * 1024 * 1024)

/* A growable byte buffer; data lives in [head, len). */
struct kv_qmp_buf {
	char *data;
	size_t head;
	size_t len;
	size_t cap;
};

/* Where the framer is inside the current document. */
struct kv_qmp_framer {
	size_t scan;  /* next byte of in to look at (absolute offset) */
	size_t start; /* first byte of the current document */
	size_t depth; /* open { and [ */
	bool in_doc;  /* a document has started at start */
	bool in_string;
	bool escape;	 /* previous byte was a backslash inside a string */
	bool bare;	 /* document is a top-level token, not { or [ */
	bool recovering; /* skipping garbage up to a newline, { or [ */
};

struct kv_qmp_client {
	int fd;	     /* -1 when driven without a socket */
	unsigned id; /* for log lines */
	const struct kv_qmp_ops *ops;
	bool negotiated;
	bool quit_requested; /* quit was answered; the server calls ops->quit */
	bool eof;	     /* peer closed its sending side */
	struct kv_qmp_buf in;
	struct kv_qmp_framer fr;
	struct kv_qmp_buf out;
};

struct kv_qmp_client *kv_qmp_client_new(int fd, unsigned id,
					const struct kv_qmp_ops *ops);
/* Does not close fd (the server owns it). */
void kv_qmp_client_free(struct kv_qmp_client *c);

/* Take len more bytes from the peer: every complete document is parsed and
 * answered into c->out (in order). Returns 0, or -EMSGSIZE when an
 * unfinished document passed KV_QMP_MAX_PENDING and -ENOBUFS when c->out
 * passed KV_QMP_MAX_OUTPUT; the client must then be dropped. After quit has
 * been answered the rest of the input is ignored. */
int kv_qmp_feed(struct kv_qmp_client *c, const char *buf, size_t len);

/* Queue one JSON value (serialized compactly, "\r\n"-terminated like
 * QEMU) for the peer. Returns 0, -ENOMEM or -ENOBUFS (over the cap). */
int kv_qmp_client_send(struct kv_qmp_client *c, const json_t *msg);

/* The greeting every client gets on connect. New reference. */
json_t *kv_qmp_greeting(void);
/* {"qemu": {"major", "minor", "micro"}, "package"}. New reference. */
json_t *kv_qmp_version(void);

void kv_qmp_buf_consume(struct kv_qmp_buf *b, size_t n);
static inline size_t kv_qmp_buf_pending(const struct kv_qmp_buf *b)
{
	return b->len - b->head;
}

/* ---- The command table ---- */

enum kv_qmp_arg_type {
	KV_QMP_ARG_STRING,
	KV_QMP_ARG_BOOL,
	KV_QMP_ARG_INT,
	KV_QMP_ARG_NUMBER,
	KV_QMP_ARG_OBJECT,
	KV_QMP_ARG_ARRAY,
	KV_QMP_ARG_ANY,
};

struct kv_qmp_arg {
	const char *name; /* NULL ends the list */
	enum kv_qmp_arg_type type;
	bool optional;
};

#define KV_QMP_MAX_ARGS 20

/* One command being executed. The handler reads args (checked against the
 * table: every required argument present, every present one known and of
 * its type), and on success may set ret (a new reference; NULL answers
 * {}). On failure it returns <0 with err set, and may set err_class
 * (default "GenericError"). */
struct kv_qmp_call {
	struct kv_qmp_client *client;
	const struct kv_qmp_ops *ops;
	json_t *args; /* borrowed; an empty object when the client sent none */
	json_t *ret;
	const char *err_class;
	struct kv_error err;
};

struct kv_qmp_command {
	const char *name;
	int (*handler)(struct kv_qmp_call *call);
	struct kv_qmp_arg args[KV_QMP_MAX_ARGS];
};

/* As a command's only argument name: every argument goes to the handler,
 * which checks them against a table of its own (migrate-set-parameters:
 * the options table). */
#define KV_QMP_ARGS_FROM_HANDLER "*"


extern const struct kv_qmp_command kv_qmp_commands[];
extern const size_t kv_qmp_n_commands;

const struct kv_qmp_command *kv_qmp_command_find(const char *name);

/* "The command NAME is not supported by this VM"; returns -ENOTSUP. */
int kv_qmp_missing_op(struct kv_qmp_call *call, const char *name);
/* QEMU's "Invalid parameter type for 'NAME', expected: TYPE"; returns
 * -EINVAL. */
int kv_qmp_invalid_type(struct kv_error *err, const char *name,
			const char *expected);

/* ---- The migration commands (qmp_migration.c) ---- */

int kv_qmp_cmd_migrate(struct kv_qmp_call *call);
int kv_qmp_cmd_migrate_incoming(struct kv_qmp_call *call);
int kv_qmp_cmd_migrate_cancel(struct kv_qmp_call *call);
int kv_qmp_cmd_migrate_start_postcopy(struct kv_qmp_call *call);
int kv_qmp_cmd_migrate_recover(struct kv_qmp_call *call);
int kv_qmp_cmd_migrate_pause(struct kv_qmp_call *call);
int kv_qmp_cmd_migrate_settle(struct kv_qmp_call *call);
int kv_qmp_cmd_query_migrate(struct kv_qmp_call *call);
int kv_qmp_cmd_migrate_set_parameters(struct kv_qmp_call *call);
int kv_qmp_cmd_query_migrate_parameters(struct kv_qmp_call *call);
int kv_qmp_cmd_migrate_set_capabilities(struct kv_qmp_call *call);
int kv_qmp_cmd_query_migrate_capabilities(struct kv_qmp_call *call);

struct kv_mig_settings;
struct kv_vm_mig_info;

/* migrate-set-parameters' arguments into s, all or nothing: every type,
 * then every name, then every value is checked before anything changes;
 * err names the first parameter refused. */
int kv_qmp_mig_apply_params(struct kv_mig_settings *s, json_t *args,
			    struct kv_error *err);
/* migrate-set-capabilities' list (shape already checked) into s, all or
 * nothing. */
int kv_qmp_mig_apply_caps(struct kv_mig_settings *s, json_t *list,
			  struct kv_error *err);
/* QEMU's MigrationParameters / list of MigrationCapabilityStatus /
 * MigrationInfo. New references, NULL when out of memory. */
json_t *kv_qmp_mig_query_params(const struct kv_mig_settings *s);
json_t *kv_qmp_mig_query_caps(const struct kv_mig_settings *s);
json_t *kv_qmp_mig_info_json(const struct kv_vm_mig_info *i);

#endif
