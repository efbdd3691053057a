//! Replay benchmarks: how fast the event log can be read back, on one core, warm cache.
//!
//! Events are realistic `BuildEvent`s of about 200 bytes (a JobEvent with a job label, UUIDv7
//! ids and two partition refs), one per frame (the worst case for framing cost), three per frame
//! (the engine's typical commit: a job event and its partition events) and eight. Figures:
//! - frame + CRC: walk and check every frame (length, checksum, continuity, padding);
//! - + prost decode: also decode every record into a `BuildEvent` (fresh, and into a reused one).
//!
//! Run: `cargo bench --bench replay` (`BENCH_QUICK=1` for a short run).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use databuild::proto::{
    BuildEvent, JobEvent, JobLabel, JobStatus, PartitionRef, build_event::EventType,
};
use databuild_log::{Batch, Durability, ReadMode, ReadOptions, Reader, Writer, WriterOptions};
use prost::Message;

fn event(i: u64) -> BuildEvent {
    BuildEvent {
        event_id: format!("0192f3a4-5b6c-7d8e-9f00-{i:012x}"),
        timestamp: 1_764_547_200_000_000_000 + i as i64,
        build_request_id: "0192f3a4-0000-7000-8000-00000000abcd".to_string(),
        event_type: Some(EventType::JobEvent(JobEvent {
            job_run_id: format!("0192f3a4-5b6c-7d8e-a000-{i:012x}"),
            job_label: Some(JobLabel { label: "aggregate_color_votes".to_string() }),
            target_partitions: vec![
                PartitionRef {
                    str: format!("daily_votes/2025-{:02}-{:02}", 1 + i % 12, 1 + i % 28),
                },
                PartitionRef {
                    str: format!("votes_1w/2025-{:02}-{:02}/red", 1 + i % 12, 1 + i % 28),
                },
            ],
            status: JobStatus::JobRunning as i32,
            message: String::new(),
            config: None,
            manifests: Vec::new(),
            ..JobEvent::default()
        })),
    }
}

fn build(dir: &PathBuf, events: u64, per_frame: u64) -> usize {
    let _ = std::fs::remove_dir_all(dir);
    let o = WriterOptions {
        durability: Durability::None,
        checkpoint_interval: None,
        ..WriterOptions::default()
    };
    let (w, _) = Writer::open(dir, o).unwrap();
    let mut bytes = 0;
    let mut tickets = Vec::new();
    let mut i = 0;
    while i < events {
        let mut b = Batch::new();
        for _ in 0..per_frame.min(events - i) {
            let e = event(i).encode_to_vec();
            bytes += e.len();
            b.push(&e);
            i += 1;
        }
        tickets.push(w.submit(b).unwrap());
        if tickets.len() > 1024 {
            for t in tickets.drain(..) {
                t.wait().unwrap();
            }
        }
    }
    for t in tickets {
        t.wait().unwrap();
    }
    w.close().unwrap();
    bytes / events as usize
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let quick = smoke || std::env::var_os("BENCH_QUICK").is_some();
    let events: u64 = if quick { 50_000 } else { 2_000_000 };
    let reps = if quick { 1 } else { 5 };
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("databuild-replay-bench");
    for per_frame in [1u64, 3, 8] {
        let dir = base.join(format!("pf{per_frame}"));
        let avg = build(&dir, events, per_frame);
        let r = Reader::open(&dir, ReadOptions { mode: ReadMode::Mmap, ..ReadOptions::default() })
            .unwrap();
        // Warm the page cache and the reader's maps.
        r.check_all().unwrap();

        let scan = median(
            (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    let (_, records) = r.check_all().unwrap();
                    assert_eq!(records, events);
                    records as f64 / t.elapsed().as_secs_f64()
                })
                .collect(),
        );
        let decode = median(
            (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    let mut n = 0u64;
                    r.for_each_from(1, |_, bytes| -> Result<(), databuild_log::ReadError> {
                        let ev = BuildEvent::decode(bytes).expect("decodes");
                        black_box(&ev);
                        n += 1;
                        Ok(())
                    })
                    .unwrap();
                    assert_eq!(n, events);
                    n as f64 / t.elapsed().as_secs_f64()
                })
                .collect(),
        );
        let reuse = median(
            (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    let mut ev = BuildEvent::default();
                    let mut n = 0u64;
                    r.for_each_from(1, |_, bytes| -> Result<(), databuild_log::ReadError> {
                        ev.clear();
                        ev.merge(bytes).expect("decodes");
                        black_box(&ev);
                        n += 1;
                        Ok(())
                    })
                    .unwrap();
                    n as f64 / t.elapsed().as_secs_f64()
                })
                .collect(),
        );
        println!(
            "replay {events} events of {avg} B, {per_frame}/frame: frame+CRC {:>6.1} M rec/s (target >= 30) | +decode {:>5.2} M ev/s (target >= 4) | +decode reusing {:>5.2} M ev/s",
            scan / 1e6,
            decode / 1e6,
            reuse / 1e6
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
