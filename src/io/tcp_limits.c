// SPDX-License-Identifier: MIT
/*
 * What limits a TCP sender, from the kernel's TCP_INFO: how long the
 * connection was busy sending, and how much of that the receiver's
 * window held it back. glibc's struct tcp_info stops before these
 * fields, so this file alone uses the kernel's (linux/tcp.h).
 */
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>

#include <linux/tcp.h>

#include "io/tcp_info.h"

int kv_tcp_info_limits(int fd, struct kv_tcp_limits *out)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	memset(&ti, 0, sizeof(ti));
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
		return -errno; /* EOPNOTSUPP on a unix socket */
	/* An older kernel fills less: the fields are then absent. */
	if (len < offsetof(struct tcp_info, tcpi_sndbuf_limited) +
		      sizeof(ti.tcpi_sndbuf_limited))
		return -EOPNOTSUPP;
	out->busy_us = ti.tcpi_busy_time;
	out->rwnd_limited_us = ti.tcpi_rwnd_limited;
	return 0;
}
