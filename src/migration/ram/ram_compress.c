// SPDX-License-Identifier: MIT
/*
 * Compression of the pages on the main stream (kvmig's x-compress), and
 * when it pays.
 *
 * Pages that would go as PAGE records are gathered, up to KV_RAM_ZC_BATCH
 * of one block, and go as one ZPAGES record: their offsets and their bytes
 * through ONE zstd stream that lasts the whole migration, flushed at the
 * end of every record (the multifd zstd codec, codec/zstd.c). Memory of
 * a guest is mostly alike from page to page, so matches a page or more
 * back are what makes the ratio; a stream per record would lose them.
 *
 * Compression costs the migration thread about 2.5 ns a byte here (zstd
 * level 1: ~400 MB/s). It only pays while the link, not that thread, is
 * what limits the migration: then the thread waits on a full socket
 * buffer anyway, and compressed pages cross the link r times faster. So
 * auto measures, in windows of ZC_WINDOW_NS:
 *  - the share of the window the thread waited for the socket to take
 *    more or for the cap (kv_stream_write_wait_ns): link-bound when
 *    >= ZC_LINK_BOUND,
 *    unless TCP says the receiver's window held the data back for half
 *    the time or more. Then the destination is what is slow (on loopback,
 *    faulting its memory in), and compressing would only add
 *    decompression to its work;
 *  - the link's rate: bytes the peer received (written minus SIOCOUTQ);
 *  - the compressor's rate and ratio, over the batches it compressed.
 * Compressed, pages move at min(C, L * r) bytes/s; raw at L. auto turns
 * compression on when that is ZC_GAIN_ON times L or more, off again only
 * when it is clearly slower, below ZC_GAIN_OFF: at a tie the bytes it
 * saves still count, and a window's noise (another thread preempting the
 * compressor on a busy host) must not flip it back and forth. The first
 * batch is sampled to know C and r from the start; while raw and
 * link-bound, one batch every ZC_PROBE_NS, to follow the pages being sent
 * now. It turns on after ZC_BOUND_WINDOWS link-bound windows in a row
 * (the start of a TCP connection makes any link look slow for a while),
 * and while on it sends a window of raw pages now and then
 * (ZC_RAW_PROBE_NS, doubling while it confirms compression): while
 * compressing the link is not what limits the sender, so only raw pages
 * tell whether it is still slow. On loopback
 * and 10 Gbit/s links L is above C and nothing changes; at 1 Gbit/s
 * pages of a typical guest go several times faster.
 *
 * Until compression is chosen nothing kvmig-only goes on the wire: the
 * stream stays a QEMU stream (docs/FORMAT.md 5.3). The sample is a batch
 * of pages that went out raw as PAGE records, compressed by a zstd
 * stream of the sampler's own into a scratch buffer, whose bytes are
 * thrown away: it costs one batch of CPU per ZC_PROBE_NS at most. The
 * wire's zstd stream starts when compression is first chosen, with the
 * first ZPAGES record (where the destination starts decoding), and lasts
 * the migration, across a postcopy switch too (a postcopy recovery starts
 * a new one on the new link: kv_ram_zc_restart). A channel that cannot
 * say how much the peer received (a file) has no link to measure: there
 * auto samples nothing and never compresses.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/log.h"
#include "io/stream.h"
#include "migration/codec/codec.h"
#include "migration/ram/ram_internal.h"

#define ZC_WINDOW_NS  (20 * 1000 * 1000LL)
#define ZC_PROBE_NS   (500 * 1000 * 1000LL)
/* While compressing, a raw window after this long, then twice as long
 * after each one that confirms compression, up to ZC_RAW_PROBE_MAX_NS. */
#define ZC_RAW_PROBE_NS	    (100 * 1000 * 1000LL)
#define ZC_RAW_PROBE_MAX_NS (2000 * 1000 * 1000LL)
/* Link-bound windows in a row before compression turns on: the first
 * windows of a connection (slow start, a send buffer still growing) make
 * a fast link look slow. */
#define ZC_BOUND_WINDOWS 2
#define ZC_LINK_BOUND 0.25
#define ZC_GAIN_ON    1.3
#define ZC_GAIN_OFF   0.9
#define ZC_EWMA	      0.25 /* weight of the newest window */
#define ZC_METHOD     KV_MFD_METHOD_ZSTD

static const char *const mode_names[] = {
    [KV_RAM_COMPRESS_OFF] = "off",
    [KV_RAM_COMPRESS_AUTO] = "auto",
    [KV_RAM_COMPRESS_ALWAYS] = "always",
};

