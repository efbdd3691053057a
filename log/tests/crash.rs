//! Protects durability across crashes: with the simulator recording every write and fsync, the
//! disk state after a crash at any point (synced data, plus any subset of later writes, torn at
//! 512-byte sectors) always opens, recovers a prefix of what was written, and keeps every batch
//! that was acknowledged before the crash. Segment rolling, CHECKPOINT slots and repeated crashes
//! are covered. Small cases are exhaustive over every operation; larger ones sample sync points.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use databuild_log::sim::{CrashMode, SimFs, SimRng};
use databuild_log::{Batch, ReadOptions, Writer, verify};

const DIR: &str = "/db/log";

/// A workload's history: every record written, and for each batch the record count acknowledged
/// once the simulator had recorded `ops` operations.
struct History {
    records: Vec<Vec<u8>>,
    acked: Vec<(usize, usize)>,
}

impl History {
    fn acked_by(&self, ops: usize) -> usize {
        self.acked.iter().filter(|(at, _)| *at <= ops).map(|(_, n)| *n).max().unwrap_or(0)
    }
}

fn run_workload(
    fs: &SimFs,
    sizes: &[usize],
    segment_bytes: u64,
    prior: Vec<Vec<u8>>,
    close: bool,
) -> History {
    let (w, report) =
        Writer::open(Path::new(DIR), opts(Arc::new(fs.clone()), segment_bytes)).unwrap();
    assert_eq!(report.next_seq, prior.len() as u64 + 1);
    let mut h = History { acked: vec![(fs.op_count(), prior.len())], records: prior };
    for &n in sizes {
        let mut b = Batch::new();
        let first = w.next_seq();
        for i in 0..n {
            let r = record(first + i as u64, 40 + (first as usize * 37) % 300);
            b.push(&r);
            h.records.push(r);
        }
        w.append(b).unwrap();
        h.acked.push((fs.op_count(), h.records.len()));
    }
    if close {
        w.close().unwrap()
    } else {
        w.halt()
    }
    h
}

/// Opens the image, checks the recovery invariants, and returns what was recovered.
fn check_image(img: &SimFs, h: &History, at: usize, what: &str) -> Vec<Vec<u8>> {
    let fs: Arc<dyn databuild_log::Fs> = Arc::new(img.clone());
    let rep =
        verify(Path::new(DIR), ReadOptions { fs: fs.clone(), ..ReadOptions::default() }, |_, _| {})
            .unwrap();
    assert!(rep.is_sound(), "{what}: verify finds no damage after a crash: {:?}", rep.corruption);
    let (got, _) = match recover(Path::new(DIR), opts(fs.clone(), 1 << 30)) {
        Ok(x) => x,
        Err(e) => panic!("{what}: a crash image must open: {e}"),
    };
    assert!(got.len() <= h.records.len(), "{what}: nothing invented");
    assert_eq!(got[..], h.records[..got.len()], "{what}: a prefix of what was written");
    let acked = h.acked_by(at);
    assert!(got.len() >= acked, "{what}: {} recovered but {acked} were acknowledged", got.len());
    let (again, report) = recover(Path::new(DIR), opts(fs, 1 << 30)).unwrap();
    assert_eq!(again, got, "{what}: a second open is identical");
    assert!(report.torn_tail.is_none(), "{what}: a second open is clean");
    got
}

#[test]
fn every_crash_point_of_a_small_log_recovers_every_acknowledged_batch() {
    for close in [false, true] {
        let fs = SimFs::new();
        // Tiny segments: the six batches roll over several segments.
        let h = run_workload(&fs, &[1, 3, 2, 1, 4, 2], 400, Vec::new(), close);
        let ops = fs.op_count();
        let mut images = 0;
        for at in 0..=ops {
            for mode in [CrashMode::SyncedOnly, CrashMode::Everything] {
                check_image(
                    &fs.crash_image(at, mode),
                    &h,
                    at,
                    &format!("op {at} {mode:?} close={close}"),
                );
                images += 1;
            }
            for seed in 1..=12u64 {
                let mode = CrashMode::Random(seed * 7919 + at as u64);
                check_image(
                    &fs.crash_image(at, mode),
                    &h,
                    at,
                    &format!("op {at} {mode:?} close={close}"),
                );
                images += 1;
            }
        }
        assert!(images > 500, "exhaustive over {ops} operations: {images} images");
    }
}

#[test]
fn sampled_crash_points_of_a_larger_log_with_rolling() {
    let fs = SimFs::new();
    let mut rng = SimRng::new(42);
    let sizes: Vec<usize> = (0..150).map(|_| 1 + rng.below(6) as usize).collect();
    let h = run_workload(&fs, &sizes, 4096, Vec::new(), false);
    let points = fs.sync_points();
    assert!(points.len() > 150);
    for (i, &at) in points.iter().enumerate() {
        let mode =
            if i % 3 == 0 { CrashMode::SyncedOnly } else { CrashMode::Random(rng.next_u64()) };
        check_image(&fs.crash_image(at, mode), &h, at, &format!("sync point {at} {mode:?}"));
    }
}

#[test]
fn repeated_crashes_keep_a_consistent_history() {
    let mut rng = SimRng::new(7);
    for round in 0..40 {
        let fs = SimFs::new();
        let h1 = run_workload(&fs, &[2, 1, 3, 1], 600, Vec::new(), false);
        let at1 = rng.below(fs.op_count() as u64 + 1) as usize;
        let img = fs.crash_image(at1, CrashMode::Random(rng.next_u64()));
        let kept = check_image(&img, &h1, at1, &format!("round {round}: first crash at {at1}"));
        // Recover, write more, crash again.
        let h2 = run_workload(&img, &[1, 2, 1], 600, kept.clone(), false);
        let at2 = rng.below(img.op_count() as u64 + 1) as usize;
        let img2 = img.crash_image(at2, CrashMode::Random(rng.next_u64()));

        let got = check_image(&img2, &h2, at2, &format!("round {round}: second crash at {at2}"));
        assert!(
            got.len() >= kept.len(),
            "round {round}: what the first recovery kept was made durable"
        );
    }
}

#[test]
fn crashing_during_checkpoint_writes_leaves_a_usable_slot() {
    // Clean closes write CHECKPOINT; crash at each operation of a close-heavy workload.
    let fs = SimFs::new();
    let mut h = run_workload(&fs, &[1, 1], 1 << 20, Vec::new(), true);
    for _ in 0..3 {
        let prior = h.records.clone();
        let h2 = run_workload(&fs, &[1], 1 << 20, prior, true);
        h = History { records: h2.records, acked: [h.acked, h2.acked].concat() };
    }
    for at in 0..=fs.op_count() {
        for seed in 0..4u64 {
            check_image(
                &fs.crash_image(at, CrashMode::Random(seed + 1)),
                &h,
                at,
                &format!("op {at} seed {seed}"),
            );
        }
    }
}
