//! Freshness in the fold: taints, recorded job versions, and which AVAILABLE partitions are stale
//! (CONTRACT §13).
//!
//! Staleness belongs to an **instance** (the completed run that made a partition AVAILABLE) and is
//! kept on the [`Run`], maintained incrementally: it is recomputed from the run's own MATERIALIZE
//! inputs (the instance of each it read, as its manifest recorded) and its recorded version, and
//! only when one of those changes: a new AVAILABLE instance of an input, a taint of an input, an
//! input's own staleness flipping, or a new version recorded for the job. A change that flips a
//! run's staleness moves on to the runs that read its outputs. So a query reads a flag, never walks
//! lineage, and `status --at` sees past staleness because it is folded like everything else.
//!
//! The rules, for the run R behind a partition's latest AVAILABLE instance:
//! - `input X rebuilt at seq N`: X has a newer AVAILABLE instance (at seq N) than the one R read.
//! - `job version A -> B`: R recorded version A, and the latest version recorded for its job is B
//!   (recorded at seq N).
//! - `upstream X is tainted` / `upstream X is stale`: X's latest AVAILABLE instance is tainted (at
//!   seq N) or stale (since seq N).
//!
//! QUERY inputs never make anything stale: they are recorded for lineage, never built or waited
//! for, so `build --stale` could not make them fresh either.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use super::*;

/// Why an AVAILABLE partition is stale.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StaleReason {
    /// An input has a newer AVAILABLE instance (at `seq`) than the one the run read.
    Rebuilt {
        /// The input.
        input: Sym,
        /// Seq of the newer instance's AVAILABLE.
        seq: u64,
    },
    /// The job's latest recorded version (since `seq`) differs from the run's.
    Version {
        /// The version the run was built with ("" = none).
        from: String,
        /// The job's latest recorded version ("" = none).
        to: String,
        /// Seq of the event that first recorded `to`.
        seq: u64,
    },
    /// An input's latest instance is itself stale (since `seq`).
    UpstreamStale {
        /// The input.
        input: Sym,
        /// Since when the input is stale.
        seq: u64,
    },
    /// An input's latest instance is tainted (at `seq`).
    UpstreamTainted {
        /// The input.
        input: Sym,
        /// Seq of the taint.
        seq: u64,
    },
}

impl StaleReason {
    /// The text users see: `input X rebuilt at seq N`, `job version 1 -> 2`, `upstream X is
    /// stale`, `upstream X is tainted`.
    pub fn text(&self) -> String {
        let v = |s: &str| if s.is_empty() { "none".to_string() } else { s.to_string() };
        match self {
            StaleReason::Rebuilt { input, seq } => format!("input {input} rebuilt at seq {seq}"),
            StaleReason::Version { from, to, .. } => {
                format!("job version {} -> {}", v(from), v(to))
            }
            StaleReason::UpstreamStale { input, .. } => format!("upstream {input} is stale"),
            StaleReason::UpstreamTainted { input, .. } => format!("upstream {input} is tainted"),
        }
    }

    /// The seq of the event that is the evidence.
    pub fn seq(&self) -> u64 {
        match self {
            StaleReason::Rebuilt { seq, .. }
            | StaleReason::Version { seq, .. }
            | StaleReason::UpstreamStale { seq, .. }
            | StaleReason::UpstreamTainted { seq, .. } => *seq,
        }
    }
}

/// An instance's staleness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stale {
    /// The seq at which it became stale (kept while it stays stale).
    pub since: u64,
    /// Why, in a fixed order: version first, then inputs in the order the run read them.
    pub reasons: Vec<StaleReason>,
}

/// How often one run may be recomputed while one event settles. Lineage is acyclic for any log
/// databuild writes; a hand-made log whose instances read each other in a ring still settles in a
/// bounded, deterministic number of steps.
const MAX_VISITS: u32 = 8;

impl State {
    /// The staleness of `partition` if the catalog shows it AVAILABLE and it is stale.
    pub fn stale(&self, partition: &str) -> Option<&Stale> {
        let c = self.catalog.get(partition)?;
        if c.status() != PartitionStatus::PartitionAvailable {
            return None;
        }
        self.instance_stale(c)
    }

    /// The staleness of the latest AVAILABLE instance of `c`, whatever its status is now.
    pub fn instance_stale<'a>(&'a self, c: &'a CatalogEntry) -> Option<&'a Stale> {
        let (_, run) = c.available.last()?;
        self.runs.get(run)?.stale.as_ref()
    }

    /// The seq of the taint on `partition`'s latest instance, if it is tainted now.
    pub fn tainted(&self, partition: &str) -> Option<u64> {
        let c = self.catalog.get(partition)?;
        (c.status() == PartitionStatus::PartitionTainted).then_some(c.tainted).flatten()
    }

    /// The latest version recorded for job `label`: (version, seq that first recorded it).
    pub fn job_version(&self, label: &str) -> Option<(&str, u64)> {
        self.job_versions.get(label).map(|(v, s)| (v.as_str(), *s))
    }

    /// Whether `run` made the latest AVAILABLE instance of one of its targets.
    pub fn is_current(&self, run: &Run) -> bool {
        run.targets.iter().any(|t| {
            self.catalog.get(t).and_then(|c| c.available.last()).is_some_and(|(_, r)| *r == run.id)
        })
    }

    /// Why the instance `run` built is stale now (empty: fresh), from its inputs and version.
    pub fn reasons_of(&self, run: &Run) -> Vec<StaleReason> {
        let current = self.job_version(&run.job_label);
        self.reasons_with(run, current, |r| {
            self.runs.get(r).and_then(|r| r.stale.as_ref()).map(|s| s.since)
        })
    }

