//! CONTRACT §12 against a real Slurm: the color-votes example on Slurm, mixed local and Slurm
//! jobs, a timeout, a cancel, `kill -9` of the engine then `recover` adopting the runs, a
//! controller restart mid-build, a job whose directory is missing, sbatch missing or refusing.
//!
//! Needs a single-node Slurm (`.ci/slurm-up.sh`, which CI runs as root). Without one, each test
//! prints why and passes, unless `DATABUILD_REQUIRE_SLURM=1` (set by `.ci/run`): then it fails.
//! The tests take turns (one lock): they share one small cluster, and one restarts it.

use std::time::{Duration, Instant};

use crate::util::*;

static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether a Slurm node answers; panics if it must and does not.
fn slurm_up(test: &str) -> bool {
    let up = std::process::Command::new("sinfo").args(["-h", "-o", "%t"]).output().is_ok_and(|o| {
        o.status.success() && {
            let s = String::from_utf8_lossy(&o.stdout);
            s.lines().any(|l| ["idle", "mix", "alloc"].contains(&l.trim()))
        }
    });
    if !up {
        assert!(
            std::env::var("DATABUILD_REQUIRE_SLURM").as_deref() != Ok("1"),
            "{test}: DATABUILD_REQUIRE_SLURM=1 but no Slurm node answers `sinfo` (run .ci/slurm-up.sh as root)"
        );
        eprintln!("skipped {test}: no Slurm node answers `sinfo` (run .ci/slurm-up.sh as root)");
    }
    up
}

/// Takes this test's turn on the cluster, or `None` if Slurm is absent (and may be).
fn turn(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    let guard = TURN.lock().unwrap_or_else(|p| p.into_inner());
    slurm_up(test).then_some(guard)
}

/// The generic job, which also keeps what it saw: `env/<key>` (its environment), `stdin/<key>`
/// (its stdin), `cwd/<key>` (its working directory); it sleeps `sleep/<key>` seconds if present.
fn job() -> String {
    GENERIC_JOB.replace(
        r#"if [ -n "$SLEEP" ]; then sleep "$SLEEP"; fi"#,
        r#"mkdir -p env stdin cwd
env > "env/$key"; cat > "stdin/$key"; pwd > "cwd/$key"
if [ -f "sleep/$key" ]; then sleep "$(cat "sleep/$key")"; fi"#,
    )
}

/// A graph of this test job: (label, pattern, extra keys) each, under `head`.
fn graph(head: &str, jobs: &[(&str, &str, &str)]) -> Env {
    let e = Env::empty();
    e.script("jobs/job.sh", &job());
    let mut toml = head.to_string();
    for (label, pattern, extra) in jobs {
        toml.push_str(&format!(
            "\n[[jobs]]\nlabel = \"{label}\"\nentrypoint = \"jobs/job.sh\"\npartition_patterns = ['{pattern}']\n{extra}\n"
        ));
    }
    e.write("databuild.toml", &toml);
    e
}

const SLURM: &str = "[executor]\nkind = \"slurm\"\n";

fn key(r: &str) -> String {
    r.replace('/', "_")
}

/// JOB_RUNNING events of a run's job label: the executor handle each recorded.
fn running_handles(evs: &[serde_json::Value], label: &str) -> Vec<serde_json::Value> {
    events_of(evs, "jobEvent", Some("JOB_RUNNING"))
        .into_iter()
        .filter(|e| e["event"]["jobEvent"]["jobLabel"]["label"] == label)
        .map(|e| e["event"]["jobEvent"]["executor"].clone())
        .collect()
}

