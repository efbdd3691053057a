//! `databuild execute`: running exactly a given `JobGraph` (the seed's `Execute`).
//!
//! The graph comes as one JSON object in canonical proto3 JSON, as `analyze --format json` prints
//! it. No `config` call is made: the tasks' configs are taken as written, so they are checked here
//! as strictly as a `config` answer is (ownership, refs, depTypes, env names, exec limits), and the
//! graph as a whole as strictly as the planner's own output (one task per ref, every MATERIALIZE
//! input produced or AVAILABLE, no cycle). Any failure is reported before anything is recorded.
//!
//! Choices a reader would question:
//! - `outputs` (the requested refs) may be empty: then every task output is requested, in task
//!   order, so a hand-written graph of tasks alone runs all of them. A graph with neither tasks
//!   nor outputs is refused. Requested refs are de-duplicated, first occurrence kept.
//! - A requested ref must be owned by a job of the graph file, as in `build`, and be produced by
//!   a task or AVAILABLE.
//! - The JobGraph's `label` is not checked: the plan carries the graph file's label, and the jobs
//!   are what binds a JobGraph to a graph file (every task's job must be one of its jobs, and every
//!   output owned by that job).
//! - Tasks with the same job and the same config merge (a ref may repeat only that way); tasks
//!   are numbered from 1 in the order written, and errors name that number.
//! - A dependency cycle is refused even when every task in it is AVAILABLE: whether a file is a
//!   valid JobGraph does not depend on the catalog.
//! - As in `build`, a task ALL of whose outputs are AVAILABLE is not run: it goes to
//!   [`Plan::dropped`] and its outputs to [`Plan::satisfied`]. A task with any output not
//!   AVAILABLE runs whole (rebuilding its AVAILABLE outputs too: a config is one run).

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::config::check_exec_limits;
use crate::graph::{Graph, LookupError, check_ref};
use crate::planner::{Catalog, Dropped, Plan, PlanError};
use crate::proto::{DepType, GraphLabel, JobGraph, PartitionRef, Task};

/// Why a `JobGraph` cannot be executed. Reported before anything is recorded (exit 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecuteError {
    /// The text is not one JobGraph in proto3 JSON.
    #[error("not a JobGraph in proto3 JSON (as `databuild analyze --format json` prints it): {0}")]
    Parse(String),
    /// Neither tasks nor outputs.
    #[error("the JobGraph has no tasks and no outputs: nothing to execute")]
    Empty,
    /// A task without `job` (or with an empty label).
    #[error(
        "task #{task} has no job label; give it \"job\": {{\"label\": \"...\"}} naming a job of the graph file"
    )]
    MissingJob {
        /// The task's number, from 1.
        task: usize,
    },
    /// A task without `config`.
    #[error(
        "task #{task} (job '{job}') has no config; give it a \"config\" with its outputs, inputs, args and env"
    )]
    MissingConfig {
        /// The task's number, from 1.
        task: usize,
        /// The job's label.
        job: String,
    },
    /// A task's job is not in the graph file.
    #[error(
        "task #{task} names job '{job}', which graph '{graph}' does not define; execute a JobGraph analyzed with this graph file"
    )]
    UnknownJob {
        /// The task's number, from 1.
        task: usize,
        /// The job's label.
        job: String,
        /// The graph file's label.
        graph: String,
    },
    /// A config with no outputs.
    #[error("task #{task} (job '{job}') has no outputs; a config must produce at least one ref")]
    NoOutputs {
        /// The task's number, from 1.
        task: usize,
        /// The job's label.
        job: String,
    },
    /// An output another job owns.
    #[error(
        "task #{task} (job '{job}') output '{output}' is owned by job '{owner}', not '{job}'; a task may only produce refs its own job owns"
    )]
    NotOwned {
        /// The task's number, from 1.
        task: usize,
        /// The job's label.
        job: String,
        /// The output.
        output: String,
        /// The job that owns it.
        owner: String,
    },
    /// An output that is not a valid ref, or that no job (or more than one) owns.
    #[error("task #{task} (job '{job}') output: {source}")]
    Output {
        /// The task's number, from 1.
        task: usize,
        /// The job's label.
        job: String,
        /// Why it has no single owner.
        #[source]
        source: LookupError,
    },
    /// An input without `partitionRef`, with an invalid ref, or with an unknown depType.
    #[error("task #{task} (job '{job}') input: {message}")]
    Input {
        /// The task's number, from 1.
        task: usize,
        /// The job's label.
        job: String,
        /// What is wrong.
        message: String,
    },
    /// A config that could not be run (an invalid env name, or past the kernel's exec limits).
    #[error("task #{task} (job '{job}') cannot be run: {message}")]
    Unrunnable {
        /// The task's number, from 1.
        task: usize,
        /// The job's label.
        job: String,
        /// Why.
        message: String,
    },
    /// Two different tasks produce one ref.
    #[error(
        "'{partition}' is produced by task #{first} and task #{second}, which differ; a ref must come from one task (identical tasks may repeat)"
    )]
    Overlap {
        /// The ref.
        partition: String,
        /// The first task producing it, from 1.
        first: usize,
        /// The other task, from 1.
        second: usize,
    },
    /// A MATERIALIZE input neither produced in the graph nor AVAILABLE.
    #[error(
        "task #{task} (job '{job}') needs '{input}' (MATERIALIZE), which no task of this JobGraph produces and which is not AVAILABLE; add a task producing it (as `databuild analyze` does) or build it first"
    )]
    MissingInput {
        /// The task's number, from 1.
        task: usize,
        /// The job's label.
        job: String,
        /// The input ref.
        input: String,
    },
    /// A requested ref that is not a valid ref or that no single job owns.
    #[error("requested output: {0}")]
    Requested(#[source] LookupError),
    /// A requested ref neither produced in the graph nor AVAILABLE.
    #[error(
        "requested output '{0}' is produced by no task of this JobGraph and is not AVAILABLE; add a task producing it or remove it from \"outputs\""
    )]
    Unproduced(String),
    /// MATERIALIZE edges form a cycle.
    #[error("dependency cycle: {0}")]
    Cycle(String),
    /// Any other planning failure.
    #[error(transparent)]
    Plan(PlanError),
}

