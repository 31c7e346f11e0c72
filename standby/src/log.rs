//! One server's log: its segments ([`crate::segment`]), their index ([`crate::index`]),
//! appending, rolling, group commit and recovery after a crash.
//!
//! Invariants:
//! - Frames are only ever appended; a sealed segment is never written again (cleaning
//!   copies live frames into the active segment and then deletes whole segments).
//! - [`ServerLog::durable_seq`] only moves forward, and only past frames that an fsync
//!   issued after they were written has covered (DESIGN.md I2). Opening a log fsyncs what
//!   a killed process left in the page cache before calling it durable.
//! - After a failed fsync nothing written since the last successful one is trusted: Linux
//!   reports a writeback error once per open file and marks the pages it could not write
//!   clean, so a later fsync "succeeds" without writing them and a reader sees bytes the
//!   disk never got. Every fsync of a log goes through one [`FsyncGate`]: once one has
//!   failed, every later one fails too ([`LogError::FsyncFailed`], never retryable, not
//!   even for ENOSPC). [`ServerLog::discard_unsynced`] then cuts every segment back to what
//!   an fsync covered and drops the files' cached pages; the log is unusable and must be
//!   reopened (which re-reads the files and fsyncs again before trusting anything). An
//!   open whose fsync fails drops the cached pages too, so the next open reads the disk.
//! - Opening never skips a damaged frame: a torn tail of the last segment is truncated
//!   and reported; anything else damaged is a [`Corruption`] naming segment and offset.
//! - The in-memory index is sorted by seq with one entry per seq.

use crate::index::{self, Entry, SegmentNo, SegmentPos};
use crate::segment::{self, Corruption, SEGMENT_HEADER_LEN, ScanError, TornTail};
use crate::storage::{LogDir, LogFile, is_out_of_space};
use ferry_wire::{Message, Seq};
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Smallest and largest segment size the log accepts; the default.
pub const MIN_SEGMENT_SIZE: u64 = 2 << 20;
pub const MAX_SEGMENT_SIZE: u64 = 4 << 30;
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("no space left on the standby's storage for {}", path.display())]
    StorageFull {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    #[error("segment size {size} is out of range ({MIN_SEGMENT_SIZE} to {MAX_SEGMENT_SIZE} bytes)")]
    BadSegmentSize { size: u64 },
    #[error("the log was opened read-only")]
    ReadOnly,
    #[error("seq {seq} has no entry in the index")]
    NoSuchSeq { seq: Seq },
    #[error("an fsync of the log failed earlier; the log must be reopened")]
    Discarded,
    #[error(
        "fsync of {} failed ({reason}); nothing written since the last successful fsync is \
         trusted: the log is cut back and reopened", path.display()
    )]
    FsyncFailed { path: PathBuf, reason: String },
}

/// Serialises a log's fsyncs and makes their failure sticky; see the module doc.
#[derive(Debug, Default)]
pub struct FsyncGate {
    failed: std::sync::Mutex<Option<String>>,
}

impl FsyncGate {
    fn sync(&self, path: PathBuf, op: impl FnOnce() -> io::Result<()>) -> Result<(), LogError> {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = &*failed {
            return Err(LogError::FsyncFailed {
                path,
                reason: format!("an earlier fsync failed: {reason}"),
            });
        }
        op().map_err(|e| {
            let reason = e.to_string();
            *failed = Some(reason.clone());
            LogError::FsyncFailed { path, reason }
        })
    }
}

impl LogError {
    /// Whether the same operation may succeed later without anyone repairing the store:
    /// only a full disk (space may be freed). Corruption and other I/O errors need an
    /// operator.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LogError::StorageFull { .. })
    }

    fn io(action: &'static str, path: PathBuf) -> impl FnOnce(io::Error) -> LogError {
        move |source| {
            if is_out_of_space(&source) {
                LogError::StorageFull { path, source }
            } else {
                LogError::Io {
                    action,
                    path,
                    source,
                }
            }
        }
    }
}

