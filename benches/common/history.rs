//! A synthetic but legal build history for benchmarks, written through the store (so the fold
//! checks every transition): one build request per day, building raw/<day>, agg/<day> (reading
//! the last seven raws) and report/<day> (reading agg/<day>), with manifests naming the runs.

use databuild::events as ev;
use databuild::proto::{
    BuildRequestStatus as B, DepType, JobGraph, JobStatus as J, PartitionManifest,
    PartitionStatus as P,
};
use databuild::store::Store;

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
pub fn day(
    store: &Store,
    d: u64,
    producers: &mut std::collections::HashMap<String, String>,
) -> usize {
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

/// Writes days of history until at least `target` events are in the log (flushing every
/// `flush_every` days); returns (events, days).
pub fn generate(store: &Store, target: usize, flush_every: u64) -> (usize, u64) {
    let mut producers = std::collections::HashMap::new();
    let (mut events, mut days) = (0usize, 0u64);
    while events < target {
        events += day(store, days, &mut producers);
        days += 1;
        if days % flush_every == 0 {
            store.flush().unwrap().map(|p| p.wait().unwrap());
        }
    }
    store.flush().unwrap().map(|p| p.wait().unwrap());
    (events, days)
}

/// Rebuilds raw/<d> alone in a request of its own (a forced rebuild): the aggs that read the old
/// instance, and the reports built from them, become stale. Returns the events written.
#[allow(dead_code)]
pub fn rebuild_raw(
    store: &Store,
    d: u64,
    producers: &mut std::collections::HashMap<String, String>,
) -> usize {
    let req = store.new_id();
    let raw = format!("raw/{d}");
    let targets = vec![raw.clone()];
    let run = store.new_id();
    let mut events = vec![ev::received(&req, &targets, true, "")];
    events.push(ev::partition(&req, &raw, P::PartitionRequested, "", ""));
    events.push(ev::request(&req, B::BuildRequestPlanning, ""));
    events.push(ev::partition(&req, &raw, P::PartitionAnalyzed, "", ""));
    events.push(ev::job_graph(&req, JobGraph::default()));
    events.push(ev::request(&req, B::BuildRequestAnalysisCompleted, ""));
    events.push(ev::request(&req, B::BuildRequestExecuting, ""));
    events.push(ev::job(&req, &run, "ingest", &targets).event(J::JobScheduled));
    events.push(ev::job(&req, &run, "ingest", &targets).event(J::JobRunning));
    events.push(ev::partition(&req, &raw, P::PartitionBuilding, &run, ""));
    let mut done = ev::job(&req, &run, "ingest", &targets);
    done.manifests = vec![manifest(&targets, &[])];
    events.push(done.event(J::JobCompleted));
    events.push(ev::partition(&req, &raw, P::PartitionAvailable, &run, ""));
    events.push(ev::request(&req, B::BuildRequestCompleted, ""));
    producers.insert(raw, run);
    let n = events.len();
    store.stage(events).expect("legal history");
    n
}
