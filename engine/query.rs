//! Read-only views of the history: partition status rows, lineage up and down, time travel.
//!
//! Everything here is computed from a folded [`State`] (and, for payloads such as configs, from
//! the log through its seq index). Nothing here writes.

use std::collections::{BTreeSet, HashSet};

use databuild_log::Reader;

use crate::freshness::Freshness;
use crate::proto::build_event::EventType;
use crate::proto::{BuildEvent, DepType, JobConfig, PartitionStatus};
use crate::state::{Stale, State};
use crate::store::{self, StoreError};

/// One line of `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRow {
    /// The ref.
    pub partition: String,
    /// Its catalog status.
    pub status: PartitionStatus,
    /// The job run of the deciding event (may be empty).
    pub job_run_id: String,
    /// The build request of the deciding event (may be empty).
    pub build_request_id: String,
    /// The deciding event's seq (0 if never seen).
    pub seq: u64,
    /// Its message.
    pub message: String,
    /// Whether (and why) it is stale (AVAILABLE only).
    pub stale: Option<Stale>,
}

/// Status rows for `refs`, or for every partition the log has seen when `refs` is empty.
pub fn status_rows(state: &State, refs: &[String]) -> Vec<StatusRow> {
    status_rows_with(&Freshness::of_log(state), refs)
}

/// [`status_rows`], with staleness as `fresh` sees it (the graph's versions laid over the log's).
pub fn status_rows_with(fresh: &Freshness<'_>, refs: &[String]) -> Vec<StatusRow> {
    let state = fresh.state();
    let row = |p: &str| {
        let f = state.catalog.get(p).and_then(|c| c.shown());
        StatusRow {
            partition: p.to_string(),
            status: f.map_or(PartitionStatus::PartitionUnknown, |f| f.status),
            job_run_id: f.map(|f| f.job_run_id.to_string()).unwrap_or_default(),
            build_request_id: f.map(|f| f.build_request_id.to_string()).unwrap_or_default(),
            seq: f.map_or(0, |f| f.seq),
            message: f.map(|f| f.message.clone()).unwrap_or_default(),
            stale: fresh.stale(p),
        }
    };
    if refs.is_empty() {
        state.partitions().into_iter().map(|p| row(p)).collect()
    } else {
        refs.iter().map(|p| row(p)).collect()
    }
}

/// Where time travel stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// After this seq (0: before everything).
    Seq(u64),
    /// Before the first event stamped (ns) after this (see [`last_seq_at_or_before`]).
    Time(i64),
}

/// Folds the log up to `until`.
pub fn state_at(reader: &Reader, until: Until) -> Result<State, StoreError> {
    let last = match until {
        Until::Seq(s) => s,
        Until::Time(t) => last_seq_at_or_before(reader, t)?,
    };
    if last == 0 {
        return Ok(State::new());
    }
    // The newest snapshot at or below the point in time, then the events after it.
    Ok(store::fold_with_snapshot(reader, last)?.0)
}

/// Where time travel to `t` cuts the log: the seq before the first event stamped after `t` (0
/// if the first one is). The log's order is the history's order: with a clock that went
/// backwards, a later event stamped at or before `t` is still after the cut, so `status --at`
/// and `replay --until` show the same prefix. Timestamps are not sorted, so this scans (and
/// stops at the cut).
pub fn last_seq_at_or_before(reader: &Reader, t: i64) -> Result<u64, StoreError> {
    enum Stop {
        Cut,
        Failed(StoreError),
    }
    impl From<databuild_log::ReadError> for Stop {
        fn from(e: databuild_log::ReadError) -> Stop {
            Stop::Failed(StoreError::Read(e))
        }
    }
    let mut last = 0;
    let walked = reader.for_each_from(1, |seq, bytes| -> Result<(), Stop> {
        let ev = decode(seq, bytes).map_err(Stop::Failed)?;
        if ev.timestamp > t {
            return Err(Stop::Cut);
        }
        last = seq;
        Ok(())
    });
    match walked {
        Ok(()) | Err(Stop::Cut) => Ok(last),
        Err(Stop::Failed(e)) => Err(e),
    }
}

