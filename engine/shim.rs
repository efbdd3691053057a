//! The job shim: `databuild __job-shim --stdin FILE --spawn-error FILE -- ENTRYPOINT ARGS...`.
//!
//! The engine spawns the shim in the job's own process group, with a pipe as its stdin, and only
//! then records JOB_RUNNING (pid, group, start time). Once that record is durable the engine writes
//! one byte to the pipe and the shim `exec`s the entrypoint in place (same pid, same group), with
//! the JobConfig file as its stdin. If the engine dies first, the shim reads end-of-file and exits
//! without running anything: no job ever runs without a durable record of it. If `exec` fails, the
//! shim writes why to the spawn-error file (so the engine records SPAWN_FAILED) and exits 127.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

/// Exit code of a shim that was never released (the engine went away first).
pub const NOT_RELEASED: i32 = 125;
/// Exit code of a shim whose `exec` failed.
pub const SPAWN_FAILED: i32 = 127;

struct Args {
    stdin: PathBuf,
    spawn_error: PathBuf,
    program: OsString,
    args: Vec<OsString>,
}

fn parse(mut it: impl Iterator<Item = OsString>) -> Result<Args, String> {
    let (mut stdin, mut spawn_error) = (None, None);
    loop {
        let a = it.next().ok_or("missing -- ENTRYPOINT")?;
        match a.to_str() {
            Some("--stdin") => stdin = it.next().map(PathBuf::from),
            Some("--spawn-error") => spawn_error = it.next().map(PathBuf::from),
            Some("--") => break,
            _ => return Err(format!("unexpected argument {a:?}")),
        }
    }
    let program = it.next().ok_or("missing ENTRYPOINT")?;
    Ok(Args {
        stdin: stdin.ok_or("missing --stdin")?,
        spawn_error: spawn_error.ok_or("missing --spawn-error")?,
        program,
        args: it.collect(),
    })
}

/// Runs the shim with the arguments after `__job-shim`; returns an exit code only if it did not
/// `exec` the entrypoint.
pub fn main(args: impl Iterator<Item = OsString>) -> i32 {
    let a = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("databuild __job-shim: {e} (this is an internal command of databuild)");
            return 2;
        }
    };
    let mut byte = [0u8; 1];
    match std::io::stdin().lock().read(&mut byte) {
        Ok(1) => {}
        _ => return NOT_RELEASED,
    }
    let stdin = match std::fs::File::open(&a.stdin) {
        Ok(f) => f,
        Err(e) => {
            return spawn_failed(
                &a,
                &format!("cannot open its stdin file {}: {e}", a.stdin.display()),
            );
        }
    };
    let err = std::process::Command::new(&a.program).args(&a.args).stdin(stdin).exec();
    spawn_failed(&a, &format!("cannot start {}: {err}", a.program.to_string_lossy()))
}

fn spawn_failed(a: &Args, why: &str) -> i32 {
    let _ = std::fs::write(&a.spawn_error, why);
    eprintln!("databuild: {why}");
    SPAWN_FAILED
}
