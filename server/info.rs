//! `server.json`: how clients find a live server, and tell it from a stale file.
//!
//! Written (mode 0600, atomically) once the server listens and removed on a clean exit. After a
//! `kill -9` it stays behind: a client trusts it only if its process still runs with the same
//! start time on the same host and boot, so a reused pid never passes for the server.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file's name in the log directory.
pub const FILE: &str = "server.json";
/// The Unix socket's name in the log directory.
pub const SOCKET: &str = "server.sock";

/// What `server.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo {
    /// The server's process id.
    pub pid: i32,
    /// The TCP address it serves (`HOST:PORT`).
    pub addr: String,
    /// The bearer token for changes over TCP.
    pub token: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Its host name.
    pub host: String,
    /// The host's boot id (a pid is only unique within one boot).
    pub boot_id: String,
    /// The process's start time in clock ticks since boot (with pid and boot id: one process).
    pub start_ticks: u64,
    /// databuild's version.
    pub version: String,
    /// The id of the log it serves.
    pub log_id: String,
    /// The Unix socket it also serves (absolute path).
    pub socket: PathBuf,
    /// The graph label.
    pub graph: String,
}

impl ServerInfo {
    /// This process's identity, for the file a server writes.
    pub fn for_this_process(
        addr: String,
        token: String,
        log_id: String,
        socket: PathBuf,
        graph: String,
    ) -> ServerInfo {
        let pid = std::process::id() as i32;
        let now = time::OffsetDateTime::now_utc();
        ServerInfo {
            pid,
            addr,
            token,
            started_at: now
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            host: databuild_log::fs::host_name(),
            boot_id: crate::sys::boot_id(),
            start_ticks: crate::sys::start_ticks(pid).unwrap_or(0),
            version: env!("CARGO_PKG_VERSION").to_string(),
            log_id,
            socket,
            graph,
        }
    }

    /// Whether the process this file names is alive and is the one that wrote it.
    pub fn is_live(&self) -> bool {
        self.host == databuild_log::fs::host_name()
            && self.boot_id == crate::sys::boot_id()
            && crate::sys::start_ticks(self.pid).is_some_and(|t| t == self.start_ticks)
    }

    /// Writes the file into `log_dir` (owner-only, replaced atomically).
    pub fn write(&self, log_dir: &Path) -> std::io::Result<()> {
        let tmp = log_dir.join(format!(".{FILE}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(serde_json::to_string_pretty(self).map_err(std::io::Error::other)?.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, log_dir.join(FILE))
    }

    /// Removes the file, if it is this process's.
    pub fn remove(log_dir: &Path) {
        if read(log_dir).is_some_and(|i| i.pid == std::process::id() as i32) {
            let _ = std::fs::remove_file(log_dir.join(FILE));
        }
    }
}

/// The server.json in `log_dir`, if there is a readable one (live or not).
pub fn read(log_dir: &Path) -> Option<ServerInfo> {
    let text = std::fs::read_to_string(log_dir.join(FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The live server of `log_dir`, if one runs (a stale file is ignored).
pub fn live(log_dir: &Path) -> Option<ServerInfo> {
    read(log_dir).filter(ServerInfo::is_live)
}

/// A fresh random token (128 bits, hex).
pub fn new_token() -> String {
    databuild_log::LogId::random().to_hex()
}
