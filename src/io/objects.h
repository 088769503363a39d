/* SPDX-License-Identifier: MIT */
/*
 * User-created objects, as QEMU's --object declares them: TLS credentials
 * (tls-creds-x509, tls-creds-psk) and authorization lists (authz-simple,
 * authz-list). One table of kinds (objects.c) says what each takes.
 *
 * A spec is QEMU's command-line form, either
 *   KIND,id=ID,key=value,...          (",," is a literal comma; list
 *                                      members as rules.0.match=...)
 *   {"qom-type": "KIND", "id": "ID", "key": value, ...}   (JSON)
 * Objects are made at start-up and never change, so any thread may use
 * what kv_objects_* returns while the table lives.
 */
#ifndef KV_IO_OBJECTS_H
#define KV_IO_OBJECTS_H

#include <stddef.h>

#include "base/authz.h"
#include "base/error.h"
#include "io/tls.h"

struct kv_objects;

struct kv_objects *kv_objects_new(void);
void kv_objects_free(struct kv_objects *o);

/* Make the object spec describes. -EINVAL with err naming the property
 * that is wrong, -EEXIST for a second object with one id. */
int kv_objects_add(struct kv_objects *o, const char *spec,
		   struct kv_error *err);

/* The TLS credentials / authorization object with this id; NULL with
 * err set (QEMU's words) when there is none or it is of another kind. */
const struct kv_tls_creds *kv_objects_tls_creds(const struct kv_objects *o,
						const char *id,
						struct kv_error *err);
const struct kv_authz *kv_objects_authz(const struct kv_objects *o,
					const char *id, struct kv_error *err);

#endif
