//! Crash recovery: reconciling runs a dead engine left live, and resuming interrupted requests.
//!
//! The log is the truth and recovery is a fold over it: the writer that opens after a crash finds
//! every job run left SCHEDULED or RUNNING. It signals only processes that are provably that run's
//! (same host and boot, and the leader alive with the recorded start time, or a member of the
//! group whose environment names the run), waits until the group is gone, then records each run
//! JOB_FAILED (ENGINE_STOPPED, "engine stopped while running") with its BUILDING partitions FAILED,
//! in one commit. Nothing is ever left non-terminal that no live engine owns.

use std::time::{Duration, Instant};

use crate::events as ev;
use crate::proto::{EngineEventKind, JobFailureKind, JobStatus, PartitionStatus, ProcessInfo};
use crate::state::Run;
use crate::store::{CommitError, Store};
use crate::sys;

/// The message recorded on runs a crash interrupted.
pub const ENGINE_STOPPED: &str = "engine stopped while running";
/// How often a stopping group is checked for exit.
const STOP_POLL: Duration = Duration::from_millis(20);

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

/// Whether the process recorded for a run is provably still that run's, on this machine.
fn provably_ours(run: &Run, p: &ProcessInfo, host: &str, boot_id: &str) -> bool {
    if p.host != host || p.boot_id.is_empty() || p.boot_id != boot_id || p.pgid <= 1 {
        return false;
    }
    let leader_same = sys::start_ticks(p.pid).is_some_and(|t| t == p.start_time_ticks)
        && sys::process_group(p.pid) == Some(p.pgid);
    if leader_same {
        return true;
    }
    let entry = format!("DATABUILD_JOB_RUN_ID={}", run.id);
    sys::group_members(p.pgid).into_iter().any(|pid| sys::environ_has(pid, &entry))
}

/// Stops a process group: SIGTERM, up to `grace`, SIGKILL, and waits until it is gone.
pub fn stop_group(pgid: i32, grace: Duration) -> String {
    if !sys::group_exists(pgid) {
        return "already gone".to_string();
    }
    let _ = sys::signal_group(pgid, sys::SIGTERM);
    let deadline = Instant::now() + grace;
    while sys::group_exists(pgid)
        && !sys::group_members(pgid).is_empty()
        && Instant::now() < deadline
    {
        std::thread::sleep(STOP_POLL);
    }
    if !sys::group_exists(pgid) || sys::group_members(pgid).is_empty() {
        return "stopped with SIGTERM".to_string();
    }
    let _ = sys::signal_group(pgid, sys::SIGKILL);
    let hard = Instant::now() + Duration::from_secs(30);
    while !sys::group_members(pgid).is_empty() && Instant::now() < hard {
        std::thread::sleep(STOP_POLL);
    }
    "killed with SIGKILL".to_string()
}

/// Reconciles runs left live by a dead engine: stops their processes if provably theirs, and
/// records them failed. Also lists interrupted requests.
pub fn reconcile(store: &Store, grace: Duration) -> Result<Reconciled, CommitError> {
    let host = databuild_log::fs::host_name();
    let boot = sys::boot_id();
    let live: Vec<Run> = store.state().live_runs().into_iter().cloned().collect();
    let mut out = Reconciled::default();
    let mut events = Vec::new();
    for run in &live {
        let what = match (&run.status, &run.process) {
            (JobStatus::JobRunning, Some(p)) if provably_ours(run, p, &host, &boot) => {
                format!("process group {} {}", p.pgid, stop_group(p.pgid, grace))
            }
            (JobStatus::JobRunning, Some(p)) if p.host != host => {
                out.warnings.push(format!(
                    "job run {} was running on host {} (pid {}); it was not signalled from here, stop it there if it is still running",
                    run.id, p.host, p.pid
                ));
                "on another host, not signalled".to_string()
            }
            (JobStatus::JobRunning, Some(p)) => {
                format!("process {} gone (or not provably the run's)", p.pid)
            }
            _ => "never started".to_string(),
        };
        let targets: Vec<String> = run.targets.iter().map(|t| t.to_string()).collect();
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
        let msg = format!("recorded {} job runs interrupted by a crash as failed", out.runs.len());
        events.push(ev::engine(EngineEventKind::EngineRecovered, &msg, 0, 0));
        store.submit(events)?.wait()?;
    }
    out.interrupted = store.state().open_requests().into_iter().map(|r| r.id.to_string()).collect();
    Ok(out)
}
