//! The engine's commands: `cancel ID` (a request a running build owns, an interrupted one, an
//! ended or unknown one) and `execute FILE|-` (a JobGraph run exactly, or refused whole).

use crate::util::*;

fn request_ids(e: &Env) -> Vec<(String, String)> {
    e.run(&["builds", "--format", "json"])
        .ok()
        .json_lines()
        .into_iter()
        .map(|b| {
            (
                b["buildRequestId"].as_str().unwrap_or_default().to_string(),
                b["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn cancel_stops_a_running_build_and_records_an_interrupted_one() {
    let e = Env::generic(&[("raw", r"raw/\d+")]);
    // A running build: `cancel ID` signals its engine, which cancels the request.
    let child = e.spawn(&["build", "raw/1"], &[("SLEEP", "30")]);
    wait_until("the job started", || e.exists("ledger.txt"));
    let (id, status) = request_ids(&e).remove(0);
    assert_eq!(status, "BUILD_REQUEST_EXECUTING");
    let c = e.run(&["cancel", &id]);
    c.ok();
    assert!(c.stdout.contains("sent SIGTERM"), "{}", c.stdout);
    let out = finish(child, DEADLINE);
    out.code(143);
    assert_eq!(request_ids(&e), [(id.clone(), "BUILD_REQUEST_CANCELLED".to_string())]);
    // Ended: a note, exit 0. Unknown: exit 2.
    let again = e.run(&["cancel", &id]);
    again.ok();
    assert!(again.stdout.contains("already ended"), "{}", again.stdout);
    e.run(&["cancel", "no-such-request"]).code(2);
    // Interrupted (its engine was killed): recorded CANCELLED, and recover resumes nothing.
    let child = e.spawn(&["build", "raw/2"], &[("SLEEP", "30")]);
    wait_until("the second job started", || e.ledger().len() >= 2);
    signal(&child, "KILL");
    let _ = finish(child, DEADLINE);
    let id2 = request_ids(&e).into_iter().find(|(i, _)| *i != id).unwrap().0;
    let c = e.run(&["cancel", &id2]);
    c.ok();
    assert!(c.stdout.contains("recorded CANCELLED"), "{}", c.stdout);
    let r = e.run(&["recover"]);
    r.ok();
    assert!(r.stdout.contains("nothing to recover"), "{}", r.stdout);
    assert_eq!(e.ledger(), ["raw/1", "raw/2"], "nothing ran again");
    assert!(
        request_ids(&e).iter().all(|(_, s)| s == "BUILD_REQUEST_CANCELLED"),
        "{:?}",
        request_ids(&e)
    );
    e.run(&["verify"]).ok();
}

#[test]
fn execute_runs_exactly_an_analyzed_graph_and_refuses_a_bad_one_whole() {
    let e = Env::generic(&[("raw", r"raw/\d+"), ("sum", r"sum/\d+")]);
    e.dep("sum/1", "MATERIALIZE", "raw/1");
    let plan = e.run(&["analyze", "sum/1", "--format", "json"]).ok().stdout.clone();
    e.write("plan.json", &plan);
    // No config call at execute time: a config that would fail now is never run.
    e.write("config_fails", "");
    let out = e.run(&["execute", "plan.json"]);
    out.ok();
    assert!(out.stdout.contains("execute COMPLETED"), "{}", out.stdout);
    assert_eq!(e.ledger(), ["raw/1", "sum/1"]);
    // AVAILABLE outputs are skipped as in build.
    e.run(&["execute", "plan.json"]).ok();
    assert_eq!(e.ledger().len(), 2);
    // A graph naming an unknown job, or an input neither produced nor AVAILABLE: exit 2, and
    // nothing recorded.
    let before = events(&e).len();
    e.write(
        "bad.json",
        r#"{"nodes":[{"job":{"label":"nope"},"config":{"outputs":[{"str":"raw/9"}]}}]}"#,
    );
    e.run(&["execute", "bad.json"]).code(2);
    e.write(
        "bad2.json",
        r#"{"nodes":[{"job":{"label":"sum"},"config":{"outputs":[{"str":"sum/9"}],"inputs":[{"depType":"MATERIALIZE","partitionRef":{"str":"raw/9"}}]}}]}"#,
    );
    let out = e.run(&["execute", "bad2.json"]);
    out.code(2);
    assert!(out.error_line().contains("raw/9"), "{}", out.stderr);
    e.run(&["execute", "no-such-file.json"]).code(2);
    assert_eq!(events(&e).len(), before, "nothing was recorded");
}

/// `cancel ID` never stops a databuild that does not run the request: an interrupted request while
/// another build (started after it) holds the log is refused (exit 3), and that build goes on.
#[test]
fn cancel_does_not_signal_an_engine_that_does_not_run_the_request() {
    let e = Env::generic(&[("raw", r"raw/\d+")]);
    // An interrupted request.
    let child = e.spawn(&["build", "raw/1"], &[("SLEEP", "30")]);
    wait_until("the job started", || e.exists("ledger.txt"));
    signal(&child, "KILL");
    let _ = finish(child, DEADLINE);
    let interrupted = request_ids(&e).remove(0).0;
    // Another build now holds the log.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let other = e.spawn(&["build", "raw/2"], &[("SLEEP", "2")]);
    wait_until("the other build runs", || e.ledger().len() >= 2);
    let c = e.run(&["cancel", &interrupted]);
    c.code(3);
    assert!(c.error_line().contains("not run by"), "{}", c.stderr);
    let out = finish(other, DEADLINE);
    out.ok();
    // Once it is free, the interrupted request is recorded CANCELLED.
    e.run(&["cancel", &interrupted]).ok();
    let st: Vec<_> = request_ids(&e).into_iter().filter(|(i, _)| *i == interrupted).collect();
    assert_eq!(st[0].1, "BUILD_REQUEST_CANCELLED");
}
