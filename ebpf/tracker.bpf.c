// SPDX-License-Identifier: GPL-2.0
/* ferry's write tracker: reports every write, discard and write-zeroes to the protected
 * disks, at submission (the range is dirty: no write goes unnoticed) and at completion
 * (the range is readable: its new content is on the device). See tracker/src/lib.rs for
 * the userspace side and the invariants; the layouts are mirrored in
 * tracker/src/sys/bpf.rs and tracker/src/event.rs.
 *
 * Nothing here takes a lock, allocates, calls a helper on the common path (but the CPU
 * number's, which recent x86 kernels inline) or shares a cache line between CPUs that it
 * does not have to: at 4 KiB writes the tracker runs twice per write, and a hash map and
 * a ring buffer cost a tenth of the workload's IOPS.
 *
 * - A submission is recorded in the in-flight table only (plain arrays, slots claimed
 *   with cmpxchg). Userspace scans the table through mmap on every poll, so a write
 *   still in flight is dirty from the first poll after its submission.
 * - A completion frees its slot and appends a COMPLETE record, with the same id and
 *   range, to the log of the CPU it runs on: a write that completed between two polls is
 *   dirty and readable from the same record. Per-CPU logs are single-producer rings in
 *   mmapable arrays (the producer can only be interrupted by another program on its own
 *   CPU: it reserves with cmpxchg and publishes a sequence number); userspace drains
 *   them on a timer, so nothing wakes it per event.
 * - Only a submission the table has no room for, or the entry of a bio whose completion
 *   never reached BPF found when its address is reused, is logged at submission (SUBMIT,
 *   FLAG_UNTRACKED): userspace resolves those by the sweep.
 *
 * Attach points (BTF tracepoints; fentry does not load on lockdown kernels):
 *   block_bio_queue     submission of a bio: in-flight entry keyed by bio
 *   block_split         a queued bio split in two: the in-flight entry follows both parts
 *   block_rq_complete   blk-mq request completion: COMPLETE for each in-flight bio in it
 *   block_bio_complete  bio-based devices, and bios that fail before becoming requests
 *
 * Completions are best effort (some never reach BPF): userspace sweeps in-flight
 * entries that age out. A log record that cannot be reserved (the log is full) bumps the
 * drop counter and the per-chunk fallback counters of the range, so userspace learns
 * where it lost events.
 *
 * Minimum kernel: 6.1, BTF required: from 6.1 the kernel never runs a tracepoint program
 * nested within itself on one CPU (the scratch cells and id counters below rely on it).
 * x86_64 only: the orderings rely on locked instructions being full barriers, as the
 * x86 JIT emits them (`ferry check` and the loader refuse other architectures). */

#include "kernel_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define REQ_OP_MASK 0xff
#define REQ_OP_WRITE 1
#define REQ_OP_DISCARD 3
#define REQ_OP_SECURE_ERASE 5
#define REQ_OP_WRITE_ZEROES 9

#define EVENT_SUBMIT 1
#define EVENT_COMPLETE 2

/* Flags in ferry_event.flags. */
#define FLAG_UNTRACKED 1 /* submitted, but not followed: no completion will be logged */

#define MAX_DISKS 32
#define FALLBACK_CHUNKS 16384 /* fallback counters per disk */
#define MAX_FALLBACK_STEPS 64 /* chunks marked per lost event; beyond: whole-disk counter */
#define MAX_RQ_BIOS 256       /* bios walked per completed request (merges beyond: swept) */

/* Config slots (array "config"), set by userspace before the programs attach. */
#define CONFIG_LOG_RECORDS 0       /* records per CPU log, a power of two */
#define CONFIG_DROP_COMPLETE_PPM 1 /* test knob: drop this many completions per million */
#define CONFIG_SLOTS 2

/* Protected whole disks: an open-addressed table keyed by kernel dev_t (major << 20 |
 * minor; 0 = empty slot), filled by userspace within PROTECTED_PROBES slots of the
 * dev's hash. Mirrored by tracker/src/sys/bpf.rs (ProtectedSlot, 12 bytes). */
