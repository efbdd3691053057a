//! `databuild serve` and the CLI as its client (CONTRACT §9): the start line and server.json,
//! build/execute/cancel through the server with the embedded mode's lines and exit codes,
//! `--detach`, Ctrl-C cancelling one request only, a vanished client cancelling nothing, a stale
//! server.json ignored, stop and resume, and the commands that need the log to themselves.

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::util::*;

/// A running `databuild serve` in an env; killed (and waited for) when dropped.
struct Server {
    child: Option<Child>,
    stderr: std::path::PathBuf,
    info: serde_json::Value,
}

impl Server {
    fn start(env: &Env, extra_env: &[(&str, &str)]) -> Server {
        Server::start_args(env, &["serve", "--addr", "127.0.0.1:0"], extra_env)
    }

    fn start_args(env: &Env, args: &[&str], extra_env: &[(&str, &str)]) -> Server {
        let stderr = env.path().join(format!("serve-{}.err", std::process::id()));
        let _ = std::fs::remove_file(env.log_dir().join("server.json"));
        let mut c = env.command(args);
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c.stdout(Stdio::null()).stderr(std::fs::File::create(&stderr).unwrap());
        let child = c.spawn().expect("spawn databuild serve");
        let pid = child.id();
        let mut s = Server { child: Some(child), stderr, info: serde_json::Value::Null };
        let file = env.log_dir().join("server.json");
        wait_until("server.json of the new server", || {
            std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v["pid"] == pid)
        });
        s.info = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        s
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn addr(&self) -> String {
        self.info["addr"].as_str().unwrap().to_string()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends `sig` and waits for the exit: (code, stderr).
    fn stop(mut self, sig: &str) -> (i32, String) {
        let mut child = self.child.take().unwrap();
        signal(&child, sig);
        let start = std::time::Instant::now();
        let code = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st.code().unwrap_or(-1);
            }
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not stop on SIG{sig}: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (code, self.stderr())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn chain() -> Env {
    let env = Env::generic(&[("a", r"a/\d+"), ("b", r"b/\d+")]);
    env.dep("b/1", "MATERIALIZE", "a/1");
    env.dep("b/2", "MATERIALIZE", "a/2");
    env
}

#[test]
fn serve_prints_its_line_writes_a_private_server_json_and_removes_it_on_sigterm() {
    let env = chain();
    let s = Server::start(&env, &[]);
    let line = s.stderr().lines().next().unwrap_or_default().to_string();
    let log = env.log_dir();
    let (label, rest) = line
        .strip_prefix("serving ")
        .and_then(|l| l.split_once(' '))
        .unwrap_or_else(|| panic!("start line: {line}"));
    assert!(!label.is_empty(), "start line: {line}");
    assert!(rest.starts_with(&format!("on http://{} (log ", s.addr())), "start line: {line}");
    assert!(rest.ends_with(&format!("{})", log.display())), "start line: {line}");
    for key in ["pid", "addr", "token", "startedAt", "bootId", "startTicks", "version", "logId"] {
        assert!(!s.info[key].is_null(), "server.json lacks {key}: {}", s.info);
    }
    assert_eq!(s.info["pid"], s.pid());
    let mode = |p: &str| std::fs::metadata(env.log_dir().join(p)).unwrap().permissions().mode();
    assert_eq!(mode("server.json") & 0o777, 0o600);
    assert_eq!(mode("server.sock") & 0o777, 0o600);
    assert!(!s.stderr().contains("not a loopback address"));
    let (code, _) = s.stop("TERM");
    assert_eq!(code, 0);
    assert!(!env.log_dir().join("server.json").exists(), "server.json left after a clean stop");
    assert!(!env.log_dir().join("server.sock").exists(), "socket left after a clean stop");
}

#[test]
fn build_goes_through_the_server_with_the_same_line_and_exit_codes() {
    let env = chain();
    let s = Server::start(&env, &[]);
    // The server holds the log: an embedded build would exit 3, so success means it went through.
    let out = env.run(&["build", "b/1"]);
    out.ok();
    assert!(out.stdout.starts_with("build COMPLETED in "), "{}", out.stdout);
    assert_eq!(env.ledger(), ["a/1", "b/1"]);
    // Again: nothing runs.
    env.run(&["build", "b/1"]).ok();
    assert_eq!(env.ledger(), ["a/1", "b/1"]);
    // A failing job: exit 1 naming the request; an unknown ref: exit 2, nothing recorded.
    env.fail("a/2");
    let out = env.run(&["build", "b/2"]);
    out.code(1);
    assert!(out.stdout.starts_with("build FAILED in "), "{}", out.stdout);
    assert!(out.error_line().contains("FAILED"), "{}", out.error_line());
    let before = events(&env).len();
    let out = env.run(&["build", "zzz/1"]);
    out.code(2);
    assert!(out.error_line().contains("no job produces 'zzz/1'"), "{}", out.error_line());
    assert_eq!(events(&env).len(), before);
    // JSON output: one object per request.
    env.unfail("a/2");
    let out = env.run(&["build", "b/2", "--format", "json"]);
    out.ok();
    let objs = out.json_lines();
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0]["status"], "BUILD_REQUEST_COMPLETED");
    let (code, _) = s.stop("TERM");
    assert_eq!(code, 0);
}

