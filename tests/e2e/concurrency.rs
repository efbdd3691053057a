//! One writer, many readers: readers work while a build runs, a second writer exits 3 naming
//! the holder (or waits with --wait), and SIGINT/SIGTERM cancel cleanly.

use std::time::Duration;

use crate::util::*;

fn slow_pair() -> Env {
    let e = Env::generic(&[("raw", r"raw/\d+"), ("sum", r"sum/\d+")]);
    e.dep("sum/1", "MATERIALIZE", "raw/1");
    e.dep("sum/1", "MATERIALIZE", "raw/2");
    e
}

#[test]
fn readers_work_while_a_build_runs() {
    let e = slow_pair();
    let build = e.spawn(&["build", "sum/1"], &[("SLEEP", "0.5")]);
    wait_until("the build to start writing", || e.log_dir().join("0000000000000000.seg").exists());
    let mut saw_building = false;
    for _ in 0..20 {
        let s = e.run(&["status", "--format", "json"]);
        s.ok();
        saw_building |= s.json_lines().iter().any(|v| v["status"] == "PARTITION_BUILDING");
        let r = e.run(&["replay", "--format", "json"]);
        r.ok();
        let seqs: Vec<u64> = r.json_lines().iter().map(|v| v["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "a reader sees a gapless prefix"
        );
        e.run(&["builds"]).ok();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(saw_building, "a reader saw the build in progress");
    finish(build, DEADLINE).ok();
    e.run(&["verify"]).ok();
}

#[test]
fn a_second_writer_exits_3_naming_the_holder_unless_it_waits() {
    let e = slow_pair();
    let first = e.spawn(&["build", "sum/1"], &[("SLEEP", "1")]);
    wait_until("the first build to hold the lock", || {
        e.read(".databuild/log/LOCK").contains("pid=")
    });
    let out = e.run(&["build", "raw/3"]);
    out.code(3);
    let line = out.error_line();
    assert!(line.contains(&format!("pid {}", first.id())), "names the holder: {line}");
    assert!(line.contains("--wait"), "says what to do: {line}");
    let waiting = e.spawn(&["build", "raw/3", "--wait"], &[]);
    finish(first, DEADLINE).ok();
    finish(waiting, DEADLINE).ok();
    assert!(e.ledger().contains(&"raw/3".to_string()));
}

fn cancel_with(sig: &str, code: i32, sleep: &str) {
    let e = slow_pair();
    // A distinct duration per test, so that parallel tests never see each other's sleep.
    let build = e.spawn(&["build", "sum/1", "--jobs", "1"], &[("SLEEP", sleep)]);
    wait_until("a job to be running", || e.ledger().len() == 1);
    signal(&build, sig);
    let out = finish(build, DEADLINE);
    out.code(code);
    assert!(out.error_line().contains("cancelled"));
    let evs = events(&e);
    let cancelled = events_of(&evs, "jobEvent", Some("JOB_CANCELLED"));
    assert!(cancelled.len() >= 2, "the running run and the queued one: {cancelled:?}");
    assert_eq!(events_of(&evs, "buildRequestEvent", Some("BUILD_REQUEST_CANCELLED")).len(), 1);
    let failed = events_of(&evs, "partitionEvent", Some("PARTITION_FAILED"));
    assert!(
        failed.iter().all(|v| v["event"]["partitionEvent"]["message"] == "cancelled"),
        "{failed:?}"
    );
    // No job process survives: the running job's `sleep 30` was stopped with its group.
    let ps = std::process::Command::new("pgrep")
        .args(["-f", &format!("sleep {sleep}")])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&ps.stdout).trim().is_empty(), "a job survived the cancel");
    // The next build proceeds.
    e.run(&["build", "sum/1"]).ok();
    e.run(&["verify"]).ok();
}

#[test]
fn sigint_cancels_with_130() {
    cancel_with("INT", 130, "31");
}

#[test]
fn sigterm_cancels_with_143() {
    cancel_with("TERM", 143, "32");
}
