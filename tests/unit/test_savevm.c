/* SPDX-License-Identifier: MIT */
/* The handler registry, the section framing and the loader's rejections.
 * Streams go through temporary files; malformed streams are crafted byte
 * by byte by a builder whose default output equals what the saver writes. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "io/channel.h"
#include "io/stream.h"
#include "stream_file.h"
#include "migration/savevm/savevm.h"

#define MACHINE "pc-test"

/* ---- stream helpers ---- */

/* ---- the fake live handler ---- */

enum { FAKE_SETUP = 1, FAKE_PART = 2, FAKE_END = 3 };
#define FAKE_SETUP_VALUE 0xc0ffeeU
#define FAKE_END_VALUE	 0xe7dU
#define FAKE_PARTS	 3

struct fake {
	/* source */
	uint32_t counter;
	int save_cleanups;
	bool save_cleanup_failed;
	/* destination */
	int load_setups;
	int load_cleanups;
	bool cleanup_failed;
	uint32_t expect_part;
	bool got_setup;
	bool got_end;
	int last_version;
};

static int fake_save_setup(struct kv_stream *s, void *opaque,
			   struct kv_error *err)
{
	(void)opaque;
	(void)err;
	kv_stream_put_u8(s, FAKE_SETUP);
	kv_stream_put_be32(s, FAKE_SETUP_VALUE);
	return 0;
}

static int fake_save_iterate(struct kv_stream *s, void *opaque,
			     struct kv_error *err)
{
	struct fake *f = opaque;

	(void)err;
	kv_stream_put_u8(s, FAKE_PART);
	kv_stream_put_be32(s, f->counter++);
	return f->counter >= FAKE_PARTS ? 1 : 0;
}

static int fake_save_complete(struct kv_stream *s, void *opaque,
			      struct kv_error *err)
{
	(void)opaque;
	(void)err;
	kv_stream_put_u8(s, FAKE_END);
	kv_stream_put_be32(s, FAKE_END_VALUE);
	return 0;
}

static uint64_t fake_pending(void *opaque)
{
	struct fake *f = opaque;

	return f->counter >= FAKE_PARTS ? 0 : (FAKE_PARTS - f->counter) * 5;
}

static void fake_save_cleanup(void *opaque, bool failed)
{
	((struct fake *)opaque)->save_cleanups++;
	((struct fake *)opaque)->save_cleanup_failed = failed;
}

static int fake_load_setup(void *opaque, struct kv_error *err)
{
	struct fake *f = opaque;

	(void)err;
	f->load_setups++;
	f->expect_part = 0;
	f->got_setup = f->got_end = false;
	return 0;
}

static int fake_load_state(struct kv_stream *s, void *opaque, int version_id,
			   struct kv_error *err)
{
	struct fake *f = opaque;
	uint8_t kind = kv_stream_get_u8(s);
	uint32_t v = kv_stream_get_be32(s);

	/* Let the stream's own error (truncation) speak for itself. */
	if (kv_stream_error(s))
		return -EIO;
	f->last_version = version_id;
	switch (kind) {
	case FAKE_SETUP:
		if (v != FAKE_SETUP_VALUE)
			return kv_error_set(err, -EINVAL,
					    "fake: setup record 0x%x", v);
		f->got_setup = true;
		return 0;
	case FAKE_PART:
		if (v != f->expect_part)
			return kv_error_set(err, -EINVAL,
					    "fake: part record %u, expected %u",
					    v, f->expect_part);
		f->expect_part++;
		return 0;
	case FAKE_END:
		if (v != FAKE_END_VALUE)
			return kv_error_set(err, -EINVAL,
					    "fake: end record 0x%x", v);
		f->got_end = true;
		return 0;
	}
	return kv_error_set(err, -EINVAL, "fake: unknown record kind %u", kind);
}

static void fake_load_cleanup(void *opaque, bool failed)
{
	struct fake *f = opaque;

	f->load_cleanups++;
	f->cleanup_failed = failed;
}

static const struct kv_savevm_live_ops fake_ops = {
    .save_setup = fake_save_setup,
    .save_iterate = fake_save_iterate,
    .save_complete = fake_save_complete,
    .pending_estimate = fake_pending,
    .save_cleanup = fake_save_cleanup,
    .load_setup = fake_load_setup,
    .load_state = fake_load_state,
    .load_cleanup = fake_load_cleanup,
};

/* ---- two devices ---- */

struct dev_a {
	uint32_t x;
	uint64_t y;
};

static const struct kv_vmstate_field dev_a_fields[] = {
    KV_VMS_FIELD(struct dev_a, x, KV_VMS_U32, 1),
    KV_VMS_FIELD(struct dev_a, y, KV_VMS_U64, 2),
    KV_VMS_END,
};

static const struct kv_vmstate_desc dev_a_desc = {
    .name = "dev-a",
    .version_id = 2,
    .minimum_version_id = 1,
    .fields = dev_a_fields,
};

struct dev_b {
	uint8_t blob[6];
};

static const struct kv_vmstate_field dev_b_fields[] = {
    KV_VMS_BUF(struct dev_b, blob, 0),
    KV_VMS_END,
};

static const struct kv_vmstate_desc dev_b_desc = {
    .name = "dev-b",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = dev_b_fields,
};

#define DEV_A_X 0x11223344U
#define DEV_A_Y 0x5566778899aabbccULL
static const uint8_t dev_b_blob[6] = {'k', 'v', 'm', 'i', 'g', '!'};

struct side {
	struct kv_savevm *sv;
	struct fake fake;
	struct dev_a a;
	struct dev_b b;
};

static void side_init(struct side *sd, bool source)
{
	struct kv_error err = {0};

	memset(sd, 0, sizeof(*sd));
	if (source) {
		sd->a = (struct dev_a){DEV_A_X, DEV_A_Y};
		memcpy(sd->b.blob, dev_b_blob, sizeof(dev_b_blob));
	}
	sd->sv = kv_savevm_new(MACHINE);
	assert_non_null(sd->sv);
	assert_int_equal(kv_savevm_register_live(sd->sv, "fake", 0, 2,
						 KV_PRI_RAM, &fake_ops,
						 &sd->fake, &err),
			 0);
	assert_int_equal(kv_savevm_register_device(sd->sv, "dev-a", 0,
						   &dev_a_desc, KV_PRI_DEVICE,
						   &sd->a, &err),
			 0);
	assert_int_equal(kv_savevm_register_device(sd->sv, "dev-b", 1,
						   &dev_b_desc, KV_PRI_DEFAULT,
						   &sd->b, &err),
			 0);
}

