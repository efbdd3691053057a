//! The graph file (`databuild.toml`) and lookup: which job owns a partition ref.
//!
//! Loaded with serde + toml, unknown keys refused; every error names the file, the job and the
//! key. Each partition pattern compiles as `^(?:…)$` and all of them form one `RegexSet`, so
//! lookup is one pass per ref and names every owner on a conflict.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::RegexSet;
use serde::Deserialize;

/// The file name looked for in the current directory and its parents.
pub const GRAPH_FILE: &str = "databuild.toml";
/// How long a `config` call may run when the graph file sets no `config_timeout_seconds`.
pub const CONFIG_TIMEOUT_DEFAULT: Duration = Duration::from_secs(600);

/// One job of the graph.
#[derive(Clone, Debug)]
pub struct Job {
    /// Unique label.
    pub label: String,
    /// The entrypoint, resolved against the graph file's directory.
    pub entrypoint: PathBuf,
    /// The entrypoint as written in the graph file.
    pub entrypoint_text: String,
    /// Partition patterns as written.
    pub patterns: Vec<String>,
    /// Environment added to both `config` and `exec`.
    pub env: BTreeMap<String, String>,
    /// `exec` is stopped after this long.
    pub timeout: Option<Duration>,
    /// A `config` call is stopped after this long (always bounded).
    pub config_timeout: Duration,
    /// Extra `exec` attempts after a failure.
    pub retries: u32,
    /// At most this many `exec` runs of this job at once.
    pub max_concurrency: Option<u32>,
    /// Where a partition's data lives (`output_path`), if the graph file says.
    pub output_path: Option<OutputPath>,
    /// The job's `version`, if the graph file says (recorded with each run; a change makes what
    /// the job built before stale).
    pub version: Option<String>,
    /// `executor`: where this job's runs run, whatever `[executor] kind` says.
    pub executor: Option<ExecutorKind>,
    /// `cpus` (Slurm: `--cpus-per-task`).
    pub cpus: Option<u32>,
    /// `memory_mb` (Slurm: `--mem`).
    pub memory_mb: Option<u64>,
}

/// Where job runs run (CONTRACT §12).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExecutorKind {
    /// Process groups on this machine.
    #[default]
    Local,
    /// Slurm batch jobs.
    Slurm,
}

impl ExecutorKind {
    fn parse(s: &str) -> Option<ExecutorKind> {
        match s {
            "local" => Some(ExecutorKind::Local),
            "slurm" => Some(ExecutorKind::Slurm),
            _ => None,
        }
    }

    /// The kind's name, as in the graph file.
    pub fn name(self) -> &'static str {
        match self {
            ExecutorKind::Local => "local",
            ExecutorKind::Slurm => "slurm",
        }
    }
}

/// The graph file's `[executor]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecutorSettings {
    /// `kind`: the default for every job.
    pub kind: ExecutorKind,
    /// `partition` (Slurm: `--partition`).
    pub partition: Option<String>,
    /// `extra_args`: passed to `sbatch` as given.
    pub extra_args: Vec<String>,
}

/// A job's `output_path`: a path relative to the graph file's directory, with `{ref}` (the ref)
/// and `{NAME}` (a named group of the job's pattern that matched) filled in per partition.
#[derive(Clone, Debug)]
pub struct OutputPath {
    /// As written.
    pub template: String,
    patterns: Vec<regex::Regex>,
}

impl OutputPath {
    /// The path of `r`'s data, relative to the graph file's directory; an error if it would leave
    /// that directory (a ref with `..` in it).
    pub fn of(&self, r: &str) -> Result<String, String> {
        let caps = self.patterns.iter().find_map(|p| p.captures(r));
        let mut out = String::new();
        let mut rest = self.template.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let Some(close) = rest[open..].find('}') else { break };
            let name = &rest[open + 1..open + close];
            if name == "ref" {
                out.push_str(r);
            } else if let Some(m) = caps.as_ref().and_then(|c| c.name(name)) {
                out.push_str(m.as_str());
            }
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        if out.starts_with('/') || out.split('/').any(|c| c == "..") {
            return Err(format!("the output path {out:?} of {r} leaves the graph's directory"));
        }
        Ok(out)
    }
}

