/* SPDX-License-Identifier: MIT */
/* Sizes every part of kvmig agrees on: one definition each. */
#ifndef KV_BASE_UNITS_H
#define KV_BASE_UNITS_H

/* The target page: what the stream's offsets, bitmaps and records count
 * (x86's 4 KiB, QEMU's TARGET_PAGE_SIZE for it). */
#define KV_PAGE_SHIFT 12
#define KV_PAGE_SIZE (1U << KV_PAGE_SHIFT)

#define KV_KiB (1024ULL)
#define KV_MiB (1024ULL * 1024)
#define KV_GiB (1024ULL * 1024 * 1024)

/* For printing sizes: bytes / KV_MiB_F. */
#define KV_MiB_F (1024.0 * 1024.0)

#endif
