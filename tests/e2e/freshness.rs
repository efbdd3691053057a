//! CONTRACT §13, missing outputs: with `output_path`, exit 0 without the data fails the run, and
//! a needed AVAILABLE partition whose data is gone is built again, saying why.

use crate::util::*;

fn with_output_path(path: &str) -> Env {
    let e = Env::generic(&[("raw", r"raw/(?P<n>\d+)"), ("sum", r"sum/(?P<n>\d+)")]);
    let toml = e.read("databuild.toml").replace(
        "partition_patterns = ['raw/(?P<n>\\d+)']\n",
        &format!("partition_patterns = ['raw/(?P<n>\\d+)']\noutput_path = \"{path}\"\n"),
    );
    e.write("databuild.toml", &toml);
    e
}

#[test]
fn exit_0_without_the_output_fails_the_run() {
    let e = with_output_path("data/raw/{n}.missing");
    e.dep("sum/1", "MATERIALIZE", "raw/1");
    let out = e.run(&["build", "sum/1"]);
    out.code(1);
    let evs = events(&e);
    let failed = events_of(&evs, "jobEvent", Some("JOB_FAILED"));
    assert_eq!(failed.len(), 1, "{}", out.stderr);
    let j = &failed[0]["event"]["jobEvent"];
    assert_eq!(j["failure"], "JOB_FAILURE_OUTPUT_MISSING", "{j}");
    assert_eq!(j["message"], "output missing: data/raw/1.missing", "{j}");
    assert_eq!(e.ledger(), ["raw/1"], "sum/1 never ran: its input is not AVAILABLE");
}

#[test]
fn a_needed_partition_whose_data_is_gone_is_built_again() {
    // The generic job writes data/<ref>.
    let e = with_output_path("data/{ref}");
    e.dep("sum/1", "MATERIALIZE", "raw/1");
    e.run(&["build", "sum/1"]).ok();
    assert_eq!(e.ledger(), ["raw/1", "sum/1"]);
    // Present: nothing runs.
    e.run(&["build", "sum/1", "raw/1"]).ok();
    assert_eq!(e.ledger().len(), 2);
    // Gone: the dry run and the build say so, and only it is built again.
    std::fs::remove_file(e.path().join("data/raw/1")).unwrap();
    let dry = e.run(&["analyze", "raw/1"]);
    dry.ok();
    assert!(dry.stderr.contains("output missing: data/raw/1"), "{}", dry.stderr);
    let out = e.run(&["build", "raw/1"]);
    out.ok();
    assert!(out.stderr.contains("output missing: data/raw/1"), "{}", out.stderr);
    assert_eq!(e.ledger(), ["raw/1", "sum/1", "raw/1"]);
    assert!(e.exists("data/raw/1"));
}

#[test]
fn output_path_mistakes_are_graph_file_errors() {
    for (path, says) in [
        ("data/{day}.json", "{day}"),
        ("/abs/{ref}", "relative"),
        ("../out/{ref}", "relative"),
        ("data/fixed.json", "names no partition"),
    ] {
        let e = with_output_path(path);
        let out = e.run(&["build", "raw/1"]);
        out.code(2);
        let line = out.error_line();
        assert!(line.contains("output_path") && line.contains(says), "{path}: {line}");
        assert!(!e.exists("ledger.txt"));
    }
}

/// raw/N <- sum/N <- top/N (MATERIALIZE), generic jobs, `version` set on `raw` when given.
fn chain(raw_version: Option<&str>) -> Env {
    let e = Env::generic(&[
        ("raw", r"raw/(?P<n>\d+)"),
        ("sum", r"sum/(?P<n>\d+)"),
        ("top", r"top/(?P<n>\d+)"),
    ]);
    if let Some(v) = raw_version {
        set_version(&e, "raw", v);
    }
    e.dep("sum/1", "MATERIALIZE", "raw/1");
    e.dep("top/1", "MATERIALIZE", "sum/1");
    e
}