static void enable_verify(struct side *sd)
{
	struct kv_error err = {0};

	if (kv_savevm_enable_verify(sd->sv, &err) < 0)
		fail_msg("%s", err.msg);
}

/* The stream a source writes (with or without return path, with or
 * without section verification). */
static uint8_t *save_stream_v(bool return_path, bool verify, size_t *len)
{
	struct kv_error err = {0};
	struct side src;
	char path[64];
	struct kv_stream *s;
	int i, ret = 0;
	uint8_t *b;

	side_init(&src, true);
	if (verify)
		enable_verify(&src);
	s = open_write(path, sizeof(path));
	assert_int_equal(kv_savevm_save_header(src.sv, s, return_path, &err),
			 0);
	assert_int_equal(kv_savevm_save_setup(src.sv, s, &err), 0);
	assert_true(kv_savevm_pending_estimate(src.sv) > 0);
	for (i = 0; i < 100 && ret == 0; i++)
		ret = kv_savevm_save_iterate(src.sv, s, &err);
	assert_int_equal(ret, 1);
	assert_int_equal(i, FAKE_PARTS);
	assert_int_equal(kv_savevm_pending_estimate(src.sv), 0);
	assert_int_equal(kv_savevm_save_complete(src.sv, s, &err), 0);
	src.fake.save_cleanup_failed = true;
	kv_savevm_save_cleanup(src.sv, false);
	assert_int_equal(src.fake.save_cleanups, 1);
	assert_false(src.fake.save_cleanup_failed);
	kv_savevm_free(src.sv);
	b = close_and_read(s, path, len);
	return b;
}

static uint8_t *save_stream(bool return_path, size_t *len)
{
	return save_stream_v(return_path, false, len);
}

/* Load bytes into a fresh destination; keeps the destination for checks. */
static int load_into_v(struct side *dst, bool verify, const uint8_t *b,
		       size_t n, struct kv_load_result *res,
		       struct kv_error *err)
{
	struct kv_stream *s = open_read_bytes(b, n);
	int ret;

	side_init(dst, false);
	if (verify)
		enable_verify(dst);
	ret = kv_savevm_load(dst->sv, s, res, err);
	kv_stream_close(s);
	return ret;
}

static int load_into(struct side *dst, const uint8_t *b, size_t n,
		     struct kv_load_result *res, struct kv_error *err)
{
	struct kv_stream *s = open_read_bytes(b, n);
	int ret;

	side_init(dst, false);
	ret = kv_savevm_load(dst->sv, s, res, err);
	kv_stream_close(s);
	return ret;
}

/* ---- the stream builder ---- */

struct buf {
	uint8_t *p;
	size_t n, cap;
};

static void put(struct buf *b, const void *data, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2 + 64;
		b->p = realloc(b->p, b->cap);
		assert_non_null(b->p);
	}
	memcpy(b->p + b->n, data, n);
	b->n += n;
}

static void put8(struct buf *b, uint8_t v)
{
	put(b, &v, 1);
}

static void put16(struct buf *b, uint16_t v)
{
	put8(b, v >> 8);
	put8(b, v & 0xff);
}

static void put32(struct buf *b, uint32_t v)
{
	put16(b, v >> 16);
	put16(b, v & 0xffff);
}

static void put64(struct buf *b, uint64_t v)
{
	put32(b, v >> 32);
	put32(b, (uint32_t)v);
}

static void putstr8(struct buf *b, const char *s)
{
	put8(b, (uint8_t)strlen(s));
	put(b, s, strlen(s));
}

/* Knobs: zero values give the stream the saver writes (up to EOF). */
struct variant {
	uint32_t magic;	  /* 0: QEVM */
	uint32_t version; /* 0: 3 */
	const char *machine;
	bool return_path;
	const uint8_t *inject; /* bytes after the configuration */
	size_t inject_len;
	const char *fake_idstr;
	uint32_t fake_version; /* 0: 2 */
	uint32_t dev_a_instance;
	uint32_t dev_a_version; /* 0: 2 */
	uint32_t footer_id_xor; /* applied to the first PART's footer */
	uint32_t part_id_xor;	/* applied to the first PART's id */
	bool skip_end;
	bool skip_dev_b;
	bool dev_a_twice;
	const char *json; /* NULL: a valid description */
	const char *trailer;
};

static const char valid_json[] =
    "{\"page_size\":4096,\"devices\":[{\"name\":\"dev-a\","
    "\"instance_id\":0,\"vmsd_name\":\"dev-a\",\"version\":2,"
    "\"fields\":[]}]}";

static void put_footer(struct buf *b, uint32_t id)
{
	put8(b, KV_SEC_FOOTER);
	put32(b, id);
}

static void craft_dev_a(struct buf *b, const struct variant *v)
{
	put8(b, KV_SEC_FULL);
	put32(b, 1);
	putstr8(b, "dev-a");
	put32(b, v->dev_a_instance);
	put32(b, v->dev_a_version ? v->dev_a_version : 2);
	put32(b, DEV_A_X);
	if (!v->dev_a_version || v->dev_a_version >= 2)
		put64(b, DEV_A_Y);
	put_footer(b, 1);
}

