//! The HTTP JSON API of `databuild serve` (CONTRACT §11) against the real binary: every read
//! endpoint answers exactly what the matching command prints with `--format json` on the same
//! log, errors map as the contract says (400/404/401/403/409/413), and the event stream resumes
//! after `Last-Event-ID`.
//!
//! Each test starts its own `databuild serve --addr 127.0.0.1:0` in a temp copy of
//! `examples/basic` (plus a generic job that can be made to fail), talks to it over plain TCP
//! with a minimal HTTP/1.1 client (so it can send a wrong Host or a broken body), and stops it
//! when the test ends, also on panic.

#[path = "e2e/util.rs"]
mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use util::{DEADLINE, Env, GENERIC_JOB, wait_until};

/// How long one HTTP exchange may take.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `databuild serve`, stopped (SIGTERM, then SIGKILL) when dropped.
struct Server {
    child: Child,
    addr: String,
    token: String,
    stderr: std::path::PathBuf,
}

impl Server {
    fn start(env: &Env) -> Server {
        let stderr = env.path().join("serve.stderr");
        let mut c = env.command(&["serve", "--addr", "127.0.0.1:0", "--jobs", "2"]);
        c.stdout(Stdio::null()).stderr(std::fs::File::create(&stderr).expect("stderr file"));
        let child = c.spawn().expect("spawn databuild serve");
        let mut server = Server { child, addr: String::new(), token: String::new(), stderr };
        let info = env.log_dir().join("server.json");
        let pid = server.child.id() as i64;
        wait_until("server.json of this server", || {
            if let Ok(Some(st)) = server.child.try_wait() {
                panic!("serve exited early ({st}): {}", server.stderr_text());
            }
            let Ok(text) = std::fs::read_to_string(&info) else { return false };
            let Ok(v) = serde_json::from_str::<Value>(&text) else { return false };
            if v["pid"].as_i64() != Some(pid) {
                return false;
            }
            server.addr = v["addr"].as_str().expect("addr").to_string();
            server.token = v["token"].as_str().expect("token").to_string();
            true
        });
        wait_until("/healthz", || {
            server.try_request("GET", "/healthz", &[], b"").is_ok_and(|r| r.status == 200)
        });
        server
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// One HTTP/1.1 exchange on a new connection. `headers` may replace `Host`.
    fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        let mut s = TcpStream::connect(&self.addr)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("Host: {}\r\n", self.addr));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if method != "GET" || !body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("Connection: close\r\n\r\n");
        s.write_all(head.as_bytes())?;
        // A server may answer (413) and close before reading a huge body: the answer counts.
        let _ = s.write_all(body);
        let mut raw = Vec::new();
        let read = s.read_to_end(&mut raw);
        if raw.is_empty() {
            read?;
        }
        Resp::parse(&raw)
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.try_request(method, path, headers, body).unwrap_or_else(|e| {
            panic!("{method} {path}: {e}; server stderr:\n{}", self.stderr_text())
        })
    }

    fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], b"")
    }

    fn post(&self, path: &str, body: &Value) -> Resp {
        let auth = format!("Bearer {}", self.token);
        self.request(
            "POST",
            path,
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// Submits a build and waits until the request has ended; its id.
    fn build(&self, refs: &[&str]) -> String {
        let r = self.post("/api/v1/builds", &json!({ "partitions": refs }));
        assert_eq!(r.status, 202, "POST /api/v1/builds: {}", r.text());
        let id = r.json()["buildRequestId"].as_str().expect("buildRequestId").to_string();
        wait_until("the build to end", || {
            let r = self.get(&format!("/api/v1/builds/{id}"));
            let s = r.json()[0]["status"].as_str().unwrap_or_default().to_string();
            matches!(
                s.as_str(),
                "BUILD_REQUEST_COMPLETED" | "BUILD_REQUEST_FAILED" | "BUILD_REQUEST_CANCELLED"
            )
        });
        id
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Resp {
    fn parse(raw: &[u8]) -> std::io::Result<Resp> {
        let bad = |what: &str| std::io::Error::other(format!("bad HTTP answer: {what}"));
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no head"))?;
        let headers = String::from_utf8_lossy(&raw[..end]).to_string();
        let status = headers
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no status"))?;
        let mut body = raw[end + 4..].to_vec();
        if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        Ok(Resp { status, headers, body })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `error` of an error answer.
    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error in {}", self.text()))
            .to_string()
    }
}

/// Decodes a chunked body (as much as is complete).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 || b.len() < eol + 2 + n {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[(eol + 4 + n).min(b.len())..];
    }
    out
}

/// A temp copy of `examples/basic` with a generic job `flaky` (for failures).
fn example() -> Env {
    let env = Env::example("basic");
    env.script("jobs/generic.sh", GENERIC_JOB);
    env.append(
        "databuild.toml",
        "\n[[jobs]]\nlabel = \"flaky\"\nentrypoint = \"jobs/generic.sh\"\npartition_patterns = ['flaky/.*']\n",
    );
    env
}

/// What the CLI prints with `--format json`, each line parsed.
fn cli(env: &Env, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    Value::Array(env.run(&a).ok().json_lines())
}

/// The CLI's error line for `args`, without `error: ` (it must exit 2).
fn cli_error(env: &Env, args: &[&str]) -> String {
    let out = env.run(args);
    out.code(2);
    out.error_line().strip_prefix("error: ").expect("error: prefix").to_string()
}

/// Asserts that `GET path` answers 200 with exactly the lines `databuild ARGS --format json`
/// prints, as an array.
fn assert_same(server: &Server, env: &Env, path: &str, args: &[&str]) {
    let r = server.get(path);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    assert!(
        r.headers.to_ascii_lowercase().contains("content-type: application/json"),
        "{}",
        r.headers
    );
    let http = r.json();
    assert!(http.is_array(), "GET {path} is not an array: {http}");
    let want = cli(env, args);
    assert_eq!(http, want, "GET {path} differs from `databuild {}`", args.join(" "));
}

/// An RFC 3339 time (UTC) of unix nanoseconds, as `--at` takes it.
fn rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
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

#[test]
fn every_read_endpoint_answers_what_the_cli_prints() {
    let env = example();
    let server = Server::start(&env);
    // Empty log: empty arrays, as the CLI prints nothing.
    assert_same(&server, &env, "/api/v1/status", &["status"]);
    assert_same(&server, &env, "/api/v1/builds", &["builds"]);
    assert_same(&server, &env, "/api/v1/events", &["replay"]);
    assert_same(&server, &env, "/api/v1/jobs", &["jobs"]);

    let ok = server.build(&["sum/3"]);
    env.fail("flaky/1");
    let failed = server.build(&["flaky/1", "numbers/2"]);
    assert_ne!(ok, failed);

    assert_same(&server, &env, "/api/v1/status", &["status"]);
    assert_same(
        &server,
        &env,
        "/api/v1/status?ref=sum/3&ref=flaky/1&ref=nope/1",
        &["status", "sum/3", "flaky/1", "nope/1"],
    );
    assert_same(&server, &env, "/api/v1/status?ref=numbers/*", &["status", "numbers/*"]);
    assert_same(&server, &env, "/api/v1/status?ref=zzz/*", &["status", "zzz/*"]);
    assert_same(
        &server,
        &env,
        "/api/v1/status?ref=numbers/%7B2..3%7D",
        &["status", "numbers/{2..3}"],
    );
    for at in ["0", "5", "9", "1000000"] {
        assert_same(&server, &env, &format!("/api/v1/status?at={at}"), &["status", "--at", at]);
    }
    // `at=TIME`: the time of an event in the middle of the log.
    let events = cli(&env, &["replay"]);
    let n = events.as_array().unwrap().len();
    assert!(n > 10, "a log of {n} events");
    let ts: i64 = events[n / 2]["event"]["timestamp"]
        .as_str()
        .map(|s| s.parse().unwrap())
        .or_else(|| events[n / 2]["event"]["timestamp"].as_i64())
        .expect("timestamp");
    let time = rfc3339(ts);
    assert_same(
        &server,
        &env,
        &format!("/api/v1/status?at={time}&ref=sum/3"),
        &["status", "--at", &time, "sum/3"],
    );

    assert_same(&server, &env, "/api/v1/builds", &["builds"]);
    assert_same(&server, &env, &format!("/api/v1/builds/{ok}"), &["builds", &ok]);
    assert_same(&server, &env, &format!("/api/v1/builds/{failed}"), &["builds", &failed]);
    // Short ids as the CLI takes them: a tail as tables show it, and `last`.
    let tail = &failed[failed.len() - 8..];
    assert_same(&server, &env, &format!("/api/v1/builds/{tail}"), &["builds", &failed]);
    assert_same(&server, &env, "/api/v1/builds/last", &["builds", "last"]);

    for r in ["sum/3", "numbers/3", "flaky/1", "numbers/*", "sum/99"] {
        assert_same(&server, &env, &format!("/api/v1/explain?ref={r}"), &["explain", r]);
    }
    let e = server.get("/api/v1/explain?ref=flaky/1").json();
    assert_eq!(e[0]["reason"], "failed", "{e}");
    assert!(e[0]["message"].as_str().unwrap().contains("failing flaky/1 on purpose"), "{e}");
    let e = server.get("/api/v1/explain?ref=sum/99").json();
    assert_eq!(e[0]["reason"], "never_requested", "{e}");

    assert_same(&server, &env, "/api/v1/lineage?ref=sum/3", &["lineage", "sum/3"]);
    assert_same(
        &server,
        &env,
        "/api/v1/lineage?ref=numbers/3&downstream=true",
        &["lineage", "numbers/3", "--downstream"],
    );
    assert_same(
        &server,
        &env,
        "/api/v1/lineage?ref=sum/3&depth=0",
        &["lineage", "sum/3", "--depth", "0"],
    );
    assert_same(
        &server,
        &env,
        "/api/v1/lineage?ref=sum/3&downstream=false&depth=1",
        &["lineage", "sum/3", "--depth", "1"],
    );

    assert_same(&server, &env, "/api/v1/jobs", &["jobs"]);
    for l in ["sum_numbers", "generate_numbers", "flaky"] {
        assert_same(&server, &env, &format!("/api/v1/jobs?label={l}"), &["jobs", l]);
    }

    assert_same(&server, &env, "/api/v1/events", &["replay"]);
    assert_same(&server, &env, "/api/v1/events?since=4", &["replay", "--since", "4"]);
    assert_same(&server, &env, "/api/v1/events?until=7", &["replay", "--until", "7"]);
    assert_same(
        &server,
        &env,
        &format!("/api/v1/events?until={time}"),
        &["replay", "--until", &time],
    );
    assert_same(&server, &env, &format!("/api/v1/events?build={ok}"), &["replay", "--build", &ok]);
    assert_same(
        &server,
        &env,
        &format!("/api/v1/events?build={tail}&since=3&partition=flaky/*"),
        &["replay", "--build", tail, "--since", "3", "--partition", "flaky/*"],
    );
    assert_same(
        &server,
        &env,
        "/api/v1/events?partition=numbers/3",
        &["replay", "--partition", "numbers/3"],
    );
    let all = server.get("/api/v1/events").json();
    assert_eq!(all.as_array().unwrap().len(), n);
    assert_eq!(all[0]["seq"], 1);
}

#[test]
fn errors_answer_as_the_contract_says() {
    let env = example();
    let server = Server::start(&env);
    let id = server.build(&["numbers/1"]);

    // Unknown things named in the URL: 404, with the CLI's message.
    let unknown = "01234567-0000-7000-8000-000000000000";
    let cases: Vec<(String, Vec<&str>)> = vec![
        (format!("/api/v1/builds/{unknown}"), vec!["builds", unknown]),
        ("/api/v1/builds/nothing".into(), vec!["builds", "nothing"]),
        ("/api/v1/jobs?label=nope".into(), vec!["jobs", "nope"]),
        (format!("/api/v1/events?build={unknown}"), vec!["replay", "--build", unknown]),
        ("/api/v1/explain?ref=zzz/*".into(), vec!["explain", "zzz/*"]),
    ];
    for (path, args) in &cases {
        let r = server.get(path);
        assert_eq!(r.status, 404, "GET {path}: {}", r.text());
        assert_eq!(r.error(), cli_error(&env, args), "GET {path}");
    }
    // A ref no job owns: 404 (the CLI would say never_requested or exit 2).
    for path in ["/api/v1/explain?ref=nope/1", "/api/v1/lineage?ref=nope/1"] {
        let r = server.get(path);
        assert_eq!(r.status, 404, "GET {path}: {}", r.text());
        assert!(r.error().contains("no job produces 'nope/1'"), "{}", r.error());
    }
    // Bad input: 400 with the CLI's message.
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("/api/v1/lineage?ref=sum/9", vec!["lineage", "sum/9"]),
        ("/api/v1/status?at=yesterday", vec!["status", "--at", "yesterday"]),
        ("/api/v1/events?until=yesterday", vec!["replay", "--until", "yesterday"]),
        ("/api/v1/status?ref=p/%7B5..1%7D", vec!["status", "p/{5..1}"]),
        ("/api/v1/explain?ref=a%20b", vec!["explain", "a b"]),
    ];
    for (path, args) in &cases {
        let r = server.get(path);
        assert_eq!(r.status, 400, "GET {path}: {}", r.text());
        assert_eq!(r.error(), cli_error(&env, args), "GET {path}");
    }
    // Bad query parameters: 400 with a message naming them.
    for (path, word) in [
        ("/api/v1/status?bogus=1", "bogus"),
        ("/api/v1/builds?x=1", "x"),
        ("/api/v1/events?since=abc", "since"),
        ("/api/v1/events?since=1&since=2", "since"),
        ("/api/v1/lineage?ref=sum/3&depth=-1", "depth"),
        ("/api/v1/lineage?ref=sum/3&downstream=maybe", "downstream"),
        ("/api/v1/lineage", "ref"),
        ("/api/v1/explain", "ref"),
        ("/api/v1/events/stream?since=x", "since"),
    ] {
        let r = server.get(path);
        assert_eq!(r.status, 400, "GET {path}: {}", r.text());
        assert!(r.error().contains(word), "GET {path}: {}", r.error());
    }
    // Unknown paths: a JSON 404.
    let r = server.get("/api/v1/nothing");
    assert_eq!(r.status, 404);
    assert!(r.error().contains("no such endpoint"), "{}", r.error());

    // A wrong method: a JSON 405.
    let r = server.get(&format!("/api/v1/builds/{id}/cancel"));
    assert_eq!(r.status, 405, "{}", r.text());
    assert!(r.error().contains("does not take GET"), "{}", r.error());

    // Changes over TCP need the token.
    let body = json!({ "partitions": ["numbers/2"] }).to_string();
    let r = server.request("POST", "/api/v1/builds", &[], body.as_bytes());
    assert_eq!(r.status, 401, "{}", r.text());
    let r = server.request(
        "POST",
        "/api/v1/builds",
        &[("Authorization", "Bearer wrong")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let r = server.request("POST", &format!("/api/v1/builds/{id}/cancel"), &[], b"");
    assert_eq!(r.status, 401, "{}", r.text());
    // A Host that is not the server's: 403, also for reads.
    let r = server.request("GET", "/api/v1/builds", &[("Host", "evil.example")], b"");
    assert_eq!(r.status, 403, "{}", r.text());
    let r = server.request("GET", "/api/v1/builds", &[("Host", "localhost")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    // Bodies: not JSON, the wrong shape, an unknown ref (400: in a body), huge (413).
    let auth = format!("Bearer {}", server.token);
    for (body, word) in [
        (&b"{not json"[..], "not a build request"),
        (&br#"{"partitions": "numbers/1"}"#[..], "not a build request"),
        (&br#"{"partitions": []}"#[..], "no partitions"),
        (&br#"{"partitions": ["nope/1"]}"#[..], "no job produces"),
    ] {
        let r = server.request("POST", "/api/v1/builds", &[("Authorization", &auth)], body);
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.error().contains(word), "{}", r.error());
    }
    let huge = vec![b'['; 8 << 20];
    let r = server.request("POST", "/api/v1/builds", &[("Authorization", &auth)], &huge);
    assert!(matches!(r.status, 413 | 400), "{} {}", r.status, r.text());
    assert_eq!(server.get("/healthz").status, 200, "the server survives a huge body");

    // Cancel: unknown 404, already ended 409.
    let r = server.post(&format!("/api/v1/builds/{unknown}/cancel"), &json!({}));
    assert_eq!(r.status, 404, "{}", r.text());
    let r = server.post(&format!("/api/v1/builds/{id}/cancel"), &json!({}));
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.error().contains("already ended"), "{}", r.error());
}

#[test]
fn the_event_stream_resumes_after_last_event_id() {
    let env = example();
    let server = Server::start(&env);
    server.build(&["sum/2"]);
    let all = cli(&env, &["replay"]);
    let n = all.as_array().unwrap().len() as u64;
    assert!(n > 5, "{n} events");

    // Reads the stream until it has shown seq `last`; the ids and data seen.
    let read_stream = |headers: &[(&str, &str)], query: &str, last: u64| -> Vec<(u64, Value)> {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut head =
            format!("GET /api/v1/events/stream{query} HTTP/1.1\r\nHost: {}\r\n", server.addr);
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let start = Instant::now();
        let mut raw = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            let text = String::from_utf8_lossy(&raw).to_string();
            let seen: Vec<(u64, Value)> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .map(|v| (v["seq"].as_u64().unwrap(), v))
                .collect();
            if seen.last().is_some_and(|(s, _)| *s >= last) {
                let ids: Vec<u64> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("id: "))
                    .map(|i| i.trim().parse().unwrap())
                    .collect();
                assert_eq!(
                    ids,
                    seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
                    "id: SEQ per event"
                );
                return seen;
            }
            assert!(start.elapsed() < DEADLINE, "the stream stopped before seq {last}: {text}");
            match s.read(&mut buf) {
                Ok(0) => panic!("the stream ended: {text}"),
                Ok(k) => raw.extend_from_slice(&buf[..k]),
                Err(_) => {} // a read timeout: look again
            }
        }
    };
    let from_start = read_stream(&[], "", n);
    assert_eq!(from_start.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>());
    // The same objects as `replay --format json`.
    assert_eq!(Value::Array(from_start.into_iter().map(|(_, v)| v).collect()), all);
    let resumed = read_stream(&[("Last-Event-ID", "3")], "", n);
    assert_eq!(resumed.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (4..=n).collect::<Vec<_>>());
    let since = read_stream(&[], "?since=2", n);
    assert_eq!(since.first().map(|(s, _)| *s), Some(2));
}
