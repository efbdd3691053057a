//! The one fold: derived state as a pure function of the event log.
//!
//! [`State::apply`] is the only code that changes derived state. Replay, the live engine (through
//! [`crate::store::Store`]), `verify`, `status --at` and snapshots all call it. It is
//! deterministic: no clock, no I/O, no randomness; nothing depends on map order. Each call checks
//! that the event is a legal transition for its entity (DESIGN.md §2.3) *before* changing
//! anything, so a rejected event leaves the state as it was.
//!
//! Projections kept here: build requests, job runs, partition lifecycles per (request, ref), the
//! partition catalog (what `status` shows; the catalog rule is in [`CatalogEntry`]), and lineage
//! (per completed run: outputs, inputs with the run that produced each, times; per ref: the runs
//! that read it). Payloads (plans, configs, manifests) stay in the log; the state keeps the seq of
//! the event that holds each.

use std::collections::HashSet;
use std::sync::Arc;

use rustc_hash::{FxBuildHasher, FxHashMap};

use crate::proto::build_event::EventType;
use crate::proto::{
    BuildEvent, BuildRequestEvent, BuildRequestStatus, DelegationEvent, DepType, EngineEvent,
    EngineEventKind, JobEvent, JobFailureKind, JobGraphEvent, JobStatus, PartitionEvent,
    PartitionStatus, ProcessInfo,
};

/// An event that is not a legal transition: the entity, its state, and what the event asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("illegal event at seq {seq}: {entity}: {what}")]
pub struct Violation {
    /// Sequence number of the offending event.
    pub seq: u64,
    /// The entity, e.g. `job run 0192...` or `partition a/b in request 0192...`.
    pub entity: String,
    /// What is wrong, e.g. `JOB_SCHEDULED -> JOB_COMPLETED`.
    pub what: String,
}

/// An interned string (ids and refs): every copy in the state shares one allocation.
pub type Sym = Arc<str>;

/// Hands out one shared allocation per distinct string.
#[derive(Clone, Debug, Default)]
struct Interner {
    set: HashSet<Sym, FxBuildHasher>,
}

impl Interner {
    fn get(&mut self, s: &str) -> Sym {
        if let Some(x) = self.set.get(s) {
            return x.clone();
        }
        let x: Sym = Arc::from(s);
        self.set.insert(x.clone());
        x
    }
}

/// A build request as the log tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Build request id.
    pub id: Sym,
    /// Current status.
    pub status: BuildRequestStatus,
    /// The refs asked for, in order.
    pub requested: Vec<Sym>,
    /// Made with `--force`.
    pub force: bool,
    /// Digest of the graph file it was planned with (may be empty).
    pub graph_digest: String,
    /// Seq and timestamp (ns) of RECEIVED.
    pub received_seq: u64,
    /// Timestamp (ns) of RECEIVED.
    pub received_ts: i64,
    /// Seq and timestamp of the terminal event, once there is one.
    pub ended: Option<(u64, i64)>,
    /// The message of the latest request event that had one.
    pub message: String,
    /// Seq of the JobGraphEvent holding the plan.
    pub plan_seq: Option<u64>,
    /// Every status with the seq that set it.
    pub history: Vec<(BuildRequestStatus, u64)>,
    /// Job runs of this request, in the order they appeared.
    pub runs: Vec<Sym>,
    /// Runs SCHEDULED or RUNNING.
    pub live_runs: u32,
    /// Whether a run of this request was ever CANCELLED (a cancellation was under way).
    pub cancelling: bool,
}

impl Request {
    /// Whether no further event may name this request.
    pub fn is_terminal(&self) -> bool {
        is_terminal_request(self.status)
    }
}

/// Whether a partition lifecycle status is still open (REQUESTED, ANALYZED or BUILDING).
pub fn is_open(s: PartitionStatus) -> bool {
    matches!(
        s,
        PartitionStatus::PartitionRequested
            | PartitionStatus::PartitionAnalyzed
            | PartitionStatus::PartitionBuilding
    )
}

