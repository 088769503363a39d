/* SPDX-License-Identifier: MIT */
/*
 * The state-handler registry and the section framing of the stream (the
 * role of QEMU's savevm.c with SaveStateEntry / SaveVMHandlers).
 *
 * One registry per migration instance (source or destination); no globals.
 * Entries are ordered by priority (higher first), then registration order.
 * Two kinds of entry:
 *  - live handlers (RAM): setup / iterate / complete phases over
 *    START / PART / END sections, with pending-bytes estimates;
 *  - plain devices described by a kv_vmstate_desc: one FULL section each,
 *    written during the complete phase (the workload is stopped then).
 *
 * Stream layout written by the source (every byte: docs/FORMAT.md):
 *   be32 0x5145564d "QEVM", be32 3
 *   0x07 CONFIGURATION: be32 len, machine name
 *   [0x08 COMMAND OPEN_RETURN_PATH when the channel has a return path]
 *   setup:    0x01 START  be32 id, str8 idstr, be32 instance, be32 version,
 *             data, 0x7e FOOTER be32 id            (each live handler)
 *   iterate:  0x02 PART   be32 id, data, footer    (repeated)
 *   complete: 0x03 END    be32 id, data, footer    (each live handler)
 *             0x04 FULL   like START, data, footer (each device)
 *   0x00 EOF
 *   0x06 VMDESCRIPTION: be32 len, JSON {"page_size", "devices":[...]}
 */
#ifndef KV_MIGRATION_SAVEVM_H
#define KV_MIGRATION_SAVEVM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "io/stream.h"
#include "migration/postcopy/postcopy_wire.h"
#include "migration/savevm/vmstate.h"

#define KV_VM_FILE_MAGIC 0x5145564dU
#define KV_VM_FILE_VERSION 3U
/* Magic and version: the first bytes of every stream. */
#define KV_VM_HEADER_SIZE 8U

enum kv_section_type {
	KV_SEC_EOF = 0x00,
	KV_SEC_START = 0x01,
	KV_SEC_PART = 0x02,
	KV_SEC_END = 0x03,
	KV_SEC_FULL = 0x04,
	KV_SEC_SUBSECTION = 0x05,
	KV_SEC_VMDESCRIPTION = 0x06,
	KV_SEC_CONFIGURATION = 0x07,
	KV_SEC_COMMAND = 0x08,
	KV_SEC_FOOTER = 0x7e,
};

/* QEMU_VM_COMMAND sub-commands we use; postcopy's (3 to 9) are
 * postcopy_wire.h's table. */
enum kv_mig_cmd {
	KV_MIG_CMD_OPEN_RETURN_PATH = 1,
	KV_MIG_CMD_PING = 2,
};

/* Priorities (higher saves first), as QEMU's MigrationPriority. */
enum kv_savevm_priority {
	KV_PRI_DEFAULT = 0,
	KV_PRI_DEVICE = 10,
	KV_PRI_RAM = 20,
};

/* Callbacks of a live handler. Every callback gets the opaque given at
 * registration. Source callbacks run on the migration thread; load
 * callbacks on the loading thread. Required: save_setup, save_iterate,
 * save_complete, pending_estimate, load_state. */
struct kv_savevm_live_ops {
	/* Write the START section's payload (e.g. RAM's block list). */
	int (*save_setup)(struct kv_stream *s, void *opaque,
			  struct kv_error *err);
	/* Write one PART payload, bounded in time (about 50 ms) and by the
	 * stream's rate limit. Returns 1 when the handler has nothing left
	 * to send right now, 0 if it has more, <0 on error. */
	int (*save_iterate)(struct kv_stream *s, void *opaque,
			    struct kv_error *err);
	/* With the workload stopped: write everything left (END payload). */
	int (*save_complete)(struct kv_stream *s, void *opaque,
			     struct kv_error *err);
	/* Bytes still to send: cheap estimate, and exact (may sync the dirty
	 * log; NULL means the estimate is exact). */
	uint64_t (*pending_estimate)(void *opaque);
	uint64_t (*pending_exact)(void *opaque, struct kv_error *err);
	/* Source done: free what setup allocated. failed: the migration did
	 * not complete (failed or cancelled; the workload runs on here). */
	void (*save_cleanup)(void *opaque, bool failed);

	int (*load_setup)(void *opaque, struct kv_error *err);
	/* Read one section payload (START, PART or END). */
	int (*load_state)(struct kv_stream *s, void *opaque, int version_id,
			  struct kv_error *err);
	/* Destination done; failed = drop everything that was loaded. */
	void (*load_cleanup)(void *opaque, bool failed);
};

