//! Every bad input of CONTRACT §2–§3 (and the argument errors of §5, §8): exit 2, one clear line
//! naming what and where, no panic, and the log untouched where the contract says so.

use crate::util::*;

fn job_toml(extra: &str) -> String {
    format!(
        "[[jobs]]\nlabel = \"raw\"\nentrypoint = \"jobs/generic.sh\"\npartition_patterns = ['raw/\\d+']\n{extra}"
    )
}

fn bad_graph(toml: &str, args: &[&str], want: &[&str]) {
    let e = Env::generic(&[]);
    e.write("databuild.toml", toml);
    let out = e.run(args);
    out.code(2);
    let line = out.error_line();
    for w in want {
        assert!(line.contains(w), "{line:?} should mention {w:?}");
    }
    assert!(!e.log_dir().exists(), "a bad graph file never creates a log");
}

#[test]
fn graph_file_errors_name_the_file_the_job_and_the_key() {
    let build = ["build", "raw/1"];
    bad_graph(
        &job_toml("colour = 'red'\n"),
        &build,
        &["databuild.toml", "job 'raw'", "unknown key 'colour'"],
    );
    bad_graph(&format!("{}{}", job_toml(""), job_toml("")), &build, &["job 'raw'", "duplicate"]);
    bad_graph(
        "[[jobs]]\nlabel = \"raw\"\nentrypoint = \"jobs/generic.sh\"\npartition_patterns = ['raw/(']\n",
        &build,
        &["job 'raw'", "partition_patterns", "invalid regex"],
    );
    bad_graph(
        "[[jobs]]\nlabel = \"raw\"\nentrypoint = \"jobs/missing.sh\"\npartition_patterns = ['raw/\\d+']\n",
        &build,
        &["job 'raw'", "entrypoint", "jobs/missing.sh", "does not exist"],
    );
    bad_graph(
        "[[jobs]]\nlabel = \"raw\"\npartition_patterns = ['x']\n",
        &build,
        &["job 'raw'", "missing key 'entrypoint'"],
    );
    bad_graph("[[jobs]\nlabel=1", &build, &["databuild.toml", "line"]);
    bad_graph("[graph]\nlabel = 'x'\nowner = 'me'\n", &build, &["databuild.toml", "owner"]);
    // Non-executable entrypoint.
    let e = Env::generic(&[]);
    e.write("jobs/plain.sh", "#!/bin/sh\n");
    e.write("databuild.toml", "[[jobs]]\nlabel = \"raw\"\nentrypoint = \"jobs/plain.sh\"\npartition_patterns = ['raw/\\d+']\n");
    let out = e.run(&["build", "raw/1"]);
    out.code(2);
    assert!(out.error_line().contains("not executable"));
}

#[test]
fn refs_without_one_owner_or_malformed_are_refused_before_anything_runs() {
    let e = Env::generic(&[("a", r"x/\d+"), ("b", r"x/1\d*")]);
    let out = e.run(&["build", "y/1"]);
    out.code(2);
    assert!(out.error_line().contains("no job produces 'y/1'"));
    let out = e.run(&["build", "x/12"]);
    out.code(2);
    let line = out.error_line();
    assert!(line.contains("'a'") && line.contains("'b'"), "names both jobs: {line}");
    for bad in ["x/ 1", "", "x/1\u{7}"] {
        let out = e.run(&["build", bad]);
        out.code(2);
        out.error_line();
    }
    assert!(!e.log_dir().exists(), "lookup fails before the log is opened");
    assert!(e.ledger().is_empty());
}

fn config_error(script: &str, want: &str) {
    let e = Env::generic(&[]);
    e.write("databuild.toml", "[[jobs]]\nlabel = \"cfg\"\nentrypoint = \"jobs/cfg.sh\"\npartition_patterns = ['c/\\d+', 'd/\\d+']\n[[jobs]]\nlabel = \"other\"\nentrypoint = \"jobs/generic.sh\"\npartition_patterns = ['o/\\d+']\n");
    e.script(
        "jobs/cfg.sh",
        &format!("#!/bin/sh\nif [ \"$1\" = config ]; then\n{script}\nfi\nexit 0\n"),
    );
    let out = e.run(&["build", "c/1"]);
    out.code(2);
    let line = out.error_line();
    assert!(
        line.contains("job 'cfg'") && line.contains("'c/1'"),
        "names the job and the refs: {line}"
    );
    assert!(line.contains(want), "{line:?} should mention {want:?}");
    // The planning failure is recorded: the request FAILED, nothing ran.
    let builds = e.run(&["builds", "--format", "json"]).ok().json_lines();
    assert_eq!(builds[0]["status"], "BUILD_REQUEST_FAILED");
    assert!(e.ledger().is_empty());
}

