//! `replay`, `status`, `builds`, `lineage`, `logs`: read-only views of the log.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use databuild::freshness::Freshness;
use databuild::proto::{BuildEvent, DepType, JobStatus, PartitionStatus};
use databuild::query::{self, LineageNode};
use databuild::state::State;
use databuild::store;
use databuild::views;
use databuild_log::{ReadOptions, Reader};
use prost::Message;

use crate::args::{BuildsArgs, Format, LineageArgs, LogsArgs, ReplayArgs, StatusArgs};
use crate::context::Ctx;
use crate::exit::{self, CliError};
use crate::refs::Shortener;
use crate::render::{self, Table, json, out, short};

/// How often `replay --follow` looks for new events.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

fn open_reader(ctx: &Ctx) -> Result<Reader, CliError> {
    Reader::open(&ctx.log_dir, ReadOptions::default())
        .map_err(|e| exit::open_error(&e, &ctx.log_dir))
}

/// Folds the whole log. The state is leaked on purpose: the command exits right after using it,
/// and freeing hundreds of megabytes of small allocations one by one would only delay the exit.
pub fn load(ctx: &Ctx) -> Result<(&'static State, Reader), CliError> {
    let (state, reader, warnings) =
        store::load(&ctx.log_dir, u64::MAX).map_err(|e| exit::store_error(&e, &ctx.log_dir))?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    Ok((Box::leak(Box::new(state)), reader))
}

fn print_event(ctx: &Ctx, seq: u64, ev: &BuildEvent) {
    match ctx.format {
        Format::Json => out(&json(&views::event_json(seq, ev))),
        _ => {
            let (kind, detail) = render::event_summary(ev);
            let req = if ev.build_request_id.is_empty() {
                "-".to_string()
            } else {
                ev.build_request_id.clone()
            };
            out(&format!(
                "{seq:>7}  {}  {req}  {kind:<10} {detail}",
                render::time_ns(ev.timestamp)
            ));
        }
    }
}

pub fn replay(ctx: &Ctx, a: ReplayArgs) -> Result<u8, CliError> {
    ctx.formats("replay", &[Format::Text, Format::Json])?;
    let until = a.until.as_deref().map(|u| render::parse_until("--until", u)).transpose()?;
    let mut f = views::EventFilter::default();
    f.since = a.since.unwrap_or(1);
    f.until = until;
    f.build = a.build.clone();
    f.partition = a.partition.clone();
    f.job = a.job.clone();
    f.job_run = a.job_run.clone();
    // A prefix (or `last`) is resolved against the ids the log knows; a whole id streams as is.
    let prefix = |id: &Option<String>| id.as_deref().is_some_and(|i| !crate::refs::is_whole_id(i));
    if prefix(&a.build) || prefix(&a.job_run) {
        let (state, _) = load(ctx)?;
        views::resolve_ids(state, &mut f).map_err(|e| exit::view_error(e, &ctx.log_dir))?;
    }
    let mut reader = open_reader(ctx)?;
    let mut next = 1u64;
    loop {
        reader.for_each_from(next, |seq, bytes| -> Result<(), CliError> {
            let ev = BuildEvent::decode(bytes).map_err(|e| {
                CliError::log(format!(
                    "event at seq {seq} does not decode: {e}; run `databuild verify` for a report"
                ))
            })?;
            if f.keep(seq, &ev) {
                print_event(ctx, seq, &ev);
            }
            next = seq + 1;
            Ok(())
        })?;
        if !a.follow {
            break;
        }
        render::flush();
        std::thread::sleep(FOLLOW_POLL);
        if ctx.log_dir.exists() {
            if reader.log_id().is_none() {
                reader = open_reader(ctx)?;
            } else {
                reader.refresh().map_err(|e| exit::open_error(&e, &ctx.log_dir))?;
            }
        }
    }
    f.finish().map_err(|e| exit::view_error(e, &ctx.log_dir))?;
    Ok(exit::SUCCESS)
}

