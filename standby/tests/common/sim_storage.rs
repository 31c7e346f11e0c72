//! An in-memory [`LogDir`] that models what a crash keeps, for fault-injection tests.
//!
//! Each file has a *cache* view (what the running process reads: the page cache) and a
//! *disk* view (what survives a power loss). Writes go to the cache and are dirty until
//! an fsync copies them to the disk. A directory's entries (creations, removals) survive
//! a power loss only once the directory is fsynced; `replace` is durable at once.
//!
//! Faults, shared by every file of the directory:
//! - a byte budget: writes past it fail like a full disk, after writing what fits;
//! - failing fsyncs, with Linux's semantics: the dirty pages are marked clean *without*
//!   reaching the disk, so a later fsync succeeds and the cache keeps bytes the disk lacks.

use ferry_standby::storage::{LogDir, LogFile};
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug)]
pub(crate) struct Faults {
    /// Bytes that may still be written.
    pub(crate) budget: AtomicI64,
    /// The next this many file fsyncs fail (EIO).
    pub(crate) failing_fsyncs: AtomicUsize,
    /// Directory fsyncs so far.
    pub(crate) dir_syncs: AtomicUsize,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            budget: AtomicI64::new(i64::MAX / 2),
            failing_fsyncs: AtomicUsize::new(0),
            dir_syncs: AtomicUsize::new(0),
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Contents {
    cache: Vec<u8>,
    disk: Vec<u8>,
    /// Byte ranges of `cache` written since the last fsync.
    dirty: Vec<(usize, usize)>,
}

#[derive(Debug)]
pub(crate) struct SimFile {
    contents: Mutex<Contents>,
    faults: Arc<Faults>,
}

impl SimFile {
    fn new(contents: Contents, faults: &Arc<Faults>) -> Arc<Self> {
        Arc::new(Self {
            contents: Mutex::new(contents),
            faults: faults.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Contents> {
        self.contents.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn usize_of(v: u64) -> usize {
    usize::try_from(v).expect("test files fit in memory")
}

impl LogFile for SimFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.lock().cache.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        let c = self.lock();
        let pos = usize_of(pos);
        match c.cache.get(pos..pos + buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        let wanted = i64::try_from(buf.len()).expect("small");
        let left = self.faults.budget.fetch_sub(wanted, Ordering::SeqCst);
        let (fits, full) = if left < wanted {
            self.faults.budget.fetch_add(wanted, Ordering::SeqCst);
            (usize::try_from(left.max(0)).expect("non-negative"), true)
        } else {
            (buf.len(), false)
        };
        let mut c = self.lock();
        let pos = usize_of(pos);
        if c.cache.len() < pos + fits {
            c.cache.resize(pos + fits, 0);
        }
        c.cache[pos..pos + fits].copy_from_slice(&buf[..fits]);
        c.dirty.push((pos, pos + fits));
        if full {
            return Err(io::ErrorKind::StorageFull.into());
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut c = self.lock();
        let failing = self
            .faults
            .failing_fsyncs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            c.dirty.clear(); // marked clean, never written
            return Err(io::Error::other("input/output error (injected)"));
        }
        let len = c.cache.len();
        c.disk.resize(len, 0);
        for (start, end) in std::mem::take(&mut c.dirty) {
            let end = end.min(len);
            if start < end {
                let src = c.cache[start..end].to_vec();
                c.disk[start..end].copy_from_slice(&src);
            }
        }
        Ok(())
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        let mut c = self.lock();
        let len = usize_of(len);
        let old = c.cache.len();
        c.cache.resize(len, 0);
        if len > old {
            c.dirty.push((old, len));
        }
        Ok(())
    }

    fn allocated(&self) -> io::Result<u64> {
        Ok(self.lock().cache.len() as u64)
    }

    fn drop_cache(&self) -> io::Result<()> {
        // Clean pages are dropped; dirty ones (not yet written back) stay.
        let mut c = self.lock();
        let mut fresh = c.disk.clone();
        fresh.resize(c.cache.len(), 0);
        for &(start, end) in &c.dirty {
            let end = end.min(fresh.len());
            if start < end {
                fresh[start..end].copy_from_slice(&c.cache[start..end]);
            }
        }
        c.cache = fresh;
        Ok(())
    }
}

#[derive(Debug)]
pub(crate) struct SimDir {
    name: PathBuf,
    files: Mutex<BTreeMap<String, Arc<SimFile>>>,
    /// The entries a power loss keeps.
    durable: Mutex<BTreeMap<String, Arc<SimFile>>>,
    pub(crate) faults: Arc<Faults>,
}

impl SimDir {
    pub(crate) fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: PathBuf::from(format!("/sim/{name}")),
            files: Mutex::default(),
            durable: Mutex::default(),
            faults: Arc::default(),
        })
    }

    /// The directory as a power loss leaves it: durable entries, each file's disk view.
    /// Faults are reset.
    pub(crate) fn after_power_loss(&self) -> Arc<Self> {
        let faults = Arc::default();
        let files: BTreeMap<_, _> = lock(&self.durable)
            .iter()
            .map(|(name, f)| {
                let disk = f.lock().disk.clone();
                let contents = Contents {
                    cache: disk.clone(),
                    disk,
                    dirty: Vec::new(),
                };
                (name.clone(), SimFile::new(contents, &faults))
            })
            .collect();
        Arc::new(Self {
            name: self.name.clone(),
            durable: Mutex::new(files.clone()),
            files: Mutex::new(files),
            faults,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file"))
}

impl LogDir for SimDir {
    fn describe(&self, name: &str) -> PathBuf {
        self.name.join(name)
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(lock(&self.files).keys().cloned().collect())
    }

    fn create(&self, name: &str) -> io::Result<Arc<dyn LogFile>> {
        let mut files = lock(&self.files);
        if files.contains_key(name) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        let file = SimFile::new(Contents::default(), &self.faults);
        files.insert(name.to_owned(), file.clone());
        Ok(file)
    }

    fn open(&self, name: &str, _read_only: bool) -> io::Result<Arc<dyn LogFile>> {
        let file = lock(&self.files).get(name).cloned();
        Ok(file.ok_or_else(|| not_found(name))?)
    }

    fn read_small(&self, name: &str, max: u64) -> io::Result<Vec<u8>> {
        let file = lock(&self.files)
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))?;
        let bytes = file.lock().cache.clone();
        if bytes.len() as u64 > max {
            return Err(io::ErrorKind::InvalidData.into());
        }
        Ok(bytes)
    }

    fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let contents = Contents {
            cache: bytes.to_vec(),
            disk: bytes.to_vec(),
            dirty: Vec::new(),
        };
        let file = SimFile::new(contents, &self.faults);
        lock(&self.files).insert(name.to_owned(), file.clone());
        lock(&self.durable).insert(name.to_owned(), file);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        lock(&self.files).remove(name);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.faults.dir_syncs.fetch_add(1, Ordering::SeqCst);
        *lock(&self.durable) = lock(&self.files).clone();
        Ok(())
    }
}