/// Checks an `output_path` template against the job's patterns.
fn output_path(template: &str, patterns: &[String]) -> Result<OutputPath, String> {
    let key = "key 'output_path'";
    if template.trim().is_empty() {
        return Err(format!("{key} is empty"));
    }
    if template.starts_with('/') || template.split('/').any(|c| c == "..") {
        return Err(format!(
            "{key} {template:?} must be relative to the graph file's directory and stay inside it"
        ));
    }
    let compiled: Vec<regex::Regex> =
        patterns.iter().filter_map(|p| regex::Regex::new(&format!("^(?:{p})$")).ok()).collect();
    let mut rest = template;
    let mut any = false;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return Err(format!("{key} {template:?} has a '{{' without its '}}'"));
        };
        let name = &rest[open + 1..open + close];
        any = true;
        if name != "ref"
            && let Some(p) =
                compiled.iter().position(|re| !re.capture_names().flatten().any(|n| n == name))
        {
            return Err(format!(
                "{key} {template:?} uses {{{name}}}, which is not a named group of the pattern {:?} (write (?P<{name}>...) in every pattern, or use {{ref}})",
                patterns[p]
            ));
        }
        rest = &rest[open + close + 1..];
    }
    if !any {
        return Err(format!(
            "{key} {template:?} names no partition: use {{ref}} or a named group like {{date}}"
        ));
    }
    Ok(OutputPath { template: template.to_string(), patterns: compiled })
}

/// A loaded, checked graph.
#[derive(Clone, Debug)]
pub struct Graph {
    /// The graph file.
    pub path: PathBuf,
    /// Its directory: jobs run there.
    pub dir: PathBuf,
    /// The graph label.
    pub label: String,
    /// The jobs, in file order.
    pub jobs: Vec<Job>,
    /// A digest of the file's bytes.
    pub digest: String,
    /// `[defaults] jobs`: the engine's slots when `--jobs` is not given.
    pub default_jobs: Option<u32>,
    /// `[executor]`: where job runs run by default, and the Slurm options.
    pub executor: ExecutorSettings,
    set: RegexSet,
    pattern_job: Vec<usize>,
}

