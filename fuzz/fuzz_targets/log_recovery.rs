//! `log_recovery`: damage a real log on the simulated file system, then recover and read it.
//!
//! 1. The first input bytes choose a few batches of records; a `Writer` on a `SimFs` at `/log`
//!    appends them with `Durability::Full` and 4 KiB segments (so several segments), then is
//!    closed cleanly or halted (a crash right after the last acknowledgement).
//! 2. The rest of the input is a list of edits applied with `SimFs::contents`/`set_contents` (and
//!    `Fs::remove_file`): overwrite bytes of a segment with input bytes, flip a bit, zero a range,
//!    truncate, append input bytes, copy a range of genuine bytes elsewhere (so frames get
//!    duplicated or moved), delete a segment, damage or delete CHECKPOINT, and damage, delete or
//!    rewrite TAIL (a well-formed hint pointing anywhere).
//! 3. On the damaged image: `verify`, `Reader::open` (trusting TAIL, and scanning), then
//!    `Writer::open`; if it opens, everything is read back through `writer.reader(Read)`, one
//!    more batch is appended, the writer closed, and the log reopened and read again.
//!
//! Checked: nothing panics, and every read returns sequence numbers 1, 2, ... with exactly the
//! records originally written at those numbers (a prefix of the log), never anything else; after
//! the reopen, the new batch follows that prefix directly. Also: an undamaged image opens with
//! every record; a cleanly closed log whose CHECKPOINT was left alone never opens (or verifies as
//! sound) with fewer records than were written; and a log the writer recovered, appended to and
//! closed verifies as sound.
//!
//! The record oracle is skipped when the damaged image holds a frame that passes its checksum but
//! is not one the writer wrote (the fuzzer can forge a CRC-32 via comparison feedback): the log
//! cannot tell such a frame from a real one, by design.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use databuild_log::format::{
    self, CHECKPOINT_SLOT_BYTES, FRAME_ALIGN, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES, TailHint,
};
use databuild_log::segment::{self, CHECKPOINT_FILE, SEGMENT_SUFFIX, TAIL_FILE};
use databuild_log::sim::SimFs;
use databuild_log::{
    Batch, Durability, Fs, LogId, ReadMode, ReadOptions, Reader, Writer, WriterOptions, verify,
};
use libfuzzer_sys::fuzz_target;

const LOG_ID: LogId = LogId([0x42; 16]);
const MAX_BATCHES: usize = 6;
const MAX_RECORDS_PER_BATCH: usize = 4;
const MAX_EDITS: usize = 12;

/// Reads control values from the front of the input; past the end everything is zero.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// Up to `max` bytes of the input itself (so lengths are bounded by the input).
    fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = max.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

fn options(fs: &SimFs) -> WriterOptions {
    WriterOptions {
        fs: Arc::new(fs.clone()),
        durability: Durability::Full,
        checkpoint_interval: None,
        segment_bytes_target: 4096,
        new_log_id: Some(LOG_ID),
        ..Default::default()
    }
}

fn read_options(fs: &SimFs, trust_tail: bool) -> ReadOptions {
    ReadOptions { mode: ReadMode::Read, fs: Arc::new(fs.clone()), trust_tail }
}

/// A record that names its sequence number, so equal records at different numbers never match.
fn record(seq: u64, len: usize, fill: u8) -> Vec<u8> {
    let mut r = seq.to_le_bytes().to_vec();
    r.resize(8 + len, fill);
    r
}

fn segment_paths(fs: &SimFs, dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<String> = Fs::list(fs, dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.ends_with(SEGMENT_SUFFIX))
        .collect();
    names.sort();
    names.into_iter().map(|n| dir.join(n)).collect()
}

/// The files of the log directory and their contents (to tell whether edits changed anything).
fn snapshot(fs: &SimFs, dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = Fs::list(fs, dir).unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .filter(|n| n != segment::LOCK_FILE)
        .map(|n| {
            let c = fs.contents(&dir.join(&n)).unwrap_or_default();
            (n, c)
        })
        .collect()
}

