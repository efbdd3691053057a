//! The log's ordinary behaviour: round trips, segment rolling, reading from any seq, following
//! the tail, the single-writer lock, poisoning after an I/O error, verify and repair.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use databuild_log::sim::{FaultOp, SimFs};
use databuild_log::{
    AppendError, Batch, CorruptionKind, OpenError, ReadOptions, Reader, TailStatus, Writer, repair,
    verify,
};

#[test]
fn records_round_trip_through_both_read_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (w, report) = Writer::open(dir.path(), opts(real(), 1 << 20)).unwrap();
    assert!(report.created);
    let written = append_batches(&w, &[1, 3, 10, 1, 7], 50);
    w.close().unwrap();
    for mode in MODES {
        assert_eq!(read_all(dir.path(), real(), mode).unwrap(), written);
    }
}

#[test]
fn segments_roll_and_seqs_stay_gapless_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = Writer::open(dir.path(), opts(real(), 4096)).unwrap();
    let written = append_batches(&w, &[5; 40], 100);
    w.close().unwrap();
    let segs = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".seg"))
        .count();
    assert!(segs > 5, "expected several segments, got {segs}");
    for mode in MODES {
        assert_eq!(read_all(dir.path(), real(), mode).unwrap(), written);
    }
    // Reopening continues the sequence.
    let (w, report) = Writer::open(dir.path(), opts(real(), 4096)).unwrap();
    assert_eq!(report.next_seq, written.len() as u64 + 1);
    assert!(report.torn_tail.is_none());
    let more = append_batches(&w, &[2], 10);
    w.close().unwrap();
    let all = read_all(dir.path(), real(), ReadMode::Mmap).unwrap();
    assert_eq!(all.len(), written.len() + more.len());
}

use databuild_log::ReadMode;

#[test]
fn a_frame_larger_than_the_segment_target_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = Writer::open(dir.path(), opts(real(), 4096)).unwrap();
    let mut written = append_batches(&w, &[1], 10);
    written.extend(append_batches(&w, &[3], 5000));
    written.extend(append_batches(&w, &[1], 10));
    w.close().unwrap();
    for mode in MODES {
        assert_eq!(read_all(dir.path(), real(), mode).unwrap(), written);
    }
}

#[test]
fn reading_from_any_seq_returns_exactly_the_suffix() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = Writer::open(dir.path(), opts(real(), 8192)).unwrap();
    let written =
        append_batches(&w, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], 80);
    w.close().unwrap();
    for mode in MODES {
        let r = Reader::open(dir.path(), ReadOptions { mode, ..ReadOptions::default() }).unwrap();
        for from in 1..=written.len() as u64 + 2 {
            let mut got = Vec::new();
            r.for_each_from(from, |seq, b| -> Result<(), databuild_log::ReadError> {
                got.push((seq, b.to_vec()));
                Ok(())
            })
            .unwrap();
            let expect: Vec<_> = written
                .iter()
                .enumerate()
                .map(|(i, b)| (i as u64 + 1, b.clone()))
                .filter(|(s, _)| *s >= from)
                .collect();
            assert_eq!(got, expect, "from seq {from}");
        }
    }
}

#[test]
fn readers_in_other_handles_see_only_durable_batches_and_follow_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = Writer::open(dir.path(), opts(real(), 4096)).unwrap();
    append_batches(&w, &[2], 20);
    for mode in MODES {
        // A reader that is not the writer's: it goes by TAIL, as another process would.
        let mut r =
            Reader::open(dir.path(), ReadOptions { mode, ..ReadOptions::default() }).unwrap();
        let start = r.next_seq();
        append_batches(&w, &[3; 30], 200);
        assert_eq!(r.next_seq(), start, "a reader's view moves only on refresh");
        assert!(r.refresh().unwrap());
        assert_eq!(r.next_seq(), w.next_seq());
        let n = read_all(dir.path(), real(), mode).unwrap().len() as u64;
        assert_eq!(n + 1, r.next_seq());
    }
    // The writer's own reader follows its durable end.
    let mut r = w.reader(ReadMode::Mmap).unwrap();
    let mut rx = w.subscribe();
    let before = r.next_seq();
    append_batches(&w, &[4], 10);
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), before + 4);
    r.refresh().unwrap();
    assert_eq!(r.next_seq(), before + 4);
    w.close().unwrap();
}

#[test]
fn a_second_writer_gets_a_typed_error_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = Writer::open(dir.path(), opts(real(), 1 << 20)).unwrap();
    match Writer::open(dir.path(), opts(real(), 1 << 20)) {
        Err(OpenError::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
        other => panic!("expected Locked, got {other:?}"),
    }
    // Readers are never blocked by the writer.
    assert!(read_all(dir.path(), real(), ReadMode::Mmap).is_ok());
    w.close().unwrap();
    assert!(Writer::open(dir.path(), opts(real(), 1 << 20)).is_ok());
}

