/* SPDX-License-Identifier: MIT */
#include "kvm_skip.h"

#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

/* Without /dev/kvm, cmocka's skip() reports "not ok # SKIP", which TAP
 * consumers count as a failure: write the TAP here instead, with
 * "ok N - name # SKIP no /dev/kvm" for the KVM cases, and run the others
 * one by one in a child whose own cmocka output is discarded. */
int run_without_kvm(const struct CMUnitTest *tests, const bool *needs_kvm,
		    size_t n, const char *why)
{
	int failed = 0;

	printf("1..%zu\n", n);
	for (size_t i = 0; i < n; i++) {
		int status = 1;
		pid_t pid;

		if (needs_kvm[i]) {
			printf("ok %zu - %s # SKIP no /dev/kvm: %s\n", i + 1,
			       tests[i].name, why);
			continue;
		}
		fflush(stdout);
		pid = fork();
		if (pid == 0) {
			int fd = open("/dev/null", O_WRONLY);

			if (fd >= 0)
				dup2(fd, STDOUT_FILENO);
			else
				close(STDOUT_FILENO);
			_exit(_cmocka_run_group_tests(tests[i].name, &tests[i],
						      1, NULL, NULL)
				  ? 1
				  : 0);
		}
		if (pid > 0)
			waitpid(pid, &status, 0);
		failed += status != 0;
		printf("%s %zu - %s\n", status ? "not ok" : "ok", i + 1,
		       tests[i].name);
	}
	return failed;
}

int run_tests_kvm_optional(const char *group, const struct CMUnitTest *tests,
			   const bool *needs_kvm, size_t n)
{
	if (access("/dev/kvm", R_OK | W_OK) != 0)
		return run_without_kvm(tests, needs_kvm, n, strerror(errno));
	return _cmocka_run_group_tests(group, tests, n, NULL, NULL);
}
