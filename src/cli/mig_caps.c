/* SPDX-License-Identifier: MIT */
/* The migration capability table (QMP names, what kvmig can honour). */
#include "cli/mig_caps.h"

#include <errno.h>
#include <string.h>

enum cap_support {
	CAP_UNSUPPORTED, /* only false */
	CAP_SETTABLE,	 /* true or false */
	CAP_ALWAYS_ON,	 /* only true */
};

struct cap_info {
	const char *name;
	enum cap_support support;
	bool dflt;
	const char *why_fixed; /* CAP_ALWAYS_ON: why it cannot be false */
};

/* Indexed by enum mig_cap; QEMU's order (qapi/migration.json). */
static const struct cap_info caps[MIG_CAP_COUNT] = {
    [MIG_CAP_XBZRLE] = {"xbzrle", CAP_SETTABLE, false, NULL},
    [MIG_CAP_RDMA_PIN_ALL] = {"rdma-pin-all", CAP_UNSUPPORTED, false, NULL},
    [MIG_CAP_AUTO_CONVERGE] = {"auto-converge", CAP_SETTABLE, false, NULL},
    [MIG_CAP_ZERO_BLOCKS] = {"zero-blocks", CAP_UNSUPPORTED, false, NULL},
    [MIG_CAP_EVENTS] = {"events", CAP_SETTABLE, true, NULL},
    [MIG_CAP_POSTCOPY_RAM] = {"postcopy-ram", CAP_UNSUPPORTED, false, NULL},
    [MIG_CAP_X_COLO] = {"x-colo", CAP_UNSUPPORTED, false, NULL},
    [MIG_CAP_RELEASE_RAM] = {"release-ram", CAP_UNSUPPORTED, false, NULL},
    [MIG_CAP_RETURN_PATH] = {"return-path", CAP_ALWAYS_ON, true,
			     "kvmig always opens a return path on socket "
			     "migrations (file: migrations have none)"},
    [MIG_CAP_PAUSE_BEFORE_SWITCHOVER] = {"pause-before-switchover",
					 CAP_UNSUPPORTED, false, NULL},
    [MIG_CAP_MULTIFD] = {"multifd", CAP_SETTABLE, false, NULL},
    [MIG_CAP_DIRTY_BITMAPS] = {"dirty-bitmaps", CAP_UNSUPPORTED, false, NULL},
    [MIG_CAP_POSTCOPY_BLOCKTIME] = {"postcopy-blocktime", CAP_UNSUPPORTED,
				    false, NULL},
    [MIG_CAP_LATE_BLOCK_ACTIVATE] = {"late-block-activate", CAP_UNSUPPORTED,
				     false, NULL},
    [MIG_CAP_X_IGNORE_SHARED] = {"x-ignore-shared", CAP_UNSUPPORTED, false,
				 NULL},
    [MIG_CAP_VALIDATE_UUID] = {"validate-uuid", CAP_UNSUPPORTED, false, NULL},
    [MIG_CAP_BACKGROUND_SNAPSHOT] = {"background-snapshot", CAP_UNSUPPORTED,
				     false, NULL},
    [MIG_CAP_ZERO_COPY_SEND] = {"zero-copy-send", CAP_UNSUPPORTED, false, NULL},
    [MIG_CAP_POSTCOPY_PREEMPT] = {"postcopy-preempt", CAP_UNSUPPORTED, false,
				  NULL},
    [MIG_CAP_SWITCHOVER_ACK] = {"switchover-ack", CAP_UNSUPPORTED, false, NULL},
    [MIG_CAP_DIRTY_LIMIT] = {"dirty-limit", CAP_UNSUPPORTED, false, NULL},
};

void mig_caps_init(struct mig_caps *c)
{
	for (int i = 0; i < MIG_CAP_COUNT; i++)
		c->on[i] = caps[i].dflt;
}

bool mig_caps_get(const struct mig_caps *c, enum mig_cap cap)
{
	return cap < MIG_CAP_COUNT && c->on[cap];
}

static int cap_find(const char *name)
{
	for (int i = 0; i < MIG_CAP_COUNT; i++)
		if (!strcmp(caps[i].name, name))
			return i;
	return -1;
}

/* Can capability i take state on? Fills err when not. */
static int cap_check(int i, bool on, struct kv_error *err)
{
	const struct cap_info *ci = &caps[i];

	if (on && ci->support == CAP_UNSUPPORTED)
		return kv_error_set(err, -ENOTSUP,
				    "Capability '%s' is not supported by kvmig "
				    "yet",
				    ci->name);
	if (!on && ci->support == CAP_ALWAYS_ON)
		return kv_error_set(err, -ENOTSUP,
				    "Capability '%s' cannot be turned off: %s",
				    ci->name, ci->why_fixed);
	return 0;
}

int mig_caps_apply(struct mig_caps *c, const json_t *list, struct kv_error *err)
{
	struct mig_caps next = *c;
	const json_t *el;
	size_t k;

	json_array_foreach(list, k, el)
	{
		const char *name =
		    json_string_value(json_object_get(el, "capability"));
		bool on = json_is_true(json_object_get(el, "state"));
		int i = name ? cap_find(name) : -1;
		int rc;

		if (i < 0)
			return kv_error_set(err, -EINVAL,
					    "Parameter "
					    "'capabilities[%zu].capability' "
					    "does not accept value '%s'",
					    k, name ? name : "");
		rc = cap_check(i, on, err);
		if (rc < 0)
			return rc;
		next.on[i] = on;
	}
	*c = next;
	return 0;
}

json_t *mig_caps_query(const struct mig_caps *c)
{
	json_t *list = json_array();

	for (int i = 0; list && i < MIG_CAP_COUNT; i++) {
		json_t *el = json_pack("{s:s,s:b}", "capability", caps[i].name,
				       "state", c->on[i]);

		if (!el || json_array_append_new(list, el)) {
			json_decref(list);
			return NULL;
		}
	}
	return list;
}