/// Whether a build request status is final.
pub fn is_terminal_request(s: BuildRequestStatus) -> bool {
    matches!(
        s,
        BuildRequestStatus::BuildRequestCompleted
            | BuildRequestStatus::BuildRequestFailed
            | BuildRequestStatus::BuildRequestCancelled
    )
}

/// An input a completed run read, as its manifest recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunInput {
    /// The input ref.
    pub partition: Sym,
    /// MATERIALIZE or QUERY.
    pub dep_type: DepType,
    /// The run that had made it AVAILABLE when this run was released (empty if none).
    pub producer_run: Sym,
}

/// A job run as the log tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// Job run id.
    pub id: Sym,
    /// The build request it belongs to.
    pub request: Sym,
    /// The job label.
    pub job_label: Sym,
    /// Current status.
    pub status: JobStatus,
    /// The partitions it produces.
    pub targets: Vec<Sym>,
    /// Attempt number (1 = first), 0 if not recorded.
    pub attempt: u32,
    /// Seq of its first event (SCHEDULED or SKIPPED): it holds the config.
    pub first_seq: u64,
    /// Timestamp (ns) of its first event.
    pub first_ts: i64,
    /// Seq and timestamp of RUNNING.
    pub running: Option<(u64, i64)>,
    /// Seq and timestamp of the terminal event.
    pub ended: Option<(u64, i64)>,
    /// Why it failed.
    pub failure: JobFailureKind,
    /// Exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The latest message.
    pub message: String,
    /// The process, as recorded on RUNNING (kept while the run is live).
    pub process: Option<ProcessInfo>,
    /// From the manifest of a completed run: start and end (unix seconds).
    pub manifest_times: Option<(i64, i64)>,
    /// From the manifest of a completed run: what it read.
    pub inputs: Vec<RunInput>,
    /// The job's version recorded on its first event (`Some("")`: the graph set none; `None`: not
    /// recorded, by an older databuild).
    pub version: Option<String>,
    /// Whether what this completed run built is stale, and why (kept while the run is the latest
    /// AVAILABLE instance of one of its outputs; see [`fresh`]).
    pub stale: Option<Stale>,
}

impl Run {
    /// Whether the run is SCHEDULED or RUNNING.
    pub fn is_live(&self) -> bool {
        matches!(self.status, JobStatus::JobScheduled | JobStatus::JobRunning)
    }
}

/// A partition's lifecycle within one build request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    /// Current status of the (request, ref) pair.
    pub status: PartitionStatus,
    /// Seq of the event that set it.
    pub seq: u64,
    /// The job run the event named (may be empty).
    pub job_run_id: Sym,
    /// The event's message.
    pub message: String,
}

/// One partition event as the catalog remembers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fact {
    /// The status it set.
    pub status: PartitionStatus,
    /// Its seq.
    pub seq: u64,
    /// The job run it named (may be empty).
    pub job_run_id: Sym,
    /// The build request that wrote it.
    pub build_request_id: Sym,
    /// Its message.
    pub message: String,
}

/// What `status` shows for a ref. **The catalog rule:** a ref's status is set by its latest
/// BUILDING, AVAILABLE or FAILED event that names a job run producing it, whichever request wrote
/// it; failing that, by its latest partition event other than DELEGATED. So a later skip or an
/// "upstream failed" mark never hides an older AVAILABLE.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CatalogEntry {
    /// The latest BUILDING/AVAILABLE/FAILED event naming a run.
    pub by_run: Option<Fact>,
    /// The latest event other than DELEGATED, while no event named a run (once one has, it
    /// decides, and this is not kept).
    pub latest: Option<Fact>,
    /// Every AVAILABLE instance: (seq, job run id), oldest first.
    pub available: Vec<(u64, Sym)>,
    /// Seq of the PARTITION_TAINTED that marked the latest AVAILABLE instance bad (cleared by the
    /// next AVAILABLE instance).
    pub tainted: Option<u64>,
}

impl CatalogEntry {
    /// The fact that decides the status.
    pub fn shown(&self) -> Option<&Fact> {
        self.by_run.as_ref().or(self.latest.as_ref())
    }

