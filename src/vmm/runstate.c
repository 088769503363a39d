/* SPDX-License-Identifier: MIT */
/* The run-state table (runstate.h). */
#include "vmm/runstate.h"

#include <string.h>

#define BIT(st) (1u << (st))

struct runstate_info {
	const char *name;
	unsigned may_become; /* BIT() of each state it may move to */
};

static const struct runstate_info states[KV_RUNSTATE_COUNT] = {
    [KV_RUNSTATE_PAUSED] = {"paused",
			    BIT(KV_RUNSTATE_RUNNING) |
				BIT(KV_RUNSTATE_INMIGRATE) |
				BIT(KV_RUNSTATE_FINISH_MIGRATE) |
				BIT(KV_RUNSTATE_SHUTDOWN)},
    [KV_RUNSTATE_RUNNING] = {"running",
			     BIT(KV_RUNSTATE_PAUSED) |
				 BIT(KV_RUNSTATE_FINISH_MIGRATE) |
				 BIT(KV_RUNSTATE_SHUTDOWN)},
    /* A completed incoming migration runs the guest, or keeps it paused
     * when the source's was (its "globalstate" section); a failed one
     * ends the process (shutdown). */
    [KV_RUNSTATE_INMIGRATE] = {"inmigrate",
			       BIT(KV_RUNSTATE_RUNNING) |
				   BIT(KV_RUNSTATE_PAUSED) |
				   BIT(KV_RUNSTATE_SHUTDOWN)},
    /* A failed or cancelled switch-over gives the guest back the state
     * it had before: running, or paused by the operator. */
    [KV_RUNSTATE_FINISH_MIGRATE] = {"finish-migrate",
				    BIT(KV_RUNSTATE_POSTMIGRATE) |
					BIT(KV_RUNSTATE_RUNNING) |
					BIT(KV_RUNSTATE_PAUSED) |
					BIT(KV_RUNSTATE_SHUTDOWN)},
    [KV_RUNSTATE_POSTMIGRATE] = {"postmigrate", BIT(KV_RUNSTATE_SHUTDOWN)},
    [KV_RUNSTATE_SHUTDOWN] = {"shutdown", 0},
};

const char *kv_runstate_name(enum kv_runstate st)
{
	return (unsigned)st < KV_RUNSTATE_COUNT ? states[st].name : "unknown";
}

bool kv_runstate_parse(const char *name, enum kv_runstate *out)
{
	for (int i = 0; name && i < KV_RUNSTATE_COUNT; i++)
		if (!strcmp(states[i].name, name)) {
			*out = (enum kv_runstate)i;
			return true;
		}
	return false;
}

bool kv_runstate_can_move(enum kv_runstate from, enum kv_runstate to)
{
	if ((unsigned)from >= KV_RUNSTATE_COUNT ||
	    (unsigned)to >= KV_RUNSTATE_COUNT)
		return false;
	return from == to || (states[from].may_become & BIT(to));
}
