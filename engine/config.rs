//! Running a job's `config` entrypoint and checking what it answers.
//!
//! `ENTRYPOINT config REF...` runs in the graph file's directory with the process environment plus
//! the job's graph `env` (and `DATABUILD_BUILD_REQUEST_ID` when building). Its stdout must be one
//! `JobConfigureResponse` in canonical proto3 JSON; unknown fields are an error (otherwise a
//! misspelt `dep_type` would silently read as QUERY). Refs are split across calls so that no
//! call's argv passes [`ARGV_BYTES_MAX`].

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::graph::{Graph, LookupError};
use crate::proto::{DepType, JobConfig, JobConfigureResponse};
use crate::sys;

/// Most bytes of refs passed to one `config` call: far below Linux's ARG_MAX (2 MiB with the
/// environment), and small enough that 100k refs make a few dozen calls, not thousands.
pub const ARGV_BYTES_MAX: usize = 256 << 10;
/// Lines of a job's stderr shown with a config error.
pub const STDERR_LINES_SHOWN: usize = 10;
/// Most bytes of a `config` call's stdout accepted (a plan of millions of partitions fits);
/// past it the call is stopped.
pub const CONFIG_STDOUT_BYTES_MAX: usize = 1 << 30;
/// Most bytes of a `config` call's stderr read; past it the call is stopped.
pub const CONFIG_STDERR_BYTES_MAX: usize = 64 << 20;
/// Bytes at the end of a `config` call's stderr held in memory (the lines shown come from it).
const STDERR_TAIL_BYTES: usize = 64 << 10;
/// How long the pipes may stay open after `config` exits (a process it started still holding
/// them) before what is left of its process group is killed.
pub const CONFIG_EXIT_GRACE: Duration = Duration::from_millis(200);

/// One `config` call: a job and the refs asked of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigCall {
    /// Index of the job in the graph.
    pub job: usize,
    /// The refs.
    pub refs: Vec<String>,
}

/// Why a `config` call failed or its answer was refused.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.headline())]
pub struct ConfigError {
    /// The job's label.
    pub job: String,
    /// The refs asked.
    pub refs: Vec<String>,
    /// What went wrong.
    pub kind: ConfigErrorKind,
    /// The last lines of the call's stderr.
    pub stderr_tail: Vec<String>,
    /// Where the call's stdout and stderr were kept (none for `analyze`).
    pub log: Option<ConfigLog>,
}

/// What went wrong with a `config` call.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The entrypoint could not be started.
    Spawn(std::io::Error),
    /// It exited non-zero (or was killed).
    Exit(String),
    /// Its stdout is not one valid JobConfigureResponse.
    Parse(String),
    /// The answer is well-formed but wrong (ownership, coverage, empty outputs, bad refs).
    Invalid(String),
    /// Its output passed a limit, so it was stopped.
    Limit(String),
    /// It ran longer than the job's `config_timeout_seconds`, so it was stopped.
    Timeout(Duration),
}

fn refs_text(refs: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut s = refs.iter().take(SHOWN).map(|r| format!("'{r}'")).collect::<Vec<_>>().join(", ");
    if refs.len() > SHOWN {
        s.push_str(&format!(" and {} more", refs.len() - SHOWN));
    }
    s
}

impl ConfigError {
    /// The files holding the call's captured stdout and stderr, if they were kept.
    pub fn files(&self) -> Option<(PathBuf, PathBuf)> {
        self.log.as_ref().map(ConfigLog::files)
    }

    fn headline(&self) -> String {
        let what = match &self.kind {
            ConfigErrorKind::Spawn(e) => format!("could not start the entrypoint: {e}"),
            ConfigErrorKind::Exit(how) => format!("config {how}"),
            ConfigErrorKind::Parse(m) => {
                format!("config output is not a JobConfigureResponse: {m}")
            }
            ConfigErrorKind::Invalid(m) => m.clone(),
            ConfigErrorKind::Limit(m) => format!("config {m}"),
            ConfigErrorKind::Timeout(d) => format!("config timed out after {} s", d.as_secs()),
        };
        format!("job '{}' config for {}: {what}", self.job, refs_text(&self.refs))
    }
}

