//! The single writer: the open path (lock, recovery scan, torn-tail cut) and the group-commit
//! thread that owns the active segment.
//!
//! ```text
//!  submit() ──seq assigned under the queue lock──▶ queue ──▶ writer thread:
//!     ▲                                                       take every pending batch (≤ group cap)
//!     │                                                       one frame per batch, one buffer
//!     └──────────── ack (oneshot) ◀── publish end ◀── fdatasync ◀── one pwrite
//! ```
//! Batches submitted while a group is being written wait for the next group: that is group commit.
//! Any write or fsync error poisons the writer (L7): every pending and later append fails.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::{oneshot, watch};

use crate::checkpoint::{self, CheckpointFile, CheckpointStatus};
use crate::error::{AppendError, OpenError, io_err};
use crate::format::{
    FORMAT_VERSION, FRAME_BODY_BYTES_MAX, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES, SegmentHeader,
    TailHint, align_up, encode_frame,
};
use crate::fs::{Create, Fs, FsFile, LockAttempt, ReadMode, RealFs};
use crate::reader::{EndSource, Reader};
use crate::segment::{
    self, EndClass, LOCK_FILE, SegmentMeta, TAIL_FILE, TMP_SUFFIX, TornTail, segment_file_name,
};
use crate::{Batch, CheckpointSlot, End, LogId, SeqRange};

/// Default size at which the writer starts a new segment.
pub const SEGMENT_BYTES_TARGET: u64 = 64 << 20;
/// Most bytes of batches gathered into one write + fdatasync. Larger groups add latency for the
/// first batch of the group without saving fsyncs that matter.
pub const GROUP_BYTES_MAX: usize = 4 << 20;
/// Default interval between CHECKPOINT writes while appending.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// Most bytes of a torn tail copied aside before it is zeroed; the rest is only counted.
pub const TORN_COPY_BYTES_MAX: u64 = 64 << 20;

/// When appends become durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// One fdatasync per group commit; an append is acknowledged after it. The default.
    Full,
    /// Acknowledged after the write; fdatasync every interval and at seal and close. Survives a
    /// crash of the process, not of the machine. For tests.
    Periodic(Duration),
    /// Never fsync. For benchmarks only.
    None,
}

/// How to open a writer.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// When appends are durable.
    pub durability: Durability,
    /// Start a new segment when the next frame would pass this size.
    pub segment_bytes_target: u64,
    /// Write CHECKPOINT this often while appending (`None`: only at seal and close).
    pub checkpoint_interval: Option<Duration>,
    /// Wait for the lock instead of failing when another writer holds it.
    pub wait_for_lock: bool,
    /// How the recovery scan reads the last segment.
    pub read_mode: ReadMode,
    /// The file system (the real one, or a simulator in tests).
    pub fs: Arc<dyn Fs>,
    /// The id to give a new log (random if `None`); ignored for an existing log.
    pub new_log_id: Option<LogId>,
}

impl Default for WriterOptions {
    fn default() -> WriterOptions {
        WriterOptions {
            durability: Durability::Full,
            segment_bytes_target: SEGMENT_BYTES_TARGET,
            checkpoint_interval: Some(CHECKPOINT_INTERVAL),
            wait_for_lock: false,
            read_mode: ReadMode::Mmap,
            fs: Arc::new(RealFs),
            new_log_id: None,
        }
    }
}

/// What opening found and did.
#[derive(Clone, Debug)]
pub struct OpenReport {
    /// The log did not exist and was created.
    pub created: bool,
    /// The log's id.
    pub log_id: LogId,
    /// Segments after opening.
    pub segments: u64,
    /// The next sequence number to be assigned (1 for an empty log).
    pub next_seq: u64,
    /// A torn tail that was cut (bytes copied aside, then zeroed).
    pub torn_tail: Option<TornTail>,
    /// Where the cut bytes were copied.
    pub torn_copy: Option<PathBuf>,
    /// How CHECKPOINT looked.
    pub checkpoint: CheckpointStatus,
    /// Leftover temporary files that were deleted.
    pub removed_tmp: Vec<String>,
    /// Human-readable warnings (one line each).
    pub warnings: Vec<String>,
}

