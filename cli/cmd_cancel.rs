//! `cancel ID`: cancels one build request that has not ended.
//!
//! Without a server: a request a running `build` (or `recover`) owns is cancelled by sending that
//! process SIGTERM, which it turns into a cancel of its requests; an interrupted request (no live
//! engine) is recorded CANCELLED here, so no `recover` resumes it.

use std::sync::Arc;

use databuild::engine::CancelOutcome;
use databuild::store::{Store, StoreOptions};
use databuild_log::{OpenError, WriterOptions};

use crate::args::CancelArgs;
use crate::context::Ctx;
use crate::exit::{self, CliError};
use crate::render::{self, out};

fn already_ended(id: &str, status: databuild::proto::BuildRequestStatus) -> u8 {
    out(&format!(
        "build request {id} already ended ({}); nothing to cancel",
        render::short(status.as_str_name())
    ));
    exit::SUCCESS
}

pub fn cancel(ctx: &Ctx, a: CancelArgs) -> Result<u8, CliError> {
    ctx.formats("cancel", &[crate::args::Format::Text])?;
    let (state, _) = crate::cmd_history::load(ctx)?;
    let id = crate::refs::request_id(state, a.id.trim())?;
    let id = id.as_str();
    let Some(r) = state.requests.get(id) else {
        return Err(CliError::bad_input(format!(
            "no build request {id} in the log; see `databuild builds` for the ids"
        )));
    };
    if databuild::state::is_terminal_request(r.status) {
        return Ok(already_ended(id, r.status));
    }
    if let Some(s) = crate::client::find(ctx) {
        return crate::client::cancel(&s, id);
    }
    let opts = StoreOptions { writer: WriterOptions::default(), ..StoreOptions::default() };
    match Store::open(&ctx.log_dir, opts) {
        Err(databuild::store::StoreError::Open(OpenError::Locked { pid, host, .. })) => {
            signal_owner(ctx, id, r.received_ts, pid, host)
        }
        Err(e) => Err(exit::store_error(&e, &ctx.log_dir)),
        Ok((store, _)) => record_interrupted(ctx, id, Arc::new(store)),
    }
}

/// A live engine holds the log: it owns every open request. SIGTERM makes it cancel them.
fn signal_owner(
    ctx: &Ctx,
    id: &str,
    received_ns: i64,
    pid: Option<u32>,
    host: Option<String>,
) -> Result<u8, CliError> {
    let here = databuild_log::fs::host_name();
    let Some(pid) = pid.filter(|_| host.as_deref().is_none_or(|h| h == here)) else {
        return Err(CliError::log(format!(
            "build request {id} is run by a databuild on {} that cannot be signalled from here; cancel it there",
            host.unwrap_or_else(|| "another host".into())
        )));
    };
    // Only the engine that accepted the request owns it: one that started later (a `build` of
    // other refs, `repair`) must not be stopped for it.
    let started = databuild::sys::start_time_ns(pid as i32);
    if started.is_none_or(|t| t > received_ns + 200_000_000) {
        return Err(CliError::log(format!(
            "build request {id} is not run by the databuild (pid {pid}) that holds the log now: it started after the request was made (a `recover` resuming it can be stopped with Ctrl-C); run `databuild cancel {id}` again once it ends"
        )));
    }
    databuild::sys::signal_process(pid as i32, databuild::sys::SIGTERM).map_err(|e| {
        CliError::log(format!(
            "cannot signal the databuild (pid {pid}) that runs build request {id}: {e}"
        ))
    })?;
    out(&format!(
        "sent SIGTERM to the databuild (pid {pid}) that runs build request {id}: it cancels its requests and stops their jobs"
    ));
    let _ = ctx;
    Ok(exit::SUCCESS)
}

/// No live engine: this one reconciles (runs a crash left live are recorded failed) and records
/// the interrupted request CANCELLED.
fn record_interrupted(ctx: &Ctx, id: &str, store: Arc<Store>) -> Result<u8, CliError> {
    let outcome = crate::cmd_build::with_engine(ctx, store, |h| async move {
        h.cancel(id, "cancelled by `databuild cancel` (interrupted)").await
    })?;
    match outcome {
        CancelOutcome::AlreadyEnded(s) => Ok(already_ended(id, s)),
        CancelOutcome::Unknown => Err(CliError::bad_input(format!(
            "no build request {id} in the log; see `databuild builds` for the ids"
        ))),
        _ => {
            out(&format!(
                "cancelled build request {id}: it was interrupted (no engine ran it); recorded CANCELLED, so `databuild recover` will not resume it"
            ));
            Ok(exit::SUCCESS)
        }
    }
}