/// Splits refs into calls of at most [`ARGV_BYTES_MAX`] bytes of arguments each.
pub fn chunk(job: usize, refs: Vec<String>) -> Vec<ConfigCall> {
    let mut calls = Vec::new();
    let mut cur: Vec<String> = Vec::new();
    let mut bytes = 0;
    for r in refs {
        let n = r.len() + 1;
        if !cur.is_empty() && bytes + n > ARGV_BYTES_MAX {
            calls.push(ConfigCall { job, refs: std::mem::take(&mut cur) });
            bytes = 0;
        }
        bytes += n;
        cur.push(r);
    }
    if !cur.is_empty() {
        calls.push(ConfigCall { job, refs: cur });
    }
    calls
}

/// What a `config` call answered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Configured {
    /// The configs.
    pub configs: Vec<JobConfig>,
    /// Inputs written without a `depType` (so QUERY, proto3's default): (index of the config in
    /// `configs`, the input's ref). The planner warns of those a job of the graph would build.
    pub implicit_query: Vec<(usize, String)>,
}

impl From<Vec<JobConfig>> for Configured {
    fn from(configs: Vec<JobConfig>) -> Configured {
        Configured { configs, implicit_query: Vec::new() }
    }
}

/// A complete, minimal answer, shown with shape errors.
pub const EXAMPLE_ANSWER: &str = r#"{"configs":[{"outputs":[{"str":"daily/2025-01-01"}],"inputs":[{"depType":"MATERIALIZE","partitionRef":{"str":"raw/2025-01-01"}}],"args":["2025-01-01"],"env":{"K":"V"}}]}"#;

/// Parses a `config` call's stdout: exactly one JSON object, canonical proto3 JSON (camelCase or
/// snake_case names, enum names or numbers), unknown fields refused.
pub fn parse_response(stdout: &[u8]) -> Result<JobConfigureResponse, String> {
    parse_answer(stdout).map(|a| JobConfigureResponse { configs: a.configs })
}

/// [`parse_response`], also telling which inputs had no `depType`. A wrong shape is named by
/// its position (`configs[0].outputs[1]`) and what was expected there.
pub fn parse_answer(stdout: &[u8]) -> Result<Configured, String> {
    let text = std::str::from_utf8(stdout).map_err(|_| "stdout is not UTF-8".to_string())?;
    if text.trim().is_empty() {
        return Err(
            "stdout is empty (it must be one JSON object; print logs to stderr)".to_string()
        );
    }
    if !text.trim_start().starts_with('{') {
        let first: String =
            text.trim_start().lines().next().unwrap_or("").chars().take(60).collect();
        return Err(format!(
            "stdout is not a JSON object: it starts with {first:?} (print only the JSON answer on stdout, logs to stderr)"
        ));
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        format!("stdout is not one valid JSON object: {e} (print only the JSON answer on stdout, logs to stderr)")
    })?;
    shape::answer(&value)?;
    let resp = serde_json::from_str::<JobConfigureResponse>(text).map_err(|e| e.to_string())?;
    let mut implicit_query = Vec::new();
    let configs = value.get("configs").and_then(serde_json::Value::as_array);
    for (i, c) in configs.into_iter().flatten().enumerate() {
        let inputs = c.get("inputs").and_then(serde_json::Value::as_array);
        for d in inputs.into_iter().flatten() {
            let dep = d.get("depType").or_else(|| d.get("dep_type"));
            if dep.is_none_or(serde_json::Value::is_null) {
                let r = d.get("partitionRef").or_else(|| d.get("partition_ref"));
                if let Some(r) = r.and_then(|r| r.get("str")).and_then(serde_json::Value::as_str) {
                    implicit_query.push((i, r.to_string()));
                }
            }
        }
    }
    Ok(Configured { configs: resp.configs, implicit_query })
}

/// Checks the shape of a `JobConfigureResponse` as JSON, naming the first place that is wrong.
mod shape {
    use serde_json::{Map, Value};

    type R = Result<(), String>;

    fn found(v: &Value) -> String {
        match v {
            Value::Null => "null".into(),
            Value::Bool(b) => format!("{b}"),
            Value::Number(n) => format!("the number {n}"),
            Value::String(s) if s.chars().count() > 40 => {
                format!("the string {:?}…", s.chars().take(40).collect::<String>())
            }
            Value::String(s) => format!("the string {s:?}"),
            Value::Array(_) => "an array".into(),
            Value::Object(_) => "an object".into(),
        }
    }