impl From<ScanError> for LogError {
    fn from(e: ScanError) -> Self {
        match e {
            ScanError::Io { path, source } => LogError::Io {
                action: "read",
                path,
                source,
            },
            ScanError::Corrupt(c) => LogError::Corrupt(c),
        }
    }
}

/// Whether a log may be changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// The standby's own use: torn tails are truncated, missing sidecars written.
    ReadWrite,
    /// Readers beside a running standby (rebuild, point list): nothing is changed; a tail
    /// that does not check out is left alone and ignored.
    ReadOnly,
}

/// What opening a log found and did.
#[derive(Debug, Default)]
pub struct OpenReport {
    pub segments: usize,
    /// Torn tails found (and, read-write, truncated): segment path and what was cut.
    pub torn: Vec<(PathBuf, TornTail)>,
    /// Sealed segments whose sidecar index was missing or stale and was rebuilt by a scan.
    pub rescanned: usize,
}

#[derive(Debug, Clone)]
struct Segment {
    file: Arc<dyn LogFile>,
    len: u64,
    /// The length an fsync has covered: bytes below it are on stable storage.
    synced: u64,
    /// The durable watermark last written into the segment's header.
    watermark: u64,
}

impl Segment {
    /// A segment of `len` bytes that no fsync of this process has covered yet.
    fn new(file: Arc<dyn LogFile>, len: u64) -> Self {
        Self {
            file,
            len,
            synced: 0,
            watermark: 0,
        }
    }
}

/// An fsync to run without holding the log's lock; see [`ServerLog::prepare_sync`].
#[derive(Debug)]
pub struct SyncTicket {
    /// The active segment, its path, number and the length the fsync covers.
    file: Option<(Arc<dyn LogFile>, PathBuf, SegmentNo, u64)>,
    dir: Option<Arc<dyn LogDir>>,
    /// The directory generation the directory fsync covers (when it runs one).
    dir_generation: u64,
    gate: Arc<FsyncGate>,
    /// Every frame up to this seq is covered once the ticket has run.
    pub upto: Seq,
}

impl SyncTicket {
    /// Runs the fsyncs. On success every frame up to [`SyncTicket::upto`] is durable.
    pub fn run(&self) -> Result<(), LogError> {
        if let Some((file, path, _, _)) = &self.file {
            self.gate.sync(path.clone(), || file.sync_data())?;
        }
        if let Some(dir) = &self.dir {
            self.gate.sync(dir.describe(""), || dir.sync())?;
        }
        Ok(())
    }
}

/// One server's log.
#[derive(Debug)]
pub struct ServerLog {
    dir: Arc<dyn LogDir>,
    segment_size: u64,
    mode: OpenMode,
    segments: BTreeMap<SegmentNo, Segment>,
    /// The segment appends go to (the highest-numbered), once one exists.
    active: Option<SegmentNo>,
    entries: Vec<Entry>,
    last_seq: Seq,
    durable_seq: Seq,
    /// A segment was created since the directory was last fsynced.
    /// Bumped by every change to the directory (a new segment); a sync covers the
    /// directory up to the generation it saw. Until one succeeds, every ticket fsyncs
    /// the directory too: a second ticket prepared while the first is in flight must not
    /// report its seqs durable without it.
    dir_generation: u64,
    dir_synced: u64,
    /// Set by [`ServerLog::discard_unsynced`]: nothing may be written any more.
    discarded: bool,
    gate: Arc<FsyncGate>,
}

impl ServerLog {
    /// Opens (or, read-write, creates) the log in `dir`, recovering from a crash.
    ///
    /// A read-only open races with a live standby's cleaning, which may delete a segment
    /// between listing and opening it (after fsyncing the copies of its live frames in a
    /// newer segment). Such an open starts over, so it always sees either the original
    /// frames or their copies.
    pub fn open(
        dir: Arc<dyn LogDir>,
        segment_size: u64,
        mode: OpenMode,
    ) -> Result<(Self, OpenReport), LogError> {
        const ATTEMPTS: usize = 5;
        for _ in 1..ATTEMPTS {
            match Self::open_once(dir.clone(), segment_size, mode) {
                Err(LogError::Io { source, .. })
                    if mode == OpenMode::ReadOnly && source.kind() == io::ErrorKind::NotFound => {}
                other => return other,
            }
        }
        Self::open_once(dir, segment_size, mode)
    }