pub fn status(ctx: &Ctx, a: StatusArgs) -> Result<u8, CliError> {
    ctx.formats("status", &[Format::Text, Format::Json])?;
    let state = match &a.at {
        None => load(ctx)?.0,
        Some(at) => {
            let until = render::parse_until("--at", at)?;
            let reader = open_reader(ctx)?;
            &*Box::leak(Box::new(
                query::state_at(&reader, until).map_err(|e| exit::store_error(&e, &ctx.log_dir))?,
            ))
        }
    };
    // `interrupted` (as the text table shows it) is open work no engine is running.
    let interrupted = a.status.iter().any(|s| s.trim().eq_ignore_ascii_case("interrupted"));
    let want_stale = a.status.iter().any(|s| s.trim().eq_ignore_ascii_case("stale"));
    let only: Vec<PartitionStatus> = a
        .status
        .iter()
        .filter(|s| {
            !s.trim().eq_ignore_ascii_case("interrupted") && !s.trim().eq_ignore_ascii_case("stale")
        })
        .map(|s| parse_status(s))
        .collect::<Result<_, _>>()?;
    // Now: the graph file's job versions count too (a changed `version` shows before any run
    // records it). In the past (`--at`): the log alone.
    let graph = if a.at.is_none() { ctx.graph().ok() } else { None };
    let fresh = match &graph {
        Some(g) => Freshness::with_graph(state, g),
        None => Freshness::of_log(state),
    };
    let mut rows =
        views::status_rows(&fresh, &a.refs, crate::refs::graph_for_globs(ctx, &a.refs).as_ref())
            .map_err(|e| exit::view_error(e, &ctx.log_dir))?;
    if !a.refs.is_empty() && rows.is_empty() && !ctx.quiet {
        eprintln!("no partition in the log matches {}", render::safe(&a.refs.join(" ")));
    }
    if !only.is_empty() || interrupted || want_stale {
        let dead = interrupted
            && a.at.is_none()
            && rows.iter().any(|r| databuild::state::is_open(r.status))
            && !crate::live::writer_alive(&ctx.log_dir);
        rows.retain(|r| {
            only.contains(&r.status)
                || (dead && databuild::state::is_open(r.status))
                || (want_stale && r.stale.is_some())
        });
    }
    match ctx.format {
        Format::Json => {
            for r in &rows {
                out(&json(&views::status_json(r)));
            }
        }
        _ => {
            if rows.is_empty() {
                if a.refs.is_empty() && only.is_empty() && !ctx.quiet {
                    eprintln!(
                        "no partitions in the log yet; `databuild graph` shows the jobs and what they produce, `databuild build REF` builds one"
                    );
                }
                return Ok(exit::SUCCESS);
            }
            let color = render::color_stdout();
            let live = crate::live::Liveness::new(ctx, a.at.is_none());
            let (runs, reqs) = (Shortener::runs(state), Shortener::requests(state));
            let mut t =
                Table::new(&["PARTITION", "STATUS", "SEQ", "JOB RUN", "BUILD REQUEST", "MESSAGE"]);
            for r in rows {
                let seq = if r.seq > 0 { r.seq.to_string() } else { "-".into() };
                let [mut status, mut message] = live.partition_cells(state, color, &r);
                if let Some(st) = &r.stale {
                    status.0.push_str(" STALE");
                    status.1 += " STALE".len();
                    let why: Vec<String> = st.reasons.iter().map(|x| x.text()).collect();
                    message = render::cell(&format!("stale: {}", why.join("; ")));
                }
                t.row(vec![
                    render::cell(&r.partition),
                    status,
                    (seq.clone(), seq.len()),
                    runs.cell(&r.job_run_id),
                    reqs.cell(&r.build_request_id),
                    message,
                ]);
            }
            t.print();
        }
    }
    Ok(exit::SUCCESS)
}

/// A partition status as typed for `--status`: `failed`, `FAILED` or `PARTITION_FAILED`.
fn parse_status(s: &str) -> Result<PartitionStatus, CliError> {
    let up = s.trim().to_ascii_uppercase();
    let full = if up.starts_with("PARTITION_") { up } else { format!("PARTITION_{up}") };
    PartitionStatus::from_str_name(&full).ok_or_else(|| {
        CliError::bad_input(format!(
            "--status {s:?} is not a partition status; use one of: AVAILABLE, BUILDING, FAILED, TAINTED, REQUESTED, ANALYZED, DELEGATED, UNKNOWN, INTERRUPTED (open with no engine running), or STALE (AVAILABLE but stale)"
        ))
    })
}

fn request_duration(r: &databuild::state::Request) -> String {
    match r.ended {
        Some((_, end)) => {
            render::duration(Duration::from_nanos((end - r.received_ts).max(0) as u64))
        }
        None => "-".into(),
    }
}