    fn expected(path: &str, what: &str, v: &Value) -> String {
        format!("{path}: expected {what}, found {}", found(v))
    }

    fn object<'v>(path: &str, what: &str, v: &'v Value) -> Result<&'v Map<String, Value>, String> {
        v.as_object().ok_or_else(|| expected(path, what, v))
    }

    /// Calls `each` on every element of an array (null reads as empty, as in proto3 JSON).
    fn array(path: &str, what: &str, v: &Value, mut each: impl FnMut(String, &Value) -> R) -> R {
        match v {
            Value::Null => Ok(()),
            Value::Array(items) => {
                for (i, x) in items.iter().enumerate() {
                    each(format!("{path}[{i}]"), x)?;
                }
                Ok(())
            }
            _ => Err(expected(path, &format!("an array of {what}"), v)),
        }
    }

    fn unknown(path: &str, key: &str, known: &str) -> String {
        format!("{path}: unknown field {key:?} (the fields are {known})")
    }

    fn string(path: &str, v: &Value) -> R {
        if v.is_string() || v.is_null() { Ok(()) } else { Err(expected(path, "a string", v)) }
    }

    fn partition_ref(path: &str, v: &Value) -> R {
        let what = r#"a partition ref object like {"str":"daily/2025-01-01"}"#;
        for (k, x) in object(path, what, v)? {
            match k.as_str() {
                "str" => string(&format!("{path}.str"), x)?,
                _ => return Err(unknown(path, k, "str")),
            }
        }
        Ok(())
    }

    fn input(path: &str, v: &Value) -> R {
        let what = r#"an input object like {"depType":"MATERIALIZE","partitionRef":{"str":"raw/2025-01-01"}}"#;
        for (k, x) in object(path, what, v)? {
            match k.as_str() {
                "depType" | "dep_type" => match x {
                    Value::Null => {}
                    Value::String(s) if s == "MATERIALIZE" || s == "QUERY" => {}
                    Value::Number(n) if n.as_u64().is_some_and(|n| n <= 1) => {}
                    _ => {
                        return Err(expected(
                            &format!("{path}.{k}"),
                            r#""MATERIALIZE" (built first) or "QUERY" (recorded only)"#,
                            x,
                        ));
                    }
                },
                "partitionRef" | "partition_ref" => partition_ref(&format!("{path}.{k}"), x)?,
                _ => return Err(unknown(path, k, "depType, partitionRef")),
            }
        }
        Ok(())
    }

    fn config(path: &str, v: &Value) -> R {
        let what = r#"a config object like {"outputs":[{"str":"daily/2025-01-01"}],"inputs":[],"args":[],"env":{}}"#;
        for (k, x) in object(path, what, v)? {
            let at = format!("{path}.{k}");
            match k.as_str() {
                "outputs" => array(&at, "partition refs", x, |p, o| partition_ref(&p, o))?,
                "inputs" => array(&at, "inputs", x, |p, d| input(&p, d))?,
                "args" => array(&at, "strings", x, |p, a| string(&p, a))?,
                "env" => match x {
                    Value::Null => {}
                    Value::Object(m) => {
                        for (name, val) in m {
                            string(&format!("{at}.{name}"), val)?;
                        }
                    }
                    _ => return Err(expected(&at, r#"an object of strings like {"K":"V"}"#, x)),
                },
                _ => return Err(unknown(path, k, "outputs, inputs, args, env")),
            }
        }
        Ok(())
    }

    /// The whole answer.
    pub(super) fn answer(v: &Value) -> R {
        for (k, x) in object("the answer", r#"an object like {"configs":[...]}"#, v)? {
            match k.as_str() {
                "configs" => array("configs", "configs", x, |p, c| config(&p, c))?,
                _ => return Err(unknown("the answer", k, "configs")),
            }
        }
        Ok(())
    }
}

/// Checks an answer against the graph and the refs asked: every config has outputs, every output
/// and input is a valid ref, every output is owned by this job, and the outputs cover the refs.
pub fn validate(
    graph: &Graph,
    call: &ConfigCall,
    resp: &JobConfigureResponse,
) -> Result<(), String> {
    let job = &graph.jobs[call.job].label;
    if resp.configs.is_empty() {
        return Err("returned no configs".to_string());
    }
    let mut covered = std::collections::HashSet::new();
    for (i, c) in resp.configs.iter().enumerate() {
        if c.outputs.is_empty() {
            return Err(format!("config #{} has no outputs", i + 1));
        }
        for o in &c.outputs {
            match graph.owner(&o.str) {
                Ok(j) if j == call.job => {}
                Ok(j) => {
                    return Err(format!(
                        "config #{} output '{}' is owned by job '{}', not '{job}'",
                        i + 1,
                        o.str,
                        graph.jobs[j].label
                    ));
                }
                Err(LookupError::Invalid(r, why)) => {
                    return Err(format!("config #{} has invalid output ref {r:?}: {why}", i + 1));
                }
                Err(e) => return Err(format!("config #{} output: {e}", i + 1)),
            }
            covered.insert(o.str.as_str());
        }
        for d in &c.inputs {
            let Some(p) = &d.partition_ref else {
                return Err(format!("config #{} has an input without partitionRef", i + 1));
            };
            if let Err(LookupError::Invalid(r, why)) = crate::graph::check_ref(&p.str) {
                return Err(format!("config #{} has invalid input ref {r:?}: {why}", i + 1));
            }
            if DepType::try_from(d.dep_type).is_err() {
                return Err(format!(
                    "config #{} input '{}' has unknown depType {}",
                    i + 1,
                    p.str,
                    d.dep_type
                ));
            }
        }
        for k in c.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(format!("config #{} has invalid env name {k:?}", i + 1));
            }
        }
        check_exec_limits(c).map_err(|why| format!("config #{} cannot be run: {why}", i + 1))?;
    }
    if let Some(missing) = call.refs.iter().find(|r| !covered.contains(r.as_str())) {
        return Err(format!("no config produces '{missing}', which was asked for"));
    }
    Ok(())
}

