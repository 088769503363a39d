/* SPDX-License-Identifier: MIT */
/* Migration URIs, in QEMU's spelling: tcp:, unix:, file:, fd:. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "io/channel.h"

static bool has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Decimal digits only, value <= max. */
static bool parse_decimal(const char *s, long max, long *out)
{
	long v = 0;

	if (*s == '\0')
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return false;
		v = v * 10 + (*s - '0');
		if (v > max)
			return false;
	}
	*out = v;
	return true;
}

static bool all_digits(const char *s)
{
	if (*s == '\0')
		return false;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return false;
	return true;
}

static int missing_port(const char *text, struct kv_error *err)
{
	return kv_error_set(err, -EINVAL, "'%s': missing port (expected tcp:HOST:PORT)", text);
}

static int parse_port(const char *text, const char *port, struct kv_uri *uri,
		      struct kv_error *err)
{
	long v;

	if (*port == '\0')
		return missing_port(text, err);
	if (!all_digits(port))
		return kv_error_set(err, -EINVAL,
				    "'%s': port '%s' is not a number", text,
				    port);
	if (!parse_decimal(port, 65535, &v))
		return kv_error_set(err, -EINVAL,
				    "'%s': port %s is out of range (0-65535)",
				    text, port);
	snprintf(uri->port, sizeof(uri->port), "%u", (unsigned)(uint16_t)v);
	return 0;
}

static int parse_tcp(const char *text, const char *rest, struct kv_uri *uri,
		     struct kv_error *err)
{
	const char *port;
	size_t host_len;

	uri->kind = KV_URI_TCP;
	if (*rest == '[') {
		const char *end = strchr(rest, ']');

		if (!end)
			return kv_error_set(err, -EINVAL,
					    "'%s': missing ']' after IPv6 address",
					    text);
		host_len = (size_t)(end - rest - 1);
		if (host_len == 0)
			return kv_error_set(err, -EINVAL,
					    "'%s': empty IPv6 address", text);
		if (end[1] != ':')
			return kv_error_set(err, -EINVAL,
					    "'%s': missing port (expected tcp:[IPV6]:PORT)",
					    text);
		rest++;
		port = end + 2;
	} else {
		const char *colon = strrchr(rest, ':');

		if (!colon)
			return missing_port(text, err);
		host_len = (size_t)(colon - rest);
		if (memchr(rest, ':', host_len))
			return kv_error_set(err, -EINVAL,
					    "'%s': an IPv6 address needs brackets: tcp:[ADDR]:PORT",
					    text);
		port = colon + 1;
	}
	if (host_len >= sizeof(uri->host))
		return kv_error_set(err, -ENAMETOOLONG,
				    "'%s': host name too long (%zu bytes, at most %zu)",
				    text, host_len, sizeof(uri->host) - 1);
	memcpy(uri->host, rest, host_len);
	uri->host[host_len] = '\0';
	return parse_port(text, port, uri, err);
}

/* The first len bytes of path. */
static int parse_path_n(const char *text, const char *path, size_t len,
			size_t max, struct kv_uri *uri, struct kv_error *err)
{
	if (len == 0)
		return kv_error_set(err, -EINVAL, "'%s': empty path", text);
	if (len > max)
		return kv_error_set(err, -ENAMETOOLONG,
				    "'%s': path too long (%zu bytes, at most %zu)",
				    text, len, max);
	memcpy(uri->path, path, len);
	uri->path[len] = '\0';
	return 0;
}

static int parse_path(const char *text, const char *path, size_t max,
		      struct kv_uri *uri, struct kv_error *err)
{
	return parse_path_n(text, path, strlen(path), max, uri, err);
}

/* A size as QEMU's offset= takes it: digits, then an optional K, M, G
 * or T (binary multiples). */
static bool parse_size(const char *s, uint64_t *out)
{
	uint64_t v = 0, mult = 1;

	if (*s < '0' || *s > '9')
		return false;
	for (; *s >= '0' && *s <= '9'; s++) {
		if (v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	switch (*s) {
	case '\0':
		break;
	case 'k': case 'K':
		mult = KV_KiB;
		break;
	case 'm': case 'M':
		mult = KV_MiB;
		break;
	case 'g': case 'G':
		mult = KV_GiB;
		break;
	case 't': case 'T':
		mult = KV_GiB * 1024;
		break;
	default:
		return false;
	}
	if (*s && s[1])
		return false;
	if (v > UINT64_MAX / mult)
		return false;
	*out = v * mult;
	return true;
}

/* file:PATH[,offset=N]: the stream starts N bytes into the file (QEMU's
 * option, for a file that holds something else before it). */
static int parse_file(const char *text, const char *rest, struct kv_uri *uri,
		      struct kv_error *err)
{
	const char *opt = strstr(rest, ",offset=");

	uri->kind = KV_URI_FILE;
	if (!opt)
		return parse_path(text, rest, sizeof(uri->path) - 1, uri, err);
	if (!parse_size(opt + 8, &uri->offset) || uri->offset > INT64_MAX)
		return kv_error_set(err, -EINVAL, "'%s': bad offset '%s' (expected offset=BYTES, e.g. 4096 or 1M)", text, opt + 8);
	return parse_path_n(text, rest, (size_t)(opt - rest),
			    sizeof(uri->path) - 1, uri, err);
}

static int parse_fd(const char *text, const char *num, struct kv_uri *uri,
		    struct kv_error *err)
{
	long v;

	uri->kind = KV_URI_FD;
	if (!parse_decimal(num, 1 << 30, &v))
		return kv_error_set(err, -EINVAL,
				    "'%s': '%s' is not a file descriptor number",
				    text, num);
	uri->fd = (int)v;
	return 0;
}

int kv_uri_parse(const char *text, struct kv_uri *uri, struct kv_error *err)
{
	struct sockaddr_un sun;

	memset(uri, 0, sizeof(*uri));
	uri->fd = -1;
	if (!text || *text == '\0')
		return kv_error_set(err, -EINVAL,
				    "empty migration URI: use tcp:, unix:, file: or fd:");
	if (has_prefix(text, "tcp:"))
		return parse_tcp(text, text + 4, uri, err);
	if (has_prefix(text, "unix:")) {
		uri->kind = KV_URI_UNIX;
		return parse_path(text, text + 5, sizeof(sun.sun_path) - 1, uri,
				  err);
	}
	if (has_prefix(text, "file:"))
		return parse_file(text, text + 5, uri, err);
	if (has_prefix(text, "fd:"))
		return parse_fd(text, text + 3, uri, err);
	return kv_error_set(err, -EINVAL,
			    "'%s': unknown scheme: use tcp:, unix:, file: or fd:",
			    text);
}
