//! A `databuild serve` child on port 0 in a temp graph directory, killed when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{BIN, DEADLINE, Env};

/// A running server: its address, token and socket (from `server.json`), and its stderr so far.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub token: String,
    pub socket: PathBuf,
    pub stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `databuild serve --addr 127.0.0.1:0 ARGS` in `env` and waits for its start line.
    pub fn start(env: &Env, args: &[&str]) -> Server {
        let mut c = Command::new(BIN);
        c.arg("serve").args(["--addr", "127.0.0.1:0"]).args(args);
        c.current_dir(env.path()).env_remove("DATABUILD_LOG").env("NO_COLOR", "1");
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn databuild serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let buf = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.starts_with("serving ") {
                    let _ = tx.send(());
                }
                let mut b = buf.lock().unwrap();
                b.push_str(&line);
                b.push('\n');
            }
        });
        let mut server = Server {
            child,
            addr: String::new(),
            token: String::new(),
            socket: PathBuf::new(),
            stderr,
        };
        if rx.recv_timeout(DEADLINE).is_err() {
            panic!("the server did not start; stderr: {}", server.stderr());
        }
        let info: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(env.log_dir().join("server.json")).expect("server.json"),
        )
        .expect("server.json is JSON");
        assert_eq!(info["pid"].as_u64(), Some(u64::from(server.child.id())), "server.json's pid");
        server.addr = info["addr"].as_str().unwrap().to_string();
        server.token = info["token"].as_str().unwrap().to_string();
        server.socket = PathBuf::from(info["socket"].as_str().unwrap());
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends `sig` (a name for kill(1): TERM, KILL, ...).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig}");
    }

    /// Waits for the server to exit (failing the test at the deadline); its exit code, or
    /// 128 + the signal.
    pub fn wait(&mut self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0));
            }
            assert!(start.elapsed() < DEADLINE, "the server did not exit: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit code (0 expected).
    pub fn stop(mut self) -> (i32, String) {
        self.signal("TERM");
        let code = self.wait();
        // Let the stderr thread see the end of the pipe.
        std::thread::sleep(Duration::from_millis(50));
        (code, self.stderr())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // TERM first, so the server stops its job runs; KILL if it does not go within 10 s.
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