fn decode(seq: u64, bytes: &[u8]) -> Result<BuildEvent, StoreError> {
    use prost::Message;
    BuildEvent::decode(bytes).map_err(|e| StoreError::Decode { seq, reason: e.to_string() })
}

/// A node of a lineage tree: one partition instance and the run that built it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LineageNode {
    /// The ref.
    pub partition: String,
    /// How the parent read it (inputs only).
    pub dep_type: Option<DepType>,
    /// The run that built this instance (empty: external, or not AVAILABLE when read).
    pub job_run_id: String,
    /// Its job label.
    pub job_label: String,
    /// Its build request.
    pub build_request_id: String,
    /// Seq of the event that made this instance AVAILABLE (0 if none).
    pub seq: u64,
    /// Start and end of the run (unix seconds).
    pub start_time: i64,
    /// End of the run (unix seconds).
    pub end_time: i64,
    /// The run's config arguments.
    pub args: Vec<String>,
    /// The run's config environment keys.
    pub env_keys: Vec<String>,
    /// If the partition was rebuilt after this instance was read: the seq of that rebuild.
    pub rebuilt_since_seq: Option<u64>,
    /// If this instance was tainted (`databuild taint`): the seq of the taint.
    pub tainted_at_seq: Option<u64>,
    /// Whether this instance appeared earlier in the tree (text shows "see above").
    pub repeated: bool,
    /// Inputs (upstream) or what was built from it (downstream).
    pub children: Vec<LineageNode>,
}

/// Why a lineage query has no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LineageError {
    /// The partition has no AVAILABLE instance.
    #[error(
        "'{0}' has never been AVAILABLE, so it has no lineage; run `databuild explain {0}` to see why"
    )]
    NeverBuilt(String),
    /// The log could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The config a run was scheduled with (from its first event in the log).
pub fn run_config(
    state: &State,
    reader: &Reader,
    run: &str,
) -> Result<Option<JobConfig>, StoreError> {
    let Some(r) = state.runs.get(run) else { return Ok(None) };
    Ok(store::event_at(reader, r.first_seq)?.and_then(|e| match e.event_type {
        Some(EventType::JobEvent(j)) => j.config,
        _ => None,
    }))
}

fn instance(
    state: &State,
    reader: &Reader,
    partition: &str,
    run: &str,
    seq: u64,
) -> Result<LineageNode, StoreError> {
    let mut n = LineageNode {
        partition: partition.to_string(),
        job_run_id: run.to_string(),
        seq,
        ..LineageNode::default()
    };
    n.tainted_at_seq = state
        .catalog
        .get(partition)
        .filter(|c| c.available.last().is_some_and(|(_, r)| &**r == run))
        .and_then(|c| c.tainted);
    if let Some(r) = state.runs.get(run) {
        n.job_label = r.job_label.to_string();
        n.build_request_id = r.request.to_string();
        if let Some((s, e)) = r.manifest_times {
            n.start_time = s;
            n.end_time = e;
        }
        if let Some(c) = run_config(state, reader, run)? {
            n.args = c.args;
            n.env_keys = c.env.into_keys().collect();
        }
    }
    Ok(n)
}

/// The seq at which `run` made `partition` AVAILABLE, and the first later AVAILABLE of it.
fn available_seqs(state: &State, partition: &str, run: &str) -> (u64, Option<u64>) {
    let Some(c) = state.catalog.get(partition) else { return (0, None) };
    let at = c.available.iter().find(|(_, r)| &**r == run).map_or(0, |(s, _)| *s);
    let later = c.available.iter().find(|(s, r)| *s > at && &**r != run).map(|(s, _)| *s);
    (at, if at > 0 { later } else { None })
}

/// The current AVAILABLE instance of `partition`: (seq, run).
pub fn current_instance(state: &State, partition: &str) -> Option<(u64, String)> {
    state.catalog.get(partition)?.available.last().map(|(s, r)| (*s, r.to_string()))
}