struct Pending {
    range: SeqRange,
    body: Vec<u8>,
    ack: oneshot::Sender<Result<(), AppendError>>,
}

enum Status {
    Open,
    Closing,
    Halting,
    Stopped(AppendError),
}

struct Queue {
    next_seq: u64,
    pending: VecDeque<Pending>,
    status: Status,
}

/// Counters of the writer thread's work since open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Group commits (one write, and in `Full` mode one fdatasync, each).
    pub groups: u64,
    /// Frames written (one per batch).
    pub frames: u64,
    /// Bytes written to segments.
    pub bytes: u64,
    /// fdatasync calls on segments.
    pub fsyncs: u64,
}

pub(crate) struct Shared {
    stats: Mutex<WriterStats>,
    queue: Mutex<Queue>,
    wake: Condvar,
    end: Mutex<End>,
    durable_tx: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn end(&self) -> End {
        *self.end.lock()
    }
}

/// Waits for a submitted batch to become durable.
#[derive(Debug)]
#[must_use = "a batch is acknowledged only when its ticket resolves"]
pub struct Ticket {
    range: SeqRange,
    rx: oneshot::Receiver<Result<(), AppendError>>,
}

impl Ticket {
    /// The sequence numbers assigned to the batch (not yet durable).
    pub fn range(&self) -> SeqRange {
        self.range
    }

    /// Blocks until the batch is durable. Must not be called from inside an async runtime; use
    /// [`Ticket::durable`] there.
    pub fn wait(self) -> Result<SeqRange, AppendError> {
        match self.rx.blocking_recv() {
            Ok(Ok(())) => Ok(self.range),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(AppendError::Closed),
        }
    }

    /// Resolves when the batch is durable.
    pub async fn durable(self) -> Result<SeqRange, AppendError> {
        match self.rx.await {
            Ok(Ok(())) => Ok(self.range),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(AppendError::Closed),
        }
    }
}

/// The one writer of a log. Holds the lock until dropped or closed.
pub struct Writer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    log_id: LogId,
    dir: PathBuf,
    fs: Arc<dyn Fs>,
    _lock: Box<dyn crate::fs::FsLock>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("dir", &self.dir).field("log_id", &self.log_id).finish()
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn parse_lock_info(info: &str) -> (Option<u32>, Option<String>) {
    let mut pid = None;
    let mut host = None;
    for word in info.split_whitespace() {
        if let Some(p) = word.strip_prefix("pid=") {
            pid = p.parse().ok();
        } else if let Some(h) = word.strip_prefix("host=") {
            host = Some(h.to_string());
        }
    }
    (pid, host)
}

/// Creates segment `id` (header written and fdatasynced under a tmp name, renamed, directory
/// fsynced: L4) and returns it open for writing.
fn create_segment(
    fs: &dyn Fs,
    dir: &Path,
    log_id: LogId,
    id: u64,
    base_seq: u64,
) -> Result<Box<dyn FsFile>, OpenError> {
    let path = dir.join(segment_file_name(id));
    let tmp = dir.join(format!("{}{TMP_SUFFIX}", segment_file_name(id)));
    let header = SegmentHeader {
        version: FORMAT_VERSION,
        min_reader_version: 1,
        log_id,
        segment_id: id,
        base_seq,
        created_unix_ms: now_unix_ms(),
    };
    let f = fs.open_write(&tmp, Create::New).map_err(io_err("create", &tmp))?;
    f.write_at(&header.encode(), 0).map_err(io_err("write", &tmp))?;
    f.sync_data().map_err(io_err("fdatasync", &tmp))?;
    drop(f);
    fs.rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
    fs.sync_dir(dir).map_err(io_err("fsync", dir))?;
    fs.open_write(&path, Create::No).map_err(io_err("open", &path))
}

