/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the QMP monitor: a real server on a unix socket in a temp
 * directory, driven by real client sockets, with fake VMM ops that record
 * what they were asked. Plus the socket-less parser (kv_qmp_feed).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "base/clock.h"
#include "monitor/qmp.h"
#include "monitor/qmp_internal.h"
#include "monitor/qmp_migration.h"

/* ---- fake VMM ---- */

struct fake_vm {
	pthread_mutex_t lock;
	int query_status_calls, stop_calls, cont_calls, quit_calls;
	int migrate_calls, incoming_calls, cancel_calls, query_migrate_calls;
	char migrate_uri[512];
	char incoming_uri[512];
	bool running;
	bool fail_migrate; /* migrate returns an error */
	bool bad_status;   /* query-status returns a non-object */
	/* What the migration commands handed the VM: every change of the
	 * settings it took (set_params), and what migrate was given. */
	int set_params_calls, powerdown_calls;
	struct kv_mig_params params_seen;
	struct kv_mig_params migrate_params;
	bool bad_lists; /* list queries return an object */
	bool refuse_params; /* set_params refuses (a destination whose
			     * source already connected) */
};

static int fake_query_status(void *opaque, void **ret, struct kv_error *err)
{
	struct fake_vm *f = opaque;

	pthread_mutex_lock(&f->lock);
	f->query_status_calls++;
	if (f->bad_status)
		*ret = json_integer(7);
	else
		*ret = json_pack("{s:s,s:b}", "status",
				 f->running ? "running" : "paused", "running",
				 f->running);
	pthread_mutex_unlock(&f->lock);
	return 0;
}

static int fake_stop(void *opaque, struct kv_error *err)
{
	struct fake_vm *f = opaque;

	pthread_mutex_lock(&f->lock);
	f->stop_calls++;
	f->running = false;
	pthread_mutex_unlock(&f->lock);
	return 0;
}

static int fake_cont(void *opaque, struct kv_error *err)
{
	struct fake_vm *f = opaque;

	pthread_mutex_lock(&f->lock);
	f->cont_calls++;
	f->running = true;
	pthread_mutex_unlock(&f->lock);
	return 0;
}

static void fake_quit(void *opaque)
{
	struct fake_vm *f = opaque;

	pthread_mutex_lock(&f->lock);
	f->quit_calls++;
	pthread_mutex_unlock(&f->lock);
}

static int fake_migrate(void *opaque, const char *uri,
			const struct kv_mig_params *p, struct kv_error *err)
{
	struct fake_vm *f = opaque;
	int rc = 0;

	pthread_mutex_lock(&f->lock);
	f->migrate_calls++;
	snprintf(f->migrate_uri, sizeof(f->migrate_uri), "%s", uri);
	f->migrate_params = *p;
	if (f->fail_migrate)
		rc =
		    kv_error_set(err, -EBUSY, "a migration is already running");
	pthread_mutex_unlock(&f->lock);
	return rc;
}

static int fake_migrate_incoming(void *opaque, const char *uri,
				 struct kv_error *err)
{
	struct fake_vm *f = opaque;

	pthread_mutex_lock(&f->lock);
	f->incoming_calls++;
	snprintf(f->incoming_uri, sizeof(f->incoming_uri), "%s", uri);
	pthread_mutex_unlock(&f->lock);
	return 0;
}

static int fake_migrate_cancel(void *opaque, struct kv_error *err)
{
	struct fake_vm *f = opaque;

	pthread_mutex_lock(&f->lock);
	f->cancel_calls++;
	pthread_mutex_unlock(&f->lock);
	return 0;
}

/* An active migration once migrate was called. */
static void fake_query_migrate(void *opaque, struct kv_vm_mig_info *i)
{
	struct fake_vm *f = opaque;

	pthread_mutex_lock(&f->lock);
	f->query_migrate_calls++;
	memset(i, 0, sizeof(*i));
	i->started = f->migrate_calls > 0;
	i->status = KV_MIG_ACTIVE;
	i->stats.total_time_ms = 1234;
	i->stats.transferred = 1000;
	i->progress.remaining = 24;
	i->ram_total = 1024 + (uint64_t)f->query_migrate_calls;
	pthread_mutex_unlock(&f->lock);
}

static int fake_set_params(void *opaque, const struct kv_mig_params *p,
			   struct kv_error *err)
{
	struct fake_vm *f = opaque;
	int ret = 0;

	pthread_mutex_lock(&f->lock);
	if (f->refuse_params) {
		ret = kv_error_set(err, -EBUSY, "fake: the source already connected");
	} else {
		f->set_params_calls++;
		f->params_seen = *p;
	}
	pthread_mutex_unlock(&f->lock);
	return ret;
}

static int fake_query_cpus(void *opaque, void **ret, struct kv_error *err)
{
	struct fake_vm *f = opaque;

	pthread_mutex_lock(&f->lock);
	if (f->bad_lists)
		*ret = json_string("cpu");
	else
		*ret = json_pack("[{s:i,s:s,s:i,s:s}]", "cpu-index", 0,
				 "qom-path", "/machine/unattached/device[0]",
				 "thread-id", 4242, "target", "x86_64");
	pthread_mutex_unlock(&f->lock);
	return 0;
}

static int fake_powerdown(void *opaque, struct kv_error *err)
{
	struct fake_vm *f = opaque;

	pthread_mutex_lock(&f->lock);
	f->powerdown_calls++;
	pthread_mutex_unlock(&f->lock);
	return 0;
}

static int fake_get(struct fake_vm *f, const int *counter)
{
	int v;

	pthread_mutex_lock(&f->lock);
	v = *counter;
	pthread_mutex_unlock(&f->lock);
	return v;
}

/* ---- fixture ---- */

struct fixture {
	char dir[64];
	char path[128];
	char uri[160];
	struct fake_vm vm;
	struct kv_qmp_mig *mig;
	struct kv_qmp_ops ops;
	struct kv_qmp *q;
};

static void fixture_ops(struct fixture *fx)
{
	const struct kv_qmp_mig_ops mig_ops = {
	    .start = fake_migrate,
	    .incoming = fake_migrate_incoming,
	    .cancel = fake_migrate_cancel,
	    .query = fake_query_migrate,
	    .set_params = fake_set_params,
	    .opaque = &fx->vm,
	};

	pthread_mutex_init(&fx->vm.lock, NULL);
	fx->vm.running = true;
	fx->mig = kv_qmp_mig_new(&mig_ops);
	assert_non_null(fx->mig);
	fx->ops = (struct kv_qmp_ops){
	    .query_status = fake_query_status,
	    .stop = fake_stop,
	    .cont = fake_cont,
	    .quit = fake_quit,
	    .migration = fx->mig,
	    .query_cpus_fast = fake_query_cpus,
	    .system_powerdown = fake_powerdown,
	    .opaque = &fx->vm,
	};
}

static int setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));
	struct kv_error err = {0};

	assert_non_null(fx);
	strcpy(fx->dir, "/tmp/kvmig-qmp-XXXXXX");
	assert_non_null(mkdtemp(fx->dir));
	snprintf(fx->path, sizeof(fx->path), "%s/qmp.sock", fx->dir);
	snprintf(fx->uri, sizeof(fx->uri), "unix:%s", fx->path);
	fixture_ops(fx);
	if (kv_qmp_start(fx->uri, &fx->ops, &fx->q, &err))
		fail_msg("kv_qmp_start: %s", err.msg);
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *fx = *state;

	kv_qmp_stop(fx->q);
	kv_qmp_mig_free(fx->mig);
	unlink(fx->path);
	rmdir(fx->dir);
	pthread_mutex_destroy(&fx->vm.lock);
	free(fx);
	return 0;
}

/* ---- a test client ---- */

