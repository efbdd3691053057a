//! The driver: runs build requests to their end.
//!
//! One loop owns the execution state. Job exits, release acknowledgements, timers and signals
//! arrive as [`Msg`] variants; each handler decides (with the pure functions of
//! [`crate::scheduler`]), submits one commit through the store, and defers any action that depends
//! on that commit (releasing a job, reporting an outcome) until it is durable. Nothing polls.
//!
//! ```text
//!  Waiting ──ready──▶ Queued (JOB_SCHEDULED) ──slot──▶ spawn shim, JOB_RUNNING + BUILDING
//!                                                        │ durable
//!                                                        ▼
//!                       release: the shim execs the job ──exit──▶ JOB_COMPLETED + AVAILABLE
//!                                                                  (+ next JOB_SCHEDULEDs)
//!                                                      └─fail──▶ retry: JOB_FAILED + JOB_SCHEDULED
//!                                                                 final: JOB_FAILED + FAILED,
//!                                                                        downstream FAILED
//! ```
//! Cancellation (SIGINT/SIGTERM): queued runs get JOB_CANCELLED at once, unreleased shims are let
//! go without running, running groups get SIGTERM and SIGKILL after a grace period (at once on a
//! second signal); each stopped run gets JOB_CANCELLED and its partitions FAILED ("cancelled").

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use crate::events as ev;
use crate::graph::Graph;
use crate::planner::Plan;
use crate::proto::{
    BuildEvent, BuildRequestStatus, JobConfig, JobFailureKind, JobLabel, JobStatus,
    PartitionManifest, PartitionStatus, ProcessInfo, Task,
};
use crate::scheduler::{self, NodeState};
use crate::store::{CommitError, Pending, Store};
use crate::sys;

/// Grace between SIGTERM and SIGKILL when a job times out or is cancelled.
pub const KILL_GRACE: Duration = Duration::from_secs(10);
/// Capacity of the driver's message channel. Senders are job waiters and commit waiters, one
/// message each, so this only bounds bursts.
const CHANNEL_CAPACITY: usize = 1024;

/// What the driver needs besides the store and the graph.
#[derive(Clone, Debug)]
pub struct Settings {
    /// At most this many jobs run at once.
    pub jobs: usize,
    /// The databuild executable (it doubles as the job shim).
    pub shim: PathBuf,
    /// `.databuild/logs/`.
    pub logs_dir: PathBuf,
    /// Time between SIGTERM and SIGKILL.
    pub grace: Duration,
}

/// What happened, for progress display.
#[derive(Clone, Debug)]
pub enum Note {
    /// A request was planned.
    Planned {
        /// Request id.
        request: String,
        /// Tasks to run.
        tasks: usize,
        /// Partitions skipped as AVAILABLE.
        skipped: usize,
        /// Configs `config` answered that nothing needs, dropped from the plan.
        dropped: Vec<crate::planner::Dropped>,
    },
    /// A job run started (its JOB_RUNNING is durable and it was released).
    Started {
        /// Job label.
        job: String,
        /// Run id.
        run: String,
        /// Its outputs.
        outputs: Vec<String>,
        /// Attempt number.
        attempt: u32,
    },
    /// A job run ended (its terminal event is durable).
    Finished {
        /// Job label.
        job: String,
        /// Run id.
        run: String,
        /// Its outputs.
        outputs: Vec<String>,
        /// Final status.
        status: JobStatus,
        /// Why, if it failed.
        message: String,
        /// Wall time from release to exit.
        duration: Duration,
        /// Whether another attempt follows.
        retrying: bool,
    },
    /// A signal arrived; the build is being cancelled.
    Cancelling {
        /// The signal.
        signal: i32,
    },
    /// Something the user should know.
    Warning(String),
    /// A request ended (its terminal event is durable).
    Done {
        /// Request id.
        request: String,
        /// Its status.
        status: BuildRequestStatus,
        /// Its message.
        message: String,
    },
}

/// Receives progress notes.
pub trait Observer: Send + Sync {
    /// Called for each note, in order.
    fn note(&self, note: Note);
}

/// Discards notes.
#[derive(Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {
    fn note(&self, _: Note) {}
}

/// Why the driver stopped early. The log is left consistent; the next writer reconciles.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// A commit failed: the log is unusable (I/O error) or the engine proposed an illegal event.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The driver could not set up (signals).
    #[error("cannot start the build driver: {0}")]
    Setup(std::io::Error),
    /// The log failed under a running build: every job was stopped.
    #[error("the event log failed during the build, every job was stopped: {0}")]
    Fatal(String),
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestEnd {
    /// Request id.
    pub request: String,
    /// Terminal status.
    pub status: BuildRequestStatus,
    /// Its message.
    pub message: String,
}

/// The outcome of a driver run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Each request's end.
    pub requests: Vec<RequestEnd>,
    /// The signal that cancelled the run, if any.
    pub signal: Option<i32>,
}

