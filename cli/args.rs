//! What the user typed: plain clap structs. `cli::context` turns them into resolved paths.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "databuild plans and runs the jobs that produce data partitions, and records every \
step in an append-only, checksummed event log; every status it shows is derived from that log.";

const AFTER_HELP: &str = "Examples:
  databuild build 'color_vote_report/2025-01-07/red'   build a partition and what it needs
  databuild status                                      what is AVAILABLE, FAILED, ...
  databuild lineage 'color_vote_report/2025-01-07/red'  what it was built from
  databuild replay --build ID                           what a build request did, event by event
  databuild graph                                       the jobs and the refs they produce

Refs take ranges: 'votes/{2025-01-01..2025-01-31}', 'part/{001..100}', 'x/{a,b}'. Ids take any
unique prefix, and `last` names the newest build request.

The graph file (databuild.toml) is found in the current directory or a parent. The event log is
kept in .databuild/log next to it (or --log DIR, or $DATABUILD_LOG); job output in .databuild/logs.
Exit codes: 0 ok, 1 build failed, 2 bad input, 3 log unusable, 130/143 cancelled.";

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "databuild", version, about = ABOUT, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// The graph file (default: databuild.toml in the current directory or a parent)
    #[arg(long, global = true, value_name = "PATH")]
    pub graph: Option<PathBuf>,
    /// Directory of the event log (default: .databuild/log next to the graph file)
    #[arg(long, global = true, value_name = "DIR", env = "DATABUILD_LOG")]
    pub log: Option<PathBuf>,
    /// Output format
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Print less: no progress, only results and errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Print more detail (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people
    Text,
    /// One JSON object per line (canonical proto3 JSON for events)
    Json,
    /// A Mermaid diagram (analyze, builds ID, lineage)
    Mermaid,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Plan, then run the jobs that produce REF... (skipping what is already AVAILABLE)
    Build(BuildArgs),
    /// Plan only: print the job graph a build would run (runs `config`, writes nothing)
    Analyze(AnalyzeArgs),
    /// Print events from the log, oldest first
    Replay(ReplayArgs),
    /// Partition statuses derived from the log (all, or the ones named)
    Status(StatusArgs),
    /// Build requests; with ID, the detail of one
    Builds(BuildsArgs),
    /// Where a partition came from (or, with --downstream, what was built from it)
    Lineage(LineageArgs),
    /// Why a partition is in its state, with evidence by sequence number
    Explain(ExplainArgs),
    /// Per job label: runs, success ratio, durations; with LABEL, its runs
    Jobs(JobsArgs),
    /// Print a job run's captured output
    Logs(LogsArgs),
    /// After a crash: record interrupted runs as failed and finish every interrupted build
    Recover(RecoverArgs),
    /// Check the whole log: framing, checksums, continuity, and that every event is legal
    Verify,
    /// Cut a damaged log after its valid prefix (moving the rest aside); never done implicitly
    Repair(RepairArgs),
    /// Remove old job output of ended runs and torn-tail/repair backups (never the event log)
    Gc(GcArgs),
    /// Cancel a build request that has not ended
    Cancel(CancelArgs),
    /// Run one long-lived engine that serves gRPC, an HTTP API and a dashboard to many clients
    Serve(ServeArgs),
    /// Run exactly a JobGraph (as `analyze --format json` prints it), without calling `config`
    Execute(ExecuteArgs),
    /// Print a shell completion script (e.g. `databuild completions bash > ~/.local/share/bash-completion/completions/databuild`)
    Completions(CompletionsArgs),
    /// The graph's jobs and their patterns; with REF..., the plan a build would run (as analyze)
    Graph(GraphArgs),
    /// Internal: the batch script of one Slurm job (runs the job run described in RUN_DIR)
    #[command(name = "__slurm-run", hide = true)]
    SlurmRun {
        /// The run's directory (`.databuild/logs/<run>/`)
        run_dir: PathBuf,
    },
    /// Mark AVAILABLE partitions bad: the next build that needs them builds them again
    Taint(TaintArgs),
}

/// `taint`.
#[derive(Debug, Args)]
pub struct TaintArgs {
    /// Partition refs or globs (`*`, `?`) of AVAILABLE partitions
    #[arg(required = true, value_name = "REF_OR_GLOB")]
    pub refs: Vec<String>,
    /// Also taint every partition built from them, transitively
    #[arg(long)]
    pub downstream: bool,
    /// Why (recorded in the log, shown by explain and lineage)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `graph`.
#[derive(Debug, Args)]
pub struct GraphArgs {
    /// Partition refs to plan (ranges like {1..9} expand); without any, list the jobs
    #[arg(value_name = "REF")]
    pub refs: Vec<String>,
    #[command(flatten)]
    pub plan: PlanOpts,
}

/// `cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The build request id (see `databuild builds`)
    #[arg(value_name = "ID")]
    pub id: String,
}

/// `execute`.
#[derive(Debug, Args)]
pub struct ExecuteArgs {
    /// A JobGraph in proto3 JSON, or - for standard input
    #[arg(value_name = "FILE|-")]
    pub file: String,
    /// Run at most N jobs at once [default: number of CPUs]
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// If another databuild is writing the log, wait for it instead of exiting with code 3
    #[arg(long)]
    pub wait: bool,
}

