/* SPDX-License-Identifier: MIT */
/*
 * One QMP client's protocol, without sockets: split the byte stream into
 * JSON documents, parse each with jansson, check it, run the command and
 * queue the reply.
 *
 * Framing: jansson parses whole buffers, so we find where a document ends
 * ourselves by counting { [ and } ] outside strings. A document that does
 * not start with { or [ is a bare token (a number, a string, a word) that
 * ends at whitespace or a bracket. After a bare token that is not valid
 * JSON we skip to the next newline, { or [ so a burst of garbage costs one
 * error reply, not one per byte. Brackets that do not match make jansson
 * fail on the framed document, which is answered and skipped: framing
 * always moves forward, and the connection stays usable.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "monitor/qmp_internal.h"

#define QMP_SUBSYS "qmp"

/* ---- buffers ---- */

static int buf_append(struct kv_qmp_buf *b, const char *p, size_t n)
{
	size_t need;

	if (b->head && b->head == b->len)
		b->head = b->len = 0;
	need = b->len + n;
	if (need > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		char *d;

		while (cap < need)
			cap *= 2;
		d = realloc(b->data, cap);
		if (!d)
			return -ENOMEM;
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}

void kv_qmp_buf_consume(struct kv_qmp_buf *b, size_t n)
{
	if (n > kv_qmp_buf_pending(b))
		n = kv_qmp_buf_pending(b);
	b->head += n;
	if (b->head == b->len)
		b->head = b->len = 0;
}

static void buf_free(struct kv_qmp_buf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

/* ---- client ---- */

struct kv_qmp_client *kv_qmp_client_new(int fd, unsigned id,
					const struct kv_qmp_ops *ops)
{
	struct kv_qmp_client *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->fd = fd;
	c->id = id;
	c->ops = ops;
	return c;
}

void kv_qmp_client_free(struct kv_qmp_client *c)
{
	if (!c)
		return;
	buf_free(&c->in);
	buf_free(&c->out);
	free(c);
}

int kv_qmp_client_send(struct kv_qmp_client *c, const json_t *msg)
{
	char *text = json_dumps(msg, JSON_PRESERVE_ORDER);
	size_t n;
	int rc;

	if (!text)
		return -ENOMEM;
	n = strlen(text);
	if (kv_qmp_buf_pending(&c->out) + n + 2 > KV_QMP_MAX_OUTPUT) {
		free(text);
		return -ENOBUFS;
	}
	rc = buf_append(&c->out, text, n);
	if (!rc)
		rc = buf_append(&c->out, "\r\n", 2);
	free(text);
	return rc;
}

/*
 * We announce a QEMU version, not our own: QMP clients (libvirt, the
 * qemu.qmp Python library, management scripts) read version.qemu to decide
 * which commands and arguments they may use, and refuse or misbehave on a
 * version they do not know. 8.2.0 matches the commands we implement; the
 * "package" string says who really answers.
 */
json_t *kv_qmp_version(void)
{
	return json_pack("{s:{s:i,s:i,s:i},s:s}", "qemu", "major", 8, "minor",
			 2, "micro", 0, "package", "kvmig 0.1.0");
}

json_t *kv_qmp_greeting(void)
{
	json_t *version = kv_qmp_version();

	if (!version)
		return NULL;
	return json_pack("{s:{s:o,s:[]}}", "QMP", "version", version,
			 "capabilities");
}

/* ---- replies ---- */

/* A truncated message may end inside a UTF-8 sequence, which jansson
 * refuses; cut such a tail off. */
static void trim_partial_utf8(char *s)
{
	size_t n = strlen(s), lead = n, want;
	unsigned char ch;

	while (lead > 0 && ((unsigned char)s[lead - 1] & 0xc0) == 0x80 &&
	       n - lead < 3)
		lead--;
	if (lead == 0)
		return;
	ch = (unsigned char)s[lead - 1];
	if (ch < 0x80)
		return;
	want = ch >= 0xf0 ? 4 : ch >= 0xe0 ? 3 : ch >= 0xc0 ? 2 : 1;
	if (n - (lead - 1) < want)
		s[lead - 1] = '\0';
}

static json_t *desc_string(const char *text)
{
	char buf[KV_ERROR_MSG_MAX];
	json_t *j;

	snprintf(buf, sizeof(buf), "%s", text);
	trim_partial_utf8(buf);
	j = json_string(buf);
	return j ? j : json_string("(error message is not valid UTF-8)");
}

static int send_reply(struct kv_qmp_client *c, json_t *reply, json_t *id)
{
	int rc;

	if (!reply)
		return -ENOMEM;
	if (id)
		json_object_set(reply, "id", id);
	rc = kv_qmp_client_send(c, reply);
	json_decref(reply);
	return rc;
}

static int reply_error(struct kv_qmp_client *c, json_t *id, const char *cls,
		       const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int reply_error(struct kv_qmp_client *c, json_t *id, const char *cls,
		       const char *fmt, ...)
{
	char text[KV_ERROR_MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	return send_reply(c,
			  json_pack("{s:{s:s,s:o}}", "error", "class", cls,
				    "desc", desc_string(text)),
			  id);
}

/* ---- argument checks ---- */

static const char *arg_type_name(enum kv_qmp_arg_type t)
{
	switch (t) {
	case KV_QMP_ARG_STRING:
		return "string";
	case KV_QMP_ARG_BOOL:
		return "boolean";
	case KV_QMP_ARG_INT:
		return "integer";
	case KV_QMP_ARG_NUMBER:
		return "number";
	case KV_QMP_ARG_OBJECT:
		return "object";
	case KV_QMP_ARG_ARRAY:
		return "array";
	case KV_QMP_ARG_ANY:
		return "any";
	}
	return "?";
}

static bool arg_type_ok(enum kv_qmp_arg_type t, const json_t *v)
{
	switch (t) {
	case KV_QMP_ARG_STRING:
		return json_is_string(v);
	case KV_QMP_ARG_BOOL:
		return json_is_boolean(v);
	case KV_QMP_ARG_INT:
		return json_is_integer(v);
	case KV_QMP_ARG_NUMBER:
		return json_is_number(v);
	case KV_QMP_ARG_OBJECT:
		return json_is_object(v);
	case KV_QMP_ARG_ARRAY:
		return json_is_array(v);
	case KV_QMP_ARG_ANY:
		return true;
	}
	return false;
}

static const struct kv_qmp_arg *arg_find(const struct kv_qmp_command *cmd,
					 const char *name)
{
	const struct kv_qmp_arg *a;

	for (a = cmd->args; a < cmd->args + KV_QMP_MAX_ARGS && a->name; a++)
		if (!strcmp(a->name, name))
			return a;
	return NULL;
}

static const char *const request_members[] = {"execute", "arguments", "id",
					      NULL};

static bool name_in(const char *const *names, const char *name)
{
	for (; *names; names++)
		if (!strcmp(*names, name))
			return true;
	return false;
}

/* The first key of obj that is neither a parameter of cmd (when given)
 * nor in names (when given), or NULL. */
static const char *first_unknown_key(json_t *obj,
				     const struct kv_qmp_command *cmd,
				     const char *const *names)
{
	void *it;

	for (it = json_object_iter(obj); it;
	     it = json_object_iter_next(obj, it)) {
		const char *key = json_object_iter_key(it);

		if (cmd && !arg_find(cmd, key))
			return key;
		if (names && !name_in(names, key))
			return key;
	}
	return NULL;
}

/* Declared parameters first, in table order, then anything extra: the
 * order QEMU reports them in. */
static int check_args(const struct kv_qmp_command *cmd, json_t *args,
		      struct kv_error *err)
{
	const struct kv_qmp_arg *a;
	const char *key;
	json_t *v;

	if (cmd->args[0].name &&
	    !strcmp(cmd->args[0].name, KV_QMP_ARGS_FROM_HANDLER))
		return 0;
	for (a = cmd->args; a < cmd->args + KV_QMP_MAX_ARGS && a->name; a++) {
		v = json_object_get(args, a->name);
		if (!v && !a->optional)
			return kv_error_set(
			    err, -EINVAL, "Parameter '%s' is missing", a->name);
		if (v && !arg_type_ok(a->type, v))
			return kv_qmp_invalid_type(err, a->name,
						   arg_type_name(a->type));
	}
	key = first_unknown_key(args, cmd, NULL);
	if (key)
		return kv_error_set(err, -EINVAL,
				    "Parameter '%s' is unexpected", key);
	return 0;
}

/* ---- dispatch ---- */

static int run_command(struct kv_qmp_client *c,
		       const struct kv_qmp_command *cmd, json_t *args,
		       json_t *id)
{
	struct kv_qmp_call call = {
	    .client = c,
	    .ops = c->ops,
	    .args = args,
	};
	json_t *reply;
	int rc;

	rc = check_args(cmd, args, &call.err);
	if (!rc)
		rc = cmd->handler(&call);
	if (rc < 0) {
		json_decref(call.ret);
		if (!kv_error_is_set(&call.err))
			kv_error_set(&call.err, rc, "%s failed", cmd->name);
		return reply_error(
		    c, id, call.err_class ? call.err_class : "GenericError",
		    "%s", call.err.msg);
	}
	reply = json_object();
	if (reply)
		json_object_set_new(reply, "return",
				    call.ret ? call.ret : json_object());
	else
		json_decref(call.ret);
	return send_reply(c, reply, id);
}

/* Checks the request's shape, then runs it. */
static int dispatch(struct kv_qmp_client *c, json_t *req)
{
	json_t *id = json_object_get(req, "id");
	json_t *exec, *args;
	const struct kv_qmp_command *cmd;
	const char *key, *name;
	int rc;

	if (!json_is_object(req))
		return reply_error(c, NULL, "GenericError",
				   "QMP input must be a JSON object");
	key = first_unknown_key(req, NULL, request_members);
	if (key)
		return reply_error(c, id, "GenericError",
				   "QMP input member '%s' is unexpected", key);
	exec = json_object_get(req, "execute");
	if (!exec)
		return reply_error(c, id, "GenericError",
				   "QMP input lacks member 'execute'");
	if (!json_is_string(exec))
		return reply_error(
		    c, id, "GenericError",
		    "QMP input member 'execute' must be a string");
	args = json_object_get(req, "arguments");
	if (args && !json_is_object(args))
		return reply_error(
		    c, id, "GenericError",
		    "QMP input member 'arguments' must be an object");
	name = json_string_value(exec);
	if (!c->negotiated && strcmp(name, "qmp_capabilities"))
		return reply_error(c, id, "CommandNotFound",
				   "Expecting capabilities negotiation with 'qmp_capabilities'");
	cmd = kv_qmp_command_find(name);
	if (!cmd)
		return reply_error(c, id, "CommandNotFound",
				   "The command %s has not been found", name);
	if (args)
		return run_command(c, cmd, args, id);
	args = json_object();
	if (!args)
		return -ENOMEM;
	rc = run_command(c, cmd, args, id);
	json_decref(args);
	return rc;
}

static int handle_document(struct kv_qmp_client *c, const char *doc, size_t len,
			   bool bare)
{
	json_error_t jerr;
	json_t *req;
	int rc;

	req = json_loadb(doc, len, JSON_DECODE_ANY, &jerr);
	if (!req) {
		if (bare)
			c->fr.recovering = true;
		return reply_error(c, NULL, "GenericError",
				   "JSON parse error, %s", jerr.text);
	}
	rc = dispatch(c, req);
	json_decref(req);
	return rc;
}

/* ---- framing ---- */

static bool is_space(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

/* Before a document: skip whitespace (and garbage while recovering), note
 * where the next one starts. */
static void frame_start(struct kv_qmp_framer *f, char ch)
{
	if (f->recovering) {
		if (ch != '\n' && ch != '{' && ch != '[') {
			f->scan++;
			return;
		}
		f->recovering = false;
	}
	if (is_space(ch)) {
		f->scan++;
		return;
	}
	f->in_doc = true;
	f->start = f->scan++;
	f->depth = 0;
	f->in_string = ch == '"';
	f->escape = false;
	f->bare = ch != '{' && ch != '[';
	if (!f->bare)
		f->depth = 1;
}

/* Inside a document: returns true when the byte at scan ends it; the
 * document is then [start, scan). */
static bool frame_step(struct kv_qmp_framer *f, char ch)
{
	if (f->in_string) {
		if (f->escape)
			f->escape = false;
		else if (ch == '\\')
			f->escape = true;
		else if (ch == '"')
			f->in_string = false;
		f->scan++;
		return f->bare && !f->in_string;
	}
	if (f->bare) {
		if (is_space(ch) || strchr("{}[]\"", ch))
			return true; /* the terminator is not part of it */
		f->scan++;
		return false;
	}
	f->scan++;
	if (ch == '"') {
		f->in_string = true;
	} else if (ch == '{' || ch == '[') {
		f->depth++;
	} else if (ch == '}' || ch == ']') {
		if (--f->depth == 0)
			return true;
	}
	return false;
}

/* Drop consumed input so the buffer holds only the unfinished document. */
static void compact_input(struct kv_qmp_client *c)
{
	struct kv_qmp_framer *f = &c->fr;
	size_t keep_from = f->in_doc ? f->start : f->scan;

	if (keep_from == 0)
		return;
	memmove(c->in.data, c->in.data + keep_from, c->in.len - keep_from);
	c->in.len -= keep_from;
	f->scan -= keep_from;
	if (f->in_doc)
		f->start -= keep_from;
}

int kv_qmp_feed(struct kv_qmp_client *c, const char *buf, size_t len)
{
	struct kv_qmp_framer *f = &c->fr;
	int rc;

	if (c->quit_requested)
		return 0;
	rc = buf_append(&c->in, buf, len);
	if (rc)
		return rc;
	while (f->scan < c->in.len) {
		char ch = c->in.data[f->scan];

		if (!f->in_doc) {
			frame_start(f, ch);
			continue;
		}
		if (!frame_step(f, ch))
			continue;
		f->in_doc = false;
		rc = handle_document(c, c->in.data + f->start,
				     f->scan - f->start, f->bare);
		if (rc == -ENOBUFS)
			return rc;
		if (c->quit_requested) {
			c->in.len = 0;
			memset(f, 0, sizeof(*f));
			return 0;
		}
	}
	compact_input(c);
	if (f->in_doc && c->in.len - f->start > KV_QMP_MAX_PENDING)
		return -EMSGSIZE;
	return 0;
}