#[test]
fn bad_config_output_is_a_config_error_naming_the_job_and_refs() {
    config_error("echo 'went wrong' >&2; echo 'second line' >&2; exit 3", "exited with code 3");
    config_error("echo 'not json'", "not a JSON object");
    config_error(
        "echo '{\"configs\":[{\"outputs\":[{\"str\":\"c/1\"}],\"depTypeCode\":1}]}'",
        "unknown field",
    );
    config_error("echo '{\"configs\":[]} {}'", "not a JobConfigureResponse");
    config_error(
        "echo '{\"configs\":[{\"outputs\":[{\"str\":\"o/1\"}]}]}'",
        "owned by job 'other'",
    );
    config_error(
        "echo '{\"configs\":[{\"outputs\":[{\"str\":\"d/1\"}]}]}'",
        "no config produces 'c/1'",
    );
    config_error("echo '{\"configs\":[{\"outputs\":[]}]}'", "no outputs");
    config_error(
        "echo '{\"configs\":[{\"outputs\":[{\"str\":\"c/1 x\"}]}]}'",
        "invalid output ref",
    );
}

#[test]
fn a_failing_config_shows_the_last_lines_of_its_stderr() {
    let e = Env::generic(&[("raw", r"raw/\d+")]);
    e.write("config_fails", "");
    let out = e.run(&["build", "raw/1"]);
    out.code(2);
    out.error_line();
    assert!(
        out.stderr.contains("    config refuses: raw/1"),
        "indented stderr lines follow: {}",
        out.stderr
    );
}

#[test]
fn an_unowned_materialize_input_is_bad_input_but_an_unowned_query_input_is_fine() {
    let e = Env::generic(&[("raw", r"raw/\d+")]);
    e.dep("raw/1", "MATERIALIZE", "nowhere/1");
    let out = e.run(&["build", "raw/1"]);
    out.code(2);
    assert!(out.error_line().contains("nowhere/1"));
    let e = Env::generic(&[("raw", r"raw/\d+")]);
    e.dep("raw/1", "QUERY", "nowhere/1");
    e.run(&["build", "raw/1"]).ok();
}

#[test]
fn a_dependency_cycle_is_named() {
    let e = Env::generic(&[("a", r"a/\d+"), ("b", r"b/\d+")]);
    e.dep("a/1", "MATERIALIZE", "b/1");
    e.dep("b/1", "MATERIALIZE", "a/1");
    let out = e.run(&["build", "a/1"]);
    out.code(2);
    let line = out.error_line();
    assert!(line.contains("cycle") && line.contains("a/1") && line.contains("b/1"), "{line}");
}

#[test]
fn argument_errors_exit_2() {
    let e = Env::generic(&[("raw", r"raw/\d+")]);
    for args in [
        &["build", "raw/1", "--jobs", "0"][..],
        &["build"],
        &["frobnicate"],
        &["status", "--at", "yesterday"],
        &["replay", "--until", "noon"],
        &["analyze", "raw/1", "--format", "yaml"],
        &["status", "--format", "mermaid"],
    ] {
        let out = e.run(args);
        out.code(2);
        assert!(!out.stderr.contains("panicked"), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.lines().next().unwrap_or("").starts_with("error"),
            "{args:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn unknown_build_and_run_ids_are_bad_input() {
    let e = Env::generic(&[("raw", r"raw/\d+")]);
    e.run(&["build", "raw/1"]).ok();
    for args in [
        &["builds", "no-such-id"][..],
        &["logs", "no-such-run"],
        &["replay", "--build", "nope"],
        &["replay", "--job-run", "nope"],
    ] {
        let out = e.run(args);
        out.code(2);
        out.error_line();
    }
}

#[test]
fn no_graph_file_is_bad_input_with_a_hint() {
    let e = Env::empty();
    let out = e.run(&["build", "x/1"]);
    out.code(2);
    assert!(out.error_line().contains("databuild.toml"));
}
