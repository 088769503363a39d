/* SPDX-License-Identifier: MIT */
/*
 * The monitor's migration commands: migrate, migrate-incoming,
 * migrate_cancel, query-migrate, migrate-set-parameters /
 * query-migrate-parameters, migrate-set-capabilities /
 * query-migrate-capabilities. Capabilities and parameters are read, checked
 * and shown from the options table (migration/options.h) and kept here,
 * in one struct kv_mig_settings per VM; what the commands do to the VM goes
 * through struct kv_qmp_mig_ops.
 *
 * The object exists without a QMP server too (a VM started without --qmp
 * still migrates with the defaults): create it, then hand it to the server
 * in struct kv_qmp_ops.migration.
 */
#ifndef KV_MONITOR_QMP_MIGRATION_H
#define KV_MONITOR_QMP_MIGRATION_H

#include <jansson.h>

#include "base/error.h"
#include "migration/options.h"
#include "vmm/vm_migration.h"

/* What the commands need from the VM. Called on the monitor thread; none
 * may block for long. */
struct kv_qmp_mig_ops {
	/* migrate: start an outgoing migration to uri with p (the
	 * settings as the engine takes them). */
	int (*start)(void *opaque, const char *uri,
		     const struct kv_mig_params *p, struct kv_error *err);
	/* migrate-incoming. */
	int (*incoming)(void *opaque, const char *uri, struct kv_error *err);
	int (*cancel)(void *opaque, struct kv_error *err);
	/* migrate-start-postcopy; migrate {resume: true}; migrate-recover;
	 * migrate-pause (postcopy and its recovery). */
	int (*start_postcopy)(void *opaque, struct kv_error *err);
	int (*resume)(void *opaque, const char *uri, struct kv_error *err);
	int (*recover)(void *opaque, const char *uri, struct kv_error *err);
	int (*pause)(void *opaque, struct kv_error *err);
	/* x-migrate-settle: an operator's word on an undecided switch-over
	 * (this side runs the guest, or drops its copy). */
	int (*settle)(void *opaque, enum kv_swo_settle how,
		      struct kv_error *err);
	/* query-migrate's figures (also: is a migration in progress?). */
	void (*query)(void *opaque, struct kv_vm_mig_info *info);
	/* Settings about to change: p is what the next migration gets; the
	 * live ones also reach a migration in progress, and an incoming
	 * migration takes them until its source connects. The change is
	 * kept only when this returns 0 (err says why not: e.g. a
	 * destination whose source already connected cannot change
	 * multifd). */
	int (*set_params)(void *opaque, const struct kv_mig_params *p,
			  struct kv_error *err);
	void *opaque;
};

struct kv_qmp_mig;

/* Every setting at its default. NULL when out of memory. */
struct kv_qmp_mig *kv_qmp_mig_new(const struct kv_qmp_mig_ops *ops);
void kv_qmp_mig_free(struct kv_qmp_mig *m);
/* Where tls-creds and tls-authz ids are looked up (kvmig run's --object
 * table, which outlives m). */
void kv_qmp_mig_set_objects(struct kv_qmp_mig *m,
			    const struct kv_objects *objects);

/* Any thread: a copy of the settings, or what a migration gets from
 * them. */
void kv_qmp_mig_settings(struct kv_qmp_mig *m, struct kv_mig_settings *out);
void kv_qmp_mig_params(struct kv_qmp_mig *m, struct kv_mig_params *out);

/* A value of the options table as QMP carries it (bool, string or
 * integer): for query-migrate-parameters and for `kvmig set`. New
 * reference. */
json_t *kv_qmp_mig_value_json(const struct kv_mig_option *o,
			      const struct kv_mig_value *v);

#endif