static uint8_t *craft(const struct variant *v, size_t *len)
{
	const char *machine = v->machine ? v->machine : MACHINE;
	const char *json = v->json ? v->json : valid_json;
	struct buf b = {0};
	uint32_t i;

	put32(&b, v->magic ? v->magic : KV_VM_FILE_MAGIC);
	put32(&b, v->version ? v->version : KV_VM_FILE_VERSION);
	put8(&b, KV_SEC_CONFIGURATION);
	put32(&b, (uint32_t)strlen(machine));
	put(&b, machine, strlen(machine));
	if (v->return_path) {
		put8(&b, KV_SEC_COMMAND);
		put16(&b, KV_MIG_CMD_OPEN_RETURN_PATH);
		put16(&b, 0);
	}
	if (v->inject_len)
		put(&b, v->inject, v->inject_len);

	put8(&b, KV_SEC_START);
	put32(&b, 0);
	putstr8(&b, v->fake_idstr ? v->fake_idstr : "fake");
	put32(&b, 0);
	put32(&b, v->fake_version ? v->fake_version : 2);
	put8(&b, FAKE_SETUP);
	put32(&b, FAKE_SETUP_VALUE);
	put_footer(&b, 0);
	for (i = 0; i < FAKE_PARTS; i++) {
		put8(&b, KV_SEC_PART);
		put32(&b, i == 0 ? v->part_id_xor : 0);
		put8(&b, FAKE_PART);
		put32(&b, i);
		put_footer(&b, i == 0 ? v->footer_id_xor : 0);
	}
	if (!v->skip_end) {
		put8(&b, KV_SEC_END);
		put32(&b, 0);
		put8(&b, FAKE_END);
		put32(&b, FAKE_END_VALUE);
		put_footer(&b, 0);
	}
	craft_dev_a(&b, v);
	if (v->dev_a_twice)
		craft_dev_a(&b, v);
	if (!v->skip_dev_b) {
		put8(&b, KV_SEC_FULL);
		put32(&b, 2);
		putstr8(&b, "dev-b");
		put32(&b, 1);
		put32(&b, 1);
		put(&b, dev_b_blob, sizeof(dev_b_blob));
		put_footer(&b, 2);
	}
	put8(&b, KV_SEC_EOF);
	put8(&b, KV_SEC_VMDESCRIPTION);
	put32(&b, (uint32_t)strlen(json));
	put(&b, json, strlen(json));
	if (v->trailer)
		put(&b, v->trailer, strlen(v->trailer));
	*len = b.n;
	return b.p;
}

/* Load a crafted stream expecting failure with needle in the message and
 * the live handler told to drop its state. */
static void expect_reject(const struct variant *v, const char *needle)
{
	struct kv_error err = {0};
	struct side dst;
	uint8_t *b;
	size_t n;

	b = craft(v, &n);
	assert_true(load_into(&dst, b, n, NULL, &err) < 0);
	if (!strstr(err.msg, needle))
		fail_msg("error '%s' does not contain '%s'", err.msg, needle);
	assert_int_equal(dst.fake.load_setups, 1);
	assert_int_equal(dst.fake.load_cleanups, 1);
	assert_true(dst.fake.cleanup_failed);
	kv_savevm_free(dst.sv);
	free(b);
}

/* ---- registry ---- */

static void test_registry_order(void **state)
{
	struct kv_error err = {0};
	struct kv_savevm *sv = kv_savevm_new(MACHINE);
	int dummy;

	(void)state;
	assert_int_equal(kv_savevm_register_device(sv, "d1", 0, &dev_b_desc,
						   KV_PRI_DEFAULT, &dummy,
						   &err),
			 0);
	assert_int_equal(kv_savevm_register_device(sv, "d2", 0, &dev_b_desc,
						   KV_PRI_DEVICE, &dummy, &err),
			 0);
	assert_int_equal(kv_savevm_register_live(sv, "ram", 0, 4, KV_PRI_RAM,
						 &fake_ops, &dummy, &err),
			 0);
	assert_int_equal(kv_savevm_register_device(sv, "d3", 0, &dev_b_desc,
						   KV_PRI_DEFAULT, &dummy,
						   &err),
			 0);
	assert_int_equal(kv_savevm_register_device(sv, "d4", 0, &dev_b_desc,
						   KV_PRI_DEVICE, &dummy, &err),
			 0);
	assert_int_equal(kv_savevm_register_device(sv, "d1", 1, &dev_b_desc,
						   KV_PRI_DEFAULT, &dummy,
						   &err),
			 0);
	assert_int_equal(kv_savevm_entry_count(sv), 6);
	assert_string_equal(kv_savevm_entry_idstr(sv, 0), "ram");
	assert_string_equal(kv_savevm_entry_idstr(sv, 1), "d2");
	assert_string_equal(kv_savevm_entry_idstr(sv, 2), "d4");
	assert_string_equal(kv_savevm_entry_idstr(sv, 3), "d1");
	assert_string_equal(kv_savevm_entry_idstr(sv, 4), "d3");
	assert_string_equal(kv_savevm_entry_idstr(sv, 5), "d1");
	assert_null(kv_savevm_entry_idstr(sv, 6));
	kv_savevm_free(sv);
}

static void test_registry_rejects(void **state)
{
	struct kv_savevm_live_ops no_iterate = fake_ops;
	struct kv_vmstate_field bad_fields[] = {
	    {.name = "s", .type = KV_VMS_STRUCT, .size = 4},
	    KV_VMS_END,
	};
	struct kv_vmstate_desc bad = {
	    .name = "bad", .version_id = 1, .fields = bad_fields};
	struct kv_error err = {0};
	struct kv_savevm *sv = kv_savevm_new(MACHINE);
	char long_id[300];
	int dummy;

	(void)state;
	no_iterate.save_iterate = NULL;
	assert_int_equal(kv_savevm_register_live(sv, "ram", 0, 4, KV_PRI_RAM,
						 &fake_ops, &dummy, &err),
			 0);
	assert_int_equal(kv_savevm_register_live(sv, "ram", 0, 4, KV_PRI_RAM,
						 &fake_ops, &dummy, &err),
			 -EEXIST);
	assert_non_null(strstr(err.msg, "'ram' instance 0 is already"));
	kv_error_clear(&err);
	assert_int_equal(kv_savevm_register_device(sv, "ram", 0, &dev_b_desc, 0,
						   &dummy, &err),
			 -EEXIST);
	kv_error_clear(&err);
	assert_int_equal(kv_savevm_register_live(sv, "other", 0, 1, 0,
						 &no_iterate, &dummy, &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "save_iterate is missing"));
	kv_error_clear(&err);
	memset(long_id, 'x', 256);
	long_id[256] = '\0';
	assert_true(kv_savevm_register_device(sv, long_id, 0, &dev_b_desc, 0,
					      &dummy, &err) < 0);
	assert_non_null(strstr(err.msg, "longer than 255"));
	kv_error_clear(&err);
	assert_int_equal(
	    kv_savevm_register_device(sv, "bad", 0, &bad, 0, &dummy, &err),
	    -EINVAL);
	assert_non_null(strstr(err.msg, "STRUCT without a vmsd"));
	assert_int_equal(kv_savevm_entry_count(sv), 1);
	kv_savevm_free(sv);
}

/* ---- round trip ---- */

