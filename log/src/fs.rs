//! The file operations the log performs, behind a small trait.
//!
//! The log never calls `std::fs` directly: it goes through [`Fs`], so that tests can swap in
//! [`crate::sim::SimFs`], which records every write and fsync and produces the on-disk state a
//! crash at any point would leave. [`RealFs`] is the implementation used outside tests.

use std::fmt::Debug;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::map::SegmentBytes;

/// How a reader gets at segment bytes: mapped with memmap2, or read into memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// Map segment files (the default): no copy, and the page cache is shared between readers.
    #[default]
    Mmap,
    /// Read segment bytes with `pread` into owned buffers.
    Read,
}

/// Whether opening a file for writing may create it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    /// The file must not exist yet.
    New,
    /// The file must exist.
    No,
}

/// An open file.
#[expect(clippy::len_without_is_empty, reason = "a file length, not a collection")]
pub trait FsFile: Send + Sync + Debug {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (short only at EOF).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, growing the file if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// `fdatasync`: makes the file's data (and the size it needs) durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Sets the file length.
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// A held writer lock; dropping it releases the lock.
pub trait FsLock: Send + Sync + Debug {
    /// Replaces the lock file's content (the holder's pid and host, for messages).
    fn write_info(&self, info: &str) -> io::Result<()>;
}

/// The result of trying to take the writer lock.
#[derive(Debug)]
pub enum LockAttempt {
    /// The lock is ours until the value is dropped.
    Acquired(Box<dyn FsLock>),
    /// Another process holds it; its lock file said this.
    Busy {
        /// The lock file's content, as the holder wrote it.
        info: String,
    },
}

/// The file-system operations the log needs.
pub trait Fs: Send + Sync + Debug {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries in `dir` (files only matter), in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Opens a file for reading.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Opens a file for reading and writing.
    fn open_write(&self, path: &Path, create: Create) -> io::Result<Box<dyn FsFile>>;
    /// Renames atomically, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// fsyncs a directory, making entries created or renamed in it durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes the exclusive writer lock on `path` (created if missing); waits for it if `wait`.
    fn lock(&self, path: &Path, wait: bool) -> io::Result<LockAttempt>;
    /// Whether some process holds the writer lock on `path` right now (without taking it for
    /// longer than the check, and without creating the file).
    fn lock_held(&self, path: &Path) -> io::Result<bool>;
    /// The first `len` bytes of the file at `path`, mapped or read as `mode` says.
    fn load(&self, path: &Path, len: u64, mode: ReadMode) -> io::Result<SegmentBytes>;
}

/// The operating system's file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile(File);

impl FsFile for RealFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

#[derive(Debug)]
struct RealLock {
    file: File,
}

impl FsLock for RealLock {
    fn write_info(&self, info: &str) -> io::Result<()> {
        self.file.set_len(0)?;
        (&self.file).write_all(info.as_bytes())
    }
}

impl Fs for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(RealFile(File::open(path)?)))
    }

    fn open_write(&self, path: &Path, create: Create) -> io::Result<Box<dyn FsFile>> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if create == Create::New {
            o.create_new(true);
        }
        Ok(Box::new(RealFile(o.open(path)?)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn lock(&self, path: &Path, wait: bool) -> io::Result<LockAttempt> {
        // std opens with O_CLOEXEC, so job processes never inherit the lock (L5).
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        if wait {
            file.lock()?;
        } else {
            // A reader checking whether a writer is alive holds a shared lock for microseconds:
            // a writer that meets one tries again for a moment before calling the log busy.
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(250);
            loop {
                match file.try_lock() {
                    Ok(()) => break,
                    Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(TryLockError::WouldBlock) => {
                        let mut info = String::new();
                        let _ = (&file).take(4096).read_to_string(&mut info);
                        return Ok(LockAttempt::Busy { info });
                    }
                    Err(TryLockError::Error(e)) => return Err(e),
                }
            }
        }
        Ok(LockAttempt::Acquired(Box::new(RealLock { file })))
    }

    fn lock_held(&self, path: &Path) -> io::Result<bool> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        // A shared lock is refused while a writer holds the exclusive one.
        match file.try_lock_shared() {
            Ok(()) => Ok(false),
            Err(TryLockError::WouldBlock) => Ok(true),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    fn load(&self, path: &Path, len: u64, mode: ReadMode) -> io::Result<SegmentBytes> {
        let file = File::open(path)?;
        match mode {
            ReadMode::Mmap => SegmentBytes::map(&file, len),
            ReadMode::Read => SegmentBytes::read(&RealFile(file), len),
        }
    }
}

/// This host's name, for lock messages and process records.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
