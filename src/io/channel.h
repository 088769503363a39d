/* SPDX-License-Identifier: MIT */
/*
 * Channels: the byte pipes a migration stream runs over.
 *
 * One const ops table per back end (fd, socket, file). URIs follow QEMU:
 *   tcp:HOST:PORT     tcp:[IPV6]:PORT     unix:PATH     file:PATH     fd:N
 * A channel is full duplex where the transport is (sockets): the return path
 * reads from the same channel the stream writes to.
 *
 * Cancellation: kv_chan_shutdown() may be called from any thread; it makes
 * every blocked and later read/write on the channel return -ECANCELED (or the
 * transport's error) promptly, so a hung peer never hangs the process.
 */
#ifndef KV_IO_CHANNEL_H
#define KV_IO_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "base/error.h"

enum kv_uri_kind { KV_URI_TCP, KV_URI_UNIX, KV_URI_FILE, KV_URI_FD };

struct kv_uri {
	enum kv_uri_kind kind;
	char host[256]; /* tcp: host or address, without brackets */
	char port[16];  /* tcp: decimal port */
	char path[256]; /* unix, file */
	int fd;         /* fd */
};

/* Parse a URI; fills err with what is wrong and where. */
int kv_uri_parse(const char *text, struct kv_uri *uri, struct kv_error *err);

struct kv_chan;

struct kv_chan_ops {
	/* Read up to len bytes; returns bytes read, 0 at EOF, -errno. */
	ssize_t (*read)(struct kv_chan *c, void *buf, size_t len);
	/* Read into some of iov (optional: NULL falls back to read). */
	ssize_t (*readv)(struct kv_chan *c, const struct iovec *iov,
			 int iovcnt);
	/* Write some of iov; returns bytes written or -errno. */
	ssize_t (*writev)(struct kv_chan *c, const struct iovec *iov, int iovcnt);
	void (*shutdown)(struct kv_chan *c);
	void (*close)(struct kv_chan *c);
};

struct kv_chan {
	const struct kv_chan_ops *ops;
	int fd;
	bool is_socket;   /* has a return path */
	bool is_file;     /* seekable file: no return path */
	int shutdown_req; /* set atomically by kv_chan_shutdown */
	/* Time the writing thread spent waiting for the transport to take
	 * more (a full socket buffer): how link-bound a sender is. Written
	 * and read by that thread only. */
	uint64_t write_wait_ns;
	char name[300];   /* for messages: "tcp:127.0.0.1:4444" */
};

/* Wrap an fd the caller already opened; the channel owns it afterwards. */
struct kv_chan *kv_chan_from_fd(int fd, const char *name, struct kv_error *err);

/* Source side: connect to (tcp/unix) or create (file) the URI. */
struct kv_chan *kv_chan_connect(const char *uri, struct kv_error *err);

/* Destination side. For tcp/unix: bind+listen now (so "port in use" is
 * reported before anything else happens), accept later. For file: open for
 * reading at accept. */
struct kv_listener;
struct kv_listener *kv_listener_open(const char *uri, struct kv_error *err);
/* Block until a peer connects (or the file is opened). */
struct kv_chan *kv_listener_accept(struct kv_listener *l, struct kv_error *err);
/* The bound address as a URI (useful with tcp port 0). */
const char *kv_listener_uri(const struct kv_listener *l);
/* The listening socket (tcp, unix; -1 for file: and fd:), non-blocking,
 * for a caller that polls it in its own loop. The listener owns it. */
int kv_listener_fd(const struct kv_listener *l);
/* Take one waiting peer without blocking: a connected socket the caller
 * owns (non-blocking, close-on-exec), -EAGAIN when nobody waits, or
 * another negative errno with err set. tcp and unix listeners only. */
int kv_listener_accept_fd(struct kv_listener *l, struct kv_error *err);
void kv_listener_shutdown(struct kv_listener *l); /* unblock accept */
void kv_listener_close(struct kv_listener *l);

/* Full read/write helpers looping over short transfers. */
int kv_chan_read_full(struct kv_chan *c, void *buf, size_t len,
		      struct kv_error *err);
int kv_chan_writev_full(struct kv_chan *c, struct iovec *iov, int iovcnt,
			struct kv_error *err);
/* Fill every buffer of iov (which it advances, like writev_full). */
int kv_chan_readv_full(struct kv_chan *c, struct iovec *iov, int iovcnt,
		       struct kv_error *err);

/* Bytes written that the peer has not received yet (a socket's SIOCOUTQ:
 * not yet acknowledged over TCP, not yet read over unix), or -1 when the
 * transport cannot tell (files, pipes). */
int64_t kv_chan_unsent(const struct kv_chan *c);

/* A TCP connection's cumulative times (TCP_INFO), in microseconds: busy
 * sending, and of that, held back by the receiver's window (the peer
 * does not read fast enough). -ENOTSOCK / -EOPNOTSUPP when the channel
 * is not TCP or the kernel does not say. */
struct kv_tcp_limits {
	uint64_t busy_us;
	uint64_t rwnd_limited_us;
};
int kv_chan_tcp_limits(const struct kv_chan *c, struct kv_tcp_limits *out);

void kv_chan_shutdown(struct kv_chan *c);
void kv_chan_close(struct kv_chan *c);

#endif
