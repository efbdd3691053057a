//! The Slurm executor: each run is one batch job (CONTRACT §12, DESIGN §9.4).
//!
//! A run is submitted **held** (`sbatch --hold --parsable --no-requeue`) with `--job-name` = the
//! job run id; its Slurm job id goes into JOB_RUNNING (`executor.slurm.jobId`), and it is released
//! (`scontrol release`) once that is durable. The batch script is `databuild __slurm-run RUN_DIR`
//! ([`batch_main`]): it checks and enters the graph directory itself (Slurm silently falls back to
//! `/tmp`), runs `ENTRYPOINT exec ARGS...` in its own process group with the config as stdin,
//! forwards the signals Slurm sends it to that group, and writes `exit.json` atomically.
//!
//! Files, in `<logs>/<run>/` (on storage the compute nodes share): `stdin.json` (the config),
//! `run.json` (what to run), `job.sh` (the batch script), `stdout`/`stderr` (Slurm's `-o`/`-e`),
//! `started.json`, `terminating.json`, `exit.json` (written by the wrapper).
//!
//! Outcomes come from `exit.json`; `squeue` says whether a job is still pending or running, and
//! its name is always checked against the run id (a controller that lost state reissues ids).
//! Slurm unreachable is never a failure: calls are retried and the run keeps waiting.
//! Runs outlive the engine: after a crash, [`Executor::reconcile`] adopts a run still pending or
//! running (releases it if it was held: its JOB_RUNNING is durable), waits for it and returns its
//! real outcome; a run that ended meanwhile is read from its `exit.json`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{Executor, ExitReport, Handle, Held, OutputPaths, Prepared, Reconciled, RunSpec, Stop};
use crate::graph::ExecutorSettings;
use crate::proto::{ExecutorHandle, JobStatus, SlurmJob};
use crate::state::Run;
use crate::sys;

/// How often a waiting run looks for its exit file and Slurm's view of it.
const POLL: Duration = Duration::from_millis(250);
/// The longest any one Slurm command may take (an unreachable controller answers in about 9 s).
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a job that Slurm says has ended may take to show its exit file (shared storage).
const EXIT_FILE_GRACE: Duration = Duration::from_secs(5);
/// How long a job may be unknown to a reachable Slurm before it is called lost.
const LOST_GRACE: Duration = Duration::from_secs(10);
/// How long submitting, releasing and cancelling keep retrying while Slurm is unreachable.
const PATIENCE: Duration = Duration::from_secs(600);

/// Runs jobs as Slurm batch jobs.
#[derive(Debug)]
pub struct Slurm {
    /// `.databuild/logs/`: must be on storage the compute nodes share.
    pub logs_dir: PathBuf,
    /// `[executor]`: partition, extra sbatch arguments.
    pub settings: ExecutorSettings,
    /// The `databuild` binary, whose `__slurm-run` is the batch script.
    pub wrapper: PathBuf,
    /// Slurm's view of its jobs, shared by every waiting run (one `squeue` per tick).
    queue: Arc<Queue>,
    /// Job id -> run id, for the runs this engine submitted or adopted.
    runs: Mutex<HashMap<String, String>>,
}

impl Slurm {
    /// A Slurm executor; `wrapper` is the `databuild` binary the batch script runs.
    pub fn new(logs_dir: PathBuf, settings: ExecutorSettings, wrapper: PathBuf) -> Slurm {
        Slurm {
            logs_dir,
            settings,
            wrapper,
            queue: Arc::new(Queue::default()),
            runs: Mutex::new(HashMap::new()),
        }
    }
}

// ---------------------------------------------------------------------------------- tools

/// Why a Slurm command did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ToolError {
    /// The program is not installed.
    Missing(String),
    /// The controller could not be reached (retry later).
    Unreachable(String),
    /// It answered and refused: its first line of stderr.
    Failed(String),
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToolError::Missing(s) | ToolError::Unreachable(s) | ToolError::Failed(s) => {
                f.write_str(s)
            }
        }
    }
}

