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

/* The group as cmocka runs it when /dev/kvm is usable, else
 * run_without_kvm() with the reason. */
int run_tests_kvm_optional(const char *group, const struct CMUnitTest *tests,
			   const bool *needs_kvm, size_t n);

/* One needs_kvm flag per test, checked at compile time. */
#define RUN_TESTS_KVM_OPTIONAL(tests, needs_kvm)                               \
	({                                                                     \
		_Static_assert(sizeof(needs_kvm) / sizeof((needs_kvm)[0]) ==   \
				   sizeof(tests) / sizeof((tests)[0]),         \
			       "one needs_kvm flag per test");                 \
		run_tests_kvm_optional(#tests, tests, needs_kvm,               \
				       sizeof(tests) / sizeof((tests)[0]));    \
	})

#endif
