//! The event store: the log plus the fold, and the only way to append.
//!
//! [`Store::submit`] validates a batch of events against the current state (each event through
//! [`State::apply`], in order), hands it to the log as one atomic frame, and returns a ticket that
//! resolves once the frame is durable. Validation, seq assignment and apply happen under one lock,
//! so the state always folds exactly the prefix the log will hold, and commit N+1 can be submitted
//! while N waits for its fsync (that is what feeds group commit). A rejected batch changes nothing.
//!
//! Readers get the state through [`Store::state`]; anything that *acts* on an event (releasing a
//! job, reporting success) waits for that event's ticket first (DESIGN.md I3).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use prost::Message;

use databuild_log::{
    AppendError, Batch, Durability, OpenError, OpenReport, ReadError, ReadMode, ReadOptions,
    Reader, SeqRange, Ticket, Writer, WriterOptions,
};

use crate::proto::BuildEvent;
use crate::state::snapshot::Anchor;
use crate::state::{State, Violation};

/// Why the store could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The log could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The log could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A record is not a BuildEvent.
    #[error("event at seq {seq} does not decode: {reason}")]
    Decode {
        /// Its seq.
        seq: u64,
        /// The decoder's message.
        reason: String,
    },
    /// The history is not a legal sequence of transitions.
    #[error(transparent)]
    Violation(#[from] Violation),
}

/// Why a commit failed. Nothing of a failed batch is in the log or the state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// The engine proposed an illegal event: a bug, reported with the event.
    #[error("{0}")]
    Violation(#[from] Violation),
    /// The log refused the batch (I/O error, closed writer).
    #[error(transparent)]
    Append(#[from] AppendError),
    /// The state could not be restored after a rejected batch.
    #[error("cannot restore state after a rejected batch: {0}")]
    Restore(String),
}

/// A submitted batch: its seqs, and the ticket that resolves when it is durable.
#[derive(Debug)]
#[must_use = "act on a batch only once it is durable"]
pub struct Pending {
    ticket: Ticket,
}

impl Pending {
    /// The seqs of the batch.
    pub fn range(&self) -> SeqRange {
        self.ticket.range()
    }

    /// Resolves once the batch is durable.
    pub async fn durable(self) -> Result<SeqRange, AppendError> {
        self.ticket.durable().await
    }

    /// Blocks until the batch is durable (not from inside an async runtime).
    pub fn wait(self) -> Result<SeqRange, AppendError> {
        self.ticket.wait()
    }
}

/// Folds the events of a log after `state.last_seq` and up to `until_seq` into `state`, checking
/// each transition.
pub fn fold(reader: &Reader, state: &mut State, until_seq: u64) -> Result<(), StoreError> {
    enum Stop {
        Done,
        Failed(StoreError),
    }
    impl From<ReadError> for Stop {
        fn from(e: ReadError) -> Stop {
            Stop::Failed(StoreError::Read(e))
        }
    }
    let from = state.last_seq + 1;
    state.reserve_for(reader.next_seq().min(until_seq.saturating_add(1)).saturating_sub(from));
    // One event buffer for the whole fold: decoding into it reuses its strings' allocations.
    let mut ev = BuildEvent::default();
    let result = reader.for_each_from(from, |seq, bytes| -> Result<(), Stop> {
        if seq > until_seq {
            return Err(Stop::Done);
        }
        ev.clear();
        ev.merge(bytes)
            .map_err(|e| Stop::Failed(StoreError::Decode { seq, reason: e.to_string() }))?;
        state.apply(seq, &ev).map_err(|v| Stop::Failed(StoreError::Violation(v)))
    });
    match result {
        Ok(()) | Err(Stop::Done) => Ok(()),
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// A snapshot is written (by the writer when it closes; readers write nothing) once a quarter of the log follows the newest one, but at least this many events...
pub const SNAPSHOT_MIN_EVENTS: u64 = 5_000;
/// ...and at most this many: it bounds how much a later open folds (~0.3 s here).
pub const SNAPSHOT_MAX_EVENTS: u64 = 250_000;

/// Whether a state at `last_seq` whose newest snapshot is at `snapshot_seq` (0: none) is due a
/// new one. A quarter of the log keeps the cost of writing them linear in the log's length while
/// it is small, so a small log's no-op rebuild loads a snapshot instead of folding every event.
pub fn snapshot_due(last_seq: u64, snapshot_seq: u64) -> bool {
    let every = (last_seq / 4).clamp(SNAPSHOT_MIN_EVENTS, SNAPSHOT_MAX_EVENTS);
    last_seq >= snapshot_seq.saturating_add(every)
}

/// Loads the newest usable snapshot at or below `until_seq` (if any) and folds the rest of the
/// log up to `until_seq`. Returns the state, the seq of the snapshot used (0: none) and warnings
/// about snapshots that could not be used.
pub fn fold_with_snapshot(
    reader: &Reader,
    until_seq: u64,
) -> Result<(State, u64, Vec<String>), StoreError> {
    let mut state = State::new();
    let mut from = 0;
    let mut warnings = Vec::new();
    if reader.log_id().is_some() {
        let max = until_seq.min(reader.next_seq().saturating_sub(1));
        let (snap, bad) = snapshots::load(reader, max);
        warnings.extend(bad.into_iter().map(|e| format!("{e}; folding the log instead")));
        if let Some(s) = snap {
            from = s.last_seq;
            state = s;
        }
    }
    fold(reader, &mut state, until_seq)?;
    Ok((state, from, warnings))
}

/// The frame of the log that holds `seq` (see [`Anchor`]); `None` if the log does not hold it.
pub fn anchor_at(reader: &Reader, seq: u64) -> Result<Option<Anchor>, ReadError> {
    let Some(frame) = reader.frames_from(seq).next() else { return Ok(None) };
    let frame = frame?;
    if seq < frame.first_seq() || seq >= frame.first_seq() + u64::from(frame.count()) {
        return Ok(None);
    }
    let (segment, offset) = frame.position();
    Ok(Some(Anchor { segment, offset, crc: frame.crc() }))
}

/// A clock and id source for stamping events; injected so tests are deterministic.
pub trait Stamp: Send + Sync + std::fmt::Debug {
    /// Unix time in nanoseconds.
    fn now_ns(&self) -> i64;
    /// A new unique id (UUIDv7 text).
    fn new_id(&self) -> String;
}

/// The wall clock and UUIDv7 ids.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemStamp;

impl Stamp for SystemStamp {
    fn now_ns(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64)
    }

    fn new_id(&self) -> String {
        uuid::Uuid::now_v7().to_string()
    }
}

/// How to open the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Options of the underlying writer.
    pub writer: WriterOptions,
    /// Clock and ids.
    pub stamp: Arc<dyn Stamp>,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            writer: WriterOptions { durability: Durability::Full, ..WriterOptions::default() },
            stamp: Arc::new(SystemStamp),
        }
    }
}

