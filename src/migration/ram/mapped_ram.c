/* SPDX-License-Identifier: MIT */
/*
 * mapped-ram: the file layout (header codec and checks), the source's
 * positioned page writes and the destination's page reads, each either
 * on the calling thread or on a pool of I/O threads with a descriptor of
 * their own on the file (multifd's channels, for a file). See
 * mapped_ram.h and docs/FORMAT.md 13.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/bytes.h"
#include "base/bitmap.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/zero.h"
#include "io/stream.h"
#include "migration/migration.h"
#include "migration/postcopy/postcopy_dst.h"
#include "migration/ram/mapped_ram.h"
#include "migration/ram/ram_internal.h"
#include "migration/ram/ram_prefault.h"

/* ---- the header ---- */

void kv_mapped_ram_hdr_encode(const struct kv_mapped_ram_hdr *h,
			      uint8_t out[KV_MAPPED_RAM_HDR_SIZE])
{
	kv_put_be32(out, h->version);
	kv_put_be64(out + 4, h->page_size);
	kv_put_be64(out + 12, h->bitmap_offset);
	kv_put_be64(out + 20, h->pages_offset);
}

void kv_mapped_ram_hdr_decode(const uint8_t in[KV_MAPPED_RAM_HDR_SIZE],
			      struct kv_mapped_ram_hdr *h)
{
	h->version = kv_get_be32(in);
	h->page_size = kv_get_be64(in + 4);
	h->bitmap_offset = kv_get_be64(in + 12);
	h->pages_offset = kv_get_be64(in + 20);
}

uint64_t kv_mapped_ram_bitmap_size(uint64_t npages)
{
	return KV_BITMAP_LONGS(npages) * sizeof(unsigned long);
}

static uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) / a * a;
}

void kv_mapped_ram_layout(uint64_t hdr_pos, uint64_t length,
			  struct kv_mapped_ram_hdr *h)
{
	h->version = KV_MAPPED_RAM_VERSION;
	h->page_size = KV_PAGE_SIZE;
	h->bitmap_offset = hdr_pos + KV_MAPPED_RAM_HDR_SIZE;
	h->pages_offset =
	    align_up(h->bitmap_offset +
			 kv_mapped_ram_bitmap_size(length / KV_PAGE_SIZE),
		     KV_MAPPED_RAM_ALIGN);
}

int kv_mapped_ram_hdr_check(const struct kv_mapped_ram_hdr *h, uint64_t hdr_pos,
			    const char *block, uint64_t length,
			    uint64_t file_size, const char *file,
			    struct kv_error *err)
{
	struct kv_mapped_ram_hdr want;

	kv_mapped_ram_layout(hdr_pos, length, &want);
	if (h->version != KV_MAPPED_RAM_VERSION)
		return kv_error_set(err, -EINVAL, "%s: block '%s' mapped-ram header at file offset %llu: version %u, this kvmig reads version %u", file, block, (unsigned long long)hdr_pos, h->version, KV_MAPPED_RAM_VERSION);
	if (h->page_size != KV_PAGE_SIZE)
		return kv_error_set(err, -EINVAL, "%s: block '%s' mapped-ram header at file offset %llu: page_size %llu, this destination's page size is %llu", file, block, (unsigned long long)hdr_pos, (unsigned long long)h->page_size, (unsigned long long)KV_PAGE_SIZE);
	if (h->bitmap_offset != want.bitmap_offset)
		return kv_error_set(err, -EINVAL, "%s: block '%s' mapped-ram header at file offset %llu: bitmap_offset %llu, expected %llu (right after the header)", file, block, (unsigned long long)hdr_pos, (unsigned long long)h->bitmap_offset, (unsigned long long)want.bitmap_offset);
	if (h->pages_offset != want.pages_offset)
		return kv_error_set(err, -EINVAL, "%s: block '%s' mapped-ram header at file offset %llu: pages_offset %llu, expected %llu (the first 1 MiB boundary after a %llu-byte bitmap for %llu bytes of RAM)", file, block, (unsigned long long)hdr_pos, (unsigned long long)h->pages_offset, (unsigned long long)want.pages_offset, (unsigned long long)kv_mapped_ram_bitmap_size(length / KV_PAGE_SIZE), (unsigned long long)length);
	if (h->pages_offset + length >= file_size)
		return kv_error_set(err, -EINVAL, "%s: block '%s' mapped-ram pages end at file offset %llu, but the file has %llu bytes and the stream goes on after them (truncated?)", file, block, (unsigned long long)(h->pages_offset + length), (unsigned long long)file_size);
	return 0;
}

