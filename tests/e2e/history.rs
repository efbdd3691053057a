//! The history views: replay and its filters, status (and --at), builds, lineage both ways,
//! logs, analyze (which writes nothing), the empty log, and where the log lives.

use crate::util::*;

fn chain() -> Env {
    // raw/1 -> sum/1 -> top/1, raw/2 -> sum/2
    let e = Env::generic(&[("raw", r"raw/\d+"), ("sum", r"sum/\d+"), ("top", r"top/\d+")]);
    e.dep("sum/1", "MATERIALIZE", "raw/1");
    e.dep("top/1", "MATERIALIZE", "sum/1");
    e.dep("sum/2", "MATERIALIZE", "raw/2");
    e
}

#[test]
fn replay_prints_every_event_in_order_with_gapless_seqs() {
    let e = chain();
    e.run(&["build", "top/1"]).ok();
    let evs = events(&e);
    assert!(!evs.is_empty());
    for (i, v) in evs.iter().enumerate() {
        assert_eq!(v["seq"], i as u64 + 1, "seqs start at 1 and have no gaps");
        assert!(
            v["event"]["eventId"].is_string() && v["event"]["timestamp"].is_string(),
            "canonical proto3 JSON: {v}"
        );
    }
    let text = e.run(&["replay"]).ok().stdout.clone();
    assert_eq!(text.lines().count(), evs.len());
    let first = evs[0]["event"]["buildRequestEvent"].clone();
    assert_eq!(first["status"], "BUILD_REQUEST_RECEIVED");
    assert_eq!(first["requestedPartitions"][0]["str"], "top/1");
}

#[test]
fn replay_filters_select_what_the_contract_says() {
    let e = chain();
    e.run(&["build", "top/1"]).ok();
    e.run(&["build", "sum/2"]).ok();
    let all = events(&e);
    let n = all.len() as u64;
    let seqs = |args: &[&str]| -> Vec<u64> {
        let mut a = vec!["replay", "--format", "json"];
        a.extend_from_slice(args);
        e.run(&a).ok().json_lines().iter().map(|v| v["seq"].as_u64().unwrap()).collect()
    };
    assert_eq!(seqs(&["--since", "3", "--until", "5"]), vec![3, 4, 5], "inclusive");
    assert_eq!(seqs(&["--since", &n.to_string()]), vec![n]);
    let builds = e.run(&["builds", "--format", "json"]).ok().json_lines();
    let second = builds[1]["buildRequestId"].as_str().unwrap();
    let by_build = seqs(&["--build", second]);
    assert!(!by_build.is_empty());
    assert!(by_build.iter().all(|s| all[*s as usize - 1]["event"]["buildRequestId"] == second));
    // --partition: events naming a matching ref (partition events, delegations, job targets).
    let p = e.run(&["replay", "--format", "json", "--partition", "sum/*"]).ok().json_lines();
    assert!(!p.is_empty());
    for v in &p {
        let ev = &v["event"];
        let names = [
            ev["partitionEvent"]["partitionRef"]["str"].as_str().map(String::from),
            ev["delegationEvent"]["partitionRef"]["str"].as_str().map(String::from),
            ev["jobEvent"]["targetPartitions"][0]["str"].as_str().map(String::from),
        ];
        assert!(names.iter().flatten().any(|r| r.starts_with("sum/")), "{v}");
    }
    let exact = seqs(&["--partition", "sum/2"]);
    let globbed = seqs(&["--partition", "sum/?"]);
    assert!(exact.len() < globbed.len());
    // --job: job events of that label and the partition events they caused.
    let j = e.run(&["replay", "--format", "json", "--job", "sum"]).ok().json_lines();
    assert!(j.iter().any(|v| v["event"]["jobEvent"]["jobLabel"]["label"] == "sum"));
    assert!(j.iter().any(|v| v["event"]["partitionEvent"]["status"] == "PARTITION_AVAILABLE"));
    assert!(j.iter().all(|v| v["event"]["jobEvent"].is_null()
        || v["event"]["jobEvent"]["jobLabel"]["label"] == "sum"));
    // --job-run.
    let run = e.run(&["jobs", "top", "--format", "json"]).ok().json_lines()[0]["jobRunId"]
        .as_str()
        .unwrap()
        .to_string();
    let r = e.run(&["replay", "--format", "json", "--job-run", &run]).ok().json_lines();
    assert!(r.len() >= 5, "SCHEDULED, RUNNING, BUILDING, COMPLETED, AVAILABLE: {r:?}");
    // --until TIME includes everything up to then; a time before the log shows nothing.
    assert!(seqs(&["--until", "2000-01-01T00:00:00Z"]).is_empty());
    assert_eq!(seqs(&["--until", "2999-01-01T00:00:00Z"]).len() as u64, n);
}