/// Copies a torn tail aside, zeroes it and fdatasyncs. Returns the copy's path.
fn cut_torn_tail(
    fs: &dyn Fs,
    seg: &SegmentMeta,
    file: &dyn FsFile,
    torn: &TornTail,
) -> Result<PathBuf, OpenError> {
    let copy_path = seg.path.with_extension(format!("seg.torn-{}", torn.seq));
    let copy_len = torn.bytes.min(TORN_COPY_BYTES_MAX);
    let mut buf = vec![0u8; copy_len as usize];
    let got = file.read_at(&mut buf, torn.offset).map_err(io_err("read", &seg.path))?;
    buf.truncate(got);
    if fs.exists(&copy_path).map_err(io_err("stat", &copy_path))? {
        fs.remove_file(&copy_path).map_err(io_err("remove", &copy_path))?;
    }
    let copy = fs.open_write(&copy_path, Create::New).map_err(io_err("create", &copy_path))?;
    copy.write_at(&buf, 0).map_err(io_err("write", &copy_path))?;
    copy.sync_data().map_err(io_err("fdatasync", &copy_path))?;
    zero_range(file, torn.offset, torn.bytes).map_err(io_err("zero", &seg.path))?;
    file.sync_data().map_err(io_err("fdatasync", &seg.path))?;
    Ok(copy_path)
}

