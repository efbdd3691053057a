//! Property: the engine keeps its promises under concurrent requests, failures, retries,
//! timeouts, cancels and crashes. The real engine loop, store and log run with scripted `config`
//! answers and the scripted fake executor (no processes) on tokio's paused clock, so thousands of
//! random cases fit in CI time (`ENGINE_PROPS_CASES` sets how many; default 1,000).
//!
//! Each case: a random DAG of single-output tasks (some failing, some killed, some hanging past
//! their timeout, some slow), 1–4 requests with overlapping refs submitted at random moments (some
//! forced, some capped, some cancelled later), and maybe a crash at a random moment followed by a
//! new engine that reconciles and resumes everything. After it:
//! - the state the engine held equals a fresh fold of the log from disk;
//! - every request ended and no run is live; the slot limit was never passed;
//! - no partition was ever built by two runs at once, and every run the executor released has
//!   its JOB_RUNNING in the log (nothing ran without a durable record);
//! - every active delegation named a request that was live then, and no request started a run
//!   for a partition that another live (uncancelled) request was going to build (it delegates).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use databuild::config::{ConfigCall, ConfigLog};
use databuild::engine::{BuildSpec, Engine, EngineHandle, Quiet, RequestEnd, Settings, with_ends};
use databuild::executor::fake::{Behavior, Fake};
use databuild::graph::Graph;
use databuild::planner::{ConfigFuture, Configure};
use databuild::proto::build_event::EventType;
use databuild::proto::{
    BuildEvent, DepType, JobConfig, JobConfigureResponse, JobStatus, PartitionRef, PartitionStatus,
};
use databuild::state::State;
use databuild::store::{self, Store, StoreOptions};
use databuild_log::{Durability, ReadOptions, Reader, WriterOptions};
use proptest::prelude::*;
use prost::Message;

/// What a task's run does.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Ok,
    Fails,
    Killed,
    Hangs,
}

#[derive(Clone, Debug)]
struct Dag {
    deps: Vec<Vec<usize>>,
    kinds: Vec<Kind>,
    delays: Vec<u64>,
}

#[derive(Clone, Debug)]
struct Req {
    refs: Vec<usize>,
    force: bool,
    cap: Option<usize>,
    at_ms: u64,
    cancel_after_ms: Option<u64>,
}

#[derive(Clone, Debug)]
struct Case {
    dag: Dag,
    reqs: Vec<Req>,
    jobs: usize,
    retries: u32,
    crash_at_ms: Option<u64>,
}

fn case() -> impl Strategy<Value = Case> {
    (2usize..10)
        .prop_flat_map(|n| {
            let deps = (0..n)
                .map(|i| proptest::collection::vec(0..i.max(1), 0..=i.min(3)))
                .collect::<Vec<_>>();
            let kind = prop_oneof![
                8 => Just(Kind::Ok),
                1 => Just(Kind::Fails),
                1 => Just(Kind::Killed),
                1 => Just(Kind::Hangs),
            ];
            let req = (
                proptest::collection::vec(0..n, 1..=3),
                proptest::bool::weighted(0.25),
                proptest::option::weighted(0.3, 1usize..3),
                0u64..400,
                proptest::option::weighted(0.2, 0u64..600),
            )
                .prop_map(|(refs, force, cap, at_ms, cancel_after_ms)| Req {
                    refs,
                    force,
                    cap,
                    at_ms,
                    cancel_after_ms,
                });
            (
                deps,
                proptest::collection::vec(kind, n),
                proptest::collection::vec(1u64..300, n),
                proptest::collection::vec(req, 1..=4),
                1usize..4,
                0u32..2,
                proptest::option::weighted(0.3, 0u64..800),
            )
        })
        .prop_map(|(deps, kinds, delays, reqs, jobs, retries, crash_at_ms)| {
            let deps = deps
                .into_iter()
                .enumerate()
                .map(|(i, mut d)| {
                    d.retain(|&j| j < i);
                    d.sort_unstable();
                    d.dedup();
                    d
                })
                .collect();
            Case { dag: Dag { deps, kinds, delays }, reqs, jobs, retries, crash_at_ms }
        })
}

