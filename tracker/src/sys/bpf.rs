//! Loading, attaching, pinning and reading the tracker's BPF programs (aya).
//!
//! Fresh load: the object built from `ebpf/tracker.bpf.c` is loaded with BTF
//! (CO-RE relocations against /sys/kernel/btf/vmlinux), its four programs attached to
//! the block tracepoints. With a pin directory, every map and link is pinned there, so
//! the programs stay attached and keep filling the ring buffer while no agent runs; a
//! later [`Bpf::open`] finds the pinned links and reattaches to the same maps instead of
//! loading again. Without one, everything detaches when the [`Bpf`] drops.
//!
//! Pin layout (`DIR` = e.g. `/sys/fs/bpf/ferry`): `DIR/maps/<map>`, `DIR/links/<program>`.
//! Minimum kernel: 5.16 with BTF (tp_btf programs, ring buffers, mmapable arrays).

use super::blockdev::KernelDev;
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf};
use aya::programs::BtfTracePoint;
use aya::programs::links::{FdLink, PinnedLink};
use aya::{Btf, Ebpf, EbpfLoader, Pod};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracker.bpf.o"));

/// Programs and the tracepoints they attach to.
const PROGRAMS: [(&str, &str); 4] = [
    ("ferry_bio_queue", "block_bio_queue"),
    ("ferry_split", "block_split"),
    ("ferry_rq_complete", "block_rq_complete"),
    ("ferry_bio_complete", "block_bio_complete"),
];
const MAPS: [&str; 8] = [
    "ids",
    "protected_disks",
    "events",
    "inflight",
    "drops",
    "fallback",
    "config",
    "state",
];

/// Capacity of the in-flight map (`inflight` in the C program).
const IN_FLIGHT_ENTRIES: usize = 16384;
/// `BPF_MAP_LOOKUP_BATCH` (include/uapi/linux/bpf.h, kernel 5.6).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Most disks one tracker protects (`MAX_DISKS` in the C program).
pub const MAX_DISKS: u32 = 32;
/// Fallback counters per disk (`FALLBACK_CHUNKS`), plus one whole-disk counter.
pub const FALLBACK_CHUNKS: u32 = 16384;
/// Config slots (`CONFIG_*`).
const CONFIG_WAKEUP_BYTES: u32 = 0;
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

/// What the BPF side knows of a protected disk (`struct disk_info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct DiskInfo {
    pub index: u32,
    /// log2 of the sectors per fallback chunk.
    pub chunk_shift: u32,
}

// SAFETY: DiskInfo is repr(C), two u32 with no padding, valid for every bit pattern.
unsafe impl Pod for DiskInfo {}

/// A write in flight, as the programs record it at submission (`struct inflight`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct InFlightEntry {
    /// The submission id (CPU << 40 | a per-CPU count), also in its COMPLETE event.
    pub id: u64,
    /// First sector, whole-disk relative.
    pub sector: u64,
    /// When it was submitted (CLOCK_MONOTONIC ns).
    pub time_ns: u64,
    pub sectors: u32,
    /// Userspace's disk number.
    pub disk: u32,
    pub op: u32,
    pub chunk_shift: u32,
}

