//! Segment files: listing and header checks, the frame scanner, and the one function that decides
//! what the end of a log is (clean, a torn tail that may be cut, or corruption).
//!
//! Readers, the writer's open path and `verify` all use [`scan`] and [`classify_end`]; only the
//! writer's open path acts on the answer (see `writer.rs`). Scanning never modifies anything.

use std::path::{Path, PathBuf};

use crate::error::{Corruption, CorruptionKind, OpenError, io_err};
use crate::format::{
    FRAME_ALIGN, FRAME_HEADER_BYTES, FrameChecker, FrameHeader, FrameProblem, HeaderProblem,
    SEGMENT_HEADER_BYTES, SegmentHeader,
};
use crate::fs::Fs;
use crate::{CheckpointSlot, LogId};

/// Suffix of segment files.
pub const SEGMENT_SUFFIX: &str = ".seg";
/// Name of the writer lock file.
pub const LOCK_FILE: &str = "LOCK";
/// Name of the durability-evidence file.
pub const CHECKPOINT_FILE: &str = "CHECKPOINT";
/// Name of the durable-end hint for readers in other processes.
pub const TAIL_FILE: &str = "TAIL";
/// Suffix of files being created; a writer deletes leftovers when it opens.
pub const TMP_SUFFIX: &str = ".tmp";

/// Sparse index granularity: one `(seq, offset)` entry per this many bytes of frames.
pub const INDEX_SPACING_BYTES: u64 = 4096;

/// The file name of segment `id`: zero-padded hex, so `ls` order is log order.
pub fn segment_file_name(id: u64) -> String {
    format!("{id:016x}{SEGMENT_SUFFIX}")
}

/// A segment file and its checked header.
#[derive(Clone, Debug)]
pub struct SegmentMeta {
    /// Segment id, from the file name and the header (they agree).
    pub id: u64,
    /// Full path.
    pub path: PathBuf,
    /// The decoded header.
    pub header: SegmentHeader,
    /// File length when listed.
    pub len: u64,
}

fn header_corruption(id: u64, seq: u64, why: &str) -> OpenError {
    OpenError::Corruption(Corruption {
        segment: id,
        offset: 0,
        seq,
        kind: CorruptionKind::SegmentHeader(why.to_string()),
    })
}

/// Lists the segment files in `dir` and checks their headers: one log id, ids 0, 1, 2, ...
/// without gaps, the header's id equal to the file name's, base seqs starting at 1 and strictly
/// increasing. Returns them in log order; an empty list if there are none.
pub fn list_segments(fs: &dyn Fs, dir: &Path) -> Result<Vec<SegmentMeta>, OpenError> {
    let listing = list_segments_lenient(fs, dir)?;
    match listing.problem {
        Some(p) => Err(with_seq(p, seq_after(fs, &listing.valid, crate::ReadMode::Read)?)),
        None => Ok(listing.valid),
    }
}

/// Segment files split at the first one whose header is unusable.
#[derive(Debug)]
pub struct Listing {
    /// The segments before the first problem, in order.
    pub valid: Vec<SegmentMeta>,
    /// The first problem (a bad header, a foreign or missing segment).
    pub problem: Option<OpenError>,
    /// Ids of segment files from the problem on.
    pub rest: Vec<u64>,
}

