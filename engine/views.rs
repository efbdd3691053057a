//! One JSON view per reading command (CONTRACT §5, §8, §11): the objects `status`, `builds`,
//! `builds ID`, `explain`, `lineage`, `jobs` and `replay` print with `--format json`, one per
//! line, and that the server's `/api/v1/...` endpoints answer as a JSON array. Both render the
//! same values from here, so the two cannot drift apart.
//!
//! Everything is a pure function of a folded [`State`] (plus a [`Reader`] where a view needs
//! event bodies, and the job output directory for `explain`'s last lines). Text rendering stays
//! with the CLI. Errors say what is wrong and what to do, as the CLI prints them (without its
//! `error: `), and tell bad input from an unknown id, label or ref ([`ViewError`]).

use std::collections::HashMap;
use std::path::Path;

use databuild_log::Reader;
use serde_json::{Value, json};

use crate::freshness::Freshness;
use crate::graph::Graph;
use crate::proto::build_event::EventType;
use crate::proto::{BuildEvent, DepType};
use crate::query::{self, Explanation, JobStats, LineageNode, Reason, StatusRow, Until};
use crate::refs;
use crate::state::{Request, Run, State};
use crate::store::StoreError;

/// Why a view has no answer.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// Bad input (the CLI exits 2; HTTP 400).
    #[error("{0}")]
    BadInput(String),
    /// A build id, job run id, job label or ref that the log (and graph) does not know (the CLI
    /// exits 2; HTTP 404 when it was named in the URL).
    #[error("{0}")]
    NotFound(String),
    /// The log could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug.
    #[error("{0}")]
    Internal(String),
}

// ---------------------------------------------------------------------------------------------
// status

/// The refs `status` shows for `typed` (brace ranges expanded, globs matched against the log; see
/// [`refs::match_globs`]). Empty `typed`: every partition; refs given but no glob matched:
/// none.
///
/// `fresh` says which AVAILABLE partitions are stale (now: the graph's versions laid over the
/// log's; in the past: the log alone); `glob_graph` tells a glob from a ref with `*` or `?`.
pub fn status_rows(
    fresh: &Freshness<'_>,
    typed: &[String],
    glob_graph: Option<&Graph>,
) -> Result<Vec<StatusRow>, ViewError> {
    let expanded = refs::expand(typed).map_err(ViewError::BadInput)?;
    let matched = refs::match_globs(fresh.state(), &expanded, glob_graph);
    // Globs that match nothing give no rows (not every row, as no refs would).
    Ok(if !typed.is_empty() && matched.is_empty() {
        Vec::new()
    } else {
        query::status_rows_with(fresh, &matched)
    })
}

/// One `status` line.
pub fn status_json(r: &StatusRow) -> Value {
    let mut v = serde_json::Map::new();
    v.insert("partitionRef".into(), r.partition.clone().into());
    v.insert("status".into(), r.status.as_str_name().into());
    if !r.job_run_id.is_empty() {
        v.insert("jobRunId".into(), r.job_run_id.clone().into());
    }
    if !r.build_request_id.is_empty() {
        v.insert("buildRequestId".into(), r.build_request_id.clone().into());
    }
    if r.seq > 0 {
        v.insert("seq".into(), r.seq.into());
    }
    v.insert("stale".into(), r.stale.is_some().into());
    if let Some(st) = &r.stale {
        let why: Vec<String> = st.reasons.iter().map(|x| x.text()).collect();
        v.insert("staleReasons".into(), why.into());
    }
    Value::Object(v)
}

/// `status [REF...] --format json` (see [`status_rows`]).
pub fn status(
    fresh: &Freshness<'_>,
    typed: &[String],
    glob_graph: Option<&Graph>,
) -> Result<Vec<Value>, ViewError> {
    Ok(status_rows(fresh, typed, glob_graph)?.iter().map(status_json).collect())
}

// ---------------------------------------------------------------------------------------------
// builds

/// Build requests in the order they were received.
pub fn requests(state: &State) -> Vec<&Request> {
    let mut reqs: Vec<&Request> = state.requests.values().collect();
    reqs.sort_by_key(|r| r.received_seq);
    reqs
}