int kv_mapped_ram_check_params(const struct kv_mig_params *p, const char *uri,
			       struct kv_error *err)
{
	if (!p->mapped_ram) {
		if (p->direct_io)
			return kv_error_set(err, -EINVAL, "direct-io needs the mapped-ram capability (as in QEMU)");
		return 0;
	}
	if (strncmp(uri, "file:", 5) != 0)
		return kv_error_set(err, -EINVAL, "mapped-ram needs a file: URI, not '%s' (every page has its place in a file)", uri);
	if (p->xbzrle_cache_size)
		return kv_error_set(err, -EINVAL, "the mapped-ram and xbzrle capabilities cannot be used together (as in QEMU): turn one of them off");
	if (p->multifd_channels && p->multifd_method != KV_MFD_METHOD_NONE)
		return kv_error_set(err, -EINVAL, "mapped-ram writes pages as they are: multifd-compression must be none (as in QEMU)");
	if (p->tls.creds[0])
		return kv_error_set(err, -EINVAL, "mapped-ram writes a file: tls-creds does not apply (as in QEMU): clear it");
	return 0;
}

struct kv_mapped_ram_cfg kv_mapped_ram_cfg_of(const struct kv_mig_params *p)
{
	/* threads and direct_io count only once on: a file: destination
	 * turns it on when the file says so (savevm.h). */
	return (struct kv_mapped_ram_cfg){
	    .on = p->mapped_ram,
	    .threads = p->multifd_channels,
	    .direct_io = p->direct_io,
	    .instant = p->postcopy_ram,
	};
}

/* ---- the I/O: a run of pages of one block ---- */

struct mr_job {
	size_t bi;
	size_t page;
	size_t npages;
};

struct mr_block {
	uint64_t hdr_pos;
	uint64_t bitmap_offset;
	uint64_t pages_offset;
	unsigned long *file_bmap; /* pages in the file (source: written) */
	bool have_header;	  /* destination: read and checked */
};

#define MR_QUEUE 8

struct mr_pool {
	pthread_mutex_t lock;
	pthread_cond_t job_ready; /* a job, or stop */
	pthread_cond_t job_done;  /* room in the queue, or all done */
	struct mr_job q[MR_QUEUE];
	size_t head, count;
	unsigned inflight;
	bool stop;
	struct kv_error err; /* the first failure */
	pthread_t *threads;
	struct kv_chan **chans;
	unsigned n, started;
};

struct kv_mapped_ram {
	struct kv_ram_state *rs;
	bool write;
	struct kv_chan *main;	/* the stream's channel (not ours) */
	struct kv_chan *direct; /* direct-io without threads, ours */
	bool direct_unasked;	/* direct is the one reader's own choice */
	struct mr_block *blocks;
	size_t nblocks;
	struct mr_job run;  /* source: the run being gathered */
	struct mr_pool pool; /* threads: pool.n > 0 */
};

static struct kv_chan *io_chan(struct kv_mapped_ram *mr)
{
	return mr->direct ? mr->direct : mr->main;
}

static int do_job(struct kv_mapped_ram *mr, struct kv_chan *c,
		  const struct mr_job *j, struct kv_error *err)
{
	struct kv_ram_state *rs = mr->rs;
	const struct kv_ram_block *b = &rs->blocks[j->bi];
	uint64_t off = (uint64_t)j->page << KV_PAGE_SHIFT;
	struct iovec iov = {
	    .iov_base = b->host + off,
	    .iov_len = j->npages << KV_PAGE_SHIFT,
	};
	uint64_t at = mr->blocks[j->bi].pages_offset + off;
	int ret;

	ret = mr->write ? kv_chan_file_pwritev(c, &iov, 1, at, err)
			: kv_chan_file_preadv(c, &iov, 1, at, err);
	if (ret < 0) {
		kv_error_prefix(err, "mapped-ram: block '%s' pages %zu..%zu", b->idstr, j->page, j->page + j->npages - 1);
		return ret;
	}
	if (!mr->write)
		for (size_t i = 0; i < j->npages; i++)
			kv_ram_verify_page(rs, j->bi, j->page + i);
	__atomic_add_fetch(&rs->mapped_bytes, iov.iov_len, __ATOMIC_RELAXED);
	return 0;
}

