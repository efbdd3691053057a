//! `build`, `analyze`: the commands that plan (and run) jobs.

use std::sync::Arc;
use std::time::Instant;

use databuild::engine::{
    BuildSpec, Engine, EngineHandle, KILL_GRACE, Note, Observer, RequestEnd, Settings,
};
use databuild::executor::Executor;
use databuild::graph::Graph;
use databuild::planner::{Plan, PlanError};
use databuild::proto::BuildRequestStatus;
use databuild::store::{Store, StoreOptions};
use databuild_log::WriterOptions;

use crate::args::{AnalyzeArgs, BuildArgs, ExecuteArgs, Format};
use crate::context::Ctx;
use crate::exit::{self, CliError};
use crate::progress::Progress;
use crate::render::{self, json, out};

pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
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

/// The engine's slots: `--jobs`, else the graph file's `[defaults] jobs`, else the CPU count.
pub fn jobs(flag: Option<u32>, graph: &Graph) -> usize {
    flag.or(graph.default_jobs).map_or_else(cpus, |j| j as usize)
}

pub fn settings(ctx: &Ctx, jobs: Option<u32>) -> Settings {
    Settings {
        jobs: jobs.map_or_else(cpus, |j| j as usize),
        logs_dir: ctx.logs_dir.clone(),
        grace: KILL_GRACE,
        configure: Arc::new(databuild::planner::Processes),
    }
}

/// The graph's executor: local and Slurm runs routed per job (CONTRACT §12).
pub fn executor(ctx: &Ctx, graph: &Graph) -> Result<Arc<dyn Executor>, CliError> {
    Ok(databuild::executor::route::for_graph(graph, &ctx.logs_dir))
}

/// How a command's requests ended, and the signal that cancelled them, if any.
#[derive(Debug, Default)]
pub struct Outcome {
    pub requests: Vec<RequestEnd>,
    pub signal: Option<i32>,
    /// Job runs that failed for good (full ids), for the last line.
    pub failed_runs: Vec<String>,
}

/// Forwards notes to the progress renderer and keeps a planning failure for the exit code.
struct Capture {
    inner: Arc<dyn Observer>,
    plan_failed: parking_lot::Mutex<Option<Arc<PlanError>>>,
}

impl Observer for Capture {
    fn note(&self, note: Note) {
        if let Note::PlanFailed { error, .. } = &note {
            self.plan_failed.lock().get_or_insert_with(|| error.clone());
        }
        self.inner.note(note);
    }
}

/// SIGINT and SIGTERM, handled from before anything is written: the binary owns signals and
/// turns them into cancels of its own requests.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> Result<Signals, CliError> {
        use tokio::signal::unix::{SignalKind, signal};
        let err = |e: std::io::Error| CliError::internal(format!("cannot handle signals: {e}"));
        Ok(Signals {
            int: signal(SignalKind::interrupt()).map_err(err)?,
            term: signal(SignalKind::terminate()).map_err(err)?,
        })
    }

    /// The next SIGINT or SIGTERM.
    pub async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => databuild::sys::SIGINT,
            _ = self.term.recv() => databuild::sys::SIGTERM,
        }
    }
}

/// Opens the engine. A SIGINT or SIGTERM while it reconciles what a crash left live (it waits for
/// the Slurm runs it adopts) ends the command at once (exit 130/143): nothing was recorded yet,
/// the Slurm runs keep running, and the next writer adopts them.
pub async fn open_engine(
    store: Arc<Store>,
    graph: Arc<Graph>,
    settings: Settings,
    executor: Arc<dyn Executor>,
    signals: &mut Signals,
) -> Result<(Engine, databuild::recovery::Reconciled), databuild::engine::EngineError> {
    let open = Engine::open(store, graph, settings, executor);
    tokio::pin!(open);
    tokio::select! {
        r = &mut open => r,
        sig = signals.next() => {
            eprintln!(
                "interrupted while reconciling the runs a crash left live; Slurm runs keep running, and the next `databuild recover` adopts them"
            );
            std::process::exit(128 + sig);
        }
    }
}

/// Waits for `count` requests to end, cancelling `ids` on a signal (a second signal stops their
/// runs at once). Returns the ends in the order they came and the first signal.
pub async fn wait_for_ends(
    handle: &EngineHandle,
    ends: &mut tokio::sync::mpsc::UnboundedReceiver<RequestEnd>,
    ids: &[String],
    count: usize,
    signals: &mut Signals,
    progress: &dyn Observer,
) -> Outcome {
    let mut out = Outcome::default();
    while out.requests.len() < count {
        tokio::select! {
            end = ends.recv() => match end {
                Some(e) => out.requests.push(e),
                None => break,
            },
            sig = signals.next() => {
                if out.signal.is_none() {
                    out.signal = Some(sig);
                    progress.note(Note::Cancelling { signal: sig });
                }
                for id in ids {
                    let _ = handle.cancel(id, "cancelled by signal").await;
                }
            }
        }
    }
    out
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
    // A signal that came after the request had ended cancelled nothing: the end decides.
    let cancelled =
        outcome.requests.iter().any(|r| r.status == BuildRequestStatus::BuildRequestCancelled);
    if let Some(sig) = outcome.signal.filter(|_| cancelled) {
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
        Some(f) => {
            let logs = match outcome.failed_runs.as_slice() {
                [] => String::new(),
                [one] => format!("; the failed run's output: `databuild logs {one}`"),
                [first, rest @ ..] => format!(
                    "; output of the first failed run: `databuild logs {first}` ({} more failed)",
                    rest.len()
                ),
            };
            Err(CliError::failed(format!(
                "build request {} {}{logs}; every run: `databuild builds {}`",
                f.request,
                render::short(f.status.as_str_name()),
                f.request
            )))
        }
        None => Ok(exit::SUCCESS),
    }
}

