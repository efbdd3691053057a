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
        // Directories are made absolute: jobs run in the graph's directory, and the job shim
        // opens its stdin and output files there from paths this process hands it.
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
        let names: Vec<&str> = allowed
            .iter()
            .map(|f| match f {
                Format::Text => "text",
                Format::Json => "json",
                Format::Mermaid => "mermaid",
            })
            .collect();
        Err(CliError::bad_input(format!(
            "`{command}` has no --format {:?}; use one of: {}",
            self.format,
            names.join(", ")
        )))
    }
}
