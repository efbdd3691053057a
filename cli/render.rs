//! Rendering helpers: aligned tables, colours (on a terminal only), times, event summaries, and
//! stdout writing that treats a closed pipe as a clean exit (so `replay | head` is quiet).

use std::borrow::Cow;
use std::io::{IsTerminal, Write};

use databuild::proto::build_event::EventType;
use databuild::proto::{BuildEvent, BuildRequestStatus, JobStatus, PartitionStatus};
use databuild::query::Until;
use time::format_description::well_known::Rfc3339;

use crate::exit::CliError;

/// Writes one line to stdout; a closed pipe ends the process quietly with success.
pub fn out(line: &str) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = writeln!(o, "{line}")
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// Flushes stdout (for `--follow`).
pub fn flush() {
    if let Err(e) = std::io::stdout().flush()
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// Whether `c` must not reach a terminal raw: control characters (C0, DEL, C1), which can move
/// the cursor, retitle the window or hide text, and invisible or bidi characters, which make
/// text look like other text.
fn needs_escape(c: char, keep_tab: bool) -> bool {
    (c.is_control() && !(keep_tab && c == '\t')) || databuild::graph::is_invisible(c)
}

fn escape_with(s: &str, keep_tab: bool) -> Cow<'_, str> {
    // The common case (printable ASCII) is one pass over the bytes and no allocation.
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) || !s.chars().any(|c| needs_escape(c, keep_tab))
    {
        return Cow::Borrowed(s);
    }
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c, keep_tab) {
            o.extend(c.escape_default());
        } else {
            o.push(c);
        }
    }
    Cow::Owned(o)
}

/// `s` (a ref, label, message, config arg: anything users or jobs wrote) made safe for one line
/// of text output: control, invisible and bidi characters are shown escaped (`\u{1b}`, `\n`).
pub fn safe(s: &str) -> Cow<'_, str> {
    escape_with(s, false)
}

/// As [`safe`], but keeps tabs: for a line of a job's output.
pub fn safe_output(s: &str) -> Cow<'_, str> {
    escape_with(s, true)
}

/// A table cell of user or job text: escaped, with its visible width.
pub fn cell(s: &str) -> (String, usize) {
    let s = safe(s).into_owned();
    let n = s.chars().count();
    (s, n)
}

/// Whether to colour stdout.
pub fn color_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Colours a status word (only when `color`).
pub fn paint(color: bool, status: &str) -> String {
    if !color {
        return status.to_string();
    }
    let code = match status {
        "AVAILABLE" | "COMPLETED" => "32",
        "FAILED" => "31",
        "BUILDING" | "RUNNING" | "EXECUTING" | "PLANNING" => "33",
        "CANCELLED" => "35",
        "DELEGATED" | "SKIPPED" => "36",
        _ => "2",
    };
    format!("\x1b[{code}m{status}\x1b[0m")
}

/// The status word without its enum prefix.
pub fn short(name: &str) -> &str {
    databuild::query::short_status(name)
}

/// An aligned table: columns padded to their widest cell (the last one is not padded).
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<(String, usize)>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        let mut t = Table::default();
        t.rows.push(header.iter().map(|h| (h.to_string(), h.chars().count())).collect());
        t
    }

    /// Adds a row; `cells` may hold colour codes, so each cell's visible width is given.
    pub fn row(&mut self, cells: Vec<(String, usize)>) {
        self.rows.push(cells);
    }

    /// Adds a row of plain cells (escaped with [`safe`]).
    pub fn plain(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| cell(c)).collect());
    }

    pub fn print(&self) {
        let n = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut w = vec![0usize; n];
        for r in &self.rows {
            for (i, (_, len)) in r.iter().enumerate() {
                w[i] = w[i].max(*len);
            }
        }
        for r in &self.rows {
            let mut line = String::new();
            for (i, (cell, len)) in r.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < r.len() {
                    line.push_str(&" ".repeat(w[i] - len + 2));
                }
            }
            out(line.trim_end());
        }
    }
}