pub fn builds(ctx: &Ctx, a: BuildsArgs) -> Result<u8, CliError> {
    let (state, _) = load(ctx)?;
    if let Some(id) = &a.id {
        ctx.formats("builds ID", &[Format::Text, Format::Json, Format::Mermaid])?;
        let r = views::request(state, id).map_err(|e| exit::view_error(e, &ctx.log_dir))?;
        return build_detail(ctx, state, r);
    }
    ctx.formats("builds", &[Format::Text, Format::Json])?;
    let reqs = views::requests(state);
    match ctx.format {
        Format::Json => {
            for r in reqs {
                out(&json(&views::request_json(r)));
            }
        }
        _ => {
            if reqs.is_empty() {
                return Ok(exit::SUCCESS);
            }
            let color = render::color_stdout();
            let live = crate::live::Liveness::new(ctx, true);
            let ids = Shortener::requests(state);
            let mut t =
                Table::new(&["BUILD REQUEST", "STATUS", "RECEIVED", "DURATION", "REQUESTED"]);
            for r in reqs {
                let requested = match r.requested.len() {
                    1 => r.requested[0].to_string(),
                    n => format!("{} (+{} more)", r.requested[0], n - 1),
                };
                let received = render::time_ns(r.received_ts);
                let d = request_duration(r);
                t.row(vec![
                    ids.cell(&r.id),
                    live.request_cell(color, r),
                    (received.clone(), received.len()),
                    (d.clone(), d.len()),
                    render::cell(&requested),
                ]);
            }
            t.print();
            if live.any_request_interrupted(state) {
                eprintln!("note: INTERRUPTED: {}", crate::live::INTERRUPTED);
            }
        }
    }
    Ok(exit::SUCCESS)
}

fn build_detail(ctx: &Ctx, state: &State, r: &databuild::state::Request) -> Result<u8, CliError> {
    let runs: Vec<&databuild::state::Run> =
        r.runs.iter().filter_map(|id| state.runs.get(id)).collect();
    let keys = state.keys_of(&r.id);
    match ctx.format {
        Format::Json => out(&json(&views::request_detail_json(state, r))),
        Format::Mermaid => build_mermaid(state, r, &runs),
        Format::Text => {
            let color = render::color_stdout();
            out(&format!("build request {}", r.id));
            out(&format!(
                "  status     {}{}",
                render::paint(color, short(r.status.as_str_name())),
                if r.message.is_empty() {
                    String::new()
                } else {
                    format!(" - {}", render::safe(&r.message))
                }
            ));
            out(&format!(
                "  requested  {}{}",
                render::safe(&r.requested.join(" ")),
                if r.force { " (--force)" } else { "" }
            ));
            out(&format!(
                "  received   {} (seq {})",
                render::time_ns(r.received_ts),
                r.received_seq
            ));
            if let Some((seq, t)) = r.ended {
                out(&format!(
                    "  ended      {} (seq {seq}, after {})",
                    render::time_ns(t),
                    request_duration(r)
                ));
            }
            out("");
            let ids = Shortener::runs(state);
            let mut t = Table::new(&[
                "JOB RUN", "JOB", "STATUS", "ATTEMPT", "DURATION", "OUTPUTS", "MESSAGE",
            ]);
            for run in &runs {
                let d = match (run.running, run.ended) {
                    (Some((_, s)), Some((_, e))) => {
                        render::duration(Duration::from_nanos((e - s).max(0) as u64))
                    }
                    _ => "-".into(),
                };
                let outs = match run.targets.len() {
                    1 => run.targets[0].to_string(),
                    n => format!("{} (+{} more)", run.targets[0], n - 1),
                };
                let att = if run.attempt == 0 { "-".to_string() } else { run.attempt.to_string() };
                t.row(vec![
                    ids.cell(&run.id),
                    render::cell(&run.job_label),
                    render::status_cell(color, run.status.as_str_name()),
                    (att.clone(), att.len()),
                    (d.clone(), d.len()),
                    render::cell(&outs),
                    render::cell(&run.message),
                ]);
            }
            t.print();
            out("");
            let mut t = Table::new(&["PARTITION", "STATUS", "SEQ", "MESSAGE"]);
            for (p, k) in keys {
                let seq = k.seq.to_string();
                t.row(vec![
                    render::cell(p),
                    render::status_cell(color, k.status.as_str_name()),
                    (seq.clone(), seq.len()),
                    render::cell(&k.message),
                ]);
            }
            t.print();
        }
    }
    Ok(exit::SUCCESS)
}

