/* SPDX-License-Identifier: MIT */
/*
 * The background snapshot's phases (bg_migration.h). The device state is
 * saved while the workload is stopped, into a memory file, and copied to
 * the stream once RAM is all there: the stream keeps QEMU's order (RAM's
 * END section before the devices), and a loader sees an ordinary stream.
 */
#define _GNU_SOURCE
#include "migration/bg_migration.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/log.h"
#include "migration/ram/ram.h"
#include "migration/savevm/savevm.h"

/* How often the statistics and the progress hook are refreshed. */
#define PROGRESS_EVERY_NS (100 * 1000000LL)
/* The device state goes from its buffer to the stream in pieces this big. */
#define COPY_CHUNK (64 * 1024)

static const char *conflicting_capability(const struct kv_mig_params *p)
{
	if (p->multifd_channels)
		return "multifd";
	if (p->xbzrle_cache_size)
		return "xbzrle";
	if (p->auto_converge)
		return "auto-converge";
	if (p->postcopy_ram)
		return "postcopy-ram";
	if (p->mapped_ram)
		return "mapped-ram";
	return NULL;
}

int kv_bg_check_params(const struct kv_mig_params *p, struct kv_error *err)
{
	const char *cap = p->background_snapshot ? conflicting_capability(p)
						 : NULL;

	if (!cap)
		return 0;
	return kv_error_set(err, -EINVAL, "Snapshot not compatible with %s (as in QEMU): turn %s or background-snapshot off", cap, cap);
}

/* The device state, as save_complete would write it, into a memory
 * file; *fd_out is that file. */
static int save_device_state(const struct kv_bg_driver *d, int *fd_out,
			     struct kv_error *err)
{
	struct kv_stream *bs;
	struct kv_chan *c;
	int fd, dupfd, ret, closed;

	fd = memfd_create("kvmig-device-state", MFD_CLOEXEC);
	if (fd < 0)
		return kv_error_set_errno(err, -errno, "background snapshot: no memory file for the device state");
	dupfd = dup(fd);
	c = dupfd >= 0 ? kv_chan_from_fd(dupfd, "the device state buffer", err)
		       : NULL;
	bs = c ? kv_stream_new(c, KV_STREAM_WRITE) : NULL;
	if (!bs) {
		if (c)
			kv_chan_close(c);
		else if (dupfd >= 0)
			close(dupfd);
		close(fd);
		return kv_error_set(err, -ENOMEM, "background snapshot: no stream for the device state");
	}
	ret = kv_savevm_save_device_state(d->sv, bs, err);
	closed = kv_stream_close(bs);
	if (ret == 0 && closed < 0)
		ret = kv_error_set(err, closed, "background snapshot: writing the device state into its buffer");
	if (ret < 0) {
		close(fd);
		return ret;
	}
	*fd_out = fd;
	return 0;
}

/* The buffered device state onto the stream, flushed. */
static int write_device_state(struct kv_stream *s, int fd,
			      struct kv_error *err)
{
	uint8_t *buf = malloc(COPY_CHUNK);
	off_t off = 0;

	if (!buf)
		return kv_error_set(err, -ENOMEM, "background snapshot: out of memory");
	for (;;) {
		ssize_t n = pread(fd, buf, COPY_CHUNK, off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			free(buf);
			return kv_error_set_errno(err, -errno, "background snapshot: reading the device state back");
		}
		if (n == 0)
			break;
		kv_stream_put_buffer(s, buf, (size_t)n);
		off += n;
	}
	free(buf);
	kv_stream_flush(s);
	if (kv_stream_error(s)) {
		kv_stream_error_get(s, err);
		kv_error_prefix(err, "background snapshot: writing the device state");
		return kv_stream_error(s);
	}
	return 0;
}

/* The one stop: RAM protected and the device state saved, as they are
 * at this moment; then the workload runs on. */
static int pause_and_protect(const struct kv_bg_driver *d, bool *stopped,
			     int *devfd, struct kv_error *err)
{
	int64_t t0;
	int ret;

	ret = d->rs ? kv_ram_bg_prepare(d->rs, err) : 0;
	if (ret < 0)
		return ret;
	t0 = kv_now_ns();
	kv_switch_log("background snapshot: stop");
	ret = d->hooks->stop_vm(d->hooks->opaque, err);
	*stopped = true; /* even a failed stop may have stopped a part */
	if (ret < 0) {
		kv_error_prefix(err, "stopping the workload for the background snapshot");
		return ret;
	}
	ret = d->rs ? kv_ram_bg_protect(d->rs, err) : 0;
	if (ret == 0)
		ret = save_device_state(d, devfd, err);
	if (ret < 0)
		return ret;
	d->hooks->resume_vm(d->hooks->opaque);
	*stopped = false;
	d->paused(d->mig, kv_now_ns() - t0);
	kv_switch_log("background snapshot: resumed with RAM write-protected");
	return 0;
}

/* RAM, every page once, while the workload runs. */
static int save_ram(const struct kv_bg_driver *d, struct kv_stream *s,
		    struct kv_error *err)
{
	int64_t last = kv_now_ns();

	for (;;) {
		int ret;

		if (d->cancelled(d->mig))
			return -ECANCELED;
		ret = kv_savevm_save_iterate(d->sv, s, err);
		if (ret < 0)
			return ret;
		if (ret == 1)
			return 0;
		if (kv_now_ns() - last >= PROGRESS_EVERY_NS) {
			d->progress(d->mig, s,
				    kv_savevm_pending_estimate(d->sv));
			last = kv_now_ns();
		}
	}
}

int kv_bg_run(const struct kv_bg_driver *d, struct kv_stream *s,
	      bool *stopped, struct kv_error *err)
{
	int devfd = -1;
	int ret;

	ret = pause_and_protect(d, stopped, &devfd, err);
	if (ret == 0)
		ret = save_ram(d, s, err);
	if (ret == 0)
		ret = kv_savevm_save_end(d->sv, s, err);
	if (ret == 0)
		ret = write_device_state(s, devfd, err);
	if (devfd >= 0)
		close(devfd);
	if (ret == 0) {
		kv_switch_log("background snapshot: stream complete");
		d->progress(d->mig, s, 0);
	}
	return ret;
}