/// A coloured status cell with its visible width.
pub fn status_cell(color: bool, name: &str) -> (String, usize) {
    let s = short(name);
    (paint(color, s), s.len())
}

/// RFC 3339 (UTC, milliseconds) of a timestamp in nanoseconds.
pub fn time_ns(ns: i64) -> String {
    if ns == 0 {
        return "-".into();
    }
    const MILLIS: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| t.format(MILLIS).ok())
        .unwrap_or_else(|| ns.to_string())
}

/// RFC 3339 (UTC) of unix seconds.
pub fn time_s(s: i64) -> String {
    if s == 0 {
        return "-".into();
    }
    time::OffsetDateTime::from_unix_timestamp(s)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| s.to_string())
}

/// A duration for people: `850ms`, `12.3s`, `4m05s`.
pub fn duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// `SEQ` or an RFC 3339 `TIME`, for `--at` and `--until`.
pub fn parse_until(flag: &str, s: &str) -> Result<Until, CliError> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Until::Seq(n));
    }
    time::OffsetDateTime::parse(s, &Rfc3339)
        .map(|t| Until::Time(t.unix_timestamp_nanos().clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64))
        .map_err(|e| {
            CliError::bad_input(format!(
                "{flag} {s:?} is neither a sequence number nor an RFC 3339 time ({e}); e.g. {flag} 120 or {flag} 2025-01-01T12:00:00Z"
            ))
        })
}

/// Whether `text` matches `glob`: `*` any run of characters (including `/`), `?` one character.
/// A glob without either is an exact match.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let g: Vec<char> = glob.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut gi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == t[ti]) {
            gi += 1;
            ti += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some(gi);
            gi += 1;
            mark = ti;
        } else if let Some(s) = star {
            gi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while gi < g.len() && g[gi] == '*' {
        gi += 1;
    }
    gi == g.len()
}

fn enum_name<T: TryFrom<i32>>(v: i32, name: fn(&T) -> &'static str) -> String {
    T::try_from(v).map(|t| name(&t).to_string()).unwrap_or_else(|_| format!("UNKNOWN({v})"))
}

/// The kind column and the details of an event, for `replay` text (escaped with [`safe`]).
pub fn event_summary(ev: &BuildEvent) -> (&'static str, String) {
    let (kind, detail) = event_summary_raw(ev);
    (kind, safe(&detail).into_owned())
}

fn event_summary_raw(ev: &BuildEvent) -> (&'static str, String) {
    match &ev.event_type {
        Some(EventType::BuildRequestEvent(e)) => {
            let mut s =
                short(&enum_name::<BuildRequestStatus>(e.status, BuildRequestStatus::as_str_name))
                    .to_string();
            if !e.requested_partitions.is_empty() {
                let refs: Vec<&str> =
                    e.requested_partitions.iter().map(|p| p.str.as_str()).collect();
                s.push_str(&format!(" {}", refs.join(" ")));
            }
            if e.force {
                s.push_str(" (force)");
            }
            if !e.message.is_empty() {
                s.push_str(&format!(" - {}", e.message));
            }
            ("request", s)
        }
        Some(EventType::PartitionEvent(e)) => {
            let p = e.partition_ref.as_ref().map_or("", |p| p.str.as_str());
            let mut s = format!(
                "{p} {}",
                short(&enum_name::<PartitionStatus>(e.status, PartitionStatus::as_str_name))
            );
            if !e.job_run_id.is_empty() {
                s.push_str(&format!(" run={}", e.job_run_id));
            }
            if !e.message.is_empty() {
                s.push_str(&format!(" - {}", e.message));
            }
            ("partition", s)
        }
        Some(EventType::JobEvent(e)) => {
            let label = e.job_label.as_ref().map_or("", |l| l.label.as_str());
            let targets: Vec<&str> = e.target_partitions.iter().map(|p| p.str.as_str()).collect();
            let mut s = format!(
                "{label} {} run={} -> {}",
                short(&enum_name::<JobStatus>(e.status, JobStatus::as_str_name)),
                e.job_run_id,
                targets.join(" ")
            );
            if e.attempt > 1 {
                s.push_str(&format!(" (attempt {})", e.attempt));
            }
            if let Some(p) = &e.process {
                s.push_str(&format!(" pid={}", p.pid));
            }
            if !e.message.is_empty() {
                s.push_str(&format!(" - {}", e.message));
            }
            ("job", s)
        }
        Some(EventType::DelegationEvent(e)) => {
            let p = e.partition_ref.as_ref().map_or("", |p| p.str.as_str());
            (
                "delegation",
                format!("{p} -> request {} - {}", e.delegated_to_build_request_id, e.message),
            )
        }
        Some(EventType::JobGraphEvent(e)) => {
            let n = e.job_graph.as_ref().map_or(0, |g| g.nodes.len());
            ("plan", format!("{n} tasks"))
        }
        Some(EventType::EngineEvent(e)) => {
            let kind = databuild::proto::EngineEventKind::try_from(e.kind)
                .map(|k| k.as_str_name().trim_start_matches("ENGINE_").to_string())
                .unwrap_or_default();
            ("engine", format!("{kind} - {}", e.message))
        }
        None => ("unknown", String::new()),
    }
}

