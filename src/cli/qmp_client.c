/* SPDX-License-Identifier: MIT */
/* A small synchronous QMP client over unix and tcp sockets (jansson),
 * through a channel (io/channel.h): a plain socket, or TLS over it. */
#define _GNU_SOURCE
#include "cli/qmp_client.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "base/clock.h"
#include "io/channel.h"
#include "io/tls.h"

#define MS_NS 1000000LL

struct kv_qmpc {
	struct kv_chan *chan;
	char addr[300];
	char *buf; /* bytes received and not yet parsed */
	size_t len, cap;
	json_t *greeting;
	json_t *events; /* array, oldest first */
	json_int_t next_id;
	char err_class[64];
	char err_desc[KV_ERROR_MSG_MAX];
};

/* ---- connecting ---- */

/* Finish a non-blocking connect within timeout_ms. */
static int wait_connected(int fd, int timeout_ms)
{
	struct pollfd p = {.fd = fd, .events = POLLOUT};
	int soerr = 0;
	socklen_t slen = sizeof(soerr);
	int n;

	do
		n = poll(&p, 1, timeout_ms);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if (n == 0)
		return -ETIMEDOUT;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &slen) < 0)
		return -errno;
	return -soerr;
}

/* Connect fd to sa, waiting at most timeout_ms; the fd is left blocking
 * (every later wait goes through poll). */
static int connect_with_timeout(int fd, const struct sockaddr *sa,
				socklen_t salen, int timeout_ms)
{
	int flags = fcntl(fd, F_GETFL);
	int rc = 0;

	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
		return -errno;
	if (connect(fd, sa, salen) < 0) {
		rc = -errno;
		if (rc == -EINPROGRESS)
			rc = wait_connected(fd, timeout_ms);
	}
	if (fcntl(fd, F_SETFL, flags) < 0 && rc == 0)
		rc = -errno;
	return rc;
}

static int connect_unix(const char *path, int timeout_ms, int *out)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd, rc;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	rc = connect_with_timeout(fd, (struct sockaddr *)&sa, sizeof(sa),
				  timeout_ms);
	if (rc < 0) {
		close(fd);
		return rc;
	}
	*out = fd;
	return 0;
}

static int connect_tcp(const char *host, const char *port, int timeout_ms,
		       int *out, struct kv_error *err, const char *addr)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
	struct addrinfo *res, *ai;
	int rc = -ECONNREFUSED;
	int gai;

	gai = getaddrinfo(host, port, &hints, &res);
	if (gai)
		return kv_error_set(err, -EHOSTUNREACH,
				    "cannot resolve QMP address %s: %s", addr,
				    gai_strerror(gai));
	for (ai = res; ai; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
				ai->ai_protocol);

		if (fd < 0) {
			rc = -errno;
			continue;
		}
		rc = connect_with_timeout(fd, ai->ai_addr, ai->ai_addrlen,
					  timeout_ms);
		if (rc == 0) {
			*out = fd;
			break;
		}
		close(fd);
	}
	freeaddrinfo(res);
	if (rc < 0)
		return kv_error_set_errno(
		    err, rc, "cannot connect to QMP socket %s", addr);
	return 0;
}

static bool has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int open_socket(const char *addr, int timeout_ms, int *fd,
		       struct kv_error *err)
{
	struct kv_uri uri;
	int rc;

	/* A bare path is a unix socket, as QEMU's tools accept. */
	if (!has_prefix(addr, "unix:") && !has_prefix(addr, "tcp:")) {
		if (has_prefix(addr, "file:") || has_prefix(addr, "fd:"))
			return kv_error_set(err, -EINVAL,
					    "QMP address '%s': expected unix:PATH, tcp:HOST:PORT or a socket path",
					    addr);
		rc = connect_unix(addr, timeout_ms, fd);
		goto unix_done;
	}
	rc = kv_uri_parse(addr, &uri, err);
	if (rc < 0) {
		kv_error_prefix(err, "QMP address");
		return rc;
	}
	if (uri.kind == KV_URI_TCP)
		return connect_tcp(uri.host, uri.port, timeout_ms, fd, err,
				   addr);
	rc = connect_unix(uri.path, timeout_ms, fd);
unix_done:
	if (rc == -ENOENT)
		return kv_error_set(err, rc,
				    "cannot connect to QMP socket %s: no such socket (is the VM running with --qmp?)",
				    addr);
	if (rc < 0)
		return kv_error_set_errno(
		    err, rc, "cannot connect to QMP socket %s", addr);
	return 0;
}