/// Overwrites `len` bytes at `offset` with zeros.
pub(crate) fn zero_range(file: &dyn FsFile, offset: u64, len: u64) -> std::io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        file.write_at(&zeros[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}

/// Walks every frame of every sealed segment (all but the last): a damaged sealed segment is
/// always corruption, since sealing fdatasynced it before its successor was created. One segment
/// is mapped at a time, so memory stays bounded by the segment size, not the log size.
fn check_sealed_segments(
    fs: &dyn Fs,
    segments: &[SegmentMeta],
    mode: ReadMode,
) -> Result<(), OpenError> {
    for pair in segments.windows(2) {
        let (seg, next) = (&pair[0], &pair[1]);
        let bytes = fs.load(&seg.path, seg.len, mode).map_err(io_err("read", &seg.path))?;
        let scan = segment::scan(
            &bytes,
            &seg.header.log_id,
            SEGMENT_HEADER_BYTES as u64,
            seg.header.base_seq,
            |_, _| {},
        );
        segment::check_sealed(seg.id, &scan, next.header.base_seq)?;
    }
    Ok(())
}

fn remove_tmp_files(fs: &dyn Fs, dir: &Path) -> Result<Vec<String>, OpenError> {
    let mut removed = Vec::new();
    for name in fs.list(dir).map_err(io_err("list", dir))? {
        if name.ends_with(TMP_SUFFIX) {
            let p = dir.join(&name);
            fs.remove_file(&p).map_err(io_err("remove", &p))?;
            removed.push(name);
        }
    }
    Ok(removed)
}

impl Writer {
    /// Opens the log in `dir` for appending, creating it if there is none, and recovers: takes the
    /// lock, deletes leftover temporary files, checks every segment header, scans the last
    /// segment, and either cuts a torn tail (reported) or refuses on damage to acknowledged data.
    pub fn open(dir: &Path, opts: WriterOptions) -> Result<(Writer, OpenReport), OpenError> {
        let fs = opts.fs.clone();
        let fresh_dir = !fs.exists(dir).map_err(io_err("stat", dir))?;
        fs.create_dir_all(dir).map_err(io_err("create directory", dir))?;
        // A new directory's entry must be durable before anything is acknowledged: its parent is
        // fsynced once the first segment exists, so that one journal commit (the segment's
        // fdatasync) carries both, not two.
        let new_parent =
            dir.parent().filter(|p| fresh_dir && !p.as_os_str().is_empty()).map(Path::to_path_buf);
        let lock_path = dir.join(LOCK_FILE);
        let lock =
            match fs.lock(&lock_path, opts.wait_for_lock).map_err(io_err("lock", &lock_path))? {
                LockAttempt::Acquired(l) => l,
                LockAttempt::Busy { info } => {
                    let (pid, host) = parse_lock_info(&info);
                    return Err(OpenError::Locked { path: lock_path, pid, host });
                }
            };
        let info = format!("pid={} host={}\n", std::process::id(), crate::fs::host_name());
        lock.write_info(&info).map_err(io_err("write", &lock_path))?;

        let removed_tmp = remove_tmp_files(&*fs, dir)?;
        let segments = segment::list_segments(&*fs, dir)?;
        let mut report = OpenReport {
            created: false,
            log_id: LogId([0; 16]),
            segments: 0,
            next_seq: 1,
            torn_tail: None,
            torn_copy: None,
            checkpoint: CheckpointStatus::Missing,
            removed_tmp,
            warnings: Vec::new(),
        };
        let log_id = segments.first().map(|s| s.header.log_id);
        let cp = checkpoint::read(&*fs, dir, log_id.as_ref())?;
        report.checkpoint = cp.status;

        let mut clean_reopen = false;
        let (log_id, active_id, active_file, end, cp_generation) = match segments.last() {
            None => {
                if cp.status != CheckpointStatus::Missing {
                    return Err(OpenError::Corruption(crate::Corruption {
                        segment: 0,
                        offset: 0,
                        seq: 1,
                        kind: crate::CorruptionKind::MissingSegment,
                    }));
                }
                let log_id = opts.new_log_id.unwrap_or_else(LogId::random);
                let file = create_segment(&*fs, dir, log_id, 0, 1)?;
                if let Some(parent) = &new_parent {
                    fs.sync_dir(parent).map_err(io_err("fsync", parent))?;
                }
                report.created = true;
                let end = End { next_seq: 1, segment_id: 0, offset: SEGMENT_HEADER_BYTES as u64 };
                (log_id, 0, file, end, None)
            }
            Some(last) => {
                let log_id = last.header.log_id;
                if let Some(slot) = &cp.slot
                    && slot.segment_id > last.id
                {
                    return Err(OpenError::Corruption(crate::Corruption {
                        segment: last.id + 1,
                        offset: 0,
                        seq: slot.durable_next_seq,
                        kind: crate::CorruptionKind::MissingSegment,
                    }));
                }
                match cp.status {
                    CheckpointStatus::Missing => report
                        .warnings
                        .push("CHECKPOINT is missing: using frame evidence only".to_string()),
                    CheckpointStatus::Damaged => report.warnings.push(
                        "both CHECKPOINT slots are damaged: using frame evidence only".to_string(),
                    ),
                    CheckpointStatus::OneSlotDamaged => report
                        .warnings
                        .push("one CHECKPOINT slot is damaged: using the other".to_string()),
                    CheckpointStatus::Sound => {}
                }
                check_sealed_segments(&*fs, &segments, opts.read_mode)?;
                let file =
                    fs.open_write(&last.path, Create::No).map_err(io_err("open", &last.path))?;
                let len = file.len().map_err(io_err("stat", &last.path))?;
                let bytes =
                    fs.load(&last.path, len, opts.read_mode).map_err(io_err("read", &last.path))?;
                let scan = segment::scan(
                    &bytes,
                    &log_id,
                    SEGMENT_HEADER_BYTES as u64,
                    last.header.base_seq,
                    |_, _| {},
                );
                let class =
                    segment::classify_end(last.id, &bytes, &log_id, &scan, cp.slot.as_ref());
                drop(bytes);
                match class {
                    EndClass::Corrupt(c) => return Err(OpenError::Corruption(c)),
                    EndClass::Torn(t) => {
                        let copy = cut_torn_tail(&*fs, last, &*file, &t)?;
                        report.warnings.push(format!(
                            "cut torn tail at seq {}: {} bytes, events not proven durable (copy in {})",
                            t.seq,
                            t.bytes,
                            copy.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                        ));
                        report.torn_copy = Some(copy);
                        report.torn_tail = Some(t);
                    }
                    EndClass::Clean => {}
                }
                let end =
                    End { next_seq: scan.next_seq, segment_id: last.id, offset: scan.end_offset };
                // After a clean close whose CHECKPOINT names exactly this end, everything here was
                // already durable. Otherwise, what survived is made durable now, so every frame
                // written from here on may cite it as synced.
                clean_reopen = report.torn_tail.is_none()
                    && cp.slot.is_some_and(|s| {
                        s.clean
                            && s.durable_next_seq == end.next_seq
                            && s.segment_id == end.segment_id
                            && s.segment_offset == end.offset
                    });
                if !clean_reopen {
                    file.sync_data().map_err(io_err("fdatasync", &last.path))?;
                }
                (log_id, last.id, file, end, cp.slot.map(|s| s.generation))
            }
        };
        report.log_id = log_id;
        report.segments = active_id + 1;
        report.next_seq = end.next_seq;

        let slot = CheckpointSlot {
            generation: 0,
            log_id,
            durable_next_seq: end.next_seq,
            segment_id: end.segment_id,
            segment_offset: end.offset,
            clean: false,
        };
        // The CHECKPOINT of a clean close stays as it is until this writer has something to add.
        let checkpoint = if clean_reopen {
            CheckpointFile::open_existing(&*fs, dir, cp_generation.unwrap_or(0))?
        } else {
            CheckpointFile::open_or_create(&*fs, dir, cp_generation, slot)?
        };
        let tail_path = dir.join(TAIL_FILE);
        // Only a missing TAIL is created; any other failure (permissions, a directory in its
        // place) is reported as it is, naming the file, not as the "File exists" of a create.
        let tail = match fs.open_write(&tail_path, Create::No) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs.open_write(&tail_path, Create::New).map_err(io_err("create", &tail_path))?
            }
            Err(e) => return Err(io_err("open", &tail_path)(e)),
        };
        let hint = TailHint {
            log_id,
            segment_id: end.segment_id,
            offset: end.offset,
            next_seq: end.next_seq,
        };
        tail.write_at(&hint.encode(), 0).map_err(io_err("write", &tail_path))?;

        let (durable_tx, _) = watch::channel(end.next_seq);
        let shared = Arc::new(Shared {
            stats: Mutex::new(WriterStats::default()),
            queue: Mutex::new(Queue {
                next_seq: end.next_seq,
                pending: VecDeque::new(),
                status: Status::Open,
            }),
            wake: Condvar::new(),
            end: Mutex::new(end),
            durable_tx,
        });
        let thread_state = Committer {
            fs: fs.clone(),
            dir: dir.to_path_buf(),
            log_id,
            durability: opts.durability,
            segment_bytes_target: opts.segment_bytes_target.max(SEGMENT_HEADER_BYTES as u64 + 64),
            checkpoint_interval: opts.checkpoint_interval,
            active: active_file,
            active_id,
            written: end,
            synced: end,
            checkpointed_seq: end.next_seq,
            clean_reopen,
            last_checkpoint: Instant::now(),
            last_sync: Instant::now(),
            checkpoint,
            tail,
            buf: Vec::new(),
            shared: shared.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("databuild-log-writer".to_string())
            .spawn(move || thread_state.run())
            .map_err(io_err("spawn writer thread", dir))?;
        let writer = Writer {
            shared,
            thread: Some(thread),
            log_id,
            dir: dir.to_path_buf(),
            fs,
            _lock: lock,
        };
        Ok((writer, report))
    }

    /// Submits a batch: its sequence numbers are assigned now, in submission order, and the
    /// ticket resolves once the whole batch is durable (or failed: then none of it is).
    pub fn submit(&self, batch: Batch) -> Result<Ticket, AppendError> {
        if batch.count == 0 {
            return Err(AppendError::EmptyBatch);
        }
        if batch.body.len() > FRAME_BODY_BYTES_MAX
            || batch.count > crate::format::FRAME_RECORDS_MAX as u64
        {
            return Err(AppendError::BatchTooLarge {
                bytes: batch.body.len(),
                max: FRAME_BODY_BYTES_MAX,
            });
        }
        let (tx, rx) = oneshot::channel();
        let mut q = self.shared.queue.lock();
        match &q.status {
            Status::Open => {}
            Status::Stopped(e) => return Err(e.clone()),
            Status::Closing | Status::Halting => return Err(AppendError::Closed),
        }
        let range = SeqRange { first: q.next_seq, end: q.next_seq + batch.count };
        q.next_seq = range.end;
        q.pending.push_back(Pending { range, body: batch.body, ack: tx });
        drop(q);
        self.shared.wake.notify_one();
        Ok(Ticket { range, rx })
    }

    /// Submits a batch and blocks until it is durable.
    pub fn append(&self, batch: Batch) -> Result<SeqRange, AppendError> {
        self.submit(batch)?.wait()
    }

    /// The log's id.
    pub fn log_id(&self) -> LogId {
        self.log_id
    }

    /// The next sequence number that will be assigned.
    pub fn next_seq(&self) -> u64 {
        self.shared.queue.lock().next_seq
    }

    /// Why the writer accepts nothing more, if it stopped: poisoned by an I/O error, or closed.
    /// Nothing it was given after that becomes durable, so nobody should wait for it.
    pub fn failure(&self) -> Option<AppendError> {
        match &self.shared.queue.lock().status {
            Status::Open => None,
            Status::Stopped(e) => Some(e.clone()),
            Status::Closing | Status::Halting => Some(AppendError::Closed),
        }
    }

    /// The durable end as published to readers.
    pub fn durable_end(&self) -> End {
        self.shared.end()
    }

    /// What the writer thread has done since open.
    pub fn stats(&self) -> WriterStats {
        *self.shared.stats.lock()
    }

    /// A channel that carries the first non-durable sequence number each time it advances.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.durable_tx.subscribe()
    }

    /// A reader of this log that follows the writer's durable end (see [`Reader::refresh`]).
    pub fn reader(&self, mode: ReadMode) -> Result<Reader, OpenError> {
        Reader::open_with_source(
            &self.dir,
            self.fs.clone(),
            mode,
            EndSource::Writer(self.shared.clone()),
        )
    }

    /// Appends everything pending, fdatasyncs, records a clean close in CHECKPOINT and releases
    /// the lock. Fails if the writer was poisoned.
    pub fn close(mut self) -> Result<(), AppendError> {
        self.stop(Status::Closing)
    }

    /// Stops the writer as a crash right after the last acknowledgement would: pending batches
    /// fail, and no final CHECKPOINT is written. For crash tests.
    pub fn halt(mut self) {
        let _ = self.stop(Status::Halting);
    }

    fn stop(&mut self, how: Status) -> Result<(), AppendError> {
        {
            let mut q = self.shared.queue.lock();
            if matches!(q.status, Status::Open) {
                q.status = how;
            }
        }
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        match &self.shared.queue.lock().status {
            Status::Stopped(AppendError::Closed) => Ok(()),
            Status::Stopped(e) => Err(e.clone()),
            _ => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop(Status::Closing);
        }
    }
}