/// Every valid frame (header and body, without padding) the writer wrote, from the undamaged log.
fn genuine_frames(fs: &SimFs, dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for path in segment_paths(fs, dir) {
        let bytes = fs.contents(&path).unwrap_or_default();
        let Ok(h) = format::SegmentHeader::decode(&bytes) else { continue };
        segment::scan(&bytes, &LOG_ID, SEGMENT_HEADER_BYTES as u64, h.base_seq, |fh, off| {
            let start = off as usize;
            out.push(bytes[start..start + FRAME_HEADER_BYTES + fh.len as usize].to_vec());
        });
    }
    out
}

/// Whether any file of the damaged image holds a checksum-valid frame of this log that the writer
/// never wrote.
fn has_forged_frame(fs: &SimFs, dir: &Path, genuine: &[Vec<u8>]) -> bool {
    let mut names = Fs::list(fs, dir).unwrap_or_default();
    names.sort();
    for name in names {
        let bytes = fs.contents(&dir.join(&name)).unwrap_or_default();
        let mut at = 0usize;
        while at + FRAME_HEADER_BYTES <= bytes.len() {
            if let Ok(h) = format::check_frame_any_seq(&bytes, at, &LOG_ID) {
                let frame = &bytes[at..at + FRAME_HEADER_BYTES + h.len as usize];
                if !genuine.iter().any(|g| g.as_slice() == frame) {
                    return true;
                }
            }
            at += FRAME_ALIGN;
        }
    }
    false
}

/// Applies edits chosen by the input. Returns whether CHECKPOINT was touched.
fn apply_edits(fs: &SimFs, dir: &Path, input: &mut Input<'_>) -> bool {
    let mut checkpoint_touched = false;
    let cp_path = dir.join(CHECKPOINT_FILE);
    let tail_path = dir.join(TAIL_FILE);
    for _ in 0..MAX_EDITS {
        if input.is_empty() {
            break;
        }
        let op = input.byte();
        let segs = segment_paths(fs, dir);
        if segs.is_empty() {
            break;
        }
        let seg = &segs[usize::from(input.byte()) % segs.len()];
        let mut c = fs.contents(seg).unwrap_or_default();
        let len = c.len();
        match op % 11 {
            // Overwrite bytes at an offset with input bytes (may extend the file).
            0 | 1 => {
                let at = usize::from(input.u16()) % (len + 1);
                let n = usize::from(input.byte() % 64) + 1;
                let src = input.bytes(n);
                if c.len() < at + src.len() {
                    c.resize(at + src.len(), 0);
                }
                c[at..at + src.len()].copy_from_slice(src);
                fs.set_contents(seg, c);
            }
            // Flip one bit.
            2 | 3 => {
                if len > 0 {
                    let at = usize::from(input.u16()) % len;
                    c[at] ^= 1 << (input.byte() % 8);
                    fs.set_contents(seg, c);
                }
            }
            // Truncate.
            4 => {
                let to = usize::from(input.u16()) % (len + 1);
                c.truncate(to);
                fs.set_contents(seg, c);
            }
            // Append input bytes, or zeros.
            5 => {
                let n = usize::from(input.byte()) + 1;
                if input.byte() & 1 == 0 {
                    c.extend_from_slice(input.bytes(n));
                } else {
                    c.resize(len + n * 8, 0);
                }
                fs.set_contents(seg, c);
            }
            // Zero a range.
            6 => {
                let at = usize::from(input.u16()) % (len + 1);
                let n = (usize::from(input.u16()) % 2048).min(len - at);
                c[at..at + n].fill(0);
                fs.set_contents(seg, c);
            }
            // Copy a range of genuine bytes (from this or another segment) to an offset.
            7 => {
                let from_seg = &segs[usize::from(input.byte()) % segs.len()];
                let src_all = fs.contents(from_seg).unwrap_or_default();
                let from = usize::from(input.u16()) % (src_all.len() + 1);
                let n = (usize::from(input.u16()) % 4096).min(src_all.len() - from);
                let to = (usize::from(input.u16()) % (len + 1)) & !(FRAME_ALIGN - 1);
                if c.len() < to + n {
                    c.resize(to + n, 0);
                }
                c[to..to + n].copy_from_slice(&src_all[from..from + n]);
                fs.set_contents(seg, c);
            }
            // Delete the segment file.
            8 => {
                let _ = Fs::remove_file(fs, seg);
            }
            // CHECKPOINT: delete, damage a byte, or truncate.
            9 => {
                checkpoint_touched = true;
                match input.byte() % 3 {
                    0 => {
                        let _ = Fs::remove_file(fs, &cp_path);
                    }
                    1 => {
                        let mut cp = fs.contents(&cp_path).unwrap_or_default();
                        if !cp.is_empty() {
                            let at = usize::from(input.u16()) % cp.len();
                            cp[at] ^= input.byte() | 1;
                            fs.set_contents(&cp_path, cp);
                        }
                    }
                    _ => {
                        let mut cp = fs.contents(&cp_path).unwrap_or_default();
                        cp.truncate(usize::from(input.u16()) % (2 * CHECKPOINT_SLOT_BYTES + 1));
                        fs.set_contents(&cp_path, cp);
                    }
                }
            }
            // TAIL: delete, damage, or a well-formed hint with input-chosen fields.
            _ => match input.byte() % 3 {
                0 => {
                    let _ = Fs::remove_file(fs, &tail_path);
                }
                1 => {
                    let mut t = fs.contents(&tail_path).unwrap_or_default();
                    if !t.is_empty() {
                        let at = usize::from(input.u16()) % t.len();
                        t[at] ^= input.byte() | 1;
                        fs.set_contents(&tail_path, t);
                    }
                }
                _ => {
                    let hint = TailHint {
                        log_id: LOG_ID,
                        segment_id: u64::from(input.byte() % 8),
                        offset: u64::from(input.u16()),
                        next_seq: u64::from(input.byte()),
                    };
                    fs.set_contents(&tail_path, hint.encode().to_vec());
                }
            },
        }
    }
    checkpoint_touched
}

