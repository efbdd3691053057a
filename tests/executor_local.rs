//! The local executor's held run: while held it keeps none of the engine's files open (only its
//! stdio and its two pipes), so a crashed engine's lock and other runs' pipes are never held
//! back by it; let go, it exits without running the job; released, it runs the job with the
//! config on stdin and the output in its files.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use databuild::executor::local::Local;
use databuild::executor::{Executor, RunSpec};
use databuild::graph::Job;
use databuild::proto::JobConfig;

fn job(dir: &std::path::Path) -> Job {
    let script = dir.join("job.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncat > got_stdin.json\necho \"ran $2 $DATABUILD_OUTPUTS\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    Job {
        label: "j".into(),
        entrypoint: script,
        entrypoint_text: "job.sh".into(),
        patterns: vec!["p/.*".into()],
        env: Default::default(),
        timeout: None,
        config_timeout: Duration::from_secs(10),
        retries: 0,
        max_concurrency: None,
        output_path: None,
        version: None,
        executor: None,
        cpus: None,
        memory_mb: None,
    }
}

fn open_fds(pid: i32) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect()
}

#[test]
fn a_held_run_keeps_none_of_the_engines_files_and_runs_only_once_released() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    // Files this process has open, as the engine has its log's lock and segments.
    let lock = std::fs::File::create(dir.path().join("LOCK")).unwrap();
    let j = job(dir.path());
    let local = Local { logs_dir: dir.path().join("logs") };
    let config = JobConfig { args: vec!["p/1".into()], ..JobConfig::default() };
    let outputs = vec!["p/1".to_string()];
    let spec = |run: &'static str| RunSpec {
        request: "r",
        run,
        job: &j,
        graph_dir: dir.path(),
        config: &config,
        outputs: &outputs,
    };
    rt.block_on(async {
        // The engine handles SIGTERM (as the CLI does); a held child must not.
        let _sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        // Held, then let go: it never runs the job, and it held nothing of ours meanwhile.
        let p = local.prepare(&spec("run-1")).unwrap();
        let pid = p.handle.process.as_ref().unwrap().pid;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let fds = open_fds(pid);
        assert!(
            fds.iter().all(|f| !f.ends_with("LOCK")),
            "the held child keeps the engine's files open: {fds:?}"
        );
        assert!(fds.len() <= 5, "stdio and two pipes only: {fds:?}");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let caught = status.lines().find(|l| l.starts_with("SigCgt:")).unwrap_or_default();
        let mask = u64::from_str_radix(caught.trim_start_matches("SigCgt:").trim(), 16).unwrap();
        // Signals 32 and 33 are glibc's own (thread cancellation, set*id): not ours to reset.
        let ours = mask & !(0b11 << 31);
        assert_eq!(ours, 0, "the held child runs the engine's signal handlers: {caught}");
        drop(p.held);
        let report = tokio::time::timeout(Duration::from_secs(10), p.exit).await.unwrap();
        assert_eq!(report.code, Some(databuild::sys::NOT_RELEASED), "{report:?}");
        assert!(!dir.path().join("got_stdin.json").exists(), "the job did not run");
        // Released: it runs with the config on stdin and its output in its files.
        let p = local.prepare(&spec("run-2")).unwrap();
        p.held.release().unwrap();
        let report = tokio::time::timeout(Duration::from_secs(10), p.exit).await.unwrap();
        assert_eq!(report.code, Some(0), "{report:?}");
        let out = std::fs::read_to_string(local.output("run-2").stdout).unwrap();
        assert_eq!(out.trim(), "ran p/1 p/1");
        let stdin = std::fs::read_to_string(dir.path().join("got_stdin.json")).unwrap();
        assert!(stdin.contains("\"p/1\""), "{stdin}");
    });
    drop(lock);
}
