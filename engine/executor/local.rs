//! The local executor: each run is a process group on this machine.
//!
//! A run is forked in a new process group (see [`sys::spawn_held`]): the child creates its output
//! files, takes the config as its stdin, and waits for one byte on a release pipe before it
//! `execve`s the job (same pid, same group): one `fork` and one `execve` per run. The handle recorded in JOB_RUNNING is the group with the host, boot id
//! and the leader's start time, so that after a crash a group is signalled only if it is provably
//! still the run's. Output goes to `<logs>/<run>/{stdout,stderr}`; the config is `stdin.json`.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
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
    /// `.databuild/logs/`.
    pub logs_dir: PathBuf,
}

/// This host's name and boot id, read once per process (they do not change while it runs).
pub fn this_machine() -> (&'static str, &'static str) {
    static MACHINE: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    let (h, b) = MACHINE.get_or_init(|| (databuild_log::fs::host_name(), sys::boot_id()));
    (h, b)
}

struct Release(std::fs::File);

impl Held for Release {
    fn release(mut self: Box<Self>) -> Result<(), String> {
        // One byte: the child execs the job. If it is gone already, its exit is reported.
        std::io::Write::write_all(&mut self.0, b"\n")
            .map_err(|e| format!("cannot release the job: {e}"))
    }
}

fn cstring(what: &str, s: impl Into<Vec<u8>>) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what} contains a NUL byte"))
    })
}

fn path_c(p: &std::path::Path) -> std::io::Result<CString> {
    cstring("a path", p.as_os_str().as_bytes())
}

