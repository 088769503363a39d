/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target over the QMP monitor's protocol side: one input = the
 * bytes a client sends in one session. It goes through the socket-free
 * entry point (kv_qmp_client_new(-1, ...) + kv_qmp_feed) against a fake VMM
 * behind kvmig's own migration commands and options table
 * (monitor/qmp_migration.c, migration/options.c).
 *
 * Beyond "no crash, no leak, no hang", every input checks that:
 *  - kv_qmp_feed only fails with -EMSGSIZE or -ENOBUFS (drop the client);
 *  - everything queued for the peer is "\r\n"-terminated JSON objects, each
 *    exactly one reply ({"return"} or {"error": {"class", "desc"}} with
 *    QMP's classes and a non-empty desc, plus an optional "id");
 *  - framing does not depend on how the bytes arrive: the same input fed
 *    whole and in small uneven pieces gives byte-identical replies and
 *    makes the same calls into the VMM.
 * The session is "accepted" (fuzz_target_run returns 0) when the client
 * was never dropped and no reply was an error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fuzz_target.h"
#include "monitor/qmp_internal.h"
#include "monitor/qmp_migration.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_check(bool ok, const char *what, const char *detail)
{
	if (ok)
		return;
	fprintf(stderr, "fuzz_qmp: invariant broken: %s%s%s\n", what,
		detail ? ": " : "", detail ? detail : "");
	__builtin_trap();
}

/* ---- a fake VMM: deterministic, no threads, no time ---- */

struct fake_vmm {
	bool running;
	bool migrating;
	unsigned calls; /* every op call, in order, hashed below */
	unsigned long long trace;
	struct kv_qmp_mig *mig;
	struct kv_mig_params params; /* the last set_params */
};

static void note_call(struct fake_vmm *f, unsigned op)
{
	f->calls++;
	f->trace = f->trace * 1000003ULL + op;
}

static int fake_query_status(void *opaque, void **ret, struct kv_error *err)
{
	struct fake_vmm *f = opaque;

	note_call(f, 1);
	*ret = json_pack("{s:s,s:b,s:b}", "status",
			 f->running ? "running" : "paused", "running",
			 f->running, "singlestep", 0);
	return *ret ? 0 : kv_error_set(err, -ENOMEM, "out of memory");
}

static int fake_stop(void *opaque, struct kv_error *err)
{
	struct fake_vmm *f = opaque;

	note_call(f, 2);
	f->running = false;
	return 0;
}

static int fake_cont(void *opaque, struct kv_error *err)
{
	struct fake_vmm *f = opaque;

	note_call(f, 3);
	if (f->migrating)
		return kv_error_set(err, -EBUSY, "a migration is running");
	f->running = true;
	return 0;
}

static void fake_quit(void *opaque)
{
	note_call(opaque, 4);
}

static int fake_migrate(void *opaque, const char *uri,
			const struct kv_mig_params *p, struct kv_error *err)
{
	struct fake_vmm *f = opaque;

	note_call(f, 5);
	fuzz_check(p->downtime_limit_ms <= 2000000 && p->rp_timeout_ms > 0,
		   "the monitor passed parameters out of their range", uri);
	if (strncmp(uri, "tcp:", 4) && strncmp(uri, "unix:", 5))
		return kv_error_set(err, -EINVAL, "'%s': not a socket URI",
				    uri);
	if (f->migrating)
		return kv_error_set(err, -EBUSY, "already migrating");
	f->migrating = true;
	return 0;
}

static int fake_migrate_incoming(void *opaque, const char *uri,
				 struct kv_error *err)
{
	note_call(opaque, 6);
	return kv_error_set(err, -EINVAL, "'%s': not waiting for one", uri);
}

static int fake_migrate_cancel(void *opaque, struct kv_error *err)
{
	struct fake_vmm *f = opaque;

	note_call(f, 7);
	f->migrating = false;
	return 0;
}

static void fake_query_migrate(void *opaque, struct kv_vm_mig_info *info)
{
	struct fake_vmm *f = opaque;

	note_call(f, 8);
	memset(info, 0, sizeof(*info));
	info->started = f->migrating;
	info->status = KV_MIG_ACTIVE;
	info->ram_total = 1ULL << 30;
}

static int fake_set_params(void *opaque, const struct kv_mig_params *p,
			   struct kv_error *err)
{
	struct fake_vmm *f = opaque;

	(void)err;
	note_call(f, 9);
	f->params = *p;
	return 0;
}

static int fake_query_cpus(void *opaque, void **ret, struct kv_error *err)
{
	note_call(opaque, 13);
	*ret = json_pack("[{s:i,s:s,s:i,s:s}]", "cpu-index", 0, "qom-path",
			 "/machine/unattached/device[0]", "thread-id", 1,
			 "target", "x86_64");
	return *ret ? 0 : kv_error_set(err, -ENOMEM, "out of memory");
}

static int fake_powerdown(void *opaque, struct kv_error *err)
{
	struct fake_vmm *f = opaque;

	note_call(f, 14);
	if (!f->running)
		return kv_error_set(err, -EBUSY, "the guest is paused");
	return 0;
}

static void fake_init(struct fake_vmm *f, struct kv_qmp_ops *ops)
{
	const struct kv_qmp_mig_ops mig_ops = {
	    .start = fake_migrate,
	    .incoming = fake_migrate_incoming,
	    .cancel = fake_migrate_cancel,
	    .query = fake_query_migrate,
	    .set_params = fake_set_params,
	    .opaque = f,
	};

	memset(f, 0, sizeof(*f));
	f->running = true;
	f->mig = kv_qmp_mig_new(&mig_ops);
	fuzz_check(f->mig != NULL, "kv_qmp_mig_new failed", NULL);
	*ops = (struct kv_qmp_ops){
	    .query_status = fake_query_status,
	    .stop = fake_stop,
	    .cont = fake_cont,
	    .quit = fake_quit,
	    .migration = f->mig,
	    .query_cpus_fast = fake_query_cpus,
	    .system_powerdown = fake_powerdown,
	    .opaque = f,
	};
}

/* ---- one session ---- */

struct session {
	struct fake_vmm vmm;
	struct kv_qmp_ops ops;
	int feed_rc;
	bool quit;
	char *out; /* everything queued for the peer */
	size_t out_len;
};

/* Feed the input whole (piece 0) or in pieces of 1..piece bytes. */
static void run_session(struct session *s, const uint8_t *data, size_t size,
			size_t piece)
{
	struct kv_qmp_client *c;
	size_t done = 0, k = 0;

	fake_init(&s->vmm, &s->ops);
	c = kv_qmp_client_new(-1, 1, &s->ops);
	fuzz_check(c != NULL, "kv_qmp_client_new failed", NULL);
	s->feed_rc = 0;
	while (done < size && s->feed_rc == 0) {
		size_t n = piece ? 1 + (k++ % piece) : size;

		if (n > size - done)
			n = size - done;
		s->feed_rc = kv_qmp_feed(c, (const char *)data + done, n);
		done += n;
	}
	fuzz_check(s->feed_rc == 0 || s->feed_rc == -EMSGSIZE ||
		       s->feed_rc == -ENOBUFS,
		   "kv_qmp_feed failed with an unexpected code", NULL);
	fuzz_check(kv_qmp_buf_pending(&c->out) <= KV_QMP_MAX_OUTPUT,
		   "output grew past its cap", NULL);
	s->quit = c->quit_requested;
	s->out_len = kv_qmp_buf_pending(&c->out);
	s->out = malloc(s->out_len + 1);
	fuzz_check(s->out != NULL, "out of memory", NULL);
	if (s->out_len) /* an empty buffer may have no storage at all */
		memcpy(s->out, c->out.data + c->out.head, s->out_len);
	s->out[s->out_len] = '\0';
	kv_qmp_client_free(c);
	kv_qmp_mig_free(s->vmm.mig);
}

static bool known_class(const char *cls)
{
	return cls && (!strcmp(cls, "GenericError") ||
		       !strcmp(cls, "CommandNotFound"));
}

/* Check one reply; returns its error desc, or NULL for a return. */
static const char *check_reply(json_t *r, const char *line)
{
	json_t *e = json_object_get(r, "error");
	const char *key, *desc;
	json_t *v;

	fuzz_check(json_is_object(r), "a reply is not an object", line);
	json_object_foreach(r, key, v)
	{
		fuzz_check(!strcmp(key, "return") || !strcmp(key, "error") ||
			       !strcmp(key, "id"),
			   "a reply has an unexpected member", line);
	}
	fuzz_check(!json_object_get(r, "return") != !e,
		   "a reply must have exactly one of return and error", line);
	if (!e)
		return NULL;
	desc = json_string_value(json_object_get(e, "desc"));
	fuzz_check(
	    json_is_object(e) && json_object_size(e) == 2 &&
		known_class(json_string_value(json_object_get(e, "class"))) &&
		desc && desc[0],
	    "a malformed error reply", line);
	return desc;
}

/* Every reply well-formed; the first error's desc goes to err. */
static int check_output(struct session *s, struct kv_error *err)
{
	char *p = s->out, *end = s->out + s->out_len;
	int ret = 0;

	while (p < end) {
		char *nl = memchr(p, '\n', (size_t)(end - p));
		json_error_t jerr;
		const char *desc;
		json_t *r;

		fuzz_check(nl && nl > p && nl[-1] == '\r',
			   "a reply is not \\r\\n-terminated", p);
		nl[-1] = '\0';
		r = json_loads(p, 0, &jerr);
		fuzz_check(r != NULL, "a reply is not valid JSON", p);
		desc = check_reply(r, p);
		if (desc && ret == 0)
			ret = kv_error_set(err, -EINVAL, "%s", desc);
		json_decref(r);
		nl[-1] = '\r';
		p = nl + 1;
	}
	return ret;
}

int fuzz_target_run(const uint8_t *data, size_t size, struct kv_error *err)
{
	struct session whole, pieces;
	int ret;

	kv_error_clear(err);
	run_session(&whole, data, size, 0);
	run_session(&pieces, data, size, 7);
	ret = check_output(&whole, err);
	if (whole.feed_rc == 0 && pieces.feed_rc == 0) {
		fuzz_check(whole.out_len == pieces.out_len &&
			       !memcmp(whole.out, pieces.out, whole.out_len),
			   "replies depend on how the input was split", NULL);
		fuzz_check(whole.vmm.calls == pieces.vmm.calls &&
			       whole.vmm.trace == pieces.vmm.trace &&
			       whole.quit == pieces.quit,
			   "VMM calls depend on how the input was split", NULL);
	}
	if (whole.feed_rc < 0 && ret == 0)
		ret = kv_error_set(err, whole.feed_rc,
				   "the monitor dropped the client (%s)",
				   whole.feed_rc == -EMSGSIZE ? "document too "
								"large"
							      : "output full");
	free(whole.out);
	free(pieces.out);
	return ret;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kv_error err = {0};

	fuzz_target_run(data, size, &err);
	return 0;
}