fn build_mermaid(state: &State, r: &databuild::state::Request, runs: &[&databuild::state::Run]) {
    out("graph LR");
    let mut ids: HashMap<String, usize> = HashMap::new();
    let node = |p: &str, ids: &mut HashMap<String, usize>| -> (usize, bool) {
        let n = ids.len();
        let fresh = !ids.contains_key(p);
        (*ids.entry(p.to_string()).or_insert(n), fresh)
    };
    let class = |s: PartitionStatus| match s {
        PartitionStatus::PartitionAvailable => "available",
        PartitionStatus::PartitionFailed => "failed",
        PartitionStatus::PartitionDelegated => "skipped",
        PartitionStatus::PartitionBuilding => "building",
        _ => "pending",
    };
    for (p, k) in state.keys_of(&r.id) {
        let (i, _) = node(p, &mut ids);
        out(&format!("  p{i}[\"{}\"]:::{}", render::mermaid_label(p), class(k.status)));
    }
    for (t, run) in runs.iter().enumerate() {
        let c = match run.status {
            JobStatus::JobCompleted => "available",
            JobStatus::JobFailed => "failed",
            JobStatus::JobSkipped => "skipped",
            JobStatus::JobCancelled => "cancelled",
            _ => "building",
        };
        out(&format!(
            "  r{t}{{{{\"{} {}\"}}}}:::{c}",
            render::mermaid_label(&run.job_label),
            short(run.status.as_str_name())
        ));
        for o in &run.targets {
            let (i, fresh) = node(o, &mut ids);
            if fresh {
                out(&format!("  p{i}[\"{}\"]", render::mermaid_label(o)));
            }
            out(&format!("  r{t} --> p{i}"));
        }
        for input in &run.inputs {
            if input.dep_type == DepType::Materialize {
                let (i, fresh) = node(&input.partition, &mut ids);
                if fresh {
                    out(&format!(
                        "  p{i}[\"{}\"]:::skipped",
                        render::mermaid_label(&input.partition)
                    ));
                }
                out(&format!("  p{i} --> r{t}"));
            }
        }
    }
    out("  classDef available fill:#d4edda,stroke:#28a745");
    out("  classDef failed fill:#f8d7da,stroke:#dc3545");
    out("  classDef skipped fill:#e2e3e5,stroke:#6c757d");
    out("  classDef building fill:#fff3cd,stroke:#ffc107");
    out("  classDef cancelled fill:#f3e5f5,stroke:#8e24aa");
    out("  classDef pending fill:#ffffff,stroke:#999999");
}

fn lineage_text(
    n: &LineageNode,
    prefix: &str,
    last: bool,
    root: bool,
    shown: &mut BTreeSet<(String, String)>,
) {
    let branch = if root {
        ""
    } else if last {
        "└─ "
    } else {
        "├─ "
    };
    let dep = match n.dep_type {
        Some(DepType::Materialize) => "",
        Some(DepType::Query) => " [query]",
        None => "",
    };
    let mut line = format!("{prefix}{branch}{}{dep}", n.partition);
    let again =
        !n.job_run_id.is_empty() && !shown.insert((n.partition.clone(), n.job_run_id.clone()));
    if n.job_run_id.is_empty() {
        line.push_str("  (external, or not AVAILABLE when read)");
    } else {
        line.push_str(&format!(
            "  built by {} run {} (request {}) at seq {}",
            n.job_label, n.job_run_id, n.build_request_id, n.seq
        ));
        if n.start_time > 0 {
            line.push_str(&format!(
                ", {} to {}",
                render::time_s(n.start_time),
                render::time_s(n.end_time)
            ));
        }
    }
    if let Some(s) = n.tainted_at_seq {
        line.push_str(&format!("  (TAINTED at seq {s})"));
    }
    if let Some(s) = n.rebuilt_since_seq {
        line.push_str(&format!("  (rebuilt since, at seq {s})"));
    }
    if again {
        line.push_str("  (see above)");
    }
    out(&render::safe(&line));
    let child_prefix = if root {
        prefix.to_string()
    } else if last {
        format!("{prefix}   ")
    } else {
        format!("{prefix}│  ")
    };
    if !n.job_run_id.is_empty() && !again && (!n.args.is_empty() || !n.env_keys.is_empty()) {
        let mut cfg = String::new();
        if !n.args.is_empty() {
            cfg.push_str(&format!("args {}", n.args.join(" ")));
        }
        if !n.env_keys.is_empty() {
            cfg.push_str(&format!(
                "{}env {}",
                if cfg.is_empty() { "" } else { "; " },
                n.env_keys.join(" ")
            ));
        }
        let bar = if n.children.is_empty() { "   " } else { "│  " };
        out(&format!("{child_prefix}{bar}config: {}", render::safe(&cfg)));
    }
    if again {
        return;
    }
    for (i, c) in n.children.iter().enumerate() {
        lineage_text(c, &child_prefix, i + 1 == n.children.len(), false, shown);
    }
}

