//! Build progress: a live status line on a terminal (indicatif), plain lines otherwise. Progress
//! goes to stderr, so stdout carries only results.

use std::io::IsTerminal;
use std::time::Instant;

use databuild::engine::{Note, Observer};
use databuild::proto::JobStatus;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;

use crate::render;

#[derive(Default)]
struct Counts {
    running: std::collections::HashSet<String>,
    done: usize,
    failed: usize,
    skipped: usize,
    total: usize,
}

/// Prints build progress.
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    counts: Mutex<Counts>,
    started: Instant,
    verbose: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        let live =
            !quiet && std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let bar = live.then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            b
        });
        Progress {
            bar,
            quiet,
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

    fn line(&self, s: String) {
        if self.quiet {
            return;
        }
        // Labels, refs and job messages: shown escaped.
        let s = crate::render::safe(&s).into_owned();
        match &self.bar {
            Some(b) => b.println(s),
            None => eprintln!("{s}"),
        }
    }

    fn refresh(&self, c: &Counts) {
        if let Some(b) = &self.bar {
            b.set_message(format!(
                "{} running, {} done, {} failed, {} skipped of {} jobs  [{}]",
                c.running.len(),
                c.done,
                c.failed,
                c.skipped,
                c.total,
                render::duration(self.started.elapsed())
            ));
        }
    }

    /// Removes the live line before the final result is printed.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
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
                        self.line(l);
                    }
                }
                for (r, to) in &delegated {
                    self.line(format!(
                        "delegated {} to active build request {to}",
                        render::safe(r)
                    ));
                }
                c.total = tasks;
                c.skipped = skipped;
                let plural = |n: usize, one: &str, many: &str| {
                    format!("{n} {}", if n == 1 { one } else { many })
                };
                self.line(format!(
                    "planned {} to run, {} already available",
                    plural(tasks, "job", "jobs"),
                    plural(skipped, "partition", "partitions")
                ));
            }
            Note::Started { job, run, outputs: o, attempt } => {
                c.running.insert(run.clone());
                let again =
                    if attempt > 1 { format!(" (attempt {attempt})") } else { String::new() };
                self.line(format!("start  {job}  {}{again}  run {run}", outputs(&o)));
            }
            Note::Finished { job, run, outputs: o, status, message, duration, retrying } => {
                c.running.remove(&run);
                let word = match status {
                    JobStatus::JobCompleted => {
                        c.done += 1;
                        "done  "
                    }
                    JobStatus::JobCancelled => "cancel",
                    _ if retrying => "retry ",
                    _ => {
                        c.failed += 1;
                        "FAILED"
                    }
                };
                let mut s = format!(
                    "{word} {job}  {}  {}  run {run}",
                    outputs(&o),
                    render::duration(duration)
                );
                if !message.is_empty() {
                    s.push_str(&format!("  {message}"));
                }
                self.line(s);
            }
            Note::Cancelling { signal } => {
                let name = if signal == databuild::sys::SIGINT { "SIGINT" } else { "SIGTERM" };
                self.line(format!("{name}: cancelling the build (stopping running jobs; send it again to kill them now)"));
            }
            Note::Warning(w) => self.line(format!("warning: {w}")),
            // The error line says why, with the config's stderr (exit 2).
            Note::PlanFailed { .. } => {}
            Note::Done { .. } => {}
            _ => {}
        }
        self.refresh(&c);
    }
}
