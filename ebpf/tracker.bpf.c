// SPDX-License-Identifier: GPL-2.0
/* ferry's write tracker: reports every write, discard and write-zeroes to the protected
 * disks, at submission (the range is dirty: no write goes unnoticed) and at completion
 * (the range is readable: its new content is on the device). See tracker/src/lib.rs for
 * the userspace side and the invariants; the event layout is mirrored in
 * tracker/src/event.rs.
 *
 * A submission is recorded in the in-flight map only, not in the ring buffer: userspace
 * reads the map on every poll (tracker/src/sys/bpf.rs, `in_flight`), so a write still in
 * flight is dirty from the first poll after its submission, and one that completes first
 * is reported by its COMPLETE event, which carries the same id and range. One ring record
 * per write instead of two: at 4 KiB the ring buffer was half of the tracker's cost.
 * Only a submission the map has no room for, or the entry of a bio whose completion
 * never reached BPF found when its address is reused, goes to the ring (SUBMIT,
 * FLAG_UNTRACKED): userspace resolves those by the sweep.
 *
 * Attach points (BTF tracepoints; fentry does not load on lockdown kernels):
 *   block_bio_queue     submission of a bio: in-flight entry keyed by bio
 *   block_split         a queued bio split in two: the in-flight entry follows both parts
 *   block_rq_complete   blk-mq request completion: COMPLETE for each in-flight bio in it
 *   block_bio_complete  bio-based devices, and bios that fail before becoming requests
 *
 * Completions are best effort (some never reach BPF): userspace sweeps in-flight
 * entries that age out. A ring buffer reservation that fails bumps the drop counter and
 * the per-chunk fallback counters of the range, so userspace learns where it lost
 * events. Minimum kernel: 5.16 (see kernel_types.h), BTF required. */

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
#define FLAG_UNTRACKED 1 /* submitted, but the in-flight map was full: no completion will follow */

#define MAX_DISKS 32
#define FALLBACK_CHUNKS 16384 /* fallback counters per disk */
#define MAX_FALLBACK_STEPS 64 /* chunks marked per lost event; beyond: whole-disk counter */
#define MAX_RQ_BIOS 256       /* bios walked per completed request (merges beyond: swept) */

/* Config slots (array "config"). */
#define CONFIG_WAKEUP_BYTES 0       /* wake userspace once this much is pending */
#define CONFIG_DROP_COMPLETE_PPM 1  /* test knob: drop this many completions per million */
#define CONFIG_SLOTS 2

struct disk_info {
    __u32 index;       /* userspace's disk number, 0..MAX_DISKS */
    __u32 chunk_shift; /* log2 of the sectors per fallback chunk */
};

/* Mirrored by tracker/src/sys/bpf.rs (InFlightEntry, 40 bytes): userspace reads it. */
struct inflight {
    __u64 id;
    __u64 sector;
    __u64 time_ns; /* submission */
    __u32 sectors;
    __u32 disk;
    __u32 op;
    __u32 chunk_shift;
};

/* Mirrored by tracker/src/event.rs (40 bytes). */
struct ferry_event {
    __u64 id;
    __u64 sector;
    __u64 time_ns;
    __u32 sectors;
    __u32 disk;
    __u8 kind;
    __u8 op;
    __u8 status;
    __u8 pad;
    __u32 flags;
};

/* Protected whole disks: kernel dev_t (major << 20 | minor) -> disk info. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MAX_DISKS);
    __type(key, __u32);
    __type(value, struct disk_info);
} protected_disks SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 16 << 20);
} events SEC(".maps");

/* bio pointer -> what it writes. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384); /* IN_FLIGHT_ENTRIES in tracker/src/sys/bpf.rs */
    __type(key, __u64);
    __type(value, struct inflight);
} inflight SEC(".maps");

/* Events that could not be reserved. */
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

/* Per-CPU submission id counters. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} ids SEC(".maps");

/* Slot 0 is unused (ids live in `ids`). Slot 1 is the epoch userspace sets at first load;
 * a restarted agent finding its epoch knows no gap opened while it was away. Slot 2 is
 * a hash of the programs, so an agent never reattaches to programs of another build. */
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