static void *pool_thread(void *opaque)
{
	struct kv_mapped_ram *mr = opaque;
	struct mr_pool *p = &mr->pool;
	unsigned id;

	pthread_mutex_lock(&p->lock);
	id = p->started++;
	for (;;) {
		struct kv_error err = {0};
		struct mr_job j;
		bool failed;
		int ret;

		while (!p->stop && p->count == 0)
			pthread_cond_wait(&p->job_ready, &p->lock);
		if (p->count == 0)
			break;
		j = p->q[p->head];
		p->head = (p->head + 1) % MR_QUEUE;
		p->count--;
		p->inflight++;
		failed = p->err.code != 0;
		pthread_cond_broadcast(&p->job_done);
		pthread_mutex_unlock(&p->lock);
		/* After a failure the rest is moot: drop it. */
		ret = failed ? 0 : do_job(mr, p->chans[id], &j, &err);
		pthread_mutex_lock(&p->lock);
		if (ret < 0 && !p->err.code)
			p->err = err;
		p->inflight--;
		pthread_cond_broadcast(&p->job_done);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

static void pool_stop(struct mr_pool *p)
{
	if (!p->n)
		return;
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	p->count = 0;
	pthread_cond_broadcast(&p->job_ready);
	pthread_mutex_unlock(&p->lock);
	for (unsigned i = 0; i < p->n; i++)
		if (p->threads[i])
			pthread_join(p->threads[i], NULL);
	for (unsigned i = 0; i < p->n; i++)
		kv_chan_close(p->chans[i]);
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->job_ready);
	pthread_cond_destroy(&p->job_done);
	free(p->threads);
	free(p->chans);
	p->n = 0;
}

static int pool_start(struct kv_mapped_ram *mr, unsigned n, bool direct,
		      struct kv_error *err)
{
	struct mr_pool *p = &mr->pool;

	p->threads = calloc(n, sizeof(*p->threads));
	p->chans = calloc(n, sizeof(*p->chans));
	if (!p->threads || !p->chans) {
		free(p->threads);
		free(p->chans);
		return kv_error_set(err, -ENOMEM, "mapped-ram: no memory for %u I/O threads", n);
	}
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->job_ready, NULL);
	pthread_cond_init(&p->job_done, NULL);
	p->n = n;
	for (unsigned i = 0; i < n; i++) {
		p->chans[i] = kv_chan_file_reopen(mr->main, mr->write, direct,
						  err);
		if (!p->chans[i]) {
			pool_stop(p);
			return err->code;
		}
	}
	for (unsigned i = 0; i < n; i++) {
		int r = pthread_create(&p->threads[i], NULL, pool_thread, mr);

		if (r) {
			p->threads[i] = 0;
			pool_stop(p);
			return kv_error_set_errno(err, -r, "mapped-ram: starting I/O thread %u", i);
		}
	}
	return 0;
}

/* The migration (or loading) was cancelled: its stream was shut down. */
static int check_cancel(struct kv_mapped_ram *mr, struct kv_error *err)
{
	if (__atomic_load_n(&mr->main->shutdown_req, __ATOMIC_ACQUIRE))
		return kv_error_set(err, -ECANCELED, "%s: mapped-ram I/O cancelled by shutdown", mr->main->name);
	return 0;
}

/* Do j here, or queue it for the pool (waiting for room). */
static int submit(struct kv_mapped_ram *mr, const struct mr_job *j,
		  struct kv_error *err)
{
	struct mr_pool *p = &mr->pool;
	int ret = check_cancel(mr, err);

	if (ret < 0)
		return ret;
	if (!p->n) {
		ret = do_job(mr, io_chan(mr), j, err);
		if (ret == -EINVAL && mr->direct_unasked) {
			/* O_DIRECT opened but this file system refuses the
			 * reads: through the page cache, as asked. */
			kv_chan_close(mr->direct);
			mr->direct = NULL;
			mr->direct_unasked = false;
			*err = (struct kv_error){0};
			ret = do_job(mr, io_chan(mr), j, err);
		}
		return ret;
	}
	pthread_mutex_lock(&p->lock);
	while (p->count == MR_QUEUE && !p->err.code)
		pthread_cond_wait(&p->job_done, &p->lock);
	if (p->err.code) {
		*err = p->err;
		pthread_mutex_unlock(&p->lock);
		return err->code;
	}
	p->q[(p->head + p->count) % MR_QUEUE] = *j;
	p->count++;
	pthread_cond_signal(&p->job_ready);
	pthread_mutex_unlock(&p->lock);
	return 0;
}

/* Every job queued so far done; the first failure, if any. */
static int wait_all(struct kv_mapped_ram *mr, struct kv_error *err)
{
	struct mr_pool *p = &mr->pool;
	int ret = 0;

	if (!p->n)
		return 0;
	pthread_mutex_lock(&p->lock);
	while (p->count || p->inflight)
		pthread_cond_wait(&p->job_done, &p->lock);
	if (p->err.code) {
		*err = p->err;
		ret = err->code;
	}
	pthread_mutex_unlock(&p->lock);
	return ret;
}

static struct kv_mapped_ram *mr_new(struct kv_ram_state *rs,
				    struct kv_chan *main, bool write,
				    struct kv_error *err)
{
	const struct kv_mapped_ram_cfg *cfg = &rs->mapped_cfg;
	struct kv_mapped_ram *mr = calloc(1, sizeof(*mr));
	int ret = 0;

	if (!mr || !(mr->blocks = calloc(rs->nblocks ? rs->nblocks : 1,
					 sizeof(*mr->blocks)))) {
		free(mr);
		kv_error_set(err, -ENOMEM, "mapped-ram: out of memory");
		return NULL;
	}
	mr->rs = rs;
	mr->write = write;
	mr->main = main;
	mr->nblocks = rs->nblocks;
	if (cfg->threads)
		ret = pool_start(mr, cfg->threads, cfg->direct_io, err);
	else if (cfg->direct_io) {
		mr->direct = kv_chan_file_reopen(main, write, true, err);
		ret = mr->direct ? 0 : err->code;
	} else if (!write) {
		/* One reader: every page is read once, into guest memory, so
		 * the page cache only costs a copy and halves the rate here
		 * (BENCHMARKS.md); O_DIRECT where the file system has it. */
		mr->direct = kv_chan_file_reopen(main, false, true,
						 &(struct kv_error){0});
		mr->direct_unasked = mr->direct != NULL;
	}
	if (ret < 0) {
		free(mr->blocks);
		free(mr);
		return NULL;
	}
	return mr;
}