struct client {
	int fd;
	char buf[1 << 16];
	size_t len;
};

static void set_timeouts(int fd, int seconds)
{
	struct timeval tv = {.tv_sec = seconds};

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static struct client *client_connect(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct client *c = calloc(1, sizeof(*c));

	assert_non_null(c);
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(c->fd >= 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		fail_msg("connect %s: %s", path, strerror(errno));
	set_timeouts(c->fd, 10);
	return c;
}

static void client_close(struct client *c)
{
	close(c->fd);
	free(c);
}

/* Sends everything; returns false if the server closed on us. */
static bool client_send_raw(struct client *c, const char *p, size_t n)
{
	while (n) {
		ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL);

		if (k < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EPIPE || errno == ECONNRESET)
				return false;
			fail_msg("send: %s", strerror(errno));
		}
		p += k;
		n -= (size_t)k;
	}
	return true;
}

static void client_send(struct client *c, const char *text)
{
	assert_true(client_send_raw(c, text, strlen(text)));
}

/* The next message, or NULL at EOF / connection reset. Fails on timeout. */
static json_t *client_recv_or_eof(struct client *c)
{
	for (;;) {
		char *nl = memchr(c->buf, '\n', c->len);
		ssize_t k;

		if (nl) {
			size_t n = (size_t)(nl - c->buf) + 1;
			json_error_t jerr;
			json_t *j = json_loadb(c->buf, n, 0, &jerr);

			if (!j)
				fail_msg("server sent bad JSON: %s (%.*s)",
					 jerr.text, (int)n, c->buf);
			memmove(c->buf, c->buf + n, c->len - n);
			c->len -= n;
			return j;
		}
		assert_true(c->len < sizeof(c->buf));
		k = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			fail_msg("timed out waiting for the server");
		if (k < 0 && errno == ECONNRESET)
			return NULL;
		if (k < 0)
			fail_msg("recv: %s", strerror(errno));
		if (k == 0)
			return NULL;
		c->len += (size_t)k;
	}
}

static json_t *client_recv(struct client *c)
{
	json_t *j = client_recv_or_eof(c);

	if (!j)
		fail_msg("server closed the connection");
	return j;
}

/* The peer is gone: recv gives EOF (or reset) after any queued data. */
static void expect_dropped(struct client *c)
{
	json_t *j;

	while ((j = client_recv_or_eof(c)))
		json_decref(j);
}

static json_t *client_cmd(struct client *c, const char *text)
{
	client_send(c, text);
	return client_recv(c);
}

static void expect_return_empty(struct client *c, const char *text)
{
	json_t *r = client_cmd(c, text);
	json_t *ret = json_object_get(r, "return");

	if (!json_is_object(ret) || json_object_size(ret) != 0) {
		char *s = json_dumps(r, 0);
		fail_msg("'%s': expected {\"return\": {}}, got %s", text, s);
	}
	json_decref(r);
}

static void expect_error(struct client *c, const char *text, const char *cls,
			 const char *desc_prefix)
{
	json_t *r = client_cmd(c, text);
	const char *got_cls = json_string_value(
	    json_object_get(json_object_get(r, "error"), "class"));
	const char *got_desc = json_string_value(
	    json_object_get(json_object_get(r, "error"), "desc"));

	if (!got_cls || !got_desc || strcmp(got_cls, cls) ||
	    strncmp(got_desc, desc_prefix, strlen(desc_prefix))) {
		char *s = json_dumps(r, 0);
		fail_msg("'%s': expected %s '%s...', got %s", text, cls,
			 desc_prefix, s);
	}
	assert_null(json_object_get(r, "return"));
	json_decref(r);
}

static struct client *client_greeted(struct fixture *fx)
{
	struct client *c = client_connect(fx->path);
	json_t *g = client_recv(c);

	assert_non_null(json_object_get(g, "QMP"));
	json_decref(g);
	return c;
}

static struct client *client_negotiated(struct fixture *fx)
{
	struct client *c = client_greeted(fx);

	expect_return_empty(c, "{\"execute\": \"qmp_capabilities\"}");
	return c;
}

/* ---- greeting and negotiation ---- */

static void test_greeting(void **state)
{
	struct fixture *fx = *state;
	struct client *c = client_connect(fx->path);
	json_t *g = client_recv(c);
	json_t *qmp = json_object_get(g, "QMP");
	json_t *ver = json_object_get(qmp, "version");
	json_t *qemu = json_object_get(ver, "qemu");

	assert_int_equal(json_object_size(g), 1);
	assert_int_equal(json_integer_value(json_object_get(qemu, "major")), 8);
	assert_int_equal(json_integer_value(json_object_get(qemu, "minor")), 2);
	assert_int_equal(json_integer_value(json_object_get(qemu, "micro")), 0);
	assert_true(json_is_integer(json_object_get(qemu, "micro")));
	assert_string_equal(json_string_value(json_object_get(ver, "package")),
			    "kvmig 0.1.0");
	assert_true(json_is_array(json_object_get(qmp, "capabilities")));
	assert_int_equal(json_array_size(json_object_get(qmp, "capabilities")),
			 0);
	json_decref(g);
	client_close(c);
}

static void test_negotiation_first(void **state)
{
	struct fixture *fx = *state;
	struct client *c = client_greeted(fx);

	expect_error(
	    c, "{\"execute\": \"query-status\"}", "CommandNotFound",
	    "Expecting capabilities negotiation with 'qmp_capabilities'");
	expect_error(
	    c, "{\"execute\": \"stop\"}", "CommandNotFound",
	    "Expecting capabilities negotiation with 'qmp_capabilities'");
	/* Unknown commands get the same answer before negotiation. */
	expect_error(c, "{\"execute\": \"nope\"}", "CommandNotFound",
		     "Expecting capabilities negotiation");
	assert_int_equal(fake_get(&fx->vm, &fx->vm.query_status_calls), 0);
	assert_int_equal(fake_get(&fx->vm, &fx->vm.stop_calls), 0);

	/* We offer no capabilities, so enabling one fails, and still not
	 * negotiated. */
	expect_error(c,
		     "{\"execute\": \"qmp_capabilities\", \"arguments\": "
		     "{\"enable\": [\"oob\"]}}",
		     "GenericError", "Capability 'oob' not available");
	expect_error(c, "{\"execute\": \"query-status\"}", "CommandNotFound",
		     "Expecting capabilities negotiation");

	expect_return_empty(c, "{\"execute\": \"qmp_capabilities\", "
			       "\"arguments\": {\"enable\": []}}");
	expect_error(c, "{\"execute\": \"qmp_capabilities\"}",
		     "CommandNotFound",
		     "Capabilities negotiation is already complete");
	json_decref(client_cmd(c, "{\"execute\": \"query-status\"}"));
	assert_int_equal(fake_get(&fx->vm, &fx->vm.query_status_calls), 1);
	client_close(c);
}

/* ---- commands ---- */

static void test_query_status_stop_cont(void **state)
{
	struct fixture *fx = *state;
	struct client *c = client_negotiated(fx);
	json_t *r, *ret;

	r = client_cmd(c, "{\"execute\": \"query-status\"}");
	ret = json_object_get(r, "return");
	assert_string_equal(json_string_value(json_object_get(ret, "status")),
			    "running");
	assert_true(json_is_true(json_object_get(ret, "running")));
	json_decref(r);

	expect_return_empty(c, "{\"execute\": \"stop\"}");
	assert_int_equal(fake_get(&fx->vm, &fx->vm.stop_calls), 1);
	r = client_cmd(c, "{\"execute\": \"query-status\"}");
	ret = json_object_get(r, "return");
	assert_string_equal(json_string_value(json_object_get(ret, "status")),
			    "paused");
	assert_true(json_is_false(json_object_get(ret, "running")));
	json_decref(r);

	expect_return_empty(c, "{\"execute\": \"cont\", \"arguments\": {}}");
	assert_int_equal(fake_get(&fx->vm, &fx->vm.cont_calls), 1);
	assert_int_equal(fake_get(&fx->vm, &fx->vm.query_status_calls), 2);
	client_close(c);
}

