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
 *
 * Nothing outside src/io/ sees a file descriptor: whatever a caller needs
 * from the transport (waiting with a deadline, a receive low-water mark,
 * socket options, what the kernel knows about the connection) is an
 * operation in struct kv_chan_ops. A channel that wraps another (TLS over
 * a socket) implements each by asking the inner channel, adjusted for what
 * it buffers itself; so every caller works over both unchanged.
 */
#ifndef KV_IO_CHANNEL_H
#define KV_IO_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "base/error.h"
#include "base/units.h"

enum kv_uri_kind { KV_URI_TCP, KV_URI_UNIX, KV_URI_FILE, KV_URI_FD };

struct kv_uri {
	enum kv_uri_kind kind;
	char host[256]; /* tcp: host or address, without brackets */
	char port[16];  /* tcp: decimal port */
	char path[256]; /* unix, file */
	uint64_t offset; /* file: where the stream starts (",offset=N") */
	int fd;         /* fd */
};

/* Parse a URI; fills err with what is wrong and where. */
int kv_uri_parse(const char *text, struct kv_uri *uri, struct kv_error *err);

struct kv_chan;

/*
 * Silence detection (x-link-timeout): a channel with a silence limit fails
 * a read or write that waited that long with no sign of life from the
 * peer, with -ETIMEDOUT. A sign of life is a byte read, or a write that
 * went on after waiting for room (the peer took bytes). The channels of
 * one migration share one activity record, so pages arriving on multifd
 * channels keep the main stream's reader waiting, and a writer blocked on
 * one channel waits while another one moves. The owner (the migration)
 * keeps it alive as long as the channels it was given to.
 */
struct kv_chan_activity {
	int64_t last_ns;     /* atomic: the last sign of life (kv_now_ns) */
	const char *peer;    /* for messages: "the destination" */
	const char *setting; /* for messages: what sets the limit */
};

/* Bytes acknowledged count as a sign of life once this many came since
 * the last one: a live peer takes far more in a quarter of any sensible
 * limit, while a frozen one's kernel may still take a trickle. */
#define KV_CHAN_ACKED_ALIVE_BYTES ((int64_t)(64 * KV_KiB))

/* Start the record now; peer and setting are static strings. */
void kv_chan_activity_init(struct kv_chan_activity *a, const char *peer,
			   const char *setting);
void kv_chan_activity_note(struct kv_chan_activity *a); /* any thread */
int64_t kv_chan_activity_last(const struct kv_chan_activity *a);

/* What TCP_INFO says limited a sender; see kv_chan_tcp_limits(). */
struct kv_tcp_limits {
	uint64_t busy_us;
	uint64_t rwnd_limited_us;
};

/*
 * One const table per back end. read, writev, shutdown and close are
 * required; for the others NULL means "the transport has no such thing"
 * and the kv_chan_* wrapper below answers what such a transport would.
 */
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

	/* Wait until a read would not block: data is there (for a wrapper:
	 * plaintext it already buffered counts), or EOF or an error the
	 * read will report. 1 readable, 0 deadline passed, -ECANCELED once
	 * shut down, other -errno. NULL: always readable (files). */
	int (*wait_readable)(struct kv_chan *c, int64_t deadline_ns);
	/* Receive low-water mark: a waiting reader wakes only once this many
	 * bytes are buffered (1: at every byte). A hint: 0 when set or when
	 * the transport has none. */
	int (*set_recv_lowat)(struct kv_chan *c, size_t bytes);
	/* Send small writes at once (TCP_NODELAY). 0, or -errno. */
	int (*set_nodelay)(struct kv_chan *c, bool on);
	/* Bytes written that the peer has not received yet, or -1. */
	int64_t (*unsent)(const struct kv_chan *c);
	/* The connection's TCP_INFO times; -ENOTSOCK / -EOPNOTSUPP. */
	int (*tcp_limits)(const struct kv_chan *c, struct kv_tcp_limits *out);
	/* Who is at the other end, for messages; see kv_chan_peer_name(). */
	int (*peer_name)(const struct kv_chan *c, char *buf, size_t size);
	/* The transport's part of kv_chan_set_silence (TCP_USER_TIMEOUT; a
	 * wrapper passes it on to the channel it wraps). NULL: nothing. */
	int (*set_silence)(struct kv_chan *c, uint64_t limit_ms,
			   struct kv_chan_activity *shared);
};

