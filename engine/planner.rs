//! Planning: from requested refs to a job graph, as a worklist run to a fixpoint.
//!
//! The [`Planner`] is pure: it is told the catalog (through [`State`]) and the answers of `config`
//! calls, and says which calls it needs next. A driver ([`plan`]) performs the calls. Refs AVAILABLE
//! in the catalog are satisfied without a config call (unless `--force` names them), so history is
//! never re-planned and backfills stay cheap. Every other ref is looked up and configured; its
//! task's MATERIALIZE inputs are pushed, QUERY inputs only recorded. A topological sort over
//! MATERIALIZE edges follows; a cycle is an error that names it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use crate::config::{self, ConfigCall, ConfigError, ConfigLog, Configured};
use crate::graph::{Graph, LookupError};
use crate::proto::{DepType, GraphLabel, JobConfig, JobGraph, JobLabel, PartitionRef, Task};
use crate::state::State;

/// Why planning failed. Reported before anything runs (exit 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// A requested ref or a MATERIALIZE input has no single owner, or is not a valid ref.
    #[error("{0}")]
    Lookup(#[from] LookupError),
    /// A MATERIALIZE input no job owns.
    #[error("'{input}' (a MATERIALIZE input of '{of}') is produced by no job: {source}")]
    Input {
        /// The input ref.
        input: String,
        /// A ref of the task that needs it.
        of: String,
        /// The lookup failure.
        #[source]
        source: LookupError,
    },
    /// A `config` call failed.
    #[error(transparent)]
    Config(#[from] Box<ConfigError>),
    /// Two different configs produce one ref.
    #[error(
        "'{partition}' is produced by two different configs of job '{job}'; a ref must come from one config"
    )]
    Overlap {
        /// The ref.
        partition: String,
        /// The job.
        job: String,
    },
    /// MATERIALIZE edges form a cycle.
    #[error("dependency cycle: {0}")]
    Cycle(String),
    /// A bug in the planner's driver (a task failed to report).
    #[error("internal error while planning: {0}")]
    Internal(String),
}

/// One task of a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The job's label.
    pub job: String,
    /// What `config` answered.
    pub config: JobConfig,
    /// The config's outputs, as strings.
    pub outputs: Vec<String>,
    /// MATERIALIZE inputs.
    pub materialize: Vec<String>,
    /// QUERY inputs.
    pub query: Vec<String>,
    /// Nodes producing this node's MATERIALIZE inputs.
    pub deps: Vec<usize>,
}

/// A plan: tasks in topological order, and the AVAILABLE refs it relies on.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The graph label.
    pub label: String,
    /// The requested refs.
    pub requested: Vec<String>,
    /// Tasks to run, dependencies first.
    pub nodes: Vec<Node>,
    /// AVAILABLE refs the plan relies on (requested or MATERIALIZE inputs), sorted.
    pub satisfied: Vec<String>,
    /// The node producing each planned ref.
    pub producer: HashMap<String, usize>,
    /// Configs a `config` call answered that nothing needs (their outputs were not asked for, or
    /// are AVAILABLE): dropped, never run.
    pub dropped: Vec<Dropped>,
    /// What the user should know about the plan (an input without `depType`, read as QUERY, that
    /// a job of the graph would build and that is not AVAILABLE): noted, never fatal.
    pub warnings: Vec<String>,
}

/// A config answered by a `config` call and dropped from the plan: none of its outputs was
/// needed (not asked of that call and not waiting to be planned), so running it would rebuild
/// partitions nobody asked for, AVAILABLE ones included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// The job's label.
    pub job: String,
    /// The config's outputs.
    pub outputs: Vec<String>,
}

impl Plan {
    /// The plan as the protocol's `JobGraph`.
    pub fn job_graph(&self) -> JobGraph {
        JobGraph {
            label: Some(GraphLabel { label: self.label.clone() }),
            outputs: self.requested.iter().map(|r| PartitionRef { str: r.clone() }).collect(),
            nodes: self
                .nodes
                .iter()
                .map(|n| Task {
                    job: Some(JobLabel { label: n.job.clone() }),
                    config: Some(n.config.clone()),
                })
                .collect(),
        }
    }

