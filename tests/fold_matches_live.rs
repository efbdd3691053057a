//! Property: the live engine's state is the fold of its log. Random DAGs of jobs (some failing,
//! some inputs QUERY only, sometimes with a retry) are built by random requests (some forced, some
//! followed by a taint) through the real engine and real job processes, so runs record versions
//! and instances go stale and tainted; after every build and taint, the state the engine holds
//! must equal a fresh fold of the log from disk, and after the last, a state loaded from a
//! snapshot of it plus nothing must equal it too.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use databuild::engine::{BuildSpec, Engine, Quiet, Settings, with_ends};
use databuild::executor::local::Local;
use databuild::graph::Graph;
use databuild::state::State;
use databuild::store::{self, Store, StoreOptions, snapshots};
use databuild_log::{ReadOptions, Reader};
use proptest::prelude::*;

/// A random graph: partition `p/i` reads some `p/j` with `j < i`, each as (j, materialize).
#[derive(Clone, Debug)]
struct Dag {
    deps: Vec<Vec<(usize, bool)>>,
    failing: Vec<bool>,
    retries: u32,
}

fn dag() -> impl Strategy<Value = Dag> {
    (3usize..9).prop_flat_map(|n| {
        let deps = (0..n)
            .map(|i| {
                proptest::collection::vec(
                    (0..i.max(1), proptest::bool::weighted(0.8)),
                    0..=i.min(3),
                )
                .prop_map(move |v| {
                    let mut v: Vec<(usize, bool)> = v.into_iter().filter(|(j, _)| *j < i).collect();
                    v.sort_unstable();
                    v.dedup_by_key(|(j, _)| *j);
                    v
                })
            })
            .collect::<Vec<_>>();
        (deps, proptest::collection::vec(proptest::bool::weighted(0.15), n), 0u32..2)
            .prop_map(|(deps, failing, retries)| Dag { deps, failing, retries })
    })
}

/// What to do after a build: nothing, or taint a partition (with `--downstream` or not).
type TaintAfter = Option<(usize, bool)>;

/// Builds to run: (refs as indexes, force, a taint after it).
fn builds(n: usize) -> impl Strategy<Value = Vec<(Vec<usize>, bool, TaintAfter)>> {
    proptest::collection::vec(
        (
            proptest::collection::vec(0..n, 1..=3),
            proptest::bool::weighted(0.25),
            proptest::option::weighted(0.3, (0..n, proptest::bool::ANY)),
        ),
        1..=3,
    )
}

fn job_script(d: &Dag) -> String {
    let mut cases = String::new();
    for (i, deps) in d.deps.iter().enumerate() {
        let inputs: Vec<String> = deps
            .iter()
            .map(|(j, m)| {
                let t = if *m { "MATERIALIZE" } else { "QUERY" };
                format!(r#"{{"depType":"{t}","partitionRef":{{"str":"p/{j}"}}}}"#)
            })
            .collect();
        cases.push_str(&format!("      p/{i}) inputs='{}' ;;\n", inputs.join(",")));
    }
    let failing: Vec<String> =
        d.failing.iter().enumerate().filter(|(_, f)| **f).map(|(i, _)| format!("p/{i}")).collect();
    let fail = if failing.is_empty() {
        String::new()
    } else {
        format!("case $1 in {}) echo failing >&2; exit 1 ;; esac\n", failing.join("|"))
    };
    format!(
        r#"#!/bin/sh
cmd=$1; shift
if [ "$cmd" = config ]; then
  printf '{{"configs":['
  sep=
  for r in "$@"; do
    case $r in
{cases}      *) inputs= ;;
    esac
    printf '%s{{"outputs":[{{"str":"%s"}}],"inputs":[%s],"args":["%s"]}}' "$sep" "$r" "$inputs" "$r"
    sep=,
  done
  printf ']}}\n'
  exit 0
fi
{fail}echo "$1" >> ledger.txt
"#
    )
}

