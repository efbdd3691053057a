//! Hardening: each test reproduces a way the log's promise was broken (or the engine hung) and
//! checks it holds now.

use crate::util::*;

fn last_seq(e: &Env) -> u64 {
    events(e).last().and_then(|v| v["seq"].as_u64()).unwrap_or(0)
}

fn available(e: &Env) -> Vec<String> {
    e.run(&["status", "--format", "json"])
        .ok()
        .json_lines()
        .into_iter()
        .filter(|p| p["status"] == "PARTITION_AVAILABLE")
        .filter_map(|p| p["partitionRef"].as_str().map(str::to_string))
        .collect()
}

/// A snapshot of a history that `repair --truncate` cut (or that a restored backup no longer
/// holds) must never stand in for the new history that reaches its seq again.
#[test]
fn a_snapshot_of_a_cut_history_is_never_used() {
    let e = Env::generic(&[("old", r"old/\d+"), ("new", r"new/\d+")]);
    let refs: Vec<String> = (0..8).map(|i| format!("old/{i}")).collect();
    let mut args = vec!["build"];
    args.extend(refs.iter().map(String::as_str));
    e.run(&args).ok();
    // A snapshot of this history, as the writer leaves one at close on a longer log.
    let (state, _, _) = databuild::store::load(&e.log_dir(), u64::MAX).unwrap();
    let snap_seq = state.last_seq;
    let snap = databuild::store::snapshots::write_current(&e.log_dir(), &state).unwrap();
    let kept = std::fs::read(&snap).unwrap();
    // Damage the first frame, and cut everything from there.
    let seg = e.log_dir().join("0000000000000000.seg");
    let mut b = std::fs::read(&seg).unwrap();
    b[64 + 40] ^= 0x55;
    std::fs::write(&seg, &b).unwrap();
    let r = e.run(&["repair", "--truncate"]);
    r.ok();
    assert!(!snap.exists(), "repair removes snapshots past the cut: {}", r.stderr);
    // Even restored (a backup of the snapshots directory, say), it is never used: build new
    // partitions one at a time until the new history passes its seq, checking at every step.
    std::fs::write(&snap, &kept).unwrap();
    let mut i = 0;
    while last_seq(&e) <= snap_seq + 3 {
        let r = format!("new/{i}");
        let out = e.run(&["build", &r]);
        out.ok();
        let avail = available(&e);
        assert!(avail.contains(&r), "{r} was just built: {avail:?}");
        assert!(
            avail.iter().all(|p| p.starts_with("new/")),
            "after {r} (seq {}): the cut partitions show AVAILABLE: {avail:?}",
            last_seq(&e)
        );
        i += 1;
        assert!(i < 200, "the log never reached seq {snap_seq}");
    }
    // Past its seq, `verify` no longer takes it as evidence of a lost end: the frame it names
    // is not this log's.
    let v = e.run(&["verify"]);
    v.ok();
    assert!(v.stdout.contains("another history"), "{}", v.stdout);
    let out = e.run(&["status"]);
    out.ok();
    assert!(out.stderr.contains("another history"), "the stale snapshot is named: {}", out.stderr);
    // And a build of the cut partitions runs them again (they are not in this history).
    e.run(&["build", "old/0"]).ok();
    assert_eq!(e.ledger().iter().filter(|l| *l == "old/0").count(), 2);
}