void kv_mapped_ram_cleanup(struct kv_ram_state *rs)
{
	struct kv_mapped_ram *mr = rs->mapped;

	if (!mr)
		return;
	pool_stop(&mr->pool);
	kv_chan_close(mr->direct);
	for (size_t i = 0; i < mr->nblocks; i++)
		kv_bitmap_free(mr->blocks[i].file_bmap);
	free(mr->blocks);
	free(mr);
	rs->mapped = NULL;
}

uint64_t kv_mapped_ram_bytes(const struct kv_ram_state *rs)
{
	return __atomic_load_n(&rs->mapped_bytes, __ATOMIC_RELAXED);
}

static int bitmap_oom(const char *block, struct kv_error *err)
{
	return kv_error_set(err, -ENOMEM, "mapped-ram: out of memory for the bitmap of block '%s'", block);
}

/* ---- source ---- */

int kv_mapped_ram_save_setup(struct kv_stream *s, struct kv_ram_state *rs,
			     struct kv_error *err)
{
	struct kv_mapped_ram *mr;

	kv_mapped_ram_cleanup(rs);
	if (!rs->mapped_cfg.on)
		return 0;
	mr = mr_new(rs, kv_stream_chan(s), true, err);
	if (!mr)
		return err->code;
	for (size_t i = 0; i < rs->nblocks; i++) {
		mr->blocks[i].file_bmap = kv_bitmap_new(rs->blocks[i].npages);
		if (!mr->blocks[i].file_bmap) {
			rs->mapped = mr;
			kv_mapped_ram_cleanup(rs);
			return bitmap_oom(rs->blocks[i].idstr, err);
		}
	}
	mr->run.npages = 0;
	rs->mapped = mr;
	kv_ram_stat_set(&rs->mapped_bytes, 0);
	return 0;
}

void kv_mapped_ram_put_block(struct kv_stream *s, struct kv_ram_state *rs,
			     size_t bi)
{
	struct kv_mapped_ram *mr = rs->mapped;
	struct kv_error err = {0};
	uint8_t raw[KV_MAPPED_RAM_HDR_SIZE];
	struct kv_mapped_ram_hdr h;
	int64_t pos;

	pos = kv_stream_file_pos(s, &err);
	if (pos < 0) {
		kv_stream_set_error(s, (int)pos, "mapped-ram: %s", err.msg);
		return;
	}
	kv_mapped_ram_layout((uint64_t)pos, rs->blocks[bi].length, &h);
	mr->blocks[bi].hdr_pos = (uint64_t)pos;
	mr->blocks[bi].bitmap_offset = h.bitmap_offset;
	mr->blocks[bi].pages_offset = h.pages_offset;
	kv_mapped_ram_hdr_encode(&h, raw);
	kv_stream_put_buffer(s, raw, sizeof(raw));
	/* The stream goes on after the block's pages. */
	if (kv_stream_file_seek(s, h.pages_offset + rs->blocks[bi].length,
				&err) < 0)
		kv_stream_set_error(s, err.code, "mapped-ram: %s", err.msg);
}

static int submit_run(struct kv_mapped_ram *mr, struct kv_error *err)
{
	struct mr_job j = mr->run;

	if (!j.npages)
		return 0;
	mr->run.npages = 0;
	return submit(mr, &j, err);
}

/* A page that reads as zero: not in the file. One written before is
 * punched out, so that the file reads as zeros there too. */
static int drop_page(struct kv_mapped_ram *mr, size_t bi, size_t page,
		     struct kv_error *err)
{
	struct mr_block *mb = &mr->blocks[bi];
	int ret;

	if (!kv_bitmap_test(mb->file_bmap, page))
		return 0;
	mb->file_bmap[page / KV_BITS_PER_LONG] &=
	    ~(1UL << (page % KV_BITS_PER_LONG));
	ret = kv_chan_file_punch(mr->main,
				 mb->pages_offset + ((uint64_t)page << KV_PAGE_SHIFT),
				 KV_PAGE_SIZE, err);
	if (ret < 0)
		kv_error_prefix(err, "mapped-ram: block '%s' page %zu became zero", mr->rs->blocks[bi].idstr, page);
	return ret;
}

int kv_mapped_ram_send_page(struct kv_ram_state *rs, size_t bi, size_t page,
			    struct kv_error *err)
{
	struct kv_mapped_ram *mr = rs->mapped;
	const uint8_t *p = rs->blocks[bi].host + ((uint64_t)page << KV_PAGE_SHIFT);
	struct mr_job *run = &mr->run;
	int ret;

