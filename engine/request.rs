//! A build request from the user's refs to its end: look up, accept, plan, commit the plan, drive.
//!
//! Requested refs are looked up before anything is written, so bad input leaves the log untouched.
//! Planning failures after RECEIVED are recorded (FAILED per requested partition, then the
//! request FAILED) and reported as bad input. `analyze` runs the same planning read-only.

use std::sync::Arc;

use crate::driver::{Driver, DriverError, Note, Observer, Outcome, RequestEnd, Settings};
use crate::events as ev;
use crate::graph::{Graph, LookupError};
use crate::planner::{self, Plan, PlanError};
use crate::proto::{BuildRequestStatus, PartitionStatus};
use crate::state::State;
use crate::store::{CommitError, Store};

/// Why a build did not run to its end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A ref could not be looked up (nothing was written).
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// Planning failed (recorded in the log as a FAILED request).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A commit failed.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The driver stopped.
    #[error(transparent)]
    Driver(#[from] DriverError),
}

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildSpec {
    /// The refs asked for.
    pub refs: Vec<String>,
    /// Rebuild them even if AVAILABLE.
    pub force: bool,
}

/// Plans `refs` against a read-only state: what a build would run. Nothing is written.
pub async fn analyze(
    graph: &Graph,
    state: &State,
    refs: &[String],
    force: bool,
    jobs: usize,
) -> Result<Plan, PlanError> {
    planner::plan(graph, state, refs, force, jobs, None, None).await
}

/// Runs a new build request to its end.
pub async fn build(
    store: Arc<Store>,
    graph: Arc<Graph>,
    settings: Settings,
    observer: Arc<dyn Observer>,
    spec: BuildSpec,
) -> Result<(String, Outcome), BuildError> {
    for r in &spec.refs {
        graph.owner(r)?;
    }
    let mut refs: Vec<String> = Vec::with_capacity(spec.refs.len());
    for r in &spec.refs {
        if !refs.contains(r) {
            refs.push(r.clone());
        }
    }
    let req = store.new_id();
    let mut accepted = vec![ev::received(&req, &refs, spec.force, &graph.digest)];
    accepted.extend(
        refs.iter().map(|r| ev::partition(&req, r, PartitionStatus::PartitionRequested, "", "")),
    );
    accepted.push(ev::request(&req, BuildRequestStatus::BuildRequestPlanning, ""));
    // When every ref is already AVAILABLE (and not forced) the planner calls no job, so the
    // acceptance joins the plan commit: one frame, one fsync for a no-op build. Otherwise it is
    // submitted before planning, so other readers see the request PLANNING while `config` runs,
    // but not waited for: `config` calls have no side effects, and every later commit is
    // durable only after this one (seqs are durable in order).
    let all_available = !spec.force && {
        let state = store.state();
        refs.iter().all(|r| {
            state
                .catalog
                .get(r.as_str())
                .and_then(|c| c.shown())
                .is_some_and(|f| f.status == PartitionStatus::PartitionAvailable)
        })
    };
    // Signals are handled from the moment the request exists: a signal while `config` runs
    // records the request CANCELLED (and stops the calls) instead of killing the engine.
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigint = signal(SignalKind::interrupt()).map_err(DriverError::Setup)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(DriverError::Setup)?;
    let mut accept = if all_available {
        store.stage(accepted)?;
        None
    } else {
        Some(Box::pin(store.submit(accepted)?.durable()))
    };

    let config_logs = settings.logs_dir.join(&req).join("config");
    enum Stop {
        Planned(Result<Plan, PlanError>),
        LogFailed(databuild_log::AppendError),
        Signal(i32),
    }
    let stop = {
        let planning = planner::plan(
            &graph,
            &*store,
            &refs,
            spec.force,
            settings.jobs,
            Some(&req),
            Some(&config_logs),
        );
        tokio::pin!(planning);
        loop {
            let accepted = async {
                match accept.as_mut() {
                    Some(a) => a.as_mut().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                p = &mut planning => break Stop::Planned(p),
                r = accepted => {
                    accept = None;
                    // A log that failed (disk full, I/O error) ends the request at once.
                    if let Err(e) = r {
                        break Stop::LogFailed(e);
                    }
                }
                _ = sigint.recv() => break Stop::Signal(crate::sys::SIGINT),
                _ = sigterm.recv() => break Stop::Signal(crate::sys::SIGTERM),
            }
        }
        // The planning future is dropped here: its `config` calls are stopped.
    };
    let planned = match stop {
        Stop::Planned(p) => p,
        Stop::LogFailed(e) => return Err(BuildError::Commit(CommitError::Append(e))),
        Stop::Signal(sig) => return cancel_planning(&store, &req, &refs, &*observer, sig).await,
    };
    let plan = match planned {
        Ok(p) => p,
        Err(e) => {
            let message = format!("planning failed: {e}");
            let mut events: Vec<_> = refs
                .iter()
                .map(|r| ev::partition(&req, r, PartitionStatus::PartitionFailed, "", &message))
                .collect();
            events.push(ev::request(&req, BuildRequestStatus::BuildRequestFailed, &message));
            store.commit(events).await?;
            return Err(BuildError::Plan(e));
        }
    };
    let tasks = plan.nodes.len();
    let dropped = plan.dropped.clone();
    let (events, exec, skipped) = crate::driver::plan_commit(&store, &req, plan);
    // The plan commit is submitted by the driver, with the first jobs' JOB_RUNNING.
    observer.note(Note::Planned { request: req.clone(), tasks, skipped, dropped });
    let outcome = Driver::new(store, graph, settings, observer, vec![exec], events).run().await?;
    Ok((req, outcome))
}

/// Records a request cancelled by `signal` while it was being planned: its requested partitions
/// FAILED ("cancelled"), the request CANCELLED.
async fn cancel_planning(
    store: &Store,
    req: &str,
    refs: &[String],
    observer: &dyn Observer,
    signal: i32,
) -> Result<(String, Outcome), BuildError> {
    observer.note(Note::Cancelling { signal });
    let message = "cancelled by signal";
    let mut events: Vec<_> = refs
        .iter()
        .map(|r| ev::partition(req, r, PartitionStatus::PartitionFailed, "", "cancelled"))
        .collect();
    events.push(ev::request(req, BuildRequestStatus::BuildRequestCancelled, message));
    store.commit(events).await?;
    let end = RequestEnd {
        request: req.to_string(),
        status: BuildRequestStatus::BuildRequestCancelled,
        message: message.to_string(),
    };
    observer.note(Note::Done {
        request: req.to_string(),
        status: end.status,
        message: end.message.clone(),
    });
    Ok((req.to_string(), Outcome { requests: vec![end], signal: Some(signal) }))
}
