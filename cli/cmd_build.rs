//! `build`, `analyze`: the commands that plan (and run) jobs.

use std::sync::Arc;
use std::time::Instant;

use databuild::driver::{KILL_GRACE, Observer, Outcome, Settings};
use databuild::graph::Graph;
use databuild::planner::Plan;
use databuild::proto::BuildRequestStatus;
use databuild::request::{self, BuildSpec};
use databuild::store::{Store, StoreOptions};
use databuild_log::WriterOptions;

use crate::args::{AnalyzeArgs, BuildArgs, Format};
use crate::context::Ctx;
use crate::exit::{self, CliError};
use crate::progress::Progress;
use crate::render::{self, json, out};

pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::internal(format!("cannot start the async runtime: {e}")))
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Opens the event log as its writer and reports what opening found.
pub fn open_store(ctx: &Ctx, wait: bool) -> Result<Store, CliError> {
    let opts = StoreOptions {
        writer: WriterOptions { wait_for_lock: wait, ..WriterOptions::default() },
        ..StoreOptions::default()
    };
    let (store, report) =
        Store::open(&ctx.log_dir, opts).map_err(|e| exit::store_error(&e, &ctx.log_dir))?;
    for w in report.warnings.iter().chain(store.snapshot_warnings()) {
        eprintln!("warning: {w}");
    }
    Ok(store)
}

pub fn settings(ctx: &Ctx, jobs: Option<u32>) -> Result<Settings, CliError> {
    let shim = std::env::current_exe()
        .map_err(|e| CliError::internal(format!("cannot find the databuild executable: {e}")))?;
    Ok(Settings {
        jobs: jobs.map_or_else(cpus, |j| j as usize),
        shim,
        logs_dir: ctx.logs_dir.clone(),
        grace: KILL_GRACE,
    })
}

/// Prints how each request ended (one line each, or one JSON object each).
pub fn print_outcome(ctx: &Ctx, outcome: &Outcome, elapsed: std::time::Duration, verb: &str) {
    for r in &outcome.requests {
        if ctx.format == Format::Json {
            out(&json(&serde_json::json!({
                "buildRequestId": r.request,
                "status": r.status.as_str_name(),
                "message": r.message,
            })));
        } else if !ctx.quiet || r.status != BuildRequestStatus::BuildRequestCompleted {
            let word = render::paint(render::color_stdout(), render::short(r.status.as_str_name()));
            let msg = if r.message.is_empty() {
                String::new()
            } else {
                format!(": {}", render::safe(&r.message))
            };
            out(&format!(
                "{verb} {word} in {} (build request {}){msg}",
                render::duration(elapsed),
                r.request
            ));
        }
    }
}

/// The exit code for how a set of requests ended: cancelled by a signal (130/143), any request
/// not COMPLETED (1, naming it), or success.
pub fn judge(outcome: &Outcome) -> Result<u8, CliError> {
    if let Some(sig) = outcome.signal {
        let (code, name) = if sig == databuild::sys::SIGINT {
            (exit::CANCELLED_SIGINT, "SIGINT")
        } else {
            (exit::CANCELLED_SIGTERM, "SIGTERM")
        };
        return Err(CliError {
            code,
            line: format!(
                "cancelled by {name}; running jobs were stopped and the request recorded as CANCELLED; run the build again to continue"
            ),
            detail: Vec::new(),
        });
    }
    match outcome.requests.iter().find(|r| r.status != BuildRequestStatus::BuildRequestCompleted) {
        Some(f) => Err(CliError::failed(format!(
            "build request {} {}; see `databuild builds {}` and `databuild logs RUN` for the failed runs",
            f.request,
            render::short(f.status.as_str_name()),
            f.request
        ))),
        None => Ok(exit::SUCCESS),
    }
}

pub fn build(ctx: &Ctx, a: BuildArgs) -> Result<u8, CliError> {
    ctx.formats("build", &[Format::Text, Format::Json])?;
    let graph = Arc::new(ctx.graph()?);
    // Bad refs are reported before the log is even opened.
    for r in &a.refs {
        graph.owner(r).map_err(|e| exit::lookup_error(&e))?;
    }
    let rt = runtime()?;
    if ctx.verbose > 0 {
        eprintln!(
            "graph {} ({}), event log {}, job logs {}",
            graph.label,
            graph.path.display(),
            ctx.log_dir.display(),
            ctx.logs_dir.display()
        );
    }
    ctx.check_logs_dir()?;
    let store = Arc::new(open_store(ctx, a.wait)?);
    crate::cmd_recover::reconcile_before_build(ctx, &store)?;
    let progress =
        Arc::new(Progress::new(ctx.quiet || ctx.format == Format::Json).verbose(ctx.verbose > 0));
    let observer: Arc<dyn Observer> = progress.clone();
    let started = Instant::now();
    let spec = BuildSpec { refs: a.refs.clone(), force: a.force };
    let result =
        rt.block_on(request::build(store.clone(), graph, settings(ctx, a.jobs)?, observer, spec));
    progress.finish();
    close(store);
    match result {
        Ok((_, outcome)) => {
            print_outcome(ctx, &outcome, started.elapsed(), "build");
            judge(&outcome)
        }
        Err(e) => Err(exit::build_error(&e, &ctx.log_dir)),
    }
}