/// Where `partition` came from: the run that built its current AVAILABLE instance, the inputs it
/// read (as they were then), and theirs, to `depth` levels (`None`: all).
pub fn lineage_up(
    state: &State,
    reader: &Reader,
    partition: &str,
    depth: Option<usize>,
) -> Result<LineageNode, LineageError> {
    let (seq, run) = current_instance(state, partition)
        .ok_or_else(|| LineageError::NeverBuilt(partition.to_string()))?;
    let mut seen = HashSet::new();
    Ok(up(state, reader, partition, &run, seq, depth, &mut seen)?)
}

fn up(
    state: &State,
    reader: &Reader,
    partition: &str,
    run: &str,
    seq: u64,
    depth: Option<usize>,
    seen: &mut HashSet<(String, String)>,
) -> Result<LineageNode, StoreError> {
    let mut n = instance(state, reader, partition, run, seq)?;
    if !seen.insert((partition.to_string(), run.to_string())) {
        n.repeated = true;
    }
    if depth == Some(0) {
        return Ok(n);
    }
    let Some(r) = state.runs.get(run) else { return Ok(n) };
    for input in &r.inputs {
        let child = if input.producer_run.is_empty() {
            LineageNode { partition: input.partition.to_string(), ..LineageNode::default() }
        } else {
            let (at, later) = available_seqs(state, &input.partition, &input.producer_run);
            let mut c = up(
                state,
                reader,
                &input.partition,
                &input.producer_run,
                at,
                depth.map(|d| d - 1),
                seen,
            )?;
            c.rebuilt_since_seq = later.filter(|&l| l > 0);
            c
        };
        n.children.push(LineageNode { dep_type: Some(input.dep_type), ..child });
    }
    Ok(n)
}

/// What was built from `partition`: the completed runs that read its current AVAILABLE instance,
/// their outputs, and what was built from those, to `depth` levels. Following instances (a reader
/// names the run it read) walks strictly forward in time, so this always ends.
pub fn lineage_down(
    state: &State,
    reader: &Reader,
    partition: &str,
    depth: Option<usize>,
) -> Result<LineageNode, LineageError> {
    let (mut root, run) = match current_instance(state, partition) {
        Some((seq, run)) => (instance(state, reader, partition, &run, seq)?, run),
        // Never built here, but read (an external QUERY input): follow the runs that read it.
        None if state.readers.contains_key(partition) => (
            LineageNode { partition: partition.to_string(), ..LineageNode::default() },
            String::new(),
        ),
        None => return Err(LineageError::NeverBuilt(partition.to_string())),
    };
    let mut seen = HashSet::new();
    root.children = down(state, reader, partition, &run, depth, &mut seen)?;
    Ok(root)
}

fn down(
    state: &State,
    reader: &Reader,
    partition: &str,
    producer: &str,
    depth: Option<usize>,
    seen: &mut HashSet<(String, String)>,
) -> Result<Vec<LineageNode>, StoreError> {
    if depth == Some(0) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let runs: BTreeSet<&str> =
        state.readers.get(partition).map(|v| v.iter().map(|r| &**r).collect()).unwrap_or_default();
    for run in runs {
        let Some(r) = state.runs.get(run) else { continue };
        if !r.inputs.iter().any(|i| &*i.partition == partition && &*i.producer_run == producer) {
            continue;
        }
        for o in &r.targets {
            let (seq, _) = available_seqs(state, o, run);
            let mut n = instance(state, reader, o, run, seq)?;
            n.repeated = !seen.insert((o.to_string(), run.to_string()));
            n.children = down(state, reader, o, run, depth.map(|d| d - 1), seen)?;
            out.push(n);
        }
    }
    Ok(out)
}

/// Why a partition is in its state (the `reason` of `explain`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Built by a run.
    Built,
    /// Skipped in a request because it was AVAILABLE.
    Skipped,
    /// Its run failed (or it was cancelled, or planning failed).
    Failed,
    /// A job it needed failed.
    UpstreamFailed,
    /// Being built (or queued) now.
    Building,
    /// The log has never seen it.
    NeverRequested,
    /// `databuild taint` marked its AVAILABLE instance bad.
    Tainted,
}