impl From<PlanError> for ExecuteError {
    fn from(e: PlanError) -> ExecuteError {
        match e {
            PlanError::Cycle(c) => ExecuteError::Cycle(c),
            other => ExecuteError::Plan(other),
        }
    }
}

/// Parses `text` as exactly one `JobGraph` JSON object in canonical proto3 JSON (camelCase or
/// snake_case names, enum names or numbers), as `analyze --format json` prints it. Refused: unknown
/// fields at any depth (the pbjson-generated deserializers deny them; tested below), a depType
/// that is neither a known name nor a known number, and anything after the object but whitespace.
pub fn parse_job_graph(text: &str) -> Result<JobGraph, ExecuteError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(ExecuteError::Parse("the input is empty".into()));
    }
    if !t.starts_with('{') {
        return Err(ExecuteError::Parse("the input is not a JSON object".into()));
    }
    serde_json::from_str::<JobGraph>(text).map_err(|e| ExecuteError::Parse(e.to_string()))
}

/// One task after the per-task checks.
struct Checked<'a> {
    /// The task's number, from 1.
    number: usize,
    job: &'a str,
    task: &'a Task,
    outputs: Vec<&'a str>,
    materialize: Vec<&'a str>,
}

/// The plan to run exactly `jg` against `graph` and the catalog: no `config` calls. Checks every
/// task and the graph as a whole (see the module docs), then drops the tasks all of whose outputs
/// are AVAILABLE. The plan's tasks are in topological order, its `requested` refs are `jg`'s
/// outputs (or, if it names none, every task output), and its label is the graph file's.
pub fn plan_for_execute(
    graph: &Graph,
    catalog: &dyn Catalog,
    jg: &JobGraph,
) -> Result<Plan, ExecuteError> {
    if jg.nodes.is_empty() && jg.outputs.is_empty() {
        return Err(ExecuteError::Empty);
    }
    // Per task: job, config, outputs (owned by the job), inputs, env, exec limits. Identical
    // tasks merge; a ref from two different tasks is refused.
    let mut tasks: Vec<Checked> = Vec::with_capacity(jg.nodes.len());
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, t) in jg.nodes.iter().enumerate() {
        let c = check_task(graph, i + 1, t)?;
        match c.outputs.iter().find_map(|o| producer.get(o).copied()) {
            Some(k) if tasks[k].task == t => continue,
            Some(k) => {
                let theirs = &tasks[k];
                let partition = c
                    .outputs
                    .iter()
                    .find(|o| producer.get(*o) == Some(&k))
                    .map_or_else(String::new, |o| (*o).to_string());
                return Err(ExecuteError::Overlap {
                    partition,
                    first: theirs.number,
                    second: c.number,
                });
            }
            None => {}
        }
        for o in &c.outputs {
            producer.insert(o, tasks.len());
        }
        tasks.push(c);
    }
    // Every MATERIALIZE input is produced here or AVAILABLE.
    for c in &tasks {
        if let Some(input) =
            c.materialize.iter().find(|m| !producer.contains_key(**m) && !catalog.is_available(m))
        {
            return Err(ExecuteError::MissingInput {
                task: c.number,
                job: c.job.to_string(),
                input: (*input).to_string(),
            });
        }
    }
    // The requested refs: owned, and produced here or AVAILABLE.
    let mut requested: Vec<String> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let wanted: Vec<&str> = if jg.outputs.is_empty() {
        tasks.iter().flat_map(|c| c.outputs.iter().copied()).collect()
    } else {
        jg.outputs.iter().map(|p| p.str.as_str()).collect()
    };
    for r in wanted {
        if !seen.insert(r) {
            continue;
        }
        graph.owner(r).map_err(ExecuteError::Requested)?;
        if !producer.contains_key(r) && !catalog.is_available(r) {
            return Err(ExecuteError::Unproduced(r.to_string()));
        }
        requested.push(r.to_string());
    }
    let label = Some(GraphLabel { label: graph.label.clone() });
    let outputs: Vec<PartitionRef> =
        requested.iter().map(|r| PartitionRef { str: r.clone() }).collect();
    // The whole graph must be acyclic, whatever the catalog says; the planner's sort says so.
    let whole = JobGraph {
        label: label.clone(),
        outputs: outputs.clone(),
        nodes: tasks.iter().map(|c| c.task.clone()).collect(),
    };
    Plan::from_job_graph(&whole)?;
    // Tasks all of whose outputs are AVAILABLE are not run; their outputs are satisfied.
    let mut dropped: Vec<Dropped> = Vec::new();
    let mut satisfied: BTreeSet<String> = BTreeSet::new();
    let mut run: Vec<Task> = Vec::with_capacity(tasks.len());
    for c in tasks {
        if c.outputs.iter().all(|o| catalog.is_available(o)) {
            satisfied.extend(c.outputs.iter().map(|o| (*o).to_string()));
            dropped.push(Dropped {
                job: c.job.to_string(),
                outputs: c.outputs.iter().map(|o| (*o).to_string()).collect(),
            });
        } else {
            run.push(c.task.clone());
        }
    }
    let mut plan = Plan::from_job_graph(&JobGraph { label, outputs, nodes: run })?;
    satisfied.extend(plan.satisfied);
    plan.satisfied = satisfied.into_iter().collect();
    plan.dropped = dropped;
    Ok(plan)
}