/// Slurm jobs named `run` still pending or running.
fn active_slurm_jobs(run: &str) -> String {
    let out = std::process::Command::new("squeue")
        .args(["-h", "-t", "PD,R,CG,S", "-n", run, "-o", "%i %T"])
        .output()
        .expect("squeue");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run ids of JOB_RUNNING events, in order.
fn run_ids(evs: &[serde_json::Value], status: &str) -> Vec<String> {
    events_of(evs, "jobEvent", Some(status))
        .into_iter()
        .map(|e| e["event"]["jobEvent"]["jobRunId"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn color_votes_on_slurm_builds_and_lineage_and_logs_work() {
    let Some(_turn) = turn("color_votes_on_slurm") else { return };
    let e = Env::example("color_votes");
    let toml = e.read("databuild.toml");
    e.write("databuild.toml", &format!("{SLURM}\n{toml}"));
    let report = "color_vote_report/2025-01-02/red";
    e.run(&["build", report]).ok();
    let evs = events(&e);
    let handles = running_handles(&evs, "color_vote_report");
    assert_eq!(handles.len(), 1, "{handles:?}");
    assert_eq!(handles[0]["kind"], "slurm");
    let job_id = handles[0]["slurm"]["jobId"].as_str().unwrap_or_default();
    assert!(job_id.parse::<u64>().is_ok(), "a Slurm job id is recorded: {handles:?}");
    let lineage = e.run(&["lineage", report]).ok().stdout.clone();
    assert!(lineage.contains("built by color_vote_report run"), "{lineage}");
    assert!(lineage.contains("votes_1w/2025-01-02/red"), "{lineage}");
    let run = events_of(&evs, "jobEvent", Some("JOB_COMPLETED"))
        .into_iter()
        .map(|e| &e["event"]["jobEvent"])
        .find(|j| j["jobLabel"]["label"] == "color_vote_report")
        .and_then(|j| j["jobRunId"].as_str())
        .expect("the report's run")
        .to_string();
    assert!(lineage.contains(&run), "{lineage}");
    let logs = e.run(&["logs", &run]).ok().stdout.clone();
    assert!(logs.contains("report 2025-01-02 red"), "the job's stdout through `logs`: {logs}");
    e.run(&["verify"]).ok();
}

#[test]
fn mixed_local_and_slurm_jobs_keep_the_job_protocol() {
    let Some(_turn) = turn("mixed_local_and_slurm") else { return };
    let e = graph(
        SLURM,
        &[
            ("up", "up/.*", "env = { GRAPH_ENV = \"g\" }"),
            ("down", "down/.*", "executor = \"local\""),
        ],
    );
    e.dep("down/1", "MATERIALIZE", "up/1");
    e.run(&["build", "down/1"]).ok();
    let evs = events(&e);
    assert_eq!(running_handles(&evs, "up")[0]["kind"], "slurm");
    assert_eq!(running_handles(&evs, "down")[0]["kind"], "local");
    assert_eq!(e.ledger(), vec!["up/1", "down/1"]);
    // The Slurm run's protocol: environment, stdin, working directory.
    let env = e.read(&format!("env/{}", key("up/1")));
    let run = run_ids(&evs, "JOB_RUNNING")[0].clone();
    assert!(env.contains(&format!("DATABUILD_JOB_RUN_ID={run}")), "{env}");
    assert!(env.contains("DATABUILD_OUTPUTS=up/1"), "{env}");
    assert!(env.contains("GRAPH_ENV=g"), "{env}");
    assert!(env.contains("SLURM_JOB_ID="), "the job sees SLURM_JOB_ID: {env}");
    let stdin: serde_json::Value =
        serde_json::from_str(&e.read(&format!("stdin/{}", key("up/1")))).expect("stdin is JSON");
    assert_eq!(stdin["args"][0], "up/1", "{stdin}");
    let cwd = e.read(&format!("cwd/{}", key("up/1")));
    let here = std::fs::canonicalize(e.path()).unwrap();
    assert_eq!(cwd.trim(), here.display().to_string());
    assert!(e.exists("data/up/1") && e.exists("data/down/1"));
}

#[test]
fn a_slurm_run_past_its_timeout_is_stopped_and_recorded_timed_out() {
    let Some(_turn) = turn("slurm_timeout") else { return };
    let e = graph(SLURM, &[("slow", "slow/.*", "timeout_seconds = 2")]);
    e.write(&format!("sleep/{}", key("slow/1")), "120");
    let start = Instant::now();
    e.run(&["build", "slow/1"]).code(1);
    assert!(start.elapsed() < Duration::from_secs(60), "stopped well before the sleep ends");
    let evs = events(&e);
    let failed = events_of(&evs, "jobEvent", Some("JOB_FAILED"));
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["event"]["jobEvent"]["failure"], "JOB_FAILURE_TIMED_OUT");
    let run = run_ids(&evs, "JOB_RUNNING")[0].clone();
    wait_for("the Slurm job to end", Duration::from_secs(60), || {
        active_slurm_jobs(&run).is_empty()
    });
}

#[test]
fn cancelling_a_build_scancels_its_slurm_runs() {
    let Some(_turn) = turn("slurm_cancel") else { return };
    let e = graph(SLURM, &[("slow", "slow/.*", "")]);
    e.write(&format!("sleep/{}", key("slow/1")), "120");
    let child = e.spawn(&["build", "slow/1"], &[]);
    wait_for("the job to start on Slurm", Duration::from_secs(60), || e.exists("ledger.txt"));
    signal(&child, "INT");
    let out = finish(child, DEADLINE);
    assert_eq!(out.code, 130, "{}", out.stderr);
    let evs = events(&e);
    assert_eq!(run_ids(&evs, "JOB_CANCELLED").len(), 1);
    let run = run_ids(&evs, "JOB_RUNNING")[0].clone();
    wait_for("the Slurm job to end", Duration::from_secs(60), || {
        active_slurm_jobs(&run).is_empty()
    });
    // The job got SIGTERM through the batch script (which forwards it to the job's group).
    let dir = e.path().join(".databuild/logs").join(&run);
    let exit = std::fs::read_to_string(dir.join("exit.json")).unwrap_or_default();
    assert!(exit.contains("\"signalReceived\":15"), "{exit}");
}

#[test]
fn slurm_runs_outlive_a_killed_engine_and_recover_adopts_them() {
    let Some(_turn) = turn("slurm_kill_recover") else { return };
    let e = graph(SLURM, &[("a", "a/.*", ""), ("b", "b/.*", "")]);
    // quick ends while the engine is down; long is still running when recover starts; b/1
    // needs long (recover builds it after adopting long).
    e.write(&format!("sleep/{}", key("a/quick")), "1");
    e.write(&format!("sleep/{}", key("a/long")), "8");
    e.dep("b/1", "MATERIALIZE", "a/long");
    let mut child = e.spawn(&["build", "a/quick", "b/1"], &[]);
    wait_for("both runs to start", Duration::from_secs(60), || e.ledger().len() == 2);
    signal(&child, "KILL");
    let _ = child.wait();
    let logs = e.path().join(".databuild/logs");
    let evs = events(&e);
    let runs = run_ids(&evs, "JOB_RUNNING");
    assert_eq!(runs.len(), 2);
    wait_for("a/quick to end while no engine runs", Duration::from_secs(60), || {
        runs.iter().filter(|r| logs.join(r).join("exit.json").exists()).count() == 1
    });
    let out = e.run(&["recover"]);
    out.ok();
    let evs = events(&e);
    // Nothing ran twice: each ref once in the job ledger, each run id submitted once.
    let mut ledger = e.ledger();
    ledger.sort();
    assert_eq!(ledger, vec!["a/long", "a/quick", "b/1"]);
    let running = run_ids(&evs, "JOB_RUNNING");
    let unique: std::collections::HashSet<_> = running.iter().collect();
    assert_eq!(unique.len(), running.len(), "no run id recorded RUNNING twice");
    let completed = run_ids(&evs, "JOB_COMPLETED");
    for r in &runs {
        assert!(completed.contains(r), "run {r} (adopted or ended while down) is COMPLETED");
    }
    let status = e.run(&["status", "a/quick", "a/long", "b/1"]).ok().stdout.clone();
    assert_eq!(status.matches("AVAILABLE").count(), 3, "{status}");
    e.run(&["verify"]).ok();
}

#[test]
fn a_controller_restart_mid_build_fails_nothing() {
    let Some(_turn) = turn("slurmctld_restart") else { return };
    let pidfile = std::path::Path::new("/run/databuild-slurm/slurmctld.pid");
    let Some(pid) = std::fs::read_to_string(pidfile).ok().map(|p| p.trim().to_string()) else {
        assert!(
            std::env::var("DATABUILD_REQUIRE_SLURM").as_deref() != Ok("1"),
            "no slurmctld started by .ci/slurm-up.sh to restart"
        );
        eprintln!("skipped slurmctld_restart: slurmctld was not started by .ci/slurm-up.sh");
        return;
    };
    let e = graph(SLURM, &[("a", "a/.*", "")]);
    for r in ["a/1", "a/2"] {
        e.write(&format!("sleep/{}", key(r)), "4");
    }
    let child = e.spawn(&["build", "a/1", "a/2", "a/3", "a/4"], &[]);
    wait_for("a run to start", Duration::from_secs(60), || !e.ledger().is_empty());
    let st = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(st.success());
    // Down for a while (calls made now wait and are retried), then up again.
    std::thread::sleep(Duration::from_secs(3));
    let up = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/slurm-up.sh"))
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stdout));
    let out = finish(child, DEADLINE);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let evs = events(&e);
    assert_eq!(run_ids(&evs, "JOB_COMPLETED").len(), 4);
    assert!(run_ids(&evs, "JOB_FAILED").is_empty());
}

#[test]
fn sbatch_missing_or_refusing_fails_the_run_with_its_message() {
    let Some(_turn) = turn("sbatch_faults") else { return };
    // A PATH with the tools the job's `config` needs, and an sbatch that refuses.
    let bin = Env::empty();
    for tool in ["sh", "tr", "cat", "mkdir", "dirname", "env", "sleep"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap();
        let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
        std::os::unix::fs::symlink(&path, bin.path().join(tool)).unwrap();
    }
    let path = bin.path().display().to_string();
    let e = graph(SLURM, &[("a", "a/.*", "retries = 2")]);
    let out = e.run_env(&["build", "a/1"], &[("PATH", &path)]);
    out.code(1);
    let evs = events(&e);
    let failed = events_of(&evs, "jobEvent", Some("JOB_FAILED"));
    // Each attempt fails once, with one line; no more attempts than `retries` allows.
    assert_eq!(failed.len(), 3, "{failed:?}");
    let j = &failed[0]["event"]["jobEvent"];
    assert_eq!(j["failure"], "JOB_FAILURE_SPAWN_FAILED");
    let msg = j["message"].as_str().unwrap_or_default();
    assert!(msg.contains("`sbatch` not found") && !msg.contains('\n'), "{msg}");
    bin.script(
        "sbatch",
        "#!/bin/sh\necho call >> \"$SBATCH_CALLS\"\necho 'sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified' >&2\nexit 1\n",
    );
    let e = graph(SLURM, &[("a", "a/.*", "")]);
    let calls = e.path().join("sbatch-calls").display().to_string();
    e.run_env(&["build", "a/1"], &[("PATH", &path), ("SBATCH_CALLS", &calls)]).code(1);
    assert_eq!(e.read("sbatch-calls").lines().count(), 1, "a refusal is not retried");
    let evs = events(&e);
    let failed = events_of(&evs, "jobEvent", Some("JOB_FAILED"));
    let msg = failed[0]["event"]["jobEvent"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("Invalid account"), "{msg}");
    assert!(e.ledger().is_empty());
}
