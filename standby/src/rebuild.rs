//! Rebuilding a server's disk at a recovery point: for every byte of the disk, the newest
//! record with seq ≤ the point's seq (byte-exact, so in particular per 4 KiB grain);
//! never-written bytes are zero.
//!
//! - The plan comes from the index alone ([`crate::index`]): an [`ExtentMap`] of the
//!   disk's records up to the point, grouped by record so each is read and unsealed once,
//!   in log order.
//! - Workers (one per core by default) take records from a shared cursor; each reads the
//!   frame by position, checks its CRC and that it matches the index, unseals it (seal
//!   checked before decryption, DESIGN.md I6 — the recovery key is needed here and only
//!   here) and writes the live parts with `pwrite`. Damage is an error naming segment and
//!   offset; nothing is skipped. A record whose seal does not check — made or altered
//!   where it was stored, even with every key the standby holds (DESIGN.md I8) — is such
//!   damage, named by its seq.
//! - What is rebuilt is decided by [`point_disks`]: the point's barrier and the
//!   registration it names must carry the server's seal, and the disks and sizes are that
//!   registration's, not the newest one's.
//! - Output is a new image file (created beside its final name and renamed into place when
//!   complete, sparse: holes stay holes and zero records write nothing; mode 0600 from
//!   its creation whatever the umask, [`crate::private_files`]), or an existing
//!   block device at least as large as the disk (every byte written: holes and zero
//!   records are zeroed with `FALLOC_FL_ZERO_RANGE`, or by writing zeroes).

use crate::extent_map::ExtentMap;
use crate::index::Entry;
use crate::log::ServerLog;
use crate::segment::{self, Corruption, ScanError};
use crate::server::ServerState;
use ferry_wire::message::{DiskInfo, RegisterServer};
use ferry_wire::seal::Unsealed;
use ferry_wire::{Message, RecoveryKeys, Seq, Unsealer};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Why a rebuild failed. All are permanent for the same store and target.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// Reading the log failed: an I/O error, or damage named by segment and offset.
    #[error(transparent)]
    Read(#[from] ScanError),
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is {have} bytes, smaller than disk {disk} ({need} bytes); refusing to write a \
         partial disk", path.display()
    )]
    TooSmall {
        path: PathBuf,
        disk: u32,
        have: u64,
        need: u64,
    },
    #[error(
        "{} already exists and is not a block device; rebuild writes a new image file or \
         onto an existing block device", path.display()
    )]
    Exists { path: PathBuf },
    #[error("{} is not a block device; only a device can be overlaid", path.display())]
    NotADevice { path: PathBuf },
    #[error(
        "{} is {have} bytes but disk {disk} is {need}: it is not the disk to restore onto",
        path.display()
    )]
    NotThatDisk {
        path: PathBuf,
        disk: u32,
        have: u64,
        need: u64,
    },
    #[error("cannot set up unsealing")]
    Keys(#[source] ferry_wire::SealError),
    #[error("the server has not registered its disks: there is nothing to rebuild")]
    NotRegistered,
    #[error(
        "barrier seq {seq} names a registration (disk set) this store does not hold: it \
         was forgotten, or the barrier was forged"
    )]
    UnknownRegistration { seq: Seq },
    #[error("the registration of {what} is refused: {}", ferry_wire::error_chain(.source))]
    BadRegistration {
        what: String,
        #[source]
        source: ferry_wire::SealError,
    },
}

impl From<Corruption> for RebuildError {
    fn from(c: Corruption) -> Self {
        RebuildError::Read(ScanError::Corrupt(c))
    }
}