const char *kv_ram_compress_name(enum kv_ram_compress mode)
{
	if ((unsigned)mode >= sizeof(mode_names) / sizeof(mode_names[0]))
		return "unknown";
	return mode_names[mode];
}

int kv_ram_compress_parse(const char *name, enum kv_ram_compress *mode,
			  struct kv_error *err)
{
	for (unsigned i = 0; i < sizeof(mode_names) / sizeof(mode_names[0]);
	     i++) {
		if (!strcmp(name, mode_names[i])) {
			*mode = (enum kv_ram_compress)i;
			return 0;
		}
	}
	return kv_error_set(err, -EINVAL,
			    "x-compress '%s' is not one of off, auto, always",
			    name);
}

void kv_ram_set_compress(struct kv_ram_state *rs, enum kv_ram_compress mode)
{
	__atomic_store_n(&rs->src.zc.mode, mode, __ATOMIC_RELAXED);
}

/* auto's sampler: a batch of pages that went raw, compressed off the
 * wire by a zstd stream that is not the wire's. */
struct kv_ram_zc_sample {
	struct kv_mfd_codec *codec;
	uint8_t *buf; /* scratch: the compressed bytes are thrown away */
	size_t buf_size, n;
	const uint8_t *pages[KV_RAM_ZC_BATCH];
};

/* A zstd stream and a buffer for a batch's compressed bytes. */
static int codec_new(bool compress, struct kv_mfd_codec **codec,
		     uint8_t **buf, size_t *buf_size, struct kv_error *err)
{
	*codec = kv_mfd_codec_new(ZC_METHOD, KV_MFD_LEVEL_DEFAULT, compress,
				  err);
	if (!*codec)
		return err->code ? err->code : -ENOMEM;
	*buf_size = kv_mfd_compress_bound(ZC_METHOD, KV_RAM_ZC_BATCH);
	*buf = malloc(*buf_size);
	if (!*buf) {
		kv_mfd_codec_free(*codec);
		*codec = NULL;
		return kv_error_set(err, -ENOMEM, "ram: out of memory for compression");
	}
	return 0;
}

static int alloc_codec(struct kv_ram_zc *zc, bool compress,
		       struct kv_error *err)
{
	return codec_new(compress, &zc->codec, &zc->buf, &zc->buf_size, err);
}

/* A new zstd stream for the wire (the buffer stays). */
static int alloc_codec_only(struct kv_ram_zc *zc, struct kv_error *err)
{
	zc->codec = kv_mfd_codec_new(ZC_METHOD, KV_MFD_LEVEL_DEFAULT, true,
				     err);
	if (!zc->codec)
		return err->code ? err->code : -ENOMEM;
	return 0;
}

static void sample_free(struct kv_ram_zc_sample *sm)
{
	if (!sm)
		return;
	kv_mfd_codec_free(sm->codec);
	free(sm->buf);
	free(sm);
}

static struct kv_ram_zc_sample *sample_new(struct kv_error *err)
{
	struct kv_ram_zc_sample *sm = calloc(1, sizeof(*sm));

	if (!sm) {
		kv_error_set(err, -ENOMEM, "ram: out of memory for compression");
		return NULL;
	}
	if (codec_new(true, &sm->codec, &sm->buf, &sm->buf_size, err) < 0) {
		free(sm);
		return NULL;
	}
	return sm;
}

static void set_active(struct kv_ram_zc *zc, bool on)
{
	struct kv_error err = {0};

	if (zc->active == on)
		return;
	/* The wire's zstd stream starts with the first ZPAGES record and
	 * lasts the migration (on, off and on again continue it). */
	if (on && !zc->codec && alloc_codec(zc, true, &err) < 0) {
		kv_warn("migration", "x-compress auto: cannot start compressing, pages go raw: %s", err.msg);
		sample_free(zc->sample);
		zc->sample = NULL;
		return;
	}
	zc->active = on;
	kv_ram_stat_add(&zc->switches, 1);
	__atomic_store_n(&zc->pub_active, on, __ATOMIC_RELAXED);
	kv_debug("migration",
		 "x-compress auto: %s (link %.0f MiB/s, zstd %.0f MiB/s at %.1fx)",
		 on ? "on" : "off", zc->link_bps / 1048576.0,
		 zc->comp_bps / 1048576.0, zc->ratio);
}

void kv_ram_zc_cleanup(struct kv_ram_state *rs)
{
	struct kv_ram_zc *zc = &rs->src.zc;

	kv_mfd_codec_free(zc->codec);
	zc->codec = NULL;
	free(zc->buf);
	zc->buf = NULL;
	zc->n = 0;
	sample_free(zc->sample);
	zc->sample = NULL;
}

