/* SPDX-License-Identifier: MIT */
#include "migration/postcopy/postcopy_incoming.h"

#include <errno.h>
#include "io/stream.h"
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/thread_role.h"
#include "base/units.h"
#include "migration/ram/ram.h"

struct kv_pc_in {
	struct kv_ram_state *rs;
	struct kv_rp_writer *rp;
	uint32_t vcpu_tids[KV_PC_IN_MAX_VCPUS];
	size_t nvcpus;

	struct kv_pc_block *blockv;
	struct kv_pc_blocks blocks;
	struct kv_pc_dst *dst; /* from ADVISE */

	/* The fault thread's requests (and a recovery's): encoded and
	 * written in one order, so REQ_PAGES's "previous block" holds. */
	pthread_mutex_t req_lock;
	int last_block;

	/* postcopy-preempt: the channel, and its thread from LISTEN on (a
	 * recovery's from POSTCOPY_RESUME on); the pages it brought, over
	 * every link (atomic). */
	struct kv_chan *pre_chan;
	struct kv_stream *pre_stream;
	pthread_t pre_thread;
	bool pre_running;
	bool had_preempt;
	struct kv_error pre_err;
	uint64_t pre_pages;
};

struct kv_pc_in *kv_pc_in_new(const struct kv_pc_in_config *cfg,
			      struct kv_error *err)
{
	struct kv_pc_in *p = calloc(1, sizeof(*p));

	if (!p) {
		kv_error_set(err, -ENOMEM, "postcopy: out of memory");
		return NULL;
	}
	p->rs = cfg->rs;
	p->rp = cfg->rp;
	p->nvcpus = cfg->nvcpus < KV_PC_IN_MAX_VCPUS ? cfg->nvcpus
						     : KV_PC_IN_MAX_VCPUS;
	if (p->nvcpus)
		memcpy(p->vcpu_tids, cfg->vcpu_tids,
		       p->nvcpus * sizeof(p->vcpu_tids[0]));
	p->last_block = -1;
	pthread_mutex_init(&p->req_lock, NULL);
	return p;
}

static void preempt_stop(struct kv_pc_in *p)
{
	if (p->pre_running) {
		kv_stream_shutdown(p->pre_stream);
		pthread_join(p->pre_thread, NULL);
		p->pre_running = false;
	}
	if (p->pre_stream)
		kv_stream_close(p->pre_stream);
	else
		kv_chan_close(p->pre_chan);
	p->pre_stream = NULL;
	p->pre_chan = NULL;
}

void kv_pc_in_set_preempt(struct kv_pc_in *p, struct kv_chan *c)
{
	p->pre_chan = c;
	p->had_preempt = c != NULL;
}

bool kv_pc_in_had_preempt(const struct kv_pc_in *p)
{
	return p && p->had_preempt;
}

static void *preempt_main(void *opaque)
{
	struct kv_pc_in *p = opaque;

	kv_thread_set_role(KV_THREAD_URGENT); /* requested pages only */
	if (kv_ram_pc_load_preempt(p->pre_stream, p->rs, &p->pre_pages,
				   &p->pre_err) < 0 &&
	    p->pre_err.code != -ECANCELED)
		kv_warn("postcopy", "%s", p->pre_err.msg);
	return NULL;
}

static void preempt_start(struct kv_pc_in *p)
{
	if (!p->pre_chan)
		return;
	kv_error_clear(&p->pre_err);
	p->pre_stream = kv_stream_new(p->pre_chan, KV_STREAM_READ);
	if (p->pre_stream)
		p->pre_running = pthread_create(&p->pre_thread, NULL,
						preempt_main, p) == 0;
}

void kv_pc_in_restart_preempt(struct kv_pc_in *p, struct kv_chan *c)
{
	preempt_stop(p); /* the broken link's: its thread may still read */
	kv_pc_in_set_preempt(p, c);
	preempt_start(p);
	kv_info("postcopy", "requested pages come on a new preempt channel");
}

void kv_pc_in_free(struct kv_pc_in *p)
{
	if (!p)
		return;
	preempt_stop(p);
	if (p->dst)
		kv_ram_pc_set_dst(p->rs, NULL, NULL);
	kv_pc_dst_free(p->dst);
	free(p->blockv);
	pthread_mutex_destroy(&p->req_lock);
	free(p);
}

/* The fault thread asks the source for a page it lacks. */
static int request_page(void *opaque, size_t block, uint64_t offset,
			uint64_t len, struct kv_error *err)
{
	struct kv_pc_in *p = opaque;
	uint8_t msg[13 + KV_PC_IDSTR_MAX];
	uint16_t type;
	int n, ret;

	pthread_mutex_lock(&p->req_lock);
	n = kv_pc_req_encode_next(&p->last_block, (int)block,
				  p->blocks.v[block].idstr, offset,
				  (uint32_t)len, &type, msg, err);
	ret = n < 0 ? n : kv_rp_writer_send(p->rp, type, msg, (uint16_t)n, err);
	if (ret < 0)
		p->last_block = -1; /* the next one names its block */
	pthread_mutex_unlock(&p->req_lock);
	return ret < 0 ? ret : 0;
}

int kv_pc_in_advise(struct kv_pc_in *p, const struct kv_pc_advise *a,
		    struct kv_error *err)
{
	struct kv_pc_dst_block *db;
	struct kv_pc_dst_config cfg = {0};
	size_t n = 0;
	int ret;