#define PROTECTED_BITS 7
#define PROTECTED_SLOTS (1 << PROTECTED_BITS)
#define PROTECTED_PROBES 8
struct protected_disk {
    __u32 dev;
    __u32 index;       /* userspace's disk number, 0..MAX_DISKS */
    __u32 chunk_shift; /* log2 of the sectors per fallback chunk */
};

/* A write in flight. Mirrored by tracker/src/sys/bpf.rs (SLOT_*, 32 bytes): userspace
 * reads the table on every poll, through mmap. A write is published by writing its id
 * last, and retired by zeroing the id and then advancing `seq` by two; a split rewrites
 * the range between two increments of `seq`. A reader that finds `seq` even and the same
 * before and after, and the same non-zero id, has read one write's fields. (Split parts
 * share their write's id, so the id alone would not tell a slot reused by another part.)
 * Orderings rely on locked instructions being full barriers (the x86 JIT). */
struct inflight {
    __u64 id; /* 0: the slot holds no write */
    __u64 sector;
    __u32 sectors;
    __u32 disk;
    __u32 seq; /* odd while a split rewrites the slot's range; +2 when a write leaves */
    __u8 op;
    __u8 chunk_shift;
    __u16 pad;
};

/* One record of a CPU's log. Mirrored by tracker/src/event.rs (the event, 32 bytes) and
 * tracker/src/sys/bpf.rs (the commit word before it). */
struct ferry_event {
    __u64 id;
    __u64 sector;
    __u32 sectors;
    __u32 disk;
    __u8 kind;
    __u8 op;
    __u8 status;
    __u8 flags;
    __u32 pad;
};

struct log_record {
    __u64 commit; /* the record's sequence number + 1, written last: it is complete */
    struct ferry_event event;
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, PROTECTED_SLOTS);
    __type(key, __u32);
    __type(value, struct protected_disk);
} protected_disks SEC(".maps");

/* The in-flight table: bio address -> what it writes. Set-associative: a bio's bucket
 * (a hash of its address) has INFLIGHT_WAYS slots, whose keys share one cache line.
 * A key is claimed with cmpxchg and freed at completion; plain arrays, no locks, no
 * allocation (a hash map's insert and delete were half of the tracker's cost: its
 * free lists migrate from the submitting CPU to the completing one). */
#define INFLIGHT_WAYS 8
#define INFLIGHT_BUCKET_BITS 11
#define INFLIGHT_SLOTS ((1 << INFLIGHT_BUCKET_BITS) * INFLIGHT_WAYS) /* IN_FLIGHT_SLOTS in bpf.rs */

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, INFLIGHT_SLOTS);
    __uint(map_flags, BPF_F_MMAPABLE);
    __type(key, __u32);
    __type(value, __u64); /* the bio's address; 0 = free */
} inflight_keys SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, INFLIGHT_SLOTS);
    __uint(map_flags, BPF_F_MMAPABLE);
    __type(key, __u32);
    __type(value, struct inflight);
} inflight SEC(".maps");

/* The per-CPU logs ("events"): CPU c's records are c * records .. (c + 1) * records, records =
 * config[CONFIG_LOG_RECORDS]. Sized by userspace at load (max_entries = CPUs x records). */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __uint(map_flags, BPF_F_MMAPABLE);
    __type(key, __u32);
    __type(value, struct log_record);
} events SEC(".maps");

/* Per CPU log positions, LOG_POS_STRIDE values each: [0] head (records reserved, this
 * side), [LOG_POS_TAIL] tail (records consumed, userspace's), on separate cache lines.
 * Sized by userspace at load (max_entries = CPUs x LOG_POS_STRIDE). */
#define LOG_POS_STRIDE 16
#define LOG_POS_TAIL 8
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, LOG_POS_STRIDE);
    __uint(map_flags, BPF_F_MMAPABLE);
    __type(key, __u32);
    __type(value, __u64);
} log_pos SEC(".maps");