/// Serializes a value to one JSON line.
pub fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"cannot serialize: {e}\"}}"))
}

/// Escapes text for a Mermaid node label: quotes, and `&`, `<`, `>` (Mermaid renders labels as
/// HTML, so `a<b` would start a tag and `&lt;` would show as `<`).
pub fn mermaid_label(s: &str) -> String {
    safe(s)
        .replace('#', "#35;")
        .replace('&', "#amp;")
        .replace('"', "#quot;")
        .replace('<', "#lt;")
        .replace('>', "#gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn globs_match_like_the_contract_says() {
        assert!(glob_match("daily/*", "daily/2025-01-01/red"));
        assert!(glob_match("*red", "daily/2025-01-01/red"));
        assert!(glob_match("d?ily/*/red", "daily/x/red"));
        assert!(!glob_match("daily/?", "daily/10"));
        assert!(glob_match("exact/ref", "exact/ref"));
        assert!(!glob_match("exact/ref", "exact/ref2"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn text_from_users_and_jobs_is_shown_escaped() {
        assert!(matches!(safe("daily/2025-01-01/red"), Cow::Borrowed(_)));
        assert!(matches!(safe("Größe/ü"), Cow::Borrowed(_)), "printable Unicode is kept");
        assert_eq!(safe("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(safe("title\x1b]0;x\x07"), "title\\u{1b}]0;x\\u{7}");
        assert_eq!(safe("a\u{9b}31m"), "a\\u{9b}31m", "C1 CSI");
        assert_eq!(safe("a\u{202e}b\u{200b}"), "a\\u{202e}b\\u{200b}");
        assert_eq!(safe("two\nlines\tx"), "two\\nlines\\tx");
        assert_eq!(safe_output("col1\tcol2\r"), "col1\tcol2\\r");
        assert_eq!(cell("a\x1bb"), ("a\\u{1b}b".to_string(), 8));
    }

    #[test]
    fn seq_or_time() -> TestResult {
        assert_eq!(parse_until("--at", "12").map_err(|e| format!("{e:?}"))?, Until::Seq(12));
        assert_eq!(
            parse_until("--at", "1970-01-01T00:00:01Z").map_err(|e| format!("{e:?}"))?,
            Until::Time(1_000_000_000)
        );
        assert_eq!(
            parse_until("--at", "1970-01-01T01:00:01+01:00").map_err(|e| format!("{e:?}"))?,
            Until::Time(1_000_000_000)
        );
        assert!(parse_until("--at", "yesterday").is_err());
        Ok(())
    }
}
