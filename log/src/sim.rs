//! A simulated file system for crash testing: it records every write, fdatasync, create, rename
//! and directory fsync, and produces the on-disk state a crash at any point would leave.
//!
//! The model is the conservative POSIX one (as in ALICE, OSDI'14): a file's data is durable only
//! up to its last `sync_data`; a directory entry (create, rename, unlink) only once its directory
//! is fsynced. Everything after that may or may not have reached the disk: each later write
//! independently persists whole, not at all, or torn at 512-byte sectors (each sector new, old or
//! zero), and the later directory operations of a directory persist as a prefix, in order.
//!
//! [`SimFs::crash_image`] builds such a state as a fresh `SimFs`, which a test then opens and
//! recovers. Faults can be injected too: [`SimFs::fail_nth`] makes one chosen operation fail.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::fs::{Create, Fs, FsFile, FsLock, LockAttempt, ReadMode};
use crate::map::SegmentBytes;

/// Sector size of the simulated disk: the unit in which a write can tear.
pub const SECTOR_BYTES: usize = 512;

#[derive(Clone, Debug)]
enum Op {
    Write { ino: usize, offset: u64, data: Vec<u8> },
    SetLen { ino: usize, len: u64 },
    SyncData { ino: usize },
    Link { path: PathBuf, ino: usize },
    Rename { from: PathBuf, to: PathBuf },
    Unlink { path: PathBuf },
    SyncDir { dir: PathBuf },
}

/// Which operation a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOp {
    /// `write_at`.
    Write,
    /// `sync_data`.
    SyncData,
    /// `sync_dir`.
    SyncDir,
    /// `rename`.
    Rename,
}

#[derive(Debug, Default)]
struct State {
    inodes: Vec<Vec<u8>>,
    names: BTreeMap<PathBuf, usize>,
    /// The durable state the op log starts from (empty, or the crash image this was made as).
    base_names: BTreeMap<PathBuf, usize>,
    base_inodes: Vec<Vec<u8>>,
    dirs: BTreeSet<PathBuf>,
    ops: Vec<Op>,
    locks: BTreeSet<PathBuf>,
    fault: Option<(FaultOp, usize)>,
}

impl State {
    /// Counts down an armed fault; true when this operation must fail.
    fn hit(&mut self, op: FaultOp) -> bool {
        match &mut self.fault {
            Some((kind, n)) if *kind == op => {
                if *n == 0 {
                    self.fault = None;
                    true
                } else {
                    *n -= 1;
                    false
                }
            }
            _ => false,
        }
    }
}

fn injected() -> io::Error {
    io::Error::other("injected I/O error (SimFs)")
}

/// What a crash image keeps of the operations after the last sync point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Only what was synced.
    SyncedOnly,
    /// Everything that was written (what a process crash leaves).
    Everything,
    /// A random choice per write and per sector, from this seed.
    Random(u64),
}

/// The simulated file system. Cloning shares the same state.
#[derive(Clone, Debug, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

