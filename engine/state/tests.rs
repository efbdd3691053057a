//! Table-driven tests of the fold: one case per cell of DESIGN.md §2.3, each legal transition
//! accepted and each illegal one rejected, plus the catalog rule and the cross-entity rules.

use super::*;
use crate::events as ev;
use crate::proto::{
    BuildRequestStatus as B, JobGraph, JobStatus as J, PartitionManifest, PartitionStatus as P,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Log {
    state: State,
}

impl Log {
    fn new() -> Log {
        Log { state: State::new() }
    }

    fn push(&mut self, e: BuildEvent) -> Result<(), Violation> {
        let seq = self.state.last_seq + 1;
        let before = self.state.clone();
        let r = self.state.apply(seq, &e);
        if r.is_err() {
            assert_eq!(self.state, before, "a rejected event changes nothing");
        }
        r
    }

    fn ok(&mut self, e: BuildEvent) {
        if let Err(v) = self.push(e) {
            panic!("expected legal: {v}");
        }
    }
}

const R: &str = "req-1";

fn refs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A request driven to `status` (requested: "out").
fn request_in(status: B) -> Log {
    let mut l = Log::new();
    l.ok(ev::received(R, &refs(&["out"]), false, ""));
    l.ok(ev::partition(R, "out", P::PartitionRequested, "", ""));
    let path: &[B] = match status {
        B::BuildRequestReceived => &[],
        B::BuildRequestPlanning => &[B::BuildRequestPlanning],
        B::BuildRequestAnalysisCompleted => {
            &[B::BuildRequestPlanning, B::BuildRequestAnalysisCompleted]
        }
        _ => &[B::BuildRequestPlanning, B::BuildRequestAnalysisCompleted, B::BuildRequestExecuting],
    };
    for s in path {
        if *s == B::BuildRequestAnalysisCompleted {
            l.ok(ev::job_graph(R, JobGraph::default()));
        }
        l.ok(ev::request(R, *s, ""));
    }
    match status {
        B::BuildRequestCompleted => {
            run_to_completion(&mut l, "run-1", &refs(&["out"]));
            l.ok(ev::request(R, B::BuildRequestCompleted, ""));
        }
        B::BuildRequestFailed | B::BuildRequestCancelled => {
            l.ok(ev::partition(R, "out", P::PartitionFailed, "", "x"));
            l.ok(ev::request(R, status, ""));
        }
        _ => {}
    }
    l
}

fn manifest(outputs: &[String]) -> PartitionManifest {
    PartitionManifest {
        outputs: outputs.iter().map(|o| ev::pref(o)).collect(),
        ..PartitionManifest::default()
    }
}

fn run_to_completion(l: &mut Log, run: &str, targets: &[String]) {
    for t in targets {
        if l.state.key(R, t).is_none_or(|k| k.status == P::PartitionRequested) {
            l.ok(ev::partition(R, t, P::PartitionAnalyzed, "", ""));
        }
    }
    l.ok(ev::job(R, run, "job", targets).event(J::JobScheduled));
    l.ok(ev::job(R, run, "job", targets).event(J::JobRunning));
    for t in targets {
        l.ok(ev::partition(R, t, P::PartitionBuilding, run, ""));
    }
    let mut done = ev::job(R, run, "job", targets);
    done.manifests = vec![manifest(targets)];
    l.ok(done.event(J::JobCompleted));
    for t in targets {
        l.ok(ev::partition(R, t, P::PartitionAvailable, run, ""));
    }
}

const REQUEST_STATES: [B; 7] = [
    B::BuildRequestReceived,
    B::BuildRequestPlanning,
    B::BuildRequestAnalysisCompleted,
    B::BuildRequestExecuting,
    B::BuildRequestCompleted,
    B::BuildRequestFailed,
    B::BuildRequestCancelled,
];

#[test]
fn build_request_transitions_follow_the_table() {
    for from in REQUEST_STATES {
        for to in REQUEST_STATES {
            let mut l = request_in(from);
            let terminal = is_terminal_request(from);
            // FAILED/CANCELLED need every key closed: close "out" first where it is open.
            if matches!(to, B::BuildRequestFailed | B::BuildRequestCancelled) && !terminal {
                l.ok(ev::partition(R, "out", P::PartitionFailed, "", "closing"));
            }
            let legal = !terminal
                && match to {
                    B::BuildRequestPlanning => from == B::BuildRequestReceived,
                    B::BuildRequestAnalysisCompleted => false, // no JobGraphEvent in this setup
                    B::BuildRequestExecuting => from == B::BuildRequestAnalysisCompleted,
                    B::BuildRequestCompleted => false, // "out" is not AVAILABLE
                    B::BuildRequestFailed | B::BuildRequestCancelled => true,
                    _ => false,
                };
            let got = l.push(ev::request(R, to, ""));
            assert_eq!(
                got.is_ok(),
                legal,
                "{} -> {}: {got:?}",
                from.as_str_name(),
                to.as_str_name()
            );
        }
    }
}

#[test]
fn a_request_must_start_with_received_and_hold_its_plan_once() {
    let mut l = Log::new();
    assert!(l.push(ev::request(R, B::BuildRequestPlanning, "")).is_err());
    assert!(l.push(ev::received(R, &[], false, "")).is_err(), "RECEIVED needs partitions");
    l.ok(ev::received(R, &refs(&["out"]), false, ""));
    assert!(l.push(ev::received(R, &refs(&["out"]), false, "")).is_err(), "RECEIVED twice");
    assert!(l.push(ev::job_graph(R, JobGraph::default())).is_err(), "plan only while PLANNING");
    l.ok(ev::request(R, B::BuildRequestPlanning, ""));
    l.ok(ev::job_graph(R, JobGraph::default()));
    assert!(l.push(ev::job_graph(R, JobGraph::default())).is_err(), "plan once");
    l.ok(ev::request(R, B::BuildRequestAnalysisCompleted, ""));
}

#[test]
fn completed_needs_every_requested_partition_available() {
    let mut l = request_in(B::BuildRequestExecuting);
    assert!(l.push(ev::request(R, B::BuildRequestCompleted, "")).is_err());
    run_to_completion(&mut l, "run-1", &refs(&["out"]));
    l.ok(ev::request(R, B::BuildRequestCompleted, ""));
    assert!(
        l.push(ev::partition(R, "x", P::PartitionRequested, "", "")).is_err(),
        "terminal accepts nothing"
    );
}

#[test]
fn a_request_cannot_end_with_live_runs_or_open_partitions() {
    let mut l = request_in(B::BuildRequestExecuting);
    l.ok(ev::partition(R, "out", P::PartitionAnalyzed, "", ""));
    l.ok(ev::job(R, "run-1", "job", &refs(&["out"])).event(J::JobScheduled));
    l.ok(ev::partition(R, "out", P::PartitionFailed, "", "x"));
    let v = l.push(ev::request(R, B::BuildRequestFailed, "")).unwrap_err();
    assert!(v.what.contains("live"), "{v}");
    l.ok(ev::job(R, "run-1", "job", &refs(&["out"])).event(J::JobCancelled));
    l.ok(ev::partition(R, "side", P::PartitionAnalyzed, "", ""));
    let v = l.push(ev::request(R, B::BuildRequestCancelled, "")).unwrap_err();
    assert!(v.what.contains("side"), "{v}");
    l.ok(ev::partition(R, "side", P::PartitionFailed, "", "cancelled"));
    l.ok(ev::request(R, B::BuildRequestCancelled, ""));
}

const JOB_STATES: [J; 6] =
    [J::JobScheduled, J::JobRunning, J::JobCompleted, J::JobFailed, J::JobCancelled, J::JobSkipped];

/// A run in `status` (None: no run yet), in an EXECUTING request.
fn run_in(status: Option<J>) -> Log {
    let mut l = request_in(B::BuildRequestExecuting);
    let t = refs(&["out"]);
    l.ok(ev::partition(R, "out", P::PartitionAnalyzed, "", ""));
    let path: &[J] = match status {
        None => &[],
        Some(J::JobScheduled) => &[J::JobScheduled],
        Some(J::JobRunning) => &[J::JobScheduled, J::JobRunning],
        Some(J::JobSkipped) => &[J::JobSkipped],
        Some(J::JobCompleted) => &[J::JobScheduled, J::JobRunning, J::JobCompleted],
        Some(s) => &[J::JobScheduled, s][..],
    };
    let path = path.to_vec();
    for s in path {
        let mut e = ev::job(R, "run-1", "job", &t);
        if s == J::JobCompleted {
            e.manifests = vec![manifest(&t)];
        }
        l.ok(e.event(s));
    }
    l
}

#[test]
fn job_run_transitions_follow_the_table() {
    let t = refs(&["out"]);
    let states: Vec<Option<J>> =
        std::iter::once(None).chain(JOB_STATES.iter().copied().map(Some)).collect();
    for from in states {
        for to in JOB_STATES {
            let mut l = run_in(from);
            let legal = matches!(
                (from, to),
                (None, J::JobScheduled | J::JobSkipped)
                    | (Some(J::JobScheduled), J::JobRunning | J::JobFailed | J::JobCancelled)
                    | (Some(J::JobRunning), J::JobCompleted | J::JobFailed | J::JobCancelled)
            );
            let mut e = ev::job(R, "run-1", "job", &t);
            if to == J::JobCompleted {
                e.manifests = vec![manifest(&t)];
            }
            let got = l.push(e.event(to));
            assert_eq!(got.is_ok(), legal, "{from:?} -> {}: {got:?}", to.as_str_name());
        }
    }
}

#[test]
fn job_runs_need_an_executing_request_and_matching_manifests() {
    let t = refs(&["out"]);
    let mut l = request_in(B::BuildRequestPlanning);
    assert!(
        l.push(ev::job(R, "run-1", "job", &t).event(J::JobScheduled)).is_err(),
        "not executing"
    );
    l.ok(ev::job(R, "skip-1", "job", &t).event(J::JobSkipped));
    let mut l = run_in(Some(J::JobRunning));
    let mut e = ev::job(R, "run-1", "job", &t);
    e.manifests = vec![manifest(&refs(&["other"]))];
    assert!(l.push(e.event(J::JobCompleted)).is_err(), "manifest outputs must equal targets");
    let e = ev::job(R, "run-1", "another-job", &t);
    assert!(l.push(e.event(J::JobFailed)).is_err(), "label must match");
    assert!(
        l.push(ev::job("req-2", "run-1", "job", &t).event(J::JobFailed)).is_err(),
        "unknown request"
    );
    let mut bad = ev::job(R, "run-1", "job", &t).event(J::JobFailed);
    if let Some(EventType::JobEvent(j)) = &mut bad.event_type {
        j.status = 99;
    }
    assert!(l.push(bad).unwrap_err().what.contains("unknown job status"));
}

const PARTITION_STATES: [P; 6] = [
    P::PartitionRequested,
    P::PartitionAnalyzed,
    P::PartitionBuilding,
    P::PartitionAvailable,
    P::PartitionFailed,
    P::PartitionDelegated,
];

/// The key ("out") in `status`, with run-1 in the state the status needs; None: no key yet. The
/// request holds no REQUESTED key for "out" here: requested is "asked".
fn key_in(status: Option<P>) -> Log {
    let mut l = Log::new();
    l.ok(ev::received(R, &refs(&["asked"]), false, ""));
    l.ok(ev::request(R, B::BuildRequestPlanning, ""));
    l.ok(ev::job_graph(R, JobGraph::default()));
    l.ok(ev::request(R, B::BuildRequestAnalysisCompleted, ""));
    l.ok(ev::request(R, B::BuildRequestExecuting, ""));
    let t = refs(&["out"]);
    match status {
        None => {}
        Some(P::PartitionRequested) => l.ok(ev::partition(R, "out", P::PartitionRequested, "", "")),
        Some(P::PartitionAnalyzed) => l.ok(ev::partition(R, "out", P::PartitionAnalyzed, "", "")),
        Some(P::PartitionDelegated) => {
            l.ok(ev::delegation(R, "out", R, ""));
            l.ok(ev::partition(R, "out", P::PartitionDelegated, "", ""));
        }
        Some(P::PartitionAvailable) => run_to_completion(&mut l, "run-1", &t),
        Some(P::PartitionBuilding) | Some(P::PartitionFailed) => {
            l.ok(ev::partition(R, "out", P::PartitionAnalyzed, "", ""));
            l.ok(ev::job(R, "run-1", "job", &t).event(J::JobScheduled));
            l.ok(ev::job(R, "run-1", "job", &t).event(J::JobRunning));
            l.ok(ev::partition(R, "out", P::PartitionBuilding, "run-1", ""));
            if status == Some(P::PartitionFailed) {
                l.ok(ev::job(R, "run-1", "job", &t).event(J::JobFailed));
                l.ok(ev::partition(R, "out", P::PartitionFailed, "run-1", "exit 1"));
            }
        }
        Some(_) => unreachable!(),
    }
    l
}

/// Brings a run into the state the target partition status needs, then returns the event.
fn partition_to(l: &mut Log, from: Option<P>, to: P) -> BuildEvent {
    let t = refs(&["out"]);
    match to {
        P::PartitionBuilding => {
            // A fresh run (a next attempt, or a resume) that is RUNNING.
            let run = if from == Some(P::PartitionBuilding) { "run-1" } else { "run-2" };
            if run == "run-2" {
                l.ok(ev::job(R, run, "job", &t).event(J::JobScheduled));
                l.ok(ev::job(R, run, "job", &t).event(J::JobRunning));
            }
            ev::partition(R, "out", to, run, "")
        }
        P::PartitionAvailable => {
            if from == Some(P::PartitionBuilding) {
                let mut e = ev::job(R, "run-1", "job", &t);
                e.manifests = vec![manifest(&t)];
                l.ok(e.event(J::JobCompleted));
                ev::partition(R, "out", to, "run-1", "")
            } else {
                // No run of this request in a state that may make it AVAILABLE: name none.
                ev::partition(R, "out", to, "", "")
            }
        }
        P::PartitionDelegated => {
            l.ok(ev::delegation(R, "out", R, ""));
            ev::partition(R, "out", to, "", "")
        }
        _ => ev::partition(R, "out", to, "", "reason"),
    }
}

#[test]
fn partition_transitions_follow_the_table() {
    let states: Vec<Option<P>> =
        std::iter::once(None).chain(PARTITION_STATES.iter().copied().map(Some)).collect();
    for from in states {
        for to in PARTITION_STATES {
            let mut l = key_in(from);
            let e = partition_to(&mut l, from, to);
            let legal = matches!(
                (from, to),
                (None, P::PartitionRequested | P::PartitionAnalyzed | P::PartitionDelegated)
                    | (
                        Some(P::PartitionRequested),
                        P::PartitionAnalyzed | P::PartitionDelegated | P::PartitionFailed
                    )
                    | (
                        Some(P::PartitionAnalyzed),
                        P::PartitionBuilding | P::PartitionDelegated | P::PartitionFailed
                    )
                    | (
                        Some(P::PartitionBuilding),
                        P::PartitionAvailable | P::PartitionFailed | P::PartitionBuilding
                    )
                    | (Some(P::PartitionFailed), P::PartitionBuilding | P::PartitionDelegated)
                    | (Some(P::PartitionDelegated), P::PartitionFailed)
            );
            let got = l.push(e);
            assert_eq!(got.is_ok(), legal, "{from:?} -> {}: {got:?}", to.as_str_name());
        }
    }
}

#[test]
fn partition_events_naming_runs_need_the_matching_run_state() {
    let t = refs(&["out"]);
    let mut l = key_in(Some(P::PartitionAnalyzed));
    l.ok(ev::job(R, "run-1", "job", &t).event(J::JobScheduled));
    assert!(
        l.push(ev::partition(R, "out", P::PartitionBuilding, "run-1", "")).is_err(),
        "run not RUNNING"
    );
    assert!(
        l.push(ev::partition(R, "out", P::PartitionBuilding, "", "")).is_err(),
        "BUILDING names a run"
    );
    assert!(
        l.push(ev::partition(R, "out", P::PartitionBuilding, "nope", "")).is_err(),
        "unknown run"
    );
    l.ok(ev::job(R, "run-1", "job", &t).event(J::JobRunning));
    assert!(l.push(ev::partition(R, "other", P::PartitionAnalyzed, "run-1", "")).is_err());
    l.ok(ev::partition(R, "out", P::PartitionBuilding, "run-1", ""));
    assert!(
        l.push(ev::partition(R, "out", P::PartitionAvailable, "run-1", "")).is_err(),
        "run not COMPLETED"
    );
    assert!(
        l.push(ev::partition(R, "out", P::PartitionFailed, "run-1", "")).is_err(),
        "run not FAILED"
    );
}

#[test]
fn delegated_must_follow_its_delegation_event() {
    let mut l = key_in(None);
    assert!(l.push(ev::partition(R, "out", P::PartitionDelegated, "", "")).is_err());
    l.ok(ev::delegation(R, "out", R, ""));
    l.ok(ev::partition(R, "x", P::PartitionAnalyzed, "", ""));
    assert!(
        l.push(ev::partition(R, "out", P::PartitionDelegated, "", "")).is_err(),
        "not adjacent"
    );
    assert!(l.push(ev::delegation(R, "out", "no-such-request", "")).is_err());
}

#[test]
fn the_catalog_rule_keeps_an_older_available_over_later_skips_and_upstream_failures() -> TestResult
{
    // Request 1 builds "out".
    let mut l = request_in(B::BuildRequestExecuting);
    run_to_completion(&mut l, "run-1", &refs(&["out"]));
    l.ok(ev::request(R, B::BuildRequestCompleted, ""));
    assert!(l.state.is_available("out"));
    let avail_seq =
        l.state.catalog["out"].shown().ok_or("no fact decides the status of 'out'")?.seq;
    // Request 2 skips it (REQUESTED, then DELEGATED), and marks it FAILED without a run.
    let r2 = "req-2";
    l.ok(ev::received(r2, &refs(&["out"]), false, ""));
    l.ok(ev::partition(r2, "out", P::PartitionRequested, "", ""));
    l.ok(ev::delegation(r2, "out", R, ""));
    l.ok(ev::partition(r2, "out", P::PartitionDelegated, "", ""));
    assert_eq!(l.state.partition_status("out"), P::PartitionAvailable);
    assert_eq!(
        l.state.catalog["out"].shown().ok_or("no fact decides the status of 'out'")?.seq,
        avail_seq
    );
    let r3 = "req-3";
    l.ok(ev::received(r3, &refs(&["out"]), false, ""));
    l.ok(ev::partition(r3, "out", P::PartitionRequested, "", ""));
    l.ok(ev::partition(r3, "out", P::PartitionFailed, "", "upstream x failed"));
    assert_eq!(
        l.state.partition_status("out"),
        P::PartitionAvailable,
        "an upstream failure never hides it"
    );
    Ok(())
}

#[test]
fn a_failed_forced_rebuild_shows_building_then_failed() {
    let t = refs(&["out"]);
    let mut l = request_in(B::BuildRequestExecuting);
    run_to_completion(&mut l, "run-1", &t);
    l.ok(ev::request(R, B::BuildRequestCompleted, ""));
    let r2 = "req-2";
    l.ok(ev::received(r2, &t, true, ""));
    l.ok(ev::partition(r2, "out", P::PartitionRequested, "", ""));
    l.ok(ev::request(r2, B::BuildRequestPlanning, ""));
    l.ok(ev::job_graph(r2, JobGraph::default()));
    l.ok(ev::request(r2, B::BuildRequestAnalysisCompleted, ""));
    l.ok(ev::request(r2, B::BuildRequestExecuting, ""));
    l.ok(ev::partition(r2, "out", P::PartitionAnalyzed, "", ""));
    l.ok(ev::job(r2, "run-2", "job", &t).event(J::JobScheduled));
    l.ok(ev::job(r2, "run-2", "job", &t).event(J::JobRunning));
    l.ok(ev::partition(r2, "out", P::PartitionBuilding, "run-2", ""));
    assert_eq!(l.state.partition_status("out"), P::PartitionBuilding);
    l.ok(ev::job(r2, "run-2", "job", &t).event(J::JobFailed));
    l.ok(ev::partition(r2, "out", P::PartitionFailed, "run-2", "exit 1"));
    assert_eq!(l.state.partition_status("out"), P::PartitionFailed);
    assert_eq!(
        l.state.catalog["out"].available.len(),
        1,
        "the older instance is remembered for lineage"
    );
}

#[test]
fn seqs_must_be_applied_in_order_and_unknown_events_are_violations() {
    let mut s = State::new();
    assert!(s.apply(2, &ev::received(R, &refs(&["a"]), false, "")).is_err());
    let empty = BuildEvent::default();
    assert!(s.apply(1, &empty).unwrap_err().what.contains("unknown"));
    assert_eq!(s, State::new());
}

#[test]
fn completed_runs_feed_the_lineage_projection() {
    let t = refs(&["out"]);
    let mut l = request_in(B::BuildRequestExecuting);
    l.ok(ev::partition(R, "out", P::PartitionAnalyzed, "", ""));
    l.ok(ev::job(R, "run-1", "job", &t).event(J::JobScheduled));
    l.ok(ev::job(R, "run-1", "job", &t).event(J::JobRunning));
    l.ok(ev::partition(R, "out", P::PartitionBuilding, "run-1", ""));
    let mut done = ev::job(R, "run-1", "job", &t);
    let mut m = manifest(&t);
    m.start_time = 10;
    m.end_time = 12;
    m.inputs = vec![PartitionManifest {
        outputs: vec![ev::pref("in/a")],
        job_run_id: "run-0".into(),
        dep_type: DepType::Materialize as i32,
        ..PartitionManifest::default()
    }];
    done.manifests = vec![m];
    l.ok(done.event(J::JobCompleted));
    let run = &l.state.runs["run-1"];
    assert_eq!(run.manifest_times, Some((10, 12)));
    assert_eq!(
        run.inputs,
        vec![RunInput {
            partition: "in/a".into(),
            dep_type: DepType::Materialize,
            producer_run: "run-0".into()
        }]
    );
    assert_eq!(l.state.readers["in/a"], vec![Sym::from("run-1")]);
}

/// A history with every kind of event: a completed build with a QUERY input, a skip with its
/// delegation, a failed run and its cancelled retry, an upstream failure, a cancellation, and an
/// engine event.
fn history_events() -> Vec<BuildEvent> {
    let mut rec = Recorder::default();
    rec.build();
    rec.events
}

#[derive(Default)]
struct Recorder {
    events: Vec<BuildEvent>,
}

impl Recorder {
    fn push(&mut self, e: BuildEvent) {
        self.events.push(e);
    }

    fn build(&mut self) {
        let t = refs(&["out"]);
        self.push(ev::received(R, &t, false, ""));
        self.push(ev::partition(R, "out", P::PartitionRequested, "", ""));
        self.push(ev::request(R, B::BuildRequestPlanning, ""));
        self.push(ev::job_graph(R, JobGraph::default()));
        self.push(ev::request(R, B::BuildRequestAnalysisCompleted, ""));
        self.push(ev::request(R, B::BuildRequestExecuting, ""));
        self.push(ev::partition(R, "out", P::PartitionAnalyzed, "", ""));
        self.push(ev::job(R, "run-1", "job", &t).event(J::JobScheduled));
        self.push(ev::job(R, "run-1", "job", &t).event(J::JobRunning));
        self.push(ev::partition(R, "out", P::PartitionBuilding, "run-1", ""));
        let mut done = ev::job(R, "run-1", "job", &t);
        let mut m = manifest(&t);
        m.inputs = vec![PartitionManifest {
            outputs: vec![ev::pref("ext/1")],
            dep_type: DepType::Query as i32,
            ..PartitionManifest::default()
        }];
        done.manifests = vec![m];
        self.push(done.event(J::JobCompleted));
        self.push(ev::partition(R, "out", P::PartitionAvailable, "run-1", ""));
        self.push(ev::request(R, B::BuildRequestCompleted, ""));
        let r2 = "req-2";
        self.push(ev::received(r2, &refs(&["out", "x"]), true, "digest"));
        self.push(ev::partition(r2, "out", P::PartitionRequested, "", ""));
        self.push(ev::partition(r2, "x", P::PartitionRequested, "", ""));
        self.push(ev::request(r2, B::BuildRequestPlanning, ""));
        self.push(ev::delegation(r2, "out", R, "available"));
        self.push(ev::partition(r2, "out", P::PartitionDelegated, "", "available"));
        self.push(ev::job(r2, "skip-1", "job", &t).event(J::JobSkipped));
        self.push(ev::partition(r2, "x", P::PartitionAnalyzed, "", ""));
        self.push(ev::partition(r2, "y", P::PartitionAnalyzed, "", ""));
        self.push(ev::job_graph(r2, JobGraph::default()));
        self.push(ev::request(r2, B::BuildRequestAnalysisCompleted, ""));
        self.push(ev::request(r2, B::BuildRequestExecuting, ""));
        let x = refs(&["x"]);
        self.push(ev::job(r2, "run-x1", "xjob", &x).event(J::JobScheduled));
        let mut running = ev::job(r2, "run-x1", "xjob", &x);
        running.process = Some(crate::proto::ProcessInfo {
            pid: 7,
            pgid: 7,
            host: "h".into(),
            boot_id: "b".into(),
            start_time_ticks: 9,
        });
        self.push(running.event(J::JobRunning));
        self.push(ev::partition(r2, "x", P::PartitionBuilding, "run-x1", ""));
        let mut failed = ev::job(r2, "run-x1", "xjob", &x);
        failed.failure = Some(JobFailureKind::JobFailureExitNonzero);
        failed.exit_code = 3;
        self.push(failed.event(J::JobFailed));
        self.push(ev::job(r2, "run-x2", "xjob", &x).event(J::JobScheduled));
        self.push(ev::job(r2, "run-x2", "xjob", &x).event(J::JobCancelled));
        self.push(ev::partition(r2, "x", P::PartitionFailed, "run-x2", "cancelled"));
        self.push(ev::partition(r2, "y", P::PartitionFailed, "", "upstream x failed"));
        self.push(ev::engine(EngineEventKind::EngineRecovered, "recovered", 0, 0));
        self.push(ev::request(r2, B::BuildRequestCancelled, ""));
        // Freshness: versions, a rebuilt input, a taint, a version change.
        self.fresh("f-1", "ra-1", "ajob", "a", &[], Some("1"));
        self.fresh("f-2", "rb-1", "bjob", "b", &[("a", "ra-1")], Some(""));
        self.fresh("f-3", "rc-1", "cjob", "c", &[("b", "rb-1")], None);
        self.fresh("f-4", "ra-2", "ajob", "a", &[], Some("1"));
        self.push(taint("a", "ra-2", "bad rows"));
        self.fresh("f-5", "rb-2", "bjob", "b", &[("a", "ra-2")], Some("2"));
    }

    /// One request that builds `out` with run `run` of job `label`, reading `inputs` (ref, run
    /// that built the instance read), recording `version`.
    fn fresh(
        &mut self,
        req: &str,
        run: &str,
        label: &str,
        out: &str,
        inputs: &[(&str, &str)],
        version: Option<&str>,
    ) {
        for e in fresh_build(req, run, label, out, inputs, version) {
            self.push(e);
        }
    }
}

/// A taint of `part`'s instance built by `run`.
fn taint(part: &str, run: &str, why: &str) -> BuildEvent {
    ev::partition("", part, P::PartitionTainted, run, why)
}

/// The events of one request that builds `out` (see [`Recorder::fresh`]).
fn fresh_build(
    req: &str,
    run: &str,
    label: &str,
    out: &str,
    inputs: &[(&str, &str)],
    version: Option<&str>,
) -> Vec<BuildEvent> {
    let t = refs(&[out]);
    let mut v = vec![
        ev::received(req, &t, true, ""),
        ev::partition(req, out, P::PartitionRequested, "", ""),
        ev::request(req, B::BuildRequestPlanning, ""),
        ev::job_graph(req, JobGraph::default()),
        ev::request(req, B::BuildRequestAnalysisCompleted, ""),
        ev::request(req, B::BuildRequestExecuting, ""),
        ev::partition(req, out, P::PartitionAnalyzed, "", ""),
    ];
    let mut sch = ev::job(req, run, label, &t);
    sch.version = version.map(str::to_string);
    v.push(sch.event(J::JobScheduled));
    v.push(ev::job(req, run, label, &t).event(J::JobRunning));
    v.push(ev::partition(req, out, P::PartitionBuilding, run, ""));
    let mut done = ev::job(req, run, label, &t);
    let mut m = manifest(&t);
    m.inputs = inputs
        .iter()
        .map(|(p, r)| PartitionManifest {
            outputs: vec![ev::pref(p)],
            dep_type: DepType::Materialize as i32,
            job_run_id: r.to_string(),
            ..PartitionManifest::default()
        })
        .collect();
    done.manifests = vec![m];
    v.push(done.event(J::JobCompleted));
    v.push(ev::partition(req, out, P::PartitionAvailable, run, ""));
    v.push(ev::request(req, B::BuildRequestCompleted, ""));
    v
}

fn fold_all(events: &[BuildEvent], upto: usize) -> State {
    let mut s = State::new();
    for (i, e) in events.iter().take(upto).enumerate() {
        let mut e = e.clone();
        e.timestamp = 1000 + i as i64;
        s.apply(i as u64 + 1, &e).unwrap_or_else(|v| panic!("event {}: {v}", i + 1));
    }
    s
}

#[test]
fn a_snapshot_at_any_prefix_plus_the_rest_folds_to_the_same_state() {
    use super::snapshot::{decode, encode};
    let events = history_events();
    let full = fold_all(&events, events.len());
    let id = [5u8; 16];
    for k in 0..=events.len() {
        let at_k = fold_all(&events, k);
        let bytes = encode(&at_k, id, Default::default());
        assert_eq!(encode(&at_k, id, Default::default()), bytes, "encoding is deterministic");
        let mut loaded = decode(&bytes, id).unwrap_or_else(|e| panic!("prefix {k}: {e}"));
        assert_eq!(loaded, at_k, "prefix {k}: a snapshot decodes to the state it was taken of");
        let threaded = super::snapshot::decode_on(Box::new(bytes.clone()), id, true);
        assert_eq!(threaded.as_ref(), Ok(&at_k), "prefix {k}: on two threads too");
        for (i, e) in events.iter().enumerate().skip(k) {
            let mut e = e.clone();
            e.timestamp = 1000 + i as i64;
            loaded
                .apply(i as u64 + 1, &e)
                .unwrap_or_else(|v| panic!("prefix {k}, event {}: {v}", i + 1));
        }
        assert_eq!(loaded, full, "prefix {k}: snapshot ++ rest == fold(all)");
    }
}

#[test]
fn damaged_foreign_or_old_snapshots_are_refused_never_misread() {
    use super::snapshot::{FOLD_VERSION, decode, encode};
    let events = history_events();
    let st = fold_all(&events, events.len());
    let id = [5u8; 16];
    let good = encode(&st, id, Default::default());
    assert!(decode(&good, [6u8; 16]).unwrap_err().contains("another log"));
    let mut old = good.clone();
    old[8..12].copy_from_slice(&(FOLD_VERSION + 1).to_le_bytes());
    assert!(decode(&old, id).is_err(), "another fold version (checksum or version)");
    for cut in [0, 10, 44, good.len() / 2, good.len() - 1] {
        assert!(decode(&good[..cut], id).is_err(), "truncated at {cut}");
    }
    for at in (0..good.len()).step_by(7) {
        let mut bad = good.clone();
        bad[at] ^= 0x20;
        assert!(decode(&bad, id).is_err(), "a flipped byte at {at} is detected");
    }
    // A body with a huge count but a valid checksum is refused before allocating.
    let mut forged = good[..64].to_vec();
    forged[56..64].copy_from_slice(&4u64.to_le_bytes());
    forged.extend_from_slice(&u32::MAX.to_le_bytes());
    let crc = crc32fast::hash(&forged);
    forged.extend_from_slice(&crc.to_le_bytes());
    assert!(decode(&forged, id).is_err());
}

/// Where the parts of a snapshot's body are: (string count, string offsets at, and per table
/// (entry count, key indexes at, entry offsets at)).
fn snapshot_layout(f: &[u8]) -> (usize, usize, Vec<(usize, usize, usize)>) {
    let u32_at = |at: usize| u32::from_le_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]) as usize;
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&f[at..at + 8]);
        u64::from_le_bytes(b) as usize
    };
    let n = u32_at(64);
    let str_offsets = 68;
    let mut at = str_offsets + 8 * (n + 1) + u64_at(str_offsets + 8 * n);
    let mut tables = Vec::new();
    for _ in 0..6 {
        let k = u32_at(at);
        let keys = at + 4;
        let offsets = keys + 4 * k;
        tables.push((k, keys, offsets));
        at = offsets + 8 * (k + 1) + u64_at(offsets + 8 * k);
    }
    (n, str_offsets, tables)
}