    /// Rebuilds a plan from a recorded `JobGraph` (for resuming a request): refs no node produces
    /// are treated as satisfied inputs.
    pub fn from_job_graph(g: &JobGraph) -> Result<Plan, PlanError> {
        let nodes: Vec<Node> = g
            .nodes
            .iter()
            .map(|t| {
                node(
                    t.job.as_ref().map(|j| j.label.clone()).unwrap_or_default(),
                    t.config.clone().unwrap_or_default(),
                )
            })
            .collect();
        let requested: Vec<String> = g.outputs.iter().map(|p| p.str.clone()).collect();
        finish(
            g.label.as_ref().map(|l| l.label.clone()).unwrap_or_default(),
            requested,
            nodes,
            BTreeSet::new(),
        )
    }
}

fn node(job: String, config: JobConfig) -> Node {
    let outputs = config.outputs.iter().map(|p| p.str.clone()).collect();
    let mut materialize = Vec::new();
    let mut query = Vec::new();
    for d in &config.inputs {
        let r = d.partition_ref.as_ref().map(|p| p.str.clone()).unwrap_or_default();
        if d.dep_type == DepType::Materialize as i32 {
            materialize.push(r);
        } else {
            query.push(r);
        }
    }
    Node { job, config, outputs, materialize, query, deps: Vec::new() }
}

/// What the planner asks of the catalog.
pub trait Catalog: Sync {
    /// Whether the catalog shows `partition` AVAILABLE.
    fn is_available(&self, partition: &str) -> bool;

    /// For each of `refs`, why it is stale (its reasons, `; `-joined), with `graph`'s versions laid
    /// over the log's (see [`crate::freshness`]); `None` when fresh. A catalog without history
    /// knows nothing stale.
    fn stale_reasons(&self, graph: &Graph, refs: &[String]) -> Vec<Option<String>> {
        let _ = graph;
        vec![None; refs.len()]
    }

    /// The MATERIALIZE inputs the run behind `partition`'s current AVAILABLE instance read. A
    /// catalog without history knows none.
    fn materialize_inputs(&self, partition: &str) -> Vec<String> {
        let _ = partition;
        Vec::new()
    }
}

fn materialize_inputs(state: &State, partition: &str) -> Vec<String> {
    let Some((_, run)) = state.catalog.get(partition).and_then(|c| c.available.last().cloned())
    else {
        return Vec::new();
    };
    let Some(r) = state.runs.get(&run) else { return Vec::new() };
    r.inputs
        .iter()
        .filter(|i| i.dep_type == DepType::Materialize)
        .map(|i| i.partition.to_string())
        .collect()
}

fn stale_reasons(state: &State, graph: &Graph, refs: &[String]) -> Vec<Option<String>> {
    let f = crate::freshness::Freshness::with_graph(state, graph);
    refs.iter()
        .map(|r| {
            f.stale(r).map(|s| s.reasons.iter().map(|x| x.text()).collect::<Vec<_>>().join("; "))
        })
        .collect()
}

impl Catalog for State {
    fn is_available(&self, partition: &str) -> bool {
        State::is_available(self, partition)
    }
    fn stale_reasons(&self, graph: &Graph, refs: &[String]) -> Vec<Option<String>> {
        stale_reasons(self, graph, refs)
    }
    fn materialize_inputs(&self, partition: &str) -> Vec<String> {
        materialize_inputs(self, partition)
    }
}

impl Catalog for crate::store::Store {
    fn is_available(&self, partition: &str) -> bool {
        self.state().is_available(partition)
    }
    fn stale_reasons(&self, graph: &Graph, refs: &[String]) -> Vec<Option<String>> {
        stale_reasons(&self.state(), graph, refs)
    }
    fn materialize_inputs(&self, partition: &str) -> Vec<String> {
        materialize_inputs(&self.state(), partition)
    }
}

/// What a plan rebuilds although it is AVAILABLE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rebuild {
    /// `--force`: the requested refs.
    pub force: bool,
    /// `--stale`: every stale partition the plan needs (upstream ones included).
    pub stale: bool,
}

