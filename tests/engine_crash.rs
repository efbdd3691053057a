//! Protects crash recovery of whole builds: a small build runs with its event log on the crash
//! simulator; then the log as a crash would leave it after every fsync boundary (synced only, and
//! with random torn later writes) is recovered with `recovery::recover` and real jobs. Each image
//! must open; recovery must end every interrupted request COMPLETED under its own id with the
//! requested partition AVAILABLE; nothing AVAILABLE at the crash may run again; and the history
//! must stay a legal sequence of transitions.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use databuild::engine::{BuildSpec, Engine, Quiet, RequestEnd, Settings, with_ends};
use databuild::executor::local::Local;
use databuild::graph::Graph;
use databuild::proto::BuildRequestStatus;
use databuild::store::{Store, StoreOptions};
use databuild_log::sim::{CrashMode, SimFs};
use databuild_log::{Durability, ReadOptions, WriterOptions};

const LOG: &str = "/db/log";

const JOB: &str = r#"#!/bin/sh
cmd=$1; shift
if [ "$cmd" = config ]; then
  printf '{"configs":['
  sep=
  for r in "$@"; do
    case $r in
      sum/1) inputs='{"depType":"MATERIALIZE","partitionRef":{"str":"raw/1"}},{"depType":"MATERIALIZE","partitionRef":{"str":"raw/2"}}' ;;
      top/1) inputs='{"depType":"MATERIALIZE","partitionRef":{"str":"sum/1"}}' ;;
      *) inputs= ;;
    esac
    printf '%s{"outputs":[{"str":"%s"}],"inputs":[%s],"args":["%s"]}' "$sep" "$r" "$inputs" "$r"
    sep=,
  done
  printf ']}\n'
  exit 0
fi
echo "$1" >> ledger.txt
"#;

fn graph_dir() -> (tempfile::TempDir, Arc<Graph>) {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("job.sh"), JOB).unwrap();
    std::fs::set_permissions(d.path().join("job.sh"), std::fs::Permissions::from_mode(0o755))
        .unwrap();
    let toml = "[[jobs]]\nlabel = \"j\"\nentrypoint = \"job.sh\"\npartition_patterns = ['(raw|sum|top)/\\d+']\n";
    std::fs::write(d.path().join("databuild.toml"), toml).unwrap();
    let g = Graph::load(&d.path().join("databuild.toml")).unwrap();
    (d, Arc::new(g))
}

fn opts(fs: &SimFs) -> StoreOptions {
    StoreOptions {
        writer: WriterOptions {
            durability: Durability::Full,
            checkpoint_interval: None,
            segment_bytes_target: 4096,
            fs: Arc::new(fs.clone()),
            ..WriterOptions::default()
        },
        ..StoreOptions::default()
    }
}

fn settings(dir: &Path) -> Settings {
    Settings {
        jobs: 2,
        logs_dir: dir.join(".databuild/logs"),
        grace: Duration::from_secs(1),
        configure: Arc::new(databuild::planner::Processes),
    }
}

fn local(dir: &Path) -> Arc<Local> {
    Arc::new(Local { logs_dir: dir.join(".databuild/logs") })
}

/// One build through the engine: its id and how it ended.
async fn build(
    store: Arc<Store>,
    graph: Arc<Graph>,
    dir: &Path,
    spec: BuildSpec,
) -> (String, RequestEnd) {
    let (engine, _) = Engine::open(store, graph, settings(dir), local(dir)).await.unwrap();
    let (observer, mut ends) = with_ends(Arc::new(Quiet));
    let id = engine.handle().submit(spec, observer).await.unwrap();
    let end = ends.recv().await.unwrap();
    engine.close().await.unwrap();
    (id, end)
}