struct kv_savevm;

/* machine: the name carried in the configuration section; the loader
 * requires the source's to equal its own. */
struct kv_savevm *kv_savevm_new(const char *machine);
void kv_savevm_free(struct kv_savevm *sv);

int kv_savevm_register_live(struct kv_savevm *sv, const char *idstr,
			    uint32_t instance_id, int version_id, int priority,
			    const struct kv_savevm_live_ops *ops, void *opaque,
			    struct kv_error *err);
int kv_savevm_register_device(struct kv_savevm *sv, const char *idstr,
			      uint32_t instance_id,
			      const struct kv_vmstate_desc *vmsd, int priority,
			      void *opaque, struct kv_error *err);

/* The instances of idstr are numbered 0..n-1 and their number is set by
 * an option of the owner's (a VMM's "--cpus" for "cpu"): a stream with
 * more or fewer is refused naming it, e.g. "the stream's guest has 2
 * vCPUs, this VM was started with --cpus 1: start the destination with
 * the source's options". noun ("vCPU") and option are not copied; call
 * after registering the instances. -ENOENT when idstr is not registered. */
int kv_savevm_set_count_option(struct kv_savevm *sv, const char *idstr,
			       const char *noun, const char *option,
			       struct kv_error *err);

/* mapped-ram (both sides, before the migration): while *on, the
 * configuration section carries QEMU's capabilities subsection naming
 * it; the loader refuses a stream whose subsection disagrees with *on,
 * except that with follow (a file: destination: the file can only be
 * read as it was written) a stream that names it sets *on. on (the RAM
 * handler's, kv_ram_mapped_ram_on) outlives the migration; NULL: off. */
void kv_savevm_set_mapped_ram(struct kv_savevm *sv, bool *on, bool follow);

/*
 * --verify-ram's section digests: every START and FULL section's payload
 * is hashed (XXH3-128) as it is written and as it is read, and the
 * source appends one more FULL section, KV_SAVEVM_VERIFY_IDSTR instance
 * 0, after every other one, carrying its digests (docs/FORMAT.md). The
 * loader compares them when that section arrives, before the load
 * returns (so before anything is committed into KVM), and fails naming
 * the first section whose bytes differ. Both sides must call it (the
 * record is a section QEMU lacks: a destination without it refuses the
 * stream as it would any unknown device). Call after registering every
 * other handler.
 */
#define KV_SAVEVM_VERIFY_IDSTR "kvmig-verify"
#define KV_SAVEVM_DIGEST_LEN 16
int kv_savevm_enable_verify(struct kv_savevm *sv, struct kv_error *err);

/* For tests and tools: the idstr of the i-th entry in save order. */
const char *kv_savevm_entry_idstr(const struct kv_savevm *sv, size_t i);
size_t kv_savevm_entry_count(const struct kv_savevm *sv);

/* --- source side, in this order --- */
/* Magic, version, configuration; OPEN_RETURN_PATH if return_path. */
int kv_savevm_save_header(struct kv_savevm *sv, struct kv_stream *s,
			  bool return_path, struct kv_error *err);
int kv_savevm_save_setup(struct kv_savevm *sv, struct kv_stream *s,
			 struct kv_error *err);
/* One round of PART sections. Returns 1 when every live handler reported
 * nothing left, 0 otherwise, <0 on error. */
int kv_savevm_save_iterate(struct kv_savevm *sv, struct kv_stream *s,
			   struct kv_error *err);
uint64_t kv_savevm_pending_estimate(struct kv_savevm *sv);
int kv_savevm_pending_exact(struct kv_savevm *sv, uint64_t *pending,
			    struct kv_error *err);
/* A PING command (QEMU's MIG_CMD_PING) between sections, flushed: a
 * destination with the return path open answers PONG(value) once it has
 * read everything before it (return_path.h). */
int kv_savevm_save_ping(struct kv_stream *s, uint32_t value,
			struct kv_error *err);
/* END sections, FULL device sections, EOF, VM description; flushes. */
int kv_savevm_save_complete(struct kv_savevm *sv, struct kv_stream *s,
			    struct kv_error *err);
/* The two halves of save_complete, for a background snapshot, which
 * saves the device state at its start into a buffer and writes it after
 * the END sections: END sections only; FULL sections, EOF, VM
 * description, flushed. */
int kv_savevm_save_end(struct kv_savevm *sv, struct kv_stream *s,
		       struct kv_error *err);
int kv_savevm_save_device_state(struct kv_savevm *sv, struct kv_stream *s,
				struct kv_error *err);
void kv_savevm_save_cleanup(struct kv_savevm *sv, bool failed);