	if (kv_ram_page_unpopulated(rs, bi, page) ||
	    kv_buffer_is_zero(p, KV_PAGE_SIZE)) {
		kv_ram_verify_zero(rs, bi, page);
		kv_ram_stat_add(&rs->zero_pages, 1);
		return drop_page(mr, bi, page, err);
	}
	kv_ram_verify_page(rs, bi, page);
	kv_ram_stat_add(&rs->normal_pages, 1);
	mr->blocks[bi].file_bmap[page / KV_BITS_PER_LONG] |=
	    1UL << (page % KV_BITS_PER_LONG);
	if (run->npages &&
	    (run->bi != bi || run->page + run->npages != page ||
	     run->npages == KV_MAPPED_RAM_IO_MAX / KV_PAGE_SIZE)) {
		ret = submit_run(mr, err);
		if (ret < 0)
			return ret;
	}
	if (!run->npages) {
		run->bi = bi;
		run->page = page;
	}
	run->npages++;
	return 0;
}

int kv_mapped_ram_flush(struct kv_ram_state *rs, bool pass_end,
			struct kv_error *err)
{
	struct kv_mapped_ram *mr = rs->mapped;
	int ret = submit_run(mr, err);

	if (ret == 0 && pass_end)
		ret = wait_all(mr, err);
	return ret;
}

int kv_mapped_ram_save_complete(struct kv_ram_state *rs, struct kv_error *err)
{
	struct kv_mapped_ram *mr = rs->mapped;
	int ret = kv_mapped_ram_flush(rs, true, err);

	/* The bitmaps last: a file cut short before them loads nothing. */
	for (size_t i = 0; ret == 0 && i < mr->nblocks; i++) {
		struct iovec iov = {
		    .iov_base = mr->blocks[i].file_bmap,
		    .iov_len = kv_mapped_ram_bitmap_size(rs->blocks[i].npages),
		};

		ret = kv_chan_file_pwritev(mr->main, &iov, 1,
					   mr->blocks[i].bitmap_offset, err);
		if (ret < 0)
			kv_error_prefix(err, "mapped-ram: the bitmap of block '%s'", rs->blocks[i].idstr);
	}
	return ret;
}

/* ---- destination ---- */

int kv_mapped_ram_load_header(struct kv_stream *s, struct kv_ram_state *rs,
			      size_t bi, struct kv_error *err)
{
	struct kv_chan *c = kv_stream_chan(s);
	const struct kv_ram_block *b = &rs->blocks[bi];
	uint8_t raw[KV_MAPPED_RAM_HDR_SIZE];
	struct kv_mapped_ram_hdr h;
	struct mr_block *mb;
	int64_t pos, size;
	int ret;

	if (!rs->mapped) {
		kv_switch_log("mapped-ram: the first block's header");
		rs->mapped = mr_new(rs, c, false, err);
		if (!rs->mapped)
			return err->code;
		kv_ram_stat_set(&rs->mapped_bytes, 0);
	}
	if (bi >= rs->mapped->nblocks) {
		/* A block the stream made (memtest's allocator). */
		struct mr_block *nb = realloc(rs->mapped->blocks,
					      (bi + 1) * sizeof(*nb));

		if (!nb)
			return kv_error_set(err, -ENOMEM, "mapped-ram: out of memory");
		memset(nb + rs->mapped->nblocks, 0,
		       (bi + 1 - rs->mapped->nblocks) * sizeof(*nb));
		rs->mapped->blocks = nb;
		rs->mapped->nblocks = bi + 1;
	}
	mb = &rs->mapped->blocks[bi];
	pos = kv_stream_file_pos(s, err);
	if (pos < 0)
		return (int)pos;
	kv_stream_get_buffer(s, raw, sizeof(raw));
	if (kv_stream_error(s)) {
		kv_stream_error_get(s, err);
		kv_error_prefix(err, "mapped-ram: reading the header of block '%s'", b->idstr);
		return err->code;
	}
	size = kv_chan_file_size(c, err);
	if (size < 0)
		return (int)size;
	kv_mapped_ram_hdr_decode(raw, &h);
	ret = kv_mapped_ram_hdr_check(&h, (uint64_t)pos, b->idstr, b->length,
				      (uint64_t)size, c->name, err);
	if (ret < 0)
		return ret;
	mb->hdr_pos = (uint64_t)pos;
	mb->bitmap_offset = h.bitmap_offset;
	mb->pages_offset = h.pages_offset;
	mb->have_header = true;
	return kv_stream_file_seek(s, h.pages_offset + b->length, err);
}

/* The block's bitmap from the file, checked: no bit past its last page. */
static int read_bitmap(struct kv_mapped_ram *mr, size_t bi,
		       struct kv_error *err)
{
	const struct kv_ram_block *b = &mr->rs->blocks[bi];
	struct mr_block *mb = &mr->blocks[bi];
	uint64_t size = kv_mapped_ram_bitmap_size(b->npages);
	struct iovec iov;
	size_t rem = b->npages % KV_BITS_PER_LONG;
	int ret;

