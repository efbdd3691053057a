//! Scheduling overhead: a DAG of 1,000 trivial jobs (each `exec` appends one line to a file) run
//! by databuild and by `make -j2` on an equivalent generated Makefile, in the same run, with the
//! no-op rebuild of each. Prints wall times and ratios; asserts nothing.
//!
//! The DAG: 10 layers x 100; job (l, i) needs (l-1, i) and (l-1, i+1 mod 100).
//! databuild runs the real binary (`build --jobs 2`), with its shim, fdatasyncs and config calls.
//!
//! Run: `cargo bench --bench schedule` (needs GNU make on PATH).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const LAYERS: u32 = 10;
const WIDTH: u32 = 100;

const JOB: &str = r#"#!/bin/sh
# n/L/I needs n/(L-1)/I and n/(L-1)/((I+1) mod W) for L > 0.
W=100
if [ "$1" = config ]; then
  shift
  printf '{"configs":['
  sep=
  for r in "$@"; do
    l=${r#n/}; i=${l#*/}; l=${l%/*}
    if [ "$l" -gt 0 ]; then
      p=$((l-1)); j=$(((i+1)%W))
      inputs="{\"depType\":\"MATERIALIZE\",\"partitionRef\":{\"str\":\"n/$p/$i\"}},{\"depType\":\"MATERIALIZE\",\"partitionRef\":{\"str\":\"n/$p/$j\"}}"
    else
      inputs=
    fi
    printf '%s{"outputs":[{"str":"%s"}],"inputs":[%s],"args":["%s"]}' "$sep" "$r" "$inputs" "$r"
    sep=,
  done
  printf ']}\n'
  exit 0
fi
echo "$2" >> ledger.txt
"#;

fn makefile() -> String {
    let mut m = String::from(".PHONY: all\nall:");
    for i in 0..WIDTH {
        m.push_str(&format!(" out/{}_{i}", LAYERS - 1));
    }
    m.push('\n');
    for l in 0..LAYERS {
        for i in 0..WIDTH {
            let deps = if l == 0 {
                String::new()
            } else {
                format!("out/{}_{i} out/{}_{}", l - 1, l - 1, (i + 1) % WIDTH)
            };
            m.push_str(&format!(
                "out/{l}_{i}: {deps}\n\t@echo n/{l}/{i} >> ledger.txt && mkdir -p out && touch $@\n"
            ));
        }
    }
    m
}

fn time(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    t.elapsed().as_secs_f64()
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p).map(|s| s.lines().count()).unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("schedule: run with `cargo bench --bench schedule`");
        return;
    }
    if Command::new("make").arg("--version").output().is_err() {
        println!("schedule: GNU make not found; skipped");
        return;
    }
    let bin = env!("CARGO_BIN_EXE_databuild");
    let refs: Vec<String> = (0..WIDTH).map(|i| format!("n/{}/{i}", LAYERS - 1)).collect();
    let reps = 3;
    let (mut db, mut mk, mut db_noop, mut mk_noop) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        // Fresh directories each time: nothing cached but the page cache.
        let d = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        std::fs::write(d.path().join("databuild.toml"), "[[jobs]]\nlabel = \"n\"\nentrypoint = \"job.sh\"\npartition_patterns = ['n/\\d+/\\d+']\n").unwrap();
        std::fs::write(d.path().join("job.sh"), JOB).unwrap();
        std::fs::set_permissions(d.path().join("job.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let m = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        std::fs::write(m.path().join("Makefile"), makefile()).unwrap();

        let build = || {
            let mut c = Command::new(bin);
            c.arg("build").arg("--jobs").arg("2").arg("-q").args(&refs).current_dir(d.path());
            c
        };
        let make = || {
            let mut c = Command::new("make");
            c.arg("-j2").arg("-s").arg("all").current_dir(m.path());
            c
        };
        mk.push(time(&mut make()));
        db.push(time(&mut build()));
        assert_eq!(lines(&d.path().join("ledger.txt")), (LAYERS * WIDTH) as usize);
        assert_eq!(lines(&m.path().join("ledger.txt")), (LAYERS * WIDTH) as usize);
        mk_noop.push(time(&mut make()));
        db_noop.push(time(&mut build()));
        assert_eq!(
            lines(&d.path().join("ledger.txt")),
            (LAYERS * WIDTH) as usize,
            "no-op ran nothing"
        );
    }
    let (db, mk, dbn, mkn) = (median(db), median(mk), median(db_noop), median(mk_noop));
    println!(
        "schedule {} trivial jobs, -j2: databuild {db:.3} s, make {mk:.3} s, ratio {:.2}x (target <= 1.5x)",
        LAYERS * WIDTH,
        db / mk
    );
    println!(
        "no-op rebuild: databuild {dbn:.3} s, make {mkn:.3} s, ratio {:.2}x (target <= 1x)",
        dbn / mkn
    );
    println!(
        "per job: databuild {:.2} ms, make {:.2} ms (wall, 2 slots)",
        db * 1000.0 / 1000.0,
        mk * 1000.0 / 1000.0
    );
}
