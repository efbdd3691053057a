//! CONTRACT §13, missing outputs: with `output_path`, exit 0 without the data fails the run, and
//! a needed AVAILABLE partition whose data is gone is built again, saying why.

use crate::util::*;

fn with_output_path(path: &str) -> Env {
    let e = Env::generic(&[("raw", r"raw/(?P<n>\d+)"), ("sum", r"sum/(?P<n>\d+)")]);
    let toml = e.read("databuild.toml").replace(
        "partition_patterns = ['raw/(?P<n>\\d+)']\n",
        &format!("partition_patterns = ['raw/(?P<n>\\d+)']\noutput_path = \"{path}\"\n"),
    );
    e.write("databuild.toml", &toml);
    e
}

#[test]
fn exit_0_without_the_output_fails_the_run() {
    let e = with_output_path("data/raw/{n}.missing");
    e.dep("sum/1", "MATERIALIZE", "raw/1");
    let out = e.run(&["build", "sum/1"]);
    out.code(1);
    let evs = events(&e);
    let failed = events_of(&evs, "jobEvent", Some("JOB_FAILED"));
    assert_eq!(failed.len(), 1, "{}", out.stderr);
    let j = &failed[0]["event"]["jobEvent"];
    assert_eq!(j["failure"], "JOB_FAILURE_OUTPUT_MISSING", "{j}");
    assert_eq!(j["message"], "output missing: data/raw/1.missing", "{j}");
    assert_eq!(e.ledger(), ["raw/1"], "sum/1 never ran: its input is not AVAILABLE");
}

#[test]
fn a_needed_partition_whose_data_is_gone_is_built_again() {
    // The generic job writes data/<ref>.
    let e = with_output_path("data/{ref}");
    e.dep("sum/1", "MATERIALIZE", "raw/1");
    e.run(&["build", "sum/1"]).ok();
    assert_eq!(e.ledger(), ["raw/1", "sum/1"]);
    // Present: nothing runs.
    e.run(&["build", "sum/1", "raw/1"]).ok();
    assert_eq!(e.ledger().len(), 2);
    // Gone: the dry run and the build say so, and only it is built again.
    std::fs::remove_file(e.path().join("data/raw/1")).unwrap();
    let dry = e.run(&["analyze", "raw/1"]);
    dry.ok();
    assert!(dry.stderr.contains("output missing: data/raw/1"), "{}", dry.stderr);
    let out = e.run(&["build", "raw/1"]);
    out.ok();
    assert!(out.stderr.contains("output missing: data/raw/1"), "{}", out.stderr);
    assert_eq!(e.ledger(), ["raw/1", "sum/1", "raw/1"]);
    assert!(e.exists("data/raw/1"));
}

#[test]
fn output_path_mistakes_are_graph_file_errors() {
    for (path, says) in [
        ("data/{day}.json", "{day}"),
        ("/abs/{ref}", "relative"),
        ("../out/{ref}", "relative"),
        ("data/fixed.json", "names no partition"),
    ] {
        let e = with_output_path(path);
        let out = e.run(&["build", "raw/1"]);
        out.code(2);
        let line = out.error_line();
        assert!(line.contains("output_path") && line.contains(says), "{path}: {line}");
        assert!(!e.exists("ledger.txt"));
    }
}
