/* SPDX-License-Identifier: MIT */
/* iovec bookkeeping shared by the channels and the stream (internal). */
#ifndef KV_IO_IOV_H
#define KV_IO_IOV_H

#include <stddef.h>
#include <sys/uio.h>

/* Consume n bytes from the front of (*iov, *cnt) after a short write:
 * drop the entries fully written and trim the first one partly written. */
static inline void kv_iov_advance(struct iovec **iov, int *cnt, size_t n)
{
	while (n > 0 && *cnt > 0) {
		size_t step = n < (*iov)->iov_len ? n : (*iov)->iov_len;

		(*iov)->iov_base = (char *)(*iov)->iov_base + step;
		(*iov)->iov_len -= step;
		n -= step;
		if ((*iov)->iov_len == 0) {
			(*iov)++;
			(*cnt)--;
		}
	}
}

#endif
