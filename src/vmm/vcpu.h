/* SPDX-License-Identifier: MIT */
/*
 * vCPUs: one thread per vCPU looping on KVM_RUN and handling its exits.
 *
 * Pause protocol: kv_vm_pause() sets pause_req, writes immediate_exit = 1
 * into every kvm_run and sends SIGUSR1 (empty handler, no SA_RESTART) to
 * every vCPU thread. A thread parks only after KVM_RUN returned EINTR, so
 * the kernel has completed any port or MMIO access it was in the middle of
 * and the vCPU state is consistent; the last thread to park wakes the
 * pauser. Resume clears immediate_exit and releases them.
 *
 * APs start in KVM_MP_STATE_UNINITIALIZED; their KVM_RUN blocks in the
 * kernel until the BSP sends INIT/SIPI through the in-kernel LAPIC.
 */
#ifndef KV_VMM_VCPU_H
#define KV_VMM_VCPU_H

#include <linux/kvm.h>
#include <stddef.h>

/* Format the registers of a vCPU into buf ("rip=... rsp=... cr0=..."). */
void kv_vcpu_format_regs(int vcpu_fd, char *buf, size_t len);

#endif