/// Asserts that `got` is records 1, 2, ... of `want`, in order, byte for byte.
fn assert_prefix(what: &str, got: &[(u64, Vec<u8>)], want: &[Vec<u8>]) {
    assert!(
        got.len() <= want.len(),
        "{what}: {} records read, only {} were written",
        got.len(),
        want.len()
    );
    for (i, (seq, rec)) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "{what}: record {i} has seq {seq}");
        assert!(rec == &want[i], "{what}: seq {seq} differs from what was written");
    }
}

/// Reads every record from seq 1 until the end or the first error.
fn read_all(reader: &Reader) -> (Vec<(u64, Vec<u8>)>, bool) {
    let mut got = Vec::new();
    let res = reader.for_each_from(1, |seq, rec| {
        got.push((seq, rec.to_vec()));
        Ok::<(), databuild_log::ReadError>(())
    });
    (got, res.is_ok())
}

fn run(data: &[u8]) {
    let mut input = Input { data };
    let ctl = input.byte();
    let close_cleanly = ctl & 1 == 0;

    // 1. A real log.
    let fs = SimFs::new();
    let dir = Path::new("/log");
    let (writer, _) = Writer::open(dir, options(&fs)).expect("creating a log on SimFs");
    let mut written: Vec<Vec<u8>> = Vec::new();
    let batches = 1 + usize::from(input.byte()) % MAX_BATCHES;
    for _ in 0..batches {
        let n = 1 + usize::from(input.byte()) % MAX_RECORDS_PER_BATCH;
        let mut batch = Batch::new();
        for _ in 0..n {
            let len = usize::from(input.byte()) * 4;
            let fill = input.byte();
            let r = record(written.len() as u64 + 1, len, fill);
            batch.push(&r);
            written.push(r);
        }
        let range = writer.append(batch).expect("append on SimFs");
        assert_eq!(range.end, written.len() as u64 + 1);
    }
    if close_cleanly {
        writer.close().expect("close on SimFs");
    } else {
        writer.halt();
    }
    let genuine = genuine_frames(&fs, dir);
    let before = snapshot(&fs, dir);

    // 2. Damage.
    let checkpoint_touched = apply_edits(&fs, dir, &mut input);
    let untouched = snapshot(&fs, dir) == before;
    let oracle = !has_forged_frame(&fs, dir, &genuine);
    // A cleanly closed log with its CHECKPOINT intact has proof that every record is durable.
    let proven_full = close_cleanly && !checkpoint_touched;

    // 3a. verify and Reader::open on the damaged image, before any writer touches it.
    let mut visited = Vec::new();
    if let Ok(report) = verify(dir, read_options(&fs, true), |seq, rec| visited.push((seq, rec.to_vec())))
    {
        if oracle {
            assert_prefix("verify", &visited, &written);
            if report.is_sound() && proven_full {
                assert_eq!(
                    report.next_seq,
                    written.len() as u64 + 1,
                    "verify calls a log sound that lost acknowledged records: {report:?}"
                );
            }
        }
        if untouched {
            assert!(report.is_sound(), "undamaged log does not verify: {report:?}");
            assert_eq!(visited.len(), written.len());
        }
    } else {
        assert!(!untouched, "verify fails on an undamaged log");
    }
    for trust_tail in [true, false] {
        match Reader::open(dir, read_options(&fs, trust_tail)) {
            Ok(reader) => {
                let (got, ok) = read_all(&reader);
                if oracle {
                    assert_prefix("Reader::open", &got, &written);
                }
                if untouched {
                    assert!(ok && got.len() == written.len(), "undamaged log reads short");
                }
            }
            Err(e) => assert!(!untouched, "Reader::open fails on an undamaged log: {e}"),
        }
    }

    // 3b. Recovery.
    let (writer, report) = match Writer::open(dir, options(&fs)) {
        Ok(w) => w,
        Err(e) => {
            assert!(!untouched, "Writer::open fails on an undamaged log: {e}");
            return;
        }
    };
    let kept = report.next_seq - 1;
    if oracle {
        assert!(kept <= written.len() as u64, "recovered {kept} records of {}", written.len());
        if proven_full {
            assert_eq!(kept, written.len() as u64, "recovery dropped acknowledged records");
        }
    }
    if untouched {
        assert_eq!(kept, written.len() as u64, "recovery of an undamaged log dropped records");
    }
    if let Ok(reader) = writer.reader(ReadMode::Read) {
        let (got, ok) = read_all(&reader);
        if oracle {
            assert_prefix("writer.reader", &got, &written);
            assert!(ok, "the writer opened a log its own reader cannot read");
            assert_eq!(got.len() as u64, kept, "writer.reader reads a different length");
        }
    }

    // 3c. Append after recovery, close, reopen, read again.
    let mut expected: Vec<Vec<u8>> = written[..(kept as usize).min(written.len())].to_vec();
    let mut batch = Batch::new();
    for _ in 0..2 {
        let r = record(expected.len() as u64 + 1, 16, 0xee);
        batch.push(&r);
        expected.push(r);
    }
    if writer.append(batch).is_err() {
        return;
    }
    if writer.close().is_err() {
        return;
    }
    if !oracle {
        return;
    }
    let mut visited = Vec::new();
    let report = verify(dir, read_options(&fs, true), |seq, rec| visited.push((seq, rec.to_vec())))
        .expect("verify after a clean close");
    assert!(report.is_sound(), "a recovered, appended and closed log does not verify: {report:?}");
    assert_prefix("verify after reopen", &visited, &expected);
    assert_eq!(visited.len(), expected.len());
    let (writer, report) = Writer::open(dir, options(&fs)).expect("reopen after a clean close");
    assert_eq!(report.next_seq, expected.len() as u64 + 1);
    let reader = writer.reader(ReadMode::Read).expect("reader after reopen");
    let (got, ok) = read_all(&reader);
    assert!(ok);
    assert_prefix("reopened writer.reader", &got, &expected);
    assert_eq!(got.len(), expected.len());
    drop(reader);
    writer.close().expect("close");
}

fuzz_target!(|data: &[u8]| run(data));
