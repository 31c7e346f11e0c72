//! Chunk digests of a server's latest state, for digest catch-up ([`ferry_wire::digest`]):
//! the agent compares them with digests of its own disk and ships only chunks that differ.
//!
//! For every grain of a chunk, the newest record covering it (from the index, as rebuild
//! plans) supplies the grain's digest: a data record the one it carries for that grain,
//! a zero or discard record [`ZERO_GRAIN`], and a grain no record covers (it reads back
//! as zeroes) [`ZERO_GRAIN`] too. Only the header and digests of each record are read,
//! never its payload, and no key is needed (DESIGN.md I6).
//!
//! A chunk is `None` — unknown, so the agent ships it — when one of its grains is pieced
//! together from several records or partly unwritten (a grain digest covers one record's
//! bytes), or when a stored record does not match its index entry (damage is logged; the
//! agent's copy then replaces it in the latest state).
//!
//! The caller answers only once every record it has received is durable, so a chunk
//! reported equal stays equal after a crash of the standby.
//!
//! A server to be restored onto disks that already hold most of its data (reverse
//! replication onto the original machine) has a [`Baseline`]: the grains no record
//! covers read back as the baseline disk's bytes, so their digests are computed from it —
//! with the digest key, which only this case needs (the standby reads that plaintext
//! anyway, it is the disk it will write).

use crate::extent_map::ExtentMap;
use crate::index::{Entry, EntryKind};
use crate::log::ServerLog;
use ferry_wire::body::RECORD_HEAD_MAX_LEN;
use ferry_wire::digest::Digester;
use ferry_wire::digest::{
    CHUNK, ChunkDigest, GRAIN, GrainDigest, ZERO_GRAIN, chunk_digest, grains_overlapped,
};
use ferry_wire::message::DiskInfo;
use ferry_wire::{DigestKey, FRAME_HEADER_LEN, FrameHeader, RecordKind};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// The disks a server's latest state is laid over (disk N is the N-th device).
#[derive(Debug)]
pub struct Baseline {
    disks: Vec<(PathBuf, File, u64)>,
    digester: Digester,
}

impl Baseline {
    /// Opens the baseline devices (read-only).
    pub fn open(paths: &[PathBuf], key: &DigestKey) -> std::io::Result<Self> {
        let disks = paths
            .iter()
            .map(|p| {
                let file = File::open(p)?;
                let size = std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0))?;
                Ok((p.clone(), file, size))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            disks,
            digester: Digester::new(key),
        })
    }

    /// Why `disk` cannot be laid over this baseline, if it cannot.
    pub fn check(&self, disk: &DiskInfo) -> Result<(), String> {
        match self.disks.get(disk.disk.index()) {
            None => Err(format!(
                "no original disk is given for disk {}",
                disk.disk.get()
            )),
            Some((path, _, size)) if *size != disk.size.get() => Err(format!(
                "original disk {} is {size} bytes, but disk {} is {} bytes: not the same disk",
                path.display(),
                disk.disk.get(),
                disk.size.get()
            )),
            Some(_) => Ok(()),
        }
    }

    fn grain(&self, disk: &DiskInfo, start: u64, end: u64) -> Option<GrainDigest> {
        let (path, file, _) = self.disks.get(disk.disk.index())?;
        let mut buf = vec![0u8; usize::try_from(end - start).ok()?];
        if let Err(e) = file.read_exact_at(&mut buf, start) {
            tracing::error!(disk = %path.display(), offset = start, "cannot read the original disk: {e}; its chunk is reported unknown");
            return None;
        }
        let mut out = Vec::with_capacity(1);
        self.digester.grains(disk.disk, start, &buf, &mut out);
        out.first().copied()
    }
}