/// Linux refuses to start a program with any one argument or environment string longer than
/// this (MAX_ARG_STRLEN, 32 pages), whatever ARG_MAX says.
pub const EXEC_STRING_BYTES_MAX: usize = 128 << 10;
/// Most bytes of arguments and environment a config may add to its `exec`: ARG_MAX is a quarter
/// of the stack limit (2 MiB by default), and the process environment needs room too.
pub const EXEC_TOTAL_BYTES_MAX: usize = 1 << 20;

/// Checks, at planning, that `exec` of this config can be started: `DATABUILD_OUTPUTS` (every
/// output, space-separated), each argument and each environment entry within the kernel's
/// per-string limit, and all of them within a total that leaves room for the process's own
/// environment. Otherwise the run would fail at spawn time with an error about "argument list".
pub fn check_exec_limits(c: &JobConfig) -> Result<(), String> {
    let outputs: usize =
        c.outputs.iter().map(|o| o.str.len() + 1).sum::<usize>() + "DATABUILD_OUTPUTS=".len();
    if outputs > EXEC_STRING_BYTES_MAX {
        return Err(format!(
            "its {} outputs make DATABUILD_OUTPUTS {} KiB, over the kernel's limit of {} KiB for one environment string; split it into configs with fewer outputs",
            c.outputs.len(),
            outputs >> 10,
            EXEC_STRING_BYTES_MAX >> 10
        ));
    }
    let mut total = outputs;
    for (n, a) in c.args.iter().enumerate() {
        if a.len() + 1 > EXEC_STRING_BYTES_MAX {
            return Err(format!(
                "argument {} is {} KiB, over the kernel's limit of {} KiB for one argument",
                n + 1,
                a.len() >> 10,
                EXEC_STRING_BYTES_MAX >> 10
            ));
        }
        total += a.len() + 1;
    }
    for (k, v) in &c.env {
        let n = k.len() + v.len() + 2;
        if n > EXEC_STRING_BYTES_MAX {
            return Err(format!(
                "env {k} is {} KiB, over the kernel's limit of {} KiB for one environment string",
                n >> 10,
                EXEC_STRING_BYTES_MAX >> 10
            ));
        }
        total += n;
    }
    if total > EXEC_TOTAL_BYTES_MAX {
        return Err(format!(
            "its arguments, env and DATABUILD_OUTPUTS add up to {} KiB, over the {} KiB databuild allows (the kernel's ARG_MAX must also hold the process environment); pass large data through files",
            total >> 10,
            EXEC_TOTAL_BYTES_MAX >> 10
        ));
    }
    Ok(())
}