impl From<bool> for Rebuild {
    /// `--force` or not.
    fn from(force: bool) -> Rebuild {
        Rebuild { force, stale: false }
    }
}

/// The planning worklist.
#[derive(Debug)]
pub struct Planner<'g> {
    graph: &'g Graph,
    requested: Vec<String>,
    forced: HashSet<String>,
    queue: VecDeque<(String, Option<String>)>,
    seen: HashSet<String>,
    satisfied: BTreeSet<String>,
    nodes: Vec<Node>,
    producer: HashMap<String, usize>,
    dropped: Vec<Dropped>,
    /// Inputs of planned configs written without a `depType`: (job, the config's first output,
    /// the input).
    implicit: Vec<(String, String, String)>,
    /// AVAILABLE refs planned again because their `output_path` is gone: `output missing: ...`.
    missing: Vec<String>,
    /// `--stale`: stale AVAILABLE refs are planned again.
    rebuild_stale: bool,
    /// Stale AVAILABLE refs satisfied as they are (without `--stale`).
    stale_skipped: BTreeSet<String>,
}

impl<'g> Planner<'g> {
    /// Starts planning `requested` (looked up now: a bad ref fails before anything runs). With
    /// `force`, the requested refs are rebuilt even if AVAILABLE; with `stale`, every stale
    /// partition it needs.
    pub fn new(
        graph: &'g Graph,
        requested: &[String],
        rebuild: impl Into<Rebuild>,
    ) -> Result<Planner<'g>, PlanError> {
        let Rebuild { force, stale } = rebuild.into();
        for r in requested {
            graph.owner(r)?;
        }
        let mut p = Planner {
            graph,
            requested: requested.to_vec(),
            forced: if force { requested.iter().cloned().collect() } else { HashSet::new() },
            queue: VecDeque::new(),
            seen: HashSet::new(),
            satisfied: BTreeSet::new(),
            nodes: Vec::new(),
            producer: HashMap::new(),
            dropped: Vec::new(),
            implicit: Vec::new(),
            missing: Vec::new(),
            rebuild_stale: stale,
            stale_skipped: BTreeSet::new(),
        };
        for r in requested {
            if p.seen.insert(r.clone()) {
                p.queue.push_back((r.clone(), None));
            }
        }
        Ok(p)
    }

    /// The calls needed next: one group per owning job (chunked by argv size). AVAILABLE refs are
    /// satisfied here without a call. Empty when planning is complete.
    ///
    /// With `--stale`, a satisfied ref one of whose inputs this plan rebuilds would be stale right
    /// after the build (`input X rebuilt`), so it is planned again too, to a fixpoint.
    pub fn next_calls(&mut self, state: &dyn Catalog) -> Result<Vec<ConfigCall>, PlanError> {
        loop {
            let calls = self.next_calls_once(state)?;
            if !calls.is_empty() || !self.rebuild_stale {
                return Ok(calls);
            }
            let promote: Vec<String> = self
                .satisfied
                .iter()
                .filter(|r| {
                    state.materialize_inputs(r).iter().any(|i| self.producer.contains_key(i))
                })
                .cloned()
                .collect();
            if promote.is_empty() {
                return Ok(calls);
            }
            for r in promote {
                self.satisfied.remove(&r);
                self.stale_skipped.remove(&r);
                self.missing.push(format!("stale: {r} is built again (an input is rebuilt first)"));
                self.forced.insert(r.clone());
                self.queue.push_back((r, None));
            }
        }
    }

    fn next_calls_once(&mut self, state: &dyn Catalog) -> Result<Vec<ConfigCall>, PlanError> {
        let mut by_job: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        let popped: Vec<(String, Option<String>)> = std::iter::from_fn(|| self.queue.pop_front())
            .filter(|(r, _)| !self.producer.contains_key(r))
            .collect();
        // AVAILABLE in the log; kept as it is unless its data is gone or (`--stale`) it is stale.
        let available: Vec<String> = popped
            .iter()
            .filter(|(r, _)| !self.forced.contains(r) && state.is_available(r))
            .map(|(r, _)| r.clone())
            .collect();
        let stale: HashMap<String, String> = if available.is_empty() {
            HashMap::new()
        } else {
            let why = state.stale_reasons(self.graph, &available);
            available.into_iter().zip(why).filter_map(|(r, w)| Some((r, w?))).collect()
        };
        for (r, needed_by) in popped {
            if !self.forced.contains(&r) && state.is_available(&r) {
                match (self.missing_output(&r), stale.get(&r)) {
                    (Some(why), _) => self.missing.push(format!("{why} ({r} is built again)")),
                    (None, Some(why)) if self.rebuild_stale => {
                        self.missing.push(format!("stale: {r} is built again ({why})"));
                    }
                    (None, why) => {
                        if why.is_some() {
                            self.stale_skipped.insert(r.clone());
                        }
                        self.satisfied.insert(r);
                        continue;
                    }
                }
            }
            let job = match (self.graph.owner(&r), needed_by) {
                (Ok(j), _) => j,
                (Err(e), None) => return Err(e.into()),
                (Err(source), Some(of)) => return Err(PlanError::Input { input: r, of, source }),
            };
            by_job.entry(job).or_default().push(r);
        }
        Ok(by_job.into_iter().flat_map(|(job, refs)| config::chunk(job, refs)).collect())
    }

    /// Takes a (validated) answer to `call`: adds its tasks and queues their MATERIALIZE inputs.
    /// A config none of whose outputs is needed (asked of this call, or waiting in the worklist
    /// for a call of its own) is dropped: a `config` may answer for a whole batch, and running
    /// what nobody asked for would rebuild AVAILABLE partitions without `--force`.
    pub fn answer(&mut self, call: &ConfigCall, configs: Vec<JobConfig>) -> Result<(), PlanError> {
        self.answer_configured(call, configs.into())
    }

    /// [`Planner::answer`], also taking which inputs were written without a `depType` (see
    /// [`Planner::implicit_query_warnings`]).
    pub fn answer_configured(
        &mut self,
        call: &ConfigCall,
        answer: Configured,
    ) -> Result<(), PlanError> {
        let Configured { configs, implicit_query } = answer;
        let job = &self.graph.jobs[call.job].label;
        let asked: HashSet<&str> = call.refs.iter().map(String::as_str).collect();
        for (i, c) in configs.into_iter().enumerate() {
            let n = node(job.clone(), c);
            let needed = n.outputs.iter().any(|o| {
                asked.contains(o.as_str())
                    || (self.seen.contains(o)
                        && !self.satisfied.contains(o)
                        && !self.producer.contains_key(o))
            });
            if !needed {
                self.dropped.push(Dropped { job: job.clone(), outputs: n.outputs });
                continue;
            }
            // Identical duplicates merge; a ref from two different configs is an error.
            match n.outputs.iter().find_map(|o| self.producer.get(o).copied()) {
                Some(existing) if self.nodes[existing].config == n.config => continue,
                Some(existing) => {
                    let partition = n
                        .outputs
                        .iter()
                        .find(|o| self.producer.get(*o) == Some(&existing))
                        .cloned()
                        .unwrap_or_default();
                    return Err(PlanError::Overlap { partition, job: job.clone() });
                }
                None => {}
            }
            let idx = self.nodes.len();
            for (_, input) in implicit_query.iter().filter(|(k, _)| *k == i) {
                let of = n.outputs.first().cloned().unwrap_or_default();
                self.implicit.push((job.clone(), of, input.clone()));
            }
            for o in &n.outputs {
                self.producer.insert(o.clone(), idx);
                // A ref first seen as satisfied is now rebuilt by this task.
                self.satisfied.remove(o);
                self.seen.insert(o.clone());
            }
            for i in &n.materialize {
                if self.seen.insert(i.clone()) {
                    self.queue.push_back((i.clone(), n.outputs.first().cloned()));
                }
            }
            self.nodes.push(n);
        }
        Ok(())
    }

    /// Warnings about inputs written without a `depType` (so QUERY: never built, never waited
    /// for) that a job of the graph produces and that `state` does not show AVAILABLE: most
    /// likely a forgotten `"depType": "MATERIALIZE"`. One line per job.
    pub fn implicit_query_warnings(&self, state: &dyn Catalog) -> Vec<String> {
        const SHOWN: usize = 3;
        let mut by_job: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
        let mut seen = HashSet::new();
        for (job, of, input) in &self.implicit {
            if !seen.insert((job, input)) {
                continue;
            }
            if self.graph.owner(input).is_ok() && !state.is_available(input) {
                by_job.entry(job).or_default().push((input, of));
            }
        }
        by_job
            .into_iter()
            .map(|(job, inputs)| {
                let mut list: Vec<String> = inputs
                    .iter()
                    .take(SHOWN)
                    .map(|(input, of)| format!("'{input}' (of '{of}')"))
                    .collect();
                if inputs.len() > SHOWN {
                    list.push(format!("and {} more", inputs.len() - SHOWN));
                }
                let (n, them) = if inputs.len() == 1 {
                    ("an input".to_string(), "it")
                } else {
                    (format!("{} inputs", inputs.len()), "them")
                };
                format!(
                    "job '{job}' config gave {n} without a depType, so QUERY (not built first, not waited for), although a job of the graph produces {them} and {them} {} not AVAILABLE: {}; write \"depType\": \"MATERIALIZE\" to build {them} first, or \"depType\": \"QUERY\" to keep this without the warning",
                    if inputs.len() == 1 { "is" } else { "are" },
                    list.join(", ")
                )
            })
            .collect()
    }

    /// The plan, with tasks sorted topologically.
    pub fn finish(self) -> Result<Plan, PlanError> {
        let mut plan =
            finish(self.graph.label.clone(), self.requested, self.nodes, self.satisfied)?;
        plan.dropped = self.dropped;
        plan.warnings = self.missing;
        let skipped = self.stale_skipped.iter().filter(|r| plan.satisfied.contains(*r)).count();
        if skipped > 0 {
            plan.warnings
                .push(format!("note: skipped {skipped} stale partitions (--stale rebuilds them)"));
        }
        Ok(plan)
    }

    /// Why `r`'s data is not where its job's `output_path` says (None without `output_path`).
    fn missing_output(&self, r: &str) -> Option<String> {
        self.graph.missing_output(self.graph.owner(r).ok()?, r)
    }
}

