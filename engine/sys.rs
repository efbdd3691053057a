//! The few operating-system calls the engine makes that std does not wrap: signalling process
//! groups, and reading process facts from `/proc` (Linux).
//!
//! This is the engine's only module with `unsafe` code: `kill(2)`, which touches no memory of
//! ours, and [`spawn_held`], the local executor's `fork` + `execve` of a job that waits for its
//! release in the child (everything the child does after `fork` is async-signal-safe: it only
//! makes system calls on memory prepared before the fork).
#![allow(unsafe_code)]

use std::io;

/// SIGTERM.
pub const SIGTERM: i32 = libc::SIGTERM;
/// SIGKILL.
pub const SIGKILL: i32 = libc::SIGKILL;
/// SIGINT.
pub const SIGINT: i32 = libc::SIGINT;

/// Sends `sig` to every process in group `pgid`.
pub fn signal_group(pgid: i32, sig: i32) -> io::Result<()> {
    if pgid <= 1 {
        // Never signal "every process" (-1) or our own group (0) by accident.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        ));
    }
    // SAFETY: kill(2) takes two integers and touches no memory of this process.
    let r = unsafe { libc::kill(-pgid, sig) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Sends `sig` to process `pid`.
pub fn signal_process(pid: i32, sig: i32) -> io::Result<()> {
    if pid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process {pid}"),
        ));
    }
    // SAFETY: kill(2) takes two integers and touches no memory of this process.
    let r = unsafe { libc::kill(pid, sig) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Whether any process is left in group `pgid`.
pub fn group_exists(pgid: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: as above; signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(-pgid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Fields of `/proc/<pid>/stat` after the command name (field 3 is index 0).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 1..];
    Some(after.split_whitespace().map(String::from).collect())
}

/// The process's start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn start_ticks(pid: i32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// When the process started, in unix nanoseconds (its start ticks after boot, boot time from the
/// realtime and boot-time clocks), to a clock tick (10 ms).
pub fn start_time_ns(pid: i32) -> Option<i64> {
    let ticks = start_ticks(pid)?;
    // SAFETY: sysconf takes an integer; clock_gettime writes into a timespec we own.
    let (hz, since_boot) = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        if libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) != 0 {
            return None;
        }
        (libc::sysconf(libc::_SC_CLK_TCK), ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64)
    };
    if hz <= 0 {
        return None;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?;
    let boot = now.as_nanos() as i64 - since_boot;
    Some(boot + (ticks as i64) * (1_000_000_000 / hz))
}

/// The process's group id (field 5), if it exists.
pub fn process_group(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(2)?.parse().ok()
}

/// Whether the process is a zombie (exited, not yet reaped).
pub fn is_zombie(pid: i32) -> bool {
    stat_fields(pid).and_then(|f| f.first().cloned()).is_some_and(|s| s == "Z")
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), empty if unknown.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Pids of the live processes in group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| process_group(pid) == Some(pgid) && !is_zombie(pid))
        .collect()
}

/// Whether the process's environment holds `KEY=value` exactly.
pub fn environ_has(pid: i32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|&b| b == 0).any(|e| e == entry.as_bytes()))
        .unwrap_or(false)
}

/// A job to start held: everything the child needs, prepared before `fork` (the child may not
/// allocate).
#[derive(Debug)]
pub struct HeldSpawn {
    /// The program (an absolute path).
    pub program: std::ffi::CString,
    /// `argv`, program first.
    pub argv: Vec<std::ffi::CString>,
    /// The whole environment, `KEY=value`.
    pub envp: Vec<std::ffi::CString>,
    /// The working directory.
    pub cwd: std::ffi::CString,
    /// The run's output directory (created if missing).
    pub dir: std::ffi::CString,
    /// The file that gets `stdin_bytes` and becomes the job's stdin.
    pub stdin: std::ffi::CString,
    /// The job's stdin.
    pub stdin_bytes: Vec<u8>,
    /// The job's stdout file.
    pub stdout: std::ffi::CString,
    /// The job's stderr file.
    pub stderr: std::ffi::CString,
}