/* Events that could not be logged. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} drops SEC(".maps");

/* Per disk: FALLBACK_CHUNKS counters, then one whole-disk counter. Only ever grow;
 * userspace compares them with the values it saw last. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, MAX_DISKS * (FALLBACK_CHUNKS + 1));
    __uint(map_flags, BPF_F_MMAPABLE); /* userspace reads it all in one go */
    __type(key, __u32);
    __type(value, __u64);
} fallback SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, CONFIG_SLOTS);
    __type(key, __u32);
    __type(value, __u64);
} config SEC(".maps");

/* What each CPU keeps for itself: the submission id counter, and one scratch cell per
 * program (see address_of). */
#define SCRATCH_BIO_QUEUE 0
#define SCRATCH_SPLIT 1
#define SCRATCH_RQ_COMPLETE 2
#define SCRATCH_BIO_COMPLETE 3
struct cpu_local {
    __u64 next_id;
    __u64 scratch[4];
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct cpu_local);
} cpu_local SEC(".maps");

/* Slot 0 is unused. Slot 1 is the epoch userspace sets at first load; a restarted agent
 * finding its epoch knows no gap opened while it was away. Slot 2 is a hash of the
 * programs, so an agent never reattaches to programs of another build. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 3);
    __type(key, __u32);
    __type(value, __u64);
} state SEC(".maps");

static __always_inline __u64 config_get(__u32 slot)
{
    __u64 *v = bpf_map_lookup_elem(&config, &slot);
    return v ? *v : 0;
}

static __always_inline struct cpu_local *this_cpu(void)
{
    __u32 zero = 0;
    return bpf_map_lookup_elem(&cpu_local, &zero);
}

/* The address `ptr` holds, as a number (0 if it cannot be had): the verifier forbids
 * arithmetic on kernel pointers, and hashing an address needs it. A pointer stored in
 * map memory reads back as a number; `program` picks the program's own cell (a program
 * can be interrupted by another on its CPU, never by itself: see the top). */
static __always_inline __u64 address_of(struct cpu_local *local, const void *ptr, __u32 program)
{
    if (program >= 4)
        return 0;
    __u64 *cell = &local->scratch[program];
    *(const void *volatile *)cell = ptr;
    return *(volatile __u64 *)cell;
}

static __always_inline void count_drop(void)
{
    __u32 zero = 0;
    __u64 *n = bpf_map_lookup_elem(&drops, &zero);
    if (n)
        __sync_fetch_and_add(n, 1); /* per-CPU, but a tracepoint can nest in softirq */
}

/* Records where an event was lost: bumps the fallback counter of every chunk the range
 * touches, or the disk's whole-disk counter when the range spans too many chunks. A global
 * function: the verifier checks its loop once, not inside every caller's loop. */
__noinline int mark_fallback(__u32 disk, __u32 chunk_shift, __u64 sector, __u64 sectors)
{
    if (disk >= MAX_DISKS || chunk_shift > 63)
        return 0;
    __u64 first = sector >> chunk_shift;
    __u64 last = (sector + (sectors ? sectors : 1) - 1) >> chunk_shift;
    __u32 base = disk * (FALLBACK_CHUNKS + 1);
    if (last - first >= MAX_FALLBACK_STEPS || last >= FALLBACK_CHUNKS) {
        __u32 key = base + FALLBACK_CHUNKS;
        __u64 *c = bpf_map_lookup_elem(&fallback, &key);
        if (c)
            __sync_fetch_and_add(c, 1);
        return 0;
    }
    for (int i = 0; i < MAX_FALLBACK_STEPS; i++) {
        __u64 chunk = first + i;
        if (chunk > last)
            break;
        __u32 key = base + (__u32)chunk;
        __u64 *c = bpf_map_lookup_elem(&fallback, &key);
        if (c)
            __sync_fetch_and_add(c, 1);
    }
    return 0;
}

