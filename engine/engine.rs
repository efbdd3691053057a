//! The engine: one long-lived loop per open log that runs many build requests at once.
//!
//! [`Engine::open`] reconciles what a dead engine left live (§7) and starts the loop; an
//! [`EngineHandle`] submits requests, cancels them and resumes interrupted ones. One task owns the
//! store and every live request. Everything that happens arrives as a [`Msg`] on one channel:
//! requests from handles, `config` answers, executor reports (a run released, a run ended),
//! timers. Each handler decides with the pure functions of [`crate::scheduler`], stages its events
//! in the store, and defers whatever depends on them (releasing a run, answering a caller,
//! reporting progress) until they are durable. All that one turn staged is one commit, one fsync.
//! The loop is the **only committer**: nothing else writes to the log while it runs.
//!
//! ```text
//!  submit ─▶ RECEIVED ─(durable)─▶ id to the caller; config calls (a task) ─▶ plan commit
//!  Waiting ──ready──▶ Queued (JOB_SCHEDULED) ──slot──▶ prepared held, JOB_RUNNING + BUILDING
//!                                                        │ durable
//!                                                        ▼
//!                                     release: the job runs ──exit──▶ JOB_COMPLETED + AVAILABLE
//!                                                                      (+ next JOB_SCHEDULEDs)
//!                                                          └─fail──▶ retry: JOB_FAILED + SCHEDULED
//!                                                                     final: JOB_FAILED + FAILED,
//!                                                                            downstream FAILED
//! ```
//! Limits are global: one slot pool (`jobs`), each job's `max_concurrency` over all requests, and
//! a request's own cap. Ready runs are taken round-robin across requests. A request that needs a
//! partition another live request is building delegates to it (DelegationEvent + DELEGATED) and
//! waits; if the delegate cannot build it, the partition fails here too. Cancelling a request
//! cancels its queued runs at once, lets its unreleased runs go, and stops its running ones
//! (SIGTERM, SIGKILL after the grace; at once on a second cancel); each gets JOB_CANCELLED and
//! its partitions FAILED ("cancelled"). Signals belong to the binary, which maps them to cancels.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use crate::events as ev;
use crate::executor::{Executor, ExitReport, Handle, Held, RunSpec, Stop};
use crate::graph::{Graph, LookupError};
use crate::planner::{self, Plan, PlanError};
use crate::proto::{
    BuildEvent, BuildRequestStatus, JobFailureKind, JobLabel, JobStatus, PartitionManifest,
    PartitionStatus, Task,
};
use crate::recovery::{self, Reconciled};
use crate::scheduler::{self, NodeState};
use crate::store::{CommitError, Pending, Store};

/// Grace between SIGTERM and SIGKILL when a job times out or is cancelled.
pub const KILL_GRACE: Duration = Duration::from_secs(10);
/// Capacity of the loop's channel. Senders are run waiters, commit waiters, planning tasks and
/// handles, one message each, so this only bounds bursts.
const CHANNEL_CAPACITY: usize = 1024;

/// How the engine runs jobs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// At most this many runs at once, over all requests.
    pub jobs: usize,
    /// `.databuild/logs/` (config call output goes to `<logs>/<request>/config/`).
    pub logs_dir: PathBuf,
    /// Time between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Who answers `config` calls (the jobs' entrypoints, or a function in tests).
    pub configure: Arc<dyn planner::Configure>,
}

/// A progress note, derived from committed events: sent only once they are durable.
#[derive(Clone, Debug)]
#[non_exhaustive]
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
        /// Partitions delegated to other live requests: (ref, request).
        delegated: Vec<(String, String)>,
    },
    /// Planning failed; the request is recorded FAILED (a `Done` follows).
    PlanFailed {
        /// Request id.
        request: String,
        /// Why.
        error: Arc<PlanError>,
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
    /// The build is being cancelled (the binary sends this for a signal it mapped to a cancel).
    Cancelling {
        /// The signal.
        signal: i32,
    },
    /// Something the user should know.
    Warning(String),
    /// A request ended (its terminal event is durable). Always the request's last note.
    Done {
        /// Request id.
        request: String,
        /// Its status.
        status: BuildRequestStatus,
        /// Its message.
        message: String,
    },
}

/// Receives a request's progress notes.
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

/// Why the engine stopped. The log is left consistent; the next writer reconciles.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A commit failed: the log is unusable (I/O error) or the engine proposed an illegal event.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The engine could not start.
    #[error("cannot start the engine: {0}")]
    Setup(String),
    /// The log failed under running builds: every job was stopped.
    #[error("the event log failed during the build, every job was stopped: {0}")]
    Fatal(String),
    /// The engine is gone (it stopped, or failed).
    #[error("the engine has stopped")]
    Closed,
}

/// Why a request was not accepted. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// A ref could not be looked up.
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// A graph to execute is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The engine cannot take requests (it is stopping, or its log failed).
    #[error(transparent)]
    Engine(#[from] EngineError),
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

/// What to build.
#[derive(Clone, Debug, Default)]
pub struct BuildSpec {
    /// The refs asked for.
    pub refs: Vec<String>,
    /// Rebuild them even if AVAILABLE.
    pub force: bool,
    /// Also rebuild every stale partition the plan needs (`build --stale`).
    pub stale: bool,
    /// At most this many runs of this request at once (besides the engine's own limit).
    pub cap: Option<usize>,
}

/// What a cancel did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The request is being cancelled (its `Done` follows).
    Cancelling,
    /// It was interrupted (no engine runs it): it is now recorded CANCELLED, so no `recover`
    /// resumes it.
    Recorded,
    /// It had already ended, with this status.
    AlreadyEnded(BuildRequestStatus),
    /// The log has no request with this id.
    Unknown,
}

/// What resuming interrupted requests did.
#[derive(Clone, Debug, Default)]
pub struct Resumed {
    /// Requests resumed (each ends with a `Done` note), oldest first.
    pub requests: Vec<String>,
    /// Requests whose interrupted cancellation was finished (CANCELLED) without running anything.
    pub finished_cancellations: Vec<String>,
    /// Things the operator should know.
    pub warnings: Vec<String>,
}