int kv_ram_zc_setup(struct kv_stream *s, struct kv_ram_state *rs,
		    struct kv_error *err)
{
	struct kv_ram_zc *zc = &rs->src.zc;
	enum kv_ram_compress mode = zc->mode;

	kv_ram_zc_cleanup(rs);
	zc->active = zc->probe = zc->raw_probe = false;
	zc->win_start = zc->next_probe = zc->next_raw_probe = 0;
	zc->other_wait_ns = 0;
	zc->raw_probe_ns = ZC_RAW_PROBE_NS;
	zc->bound_windows = 0;
	memset(&zc->win_tcp, 0, sizeof(zc->win_tcp));
	zc->link_bps = zc->comp_bps = zc->ratio = 0;
	zc->fac_raw_pages = zc->fac_zc_pages = zc->fac_zc_bytes = 0;
	kv_ram_stat_set(&zc->pages, 0);
	kv_ram_stat_set(&zc->bytes, 0);
	kv_ram_stat_set(&zc->switches, 0);
	__atomic_store_n(&zc->pub_active, false, __ATOMIC_RELAXED);
	/* multifd's channels carry the pages, compressed on their own. */
	if (mode == KV_RAM_COMPRESS_OFF || rs->src.mfd_send)
		return 0;
	/* No link to measure (a file): auto never compresses there. */
	if (mode == KV_RAM_COMPRESS_AUTO &&
	    kv_chan_unsent(kv_stream_chan(s)) < 0)
		return 0;
	if (mode == KV_RAM_COMPRESS_ALWAYS ? alloc_codec(zc, true, err) < 0
					   : !(zc->sample = sample_new(err))) {
		kv_error_prefix(err, "ram: x-compress");
		return err->code;
	}
	if (mode == KV_RAM_COMPRESS_ALWAYS) {
		zc->active = true;
		__atomic_store_n(&zc->pub_active, true, __ATOMIC_RELAXED);
	}
	zc->probe = mode == KV_RAM_COMPRESS_AUTO;
	zc->next_probe = kv_now_ns() + ZC_PROBE_NS;
	return 0;
}

/* The ZPAGES record of the batch (docs/FORMAT.md 5.3). */
void kv_ram_zc_flush(struct kv_stream *s, struct kv_ram_state *rs)
{
	struct kv_ram_zc *zc = &rs->src.zc;
	const struct kv_ram_block *b = &rs->blocks[zc->bi];
	const uint8_t *pages[KV_RAM_ZC_BATCH];
	struct kv_error err = {0};
	size_t len, n = zc->n;
	int64_t t0;

	zc->n = 0;
	if (!n || kv_stream_error(s))
		return;
	for (size_t i = 0; i < n; i++)
		pages[i] = b->host + ((uint64_t)zc->page[i] << KV_PAGE_SHIFT);
	t0 = kv_now_ns();
	/* No codec: a postcopy recovery dropped the broken link's stream. */
	if ((!zc->codec && alloc_codec_only(zc, &err) < 0) ||
	    kv_mfd_compress(zc->codec, pages, n, zc->buf, zc->buf_size, &len,
			    &err) < 0) {
		kv_stream_set_error(s, err.code, "ram: compressing pages: %s",
				    err.msg);
		return;
	}
	zc->win_ns += (uint64_t)(kv_now_ns() - t0);
	zc->win_in += n * KV_PAGE_SIZE;
	zc->win_out += len;
	kv_ram_put_header(s, rs, zc->bi, zc->page[0], KV_RAM_FLAG_ZPAGES);
	kv_stream_put_u8(s, ZC_METHOD);
	kv_stream_put_be16(s, (uint16_t)n);
	for (size_t i = 1; i < n; i++)
		kv_stream_put_be64(s, (uint64_t)zc->page[i] << KV_PAGE_SHIFT);
	kv_stream_put_be32(s, (uint32_t)len);
	kv_stream_put_buffer(s, zc->buf, len);
	zc->fac_zc_pages += n;
	zc->fac_zc_bytes += len;
	kv_ram_stat_add(&zc->pages, n);
	kv_ram_stat_add(&zc->bytes, len);
	kv_ram_stat_add(&rs->normal_pages, n);
}

/* A page that went raw joins the sample; a full sample is compressed
 * into the scratch buffer for C and r, and the bytes are dropped. */
