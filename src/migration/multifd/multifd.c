// SPDX-License-Identifier: MIT
/*
 * multifd channels: the sender's and the receiver's threads (see
 * multifd.h for the ordering and failure rules, multifd_packet.h for the
 * bytes, codec/codec.h for compression).
 *
 * Source. The migration thread fills one job (up to 128 pages of one
 * block) and hands it to an idle channel thread; a channel thread sorts
 * out zero pages (zero-page-detection=multifd), compresses the rest or
 * sends them straight from guest memory, and writes the packet. A sync
 * hands every channel a SYNC job and waits until all are idle again.
 *
 * Destination. One thread per channel reads a packet, checks every field
 * (the decoder) before it touches guest memory, writes the pages in place
 * and, at a SYNC packet, waits for the loader to reach MULTIFD_FLUSH.
 */
#include "base/units.h"
#include "migration/multifd/multifd.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#include "base/bitmap.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/rate_limit.h"
#include "base/zero.h"
#include "io/iov.h"
#include "migration/codec/codec.h"
#include "migration/tls_hook.h"

#define JOB_PAGES     KV_MFD_PAGES_DEFAULT
/* How long the loader waits at MULTIFD_FLUSH for channels that never
 * connected (a peer configured with fewer channels). */
#define CONNECT_TIMEOUT_NS (30 * 1000000000LL)

static const char *const zero_names[] = {"none", "legacy", "multifd"};

const char *kv_mfd_zero_name(enum kv_mfd_zero zero)
{
	if ((unsigned)zero >= sizeof(zero_names) / sizeof(zero_names[0]))
		return "unknown";
	return zero_names[zero];
}

int kv_mfd_zero_parse(const char *name, enum kv_mfd_zero *zero,
		      struct kv_error *err)
{
	for (size_t i = 0; i < sizeof(zero_names) / sizeof(zero_names[0]); i++)
		if (!strcmp(name, zero_names[i])) {
			*zero = (enum kv_mfd_zero)i;
			return 0;
		}
	return kv_error_set(err, -EINVAL,
			    "zero-page-detection '%s': expected 'none', 'legacy' or 'multifd'",
			    name);
}

static int check_config(const struct kv_mfd_config *cfg, struct kv_error *err)
{
	if (cfg->channels < 1 || cfg->channels > 255)
		return kv_error_set(err, -EINVAL,
				    "multifd: %u channels (1 to 255)",
				    cfg->channels);
	return 0;
}

/* ==== source ==== */

struct mfd_job {
	char block[KV_MFD_BLOCK_NAME_SIZE];
	uint32_t n;
	bool sync; /* a SYNC packet (no pages) */
	bool postcopy; /* a POSTCOPY packet (after the switch) */
	const uint8_t *pages[JOB_PAGES];
	uint64_t offsets[JOB_PAGES];
	bool known_zero[JOB_PAGES];
};

struct mfd_send_chan {
	struct kv_mfd_send *m;
	unsigned id;
	struct kv_chan *chan; /* replaced by its TLS channel under m->lock */
	char uri[300];	      /* with TLS: for the handshake's host name */
	pthread_t thread;
	bool started;
	/* Under m->lock: a queue of two, so the migration thread fills the
	 * next job while this one is on the wire. The thread works on
	 * jobs[head] while queued > 0; it waits on cond. */
	struct mfd_job jobs[2];
	unsigned head, queued;
	pthread_cond_t cond;
	struct kv_mfd_codec *codec;
	uint8_t *hdr;  /* header + offset slots */
	uint8_t *cbuf; /* compressed payload */
	size_t cbuf_size;
};

struct kv_mfd_send {
	struct kv_mfd_config cfg;
	pthread_mutex_t lock;
	pthread_cond_t cond; /* the migration thread waits: room, idle */
	struct mfd_send_chan *ch;
	unsigned next; /* round-robin start for the next job */
	bool stop;
	int error; /* first failure; under lock */
	struct kv_error err;
	struct mfd_job cur; /* the migration thread's job being filled */
	const char *cur_block; /* the caller's name pointer for cur's block */
	bool postcopy; /* atomic: kv_mfd_send_set_postcopy was called */
	uint64_t packet_num; /* atomic */
	uint64_t bytes, normal, zero; /* atomic */
};

/* Record the first failure and stop every channel. Called with lock. */
static void send_fail_locked(struct kv_mfd_send *m, int code,
			     const struct kv_error *err)
{
	if (!m->error) {
		m->error = code;
		if (err)
			m->err = *err;
		else
			kv_error_set(&m->err, code, "multifd: %s",
				     strerror(-code));
	}
	for (unsigned i = 0; i < m->cfg.channels; i++) {
		kv_chan_shutdown(m->ch[i].chan);
		pthread_cond_signal(&m->ch[i].cond);
	}
	pthread_cond_broadcast(&m->cond);
}

static bool send_failed(void *opaque)
{
	struct kv_mfd_send *m = opaque;

	return __atomic_load_n(&m->error, __ATOMIC_RELAXED) != 0;
}

/* max-bandwidth: the limiter the main stream charges too (not after the
 * postcopy switch: a vCPU may wait for these pages). */
static void rate_wait(struct kv_mfd_send *m, uint64_t bytes)
{
	if (__atomic_load_n(&m->postcopy, __ATOMIC_ACQUIRE))
		return;
	if (m->cfg.rate_limit && kv_rate_limit_get(m->cfg.rate_limit))
		kv_rate_limit_wait(kv_rate_limit_charge(m->cfg.rate_limit, bytes),
				   send_failed, m, NULL);
}

/* Write one packet for job j: zero pages sorted out, the rest raw or
 * compressed. */
static int send_job(struct mfd_send_chan *c, const struct mfd_job *j,
		    struct kv_error *err)
{
	struct kv_mfd_send *m = c->m;
	const uint8_t *normal[JOB_PAGES];
	uint64_t offsets[JOB_PAGES], zero_offs[JOB_PAGES];
	struct iovec iov[1 + JOB_PAGES];
	struct kv_mfd_packet pkt = {0};
	uint32_t nn = 0, nz = 0;
	size_t payload = 0;
	long hlen;
	int iovcnt = 1;