/// Where a `config` call's output is kept.
#[derive(Clone, Debug)]
pub struct ConfigLog {
    /// Directory for this request's config calls.
    pub dir: PathBuf,
    /// File stem for this call (`<job>-<n>`).
    pub stem: String,
}

impl ConfigLog {
    /// `<dir>/<stem>.stdout` and `<dir>/<stem>.stderr`.
    pub fn files(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{}.stdout", self.stem)),
            self.dir.join(format!("{}.stderr", self.stem)),
        )
    }
}

/// Runs one `config` call and checks its answer.
///
/// The call runs in its own process group. Its output is read until the leader exits and both
/// pipes close; a process it left behind that holds a pipe gets [`CONFIG_EXIT_GRACE`], then the
/// whole group is killed: nothing a `config` started outlives the call. The group is also killed
/// when stdout passes [`CONFIG_STDOUT_BYTES_MAX`], stderr passes [`CONFIG_STDERR_BYTES_MAX`], or
/// the job's `config_timeout_seconds` pass, and when the call is dropped. Only the end of stderr
/// is held in memory; all of it (to the limit) goes to the config log when one is given.
pub async fn run(
    graph: &Graph,
    call: &ConfigCall,
    build_request_id: Option<&str>,
    log: Option<&ConfigLog>,
) -> Result<Configured, ConfigError> {
    let job = &graph.jobs[call.job];
    let fail = |kind: ConfigErrorKind, stderr: &[u8]| ConfigError {
        job: job.label.clone(),
        refs: call.refs.clone(),
        kind,
        stderr_tail: tail_lines(stderr, STDERR_LINES_SHOWN),
        log: log.cloned(),
    };
    let mut cmd = tokio::process::Command::new(&job.entrypoint);
    cmd.arg("config")
        .args(&call.refs)
        .current_dir(&graph.dir)
        .envs(&job.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(id) = build_request_id {
        cmd.env("DATABUILD_BUILD_REQUEST_ID", id);
    }
    let stderr_file = log.and_then(|l| {
        std::fs::create_dir_all(&l.dir).ok()?;
        std::fs::File::create(l.dir.join(format!("{}.stderr", l.stem))).ok()
    });
    let mut child = cmd.spawn().map_err(|e| {
        // A file that exists but cannot be started says why (a CRLF `#!` line, a missing
        // interpreter), not just "No such file or directory".
        let e = match e.raw_os_error() {
            Some(errno) => {
                std::io::Error::new(e.kind(), sys::spawn_error_text(&job.entrypoint, errno))
            }
            None => e,
        };
        fail(ConfigErrorKind::Spawn(e), b"")
    })?;
    // Kills the group on every way out of this function, a dropped future included.
    let group = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0));
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(fail(
            ConfigErrorKind::Spawn(std::io::Error::other("no stdout/stderr pipes")),
            b"",
        ));
    };
    let out_fut = read_stdout(stdout, CONFIG_STDOUT_BYTES_MAX);
    let err_fut = read_stderr(stderr, CONFIG_STDERR_BYTES_MAX, stderr_file);
    let timeout = tokio::time::sleep(job.config_timeout);
    let grace = tokio::time::sleep(Duration::MAX);
    tokio::pin!(out_fut, err_fut, timeout, grace);
    let mut status = None;
    let mut out_res: Option<(Vec<u8>, ReadEnd)> = None;
    let mut err_res: Option<(Vec<u8>, ReadEnd)> = None;
    let stop = loop {
        if status.is_some() && out_res.is_some() && err_res.is_some() {
            break None;
        }
        tokio::select! {
            s = child.wait(), if status.is_none() => {
                status = Some(s);
                grace.as_mut().reset(tokio::time::Instant::now() + CONFIG_EXIT_GRACE);
            }
            r = &mut out_fut, if out_res.is_none() => {
                let limit = matches!(r.1, ReadEnd::Limit);
                out_res = Some(r);
                if limit {
                    break Some(Stop::StdoutLimit);
                }
            }
            r = &mut err_fut, if err_res.is_none() => {
                let limit = matches!(r.1, ReadEnd::Limit);
                err_res = Some(r);
                if limit {
                    break Some(Stop::StderrLimit);
                }
            }
            () = &mut timeout => break Some(Stop::Timeout),
            // The leader is gone but something it started still holds a pipe.
            () = &mut grace, if status.is_some() => break None,
        }
    };
    group.kill();
    let _ = child.start_kill();
    // With the group gone the pipes close; a process that left the group (setsid) could hold
    // them open, so the rest of the output is awaited only briefly.
    let drain = async {
        if out_res.is_none() {
            out_res = Some((&mut out_fut).await);
        }
        if err_res.is_none() {
            err_res = Some((&mut err_fut).await);
        }
    };
    let _ = tokio::time::timeout(CONFIG_EXIT_GRACE, drain).await;
    let status = match status {
        Some(s) => s,
        None => child.wait().await,
    };
    let (out, out_end) = out_res.unwrap_or_else(|| (Vec::new(), ReadEnd::Eof));
    let (err, err_end) = err_res.unwrap_or_else(|| (Vec::new(), ReadEnd::Eof));
    if let Some(l) = log {
        let _ = std::fs::create_dir_all(&l.dir);
        let kept = if matches!(stop, Some(Stop::StdoutLimit)) {
            // Its start shows what it was printing; a GiB on disk would not help.
            &out[..out.len().min(STDERR_TAIL_BYTES)]
        } else {
            &out[..]
        };
        let _ = std::fs::write(l.dir.join(format!("{}.stdout", l.stem)), kept);
    }
    match stop {
        Some(Stop::Timeout) => {
            return Err(fail(ConfigErrorKind::Timeout(job.config_timeout), &err));
        }
        Some(Stop::StdoutLimit) => {
            return Err(fail(
                ConfigErrorKind::Limit(format!(
                    "stdout passed {}; stopped it",
                    bytes_text(CONFIG_STDOUT_BYTES_MAX)
                )),
                &err,
            ));
        }
        Some(Stop::StderrLimit) => {
            return Err(fail(
                ConfigErrorKind::Limit(format!(
                    "stderr passed {}; stopped it",
                    bytes_text(CONFIG_STDERR_BYTES_MAX)
                )),
                &err,
            ));
        }
        None => {}
    }
    let status = status.map_err(|e| fail(ConfigErrorKind::Spawn(e), &err))?;
    for end in [out_end, err_end] {
        if let ReadEnd::Io(e) = end {
            return Err(fail(ConfigErrorKind::Spawn(e), &err));
        }
    }
    if !status.success() {
        let how = match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
            (Some(c @ (126 | 127)), _) => match sys::diagnose_entrypoint(&job.entrypoint) {
                Some(why) => format!("exited with code {c}: {why}"),
                None => format!("exited with code {c}"),
            },
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("was killed by signal {s}"),
            _ => "failed".to_string(),
        };
        return Err(fail(ConfigErrorKind::Exit(how), &err));
    }
    let answer = parse_answer(&out).map_err(|m| fail(ConfigErrorKind::Parse(m), &err))?;
    let resp = JobConfigureResponse { configs: answer.configs };
    validate(graph, call, &resp).map_err(|m| fail(ConfigErrorKind::Invalid(m), &err))?;
    Ok(Configured { configs: resp.configs, implicit_query: answer.implicit_query })
}