/// The progress renderer of a command that runs a request (quiet with --quiet or JSON output).
fn progress(ctx: &Ctx) -> Arc<Progress> {
    Arc::new(
        Progress::new(ctx.quiet || ctx.format == Format::Json)
            .verbose(ctx.verbose > 0)
            .logs_dir(ctx.logs_dir.clone()),
    )
}

pub fn build(ctx: &Ctx, mut a: BuildArgs) -> Result<u8, CliError> {
    a.refs = crate::refs::expand_args(&a.refs)?;
    ctx.formats("build", &[Format::Text, Format::Json])?;
    let graph = Arc::new(ctx.graph()?);
    // Bad refs are reported before the log is even opened.
    for r in &a.refs {
        graph.owner(r).map_err(|e| exit::lookup_error(&e))?;
    }
    let server = crate::client::find(ctx);
    if a.detach && server.is_none() {
        return Err(CliError::bad_input(
            "--detach needs a running server to leave the build to; start one with `databuild serve`, or build without --detach",
        ));
    }
    if let Some(s) = server {
        let what = crate::client::Submit::Build { refs: a.refs, force: a.force, stale: a.stale };
        return crate::client::run(ctx, &s, what, a.jobs, a.detach, "build", progress(ctx));
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
    let progress = progress(ctx);
    let spec = BuildSpec { refs: a.refs.clone(), force: a.force, stale: a.stale, cap: None };
    let how = Run { wait: a.wait, jobs: a.jobs, verb: "build" };
    run_one(ctx, &rt, graph, how, progress, |h, o| async move { h.submit(spec, o).await })
}

pub fn execute(ctx: &Ctx, a: ExecuteArgs) -> Result<u8, CliError> {
    ctx.formats("execute", &[Format::Text, Format::Json])?;
    let graph = Arc::new(ctx.graph()?);
    let text = if a.file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| {
            CliError::bad_input(format!("cannot read the JobGraph from stdin: {e}"))
        })?;
        s
    } else {
        std::fs::read_to_string(&a.file).map_err(|e| {
            CliError::bad_input(format!("cannot read the JobGraph file {}: {e}", a.file))
        })?
    };
    let jg = databuild::execute::parse_job_graph(&text).map_err(|e| {
        CliError::bad_input(format!(
            "{}: {e}; `databuild analyze REF... --format json` prints one",
            if a.file == "-" { "stdin" } else { a.file.as_str() }
        ))
    })?;
    if let Some(s) = crate::client::find(ctx) {
        let what = crate::client::Submit::Execute(jg);
        return crate::client::run(ctx, &s, what, a.jobs, false, "execute", progress(ctx));
    }
    let rt = runtime()?;
    ctx.check_logs_dir()?;
    let progress = progress(ctx);
    let how = Run { wait: a.wait, jobs: a.jobs, verb: "execute" };
    run_one(ctx, &rt, graph, how, progress, |h, o| async move { h.execute(jg, None, o).await })
}

/// How a one-request command opens the log and names its result.
pub struct Run {
    /// Wait for another writer instead of exiting 3.
    pub wait: bool,
    /// The engine's slots.
    pub jobs: Option<u32>,
    /// The result line's verb.
    pub verb: &'static str,
}