static void test_migrate_commands(void **state)
{
	struct fixture *fx = *state;
	struct client *c = client_negotiated(fx);
	json_t *r, *ret, *ram;

	expect_return_empty(c, "{\"execute\": \"migrate\", \"arguments\": "
			       "{\"uri\": \"tcp:127.0.0.1:4444\"}}");
	assert_int_equal(fake_get(&fx->vm, &fx->vm.migrate_calls), 1);
	pthread_mutex_lock(&fx->vm.lock);
	assert_string_equal(fx->vm.migrate_uri, "tcp:127.0.0.1:4444");
	pthread_mutex_unlock(&fx->vm.lock);

	/* detach is accepted and ignored, as QEMU does. */
	expect_return_empty(c, "{\"execute\": \"migrate\", \"arguments\": "
			       "{\"uri\": \"unix:/x\", \"detach\": true}}");
	assert_int_equal(fake_get(&fx->vm, &fx->vm.migrate_calls), 2);

	expect_return_empty(c, "{\"execute\": \"migrate-incoming\", "
			       "\"arguments\": {\"uri\": \"tcp:0:5555\"}}");
	assert_int_equal(fake_get(&fx->vm, &fx->vm.incoming_calls), 1);
	pthread_mutex_lock(&fx->vm.lock);
	assert_string_equal(fx->vm.incoming_uri, "tcp:0:5555");
	pthread_mutex_unlock(&fx->vm.lock);

	expect_return_empty(c, "{\"execute\": \"migrate_cancel\"}");
	assert_int_equal(fake_get(&fx->vm, &fx->vm.cancel_calls), 1);

	r = client_cmd(c, "{\"execute\": \"query-migrate\"}");
	ret = json_object_get(r, "return");
	ram = json_object_get(ret, "ram");
	assert_string_equal(json_string_value(json_object_get(ret, "status")),
			    "active");
	assert_int_equal(json_integer_value(json_object_get(ret, "total-time")),
			 1234);
	assert_int_equal(
	    json_integer_value(json_object_get(ram, "transferred")), 1000);
	assert_int_equal(json_integer_value(json_object_get(ram, "remaining")),
			 24);
	/* Proves the reply comes from this call, not a cached one. */
	assert_int_equal(json_integer_value(json_object_get(ram, "total")),
			 1025);
	json_decref(r);

	/* A failing op: its message becomes the GenericError's desc. */
	pthread_mutex_lock(&fx->vm.lock);
	fx->vm.fail_migrate = true;
	pthread_mutex_unlock(&fx->vm.lock);
	expect_error(c,
		     "{\"execute\": \"migrate\", \"arguments\": "
		     "{\"uri\": \"tcp:127.0.0.1:4444\"}}",
		     "GenericError", "a migration is already running");
	assert_int_equal(fake_get(&fx->vm, &fx->vm.migrate_calls), 3);

	/* A VMM bug (non-object result) is reported, not forwarded. */
	pthread_mutex_lock(&fx->vm.lock);
	fx->vm.bad_status = true;
	pthread_mutex_unlock(&fx->vm.lock);
	expect_error(c, "{\"execute\": \"query-status\"}", "GenericError",
		     "query-status returned a non-object result");
	client_close(c);
}

static void test_query_version_and_commands(void **state)
{
	struct fixture *fx = *state;
	struct client *c = client_connect(fx->path);
	json_t *g = client_recv(c);
	json_t *r, *list, *item;
	const char *expected[] = {"qmp_capabilities",
				  "query-status",
				  "stop",
				  "cont",
				  "quit",
				  "migrate",
				  "migrate-incoming",
				  "migrate_cancel",
				  "query-migrate",
				  "query-commands",
				  "query-version",
				  "migrate-set-parameters",
				  "query-migrate-parameters",
				  "migrate-set-capabilities",
				  "query-migrate-capabilities",
				  "query-cpus-fast",
				  "system_powerdown"};
	size_t i, k;

	expect_return_empty(c, "{\"execute\": \"qmp_capabilities\"}");
	r = client_cmd(c, "{\"execute\": \"query-version\"}");
	assert_true(
	    json_equal(json_object_get(r, "return"),
		       json_object_get(json_object_get(g, "QMP"), "version")));
	json_decref(r);
	json_decref(g);

	r = client_cmd(c, "{\"execute\": \"query-commands\"}");
	list = json_object_get(r, "return");
	assert_true(json_is_array(list));
	assert_int_equal(json_array_size(list), kv_qmp_n_commands);
	for (k = 0; k < sizeof(expected) / sizeof(expected[0]); k++) {
		bool found = false;

		for (i = 0; i < json_array_size(list); i++) {
			item = json_array_get(list, i);
			assert_int_equal(json_object_size(item), 1);
			if (!strcmp(json_string_value(
					json_object_get(item, "name")),
				    expected[k]))
				found = true;
		}
		if (!found)
			fail_msg("query-commands lacks %s", expected[k]);
	}
	json_decref(r);
	client_close(c);
}

static void test_quit(void **state)
{
	struct fixture *fx = *state;
	struct client *c = client_negotiated(fx);
	int64_t deadline = kv_now_ms() + 10000;

	/* The reply arrives; quit is called once, after it. */
	expect_return_empty(c, "{\"execute\": \"quit\", \"id\": 5}");
	while (fake_get(&fx->vm, &fx->vm.quit_calls) == 0 &&
	       kv_now_ms() < deadline)
		kv_sleep_ns(1000000);
	assert_int_equal(fake_get(&fx->vm, &fx->vm.quit_calls), 1);
	client_close(c);
}

/* ---- migration capabilities and parameters, vCPUs, power ---- */

static size_t n_capabilities(void)
{
	size_t n = 0;

	for (size_t i = 0; i < kv_mig_n_options; i++)
		n += kv_mig_options[i].kind == KV_MIG_OPT_CAPABILITY;
	return n;
}

