//! `databuild serve` figures (CONTRACT §9–§10), each printed, none asserted but correctness:
//!
//! 1. No-op build of an already-built DAG (lattice 20x10, 200 jobs) through a running server,
//!    as a raw gRPC `Build` call (one channel, reused) and as the CLI `databuild build` (a fresh
//!    process that finds the server through `server.json`), vs `make -j2` no-op on the same DAG
//!    (target: at most half of make's time).
//! 2. 50 concurrent clients submitting overlapping requests on a fresh lattice (SubmitBuild
//!    latency p50/p99, requests per second until every request ended; the ledger proves each job
//!    ran once).
//! 3. StreamEvents catch-up from seq 1 on a 1 M-event log (events/s through a tonic client;
//!    target at least 1 M/s), and the server's RSS (VmRSS) with that log open, before and after.
//!
//! Run: `cargo bench --bench server` (needs GNU make and awk). Without `--bench` (clippy, `cargo
//! test --benches`) it runs a small smoke version. `SERVER_BENCH_RUNS=N` sets the no-op samples;
//! `SERVER_BENCH_ONLY=noop,concurrent,stream` runs only those parts.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use databuild::proto::data_build_control_client::DataBuildControlClient;
use databuild::proto::data_build_service_client::DataBuildServiceClient;
use databuild::proto::{
    BuildRequestStatus, GraphBuildRequest, PartitionRef, StreamEventsRequest, SubmitBuildRequest,
    build_event::EventType,
};
use tonic::transport::Channel;

#[path = "common/history.rs"]
mod history;

const BIN: &str = env!("CARGO_BIN_EXE_databuild");

/// As `benches/launch.rs`: `config REF...` looks each ref up in deps.txt (`REF DEP...` per line)
/// with one awk; `exec REF` appends REF to ledger.txt.
const JOB: &str = r#"#!/bin/sh
if [ "$1" = config ]; then
  shift
  exec awk -v want="$*" '
BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) q[w[i]] = 1 }
($1 in q) { line[$1] = $0 }
END {
  printf "{\"configs\":["
  for (i = 1; i <= n; i++) {
    m = split(line[w[i]], f, " ")
    ins = ""
    for (k = 2; k <= m; k++) {
      ins = ins (k > 2 ? "," : "") "{\"depType\":\"MATERIALIZE\",\"partitionRef\":{\"str\":\"" f[k] "\"}}"
    }
    printf "%s{\"outputs\":[{\"str\":\"%s\"}],\"inputs\":[%s],\"args\":[\"%s\"]}", (i > 1 ? "," : ""), w[i], ins, w[i]
  }
  print "]}"
}' deps.txt
fi
echo "$2" >> ledger.txt
"#;

/// Lattice `n/L/I`: (l, i) needs (l-1, i) and (l-1, i+1 mod W); the last layer is requested.
struct Dag {
    nodes: Vec<(String, Vec<String>)>,
    targets: Vec<String>,
}

fn lattice(width: u32, layers: u32) -> Dag {
    let mut nodes = Vec::new();
    for l in 0..layers {
        for i in 0..width {
            let deps = if l == 0 {
                vec![]
            } else {
                vec![format!("n/{}/{i}", l - 1), format!("n/{}/{}", l - 1, (i + 1) % width)]
            };
            nodes.push((format!("n/{l}/{i}"), deps));
        }
    }
    let targets = (0..width).map(|i| format!("n/{}/{i}", layers - 1)).collect();
    Dag { nodes, targets }
}

fn make_target(r: &str) -> String {
    format!("out/{}", r.replace('/', "_"))
}