impl RebuildError {
    /// The damage found in the log, if that is why the rebuild failed.
    pub fn corruption(&self) -> Option<&Corruption> {
        match self {
            RebuildError::Read(ScanError::Corrupt(c)) => Some(c),
            _ => None,
        }
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RebuildError {
    let path = path.to_owned();
    move |source| RebuildError::Io {
        action,
        path,
        source,
    }
}

/// Where a disk is written.
#[derive(Debug)]
pub struct Target {
    file: File,
    path: PathBuf,
    /// `Some(temporary path)` for a new image file, `None` for a block device.
    partial: Option<PathBuf>,
    /// Bytes no record provides keep what the device holds (an overlay), instead of
    /// being zeroed.
    keep_gaps: bool,
}

impl Target {
    /// Opens `path` for a disk of `size` bytes: an existing block device (refused if
    /// smaller), or a new image file (refused if something exists there).
    pub fn open(path: &Path, disk: &DiskInfo) -> Result<Self, RebuildError> {
        let need = disk.size.get();
        match fs::metadata(path) {
            Ok(meta) if meta.file_type().is_block_device() => {
                let mut file = OpenOptions::new()
                    .write(true)
                    .read(true)
                    .open(path)
                    .map_err(io_err("open", path))?;
                let have = file
                    .seek(SeekFrom::End(0))
                    .map_err(io_err("measure", path))?;
                if have < need {
                    return Err(RebuildError::TooSmall {
                        path: path.to_owned(),
                        disk: disk.disk.get(),
                        have,
                        need,
                    });
                }
                Ok(Self {
                    file,
                    path: path.to_owned(),
                    partial: None,
                    keep_gaps: false,
                })
            }
            Ok(_) => Err(RebuildError::Exists {
                path: path.to_owned(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut name = path.file_name().unwrap_or_default().to_os_string();
                name.push(format!(".partial-{}", std::process::id()));
                let partial = path.with_file_name(name);
                // Plaintext: 0600 from the start, whatever the umask.
                let file = crate::private_files::create_new(&partial)
                    .map_err(io_err("create", &partial))?;
                file.set_len(need).map_err(io_err("size", &partial))?;
                Ok(Self {
                    file,
                    path: path.to_owned(),
                    partial: Some(partial),
                    keep_gaps: false,
                })
            }
            Err(e) => Err(io_err("inspect", path)(e)),
        }
    }

    /// Opens the block device at `path` to lay the point over it: only the bytes records
    /// provide are written; the rest keeps the device's content (a disk restored onto
    /// the machine whose differences reverse replication shipped).
    /// The device must be exactly the disk's size (it is that disk) and not in use:
    /// it is opened exclusively (`O_EXCL`: refused while mounted or held by another).
    pub fn overlay(path: &Path, disk: &DiskInfo) -> Result<Self, RebuildError> {
        use std::os::unix::fs::OpenOptionsExt;
        if !fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device()) {
            return Err(RebuildError::NotADevice {
                path: path.to_owned(),
            });
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_EXCL)
            .open(path)
            .map_err(io_err("open exclusively (is it mounted or in use?)", path))?;
        let have = file
            .seek(SeekFrom::End(0))
            .map_err(io_err("measure", path))?;
        if have != disk.size.get() {
            return Err(RebuildError::NotThatDisk {
                path: path.to_owned(),
                disk: disk.disk.get(),
                have,
                need: disk.size.get(),
            });
        }
        Ok(Self {
            file,
            path: path.to_owned(),
            partial: None,
            keep_gaps: true,
        })
    }

    fn is_device(&self) -> bool {
        self.partial.is_none()
    }

    fn write_at(&self, bytes: &[u8], offset: u64) -> Result<(), RebuildError> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(io_err("write", &self.path))
    }

    fn zero(&self, offset: u64, len: u64) -> Result<(), RebuildError> {
        if offset.is_multiple_of(512)
            && len.is_multiple_of(512)
            && crate::sys::zero_range(&self.file, offset, len).is_ok()
        {
            return Ok(());
        }
        let zeros = vec![0u8; 1 << 20];
        let mut done = 0;
        while done < len {
            let n = usize::try_from(len - done).map_or(zeros.len(), |n| n.min(zeros.len()));
            self.write_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Makes the output durable and (image files) puts it in place.
    fn finish(self) -> Result<(), RebuildError> {
        self.file.sync_all().map_err(io_err("fsync", &self.path))?;
        if let Some(partial) = &self.partial {
            fs::rename(partial, &self.path).map_err(io_err("rename into place", &self.path))?;
        }
        Ok(())
    }

    fn abandon(self) {
        if let Some(partial) = &self.partial {
            let _ = fs::remove_file(partial);
        }
    }
}

/// One record to read, and the byte ranges of the disk it still provides.
#[derive(Debug)]
struct Work {
    entry: Entry,
    ranges: Vec<(u64, u64)>,
}

/// What one disk's rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskReport {
    pub records_read: u64,
    pub bytes_written: u64,
    pub bytes_zeroed: u64,
}

/// Damage at an index entry's frame.
fn corrupt_at(log: &ServerLog, e: &Entry, reason: String) -> Corruption {
    Corruption {
        path: log
            .segment_file(e.segment)
            .map_or_else(|| PathBuf::from(e.segment.file_name()), |(_, p)| p),
        offset: e.position.0,
        reason,
    }
}

/// Reads the frame an index entry points at, checking it (CRC, decoding) and that it is
/// the frame the entry describes.
fn read_stored(log: &ServerLog, e: &Entry, buf: &mut Vec<u8>) -> Result<Message, RebuildError> {
    let (file, path) = log.segment_file(e.segment).ok_or_else(|| {
        corrupt_at(
            log,
            e,
            "the index points into a segment that is gone".into(),
        )
    })?;
    let message = segment::read_frame(file.as_ref(), &path, e.position, e.frame_len, buf)?;
    if segment::entry_of(&message, e.segment, e.position, e.frame_len).as_ref() != Some(e) {
        return Err(corrupt_at(
            log,
            e,
            format!("frame does not match its index entry (seq {})", e.seq),
        )
        .into());
    }
    Ok(message)
}

/// The disks to rebuild for the point at `seq`, once everything that decides them checks
/// out with the server's recovery keys: the barrier stored at `seq` (its seal, that it
/// is this server's) and the registration it names (its seal). A seq that is not a
/// barrier (`latest` may be a record) is rebuilt with the newest registration, whose
/// seal is checked too. A forged or altered barrier or registration is refused, named.
pub fn point_disks(
    state: &ServerState,
    seq: Seq,
    keys: &RecoveryKeys,
) -> Result<Vec<DiskInfo>, RebuildError> {
    let log = &state.log;
    let barrier = match log.entries().binary_search_by_key(&seq, |e| e.seq) {
        Ok(at)
            if matches!(
                log.entries()[at].what,
                crate::index::EntryKind::Barrier { .. }
            ) =>
        {
            let e = &log.entries()[at];
            let forged = |reason: String| -> RebuildError { corrupt_at(log, e, reason).into() };
            let Message::Barrier(b) = read_stored(log, e, &mut Vec::new())? else {
                return Err(forged(format!("expected a barrier for seq {seq}")));
            };
            ferry_wire::seal::verify_barrier_seal(&keys.seal, &b).map_err(|err| {
                forged(format!(
                    "barrier seq {seq}: {}",
                    ferry_wire::error_chain(&err)
                ))
            })?;
            if b.server != keys.server {
                return Err(forged(format!(
                    "barrier seq {seq} is a point of server {}, not {}",
                    b.server, keys.server
                )));
            }
            Some(b)
        }
        _ => None,
    };
    let (reg, what): (&RegisterServer, String) = match &barrier {
        Some(b) => (
            state
                .registration_sealed(&b.registration)
                .ok_or(RebuildError::UnknownRegistration { seq })?,
            format!("point seq {seq}"),
        ),
        None => (
            state.registration().ok_or(RebuildError::NotRegistered)?,
            "the newest registration".to_owned(),
        ),
    };
    ferry_wire::seal::verify_registration_seal(keys, reg)
        .map_err(|source| RebuildError::BadRegistration { what, source })?;
    Ok(reg.disks.clone())
}

/// The plan: records (in log order) with the ranges each still provides at `point`, and
/// the ranges no record covers. Clipped to the disk's registered size.
fn plan(entries: &[Entry], disk: &DiskInfo, point: Seq) -> (Vec<Work>, Vec<(u64, u64)>) {
    let upto = entries.partition_point(|e| e.seq <= point);
    let mut map = ExtentMap::new();
    for (i, e) in entries[..upto].iter().enumerate() {
        if let Some((d, start, end)) = e.disk_range()
            && d == disk.disk
        {
            map.insert(start.min(disk.size.get()), end.min(disk.size.get()), i);
        }
    }
    let mut by_entry: std::collections::HashMap<usize, Vec<(u64, u64)>> = Default::default();
    let mut gaps = Vec::new();
    let mut cursor = 0;
    for (start, end, i) in map.iter() {
        if start > cursor {
            gaps.push((cursor, start));
        }
        by_entry.entry(i).or_default().push((start, end));
        cursor = end;
    }
    if cursor < disk.size.get() {
        gaps.push((cursor, disk.size.get()));
    }
    let mut work: Vec<Work> = by_entry
        .into_iter()
        .map(|(i, ranges)| Work {
            entry: entries[i],
            ranges,
        })
        .collect();
    work.sort_by_key(|w| (w.entry.segment, w.entry.position));
    (work, gaps)
}

/// Rebuilds `disk` as it was at `point` into `target`, on `threads` threads, calling
/// `progress` with the number of disk bytes done as work completes.
pub fn rebuild_disk(
    log: &ServerLog,
    disk: &DiskInfo,
    point: Seq,
    target: Target,
    keys: &RecoveryKeys,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<DiskReport, RebuildError> {
    let result = rebuild_into(log, disk, point, &target, keys, threads, progress);
    match result {
        Ok(report) => {
            target.finish()?;
            Ok(report)
        }
        Err(e) => {
            target.abandon();
            Err(e)
        }
    }
}

fn rebuild_into(
    log: &ServerLog,
    disk: &DiskInfo,
    point: Seq,
    target: &Target,
    keys: &RecoveryKeys,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<DiskReport, RebuildError> {
    let (work, gaps) = plan(log.entries(), disk, point);
    let report = Mutex::new(DiskReport::default());
    if target.is_device() && !target.keep_gaps {
        for &(start, end) in &gaps {
            target.zero(start, end - start)?;
            report
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .bytes_zeroed += end - start;
        }
    }
    progress(gaps.iter().map(|(s, e)| e - s).sum());

    const BATCH: usize = 8;
    let cursor = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<RebuildError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                let result = (|| -> Result<(), RebuildError> {
                    let mut unsealer = Unsealer::new(keys).map_err(RebuildError::Keys)?;
                    let mut buf = Vec::new();
                    let mut mine = DiskReport::default();
                    loop {
                        if failed.load(Ordering::Relaxed) {
                            break;
                        }
                        let at = cursor.fetch_add(BATCH, Ordering::Relaxed);
                        if at >= work.len() {
                            break;
                        }
                        for w in &work[at..(at + BATCH).min(work.len())] {
                            let done =
                                rebuild_one(log, w, target, &mut unsealer, &mut buf, &mut mine)?;
                            progress(done);
                        }
                    }
                    let mut total = report.lock().unwrap_or_else(PoisonError::into_inner);
                    total.records_read += mine.records_read;
                    total.bytes_written += mine.bytes_written;
                    total.bytes_zeroed += mine.bytes_zeroed;
                    Ok(())
                })();
                if let Err(e) = result {
                    failed.store(true, Ordering::Relaxed);
                    first_error
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_or_insert(e);
                }
            });
        }
    });
    if let Some(e) = first_error
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
    {
        return Err(e);
    }
    Ok(report.into_inner().unwrap_or_else(PoisonError::into_inner))
}

