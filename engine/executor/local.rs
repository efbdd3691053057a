//! The local executor: each run is a process group on this machine.
//!
//! A run is spawned as `databuild __job-shim` (see [`crate::shim`]) in a new process group, with a
//! pipe as its stdin; the shim waits for one byte on that pipe and then `exec`s the job in place
//! (same pid, same group). The handle recorded in JOB_RUNNING is the group with the host, boot id
//! and the leader's start time, so that after a crash a group is signalled only if it is provably
//! still the run's. Output goes to `<logs>/<run>/{stdout,stderr}`; the config is `stdin.json`.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{Executor, ExitReport, Handle, Held, OutputPaths, Prepared, Reconciled, RunSpec, Stop};
use crate::proto::{ExecutorHandle, JobStatus, ProcessInfo};
use crate::state::Run;
use crate::sys;

/// How often a stopping group is checked for exit during reconciliation.
const STOP_POLL: Duration = Duration::from_millis(20);

/// Runs jobs as local process groups.
#[derive(Clone, Debug)]
pub struct Local {
    /// The databuild executable (it doubles as the job shim).
    pub shim: PathBuf,
    /// `.databuild/logs/`.
    pub logs_dir: PathBuf,
}

/// This host's name and boot id, read once per process (they do not change while it runs).
pub fn this_machine() -> (&'static str, &'static str) {
    static MACHINE: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    let (h, b) = MACHINE.get_or_init(|| (databuild_log::fs::host_name(), sys::boot_id()));
    (h, b)
}

struct Pipe(std::io::PipeWriter);

impl Held for Pipe {
    fn release(mut self: Box<Self>) -> Result<(), String> {
        // One byte: the shim execs the job. If the shim is gone already, its exit is reported.
        self.0.write_all(b"\n").map_err(|e| format!("cannot release the job shim: {e}"))
    }
}

impl Local {
    fn spawn(&self, spec: &RunSpec<'_>) -> std::io::Result<Prepared> {
        let paths = self.output(spec.run);
        std::fs::create_dir_all(&paths.dir)?;
        let json = serde_json::to_vec(spec.config).map_err(std::io::Error::other)?;
        std::fs::write(&paths.stdin, json)?;
        let stdout = std::fs::File::create(&paths.stdout)?;
        let stderr = std::fs::File::create(&paths.stderr)?;
        let spawn_error = paths.dir.join("spawn_error");
        let (ready_r, ready_w) = std::io::pipe()?;
        let mut cmd = tokio::process::Command::new(&self.shim);
        cmd.arg("__job-shim")
            .arg("--stdin")
            .arg(&paths.stdin)
            .arg("--spawn-error")
            .arg(&spawn_error)
            .arg("--")
            .arg(&spec.job.entrypoint)
            .arg("exec")
            .args(&spec.config.args)
            .current_dir(spec.graph_dir)
            .envs(&spec.job.env)
            .envs(&spec.config.env)
            .env("DATABUILD_JOB_RUN_ID", spec.run)
            .env("DATABUILD_BUILD_REQUEST_ID", spec.request)
            .env("DATABUILD_OUTPUTS", spec.outputs.join(" "))
            .stdin(Stdio::from(ready_r))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn()?;
        let pid = child.id().map_or(0, |p| p as i32);
        let (host, boot_id) = this_machine();
        let process = ProcessInfo {
            pid,
            pgid: pid,
            host: host.to_string(),
            boot_id: boot_id.to_string(),
            start_time_ticks: sys::start_ticks(pid).unwrap_or(0),
        };
        let handle = Handle {
            executor: ExecutorHandle { kind: "local".into(), id: pid.to_string() },
            process: Some(process),
        };
        let exit = Box::pin(async move {
            use std::os::unix::process::ExitStatusExt;
            let status = child.wait().await;
            // Anything left in the job's group after its leader exits is terminated.
            let leftovers = sys::group_exists(pid);
            if leftovers {
                let _ = sys::signal_group(pid, sys::SIGKILL);
            }
            let spawn_error = std::fs::read_to_string(&spawn_error).ok().map(|s| s.trim().into());
            match status {
                Ok(s) => ExitReport {
                    code: s.code(),
                    signal: s.signal(),
                    spawn_error,
                    wait_error: None,
                    leftovers,
                },
                Err(e) => ExitReport {
                    spawn_error,
                    wait_error: Some(e.to_string()),
                    leftovers,
                    ..ExitReport::default()
                },
            }
        });
        Ok(Prepared { handle, held: Box::new(Pipe(ready_w)), exit })
    }
}

impl Executor for Local {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn prepare(&self, spec: &RunSpec<'_>) -> Result<Prepared, String> {
        self.spawn(spec).map_err(|e| {
            format!(
                "could not start the job shim (job output in {}): {e}",
                self.output(spec.run).dir.display()
            )
        })
    }

    fn stop(&self, handle: &Handle, how: Stop) {
        if let Some(p) = &handle.process {
            let sig = match how {
                Stop::Term => sys::SIGTERM,
                Stop::Kill => sys::SIGKILL,
            };
            let _ = sys::signal_group(p.pgid, sig);
        }
    }

    fn has_ended(&self, handle: &Handle) -> bool {
        let Some(p) = &handle.process else { return true };
        sys::is_zombie(p.pid) || sys::start_ticks(p.pid) != Some(p.start_time_ticks)
    }

    fn reconcile(&self, run: &Run, grace: Duration) -> Reconciled {
        let (host, boot) = this_machine();
        match (&run.status, &run.process) {
            (JobStatus::JobRunning, Some(p)) if provably_ours(run, p, host, boot) => Reconciled {
                what: format!("process group {} {}", p.pgid, stop_group(p.pgid, grace)),
                warning: None,
            },
            (JobStatus::JobRunning, Some(p)) if p.host != host => Reconciled {
                what: "on another host, not signalled".to_string(),
                warning: Some(format!(
                    "job run {} was running on host {} (pid {}); it was not signalled from here, stop it there if it is still running",
                    run.id, p.host, p.pid
                )),
            },
            (JobStatus::JobRunning, Some(p)) => Reconciled {
                what: format!("process {} gone (or not provably the run's)", p.pid),
                warning: None,
            },
            _ => Reconciled { what: "never started".to_string(), warning: None },
        }
    }

    fn output(&self, run: &str) -> OutputPaths {
        super::output_paths(&self.logs_dir, run)
    }
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
