//! Query benchmarks on a log of about 1,000,000 events: `status`, `lineage`, `explain` and `jobs`,
//! each from a fresh process (the real binary), warm page cache. Also the fold rate in-process.
//!
//! The history is synthetic but legal (written through the store, so the fold checked every
//! transition): one build request per day, each building raw/<day>, agg/<day> (reading the last
//! seven raws) and report/<day> (reading agg/<day>), with manifests naming the producing runs.
//! Then every 100th raw is rebuilt alone, so the aggs that read it and their reports are stale:
//! the staleness of every partition is measured in-process and through `status --status stale`.
//!
//! Run: `cargo bench --bench query`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

#[path = "common/history.rs"]
mod history;

use databuild::store::{Store, StoreOptions};
use databuild_log::{Durability, WriterOptions};

fn time_cmd(dir: &Path, args: &[&str]) -> (f64, usize) {
    let bin = env!("CARGO_BIN_EXE_databuild");
    let t = Instant::now();
    let out = Command::new(bin).args(args).arg("--log").arg(dir).output().expect("run");
    let s = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    (s, out.stdout.len())
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let target: usize = if smoke { 20_000 } else { 1_000_000 };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // BENCH_KEEP_LOG=DIR keeps the fixture there (for profiling the queries).
    let log = match std::env::var_os("BENCH_KEEP_LOG") {
        Some(d) => {
            let _ = std::fs::remove_dir_all(&d);
            std::path::PathBuf::from(d)
        }
        None => dir.path().join("log"),
    };
    let opts = StoreOptions {
        writer: WriterOptions {
            durability: Durability::None,
            checkpoint_interval: None,
            ..WriterOptions::default()
        },
        ..StoreOptions::default()
    };
    let (store, _) = Store::open(&log, opts).unwrap();
    let t = Instant::now();
    let (mut events, days) = history::generate(&store, target, 64);
    let mut rebuilt = 0;
    for d in (0..days).step_by(100) {
        events += history::rebuild_raw(&store, d, &mut Default::default());
        rebuilt += 1;
    }
    store.flush().unwrap().map(|p| p.wait().unwrap());
    let gen_s = t.elapsed().as_secs_f64();
    store.close().unwrap();
    println!(
        "fixture: {events} events ({days} build requests, {} partitions, {rebuilt} raws rebuilt) written through the fold in {gen_s:.2} s",
        days * 3
    );

    // The fold rate, in-process: read + decode + apply, from the first event (no snapshot).
    let t = Instant::now();
    let reader = databuild_log::Reader::open(&log, databuild_log::ReadOptions::default()).unwrap();
    let mut state = databuild::state::State::new();
    databuild::store::fold(&reader, &mut state, u64::MAX).unwrap();
    let fold_s = t.elapsed().as_secs_f64();
    assert_eq!(state.last_seq as usize, events);
    println!(
        "fold from the first event: {:.2} M events/s ({fold_s:.3} s for {events})",
        events as f64 / fold_s / 1e6
    );
    drop(state);
    // The same, starting from the snapshot the writer left at close (what commands do).
    let t = Instant::now();
    let (state, _, _) = databuild::store::load(&log, u64::MAX).unwrap();
    assert_eq!(state.last_seq as usize, events);
    println!("load (newest snapshot, then the rest): {:.3} s", t.elapsed().as_secs_f64());
    // Staleness is kept by the fold: asking for every partition's reads a flag per partition.
    let t = Instant::now();
    let parts = state.partitions();
    let stale = parts.iter().filter(|p| state.stale(p).is_some()).count();
    let stale_s = t.elapsed().as_secs_f64();
    assert!(stale >= rebuilt, "every rebuilt raw left stale readers");
    println!(
        "staleness of every partition ({} partitions, {stale} stale), on the loaded state: {stale_s:.3} s (target < 1 s)",
        parts.len()
    );
    drop(state);

    let last = days - 1;
    let report = format!("report/{last}");
    let raw = format!("raw/{}", last.saturating_sub(3));
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("status REF", vec!["status".into(), report.clone()]),
        ("status (all partitions, json)", vec!["status".into(), "--format".into(), "json".into()]),
        (
            "status --status stale (json)",
            vec![
                "status".into(),
                "--status".into(),
                "stale".into(),
                "--format".into(),
                "json".into(),
            ],
        ),
        ("lineage REF", vec!["lineage".into(), report.clone()]),
        ("lineage REF --downstream", vec!["lineage".into(), raw.clone(), "--downstream".into()]),
        ("explain REF", vec!["explain".into(), report.clone()]),
        ("jobs", vec!["jobs".into()]),
        ("builds (all requests, json)", vec!["builds".into(), "--format".into(), "json".into()]),
    ];
    for (name, args) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut times: Vec<f64> = Vec::new();
        let mut bytes = 0;
        for _ in 0..3 {
            let (s, b) = time_cmd(&log, &args);
            times.push(s);
            bytes = b;
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{name:<32} {:.3} s median of 3 (fresh process each; {bytes} bytes out; target < 1 s)",
            times[1]
        );
    }
}
