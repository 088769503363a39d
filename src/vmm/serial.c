/* SPDX-License-Identifier: MIT */
/* 16550A UART: registers, interrupt logic, console output and input. */
#define _GNU_SOURCE
#include "vmm/serial.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"

#define MSR_CONNECTED 0xb0 /* DCD, DSR, CTS */

struct kv_serial {
	pthread_mutex_t lock;
	pthread_cond_t room; /* the FIFO has space, or input stops */
	struct kv_serial_state r;
	int irq_level;
	int out_fd;
	bool out_failed; /* logged once */
	void (*set_irq)(void *opaque, int level);
	void *irq_opaque;
	/* Input thread. */
	bool input_started;
	bool input_stop;
	int in_fd;
	int wake_pipe[2];
	pthread_t input_thread;
};

static unsigned fifo_capacity(const struct kv_serial_state *r)
{
	return (r->fcr & KV_UART_FCR_ENABLE) ? KV_SERIAL_FIFO : 1;
}

static uint8_t pending_iir(const struct kv_serial_state *r)
{
	if ((r->ier & KV_UART_IER_RDI) && (r->lsr & KV_UART_LSR_DR))
		return KV_UART_IIR_RDI;
	if ((r->ier & KV_UART_IER_THRI) && r->thr_pending)
		return KV_UART_IIR_THRI;
	return KV_UART_IIR_NO_INT;
}

/* Called with the lock held after every register change. */
static void update_irq(struct kv_serial *s)
{
	int level = pending_iir(&s->r) != KV_UART_IIR_NO_INT &&
		    (s->r.mcr & KV_UART_MCR_OUT2);

	if (level == s->irq_level)
		return;
	s->irq_level = level;
	if (s->set_irq)
		s->set_irq(s->irq_opaque, level);
}

static void reset_registers(struct kv_serial_state *r)
{
	memset(r, 0, sizeof(*r));
	r->divisor = 12; /* 9600 baud */
	r->lcr = 0x03;	 /* 8N1 */
	r->lsr = KV_UART_LSR_THRE | KV_UART_LSR_TEMT;
	r->msr = MSR_CONNECTED;
}

struct kv_serial *kv_serial_new(int out_fd,
				void (*set_irq)(void *opaque, int level),
				void *irq_opaque)
{
	struct kv_serial *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->room, NULL);
	reset_registers(&s->r);
	s->out_fd = out_fd;
	s->set_irq = set_irq;
	s->irq_opaque = irq_opaque;
	s->in_fd = -1;
	s->wake_pipe[0] = s->wake_pipe[1] = -1;
	return s;
}

void kv_serial_stop_input(struct kv_serial *s)
{
	pthread_mutex_lock(&s->lock);
	s->input_stop = true;
	pthread_cond_broadcast(&s->room);
	pthread_mutex_unlock(&s->lock);
	if (s->wake_pipe[1] >= 0) {
		ssize_t r = write(s->wake_pipe[1], "x", 1);

		(void)r;
	}
}

