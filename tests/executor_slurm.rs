//! The Slurm executor against a real Slurm, below the engine: a run whose graph directory is
//! missing on the node fails loudly (Slurm itself would run it in /tmp); a held run runs only once
//! released; let go, it never runs.
//!
//! Needs a single-node Slurm (`.ci/slurm-up.sh`); without one each test prints why and passes,
//! unless `DATABUILD_REQUIRE_SLURM=1` (set by `.ci/run`): then it fails.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use databuild::executor::slurm::Slurm;
use databuild::executor::{Executor, RunSpec};
use databuild::graph::{ExecutorSettings, Job};
use databuild::proto::JobConfig;

static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn slurm_up(test: &str) -> bool {
    let up = std::process::Command::new("sinfo").args(["-h", "-o", "%t"]).output().is_ok_and(|o| {
        o.status.success()
            && String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| ["idle", "mix", "alloc"].contains(&l.trim()))
    });
    if !up {
        assert!(
            std::env::var("DATABUILD_REQUIRE_SLURM").as_deref() != Ok("1"),
            "{test}: DATABUILD_REQUIRE_SLURM=1 but no Slurm node answers `sinfo`"
        );
        eprintln!("skipped {test}: no Slurm node answers `sinfo` (run .ci/slurm-up.sh as root)");
    }
    up
}

fn job(dir: &std::path::Path) -> Job {
    let script = dir.join("job.sh");
    std::fs::write(&script, "#!/bin/sh\necho ran >> \"$LEDGER\"\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    Job {
        label: "j".into(),
        entrypoint: script,
        entrypoint_text: "job.sh".into(),
        patterns: vec!["p/.*".into()],
        env: [("LEDGER".to_string(), dir.join("ledger").display().to_string())].into(),
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

fn slurm(logs: &std::path::Path) -> Slurm {
    Slurm::new(
        logs.to_path_buf(),
        ExecutorSettings::default(),
        env!("CARGO_BIN_EXE_databuild").into(),
    )
}

fn run_id(tag: &str) -> String {
    format!(
        "test-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    )
}

#[test]
fn a_missing_graph_directory_on_the_node_fails_the_run_loudly() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    if !slurm_up("slurm_missing_graph_dir") {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let graph = tempfile::tempdir().unwrap();
    let jobs = tempfile::tempdir().unwrap();
    let j = job(jobs.path());
    let config = JobConfig { args: vec!["p/1".into()], ..JobConfig::default() };
    let outputs = vec!["p/1".to_string()];
    let run = run_id("missing-dir");
    let graph_dir = graph.path().to_path_buf();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let s = slurm(logs.path());
    let report = rt.block_on(async {
        let spec = RunSpec {
            request: "r",
            run: &run,
            job: &j,
            graph_dir: &graph_dir,
            config: &config,
            outputs: &outputs,
        };
        let p = s.prepare(&spec).expect("submitted");
        assert_eq!(p.handle.executor.kind, "slurm");
        // Submitted, held: then the directory goes away before the job starts.
        drop(graph);
        p.held.release().unwrap();
        tokio::time::timeout(Duration::from_secs(90), p.exit).await.expect("the run ends")
    });
    let why = report.spawn_error.unwrap_or_default();
    assert!(why.contains("cannot enter the graph directory"), "{why}");
    assert!(why.contains(&graph_dir.display().to_string()), "{why}");
    assert!(!jobs.path().join("ledger").exists(), "the job never ran (not in /tmp either)");
    let stderr = std::fs::read_to_string(s.output(&run).stderr).unwrap_or_default();
    assert!(stderr.contains("cannot enter the graph directory"), "said in its stderr: {stderr}");
}

#[test]
fn a_held_run_let_go_never_runs() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    if !slurm_up("slurm_let_go") {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let j = job(dir.path());
    let config = JobConfig::default();
    let outputs = vec!["p/1".to_string()];
    let run = run_id("let-go");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let s = slurm(logs.path());
    let report = rt.block_on(async {
        let spec = RunSpec {
            request: "r",
            run: &run,
            job: &j,
            graph_dir: dir.path(),
            config: &config,
            outputs: &outputs,
        };
        let p = s.prepare(&spec).expect("submitted");
        drop(p.held);
        tokio::time::timeout(Duration::from_secs(90), p.exit).await.expect("the run ends")
    });
    assert_ne!(report.code, Some(0), "{report:?}");
    assert!(!dir.path().join("ledger").exists(), "a run let go never runs");
}

fn recorded_running(run: &str) -> databuild::state::Run {
    databuild::state::Run {
        id: run.into(),
        request: "r".into(),
        job_label: "j".into(),
        status: databuild::proto::JobStatus::JobRunning,
        targets: vec!["p/1".into()],
        attempt: 1,
        first_seq: 1,
        first_ts: 0,
        running: Some((2, 0)),
        ended: None,
        failure: databuild::proto::JobFailureKind::JobFailureUnknown,
        exit_code: None,
        message: String::new(),
        process: None,
        manifest_times: None,
        inputs: Vec::new(),
        version: None,
        stale: None,
    }
}

fn handle(job_id: &str) -> databuild::proto::ExecutorHandle {
    databuild::proto::ExecutorHandle {
        kind: "slurm".into(),
        id: job_id.into(),
        slurm: Some(databuild::proto::SlurmJob { job_id: job_id.into(), cluster: String::new() }),
    }
}

#[test]
fn a_reissued_or_forgotten_job_id_is_never_taken_for_the_run() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    if !slurm_up("slurm_reissued_ids") {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let s = slurm(logs.path());
    // After a controller crash, the id recorded for our run now names someone else's job.
    let other = std::process::Command::new("sbatch")
        .args(["--parsable", "-J", "someone-else", "--output=/dev/null", "--wrap=sleep 20"])
        .output()
        .unwrap();
    assert!(other.status.success(), "{}", String::from_utf8_lossy(&other.stderr));
    let other_id = String::from_utf8_lossy(&other.stdout).trim().to_string();
    let run = recorded_running(&run_id("reissued"));
    let found = s.reconcile(&run, Some(&handle(&other_id)), Duration::from_secs(1));
    let why = found.outcome.and_then(|r| r.wait_error).unwrap_or_default();
    assert!(why.contains("is now another job"), "{why}");
    // The other job was neither adopted nor stopped.
    let state = std::process::Command::new("squeue")
        .args(["-h", "-j", &other_id, "-o", "%T"])
        .output()
        .unwrap();
    let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
    assert!(["PENDING", "RUNNING"].contains(&state.as_str()), "{state}");
    let _ = std::process::Command::new("scancel").arg(&other_id).status();
    // A submission the controller forgot: no job of that id at all.
    let run = recorded_running(&run_id("forgotten"));
    let found = s.reconcile(&run, Some(&handle("987654321")), Duration::from_secs(1));
    let why = found.outcome.and_then(|r| r.wait_error).unwrap_or_default();
    assert!(why.contains("Slurm has no record of job 987654321"), "{why}");
}
