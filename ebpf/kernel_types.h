/* The few kernel types the tracker reads, declared for CO-RE.
 *
 * Every struct carries preserve_access_index: clang records each field access as a BTF
 * relocation, and the loader (aya) rewrites the offsets against the running kernel's
 * BTF (/sys/kernel/btf/vmlinux). Field order and padding here do not need to match any
 * kernel; only the field names and types do. Declared by hand (instead of a full
 * bpftool-generated vmlinux.h) so the build does not depend on the build machine's
 * kernel. Oldest kernel these declarations fit: 5.16 (struct request->part, bio->bi_bdev, 4-argument-free
 * block tracepoints without the request_queue argument). */
#ifndef FERRY_KERNEL_TYPES_H
#define FERRY_KERNEL_TYPES_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef __u64 sector_t;
typedef __u32 dev_t;
typedef __u32 blk_opf_t;
typedef __u8 blk_status_t;

enum bpf_map_type {
    BPF_MAP_TYPE_HASH = 1,
    BPF_MAP_TYPE_ARRAY = 2,
    BPF_MAP_TYPE_PERCPU_ARRAY = 6,
    BPF_MAP_TYPE_RINGBUF = 27,
};

enum {
    BPF_F_MMAPABLE = 1024,
};

enum {
    BPF_ANY = 0,
    BPF_NOEXIST = 1,
    BPF_EXIST = 2,
};

enum {
    BPF_RB_NO_WAKEUP = 1,
    BPF_RB_FORCE_WAKEUP = 2,
};

enum {
    BPF_RB_AVAIL_DATA = 0,
};

struct gendisk;

struct block_device {
    sector_t bd_start_sect;
    dev_t bd_dev;
    struct gendisk *bd_disk;
} __attribute__((preserve_access_index));

struct gendisk {
    struct block_device *part0;
} __attribute__((preserve_access_index));

struct bvec_iter {
    sector_t bi_sector;
    unsigned int bi_size;
} __attribute__((preserve_access_index));

struct bio {
    struct bio *bi_next;
    struct block_device *bi_bdev;
    blk_opf_t bi_opf;
    blk_status_t bi_status;
    struct bvec_iter bi_iter;
    void *bi_private;
} __attribute__((preserve_access_index));

struct request_queue;

struct request {
    struct request_queue *q;
    struct bio *bio;
} __attribute__((preserve_access_index));

#endif