void kv_serial_free(struct kv_serial *s)
{
	if (!s)
		return;
	kv_serial_stop_input(s);
	if (s->input_started)
		pthread_join(s->input_thread, NULL);
	for (int i = 0; i < 2; i++)
		if (s->wake_pipe[i] >= 0)
			close(s->wake_pipe[i]);
	pthread_cond_destroy(&s->room);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

static void transmit(struct kv_serial *s, uint8_t c)
{
	ssize_t r;

	if (s->out_fd < 0)
		return;
	do {
		r = write(s->out_fd, &c, 1);
	} while (r < 0 && errno == EINTR);
	if (r != 1 && !s->out_failed) {
		s->out_failed = true;
		kv_warn("serial", "console write failed (%s): output dropped",
			r < 0 ? strerror(errno) : "short write");
	}
}

static bool push_rx(struct kv_serial *s, uint8_t c)
{
	struct kv_serial_state *r = &s->r;

	if (r->rx_count >= fifo_capacity(r)) {
		r->lsr |= KV_UART_LSR_OE;
		return false;
	}
	r->rx_fifo[r->rx_count++] = c;
	r->lsr |= KV_UART_LSR_DR;
	return true;
}

static uint8_t pop_rx(struct kv_serial *s)
{
	struct kv_serial_state *r = &s->r;
	uint8_t c;

	if (!r->rx_count)
		return 0;
	c = r->rx_fifo[0];
	memmove(r->rx_fifo, r->rx_fifo + 1, --r->rx_count);
	if (!r->rx_count)
		r->lsr &= (uint8_t)~KV_UART_LSR_DR;
	pthread_cond_broadcast(&s->room);
	return c;
}

static uint8_t loopback_msr(uint8_t mcr)
{
	/* DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD */
	return (uint8_t)(((mcr & 0x01) << 5) | ((mcr & 0x02) << 3) |
			 ((mcr & 0x04) << 4) | ((mcr & 0x08) << 4));
}

static uint8_t read_locked(struct kv_serial *s, unsigned offset)
{
	struct kv_serial_state *r = &s->r;
	bool dlab = r->lcr & KV_UART_LCR_DLAB;
	uint8_t v;

	switch (offset) {
	case KV_UART_RBR_THR:
		return dlab ? (uint8_t)r->divisor : pop_rx(s);
	case KV_UART_IER:
		return dlab ? (uint8_t)(r->divisor >> 8) : r->ier;
	case KV_UART_IIR_FCR:
		v = pending_iir(r);
		if (v == KV_UART_IIR_THRI)
			r->thr_pending = false;
		if (r->fcr & KV_UART_FCR_ENABLE)
			v |= KV_UART_IIR_FIFO;
		return v;
	case KV_UART_LCR:
		return r->lcr;
	case KV_UART_MCR:
		return r->mcr;
	case KV_UART_LSR:
		v = r->lsr;
		r->lsr &= (uint8_t)~KV_UART_LSR_OE;
		return v;
	case KV_UART_MSR:
		return (r->mcr & KV_UART_MCR_LOOP) ? loopback_msr(r->mcr)
						   : r->msr;
	case KV_UART_SCR:
		return r->scr;
	}
	return 0xff;
}

uint8_t kv_serial_read(struct kv_serial *s, unsigned offset)
{
	uint8_t v;

	pthread_mutex_lock(&s->lock);
	v = read_locked(s, offset & 7);
	update_irq(s);
	pthread_mutex_unlock(&s->lock);
	return v;
}

static void write_fcr(struct kv_serial *s, uint8_t value)
{
	struct kv_serial_state *r = &s->r;
	bool toggled = (value ^ r->fcr) & KV_UART_FCR_ENABLE;

	if (toggled || (value & KV_UART_FCR_CLEAR_RX)) {
		r->rx_count = 0;
		r->lsr &= (uint8_t)~KV_UART_LSR_DR;
		pthread_cond_broadcast(&s->room);
	}
	/* Keep enable and the trigger level; the clear bits self-reset. */
	r->fcr = value & 0xc9;
}

static void write_locked(struct kv_serial *s, unsigned offset, uint8_t value)
{
	struct kv_serial_state *r = &s->r;
	bool dlab = r->lcr & KV_UART_LCR_DLAB;

	switch (offset) {
	case KV_UART_RBR_THR:
		if (dlab) {
			r->divisor = (uint16_t)((r->divisor & 0xff00) | value);
			break;
		}
		if (r->mcr & KV_UART_MCR_LOOP)
			push_rx(s, value);
		else
			transmit(s, value);
		r->thr_pending = true; /* sent at once: THR empty again */
		break;
	case KV_UART_IER:
		if (dlab) {
			r->divisor =
			    (uint16_t)((r->divisor & 0x00ff) | (value << 8));
			break;
		}
		/* Enabling THRI with THR empty raises it at once. */
		if ((value & KV_UART_IER_THRI) && !(r->ier & KV_UART_IER_THRI))
			r->thr_pending = true;
		r->ier = value & 0x0f;
		break;
	case KV_UART_IIR_FCR:
		write_fcr(s, value);
		break;
	case KV_UART_LCR:
		r->lcr = value;
		break;
	case KV_UART_MCR:
		r->mcr = value & 0x1f;
		break;
	case KV_UART_SCR:
		r->scr = value;
		break;
	default: /* LSR and MSR are read-only */
		break;
	}
}

void kv_serial_write(struct kv_serial *s, unsigned offset, uint8_t value)
{
	pthread_mutex_lock(&s->lock);
	write_locked(s, offset & 7, value);
	update_irq(s);
	pthread_mutex_unlock(&s->lock);
}

int kv_serial_receive(struct kv_serial *s, const uint8_t *buf, int n)
{
	int done = 0;

	pthread_mutex_lock(&s->lock);
	while (done < n && s->r.rx_count < fifo_capacity(&s->r))
		push_rx(s, buf[done++]);
	update_irq(s);
	pthread_mutex_unlock(&s->lock);
	return done;
}

bool kv_serial_wait_room(struct kv_serial *s)
{
	bool ok;

	pthread_mutex_lock(&s->lock);
	while (!s->input_stop && s->r.rx_count >= fifo_capacity(&s->r))
		pthread_cond_wait(&s->room, &s->lock);
	ok = !s->input_stop;
	pthread_mutex_unlock(&s->lock);
	return ok;
}

/* Wait for input or the wake pipe; false when input should end. */
static bool wait_readable(struct kv_serial *s)
{
	struct pollfd p[2] = {
	    {.fd = s->in_fd, .events = POLLIN},
	    {.fd = s->wake_pipe[0], .events = POLLIN},
	};

	for (;;) {
		int r = poll(p, 2, -1);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 || p[1].revents)
			return false;
		return true;
	}
}