/* Appends an event for write `w` to this CPU's log; when the log is full, counts the
 * drop and marks the fallback counters of its range instead. */
static __always_inline void log_event(const struct inflight *w, __u8 kind, __u8 status, __u8 flags)
{
    __u32 cpu = bpf_get_smp_processor_id();
    __u64 records = config_get(CONFIG_LOG_RECORDS);
    __u32 head_key = cpu * LOG_POS_STRIDE;
    __u32 tail_key = head_key + LOG_POS_TAIL;
    __u64 *head = bpf_map_lookup_elem(&log_pos, &head_key);
    __u64 *tail = bpf_map_lookup_elem(&log_pos, &tail_key);
    if (head && tail && records) {
        /* Only a program interrupting this one on this CPU can move the head meanwhile:
         * a few tries suffice unless programs keep interrupting this one, and then the
         * event counts as a drop. */
        for (int i = 0; i < 4; i++) {
            __u64 h = *(volatile __u64 *)head;
            if (h - *(volatile __u64 *)tail >= records)
                break; /* full */
            __u32 at = (__u32)(cpu * records + (h & (records - 1)));
            struct log_record *r = bpf_map_lookup_elem(&events, &at);
            if (!r)
                break;
            if (__sync_val_compare_and_swap(head, h, h + 1) != h)
                continue;
            r->event.id = w->id;
            r->event.sector = w->sector;
            r->event.sectors = w->sectors;
            r->event.disk = w->disk;
            r->event.kind = kind;
            r->event.op = w->op;
            r->event.status = status;
            r->event.flags = flags;
            r->event.pad = 0;
            __sync_lock_test_and_set(&r->commit, h + 1); /* publishes the record */
            return;
        }
    }
    /* Where first, then how many: userspace rescans the counters when it sees the drop
     * count move, and must then find the chunks already marked. */
    mark_fallback(w->disk, w->chunk_shift, w->sector, w->sectors);
    count_drop();
}

/* Reports a submission the in-flight table cannot follow (SUBMIT, FLAG_UNTRACKED): no
 * completion will be logged for it; userspace resolves it by the sweep. */
static __always_inline void report_untracked(const struct inflight *w)
{
    log_event(w, EVENT_SUBMIT, 0, FLAG_UNTRACKED);
}

static __always_inline __u32 bucket_of(__u64 bio)
{
    return (__u32)((bio * 0x9E3779B97F4A7C15ULL) >> (64 - INFLIGHT_BUCKET_BITS)) * INFLIGHT_WAYS;
}

/* The slot whose key is `bio`, or -1. */
static __always_inline int find_slot(__u64 bio)
{
    if (!bio)
        return -1;
    __u32 base = bucket_of(bio);
    for (__u32 i = 0; i < INFLIGHT_WAYS; i++) {
        __u32 slot = base + i;
        __u64 *key = bpf_map_lookup_elem(&inflight_keys, &slot);
        if (key && *(volatile __u64 *)key == bio)
            return (int)slot;
    }
    return -1;
}

static __always_inline struct inflight *slot_at(int slot)
{
    __u32 key = (__u32)slot;
    return bpf_map_lookup_elem(&inflight, &key);
}

/* Publishes write `e` in slot `s`, which holds no write (id 0): fields first, the id
 * last. One writer per slot at a time: a slot's submission, split and completion are
 * causally ordered. */
static __always_inline void slot_publish(struct inflight *s, const struct inflight *e)
{
    s->sector = e->sector;
    s->sectors = e->sectors;
    s->disk = e->disk;
    s->op = e->op;
    s->chunk_shift = e->chunk_shift;
    __sync_lock_test_and_set(&s->id, e->id); /* a full barrier: the fields come first */
}

/* Retires the write in slot `s`: its id first, then the sequence moves on, so that no
 * reader takes the next write's fields for it. */
