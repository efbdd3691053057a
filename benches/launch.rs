//! Launch overhead by DAG shape: for each shape, a generated databuild graph (one POSIX sh job
//! whose `config` answers MATERIALIZE inputs from a table and whose `exec` appends a line to a
//! file) and the equivalent Makefile, timed in the same run: cold `databuild build --jobs 2` vs
//! `make -j2`, then the no-op rebuild of each. Prints a table of medians (wall and the CPU time,
//! user + sys, of the child and everything it waited for); asserts nothing but that the right
//! number of jobs ran.
//!
//! Shapes: chain-1 (fixed cost), chain-100 (each node needs the previous), wide-200 (200
//! independent roots, all requested), lattice-20x10 and lattice-100x10 (as `schedule.rs`: job
//! (l, i) needs (l-1, i) and (l-1, i+1 mod W)), and color-votes-like (the shape of
//! `examples/color_votes`: reports for 27 days x 3 colors, each reading a 28-day aggregate and a
//! daily total, over 54 days of ingest; 351 jobs in four job labels).
//!
//! Run: `cargo bench --bench launch` (needs GNU make and awk on PATH).
//! `LAUNCH_BENCH_RUNS=N` sets the number of runs per shape (default 5; the median is shown).
//! `LAUNCH_BENCH_ONLY=SHAPE[,SHAPE]` runs only those shapes.
//! `LAUNCH_BENCH_EMIT=DIR` writes each shape's graph (DIR/SHAPE/db) and Makefile (DIR/SHAPE/make)
//! and exits without timing anything (to profile one by hand).

#![allow(unsafe_code)] // getrusage(2), to measure the children's CPU time

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// The job: `config REF...` looks each ref up in deps.txt (`REF DEP...` per line) with one awk;
/// `exec REF` appends REF to ledger.txt.
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

/// A DAG: nodes `LABEL/...` with their inputs, and the refs to request.
struct Dag {
    name: &'static str,
    nodes: Vec<(String, Vec<String>)>,
    targets: Vec<String>,
}

fn chain(name: &'static str, n: u32) -> Dag {
    let nodes = (0..n)
        .map(|i| {
            let deps = if i == 0 { vec![] } else { vec![format!("c/{}", i - 1)] };
            (format!("c/{i}"), deps)
        })
        .collect();
    Dag { name, nodes, targets: vec![format!("c/{}", n - 1)] }
}

fn wide(name: &'static str, n: u32) -> Dag {
    let nodes: Vec<(String, Vec<String>)> = (0..n).map(|i| (format!("w/{i}"), vec![])).collect();
    let targets = nodes.iter().map(|(r, _)| r.clone()).collect();
    Dag { name, nodes, targets }
}

fn lattice(name: &'static str, width: u32, layers: u32) -> Dag {
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
    Dag { name, nodes, targets }
}

/// The shape of `examples/color_votes` (without its QUERY input): ingest per (day, color);
/// an aggregate per (day, color) reading the color's last 28 days of ingest; a daily total per
/// day reading that day's ingest of every color; a report per (day, color) reading the aggregate
/// and the daily total. Reports are asked for the last 27 of 54 days.
fn color_votes(name: &'static str) -> Dag {
    const COLORS: [&str; 3] = ["red", "green", "blue"];
    const WINDOW: u32 = 28;
    const DAYS: u32 = 27;
    let first = WINDOW - 1;
    let mut nodes = Vec::new();
    for d in 0..first + DAYS {
        for c in COLORS {
            nodes.push((format!("in/{d}/{c}"), vec![]));
        }
    }
    let mut targets = Vec::new();
    for d in first..first + DAYS {
        nodes.push((format!("day/{d}"), COLORS.iter().map(|c| format!("in/{d}/{c}")).collect()));
        for c in COLORS {
            let window = (d + 1 - WINDOW..=d).map(|k| format!("in/{k}/{c}")).collect();
            nodes.push((format!("agg/{d}/{c}"), window));
            nodes.push((format!("rep/{d}/{c}"), vec![format!("agg/{d}/{c}"), format!("day/{d}")]));
            targets.push(format!("rep/{d}/{c}"));
        }
    }
    Dag { name, nodes, targets }
}