/// One `builds` line.
pub fn request_json(r: &Request) -> Value {
    json!({
        "buildRequestId": r.id,
        "status": r.status.as_str_name(),
        "requestedPartitions": r.requested,
        "receivedSeq": r.received_seq,
        "receivedTime": r.received_ts / 1_000_000_000,
        "endedTime": r.ended.map(|(_, t)| t / 1_000_000_000),
        "force": r.force,
        "message": r.message,
    })
}

/// `builds --format json`.
pub fn builds(state: &State) -> Vec<Value> {
    requests(state).into_iter().map(request_json).collect()
}

/// The build request `typed` names (a whole id, a unique prefix or tail, or `last`).
pub fn request<'a>(state: &'a State, typed: &str) -> Result<&'a Request, ViewError> {
    let id = refs::request_id(state, typed)?;
    state.requests.get(id.as_str()).ok_or_else(|| {
        ViewError::NotFound(format!(
            "no build request {id} in the log; see `databuild builds` for the ids"
        ))
    })
}

/// `builds ID --format json`: the request with its jobs and partitions.
pub fn request_detail_json(state: &State, r: &Request) -> Value {
    let runs: Vec<&Run> = r.runs.iter().filter_map(|id| state.runs.get(id)).collect();
    let keys = state.keys_of(&r.id);
    let jobs: Vec<Value> = runs
        .iter()
        .map(|run| {
            json!({
                "jobRunId": run.id,
                "jobLabel": run.job_label,
                "status": run.status.as_str_name(),
                "targetPartitions": run.targets,
                "attempt": run.attempt,
                "message": run.message,
            })
        })
        .collect();
    let parts: Vec<Value> = keys
        .iter()
        .map(|(p, k)| json!({"partitionRef": p, "status": k.status.as_str_name(), "seq": k.seq, "jobRunId": k.job_run_id, "message": k.message}))
        .collect();
    json!({
        "buildRequestId": r.id,
        "status": r.status.as_str_name(),
        "requestedPartitions": r.requested,
        "force": r.force,
        "receivedTime": r.received_ts / 1_000_000_000,
        "endedTime": r.ended.map(|(_, t)| t / 1_000_000_000),
        "message": r.message,
        "jobs": jobs,
        "partitions": parts,
    })
}

/// `builds ID --format json` (one line).
pub fn build(state: &State, typed: &str) -> Result<Vec<Value>, ViewError> {
    let r = request(state, typed)?;
    Ok(vec![request_detail_json(state, r)])
}

// ---------------------------------------------------------------------------------------------
// explain

/// Lines of a failed run's output shown by `explain`.
pub const FAILED_TAIL_LINES: usize = 5;
/// At most this much of the end of a job's output is read for `explain` (a glance; `logs`
/// prints everything).
const TAIL_BYTES_MAX: u64 = 64 * 1024;
/// Bytes of one output line shown by `explain`; the rest is cut with a marker.
const LINE_BYTES_SHOWN: usize = 500;
/// Bytes read per step, backwards from the end.
const TAIL_CHUNK: u64 = 8 * 1024;

/// The last `n` non-empty lines of the file at `path`, reading backwards from its end in chunks
/// until there are enough lines or [`TAIL_BYTES_MAX`] bytes were read, so a huge output costs
/// one small read. Each line is cut to [`LINE_BYTES_SHOWN`] bytes with a "… (N bytes cut)"
/// marker ("at least N" when the line starts before what was read).
pub fn output_tail(path: &Path, n: usize) -> std::io::Result<Vec<String>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    while start > 0 && len - start < TAIL_BYTES_MAX {
        let step = TAIL_CHUNK.min(start).min(TAIL_BYTES_MAX - (len - start));
        start -= step;
        let mut chunk = vec![0u8; step as usize];
        f.read_exact_at(&mut chunk, start)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        // One more line than wanted: the first one may be cut by the window.
        let lines = buf.split(|&b| b == b'\n').filter(|l| !l.trim_ascii().is_empty()).count();
        if lines > n {
            break;
        }
    }
    let mut lines: Vec<(bool, &[u8])> = Vec::new();
    for (i, l) in buf.split(|&b| b == b'\n').enumerate() {
        if !l.trim_ascii().is_empty() {
            // The first piece starts before the window unless the window is the whole file.
            lines.push((i == 0 && start > 0, l));
        }
    }
    let keep = lines.len().saturating_sub(n);
    Ok(lines[keep..].iter().map(|&(partial, l)| cap_line(l, partial)).collect())
}