static __always_inline void slot_retire(struct inflight *s)
{
    s->id = 0;
    __sync_fetch_and_add(&s->seq, 2);
}

/* Forgets slot `slot` (its write completed or is reported otherwise). */
static __always_inline void slot_free(int slot)
{
    struct inflight *s = slot_at(slot);
    __u32 k = (__u32)slot;
    __u64 *key = bpf_map_lookup_elem(&inflight_keys, &k);
    if (!s || !key)
        return;
    slot_retire(s);
    __sync_lock_test_and_set(key, 0);
}

/* Records `entry` in the in-flight table under the bio address `bio`; non-zero when its
 * bucket has no room. A slot already holding `bio` belongs to a bio whose completion
 * never reached BPF: its write is done, but userspace may not have read the slot yet,
 * so it is reported before being replaced, or the write would vanish with its entry. */
static __always_inline int follow(__u64 bio, const struct inflight *entry)
{
    if (!bio)
        return -1;
    int slot = find_slot(bio);
    if (slot >= 0) {
        struct inflight *stale = slot_at(slot);
        if (!stale)
            return -1;
        struct inflight old = *stale;
        report_untracked(&old);
        slot_retire(stale);
        slot_publish(stale, entry);
        return 0;
    }
    __u32 base = bucket_of(bio);
    for (__u32 i = 0; i < INFLIGHT_WAYS; i++) {
        __u32 k = base + i;
        __u64 *key = bpf_map_lookup_elem(&inflight_keys, &k);
        if (!key || *(volatile __u64 *)key != 0)
            continue;
        if (__sync_val_compare_and_swap(key, 0, bio) != 0)
            continue; /* taken meanwhile by a program on another CPU */
        struct inflight *s = slot_at((int)k);
        if (!s)
            return -1;
        slot_publish(s, entry);
        return 0;
    }
    return -1;
}

/* The protected disk `dev`, or NULL: a few array loads, no hashing helper. */
static __always_inline struct protected_disk *protected_disk(__u32 dev)
{
    __u32 home = (dev * 0x9E3779B1u) >> (32 - PROTECTED_BITS);
    for (__u32 i = 0; i < PROTECTED_PROBES; i++) {
        __u32 slot = (home + i) & (PROTECTED_SLOTS - 1);
        struct protected_disk *d = bpf_map_lookup_elem(&protected_disks, &slot);
        if (d && d->dev == dev)
            return d;
    }
    return 0;
}

static __always_inline int is_tracked_op(__u32 op)
{
    return op == REQ_OP_WRITE || op == REQ_OP_DISCARD || op == REQ_OP_SECURE_ERASE ||
           op == REQ_OP_WRITE_ZEROES;
}

SEC("tp_btf/block_bio_queue")
int BPF_PROG(ferry_bio_queue, struct bio *bio)
{
    __u32 op = bio->bi_opf & REQ_OP_MASK;
    if (!is_tracked_op(op))
        return 0;
    __u32 sectors = bio->bi_iter.bi_size >> 9;
    if (sectors == 0)
        return 0; /* an empty flush */
    struct block_device *part = bio->bi_bdev;
    if (!part)
        return 0;
    /* Key on the whole disk; bi_sector is already whole-disk relative here. */
    __u32 dev = part->bd_disk->part0->bd_dev;
    if (dev == 0)
        return 0;
    struct protected_disk *disk = protected_disk(dev);
    if (!disk)
        return 0;
    struct cpu_local *local = this_cpu();
    if (!local)
        return 0;

    /* Ids from a per-CPU counter (no cache line shared between CPUs), tagged with the
     * CPU in the top bits: unique, and never near the userspace synthetic ids. */
    __u64 cpu = bpf_get_smp_processor_id();
    struct inflight entry = {
        .id = (cpu << 40) | ++local->next_id,
        .sector = bio->bi_iter.bi_sector,
        .sectors = sectors,
        .disk = disk->index,
        .op = (__u8)op,
        .chunk_shift = (__u8)disk->chunk_shift,
    };
    if (follow(address_of(local, bio, SCRATCH_BIO_QUEUE), &entry) != 0)
        report_untracked(&entry); /* no room to follow it: no completion will follow */
    return 0;
}