	mb->file_bmap = kv_bitmap_new(b->npages);
	if (!mb->file_bmap)
		return bitmap_oom(b->idstr, err);
	iov.iov_base = mb->file_bmap;
	iov.iov_len = size;
	ret = kv_chan_file_preadv(mr->main, &iov, 1, mb->bitmap_offset, err);
	if (ret < 0) {
		kv_error_prefix(err, "mapped-ram: the bitmap of block '%s'", b->idstr);
		return ret;
	}
	if (rem && (mb->file_bmap[b->npages / KV_BITS_PER_LONG] >> rem))
		return kv_error_set(err, -EINVAL, "%s: block '%s' mapped-ram bitmap at file offset %llu marks pages past the block's last page %zu (corrupted)", mr->main->name, b->idstr, (unsigned long long)mb->bitmap_offset, b->npages - 1);
	return 0;
}

/* ---- destination, instant resume (postcopy-ram) ---- */

struct kv_mapped_ram_instant {
	struct kv_pc_dst *pc;
	struct kv_chan *fault_chan;  /* pages a vCPU waits for */
	struct kv_chan *filler_chan; /* the rest, in file order */
	struct kv_ram_state *rs;
	struct mr_block *blocks; /* offsets and bitmaps, ours */
	size_t nblocks;
	uint8_t *fault_buf;  /* one page, aligned for O_DIRECT */
	uint8_t *filler_buf; /* IO_MAX, aligned */
	pthread_t filler;
	bool filler_running;
	int stop;	     /* atomic: the filler ends early */
	int64_t start_ns;
};

static int instant_oom(struct kv_error *err)
{
	return kv_error_set(err, -ENOMEM, "mapped-ram instant resume: out of memory");
}

/* A page of block bi from the file, or zeros when the bitmap says so,
 * placed: the fault thread's callback (no lock held). A read that fails
 * leaves the page missing, never wrong: the vCPU on it waits. */
static int instant_request(void *opaque, size_t bi, uint64_t offset,
			   uint64_t len, struct kv_error *err)
{
	struct kv_mapped_ram_instant *in = opaque;
	const struct mr_block *mb = &in->blocks[bi];

	for (uint64_t off = offset; off < offset + len; off += KV_PAGE_SIZE) {
		size_t page = off >> KV_PAGE_SHIFT;
		struct iovec iov = {in->fault_buf, KV_PAGE_SIZE};
		const void *data = NULL;
		int ret;

		if (kv_bitmap_test(mb->file_bmap, page)) {
			ret = kv_chan_file_preadv(in->fault_chan, &iov, 1,
						  mb->pages_offset + off, err);
			if (ret < 0) {
				kv_err("mapped-ram", "instant resume: block '%s' page %zu: %s (the guest waits on it)", in->rs->blocks[bi].idstr, page, err->msg);
				return ret;
			}
			data = in->fault_buf;
		}
		ret = kv_pc_dst_place(in->pc, bi, off, data, err);
		if (ret < 0)
			return ret;
	}
	return 0;
}

/* Every marked page in file order, those not placed yet; then the
 * memory is plain again. */
static void *instant_filler(void *opaque)
{
	struct kv_mapped_ram_instant *in = opaque;
	const size_t max = KV_MAPPED_RAM_IO_MAX / KV_PAGE_SIZE;
	struct kv_error err = {0};
	int ret = 0;

	for (size_t bi = 0; ret == 0 && bi < in->nblocks; bi++) {
		const struct mr_block *mb = &in->blocks[bi];
		size_t npages = in->rs->blocks[bi].npages, page = 0;

		while (ret == 0 && !__atomic_load_n(&in->stop, __ATOMIC_ACQUIRE)) {
			size_t n = 0;
			struct iovec iov;

			page = kv_bitmap_find_next(mb->file_bmap, npages, page);
			if (page >= npages)
				break;
			while (page + n < npages && n < max &&
			       kv_bitmap_test(mb->file_bmap, page + n))
				n++;
			iov.iov_base = in->filler_buf;
			iov.iov_len = n << KV_PAGE_SHIFT;
			ret = kv_chan_file_preadv(in->filler_chan, &iov, 1,
						  mb->pages_offset +
						      ((uint64_t)page << KV_PAGE_SHIFT),
						  &err);
			for (size_t i = 0; ret == 0 && i < n; i++)
				if (!kv_pc_dst_has_page(in->pc, bi,
						       (uint64_t)(page + i) << KV_PAGE_SHIFT))
					ret = kv_pc_dst_place(in->pc, bi,
							      (uint64_t)(page + i) << KV_PAGE_SHIFT,
							      in->filler_buf + (i << KV_PAGE_SHIFT),
							      &err) < 0
						  ? -EIO
						  : 0;
			__atomic_add_fetch(&in->rs->mapped_bytes,
					   (uint64_t)n << KV_PAGE_SHIFT,
					   __ATOMIC_RELAXED);
			page += n;
		}
	}
	if (ret == 0 && !__atomic_load_n(&in->stop, __ATOMIC_ACQUIRE))
		ret = kv_pc_dst_wait_complete(in->pc, -1, &err) == 1
			  ? kv_pc_dst_finish(in->pc, &err)
			  : -EIO;
	if (ret < 0 && !__atomic_load_n(&in->stop, __ATOMIC_ACQUIRE))
		kv_err("mapped-ram", "instant resume: %s (pages not read yet stay missing: the guest waits on them)", err.msg);
	else if (ret == 0)
		kv_info("mapped-ram", "instant resume: every page in memory %.1f ms after the load began", (double)(kv_now_ns() - in->start_ns) / 1e6);
	return NULL;
}

