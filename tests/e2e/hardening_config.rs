//! `config` calls that misbehave: endless output, background children holding the pipes, and
//! calls that never end. Each must end the command promptly with exit 2 (or succeed, for a
//! background child after valid JSON), and leave no process of the config behind.

use std::process::Command;
use std::time::Duration;

use crate::util::*;

/// Far below the harness's DEADLINE: each of these finishes in a few seconds when fixed.
const QUICK: Duration = Duration::from_secs(30);

/// A graph with one job `odd` owning `odd/...`, whose `config` runs `config_body` (POSIX sh;
/// `$1` is the ref) and whose `exec` succeeds. `extra` is appended to the job's table.
fn odd_job(config_body: &str, extra: &str) -> Env {
    let e = Env::empty();
    e.script(
        "jobs/odd.sh",
        &format!(
            "#!/bin/sh\ncmd=$1; shift\nif [ \"$cmd\" = config ]; then\n{config_body}\nfi\nexit 0\n"
        ),
    );
    e.write(
        "databuild.toml",
        &format!(
            "[[jobs]]\nlabel = \"odd\"\nentrypoint = \"jobs/odd.sh\"\npartition_patterns = ['odd/.*']\n{extra}\n"
        ),
    );
    e
}

/// Valid JSON for the one ref asked (`$1`).
const VALID: &str =
    r#"printf '{"configs":[{"outputs":[{"str":"%s"}],"args":["%s"]}]}\n' "$1" "$1""#;

/// A `sleep` whose command line is unique to this test, so `pgrep -f` finds only ours.
fn marker(tag: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("sleep 300.{}{:09}", std::process::id() % 1000, nanos ^ tag.len() as u32)
}

/// Pids of processes whose command line is `pattern`.
fn pids_of(pattern: &str) -> Vec<String> {
    let out = Command::new("pgrep").arg("-f").arg(format!("^{pattern}$")).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
}

/// Asserts nothing runs `pattern` (killing, by pid, whatever does, so no test leaves it behind).
fn assert_gone(pattern: &str) {
    // The group is killed before the command returns; give the kernel a moment to reap.
    let mut left = pids_of(pattern);
    for _ in 0..50 {
        if left.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
        left = pids_of(pattern);
    }
    for pid in &left {
        let _ = Command::new("kill").arg("-KILL").arg(pid).status();
    }
    panic!("'{pattern}' outlived the command: pids {left:?}");
}

fn run_quick(env: &Env, args: &[&str]) -> Out {
    finish(env.command(args).spawn().expect("spawn databuild"), QUICK)
}

#[test]
fn endless_stdout_is_stopped_at_the_limit_with_exit_2() {
    let env = odd_job("exec yes", "");
    let out = run_quick(&env, &["analyze", "odd/1"]);
    out.code(2);
    let line = out.error_line();
    assert!(line.contains("job 'odd'") && line.contains("stdout passed 1 GiB"), "{line}");
}

#[test]
fn stderr_past_64_mib_is_stopped_with_exit_2() {
    let env = odd_job("exec yes 'noise on stderr' >&2", "");
    let out = run_quick(&env, &["analyze", "odd/1"]);
    out.code(2);
    let line = out.error_line();
    assert!(line.contains("job 'odd'") && line.contains("stderr passed 64 MiB"), "{line}");
    assert!(out.stderr.lines().count() <= 12, "a bounded tail is shown:\n{}", out.stderr);
}

#[test]
fn a_background_child_holding_stdout_does_not_hang_planning_and_is_killed() {
    for cmd in ["analyze", "build"] {
        let sleep = marker(cmd);
        let env = odd_job(&format!("( {sleep} & )\n{VALID}\nexit 0"), "");
        let out = run_quick(&env, &[cmd, "odd/1"]);
        assert_gone(&sleep);
        out.ok();
    }
}

#[test]
fn a_config_that_never_ends_times_out_with_exit_2() {
    let sleep = marker("timeout");
    let env = odd_job(&format!("{sleep}\n{VALID}"), "config_timeout_seconds = 1");
    let out = run_quick(&env, &["build", "odd/1"]);
    assert_gone(&sleep);
    out.code(2);
    let line = out.error_line();
    assert!(line.contains("job 'odd'") && line.contains("config timed out after 1 s"), "{line}");
    assert!(line.contains("config_timeout_seconds"), "says what to do: {line}");
}