#[test]
fn an_fsync_error_poisons_the_writer_for_good() {
    let fs = SimFs::new();
    let dir = std::path::Path::new("/log");
    let (w, _) = Writer::open(dir, opts(Arc::new(fs.clone()), 1 << 20)).unwrap();
    append_batches(&w, &[2], 10);
    fs.fail_nth(FaultOp::SyncData, 0);
    let mut b = Batch::new();
    b.push(b"lost");
    assert!(matches!(w.append(b), Err(AppendError::Poisoned(_))));
    // The fault fired once; a retried fsync would now succeed, but the writer never retries.
    let mut b = Batch::new();
    b.push(b"after");
    assert!(matches!(w.submit(b), Err(AppendError::Poisoned(_))));
    assert!(w.close().is_err());
    // The next open recovers what was acknowledged; the failed batch may or may not be there,
    // but nothing after it is.
    let (got, _) = recover(dir, opts(Arc::new(fs), 1 << 20)).unwrap();
    assert!(got.len() == 2 || got.len() == 3, "got {} records", got.len());
    assert!(!got.iter().any(|r| r == b"after"));
}

#[test]
fn a_write_error_fails_every_pending_append() {
    let fs = SimFs::new();
    let dir = std::path::Path::new("/log");
    let (w, _) = Writer::open(dir, opts(Arc::new(fs.clone()), 1 << 20)).unwrap();
    fs.fail_nth(FaultOp::Write, 0);
    let tickets: Vec<_> = (0..5)
        .map(|i| {
            let mut b = Batch::new();
            b.push(format!("r{i}").as_bytes());
            w.submit(b)
        })
        .collect();
    for t in tickets {
        match t {
            Ok(t) => assert!(t.wait().is_err()),
            Err(e) => assert!(matches!(e, AppendError::Poisoned(_))),
        }
    }
}

#[test]
fn empty_and_oversized_batches_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = Writer::open(dir.path(), opts(real(), 1 << 20)).unwrap();
    assert!(matches!(w.submit(Batch::new()), Err(AppendError::EmptyBatch)));
    assert_eq!(w.next_seq(), 1);
    w.close().unwrap();
}

#[test]
fn verify_reports_a_sound_log_and_names_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = Writer::open(dir.path(), opts(real(), 4096)).unwrap();
    let written = append_batches(&w, &[3; 20], 100);
    w.close().unwrap();
    for mode in MODES {
        let mut seen = 0u64;
        let rep =
            verify(dir.path(), ReadOptions { mode, ..ReadOptions::default() }, |_, _| seen += 1)
                .unwrap();
        assert!(rep.is_sound());
        assert_eq!(rep.records, written.len() as u64);
        assert_eq!(seen, written.len() as u64);
        assert_eq!(rep.tail, TailStatus::Clean);
    }
    // Flip a byte inside the second segment's first frame body.
    let seg = dir.path().join(format!("{:016x}.seg", 1));
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[64 + 40] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let rep = verify(dir.path(), ReadOptions::default(), |_, _| {}).unwrap();
    let c = rep.corruption.expect("damage is reported");
    assert_eq!((c.segment, c.offset, c.kind.clone()), (1, 64, CorruptionKind::Checksum));
    // The writer refuses with the same location, and changes nothing.
    match Writer::open(dir.path(), opts(real(), 4096)) {
        Err(OpenError::Corruption(c)) => {
            assert_eq!((c.segment, c.offset, c.kind), (1, 64, CorruptionKind::Checksum));
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // A reader fails at the same place: when it opens (no writer is alive, so it scans to the
    // end, as the next writer would), or at the latest when it reads there.
    let msg = match Reader::open(dir.path(), ReadOptions::default()) {
        Err(e) => e.to_string(),
        Ok(r) => r
            .for_each_from(1, |_, _| -> Result<(), databuild_log::ReadError> { Ok(()) })
            .unwrap_err()
            .to_string(),
    };
    assert!(msg.contains("segment 1 is damaged at byte 64"), "{msg}");
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "nothing was changed");
}

