/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the command-line QMP client (src/cli/qmp_client.c):
 * against kvmig's own monitor with fake VMM ops, and against a scripted
 * server thread that sends split documents, stray replies, events,
 * malformed JSON or nothing at all.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "cli/qmp_client.h"
#include "monitor/qmp.h"
#include "monitor/qmp_migration.h"

#define TIMEOUT_MS 5000

struct tmpdir {
	char path[64];
	char sock[100]; /* fits sockaddr_un.sun_path */
};

static void tmpdir_make(struct tmpdir *t)
{
	snprintf(t->path, sizeof(t->path), "/tmp/kvmig-qmpc-XXXXXX");
	assert_non_null(mkdtemp(t->path));
	snprintf(t->sock, sizeof(t->sock), "%s/qmp.sock", t->path);
}

static void tmpdir_remove(struct tmpdir *t)
{
	unlink(t->sock);
	rmdir(t->path);
}

/* ---- a scripted server ---- */

enum step_kind { SEND, EXPECT, PAUSE, CLOSE };

struct step {
	enum step_kind kind;
	const char *text; /* SEND: bytes; EXPECT: a substring of the next
			   * line the client sends */
	int ms;		  /* PAUSE */
};

struct script {
	int listen_fd;
	const struct step *steps;
	int failures; /* EXPECT mismatches, checked by the test */
	char seen[4096];
	pthread_t thread;
};

static bool read_line(int fd, char *buf, size_t len)
{
	size_t n = 0;

	while (n + 1 < len) {
		ssize_t r = read(fd, buf + n, 1);

		if (r <= 0)
			return false;
		if (buf[n] == '\n')
			break;
		n++;
	}
	buf[n] = '\0';
	return true;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};

	nanosleep(&ts, NULL);
}

static void *script_main(void *arg)
{
	struct script *s = arg;
	int fd = accept(s->listen_fd, NULL, NULL);
	char line[4096];

	if (fd < 0) {
		s->failures++;
		return NULL;
	}
	for (const struct step *st = s->steps;; st++) {
		if (st->kind == CLOSE)
			break;
		switch (st->kind) {
		case SEND:
			if (write(fd, st->text, strlen(st->text)) < 0)
				s->failures++;
			break;
		case EXPECT:
			if (!read_line(fd, line, sizeof(line)) ||
			    !strstr(line, st->text))
				s->failures++;
			snprintf(s->seen + strlen(s->seen),
				 sizeof(s->seen) - strlen(s->seen), "%.*s",
				 (int)(sizeof(s->seen) / 4), line);
			break;
		case PAUSE:
			sleep_ms(st->ms);
			break;
		case CLOSE:
			break;
		}
	}
	close(fd);
	return NULL;
}

static void script_start(struct script *s, const struct tmpdir *t,
			 const struct step *steps)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};

	memset(s, 0, sizeof(*s));
	s->steps = steps;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", t->sock);
	s->listen_fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_true(s->listen_fd >= 0);
	assert_int_equal(bind(s->listen_fd, (struct sockaddr *)&sa, sizeof(sa)),
			 0);
	assert_int_equal(listen(s->listen_fd, 4), 0);
	assert_int_equal(pthread_create(&s->thread, NULL, script_main, s), 0);
}

static void script_join(struct script *s)
{
	pthread_join(s->thread, NULL);
	close(s->listen_fd);
}

#define GREETING "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n"

/* Documents split across writes, an event and a stray reply before ours:
 * the reply with our id wins, the event is kept. */
static void test_split_event_and_stray_reply(void **state)
{
	static const struct step steps[] = {
	    {SEND, "{\"QMP\": {\"version\": ", 0},
	    {PAUSE, NULL, 50},
	    {SEND, "{}, \"capabilities\": []}}\r\n", 0},
	    {EXPECT, "\"qmp_capabilities\"", 0},
	    {SEND, "{\"return\": {}, \"id\": 1}\r\n", 0},
	    {EXPECT, "\"query-migrate\"", 0},
	    {SEND,
	     "{\"event\": \"MIGRATION\", \"data\": {\"status\": \"active\"}}"
	     "\r\n{\"return\": {\"status\": \"stale\"}, \"id\": 99}\r\n"
	     "{\"return\": {\"status\": \"act",
	     0},
	    {PAUSE, NULL, 50},
	    {SEND, "ive\"}, \"id\": 2}\r\n", 0},
	    {CLOSE, NULL, 0},
	};
	struct kv_error err = {0};
	struct kv_qmpc *c;
	struct script s;
	struct tmpdir t;
	json_t *ret = NULL, *ev = NULL;

	(void)state;
	tmpdir_make(&t);
	script_start(&s, &t, steps);
	assert_int_equal(kv_qmpc_connect(t.sock, TIMEOUT_MS, &c, &err), 0);
	assert_non_null(json_object_get(kv_qmpc_greeting(c), "capabilities"));
	assert_int_equal(
	    kv_qmpc_execute(c, "query-migrate", NULL, &ret, TIMEOUT_MS, &err),
	    0);
	assert_string_equal(json_string_value(json_object_get(ret, "status")),
			    "active");
	assert_int_equal(kv_qmpc_next_event(c, 0, &ev, &err), 1);
	assert_string_equal(json_string_value(json_object_get(ev, "event")),
			    "MIGRATION");
	json_decref(ev);
	/* the server has closed: no more events, and the error says so */
	assert_int_equal(kv_qmpc_next_event(c, TIMEOUT_MS, &ev, &err),
			 -ECONNRESET);
	assert_non_null(strstr(err.msg, "connection was closed"));
	json_decref(ret);
	kv_qmpc_close(c);
	script_join(&s);
	assert_int_equal(s.failures, 0);
	assert_non_null(strstr(s.seen, "\"id\":2"));
	tmpdir_remove(&t);
}