/// Why reading a `config` call stopped before it ended on its own.
enum Stop {
    StdoutLimit,
    StderrLimit,
    Timeout,
}

/// How reading a pipe ended.
#[derive(Debug)]
enum ReadEnd {
    Eof,
    Limit,
    Io(std::io::Error),
}

/// Kills a `config` call's process group when dropped (or asked to). A pgid of 0 is never
/// signalled.
struct GroupGuard(i32);

impl GroupGuard {
    fn kill(&self) {
        if self.0 > 1 {
            let _ = sys::signal_group(self.0, sys::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `1 GiB`, `64 MiB`, or bytes.
fn bytes_text(n: usize) -> String {
    if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
        format!("{} GiB", n >> 30)
    } else if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// Reads stdout to its end, or until it passes `limit` bytes.
async fn read_stdout(mut r: impl AsyncRead + Unpin, limit: usize) -> (Vec<u8>, ReadEnd) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => return (out, ReadEnd::Eof),
            Ok(n) if out.len() + n > limit => return (out, ReadEnd::Limit),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (out, ReadEnd::Io(e)),
        }
    }
}

/// Reads stderr to its end, or until it passes `limit` bytes, copying it to `file` (if any) and
/// keeping only its last [`STDERR_TAIL_BYTES`] (from a line start where there is one).
async fn read_stderr(
    mut r: impl AsyncRead + Unpin,
    limit: usize,
    mut file: Option<std::fs::File>,
) -> (Vec<u8>, ReadEnd) {
    use std::io::Write;
    let mut tail: Vec<u8> = Vec::new();
    let mut total = 0usize;
    let mut cut = false;
    let mut buf = vec![0u8; 64 << 10];
    let end = loop {
        match r.read(&mut buf).await {
            Ok(0) => break ReadEnd::Eof,
            Ok(n) => {
                let n = n.min(limit.saturating_sub(total));
                total += n;
                if let Some(f) = &mut file
                    && f.write_all(&buf[..n]).is_err()
                {
                    file = None;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * STDERR_TAIL_BYTES {
                    tail.drain(..tail.len() - STDERR_TAIL_BYTES);
                    cut = true;
                }
                if total >= limit {
                    break ReadEnd::Limit;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break ReadEnd::Io(e),
        }
    };
    if cut && let Some(nl) = tail.iter().position(|&b| b == b'\n') {
        tail.drain(..=nl);
    }
    (tail, end)
}

/// The last `n` non-empty lines of `bytes`.
pub fn tail_lines(bytes: &[u8], n: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| l.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn the_contract_example_parses_in_both_spellings() -> TestResult {
        let camel = br#"{"configs":[{"outputs":[{"str":"daily_votes/2025-01-01"}],"inputs":[{"depType":"MATERIALIZE","partitionRef":{"str":"daily_color_votes/2025-01-01/red"}}],"args":["2025-01-01"],"env":{"K":"V"}}]}"#;
        let snake = br#"{"configs":[{"outputs":[{"str":"daily_votes/2025-01-01"}],"inputs":[{"dep_type":1,"partition_ref":{"str":"daily_color_votes/2025-01-01/red"}}],"args":["2025-01-01"],"env":{"K":"V"}}]}"#;
        let a = parse_response(camel)?;
        let b = parse_response(snake)?;
        assert_eq!(a, b);
        assert_eq!(a.configs[0].inputs[0].dep_type, DepType::Materialize as i32);
        assert_eq!(a.configs[0].env["K"], "V");
        Ok(())
    }

    #[test]
    fn unknown_fields_and_non_objects_are_refused() {
        assert!(parse_response(br#"{"configs":[{"outputs":[],"dep_type_code":1}]}"#).is_err());
        assert!(parse_response(br#"{"configs":[]} trailing"#).is_err());
        assert!(parse_response(b"[]").is_err());
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"\xff").is_err());
    }

    #[test]
    fn a_config_whose_exec_the_kernel_would_refuse_is_refused_at_planning() {
        let outs = |n: usize| -> Vec<crate::proto::PartitionRef> {
            (0..n).map(|i| crate::proto::PartitionRef { str: format!("p/{i:08}") }).collect()
        };
        let ok = JobConfig { outputs: outs(1000), ..JobConfig::default() };
        assert!(check_exec_limits(&ok).is_ok());
        let many = JobConfig { outputs: outs(15_000), ..JobConfig::default() };
        let why = check_exec_limits(&many).unwrap_err();
        assert!(why.contains("DATABUILD_OUTPUTS") && why.contains("128 KiB"), "{why}");
        let long_arg =
            JobConfig { outputs: outs(1), args: vec!["x".repeat(200_000)], ..JobConfig::default() };
        assert!(check_exec_limits(&long_arg).unwrap_err().contains("argument 1"));
        let total = JobConfig {
            outputs: outs(1),
            args: (0..20).map(|_| "y".repeat(100_000)).collect(),
            ..JobConfig::default()
        };
        assert!(check_exec_limits(&total).unwrap_err().contains("add up to"));
    }

    #[test]
    fn chunking_bounds_argv_and_keeps_every_ref_once() {
        let refs: Vec<String> =
            (0..50_000).map(|i| format!("votes/2025-01-01/color-{i:08}")).collect();
        let calls = chunk(0, refs.clone());
        assert!(calls.len() > 1);
        assert!(
            calls
                .iter()
                .all(|c| c.refs.iter().map(|r| r.len() + 1).sum::<usize>() <= ARGV_BYTES_MAX)
        );
        let back: Vec<String> = calls.into_iter().flat_map(|c| c.refs).collect();
        assert_eq!(back, refs);
    }
}
