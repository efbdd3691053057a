//! `databuild-log`: a segmented, checksummed, append-only log of opaque records.
//!
//! It knows records (byte strings) and their sequence numbers, never what they mean: no protobuf,
//! no events. One writer per log appends *batches* of records; a batch becomes one frame whose
//! checksum covers the log id, its header and its body, so a batch is durable entirely or not at
//! all, and a frame of another log never validates. Sequence numbers are gapless, from 1, across
//! segments. Appends from many threads are gathered into one write and one fdatasync (group
//! commit), and a caller learns its sequence numbers are durable only after that fdatasync.
//!
//! The choice a reader would question: **damage is classified, not skipped.** When the valid
//! frames end early, the open path looks for evidence that what follows was acknowledged (a later
//! segment, the CHECKPOINT watermark, or a later valid frame whose `synced_seq` proves it). With
//! evidence the log refuses to open and names segment, offset and seq; without, the bytes are a
//! torn tail that was never acknowledged, and the writer cuts it with a warning. So recovery
//! never silently returns a shorter log than was acknowledged, and never invents a record.
//!
//! What it deliberately does not do: write through mmap (readers map, the writer uses `pwrite`),
//! retry a failed fsync (the writer is poisoned instead), recycle files, or delete segments.
//! The byte layout is in `docs/log-format.md`.
#![deny(missing_docs)]

mod checkpoint;
mod error;
pub mod format;
pub mod fs;
mod map;
mod reader;
mod repair;
pub mod segment;
pub mod sim;
mod verify;
mod writer;

pub use checkpoint::{CheckpointRead, CheckpointStatus};
pub use error::{AppendError, Corruption, CorruptionKind, OpenError, ReadError};
pub use format::CheckpointSlot;
pub use fs::{Fs, ReadMode, RealFs};
pub use map::SegmentBytes;
pub use reader::{Frame, FrameAt, Frames, ReadOptions, Reader, RecordIter};
pub use repair::{RepairReport, repair};
pub use segment::{EndClass, TornTail};
pub use verify::{Completeness, SegmentSummary, TailStatus, VerifyReport, verify};
pub use writer::{Durability, OpenReport, Ticket, Writer, WriterOptions, WriterStats};

/// Identity of a log, chosen at creation and stored in every segment header and frame checksum.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogId(pub [u8; 16]);

impl LogId {
    /// A fresh random id (from the OS's random source, or time and pid if it is unavailable).
    pub fn random() -> LogId {
        let mut id = [0u8; 16];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            use std::io::Read;
            if f.read_exact(&mut id).is_ok() {
                return LogId(id);
            }
        }
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mixed =
            t ^ (u128::from(std::process::id()) << 64) ^ 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834;
        LogId(mixed.to_le_bytes())
    }

    /// The id as 32 hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogId({})", self.to_hex())
    }
}

/// A half-open range of sequence numbers, `first..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqRange {
    /// The first sequence number.
    pub first: u64,
    /// One past the last.
    pub end: u64,
}

impl SeqRange {
    /// Number of sequence numbers in the range.
    pub fn len(&self) -> u64 {
        self.end - self.first
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.first
    }
}

/// Where the durable data ends: the first sequence number after it, and its byte position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct End {
    /// First sequence number not covered.
    pub next_seq: u64,
    /// Segment holding the end.
    pub segment_id: u64,
    /// Byte offset of the end in that segment.
    pub offset: u64,
}

/// Records to append atomically: all of them become durable, or none.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    body: Vec<u8>,
    count: u64,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// An empty batch with room for `bytes` of records.
    pub fn with_capacity(bytes: usize) -> Batch {
        Batch { body: Vec::with_capacity(bytes), count: 0 }
    }

    /// Adds one record.
    pub fn push(&mut self, record: &[u8]) {
        format::push_record(&mut self.body, record);
        self.count += 1;
    }

    /// Adds one record of exactly `len` bytes, written by `write` straight into the batch (so a
    /// protobuf message can be encoded without an intermediate buffer).
    ///
    /// # Panics
    /// If `write` does not append exactly `len` bytes: that is a bug in the caller.
    pub fn push_with(&mut self, len: usize, write: impl FnOnce(&mut Vec<u8>)) {
        format::push_varint(&mut self.body, len as u64);
        let before = self.body.len();
        write(&mut self.body);
        assert_eq!(self.body.len() - before, len, "record length differs from the declared length");
        self.count += 1;
    }

    /// Records in the batch.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether the batch has no records.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the encoded records.
    pub fn body_bytes(&self) -> usize {
        self.body.len()
    }
}
