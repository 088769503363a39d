/* SPDX-License-Identifier: MIT */
/*
 * KVM-held VM state as plain structs with field descriptors.
 *
 * Choices (see also kvm_state.h):
 *  - Special registers go through KVM_GET/SET_SREGS, not SREGS2: SREGS2 only
 *    adds the PAE PDPTRs (meaningful in 32-bit PAE paging, which our guest
 *    passes through at boot but never runs in) and drops the pending
 *    interrupt bitmap, which we want on the wire as QEMU has it.
 *  - FPU and extended state through KVM_GET_XSAVE2 when KVM_CAP_XSAVE2
 *    exists, else KVM_GET_XSAVE. The wire carries a fixed 4096-byte area;
 *    a host whose XSAVE2 size is larger is rejected at probe time with a
 *    message naming the size (we would lose AMX-like state otherwise).
 *  - kvmclock goes on in host real time across the downtime: the
 *    destination sets it to the saved value plus the host time elapsed
 *    since the save (KVM_SET_CLOCK with KVM_CLOCK_REALTIME when the source's
 *    KVM_GET_CLOCK offered a realtime stamp, else our own CLOCK_REALTIME
 *    stamp taken next to KVM_GET_CLOCK). Why not freeze it at the saved
 *    value: on this platform (PVM) the guest reads the host's TSC directly
 *    and KVM silently ignores writes to the TSC MSR (measured), so the
 *    guest's TSC keeps running during the downtime; a frozen kvmclock
 *    would then fall behind the TSC by every downtime. Advancing both keeps
 *    the two clocks consistent with each other. The TSC MSR is still
 *    restored: where KVM can offset the TSC, the guest TSC continues from
 *    the saved value.
 */
#include "vmm/kvm_state.h"

#include <errno.h>
#include <linux/kvm.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

#define MSR_IA32_TSC	      0x10U
#define MSR_IA32_TSC_DEADLINE 0x6e0U
#define IOAPIC_DEFAULT_BASE   0xfec00000ULL
#define LAPIC_TMCCT_OFFSET    0x390U

/* On-the-wire shapes of KVM's variable-length arrays. */
struct kv_xcr_entry {
	uint32_t xcr;
	uint64_t value;
};

struct kv_msr_value {
	uint32_t index;
	uint64_t data;
};

struct kv_vcpu_state {
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	uint8_t xsave_area[KV_XSAVE_BYTES];
	uint32_t nr_xcrs;
	struct kv_xcr_entry xcrs[KVM_MAX_XCRS];
	uint32_t nmsrs;
	struct kv_msr_value msrs[KV_MAX_SAVED_MSRS];
	uint8_t lapic_regs[KV_LAPIC_BYTES];
	struct kvm_debugregs debugregs;
	uint32_t mp_state;
	struct kvm_vcpu_events events;
	/* Not on the wire: what the loader accepts as MSR indices. */
	const struct kv_msr_list *known_msrs;
};

struct kv_msr_list {
	uint32_t n;
	uint32_t index[KV_MAX_SAVED_MSRS];
	bool has_xsave2;
};

struct kv_vm_state {
	struct kvm_pic_state pic_master;
	struct kvm_pic_state pic_slave;
	struct kvm_ioapic_state ioapic;
	struct kvm_pit_state2 pit;
	struct kvm_clock_data clock;
};

/* ---- allocation ---- */

struct kv_vcpu_state *kv_vcpu_state_new(void)
{
	return calloc(1, sizeof(struct kv_vcpu_state));
}

void kv_vcpu_state_free(struct kv_vcpu_state *st)
{
	free(st);
}

void kv_vcpu_state_bind_msrs(struct kv_vcpu_state *st,
			     const struct kv_msr_list *msrs)
{
	st->known_msrs = msrs;
}

struct kv_vm_state *kv_vm_state_new(void)
{
	return calloc(1, sizeof(struct kv_vm_state));
}

void kv_vm_state_free(struct kv_vm_state *st)
{
	free(st);
}

/* ---- MSR list ---- */

static bool msr_readable(int vcpu_fd, uint32_t index)
{
	struct {
		struct kvm_msrs hdr;
		struct kvm_msr_entry e;
	} one = {.hdr.nmsrs = 1, .e.index = index};

	return ioctl(vcpu_fd, KVM_GET_MSRS, &one) == 1;
}

static int fetch_msr_index_list(int kvm_fd, struct kvm_msr_list **out,
				struct kv_error *err)
{
	struct kvm_msr_list probe = {.nmsrs = 0};
	struct kvm_msr_list *l;

	if (ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe) < 0 && errno != E2BIG)
		return kv_error_set_errno(err, -errno,
					  "KVM_GET_MSR_INDEX_LIST (size)");
	l = calloc(1, sizeof(*l) + probe.nmsrs * sizeof(uint32_t));
	if (!l)
		return kv_error_set(err, -ENOMEM, "MSR index list: no memory");
	l->nmsrs = probe.nmsrs;
	if (ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, l) < 0) {
		int ret = -errno;

		free(l);
		return kv_error_set_errno(err, ret, "KVM_GET_MSR_INDEX_LIST");
	}
	*out = l;
	return 0;
}

