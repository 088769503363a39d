/* SPDX-License-Identifier: MIT */
#include "stream_file.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <cmocka.h>

#include "io/channel.h"

struct kv_stream *open_write(char *path, size_t size)
{
	struct kv_error err = {0};
	struct kv_chan *c;
	int fd;

	snprintf(path, size, "/tmp/kvmig-test-stream-XXXXXX");
	fd = mkstemp(path);
	assert_true(fd >= 0);
	c = kv_chan_from_fd(fd, "test-out", &err);
	assert_non_null(c);
	return kv_stream_new(c, KV_STREAM_WRITE);
}

uint8_t *close_and_read(struct kv_stream *s, const char *path, size_t *len)
{
	uint8_t *buf;
	FILE *f;
	long n;

	assert_int_equal(kv_stream_close(s), 0);
	f = fopen(path, "rb");
	assert_non_null(f);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc(n ? (size_t)n : 1);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	unlink(path);
	*len = (size_t)n;
	return buf;
}

struct kv_stream *open_read_bytes(const uint8_t *b, size_t n)
{
	char path[64] = "/tmp/kvmig-test-stream-in-XXXXXX";
	struct kv_error err = {0};
	struct kv_chan *c;
	int fd = mkstemp(path);

	assert_true(fd >= 0);
	unlink(path);
	if (n)
		assert_int_equal(write(fd, b, n), (ssize_t)n);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	c = kv_chan_from_fd(fd, "test-in", &err);
	assert_non_null(c);
	return kv_stream_new(c, KV_STREAM_READ);
}