/// Why a graph file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// No graph file here or in any parent.
    #[error("no {GRAPH_FILE} in {} or any parent directory; create one or pass --graph PATH", .start.display())]
    NotFound {
        /// Where the search started.
        start: PathBuf,
    },
    /// The file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or a top-level key is wrong.
    #[error("{}: {message}", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong (with the line where known).
        message: String,
    },
    /// A job's entry is wrong.
    #[error("{}: job '{job}': {message}", .path.display())]
    Job {
        /// The file.
        path: PathBuf,
        /// The job's label (or `#N` if it has none).
        job: String,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// Why a ref has no single owner.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// Not a valid ref.
    #[error("invalid partition ref {0:?}: {1}")]
    Invalid(String, &'static str),
    /// No job's pattern matches.
    #[error("no job produces '{0}' (no partition_patterns entry matches it)")]
    NoOwner(String),
    /// Two or more jobs match.
    #[error("'{0}' is matched by jobs {1}: patterns must not overlap")]
    Conflict(String, String),
}

impl LookupError {
    /// What to do about it, as `; ...` to follow the message (the CLI's and the server's).
    pub fn hint(&self) -> &'static str {
        match self {
            LookupError::NoOwner(_) => {
                "; check the ref, or add a job whose partition_patterns match it"
            }
            LookupError::Conflict(..) => "; make the jobs' partition_patterns disjoint",
            LookupError::Invalid(..) => {
                "; refs are non-empty, without whitespace, control, invisible or bidi characters"
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    graph: Option<GraphToml>,
    defaults: Option<DefaultsToml>,
    executor: Option<ExecutorToml>,
    #[serde(default)]
    jobs: Vec<toml::Value>,
}

/// `[executor]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecutorToml {
    kind: Option<String>,
    partition: Option<String>,
    extra_args: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GraphToml {
    label: Option<String>,
}

/// `[defaults]`: what command-line flags default to for this graph.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsToml {
    /// `--jobs` when not given (checked by hand, so a wrong type names the key too).
    jobs: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobToml {
    label: String,
    entrypoint: String,
    partition_patterns: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    timeout_seconds: Option<u64>,
    config_timeout_seconds: Option<u64>,
    retries: Option<u32>,
    max_concurrency: Option<u32>,
    output_path: Option<String>,
    executor: Option<String>,
    cpus: Option<u32>,
    memory_mb: Option<u64>,
    version: Option<toml::Value>,
}

/// Checks a job's `version`: a string (or a whole number, read as its digits), non-empty, at most
/// 100 characters, with no whitespace or control characters (it is printed as `job version A -> B`).
fn job_version(v: &toml::Value) -> Result<String, String> {
    let s = match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(n) => n.to_string(),
        other => {
            return Err(format!(
                "key 'version' is a {}; write a string such as version = \"2\"",
                other.type_str()
            ));
        }
    };
    if s.is_empty() {
        return Err("key 'version' is empty; remove it or give a version such as \"2\"".into());
    }
    if s.chars().count() > 100 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "key 'version' is {s:?}; a version is at most 100 characters, without spaces or control characters"
        ));
    }
    Ok(s)
}

/// Whether `c` is invisible or reorders text around it: zero-width characters (U+200B–U+200D),
/// the word joiner (U+2060), the byte order mark (U+FEFF), and bidi controls (U+200E, U+200F,
/// U+061C, U+202A–U+202E, U+2066–U+2069). Two names differing only in these look the same.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
            | '\u{061C}'
    )
}

/// Checks a partition ref: non-empty, no whitespace, no control, invisible or bidi characters.
pub fn check_ref(r: &str) -> Result<(), LookupError> {
    if r.is_empty() {
        return Err(LookupError::Invalid(r.to_string(), "it is empty"));
    }
    if r.chars().any(char::is_whitespace) {
        return Err(LookupError::Invalid(r.to_string(), "it contains whitespace"));
    }
    if r.chars().any(char::is_control) {
        return Err(LookupError::Invalid(r.to_string(), "it contains a control character"));
    }
    if r.chars().any(is_invisible) {
        return Err(LookupError::Invalid(
            r.to_string(),
            "it contains an invisible or bidi-control character (zero-width, BOM or direction mark)",
        ));
    }
    Ok(())
}

/// Checks a job label: it names files under `.databuild/` (config logs), so it must be one path
/// component (no `/`, not `.` or `..`), and, like a ref, free of control, invisible and bidi
/// characters. Anything else (letters of any script, digits, punctuation, spaces) is fine.
fn check_label(label: &str) -> Result<(), String> {
    let what = if label == "." || label == ".." {
        "must not be '.' or '..'"
    } else if label.contains('/') {
        "must not contain '/'"
    } else if label.chars().any(char::is_control) {
        "must not contain control characters"
    } else if label.chars().any(is_invisible) {
        "must not contain invisible or bidi-control characters"
    } else {
        return Ok(());
    };
    Err(format!(
        "key 'label' {label:?} {what}: labels name files under .databuild/; use letters, digits, '_', '.' and '-'"
    ))
}

/// Finds the graph file: `explicit` if given, else `databuild.toml` in `start` or a parent.
pub fn find(explicit: Option<&Path>, start: &Path) -> Result<PathBuf, GraphError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let mut dir = Some(start);
    while let Some(d) = dir {
        let candidate = d.join(GRAPH_FILE);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    Err(GraphError::NotFound { start: start.to_path_buf() })
}

