/* SPDX-License-Identifier: MIT */
/*
 * The configuration section's "configuration/capabilities" subsection
 * (QEMU's vmstate_capabilites): the capabilities that change the stream's
 * layout, which both sides must agree on. Of those QEMU validates
 * (x-ignore-shared, mapped-ram) kvmig has mapped-ram; the source writes
 * the subsection only when one is on, as QEMU does. docs/FORMAT.md 2.1.
 */
#ifndef KV_MIGRATION_CONFIG_CAPS_H
#define KV_MIGRATION_CONFIG_CAPS_H

#include <stdbool.h>

#include "base/error.h"
#include "io/stream.h"

#define KV_CONFIG_CAPS_NAME "configuration/capabilities"
#define KV_CONFIG_CAPS_VERSION 1U

/* Source: after the machine name. Nothing when mapped_ram is off. */
void kv_config_caps_put(struct kv_stream *s, bool mapped_ram);
/* Destination: the subsections after the machine name, if any, checked
 * against this side's *mapped_ram: 0, or -EINVAL naming the capability
 * and both sides' values (the stream's errors are the stream's). With
 * follow, a stream that has it on turns *mapped_ram on instead. */
int kv_config_caps_load(struct kv_stream *s, bool *mapped_ram, bool follow,
			struct kv_error *err);

#endif
