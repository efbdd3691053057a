//! Exit codes and the one mapping from errors to them (CONTRACT.md §5, line for line).
//!
//! Every non-zero exit prints one line, `error: <what happened>; <what to do>`, to stderr. For a
//! job's config error up to 10 indented lines of the job's stderr may follow; for argument errors
//! clap prints its usage.

use std::path::Path;

use databuild::config::{ConfigError, ConfigErrorKind};
use databuild::engine::{EngineError, SubmitError};
use databuild::graph::{GraphError, LookupError};
use databuild::planner::PlanError;
use databuild::store::{CommitError, StoreError};
use databuild_log::OpenError;

/// Success.
pub const SUCCESS: u8 = 0;
/// The build ran and something failed; also an internal error.
pub const FAILED: u8 = 1;
/// Bad input: arguments, graph file, unknown ref, invalid job config output.
pub const BAD_INPUT: u8 = 2;
/// The log cannot be used: corrupt, locked by another writer, unwritable.
pub const LOG_UNUSABLE: u8 = 3;
/// Cancelled by SIGINT.
pub const CANCELLED_SIGINT: u8 = 130;
/// Cancelled by SIGTERM.
pub const CANCELLED_SIGTERM: u8 = 143;

/// An error the CLI reports: its exit code, its one line, and optional detail lines.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub line: String,
    pub detail: Vec<String>,
}

impl CliError {
    pub fn bad_input(line: impl Into<String>) -> CliError {
        CliError { code: BAD_INPUT, line: line.into(), detail: Vec::new() }
    }

    pub fn failed(line: impl Into<String>) -> CliError {
        CliError { code: FAILED, line: line.into(), detail: Vec::new() }
    }

    pub fn log(line: impl Into<String>) -> CliError {
        CliError { code: LOG_UNUSABLE, line: line.into(), detail: Vec::new() }
    }

    pub fn internal(line: impl std::fmt::Display) -> CliError {
        CliError {
            code: FAILED,
            line: format!("internal error: {line}; please report it"),
            detail: Vec::new(),
        }
    }

    /// Prints the error to stderr.
    pub fn print(&self) {
        // The line and details can carry refs, labels and a job's stderr: shown escaped.
        let line = crate::render::safe(&self.line);
        if line.starts_with("internal error:") {
            eprintln!("{line}");
        } else {
            eprintln!("error: {line}");
        }
        for d in &self.detail {
            eprintln!("    {}", crate::render::safe_output(d));
        }
    }
}

/// The CLI's message for a log that cannot be opened, with the remedy.
pub fn open_error(e: &OpenError, dir: &Path) -> CliError {
    match e {
        OpenError::Locked { pid, host, .. } => {
            let who = match (pid, host) {
                (Some(p), Some(h)) => format!("pid {p} on {h}"),
                (Some(p), None) => format!("pid {p}"),
                _ => "another process".to_string(),
            };
            CliError::log(format!(
                "the event log in {} is in use by another databuild ({who}); wait for it to finish, or pass --wait",
                dir.display()
            ))
        }
        OpenError::Corruption(c) => CliError::log(format!(
            "{c}; run `databuild verify` for a report, or `databuild repair --truncate` to cut the damaged part (nothing was changed)"
        )),
        OpenError::UnsupportedVersion { .. } => {
            CliError::log(format!("{e}; use a newer databuild"))
        }
        OpenError::Io { .. } => {
            CliError::log(format!("{e}; check the path, its permissions and free space"))
        }
        other => CliError::log(format!("{other}")),
    }
}

pub fn store_error(e: &StoreError, dir: &Path) -> CliError {
    match e {
        StoreError::Open(o) => open_error(o, dir),
        StoreError::Read(r) => CliError::log(format!("{r}; run `databuild verify` for a report")),
        StoreError::Decode { .. } | StoreError::Violation(_) => CliError::log(format!(
            "the event log history is not valid: {e}; run `databuild verify` for a report"
        )),
        other => CliError::log(other.to_string()),
    }
}

pub fn graph_error(e: &GraphError) -> CliError {
    CliError::bad_input(e.to_string())
}

pub fn lookup_error(e: &LookupError) -> CliError {
    CliError::bad_input(format!("{e}{}", e.hint()))
}

pub fn plan_error(e: &PlanError) -> CliError {
    match e {
        PlanError::Lookup(l) => lookup_error(l),
        PlanError::Config(c) => config_error(c),
        PlanError::Internal(why) => CliError::internal(why),
        other => CliError::bad_input(format!("{other}; fix the job configs")),
    }
}

/// A job's config error: what went wrong, where its captured output is, and what to do; the last
/// lines of its stderr follow (and are announced only when there are some).
fn config_error(c: &ConfigError) -> CliError {
    let mut hint = match c.kind {
        ConfigErrorKind::Spawn(_) => "check the entrypoint".to_string(),
        ConfigErrorKind::Timeout(_) => "make the job's config answer sooner (it must not wait on anything long-running), or raise config_timeout_seconds in the graph file".to_string(),
        ConfigErrorKind::Limit(_) => "check what the job's config prints: one JobConfigureResponse on stdout, then it must exit".to_string(),
        ConfigErrorKind::Parse(_) => format!(
            "make `config` print one JobConfigureResponse on stdout, e.g. {} (the README's \"job protocol\" has complete jobs)",
            databuild::config::EXAMPLE_ANSWER
        ),
        _ => "fix the job's config output".to_string(),
    };
    if let Some((stdout, stderr)) = c.files() {
        let (stdout, stderr) = (shown_path(&stdout), shown_path(&stderr));
        if matches!(c.kind, ConfigErrorKind::Spawn(_)) {
            // It never ran: the files hold nothing.
        } else {
            hint.push_str(&format!("; its output is kept in {stdout} and {stderr}"));
        }
    }
    if !c.stderr_tail.is_empty() {
        hint.push_str("; the last lines of its stderr follow");
    }
    let mut err = CliError::bad_input(format!("{c}; {hint}"));
    err.detail = c.stderr_tail.clone();
    err
}

/// `path` relative to the current directory when it is under it (`.databuild/logs/...`).
fn shown_path(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|d| path.strip_prefix(d).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

pub fn commit_error(e: &CommitError, dir: &Path) -> CliError {
    match e {
        CommitError::Violation(v) => {
            CliError::internal(format!("the engine proposed an illegal event: {v}"))
        }
        CommitError::Append(a) => CliError::log(format!(
            "cannot append to the event log in {}: {a}; check free space and permissions, then run `databuild recover`",
            dir.display()
        )),
        other => CliError::log(other.to_string()),
    }
}

pub fn engine_error(e: &EngineError, dir: &Path) -> CliError {
    match e {
        EngineError::Commit(c) => commit_error(c, dir),
        EngineError::Fatal(why) => CliError::log(format!(
            "the event log in {} failed during the build, every job was stopped: {why}; check free space and permissions, then run `databuild recover`",
            dir.display()
        )),
        other => CliError::internal(other),
    }
}

pub fn submit_error(e: &SubmitError, dir: &Path) -> CliError {
    match e {
        SubmitError::Lookup(l) => lookup_error(l),
        SubmitError::Invalid(why) => CliError::bad_input(format!("{why}; nothing was recorded")),
        SubmitError::Engine(e) => engine_error(e, dir),
        other => CliError::internal(other),
    }
}

impl From<databuild_log::ReadError> for CliError {
    fn from(e: databuild_log::ReadError) -> CliError {
        CliError::log(format!("{e}; run `databuild verify` for a report"))
    }
}
