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
        .filter_map(|p| p["ref"].as_str().map(str::to_string))
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
        assert!(
            avail.iter().all(|p| p.starts_with("new/")),
            "after {r} (seq {}): the cut partitions show AVAILABLE: {avail:?}",
            last_seq(&e)
        );
        e.run(&["verify"]).ok();
        i += 1;
        assert!(i < 200, "the log never reached seq {snap_seq}");
    }
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
    assert_eq!(e.ledger(), ["many/0", "many/1", "many/4"], "nothing AVAILABLE or unasked ran");
    // Asked for several, only those run; forced, the forced one runs again.
    e.run(&["build", "many/2", "many/3"]).ok();
    e.run(&["build", "--force", "many/1"]).ok();
    assert_eq!(e.ledger(), ["many/0", "many/1", "many/4", "many/2", "many/3", "many/1"]);
}