	for (uint32_t i = 0; i < j->n; i++) {
		if (j->known_zero[i] ||
		    (m->cfg.zero == KV_MFD_ZERO_MULTIFD &&
		     kv_buffer_is_zero(j->pages[i], KV_PAGE_SIZE))) {
			zero_offs[nz++] = j->offsets[i];
		} else {
			normal[nn] = j->pages[i];
			offsets[nn++] = j->offsets[i];
		}
	}
	memcpy(offsets + nn, zero_offs, nz * sizeof(uint64_t));
	pkt.flags = kv_mfd_method_flag(m->cfg.method) |
		    (j->sync ? KV_MFD_FLAG_SYNC : 0) |
		    (j->postcopy ? KV_MFD_FLAG_POSTCOPY : 0);
	pkt.pages_alloc = JOB_PAGES;
	pkt.normal = nn;
	pkt.zero = nz;
	pkt.packet_num = __atomic_fetch_add(&m->packet_num, 1,
					    __ATOMIC_RELAXED);
	snprintf(pkt.block, sizeof(pkt.block), "%s", j->block);
	pkt.offsets = offsets;
	if (nn && m->cfg.method != KV_MFD_METHOD_NONE) {
		int ret = kv_mfd_compress(c->codec, normal, nn, c->cbuf,
					  c->cbuf_size, &payload, err);

		if (ret < 0)
			return ret;
		iov[iovcnt].iov_base = c->cbuf;
		iov[iovcnt++].iov_len = payload;
	} else {
		for (uint32_t i = 0; i < nn; i++) {
			iov[iovcnt].iov_base = (void *)normal[i];
			iov[iovcnt++].iov_len = KV_PAGE_SIZE;
		}
		payload = (size_t)nn * KV_PAGE_SIZE;
	}
	pkt.next_size = (uint32_t)payload;
	hlen = kv_mfd_packet_encode(&pkt, c->hdr,
				    kv_mfd_packet_header_size(JOB_PAGES), err);
	if (hlen < 0)
		return (int)hlen;
	iov[0].iov_base = c->hdr;
	iov[0].iov_len = (size_t)hlen;
	rate_wait(m, (size_t)hlen + payload);
	if (kv_chan_writev_full(c->chan, iov, iovcnt, err) < 0)
		return err->code;
	__atomic_add_fetch(&m->bytes, (uint64_t)hlen + payload,
			   __ATOMIC_RELAXED);
	__atomic_add_fetch(&m->normal, nn, __ATOMIC_RELAXED);
	__atomic_add_fetch(&m->zero, nz, __ATOMIC_RELAXED);
	return 0;
}

/*
 * With TLS the handshake and the init message happen here, in the
 * channel's thread: the destination accepts channels only once it read
 * the main stream's header, which the migration thread sends after
 * kv_mfd_send_start returns; and N channels shake hands in parallel.
 */
static int send_tls_hello(struct mfd_send_chan *c, struct kv_error *err)
{
	struct kv_mfd_send *m = c->m;
	struct kv_mfd_init init = {.id = (uint8_t)c->id};
	uint8_t buf[KV_MFD_INIT_SIZE];
	struct iovec iov = {buf, sizeof(buf)};
	struct kv_chan *t;

	if (!kv_mig_tls_on(m->cfg.tls))
		return 0;
	t = kv_mig_tls_client_keep(c->chan, m->cfg.tls, c->uri,
				   m->cfg.connect_timeout_ms, err);
	if (!t)
		return err->code;
	pthread_mutex_lock(&m->lock);
	c->chan = t;
	if (m->error || m->stop)
		kv_chan_shutdown(t);
	pthread_mutex_unlock(&m->lock);
	kv_mfd_init_encode(&init, buf);
	return kv_chan_writev_full(c->chan, &iov, 1, err);
}

static void *send_main(void *opaque)
{
	struct mfd_send_chan *c = opaque;
	struct kv_mfd_send *m = c->m;
	struct kv_error herr = {0};
	int hret = send_tls_hello(c, &herr);

	pthread_mutex_lock(&m->lock);
	if (hret < 0) {
		kv_error_prefix(&herr, "multifd channel %u", c->id);
		send_fail_locked(m, hret, &herr);
	}
	for (;;) {
		struct kv_error err = {0};
		int ret;

		while (!c->queued && !m->stop)
			pthread_cond_wait(&c->cond, &m->lock);
		if (m->stop)
			break;
		pthread_mutex_unlock(&m->lock);
		ret = __atomic_load_n(&m->error, __ATOMIC_RELAXED)
			  ? 0
			  : send_job(c, &c->jobs[c->head], &err);
		pthread_mutex_lock(&m->lock);
		if (ret < 0) {
			kv_error_prefix(&err, "multifd channel %u", c->id);
			if ((ret == -EPIPE || ret == -ECONNRESET) &&
			    !__atomic_load_n(&m->postcopy, __ATOMIC_RELAXED))
				kv_error_prefix(&err,
						"the destination closed it (is multifd on at the destination too, with the same multifd-channels?)");
			send_fail_locked(m, ret, &err);
		}
		c->head ^= 1;
		c->queued--;
		pthread_cond_signal(&m->cond);
	}
	pthread_mutex_unlock(&m->lock);
	return NULL;
}

