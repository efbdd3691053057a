//! The audit views on the color-votes example: lineage across a --force rebuild (an input
//! rebuilt after it was read says so), explain for every reason, jobs and its statistics, and
//! time travel by seq and by time.

use crate::util::*;

const REPORT: &str = "color_vote_report/2025-01-28/red";
const DAY: &str = "daily_color_votes/2025-01-28/red";

fn seq_of(v: &serde_json::Value) -> u64 {
    v["seq"].as_u64().unwrap()
}

#[test]
fn lineage_shows_inputs_as_they_were_read_and_marks_inputs_rebuilt_since() {
    let e = Env::example("color_votes");
    e.run(&["build", REPORT]).ok();
    let before = e.run(&["lineage", REPORT, "--format", "json"]).ok().json_lines().remove(0);
    // The report read votes_1w, votes_1m, daily_votes (MATERIALIZE) and color_metadata (QUERY).
    let inputs = before["inputs"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = inputs
        .iter()
        .map(|i| (i["partitionRef"].as_str().unwrap(), i["depType"].as_str().unwrap()))
        .collect();
    assert!(kinds.contains(&("votes_1w/2025-01-28/red", "MATERIALIZE")));
    assert!(kinds.contains(&("color_metadata/red", "QUERY")), "{kinds:?}");
    let week = inputs.iter().find(|i| i["partitionRef"] == "votes_1w/2025-01-28/red").unwrap();
    assert_eq!(week["jobLabel"], "aggregate_color_votes");
    assert_eq!(week["inputs"].as_array().unwrap().len(), 28, "the 28 days the run read");
    assert!(week["args"].as_array().unwrap().iter().any(|a| a == "red"), "its config args: {week}");
    // Rebuild one of the days with --force: the report's lineage still shows the instance it read,
    // and says it was rebuilt since.
    e.run(&["build", DAY, "--force"]).ok();
    let after = e.run(&["lineage", REPORT, "--format", "json"]).ok().json_lines().remove(0);
    let week = after["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["partitionRef"] == "votes_1w/2025-01-28/red")
        .unwrap()
        .clone();
    let day = week["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["partitionRef"] == DAY)
        .unwrap()
        .clone();
    let rebuilt = day["rebuiltSinceSeq"].as_u64().expect("rebuiltSinceSeq");
    assert!(rebuilt > seq_of(&day), "rebuilt after it was read");
    let now = e.run(&["lineage", DAY, "--format", "json"]).ok().json_lines().remove(0);
    assert_eq!(seq_of(&now), rebuilt, "the current instance is the rebuild");
    assert_ne!(now["jobRunId"], day["jobRunId"]);
    let text = e.run(&["lineage", REPORT]).ok().stdout.clone();
    assert!(text.contains(&format!("rebuilt since, at seq {rebuilt}")), "{text}");
    assert!(
        text.contains("see above") || text.matches(DAY).count() == 1,
        "a repeated instance is shown once in text"
    );
    // Downstream of the old instance is the aggregate; the rebuilt one fed nothing yet.
    let down =
        e.run(&["lineage", DAY, "--downstream", "--format", "json"]).ok().json_lines().remove(0);
    assert!(down["outputs"].as_array().unwrap().is_empty(), "{down}");
    let old_day = "daily_color_votes/2025-01-20/red";
    let down = e
        .run(&["lineage", old_day, "--downstream", "--format", "json"])
        .ok()
        .json_lines()
        .remove(0);
    let outs: Vec<&str> = down["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["partitionRef"].as_str().unwrap())
        .collect();
    assert!(
        outs.contains(&"votes_1w/2025-01-28/red") && outs.contains(&"votes_1m/2025-01-28/red"),
        "{outs:?}"
    );
    let report_below = down["outputs"][0]["outputs"].as_array().unwrap();
    assert!(
        report_below.iter().any(|o| o["partitionRef"] == REPORT),
        "and, through it, the report"
    );
}

#[test]
fn explain_gives_the_reason_and_its_evidence_for_every_state() {
    let e = Env::generic(&[("raw", r"raw/\d+"), ("sum", r"sum/\d+"), ("slow", r"slow/\d+")]);
    e.dep("sum/1", "MATERIALIZE", "raw/1");
    let explain = |r: &str| e.run(&["explain", r, "--format", "json"]).ok().json_lines().remove(0);
    // never requested
    let x = explain("nothing/here");
    assert_eq!(
        (x["reason"].as_str(), x["status"].as_str()),
        (Some("never_requested"), Some("PARTITION_UNKNOWN"))
    );
    // built
    e.run(&["build", "sum/1"]).ok();
    let x = explain("sum/1");
    assert_eq!(x["reason"], "built");
    let first =
        e.run(&["builds", "--format", "json"]).ok().json_lines()[0]["buildRequestId"].clone();
    assert_eq!(x["buildRequestId"], first);
    let run = x["jobRunId"].as_str().unwrap().to_string();
    assert!(x["message"].as_str().unwrap().contains(&run));
    let built_seq = seq_of(&x);
    // skipped: the latest fact is the skip; the message names the run that built it.
    e.run(&["build", "sum/1"]).ok();
    let x = explain("sum/1");
    assert_eq!(
        (x["reason"].as_str(), x["status"].as_str()),
        (Some("skipped"), Some("PARTITION_AVAILABLE"))
    );
    assert!(seq_of(&x) > built_seq, "seq is the skip's");
    assert!(x["message"].as_str().unwrap().contains(&run), "{x}");
    // failed, with its exit code and the last lines of its output
    e.fail("raw/2");
    e.dep("sum/2", "MATERIALIZE", "raw/2");
    e.run(&["build", "sum/2"]).code(1);
    let x = explain("raw/2");
    assert_eq!((x["reason"].as_str(), x["exitCode"].as_i64()), (Some("failed"), Some(1)));
    assert!(x["message"].as_str().unwrap().contains("failing raw/2 on purpose"), "{x}");
    // upstream failed
    let x = explain("sum/2");
    assert_eq!(x["reason"], "upstream_failed");
    assert!(x["message"].as_str().unwrap().contains("raw/2"));
    // building, while a build is under way
    let b = e.spawn(&["build", "slow/1"], &[("SLEEP", "3")]);
    wait_until("the slow job to run", || e.ledger().contains(&"slow/1".to_string()));
    let x = explain("slow/1");
    assert_eq!(
        (x["reason"].as_str(), x["status"].as_str()),
        (Some("building"), Some("PARTITION_BUILDING"))
    );
    finish(b, DEADLINE).ok();
    let text = e.run(&["explain", "raw/2"]).ok().stdout.clone();
    assert!(text.contains("exit code 1") && text.contains("failing raw/2 on purpose"), "{text}");
}

#[test]
fn jobs_reports_runs_success_and_durations_per_label() {
    let e = Env::generic(&[("raw", r"raw/\d+"), ("sum", r"sum/\d+")]);
    e.dep("sum/1", "MATERIALIZE", "raw/1");
    e.dep("sum/2", "MATERIALIZE", "raw/2");
    e.fail("raw/2");
    e.run(&["build", "sum/1", "sum/2"]).code(1);
    e.run(&["build", "sum/1"]).ok(); // a skip is not a run
    let stats = e.run(&["jobs", "--format", "json"]).ok().json_lines();
    let raw = stats.iter().find(|s| s["jobLabel"] == "raw").unwrap();
    assert_eq!(
        (raw["runs"].as_u64(), raw["completed"].as_u64(), raw["failed"].as_u64()),
        (Some(2), Some(1), Some(1))
    );
    assert_eq!(raw["successRatio"].as_f64(), Some(0.5));
    assert!(
        raw["durationP50Ms"].is_u64()
            && raw["durationP95Ms"].as_u64() >= raw["durationP50Ms"].as_u64()
    );
    let sum = stats.iter().find(|s| s["jobLabel"] == "sum").unwrap();
    assert_eq!(sum["runs"], 1, "sum/2 never ran; the second request only skipped sum/1");
    let runs = e.run(&["jobs", "raw", "--format", "json"]).ok().json_lines();
    assert_eq!(runs.len(), 2);
    for r in &runs {
        for k in ["jobRunId", "buildRequestId", "status", "startTime", "endTime", "durationMs"] {
            assert!(!r[k].is_null(), "{k} in {r}");
        }
    }
    assert!(runs[0]["startTime"].as_i64() >= runs[1]["startTime"].as_i64(), "newest first");
    assert!(e.run(&["jobs"]).ok().stdout.contains("50%"));
    let out = e.run(&["jobs", "no_such_job"]);
    out.code(2);
}

#[test]
fn yesterday_is_one_command_away() {
    let e = Env::generic(&[("raw", r"raw/\d+")]);
    e.run(&["build", "raw/1"]).ok();
    let evs = events(&e);
    let last_ts: i64 = evs.last().unwrap()["event"]["timestamp"].as_str().unwrap().parse().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    e.run(&["build", "raw/2"]).ok();
    // The state at the time of the first build's last event: raw/1 only.
    let t = time_rfc3339(last_ts);
    let at = e.run(&["status", "--at", &t, "--format", "json"]).ok().json_lines();
    let refs: Vec<&str> = at.iter().map(|s| s["partitionRef"].as_str().unwrap()).collect();
    assert_eq!(refs, vec!["raw/1"], "at {t}");
    let until = e.run(&["replay", "--until", &t, "--format", "json"]).ok().json_lines();
    assert_eq!(until.len(), evs.len(), "--until TIME includes every event up to then");
}

fn time_rfc3339(ns: i64) -> String {
    // Format as UTC with nanoseconds, without a date library: days since the epoch to a civil date.
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}
