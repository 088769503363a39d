/* SPDX-License-Identifier: MIT */
/*
 * userfaultfd's descriptor and ioctls (uffd.h).
 */
#include "migration/postcopy/uffd.h"

#include "base/units.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Linux 6.4's feature (uapi value); Debian 12's headers predate it, and
 * the kernel agrees to it only where it has it. */
#ifdef UFFD_FEATURE_WP_UNPOPULATED
#define WP_UNPOPULATED UFFD_FEATURE_WP_UNPOPULATED
#else
#define WP_UNPOPULATED ((uint64_t)1 << 13)
#endif

struct kv_uffd {
	int fd;
	int wake_fd; /* eventfd: kv_uffd_wakeup */
	bool thread_id; /* the kernel names the faulting thread */
	uint64_t features; /* agreed with the kernel */
};

static int uffd_syscall(void)
{
	return (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
}

static int open_error(int e, struct kv_error *err)
{
	if (e == EPERM)
		return kv_error_set(err, -EPERM, "userfaultfd: not permitted for this process (vm.unprivileged_userfaultfd is 0): run kvmig as root or with CAP_SYS_PTRACE, or set the sysctl to 1");
	if (e == ENOSYS)
		return kv_error_set(err, -ENOSYS, "userfaultfd: this kernel has none (CONFIG_USERFAULTFD is off): postcopy cannot run here");
	return kv_error_set_errno(err, -e, "userfaultfd: cannot open one");
}

/* What the kernel offers, asked on a descriptor of its own: UFFDIO_API
 * may be called once per descriptor, and a refused call spends it. */
static int supported_features(uint64_t *features, struct kv_error *err)
{
	struct uffdio_api api = {.api = UFFD_API};
	int fd = uffd_syscall();

	if (fd < 0)
		return open_error(errno, err);
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		int e = errno;

		close(fd);
		return kv_error_set_errno(err, -e, "userfaultfd: the kernel refused API %#llx", (unsigned long long)UFFD_API);
	}
	close(fd);
	*features = api.features;
	return 0;
}

/* Agree on the API with the required features and whichever of the
 * optional ones the kernel has. */
static int agree_api(struct kv_uffd *u, uint64_t required, uint64_t optional,
		     struct kv_error *err)
{
	struct uffdio_api api = {.api = UFFD_API};
	uint64_t have = 0;
	int r = supported_features(&have, err);

	if (r < 0)
		return r;
	if ((have & required) != required)
		return kv_error_set(err, -EOPNOTSUPP, "userfaultfd: this kernel lacks features %#llx (it has %#llx): write-protection of memory needs CONFIG_HAVE_ARCH_USERFAULTFD_WP", (unsigned long long)(required & ~have), (unsigned long long)have);
	api.features = required | (optional & have);
	if (ioctl(u->fd, UFFDIO_API, &api) < 0)
		return kv_error_set_errno(err, -errno, "userfaultfd: the kernel refused API %#llx with features %#llx", (unsigned long long)UFFD_API, (unsigned long long)(required | (optional & have)));
	u->features = required | (optional & have);
	u->thread_id = u->features & UFFD_FEATURE_THREAD_ID;
	return 0;
}

static struct kv_uffd *open_with(uint64_t required, uint64_t optional,
				 struct kv_error *err)
{
	struct kv_uffd *u = calloc(1, sizeof(*u));

	if (!u) {
		kv_error_set(err, -ENOMEM, "userfaultfd: out of memory");
		return NULL;
	}
	u->wake_fd = -1;
	u->fd = uffd_syscall();
	if (u->fd < 0) {
		open_error(errno, err);
		free(u);
		return NULL;
	}
	if (agree_api(u, required, optional, err) < 0) {
		kv_uffd_close(u);
		return NULL;
	}
	u->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (u->wake_fd < 0) {
		kv_error_set_errno(err, -errno, "userfaultfd: cannot make its wake-up eventfd");
		kv_uffd_close(u);
		return NULL;
	}
	return u;
}

struct kv_uffd *kv_uffd_open(struct kv_error *err)
{
	return open_with(0, UFFD_FEATURE_THREAD_ID, err);
}

struct kv_uffd *kv_uffd_open_wp(bool unpopulated_too, struct kv_error *err)
{
	return open_with(UFFD_FEATURE_PAGEFAULT_FLAG_WP,
			 UFFD_FEATURE_THREAD_ID |
			     (unpopulated_too ? WP_UNPOPULATED : 0),
			 err);
}

bool kv_uffd_wp_unpopulated(const struct kv_uffd *u)
{
	return u->features & WP_UNPOPULATED;
}

void kv_uffd_close(struct kv_uffd *u)
{
	if (!u)
		return;
	if (u->fd >= 0)
		close(u->fd);
	if (u->wake_fd >= 0)
		close(u->wake_fd);
	free(u);
}

int kv_uffd_register(struct kv_uffd *u, void *addr, size_t len,
		     struct kv_error *err)
{
	struct uffdio_register reg = {
	    .range = {.start = (uintptr_t)addr, .len = len},
	    .mode = UFFDIO_REGISTER_MODE_MISSING,
	};

	if (ioctl(u->fd, UFFDIO_REGISTER, &reg) < 0)
		return kv_error_set_errno(err, -errno, "userfaultfd: cannot register %zu bytes at %p for missing-page faults", len, addr);
	if (!(reg.ioctls & ((uint64_t)1 << _UFFDIO_COPY)) ||
	    !(reg.ioctls & ((uint64_t)1 << _UFFDIO_ZEROPAGE)))
		return kv_error_set(err, -EOPNOTSUPP, "userfaultfd: the memory at %p cannot be filled with UFFDIO_COPY and UFFDIO_ZEROPAGE (ioctls %#llx)", addr, (unsigned long long)reg.ioctls);
	return 0;
}