/// The writer thread's state: it alone touches the active segment.
struct Committer {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    log_id: LogId,
    durability: Durability,
    segment_bytes_target: u64,
    checkpoint_interval: Option<Duration>,
    active: Box<dyn FsFile>,
    active_id: u64,
    /// End of what has been written.
    written: End,
    /// End of what has been fdatasynced.
    synced: End,
    checkpointed_seq: u64,
    /// Opened after a clean close and nothing appended since: closing need not rewrite CHECKPOINT.
    clean_reopen: bool,
    last_checkpoint: Instant,
    last_sync: Instant,
    checkpoint: CheckpointFile,
    tail: Box<dyn FsFile>,
    buf: Vec<u8>,
    shared: Arc<Shared>,
}

enum Wake {
    Group(Vec<Pending>),
    Timer,
    Close,
    Halt,
}

impl Committer {
    fn run(mut self) {
        let error = match self.run_loop() {
            Ok(()) => AppendError::Closed,
            Err(e) => AppendError::Poisoned(Arc::from(e.as_str())),
        };
        self.stop_with(error);
    }

    /// Refuses everything from now on, then fails what is queued. The status is set first, so
    /// that no caller told of a failure can still submit successfully afterwards.
    fn stop_with(&self, error: AppendError) {
        let pending: Vec<Pending> = {
            let mut q = self.shared.queue.lock();
            q.status = Status::Stopped(error.clone());
            q.pending.drain(..).collect()
        };
        for p in pending {
            let _ = p.ack.send(Err(error.clone()));
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        if let Durability::Periodic(every) = self.durability
            && self.written.next_seq > self.synced.next_seq
        {
            d = Some(self.last_sync + every);
        }
        if let Some(every) = self.checkpoint_interval
            && self.synced.next_seq > self.checkpointed_seq
        {
            let c = self.last_checkpoint + every;
            d = Some(d.map_or(c, |d| d.min(c)));
        }
        d
    }

    fn next_wake(&self) -> Wake {
        let mut q = self.shared.queue.lock();
        loop {
            match q.status {
                Status::Halting => return Wake::Halt,
                Status::Closing if q.pending.is_empty() => return Wake::Close,
                _ => {}
            }
            if !q.pending.is_empty() {
                let mut group = Vec::new();
                let mut bytes = 0usize;
                while let Some(p) = q.pending.front() {
                    if !group.is_empty() && bytes + p.body.len() > GROUP_BYTES_MAX {
                        break;
                    }
                    bytes += p.body.len();
                    group.extend(q.pending.pop_front());
                }
                return Wake::Group(group);
            }
            match self.deadline() {
                Some(d) if Instant::now() >= d => return Wake::Timer,
                Some(d) => {
                    self.shared.wake.wait_until(&mut q, d);
                }
                None => self.shared.wake.wait(&mut q),
            }
        }
    }

    fn run_loop(&mut self) -> Result<(), String> {
        loop {
            match self.next_wake() {
                Wake::Group(group) => {
                    if let Err(e) = self.commit(&group) {
                        let error = AppendError::Poisoned(Arc::from(e.as_str()));
                        self.stop_with(error.clone());
                        for p in group {
                            let _ = p.ack.send(Err(error.clone()));
                        }
                        return Err(e);
                    }
                    for p in group {
                        let _ = p.ack.send(Ok(()));
                    }
                    self.timed_duties()?;
                }
                Wake::Timer => self.timed_duties()?,
                Wake::Close => {
                    self.sync()?;
                    if !(self.clean_reopen && self.written.next_seq == self.checkpointed_seq) {
                        self.write_checkpoint(true)?;
                    }
                    return Ok(());
                }
                Wake::Halt => return Ok(()),
            }
        }
    }

    fn timed_duties(&mut self) -> Result<(), String> {
        let now = Instant::now();
        if let Durability::Periodic(every) = self.durability
            && self.written.next_seq > self.synced.next_seq
            && now >= self.last_sync + every
        {
            self.sync()?;
            self.publish();
        }
        if let Some(every) = self.checkpoint_interval
            && self.synced.next_seq > self.checkpointed_seq
            && now >= self.last_checkpoint + every
        {
            self.write_checkpoint(false)?;
        }
        Ok(())
    }

    /// Writes one group: a frame per batch into one buffer, one write (two if the segment rolls),
    /// then the durability the mode asks for, then the published end.
    fn commit(&mut self, group: &[Pending]) -> Result<(), String> {
        self.buf.clear();
        let mut buf_offset = self.written.offset;
        for p in group {
            let frame_bytes = align_up((FRAME_HEADER_BYTES + p.body.len()) as u64);
            let at = buf_offset + self.buf.len() as u64;
            if at > SEGMENT_HEADER_BYTES as u64 && at + frame_bytes > self.segment_bytes_target {
                self.flush_buf(buf_offset)?;
                self.roll()?;
                buf_offset = self.written.offset;
            }
            let count = (p.range.end - p.range.first) as u32;
            encode_frame(
                &mut self.buf,
                &self.log_id,
                p.range.first,
                count,
                self.synced.next_seq,
                &p.body,
            );
            self.written.next_seq = p.range.end;
        }
        self.flush_buf(buf_offset)?;
        if self.durability == Durability::Full {
            self.sync()?;
        }
        {
            let mut st = self.shared.stats.lock();
            st.groups += 1;
            st.frames += group.len() as u64;
        }
        self.publish();
        Ok(())
    }

    fn flush_buf(&mut self, at: u64) -> Result<(), String> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.active
            .write_at(&self.buf, at)
            .map_err(|e| format!("write to segment {}: {e}", self.active_id))?;
        self.shared.stats.lock().bytes += self.buf.len() as u64;
        self.written.offset = at + self.buf.len() as u64;
        self.written.segment_id = self.active_id;
        self.buf.clear();
        Ok(())
    }