static int send_chan_open(struct kv_mfd_send *m, unsigned id,
			  const char *uri, struct kv_error *err)
{
	struct mfd_send_chan *c = &m->ch[id];
	struct kv_mfd_init init = {.id = (uint8_t)id};
	uint8_t buf[KV_MFD_INIT_SIZE];
	struct iovec iov = {buf, sizeof(buf)};

	c->m = m;
	c->id = id;
	c->hdr = malloc(kv_mfd_packet_header_size(JOB_PAGES));
	if (m->cfg.method != KV_MFD_METHOD_NONE) {
		c->cbuf_size = kv_mfd_compress_bound(m->cfg.method, JOB_PAGES);
		c->cbuf = malloc(c->cbuf_size);
		c->codec = kv_mfd_codec_new(m->cfg.method, m->cfg.level, true,
					    err);
		if (!c->codec)
			return -EINVAL;
	}
	if (!c->hdr || (m->cfg.method != KV_MFD_METHOD_NONE && !c->cbuf))
		return kv_error_set(err, -ENOMEM, "out of memory");
	c->chan = kv_chan_connect_cancellable(uri, m->cfg.cancel,
					      m->cfg.connect_timeout_ms, err);
	if (!c->chan)
		return err->code ? err->code : -EIO;
	if (m->cfg.activity)
		kv_chan_set_silence(c->chan, m->cfg.silence_ms,
				    m->cfg.activity);
	snprintf(c->uri, sizeof(c->uri), "%s", uri);
	kv_mfd_init_encode(&init, buf);
	if (!kv_mig_tls_on(m->cfg.tls) &&
	    kv_chan_writev_full(c->chan, &iov, 1, err) < 0)
		return err->code;
	if (pthread_create(&c->thread, NULL, send_main, c))
		return kv_error_set(err, -EAGAIN, "cannot start its thread");
	c->started = true;
	return 0;
}

struct kv_mfd_send *kv_mfd_send_start(const char *uri,
				      const struct kv_mfd_config *cfg,
				      struct kv_error *err)
{
	struct kv_mfd_send *m;

	if (check_config(cfg, err) < 0)
		return NULL;
	m = calloc(1, sizeof(*m));
	if (!m) {
		kv_error_set(err, -ENOMEM, "multifd: out of memory");
		return NULL;
	}
	m->cfg = *cfg;
	pthread_mutex_init(&m->lock, NULL);
	pthread_cond_init(&m->cond, NULL);
	m->ch = calloc(cfg->channels, sizeof(*m->ch));
	for (unsigned i = 0; m->ch && i < cfg->channels; i++)
		pthread_cond_init(&m->ch[i].cond, NULL);
	if (!m->ch) {
		kv_mfd_send_free(m);
		kv_error_set(err, -ENOMEM, "multifd: out of memory");
		return NULL;
	}
	for (unsigned i = 0; i < cfg->channels; i++) {
		if (send_chan_open(m, i, uri, err) < 0) {
			kv_error_prefix(err,
					"multifd channel %u of %u to %s (is multifd on at the destination too, with the same multifd-channels?)",
					i, cfg->channels, uri);
			kv_mfd_send_free(m);
			return NULL;
		}
	}
	return m;
}

static int send_error(struct kv_mfd_send *m, struct kv_error *err)
{
	kv_error_set(err, m->error, "%s", m->err.msg);
	return m->error;
}

/* Queue job on a channel: an idle one if any (round robin), else one
 * that has room for a next job; waits while every queue is full. */
static struct mfd_send_chan *pick_channel(struct kv_mfd_send *m)
{
	unsigned n = m->cfg.channels;

	for (unsigned want = 0; want < 2; want++)
		for (unsigned k = 0; k < n; k++) {
			struct mfd_send_chan *c = &m->ch[(m->next + k) % n];

			if (c->queued == want)
				return c;
		}
	return NULL;
}

static void enqueue(struct mfd_send_chan *c, const struct mfd_job *job)
{
	c->jobs[(c->head + c->queued) % 2] = *job;
	if (c->queued++ == 0)
		pthread_cond_signal(&c->cond);
}

static int dispatch(struct kv_mfd_send *m, const struct mfd_job *job,
		    struct kv_error *err)
{
	struct mfd_send_chan *c;
	int ret = 0;

	pthread_mutex_lock(&m->lock);
	while (!m->error && !(c = pick_channel(m)))
		pthread_cond_wait(&m->cond, &m->lock);
	if (m->error) {
		ret = send_error(m, err);
	} else {
		enqueue(c, job);
		m->next = (c->id + 1) % m->cfg.channels;
	}
	pthread_mutex_unlock(&m->lock);
	return ret;
}

static int flush_cur(struct kv_mfd_send *m, struct kv_error *err)
{
	int ret;

	if (!m->cur.n)
		return 0;
	ret = dispatch(m, &m->cur, err);
	m->cur.n = 0;
	return ret;
}

int kv_mfd_send_page(struct kv_mfd_send *m, const char *block,
		     const uint8_t *page, uint64_t offset, bool known_zero,
		     struct kv_error *err)
{
	struct mfd_job *j = &m->cur;
	int ret;

	/* The caller passes its block's own name: comparing the pointer
	 * is enough, and costs nothing per page. */
	if (j->n && (j->n == JOB_PAGES || m->cur_block != block)) {
		ret = flush_cur(m, err);
		if (ret < 0)
			return ret;
	}
	if (!j->n) {
		snprintf(j->block, sizeof(j->block), "%s", block);
		m->cur_block = block;
		j->sync = false;
		j->postcopy = __atomic_load_n(&m->postcopy, __ATOMIC_RELAXED);
	}
	j->pages[j->n] = page;
	j->offsets[j->n] = offset;
	j->known_zero[j->n] = known_zero;
	j->n++;
	return 0;
}

int kv_mfd_send_sync(struct kv_mfd_send *m, struct kv_error *err)
{
	struct mfd_job sync_job = {
	    .sync = true,
	    .postcopy = __atomic_load_n(&m->postcopy, __ATOMIC_RELAXED)};
	bool idle;
	int ret = flush_cur(m, err);

	if (ret < 0)
		return ret;
	/* One SYNC per channel, each after that channel's pages, then
	 * wait until every channel wrote everything. */
	pthread_mutex_lock(&m->lock);
	for (unsigned i = 0; !m->error && i < m->cfg.channels; i++) {
		struct mfd_send_chan *c = &m->ch[i];

		while (c->queued == 2 && !m->error)
			pthread_cond_wait(&m->cond, &m->lock);
		if (!m->error)
			enqueue(c, &sync_job);
	}
	do {
		idle = true;
		for (unsigned i = 0; i < m->cfg.channels; i++)
			idle = idle && !m->ch[i].queued;
		if (!idle && !m->error)
			pthread_cond_wait(&m->cond, &m->lock);
	} while (!idle && !m->error);
	if (m->error)
		ret = send_error(m, err);
	pthread_mutex_unlock(&m->lock);
	return ret;
}

