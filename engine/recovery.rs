//! Crash recovery: reconciling runs a dead engine left live, and resuming interrupted requests.
//!
//! The log is the truth and recovery is a fold over it: the writer that opens after a crash finds
//! every job run left SCHEDULED or RUNNING. It signals only processes that are provably that run's
//! (same host and boot, and the leader alive with the recorded start time, or a member of the
//! group whose environment names the run), waits until the group is gone, then records each run
//! JOB_FAILED (ENGINE_STOPPED, "engine stopped while running") with its BUILDING partitions FAILED,
//! in one commit. Nothing is ever left non-terminal that no live engine owns.

use std::time::Duration;

use crate::events as ev;
use crate::proto::{EngineEventKind, JobFailureKind, JobStatus, PartitionStatus};
use crate::state::Run;
use crate::store::{CommitError, Store};

/// The message recorded on runs a crash interrupted.
pub const ENGINE_STOPPED: &str = "engine stopped while running";

/// What reconciliation found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Runs recorded as failed: (run id, what was done about its process).
    pub runs: Vec<(String, String)>,
    /// Requests left non-terminal (to be resumed by `recover`), oldest first.
    pub interrupted: Vec<String>,
    /// Things the operator should know (processes on other hosts, unproven pids).
    pub warnings: Vec<String>,
}

/// Reconciles runs left live by a dead engine: stops their processes if provably theirs, and
/// records them failed. Also lists interrupted requests.
pub fn reconcile(
    store: &Store,
    executor: &dyn crate::executor::Executor,
    grace: Duration,
) -> Result<Reconciled, CommitError> {
    reconcile_runs(store, executor, grace, Outlive::Adopt)
}

/// What an engine that stops on purpose (`serve` on SIGTERM) does with its runs (CONTRACT §9):
/// local runs are stopped and recorded failed as after a crash; runs that outlive their engine
/// (Slurm runs past their JOB_RUNNING) are left running, for the next engine to adopt.
pub fn stop_runs(
    store: &Store,
    executor: &dyn crate::executor::Executor,
    grace: Duration,
) -> Result<Reconciled, CommitError> {
    reconcile_runs(store, executor, grace, Outlive::Leave)
}

/// Runs that outlive their engine: adopted (reconcile) or left alone (a deliberate stop).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outlive {
    Adopt,
    Leave,
}

fn reconcile_runs(
    store: &Store,
    executor: &dyn crate::executor::Executor,
    grace: Duration,
    outlive: Outlive,
) -> Result<Reconciled, CommitError> {
    let live: Vec<Run> = store.state().live_runs().into_iter().cloned().collect();
    let mut out = Reconciled::default();
    let mut events = Vec::new();
    let reader = if live.is_empty() { None } else { store.reader().ok() };
    for run in &live {
        // The executor handle its JOB_RUNNING recorded, and the config its SCHEDULED holds.
        let recorded = |seq: u64| {
            reader.as_ref().and_then(|r| crate::store::event_at(r, seq).ok().flatten()).and_then(
                |e| match e.event_type {
                    Some(crate::proto::build_event::EventType::JobEvent(j)) => Some(j),
                    _ => None,
                },
            )
        };
        let running = run.running.and_then(|(seq, _)| recorded(seq));
        let handle = running.as_ref().and_then(|j| j.executor.clone());
        if outlive == Outlive::Leave && handle.as_ref().is_some_and(|h| h.slurm.is_some()) {
            continue;
        }
        let found = executor.reconcile(run, handle.as_ref(), grace);
        out.warnings.extend(found.warning);
        let what = found.what;
        let targets: Vec<String> = run.targets.iter().map(|t| t.to_string()).collect();
        if let Some(report) = found.outcome {
            let config = recorded(run.first_seq).and_then(|j| j.config);
            let started = run.running.map_or(0, |(_, ts)| ts / 1_000_000_000);
            events.extend(adopted_outcome(store, run, &targets, config, started, report));
            out.runs.push((run.id.to_string(), what));
            continue;
        }
        let mut j = ev::job(&run.request, &run.id, &run.job_label, &targets);
        j.failure = Some(JobFailureKind::JobFailureEngineStopped);
        j.message = ENGINE_STOPPED.to_string();
        j.attempt = run.attempt;
        events.push(j.event(JobStatus::JobFailed));
        let state = store.state();
        for t in &run.targets {
            let building = state
                .key(&run.request, t)
                .is_some_and(|k| k.status == PartitionStatus::PartitionBuilding);
            if building {
                events.push(ev::partition(
                    &run.request,
                    t,
                    PartitionStatus::PartitionFailed,
                    &run.id,
                    ENGINE_STOPPED,
                ));
            }
        }
        out.runs.push((run.id.to_string(), what));
    }
    if !events.is_empty() {
        let msg = format!("reconciled {} job runs a crash left live", out.runs.len());
        events.push(ev::engine(EngineEventKind::EngineRecovered, &msg, 0, 0));
        store.submit(events)?.wait()?;
    }
    out.interrupted = store.state().open_requests().into_iter().map(|r| r.id.to_string()).collect();
    Ok(out)
}

