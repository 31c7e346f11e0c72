//! The tracker's state file, written on clean shutdown and read (then removed, once
//! tracking runs) on start, so that a restart loses nothing and a crash is detected (no
//! file → a gap). A file that cannot be used — damaged, or written by an older ferry — is
//! refused with the reason, and the tracker turns that into a gap too (I3): never a guess.
//!
//! ```text
//!  0    8  magic "FRYTRK03"        (01, 02: bincode bodies, refused as an old version)
//!  8    4  body length n           (u32 LE, at most MAX_STATE_BYTES)
//!  12   n  body
//!  12+n 4  crc32 of bytes 0..12+n
//!
//! body, in the primitives of ferry_wire::body (little-endian, fixed width):
//!  epoch u64 · drops_seen u64 · skipped_seen u64 · disks list<disk>
//!    disk   dev u32 · size u64 · dirty list<range> · suspect list<range>
//!           · in_flight list<range> · fallback_seen list<counter> · gap opt<text>
//!    range  start u64 · end u64          (start < end ≤ size rounded up to a grain)
//!    counter chunk u32 · value u64
//! ```
//!
//! Written to a temporary file, fsynced, renamed into place, directory fsynced.

use crate::dirty::GRAIN;
use ferry_wire::body::{BodyError, LayoutError, Reader, Writer};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"FRYTRK03";
/// Magics of the older layouts, refused by name.
const OLD_MAGICS: [&[u8; 8]; 2] = [b"FRYTRK01", b"FRYTRK02"];
/// Largest state file read (bounds the allocation for the body).
pub const MAX_STATE_BYTES: u32 = 1 << 30;

/// One disk's saved state: byte ranges as (start, end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedDisk {
    /// Kernel dev_t and size: a different disk at the same index is not restored.
    pub dev: u32,
    pub size: u64,
    pub dirty: Vec<(u64, u64)>,
    pub suspect: Vec<(u64, u64)>,
    /// Ranges in flight at shutdown: restored as dirty and unresolved (swept later).
    pub in_flight: Vec<(u64, u64)>,
    /// Fallback counters as last seen: (chunk index, value) for non-zero ones.
    pub fallback_seen: Vec<(u32, u64)>,
    /// A gap not yet caught up, with its reason.
    pub gap: Option<String>,
}

/// Everything saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// The pinned BPF instance this state belongs to.
    pub epoch: u64,
    pub drops_seen: u64,
    /// The programs' skipped submission runs already turned into gaps.
    pub skipped_seen: u64,
    pub disks: Vec<SavedDisk>,
}

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a ferry tracker state file (bad magic, length or crc32)")]
    Corrupt { path: PathBuf },
    #[error(
        "{path} was written by an older ferry (layout {found}, this one reads {})",
        String::from_utf8_lossy(MAGIC)
    )]
    OldVersion { path: PathBuf, found: String },
    #[error("{path}: the state does not decode: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: BodyError,
    },
    #[error("{path}: disk {disk}: range {start}..{end} is empty or outside its {size} bytes")]
    BadRange {
        path: PathBuf,
        disk: usize,
        start: u64,
        end: u64,
        size: u64,
    },
    #[error("{path}: the state cannot be laid out: {source}")]
    Layout {
        path: PathBuf,
        #[source]
        source: LayoutError,
    },
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl Fn(std::io::Error) -> PersistError + 'a {
    move |source| PersistError::Io {
        path: path.to_owned(),
        what,
        source,
    }
}

/// The body of `saved` (layout in the module doc).
fn encode(saved: &Saved) -> Result<Vec<u8>, LayoutError> {
    let mut body = Vec::new();
    let w = &mut Writer::new(&mut body);
    w.u64(saved.epoch);
    w.u64(saved.drops_seen);
    w.u64(saved.skipped_seen);
    w.count("disks", saved.disks.len())?;
    for d in &saved.disks {
        w.u32(d.dev);
        w.u64(d.size);
        for (field, ranges) in [
            ("dirty", &d.dirty),
            ("suspect", &d.suspect),
            ("in flight", &d.in_flight),
        ] {
            w.count(field, ranges.len())?;
            for &(start, end) in ranges {
                w.u64(start);
                w.u64(end);
            }
        }
        w.count("fallback counters", d.fallback_seen.len())?;
        for &(chunk, value) in &d.fallback_seen {
            w.u32(chunk);
            w.u64(value);
        }
        w.opt_text("gap", d.gap.as_deref())?;
    }
    Ok(body)
}

/// The least bytes one saved disk takes (dev, size, four empty lists, no gap).
const DISK_LEAST: u64 = 4 + 8 + 4 * 4 + 1;

