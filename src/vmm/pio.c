/* SPDX-License-Identifier: MIT */
/* Port I/O dispatch for the VMM's own devices. */
#include "vmm/pio.h"

#include <string.h>

#include "base/log.h"
#include "vmm/vm_internal.h"

/* Log the first few unknown accesses, then every 4096th. */
#define UNHANDLED_LOG_FIRST 8
#define UNHANDLED_LOG_EVERY 4096

bool kv_pio_is_poweroff(uint16_t port, bool is_write, int size,
			const uint8_t *data)
{
	if (!is_write || size != 2)
		return false;
	if (port != KV_POWEROFF_PORT && port != KV_POWEROFF_PORT_PIIX)
		return false;
	return (uint16_t)(data[0] | data[1] << 8) == KV_POWEROFF_VALUE;
}

static void serial_access(struct kv_vm *vm, uint16_t port, bool is_write,
			  int size, uint8_t *data)
{
	unsigned offset = port - KV_SERIAL_COM1_BASE;

	/* The UART has byte registers; a wider access touches the low one
	 * and reads the rest as zero. */
	if (is_write) {
		kv_serial_write(vm->serial, offset, data[0]);
		return;
	}
	memset(data, 0, (size_t)size);
	data[0] = kv_serial_read(vm->serial, offset);
}

static void unhandled(struct kv_vm *vm, uint16_t port, bool is_write, int size,
		      uint8_t *data)
{
	uint64_t n = __atomic_add_fetch(&vm->unhandled_io, 1, __ATOMIC_RELAXED);

	if (!is_write)
		memset(data, 0xff, (size_t)size);
	if (n <= UNHANDLED_LOG_FIRST || n % UNHANDLED_LOG_EVERY == 0)
		kv_debug("pio",
			 "unhandled %s of %d bytes at port 0x%x (%llu so far)",
			 is_write ? "write" : "read", size, port,
			 (unsigned long long)n);
}

int kv_pio_access(struct kv_vm *vm, uint16_t port, bool is_write, int size,
		  uint8_t *data)
{
	if (port >= KV_SERIAL_COM1_BASE && port < KV_SERIAL_COM1_BASE + 8) {
		serial_access(vm, port, is_write, size, data);
		return 0;
	}
	if (kv_pio_is_poweroff(port, is_write, size, data))
		return 1;
	if (port == KV_PIO_POST) {
		if (!is_write)
			memset(data, 0xff, (size_t)size);
		return 0;
	}
	unhandled(vm, port, is_write, size, data);
	return 0;
}
