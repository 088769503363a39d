/* SPDX-License-Identifier: MIT */
/*
 * Compiled, never run, by the chan_fd_private test: code above src/io/
 * cannot reach a channel's file descriptor, so it cannot bypass a channel
 * that wraps another (TLS). With -DREACH_FD it tries, and must not
 * compile; without, the same file must compile, so the failure is the
 * missing field and not a broken probe.
 */
#include "io/channel.h"

int kv_probe_chan(struct kv_chan *c);

int kv_probe_chan(struct kv_chan *c)
{
#ifdef REACH_FD
	return c->fd;
#else
	return c->is_socket;
#endif
}