static void test_error_reply_and_arguments(void **state)
{
	static const struct step steps[] = {
	    {SEND, GREETING, 0},
	    {EXPECT, "qmp_capabilities", 0},
	    {SEND, "{\"return\": {}, \"id\": 1}\n", 0},
	    {EXPECT, "\"arguments\":{\"downtime-limit\":50}", 0},
	    {SEND,
	     "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter "
	     "'x' is unexpected\"}, \"id\": 2}\n",
	     0},
	    {CLOSE, NULL, 0},
	};
	struct kv_error err = {0};
	struct kv_qmpc *c;
	struct script s;
	struct tmpdir t;

	(void)state;
	tmpdir_make(&t);
	script_start(&s, &t, steps);
	assert_int_equal(kv_qmpc_connect(t.sock, TIMEOUT_MS, &c, &err), 0);
	assert_int_equal(
	    kv_qmpc_execute(c, "migrate-set-parameters",
			    json_pack("{s:i}", "downtime-limit", 50), NULL,
			    TIMEOUT_MS, &err),
	    -EREMOTEIO);
	assert_string_equal(kv_qmpc_error_class(c), "GenericError");
	assert_string_equal(kv_qmpc_error_desc(c),
			    "Parameter 'x' is unexpected");
	assert_non_null(strstr(err.msg, "migrate-set-parameters: "
					"GenericError: Parameter 'x'"));
	kv_qmpc_close(c);
	script_join(&s);
	assert_int_equal(s.failures, 0);
	tmpdir_remove(&t);
}

static void test_malformed_json(void **state)
{
	static const struct step steps[] = {
	    {SEND, GREETING, 0},
	    {EXPECT, "qmp_capabilities", 0},
	    {SEND, "{\"return\": {}, \"id\": 1}\n", 0},
	    {EXPECT, "query-status", 0},
	    {SEND, "{\"return\": nonsense}\n", 0},
	    {PAUSE, NULL, 100},
	    {CLOSE, NULL, 0},
	};
	struct kv_error err = {0};
	struct kv_qmpc *c;
	struct script s;
	struct tmpdir t;

	(void)state;
	tmpdir_make(&t);
	script_start(&s, &t, steps);
	assert_int_equal(kv_qmpc_connect(t.sock, TIMEOUT_MS, &c, &err), 0);
	assert_int_equal(
	    kv_qmpc_execute(c, "query-status", NULL, NULL, TIMEOUT_MS, &err),
	    -EPROTO);
	assert_non_null(strstr(err.msg, "malformed JSON"));
	assert_non_null(strstr(err.msg, t.sock));
	kv_qmpc_close(c);
	script_join(&s);
	tmpdir_remove(&t);
}

static void test_closed_and_silent_servers(void **state)
{
	static const struct step closes[] = {
	    {SEND, GREETING, 0},
	    {EXPECT, "qmp_capabilities", 0},
	    {CLOSE, NULL, 0},
	};
	static const struct step silent[] = {
	    {PAUSE, NULL, 600},
	    {CLOSE, NULL, 0},
	};
	struct kv_error err = {0};
	struct kv_qmpc *c;
	struct script s;
	struct tmpdir t;

	(void)state;
	tmpdir_make(&t);
	script_start(&s, &t, closes);
	assert_int_equal(kv_qmpc_connect(t.sock, TIMEOUT_MS, &c, &err),
			 -ECONNRESET);
	assert_null(c);
	assert_non_null(strstr(err.msg, "connection was closed"));
	script_join(&s);
	unlink(t.sock);

	kv_error_clear(&err);
	script_start(&s, &t, silent);
	assert_int_equal(kv_qmpc_connect(t.sock, 200, &c, &err), -ETIMEDOUT);
	assert_non_null(strstr(err.msg, "no greeting"));
	script_join(&s);
	tmpdir_remove(&t);
}