void kv_mfd_send_set_postcopy(struct kv_mfd_send *m)
{
	__atomic_store_n(&m->postcopy, true, __ATOMIC_RELEASE);
}

bool kv_mfd_send_has_room(struct kv_mfd_send *m)
{
	bool room;

	pthread_mutex_lock(&m->lock);
	room = m->error || pick_channel(m) != NULL;
	pthread_mutex_unlock(&m->lock);
	return room;
}

uint64_t kv_mfd_send_bytes(const struct kv_mfd_send *m)
{
	return __atomic_load_n(&m->bytes, __ATOMIC_RELAXED);
}

int64_t kv_mfd_send_unsent(struct kv_mfd_send *m)
{
	int64_t total = 0;

	pthread_mutex_lock(&m->lock);
	for (unsigned i = 0; m->ch && i < m->cfg.channels; i++) {
		int64_t n = m->ch[i].chan ? kv_chan_unsent(m->ch[i].chan) : -1;

		total += n > 0 ? n : 0;
	}
	pthread_mutex_unlock(&m->lock);
	return total;
}

void kv_mfd_send_pages(const struct kv_mfd_send *m, uint64_t *normal,
		       uint64_t *zero)
{
	*normal = __atomic_load_n(&m->normal, __ATOMIC_RELAXED);
	*zero = __atomic_load_n(&m->zero, __ATOMIC_RELAXED);
}

void kv_mfd_send_cancel(struct kv_mfd_send *m)
{
	pthread_mutex_lock(&m->lock);
	send_fail_locked(m, -ECANCELED, NULL);
	kv_error_set(&m->err, -ECANCELED, "multifd: cancelled");
	pthread_mutex_unlock(&m->lock);
}

void kv_mfd_send_free(struct kv_mfd_send *m)
{
	if (!m)
		return;
	if (m->ch) {
		/* A thread blocked on a hung peer must come back too. */
		pthread_mutex_lock(&m->lock);
		m->stop = true;
		for (unsigned i = 0; i < m->cfg.channels; i++) {
			kv_chan_shutdown(m->ch[i].chan);
			pthread_cond_signal(&m->ch[i].cond);
		}
		pthread_cond_broadcast(&m->cond);
		pthread_mutex_unlock(&m->lock);
		/* Every thread is joined before any channel is closed: a
		 * thread still running may fail and shut all channels down. */
		for (unsigned i = 0; i < m->cfg.channels; i++)
			if (m->ch[i].started)
				pthread_join(m->ch[i].thread, NULL);
		for (unsigned i = 0; i < m->cfg.channels; i++) {
			struct mfd_send_chan *c = &m->ch[i];

			pthread_cond_destroy(&c->cond);
			kv_chan_close(c->chan);
			kv_mfd_codec_free(c->codec);
			free(c->hdr);
			free(c->cbuf);
		}
		free(m->ch);
	}
	pthread_cond_destroy(&m->cond);
	pthread_mutex_destroy(&m->lock);
	free(m);
}

/* ==== destination ==== */

struct mfd_recv_chan {
	struct kv_mfd_recv *r;
	unsigned id;
	struct kv_chan *chan;
	pthread_t thread;
	bool started;
	bool gone;   /* under r->lock: the thread ended */
	bool synced; /* under r->lock: waiting at a SYNC */
	struct kv_mfd_codec *codec;
	uint8_t *hdr;
	uint8_t *payload;
	size_t payload_size;
	uint8_t *bounce; /* POSTCOPY packets' pages, made at the first */
	uint64_t offsets[KV_MFD_PAGES_DEFAULT];
};

struct kv_mfd_recv {
	struct kv_mfd_config cfg;
	struct kv_mfd_target target;
	struct kv_chan *main;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct mfd_recv_chan *ch; /* by channel id; chan NULL until it came */
	unsigned connected;
	bool blocks_ready;
	unsigned synced;
	uint64_t release; /* bumped by the loader at each sync */
	bool aborted;
	bool closing; /* kv_mfd_recv_free: channel ends are not errors */
	bool pc_advised; /* atomic: POSTCOPY packets are accepted */
	bool pc_open; /* kv_mfd_recv_pc_listen: POSTCOPY packets go in */
	bool error_told; /* kv_mfd_recv_take_error gave it */
	int error;
	struct kv_error err;
	struct kv_listener *listener;
	int64_t hello_ns;	    /* the bound for a channel's init */
	struct kv_chan *candidate; /* accepted, its init not read yet */
	pthread_t acceptor;
	bool acceptor_started;
	uint64_t normal, zero; /* atomic */
};

static void recv_fail_locked(struct kv_mfd_recv *r, int code,
			     const struct kv_error *err)
{
	if (!r->error) {
		r->error = code;
		r->err = *err;
		kv_err("migration", "%s", err->msg);
	}
	r->aborted = true;
	/* The loader may be reading the main stream: stop it too. */
	kv_chan_shutdown(r->main);
	for (unsigned i = 0; i < r->cfg.channels; i++)
		kv_chan_shutdown(r->ch[i].chan);
	if (r->listener)
		kv_listener_shutdown(r->listener);
	kv_chan_shutdown(r->candidate);
	pthread_cond_broadcast(&r->cond);
}

static int block_len(void *opaque, const char *name, uint64_t *len)
{
	struct kv_mfd_recv *r = opaque;
	unsigned long *written;
	uint8_t *host;

	return r->target.block(r->target.opaque, name, &host, len, &written);
}

/* Until *flag (under r->lock) holds; false when the receiver is
 * aborted or closing first. */
static bool wait_until(struct kv_mfd_recv *r, const bool *flag)
{
	bool ok;

	pthread_mutex_lock(&r->lock);
	while (!*flag && !r->aborted && !r->closing)
		pthread_cond_wait(&r->cond, &r->lock);
	ok = !r->aborted && !r->closing;
	pthread_mutex_unlock(&r->lock);
	return ok;
}