static void test_capabilities(void **state)
{
	struct fixture *fx = *state;
	struct client *c = client_negotiated(fx);
	json_t *r, *list;

	expect_return_empty(
	    c, "{\"execute\": \"migrate-set-capabilities\", \"arguments\": "
	       "{\"capabilities\": [{\"capability\": \"xbzrle\", "
	       "\"state\": true}]}}");
	/* The VM hears of it: xbzrle's cache now reaches the engine. */
	assert_int_equal(fake_get(&fx->vm, &fx->vm.set_params_calls), 1);
	pthread_mutex_lock(&fx->vm.lock);
	assert_int_equal(fx->vm.params_seen.xbzrle_cache_size, 64 << 20);
	pthread_mutex_unlock(&fx->vm.lock);
	r = client_cmd(c, "{\"execute\": \"query-migrate-capabilities\"}");
	list = json_object_get(r, "return");
	assert_int_equal(json_array_size(list), n_capabilities());
	assert_string_equal(json_string_value(json_object_get(
				json_array_get(list, 0), "capability")),
			    "xbzrle");
	assert_true(
	    json_is_true(json_object_get(json_array_get(list, 0), "state")));
	json_decref(r);

	/* The table's refusal (an unsupported capability) reaches the
	 * client and changes nothing. */
	expect_error(c,
		     "{\"execute\": \"migrate-set-capabilities\", "
		     "\"arguments\": {\"capabilities\": [{\"capability\": "
		     "\"xbzrle\", \"state\": false}, {\"capability\": "
		     "\"x-colo\", \"state\": true}]}}",
		     "GenericError",
		     "Capability 'x-colo' is not supported by kvmig yet");
	expect_error(c,
		     "{\"execute\": \"migrate-set-capabilities\", "
		     "\"arguments\": {\"capabilities\": [{\"capability\": "
		     "\"warp-drive\", \"state\": false}]}}",
		     "GenericError",
		     "Parameter 'capabilities[0].capability' does not accept "
		     "value 'warp-drive'");
	assert_int_equal(fake_get(&fx->vm, &fx->vm.set_params_calls), 1);
	r = client_cmd(c, "{\"execute\": \"query-migrate-capabilities\"}");
	assert_true(json_is_true(json_object_get(
	    json_array_get(json_object_get(r, "return"), 0), "state")));
	json_decref(r);

	/* The VM's refusal reaches the client and the setting stays as it
	 * was (the monitor keeps only what the VM took). */
	pthread_mutex_lock(&fx->vm.lock);
	fx->vm.refuse_params = true;
	pthread_mutex_unlock(&fx->vm.lock);
	expect_error(c,
		     "{\"execute\": \"migrate-set-capabilities\", "
		     "\"arguments\": {\"capabilities\": [{\"capability\": "
		     "\"xbzrle\", \"state\": false}]}}",
		     "GenericError", "fake: the source already connected");
	r = client_cmd(c, "{\"execute\": \"query-migrate-capabilities\"}");
	assert_true(json_is_true(json_object_get(
	    json_array_get(json_object_get(r, "return"), 0), "state")));
	json_decref(r);
	pthread_mutex_lock(&fx->vm.lock);
	fx->vm.refuse_params = false;
	pthread_mutex_unlock(&fx->vm.lock);

	/* Malformed lists never reach the table; QEMU's member paths. */
	expect_error(c, "{\"execute\": \"migrate-set-capabilities\"}",
		     "GenericError", "Parameter 'capabilities' is missing");
	expect_error(c,
		     "{\"execute\": \"migrate-set-capabilities\", "
		     "\"arguments\": {\"capabilities\": {}}}",
		     "GenericError",
		     "Invalid parameter type for 'capabilities', expected: "
		     "array");
	expect_error(c,
		     "{\"execute\": \"migrate-set-capabilities\", "
		     "\"arguments\": {\"capabilities\": [{\"capability\": "
		     "\"xbzrle\", \"state\": true}, 7]}}",
		     "GenericError",
		     "Invalid parameter type for 'capabilities[1]', expected: "
		     "object");
	expect_error(c,
		     "{\"execute\": \"migrate-set-capabilities\", "
		     "\"arguments\": {\"capabilities\": [{\"state\": "
		     "true}]}}",
		     "GenericError",
		     "Parameter 'capabilities[0].capability' is missing");
	expect_error(c,
		     "{\"execute\": \"migrate-set-capabilities\", "
		     "\"arguments\": {\"capabilities\": [{\"capability\": "
		     "\"xbzrle\", \"state\": \"on\"}]}}",
		     "GenericError",
		     "Invalid parameter type for 'capabilities[0].state', "
		     "expected: boolean");
	expect_error(c,
		     "{\"execute\": \"migrate-set-capabilities\", "
		     "\"arguments\": {\"capabilities\": [{\"capability\": "
		     "1, \"state\": true}]}}",
		     "GenericError",
		     "Invalid parameter type for 'capabilities[0].capability', "
		     "expected: string");
	expect_error(c,
		     "{\"execute\": \"migrate-set-capabilities\", "
		     "\"arguments\": {\"capabilities\": [{\"capability\": "
		     "\"xbzrle\", \"state\": false, \"extra\": 1}]}}",
		     "GenericError",
		     "Parameter 'capabilities[0].extra' is unexpected");
	assert_int_equal(fake_get(&fx->vm, &fx->vm.set_params_calls), 1);

	/* An empty list is a valid no-op call. */
	expect_return_empty(c, "{\"execute\": \"migrate-set-capabilities\", "
			       "\"arguments\": {\"capabilities\": []}}");
	assert_int_equal(fake_get(&fx->vm, &fx->vm.set_params_calls), 2);

	/* Not while a migration runs (QEMU's message). */
	expect_return_empty(c, "{\"execute\": \"migrate\", \"arguments\": "
			       "{\"uri\": \"tcp:127.0.0.1:4444\"}}");
	expect_error(c,
		     "{\"execute\": \"migrate-set-capabilities\", "
		     "\"arguments\": {\"capabilities\": []}}",
		     "GenericError", "There's a migration process in progress");
	/* migrate took the settings as the engine wants them. */
	pthread_mutex_lock(&fx->vm.lock);
	assert_int_equal(fx->vm.migrate_params.xbzrle_cache_size, 64 << 20);
	assert_int_equal(fx->vm.migrate_params.downtime_limit_ms, 300);
	pthread_mutex_unlock(&fx->vm.lock);
	client_close(c);
}

static void test_parameters(void **state)
{
	struct fixture *fx = *state;
	struct client *c = client_negotiated(fx);
	const char *names[] = {"downtime-limit", "max-bandwidth",
			       "avail-switchover-bandwidth",
			       "x-converge-timeout", "x-return-path-timeout"};
	char text[256], want[64];
	json_t *r;
	size_t i;

	expect_return_empty(
	    c, "{\"execute\": \"migrate-set-parameters\", \"arguments\": "
	       "{\"downtime-limit\": 50, \"max-bandwidth\": 0, "
	       "\"avail-switchover-bandwidth\": 1000, "
	       "\"x-converge-timeout\": 60000, "
	       "\"x-return-path-timeout\": 5000}}");
	pthread_mutex_lock(&fx->vm.lock);
	assert_int_equal(fx->vm.params_seen.downtime_limit_ms, 50);
	assert_int_equal(fx->vm.params_seen.max_bandwidth, 0);
	assert_int_equal(fx->vm.params_seen.avail_switchover_bw, 1000);
	assert_int_equal(fx->vm.params_seen.converge_timeout_ms, 60000);
	assert_int_equal(fx->vm.params_seen.rp_timeout_ms, 5000);
	pthread_mutex_unlock(&fx->vm.lock);

	/* Every parameter is an integer; the error names it. */
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(text, sizeof(text),
			 "{\"execute\": \"migrate-set-parameters\", "
			 "\"arguments\": {\"%s\": \"10\"}}",
			 names[i]);
		snprintf(want, sizeof(want),
			 "Invalid parameter type for '%s', expected: integer",
			 names[i]);
		expect_error(c, text, "GenericError", want);
	}
	expect_error(c,
		     "{\"execute\": \"migrate-set-parameters\", "
		     "\"arguments\": {\"downtime-limit\": 1.5}}",
		     "GenericError",
		     "Invalid parameter type for 'downtime-limit'");
	expect_error(c,
		     "{\"execute\": \"migrate-set-parameters\", "
		     "\"arguments\": {\"x-no-such-parameter\": 4}}",
		     "GenericError",
		     "Parameter 'x-no-such-parameter' is unexpected");
	/* Issue 5's parameters: their types. */
	expect_error(c,
		     "{\"execute\": \"migrate-set-parameters\", "
		     "\"arguments\": {\"multifd-compression\": 1}}",
		     "GenericError",
		     "Invalid parameter type for 'multifd-compression', "
		     "expected: string");
	expect_error(c,
		     "{\"execute\": \"migrate-set-parameters\", "
		     "\"arguments\": {\"cpu-throttle-tailslow\": 1}}",
		     "GenericError",
		     "Invalid parameter type for 'cpu-throttle-tailslow', "
		     "expected: bool");
	/* Ranges and values: the table's message names the parameter; a
	 * refused call changes nothing, so the VM hears nothing. */
	expect_error(c,
		     "{\"execute\": \"migrate-set-parameters\", "
		     "\"arguments\": {\"downtime-limit\": -1}}",
		     "GenericError", "Parameter 'downtime-limit' expects");
	expect_error(c,
		     "{\"execute\": \"migrate-set-parameters\", "
		     "\"arguments\": {\"downtime-limit\": 7, "
		     "\"multifd-compression\": \"gzip\"}}",
		     "GenericError",
		     "Parameter 'multifd-compression' expects one of 'none', "
		     "'zlib', 'zstd', 'lz4'");
	assert_int_equal(fake_get(&fx->vm, &fx->vm.set_params_calls), 1);

	r = client_cmd(c, "{\"execute\": \"query-migrate-parameters\"}");
	assert_int_equal(json_integer_value(json_object_get(
			     json_object_get(r, "return"), "downtime-limit")),
			 50);
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(r, "return"),
					      "multifd-compression")),
	    "none");
	json_decref(r);
	client_close(c);
}