#[test]
fn status_at_a_seq_or_time_is_the_state_then() {
    let e = chain();
    e.run(&["build", "sum/1"]).ok();
    let before = events(&e).len();
    e.run(&["build", "top/1"]).ok();
    let at = |x: &str| e.run(&["status", "--at", x, "--format", "json"]).ok().json_lines();
    assert!(at("0").is_empty(), "--at 0 is the empty state");
    let then = at(&before.to_string());
    assert!(then.iter().all(|s| s["partitionRef"] != "top/1"), "top/1 did not exist yet");
    assert_eq!(
        at("999999").len(),
        e.run(&["status", "--format", "json"]).ok().json_lines().len(),
        "beyond the end is now"
    );
    let future =
        e.run(&["status", "--at", "2999-01-01T00:00:00Z", "--format", "json"]).ok().json_lines();
    assert!(future.iter().any(|s| s["partitionRef"] == "top/1"));
    let past = e
        .run(&["status", "--at", "2000-01-01T00:00:00+02:00", "--format", "json"])
        .ok()
        .json_lines();
    assert!(past.is_empty());
}

#[test]
fn status_names_unknown_refs_as_unknown() {
    let e = chain();
    e.run(&["build", "sum/1"]).ok();
    let s = e.run(&["status", "sum/1", "never/seen", "--format", "json"]).ok().json_lines();
    assert_eq!(s[0]["status"], "PARTITION_AVAILABLE");
    assert!(s[0]["jobRunId"].is_string() && s[0]["seq"].is_u64());
    assert_eq!(s[1]["status"], "PARTITION_UNKNOWN");
}

#[test]
fn builds_lists_requests_and_shows_one_in_detail_and_as_mermaid() {
    let e = chain();
    e.fail("raw/2");
    e.run(&["build", "top/1"]).ok();
    e.run(&["build", "sum/2"]).code(1);
    let b = e.run(&["builds", "--format", "json"]).ok().json_lines();
    assert_eq!(b.len(), 2);
    assert_eq!(b[0]["status"], "BUILD_REQUEST_COMPLETED");
    assert_eq!(b[1]["status"], "BUILD_REQUEST_FAILED");
    assert_eq!(b[1]["requestedPartitions"][0], "sum/2");
    let id = b[1]["buildRequestId"].as_str().unwrap();
    let detail = e.run(&["builds", id]).ok().stdout.clone();
    assert!(detail.contains("raw/2") && detail.contains("FAILED"), "{detail}");
    let m = e.run(&["builds", id, "--format", "mermaid"]).ok().stdout.clone();
    assert!(m.starts_with("graph LR") && m.contains(":::failed"), "{m}");
    let table = e.run(&["builds"]).ok().stdout.clone();
    assert!(table.starts_with("BUILD REQUEST"));
}