/// Like [`list_segments`], but returns the valid prefix of segments and the first problem
/// instead of failing (for `repair` and `verify`).
pub fn list_segments_lenient(fs: &dyn Fs, dir: &Path) -> Result<Listing, OpenError> {
    let mut ids: Vec<u64> = Vec::new();
    for name in fs.list(dir).map_err(io_err("list", dir))? {
        if let Some(hex) = name.strip_suffix(SEGMENT_SUFFIX)
            && hex.len() == 16
            && let Ok(id) = u64::from_str_radix(hex, 16)
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    let mut out: Vec<SegmentMeta> = Vec::with_capacity(ids.len());
    for (i, &id) in ids.iter().enumerate() {
        match check_segment(fs, dir, i as u64, id, &out) {
            Ok(meta) => out.push(meta),
            Err(e) => return Ok(Listing { valid: out, problem: Some(e), rest: ids[i..].to_vec() }),
        }
    }
    Ok(Listing { valid: out, problem: None, rest: Vec::new() })
}

/// The seq at which the segment after `valid` begins: the end of the last valid segment's frames.
/// A problem found while listing names this seq (the damaged header's own base seq is unusable).
pub fn seq_after(
    fs: &dyn Fs,
    valid: &[SegmentMeta],
    mode: crate::ReadMode,
) -> Result<u64, OpenError> {
    let Some(last) = valid.last() else { return Ok(1) };
    let bytes = fs.load(&last.path, last.len, mode).map_err(io_err("read", &last.path))?;
    let s = scan(
        &bytes,
        &last.header.log_id,
        SEGMENT_HEADER_BYTES as u64,
        last.header.base_seq,
        |_, _| {},
    );
    Ok(s.next_seq)
}

/// Replaces the seq of a corruption found while listing.
pub fn with_seq(problem: OpenError, seq: u64) -> OpenError {
    match problem {
        OpenError::Corruption(c) => OpenError::Corruption(Corruption { seq, ..c }),
        other => other,
    }
}

fn check_segment(
    fs: &dyn Fs,
    dir: &Path,
    position: u64,
    id: u64,
    before: &[SegmentMeta],
) -> Result<SegmentMeta, OpenError> {
    let expected_seq = before.last().map_or(1, |p| p.header.base_seq + 1);
    if id != position {
        // A hole in the ids (or a log whose first segment is gone): v1 deletes nothing.
        return Err(OpenError::Corruption(Corruption {
            segment: position,
            offset: 0,
            seq: expected_seq,
            kind: CorruptionKind::MissingSegment,
        }));
    }
    let path = dir.join(segment_file_name(id));
    let file = fs.open_read(&path).map_err(io_err("open", &path))?;
    let len = file.len().map_err(io_err("stat", &path))?;
    let mut buf = [0u8; SEGMENT_HEADER_BYTES];
    let got = file.read_at(&mut buf, 0).map_err(io_err("read", &path))?;
    let header = match SegmentHeader::decode(&buf[..got]) {
        Ok(h) => h,
        Err(HeaderProblem::Unsupported { version, min_reader_version }) => {
            return Err(OpenError::UnsupportedVersion { segment: id, version, min_reader_version });
        }
        Err(p) => return Err(header_corruption(id, expected_seq, header_problem_text(p))),
    };
    if header.segment_id != id {
        return Err(header_corruption(id, expected_seq, "segment id differs from the file name"));
    }
    if let Some(first) = before.first()
        && header.log_id != first.header.log_id
    {
        return Err(header_corruption(id, expected_seq, "segment belongs to another log"));
    }
    match before.last() {
        None if header.base_seq != 1 => {
            return Err(header_corruption(id, 1, "first segment does not start at seq 1"));
        }
        Some(prev) if header.base_seq <= prev.header.base_seq => {
            return Err(header_corruption(id, expected_seq, "base seq does not increase"));
        }
        _ => {}
    }
    Ok(SegmentMeta { id, path, header, len })
}

fn header_problem_text(p: HeaderProblem) -> &'static str {
    match p {
        HeaderProblem::Short => "shorter than a header",
        HeaderProblem::BadMagic => "not a databuild log segment",
        HeaderProblem::Checksum => "header checksum mismatch",
        HeaderProblem::Unsupported { .. } => "unsupported format version",
        HeaderProblem::BadField => "invalid header field",
    }
}

/// Why a scan stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The bytes ended exactly after the last valid frame.
    End,
    /// Everything after the last valid frame is zero (preallocated or cut space).
    Zeros,
    /// The bytes at `end_offset` are not a valid next frame.
    Bad(FrameProblem),
    /// The visitor asked to stop.
    Halted,
}