static void test_cpus_and_powerdown(void **state)
{
	struct fixture *fx = *state;
	struct client *c = client_negotiated(fx);
	json_t *r, *cpu;

	r = client_cmd(c, "{\"execute\": \"query-cpus-fast\", \"id\": 3}");
	cpu = json_array_get(json_object_get(r, "return"), 0);
	assert_int_equal(json_integer_value(json_object_get(cpu, "thread-id")),
			 4242);
	assert_string_equal(json_string_value(json_object_get(cpu, "qom-path")),
			    "/machine/unattached/device[0]");
	assert_int_equal(json_integer_value(json_object_get(r, "id")), 3);
	json_decref(r);
	expect_error(c,
		     "{\"execute\": \"query-cpus-fast\", \"arguments\": "
		     "{\"all\": true}}",
		     "GenericError", "Parameter 'all' is unexpected");

	expect_return_empty(c, "{\"execute\": \"system_powerdown\"}");
	assert_int_equal(fake_get(&fx->vm, &fx->vm.powerdown_calls), 1);
	expect_error(c, "{\"execute\": \"system-powerdown\"}",
		     "CommandNotFound",
		     "The command system-powerdown has not been found");

	pthread_mutex_lock(&fx->vm.lock);
	fx->vm.bad_lists = true;
	pthread_mutex_unlock(&fx->vm.lock);
	expect_error(c, "{\"execute\": \"query-cpus-fast\"}", "GenericError",
		     "query-cpus-fast returned a non-list result");
	client_close(c);
}

/* ---- ids ---- */

static void expect_id(struct client *c, const char *text, const char *id)
{
	json_t *r = client_cmd(c, text);
	json_t *want = json_loads(id, JSON_DECODE_ANY, NULL);

	assert_non_null(want);
	if (!json_equal(json_object_get(r, "id"), want)) {
		char *s = json_dumps(r, 0);
		fail_msg("'%s': id %s not echoed: %s", text, id, s);
	}
	json_decref(want);
	json_decref(r);
}

static void test_id_echo(void **state)
{
	struct fixture *fx = *state;
	struct client *c = client_greeted(fx);

	/* Errors before negotiation carry the id too. */
	expect_id(c, "{\"execute\": \"stop\", \"id\": \"early\"}", "\"early\"");
	expect_id(c, "{\"id\": 1, \"execute\": \"qmp_capabilities\"}", "1");
	expect_id(c, "{\"execute\": \"query-status\", \"id\": \"abc\"}",
		  "\"abc\"");
	expect_id(c, "{\"execute\": \"stop\", \"id\": {\"a\": [1, null, 2.5]}}",
		  "{\"a\": [1, null, 2.5]}");
	expect_id(c, "{\"execute\": \"cont\", \"id\": [true]}", "[true]");
	expect_id(c, "{\"execute\": \"bogus\", \"id\": -7}", "-7");
	expect_id(c, "{\"execute\": \"migrate\", \"id\": 99}", "99");
	expect_id(c, "{\"execute\": 3, \"id\": \"x\"}", "\"x\"");
	/* No id in, no id out. */
	{
		json_t *r = client_cmd(c, "{\"execute\": \"query-status\"}");

		assert_null(json_object_get(r, "id"));
		json_decref(r);
	}
	client_close(c);
}

/* ---- errors ---- */

static void test_errors(void **state)
{
	struct fixture *fx = *state;
	struct client *c = client_negotiated(fx);
	json_t *r;

	expect_error(c, "{\"execute\": }", "GenericError",
		     "JSON parse error, ");
	expect_error(c, "{\"execute\": \"stop\",}", "GenericError",
		     "JSON parse error, ");
	expect_error(c, "nonsense\n", "GenericError", "JSON parse error, ");
	expect_error(c, "[1, 2]", "GenericError",
		     "QMP input must be a JSON object");
	expect_error(c, "\"a string\"", "GenericError",
		     "QMP input must be a JSON object");
	expect_error(c, "{\"arguments\": {}}", "GenericError",
		     "QMP input lacks member 'execute'");
	expect_error(c, "{\"execute\": 1}", "GenericError",
		     "QMP input member 'execute' must be a string");
	expect_error(c, "{\"execute\": \"stop\", \"arguments\": [1]}",
		     "GenericError",
		     "QMP input member 'arguments' must be an object");
	expect_error(c, "{\"execute\": \"stop\", \"bogus\": 1}", "GenericError",
		     "QMP input member 'bogus' is unexpected");
	expect_error(c, "{\"execute\": \"no-such-thing\"}", "CommandNotFound",
		     "The command no-such-thing has not been found");
	expect_error(c, "{\"execute\": \"migrate\"}", "GenericError",
		     "Parameter 'uri' is missing");
	expect_error(c, "{\"execute\": \"migrate\", \"arguments\": {}}",
		     "GenericError", "Parameter 'uri' is missing");
	expect_error(c,
		     "{\"execute\": \"migrate\", \"arguments\": {\"uri\": 1}}",
		     "GenericError",
		     "Invalid parameter type for 'uri', expected: string");
	expect_error(c,
		     "{\"execute\": \"migrate-incoming\", \"arguments\": "
		     "{\"uri\": null}}",
		     "GenericError",
		     "Invalid parameter type for 'uri', expected: string");
	expect_error(c,
		     "{\"execute\": \"migrate\", \"arguments\": {\"uri\": "
		     "\"unix:/a\", \"detach\": 1}}",
		     "GenericError",
		     "Invalid parameter type for 'detach', expected: boolean");
	expect_error(c,
		     "{\"execute\": \"migrate\", \"arguments\": {\"uri\": "
		     "\"tcp:h:1\", \"foo\": 1}}",
		     "GenericError", "Parameter 'foo' is unexpected");
	expect_error(c, "{\"execute\": \"stop\", \"arguments\": {\"foo\": 1}}",
		     "GenericError", "Parameter 'foo' is unexpected");
	/* None of the rejected calls reached the VMM. */
	assert_int_equal(fake_get(&fx->vm, &fx->vm.migrate_calls), 0);
	assert_int_equal(fake_get(&fx->vm, &fx->vm.incoming_calls), 0);
	assert_int_equal(fake_get(&fx->vm, &fx->vm.stop_calls), 0);

	/* The connection is still good. */
	r = client_cmd(c, "{\"execute\": \"query-status\", \"id\": 1}");
	assert_non_null(json_object_get(r, "return"));
	json_decref(r);
	client_close(c);
}

/* ---- framing ---- */

