//! Byte layouts: segment header, frame header, CHECKPOINT slot, TAIL hint, record framing.
//!
//! Everything is little-endian. These functions are pure: they turn bytes into checked values and
//! back, and never trust a length before checking it against the bytes that are there. The layout
//! is described byte by byte in `docs/log-format.md`.

use crate::LogId;

/// Magic bytes at the start of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"DBEVLOG\x1a";
/// Format version written by this build: CRC-32 (IEEE) frames, layout v1.
pub const FORMAT_VERSION: u16 = 1;
/// The oldest format version this build can read.
pub const READ_VERSION_MIN: u16 = 1;
/// Bytes in a segment header. The first frame starts right after it.
pub const SEGMENT_HEADER_BYTES: usize = 64;
/// Bytes in a frame header.
pub const FRAME_HEADER_BYTES: usize = 32;
/// Frames start on multiples of this; the padding between frames is zero.
pub const FRAME_ALIGN: usize = 8;
/// Hard cap on one frame's body: a batch bigger than this is refused before anything is written.
/// Big enough for a plan of millions of partitions, small enough that a corrupt length can never
/// make a reader map or allocate more than this.
pub const FRAME_BODY_BYTES_MAX: usize = 1 << 30;
/// Hard cap on records in one frame (the header stores a `u32`).
pub const FRAME_RECORDS_MAX: usize = u32::MAX as usize;

/// Magic bytes of a CHECKPOINT slot.
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"DBCHKPT\x1a";
/// Bytes in one CHECKPOINT slot; the file holds two.
pub const CHECKPOINT_SLOT_BYTES: usize = 512;
/// Magic bytes of the TAIL hint.
pub const TAIL_MAGIC: [u8; 8] = *b"DBTAIL\x00\x1a";
/// Bytes in the TAIL hint.
pub const TAIL_BYTES: usize = 64;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn log_id_at(b: &[u8], at: usize) -> LogId {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    LogId(a)
}

/// Rounds `n` up to the frame alignment.
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(FRAME_ALIGN as u64) * FRAME_ALIGN as u64
}

/// The header at the start of every segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version the segment was written with.
    pub version: u16,
    /// The oldest reader version that may read this segment.
    pub min_reader_version: u16,
    /// The log this segment belongs to.
    pub log_id: LogId,
    /// Position of the segment in the log: 0, 1, 2, ... without gaps.
    pub segment_id: u64,
    /// Sequence number of the first record in this segment.
    pub base_seq: u64,
    /// Wall-clock creation time, informational.
    pub created_unix_ms: u64,
}

/// Why a segment header did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderProblem {
    /// Fewer bytes than a header.
    Short,
    /// Not a databuild segment.
    BadMagic,
    /// The header checksum does not match.
    Checksum,
    /// Written by a newer format than this build reads.
    Unsupported {
        /// The segment's version.
        version: u16,
        /// The oldest reader the segment accepts.
        min_reader_version: u16,
    },
    /// A field holds a value no writer produces.
    BadField,
}

impl SegmentHeader {
    /// Encodes the header with its checksum.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[10..12].copy_from_slice(&self.min_reader_version.to_le_bytes());
        b[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
        b[16..32].copy_from_slice(&self.log_id.0);
        b[32..40].copy_from_slice(&self.segment_id.to_le_bytes());
        b[40..48].copy_from_slice(&self.base_seq.to_le_bytes());
        b[48..56].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header from the first bytes of a segment.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, HeaderProblem> {
        if b.len() < SEGMENT_HEADER_BYTES {
            return Err(HeaderProblem::Short);
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(HeaderProblem::BadMagic);
        }
        if crc32fast::hash(&b[0..60]) != u32_at(b, 60) {
            return Err(HeaderProblem::Checksum);
        }
        let version = u16_at(b, 8);
        let min_reader_version = u16_at(b, 10);
        if min_reader_version > FORMAT_VERSION || version < READ_VERSION_MIN {
            return Err(HeaderProblem::Unsupported { version, min_reader_version });
        }
        if u32_at(b, 12) as usize != SEGMENT_HEADER_BYTES || u32_at(b, 56) != 0 {
            return Err(HeaderProblem::BadField);
        }
        let base_seq = u64_at(b, 40);
        if base_seq == 0 {
            return Err(HeaderProblem::BadField);
        }
        Ok(SegmentHeader {
            version,
            min_reader_version,
            log_id: log_id_at(b, 16),
            segment_id: u64_at(b, 32),
            base_seq,
            created_unix_ms: u64_at(b, 48),
        })
    }
}

/// The fixed part in front of every frame body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Body bytes (without header or padding).
    pub len: u32,
    /// The checksum stored in the frame.
    pub crc: u32,
    /// Sequence number of the frame's first record.
    pub first_seq: u64,
    /// Records in the frame, at least one.
    pub count: u32,
    /// Reserved, zero.
    pub flags: u32,
    /// First sequence number *not* known durable when the frame was written (`<= first_seq`).
    /// A valid frame with `synced_seq > s` proves that `s` was fsynced, and so acknowledged.
    pub synced_seq: u64,
}