/// A child started by [`spawn_held`]: it runs nothing until one byte is written to `release`
/// (closing `release` unwritten makes it exit with [`NOT_RELEASED`]).
#[derive(Debug)]
pub struct HeldChild {
    /// Its pid, also its process group id.
    pub pid: i32,
    /// Write one byte to let it `execve` the job.
    pub release: std::os::fd::OwnedFd,
    /// Readable once it has exited (a pidfd).
    pub exited: std::os::fd::OwnedFd,
    /// If its setup or `execve` failed: the step and the errno (5 bytes); closed (EOF) at exec.
    pub errors: std::os::fd::OwnedFd,
}

/// Exit code of a held child whose release pipe was closed without a byte (never ran the job).
pub const NOT_RELEASED: i32 = 125;
/// Exit code of a held child whose setup or `execve` failed.
pub const SPAWN_FAILED: i32 = 127;

/// What a held child was doing when it failed (the first byte of its error report).
pub fn spawn_step(step: u8) -> &'static str {
    match step {
        1 => "cannot create its output directory",
        2 => "cannot write its stdin file",
        3 => "cannot create its stdout/stderr files",
        4 => "cannot enter the graph file's directory",
        5 => "cannot start the entrypoint",
        _ => "cannot set up the job",
    }
}

/// The text of an errno.
pub fn errno_text(errno: i32) -> String {
    io::Error::from_raw_os_error(errno).to_string()
}

/// Why the kernel (or `/usr/bin/env`) could not start the entrypoint at `path`, when its first
/// line shows it: a `#!` line ending in a carriage return (Windows line endings), an interpreter
/// that does not exist or is not executable, or a text file without a `#!` line. `None` when the
/// file does not exist or its first line looks fine. Used for `config` (a failed spawn, or exit
/// 126/127) and for `exec` (a failed `execve`, or exit 126/127).
pub fn diagnose_entrypoint(path: &std::path::Path) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(path).ok()?.take(512).read_to_end(&mut head).ok()?;
    let first = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(first);
    let mut shown: String = line.chars().take(100).collect();
    if shown.len() < line.len() {
        shown.push('…');
    }
    let shown = shown.replace('\r', "\\r");
    let file = path.display();
    if head.starts_with(b"\x7fELF") {
        return None;
    }
    let Some(rest) = line.strip_prefix("#!") else {
        return Some(format!(
            "{file} is neither a program this machine runs nor a script: its first line `{shown}` does not start with `#!`; make it e.g. `#!/bin/sh` or `#!/usr/bin/env python3`"
        ));
    };
    if line.ends_with('\r') {
        return Some(format!(
            "the first line of {file}, `{shown}`, ends with a carriage return (Windows line endings), so the interpreter looked for is `{}`; convert the file: sed -i 's/\\r$//' {file}",
            rest.trim_start_matches([' ', '\t']).replace('\r', "\\r")
        ));
    }
    let interpreter = rest.trim_start_matches([' ', '\t']).split([' ', '\t']).next().unwrap_or("");
    if interpreter.is_empty() {
        return Some(format!("the first line of {file}, `{shown}`, names no interpreter"));
    }
    match std::fs::metadata(interpreter) {
        Err(_) => Some(format!(
            "the interpreter `{interpreter}` named by the first line of {file} (`{shown}`) does not exist; fix the path, or use `#!/usr/bin/env NAME`"
        )),
        Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => Some(format!(
            "the interpreter `{interpreter}` named by the first line of {file} (`{shown}`) is not an executable file"
        )),
        Ok(_) if interpreter.ends_with("/env") => {
            let program = rest.split([' ', '\t']).filter(|w| !w.is_empty()).nth(1)?;
            let on_path = std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()));
            (!program.starts_with('-') && !on_path).then(|| {
                format!("`{program}`, which the first line of {file} (`{shown}`) runs through `{interpreter}`, is not on PATH")
            })
        }
        Ok(_) => None,
    }
}