#[test]
fn lineage_goes_up_to_the_runs_that_built_the_inputs_and_down_to_what_was_built() {
    let e = chain();
    e.run(&["build", "top/1"]).ok();
    let up = e.run(&["lineage", "top/1", "--format", "json"]).ok().json_lines();
    let top = &up[0];
    assert_eq!(top["partitionRef"], "top/1");
    assert_eq!(top["jobLabel"], "top");
    assert!(
        top["startTime"].as_i64().unwrap() > 0
            && top["endTime"].as_i64().unwrap() >= top["startTime"].as_i64().unwrap()
    );
    let sum = &top["inputs"][0];
    assert_eq!(
        (sum["partitionRef"].as_str(), sum["depType"].as_str()),
        (Some("sum/1"), Some("MATERIALIZE"))
    );
    assert_eq!(sum["inputs"][0]["partitionRef"], "raw/1");
    assert!(sum["inputs"][0]["jobRunId"].is_string());
    let shallow =
        e.run(&["lineage", "top/1", "--depth", "1", "--format", "json"]).ok().json_lines();
    assert!(shallow[0]["inputs"][0]["inputs"].as_array().unwrap().is_empty());
    let down = e.run(&["lineage", "raw/1", "--downstream", "--format", "json"]).ok().json_lines();
    assert_eq!(down[0]["outputs"][0]["partitionRef"], "sum/1");
    assert_eq!(down[0]["outputs"][0]["outputs"][0]["partitionRef"], "top/1");
    let text = e.run(&["lineage", "top/1"]).ok().stdout.clone();
    assert!(text.contains("└─ sum/1") || text.contains("├─ sum/1"), "a tree: {text}");
    let m = e.run(&["lineage", "top/1", "--format", "mermaid"]).ok().stdout.clone();
    assert!(m.starts_with("graph LR") && m.contains("-->"));
    let out = e.run(&["lineage", "sum/2"]);
    out.code(2);
    assert!(out.error_line().contains("never been AVAILABLE"));
}

#[test]
fn logs_prints_a_runs_output() {
    let e = chain();
    e.fail("raw/1");
    e.run(&["build", "sum/1"]).code(1);
    let run = e.run(&["jobs", "raw", "--format", "json"]).ok().json_lines()[0]["jobRunId"]
        .as_str()
        .unwrap()
        .to_string();
    let out = e.run(&["logs", &run]).ok().stdout.clone();
    assert!(out.contains("failing raw/1 on purpose"), "{out}");
    assert!(e.path().join(".databuild/logs").join(&run).join("stderr").exists());
}

#[test]
fn analyze_runs_config_but_writes_nothing() {
    let e = chain();
    let g = e.run(&["analyze", "top/1", "--format", "json"]).ok().json_lines();
    assert_eq!(g[0]["outputs"][0]["str"], "top/1");
    assert_eq!(g[0]["nodes"].as_array().unwrap().len(), 3);
    assert!(!e.log_dir().exists(), "analyze writes nothing to the log");
    assert!(e.ledger().is_empty(), "and runs no exec");
    e.run(&["build", "sum/1"]).ok();
    let len = events(&e).len();
    let g = e.run(&["analyze", "top/1", "--format", "json"]).ok().json_lines();
    let nodes = g[0]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "AVAILABLE refs appear only as satisfied inputs");
    assert_eq!(nodes[0]["config"]["inputs"][0]["partitionRef"]["str"], "sum/1");
    assert_eq!(events(&e).len(), len);
    let text = e.run(&["analyze", "top/1"]).ok().stdout.clone();
    assert!(text.contains("sum/1 (available)"), "{text}");
    assert!(
        e.run(&["analyze", "top/1", "--format", "mermaid"]).ok().stdout.starts_with("graph LR")
    );
}

#[test]
fn with_no_log_yet_reads_print_nothing_and_succeed() {
    let e = chain();
    for args in [&["status"][..], &["replay"], &["builds"], &["status", "--format", "json"]] {
        let out = e.run(args);
        out.ok();
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
    assert!(!e.log_dir().exists());
}

#[test]
fn the_log_flag_wins_over_the_environment() {
    let e = chain();
    let flag = e.path().join("flag-log");
    let env = e.path().join("env-log");
    e.run_env(
        &["build", "raw/1", "--log", flag.to_str().unwrap()],
        &[("DATABUILD_LOG", env.to_str().unwrap())],
    )
    .ok();
    assert!(flag.join("0000000000000000.seg").exists());
    assert!(!env.exists());
    e.run_env(&["build", "raw/2"], &[("DATABUILD_LOG", env.to_str().unwrap())]).ok();
    assert!(env.join("0000000000000000.seg").exists());
    assert!(!e.log_dir().exists(), "neither build used the default");
    // Log files sort in log order and a lock file sits beside them.
    let names: Vec<String> = std::fs::read_dir(&flag)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"LOCK".to_string()));
}