static int probe_xsave(int kvm_fd, struct kv_msr_list *ml, struct kv_error *err)
{
	int size;

	if (ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE) <= 0)
		return kv_error_set(err, -ENOTSUP,
				    "KVM lacks KVM_CAP_XSAVE: cannot save the vCPU's FPU state");
	size = ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
	if (size > KV_XSAVE_BYTES)
		return kv_error_set(err, -ENOTSUP,
				    "this host's XSAVE area is %d bytes, the migration format carries %d: refusing to drop extended CPU state",
				    size, KV_XSAVE_BYTES);
	ml->has_xsave2 = size > 0;
	return 0;
}

struct kv_msr_list *kv_msr_list_probe(int kvm_fd, int vcpu_fd,
				      struct kv_error *err)
{
	struct kvm_msr_list *all = NULL;
	struct kv_msr_list *ml = calloc(1, sizeof(*ml));
	bool has_tsc = false;

	if (!ml) {
		kv_error_set(err, -ENOMEM, "MSR list: no memory");
		return NULL;
	}
	if (probe_xsave(kvm_fd, ml, err) < 0 ||
	    fetch_msr_index_list(kvm_fd, &all, err) < 0)
		goto fail;
	for (uint32_t i = 0; i < all->nmsrs; i++) {
		if (!msr_readable(vcpu_fd, all->indices[i]))
			continue;
		if (ml->n == KV_MAX_SAVED_MSRS) {
			kv_error_set(err, -E2BIG,
				     "KVM lists more than %d saveable MSRs (raise KV_MAX_SAVED_MSRS)",
				     KV_MAX_SAVED_MSRS);
			goto fail;
		}
		has_tsc |= all->indices[i] == MSR_IA32_TSC;
		ml->index[ml->n++] = all->indices[i];
	}
	if (!has_tsc) {
		kv_error_set(err, -ENOTSUP,
			     "KVM does not list the TSC MSR (0x10) as saveable: the guest clock could not migrate");
		goto fail;
	}
	free(all);
	return ml;
fail:
	free(all);
	free(ml);
	return NULL;
}

void kv_msr_list_free(struct kv_msr_list *l)
{
	free(l);
}

uint32_t kv_msr_list_count(const struct kv_msr_list *l)
{
	return l->n;
}

uint32_t kv_msr_list_index(const struct kv_msr_list *l, uint32_t i)
{
	return i < l->n ? l->index[i] : 0;
}

static bool msr_known(const struct kv_msr_list *l, uint32_t index)
{
	for (uint32_t i = 0; i < l->n; i++)
		if (l->index[i] == index)
			return true;
	return false;
}

/* ---- per-vCPU get ---- */

static int vcpu_ioctl(int fd, unsigned long req, void *arg, const char *what,
		      struct kv_error *err)
{
	if (ioctl(fd, req, arg) < 0)
		return kv_error_set_errno(err, -errno, "%s", what);
	return 0;
}

static int get_xsave(int vcpu_fd, const struct kv_msr_list *ml,
		     struct kv_vcpu_state *st, struct kv_error *err)
{
	struct kvm_xsave *x = calloc(1, KV_XSAVE_BYTES);
	int ret;

	if (!x)
		return kv_error_set(err, -ENOMEM, "XSAVE buffer: no memory");
	if (ml->has_xsave2)
		ret = vcpu_ioctl(vcpu_fd, KVM_GET_XSAVE2, x, "KVM_GET_XSAVE2",
				 err);
	else
		ret =
		    vcpu_ioctl(vcpu_fd, KVM_GET_XSAVE, x, "KVM_GET_XSAVE", err);
	if (!ret)
		memcpy(st->xsave_area, x, KV_XSAVE_BYTES);
	free(x);
	return ret;
}

static int get_xcrs(int vcpu_fd, struct kv_vcpu_state *st, struct kv_error *err)
{
	struct kvm_xcrs x;
	int ret;

	memset(&x, 0, sizeof(x));
	ret = vcpu_ioctl(vcpu_fd, KVM_GET_XCRS, &x, "KVM_GET_XCRS", err);
	if (ret)
		return ret;
	if (x.nr_xcrs > KVM_MAX_XCRS)
		return kv_error_set(err, -EIO, "KVM_GET_XCRS returned %u XCRs",
				    x.nr_xcrs);
	st->nr_xcrs = x.nr_xcrs;
	memset(st->xcrs, 0, sizeof(st->xcrs));
	for (uint32_t i = 0; i < x.nr_xcrs; i++) {
		st->xcrs[i].xcr = x.xcrs[i].xcr;
		st->xcrs[i].value = x.xcrs[i].value;
	}
	return 0;
}

static struct kvm_msrs *msr_buffer(uint32_t n)
{
	return calloc(1, sizeof(struct kvm_msrs) +
			     n * sizeof(struct kvm_msr_entry));
}

static int get_msrs(int vcpu_fd, const struct kv_msr_list *ml,
		    struct kv_vcpu_state *st, struct kv_error *err)
{
	struct kvm_msrs *m = msr_buffer(ml->n);
	int got;