fn digest(bytes: &[u8]) -> String {
    // FNV-1a: a change detector for "the graph changed since this request", not a security hash.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Checks the `[executor]` table.
fn executor_settings(t: Option<ExecutorToml>) -> Result<ExecutorSettings, String> {
    let Some(t) = t else { return Ok(ExecutorSettings::default()) };
    let kind = match t.kind.as_deref() {
        None => ExecutorKind::Local,
        Some(k) => ExecutorKind::parse(k).ok_or_else(|| {
            format!("key 'executor.kind' is {k:?}; it must be \"local\" or \"slurm\"")
        })?,
    };
    if let Some(p) = &t.partition
        && (p.trim().is_empty() || p.chars().any(char::is_whitespace))
    {
        return Err(format!(
            "key 'executor.partition' is {p:?}; it must be a Slurm partition name (no spaces)"
        ));
    }
    let extra_args = t.extra_args.unwrap_or_default();
    for a in &extra_args {
        if !a.starts_with('-') || a.contains('\0') {
            return Err(format!(
                "key 'executor.extra_args': {a:?} is not an sbatch option; give each option as one string, e.g. \"--account=data\""
            ));
        }
    }
    Ok(ExecutorSettings { kind, partition: t.partition, extra_args })
}

impl Graph {
    /// Whether some job of the graph runs on `kind`.
    pub fn uses(&self, kind: ExecutorKind) -> bool {
        self.jobs.iter().any(|j| self.kind_of(j) == kind)
    }

    /// Where `job`'s runs run.
    pub fn kind_of(&self, job: &Job) -> ExecutorKind {
        job.executor.unwrap_or(self.executor.kind)
    }
}

fn toml_message(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {msg}")
        }
        None => msg,
    }
}

