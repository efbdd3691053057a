//! Staleness as a command sees it: the fold's (log-only) answer, plus the graph file's versions.
//!
//! The fold ([`crate::state::fresh`]) knows a job's version once a run or skip recorded it. A user
//! who has just changed `version` in the graph file expects `status`, `explain` and `build --stale`
//! to see it before anything ran, so [`Freshness::with_graph`] lays the graph's versions over the
//! fold: for each job whose graph version differs from its latest recorded one, the instances that
//! job built, and what was built from them (following the readers index), are recomputed; every
//! other partition reads the fold's flag. With no such job (the usual case) this is the fold's
//! answer and costs nothing. `status --at` uses [`Freshness::of_log`]: the past from the log alone.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};

use crate::graph::Graph;
use crate::proto::PartitionStatus;
use crate::state::{Run, Stale, StaleReason, State, Sym};

/// The staleness of partitions, from a state and optionally the graph file's versions.
#[derive(Debug)]
pub struct Freshness<'s> {
    state: &'s State,
    /// Jobs whose graph version differs from their latest recorded version: label -> version.
    changed: HashMap<String, String>,
    /// Current runs whose staleness the graph's versions may change.
    affected: HashSet<Sym>,
    memo: RefCell<HashMap<Sym, Option<Stale>>>,
}

impl<'s> Freshness<'s> {
    /// The log's answer alone (what `status --at` shows).
    pub fn of_log(state: &'s State) -> Freshness<'s> {
        Freshness {
            state,
            changed: HashMap::new(),
            affected: HashSet::new(),
            memo: RefCell::new(HashMap::new()),
        }
    }

    /// The log's answer with the versions of `graph` laid over it.
    pub fn with_graph(state: &'s State, graph: &Graph) -> Freshness<'s> {
        let mut f = Freshness::of_log(state);
        for j in &graph.jobs {
            let v = j.version.clone().unwrap_or_default();
            if let Some((cur, _)) = state.job_version(&j.label)
                && cur != v
            {
                f.changed.insert(j.label.clone(), v);
            }
        }
        if f.changed.is_empty() {
            return f;
        }
        // The runs of changed jobs, then everything that read their current outputs.
        let mut queue: VecDeque<Sym> = VecDeque::new();
        for label in f.changed.keys() {
            queue.extend(state.versioned_runs.get(label.as_str()).into_iter().flatten().cloned());
        }
        while let Some(id) = queue.pop_front() {
            let Some(run) = state.runs.get(&id) else { continue };
            if f.affected.contains(&id) || !state.is_current(run) {
                continue;
            }
            f.affected.insert(id.clone());
            for t in &run.targets {
                if current_run(state, t).is_some_and(|r| *r == id) {
                    queue.extend(state.readers.get(t).into_iter().flatten().cloned());
                }
            }
        }
        f
    }

    /// The state this view reads.
    pub fn state(&self) -> &'s State {
        self.state
    }

    /// Why `partition` is stale, if the catalog shows it AVAILABLE and it is.
    pub fn stale(&self, partition: &str) -> Option<Stale> {
        let c = self.state.catalog.get(partition)?;
        if c.status() != PartitionStatus::PartitionAvailable {
            return None;
        }
        let (_, run) = c.available.last()?;
        self.run_stale(run)
    }

    /// The staleness of the instance `run` built.
    fn run_stale(&self, id: &Sym) -> Option<Stale> {
        let run = self.state.runs.get(id)?;
        if !self.affected.contains(id) {
            return run.stale.clone();
        }
        if let Some(v) = self.memo.borrow().get(id) {
            return v.clone();
        }
        // A ring of instances (only in a hand-made log) reads as fresh while it is being computed.
        self.memo.borrow_mut().insert(id.clone(), None);
        let reasons = self.reasons(run);
        let v = (!reasons.is_empty())
            .then(|| Stale { since: run.stale.as_ref().map_or(0, |s| s.since), reasons });
        self.memo.borrow_mut().insert(id.clone(), v.clone());
        v
    }

    /// [`State::reasons_of`] with the graph's versions (a version known only from the graph file
    /// has seq 0: not yet in the log).
    fn reasons(&self, run: &Run) -> Vec<StaleReason> {
        let current = match self.changed.get(&*run.job_label) {
            Some(v) => Some((v.as_str(), 0)),
            None => self.state.job_version(&run.job_label),
        };
        self.state.reasons_with(run, current, |r| self.run_stale(r).map(|s| s.since))
    }
}

fn current_run<'a>(state: &'a State, partition: &str) -> Option<&'a Sym> {
    state.catalog.get(partition)?.available.last().map(|(_, r)| r)
}

/// What `databuild taint` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaintSpec {
    /// Exact refs (globs already matched against the log).
    pub refs: Vec<String>,
    /// Also every partition built from them, transitively, following lineage.
    pub downstream: bool,
    /// Why (recorded as the event's message; a default is used when empty).
    pub reason: String,
}

/// One partition a taint marks: its AVAILABLE instance, and through what it was reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taint {
    /// The ref.
    pub partition: String,
    /// The run that built the tainted instance.
    pub job_run_id: String,
    /// For `--downstream`: the tainted input it was built from (`None`: named by the user).
    pub via: Option<String>,
}

impl Taint {
    /// The message its PARTITION_TAINTED records.
    pub fn message(&self, reason: &str) -> String {
        let reason = if reason.trim().is_empty() { "tainted by `databuild taint`" } else { reason };
        match &self.via {
            None => reason.to_string(),
            Some(x) => format!("{reason} (built from tainted {x})"),
        }
    }
}

/// The partitions `spec` taints, in order: each named ref the catalog shows AVAILABLE, then (with
/// `downstream`) every AVAILABLE partition whose current instance was built by a run that read a
/// tainted instance, transitively. Each once.
pub fn taint_targets(state: &State, spec: &TaintSpec) -> Vec<Taint> {
    let mut out: Vec<Taint> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut queue: VecDeque<usize> = VecDeque::new();
    for r in &spec.refs {
        let Some(c) = state.catalog.get(r.as_str()) else { continue };
        let Some(f) = c.shown().filter(|f| f.status == PartitionStatus::PartitionAvailable) else {
            continue;
        };
        if seen.insert(r.clone()) {
            queue.push_back(out.len());
            out.push(Taint {
                partition: r.clone(),
                job_run_id: f.job_run_id.to_string(),
                via: None,
            });
        }
    }
    while spec.downstream
        && let Some(i) = queue.pop_front()
    {
        let (part, producer) = (out[i].partition.clone(), out[i].job_run_id.clone());
        let mut readers: Vec<&Sym> =
            state.readers.get(part.as_str()).into_iter().flatten().collect();
        readers.sort_unstable();
        readers.dedup();
        for id in readers {
            let Some(run) = state.runs.get(id) else { continue };
            if !run.inputs.iter().any(|x| *x.partition == *part && *x.producer_run == *producer) {
                continue;
            }
            for t in &run.targets {
                let shown = state.catalog.get(t).and_then(|c| c.shown().cloned());
                let available_here = shown.is_some_and(|f| {
                    f.status == PartitionStatus::PartitionAvailable && f.job_run_id == *id
                });
                if available_here && seen.insert(t.to_string()) {
                    queue.push_back(out.len());
                    out.push(Taint {
                        partition: t.to_string(),
                        job_run_id: id.to_string(),
                        via: Some(part.clone()),
                    });
                }
            }
        }
    }
    out
}
