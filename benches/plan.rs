//! Planning benchmark: a lattice of 100,000 daily partitions planned from its last day, with
//! `config` answered in-process (engine time only: lookup, worklist, dedup, topological sort,
//! JobGraph), then the plan commit built and made durable.
//!
//! The lattice: `p/<day>/<i>` for 1,000 days x 100 series; each reads `p/<day-1>/<i>` and
//! `p/<day-1>/<i+1 mod 100>` (MATERIALIZE). Asking for the 100 partitions of the last day
//! expands to all 100,000.
//!
//! Run: `cargo bench --bench plan`.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Instant;

use databuild::graph::Graph;
use databuild::planner::Planner;
use databuild::proto::{DataDep, DepType, JobConfig, PartitionRef};
use databuild::state::State;
use databuild::store::{Store, StoreOptions};
use databuild_log::{Durability, WriterOptions};

const DAYS: u32 = 1000;
const SERIES: u32 = 100;

fn pref(s: String) -> PartitionRef {
    PartitionRef { str: s }
}

fn config_for(r: &str) -> JobConfig {
    let mut parts = r.split('/');
    let _ = parts.next();
    let day: u32 = parts.next().and_then(|d| d.parse().ok()).unwrap_or(0);
    let i: u32 = parts.next().and_then(|d| d.parse().ok()).unwrap_or(0);
    let inputs = if day == 0 {
        Vec::new()
    } else {
        [i, (i + 1) % SERIES]
            .iter()
            .map(|j| DataDep {
                dep_type: DepType::Materialize as i32,
                partition_ref: Some(pref(format!("p/{}/{j}", day - 1))),
            })
            .collect()
    };
    JobConfig {
        outputs: vec![pref(r.to_string())],
        inputs,
        args: vec![day.to_string(), i.to_string()],
        ..JobConfig::default()
    }
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.sh");
    std::fs::write(&job, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&job, std::fs::Permissions::from_mode(0o755)).unwrap();
    let toml = "[[jobs]]\nlabel = \"lattice\"\nentrypoint = \"job.sh\"\npartition_patterns = ['p/\\d+/\\d+']\n";
    let graph = Graph::parse(&dir.path().join("databuild.toml"), toml).unwrap();
    let days = if smoke { 20 } else { DAYS };
    let requested: Vec<String> = (0..SERIES).map(|i| format!("p/{}/{i}", days - 1)).collect();
    let state = State::new();
    let reps = if smoke { 1 } else { 5 };
    let mut times = Vec::new();
    let mut plan = None;
    for _ in 0..reps {
        let t = Instant::now();
        let mut p = Planner::new(&graph, &requested, false).unwrap();
        loop {
            let calls = p.next_calls(&state).unwrap();
            if calls.is_empty() {
                break;
            }
            for c in calls {
                let configs = c.refs.iter().map(|r| config_for(r)).collect();
                p.answer(&c, configs).unwrap();
            }
        }
        let done = p.finish().unwrap();
        let graph_msg = done.job_graph();
        times.push(t.elapsed().as_secs_f64());
        assert_eq!(graph_msg.nodes.len(), (days * SERIES) as usize);
        plan = Some(done);
    }
    times.sort_by(f64::total_cmp);
    let plan = plan.unwrap();
    println!(
        "plan {} partitions (lattice {days} days x {SERIES}): median {:.3} s over {reps} runs (target < 1 s), min {:.3} s",
        plan.nodes.len(),
        times[times.len() / 2],
        times[0]
    );

    // The plan commit: every DELEGATED/ANALYZED/JOB_SCHEDULED event and the JobGraphEvent, in one
    // frame, validated by the fold and fdatasynced.
    let log = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        writer: WriterOptions { durability: Durability::Full, ..WriterOptions::default() },
        ..StoreOptions::default()
    };
    let (store, _) = Store::open(log.path(), opts).unwrap();
    let store = Arc::new(store);
    let req = store.new_id();
    let mut accepted = vec![databuild::events::received(&req, &requested, false, "")];
    for r in &requested {
        accepted.push(databuild::events::partition(
            &req,
            r,
            databuild::proto::PartitionStatus::PartitionRequested,
            "",
            "",
        ));
    }
    accepted.push(databuild::events::request(
        &req,
        databuild::proto::BuildRequestStatus::BuildRequestPlanning,
        "",
    ));
    store.submit(accepted).unwrap().wait().unwrap();
    let t = Instant::now();
    let events =
        databuild::engine::plan_commit(&store, &graph, &req, plan, &Default::default()).events;
    let n = events.len();
    let build_s = t.elapsed().as_secs_f64();
    let p = store.submit(events).unwrap();
    let range = p.wait().unwrap();
    let total = t.elapsed().as_secs_f64();
    println!(
        "plan commit: {n} events (one frame) built in {build_s:.3} s, validated + durable in {:.3} s more ({total:.3} s total), seqs {}..{}",
        total - build_s,
        range.first,
        range.end - 1
    );
}
