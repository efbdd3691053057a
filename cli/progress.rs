//! Build progress, on stderr (stdout carries only results).
//!
//! On a terminal: a bar with done/total jobs, the elapsed time and an ETA, redrawn on a steady
//! tick (not only when a job starts or ends), and under it one line per running job with its own
//! timer (like cargo, nextest and Buck2). Per-event lines (start, done, FAILED) scroll above it.
//! Off a terminal: one plain line per event and nothing else. Either way a failed run's last
//! lines of output are shown where it failed, with the command that prints the rest, and a
//! summary line ends the build. Ids in per-event lines are shortened; `--format json` and
//! `builds` keep the full ones.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use databuild::engine::{Note, Observer};
use databuild::proto::JobStatus;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;

use crate::render;

/// Lines of a failed run's output shown where it failed.
pub const FAILED_TAIL_LINES: usize = 10;
/// Running jobs listed under the bar; the rest are counted.
const RUNNING_SHOWN: usize = 6;
/// How often the live view redraws without an event.
const TICK: Duration = Duration::from_millis(200);

/// A run id as per-event lines show it: its tail, as text tables do (see [`crate::refs::tail`]);
/// `databuild logs TAIL` finds the run.
pub fn short_id(id: &str) -> &str {
    crate::refs::tail(id)
}

/// Whether to colour stderr: a terminal, and `NO_COLOR` unset.
pub fn color_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// `text` in the SGR colour `code` when `color`.
fn paint(color: bool, code: &str, text: &str) -> String {
    if color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
}

struct Running {
    job: String,
    outputs: String,
    since: Instant,
    /// Its line under the bar (live view, the first [`RUNNING_SHOWN`] runs).
    bar: Option<ProgressBar>,
}

#[derive(Default)]
struct Counts {
    running: HashMap<String, Running>,
    /// Start order of the runs in `running` (to give a freed line to the oldest).
    order: Vec<String>,
    /// Jobs (tasks) planned, over all requests.
    total: usize,
    /// Jobs that ended for good (no retry follows).
    ended: usize,
    done: usize,
    failed: usize,
    cancelled: usize,
    /// Partitions skipped because they were AVAILABLE.
    skipped: usize,
    /// Runs that failed for good, full ids, in order.
    failed_runs: Vec<String>,
}

struct Live {
    multi: MultiProgress,
    main: ProgressBar,
}

