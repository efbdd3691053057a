//! The few operating-system calls the engine makes that std does not wrap: signalling process
//! groups, and reading process facts from `/proc` (Linux).
//!
//! This is the engine's only module with `unsafe` code: one FFI call, `kill(2)`, which touches no
//! memory of ours.
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