fn reseal(mut f: Vec<u8>) -> Vec<u8> {
    f.truncate(f.len() - 4);
    let crc = crc32fast::hash(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

#[test]
fn forged_snapshot_layouts_are_refused_even_with_a_valid_checksum() {
    use super::snapshot::{decode, decode_on, encode};
    let events = history_events();
    let st = fold_all(&events, events.len());
    let id = [5u8; 16];
    let good = encode(&st, id, Default::default());
    assert_eq!(decode(&reseal(good.clone()), id).as_ref(), Ok(&st), "resealing changes nothing");
    let (n, str_offsets, tables) = snapshot_layout(&good);
    assert!(n > 2 && tables.iter().all(|t| t.0 > 0), "every table of this history has entries");
    let mut swapped = 0;
    let refused = |f: Vec<u8>, what: &str| {
        let f = reseal(f);
        for threads in [false, true] {
            assert!(
                decode_on(Box::new(f.clone()), id, threads).is_err(),
                "{what} (threads: {threads})"
            );
        }
    };
    for (t, &(entries, keys, offsets)) in tables.iter().enumerate() {
        // Two keys swapped: a table's keys must ascend, or lookups would miss entries.
        if entries > 1 {
            let mut f = good.clone();
            let (a, b) = (f[keys..keys + 4].to_vec(), f[keys + 4..keys + 8].to_vec());
            f[keys..keys + 4].copy_from_slice(&b);
            f[keys + 4..keys + 8].copy_from_slice(&a);
            refused(f, &format!("table {t}: keys out of order"));
            swapped += 1;
        }
        // Entry 0 one byte longer: it has a trailing byte (or the table runs past its end).
        let mut f = good.clone();
        let at = offsets + 8;
        let mut o = [0u8; 8];
        o.copy_from_slice(&f[at..at + 8]);
        f[at..at + 8].copy_from_slice(&(u64::from_le_bytes(o) + 1).to_le_bytes());
        refused(f, &format!("table {t}: entry boundary moved"));
        // A key index past the string table.
        let mut f = good.clone();
        f[keys..keys + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        refused(f, &format!("table {t}: key out of range"));
    }
    assert!(swapped >= 3, "most tables have two entries or more");
    // The string table's offsets going backwards.
    let mut f = good.clone();
    f[str_offsets + 8..str_offsets + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    refused(f, "string offsets");
    // A table claiming four billion entries.
    let mut f = good.clone();
    f[tables[0].1 - 4..tables[0].1].copy_from_slice(&u32::MAX.to_le_bytes());
    refused(f, "a huge count");
}

#[test]
fn a_loaded_snapshot_reads_and_changes_like_the_state_it_was_taken_of() {
    // Entries stay in the snapshot until asked for; changing one copies it into memory. Every
    // view (get, iter, len, live runs, open requests) must agree with the state that was saved.
    use super::snapshot::{decode, encode};
    let events = history_events();
    let id = [5u8; 16];
    for k in 0..=events.len() {
        let at_k = fold_all(&events, k);
        let loaded = decode(&encode(&at_k, id, Default::default()), id)
            .unwrap_or_else(|e| panic!("prefix {k}: {e}"));
        assert_eq!(loaded.runs.len(), at_k.runs.len());
        assert_eq!(loaded.runs.iter().count(), at_k.runs.len(), "every run decodes");
        assert_eq!(loaded.catalog.len(), at_k.catalog.len());
        assert_eq!(loaded.catalog.iter().count(), at_k.catalog.len(), "every entry decodes");
        assert_eq!(loaded.requests.iter().count(), at_k.requests.len(), "every request decodes");
        assert_eq!(loaded.readers.iter().count(), at_k.readers.len(), "every reader list decodes");
        for (r, run) in at_k.runs.iter() {
            assert_eq!(loaded.runs.get(r), Some(run), "prefix {k}: run {r}");
        }
        assert_eq!(loaded.runs.get("no-such-run"), None);
        let ids = |v: Vec<&Run>| v.into_iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(loaded.live_runs()), ids(at_k.live_runs()), "prefix {k}: live runs");
        let rids = |v: Vec<&Request>| v.into_iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(rids(loaded.open_requests()), rids(at_k.open_requests()), "prefix {k}");
        let mut p1: Vec<_> = loaded.partitions().into_iter().cloned().collect();
        let p0: Vec<_> = at_k.partitions().into_iter().cloned().collect();
        p1.sort();
        assert_eq!(p1, p0, "prefix {k}: partitions");
    }
}

/// The texts of `part`'s stale reasons with their seqs (empty: fresh or not AVAILABLE).
fn reasons(st: &State, part: &str) -> Vec<(String, u64)> {
    st.stale(part)
        .map(|s| s.reasons.iter().map(|r| (r.text(), r.seq())).collect())
        .unwrap_or_default()
}

fn fold_events(l: &mut Log, events: Vec<BuildEvent>) -> u64 {
    for e in events {
        l.ok(e);
    }
    l.state.last_seq
}

#[test]
fn a_rebuilt_input_makes_its_readers_stale_once_the_new_instance_is_available() {
    let mut l = Log::new();
    let a1 = fold_events(&mut l, fresh_build("q1", "ra-1", "ajob", "a", &[], Some("1")));
    fold_events(&mut l, fresh_build("q2", "rb-1", "bjob", "b", &[("a", "ra-1")], Some("1")));
    fold_events(&mut l, fresh_build("q3", "rc-1", "cjob", "c", &[("b", "rb-1")], Some("1")));
    assert!(reasons(&l.state, "a").is_empty() && reasons(&l.state, "b").is_empty());
    assert!(reasons(&l.state, "c").is_empty());
    // Rebuilding a: while it builds, nothing is stale.
    let mut ev = fresh_build("q4", "ra-2", "ajob", "a", &[], Some("1"));
    let tail = ev.split_off(ev.len() - 2);
    fold_events(&mut l, ev);
    assert_eq!(l.state.partition_status("a"), P::PartitionBuilding);
    assert!(reasons(&l.state, "b").is_empty(), "an input being rebuilt makes nothing stale");
    let mut tail = tail.into_iter();
    l.ok(tail.next().unwrap());
    let a2 = l.state.last_seq;
    assert!(a2 > a1);
    assert_eq!(reasons(&l.state, "a"), vec![], "the new instance is fresh");
    assert_eq!(reasons(&l.state, "b"), vec![(format!("input a rebuilt at seq {a2}"), a2)]);
    assert_eq!(reasons(&l.state, "c"), vec![("upstream b is stale".to_string(), a2)]);
    assert_eq!(l.state.stale("b").map(|s| s.since), Some(a2));
    // b rebuilt from the new a: b and c's reason about b change, c stays stale.
    l.ok(tail.next().unwrap());
    let b2 =
        fold_events(&mut l, fresh_build("q5", "rb-2", "bjob", "b", &[("a", "ra-2")], Some("1")));
    let b2_seq = l.state.catalog.get("b").unwrap().available.last().unwrap().0;
    assert!(b2_seq < b2);
    assert!(reasons(&l.state, "b").is_empty());
    assert_eq!(reasons(&l.state, "c"), vec![(format!("input b rebuilt at seq {b2_seq}"), b2_seq)]);
    assert_eq!(l.state.stale("c").map(|s| s.since), Some(a2), "stale since it first became so");
}

#[test]
fn a_version_change_recorded_in_the_log_makes_what_the_job_built_stale() {
    let mut l = Log::new();
    fold_events(&mut l, fresh_build("q1", "ra-1", "ajob", "a", &[], None));
    fold_events(&mut l, fresh_build("q2", "rb-1", "bjob", "b", &[("a", "ra-1")], Some("")));
    fold_events(&mut l, fresh_build("q3", "rc-1", "cjob", "c", &[("b", "rb-1")], Some("1")));
    assert!(reasons(&l.state, "b").is_empty());
    // A skip in a later request records bjob's version "2": b (built with none) is stale, and c.
    let v2 = fold_events(&mut l, fresh_build("q4", "rx-1", "xjob", "x", &[], Some("1")));
    let b = refs(&["b"]);
    let mut s = ev::job("q5", "skip-b", "bjob", &b);
    s.version = Some("2".into());
    l.ok(ev::received("q5", &refs(&["b"]), false, ""));
    l.ok(ev::request("q5", B::BuildRequestPlanning, ""));
    l.ok(s.event(J::JobSkipped));
    let at = l.state.last_seq;
    assert!(at > v2);
    assert_eq!(reasons(&l.state, "b"), vec![("job version none -> 2".to_string(), at)]);
    assert_eq!(reasons(&l.state, "c"), vec![("upstream b is stale".to_string(), at)]);
    assert_eq!(
        reasons(&l.state, "a"),
        vec![],
        "a run without a recorded version is never compared"
    );
    assert_eq!(l.state.job_version("bjob"), Some(("2", at)));
    // Back to none: fresh again, downstream too.
    let mut s = ev::job("q5", "skip-b2", "bjob", &b);
    s.version = Some(String::new());
    l.ok(s.event(J::JobSkipped));
    assert!(reasons(&l.state, "b").is_empty());
    assert!(reasons(&l.state, "c").is_empty());
}

#[test]
fn a_taint_ranks_with_available_and_makes_readers_stale() {
    let mut l = Log::new();
    fold_events(&mut l, fresh_build("q1", "ra-1", "ajob", "a", &[], Some("1")));
    fold_events(&mut l, fresh_build("q2", "rb-1", "bjob", "b", &[("a", "ra-1")], Some("1")));
    // Only the AVAILABLE instance the catalog shows, and without a request.
    assert!(l.push(taint("a", "ra-9", "x")).is_err());
    assert!(l.push(ev::partition("q2", "a", P::PartitionTainted, "ra-1", "x")).is_err());
    assert!(l.push(taint("nope", "ra-1", "x")).is_err());
    l.ok(taint("a", "ra-1", "bad rows"));
    let t = l.state.last_seq;
    assert_eq!(l.state.partition_status("a"), P::PartitionTainted);
    assert_eq!(l.state.tainted("a"), Some(t));
    assert!(l.state.stale("a").is_none(), "a tainted partition is not AVAILABLE, so not stale");
    assert_eq!(reasons(&l.state, "b"), vec![("upstream a is tainted".to_string(), t)]);
    assert!(l.push(taint("a", "ra-1", "again")).is_err(), "a tainted partition is not AVAILABLE");
    // Rebuilt: AVAILABLE again, no longer tainted; b read the tainted instance, a newer exists.
    fold_events(&mut l, fresh_build("q3", "ra-2", "ajob", "a", &[], Some("1")));
    let a2 = l.state.catalog.get("a").unwrap().available.last().unwrap().0;
    assert_eq!(l.state.partition_status("a"), P::PartitionAvailable);
    assert_eq!(l.state.tainted("a"), None);
    assert_eq!(reasons(&l.state, "b"), vec![(format!("input a rebuilt at seq {a2}"), a2)]);
}
