//! Protects recovery against damaged logs: after any single mutation (truncation, bit flips, a
//! zeroed or garbage sector, appended garbage or a foreign frame), opening either returns a prefix
//! of what was written (only when the damage is beyond anything provably acknowledged) or refuses
//! with the exact segment, offset and seq of the first damaged frame. Never a silently shorter log,
//! never an invented record. Every case runs through both the mmap and the pread path, and checks
//! that `verify` agrees and that a second open is clean and identical.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use databuild_log::format::{FrameHeader, encode_frame};
use databuild_log::sim::SimFs;
use databuild_log::{
    Batch, CorruptionKind, Fs, LogId, OpenError, ReadMode, ReadOptions, Reader, TailStatus, Writer,
    WriterOptions, verify,
};
use proptest::prelude::*;

const SIM_DIR: &str = "/log";
const SEGMENT_BYTES: u64 = 3000;

/// A log as written: records, frame positions, and how the writer stopped.
struct Written {
    records: Vec<Vec<u8>>,
    /// (segment, offset, frame bytes, first seq, count), in log order.
    frames: Vec<(u64, u64, u64, u64, u32)>,
    segments: u64,
    clean_close: bool,
}

/// Writes batches through the simulator (fast: no real fsync, same format) and copies the files
/// to `dir`.
fn write_log(dir: &Path, sizes: &[(usize, usize)], clean_close: bool) -> Written {
    let fs = SimFs::new();
    let sim_dir = Path::new(SIM_DIR);
    let (w, _) = Writer::open(sim_dir, opts(Arc::new(fs.clone()), SEGMENT_BYTES)).unwrap();
    let mut records = Vec::new();
    for &(n, len) in sizes {
        let mut b = Batch::new();
        let first = w.next_seq();
        for i in 0..n {
            let r = record(first + i as u64, len);
            b.push(&r);
            records.push(r);
        }
        w.append(b).unwrap();
    }
    let r = w.reader(ReadMode::Read).unwrap();
    let mut frames = Vec::new();
    for f in r.frames_from(1) {
        let f = f.unwrap();
        let (seg, off) = f.position();
        let bytes = databuild_log::format::align_up(32 + f.body().len() as u64);
        frames.push((seg, off, bytes, f.first_seq(), f.count()));
    }
    let segments = r.segments().len() as u64;
    drop(r);
    if clean_close {
        w.close().unwrap()
    } else {
        w.halt()
    }
    for name in fs.list(sim_dir).unwrap() {
        if let Some(data) = fs.contents(&sim_dir.join(&name)) {
            std::fs::write(dir.join(&name), data).unwrap();
        }
    }
    Written { records, frames, segments, clean_close }
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

#[derive(Clone, Debug)]
enum Mutation {
    Truncate { seg: usize, at: f64 },
    FlipBits { seg: usize, at: f64, bits: Vec<u8> },
    Zero { seg: usize, at: f64, len: usize },
    Garbage { seg: usize, at: f64, bytes: Vec<u8> },
    AppendGarbage { bytes: Vec<u8> },
    AppendForeignFrame,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = 0.0f64..1.0;
    prop_oneof![
        (0usize..8, at.clone()).prop_map(|(seg, at)| Mutation::Truncate { seg, at }),
        (0usize..8, at.clone(), proptest::collection::vec(0u8..8, 1..=3))
            .prop_map(|(seg, at, bits)| Mutation::FlipBits { seg, at, bits }),
        (0usize..8, at.clone(), prop_oneof![Just(512usize), Just(4096)])
            .prop_map(|(seg, at, len)| Mutation::Zero { seg, at, len }),
        (0usize..8, at, proptest::collection::vec(any::<u8>(), 1..600))
            .prop_map(|(seg, at, bytes)| Mutation::Garbage { seg, at, bytes }),
        proptest::collection::vec(1u8..=255, 1..300)
            .prop_map(|bytes| Mutation::AppendGarbage { bytes }),
        Just(Mutation::AppendForeignFrame),
    ]
}

/// Applies the mutation; returns the segment touched and the byte range whose content changed
/// (a truncation changes everything from the cut on), or `None` if nothing changed.
fn apply(dir: &Path, w: &Written, m: &Mutation) -> Option<(u64, u64, u64)> {
    let last = w.segments - 1;
    let seg = match m {
        Mutation::AppendGarbage { .. } | Mutation::AppendForeignFrame => last,
        Mutation::Truncate { seg, .. }
        | Mutation::FlipBits { seg, .. }
        | Mutation::Zero { seg, .. }
        | Mutation::Garbage { seg, .. } => *seg as u64 % w.segments,
    };
    let path = seg_path(dir, seg);
    let old = std::fs::read(&path).unwrap();
    let mut new = old.clone();
    let pos = |at: f64, len: usize| ((at * len as f64) as usize).min(len.saturating_sub(1));
    match m {
        Mutation::Truncate { at, .. } => {
            let cut = pos(*at, old.len());
            new.truncate(cut);
        }
        Mutation::FlipBits { at, bits, .. } => {
            let p = pos(*at, old.len());
            for (i, b) in bits.iter().enumerate() {
                let byte = (p + i * 7).min(old.len() - 1);
                new[byte] ^= 1 << b;
            }
        }
        Mutation::Zero { at, len, .. } => {
            let p = pos(*at, old.len());
            let end = (p + len).min(new.len());
            new[p..end].fill(0);
        }
        Mutation::Garbage { at, bytes, .. } => {
            let p = pos(*at, old.len());
            let end = p + bytes.len();
            if new.len() < end {
                new.resize(end, 0);
            }
            new[p..end].copy_from_slice(bytes);
        }
        Mutation::AppendGarbage { bytes } => new.extend_from_slice(bytes),
        Mutation::AppendForeignFrame => {
            let next = w.records.len() as u64 + 1;
            let mut body = Vec::new();
            databuild_log::format::push_record(&mut body, b"not from this log");
            encode_frame(&mut new, &LogId([0xee; 16]), next, 1, next, &body);
        }
    }
    std::fs::write(&path, &new).unwrap();
    if new.len() < old.len() {
        let first_diff = (0..new.len()).find(|&i| new[i] != old[i]).unwrap_or(new.len());
        return Some((seg, first_diff as u64, old.len() as u64));
    }
    let first = (0..new.len()).find(|&i| old.get(i) != Some(&new[i]))?;
    let end = (0..new.len()).rev().find(|&i| old.get(i) != Some(&new[i])).unwrap() + 1;
    Some((seg, first as u64, end as u64))
}

#[derive(Debug, PartialEq)]
enum Expect {
    /// Opens with exactly this many records (the rest was never provably acknowledged).
    Prefix(usize),
    /// Refuses, naming this segment, offset and seq.
    Corrupt { segment: u64, offset: u64, seq: u64 },
}

/// The outcome DESIGN.md §5 prescribes, from facts the test knows: which frames the change
/// touched, whether their segment is sealed, and what evidence the writer left.
fn expected(w: &Written, changed: Option<(u64, u64, u64)>) -> Expect {
    let all = Expect::Prefix(w.records.len());
    let Some((seg, lo, hi)) = changed else { return all };
    let last = w.segments - 1;
    if lo < 64 {
        // The segment header: the seq named is where the segment begins.
        let base = 1 + w.frames.iter().filter(|f| f.0 < seg).map(|f| u64::from(f.4)).sum::<u64>();
        return Expect::Corrupt { segment: seg, offset: 0, seq: base };
    }
    let hit = |f: &&(u64, u64, u64, u64, u32)| f.0 == seg && f.1 < hi && lo < f.1 + f.2;
    let Some(d) = w.frames.iter().find(hit) else {
        // Only bytes after the segment's last frame changed.
        if seg == last {
            return all;
        }
        let end = w.frames.iter().filter(|f| f.0 == seg).map(|f| f.1 + f.2).max().unwrap_or(64);
        let next =
            w.frames.iter().filter(|f| f.0 == seg).map(|f| f.3 + u64::from(f.4)).max().unwrap_or(1);
        return Expect::Corrupt { segment: seg, offset: end, seq: next };
    };
    let corrupt = Expect::Corrupt { segment: d.0, offset: d.1, seq: d.3 };
    if d.0 != last || w.clean_close {
        return corrupt;
    }
    // In the last segment, after a crash: a later frame left intact proves `d` was acknowledged.
    let proven = w.frames.iter().any(|f| f.0 == d.0 && f.1 > d.1 && !(f.1 < hi && lo < f.1 + f.2));
    if proven { corrupt } else { Expect::Prefix(d.3 as usize - 1) }
}

fn check_outcome(dir: &Path, w: &Written, expect: &Expect, what: &str) {
    for mode in MODES {
        let copy = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
        }
        // verify (read-only) first: it must agree with what the writer will do.
        let rep =
            verify(copy.path(), ReadOptions { mode, ..ReadOptions::default() }, |_, _| {}).unwrap();
        let o = WriterOptions { read_mode: mode, ..opts(real(), SEGMENT_BYTES) };
        match (expect, recover(copy.path(), o.clone())) {
            (Expect::Prefix(n), Ok((got, report))) => {
                assert_eq!(got.len(), *n, "{what} ({mode:?}): recovered count");
                assert_eq!(
                    got[..],
                    w.records[..*n],
                    "{what} ({mode:?}): a prefix of what was written"
                );
                assert!(
                    rep.is_sound(),
                    "{what} ({mode:?}): verify agrees it is sound: {:?}",
                    rep.corruption
                );
                let dropped = report.torn_tail.is_some();
                assert_eq!(
                    dropped,
                    matches!(rep.tail, TailStatus::Torn(_)),
                    "{what} ({mode:?}): verify and open agree on the torn tail"
                );
                assert_eq!(dropped, !report.warnings.is_empty() && report.torn_copy.is_some());
                // A second open is clean and identical.
                let (again, report2) = recover(copy.path(), o).unwrap();
                assert_eq!(again, got, "{what} ({mode:?}): second open identical");
                assert!(report2.torn_tail.is_none(), "{what} ({mode:?}): second open is clean");
                // And a reader in another handle sees the same.
                assert_eq!(read_all(copy.path(), real(), mode).unwrap(), got);
            }
            (Expect::Corrupt { segment, offset, seq }, Err(OpenError::Corruption(c))) => {
                assert_eq!(
                    (c.segment, c.offset, c.seq),
                    (*segment, *offset, *seq),
                    "{what} ({mode:?}): location of the damage ({c})"
                );
                let v = rep.corruption.as_ref().expect("verify reports the damage too");
                assert_eq!(
                    (v.segment, v.offset, v.seq),
                    (*segment, *offset, *seq),
                    "{what}: verify's location"
                );
                let msg = c.to_string();
                assert!(
                    msg.contains(&format!("segment {segment}"))
                        && msg.contains(&format!("seq {seq}"))
                );
            }
            (e, got) => panic!(
                "{what} ({mode:?}): expected {e:?}, got {:?}",
                got.map(|(r, rep)| (r.len(), rep.torn_tail)).map_err(|e| e.to_string())
            ),
        }
    }
}

