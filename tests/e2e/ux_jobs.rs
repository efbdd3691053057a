//! What a newcomer writing their first jobs meets: the README's minimal jobs work as printed, a
//! config error says where the job's output was kept and what shape was expected, an omitted
//! `depType` that would leave an upstream unbuilt is warned of, a broken `#!` line is named, and
//! every JSON time field is documented.

use std::collections::BTreeSet;

use crate::util::*;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

fn example_file(rel: &str) -> String {
    std::fs::read_to_string(format!("{}/examples/minimal/{rel}", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
}

#[test]
fn the_readme_shows_the_minimal_jobs_verbatim_and_they_build() {
    let text = readme();
    for rel in ["databuild.toml", "jobs/raw.sh", "jobs/daily.py"] {
        let body = example_file(rel);
        assert!(text.contains(&body), "README.md must show examples/minimal/{rel} verbatim");
    }
    let e = Env::example("minimal");
    let out = e.run(&["build", "daily/2025-01-01"]);
    out.ok();
    assert_eq!(e.read("data/daily/2025-01-01"), "55 votes\n");
    assert_eq!(e.read("data/raw/2025-01-01").lines().count(), 10);
    // The config answers the README prints are what the jobs print.
    let raw = std::process::Command::new(e.path().join("jobs/raw.sh"))
        .args(["config", "raw/2025-01-01"])
        .current_dir(e.path())
        .output()
        .unwrap();
    let printed = String::from_utf8(raw.stdout).unwrap();
    assert!(text.contains(printed.trim()), "README shows raw.sh's answer: {printed}");
    e.run(&["build", "daily/2025-01-01"]).ok();
    assert_eq!(e.run(&["status", "--format", "json"]).ok().json_lines().len(), 2);
}

/// A job whose `config` prints `answer` (and `stderr`, if any) for every ref.
fn printing(answer: &str, stderr: &str) -> Env {
    let e = Env::empty();
    e.write("answer.json", answer);
    let err = if stderr.is_empty() { String::new() } else { format!("echo '{stderr}' >&2\n") };
    e.script("jobs/j.sh", &format!("#!/bin/sh\n{err}cat answer.json\n"));
    e.write(
        "databuild.toml",
        "[[jobs]]\nlabel = \"j\"\nentrypoint = \"jobs/j.sh\"\npartition_patterns = ['a/\\d+']\n",
    );
    e
}

#[test]
fn a_config_error_names_the_position_the_expected_shape_and_the_kept_files() {
    let e = printing(r#"{"configs":[{"outputs":["a/1"]}]}"#, "");
    let out = e.run(&["build", "a/1"]);
    out.code(2);
    let line = out.error_line();
    assert!(line.contains("configs[0].outputs[0]"), "{line}");
    assert!(line.contains(r#"expected a partition ref object like {"str":"#), "{line}");
    assert!(line.contains(r#"found the string "a/1""#), "{line}");
    assert!(!line.contains("below") && !line.contains("follow"), "nothing follows: {line}");
    // The kept files are named, and hold what the job printed.
    let at = line.find(".databuild/logs/").expect("names the kept files");
    let stdout_path = line[at..].split(' ').next().unwrap();
    assert!(stdout_path.ends_with("/config/j-1.stdout"), "{line}");
    assert!(line.contains("/config/j-1.stderr"), "{line}");
    assert_eq!(e.read(stdout_path), r#"{"configs":[{"outputs":["a/1"]}]}"#);
    assert_eq!(out.stderr.lines().filter(|l| l.starts_with("    ")).count(), 0);

    // With stderr, its last lines follow, and the line says so.
    let e = printing(
        r#"{"configs":[{"outputs":[{"str":"a/1"}],"inputs":[{"depType":"MATERIALISE"}]}]}"#,
        "computing a/1",
    );
    let out = e.run(&["build", "a/1"]);
    out.code(2);
    let line = out.error_line();
    assert!(line.contains("configs[0].inputs[0].depType"), "{line}");
    assert!(line.contains(r#""MATERIALIZE" (built first) or "QUERY""#), "{line}");
    assert!(line.contains("the last lines of its stderr follow"), "{line}");
    assert!(out.stderr.contains("\n    computing a/1"), "{}", out.stderr);

    // An unknown field is named with the fields there are.
    let e = printing(r#"{"configs":[{"outputs":[{"str":"a/1"}],"dep_typ":1}]}"#, "");
    let line = e.run(&["build", "a/1"]).error_line();
    assert!(
        line.contains(
            r#"configs[0]: unknown field "dep_typ" (the fields are outputs, inputs, args, env)"#
        ),
        "{line}"
    );

    // Logs on stdout: the start of what was printed is shown.
    let e = printing("computing...\n{}", "");
    let line = e.run(&["build", "a/1"]).error_line();
    assert!(
        line.contains(r#"it starts with "computing...""#) && line.contains("logs to stderr"),
        "{line}"
    );

    // analyze keeps no files, so it names none.
    let line = e.run(&["analyze", "a/1"]).error_line();
    assert!(!line.contains(".databuild/logs"), "{line}");
}

/// `b/N` reads `a/N`, `ext/N` (no job) and, when `dep` is given, that input with its depType.
const OMITTING_JOB: &str = r#"#!/bin/sh
cmd=$1; shift
if [ "$cmd" = config ]; then
  case $1 in
    b/*) n=${1#b/}
         dep=$(cat dep 2>/dev/null)
         printf '{"configs":[{"outputs":[{"str":"%s"}],"inputs":[{"partitionRef":{"str":"a/%s"}%s},{"partitionRef":{"str":"ext/%s"}}],"args":["%s"]}]}\n' "$1" "$n" "$dep" "$n" "$1";;
    *) printf '{"configs":[{"outputs":[{"str":"%s"}],"args":["%s"]}]}\n' "$1" "$1";;
  esac
  exit 0
fi
echo "$1" >> ledger.txt
"#;

fn omitting() -> Env {
    let e = Env::empty();
    e.script("jobs/j.sh", OMITTING_JOB);
    e.write(
        "databuild.toml",
        "[[jobs]]\nlabel = \"a\"\nentrypoint = \"jobs/j.sh\"\npartition_patterns = ['a/\\d+']\n\n\
         [[jobs]]\nlabel = \"b\"\nentrypoint = \"jobs/j.sh\"\npartition_patterns = ['b/\\d+']\n",
    );
    e
}

#[test]
fn an_omitted_dep_type_that_leaves_an_upstream_unbuilt_is_warned_of() {
    let e = omitting();
    // The dry run says it too.
    let dry = e.run(&["analyze", "b/1"]);
    dry.ok();
    assert!(dry.stderr.contains("without a depType"), "{}", dry.stderr);
    let out = e.run(&["build", "b/1"]);
    out.ok();
    // The seed's semantics stay: QUERY, so a/1 is not built.
    assert_eq!(e.ledger(), vec!["b/1"]);
    let warnings: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{}", out.stderr);
    let w = warnings[0];
    assert!(w.contains("job 'b'") && w.contains("'a/1' (of 'b/1')"), "{w}");
    assert!(w.contains("without a depType") && w.contains(r#""depType": "MATERIALIZE""#), "{w}");
    assert!(!w.contains("ext/1"), "an input no job produces is external data: {w}");

    // -q silences it.
    let out = e.run(&["-q", "build", "b/1", "--force"]);
    out.ok();
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);

    // An explicit QUERY is meant: no warning.
    e.write("dep", r#","depType":"QUERY""#);
    let out = e.run(&["build", "b/2"]);
    out.ok();
    assert!(!out.stderr.contains("depType"), "{}", out.stderr);

    // Once the input is AVAILABLE, reading it as QUERY is fine.
    e.write("dep", "");
    e.run(&["build", "a/3"]).ok();
    let out = e.run(&["build", "b/3"]);
    out.ok();
    assert!(!out.stderr.contains("depType"), "{}", out.stderr);
}

#[test]
fn a_crlf_or_a_missing_interpreter_is_named_for_config_and_for_exec() {
    let graph =
        "[[jobs]]\nlabel = \"j\"\nentrypoint = \"jobs/j.sh\"\npartition_patterns = ['a/\\d+']\n";
    let answer = r#"printf '{"configs":[{"outputs":[{"str":"%s"}],"args":["%s"]}]}\n' "$2" "$2""#;

    // config, a direct interpreter: execve fails with ENOENT on "/bin/sh\r".
    let e = Env::empty();
    e.script("jobs/j.sh", &format!("#!/bin/sh\r\n{answer}\r\n"));
    e.write("databuild.toml", graph);
    let line = e.run(&["build", "a/1"]).error_line();
    assert!(line.contains(r"`#!/bin/sh\r`"), "{line}");
    assert!(line.contains("carriage return (Windows line endings)"), "{line}");
    assert!(line.contains(r"sed -i 's/\r$//' ") && line.contains("jobs/j.sh"), "{line}");

    // config through /usr/bin/env: env exits 127 looking for "sh\r".
    e.script("jobs/j.sh", &format!("#!/usr/bin/env sh\r\n{answer}\r\n"));
    let line = e.run(&["build", "a/1"]).error_line();
    assert!(line.contains("exited with code 127"), "{line}");
    assert!(line.contains(r"`#!/usr/bin/env sh\r`") && line.contains("carriage return"), "{line}");

    // config, an interpreter that does not exist.
    e.script("jobs/j.sh", &format!("#!/no/such/python3\n{answer}\n"));
    let line = e.run(&["build", "a/1"]).error_line();
    assert!(
        line.contains("the interpreter `/no/such/python3`") && line.contains("does not exist"),
        "{line}"
    );

    // exec: config answers, then turns its own file to CRLF, so exec's execve fails.
    e.script("jobs/j.sh", &format!("#!/bin/sh\nif [ \"$1\" = config ]; then {answer}; sed -i 's/$/\\r/' \"$0\"; exit 0; fi\n"));
    let out = e.run(&["build", "a/2"]);
    out.code(1);
    assert!(out.stderr.contains("carriage return (Windows line endings)"), "{}", out.stderr);
    let explain = e.run(&["explain", "a/2"]);
    assert!(explain.stdout.contains("carriage return"), "{}", explain.stdout);

    // exec through /usr/bin/env: env exits 127.
    e.script("jobs/j.sh", &format!("#!/usr/bin/env sh\nif [ \"$1\" = config ]; then {answer}; sed -i 's/$/\\r/' \"$0\"; exit 0; fi\n"));
    let out = e.run(&["build", "a/3"]);
    out.code(1);
    assert!(
        out.stderr.contains("exited with code 127") && out.stderr.contains("carriage return"),
        "{}",
        out.stderr
    );
}

/// Keys of every object in `v` that hold a time or a duration.
fn time_keys(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let l = k.to_lowercase();
                if l.ends_with("time") || l.ends_with("timestamp") || l.ends_with("ms") {
                    out.insert(k.clone());
                }
                time_keys(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| time_keys(x, out)),
        _ => {}
    }
}

#[test]
fn every_json_time_field_is_in_the_readme_table() {
    let e = Env::generic(&[("raw", r"raw/\d+"), ("sum", r"sum/\d+")]);
    e.dep("sum/1", "MATERIALIZE", "raw/1");
    e.run(&["build", "sum/1"]).ok();
    let id = e.run(&["builds", "--format", "json"]).ok().json_lines()[0]["buildRequestId"]
        .as_str()
        .unwrap()
        .to_string();
    let mut keys = BTreeSet::new();
    for args in [
        vec!["replay"],
        vec!["status"],
        vec!["builds"],
        vec!["builds", &id],
        vec!["lineage", "sum/1"],
        vec!["lineage", "raw/1", "--downstream"],
        vec!["explain", "sum/1"],
        vec!["jobs"],
        vec!["jobs", "sum"],
        vec!["analyze", "sum/2"],
    ] {
        let mut a = args.clone();
        a.extend(["--format", "json"]);
        let out = e.run(&a);
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        for v in out.stdout.lines().filter_map(|l| serde_json::from_str(l).ok()) {
            time_keys(&v, &mut keys);
        }
    }
    assert!(keys.contains("timestamp") && keys.contains("startTime"), "{keys:?}");
    // Outside replay's proto3 JSON, a time is unix seconds, a number (as lineage and jobs are).
    for args in [vec!["builds"], vec!["builds", &id]] {
        let mut a = args.clone();
        a.extend(["--format", "json"]);
        let b = &e.run(&a).ok().json_lines()[0];
        for k in ["receivedTime", "endedTime"] {
            assert!(b[k].is_u64(), "{args:?} {k} is unix seconds: {b}");
        }
    }
    let text = readme();
    let table = &text[text.find("| JSON field |").expect("the README's time table")..];
    let table = &table[..table.find("\n\n").unwrap_or(table.len())];
    let missing: Vec<&String> =
        keys.iter().filter(|k| !table.contains(&format!("`{k}`"))).collect();
    assert!(missing.is_empty(), "time fields the README's table does not document: {missing:?}");
}

#[test]
fn the_tour_starts_with_the_dry_run_and_names_only_real_commands() {
    let text = readme();
    let tour = &text[text.find("## A tour").unwrap()..];
    let tour = &tour[..tour.find("\n```\n").unwrap()];
    let commands: Vec<&str> = tour
        .lines()
        .filter_map(|l| l.strip_prefix("databuild "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(commands.first(), Some(&"analyze"), "the dry run comes first: {commands:?}");
    assert!(tour.contains("rm -rf .databuild data"), "the tour starts from an empty log");
    let e = Env::empty();
    for c in commands {
        e.run(&[c, "--help"]).ok();
    }
}
