/* SPDX-License-Identifier: MIT */
/*
 * The QMP commands: one const table of {name, handler, arguments}. A new
 * command is one handler and one table row; argument presence and types
 * are checked by the dispatcher from the row, so handlers only read.
 */
#include <errno.h>
#include <string.h>

#include "monitor/qmp_internal.h"

int kv_qmp_missing_op(struct kv_qmp_call *call, const char *name)
{
	return kv_error_set(&call->err, -ENOTSUP,
			    "The command %s is not supported by this VM", name);
}

int kv_qmp_invalid_type(struct kv_error *err, const char *name,
			const char *expected)
{
	return kv_error_set(err, -EINVAL, "Invalid parameter type for '%s', expected: %s", name, expected);
}

/* The shape a query callback promises (QEMU's schema). */
enum result_kind { RESULT_OBJECT, RESULT_LIST };

typedef int (*query_fn)(void *opaque, void **ret, struct kv_error *err);

/* Run a query callback. A result of the wrong shape is the VMM's bug,
 * reported to the client rather than sent on as a malformed reply. */
static int run_query(struct kv_qmp_call *call, const char *name, query_fn fn,
		     enum result_kind kind)
{
	void *ret = NULL;
	json_t *j;
	int rc;

	if (!fn)
		return kv_qmp_missing_op(call, name);
	rc = fn(call->ops->opaque, &ret, &call->err);
	j = ret;
	if (rc < 0) {
		json_decref(j);
		if (!kv_error_is_set(&call->err))
			kv_error_set(&call->err, rc, "%s failed", name);
		return rc;
	}
	if (kind == RESULT_OBJECT ? j && !json_is_object(j)
				  : !json_is_array(j)) {
		json_decref(j);
		return kv_error_set(&call->err, -EINVAL,
				    "%s returned a non-%s result", name,
				    kind == RESULT_OBJECT ? "object" : "list");
	}
	call->ret = j;
	return 0;
}

static int cmd_qmp_capabilities(struct kv_qmp_call *call)
{
	json_t *enable = json_object_get(call->args, "enable");
	json_t *cap = json_array_get(enable, 0);

	if (call->client->negotiated) {
		call->err_class = "CommandNotFound";
		return kv_error_set(&call->err, -EINVAL,
				    "Capabilities negotiation is already complete, command ignored");
	}
	/* We announce no capabilities, so any requested one is unknown. */
	if (cap)
		return kv_error_set(
		    &call->err, -EINVAL, "Capability '%s' not available",
		    json_is_string(cap) ? json_string_value(cap) : "?");
	call->client->negotiated = true;
	return 0;
}

static int cmd_query_commands(struct kv_qmp_call *call)
{
	json_t *list = json_array();
	size_t i;

	if (!list)
		return kv_error_set(&call->err, -ENOMEM, "out of memory");
	for (i = 0; i < kv_qmp_n_commands; i++)
		json_array_append_new(
		    list, json_pack("{s:s}", "name", kv_qmp_commands[i].name));
	call->ret = list;
	return 0;
}

static int cmd_query_version(struct kv_qmp_call *call)
{
	call->ret = kv_qmp_version();
	return call->ret ? 0
			 : kv_error_set(&call->err, -ENOMEM, "out of memory");
}

static int cmd_query_status(struct kv_qmp_call *call)
{
	return run_query(call, "query-status", call->ops->query_status,
			 RESULT_OBJECT);
}

static int cmd_stop(struct kv_qmp_call *call)
{
	if (!call->ops->stop)
		return kv_qmp_missing_op(call, "stop");
	return call->ops->stop(call->ops->opaque, &call->err);
}

static int cmd_cont(struct kv_qmp_call *call)
{
	if (!call->ops->cont)
		return kv_qmp_missing_op(call, "cont");
	return call->ops->cont(call->ops->opaque, &call->err);
}

/* The reply goes out first; the server calls ops->quit once it is sent. */
static int cmd_quit(struct kv_qmp_call *call)
{
	if (!call->ops->quit)
		return kv_qmp_missing_op(call, "quit");
	call->client->quit_requested = true;
	return 0;
}

static int cmd_query_cpus_fast(struct kv_qmp_call *call)
{
	return run_query(call, "query-cpus-fast", call->ops->query_cpus_fast,
			 RESULT_LIST);
}

static int cmd_system_powerdown(struct kv_qmp_call *call)
{
	if (!call->ops->system_powerdown)
		return kv_qmp_missing_op(call, "system_powerdown");
	return call->ops->system_powerdown(call->ops->opaque, &call->err);
}

const struct kv_qmp_command kv_qmp_commands[] = {
    {"qmp_capabilities",
     cmd_qmp_capabilities,
     {{"enable", KV_QMP_ARG_ARRAY, true}}},
    {"query-commands", cmd_query_commands, {{0}}},
    {"query-version", cmd_query_version, {{0}}},
    {"query-status", cmd_query_status, {{0}}},
    {"stop", cmd_stop, {{0}}},
    {"cont", cmd_cont, {{0}}},
    {"quit", cmd_quit, {{0}}},
    /* The migration commands live in qmp_migration.c. "detach" is
     * accepted and ignored, as QEMU does, for old clients. */
    {"migrate",
     kv_qmp_cmd_migrate,
     {{"uri", KV_QMP_ARG_STRING, false},
      {"detach", KV_QMP_ARG_BOOL, true},
      {"resume", KV_QMP_ARG_BOOL, true}}},
    {"migrate-incoming",
     kv_qmp_cmd_migrate_incoming,
     {{"uri", KV_QMP_ARG_STRING, false}}},
    {"migrate_cancel", kv_qmp_cmd_migrate_cancel, {{0}}},
    {"migrate-start-postcopy", kv_qmp_cmd_migrate_start_postcopy, {{0}}},
    {"migrate-recover",
     kv_qmp_cmd_migrate_recover,
     {{"uri", KV_QMP_ARG_STRING, false}}},
    {"migrate-pause", kv_qmp_cmd_migrate_pause, {{0}}},
    /* kvmig's own: settle an undecided switch-over by hand. */
    {"x-migrate-settle",
     kv_qmp_cmd_migrate_settle,
     {{"outcome", KV_QMP_ARG_STRING, false}}},
    {"query-migrate", kv_qmp_cmd_query_migrate, {{0}}},
    /* Every parameter of the options table (migration/options.h). */
    {"migrate-set-parameters",
     kv_qmp_cmd_migrate_set_parameters,
     {{KV_QMP_ARGS_FROM_HANDLER, KV_QMP_ARG_ANY, true}}},
    {"query-migrate-parameters", kv_qmp_cmd_query_migrate_parameters, {{0}}},
    {"migrate-set-capabilities",
     kv_qmp_cmd_migrate_set_capabilities,
     {{"capabilities", KV_QMP_ARG_ARRAY, false}}},
    {"query-migrate-capabilities",
     kv_qmp_cmd_query_migrate_capabilities,
     {{0}}},
    {"query-cpus-fast", cmd_query_cpus_fast, {{0}}},
    {"system_powerdown", cmd_system_powerdown, {{0}}},
};

const size_t kv_qmp_n_commands =
    sizeof(kv_qmp_commands) / sizeof(kv_qmp_commands[0]);

const struct kv_qmp_command *kv_qmp_command_find(const char *name)
{
	size_t i;

	for (i = 0; i < kv_qmp_n_commands; i++)
		if (!strcmp(kv_qmp_commands[i].name, name))
			return &kv_qmp_commands[i];
	return NULL;
}
