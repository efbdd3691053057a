//! The executor seam: how a job run is started, released, stopped, waited for and found again
//! after a crash. The engine loop knows runs, events and slots; an executor knows processes (or a
//! cluster's jobs). One implementation per kind: [`local::Local`] (a process group on this
//! machine) and [`fake::Fake`] (scripted, no processes, for tests).
//!
//! A run is **prepared held**: it exists (its handle can be recorded in JOB_RUNNING) but runs
//! nothing until [`Held::release`], which the engine calls only once JOB_RUNNING is durable.
//! Dropping the [`Held`] instead lets the run go without running anything.

pub mod fake;
pub mod local;
pub mod route;
pub mod slurm;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use crate::graph::Job;
use crate::proto::{ExecutorHandle, JobConfig, ProcessInfo};
use crate::state::Run;

/// What to run: one attempt of one task.
#[derive(Clone, Copy, Debug)]
pub struct RunSpec<'a> {
    /// The build request.
    pub request: &'a str,
    /// The run's id.
    pub run: &'a str,
    /// The job (entrypoint, graph `env`).
    pub job: &'a Job,
    /// The graph file's directory: the job's working directory.
    pub graph_dir: &'a Path,
    /// The config `exec` runs.
    pub config: &'a JobConfig,
    /// The config's outputs.
    pub outputs: &'a [String],
}

/// How to find a run again: recorded in its JOB_RUNNING.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handle {
    /// The executor's kind and id, as recorded.
    pub executor: ExecutorHandle,
    /// The local process, if the run is one.
    pub process: Option<ProcessInfo>,
}

/// A run that is started but held.
pub trait Held: Send {
    /// Lets the run start. Called only once its JOB_RUNNING is durable.
    fn release(self: Box<Self>) -> Result<(), String>;
}

/// How a run ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExitReport {
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Why it never started (the entrypoint could not be executed), if so.
    pub spawn_error: Option<String>,
    /// Why its end could not be observed, if so.
    pub wait_error: Option<String>,
    /// Whether processes it left behind were stopped.
    pub leftovers: bool,
}

/// A prepared run.
pub struct Prepared {
    /// Its handle.
    pub handle: Handle,
    /// Releases it (or, dropped, lets it go without running).
    pub held: Box<dyn Held>,
    /// Resolves when it has ended (released or let go).
    pub exit: Pin<Box<dyn Future<Output = ExitReport> + Send>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("handle", &self.handle).finish_non_exhaustive()
    }
}

/// How to stop a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Ask it to stop (SIGTERM to its group).
    Term,
    /// Stop it now (SIGKILL to its group).
    Kill,
}

/// Where a run's output is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputPaths {
    /// The run's directory.
    pub dir: PathBuf,
    /// Its stdout.
    pub stdout: PathBuf,
    /// Its stderr.
    pub stderr: PathBuf,
    /// The config it was given (JSON).
    pub stdin: PathBuf,
}

/// One kind of place where runs run.
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// The kind's name, recorded in JOB_RUNNING.
    fn kind(&self) -> &'static str;
    /// Starts a run held; `Err` if it cannot even be started (recorded SPAWN_FAILED).
    fn prepare(&self, spec: &RunSpec<'_>) -> Result<Prepared, String>;
    /// Signals a run.
    fn stop(&self, handle: &Handle, how: Stop);
    /// Whether a run that the engine has not yet seen end has in fact ended (an engine stalled
    /// past a run's deadline must not call a run that already exited TIMED_OUT).
    fn has_ended(&self, handle: &Handle) -> bool;
    /// After a crash: deals with a run recorded live (`handle`: the executor handle its
    /// JOB_RUNNING recorded). Local: stops it if it is provably still that run. Slurm: adopts it
    /// (waits for it to end) and returns its real outcome. Says what was done. Blocking.
    fn reconcile(&self, run: &Run, handle: Option<&ExecutorHandle>, grace: Duration) -> Reconciled;
    /// Where a run's output is kept.
    fn output(&self, run: &str) -> OutputPaths;
}

/// What reconciling one recorded run found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconciled {
    /// What was done, for the operator.
    pub what: String,
    /// A warning for the operator, if any (a process on another host, say).
    pub warning: Option<String>,
    /// The run's real end, when the executor knows it (a Slurm run that outlived the engine);
    /// `None`: the run was stopped, it is recorded "engine stopped while running".
    pub outcome: Option<ExitReport>,
}

/// Where the local layout keeps a run's output: `<logs>/<run>/{stdout,stderr,stdin.json}`.
pub fn output_paths(logs_dir: &Path, run: &str) -> OutputPaths {
    let dir = logs_dir.join(run);
    OutputPaths {
        stdout: dir.join("stdout"),
        stderr: dir.join("stderr"),
        stdin: dir.join("stdin.json"),
        dir,
    }
}