/// The events that record the real end of a run that outlived its engine (a Slurm job adopted,
/// or one that ended while no engine ran): COMPLETED with its manifest and its partitions
/// AVAILABLE if it exited 0, else FAILED with why.
fn adopted_outcome(
    store: &Store,
    run: &Run,
    targets: &[String],
    config: Option<crate::proto::JobConfig>,
    started: i64,
    report: crate::executor::ExitReport,
) -> Vec<crate::proto::BuildEvent> {
    use crate::proto::{JobLabel, PartitionManifest, Task};
    let state = store.state();
    let building: Vec<&str> = run
        .targets
        .iter()
        .filter(|t| {
            state
                .key(&run.request, t)
                .is_some_and(|k| k.status == PartitionStatus::PartitionBuilding)
        })
        .map(|t| t.as_ref())
        .collect();
    let mut j = ev::job(&run.request, &run.id, &run.job_label, targets);
    j.attempt = run.attempt;
    let ok = report.code == Some(0) && report.spawn_error.is_none() && report.wait_error.is_none();
    let mut events = Vec::new();
    if ok {
        let ended = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        j.manifests = vec![PartitionManifest {
            outputs: targets.iter().map(|o| ev::pref(o)).collect(),
            inputs: Vec::new(),
            start_time: started,
            end_time: ended,
            task: Some(Task { job: Some(JobLabel { label: run.job_label.to_string() }), config }),
            job_run_id: run.id.to_string(),
            dep_type: 0,
        }];
        j.message = "adopted after an engine crash".to_string();
        events.push(j.event(JobStatus::JobCompleted));
        for t in building {
            events.push(ev::partition(
                &run.request,
                t,
                PartitionStatus::PartitionAvailable,
                &run.id,
                "",
            ));
        }
        return events;
    }
    let (kind, message) =
        match (&report.spawn_error, report.code, report.signal, &report.wait_error) {
            (Some(why), ..) => (JobFailureKind::JobFailureSpawnFailed, why.clone()),
            (None, Some(c), ..) => {
                (JobFailureKind::JobFailureExitNonzero, format!("exited with code {c}"))
            }
            (None, None, Some(s), _) => {
                (JobFailureKind::JobFailureSignaled, format!("killed by signal {s}"))
            }
            (None, None, None, why) => (
                JobFailureKind::JobFailureUnknown,
                why.clone().unwrap_or_else(|| "ended, outcome unknown".into()),
            ),
        };
    j.failure = Some(kind);
    j.message = message.clone();
    j.exit_code = report.code.unwrap_or(0);
    j.signal = report.signal.unwrap_or(0);
    events.push(j.event(JobStatus::JobFailed));
    for t in building {
        events.push(ev::partition(
            &run.request,
            t,
            PartitionStatus::PartitionFailed,
            &run.id,
            &message,
        ));
    }
    events
}

/// What resuming interrupted requests prepared: executions for the driver (their first events
/// already staged in the store), and requests that must be planned again.
#[derive(Debug, Default)]
pub struct Resume {
    /// Executions to drive, oldest request first.
    pub execs: Vec<crate::engine::Exec>,
    /// Requests interrupted before their plan was recorded: (id, requested refs, force).
    pub replan: Vec<(String, Vec<String>, bool)>,
    /// Requests closed without running anything (a cancellation the crash interrupted).
    pub closed: Vec<(String, crate::proto::BuildRequestStatus)>,
    /// Things the operator should know.
    pub warnings: Vec<String>,
}

