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

struct kv_uffd {
	int fd;
	int wake_fd; /* eventfd: kv_uffd_wakeup */
	bool thread_id; /* the kernel names the faulting thread */
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

/* UFFDIO_API once per descriptor: with the thread ids if the kernel has
 * them, else plain (a fresh descriptor: a refused API call spends it). */
static int agree_api(struct kv_uffd *u, struct kv_error *err)
{
	struct uffdio_api api = {.api = UFFD_API,
				 .features = UFFD_FEATURE_THREAD_ID};

	if (ioctl(u->fd, UFFDIO_API, &api) == 0) {
		u->thread_id = true;
		return 0;
	}
	close(u->fd);
	u->fd = uffd_syscall();
	if (u->fd < 0)
		return open_error(errno, err);
	api = (struct uffdio_api){.api = UFFD_API};
	if (ioctl(u->fd, UFFDIO_API, &api) < 0)
		return kv_error_set_errno(err, -errno, "userfaultfd: the kernel refused API %#llx", (unsigned long long)UFFD_API);
	return 0;
}

struct kv_uffd *kv_uffd_open(struct kv_error *err)
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
	if (agree_api(u, err) < 0) {
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