    /// The status `status` shows.
    pub fn status(&self) -> PartitionStatus {
        self.shown().map_or(PartitionStatus::PartitionUnknown, |f| f.status)
    }
}

/// An engine event, for audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineRecord {
    /// Its seq.
    pub seq: u64,
    /// Its kind.
    pub kind: EngineEventKind,
    /// Its message.
    pub message: String,
}

/// Derived state: everything the log says, as of `last_seq`.
///
/// The maps are hashed (ids are UUIDv7 strings with long shared prefixes, which make ordered maps
/// slow); nothing in the fold depends on their order, and every view that lists them sorts.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Build requests by id.
    pub requests: Table<Request>,
    /// Job runs by id.
    pub runs: Table<Run>,
    /// Partition lifecycles: by build request id, then by ref.
    keys: Table<FxHashMap<Sym, Key>>,
    /// The partition catalog by ref.
    pub catalog: Table<CatalogEntry>,
    /// Lineage, downstream: for each ref, the completed runs whose manifests list it as an input.
    pub readers: Table<Vec<Sym>>,
    /// Per job label, the completed runs that recorded a version (what a version change may make
    /// stale).
    pub versioned_runs: Table<Vec<Sym>>,
    /// Per job label, its latest recorded version and the seq that first recorded it.
    pub job_versions: FxHashMap<Sym, (String, u64)>,
    /// Engine events.
    pub engine: Vec<EngineRecord>,
    /// Seq of the last event applied (0: none).
    pub last_seq: u64,
    /// Timestamp of the last event applied.
    pub last_ts: i64,
    /// The previous event, if it was a DelegationEvent: (seq, request, ref).
    last_delegation: Option<(u64, Sym, Sym)>,
    /// Shared strings (derived; not part of what the state says).
    interner: Interner,
    /// Runs live and requests open as of the snapshot this state was loaded from (derived: what
    /// lets `live_runs` and `open_requests` avoid decoding every entry of the snapshot).
    snapshot_live_runs: Vec<Sym>,
    snapshot_open_requests: Vec<Sym>,
}

impl PartialEq for State {
    fn eq(&self, o: &State) -> bool {
        self.requests == o.requests
            && self.runs == o.runs
            && self.keys == o.keys
            && self.catalog == o.catalog
            && self.readers == o.readers
            && self.versioned_runs == o.versioned_runs
            && self.job_versions == o.job_versions
            && self.engine == o.engine
            && self.last_seq == o.last_seq
            && self.last_ts == o.last_ts
            && self.last_delegation == o.last_delegation
    }
}

impl Eq for State {}

fn enum_or<T: TryFrom<i32>>(
    v: i32,
    seq: u64,
    entity: &dyn Fn() -> String,
    what: &str,
) -> Result<T, Violation> {
    T::try_from(v).map_err(|_| Violation {
        seq,
        entity: entity(),
        what: format!("unknown {what} value {v}"),
    })
}

impl State {
    /// An empty state.
    pub fn new() -> State {
        State::default()
    }

    /// Makes room for the projections of about `events` more events, so folding a long log does
    /// not rehash its maps over and over. The ratios are typical of builds (a request is a few
    /// dozen events, a run about eight); a wrong guess only costs memory or a rehash.
    pub fn reserve_for(&mut self, events: u64) {
        let n = usize::try_from(events).unwrap_or(usize::MAX).min(1 << 26);
        self.requests.reserve(n / 32);
        self.runs.reserve(n / 8);
        self.keys.reserve(n / 32);
        self.catalog.reserve(n / 8);
        self.readers.reserve(n / 16);
        self.versioned_runs.reserve(n / 1024);
        self.interner.set.reserve(n / 3);
    }

    /// The catalog status of a ref (`PARTITION_UNKNOWN` if the log never saw it).
    pub fn partition_status(&self, partition: &str) -> PartitionStatus {
        self.catalog.get(partition).map_or(PartitionStatus::PartitionUnknown, CatalogEntry::status)
    }

    /// Whether the catalog shows the ref AVAILABLE.
    pub fn is_available(&self, partition: &str) -> bool {
        self.partition_status(partition) == PartitionStatus::PartitionAvailable
    }

