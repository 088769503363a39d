/* SPDX-License-Identifier: MIT */
/*
 * The QMP server: a listening socket, its clients, and one thread that
 * polls them all plus an eventfd (stop requests and queued events).
 *
 * Every socket is non-blocking and the thread only ever blocks in poll(),
 * so a client that stops reading cannot stall the others: its replies wait
 * in its output buffer, and when that passes KV_QMP_MAX_OUTPUT it is
 * dropped.
 *
 * With tls-creds every client is a non-blocking TLS session (io/tls.h's
 * kv_tls_nb): the handshake advances as its bytes come, in the same poll
 * loop, and the greeting goes out only once it is over. A client that
 * says nothing for QMP_TLS_QUIET_MS (a plaintext QMP client waits for the
 * greeting) or opens with something that is not TLS is told so in one
 * plaintext QMP error line, then dropped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/log.h"
#include "io/channel.h"
#include "io/tls.h"
#include "monitor/qmp_internal.h"

#define QMP_SUBSYS	"qmp"
#define QMP_MAX_CLIENTS 64
#define QMP_READ_CHUNK	65536
/* Events waiting for the monitor thread; past this they are dropped (the
 * thread is stuck or gone, and memory must stay bounded). */
#define QMP_MAX_QUEUED_EVENTS 4096
/* A TLS client's handshake must be over within this. */
#define QMP_TLS_HANDSHAKE_MS 10000
/* A TLS client sends its hello at once; one silent this long is a
 * plaintext client waiting for the greeting. */
#define QMP_TLS_QUIET_MS 2000
#define MS_NS 1000000LL

struct qmp_event {
	struct qmp_event *next;
	json_t *msg;
};

struct kv_qmp {
	struct kv_qmp_ops ops; /* a copy: the caller's may be on its stack */
	struct kv_qmp_tls tls; /* creds NULL: plaintext */
	struct kv_listener *listener;
	int wake_fd;	   /* eventfd: stop or events queued */
	char address[300]; /* as kv_qmp_address() reports it */
	pthread_t thread;

	/* Owned by the monitor thread. */
	struct kv_qmp_client *clients[QMP_MAX_CLIENTS];
	size_t n_clients;
	unsigned next_client_id;

	pthread_mutex_t lock; /* protects the fields below */
	bool stopping;
	struct qmp_event *ev_head, **ev_tail;
	size_t n_events;
};

/* ---- listening ---- */

/* The socket code is the migration listener's (io/channel.h): a stale unix
 * socket is replaced, a live one or a non-socket path refused, tcp port 0
 * reports the real port. Only the URI kinds a monitor can serve pass. */
static int open_listener(struct kv_qmp *q, const char *uri,
			 struct kv_error *err)
{
	struct kv_uri u;
	int rc;

	rc = kv_uri_parse(uri, &u, err);
	if (rc) {
		kv_error_prefix(err, "QMP");
		return rc;
	}
	if (u.kind != KV_URI_UNIX && u.kind != KV_URI_TCP)
		return kv_error_set(err, -EINVAL,
				    "QMP %s: only unix:PATH and tcp:HOST:PORT can be listened on",
				    uri);
	q->listener = kv_listener_open(uri, err);
	if (!q->listener) {
		kv_error_prefix(err, "QMP");
		return err->code < 0 ? err->code : -EINVAL;
	}
	snprintf(q->address, sizeof(q->address), "%s",
		 kv_listener_uri(q->listener));
	return 0;
}

/* ---- clients ---- */

static void drop_client(struct kv_qmp *q, size_t i, const char *why)
{
	struct kv_qmp_client *c = q->clients[i];

	if (why)
		kv_warn(QMP_SUBSYS, "dropping client %u: %s", c->id, why);
	else
		kv_debug(QMP_SUBSYS, "client %u disconnected", c->id);
	close(c->fd);
	kv_tls_nb_free(c->tls);
	kv_qmp_client_free(c);
	q->clients[i] = q->clients[--q->n_clients];
	q->clients[q->n_clients] = NULL;
}