/// `config` answered from the DAG: one config per ref, MATERIALIZE inputs.
#[derive(Debug)]
struct Answers(Vec<Vec<usize>>);

impl Configure for Answers {
    fn configure(
        &self,
        graph: &Arc<Graph>,
        call: &ConfigCall,
        _: Option<&str>,
        _: Option<ConfigLog>,
    ) -> ConfigFuture {
        let configs: Vec<JobConfig> = call
            .refs
            .iter()
            .map(|r| {
                let i: usize = r.trim_start_matches("p/").parse().unwrap_or(0);
                JobConfig {
                    outputs: vec![PartitionRef { str: r.clone() }],
                    inputs: self.0[i]
                        .iter()
                        .map(|j| databuild::proto::DataDep {
                            dep_type: DepType::Materialize as i32,
                            partition_ref: Some(PartitionRef { str: format!("p/{j}") }),
                        })
                        .collect(),
                    args: vec![r.clone()],
                    ..JobConfig::default()
                }
            })
            .collect();
        let resp = JobConfigureResponse { configs };
        let checked = databuild::config::validate(graph, call, &resp).map(|()| resp.configs.into());
        let (job, refs) = (graph.jobs[call.job].label.clone(), call.refs.clone());
        Box::pin(async move {
            checked.map_err(|m| databuild::config::ConfigError {
                job,
                refs,
                kind: databuild::config::ConfigErrorKind::Invalid(m),
                stderr_tail: Vec::new(),
                log: None,
            })
        })
    }
}

fn fold_from_disk(log: &Path) -> State {
    let r = Reader::open(log, ReadOptions::default()).expect("the log opens read-only");
    let mut s = State::new();
    store::fold(&r, &mut s, u64::MAX).expect("the log folds");
    s
}

fn events(log: &Path) -> Vec<(u64, BuildEvent)> {
    let r = Reader::open(log, ReadOptions::default()).expect("the log opens");
    let mut out = Vec::new();
    r.for_each_from(1, |seq, b| -> Result<(), databuild_log::ReadError> {
        out.push((seq, BuildEvent::decode(b).expect("decodes")));
        Ok(())
    })
    .expect("reads");
    out
}

fn opts() -> StoreOptions {
    StoreOptions {
        writer: WriterOptions { durability: Durability::None, ..WriterOptions::default() },
        ..StoreOptions::default()
    }
}

/// Records whether each note of a request was its `Done`.
#[derive(Default)]
struct Notes(parking_lot::Mutex<Vec<bool>>);

impl databuild::engine::Observer for Notes {
    fn note(&self, note: databuild::engine::Note) {
        self.0.lock().push(matches!(note, databuild::engine::Note::Done { .. }));
    }
}

/// Every request's notes end with exactly one `Done`, and nothing comes after it.
fn done_is_last(all: &[Arc<Notes>]) -> Result<(), TestCaseError> {
    for n in all {
        let n = n.0.lock();
        let dones = n.iter().filter(|d| **d).count();
        prop_assert!(dones <= 1, "{dones} Done notes");
        if dones == 1 {
            prop_assert!(n.last() == Some(&true), "a note came after Done: {:?}", *n);
        }
    }
    Ok(())
}

async fn run_requests(
    handle: EngineHandle,
    reqs: Vec<Req>,
    notes: Arc<parking_lot::Mutex<Vec<Arc<Notes>>>>,
) -> Vec<(String, Option<RequestEnd>, bool)> {
    let mut tasks = Vec::new();
    for r in reqs {
        let h = handle.clone();
        let rec = Arc::new(Notes::default());
        notes.lock().push(rec.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(r.at_ms)).await;
            let (observer, mut ends) = with_ends(rec);
            let spec = BuildSpec {
                refs: r.refs.iter().map(|i| format!("p/{i}")).collect(),
                force: r.force,
                cap: r.cap,
                ..BuildSpec::default()
            };
            let Ok(id) = h.submit(spec, observer).await else {
                return (String::new(), None, false);
            };
            let mut cancelled = false;
            let end = match r.cancel_after_ms {
                None => ends.recv().await,
                Some(ms) => {
                    tokio::select! {
                        e = ends.recv() => e,
                        () = tokio::time::sleep(Duration::from_millis(ms)) => {
                            cancelled = true;
                            let _ = h.cancel(&id, "cancelled by the test").await;
                            ends.recv().await
                        }
                    }
                }
            };
            (id, end, cancelled)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        if let Ok(r) = t.await {
            out.push(r);
        }
    }
    out
}

