//! The CLI as a newcomer meets it: a fresh graph is not empty, `graph` and `build -n` show the
//! plan, refs take ranges and globs, ids take unique prefixes.

use crate::util::*;

fn graph() -> Env {
    let e = Env::generic(&[
        ("raw", r"raw/\d+"),
        ("sum", r"sum/\d+"),
        ("day", r"day/\d{4}-\d{2}-\d{2}"),
    ]);
    e.dep("sum/1", "MATERIALIZE", "raw/1");
    e
}

// Item 9.

#[test]
fn jobs_on_a_fresh_graph_lists_the_graph_jobs_with_no_runs() {
    let e = graph();
    let text = e.run(&["jobs"]).ok().stdout.clone();
    for l in ["raw", "sum", "day"] {
        assert!(text.lines().any(|x| x.starts_with(l) && x.contains(" 0 ")), "{l}: {text}");
    }
    let json = e.run(&["jobs", "--format", "json"]).ok().json_lines();
    assert_eq!(json.len(), 3, "{json:?}");
    assert!(json.iter().all(|j| j["runs"] == 0), "{json:?}");
    assert!(!e.log_dir().exists(), "reading wrote nothing");
}

#[test]
fn status_on_a_fresh_log_says_why_it_is_empty() {
    let e = graph();
    let out = e.run(&["status"]);
    out.ok();
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(
        out.stderr.contains("no partitions") && out.stderr.contains("databuild graph"),
        "{}",
        out.stderr
    );
}

#[test]
fn status_takes_globs_and_status_filters() {
    let e = graph();
    e.fail("raw/3");
    e.run(&["build", "raw/1", "raw/2", "raw/3"]).code(1);
    let out = e.run(&["status", "raw/*"]).ok().stdout.clone();
    assert!(!out.contains("UNKNOWN"), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("raw/")).count(), 3, "{out}");
    let failed = e.run(&["status", "--status", "failed", "--format", "json"]).ok().json_lines();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["partitionRef"], "raw/3");
    let none = e.run(&["status", "nothing/*"]);
    none.ok();
    assert!(none.stdout.is_empty(), "{}", none.stdout);
    assert!(e.run(&["status", "--status", "BOGUS"]).code(2).error_line().contains("AVAILABLE"));
    // explain takes a glob too: one explanation per match.
    let ex = e.run(&["explain", "raw/*", "--format", "json"]).ok().json_lines();
    assert_eq!(ex.len(), 3, "{ex:?}");
    assert!(e.run(&["explain", "nothing/*"]).code(2).error_line().contains("matches no"));
}

#[test]
fn a_wrong_format_is_named_as_typed() {
    let e = graph();
    let line = e.run(&["status", "--format", "mermaid"]).code(2).error_line();
    assert!(line.contains("--format mermaid"), "{line}");
}

#[test]
fn logs_of_a_skipped_run_say_skipped_once() {
    let e = graph();
    e.run(&["build", "raw/1"]).ok();
    e.run(&["build", "raw/1"]).ok();
    let evs = events(&e);
    let skipped = events_of(&evs, "jobEvent", Some("JOB_SKIPPED"));
    let run = skipped[0]["event"]["jobEvent"]["jobRunId"].as_str().unwrap().to_string();
    let out = e.run(&["logs", &run]).ok().stdout.clone();
    assert!(out.contains("skipped:") && !out.contains("skipped: skipped:"), "{out}");
}

#[test]
fn mermaid_labels_escape_html() {
    let e = Env::generic(&[("a<b>&c", r"x/.+")]);
    let out = e.run(&["analyze", "x/1<2&3", "--format", "mermaid"]).ok().stdout.clone();
    assert!(!out.contains("x/1<2") && !out.contains("a<b>"), "{out}");
    assert!(out.contains("#lt;") && out.contains("#amp;"), "{out}");
}

#[test]
fn explain_of_a_building_partition_names_its_run() {
    let e = graph();
    let mut child = e.spawn(&["build", "raw/9"], &[("SLEEP", "30")]);
    wait_until("raw/9 is building", || {
        e.run(&["status", "raw/9", "--format", "json"])
            .json_lines()
            .first()
            .is_some_and(|s| s["status"] == "PARTITION_BUILDING")
    });
    let j = e.run(&["explain", "raw/9", "--format", "json"]).ok().json_lines();
    let run = j[0]["jobRunId"].as_str().unwrap().to_string();
    let text = e.run(&["explain", "raw/9"]).ok().stdout.clone();
    signal(&child, "INT");
    let _ = child.wait();
    assert!(text.contains(&format!("run {run}")) && text.contains("databuild logs"), "{text}");
}