fn batches() -> impl Strategy<Value = Vec<(usize, usize)>> {
    proptest::collection::vec((1usize..=6, 0usize..300), 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn one_mutation_yields_a_prefix_or_a_located_refusal(
        sizes in batches(),
        clean in any::<bool>(),
        m in mutation(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let w = write_log(dir.path(), &sizes, clean);
        let changed = apply(dir.path(), &w, &m);
        let expect = expected(&w, changed);
        check_outcome(dir.path(), &w, &expect, &format!("{m:?} on {} records, clean={clean}", w.records.len()));
    }
}

#[test]
fn truncation_at_every_byte_of_a_small_log() {
    for clean in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let w = write_log(dir.path(), &[(1, 10), (2, 100), (1, 5), (3, 40), (1, 200)], clean);
        let path = seg_path(dir.path(), w.segments - 1);
        let full = std::fs::read(&path).unwrap();
        for cut in 0..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let expect = expected(&w, Some((w.segments - 1, cut as u64, full.len() as u64)));
            check_outcome(dir.path(), &w, &expect, &format!("truncate at {cut}, clean={clean}"));
        }
    }
}

#[test]
fn a_frame_of_this_log_duplicated_mid_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = write_log(dir.path(), &[(2, 20), (2, 20), (2, 20), (2, 20)], false);
    let path = seg_path(dir.path(), 0);
    let mut b = std::fs::read(&path).unwrap();
    let (f0, f1) = (w.frames[0], w.frames[1]);
    assert_eq!(f0.2, f1.2, "same-size frames");
    let first = b[f0.1 as usize..(f0.1 + f0.2) as usize].to_vec();
    b[f1.1 as usize..(f1.1 + f1.2) as usize].copy_from_slice(&first);
    std::fs::write(&path, &b).unwrap();
    match Writer::open(dir.path(), opts(real(), SEGMENT_BYTES)) {
        Err(OpenError::Corruption(c)) => {
            assert_eq!((c.offset, c.seq), (f1.1, 3));
            assert_eq!(c.kind, CorruptionKind::SeqGap { found: 1 });
        }
        other => panic!("expected a seq gap, got {other:?}"),
    }
}