/// The result of walking a segment's frames.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// Offset just after the last valid frame.
    pub end_offset: u64,
    /// Sequence number after the last valid frame.
    pub next_seq: u64,
    /// Valid frames seen.
    pub frames: u64,
    /// Records in them.
    pub records: u64,
    /// Sparse index: `(first_seq, offset)` of a frame every [`INDEX_SPACING_BYTES`].
    pub index: Vec<(u64, u64)>,
    /// Why the walk stopped.
    pub stop: Option<Stop>,
}

/// Walks valid frames of `bytes` from `offset`, expecting `seq` first, and stops at the first
/// position that is not a valid next frame. `visit` sees each valid frame's header and offset.
pub fn scan(
    bytes: &[u8],
    log_id: &LogId,
    offset: u64,
    seq: u64,
    mut visit: impl FnMut(&FrameHeader, u64),
) -> Scan {
    scan_until(bytes, log_id, offset, seq, |h, o| {
        visit(h, o);
        true
    })
}

/// As [`scan`], but `visit` returns whether to go on; stopping early ends with [`Stop::Halted`].
pub fn scan_until(
    bytes: &[u8],
    log_id: &LogId,
    mut offset: u64,
    mut seq: u64,
    mut visit: impl FnMut(&FrameHeader, u64) -> bool,
) -> Scan {
    let checker = FrameChecker::new(log_id);
    let mut out = Scan { index: Vec::new(), ..Scan::default() };
    let mut next_index_at = offset;
    let stop = loop {
        if offset as usize >= bytes.len() {
            break Stop::End;
        }
        match checker.check(bytes, offset as usize, seq) {
            Ok(h) => {
                if offset >= next_index_at {
                    out.index.push((seq, offset));
                    next_index_at = offset + INDEX_SPACING_BYTES;
                }
                if !visit(&h, offset) {
                    out.end_offset = offset;
                    out.next_seq = seq;
                    out.stop = Some(Stop::Halted);
                    return out;
                }
                out.frames += 1;
                out.records += u64::from(h.count);
                seq = h.end_seq();
                offset += h.frame_bytes();
            }
            Err(FrameProblem::ZeroHeader) if all_zero(&bytes[offset as usize..]) => {
                break Stop::Zeros;
            }
            Err(p) => break Stop::Bad(p),
        }
    };
    out.end_offset = offset;
    out.next_seq = seq;
    out.stop = Some(stop);
    out
}

/// Whether every byte is zero.
pub fn all_zero(b: &[u8]) -> bool {
    // OR-folding fixed chunks vectorizes; this runs over whole preallocated or cut tails.
    b.chunks(4096).all(|c| c.iter().fold(0u8, |acc, &x| acc | x) == 0)
}

/// Looks past a stop for proof that `seq` was acknowledged: a valid frame of this log (at any
/// 8-byte position after `from`) whose `synced_seq` is beyond `seq`. Cheap header fields are
/// checked before the checksum.
pub fn probe_evidence(bytes: &[u8], log_id: &LogId, from: u64, seq: u64) -> bool {
    let checker = FrameChecker::new(log_id);
    let mut at = (from as usize).div_ceil(FRAME_ALIGN) * FRAME_ALIGN;
    if at == from as usize {
        at += FRAME_ALIGN;
    }
    while at + FRAME_HEADER_BYTES <= bytes.len() {
        let h = FrameHeader::read(&bytes[at..at + FRAME_HEADER_BYTES]);
        if h.synced_seq > seq
            && h.plausible()
            && h.first_seq >= seq
            && checker.check_any_seq(bytes, at).is_ok()
        {
            return true;
        }
        at += FRAME_ALIGN;
    }
    false
}

