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
    let _ = (ctx, a);
    Err(CliError::internal("recover is not built yet"))
}