    /// The staleness rules (CONTRACT §13), once for the fold and for views that lay the graph
    /// file's versions over the log's: `current` is the job's version now (and the seq that
    /// recorded it, 0 if only the graph file says), `stale_since` whether the instance a run built
    /// is stale, and since when.
    pub fn reasons_with(
        &self,
        run: &Run,
        current: Option<(&str, u64)>,
        stale_since: impl Fn(&Sym) -> Option<u64>,
    ) -> Vec<StaleReason> {
        let mut out = Vec::new();
        if let (Some(built), Some((cur, seq))) = (&run.version, current)
            && built != cur
        {
            out.push(StaleReason::Version { from: built.clone(), to: cur.to_string(), seq });
        }
        let mut seen: Vec<&Sym> = Vec::new();
        for i in &run.inputs {
            if i.dep_type != DepType::Materialize
                || i.producer_run.is_empty()
                || seen.contains(&&i.partition)
            {
                continue;
            }
            seen.push(&i.partition);
            let Some(c) = self.catalog.get(&i.partition) else { continue };
            let Some((lseq, lrun)) = c.available.last() else { continue };
            if *lrun != i.producer_run {
                out.push(StaleReason::Rebuilt { input: i.partition.clone(), seq: *lseq });
            }
            if let Some(t) = c.tainted {
                out.push(StaleReason::UpstreamTainted { input: i.partition.clone(), seq: t });
            } else if let Some(since) = stale_since(lrun) {
                out.push(StaleReason::UpstreamStale { input: i.partition.clone(), seq: since });
            }
        }
        out
    }

    /// A TAINTED partition event: recorded without a build request, it names the run whose
    /// AVAILABLE instance it marks bad, and that must be the one the catalog shows AVAILABLE.
    pub(super) fn taint_event(
        &mut self,
        seq: u64,
        req: &str,
        part: &str,
        e: &PartitionEvent,
    ) -> Result<(), Violation> {
        let bad =
            |what: String| Violation { seq, entity: format!("partition {part} (taint)"), what };
        if !req.is_empty() {
            return Err(bad(format!(
                "PARTITION_TAINTED names build request {req}; a taint names none"
            )));
        }
        let run_id = e.job_run_id.as_str();
        let shown = self.catalog.get(part).and_then(|c| c.shown());
        match shown {
            Some(f)
                if f.status == PartitionStatus::PartitionAvailable && *f.job_run_id == *run_id => {}
            Some(f) => {
                return Err(bad(format!(
                    "PARTITION_TAINTED of run '{run_id}' while it is {} (run '{}')",
                    f.status.as_str_name(),
                    f.job_run_id
                )));
            }
            None => return Err(bad("PARTITION_TAINTED of a partition never built".into())),
        }
        let (run_sym, part_sym, none) =
            (self.interner.get(run_id), self.interner.get(part), self.interner.get(""));
        let entry = self.catalog.or_default(part_sym.clone());
        entry.by_run = Some(Fact {
            status: PartitionStatus::PartitionTainted,
            seq,
            job_run_id: run_sym,
            build_request_id: none,
            message: e.message.clone(),
        });
        entry.latest = None;
        entry.tainted = Some(seq);
        let queue = self.readers.get(&part_sym).cloned().unwrap_or_default();
        self.settle(seq, queue.into());
        Ok(())
    }

    /// `run` made `part` AVAILABLE at `seq`: its instance's staleness, then its readers'.
    pub(super) fn new_instance(&mut self, seq: u64, part: &Sym, run: &Sym) {
        let mut queue: VecDeque<Sym> = VecDeque::from([run.clone()]);
        queue.extend(self.readers.get(part).into_iter().flatten().cloned());
        self.settle(seq, queue);
    }

    /// Version `v` of job `label` recorded at `seq`: if it changed, what the job built settles.
    pub(super) fn record_version(&mut self, seq: u64, label: &Sym, v: &str) {
        match self.job_versions.get(label) {
            Some((cur, _)) if cur == v => return,
            _ => {}
        }
        self.job_versions.insert(label.clone(), (v.to_string(), seq));
        let queue = self.versioned_runs.get(label).cloned().unwrap_or_default();
        self.settle(seq, queue.into());
    }

    /// Recomputes the staleness of the runs in `queue` (those still current), and of the readers
    /// of a run's outputs whenever its staleness flips.
    fn settle(&mut self, seq: u64, mut queue: VecDeque<Sym>) {
        let mut visits: FxHashMap<Sym, u32> = FxHashMap::default();
        while let Some(id) = queue.pop_front() {
            let n = visits.entry(id.clone()).or_insert(0);
            if *n >= MAX_VISITS {
                continue;
            }
            *n += 1;
            let Some(run) = self.runs.get(&id) else { continue };
            if run.status != JobStatus::JobCompleted || !self.is_current(run) {
                continue;
            }
            let reasons = self.reasons_of(run);
            let new = match (&run.stale, reasons.is_empty()) {
                (_, true) => None,
                (Some(old), false) => Some(Stale { since: old.since, reasons }),
                (None, false) => Some(Stale { since: seq, reasons }),
            };
            if new == run.stale {
                continue;
            }
            let flipped = new.is_some() != run.stale.is_some();
            let targets = run.targets.clone();
            if let Some(r) = self.runs.get_mut(&id) {
                r.stale = new;
            }
            if flipped {
                for t in &targets {
                    let current = self
                        .catalog
                        .get(t)
                        .and_then(|c| c.available.last())
                        .is_some_and(|(_, r)| *r == id);
                    if current {
                        queue.extend(self.readers.get(t).into_iter().flatten().cloned());
                    }
                }
            }
        }
    }
}
