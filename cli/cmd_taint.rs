//! `taint REF_OR_GLOB... [--downstream] [--reason TEXT]`: marks AVAILABLE partitions bad, so the
//! next build that needs them builds them again (CONTRACT §13). Data is never deleted.
//!
//! Like `cancel`, it writes through an engine of its own (which reconciles first, as every writer
//! does): the engine records one PARTITION_TAINTED per partition, without a build request, in one
//! commit.

use std::sync::Arc;

use databuild::freshness::TaintSpec;
use databuild::proto::PartitionStatus;
use databuild::store::{Store, StoreOptions};
use databuild_log::WriterOptions;

use crate::args::{Format, TaintArgs};
use crate::context::Ctx;
use crate::exit::{self, CliError};
use crate::render::{self, out};

pub fn taint(ctx: &Ctx, a: TaintArgs) -> Result<u8, CliError> {
    ctx.formats("taint", &[Format::Text, Format::Json])?;
    let typed = crate::refs::expand_args(&a.refs)?;
    for r in typed.iter().filter(|r| !crate::refs::is_glob(r)) {
        databuild::graph::check_ref(r).map_err(|e| exit::lookup_error(&e))?;
    }
    // Matched against what the log says now; the engine checks again under its lock.
    let (state, _) = crate::cmd_history::load(ctx)?;
    let refs = databuild::refs::match_globs(state, &typed, None);
    let available: Vec<String> = refs
        .into_iter()
        .filter(|r| state.partition_status(r) == PartitionStatus::PartitionAvailable)
        .collect();
    if available.is_empty() {
        return Err(nothing_available(&a.refs));
    }
    let spec = TaintSpec {
        refs: available,
        downstream: a.downstream,
        reason: a.reason.clone().unwrap_or_default(),
    };
    let tainted = match crate::client::find(ctx) {
        Some(s) => crate::client::taint(&s, spec)?,
        None => taint_here(ctx, spec)?,
    };
    if tainted.is_empty() {
        return Err(nothing_available(&a.refs));
    }
    print(ctx, &tainted);
    Ok(exit::SUCCESS)
}

/// No server: an engine of this command's own records the taint.
fn taint_here(ctx: &Ctx, spec: TaintSpec) -> Result<Vec<databuild::freshness::Taint>, CliError> {
    let opts = StoreOptions { writer: WriterOptions::default(), ..StoreOptions::default() };
    let (store, _) =
        Store::open(&ctx.log_dir, opts).map_err(|e| exit::store_error(&e, &ctx.log_dir))?;
    crate::cmd_build::with_engine(ctx, Arc::new(store), |h| async move { h.taint(spec).await })
}

/// Prints what was tainted (one line or object each).
fn print(ctx: &Ctx, tainted: &[databuild::freshness::Taint]) {
    for t in tainted {
        match ctx.format {
            Format::Json => {
                let mut v = serde_json::Map::new();
                v.insert("partitionRef".into(), t.partition.clone().into());
                v.insert("status".into(), PartitionStatus::PartitionTainted.as_str_name().into());
                v.insert("jobRunId".into(), t.job_run_id.clone().into());
                if let Some(x) = &t.via {
                    v.insert("builtFrom".into(), x.clone().into());
                }
                out(&render::json(&v));
            }
            _ => {
                let via = t.via.as_ref().map(|x| format!(", built from {x}")).unwrap_or_default();
                out(&render::safe(&format!(
                    "tainted {} (the instance built by run {}{via})",
                    t.partition, t.job_run_id
                )));
            }
        }
    }
    if ctx.format == Format::Text && !ctx.quiet {
        eprintln!(
            "{} partition{} tainted; the next build that needs {} builds {} again",
            tainted.len(),
            if tainted.len() == 1 { "" } else { "s" },
            if tainted.len() == 1 { "it" } else { "them" },
            if tainted.len() == 1 { "it" } else { "them" },
        );
    }
}

fn nothing_available(typed: &[String]) -> CliError {
    CliError::bad_input(format!(
        "'{}' matches no AVAILABLE partition; only AVAILABLE partitions can be tainted (`databuild status` lists them)",
        render::safe(&typed.join(" "))
    ))
}