/* The descriptor lives in the back end's private struct (channel.c): code
 * above io/ cannot reach it, so it cannot bypass a wrapping channel. */
struct kv_chan {
	const struct kv_chan_ops *ops;
	bool is_socket;   /* has a return path */
	bool is_file;     /* seekable file: no return path */
	int shutdown_req; /* set atomically by kv_chan_shutdown */
	/* Time the writing thread spent waiting for the transport to take
	 * more (a full socket buffer): how link-bound a sender is. Written
	 * and read by that thread only. */
	uint64_t write_wait_ns;
	/* Set by kv_chan_set_silence only: the limit (atomic; 0: waits never
	 * time out) and the activity record (atomic; NULL: not watched). */
	uint64_t silence_ms;
	struct kv_chan_activity *activity;
	char name[300];   /* for messages: "tcp:127.0.0.1:4444" */
};

/* Wrap an fd the caller already opened; the channel owns it afterwards. */
struct kv_chan *kv_chan_from_fd(int fd, const char *name, struct kv_error *err);

/* Source side: connect to (tcp/unix) or create (file) the URI. Waits
 * as long as the kernel does (about 2 minutes for a silent tcp peer). */
struct kv_chan *kv_chan_connect(const char *uri, struct kv_error *err);

/* A cancel token: lets another thread abandon a connect that waits for a
 * silent peer (migrate_cancel). Once triggered it stays triggered: a
 * connect that starts afterwards fails at once. */
struct kv_cancel;
struct kv_cancel *kv_cancel_new(struct kv_error *err);
void kv_cancel_trigger(struct kv_cancel *t); /* any thread; NULL: no-op */
bool kv_cancel_triggered(const struct kv_cancel *t);
void kv_cancel_free(struct kv_cancel *t);

/* kv_chan_connect that can be abandoned: the connect is non-blocking and
 * waits in poll() on the socket and the token, for tcp (every address the
 * name resolves to, all within the one timeout) and unix alike. Fails
 * with -ECANCELED as soon as cancel (NULL: none) is triggered, and with
 * -ETIMEDOUT once timeout_ms (0: the kernel's limit only) passed with no
 * answer, the message naming the address and the time. Resolving the
 * name is not interrupted. */
struct kv_chan *kv_chan_connect_cancellable(const char *uri,
					    const struct kv_cancel *cancel,
					    uint64_t timeout_ms,
					    struct kv_error *err);

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

/* Read len bytes by deadline_ns (kv_now_ns() clock), for a peer not yet
 * trusted to send anything: -ETIMEDOUT when they did not all come in
 * time, -EPIPE when the peer closed first, -ECANCELED after
 * kv_chan_shutdown; err says how many came. */
int kv_chan_read_full_until(struct kv_chan *c, void *buf, size_t len,
			    int64_t deadline_ns, struct kv_error *err);

/* Fill every buffer of iov, waking up about once per `batch` bytes rather
 * than once per network segment: the receive low-water mark follows what
 * is left (never more than batch), so the last part of a payload does not
 * wait for bytes that are not coming, and it is back to 1 on return. */
int kv_chan_readv_full_batched(struct kv_chan *c, struct iovec *iov, int iovcnt,
			       size_t batch, struct kv_error *err);

/* Wait until a read would not block, or deadline_ns (kv_now_ns() clock;
 * negative: no deadline) passes. 1 readable (data, EOF or an error to
 * read), 0 timed out, -ECANCELED after kv_chan_shutdown, other -errno. */
int kv_chan_wait_readable(struct kv_chan *c, int64_t deadline_ns);

/* Receive low-water mark (SO_RCVLOWAT): wake a waiting reader only once
 * `bytes` are buffered; 1 restores the default. 0 also where the transport
 * has none (a hint, never an error to the caller). */
int kv_chan_set_recv_lowat(struct kv_chan *c, size_t bytes);

/* TCP_NODELAY: small messages (the return path, QMP) must not wait for
 * more. kv_chan_connect and kv_listener_accept set it on tcp channels.
 * 0, or -errno (-EOPNOTSUPP where the transport has no such option). */