/// Forwards notes to an observer and each request's end to a channel: what a caller waits on.
pub fn with_ends(
    inner: Arc<dyn Observer>,
) -> (Arc<dyn Observer>, mpsc::UnboundedReceiver<RequestEnd>) {
    struct Tee(Arc<dyn Observer>, mpsc::UnboundedSender<RequestEnd>);
    impl Observer for Tee {
        fn note(&self, note: Note) {
            if let Note::Done { request, status, message } = &note {
                let _ = self.1.send(RequestEnd {
                    request: request.clone(),
                    status: *status,
                    message: message.clone(),
                });
            }
            self.0.note(note);
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(Tee(inner, tx)), rx)
}

/// One request in the engine: planning, then executing its plan.
pub struct Exec {
    /// Request id.
    pub request: String,
    /// Its plan (empty while `config` runs).
    pub plan: Plan,
    /// Where each task stands.
    pub nodes: Vec<NodeState>,
    /// The attempt number each task's next run gets (a run stopped by the first crash is re-run
    /// under the same attempt number; later crash-stopped runs count as attempts).
    pub next_attempt: Vec<u32>,
    /// Why tasks failed, first first (the request's final message names the first).
    pub failures: Vec<String>,
    finished: bool,
    observer: Arc<dyn Observer>,
    cap: Option<usize>,
    /// How many times it was asked to cancel (the second stops its runs at once).
    cancels: u8,
    cancel_reason: String,
    /// Until its plan is committed: the refs asked, and the task running `config` (if any).
    planning: Option<Planning>,
    /// Queued tasks waiting for a slot, in order.
    ready: VecDeque<usize>,
    /// Its runs with a live process.
    running: usize,
}

impl std::fmt::Debug for Exec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec")
            .field("request", &self.request)
            .field("nodes", &self.nodes)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

fn empty_plan() -> Plan {
    Plan {
        label: String::new(),
        requested: Vec::new(),
        nodes: Vec::new(),
        satisfied: Vec::new(),
        producer: HashMap::new(),
        dropped: Vec::new(),
        warnings: Vec::new(),
    }
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
            failures: Vec::new(),
            finished: false,
            observer: Arc::new(Quiet),
            cap: None,
            cancels: 0,
            cancel_reason: String::new(),
            planning: None,
            ready: VecDeque::new(),
            running: 0,
        }
    }

    fn note(&self, note: Note) {
        self.observer.note(note);
    }
}

/// A request being planned.
struct Planning {
    refs: Vec<String>,
    task: Option<tokio::task::AbortHandle>,
}

impl Planning {
    fn stop(&self) {
        if let Some(t) = &self.task {
            t.abort();
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

/// A job run whose executor handle is live (held, or running).
struct Live {
    exec: usize,
    node: usize,
    run: String,
    attempt: u32,
    handle: Handle,
    held: Option<Box<dyn Held>>,
    released: Option<(SystemTime, Instant)>,
    timed_out: bool,
    stopping: bool,
    inputs: Vec<PartitionManifest>,
}

type Reply<T> = oneshot::Sender<T>;

/// Everything the loop reacts to.
enum Msg {
    Submit {
        spec: BuildSpec,
        observer: Arc<dyn Observer>,
        reply: Reply<Result<String, SubmitError>>,
    },
    Execute {
        graph: crate::proto::JobGraph,
        cap: Option<usize>,
        observer: Arc<dyn Observer>,
        reply: Reply<Result<String, SubmitError>>,
    },
    Cancel {
        request: String,
        reason: String,
        reply: Reply<CancelOutcome>,
    },
    Resume {
        observer: Arc<dyn Observer>,
        reply: Reply<Result<Resumed, String>>,
    },
    Taint {
        spec: crate::freshness::TaintSpec,
        reply: Reply<Vec<crate::freshness::Taint>>,
    },
    Close,
    /// A planning task's answer (the request id guards against a reused slot).
    Planned {
        exec: usize,
        request: String,
        result: Result<Plan, PlanError>,
    },
    /// JOB_RUNNING of this run is durable: release it.
    Released(String),
    /// The run ended.
    Exited(String, ExitReport),
    /// The run's timeout expired.
    Timeout(String),
    /// The grace after SIGTERM expired.
    Kill(String),
    /// A note whose commit is now durable, for a request.
    Report(usize, Note),
    /// An answer whose commit is now durable.
    Reply(Box<dyn FnOnce() + Send>),
    /// A commit is durable: what was waiting for it.
    Committed(Vec<Msg>),
    /// A commit failed after submission.
    CommitFailed(String),
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Msg::Submit { .. } => "Submit",
            Msg::Execute { .. } => "Execute",
            Msg::Cancel { .. } => "Cancel",
            Msg::Resume { .. } => "Resume",
            Msg::Taint { .. } => "Taint",
            Msg::Close => "Close",
            Msg::Planned { .. } => "Planned",
            Msg::Released(_) => "Released",
            Msg::Exited(..) => "Exited",
            Msg::Timeout(_) => "Timeout",
            Msg::Kill(_) => "Kill",
            Msg::Report(..) => "Report",
            Msg::Reply(_) => "Reply",
            Msg::Committed(_) => "Committed",
            Msg::CommitFailed(_) => "CommitFailed",
        };
        f.write_str(name)
    }
}

/// Submits requests to a running engine. Cheap to clone; every clone talks to the same loop.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    tx: mpsc::Sender<Msg>,
}