impl Reason {
    /// The contract's word for it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Built => "built",
            Reason::Skipped => "skipped",
            Reason::Failed => "failed",
            Reason::UpstreamFailed => "upstream_failed",
            Reason::Building => "building",
            Reason::NeverRequested => "never_requested",
            Reason::Tainted => "tainted",
        }
    }
}

/// The answer of `explain`: the latest fact about a partition, with its evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The ref.
    pub partition: String,
    /// What `status` shows.
    pub status: PartitionStatus,
    /// Why.
    pub reason: Reason,
    /// The seq of the fact (0 if none).
    pub seq: u64,
    /// The run it names (the producing run, for a skip).
    pub job_run_id: String,
    /// The request it happened in.
    pub build_request_id: String,
    /// A sentence for people.
    pub message: String,
    /// For a failed run: its exit code.
    pub exit_code: Option<i32>,
    /// Whether (and why, with each reason's seq) it is stale (AVAILABLE only).
    pub stale: Option<Stale>,
}

/// Explains `partition` from the latest partition event about it, in any request.
pub fn explain(state: &State, partition: &str) -> Explanation {
    explain_with(&Freshness::of_log(state), partition)
}

/// [`explain`], with staleness as `fresh` sees it.
pub fn explain_with(fresh: &Freshness<'_>, partition: &str) -> Explanation {
    let state = fresh.state();
    let mut e = explain_facts(state, partition);
    e.stale = fresh.stale(partition);
    e
}

fn explain_facts(state: &State, partition: &str) -> Explanation {
    let status = state.partition_status(partition);
    let latest = state
        .keys_for(partition)
        .max_by_key(|(_, k)| k.seq)
        .map(|(req, k)| (req.clone(), k.clone()));
    let mut e = Explanation {
        partition: partition.to_string(),
        status,
        reason: Reason::NeverRequested,
        seq: 0,
        job_run_id: String::new(),
        build_request_id: String::new(),
        message: format!("'{partition}' has never been requested or built"),
        exit_code: None,
        stale: None,
    };
    if status == PartitionStatus::PartitionTainted
        && let Some(f) = state.catalog.get(partition).and_then(|c| c.shown())
    {
        let run = state.runs.get(&*f.job_run_id);
        e.reason = Reason::Tainted;
        e.seq = f.seq;
        e.job_run_id = f.job_run_id.to_string();
        e.build_request_id = run.map(|r| r.request.to_string()).unwrap_or_default();
        let why = if f.message.is_empty() { String::new() } else { format!(": {}", f.message) };
        e.message = format!(
            "tainted at seq {}{why} (the instance built by {} run {}); the next build that needs it builds it again",
            f.seq,
            run.map_or("?", |r| &*r.job_label),
            f.job_run_id
        );
        return e;
    }
    let Some((req, k)) = latest else { return e };
    e.seq = k.seq;
    e.build_request_id = req.to_string();
    e.job_run_id = k.job_run_id.to_string();
    let producer =
        |state: &State| state.catalog.get(partition).and_then(|c| c.available.last().cloned());
    match k.status {
        PartitionStatus::PartitionAvailable => {
            e.reason = Reason::Built;
            let label = state.runs.get(&*k.job_run_id).map_or("?", |r| &*r.job_label);
            e.message =
                format!("built by {label} run {} in request {req} at seq {}", k.job_run_id, k.seq);
        }
        PartitionStatus::PartitionDelegated => {
            e.reason = Reason::Skipped;
            match producer(state) {
                Some((seq, run)) => {
                    let r = state.runs.get(&run);
                    let label = r.map_or("?", |r| &*r.job_label);
                    let by = r.map_or("?", |r| &*r.request);
                    e.job_run_id = run.to_string();
                    e.message = format!(
                        "skipped in request {req} at seq {} because it was AVAILABLE since seq {seq} (built by {label} run {run} in request {by})",
                        k.seq
                    );
                }
                None => e.message = format!("delegated in request {req} at seq {}", k.seq),
            }
        }
        PartitionStatus::PartitionFailed if k.message.starts_with("upstream ") => {
            e.reason = Reason::UpstreamFailed;
            e.message = format!("not built in request {req}: {} (seq {})", k.message, k.seq);
        }
        PartitionStatus::PartitionFailed => {
            e.reason = Reason::Failed;
            let run = state.runs.get(&k.job_run_id);
            e.exit_code = run.and_then(|r| r.exit_code);
            e.message = match run {
                Some(r) => format!(
                    "{} run {} failed in request {req} at seq {}: {}",
                    r.job_label, r.id, k.seq, r.message
                ),
                None => format!("failed in request {req} at seq {}: {}", k.seq, k.message),
            };
        }
        _ => {
            let open = state.requests.get(&req).is_some_and(|r| !r.is_terminal());
            e.reason = if open { Reason::Building } else { Reason::Failed };
            e.message = format!(
                "{} in request {req} since seq {}{}",
                crate::proto::PartitionStatus::as_str_name(&k.status)
                    .trim_start_matches("PARTITION_")
                    .to_lowercase(),
                k.seq,
                if open { "" } else { " (the request ended without it)" }
            );
        }
    }
    e
}