/// One request being executed.
#[derive(Debug)]
pub struct Exec {
    /// Request id.
    pub request: String,
    /// Its plan.
    pub plan: Plan,
    /// Where each task stands.
    pub nodes: Vec<NodeState>,
    /// The attempt number each task's next run gets (a run stopped by the first crash is re-run
    /// under the same attempt number; later crash-stopped runs count as attempts).
    pub next_attempt: Vec<u32>,
    finished: bool,
    /// Why tasks failed, first first (the request's final message names the first).
    pub failures: Vec<String>,
}

impl Exec {
    /// An execution of `plan` for `request`, every task waiting.
    pub fn new(request: String, plan: Plan) -> Exec {
        let n = plan.nodes.len();
        Exec {
            request,
            plan,
            nodes: vec![NodeState::Waiting; n],
            next_attempt: vec![1; n],
            finished: false,
            failures: Vec::new(),
        }
    }
}

/// The facts of one failed run, all recorded in its JOB_FAILED.
struct Failure {
    kind: JobFailureKind,
    code: i32,
    signal: i32,
    message: String,
    duration: Duration,
}

impl Failure {
    fn spawn(message: String) -> Failure {
        Failure {
            kind: JobFailureKind::JobFailureSpawnFailed,
            code: 0,
            signal: 0,
            message,
            duration: Duration::ZERO,
        }
    }
}

/// A job run with a live process (or a shim waiting to be released).
struct Live {
    exec: usize,
    node: usize,
    run: String,
    attempt: u32,
    pgid: i32,
    /// The leader's start time (clock ticks since boot): tells it from a later process that
    /// reuses its pid.
    start_ticks: Option<u64>,
    ready: Option<std::io::PipeWriter>,
    released: Option<(SystemTime, Instant)>,
    timed_out: bool,
    stopping: bool,
    spawn_error: PathBuf,
    inputs: Vec<PartitionManifest>,
}

/// Messages into the driver loop.
#[derive(Debug)]
enum Msg {
    /// JOB_RUNNING of this run is durable: release it.
    Released(String),
    /// The run's process exited.
    Exited(String, std::io::Result<std::process::ExitStatus>),
    /// The run's timeout expired.
    Timeout(String),
    /// The grace after SIGTERM expired.
    Kill(String),
    /// A note whose commit is now durable.
    Report(Note),
    /// A commit is durable: what was waiting for it.
    Committed(Vec<Msg>),
    /// A commit failed after submission.
    CommitFailed(String),
}

/// Runs executions to their end.
pub struct Driver {
    store: Arc<Store>,
    graph: Arc<Graph>,
    settings: Settings,
    observer: Arc<dyn Observer>,
    execs: Vec<Exec>,
    live: HashMap<String, Live>,
    queue: VecDeque<(usize, usize)>,
    running_by_job: HashMap<String, usize>,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    waiting: usize,
    /// What to do once the events staged in this turn are durable (they become one commit, one
    /// fsync, however many decisions made them).
    staged_then: Vec<Msg>,
    cancelling: Option<i32>,
    fatal: Option<String>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("execs", &self.execs.len())
            .field("live", &self.live.len())
            .finish()
    }
}