/// Prints build progress.
pub struct Progress {
    live: Option<Live>,
    quiet: bool,
    color: bool,
    logs_dir: Option<PathBuf>,
    counts: Mutex<Counts>,
    started: Instant,
    verbose: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        let live = !quiet
            && std::io::stderr().is_terminal()
            && std::env::var("TERM").map_or(true, |t| t != "dumb");
        let target = live.then(ProgressDrawTarget::stderr);
        Progress::with_target(quiet, !quiet && color_stderr(), target)
    }

    /// A live view drawn to `target` (None: plain lines).
    fn with_target(quiet: bool, color: bool, target: Option<ProgressDrawTarget>) -> Progress {
        let live = target.map(|t| {
            let multi = MultiProgress::with_draw_target(t);
            let main = multi.add(ProgressBar::hidden());
            main.set_style(main_style(color, false));
            main.set_message("planning");
            main.enable_steady_tick(TICK);
            Live { multi, main }
        });
        Progress {
            live,
            quiet,
            color,
            logs_dir: None,
            counts: Mutex::new(Counts::default()),
            started: Instant::now(),
            verbose: false,
        }
    }

    /// With `-v`: also lists what planning dropped.
    pub fn verbose(mut self, verbose: bool) -> Progress {
        self.verbose = verbose;
        self
    }

    /// Where runs' output is kept: a failed run's last lines are shown from there.
    pub fn logs_dir(mut self, dir: PathBuf) -> Progress {
        self.logs_dir = Some(dir);
        self
    }

    /// Prints one line above the live view. `word` is a status word (coloured with `code` on a
    /// terminal); `rest` is escaped (labels, refs and job messages are shown escaped).
    fn line(&self, word: Option<(&str, &str)>, rest: &str) {
        if self.quiet {
            return;
        }
        let mut rest = render::safe(rest).into_owned();
        // On a terminal, a line wider than it would wrap under the live view: cut it.
        if self.live.is_some() {
            let width = console::Term::stderr().size().1 as usize;
            let room = width.saturating_sub(word.map_or(0, |(w, _)| w.chars().count() + 1));
            if room > 1 && rest.chars().count() > room {
                rest = rest.chars().take(room - 1).collect::<String>() + "…";
            }
        }
        let s = match word {
            Some((w, code)) => format!("{} {rest}", paint(self.color, code, w)),
            None => rest,
        };
        self.raw(s);
    }

    fn raw(&self, s: String) {
        match &self.live {
            Some(l) => {
                if l.multi.println(&s).is_err() {
                    eprintln!("{s}");
                }
            }
            None => eprintln!("{s}"),
        }
    }

    /// The runs that failed for good (full ids).
    pub fn failed_runs(&self) -> Vec<String> {
        self.counts.lock().failed_runs.clone()
    }

    /// Removes the live view and prints the summary line.
    pub fn finish(&self) {
        if let Some(l) = &self.live {
            let c = self.counts.lock();
            for r in c.running.values() {
                if let Some(b) = &r.bar {
                    b.finish_and_clear();
                }
            }
            drop(c);
            l.main.finish_and_clear();
            let _ = l.multi.clear();
        }
        if self.quiet {
            return;
        }
        let c = self.counts.lock();
        if c.total == 0 && c.skipped == 0 && c.ended == 0 {
            return;
        }
        eprintln!("{}", self.summary(&c));
    }

    /// "ran 5 jobs: 4 done, 1 failed; 3 partitions already available; 2.1s".
    fn summary(&self, c: &Counts) -> String {
        let mut parts = vec![paint(self.color, "32", &format!("{} done", c.done))];
        if c.failed > 0 {
            parts.push(paint(self.color, "31;1", &format!("{} failed", c.failed)));
        }
        if c.cancelled > 0 {
            parts.push(paint(self.color, "35", &format!("{} cancelled", c.cancelled)));
        }
        let not_run = c.total.saturating_sub(c.ended);
        if not_run > 0 {
            parts.push(format!("{not_run} not run"));
        }
        format!(
            "ran {}: {}; {} already available; {}",
            plural(c.ended, "job", "jobs"),
            parts.join(", "),
            plural(c.skipped, "partition", "partitions"),
            render::duration(self.started.elapsed())
        )
    }

    /// The bar's message: what is running beyond the listed lines, and failures so far.
    fn refresh(&self, c: &Counts) {
        let Some(l) = &self.live else { return };
        l.main.set_length(c.total as u64);
        if c.ended == 1 && c.ended as u64 != l.main.position() {
            l.main.set_style(main_style(self.color, true));
        }
        l.main.set_position(c.ended as u64);
        let mut msg = format!("{} running", c.running.len());
        let hidden = c.running.values().filter(|r| r.bar.is_none()).count();
        if hidden > 0 {
            msg.push_str(&format!(" ({hidden} not listed)"));
        }
        if c.failed > 0 {
            msg.push_str(&format!(
                ", {}",
                paint(self.color, "31", &format!("{} failed", c.failed))
            ));
        }
        l.main.set_message(msg);
    }

    /// Gives free lines under the bar to the oldest unlisted running jobs.
    fn list_running(&self, c: &mut Counts) {
        let Some(l) = &self.live else { return };
        let mut shown = c.running.values().filter(|r| r.bar.is_some()).count();
        let order = c.order.clone();
        for id in order {
            if shown >= RUNNING_SHOWN {
                break;
            }
            let Some(r) = c.running.get_mut(&id) else { continue };
            if r.bar.is_some() {
                continue;
            }
            // Hidden until the live view owns it: a bar drawn on its own would leave lines
            // behind that the view does not know about.
            let b = l.multi.add(ProgressBar::hidden().with_elapsed(r.since.elapsed()));
            b.set_style(running_style(self.color));
            b.set_message(fit(&format!("{}  {}", render::safe(&r.job), render::safe(&r.outputs))));
            b.enable_steady_tick(TICK);
            r.bar = Some(b);
            shown += 1;
        }
    }

    /// The last lines of a failed run's output (stderr, else stdout) and how to see the rest.
    fn failure_tail(&self, run: &str) {
        let Some(dir) = &self.logs_dir else { return };
        let paths = databuild::executor::output_paths(dir, run);
        let mut shown = None;
        for (name, p) in [("stderr", &paths.stderr), ("stdout", &paths.stdout)] {
            if let Ok(lines) = crate::cmd_audit::output_tail(p, FAILED_TAIL_LINES)
                && !lines.is_empty()
            {
                shown = Some((name, lines));
                break;
            }
        }
        let bar = paint(self.color, "2", "│");
        match shown {
            Some((name, lines)) => {
                self.raw(format!(
                    "    last {} of its {name}:",
                    plural(lines.len(), "line", "lines")
                ));
                for l in lines {
                    self.raw(format!("    {bar} {}", render::safe_output(&l)));
                }
                self.raw(format!("    all of it: databuild logs {run}"));
            }
            None => self.raw(format!("    no output; details: databuild logs {run}")),
        }
    }
}