/// Runs a Slurm command with a deadline; stdout on success.
fn tool(
    prog: &str,
    args: &[&str],
    env: Option<&BTreeMap<OsString, OsString>>,
) -> Result<String, ToolError> {
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(env) = env {
        cmd.env_clear().envs(env);
    }
    let child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ToolError::Missing(format!(
                "`{prog}` not found on PATH: install Slurm's client tools (Debian: slurm-client) on this host, or set [executor] kind = \"local\""
            ))
        } else {
            ToolError::Failed(format!("cannot run `{prog}`: {e}"))
        }
    })?;
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(TOOL_TIMEOUT) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(ToolError::Failed(format!("cannot wait for `{prog}`: {e}"))),
        Err(_) => {
            let _ = sys::signal_process(pid, sys::SIGKILL);
            return Err(ToolError::Unreachable(format!(
                "`{prog}` did not answer within {}s",
                TOOL_TIMEOUT.as_secs()
            )));
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line =
        stderr.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no message").to_string();
    let text = format!("`{prog}` failed ({}): {line}", out.status);
    if unreachable(&stderr) {
        Err(ToolError::Unreachable(text))
    } else {
        Err(ToolError::Failed(text))
    }
}

/// Whether a Slurm command's stderr says the controller could not be reached.
fn unreachable(stderr: &str) -> bool {
    [
        "Unable to contact slurm controller",
        "Socket timed out",
        "Connection refused",
        "Zero Bytes were transmitted",
        "Communication connection failure",
        "Slurm backup controller in standby mode",
    ]
    .iter()
    .any(|s| stderr.contains(s))
}

/// Retries `f` while Slurm is unreachable, up to [`PATIENCE`].
fn patiently<T>(mut f: impl FnMut() -> Result<T, ToolError>) -> Result<T, ToolError> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match f() {
            Err(ToolError::Unreachable(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// Cancels a job (`Term`: Slurm's cancel, SIGTERM to the batch script, which forwards it to the
/// job's group, then SIGKILL after KillWait; `Kill`: SIGKILL to every step now), retrying while
/// Slurm is unreachable. Runs on its own thread: never blocks the caller.
fn scancel_later(job_id: String, how: Stop) {
    std::thread::spawn(move || {
        let _ = patiently(|| match how {
            Stop::Term => tool("scancel", &[&job_id], None),
            Stop::Kill => tool("scancel", &["--full", "--signal=KILL", &job_id], None),
        });
    });
}

// ---------------------------------------------------------------------------------- the queue

/// One job as `squeue` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Queued {
    name: String,
    state: String,
    reason: String,
}

impl Queued {
    fn active(&self) -> bool {
        matches!(
            self.state.as_str(),
            "PENDING"
                | "RUNNING"
                | "CONFIGURING"
                | "COMPLETING"
                | "SUSPENDED"
                | "REQUEUED"
                | "RESIZING"
                | "SIGNALING"
                | "STAGE_OUT"
                | "STOPPED"
                | "RESV_DEL_HOLD"
                | "REQUEUE_HOLD"
                | "REQUEUE_FED"
        )
    }
}

/// One `squeue`: job id -> the job, or why Slurm could not be asked.
type Snapshot = Arc<Result<HashMap<String, Queued>, ToolError>>;

/// The latest `squeue` of every job, shared by the runs that wait.
#[derive(Debug, Default)]
struct Queue {
    last: Mutex<Option<(Instant, Snapshot)>>,
}

impl Queue {
    /// Slurm's jobs, at most [`POLL`] old. Blocking.
    fn get(&self) -> Snapshot {
        let mut last = self.last.lock();
        if let Some((at, snap)) = &*last
            && at.elapsed() < POLL
        {
            return snap.clone();
        }
        let snap = Arc::new(squeue(None));
        *last = Some((Instant::now(), snap.clone()));
        snap
    }
}

/// `squeue` of every job (or of one): id -> name, state, reason.
fn squeue(job: Option<&str>) -> Result<HashMap<String, Queued>, ToolError> {
    let mut args = vec!["-h", "-t", "all", "-o", "%i|%T|%r|%j"];
    if let Some(j) = job {
        args.extend(["-j", j]);
    }
    let out = match tool("squeue", &args, None) {
        // A job id the controller does not know (purged, or lost in a crash).
        Err(ToolError::Failed(e)) if job.is_some() && e.contains("Invalid job id") => {
            return Ok(HashMap::new());
        }
        r => r?,
    };
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(4, '|');
            let (id, state, reason, name) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some((
                id.trim().to_string(),
                Queued {
                    name: name.trim().to_string(),
                    state: state.trim().to_string(),
                    reason: reason.trim().to_string(),
                },
            ))
        })
        .collect())
}