/// The text of a failed start of `path` with `errno`: [`diagnose_entrypoint`]'s explanation when
/// the error is ENOENT, ENOEXEC or EACCES for a file that exists, else the errno's text.
pub fn spawn_error_text(path: &std::path::Path, errno: i32) -> String {
    let plain = errno_text(errno);
    if matches!(errno, libc::ENOENT | libc::ENOEXEC | libc::EACCES)
        && path.is_file()
        && let Some(why) = diagnose_entrypoint(path)
    {
        return format!("{plain}: {why}");
    }
    plain
}

fn pipe_cloexec() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe {
        (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1]))
    })
}

/// Starts a job held, in its own process group, with one `fork` and (on release) one `execve`:
/// the child creates its output files, makes them its stdout/stderr and the config its stdin,
/// then blocks on the release pipe; released, it enters the working directory and `execve`s the
/// program. So the engine can record the child (pid, start time) before the job runs, and the
/// files cost the engine's thread nothing.
pub fn spawn_held(spec: &HeldSpawn) -> io::Result<HeldChild> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let (release_r, release_w) = pipe_cloexec()?;
    let (errors_r, errors_w) = pipe_cloexec()?;
    let argv: Vec<*const libc::c_char> =
        spec.argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp: Vec<*const libc::c_char> =
        spec.envp.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let (rr, ew) = (release_r.as_raw_fd(), errors_w.as_raw_fd());
    // Signals stay blocked across the fork: the child must not run the engine's handlers (they
    // would tell the engine about a signal meant for the job) before it has reset them.
    // SAFETY: sigfillset/pthread_sigmask on sigset_t values we own.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: after fork the child only makes async-signal-safe system calls on memory prepared
    // above (no allocation, no locks), and always ends in execve or _exit.
    let pid = unsafe { libc::fork() };
    // SAFETY: restores this thread's mask (the child resets its own).
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above.
        unsafe { held_child(spec, rr, ew, argv.as_ptr(), envp.as_ptr()) }
    }
    drop(release_r);
    drop(errors_w);
    // Also set here: whichever of parent and child runs first, the group exists before the
    // engine records it.
    // SAFETY: setpgid takes two integers.
    unsafe { libc::setpgid(pid, pid) };
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if pidfd < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: kill and waitpid take integers and a pointer to our own int.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            let mut st = 0;
            libc::waitpid(pid, &mut st, 0);
        }
        return Err(e);
    }
    // SAFETY: pidfd was just returned by the kernel and is owned by nobody else.
    let exited = unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(errors_r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    Ok(HeldChild { pid, release: release_w, exited, errors: errors_r })
}

/// The child's side of [`spawn_held`]. Never returns.
///
/// # Safety
/// Only to be called in the child right after `fork`.
unsafe fn held_child(
    spec: &HeldSpawn,
    release: i32,
    errors: i32,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> ! {
    // SAFETY (whole body): async-signal-safe calls only, on memory prepared before the fork.
    unsafe {
        let fail = |step: u8| -> ! {
            let errno = *libc::__errno_location();
            let mut msg = [step, 0, 0, 0, 0];
            msg[1..].copy_from_slice(&errno.to_le_bytes());
            libc::write(errors, msg.as_ptr().cast(), msg.len());
            libc::_exit(SPAWN_FAILED)
        };
        // Keep nothing of the engine's open files but our two pipes: a held child must not keep
        // the log's lock, its segments, or other runs' release pipes open (a run let go would
        // wait for an end-of-file that another held child's copy of its pipe holds back).
        close_all_but(release, errors);
        libc::setpgid(0, 0);
        // The engine's handlers, ignored signals (SIGPIPE) and mask must not reach the job: every
        // signal back to its default action (signals are blocked until then), then unblocked.
        for sig in 1..65 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        if libc::mkdir(spec.dir.as_ptr(), 0o755) != 0 && *libc::__errno_location() != libc::EEXIST {
            fail(1);
        }
        let flags = libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
        let input = libc::open(spec.stdin.as_ptr(), flags | libc::O_RDWR, 0o644);
        if input < 0 {
            fail(2);
        }
        let mut at = 0;
        while at < spec.stdin_bytes.len() {
            let n = libc::write(
                input,
                spec.stdin_bytes.as_ptr().add(at).cast(),
                spec.stdin_bytes.len() - at,
            );
            if n < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                fail(2);
            }
            at += n as usize;
        }
        libc::lseek(input, 0, libc::SEEK_SET);
        let out = libc::open(spec.stdout.as_ptr(), flags | libc::O_WRONLY, 0o644);
        let err = libc::open(spec.stderr.as_ptr(), flags | libc::O_WRONLY, 0o644);
        if out < 0 || err < 0 {
            fail(3);
        }
        if libc::dup2(input, 0) < 0 || libc::dup2(out, 1) < 0 || libc::dup2(err, 2) < 0 {
            fail(3);
        }
        for fd in [input, out, err] {
            if fd > 2 {
                libc::close(fd);
            }
        }
        let mut byte = 0u8;
        loop {
            let n = libc::read(release, (&mut byte as *mut u8).cast(), 1);
            if n == 1 {
                break;
            }
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            libc::_exit(NOT_RELEASED);
        }
        if libc::chdir(spec.cwd.as_ptr()) != 0 {
            fail(4);
        }
        libc::execve(spec.program.as_ptr(), argv, envp);
        fail(5)
    }
}