static void sample_page(struct kv_ram_zc *zc, const uint8_t *page)
{
	struct kv_ram_zc_sample *sm = zc->sample;
	struct kv_error err = {0};
	size_t len = 0, n;
	int64_t t0;

	sm->pages[sm->n++] = page;
	if (sm->n < KV_RAM_ZC_BATCH)
		return;
	n = sm->n;
	sm->n = 0;
	zc->probe = false;
	t0 = kv_now_ns();
	if (kv_mfd_compress(sm->codec, sm->pages, n, sm->buf, sm->buf_size,
			    &len, &err) < 0) {
		/* Nothing on the wire depends on the sampler's stream: auto
		 * stays raw for the rest of this migration. */
		kv_warn("migration", "x-compress auto: sampling failed, pages go raw: %s", err.msg);
		sample_free(zc->sample);
		zc->sample = NULL;
		return;
	}
	zc->win_ns += (uint64_t)(kv_now_ns() - t0);
	zc->win_in += n * KV_PAGE_SIZE;
	zc->win_out += len;
}

bool kv_ram_zc_send(struct kv_stream *s, struct kv_ram_state *rs, size_t bi,
		    size_t page)
{
	struct kv_ram_zc *zc = &rs->src.zc;

	if (!zc->active || zc->raw_probe) {
		zc->fac_raw_pages++;
		if (zc->probe && zc->sample)
			sample_page(zc, rs->blocks[bi].host +
					    ((uint64_t)page << KV_PAGE_SHIFT));
		return false;
	}
	if (zc->n && zc->bi != bi)
		kv_ram_zc_flush(s, rs);
	zc->bi = bi;
	zc->page[zc->n++] = page;
	if (zc->n == KV_RAM_ZC_BATCH)
		kv_ram_zc_flush(s, rs);
	return true;
}

/* min(C, L * r) against L: how much faster compressed pages move. */
static double gain(const struct kv_ram_zc *zc)
{
	double compressed = zc->link_bps * zc->ratio;

	if (zc->comp_bps < compressed)
		compressed = zc->comp_bps;
	return zc->link_bps > 0 ? compressed / zc->link_bps : 0;
}

static void turn_off(struct kv_ram_zc *zc, int64_t now)
{
	set_active(zc, false);
	zc->next_probe = now + ZC_PROBE_NS;
	zc->raw_probe_ns = ZC_RAW_PROBE_NS;
	zc->bound_windows = 0;
}

/* On: the window that was sent raw says whether the link still limits. */
static void decide_on(struct kv_ram_zc *zc, bool link_bound, int64_t now)
{
	if (zc->raw_probe) {
		zc->raw_probe = false;
		if (!link_bound) {
			turn_off(zc, now); /* raw pages did not wait: fast link */
			return;
		}
		if (zc->raw_probe_ns < ZC_RAW_PROBE_MAX_NS)
			zc->raw_probe_ns *= 2;
		zc->next_raw_probe = now + zc->raw_probe_ns;
	} else if (now >= zc->next_raw_probe) {
		zc->raw_probe = true;
		return;
	}
	if (gain(zc) < ZC_GAIN_OFF)
		turn_off(zc, now);
}

static void decide(struct kv_ram_zc *zc, bool link_bound, int64_t now)
{
	if (zc->active) {
		decide_on(zc, link_bound, now);
		return;
	}
	zc->bound_windows = link_bound ? zc->bound_windows + 1 : 0;
	if (!link_bound)
		return;
	if (!zc->comp_bps || now >= zc->next_probe) {
		zc->probe = true;
		zc->next_probe = now + ZC_PROBE_NS;
		return;
	}
	if (zc->bound_windows >= ZC_BOUND_WINDOWS && gain(zc) >= ZC_GAIN_ON) {
		set_active(zc, true);
		zc->next_raw_probe = now + zc->raw_probe_ns;
	}
}

static double ewma(double old, double v)
{
	return old > 0 ? old + ZC_EWMA * (v - old) : v;
}

/* Did the receiver's window hold the sender back for half the window's
 * busy time or more? (false when the channel is not TCP) */
static bool receiver_bound(struct kv_ram_zc *zc, const struct kv_chan *chan)
{
	struct kv_tcp_limits now = {0};
	uint64_t busy, rwnd;

	if (kv_chan_tcp_limits(chan, &now) < 0)
		return false;
	busy = now.busy_us - zc->win_tcp.busy_us;
	rwnd = now.rwnd_limited_us - zc->win_tcp.rwnd_limited_us;
	zc->win_tcp = now;
	return busy && 2 * rwnd >= busy;
}