impl Dag {
    fn write_graph(&self, dir: &Path) {
        let toml =
            "[[jobs]]\nlabel = \"n\"\nentrypoint = \"job.sh\"\npartition_patterns = ['n/.+']\n";
        std::fs::write(dir.join("databuild.toml"), toml).unwrap();
        std::fs::write(dir.join("job.sh"), JOB).unwrap();
        std::fs::set_permissions(dir.join("job.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let deps: String =
            self.nodes.iter().map(|(r, ins)| format!("{r} {}\n", ins.join(" "))).collect();
        std::fs::write(dir.join("deps.txt"), deps).unwrap();
    }

    fn write_make(&self, dir: &Path) {
        let mut m = format!(
            ".PHONY: all\nall: {}\n",
            self.targets.iter().map(|t| make_target(t)).collect::<Vec<_>>().join(" ")
        );
        for (r, ins) in &self.nodes {
            let ins: Vec<String> = ins.iter().map(|i| make_target(i)).collect();
            m.push_str(&format!(
                "{}: {}\n\t@echo {r} >> ledger.txt && touch $@\n",
                make_target(r),
                ins.join(" ")
            ));
        }
        std::fs::write(dir.join("Makefile"), m).unwrap();
        std::fs::create_dir_all(dir.join("out")).unwrap();
    }
}

/// A `databuild serve` on port 0 in `dir`, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    token: String,
}

impl Server {
    fn start(dir: &Path, jobs: u32) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--addr", "127.0.0.1:0", "--jobs", &jobs.to_string()])
            .current_dir(dir)
            .env_remove("DATABUILD_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn databuild serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("serving ") => break,
                Some(Ok(_)) => {}
                _ => panic!("databuild serve did not start"),
            }
        }
        // Keep draining stderr (the server announces each request's end there).
        std::thread::spawn(move || for _ in lines.by_ref() {});
        let info: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(".databuild/log/server.json")).unwrap(),
        )
        .unwrap();
        Server {
            child,
            addr: info["addr"].as_str().unwrap().to_string(),
            token: info["token"].as_str().unwrap().to_string(),
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap()
    }

    fn authed<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert("authorization", format!("Bearer {}", self.token).parse().unwrap());
        r
    }

    /// VmRSS in KiB.
    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn refs(v: &[String]) -> Vec<PartitionRef> {
    v.iter().map(|s| PartitionRef { str: s.clone() }).collect()
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p).map(|s| s.lines().count()).unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank - 1]
}