/// This host's name and boot id, read once per process (they do not change while it runs).
fn this_machine() -> (&'static str, &'static str) {
    static MACHINE: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    let (h, b) = MACHINE.get_or_init(|| (databuild_log::fs::host_name(), sys::boot_id()));
    (h, b)
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Driver {
    /// A driver for `execs`. Tasks already marked (e.g. Queued with a run id by the plan commit)
    /// keep their state. `first` are events not yet submitted (the plan commit): they join the
    /// driver's first commit, with the JOB_RUNNING of the jobs it launches at once.
    pub fn new(
        store: Arc<Store>,
        graph: Arc<Graph>,
        settings: Settings,
        observer: Arc<dyn Observer>,
        execs: Vec<Exec>,
        first: Vec<BuildEvent>,
    ) -> Driver {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let mut fatal = None;
        if let Err(e) = store.stage(first) {
            fatal = Some(e.to_string());
        }
        let mut queue = VecDeque::new();
        for (e, x) in execs.iter().enumerate() {
            for (n, s) in x.nodes.iter().enumerate() {
                if matches!(s, NodeState::Queued { .. }) {
                    queue.push_back((e, n));
                }
            }
        }
        Driver {
            store,
            graph,
            settings,
            observer,
            execs,
            live: HashMap::new(),
            queue,
            running_by_job: HashMap::new(),
            tx,
            rx,
            waiting: 0,
            staged_then: Vec::new(),
            cancelling: None,
            fatal,
        }
    }

    /// Runs until every execution has ended and its final commit is durable.
    pub async fn run(mut self) -> Result<Outcome, DriverError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigint = signal(SignalKind::interrupt()).map_err(DriverError::Setup)?;
        let mut sigterm = signal(SignalKind::terminate()).map_err(DriverError::Setup)?;
        self.pump();
        self.flush();
        while !(self.execs.iter().all(|x| x.finished) && self.live.is_empty() && self.waiting == 0)
        {
            if self.fatal.is_some() && self.live.is_empty() && self.waiting == 0 {
                break;
            }
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(m) => self.handle(m),
                    None => break,
                },
                _ = sigint.recv() => self.on_signal(sys::SIGINT),
                _ = sigterm.recv() => self.on_signal(sys::SIGTERM),
            }
            // Whatever else has arrived joins this turn, so a burst of exits is one commit.
            while let Ok(m) = self.rx.try_recv() {
                self.handle(m);
            }
            self.pump();
            self.flush();
        }
        if let Some(f) = self.fatal {
            return Err(DriverError::Fatal(f));
        }
        let state = self.store.state();
        let requests = self
            .execs
            .iter()
            .map(|x| {
                let r = state.requests.get(x.request.as_str());
                RequestEnd {
                    request: x.request.clone(),
                    status: r.map_or(BuildRequestStatus::BuildRequestUnknown, |r| r.status),
                    message: r.map(|r| r.message.clone()).unwrap_or_default(),
                }
            })
            .collect();
        Ok(Outcome { requests, signal: self.cancelling })
    }

    /// Stages events for this turn's commit (the state sees them at once); once the commit is
    /// durable, `then` (if any) is handled.
    fn commit(&mut self, events: Vec<BuildEvent>, then: Option<Msg>) {
        if self.fatal.is_some() {
            return;
        }
        match self.store.stage(events) {
            Ok(()) => self.staged_then.extend(then),
            Err(e) => self.fail_fatally(e.to_string()),
        }
    }

    /// Submits what this turn staged as one commit.
    fn flush(&mut self) {
        if self.fatal.is_some() {
            self.staged_then.clear();
            return;
        }
        let then = std::mem::take(&mut self.staged_then);
        match self.store.flush() {
            Ok(Some(p)) => self.after_durable(p, then),
            Ok(None) => {
                for m in then {
                    self.handle(m);
                }
            }
            Err(e) => self.fail_fatally(e.to_string()),
        }
    }

    fn after_durable(&mut self, p: Pending, then: Vec<Msg>) {
        self.waiting += 1;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let msg = match p.durable().await {
                Ok(_) => Msg::Committed(then),
                Err(e) => Msg::CommitFailed(e.to_string()),
            };
            let _ = tx.send(msg).await;
        });
    }

    /// The log is unusable: stop every job (their results could not be recorded) and end.
    fn fail_fatally(&mut self, why: String) {
        if self.fatal.is_none() {
            self.fatal = Some(why);
            for l in self.live.values_mut() {
                l.ready = None;
                let _ = sys::signal_group(l.pgid, sys::SIGKILL);
            }
            for x in &mut self.execs {
                x.finished = true;
            }
        }
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Released(run) => self.on_released(&run),
            Msg::Exited(run, status) => self.on_exited(&run, status),
            Msg::Timeout(run) => self.on_timeout(&run),
            Msg::Kill(run) => {
                if let Some(l) = self.live.get(&run) {
                    let _ = sys::signal_group(l.pgid, sys::SIGKILL);
                }
            }
            Msg::Report(note) => self.observer.note(note),
            Msg::Committed(then) => {
                self.waiting -= 1;
                for m in then {
                    self.handle(m);
                }
            }
            Msg::CommitFailed(why) => {
                self.waiting -= 1;
                self.fail_fatally(why);
            }
        }
    }

    /// Launches what may launch and ends executions that are done.
    fn pump(&mut self) {
        if self.fatal.is_some() {
            return;
        }
        if self.cancelling.is_none() {
            self.resolve_delegations();
            self.launch_ready();
        }
        for e in 0..self.execs.len() {
            let x = &self.execs[e];
            if !x.finished
                && !x.nodes.iter().any(NodeState::is_live)
                && !self.live.values().any(|l| l.exec == e)
            {
                self.finish(e);
            }
        }
    }

    /// Tasks actively delegated to another request: done once their outputs are AVAILABLE;
    /// failed once the delegate can no longer build them.
    fn resolve_delegations(&mut self) {
        for e in 0..self.execs.len() {
            for n in 0..self.execs[e].nodes.len() {
                let NodeState::Delegated { to } = self.execs[e].nodes[n].clone() else { continue };
                let outputs = self.execs[e].plan.nodes[n].outputs.clone();
                let available = {
                    let state = self.store.state();
                    outputs.iter().all(|o| state.is_available(o))
                };
                if available {
                    self.execs[e].nodes[n] = NodeState::Done;
                    let mut events = Vec::new();
                    for r in self.newly_ready(e, n, &outputs) {
                        let attempt = self.execs[e].next_attempt[r];
                        events.push(self.schedule(e, r, attempt));
                    }
                    self.commit(events, None);
                    continue;
                }
                let delegate_gone = self.execs.iter().find(|x| x.request == to).is_none_or(|x| {
                    x.finished
                        || x.plan.nodes.iter().zip(&x.nodes).any(|(pn, st)| {
                            pn.outputs.iter().any(|o| outputs.contains(o))
                                && matches!(
                                    st,
                                    NodeState::Failed | NodeState::Blocked | NodeState::Cancelled
                                )
                        })
                });
                if delegate_gone {
                    let why = format!(
                        "upstream {} failed in build {to}",
                        outputs.first().cloned().unwrap_or_default()
                    );
                    self.block_downstream(e, n, &why);
                    self.execs[e].nodes[n] = NodeState::Failed;
                    self.execs[e].failures.push(why);
                }
            }
        }
    }

    /// Marks everything downstream of (e, n) blocked, closing their partitions with `why`.
    fn block_downstream(&mut self, e: usize, n: usize, why: &str) {
        let req = self.execs[e].request.clone();
        let blocked = scheduler::downstream(&self.execs[e].plan, n);
        let mut events = Vec::new();
        {
            let state = self.store.state();
            let mut marked: HashSet<String> = HashSet::new();
            for &b in &blocked {
                if !matches!(self.execs[e].nodes[b], NodeState::Waiting) {
                    continue;
                }
                for o in &self.execs[e].plan.nodes[b].outputs {
                    let k = state.key(&req, o).map(|k| k.status);
                    if matches!(
                        k,
                        Some(
                            PartitionStatus::PartitionAnalyzed
                                | PartitionStatus::PartitionRequested
                        )
                    ) && marked.insert(o.clone())
                    {
                        events.push(ev::partition(
                            &req,
                            o,
                            PartitionStatus::PartitionFailed,
                            "",
                            why,
                        ));
                    }
                }
            }
        }
        for b in blocked {
            if self.execs[e].nodes[b] == NodeState::Waiting {
                self.execs[e].nodes[b] = NodeState::Blocked;
            }
        }
        self.commit(events, None);
    }

    fn running_total(&self) -> usize {
        self.live.len()
    }

    fn launch_ready(&mut self) {
        let mut deferred = VecDeque::new();
        while self.fatal.is_none() && self.running_total() < self.settings.jobs.max(1) {
            let Some((e, n)) = self.queue.pop_front() else { break };
            let label = self.execs[e].plan.nodes[n].job.clone();
            let cap = self.graph.job(&label).and_then(|j| self.graph.jobs[j].max_concurrency);
            let running = self.running_by_job.get(&label).copied().unwrap_or(0);
            // Never release a run while one of its outputs is being built by another live run
            // (a previous attempt of this task is not live: its partitions stay BUILDING).
            let busy = {
                let state = self.store.state();
                self.execs[e].plan.nodes[n].outputs.iter().any(|o| {
                    state
                        .catalog
                        .get(o.as_str())
                        .and_then(|c| c.shown())
                        .filter(|f| f.status == PartitionStatus::PartitionBuilding)
                        .and_then(|f| state.runs.get(&f.job_run_id))
                        .is_some_and(|r| r.is_live())
                })
            };
            if cap.is_some_and(|c| running >= c as usize) || busy {
                deferred.push_back((e, n));
                continue;
            }
            self.launch(e, n);
        }
        for d in deferred.into_iter().rev() {
            self.queue.push_front(d);
        }
    }

    /// Spawns the shim of a queued task and submits JOB_RUNNING; the job is released once that is
    /// durable.
    fn launch(&mut self, e: usize, n: usize) {
        // Once the log has failed nothing new may start: its record could not be written.
        if self.fatal.is_some() {
            return;
        }
        let NodeState::Queued { run, attempt } = self.execs[e].nodes[n].clone() else { return };
        let node = self.execs[e].plan.nodes[n].clone();
        let req = self.execs[e].request.clone();
        let Some(job) = self.graph.job(&node.job).map(|j| self.graph.jobs[j].clone()) else {
            let why = format!("job '{}' is not in the graph file any more", node.job);
            self.fail_run(e, n, &run, attempt, Failure::spawn(why));
            return;
        };
        match self.spawn(&req, &run, &job, &node.config, &node.outputs) {
            Ok((pgid, pid, ready, spawn_error, child)) => {
                let (host, boot_id) = this_machine();
                let process = ProcessInfo {
                    pid,
                    pgid,
                    host: host.to_string(),
                    boot_id: boot_id.to_string(),
                    start_time_ticks: sys::start_ticks(pid).unwrap_or(0),
                };
                let mut events = Vec::with_capacity(1 + node.outputs.len());
                let mut j = ev::job(&req, &run, &node.job, &node.outputs);
                j.process = Some(process);
                j.attempt = attempt;
                events.push(j.event(JobStatus::JobRunning));
                for o in &node.outputs {
                    events.push(ev::partition(
                        &req,
                        o,
                        PartitionStatus::PartitionBuilding,
                        &run,
                        "",
                    ));
                }
                self.live.insert(
                    run.clone(),
                    Live {
                        exec: e,
                        node: n,
                        run: run.clone(),
                        attempt,
                        pgid,
                        start_ticks: sys::start_ticks(pgid),
                        ready: Some(ready),
                        released: None,
                        timed_out: false,
                        stopping: false,
                        spawn_error,
                        inputs: Vec::new(),
                    },
                );
                *self.running_by_job.entry(node.job.clone()).or_insert(0) += 1;
                self.execs[e].nodes[n] = NodeState::Running { run: run.clone(), attempt };
                let tx = self.tx.clone();
                let r = run.clone();
                tokio::spawn(async move {
                    let mut child = child;
                    let status = child.wait().await;
                    let _ = tx.send(Msg::Exited(r, status)).await;
                });
                self.commit(events, Some(Msg::Released(run)));
            }
            Err(err) => {
                self.fail_run(
                    e,
                    n,
                    &run,
                    attempt,
                    Failure::spawn(format!(
                        "could not start the job shim (job output in {}): {err}",
                        self.settings.logs_dir.join(&*run).display()
                    )),
                );
            }
        }
    }

    fn spawn(
        &self,
        req: &str,
        run: &str,
        job: &crate::graph::Job,
        config: &JobConfig,
        outputs: &[String],
    ) -> std::io::Result<(i32, i32, std::io::PipeWriter, PathBuf, tokio::process::Child)> {
        let dir = self.settings.logs_dir.join(run);
        std::fs::create_dir_all(&dir)?;
        let stdin_path = dir.join("stdin.json");
        let json = serde_json::to_vec(config).map_err(std::io::Error::other)?;
        std::fs::write(&stdin_path, json)?;
        let stdout = std::fs::File::create(dir.join("stdout"))?;
        let stderr = std::fs::File::create(dir.join("stderr"))?;
        let spawn_error = dir.join("spawn_error");
        let (ready_r, ready_w) = std::io::pipe()?;
        let mut cmd = tokio::process::Command::new(&self.settings.shim);
        cmd.arg("__job-shim")
            .arg("--stdin")
            .arg(&stdin_path)
            .arg("--spawn-error")
            .arg(&spawn_error)
            .arg("--")
            .arg(&job.entrypoint)
            .arg("exec")
            .args(&config.args)
            .current_dir(&self.graph.dir)
            .envs(&job.env)
            .envs(&config.env)
            .env("DATABUILD_JOB_RUN_ID", run)
            .env("DATABUILD_BUILD_REQUEST_ID", req)
            .env("DATABUILD_OUTPUTS", outputs.join(" "))
            .stdin(Stdio::from(ready_r))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .process_group(0)
            .kill_on_drop(false);
        let child = cmd.spawn()?;
        let pid = child.id().map_or(0, |p| p as i32);
        Ok((pid, pid, ready_w, spawn_error, child))
    }

    fn on_released(&mut self, run: &str) {
        let cancelling = self.cancelling.is_some();
        let Some(l) = self.live.get_mut(run) else { return };
        let Some(mut ready) = l.ready.take() else { return };
        if cancelling || l.stopping {
            // Dropping the pipe lets the shim go without running the job.
            return;
        }
        if ready.write_all(b"\n").is_err() {
            // The shim is gone already; its exit will be reported.
            return;
        }
        drop(ready);
        let (e, n, attempt) = (l.exec, l.node, l.attempt);
        l.released = Some((SystemTime::now(), Instant::now()));
        let node = &self.execs[e].plan.nodes[n];
        let state = self.store.state();
        // Shallow input manifests: the ref, and the run that made it AVAILABLE at release.
        l.inputs = node
            .config
            .inputs
            .iter()
            .filter_map(|d| {
                let p = d.partition_ref.as_ref()?;
                let mut m = PartitionManifest {
                    outputs: vec![p.clone()],
                    dep_type: d.dep_type,
                    ..PartitionManifest::default()
                };
                if let Some(f) = state.catalog.get(p.str.as_str()).and_then(|c| c.shown())
                    && f.status == PartitionStatus::PartitionAvailable
                {
                    m.job_run_id = f.job_run_id.to_string();
                    if let Some(r) = state.runs.get(&f.job_run_id) {
                        m.task = Some(Task {
                            job: Some(JobLabel { label: r.job_label.to_string() }),
                            config: None,
                        });
                        if let Some((s, t)) = r.manifest_times {
                            m.start_time = s;
                            m.end_time = t;
                        }
                    }
                }
                Some(m)
            })
            .collect();
        drop(state);
        let timeout = self.graph.job(&node.job).and_then(|j| self.graph.jobs[j].timeout);
        self.observer.note(Note::Started {
            job: node.job.clone(),
            run: run.to_string(),
            outputs: node.outputs.clone(),
            attempt,
        });
        if let Some(t) = timeout {
            let tx = self.tx.clone();
            let r = run.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(t).await;
                let _ = tx.send(Msg::Timeout(r)).await;
            });
        }
    }

    fn on_timeout(&mut self, run: &str) {
        let Some(l) = self.live.get_mut(run) else { return };
        if l.released.is_none() || l.timed_out {
            return;
        }
        // A stalled engine (SIGSTOP, swap) can see its timer fire after the job already ended by
        // itself: then its exit, still on its way here, decides the outcome, not the timer.
        if sys::is_zombie(l.pgid) || sys::start_ticks(l.pgid) != l.start_ticks {
            return;
        }
        l.timed_out = true;
        let _ = sys::signal_group(l.pgid, sys::SIGTERM);
        self.kill_after_grace(run.to_string());
    }

    fn kill_after_grace(&self, run: String) {
        let tx = self.tx.clone();
        let grace = self.settings.grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = tx.send(Msg::Kill(run)).await;
        });
    }

    fn on_exited(&mut self, run: &str, status: std::io::Result<std::process::ExitStatus>) {
        let Some(l) = self.live.remove(run) else { return };
        let label = self.execs[l.exec].plan.nodes[l.node].job.clone();
        if let Some(c) = self.running_by_job.get_mut(&label) {
            *c = c.saturating_sub(1);
        }
        // Anything left in the job's group after its leader exits is terminated.
        let mut leftovers = "";
        if sys::group_exists(l.pgid) {
            let _ = sys::signal_group(l.pgid, sys::SIGKILL);
            leftovers = " (leftover processes in its group were killed)";
        }
        let ended = SystemTime::now();
        let duration = l.released.map_or(Duration::ZERO, |(_, t)| t.elapsed());
        if self.cancelling.is_some() || l.stopping {
            self.cancel_run(&l, duration);
            return;
        }
        let spawn_error = std::fs::read_to_string(&l.spawn_error).ok();
        use std::os::unix::process::ExitStatusExt;
        let (code, signal) = match &status {
            Ok(s) => (s.code(), s.signal()),
            Err(_) => (None, None),
        };
        if code == Some(0) && spawn_error.is_none() && l.released.is_some() {
            self.complete_run(&l, ended, duration, leftovers);
            return;
        }
        let (kind, message) = match (spawn_error, l.timed_out, code, signal) {
            (Some(why), ..) => (JobFailureKind::JobFailureSpawnFailed, why.trim().to_string()),
            (None, true, ..) => {
                let t = self
                    .graph
                    .job(&label)
                    .and_then(|j| self.graph.jobs[j].timeout)
                    .unwrap_or_default();
                (
                    JobFailureKind::JobFailureTimedOut,
                    format!("timed out after {}s and was stopped", t.as_secs()),
                )
            }
            (None, false, Some(c), _) if l.released.is_none() => (
                JobFailureKind::JobFailureSpawnFailed,
                format!("the job shim exited with code {c} before the job started"),
            ),
            (None, false, Some(c), _) => {
                (JobFailureKind::JobFailureExitNonzero, format!("exited with code {c}"))
            }
            (None, false, None, Some(s)) => {
                (JobFailureKind::JobFailureSignaled, format!("killed by signal {s}"))
            }
            (None, false, None, None) => (
                JobFailureKind::JobFailureUnknown,
                format!(
                    "could not wait for it: {}",
                    status.err().map_or_else(String::new, |e| e.to_string())
                ),
            ),
        };
        let failure = Failure {
            kind,
            code: code.unwrap_or(0),
            signal: signal.unwrap_or(0),
            message: format!("{message}{leftovers}"),
            duration,
        };
        self.fail_run(l.exec, l.node, run, l.attempt, failure);
    }

    fn cancel_run(&mut self, l: &Live, duration: Duration) {
        let x = &self.execs[l.exec];
        let node = &x.plan.nodes[l.node];
        let req = x.request.clone();
        let mut events = Vec::new();
        let mut j = ev::job(&req, &l.run, &node.job, &node.outputs);
        j.message = "cancelled".to_string();
        j.attempt = l.attempt;
        events.push(j.event(JobStatus::JobCancelled));
        let state = self.store.state();
        for o in &node.outputs {
            let open =
                state.key(&req, o).is_some_and(|k| k.status == PartitionStatus::PartitionBuilding);
            if open {
                events.push(ev::partition(
                    &req,
                    o,
                    PartitionStatus::PartitionFailed,
                    &l.run,
                    "cancelled",
                ));
            }
        }
        drop(state);
        let note = Note::Finished {
            job: node.job.clone(),
            run: l.run.clone(),
            outputs: node.outputs.clone(),
            status: JobStatus::JobCancelled,
            message: "cancelled".into(),
            duration,
            retrying: false,
        };
        self.execs[l.exec].nodes[l.node] = NodeState::Cancelled;
        self.commit(events, Some(Msg::Report(note)));
    }

    fn complete_run(&mut self, l: &Live, ended: SystemTime, duration: Duration, note: &str) {
        let (e, n) = (l.exec, l.node);
        let req = self.execs[e].request.clone();
        let node = self.execs[e].plan.nodes[n].clone();
        let start = l.released.map_or(0, |(t, _)| unix_secs(t));
        let manifest = PartitionManifest {
            outputs: node.outputs.iter().map(|o| ev::pref(o)).collect(),
            inputs: l.inputs.clone(),
            start_time: start,
            end_time: unix_secs(ended),
            task: Some(Task {
                job: Some(JobLabel { label: node.job.clone() }),
                config: Some(node.config.clone()),
            }),
            job_run_id: l.run.clone(),
            dep_type: 0,
        };
        let mut events = Vec::new();
        let mut j = ev::job(&req, &l.run, &node.job, &node.outputs);
        j.manifests = vec![manifest];
        j.attempt = l.attempt;
        j.message = note.trim().to_string();
        events.push(j.event(JobStatus::JobCompleted));
        for o in &node.outputs {
            events.push(ev::partition(&req, o, PartitionStatus::PartitionAvailable, &l.run, ""));
        }
        self.execs[e].nodes[n] = NodeState::Done;
        // Tasks this one made ready join the same commit (one fsync on the critical path).
        let ready = self.newly_ready(e, n, &node.outputs);
        for r in ready {
            let attempt = self.execs[e].next_attempt[r];
            events.push(self.schedule(e, r, attempt));
        }
        let report = Note::Finished {
            job: node.job.clone(),
            run: l.run.clone(),
            outputs: node.outputs.clone(),
            status: JobStatus::JobCompleted,
            message: String::new(),
            duration,
            retrying: false,
        };
        self.commit(events, Some(Msg::Report(report)));
    }

    /// Tasks of every execution that the outputs of (e, n) make ready.
    fn newly_ready(&self, e: usize, n: usize, outputs: &[String]) -> Vec<usize> {
        let x = &self.execs[e];
        let state = self.store.state();
        let made: HashSet<&str> = outputs.iter().map(String::as_str).collect();
        (0..x.plan.nodes.len())
            .filter(|&i| {
                x.nodes[i] == NodeState::Waiting
                    && x.plan.nodes[i].deps.contains(&n)
                    && x.plan.nodes[i].deps.iter().all(|&d| x.nodes[d] == NodeState::Done)
                    && x.plan.nodes[i]
                        .materialize
                        .iter()
                        .all(|m| made.contains(m.as_str()) || state.is_available(m))
            })
            .collect()
    }

    /// JOB_SCHEDULED for a task (new run id), marking it queued.
    fn schedule(&mut self, e: usize, n: usize, attempt: u32) -> BuildEvent {
        let run = self.store.new_id();
        let x = &mut self.execs[e];
        let node = &x.plan.nodes[n];
        let mut j = ev::job(&x.request, &run, &node.job, &node.outputs);
        j.config = Some(node.config.clone());
        j.attempt = attempt;
        let event = j.event(JobStatus::JobScheduled);
        x.nodes[n] = NodeState::Queued { run, attempt };
        self.queue.push_back((e, n));
        event
    }

    fn fail_run(&mut self, e: usize, n: usize, run: &str, attempt: u32, f: Failure) {
        let Failure { kind, code, signal, message, duration } = f;
        let req = self.execs[e].request.clone();
        let node = self.execs[e].plan.nodes[n].clone();
        let retries = self.graph.job(&node.job).map_or(0, |j| self.graph.jobs[j].retries);
        let retrying = attempt < 1 + retries && self.cancelling.is_none();
        let mut events = Vec::new();
        let mut j = ev::job(&req, run, &node.job, &node.outputs);
        j.failure = Some(kind);
        j.exit_code = code;
        j.signal = signal;
        j.attempt = attempt;
        j.message = message.clone();
        events.push(j.event(JobStatus::JobFailed));
        if retrying {
            // Partitions stay BUILDING; the next attempt is a new run.
            events.push(self.schedule(e, n, attempt + 1));
        } else {
            let state = self.store.state();
            for o in &node.outputs {
                let k = state.key(&req, o).map(|k| k.status);
                if matches!(
                    k,
                    Some(PartitionStatus::PartitionBuilding | PartitionStatus::PartitionAnalyzed)
                ) {
                    events.push(ev::partition(
                        &req,
                        o,
                        PartitionStatus::PartitionFailed,
                        run,
                        &message,
                    ));
                }
            }
            let first = node.outputs.first().cloned().unwrap_or_default();
            drop(state);
            self.execs[e].nodes[n] = NodeState::Failed;
            self.execs[e]
                .failures
                .push(format!("job {} ({first}, run {run}): {message}", node.job));
        }
        let report = Note::Finished {
            job: node.job.clone(),
            run: run.to_string(),
            outputs: node.outputs.clone(),
            status: JobStatus::JobFailed,
            message,
            duration,
            retrying,
        };
        self.commit(events, Some(Msg::Report(report)));
        if !retrying {
            let first = node.outputs.first().cloned().unwrap_or_default();
            self.block_downstream(e, n, &format!("upstream {first} failed"));
        }
    }

    /// Ends an execution: closes its open partitions and writes the terminal request event.
    fn finish(&mut self, e: usize) {
        let cancelled = self.cancelling.is_some();
        // Tasks still waiting can never run now (nothing live produces their inputs).
        {
            let state = self.store.state();
            let x = &self.execs[e];
            let stuck = scheduler::stuck(&state, &x.plan, &x.nodes);
            drop(state);
            for s in stuck {
                self.execs[e].nodes[s] = NodeState::Blocked;
            }
        }
        let x = &self.execs[e];
        let req = x.request.clone();
        let state = self.store.state();
        let status = scheduler::outcome(&state, &x.plan.requested, cancelled);
        let reason = if cancelled {
            "cancelled".to_string()
        } else {
            "not built: an upstream job failed".to_string()
        };
        let mut events: Vec<BuildEvent> = scheduler::closing_events(&state, &req, &reason);
        let message = match status {
            BuildRequestStatus::BuildRequestCompleted => String::new(),
            BuildRequestStatus::BuildRequestCancelled => "cancelled by signal".to_string(),
            _ => {
                let failed: Vec<&String> =
                    x.plan.requested.iter().filter(|r| !state.is_available(r)).collect();
                let mut m = format!(
                    "{} of {} requested partitions not built",
                    failed.len(),
                    x.plan.requested.len()
                );
                if let Some(f) = x.failures.first() {
                    m.push_str(&format!("; first failure: {f}"));
                }
                m
            }
        };
        drop(state);
        events.push(ev::request(&req, status, &message));
        self.execs[e].finished = true;
        let note = Note::Done { request: req, status, message };
        self.commit(events, Some(Msg::Report(note)));
    }

    fn on_signal(&mut self, sig: i32) {
        if self.cancelling.is_some() {
            // A second signal: stop everything now.
            for l in self.live.values() {
                let _ = sys::signal_group(l.pgid, sys::SIGKILL);
            }
            return;
        }
        self.cancelling = Some(sig);
        self.observer.note(Note::Cancelling { signal: sig });
        // Queued runs are cancelled at once.
        let mut events = Vec::new();
        let queued: Vec<(usize, usize)> = self.queue.drain(..).collect();
        for (e, n) in queued {
            if let NodeState::Queued { run, attempt } = self.execs[e].nodes[n].clone() {
                let x = &self.execs[e];
                let node = &x.plan.nodes[n];
                let mut j = ev::job(&x.request, &run, &node.job, &node.outputs);
                j.attempt = attempt;
                j.message = "cancelled before it started".to_string();
                events.push(j.event(JobStatus::JobCancelled));
                self.execs[e].nodes[n] = NodeState::Cancelled;
            }
        }
        if !events.is_empty() {
            self.commit(events, None);
        }
        // Unreleased shims are let go; running groups get SIGTERM, then SIGKILL after the grace.
        let runs: Vec<String> = self.live.keys().cloned().collect();
        for run in runs {
            let Some(l) = self.live.get_mut(&run) else { continue };
            l.stopping = true;
            l.ready = None;
            if l.released.is_some() {
                let _ = sys::signal_group(l.pgid, sys::SIGTERM);
                self.kill_after_grace(run);
            }
        }
    }
}

