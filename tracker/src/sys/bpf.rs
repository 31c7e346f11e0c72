//! Loading, attaching, pinning and reading the tracker's BPF programs (aya).
//!
//! Fresh load: the object built from `ebpf/tracker.bpf.c` is loaded with BTF
//! (CO-RE relocations against /sys/kernel/btf/vmlinux), its four programs attached to
//! the block tracepoints. With a pin directory, every map and link is pinned there, so
//! the programs stay attached and keep filling their logs while no agent runs; a
//! later [`Bpf::open`] finds the pinned links and reattaches to the same maps instead of
//! loading again. Without one, everything detaches when the [`Bpf`] drops.
//!
//! Pin layout (`DIR` = e.g. `/sys/fs/bpf/ferry`): `DIR/maps/<map>`, `DIR/links/<program>`.
//! Minimum kernel: 6.1 with BTF, x86_64 (see `ebpf/tracker.bpf.c`).
//!
//! Userspace reads the programs' in-flight table and per-CPU logs through shared memory
//! (mmap), with no system call per poll; the layouts are `SLOT_*` and `RECORD_*` here,
//! `struct inflight` and `struct log_record` in the C program.

use super::blockdev::KernelDev;
use aya::maps::{Array, Map, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{BtfTracePoint, ProgramFd};
use aya::{Btf, Ebpf, EbpfLoader, Pod};
use ferry_tracker_core::event::EVENT_LEN;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracker.bpf.o"));

/// Programs and the tracepoints they attach to.
const PROGRAMS: [(&str, &str); 4] = [
    ("ferry_bio_queue", "block_bio_queue"),
    ("ferry_split", "block_split"),
    ("ferry_rq_complete", "block_rq_complete"),
    ("ferry_bio_complete", "block_bio_complete"),
];
/// The programs that see submissions: a run of theirs the kernel skips is a write
/// that may go unseen.
const SUBMISSION_PROGRAMS: [&str; 2] = ["ferry_bio_queue", "ferry_split"];
/// `BPF_OBJ_GET_INFO_BY_FD` (include/uapi/linux/bpf.h).
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const MAPS: [&str; 10] = [
    "cpu_local",
    "protected_disks",
    "events",
    "log_pos",
    "inflight_keys",
    "inflight",
    "drops",
    "fallback",
    "config",
    "state",
];

/// Slots of the in-flight table and slots per bucket (`INFLIGHT_SLOTS`, `INFLIGHT_WAYS`
/// in the C program).
const IN_FLIGHT_SLOTS: usize = 16384;
const IN_FLIGHT_WAYS: usize = 8;
/// Slots of the protected disk table and how far from its home slot a disk may sit
/// (`PROTECTED_*`).
const PROTECTED_BITS: u32 = 7;
const PROTECTED_SLOTS: u32 = 1 << PROTECTED_BITS;
const PROTECTED_PROBES: u32 = 8;
/// What all CPUs' logs may take together, and the fewest records a log gets.
const LOG_BUDGET_BYTES: usize = 32 << 20;
const MIN_LOG_RECORDS: usize = 4096;
/// Values per CPU in `log_pos`, and where the tail is among them (`LOG_POS_*`).
const LOG_POS_STRIDE: usize = 16;
const LOG_POS_TAIL: usize = 8;

/// Most disks one tracker protects (`MAX_DISKS` in the C program).
pub const MAX_DISKS: u32 = 32;
/// Fallback counters per disk (`FALLBACK_CHUNKS`), plus one whole-disk counter.
pub const FALLBACK_CHUNKS: u32 = 16384;
/// Config slots (`CONFIG_*`).
const CONFIG_LOG_RECORDS: u32 = 0;
const CONFIG_DROP_COMPLETE_PPM: u32 = 1;
/// State slots: 1 the epoch, 2 a hash of the programs (0 is unused).
const STATE_EPOCH: u32 = 1;
const STATE_PROGRAMS: u32 = 2;

/// Identifies this build's BPF object, so an upgraded agent never reattaches to pinned
/// programs of another layout.
fn programs_hash() -> u64 {
    u64::from(crc32fast::hash(OBJECT)) | 1 << 32
}
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What the BPF side knows of a protected disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskInfo {
    pub index: u32,
    /// log2 of the sectors per fallback chunk.
    pub chunk_shift: u32,
}

/// A slot of the protected disk table (`struct protected_disk`); `dev` 0 is empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
struct ProtectedSlot {
    dev: u32,
    index: u32,
    chunk_shift: u32,
}

// SAFETY: ProtectedSlot is repr(C), three u32 with no padding, valid for every bit
// pattern.
unsafe impl Pod for ProtectedSlot {}

/// The slot a disk's search starts at (`protected_disk` in the C program).
fn protected_home(dev: u32) -> u32 {
    dev.wrapping_mul(0x9E37_79B1) >> (32 - PROTECTED_BITS)
}

/// A write in flight, as the programs record it at submission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InFlightEntry {
    /// The submission id (CPU << 40 | a per-CPU count), also in its COMPLETE event.
    pub id: u64,
    /// First sector, whole-disk relative.
    pub sector: u64,
    pub sectors: u32,
    /// Userspace's disk number.
    pub disk: u32,
}