/* ---- reading and writing messages ---- */

static int send_message(struct kv_qmpc *c, json_t *msg, struct kv_error *err)
{
	char *text = json_dumps(msg, JSON_COMPACT);
	struct iovec iov;
	int rc;

	if (!text)
		return kv_error_set(err, -ENOMEM, "out of memory");
	iov.iov_base = text;
	iov.iov_len = strlen(text);
	text[iov.iov_len++] = '\n'; /* json_dumps' NUL becomes the separator */
	rc = kv_chan_writev_full(c->chan, &iov, 1, err);
	free(text);
	if (rc < 0)
		kv_error_prefix(err, "writing to QMP socket %s", c->addr);
	return rc;
}

static void consume(struct kv_qmpc *c, size_t n)
{
	if (!n)
		return; /* buf may still be NULL */
	memmove(c->buf, c->buf + n, c->len - n);
	c->len -= n;
}

/* One complete document from the buffer: 1 with *msg, 0 when more bytes
 * are needed, <0 for a malformed one. */
static int parse_buffered(struct kv_qmpc *c, json_t **msg, struct kv_error *err)
{
	json_error_t je;
	size_t skip = 0;

	while (skip < c->len && strchr(" \t\r\n", c->buf[skip]))
		skip++;
	consume(c, skip);
	if (!c->len)
		return 0;
	*msg = json_loadb(c->buf, c->len, JSON_DISABLE_EOF_CHECK, &je);
	if (*msg) {
		consume(c, (size_t)je.position);
		if (json_is_object(*msg))
			return 1;
		json_decref(*msg);
		return kv_error_set(err, -EPROTO,
				    "QMP socket %s sent a JSON value that is not an object",
				    c->addr);
	}
	/* An error at the very end is a document still on its way. */
	if ((size_t)je.position >= c->len)
		return 0;
	return kv_error_set(err, -EPROTO,
			    "QMP socket %s sent malformed JSON: %s", c->addr,
			    je.text);
}

static int fill_buffer(struct kv_qmpc *c, int64_t deadline_ms,
		       struct kv_error *err)
{
	int64_t left = deadline_ms - kv_now_ms();
	ssize_t n;
	int rc;

	if (c->cap - c->len < 4096) {
		size_t cap = c->cap ? c->cap * 2 : 16384;
		char *nb;

		if (cap > KV_QMPC_MAX_MESSAGE)
			return kv_error_set(err, -EMSGSIZE,
					    "QMP socket %s sent a message larger than %u bytes",
					    c->addr, KV_QMPC_MAX_MESSAGE);
		nb = realloc(c->buf, cap);
		if (!nb)
			return kv_error_set(err, -ENOMEM, "out of memory");
		c->buf = nb;
		c->cap = cap;
	}
	if (left < 0)
		left = 0;
	rc = kv_chan_wait_readable(c->chan, kv_now_ns() + left * MS_NS);
	if (rc < 0)
		return kv_error_set_errno(err, rc, "waiting on QMP socket %s",
					  c->addr);
	if (rc == 0)
		return -ETIMEDOUT; /* the caller says what it waited for */
	n = c->chan->ops->read(c->chan, c->buf + c->len, c->cap - c->len);
	if (n < 0)
		return kv_error_set_errno(
		    err, (int)n, "reading from QMP socket %s", c->addr);
	if (n == 0)
		return kv_error_set(err, -ECONNRESET,
				    "QMP socket %s: the connection was closed (did the VM exit?)",
				    c->addr);
	c->len += (size_t)n;
	return 0;
}

/* The next message, waiting until deadline_ms: 1 with *msg, -ETIMEDOUT
 * (err untouched) or another error. */
static int read_message(struct kv_qmpc *c, int64_t deadline_ms, json_t **msg,
			struct kv_error *err)
{
	for (;;) {
		int rc = parse_buffered(c, msg, err);

		if (rc)
			return rc;
		rc = fill_buffer(c, deadline_ms, err);
		if (rc < 0)
			return rc;
	}
}