impl Graph {
    /// Loads and checks the graph file at `path`.
    pub fn load(path: &Path) -> Result<Graph, GraphError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| GraphError::Read { path: path.to_path_buf(), source })?;
        Graph::parse(path, &text)
    }

    /// Parses and checks graph file text; `path` is where it lives (entrypoints resolve there).
    pub fn parse(path: &Path, text: &str) -> Result<Graph, GraphError> {
        let file_err = |message: String| GraphError::File { path: path.to_path_buf(), message };
        let file: FileToml = toml::from_str(text).map_err(|e| file_err(toml_message(&e, text)))?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        let label = match file.graph.and_then(|g| g.label) {
            Some(l) if l.trim().is_empty() => {
                return Err(file_err("key 'graph.label' is empty".into()));
            }
            Some(l) => l,
            None => dir
                .file_name()
                .map_or_else(|| "graph".to_string(), |n| n.to_string_lossy().into_owned()),
        };
        if file.jobs.is_empty() {
            return Err(file_err("no [[jobs]] defined; add at least one job".into()));
        }
        let default_jobs = match file.defaults.and_then(|d| d.jobs) {
            None => None,
            Some(toml::Value::Integer(n)) if (1..=i64::from(u16::MAX)).contains(&n) => {
                Some(n as u32)
            }
            Some(n) => {
                return Err(file_err(format!(
                    "key 'defaults.jobs' is {n}; it must be a whole number from 1 to {} (how many jobs run at once when --jobs is not given)",
                    u16::MAX
                )));
            }
        };
        let executor = executor_settings(file.executor).map_err(&file_err)?;
        let mut jobs: Vec<Job> = Vec::with_capacity(file.jobs.len());
        let mut patterns: Vec<String> = Vec::new();
        let mut pattern_job: Vec<usize> = Vec::new();
        for (i, value) in file.jobs.into_iter().enumerate() {
            let guess = value
                .get("label")
                .and_then(|l| l.as_str())
                .map_or_else(|| format!("#{}", i + 1), String::from);
            let job_err = |message: String| GraphError::Job {
                path: path.to_path_buf(),
                job: guess.clone(),
                message,
            };
            let j: JobToml =
                value.try_into().map_err(|e: toml::de::Error| job_err(job_key_message(&e)))?;
            if j.label.trim().is_empty() {
                return Err(job_err("key 'label' is empty".into()));
            }
            check_label(&j.label).map_err(&job_err)?;
            if jobs.iter().any(|o| o.label == j.label) {
                return Err(job_err(
                    "key 'label': duplicate label; job labels must be unique".into(),
                ));
            }
            if j.partition_patterns.is_empty() {
                return Err(job_err(
                    "key 'partition_patterns' is empty; give at least one pattern".into(),
                ));
            }
            for p in &j.partition_patterns {
                let anchored = format!("^(?:{p})$");
                if let Err(e) = regex::Regex::new(&anchored) {
                    let first = e.to_string().lines().last().unwrap_or("").trim().to_string();
                    return Err(job_err(format!(
                        "key 'partition_patterns': invalid regex {p:?}: {first}"
                    )));
                }
                patterns.push(anchored);
                pattern_job.push(jobs.len());
            }
            let entrypoint = dir.join(&j.entrypoint);
            check_entrypoint(&entrypoint, &j.entrypoint).map_err(&job_err)?;
            if j.timeout_seconds == Some(0) {
                return Err(job_err("key 'timeout_seconds' must be at least 1".into()));
            }
            if j.config_timeout_seconds == Some(0) {
                return Err(job_err("key 'config_timeout_seconds' must be at least 1".into()));
            }
            if j.max_concurrency == Some(0) {
                return Err(job_err("key 'max_concurrency' must be at least 1".into()));
            }
            for k in j.env.keys() {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    return Err(job_err(format!("key 'env': invalid variable name {k:?}")));
                }
            }
            let job_executor = match j.executor.as_deref() {
                None => None,
                Some(k) => Some(ExecutorKind::parse(k).ok_or_else(|| {
                    job_err(format!("key 'executor' is {k:?}; it must be \"local\" or \"slurm\""))
                })?),
            };
            if j.cpus == Some(0) {
                return Err(job_err("key 'cpus' must be at least 1".into()));
            }
            if j.memory_mb == Some(0) {
                return Err(job_err("key 'memory_mb' must be at least 1".into()));
            }
            let out_path = match &j.output_path {
                Some(t) => Some(output_path(t, &j.partition_patterns).map_err(&job_err)?),
                None => None,
            };
            let version = j.version.as_ref().map(job_version).transpose().map_err(&job_err)?;
            jobs.push(Job {
                output_path: out_path,
                version,
                label: j.label,
                entrypoint,
                entrypoint_text: j.entrypoint,
                patterns: j.partition_patterns,
                env: j.env,
                timeout: j.timeout_seconds.map(Duration::from_secs),
                config_timeout: j
                    .config_timeout_seconds
                    .map_or(CONFIG_TIMEOUT_DEFAULT, Duration::from_secs),
                retries: j.retries.unwrap_or(0),
                max_concurrency: j.max_concurrency,
                executor: job_executor,
                cpus: j.cpus,
                memory_mb: j.memory_mb,
            });
        }
        let set =
            RegexSet::new(&patterns).map_err(|e| file_err(format!("partition patterns: {e}")))?;
        Ok(Graph {
            path: path.to_path_buf(),
            dir,
            label,
            jobs,
            digest: digest(text.as_bytes()),
            default_jobs,
            executor,
            set,
            pattern_job,
        })
    }

    /// The index of the one job that owns `r`.
    pub fn owner(&self, r: &str) -> Result<usize, LookupError> {
        check_ref(r)?;
        let mut owners: Vec<usize> =
            self.set.matches(r).iter().map(|p| self.pattern_job[p]).collect();
        owners.dedup();
        match owners.as_slice() {
            [] => Err(LookupError::NoOwner(r.to_string())),
            [one] => Ok(*one),
            many => {
                let names: Vec<String> =
                    many.iter().map(|&j| format!("'{}'", self.jobs[j].label)).collect();
                Err(LookupError::Conflict(r.to_string(), names.join(" and ")))
            }
        }
    }

    /// The version to record with a run of job `label` (`Some("")` when the job sets none; `None`
    /// when the graph has no such job, so nothing is claimed).
    pub fn recorded_version(&self, label: &str) -> Option<String> {
        let j = self.job(label)?;
        Some(self.jobs[j].version.clone().unwrap_or_default())
    }

    /// Why `r`'s data is not where its job's `output_path` says: `output missing: PATH` (or why
    /// its path is refused). `None` when it is there, or the job has no `output_path`.
    pub fn missing_output(&self, job: usize, r: &str) -> Option<String> {
        match self.jobs.get(job)?.output_path.as_ref()?.of(r) {
            Ok(p) if self.dir.join(&p).exists() => None,
            Ok(p) => Some(format!("output missing: {p}")),
            Err(why) => Some(why),
        }
    }

    /// The job with this label.
    pub fn job(&self, label: &str) -> Option<usize> {
        self.jobs.iter().position(|j| j.label == label)
    }
}