/* Zero pages: fresh memory the load never wrote is zero already; a page
 * it wrote is cleared unless it reads as zero. */
static void apply_zero(uint8_t *host, unsigned long *written,
		       const uint64_t *offs, uint32_t nz)
{
	for (uint32_t i = 0; i < nz; i++) {
		uint8_t *p = host + offs[i];

		if (written && !kv_bitmap_test(written, offs[i] / KV_PAGE_SIZE))
			continue;
		if (!kv_buffer_is_zero(p, KV_PAGE_SIZE))
			memset(p, 0, KV_PAGE_SIZE);
	}
}

/* A payload arrives in many segments; waking the thread for each costs
 * more than the copy. The channel's receive low-water mark makes it wake
 * once what is left of the payload (up to 256 KiB) is there; it never
 * exceeds what is still to come (after a partial read the rest may be the
 * last bytes the source sends before it waits, at the end of a pass, and a
 * higher mark would never wake this thread), and goes back to 1 for the
 * next header. */
static int read_payload(struct kv_chan *chan, struct iovec *iov, int iovcnt,
			struct kv_error *err)
{
	return kv_chan_readv_full_batched(chan, iov, iovcnt, 256U << 10, err);
}

static int recv_pages(struct mfd_recv_chan *c, struct kv_mfd_packet *pkt,
		      struct kv_error *err)
{
	struct kv_mfd_recv *r = c->r;
	uint8_t *pages[KV_MFD_PAGES_DEFAULT];
	unsigned long *written;
	uint8_t *host;
	uint64_t len;
	int ret;

	ret = r->target.block(r->target.opaque, pkt->block, &host, &len,
			      &written);
	if (ret < 0)
		return kv_error_set(err, ret, "packet %llu: block '%s' is gone",
				    (unsigned long long)pkt->packet_num,
				    pkt->block);
	for (uint32_t i = 0; i < pkt->normal; i++)
		pages[i] = host + pkt->offsets[i];
	if (pkt->normal && r->cfg.method != KV_MFD_METHOD_NONE) {
		ret = kv_chan_read_full(c->chan, c->payload, pkt->next_size,
					err);
		if (ret < 0)
			return ret;
		ret = kv_mfd_decompress(c->codec, c->payload, pkt->next_size,
					pages, pkt->normal, err);
		if (ret < 0) {
			kv_error_prefix(err, "packet %llu",
					(unsigned long long)pkt->packet_num);
			return ret;
		}
	} else if (pkt->normal) {
		/* Raw: straight into guest memory (the decoder checked that
		 * next_size is exactly normal pages, each inside the block). */
		struct iovec iov[KV_MFD_PAGES_DEFAULT];

		for (uint32_t i = 0; i < pkt->normal; i++) {
			iov[i].iov_base = pages[i];
			iov[i].iov_len = KV_PAGE_SIZE;
		}
		ret = read_payload(c->chan, iov, (int)pkt->normal, err);
		if (ret < 0)
			return ret;
	}
	for (uint32_t i = 0; written && i < pkt->normal; i++)
		kv_bitmap_set_atomic(written, pkt->offsets[i] / KV_PAGE_SIZE);
	apply_zero(host, written, pkt->offsets + pkt->normal, pkt->zero);
	if (r->target.placed)
		r->target.placed(r->target.opaque, host, pkt->offsets,
				 pkt->normal, pkt->zero);
	__atomic_add_fetch(&r->normal, pkt->normal, __ATOMIC_RELAXED);
	__atomic_add_fetch(&r->zero, pkt->zero, __ATOMIC_RELAXED);
	return 0;
}

static bool pc_is_open(struct kv_mfd_recv *r)
{
	bool open;

	pthread_mutex_lock(&r->lock);
	open = r->pc_open;
	pthread_mutex_unlock(&r->lock);
	return open;
}

/* The payload of a POSTCOPY packet into the channel's bounce buffer, the
 * normal pages one after the other: guest memory is userfaultfd's now,
 * and a page goes in whole, once, through target.place. */
static int read_pc_payload(struct mfd_recv_chan *c, struct kv_mfd_packet *pkt,
			   struct kv_error *err)
{
	struct kv_mfd_recv *r = c->r;
	uint8_t *pages[KV_MFD_PAGES_DEFAULT];
	struct iovec iov = {c->bounce, (size_t)pkt->normal * KV_PAGE_SIZE};
	int ret;

	if (r->cfg.method == KV_MFD_METHOD_NONE)
		return read_payload(c->chan, &iov, 1, err);
	ret = kv_chan_read_full(c->chan, c->payload, pkt->next_size, err);
	if (ret < 0)
		return ret;
	for (uint32_t i = 0; i < pkt->normal; i++)
		pages[i] = c->bounce + (size_t)i * KV_PAGE_SIZE;
	ret = kv_mfd_decompress(c->codec, c->payload, pkt->next_size, pages,
				pkt->normal, err);
	if (ret < 0)
		kv_error_prefix(err, "packet %llu",
				(unsigned long long)pkt->packet_num);
	return ret;
}

static int recv_pc_pages(struct mfd_recv_chan *c, struct kv_mfd_packet *pkt,
			 struct kv_error *err)
{
	struct kv_mfd_recv *r = c->r;
	unsigned long *written;
	uint8_t *host;
	uint64_t len;
	int ret;

	if (!wait_until(r, &r->pc_open)) /* LISTEN armed userfaultfd */
		return kv_error_set(err, -ECANCELED, "aborted");
	ret = r->target.block(r->target.opaque, pkt->block, &host, &len,
			      &written);
	if (ret < 0)
		return kv_error_set(err, ret, "packet %llu: block '%s' is gone",
				    (unsigned long long)pkt->packet_num,
				    pkt->block);
	if (!c->bounce)
		c->bounce = malloc((size_t)KV_MFD_PAGES_DEFAULT * KV_PAGE_SIZE);
	if (!c->bounce)
		return kv_error_set(err, -ENOMEM, "out of memory for postcopy pages");
	if (pkt->normal) {
		ret = read_pc_payload(c, pkt, err);
		if (ret < 0)
			return ret;
	}
	ret = r->target.place(r->target.opaque, host, pkt->offsets, c->bounce,
			      pkt->normal, pkt->zero, err);
	if (ret < 0) {
		kv_error_prefix(err, "packet %llu",
				(unsigned long long)pkt->packet_num);
		return ret;
	}
	__atomic_add_fetch(&r->normal, pkt->normal, __ATOMIC_RELAXED);
	__atomic_add_fetch(&r->zero, pkt->zero, __ATOMIC_RELAXED);
	return 0;
}