impl FrameHeader {
    /// Reads the header fields, unchecked, from at least [`FRAME_HEADER_BYTES`] bytes.
    #[inline]
    pub fn read(b: &[u8]) -> FrameHeader {
        FrameHeader {
            crc: u32_at(b, 0),
            len: u32_at(b, 4),
            first_seq: u64_at(b, 8),
            count: u32_at(b, 16),
            flags: u32_at(b, 20),
            synced_seq: u64_at(b, 24),
        }
    }

    /// Bytes the whole frame occupies, padding included.
    pub fn frame_bytes(&self) -> u64 {
        align_up(FRAME_HEADER_BYTES as u64 + u64::from(self.len))
    }

    /// The first sequence number after this frame.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count)
    }

    /// Checks the cheap fields that every frame a writer produces satisfies.
    pub fn plausible(&self) -> bool {
        self.count >= 1
            && self.flags == 0
            && self.first_seq >= 1
            && self.synced_seq <= self.first_seq
            && (self.len as usize) <= FRAME_BODY_BYTES_MAX
            && self.first_seq.checked_add(u64::from(self.count)).is_some()
    }
}

/// The frame checksum: it covers the log id, the length, every header field and the body, so a
/// frame written by another log never validates here.
pub fn frame_crc(log_id: &LogId, header: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&log_id.0);
    h.update(&header[4..FRAME_HEADER_BYTES]);
    h.update(body);
    h.finalize()
}

/// Appends one complete frame (header, body, zero padding) to `out`.
pub fn encode_frame(
    out: &mut Vec<u8>,
    log_id: &LogId,
    first_seq: u64,
    count: u32,
    synced_seq: u64,
    body: &[u8],
) {
    debug_assert!(count >= 1 && synced_seq <= first_seq && body.len() <= FRAME_BODY_BYTES_MAX);
    let start = out.len();
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[4..8].copy_from_slice(&(body.len() as u32).to_le_bytes());
    header[8..16].copy_from_slice(&first_seq.to_le_bytes());
    header[16..20].copy_from_slice(&count.to_le_bytes());
    header[24..32].copy_from_slice(&synced_seq.to_le_bytes());
    let crc = frame_crc(log_id, &header, body);
    header[0..4].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    let padded = align_up((out.len() - start) as u64) as usize;
    out.resize(start + padded, 0);
}

/// Why the bytes at a frame position are not a valid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameProblem {
    /// Fewer bytes left than a frame header, and they are not all zero.
    Truncated,
    /// The header is all zero: the end of written data, if everything after it is zero too.
    ZeroHeader,
    /// A header field no writer produces (count 0, flags, `synced_seq > first_seq`, oversize).
    BadHeader,
    /// The length runs past the end of the segment.
    LengthPastEnd,
    /// The checksum does not match (damage, or a frame of another log).
    Checksum,
    /// The frame is valid but its first sequence number is not the expected one.
    SeqGap {
        /// The sequence number the frame carries.
        found: u64,
    },
    /// Non-zero bytes in the padding after the body.
    Padding,
}

/// Checks the frame at `offset` of `seg`, expecting it to start at `expected_seq`. On success
/// returns the header; the body is `seg[offset + 32 ..][.. len]`.
pub fn check_frame(
    seg: &[u8],
    offset: usize,
    log_id: &LogId,
    expected_seq: u64,
) -> Result<FrameHeader, FrameProblem> {
    FrameChecker::new(log_id).check(seg, offset, expected_seq)
}