/* Encrypt and send what the socket takes now (nothing before the
 * handshake is over). Returns <0 when the peer is gone. */
static int flush_tls_client(struct kv_qmp_client *c)
{
	int rc;

	if (!c->tls_open) { /* the handshake's own bytes */
		rc = kv_tls_nb_flush(c->tls);
		return rc == -EAGAIN ? 0 : rc;
	}
	while (kv_qmp_buf_pending(&c->out)) {
		ssize_t n = kv_tls_nb_send(c->tls, c->out.data + c->out.head,
					   kv_qmp_buf_pending(&c->out));

		if (n == -EAGAIN)
			return 0;
		if (n < 0)
			return (int)n;
		kv_qmp_buf_consume(&c->out, (size_t)n);
	}
	rc = kv_tls_nb_flush(c->tls);
	return rc == -EAGAIN ? 0 : rc;
}

/* Send what the socket takes now. Returns <0 when the peer is gone. */
static int flush_client(struct kv_qmp_client *c)
{
	if (c->tls)
		return flush_tls_client(c);
	while (kv_qmp_buf_pending(&c->out)) {
		ssize_t n = send(c->fd, c->out.data + c->out.head,
				 kv_qmp_buf_pending(&c->out),
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -errno;
		}
		kv_qmp_buf_consume(&c->out, (size_t)n);
	}
	return 0;
}

/* "tcp:ADDR:PORT" / "unix" for messages about a client. */
static void peer_of(int fd, char *buf, size_t size)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char host[INET6_ADDRSTRLEN] = "?";
	int port = 0;

	if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0 ||
	    ss.ss_family == AF_UNIX) {
		snprintf(buf, size, "unix");
		return;
	}
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
		port = ntohs(a->sin_port);
		snprintf(buf, size, "tcp:%s:%d", host, port);
	} else {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
		port = ntohs(a->sin6_port);
		snprintf(buf, size, "tcp:[%s]:%d", host, port);
	}
}

/* A TLS session for a new client, its handshake bounded. */
static int start_tls(struct kv_qmp *q, struct kv_qmp_client *c)
{
	struct kv_tls_params p = {
	    .creds = q->tls.creds,
	    .authz = q->tls.authz,
	    .deadline_ns = c->accepted_ns + QMP_TLS_HANDSHAKE_MS * MS_NS,
	    .peer_role = "the QMP client",
	};
	struct kv_error err = {0};
	char peer[300];

	peer_of(c->fd, peer, sizeof(peer));
	c->tls = kv_tls_nb_new(c->fd, peer, &p, &err);
	if (!c->tls) {
		kv_warn(QMP_SUBSYS, "client %u: %s", c->id, err.msg);
		return -1;
	}
	return 0;
}

static void accept_clients(struct kv_qmp *q)
{
	for (;;) {
		struct kv_qmp_client *c;
		json_t *greeting;
		int fd;

		struct kv_error err = {0};

		fd = kv_listener_accept_fd(q->listener, &err);
		if (fd < 0) {
			if (fd != -EAGAIN)
				kv_warn(QMP_SUBSYS, "%s", err.msg);
			return;
		}
		if (q->n_clients == QMP_MAX_CLIENTS) {
			kv_warn(QMP_SUBSYS,
				"refusing a client: %d already connected",
				QMP_MAX_CLIENTS);
			close(fd);
			continue;
		}
		c = kv_qmp_client_new(fd, ++q->next_client_id, &q->ops);
		if (c) {
			c->accepted_ns = kv_now_ns();
			if (q->tls.creds && start_tls(q, c) < 0) {
				kv_qmp_client_free(c);
				close(fd);
				continue;
			}
		}
		greeting = kv_qmp_greeting();
		if (!c || !greeting || kv_qmp_client_send(c, greeting)) {
			kv_warn(QMP_SUBSYS, "out of memory for a new client");
			json_decref(greeting);
			if (c)
				kv_tls_nb_free(c->tls);
			kv_qmp_client_free(c);
			close(fd);
			continue;
		}
		json_decref(greeting);
		q->clients[q->n_clients++] = c;
		kv_debug(QMP_SUBSYS, "client %u connected", c->id);
		if (flush_client(c) < 0)
			drop_client(q, q->n_clients - 1, NULL); /* peer gone */
	}
}