#[test]
fn a_frame_of_another_log_spliced_mid_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = write_log(dir.path(), &[(1, 20), (1, 20), (1, 20)], false);
    let path = seg_path(dir.path(), 0);
    let mut b = std::fs::read(&path).unwrap();
    let f1 = w.frames[1];
    let body = {
        let h = FrameHeader::read(&b[f1.1 as usize..]);
        b[f1.1 as usize + 32..f1.1 as usize + 32 + h.len as usize].to_vec()
    };
    let mut foreign = Vec::new();
    encode_frame(&mut foreign, &LogId([1; 16]), 2, 1, 2, &body);
    b[f1.1 as usize..f1.1 as usize + foreign.len()].copy_from_slice(&foreign);
    std::fs::write(&path, &b).unwrap();
    match Writer::open(dir.path(), opts(real(), SEGMENT_BYTES)) {
        Err(OpenError::Corruption(c)) => {
            assert_eq!((c.offset, c.seq, c.kind), (f1.1, 2, CorruptionKind::Checksum))
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
}

#[test]
fn a_missing_middle_segment_or_a_foreign_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = write_log(dir.path(), &[(4, 200); 30], true);
    assert!(w.segments >= 4);
    std::fs::remove_file(seg_path(dir.path(), 1)).unwrap();
    match Writer::open(dir.path(), opts(real(), SEGMENT_BYTES)) {
        Err(OpenError::Corruption(c)) => {
            assert_eq!((c.segment, c.kind), (1, CorruptionKind::MissingSegment))
        }
        other => panic!("expected a missing segment, got {other:?}"),
    }
    // A segment of another log in the directory.
    let dir = tempfile::tempdir().unwrap();
    let w = write_log(dir.path(), &[(4, 200); 30], true);
    let other = tempfile::tempdir().unwrap();
    write_log(other.path(), &[(4, 200); 30], true);
    let last = seg_path(dir.path(), w.segments - 1);
    std::fs::copy(seg_path(other.path(), w.segments - 1), &last).unwrap();
    match Writer::open(dir.path(), opts(real(), SEGMENT_BYTES)) {
        Err(OpenError::Corruption(c)) => {
            assert_eq!((c.segment, c.offset), (w.segments - 1, 0));
            assert!(c.to_string().contains("another log"), "{c}");
        }
        other => panic!("expected a foreign segment, got {other:?}"),
    }
}