/// A small deterministic generator (xorshift64*), so crash images are reproducible from a seed.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from a seed (0 is replaced by a fixed constant).
    pub fn new(seed: u64) -> SimRng {
        SimRng(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

fn parent(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn apply_write(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let end = offset as usize + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[offset as usize..end].copy_from_slice(bytes);
}

impl SimFs {
    /// An empty file system.
    pub fn new() -> SimFs {
        SimFs::default()
    }

    /// Operations recorded so far; a crash point is a number of operations.
    pub fn op_count(&self) -> usize {
        self.state.lock().ops.len()
    }

    /// Crash points worth testing: before anything, right after every fdatasync and directory
    /// fsync, and after the last operation.
    pub fn sync_points(&self) -> Vec<usize> {
        let st = self.state.lock();
        let mut points = vec![0];
        for (i, op) in st.ops.iter().enumerate() {
            if matches!(op, Op::SyncData { .. } | Op::SyncDir { .. }) {
                points.push(i + 1);
            }
        }
        points.push(st.ops.len());
        points.dedup();
        points
    }

    /// The recorded operations, one line each (for diagnosing a failing crash test).
    pub fn describe_ops(&self) -> Vec<String> {
        let st = self.state.lock();
        let name = |ino: usize| {
            st.names
                .iter()
                .find(|(_, i)| **i == ino)
                .map_or(format!("#{ino}"), |(p, _)| p.display().to_string())
        };
        st.ops
            .iter()
            .enumerate()
            .map(|(i, op)| match op {
                Op::Write { ino, offset, data } => {
                    format!("{i}: write {} @{offset} +{}", name(*ino), data.len())
                }
                Op::SetLen { ino, len } => format!("{i}: set_len {} {len}", name(*ino)),
                Op::SyncData { ino } => format!("{i}: fdatasync {}", name(*ino)),
                Op::Link { path, ino } => format!("{i}: create {} (#{ino})", path.display()),
                Op::Rename { from, to } => {
                    format!("{i}: rename {} -> {}", from.display(), to.display())
                }
                Op::Unlink { path } => format!("{i}: unlink {}", path.display()),
                Op::SyncDir { dir } => format!("{i}: fsync dir {}", dir.display()),
            })
            .collect()
    }

    /// Makes the `n`-th next operation of kind `op` (0 = the very next) fail with an I/O error.
    pub fn fail_nth(&self, op: FaultOp, n: usize) {
        self.state.lock().fault = Some((op, n));
    }

    /// The current content of a file, as processes see it.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.state.lock();
        st.names.get(path).map(|&ino| st.inodes[ino].clone())
    }

    /// Replaces the current content of a file (for mutation tests).
    pub fn set_contents(&self, path: &Path, data: Vec<u8>) {
        let mut st = self.state.lock();
        if let Some(&ino) = st.names.get(path) {
            st.inodes[ino] = data;
        }
    }

    /// The state on disk after a crash once `at` operations had run, as a fresh file system
    /// with no history: synced data and directory entries, plus what `mode` keeps of the rest.
    pub fn crash_image(&self, at: usize, mode: CrashMode) -> SimFs {
        let st = self.state.lock();
        let ops = &st.ops[..at.min(st.ops.len())];
        let mut rng = SimRng::new(match mode {
            CrashMode::Random(seed) => seed,
            _ => 1,
        });

        // Directory entries: durable up to the last fsync of their directory; after it, a
        // prefix of the remaining operations of that directory.
        let mut last_dir_sync: BTreeMap<PathBuf, usize> = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            if let Op::SyncDir { dir } = op {
                last_dir_sync.insert(dir.clone(), i);
            }
        }
        let mut keep_unsynced: BTreeMap<PathBuf, usize> = BTreeMap::new();
        let mut unsynced_seen: BTreeMap<PathBuf, usize> = BTreeMap::new();
        let mut names: BTreeMap<PathBuf, usize> = st.base_names.clone();
        for (i, op) in ops.iter().enumerate() {
            let dir = match op {
                Op::Link { path, .. } | Op::Unlink { path } => parent(path),
                Op::Rename { to, .. } => parent(to),
                _ => continue,
            };
            let durable = last_dir_sync.get(&dir).is_some_and(|&s| s > i);
            if !durable {
                let allowed = *keep_unsynced.entry(dir.clone()).or_insert_with(|| match mode {
                    CrashMode::SyncedOnly => 0,
                    CrashMode::Everything => usize::MAX,
                    CrashMode::Random(_) => rng.below(8) as usize,
                });
                let seen = unsynced_seen.entry(dir).or_insert(0);
                *seen += 1;
                if *seen > allowed {
                    continue;
                }
            }
            match op {
                Op::Link { path, ino } => {
                    names.insert(path.clone(), *ino);
                }
                Op::Unlink { path } => {
                    names.remove(path);
                }
                Op::Rename { from, to } => {
                    if let Some(ino) = names.remove(from) {
                        names.insert(to.clone(), ino);
                    }
                }
                _ => {}
            }
        }

        // File data: durable up to each inode's last fdatasync; later writes per `mode`.
        let mut last_sync: BTreeMap<usize, usize> = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            if let Op::SyncData { ino } = op {
                last_sync.insert(*ino, i);
            }
        }
        let mut data: Vec<Vec<u8>> = vec![Vec::new(); st.inodes.len()];
        data[..st.base_inodes.len()].clone_from_slice(&st.base_inodes);
        for (i, op) in ops.iter().enumerate() {
            let (ino, durable) = match op {
                Op::Write { ino, .. } | Op::SetLen { ino, .. } => {
                    (*ino, last_sync.get(ino).is_some_and(|&s| s > i))
                }
                _ => continue,
            };
            let d = &mut data[ino];
            match (op, durable, mode) {
                (Op::Write { offset, data: bytes, .. }, true, _)
                | (Op::Write { offset, data: bytes, .. }, false, CrashMode::Everything) => {
                    apply_write(d, *offset, bytes)
                }
                (Op::SetLen { len, .. }, true, _)
                | (Op::SetLen { len, .. }, false, CrashMode::Everything) => {
                    d.resize(*len as usize, 0)
                }
                (_, false, CrashMode::SyncedOnly) => {}
                (Op::Write { offset, data: bytes, .. }, false, CrashMode::Random(_)) => {
                    match rng.below(3) {
                        0 => {}
                        1 => apply_write(d, *offset, bytes),
                        _ => tear_write(d, *offset, bytes, &mut rng),
                    }
                }
                (Op::SetLen { len, .. }, false, CrashMode::Random(_)) if rng.below(2) == 0 => {
                    d.resize(*len as usize, 0);
                }
                _ => {}
            }
        }

        let mut out = State { dirs: st.dirs.clone(), ..State::default() };
        for (path, ino) in names {
            out.names.insert(path, out.inodes.len());
            out.inodes.push(std::mem::take(&mut data[ino]));
        }
        out.base_names = out.names.clone();
        out.base_inodes = out.inodes.clone();
        SimFs { state: Arc::new(Mutex::new(out)) }
    }
}