/// A running job's line is cut to this many characters (a line as wide as the terminal would
/// wrap, and the live view would leave copies of itself behind).
const RUNNING_LINE_CHARS: usize = 66;

fn fit(s: &str) -> String {
    if s.chars().count() <= RUNNING_LINE_CHARS {
        return s.to_string();
    }
    let mut t: String = s.chars().take(RUNNING_LINE_CHARS - 1).collect();
    t.push('…');
    t
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn main_style(color: bool, eta: bool) -> ProgressStyle {
    let (spin, bar) =
        if color { ("{spinner:.cyan}", "{bar:28.cyan/blue}") } else { ("{spinner}", "{bar:28}") };
    let eta = if eta { "  ETA {eta}" } else { "" };
    ProgressStyle::with_template(&format!(
        "{spin} [{{elapsed_precise}}] {bar} {{pos}}/{{len}} jobs  {{msg}}{eta}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

fn running_style(color: bool) -> ProgressStyle {
    let t = if color {
        "  {spinner:.yellow} {elapsed:>4}  {msg}"
    } else {
        "  {spinner} {elapsed:>4}  {msg}"
    };
    ProgressStyle::with_template(t).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn outputs(o: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut s = o.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(" ");
    if o.len() > SHOWN {
        s.push_str(&format!(" (+{} more)", o.len() - SHOWN));
    }
    s
}

/// What planning dropped, one line per config (for `-v`).
pub fn dropped_lines(dropped: &[databuild::planner::Dropped]) -> Vec<String> {
    dropped
        .iter()
        .map(|d| {
            format!(
                "dropped a config of {} for {}: not asked for (or AVAILABLE), so not run",
                d.job,
                outputs(&d.outputs)
            )
        })
        .collect()
}

impl Observer for Progress {
    fn note(&self, note: Note) {
        let mut c = self.counts.lock();
        match note {
            Note::Planned { tasks, skipped, dropped, delegated, .. } => {
                if self.verbose {
                    for l in dropped_lines(&dropped) {
                        self.line(None, &l);
                    }
                }
                for (r, to) in &delegated {
                    self.line(None, &format!("delegated {r} to active build request {to}"));
                }
                c.total += tasks;
                c.skipped += skipped;
                self.line(
                    None,
                    &format!(
                        "planned {} to run, {} already available",
                        plural(tasks, "job", "jobs"),
                        plural(skipped, "partition", "partitions")
                    ),
                );
            }
            Note::Started { job, run, outputs: o, attempt } => {
                let again =
                    if attempt > 1 { format!(" (attempt {attempt})") } else { String::new() };
                let o = outputs(&o);
                self.line(
                    Some(("start ", "2")),
                    &format!("{job}  {o}{again}  run {}", short_id(&run)),
                );
                c.order.push(run.clone());
                c.running
                    .insert(run, Running { job, outputs: o, since: Instant::now(), bar: None });
                self.list_running(&mut c);
            }
            Note::Finished { job, run, outputs: o, status, message, duration, retrying } => {
                if let Some(r) = c.running.remove(&run)
                    && let Some(b) = r.bar
                {
                    b.finish_and_clear();
                    if let Some(l) = &self.live {
                        l.multi.remove(&b);
                    }
                }
                c.order.retain(|r| *r != run);
                if !retrying {
                    c.ended += 1;
                }
                let (word, code) = match status {
                    JobStatus::JobCompleted => {
                        c.done += 1;
                        ("done  ", "32")
                    }
                    JobStatus::JobCancelled => {
                        c.cancelled += 1;
                        ("cancel", "35")
                    }
                    _ if retrying => ("retry ", "33"),
                    _ => {
                        c.failed += 1;
                        c.failed_runs.push(run.clone());
                        ("FAILED", "31;1")
                    }
                };
                let mut s = format!(
                    "{job}  {}  {}  run {}  [{}/{}]",
                    outputs(&o),
                    render::duration(duration),
                    short_id(&run),
                    c.ended,
                    c.total
                );
                if !message.is_empty() {
                    s.push_str(&format!("  {message}"));
                }
                self.line(Some((word, code)), &s);
                if word == "FAILED" && !self.quiet {
                    self.failure_tail(&run);
                }
                self.list_running(&mut c);
            }
            Note::Cancelling { signal } => {
                let name = if signal == databuild::sys::SIGINT { "SIGINT" } else { "SIGTERM" };
                self.line(
                    None,
                    &format!("{name}: cancelling the build (stopping running jobs; send it again to kill them now)"),
                );
            }
            Note::Warning(w) => match w.strip_prefix("note: ") {
                Some(n) => self.line(Some(("note:", "36")), n),
                None => self.line(Some(("warning:", "33")), &w),
            },
            // The error line says why, with the config's stderr (exit 2).
            Note::PlanFailed { .. } => {}
            Note::Done { .. } => {}
            _ => {}
        }
        self.refresh(&c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A terminal that keeps what was drawn.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<String>>);

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            100
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(&format!("{s}\n"))
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.0.lock().push('\n');
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_live_view_ticks_between_events_and_lists_running_jobs_with_timers() {
        let screen = Screen::default();
        let p = Progress::with_target(
            false,
            false,
            Some(ProgressDrawTarget::term_like_with_hz(Box::new(screen.clone()), 20)),
        );
        p.note(Note::Planned {
            request: "r".into(),
            tasks: 2,
            skipped: 3,
            dropped: vec![],
            delegated: vec![],
        });
        p.note(Note::Started {
            job: "slow_job".into(),
            run: "0199aaaa-0000-7000-8000-00000000beef".into(),
            outputs: vec!["slow/1".into()],
            attempt: 1,
        });
        // No event for over a second: the running job's timer and the bar still move.
        std::thread::sleep(Duration::from_millis(1500));
        let drawn = screen.0.lock().clone();
        assert!(drawn.contains("0/2 jobs"), "N/M on the bar:\n{drawn}");
        assert!(drawn.contains("00:00:01"), "the bar's clock ticks without events:\n{drawn}");
        assert!(
            drawn.lines().any(|l| l.contains("1s") && l.contains("slow_job  slow/1")),
            "a line per running job with its own timer:\n{drawn}"
        );
        assert!(drawn.contains("run 0000beef"), "ids shortened to 8 characters:\n{drawn}");
        assert!(!drawn.contains("0199aaaa-0000"), "no full ids in per-event lines:\n{drawn}");
    }

    #[test]
    fn the_summary_counts_jobs_and_partitions_apart() {
        let p = Progress::with_target(false, false, None);
        p.note(Note::Planned {
            request: "r".into(),
            tasks: 1,
            skipped: 2,
            dropped: vec![],
            delegated: vec![],
        });
        let s = p.summary(&p.counts.lock());
        assert!(
            s.starts_with("ran 0 jobs: 0 done, 1 not run; 2 partitions already available"),
            "{s}"
        );
    }
}
