//! Building: success on the color-votes example, no-op and incremental rebuilds, failure
//! propagation with independent branches, retries, timeouts, max_concurrency, and the exec
//! protocol (argv, environment, stdin, working directory).

use crate::util::*;

const REPORT: &str = "color_vote_report/2025-01-28/red";

#[test]
fn the_color_votes_example_builds_a_report() {
    let e = Env::example("color_votes");
    let out = e.run(&["build", REPORT]);
    out.ok();
    let report: serde_json::Value =
        serde_json::from_str(&e.read("data/color_vote_report/2025-01-28/red.json")).unwrap();
    assert_eq!(report["color"], "red");
    assert!(report["votes_1m"].as_i64().unwrap() > report["votes_1w"].as_i64().unwrap());
    // 28 days of red, two more colors of that day, both windows in one run, the day, the report.
    let runs = e.run(&["jobs", "--format", "json"]).ok().json_lines();
    let count = |label: &str| {
        runs.iter().find(|r| r["jobLabel"] == label).map_or(0, |r| r["runs"].as_u64().unwrap())
    };
    assert_eq!(count("ingest_color_votes"), 30);
    assert_eq!(count("aggregate_color_votes"), 1, "one run writes both windows");
    assert_eq!(count("daily_votes"), 1);
    assert_eq!(count("color_vote_report"), 1);
    let status = e
        .run(&[
            "status",
            REPORT,
            "votes_1w/2025-01-28/red",
            "votes_1m/2025-01-28/red",
            "--format",
            "json",
        ])
        .ok()
        .json_lines();
    assert!(status.iter().all(|s| s["status"] == "PARTITION_AVAILABLE"), "{status:?}");
    // Progress is one line per job start and finish when not on a terminal.
    assert!(out.stderr.lines().filter(|l| l.starts_with("start")).count() >= 33, "{}", out.stderr);
    assert!(e.run(&["verify"]).ok().stdout.contains("OK"));
}

#[test]
fn relative_graph_and_log_paths_from_another_directory_work() {
    // The README's first command: `--graph examples/.../databuild.toml` from elsewhere. Jobs run
    // in the graph's directory, so nothing handed to them may be relative to ours.
    let e = Env::generic(&[("raw", r"raw/\d+"), ("sum", r"sum/\d+")]);
    e.dep("sum/1", "MATERIALIZE", "raw/1");
    std::fs::create_dir_all(e.path().join("elsewhere")).unwrap();
    let from_elsewhere = |args: &[&str]| {
        let mut c = e.command(args);
        c.current_dir(e.path().join("elsewhere"));
        finish(c.spawn().unwrap(), DEADLINE)
    };
    from_elsewhere(&["--graph", "../databuild.toml", "build", "sum/1"]).ok();
    assert_eq!(e.ledger().len(), 2, "both jobs ran");
    let jobs = from_elsewhere(&["--graph", "../databuild.toml", "jobs", "--format", "json"]);
    let jobs = jobs.ok().json_lines();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(jobs.iter().all(|j| j["completed"] == 1 && j["failed"] == 0), "{jobs:?}");
    // The log and the job output landed next to the graph file, not in the current directory.
    assert!(e.exists(".databuild/log"));
    assert!(!e.exists("elsewhere/.databuild"));
    // An explicit relative --log too.
    let log_args = ["--graph", "../databuild.toml", "--log", "other-log"];
    let build = [&log_args[..], &["build", "sum/2"]].concat();
    e.dep("sum/2", "MATERIALIZE", "raw/2");
    from_elsewhere(&build).ok();
    assert!(e.exists("elsewhere/other-log"));
    assert_eq!(e.ledger().len(), 4);
    let status = [&log_args[..], &["status", "sum/2"]].concat();
    assert!(from_elsewhere(&status).ok().stdout.contains("AVAILABLE"));
}