/* `split` is the new front part of the bio `split->bi_private` (bio_chain); the
 * original continues right after it and is not queued again. (The tracepoint's
 * `new_sector` argument is an unsigned int, truncated past 2 TiB: not used.) */
SEC("tp_btf/block_split")
int BPF_PROG(ferry_split, struct bio *split, unsigned int new_sector)
{
    struct cpu_local *local = this_cpu();
    if (!local)
        return 0;
    int parent_slot = find_slot(address_of(local, split->bi_private, SCRATCH_SPLIT));
    if (parent_slot < 0)
        return 0;
    struct inflight *parent = slot_at(parent_slot);
    if (!parent)
        return 0;
    __u64 end = parent->sector + parent->sectors;
    struct inflight front = *parent;
    front.sector = split->bi_iter.bi_sector;
    front.sectors = split->bi_iter.bi_size >> 9;
    __u64 rest = front.sector + front.sectors;
    if (follow(address_of(local, split, SCRATCH_SPLIT), &front) != 0) {
        /* Neither part can be followed now: forget the parent too, so that no
         * completion makes the front readable while it is in flight, and report the
         * whole write as untracked (userspace may not have read the entry yet): it stays
         * open in userspace and is resolved by the sweep, as suspect. */
        struct inflight whole = *parent;
        slot_free(parent_slot);
        if (front.sector < whole.sector)
            whole.sector = front.sector;
        whole.sectors = (__u32)(end - whole.sector);
        report_untracked(&whole);
        return 0;
    }
    if (rest > parent->sector && rest < end) {
        __sync_fetch_and_add(&parent->seq, 1);
        parent->sectors = (__u32)(end - rest);
        parent->sector = rest;
        __sync_fetch_and_add(&parent->seq, 1);
    }
    return 0;
}

/* Completes the in-flight bio at address `bio`. */
static __always_inline void complete_bio(__u64 bio, __u32 status)
{
    int slot = find_slot(bio);
    if (slot < 0)
        return;
    struct inflight *entry = slot_at(slot);
    if (!entry)
        return;
    /* Test knob: behave as if this completion never reached BPF (the entry stays; the
     * sweep resolves it, and a later bio at the same address replaces it). */
    __u64 drop_ppm = config_get(CONFIG_DROP_COMPLETE_PPM);
    if (drop_ppm && (bpf_get_prandom_u32() % 1000000) < drop_ppm)
        return;
    struct inflight done = *entry;
    slot_free(slot);
    /* Lost (log full): the id stays open in userspace and is swept; the fallback says
     * where too. */
    log_event(&done, EVENT_COMPLETE, (__u8)status, 0);
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(ferry_rq_complete, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
    struct cpu_local *local = this_cpu();
    if (!local)
        return 0;
    /* Bios complete in order; walk those that nr_bytes covers entirely. Plain loads
     * through the BTF pointers (no probe-read helper calls). */
    struct bio *bio = rq->bio;
    __u64 remaining = nr_bytes;
    for (int i = 0; i < MAX_RQ_BIOS && bio; i++) {
        __u32 size = bio->bi_iter.bi_size;
        if (size > remaining)
            break;
        remaining -= size;
        struct bio *next = bio->bi_next;
        complete_bio(address_of(local, bio, SCRATCH_RQ_COMPLETE), error);
        bio = next;
    }
    return 0;
}

SEC("tp_btf/block_bio_complete")
int BPF_PROG(ferry_bio_complete, struct request_queue *q, struct bio *bio)
{
    struct cpu_local *local = this_cpu();
    if (!local)
        return 0;
    complete_bio(address_of(local, bio, SCRATCH_BIO_COMPLETE), bio->bi_status);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