#[test]
fn repair_keeps_the_valid_prefix_and_moves_the_rest_aside() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = Writer::open(dir.path(), opts(real(), 4096)).unwrap();
    let written = append_batches(&w, &[3; 20], 100);
    w.close().unwrap();
    let seg = dir.path().join(format!("{:016x}.seg", 1));
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[64 + 40] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let base_seq_1 = {
        let r = verify(dir.path(), ReadOptions::default(), |_, _| {}).unwrap();
        r.segments[1].base_seq
    };
    let rep = repair(dir.path(), &opts(real(), 4096)).unwrap();
    let (cut, torn) = rep.cut.clone().expect("a cut");
    assert!(!torn);
    assert_eq!((cut.segment, cut.offset, cut.seq), (1, 64, base_seq_1));
    assert_eq!(rep.next_seq, base_seq_1);
    // Every seq from the cut to the last valid frame's end is dropped, the damaged frame's too.
    assert_eq!(rep.events_dropped, written.len() as u64 + 1 - base_seq_1);
    assert!(rep.backups.iter().all(|b| b.exists()));
    let kept = read_all(dir.path(), real(), ReadMode::Mmap).unwrap();
    assert_eq!(kept, written[..base_seq_1 as usize - 1].to_vec());
    let rep = verify(dir.path(), ReadOptions::default(), |_, _| {}).unwrap();
    assert!(rep.is_sound());
    // The log is writable again, continuing at the cut.
    let (w, report) = Writer::open(dir.path(), opts(real(), 4096)).unwrap();
    assert_eq!(report.next_seq, base_seq_1);
    append_batches(&w, &[1], 10);
    w.close().unwrap();
}

#[test]
fn periodic_mode_acknowledges_before_fsync_and_syncs_on_its_timer() {
    let fs = SimFs::new();
    let dir = std::path::Path::new("/log");
    let mut o = opts(Arc::new(fs.clone()), 1 << 20);
    o.durability = databuild_log::Durability::Periodic(Duration::from_millis(20));
    let (w, _) = Writer::open(dir, o).unwrap();
    let syncs_before = fs.sync_points().len();
    append_batches(&w, &[1; 10], 10);
    std::thread::sleep(Duration::from_millis(100));
    let syncs_after = fs.sync_points().len();
    assert!(syncs_after > syncs_before, "the timer fsynced");
    assert!(syncs_after - syncs_before < 10, "fewer fsyncs than appends");
    w.close().unwrap();
}

#[test]
fn with_no_writer_alive_a_reader_sees_past_a_lagging_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = Writer::open(dir.path(), opts(real(), 1 << 20)).unwrap();
    let written = append_batches(&w, &[2], 10);
    let old_tail = std::fs::read(dir.path().join("TAIL")).unwrap();
    let more = append_batches(&w, &[3], 10);
    // While the writer lives, readers stop at the TAIL it published.
    std::fs::write(dir.path().join("TAIL"), &old_tail).unwrap();
    let r = Reader::open(dir.path(), ReadOptions::default()).unwrap();
    assert_eq!(r.next_seq(), written.len() as u64 + 1, "a live writer's TAIL bounds readers");
    // The writer dies between an fsync and its TAIL write: TAIL lags the durable end.
    w.halt();
    std::fs::write(dir.path().join("TAIL"), &old_tail).unwrap();
    let all = read_all(dir.path(), real(), ReadMode::Mmap).unwrap();
    assert_eq!(
        all.len(),
        written.len() + more.len(),
        "with no writer, readers scan to the durable end"
    );
}

#[test]
fn verify_does_not_call_a_log_complete_when_its_newest_segment_and_checkpoint_are_gone() {
    use databuild_log::Completeness;
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = Writer::open(dir.path(), opts(real(), 4096)).unwrap();
    let written = append_batches(&w, &[3; 20], 100);
    w.close().unwrap();
    let check = || verify(dir.path(), ReadOptions::default(), |_, _| {}).unwrap();
    let rep = check();
    assert!(rep.is_sound());
    assert_eq!(rep.completeness, Completeness::Checked);
    assert_eq!(rep.tail_hint.map(|t| t.next_seq), Some(written.len() as u64 + 1));
    let last = rep.segments.last().unwrap().clone();
    assert!(last.id > 0 && last.records > 0, "the newest segment holds acknowledged records");
    std::fs::remove_file(dir.path().join(format!("{:016x}.seg", last.id))).unwrap();
    std::fs::remove_file(dir.path().join("CHECKPOINT")).unwrap();
    // Every remaining frame is valid, but TAIL says the log reached further.
    let rep = check();
    assert!(rep.is_sound(), "the writer's judgement: nothing it can prove");
    assert_eq!(rep.next_seq, last.base_seq);
    match rep.completeness {
        Completeness::TailBeyond(t) => {
            assert_eq!((t.next_seq, t.segment_id), (written.len() as u64 + 1, last.id))
        }
        other => panic!("expected TAIL evidence, got {other:?}"),
    }
    // Without TAIL either, nothing bounds the end: unproven, never "complete".
    std::fs::remove_file(dir.path().join("TAIL")).unwrap();
    let rep = check();
    assert_eq!(rep.completeness, Completeness::Unproven);
    assert_eq!(rep.tail_hint, None);
}