fn fold_from_disk(log: &Path) -> State {
    let r = Reader::open(log, ReadOptions::default()).expect("the log opens read-only");
    let mut s = State::new();
    store::fold(&r, &mut s, u64::MAX).expect("the log folds");
    s
}

fn run_case(d: &Dag, plan: &[(Vec<usize>, bool, TaintAfter)]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let p = dir.path();
    std::fs::write(p.join("job.sh"), job_script(d)).unwrap();
    std::fs::set_permissions(p.join("job.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let toml = format!(
        "[[jobs]]\nlabel = \"j\"\nentrypoint = \"job.sh\"\nversion = \"1\"\nretries = {}\npartition_patterns = ['p/\\d+']\n",
        d.retries
    );
    std::fs::write(p.join("databuild.toml"), toml).unwrap();
    let graph = Arc::new(Graph::load(&p.join("databuild.toml")).unwrap());
    let log = p.join(".databuild/log");
    let (store, _) = Store::open(&log, StoreOptions::default()).unwrap();
    let store = Arc::new(store);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let settings = Settings {
        jobs: 2,
        logs_dir: p.join(".databuild/logs"),
        grace: Duration::from_secs(1),
        configure: Arc::new(databuild::planner::Processes),
    };
    let executor = Arc::new(Local { logs_dir: p.join(".databuild/logs") });
    // One long-lived engine serves every build of the case, one after the other.
    let engine = rt
        .block_on(Engine::open(store.clone(), graph.clone(), settings, executor))
        .map_err(|e| TestCaseError::fail(format!("open: {e}")))?
        .0;
    for (refs, force, taint) in plan {
        let spec = BuildSpec {
            refs: refs.iter().map(|i| format!("p/{i}")).collect(),
            force: *force,
            cap: None,
            ..BuildSpec::default()
        };
        let (observer, mut ends) = with_ends(Arc::new(Quiet));
        rt.block_on(async {
            engine.handle().submit(spec, observer).await?;
            ends.recv().await.ok_or(databuild::engine::EngineError::Closed)?;
            Ok::<_, Box<dyn std::error::Error>>(())
        })
        .map_err(|e| TestCaseError::fail(format!("build {refs:?}: {e}")))?;
        let live = store.state().clone();
        prop_assert!(live.open_requests().is_empty(), "every request ended");
        prop_assert!(live.live_runs().is_empty(), "no run left live");
        prop_assert_eq!(&live, &fold_from_disk(&log), "live state == fold(replay(log))");
        if let Some((i, downstream)) = taint {
            let spec = databuild::freshness::TaintSpec {
                refs: vec![format!("p/{i}")],
                downstream: *downstream,
                reason: "property".into(),
            };
            rt.block_on(engine.handle().taint(spec))
                .map_err(|e| TestCaseError::fail(format!("taint: {e}")))?;
            let live = store.state().clone();
            prop_assert_eq!(&live, &fold_from_disk(&log), "after a taint: live == fold");
        }
    }
    rt.block_on(engine.close()).map_err(|e| TestCaseError::fail(format!("close: {e}")))?;
    let live = store.state().clone();
    prop_assert!(!live.runs.is_empty(), "the first build ran jobs");
    snapshots::write_current(&log, &live).unwrap();
    let (loaded, _, warnings) = store::load(&log, u64::MAX).unwrap();
    prop_assert!(warnings.is_empty(), "{:?}", warnings);
    prop_assert_eq!(&loaded, &live, "a state loaded from its snapshot == the live state");
    Arc::try_unwrap(store).map_err(|_| TestCaseError::fail("store still shared"))?.close().unwrap();
    Ok(())
}

proptest! {
    // Each case runs real job processes: a few dozen cases cover the shapes without slowing CI.
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_live_state_is_the_fold_of_the_log((d, plan) in dag().prop_flat_map(|d| {
        let n = d.deps.len();
        (Just(d), builds(n))
    })) {
        run_case(&d, &plan)?;
    }
}