/// A line cut to [`LINE_BYTES_SHOWN`] bytes (on a character boundary), with a marker saying how
/// many bytes were left out.
fn cap_line(line: &[u8], partial: bool) -> String {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    let at_least = if partial { "at least " } else { "" };
    if text.len() <= LINE_BYTES_SHOWN {
        return if partial { format!("… {text}") } else { text.to_string() };
    }
    let mut end = LINE_BYTES_SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({at_least}{} bytes cut)", &text[..end], text.len() - end)
}

/// The refs `explain` takes from what was typed, before the log is read: brace ranges
/// expanded, each ref that is not a glob checked.
pub fn explain_typed(typed: &str) -> Result<Vec<String>, ViewError> {
    let refs =
        refs::expand(std::slice::from_ref(&typed.to_string())).map_err(ViewError::BadInput)?;
    for r in refs.iter().filter(|r| !refs::is_glob(r)) {
        crate::graph::check_ref(r).map_err(|e| ViewError::BadInput(format!("{e}{}", e.hint())))?;
    }
    Ok(refs)
}

/// The partitions `explain` explains: `expanded` (from [`explain_typed`]) with globs matched
/// against the log; an error if nothing is left.
pub fn explain_refs(
    state: &State,
    typed: &str,
    expanded: &[String],
    graph: Option<&Graph>,
) -> Result<Vec<String>, ViewError> {
    let refs = refs::match_globs(state, expanded, graph);
    if refs.is_empty() {
        return Err(ViewError::NotFound(format!(
            "'{typed}' matches no partition in the log; `databuild status` lists them"
        )));
    }
    Ok(refs)
}

/// The last lines of a failed run's output (stderr, else stdout) for `explain`; empty for
/// anything else.
pub fn explain_tail(logs_dir: &Path, e: &Explanation) -> Vec<String> {
    if e.reason == Reason::Failed && !e.job_run_id.is_empty() {
        let paths = crate::executor::output_paths(logs_dir, &e.job_run_id);
        let mut lines = Vec::new();
        for f in [&paths.stderr, &paths.stdout] {
            if let Ok(l) = output_tail(f, FAILED_TAIL_LINES) {
                lines = l;
                if !lines.is_empty() {
                    break;
                }
            }
        }
        lines
    } else {
        Vec::new()
    }
}

/// One `explain` line (`tail`: from [`explain_tail`]).
pub fn explain_json(e: &Explanation, tail: &[String]) -> Value {
    let mut v = serde_json::Map::new();
    v.insert("partitionRef".into(), e.partition.clone().into());
    v.insert("status".into(), e.status.as_str_name().into());
    v.insert("reason".into(), e.reason.as_str().into());
    v.insert("seq".into(), e.seq.into());
    if !e.job_run_id.is_empty() {
        v.insert("jobRunId".into(), e.job_run_id.clone().into());
    }
    if !e.build_request_id.is_empty() {
        v.insert("buildRequestId".into(), e.build_request_id.clone().into());
    }
    let mut message = e.message.clone();
    if !tail.is_empty() {
        message.push_str(&format!("; last lines of its output: {}", tail.join(" | ")));
    }
    v.insert("message".into(), message.into());
    if let Some(c) = e.exit_code {
        v.insert("exitCode".into(), c.into());
    }
    v.insert("stale".into(), e.stale.is_some().into());
    if let Some(st) = &e.stale {
        let why: Vec<String> = st.reasons.iter().map(|x| x.text()).collect();
        v.insert("staleReasons".into(), why.into());
        let seqs: Vec<u64> = st.reasons.iter().map(|x| x.seq()).collect();
        v.insert("staleReasonSeqs".into(), seqs.into());
    }
    Value::Object(v)
}

