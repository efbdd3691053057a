//! A build request from the user's refs to its end: look up, accept, plan, commit the plan, drive.
//!
//! Requested refs are looked up before anything is written, so bad input leaves the log untouched.
//! Planning failures after RECEIVED are recorded (FAILED per requested partition, then the
//! request FAILED) and reported as bad input. `analyze` runs the same planning read-only.

use std::sync::Arc;

use crate::driver::{Driver, DriverError, Note, Observer, Outcome, Settings};
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
    if all_available {
        store.stage(accepted)?;
    } else {
        drop(store.submit(accepted)?);
    }

    let config_logs = settings.logs_dir.join(&req).join("config");
    let planned = planner::plan(
        &graph,
        &*store,
        &refs,
        spec.force,
        settings.jobs,
        Some(&req),
        Some(&config_logs),
    )
    .await;
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
