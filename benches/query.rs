//! Query benchmarks on a log of about 1,000,000 events: `status`, `lineage`, `explain` and `jobs`,
//! each from a fresh process (the real binary), warm page cache. Also the fold rate in-process.
//!
//! The history is synthetic but legal (written through the store, so the fold checked every
//! transition): one build request per day, each building raw/<day>, agg/<day> (reading the last
//! seven raws) and report/<day> (reading agg/<day>), with manifests naming the producing runs.
//!
//! Run: `cargo bench --bench query`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use databuild::events as ev;
use databuild::proto::{
    BuildRequestStatus as B, DepType, JobGraph, JobStatus as J, PartitionManifest,
    PartitionStatus as P,
};
use databuild::store::{Store, StoreOptions};
use databuild_log::{Durability, WriterOptions};

fn manifest(outputs: &[String], inputs: &[(String, String)]) -> PartitionManifest {
    PartitionManifest {
        outputs: outputs.iter().map(|o| ev::pref(o)).collect(),
        inputs: inputs
            .iter()
            .map(|(r, run)| PartitionManifest {
                outputs: vec![ev::pref(r)],
                job_run_id: run.clone(),
                dep_type: DepType::Materialize as i32,
                ..PartitionManifest::default()
            })
            .collect(),
        start_time: 1_700_000_000,
        end_time: 1_700_000_001,
        ..PartitionManifest::default()
    }
}

/// Writes one day's request; returns the run that built each output.
fn day(store: &Store, d: u64, producers: &mut std::collections::HashMap<String, String>) -> usize {
    let req = store.new_id();
    let report = format!("report/{d}");
    let mut events = vec![ev::received(&req, std::slice::from_ref(&report), false, "")];
    events.push(ev::partition(&req, &report, P::PartitionRequested, "", ""));
    events.push(ev::request(&req, B::BuildRequestPlanning, ""));
    let raw = format!("raw/{d}");
    let agg = format!("agg/{d}");
    for p in [&raw, &agg, &report] {
        events.push(ev::partition(&req, p, P::PartitionAnalyzed, "", ""));
    }
    events.push(ev::job_graph(&req, JobGraph::default()));
    events.push(ev::request(&req, B::BuildRequestAnalysisCompleted, ""));
    events.push(ev::request(&req, B::BuildRequestExecuting, ""));
    let window: Vec<(String, String)> = (d.saturating_sub(6)..=d)
        .map(|k| format!("raw/{k}"))
        .map(|r| {
            let run = producers.get(&r).cloned().unwrap_or_default();
            (r, run)
        })
        .collect();
    // (job label, output, inputs as (ref, producing run))
    type Job<'a> = (&'a str, String, Vec<(String, String)>);
    let jobs: Vec<Job<'_>> = vec![
        ("ingest", raw.clone(), vec![]),
        ("aggregate", agg.clone(), window),
        ("report", report.clone(), vec![(agg.clone(), String::new())]),
    ];
    for (label, out, inputs) in jobs {
        let run = store.new_id();
        let targets = vec![out.clone()];
        let inputs: Vec<(String, String)> = inputs
            .into_iter()
            .map(|(r, p)| {
                if p.is_empty() {
                    (r.clone(), producers.get(&r).cloned().unwrap_or_default())
                } else {
                    (r, p)
                }
            })
            .collect();
        events.push(ev::job(&req, &run, label, &targets).event(J::JobScheduled));
        events.push(ev::job(&req, &run, label, &targets).event(J::JobRunning));
        events.push(ev::partition(&req, &out, P::PartitionBuilding, &run, ""));
        let mut done = ev::job(&req, &run, label, &targets);
        done.manifests = vec![manifest(&targets, &inputs)];
        events.push(done.event(J::JobCompleted));
        events.push(ev::partition(&req, &out, P::PartitionAvailable, &run, ""));
        producers.insert(out, run);
    }
    events.push(ev::request(&req, B::BuildRequestCompleted, ""));
    let n = events.len();
    store.stage(events).expect("legal history");
    n
}

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
    let mut producers = std::collections::HashMap::new();
    let t = Instant::now();
    let (mut events, mut days) = (0usize, 0u64);
    while events < target {
        events += day(&store, days, &mut producers);
        days += 1;
        if days % 64 == 0 {
            store.flush().unwrap().map(|p| p.wait().unwrap());
        }
    }
    store.flush().unwrap().map(|p| p.wait().unwrap());
    let gen_s = t.elapsed().as_secs_f64();
    store.close().unwrap();
    println!(
        "fixture: {events} events ({days} build requests, {} partitions) written through the fold in {gen_s:.2} s",
        days * 3
    );

    // The fold rate, in-process: read + decode + apply.
    let t = Instant::now();
    let (state, _, _) = databuild::store::load(&log, u64::MAX).unwrap();
    let fold_s = t.elapsed().as_secs_f64();
    assert_eq!(state.last_seq as usize, events);
    println!("fold: {:.2} M events/s ({fold_s:.3} s for {events})", events as f64 / fold_s / 1e6);
    drop(state);

    let last = days - 1;
    let report = format!("report/{last}");
    let raw = format!("raw/{}", last.saturating_sub(3));
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("status REF", vec!["status".into(), report.clone()]),
        ("status (all partitions, json)", vec!["status".into(), "--format".into(), "json".into()]),
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