    fn open_once(
        dir: Arc<dyn LogDir>,
        segment_size: u64,
        mode: OpenMode,
    ) -> Result<(Self, OpenReport), LogError> {
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size) {
            return Err(LogError::BadSegmentSize { size: segment_size });
        }
        let read_only = mode == OpenMode::ReadOnly;
        let names = dir.list().map_err(LogError::io("list", dir.describe("")))?;
        let mut numbers: Vec<SegmentNo> = names
            .iter()
            .filter_map(|n| SegmentNo::parse_file_name(n))
            .collect();
        numbers.sort();
        let mut report = OpenReport {
            segments: numbers.len(),
            ..OpenReport::default()
        };
        let mut segments = BTreeMap::new();
        let mut entries = Vec::new();
        for (i, &no) in numbers.iter().enumerate() {
            let path = dir.describe(&no.file_name());
            let file = dir
                .open(&no.file_name(), read_only)
                .map_err(LogError::io("open", path.clone()))?;
            let len = file.size().map_err(LogError::io("stat", path.clone()))?;
            let last = i + 1 == numbers.len();
            if !last && let Some(found) = load_sidecar(dir.as_ref(), no, len) {
                entries.extend(found);
                segments.insert(no, Segment::new(file, len));
                continue;
            }
            let scan = segment::scan(file.as_ref(), &path, no)?;
            let mut len = len;
            if let Some(torn) = scan.torn {
                if !last {
                    return Err(Corruption {
                        path,
                        offset: torn.offset,
                        reason: format!("{} in a sealed segment", torn.reason),
                    }
                    .into());
                }
                tracing::warn!(
                    segment = %path.display(),
                    offset = torn.offset,
                    bytes = torn.len,
                    reason = %torn.reason,
                    "torn tail in the log's last segment{}",
                    if read_only { " (ignored: read-only)" } else { "; truncating it" }
                );
                if !read_only {
                    truncate_tail(file.as_ref(), no, scan.valid_len, &path)?;
                    len = scan.valid_len.max(SEGMENT_HEADER_LEN);
                } else {
                    len = scan.valid_len;
                }
                report.torn.push((path.clone(), torn));
            }
            if !last {
                report.rescanned += 1;
                if !read_only {
                    dir.replace(
                        &no.index_name(),
                        &index::encode_sidecar(no, len, &scan.entries),
                    )
                    .map_err(LogError::io("write", dir.describe(&no.index_name())))?;
                }
            }
            entries.extend(scan.entries);
            segments.insert(no, Segment::new(file, len));
        }
        // One entry per seq; a seq twice means cleaning copied a frame forward and
        // stopped before deleting the old segment: the later copy is the one kept.
        entries.sort_by_key(|e| (e.seq, e.segment, e.position));
        entries.dedup_by(|later, earlier| {
            if later.seq == earlier.seq {
                *earlier = *later;
                true
            } else {
                false
            }
        });
        let last_seq = segment::max_seq(&entries);
        let active = numbers.last().copied();
        let log = Self {
            dir,
            segment_size,
            mode,
            segments,
            active,
            entries,
            last_seq,
            durable_seq: if read_only { last_seq } else { Seq::new(0) },
            // A killed process may have created segments whose directory entries were
            // never fsynced: the first sync covers the directory too.
            dir_generation: 1,
            dir_synced: 0,
            discarded: false,
            gate: Arc::default(),
        };
        let mut log = log;
        if !read_only {
            // What a killed process wrote is in the page cache, not necessarily on disk.
            // Sealed segments were fsynced before the next one was created.
            if let Err(e) = log.sync() {
                // The pages the kernel failed to write are now clean: drop them so that the
                // next open reads what the disk holds.
                log.drop_caches();
                return Err(e);
            }
            for seg in log.segments.values_mut() {
                seg.synced = seg.len;
            }
        }
        Ok((log, report))
    }

    /// The highest seq stored (written, maybe not yet durable).
    pub fn last_seq(&self) -> Seq {
        self.last_seq
    }

    /// The highest seq known to be on stable storage.
    pub fn durable_seq(&self) -> Seq {
        self.durable_seq
    }

    /// Every stored frame's entry, sorted by seq.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The file of a segment and its path, for reading frames.
    pub fn segment_file(&self, no: SegmentNo) -> Option<(Arc<dyn LogFile>, PathBuf)> {
        self.segments
            .get(&no)
            .map(|s| (s.file.clone(), self.dir.describe(&no.file_name())))
    }

    /// Segments from oldest to newest, and whether each is the active one.
    pub fn segment_numbers(&self) -> Vec<(SegmentNo, bool)> {
        self.segments
            .keys()
            .map(|&no| (no, Some(no) == self.active))
            .collect()
    }

    /// Bytes the segments occupy on storage.
    pub fn space_used(&self) -> Result<u64, LogError> {
        let mut total = 0;
        for (&no, seg) in &self.segments {
            total += seg
                .file
                .allocated()
                .map_err(LogError::io("stat", self.dir.describe(&no.file_name())))?;
        }
        Ok(total)
    }

    fn writable(&self) -> Result<(), LogError> {
        match self.mode {
            _ if self.discarded => Err(LogError::Discarded),
            OpenMode::ReadWrite => Ok(()),
            OpenMode::ReadOnly => Err(LogError::ReadOnly),
        }
    }

    /// Appends one frame, already checked by the caller (it decodes to `message`, a
    /// `Record` or `Barrier` whose seq is above [`ServerLog::last_seq`]). On error nothing
    /// of the frame remains in the log and the call may be repeated.
    pub fn append(&mut self, frame: &[u8], message: &Message) -> Result<Entry, LogError> {
        let entry = self.write_frame(frame, message)?;
        debug_assert!(entry.seq > self.last_seq, "appends come in seq order");
        self.last_seq = entry.seq;
        self.entries.push(entry);
        Ok(entry)
    }

    /// Writes a frame into the active segment (rolling first if it is full).
    fn write_frame(&mut self, frame: &[u8], message: &Message) -> Result<Entry, LogError> {
        self.writable()?;
        let frame_len = u32::try_from(frame.len()).expect("frames are bounded");
        let no = self.segment_with_room(frame.len() as u64)?;
        let path = self.dir.describe(&no.file_name());
        let seg = self
            .segments
            .get_mut(&no)
            .expect("the active segment exists");
        let position = SegmentPos(seg.len);
        if let Err(e) = seg.file.write_all_at(frame, seg.len) {
            // Leave no partial frame behind; if even that fails, recovery truncates it.
            let _ = seg.file.truncate(seg.len);
            return Err(LogError::io("append to", path)(e));
        }
        seg.len += frame.len() as u64;
        Ok(segment::entry_of(message, no, position, frame_len).expect("a record or barrier"))
    }

    /// The active segment, rolled to a new one if `needed` more bytes would overfill it.
    fn segment_with_room(&mut self, needed: u64) -> Result<SegmentNo, LogError> {
        if let Some(no) = self.active {
            let len = self.segments[&no].len;
            if len == SEGMENT_HEADER_LEN || len + needed <= self.segment_size {
                return Ok(no);
            }
            self.seal(no)?;
        }
        let no = SegmentNo(self.active.map_or(1, |n| n.0 + 1));
        let path = self.dir.describe(&no.file_name());
        let file = self
            .dir
            .create(&no.file_name())
            .map_err(LogError::io("create", path.clone()))?;
        if let Err(e) = file.write_all_at(&segment::encode_header(no), 0) {
            let _ = self.dir.remove(&no.file_name());
            return Err(LogError::io("write the header of", path)(e));
        }
        self.segments
            .insert(no, Segment::new(file, SEGMENT_HEADER_LEN));
        self.active = Some(no);
        self.dir_generation += 1;
        Ok(no)
    }

    /// Makes a full segment durable and writes its sidecar index; it is never written again.
    fn seal(&mut self, no: SegmentNo) -> Result<(), LogError> {
        let path = self.dir.describe(&no.file_name());
        let seg = self.segments.get_mut(&no).expect("sealing a known segment");
        let file = seg.file.clone();
        self.gate.sync(path, || file.sync_data())?;
        seg.synced = seg.len;
        let seg = &self.segments[&no];
        let mine: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| e.segment == no)
            .copied()
            .collect();
        let sidecar = index::encode_sidecar(no, seg.len, &mine);
        self.dir
            .replace(&no.index_name(), &sidecar)
            .map_err(LogError::io("write", self.dir.describe(&no.index_name())))?;
        Ok(())
    }

    /// The fsyncs that make everything written so far durable, to run outside the log's
    /// lock (group commit); then call [`ServerLog::mark_durable`] with it.
    ///
    /// Before the fsync, the active segment's header gets the length the previous fsyncs
    /// covered (its durable watermark, see [`crate::segment`]): this fsync makes it
    /// durable, and recovery after a power loss then knows where a torn tail may begin.
    pub fn prepare_sync(&mut self) -> SyncTicket {
        if let (Some(no), false) = (self.active, self.discarded)
            && let Some(seg) = self.segments.get_mut(&no)
            && seg.synced > seg.watermark
        {
            match seg.file.write_all_at(
                &segment::encode_watermark(seg.synced),
                segment::WATERMARK_AT,
            ) {
                Ok(()) => seg.watermark = seg.synced,
                // A stale watermark only widens what recovery treats as a torn tail.
                Err(e) => tracing::warn!(
                    segment = %self.dir.describe(&no.file_name()).display(),
                    error = %e,
                    "cannot update the segment's durable watermark"
                ),
            }
        }
        let file = self.active.map(|no| {
            let seg = &self.segments[&no];
            (
                seg.file.clone(),
                self.dir.describe(&no.file_name()),
                no,
                seg.len,
            )
        });
        let dir = (self.dir_generation > self.dir_synced).then(|| self.dir.clone());
        SyncTicket {
            file,
            dir,
            dir_generation: self.dir_generation,
            gate: self.gate.clone(),
            upto: self.last_seq,
        }
    }

    /// Records that a [`SyncTicket`] ran successfully.
    pub fn mark_durable(&mut self, ticket: &SyncTicket) {
        if self.discarded {
            return;
        }
        self.durable_seq = self.durable_seq.max(ticket.upto);
        if let Some((_, _, no, len)) = &ticket.file
            && let Some(seg) = self.segments.get_mut(no)
        {
            seg.synced = seg.synced.max(*len);
        }
        if ticket.dir.is_some() {
            self.dir_synced = self.dir_synced.max(ticket.dir_generation);
        }
    }

    /// Makes everything written so far durable, holding the lock (tests, cleaning, open).
    pub fn sync(&mut self) -> Result<Seq, LogError> {
        self.not_discarded()?;
        let ticket = self.prepare_sync();
        ticket.run()?;
        self.mark_durable(&ticket);
        Ok(self.durable_seq)
    }

    /// Copies a frame that is already in the log (same seq) into the active segment and
    /// points its index entry at the copy. Used by log cleaning.
    pub fn copy_forward(&mut self, frame: &[u8], message: &Message) -> Result<(), LogError> {
        let new = self.write_frame(frame, message)?;
        let at = self
            .entries
            .binary_search_by_key(&new.seq, |e| e.seq)
            .map_err(|_| LogError::NoSuchSeq { seq: new.seq })?;
        self.entries[at] = new;
        Ok(())
    }

    fn not_discarded(&self) -> Result<(), LogError> {
        if self.discarded {
            return Err(LogError::Discarded);
        }
        Ok(())
    }

    /// After a failed fsync: cuts every segment back to the length an fsync covered
    /// (removing segments no fsync ever covered) and makes the cut durable, so that what
    /// a reopen reads is what the disk holds. Frames above [`ServerLog::durable_seq`] are
    /// gone; they were never acknowledged, so the agent sends them again. The log is
    /// unusable afterwards (every write is [`LogError::Discarded`]): drop it and reopen.
    pub fn discard_unsynced(&mut self) -> Result<(), LogError> {
        self.discarded = true;
        if self.mode == OpenMode::ReadOnly {
            return Ok(());
        }
        for (&no, seg) in &self.segments {
            if seg.synced == seg.len {
                continue;
            }
            let name = no.file_name();
            let path = self.dir.describe(&name);
            if seg.synced < SEGMENT_HEADER_LEN {
                self.dir
                    .remove(&name)
                    .map_err(LogError::io("remove the unsynced segment", path))?;
            } else {
                seg.file
                    .truncate(seg.synced)
                    .map_err(LogError::io("truncate the unsynced tail of", path.clone()))?;
                seg.file.sync_data().map_err(LogError::io("fsync", path))?;
            }
            tracing::warn!(
                segment = %self.dir.describe(&name).display(),
                kept = seg.synced,
                dropped = seg.len.saturating_sub(seg.synced),
                "discarded bytes no fsync covered"
            );
        }
        self.drop_caches();
        self.dir
            .sync()
            .map_err(LogError::io("fsync the directory", self.dir.describe("")))
    }

    /// Drops the segments' cached pages (best effort): after a failed fsync the cache may
    /// hold bytes the disk lacks.
    fn drop_caches(&self) {
        for (no, seg) in &self.segments {
            if let Err(e) = seg.file.drop_cache() {
                tracing::warn!(segment = %no, error = %e, "cannot drop the segment's cached pages");
            }
        }
    }

    /// Drops index entries (cleaning decided they are dead).
    pub fn forget(&mut self, dead: &std::collections::HashSet<Seq>) {
        self.entries.retain(|e| !dead.contains(&e.seq));
    }

    /// Deletes sealed segments that no index entry points into any more.
    pub fn remove_segments(&mut self, victims: &[SegmentNo]) -> Result<(), LogError> {
        self.writable()?;
        for &no in victims {
            assert!(
                Some(no) != self.active,
                "cleaning never removes the active segment"
            );
            assert!(
                !self.entries.iter().any(|e| e.segment == no),
                "segment {no} still holds live entries"
            );
            for name in [no.file_name(), no.index_name()] {
                self.dir
                    .remove(&name)
                    .map_err(LogError::io("remove", self.dir.describe(&name)))?;
            }
            self.segments.remove(&no);
        }
        self.dir
            .sync()
            .map_err(LogError::io("fsync the directory", self.dir.describe("")))
    }

    /// Seals the active segment (if it holds any frame) so that cleaning may consider it.
    pub fn roll(&mut self) -> Result<(), LogError> {
        self.writable()?;
        if let Some(no) = self.active
            && self.segments[&no].len > SEGMENT_HEADER_LEN
        {
            self.segment_with_room(u64::MAX / 2)?;
        }
        Ok(())
    }
}

fn load_sidecar(dir: &dyn LogDir, no: SegmentNo, len: u64) -> Option<Vec<Entry>> {
    let bytes = dir
        .read_small(&no.index_name(), index::MAX_SIDECAR_LEN)
        .ok()?;
    match index::decode_sidecar(&bytes, no) {
        Ok((covered, entries)) if covered == len => Some(entries),
        Ok((covered, _)) => {
            tracing::warn!(segment = %no, covered, len, "stale sidecar index; rescanning");
            None
        }
        Err(e) => {
            tracing::warn!(segment = %no, error = %e, "unusable sidecar index; rescanning");
            None
        }
    }
}

fn truncate_tail(
    file: &dyn LogFile,
    no: SegmentNo,
    valid_len: u64,
    path: &std::path::Path,
) -> Result<(), LogError> {
    let fail = |e| LogError::io("truncate the torn tail of", path.to_owned())(e);
    file.truncate(valid_len).map_err(fail)?;
    if valid_len < SEGMENT_HEADER_LEN {
        file.truncate(0).map_err(fail)?;
        file.write_all_at(&segment::encode_header(no), 0)
            .map_err(fail)?;
    }
    file.sync_data().map_err(fail)
}
