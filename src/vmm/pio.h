/* SPDX-License-Identifier: MIT */
/*
 * Port I/O the VMM handles itself (everything else on a PC that matters -
 * PIC, PIT, speaker port - is in the kernel):
 *   0x3f8-0x3ff  COM1 (serial.h)
 *   0x604, 0xb004  power off: a 16-bit write of KV_POWEROFF_VALUE
 *   0x80         POST/delay port: ignored silently
 * Other ports read as all ones and ignore writes, logged at low volume.
 * The dispatcher is kv_pio_access() in vm_internal.h.
 */
#ifndef KV_VMM_PIO_H
#define KV_VMM_PIO_H

#include <stdbool.h>
#include <stdint.h>

#define KV_PIO_POST 0x80

/* Is this access the documented power-off request? */
bool kv_pio_is_poweroff(uint16_t port, bool is_write, int size,
			const uint8_t *data);

#endif