static void *input_main(void *arg)
{
	struct kv_serial *s = arg;
	uint8_t buf[KV_SERIAL_FIFO];

	while (kv_serial_wait_room(s) && wait_readable(s)) {
		int room;
		ssize_t n;

		pthread_mutex_lock(&s->lock);
		room = (int)(fifo_capacity(&s->r) - s->r.rx_count);
		pthread_mutex_unlock(&s->lock);
		if (room <= 0)
			continue;
		n = read(s->in_fd, buf, (size_t)room);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0)
			break; /* EOF or error: no more input */
		/* Nobody else fills the FIFO, so all n bytes fit. */
		kv_serial_receive(s, buf, (int)n);
	}
	return NULL;
}

int kv_serial_start_input(struct kv_serial *s, int in_fd, struct kv_error *err)
{
	int rc;

	if (pipe2(s->wake_pipe, O_CLOEXEC) < 0)
		return kv_error_set_errno(err, -errno, "serial input pipe");
	s->in_fd = in_fd;
	rc = pthread_create(&s->input_thread, NULL, input_main, s);
	if (rc)
		return kv_error_set_errno(err, -rc, "serial input thread");
	s->input_started = true;
	return 0;
}

void kv_serial_state_get(struct kv_serial *s, struct kv_serial_state *st)
{
	pthread_mutex_lock(&s->lock);
	*st = s->r;
	pthread_mutex_unlock(&s->lock);
}

int kv_serial_state_put(struct kv_serial *s, const struct kv_serial_state *st,
			struct kv_error *err)
{
	if (st->rx_count > KV_SERIAL_FIFO)
		return kv_error_set(err, -EINVAL,
				    "serial state: %u bytes in a %d-byte FIFO",
				    st->rx_count, KV_SERIAL_FIFO);
	pthread_mutex_lock(&s->lock);
	s->r = *st;
	/* Derived bits follow the FIFO, whatever the stream said. */
	if (s->r.rx_count)
		s->r.lsr |= KV_UART_LSR_DR;
	else
		s->r.lsr &= (uint8_t)~KV_UART_LSR_DR;
	s->r.lsr |= KV_UART_LSR_THRE | KV_UART_LSR_TEMT;
	update_irq(s);
	pthread_cond_broadcast(&s->room);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

static int serial_post_load(void *opaque, int version_id, struct kv_error *err)
{
	const struct kv_serial_state *st = opaque;

	if (st->rx_count > KV_SERIAL_FIFO)
		return kv_error_set(err, -EINVAL,
				    "serial: rx_count %u exceeds the %d-byte FIFO",
				    st->rx_count, KV_SERIAL_FIFO);
	return 0;
}

static const struct kv_vmstate_field serial_fields[] = {
    KV_VMS_FIELD(struct kv_serial_state, divisor, KV_VMS_U16, 1),
    KV_VMS_FIELD(struct kv_serial_state, ier, KV_VMS_U8, 1),
    KV_VMS_FIELD(struct kv_serial_state, lcr, KV_VMS_U8, 1),
    KV_VMS_FIELD(struct kv_serial_state, mcr, KV_VMS_U8, 1),
    KV_VMS_FIELD(struct kv_serial_state, lsr, KV_VMS_U8, 1),
    KV_VMS_FIELD(struct kv_serial_state, msr, KV_VMS_U8, 1),
    KV_VMS_FIELD(struct kv_serial_state, scr, KV_VMS_U8, 1),
    KV_VMS_FIELD(struct kv_serial_state, fcr, KV_VMS_U8, 1),
    KV_VMS_FIELD(struct kv_serial_state, thr_pending, KV_VMS_BOOL, 1),
    KV_VMS_FIELD(struct kv_serial_state, rx_count, KV_VMS_U8, 1),
    KV_VMS_BUF(struct kv_serial_state, rx_fifo, 1),
    KV_VMS_END,
};

static const struct kv_vmstate_desc serial_vmsd = {
    .name = "serial",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = serial_fields,
    .post_load = serial_post_load,
};

const struct kv_vmstate_desc *kv_serial_vmsd(void)
{
	return &serial_vmsd;
}