#[test]
fn execute_goes_through_the_server() {
    let env = chain();
    let s = Server::start(&env, &[]);
    let graph = env.run(&["analyze", "b/1", "--format", "json"]).ok().stdout.clone();
    env.write("graph.json", &graph);
    let out = env.run(&["execute", "graph.json"]);
    out.ok();
    assert!(out.stdout.starts_with("execute COMPLETED in "), "{}", out.stdout);
    assert_eq!(env.ledger(), ["a/1", "b/1"]);
    drop(s);
}

#[test]
fn detach_prints_the_request_id_and_needs_a_server() {
    let env = chain();
    let out = env.run(&["build", "--detach", "b/1"]);
    out.code(2);
    assert!(out.error_line().contains("databuild serve"), "{}", out.error_line());
    let s = Server::start(&env, &[]);
    let out = env.run(&["build", "--detach", "b/1"]);
    out.ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stdout);
    let id = lines[0].to_string();
    wait_until("the detached request to end", || {
        env.run(&["builds", "--format", "json"])
            .json_lines()
            .iter()
            .any(|r| r["buildRequestId"] == id.as_str() && r["status"] == "BUILD_REQUEST_COMPLETED")
    });
    assert_eq!(env.ledger(), ["a/1", "b/1"]);
    drop(s);
}

#[test]
fn recover_and_repair_exit_3_naming_the_server() {
    let env = chain();
    let s = Server::start(&env, &[]);
    for cmd in [&["recover"][..], &["repair", "--truncate"][..]] {
        let out = env.run(cmd);
        out.code(3);
        let line = out.error_line();
        assert!(line.contains(&format!("pid {}", s.pid())), "{cmd:?}: {line}");
        assert!(line.contains(&s.addr()), "{cmd:?}: {line}");
    }
    drop(s);
}

#[test]
fn a_stale_server_json_is_ignored() {
    let env = chain();
    let s = Server::start(&env, &[]);
    let (code, _) = s.stop("KILL");
    assert_ne!(code, 0);
    // kill -9 left server.json (and the socket) behind: the next build runs embedded.
    assert!(env.log_dir().join("server.json").exists());
    let out = env.run(&["build", "b/1"]);
    out.ok();
    assert_eq!(env.ledger(), ["a/1", "b/1"]);
}