fn run_case(c: &Case) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let p = dir.path();
    std::fs::write(p.join("job.sh"), "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p.join("job.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let toml = format!(
        "[[jobs]]\nlabel = \"j\"\nentrypoint = \"job.sh\"\nretries = {}\ntimeout_seconds = 1\npartition_patterns = ['p/\\d+']\n",
        c.retries
    );
    std::fs::write(p.join("databuild.toml"), toml).unwrap();
    let graph = Arc::new(Graph::load(&p.join("databuild.toml")).unwrap());
    let log = p.join("log");
    let dag = c.dag.clone();
    let fake = Arc::new(Fake::new(move |spec| {
        let i: usize =
            spec.outputs.first().map_or(0, |o| o.trim_start_matches("p/").parse().unwrap_or(0));
        let d = Duration::from_millis(dag.delays[i]);
        match dag.kinds[i] {
            Kind::Ok => Behavior::Exit(0, d),
            Kind::Fails => Behavior::Exit(1, d),
            Kind::Killed => Behavior::Signal(9, d),
            Kind::Hangs => Behavior::Hang,
        }
    }));
    let settings = Settings {
        jobs: c.jobs,
        logs_dir: p.join("logs"),
        grace: Duration::from_millis(200),
        configure: Arc::new(Answers(c.dag.deps.clone())),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let notes: Arc<parking_lot::Mutex<Vec<Arc<Notes>>>> = Arc::default();
    let cancelled: HashSet<String> = rt.block_on(async {
        let (store, _) = Store::open(&log, opts()).unwrap();
        let mut store = Arc::new(store);
        // A release is checked against the log: the run's JOB_RUNNING must be durable.
        let durable = |store: &Arc<Store>| {
            let weak = Arc::downgrade(store);
            move |run: &str| {
                weak.upgrade().is_some_and(|s| {
                    let st = s.state();
                    st.runs
                        .get(run)
                        .and_then(|r| r.running)
                        .is_some_and(|(seq, _)| seq < s.durable_next_seq())
                })
            }
        };
        fake.check_releases(durable(&store));
        let (engine, _) =
            Engine::open(store.clone(), graph.clone(), settings.clone(), fake.clone())
                .await
                .unwrap();
        let runner = tokio::spawn(run_requests(engine.handle(), c.reqs.clone(), notes.clone()));
        let mut cancelled = HashSet::new();
        match c.crash_at_ms {
            Some(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                engine.crash().await;
                // Everything that held the store lets go of it (planning tasks end at once).
                let store = loop {
                    match Arc::try_unwrap(store) {
                        Ok(s) => break s,
                        Err(s) => {
                            store = s;
                            tokio::task::yield_now().await;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                };
                store.halt();
                for (id, _, was_cancelled) in runner.await.unwrap_or_default() {
                    if was_cancelled {
                        cancelled.insert(id);
                    }
                }
                // A new engine reconciles and resumes every interrupted request.
                let (store, _) = Store::open(&log, opts()).unwrap();
                let store = Arc::new(store);
                fake.check_releases(durable(&store));
                let (engine, _) =
                    Engine::open(store.clone(), graph.clone(), settings, fake.clone())
                        .await
                        .unwrap();
                let (observer, mut ends) = with_ends(Arc::new(Quiet));
                let resumed = engine.handle().resume(observer).await.unwrap();
                for _ in 0..resumed.requests.len() + resumed.finished_cancellations.len() {
                    ends.recv().await.unwrap();
                }
                engine.close().await.unwrap();
                let live = store.state().clone();
                assert_eq!(live, fold_from_disk(&log), "live state == fold(log) after resume");
                Arc::try_unwrap(store).unwrap().close().unwrap();
            }
            None => {
                for (id, end, was_cancelled) in runner.await.unwrap() {
                    assert!(end.is_some(), "request {id} ended");
                    if was_cancelled {
                        cancelled.insert(id);
                    }
                }
                engine.close().await.unwrap();
                let live = store.state().clone();
                assert_eq!(live, fold_from_disk(&log), "live state == fold(log)");
                Arc::try_unwrap(store).unwrap().close().unwrap();
            }
        }
        cancelled
    });
    if c.crash_at_ms.is_none() {
        done_is_last(&notes.lock())?;
    }
    let state = fold_from_disk(&log);
    prop_assert!(state.open_requests().is_empty(), "every request ended");
    prop_assert!(state.live_runs().is_empty(), "no run left live");
    let record = fake.record();
    let record = record.lock();
    prop_assert!(record.overlaps.is_empty(), "built twice at once: {:?}", record.overlaps);
    prop_assert!(
        record.released_early.is_empty(),
        "released before JOB_RUNNING was durable: {:?}",
        record.released_early
    );
    prop_assert!(record.max_running <= c.jobs, "{} runs at once > {}", record.max_running, c.jobs);
    // Walk the history: delegations name live requests; nothing is scheduled that another live,
    // uncancelled request was going to build starts a run; every released run was durably RUNNING.
    let mut s = State::new();
    let mut running: HashSet<String> = HashSet::new();
    for (seq, ev) in events(&log) {
        let req = ev.build_request_id.clone();
        match &ev.event_type {
            Some(EventType::DelegationEvent(d)) if d.message.starts_with("delegated to active") => {
                let to = &d.delegated_to_build_request_id;
                let live = s
                    .requests
                    .get(to.as_str())
                    .is_some_and(|r| !databuild::state::is_terminal_request(r.status));
                prop_assert!(live, "seq {seq}: delegation to {to}, which was not live");
            }
            Some(EventType::JobEvent(j)) if j.status == JobStatus::JobRunning as i32 => {
                running.insert(j.job_run_id.clone());
                if !cancelled.contains(&req) {
                    for t in &j.target_partitions {
                        for (other, r) in s.requests.iter() {
                            if **other == *req
                                || cancelled.contains(&other.to_string())
                                || databuild::state::is_terminal_request(r.status)
                            {
                                continue;
                            }
                            let k = s.key(other, &t.str).map(|k| k.status);
                            prop_assert!(
                                !matches!(
                                    k,
                                    Some(
                                        PartitionStatus::PartitionAnalyzed
                                            | PartitionStatus::PartitionBuilding
                                    )
                                ),
                                "seq {seq}: {req} started {} while live request {other} was to build it ({k:?})",
                                t.str
                            );
                        }
                    }
                }
            }
            _ => {}
        }
        s.apply(seq, &ev).map_err(|v| TestCaseError::fail(v.to_string()))?;
    }
    for (run, _) in &record.released {
        prop_assert!(running.contains(run), "run {run} was released without a durable JOB_RUNNING");
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("ENGINE_PROPS_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_keeps_its_promises_under_concurrency_failures_cancels_and_crashes(c in case()) {
        run_case(&c)?;
    }
}

#[test]
fn overlapping_requests_run_each_shared_job_once() {
    // Two requests for the same chain, the second submitted while the first runs: it delegates.
    let c = Case {
        dag: Dag {
            deps: vec![vec![], vec![0], vec![1]],
            kinds: vec![Kind::Ok; 3],
            delays: vec![100, 100, 100],
        },
        reqs: vec![
            Req { refs: vec![2], force: false, cap: None, at_ms: 0, cancel_after_ms: None },
            Req { refs: vec![2, 1], force: true, cap: None, at_ms: 50, cancel_after_ms: None },
        ],
        jobs: 2,
        retries: 0,
        crash_at_ms: None,
    };
    run_case(&c).unwrap();
}