    /// Applies the event at `seq`. On a violation nothing is changed.
    pub fn apply(&mut self, seq: u64, ev: &BuildEvent) -> Result<(), Violation> {
        if seq != self.last_seq + 1 {
            return Err(Violation {
                seq,
                entity: "log".into(),
                what: format!("seq {seq} applied after {}", self.last_seq),
            });
        }
        let Some(body) = &ev.event_type else {
            return Err(Violation {
                seq,
                entity: "event".into(),
                what: "unknown or missing event type".into(),
            });
        };
        let req = ev.build_request_id.as_str();
        // A taint is recorded without a build request (checked in `taint_event`).
        let taint = matches!(body, EventType::PartitionEvent(e)
            if e.status == PartitionStatus::PartitionTainted as i32);
        if !matches!(body, EventType::EngineEvent(_)) && !taint {
            self.check_request_open(seq, req)?;
        }
        match body {
            EventType::BuildRequestEvent(e) => self.request_event(seq, ev.timestamp, req, e)?,
            EventType::PartitionEvent(e) => self.partition_event(seq, req, e)?,
            EventType::JobEvent(e) => self.job_event(seq, ev.timestamp, req, e)?,
            EventType::DelegationEvent(e) => self.delegation_event(seq, req, e)?,
            EventType::JobGraphEvent(e) => self.job_graph_event(seq, req, e)?,
            EventType::EngineEvent(e) => self.engine_event(seq, e)?,
        }
        if !matches!(body, EventType::DelegationEvent(_)) {
            self.last_delegation = None;
        }
        self.last_seq = seq;
        self.last_ts = ev.timestamp;
        Ok(())
    }

    fn check_request_open(&self, seq: u64, req: &str) -> Result<(), Violation> {
        if req.is_empty() {
            return Err(Violation {
                seq,
                entity: "event".into(),
                what: "no build request id".into(),
            });
        }
        if let Some(r) = self.requests.get(req)
            && r.is_terminal()
        {
            return Err(Violation {
                seq,
                entity: format!("build request {req}"),
                what: format!("event after terminal {}", r.status.as_str_name()),
            });
        }
        Ok(())
    }

    fn request_event(
        &mut self,
        seq: u64,
        ts: i64,
        req: &str,
        e: &BuildRequestEvent,
    ) -> Result<(), Violation> {
        use BuildRequestStatus as S;
        let entity = || format!("build request {req}");
        let to: S = enum_or(e.status, seq, &entity, "build request status")?;
        let bad = |what: String| Violation { seq, entity: entity(), what };
        let Some(r) = self.requests.get(req) else {
            if to != S::BuildRequestReceived {
                return Err(bad(format!("first event is {}, not RECEIVED", to.as_str_name())));
            }
            if e.requested_partitions.is_empty()
                || e.requested_partitions.iter().any(|p| p.str.is_empty())
            {
                return Err(bad("RECEIVED without requested partitions".into()));
            }
            let id = self.interner.get(req);
            let requested =
                e.requested_partitions.iter().map(|p| self.interner.get(&p.str)).collect();
            self.requests.insert(
                id.clone(),
                Request {
                    id,
                    status: to,
                    requested,
                    force: e.force,
                    graph_digest: e.graph_digest.clone(),
                    received_seq: seq,
                    received_ts: ts,
                    ended: None,
                    message: e.message.clone(),
                    plan_seq: None,
                    history: vec![(to, seq)],
                    runs: Vec::new(),
                    live_runs: 0,
                    cancelling: false,
                },
            );
            return Ok(());
        };
        let from = r.status;
        let legal = match to {
            S::BuildRequestPlanning => from == S::BuildRequestReceived,
            S::BuildRequestAnalysisCompleted => {
                from == S::BuildRequestPlanning && r.plan_seq.is_some()
            }
            S::BuildRequestExecuting => from == S::BuildRequestAnalysisCompleted,
            S::BuildRequestCompleted => from == S::BuildRequestExecuting,
            S::BuildRequestFailed | S::BuildRequestCancelled => true,
            S::BuildRequestReceived | S::BuildRequestUnknown => false,
        };
        if !legal {
            return Err(bad(format!("{} -> {}", from.as_str_name(), to.as_str_name())));
        }
        if is_terminal_request(to) {
            if r.live_runs > 0 {
                return Err(bad(format!(
                    "{} while {} job runs are live",
                    to.as_str_name(),
                    r.live_runs
                )));
            }
            if let Some((p, k)) = self.open_key(req) {
                return Err(bad(format!(
                    "{} while partition {p} is still {}",
                    to.as_str_name(),
                    k.status.as_str_name()
                )));
            }
            if to == S::BuildRequestCompleted
                && let Some(p) = r.requested.iter().find(|p| !self.is_available(p))
            {
                return Err(bad(format!("COMPLETED but requested partition {p} is not AVAILABLE")));
            }
        }
        let Some(r) = self.requests.get_mut(req) else {
            return Err(bad("unknown build request".into()));
        };
        r.status = to;
        r.history.push((to, seq));
        if !e.message.is_empty() {
            r.message = e.message.clone();
        }
        if is_terminal_request(to) {
            r.ended = Some((seq, ts));
        }
        Ok(())
    }

