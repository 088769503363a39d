/* SPDX-License-Identifier: MIT */
/*
 * The VM on real KVM, with hand-assembled 32-bit guests booted through the
 * multiboot loader: serial output and power-off, pause and resume of a
 * spinning guest, a triple fault reported with registers. Every test skips
 * when /dev/kvm cannot be opened.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/clock.h"
#include "base/units.h"
#include "test_vmm_elf.h"
#include "vmm/kvm_dirty.h"
#include "vmm/vm.h"

#define COUNTER_GPA 0x200000U

/* cmp eax, 0x2BADB002; jne bad; print the multiboot command line on COM1;
 * bad: print '!'; then power off (outw 0x2000 -> 0x604) and halt. */
static const uint8_t print_cmdline_code[] = {
    0x3d, 0x02, 0xb0, 0xad, 0x2b, /* cmp eax, 0x2badb002 */
    0x75, 0x12,			  /* jne bad */
    0x8b, 0x73, 0x10,		  /* mov esi, [ebx + 16] */
    0x66, 0xba, 0xf8, 0x03,	  /* mov dx, 0x3f8 */
    0xac,			  /* next: lodsb */
    0x84, 0xc0,			  /* test al, al */
    0x74, 0x03,			  /* jz done */
    0xee,			  /* out dx, al */
    0xeb, 0xf8,			  /* jmp next */
    0xeb, 0x07,			  /* done: jmp off */
    0x66, 0xba, 0xf8, 0x03,	  /* bad: mov dx, 0x3f8 */
    0xb0, 0x21,			  /* mov al, '!' */
    0xee,			  /* out dx, al */
    0x66, 0xba, 0x04, 0x06,	  /* off: mov dx, 0x604 */
    0x66, 0xb8, 0x00, 0x20,	  /* mov ax, 0x2000 */
    0x66, 0xef,			  /* out dx, ax */
    0xf4,			  /* hlt */
    0xeb, 0xfd,			  /* jmp hlt */
};

/* Print 'S', then count forever in guest memory at COUNTER_GPA. */
static const uint8_t spin_code[] = {
    0x66, 0xba, 0xf8, 0x03,		/* mov dx, 0x3f8 */
    0xb0, 0x53,				/* mov al, 'S' */
    0xee,				/* out dx, al */
    0xff, 0x05, 0x00, 0x00, 0x20, 0x00, /* loop: inc dword [0x200000] */
    0xeb, 0xf8,				/* jmp loop */
};

/* ud2 with no usable IDT: #UD -> #GP/#DF -> triple fault. */
static const uint8_t crash_code[] = {0x0f, 0x0b};

struct guest {
	char dir[64];
	char kernel[96];
	char console[96];
	char console_spec[104];
	struct kv_vm *vm;
};

static bool kvm_available(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return false;
	close(fd);
	return true;
}

#define SKIP_WITHOUT_KVM()                                                     \
	do {                                                                   \
		if (!kvm_available()) {                                        \
			print_message("# no /dev/kvm: skipped\n");             \
			skip();                                                \
		}                                                              \
	} while (0)

static void make_guest(struct guest *g, const uint8_t *code, size_t n)
{
	size_t len;
	uint8_t *img = test_mb_elf(code, n, 0x3, &len);
	int fd;

	snprintf(g->dir, sizeof(g->dir), "/tmp/kvmig-test-vmm-XXXXXX");
	assert_non_null(mkdtemp(g->dir));
	snprintf(g->kernel, sizeof(g->kernel), "%s/k.elf", g->dir);
	snprintf(g->console, sizeof(g->console), "%s/console", g->dir);
	snprintf(g->console_spec, sizeof(g->console_spec), "file:%s",
		 g->console);
	fd = open(g->kernel, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, img, len), (ssize_t)len);
	close(fd);
	free(img);
}

static void boot_guest_mode(struct guest *g, int ncpus, const char *cmdline,
			    enum kv_dirty_mode mode)
{
	struct kv_vm_config cfg = {
	    .mem_size = 16 * KV_MiB,
	    .ncpus = ncpus,
	    .kernel = g->kernel,
	    .cmdline = cmdline,
	    .console = g->console_spec,
	    .dirty_mode = mode,
	    .dirty_ring_entries = 4096,
	};
	struct kv_error err = {0};

	if (kv_vm_create(&cfg, &g->vm, &err))
		fail_msg("kv_vm_create: %s", err.msg);
	if (kv_vm_boot_kernel(g->vm, &err))
		fail_msg("kv_vm_boot_kernel: %s", err.msg);
	if (kv_vm_start(g->vm, &err))
		fail_msg("kv_vm_start: %s", err.msg);
}

static void boot_guest(struct guest *g, int ncpus, const char *cmdline)
{
	boot_guest_mode(g, ncpus, cmdline, KV_DIRTY_LOG);
}