impl EngineHandle {
    async fn ask<T>(&self, msg: impl FnOnce(Reply<T>) -> Msg) -> Result<T, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(msg(reply)).await.map_err(|_| EngineError::Closed)?;
        rx.await.map_err(|_| EngineError::Closed)
    }

    /// Accepts a build request: returns its id once RECEIVED is durable. Its notes go to
    /// `observer`, ending with `Done`. A bad ref is refused before anything is written.
    pub async fn submit(
        &self,
        spec: BuildSpec,
        observer: Arc<dyn Observer>,
    ) -> Result<String, SubmitError> {
        self.ask(|reply| Msg::Submit { spec, observer, reply }).await?
    }

    /// Accepts a request that runs exactly `graph` (the seed's `Execute`: no `config` calls).
    pub async fn execute(
        &self,
        graph: crate::proto::JobGraph,
        cap: Option<usize>,
        observer: Arc<dyn Observer>,
    ) -> Result<String, SubmitError> {
        self.ask(|reply| Msg::Execute { graph, cap, observer, reply }).await?
    }

    /// Cancels a live request (a second cancel stops its runs at once).
    pub async fn cancel(&self, request: &str, reason: &str) -> Result<CancelOutcome, EngineError> {
        let (request, reason) = (request.to_string(), reason.to_string());
        self.ask(|reply| Msg::Cancel { request, reason, reply }).await
    }

    /// Taints `spec.refs` (and with `downstream`, what was built from them): one
    /// PARTITION_TAINTED per AVAILABLE partition, recorded without a build request, in one commit.
    /// Answers what it tainted once that is durable (empty: nothing matched an AVAILABLE
    /// partition, and nothing was written).
    pub async fn taint(
        &self,
        spec: crate::freshness::TaintSpec,
    ) -> Result<Vec<crate::freshness::Taint>, EngineError> {
        self.ask(|reply| Msg::Taint { spec, reply }).await
    }

    /// Resumes every interrupted request in the log (what `recover` and `serve` do at start).
    pub async fn resume(&self, observer: Arc<dyn Observer>) -> Result<Resumed, EngineError> {
        self.ask(|reply| Msg::Resume { observer, reply }).await?.map_err(EngineError::Setup)
    }
}

/// A running engine: its loop task and a handle to it.
#[derive(Debug)]
pub struct Engine {
    handle: EngineHandle,
    task: tokio::task::JoinHandle<Result<(), EngineError>>,
}

impl Engine {
    /// Reconciles what a dead engine left live (§7), then starts the loop. The store must be
    /// this process's writer of the log; from now on the loop is its only committer.
    pub async fn open(
        store: Arc<Store>,
        graph: Arc<Graph>,
        settings: Settings,
        executor: Arc<dyn Executor>,
    ) -> Result<(Engine, Reconciled), EngineError> {
        let (s, x, grace) = (store.clone(), executor.clone(), settings.grace);
        let reconciled = tokio::task::spawn_blocking(move || recovery::reconcile(&s, &*x, grace))
            .await
            .map_err(|e| EngineError::Setup(e.to_string()))??;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let lp = Loop {
            store,
            graph,
            settings,
            executor,
            execs: Vec::new(),
            live: HashMap::new(),
            running_by_job: HashMap::new(),
            rr: 0,
            tx: tx.clone(),
            rx,
            waiting: 0,
            staged_then: Vec::new(),
            fatal: None,
            closing: false,
            previous_commit: None,
        };
        let task = tokio::spawn(lp.run());
        Ok((Engine { handle: EngineHandle { tx }, task }, reconciled))
    }

    /// A handle to submit requests with.
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Stops the loop where it is, as a crash would (for tests): nothing more is committed, and
    /// runs are left as they are for the next engine's reconciliation.
    pub async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Lets every live request end, then stops the loop. Returns why it stopped early, if it did.
    pub async fn close(self) -> Result<(), EngineError> {
        let _ = self.handle.tx.send(Msg::Close).await;
        drop(self.handle);
        self.task.await.map_err(|e| EngineError::Setup(format!("the engine task failed: {e}")))?
    }
}