int kv_chan_set_nodelay(struct kv_chan *c, bool on);

/* Bytes written that the peer has not received yet (a socket's SIOCOUTQ:
 * not yet acknowledged over TCP, not yet read over unix), or -1 when the
 * transport cannot tell (files, pipes). */
int64_t kv_chan_unsent(const struct kv_chan *c);

/* A TCP connection's cumulative times (TCP_INFO), in microseconds: busy
 * sending, and of that, held back by the receiver's window (the peer
 * does not read fast enough). -ENOTSOCK / -EOPNOTSUPP when the channel
 * is not TCP or the kernel does not say. */
int kv_chan_tcp_limits(const struct kv_chan *c, struct kv_tcp_limits *out);

/* Who is at the other end, for messages: "tcp:HOST:PORT" (the peer's
 * own port), "unix:pid N" (its process, where the kernel says); the
 * channel's name where the transport cannot tell. */
void kv_chan_peer_name(const struct kv_chan *c, char *buf, size_t size);

/* Watch c for silence: every sign of life on it is noted in shared (which
 * may be NULL only with limit_ms 0: nothing watched), and a read or write
 * on it that waited limit_ms with no sign of life on any channel sharing
 * the record fails with -ETIMEDOUT (0: never; only noted). On TCP it also
 * sets TCP_USER_TIMEOUT, so that data the peer never acknowledges ends
 * the connection then too. Any thread, any time (the destination clears
 * it once only the decision may come, for instance); 0 or -errno. */
int kv_chan_set_silence(struct kv_chan *c, uint64_t limit_ms,
			struct kv_chan_activity *shared);
/* The limit set (0: none). */
uint64_t kv_chan_silence_ms(const struct kv_chan *c);
/* A wait outside the channel (a condition variable) that stands for
 * waiting on the peer: -ETIMEDOUT with err set ("no byte from the
 * destination tcp:H:P for N ms (x-link-timeout)") when the channels
 * sharing c's record were silent for c's limit since since_ns (or since
 * the last sign of life, whichever is later); else 0. */
int kv_chan_check_silence(const struct kv_chan *c, int64_t since_ns,
			  struct kv_error *err);
/* The message of a silence that ended a wait on c, -ETIMEDOUT. */
int kv_chan_silence_error(const struct kv_chan *c, struct kv_error *err);

/*
 * Positioned I/O on a regular file's channel (file:, or fd: of a file),
 * for mapped-ram: every page has its own place in the file. Any other
 * channel answers -ESPIPE. The positioned calls do not move the
 * channel's own position and may run on several threads at once.
 */
/* lseek(2): the new position, or -errno with err set. */
int64_t kv_chan_file_seek(struct kv_chan *c, int64_t off, int whence,
			  struct kv_error *err);
/* Write all of iov at off (retrying short writes). */
int kv_chan_file_pwritev(struct kv_chan *c, const struct iovec *iov,
			 int iovcnt, uint64_t off, struct kv_error *err);
/* Read all of iov from off: -ENODATA (err: how many bytes there were)
 * when the file ends first. */
int kv_chan_file_preadv(struct kv_chan *c, const struct iovec *iov,
			int iovcnt, uint64_t off, struct kv_error *err);
/* Make [off, off + len) a hole that reads as zeros (the size stays). */
int kv_chan_file_punch(struct kv_chan *c, uint64_t off, uint64_t len,
		       struct kv_error *err);
/* The file's size in bytes, or -errno. */
int64_t kv_chan_file_size(struct kv_chan *c, struct kv_error *err);
/* Cut the file at len bytes. */
int kv_chan_file_truncate(struct kv_chan *c, uint64_t len,
			  struct kv_error *err);
/* A second channel on the same open file (the same inode, whatever its
 * path became), for writing or reading, with O_DIRECT when direct (then
 * buffers, offsets and lengths must be aligned to the device's block). */
struct kv_chan *kv_chan_file_reopen(struct kv_chan *c, bool write, bool direct,
				    struct kv_error *err);

void kv_chan_shutdown(struct kv_chan *c);
void kv_chan_close(struct kv_chan *c);

#endif