static void test_round_trip(void **state)
{
	struct kv_load_result res;
	struct kv_error err = {0};
	struct side dst;
	uint8_t *b;
	size_t n;

	(void)state;
	b = save_stream(false, &n);
	assert_int_equal(load_into(&dst, b, n, &res, &err), 0);
	assert_string_equal(err.msg, "");
	assert_false(res.return_path_requested);
	assert_int_equal(res.bytes, n);
	assert_true(dst.fake.got_setup);
	assert_int_equal(dst.fake.expect_part, FAKE_PARTS);
	assert_true(dst.fake.got_end);
	assert_int_equal(dst.fake.last_version, 2);
	assert_int_equal(dst.fake.load_cleanups, 1);
	assert_false(dst.fake.cleanup_failed);
	assert_int_equal(dst.a.x, DEV_A_X);
	assert_true(dst.a.y == DEV_A_Y);
	assert_memory_equal(dst.b.blob, dev_b_blob, sizeof(dev_b_blob));
	kv_savevm_free(dst.sv);
	free(b);
}

static void test_saver_matches_builder(void **state)
{
	struct variant v = {0};
	uint8_t *saved, *crafted;
	size_t n_saved, n_crafted, eof_at;

	(void)state;
	saved = save_stream(false, &n_saved);
	crafted = craft(&v, &n_crafted);
	/* Identical up to and including EOF; the descriptions differ. */
	eof_at = n_crafted - strlen(valid_json) - 5;
	assert_true(n_saved > eof_at);
	assert_memory_equal(saved, crafted, eof_at);
	free(crafted);
	free(saved);
}

static void test_vm_description_layout(void **state)
{
	json_error_t jerr;
	json_t *root, *dev;
	uint8_t *b;
	size_t n, eof_at;
	uint32_t len;

	(void)state;
	b = save_stream(false, &n);
	/* EOF is right before the 0x06 that starts the description. */
	eof_at = n;
	while (eof_at > 0 && b[eof_at - 1] != '{')
		eof_at--;
	while (eof_at > 0 && !(b[eof_at - 1] == KV_SEC_VMDESCRIPTION &&
			       b[eof_at - 2] == KV_SEC_EOF))
		eof_at--;
	assert_true(eof_at >= 2);
	len = (uint32_t)b[eof_at] << 24 | (uint32_t)b[eof_at + 1] << 16 |
	      (uint32_t)b[eof_at + 2] << 8 | b[eof_at + 3];
	assert_int_equal(eof_at + 4 + len, n);
	root = json_loadb((const char *)b + eof_at + 4, len, 0, &jerr);
	assert_non_null(root);
	assert_int_equal(json_integer_value(json_object_get(root, "page_size")),
			 4096);
	assert_int_equal(json_array_size(json_object_get(root, "devices")), 2);
	dev = json_array_get(json_object_get(root, "devices"), 1);
	assert_string_equal(json_string_value(json_object_get(dev, "name")),
			    "dev-b");
	assert_int_equal(
	    json_integer_value(json_object_get(dev, "instance_id")), 1);
	assert_string_equal(
	    json_string_value(json_object_get(dev, "vmsd_name")), "dev-b");
	dev = json_array_get(json_object_get(dev, "fields"), 0);
	assert_string_equal(json_string_value(json_object_get(dev, "type")),
			    "buffer");
	assert_int_equal(json_integer_value(json_object_get(dev, "size")), 6);
	json_decref(root);
	free(b);
}

static void test_return_path_and_ping_commands(void **state)
{
	static const uint8_t ping[] = {
	    KV_SEC_COMMAND, 0, KV_MIG_CMD_PING, 0, 4, 1, 2, 3, 4};
	struct variant v = {.return_path = true,
			    .inject = ping,
			    .inject_len = sizeof(ping),
			    .trailer = "ignored while the return path is open"};
	struct kv_load_result res;
	struct kv_error err = {0};
	struct side dst;
	uint8_t *b;
	size_t n;

	(void)state;
	b = save_stream(true, &n);
	assert_int_equal(load_into(&dst, b, n, &res, &err), 0);
	assert_true(res.return_path_requested);
	kv_savevm_free(dst.sv);
	free(b);

	b = craft(&v, &n);
	assert_int_equal(load_into(&dst, b, n, &res, &err), 0);
	assert_true(res.return_path_requested);
	assert_false(dst.fake.cleanup_failed);
	kv_savevm_free(dst.sv);
	free(b);
}

/* ---- rejections ---- */

static void test_reject_bad_magic(void **state)
{
	struct variant v = {.magic = 0x47455420 /* "GET " */};

	(void)state;
	expect_reject(&v, "bad magic 47 45 54 20 ('GET ')");
	expect_reject(&v, "stream offset 0, file header");
}

static void test_reject_bad_version(void **state)
{
	struct variant v = {.version = 2};

	(void)state;
	expect_reject(&v, "unsupported stream version 2");
}

static void test_reject_wrong_machine(void **state)
{
	struct variant v = {.machine = "q35"};

	(void)state;
	expect_reject(&v, "stream is for machine 'q35', this destination is "
			  "'" MACHINE "'");
}

static void test_reject_unknown_section_type(void **state)
{
	static const uint8_t t9[] = {0x09};
	static const uint8_t t5[] = {KV_SEC_SUBSECTION};
	static const uint8_t cfg[] = {KV_SEC_CONFIGURATION};
	struct variant v = {.inject = t9, .inject_len = 1};

	(void)state;
	expect_reject(&v, "stream offset 20, section unknown: unknown or "
			  "misplaced section type 0x09");
	v.inject = t5;
	expect_reject(&v, "section type 0x05");
	v.inject = cfg;
	expect_reject(&v, "section type 0x07");
}

static void test_reject_unknown_command(void **state)
{
	static const uint8_t cmd[] = {KV_SEC_COMMAND, 0, 0x42, 0, 0};
	static const uint8_t bad_len[] = {KV_SEC_COMMAND, 0, 1, 0, 2, 0, 0};
	struct variant v = {.inject = cmd, .inject_len = sizeof(cmd)};

	(void)state;
	expect_reject(&v, "unknown command 66");
	v.inject = bad_len;
	v.inject_len = sizeof(bad_len);
	expect_reject(&v, "OPEN_RETURN_PATH with length 2");
}

static void test_reject_unknown_idstr(void **state)
{
	struct variant v = {.fake_idstr = "ghost"};

	(void)state;
	expect_reject(&v, "section START id 0 'ghost' instance 0: unknown "
			  "section 'ghost'");
}

static void test_reject_unknown_instance(void **state)
{
	struct variant v = {.dev_a_instance = 7};

	(void)state;
	expect_reject(&v, "unknown instance 7 of 'dev-a'");
}

