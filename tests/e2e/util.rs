//! The harness: a temp directory per test with a graph file and POSIX sh jobs, and the real
//! `databuild` binary run with a generous deadline (a test never hangs; none asserts on timing).

#![allow(dead_code)]

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_databuild");
/// Generous: a loaded CI machine must never make a correct test fail.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// A generic job for tests. `config`: one config per ref, args = [ref], inputs read from
/// `deps/<ref with / as _>` (lines "MATERIALIZE dep" or "QUERY dep"), outputs from
/// `outputs/<key>` if present (one ref per line) else the ref itself. `exec`: appends the ref to
/// ledger.txt, fails if `fail/<key>` exists, sleeps $SLEEP seconds, writes data/<ref>.
pub const GENERIC_JOB: &str = r#"#!/bin/sh
cmd=$1; shift
key_of() { printf '%s' "$1" | tr '/' '_'; }
if [ "$cmd" = config ]; then
  [ -f config_fails ] && { echo "config refuses: $*" >&2; exit 7; }
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
    outs="{\"str\":\"$r\"}"
    if [ -f "outputs/$key" ]; then
      outs=
      while read -r o; do [ -n "$o" ] && outs="$outs${outs:+,}{\"str\":\"$o\"}"; done < "outputs/$key"
    fi
    printf '%s{"outputs":[%s],"inputs":[%s],"args":["%s"]}' "$sep" "$outs" "$inputs" "$r"
    sep=,
  done
  printf ']}\n'
  exit 0
fi
r=$1
echo "$r" >> ledger.txt
key=$(key_of "$r")
if [ -f "fail/$key" ]; then echo "failing $r on purpose" >&2; exit 1; fi
if [ -n "$SLEEP" ]; then sleep "$SLEEP"; fi
for o in $DATABUILD_OUTPUTS; do mkdir -p "data/$(dirname "$o")"; echo built > "data/$o"; done
echo "built $DATABUILD_OUTPUTS"
"#;

/// The outcome of one command.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> &Out {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn code(&self, code: i32) -> &Out {
        assert_eq!(
            self.code, code,
            "expected exit {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The one `error:` line (asserting there is exactly one, and no panic).
    pub fn error_line(&self) -> String {
        assert!(!self.stderr.contains("panicked"), "a panic: {}", self.stderr);
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:") || l.starts_with("internal error:"))
            .collect();
        assert_eq!(errors.len(), 1, "exactly one error line in:\n{}", self.stderr);
        errors[0].to_string()
    }

    /// stdout lines parsed as JSON.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// A temp directory with a graph.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    /// An empty directory.
    pub fn empty() -> Env {
        Env { dir: tempfile::tempdir().expect("tempdir") }
    }

    /// A graph of generic jobs: (label, pattern) each.
    pub fn generic(jobs: &[(&str, &str)]) -> Env {
        let e = Env::empty();
        e.script("jobs/generic.sh", GENERIC_JOB);
        let mut toml = String::new();
        for (label, pattern) in jobs {
            toml.push_str(&format!("[[jobs]]\nlabel = \"{label}\"\nentrypoint = \"jobs/generic.sh\"\npartition_patterns = ['{pattern}']\n\n"));
        }
        e.write("databuild.toml", &toml);
        e
    }

    /// A copy of `examples/<name>`.
    pub fn example(name: &str) -> Env {
        let e = Env::empty();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name);
        copy_dir(&src, e.path());
        e
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub fn append(&self, rel: &str, content: &str) {
        use std::io::Write;
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap();
        f.write_all(content.as_bytes()).unwrap();
    }

    pub fn script(&self, rel: &str, content: &str) {
        self.write(rel, content);
        std::fs::set_permissions(self.path().join(rel), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap_or_default()
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path().join(rel).exists()
    }

    /// Declares `dep` as an input of `r` for the generic job.
    pub fn dep(&self, r: &str, kind: &str, dep: &str) {
        self.append(&format!("deps/{}", r.replace('/', "_")), &format!("{kind} {dep}\n"));
    }

    /// Makes the generic job fail for `r`.
    pub fn fail(&self, r: &str) {
        self.write(&format!("fail/{}", r.replace('/', "_")), "");
    }

    pub fn unfail(&self, r: &str) {
        let _ = std::fs::remove_file(self.path().join(format!("fail/{}", r.replace('/', "_"))));
    }

    /// Refs the generic job executed, in order.
    pub fn ledger(&self) -> Vec<String> {
        self.read("ledger.txt").lines().map(String::from).collect()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args).current_dir(self.path()).env_remove("DATABUILD_LOG").env("NO_COLOR", "1");
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    /// Runs databuild to completion (within the deadline).
    pub fn run(&self, args: &[&str]) -> Out {
        finish(self.command(args).spawn().expect("spawn databuild"), DEADLINE)
    }

    /// Runs with extra environment.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut c = self.command(args);
        for (k, v) in env {
            c.env(k, v);
        }
        finish(c.spawn().expect("spawn databuild"), DEADLINE)
    }

    /// Starts databuild in the background.
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> Child {
        let mut c = self.command(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.spawn().expect("spawn databuild")
    }

    /// Runs databuild through `sh -c 'LIMITS; exec databuild ARGS...'` (e.g. `ulimit -f N`), so
    /// it starts under those limits.
    pub fn run_limited(&self, limits: &str, args: &[&str]) -> Out {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("{limits}; exec \"$0\" \"$@\""))
            .arg(BIN)
            .args(args)
            .current_dir(self.path())
            .env_remove("DATABUILD_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        finish(c.spawn().expect("spawn sh"), DEADLINE)
    }

    /// The log directory.
    pub fn log_dir(&self) -> PathBuf {
        self.path().join(".databuild/log")
    }
}

/// Waits for a child (killing it at the deadline, which fails the test).
pub fn finish(mut child: Child, deadline: Duration) -> Out {
    let start = Instant::now();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "databuild did not finish within {deadline:?}; stderr so far: {}",
                t2.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Out { code, stdout: t1.join().unwrap(), stderr: t2.join().unwrap() }
}

/// Polls `f` until it holds (or the deadline passes, failing the test).
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "data" || name == ".databuild" {
            continue;
        }
        let to = dst.join(&name);
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Sends a signal to a process.
pub fn signal(child: &Child, sig: &str) {
    let st =
        Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status().unwrap();
    assert!(st.success());
}

/// The events of the log as JSON (`replay --format json`).
pub fn events(env: &Env) -> Vec<serde_json::Value> {
    env.run(&["replay", "--format", "json"]).ok().json_lines()
}

/// Events of a kind (`buildRequestEvent`, `jobEvent`, ...) whose status (if any) is `status`.
pub fn events_of<'a>(
    evs: &'a [serde_json::Value],
    kind: &str,
    status: Option<&str>,
) -> Vec<&'a serde_json::Value> {
    evs.iter()
        .filter(|e| {
            let body = &e["event"][kind];
            !body.is_null() && status.is_none_or(|s| body["status"] == s)
        })
        .collect()
}