#[test]
fn repair_after_an_interrupted_repair_counts_what_was_dropped() {
    let e = graph();
    e.run(&["build", "raw/1"]).ok();
    e.run(&["build", "raw/2"]).ok();
    let n = events(&e).len();
    let seg = e.log_dir().join("0000000000000000.seg");
    let mut b = std::fs::read(&seg).unwrap();
    b[64 + 40] ^= 0x55;
    // What a repair interrupted after moving the damage aside leaves: the cut bytes in a backup,
    // zeros in the segment, the old CHECKPOINT.
    std::fs::write(e.log_dir().join("0000000000000000.seg.repair-1.bak"), &b[64..]).unwrap();
    b[64..].fill(0);
    std::fs::write(&seg, &b).unwrap();
    let out = e.run(&["repair", "--truncate", "--format", "json"]).ok().json_lines();
    let dropped = out[0]["eventsDropped"].as_u64().unwrap();
    assert!(dropped >= n as u64 - 1, "{out:?} ({n} events were acknowledged)");
    let kept = std::fs::read(e.log_dir().join("0000000000000000.seg.repair-1.bak")).unwrap();
    assert!(kept.iter().any(|&x| x != 0), "the first backup is not overwritten with zeros");
}

// Item 10.

#[test]
fn graph_lists_jobs_and_patterns_and_with_refs_the_plan() {
    let e = graph();
    let text = e.run(&["graph"]).ok().stdout.clone();
    assert!(
        text.contains("raw") && text.contains(r"raw/\d+") && text.contains("jobs/generic.sh"),
        "{text}"
    );
    let json = e.run(&["graph", "--format", "json"]).ok().json_lines();
    assert_eq!(json.len(), 3);
    assert_eq!(json[0]["jobLabel"], "raw");
    assert_eq!(json[0]["partitionPatterns"][0], r"raw/\d+");
    assert!(e.run(&["graph", "--format", "mermaid"]).ok().stdout.starts_with("graph LR"));
    let plan = e.run(&["graph", "sum/1", "--format", "json"]).ok().json_lines();
    assert_eq!(plan.len(), 1);
    assert_eq!(plan[0]["nodes"].as_array().unwrap().len(), 2, "{plan:?}");
    let plan = e.run(&["graph", "sum/1"]).ok().stdout.clone();
    assert!(plan.contains("2 jobs to run"), "{plan}");
    assert!(!e.log_dir().exists(), "graph writes nothing");
}

#[test]
fn build_dry_run_plans_like_analyze_and_runs_nothing() {
    let e = graph();
    let dry = e.run(&["build", "-n", "sum/1"]).ok().stdout.clone();
    assert_eq!(dry, e.run(&["analyze", "sum/1"]).ok().stdout);
    let dry = e.run(&["build", "--dry-run", "sum/1", "--format", "json"]).ok().json_lines();
    assert_eq!(dry[0]["nodes"].as_array().unwrap().len(), 2);
    assert!(e.ledger().is_empty() && !e.log_dir().exists());
}

// Item 11.

#[test]
fn ranges_expand_in_build_analyze_and_status() {
    let e = graph();
    let plan =
        e.run(&["analyze", "day/{2025-01-30..2025-02-02}", "--format", "json"]).ok().json_lines();
    assert_eq!(plan[0]["nodes"].as_array().unwrap().len(), 4, "{plan:?}");
    e.run(&["build", "raw/{08..11}", "raw/{1,2}"]).ok();
    let mut led = e.ledger();
    led.sort();
    assert_eq!(led, ["raw/08", "raw/09", "raw/1", "raw/10", "raw/11", "raw/2"]);
    let st = e.run(&["status", "raw/{09..10}", "--format", "json"]).ok().json_lines();
    assert_eq!(st.len(), 2);
    assert!(st.iter().all(|s| s["status"] == "PARTITION_AVAILABLE"), "{st:?}");
    let bad = e.run(&["build", "raw/{9..1}"]).code(2).error_line();
    assert!(bad.contains("reversed"), "{bad}");
    let bad = e.run(&["analyze", "raw/{1..x}"]).code(2).error_line();
    assert!(bad.contains("bad range"), "{bad}");
}

// Item 12.

