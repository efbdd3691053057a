//! `explain` and `jobs`: why a partition is in its state, and how each job has been doing.

use databuild::query::{self, Reason};
use serde_json::json;

use crate::args::{ExplainArgs, Format, JobsArgs};
use crate::context::Ctx;
use crate::exit::{self, CliError};
use crate::render::{self, Table, out, short};

/// Lines of a failed run's output shown by `explain`.
const FAILED_TAIL_LINES: usize = 5;

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
pub fn output_tail(path: &std::path::Path, n: usize) -> std::io::Result<Vec<String>> {
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

pub fn explain(ctx: &Ctx, a: ExplainArgs) -> Result<u8, CliError> {
    ctx.formats("explain", &[Format::Text, Format::Json])?;
    let typed = crate::refs::expand_args(std::slice::from_ref(&a.partition))?;
    for r in typed.iter().filter(|r| !crate::refs::is_glob(r)) {
        databuild::graph::check_ref(r).map_err(|e| exit::lookup_error(&e))?;
    }
    let (state, _) = crate::cmd_history::load(ctx)?;
    let graph = ctx.graph().ok();
    let refs = crate::refs::match_globs(state, &typed, graph.as_ref());
    // The graph file's job versions count too (see `databuild::freshness`).
    let fresh = match &graph {
        Some(g) => databuild::freshness::Freshness::with_graph(state, g),
        None => databuild::freshness::Freshness::of_log(state),
    };
    if refs.is_empty() {
        return Err(CliError::bad_input(format!(
            "'{}' matches no partition in the log; `databuild status` lists them",
            render::safe(&a.partition)
        )));
    }
    for (i, r) in refs.iter().enumerate() {
        if i > 0 && ctx.format == Format::Text {
            out("");
        }
        explain_one(ctx, &fresh, r);
    }
    Ok(exit::SUCCESS)
}

fn explain_one(ctx: &Ctx, fresh: &databuild::freshness::Freshness<'_>, partition: &str) {
    let e = query::explain_with(fresh, partition);
    let tail: Vec<String> = if e.reason == Reason::Failed && !e.job_run_id.is_empty() {
        let paths = databuild::executor::output_paths(&ctx.logs_dir, &e.job_run_id);
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
    };
    match ctx.format {
        Format::Json => {
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
            out(&render::json(&v));
        }
        _ => {
            let color = render::color_stdout();
            out(&format!(
                "{}  {}  ({})",
                render::safe(&e.partition),
                render::paint(color, short(e.status.as_str_name())),
                e.reason.as_str()
            ));
            out(&format!("  {}", render::safe(&e.message)));
            if let Some(st) = &e.stale {
                out("  STALE:");
                for x in &st.reasons {
                    let at = match x.seq() {
                        0 => "(graph file; not yet in the log)".to_string(),
                        n => format!("(seq {n})"),
                    };
                    out(&format!("    {} {at}", render::safe(&x.text())));
                }
                out("  `databuild build --stale REF` rebuilds it");
            }
            if e.reason == Reason::Building && !e.job_run_id.is_empty() {
                out(&format!(
                    "  by job run {} (`databuild logs {}` for its output so far)",
                    e.job_run_id, e.job_run_id
                ));
                // As `status` says: with no engine holding the log, nothing is building it.
                if !crate::live::writer_alive(&ctx.log_dir) {
                    out(&format!("  {}", crate::live::INTERRUPTED));
                }
            }
            if let Some(c) = e.exit_code {
                out(&format!("  exit code {c}"));
            }
            if !tail.is_empty() {
                out(&format!(
                    "  last lines of its output (`databuild logs {}` for all):",
                    e.job_run_id
                ));
                for l in tail {
                    out(&format!("    {}", render::safe_output(&l)));
                }
            }
        }
    }
}

pub fn jobs(ctx: &Ctx, a: JobsArgs) -> Result<u8, CliError> {
    ctx.formats("jobs", &[Format::Text, Format::Json])?;
    let (state, _) = crate::cmd_history::load(ctx)?;
    let color = render::color_stdout();
    let Some(label) = a.label else {
        let mut stats = query::job_stats(state);
        // The graph file's jobs that never ran are listed too (a fresh graph is not empty).
        if let Ok(g) = ctx.graph() {
            for j in &g.jobs {
                if !stats.iter().any(|s| s.label == j.label) {
                    stats.push(query::JobStats {
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
        match ctx.format {
            Format::Json => {
                for s in stats {
                    out(&render::json(&json!({
                        "jobLabel": s.label,
                        "runs": s.runs,
                        "completed": s.completed,
                        "failed": s.failed,
                        "successRatio": s.success_ratio,
                        "durationP50Ms": s.p50_ms,
                        "durationP95Ms": s.p95_ms,
                    })));
                }
            }
            _ => {
                if stats.is_empty() {
                    return Ok(exit::SUCCESS);
                }
                let mut t =
                    Table::new(&["JOB", "RUNS", "COMPLETED", "FAILED", "SUCCESS", "P50", "P95"]);
                let ms = |m: Option<u64>| {
                    m.map_or("-".to_string(), |m| {
                        render::duration(std::time::Duration::from_millis(m))
                    })
                };
                for s in stats {
                    let ratio =
                        s.success_ratio.map_or("-".to_string(), |r| format!("{:.0}%", r * 100.0));
                    t.plain(vec![
                        s.label,
                        s.runs.to_string(),
                        s.completed.to_string(),
                        s.failed.to_string(),
                        ratio,
                        ms(s.p50_ms),
                        ms(s.p95_ms),
                    ]);
                }
                t.print();
            }
        }
        return Ok(exit::SUCCESS);
    };
    let runs = query::job_runs(state, &label);
    let known = !runs.is_empty() || state.runs.values().any(|r| *r.job_label == *label);
    if !known {
        let in_graph = ctx.graph().ok().is_some_and(|g| g.job(&label).is_some());
        if !in_graph {
            return Err(CliError::bad_input(format!(
                "no job labelled '{label}' in the log or the graph file; `databuild jobs` lists them"
            )));
        }
    }
    match ctx.format {
        Format::Json => {
            for r in runs {
                out(&render::json(&json!({
                    "jobRunId": r.id,
                    "buildRequestId": r.request,
                    "status": r.status.as_str_name(),
                    "startTime": r.running.map(|(_, t)| t / 1_000_000_000),
                    "endTime": r.ended.map(|(_, t)| t / 1_000_000_000),
                    "durationMs": query::run_duration_ms(r),
                })));
            }
        }
        _ => {
            if runs.is_empty() {
                return Ok(exit::SUCCESS);
            }
            let mut t = Table::new(&[
                "JOB RUN",
                "BUILD REQUEST",
                "STATUS",
                "STARTED",
                "DURATION",
                "MESSAGE",
            ]);
            let (ids, reqs) =
                (crate::refs::Shortener::runs(state), crate::refs::Shortener::requests(state));
            for r in runs {
                let started = r.running.map_or("-".to_string(), |(_, t)| render::time_ns(t));
                let d = query::run_duration_ms(r).map_or("-".to_string(), |m| {
                    render::duration(std::time::Duration::from_millis(m))
                });
                t.row(vec![
                    ids.cell(&r.id),
                    reqs.cell(&r.request),
                    render::status_cell(color, r.status.as_str_name()),
                    (started.clone(), started.len()),
                    (d.clone(), d.len()),
                    render::cell(&r.message),
                ]);
            }
            t.print();
        }
    }
    Ok(exit::SUCCESS)
}