static void test_split_and_batched(void **state)
{
	struct fixture *fx = *state;
	struct client *c = client_negotiated(fx);
	const char *parts[] = {
	    "{\"exec",	     "ute\": \"migr",
	    "ate\", \"argu", "ments\": {\"uri\": \"unix:/tmp/{x}\\\"]\\\\\"}",
	    ", \"id\"",	     ": 1}"};
	json_t *r;
	size_t i;
	int id;

	for (i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
		client_send(c, parts[i]);
		kv_sleep_ns(2000000); /* let the server see each part alone */
	}
	r = client_recv(c);
	assert_int_equal(json_integer_value(json_object_get(r, "id")), 1);
	assert_non_null(json_object_get(r, "return"));
	json_decref(r);
	pthread_mutex_lock(&fx->vm.lock);
	/* Braces and quotes inside strings do not confuse framing. */
	assert_string_equal(fx->vm.migrate_uri, "unix:/tmp/{x}\"]\\");
	pthread_mutex_unlock(&fx->vm.lock);

	/* Several documents in one write, answered in order; a bad one in
	 * the middle is answered and skipped. */
	client_send(c, "{\"execute\": \"stop\", \"id\": 2}"
		       "{\"execute\": \"cont\", \"id\": 3}\r\n"
		       "  {\"execute\": \"stop\" \"id\": 4}\n"
		       "{\"execute\": \"query-status\", \"id\": 5}");
	for (id = 2; id <= 5; id++) {
		r = client_recv(c);
		if (id == 4) {
			assert_non_null(json_object_get(r, "error"));
			assert_null(json_object_get(r, "id"));
		} else {
			assert_int_equal(
			    json_integer_value(json_object_get(r, "id")), id);
		}
		json_decref(r);
	}
	assert_int_equal(fake_get(&fx->vm, &fx->vm.stop_calls), 1);
	assert_int_equal(fake_get(&fx->vm, &fx->vm.cont_calls), 1);
	client_close(c);
}

/* ---- several clients, events ---- */

static void test_two_clients(void **state)
{
	struct fixture *fx = *state;
	struct client *a = client_negotiated(fx);
	struct client *b = client_greeted(fx);
	json_t *r;

	/* b is not negotiated even though a is. */
	expect_error(b, "{\"execute\": \"stop\"}", "CommandNotFound",
		     "Expecting capabilities negotiation");
	expect_return_empty(b, "{\"execute\": \"qmp_capabilities\"}");

	/* Interleaved: each gets its own reply. */
	client_send(a, "{\"execute\": \"stop\", \"id\": \"a\"}");
	client_send(b, "{\"execute\": \"query-status\", \"id\": \"b\"}");
	r = client_recv(a);
	assert_string_equal(json_string_value(json_object_get(r, "id")), "a");
	json_decref(r);
	r = client_recv(b);
	assert_string_equal(json_string_value(json_object_get(r, "id")), "b");
	json_decref(r);
	client_close(a);
	/* b keeps working after a went away. */
	expect_return_empty(b, "{\"execute\": \"cont\"}");
	client_close(b);
}

struct event_arg {
	struct kv_qmp *q;
};

static void *send_event_thread(void *p)
{
	struct event_arg *ea = p;

	kv_qmp_event(ea->q, "MIGRATION",
		     json_pack("{s:s}", "status", "completed"));
	kv_qmp_event(ea->q, "STOP", NULL);
	return NULL;
}

static void check_event(json_t *ev, const char *name, bool has_data)
{
	json_t *ts = json_object_get(ev, "timestamp");
	struct timeval now;
	json_int_t sec;

	gettimeofday(&now, NULL);
	assert_string_equal(json_string_value(json_object_get(ev, "event")),
			    name);
	assert_true(json_is_integer(json_object_get(ts, "seconds")));
	assert_true(json_is_integer(json_object_get(ts, "microseconds")));
	sec = json_integer_value(json_object_get(ts, "seconds"));
	assert_true(sec <= now.tv_sec && sec > now.tv_sec - 60);
	assert_true(json_integer_value(json_object_get(ts, "microseconds")) <
		    1000000);
	if (has_data)
		assert_string_equal(json_string_value(json_object_get(
					json_object_get(ev, "data"), "status")),
				    "completed");
	else
		assert_null(json_object_get(ev, "data"));
}

static void test_events(void **state)
{
	struct fixture *fx = *state;
	struct client *a = client_negotiated(fx);
	struct client *b = client_negotiated(fx);
	struct client *late = client_greeted(fx);
	struct event_arg ea = {fx->q};
	pthread_t t;
	json_t *r;

	assert_int_equal(pthread_create(&t, NULL, send_event_thread, &ea), 0);
	pthread_join(t, NULL);

	r = client_recv(a);
	check_event(r, "MIGRATION", true);
	json_decref(r);
	r = client_recv(a);
	check_event(r, "STOP", false);
	json_decref(r);
	r = client_recv(b);
	check_event(r, "MIGRATION", true);
	json_decref(r);
	r = client_recv(b);
	check_event(r, "STOP", false);
	json_decref(r);

	/* The unnegotiated client got nothing: its next message is the
	 * reply to what it sends now. */
	r = client_cmd(late, "{\"execute\": \"qmp_capabilities\", \"id\": 1}");
	assert_int_equal(json_integer_value(json_object_get(r, "id")), 1);
	assert_null(json_object_get(r, "event"));
	json_decref(r);
	client_close(a);
	client_close(b);
	client_close(late);
}

/* ---- abuse ---- */

static void send_big(struct client *c, const char *head, size_t size, char fill,
		     const char *tail)
{
	char *big = malloc(size);
	size_t hl = strlen(head), tl = strlen(tail);

	assert_non_null(big);
	memset(big, fill, size);
	memcpy(big, head, hl);
	memcpy(big + size - tl, tail, tl);
	/* The server may hang up before it has it all. */
	(void)client_send_raw(c, big, size);
	free(big);
}

static void test_oversized_and_garbage(void **state)
{
	struct fixture *fx = *state;
	struct client *good = client_negotiated(fx);
	struct client *bad = client_negotiated(fx);
	struct client *huge = client_negotiated(fx);
	struct client *junk = client_negotiated(fx);
	json_t *r;

	/* Short garbage: answered, the connection stays. */
	expect_error(junk, "\x01\xff garbage }}}]] \n", "GenericError",
		     "JSON parse error, ");
	expect_return_empty(junk, "{\"execute\": \"stop\"}");

	/* An unterminated document of garbage past 1 MiB: dropped. */
	send_big(bad, "{\"execute\": \"", 2 << 20, 'x', "");
	expect_dropped(bad);

	/* A complete but 2 MiB document: dropped as well. */
	send_big(huge, "{\"execute\": \"query-status\", \"id\": \"", 2 << 20,
		 'y', "\"}");
	expect_dropped(huge);

	/* Deep nesting is an error for jansson, not a crash for us. */
	{
		size_t depth = 100000, i;
		char *deep = malloc(2 * depth + 1);

		for (i = 0; i < depth; i++) {
			deep[i] = '[';
			deep[depth + i] = ']';
		}
		deep[2 * depth] = '\0';
		expect_error(junk, deep, "GenericError", "JSON parse error, ");
		free(deep);
	}

	r = client_cmd(good, "{\"execute\": \"query-status\", \"id\": 1}");
	assert_non_null(json_object_get(r, "return"));
	json_decref(r);
	expect_return_empty(junk, "{\"execute\": \"cont\"}");
	client_close(good);
	client_close(bad);
	client_close(huge);
	client_close(junk);
}

/* A client that sends commands and never reads: dropped once its
 * replies pass the output cap, without holding up anyone else. */