void kv_ram_zc_tick(struct kv_stream *s, struct kv_ram_state *rs)
{
	struct kv_ram_zc *zc = &rs->src.zc;
	struct kv_chan *chan = kv_stream_chan(s);
	int64_t now, dt, unsent;
	uint64_t delivered, wait_ns;
	double link, waited;
	bool link_bound, peer_slow;

	if (zc->mode != KV_RAM_COMPRESS_AUTO || !zc->sample)
		return;
	now = kv_now_ns();
	dt = now - zc->win_start;
	if (zc->win_start && dt < ZC_WINDOW_NS)
		return;
	unsent = kv_chan_unsent(chan);
	delivered = kv_stream_transferred(s) - (unsent > 0 ? (uint64_t)unsent
							    : 0);
	if (zc->win_ns && zc->win_out) {
		zc->comp_bps = ewma(zc->comp_bps,
				    (double)zc->win_in * 1e9 / (double)zc->win_ns);
		zc->ratio =
		    ewma(zc->ratio, (double)zc->win_in / (double)zc->win_out);
	}
	peer_slow = receiver_bound(zc, chan);
	wait_ns = kv_stream_write_wait_ns(s) + zc->other_wait_ns;
	if (zc->win_start) {
		link = (double)(delivered - zc->win_delivered) * 1e9 /
		       (double)dt;
		waited = (double)(wait_ns - zc->win_wait_ns) / (double)dt;
		link_bound = waited >= ZC_LINK_BOUND && !peer_slow;
		/* Waiting on the socket, the sender sees the link's rate;
		 * compressing without waiting, at least that much. */
		if (link_bound || (zc->active && link > zc->link_bps))
			zc->link_bps = link;
		decide(zc, link_bound, now);
	}
	zc->win_start = now;
	zc->win_delivered = delivered;
	zc->win_wait_ns = wait_ns;
	zc->win_in = zc->win_out = zc->win_ns = 0;
}

void kv_ram_zc_note_link_wait(struct kv_ram_state *rs, uint64_t ns)
{
	rs->src.zc.other_wait_ns += ns;
}

void kv_ram_zc_link_changed(struct kv_ram_state *rs)
{
	struct kv_ram_zc *zc = &rs->src.zc;

	if (zc->mode != KV_RAM_COMPRESS_AUTO || !zc->sample)
		return;
	/* What was measured was another link (or the cap): raw pages until
	 * two windows of this one say it is the bottleneck. */
	if (zc->active)
		turn_off(zc, kv_now_ns());
	zc->raw_probe = false;
	zc->bound_windows = 0;
}

void kv_ram_zc_restart(struct kv_ram_state *rs)
{
	struct kv_ram_zc *zc = &rs->src.zc;

	zc->n = 0;
	kv_mfd_codec_free(zc->codec);
	zc->codec = NULL;
	/* The new link is measured from scratch (its TCP and stream
	 * counters start at zero). */
	kv_ram_zc_link_changed(rs);
	zc->win_start = 0;
	zc->other_wait_ns = 0;
	memset(&zc->win_tcp, 0, sizeof(zc->win_tcp));
}

double kv_ram_wire_factor(struct kv_ram_state *rs)
{
	struct kv_ram_zc *zc = &rs->src.zc;
	double raw = (double)zc->fac_raw_pages * KV_PAGE_SIZE;
	double zpages = (double)zc->fac_zc_pages * KV_PAGE_SIZE;
	double wire = raw + (double)zc->fac_zc_bytes;
	double f = wire > 0 ? (raw + zpages) / wire : 1;

	zc->fac_raw_pages = zc->fac_zc_pages = zc->fac_zc_bytes = 0;
	return f > 1 ? f : 1;
}

double kv_ram_link_bps(const struct kv_ram_state *rs)
{
	return rs->src.zc.link_bps;
}

void kv_ram_get_compress_stats(const struct kv_ram_state *rs,
			       struct kv_ram_compress_stats *st)
{
	const struct kv_ram_zc *zc = &rs->src.zc;

	st->mode = __atomic_load_n(&zc->mode, __ATOMIC_RELAXED);
	st->active = __atomic_load_n(&zc->pub_active, __ATOMIC_RELAXED);
	st->pages = kv_ram_stat_get(&zc->pages);
	st->compressed_size = kv_ram_stat_get(&zc->bytes);
	st->compression_rate =
	    st->compressed_size
		? (double)st->pages * KV_PAGE_SIZE / (double)st->compressed_size
		: 0;
	st->switches = kv_ram_stat_get(&zc->switches);
}