fn time_ok(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    let out = cmd.output().expect("run");
    let s = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    s
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// 1: no-op build through the server (gRPC and CLI) vs make's no-op.
async fn noop(smoke: bool, runs: usize) {
    let dag = if smoke { lattice(4, 3) } else { lattice(20, 10) };
    let n = dag.nodes.len();
    let (d, m) = (tmp(), tmp());
    dag.write_graph(d.path());
    dag.write_make(m.path());
    let server = Server::start(d.path(), 2);
    let mut svc = DataBuildServiceClient::new(server.channel().await);
    let req = || server.authed(GraphBuildRequest { outputs: refs(&dag.targets) });
    svc.build(req()).await.expect("cold Build");
    assert_eq!(lines(&d.path().join("ledger.txt")), n, "the cold build ran every job");
    let make = || {
        let mut c = Command::new("make");
        c.args(["-j2", "-s", "all"]).current_dir(m.path());
        c
    };
    time_ok(&mut make());
    assert_eq!(lines(&m.path().join("ledger.txt")), n);

    let (mut grpc, mut cli, mut mk) = (Vec::new(), Vec::new(), Vec::new());
    let mut cli_ok = true;
    for _ in 0..runs {
        let t = Instant::now();
        svc.build(req()).await.expect("no-op Build");
        grpc.push(t.elapsed().as_secs_f64());
        mk.push(time_ok(&mut make()));
        if cli_ok {
            let t = Instant::now();
            let out = Command::new(BIN)
                .args(["build", "-q"])
                .args(&dag.targets)
                .current_dir(d.path())
                .env_remove("DATABUILD_LOG")
                .output()
                .unwrap();
            if out.status.success() {
                cli.push(t.elapsed().as_secs_f64());
            } else {
                // Before `build` goes through a live server, it cannot open the server's log.
                println!(
                    "noop: CLI `databuild build` with a server running failed (exit {:?}): {}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                cli_ok = false;
            }
        }
    }
    assert_eq!(lines(&d.path().join("ledger.txt")), n, "no-op builds ran nothing");
    assert_eq!(lines(&m.path().join("ledger.txt")), n);
    let mk = median(&mut mk);
    let g = median(&mut grpc);
    println!(
        "noop lattice {n} jobs, median of {runs}: make -j2 {:.2} ms | gRPC Build {:.2} ms ({:.2}x make; target <= 0.5x)",
        mk * 1e3,
        g * 1e3,
        g / mk
    );
    if !cli.is_empty() {
        let c = median(&mut cli);
        println!(
            "noop lattice {n} jobs, median of {}: CLI `databuild build` through the server {:.2} ms ({:.2}x make)",
            cli.len(),
            c * 1e3,
            c / mk
        );
    }
    server.stop();
}

/// 2: many clients submitting overlapping requests at once.
async fn concurrent(smoke: bool) {
    let (clients, per_client) = if smoke { (5, 2) } else { (50, 4) };
    let dag = if smoke { lattice(4, 3) } else { lattice(20, 10) };
    let n = dag.nodes.len();
    let width = dag.targets.len();
    let layers = n / width;
    let d = tmp();
    dag.write_graph(d.path());
    let server = Arc::new(Server::start(d.path(), 2));
    let channel = server.channel().await;
    // Count request ends from the log as they become durable.
    let mut ctl = DataBuildControlClient::new(channel.clone());
    let mut stream = ctl
        .stream_events(StreamEventsRequest {
            since_seq: 0,
            follow: true,
            build_request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let total = clients * per_client;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let server = server.clone();
        let channel = channel.clone();
        tasks.push(tokio::spawn(async move {
            let mut ctl = DataBuildControlClient::new(channel);
            let mut lat = Vec::new();
            for k in 0..per_client {
                // Two refs of the last layers, overlapping other clients' (their upstream cones
                // overlap more).
                let i = (c * 7 + k * 3) % width;
                let a = format!("n/{}/{i}", layers - 1);
                let b = format!("n/{}/{}", layers - 2, (i + width / 2) % width);
                let req = server.authed(SubmitBuildRequest {
                    outputs: refs(&[a, b]),
                    force: false,
                    max_concurrent_runs: 0,
                    ..Default::default()
                });
                let t = Instant::now();
                ctl.submit_build(req).await.expect("SubmitBuild");
                lat.push(t.elapsed().as_secs_f64());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let submitted = t0.elapsed().as_secs_f64();
    let mut ended = 0;
    let mut failed = 0;
    while ended < total {
        let e = tokio::time::timeout(Duration::from_secs(300), stream.message())
            .await
            .expect("every request ends")
            .unwrap()
            .expect("stream open");
        if let Some(EventType::BuildRequestEvent(r)) = e.event.and_then(|e| e.event_type) {
            match r.status() {
                BuildRequestStatus::BuildRequestCompleted => ended += 1,
                BuildRequestStatus::BuildRequestFailed
                | BuildRequestStatus::BuildRequestCancelled => {
                    ended += 1;
                    failed += 1;
                }
                _ => {}
            }
        }
    }
    let all = t0.elapsed().as_secs_f64();
    assert_eq!(failed, 0, "no request failed");
    let ledger = std::fs::read_to_string(d.path().join("ledger.txt")).unwrap_or_default();
    let mut ran: Vec<&str> = ledger.lines().collect();
    let runs = ran.len();
    ran.sort_unstable();
    ran.dedup();
    assert_eq!(runs, ran.len(), "each job ran once");
    println!(
        "concurrent: {clients} clients x {per_client} overlapping requests ({total}), {runs} jobs ran once each: SubmitBuild p50 {:.2} ms p99 {:.2} ms; all submitted in {:.2} s ({:.0} submits/s); all ended in {:.2} s ({:.1} requests/s)",
        pct(&mut lat, 50.0) * 1e3,
        pct(&mut lat, 99.0) * 1e3,
        submitted,
        total as f64 / submitted,
        all,
        total as f64 / all
    );
    drop(stream);
    if let Ok(s) = Arc::try_unwrap(server) {
        s.stop();
    }
}

/// 3: StreamEvents catch-up on a 1 M-event log, and the server's RSS.
async fn catch_up(smoke: bool) {
    let target: usize = if smoke { 20_000 } else { 1_000_000 };
    let d = tmp();
    let log: PathBuf = d.path().join(".databuild/log");
    {
        use databuild::store::{Store, StoreOptions};
        use databuild_log::{Durability, WriterOptions};
        let opts = StoreOptions {
            writer: WriterOptions {
                durability: Durability::None,
                checkpoint_interval: None,
                ..WriterOptions::default()
            },
            ..StoreOptions::default()
        };
        // The store waits for its commits by blocking: on a thread of its own, outside tokio.
        let log = log.clone();
        std::thread::spawn(move || {
            let (store, _) = Store::open(&log, opts).unwrap();
            history::generate(&store, target, 64);
            store.close().unwrap();
        })
        .join()
        .unwrap();
    }
    // A graph for the history's job labels (nothing runs: every request there ended).
    let mut toml = String::new();
    for (l, p) in [("ingest", "raw"), ("aggregate", "agg"), ("report", "report")] {
        toml.push_str(&format!(
            "[[jobs]]\nlabel = \"{l}\"\nentrypoint = \"job.sh\"\npartition_patterns = ['{p}/.+']\n\n"
        ));
    }
    std::fs::write(d.path().join("databuild.toml"), toml).unwrap();
    std::fs::write(d.path().join("job.sh"), JOB).unwrap();
    std::fs::set_permissions(d.path().join("job.sh"), std::fs::Permissions::from_mode(0o755))
        .unwrap();
    let t = Instant::now();
    let server = Server::start(d.path(), 2);
    let start_s = t.elapsed().as_secs_f64();
    let rss0 = server.rss_kib();
    let mut ctl =
        DataBuildControlClient::new(server.channel().await).max_decoding_message_size(64 << 20);
    let mut best = f64::MAX;
    let mut count = 0u64;
    for _ in 0..3 {
        let t = Instant::now();
        let mut s = ctl
            .stream_events(StreamEventsRequest {
                since_seq: 1,
                follow: false,
                build_request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut next = 1u64;
        while let Some(e) = s.message().await.unwrap() {
            assert_eq!(e.seq, next, "gapless, in order");
            next += 1;
        }
        count = next - 1;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let rss1 = server.rss_kib();
    println!(
        "stream: {count} events from seq 1 in {:.3} s (best of 3): {:.2} M events/s (target >= 1 M/s)",
        best,
        count as f64 / best / 1e6
    );
    println!(
        "rss: server with a {count}-event log: {:.1} MiB after start (started in {start_s:.2} s), {:.1} MiB after 3 catch-ups",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0
    );
    server.stop();
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    for tool in ["make", "awk"] {
        if Command::new(tool).arg("--version").output().is_err() {
            println!("server: {tool} not found; skipped");
            return;
        }
    }
    let runs: usize = std::env::var("SERVER_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(if smoke { 2 } else { 11 });
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // SERVER_BENCH_ONLY=noop,concurrent,stream runs only those parts.
    let only = std::env::var("SERVER_BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);
    rt.block_on(async {
        if run("noop") {
            noop(smoke, runs).await;
        }
        if run("concurrent") {
            concurrent(smoke).await;
        }
        if run("stream") {
            catch_up(smoke).await;
        }
    });
}
