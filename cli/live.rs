//! Whether what the log calls open (a request EXECUTING, a partition BUILDING) is really under
//! way: only while a live engine holds the log's writer lock. After a `kill -9` nothing holds it,
//! and text views say "interrupted" instead of pretending the work still runs. JSON output is
//! left as the log has it (its shapes are fixed by the contract).

use std::cell::OnceCell;
use std::path::PathBuf;

use databuild::query::StatusRow;
use databuild::state::{Request, State, is_open};
use databuild_log::Fs;

use crate::context::Ctx;
use crate::render;

/// What text views show for open work that no engine is running.
pub const INTERRUPTED: &str = "interrupted (no engine running; `databuild recover` resumes it)";
const WORD: &str = "INTERRUPTED";

/// Whether a live process holds the writer lock of the log in `log_dir`. The check takes a
/// shared lock on a separate descriptor and drops it at once; an error counts as "held" (never
/// claim work is dead when unsure).
pub fn writer_alive(log_dir: &std::path::Path) -> bool {
    databuild_log::RealFs
        .lock_held(&log_dir.join(databuild_log::segment::LOCK_FILE))
        .unwrap_or(true)
}

/// Answers "is this open thing interrupted?" for one command, checking the lock at most once
/// (and only if something is open).
#[derive(Debug)]
pub struct Liveness {
    log_dir: PathBuf,
    /// False for a past state (`--at`): what was open then is shown as it was.
    now: bool,
    alive: OnceCell<bool>,
}

impl Liveness {
    pub fn new(ctx: &Ctx, now: bool) -> Liveness {
        Liveness { log_dir: ctx.log_dir.clone(), now, alive: OnceCell::new() }
    }

    fn dead(&self) -> bool {
        self.now && !*self.alive.get_or_init(|| writer_alive(&self.log_dir))
    }

    /// Whether a request is open but no engine runs it.
    pub fn request_interrupted(&self, r: &Request) -> bool {
        !r.is_terminal() && self.dead()
    }

    /// Whether any request is open with no engine running it.
    pub fn any_request_interrupted(&self, state: &State) -> bool {
        state.requests.values().any(|r| self.request_interrupted(r))
    }

    /// A request's STATUS cell.
    pub fn request_cell(&self, color: bool, r: &Request) -> (String, usize) {
        if self.request_interrupted(r) {
            (render::paint(color, WORD), WORD.len())
        } else {
            render::status_cell(color, r.status.as_str_name())
        }
    }

    /// A partition's STATUS and MESSAGE cells for `status`: open partitions of a request no
    /// engine runs are "interrupted"; a cancellation says whether the run had started.
    pub fn partition_cells(
        &self,
        state: &State,
        color: bool,
        row: &StatusRow,
    ) -> [(String, usize); 2] {
        let open_request =
            state.requests.get(row.build_request_id.as_str()).is_none_or(|r| !r.is_terminal());
        if is_open(row.status) && open_request && self.dead() {
            return [(render::paint(color, WORD), WORD.len()), render::cell(INTERRUPTED)];
        }
        let status = render::status_cell(color, row.status.as_str_name());
        let mut message = row.message.clone();
        if message == "cancelled" {
            let started =
                state.runs.get(row.job_run_id.as_str()).is_some_and(|r| r.running.is_some());
            message = if started {
                "cancelled while running".into()
            } else {
                "cancelled before it started".into()
            };
        }
        let message = if message.is_empty() { "-".to_string() } else { message };
        [status, render::cell(&message)]
    }
}
