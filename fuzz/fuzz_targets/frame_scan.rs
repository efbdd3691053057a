//! `frame_scan`: the input is the bytes of one segment file.
//!
//! It runs the pure layers every open path relies on (`format::SegmentHeader::decode`,
//! `segment::scan`, `segment::classify_end`, `segment::probe_evidence`, `format::Records`) and
//! checks what they report against the bytes:
//!
//! * `scan.end_offset` never passes the end of the bytes (unless the bytes are shorter than the
//!   offset the scan was asked to start at, where the scan must not move at all);
//! * every frame the scan visits lies inside the bytes, is 8-aligned, follows the previous one
//!   without a gap, and re-checks as valid at the sequence number it carries;
//! * `next_seq == base_seq + records`, `records` is the sum of the visited counts, `frames` their
//!   number, and the sparse index names visited frames only, in increasing order;
//! * the stop reason agrees with the bytes (End: nothing left; Zeros: only zeros left; Bad(p):
//!   `check_frame` at the end offset fails with the same problem);
//! * `classify_end` never panics, without a CHECKPOINT slot and with slots below, at and past
//!   the scan's end, and its answer is consistent with the stop;
//! * `Records` over every valid frame's body yields slices inside the body, at most `count`
//!   records, and at most one error, which ends the iteration.
//!
//! Each input is checked twice: as given, and after "fixing up" the checksums (segment header
//! CRC, and the CRC of every plausible frame in the chain) so that the fuzzer reaches the code
//! behind the checksums without having to forge CRC-32s.

#![no_main]

use databuild_log::format::{
    self, CheckpointSlot, FRAME_ALIGN, FRAME_HEADER_BYTES, FrameHeader, Records,
    SEGMENT_HEADER_BYTES, SEGMENT_MAGIC, SegmentHeader,
};
use databuild_log::segment::{self, Stop};
use databuild_log::{EndClass, LogId};
use libfuzzer_sys::fuzz_target;

/// The log id used when the header does not decode.
const FALLBACK_ID: LogId = LogId([0x5a; 16]);

fuzz_target!(|data: &[u8]| {
    check_segment(data);
    let fixed = fix_up(data);
    if fixed != data {
        check_segment(&fixed);
    }
});

/// Recomputes the header CRC (when the magic is there) and the CRC of each plausible frame of the
/// chain starting at byte 64, so valid-looking segments are reachable. Allocates only a copy of
/// the input.
fn fix_up(data: &[u8]) -> Vec<u8> {
    let mut b = data.to_vec();
    if b.len() < SEGMENT_HEADER_BYTES || b[0..8] != SEGMENT_MAGIC {
        return b;
    }
    let crc = crc32(&b[0..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    let log_id = {
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[16..32]);
        LogId(id)
    };
    let mut at = SEGMENT_HEADER_BYTES;
    while at + FRAME_HEADER_BYTES <= b.len() {
        let h = FrameHeader::read(&b[at..at + FRAME_HEADER_BYTES]);
        if !h.plausible() {
            break;
        }
        let body_end = at + FRAME_HEADER_BYTES + h.len as usize;
        let frame_end = at as u64 + h.frame_bytes();
        if frame_end > b.len() as u64 {
            break;
        }
        // Re-encode the header from its fields (all 32 bytes are fields, and `plausible` implies
        // flags == 0), which sets the checksum wherever the layout keeps it; padding stays as is.
        let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + h.len as usize + FRAME_ALIGN);
        format::encode_frame(
            &mut frame,
            &log_id,
            h.first_seq,
            h.count,
            h.synced_seq,
            &b[at + FRAME_HEADER_BYTES..body_end],
        );
        b[at..at + FRAME_HEADER_BYTES].copy_from_slice(&frame[..FRAME_HEADER_BYTES]);
        at = frame_end as usize;
    }
    b
}