#[test]
fn a_second_build_skips_everything_with_delegations_and_job_skipped() {
    let e = Env::generic(&[("raw", r"raw/\d+"), ("sum", r"sum/\d+")]);
    e.dep("sum/1", "MATERIALIZE", "raw/1");
    e.dep("sum/1", "MATERIALIZE", "raw/2");
    e.run(&["build", "sum/1"]).ok();
    assert_eq!(e.ledger().len(), 3);
    e.run(&["build", "sum/1"]).ok();
    assert_eq!(e.ledger().len(), 3, "nothing ran again");
    let evs = events(&e);
    let builds = e.run(&["builds", "--format", "json"]).ok().json_lines();
    let second = builds[1]["buildRequestId"].as_str().unwrap().to_string();
    let of_second: Vec<&serde_json::Value> =
        evs.iter().filter(|v| v["event"]["buildRequestId"] == second.as_str()).collect();
    let delegations: Vec<_> =
        of_second.iter().filter(|v| !v["event"]["delegationEvent"].is_null()).collect();
    assert_eq!(
        delegations.len(),
        1,
        "the requested ref is delegated; its inputs are never re-planned"
    );
    assert_eq!(
        delegations[0]["event"]["delegationEvent"]["delegatedToBuildRequestId"],
        builds[0]["buildRequestId"]
    );
    let skipped: Vec<_> =
        of_second.iter().filter(|v| v["event"]["jobEvent"]["status"] == "JOB_SKIPPED").collect();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["event"]["jobEvent"]["targetPartitions"][0]["str"], "sum/1");
    assert!(of_second.iter().all(|v| v["event"]["jobEvent"]["status"] != "JOB_SCHEDULED"));
    // The skipped partition stays AVAILABLE in status, pointing at the run that built it.
    let s = e.run(&["status", "sum/1", "--format", "json"]).ok().json_lines();
    assert_eq!(s[0]["status"], "PARTITION_AVAILABLE");
    assert_eq!(s[0]["buildRequestId"], builds[0]["buildRequestId"]);
}

#[test]
fn an_incremental_build_runs_only_what_is_missing() {
    let e = Env::generic(&[("raw", r"raw/\d+"), ("sum", r"sum/\d+")]);
    for (s, raws) in [("sum/1", ["raw/1", "raw/2"]), ("sum/2", ["raw/2", "raw/3"])] {
        for r in raws {
            e.dep(s, "MATERIALIZE", r);
        }
    }
    e.run(&["build", "sum/1"]).ok();
    e.run(&["build", "sum/2"]).ok();
    let ledger = e.ledger();
    assert_eq!(ledger.iter().filter(|r| *r == "raw/2").count(), 1, "raw/2 was reused: {ledger:?}");
    assert!(ledger.contains(&"raw/3".to_string()) && ledger.contains(&"sum/2".to_string()));
    assert_eq!(ledger.len(), 5);
}

#[test]
fn force_rebuilds_the_requested_refs_but_reuses_upstream() {
    let e = Env::generic(&[("raw", r"raw/\d+"), ("sum", r"sum/\d+")]);
    e.dep("sum/1", "MATERIALIZE", "raw/1");
    e.run(&["build", "sum/1"]).ok();
    e.run(&["build", "sum/1", "--force"]).ok();
    assert_eq!(e.ledger(), vec!["raw/1", "sum/1", "sum/1"]);
}

#[test]
fn a_failure_fails_its_dependants_while_independent_branches_complete() {
    let e = Env::generic(&[("raw", r"raw/\d+"), ("sum", r"sum/\d+"), ("top", r"top/\d+")]);
    e.dep("sum/1", "MATERIALIZE", "raw/1");
    e.dep("top/1", "MATERIALIZE", "sum/1");
    e.dep("sum/2", "MATERIALIZE", "raw/2");
    e.fail("raw/1");
    let out = e.run(&["build", "top/1", "sum/2"]);
    out.code(1);
    assert!(out.error_line().contains("FAILED"), "{}", out.stderr);
    let s = e.run(&["status", "--format", "json"]).ok().json_lines();
    let st = |r: &str| {
        s.iter().find(|x| x["partitionRef"] == r).map(|x| x["status"].as_str().unwrap().to_string())
    };
    assert_eq!(st("raw/1").as_deref(), Some("PARTITION_FAILED"));
    assert_eq!(st("sum/1").as_deref(), Some("PARTITION_FAILED"));
    assert_eq!(st("top/1").as_deref(), Some("PARTITION_FAILED"));
    assert_eq!(
        st("sum/2").as_deref(),
        Some("PARTITION_AVAILABLE"),
        "the independent branch completed"
    );
    assert!(!e.ledger().contains(&"sum/1".to_string()), "dependants never start");
    let explain = e.run(&["explain", "top/1", "--format", "json"]).ok().json_lines();
    assert_eq!(explain[0]["reason"], "upstream_failed");
    let evs = events(&e);
    let failed_msgs: Vec<&str> = events_of(&evs, "partitionEvent", Some("PARTITION_FAILED"))
        .iter()
        .filter_map(|v| v["event"]["partitionEvent"]["message"].as_str())
        .collect();
    assert!(failed_msgs.iter().any(|m| m.contains("upstream raw/1 failed")), "{failed_msgs:?}");
    assert_eq!(
        e.run(&["builds", "--format", "json"]).ok().json_lines()[0]["status"],
        "BUILD_REQUEST_FAILED"
    );
    // Fixing the cause and building again builds only what failed.
    e.unfail("raw/1");
    e.run(&["build", "top/1", "sum/2"]).ok();
    assert_eq!(e.ledger().iter().filter(|r| *r == "sum/2").count(), 1);
}

