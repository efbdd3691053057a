//! Protects snapshots as a pure shortcut: loading from any snapshot gives exactly the state a
//! full fold gives; a damaged, foreign or stale snapshot is skipped with a warning (never a
//! reason to refuse, never misread); time travel starts from the newest snapshot at or below
//! the seq asked; and `verify` reports a snapshot that disagrees with the log.

use std::path::Path;
use std::process::Command;

use databuild::events as ev;
use databuild::proto::{
    BuildRequestStatus as B, JobGraph, JobStatus as J, PartitionManifest, PartitionStatus as P,
};
use databuild::query::{self, Until};
use databuild::state::State;
use databuild::store::{self, Store, StoreOptions, snapshots};
use databuild_log::{Durability, ReadOptions, Reader, WriterOptions};

fn opts() -> StoreOptions {
    StoreOptions {
        writer: WriterOptions {
            durability: Durability::None,
            checkpoint_interval: None,
            ..WriterOptions::default()
        },
        ..StoreOptions::default()
    }
}

/// One completed request building `out/<n>` from `in/<n>`.
fn request(store: &Store, n: u32) {
    let req = store.new_id();
    let (i, o) = (format!("in/{n}"), format!("out/{n}"));
    let mut evs = vec![ev::received(&req, std::slice::from_ref(&o), false, "")];
    evs.push(ev::partition(&req, &o, P::PartitionRequested, "", ""));
    evs.push(ev::request(&req, B::BuildRequestPlanning, ""));
    evs.push(ev::partition(&req, &i, P::PartitionAnalyzed, "", ""));
    evs.push(ev::partition(&req, &o, P::PartitionAnalyzed, "", ""));
    evs.push(ev::job_graph(&req, JobGraph::default()));
    evs.push(ev::request(&req, B::BuildRequestAnalysisCompleted, ""));
    evs.push(ev::request(&req, B::BuildRequestExecuting, ""));
    let mut producer = String::new();
    for (label, p, input) in [("ingest", &i, None), ("derive", &o, Some(&i))] {
        let run = store.new_id();
        let t = vec![p.clone()];
        evs.push(ev::job(&req, &run, label, &t).event(J::JobScheduled));
        evs.push(ev::job(&req, &run, label, &t).event(J::JobRunning));
        evs.push(ev::partition(&req, p, P::PartitionBuilding, &run, ""));
        let mut done = ev::job(&req, &run, label, &t);
        let mut m =
            PartitionManifest { outputs: vec![ev::pref(p)], ..PartitionManifest::default() };
        if let Some(inp) = input {
            m.inputs = vec![PartitionManifest {
                outputs: vec![ev::pref(inp)],
                job_run_id: producer.clone(),
                dep_type: 1,
                ..PartitionManifest::default()
            }];
        }
        done.manifests = vec![m];
        evs.push(done.event(J::JobCompleted));
        evs.push(ev::partition(&req, p, P::PartitionAvailable, &run, ""));
        producer = run;
    }
    evs.push(ev::request(&req, B::BuildRequestCompleted, ""));
    store.stage(evs).unwrap();
}

/// One completed request that rebuilds `in/<n>` alone, recording job version `version`.
fn rebuild_input(store: &Store, n: u32, version: &str) {
    let req = store.new_id();
    let i = format!("in/{n}");
    let t = vec![i.clone()];
    let run = store.new_id();
    let mut evs = vec![ev::received(&req, &t, true, "")];
    evs.push(ev::partition(&req, &i, P::PartitionRequested, "", ""));
    evs.push(ev::request(&req, B::BuildRequestPlanning, ""));
    evs.push(ev::partition(&req, &i, P::PartitionAnalyzed, "", ""));
    evs.push(ev::job_graph(&req, JobGraph::default()));
    evs.push(ev::request(&req, B::BuildRequestAnalysisCompleted, ""));
    evs.push(ev::request(&req, B::BuildRequestExecuting, ""));
    let mut sch = ev::job(&req, &run, "ingest", &t);
    sch.version = Some(version.to_string());
    evs.push(sch.event(J::JobScheduled));
    evs.push(ev::job(&req, &run, "ingest", &t).event(J::JobRunning));
    evs.push(ev::partition(&req, &i, P::PartitionBuilding, &run, ""));
    let mut done = ev::job(&req, &run, "ingest", &t);
    done.manifests =
        vec![PartitionManifest { outputs: vec![ev::pref(&i)], ..PartitionManifest::default() }];
    evs.push(done.event(J::JobCompleted));
    evs.push(ev::partition(&req, &i, P::PartitionAvailable, &run, ""));
    evs.push(ev::request(&req, B::BuildRequestCompleted, ""));
    store.stage(evs).unwrap();
}

fn full_fold(dir: &Path, until: u64) -> State {
    let r = Reader::open(dir, ReadOptions::default()).unwrap();
    let mut s = State::new();
    store::fold(&r, &mut s, until).unwrap();
    s
}