/// What `recover` does: open (reconcile), resume every interrupted request, wait for them.
async fn recover(
    store: Arc<Store>,
    graph: Arc<Graph>,
    dir: &Path,
) -> Result<Vec<RequestEnd>, String> {
    let (engine, _) =
        Engine::open(store, graph, settings(dir), local(dir)).await.map_err(|e| e.to_string())?;
    let (observer, mut ends) = with_ends(Arc::new(Quiet));
    let resumed = engine.handle().resume(observer).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for _ in 0..resumed.requests.len() + resumed.finished_cancellations.len() {
        out.push(ends.recv().await.ok_or("the engine stopped")?);
    }
    engine.close().await.map_err(|e| e.to_string())?;
    Ok(out)
}

fn ledger(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("ledger.txt"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn a_crash_at_every_fsync_boundary_of_a_build_recovers_to_the_same_end() {
    let (dir, graph) = graph_dir();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let sim = SimFs::new();
    let (store, _) = Store::open(Path::new(LOG), opts(&sim)).unwrap();
    let store = Arc::new(store);
    let spec = BuildSpec { refs: vec!["top/1".into()], ..BuildSpec::default() };
    let (req, end) = rt.block_on(build(store.clone(), graph.clone(), dir.path(), spec));
    assert_eq!(end.status, BuildRequestStatus::BuildRequestCompleted);
    Arc::try_unwrap(store).unwrap().close().unwrap();
    assert_eq!(ledger(dir.path()).len(), 4);

    let points = sim.sync_points();
    assert!(points.len() > 8, "a build has many fsync boundaries: {points:?}");
    let mut resumed = 0;
    for (i, &at) in points.iter().enumerate() {
        for mode in [CrashMode::SyncedOnly, CrashMode::Random(i as u64 * 31 + 7)] {
            let what = format!("crash after op {at} ({mode:?})");
            let img = sim.crash_image(at, mode);
            let (store, _) = Store::open(Path::new(LOG), opts(&img))
                .unwrap_or_else(|e| panic!("{what}: must open: {e}"));
            let (existed, before): (bool, Vec<String>) = {
                let st = store.state();
                let avail = st.catalog.iter().filter(|(_, c)| {
                    c.status() == databuild::proto::PartitionStatus::PartitionAvailable
                });
                (
                    st.requests.contains_key(req.as_str()),
                    avail.map(|(p, _)| p.to_string()).collect(),
                )
            };
            std::fs::remove_file(dir.path().join("ledger.txt")).ok();
            let store = Arc::new(store);
            let ends = rt
                .block_on(recover(store.clone(), graph.clone(), dir.path()))
                .unwrap_or_else(|e| panic!("{what}: recover failed: {e}"));
            {
                let st = store.state();
                assert!(st.open_requests().is_empty(), "{what}: every request ended");
                assert!(st.live_runs().is_empty(), "{what}: no run left live");
                if existed {
                    resumed += 1;
                    assert_eq!(
                        st.requests[req.as_str()].status,
                        BuildRequestStatus::BuildRequestCompleted,
                        "{what}"
                    );
                    assert!(st.is_available("top/1"), "{what}");
                    assert!(ends.iter().all(|e| e.request == req), "{what}: under its own id");
                }
            }
            for ran in ledger(dir.path()) {
                assert!(
                    !before.contains(&ran),
                    "{what}: {ran} was AVAILABLE at the crash and ran again"
                );
            }
            Arc::try_unwrap(store).unwrap().close().unwrap();
            // The history is sound: it refolds cleanly and the log verifies.
            let fs: Arc<dyn databuild_log::Fs> = Arc::new(img.clone());
            let rep = databuild_log::verify(
                Path::new(LOG),
                ReadOptions { fs: fs.clone(), ..ReadOptions::default() },
                |_, _| {},
            )
            .unwrap();
            assert!(rep.is_sound(), "{what}: {:?}", rep.corruption);
            let (again, _) = Store::open(Path::new(LOG), opts(&img))
                .unwrap_or_else(|e| panic!("{what}: refold: {e}"));
            drop(again);
        }
    }
    assert!(resumed > 4, "most images held the request: {resumed}");
}