/*
 * Postcopy (docs/DESIGN.md "Postcopy", FORMAT.md §12). Source, after the
 * header: ADVISE (kv_savevm_save_command); at the switch RAM_DISCARD
 * commands, then kv_savevm_save_pc_package: PACKAGED { LISTEN, the FULL
 * section of every device but the late ones, RUN }; pages in PART
 * sections; at the end kv_savevm_save_pc_complete: END sections, the
 * late devices, EOF (QEMU's postcopy stream has no VM description).
 */
/* A device whose section describes RAM as a whole (--verify-ram's
 * digest) goes after the END sections, not in the package; the
 * verification record (kv_savevm_enable_verify) always does. */
int kv_savevm_set_postcopy_late(struct kv_savevm *sv, const char *idstr,
				struct kv_error *err);
/* One COMMAND section: be16 cmd, be16 len, payload. */
int kv_savevm_save_command(struct kv_stream *s, uint16_t cmd,
			   const void *payload, uint16_t len,
			   struct kv_error *err);
int kv_savevm_save_pc_package(struct kv_savevm *sv, struct kv_stream *s,
			      struct kv_error *err);
int kv_savevm_save_pc_complete(struct kv_savevm *sv, struct kv_stream *s,
			       struct kv_error *err);

/*
 * Destination: what postcopy's commands do, once the loader checked
 * their length, payload and order (postcopy_wire.h). LISTEN inside a
 * package starts the listen thread, which reads the rest of the main
 * stream while the package's devices load and RUN starts the guest;
 * kv_savevm_load returns when both are done. Without these ops a stream
 * with postcopy commands is refused. Called on the loading threads.
 */
struct kv_savevm_pc_ops {
	int (*advise)(void *opaque, const struct kv_pc_advise *a,
		      struct kv_error *err);
	/* The blocks RAM_DISCARD is checked against (after ADVISE). */
	const struct kv_pc_blocks *(*blocks)(void *opaque);
	int (*discard)(void *opaque, const struct kv_pc_discard *d,
		       struct kv_error *err);
	int (*listen)(void *opaque, struct kv_error *err);
	int (*run)(void *opaque, struct kv_error *err);
	/* PONG, under the return path's write lock (the fault thread
	 * writes page requests there too). */
	int (*send_pong)(void *opaque, uint32_t value, struct kv_error *err);
	/* Recovery: RECV_BITMAP (send the block's received bitmap) and
	 * POSTCOPY_RESUME (RESUME_ACK, ask again for the waited pages). */
	int (*recv_bitmap)(void *opaque, size_t block, struct kv_error *err);
	int (*resume)(void *opaque, struct kv_error *err);
	/* Optional: first thing on the listen thread (its priority). */
	void (*listen_thread)(void *opaque);
	void *opaque;
};
/* ops NULL: postcopy off. Not copied; set before kv_savevm_load. */
void kv_savevm_set_postcopy(struct kv_savevm *sv,
			    const struct kv_savevm_pc_ops *ops);
/* A postcopy load that failed after POSTCOPY_RUN (the link broke) keeps
 * its state: kv_savevm_load_paused says so, kv_savevm_load_resume goes
 * on over a new stream (no header: the commands and sections that follow
 * in QEMU's recovery), until EOF (0) or the next break (<0, still
 * paused); kv_savevm_load_abandon ends it (the process is going away). */
bool kv_savevm_load_paused(const struct kv_savevm *sv);
int kv_savevm_load_resume(struct kv_savevm *sv, struct kv_stream *s,
			  struct kv_error *err);
void kv_savevm_load_abandon(struct kv_savevm *sv);

/* --- destination side --- */
struct kv_load_result {
	bool return_path_requested; /* the source sent OPEN_RETURN_PATH */
	bool postcopy;              /* LISTEN came: pages came on demand */
	uint64_t bytes;             /* stream bytes consumed */
};

/* Load a whole stream: header, every section into its handler, EOF and the
 * VM description (validated as JSON). On any failure, every handler's
 * load_cleanup runs with failed = true and err names the stream offset,
 * the section and the record. */
int kv_savevm_load(struct kv_savevm *sv, struct kv_stream *s,
		   struct kv_load_result *res, struct kv_error *err);
/* Do these first bytes of a stream say it is one (magic, and a version
 * this loader reads)? 0, or -EINVAL with err saying what they are. The
 * loader's own check; a destination uses it to tell a migration source
 * from a stray connection before committing to it. */
int kv_savevm_check_header(const uint8_t hdr[KV_VM_HEADER_SIZE],
			   struct kv_error *err);

#endif