/// `ExitCode=rc:sig` of a job from `scontrol show job -o`, if Slurm still knows it.
fn slurm_exit(job_id: &str) -> Option<(i32, i32)> {
    let out = tool("scontrol", &["show", "job", "-o", job_id], None).ok()?;
    let v = out.split_whitespace().find_map(|w| w.strip_prefix("ExitCode="))?;
    let (rc, sig) = v.split_once(':')?;
    Some((rc.parse().ok()?, sig.parse().ok()?))
}

// ---------------------------------------------------------------------------------- files

/// `run.json`: what the batch script runs.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunFile {
    run: String,
    cwd: PathBuf,
    entrypoint: PathBuf,
    args: Vec<String>,
}

/// `exit.json`: how the job ended, written by the batch script.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExitFile {
    run: String,
    job_id: String,
    host: String,
    exit_code: Option<i32>,
    signal: Option<i32>,
    /// Set when the job could not be started (graph directory, entrypoint).
    error: Option<String>,
    /// A signal Slurm sent the batch script (cancel, time limit), forwarded to the job.
    signal_received: Option<i32>,
    started_at: i64,
    ended_at: i64,
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Writes `dir/name` atomically (write, fsync, rename).
fn publish(dir: &Path, name: &str, value: &impl Serialize) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))
}

/// The run's `exit.json`, if it is there and names the run.
fn read_exit(dir: &Path, run: &str) -> Option<ExitFile> {
    let bytes = std::fs::read(dir.join("exit.json")).ok()?;
    let f: ExitFile = serde_json::from_slice(&bytes).ok()?;
    (f.run == run).then_some(f)
}

