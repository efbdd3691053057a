//! `recover`, and what a writing command says about what reconciliation found.

use std::sync::Arc;

use databuild::engine::Engine;
use databuild::recovery::{self, Reconciled};

use crate::cmd_build::{Outcome, Signals, close, executor, open_store, settings};
use crate::context::Ctx;
use crate::exit::{self, CliError};

/// Says what reconciliation did: runs a crash left live recorded as failed, and (for commands
/// that do not resume them) the interrupted requests only `recover` resumes.
pub fn report_reconciled(r: &Reconciled, mention_interrupted: bool) {
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if mention_interrupted {
        if !r.runs.is_empty() {
            eprintln!(
                "note: recorded {} job runs interrupted by an earlier crash as failed",
                r.runs.len()
            );
        }
        if !r.interrupted.is_empty() {
            eprintln!(
                "note: {} interrupted build request(s) ({}); run `databuild recover` to finish them",
                r.interrupted.len(),
                r.interrupted.join(", ")
            );
        }
    } else {
        for (run, what) in &r.runs {
            eprintln!("recorded job run {run} as failed ({}): {what}", recovery::ENGINE_STOPPED);
        }
    }
}

pub fn recover(ctx: &Ctx, a: crate::args::RecoverArgs) -> Result<u8, CliError> {
    ctx.formats("recover", &[crate::args::Format::Text, crate::args::Format::Json])?;
    if let Some(s) = crate::client::find(ctx) {
        return Err(crate::client::busy(&s, "recover"));
    }
    let graph = Arc::new(ctx.graph()?);
    let rt = crate::cmd_build::runtime()?;
    ctx.check_logs_dir()?;
    let executor = executor(ctx, &graph)?;
    let settings = settings(ctx, a.jobs.or(graph.default_jobs));
    let _guard = rt.enter();
    let mut signals = Signals::install()?;
    let store = Arc::new(open_store(ctx, a.wait)?);
    let progress = Arc::new(
        crate::progress::Progress::new(ctx.quiet || ctx.format == crate::args::Format::Json)
            .logs_dir(ctx.logs_dir.clone()),
    );
    let started = std::time::Instant::now();
    let result = rt.block_on(async {
        let (engine, reconciled) = Engine::open(store.clone(), graph, settings, executor).await?;
        report_reconciled(&reconciled, false);
        let handle = engine.handle();
        let (observer, mut ends) = databuild::engine::with_ends(progress.clone());
        let resumed = match handle.resume(observer).await {
            Ok(r) => r,
            Err(e) => {
                drop(handle);
                let _ = engine.close().await;
                return Err(e);
            }
        };
        for w in &resumed.warnings {
            eprintln!("warning: {w}");
        }
        let count = resumed.requests.len() + resumed.finished_cancellations.len();
        let outcome = crate::cmd_build::wait_for_ends(
            &handle,
            &mut ends,
            &resumed.requests,
            count,
            &mut signals,
            &*progress,
        )
        .await;
        drop(handle);
        engine.close().await?;
        Ok((outcome, resumed.finished_cancellations))
    });
    progress.finish();
    close(store);
    let (outcome, finished) = result.map_err(|e| exit::engine_error(&e, &ctx.log_dir))?;
    let outcome = Outcome { failed_runs: progress.failed_runs(), ..outcome };
    if outcome.requests.is_empty() {
        if !ctx.quiet {
            crate::render::out("nothing to recover: no interrupted build requests");
        }
        return Ok(exit::SUCCESS);
    }
    crate::cmd_build::print_outcome(ctx, &outcome, started.elapsed(), "recovered");
    // A cancellation the crash interrupted was finished as the user asked: it counts as done.
    let judged = Outcome {
        requests: outcome
            .requests
            .iter()
            .filter(|x| !finished.contains(&x.request))
            .cloned()
            .collect(),
        signal: outcome.signal,
        failed_runs: outcome.failed_runs.clone(),
    };
    crate::cmd_build::judge(&judged)
}
