//! A `databuild serve` in a temp dir (killed on drop), and a small HTTP/1.1 client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A job for any ref: `deps/<ref with _>` lists inputs (`MATERIALIZE ref` lines), `fail/<key>`
/// makes it fail, `$SLEEP` (or `sleep/<key>` holding seconds) makes it slow.
pub const GENERIC_JOB: &str = r#"#!/bin/sh
cmd=$1; shift
key_of() { printf '%s' "$1" | tr '/<>' '_()'; }
if [ "$cmd" = config ]; then
  printf '{"configs":['
  sep=
  for r in "$@"; do
    key=$(key_of "$r")
    inputs=
    if [ -f "deps/$key" ]; then
      while read -r t d; do
        [ -n "$d" ] && inputs="$inputs${inputs:+,}{\"depType\":\"$t\",\"partitionRef\":{\"str\":\"$d\"}}"
      done < "deps/$key"
    fi
    printf '%s{"outputs":[{"str":"%s"}],"inputs":[%s],"args":["%s"]}' "$sep" "$r" "$inputs" "$r"
    sep=,
  done
  printf ']}\n'
  exit 0
fi
r=$1
key=$(key_of "$r")
if [ -f "fail/$key" ]; then echo "failing $r on purpose" >&2; exit 1; fi
if [ -f "sleep/$key" ]; then sleep "$(cat "sleep/$key")"; fi
echo "built $r"
"#;

/// A temp dir with a graph of generic jobs, and a server on it.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub token: String,
    child: Option<Child>,
}

impl Server {
    /// Starts `databuild serve --addr 127.0.0.1:0` on a graph of `(label, pattern)` jobs.
    pub fn start(jobs: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("jobs/generic.sh");
        std::fs::create_dir_all(job.parent().unwrap()).unwrap();
        std::fs::write(&job, GENERIC_JOB).unwrap();
        std::fs::set_permissions(&job, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut toml = String::new();
        for (label, pattern) in jobs {
            toml.push_str(&format!(
                "[[jobs]]\nlabel = \"{label}\"\nentrypoint = \"jobs/generic.sh\"\npartition_patterns = ['{pattern}']\n\n"
            ));
        }
        std::fs::write(dir.path().join("databuild.toml"), toml).unwrap();
        for d in ["deps", "fail", "sleep"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let child = Command::new(env!("CARGO_BIN_EXE_databuild"))
            .args(["serve", "--addr", "127.0.0.1:0", "--jobs", "4"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut s = Server { dir, addr: String::new(), token: String::new(), child: Some(child) };
        let info = s.dir.path().join(".databuild/log/server.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&info)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                s.addr = v["addr"].as_str().unwrap().to_string();
                s.token = v["token"].as_str().unwrap().to_string();
                break;
            }
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    pub fn key(r: &str) -> String {
        r.replace('/', "_").replace('<', "(").replace('>', ")")
    }

    /// Declares `dep` an input of `r`.
    pub fn dep(&self, r: &str, dep: &str) {
        use std::fs::OpenOptions;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("deps").join(Self::key(r)))
            .unwrap();
        writeln!(f, "MATERIALIZE {dep}").unwrap();
    }

    /// Makes `r`'s job sleep `secs` seconds.
    pub fn slow(&self, r: &str, secs: u32) {
        std::fs::write(self.dir.path().join("sleep").join(Self::key(r)), secs.to_string()).unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn get(&self, path: &str) -> Resp {
        request(&self.addr, "GET", path, &[], "")
    }

    /// `POST /api/v1/builds`; returns the request id.
    pub fn build(&self, refs: &[&str], force: bool) -> String {
        let body = serde_json::json!({ "partitions": refs, "force": force }).to_string();
        let auth = format!("Bearer {}", self.token);
        let r = request(
            &self.addr,
            "POST",
            "/api/v1/builds",
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            &body,
        );
        assert_eq!(r.status, 202, "{}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v["buildRequestId"].as_str().unwrap().to_string()
    }

    /// Waits until the build page shows `status`.
    pub fn wait_status(&self, id: &str, status: &str) {
        let want = format!("st-{status}\">{status}</span>");
        wait_until(&format!("build {id} is {status}"), Duration::from_secs(30), || {
            self.get(&format!("/builds/{id}")).body.contains(&want)
        });
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: a clean stop (server.json removed); SIGKILL if it does not go in time.
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request (`Connection: close`), with a `Host` of the server's address unless
/// `headers` names one.
pub fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    // Read until the body is complete: by Content-Length, the last chunk, or the end of the
    // stream (some servers, chromedriver among them, keep the connection open regardless).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|n| raw.len() >= split + 4 + n)
                || (head.contains("transfer-encoding: chunked") && raw.ends_with(b"0\r\n\r\n"))
            {
                break;
            }
        }
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    parse(&raw)
}

fn parse(raw: &[u8]) -> Resp {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        let mut out = Vec::new();
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16).unwrap();
            rest = &rest[nl + 2..];
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n + 2..];
        }
        out
    } else {
        rest.to_vec()
    };
    Resp { status, headers, body: String::from_utf8_lossy(&body).to_string() }
}

/// A URL-encoded form body.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