static void test_client_not_reading(void **state)
{
	struct fixture *fx = *state;
	struct client *good = client_negotiated(fx);
	struct client *deaf = client_negotiated(fx);
	const char *cmd = "{\"execute\":\"query-version\"}";
	size_t n = strlen(cmd), count = 0;
	int64_t deadline = kv_now_ms() + 20000;
	int sz = 4096;
	json_t *r;

	setsockopt(deaf->fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
	/* ~120 bytes of reply per 27 bytes sent: the output cap (4 MiB) is
	 * reached long before 8 MiB of replies are due. */
	while (count < (8u << 20) / 100 && kv_now_ms() < deadline) {
		if (!client_send_raw(deaf, cmd, n))
			break;
		count++;
		if (count % 4096 == 0) {
			r = client_cmd(good, "{\"execute\": \"query-status\"}");
			assert_non_null(json_object_get(r, "return"));
			json_decref(r);
		}
	}
	/* Whatever was queued before the drop, then EOF or reset. */
	set_timeouts(deaf->fd, 10);
	expect_dropped(deaf);
	r = client_cmd(good, "{\"execute\": \"query-status\"}");
	assert_non_null(json_object_get(r, "return"));
	json_decref(r);
	client_close(good);
	client_close(deaf);
}

/* ---- lifecycle ---- */

static void test_stop_with_clients(void **state)
{
	struct fixture *fx = *state;
	struct client *a = client_negotiated(fx);
	struct client *b = client_greeted(fx);
	struct stat st;

	json_t *ev;

	client_send(a, "{\"execute\": \"query-st"); /* half a document */
	/* Events queued before the stop (a VMM's last SHUTDOWN) still reach
	 * the negotiated clients, in order; nothing comes after the stop. */
	kv_qmp_event(fx->q, "SHUTDOWN", json_pack("{s:i}", "n", 1));
	kv_qmp_event(fx->q, "RESUME", NULL);
	kv_qmp_stop(fx->q);
	fx->q = NULL;
	ev = client_recv_or_eof(a);
	assert_non_null(ev);
	assert_string_equal(json_string_value(json_object_get(ev, "event")),
			    "SHUTDOWN");
	json_decref(ev);
	ev = client_recv_or_eof(a);
	assert_non_null(ev);
	assert_string_equal(json_string_value(json_object_get(ev, "event")),
			    "RESUME");
	json_decref(ev);
	assert_null(client_recv_or_eof(a));
	assert_null(client_recv_or_eof(b)); /* not negotiated: no events */
	/* The socket file is gone with the listener. */
	assert_true(stat(fx->path, &st) < 0 && errno == ENOENT);
	client_close(a);
	client_close(b);
}

/* The monitor may be draining the queue for the first event while the
 * VMM raises the second and stops it; no event raised before the stop may
 * be lost. Many rounds, because the window is a few instructions wide. */
static void test_stop_delivers_every_event_raised_before_it(void **state)
{
	struct fixture *fx = *state;
	int round;

	for (round = 0; round < 200; round++) {
		struct client *a = client_negotiated(fx);
		struct kv_error err = {0};
		const char *names[] = {"MIGRATION", "STOP", "SHUTDOWN"};
		size_t i;

		for (i = 0; i < 3; i++)
			kv_qmp_event(fx->q, names[i], NULL);
		kv_qmp_stop(fx->q);
		fx->q = NULL;
		for (i = 0; i < 3; i++) {
			json_t *ev = client_recv_or_eof(a);

			if (!ev)
				fail_msg("round %d: event %s lost at stop",
					 round, names[i]);
			assert_string_equal(
			    json_string_value(json_object_get(ev, "event")),
			    names[i]);
			json_decref(ev);
		}
		assert_null(client_recv_or_eof(a));
		client_close(a);
		if (kv_qmp_start(fx->uri, &fx->ops, &fx->q, &err))
			fail_msg("kv_qmp_start: %s", err.msg);
	}
}

/* A client that sends its commands then shuts down its sending side
 * still gets every reply before the server closes. */
static void test_half_close(void **state)
{
	struct fixture *fx = *state;
	struct client *c = client_greeted(fx);
	json_t *r;

	client_send(c, "{\"execute\": \"qmp_capabilities\", \"id\": 1}\n"
		       "{\"execute\": \"stop\", \"id\": 2}\n");
	assert_int_equal(shutdown(c->fd, SHUT_WR), 0);
	r = client_recv(c);
	assert_int_equal(json_integer_value(json_object_get(r, "id")), 1);
	json_decref(r);
	r = client_recv(c);
	assert_int_equal(json_integer_value(json_object_get(r, "id")), 2);
	assert_non_null(json_object_get(r, "return"));
	json_decref(r);
	assert_null(client_recv_or_eof(c));
	assert_int_equal(fake_get(&fx->vm, &fx->vm.stop_calls), 1);
	client_close(c);
}

static void test_listener_paths(void **state)
{
	struct fixture *fx = *state;
	struct kv_error err = {0};
	struct kv_qmp *q2 = NULL;
	char path[100], uri[120];
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct client *c;
	json_t *g;
	int fd;

	/* The fixture's monitor is live: a second one is refused. */
	assert_int_equal(kv_qmp_start(fx->uri, &fx->ops, &q2, &err),
			 -EADDRINUSE);
	assert_non_null(strstr(err.msg, fx->path));
	assert_null(q2);

	/* A regular file is never removed. */
	snprintf(path, sizeof(path), "%s/file", fx->dir);
	snprintf(uri, sizeof(uri), "unix:%s", path);
	fd = open(path, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);
	kv_error_clear(&err);
	assert_int_equal(kv_qmp_start(uri, &fx->ops, &q2, &err), -EEXIST);
	assert_non_null(strstr(err.msg, "not a socket"));
	assert_int_equal(access(path, F_OK), 0);
	unlink(path);

	/* A stale socket (bound, nobody listening) is replaced. */
	snprintf(path, sizeof(path), "%s/stale.sock", fx->dir);
	snprintf(uri, sizeof(uri), "unix:%s", path);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	kv_error_clear(&err);
	if (kv_qmp_start(uri, &fx->ops, &q2, &err))
		fail_msg("stale socket: %s", err.msg);
	c = client_connect(path);
	g = client_recv(c);
	assert_non_null(json_object_get(g, "QMP"));
	json_decref(g);
	client_close(c);
	kv_qmp_stop(q2);

	/* Bad URIs. */
	kv_error_clear(&err);
	assert_true(kv_qmp_start("file:/tmp/x", &fx->ops, &q2, &err) < 0);
	assert_non_null(strstr(err.msg, "file:/tmp/x"));
	kv_error_clear(&err);
	assert_true(kv_qmp_start("bogus", &fx->ops, &q2, &err) < 0);
	assert_true(err.code < 0);
}

static void test_tcp(void **state)
{
	struct fixture *fx = *state;
	struct kv_error err = {0};
	struct kv_qmp *q2 = NULL;
	struct sockaddr_in sa = {.sin_family = AF_INET};
	const char *addr, *port;
	struct client c = {.fd = -1};
	json_t *r;

	if (kv_qmp_start("tcp:127.0.0.1:0", &fx->ops, &q2, &err))
		fail_msg("tcp: %s", err.msg);
	addr = kv_qmp_address(q2);
	assert_true(!strncmp(addr, "tcp:127.0.0.1:", 14));
	port = addr + 14;
	assert_true(atoi(port) > 0);
	sa.sin_port = htons((uint16_t)atoi(port));
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	c.fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(connect(c.fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	set_timeouts(c.fd, 10);
	r = client_recv(&c);
	assert_non_null(json_object_get(r, "QMP"));
	json_decref(r);
	expect_return_empty(&c, "{\"execute\": \"qmp_capabilities\"}");
	close(c.fd);
	kv_qmp_stop(q2);
}

/* ---- the parser alone (what a fuzz target drives) ---- */

static struct kv_qmp_client *feed_client(struct fixture *fx)
{
	struct kv_qmp_client *c = kv_qmp_client_new(-1, 1, &fx->ops);

	assert_non_null(c);
	return c;
}

static json_t *take_output(struct kv_qmp_client *c)
{
	char *start, *nl;
	json_t *j;

	if (!kv_qmp_buf_pending(&c->out))
		return NULL;
	start = c->out.data + c->out.head;
	nl = memchr(start, '\n', kv_qmp_buf_pending(&c->out));
	if (!nl)
		return NULL;
	j = json_loadb(start, (size_t)(nl - start) + 1, 0, NULL);
	assert_non_null(j);
	kv_qmp_buf_consume(&c->out, (size_t)(nl - start) + 1);
	return j;
}

static void test_feed_bytewise(void **state)
{
	struct fixture *fx = *state;
	struct kv_qmp_client *c = feed_client(fx);
	const char *text = "{\"execute\":\"qmp_capabilities\",\"id\":\"}\"} "
			   "42 {\"execute\":\"migrate\",\"arguments\":"
			   "{\"uri\":\"fd:3\"},\"id\":[\"{\"]}\n";
	json_t *r;
	size_t i;

	for (i = 0; text[i]; i++)
		assert_int_equal(kv_qmp_feed(c, text + i, 1), 0);
	r = take_output(c);
	assert_string_equal(json_string_value(json_object_get(r, "id")), "}");
	assert_non_null(json_object_get(r, "return"));
	json_decref(r);
	r = take_output(c);
	assert_string_equal(json_string_value(json_object_get(
				json_object_get(r, "error"), "desc")),
			    "QMP input must be a JSON object");
	json_decref(r);
	r = take_output(c);
	assert_string_equal(
	    json_string_value(json_array_get(json_object_get(r, "id"), 0)),
	    "{");
	assert_non_null(json_object_get(r, "return"));
	json_decref(r);
	assert_null(take_output(c));
	pthread_mutex_lock(&fx->vm.lock);
	assert_string_equal(fx->vm.migrate_uri, "fd:3");
	pthread_mutex_unlock(&fx->vm.lock);
	/* Only the unfinished nothing is kept. */
	assert_int_equal(c->in.len, 0);
	kv_qmp_client_free(c);
}

static void test_feed_limits(void **state)
{
	struct fixture *fx = *state;
	struct kv_qmp_client *c = feed_client(fx);
	char chunk[4096];
	const char *three;
	size_t fed = 0;
	int rc = 0;

	/* An unfinished document may grow to 1 MiB, not beyond. */
	assert_int_equal(kv_qmp_feed(c, "{\"a\": \"", 7), 0);
	memset(chunk, 'z', sizeof(chunk));
	while (!rc && fed <= 2 * KV_QMP_MAX_PENDING) {
		rc = kv_qmp_feed(c, chunk, sizeof(chunk));
		fed += sizeof(chunk);
	}
	assert_int_equal(rc, -EMSGSIZE);
	assert_true(fed >= KV_QMP_MAX_PENDING - 7);
	assert_true(fed <= KV_QMP_MAX_PENDING + sizeof(chunk));
	kv_qmp_client_free(c);

	/* Replies nobody takes stop at the output cap. */
	c = feed_client(fx);
	rc = 0;
	fed = 0;
	while (!rc && fed < 100000) {
		rc = kv_qmp_feed(c, "{\"execute\":\"nope\"}", 18);
		fed++;
	}
	assert_int_equal(rc, -ENOBUFS);
	assert_true(kv_qmp_buf_pending(&c->out) <= KV_QMP_MAX_OUTPUT);
	kv_qmp_client_free(c);

	/* After quit, the rest of the input is ignored. */
	c = feed_client(fx);
	three = "{\"execute\":\"qmp_capabilities\"}{\"execute\":\"quit\"}"
		"{\"execute\":\"stop\"}";
	assert_int_equal(kv_qmp_feed(c, three, strlen(three)), 0);
	assert_true(c->quit_requested);
	json_decref(take_output(c));
	json_decref(take_output(c));
	assert_null(take_output(c));
	assert_int_equal(fake_get(&fx->vm, &fx->vm.stop_calls), 0);
	kv_qmp_client_free(c);
}

/* A VMM that leaves a callback out gets a clear error, not a crash. */
static void test_missing_ops(void **state)
{
	struct kv_qmp_ops none = {0};
	struct kv_qmp_client *c = kv_qmp_client_new(-1, 1, &none);
	const char *cmds[] = {
	    "query-status",
	    "stop",
	    "cont",
	    "quit",
	    "migrate_cancel",
	    "query-migrate",
	    "query-migrate-parameters",
	    "query-migrate-capabilities",
	    "query-cpus-fast",
	    "system_powerdown",
	    "{\"execute\": \"migrate-set-capabilities\", \"arguments\": "
	    "{\"capabilities\": []}}",
	    "{\"execute\": \"migrate-set-parameters\", \"arguments\": "
	    "{\"downtime-limit\": 1}}",
	};
	char text[128];
	json_t *r;
	size_t i;

	assert_non_null(c);
	c->negotiated = true;
	for (i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		if (cmds[i][0] == '{')
			snprintf(text, sizeof(text), "%s", cmds[i]);
		else
			snprintf(text, sizeof(text), "{\"execute\": \"%s\"}",
				 cmds[i]);
		assert_int_equal(kv_qmp_feed(c, text, strlen(text)), 0);
		r = take_output(c);
		assert_non_null(r);
		assert_non_null(
		    strstr(json_string_value(json_object_get(
			       json_object_get(r, "error"), "desc")),
			   "is not supported"));
		json_decref(r);
	}
	assert_false(c->quit_requested);
	kv_qmp_client_free(c);
}

/* Random bytes and mutations of valid requests: every call returns, and
 * every byte of output is a valid JSON message. */
static void test_feed_random(void **state)
{
	struct fixture *fx = *state;
	const char *seeds[] = {
	    "{\"execute\":\"qmp_capabilities\"}",
	    "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"tcp:a:1\"},"
	    "\"id\":1}",
	    "{\"execute\":\"query-migrate\",\"id\":[1,{\"a\":\"\\u00e9\"}]}",
	    "[[[{\"\\\"\":1}]]] \"x\" true null 1e400",
	};
	unsigned seed = 12345;
	int round;

	for (round = 0; round < 300; round++) {
		struct kv_qmp_client *c = feed_client(fx);
		char buf[256];
		size_t len, i;
		json_t *j;

		c->negotiated = round & 1;
		len = strlen(seeds[round % 4]);
		memcpy(buf, seeds[round % 4], len);
		for (i = 0; i < 1 + (size_t)(round % 8); i++)
			buf[rand_r(&seed) % len] = (char)(rand_r(&seed) & 0xff);
		if (round % 5 == 0)
			for (i = 0; i < len; i++)
				buf[i] = (char)(rand_r(&seed) & 0xff);
		for (i = 0; i < len;) {
			size_t n = 1 + (size_t)rand_r(&seed) % 16;

			if (n > len - i)
				n = len - i;
			assert_true(kv_qmp_feed(c, buf + i, n) >= 0);
			i += n;
		}
		while ((j = take_output(c))) {
			assert_true(json_object_get(j, "return") ||
				    json_object_get(j, "error"));
			json_decref(j);
		}
		kv_qmp_client_free(c);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_greeting, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_negotiation_first, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_query_status_stop_cont, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_migrate_commands, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_query_version_and_commands,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_capabilities, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_parameters, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_cpus_and_powerdown, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_quit, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_id_echo, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_split_and_batched, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_two_clients, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_events, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_oversized_and_garbage, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_client_not_reading, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_stop_with_clients, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(
		test_stop_delivers_every_event_raised_before_it, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_half_close, setup, teardown),
	    cmocka_unit_test(test_missing_ops),
	    cmocka_unit_test_setup_teardown(test_listener_paths, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_tcp, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_feed_bytewise, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_feed_limits, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_feed_random, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