	if (!m)
		return kv_error_set(err, -ENOMEM, "MSR buffer: no memory");
	m->nmsrs = ml->n;
	for (uint32_t i = 0; i < ml->n; i++)
		m->entries[i].index = ml->index[i];
	got = ioctl(vcpu_fd, KVM_GET_MSRS, m);
	if (got < 0) {
		got = -errno;
		free(m);
		return kv_error_set_errno(err, got, "KVM_GET_MSRS");
	}
	if ((uint32_t)got != ml->n) {
		uint32_t bad = m->entries[got].index;

		free(m);
		return kv_error_set(err, -EIO,
				    "KVM_GET_MSRS stopped at MSR %#x (%d of %u read)",
				    bad, got, ml->n);
	}
	memset(st->msrs, 0, sizeof(st->msrs));
	st->nmsrs = ml->n;
	for (uint32_t i = 0; i < ml->n; i++) {
		st->msrs[i].index = m->entries[i].index;
		st->msrs[i].data = m->entries[i].data;
	}
	free(m);
	return 0;
}

int kv_vcpu_state_get(int vcpu_fd, const struct kv_msr_list *msrs,
		      struct kv_vcpu_state *st, struct kv_error *err)
{
	struct kvm_lapic_state lapic;
	struct kvm_mp_state mp;
	int ret;

	st->known_msrs = msrs;
	ret = vcpu_ioctl(vcpu_fd, KVM_GET_SREGS, &st->sregs, "KVM_GET_SREGS",
			 err);
	ret = ret
		  ?: vcpu_ioctl(vcpu_fd, KVM_GET_REGS, &st->regs,
				"KVM_GET_REGS", err);
	ret = ret ?: get_xsave(vcpu_fd, msrs, st, err);
	ret = ret ?: get_xcrs(vcpu_fd, st, err);
	ret = ret ?: get_msrs(vcpu_fd, msrs, st, err);
	ret = ret
		  ?: vcpu_ioctl(vcpu_fd, KVM_GET_LAPIC, &lapic, "KVM_GET_LAPIC",
				err);
	if (!ret)
		memcpy(st->lapic_regs, lapic.regs, KV_LAPIC_BYTES);
	ret = ret
		  ?: vcpu_ioctl(vcpu_fd, KVM_GET_DEBUGREGS, &st->debugregs,
				"KVM_GET_DEBUGREGS", err);
	ret = ret
		  ?: vcpu_ioctl(vcpu_fd, KVM_GET_MP_STATE, &mp,
				"KVM_GET_MP_STATE", err);
	if (!ret)
		st->mp_state = mp.mp_state;
	ret = ret
		  ?: vcpu_ioctl(vcpu_fd, KVM_GET_VCPU_EVENTS, &st->events,
				"KVM_GET_VCPU_EVENTS", err);
	if (ret)
		kv_error_prefix(err, "reading vCPU state");
	return ret;
}

/* ---- validation of what came from the wire ---- */

#define KNOWN_EVENT_FLAGS                                                      \
	(KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR |   \
	 KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_SMM |                \
	 KVM_VCPUEVENT_VALID_PAYLOAD | KVM_VCPUEVENT_VALID_TRIPLE_FAULT)

static int check_msrs(const struct kv_vcpu_state *st, struct kv_error *err)
{
	if (st->nmsrs > KV_MAX_SAVED_MSRS)
		return kv_error_set(err, -EINVAL,
				    "cpu: %u MSRs in the stream, at most %d allowed",
				    st->nmsrs, KV_MAX_SAVED_MSRS);
	if (!st->known_msrs)
		return kv_error_set(err, -EINVAL,
				    "cpu: no MSR list bound to the vCPU state (kv_vcpu_state_bind_msrs): cannot check the stream's MSRs");
	for (uint32_t i = 0; i < st->nmsrs; i++) {
		uint32_t idx = st->msrs[i].index;

		if (!msr_known(st->known_msrs, idx))
			return kv_error_set(err, -EINVAL,
					    "cpu: MSR %#x (entry %u) is not one this host's KVM can restore",
					    idx, i);
		for (uint32_t j = 0; j < i; j++)
			if (st->msrs[j].index == idx)
				return kv_error_set(err, -EINVAL,
						    "cpu: MSR %#x appears twice (entries %u and %u)",
						    idx, j, i);
	}
	return 0;
}

static int check_vcpu_state(const struct kv_vcpu_state *st,
			    struct kv_error *err)
{
	if (st->nr_xcrs > KVM_MAX_XCRS)
		return kv_error_set(err, -EINVAL,
				    "cpu: %u XCRs in the stream, at most %d allowed",
				    st->nr_xcrs, KVM_MAX_XCRS);
	if (st->mp_state > KVM_MP_STATE_SIPI_RECEIVED)
		return kv_error_set(err, -EINVAL,
				    "cpu: unknown MP state %u in the stream",
				    st->mp_state);
	if (st->events.flags & ~(uint32_t)KNOWN_EVENT_FLAGS)
		return kv_error_set(
		    err, -EINVAL, "cpu: unknown vCPU event flags %#x",
		    st->events.flags & ~(uint32_t)KNOWN_EVENT_FLAGS);
	return check_msrs(st, err);
}