/* Load v into a destination whose 'dev-a' and 'dev-b' counts are set
 * by an option; returns the load's result. */
static int load_counted(const struct variant *v, struct kv_error *err)
{
	struct side dst;
	uint8_t *b;
	size_t n;
	int ret;

	b = craft(v, &n);
	side_init(&dst, false);
	assert_int_equal(kv_savevm_set_count_option(dst.sv, "dev-a", "widget",
						    "--widgets", err),
			 0);
	assert_int_equal(kv_savevm_set_count_option(dst.sv, "dev-b", "gadget",
						    "--gadgets", err),
			 0);
	{
		struct kv_stream *s = open_read_bytes(b, n);

		ret = kv_savevm_load(dst.sv, s, NULL, err);
		kv_stream_close(s);
	}
	kv_savevm_free(dst.sv);
	free(b);
	return ret;
}

/* A count set by an option (a VMM's --cpus): more or fewer instances in
 * the stream are refused naming the option and both numbers. */
static void test_reject_instance_count_names_option(void **state)
{
	struct variant v = {.dev_a_instance = 1};
	struct kv_error err = {0};
	struct kv_savevm *sv;

	(void)state;
	assert_true(load_counted(&v, &err) < 0);
	if (!strstr(err.msg, "'dev-a' instance 1: the stream's guest has at least 2 widgets (it carries widget 1), this VM was started with --widgets 1: start the destination with the source's options"))
		fail_msg("%s", err.msg);
	v = (struct variant){.skip_dev_b = true};
	kv_error_clear(&err);
	assert_true(load_counted(&v, &err) < 0);
	if (!strstr(err.msg, "the stream's guest has 0 gadgets, this VM was started with --gadgets 1: start the destination with the source's options"))
		fail_msg("%s", err.msg);
	sv = kv_savevm_new(MACHINE);
	kv_error_clear(&err);
	assert_int_equal(kv_savevm_set_count_option(sv, "cpu", "vCPU", "--cpus",
						    &err),
			 -ENOENT);
	assert_non_null(strstr(err.msg, "no state handler 'cpu'"));
	kv_savevm_free(sv);
}

static void test_reject_footer_mismatch(void **state)
{
	struct variant v = {.footer_id_xor = 5};

	(void)state;
	expect_reject(&v, "section PART id 0 'fake'");
	expect_reject(&v, "has section id 5, expected 0");
}

static void test_reject_version_too_new(void **state)
{
	struct variant v = {.fake_version = 3};

	(void)state;
	expect_reject(&v, "'fake' instance 0: version 3 is newer than "
			  "supported version 2");
	v = (struct variant){.dev_a_version = 9};
	expect_reject(&v, "'dev-a' instance 0: version 9 is newer");
}

static void test_older_device_version_accepted(void **state)
{
	struct variant v = {.dev_a_version = 1};
	struct kv_error err = {0};
	struct side dst;
	uint8_t *b;
	size_t n;

	(void)state;
	b = craft(&v, &n);
	assert_int_equal(load_into(&dst, b, n, NULL, &err), 0);
	assert_int_equal(dst.a.x, DEV_A_X);
	assert_true(dst.a.y == 0);
	kv_savevm_free(dst.sv);
	free(b);
}

static void test_reject_part_unknown_id(void **state)
{
	struct variant v = {.part_id_xor = 9};

	(void)state;
	expect_reject(&v, "section PART id 9: section id 9 was not opened by "
			  "a START section");
}

static void test_reject_missing_end(void **state)
{
	struct variant v = {.skip_end = true};

	(void)state;
	expect_reject(&v, "'fake' got START but no END section");
}

static void test_reject_missing_device(void **state)
{
	struct variant v = {.skip_dev_b = true};

	(void)state;
	expect_reject(&v, "stream incomplete: device 'dev-b' instance 1 "
			  "never arrived");
}

static void test_reject_device_twice(void **state)
{
	struct variant v = {.dev_a_twice = true};

	(void)state;
	expect_reject(&v, "'dev-a' arrived twice");
}

static void test_reject_handler_error_wrapped(void **state)
{
	struct variant v = {0};
	struct kv_error err = {0};
	struct side dst;
	uint8_t *b;
	size_t n;

	(void)state;
	b = craft(&v, &n);
	/* Second PART carries counter 1 at a fixed place: corrupt it. */
	b[20 + 28 + 15 + 9] = 7;
	assert_true(load_into(&dst, b, n, NULL, &err) < 0);
	assert_non_null(strstr(err.msg, "stream offset 63, section PART id 0 "
					"'fake': fake: part record 7, "
					"expected 1"));
	assert_true(dst.fake.cleanup_failed);
	kv_savevm_free(dst.sv);
	free(b);
}

static void test_reject_truncated_everywhere(void **state)
{
	struct kv_error err;
	struct side dst;
	uint8_t *b;
	size_t n, cut;

	(void)state;
	b = save_stream(false, &n);
	for (cut = 0; cut < n; cut++) {
		kv_error_clear(&err);
		if (load_into(&dst, b, cut, NULL, &err) >= 0)
			fail_msg("stream cut at %zu of %zu was accepted", cut,
				 n);
		if (!strstr(err.msg, "unexpected end of stream"))
			fail_msg("cut at %zu: '%s'", cut, err.msg);
		assert_int_equal(dst.fake.load_cleanups, 1);
		assert_true(dst.fake.cleanup_failed);
		kv_savevm_free(dst.sv);
	}
	free(b);
}

static void test_reject_malformed_json(void **state)
{
	struct variant v = {.json = "{\"page_size\":4096,\"devices\":["};

	(void)state;
	expect_reject(&v, "section VMDESCRIPTION: VM description is not valid "
			  "JSON");
	expect_reject(&v, "line 1, column");
	v.json = "{\"devices\":[]}";
	expect_reject(&v, "no integer \"page_size\"");
	v.json = "{\"page_size\":65536,\"devices\":[]}";
	expect_reject(&v, "page_size 65536, expected 4096");
	v.json = "{\"page_size\":4096,\"devices\":[{\"name\":\"x\"}]}";
	expect_reject(&v, "devices[0] ('x') has no string \"vmsd_name\"");
	v.json = "[]";
	expect_reject(&v, "top level is not a JSON object");
}