    /// The first ref (in order) of `req` still REQUESTED, ANALYZED or BUILDING.
    fn open_key<'a>(&'a self, req: &str) -> Option<(&'a Sym, &'a Key)> {
        self.keys.get(req)?.iter().filter(|(_, k)| is_open(k.status)).min_by(|a, b| a.0.cmp(b.0))
    }

    /// The lifecycle of `partition` in request `req`.
    pub fn key(&self, req: &str, partition: &str) -> Option<&Key> {
        self.keys.get(req)?.get(partition)
    }

    /// Partition lifecycles of one request, sorted by ref.
    pub fn keys_of(&self, req: &str) -> Vec<(&Sym, &Key)> {
        let mut v: Vec<(&Sym, &Key)> =
            self.keys.get(req).map(|m| m.iter().collect()).unwrap_or_default();
        v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// Every request's lifecycle of `partition`: (request id, key), in no particular order.
    pub fn keys_for<'a>(
        &'a self,
        partition: &'a str,
    ) -> impl Iterator<Item = (&'a Sym, &'a Key)> + 'a {
        self.keys.iter().filter_map(move |(req, m)| m.get(partition).map(|k| (req, k)))
    }

    /// Every ref the catalog has seen, sorted.
    pub fn partitions(&self) -> Vec<&Sym> {
        let mut v: Vec<&Sym> = self.catalog.keys().collect();
        v.sort_unstable();
        v
    }

    fn job_graph_event(
        &mut self,
        seq: u64,
        req: &str,
        _e: &JobGraphEvent,
    ) -> Result<(), Violation> {
        let entity = || format!("build request {req}");
        let Some(r) = self.requests.get_mut(req) else {
            return Err(Violation {
                seq,
                entity: entity(),
                what: "JobGraphEvent for an unknown request".into(),
            });
        };
        if r.status != BuildRequestStatus::BuildRequestPlanning || r.plan_seq.is_some() {
            return Err(Violation {
                seq,
                entity: entity(),
                what: format!(
                    "JobGraphEvent while {} (once, while PLANNING)",
                    r.status.as_str_name()
                ),
            });
        }
        r.plan_seq = Some(seq);
        Ok(())
    }

    fn delegation_event(
        &mut self,
        seq: u64,
        req: &str,
        e: &DelegationEvent,
    ) -> Result<(), Violation> {
        let part = e.partition_ref.as_ref().map(|p| p.str.as_str()).unwrap_or("");
        let entity = || format!("delegation of {part} in request {req}");
        let bad = |what: &str| Violation { seq, entity: entity(), what: what.to_string() };
        if !self.requests.contains_key(req) {
            return Err(bad("unknown build request"));
        }
        if part.is_empty() {
            return Err(bad("no partition ref"));
        }
        if !self.requests.contains_key(e.delegated_to_build_request_id.as_str()) {
            return Err(bad("delegated to an unknown build request"));
        }
        self.last_delegation = Some((seq, self.interner.get(req), self.interner.get(part)));
        Ok(())
    }

    fn partition_event(
        &mut self,
        seq: u64,
        req: &str,
        e: &PartitionEvent,
    ) -> Result<(), Violation> {
        use PartitionStatus as P;
        let part = e.partition_ref.as_ref().map(|p| p.str.as_str()).unwrap_or("");
        let entity = || format!("partition {part} in request {req}");
        let to: P = enum_or(e.status, seq, &entity, "partition status")?;
        let bad = |what: String| Violation { seq, entity: entity(), what };
        if part.is_empty() {
            return Err(bad("no partition ref".into()));
        }
        if to == P::PartitionTainted {
            return self.taint_event(seq, req, part, e);
        }
        if !self.requests.contains_key(req) {
            return Err(bad("unknown build request".into()));
        }
        let from = self.key(req, part).map(|k| k.status);
        let legal = match (from, to) {
            (None, P::PartitionRequested | P::PartitionAnalyzed | P::PartitionDelegated) => true,
            (
                Some(P::PartitionRequested),
                P::PartitionAnalyzed | P::PartitionDelegated | P::PartitionFailed,
            ) => true,
            (
                Some(P::PartitionAnalyzed),
                P::PartitionBuilding | P::PartitionDelegated | P::PartitionFailed,
            ) => true,
            (
                Some(P::PartitionBuilding),
                P::PartitionAvailable | P::PartitionFailed | P::PartitionBuilding,
            ) => true,
            // Resuming after an engine stop; the request is non-terminal (checked in `apply`).
            (Some(P::PartitionFailed), P::PartitionBuilding | P::PartitionDelegated) => true,
            // The live request it was delegated to could not build it.
            (Some(P::PartitionDelegated), P::PartitionFailed) => true,
            _ => false,
        };
        if !legal {
            let from = from.map_or("(none)", |f| f.as_str_name());
            return Err(bad(format!("{from} -> {}", to.as_str_name())));
        }
        let run_id = e.job_run_id.as_str();
        match (to, run_id.is_empty()) {
            (P::PartitionBuilding | P::PartitionAvailable, true) => {
                return Err(bad(format!("{} names no job run", to.as_str_name())));
            }
            (P::PartitionBuilding | P::PartitionAvailable | P::PartitionFailed, false) => {
                let Some(run) = self.runs.get(run_id) else {
                    return Err(bad(format!(
                        "{} names unknown job run {run_id}",
                        to.as_str_name()
                    )));
                };
                if &*run.request != req || !run.targets.iter().any(|t| &**t == part) {
                    return Err(bad(format!(
                        "job run {run_id} of this request does not produce it"
                    )));
                }
                let ok = match to {
                    P::PartitionBuilding => run.status == JobStatus::JobRunning,
                    P::PartitionAvailable => run.status == JobStatus::JobCompleted,
                    _ => matches!(run.status, JobStatus::JobFailed | JobStatus::JobCancelled),
                };
                if !ok {
                    return Err(bad(format!(
                        "{} while job run {run_id} is {}",
                        to.as_str_name(),
                        run.status.as_str_name()
                    )));
                }
            }
            (_, false) => return Err(bad(format!("{} names a job run", to.as_str_name()))),
            _ => {}
        }
        if to == P::PartitionDelegated {
            let adjacent = self
                .last_delegation
                .as_ref()
                .is_some_and(|(s, r, p)| *s + 1 == seq && &**r == req && &**p == part);
            if !adjacent {
                return Err(bad("DELEGATED without its DelegationEvent just before it".into()));
            }
        }
        let (run_sym, req_sym, part_sym) =
            (self.interner.get(run_id), self.interner.get(req), self.interner.get(part));
        let fact = || Fact {
            status: to,
            seq,
            job_run_id: run_sym.clone(),
            build_request_id: req_sym.clone(),
            message: e.message.clone(),
        };
        let entry = self.catalog.or_default(part_sym.clone());
        let new_instance = !run_id.is_empty() && to == P::PartitionAvailable;
        if !run_id.is_empty() {
            if to == P::PartitionAvailable {
                entry.available.push((seq, run_sym.clone()));
                entry.tainted = None;
            }
            entry.by_run = Some(fact());
            entry.latest = None;
        } else if to != P::PartitionDelegated && entry.by_run.is_none() {
            entry.latest = Some(fact());
        }
        let key = Key { status: to, seq, job_run_id: run_sym.clone(), message: e.message.clone() };
        self.keys.or_default(req_sym).insert(part_sym.clone(), key);
        if new_instance {
            self.new_instance(seq, &part_sym, &run_sym);
        }
        Ok(())
    }

    fn job_event(&mut self, seq: u64, ts: i64, req: &str, e: &JobEvent) -> Result<(), Violation> {
        use JobStatus as J;
        let id = e.job_run_id.as_str();
        let entity = || format!("job run {id}");
        let to: J = enum_or(e.status, seq, &entity, "job status")?;
        let failure: JobFailureKind = enum_or(e.failure, seq, &entity, "failure kind")?;
        let bad = |what: String| Violation { seq, entity: entity(), what };
        if id.is_empty() {
            return Err(bad("no job run id".into()));
        }
        let Some(r) = self.requests.get(req) else {
            return Err(bad(format!("unknown build request {req}")));
        };
        let executing = r.status == BuildRequestStatus::BuildRequestExecuting;
        let Some(run) = self.runs.get(id) else {
            let legal = match to {
                J::JobScheduled => executing,
                J::JobSkipped => {
                    !r.is_terminal() && r.status != BuildRequestStatus::BuildRequestReceived
                }
                _ => false,
            };
            if !legal {
                return Err(bad(format!(
                    "first event is {} while request is {}",
                    to.as_str_name(),
                    r.status.as_str_name()
                )));
            }
            let label = e.job_label.as_ref().map(|l| l.label.as_str()).unwrap_or("");
            if label.is_empty() || e.target_partitions.is_empty() {
                return Err(bad(format!("{} without a job label and targets", to.as_str_name())));
            }
            let id_sym = self.interner.get(id);
            let run = Run {
                id: id_sym.clone(),
                request: self.interner.get(req),
                job_label: self.interner.get(label),
                status: to,
                targets: e.target_partitions.iter().map(|p| self.interner.get(&p.str)).collect(),
                attempt: e.attempt,
                first_seq: seq,
                first_ts: ts,
                running: None,
                ended: (to == J::JobSkipped).then_some((seq, ts)),
                failure,
                exit_code: None,
                message: e.message.clone(),
                process: None,
                manifest_times: None,
                inputs: Vec::new(),
                version: e.version.clone(),
                stale: None,
            };
            let label_sym = run.job_label.clone();
            self.runs.insert(id_sym.clone(), run);
            if let Some(v) = &e.version {
                self.record_version(seq, &label_sym, v);
            }
            if let Some(r) = self.requests.get_mut(req) {
                r.runs.push(id_sym);
                if to == J::JobScheduled {
                    r.live_runs += 1;
                }
            }
            return Ok(());
        };
        if &*run.request != req {
            return Err(bad(format!(
                "event from request {req} for a run of request {}",
                run.request
            )));
        }
        let from = run.status;
        let legal = matches!(
            (from, to),
            (J::JobScheduled, J::JobRunning | J::JobFailed | J::JobCancelled)
                | (J::JobRunning, J::JobCompleted | J::JobFailed | J::JobCancelled)
        );
        if !legal || !executing {
            return Err(bad(format!(
                "{} -> {} (request {})",
                from.as_str_name(),
                to.as_str_name(),
                r.status.as_str_name()
            )));
        }
        if let Some(l) = &e.job_label
            && !l.label.is_empty()
            && *l.label != *run.job_label
        {
            return Err(bad(format!("job label {} differs from {}", l.label, run.job_label)));
        }
        if to == J::JobCompleted {
            let mut outs: Vec<&str> =
                e.manifests.iter().flat_map(|m| m.outputs.iter().map(|p| p.str.as_str())).collect();
            outs.sort_unstable();
            outs.dedup();
            let mut targets: Vec<&str> = run.targets.iter().map(|t| &**t).collect();
            targets.sort_unstable();
            targets.dedup();
            if outs != targets {
                return Err(bad("COMPLETED manifest outputs differ from the run's targets".into()));
            }
        }
        let Some(run) = self.runs.get_mut(id) else { return Err(bad("unknown job run".into())) };
        run.status = to;
        if !e.message.is_empty() {
            run.message = e.message.clone();
        }
        match to {
            J::JobRunning => {
                run.running = Some((seq, ts));
                run.process = e.process.clone();
            }
            _ => {
                run.ended = Some((seq, ts));
                // Only a live run's process matters (to reconcile after a crash).
                run.process = None;
                run.failure = failure;
                if e.exit_code != 0
                    || to == J::JobCompleted
                    || failure == JobFailureKind::JobFailureExitNonzero
                {
                    run.exit_code = Some(e.exit_code);
                }
            }
        }
        let mut read: Vec<Sym> = Vec::new();
        if to == J::JobCompleted {
            let m = e.manifests.first();
            run.manifest_times = m.map(|m| (m.start_time, m.end_time));
            let interner = &mut self.interner;
            let mut inputs = Vec::new();
            for i in e.manifests.iter().flat_map(|m| m.inputs.iter()) {
                let dep = DepType::try_from(i.dep_type).unwrap_or(DepType::Query);
                let producer = interner.get(&i.job_run_id);
                for p in &i.outputs {
                    inputs.push(RunInput {
                        partition: interner.get(&p.str),
                        dep_type: dep,
                        producer_run: producer.clone(),
                    });
                }
            }
            run.inputs = inputs;
            read = run.inputs.iter().map(|i| i.partition.clone()).collect();
            read.sort_unstable();
            read.dedup();
        }
        if let Some(r) = self.requests.get_mut(req) {
            r.cancelling |= to == J::JobCancelled;
            if !matches!(to, J::JobRunning) {
                r.live_runs = r.live_runs.saturating_sub(1);
            }
        }
        if !read.is_empty() {
            let id_sym = self.interner.get(id);
            for p in read {
                self.readers.or_default(p).push(id_sym.clone());
            }
        }
        if to == J::JobCompleted
            && let Some(run) = self.runs.get(id)
            && run.version.is_some()
        {
            let (label, id_sym) = (run.job_label.clone(), run.id.clone());
            self.versioned_runs.or_default(label).push(id_sym);
        }
        Ok(())
    }

    fn engine_event(&mut self, seq: u64, e: &EngineEvent) -> Result<(), Violation> {
        let kind: EngineEventKind =
            enum_or(e.kind, seq, &|| "engine".to_string(), "engine event kind")?;
        self.engine.push(EngineRecord { seq, kind, message: e.message.clone() });
        Ok(())
    }

    /// Runs that are SCHEDULED or RUNNING, oldest first.
    pub fn live_runs(&self) -> Vec<&Run> {
        // A run changed since the snapshot is in memory; one live then and untouched since is in
        // the snapshot's list (a terminal run never becomes live again).
        let mut v: Vec<&Run> = self.runs.in_memory().filter(|r| r.is_live()).collect();
        v.extend(
            self.snapshot_live_runs
                .iter()
                .filter(|id| !self.runs.is_in_memory(id))
                .filter_map(|id| self.runs.get(id))
                .filter(|r| r.is_live()),
        );
        v.sort_by_key(|r| r.first_seq);
        v
    }

    /// Requests that are not terminal, oldest first.
    pub fn open_requests(&self) -> Vec<&Request> {
        let mut v: Vec<&Request> = self.requests.in_memory().filter(|r| !r.is_terminal()).collect();
        v.extend(
            self.snapshot_open_requests
                .iter()
                .filter(|id| !self.requests.is_in_memory(id))
                .filter_map(|id| self.requests.get(id))
                .filter(|r| !r.is_terminal()),
        );
        v.sort_by_key(|r| r.received_seq);
        v
    }
}

pub mod fresh;
pub mod snapshot;
pub mod table;

pub use fresh::{Stale, StaleReason};

pub use table::Table;

#[cfg(test)]
mod tests;