/// The checks of one task that need nothing but the graph file: as strict as for a `config`
/// answer.
fn check_task<'a>(graph: &Graph, number: usize, t: &'a Task) -> Result<Checked<'a>, ExecuteError> {
    let job = match &t.job {
        Some(j) if !j.label.is_empty() => j.label.as_str(),
        _ => return Err(ExecuteError::MissingJob { task: number }),
    };
    let Some(config) = &t.config else {
        return Err(ExecuteError::MissingConfig { task: number, job: job.to_string() });
    };
    let Some(index) = graph.job(job) else {
        return Err(ExecuteError::UnknownJob {
            task: number,
            job: job.to_string(),
            graph: graph.label.clone(),
        });
    };
    if config.outputs.is_empty() {
        return Err(ExecuteError::NoOutputs { task: number, job: job.to_string() });
    }
    let mut outputs = Vec::with_capacity(config.outputs.len());
    for o in &config.outputs {
        match graph.owner(&o.str) {
            Ok(j) if j == index => outputs.push(o.str.as_str()),
            Ok(j) => {
                return Err(ExecuteError::NotOwned {
                    task: number,
                    job: job.to_string(),
                    output: o.str.clone(),
                    owner: graph.jobs[j].label.clone(),
                });
            }
            Err(source) => {
                return Err(ExecuteError::Output { task: number, job: job.to_string(), source });
            }
        }
    }
    let input_err =
        |message: String| ExecuteError::Input { task: number, job: job.to_string(), message };
    let mut materialize = Vec::new();
    for (n, d) in config.inputs.iter().enumerate() {
        let Some(p) = &d.partition_ref else {
            return Err(input_err(format!("input #{} has no partitionRef", n + 1)));
        };
        check_ref(&p.str).map_err(|e| input_err(e.to_string()))?;
        match DepType::try_from(d.dep_type) {
            Ok(DepType::Materialize) => materialize.push(p.str.as_str()),
            Ok(DepType::Query) => {}
            Err(_) => {
                return Err(input_err(format!(
                    "'{}' has unknown depType {}; use MATERIALIZE or QUERY",
                    p.str, d.dep_type
                )));
            }
        }
    }
    let unrunnable =
        |message: String| ExecuteError::Unrunnable { task: number, job: job.to_string(), message };
    if let Some(k) = config.env.keys().find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
    {
        return Err(unrunnable(format!("invalid env name {k:?}")));
    }
    check_exec_limits(config).map_err(unrunnable)?;
    Ok(Checked { number, job, task: t, outputs, materialize })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::tests::{cfg, graph};
    use crate::proto::{DataDep, JobConfig, JobLabel};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A catalog that shows exactly these refs AVAILABLE.
    struct Fake(HashSet<String>);

    impl Catalog for Fake {
        fn is_available(&self, partition: &str) -> bool {
            self.0.contains(partition)
        }
    }

    fn none() -> Fake {
        Fake(HashSet::new())
    }

    fn available(refs: &[&str]) -> Fake {
        Fake(refs.iter().map(|r| r.to_string()).collect())
    }

    fn task(job: &str, config: JobConfig) -> Task {
        Task { job: Some(JobLabel { label: job.to_string() }), config: Some(config) }
    }

    fn jg(outputs: &[&str], nodes: Vec<Task>) -> JobGraph {
        JobGraph {
            label: Some(GraphLabel { label: "g".into() }),
            outputs: outputs.iter().map(|o| PartitionRef { str: o.to_string() }).collect(),
            nodes,
        }
    }

    /// sum/2 needs raw/1 and raw/2 (MATERIALIZE) and raw/999 (QUERY); raw/1 and raw/2 have no
    /// inputs. Listed dependants first, so the plan must reorder them.
    fn chain() -> JobGraph {
        jg(
            &["sum/2"],
            vec![
                task("sum", cfg(&["sum/2"], &["raw/1", "raw/2"], &["raw/999"])),
                task("raw", cfg(&["raw/1"], &[], &[])),
                task("raw", cfg(&["raw/2"], &[], &[])),
            ],
        )
    }

    fn err(g: &Graph, c: &dyn Catalog, j: &JobGraph) -> Result<String, Box<dyn std::error::Error>> {
        match plan_for_execute(g, c, j) {
            Ok(p) => {
                Err(format!("expected an error, got a plan of {} tasks", p.nodes.len()).into())
            }
            Err(e) => Ok(e.to_string()),
        }
    }

    fn outs(p: &Plan) -> Vec<&str> {
        p.nodes.iter().map(|n| n.outputs[0].as_str()).collect()
    }

    #[test]
    fn a_valid_graph_plans_dependencies_first_without_config_calls() -> TestResult {
        let (_d, g) = graph()?;
        let p = plan_for_execute(&g, &none(), &chain())?;
        assert_eq!(outs(&p), ["raw/1", "raw/2", "sum/2"]);
        assert_eq!(p.nodes[2].deps, [0, 1]);
        assert_eq!(p.requested, ["sum/2"]);
        assert_eq!(p.label, "g");
        assert!(p.satisfied.is_empty() && p.dropped.is_empty());
        assert_eq!(p.nodes[2].query, ["raw/999"], "QUERY inputs need not be produced");
        Ok(())
    }

    #[test]
    fn the_json_analyze_prints_round_trips_to_the_same_plan() -> TestResult {
        let (_d, g) = graph()?;
        let p = plan_for_execute(&g, &none(), &chain())?;
        let text = serde_json::to_string(&p.job_graph())?;
        assert!(text.contains("\"partitionRef\""), "camelCase as analyze prints it: {text}");
        let again = plan_for_execute(&g, &none(), &parse_job_graph(&text)?)?;
        assert_eq!(again, p);
        // snake_case names and enum numbers are read too, with whitespace around the object.
        let snake = r#"
 {"label":{"label":"g"},"outputs":[{"str":"sum/1"}],"nodes":[
  {"job":{"label":"sum"},"config":{"outputs":[{"str":"sum/1"}],
   "inputs":[{"dep_type":1,"partition_ref":{"str":"raw/1"}}],"args":["a"],"env":{"K":"V"}}},
  {"job":{"label":"raw"},"config":{"outputs":[{"str":"raw/1"}]}}]}
"#;
        let p = plan_for_execute(&g, &none(), &parse_job_graph(snake)?)?;
        assert_eq!(outs(&p), ["raw/1", "sum/1"]);
        assert_eq!(p.nodes[1].config.env["K"], "V");
        Ok(())
    }

    #[test]
    fn unknown_fields_trailing_text_and_non_objects_are_refused() {
        let bad = [
            r#"{"label":{"label":"g"},"outputs":[],"nodes":[],"extra":1}"#,
            r#"{"nodes":[{"job":{"label":"raw"},"cfg":{}}]}"#,
            r#"{"nodes":[{"job":{"label":"raw"},"config":{"outputs":[{"str":"raw/1"}],"inputs":[{"dep_type_code":1}]}}]}"#,
            r#"{"nodes":[{"job":{"label":"raw"},"config":{"outputs":[{"str":"raw/1","x":0}]}}]}"#,
            r#"{"nodes":[{"job":{"label":"raw"},"config":{"outputs":[{"str":"raw/1"}],"inputs":[{"depType":"MATERIALISE","partitionRef":{"str":"raw/2"}}]}}]}"#,
            r#"{"nodes":[]} {"nodes":[]}"#,
            r#"[{"nodes":[]}]"#,
            "",
            "   \n",
        ];
        for text in bad {
            let e = parse_job_graph(text);
            assert!(matches!(e, Err(ExecuteError::Parse(_))), "{text:?} gave {e:?}");
        }
        let Err(e) = parse_job_graph(bad[0]) else { return };
        assert!(e.to_string().contains("unknown field `extra`"), "{e}");
    }

    #[test]
    fn a_task_needs_a_known_job_and_a_config_with_outputs() -> TestResult {
        let (_d, g) = graph()?;
        let no_job = jg(&[], vec![Task { job: None, config: Some(cfg(&["raw/1"], &[], &[])) }]);
        assert!(err(&g, &none(), &no_job)?.contains("task #1 has no job label"));
        let empty_label = jg(&[], vec![task("", cfg(&["raw/1"], &[], &[]))]);
        assert!(err(&g, &none(), &empty_label)?.contains("task #1 has no job label"));
        let no_config = jg(
            &[],
            vec![
                task("raw", cfg(&["raw/1"], &[], &[])),
                Task { job: Some(JobLabel { label: "raw".into() }), config: None },
            ],
        );
        let e = err(&g, &none(), &no_config)?;
        assert!(e.contains("task #2 (job 'raw') has no config"), "{e}");
        let unknown = jg(&[], vec![task("cook", cfg(&["raw/1"], &[], &[]))]);
        let e = err(&g, &none(), &unknown)?;
        assert!(e.contains("task #1 names job 'cook'") && e.contains("does not define"), "{e}");
        let no_outputs = jg(&[], vec![task("raw", cfg(&[], &[], &[]))]);
        let e = err(&g, &none(), &no_outputs)?;
        assert!(e.contains("task #1 (job 'raw') has no outputs"), "{e}");
        let nothing = jg(&[], vec![]);
        assert!(matches!(plan_for_execute(&g, &none(), &nothing), Err(ExecuteError::Empty)));
        Ok(())
    }

    #[test]
    fn outputs_must_be_valid_refs_owned_by_their_task_s_job() -> TestResult {
        let (_d, g) = graph()?;
        let other = jg(&[], vec![task("raw", cfg(&["raw/1", "sum/1"], &[], &[]))]);
        let e = err(&g, &none(), &other)?;
        assert!(
            e.contains("task #1 (job 'raw') output 'sum/1' is owned by job 'sum', not 'raw'"),
            "{e}"
        );
        let nobody = jg(&[], vec![task("raw", cfg(&["cooked/1"], &[], &[]))]);
        let e = err(&g, &none(), &nobody)?;
        assert!(e.contains("task #1 (job 'raw') output: no job produces 'cooked/1'"), "{e}");
        let invalid = jg(&[], vec![task("raw", cfg(&["raw/1 "], &[], &[]))]);
        let e = err(&g, &none(), &invalid)?;
        assert!(e.contains("invalid partition ref") && e.contains("whitespace"), "{e}");
        Ok(())
    }

    #[test]
    fn inputs_need_a_valid_ref_and_a_known_dep_type() -> TestResult {
        let (_d, g) = graph()?;
        let with = |d: DataDep| {
            let mut c = cfg(&["sum/1"], &[], &[]);
            c.inputs.push(d);
            jg(&[], vec![task("sum", c)])
        };
        let e = err(&g, &none(), &with(DataDep { dep_type: 1, partition_ref: None }))?;
        assert!(e.contains("task #1 (job 'sum') input: input #1 has no partitionRef"), "{e}");
        let r = |s: &str| Some(PartitionRef { str: s.to_string() });
        let e = err(&g, &none(), &with(DataDep { dep_type: 0, partition_ref: r("") }))?;
        assert!(e.contains("invalid partition ref") && e.contains("empty"), "{e}");
        let e = err(&g, &none(), &with(DataDep { dep_type: 7, partition_ref: r("raw/1") }))?;
        assert!(e.contains("'raw/1' has unknown depType 7"), "{e}");
        // In JSON an unknown depType is refused when parsing; a JobGraph decoded from protobuf
        // (gRPC `Execute`) keeps any number, and is refused above.
        let text = r#"{"nodes":[{"job":{"label":"sum"},"config":{"outputs":[{"str":"sum/1"}],"inputs":[{"depType":7,"partitionRef":{"str":"raw/1"}}]}}]}"#;
        assert!(matches!(parse_job_graph(text), Err(ExecuteError::Parse(_))));
        Ok(())
    }

    #[test]
    fn a_materialize_input_must_be_produced_here_or_available() -> TestResult {
        let (_d, g) = graph()?;
        let j = jg(&["sum/1"], vec![task("sum", cfg(&["sum/1"], &["raw/1"], &["raw/5"]))]);
        let e = err(&g, &none(), &j)?;
        assert!(
            e.contains("task #1 (job 'sum') needs 'raw/1' (MATERIALIZE)")
                && e.contains("not AVAILABLE"),
            "{e}"
        );
        // AVAILABLE is enough, and an unowned AVAILABLE input too (as in `build`).
        let p = plan_for_execute(&g, &available(&["raw/1"]), &j)?;
        assert_eq!(outs(&p), ["sum/1"]);
        assert_eq!(p.satisfied, ["raw/1"]);
        let ext = jg(&["sum/1"], vec![task("sum", cfg(&["sum/1"], &["ext/1"], &[]))]);
        assert!(plan_for_execute(&g, &available(&["ext/1"]), &ext).is_ok());
        Ok(())
    }

    #[test]
    fn a_ref_from_two_different_tasks_is_refused_and_identical_tasks_merge() -> TestResult {
        let (_d, g) = graph()?;
        let same = jg(
            &[],
            vec![
                task("sum", cfg(&["sum/1", "side/1"], &[], &[])),
                task("raw", cfg(&["raw/1"], &[], &[])),
                task("sum", cfg(&["sum/1", "side/1"], &[], &[])),
            ],
        );
        let p = plan_for_execute(&g, &none(), &same)?;
        assert_eq!(outs(&p), ["sum/1", "raw/1"]);
        assert_eq!(p.requested, ["sum/1", "side/1", "raw/1"]);
        let differ = jg(
            &[],
            vec![
                task("sum", cfg(&["sum/1", "side/1"], &[], &[])),
                task("raw", cfg(&["raw/1"], &[], &[])),
                task("sum", cfg(&["side/1"], &["raw/1"], &[])),
            ],
        );
        let e = err(&g, &none(), &differ)?;
        assert!(e.contains("'side/1' is produced by task #1 and task #3"), "{e}");
        Ok(())
    }

    #[test]
    fn a_cycle_is_named_even_when_all_of_it_is_available() -> TestResult {
        let (_d, g) = graph()?;
        let j = jg(
            &["sum/1"],
            vec![
                task("sum", cfg(&["sum/1"], &["side/1"], &[])),
                task("sum", cfg(&["side/1"], &["sum/1"], &[])),
            ],
        );
        for c in [none(), available(&["sum/1", "side/1"])] {
            let e = plan_for_execute(&g, &c, &j);
            assert!(matches!(&e, Err(ExecuteError::Cycle(_))), "{e:?}");
            let e = err(&g, &c, &j)?;
            assert!(e.contains("cycle") && e.contains("sum/1") && e.contains("side/1"), "{e}");
        }
        let own = jg(&[], vec![task("sum", cfg(&["sum/1"], &["sum/1"], &[]))]);
        assert!(err(&g, &none(), &own)?.contains("sum/1 -> sum/1"));
        Ok(())
    }

    #[test]
    fn a_config_the_kernel_would_refuse_or_a_bad_env_name_is_refused() -> TestResult {
        let (_d, g) = graph()?;
        let mut c = cfg(&["raw/1"], &[], &[]);
        c.args = vec!["x".repeat(200_000)];
        let e = err(&g, &none(), &jg(&[], vec![task("raw", c)]))?;
        assert!(e.contains("task #1 (job 'raw') cannot be run: argument 1"), "{e}");
        let mut c = cfg(&["raw/1"], &[], &[]);
        c.env.insert("A=B".into(), "v".into());
        let e = err(&g, &none(), &jg(&[], vec![task("raw", c)]))?;
        assert!(e.contains("cannot be run: invalid env name \"A=B\""), "{e}");
        Ok(())
    }

    #[test]
    fn requested_refs_must_be_owned_and_produced_or_available() -> TestResult {
        let (_d, g) = graph()?;
        let t = || vec![task("raw", cfg(&["raw/1"], &[], &[]))];
        let e = err(&g, &none(), &jg(&["raw/1", "raw/2"], t()))?;
        assert!(e.contains("requested output 'raw/2' is produced by no task"), "{e}");
        let e = err(&g, &none(), &jg(&["cooked/1"], t()))?;
        assert!(e.contains("requested output: no job produces 'cooked/1'"), "{e}");
        let p =
            plan_for_execute(&g, &available(&["raw/2"]), &jg(&["raw/1", "raw/2", "raw/1"], t()))?;
        assert_eq!(p.requested, ["raw/1", "raw/2"], "de-duplicated, in order");
        assert_eq!(outs(&p), ["raw/1"]);
        assert_eq!(p.satisfied, ["raw/2"]);
        // No outputs: every task output is requested.
        let mut all = chain();
        all.outputs.clear();
        let p = plan_for_execute(&g, &none(), &all)?;
        assert_eq!(p.requested, ["sum/2", "raw/1", "raw/2"]);
        // Only requested refs: no tasks, everything AVAILABLE.
        let p = plan_for_execute(&g, &available(&["raw/3"]), &jg(&["raw/3"], vec![]))?;
        assert!(p.nodes.is_empty());
        assert_eq!(p.satisfied, ["raw/3"]);
        Ok(())
    }

    #[test]
    fn tasks_whose_outputs_are_all_available_are_dropped_and_the_rest_run_whole() -> TestResult {
        let (_d, g) = graph()?;
        let j = jg(
            &["sum/2"],
            vec![
                task("sum", cfg(&["sum/2", "side/2"], &["raw/1", "raw/2"], &[])),
                task("raw", cfg(&["raw/1"], &[], &[])),
                task("raw", cfg(&["raw/2"], &[], &[])),
                task("raw", cfg(&["raw/3"], &[], &[])),
            ],
        );
        // raw/1 and raw/3 are AVAILABLE: their tasks are dropped. side/2 is AVAILABLE but sum/2
        // is not: that task runs whole.
        let c = available(&["raw/1", "raw/3", "side/2"]);
        let p = plan_for_execute(&g, &c, &j)?;
        assert_eq!(outs(&p), ["raw/2", "sum/2"]);
        assert_eq!(p.nodes[1].outputs, ["sum/2", "side/2"]);
        assert_eq!(p.nodes[1].deps, [0]);
        assert_eq!(p.satisfied, ["raw/1", "raw/3"]);
        assert_eq!(
            p.dropped,
            [
                Dropped { job: "raw".into(), outputs: vec!["raw/1".into()] },
                Dropped { job: "raw".into(), outputs: vec!["raw/3".into()] },
            ]
        );
        assert_eq!(p.producer.get("side/2"), Some(&1));
        // Everything AVAILABLE: nothing runs.
        let c = available(&["raw/1", "raw/2", "raw/3", "sum/2", "side/2"]);
        let p = plan_for_execute(&g, &c, &j)?;
        assert!(p.nodes.is_empty());
        assert_eq!(p.dropped.len(), 4);
        assert!(p.satisfied.contains(&"sum/2".to_string()));
        Ok(())
    }
}