/// What the end of the valid frames of a log's last segment is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndClass {
    /// Nothing follows the last valid frame (or only zeros).
    Clean,
    /// Bytes follow that were never proven durable: a writer may cut them (with a warning).
    Torn(TornTail),
    /// Damage inside acknowledged data.
    Corrupt(Corruption),
}

/// A torn tail: bytes after the last valid frame without proof of durability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// Segment id.
    pub segment: u64,
    /// Offset where the valid frames end.
    pub offset: u64,
    /// The first sequence number not recovered.
    pub seq: u64,
    /// Bytes from `offset` to the segment end that are not zero-padding (the cut size).
    pub bytes: u64,
    /// Records in frame headers found in the torn bytes (a lower bound on what is dropped).
    pub records: u64,
}

fn kind_of(p: FrameProblem) -> CorruptionKind {
    match p {
        FrameProblem::Truncated => CorruptionKind::Truncated,
        FrameProblem::ZeroHeader => CorruptionKind::TrailingGarbage,
        FrameProblem::BadHeader => CorruptionKind::BadFrameHeader,
        FrameProblem::LengthPastEnd => CorruptionKind::LengthPastEnd,
        FrameProblem::Checksum => CorruptionKind::Checksum,
        FrameProblem::SeqGap { found } => CorruptionKind::SeqGap { found },
        FrameProblem::Padding => CorruptionKind::Padding,
    }
}

/// The corruption a stop inside a region known to be valid stands for.
pub fn stop_corruption(segment: u64, scan: &Scan) -> Corruption {
    let kind = match scan.stop {
        Some(Stop::Bad(p)) => kind_of(p),
        _ => CorruptionKind::ShorterThanTail,
    };
    Corruption { segment, offset: scan.end_offset, seq: scan.next_seq, kind }
}

/// Counts records in plausible frame headers from `offset` on, following their lengths: an
/// estimate of what a torn tail drops.
fn torn_records(bytes: &[u8], mut offset: u64) -> u64 {
    let mut records = 0u64;
    while offset as usize + FRAME_HEADER_BYTES <= bytes.len() {
        let h = FrameHeader::read(&bytes[offset as usize..]);
        if !h.plausible() {
            break;
        }
        records += u64::from(h.count);
        offset += h.frame_bytes();
    }
    records
}

/// Decides what the stop of the last segment's scan means, given the evidence of durability:
/// CHECKPOINT's durable seq, and any valid frame after the stop that proves the stopped-at seq was
/// acknowledged. `bytes` is the whole last segment.
pub fn classify_end(
    segment: u64,
    bytes: &[u8],
    log_id: &LogId,
    scan: &Scan,
    checkpoint: Option<&CheckpointSlot>,
) -> EndClass {
    let (x, e) = (scan.end_offset, scan.next_seq);
    if let Some(c) = checkpoint
        && c.durable_next_seq > e
    {
        let kind = match scan.stop {
            Some(Stop::Bad(p)) => kind_of(p),
            _ => CorruptionKind::ShorterThanCheckpoint { durable_next_seq: c.durable_next_seq },
        };
        return EndClass::Corrupt(Corruption { segment, offset: x, seq: e, kind });
    }
    match scan.stop {
        None | Some(Stop::End) | Some(Stop::Zeros) | Some(Stop::Halted) => EndClass::Clean,
        Some(Stop::Bad(p)) => {
            if probe_evidence(bytes, log_id, x, e) {
                return EndClass::Corrupt(Corruption {
                    segment,
                    offset: x,
                    seq: e,
                    kind: kind_of(p),
                });
            }
            let rest = &bytes[x as usize..];
            let nonzero_end = rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            EndClass::Torn(TornTail {
                segment,
                offset: x,
                seq: e,
                bytes: nonzero_end as u64,
                records: torn_records(bytes, x),
            })
        }
    }
}

