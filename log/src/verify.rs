//! `verify`: walk every segment and frame, read-only and without the lock, and report.

use std::path::Path;

use crate::checkpoint::{self, CheckpointStatus};
use crate::error::{Corruption, CorruptionKind, OpenError, io_err};
use crate::format::{Records, SEGMENT_HEADER_BYTES};
use crate::fs::Fs;
use crate::segment::{self, EndClass, Listing, TornTail};
use crate::{LogId, ReadOptions};

/// One segment as `verify` saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    /// Segment id.
    pub id: u64,
    /// Its first sequence number.
    pub base_seq: u64,
    /// First sequence number after its valid frames.
    pub next_seq: u64,
    /// Valid frames.
    pub frames: u64,
    /// Records in them.
    pub records: u64,
    /// File size.
    pub bytes: u64,
}

/// How the log ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TailStatus {
    /// The last frame is followed by nothing, or by zeros.
    Clean,
    /// Bytes follow that were never proven durable; the next writer cuts them.
    Torn(TornTail),
}

/// What `verify` found.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// The log id (`None` if there are no segments).
    pub log_id: Option<LogId>,
    /// Segments in order (up to the first damaged one, included).
    pub segments: Vec<SegmentSummary>,
    /// Valid frames before the first problem.
    pub frames: u64,
    /// Records in them.
    pub records: u64,
    /// First sequence number after the valid prefix.
    pub next_seq: u64,
    /// How the valid prefix ends, when there is no corruption.
    pub tail: TailStatus,
    /// The first damage to acknowledged data.
    pub corruption: Option<Corruption>,
    /// How CHECKPOINT looked.
    pub checkpoint: CheckpointStatus,
}

impl VerifyReport {
    /// No damage to acknowledged data (a torn tail alone is sound).
    pub fn is_sound(&self) -> bool {
        self.corruption.is_none()
    }
}

/// Checks the whole log in `dir`: segment headers and continuity, every frame's checksum,
/// sequence and padding, every frame's record framing, and how the last segment ends (with the
/// same evidence rules as the writer). Calls `visit` with every record of the valid prefix, in
/// order. Returns `Err` only when the log cannot be read at all (I/O, unsupported version).
pub fn verify(
    dir: &Path,
    opts: ReadOptions,
    mut visit: impl FnMut(u64, &[u8]),
) -> Result<VerifyReport, OpenError> {
    let fs: &dyn Fs = &*opts.fs;
    let mut report = VerifyReport {
        log_id: None,
        segments: Vec::new(),
        frames: 0,
        records: 0,
        next_seq: 1,
        tail: TailStatus::Clean,
        corruption: None,
        checkpoint: CheckpointStatus::Missing,
    };
    if !fs.exists(dir).map_err(io_err("stat", dir))? {
        return Ok(report);
    }
    let Listing { valid, problem, .. } = segment::list_segments_lenient(fs, dir)?;
    let log_id = valid.first().map(|s| s.header.log_id);
    report.log_id = log_id;
    let cp = checkpoint::read(fs, dir, log_id.as_ref())?;
    report.checkpoint = cp.status;
    if valid.is_empty() && problem.is_none() && cp.slot.is_some() {
        report.corruption = Some(Corruption {
            segment: 0,
            offset: 0,
            seq: 1,
            kind: CorruptionKind::MissingSegment,
        });
        return Ok(report);
    }
    let listing_problem = match problem {
        None => None,
        Some(OpenError::Corruption(c)) => Some(c),
        Some(other) => return Err(other),
    };
    let log_id = log_id.unwrap_or(LogId([0; 16]));
    let n = valid.len();
    for (i, seg) in valid.iter().enumerate() {
        let bytes = fs.load(&seg.path, seg.len, opts.mode).map_err(io_err("read", &seg.path))?;
        let mut framing: Option<Corruption> = None;
        let scan = segment::scan(
            &bytes,
            &log_id,
            SEGMENT_HEADER_BYTES as u64,
            seg.header.base_seq,
            |h, off| {
                if framing.is_some() {
                    return;
                }
                let body = &bytes[off as usize + 32..][..h.len as usize];
                for (seq, rec) in (h.first_seq..).zip(Records::new(body, h.count)) {
                    match rec {
                        Ok(r) => visit(seq, r),
                        Err(()) => {
                            framing = Some(Corruption {
                                segment: seg.id,
                                offset: off,
                                seq: h.first_seq,
                                kind: CorruptionKind::RecordFraming,
                            });
                            return;
                        }
                    }
                }
            },
        );
        report.segments.push(SegmentSummary {
            id: seg.id,
            base_seq: seg.header.base_seq,
            next_seq: scan.next_seq,
            frames: scan.frames,
            records: scan.records,
            bytes: seg.len,
        });
        report.frames += scan.frames;
        report.records += scan.records;
        report.next_seq = scan.next_seq;
        if let Some(c) = framing {
            report.corruption = Some(c);
            return Ok(report);
        }
        let sealed = i + 1 < n || listing_problem.is_some();
        if sealed {
            let next_base = valid.get(i + 1).map_or(scan.next_seq, |s| s.header.base_seq);
            if let Err(c) = segment::check_sealed(seg.id, &scan, next_base) {
                report.corruption = Some(c);
                return Ok(report);
            }
        } else {
            match segment::classify_end(seg.id, &bytes, &log_id, &scan, cp.slot.as_ref()) {
                EndClass::Clean => {}
                EndClass::Torn(t) => report.tail = TailStatus::Torn(t),
                EndClass::Corrupt(c) => {
                    report.corruption = Some(c);
                    return Ok(report);
                }
            }
        }
    }
    if let Some(c) = listing_problem {
        report.corruption = Some(Corruption { seq: report.next_seq, ..c });
    } else if let (Some(slot), Some(last)) = (cp.slot, valid.last())
        && slot.segment_id > last.id
    {
        report.corruption = Some(Corruption {
            segment: last.id + 1,
            offset: 0,
            seq: slot.durable_next_seq,
            kind: CorruptionKind::MissingSegment,
        });
    }
    Ok(report)
}
