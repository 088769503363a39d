/* SPDX-License-Identifier: MIT */
/*
 * A 16550A UART (the PC's COM1 at 0x3f8, IRQ 4) as the guest console.
 *
 * Transmit is instantaneous: every THR write goes straight to the console
 * fd with write(2) (no stdio buffering: the host timestamps heartbeats as
 * they arrive). Receive: bytes pushed with kv_serial_receive() (from the
 * stdin reader thread) fill a 16-byte FIFO and raise the receive interrupt
 * when enabled. The interrupt line follows the PC convention: asserted
 * while an enabled interrupt is pending and MCR.OUT2 is set; the device
 * calls set_irq only when the level changes.
 *
 * All functions are thread-safe (vCPU threads and the reader thread).
 */
#ifndef KV_VMM_SERIAL_H
#define KV_VMM_SERIAL_H

#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"
#include "migration/savevm/vmstate.h"

#define KV_SERIAL_COM1_BASE 0x3f8
#define KV_SERIAL_COM1_IRQ  4
#define KV_SERIAL_FIFO	    16

/* Register offsets from the base port. */
#define KV_UART_RBR_THR 0 /* DLL when LCR.DLAB */
#define KV_UART_IER	1 /* DLM when LCR.DLAB */
#define KV_UART_IIR_FCR 2
#define KV_UART_LCR	3
#define KV_UART_MCR	4
#define KV_UART_LSR	5
#define KV_UART_MSR	6
#define KV_UART_SCR	7

#define KV_UART_IER_RDI	     0x01
#define KV_UART_IER_THRI     0x02
#define KV_UART_IIR_NO_INT   0x01
#define KV_UART_IIR_THRI     0x02
#define KV_UART_IIR_RDI	     0x04
#define KV_UART_IIR_FIFO     0xc0
#define KV_UART_FCR_ENABLE   0x01
#define KV_UART_FCR_CLEAR_RX 0x02
#define KV_UART_LCR_DLAB     0x80
#define KV_UART_MCR_OUT2     0x08
#define KV_UART_MCR_LOOP     0x10
#define KV_UART_LSR_DR	     0x01
#define KV_UART_LSR_OE	     0x02
#define KV_UART_LSR_THRE     0x20
#define KV_UART_LSR_TEMT     0x40

/* The device's registers: section "serial", version 1. */
struct kv_serial_state {
	uint16_t divisor;
	uint8_t ier;
	uint8_t lcr;
	uint8_t mcr;
	uint8_t lsr;
	uint8_t msr;
	uint8_t scr;
	uint8_t fcr;
	bool thr_pending; /* THR-empty interrupt waiting to be seen */
	uint8_t rx_count; /* bytes in rx_fifo, oldest first */
	uint8_t rx_fifo[KV_SERIAL_FIFO];
};

struct kv_serial;

/* out_fd: where transmitted bytes go (not closed by the device). set_irq:
 * drive the interrupt line (may be NULL). */
struct kv_serial *kv_serial_new(int out_fd,
				void (*set_irq)(void *opaque, int level),
				void *irq_opaque);
void kv_serial_free(struct kv_serial *s);

/* Port access at offset 0..7 from the base port. */
uint8_t kv_serial_read(struct kv_serial *s, unsigned offset);
void kv_serial_write(struct kv_serial *s, unsigned offset, uint8_t value);

/* Queue up to n received bytes; returns how many fit in the FIFO. */
int kv_serial_receive(struct kv_serial *s, const uint8_t *buf, int n);
/* Block until the FIFO has room (or kv_serial_stop_input was called:
 * returns false). */
bool kv_serial_wait_room(struct kv_serial *s);
void kv_serial_stop_input(struct kv_serial *s);

/* Migration: copy the registers out, or in (re-driving the IRQ line). */
void kv_serial_state_get(struct kv_serial *s, struct kv_serial_state *st);
int kv_serial_state_put(struct kv_serial *s, const struct kv_serial_state *st,
			struct kv_error *err);
/* Section "serial" (opaque = struct kv_serial_state *). */
const struct kv_vmstate_desc *kv_serial_vmsd(void);

/* Start a thread reading in_fd into the receive FIFO until EOF or
 * kv_serial_free. */
int kv_serial_start_input(struct kv_serial *s, int in_fd, struct kv_error *err);

#endif