/// The events of the plan commit (DESIGN.md §2.4): delegations and JOB_SKIPPED for what is
/// AVAILABLE, ANALYZED for what will be built, the JobGraphEvent, ANALYSIS_COMPLETED, EXECUTING,
/// and JOB_SCHEDULED for each task ready now. Returns the execution with those tasks queued, and
/// the number of partitions skipped.
pub fn plan_commit(store: &Store, request: &str, plan: Plan) -> (Vec<BuildEvent>, Exec, usize) {
    let state = store.state();
    let mut events = Vec::new();
    let mut skipped: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for r in &plan.satisfied {
        let Some(f) = state
            .catalog
            .get(r.as_str())
            .and_then(|c| c.shown())
            .filter(|f| f.status == PartitionStatus::PartitionAvailable)
        else {
            continue;
        };
        let label = state
            .runs
            .get(&*f.job_run_id)
            .map_or_else(String::new, |run| run.job_label.to_string());
        let msg = format!("AVAILABLE since seq {} (built by run {})", f.seq, f.job_run_id);
        events.push(ev::delegation(request, r, &f.build_request_id, &msg));
        events.push(ev::partition(request, r, PartitionStatus::PartitionDelegated, "", &msg));
        let entry = skipped.entry(label).or_default();
        entry.0.push(r.clone());
        if !entry.1.iter().any(|r| **r == *f.job_run_id) {
            entry.1.push(f.job_run_id.to_string());
        }
    }
    let skipped_count = skipped.values().map(|(r, _)| r.len()).sum();
    for (label, (refs, runs)) in &skipped {
        let id = store.new_id();
        let mut j = ev::job(request, &id, label, refs);
        j.message = format!("skipped: already AVAILABLE (built by run {})", runs.join(", "));
        events.push(j.event(JobStatus::JobSkipped));
    }
    let mut analyzed = HashSet::new();
    for n in &plan.nodes {
        for o in &n.outputs {
            if analyzed.insert(o.clone()) {
                events.push(ev::partition(request, o, PartitionStatus::PartitionAnalyzed, "", ""));
            }
        }
    }
    events.push(ev::job_graph(request, plan.job_graph()));
    events.push(ev::request(request, BuildRequestStatus::BuildRequestAnalysisCompleted, ""));
    events.push(ev::request(request, BuildRequestStatus::BuildRequestExecuting, ""));
    let mut exec = Exec::new(request.to_string(), plan);
    for i in 0..exec.plan.nodes.len() {
        if scheduler::is_ready(&state, &exec.plan, &exec.nodes, i) {
            let run = store.new_id();
            let node = &exec.plan.nodes[i];
            let mut j = ev::job(request, &run, &node.job, &node.outputs);
            j.config = Some(node.config.clone());
            j.attempt = 1;
            events.push(j.event(JobStatus::JobScheduled));
            exec.nodes[i] = NodeState::Queued { run, attempt: 1 };
        }
    }
    (events, exec, skipped_count)
}