#[test]
fn retries_make_new_runs_and_a_timeout_counts_as_a_failed_attempt() {
    let e = Env::generic(&[("flaky", r"flaky/\d+")]);
    e.write(
        "databuild.toml",
        "[[jobs]]\nlabel = \"flaky\"\nentrypoint = \"jobs/flaky.sh\"\npartition_patterns = ['flaky/\\d+']\nretries = 2\ntimeout_seconds = 1\n",
    );
    // First attempt hangs (timeout), second exits 1, third succeeds.
    e.script(
        "jobs/flaky.sh",
        r#"#!/bin/sh
if [ "$1" = config ]; then printf '{"configs":[{"outputs":[{"str":"%s"}]}]}\n' "$2"; exit 0; fi
n=$(cat attempts 2>/dev/null || echo 0); n=$((n+1)); echo $n > attempts
case $n in 1) sleep 33 & wait ;; 2) exit 1 ;; *) exit 0 ;; esac
"#,
    );
    e.run(&["build", "flaky/1"]).ok();
    let runs = e.run(&["jobs", "flaky", "--format", "json"]).ok().json_lines();
    assert_eq!(runs.len(), 3, "every attempt is a new run id: {runs:?}");
    let statuses: Vec<&str> = runs.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["JOB_COMPLETED", "JOB_FAILED", "JOB_FAILED"], "newest first");
    let evs = events(&e);
    let failed = events_of(&evs, "jobEvent", Some("JOB_FAILED"));
    assert_eq!(failed[0]["event"]["jobEvent"]["failure"], "JOB_FAILURE_TIMED_OUT");
    assert_eq!(failed[1]["event"]["jobEvent"]["failure"], "JOB_FAILURE_EXIT_NONZERO");
    // The timed-out attempt's whole group was stopped: its `sleep 30` did not survive.
    let ps = std::process::Command::new("pgrep").args(["-f", "sleep 33"]).output().unwrap();
    assert!(String::from_utf8_lossy(&ps.stdout).trim().is_empty() || !ps.status.success());
}

#[test]
fn max_concurrency_bounds_runs_of_one_job() {
    let e = Env::empty();
    e.write(
        "databuild.toml",
        "[[jobs]]\nlabel = \"one_at_a_time\"\nentrypoint = \"jobs/j.sh\"\npartition_patterns = ['p/\\d+']\nmax_concurrency = 1\n",
    );
    // Each exec notes how many run at once, through a lock-free counter of files.
    e.script(
        "jobs/j.sh",
        r#"#!/bin/sh
if [ "$1" = config ]; then shift; printf '{"configs":['; s=; for r in "$@"; do printf '%s{"outputs":[{"str":"%s"}]}' "$s" "$r"; s=,; done; printf ']}\n'; exit 0; fi
mkdir -p running; touch "running/$$"; ls running | wc -l >> concurrency.txt; sleep 0.2; rm "running/$$"
"#,
    );
    e.run(&["build", "p/1", "p/2", "p/3", "p/4", "--jobs", "4"]).ok();
    let max =
        e.read("concurrency.txt").lines().map(|l| l.trim().parse::<u32>().unwrap()).max().unwrap();
    assert_eq!(max, 1);
}