static int cpu_post_load(void *opaque, int version_id, struct kv_error *err)
{
	(void)version_id;
	return check_vcpu_state(opaque, err);
}

/* ---- per-vCPU put ---- */

static int put_xsave(int vcpu_fd, const struct kv_vcpu_state *st,
		     struct kv_error *err)
{
	struct kvm_xsave *x = calloc(1, KV_XSAVE_BYTES);
	int ret;

	if (!x)
		return kv_error_set(err, -ENOMEM, "XSAVE buffer: no memory");
	memcpy(x, st->xsave_area, KV_XSAVE_BYTES);
	ret = vcpu_ioctl(vcpu_fd, KVM_SET_XSAVE, x, "KVM_SET_XSAVE", err);
	free(x);
	return ret;
}

static int put_xcrs(int vcpu_fd, const struct kv_vcpu_state *st,
		    struct kv_error *err)
{
	struct kvm_xcrs x;

	memset(&x, 0, sizeof(x));
	x.nr_xcrs = st->nr_xcrs;
	for (uint32_t i = 0; i < st->nr_xcrs; i++) {
		x.xcrs[i].xcr = st->xcrs[i].xcr;
		x.xcrs[i].value = st->xcrs[i].value;
	}
	return vcpu_ioctl(vcpu_fd, KVM_SET_XCRS, &x, "KVM_SET_XCRS", err);
}

/* Write entries [first, first + n) of st->msrs; only = UINT32_MAX for all,
 * else just the MSR with that index. */
static int put_msrs(int vcpu_fd, const struct kv_vcpu_state *st, uint32_t only,
		    struct kv_error *err)
{
	struct kvm_msrs *m = msr_buffer(st->nmsrs ? st->nmsrs : 1);
	int set;

	if (!m)
		return kv_error_set(err, -ENOMEM, "MSR buffer: no memory");
	for (uint32_t i = 0; i < st->nmsrs; i++) {
		if (only != UINT32_MAX && st->msrs[i].index != only)
			continue;
		m->entries[m->nmsrs].index = st->msrs[i].index;
		m->entries[m->nmsrs].data = st->msrs[i].data;
		m->nmsrs++;
	}
	if (!m->nmsrs) {
		free(m);
		return 0;
	}
	set = ioctl(vcpu_fd, KVM_SET_MSRS, m);
	if (set < 0) {
		set = -errno;
		free(m);
		return kv_error_set_errno(err, set, "KVM_SET_MSRS");
	}
	if ((uint32_t)set != m->nmsrs) {
		uint32_t bad = m->entries[set].index;
		uint64_t val = m->entries[set].data;

		free(m);
		return kv_error_set(err, -EINVAL,
				    "KVM_SET_MSRS refused MSR %#x = %#llx", bad,
				    (unsigned long long)val);
	}
	free(m);
	return 0;
}

static int put_lapic(int vcpu_fd, const struct kv_vcpu_state *st,
		     struct kv_error *err)
{
	struct kvm_lapic_state lapic;

	memcpy(lapic.regs, st->lapic_regs, KV_LAPIC_BYTES);
	return vcpu_ioctl(vcpu_fd, KVM_SET_LAPIC, &lapic, "KVM_SET_LAPIC", err);
}

static int put_events(int vcpu_fd, const struct kv_vcpu_state *st,
		      struct kv_error *err)
{
	struct kvm_vcpu_events ev = st->events;

	/* NMI_PENDING and SIPI_VECTOR are set-only flags: KVM_GET never
	 * reports them, but the values we carry are complete. */
	ev.flags |=
	    KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
	return vcpu_ioctl(vcpu_fd, KVM_SET_VCPU_EVENTS, &ev,
			  "KVM_SET_VCPU_EVENTS", err);
}

/*
 * The order follows what KVM's state setters depend on:
 *  - sregs first: CR0/CR4/EFER decide how everything else is interpreted
 *    (KVM checks XSAVE/XCR0 against CR4.OSXSAVE, some MSR writes against
 *    EFER and CR4), and APIC base switches the LAPIC's mode (xAPIC/x2APIC).
 *  - regs, xsave, xcrs: plain register files, now valid for the mode.
 *  - msrs before lapic: the TSC is restored first so that the LAPIC timer
 *    restarted by KVM_SET_LAPIC counts against the guest's TSC; the TSC
 *    deadline MSR is written again after the LAPIC, because KVM ignores it
 *    while the LAPIC is not (yet) in TSC-deadline mode.
 *  - debugregs: DR7 may arm breakpoints that refer to the state above.
 *  - mp_state, then events last: setting the MP state may reset pending
 *    INIT/SIPI handling, and the pending exception/interrupt/NMI in the
 *    events must survive that, so they are written once everything else is
 *    in place (as the KVM API documentation and QEMU do).
 */