fn decode(body: &[u8]) -> Result<Saved, BodyError> {
    let r = &mut Reader::new(body);
    let epoch = r.u64("epoch")?;
    let drops_seen = r.u64("drops seen")?;
    let skipped_seen = r.u64("skipped seen")?;
    let count = r.count("disks", DISK_LEAST)?;
    let mut disks = Vec::with_capacity(count);
    for _ in 0..count {
        let dev = r.u32("dev")?;
        let size = r.u64("size")?;
        let mut ranges = |field: &'static str| -> Result<Vec<(u64, u64)>, BodyError> {
            let n = r.count(field, 16)?;
            (0..n).map(|_| Ok((r.u64(field)?, r.u64(field)?))).collect()
        };
        let (dirty, suspect, in_flight) =
            (ranges("dirty")?, ranges("suspect")?, ranges("in flight")?);
        let n = r.count("fallback counters", 12)?;
        let fallback_seen = (0..n)
            .map(|_| Ok((r.u32("fallback chunk")?, r.u64("fallback value")?)))
            .collect::<Result<_, BodyError>>()?;
        let gap = r.opt("gap", |r| r.text("gap"))?;
        disks.push(SavedDisk {
            dev,
            size,
            dirty,
            suspect,
            in_flight,
            fallback_seen,
            gap,
        });
    }
    r.finish()?;
    Ok(Saved {
        epoch,
        drops_seen,
        skipped_seen,
        disks,
    })
}

/// The file's bytes for `saved`: header, body, crc.
fn file_bytes(path: &Path, saved: &Saved) -> Result<Vec<u8>, PersistError> {
    let body = encode(saved).map_err(|source| PersistError::Layout {
        path: path.to_owned(),
        source,
    })?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&n| n <= MAX_STATE_BYTES)
        .ok_or_else(|| PersistError::Io {
            path: path.to_owned(),
            what: "state too large",
            source: std::io::Error::other(format!("{} bytes", body.len())),
        })?;
    let mut bytes = Vec::with_capacity(body.len() + 16);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&body);
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    Ok(bytes)
}

/// Writes `saved` to `path` atomically.
pub fn save(path: &Path, saved: &Saved) -> Result<(), PersistError> {
    let bytes = file_bytes(path, saved)?;
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io(&tmp, "cannot create"))?;
    f.write_all(&bytes).map_err(io(&tmp, "cannot write"))?;
    f.sync_all().map_err(io(&tmp, "cannot fsync"))?;
    fs::rename(&tmp, path).map_err(io(path, "cannot rename into place"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir, "cannot fsync directory"))?;
    }
    Ok(())
}

/// Reads the state file: `None` if there is none (first start, or a crash). The caller
/// [`remove`]s it once the state is in use.
pub fn load(path: &Path) -> Result<Option<Saved>, PersistError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path, "cannot read")(e)),
    };
    parse(path, &bytes).map(Some)
}

/// A state file's bytes to the state, every field checked.
fn parse(path: &Path, bytes: &[u8]) -> Result<Saved, PersistError> {
    let corrupt = || PersistError::Corrupt {
        path: path.to_owned(),
    };
    if let Some(old) = OLD_MAGICS.iter().find(|m| bytes.starts_with(&m[..])) {
        return Err(PersistError::OldVersion {
            path: path.to_owned(),
            found: String::from_utf8_lossy(&old[..]).into_owned(),
        });
    }
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(corrupt());
    }
    let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if len > MAX_STATE_BYTES || bytes.len() as u64 != 16 + u64::from(len) {
        return Err(corrupt());
    }
    let (head, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(head) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(corrupt());
    }
    let saved = decode(&head[12..]).map_err(|source| PersistError::Decode {
        path: path.to_owned(),
        source,
    })?;
    for (disk, d) in saved.disks.iter().enumerate() {
        // Dirty ranges are whole grains, so the last may reach past an unaligned end.
        let limit = d.size.div_ceil(GRAIN).saturating_mul(GRAIN);
        let mut ranges = d.dirty.iter().chain(&d.suspect).chain(&d.in_flight);
        if let Some(&(start, end)) = ranges.find(|&&(s, e)| s >= e || e > limit) {
            return Err(PersistError::BadRange {
                path: path.to_owned(),
                disk,
                start,
                end,
                size: d.size,
            });
        }
    }
    Ok(saved)
}