/// Why a request could not be resumed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeError {
    /// A commit failed.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The recorded plan could not be read.
    #[error("cannot read the recorded plan of build request {request}: {why}")]
    Plan {
        /// The request.
        request: String,
        /// Why.
        why: String,
    },
}

/// Prepares every interrupted request for the driver (DESIGN.md §4.3). Call after [`reconcile`].
///
/// - A request that holds JOB_CANCELLED: its cancellation is finished (CANCELLED).
/// - RECEIVED or PLANNING: it is planned again, with its recorded `force` (see `replan`).
/// - ANALYSIS_COMPLETED or EXECUTING: its recorded JobGraph is reused; config is never called.
///   A task whose outputs are all AVAILABLE by facts the request may rely on (any fact; with
///   `force`, only facts newer than its RECEIVED) is done if this request built them, else
///   delegated to the request that did, with JOB_SKIPPED. A task whose last run was stopped by
///   the crash gets a new run under the same attempt number the first time; a task stopped by
///   crashes again counts each later crash as an attempt (a job that kills the engine, or
///   gets it OOM-killed, is not re-run forever) and fails once its retries are spent. Genuine
///   failures stay failures. A
///   task whose outputs an older resumed request is building is actively delegated to it.
pub fn prepare_resume(
    store: &Store,
    jobs: &crate::graph::Graph,
    live: &std::collections::HashSet<String>,
) -> Result<Resume, ResumeError> {
    let graph_digest = jobs.digest.as_str();
    use crate::engine::Exec;
    use crate::planner::Plan;
    use crate::proto::BuildRequestStatus as B;
    use crate::scheduler::NodeState;

    let mut out = Resume::default();
    let requests: Vec<crate::state::Request> =
        store.state().open_requests().into_iter().cloned().collect();
    let reader = store
        .reader()
        .map_err(|e| ResumeError::Plan { request: String::new(), why: e.to_string() })?;
    // Refs some earlier resumed request will build: (ref -> request).
    let mut building: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for r in requests {
        let req = r.id.to_string();
        if live.contains(&req) {
            continue;
        }
        if !r.graph_digest.is_empty() && r.graph_digest != graph_digest {
            out.warnings.push(format!(
                "build request {req} was planned with a different databuild.toml; it resumes with its recorded plan and today's job definitions"
            ));
        }
        if r.cancelling {
            let mut events = close_open(store, &req, "cancelled");
            events.push(ev::request(
                &req,
                B::BuildRequestCancelled,
                "cancelled by signal (finished by recover)",
            ));
            store.stage(events)?;
            out.closed.push((req, B::BuildRequestCancelled));
            continue;
        }
        match r.status {
            B::BuildRequestReceived | B::BuildRequestPlanning => {
                if r.status == B::BuildRequestReceived {
                    store.stage(vec![ev::request(&req, B::BuildRequestPlanning, "")])?;
                }
                out.replan.push((
                    req,
                    r.requested.iter().map(|p| p.to_string()).collect(),
                    r.force,
                ));
                continue;
            }
            B::BuildRequestAnalysisCompleted => {
                store.stage(vec![ev::request(&req, B::BuildRequestExecuting, "")])?;
            }
            _ => {}
        }
        let Some(plan_seq) = r.plan_seq else {
            return Err(ResumeError::Plan { request: req, why: "no JobGraphEvent".into() });
        };
        let graph = match crate::store::event_at(&reader, plan_seq) {
            Ok(Some(crate::proto::BuildEvent {
                event_type: Some(crate::proto::build_event::EventType::JobGraphEvent(g)),
                ..
            })) => g.job_graph.unwrap_or_default(),
            Ok(_) => {
                return Err(ResumeError::Plan {
                    request: req,
                    why: format!("seq {plan_seq} is not its JobGraphEvent"),
                });
            }
            Err(e) => return Err(ResumeError::Plan { request: req, why: e.to_string() }),
        };
        let plan = Plan::from_job_graph(&graph)
            .map_err(|e| ResumeError::Plan { request: req.clone(), why: e.to_string() })?;
        let mut exec = Exec::new(req.clone(), plan);
        let mut events = Vec::new();
        {
            let state = store.state();
            // The runs of this request, by task (a task is identified by its first output).
            let mut last_run: Vec<Option<&Run>> = vec![None; exec.plan.nodes.len()];
            let mut crash_stops: Vec<u32> = vec![0; exec.plan.nodes.len()];
            for id in &r.runs {
                let Some(run) = state.runs.get(&**id) else { continue };
                if run.status == JobStatus::JobSkipped {
                    continue;
                }
                if let Some(&n) = run.targets.first().and_then(|t| exec.plan.producer.get(&**t)) {
                    last_run[n] = Some(run);
                    if run.status == JobStatus::JobFailed
                        && run.failure == JobFailureKind::JobFailureEngineStopped
                    {
                        crash_stops[n] += 1;
                    }
                }
            }
            let relied_on = |p: &str| {
                state.catalog.get(p).and_then(|c| c.shown()).is_some_and(|f| {
                    f.status == PartitionStatus::PartitionAvailable
                        && (!r.force || f.seq > r.received_seq)
                })
            };
            let mut skipped: std::collections::BTreeMap<String, Vec<String>> =
                std::collections::BTreeMap::new();
            for (n, &run) in last_run.iter().enumerate() {
                let node = &exec.plan.nodes[n];
                if node.outputs.iter().all(|o| relied_on(o))
                    || run.is_some_and(|x| x.status == JobStatus::JobCompleted)
                {
                    let ours = node.outputs.iter().all(|o| {
                        state
                            .catalog
                            .get(o.as_str())
                            .and_then(|c| c.shown())
                            .is_some_and(|f| *f.build_request_id == *req)
                    });
                    if !ours {
                        for o in &node.outputs {
                            let f = state.catalog.get(o.as_str()).and_then(|c| c.shown());
                            let (by, seq, by_run) =
                                f.map_or((String::new(), 0, String::new()), |f| {
                                    (
                                        f.build_request_id.to_string(),
                                        f.seq,
                                        f.job_run_id.to_string(),
                                    )
                                });
                            let open = state.key(&req, o).is_none_or(|k| {
                                !matches!(
                                    k.status,
                                    PartitionStatus::PartitionDelegated
                                        | PartitionStatus::PartitionAvailable
                                )
                            });
                            if open && !by.is_empty() {
                                let msg =
                                    format!("AVAILABLE since seq {seq} (built by run {by_run})");
                                events.extend(ev::delegated(&req, o, &by, &msg));
                                skipped.entry(node.job.clone()).or_default().push(o.clone());
                            }
                        }
                    }
                    exec.nodes[n] = NodeState::Done;
                    continue;
                }
                match run {
                    Some(x)
                        if x.status == JobStatus::JobFailed
                            && x.failure != JobFailureKind::JobFailureEngineStopped =>
                    {
                        exec.nodes[n] = NodeState::Failed;
                    }
                    Some(x) if x.status == JobStatus::JobCancelled => {
                        exec.nodes[n] = NodeState::Cancelled
                    }
                    Some(x) => {
                        // Stopped by a crash. The first crash costs no retry; each later one
                        // counts as an attempt.
                        let next =
                            if crash_stops[n] <= 1 { x.attempt.max(1) } else { x.attempt + 1 };
                        let node = &exec.plan.nodes[n];
                        let retries = jobs.job(&node.job).map_or(0, |j| jobs.jobs[j].retries);
                        if next > 1 + retries {
                            exec.nodes[n] = NodeState::Failed;
                            exec.failures.push(format!(
                                "job {} for {} was running each of the {} times the engine died (last run {}); it is not run again: it may be what kills the engine (out of memory, or a signal to its parent)",
                                node.job,
                                node.outputs.first().map_or("", String::as_str),
                                crash_stops[n],
                                x.id
                            ));
                        } else {
                            exec.next_attempt[n] = next;
                        }
                    }
                    None => {}
                }
            }
            // Tasks this request had delegated to another live request and that are not AVAILABLE:
            // they wait again if that request is resumed alongside to build them, else they fail
            // here too, as they would have had it failed.
            for n in 0..exec.plan.nodes.len() {
                if exec.nodes[n] != NodeState::Waiting {
                    continue;
                }
                let outs = &exec.plan.nodes[n].outputs;
                let delegated: Vec<(String, String)> = outs
                    .iter()
                    .filter_map(|o| {
                        let k = state.key(&req, o)?;
                        (k.status == PartitionStatus::PartitionDelegated)
                            .then(|| (o.clone(), delegate_named(&k.message).to_string()))
                    })
                    .collect();
                let Some(to) = delegated.first().map(|d| d.1.clone()) else { continue };
                if outs.iter().all(|o| building.get(o) == Some(&to)) {
                    exec.nodes[n] = NodeState::Delegated { to };
                    continue;
                }
                let why = format!("upstream {} failed in build {to}", outs[0]);
                for (o, _) in &delegated {
                    events.push(ev::partition(&req, o, PartitionStatus::PartitionFailed, "", &why));
                }
                exec.nodes[n] = NodeState::Failed;
                exec.failures.push(why);
            }
            // Tasks downstream of a genuine failure were marked FAILED with it: they stay blocked.
            for n in 0..exec.plan.nodes.len() {
                if exec.nodes[n] == NodeState::Waiting
                    && exec.plan.nodes[n]
                        .deps
                        .iter()
                        .any(|&d| matches!(exec.nodes[d], NodeState::Failed | NodeState::Blocked))
                {
                    exec.nodes[n] = NodeState::Blocked;
                }
            }
            // Active delegation: an older resumed request builds these outputs.
            for n in 0..exec.plan.nodes.len() {
                if exec.nodes[n] != NodeState::Waiting {
                    continue;
                }
                let outs = &exec.plan.nodes[n].outputs;
                if let Some(to) = outs.first().and_then(|o| building.get(o)).cloned()
                    && outs.iter().all(|o| building.get(o) == Some(&to))
                {
                    for o in outs {
                        let msg = format!("being built by build request {to}, resumed alongside");
                        events.extend(ev::delegated(&req, o, &to, &msg));
                    }
                    exec.nodes[n] = NodeState::Delegated { to };
                }
            }
            for (label, refs) in skipped {
                let id = store.new_id();
                let mut j = ev::job(&req, &id, &label, &refs);
                j.message = "skipped on resume: already AVAILABLE".to_string();
                events.push(j.event(JobStatus::JobSkipped));
            }
        }
        store.stage(events)?;
        // Tasks ready now are scheduled in the same commit.
        let mut scheduled = Vec::new();
        {
            let state = store.state();
            for n in 0..exec.plan.nodes.len() {
                if crate::scheduler::is_ready(&state, &exec.plan, &exec.nodes, n) {
                    let run = store.new_id();
                    let node = &exec.plan.nodes[n];
                    let mut j = ev::job(&req, &run, &node.job, &node.outputs);
                    j.config = Some(node.config.clone());
                    j.attempt = exec.next_attempt[n];
                    scheduled.push(j.event(JobStatus::JobScheduled));
                    exec.nodes[n] = NodeState::Queued { run, attempt: exec.next_attempt[n] };
                }
            }
        }
        store.stage(scheduled)?;
        for (n, node) in exec.plan.nodes.iter().enumerate() {
            if matches!(exec.nodes[n], NodeState::Waiting | NodeState::Queued { .. }) {
                for o in &node.outputs {
                    building.entry(o.clone()).or_insert_with(|| req.clone());
                }
            }
        }
        out.execs.push(exec);
    }
    Ok(out)
}

/// The request a DELEGATED partition waits for, from the message the engine recorded with it
/// (at planning: "delegated to active build R"; on resume: "being built by build request R,
/// resumed alongside").
fn delegate_named(message: &str) -> &str {
    if let Some(r) = message.strip_prefix("delegated to active build ") {
        return r;
    }
    if let Some(rest) = message.strip_prefix("being built by build request ") {
        return rest.split(',').next().unwrap_or(rest);
    }
    message
}

fn close_open(store: &Store, req: &str, why: &str) -> Vec<crate::proto::BuildEvent> {
    crate::scheduler::closing_events(&store.state(), req, why)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_delegate_is_read_from_either_message_the_engine_writes() {
        assert_eq!(super::delegate_named("delegated to active build R1"), "R1");
        assert_eq!(
            super::delegate_named("being built by build request R2, resumed alongside"),
            "R2"
        );
    }
}