static size_t read_console(struct guest *g, char *buf, size_t size)
{
	int fd = open(g->console, O_RDONLY);
	ssize_t n;

	assert_true(fd >= 0);
	n = read(fd, buf, size - 1);
	close(fd);
	assert_true(n >= 0);
	buf[n] = 0;
	return (size_t)n;
}

static void cleanup_guest(struct guest *g)
{
	kv_vm_destroy(g->vm);
	g->vm = NULL;
	unlink(g->kernel);
	unlink(g->console);
	rmdir(g->dir);
}

static void test_boot_print_poweroff(void **state)
{
	struct guest g = {0};
	struct kv_error err = {0};
	char out[128];

	SKIP_WITHOUT_KVM();
	/* Both dirty-tracking set-ups (capabilities enabled at creation). */
	for (int mode = KV_DIRTY_LOG; mode <= KV_DIRTY_RING; mode++) {
		make_guest(&g, print_cmdline_code, sizeof(print_cmdline_code));
		boot_guest_mode(&g, 2, "hello from the guest", mode);
		assert_int_equal(kv_vm_wait(g.vm, &err), 0);
		read_console(&g, out, sizeof(out));
		assert_string_equal(out, "hello from the guest");
		cleanup_guest(&g);
	}
}

static uint32_t guest_counter(struct kv_vm *vm)
{
	return __atomic_load_n(
	    (uint32_t *)((uint8_t *)kv_vm_ram(vm) + COUNTER_GPA),
	    __ATOMIC_RELAXED);
}

static void wait_counter_moves(struct kv_vm *vm)
{
	uint32_t c0 = guest_counter(vm);

	for (int i = 0; i < 10000 && guest_counter(vm) == c0; i++)
		usleep(1000);
	assert_int_not_equal(guest_counter(vm), c0);
}

static void test_pause_resume_spinning_guest(void **state)
{
	struct guest g = {0};
	struct kv_error err = {0};
	struct kvm_regs regs;
	uint32_t c_paused;
	char out[16];

	SKIP_WITHOUT_KVM();
	make_guest(&g, spin_code, sizeof(spin_code));
	boot_guest(&g, 2, ""); /* the AP waits for SIPI in the kernel */
	wait_counter_moves(g.vm);
	assert_true(kv_vm_running(g.vm));

	for (int round = 0; round < 3; round++) {
		int64_t t0 = kv_now_ns();

		assert_int_equal(kv_vm_pause(g.vm, &err), 0);
		/* Generous: a busy 2-core machine. */
		assert_true(kv_now_ns() - t0 < 3000000000LL);
		assert_true(kv_vm_last_pause_ns(g.vm) > 0);
		assert_false(kv_vm_running(g.vm));
		print_message("# pause %d took %.3f ms\n", round,
			      (double)kv_vm_last_pause_ns(g.vm) / 1e6);
		c_paused = guest_counter(g.vm);
		usleep(20000);
		assert_int_equal(guest_counter(g.vm), c_paused);
		/* Stopped vCPUs answer state ioctls: RIP is in the loop. */
		assert_int_equal(
		    ioctl(kv_vm_vcpu_fd(g.vm, 0), KVM_GET_REGS, &regs), 0);
		assert_true(regs.rip >= TEST_MB_BASE + TEST_MB_CODE_OFF + 7 &&
			    regs.rip < TEST_MB_BASE + TEST_MB_CODE_OFF +
					   sizeof(spin_code));
		/* Pausing twice is harmless. */
		assert_int_equal(kv_vm_pause(g.vm, &err), 0);
		assert_int_equal(kv_vm_start(g.vm, &err), 0); /* = resume */
		assert_true(kv_vm_running(g.vm));
		wait_counter_moves(g.vm);
	}
	read_console(&g, out, sizeof(out));
	assert_string_equal(out, "S");
	kv_vm_request_exit(g.vm, 7);
	assert_int_equal(kv_vm_wait(g.vm, &err), 7);
	cleanup_guest(&g);
}

static void test_triple_fault_reported(void **state)
{
	struct guest g = {0};
	struct kv_error err = {0};

	SKIP_WITHOUT_KVM();
	make_guest(&g, crash_code, sizeof(crash_code));
	boot_guest(&g, 1, "");
	assert_true(kv_vm_wait(g.vm, &err) < 0);
	print_message("# reported: %s\n", err.msg);
	assert_non_null(strstr(err.msg, "vCPU 0"));
	assert_non_null(strstr(err.msg, "rip="));
	cleanup_guest(&g);
}