/// Byte offsets in a slot of the in-flight table (`struct inflight`, 32 bytes): id,
/// sector (u64), sectors, disk, seq (u32), op, chunk_shift (u8), pad.
const SLOT_BYTES: usize = 32;
const SLOT_ID: usize = 0;
const SLOT_SECTOR: usize = 8;
const SLOT_SECTORS: usize = 16;
const SLOT_DISK: usize = 20;
const SLOT_SEQ: usize = 24;
/// A log record (`struct log_record`): the commit word (sequence number + 1, written
/// last), then the event ([`ferry_tracker_core::event`]).
const RECORD_BYTES: usize = 8 + EVENT_LEN;

/// Why the BPF side could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error(
        "the kernel has no BTF (/sys/kernel/btf/vmlinux); ferry's tracker needs a kernel built with CONFIG_DEBUG_INFO_BTF"
    )]
    NoBtf(#[source] aya::BtfError),
    #[error("loading the BPF programs failed (needs root or CAP_BPF + CAP_PERFMON)")]
    Load(#[source] aya::EbpfError),
    #[error(
        "BPF program {program} could not be loaded or attached to {tracepoint} (needs root or CAP_BPF + CAP_PERFMON, and BTF tracepoints)"
    )]
    Program {
        program: &'static str,
        tracepoint: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("BPF map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pinning in {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting bpffs on {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("the BPF object has no {0}: programs and loader are out of step")]
    Missing(&'static str),
    #[error(
        "the protected disk table has no free slot near disk {dev:#x}'s place (too many disks whose numbers collide)"
    )]
    ProtectedFull { dev: u32 },
    #[error("{0}")]
    Unsupported(String),
    #[error("reading what the kernel knows of program {program}")]
    ProgramInfo {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("counting the CPUs for the tracker's logs ({0})")]
    Cpus(String),
    #[error("mapping BPF map {name} into memory")]
    Mmap {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> BpfError {
    move |source| BpfError::Map { name, source }
}

fn pin_err(path: &Path) -> impl Fn(std::io::Error) -> BpfError + '_ {
    move |source| BpfError::Pin {
        path: path.to_owned(),
        source,
    }
}

/// How the tracker came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Programs loaded now: nothing before this moment was tracked.
    Fresh,
    /// Reattached to pinned programs that kept tracking; `epoch` is what the previous
    /// agent set.
    Reattached { epoch: u64 },
}

/// Options for loading.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Records in each CPU's log (a power of two).
    pub log_records: u32,
    /// Pin maps and links here (a directory on bpffs), or detach on drop.
    pub pin_dir: Option<PathBuf>,
}