#[test]
fn snapshots_shorten_the_fold_without_changing_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let (st, _) = Store::open(&log, opts()).unwrap();
    let mut snapshot_seqs = Vec::new();
    for n in 0..60 {
        request(&st, n);
        st.flush().unwrap().map(|p| p.wait().unwrap());
        if n % 20 == 9 {
            let s = st.state().clone();
            snapshots::write_current(&log, &s).unwrap();
            snapshot_seqs.push(s.last_seq);
        }
    }
    st.close().unwrap();
    let id = Reader::open(&log, ReadOptions::default()).unwrap().log_id().unwrap();
    let all = full_fold(&log, u64::MAX);
    // load() starts from the newest snapshot and folds the rest: the same state.
    let (loaded, _, warnings) = store::load(&log, u64::MAX).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(loaded, all);
    // Time travel to any seq starts from the newest snapshot at or below it: the same state as a
    // fold from the start.
    let reader = Reader::open(&log, ReadOptions::default()).unwrap();
    for until in [
        1,
        snapshot_seqs[0] - 1,
        snapshot_seqs[0],
        snapshot_seqs[0] + 1,
        snapshot_seqs[2] + 5,
        all.last_seq,
    ] {
        assert_eq!(
            query::state_at(&reader, Until::Seq(until)).unwrap(),
            full_fold(&log, until),
            "at seq {until}"
        );
    }
    // The writer's open uses them too, and agrees.
    let (st, _) = Store::open(&log, opts()).unwrap();
    assert_eq!(*st.state(), all);
    assert!(st.snapshot_warnings().is_empty());
    st.close().unwrap();
    // Damage the newest snapshot: it is skipped with a warning, the older one is used.
    let newest = snapshots::list(&log)[0].1.clone();
    let mut b = std::fs::read(&newest).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 1;
    std::fs::write(&newest, &b).unwrap();
    let (loaded, _, warnings) = store::load(&log, u64::MAX).unwrap();
    assert_eq!(loaded, all);
    assert!(warnings.iter().any(|w| w.contains("checksum")), "{warnings:?}");
    // A snapshot of another log is ignored too.
    let other = databuild::state::snapshot::encode(&all, [9u8; 16], Default::default());
    std::fs::write(snapshots::path(&log, all.last_seq + 1000), other).unwrap();
    let (loaded, _, warnings) = store::load(&log, u64::MAX).unwrap();
    assert_eq!(loaded, all);
    assert!(!warnings.is_empty());
    let _ = id;
    // A writer that opened from a snapshot folds new events on top of it, changing entries that
    // are still only in the snapshot (out/5 and in/5 rebuilt), exactly as a full fold does.
    let (st, _) = Store::open(&log, opts()).unwrap();
    request(&st, 5);
    request(&st, 70);
    // Freshness too: in/6 rebuilt alone makes out/6 (still only in the snapshot) stale; out/7 is
    // tainted, which makes nothing stale (nothing read it).
    rebuild_input(&st, 6, "2");
    let out7 = st.state().catalog.get("out/7").unwrap().available.last().unwrap().1.to_string();
    st.stage(vec![ev::partition("", "out/7", P::PartitionTainted, &out7, "bad rows")]).unwrap();
    st.flush().unwrap().map(|p| p.wait().unwrap());
    let live = st.state().clone();
    st.close().unwrap();
    assert_eq!(live, full_fold(&log, u64::MAX));
    assert_eq!(live.catalog.len(), all.catalog.len() + 2, "in/70 and out/70 are new");
    let stale = live.stale("out/6").expect("out/6 is stale");
    assert!(stale.reasons[0].text().starts_with("input in/6 rebuilt at seq "), "{stale:?}");
    assert!(live.stale("out/5").is_none(), "out/5 was rebuilt from the new in/5");
    assert_eq!(live.partition_status("out/7"), P::PartitionTainted);
    assert_eq!(live.job_version("ingest").map(|(v, _)| v), Some("2"));
    // A snapshot of that state loads as it, stale entries and taints included.
    snapshots::write_current(&log, &live).unwrap();
    let (loaded, _, warnings) = store::load(&log, u64::MAX).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(loaded, live);
    assert_eq!(loaded.stale("out/6"), Some(stale));
}