static void test_vm_accessors_and_slots(void **state)
{
	struct kv_vm_config cfg = {
	    .mem_size = 8 * KV_MiB,
	    .ncpus = 3,
	    .console = "none",
	    .dirty_mode = KV_DIRTY_LOG,
	};
	struct kv_error err = {0};
	const struct kv_kvm_slot *slots;
	struct kv_vm *vm;
	int n;

	SKIP_WITHOUT_KVM();
	assert_int_equal(kv_vm_create(&cfg, &vm, &err), 0);
	assert_int_equal(kv_vm_ncpus(vm), 3);
	assert_true(kv_vm_fd(vm) >= 0);
	assert_true(kv_vm_kvm_fd(vm) >= 0);
	for (int i = 0; i < 3; i++)
		assert_true(kv_vm_vcpu_fd(vm, i) >= 0);
	assert_int_equal(kv_vm_vcpu_fd(vm, 3), -1);
	assert_int_equal(kv_vm_ram_size(vm), 8 * KV_MiB);
	slots = kv_vm_slots(vm, &n);
	assert_int_equal(n, 1);
	assert_ptr_equal(slots[0].host, kv_vm_ram(vm));
	assert_int_equal(slots[0].size, 8 * KV_MiB);
	assert_non_null(kv_vm_serial(vm));
	/* No kernel configured: boot refuses; pause before start is a
	 * no-op. */
	assert_int_equal(kv_vm_boot_kernel(vm, &err), -EINVAL);
	assert_int_equal(kv_vm_pause(vm, &err), 0);
	assert_false(kv_vm_running(vm));
	kv_vm_destroy(vm);

	/* Bad configurations fail with a message. */
	cfg.ncpus = 0;
	kv_error_clear(&err);
	assert_int_equal(kv_vm_create(&cfg, &vm, &err), -EINVAL);
	assert_null(vm);
	cfg.ncpus = 1;
	cfg.mem_size = 3 * KV_MiB;
	kv_error_clear(&err);
	assert_int_equal(kv_vm_create(&cfg, &vm, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "2 MiB"));
}

struct mark_log {
	uint64_t bytes;
	int calls;
};

static void count_marks(void *opaque, uint64_t off, uint64_t len)
{
	struct mark_log *m = opaque;

	m->bytes += len;
	m->calls++;
}

/* Everything the loader writes reaches the dirty hook. */
static void test_boot_writes_are_marked_dirty(void **state)
{
	struct guest g = {0};
	struct kv_error err = {0};
	struct mark_log log = {0};
	struct kv_vm_dirty_hooks hooks = {.mark = count_marks, .opaque = &log};
	struct kv_vm_config cfg = {
	    .mem_size = 16 * KV_MiB,
	    .ncpus = 1,
	    .cmdline = "x",
	    .console = "none",
	    .dirty_mode = KV_DIRTY_LOG,
	};

	SKIP_WITHOUT_KVM();
	make_guest(&g, spin_code, sizeof(spin_code));
	cfg.kernel = g.kernel;
	assert_int_equal(kv_vm_create(&cfg, &g.vm, &err), 0);
	kv_vm_set_dirty_hooks(g.vm, &hooks);
	assert_int_equal(kv_vm_boot_kernel(g.vm, &err), 0);
	assert_true(log.calls >= 3); /* kernel, info, MP table */
	assert_true(log.bytes >= TEST_MB_CODE_OFF + sizeof(spin_code));
	kv_vm_set_dirty_hooks(g.vm, NULL);
	cleanup_guest(&g);
}

static void test_bad_kernel_rejected(void **state)
{
	struct guest g = {0};
	struct kv_error err = {0};
	struct kv_vm_config cfg = {
	    .mem_size = 16 * KV_MiB,
	    .ncpus = 1,
	    .console = "none",
	    .dirty_mode = KV_DIRTY_LOG,
	};
	int fd;

	SKIP_WITHOUT_KVM();
	make_guest(&g, spin_code, sizeof(spin_code));
	fd = open(g.kernel, O_WRONLY | O_TRUNC);
	assert_int_equal(write(fd, "#!/bin/sh\necho not a kernel\n", 28), 28);
	close(fd);
	cfg.kernel = g.kernel;
	assert_int_equal(kv_vm_create(&cfg, &g.vm, &err), 0);
	assert_int_equal(kv_vm_boot_kernel(g.vm, &err), -ENOEXEC);
	assert_non_null(strstr(err.msg, g.kernel));
	assert_non_null(strstr(err.msg, "not a multiboot kernel"));
	cleanup_guest(&g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_boot_print_poweroff),
	    cmocka_unit_test(test_pause_resume_spinning_guest),
	    cmocka_unit_test(test_triple_fault_reported),
	    cmocka_unit_test(test_vm_accessors_and_slots),
	    cmocka_unit_test(test_boot_writes_are_marked_dirty),
	    cmocka_unit_test(test_bad_kernel_rejected),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