/// A BPF array created with `BPF_F_MMAPABLE`, mapped shared into this process. The
/// programs change it concurrently, so it is only ever accessed atomically.
#[derive(Debug)]
struct Mapped {
    ptr: *mut u8,
    bytes: usize,
}

impl Mapped {
    /// Maps the first `bytes` of map `name`'s values (read-only unless `writable`).
    fn map(
        name: &'static str,
        data: &MapData,
        bytes: usize,
        writable: bool,
    ) -> Result<Self, BpfError> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&data.fd().as_fd());
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: mapping a BPF array created with BPF_F_MMAPABLE, shared; `bytes` is at
        // most its value area (the caller sizes it from the map's definition). The
        // mapping lives until `Drop` unmaps it and is only accessed through `atomic_u64`
        // and `atomic_u32`.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), bytes, prot, libc::MAP_SHARED, fd, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(BpfError::Mmap {
                name,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            ptr: ptr.cast(),
            bytes,
        })
    }

    /// The u64 at byte `offset`. Stores only through a writable mapping.
    fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.bytes,
            "offset {offset}"
        );
        // SAFETY: in bounds and 8-byte aligned (checked above; the mapping is page
        // aligned) within a mapping that lives as long as `self`; the programs change it
        // concurrently, so it is only accessed atomically.
        unsafe { AtomicU64::from_ptr(self.ptr.add(offset).cast()) }
    }

    fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.bytes,
            "offset {offset}"
        );
        // SAFETY: as in `atomic_u64`, 4-byte aligned.
        unsafe { AtomicU32::from_ptr(self.ptr.add(offset).cast()) }
    }

    /// `count` u64s from byte `offset`.
    fn atomic_u64s(&self, offset: usize, count: usize) -> &[AtomicU64] {
        assert!(
            offset.is_multiple_of(8) && offset + count * 8 <= self.bytes,
            "offset {offset} count {count}"
        );
        // SAFETY: as in `atomic_u64`, for each of the `count` in-bounds, aligned u64s.
        unsafe { std::slice::from_raw_parts(self.ptr.add(offset).cast::<AtomicU64>(), count) }
    }

    fn u64_at(&self, offset: usize) -> u64 {
        self.atomic_u64(offset).load(Ordering::Acquire)
    }

    fn u32_at(&self, offset: usize) -> u32 {
        self.atomic_u32(offset).load(Ordering::Acquire)
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`.
        unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
    }
}

// SAFETY: the mapping is shared memory only accessed with atomics; sharing the pointer
// across threads is as safe as sharing the map's fd.
unsafe impl Send for Mapped {}

/// The loaded (or reattached) tracker programs and their maps.
pub struct Bpf {
    /// The per-CPU logs and their positions (head, tail per CPU).
    events: Mapped,
    log_pos: Mapped,
    cpus: usize,
    log_records: usize,
    /// The in-flight table's keys (bio addresses, 0 = free) and slots.
    inflight_keys: Mapped,
    inflight: Mapped,
    protected: Array<MapData, ProtectedSlot>,
    /// The programs, to read their statistics.
    programs: Vec<(&'static str, ProgramFd)>,
    drops: PerCpuArray<MapData, u64>,
    config: Array<MapData, u64>,
    state: Array<MapData, u64>,
    fallback: Mapped,
    /// Holds the links of an unpinned load: dropping it detaches.
    _ebpf: Option<Ebpf>,
    /// The pinned programs' links, held open while this process runs: removing the
    /// pins (`ferry track --detach`) cannot detach a running tracker and lose writes
    /// unnoticed; it takes effect when the process ends, and the next start, finding no
    /// pins, reports the gap.
    _links: Vec<FdLink>,
}

impl std::fmt::Debug for Bpf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bpf")
            .field("pinned", &self._ebpf.is_none())
            .finish_non_exhaustive()
    }
}

impl Bpf {
    /// Reattaches to pinned programs in `options.pin_dir` if they are there, else loads
    /// and attaches them (and pins them if asked).
    pub fn open(options: &LoadOptions) -> Result<(Self, Origin), BpfError> {
        if let Some(dir) = &options.pin_dir {
            ensure_bpffs(dir)?;
            if PROGRAMS
                .iter()
                .all(|(p, _)| dir.join("links").join(p).exists())
            {
                // Pins of another build (another layout fails to open; the same layout
                // has another hash): their events may not mean what ours do.
                if let Ok(bpf) = Self::from_pins(dir) {
                    let same_programs = bpf
                        .state
                        .get(&STATE_PROGRAMS, 0)
                        .is_ok_and(|h| h == programs_hash());
                    if same_programs {
                        let epoch = bpf.state.get(&STATE_EPOCH, 0).map_err(map_err("state"))?;
                        return Ok((bpf, Origin::Reattached { epoch }));
                    }
                }
            }
            // Partial, stale or foreign pins: start over (a fresh load is a gap).
            remove_pins(dir)?;
        }
        Ok((Self::load(options)?, Origin::Fresh))
    }

    fn load(options: &LoadOptions) -> Result<Self, BpfError> {
        supported()?;
        let btf = Btf::from_sys_fs().map_err(BpfError::NoBtf)?;
        let cpus =
            aya::util::nr_cpus().map_err(|(what, e)| BpfError::Cpus(format!("{what}: {e}")))?;
        let log_records = log_records_per_cpu(options.log_records, cpus);
        let entries = |per_cpu: usize| {
            u32::try_from(cpus * per_cpu).map_err(|_| BpfError::Cpus(format!("{cpus} CPUs")))
        };
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .map_max_entries("events", entries(log_records)?)
            .map_max_entries("log_pos", entries(LOG_POS_STRIDE)?)
            .load(OBJECT)
            .map_err(BpfError::Load)?;
        // Before the programs attach: they log nothing while this is 0.
        let mut config: Array<_, u64> = ebpf
            .map_mut("config")
            .ok_or(BpfError::Missing("config"))?
            .try_into()
            .map_err(map_err("config"))?;
        config
            .set(CONFIG_LOG_RECORDS, log_records as u64, 0)
            .map_err(map_err("config"))?;
        let mut links = Vec::new();
        let mut held = Vec::new();
        let mut programs = Vec::new();
        for (program, tracepoint) in PROGRAMS {
            let err = |source| BpfError::Program {
                program,
                tracepoint,
                source,
            };
            let prog: &mut BtfTracePoint = ebpf
                .program_mut(program)
                .ok_or(BpfError::Missing(program))?
                .try_into()
                .map_err(err)?;
            prog.load(tracepoint, &btf).map_err(err)?;
            let fd = prog.fd().map_err(err)?.try_clone();
            programs.push((
                program,
                fd.map_err(|source| BpfError::ProgramInfo { program, source })?,
            ));
            let id = prog.attach().map_err(err)?;
            if options.pin_dir.is_some() {
                links.push((program, prog.take_link(id).map_err(err)?));
            }
        }
        if let Some(dir) = &options.pin_dir {
            let maps_dir = dir.join("maps");
            let links_dir = dir.join("links");
            std::fs::create_dir_all(&maps_dir).map_err(pin_err(&maps_dir))?;
            std::fs::create_dir_all(&links_dir).map_err(pin_err(&links_dir))?;
            for name in MAPS {
                let map = ebpf.map(name).ok_or(BpfError::Missing(name))?;
                let path = maps_dir.join(name);
                map.pin(&path).map_err(|e| BpfError::Pin {
                    path: path.clone(),
                    source: std::io::Error::other(e),
                })?;
            }
            // Links last: their presence is what marks the pins complete.
            for (program, link) in links {
                let path = links_dir.join(program);
                let fd: FdLink = link.into();
                let pinned = fd.pin(&path).map_err(|e| BpfError::Pin {
                    path: path.clone(),
                    source: std::io::Error::other(e),
                })?;
                held.push(pinned.into());
            }
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(BpfError::Missing(name))
        };
        let mut bpf = Self {
            events: map_array(take(&mut ebpf, "events")?, "events", false)?,
            log_pos: map_array(take(&mut ebpf, "log_pos")?, "log_pos", true)?,
            cpus,
            log_records,
            inflight_keys: map_array(take(&mut ebpf, "inflight_keys")?, "inflight_keys", false)?,
            inflight: map_array(take(&mut ebpf, "inflight")?, "inflight", false)?,
            protected: Array::try_from(take(&mut ebpf, "protected_disks")?)
                .map_err(map_err("protected_disks"))?,
            programs,
            drops: PerCpuArray::try_from(take(&mut ebpf, "drops")?).map_err(map_err("drops"))?,
            config: Array::try_from(take(&mut ebpf, "config")?).map_err(map_err("config"))?,
            state: Array::try_from(take(&mut ebpf, "state")?).map_err(map_err("state"))?,
            fallback: map_array(take(&mut ebpf, "fallback")?, "fallback", false)?,
            _ebpf: options.pin_dir.is_none().then_some(ebpf),
            _links: held,
        };
        bpf.state
            .set(STATE_PROGRAMS, programs_hash(), 0)
            .map_err(map_err("state"))?;
        Ok(bpf)
    }

    fn from_pins(dir: &Path) -> Result<Self, BpfError> {
        let open = |name: &'static str| {
            let data = MapData::from_pin(dir.join("maps").join(name)).map_err(map_err(name))?;
            Map::from_map_data(data).map_err(map_err(name))
        };
        let mapped = |name: &'static str| map_array(open(name)?, name, false);
        let links: Vec<FdLink> = PROGRAMS
            .iter()
            .map(|(program, _)| {
                let path = dir.join("links").join(program);
                PinnedLink::from_pin(&path)
                    .map(FdLink::from)
                    .map_err(|e| BpfError::Pin {
                        path,
                        source: std::io::Error::other(e),
                    })
            })
            .collect::<Result<_, _>>()?;
        let config: Array<_, u64> = Array::try_from(open("config")?).map_err(map_err("config"))?;
        let log_records = config
            .get(&CONFIG_LOG_RECORDS, 0)
            .map_err(map_err("config"))?;
        let log_pos = map_array(open("log_pos")?, "log_pos", true)?;
        let cpus = log_pos.bytes / 8 / LOG_POS_STRIDE;
        let events = mapped("events")?;
        let log_records = usize::try_from(log_records)
            .ok()
            .filter(|n| n.is_power_of_two() && events.bytes >= cpus * n * RECORD_BYTES)
            .ok_or(BpfError::Missing("per-CPU logs of the size configured"))?;
        let inflight_keys = mapped("inflight_keys")?;
        let inflight = mapped("inflight")?;
        if inflight_keys.bytes < IN_FLIGHT_SLOTS * 8
            || inflight.bytes < IN_FLIGHT_SLOTS * SLOT_BYTES
        {
            return Err(BpfError::Missing("an in-flight table of this build's size"));
        }
        Ok(Self {
            events,
            log_pos,
            cpus,
            log_records,
            inflight_keys,
            inflight,
            protected: Array::try_from(open("protected_disks")?)
                .map_err(map_err("protected_disks"))?,
            programs: PROGRAMS
                .iter()
                .zip(&links)
                .map(|((program, _), link)| Ok((*program, program_of(program, link)?)))
                .collect::<Result<_, BpfError>>()?,
            drops: PerCpuArray::try_from(open("drops")?).map_err(map_err("drops"))?,
            config,
            state: Array::try_from(open("state")?).map_err(map_err("state"))?,
            fallback: mapped("fallback")?,
            _ebpf: None,
            _links: links,
        })
    }

    /// The first of `dev`'s slots (those the programs search for it) that holds the
    /// disk number `holding`: `dev` itself, or 0 for a free one.
    fn protected_slot(&self, dev: u32, holding: u32) -> Result<Option<u32>, BpfError> {
        let home = protected_home(dev);
        for i in 0..PROTECTED_PROBES {
            let slot = (home + i) % PROTECTED_SLOTS;
            let held = self
                .protected
                .get(&slot, 0)
                .map_err(map_err("protected_disks"))?;
            if held.dev == holding {
                return Ok(Some(slot));
            }
        }
        Ok(None)
    }

    fn set_protected(&mut self, slot: u32, value: ProtectedSlot) -> Result<(), BpfError> {
        self.protected
            .set(slot, value, 0)
            .map_err(map_err("protected_disks"))
    }

    /// Starts (or keeps) tracking `dev` as disk `info.index`.
    pub fn protect(&mut self, dev: KernelDev, info: DiskInfo) -> Result<(), BpfError> {
        let value = ProtectedSlot {
            dev: dev.0,
            index: info.index,
            chunk_shift: info.chunk_shift,
        };
        if let Some(slot) = self.protected_slot(dev.0, dev.0)? {
            // Only index and shift change: a program reads either the old or the new.
            return self.set_protected(slot, value);
        }
        let slot = self
            .protected_slot(dev.0, 0)?
            .ok_or(BpfError::ProtectedFull { dev: dev.0 })?;
        // The disk's number last, so no program finds it half written.
        self.set_protected(slot, ProtectedSlot { dev: 0, ..value })?;
        self.set_protected(slot, value)
    }

    /// The disks the BPF side tracks now.
    pub fn protected(&self) -> Result<Vec<(KernelDev, DiskInfo)>, BpfError> {
        let mut out = Vec::new();
        for slot in 0..PROTECTED_SLOTS {
            let held = self
                .protected
                .get(&slot, 0)
                .map_err(map_err("protected_disks"))?;
            if held.dev != 0 {
                out.push((
                    KernelDev(held.dev),
                    DiskInfo {
                        index: held.index,
                        chunk_shift: held.chunk_shift,
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Stops tracking `dev`.
    pub fn unprotect(&mut self, dev: KernelDev) -> Result<(), BpfError> {
        match self.protected_slot(dev.0, dev.0)? {
            Some(slot) => self.set_protected(slot, ProtectedSlot::default()),
            None => Ok(()),
        }
    }

    fn set_config(&mut self, slot: u32, value: u64) -> Result<(), BpfError> {
        self.config.set(slot, value, 0).map_err(map_err("config"))
    }

    /// Test knob: make the programs drop this many completions per million.
    pub fn drop_completions_ppm(&mut self, ppm: u64) -> Result<(), BpfError> {
        self.set_config(CONFIG_DROP_COMPLETE_PPM, ppm)
    }

    /// The epoch the owner of the pins set.
    pub fn set_epoch(&mut self, epoch: u64) -> Result<(), BpfError> {
        self.state
            .set(STATE_EPOCH, epoch, 0)
            .map_err(map_err("state"))
    }

    /// Hands every event logged since the last call to `f`, CPU by CPU in the order
    /// each CPU logged them; returns how many. A record reserved but not yet published
    /// (its program is still writing it) ends that CPU's batch: it comes next time.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8; EVENT_LEN])) -> usize {
        let mut n = 0;
        let mut event = [0u8; EVENT_LEN];
        for cpu in 0..self.cpus {
            let pos = cpu * LOG_POS_STRIDE * 8;
            let head = self.log_pos.u64_at(pos);
            let tail_word = self.log_pos.atomic_u64(pos + LOG_POS_TAIL * 8);
            let mut tail = tail_word.load(Ordering::Relaxed);
            while tail < head {
                let index = usize::try_from(tail % self.log_records as u64)
                    .expect("below the records of a log");
                let at = (cpu * self.log_records + index) * RECORD_BYTES;
                if self.events.u64_at(at) != tail + 1 {
                    break;
                }
                for (i, word) in event.chunks_exact_mut(8).enumerate() {
                    word.copy_from_slice(&self.events.u64_at(at + 8 + i * 8).to_ne_bytes());
                }
                f(&event);
                n += 1;
                tail += 1;
            }
            // After the reads: the program may reuse the records from here on.
            tail_word.store(tail, Ordering::Release);
        }
        n
    }

    /// Appends every write the in-flight table holds to `out`: a scan of its keys
    /// through shared memory, no system call. A slot is taken only if its sequence and
    /// id are the same before and after its fields are read (the protocol is described
    /// at `struct inflight` in the C program); a slot still changing after a few tries
    /// is skipped: its write either completes, and its COMPLETE event follows, or is
    /// found by the next scan. Writes that complete during the scan may be returned:
    /// their COMPLETE event follows in the log.
    pub fn in_flight(&self, out: &mut Vec<InFlightEntry>) {
        let keys = self.inflight_keys.atomic_u64s(0, IN_FLIGHT_SLOTS);
        for (bucket, ways) in keys.chunks_exact(IN_FLIGHT_WAYS).enumerate() {
            // Most buckets are empty: one test for the bucket's cache line.
            if ways
                .iter()
                .fold(0, |any, k| any | k.load(Ordering::Relaxed))
                == 0
            {
                continue;
            }
            for (way, key) in ways.iter().enumerate() {
                if key.load(Ordering::Relaxed) != 0 {
                    self.read_slot(bucket * IN_FLIGHT_WAYS + way, out);
                }
            }
        }
    }

    /// Appends the write in slot `slot` to `out` if it holds one, read consistently.
    /// A few tries: the programs' writing sections are a few instructions long.
    fn read_slot(&self, slot: usize, out: &mut Vec<InFlightEntry>) {
        let at = slot * SLOT_BYTES;
        for _ in 0..4 {
            let seq = self.inflight.u32_at(at + SLOT_SEQ);
            let id = self.inflight.u64_at(at + SLOT_ID);
            if id == 0 {
                return;
            }
            if seq.is_multiple_of(2) {
                let entry = InFlightEntry {
                    id,
                    sector: self.inflight.u64_at(at + SLOT_SECTOR),
                    sectors: self.inflight.u32_at(at + SLOT_SECTORS),
                    disk: self.inflight.u32_at(at + SLOT_DISK),
                };
                // Acquire loads: the fields were read before these.
                if self.inflight.u64_at(at + SLOT_ID) == id
                    && self.inflight.u32_at(at + SLOT_SEQ) == seq
                {
                    out.push(entry);
                    return;
                }
            }
            std::hint::spin_loop();
        }
    }

    /// Runs of the submission programs the kernel skipped since they were loaded: from
    /// Linux 6.1 a tracepoint program that fires on a CPU where it is already running
    /// (a bio submitted from an interrupt while another is being tracked) is not run,
    /// only counted (`recursion_misses`). Each may be a write never seen.
    pub fn skipped_submission_runs(&self) -> Result<u64, BpfError> {
        let mut total = 0;
        for (program, fd) in &self.programs {
            if SUBMISSION_PROGRAMS.contains(program) {
                total += recursion_misses(fd)
                    .map_err(|source| BpfError::ProgramInfo { program, source })?;
            }
        }
        Ok(total)
    }

    /// Events the programs could not log, since they were loaded.
    pub fn drops(&self) -> Result<u64, BpfError> {
        let per_cpu = self.drops.get(&0, 0).map_err(map_err("drops"))?;
        Ok(per_cpu.iter().sum())
    }

    /// The fallback counters of disk `index`: FALLBACK_CHUNKS chunk counters, then the
    /// whole-disk counter.
    pub fn fallback_counters(&self, index: u32) -> Vec<u64> {
        let base = (index * (FALLBACK_CHUNKS + 1)) as usize;
        (0..=FALLBACK_CHUNKS as usize)
            .map(|i| self.fallback.u64_at((base + i) * 8))
            .collect()
    }
}

/// The program a pinned link runs.
fn program_of(program: &'static str, link: &FdLink) -> Result<ProgramFd, BpfError> {
    let err = |e: &dyn std::fmt::Display| BpfError::ProgramInfo {
        program,
        source: std::io::Error::other(e.to_string()),
    };
    let id = link.info().map_err(|e| err(&e))?.program_id();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .ok_or_else(|| err(&format!("program {id} is not loaded")))?
        .fd()
        .map_err(|e| err(&e))
}

/// The `recursion_misses` the kernel counts for the program `fd` (kernel 5.12+).
fn recursion_misses(fd: &ProgramFd) -> std::io::Result<u64> {
    /// The `info` member of `union bpf_attr`.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: bpf_prog_info is plain data (integers and byte arrays): all zeroes is valid.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd()))
            .expect("fds are non-negative"),
        info_len: u32::try_from(std::mem::size_of_val(&info)).expect("a small struct"),
        info: std::ptr::from_mut(&mut info) as u64,
    };
    // SAFETY: `attr` is the `info` member of `union bpf_attr` (the kernel copies `size_of`
    // bytes); `info` points to a live, writable bpf_prog_info of `info_len` bytes, which
    // the kernel fills up to the smaller of its and our size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            std::ptr::from_mut(&mut attr),
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.recursion_misses)
}

/// Refuses hosts the programs are not correct on (`ferry check` says the same).
fn supported() -> Result<(), BpfError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(BpfError::Unsupported(
            "ferry's tracker runs on x86_64 only: its lock-free tables rely on x86's memory \
             ordering"
                .into(),
        ));
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    match crate::check::kernel_refusal(&release) {
        Some(why) => Err(BpfError::Unsupported(why)),
        None => Ok(()),
    }
}

/// The records of each CPU's log: `wanted` as a power of two, but at most what shares
/// LOG_BUDGET_BYTES among `cpus` (never below MIN_LOG_RECORDS): the logs are locked
/// kernel memory, and stay while no agent runs.
fn log_records_per_cpu(wanted: u32, cpus: usize) -> usize {
    let wanted = (wanted.max(2) as usize)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31);
    let share = LOG_BUDGET_BYTES / RECORD_BYTES / cpus.max(1);
    let cap = 1 << share.max(1).ilog2(); // the largest power of two within the share
    wanted.min(cap.max(MIN_LOG_RECORDS))
}

/// Maps the array `map` (created with `BPF_F_MMAPABLE`) whole.
fn map_array(map: Map, name: &'static str, writable: bool) -> Result<Mapped, BpfError> {
    let Map::Array(data) = map else {
        return Err(BpfError::Missing(name));
    };
    let info = data.info().map_err(map_err(name))?;
    let bytes = info.max_entries() as usize * (info.value_size() as usize).next_multiple_of(8);
    Mapped::map(name, &data, bytes, writable)
}

fn ensure_bpffs(dir: &Path) -> Result<(), BpfError> {
    let root = Path::new("/sys/fs/bpf");
    let is_bpffs =
        |p: &Path| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
    if !is_bpffs(root) {
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| BpfError::Mount {
            path: root.to_owned(),
            source,
        })?;
    }
    std::fs::create_dir_all(dir).map_err(pin_err(dir))
}

/// Removes the pins in `dir`: the programs detach and the maps are freed once no
/// process holds them. Missing pins are fine.
pub fn remove_pins(dir: &Path) -> Result<(), BpfError> {
    for (program, _) in PROGRAMS {
        let path = dir.join("links").join(program);
        if path.exists() {
            let link = PinnedLink::from_pin(&path).map_err(|e| BpfError::Pin {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
            link.unpin().map_err(pin_err(&path))?;
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BpfError::Pin {
            path: dir.to_owned(),
            source: e,
        }),
    }
}