#[test]
fn unique_id_prefixes_and_last_work_wherever_an_id_does() {
    let e = graph();
    e.run(&["build", "raw/1"]).ok();
    e.run(&["build", "raw/2"]).ok();
    let builds = e.run(&["builds", "--format", "json"]).ok().json_lines();
    let (first, last) = (
        builds[0]["buildRequestId"].as_str().unwrap(),
        builds[1]["buildRequestId"].as_str().unwrap(),
    );
    let common = first.bytes().zip(last.bytes()).take_while(|(a, b)| a == b).count();
    let unique = &last[..common + 1];
    let detail = e.run(&["builds", unique, "--format", "json"]).ok().json_lines();
    assert_eq!(detail[0]["buildRequestId"], last);
    let via_last = e.run(&["builds", "last", "--format", "json"]).ok().json_lines();
    assert_eq!(via_last[0]["buildRequestId"], last);
    let run = detail[0]["jobs"][0]["jobRunId"].as_str().unwrap().to_string();
    let logs = e.run(&["logs", &run[..run.len() - 4]]).ok().stdout.clone();
    assert!(logs.contains(&run), "{logs}");
    let replay = e.run(&["replay", "--build", "last", "--format", "json"]).ok().json_lines();
    assert!(!replay.is_empty() && replay.iter().all(|r| r["event"]["buildRequestId"] == last));
    let replay = e
        .run(&["replay", "--job-run", &run[..run.len() - 4], "--format", "json"])
        .ok()
        .json_lines();
    assert!(!replay.is_empty());
    if common > 0 {
        let amb = e.run(&["builds", &first[..common]]).code(2).error_line();
        assert!(amb.contains("ambiguous") && amb.contains(first) && amb.contains(last), "{amb}");
    }
    let ended = e.run(&["cancel", "last"]).ok().stdout.clone();
    assert!(ended.contains("already ended"), "{ended}");
    // Text tables show short ids, JSON the whole ones.
    let table = e.run(&["builds"]).ok().stdout.clone();
    assert!(!table.contains(first) && !table.contains(last), "{table}");
    let status = e.run(&["status"]).ok().stdout.clone();
    assert!(!status.contains(last), "{status}");
}

/// The short run id a progress line shows is one `logs` (and every id-taking command) accepts,
/// and the `status` table shows the same short form.
#[test]
fn the_short_ids_shown_are_the_ones_commands_accept() {
    let e = Env::generic(&[("raw", r"raw/\d+")]);
    let out = e.run(&["build", "raw/1", "raw/2"]);
    out.ok();
    let short: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("done"))
        .filter_map(|l| l.split("run ").nth(1)?.split_whitespace().next())
        .collect();
    assert_eq!(short.len(), 2, "{}", out.stderr);
    let status = e.run(&["status"]).ok().stdout.clone();
    for s in short {
        assert_eq!(s.len(), 8, "{s}");
        assert!(status.contains(s), "status shows {s}: {status}");
        let logs = e.run(&["logs", s]);
        logs.ok();
        assert!(logs.stdout.contains("built"), "{}", logs.stdout);
    }
}

/// From a review: a huge range is bad input (not a panic); a one-character id tail names nothing;
/// a ref with `?` or `*` that a job owns and that matches no partition is a ref like any other
/// (§8: never requested).
#[test]
fn huge_ranges_short_tails_and_glob_characters_in_refs() {
    let e = Env::generic(&[("raw", r"raw/.+")]);
    let out = e.run(&["analyze", "raw/{0..18446744073709551615}"]);
    out.code(2);
    e.run(&["build", "raw/1"]).ok();
    let run = e.run(&["builds", "--format", "json"]).ok().json_lines()[0]["buildRequestId"]
        .as_str()
        .unwrap()
        .to_string();
    // A tail shorter than the 8 characters tables show names nothing (unless it happens to be
    // a prefix of the id, which ids starting "01..." make likely for a single character).
    let last = &run[run.len() - 2..];
    if !run.starts_with(last) {
        e.run(&["builds", last]).code(2);
    }
    // raw/.+ owns it: a ref, never requested.
    let ex = e.run(&["explain", "--format", "json", "raw/q?x=1"]);
    ex.ok();
    assert!(ex.stdout.contains("never_requested"), "{}", ex.stdout);
    let st = e.run(&["status", "--format", "json", "raw/q?x=1"]);
    st.ok();
    assert!(st.stdout.contains("PARTITION_UNKNOWN"), "{}", st.stdout);
}