/// The digests of chunks `first_chunk .. first_chunk + count` of `disk` (clipped to the
/// disk's end). The caller checked that the range starts inside the disk.
pub fn chunk_digests(
    log: &ServerLog,
    disk: &DiskInfo,
    first_chunk: u64,
    count: u32,
    baseline: Option<&Baseline>,
) -> Vec<Option<ChunkDigest>> {
    let size = disk.size.get();
    let lo = first_chunk.saturating_mul(CHUNK).min(size);
    let hi = first_chunk
        .saturating_add(u64::from(count))
        .saturating_mul(CHUNK)
        .min(size);
    let entries = log.entries();
    let mut newest = ExtentMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some((d, start, end)) = e.disk_range()
            && d == disk.disk
            && start < hi
            && end > lo
        {
            newest.insert(start.max(lo), end.min(hi), i);
        }
    }
    let ranges: Vec<(u64, u64, usize)> = newest.iter().collect();
    let mut digests: HashMap<usize, Option<Vec<GrainDigest>>> = HashMap::new();
    let mut out = Vec::new();
    let mut chunk_start = lo;
    while chunk_start < hi {
        let chunk_end = (chunk_start + CHUNK).min(hi);
        let mut grains = Vec::with_capacity(usize::try_from(CHUNK / GRAIN).unwrap_or(0));
        let mut known = true;
        let mut g = chunk_start;
        while g < chunk_end && known {
            let span_end = (g + GRAIN).min(chunk_end);
            // The first range that ends after the span starts.
            let at = ranges.partition_point(|&(_, end, _)| end <= g);
            match ranges.get(at) {
                Some(&(start, end, i)) if start <= g && end >= span_end => {
                    let digest = digests
                        .entry(i)
                        .or_insert_with(|| record_digests(log, &entries[i]))
                        .as_ref()
                        .and_then(|d| grain_of(&entries[i], d, g));
                    match digest {
                        Some(d) => grains.push(d),
                        None => known = false,
                    }
                }
                Some(&(start, _, _)) if start < span_end => known = false,
                _ => match baseline.map_or(Some(ZERO_GRAIN), |b| b.grain(disk, g, span_end)) {
                    Some(d) => grains.push(d),
                    None => known = false,
                },
            }
            g = span_end;
        }
        out.push(known.then(|| chunk_digest(&grains)));
        chunk_start = chunk_end;
    }
    out
}

/// The digest a record holds for the grain starting at `grain_start`.
fn grain_of(e: &Entry, digests: &[GrainDigest], grain_start: u64) -> Option<GrainDigest> {
    match e.what {
        EntryKind::Record {
            kind: RecordKind::Data,
            offset,
            ..
        } => {
            let i = grain_start / GRAIN - offset.get() / GRAIN;
            digests.get(usize::try_from(i).ok()?).copied()
        }
        EntryKind::Record { .. } => Some(ZERO_GRAIN),
        EntryKind::Barrier { .. } => None,
    }
}

/// The grain digests stored in the record an entry points at (none for zero and discard
/// records), or `None` if the record cannot be read or does not match its entry.
fn record_digests(log: &ServerLog, e: &Entry) -> Option<Vec<GrainDigest>> {
    let EntryKind::Record {
        kind,
        disk,
        offset,
        length,
    } = e.what
    else {
        return None;
    };
    if kind != RecordKind::Data {
        return Some(Vec::new());
    }
    let damaged = |reason: String| {
        tracing::error!(
            segment = %e.segment, position = e.position.0, seq = %e.seq,
            "cannot use a stored record for digest catch-up ({reason}); its chunk is reported unknown"
        );
        None
    };
    let (file, _) = log.segment_file(e.segment)?;
    let want = (FRAME_HEADER_LEN as u64
        + RECORD_HEAD_MAX_LEN as u64
        + 16 * grains_overlapped(offset.get(), length.get()))
    .min(u64::from(e.frame_len));
    let mut buf = vec![0u8; usize::try_from(want).ok()?];
    if let Err(err) = file.read_exact_at(&mut buf, e.position.0) {
        return damaged(err.to_string());
    }
    let head = buf.first_chunk::<FRAME_HEADER_LEN>()?;
    let parsed =
        FrameHeader::parse(head).and_then(|h| h.decode_record_head(&buf[FRAME_HEADER_LEN..]));
    match parsed {
        Ok((h, digests))
            if h.seq == e.seq
                && h.disk == disk
                && h.offset == offset
                && h.length == length
                && h.kind == kind
                && digests.len() as u64 == grains_overlapped(offset.get(), length.get()) =>
        {
            Some(digests)
        }
        Ok(_) => damaged("the record does not match its index entry".into()),
        Err(err) => damaged(ferry_wire::error_chain(&err)),
    }
}