int kv_uffd_unregister(struct kv_uffd *u, void *addr, size_t len,
		       struct kv_error *err)
{
	struct uffdio_range r = {.start = (uintptr_t)addr, .len = len};

	if (ioctl(u->fd, UFFDIO_UNREGISTER, &r) < 0)
		return kv_error_set_errno(err, -errno, "userfaultfd: cannot unregister %zu bytes at %p", len, addr);
	return 0;
}

int kv_uffd_register_wp(struct kv_uffd *u, void *addr, size_t len,
			struct kv_error *err)
{
	struct uffdio_register reg = {
	    .range = {.start = (uintptr_t)addr, .len = len},
	    .mode = UFFDIO_REGISTER_MODE_WP,
	};

	if (ioctl(u->fd, UFFDIO_REGISTER, &reg) < 0)
		return kv_error_set_errno(err, -errno, "userfaultfd: cannot register %zu bytes at %p for write-protect faults", len, addr);
	if (!(reg.ioctls & ((uint64_t)1 << _UFFDIO_WRITEPROTECT)))
		return kv_error_set(err, -EOPNOTSUPP, "userfaultfd: the memory at %p cannot be write-protected (ioctls %#llx)", addr, (unsigned long long)reg.ioctls);
	return 0;
}

int kv_uffd_write_protect(struct kv_uffd *u, void *addr, size_t len,
			  bool protect, struct kv_error *err)
{
	struct uffdio_writeprotect wp = {
	    .range = {.start = (uintptr_t)addr, .len = len},
	    .mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};

	for (;;) {
		if (ioctl(u->fd, UFFDIO_WRITEPROTECT, &wp) == 0)
			return 0;
		/* EAGAIN: the mapping is changing under us (fork, THP split). */
		if (errno != EAGAIN)
			return kv_error_set_errno(err, -errno, "userfaultfd: cannot %s %zu bytes at %p", protect ? "write-protect" : "un-protect", len, addr);
	}
}

void kv_uffd_wakeup(struct kv_uffd *u)
{
	uint64_t one = 1;

	if (write(u->wake_fd, &one, sizeof(one)) < 0) {
		/* Full counter: a wake-up is pending anyway. */
	}
}

static void drain_wakeup(struct kv_uffd *u)
{
	uint64_t v;

	if (read(u->wake_fd, &v, sizeof(v)) < 0) {
		/* EAGAIN: nothing pending. */
	}
}

int kv_uffd_wait_fault(struct kv_uffd *u, int timeout_ms,
		       struct kv_uffd_fault *f, struct kv_error *err)
{
	struct pollfd p[2] = {{.fd = u->fd, .events = POLLIN},
			      {.fd = u->wake_fd, .events = POLLIN}};

	for (;;) {
		struct uffd_msg msg;
		ssize_t n;
		int r = poll(p, 2, timeout_ms);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return kv_error_set_errno(err, -errno, "userfaultfd: waiting for a fault");
		if (r == 0)
			return 0;
		if (p[1].revents) {
			drain_wakeup(u);
			return 0;
		}
		n = read(u->fd, &msg, sizeof(msg));
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue; /* another reader took it */
		if (n < 0)
			return kv_error_set_errno(err, -errno, "userfaultfd: reading a fault");
		if (n != (ssize_t)sizeof(msg))
			return kv_error_set(err, -EIO, "userfaultfd: short message (%zd bytes)", n);
		if (msg.event != UFFD_EVENT_PAGEFAULT)
			continue; /* not registered for others */
		f->addr = msg.arg.pagefault.address & ~(uint64_t)(KV_PAGE_SIZE - 1);
		f->write = msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE;
		f->wp = msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP;
		f->tid = u->thread_id ? msg.arg.pagefault.feat.ptid : 0;
		return 1;
	}
}

int kv_uffd_place(struct kv_uffd *u, void *dst, const void *src, size_t len,
		  struct kv_error *err)
{
	size_t done = 0;

	while (done < len) {
		struct uffdio_copy c = {
		    .dst = (uintptr_t)dst + done,
		    .src = (uintptr_t)src + done,
		    .len = len - done,
		};

		if (ioctl(u->fd, UFFDIO_COPY, &c) == 0)
			return 0;
		if (errno == EEXIST)
			return 1;
		/* EAGAIN: part copied, or the mapping is changing. */
		if (errno != EAGAIN)
			return kv_error_set_errno(err, -errno, "userfaultfd: placing %zu bytes at %p", len - done, (void *)(uintptr_t)c.dst);
		if (c.copy > 0)
			done += (size_t)c.copy;
	}
	return 0;
}

int kv_uffd_place_zero(struct kv_uffd *u, void *dst, size_t len,
		       struct kv_error *err)
{
	size_t done = 0;

	while (done < len) {
		struct uffdio_zeropage z = {
		    .range = {.start = (uintptr_t)dst + done, .len = len - done},
		};

		if (ioctl(u->fd, UFFDIO_ZEROPAGE, &z) == 0)
			return 0;
		if (errno == EEXIST)
			return 1;
		if (errno != EAGAIN)
			return kv_error_set_errno(err, -errno, "userfaultfd: placing %zu zero bytes at %p", len - done, (void *)(uintptr_t)z.range.start);
		if (z.zeropage > 0)
			done += (size_t)z.zeropage;
	}
	return 0;
}