int kv_vcpu_state_put(int vcpu_fd, const struct kv_vcpu_state *st,
		      struct kv_error *err)
{
	struct kvm_mp_state mp = {.mp_state = st->mp_state};
	int ret;

	ret = check_vcpu_state(st, err);
	ret = ret
		  ?: vcpu_ioctl(vcpu_fd, KVM_SET_SREGS, (void *)&st->sregs,
				"KVM_SET_SREGS", err);
	ret = ret
		  ?: vcpu_ioctl(vcpu_fd, KVM_SET_REGS, (void *)&st->regs,
				"KVM_SET_REGS", err);
	ret = ret ?: put_xsave(vcpu_fd, st, err);
	ret = ret ?: put_xcrs(vcpu_fd, st, err);
	ret = ret ?: put_msrs(vcpu_fd, st, UINT32_MAX, err);
	ret = ret ?: put_lapic(vcpu_fd, st, err);
	ret = ret ?: put_msrs(vcpu_fd, st, MSR_IA32_TSC_DEADLINE, err);
	ret =
	    ret
		?: vcpu_ioctl(vcpu_fd, KVM_SET_DEBUGREGS,
			      (void *)&st->debugregs, "KVM_SET_DEBUGREGS", err);
	ret = ret
		  ?: vcpu_ioctl(vcpu_fd, KVM_SET_MP_STATE, &mp,
				"KVM_SET_MP_STATE", err);
	ret = ret ?: put_events(vcpu_fd, st, err);
	if (ret)
		kv_error_prefix(err, "writing vCPU state");
	return ret;
}

/* ---- descriptors: section "cpu" ---- */

#define U64(st, m) KV_VMS_FIELD(st, m, KV_VMS_U64, 1)
#define U32(st, m) KV_VMS_FIELD(st, m, KV_VMS_U32, 1)
#define U16(st, m) KV_VMS_FIELD(st, m, KV_VMS_U16, 1)
#define U8(st, m)  KV_VMS_FIELD(st, m, KV_VMS_U8, 1)

static const struct kv_vmstate_field regs_fields[] = {
    U64(struct kvm_regs, rax),
    U64(struct kvm_regs, rbx),
    U64(struct kvm_regs, rcx),
    U64(struct kvm_regs, rdx),
    U64(struct kvm_regs, rsi),
    U64(struct kvm_regs, rdi),
    U64(struct kvm_regs, rsp),
    U64(struct kvm_regs, rbp),
    U64(struct kvm_regs, r8),
    U64(struct kvm_regs, r9),
    U64(struct kvm_regs, r10),
    U64(struct kvm_regs, r11),
    U64(struct kvm_regs, r12),
    U64(struct kvm_regs, r13),
    U64(struct kvm_regs, r14),
    U64(struct kvm_regs, r15),
    U64(struct kvm_regs, rip),
    U64(struct kvm_regs, rflags),
    KV_VMS_END,
};

static const struct kv_vmstate_desc regs_vmsd = {
    .name = "regs",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = regs_fields,
};

static const struct kv_vmstate_field segment_fields[] = {
    U64(struct kvm_segment, base),
    U32(struct kvm_segment, limit),
    U16(struct kvm_segment, selector),
    U8(struct kvm_segment, type),
    U8(struct kvm_segment, present),
    U8(struct kvm_segment, dpl),
    U8(struct kvm_segment, db),
    U8(struct kvm_segment, s),
    U8(struct kvm_segment, l),
    U8(struct kvm_segment, g),
    U8(struct kvm_segment, avl),
    U8(struct kvm_segment, unusable),
    KV_VMS_END,
};

static const struct kv_vmstate_desc segment_vmsd = {
    .name = "segment",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = segment_fields,
};

static const struct kv_vmstate_field dtable_fields[] = {
    U64(struct kvm_dtable, base),
    U16(struct kvm_dtable, limit),
    KV_VMS_END,
};

static const struct kv_vmstate_desc dtable_vmsd = {
    .name = "dtable",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = dtable_fields,
};

#define SEG(m)                                                                 \
	KV_VMS_STRUCT_FIELD(struct kvm_sregs, m, &segment_vmsd,                \
			    struct kvm_segment, 1)
#define DTAB(m)                                                                \
	KV_VMS_STRUCT_FIELD(struct kvm_sregs, m, &dtable_vmsd,                 \
			    struct kvm_dtable, 1)

static const struct kv_vmstate_field sregs_fields[] = {
    SEG(cs),
    SEG(ds),
    SEG(es),
    SEG(fs),
    SEG(gs),
    SEG(ss),
    SEG(tr),
    SEG(ldt),
    DTAB(gdt),
    DTAB(idt),
    U64(struct kvm_sregs, cr0),
    U64(struct kvm_sregs, cr2),
    U64(struct kvm_sregs, cr3),
    U64(struct kvm_sregs, cr4),
    U64(struct kvm_sregs, cr8),
    U64(struct kvm_sregs, efer),
    U64(struct kvm_sregs, apic_base),
    KV_VMS_ARRAY(struct kvm_sregs, interrupt_bitmap, KV_VMS_U64,
		 (KVM_NR_INTERRUPTS + 63) / 64, 1),
    KV_VMS_END,
};