/// A "configure the whole batch" config (asked `many/4`, it answers for `many/0..4`): only what
/// was asked runs, AVAILABLE partitions are never rebuilt without `--force`, and `-v` says what
/// was dropped.
#[test]
fn a_config_answering_for_more_refs_than_asked_runs_only_what_is_needed() {
    let e = Env::generic(&[("many", r"many/\d+")]);
    e.run(&["build", "many/0", "many/1"]).ok();
    // From now on, every call answers for many/0..=N, whatever N was asked.
    e.script(
        "jobs/batch.sh",
        r#"#!/bin/sh
if [ "$1" = config ]; then
  shift; n=0; for r in "$@"; do [ ${r#many/} -gt $n ] && n=${r#many/}; done
  printf '{"configs":['; sep=
  i=0; while [ $i -le $n ]; do
    printf '%s{"outputs":[{"str":"many/%s"}],"args":["many/%s"]}' "$sep" $i $i; sep=,; i=$((i+1))
  done; printf ']}\n'; exit 0
fi
exec jobs/generic.sh "$@"
"#,
    );
    let toml = e.read("databuild.toml").replace("jobs/generic.sh", "jobs/batch.sh");
    e.write("databuild.toml", &toml);
    let plan = e.run(&["analyze", "many/4", "--format", "json"]).ok().stdout.clone();
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(plan["nodes"].as_array().map(Vec::len), Some(1), "one job for one ref: {plan}");
    let out = e.run(&["-v", "build", "many/4"]);
    out.ok();
    assert!(out.stderr.contains("dropped a config of many for many/0"), "{}", out.stderr);
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(e.ledger()),
        ["many/0", "many/1", "many/4"],
        "nothing AVAILABLE or unasked ran"
    );
    // Asked for several, only those run; forced, the forced one runs again.
    e.run(&["build", "many/2", "many/3"]).ok();
    e.run(&["build", "--force", "many/1"]).ok();
    assert_eq!(sorted(e.ledger()), ["many/0", "many/1", "many/1", "many/2", "many/3", "many/4"]);
}

/// Runs databuild with the size of any file it writes capped at the log's current size (as if the
/// disk were full for the log): `ulimit -f` and SIGXFSZ ignored, so writes fail with EFBIG.
fn run_with_full_disk(e: &Env, args: &[&str]) -> Out {
    let seg = e.log_dir().join("0000000000000000.seg");
    let blocks = std::fs::metadata(&seg).unwrap().len().div_ceil(512);
    e.run_limited(&format!("ulimit -f {blocks}; trap '' XFSZ"), args)
}

/// A log that fails while a request is being planned (disk full) ends the request at once with
/// the contract's exit 3 line; it neither spins nor holds the lock.
#[test]
fn a_log_failing_while_planning_ends_the_build_at_once() {
    let e = Env::generic(&[("raw", r"raw/\d+")]);
    e.run(&["build", "raw/0"]).ok();
    // Planning takes a while: the accepted request's write fails meanwhile.
    e.write("config_sleep", "");
    let job = e.read("jobs/generic.sh").replace(
        "if [ \"$cmd\" = config ]; then\n",
        "if [ \"$cmd\" = config ]; then\n  [ -f config_sleep ] && sleep 2\n",
    );
    e.script("jobs/generic.sh", &job);
    let started = std::time::Instant::now();
    let out = run_with_full_disk(&e, &["build", "raw/1"]);
    out.code(3);
    assert!(out.error_line().contains("log"), "{}", out.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "took {:?}", started.elapsed());
    // Nothing is held: the next writer opens, and the log is sound.
    e.run(&["verify"]).ok();
    std::fs::remove_file(e.path().join("config_sleep")).unwrap();
    e.run(&["build", "raw/1"]).ok();
    // With planning done before the failure shows (no config call): the same.
    let out = run_with_full_disk(&e, &["build", "raw/2"]);
    out.code(3);
    e.run(&["verify"]).ok();
}

/// SIGINT/SIGTERM while `config` runs: the request is recorded CANCELLED (so `recover` does not
/// plan it again), the config process is stopped, and the exit code is 130/143.
#[test]
fn a_signal_while_planning_cancels_the_request() {
    for (sig, code) in [("TERM", 143), ("INT", 130)] {
        let e = Env::generic(&[("raw", r"raw/\d+")]);
        let job = e.read("jobs/generic.sh").replace(
            "if [ \"$cmd\" = config ]; then\n",
            "if [ \"$cmd\" = config ]; then\n  touch config_started; exec sleep 31.25\n",
        );
        e.script("jobs/generic.sh", &job);
        let child = e.spawn(&["build", "raw/1"], &[]);
        wait_until("config started", || e.exists("config_started"));
        signal(&child, sig);
        let out = finish(child, DEADLINE);
        out.code(code);
        assert!(out.error_line().contains("cancelled"), "{}", out.stderr);
        let builds = e.run(&["builds", "--format", "json"]).ok().json_lines();
        assert_eq!(builds.len(), 1);
        assert_eq!(builds[0]["status"], "BUILD_REQUEST_CANCELLED", "{:?}", builds[0]);
        let st = std::process::Command::new("pgrep").args(["-f", "sleep 31.25"]).output().unwrap();
        assert!(!st.status.success(), "the config process outlived the build");
        let r = e.run(&["recover"]);
        r.ok();
        assert!(!e.exists("ledger.txt"), "nothing ran");
        e.run(&["verify"]).ok();
    }
}

/// A job that gets the engine killed (`kill -9 $PPID`, or the OOM killer) is not re-run by every
/// `recover` forever: the first crash costs no retry, later ones count as attempts, and then the
/// request fails saying why.
#[test]
fn a_job_that_kills_the_engine_is_not_rerun_forever() {
    let e = Env::generic(&[("raw", r"raw/\d+"), ("top", r"top/\d+")]);
    e.dep("top/1", "MATERIALIZE", "raw/1");
    let job = e.read("jobs/generic.sh").replace(
        "r=$1\necho \"$r\" >> ledger.txt\n",
        "r=$1\necho \"$r\" >> ledger.txt\n[ \"$r\" = raw/1 ] && { kill -9 $PPID; sleep 30; }\n",
    );
    e.script("jobs/generic.sh", &job);
    let out = e.run(&["build", "top/1"]);
    assert_eq!(out.code, 137, "the job killed the engine: {} {}", out.stdout, out.stderr);
    let out = e.run(&["recover"]);
    assert_eq!(out.code, 137, "the first crash costs no retry: it runs again: {}", out.stderr);
    let out = e.run(&["recover"]);
    out.code(1);
    assert_eq!(e.ledger(), ["raw/1", "raw/1"]);
    let builds = e.run(&["builds", "--format", "json"]).ok().json_lines();
    assert_eq!(builds[0]["status"], "BUILD_REQUEST_FAILED", "{:?}", builds[0]);
    let why = builds[0].to_string();
    assert!(why.contains("each of the 2 times the engine died"), "{why}");
    // Nothing is left to resume; the log is sound.
    e.run(&["recover"]).ok();
    assert_eq!(e.ledger().len(), 2);
    e.run(&["verify"]).ok();
}

/// A job that exits 1 while the engine is stalled (SIGSTOP, swap) past its timeout is recorded as
/// what it did (exited with code 1), not TIMED_OUT.
#[test]
fn a_job_that_ended_while_the_engine_was_stalled_keeps_its_exit_status() {
    let e = Env::generic(&[("raw", r"raw/\d+")]);
    let toml = e.read("databuild.toml") + "timeout_seconds = 1\n";
    e.write("databuild.toml", &toml);
    let job = e.read("jobs/generic.sh").replace(
        "r=$1\necho \"$r\" >> ledger.txt\n",
        "r=$1\necho \"$r\" >> ledger.txt\nsleep 0.3; exit 1\n",
    );
    e.script("jobs/generic.sh", &job);
    let child = e.spawn(&["build", "raw/1"], &[]);
    wait_until("the job started", || e.exists("ledger.txt"));
    signal(&child, "STOP");
    // The job ends by itself meanwhile, and the timer's deadline passes.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    signal(&child, "CONT");
    let out = finish(child, DEADLINE);
    out.code(1);
    let evs = events(&e);
    let failed = events_of(&evs, "jobEvent", Some("JOB_FAILED"));
    assert_eq!(failed.len(), 1);
    let j = &failed[0]["event"]["jobEvent"];
    assert_eq!(j["failure"], "JOB_FAILURE_EXIT_NONZERO", "{j}");
    assert!(j["message"].as_str().unwrap_or("").contains("exited with code 1"), "{j}");
}

/// A config with so many outputs that `DATABUILD_OUTPUTS` passes the kernel's per-string limit
/// is refused at planning, naming that limit (it used to fail every run with "argument list").
#[test]
fn a_config_the_kernel_could_not_exec_is_refused_at_planning() {
    let e = Env::generic(&[("big", r"big/\d+")]);
    let outs: String = (0..15_000).map(|i| format!("big/{i:08}\n")).collect();
    e.write("outputs/big_00000000", &outs);
    let out = e.run(&["build", "big/00000000"]);
    out.code(2);
    let line = out.error_line();
    assert!(line.contains("DATABUILD_OUTPUTS") && line.contains("128 KiB"), "{line}");
    assert!(!e.exists("ledger.txt"), "nothing ran");
}

/// A job that catches SIGTERM and exits 0 after its timeout has still timed out: FAILED
/// (TIMED_OUT), never COMPLETED with its outputs AVAILABLE.
#[test]
fn a_timed_out_job_that_exits_0_on_sigterm_still_failed() {
    let e = Env::generic(&[("raw", r"raw/\d+")]);
    let toml = e.read("databuild.toml") + "timeout_seconds = 1\n";
    e.write("databuild.toml", &toml);
    let job = e.read("jobs/generic.sh").replace(
        "r=$1\necho \"$r\" >> ledger.txt\n",
        "r=$1\necho \"$r\" >> ledger.txt\ntrap 'exit 0' TERM\nsleep 30 & wait\n",
    );
    e.script("jobs/generic.sh", &job);
    let out = e.run(&["build", "raw/1"]);
    out.code(1);
    let evs = events(&e);
    let failed = events_of(&evs, "jobEvent", Some("JOB_FAILED"));
    assert_eq!(failed.len(), 1, "{}", out.stderr);
    assert_eq!(failed[0]["event"]["jobEvent"]["failure"], "JOB_FAILURE_TIMED_OUT");
    assert!(events_of(&evs, "jobEvent", Some("JOB_COMPLETED")).is_empty());
}

/// What a job leaves running in its group when it exits is killed, and its run says so.
#[test]
fn processes_a_job_leaves_behind_are_stopped() {
    let e = Env::generic(&[("raw", r"raw/\d+")]);
    let job = e.read("jobs/generic.sh").replace(
        "r=$1\necho \"$r\" >> ledger.txt\n",
        "r=$1\necho \"$r\" >> ledger.txt\nsleep 300.77 &\n",
    );
    e.script("jobs/generic.sh", &job);
    e.run(&["build", "raw/1"]).ok();
    let left = std::process::Command::new("pgrep").args(["-f", "sleep 300.77"]).output().unwrap();
    assert!(!left.status.success(), "a leftover outlived its job");
    let evs = events(&e);
    let done = events_of(&evs, "jobEvent", Some("JOB_COMPLETED"));
    assert!(done[0]["event"]["jobEvent"]["message"].as_str().unwrap_or("").contains("leftover"));
}