/// Checks everything about the frame at `offset` except its place in the sequence.
pub fn check_frame_any_seq(
    seg: &[u8],
    offset: usize,
    log_id: &LogId,
) -> Result<FrameHeader, FrameProblem> {
    FrameChecker::new(log_id).check_any_seq(seg, offset)
}

/// Checks frames of one log. It keeps the checksum state after the log id, so checking a frame
/// costs two checksum updates over contiguous bytes: scanning is bound by memory bandwidth.
#[derive(Clone, Debug)]
pub struct FrameChecker {
    seed: crc32fast::Hasher,
}

impl FrameChecker {
    /// A checker for frames of `log_id`.
    pub fn new(log_id: &LogId) -> FrameChecker {
        let mut seed = crc32fast::Hasher::new();
        seed.update(&log_id.0);
        FrameChecker { seed }
    }

    /// As [`check_frame`].
    #[inline]
    pub fn check(
        &self,
        seg: &[u8],
        offset: usize,
        expected_seq: u64,
    ) -> Result<FrameHeader, FrameProblem> {
        let h = self.check_any_seq(seg, offset)?;
        if h.first_seq != expected_seq {
            return Err(FrameProblem::SeqGap { found: h.first_seq });
        }
        Ok(h)
    }

    /// As [`check_frame_any_seq`].
    #[inline]
    pub fn check_any_seq(&self, seg: &[u8], offset: usize) -> Result<FrameHeader, FrameProblem> {
        let rest = &seg[offset.min(seg.len())..];
        if rest.len() < FRAME_HEADER_BYTES {
            return Err(if rest.iter().all(|&b| b == 0) {
                FrameProblem::ZeroHeader
            } else {
                FrameProblem::Truncated
            });
        }
        let h = FrameHeader::read(&rest[..FRAME_HEADER_BYTES]);
        if !h.plausible() {
            return Err(if rest[..FRAME_HEADER_BYTES].iter().all(|&b| b == 0) {
                FrameProblem::ZeroHeader
            } else {
                FrameProblem::BadHeader
            });
        }
        let frame_bytes = h.frame_bytes();
        if frame_bytes > rest.len() as u64 {
            return Err(FrameProblem::LengthPastEnd);
        }
        let body_end = FRAME_HEADER_BYTES + h.len as usize;
        // The same checksum as `frame_crc`: everything after the CRC field is one run of bytes.
        let mut crc = self.seed.clone();
        crc.update(&rest[4..body_end]);
        if crc.finalize() != h.crc {
            return Err(FrameProblem::Checksum);
        }
        if rest[body_end..frame_bytes as usize].iter().any(|&b| b != 0) {
            return Err(FrameProblem::Padding);
        }
        Ok(h)
    }
}

/// Appends `record` to a frame body as a varint length followed by the bytes (the same framing
/// as protobuf's length-delimited encoding, so a record can be decoded in place).
pub fn push_record(body: &mut Vec<u8>, record: &[u8]) {
    push_varint(body, record.len() as u64);
    body.extend_from_slice(record);
}

/// Appends a LEB128 varint.
pub fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Bytes a varint of `v` takes.
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Reads a LEB128 varint from the front of `b`: `(value, bytes used)`, or `None` if it is cut
/// short or longer than ten bytes.
pub fn read_varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Iterates the records of a checked frame body. A body whose records do not fit exactly is
/// reported once as `Err(())` and ends the iteration.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    body: &'a [u8],
    left: u32,
}

impl<'a> Records<'a> {
    /// Iterates `count` records packed in `body`.
    pub fn new(body: &'a [u8], count: u32) -> Records<'a> {
        Records { body, left: count }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<&'a [u8], ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            if self.body.is_empty() {
                return None;
            }
            self.body = &[];
            return Some(Err(()));
        }
        self.left -= 1;
        let Some((len, used)) = read_varint(self.body) else {
            self.left = 0;
            self.body = &[];
            return Some(Err(()));
        };
        let rest = &self.body[used..];
        if len > rest.len() as u64 {
            self.left = 0;
            self.body = &[];
            return Some(Err(()));
        }
        let (record, after) = rest.split_at(len as usize);
        self.body = after;
        Some(Ok(record))
    }
}

