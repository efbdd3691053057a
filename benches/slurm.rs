//! Per-run overhead on Slurm: 50 trivial jobs (`exec` does nothing) built by databuild with
//! `[executor] kind = "slurm"`, against a baseline in the same run: the same 50 trivial jobs
//! submitted straight to Slurm as 50 concurrent `sbatch --wait` (what a shell script would do).
//! Prints both wall times, their ratio (target: at most 1.2), and Slurm's own scheduling delay
//! (submit to start of the baseline's jobs: the share of the wall time that is Slurm's).
//!
//! Run: `cargo bench --bench slurm` (needs a Slurm node: `.ci/slurm-up.sh` as root; without one
//! it prints why and exits 0). `SLURM_BENCH_JOBS=N` (default 50), `SLURM_BENCH_RUNS=N` (default
//! 1; the median is shown).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const JOB: &str = r#"#!/bin/sh
if [ "$1" = config ]; then
  shift
  printf '{"configs":['
  sep=
  for r in "$@"; do printf '%s{"outputs":[{"str":"%s"}],"args":["%s"]}' "$sep" "$r" "$r"; sep=,; done
  printf ']}\n'
  exit 0
fi
echo "$2" >> ledger.txt
"#;

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

fn slurm_up() -> bool {
    Command::new("sinfo").args(["-h", "-o", "%t"]).output().is_ok_and(|o| {
        o.status.success()
            && String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| ["idle", "mix", "alloc"].contains(&l.trim()))
    })
}

/// `n` concurrent `sbatch --wait` of a trivial job; (wall, first submit->start, mean submit->start).
fn baseline(n: usize) -> (Duration, f64, f64) {
    let d = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let t0 = Instant::now();
    let submitted = unix_now();
    let children: Vec<_> = (0..n)
        .map(|i| {
            Command::new("sbatch")
                .args(["--wait", "--quiet", "--no-requeue", "-J", &format!("bench-baseline-{i}")])
                .arg(format!("--chdir={}", d.path().display()))
                .arg("--output=/dev/null")
                .arg(format!("--wrap=date +%s.%N > start-{i}; echo {i} >> ledger.txt"))
                .stdout(Stdio::null())
                .spawn()
                .expect("sbatch")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "sbatch --wait failed");
    }
    let wall = t0.elapsed();
    let starts: Vec<f64> = (0..n)
        .filter_map(|i| std::fs::read_to_string(d.path().join(format!("start-{i}"))).ok())
        .filter_map(|s| s.trim().parse::<f64>().ok())
        .map(|s| s - submitted)
        .collect();
    assert_eq!(starts.len(), n, "every baseline job ran");
    let first = starts.iter().copied().fold(f64::INFINITY, f64::min);
    (wall, first, starts.iter().sum::<f64>() / n as f64)
}

/// databuild builds `n` trivial jobs on Slurm; its wall time.
fn databuild(n: usize) -> Duration {
    let d = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let job = d.path().join("job.sh");
    std::fs::write(&job, JOB).unwrap();
    std::fs::set_permissions(&job, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        d.path().join("databuild.toml"),
        "[executor]\nkind = \"slurm\"\n\n[[jobs]]\nlabel = \"t\"\nentrypoint = \"job.sh\"\npartition_patterns = ['t/\\d+']\n",
    )
    .unwrap();
    let t0 = Instant::now();
    let st = Command::new(env!("CARGO_BIN_EXE_databuild"))
        .args(["build", "-q", "--jobs", &n.to_string(), &format!("t/{{1..{n}}}")])
        .current_dir(d.path())
        .env_remove("DATABUILD_LOG")
        .status()
        .unwrap();
    let wall = t0.elapsed();
    assert!(st.success(), "databuild build failed");
    let ran = std::fs::read_to_string(d.path().join("ledger.txt")).unwrap_or_default();
    assert_eq!(ran.lines().count(), n, "databuild ran every job");
    wall
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("slurm: run with `cargo bench --bench slurm`");
        return;
    }
    if !slurm_up() {
        println!("slurm: skipped: no Slurm node answers `sinfo` (run .ci/slurm-up.sh as root)");
        return;
    }
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (n, runs) = (env("SLURM_BENCH_JOBS", 50), env("SLURM_BENCH_RUNS", 1).max(1));
    let (mut base, mut db, mut first, mut mean) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let (w, f, m) = baseline(n);
        base.push(w.as_secs_f64());
        first.push(f);
        mean.push(m);
        db.push(databuild(n).as_secs_f64());
    }
    let (b, d) = (median(base), median(db));
    println!("slurm: {n} trivial jobs, {runs} run(s), medians");
    println!(
        "  baseline  {n} x `sbatch --wait` at once   {b:>7.2} s  ({:.2} jobs/s)",
        n as f64 / b
    );
    println!(
        "  databuild build, kind = \"slurm\"          {d:>7.2} s  ({:.2} jobs/s)",
        n as f64 / d
    );
    println!("  ratio databuild / baseline              {:>7.2}  (target <= 1.20)", d / b);
    println!(
        "  Slurm's own delay (baseline): first job submit->start {:.2} s; mean submit->start {:.2} s ({:.0}% of the baseline's wall)",
        median(first),
        median(mean.clone()),
        100.0 * median(mean) / b
    );
    println!(
        "  databuild's own overhead: {:.2} s in all, {:.0} ms per job",
        d - b,
        1000.0 * (d - b) / n as f64
    );
}