	(void)a; /* the loader compared the sizes already */
	p->blockv = kv_ram_pc_blocks(p->rs, &n);
	db = calloc(n ? n : 1, sizeof(*db));
	if (!p->blockv || !db) {
		free(db);
		return kv_error_set(err, -ENOMEM, "postcopy: out of memory");
	}
	p->blocks = (struct kv_pc_blocks){.v = p->blockv, .n = n};
	for (size_t i = 0; i < n; i++) {
		const struct kv_ram_block *b = kv_ram_block(p->rs, i);

		db[i] = (struct kv_pc_dst_block){
		    .idstr = b->idstr, .host = b->host, .length = b->length};
	}
	cfg = (struct kv_pc_dst_config){
	    .blocks = db,
	    .nblocks = n,
	    .request = request_page,
	    .opaque = p,
	    .vcpu_tids = p->vcpu_tids,
	    .nvcpus = p->nvcpus,
	};
	p->dst = kv_pc_dst_new(&cfg, err);
	free(db);
	if (!p->dst)
		return err->code ? err->code : -ENOMEM;
	ret = kv_ram_pc_set_dst(p->rs, p->dst, err);
	if (ret < 0) {
		kv_pc_dst_free(p->dst);
		p->dst = NULL;
	}
	return ret;
}

bool kv_pc_in_advised(const struct kv_pc_in *p)
{
	return p->dst != NULL;
}

const struct kv_pc_blocks *kv_pc_in_blocks(struct kv_pc_in *p)
{
	return &p->blocks;
}

int kv_pc_in_discard(struct kv_pc_in *p, const struct kv_pc_discard *d,
		     struct kv_error *err)
{
	for (size_t i = 0; i < d->nranges; i++) {
		int ret = kv_pc_dst_discard(p->dst, (size_t)d->block,
					    d->ranges[i].start,
					    d->ranges[i].len, err);
		if (ret < 0)
			return ret;
	}
	return 0;
}

int kv_pc_in_listen(struct kv_pc_in *p, struct kv_error *err)
{
	int ret;

	kv_ram_pc_listen(p->rs);
	kv_switch_log("dst: prefault stopped");
	ret = kv_pc_dst_listen(p->dst, err);
	if (ret < 0)
		return ret;
	kv_ram_pc_listening(p->rs);
	preempt_start(p);
	return 0;
}

void kv_pc_in_listen_thread(struct kv_pc_in *p)
{
	/* Requested pages come on the preempt channel: nobody waits on the
	 * main stream's, and the guest's vCPUs and the urgent path go first. */
	if (p->pre_running)
		kv_thread_set_role(KV_THREAD_BACKGROUND);
}

void kv_pc_in_running(struct kv_pc_in *p)
{
	kv_ram_pc_running(p->rs);
}

const unsigned long *kv_pc_in_received_map(struct kv_pc_in *p, size_t block,
					   uint64_t *npages)
{
	return kv_pc_dst_received_map(p->dst, block, npages);
}

int kv_pc_in_rerequest(struct kv_pc_in *p, struct kv_error *err)
{
	pthread_mutex_lock(&p->req_lock);
	p->last_block = -1; /* a new link: the first request names its block */
	pthread_mutex_unlock(&p->req_lock);
	return kv_pc_dst_rerequest(p->dst, err);
}

void kv_pc_in_set_vcpus(struct kv_pc_in *p, const uint32_t *tids, size_t n)
{
	p->nvcpus = n < KV_PC_IN_MAX_VCPUS ? n : KV_PC_IN_MAX_VCPUS;
	memcpy(p->vcpu_tids, tids, p->nvcpus * sizeof(tids[0]));
	if (p->dst && kv_pc_dst_set_vcpus(p->dst, p->vcpu_tids, p->nvcpus) < 0)
		kv_warn("postcopy", "no memory for the vCPUs' blocktime");
}

int kv_pc_in_complete(struct kv_pc_in *p, int timeout_ms,
		      struct kv_error *err)
{
	int ret = kv_pc_dst_wait_complete(p->dst, timeout_ms, err);

	if (ret < 0)
		return ret;
	ret = kv_pc_dst_finish(p->dst, err);
	if (ret < 0)
		return ret;
	kv_info("postcopy", "every page is here: userfaultfd released");
	return 0;
}

static void trim_dist(const uint64_t *in, uint64_t *out)
{
	memcpy(out, in, KV_PC_IN_LAT_BUCKETS * sizeof(*out));
	for (size_t i = KV_PC_IN_LAT_BUCKETS; i < KV_PC_LAT_BUCKETS; i++)
		out[KV_PC_IN_LAT_BUCKETS - 1] += in[i];
}

void kv_pc_in_get_stats(struct kv_pc_in *p, struct kv_pc_in_stats *st)
{
	struct kv_pc_dst_stats d;
	uint64_t ns[KV_PC_IN_MAX_VCPUS];

	memset(st, 0, sizeof(*st));
	if (!p || !p->dst)
		return;
	kv_pc_dst_get_stats(p->dst, &d);
	kv_pc_dst_vcpu_blocktime(p->dst, ns, p->nvcpus);
	st->advised = true;
	st->requests = d.requests;
	st->blocktime_ms = d.blocktime_ns / 1000000;
	st->nvcpus = p->nvcpus;
	for (size_t i = 0; i < p->nvcpus; i++)
		st->vcpu_blocktime_ms[i] = ns[i] / 1000000;
	st->latency_ns = d.lat_mean_ns;
	st->latency_p50_ns = d.lat_p50_ns;
	st->latency_p99_ns = d.lat_p99_ns;
	st->latency_max_ns = d.lat_max_ns;
	trim_dist(d.lat_hist, st->latency_dist);
	st->preempt_pages = __atomic_load_n(&p->pre_pages, __ATOMIC_RELAXED);
	st->faults = d.faults;
	st->placed = d.placed;
	st->missing = d.total_pages - d.received;
}