/// One CHECKPOINT slot: durable watermark evidence, written at seal, about once a second while
/// writing, and at clean close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointSlot {
    /// Increases with every write; the newer valid slot wins.
    pub generation: u64,
    /// The log it describes.
    pub log_id: LogId,
    /// Every sequence number below this was durable when the slot was written.
    pub durable_next_seq: u64,
    /// The segment holding the durable end.
    pub segment_id: u64,
    /// Byte offset of the durable end in that segment.
    pub segment_offset: u64,
    /// Written by a clean close: nothing follows the durable end.
    pub clean: bool,
}

impl CheckpointSlot {
    /// Encodes a slot with its checksum.
    pub fn encode(&self) -> [u8; CHECKPOINT_SLOT_BYTES] {
        let mut b = [0u8; CHECKPOINT_SLOT_BYTES];
        b[0..8].copy_from_slice(&CHECKPOINT_MAGIC);
        b[8..16].copy_from_slice(&self.generation.to_le_bytes());
        b[16..32].copy_from_slice(&self.log_id.0);
        b[32..40].copy_from_slice(&self.durable_next_seq.to_le_bytes());
        b[40..48].copy_from_slice(&self.segment_id.to_le_bytes());
        b[48..56].copy_from_slice(&self.segment_offset.to_le_bytes());
        b[56..60].copy_from_slice(&u32::from(self.clean).to_le_bytes());
        let crc = crc32fast::hash(&b[0..CHECKPOINT_SLOT_BYTES - 4]);
        b[CHECKPOINT_SLOT_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a slot; `None` if it is damaged or not a slot.
    pub fn decode(b: &[u8]) -> Option<CheckpointSlot> {
        if b.len() < CHECKPOINT_SLOT_BYTES || b[0..8] != CHECKPOINT_MAGIC {
            return None;
        }
        let crc_at = CHECKPOINT_SLOT_BYTES - 4;
        if crc32fast::hash(&b[0..crc_at]) != u32_at(b, crc_at) {
            return None;
        }
        let clean = match u32_at(b, 56) {
            0 => false,
            1 => true,
            _ => return None,
        };
        let durable_next_seq = u64_at(b, 32);
        if durable_next_seq == 0 {
            return None;
        }
        Some(CheckpointSlot {
            generation: u64_at(b, 8),
            log_id: log_id_at(b, 16),
            durable_next_seq,
            segment_id: u64_at(b, 40),
            segment_offset: u64_at(b, 48),
            clean,
        })
    }
}

/// The TAIL hint: where the durable end was after the last fsync. Rewritten after every group
/// commit and never fsynced; readers in other processes stop there. Derived: a bad one is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TailHint {
    /// The log it describes.
    pub log_id: LogId,
    /// Segment holding the durable end.
    pub segment_id: u64,
    /// Byte offset of the durable end in that segment.
    pub offset: u64,
    /// First sequence number after the durable end.
    pub next_seq: u64,
}

impl TailHint {
    /// Encodes the hint with its checksum.
    pub fn encode(&self) -> [u8; TAIL_BYTES] {
        let mut b = [0u8; TAIL_BYTES];
        b[0..8].copy_from_slice(&TAIL_MAGIC);
        b[8..24].copy_from_slice(&self.log_id.0);
        b[24..32].copy_from_slice(&self.segment_id.to_le_bytes());
        b[32..40].copy_from_slice(&self.offset.to_le_bytes());
        b[40..48].copy_from_slice(&self.next_seq.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a hint; `None` if it is damaged, torn or absent.
    pub fn decode(b: &[u8]) -> Option<TailHint> {
        if b.len() < TAIL_BYTES || b[0..8] != TAIL_MAGIC {
            return None;
        }
        if crc32fast::hash(&b[0..60]) != u32_at(b, 60) {
            return None;
        }
        Some(TailHint {
            log_id: log_id_at(b, 8),
            segment_id: u64_at(b, 24),
            offset: u64_at(b, 32),
            next_seq: u64_at(b, 40),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const ID: LogId = LogId([7; 16]);

    #[test]
    fn segment_header_round_trips_and_detects_damage() {
        let h = SegmentHeader {
            version: FORMAT_VERSION,
            min_reader_version: 1,
            log_id: ID,
            segment_id: 3,
            base_seq: 42,
            created_unix_ms: 1_700_000_000_000,
        };
        let mut b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        b[33] ^= 1;
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderProblem::Checksum));
        assert_eq!(SegmentHeader::decode(&b[..10]), Err(HeaderProblem::Short));
        let mut future = SegmentHeader { min_reader_version: FORMAT_VERSION + 1, ..h }.encode();
        assert!(matches!(SegmentHeader::decode(&future), Err(HeaderProblem::Unsupported { .. })));
        future[0] = b'X';
        assert_eq!(SegmentHeader::decode(&future), Err(HeaderProblem::BadMagic));
    }

    #[test]
    fn frame_round_trips_and_is_aligned() -> TestResult {
        let mut body = Vec::new();
        push_record(&mut body, b"hello");
        push_record(&mut body, b"");
        push_record(&mut body, &[9u8; 300]);
        let mut seg = vec![0u8; 8];
        encode_frame(&mut seg, &ID, 5, 3, 5, &body);
        assert_eq!(seg.len() % FRAME_ALIGN, 0);
        let h = check_frame(&seg, 8, &ID, 5).map_err(|e| format!("{e:?}"))?;
        assert_eq!((h.first_seq, h.count, h.len as usize), (5, 3, body.len()));
        let b = &seg[8 + FRAME_HEADER_BYTES..][..h.len as usize];
        let recs: Vec<_> = Records::new(b, h.count)
            .collect::<Result<_, _>>()
            .map_err(|()| "a record is badly framed")?;
        assert_eq!(recs, vec![&b"hello"[..], &b""[..], &[9u8; 300][..]]);
        Ok(())
    }

    #[test]
    fn frame_checks_reject_each_kind_of_damage() -> TestResult {
        let mut body = Vec::new();
        push_record(&mut body, b"abc");
        let mut seg = Vec::new();
        encode_frame(&mut seg, &ID, 1, 1, 1, &body);
        assert_eq!(check_frame(&seg, 0, &ID, 2), Err(FrameProblem::SeqGap { found: 1 }));
        assert_eq!(check_frame(&seg, 0, &LogId([8; 16]), 1), Err(FrameProblem::Checksum));
        let mut flipped = seg.clone();
        flipped[FRAME_HEADER_BYTES] ^= 0x10;
        assert_eq!(check_frame(&flipped, 0, &ID, 1), Err(FrameProblem::Checksum));
        let mut pad = seg.clone();
        *pad.last_mut().ok_or("the encoded frame is empty")? = 1;
        assert_eq!(check_frame(&pad, 0, &ID, 1), Err(FrameProblem::Padding));
        assert_eq!(check_frame(&seg[..seg.len() - 8], 0, &ID, 1), Err(FrameProblem::LengthPastEnd));
        assert_eq!(check_frame(&[0u8; 40], 0, &ID, 1), Err(FrameProblem::ZeroHeader));
        assert_eq!(check_frame(&[0u8, 1, 0], 0, &ID, 1), Err(FrameProblem::Truncated));
        let mut huge = seg.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(check_frame(&huge, 0, &ID, 1), Err(FrameProblem::BadHeader));
        Ok(())
    }

    #[test]
    fn records_report_bad_framing_once() {
        let mut body = Vec::new();
        push_varint(&mut body, 100);
        body.extend_from_slice(b"short");
        let got: Vec<_> = Records::new(&body, 1).collect();
        assert_eq!(got, vec![Err(())]);
        let mut extra = Vec::new();
        push_record(&mut extra, b"a");
        extra.push(0);
        let got: Vec<_> = Records::new(&extra, 1).collect();
        assert_eq!(got, vec![Ok(&b"a"[..]), Err(())]);
    }

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut b = Vec::new();
            push_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            assert_eq!(read_varint(&b), Some((v, b.len())));
        }
        assert_eq!(read_varint(&[0x80, 0x80]), None);
    }

    #[test]
    fn checkpoint_and_tail_round_trip_and_detect_damage() {
        let c = CheckpointSlot {
            generation: 9,
            log_id: ID,
            durable_next_seq: 100,
            segment_id: 2,
            segment_offset: 4096,
            clean: true,
        };
        let mut b = c.encode();
        assert_eq!(CheckpointSlot::decode(&b), Some(c));
        b[40] ^= 4;
        assert_eq!(CheckpointSlot::decode(&b), None);
        let t = TailHint { log_id: ID, segment_id: 1, offset: 64, next_seq: 7 };
        let mut b = t.encode();
        assert_eq!(TailHint::decode(&b), Some(t));
        b[30] ^= 1;
        assert_eq!(TailHint::decode(&b), None);
    }
}