static void test_reject_garbage_after_description(void **state)
{
	struct variant v = {.trailer = "X"};

	(void)state;
	expect_reject(&v, "unexpected data after the VM description (next "
			  "byte 0x58)");
}

/* ---- section verification (--verify-ram's kvmig-verify record) ---- */

/* Offset of the payload of the START/FULL section idstr/instance. */
static size_t payload_at(const uint8_t *b, size_t n, const char *idstr,
			 uint32_t instance, uint32_t version)
{
	uint8_t tail[64];
	size_t len = strlen(idstr), tl = 1 + len + 8;

	tail[0] = (uint8_t)len;
	memcpy(tail + 1, idstr, len);
	for (int i = 0; i < 4; i++) {
		tail[1 + len + i] = (uint8_t)(instance >> (24 - 8 * i));
		tail[5 + len + i] = (uint8_t)(version >> (24 - 8 * i));
	}
	for (size_t i = 5; i + tl <= n; i++)
		if (!memcmp(b + i, tail, tl) &&
		    (b[i - 5] == KV_SEC_FULL || b[i - 5] == KV_SEC_START))
			return i + tl;
	fail_msg("no section '%s' in the stream", idstr);
	return 0;
}

static void test_verify_round_trip(void **state)
{
	struct kv_error err = {0};
	struct side dst;
	uint8_t *b;
	size_t n;

	(void)state;
	b = save_stream_v(false, true, &n);
	/* count 3 (fake, dev-a, dev-b), then 3 x (id, digest) */
	assert_int_equal(b[payload_at(b, n, KV_SAVEVM_VERIFY_IDSTR, 0, 1) + 3],
			 3);
	assert_int_equal(load_into_v(&dst, true, b, n, NULL, &err), 0);
	assert_string_equal(err.msg, "");
	assert_true(dst.a.y == DEV_A_Y);
	kv_savevm_free(dst.sv);
	free(b);
}

/* Every byte of every device payload, flipped: refused naming the
 * section (dev-a's and dev-b's loaders accept any value). */
static void test_verify_refuses_any_flipped_byte(void **state)
{
	static const struct {
		const char *idstr;
		uint32_t instance, version;
		size_t len;
		const char *name;
	} secs[] = {
	    {"dev-a", 0, 2, 12, "section 'dev-a' instance 0 (section id 1) differs from what the source sent"},
	    {"dev-b", 1, 1, 6, "section 'dev-b' instance 1 (section id 2) differs from what the source sent"},
	};
	struct kv_error err;
	struct side dst;
	uint8_t *b;
	size_t n;

	(void)state;
	b = save_stream_v(false, true, &n);
	for (size_t s = 0; s < 2; s++) {
		size_t at = payload_at(b, n, secs[s].idstr, secs[s].instance,
				       secs[s].version);

		for (size_t i = 0; i < secs[s].len; i++) {
			memset(&err, 0, sizeof(err));
			b[at + i] ^= 0x04;
			assert_true(load_into_v(&dst, true, b, n, NULL, &err) < 0);
			if (!strstr(err.msg, secs[s].name))
				fail_msg("byte %zu of '%s': '%s'", i,
					 secs[s].idstr, err.msg);
			assert_true(dst.fake.cleanup_failed);
			kv_savevm_free(dst.sv);
			b[at + i] ^= 0x04;
		}
	}
	free(b);
}

/* A destination without it does not know the record; one with it wants
 * it; a handler registered after it is refused. */
static void test_verify_both_sides(void **state)
{
	struct kv_error err = {0};
	struct side dst;
	uint8_t *b;
	size_t n;
	int dummy;

	(void)state;
	b = save_stream_v(false, true, &n);
	assert_true(load_into_v(&dst, false, b, n, NULL, &err) < 0);
	assert_non_null(strstr(err.msg, "unknown section 'kvmig-verify'"));
	kv_savevm_free(dst.sv);
	free(b);
	memset(&err, 0, sizeof(err));
	b = save_stream_v(false, false, &n);
	assert_true(load_into_v(&dst, true, b, n, NULL, &err) < 0);
	assert_non_null(strstr(err.msg, "device 'kvmig-verify' instance 0 never arrived"));
	memset(&err, 0, sizeof(err));
	assert_int_equal(kv_savevm_register_device(dst.sv, "late", 0,
						   &dev_b_desc, KV_PRI_DEFAULT,
						   &dummy, &err),
			 -EBUSY);
	assert_non_null(strstr(err.msg, "after section verification"));
	kv_savevm_free(dst.sv);
	free(b);
}


/* ---- postcopy (docs/FORMAT.md §12): the loader's commands ---- */

#define PC_BLOCK_LEN 0x10000U

/* The destination's postcopy, as a record of what the loader asked. */
struct pc_calls {
	struct kv_savevm_pc_ops ops; /* the loader keeps a pointer to it */
	char seq[128];
	struct kv_pc_block block;
	struct kv_pc_blocks blocks;
	int pongs;
};

static void pc_note(struct pc_calls *c, const char *what)
{
	size_t n = strlen(c->seq);

	snprintf(c->seq + n, sizeof(c->seq) - n, "%s%s", n ? "," : "", what);
}

static int pc_advise(void *o, const struct kv_pc_advise *a,
		     struct kv_error *err)
{
	(void)err;
	assert_true(a->has_sizes);
	pc_note(o, "advise");
	return 0;
}

static const struct kv_pc_blocks *pc_blocks(void *o)
{
	return &((struct pc_calls *)o)->blocks;
}

static int pc_discard(void *o, const struct kv_pc_discard *d,
		      struct kv_error *err)
{
	(void)err;
	assert_int_equal(d->block, 0);
	pc_note(o, "discard");
	return 0;
}

static int pc_listen(void *o, struct kv_error *err)
{
	(void)err;
	pc_note(o, "listen");
	return 0;
}

static int pc_run(void *o, struct kv_error *err)
{
	(void)err;
	pc_note(o, "run");
	return 0;
}

static int pc_pong(void *o, uint32_t value, struct kv_error *err)
{
	(void)value;
	(void)err;
	((struct pc_calls *)o)->pongs++;
	return 0;
}

static int pc_recv_bitmap(void *o, size_t block, struct kv_error *err)
{
	(void)err;
	assert_int_equal(block, 0);
	pc_note(o, "bitmap");
	return 0;
}

static int pc_resume(void *o, struct kv_error *err)
{
	(void)err;
	pc_note(o, "resume");
	return 0;
}

