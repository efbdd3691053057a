//! Durable append and open benchmarks for databuild-log, with the raw floor measured in the same
//! run. Prints figures; asserts nothing.
//!
//! - floor: `pwrite` + `fdatasync` of one ~200 B frame at a time on a growing file, same FS;
//! - durable append, 1 appender: `Writer::append` of one ~200 B record per batch (Full);
//! - durable append, 64 appenders: 64 threads through group commit;
//! - open + recovery scan of a 1 GiB log, warm, in a fresh process, with its peak RSS.
//!
//! Run: `cargo bench -p databuild-log --bench append` (env `BENCH_QUICK=1` for a short run).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use databuild_log::{Batch, Durability, ReadMode, Writer, WriterOptions};

const RECORD_BYTES: usize = 200;

fn quick() -> bool {
    std::env::var_os("BENCH_QUICK").is_some()
}

fn bench_dir(name: &str) -> PathBuf {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("databuild-log-bench");
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn record(i: u64) -> Vec<u8> {
    let mut r = format!("job-run-{i:016x}/").into_bytes();
    r.resize(RECORD_BYTES, b'x');
    r
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let fs = std::fs::read_to_string("/proc/mounts")
        .ok()
        .and_then(|m| {
            m.lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() > 3 && dir.starts_with(f[1]))
                        .then(|| (f[1].len(), format!("{} on {} ({})", f[2], f[1], f[3])))
                })
                .max()
                .map(|(_, s)| s)
        })
        .unwrap_or_default();
    println!("machine: {cpu}, {cores} cores, kernel {}, fs {fs}", kernel.trim());
}

/// The floor: one frame-sized pwrite and one fdatasync at a time on a growing file.
fn floor(n: usize) -> (f64, Vec<Duration>) {
    let dir = bench_dir("floor");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join("raw"))
        .unwrap();
    let frame = vec![7u8; RECORD_BYTES + 40];
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        f.write_all_at(&frame, (i * frame.len()) as u64).unwrap();
        f.sync_data().unwrap();
        lat.push(t.elapsed());
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    (rate, lat)
}

fn opts() -> WriterOptions {
    WriterOptions { durability: Durability::Full, ..WriterOptions::default() }
}

fn one_appender(n: usize) -> (f64, Vec<Duration>) {
    let dir = bench_dir("one");
    let (w, _) = Writer::open(&dir, opts()).unwrap();
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let mut b = Batch::new();
        b.push(&record(i as u64));
        let t = Instant::now();
        w.append(b).unwrap();
        lat.push(t.elapsed());
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    w.close().unwrap();
    lat.sort();
    (rate, lat)
}