/// Orders nodes topologically over MATERIALIZE edges, failing on a cycle with the cycle printed.
fn finish(
    label: String,
    requested: Vec<String>,
    nodes: Vec<Node>,
    mut satisfied: BTreeSet<String>,
) -> Result<Plan, PlanError> {
    let mut producer: HashMap<String, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in &n.outputs {
            producer.insert(o.clone(), i);
        }
    }
    let deps: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            let mut d: Vec<usize> =
                n.materialize.iter().filter_map(|i| producer.get(i).copied()).collect();
            d.sort_unstable();
            d.dedup();
            d
        })
        .collect();
    for n in &nodes {
        for i in &n.materialize {
            if !producer.contains_key(i) {
                satisfied.insert(i.clone());
            }
        }
    }
    for r in &requested {
        if !producer.contains_key(r) {
            satisfied.insert(r.clone());
        }
    }
    // Kahn's algorithm, taking ready nodes in their original order for a stable plan.
    let mut indegree: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependants: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, d) in deps.iter().enumerate() {
        for &j in d {
            dependants[j].push(i);
        }
    }
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> =
        (0..nodes.len()).filter(|&i| indegree[i] == 0).map(std::cmp::Reverse).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        order.push(i);
        for &k in &dependants[i] {
            indegree[k] -= 1;
            if indegree[k] == 0 {
                ready.push(std::cmp::Reverse(k));
            }
        }
    }
    if order.len() < nodes.len() {
        return Err(PlanError::Cycle(describe_cycle(&nodes, &deps, &indegree)));
    }
    let mut position = vec![0usize; nodes.len()];
    for (pos, &i) in order.iter().enumerate() {
        position[i] = pos;
    }
    let mut slots: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    let mut sorted: Vec<Node> = Vec::with_capacity(order.len());
    for &i in &order {
        // Kahn's algorithm emits each node exactly once.
        let Some(mut n) = slots[i].take() else { continue };
        n.deps = deps[i].iter().map(|&d| position[d]).collect();
        sorted.push(n);
    }
    let producer = producer.into_iter().map(|(r, i)| (r, position[i])).collect();
    Ok(Plan {
        label,
        requested,
        nodes: sorted,
        satisfied: satisfied.into_iter().collect(),
        producer,
        dropped: Vec::new(),
        warnings: Vec::new(),
    })
}

