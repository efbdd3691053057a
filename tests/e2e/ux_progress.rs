//! What a newcomer sees: progress lines off a terminal, the live view on one (through a pty
//! made by `script`), a failed run's output where it failed, interrupted work after `kill -9`,
//! the status message column, colour, the summary, shell completions and `[defaults]`.

use std::process::{Command, Stdio};

use crate::util::*;

fn two_jobs() -> Env {
    Env::generic(&[("a", "a/.*"), ("b", "b/.*")])
}

/// Whether a token looks like a full run or request id (a 36-character UUID).
fn has_full_id(line: &str) -> bool {
    line.split_whitespace().any(|w| w.len() == 36 && w.chars().filter(|&c| c == '-').count() == 4)
}

fn status_json(e: &Env) -> Vec<serde_json::Value> {
    e.run(&["status", "--format", "json"]).ok().json_lines()
}

fn status_of(e: &Env, r: &str) -> String {
    status_json(e)
        .into_iter()
        .find(|s| s["partitionRef"] == r)
        .map(|s| s["status"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[test]
fn progress_lines_off_a_terminal_are_short_counted_and_end_with_a_summary() {
    let e = two_jobs();
    let out = e.run(&["build", "a/1", "a/2"]);
    out.ok();
    let events: Vec<&str> =
        out.stderr.lines().filter(|l| l.starts_with("start") || l.starts_with("done")).collect();
    assert_eq!(events.len(), 4, "{}", out.stderr);
    for l in &events {
        assert!(!has_full_id(l), "ids are shortened in per-event lines: {l}");
        assert!(l.len() < 80, "no line wraps at 80 columns: {l}");
    }
    assert!(out.stderr.contains("[2/2]"), "finish lines carry N/M: {}", out.stderr);
    assert!(
        out.stderr.contains("ran 2 jobs: 2 done; 0 partitions already available;"),
        "a summary ends the build: {}",
        out.stderr
    );
    // Again: nothing runs, and skipped partitions are not counted as jobs.
    let out = e.run(&["build", "a/1", "a/2"]);
    out.ok();
    assert!(
        out.stderr.contains("ran 0 jobs: 0 done; 2 partitions already available;"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("\x1b["), "no escape codes off a terminal: {:?}", out.stderr);
}

#[test]
fn a_failed_build_shows_the_last_lines_of_the_run_and_the_exact_logs_command() {
    let e = two_jobs();
    e.fail("a/1");
    let out = e.run(&["build", "a/1", "a/2"]);
    out.code(1);
    let run = status_json(&e)
        .into_iter()
        .find(|s| s["partitionRef"] == "a/1")
        .and_then(|s| s["jobRunId"].as_str().map(String::from))
        .expect("a/1 has a run");
    assert!(
        out.stderr.contains("│ failing a/1 on purpose"),
        "the run's stderr inline: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("all of it: databuild logs {run}")),
        "the exact command for the rest: {}",
        out.stderr
    );
    let line = out.error_line();
    assert!(line.contains(&format!("`databuild logs {run}`")), "{line}");
    assert!(!line.contains("logs RUN"), "no placeholder: {line}");
    assert!(out.stderr.contains("ran 2 jobs: 1 done, 1 failed;"), "{}", out.stderr);
}

#[test]
fn after_kill_9_status_and_builds_say_interrupted_not_building() {
    let e = two_jobs();
    let mut child = e.spawn(&["build", "a/1"], &[("SLEEP", "30")]);
    wait_until("a/1 BUILDING", || status_of(&e, "a/1") == "PARTITION_BUILDING");
    // While the engine lives, BUILDING is the truth.
    let live = e.run(&["status"]);
    live.ok();
    assert!(
        live.stdout.contains("BUILDING") && !live.stdout.contains("INTERRUPTED"),
        "{}",
        live.stdout
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let st = e.run(&["status"]);
    st.ok();
    let row = st.stdout.lines().find(|l| l.starts_with("a/1")).unwrap_or_default().to_string();
    assert!(row.contains("INTERRUPTED") && row.contains("databuild recover"), "{}", st.stdout);
    let ex = e.run(&["explain", "a/1"]);
    ex.ok();
    assert!(ex.stdout.contains("no engine running"), "explain agrees with status: {}", ex.stdout);
    let only = e.run(&["status", "--status", "interrupted"]);
    only.ok();
    assert!(only.stdout.lines().any(|l| l.starts_with("a/1")), "{}", only.stdout);
    let b = e.run(&["builds"]);
    b.ok();
    assert!(b.stdout.contains("INTERRUPTED") && !b.stdout.contains("EXECUTING"), "{}", b.stdout);
    // JSON keeps the log's word (its shape is the contract's).
    assert_eq!(status_of(&e, "a/1"), "PARTITION_BUILDING");
    // recover stops the orphaned job and finishes the request.
    e.run(&["recover"]).ok();
    assert_eq!(status_of(&e, "a/1"), "PARTITION_AVAILABLE");
}

#[test]
fn status_shows_why_a_partition_failed() {
    let e = two_jobs();
    e.fail("a/1");
    e.dep("b/1", "MATERIALIZE", "a/1");
    e.run(&["build", "b/1"]).code(1);
    let st = e.run(&["status"]);
    st.ok();
    assert!(st.stdout.lines().next().unwrap_or("").ends_with("MESSAGE"), "{}", st.stdout);
    let row = |r: &str| st.stdout.lines().find(|l| l.starts_with(r)).unwrap_or("").to_string();
    assert!(row("a/1").contains("exited with code 1"), "{}", st.stdout);
    assert!(row("b/1").contains("upstream a/1 failed"), "{}", st.stdout);

    // A Ctrl-C: the running partition and the one that never started say so.
    let mut child = e.spawn(&["build", "--jobs", "1", "a/7", "a/8"], &[("SLEEP", "30")]);
    wait_until("one BUILDING", || {
        status_json(&e).iter().any(|s| s["status"] == "PARTITION_BUILDING")
    });
    signal(&child, "INT");
    let out =
        finish(std::mem::replace(&mut child, Command::new("true").spawn().unwrap()), DEADLINE);
    out.code(130);
    let st = e.run(&["status"]);
    let msgs: Vec<String> = st
        .stdout
        .lines()
        .filter(|l| l.starts_with("a/7") || l.starts_with("a/8"))
        .map(String::from)
        .collect();
    assert!(msgs.iter().any(|l| l.contains("cancelled while running")), "{}", st.stdout);
    assert!(msgs.iter().any(|l| l.contains("cancelled before it started")), "{}", st.stdout);
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish_without_a_graph() {
    let e = Env::empty();
    for (shell, marker) in
        [("bash", "_databuild()"), ("zsh", "#compdef databuild"), ("fish", "complete -c databuild")]
    {
        let out = e.run(&["completions", shell]);
        out.ok();
        assert!(out.stdout.contains(marker), "{shell}: {}", out.stdout);
        assert!(out.stdout.contains("recover"), "{shell} completes subcommands");
    }
    e.run(&["completions", "tcsh"]).code(2);
}

#[test]
fn defaults_in_the_graph_file_set_jobs_and_are_checked() {
    let e = two_jobs();
    let toml = e.read("databuild.toml");
    e.write("databuild.toml", &format!("[defaults]\njobs = 1\n\n{toml}"));
    let out = e.run(&["-v", "build", "a/1", "a/2"]);
    out.ok();
    assert!(
        out.stderr.contains("running up to 1 jobs at once ([defaults] jobs in the graph file)"),
        "{}",
        out.stderr
    );
    let out = e.run(&["-v", "build", "--jobs", "2", "a/3"]);
    assert!(out.stderr.contains("running up to 2 jobs at once (--jobs)"), "{}", out.stderr);

    e.write("databuild.toml", &format!("[defaults]\njobs = 0\n\n{toml}"));
    let out = e.run(&["build", "a/4"]);
    out.code(2);
    assert!(out.error_line().contains("key 'defaults.jobs' is 0"), "{}", out.stderr);
    e.write("databuild.toml", &format!("[defaults]\njobs = \"4\"\n\n{toml}"));
    let out = e.run(&["build", "a/4"]);
    out.code(2);
    assert!(
        out.error_line().contains("key 'defaults.jobs'"),
        "a wrong type names the key: {}",
        out.stderr
    );
    e.write("databuild.toml", &format!("[defaults]\njbos = 2\n\n{toml}"));
    let out = e.run(&["build", "a/4"]);
    out.code(2);
    assert!(out.error_line().contains("jbos"), "{}", out.stderr);
}

/// Runs `databuild ARGS` on a pseudo-terminal of 100x30 (via `script`); returns what it drew.
fn on_a_terminal(e: &Env, args: &str, env: &[(&str, &str)]) -> Option<String> {
    on_a_terminal_of(e, args, env, 100)
}

/// The same, `cols` wide.
fn on_a_terminal_of(e: &Env, args: &str, env: &[(&str, &str)], cols: usize) -> Option<String> {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` to make a pseudo-terminal");
        return None;
    }
    let mut c = Command::new("script");
    c.args(["-qefc", &format!("stty cols {cols} rows 30; exec {BIN} {args}"), "/dev/null"])
        .current_dir(e.path())
        .env_remove("DATABUILD_LOG")
        .env_remove("NO_COLOR")
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    Some(finish(c.spawn().unwrap(), DEADLINE).stdout)
}

#[test]
fn on_a_terminal_the_live_view_ticks_lists_running_jobs_and_colours() {
    let e = two_jobs();
    let Some(drawn) = on_a_terminal(&e, "build a/1", &[("SLEEP", "3")]) else { return };
    // The job runs 3 s with no event: its timer and the bar's clock move anyway.
    let pieces: Vec<&str> = drawn.split(['\r', '\n']).collect();
    assert!(
        pieces.iter().any(|p| p.contains("2s") && p.contains("a  a/1") && !p.contains("run ")),
        "a running-job line with its timer: {drawn:?}"
    );
    assert!(drawn.contains("[00:00:02]"), "the bar's clock ticks: {drawn:?}");
    assert!(drawn.contains("0/1 jobs"), "N/M: {drawn:?}");
    assert!(drawn.contains("\x1b[32mdone"), "colour on a terminal: {drawn:?}");

    let e = two_jobs();
    let Some(drawn) = on_a_terminal(&e, "build a/1", &[("NO_COLOR", "1")]) else { return };
    assert!(drawn.contains("done"), "{drawn:?}");
    assert!(!drawn.contains("\x1b[32m"), "NO_COLOR is respected: {drawn:?}");
}

/// On a narrow terminal, event lines are cut to its width (with …) instead of wrapping.
#[test]
fn on_a_narrow_terminal_event_lines_do_not_wrap() {
    let e = Env::generic(&[("a", r"a/.+")]);
    let long = format!("a/{}", "x".repeat(80));
    let Some(drawn) = on_a_terminal_of(&e, &format!("build {long}"), &[("NO_COLOR", "1")], 50)
    else {
        return;
    };
    // Each event line runs from its word to where the live view is drawn again.
    let events: Vec<&str> = ["start  ", "done   "]
        .iter()
        .flat_map(|w| drawn.match_indices(w).map(|(i, _)| &drawn[i..]))
        .map(|l| l.split(['\r', '\n', '\u{1b}', '⠁']).next().unwrap_or(l))
        .collect();
    assert!(!events.is_empty(), "{drawn:?}");
    for l in events {
        assert!(l.chars().count() <= 50, "{} columns: {l:?}", l.chars().count());
        assert!(l.ends_with('…'), "{l:?}");
    }
}