static void keep_event(struct kv_qmpc *c, json_t *ev)
{
	if (json_array_size(c->events) >= KV_QMPC_MAX_EVENTS)
		json_array_remove(c->events, 0);
	json_array_append_new(c->events, ev);
}

/* ---- public API ---- */

static int read_greeting(struct kv_qmpc *c, int timeout_ms,
			 struct kv_error *err)
{
	json_t *msg;
	int rc = read_message(c, kv_now_ms() + timeout_ms, &msg, err);

	if (rc == -ETIMEDOUT)
		return kv_error_set(err, rc,
				    "QMP socket %s sent no greeting within %d ms (is it a QMP monitor? QEMU serves one client per socket at a time)",
				    c->addr, timeout_ms);
	if (rc < 0)
		return rc;
	if (!json_is_object(json_object_get(msg, "QMP"))) {
		const char *desc = json_string_value(
		    json_object_get(json_object_get(msg, "error"), "desc"));

		if (desc) {
			rc = kv_error_set(err, -ECONNREFUSED, "QMP socket %s refused the session: %s", c->addr, desc);
			json_decref(msg);
			return rc;
		}
		json_decref(msg);
		return kv_error_set(err, -EPROTO,
				    "QMP socket %s: the first message is not a QMP greeting",
				    c->addr);
	}
	c->greeting = json_incref(json_object_get(msg, "QMP"));
	json_decref(msg);
	return 0;
}

/* The monitor's certificate must carry hostname, else the tcp address's
 * host (a unix socket's: no name to check). */
static int start_tls(struct kv_qmpc *c, const struct kv_qmpc_tls *tls,
		     int timeout_ms, struct kv_error *err)
{
	struct kv_tls_params p = {
	    .creds = tls->creds,
	    .hostname = tls->hostname,
	    .deadline_ns = kv_now_ns() + timeout_ms * MS_NS,
	    .peer_role = "the monitor",
	};
	struct kv_uri u;
	struct kv_chan *t;

	if ((!p.hostname || !*p.hostname) && has_prefix(c->addr, "tcp:") &&
	    kv_uri_parse(c->addr, &u, NULL) == 0)
		p.hostname = u.host;
	t = kv_tls_wrap(c->chan, &p, err);
	if (!t) {
		kv_error_prefix(err, "QMP socket %s", c->addr);
		return err->code < 0 ? err->code : -EACCES;
	}
	c->chan = t;
	return 0;
}

static int open_channel(struct kv_qmpc *c, const struct kv_qmpc_tls *tls,
			int timeout_ms, struct kv_error *err)
{
	int fd = -1;
	int rc = open_socket(c->addr, timeout_ms, &fd, err);

	if (rc < 0)
		return rc;
	c->chan = kv_chan_from_fd(fd, c->addr, err);
	if (!c->chan)
		return err->code < 0 ? err->code : -ENOMEM;
	if (tls && tls->creds)
		return start_tls(c, tls, timeout_ms, err);
	return 0;
}

int kv_qmpc_connect(const char *addr, int timeout_ms, struct kv_qmpc **out,
		    struct kv_error *err)
{
	return kv_qmpc_connect_tls(addr, NULL, timeout_ms, out, err);
}

int kv_qmpc_connect_tls(const char *addr, const struct kv_qmpc_tls *tls,
			int timeout_ms, struct kv_qmpc **out,
			struct kv_error *err)
{
	struct kv_qmpc *c = calloc(1, sizeof(*c));
	int rc;

	*out = NULL;
	if (!c)
		return kv_error_set(err, -ENOMEM, "out of memory");
	c->next_id = 1;
	snprintf(c->addr, sizeof(c->addr), "%s", addr);
	c->events = json_array();
	if (!c->events) {
		kv_qmpc_close(c);
		return kv_error_set(err, -ENOMEM, "out of memory");
	}
	rc = open_channel(c, tls, timeout_ms, err);
	if (rc == 0)
		rc = read_greeting(c, timeout_ms, err);
	if (rc == 0)
		rc = kv_qmpc_execute(c, "qmp_capabilities", NULL, NULL,
				     timeout_ms, err);
	if (rc < 0) {
		kv_qmpc_close(c);
		return rc;
	}
	*out = c;
	return 0;
}