fn many_appenders(threads: usize, per_thread: usize) -> (f64, Vec<Duration>, f64) {
    let dir = bench_dir("many");
    let (w, _) = Writer::open(&dir, opts()).unwrap();
    let w = Arc::new(w);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let w = w.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(per_thread);
                barrier.wait();
                for i in 0..per_thread {
                    let mut b = Batch::new();
                    b.push(&record((t * per_thread + i) as u64));
                    let s = Instant::now();
                    w.append(b).unwrap();
                    lat.push(s.elapsed());
                }
                lat
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut lat: Vec<Duration> = Vec::new();
    for h in handles {
        lat.extend(h.join().unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let w = Arc::try_unwrap(w).unwrap();
    let stats = w.stats();
    w.close().unwrap();
    lat.sort();
    let total = (threads * per_thread) as f64;
    (total / elapsed, lat, stats.frames as f64 / stats.groups.max(1) as f64)
}

/// Writes a log of about `bytes` (4 records of ~200 B per batch, fsync off: this is the fixture,
/// not the measurement).
fn build_big_log(dir: &Path, bytes: u64) -> (u64, u64) {
    let o = WriterOptions {
        durability: Durability::None,
        checkpoint_interval: None,
        ..WriterOptions::default()
    };
    let (w, _) = Writer::open(dir, o).unwrap();
    let per_batch = 4;
    let batch_bytes = (RECORD_BYTES + 2) * per_batch + 32;
    let batches = bytes / batch_bytes as u64;
    let mut pending = Vec::new();
    for i in 0..batches {
        let mut b = Batch::with_capacity(batch_bytes);
        for k in 0..per_batch {
            b.push(&record(i * per_batch as u64 + k as u64));
        }
        pending.push(w.submit(b).unwrap());
        if pending.len() >= 256 {
            for t in pending.drain(..) {
                t.wait().unwrap();
            }
        }
    }
    for t in pending {
        t.wait().unwrap();
    }
    let records = w.next_seq() - 1;
    w.close().unwrap();
    (batches, records)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Child mode: open the log once as a writer (full recovery scan) and print time and peak RSS.
fn open_child(dir: &Path) {
    let t = Instant::now();
    let (w, report) =
        Writer::open(dir, WriterOptions { read_mode: ReadMode::Mmap, ..opts() }).unwrap();
    let elapsed = t.elapsed();
    let rss = peak_rss_kib();
    drop(w);
    println!("{} {} {} {}", elapsed.as_secs_f64(), rss, report.next_seq - 1, report.segments);
}

fn open_in_child(dir: &Path) -> (f64, u64, u64, u64) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("DATABUILD_BENCH_OPEN_CHILD", dir)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(f.len(), 4, "child said: {s} {}", String::from_utf8_lossy(&out.stderr));
    (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].parse().unwrap())
}

fn main() {
    if let Some(dir) = std::env::var_os("DATABUILD_BENCH_OPEN_CHILD") {
        open_child(Path::new(&dir));
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run tiny then.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let q = quick() || smoke;
    machine();
    let n = if q { 200 } else { 3000 };

    // Interleave floor and appender runs so that the disk's mood affects both alike.
    let mut floor_rates = Vec::new();
    let mut one_rates = Vec::new();
    let mut floor_lat = Vec::new();
    let mut one_lat = Vec::new();
    for _ in 0..3 {
        let (r, l) = floor(n);
        floor_rates.push(r);
        floor_lat = l;
        let (r, l) = one_appender(n);
        one_rates.push(r);
        one_lat = l;
    }
    floor_rates.sort_by(f64::total_cmp);
    one_rates.sort_by(f64::total_cmp);
    let (fr, or) = (floor_rates[1], one_rates[1]);
    println!(
        "floor  pwrite+fdatasync 240 B : {fr:>9.0} ops/s   p50 {:>6.1} us  p99 {:>6.1} us   (median of 3 x {n})",
        us(percentile(&floor_lat, 50.0)),
        us(percentile(&floor_lat, 99.0))
    );
    println!(
        "append 1 appender, Full      : {or:>9.0} ev/s    p50 {:>6.1} us  p99 {:>6.1} us   floor/append time ratio {:.2}x (target <= 1.5x)",
        us(percentile(&one_lat, 50.0)),
        us(percentile(&one_lat, 99.0)),
        fr / or
    );

    let per = if q { 50 } else { 600 };
    let mut best = (0.0, Vec::new(), 0.0);
    let mut rates = Vec::new();
    for _ in 0..3 {
        let r = many_appenders(64, per);
        rates.push(r.0);
        best = r;
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "append 64 appenders, Full    : {:>9.0} ev/s    p50 {:>6.1} us  p99 {:>6.1} us   {:.1} batches/fsync (median of 3 x {}; target >= 100k ev/s)",
        rates[1],
        us(percentile(&best.1, 50.0)),
        us(percentile(&best.1, 99.0)),
        best.2,
        64 * per
    );
    println!(
        "  ceiling at this disk's fsync rate: floor ops/s x batches/fsync = {:.0} ev/s",
        fr * best.2
    );

    let gib: u64 = if q { 64 << 20 } else { 1 << 30 };
    let dir = bench_dir("big");
    let t = Instant::now();
    let (batches, records) = build_big_log(&dir, gib);
    println!(
        "fixture: {:.0} MiB log, {records} records in {batches} frames, written in {:.1} s (fsync off)",
        gib as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    let mut opens = Vec::new();
    let mut last = (0.0, 0, 0, 0);
    for _ in 0..4 {
        last = open_in_child(&dir);
        opens.push(last.0);
    }
    // The first open warms the page cache; report the median of the warm ones.
    let mut warm = opens[1..].to_vec();
    warm.sort_by(f64::total_cmp);
    println!(
        "open + recovery scan         : {:>9.3} s warm (cold-ish first: {:.3} s), {} records, {} segments, peak RSS {} MiB (target < 1 s, RSS not proportional to the log)",
        warm[warm.len() / 2],
        opens[0],
        last.2,
        last.3,
        last.1 / 1024
    );
    let _ = std::fs::remove_dir_all(&dir);
}
