//! Dashboard page times on a log of about 1,000,000 events (the query bench's history): a real
//! `databuild serve` on the log, each page fetched over loopback HTTP; the figure is the time
//! from sending the request to the last byte of the answer, so it bounds the server's time.
//!
//! Run: `cargo bench --bench dashboard` (without `--bench`, e.g. under `cargo test --benches`, a
//! 20,000-event smoke run). Target: every page < 200 ms.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/history.rs"]
mod history;

#[allow(dead_code)]
#[path = "../tests/dashboard/util.rs"]
mod util;

use databuild::store::{Store, StoreOptions};
use databuild_log::{Durability, WriterOptions};

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let target: usize = if smoke { 20_000 } else { 1_000_000 };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = dir.path().join(".databuild/log");
    let opts = StoreOptions {
        writer: WriterOptions {
            durability: Durability::None,
            checkpoint_interval: None,
            ..WriterOptions::default()
        },
        ..StoreOptions::default()
    };
    let (store, _) = Store::open(&log, opts).unwrap();
    let (events, days) = history::generate(&store, target, 64);
    store.close().unwrap();
    println!("fixture: {events} events ({days} build requests, {} runs)", days * 3);

    // The history's jobs, so the server's graph knows them (nothing is run).
    std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
    let job = dir.path().join("jobs/none.sh");
    std::fs::write(&job, "#!/bin/sh\nexit 1\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&job, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut toml = String::new();
    for (label, p) in [("ingest", "raw"), ("aggregate", "agg"), ("report", "report")] {
        toml.push_str(&format!(
            "[[jobs]]\nlabel = \"{label}\"\nentrypoint = \"jobs/none.sh\"\npartition_patterns = ['{p}/.*']\n\n"
        ));
    }
    std::fs::write(dir.path().join("databuild.toml"), toml).unwrap();

    let t = Instant::now();
    let _server = Stop(
        Command::new(env!("CARGO_BIN_EXE_databuild"))
            .args(["serve", "--addr", "127.0.0.1:0"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let info = log.join("server.json");
    let addr = loop {
        if let Ok(text) = std::fs::read_to_string(&info)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            break v["addr"].as_str().unwrap().to_string();
        }
        assert!(t.elapsed() < Duration::from_secs(120), "the server did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("server up in {:.2} s", t.elapsed().as_secs_f64());

    let get = |path: &str| -> (f64, usize, String) {
        let t = Instant::now();
        let r = util::request(&addr, "GET", path, &[], "");
        let s = t.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        (s, r.body.len(), r.body)
    };
    let home = get("/").2;
    let build =
        home.split("href=\"/builds/").nth(1).unwrap().split('"').next().unwrap().to_string();
    let page = get(&format!("/builds/{build}")).2;
    let run = page.split("href=\"/runs/").nth(1).unwrap().split('"').next().unwrap().to_string();
    let (last, mid) = (days - 1, days / 2);
    let half = events as u64 / 2;
    let pages: Vec<(String, String)> = vec![
        ("home".into(), "/".into()),
        ("home, page 1000".into(), "/?page=1000".into()),
        ("build".into(), format!("/builds/{build}")),
        ("partition (report, lineage up)".into(), format!("/partition?ref=report%2F{last}")),
        ("partition (raw, lineage down)".into(), format!("/partition?ref=raw%2F{mid}")),
        ("job".into(), "/jobs/aggregate".into()),
        ("job, page 100".into(), "/jobs/aggregate?page=100".into()),
        ("run".into(), format!("/runs/{run}")),
        ("events".into(), "/events".into()),
        ("events ?partition=report/1*".into(), "/events?partition=report%2F1*".into()),
        ("events ?build=ID".into(), format!("/events?build={build}")),
        ("home ?at=half (cold)".into(), format!("/?at={half}")),
        ("home ?at=half+1 (step)".into(), format!("/?at={}", half + 1)),
        ("home ?at=half+1000 (scrub)".into(), format!("/?at={}", half + 1000)),
        ("build ?at=end-5 (cold)".into(), format!("/builds/{build}?at={}", events - 5)),
        ("home ?at=1000 (cold, back)".into(), "/?at=1000".into()),
        ("partition ?at=1000+10 (step)".into(), "/partition?ref=raw%2F3&at=1010".into()),
    ];
    let mut worst: f64 = 0.0;
    for (name, path) in &pages {
        // The first fetch (cold for a history point), then the median of five.
        let (first, bytes, _) = get(path);
        let mut times: Vec<f64> = (0..5).map(|_| get(path).0).collect();
        times.sort_by(f64::total_cmp);
        let cold = name.contains("cold") || name.contains("step") || name.contains("scrub");
        let figure = if cold { first } else { times[2] };
        worst = worst.max(figure);
        println!(
            "{name:<34} {figure:>7.1} ms {} ({bytes} bytes; first {first:.1} ms, median of 5 {:.1} ms)",
            if cold { "first fetch" } else { "median     " },
            times[2]
        );
    }
    println!("slowest page: {worst:.1} ms (target < 200 ms)");
}

/// Stops the server (SIGTERM, then waits), also when an assertion fails.
struct Stop(std::process::Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-s", "TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}