/// Events validated and applied to the state, not yet submitted to the log.
#[derive(Debug, Default)]
struct Staged {
    events: Vec<BuildEvent>,
    batch: Batch,
}

/// The single writer of a log, with its folded state.
#[derive(Debug)]
pub struct Store {
    writer: Writer,
    state: RwLock<State>,
    staged: Mutex<Staged>,
    /// Seq of the newest snapshot (0: none).
    snapshot_seq: u64,
    snapshot_warnings: Vec<String>,
    stamp: Arc<dyn Stamp>,
    dir: PathBuf,
    fs: Arc<dyn databuild_log::Fs>,
}

impl Store {
    /// Opens (or creates) the log in `dir` as its writer, and folds it.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<(Store, OpenReport), StoreError> {
        let fs = opts.writer.fs.clone();
        let (writer, report) = Writer::open(dir, opts.writer)?;
        let reader = writer.reader(ReadMode::Mmap)?;
        // The writer holds the lock: a temporary snapshot file of another process is stale.
        snapshots::sweep_temporary(&dir.join(snapshots::DIR));
        // Snapshots are only a shortcut: a bad one is skipped (the warnings say so).
        let (state, snapshot_seq, snapshot_warnings) = fold_with_snapshot(&reader, u64::MAX)?;
        let store = Store {
            writer,
            state: RwLock::new(state),
            staged: Mutex::new(Staged::default()),
            snapshot_seq,
            snapshot_warnings,
            stamp: opts.stamp,
            dir: dir.to_path_buf(),
            fs,
        };
        Ok((store, report))
    }

    /// The current state (what has been submitted, durable or about to be).
    pub fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read()
    }

    /// Snapshots that could not be used when opening (the log was folded instead).
    pub fn snapshot_warnings(&self) -> &[String] {
        &self.snapshot_warnings
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new unique id.
    pub fn new_id(&self) -> String {
        self.stamp.new_id()
    }

    /// The clock, in ns.
    pub fn now_ns(&self) -> i64 {
        self.stamp.now_ns()
    }

    /// The first seq that is not durable yet: every event below it is.
    pub fn durable_next_seq(&self) -> u64 {
        self.writer.durable_end().next_seq
    }

    /// A channel carrying [`Store::durable_next_seq`] each time it advances: what a server's
    /// followers wait on instead of polling.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.writer.subscribe()
    }

    /// The log's id (what `server.json` names, so a client can tell logs apart).
    pub fn log_id(&self) -> String {
        self.writer.log_id().to_hex()
    }

    /// A reader that follows this store's durable end.
    pub fn reader(&self) -> Result<Reader, OpenError> {
        self.writer.reader(ReadMode::Mmap)
    }

    /// Validates, stamps and submits `events` as one atomic batch (with anything staged before).
    pub fn submit(&self, events: Vec<BuildEvent>) -> Result<Pending, CommitError> {
        self.stage(events)?;
        self.flush()?.ok_or_else(|| CommitError::Restore("nothing to submit".into()))
    }

    /// Validates, stamps and applies `events` to the state now; they reach the log with the next
    /// [`Store::flush`], in one frame with everything else staged. Decisions taken in between see
    /// them (and nothing acts on them before they are durable). A rejected event changes nothing:
    /// neither the state nor what was staged before it.
    pub fn stage(&self, mut events: Vec<BuildEvent>) -> Result<(), CommitError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut state = self.state.write();
        let mut staged = self.staged.lock();
        let first = state.last_seq + 1;
        let now = self.stamp.now_ns();
        for (i, ev) in events.iter_mut().enumerate() {
            if ev.event_id.is_empty() {
                ev.event_id = self.stamp.new_id();
            }
            if ev.timestamp == 0 {
                ev.timestamp = now;
            }
            if let Err(v) = state.apply(first + i as u64, ev) {
                // Events 0..i were applied: restore the log's fold plus what was staged before.
                *state = self.refold(&staged.events)?;
                return Err(CommitError::Violation(v));
            }
        }
        for ev in &events {
            staged.batch.push_with(ev.encoded_len(), |buf| ev.encode_raw(buf));
        }
        staged.events.extend(events);
        Ok(())
    }

    /// Submits everything staged as one atomic batch; `None` if nothing was staged.
    pub fn flush(&self) -> Result<Option<Pending>, CommitError> {
        let state = self.state.write();
        let mut staged = self.staged.lock();
        if staged.events.is_empty() {
            return Ok(None);
        }
        let first = state.last_seq + 1 - staged.events.len() as u64;
        let Staged { events, batch } = std::mem::take(&mut *staged);
        match self.writer.submit(batch) {
            Ok(ticket) => {
                debug_assert_eq!(ticket.range().first, first);
                Ok(Some(Pending { ticket }))
            }
            Err(e) => {
                // The state holds events the log refused; rebuild it from what the log holds.
                drop(staged);
                drop(state);
                let restored = self.refold(&[]);
                if let Ok(s) = restored {
                    *self.state.write() = s;
                }
                let _ = events;
                Err(CommitError::Append(e))
            }
        }
    }

    /// Submits and waits until durable.
    pub async fn commit(&self, events: Vec<BuildEvent>) -> Result<SeqRange, CommitError> {
        Ok(self.submit(events)?.durable().await?)
    }

    /// The fold of what the log holds (once everything submitted is durable), plus `staged`.
    fn refold(&self, staged: &[BuildEvent]) -> Result<State, CommitError> {
        let target = self.writer.next_seq();
        let mut rx = self.writer.subscribe();
        while *rx.borrow_and_update() < target && self.writer.durable_end().next_seq < target {
            // A stopped writer (an I/O error, disk full) never gets there: the state cannot be
            // restored, and the caller reports the log's failure (exit 3) instead of waiting.
            if let Some(e) = self.writer.failure() {
                return Err(CommitError::Append(e));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let mut fresh = State::new();
        let reader =
            self.writer.reader(ReadMode::Mmap).map_err(|e| CommitError::Restore(e.to_string()))?;
        fold(&reader, &mut fresh, u64::MAX).map_err(|e| CommitError::Restore(e.to_string()))?;
        for ev in staged {
            let seq = fresh.last_seq + 1;
            fresh.apply(seq, ev).map_err(|v| CommitError::Restore(v.to_string()))?;
        }
        Ok(fresh)
    }

    /// Stops as a crash would right after the last acknowledgement: pending batches fail, no
    /// snapshot, no final CHECKPOINT. For crash tests.
    pub fn halt(self) {
        self.writer.halt();
    }

    /// Closes the log cleanly, first writing a snapshot if many events followed the last one.
    pub fn close(self) -> Result<(), AppendError> {
        let state = self.state.read();
        if snapshot_due(state.last_seq, self.snapshot_seq)
            && self.writer.durable_end().next_seq > state.last_seq
            && let Ok(reader) = self.writer.reader(ReadMode::Mmap)
            && let Ok(Some(anchor)) = anchor_at(&reader, state.last_seq)
        {
            // Derived and best-effort: a failure only means the next open folds more.
            let _ = snapshots::write(&self.dir, &state, self.writer.log_id().0, anchor);
        }
        drop(state);
        self.writer.close()
    }

    /// The file system the log is on.
    pub fn fs(&self) -> Arc<dyn databuild_log::Fs> {
        self.fs.clone()
    }
}

/// Opens a log read-only and folds it up to `until_seq` (all of it for `u64::MAX`), from the
/// newest usable snapshot. A missing log is an empty state. Also returns warnings about
/// snapshots that could not be used. Reading writes nothing, not even a snapshot: only the log's
/// writer does, when it closes.
pub fn load(dir: &Path, until_seq: u64) -> Result<(State, Reader, Vec<String>), StoreError> {
    let reader = Reader::open(dir, ReadOptions::default())?;
    let (state, _, warnings) = fold_with_snapshot(&reader, until_seq)?;
    Ok((state, reader, warnings))
}

/// Reads the event at `seq` (payloads stay in the log; the state keeps their seqs).
pub fn event_at(reader: &Reader, seq: u64) -> Result<Option<BuildEvent>, StoreError> {
    if let Some(frame) = reader.frames_from(seq).next() {
        let frame = frame?;
        if let Some(rec) = frame.records_from(seq).next() {
            let (s, bytes) = rec.map_err(ReadError::from)?;
            if s == seq {
                let ev = BuildEvent::decode(bytes)
                    .map_err(|e| StoreError::Decode { seq, reason: e.to_string() })?;
                return Ok(Some(ev));
            }
        }
    }
    Ok(None)
}

/// Snapshot files: `snapshots/<seq:020>.snap` next to the segments (see [`crate::state::snapshot`]
/// for the encoding). Derived and best-effort: nothing here is ever a reason to refuse to open.
pub mod snapshots {
    use std::path::{Path, PathBuf};

    use databuild_log::Reader;

    use crate::state::State;
    use crate::state::snapshot::{Anchor, SnapshotError, decode_owned, encode, peek};

    /// Directory of snapshots inside the log directory.
    pub const DIR: &str = "snapshots";
    /// How many snapshots are kept (the newest); older ones are deleted when a new one is written.
    pub const KEEP: usize = 3;

    /// The path of the snapshot after `seq`.
    pub fn path(log_dir: &Path, seq: u64) -> PathBuf {
        log_dir.join(DIR).join(format!("{seq:020}.snap"))
    }

    /// Snapshots in `log_dir`, newest first: (seq, path).
    pub fn list(log_dir: &Path) -> Vec<(u64, PathBuf)> {
        let Ok(dir) = std::fs::read_dir(log_dir.join(DIR)) else { return Vec::new() };
        let mut v: Vec<(u64, PathBuf)> = dir
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                let seq = name.strip_suffix(".snap")?.parse().ok()?;
                Some((seq, e.path()))
            })
            .collect();
        v.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        v
    }

    /// Writes a snapshot of `state`, taken after the frame `anchor` (tmp, fdatasync, rename,
    /// directory fsync), keeps the newest [`KEEP`] and removes temporary files that a killed
    /// writer left. Only the log's writer calls this (it holds the log's lock), so a temporary
    /// file of another process is stale; readers take no lock (the rename is atomic).
    pub fn write(
        log_dir: &Path,
        state: &State,
        log_id: [u8; 16],
        anchor: Anchor,
    ) -> std::io::Result<PathBuf> {
        let dir = log_dir.join(DIR);
        std::fs::create_dir_all(&dir)?;
        sweep_temporary(&dir);
        let bytes = encode(state, log_id, anchor);
        let final_path = path(log_dir, state.last_seq);
        let tmp = dir.join(format!("{:020}.snap.{}.tmp", state.last_seq, std::process::id()));
        let written = write_synced(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &final_path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::File::open(&dir)?.sync_all()?;
        for (_, old) in list(log_dir).into_iter().skip(KEEP) {
            let _ = std::fs::remove_file(old);
        }
        Ok(final_path)
    }

    /// [`write`] for the log in `log_dir` as it is now: the snapshot is anchored to the frame
    /// that holds `state.last_seq` (an error if the log does not hold it durably).
    pub fn write_current(log_dir: &Path, state: &State) -> std::io::Result<PathBuf> {
        let reader = Reader::open(log_dir, databuild_log::ReadOptions::default())
            .map_err(std::io::Error::other)?;
        let id = reader.log_id().ok_or_else(|| std::io::Error::other("the log is empty"))?;
        let anchor =
            super::anchor_at(&reader, state.last_seq).map_err(std::io::Error::other)?.ok_or_else(
                || std::io::Error::other(format!("the log does not hold seq {}", state.last_seq)),
            )?;
        write(log_dir, state, id.0, anchor)
    }

    fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(path)?;
        f.write_all(bytes)?;
        f.sync_data()
    }

    /// Removes `*.tmp` files of other processes: a writer killed while writing a snapshot
    /// leaves one (it can be hundreds of MiB).
    pub(crate) fn sweep_temporary(dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mine = format!(".{}.tmp", std::process::id());
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") && name.contains(".snap.") && !name.ends_with(&mine) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// The newest usable snapshot at or below `max_seq` of the log `reader` reads, with warnings
    /// for the unusable ones met on the way. `None` if there is none (fold from the start). A
    /// snapshot is usable only if the log still holds the frame it was taken after (its anchor).
    pub fn load(reader: &Reader, max_seq: u64) -> (Option<State>, Vec<SnapshotError>) {
        let mut warnings = Vec::new();
        let Some(log_id) = reader.log_id() else { return (None, warnings) };
        for (seq, p) in list(reader.dir()) {
            if seq > max_seq {
                continue;
            }
            let err = |why: String| SnapshotError { path: p.display().to_string(), why };
            // Mapped, not read: a snapshot is immutable once renamed into place (only ever
            // deleted), and a read would copy hundreds of MiB into freshly zeroed memory.
            let bytes = std::fs::File::open(&p)
                .and_then(|f| databuild_log::SegmentBytes::map(&f, u64::MAX));
            let bytes = match bytes {
                Ok(b) => b,
                Err(e) => {
                    warnings.push(err(e.to_string()));
                    continue;
                }
            };
            if let Err(why) = check_anchor(reader, &bytes, seq) {
                warnings.push(err(why));
                continue;
            }
            match decode_owned(Box::new(bytes), log_id.0) {
                Ok(s) => return (Some(s), warnings),
                Err(why) => warnings.push(err(why)),
            }
        }
        (None, warnings)
    }

    /// Whether the snapshot `file` (named for `seq`) was taken of the history `reader` reads: its
    /// header names the seq and the frame that holds it in this log.
    pub fn check_anchor(reader: &Reader, file: &[u8], seq: u64) -> Result<(), String> {
        let Some(h) = peek(file) else { return Err("not a snapshot".into()) };
        if h.seq != seq {
            return Err(format!("its header says seq {}, its name seq {seq}", h.seq));
        }
        match super::anchor_at(reader, seq) {
            Ok(Some(a)) if a == h.anchor => Ok(()),
            Ok(_) => Err(format!(
                "taken of another history: the log no longer holds the frame it was taken after (seq {seq}, segment {}, byte {}); the log was cut or restored since",
                h.anchor.segment, h.anchor.offset
            )),
            Err(e) => Err(format!("cannot read the frame holding seq {seq}: {e}")),
        }
    }
}