static const struct kv_vmstate_desc sregs_vmsd = {
    .name = "sregs",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = sregs_fields,
};

static const struct kv_vmstate_field xcr_fields[] = {
    U32(struct kv_xcr_entry, xcr),
    U64(struct kv_xcr_entry, value),
    KV_VMS_END,
};

static const struct kv_vmstate_desc xcr_vmsd = {
    .name = "xcr",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = xcr_fields,
};

static const struct kv_vmstate_field msr_fields[] = {
    U32(struct kv_msr_value, index),
    U64(struct kv_msr_value, data),
    KV_VMS_END,
};

static const struct kv_vmstate_desc msr_vmsd = {
    .name = "msr",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = msr_fields,
};

static const struct kv_vmstate_field debugregs_fields[] = {
    KV_VMS_ARRAY(struct kvm_debugregs, db, KV_VMS_U64, 4, 1),
    U64(struct kvm_debugregs, dr6),
    U64(struct kvm_debugregs, dr7),
    U64(struct kvm_debugregs, flags),
    KV_VMS_END,
};

static const struct kv_vmstate_desc debugregs_vmsd = {
    .name = "debugregs",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = debugregs_fields,
};

#define EV8(m) U8(struct kvm_vcpu_events, m)
static const struct kv_vmstate_field events_fields[] = {
    EV8(exception.injected),
    EV8(exception.nr),
    EV8(exception.has_error_code),
    EV8(exception.pending),
    U32(struct kvm_vcpu_events, exception.error_code),
    EV8(interrupt.injected),
    EV8(interrupt.nr),
    EV8(interrupt.soft),
    EV8(interrupt.shadow),
    EV8(nmi.injected),
    EV8(nmi.pending),
    EV8(nmi.masked),
    U32(struct kvm_vcpu_events, sipi_vector),
    U32(struct kvm_vcpu_events, flags),
    EV8(smi.smm),
    EV8(smi.pending),
    EV8(smi.smm_inside_nmi),
    EV8(smi.latched_init),
    EV8(triple_fault.pending),
    EV8(exception_has_payload),
    U64(struct kvm_vcpu_events, exception_payload),
    KV_VMS_END,
};

static const struct kv_vmstate_desc events_vmsd = {
    .name = "vcpu_events",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = events_fields,
};

#define VS struct kv_vcpu_state
static const struct kv_vmstate_field cpu_fields[] = {
    KV_VMS_STRUCT_FIELD(VS, sregs, &sregs_vmsd, struct kvm_sregs, 1),
    KV_VMS_STRUCT_FIELD(VS, regs, &regs_vmsd, struct kvm_regs, 1),
    KV_VMS_BUF(VS, xsave_area, 1),
    U32(VS, nr_xcrs),
    {.name = "xcrs",
     .type = KV_VMS_STRUCT,
     .offset = offsetof(VS, xcrs),
     .size = sizeof(struct kv_xcr_entry),
     .count = KVM_MAX_XCRS,
     .vmsd = &xcr_vmsd,
     .version_id = 1},
    U32(VS, nmsrs),
    {.name = "msrs",
     .type = KV_VMS_STRUCT,
     .offset = offsetof(VS, msrs),
     .size = sizeof(struct kv_msr_value),
     .count = KV_MAX_SAVED_MSRS,
     .vmsd = &msr_vmsd,
     .version_id = 1},
    KV_VMS_BUF(VS, lapic_regs, 1),
    KV_VMS_STRUCT_FIELD(VS, debugregs, &debugregs_vmsd, struct kvm_debugregs,
			1),
    U32(VS, mp_state),
    KV_VMS_STRUCT_FIELD(VS, events, &events_vmsd, struct kvm_vcpu_events, 1),
    KV_VMS_END,
};
#undef VS

static const struct kv_vmstate_desc cpu_vmsd = {
    .name = "cpu",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = cpu_fields,
    .post_load = cpu_post_load,
};

const struct kv_vmstate_desc *kv_vcpu_state_vmsd(void)
{
	return &cpu_vmsd;
}

/* ---- VM-wide state ---- */

static int get_irqchip(int vm_fd, uint32_t chip, void *out, size_t len,
		       struct kv_error *err)
{
	struct kvm_irqchip ic;

	memset(&ic, 0, sizeof(ic));
	ic.chip_id = chip;
	if (ioctl(vm_fd, KVM_GET_IRQCHIP, &ic) < 0)
		return kv_error_set_errno(err, -errno,
					  "KVM_GET_IRQCHIP (chip %u)", chip);
	memcpy(out, &ic.chip, len);
	return 0;
}

static int put_irqchip(int vm_fd, uint32_t chip, const void *in, size_t len,
		       struct kv_error *err)
{
	struct kvm_irqchip ic;

	memset(&ic, 0, sizeof(ic));
	ic.chip_id = chip;
	memcpy(&ic.chip, in, len);
	if (ioctl(vm_fd, KVM_SET_IRQCHIP, &ic) < 0)
		return kv_error_set_errno(err, -errno,
					  "KVM_SET_IRQCHIP (chip %u)", chip);
	return 0;
}