static void test_bad_addresses(void **state)
{
	struct kv_error err = {0};
	struct kv_qmpc *c;

	(void)state;
	assert_int_equal(kv_qmpc_connect("/nonexistent/kvmig/qmp.sock",
					 TIMEOUT_MS, &c, &err),
			 -ENOENT);
	assert_non_null(strstr(err.msg, "/nonexistent/kvmig/qmp.sock"));
	kv_error_clear(&err);
	assert_int_equal(kv_qmpc_connect("file:/tmp/x", TIMEOUT_MS, &c, &err),
			 -EINVAL);
	kv_error_clear(&err);
	assert_true(kv_qmpc_connect("tcp:127.0.0.1:", TIMEOUT_MS, &c, &err) <
		    0);
	assert_non_null(strstr(err.msg, "port"));
	kv_error_clear(&err);
	/* port 1 on loopback: nobody listens there */
	assert_true(kv_qmpc_connect("tcp:127.0.0.1:1", TIMEOUT_MS, &c, &err) <
		    0);
	assert_non_null(strstr(err.msg, "tcp:127.0.0.1:1"));
}

/* ---- against kvmig's own monitor ---- */

static int fake_query_status(void *opaque, void **ret, struct kv_error *err)
{
	(void)opaque;
	(void)err;
	*ret = json_pack("{s:s,s:b}", "status", "running", "running", 1);
	return 0;
}

static int fake_migrate(void *opaque, const char *uri,
			const struct kv_mig_params *p, struct kv_error *err)
{
	snprintf(opaque, 256, "%s", uri);
	(void)p;
	(void)err;
	return 0;
}

static void test_real_monitor(void **state)
{
	char uri_seen[256] = "";
	const struct kv_qmp_mig_ops mig_ops = {
	    .start = fake_migrate,
	    .opaque = uri_seen,
	};
	struct kv_qmp_mig *mig = kv_qmp_mig_new(&mig_ops);
	const struct kv_qmp_ops ops = {
	    .query_status = fake_query_status,
	    .migration = mig,
	    .opaque = uri_seen,
	};
	struct kv_error err = {0};
	struct kv_qmp *mon;
	struct kv_qmpc *c;
	struct tmpdir t;
	char addr[160];
	json_t *ret = NULL, *ev = NULL;

	(void)state;
	tmpdir_make(&t);
	snprintf(addr, sizeof(addr), "unix:%s", t.sock);
	assert_int_equal(kv_qmp_start(addr, &ops, &mon, &err), 0);
	assert_int_equal(kv_qmpc_connect(addr, TIMEOUT_MS, &c, &err), 0);
	assert_int_equal(
	    kv_qmpc_execute(c, "query-status", NULL, &ret, TIMEOUT_MS, &err),
	    0);
	assert_true(json_is_true(json_object_get(ret, "running")));
	json_decref(ret);
	assert_int_equal(
	    kv_qmpc_execute(c, "migrate",
			    json_pack("{s:s}", "uri", "tcp:127.0.0.1:4444"),
			    NULL, TIMEOUT_MS, &err),
	    0);
	assert_string_equal(uri_seen, "tcp:127.0.0.1:4444");
	kv_error_clear(&err);
	assert_int_equal(
	    kv_qmpc_execute(c, "no-such-command", NULL, NULL, TIMEOUT_MS, &err),
	    -EREMOTEIO);
	assert_string_equal(kv_qmpc_error_class(c), "CommandNotFound");
	/* events reach the client between commands */
	kv_qmp_event(mon, "MIGRATION_PASS", json_pack("{s:i}", "pass", 3));
	assert_int_equal(kv_qmpc_next_event(c, TIMEOUT_MS, &ev, &err), 1);
	assert_string_equal(json_string_value(json_object_get(ev, "event")),
			    "MIGRATION_PASS");
	assert_int_equal(json_integer_value(json_object_get(
			     json_object_get(ev, "data"), "pass")),
			 3);
	json_decref(ev);
	assert_int_equal(kv_qmpc_next_event(c, 50, &ev, &err), 0);
	kv_qmpc_close(c);
	kv_qmp_stop(mon);
	kv_qmp_mig_free(mig);
	tmpdir_remove(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_split_event_and_stray_reply),
	    cmocka_unit_test(test_error_reply_and_arguments),
	    cmocka_unit_test(test_malformed_json),
	    cmocka_unit_test(test_closed_and_silent_servers),
	    cmocka_unit_test(test_bad_addresses),
	    cmocka_unit_test(test_real_monitor),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
