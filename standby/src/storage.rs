//! Where the standby's files live, behind two small traits so that tests can inject
//! faults (a full disk, a failing fsync) without root or a real small filesystem.
//!
//! - [`LogDir`]: one directory of a server's log: list, create, open, replace small files
//!   atomically, remove, and make the directory's entries durable.
//! - [`LogFile`]: one file in it, addressed by position (`pread`/`pwrite`), so that the
//!   ingest path and the group-commit thread can share it without a cursor.
//!
//! [`FsDir`] is the real implementation on a local filesystem.

use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One file of a log, read and written by position.
pub trait LogFile: Send + Sync + Debug {
    /// Current length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Fills `buf` from `pos`; an early end of file is an `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()>;
    /// Writes all of `buf` at `pos`. On error, part of it may have been written.
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Makes the file's data (and its length) durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Cuts the file to `len` bytes.
    fn truncate(&self, len: u64) -> io::Result<()>;
    /// Bytes the file occupies on the storage (allocated blocks), for space reports.
    fn allocated(&self) -> io::Result<u64>;
    /// Drops the file's clean cached pages, so that reads come from the storage.
    fn drop_cache(&self) -> io::Result<()>;
}

/// One directory holding a log's files.
pub trait LogDir: Send + Sync + Debug {
    /// A name for messages (the directory's path).
    fn describe(&self, name: &str) -> PathBuf;
    /// Names of the regular files in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates a new, empty file (refusing an existing one), readable and writable.
    fn create(&self, name: &str) -> io::Result<Arc<dyn LogFile>>;
    /// Opens an existing file, readable and (unless `read_only`) writable.
    fn open(&self, name: &str, read_only: bool) -> io::Result<Arc<dyn LogFile>>;
    /// Reads a small file whole, refusing one longer than `max` bytes.
    fn read_small(&self, name: &str, max: u64) -> io::Result<Vec<u8>>;
    /// Replaces `name` with `bytes` atomically and durably (temporary file, fsync, rename,
    /// directory fsync): a crash leaves the old content or the new, never a mix.
    fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Removes a file; a missing file is not an error.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes creations, renames and removals in the directory durable.
    fn sync(&self) -> io::Result<()>;
}

/// A [`LogFile`] on a local filesystem.
#[derive(Debug)]
pub struct FsFile(File);

impl LogFile for FsFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.0, buf, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.0, buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn allocated(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.blocks() * 512)
    }
    fn drop_cache(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: posix_fadvise on an open descriptor; it only drops clean cached pages.
        match unsafe { libc::posix_fadvise(self.0.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) } {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// A [`LogDir`] on a local filesystem.
#[derive(Debug, Clone)]
pub struct FsDir {
    path: PathBuf,
}

impl FsDir {
    /// The directory at `path`, created (with its parents) if `create` and missing.
    pub fn open(path: &Path, create: bool) -> io::Result<Self> {
        if create {
            fs::create_dir_all(path)?;
        } else if !path.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a directory", path.display()),
            ));
        }
        Ok(Self {
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl LogDir for FsDir {
    fn describe(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.path)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Ok(name) = entry.file_name().into_string()
            {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn create(&self, name: &str) -> io::Result<Arc<dyn LogFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.path.join(name))?;
        Ok(Arc::new(FsFile(file)))
    }

    fn open(&self, name: &str, read_only: bool) -> io::Result<Arc<dyn LogFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(self.path.join(name))?;
        Ok(Arc::new(FsFile(file)))
    }

    fn read_small(&self, name: &str, max: u64) -> io::Result<Vec<u8>> {
        let file = File::open(self.path.join(name))?;
        let len = file.metadata()?.len();
        if len > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name} is {len} bytes long (at most {max} expected)"),
            ));
        }
        let mut buf = vec![0u8; usize::try_from(len).expect("bounded by max")];
        FileExt::read_exact_at(&file, &mut buf, 0)?;
        Ok(buf)
    }

    fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.path.join(format!(".{name}.tmp"));
        let result = (|| {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            FileExt::write_all_at(&file, bytes, 0)?;
            file.sync_data()?;
            fs::rename(&tmp, self.path.join(name))?;
            self.sync()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        match fs::remove_file(self.path.join(name)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn sync(&self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }
}

/// Whether an I/O error means the storage is out of space (or quota): the standby stops
/// acknowledging and waits for space instead of failing the stream.
pub fn is_out_of_space(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}