/// `build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Partition refs to build, e.g. 'reviews/date=2025-01-01'
    #[arg(required = true, value_name = "REF")]
    pub refs: Vec<String>,
    /// Run at most N jobs at once [default: number of CPUs]
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// Rebuild the requested partitions even if they are AVAILABLE (upstream ones are reused)
    #[arg(long)]
    pub force: bool,
    /// Also rebuild the stale partitions the build needs, upstream first
    #[arg(long)]
    pub stale: bool,
    /// If another databuild is writing the log, wait for it instead of exiting with code 3
    #[arg(long)]
    pub wait: bool,
    /// Plan only and print the plan, as `analyze` does: nothing runs, nothing is written
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// With a server running: print the build request id once it is recorded and exit 0,
    /// leaving the build to the server
    #[arg(long)]
    pub detach: bool,
}

/// How `analyze` and `graph REF...` plan.
#[derive(Debug, Args)]
pub struct PlanOpts {
    /// Plan as `build --force` would
    #[arg(long)]
    pub force: bool,
    /// Plan as `build --stale` would
    #[arg(long)]
    pub stale: bool,
    /// Run at most N config calls at once [default: number of CPUs]
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
}

/// `analyze`.
#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Partition refs to plan
    #[arg(required = true, value_name = "REF")]
    pub refs: Vec<String>,
    #[command(flatten)]
    pub plan: PlanOpts,
}

/// `replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Only events with seq >= SEQ
    #[arg(long, value_name = "SEQ")]
    pub since: Option<u64>,
    /// Only events up to SEQ, or up to TIME (RFC 3339), inclusive
    #[arg(long, value_name = "SEQ|TIME")]
    pub until: Option<String>,
    /// Only events of this build request
    #[arg(long = "build", value_name = "ID")]
    pub build: Option<String>,
    /// Only events naming a matching ref (`*` any run of characters, `?` one)
    #[arg(long, value_name = "REF_OR_GLOB")]
    pub partition: Option<String>,
    /// Only job events of this label, and the partition events they caused
    #[arg(long, value_name = "LABEL")]
    pub job: Option<String>,
    /// Only events of this job run, and the partition events it caused
    #[arg(long = "job-run", value_name = "ID")]
    pub job_run: Option<String>,
    /// Keep printing new events as they are written (Ctrl-C to stop)
    #[arg(long)]
    pub follow: bool,
}

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Partition refs or globs (default: every partition the log has seen)
    #[arg(value_name = "REF")]
    pub refs: Vec<String>,
    /// The state as it was after event SEQ, or at TIME (RFC 3339)
    #[arg(long, value_name = "SEQ|TIME")]
    pub at: Option<String>,
    /// Only partitions in these statuses (AVAILABLE, FAILED, BUILDING, ...; repeat or comma-separate)
    #[arg(long = "status", value_name = "STATUS", value_delimiter = ',')]
    pub status: Vec<String>,
}

/// `builds`.
#[derive(Debug, Args)]
pub struct BuildsArgs {
    /// A build request id: show its jobs and partitions
    #[arg(value_name = "ID")]
    pub id: Option<String>,
}

/// `lineage`.
#[derive(Debug, Args)]
pub struct LineageArgs {
    /// The partition ref
    #[arg(value_name = "REF")]
    pub partition: String,
    /// Show what was built from it instead of what it was built from
    #[arg(long)]
    pub downstream: bool,
    /// Follow at most N levels [default: all]
    #[arg(long, value_name = "N")]
    pub depth: Option<usize>,
}

/// `explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The partition ref, or a glob over the partitions the log has seen
    #[arg(value_name = "REF")]
    pub partition: String,
}

/// `jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// A job label: list its runs, newest first
    #[arg(value_name = "LABEL")]
    pub label: Option<String>,
}

/// `logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The job run id (see `databuild builds ID` or `databuild replay`)
    #[arg(value_name = "JOB_RUN_ID")]
    pub run: String,
}

/// `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port)
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:3050")]
    pub addr: String,
    /// Run at most N jobs at once over all requests [default: number of CPUs]
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// If another databuild is writing the log, wait for it instead of exiting with code 3
    #[arg(long)]
    pub wait: bool,
}

/// `recover`.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Run at most N jobs at once [default: number of CPUs]
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// If another databuild is writing the log, wait for it
    #[arg(long)]
    pub wait: bool,
}

/// `repair`.
#[derive(Debug, Args)]
pub struct RepairArgs {
    /// Required: keep the valid prefix and move everything after the damage aside
    #[arg(long, required = true)]
    pub truncate: bool,
    /// If another databuild is writing the log, wait for it
    #[arg(long)]
    pub wait: bool,
}

/// `gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Remove the output directories (.databuild/logs/ID) of job runs and build requests that
    /// ended more than DAYS days ago; never of a live one
    #[arg(long, value_name = "DAYS")]
    pub logs_older_than: Option<u64>,
    /// Remove the backups of cut torn tails (*.torn-*) and of repairs (*.repair-*.bak)
    #[arg(long)]
    pub torn: bool,
    /// Only list what would be removed
    #[arg(long)]
    pub dry_run: bool,
}
