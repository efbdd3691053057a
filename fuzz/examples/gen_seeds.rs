//! Writes a small seed corpus for the fuzz targets into `corpus/<target>/` (relative to the
//! current directory, normally `fuzz/`), using the crates' own encoders, so the seeds follow the
//! on-disk layout of the checked-out code:
//!
//! ```text
//! cd fuzz && cargo +nightly run --example gen_seeds
//! ```
//!
//! `frame_scan` gets real segment files (a writer on `SimFs` produced them) and a few damaged
//! copies; `event_decode` gets encoded `BuildEvent`s and their JSON; `log_recovery` gets a few
//! byte strings (its input is control bytes, so any bytes make a valid input).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use databuild::proto::{self, BuildEvent, build_event::EventType};
use databuild_log::segment::SEGMENT_SUFFIX;
use databuild_log::sim::SimFs;
use databuild_log::{Batch, Durability, Fs, LogId, Writer, WriterOptions};
use prost::Message;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("create corpus directory");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn segments(records: &[Vec<u8>], per_batch: usize) -> Vec<Vec<u8>> {
    let fs = SimFs::new();
    let dir = Path::new("/log");
    let opts = WriterOptions {
        fs: Arc::new(fs.clone()),
        durability: Durability::Full,
        checkpoint_interval: None,
        segment_bytes_target: 4096,
        new_log_id: Some(LogId([0x42; 16])),
        ..Default::default()
    };
    let (w, _) = Writer::open(dir, opts).expect("open");
    for chunk in records.chunks(per_batch) {
        let mut b = Batch::new();
        for r in chunk {
            b.push(r);
        }
        w.append(b).expect("append");
    }
    w.close().expect("close");
    let mut names: Vec<String> = Fs::list(&fs, dir)
        .expect("list")
        .into_iter()
        .filter(|n| n.ends_with(SEGMENT_SUFFIX))
        .collect();
    names.sort();
    names.iter().filter_map(|n| fs.contents(&dir.join(n))).collect()
}

fn events() -> Vec<BuildEvent> {
    let pref = |s: &str| proto::PartitionRef { str: s.to_string() };
    let config = proto::JobConfig {
        outputs: vec![pref("out/a")],
        inputs: vec![proto::DataDep { dep_type: 1, partition_ref: Some(pref("in/b")) }],
        args: vec!["--date".into(), "2024-01-01".into()],
        env: [("K".to_string(), "V".to_string())].into_iter().collect(),
    };
    let manifest = proto::PartitionManifest {
        outputs: vec![pref("out/a")],
        inputs: vec![proto::PartitionManifest { start_time: 1, ..Default::default() }],
        start_time: 1_700_000_000,
        end_time: 1_700_000_100,
        task: Some(proto::Task {
            job: Some(proto::JobLabel { label: "//jobs:a".into() }),
            config: Some(config.clone()),
        }),
    };
    let base = |event_type| BuildEvent {
        event_id: "0190a0b0-0000-7000-8000-000000000001".into(),
        timestamp: 1_700_000_000_000_000_000,
        build_request_id: "req-1".into(),
        event_type,
    };
    vec![
        base(None),
        base(Some(EventType::BuildRequestEvent(proto::BuildRequestEvent {
            status: 7,
            requested_partitions: vec![pref("out/a"), pref("out/b")],
            message: "analysis done".into(),
        }))),
        base(Some(EventType::PartitionEvent(proto::PartitionEvent {
            partition_ref: Some(pref("out/a")),
            status: 4,
            message: "built".into(),
            job_run_id: "run-1".into(),
        }))),
        base(Some(EventType::JobEvent(proto::JobEvent {
            job_run_id: "run-1".into(),
            job_label: Some(proto::JobLabel { label: "//jobs:a".into() }),
            target_partitions: vec![pref("out/a")],
            status: 3,
            message: "ok".into(),
            config: Some(config.clone()),
            manifests: vec![manifest],
        }))),
        base(Some(EventType::DelegationEvent(proto::DelegationEvent {
            partition_ref: Some(pref("out/c")),
            delegated_to_build_request_id: "req-0".into(),
            message: "already building".into(),
        }))),
        base(Some(EventType::JobGraphEvent(proto::JobGraphEvent {
            job_graph: Some(proto::JobGraph {
                label: Some(proto::GraphLabel { label: "//graph".into() }),
                outputs: vec![pref("out/a")],
                nodes: vec![proto::Task {
                    job: Some(proto::JobLabel { label: "//jobs:a".into() }),
                    config: Some(config),
                }],
            }),
            message: String::new(),
        }))),
    ]
}

fn main() {
    let root = PathBuf::from("corpus");

    // frame_scan: real segments, plus damaged copies.
    let dir = root.join("frame_scan");
    let small: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; usize::from(i) * 3]).collect();
    let big: Vec<Vec<u8>> = (0..40u16).map(|i| vec![i as u8; 150 + usize::from(i)]).collect();
    let mut n = 0;
    for (records, per_batch) in [(&small, 1), (&small, 5), (&big, 3)] {
        for seg in segments(records, per_batch) {
            write(&dir, &format!("segment-{n}"), &seg);
            let mut torn = seg.clone();
            torn.truncate(seg.len() - seg.len().min(13));
            write(&dir, &format!("segment-{n}-torn"), &torn);
            let mut flipped = seg.clone();
            if flipped.len() > 100 {
                flipped[100] ^= 0x20;
            }
            write(&dir, &format!("segment-{n}-flipped"), &flipped);
            let mut zeros = seg.clone();
            zeros.resize(seg.len() + 256, 0);
            write(&dir, &format!("segment-{n}-zeros"), &zeros);
            n += 1;
        }
    }

    // event_decode: encoded events and their JSON, and a JobConfigureResponse in JSON.
    let dir = root.join("event_decode");
    for (i, ev) in events().iter().enumerate() {
        write(&dir, &format!("event-{i}.pb"), &ev.encode_to_vec());
        write(&dir, &format!("event-{i}.json"), &serde_json::to_vec(ev).expect("json"));
    }
    write(
        &dir,
        "job-configure-response.json",
        br#"{"configs":[{"outputs":[{"str":"out/a"}],"inputs":[{"depType":"MATERIALIZE","partitionRef":{"str":"in/b"}}],"args":["x"],"env":{"K":"V"}}]}"#,
    );

    // log_recovery: control bytes (see the target); a few shapes.
    let dir = root.join("log_recovery");
    write(&dir, "clean-close", &[0, 5, 3, 10, 1, 3, 200, 2]);
    write(&dir, "halt-flip", &[1, 5, 3, 10, 1, 3, 200, 2, 1, 2, 3, 0x40, 0x00, 4]);
    write(&dir, "truncate-no-checkpoint", &[1, 5, 3, 250, 1, 3, 250, 2, 4, 0, 0x30, 0x01, 9, 0, 0]);
    println!("seeds written under {}", root.display());
}
