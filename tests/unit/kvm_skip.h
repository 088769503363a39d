/* SPDX-License-Identifier: MIT */
/* Running a cmocka group on a machine without /dev/kvm (test helper). */
#ifndef KV_TESTS_KVM_SKIP_H
#define KV_TESTS_KVM_SKIP_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* Print TAP for tests[0..n): "ok N - name # SKIP no /dev/kvm: why" where
 * needs_kvm[i], each other test run alone in a child. Returns the number
 * of failures. */
int run_without_kvm(const struct CMUnitTest *tests, const bool *needs_kvm,
		    size_t n, const char *why);

#endif