const char *kv_qmpc_address(const struct kv_qmpc *c)
{
	return c->addr;
}

json_t *kv_qmpc_greeting(const struct kv_qmpc *c)
{
	return c->greeting;
}

const char *kv_qmpc_error_class(const struct kv_qmpc *c)
{
	return c->err_class;
}

const char *kv_qmpc_error_desc(const struct kv_qmpc *c)
{
	return c->err_desc;
}

static int take_error_reply(struct kv_qmpc *c, const char *name, json_t *e,
			    struct kv_error *err)
{
	const char *cls = json_string_value(json_object_get(e, "class"));
	const char *desc = json_string_value(json_object_get(e, "desc"));

	snprintf(c->err_class, sizeof(c->err_class), "%s",
		 cls ? cls : "GenericError");
	snprintf(c->err_desc, sizeof(c->err_desc), "%s",
		 desc ? desc : "(no description)");
	return kv_error_set(err, -EREMOTEIO, "%s: %s: %s", name, c->err_class,
			    c->err_desc);
}

/* Wait for the reply carrying id; events are kept, other replies (a late
 * answer to a command that timed out) are dropped. */
static int await_reply(struct kv_qmpc *c, const char *name, json_int_t id,
		       int64_t deadline_ms, json_t **ret, struct kv_error *err)
{
	for (;;) {
		json_t *msg, *val;
		int rc = read_message(c, deadline_ms, &msg, err);

		if (rc == -ETIMEDOUT)
			return kv_error_set(err, rc,
					    "%s: no reply from QMP socket %s in time",
					    name, c->addr);
		if (rc < 0)
			return rc;
		if (json_object_get(msg, "event")) {
			keep_event(c, msg);
			continue;
		}
		if (json_integer_value(json_object_get(msg, "id")) != id) {
			json_decref(msg);
			continue;
		}
		if ((val = json_object_get(msg, "error"))) {
			rc = take_error_reply(c, name, val, err);
			json_decref(msg);
			return rc;
		}
		val = json_object_get(msg, "return");
		if (!val) {
			json_decref(msg);
			return kv_error_set(err, -EPROTO,
					    "%s: the reply from %s has neither \"return\" nor \"error\"",
					    name, c->addr);
		}
		if (ret)
			*ret = json_incref(val);
		json_decref(msg);
		return 0;
	}
}

int kv_qmpc_execute(struct kv_qmpc *c, const char *name, json_t *args,
		    json_t **ret, int timeout_ms, struct kv_error *err)
{
	json_int_t id = c->next_id++;
	json_t *msg = json_pack("{s:s,s:I}", "execute", name, "id", id);
	int rc;

	c->err_class[0] = c->err_desc[0] = '\0';
	if (!msg) {
		json_decref(args);
		return kv_error_set(err, -ENOMEM, "out of memory");
	}
	if (args && json_object_set_new(msg, "arguments", args) < 0) {
		json_decref(msg);
		return kv_error_set(err, -ENOMEM, "out of memory");
	}
	rc = send_message(c, msg, err);
	json_decref(msg);
	if (rc < 0)
		return rc;
	return await_reply(c, name, id, kv_now_ms() + timeout_ms, ret, err);
}

int kv_qmpc_next_event(struct kv_qmpc *c, int timeout_ms, json_t **ev,
		       struct kv_error *err)
{
	int64_t deadline = kv_now_ms() + timeout_ms;

	for (;;) {
		json_t *msg;
		int rc;

		if (json_array_size(c->events)) {
			*ev = json_incref(json_array_get(c->events, 0));
			json_array_remove(c->events, 0);
			return 1;
		}
		rc = read_message(c, deadline, &msg, err);
		if (rc == -ETIMEDOUT)
			return 0;
		if (rc < 0)
			return rc;
		if (json_object_get(msg, "event"))
			keep_event(c, msg);
		else
			json_decref(msg); /* a stray reply */
	}
}

void kv_qmpc_close(struct kv_qmpc *c)
{
	if (!c)
		return;
	if (c->chan)
		kv_chan_close(c->chan);
	json_decref(c->greeting);
	json_decref(c->events);
	free(c->buf);
	free(c);
}