/// Removes the state file (missing is fine).
pub fn remove(path: &Path) -> Result<(), PersistError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path, "cannot remove")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn example() -> Saved {
        Saved {
            epoch: 42,
            drops_seen: 3,
            skipped_seen: 1,
            disks: vec![SavedDisk {
                dev: 7 << 20,
                size: 1 << 30,
                dirty: vec![(0, 4096), (8192, 16384)],
                suspect: vec![(8192, 12288)],
                in_flight: vec![(1 << 20, 2 << 20)],
                fallback_seen: vec![(5, 1)],
                gap: Some("crash".into()),
            }],
        }
    }

    /// The example's file, byte for byte as the module doc draws it. A change here is a
    /// change of the stored format: bump the magic and keep refusing the old one.
    const GOLDEN: &str = "46525954524b3033 8c000000 \
        2a00000000000000 0300000000000000 0100000000000000 01000000 \
        00007000 0000004000000000 \
        02000000 0000000000000000 0010000000000000 0020000000000000 0040000000000000 \
        01000000 0020000000000000 0030000000000000 \
        01000000 0000100000000000 0000200000000000 \
        01000000 05000000 0100000000000000 \
        01 0500 6372617368 \
        09566f03";

    fn hex(s: &str) -> Vec<u8> {
        let digits: String = s.chars().filter(char::is_ascii_hexdigit).collect();
        (0..digits.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_state_file_matches_its_golden_bytes() {
        let path = Path::new("golden");
        assert_eq!(file_bytes(path, &example()).unwrap(), hex(GOLDEN));
        assert_eq!(parse(path, &hex(GOLDEN)).unwrap(), example());
    }

    #[test]
    fn saved_state_round_trips_once_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tracker.state");
        save(&path, &example()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(example()));
        remove(&path).unwrap();
        assert_eq!(
            load(&path).unwrap(),
            None,
            "a removed state file still loads"
        );
        save(&path, &example()).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[20] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(load(&path), Err(PersistError::Corrupt { .. })));
    }

    #[test]
    fn an_older_layout_is_refused_by_name() {
        for old in OLD_MAGICS {
            let mut bytes = hex(GOLDEN);
            bytes[..8].copy_from_slice(old);
            let err = parse(Path::new("old"), &bytes).unwrap_err();
            assert!(
                matches!(&err, PersistError::OldVersion { found, .. } if found.as_bytes() == old),
                "{err}"
            );
            assert!(err.to_string().contains("older ferry"), "{err}");
        }
    }

    /// A file whose crc is right but whose fields are not: sealed again after the change.
    fn resealed(mut bytes: Vec<u8>) -> Vec<u8> {
        let body = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn a_range_outside_its_disk_or_empty_is_refused() {
        let mut bad = example();
        bad.disks[0].suspect = vec![(1 << 30, (1 << 30) + 4096)];
        let bytes = file_bytes(Path::new("x"), &bad).unwrap();
        let err = parse(Path::new("x"), &bytes).unwrap_err();
        assert!(
            matches!(err, PersistError::BadRange { disk: 0, .. }),
            "{err}"
        );
        bad.disks[0].suspect = vec![(4096, 4096)];
        let bytes = file_bytes(Path::new("x"), &bad).unwrap();
        assert!(matches!(
            parse(Path::new("x"), &bytes),
            Err(PersistError::BadRange { .. })
        ));
    }

    #[test]
    fn a_count_beyond_the_body_is_refused_before_allocating() {
        let mut bytes = hex(GOLDEN);
        // The disk count (at 12 + 24) claims four billion disks.
        bytes[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = parse(Path::new("x"), &resealed(bytes)).unwrap_err();
        assert!(
            matches!(
                err,
                PersistError::Decode {
                    source: BodyError::Truncated { field: "disks", .. },
                    ..
                }
            ),
            "{err}"
        );
    }

    fn saved() -> impl Strategy<Value = Saved> {
        let range = (0u64..1 << 20, 1u64..1 << 20).prop_map(|(s, n)| (s, s + n));
        let disk = (
            any::<u32>(),
            proptest::collection::vec(range.clone(), 0..4),
            proptest::collection::vec(range.clone(), 0..4),
            proptest::collection::vec(range, 0..4),
            proptest::collection::vec((any::<u32>(), any::<u64>()), 0..4),
            proptest::option::of("[ -~]{0,40}"),
        )
            .prop_map(
                |(dev, dirty, suspect, in_flight, fallback_seen, gap)| SavedDisk {
                    dev,
                    size: 2 << 20,
                    dirty,
                    suspect,
                    in_flight,
                    fallback_seen,
                    gap,
                },
            );
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(disk, 0..4),
        )
            .prop_map(|(epoch, drops_seen, skipped_seen, disks)| Saved {
                epoch,
                drops_seen,
                skipped_seen,
                disks,
            })
    }

    proptest! {
        #[test]
        fn any_state_round_trips(s in saved()) {
            let bytes = file_bytes(Path::new("p"), &s).unwrap();
            prop_assert_eq!(parse(Path::new("p"), &bytes).unwrap(), s);
        }

        /// Cut anywhere, or with any byte changed and sealed again, a file is refused or
        /// read as some state: never a panic.
        #[test]
        fn damaged_files_never_panic(s in saved(), cut in any::<prop::sample::Index>(),
                                     at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let bytes = file_bytes(Path::new("p"), &s).unwrap();
            let _ = parse(Path::new("p"), &bytes[..cut.index(bytes.len())]);
            let mut flipped = bytes.clone();
            let i = 12 + at.index(bytes.len() - 16);
            flipped[i] ^= 1 << bit;
            let _ = parse(Path::new("p"), &resealed(flipped));
        }
    }
}