static struct kv_savevm_pc_ops pc_ops_for(struct pc_calls *c)
{
	memset(c, 0, sizeof(*c));
	c->block = (struct kv_pc_block){"pc.ram", PC_BLOCK_LEN, 4096};
	c->blocks = (struct kv_pc_blocks){&c->block, 1};
	return (struct kv_savevm_pc_ops){
	    .advise = pc_advise,
	    .blocks = pc_blocks,
	    .discard = pc_discard,
	    .listen = pc_listen,
	    .run = pc_run,
	    .send_pong = pc_pong,
	    .recv_bitmap = pc_recv_bitmap,
	    .resume = pc_resume,
	    .opaque = c,
	};
}

/* What a postcopy source writes: ADVISE, setup, one PART, a discard, the
 * package (LISTEN, both devices, RUN), the other PARTs, END, EOF. */
static uint8_t *save_postcopy_stream(size_t *len)
{
	const struct kv_pc_range r = {0, 2 * 4096};
	struct kv_pc_advise a = {true, 4096, 4096};
	uint8_t p[KV_PC_DISCARD_MAX_LEN];
	struct kv_error err = {0};
	struct side src;
	struct kv_stream *s;
	char path[64];
	int ret = 0, n;

	side_init(&src, true);
	s = open_write(path, sizeof(path));
	assert_int_equal(kv_savevm_save_header(src.sv, s, true, &err), 0);
	kv_pc_advise_encode(&a, p);
	assert_int_equal(kv_savevm_save_command(s, KV_MIG_CMD_POSTCOPY_ADVISE,
						p, KV_PC_ADVISE_LEN, &err),
			 0);
	assert_int_equal(kv_savevm_save_setup(src.sv, s, &err), 0);
	assert_int_equal(kv_savevm_save_iterate(src.sv, s, &err), 0);
	n = kv_pc_discard_encode("pc.ram", &r, 1, p, &err);
	assert_true(n > 0);
	assert_int_equal(kv_savevm_save_command(
			     s, KV_MIG_CMD_POSTCOPY_RAM_DISCARD, p,
			     (uint16_t)n, &err),
			 0);
	assert_int_equal(kv_savevm_save_pc_package(src.sv, s, &err), 0);
	while (ret == 0)
		ret = kv_savevm_save_iterate(src.sv, s, &err);
	assert_int_equal(ret, 1);
	assert_int_equal(kv_savevm_save_pc_complete(src.sv, s, &err), 0);
	kv_savevm_save_cleanup(src.sv, false);
	kv_savevm_free(src.sv);
	return close_and_read(s, path, len);
}

static int load_pc(struct side *dst, struct pc_calls *calls, bool with_ops,
		   const uint8_t *b, size_t n, struct kv_load_result *res,
		   struct kv_error *err)
{
	struct kv_stream *s = open_read_bytes(b, n);
	int ret;

	calls->ops = pc_ops_for(calls);
	side_init(dst, false);
	if (with_ops)
		kv_savevm_set_postcopy(dst->sv, &calls->ops);
	ret = kv_savevm_load(dst->sv, s, res, err);
	kv_stream_close(s);
	return ret;
}

/* The whole order, through the listen thread: the devices came in the
 * package, the live handler's last parts and END after it, no VM
 * description (QEMU's postcopy stream has none). */
static void test_postcopy_round_trip(void **state)
{
	struct kv_load_result res;
	struct kv_error err = {0};
	struct pc_calls calls;
	struct side dst;
	uint8_t *b;
	size_t n;

	(void)state;
	b = save_postcopy_stream(&n);
	if (load_pc(&dst, &calls, true, b, n, &res, &err) < 0)
		fail_msg("%s", err.msg);
	assert_true(res.postcopy);
	assert_string_equal(calls.seq, "advise,discard,listen,run");
	assert_true(dst.fake.got_end);
	assert_false(dst.fake.cleanup_failed);
	assert_int_equal(dst.a.x, DEV_A_X);
	assert_memory_equal(dst.b.blob, dev_b_blob, sizeof(dev_b_blob));
	kv_savevm_free(dst.sv);

	/* Without postcopy here the first command is refused. */
	assert_true(load_pc(&dst, &calls, false, b, n, &res, &err) < 0);
	if (!strstr(err.msg, "POSTCOPY_ADVISE: it migrates with postcopy-ram, which is off on this destination"))
		fail_msg("%s", err.msg);
	kv_savevm_free(dst.sv);
	free(b);
}

/* Where the PACKAGED command's bytes end in a saved stream. */
static size_t package_end(const uint8_t *b, size_t n)
{
	for (size_t i = 0; i + 9 <= n; i++) {
		uint32_t len;

		if (b[i] != KV_SEC_COMMAND || b[i + 1] != 0 ||
		    b[i + 2] != KV_MIG_CMD_PACKAGED || b[i + 3] != 0 ||
		    b[i + 4] != 4)
			continue;
		len = (uint32_t)b[i + 5] << 24 | (uint32_t)b[i + 6] << 16 |
		      (uint32_t)b[i + 7] << 8 | b[i + 8];
		return i + 9 + len;
	}
	fail_msg("no PACKAGED command in the stream");
	return 0;
}

/* The link breaks after RUN: the load pauses with its state kept, and a
 * new stream (no header: RECV_BITMAP, POSTCOPY_RESUME, then the rest)
 * completes it. */
static void test_postcopy_pause_and_resume(void **state)
{
	static const uint8_t handshake[] = {
	    KV_SEC_COMMAND, 0, KV_MIG_CMD_RECV_BITMAP, 0, 7, 6, 'p', 'c', '.',
	    'r', 'a', 'm', KV_SEC_COMMAND, 0, KV_MIG_CMD_POSTCOPY_RESUME, 0, 0};
	struct kv_load_result res;
	struct kv_error err = {0};
	struct pc_calls calls;
	struct kv_stream *s;
	struct side dst;
	uint8_t *b, *rest;
	size_t n, cut;

	(void)state;
	b = save_postcopy_stream(&n);
	cut = package_end(b, n);
	assert_true(load_pc(&dst, &calls, true, b, cut, &res, &err) < 0);
	assert_true(res.postcopy);
	assert_true(kv_savevm_load_paused(dst.sv));
	assert_false(dst.fake.cleanup_failed);
	assert_int_equal(dst.fake.load_cleanups, 0);
	rest = malloc(sizeof(handshake) + n - cut);
	memcpy(rest, handshake, sizeof(handshake));
	memcpy(rest + sizeof(handshake), b + cut, n - cut);
	kv_error_clear(&err);
	s = open_read_bytes(rest, sizeof(handshake) + n - cut);
	if (kv_savevm_load_resume(dst.sv, s, &err) < 0)
		fail_msg("%s", err.msg);
	kv_stream_close(s);
	assert_false(kv_savevm_load_paused(dst.sv));
	assert_string_equal(calls.seq, "advise,discard,listen,run,bitmap,resume");
	assert_true(dst.fake.got_end);
	assert_int_equal(dst.fake.load_cleanups, 1);
	kv_savevm_free(dst.sv);
	free(rest);
	free(b);
}