/// CRC-32 (IEEE), as crc32fast computes it; computed here so the harness has no extra dependency.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn check_segment(bytes: &[u8]) {
    let header = SegmentHeader::decode(bytes);
    if let Ok(h) = &header {
        // A header that decodes re-encodes to the same 64 bytes.
        assert_eq!(&h.encode()[..], &bytes[..SEGMENT_HEADER_BYTES]);
        assert!(h.base_seq >= 1);
    }
    let (log_id, base_seq, segment_id) = match header {
        Ok(h) => (h.log_id, h.base_seq, h.segment_id),
        Err(_) => (FALLBACK_ID, 1, 0),
    };
    let start = SEGMENT_HEADER_BYTES as u64;

    let mut visited: Vec<(FrameHeader, u64)> = Vec::new();
    let scan = segment::scan(bytes, &log_id, start, base_seq, |h, off| visited.push((*h, off)));

    // Where the scan ended.
    if (bytes.len() as u64) >= start {
        assert!(
            scan.end_offset <= bytes.len() as u64,
            "end_offset {} past the {} bytes",
            scan.end_offset,
            bytes.len()
        );
    } else {
        assert_eq!(scan.end_offset, start, "a scan past the end must not move");
        assert_eq!(scan.frames, 0);
    }
    assert_eq!(Some(scan.next_seq), base_seq.checked_add(scan.records), "next_seq != base + records");
    assert_eq!(scan.frames, visited.len() as u64);

    // Every visited frame.
    let mut expect_off = start;
    let mut expect_seq = base_seq;
    let mut records = 0u64;
    for (h, off) in &visited {
        assert_eq!(*off, expect_off, "frames are contiguous");
        assert_eq!(off % FRAME_ALIGN as u64, 0, "frames are aligned");
        assert_eq!(h.first_seq, expect_seq, "frames are in sequence");
        let end = off.checked_add(h.frame_bytes()).expect("frame end overflows");
        assert!(end <= bytes.len() as u64, "frame at {off} (+{}) outside the bytes", h.frame_bytes());
        assert!(h.count >= 1 && h.plausible());
        assert_eq!(format::check_frame(bytes, *off as usize, &log_id, h.first_seq), Ok(*h));
        check_records(bytes, *off as usize, h);
        records += u64::from(h.count);
        expect_off = end;
        expect_seq = h.end_seq();
    }
    assert_eq!(records, scan.records);
    assert_eq!(expect_seq, scan.next_seq);
    if !visited.is_empty() {
        assert_eq!(expect_off, scan.end_offset);
    }

    // The sparse index names visited frames, in increasing order, starting with the first.
    let mut prev: Option<(u64, u64)> = None;
    for &(seq, off) in &scan.index {
        assert!(
            visited.iter().any(|(h, o)| *o == off && h.first_seq == seq),
            "index entry ({seq}, {off}) is not a visited frame"
        );
        if let Some((ps, po)) = prev {
            assert!(seq > ps && off >= po + segment::INDEX_SPACING_BYTES);
        }
        prev = Some((seq, off));
    }
    if let Some((h, off)) = visited.first() {
        assert_eq!(scan.index.first(), Some(&(h.first_seq, *off)));
    }

    // The stop reason agrees with the bytes.
    let end = scan.end_offset;
    match scan.stop {
        Some(Stop::End) => assert!(end >= bytes.len() as u64),
        Some(Stop::Zeros) => {
            assert!(end < bytes.len() as u64);
            assert!(bytes[end as usize..].iter().all(|&b| b == 0));
        }
        Some(Stop::Bad(p)) => {
            assert!(end < bytes.len() as u64);
            assert_eq!(
                format::check_frame(bytes, end as usize, &log_id, scan.next_seq),
                Err(p),
                "the stop reason differs from a re-check"
            );
        }
        Some(Stop::Halted) => panic!("scan stopped as halted, but the visitor never halts"),
        None => panic!("scan returned without a stop reason"),
    }

    // probe_evidence never panics (it is the frame-evidence half of classify_end).
    let _ = segment::probe_evidence(bytes, &log_id, end, scan.next_seq);

    // classify_end without a CHECKPOINT slot, then with slots around the scan's end.
    let plain = segment::classify_end(segment_id, bytes, &log_id, &scan, None);
    match (&plain, scan.stop) {
        (EndClass::Clean, Some(Stop::End | Stop::Zeros)) => {}
        (EndClass::Clean, _) => panic!("Clean after a bad stop: {:?}", scan.stop),
        (_, Some(Stop::End | Stop::Zeros)) => panic!("{plain:?} after a clean stop"),
        (EndClass::Torn(t), _) => {
            assert_eq!((t.segment, t.offset, t.seq), (segment_id, end, scan.next_seq));
            assert!(t.bytes <= bytes.len() as u64 - end, "torn bytes past the end");
        }
        (EndClass::Corrupt(c), _) => {
            assert_eq!((c.segment, c.offset, c.seq), (segment_id, end, scan.next_seq));
        }
    }
    let tail_word = bytes.len().checked_sub(8).map_or(0, |at| {
        u64::from_le_bytes(bytes[at..].try_into().expect("8 bytes"))
    });
    for durable_next_seq in
        [1, scan.next_seq.saturating_sub(1), scan.next_seq, scan.next_seq.saturating_add(1), tail_word, u64::MAX]
    {
        if durable_next_seq == 0 {
            continue;
        }
        let slot = CheckpointSlot {
            generation: 3,
            log_id,
            durable_next_seq,
            segment_id,
            segment_offset: end,
            clean: durable_next_seq % 2 == 0,
        };
        // A slot decodes as encoded.
        assert_eq!(CheckpointSlot::decode(&slot.encode()), Some(slot));
        let with = segment::classify_end(segment_id, bytes, &log_id, &scan, Some(&slot));
        if durable_next_seq > scan.next_seq {
            assert!(
                matches!(with, EndClass::Corrupt(_)),
                "CHECKPOINT past the end must be corruption, got {with:?}"
            );
        } else {
            assert_eq!(with, plain, "a CHECKPOINT at or below the end changes nothing");
        }
    }
}

/// Iterates the records of the valid frame at `off`.
fn check_records(bytes: &[u8], off: usize, h: &FrameHeader) {
    let body_start = off + FRAME_HEADER_BYTES;
    let body = &bytes[body_start..body_start + h.len as usize];
    let body_range = body.as_ptr_range();
    let mut ok = 0u64;
    let mut errs = 0u64;
    let mut used = 0usize;
    for rec in Records::new(body, h.count) {
        assert_eq!(errs, 0, "an error ends the iteration");
        match rec {
            Ok(r) => {
                ok += 1;
                let range = r.as_ptr_range();
                assert!(r.is_empty() || (range.start >= body_range.start && range.end <= body_range.end));
                used += format::varint_len(r.len() as u64) + r.len();
                assert!(used <= body.len(), "records take more than the body");
            }
            Err(()) => errs += 1,
        }
        assert!(ok <= u64::from(h.count));
    }
    if errs == 0 {
        // Either all records and nothing else, or the count was reached exactly at the end.
        assert_eq!(ok, u64::from(h.count));
    }
}