#[test]
fn exec_gets_the_contract_argv_environment_stdin_and_cwd() {
    let e = Env::empty();
    e.write(
        "databuild.toml",
        "[[jobs]]\nlabel = \"probe\"\nentrypoint = \"jobs/probe.sh\"\npartition_patterns = ['probe/\\d+']\nenv = { GRAPH_VAR = \"graph\", SHARED = \"graph\" }\n",
    );
    e.script(
        "jobs/probe.sh",
        r#"#!/bin/sh
if [ "$1" = config ]; then
  echo "config sees GRAPH_VAR=$GRAPH_VAR PROC_VAR=$PROC_VAR" > config_env.txt
  printf '{"configs":[{"outputs":[{"str":"%s"},{"str":"probe/99"}],"args":["a b","c"],"env":{"SHARED":"config","CONF_VAR":"x"}}]}\n' "$2"
  exit 0
fi
{
  echo "argc=$# 1=$1 2=$2 3=$3"
  echo "cwd=$(pwd)"
  echo "GRAPH_VAR=$GRAPH_VAR SHARED=$SHARED CONF_VAR=$CONF_VAR PROC_VAR=$PROC_VAR"
  echo "run=$DATABUILD_JOB_RUN_ID req=$DATABUILD_BUILD_REQUEST_ID outputs=$DATABUILD_OUTPUTS"
  echo "stdin=$(cat)"
} > exec_env.txt
"#,
    );
    e.run_env(&["build", "probe/1"], &[("PROC_VAR", "proc"), ("SHARED", "proc")]).ok();
    let got = e.read("exec_env.txt");
    assert!(got.contains("argc=3 1=exec 2=a b 3=c"), "{got}");
    let cwd = e.path().canonicalize().unwrap();
    assert!(got.contains(&format!("cwd={}", cwd.display())), "{got}");
    assert!(
        got.contains("GRAPH_VAR=graph SHARED=config CONF_VAR=x PROC_VAR=proc"),
        "precedence: {got}"
    );
    assert!(got.contains("outputs=probe/1 probe/99"), "{got}");
    let runs = e.run(&["jobs", "probe", "--format", "json"]).ok().json_lines();
    assert!(got.contains(&format!("run={}", runs[0]["jobRunId"].as_str().unwrap())), "{got}");
    assert!(got.contains(&format!("req={}", runs[0]["buildRequestId"].as_str().unwrap())), "{got}");
    let stdin = got.lines().find(|l| l.starts_with("stdin=")).unwrap().trim_start_matches("stdin=");
    let config: serde_json::Value =
        serde_json::from_str(stdin).expect("stdin is the JobConfig as JSON");
    assert_eq!(config["args"][0], "a b");
    assert!(e.read("config_env.txt").contains("GRAPH_VAR=graph PROC_VAR=proc"));
    // The extra output of the config is built too.
    let s = e.run(&["status", "probe/99", "--format", "json"]).ok().json_lines();
    assert_eq!(s[0]["status"], "PARTITION_AVAILABLE");
}

#[test]
fn query_inputs_are_recorded_but_never_built_and_may_be_unowned() {
    let e = Env::generic(&[("raw", r"raw/\d+"), ("sum", r"sum/\d+")]);
    e.dep("sum/1", "QUERY", "raw/1");
    e.dep("sum/1", "QUERY", "external/thing");
    e.run(&["build", "sum/1"]).ok();
    assert_eq!(e.ledger(), vec!["sum/1"], "QUERY inputs are not built");
    let lineage = e.run(&["lineage", "sum/1", "--format", "json"]).ok().json_lines();
    let inputs = lineage[0]["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 2);
    assert!(inputs.iter().all(|i| i["depType"] == "QUERY"));
}

#[test]
fn a_missing_entrypoint_at_exec_time_fails_the_run_as_spawn_failed() {
    let e = Env::generic(&[("raw", r"raw/\d+")]);
    // config works, then the entrypoint is replaced by a non-executable file before exec: make
    // the config call itself delete it.
    e.script(
        "jobs/generic.sh",
        "#!/bin/sh\nif [ \"$1\" = config ]; then printf '{\"configs\":[{\"outputs\":[{\"str\":\"%s\"}]}]}\\n' \"$2\"; chmod -x \"$0\"; exit 0; fi\nexit 0\n",
    );
    let out = e.run(&["build", "raw/1"]);
    out.code(1);
    let evs = events(&e);
    let failed = events_of(&evs, "jobEvent", Some("JOB_FAILED"));
    assert_eq!(failed[0]["event"]["jobEvent"]["failure"], "JOB_FAILURE_SPAWN_FAILED", "{failed:?}");
}
