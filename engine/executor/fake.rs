//! A scripted executor for tests: no processes, no files. Each run does what the script says
//! (exit with a code, be killed, fail to start, or hang until stopped) after a delay measured on
//! tokio's clock, so tests with a paused clock run thousands of builds in seconds. It also keeps
//! what happened, so a test can check that no partition was ever built by two runs at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};

use super::{ExitReport, Handle, Held, OutputPaths, Prepared, Reconciled, RunSpec, Stop};
use crate::proto::ExecutorHandle;
use crate::state::Run;

/// What a scripted run does once released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Exits with this code after the delay.
    Exit(i32, Duration),
    /// Is killed by this signal after the delay.
    Signal(i32, Duration),
    /// Cannot be started at all.
    SpawnError(String),
    /// Runs until stopped.
    Hang,
}

/// Decides what each run does.
pub type Script = dyn Fn(&RunSpec<'_>) -> Behavior + Send + Sync;

/// Says whether a run may be released now (a test's view of the log: is its JOB_RUNNING durable?).
pub type ReleaseCheck = dyn Fn(&str) -> bool + Send + Sync;

/// What a test can check afterwards.
#[derive(Debug, Default)]
pub struct Record {
    /// Runs released, in order: (run id, outputs).
    pub released: Vec<(String, Vec<String>)>,
    /// Partitions that were being built by two released runs at once (must stay empty).
    pub overlaps: Vec<String>,
    /// Most runs released and not ended at once.
    pub max_running: usize,
    /// Runs released before the check given to [`Fake::check_releases`] said they may be (must
    /// stay empty: a run starts only once its JOB_RUNNING is durable).
    pub released_early: Vec<String>,
    running: HashMap<String, Vec<String>>,
}

/// The scripted executor.
pub struct Fake {
    script: Box<Script>,
    next: AtomicU64,
    stops: Arc<Mutex<HashMap<String, watch::Sender<Option<Stop>>>>>,
    /// Run id -> handle id, for reconciliation after a crash.
    by_run: Mutex<HashMap<String, String>>,
    record: Arc<Mutex<Record>>,
    check: Arc<Mutex<Option<Arc<ReleaseCheck>>>>,
}

impl std::fmt::Debug for Fake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fake").field("runs", &self.next.load(Ordering::Relaxed)).finish()
    }
}

impl Fake {
    /// A fake executor following `script`.
    pub fn new(script: impl Fn(&RunSpec<'_>) -> Behavior + Send + Sync + 'static) -> Fake {
        Fake {
            script: Box::new(script),
            next: AtomicU64::new(1),
            stops: Arc::new(Mutex::new(HashMap::new())),
            by_run: Mutex::new(HashMap::new()),
            check: Arc::new(Mutex::new(None)),
            record: Arc::new(Mutex::new(Record::default())),
        }
    }

    /// Checks every release with `check` (recording the runs it refuses in `released_early`).
    pub fn check_releases(&self, check: impl Fn(&str) -> bool + Send + Sync + 'static) {
        *self.check.lock() = Some(Arc::new(check));
    }

    /// What happened so far.
    pub fn record(&self) -> Arc<Mutex<Record>> {
        self.record.clone()
    }
}

struct Release(oneshot::Sender<()>);

impl Held for Release {
    fn release(self: Box<Self>) -> Result<(), String> {
        self.0.send(()).map_err(|()| "the fake run is gone".to_string())
    }
}

/// Exit code of a run that was let go without being released (as the local executor's).
const NOT_RELEASED: i32 = crate::sys::NOT_RELEASED;

impl super::Executor for Fake {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn prepare(&self, spec: &RunSpec<'_>) -> Result<Prepared, String> {
        let behavior = (self.script)(spec);
        if let Behavior::SpawnError(why) = behavior {
            return Err(why);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (release_tx, release_rx) = oneshot::channel();
        let (stop_tx, mut stop_rx) = watch::channel(None);
        self.stops.lock().insert(id.to_string(), stop_tx);
        self.by_run.lock().insert(spec.run.to_string(), id.to_string());
        let stops = self.stops.clone();
        let key = id.to_string();
        let record = self.record.clone();
        let check = self.check.lock().clone();
        let run = spec.run.to_string();
        let outputs = spec.outputs.to_vec();
        let exit = Box::pin(async move {
            let released = tokio::select! {
                r = release_rx => r.is_ok(),
                _ = stop_rx.changed() => false,
            };
            if !released {
                stops.lock().remove(&key);
                return ExitReport { code: Some(NOT_RELEASED), ..ExitReport::default() };
            }
            let early = check.is_some_and(|c| !c(&run));
            {
                let mut r = record.lock();
                if early {
                    r.released_early.push(run.clone());
                }
                r.released.push((run.clone(), outputs.clone()));
                for o in &outputs {
                    if r.running.values().any(|v| v.contains(o)) {
                        r.overlaps.push(o.clone());
                    }
                }
                r.running.insert(run.clone(), outputs);
                r.max_running = r.max_running.max(r.running.len());
            }
            let (outcome, delay) = match behavior {
                Behavior::Exit(c, d) => (ExitReport { code: Some(c), ..ExitReport::default() }, d),
                Behavior::Signal(s, d) => {
                    (ExitReport { signal: Some(s), ..ExitReport::default() }, d)
                }
                _ => (ExitReport::default(), Duration::MAX),
            };
            let ended = tokio::select! {
                () = sleep(delay) => outcome,
                how = async {
                    loop {
                        if let Some(how) = *stop_rx.borrow_and_update() {
                            break how;
                        }
                        if stop_rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                } => {
                    let signal = match how { Stop::Term => crate::sys::SIGTERM, Stop::Kill => crate::sys::SIGKILL };
                    ExitReport { signal: Some(signal), ..ExitReport::default() }
                }
            };
            record.lock().running.remove(&run);
            stops.lock().remove(&key);
            ended
        });
        let handle = Handle {
            executor: ExecutorHandle { kind: "fake".into(), id: id.to_string(), slurm: None },
            process: None,
        };
        Ok(Prepared { handle, held: Box::new(Release(release_tx)), exit })
    }

    fn stop(&self, handle: &Handle, how: Stop) {
        if let Some(tx) = self.stops.lock().get(&handle.executor.id) {
            tx.send_replace(Some(how));
        }
    }

    fn has_ended(&self, _: &Handle) -> bool {
        false
    }

    fn reconcile(&self, run: &Run, _: Option<&ExecutorHandle>, _: Duration) -> Reconciled {
        // As the local executor stops a run that is provably its own: it is gone at once.
        let id = self.by_run.lock().remove(&*run.id);
        if let Some(tx) = id.and_then(|id| self.stops.lock().remove(&id)) {
            tx.send_replace(Some(Stop::Kill));
        }
        self.record.lock().running.remove(&*run.id);
        Reconciled { what: "stopped (fake)".into(), warning: None, outcome: None }
    }

    fn output(&self, run: &str) -> OutputPaths {
        super::output_paths(std::path::Path::new("/nonexistent/fake"), run)
    }
}

async fn sleep(d: Duration) {
    if d == Duration::MAX {
        std::future::pending::<()>().await;
    } else {
        tokio::time::sleep(d).await;
    }
}