#[test]
fn replay_follow_prints_existing_then_new_events() {
    let e = chain();
    e.run(&["build", "raw/1"]).ok();
    let existing = events(&e).len();
    let follower = e.spawn(&["replay", "--follow", "--format", "json"], &[]);
    // Wait until the follower has printed the existing events, then build more.
    std::thread::sleep(std::time::Duration::from_millis(300));
    e.run(&["build", "raw/2"]).ok();
    let total = events(&e).len();
    assert!(total > existing);
    // Let it catch up, then stop it and check it printed every event exactly once.
    std::thread::sleep(std::time::Duration::from_millis(500));
    signal(&follower, "TERM");
    let out = finish(follower, DEADLINE);
    let seqs: Vec<u64> = out.json_lines().iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>());
}

#[test]
fn every_view_reads_the_same_from_a_snapshot_as_from_the_whole_log() {
    // A log long enough to get a snapshot (due once 5,000 events follow none), then one more
    // build on top of it, which changes entries the snapshot holds (a forced rebuild).
    let e = Env::generic(&[("raw", r"raw/\d+"), ("sum", r"sum/\d+")]);
    let n = 400;
    for i in 0..n {
        e.dep(&format!("sum/{i}"), "MATERIALIZE", &format!("raw/{i}"));
        if i > 0 {
            e.dep(&format!("sum/{i}"), "QUERY", &format!("raw/{}", i - 1));
        }
    }
    let refs: Vec<String> = (0..n).map(|i| format!("sum/{i}")).collect();
    let mut build = vec!["build", "--jobs", "2"];
    build.extend(refs.iter().map(String::as_str));
    e.run(&build).ok();
    let snapshots = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(e.log_dir().join("snapshots"))
            .map(|d| d.filter_map(|x| Some(x.ok()?.path())).collect())
            .unwrap_or_default()
    };
    assert!(!snapshots().is_empty(), "{} events gave no snapshot", events(&e).len());
    e.run(&["build", "--force", "sum/7", "raw/150"]).ok();
    let views: Vec<Vec<&str>> = vec![
        vec!["status", "--format", "json"],
        vec!["status", "sum/7", "raw/150", "sum/399"],
        vec!["status", "--at", "3000", "--format", "json"],
        vec!["lineage", "sum/150", "--format", "json"],
        vec!["lineage", "raw/150", "--downstream", "--format", "json"],
        vec!["explain", "sum/7", "--format", "json"],
        vec!["explain", "sum/8", "--format", "json"],
        vec!["jobs", "--format", "json"],
        vec!["builds", "--format", "json"],
    ];
    let with: Vec<String> = views.iter().map(|v| e.run(v).ok().stdout.clone()).collect();
    assert!(e.run(&["verify"]).ok().stdout.contains("OK"), "verify checks the snapshots too");
    for (v, expected) in views.iter().zip(&with) {
        // Without any snapshot the same command folds the whole log (and may leave a snapshot
        // behind: remove them before each).
        for s in snapshots() {
            std::fs::remove_file(s).unwrap();
        }
        let got = e.run(v).ok().stdout.clone();
        // Report the first differing line, not two listings of thousands of lines.
        let diff = got.lines().zip(expected.lines()).find(|(a, b)| a != b);
        assert!(
            got == *expected,
            "{v:?}: {} lines from the whole log, {} from the snapshot; first difference: {diff:?}",
            got.lines().count(),
            expected.lines().count()
        );
    }
}
