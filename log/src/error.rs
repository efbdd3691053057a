//! Errors at the crate's boundaries. Locations are data (segment, offset, seq), not prose.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// What is wrong at a corrupt position.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptionKind {
    /// A frame's checksum does not match: damaged bytes, or a frame of another log.
    Checksum,
    /// A frame header holds values no writer produces.
    BadFrameHeader,
    /// A frame's length runs past the end of its segment.
    LengthPastEnd,
    /// The bytes cannot hold a frame header and are not zero.
    Truncated,
    /// Non-zero padding after a frame.
    Padding,
    /// A valid frame carries the wrong sequence number (a hole, or a duplicated frame).
    SeqGap {
        /// The sequence number found where `seq` was expected.
        found: u64,
    },
    /// A frame's records do not fit its body exactly.
    RecordFraming,
    /// The segment header is damaged, foreign, or inconsistent with its file name.
    SegmentHeader(String),
    /// A segment file is missing from the sequence.
    MissingSegment,
    /// The log ends before the durable position recorded in CHECKPOINT.
    ShorterThanCheckpoint {
        /// The first sequence number CHECKPOINT does not cover.
        durable_next_seq: u64,
    },
    /// A sealed segment ends with non-zero bytes that are not a frame.
    TrailingGarbage,
    /// The active segment ends before the durable end the reader was given.
    ShorterThanTail,
}

impl std::fmt::Display for CorruptionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CorruptionKind::Checksum => write!(f, "checksum mismatch"),
            CorruptionKind::BadFrameHeader => write!(f, "invalid frame header"),
            CorruptionKind::LengthPastEnd => write!(f, "frame length runs past the segment end"),
            CorruptionKind::Truncated => write!(f, "truncated frame"),
            CorruptionKind::Padding => write!(f, "non-zero frame padding"),
            CorruptionKind::SeqGap { found } => write!(f, "sequence gap: found seq {found}"),
            CorruptionKind::RecordFraming => write!(f, "records do not fit the frame body"),
            CorruptionKind::SegmentHeader(why) => write!(f, "bad segment header: {why}"),
            CorruptionKind::MissingSegment => write!(f, "segment file missing"),
            CorruptionKind::ShorterThanCheckpoint { durable_next_seq } => {
                write!(f, "log ends before its recorded durable position (seq {durable_next_seq})")
            }
            CorruptionKind::TrailingGarbage => {
                write!(f, "garbage after the last frame of a sealed segment")
            }
            CorruptionKind::ShorterThanTail => {
                write!(f, "segment ends before its published durable end")
            }
        }
    }
}

/// Damage inside acknowledged data: the log refuses to open, and nothing is changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("log segment {segment} is damaged at byte {offset} (seq {seq}): {kind}")]
pub struct Corruption {
    /// Segment id (its file is `<segment:016x>.seg`).
    pub segment: u64,
    /// Byte offset of the damage in that segment.
    pub offset: u64,
    /// The sequence number expected at that offset.
    pub seq: u64,
    /// What is wrong there.
    pub kind: CorruptionKind,
}

/// Why a log could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process holds the writer lock.
    #[error("the log is locked by another writer{}", holder_text(.pid, .host))]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, as it recorded it.
        pid: Option<u32>,
        /// The holder's host, as it recorded it.
        host: Option<String>,
    },
    /// Damage inside acknowledged data.
    #[error(transparent)]
    Corruption(#[from] Corruption),
    /// A segment written by a newer format than this build reads.
    #[error(
        "log segment {segment} has format version {version} (needs reader {min_reader_version}); this databuild reads up to {}",
        crate::format::FORMAT_VERSION
    )]
    UnsupportedVersion {
        /// Segment id.
        segment: u64,
        /// Its format version.
        version: u16,
        /// The oldest reader it accepts.
        min_reader_version: u16,
    },
    /// An I/O error, with the operation and path.
    #[error("cannot {op} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn holder_text(pid: &Option<u32>, host: &Option<String>) -> String {
    match (pid, host) {
        (Some(p), Some(h)) => format!(" (pid {p} on {h})"),
        (Some(p), None) => format!(" (pid {p})"),
        _ => String::new(),
    }
}

/// Why an append failed. Nothing of a failed batch is acknowledged.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// A write or fsync failed earlier; the writer accepts nothing more (it never retries, as a
    /// failed fsync may have dropped dirty pages).
    #[error("the log writer stopped after an I/O error: {0}")]
    Poisoned(Arc<str>),
    /// The writer was closed.
    #[error("the log writer is closed")]
    Closed,
    /// A batch with no records.
    #[error("empty batch")]
    EmptyBatch,
    /// A batch larger than one frame may be.
    #[error("batch of {bytes} bytes exceeds the frame limit of {max} bytes")]
    BatchTooLarge {
        /// The batch body size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
}

/// Why reading failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Damage found while reading.
    #[error(transparent)]
    Corruption(#[from] Corruption),
    /// An I/O error.
    #[error("cannot {op} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl From<ReadError> for OpenError {
    fn from(e: ReadError) -> OpenError {
        match e {
            ReadError::Corruption(c) => OpenError::Corruption(c),
            ReadError::Io { op, path, source } => OpenError::Io { op, path, source },
        }
    }
}

pub(crate) fn io_err(
    op: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(io::Error) -> OpenError {
    let path = path.to_path_buf();
    move |source| OpenError::Io { op, path, source }
}

pub(crate) fn read_io(
    op: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(io::Error) -> ReadError {
    let path = path.to_path_buf();
    move |source| ReadError::Io { op, path, source }
}