/* A crafted command after the configuration: refused naming what. */
static void expect_pc_reject(const uint8_t *cmds, size_t len,
			     const char *needle)
{
	struct variant v = {.return_path = true, .inject = cmds,
			    .inject_len = len};
	struct kv_error err = {0};
	struct pc_calls calls;
	struct side dst;
	uint8_t *b;
	size_t n;

	b = craft(&v, &n);
	assert_true(load_pc(&dst, &calls, true, b, n, NULL, &err) < 0);
	if (!strstr(err.msg, needle))
		fail_msg("error '%s' does not contain '%s'", err.msg, needle);
	assert_true(dst.fake.cleanup_failed);
	kv_savevm_free(dst.sv);
	free(b);
}

#define PC_ADVISE                                                              \
	KV_SEC_COMMAND, 0, 3, 0, 16, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0,    \
	    0, 0, 0x10, 0
#define PC_LISTEN KV_SEC_COMMAND, 0, 4, 0, 0
#define PC_RUN	  KV_SEC_COMMAND, 0, 5, 0, 0

static void test_postcopy_rejects(void **state)
{
	static const uint8_t listen_twice[] = {PC_ADVISE, PC_LISTEN, PC_LISTEN};
	static const uint8_t run_first[] = {PC_ADVISE, PC_RUN};
	static const uint8_t advise_twice[] = {PC_ADVISE, PC_ADVISE};
	static const uint8_t big_page[] = {KV_SEC_COMMAND, 0, 3, 0, 16,
					   0, 0, 0, 0, 0, 0x20, 0, 0,
					   0, 0, 0, 0, 0, 0, 0x10, 0};
	/* pc.ram's range [0x10000, +0x1000): past its 64 KiB */
	static const uint8_t discard_past[] = {
	    PC_ADVISE, KV_SEC_COMMAND, 0, 6, 0, 25, 0, 6, 'p', 'c', '.', 'r',
	    'a', 'm', 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0};
	static const uint8_t discard_unknown[] = {
	    PC_ADVISE, KV_SEC_COMMAND, 0, 6, 0, 22, 0, 3, 'r', 'o', 'm', 0,
	    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0};
	static const uint8_t packaged_empty[] = {PC_ADVISE, KV_SEC_COMMAND, 0,
						 8, 0, 4, 0, 0, 0, 0};
	/* A package holding an EOF section. */
	static const uint8_t packaged_eof[] = {
	    PC_ADVISE, KV_SEC_COMMAND, 0, 8, 0, 4, 0, 0, 0, 6, PC_LISTEN,
	    KV_SEC_EOF};
	static const uint8_t listen_len[] = {PC_ADVISE, KV_SEC_COMMAND, 0, 4,
					     0, 1, 0};
	static const uint8_t resume[] = {PC_ADVISE, KV_SEC_COMMAND, 0, 7, 0,
					 0};

	(void)state;
	expect_pc_reject(listen_twice, sizeof(listen_twice),
			 "POSTCOPY_LISTEN in postcopy state listening");
	expect_pc_reject(run_first, sizeof(run_first), "POSTCOPY_RUN");
	expect_pc_reject(advise_twice, sizeof(advise_twice),
			 "POSTCOPY_ADVISE");
	expect_pc_reject(big_page, sizeof(big_page), "page sizes");
	expect_pc_reject(discard_past, sizeof(discard_past),
			 "goes past the end of block 'pc.ram'");
	expect_pc_reject(discard_unknown, sizeof(discard_unknown), "rom");
	expect_pc_reject(packaged_empty, sizeof(packaged_empty), "PACKAGED");
	expect_pc_reject(packaged_eof, sizeof(packaged_eof),
			 "inside the PACKAGED command");
	expect_pc_reject(listen_len, sizeof(listen_len), "POSTCOPY_LISTEN");
	expect_pc_reject(resume, sizeof(resume), "POSTCOPY_RESUME");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_registry_order),
	    cmocka_unit_test(test_registry_rejects),
	    cmocka_unit_test(test_round_trip),
	    cmocka_unit_test(test_saver_matches_builder),
	    cmocka_unit_test(test_vm_description_layout),
	    cmocka_unit_test(test_return_path_and_ping_commands),
	    cmocka_unit_test(test_reject_bad_magic),
	    cmocka_unit_test(test_reject_bad_version),
	    cmocka_unit_test(test_reject_wrong_machine),
	    cmocka_unit_test(test_reject_unknown_section_type),
	    cmocka_unit_test(test_reject_unknown_command),
	    cmocka_unit_test(test_reject_unknown_idstr),
	    cmocka_unit_test(test_reject_unknown_instance),
	    cmocka_unit_test(test_reject_instance_count_names_option),
	    cmocka_unit_test(test_reject_footer_mismatch),
	    cmocka_unit_test(test_reject_version_too_new),
	    cmocka_unit_test(test_older_device_version_accepted),
	    cmocka_unit_test(test_reject_part_unknown_id),
	    cmocka_unit_test(test_reject_missing_end),
	    cmocka_unit_test(test_reject_missing_device),
	    cmocka_unit_test(test_reject_device_twice),
	    cmocka_unit_test(test_reject_handler_error_wrapped),
	    cmocka_unit_test(test_reject_truncated_everywhere),
	    cmocka_unit_test(test_reject_malformed_json),
	    cmocka_unit_test(test_reject_garbage_after_description),
	    cmocka_unit_test(test_verify_round_trip),
	    cmocka_unit_test(test_verify_refuses_any_flipped_byte),
	    cmocka_unit_test(test_verify_both_sides),
	    cmocka_unit_test(test_postcopy_round_trip),
	    cmocka_unit_test(test_postcopy_rejects),
	    cmocka_unit_test(test_postcopy_pause_and_resume),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
