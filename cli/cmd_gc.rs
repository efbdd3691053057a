//! `gc`: housekeeping of files the event log does not need. Job and config output under
//! `.databuild/logs/` of runs and requests that the log says have ended, and the backups of torn
//! tails and repairs next to the log. It never touches segments, CHECKPOINT, TAIL, LOCK or
//! snapshots, and takes no lock: what it may delete is never read by a writer, and a run or request
//! that is live (or unknown: it may have started after the log was read) is left alone, so it is
//! safe while a build runs.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::args::{Format, GcArgs};
use crate::context::Ctx;
use crate::exit::{self, CliError};
use crate::render::{self, out};

const NS_PER_DAY: i64 = 86_400 * 1_000_000_000;

/// One thing to remove.
struct Item {
    path: PathBuf,
    bytes: u64,
    kind: &'static str,
}

pub fn gc(ctx: &Ctx, a: GcArgs) -> Result<u8, CliError> {
    ctx.formats("gc", &[Format::Text, Format::Json])?;
    if a.logs_older_than.is_none() && !a.torn {
        return Err(CliError::bad_input(
            "gc has nothing to do; give --logs-older-than DAYS (job output of ended runs) and/or --torn (torn-tail and repair backups), with --dry-run to see what would go",
        ));
    }
    let mut items = Vec::new();
    if let Some(days) = a.logs_older_than {
        items.extend(old_job_output(ctx, days)?);
    }
    if a.torn {
        items.extend(backups(&ctx.log_dir)?);
    }
    let mut freed = 0u64;
    let mut removed = 0usize;
    let mut failures = Vec::new();
    for it in &items {
        if !a.dry_run {
            let r = if it.kind == "backup" {
                std::fs::remove_file(&it.path)
            } else {
                std::fs::remove_dir_all(&it.path)
            };
            if let Err(e) = r {
                failures.push(format!("{}: {e}", it.path.display()));
                continue;
            }
        }
        removed += 1;
        freed += it.bytes;
        match ctx.format {
            Format::Json => out(&render::json(&json!({
                "path": it.path.display().to_string(),
                "kind": it.kind,
                "bytes": it.bytes,
                "removed": !a.dry_run,
            }))),
            _ => out(&format!(
                "{} {} ({})",
                if a.dry_run { "would remove" } else { "removed" },
                it.path.display(),
                bytes(it.bytes)
            )),
        }
    }
    match ctx.format {
        Format::Json => out(&render::json(&json!({
            "dryRun": a.dry_run,
            "items": removed,
            "bytesFreed": freed,
        }))),
        _ => out(&format!(
            "{} {removed} item(s), {} {}",
            if a.dry_run { "would remove" } else { "removed" },
            bytes(freed),
            if a.dry_run { "would be freed" } else { "freed" }
        )),
    }
    if let Some(first) = failures.first() {
        return Err(CliError::failed(format!(
            "could not remove {} item(s), first {first}; check their permissions, then run gc again",
            failures.len()
        )));
    }
    Ok(exit::SUCCESS)
}

/// Output directories of runs and requests that ended more than `days` days ago (by the
/// timestamp of their terminal event in the log).
fn old_job_output(ctx: &Ctx, days: u64) -> Result<Vec<Item>, CliError> {
    let entries = match std::fs::read_dir(&ctx.logs_dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(CliError::bad_input(format!(
                "cannot list the job output directory {}: {e}; check its permissions",
                ctx.logs_dir.display()
            )));
        }
    };
    let (state, _) = crate::cmd_history::load(ctx)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let cutoff =
        now.saturating_sub(i64::try_from(days).unwrap_or(i64::MAX).saturating_mul(NS_PER_DAY));
    let mut items = Vec::new();
    for e in entries.flatten() {
        let Ok(name) = e.file_name().into_string() else { continue };
        // Only real directories: a symbolic link is not followed, nor removed.
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let ended = match (state.runs.get(name.as_str()), state.requests.get(name.as_str())) {
            (Some(run), _) => run.ended.map(|(_, ts)| ts),
            (None, Some(req)) if req.is_terminal() => req.ended.map(|(_, ts)| ts),
            // Live, or unknown to the log as it was read: leave it.
            _ => None,
        };
        if ended.is_some_and(|ts| ts <= cutoff) {
            let path = e.path();
            items.push(Item { bytes: size(&path), path, kind: "job output" });
        }
    }
    items.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(items)
}

/// `<segment>.torn-<seq>` and `<segment>.repair-<seq>.bak` files in the log directory.
fn backups(log_dir: &Path) -> Result<Vec<Item>, CliError> {
    let entries = match std::fs::read_dir(log_dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(CliError::bad_input(format!(
                "cannot list the event log directory {}: {e}; check its permissions",
                log_dir.display()
            )));
        }
    };
    let mut items = Vec::new();
    for e in entries.flatten() {
        let Ok(name) = e.file_name().into_string() else { continue };
        let backup =
            name.contains(".torn-") || (name.contains(".repair-") && name.ends_with(".bak"));
        if backup && e.file_type().is_ok_and(|t| t.is_file()) {
            let path = e.path();
            items.push(Item { bytes: size(&path), path, kind: "backup" });
        }
    }
    items.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(items)
}

/// Bytes of a file, or of every file under a directory (symbolic links not followed).
fn size(path: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(path) else { return 0 };
    if !m.is_dir() {
        return m.len();
    }
    std::fs::read_dir(path).map(|d| d.flatten().map(|e| size(&e.path())).sum()).unwrap_or(0)
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / (1u64 << 10) as f64),
        n => format!("{n} bytes"),
    }
}