fn describe_cycle(nodes: &[Node], deps: &[Vec<usize>], indegree: &[usize]) -> String {
    // Walk dependencies among the nodes left over until one repeats.
    let start = indegree.iter().position(|&d| d > 0).unwrap_or(0);
    let mut path = vec![start];
    let mut at = start;
    while let Some(&next) = deps[at].iter().find(|&&d| indegree[d] > 0) {
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let cycle: Vec<String> = path[pos..]
                .iter()
                .chain(std::iter::once(&next))
                .map(|&i| nodes[i].outputs.first().cloned().unwrap_or_default())
                .collect();
            return format!("{} (each needs the next as a MATERIALIZE input)", cycle.join(" -> "));
        }
        path.push(next);
        at = next;
    }
    nodes[start].outputs.first().cloned().unwrap_or_default()
}

/// A `config` call's answer, on its way.
pub type ConfigFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Configured, ConfigError>> + Send>>;

/// Runs `config` calls: the jobs' entrypoints ([`Processes`]), or, in tests, a function, so that
/// thousands of random builds plan without starting a process.
pub trait Configure: Send + Sync + std::fmt::Debug {
    /// Answers one call (checked against the graph by the caller's [`config::validate`] rules).
    fn configure(
        &self,
        graph: &std::sync::Arc<Graph>,
        call: &ConfigCall,
        request: Option<&str>,
        log: Option<ConfigLog>,
    ) -> ConfigFuture;
}

