//! `explain` and `jobs`: why a partition is in its state, and how each job has been doing.

use databuild::query::{self, Reason};
use databuild::views;

use crate::args::{ExplainArgs, Format, JobsArgs};
use crate::context::Ctx;
use crate::exit::{self, CliError};
use crate::render::{self, Table, out, short};

pub use databuild::views::output_tail;

pub fn explain(ctx: &Ctx, a: ExplainArgs) -> Result<u8, CliError> {
    ctx.formats("explain", &[Format::Text, Format::Json])?;
    let typed =
        views::explain_typed(&a.partition).map_err(|e| exit::view_error(e, &ctx.log_dir))?;
    let (state, _) = crate::cmd_history::load(ctx)?;
    let graph = ctx.graph().ok();
    let refs = views::explain_refs(state, &a.partition, &typed, graph.as_ref())
        .map_err(|e| exit::view_error(e, &ctx.log_dir))?;
    // The graph file's job versions count too (see `databuild::freshness`).
    let fresh = match &graph {
        Some(g) => databuild::freshness::Freshness::with_graph(state, g),
        None => databuild::freshness::Freshness::of_log(state),
    };
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
    let tail = views::explain_tail(&ctx.logs_dir, &e);
    match ctx.format {
        Format::Json => out(&render::json(&views::explain_json(&e, &tail))),
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
        let stats = views::job_stats(state, ctx.graph().ok().as_ref());
        match ctx.format {
            Format::Json => {
                for s in &stats {
                    out(&render::json(&views::job_stats_json(s)));
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
    let runs =
        views::job_runs(state, &label, |l| ctx.graph().ok().is_some_and(|g| g.job(l).is_some()))
            .map_err(|e| exit::view_error(e, &ctx.log_dir))?;
    match ctx.format {
        Format::Json => {
            for r in runs {
                out(&render::json(&views::job_run_json(r)));
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