/// Reads, checks and unseals one record and writes its live ranges. Returns the disk
/// bytes it accounted for.
fn rebuild_one(
    log: &ServerLog,
    w: &Work,
    target: &Target,
    unsealer: &mut Unsealer,
    buf: &mut Vec<u8>,
    report: &mut DiskReport,
) -> Result<u64, RebuildError> {
    let e = &w.entry;
    let message = read_stored(log, e, buf)?;
    let corrupt = |reason: String| corrupt_at(log, e, reason);
    let Message::Record(record) = &message else {
        return Err(corrupt(format!("expected a record for seq {}", e.seq)).into());
    };
    let record_start = record.header.offset.get();
    let unsealed = unsealer.unseal(record).map_err(|err| {
        corrupt(format!(
            "record seq {}: {}",
            e.seq,
            ferry_wire::error_chain(&err)
        ))
    })?;
    report.records_read += 1;
    let mut done = 0;
    for &(start, end) in &w.ranges {
        done += end - start;
        match &unsealed {
            Unsealed::Data(bytes) => {
                let from = usize::try_from(start - record_start).expect("inside a ≤1 MiB record");
                let to = usize::try_from(end - record_start).expect("inside a ≤1 MiB record");
                target.write_at(&bytes[from..to], start)?;
                report.bytes_written += end - start;
            }
            Unsealed::Zeroes(_) | Unsealed::Discarded(_) => {
                if target.is_device() {
                    target.zero(start, end - start)?;
                    report.bytes_zeroed += end - start;
                }
            }
        }
    }
    Ok(done)
}