    fn sync(&mut self) -> Result<(), String> {
        if self.durability != Durability::None && self.synced != self.written {
            self.active
                .sync_data()
                .map_err(|e| format!("fdatasync of segment {}: {e}", self.active_id))?;
            self.shared.stats.lock().fsyncs += 1;
        }
        self.synced = self.written;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Seals the active segment and starts the next one (L4), then records it in CHECKPOINT.
    fn roll(&mut self) -> Result<(), String> {
        self.sync()?;
        let id = self.active_id + 1;
        let file = create_segment(&*self.fs, &self.dir, self.log_id, id, self.written.next_seq)
            .map_err(|e| e.to_string())?;
        self.active = file;
        self.active_id = id;
        self.written = End {
            next_seq: self.written.next_seq,
            segment_id: id,
            offset: SEGMENT_HEADER_BYTES as u64,
        };
        self.synced = self.written;
        self.write_checkpoint(false)
    }

    fn write_checkpoint(&mut self, clean: bool) -> Result<(), String> {
        let slot = CheckpointSlot {
            generation: 0,
            log_id: self.log_id,
            durable_next_seq: self.synced.next_seq,
            segment_id: self.synced.segment_id,
            segment_offset: self.synced.offset,
            clean,
        };
        self.checkpoint.write(slot).map_err(|e| format!("write CHECKPOINT: {e}"))?;
        self.checkpointed_seq = self.synced.next_seq;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Publishes the end readers may read to: what is acknowledged in this mode.
    fn publish(&mut self) {
        let end = match self.durability {
            Durability::Full => self.synced,
            Durability::Periodic(_) | Durability::None => self.written,
        };
        *self.shared.end.lock() = end;
        let hint = TailHint {
            log_id: self.log_id,
            segment_id: end.segment_id,
            offset: end.offset,
            next_seq: end.next_seq,
        };
        // TAIL is a hint: a failed write only makes other readers scan; never poison for it.
        let _ = self.tail.write_at(&hint.encode(), 0);
        self.shared.durable_tx.send_replace(end.next_seq);
    }
}
