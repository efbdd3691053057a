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
    /// The graph directory.
    pub dir: PathBuf,
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
            dir: env.path().to_path_buf(),
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

/// One runtime for the tests' gRPC clients.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

pub use databuild::proto::data_build_control_client::DataBuildControlClient;
pub use databuild::proto::data_build_service_client::DataBuildServiceClient;
use databuild::proto::{
    BuildEvent, BuildRequestStatus, StreamEventsRequest, build_event::EventType,
};
use tonic::transport::Channel;

impl Server {
    /// A channel to the server (connected lazily; every call has a deadline of its own).
    pub fn channel(&self) -> Channel {
        let _guard = rt().enter();
        Channel::from_shared(self.url()).unwrap().connect_lazy()
    }

    pub fn control(&self) -> DataBuildControlClient<Channel> {
        DataBuildControlClient::new(self.channel())
    }

    pub fn service(&self) -> DataBuildServiceClient<Channel> {
        DataBuildServiceClient::new(self.channel())
    }

    /// `msg` with the token and a deadline.
    pub fn authed<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert("authorization", format!("Bearer {}", self.token).parse().unwrap());
        r.set_timeout(DEADLINE);
        r
    }

    /// Every durable event (StreamEvents from the start, not following), as (seq, event).
    pub fn events(&self) -> Vec<(u64, BuildEvent)> {
        let mut c = self.control();
        rt().block_on(async move {
            let mut req = tonic::Request::new(StreamEventsRequest {
                since_seq: 0,
                follow: false,
                build_request_id: String::new(),
            });
            req.set_timeout(DEADLINE);
            let mut s = c.stream_events(req).await.expect("StreamEvents").into_inner();
            let mut out = Vec::new();
            while let Some(e) = s.message().await.expect("StreamEvents item") {
                out.push((e.seq, e.event.unwrap()));
            }
            out
        })
    }

    /// Polls the log until `f` holds (failing the test at the deadline).
    pub fn wait_for(&self, what: &str, mut f: impl FnMut(&[(u64, BuildEvent)]) -> bool) {
        let start = Instant::now();
        loop {
            if f(&self.events()) {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; server: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The status of a build request event.
pub fn request_status(e: &BuildEvent) -> Option<BuildRequestStatus> {
    match &e.event_type {
        Some(EventType::BuildRequestEvent(r)) => Some(r.status()),
        _ => None,
    }
}

/// Each request's last request status, by id.
pub fn request_ends(
    evs: &[(u64, BuildEvent)],
) -> std::collections::BTreeMap<String, BuildRequestStatus> {
    let mut m = std::collections::BTreeMap::new();
    for (_, e) in evs {
        if let Some(s) = request_status(e) {
            m.insert(e.build_request_id.clone(), s);
        }
    }
    m
}

/// The generic test job (`crate::util::GENERIC_JOB`: a ledger line per exec, `fail/<key>` fails
/// it, `deps/<key>` declares inputs) that also waits while `hold/<key>` exists (at most a minute),
/// so a test decides when a run may finish; its `config` takes two seconds for a ref with a
/// `slowconfig/<key>` file.
pub fn held_job() -> String {
    let sleep = r#"if [ -n "$SLEEP" ]; then sleep "$SLEEP"; fi"#;
    let config = "  [ -f config_fails ]";
    assert!(crate::util::GENERIC_JOB.contains(sleep) && crate::util::GENERIC_JOB.contains(config));
    crate::util::GENERIC_JOB
        .replace(
            config,
            &format!("  for r in \"$@\"; do [ -f \"slowconfig/$(key_of \"$r\")\" ] && sleep 2; done\n{config}"),
        )
        .replace(
        sleep,
        &format!(
            "{sleep}\ni=0; while [ -f \"hold/$key\" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done"
        ),
    )
}

/// A lattice of generic jobs: `a/0..a/3`; `b/i` reads `a/i` and `a/(i+1)%4`; `c/i` reads `b/i`
/// and `b/(i+1)%4`; `d/0` reads every `c/i`. 13 runs in all, every `a` and `b` shared.
pub fn lattice() -> Env {
    let env = Env::generic(&[("a", r"a/\d+"), ("b", r"b/\d+"), ("c", r"c/\d+"), ("d", r"d/\d+")]);
    env.script("jobs/generic.sh", &held_job());
    for i in 0..4 {
        let j = (i + 1) % 4;
        env.dep(&format!("b/{i}"), "MATERIALIZE", &format!("a/{i}"));
        env.dep(&format!("b/{i}"), "MATERIALIZE", &format!("a/{j}"));
        env.dep(&format!("c/{i}"), "MATERIALIZE", &format!("b/{i}"));
        env.dep(&format!("c/{i}"), "MATERIALIZE", &format!("b/{j}"));
        env.dep("d/0", "MATERIALIZE", &format!("c/{i}"));
    }
    env
}

/// Holds `refs` (their runs wait until [`release`]).
pub fn hold(env: &Env, refs: &[&str]) {
    for r in refs {
        env.write(&format!("hold/{}", r.replace('/', "_")), "");
    }
}

/// Lets every held run finish.
pub fn release(env: &Env) {
    let _ = std::fs::remove_dir_all(env.path().join("hold"));
}