/// Closes the store if this is the last handle (dropping it closes cleanly too).
pub fn close(store: Arc<Store>) {
    if let Ok(s) = Arc::try_unwrap(store)
        && let Err(e) = s.close()
    {
        eprintln!("warning: closing the event log: {e}");
    }
}

pub fn analyze(ctx: &Ctx, a: AnalyzeArgs) -> Result<u8, CliError> {
    let graph = ctx.graph()?;
    for r in &a.refs {
        graph.owner(r).map_err(|e| exit::lookup_error(&e))?;
    }
    let (state, _) = crate::cmd_history::load(ctx)?;
    let rt = runtime()?;
    let jobs = a.jobs.map_or_else(cpus, |j| j as usize);
    let plan = rt
        .block_on(request::analyze(&graph, state, &a.refs, a.force, jobs))
        .map_err(|e| exit::plan_error(&e))?;
    if ctx.verbose > 0 {
        for l in crate::progress::dropped_lines(&plan.dropped) {
            eprintln!("{l}");
        }
    }
    match ctx.format {
        Format::Json => out(&json(&plan.job_graph())),
        Format::Text => analyze_text(&graph, &plan),
        Format::Mermaid => analyze_mermaid(&plan),
    }
    Ok(exit::SUCCESS)
}

fn analyze_text(graph: &Graph, plan: &Plan) {
    // Every line carries labels, refs or config args: shown escaped.
    let out = |s: String| out(&render::safe(&s));
    out(format!(
        "graph {}: {} jobs to run for {}",
        graph.label,
        plan.nodes.len(),
        plan.requested.join(" ")
    ));
    for (i, n) in plan.nodes.iter().enumerate() {
        out(format!("{:>4}. {}  -> {}", i + 1, n.job, n.outputs.join(" ")));
        for m in &n.materialize {
            let how = if plan.satisfied.contains(m) { "available" } else { "built above" };
            out(format!("        needs {m} ({how})"));
        }
        for q in &n.query {
            out(format!("        reads {q} (query, not built)"));
        }
        if !n.config.args.is_empty() {
            out(format!("        args {}", n.config.args.join(" ")));
        }
    }
    if !plan.satisfied.is_empty() {
        out(format!("already available ({}):", plan.satisfied.len()));
        for s in &plan.satisfied {
            out(format!("        {s}"));
        }
    }
}

fn analyze_mermaid(plan: &Plan) {
    out("graph LR");
    let mut ids: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let id = |p: &str, ids: &mut std::collections::HashMap<String, usize>| {
        let n = ids.len();
        *ids.entry(p.to_string()).or_insert(n)
    };
    for s in &plan.satisfied {
        let i = id(s, &mut ids);
        out(&format!("  p{i}[\"{}\"]:::available", render::mermaid_label(s)));
    }
    for (t, n) in plan.nodes.iter().enumerate() {
        out(&format!("  t{t}{{{{\"{}\"}}}}:::task", render::mermaid_label(&n.job)));
        for o in &n.outputs {
            let i = id(o, &mut ids);
            out(&format!("  p{i}[\"{}\"]", render::mermaid_label(o)));
            out(&format!("  t{t} --> p{i}"));
        }
        for m in &n.materialize {
            let i = id(m, &mut ids);
            out(&format!("  p{i} --> t{t}"));
        }
        for q in &n.query {
            let i = id(q, &mut ids);
            out(&format!("  p{i}[\"{}\"]:::query", render::mermaid_label(q)));
            out(&format!("  p{i} -. query .-> t{t}"));
        }
    }
    out("  classDef available fill:#d4edda,stroke:#28a745");
    out("  classDef query fill:#eeeeee,stroke:#999999,stroke-dasharray: 4");
    out("  classDef task fill:#e8f0fe,stroke:#4a6fd0");
}