/// `explain REF --format json` (`fresh`: as for [`status_rows`]; `graph`: the graph file, for
/// globs).
pub fn explain(
    fresh: &Freshness<'_>,
    typed: &str,
    graph: Option<&Graph>,
    logs_dir: &Path,
) -> Result<Vec<Value>, ViewError> {
    let expanded = explain_typed(typed)?;
    let refs = explain_refs(fresh.state(), typed, &expanded, graph)?;
    Ok(refs
        .iter()
        .map(|r| {
            let e = query::explain_with(fresh, r);
            explain_json(&e, &explain_tail(logs_dir, &e))
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// lineage

/// The lineage tree of `partition`, up (inputs) or down (what was built from it).
pub fn lineage_tree(
    state: &State,
    reader: &Reader,
    partition: &str,
    downstream: bool,
    depth: Option<usize>,
) -> Result<LineageNode, ViewError> {
    if downstream {
        query::lineage_down(state, reader, partition, depth)
    } else {
        query::lineage_up(state, reader, partition, depth)
    }
    .map_err(|e| match e {
        query::LineageError::NeverBuilt(_) => ViewError::BadInput(e.to_string()),
        query::LineageError::Store(s) => ViewError::Store(s),
    })
}

/// A lineage tree as JSON (`inputs`, or `outputs` downstream, recursively).
pub fn lineage_json(n: &LineageNode, downstream: bool) -> Value {
    let mut v = serde_json::Map::new();
    v.insert("partitionRef".into(), n.partition.clone().into());
    if let Some(d) = n.dep_type {
        v.insert(
            "depType".into(),
            if d == DepType::Materialize { "MATERIALIZE" } else { "QUERY" }.into(),
        );
    }
    v.insert("jobRunId".into(), n.job_run_id.clone().into());
    v.insert("jobLabel".into(), n.job_label.clone().into());
    v.insert("buildRequestId".into(), n.build_request_id.clone().into());
    v.insert("seq".into(), n.seq.into());
    v.insert("startTime".into(), n.start_time.into());
    v.insert("endTime".into(), n.end_time.into());
    v.insert("args".into(), n.args.clone().into());
    v.insert("envKeys".into(), n.env_keys.clone().into());
    if let Some(s) = n.tainted_at_seq {
        v.insert("taintedAtSeq".into(), s.into());
    }
    if let Some(s) = n.rebuilt_since_seq {
        v.insert("rebuiltSinceSeq".into(), s.into());
    }
    let children: Vec<Value> = n.children.iter().map(|c| lineage_json(c, downstream)).collect();
    v.insert(if downstream { "outputs" } else { "inputs" }.into(), children.into());
    Value::Object(v)
}

/// `lineage REF [--downstream] [--depth N] --format json` (one line).
pub fn lineage(
    state: &State,
    reader: &Reader,
    partition: &str,
    downstream: bool,
    depth: Option<usize>,
) -> Result<Vec<Value>, ViewError> {
    let tree = lineage_tree(state, reader, partition, downstream, depth)?;
    Ok(vec![lineage_json(&tree, downstream)])
}

// ---------------------------------------------------------------------------------------------
// jobs

/// Statistics per job label, with the graph's jobs that never ran (sorted by label).
pub fn job_stats(state: &State, graph: Option<&Graph>) -> Vec<JobStats> {
    let mut stats = query::job_stats(state);
    // The graph file's jobs that never ran are listed too (a fresh graph is not empty).
    if let Some(g) = graph {
        for j in &g.jobs {
            if !stats.iter().any(|s| s.label == j.label) {
                stats.push(JobStats {
                    label: j.label.clone(),
                    runs: 0,
                    completed: 0,
                    failed: 0,
                    success_ratio: None,
                    p50_ms: None,
                    p95_ms: None,
                });
            }
        }
        stats.sort_by(|a, b| a.label.cmp(&b.label));
    }
    stats
}

/// One `jobs` line.
pub fn job_stats_json(s: &JobStats) -> Value {
    json!({
        "jobLabel": s.label,
        "runs": s.runs,
        "completed": s.completed,
        "failed": s.failed,
        "successRatio": s.success_ratio,
        "durationP50Ms": s.p50_ms,
        "durationP95Ms": s.p95_ms,
    })
}

/// `jobs --format json`.
pub fn jobs(state: &State, graph: Option<&Graph>) -> Vec<Value> {
    job_stats(state, graph).iter().map(job_stats_json).collect()
}

/// The runs of `label`, newest first; an error if neither the log nor the graph (asked only
/// then, through `in_graph`) knows the label.
pub fn job_runs<'a>(
    state: &'a State,
    label: &str,
    in_graph: impl FnOnce(&str) -> bool,
) -> Result<Vec<&'a Run>, ViewError> {
    let runs = query::job_runs(state, label);
    let known = !runs.is_empty() || state.runs.values().any(|r| *r.job_label == *label);
    if !known && !in_graph(label) {
        return Err(ViewError::NotFound(format!(
            "no job labelled '{label}' in the log or the graph file; `databuild jobs` lists them"
        )));
    }
    Ok(runs)
}

/// One `jobs LABEL` line.
pub fn job_run_json(r: &Run) -> Value {
    json!({
        "jobRunId": r.id,
        "buildRequestId": r.request,
        "status": r.status.as_str_name(),
        "startTime": r.running.map(|(_, t)| t / 1_000_000_000),
        "endTime": r.ended.map(|(_, t)| t / 1_000_000_000),
        "durationMs": query::run_duration_ms(r),
    })
}

/// `jobs LABEL --format json`.
pub fn job(state: &State, label: &str, graph: Option<&Graph>) -> Result<Vec<Value>, ViewError> {
    let runs = job_runs(state, label, |l| graph.is_some_and(|g| g.job(l).is_some()))?;
    Ok(runs.into_iter().map(job_run_json).collect())
}

// ---------------------------------------------------------------------------------------------
// replay / events

/// The refs an event names (for `--partition`).
fn refs_named(ev: &BuildEvent) -> Vec<&str> {
    match &ev.event_type {
        Some(EventType::PartitionEvent(e)) => {
            e.partition_ref.iter().map(|p| p.str.as_str()).collect()
        }
        Some(EventType::DelegationEvent(e)) => {
            e.partition_ref.iter().map(|p| p.str.as_str()).collect()
        }
        Some(EventType::JobEvent(e)) => {
            e.target_partitions.iter().map(|p| p.str.as_str()).collect()
        }
        _ => Vec::new(),
    }
}

/// `replay`'s filters, applied to events in log order (it learns run labels as they pass).
#[derive(Debug, Default)]
pub struct EventFilter {
    /// `--since SEQ` (inclusive).
    pub since: u64,
    /// `--until SEQ|TIME` (inclusive).
    pub until: Option<Until>,
    /// `--build ID` (a whole id).
    pub build: Option<String>,
    /// `--partition REF_OR_GLOB`.
    pub partition: Option<String>,
    /// `--job LABEL`.
    pub job: Option<String>,
    /// `--job-run ID` (a whole id).
    pub job_run: Option<String>,
    /// Run id -> label, learnt from job events as they pass.
    labels: HashMap<String, String>,
    seen_build: bool,
    seen_run: bool,
    /// `--until TIME` cuts the log at the first event stamped after TIME (as `status --at`).
    past_until: bool,
}

impl EventFilter {
    /// Whether the event at `seq` passes (call for every event, in order).
    pub fn keep(&mut self, seq: u64, ev: &BuildEvent) -> bool {
        if let Some(EventType::JobEvent(e)) = &ev.event_type
            && let Some(l) = &e.job_label
        {
            self.labels.insert(e.job_run_id.clone(), l.label.clone());
        }
        if self.build.as_deref() == Some(ev.build_request_id.as_str()) {
            self.seen_build = true;
        }
        match self.until {
            Some(Until::Seq(s)) if seq > s => return false,
            Some(Until::Time(t)) if self.past_until || ev.timestamp > t => {
                self.past_until = true;
                return false;
            }
            _ => {}
        }
        if seq < self.since {
            return false;
        }
        if let Some(b) = &self.build
            && &ev.build_request_id != b
        {
            return false;
        }
        if let Some(g) = &self.partition
            && !refs_named(ev).iter().any(|r| refs::glob_match(g, r))
        {
            return false;
        }
        let run_of = |ev: &BuildEvent| match &ev.event_type {
            Some(EventType::JobEvent(e)) => Some(e.job_run_id.clone()),
            Some(EventType::PartitionEvent(e)) if !e.job_run_id.is_empty() => {
                Some(e.job_run_id.clone())
            }
            _ => None,
        };
        if let Some(label) = &self.job {
            let Some(run) = run_of(ev) else { return false };
            if self.labels.get(&run) != Some(label) {
                return false;
            }
        }
        if let Some(id) = &self.job_run {
            if run_of(ev).as_deref() != Some(id.as_str()) {
                return false;
            }
            self.seen_run = true;
        }
        true
    }

    /// After the last event: an error if the build or job run filtered on was never seen.
    pub fn finish(&self) -> Result<(), ViewError> {
        if let Some(b) = &self.build
            && !self.seen_build
        {
            return Err(ViewError::NotFound(format!(
                "no build request {b} in the log; see `databuild builds` for the ids"
            )));
        }
        if let Some(r) = &self.job_run
            && !self.seen_run
        {
            return Err(ViewError::NotFound(format!(
                "no job run {r} in the log; see `databuild replay` or `databuild builds ID`"
            )));
        }
        Ok(())
    }
}

/// One `replay` line: `{"seq": N, "event": BUILD_EVENT}` in canonical proto3 JSON.
pub fn event_json(seq: u64, ev: &BuildEvent) -> Value {
    match serde_json::to_value(ev) {
        Ok(event) => json!({ "seq": seq, "event": event }),
        // pbjson cannot write an enum number this version does not name (an event of a newer
        // databuild): say so rather than print nothing.
        Err(e) => {
            json!({ "seq": seq, "event": Value::Null, "error": format!("not representable as JSON: {e}") })
        }
    }
}

/// Resolves the build and job run ids of `filter` that are not whole ids (prefixes, tails,
/// `last`) against `state`.
pub fn resolve_ids(state: &State, filter: &mut EventFilter) -> Result<(), ViewError> {
    if let Some(b) = &filter.build
        && !refs::is_whole_id(b)
    {
        filter.build = Some(refs::request_id(state, b)?);
    }
    if let Some(r) = &filter.job_run
        && !refs::is_whole_id(r)
    {
        filter.job_run = Some(refs::run_id(state, r)?);
    }
    Ok(())
}

/// Calls `each` with the JSON of every event of `reader` that `filter` keeps, oldest first;
/// then [`EventFilter::finish`].
pub fn for_each_event(
    reader: &Reader,
    filter: &mut EventFilter,
    mut each: impl FnMut(Value),
) -> Result<(), ViewError> {
    reader.for_each_from(1, |seq, bytes| -> Result<(), ViewError> {
        use prost::Message;
        let ev = BuildEvent::decode(bytes)
            .map_err(|e| ViewError::Store(StoreError::Decode { seq, reason: e.to_string() }))?;
        if filter.keep(seq, &ev) {
            each(event_json(seq, &ev));
        }
        Ok(())
    })?;
    filter.finish()
}

impl From<databuild_log::ReadError> for ViewError {
    fn from(e: databuild_log::ReadError) -> ViewError {
        ViewError::Store(StoreError::Read(e))
    }
}

/// `replay [filters] --format json`.
pub fn events(reader: &Reader, filter: &mut EventFilter) -> Result<Vec<Value>, ViewError> {
    let mut out = Vec::new();
    for_each_event(reader, filter, |v| out.push(v))?;
    Ok(out)
}