fn lineage_mermaid(n: &LineageNode, downstream: bool) {
    out("graph LR");
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut edges: BTreeSet<String> = BTreeSet::new();
    fn walk(
        n: &LineageNode,
        downstream: bool,
        ids: &mut HashMap<String, usize>,
        edges: &mut BTreeSet<String>,
    ) -> usize {
        let len = ids.len();
        let fresh = !ids.contains_key(&n.partition);
        let me = *ids.entry(n.partition.clone()).or_insert(len);
        if fresh {
            let label = if n.job_run_id.is_empty() {
                render::mermaid_label(&n.partition)
            } else {
                format!(
                    "{}<br/>{}",
                    render::mermaid_label(&n.partition),
                    render::mermaid_label(&n.job_label)
                )
            };
            out(&format!("  p{me}[\"{label}\"]"));
        }
        for c in &n.children {
            let k = walk(c, downstream, ids, edges);
            let arrow = if c.dep_type == Some(DepType::Query) { "-. query .->" } else { "-->" };
            let e = if downstream {
                format!("  p{me} --> p{k}")
            } else {
                format!("  p{k} {arrow} p{me}")
            };
            edges.insert(e);
        }
        me
    }
    walk(n, downstream, &mut ids, &mut edges);
    for e in edges {
        out(&e);
    }
}

pub fn lineage(ctx: &Ctx, a: LineageArgs) -> Result<u8, CliError> {
    let (state, reader) = load(ctx)?;
    let tree = views::lineage_tree(state, &reader, &a.partition, a.downstream, a.depth)
        .map_err(|e| exit::view_error(e, &ctx.log_dir))?;
    match ctx.format {
        Format::Json => out(&json(&views::lineage_json(&tree, a.downstream))),
        Format::Mermaid => lineage_mermaid(&tree, a.downstream),
        Format::Text => {
            let mut shown = BTreeSet::new();
            lineage_text(&tree, "", true, true, &mut shown);
        }
    }
    Ok(exit::SUCCESS)
}

pub fn logs(ctx: &Ctx, a: LogsArgs) -> Result<u8, CliError> {
    ctx.formats("logs", &[Format::Text])?;
    let (state, _) = load(ctx)?;
    let id = crate::refs::run_id(state, a.run.trim())?;
    let Some(run) = state.runs.get(id.as_str()) else {
        return Err(CliError::bad_input(format!(
            "no job run {} in the log; see `databuild builds ID` or `databuild replay` for run ids",
            a.run
        )));
    };
    let paths = databuild::executor::output_paths(&ctx.logs_dir, &run.id);
    out(&format!(
        "== job run {} ({}, build request {}, {}) ==",
        run.id,
        render::safe(&run.job_label),
        run.request,
        short(run.status.as_str_name())
    ));
    if run.status == JobStatus::JobSkipped {
        // The run's message already says "skipped: ..." (say it once).
        let why = run.message.strip_prefix("skipped: ").unwrap_or(&run.message);
        out(&format!("skipped: {}", render::safe(why)));
        return Ok(exit::SUCCESS);
    }
    let mut any = false;
    for (name, file) in [("stdout", &paths.stdout), ("stderr", &paths.stderr)] {
        match std::fs::read(file) {
            Ok(bytes) => {
                any = true;
                out(&format!("-- {name} --"));
                let text = String::from_utf8_lossy(&bytes);
                // The job's own text, kept line by line with its tabs; anything that would
                // drive the terminal is shown escaped (the files keep the raw bytes).
                for line in text.lines() {
                    out(&render::safe_output(line));
                }
            }
            Err(_) => continue,
        }
    }
    if !any {
        out(&format!(
            "(no output captured in {}: the run never started, or its logs were removed)",
            paths.dir.display()
        ));
    }
    if !run.message.is_empty() {
        out(&format!("-- {} --", short(run.status.as_str_name()).to_lowercase()));
        out(&render::safe_output(&run.message));
    }
    Ok(exit::SUCCESS)
}
