/* SPDX-License-Identifier: MIT */
/* The configuration section's capabilities subsection (config_caps.h). */
#include <errno.h>
#include <string.h>

#include "migration/savevm/config_caps.h"
#include "migration/savevm/savevm.h"

#define MAPPED_RAM "mapped-ram"
/* More than QEMU has capabilities: a count beyond it is damage. */
#define MAX_CAPS 64U

void kv_config_caps_put(struct kv_stream *s, bool mapped_ram)
{
	if (!mapped_ram)
		return;
	kv_stream_put_u8(s, KV_SEC_SUBSECTION);
	kv_stream_put_str8(s, KV_CONFIG_CAPS_NAME);
	kv_stream_put_be32(s, KV_CONFIG_CAPS_VERSION);
	kv_stream_put_be32(s, 1);
	kv_stream_put_str8(s, MAPPED_RAM);
}

static int stream_err(struct kv_stream *s, struct kv_error *err)
{
	kv_stream_error_get(s, err);
	return err->code ? err->code : -EIO;
}

/* The list of capabilities: is mapped-ram among them? */
static int load_caps(struct kv_stream *s, bool *mapped_ram,
		     struct kv_error *err)
{
	uint32_t n = kv_stream_get_be32(s);
	char name[256];

	if (kv_stream_error(s))
		return stream_err(s, err);
	if (n > MAX_CAPS)
		return kv_error_set(err, -EINVAL, "configuration: %u capabilities in '%s' (at most %u)", n, KV_CONFIG_CAPS_NAME, MAX_CAPS);
	for (uint32_t i = 0; i < n; i++) {
		kv_stream_get_str8(s, name, sizeof(name));
		if (kv_stream_error(s))
			return stream_err(s, err);
		if (strcmp(name, MAPPED_RAM) != 0)
			return kv_error_set(err, -EINVAL, "configuration: the stream needs capability '%s', which kvmig does not support", name);
		*mapped_ram = true;
	}
	return 0;
}

int kv_config_caps_load(struct kv_stream *s, bool *mapped_ram, bool follow,
			struct kv_error *err)
{
	bool in_stream = false;
	char name[256];
	uint32_t version;
	int ret;

	while (kv_stream_peek_u8(s) == KV_SEC_SUBSECTION) {
		kv_stream_get_u8(s);
		kv_stream_get_str8(s, name, sizeof(name));
		version = kv_stream_get_be32(s);
		if (kv_stream_error(s))
			return stream_err(s, err);
		if (strcmp(name, KV_CONFIG_CAPS_NAME) != 0)
			return kv_error_set(err, -EINVAL, "configuration: subsection '%s' (section type 0x05 after the configuration) is not supported (only '%s')", name, KV_CONFIG_CAPS_NAME);
		if (version != KV_CONFIG_CAPS_VERSION)
			return kv_error_set(err, -EINVAL, "configuration: '%s' version %u (only %u)", name, version, KV_CONFIG_CAPS_VERSION);
		ret = load_caps(s, &in_stream, err);
		if (ret < 0)
			return ret;
	}
	if (kv_stream_error(s))
		return stream_err(s, err);
	if (in_stream && follow)
		*mapped_ram = true;
	if (in_stream && !*mapped_ram)
		return kv_error_set(err, -EINVAL, "configuration: the stream was written with capability mapped-ram on, this destination has it off: turn it on here too (migrate-set-capabilities, before migrate-incoming)");
	if (!in_stream && *mapped_ram)
		return kv_error_set(err, -EINVAL, "configuration: the stream was written with capability mapped-ram off, this destination has it on: turn it off here");
	return 0;
}