static void instant_free(struct kv_mapped_ram_instant *in)
{
	if (!in)
		return;
	if (in->filler_running) {
		__atomic_store_n(&in->stop, 1, __ATOMIC_RELEASE);
		pthread_join(in->filler, NULL);
	}
	kv_pc_dst_free(in->pc);
	kv_chan_close(in->fault_chan);
	kv_chan_close(in->filler_chan);
	for (size_t i = 0; i < in->nblocks; i++)
		kv_bitmap_free(in->blocks[i].file_bmap);
	free(in->blocks);
	free(in->fault_buf);
	free(in->filler_buf);
	free(in);
}

void kv_mapped_ram_instant_end(struct kv_ram_state *rs, bool failed)
{
	/* A load that succeeded: the guest is about to run on it, the
	 * filler goes on until every page is in. */
	if (!failed)
		return;
	instant_free(rs->instant);
	rs->instant = NULL;
}

/* The first clear bit at or after start (npages: none), a word at a
 * time over full words. */
static size_t next_clear(const unsigned long *map, size_t npages,
			 size_t start)
{
	while (start < npages) {
		unsigned long w = ~map[start / KV_BITS_PER_LONG] >>
				  (start % KV_BITS_PER_LONG);

		if (w)
			start += (size_t)__builtin_ctzl(w);
		else
			start = (start / KV_BITS_PER_LONG + 1) * KV_BITS_PER_LONG;
		if (w)
			return start < npages ? start : npages;
	}
	return npages;
}

/* Pages not in the file (zero) are "received": a touch places zeros. */
static void mark_zero_pages(struct kv_mapped_ram_instant *in, size_t bi)
{
	const struct mr_block *mb = &in->blocks[bi];
	size_t npages = in->rs->blocks[bi].npages, page = 0;

	while (page < npages) {
		size_t end;

		page = next_clear(mb->file_bmap, npages, page);
		end = kv_bitmap_find_next(mb->file_bmap, npages, page);
		if (end > page)
			kv_pc_dst_mark_received(in->pc, bi,
						(uint64_t)page << KV_PAGE_SHIFT,
						(uint64_t)(end - page) << KV_PAGE_SHIFT);
		page = end;
	}
}

static int instant_prepare(struct kv_mapped_ram_instant *in,
			   struct kv_mapped_ram *mr, struct kv_error *err)
{
	struct kv_ram_state *rs = mr->rs;
	bool direct = rs->mapped_cfg.direct_io;
	struct kv_pc_dst_block *pb;
	struct kv_pc_dst_config cfg = {.request = instant_request, .opaque = in};
	int ret = 0;

	pb = calloc(mr->nblocks ? mr->nblocks : 1, sizeof(*pb));
	in->fault_buf = aligned_alloc(KV_PAGE_SIZE, KV_PAGE_SIZE);
	in->filler_buf = aligned_alloc(KV_PAGE_SIZE, KV_MAPPED_RAM_IO_MAX);
	if (!pb || !in->fault_buf || !in->filler_buf) {
		free(pb);
		return instant_oom(err);
	}
	for (size_t i = 0; i < mr->nblocks; i++) {
		pb[i].idstr = rs->blocks[i].idstr;
		pb[i].host = rs->blocks[i].host;
		pb[i].length = rs->blocks[i].length;
	}
	cfg.blocks = pb;
	cfg.nblocks = mr->nblocks;
	in->pc = kv_pc_dst_new(&cfg, err);
	free(pb);
	if (!in->pc)
		return err->code ? err->code : -ENOMEM;
	in->fault_chan = kv_chan_file_reopen(mr->main, false, direct, err);
	if (in->fault_chan)
		in->filler_chan = kv_chan_file_reopen(mr->main, false, direct,
						      err);
	if (!in->filler_chan)
		return err->code;
	kv_switch_log("mapped-ram instant: userfaultfd state ready");
	for (size_t i = 0; i < in->nblocks; i++)
		mark_zero_pages(in, i);
	kv_switch_log("mapped-ram instant: zero pages marked");
	ret = kv_pc_dst_listen(in->pc, err);
	if (ret < 0)
		return ret;
	kv_switch_log("mapped-ram instant: listening");
	ret = pthread_create(&in->filler, NULL, instant_filler, in);
	if (ret)
		return kv_error_set(err, -ret, "mapped-ram instant resume: starting the filler thread: %s", strerror(ret));
	in->filler_running = true;
	return 0;
}

/* Instead of reading the pages: the bitmaps, userfaultfd on the blocks,
 * the filler. The layout moves from mr (freed at load cleanup) to the
 * instant state, which lives as long as the guest needs it. */