#[test]
fn verify_reports_a_snapshot_that_disagrees_with_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let (st, _) = Store::open(&log, opts()).unwrap();
    for n in 0..5 {
        request(&st, n);
    }
    st.flush().unwrap().map(|p| p.wait().unwrap());
    st.close().unwrap();
    let reader = Reader::open(&log, ReadOptions::default()).unwrap();
    let id = reader.log_id().unwrap();
    let anchor = store::anchor_at(&reader, 20).unwrap().unwrap();
    // A snapshot claiming seq 20 (of this very history) but holding the state after seq 10.
    std::fs::create_dir_all(log.join(snapshots::DIR)).unwrap();
    let mut wrong = full_fold(&log, 10);
    wrong.last_seq = 20;
    std::fs::write(
        snapshots::path(&log, 20),
        databuild::state::snapshot::encode(&wrong, id.0, anchor),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_databuild"))
        .args(["verify", "--log"])
        .arg(&log)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("differs from the fold of the log"), "{stdout}");
    assert_eq!(out.status.code(), Some(3), "a snapshot that would mislead views fails verify");
    // A correct one is not reported.
    std::fs::write(
        snapshots::path(&log, 20),
        databuild::state::snapshot::encode(&full_fold(&log, 20), id.0, anchor),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_databuild"))
        .args(["verify", "--log"])
        .arg(&log)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !stdout.contains("snapshot"), "{stdout}");
}

#[test]
fn snapshots_are_due_every_quarter_of_the_log_within_bounds() {
    use store::snapshot_due;
    // Small logs: at least 5,000 events after the last one (none yet counts as seq 0).
    assert!(!snapshot_due(4_999, 0));
    assert!(snapshot_due(5_000, 0));
    // Middling logs: a quarter of the log.
    assert!(!snapshot_due(100_000, 80_000), "a quarter of 100k is 25k; only 20k follow");
    assert!(snapshot_due(110_000, 80_000), "a quarter of 110k is 27.5k; 30k follow");
    // Long logs: at most 250,000 events, which bounds what an open folds.
    assert!(!snapshot_due(10_000_000, 9_800_000));
    assert!(snapshot_due(10_050_000, 9_800_000));
}

/// Readers write nothing (not even a snapshot, however long the log); a writer's open removes the
/// temporary snapshot files a killed writer left, and writes one at close when due.
#[test]
fn readers_write_nothing_and_writers_sweep_stale_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let (st, _) = Store::open(&log, opts()).unwrap();
    for n in 0..300 {
        request(&st, n);
    }
    st.flush().unwrap().map(|p| p.wait().unwrap());
    // Close without the writer's snapshot: as if it had been killed.
    let last = st.state().last_seq;
    assert!(store::snapshot_due(last, 0), "{last} events are enough for a snapshot");
    drop(st);
    let snaps = log.join(snapshots::DIR);
    std::fs::create_dir_all(&snaps).unwrap();
    let stale = snaps.join(format!("{last:020}.snap.999999999.tmp"));
    std::fs::write(&stale, vec![0u8; 4096]).unwrap();
    for args in [&["status"][..], &["builds"], &["verify"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_databuild"))
            .args(args)
            .arg("--log")
            .arg(&log)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(snapshots::list(&log).is_empty(), "a reader wrote a snapshot");
    assert!(stale.exists(), "a reader removed a file");
    let (st, _) = Store::open(&log, opts()).unwrap();
    assert!(!stale.exists(), "the writer's open sweeps temporary files of dead writers");
    st.close().unwrap();
    assert_eq!(snapshots::list(&log).first().map(|s| s.0), Some(last), "written at close");
    let left: Vec<_> =
        std::fs::read_dir(&snaps).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

/// A clock that the test sets.
#[derive(Debug, Default)]
struct SetClock(std::sync::atomic::AtomicI64);

impl store::Stamp for SetClock {
    fn now_ns(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn new_id(&self) -> String {
        store::SystemStamp.new_id()
    }
}

/// With a clock that went backwards, `status --at TIME` and `replay --until TIME` cut the log at
/// the same place: before the first event stamped after TIME (the log's order is the history's).
#[test]
fn time_travel_cuts_at_the_first_event_stamped_after_the_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let clock = std::sync::Arc::new(SetClock::default());
    let s = 1_000_000_000i64;
    let (st, _) = Store::open(&log, StoreOptions { stamp: clock.clone(), ..opts() }).unwrap();
    let set = |t: i64| clock.0.store(t, std::sync::atomic::Ordering::SeqCst);
    set(1_000 * s);
    request(&st, 0);
    let cut = st.state().last_seq;
    set(2_000 * s);
    request(&st, 1);
    set(500 * s); // the clock jumps back
    request(&st, 2);
    st.flush().unwrap().map(|p| p.wait().unwrap());
    st.close().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_databuild"))
            .args(args)
            .arg("--log")
            .arg(&log)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let at = "1970-01-01T00:25:00Z"; // 1,500 s
    let replayed: Vec<u64> = run(&["replay", "--until", at, "--format", "json"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(replayed, (1..=cut).collect::<Vec<_>>(), "replay stops at the cut");
    let status = run(&["status", "--at", at, "--format", "json"]);
    let available: Vec<String> = status
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|p| p["status"] == "PARTITION_AVAILABLE")
        .map(|p| p["partitionRef"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(available, ["in/0", "out/0"], "status --at shows the same prefix");
    let reader = Reader::open(&log, ReadOptions::default()).unwrap();
    assert_eq!(query::state_at(&reader, Until::Time(1_500 * s)).unwrap(), full_fold(&log, cut));
}
