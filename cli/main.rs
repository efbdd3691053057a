//! The `databuild` command: parse, run, map the result to an exit code.

mod args;
mod client;
mod cmd_admin;
mod cmd_audit;
mod cmd_build;
mod cmd_cancel;
mod cmd_completions;
mod cmd_gc;
mod cmd_graph;
mod cmd_history;
mod cmd_recover;
mod cmd_serve;
mod cmd_taint;
mod context;
mod exit;
mod live;
mod progress;
mod refs;
mod render;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    databuild::sys::ensure_stdio();
    let cli = args::Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            e.print();
            ExitCode::from(e.code)
        }
    }
}

fn run(cli: args::Cli) -> Result<u8, exit::CliError> {
    use args::Command as C;
    // Needs no graph file or log.
    if let C::Completions(a) = &cli.command {
        return cmd_completions::completions(a);
    }
    if let C::SlurmRun { run_dir } = &cli.command {
        let code = databuild::executor::slurm::batch_main(run_dir);
        return Ok(u8::try_from(code).unwrap_or(1));
    }
    let ctx = context::Ctx::resolve(&cli.global)?;
    match cli.command {
        C::Build(a) if a.dry_run => cmd_graph::dry_run(&ctx, a),
        C::Build(a) => cmd_build::build(&ctx, a),
        C::Analyze(a) => cmd_build::analyze(&ctx, a),
        C::Replay(a) => cmd_history::replay(&ctx, a),
        C::Status(a) => cmd_history::status(&ctx, a),
        C::Builds(a) => cmd_history::builds(&ctx, a),
        C::Lineage(a) => cmd_history::lineage(&ctx, a),
        C::Explain(a) => cmd_audit::explain(&ctx, a),
        C::Jobs(a) => cmd_audit::jobs(&ctx, a),
        C::Logs(a) => cmd_history::logs(&ctx, a),
        C::Recover(a) => cmd_recover::recover(&ctx, a),
        C::Verify => cmd_admin::verify(&ctx),
        C::Repair(a) => cmd_admin::repair(&ctx, a),
        C::Gc(a) => cmd_gc::gc(&ctx, a),
        C::Cancel(a) => cmd_cancel::cancel(&ctx, a),
        C::Execute(a) => cmd_build::execute(&ctx, a),
        C::Serve(a) => cmd_serve::serve(&ctx, a),
        C::Completions(_) | C::SlurmRun { .. } => unreachable!("handled above"),
        C::Graph(a) => cmd_graph::graph(&ctx, a),
        C::Taint(a) => cmd_taint::taint(&ctx, a),
    }
}