static int instant_start(struct kv_ram_state *rs, struct kv_error *err)
{
	struct kv_mapped_ram *mr = rs->mapped;
	struct kv_mapped_ram_instant *in;
	int ret = 0;

	if (rs->verify.on)
		return kv_error_set(err, -EINVAL, "mapped-ram instant resume (postcopy-ram on this destination) runs the guest before its pages are read, so --verify-ram cannot check them first: turn one of them off");
	instant_free(rs->instant);
	rs->instant = NULL;
	for (size_t i = 0; ret == 0 && i < mr->nblocks; i++)
		if (mr->blocks[i].have_header)
			ret = read_bitmap(mr, i, err);
		else
			ret = kv_error_set(err, -EINVAL, "mapped-ram: block '%s' has no header in the file", rs->blocks[i].idstr);
	if (ret < 0)
		return ret;
	kv_switch_log("mapped-ram instant: bitmaps read");
	in = calloc(1, sizeof(*in));
	if (!in)
		return instant_oom(err);
	in->rs = rs;
	in->start_ns = kv_now_ns();
	in->blocks = mr->blocks;
	in->nblocks = mr->nblocks;
	mr->blocks = calloc(mr->nblocks ? mr->nblocks : 1, sizeof(*mr->blocks));
	if (!mr->blocks) {
		mr->blocks = in->blocks;
		free(in);
		return instant_oom(err);
	}
	rs->instant = in;
	ret = instant_prepare(in, mr, err);
	if (ret < 0) {
		kv_error_prefix(err, "mapped-ram instant resume");
		instant_free(in);
		rs->instant = NULL;
	}
	return ret;
}

/* A hole this long in the bitmap stops the prefault window at its
 * start: memory the file leaves zero is not populated for nothing. */
#define PREFAULT_HOLE_PAGES 512

/* The loading thread reads the next run at page: guest memory ahead of
 * it is faulted in by the prefault helpers (on the other cores), so the
 * read only copies. */
static void prefault_ahead(struct kv_ram_prefault *pf,
			   const struct kv_ram_block *b, size_t bi,
			   const unsigned long *map, size_t page, size_t end)
{
	size_t next;

	if (!pf)
		return;
	kv_ram_prefault_note(pf, bi, b->host, b->length,
			     (uint64_t)page << KV_PAGE_SHIFT);
	next = kv_bitmap_find_next(map, b->npages, end);
	if (next - end >= PREFAULT_HOLE_PAGES)
		kv_ram_prefault_note_zero(pf, bi, (uint64_t)end << KV_PAGE_SHIFT);
}

/* Queue the block's runs of marked pages, at most IO_MAX each. */
static int load_block_pages(struct kv_mapped_ram *mr, size_t bi,
			    struct kv_ram_prefault *pf, struct kv_error *err)
{
	struct kv_ram_state *rs = mr->rs;
	const struct kv_ram_block *b = &rs->blocks[bi];
	const unsigned long *map = mr->blocks[bi].file_bmap;
	const size_t max = KV_MAPPED_RAM_IO_MAX / KV_PAGE_SIZE;
	size_t page = 0, loaded = 0;
	int ret;

	for (;;) {
		struct mr_job j = {.bi = bi};

		page = kv_bitmap_find_next(map, b->npages, page);
		if (page >= b->npages)
			break;
		j.page = page;
		while (page < b->npages && j.npages < max &&
		       kv_bitmap_test(map, page)) {
			if (rs->priv[bi].touched)
				kv_bitmap_set_atomic(rs->priv[bi].touched, page);
			page++;
			j.npages++;
		}
		loaded += j.npages;
		prefault_ahead(pf, b, bi, map, j.page, page);
		ret = submit(mr, &j, err);
		if (ret < 0)
			return ret;
	}
	kv_ram_stat_add(&rs->normal_pages, loaded);
	kv_ram_stat_add(&rs->zero_pages, b->npages - loaded);
	return 0;
}

int kv_mapped_ram_load_pages(struct kv_ram_state *rs, struct kv_error *err)
{
	struct kv_mapped_ram *mr = rs->mapped;
	struct kv_ram_prefault *pf = NULL;
	int ret = 0;

	if (!mr)
		return 0;
	if (rs->mapped_cfg.instant)
		return instant_start(rs, err);
	/* One reader: first touch of the guest's memory (a fault a page, or
	 * a huge page) would be most of its time; helpers take it ahead.
	 * I/O threads fault their own pages in, in parallel. */
	if (!mr->pool.n)
		pf = kv_ram_prefault_start();
	for (size_t i = 0; ret == 0 && i < mr->nblocks; i++) {
		if (!mr->blocks[i].have_header)
			continue;
		ret = read_bitmap(mr, i, err);
		if (ret == 0)
			ret = load_block_pages(mr, i, pf, err);
	}
	kv_ram_prefault_stop(pf);
	/* Whatever failed, nothing may still write into memory after. */
	if (wait_all(mr, ret < 0 ? &(struct kv_error){0} : err) < 0 && !ret)
		ret = err->code;
	kv_switch_log("mapped-ram: %llu bytes of pages read",
		      (unsigned long long)kv_mapped_ram_bytes(rs));
	return ret;
}