/* Pages of a packet: in place (precopy) or through target.place
 * (POSTCOPY); after LISTEN only the latter. */
static int recv_any_pages(struct mfd_recv_chan *c, struct kv_mfd_packet *pkt,
			  struct kv_error *err)
{
	if (pkt->flags & KV_MFD_FLAG_POSTCOPY)
		return recv_pc_pages(c, pkt, err);
	if (pc_is_open(c->r))
		return kv_error_set(err, -EINVAL, "packet %llu: pages without the POSTCOPY flag after POSTCOPY_LISTEN (they would land around userfaultfd)", (unsigned long long)pkt->packet_num);
	return recv_pages(c, pkt, err);
}

/* At a SYNC packet: tell the loader, wait for its release. */
static bool wait_release(struct mfd_recv_chan *c)
{
	struct kv_mfd_recv *r = c->r;
	uint64_t gen;
	bool ok;

	pthread_mutex_lock(&r->lock);
	gen = r->release;
	c->synced = true;
	r->synced++;
	pthread_cond_broadcast(&r->cond);
	while (r->release == gen && !r->aborted && !r->closing)
		pthread_cond_wait(&r->cond, &r->lock);
	ok = !r->aborted && !r->closing;
	pthread_mutex_unlock(&r->lock);
	return ok;
}

/* One packet. Returns 1 at a clean end of the channel, 0 to go on, <0. */
static int recv_packet(struct mfd_recv_chan *c, struct kv_error *err)
{
	struct kv_mfd_recv *r = c->r;
	struct kv_mfd_recv_params rp = {
	    .channel = c->id,
	    .max_pages = KV_MFD_PAGES_DEFAULT,
	    .method = r->cfg.method,
	    .block_len = block_len,
	    .opaque = r,
	};
	struct kv_mfd_packet pkt = {.offsets = c->offsets};
	ssize_t n;
	int ret;

	/* A clean end: the peer closed between two packets. One read
	 * usually brings the whole header. */
	n = c->chan->ops->read(c->chan, c->hdr, KV_MFD_HDR_SIZE);
	if (n == 0)
		return 1;
	if (n < 0)
		return kv_error_set_errno(err, (int)n, "%s: read failed",
					  c->chan->name);
	ret = kv_chan_read_full(c->chan, c->hdr + n,
				KV_MFD_HDR_SIZE - (size_t)n, err);
	if (ret < 0)
		return ret;
	if (!wait_until(r, &r->blocks_ready))
		return kv_error_set(err, -ECANCELED, "aborted");
	/* ADVISE comes before the block list, so this is settled now. */
	rp.postcopy = r->target.place &&
		      __atomic_load_n(&r->pc_advised, __ATOMIC_ACQUIRE);
	ret = kv_mfd_packet_decode_header(c->hdr, KV_MFD_HDR_SIZE, &rp, &pkt,
					  err);
	if (ret < 0)
		return ret;
	ret = kv_chan_read_full(c->chan, c->hdr + KV_MFD_HDR_SIZE,
				kv_mfd_packet_offsets_size(&pkt), err);
	if (ret < 0)
		return ret;
	ret = kv_mfd_packet_decode_offsets(c->hdr + KV_MFD_HDR_SIZE,
					   kv_mfd_packet_offsets_size(&pkt),
					   &rp, &pkt, err);
	if (ret < 0)
		return ret;
	if (pkt.normal + pkt.zero) {
		ret = recv_any_pages(c, &pkt, err);
		if (ret < 0)
			return ret;
	} else if (pkt.next_size) {
		return kv_error_set(err, -EINVAL,
				    "packet %llu: %u payload bytes and no page",
				    (unsigned long long)pkt.packet_num,
				    pkt.next_size);
	}
	if ((pkt.flags & KV_MFD_FLAG_SYNC) && !wait_release(c))
		return kv_error_set(err, -ECANCELED, "aborted");
	return 0;
}

static void *recv_main(void *opaque)
{
	struct mfd_recv_chan *c = opaque;
	struct kv_mfd_recv *r = c->r;
	struct kv_error err = {0};
	int ret;

	do
		ret = recv_packet(c, &err);
	while (ret == 0);
	pthread_mutex_lock(&r->lock);
	if (ret < 0 && !r->aborted && !r->closing) {
		/* The packet decoder names the channel itself. */
		if (strncmp(err.msg, "multifd channel", 15))
			kv_error_prefix(&err, "multifd channel %u", c->id);
		recv_fail_locked(r, ret, &err);
	}
	c->gone = true;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	return NULL;
}

struct kv_mfd_recv *kv_mfd_recv_new(const struct kv_mfd_config *cfg,
				    const struct kv_mfd_target *target,
				    struct kv_chan *main, struct kv_error *err)
{
	struct kv_mfd_recv *r;

	if (check_config(cfg, err) < 0)
		return NULL;
	r = calloc(1, sizeof(*r));
	if (!r) {
		kv_error_set(err, -ENOMEM, "multifd: out of memory");
		return NULL;
	}
	r->cfg = *cfg;
	r->target = *target;
	r->main = main;
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->cond, NULL);
	r->ch = calloc(cfg->channels, sizeof(*r->ch));
	if (!r->ch) {
		kv_mfd_recv_free(r, NULL);
		kv_error_set(err, -ENOMEM, "multifd: out of memory");
		return NULL;
	}
	return r;
}

