/* SPDX-License-Identifier: MIT */
/* Unit tests of the multifd codecs (src/migration/multifd_codec.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "migration/multifd_codec.h"

static void test_names(void **state)
{
	enum kv_mfd_method m;

	(void)state;
	assert_int_equal(kv_mfd_method_parse("zstd", &m, NULL), 0);
	assert_int_equal(m, KV_MFD_METHOD_ZSTD);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