const _: () = assert!(std::mem::size_of::<InFlightEntry>() == 40);

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

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
    #[error("polling the ring buffer")]
    Poll(#[source] nix::Error),
    #[error("reading the in-flight map")]
    InFlight(#[source] std::io::Error),
    #[error("mapping the fallback counters")]
    Mmap(#[source] std::io::Error),
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
    /// Ring buffer size in bytes (a power of two multiple of the page size).
    pub ring_bytes: u32,
    /// Wake userspace once this many bytes of events are pending (else it wakes on its
    /// own poll timeout).
    pub wakeup_bytes: u64,
    /// Pin maps and links here (a directory on bpffs), or detach on drop.
    pub pin_dir: Option<PathBuf>,
}

/// The fallback counters, mapped read-only into this process.
#[derive(Debug)]
struct FallbackView {
    ptr: *const u64,
    len: usize,
}

impl FallbackView {
    fn map(fd: std::os::fd::BorrowedFd<'_>) -> Result<Self, BpfError> {
        let len = (MAX_DISKS * (FALLBACK_CHUNKS + 1)) as usize;
        let bytes = len * std::mem::size_of::<u64>();
        // SAFETY: mapping a BPF array created with BPF_F_MMAPABLE, read-only and shared;
        // `bytes` is its whole value area (u64 values are not padded). The mapping lives
        // until `Drop` unmaps it and is only read through `counter`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(BpfError::Mmap(std::io::Error::last_os_error()));
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    fn counter(&self, index: usize) -> u64 {
        assert!(index < self.len, "fallback index {index} out of range");
        // SAFETY: in bounds (checked above) of a live mapping, 8-byte aligned (mmap is
        // page aligned, values are u64); the kernel only updates it atomically, so an
        // atomic load is the right way to read it. Nothing here writes through it.
        let counter =
            unsafe { std::sync::atomic::AtomicU64::from_ptr(self.ptr.add(index).cast_mut()) };
        counter.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for FallbackView {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`.
        unsafe {
            libc::munmap(
                self.ptr.cast_mut().cast(),
                self.len * std::mem::size_of::<u64>(),
            )
        };
    }
}

// SAFETY: the mapping is read-only and only read with volatile loads; sharing the pointer
// across threads is as safe as sharing the map's fd.
unsafe impl Send for FallbackView {}

/// The loaded (or reattached) tracker programs and their maps.
pub struct Bpf {
    events: RingBuf<MapData>,
    inflight: MapData,
    /// Reused buffers for [`Bpf::in_flight`].
    batch_keys: Vec<u64>,
    batch_values: Vec<InFlightEntry>,
    protected: HashMap<MapData, u32, DiskInfo>,
    drops: PerCpuArray<MapData, u64>,
    config: Array<MapData, u64>,
    state: Array<MapData, u64>,
    fallback: FallbackView,
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
                let bpf = Self::from_pins(dir)?;
                let same_programs = bpf
                    .state
                    .get(&STATE_PROGRAMS, 0)
                    .is_ok_and(|h| h == programs_hash());
                if same_programs {
                    let epoch = bpf.state.get(&STATE_EPOCH, 0).map_err(map_err("state"))?;
                    return Ok((bpf, Origin::Reattached { epoch }));
                }
                // Programs of another build: their events may not mean what ours do.
                drop(bpf);
            }
            // Partial, stale or foreign pins: start over (a fresh load is a gap).
            remove_pins(dir)?;
        }
        Ok((Self::load(options)?, Origin::Fresh))
    }

    fn load(options: &LoadOptions) -> Result<Self, BpfError> {
        let btf = Btf::from_sys_fs().map_err(BpfError::NoBtf)?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .map_max_entries("events", options.ring_bytes)
            .load(OBJECT)
            .map_err(BpfError::Load)?;
        let mut links = Vec::new();
        let mut held = Vec::new();
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
            events: RingBuf::try_from(take(&mut ebpf, "events")?).map_err(map_err("events"))?,
            inflight: match take(&mut ebpf, "inflight")? {
                Map::HashMap(data) => data,
                _ => return Err(BpfError::Missing("inflight hash map")),
            },
            batch_keys: vec![0; IN_FLIGHT_ENTRIES],
            batch_values: vec![InFlightEntry::default(); IN_FLIGHT_ENTRIES],
            protected: HashMap::try_from(take(&mut ebpf, "protected_disks")?)
                .map_err(map_err("protected_disks"))?,
            drops: PerCpuArray::try_from(take(&mut ebpf, "drops")?).map_err(map_err("drops"))?,
            config: Array::try_from(take(&mut ebpf, "config")?).map_err(map_err("config"))?,
            state: Array::try_from(take(&mut ebpf, "state")?).map_err(map_err("state"))?,
            fallback: {
                let map = take(&mut ebpf, "fallback")?;
                let Map::Array(data) = map else {
                    return Err(BpfError::Missing("fallback array"));
                };
                FallbackView::map(data.fd().as_fd())?
            },
            _ebpf: options.pin_dir.is_none().then_some(ebpf),
            _links: held,
        };
        bpf.set_config(CONFIG_WAKEUP_BYTES, options.wakeup_bytes)?;
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
        let fallback = MapData::from_pin(dir.join("maps/fallback")).map_err(map_err("fallback"))?;
        let links = PROGRAMS
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
        Ok(Self {
            events: RingBuf::try_from(open("events")?).map_err(map_err("events"))?,
            inflight: MapData::from_pin(dir.join("maps/inflight")).map_err(map_err("inflight"))?,
            batch_keys: vec![0; IN_FLIGHT_ENTRIES],
            batch_values: vec![InFlightEntry::default(); IN_FLIGHT_ENTRIES],
            protected: HashMap::try_from(open("protected_disks")?)
                .map_err(map_err("protected_disks"))?,
            drops: PerCpuArray::try_from(open("drops")?).map_err(map_err("drops"))?,
            config: Array::try_from(open("config")?).map_err(map_err("config"))?,
            state: Array::try_from(open("state")?).map_err(map_err("state"))?,
            fallback: FallbackView::map(fallback.fd().as_fd())?,
            _ebpf: None,
            _links: links,
        })
    }

    /// Starts (or keeps) tracking `dev` as disk `info.index`.
    pub fn protect(&mut self, dev: KernelDev, info: DiskInfo) -> Result<(), BpfError> {
        self.protected
            .insert(dev.0, info, 0)
            .map_err(map_err("protected_disks"))
    }

    /// The disks the BPF side tracks now.
    pub fn protected(&self) -> Result<Vec<(KernelDev, DiskInfo)>, BpfError> {
        self.protected
            .iter()
            .map(|r| {
                r.map(|(k, v)| (KernelDev(k), v))
                    .map_err(map_err("protected_disks"))
            })
            .collect()
    }

    /// Stops tracking `dev`.
    pub fn unprotect(&mut self, dev: KernelDev) -> Result<(), BpfError> {
        self.protected
            .remove(&dev.0)
            .map_err(map_err("protected_disks"))
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

    /// Waits up to `timeout` for events; true if some may be ready.
    pub fn wait(&self, timeout: Duration) -> Result<bool, BpfError> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.events.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) => Ok(n > 0),
            Err(nix::Error::EINTR) => Ok(true),
            Err(e) => Err(BpfError::Poll(e)),
        }
    }

    /// Hands every pending event record to `f`; returns how many.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while let Some(item) = self.events.next() {
            f(&item);
            n += 1;
        }
        n
    }

    /// Appends every write the in-flight map holds to `out` (one `BPF_MAP_LOOKUP_BATCH`
    /// pass, kernel 5.6+; no entry is skipped however the map changes meanwhile, except
    /// entries added during the pass, which the next pass finds). Entries deleted during
    /// the pass may be returned: their COMPLETE event follows in the ring buffer.
    pub fn in_flight(&mut self, out: &mut Vec<InFlightEntry>) -> Result<(), BpfError> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.inflight.fd().as_fd());
        let mut cursor_in = 0u32;
        let mut cursor_out = 0u32;
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    std::ptr::from_ref(&cursor_in) as u64
                },
                out_batch: std::ptr::from_mut(&mut cursor_out) as u64,
                keys: self.batch_keys.as_mut_ptr() as u64,
                values: self.batch_values.as_mut_ptr() as u64,
                count: u32::try_from(IN_FLIGHT_ENTRIES).expect("small"),
                map_fd: u32::try_from(fd).expect("fds are non-negative"),
                elem_flags: 0,
                flags: 0,
            };
            // SAFETY: `attr` is the `batch` member of `union bpf_attr` (the kernel copies
            // `size_of` bytes and zero-fills the rest). `keys` and `values` point to
            // buffers of `count` keys (u64, the map's key) and values (InFlightEntry, the
            // map's value, 40 bytes, repr(C)), both live and unaliased for the call; the
            // cursors are u32 (the hash map's batch token) and live across it. The kernel
            // writes at most `count` elements and stores how many in `attr.count`.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    std::ptr::from_mut(&mut attr),
                    std::mem::size_of::<BatchAttr>(),
                )
            };
            let err = (ret < 0).then(std::io::Error::last_os_error);
            let n = (attr.count as usize).min(IN_FLIGHT_ENTRIES);
            out.extend_from_slice(&self.batch_values[..n]);
            match err {
                None => {}
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Some(e) => return Err(BpfError::InFlight(e)),
            }
            cursor_in = cursor_out;
            first = false;
        }
    }

    /// Events the programs could not put in the ring buffer, since they were loaded.
    pub fn drops(&self) -> Result<u64, BpfError> {
        let per_cpu = self.drops.get(&0, 0).map_err(map_err("drops"))?;
        Ok(per_cpu.iter().sum())
    }

    /// The fallback counters of disk `index`: FALLBACK_CHUNKS chunk counters, then the
    /// whole-disk counter.
    pub fn fallback_counters(&self, index: u32) -> Vec<u64> {
        let base = (index * (FALLBACK_CHUNKS + 1)) as usize;
        (0..=FALLBACK_CHUNKS as usize)
            .map(|i| self.fallback.counter(base + i))
            .collect()
    }
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