static uint64_t host_realtime_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* What to hand KVM_SET_CLOCK: the saved clock advanced by the host time
 * since the save (see the file comment). With KVM's own realtime stamp the
 * kernel does the arithmetic against the same clock it stamped with. */
static void restore_clock(const struct kvm_clock_data *saved,
			  struct kvm_clock_data *out)
{
	uint64_t now;

	memset(out, 0, sizeof(*out));
	out->clock = saved->clock;
	if (saved->flags & KVM_CLOCK_REALTIME) {
		out->flags = KVM_CLOCK_REALTIME;
		out->realtime = saved->realtime;
		return;
	}
	now = host_realtime_ns();
	/* A host clock that went backwards (another host, a step) must not
	 * move the guest's clock back: then no advance at all. */
	if (saved->realtime && now > saved->realtime)
		out->clock += now - saved->realtime;
}

int kv_vm_state_get(int vm_fd, struct kv_vm_state *st, struct kv_error *err)
{
	int ret;

	ret = get_irqchip(vm_fd, KVM_IRQCHIP_PIC_MASTER, &st->pic_master,
			  sizeof(st->pic_master), err);
	ret = ret
		  ?: get_irqchip(vm_fd, KVM_IRQCHIP_PIC_SLAVE, &st->pic_slave,
				 sizeof(st->pic_slave), err);
	ret = ret
		  ?: get_irqchip(vm_fd, KVM_IRQCHIP_IOAPIC, &st->ioapic,
				 sizeof(st->ioapic), err);
	ret = ret
		  ?: vcpu_ioctl(vm_fd, KVM_GET_PIT2, &st->pit, "KVM_GET_PIT2",
				err);
	ret = ret
		  ?: vcpu_ioctl(vm_fd, KVM_GET_CLOCK, &st->clock,
				"KVM_GET_CLOCK", err);
	if (!ret && !(st->clock.flags & KVM_CLOCK_REALTIME))
		st->clock.realtime = host_realtime_ns();
	if (ret)
		kv_error_prefix(err, "reading VM state");
	return ret;
}

static int check_pit(const struct kvm_pit_state2 *pit, struct kv_error *err)
{
	for (int i = 0; i < 3; i++) {
		const struct kvm_pit_channel_state *c = &pit->channels[i];

		/* 0xff: never programmed (how KVM resets a channel). */
		if ((c->mode > 7 && c->mode != 0xff) || c->bcd > 1 ||
		    c->gate > 1 || c->read_state > 4 || c->write_state > 4 ||
		    c->rw_mode > 4 || c->count > 0x10000)
			return kv_error_set(err, -EINVAL,
					    "pit: channel %d state out of range (mode %u, bcd %u, gate %u, rw %u/%u/%u, count %u)",
					    i, c->mode, c->bcd, c->gate,
					    c->read_state, c->write_state,
					    c->rw_mode, c->count);
	}
	if (pit->flags & ~(uint32_t)(KVM_PIT_FLAGS_HPET_LEGACY |
				     KVM_PIT_FLAGS_SPEAKER_DATA_ON))
		return kv_error_set(err, -EINVAL, "pit: unknown flags %#x",
				    pit->flags);
	return 0;
}

static int check_ioapic(const struct kvm_ioapic_state *io, struct kv_error *err)
{
	if (io->base_address != IOAPIC_DEFAULT_BASE)
		return kv_error_set(err, -EINVAL,
				    "irqchip: IOAPIC at %#llx, this VMM places it at %#llx",
				    (unsigned long long)io->base_address,
				    IOAPIC_DEFAULT_BASE);
	return 0;
}

int kv_vm_state_put(int vm_fd, const struct kv_vm_state *st,
		    struct kv_error *err)
{
	struct kvm_clock_data clk;
	int ret;

	ret = check_ioapic(&st->ioapic, err);
	ret = ret ?: check_pit(&st->pit, err);
	ret = ret
		  ?: put_irqchip(vm_fd, KVM_IRQCHIP_PIC_MASTER, &st->pic_master,
				 sizeof(st->pic_master), err);
	ret = ret
		  ?: put_irqchip(vm_fd, KVM_IRQCHIP_PIC_SLAVE, &st->pic_slave,
				 sizeof(st->pic_slave), err);
	ret = ret
		  ?: put_irqchip(vm_fd, KVM_IRQCHIP_IOAPIC, &st->ioapic,
				 sizeof(st->ioapic), err);
	ret = ret
		  ?: vcpu_ioctl(vm_fd, KVM_SET_PIT2, (void *)&st->pit,
				"KVM_SET_PIT2", err);
	restore_clock(&st->clock, &clk);
	ret =
	    ret ?: vcpu_ioctl(vm_fd, KVM_SET_CLOCK, &clk, "KVM_SET_CLOCK", err);
	if (ret)
		kv_error_prefix(err, "writing VM state");
	return ret;
}