static int recv_chan_setup(struct kv_mfd_recv *r, struct mfd_recv_chan *c,
			   struct kv_error *err)
{
	c->hdr = malloc(kv_mfd_packet_header_size(KV_MFD_PAGES_DEFAULT));
	c->payload_size = KV_MFD_PAYLOAD_MAX(KV_MFD_PAGES_DEFAULT);
	c->payload = malloc(c->payload_size);
	if (!c->hdr || !c->payload)
		return kv_error_set(err, -ENOMEM, "out of memory");
	if (r->cfg.method != KV_MFD_METHOD_NONE) {
		c->codec = kv_mfd_codec_new(r->cfg.method, r->cfg.level, false,
					    err);
		if (!c->codec)
			return -EINVAL;
	}
	if (pthread_create(&c->thread, NULL, recv_main, c))
		return kv_error_set(err, -EAGAIN, "cannot start its thread");
	c->started = true;
	return 0;
}

/* Take chan as the channel its init names. -EEXIST: that channel came
 * already (chan is closed either way on failure). */
static int attach_channel(struct kv_mfd_recv *r, struct kv_chan *chan,
			  const struct kv_mfd_init *init, struct kv_error *err)
{
	struct mfd_recv_chan *c;
	int ret;

	pthread_mutex_lock(&r->lock);
	c = &r->ch[init->id];
	if (c->chan || r->aborted) {
		pthread_mutex_unlock(&r->lock);
		kv_chan_close(chan);
		return r->aborted ? kv_error_set(err, -ECANCELED, "aborted")
				  : kv_error_set(err, -EEXIST,
						 "multifd: channel %u connected twice",
						 init->id);
	}
	c->r = r;
	c->id = init->id;
	c->chan = chan;
	if (r->cfg.activity)
		kv_chan_set_silence(chan, 0, r->cfg.activity);
	r->connected++;
	ret = recv_chan_setup(r, c, err);
	if (ret < 0) {
		kv_error_prefix(err, "multifd channel %u", c->id);
		c->gone = true;
	}
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	return ret;
}

static int decode_init(struct kv_mfd_recv *r, const uint8_t *buf,
		       struct kv_mfd_init *init, struct kv_error *err)
{
	int ret = kv_mfd_init_decode(buf, r->cfg.channels, NULL, init, err);

	if (ret < 0)
		kv_error_prefix(err, "multifd: a channel's init message (set the same multifd-channels on both sides)");
	return ret;
}

int kv_mfd_recv_add_channel(struct kv_mfd_recv *r, struct kv_chan *chan,
			    struct kv_error *err)
{
	uint8_t buf[KV_MFD_INIT_SIZE];
	struct kv_mfd_init init;
	int ret;

	ret = kv_chan_read_full(chan, buf, sizeof(buf), err);
	if (ret == 0)
		ret = decode_init(r, buf, &init, err);
	if (ret < 0) {
		kv_chan_close(chan);
		return ret;
	}
	return attach_channel(r, chan, &init, err);
}

static void set_candidate(struct kv_mfd_recv *r, struct kv_chan *c)
{
	pthread_mutex_lock(&r->lock);
	r->candidate = c;
	if (c && (r->aborted || r->closing))
		kv_chan_shutdown(c);
	pthread_mutex_unlock(&r->lock);
}

/* The first bytes of a connection within the bound. Only a connection
 * whose first bytes are the multifd magic is a channel; anything else
 * (silent, closed, other bytes) is not the source's and is dropped:
 * returns 1 then. */
static int read_init(struct kv_mfd_recv *r, struct kv_chan *c, uint8_t *buf,
		     struct kv_error *err)
{
	uint32_t magic;
	int ret;

	set_candidate(r, c);
	ret = kv_chan_read_full_until(c, buf, KV_MFD_INIT_SIZE,
				      kv_now_ns() + r->hello_ns, err);
	set_candidate(r, NULL);
	if (ret == -ECANCELED)
		return ret;
	if (ret < 0)
		return 1;
	magic = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 |
		(uint32_t)buf[2] << 8 | buf[3];
	if (magic == KV_MFD_MAGIC)
		return 0;
	kv_error_set(err, -EINVAL, "%s: its first bytes are not a multifd init message", c->name);
	return 1;
}

/* A connection that is not one of this migration's channels: a port
 * scan, another sender, a stranger. The migration goes on. */
static void drop_stranger(struct kv_chan *c, const struct kv_error *why)
{
	char peer[300];

	kv_chan_peer_name(c, peer, sizeof(peer));
	kv_chan_close(c);
	kv_warn("migration", "multifd: dropped a connection from %s, not a channel of this migration: %s", peer, why->msg);
}

/* One accepted connection. <0 (other than -ECANCELED): the migration
 * fails. */
static int accept_one(struct kv_mfd_recv *r, struct kv_chan *c,
		      struct kv_error *err)
{
	uint8_t buf[KV_MFD_INIT_SIZE];
	struct kv_mfd_init init;
	int ret;

	c = kv_mig_tls_server(c, r->cfg.tls, kv_now_ns() + r->hello_ns, err);
	if (!c) {
		kv_warn("migration", "multifd: dropped a connection: %s", err->msg);
		return 0;
	}
	ret = read_init(r, c, buf, err);

	if (ret > 0) {
		drop_stranger(c, err);
		return 0;
	}
	if (ret == 0)
		ret = decode_init(r, buf, &init, err);
	if (ret < 0) {
		/* The failure is recorded before the peer sees its channel
		 * close: the source then shuts the others, and their end of
		 * input must not be taken for the cause. */
		if (ret != -ECANCELED) {
			pthread_mutex_lock(&r->lock);
			recv_fail_locked(r, ret, err);
			pthread_mutex_unlock(&r->lock);
		}
		kv_chan_close(c);
		return ret;
	}
	ret = attach_channel(r, c, &init, err);
	if (ret != -EEXIST)
		return ret;
	kv_warn("migration", "multifd: dropped a second connection for channel %u (%s)", init.id, err->msg);
	return 0;
}

static void *accept_main(void *opaque)
{
	struct kv_mfd_recv *r = opaque;

	for (;;) {
		struct kv_error err = {0};
		struct kv_chan *c = kv_listener_accept(r->listener, &err);
		int ret;

		if (!c)
			break; /* shut down: the load ended or failed */
		ret = accept_one(r, c, &err);
		if (ret == -ECANCELED)
			break;
		if (ret < 0) {
			pthread_mutex_lock(&r->lock);
			recv_fail_locked(r, ret, &err);
			pthread_mutex_unlock(&r->lock);
			break;
		}
	}
	return NULL;
}

