/* SPDX-License-Identifier: MIT */
/* Private to src/io/: the socket back end's TCP_INFO reader. */
#ifndef KV_IO_TCP_INFO_H
#define KV_IO_TCP_INFO_H

#include "io/channel.h"

/* A TCP socket's busy and receiver-limited times; -errno (EOPNOTSUPP on a
 * unix socket or a kernel that does not report them). */
int kv_tcp_info_limits(int fd, struct kv_tcp_limits *out);

#endif