/// Registers a held child's pidfd with tokio: readable once the child has exited. Must be called
/// inside a tokio runtime.
pub fn exit_watch(
    pidfd: std::os::fd::OwnedFd,
) -> io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: the AsyncFd owns the fd, so it stays open while registered and is closed only
    // when the AsyncFd (and its registration) is dropped.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)
}

/// Closes every fd from 3 up except `a` and `b` (in a child after `fork`: async-signal-safe).
///
/// # Safety
/// Only in a child after `fork`, before `execve`.
unsafe fn close_all_but(a: i32, b: i32) {
    let (lo, hi) = (a.min(b), a.max(b));
    let ranges = [(3, lo - 1), (lo + 1, hi - 1), (hi + 1, i32::MAX)];
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        // SAFETY: close_range takes integers; on kernels without it, close one by one up to the
        // fd limit.
        unsafe {
            if libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0) != 0 {
                let mut lim: libc::rlimit = std::mem::zeroed();
                let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                    lim.rlim_cur.min(1 << 20) as i32
                } else {
                    4096
                };
                for fd in first..=last.min(max) {
                    libc::close(fd);
                }
            }
        }
    }
}

/// Reaps a child that has exited (its pidfd was readable): its wait status, or `None` if it has
/// not exited after all.
pub fn reap(pid: i32) -> io::Result<Option<i32>> {
    let mut status = 0;
    // SAFETY: waitpid writes the status into our own int.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match r {
        0 => Ok(None),
        r if r == pid => Ok(Some(status)),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Waits for a child to exit and reaps it.
pub fn reap_blocking(pid: i32) -> io::Result<i32> {
    let mut status = 0;
    // SAFETY: waitpid writes the status into our own int.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    if r == pid { Ok(status) } else { Err(io::Error::last_os_error()) }
}

/// Makes sure fds 0, 1 and 2 are open (on /dev/null if not), so no pipe or file the engine opens
/// later gets one of them (a held child makes those its stdio).
pub fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: fcntl and open take integers and a NUL-terminated string we own.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) == -1 {
                libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            }
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit (what a server that holds
/// many client connections, and still needs descriptors for its jobs' pipes, should run with).
/// Returns the soft limit in force afterwards.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return Ok(raised.rlim_cur);
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// A wait status as (exit code, signal).
pub fn decode_status(status: i32) -> (Option<i32>, Option<i32>) {
    if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_about_our_own_process() {
        let me = std::process::id() as i32;
        assert!(start_ticks(me).is_some());
        assert!(process_group(me).is_some());
        assert!(!is_zombie(me));
        assert!(
            signal_group(0, 0).is_err() && signal_group(1, 0).is_err(),
            "never signal groups 0 or 1"
        );
        assert!(!group_exists(0));
    }
}