/// Per-label run statistics for `jobs`.
#[derive(Clone, Debug, PartialEq)]
pub struct JobStats {
    /// The job label.
    pub label: String,
    /// Runs scheduled (JOB_SKIPPED is not a run).
    pub runs: u64,
    /// Runs that completed.
    pub completed: u64,
    /// Runs that failed (a cancelled run counts in neither).
    pub failed: u64,
    /// completed / (completed + failed); `None` if neither.
    pub success_ratio: Option<f64>,
    /// Duration percentiles (RUNNING to terminal), nearest rank, in ms.
    pub p50_ms: Option<u64>,
    /// 95th percentile.
    pub p95_ms: Option<u64>,
}

/// The nearest-rank percentile of sorted values.
pub fn nearest_rank(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Duration of a run from RUNNING to its terminal event, in ms.
pub fn run_duration_ms(r: &crate::state::Run) -> Option<u64> {
    match (r.running, r.ended) {
        (Some((_, s)), Some((_, e))) => Some(((e - s).max(0) / 1_000_000) as u64),
        _ => None,
    }
}

/// Statistics per job label, sorted by label.
pub fn job_stats(state: &State) -> Vec<JobStats> {
    use std::collections::BTreeMap;
    let mut by: BTreeMap<&str, (u64, u64, u64, Vec<u64>)> = BTreeMap::new();
    for r in state.runs.values() {
        if r.status == crate::proto::JobStatus::JobSkipped {
            continue;
        }
        let e = by.entry(&*r.job_label).or_default();
        e.0 += 1;
        match r.status {
            crate::proto::JobStatus::JobCompleted => e.1 += 1,
            crate::proto::JobStatus::JobFailed => e.2 += 1,
            _ => {}
        }
        if matches!(
            r.status,
            crate::proto::JobStatus::JobCompleted | crate::proto::JobStatus::JobFailed
        ) && let Some(d) = run_duration_ms(r)
        {
            e.3.push(d);
        }
    }
    by.into_iter()
        .map(|(label, (runs, completed, failed, mut d))| {
            d.sort_unstable();
            JobStats {
                label: label.to_string(),
                runs,
                completed,
                failed,
                success_ratio: (completed + failed > 0)
                    .then(|| completed as f64 / (completed + failed) as f64),
                p50_ms: nearest_rank(&d, 50.0),
                p95_ms: nearest_rank(&d, 95.0),
            }
        })
        .collect()
}

/// Runs of a job label (skips excluded), newest first.
pub fn job_runs<'a>(state: &'a State, label: &str) -> Vec<&'a crate::state::Run> {
    let mut v: Vec<&crate::state::Run> = state
        .runs
        .values()
        .filter(|r| &*r.job_label == label && r.status != crate::proto::JobStatus::JobSkipped)
        .collect();
    v.sort_by_key(|r| std::cmp::Reverse(r.first_seq));
    v
}

/// A status's enum name without its prefix (`BUILD_REQUEST_FAILED` -> `FAILED`): how every view
/// names statuses.
pub fn short_status(name: &str) -> &str {
    for p in ["PARTITION_", "JOB_", "BUILD_REQUEST_"] {
        if let Some(s) = name.strip_prefix(p) {
            return s;
        }
    }
    name
}
