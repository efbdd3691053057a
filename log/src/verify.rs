//! `verify`: walk every segment and frame, read-only and without the lock, and report.

use std::path::Path;

use crate::checkpoint::{self, CheckpointStatus};
use crate::error::{Corruption, CorruptionKind, OpenError, io_err};
use crate::format::{Records, SEGMENT_HEADER_BYTES};
use crate::format::{TAIL_BYTES, TailHint};
use crate::fs::Fs;
use crate::segment::{self, EndClass, Listing, TAIL_FILE, TornTail};
use crate::{End, LogId, ReadOptions};

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

/// Whether anything but the segments themselves bounds where the log ends. Deleting the newest
/// segment (or all of them) leaves a log whose every frame is valid; only durability evidence
/// kept elsewhere can tell that it once went further.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completeness {
    /// A valid CHECKPOINT was checked against the end: a missing newest segment, or an end before
    /// the CHECKPOINT's durable position, is reported as corruption (within the residual window
    /// of `docs/log-format.md`).
    Checked,
    /// TAIL (read before the scan, so a live writer cannot have moved it past what was scanned)
    /// names a durable end beyond the valid prefix: acknowledged records are missing. The writer
    /// does not use TAIL as evidence (it is never fsynced), so this is reported only here.
    TailBeyond(End),
    /// Neither a valid CHECKPOINT nor TAIL bounds the end, and there are records or segments:
    /// nothing proves the log is complete. Callers may have evidence of their own.
    Unproven,
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
    /// What bounds the end of the log besides the segments (see [`Completeness`]).
    pub completeness: Completeness,
    /// The TAIL hint as read before the scan, if valid and of this log.
    pub tail_hint: Option<End>,
}

impl VerifyReport {
    /// No damage to acknowledged data (a torn tail alone is sound). This is the writer's
    /// judgement; [`VerifyReport::completeness`] adds what only `verify` looks at.
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
        completeness: Completeness::Checked,
        tail_hint: None,
    };
    if !fs.exists(dir).map_err(io_err("stat", dir))? {
        return Ok(report);
    }
    // TAIL first: it is written only after the data it names is durable, so whatever it says now
    // is in the segments by the time they are scanned, even with a writer appending meanwhile.
    let tail = read_tail(fs, dir);
    let Listing { valid, problem, .. } = segment::list_segments_lenient(fs, dir)?;
    let log_id = valid.first().map(|s| s.header.log_id);
    report.log_id = log_id;
    report.tail_hint = tail.filter(|t| log_id.is_none_or(|id| t.log_id == id)).map(|t| End {
        next_seq: t.next_seq,
        segment_id: t.segment_id,
        offset: t.offset,
    });
    let mut report = scan_all(fs, dir, opts.mode, &mut visit, report, valid, problem, log_id)?;
    report.completeness = match report.tail_hint {
        Some(t) if report.corruption.is_none() && t.next_seq > report.next_seq => {
            Completeness::TailBeyond(t)
        }
        _ if report.corruption.is_none()
            && matches!(
                report.checkpoint,
                CheckpointStatus::Missing | CheckpointStatus::Damaged
            )
            && (report.records > 0 || report.segments.len() > 1) =>
        {
            Completeness::Unproven
        }
        _ => Completeness::Checked,
    };
    Ok(report)
}

fn read_tail(fs: &dyn Fs, dir: &Path) -> Option<TailHint> {
    let f = fs.open_read(&dir.join(TAIL_FILE)).ok()?;
    let mut buf = [0u8; TAIL_BYTES];
    let got = f.read_at(&mut buf, 0).ok()?;
    TailHint::decode(&buf[..got])
}

#[allow(clippy::too_many_arguments)]
fn scan_all(
    fs: &dyn Fs,
    dir: &Path,
    mode: crate::ReadMode,
    visit: &mut impl FnMut(u64, &[u8]),
    mut report: VerifyReport,
    valid: Vec<segment::SegmentMeta>,
    problem: Option<OpenError>,
    log_id: Option<LogId>,
) -> Result<VerifyReport, OpenError> {
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
        let bytes = fs.load(&seg.path, seg.len, mode).map_err(io_err("read", &seg.path))?;
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
