//! Resolving what the user typed into paths: the graph file, the event log and the job logs.

use std::path::{Path, PathBuf};

use databuild::graph::{self, Graph};

use crate::args::{Format, Global};
use crate::exit::{self, CliError};

/// Validated, resolved global arguments.
#[derive(Debug)]
pub struct Ctx {
    /// The graph file, if one was found or given.
    pub graph_path: Option<PathBuf>,
    graph_error: Option<String>,
    /// The event log directory.
    pub log_dir: PathBuf,
    /// The job output directory (`.databuild/logs`).
    pub logs_dir: PathBuf,
    pub format: Format,
    pub quiet: bool,
    /// `-v`: say where the graph and the log are before working.
    pub verbose: u8,
}

impl Ctx {
    /// Resolves the paths. The graph file is needed only where no `--log` says where the log is.
    pub fn resolve(g: &Global) -> Result<Ctx, CliError> {
        let cwd = std::env::current_dir()
            .map_err(|e| CliError::bad_input(format!("cannot read the current directory: {e}")))?;
        let (graph_path, graph_error) = match graph::find(g.graph.as_deref(), &cwd) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e.to_string())),
        };
        // Directories are made absolute: jobs run in the graph's directory, and a job's process
        // opens its stdin and output files from paths this process hands it.
        let graph_dir = graph_path.as_ref().map(|p| {
            p.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| cwd.clone(), |d| cwd.join(d))
        });
        let log_dir = match (&g.log, &graph_dir) {
            (Some(l), _) if l.as_os_str().is_empty() => {
                return Err(CliError::bad_input("--log is empty; give a directory"));
            }
            (Some(l), _) => cwd.join(l),
            (None, Some(d)) => d.join(".databuild").join("log"),
            (None, None) => {
                return Err(CliError::bad_input(graph_error.clone().unwrap_or_default()));
            }
        };
        check_log_dir(&log_dir, g.log.is_some())?;
        let logs_dir = match &graph_dir {
            Some(d) => d.join(".databuild").join("logs"),
            None => log_dir.parent().unwrap_or(Path::new(".")).join("logs"),
        };
        Ok(Ctx {
            graph_path,
            graph_error,
            log_dir,
            logs_dir,
            format: g.format,
            quiet: g.quiet,
            verbose: g.verbose,
        })
    }

    /// Makes sure the job output directory exists and can take files, before anything runs: a
    /// build whose every job fails with "Permission denied" and no path helps nobody.
    pub fn check_logs_dir(&self) -> Result<(), CliError> {
        let dir = &self.logs_dir;
        let fix = "make it a writable directory (or remove it, it is created), then run again";
        if std::fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
            return Err(CliError::bad_input(format!(
                "cannot use {} for job output: it is not a directory; {fix}",
                dir.display()
            )));
        }
        if let Err(e) = std::fs::create_dir_all(dir) {
            return Err(CliError::bad_input(format!(
                "cannot use {} for job output: cannot create it: {e}; {fix}",
                dir.display()
            )));
        }
        let probe = dir.join(format!(".write-check-{}", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
                Ok(())
            }
            Err(e) => Err(CliError::bad_input(format!(
                "cannot use {} for job output: cannot create a file in it: {e}; {fix}",
                dir.display()
            ))),
        }
    }

    /// Loads the graph file (it must exist).
    pub fn graph(&self) -> Result<Graph, CliError> {
        match &self.graph_path {
            Some(p) => Graph::load(p).map_err(|e| exit::graph_error(&e)),
            None => Err(CliError::bad_input(
                self.graph_error.clone().unwrap_or_else(|| "no graph file".into()),
            )),
        }
    }

    /// Refuses formats a command does not have.
    pub fn formats(&self, command: &str, allowed: &[Format]) -> Result<(), CliError> {
        if allowed.contains(&self.format) {
            return Ok(());
        }
        let names: Vec<&str> = allowed.iter().map(|f| format_name(*f)).collect();
        Err(CliError::bad_input(format!(
            "`{command}` has no --format {}; use one of: {}",
            format_name(self.format),
            names.join(", ")
        )))
    }
}

/// A format as it is typed.
fn format_name(f: Format) -> &'static str {
    match f {
        Format::Text => "text",
        Format::Json => "json",
        Format::Mermaid => "mermaid",
    }
}

/// Refuses an event log path that exists but is not a directory (a file, or a symbolic link to
/// nothing): creating the log there would fail with a misleading "File exists", and a reader
/// would show an empty log as if nothing had been built. A path that does not exist is fine (no
/// log yet: readers show nothing, the first writer creates it).
fn check_log_dir(dir: &Path, from_flag: bool) -> Result<(), CliError> {
    let Ok(link) = std::fs::symlink_metadata(dir) else { return Ok(()) };
    let fix = if from_flag {
        "give --log (or DATABUILD_LOG) an existing directory, or a path that does not exist yet"
    } else {
        "move it aside (the event log is created there), or give --log DIR"
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(CliError::bad_input(format!(
            "the event log path {} is not a directory; {fix}",
            dir.display()
        ))),
        Err(e) if link.file_type().is_symlink() => {
            let target = std::fs::read_link(dir)
                .map_or_else(|_| "?".to_string(), |t| t.display().to_string());
            Err(CliError::bad_input(format!(
                "the event log path {} is a symbolic link to {target}, which does not exist ({e}); create the directory it points to, or {fix}",
                dir.display()
            )))
        }
        Err(e) => Err(CliError::bad_input(format!(
            "cannot use the event log path {}: {e}; {fix}",
            dir.display()
        ))),
    }
}