/* The reply to quit is on its way (or the peer is gone): now act. */
static void run_quit(struct kv_qmp *q, struct kv_qmp_client *c)
{
	c->quit_requested = false;
	flush_client(c);
	kv_info(QMP_SUBSYS, "client %u asked to quit", c->id);
	q->ops.quit(q->ops.opaque);
}

/*
 * A client of a TLS monitor that did not start a TLS handshake is told
 * in QMP's own words, in plaintext (all it can read), before it is
 * dropped: a QMP client shows an error reply's desc.
 */
static void tell_tls_needed(struct kv_qmp *q, struct kv_qmp_client *c)
{
	char line[512];
	int n = snprintf(line, sizeof(line), "{\"error\": {\"class\": \"GenericError\", \"desc\": \"this QMP monitor takes TLS clients only (tls-creds '%s'): connect with TLS credentials\"}}\r\n", kv_tls_creds_id(q->tls.creds));

	if (n > 0 && send(c->fd, line, strnlen(line, sizeof(line)),
			  MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		kv_debug(QMP_SUBSYS, "client %u: %s", c->id, strerror(errno));
}

/* Advance a TLS client's handshake. Returns false when it failed (why
 * says why, in buf). */
static bool advance_tls(struct kv_qmp *q, struct kv_qmp_client *c,
			char *buf, size_t size, const char **why)
{
	struct kv_error err = {0};
	int rc = kv_tls_nb_handshake(c->tls, &err);

	if (rc == 0 && kv_tls_nb_peer_silent(c->tls) &&
	    kv_now_ns() - c->accepted_ns >= QMP_TLS_QUIET_MS * MS_NS) {
		kv_error_set(&err, -EPROTO, "sent no TLS handshake in %d ms (a plaintext QMP client waiting for the greeting?)", QMP_TLS_QUIET_MS);
		rc = -EPROTO;
	}
	if (rc > 0) {
		c->tls_open = true;
		kv_debug(QMP_SUBSYS, "client %u: TLS handshake done", c->id);
		return true;
	}
	if (rc == 0)
		return true;
	if (rc == -EPROTO || kv_tls_nb_peer_plaintext(c->tls))
		tell_tls_needed(q, c);
	snprintf(buf, size, "%s", err.msg);
	*why = buf;
	return false;
}

/* Bytes from the client: how many, 0 none now (or its end: c->eof),
 * -1 when it must be dropped (why). */
static ssize_t recv_client(struct kv_qmp_client *c, char *buf, size_t size,
			   const char **why)
{
	ssize_t n;

	if (c->tls) {
		n = kv_tls_nb_recv(c->tls, buf, size);
		if (n == -EAGAIN)
			return 0;
		if (n < 0) {
			*why = strerror((int)-n);
			return -1;
		}
	} else {
		n = recv(c->fd, buf, size, MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK ||
			    errno == EINTR)
				return 0;
			*why = strerror(errno);
			return -1;
		}
	}
	if (n == 0)
		c->eof = true;
	return n;
}

static bool feed_client(struct kv_qmp *q, struct kv_qmp_client *c,
			const char *buf, size_t n, const char **why)
{
	int rc = kv_qmp_feed(c, buf, n);

	if (rc == -EMSGSIZE) {
		*why = "more than 1 MiB without a complete JSON document";
		return false;
	}
	if (rc == -ENOBUFS) {
		*why = "not reading its replies (output buffer full)";
		return false;
	}
	if (rc < 0) {
		*why = strerror(-rc);
		return false;
	}
	if (c->quit_requested)
		run_quit(q, c);
	return true;
}

/* Returns false when the client must be dropped (why says why). */
static bool read_client(struct kv_qmp *q, struct kv_qmp_client *c,
			char *whybuf, size_t whysize, const char **why)
{
	char buf[QMP_READ_CHUNK];

	if (c->tls && !c->tls_open &&
	    (!advance_tls(q, c, whybuf, whysize, why) || !c->tls_open))
		return !*why;
	do {
		ssize_t n = recv_client(c, buf, sizeof(buf), why);

		if (n < 0)
			return false;
		if (n == 0)
			return true;
		if (!feed_client(q, c, buf, (size_t)n, why))
			return false;
		/* TLS may hold decrypted records the socket no longer
		 * signals: take them all now. */
	} while (c->tls && !c->eof && kv_tls_nb_pending(c->tls));
	return true;
}

static void service_client(struct kv_qmp *q, size_t i, short revents)
{
	struct kv_qmp_client *c = q->clients[i];
	const char *why = NULL;
	char whybuf[KV_ERROR_MSG_MAX];

	if (revents & POLLIN) {
		if (!read_client(q, c, whybuf, sizeof(whybuf), &why)) {
			drop_client(q, i, why);
			return;
		}
	} else if (revents & (POLLERR | POLLHUP | POLLNVAL)) {
		drop_client(q, i, NULL);
		return;
	}
	if (flush_client(c) < 0) {
		drop_client(q, i, NULL);
		return;
	}
	/* A peer that closed its side is done once it has its replies. */
	if (c->eof && !kv_qmp_buf_pending(&c->out))
		drop_client(q, i, NULL);
}

/* ---- events ---- */

static void deliver_events(struct kv_qmp *q)
{
	struct qmp_event *ev, *next;
	size_t i;

	pthread_mutex_lock(&q->lock);
	ev = q->ev_head;
	q->ev_head = NULL;
	q->ev_tail = &q->ev_head;
	q->n_events = 0;
	pthread_mutex_unlock(&q->lock);

	for (; ev; ev = next) {
		next = ev->next;
		for (i = 0; i < q->n_clients;) {
			struct kv_qmp_client *c = q->clients[i];

			if (c->negotiated &&
			    kv_qmp_client_send(c, ev->msg) == -ENOBUFS) {
				drop_client(q, i,
					    "not reading its events (output buffer full)");
				continue;
			}
			i++;
		}
		json_decref(ev->msg);
		free(ev);
	}
	for (i = 0; i < q->n_clients;) {
		if (flush_client(q->clients[i]) < 0) {
			drop_client(q, i, NULL);
			continue;
		}
		i++;
	}
}

void kv_qmp_event(struct kv_qmp *q, const char *name, void *data)
{
	struct qmp_event *ev;
	struct timeval tv;
	uint64_t one = 1;
	json_t *msg;

	if (!name) {
		json_decref(data);
		kv_warn(QMP_SUBSYS, "event without a name dropped");
		return;
	}
	gettimeofday(&tv, NULL); /* QMP timestamps are wall-clock time */
	msg = json_pack("{s:s}", "event", name);
	if (msg && data)
		json_object_set_new(msg, "data", data);
	else
		json_decref(data);
	if (msg)
		json_object_set_new(
		    msg, "timestamp",
		    json_pack("{s:I,s:I}", "seconds", (json_int_t)tv.tv_sec,
			      "microseconds", (json_int_t)tv.tv_usec));
	ev = msg ? calloc(1, sizeof(*ev)) : NULL;
	if (!ev) {
		json_decref(msg);
		kv_warn(QMP_SUBSYS, "event %s lost: out of memory", name);
		return;
	}
	ev->msg = msg;

	pthread_mutex_lock(&q->lock);
	if (q->stopping || q->n_events >= QMP_MAX_QUEUED_EVENTS) {
		pthread_mutex_unlock(&q->lock);
		kv_warn(QMP_SUBSYS, "event %s dropped: monitor %s", name,
			q->stopping ? "stopping" : "queue full");
		json_decref(msg);
		free(ev);
		return;
	}
	*q->ev_tail = ev;
	q->ev_tail = &ev->next;
	q->n_events++;
	pthread_mutex_unlock(&q->lock);
	if (write(q->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		kv_warn(QMP_SUBSYS, "eventfd write: %s", strerror(errno));
}

/* ---- the thread ---- */

static bool stop_requested(struct kv_qmp *q)
{
	bool stop;

	pthread_mutex_lock(&q->lock);
	stop = q->stopping;
	pthread_mutex_unlock(&q->lock);
	return stop;
}

/* What to poll a client for. */
static short client_events(const struct kv_qmp_client *c)
{
	short ev = c->eof ? 0 : POLLIN;

	if (c->tls && !c->tls_open)
		return kv_tls_nb_events(c->tls);
	if (kv_qmp_buf_pending(&c->out))
		ev |= POLLOUT;
	if (c->tls)
		ev |= (short)(kv_tls_nb_events(c->tls) & POLLOUT);
	return ev;
}

/* poll()'s timeout: until the nearest handshake's quiet time or time
 * limit (advance_tls judges them), else none. */
static int next_timeout_ms(const struct kv_qmp *q)
{
	int64_t now = kv_now_ns(), next = -1;

	for (size_t i = 0; i < q->n_clients; i++) {
		const struct kv_qmp_client *c = q->clients[i];
		int64_t at;

		if (!c->tls || c->tls_open)
			continue;
		at = c->accepted_ns + (kv_tls_nb_peer_silent(c->tls)
					   ? QMP_TLS_QUIET_MS
					   : QMP_TLS_HANDSHAKE_MS) * MS_NS;
		if (next < 0 || at < next)
			next = at;
	}
	if (next < 0)
		return -1;
	return next <= now ? 0 : (int)((next - now + MS_NS - 1) / MS_NS);
}

/* Handshakes whose time ran out end here (their peers went quiet). */
static void expire_handshakes(struct kv_qmp *q)
{
	int64_t now = kv_now_ns();

	for (size_t i = 0; i < q->n_clients;) {
		struct kv_qmp_client *c = q->clients[i];
		const char *why = NULL;
		char buf[KV_ERROR_MSG_MAX];
		int64_t limit;

		if (!c->tls || c->tls_open) {
			i++;
			continue;
		}
		limit = kv_tls_nb_peer_silent(c->tls) ? QMP_TLS_QUIET_MS
						      : QMP_TLS_HANDSHAKE_MS;
		if (now - c->accepted_ns < limit * MS_NS ||
		    advance_tls(q, c, buf, sizeof(buf), &why)) {
			i++;
			continue;
		}
		drop_client(q, i, why);
	}
}

static void *monitor_thread(void *arg)
{
	struct kv_qmp *q = arg;
	struct pollfd pfd[2 + QMP_MAX_CLIENTS];
	struct kv_qmp_client *polled[QMP_MAX_CLIENTS];

	for (;;) {
		size_t n = 2, i, j;

		pfd[0] = (struct pollfd){.fd = q->wake_fd, .events = POLLIN};
		pfd[1] = (struct pollfd){.fd = kv_listener_fd(q->listener),
					 .events = POLLIN};
		for (i = 0; i < q->n_clients; i++) {
			struct kv_qmp_client *c = q->clients[i];

			polled[i] = c;
			pfd[n].fd = c->fd;
			pfd[n].events = client_events(c);
			pfd[n++].revents = 0;
		}
		if (poll(pfd, n, next_timeout_ms(q)) < 0) {
			if (errno == EINTR)
				continue;
			kv_err(QMP_SUBSYS, "poll: %s; monitor stops",
			       strerror(errno));
			break;
		}
		if (pfd[0].revents) {
			uint64_t v;
			bool stop;

			if (read(q->wake_fd, &v, sizeof(v)) < 0 &&
			    errno != EAGAIN)
				kv_warn(QMP_SUBSYS, "eventfd read: %s",
					strerror(errno));
			/* Events queued before the stop (SHUTDOWN) still go
			 * out, as far as the sockets take them now. The flag
			 * is read before the queue is drained: once it is set
			 * nothing more is queued, so this drain sees every
			 * event the VMM raised before stopping us. */
			stop = stop_requested(q);
			deliver_events(q);
			if (stop)
				break;
		}
		/* Clients may have been dropped above; find each by identity.
		 */
		for (j = 0; j + 2 < n; j++) {
			short rev = pfd[j + 2].revents;

			if (!rev)
				continue;
			for (i = 0; i < q->n_clients; i++) {
				if (q->clients[i] == polled[j]) {
					service_client(q, i, rev);
					break;
				}
			}
		}
		if (pfd[1].revents)
			accept_clients(q);
		expire_handshakes(q);
	}
	return NULL;
}

/* ---- start / stop ---- */

static void free_qmp(struct kv_qmp *q)
{
	struct qmp_event *ev, *next;

	while (q->n_clients)
		drop_client(q, q->n_clients - 1, NULL);
	for (ev = q->ev_head; ev; ev = next) {
		next = ev->next;
		json_decref(ev->msg);
		free(ev);
	}
	kv_listener_close(q->listener); /* removes a unix socket file */
	if (q->wake_fd >= 0)
		close(q->wake_fd);
	pthread_mutex_destroy(&q->lock);
	free(q);
}

/* The thread blocks every signal, so process-wide ones (SIGINT, SIGTERM)
 * reach the VMM's own threads and never interrupt the monitor. */
static int start_thread(struct kv_qmp *q)
{
	sigset_t all, old;
	int rc;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&q->thread, NULL, monitor_thread, q);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return rc;
}

int kv_qmp_start(const char *uri, const struct kv_qmp_ops *ops,
		 struct kv_qmp **out, struct kv_error *err)
{
	return kv_qmp_start_tls(uri, NULL, ops, out, err);
}

int kv_qmp_start_tls(const char *uri, const struct kv_qmp_tls *tls,
		     const struct kv_qmp_ops *ops, struct kv_qmp **out,
		     struct kv_error *err)
{
	struct kv_qmp *q;
	int rc;

	*out = NULL;
	if (tls && tls->creds &&
	    (rc = kv_tls_server_check(tls->creds, tls->authz, err)) < 0) {
		kv_error_prefix(err, "QMP %s", uri);
		return rc;
	}
	q = calloc(1, sizeof(*q));
	if (!q)
		return kv_error_set(err, -ENOMEM, "QMP %s: out of memory", uri);
	q->ops = *ops;
	if (tls)
		q->tls = *tls;
	q->ev_tail = &q->ev_head;
	pthread_mutex_init(&q->lock, NULL);
	q->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (q->wake_fd < 0) {
		rc = kv_error_set_errno(err, -errno, "QMP %s: eventfd", uri);
		free_qmp(q);
		return rc;
	}
	rc = open_listener(q, uri, err);
	if (rc) {
		free_qmp(q);
		return rc;
	}
	rc = start_thread(q);
	if (rc) {
		rc = kv_error_set_errno(err, -rc, "QMP %s: starting the thread",
					uri);
		free_qmp(q);
		return rc;
	}
	kv_info(QMP_SUBSYS, "QMP monitor listening on %s%s", q->address,
		q->tls.creds ? " (TLS)" : "");
	*out = q;
	return 0;
}

const char *kv_qmp_address(const struct kv_qmp *q)
{
	return q->address;
}

void kv_qmp_stop(struct kv_qmp *q)
{
	uint64_t one = 1;

	if (!q)
		return;
	pthread_mutex_lock(&q->lock);
	q->stopping = true;
	pthread_mutex_unlock(&q->lock);
	if (write(q->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		kv_warn(QMP_SUBSYS, "eventfd write: %s", strerror(errno));
	pthread_join(q->thread, NULL);
	free_qmp(q);
}