static __always_inline void submit_event(struct ferry_event *e)
{
    __u64 pending = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
    __u64 threshold = config_get(CONFIG_WAKEUP_BYTES);
    bpf_ringbuf_submit(e, pending >= threshold ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/* Reports a submission the in-flight map cannot follow (SUBMIT, FLAG_UNTRACKED): no
 * completion will be reported for it; userspace resolves it by the sweep. */
static __always_inline void report_untracked(const struct inflight *w)
{
    struct ferry_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e) {
        /* Where first, then how many: userspace rescans the counters when it sees the
         * drop count move, and must then find the chunks already marked. */
        mark_fallback(w->disk, w->chunk_shift, w->sector, w->sectors);
        count_drop();
        return;
    }
    e->id = w->id;
    e->sector = w->sector;
    e->time_ns = w->time_ns;
    e->sectors = w->sectors;
    e->disk = w->disk;
    e->kind = EVENT_SUBMIT;
    e->op = (__u8)w->op;
    e->status = 0;
    e->pad = 0;
    e->flags = FLAG_UNTRACKED;
    submit_event(e);
}

/* Records `entry` in the in-flight map under the bio address `key`; non-zero when the
 * map has no room. An entry already there belongs to a bio whose completion never
 * reached BPF: its write is done, but userspace may not have read the entry yet, so it
 * is reported before being replaced, or the write would vanish with its entry. */
static __always_inline int follow(__u64 key, const struct inflight *entry)
{
    if (bpf_map_update_elem(&inflight, &key, entry, BPF_NOEXIST) == 0)
        return 0;
    struct inflight *stale = bpf_map_lookup_elem(&inflight, &key);
    if (!stale)
        return -1;
    struct inflight old = *stale;
    report_untracked(&old);
    return bpf_map_update_elem(&inflight, &key, entry, BPF_ANY);
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
    struct disk_info *disk = bpf_map_lookup_elem(&protected_disks, &dev);
    if (!disk)
        return 0;

    /* Ids from a per-CPU counter (no cache line shared between CPUs), tagged with the
     * CPU in the top bits: unique, and never near the userspace synthetic ids. */
    __u32 zero = 0;
    __u64 *counter = bpf_map_lookup_elem(&ids, &zero);
    if (!counter)
        return 0;
    __u64 cpu = bpf_get_smp_processor_id();
    struct inflight entry = {
        .id = (cpu << 40) | ++*counter,
        .sector = bio->bi_iter.bi_sector,
        .time_ns = bpf_ktime_get_ns(),
        .sectors = sectors,
        .disk = disk->index,
        .op = op,
        .chunk_shift = disk->chunk_shift,
    };
    __u64 key = (__u64)bio;
    if (follow(key, &entry) != 0)
        report_untracked(&entry); /* no room to follow it: no completion will follow */
    return 0;
}

/* `split` is the new front part of the bio `split->bi_private` (bio_chain); the
 * original continues right after it and is not queued again. (The tracepoint's
 * `new_sector` argument is an unsigned int, truncated past 2 TiB: not used.) */
SEC("tp_btf/block_split")
int BPF_PROG(ferry_split, struct bio *split, unsigned int new_sector)
{
    __u64 parent_key = (__u64)split->bi_private;
    struct inflight *parent = bpf_map_lookup_elem(&inflight, &parent_key);
    if (!parent)
        return 0;
    __u64 end = parent->sector + parent->sectors;
    struct inflight front = *parent;
    front.sector = split->bi_iter.bi_sector;
    front.sectors = split->bi_iter.bi_size >> 9;
    __u64 rest = front.sector + front.sectors;
    __u64 split_key = (__u64)split;
    if (follow(split_key, &front) != 0) {
        /* Neither part can be followed now: forget the parent too, so that no
         * completion makes the front readable while it is in flight, and report the
         * whole write as untracked (userspace may not have read the entry yet): it stays
         * open in userspace and is resolved by the sweep, as suspect. */
        struct inflight whole = *parent;
        bpf_map_delete_elem(&inflight, &parent_key);
        if (front.sector < whole.sector)
            whole.sector = front.sector;
        whole.sectors = (__u32)(end - whole.sector);
        report_untracked(&whole);
        return 0;
    }
    if (rest > parent->sector && rest < end) {
        parent->sectors = (__u32)(end - rest);
        parent->sector = rest;
    }
    return 0;
}

/* Completes the in-flight bio `bio` (its address is the in-flight key). */
static __always_inline void complete_bio(struct bio *bio, __u32 status)
{
    __u64 key = (__u64)bio;
    struct inflight *entry = bpf_map_lookup_elem(&inflight, &key);
    if (!entry)
        return;
    /* Test knob: behave as if this completion never reached BPF (the entry stays; the
     * sweep resolves it, and a later bio at the same address replaces it). */
    __u64 drop_ppm = config_get(CONFIG_DROP_COMPLETE_PPM);
    if (drop_ppm && (bpf_get_prandom_u32() % 1000000) < drop_ppm)
        return;
    struct inflight done = *entry;
    bpf_map_delete_elem(&inflight, &key);

    struct ferry_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e) {
        /* The id stays open in userspace and is swept; the fallback says where too. */
        mark_fallback(done.disk, done.chunk_shift, done.sector, done.sectors);
        count_drop();
        return;
    }
    e->id = done.id;
    e->sector = done.sector;
    e->time_ns = done.time_ns; /* when it was submitted: one clock read per write */
    e->sectors = done.sectors;
    e->disk = done.disk;
    e->kind = EVENT_COMPLETE;
    e->op = (__u8)done.op;
    e->status = (__u8)status;
    e->pad = 0;
    e->flags = 0;
    submit_event(e);
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(ferry_rq_complete, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
    /* Bios complete in order; walk those that nr_bytes covers entirely. Plain loads
     * through the BTF pointers (no probe-read helper calls: they were a fifth of this
     * program's cost). */
    struct bio *bio = rq->bio;
    __u64 remaining = nr_bytes;
    for (int i = 0; i < MAX_RQ_BIOS && bio; i++) {
        __u32 size = bio->bi_iter.bi_size;
        if (size > remaining)
            break;
        remaining -= size;
        struct bio *next = bio->bi_next;
        complete_bio(bio, error);
        bio = next;
    }
    return 0;
}

SEC("tp_btf/block_bio_complete")
int BPF_PROG(ferry_bio_complete, struct request_queue *q, struct bio *bio)
{
    complete_bio(bio, bio->bi_status);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