/// Opens the engine, submits one request with `submit`, renders its notes until it ends (a
/// signal cancels it), closes the engine, and maps the end to an exit code.
pub fn run_one<F, Fut>(
    ctx: &Ctx,
    rt: &tokio::runtime::Runtime,
    graph: Arc<Graph>,
    how: Run,
    progress: Arc<Progress>,
    submit: F,
) -> Result<u8, CliError>
where
    F: FnOnce(EngineHandle, Arc<dyn Observer>) -> Fut,
    Fut: std::future::Future<Output = Result<String, databuild::engine::SubmitError>>,
{
    let executor = executor(ctx, &graph)?;
    let slots = jobs(how.jobs, &graph);
    if ctx.verbose > 0 {
        let from = if how.jobs.is_some() {
            "--jobs"
        } else if graph.default_jobs.is_some() {
            "[defaults] jobs in the graph file"
        } else {
            "the CPU count"
        };
        eprintln!("running up to {slots} jobs at once ({from})");
    }
    let settings = settings(ctx, how.jobs.or(graph.default_jobs));
    let _guard = rt.enter();
    let mut signals = Signals::install()?;
    let store = Arc::new(open_store(ctx, how.wait)?);
    let capture = Arc::new(Capture { inner: progress.clone(), plan_failed: Default::default() });
    let started = Instant::now();
    let result = rt.block_on(async {
        let (engine, reconciled) =
            open_engine(store.clone(), graph, settings, executor, &mut signals)
                .await
                .map_err(|e| (e, None))?;
        crate::cmd_recover::report_reconciled(&reconciled, true);
        let handle = engine.handle();
        let (observer, mut ends) = databuild::engine::with_ends(capture.clone());
        let id = match submit(handle.clone(), observer).await {
            Ok(id) => id,
            Err(e) => {
                let closed = engine.close().await;
                return Err((
                    closed.err().unwrap_or(databuild::engine::EngineError::Closed),
                    Some(e),
                ));
            }
        };
        let outcome = wait_for_ends(
            &handle,
            &mut ends,
            std::slice::from_ref(&id),
            1,
            &mut signals,
            &*capture,
        )
        .await;
        drop(handle);
        engine.close().await.map_err(|e| (e, None))?;
        Ok(outcome)
    });
    progress.finish();
    close(store);
    let outcome = match result {
        Ok(o) => Outcome { failed_runs: progress.failed_runs(), ..o },
        Err((_, Some(submit_err)))
            if !matches!(submit_err, databuild::engine::SubmitError::Engine(_)) =>
        {
            return Err(exit::submit_error(&submit_err, &ctx.log_dir));
        }
        Err((e, _)) => return Err(exit::engine_error(&e, &ctx.log_dir)),
    };
    if outcome.signal.is_none()
        && let Some(e) = capture.plan_failed.lock().take()
    {
        return Err(exit::plan_error(&e));
    }
    if outcome.requests.is_empty() {
        return Err(CliError::internal("the engine ended without finishing the request"));
    }
    print_outcome(ctx, &outcome, started.elapsed(), how.verb);
    judge(&outcome)
}

/// Opens an engine on `store` (which reconciles), does one thing with its handle, closes it and
/// the log: what `cancel` and `taint` do when no server or build owns the log.
pub fn with_engine<T, F, Fut>(ctx: &Ctx, store: Arc<Store>, f: F) -> Result<T, CliError>
where
    F: FnOnce(EngineHandle) -> Fut,
    Fut: std::future::Future<Output = Result<T, databuild::engine::EngineError>>,
{
    let graph = match ctx.graph() {
        Ok(g) => Arc::new(g),
        Err(e) => {
            close(store);
            return Err(e);
        }
    };
    let rt = runtime()?;
    let executor = executor(ctx, &graph)?;
    let settings = settings(ctx, None);
    let result = rt.block_on(async {
        let (engine, reconciled) = Engine::open(store.clone(), graph, settings, executor).await?;
        crate::cmd_recover::report_reconciled(&reconciled, false);
        let done = f(engine.handle()).await;
        engine.close().await?;
        done
    });
    close(store);
    result.map_err(|e| exit::engine_error(&e, &ctx.log_dir))
}

/// Closes the log (writing a snapshot if one is due). Everything else that held the store (the
/// engine loop, its tasks) is gone by now.
pub fn close(store: Arc<Store>) {
    match Arc::try_unwrap(store) {
        Ok(s) => {
            if let Err(e) = s.close() {
                eprintln!("warning: closing the event log: {e}");
            }
        }
        Err(_) => eprintln!("warning: the event log is still in use; it is closed at exit"),
    }
}

pub fn analyze(ctx: &Ctx, mut a: AnalyzeArgs) -> Result<u8, CliError> {
    a.refs = crate::refs::expand_args(&a.refs)?;
    let graph = ctx.graph()?;
    for r in &a.refs {
        graph.owner(r).map_err(|e| exit::lookup_error(&e))?;
    }
    let (state, _) = crate::cmd_history::load(ctx)?;
    let rt = runtime()?;
    let jobs = jobs(a.plan.jobs, &graph);
    let rebuild = databuild::planner::Rebuild { force: a.plan.force, stale: a.plan.stale };
    let plan = rt
        .block_on(databuild::planner::analyze(&graph, state, &a.refs, rebuild, jobs))
        .map_err(|e| exit::plan_error(&e))?;
    if ctx.verbose > 0 {
        for l in crate::progress::dropped_lines(&plan.dropped) {
            eprintln!("{l}");
        }
    }
    if !ctx.quiet {
        for w in &plan.warnings {
            match w.strip_prefix("note: ") {
                Some(n) => eprintln!("note: {}", render::safe(n)),
                None => eprintln!("warning: {}", render::safe(w)),
            }
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