int kv_mfd_recv_accept(struct kv_mfd_recv *r, struct kv_listener *l,
		       int64_t hello_ns, struct kv_error *err)
{
	r->listener = l;
	r->hello_ns = hello_ns;
	if (pthread_create(&r->acceptor, NULL, accept_main, r))
		return kv_error_set(err, -EAGAIN,
				    "multifd: cannot start the accept thread");
	r->acceptor_started = true;
	return 0;
}

/* *flag (one of r's) on, waking what wait_until waits for. */
static void raise_flag(struct kv_mfd_recv *r, bool *flag)
{
	pthread_mutex_lock(&r->lock);
	*flag = true;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

void kv_mfd_recv_blocks_ready(struct kv_mfd_recv *r)
{
	raise_flag(r, &r->blocks_ready);
}

int kv_mfd_recv_sync(struct kv_mfd_recv *r, struct kv_error *err)
{
	int64_t since = kv_now_ns(), deadline = since + CONNECT_TIMEOUT_NS;
	int ret = 0;

	pthread_mutex_lock(&r->lock);
	for (;;) {
		struct timespec ts;
		unsigned gone = 0;

		if (r->aborted) {
			ret = r->error ? r->error : -ECANCELED;
			kv_error_set(err, ret, "%s",
				     r->error ? r->err.msg
					      : "multifd: aborted");
			break;
		}
		if (r->synced == r->cfg.channels)
			break;
		for (unsigned i = 0; i < r->cfg.channels; i++)
			gone += r->ch[i].chan && r->ch[i].gone &&
				!r->ch[i].synced;
		if (gone) {
			ret = kv_error_set(err, -EIO,
					   "multifd: %u channel(s) closed before their SYNC",
					   gone);
			break;
		}
		if (r->connected < r->cfg.channels &&
		    kv_now_ns() > deadline) {
			ret = kv_error_set(err, -ETIMEDOUT,
					   "multifd: only %u of %u channels connected in 30 s; set the same multifd-channels on both sides",
					   r->connected, r->cfg.channels);
			break;
		}
		ret = kv_chan_check_silence(r->main, since, err);
		if (ret < 0) {
			kv_error_prefix(err, "multifd: waiting for every channel's SYNC");
			break;
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 100000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&r->cond, &r->lock, &ts);
	}
	if (ret == 0) {
		r->synced = 0;
		for (unsigned i = 0; i < r->cfg.channels; i++)
			r->ch[i].synced = false;
		r->release++;
		pthread_cond_broadcast(&r->cond);
	}
	pthread_mutex_unlock(&r->lock);
	return ret;
}

void kv_mfd_recv_pc_advise(struct kv_mfd_recv *r)
{
	__atomic_store_n(&r->pc_advised, true, __ATOMIC_RELEASE);
}

void kv_mfd_recv_pc_listen(struct kv_mfd_recv *r)
{
	raise_flag(r, &r->pc_open);
}

int kv_mfd_recv_take_error(struct kv_mfd_recv *r, struct kv_error *err)
{
	int ret = 0;

	pthread_mutex_lock(&r->lock);
	if (r->error && r->error != -ECANCELED && !r->error_told) {
		ret = kv_error_set(err, r->error, "%s", r->err.msg);
		r->error_told = true;
	}
	pthread_mutex_unlock(&r->lock);
	return ret;
}

void kv_mfd_recv_pages(const struct kv_mfd_recv *r, uint64_t *normal,
		       uint64_t *zero)
{
	*normal = __atomic_load_n(&r->normal, __ATOMIC_RELAXED);
	*zero = __atomic_load_n(&r->zero, __ATOMIC_RELAXED);
}

void kv_mfd_recv_abort(struct kv_mfd_recv *r)
{
	struct kv_error err = {0};

	kv_error_set(&err, -ECANCELED, "multifd: aborted");
	pthread_mutex_lock(&r->lock);
	r->aborted = true;
	for (unsigned i = 0; i < r->cfg.channels; i++)
		kv_chan_shutdown(r->ch[i].chan);
	if (r->listener)
		kv_listener_shutdown(r->listener);
	kv_chan_shutdown(r->candidate);
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

void kv_mfd_recv_stop(struct kv_mfd_recv *r)
{
	/* The load is over (or failed): nothing more may come on any
	 * channel, and the source closes them only after our answer. */
	pthread_mutex_lock(&r->lock);
	r->closing = true;
	for (unsigned i = 0; r->ch && i < r->cfg.channels; i++)
		kv_chan_shutdown(r->ch[i].chan);
	if (r->listener)
		kv_listener_shutdown(r->listener);
	kv_chan_shutdown(r->candidate);
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	if (r->acceptor_started) {
		pthread_join(r->acceptor, NULL);
		r->acceptor_started = false;
	}
	for (unsigned i = 0; r->ch && i < r->cfg.channels; i++) {
		struct mfd_recv_chan *c = &r->ch[i];

		if (c->started) {
			pthread_join(c->thread, NULL);
			c->started = false;
		}
	}
}

int kv_mfd_recv_free(struct kv_mfd_recv *r, struct kv_error *err)
{
	int ret;

	if (!r)
		return 0;
	kv_mfd_recv_stop(r);
	for (unsigned i = 0; r->ch && i < r->cfg.channels; i++) {
		struct mfd_recv_chan *c = &r->ch[i];

		kv_chan_close(c->chan);
		kv_mfd_codec_free(c->codec);
		free(c->hdr);
		free(c->payload);
		free(c->bounce);
	}
	ret = r->error;
	if (ret < 0 && r->error != -ECANCELED && err)
		kv_error_set(err, ret, "%s", r->err.msg);
	free(r->ch);
	pthread_cond_destroy(&r->cond);
	pthread_mutex_destroy(&r->lock);
	free(r);
	return ret == -ECANCELED ? 0 : ret;
}