fn shapes() -> Vec<Dag> {
    vec![
        chain("chain-1", 1),
        chain("chain-100", 100),
        wide("wide-200", 200),
        lattice("lattice-20x10", 20, 10),
        color_votes("color-votes-like"),
        lattice("lattice-100x10", 100, 10),
    ]
}

fn target(r: &str) -> String {
    format!("out/{}", r.replace('/', "_"))
}

impl Dag {
    fn labels(&self) -> Vec<&str> {
        let mut l: Vec<&str> =
            self.nodes.iter().map(|(r, _)| r.split('/').next().unwrap()).collect();
        l.sort_unstable();
        l.dedup();
        l
    }

    /// databuild.toml, job.sh and deps.txt.
    fn write_graph(&self, dir: &Path) {
        let mut toml = String::new();
        for l in self.labels() {
            toml.push_str(&format!(
                "[[jobs]]\nlabel = \"{l}\"\nentrypoint = \"job.sh\"\npartition_patterns = ['{l}/.+']\n\n"
            ));
        }
        std::fs::write(dir.join("databuild.toml"), toml).unwrap();
        std::fs::write(dir.join("job.sh"), JOB).unwrap();
        std::fs::set_permissions(dir.join("job.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let mut deps = String::new();
        for (r, ins) in &self.nodes {
            deps.push_str(r);
            for i in ins {
                deps.push(' ');
                deps.push_str(i);
            }
            deps.push('\n');
        }
        std::fs::write(dir.join("deps.txt"), deps).unwrap();
    }

    /// A Makefile (and its out/ directory) whose recipes do what the job's `exec` does.
    fn write_make(&self, dir: &Path) {
        let mut m = String::from(".PHONY: all\nall:");
        for t in &self.targets {
            m.push(' ');
            m.push_str(&target(t));
        }
        m.push('\n');
        for (r, ins) in &self.nodes {
            m.push_str(&target(r));
            m.push(':');
            for i in ins {
                m.push(' ');
                m.push_str(&target(i));
            }
            m.push_str(&format!("\n\t@echo {r} >> ledger.txt && touch $@\n"));
        }
        std::fs::write(dir.join("Makefile"), m).unwrap();
        std::fs::create_dir_all(dir.join("out")).unwrap();
    }
}

/// User + sys CPU seconds of this process's waited-for children so far.
fn children_cpu() -> f64 {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the duration of the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs `cmd` to completion: (wall seconds, CPU seconds of it and what it waited for).
fn time(cmd: &mut Command) -> (f64, f64) {
    let cpu = children_cpu();
    let t = Instant::now();
    let out = cmd.output().expect("run");
    let wall = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    (wall, children_cpu() - cpu)
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p).map(|s| s.lines().count()).unwrap_or(0)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[derive(Default)]
struct Samples {
    make: Vec<(f64, f64)>,
    db: Vec<(f64, f64)>,
    make_noop: Vec<(f64, f64)>,
    db_noop: Vec<(f64, f64)>,
}

fn walls(v: &[(f64, f64)]) -> f64 {
    median(&v.iter().map(|s| s.0).collect::<Vec<_>>())
}

fn cpus(v: &[(f64, f64)]) -> f64 {
    median(&v.iter().map(|s| s.1).collect::<Vec<_>>())
}

fn run_once(bin: &str, dag: &Dag, s: &mut Samples) {
    // Fresh directories (and so a fresh log) each run: nothing cached but the page cache.
    let d = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let m = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    dag.write_graph(d.path());
    dag.write_make(m.path());
    let build = || {
        let mut c = Command::new(bin);
        c.arg("build")
            .arg("--jobs")
            .arg("2")
            .arg("-q")
            .args(&dag.targets)
            .current_dir(d.path())
            .env_remove("DATABUILD_LOG");
        c
    };
    let make = || {
        let mut c = Command::new("make");
        c.arg("-j2").arg("-s").arg("all").current_dir(m.path());
        c
    };
    let n = dag.nodes.len();
    s.make.push(time(&mut make()));
    s.db.push(time(&mut build()));
    assert_eq!(lines(&d.path().join("ledger.txt")), n, "{}: databuild ran every job", dag.name);
    assert_eq!(lines(&m.path().join("ledger.txt")), n, "{}: make ran every job", dag.name);
    s.make_noop.push(time(&mut make()));
    s.db_noop.push(time(&mut build()));
    assert_eq!(lines(&d.path().join("ledger.txt")), n, "{}: databuild no-op ran nothing", dag.name);
    assert_eq!(lines(&m.path().join("ledger.txt")), n, "{}: make no-op ran nothing", dag.name);
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("launch: run with `cargo bench --bench launch`");
        return;
    }
    let mut dags = shapes();
    if let Ok(only) = std::env::var("LAUNCH_BENCH_ONLY") {
        let only: Vec<&str> = only.split(',').collect();
        dags.retain(|d| only.contains(&d.name));
    }
    if let Some(dir) = std::env::var_os("LAUNCH_BENCH_EMIT") {
        for dag in &dags {
            let (db, mk) = (
                Path::new(&dir).join(dag.name).join("db"),
                Path::new(&dir).join(dag.name).join("make"),
            );
            std::fs::create_dir_all(&db).unwrap();
            std::fs::create_dir_all(&mk).unwrap();
            dag.write_graph(&db);
            dag.write_make(&mk);
            std::fs::write(db.join("targets.txt"), dag.targets.join("\n") + "\n").unwrap();
            println!("launch: wrote {}", Path::new(&dir).join(dag.name).display());
        }
        return;
    }
    for tool in ["make", "awk"] {
        if Command::new(tool).arg("--version").output().is_err() {
            println!("launch: {tool} not found; skipped");
            return;
        }
    }
    let runs: usize = std::env::var("LAUNCH_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5);
    let bin = env!("CARGO_BIN_EXE_databuild");
    let mut samples: Vec<Samples> = dags.iter().map(|_| Samples::default()).collect();
    let t = Instant::now();
    // Shapes interleave within each round, so a noisy moment does not land on one shape only.
    for _ in 0..runs {
        for (dag, s) in dags.iter().zip(&mut samples) {
            run_once(bin, dag, s);
        }
    }
    println!(
        "launch: median of {runs} runs, -j2, wall seconds (cpu = user+sys of the child and what it waited for)"
    );
    println!(
        "{:<17} {:>5} | {:>8} {:>10} {:>6} | {:>9} {:>10} {:>6} | {:>8} {:>8} {:>6} | {:>9} {:>9}",
        "shape",
        "jobs",
        "make s",
        "databuild",
        "ratio",
        "noop make",
        "noop db",
        "ratio",
        "cpu make",
        "cpu db",
        "ratio",
        "make/job",
        "db/job"
    );
    for (dag, s) in dags.iter().zip(&samples) {
        let n = dag.nodes.len();
        let (mk, db, mkn, dbn) =
            (walls(&s.make), walls(&s.db), walls(&s.make_noop), walls(&s.db_noop));
        let (cmk, cdb) = (cpus(&s.make), cpus(&s.db));
        println!(
            "{:<17} {:>5} | {:>8.3} {:>10.3} {:>5.2}x | {:>9.3} {:>10.3} {:>5.2}x | {:>8.3} {:>8.3} {:>5.2}x | {:>6.2} ms {:>6.2} ms",
            dag.name,
            n,
            mk,
            db,
            db / mk,
            mkn,
            dbn,
            dbn / mkn,
            cmk,
            cdb,
            cdb / cmk,
            mk * 1000.0 / n as f64,
            db * 1000.0 / n as f64,
        );
    }
    println!("launch: total {:.1} s", t.elapsed().as_secs_f64());
}
