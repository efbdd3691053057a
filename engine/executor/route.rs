//! The routing executor: each job's runs go where the graph file says (`[executor] kind`, a job's
//! own `executor`), so local and Slurm jobs mix in one build. Recorded runs are found again by the
//! kind their JOB_RUNNING names, whatever the graph file says today.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::local::Local;
use super::slurm::Slurm;
use super::{Executor, Handle, OutputPaths, Prepared, Reconciled, RunSpec, Stop};
use crate::graph::{ExecutorKind, Graph};
use crate::proto::ExecutorHandle;
use crate::state::Run;

/// Routes each run to the local or the Slurm executor.
#[derive(Debug)]
pub struct Route {
    /// Runs on this machine.
    pub local: Local,
    /// Runs on Slurm.
    pub slurm: Slurm,
    /// `[executor] kind`.
    pub default: ExecutorKind,
    /// Jobs whose kind differs from the default, by label.
    pub jobs: HashMap<String, ExecutorKind>,
}

impl Route {
    fn pick(&self, kind: ExecutorKind) -> &dyn Executor {
        match kind {
            ExecutorKind::Local => &self.local,
            ExecutorKind::Slurm => &self.slurm,
        }
    }

    fn by_handle(&self, handle: &ExecutorHandle) -> &dyn Executor {
        if handle.kind == "slurm" { &self.slurm } else { &self.local }
    }

    fn kind_of_label(&self, label: &str) -> ExecutorKind {
        self.jobs.get(label).copied().unwrap_or(self.default)
    }
}

impl Executor for Route {
    fn kind(&self) -> &'static str {
        self.default.name()
    }

    fn prepare(&self, spec: &RunSpec<'_>) -> Result<Prepared, String> {
        self.pick(spec.job.executor.unwrap_or(self.default)).prepare(spec)
    }

    fn stop(&self, handle: &Handle, how: Stop) {
        self.by_handle(&handle.executor).stop(handle, how);
    }

    fn has_ended(&self, handle: &Handle) -> bool {
        self.by_handle(&handle.executor).has_ended(handle)
    }

    fn reconcile(&self, run: &Run, handle: Option<&ExecutorHandle>, grace: Duration) -> Reconciled {
        match handle {
            Some(h) => self.by_handle(h).reconcile(run, handle, grace),
            // No executor recorded (SCHEDULED, or a log from before executors were recorded):
            // the job's kind today says where a held submission could be.
            None => self.pick(self.kind_of_label(&run.job_label)).reconcile(run, None, grace),
        }
    }

    fn output(&self, run: &str) -> OutputPaths {
        // Both executors keep the same layout.
        self.local.output(run)
    }
}

/// The executor the engine uses for `graph`: local and Slurm runs routed per job, output under
/// `logs_dir`. The one place that builds it (the CLI and the server call this).
pub fn for_graph(graph: &Graph, logs_dir: &Path) -> Arc<dyn Executor> {
    // The batch script is this binary's `__slurm-run`.
    let wrapper = std::env::var_os("DATABUILD_SLURM_WRAPPER")
        .map(Into::into)
        .or_else(|| std::env::current_exe().ok())
        .unwrap_or_else(|| "databuild".into());
    let jobs = graph
        .jobs
        .iter()
        .filter_map(|j| {
            j.executor.filter(|k| *k != graph.executor.kind).map(|k| (j.label.clone(), k))
        })
        .collect();
    Arc::new(Route {
        local: Local { logs_dir: logs_dir.to_path_buf() },
        slurm: Slurm::new(logs_dir.to_path_buf(), graph.executor.clone(), wrapper),
        default: graph.executor.kind,
        jobs,
    })
}