#define PIC(m) U8(struct kvm_pic_state, m)
static const struct kv_vmstate_field pic_fields[] = {
    PIC(last_irr),
    PIC(irr),
    PIC(imr),
    PIC(isr),
    PIC(priority_add),
    PIC(irq_base),
    PIC(read_reg_select),
    PIC(poll),
    PIC(special_mask),
    PIC(init_state),
    PIC(auto_eoi),
    PIC(rotate_on_auto_eoi),
    PIC(special_fully_nested_mode),
    PIC(init4),
    PIC(elcr),
    PIC(elcr_mask),
    KV_VMS_END,
};

static const struct kv_vmstate_desc pic_vmsd = {
    .name = "pic",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = pic_fields,
};

static const struct kv_vmstate_field ioapic_fields[] = {
    U64(struct kvm_ioapic_state, base_address),
    U32(struct kvm_ioapic_state, ioregsel),
    U32(struct kvm_ioapic_state, id),
    U32(struct kvm_ioapic_state, irr),
    KV_VMS_ARRAY(struct kvm_ioapic_state, redirtbl, KV_VMS_U64,
		 KVM_IOAPIC_NUM_PINS, 1),
    KV_VMS_END,
};

static const struct kv_vmstate_desc ioapic_vmsd = {
    .name = "ioapic",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = ioapic_fields,
};

static const struct kv_vmstate_field irqchip_fields[] = {
    KV_VMS_STRUCT_FIELD(struct kv_vm_state, pic_master, &pic_vmsd,
			struct kvm_pic_state, 1),
    KV_VMS_STRUCT_FIELD(struct kv_vm_state, pic_slave, &pic_vmsd,
			struct kvm_pic_state, 1),
    KV_VMS_STRUCT_FIELD(struct kv_vm_state, ioapic, &ioapic_vmsd,
			struct kvm_ioapic_state, 1),
    KV_VMS_END,
};

static int irqchip_post_load(void *opaque, int version_id, struct kv_error *err)
{
	const struct kv_vm_state *st = opaque;

	(void)version_id;
	return check_ioapic(&st->ioapic, err);
}

static const struct kv_vmstate_desc irqchip_vmsd = {
    .name = "irqchip",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = irqchip_fields,
    .post_load = irqchip_post_load,
};

const struct kv_vmstate_desc *kv_irqchip_vmsd(void)
{
	return &irqchip_vmsd;
}

#define PCH(m) U8(struct kvm_pit_channel_state, m)
static const struct kv_vmstate_field pit_channel_fields[] = {
    U32(struct kvm_pit_channel_state, count),
    U16(struct kvm_pit_channel_state, latched_count),
    PCH(count_latched),
    PCH(status_latched),
    PCH(status),
    PCH(read_state),
    PCH(write_state),
    PCH(write_latch),
    PCH(rw_mode),
    PCH(mode),
    PCH(bcd),
    PCH(gate),
    KV_VMS_FIELD(struct kvm_pit_channel_state, count_load_time, KV_VMS_I64, 1),
    KV_VMS_END,
};

static const struct kv_vmstate_desc pit_channel_vmsd = {
    .name = "pit_channel",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = pit_channel_fields,
};

static const struct kv_vmstate_field pit_fields[] = {
    {.name = "channels",
     .type = KV_VMS_STRUCT,
     .offset = offsetof(struct kv_vm_state, pit.channels),
     .size = sizeof(struct kvm_pit_channel_state),
     .count = 3,
     .vmsd = &pit_channel_vmsd,
     .version_id = 1},
    U32(struct kv_vm_state, pit.flags),
    KV_VMS_END,
};

static int pit_post_load(void *opaque, int version_id, struct kv_error *err)
{
	const struct kv_vm_state *st = opaque;

	(void)version_id;
	return check_pit(&st->pit, err);
}

static const struct kv_vmstate_desc pit_vmsd = {
    .name = "pit",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = pit_fields,
    .post_load = pit_post_load,
};

const struct kv_vmstate_desc *kv_pit_vmsd(void)
{
	return &pit_vmsd;
}

/* clock and realtime (KVM's stamp when flags has KVM_CLOCK_REALTIME, else
 * ours) drive the restore; host_tsc is carried for diagnosis. */
static const struct kv_vmstate_field kvmclock_fields[] = {
    U64(struct kv_vm_state, clock.clock),
    U32(struct kv_vm_state, clock.flags),
    U64(struct kv_vm_state, clock.realtime),
    U64(struct kv_vm_state, clock.host_tsc),
    KV_VMS_END,
};

static const struct kv_vmstate_desc kvmclock_vmsd = {
    .name = "kvmclock",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = kvmclock_fields,
};

const struct kv_vmstate_desc *kv_kvmclock_vmsd(void)
{
	return &kvmclock_vmsd;
}

uint32_t kv_vcpu_state_msr_count(const struct kv_vcpu_state *st)
{
	return st->nmsrs;
}

int kv_vcpu_state_msr(const struct kv_vcpu_state *st, uint32_t i,
		      uint32_t *index, uint64_t *data)
{
	if (i >= st->nmsrs || i >= KV_MAX_SAVED_MSRS)
		return -ERANGE;
	*index = st->msrs[i].index;
	*data = st->msrs[i].data;
	return 0;
}