impl Local {
    fn spawn(&self, spec: &RunSpec<'_>) -> std::io::Result<Prepared> {
        let paths = self.output(spec.run);
        // The child creates the run's own directory; the logs directory must exist.
        std::fs::create_dir_all(&self.logs_dir)?;
        let stdin_bytes = serde_json::to_vec(spec.config).map_err(std::io::Error::other)?;
        // The environment: the process's (read once), the graph's `env`, the config's `env`,
        // then ours.
        static PROCESS_ENV: std::sync::OnceLock<BTreeMap<OsString, OsString>> =
            std::sync::OnceLock::new();
        let mut env = PROCESS_ENV.get_or_init(|| std::env::vars_os().collect()).clone();
        for (k, v) in spec.job.env.iter().chain(&spec.config.env) {
            env.insert(k.into(), v.into());
        }
        env.insert("DATABUILD_JOB_RUN_ID".into(), spec.run.into());
        env.insert("DATABUILD_BUILD_REQUEST_ID".into(), spec.request.into());
        env.insert("DATABUILD_OUTPUTS".into(), spec.outputs.join(" ").into());
        let envp = env
            .iter()
            .map(|(k, v)| {
                let mut e = k.as_bytes().to_vec();
                e.push(b'=');
                e.extend_from_slice(v.as_bytes());
                cstring("an environment entry", e)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut argv = vec![path_c(&spec.job.entrypoint)?, cstring("exec", "exec")?];
        for a in &spec.config.args {
            argv.push(cstring("an argument", a.as_bytes())?);
        }
        let held = sys::HeldSpawn {
            program: path_c(&spec.job.entrypoint)?,
            argv,
            envp,
            cwd: path_c(spec.graph_dir)?,
            dir: path_c(&paths.dir)?,
            stdin: path_c(&paths.stdin)?,
            stdin_bytes,
            stdout: path_c(&paths.stdout)?,
            stderr: path_c(&paths.stderr)?,
        };
        let child = sys::spawn_held(&held)?;
        let pid = child.pid;
        let exited = match sys::exit_watch(child.exited) {
            Ok(w) => w,
            Err(e) => {
                // Let it go (its release pipe closes) and reap it: no zombie left behind.
                drop(child.release);
                let _ = sys::signal_group(pid, sys::SIGKILL);
                let _ = sys::reap_blocking(pid);
                return Err(e);
            }
        };
        let errors = std::fs::File::from(child.errors);
        let (host, boot_id) = this_machine();
        let process = ProcessInfo {
            pid,
            pgid: pid,
            host: host.to_string(),
            boot_id: boot_id.to_string(),
            start_time_ticks: sys::start_ticks(pid).unwrap_or(0),
        };
        let handle = Handle {
            executor: ExecutorHandle { kind: "local".into(), id: pid.to_string(), slurm: None },
            process: Some(process),
        };
        let entrypoint = spec.job.entrypoint.clone();
        let exit = Box::pin(async move {
            let mut leftovers = false;
            let status = loop {
                let mut ready = match exited.readable().await {
                    Ok(r) => r,
                    Err(e) => break Err(e),
                };
                // Anything left in the job's group after its leader exits is terminated, while
                // the leader is a zombie (so its pid, the group's id, cannot be reused yet): one
                // kill(2), no scan of /proc on this path.
                let _ = sys::signal_group(pid, sys::SIGKILL);
                match sys::reap(pid) {
                    Ok(Some(status)) => {
                        // Members the kill reached are still being torn down: the group exists.
                        leftovers = sys::group_exists(pid);
                        break Ok(status);
                    }
                    Ok(None) => ready.clear_ready(),
                    Err(e) => break Err(e),
                }
            };
            // A failed setup or execve says which step and why; a successful exec said nothing.
            let mut msg = [0u8; 5];
            let spawn_error = match std::io::Read::read(&mut &errors, &mut msg) {
                Ok(5) => {
                    let errno = i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]);
                    let step = sys::spawn_step(msg[0]);
                    Some(if msg[0] == 5 {
                        let why = sys::spawn_error_text(&entrypoint, errno);
                        format!("{step} {}: {why}", entrypoint.display())
                    } else {
                        format!("{step}: {}", sys::errno_text(errno))
                    })
                }
                _ => None,
            };
            match status {
                Ok(st) => {
                    let (code, signal) = sys::decode_status(st);
                    // 126/127 from the interpreter (`/usr/bin/env` not finding `python3\r`): a
                    // broken first line, said as such.
                    let spawn_error = spawn_error.or_else(|| match code {
                        Some(c @ (126 | 127)) => sys::diagnose_entrypoint(&entrypoint)
                            .map(|why| format!("exited with code {c}: {why}")),
                        _ => None,
                    });
                    ExitReport { code, signal, spawn_error, wait_error: None, leftovers }
                }
                Err(e) => ExitReport {
                    spawn_error,
                    wait_error: Some(e.to_string()),
                    leftovers,
                    ..ExitReport::default()
                },
            }
        });
        Ok(Prepared { handle, held: Box::new(Release(std::fs::File::from(child.release))), exit })
    }
}

impl Executor for Local {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn prepare(&self, spec: &RunSpec<'_>) -> Result<Prepared, String> {
        self.spawn(spec).map_err(|e| {
            format!(
                "could not start the job (job output in {}): {e}",
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

    fn reconcile(&self, run: &Run, _: Option<&ExecutorHandle>, grace: Duration) -> Reconciled {
        let (host, boot) = this_machine();
        match (&run.status, &run.process) {
            (JobStatus::JobRunning, Some(p)) if provably_ours(run, p, host, boot) => Reconciled {
                what: format!("process group {} {}", p.pgid, stop_group(p.pgid, grace)),
                warning: None,
                outcome: None,
            },
            (JobStatus::JobRunning, Some(p)) if p.host != host => Reconciled {
                what: "on another host, not signalled".to_string(),
                warning: Some(format!(
                    "job run {} was running on host {} (pid {}); it was not signalled from here, stop it there if it is still running",
                    run.id, p.host, p.pid
                )),
                outcome: None,
            },
            (JobStatus::JobRunning, Some(p)) => Reconciled {
                what: format!("process {} gone (or not provably the run's)", p.pid),
                warning: None,
                outcome: None,
            },
            _ => Reconciled { what: "never started".to_string(), warning: None, outcome: None },
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