#[test]
fn ctrl_c_cancels_only_that_clients_request_and_a_vanished_client_cancels_nothing() {
    let env = chain();
    let s = Server::start(&env, &[("SLEEP", "2")]);
    let mut a = env.spawn(&["build", "a/1"], &[]);
    let b = env.spawn(&["build", "a/2"], &[]);
    wait_until("both jobs to start", || env.ledger().len() == 2);
    // The vanished client: killed outright, its request goes on.
    let _ = a.kill();
    let _ = a.wait();
    signal(&b, "INT");
    let out_b = finish(b, DEADLINE);
    out_b.code(130);
    wait_until("a/1 to be built anyway", || {
        env.run(&["status", "a/1", "--format", "json"])
            .json_lines()
            .first()
            .is_some_and(|p| p["status"] == "PARTITION_AVAILABLE")
    });
    let reqs = env.run(&["builds", "--format", "json"]).ok().json_lines();
    let status_of = |r: &str| {
        reqs.iter()
            .find(|q| q["requestedPartitions"].to_string().contains(r))
            .map(|q| q["status"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    assert_eq!(status_of("a/2"), "BUILD_REQUEST_CANCELLED", "{reqs:?}");
    drop(s);
}

#[test]
fn a_request_cancelled_by_another_client_exits_1_saying_so() {
    let env = chain();
    let s = Server::start(&env, &[("SLEEP", "30")]);
    let follower = env.spawn(&["build", "a/1"], &[]);
    wait_until("the job to start", || env.ledger().len() == 1);
    let id = env.run(&["builds", "--format", "json"]).ok().json_lines()[0]["buildRequestId"]
        .as_str()
        .unwrap()
        .to_string();
    let out = env.run(&["cancel", &id]);
    out.ok();
    let out = finish(follower, DEADLINE);
    out.code(1);
    assert!(out.stdout.contains("CANCELLED"), "{}", out.stdout);
    assert!(out.error_line().contains("CANCELLED"), "{}", out.error_line());
    // Cancelling it again: already ended, exit 0 with a note.
    let again = env.run(&["cancel", &id]);
    again.ok();
    assert!(again.stdout.contains("already ended"), "{}", again.stdout);
    drop(s);
}

#[test]
fn a_stopped_server_leaves_requests_open_and_the_next_one_finishes_them() {
    let env = chain();
    let s = Server::start(&env, &[("SLEEP", "30")]);
    let client = env.spawn(&["build", "b/1"], &[]);
    wait_until("a/1 to start", || env.ledger().len() == 1);
    let (code, stderr) = s.stop("TERM");
    assert_eq!(code, 0, "{stderr}");
    // The waiting client says the server went away: exit 3.
    let out = finish(client, DEADLINE);
    out.code(3);
    assert!(out.error_line().contains("went away"), "{}", out.error_line());
    // The run was recorded as stopped by the engine; the request is still open.
    let evs = events(&env);
    let failed = events_of(&evs, "jobEvent", Some("JOB_FAILED"));
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].to_string().contains("engine stopped while running"), "{failed:?}");
    assert!(events_of(&evs, "buildRequestEvent", Some("BUILD_REQUEST_CANCELLED")).is_empty());
    // The next server resumes it: a/1 again (its run was stopped), then b/1.
    let s = Server::start(&env, &[]);
    wait_until("the resumed request to complete", || {
        env.run(&["builds", "--format", "json"])
            .json_lines()
            .iter()
            .any(|r| r["status"] == "BUILD_REQUEST_COMPLETED")
    });
    assert_eq!(env.ledger(), ["a/1", "a/1", "b/1"]);
    drop(s);
}

#[test]
fn a_taken_address_is_exit_2_and_a_held_log_exit_3() {
    let env = chain();
    let s = Server::start(&env, &[]);
    // The log is held by the first server.
    let out = env.run(&["serve", "--addr", "127.0.0.1:0"]);
    out.code(3);
    // Another graph directory, the first server's port.
    let other = chain();
    let out = other.run(&["serve", "--addr", &s.addr()]);
    out.code(2);
    assert!(out.error_line().contains(&s.addr()), "{}", out.error_line());
    drop(s);
}

#[test]
fn a_non_loopback_address_is_warned_about() {
    let env = chain();
    let s = Server::start_args(&env, &["serve", "--addr", "0.0.0.0:0"], &[]);
    let mut lines = s.stderr();
    for _ in 0..50 {
        if lines.lines().count() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        lines = s.stderr();
    }
    let second = lines.lines().nth(1).unwrap_or_default().to_string();
    assert!(
        second.starts_with("warning: ")
            && second
                .ends_with("is not a loopback address: anyone who can reach it can read the log"),
        "{lines}"
    );
    drop(s);
}

/// `GET path` over a plain TCP connection: the status line's code (0 if none came).
fn http_get(addr: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(addr) else { return 0 };
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).unwrap_or(0);
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|s| s.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn idle_connections_and_a_stalled_stream_cost_the_server_nothing_lasting() {
    let env = chain();
    let s = Server::start(&env, &[]);
    let addr = s.addr();
    // Hundreds of connections that never send a byte.
    let idle: Vec<std::net::TcpStream> =
        (0..400).filter_map(|_| std::net::TcpStream::connect(&addr).ok()).collect();
    assert!(idle.len() >= 300, "could only open {} connections", idle.len());
    // A subscriber that asks for the event stream and then never reads.
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    {
        use std::io::Write;
        write!(stalled, "GET /api/v1/events/stream HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    }
    // Half a request, then silence.
    let mut half = std::net::TcpStream::connect(&addr).unwrap();
    {
        use std::io::Write;
        write!(
            half,
            "POST /api/v1/builds HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000\r\n\r\n{{"
        )
        .unwrap();
    }
    // Builds go on (many events for the stalled stream), and the server answers.
    for r in ["b/1", "b/2"] {
        env.run(&["build", r]).ok();
    }
    assert_eq!(http_get(&addr, "/healthz"), 200);
    drop(idle);
    drop(stalled);
    drop(half);
    assert_eq!(http_get(&addr, "/healthz"), 200);
    let (code, stderr) = s.stop("TERM");
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn taint_and_build_stale_go_through_the_server() {
    let env = chain();
    env.run(&["build", "b/1"]).ok();
    let s = Server::start(&env, &[]);
    let out = env.run(&["taint", "a/1", "--downstream", "--reason", "bad input data"]);
    out.ok();
    assert!(out.stdout.contains("tainted a/1"), "{}", out.stdout);
    assert!(out.stdout.contains("tainted b/1"), "{}", out.stdout);
    let evs = events(&env);
    let tainted = events_of(&evs, "partitionEvent", Some("PARTITION_TAINTED"));
    assert_eq!(tainted.len(), 2, "{tainted:?}");
    // Nothing AVAILABLE matches any more: exit 2, as without a server.
    env.run(&["taint", "a/1"]).code(2);
    // The next build through the server builds both again.
    env.run(&["build", "b/1"]).ok();
    assert_eq!(env.ledger(), ["a/1", "b/1", "a/1", "b/1"]);
    drop(s);
}
