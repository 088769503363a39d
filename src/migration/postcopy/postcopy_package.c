/* SPDX-License-Identifier: MIT */
#include "migration/postcopy/postcopy_package.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migration/postcopy/postcopy_wire.h"

struct pkg_chan {
	struct kv_chan chan; /* first: the ops get &chan */
	uint8_t *buf;
	size_t len, cap, pos;
};

static struct pkg_chan *to_pkg(const struct kv_chan *c)
{
	return (struct pkg_chan *)c;
}

static ssize_t pkg_read(struct kv_chan *c, void *buf, size_t len)
{
	struct pkg_chan *p = to_pkg(c);
	size_t n = p->len - p->pos;

	if (__atomic_load_n(&c->shutdown_req, __ATOMIC_ACQUIRE))
		return -ECANCELED;
	n = n < len ? n : len;
	memcpy(buf, p->buf + p->pos, n);
	p->pos += n;
	return (ssize_t)n;
}

/* Grow to hold more bytes; a package never passes QEMU's 16 MiB. */
static int pkg_reserve(struct pkg_chan *p, size_t more)
{
	size_t cap = p->cap ? p->cap : 4096;
	uint8_t *nb;

	if (more > KV_PC_PACKAGED_MAX || p->len > KV_PC_PACKAGED_MAX - more)
		return -EFBIG;
	while (cap < p->len + more)
		cap *= 2;
	if (cap == p->cap)
		return 0;
	nb = realloc(p->buf, cap);
	if (!nb)
		return -ENOMEM;
	p->buf = nb;
	p->cap = cap;
	return 0;
}

static ssize_t pkg_writev(struct kv_chan *c, const struct iovec *iov,
			  int iovcnt)
{
	struct pkg_chan *p = to_pkg(c);
	size_t total = 0;
	int ret;

	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	ret = pkg_reserve(p, total);
	if (ret < 0)
		return ret;
	for (int i = 0; i < iovcnt; i++) {
		memcpy(p->buf + p->len, iov[i].iov_base, iov[i].iov_len);
		p->len += iov[i].iov_len;
	}
	return (ssize_t)total;
}

static void pkg_shutdown(struct kv_chan *c)
{
	__atomic_store_n(&c->shutdown_req, 1, __ATOMIC_RELEASE);
}

static void pkg_close(struct kv_chan *c)
{
	free(to_pkg(c)->buf);
	free(c);
}

static const struct kv_chan_ops pkg_ops = {
    .read = pkg_read,
    .writev = pkg_writev,
    .shutdown = pkg_shutdown,
    .close = pkg_close,
};

static struct pkg_chan *pkg_new(const char *name, struct kv_error *err)
{
	struct pkg_chan *p = calloc(1, sizeof(*p));

	if (!p) {
		kv_error_set(err, -ENOMEM, "postcopy: no memory for the package");
		return NULL;
	}
	p->chan.ops = &pkg_ops;
	snprintf(p->chan.name, sizeof(p->chan.name), "%s", name);
	return p;
}

struct kv_chan *kv_pc_pkg_writer_new(struct kv_error *err)
{
	struct pkg_chan *p = pkg_new("the postcopy package", err);

	return p ? &p->chan : NULL;
}

const uint8_t *kv_pc_pkg_bytes(const struct kv_chan *c, size_t *len)
{
	*len = to_pkg(c)->len;
	return to_pkg(c)->buf;
}

struct kv_chan *kv_pc_pkg_reader_new(uint8_t *buf, size_t len,
				     struct kv_error *err)
{
	struct pkg_chan *p = pkg_new("the postcopy package", err);

	if (!p) {
		free(buf);
		return NULL;
	}
	p->buf = buf;
	p->len = len;
	p->cap = len;
	return &p->chan;
}