/// Runs each `config` call as its job's entrypoint (see [`config::run`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Processes;

impl Configure for Processes {
    fn configure(
        &self,
        graph: &std::sync::Arc<Graph>,
        call: &ConfigCall,
        request: Option<&str>,
        log: Option<ConfigLog>,
    ) -> ConfigFuture {
        let (g, c, id) = (graph.clone(), call.clone(), request.map(String::from));
        Box::pin(async move { config::run(&g, &c, id.as_deref(), log.as_ref()).await })
    }
}

/// Plans `requested` against `state`, running `config` calls (up to `jobs` at once).
pub async fn plan(
    graph: &Graph,
    state: &dyn Catalog,
    requested: &[String],
    rebuild: impl Into<Rebuild>,
    jobs: usize,
    build_request_id: Option<&str>,
    log_dir: Option<&std::path::Path>,
) -> Result<Plan, PlanError> {
    let force = rebuild.into();
    let graph = std::sync::Arc::new(graph.clone());
    plan_with(&Processes, &graph, state, requested, force, jobs, build_request_id, log_dir).await
}

/// [`plan`], with the `config` calls answered by `configure`.
#[allow(clippy::too_many_arguments)]
pub async fn plan_with(
    configure: &dyn Configure,
    graph: &std::sync::Arc<Graph>,
    state: &dyn Catalog,
    requested: &[String],
    rebuild: impl Into<Rebuild>,
    jobs: usize,
    build_request_id: Option<&str>,
    log_dir: Option<&std::path::Path>,
) -> Result<Plan, PlanError> {
    let mut planner = Planner::new(graph, requested, rebuild)?;
    let mut counter: BTreeMap<usize, usize> = BTreeMap::new();
    loop {
        let calls = planner.next_calls(state)?;
        if calls.is_empty() {
            break;
        }
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
        let mut set = tokio::task::JoinSet::new();
        for (i, call) in calls.iter().enumerate() {
            let n = counter.entry(call.job).or_insert(0);
            *n += 1;
            let log = log_dir.map(|d| ConfigLog {
                dir: d.to_path_buf(),
                stem: format!("{}-{n}", graph.jobs[call.job].label),
            });
            let answer = configure.configure(graph, call, build_request_id, log);
            let limit = limit.clone();
            set.spawn(async move {
                let _permit = limit.acquire_owned().await;
                (i, answer.await)
            });
        }
        let mut answers: Vec<Option<Result<Configured, ConfigError>>> =
            (0..calls.len()).map(|_| None).collect();
        while let Some(done) = set.join_next().await {
            match done {
                Ok((i, r)) => answers[i] = Some(r),
                Err(e) => {
                    return Err(PlanError::Internal(format!("a config call's task failed: {e}")));
                }
            }
        }
        // Answers are applied in call order, so a plan does not depend on which call ended first.
        for (call, answer) in calls.iter().zip(answers) {
            let Some(answer) = answer else {
                return Err(PlanError::Internal("a config call was not answered".into()));
            };
            planner.answer_configured(call, answer.map_err(|e| PlanError::Config(Box::new(e)))?)?;
        }
    }
    let warnings = planner.implicit_query_warnings(state);
    let mut plan = planner.finish()?;
    plan.warnings.extend(warnings);
    Ok(plan)
}

