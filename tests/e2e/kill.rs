//! The kill -9 harness: build the color-votes example with slowed jobs, SIGKILL the engine at a
//! random moment (sometimes mid-cancel, sometimes again inside `recover`), run `recover`, and
//! check what CONTRACT §7 promises: recover exits 0; the interrupted request ends COMPLETED under
//! its original id (CANCELLED if a cancellation was under way); every requested partition is
//! AVAILABLE; no partition that was AVAILABLE before the kill ran again; no job process outlives
//! recover; verify passes.
//!
//! Iterations: DATABUILD_KILL_ITERATIONS (default 24, split over two tests); seed:
//! DATABUILD_KILL_SEED (default: time-based). The seed is printed; rerun with it to reproduce.

use std::collections::HashSet;
use std::time::Duration;

use crate::util::*;

const REPORT: &str = "color_vote_report/2025-01-28/red";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn iterations() -> u64 {
    std::env::var("DATABUILD_KILL_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(24)
}

fn seed(salt: u64) -> u64 {
    let base = std::env::var("DATABUILD_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                as u64
        });
    (base ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1
}

/// Job processes of this example still alive (their command lines hold the temp dir's path).
fn survivors(e: &Env) -> Vec<String> {
    let out = std::process::Command::new("pgrep")
        .args(["-af", &e.path().display().to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("jobs/"))
        .map(String::from)
        .collect()
}

fn available(e: &Env) -> HashSet<String> {
    e.run(&["status", "--format", "json"])
        .ok()
        .json_lines()
        .into_iter()
        .filter(|s| s["status"] == "PARTITION_AVAILABLE")
        .map(|s| s["partitionRef"].as_str().unwrap().to_string())
        .collect()
}

fn one(seed: u64, iteration: u64) {
    let mut rng = Rng(seed);
    let e = Env::example("color_votes");
    let ledger = e.path().join("ledger.txt");
    let ledger_s = ledger.to_str().unwrap().to_string();
    let env =
        [("DATABUILD_EXAMPLE_SLEEP_MS", "40"), ("DATABUILD_EXAMPLE_LEDGER", ledger_s.as_str())];
    let kind = rng.below(10);
    let delay = Duration::from_millis(rng.below(2500));
    // Kinds 5 and 6: jobs of the first build run for 15 s and the kill lands while they run, so
    // an orphan that recover failed to stop would still be alive when recover ends.
    let long = kind == 5 || kind == 6;
    let what = format!(
        "kill harness seed {seed} iteration {iteration}: kind {kind}, kill after {delay:?}"
    );
    eprintln!("{what}");
    let first_env = [("DATABUILD_EXAMPLE_SLEEP_MS", if long { "15000" } else { "40" }), env[1]];
    let build = e.spawn(&["build", REPORT, "--jobs", "2"], &first_env);
    if long {
        wait_until("a long job to start", || e.read("ledger.txt").lines().count() >= 2);
    }
    std::thread::sleep(if long { Duration::from_millis(100) } else { delay });
    if kind >= 8 {
        // Mid-cancel: SIGINT, then SIGKILL a moment later.
        signal(&build, "INT");
        std::thread::sleep(Duration::from_millis(rng.below(150)));
    }
    signal(&build, "KILL");
    let _ = finish(build, DEADLINE);
    let before = available(&e);
    let ledger_at_kill = e.read("ledger.txt").lines().count();
    let requests = e.run(&["builds", "--format", "json"]).ok().json_lines();
    let evs = events(&e);
    // A cancellation under way (runs cancelled), or done (a SIGINT while planning records the
    // request CANCELLED at once).
    let cancelling = !events_of(&evs, "jobEvent", Some("JOB_CANCELLED")).is_empty()
        || requests.first().is_some_and(|r| r["status"] == "BUILD_REQUEST_CANCELLED");
    if kind == 7 {
        // Kill a first recover too, then recover again.
        let r = e.spawn(&["recover", "--jobs", "2"], &env);
        std::thread::sleep(Duration::from_millis(rng.below(800)));
        signal(&r, "KILL");
        let _ = finish(r, DEADLINE);
    }
    let out = e.run_env(&["recover", "--jobs", "2"], &env);
    out.ok();
    assert!(
        survivors(&e).is_empty(),
        "{what}: job processes outlived recover: {:?}",
        survivors(&e)
    );
    e.run(&["verify"]).ok();
    let after = e.run(&["builds", "--format", "json"]).ok().json_lines();
    match requests.first() {
        None => {
            // Killed before the request was recorded: nothing was interrupted.
            assert!(after.is_empty(), "{what}: {after:?}");
            return;
        }
        Some(req) => {
            let id = req["buildRequestId"].as_str().unwrap();
            let now =
                after.iter().find(|b| b["buildRequestId"] == id).expect("the same request id");
            let want = if cancelling && req["status"] != "BUILD_REQUEST_COMPLETED" {
                "BUILD_REQUEST_CANCELLED"
            } else {
                "BUILD_REQUEST_COMPLETED"
            };
            assert_eq!(
                now["status"], want,
                "{what}: recover's output:\n{}\n{}",
                out.stdout, out.stderr
            );
            assert_eq!(
                after.len(),
                1,
                "{what}: recover resumes under the original id, no new request"
            );
            if want == "BUILD_REQUEST_COMPLETED" {
                let s = e.run(&["status", REPORT, "--format", "json"]).ok().json_lines();
                assert_eq!(s[0]["status"], "PARTITION_AVAILABLE", "{what}");
            }
        }
    }
    // Nothing AVAILABLE before the kill was executed again.
    let lines: Vec<String> = e.read("ledger.txt").lines().map(String::from).collect();
    for line in &lines[ledger_at_kill.min(lines.len())..] {
        for output in line.split_whitespace().skip(1) {
            assert!(
                !before.contains(output),
                "{what}: {output} was AVAILABLE before the kill and ran again ({line})"
            );
        }
    }
}

fn harness(salt: u64) {
    let s = seed(salt);
    eprintln!("kill harness: DATABUILD_KILL_SEED={s} (salt {salt})");
    let mut rng = Rng(s);
    for i in 0..iterations().div_ceil(2) {
        one(rng.next() | 1, i);
    }
}

#[test]
fn kill_9_at_a_random_moment_then_recover_loses_nothing_and_redoes_nothing_a() {
    harness(1);
}

#[test]
fn kill_9_at_a_random_moment_then_recover_loses_nothing_and_redoes_nothing_b() {
    harness(2);
}