/// The loop's state: owned by one task.
struct Loop {
    store: Arc<Store>,
    graph: Arc<Graph>,
    settings: Settings,
    executor: Arc<dyn Executor>,
    execs: Vec<Exec>,
    live: HashMap<String, Live>,
    running_by_job: HashMap<String, usize>,
    /// The request the next round-robin pass starts with.
    rr: usize,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    /// Commits submitted and not yet durable.
    waiting: usize,
    /// What to do once the events staged in this turn are durable (they become one commit, one
    /// fsync, however many decisions made them).
    staged_then: Vec<Msg>,
    fatal: Option<String>,
    closing: bool,
    /// Resolves when the previous commit's follow-ups were sent: they are sent in commit order.
    previous_commit: Option<oneshot::Receiver<()>>,
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Loop {
    async fn run(mut self) -> Result<(), EngineError> {
        loop {
            if self.fatal.is_some() && self.live.is_empty() && self.waiting == 0 {
                break;
            }
            if self.closing && self.idle() {
                break;
            }
            let Some(m) = self.rx.recv().await else { break };
            self.handle(m);
            // Whatever else has arrived joins this turn, so a burst of exits is one commit.
            while let Ok(m) = self.rx.try_recv() {
                self.handle(m);
            }
            self.pump();
            self.flush();
            if self.idle() {
                // Nothing refers to an ended request any more: forget them.
                self.execs.clear();
                self.rr = 0;
            }
        }
        for x in &self.execs {
            if let Some(p) = &x.planning {
                p.stop();
            }
        }
        match self.fatal {
            Some(f) => Err(EngineError::Fatal(f)),
            None => Ok(()),
        }
    }

    fn idle(&self) -> bool {
        self.execs.iter().all(|x| x.finished) && self.live.is_empty() && self.waiting == 0
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
        let previous = self.previous_commit.take();
        let (sent, next) = oneshot::channel();
        self.previous_commit = Some(next);
        tokio::spawn(async move {
            let msg = match p.durable().await {
                Ok(_) => Msg::Committed(then),
                Err(e) => Msg::CommitFailed(e.to_string()),
            };
            // Commits become durable in order; their follow-ups (notes, answers) go in order too.
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            let _ = tx.send(msg).await;
            let _ = sent.send(());
        });
    }

    /// The log is unusable: stop every job (their results could not be recorded) and end.
    fn fail_fatally(&mut self, why: String) {
        if self.fatal.is_none() {
            self.fatal = Some(why);
            for l in self.live.values_mut() {
                l.held = None;
                self.executor.stop(&l.handle, Stop::Kill);
            }
            for x in &mut self.execs {
                if let Some(p) = x.planning.take() {
                    p.stop();
                }
                x.finished = true;
            }
        }
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Submit { spec, observer, reply } => self.on_submit(spec, observer, reply),
            Msg::Execute { graph, cap, observer, reply } => {
                self.on_execute(&graph, cap, observer, reply)
            }
            Msg::Cancel { request, reason, reply } => {
                let out = self.on_cancel(&request, &reason);
                // Answered once what the cancel recorded is durable.
                self.commit(Vec::new(), Some(Msg::Reply(Box::new(move || drop(reply.send(out))))));
            }
            Msg::Resume { observer, reply } => self.on_resume(observer, reply),
            Msg::Taint { spec, reply } => self.on_taint(&spec, reply),
            Msg::Close => self.closing = true,
            Msg::Planned { exec, request, result } => self.on_planned(exec, &request, result),
            Msg::Released(run) => self.on_released(&run),
            Msg::Exited(run, report) => self.on_exited(&run, report),
            Msg::Timeout(run) => self.on_timeout(&run),
            Msg::Kill(run) => {
                if let Some(l) = self.live.get(&run) {
                    self.executor.stop(&l.handle, Stop::Kill);
                }
            }
            Msg::Report(e, note) => {
                if let Some(x) = self.execs.get(e) {
                    x.note(note);
                }
            }
            Msg::Reply(f) => f(),
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

    /// Records the taints of `spec` (see [`EngineHandle::taint`]).
    fn on_taint(
        &mut self,
        spec: &crate::freshness::TaintSpec,
        reply: Reply<Vec<crate::freshness::Taint>>,
    ) {
        let targets = crate::freshness::taint_targets(&self.store.state(), spec);
        if self.fatal.is_some() {
            return; // the caller hears the engine closed
        }
        if targets.is_empty() {
            let _ = reply.send(Vec::new());
            return;
        }
        let events = targets
            .iter()
            .map(|t| {
                ev::partition(
                    "",
                    &t.partition,
                    PartitionStatus::PartitionTainted,
                    &t.job_run_id,
                    &t.message(&spec.reason),
                )
            })
            .collect();
        self.commit(events, Some(Msg::Reply(Box::new(move || drop(reply.send(targets))))));
    }

    // ---- requests ------------------------------------------------------------------------------

    fn refuse_new(&self) -> Option<SubmitError> {
        if self.fatal.is_some() || self.closing {
            Some(SubmitError::Engine(EngineError::Closed))
        } else {
            None
        }
    }

    /// Records a new request (RECEIVED, REQUESTED, PLANNING), answers its id once that is durable,
    /// and plans it: at once if every ref is AVAILABLE (one commit for a no-op build), else in a
    /// task that runs the `config` calls while the loop goes on.
    fn on_submit(
        &mut self,
        spec: BuildSpec,
        observer: Arc<dyn Observer>,
        reply: Reply<Result<String, SubmitError>>,
    ) {
        if let Some(e) = self.refuse_new() {
            let _ = reply.send(Err(e));
            return;
        }
        if spec.refs.is_empty() {
            let _ = reply.send(Err(SubmitError::Invalid("a build request needs refs".into())));
            return;
        }
        for r in &spec.refs {
            if let Err(e) = self.graph.owner(r) {
                let _ = reply.send(Err(e.into()));
                return;
            }
        }
        let mut refs: Vec<String> = Vec::with_capacity(spec.refs.len());
        for r in spec.refs {
            if !refs.contains(&r) {
                refs.push(r);
            }
        }
        let req = self.accept(&refs, spec.force, spec.cap, observer, reply);
        let e = self.execs.len() - 1;
        let all_available = !spec.force && {
            let state = self.store.state();
            refs.iter().all(|r| state.is_available(r))
        };
        let rebuild = planner::Rebuild { force: spec.force, stale: spec.stale };
        if all_available
            && let Ok(mut p) = planner::Planner::new(&self.graph, &refs, rebuild)
            && let Ok(calls) = p.next_calls(&*self.store)
            && calls.is_empty()
        {
            let result = p.finish();
            self.on_planned(e, &req, result);
            return;
        }
        self.start_planning(e, req, refs, rebuild);
    }

    /// Stages a new request's acceptance and adds its execution (planning); answers its id once
    /// the acceptance is durable.
    fn accept(
        &mut self,
        refs: &[String],
        force: bool,
        cap: Option<usize>,
        observer: Arc<dyn Observer>,
        reply: Reply<Result<String, SubmitError>>,
    ) -> String {
        let req = self.store.new_id();
        let mut accepted = vec![ev::received(&req, refs, force, &self.graph.digest)];
        accepted.extend(
            refs.iter()
                .map(|r| ev::partition(&req, r, PartitionStatus::PartitionRequested, "", "")),
        );
        accepted.push(ev::request(&req, BuildRequestStatus::BuildRequestPlanning, ""));
        let mut x = Exec::new(req.clone(), empty_plan());
        x.observer = observer;
        x.cap = cap.filter(|&c| c > 0);
        x.planning = Some(Planning { refs: refs.to_vec(), task: None });
        self.execs.push(x);
        let id = req.clone();
        self.commit(accepted, Some(Msg::Reply(Box::new(move || drop(reply.send(Ok(id)))))));
        req
    }

    fn start_planning(
        &mut self,
        e: usize,
        req: String,
        refs: Vec<String>,
        rebuild: impl Into<planner::Rebuild>,
    ) {
        let rebuild = rebuild.into();
        let (graph, store, tx) = (self.graph.clone(), self.store.clone(), self.tx.clone());
        let configure = self.settings.configure.clone();
        let jobs = self.settings.jobs;
        let logs = self.settings.logs_dir.join(&req).join("config");
        let r = req.clone();
        let asked = refs.clone();
        let task = tokio::spawn(async move {
            let result = planner::plan_with(
                &*configure,
                &graph,
                &*store,
                &refs,
                rebuild,
                jobs,
                Some(&r),
                Some(&logs),
            )
            .await;
            let _ = tx.send(Msg::Planned { exec: e, request: r, result }).await;
        });
        if let Some(x) = self.execs.get_mut(e) {
            x.planning = Some(Planning { refs: asked, task: Some(task.abort_handle()) });
        }
    }

    /// A request's plan (or why there is none): the plan commit, with its delegations.
    fn on_planned(&mut self, e: usize, req: &str, result: Result<Plan, PlanError>) {
        let Some(x) = self.execs.get_mut(e).filter(|x| x.request == req && !x.finished) else {
            return;
        };
        if x.planning.take().is_none() {
            return;
        }
        match result {
            Err(err) => {
                let message = format!("planning failed: {err}");
                let mut events = scheduler::closing_events(&self.store.state(), req, &message);
                events.push(ev::request(req, BuildRequestStatus::BuildRequestFailed, &message));
                let x = &mut self.execs[e];
                x.finished = true;
                self.commit(
                    events,
                    Some(Msg::Report(
                        e,
                        Note::PlanFailed { request: req.to_string(), error: Arc::new(err) },
                    )),
                );
                let done = Note::Done {
                    request: req.to_string(),
                    status: BuildRequestStatus::BuildRequestFailed,
                    message,
                };
                self.staged_then.push(Msg::Report(e, done));
            }
            Ok(mut plan) => {
                let tasks = plan.nodes.len();
                let dropped = plan.dropped.clone();
                let warnings = std::mem::take(&mut plan.warnings);
                let (events, delegated, skipped) = self.plan_commit(e, plan);
                let note =
                    Note::Planned { request: req.to_string(), tasks, skipped, dropped, delegated };
                self.commit(events, Some(Msg::Report(e, note)));
                // The planner's warnings, once the plan is durable.
                for w in warnings {
                    self.staged_then.push(Msg::Report(e, Note::Warning(w)));
                }
            }
        }
    }

    /// Refs that live requests other than `except` will build: (ref -> request).
    fn building_elsewhere(&self, except: usize) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for (i, x) in self.execs.iter().enumerate() {
            if i == except || x.finished || x.cancels > 0 {
                continue;
            }
            for (n, s) in x.nodes.iter().enumerate() {
                if matches!(
                    s,
                    NodeState::Waiting | NodeState::Queued { .. } | NodeState::Running { .. }
                ) {
                    for o in &x.plan.nodes[n].outputs {
                        out.entry(o.clone()).or_insert_with(|| x.request.clone());
                    }
                }
            }
        }
        out
    }

    /// Stages nothing itself: computes the plan commit (see [`plan_commit`]) against the requests
    /// live in this engine and installs the execution. Returns the events, the delegations and
    /// the number of partitions skipped.
    fn plan_commit(
        &mut self,
        e: usize,
        plan: Plan,
    ) -> (Vec<BuildEvent>, Vec<(String, String)>, usize) {
        let building = self.building_elsewhere(e);
        let request = self.execs[e].request.clone();
        let pc = plan_commit(&self.store, &self.graph, &request, plan, &building);
        let mut x = pc.exec;
        let old = &mut self.execs[e];
        x.observer = old.observer.clone();
        x.cap = old.cap;
        *old = x;
        (pc.events, pc.delegated, pc.skipped)
    }

    /// The seed's `Execute`: exactly this graph, no `config` calls.
    fn on_execute(
        &mut self,
        jg: &crate::proto::JobGraph,
        cap: Option<usize>,
        observer: Arc<dyn Observer>,
        reply: Reply<Result<String, SubmitError>>,
    ) {
        if let Some(e) = self.refuse_new() {
            let _ = reply.send(Err(e));
            return;
        }
        let plan = match crate::execute::plan_for_execute(&self.graph, &*self.store, jg) {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(SubmitError::Invalid(e.to_string())));
                return;
            }
        };
        let refs = plan.requested.clone();
        let req = self.accept(&refs, false, cap, observer, reply);
        let e = self.execs.len() - 1;
        self.on_planned(e, &req, Ok(plan));
    }

    fn on_cancel(&mut self, request: &str, reason: &str) -> CancelOutcome {
        let reason = if reason.is_empty() { "cancelled" } else { reason };
        let Some(e) = self.execs.iter().position(|x| x.request == request && !x.finished) else {
            let state = self.store.state();
            let status = state.requests.get(request).map(|r| r.status);
            return match status {
                None => CancelOutcome::Unknown,
                Some(s) if crate::state::is_terminal_request(s) => CancelOutcome::AlreadyEnded(s),
                Some(_) => {
                    // Interrupted: no engine runs it (this one reconciled its runs at open).
                    let mut events = scheduler::closing_events(&state, request, "cancelled");
                    events.push(ev::request(
                        request,
                        BuildRequestStatus::BuildRequestCancelled,
                        reason,
                    ));
                    drop(state);
                    self.commit(events, None);
                    CancelOutcome::Recorded
                }
            };
        };
        // While `config` runs: stop it (its processes are killed) and end the request now.
        if let Some(Planning { refs, task }) = self.execs[e].planning.take() {
            if let Some(t) = task {
                t.abort();
            }
            let mut events: Vec<_> = refs
                .iter()
                .map(|r| {
                    ev::partition(request, r, PartitionStatus::PartitionFailed, "", "cancelled")
                })
                .collect();
            events.push(ev::request(request, BuildRequestStatus::BuildRequestCancelled, reason));
            self.execs[e].finished = true;
            let done = Note::Done {
                request: request.to_string(),
                status: BuildRequestStatus::BuildRequestCancelled,
                message: reason.to_string(),
            };
            self.commit(events, Some(Msg::Report(e, done)));
            return CancelOutcome::Cancelling;
        }
        let x = &mut self.execs[e];
        x.cancels = x.cancels.saturating_add(1);
        if x.cancels > 1 {
            // Asked again: stop everything of this request now.
            for l in self.live.values().filter(|l| l.exec == e) {
                self.executor.stop(&l.handle, Stop::Kill);
            }
            return CancelOutcome::Cancelling;
        }
        x.cancel_reason = reason.to_string();
        // Queued runs are cancelled at once; delegated tasks stop waiting.
        let mut events = Vec::new();
        for n in std::mem::take(&mut x.ready) {
            if let NodeState::Queued { run, attempt } = x.nodes[n].clone() {
                let node = &x.plan.nodes[n];
                let mut j = ev::job(&x.request, &run, &node.job, &node.outputs);
                j.attempt = attempt;
                j.message = "cancelled before it started".to_string();
                events.push(j.event(JobStatus::JobCancelled));
                x.nodes[n] = NodeState::Cancelled;
            }
        }
        for s in &mut x.nodes {
            if matches!(s, NodeState::Delegated { .. }) {
                *s = NodeState::Cancelled;
            }
        }
        self.commit(events, None);
        // Unreleased runs are let go; running ones get SIGTERM, then SIGKILL after the grace.
        let runs: Vec<String> =
            self.live.iter().filter(|(_, l)| l.exec == e).map(|(r, _)| r.clone()).collect();
        for run in runs {
            let Some(l) = self.live.get_mut(&run) else { continue };
            l.stopping = true;
            l.held = None;
            if l.released.is_some() {
                self.executor.stop(&l.handle, Stop::Term);
                self.kill_after_grace(run);
            }
        }
        CancelOutcome::Cancelling
    }

    /// Resumes every interrupted request (DESIGN.md §4.3): their recorded plans, or planning
    /// again those that crashed before theirs was recorded.
    fn on_resume(&mut self, observer: Arc<dyn Observer>, reply: Reply<Result<Resumed, String>>) {
        if self.refuse_new().is_some() {
            let _ = reply.send(Err("the engine is stopping".into()));
            return;
        }
        // Requests this engine runs already are not interrupted.
        let mine: HashSet<String> = self.execs.iter().map(|x| x.request.clone()).collect();
        let resume = match recovery::prepare_resume(&self.store, &self.graph, &mine) {
            Ok(r) => r,
            Err(e) => {
                // What it staged for the requests before the one that failed must not reach the
                // log without executions to drive it: stop here (nothing staged is committed;
                // the next writer starts from the log).
                self.fail_fatally(format!("cannot resume the interrupted requests: {e}"));
                let _ = reply.send(Err(e.to_string()));
                return;
            }
        };
        let mut out = Resumed { warnings: resume.warnings, ..Resumed::default() };
        for mut x in resume.execs {
            x.observer = observer.clone();
            x.ready = (0..x.nodes.len())
                .filter(|&n| matches!(x.nodes[n], NodeState::Queued { .. }))
                .collect();
            out.requests.push(x.request.clone());
            self.execs.push(x);
        }
        for (req, refs, force) in resume.replan {
            let mut x = Exec::new(req.clone(), empty_plan());
            x.observer = observer.clone();
            x.planning = Some(Planning { refs: refs.clone(), task: None });
            self.execs.push(x);
            out.requests.push(req.clone());
            self.start_planning(self.execs.len() - 1, req, refs, force);
        }
        for (req, status) in resume.closed {
            let note = Note::Done {
                request: req.clone(),
                status,
                message: "cancellation finished".into(),
            };
            let o = observer.clone();
            self.staged_then.push(Msg::Reply(Box::new(move || o.note(note))));
            out.finished_cancellations.push(req);
        }
        self.commit(Vec::new(), Some(Msg::Reply(Box::new(move || drop(reply.send(Ok(out)))))));
    }

    // ---- execution -----------------------------------------------------------------------------

    /// Launches what may launch and ends executions that are done.
    fn pump(&mut self) {
        if self.fatal.is_some() {
            return;
        }
        self.resolve_delegations();
        self.launch_ready();
        for e in 0..self.execs.len() {
            let x = &self.execs[e];
            if !x.finished
                && x.planning.is_none()
                && !x.nodes.iter().any(NodeState::is_live)
                && !self.live.values().any(|l| l.exec == e)
            {
                self.finish(e);
            }
        }
    }

    /// Tasks actively delegated to another request: done once their outputs are AVAILABLE;
    /// failed (here too) once the delegate can no longer build them.
    fn resolve_delegations(&mut self) {
        for e in 0..self.execs.len() {
            if self.execs[e].finished || self.execs[e].cancels > 0 {
                continue;
            }
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
                        || x.cancels > 0
                        || x.plan.nodes.iter().zip(&x.nodes).any(|(pn, st)| {
                            pn.outputs.iter().any(|o| outputs.contains(o))
                                && matches!(
                                    st,
                                    NodeState::Failed | NodeState::Blocked | NodeState::Cancelled
                                )
                        })
                });
                if delegate_gone {
                    let first = outputs.first().cloned().unwrap_or_default();
                    let why = format!("upstream {first} failed in build {to}");
                    let req = self.execs[e].request.clone();
                    let events: Vec<BuildEvent> = {
                        let state = self.store.state();
                        outputs
                            .iter()
                            .filter(|o| {
                                state.key(&req, o).is_some_and(|k| {
                                    k.status == PartitionStatus::PartitionDelegated
                                })
                            })
                            .map(|o| {
                                ev::partition(&req, o, PartitionStatus::PartitionFailed, "", &why)
                            })
                            .collect()
                    };
                    self.commit(events, None);
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

    /// The next queued task of request `e` that may start now (its own cap, its job's
    /// `max_concurrency`, and no live run building one of its outputs), taken off its queue.
    fn take_ready(&mut self, e: usize) -> Option<usize> {
        let x = &self.execs[e];
        if x.finished || x.cancels > 0 || x.cap.is_some_and(|c| x.running >= c) {
            return None;
        }
        let state = self.store.state();
        let pos = x.ready.iter().position(|&n| {
            let node = &x.plan.nodes[n];
            let cap = self.graph.job(&node.job).and_then(|j| self.graph.jobs[j].max_concurrency);
            let running = self.running_by_job.get(&node.job).copied().unwrap_or(0);
            // Never release a run while one of its outputs is being built by another live run
            // (a previous attempt of this task is not live: its partitions stay BUILDING).
            let busy = node.outputs.iter().any(|o| {
                state
                    .catalog
                    .get(o.as_str())
                    .and_then(|c| c.shown())
                    .filter(|f| f.status == PartitionStatus::PartitionBuilding)
                    .and_then(|f| state.runs.get(&f.job_run_id))
                    .is_some_and(|r| r.is_live())
            });
            !busy && cap.is_none_or(|c| running < c as usize)
        })?;
        drop(state);
        self.execs[e].ready.remove(pos)
    }

    /// Starts ready runs while slots are free, one request at a time in turn.
    fn launch_ready(&mut self) {
        let slots = self.settings.jobs.max(1);
        let mut progressed = true;
        while progressed && self.fatal.is_none() && self.live.len() < slots {
            progressed = false;
            let n = self.execs.len();
            for k in 0..n {
                if self.live.len() >= slots {
                    break;
                }
                let e = (self.rr + k) % n;
                if let Some(node) = self.take_ready(e) {
                    self.launch(e, node);
                    progressed = true;
                }
            }
            if n > 0 {
                self.rr = (self.rr + 1) % n;
            }
        }
    }

    /// Prepares a queued task's run held and stages JOB_RUNNING; the run is released once that
    /// is durable.
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
        let spec = RunSpec {
            request: &req,
            run: &run,
            job: &job,
            graph_dir: &self.graph.dir,
            config: &node.config,
            outputs: &node.outputs,
        };
        let prepared = match self.executor.prepare(&spec) {
            Ok(p) => p,
            Err(why) => {
                self.fail_run(e, n, &run, attempt, Failure::spawn(why));
                return;
            }
        };
        let mut events = Vec::with_capacity(1 + node.outputs.len());
        let mut j = ev::job(&req, &run, &node.job, &node.outputs);
        j.process = prepared.handle.process.clone();
        j.executor = Some(prepared.handle.executor.clone());
        j.attempt = attempt;
        events.push(j.event(JobStatus::JobRunning));
        for o in &node.outputs {
            events.push(ev::partition(&req, o, PartitionStatus::PartitionBuilding, &run, ""));
        }
        self.live.insert(
            run.clone(),
            Live {
                exec: e,
                node: n,
                run: run.clone(),
                attempt,
                handle: prepared.handle,
                held: Some(prepared.held),
                released: None,
                timed_out: false,
                stopping: false,
                inputs: Vec::new(),
            },
        );
        *self.running_by_job.entry(node.job.clone()).or_insert(0) += 1;
        self.execs[e].running += 1;
        self.execs[e].nodes[n] = NodeState::Running { run: run.clone(), attempt };
        let tx = self.tx.clone();
        let r = run.clone();
        let exit = prepared.exit;
        tokio::spawn(async move {
            let report = exit.await;
            let _ = tx.send(Msg::Exited(r, report)).await;
        });
        self.commit(events, Some(Msg::Released(run)));
    }

    fn on_released(&mut self, run: &str) {
        let Some(l) = self.live.get_mut(run) else { return };
        let cancelling = self.execs.get(l.exec).is_some_and(|x| x.cancels > 0);
        let Some(held) = l.held.take() else { return };
        if cancelling || l.stopping {
            // Dropping the hold lets the run go without running the job.
            return;
        }
        if held.release().is_err() {
            // The run is gone already; its end will be reported.
            return;
        }
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
        self.execs[e].note(Note::Started {
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
        if self.executor.has_ended(&l.handle) {
            return;
        }
        l.timed_out = true;
        self.executor.stop(&l.handle, Stop::Term);
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

    fn on_exited(&mut self, run: &str, report: ExitReport) {
        let Some(l) = self.live.remove(run) else { return };
        let label = self.execs[l.exec].plan.nodes[l.node].job.clone();
        if let Some(c) = self.running_by_job.get_mut(&label) {
            *c = c.saturating_sub(1);
        }
        self.execs[l.exec].running = self.execs[l.exec].running.saturating_sub(1);
        let leftovers =
            if report.leftovers { " (leftover processes in its group were killed)" } else { "" };
        let ended = SystemTime::now();
        let duration = l.released.map_or(Duration::ZERO, |(_, t)| t.elapsed());
        if self.execs[l.exec].cancels > 0 || l.stopping {
            self.cancel_run(&l, duration);
            return;
        }
        let ExitReport { code, signal, spawn_error, wait_error, .. } = report;
        // A run that timed out failed, whatever it exited with (it may catch SIGTERM and exit 0).
        if code == Some(0) && spawn_error.is_none() && l.released.is_some() && !l.timed_out {
            // With `output_path`, exit 0 is believed only if every output's data is there.
            match self.missing_output(l.exec, l.node) {
                None => self.complete_run(&l, ended, duration, leftovers),
                Some(why) => {
                    let failure = Failure {
                        kind: JobFailureKind::JobFailureOutputMissing,
                        code: 0,
                        signal: 0,
                        message: why,
                        duration,
                    };
                    self.fail_run(l.exec, l.node, run, l.attempt, failure);
                }
            }
            return;
        }
        let (kind, message) = match (spawn_error, l.timed_out, code, signal) {
            (Some(why), ..) => (JobFailureKind::JobFailureSpawnFailed, why),
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
                format!("the job exited with code {c} before it was released"),
            ),
            (None, false, Some(c), _) => {
                (JobFailureKind::JobFailureExitNonzero, format!("exited with code {c}"))
            }
            (None, false, None, Some(s)) => {
                (JobFailureKind::JobFailureSignaled, format!("killed by signal {s}"))
            }
            (None, false, None, None) => (
                JobFailureKind::JobFailureUnknown,
                format!("could not wait for it: {}", wait_error.unwrap_or_default()),
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

    /// The first output of task `n` of `e` whose `output_path` is missing: `output missing: PATH`.
    fn missing_output(&self, e: usize, n: usize) -> Option<String> {
        let node = &self.execs[e].plan.nodes[n];
        let job = self.graph.job(&node.job)?;
        node.outputs.iter().find_map(|o| self.graph.missing_output(job, o))
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
        self.commit(events, Some(Msg::Report(l.exec, note)));
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
        self.commit(events, Some(Msg::Report(e, report)));
    }

    /// Tasks of execution `e` that the outputs of its task `n` make ready.
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
        j.version = self.graph.recorded_version(&node.job);
        let event = j.event(JobStatus::JobScheduled);
        x.nodes[n] = NodeState::Queued { run, attempt };
        x.ready.push_back(n);
        event
    }

    fn fail_run(&mut self, e: usize, n: usize, run: &str, attempt: u32, f: Failure) {
        let Failure { kind, code, signal, message, duration } = f;
        let req = self.execs[e].request.clone();
        let node = self.execs[e].plan.nodes[n].clone();
        let retries = self.graph.job(&node.job).map_or(0, |j| self.graph.jobs[j].retries);
        let retrying = attempt < 1 + retries && self.execs[e].cancels == 0;
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
        self.commit(events, Some(Msg::Report(e, report)));
        if !retrying {
            let first = node.outputs.first().cloned().unwrap_or_default();
            self.block_downstream(e, n, &format!("upstream {first} failed"));
        }
    }

    /// Ends an execution: closes its open partitions and writes the terminal request event.
    fn finish(&mut self, e: usize) {
        let cancelled = self.execs[e].cancels > 0;
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
            BuildRequestStatus::BuildRequestCancelled => x.cancel_reason.clone(),
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
        self.commit(events, Some(Msg::Report(e, note)));
    }
}

/// A request's plan commit, computed (see [`plan_commit`]).
#[derive(Debug)]
pub struct PlanCommit {
    /// The events, in order.
    pub events: Vec<BuildEvent>,
    /// The execution, with the tasks ready now queued.
    pub exec: Exec,
    /// Partitions delegated to live requests: (ref, request).
    pub delegated: Vec<(String, String)>,
    /// Partitions skipped as AVAILABLE.
    pub skipped: usize,
}

/// The events of the plan commit (DESIGN.md §2.4): delegations and JOB_SKIPPED for what is
/// AVAILABLE, ANALYZED for what will be built, active delegations to live requests building
/// the same partitions (`building`: ref -> request), the JobGraphEvent, ANALYSIS_COMPLETED,
/// EXECUTING, and JOB_SCHEDULED for each task ready now. Pure but for new ids: nothing is
/// staged.
pub fn plan_commit(
    store: &Store,
    graph: &Graph,
    request: &str,
    plan: Plan,
    building: &HashMap<String, String>,
) -> PlanCommit {
    let request = request.to_string();
    let state = store.state();
    let mut events = Vec::new();
    let mut skipped: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    // Tasks whose outputs became AVAILABLE while `config` ran (another request built them and is
    // done with them, so it is not `building` them): satisfied now, as if planned so, unless
    // this request is forced to rebuild them.
    // Only an instance newer than the request counts: one that was AVAILABLE when planning began
    // is in the plan on purpose (stale, missing data, or forced).
    let forced = state.requests.get(request.as_str()).is_some_and(|r| r.force);
    let since = state.requests.get(request.as_str()).map_or(u64::MAX, |r| r.received_seq);
    let built_since = |o: &String| {
        state.is_available(o)
            && state
                .catalog
                .get(o.as_str())
                .is_some_and(|c| c.available.iter().any(|(seq, _)| *seq > since))
    };
    let late: Vec<usize> = (0..plan.nodes.len())
        .filter(|&n| {
            let outs = &plan.nodes[n].outputs;
            !outs.is_empty()
                && outs.iter().all(built_since)
                && !(forced && outs.iter().any(|o| plan.requested.contains(o)))
        })
        .collect();
    let late_refs = late.iter().flat_map(|&n| &plan.nodes[n].outputs);
    for r in plan.satisfied.iter().chain(late_refs) {
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
        events.extend(ev::delegated(&request, r, &f.build_request_id, &msg));
        let entry = skipped.entry(label).or_default();
        entry.0.push(r.clone());
        if !entry.1.iter().any(|r| **r == *f.job_run_id) {
            entry.1.push(f.job_run_id.to_string());
        }
    }
    let skipped_count = skipped.values().map(|(r, _)| r.len()).sum();
    for (label, (refs, runs)) in &skipped {
        let id = store.new_id();
        let mut j = ev::job(&request, &id, label, refs);
        j.message = format!("skipped: already AVAILABLE (built by run {})", runs.join(", "));
        j.version = graph.recorded_version(label);
        events.push(j.event(JobStatus::JobSkipped));
    }
    let mut analyzed = HashSet::new();
    for (i, n) in plan.nodes.iter().enumerate() {
        if late.contains(&i) {
            continue;
        }
        for o in &n.outputs {
            if analyzed.insert(o.clone()) {
                events.push(ev::partition(&request, o, PartitionStatus::PartitionAnalyzed, "", ""));
            }
        }
    }
    let mut x = Exec::new(request.clone(), plan);
    for &n in &late {
        x.nodes[n] = NodeState::Done;
    }
    // Active delegation: a task whose outputs a live request is building waits for it.
    let mut delegated = Vec::new();
    for n in 0..x.plan.nodes.len() {
        if x.nodes[n] != NodeState::Waiting {
            continue;
        }
        let outs = &x.plan.nodes[n].outputs;
        if let Some(to) = outs.first().and_then(|o| building.get(o)).cloned()
            && outs.iter().all(|o| building.get(o) == Some(&to))
        {
            for o in outs {
                let msg = format!("delegated to active build {to}");
                events.extend(ev::delegated(&request, o, &to, &msg));
                delegated.push((o.clone(), to.clone()));
            }
            x.nodes[n] = NodeState::Delegated { to };
        }
    }
    events.push(ev::job_graph(&request, x.plan.job_graph()));
    events.push(ev::request(&request, BuildRequestStatus::BuildRequestAnalysisCompleted, ""));
    events.push(ev::request(&request, BuildRequestStatus::BuildRequestExecuting, ""));
    for i in 0..x.plan.nodes.len() {
        if scheduler::is_ready(&state, &x.plan, &x.nodes, i) {
            let run = store.new_id();
            let node = &x.plan.nodes[i];
            let mut j = ev::job(&request, &run, &node.job, &node.outputs);
            j.config = Some(node.config.clone());
            j.attempt = 1;
            j.version = graph.recorded_version(&node.job);
            events.push(j.event(JobStatus::JobScheduled));
            x.nodes[i] = NodeState::Queued { run, attempt: 1 };
            x.ready.push_back(i);
        }
    }
    drop(state);
    PlanCommit { events, exec: x, delegated, skipped: skipped_count }
}