fn job_key_message(e: &toml::de::Error) -> String {
    let m = e.message().trim();
    // serde names the field in backticks: "unknown field `x`, expected one of ..." or
    // "missing field `x`"; rephrase in the graph file's words.
    if let Some(rest) = m.strip_prefix("unknown field `")
        && let Some((key, expected)) = rest.split_once('`')
    {
        return format!("unknown key '{key}'{}", expected.replace("`", "'"));
    }
    if let Some(rest) = m.strip_prefix("missing field `")
        && let Some((key, _)) = rest.split_once('`')
    {
        return format!("missing key '{key}'");
    }
    format!("invalid value: {m}")
}

fn check_entrypoint(path: &Path, text: &str) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|_| {
        format!("key 'entrypoint': {text} does not exist (relative to the graph file's directory)")
    })?;
    if !meta.is_file() {
        return Err(format!("key 'entrypoint': {text} is not a file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("key 'entrypoint': {text} is not executable (run chmod +x {text})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn dir_with_job() -> std::io::Result<tempfile::TempDir> {
        let d = tempfile::tempdir()?;
        let job = d.path().join("job.sh");
        std::fs::write(&job, "#!/bin/sh\n")?;
        std::fs::set_permissions(&job, std::fs::Permissions::from_mode(0o755))?;
        std::fs::write(d.path().join("plain.sh"), "#!/bin/sh\n")?;
        Ok(d)
    }

    fn parse(d: &tempfile::TempDir, text: &str) -> Result<Graph, GraphError> {
        Graph::parse(&d.path().join(GRAPH_FILE), text)
    }

    #[test]
    fn lookup_matches_whole_refs_and_names_every_owner_on_a_conflict() -> TestResult {
        let d = dir_with_job()?;
        let g = parse(
            &d,
            r#"
[[jobs]]
label = "a"
entrypoint = "job.sh"
partition_patterns = ['data/(?P<d>\d+)', 'other/x']
[[jobs]]
label = "b"
entrypoint = "job.sh"
partition_patterns = ['data/1\d*']
"#,
        )?;
        assert_eq!(g.owner("data/2"), Ok(0));
        assert_eq!(g.owner("other/x"), Ok(0));
        assert!(
            matches!(g.owner("data/2/extra"), Err(LookupError::NoOwner(_))),
            "whole-match only"
        );
        assert!(matches!(g.owner("xdata/2"), Err(LookupError::NoOwner(_))));
        match g.owner("data/12") {
            Err(LookupError::Conflict(_, names)) => assert_eq!(names, "'a' and 'b'"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(g.owner("a b"), Err(LookupError::Invalid(..))));
        assert!(matches!(g.owner(""), Err(LookupError::Invalid(..))));
        assert_eq!(
            g.label,
            d.path()
                .canonicalize()?
                .file_name()
                .ok_or("the temporary directory has no file name")?
                .to_string_lossy()
        );
        Ok(())
    }

    #[test]
    fn bad_graph_files_name_the_file_the_job_and_the_key() -> TestResult {
        let d = dir_with_job()?;
        let cases: &[(&str, &str)] = &[
            (
                "[[jobs]]\nlabel='a'\nentrypoint='job.sh'\npartition_patterns=['x']\ncolor='red'\n",
                "job 'a': unknown key 'color'",
            ),
            (
                "[[jobs]]\nlabel='a'\npartition_patterns=['x']\n",
                "job 'a': missing key 'entrypoint'",
            ),
            (
                "[[jobs]]\nlabel='a'\nentrypoint='nope.sh'\npartition_patterns=['x']\n",
                "job 'a': key 'entrypoint': nope.sh does not exist",
            ),
            (
                "[[jobs]]\nlabel='a'\nentrypoint='plain.sh'\npartition_patterns=['x']\n",
                "not executable",
            ),
            (
                "[[jobs]]\nlabel='a'\nentrypoint='job.sh'\npartition_patterns=['(']\n",
                "job 'a': key 'partition_patterns': invalid regex",
            ),
            (
                "[[jobs]]\nlabel='a'\nentrypoint='job.sh'\npartition_patterns=['x']\n[[jobs]]\nlabel='a'\nentrypoint='job.sh'\npartition_patterns=['y']\n",
                "job 'a': key 'label': duplicate",
            ),
            (
                "[[jobs]]\nlabel='a'\nentrypoint='job.sh'\npartition_patterns=['x']\ntimeout_seconds=0\n",
                "timeout_seconds",
            ),
            (
                "[[jobs]]\nlabel='a'\nentrypoint='job.sh'\npartition_patterns=['x']\nconfig_timeout_seconds=0\n",
                "job 'a': key 'config_timeout_seconds' must be at least 1",
            ),
            (
                "[[jobs]]\nlabel='a'\nentrypoint='job.sh'\npartition_patterns=['x']\nconfig_timeout_seconds=-5\n",
                "job 'a': invalid value",
            ),
            (
                "[[jobs]]\nlabel='a'\nentrypoint='job.sh'\npartition_patterns='x'\n",
                "job 'a': invalid value",
            ),
            (
                "[[jobs]]\nlabel='a/b'\nentrypoint='job.sh'\npartition_patterns=['x']\n",
                "job 'a/b': key 'label'",
            ),
            (
                "[[jobs]]\nlabel='../../escaped'\nentrypoint='job.sh'\npartition_patterns=['x']\n",
                "job '../../escaped': key 'label'",
            ),
            (
                "[[jobs]]\nlabel='..'\nentrypoint='job.sh'\npartition_patterns=['x']\n",
                "job '..': key 'label'",
            ),
            (
                "[[jobs]]\nlabel='.'\nentrypoint='job.sh'\npartition_patterns=['x']\n",
                "job '.': key 'label'",
            ),
            (
                "[[jobs]]\nlabel=\"a\\u0000b\"\nentrypoint='job.sh'\npartition_patterns=['x']\n",
                "key 'label'",
            ),
            (
                "[[jobs]]\nlabel=\"a\\u202Eb\"\nentrypoint='job.sh'\npartition_patterns=['x']\n",
                "key 'label'",
            ),
            ("[graph]\nlabel='g'\nname='x'\n", "unknown field"),
            ("[[jobs]\n", "line 1"),
            ("", "no [[jobs]]"),
        ];
        for (text, want) in cases {
            let e = parse(&d, text).unwrap_err().to_string();
            assert!(e.contains(want), "for {text:?}: {e:?} should contain {want:?}");
            assert!(e.contains(GRAPH_FILE), "{e}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
        Ok(())
    }

    #[test]
    fn labels_that_are_safe_file_names_load() -> TestResult {
        let d = dir_with_job()?;
        for label in ["ingest_color_votes", "a.b-c", "v2", "-x", "Größe", "..a", "a b"] {
            let text = format!(
                "[[jobs]]\nlabel = {label:?}\nentrypoint = 'job.sh'\npartition_patterns = ['x']\n"
            );
            let g = parse(&d, &text)?;
            assert_eq!(g.jobs[0].label, label);
        }
        Ok(())
    }

    #[test]
    fn the_graph_file_is_found_in_a_parent_directory() -> TestResult {
        let d = dir_with_job()?;
        std::fs::write(d.path().join(GRAPH_FILE), "")?;
        let sub = d.path().join("a/b");
        std::fs::create_dir_all(&sub)?;
        assert_eq!(find(None, &sub)?, d.path().join(GRAPH_FILE));
        assert!(matches!(find(None, Path::new("/")), Err(GraphError::NotFound { .. })));
        Ok(())
    }
}

#[cfg(test)]
mod executor_keys {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn parse(text: &str) -> Result<Graph, String> {
        let d = tempfile::tempdir().map_err(|e| e.to_string())?;
        let job = d.path().join("job.sh");
        std::fs::write(&job, "#!/bin/sh\n").map_err(|e| e.to_string())?;
        std::fs::set_permissions(&job, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        Graph::parse(&d.path().join(GRAPH_FILE), text).map_err(|e| e.to_string())
    }

    const JOB: &str = "[[jobs]]\nlabel='a'\nentrypoint='job.sh'\npartition_patterns=['x']\n";

    #[test]
    fn executor_table_and_job_keys_are_read() -> Result<(), String> {
        let g = parse(&format!(
            "[executor]\nkind='slurm'\npartition='batch'\nextra_args=['--account=data']\n{JOB}executor='local'\ncpus=4\nmemory_mb=8192\n[[jobs]]\nlabel='b'\nentrypoint='job.sh'\npartition_patterns=['y']\n"
        ))?;
        assert_eq!(g.executor.kind, ExecutorKind::Slurm);
        assert_eq!(g.executor.partition.as_deref(), Some("batch"));
        assert_eq!(g.executor.extra_args, vec!["--account=data".to_string()]);
        assert_eq!(g.kind_of(&g.jobs[0]), ExecutorKind::Local);
        assert_eq!(g.kind_of(&g.jobs[1]), ExecutorKind::Slurm);
        assert_eq!((g.jobs[0].cpus, g.jobs[0].memory_mb), (Some(4), Some(8192)));
        assert!(g.uses(ExecutorKind::Slurm) && g.uses(ExecutorKind::Local));
        let plain = parse(JOB)?;
        assert_eq!(plain.executor, ExecutorSettings::default());
        assert!(!plain.uses(ExecutorKind::Slurm));
        Ok(())
    }

    #[test]
    fn bad_executor_keys_are_named() {
        for (text, want) in [
            (format!("[executor]\nkind='k8s'\n{JOB}"), "key 'executor.kind' is \"k8s\""),
            (format!("[executor]\nqueue='x'\n{JOB}"), "unknown field `queue`"),
            (format!("[executor]\npartition=''\n{JOB}"), "key 'executor.partition'"),
            (format!("[executor]\nextra_args=['account']\n{JOB}"), "key 'executor.extra_args'"),
            (format!("{JOB}executor='cloud'\n"), "job 'a': key 'executor' is \"cloud\""),
            (format!("{JOB}cpus=0\n"), "job 'a': key 'cpus' must be at least 1"),
            (format!("{JOB}memory_mb=0\n"), "job 'a': key 'memory_mb' must be at least 1"),
            (format!("{JOB}cpus=-1\n"), "job 'a'"),
        ] {
            match parse(&text) {
                Ok(_) => panic!("accepted: {text}"),
                Err(e) => assert!(e.contains(want), "{e:?} should contain {want:?}"),
            }
        }
    }
}