/// Checks that a sealed segment (one with a successor) ends cleanly where its successor begins.
pub fn check_sealed(segment: u64, scan: &Scan, next_base_seq: u64) -> Result<(), Corruption> {
    match scan.stop {
        Some(Stop::End) | Some(Stop::Zeros) if scan.next_seq == next_base_seq => Ok(()),
        Some(Stop::End) | Some(Stop::Zeros) => Err(Corruption {
            segment,
            offset: scan.end_offset,
            seq: scan.next_seq,
            kind: if scan.next_seq < next_base_seq {
                CorruptionKind::MissingSegment
            } else {
                CorruptionKind::SeqGap { found: next_base_seq }
            },
        }),
        _ => Err(stop_corruption(segment, scan)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_frame, push_record};

    const ID: LogId = LogId([3; 16]);

    fn segment(frames: &[(u64, u32, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; SEGMENT_HEADER_BYTES];
        for &(first, count, synced) in frames {
            let mut body = Vec::new();
            for i in 0..count {
                push_record(&mut body, format!("r{}", first + u64::from(i)).as_bytes());
            }
            encode_frame(&mut b, &ID, first, count, synced, &body);
        }
        b
    }

    #[test]
    fn scan_walks_to_the_end() {
        let b = segment(&[(1, 2, 1), (3, 1, 3), (4, 5, 4)]);
        let s = scan(&b, &ID, 64, 1, |_, _| {});
        assert_eq!((s.frames, s.records, s.next_seq, s.stop), (3, 8, 9, Some(Stop::End)));
        assert_eq!(s.index[0], (1, 64));
        assert_eq!(classify_end(0, &b, &ID, &s, None), EndClass::Clean);
    }

    #[test]
    fn zeros_after_the_end_are_clean() {
        let mut b = segment(&[(1, 2, 1)]);
        b.resize(b.len() + 4096, 0);
        let s = scan(&b, &ID, 64, 1, |_, _| {});
        assert_eq!(s.stop, Some(Stop::Zeros));
        assert_eq!(classify_end(0, &b, &ID, &s, None), EndClass::Clean);
    }

    #[test]
    fn damage_in_the_last_frame_is_torn_but_earlier_damage_is_proven() {
        let b = segment(&[(1, 1, 1), (2, 1, 2), (3, 1, 3)]);
        let len = b.len();
        // Damage the last frame: nothing after it proves it durable.
        let mut last = b.clone();
        last[len - 10] ^= 0xff;
        let s = scan(&last, &ID, 64, 1, |_, _| {});
        assert_eq!(s.next_seq, 3);
        assert!(matches!(classify_end(0, &last, &ID, &s, None), EndClass::Torn(t) if t.seq == 3));
        // Damage the first frame: later frames carry synced_seq > 1.
        let mut first = b.clone();
        first[64 + FRAME_HEADER_BYTES] ^= 1;
        let s = scan(&first, &ID, 64, 1, |_, _| {});
        assert!(matches!(
            classify_end(0, &first, &ID, &s, None),
            EndClass::Corrupt(Corruption {
                seq: 1,
                offset: 64,
                kind: CorruptionKind::Checksum,
                ..
            })
        ));
    }

    #[test]
    fn checkpoint_beyond_the_end_is_corruption() {
        let b = segment(&[(1, 1, 1)]);
        let s = scan(&b, &ID, 64, 1, |_, _| {});
        let c = CheckpointSlot {
            generation: 1,
            log_id: ID,
            durable_next_seq: 5,
            segment_id: 0,
            segment_offset: 200,
            clean: true,
        };
        assert!(matches!(
            classify_end(0, &b, &ID, &s, Some(&c)),
            EndClass::Corrupt(Corruption {
                kind: CorruptionKind::ShorterThanCheckpoint { .. },
                ..
            })
        ));
    }

    #[test]
    fn sealed_segments_must_meet_their_successor() {
        let b = segment(&[(1, 3, 1)]);
        let s = scan(&b, &ID, 64, 1, |_, _| {});
        assert!(check_sealed(0, &s, 4).is_ok());
        assert!(check_sealed(0, &s, 6).is_err());
    }
}
