//! Opening a long log: how soon is a command ready on a log of 10,000,000 events, with and
//! without a snapshot? Fresh processes of the real binary (`status REF`), warm page cache, and the
//! writer's open in-process (lock, every frame checked, snapshot loaded, the rest folded).
//!
//! Run: `cargo bench --bench open` (BENCH_EVENTS=N to change the size; ~1.5 GB of log at 10M).

#[path = "common/history.rs"]
mod history;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use databuild::store::{Store, StoreOptions, snapshots};
use databuild_log::{Durability, WriterOptions};

fn peak_rss_kib(out: &std::process::Output) -> u64 {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kib="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn status(log: &Path, r: &str) -> (f64, u64) {
    // /usr/bin/time would add a dependency; the shell's time is enough, RSS via a GNU time if present.
    let bin = env!("CARGO_BIN_EXE_databuild");
    let t = Instant::now();
    let out = if Path::new("/usr/bin/time").exists() {
        Command::new("/usr/bin/time")
            .args(["-f", "peak_rss_kib=%M", bin, "status", r, "--log"])
            .arg(log)
            .output()
            .unwrap()
    } else {
        Command::new(bin).args(["status", r, "--log"]).arg(log).output().unwrap()
    };
    let s = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (s, peak_rss_kib(&out))
}

fn median3(f: impl Fn() -> (f64, u64)) -> (f64, u64) {
    let mut v: Vec<(f64, u64)> = (0..3).map(|_| f()).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v[1]
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let target: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if smoke { 30_000 } else { 10_000_000 });
    // BENCH_DIR=path keeps the fixture there (for profiling a command against it afterwards).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = std::env::var_os("BENCH_DIR").map_or_else(|| dir.path().to_path_buf(), Into::into);
    let log = root.join("log");
    let opts = || StoreOptions {
        writer: WriterOptions {
            durability: Durability::None,
            checkpoint_interval: None,
            ..WriterOptions::default()
        },
        ..StoreOptions::default()
    };
    let (store, _) = Store::open(&log, opts()).unwrap();
    let t = Instant::now();
    let (events, days) = history::generate(&store, target, 256);
    store.close().unwrap(); // writes a snapshot: more than 250k events follow none
    let bytes: u64 = std::fs::read_dir(&log)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "fixture: {events} events, {days} build requests, {:.0} MiB of log, written in {:.1} s; snapshots: {:?}",
        bytes as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64(),
        snapshots::list(&log).iter().map(|(s, _)| *s).collect::<Vec<_>>()
    );
    let r = format!("report/{}", days - 1);
    status(&log, &r); // warm the page cache
    let (with, rss_with) = median3(|| status(&log, &r));
    let t = Instant::now();
    let (st, _) = Store::open(&log, opts()).unwrap();
    let open_with = t.elapsed().as_secs_f64();
    assert_eq!(st.state().last_seq as usize, events);
    std::mem::forget(st); // freeing the state is not part of being ready
    println!(
        "with a snapshot:    status REF {with:.3} s (median of 3, fresh process, peak RSS {} MiB); writer open {open_with:.3} s (target < 1 s)",
        rss_with / 1024
    );
    let aside = root.join("snapshots-aside");
    std::fs::rename(log.join(snapshots::DIR), &aside).unwrap();
    // Readers would write a snapshot after folding this much: keep them from doing so here.
    let (without, rss_without) = median3(|| {
        let x = status(&log, &r);
        let _ = std::fs::remove_dir_all(log.join(snapshots::DIR));
        x
    });
    println!(
        "without a snapshot: status REF {without:.3} s (median of 3, fresh process, peak RSS {} MiB)",
        rss_without / 1024
    );
}