/// Sets (or replaces) job `label`'s `version` line in the graph file.
fn set_version(e: &Env, label: &str, v: &str) {
    let mut out = String::new();
    let mut in_job = false;
    for l in e.read("databuild.toml").lines() {
        if l.starts_with("label = ") {
            in_job = l == format!("label = \"{label}\"");
        }
        if in_job && l.starts_with("version = ") {
            continue;
        }
        out.push_str(l);
        out.push('\n');
        if in_job && l.starts_with("label = ") {
            out.push_str(&format!("version = \"{v}\"\n"));
        }
    }
    e.write("databuild.toml", &out);
}

/// `status REF --format json` as (stale, reasons).
fn stale_of(e: &Env, r: &str, at: Option<&str>) -> (bool, Vec<String>) {
    let mut args = vec!["status", r, "--format", "json"];
    if let Some(at) = at {
        args.extend(["--at", at]);
    }
    let rows = e.run(&args).ok().json_lines();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let reasons = rows[0]["staleReasons"]
        .as_array()
        .map(|v| v.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    (rows[0]["stale"] == true, reasons)
}

fn last_seq(e: &Env) -> u64 {
    events(e).last().and_then(|v| v["seq"].as_u64()).unwrap()
}

#[test]
fn the_version_is_recorded_with_each_run_and_checked_in_the_graph_file() {
    let e = chain(Some("1"));
    e.run(&["build", "sum/1"]).ok();
    let evs = events(&e);
    let scheduled = events_of(&evs, "jobEvent", Some("JOB_SCHEDULED"));
    let version = |label: &str| {
        scheduled
            .iter()
            .find(|v| v["event"]["jobEvent"]["jobLabel"]["label"] == label)
            .map(|v| v["event"]["jobEvent"]["version"].clone())
            .unwrap()
    };
    assert_eq!(version("raw"), "1");
    assert_eq!(version("sum"), "", "a job without a version records none");
    for (bad, says) in
        [("version = \"\"", "empty"), ("version = \"a b\"", "spaces"), ("version = 1.5", "string")]
    {
        let g = chain(None);
        let toml = g.read("databuild.toml").replacen(
            "label = \"raw\"\n",
            &format!("label = \"raw\"\n{bad}\n"),
            1,
        );
        g.write("databuild.toml", &toml);
        let out = g.run(&["build", "raw/1"]);
        out.code(2);
        let line = out.error_line();
        assert!(
            line.contains("version") && line.contains(says) && line.contains("raw"),
            "{bad}: {line}"
        );
    }
    // A whole number is read as its digits.
    let g = chain(None);
    let toml =
        g.read("databuild.toml").replacen("label = \"raw\"\n", "label = \"raw\"\nversion = 3\n", 1);
    g.write("databuild.toml", &toml);
    g.run(&["build", "raw/1"]).ok();
}

#[test]
fn a_version_change_makes_what_the_job_built_stale_downstream_too() {
    let e = chain(Some("1"));
    e.run(&["build", "top/1"]).ok();
    assert_eq!(stale_of(&e, "top/1", None), (false, vec![]));
    set_version(&e, "raw", "2");
    // Seen from the graph file before anything records it.
    assert_eq!(stale_of(&e, "raw/1", None), (true, vec!["job version 1 -> 2".to_string()]));
    assert_eq!(stale_of(&e, "sum/1", None), (true, vec!["upstream raw/1 is stale".to_string()]));
    assert_eq!(stale_of(&e, "top/1", None), (true, vec!["upstream sum/1 is stale".to_string()]));
    let text = e.run(&["status", "sum/1"]).ok().stdout.clone();
    assert!(text.contains("STALE") && text.contains("upstream raw/1 is stale"), "{text}");
    // A build skips them, says so, and records the new version.
    let out = e.run(&["build", "top/1"]);
    out.ok();
    assert!(
        out.stderr.contains("note: skipped 1 stale partitions (--stale rebuilds them)"),
        "{}",
        out.stderr
    );
    assert_eq!(e.ledger(), ["raw/1", "sum/1", "top/1"]);
    // A skip of raw/1 records raw's new version: now the log alone says so (what `--at`
    // reads), and explain gives the seq.
    e.run(&["build", "raw/1"]).ok();
    assert_eq!(e.ledger().len(), 3);
    let recorded = last_seq(&e);
    assert_eq!(
        stale_of(&e, "raw/1", Some(&recorded.to_string())),
        (true, vec!["job version 1 -> 2".to_string()])
    );
    let ex = e.run(&["explain", "raw/1", "--format", "json"]).ok().json_lines();
    assert_eq!(ex[0]["stale"], true);
    let seq = ex[0]["staleReasonSeqs"][0].as_u64().unwrap();
    assert!(seq > 0 && seq <= recorded, "{:?}", ex[0]);
    // --stale rebuilds all three, upstream first, each once; then nothing is stale.
    let out = e.run(&["build", "top/1", "--stale"]);
    out.ok();
    assert_eq!(e.ledger(), ["raw/1", "sum/1", "top/1", "raw/1", "sum/1", "top/1"]);
    for r in ["raw/1", "sum/1", "top/1"] {
        assert_eq!(stale_of(&e, r, None), (false, vec![]), "{r}");
    }
    // The past is unchanged.
    assert!(stale_of(&e, "top/1", Some(&recorded.to_string())).0);
}

#[test]
fn a_forced_rebuild_of_an_input_makes_its_readers_stale() {
    let e = chain(None);
    e.run(&["build", "top/1"]).ok();
    e.run(&["build", "raw/1", "--force"]).ok();
    let avail = events_of(&events(&e), "partitionEvent", Some("PARTITION_AVAILABLE"))
        .into_iter()
        .filter(|v| v["event"]["partitionEvent"]["partitionRef"]["str"] == "raw/1")
        .map(|v| v["seq"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(
        stale_of(&e, "sum/1", None),
        (true, vec![format!("input raw/1 rebuilt at seq {avail}")])
    );
    assert_eq!(stale_of(&e, "top/1", None), (true, vec!["upstream sum/1 is stale".to_string()]));
    assert_eq!(stale_of(&e, "raw/1", None), (false, vec![]));
    let text = e.run(&["explain", "sum/1"]).ok().stdout.clone();
    assert!(text.contains(&format!("input raw/1 rebuilt at seq {avail} (seq {avail})")), "{text}");
    // Only sum/1 and top/1 are built again.
    e.run(&["build", "top/1", "--stale"]).ok();
    assert_eq!(e.ledger(), ["raw/1", "sum/1", "top/1", "raw/1", "sum/1", "top/1"]);
    assert_eq!(stale_of(&e, "top/1", None), (false, vec![]));
}

#[test]
fn a_tainted_partition_is_built_again_and_its_readers_are_stale() {
    let e = chain(None);
    e.run(&["build", "top/1"]).ok();
    // Nothing AVAILABLE matches: bad input, nothing written.
    let before = events(&e).len();
    let out = e.run(&["taint", "nope/*"]);
    out.code(2);
    assert!(out.error_line().contains("no AVAILABLE partition"), "{}", out.stderr);
    assert_eq!(events(&e).len(), before);
    let out = e.run(&["taint", "raw/*", "--reason", "bad rows"]);
    out.ok();
    assert!(out.stdout.contains("tainted raw/1"), "{}", out.stdout);
    let evs = events(&e);
    let t = events_of(&evs, "partitionEvent", Some("PARTITION_TAINTED"));
    assert_eq!(t.len(), 1);
    assert_eq!(t[0]["event"]["partitionEvent"]["message"], "bad rows");
    let taint_seq = t[0]["seq"].as_u64().unwrap();
    let rows = e.run(&["status", "raw/1", "--format", "json"]).ok().json_lines();
    assert_eq!(rows[0]["status"], "PARTITION_TAINTED");
    assert_eq!(rows[0]["seq"], taint_seq);
    assert_eq!(stale_of(&e, "sum/1", None), (true, vec!["upstream raw/1 is tainted".to_string()]));
    assert_eq!(stale_of(&e, "top/1", None), (true, vec!["upstream sum/1 is stale".to_string()]));
    let ex = e.run(&["explain", "raw/1", "--format", "json"]).ok().json_lines();
    assert_eq!(ex[0]["reason"], "tainted");
    assert_eq!(ex[0]["seq"], taint_seq);
    assert!(ex[0]["message"].as_str().unwrap().contains("bad rows"), "{:?}", ex[0]);
    let lin = e.run(&["lineage", "sum/1", "--format", "json"]).ok().json_lines();
    assert_eq!(lin[0]["inputs"][0]["taintedAtSeq"], taint_seq, "{:?}", lin[0]);
    assert!(e.run(&["lineage", "sum/1"]).ok().stdout.contains("TAINTED at seq"));
    // Tainting it again: it is not AVAILABLE any more.
    e.run(&["taint", "raw/1"]).code(2);
    // sum/1 is AVAILABLE (stale): a build of it needs nothing, and says so.
    let out = e.run(&["build", "sum/1"]);
    out.ok();
    assert!(out.stderr.contains("note: skipped 1 stale partitions"), "{}", out.stderr);
    assert_eq!(e.ledger().len(), 3);
    // The next build that needs raw/1 builds it again; --stale then rebuilds the rest.
    e.run(&["build", "raw/1"]).ok();
    assert_eq!(e.ledger(), ["raw/1", "sum/1", "top/1", "raw/1"]);
    assert_eq!(stale_of(&e, "raw/1", None), (false, vec![]));
    assert!(stale_of(&e, "sum/1", None).1[0].starts_with("input raw/1 rebuilt at seq "));
    e.run(&["build", "top/1", "--stale"]).ok();
    assert_eq!(e.ledger(), ["raw/1", "sum/1", "top/1", "raw/1", "sum/1", "top/1"]);
    e.run(&["verify"]).ok();
}

#[test]
fn taint_downstream_follows_lineage_and_prints_each_partition() {
    let e = chain(None);
    e.run(&["build", "top/1"]).ok();
    let out = e.run(&["taint", "raw/1", "--downstream", "--format", "json"]);
    out.ok();
    let got: Vec<String> =
        out.json_lines().iter().map(|v| v["partitionRef"].as_str().unwrap().to_string()).collect();
    assert_eq!(got, ["raw/1", "sum/1", "top/1"]);
    for r in ["raw/1", "sum/1", "top/1"] {
        let rows = e.run(&["status", r, "--format", "json"]).ok().json_lines();
        assert_eq!(rows[0]["status"], "PARTITION_TAINTED", "{r}");
    }
    // A build of the top rebuilds the whole chain, each once.
    e.run(&["build", "top/1"]).ok();
    assert_eq!(e.ledger(), ["raw/1", "sum/1", "top/1", "raw/1", "sum/1", "top/1"]);
    for r in ["raw/1", "sum/1", "top/1"] {
        assert_eq!(stale_of(&e, r, None), (false, vec![]), "{r}");
    }
}

mod props {
    //! Property: after any sequence of builds, forced rebuilds, version bumps, taints and
    //! deleted outputs, `build --stale` of everything runs exactly what is needed (what is not
    //! AVAILABLE, stale, or missing its data, and everything built from those), each once, and
    //! leaves nothing stale, tainted or missing.

    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Build(Vec<usize>, bool),
        Bump(usize),
        Taint(usize, bool),
        Delete(usize),
    }

    const JOBS: usize = 3;

    fn name(i: usize) -> String {
        format!("j{}/{i}", i % JOBS)
    }

    fn case() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<Op>)> {
        (3usize..7).prop_flat_map(|n| {
            let deps = (0..n)
                .map(|i| {
                    proptest::collection::btree_set(0..i.max(1), 0..=i.min(2))
                        .prop_map(move |s| s.into_iter().filter(|j| *j < i).collect::<Vec<_>>())
                })
                .collect::<Vec<_>>();
            let op = prop_oneof![
                3 => (proptest::collection::vec(0..n, 1..=2), proptest::bool::weighted(0.3))
                    .prop_map(|(r, f)| Op::Build(r, f)),
                1 => (0..JOBS).prop_map(Op::Bump),
                1 => (0..n, proptest::bool::ANY).prop_map(|(i, d)| Op::Taint(i, d)),
                1 => (0..n).prop_map(Op::Delete),
            ];
            (deps, proptest::collection::vec(op, 1..=6))
        })
    }

    fn env(deps: &[Vec<usize>]) -> Env {
        let jobs: Vec<(String, String)> =
            (0..JOBS).map(|k| (format!("j{k}"), format!(r"j{k}/\d+"))).collect();
        let refs: Vec<(&str, &str)> = jobs.iter().map(|(l, p)| (l.as_str(), p.as_str())).collect();
        let e = Env::generic(&refs);
        let toml = e
            .read("databuild.toml")
            .replace("partition_patterns", "output_path = \"data/{ref}\"\npartition_patterns");
        e.write("databuild.toml", &toml);
        for k in 0..JOBS {
            set_version(&e, &format!("j{k}"), "0");
        }
        for (i, ds) in deps.iter().enumerate() {
            for d in ds {
                e.dep(&name(i), "MATERIALIZE", &name(*d));
            }
        }
        e
    }

    fn run_case(deps: &[Vec<usize>], ops: &[Op]) -> Result<(), TestCaseError> {
        let e = env(deps);
        let n = deps.len();
        let mut versions = [0u32; JOBS];
        for op in ops {
            match op {
                Op::Build(refs, force) => {
                    let mut args: Vec<String> = vec!["build".into()];
                    args.extend(refs.iter().map(|i| name(*i)));
                    if *force {
                        args.push("--force".into());
                    }
                    let a: Vec<&str> = args.iter().map(String::as_str).collect();
                    let out = e.run(&a);
                    prop_assert_eq!(out.code, 0, "{:?}: {}", op, out.stderr);
                }
                Op::Bump(k) => {
                    versions[*k] += 1;
                    set_version(&e, &format!("j{k}"), &versions[*k].to_string());
                }
                Op::Taint(i, down) => {
                    let r = name(*i);
                    let mut a = vec!["taint", r.as_str()];
                    if *down {
                        a.push("--downstream");
                    }
                    let out = e.run(&a);
                    prop_assert!(out.code == 0 || out.code == 2, "{:?}: {}", op, out.stderr);
                }
                Op::Delete(i) => {
                    let _ = std::fs::remove_file(e.path().join("data").join(name(*i)));
                }
            }
        }
        // What must run: not AVAILABLE, stale or missing, and everything built from those.
        let all: Vec<String> = (0..n).map(name).collect();
        let mut args = vec!["status".to_string()];
        args.extend(all.iter().cloned());
        args.extend(["--format".into(), "json".into()]);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let rows = e.run(&a).ok().json_lines();
        let mut need: BTreeSet<usize> = (0..n)
            .filter(|i| {
                let r = &rows[*i];
                r["status"] != "PARTITION_AVAILABLE"
                    || r["stale"] == true
                    || !e.exists(&format!("data/{}", name(*i)))
            })
            .collect();
        // Dependencies have smaller indexes: one pass in order reaches the whole closure.
        for (i, ds) in deps.iter().enumerate() {
            if ds.iter().any(|d| need.contains(d)) {
                need.insert(i);
            }
        }
        let before = e.ledger().len();
        let mut args = vec!["build".to_string()];
        args.extend(all.iter().cloned());
        args.push("--stale".into());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = e.run(&a);
        prop_assert_eq!(out.code, 0, "{}", out.stderr);
        let ran: Vec<String> = e.ledger()[before..].to_vec();
        let once: BTreeSet<&String> = ran.iter().collect();
        prop_assert_eq!(once.len(), ran.len(), "each job once: {:?}", ran);
        let expected: BTreeSet<String> = need.iter().map(|i| name(*i)).collect();
        let got: BTreeSet<String> = ran.iter().cloned().collect();
        prop_assert_eq!(got, expected, "what ran is what was needed\n{}", out.stderr);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut st = vec!["status"];
        st.extend(a[1..a.len() - 1].iter());
        st.extend(["--format", "json"]);
        for r in e.run(&st).ok().json_lines() {
            prop_assert_eq!(&r["status"], "PARTITION_AVAILABLE", "{}", r);
            prop_assert_eq!(&r["stale"], false, "{}", r);
            let p = r["partitionRef"].as_str().unwrap_or_default();
            prop_assert!(e.exists(&format!("data/{p}")), "{} is missing", p);
        }
        // And a second one has nothing to do.
        e.run(&a).ok();
        prop_assert_eq!(e.ledger().len(), before + ran.len(), "nothing left to rebuild");
        Ok(())
    }

    proptest! {
        // Each case runs the real binary a dozen times: a few dozen cases cover the shapes.
        #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn build_stale_of_everything_leaves_nothing_stale_tainted_or_missing(
            (deps, ops) in case()
        ) {
            run_case(&deps, &ops)?;
        }
    }
}