/// Plans `refs` against a read-only state: what a build would run. Nothing is written.
pub async fn analyze(
    graph: &Graph,
    state: &State,
    refs: &[String],
    rebuild: impl Into<Rebuild>,
    jobs: usize,
) -> Result<Plan, PlanError> {
    plan(graph, state, refs, rebuild, jobs, None, None).await
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto::{DataDep, JobConfig};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A graph of two jobs for tests (label "g"): `raw` owns raw/N, `sum` owns sum/N and side/N.
    pub(crate) fn graph() -> Result<(tempfile::TempDir, Graph), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let job = d.path().join("job.sh");
        std::fs::write(&job, "#!/bin/sh\n")?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&job, std::fs::Permissions::from_mode(0o755))?;
        let text = r#"
[graph]
label = "g"
[[jobs]]
label = "raw"
entrypoint = "job.sh"
partition_patterns = ['raw/\d+']
[[jobs]]
label = "sum"
entrypoint = "job.sh"
partition_patterns = ['sum/\d+', 'side/\d+']
"#;
        let g = Graph::parse(&d.path().join("databuild.toml"), text)?;
        Ok((d, g))
    }

    /// A config with these outputs and MATERIALIZE and QUERY inputs.
    pub(crate) fn cfg(outputs: &[&str], mat: &[&str], query: &[&str]) -> JobConfig {
        let dep = |r: &&str, t: DepType| DataDep {
            dep_type: t as i32,
            partition_ref: Some(PartitionRef { str: r.to_string() }),
        };
        JobConfig {
            outputs: outputs.iter().map(|o| PartitionRef { str: o.to_string() }).collect(),
            inputs: mat
                .iter()
                .map(|r| dep(r, DepType::Materialize))
                .chain(query.iter().map(|r| dep(r, DepType::Query)))
                .collect(),
            ..JobConfig::default()
        }
    }

    /// Answers every call with a fake config: sum/N reads raw/N and raw/N-1 (MATERIALIZE) and
    /// raw/999 (QUERY); raw/N has no inputs.
    fn drive(
        g: &Graph,
        state: &State,
        requested: &[&str],
        force: bool,
    ) -> Result<Plan, Box<dyn std::error::Error>> {
        let req: Vec<String> = requested.iter().map(|s| s.to_string()).collect();
        let mut p = Planner::new(g, &req, force)?;
        loop {
            let calls = p.next_calls(state)?;
            if calls.is_empty() {
                break;
            }
            for c in calls {
                let configs = c
                    .refs
                    .iter()
                    .map(|r| -> Result<JobConfig, Box<dyn std::error::Error>> {
                        let n: u32 =
                            r.rsplit('/').next().ok_or("a ref with no last segment")?.parse()?;
                        Ok(if r.starts_with("sum/") {
                            let a = format!("raw/{n}");
                            let b = format!("raw/{}", n.saturating_sub(1));
                            cfg(&[r], &[&a, &b], &["raw/999"])
                        } else {
                            cfg(&[r], &[], &[])
                        })
                    })
                    .collect::<Result<_, _>>()?;
                p.answer(&c, configs)?;
            }
        }
        Ok(p.finish()?)
    }

    #[test]
    fn expansion_reaches_a_fixpoint_with_dependencies_first_and_query_inputs_unplanned()
    -> TestResult {
        let (_d, g) = graph()?;
        let plan = drive(&g, &State::new(), &["sum/2", "sum/3"], false)?;
        let outs: Vec<&str> = plan.nodes.iter().map(|n| n.outputs[0].as_str()).collect();
        assert_eq!(outs.len(), 5, "sum/2, sum/3, raw/1..3 each once: {outs:?}");
        for (i, n) in plan.nodes.iter().enumerate() {
            assert!(n.deps.iter().all(|&d| d < i), "dependencies come first");
        }
        assert!(!outs.contains(&"raw/999"), "QUERY inputs are never planned");
        assert_eq!(plan.job_graph().outputs.len(), 2);
        Ok(())
    }

    #[test]
    fn a_cycle_is_named() -> TestResult {
        let (_d, g) = graph()?;
        let mut p = Planner::new(&g, &["sum/1".to_string()], false)?;
        let calls = p.next_calls(&State::new())?;
        p.answer(&calls[0], vec![cfg(&["sum/1"], &["side/1"], &[])])?;
        let calls = p.next_calls(&State::new())?;
        p.answer(&calls[0], vec![cfg(&["side/1"], &["sum/1"], &[])])?;
        assert!(p.next_calls(&State::new())?.is_empty());
        let e = p.finish().unwrap_err().to_string();
        assert!(e.contains("cycle") && e.contains("sum/1") && e.contains("side/1"), "{e}");
        Ok(())
    }

    #[test]
    fn unknown_refs_fail_before_any_call_and_unowned_materialize_inputs_fail() -> TestResult {
        let (_d, g) = graph()?;
        assert!(matches!(
            Planner::new(&g, &["nope/1".to_string()], false),
            Err(PlanError::Lookup(_))
        ));
        let mut p = Planner::new(&g, &["sum/1".to_string()], false)?;
        let calls = p.next_calls(&State::new())?;
        p.answer(&calls[0], vec![cfg(&["sum/1"], &["external/1"], &["also/external"])])?;
        let e = p.next_calls(&State::new()).unwrap_err().to_string();
        assert!(e.contains("external/1") && e.contains("MATERIALIZE"), "{e}");
        Ok(())
    }

    #[test]
    fn two_different_configs_for_one_ref_are_refused_and_identical_ones_merge() -> TestResult {
        let (_d, g) = graph()?;
        let mut p = Planner::new(&g, &["sum/1".to_string(), "sum/2".to_string()], false)?;
        let calls = p.next_calls(&State::new())?;
        p.answer(
            &calls[0],
            vec![cfg(&["sum/1", "side/1"], &[], &[]), cfg(&["sum/1", "side/1"], &[], &[])],
        )?;
        let mut p2 = Planner::new(&g, &["sum/1".to_string()], false)?;
        let calls = p2.next_calls(&State::new())?;
        let e =
            p2.answer(&calls[0], vec![cfg(&["sum/1"], &[], &[]), cfg(&["sum/1"], &["raw/1"], &[])]);
        assert!(matches!(e, Err(PlanError::Overlap { .. })));
        let _ = p;
        Ok(())
    }

    #[test]
    fn from_a_recorded_job_graph_the_plan_is_the_same() -> TestResult {
        let (_d, g) = graph()?;
        let plan = drive(&g, &State::new(), &["sum/2"], false)?;
        let again = Plan::from_job_graph(&plan.job_graph())?;
        assert_eq!(again.nodes, plan.nodes);
        assert_eq!(again.requested, plan.requested);
        Ok(())
    }
}