/// Applies a write sector by sector, each sector new, old or zero.
fn tear_write(d: &mut Vec<u8>, offset: u64, bytes: &[u8], rng: &mut SimRng) {
    let start = offset as usize;
    let end = start + bytes.len();
    let mut pos = start;
    while pos < end {
        let sector_end = ((pos / SECTOR_BYTES) + 1) * SECTOR_BYTES;
        let chunk_end = sector_end.min(end);
        let chunk = &bytes[pos - start..chunk_end - start];
        match rng.below(3) {
            0 => {
                if d.len() < chunk_end && pos <= d.len() {
                    // An old sector past the old end of the file reads as zeros.
                    d.resize(chunk_end, 0);
                }
            }
            1 => apply_write(d, pos as u64, chunk),
            _ => apply_write(d, pos as u64, &vec![0u8; chunk.len()]),
        }
        pos = chunk_end;
    }
}

#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<State>>,
    ino: usize,
    writable: bool,
}

impl FsFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.state.lock().inodes[self.ino].len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let st = self.state.lock();
        let d = &st.inodes[self.ino];
        if offset as usize >= d.len() {
            return Ok(0);
        }
        let n = buf.len().min(d.len() - offset as usize);
        buf[..n].copy_from_slice(&d[offset as usize..offset as usize + n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "file opened read-only"));
        }
        let mut st = self.state.lock();
        if st.hit(FaultOp::Write) {
            return Err(injected());
        }
        apply_write(&mut st.inodes[self.ino], offset, buf);
        st.ops.push(Op::Write { ino: self.ino, offset, data: buf.to_vec() });
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.hit(FaultOp::SyncData) {
            return Err(injected());
        }
        st.ops.push(Op::SyncData { ino: self.ino });
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        st.inodes[self.ino].resize(len as usize, 0);
        st.ops.push(Op::SetLen { ino: self.ino, len });
        Ok(())
    }
}

#[derive(Debug)]
struct SimLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
}

impl FsLock for SimLock {
    fn write_info(&self, info: &str) -> io::Result<()> {
        let mut st = self.state.lock();
        if let Some(&ino) = st.names.get(&self.path) {
            st.inodes[ino] = info.as_bytes().to_vec();
        }
        Ok(())
    }
}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.state.lock().locks.remove(&self.path);
    }
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file (SimFs)", p.display()))
}