#[test]
fn checkpoint_damage_falls_back_to_the_other_slot_or_to_frame_evidence() {
    for (damage_a, damage_b) in [(true, false), (false, true), (true, true)] {
        let dir = tempfile::tempdir().unwrap();
        let w = write_log(dir.path(), &[(2, 30); 10], true);
        let path = dir.path().join("CHECKPOINT");
        let mut b = std::fs::read(&path).unwrap();
        if damage_a {
            b[100] ^= 1;
        }
        if damage_b {
            b[512 + 100] ^= 1;
        }
        std::fs::write(&path, &b).unwrap();
        let (got, report) = recover(dir.path(), opts(real(), SEGMENT_BYTES)).unwrap();
        assert_eq!(got, w.records);
        assert!(!report.warnings.is_empty(), "a damaged slot is reported");
        assert!(report.warnings.iter().any(|m| m.contains("CHECKPOINT")));
    }
}

#[test]
fn a_damaged_tail_hint_only_makes_readers_scan() {
    let dir = tempfile::tempdir().unwrap();
    let w = write_log(dir.path(), &[(2, 30); 10], true);
    std::fs::write(dir.path().join("TAIL"), b"garbage").unwrap();
    for mode in MODES {
        assert_eq!(read_all(dir.path(), real(), mode).unwrap(), w.records);
    }
    std::fs::remove_file(dir.path().join("TAIL")).unwrap();
    assert_eq!(read_all(dir.path(), real(), ReadMode::Mmap).unwrap(), w.records);
    let (got, _) = recover(dir.path(), opts(real(), SEGMENT_BYTES)).unwrap();
    assert_eq!(got, w.records);
}

#[test]
fn leftover_tmp_files_are_deleted_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let w = write_log(dir.path(), &[(2, 30); 3], true);
    std::fs::write(dir.path().join("0000000000000009.seg.tmp"), b"half a segment").unwrap();
    let (got, report) = recover(dir.path(), opts(real(), SEGMENT_BYTES)).unwrap();
    assert_eq!(got, w.records);
    assert_eq!(report.removed_tmp, vec!["0000000000000009.seg.tmp".to_string()]);
    assert!(!dir.path().join("0000000000000009.seg.tmp").exists());
}

#[test]
fn readers_never_modify_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let w = write_log(dir.path(), &[(2, 30); 3], false);
    let path = seg_path(dir.path(), w.segments - 1);
    let mut b = std::fs::read(&path).unwrap();
    b.extend_from_slice(&[0xab; 100]);
    std::fs::write(&path, &b).unwrap();
    let r = Reader::open(dir.path(), ReadOptions { trust_tail: false, ..ReadOptions::default() })
        .unwrap();
    assert!(r.torn_tail().is_some());
    assert_eq!(read_all(dir.path(), real(), ReadMode::Read).unwrap(), w.records);
    assert_eq!(std::fs::read(&path).unwrap(), b, "the reader changed nothing");
}