impl ExitFile {
    fn report(&self) -> ExitReport {
        ExitReport {
            code: self.exit_code,
            signal: self.signal,
            spawn_error: self.error.clone(),
            ..ExitReport::default()
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

// ---------------------------------------------------------------------------------- waiting

/// What one look at a run found.
enum Look {
    /// It ended: its report.
    Ended(ExitReport),
    /// Still pending or running (or Slurm is unreachable): keep waiting.
    Waiting,
}

/// Follows one job until it ends: the exit file first, Slurm's view for liveness and identity.
struct Watch {
    run: String,
    job_id: String,
    dir: PathBuf,
    terminal_since: Option<Instant>,
    missing_since: Option<Instant>,
}

impl Watch {
    fn new(run: &str, job_id: &str, dir: PathBuf) -> Watch {
        Watch {
            run: run.to_string(),
            job_id: job_id.to_string(),
            dir,
            terminal_since: None,
            missing_since: None,
        }
    }

    /// One look. Blocking (reads a file, may run `squeue`).
    fn look(&mut self, queue: &Queue) -> Look {
        if let Some(f) = read_exit(&self.dir, &self.run) {
            return Look::Ended(f.report());
        }
        let snap = queue.get();
        let jobs = match &*snap {
            Ok(jobs) => jobs,
            Err(_) => {
                // Slurm unreachable (restarting): no verdict from its silence.
                self.terminal_since = None;
                self.missing_since = None;
                return Look::Waiting;
            }
        };
        match jobs.get(&self.job_id) {
            Some(q) if q.name != self.run => Look::Ended(lost(format!(
                "Slurm job {} is now another job ({}): the controller lost this submission (did it crash?)",
                self.job_id, q.name
            ))),
            Some(q) if q.active() => {
                self.terminal_since = None;
                self.missing_since = None;
                Look::Waiting
            }
            Some(q) => {
                let since = *self.terminal_since.get_or_insert_with(Instant::now);
                if since.elapsed() < EXIT_FILE_GRACE {
                    return Look::Waiting;
                }
                Look::Ended(self.without_exit_file(&q.state))
            }
            None => {
                let since = *self.missing_since.get_or_insert_with(Instant::now);
                if since.elapsed() < LOST_GRACE {
                    return Look::Waiting;
                }
                let started = self.dir.join("started.json").exists();
                Look::Ended(lost(if started {
                    format!(
                        "Slurm has no record of job {} any more and it left no exit status (killed after it started: controller crash, node failure?)",
                        self.job_id
                    )
                } else {
                    format!(
                        "Slurm has no record of job {}: the controller lost the submission (did it crash?)",
                        self.job_id
                    )
                }))
            }
        }
    }

    /// Slurm says the job ended, and it wrote no exit status: what Slurm knows.
    fn without_exit_file(&self, state: &str) -> ExitReport {
        let shared = format!(
            "Slurm reports job {} {state} and it left no exit status in {}",
            self.job_id,
            self.dir.display()
        );
        match slurm_exit(&self.job_id) {
            Some((_, sig)) if sig != 0 => {
                ExitReport { signal: Some(sig), wait_error: Some(shared), ..ExitReport::default() }
            }
            Some((rc, 0)) if rc != 0 && !self.dir.join("started.json").exists() => ExitReport {
                spawn_error: Some(format!(
                    "{shared}: the batch script could not start (is {} on storage the compute nodes share?)",
                    self.dir.display()
                )),
                ..ExitReport::default()
            },
            Some((rc, 0)) if rc != 0 => ExitReport { code: Some(rc), ..ExitReport::default() },
            _ => lost(shared),
        }
    }
}

fn lost(why: String) -> ExitReport {
    ExitReport { wait_error: Some(why), ..ExitReport::default() }
}

// ---------------------------------------------------------------------------------- the hold

/// A held job: released with `scontrol release`; dropped unreleased, it is cancelled.
struct Hold {
    job_id: String,
    released: bool,
}

impl Held for Hold {
    fn release(mut self: Box<Self>) -> Result<(), String> {
        self.released = true;
        let id = self.job_id.clone();
        // Off the engine's thread: a controller that is restarting is waited for.
        std::thread::spawn(move || {
            let _ = patiently(|| tool("scontrol", &["release", &id], None));
        });
        Ok(())
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.released {
            scancel_later(self.job_id.clone(), Stop::Term);
        }
    }
}

// ---------------------------------------------------------------------------------- the executor

impl Slurm {
    fn submit(&self, spec: &RunSpec<'_>) -> Result<Prepared, String> {
        let paths = self.output(spec.run);
        let dir = &paths.dir;
        let io = |what: &str, e: std::io::Error| format!("cannot {what} in {}: {e}", dir.display());
        if !spec.graph_dir.is_dir() {
            return Err(format!(
                "the graph directory {} does not exist; on Slurm it must be on storage the compute nodes share",
                spec.graph_dir.display()
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| io("create the run's directory", e))?;
        let config = serde_json::to_vec(spec.config).map_err(|e| e.to_string())?;
        std::fs::write(&paths.stdin, config).map_err(|e| io("write stdin.json", e))?;
        for p in [&paths.stdout, &paths.stderr] {
            std::fs::File::create(p).map_err(|e| io("create the output files", e))?;
        }
        let runfile = RunFile {
            run: spec.run.to_string(),
            cwd: spec.graph_dir.to_path_buf(),
            entrypoint: spec.job.entrypoint.clone(),
            args: spec.config.args.clone(),
        };
        publish(dir, "run.json", &runfile).map_err(|e| io("write run.json", e))?;
        let script = dir.join("job.sh");
        let body = format!(
            "#!/bin/sh\n# databuild job run {} (written by databuild; the batch script of one Slurm job)\nexec {} __slurm-run {}\n",
            spec.run,
            shell_quote(&self.wrapper.to_string_lossy()),
            shell_quote(&dir.to_string_lossy()),
        );
        std::fs::write(&script, body).map_err(|e| io("write job.sh", e))?;

        // The job's environment: the process's, the graph's `env`, the config's `env`, ours
        // (sbatch --export=ALL hands its own environment to the job).
        let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
        for (k, v) in spec.job.env.iter().chain(&spec.config.env) {
            env.insert(k.into(), v.into());
        }
        env.insert("DATABUILD_JOB_RUN_ID".into(), spec.run.into());
        env.insert("DATABUILD_BUILD_REQUEST_ID".into(), spec.request.into());
        env.insert("DATABUILD_OUTPUTS".into(), spec.outputs.join(" ").into());

        let s = |p: &Path| p.to_string_lossy().into_owned();
        let mut args: Vec<String> = vec![
            "--parsable".into(),
            "--hold".into(),
            "--no-requeue".into(),
            format!("--job-name={}", spec.run),
            format!("--comment=databuild:{}", spec.run),
            format!("--chdir={}", s(dir)),
            format!("--output={}", s(&paths.stdout)),
            format!("--error={}", s(&paths.stderr)),
            "--open-mode=append".into(),
            "--export=ALL".into(),
        ];
        if let Some(p) = &self.settings.partition {
            args.push(format!("--partition={p}"));
        }
        if let Some(c) = spec.job.cpus {
            args.push(format!("--cpus-per-task={c}"));
        }
        if let Some(m) = spec.job.memory_mb {
            args.push(format!("--mem={m}M"));
        }
        if let Some(t) = spec.job.timeout {
            // Slurm counts whole minutes; databuild enforces the exact timeout itself.
            args.push(format!("--time={}", t.as_secs().div_ceil(60).max(1)));
        }
        args.extend(self.settings.extra_args.iter().cloned());
        args.push(s(&script));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();

        // Submitted at most once per run id: before trying again after an unreachable
        // controller, look for a job of this name that an earlier attempt did submit.
        let mut first = true;
        let out = patiently(|| {
            if !first && let Ok(jobs) = squeue(None) {
                let mine = jobs.iter().find(|(_, q)| q.name == spec.run);
                if let Some((id, _)) = mine {
                    return Ok(id.clone());
                }
            }
            first = false;
            tool("sbatch", &argv, Some(&env))
        })
        .map_err(|e| e.to_string())?;
        let (job_id, cluster) = match out.trim().split_once(';') {
            Some((id, c)) => (id.trim().to_string(), c.trim().to_string()),
            None => (out.trim().to_string(), String::new()),
        };
        if job_id.is_empty() || !job_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("sbatch printed no job id: {:?}", out.trim()));
        }
        self.runs.lock().insert(job_id.clone(), spec.run.to_string());
        let handle = Handle {
            executor: ExecutorHandle {
                kind: "slurm".into(),
                id: job_id.clone(),
                slurm: Some(SlurmJob { job_id: job_id.clone(), cluster }),
            },
            process: None,
        };
        let queue = self.queue.clone();
        let mut watch = Watch::new(spec.run, &job_id, dir.clone());
        let exit = Box::pin(async move {
            loop {
                let q = queue.clone();
                let looked = tokio::task::spawn_blocking(move || {
                    let look = watch.look(&q);
                    (watch, look)
                })
                .await;
                match looked {
                    Ok((w, Look::Waiting)) => {
                        watch = w;
                        tokio::time::sleep(POLL).await;
                    }
                    Ok((_, Look::Ended(r))) => return r,
                    Err(e) => return lost(format!("cannot watch the Slurm job: {e}")),
                }
            }
        });
        Ok(Prepared { handle, held: Box::new(Hold { job_id, released: false }), exit })
    }

    /// The run id of a job this engine knows.
    fn run_of(&self, job_id: &str) -> Option<String> {
        self.runs.lock().get(job_id).cloned()
    }

    /// Cancels any held job named `run` (a crash between `sbatch` and JOB_RUNNING). Blocking.
    pub fn cancel_by_name(&self, run: &str) -> String {
        // One attempt: a reachable controller answers at once; an unreachable one would hold
        // up recovery, and a held job that is left over never runs (its name is a dead run id).
        match tool("scancel", &[&format!("--name={run}")], None) {
            Ok(_) => "never started (any Slurm job of that name cancelled)".to_string(),
            Err(ToolError::Missing(_)) => "never started".to_string(),
            Err(e) => format!("never started (could not cancel a Slurm job of that name: {e})"),
        }
    }

    /// Adopts a run recorded RUNNING on Slurm: waits for it to end. Blocking.
    fn adopt(&self, run: &Run, job_id: &str) -> (String, ExitReport) {
        let dir = self.output(&run.id).dir;
        if let Some(f) = read_exit(&dir, &run.id) {
            return (format!("Slurm job {job_id} ended while no engine ran"), f.report());
        }
        self.runs.lock().insert(job_id.to_string(), run.id.to_string());
        // Released if the crash came between JOB_RUNNING and the release: it is durable.
        if let Ok(jobs) = patiently(|| squeue(Some(job_id)))
            && let Some(q) = jobs.get(job_id)
            && q.name == run.id.as_ref()
            && q.state == "PENDING"
            && q.reason.contains("Held")
        {
            let _ = patiently(|| tool("scontrol", &["release", job_id], None));
        }
        let mut watch = Watch::new(&run.id, job_id, dir);
        loop {
            match watch.look(&self.queue) {
                Look::Ended(r) => return (format!("Slurm job {job_id} adopted and waited for"), r),
                Look::Waiting => std::thread::sleep(POLL),
            }
        }
    }
}

impl Executor for Slurm {
    fn kind(&self) -> &'static str {
        "slurm"
    }

    fn prepare(&self, spec: &RunSpec<'_>) -> Result<Prepared, String> {
        self.submit(spec).map_err(|e| format!("could not submit the job to Slurm: {e}"))
    }

    fn stop(&self, handle: &Handle, how: Stop) {
        scancel_later(handle.executor.id.clone(), how);
    }

    fn has_ended(&self, handle: &Handle) -> bool {
        self.run_of(&handle.executor.id)
            .is_some_and(|run| read_exit(&self.output(&run).dir, &run).is_some())
    }

    fn reconcile(
        &self,
        run: &Run,
        handle: Option<&ExecutorHandle>,
        _grace: Duration,
    ) -> Reconciled {
        match (run.status, handle) {
            (JobStatus::JobRunning, Some(h)) => {
                let (what, report) = self.adopt(run, &h.id);
                Reconciled { what, warning: None, outcome: Some(report) }
            }
            _ => Reconciled { what: self.cancel_by_name(&run.id), warning: None, outcome: None },
        }
    }

    fn output(&self, run: &str) -> OutputPaths {
        super::output_paths(&self.logs_dir, run)
    }
}

// ---------------------------------------------------------------------------------- the batch script

/// `databuild __slurm-run RUN_DIR`: the batch script of one Slurm job. Enters the graph
/// directory (failing loudly if it is missing), runs `ENTRYPOINT exec ARGS...` in its own process
/// group with the config as stdin, forwards SIGTERM/SIGINT/SIGUSR1/SIGUSR2 to that group, then
/// kills what is left of the group and writes `exit.json` atomically. Returns the exit code.
pub fn batch_main(run_dir: &Path) -> i32 {
    let job_id = std::env::var("SLURM_JOB_ID").unwrap_or_default();
    let host = databuild_log::fs::host_name();
    let started_at = unix_now();
    let rf: RunFile = match std::fs::read(run_dir.join("run.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "databuild: cannot read {}/run.json on {host}: {e} (the run's directory must be on storage the compute nodes share)",
                run_dir.display()
            );
            return 111;
        }
    };
    let mut exit = ExitFile {
        run: rf.run.clone(),
        job_id: job_id.clone(),
        host: host.clone(),
        started_at,
        ..ExitFile::default()
    };
    let _ = publish(
        run_dir,
        "started.json",
        &serde_json::json!({"run": rf.run, "jobId": job_id, "host": host, "pid": std::process::id(), "startedAt": started_at}),
    );
    let fail = |mut exit: ExitFile, why: String| {
        eprintln!("databuild: {why}");
        exit.error = Some(why);
        exit.ended_at = unix_now();
        let _ = publish(run_dir, "exit.json", &exit);
        111
    };
    if !rf.cwd.is_dir() || std::env::set_current_dir(&rf.cwd).is_err() {
        let why = format!(
            "cannot enter the graph directory {} on {host}: it must be on storage the compute nodes share with the engine's host",
            rf.cwd.display()
        );
        return fail(exit, why);
    }
    let stdin = match std::fs::File::open(run_dir.join("stdin.json")) {
        Ok(f) => f,
        Err(e) => return fail(exit, format!("cannot open {}/stdin.json: {e}", run_dir.display())),
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(exit, format!("cannot start: {e}")),
    };
    let outcome = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut child = tokio::process::Command::new(&rf.entrypoint)
            .arg("exec")
            .args(&rf.args)
            .stdin(stdin)
            .process_group(0)
            .spawn()
            .map_err(|e| {
                let errno = e.raw_os_error().unwrap_or(0);
                format!(
                    "cannot execute {}: {}",
                    rf.entrypoint.display(),
                    sys::spawn_error_text(&rf.entrypoint, errno)
                )
            })?;
        let pgid = child.id().map_or(0, |p| p as i32);
        let handler = |k| signal(k).map_err(|e| format!("cannot handle signals: {e}"));
        let mut term = handler(SignalKind::terminate())?;
        let mut int = handler(SignalKind::interrupt())?;
        let mut usr1 = handler(SignalKind::user_defined1())?;
        let mut usr2 = handler(SignalKind::user_defined2())?;
        let mut received = None;
        let st = loop {
            let sig = tokio::select! {
                st = child.wait() => break st,
                _ = term.recv() => sys::SIGTERM,
                _ = int.recv() => sys::SIGINT,
                _ = usr1.recv() => libc::SIGUSR1,
                _ = usr2.recv() => libc::SIGUSR2,
            };
            received = Some(sig);
            let _ = publish(
                run_dir,
                "terminating.json",
                &serde_json::json!({"run": rf.run, "jobId": job_id, "signal": sig, "at": unix_now()}),
            );
            if pgid > 0 {
                let _ = sys::signal_group(pgid, sig);
            }
        };
        // What the job left in its group goes with it (Slurm's cgroup would, later).
        if pgid > 0 {
            let _ = sys::signal_group(pgid, sys::SIGKILL);
        }
        Ok::<_, String>((st, received))
    });
    match outcome {
        Err(why) => fail(exit, why),
        Ok((Err(e), _)) => fail(exit, format!("cannot wait for the job: {e}")),
        Ok((Ok(st), received)) => {
            use std::os::unix::process::ExitStatusExt;
            exit.exit_code = st.code();
            exit.signal = st.signal();
            exit.signal_received = received;
            exit.ended_at = unix_now();
            if let Err(e) = publish(run_dir, "exit.json", &exit) {
                eprintln!("databuild: cannot write {}/exit.json: {e}", run_dir.display());
            }
            st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
        }
    }
}