impl Fs for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        let mut d = dir.to_path_buf();
        loop {
            st.dirs.insert(d.clone());
            if !d.pop() || d.as_os_str().is_empty() {
                break;
            }
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state.lock();
        if !st.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let files = st.names.keys().filter(|p| p.parent() == Some(dir));
        let dirs = st.dirs.iter().filter(|p| p.parent() == Some(dir));
        Ok(files.chain(dirs).filter_map(|p| p.file_name()?.to_str().map(String::from)).collect())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let st = self.state.lock();
        Ok(st.names.contains_key(path) || st.dirs.contains(path))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let st = self.state.lock();
        let ino = *st.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(SimFile { state: self.state.clone(), ino, writable: false }))
    }

    fn open_write(&self, path: &Path, create: Create) -> io::Result<Box<dyn FsFile>> {
        let mut st = self.state.lock();
        let ino = match (st.names.get(path).copied(), create) {
            (Some(_), Create::New) => {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists (SimFs)"));
            }
            (Some(ino), Create::No) => ino,
            (None, Create::No) => return Err(not_found(path)),
            (None, Create::New) => {
                if !st.dirs.contains(&parent(path)) {
                    return Err(not_found(&parent(path)));
                }
                let ino = st.inodes.len();
                st.inodes.push(Vec::new());
                st.names.insert(path.to_path_buf(), ino);
                st.ops.push(Op::Link { path: path.to_path_buf(), ino });
                ino
            }
        };
        Ok(Box::new(SimFile { state: self.state.clone(), ino, writable: true }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.hit(FaultOp::Rename) {
            return Err(injected());
        }
        let ino = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_path_buf(), ino);
        st.ops.push(Op::Rename { from: from.to_path_buf(), to: to.to_path_buf() });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.names.remove(path).ok_or_else(|| not_found(path))?;
        st.ops.push(Op::Unlink { path: path.to_path_buf() });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.hit(FaultOp::SyncDir) {
            return Err(injected());
        }
        st.ops.push(Op::SyncDir { dir: dir.to_path_buf() });
        Ok(())
    }

    fn lock(&self, path: &Path, _wait: bool) -> io::Result<LockAttempt> {
        let mut st = self.state.lock();
        if st.locks.contains(path) {
            let info =
                st.names.get(path).map(|&i| String::from_utf8_lossy(&st.inodes[i]).into_owned());
            return Ok(LockAttempt::Busy { info: info.unwrap_or_default() });
        }
        if !st.names.contains_key(path) {
            let ino = st.inodes.len();
            st.inodes.push(Vec::new());
            st.names.insert(path.to_path_buf(), ino);
            st.ops.push(Op::Link { path: path.to_path_buf(), ino });
        }
        st.locks.insert(path.to_path_buf());
        Ok(LockAttempt::Acquired(Box::new(SimLock {
            state: self.state.clone(),
            path: path.to_path_buf(),
        })))
    }

    fn lock_held(&self, path: &Path) -> io::Result<bool> {
        Ok(self.state.lock().locks.contains(path))
    }

    fn load(&self, path: &Path, len: u64, _mode: ReadMode) -> io::Result<SegmentBytes> {
        let st = self.state.lock();
        let ino = *st.names.get(path).ok_or_else(|| not_found(path))?;
        let d = &st.inodes[ino];
        Ok(SegmentBytes::Owned(d[..(len as usize).min(d.len())].to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn unsynced_writes_and_entries_vanish_in_a_synced_only_image() -> TestResult {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir)?;
        let f = fs.open_write(&dir.join("a"), Create::New)?;
        f.write_at(b"hello", 0)?;
        f.sync_data()?;
        // The entry is not durable yet: no directory fsync.
        assert!(!fs.crash_image(fs.op_count(), CrashMode::SyncedOnly).exists(&dir.join("a"))?);
        fs.sync_dir(dir)?;
        f.write_at(b" world", 5)?;
        let img = fs.crash_image(fs.op_count(), CrashMode::SyncedOnly);
        assert_eq!(img.contents(&dir.join("a")).ok_or("/d/a is not in the image")?, b"hello");
        let all = fs.crash_image(fs.op_count(), CrashMode::Everything);
        assert_eq!(all.contents(&dir.join("a")).ok_or("/d/a is not in the image")?, b"hello world");
        Ok(())
    }

    #[test]
    fn random_images_only_mix_old_new_and_zero_sectors() -> TestResult {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir)?;
        let f = fs.open_write(&dir.join("a"), Create::New)?;
        f.write_at(&[1u8; 2048], 0)?;
        f.sync_data()?;
        fs.sync_dir(dir)?;
        f.write_at(&[2u8; 2048], 0)?;
        for seed in 1..50 {
            let img = fs.crash_image(fs.op_count(), CrashMode::Random(seed));
            let c = img.contents(&dir.join("a")).ok_or("/d/a is not in the image")?;
            assert_eq!(c.len(), 2048);
            for sector in c.chunks(SECTOR_BYTES) {
                let first = sector[0];
                assert!([0, 1, 2].contains(&first));
                assert!(sector.iter().all(|&b| b == first), "a sector is never mixed");
            }
        }
        Ok(())
    }

    #[test]
    fn faults_fire_once() -> TestResult {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d"))?;
        let f = fs.open_write(Path::new("/d/a"), Create::New)?;
        fs.fail_nth(FaultOp::SyncData, 1);
        assert!(f.sync_data().is_ok());
        assert!(f.sync_data().is_err());
        assert!(f.sync_data().is_ok());
        Ok(())
    }
}
