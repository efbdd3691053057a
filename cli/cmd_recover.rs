//! `recover`, and the reconciliation `build` does first.

use databuild::driver::KILL_GRACE;
use databuild::recovery;
use databuild::store::Store;

use crate::context::Ctx;
use crate::exit::{self, CliError};

/// Before a build: record runs a crash left live as failed, and say how to resume interrupted
/// requests (only `recover` resumes them).
pub fn reconcile_before_build(ctx: &Ctx, store: &Store) -> Result<(), CliError> {
    let r =
        recovery::reconcile(store, KILL_GRACE).map_err(|e| exit::commit_error(&e, &ctx.log_dir))?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
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
    Ok(())
}

pub fn recover(ctx: &Ctx, a: crate::args::RecoverArgs) -> Result<u8, CliError> {
    use std::sync::Arc;

    use databuild::driver::{Observer, Outcome};

    ctx.formats("recover", &[crate::args::Format::Text, crate::args::Format::Json])?;
    let graph = Arc::new(ctx.graph()?);
    let rt = crate::cmd_build::runtime()?;
    ctx.check_logs_dir()?;
    let store = Arc::new(crate::cmd_build::open_store(ctx, a.wait)?);
    let settings = crate::cmd_build::settings(ctx, a.jobs)?;
    let progress = Arc::new(crate::progress::Progress::new(
        ctx.quiet || ctx.format == crate::args::Format::Json,
    ));
    let observer: Arc<dyn Observer> = progress.clone();
    let started = std::time::Instant::now();
    let result = rt.block_on(recovery::recover(store.clone(), graph, settings, observer));
    progress.finish();
    crate::cmd_build::close(store);
    let r = result.map_err(|e| match e {
        recovery::RecoverError::Commit(c) => exit::commit_error(&c, &ctx.log_dir),
        recovery::RecoverError::Driver(d) => {
            exit::build_error(&databuild::request::BuildError::Driver(d), &ctx.log_dir)
        }
        other => CliError::log(format!("{other}; run `databuild verify` for a report")),
    })?;
    for w in r.reconciled.warnings.iter().chain(&r.warnings) {
        eprintln!("warning: {w}");
    }
    for (run, what) in &r.reconciled.runs {
        eprintln!("recorded job run {run} as failed ({}): {what}", recovery::ENGINE_STOPPED);
    }
    if r.outcome.requests.is_empty() {
        if !ctx.quiet {
            crate::render::out("nothing to recover: no interrupted build requests");
        }
        return Ok(exit::SUCCESS);
    }
    crate::cmd_build::print_outcome(ctx, &r.outcome, started.elapsed(), "recovered");
    // A cancellation the crash interrupted was finished as the user asked: it counts as done.
    let judged = Outcome {
        requests: r
            .outcome
            .requests
            .iter()
            .filter(|x| !r.finished_cancellations.contains(&x.request))
            .cloned()
            .collect(),
        signal: r.outcome.signal,
    };
    crate::cmd_build::judge(&judged)
}
