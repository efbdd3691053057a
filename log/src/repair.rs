//! `repair --truncate`: for an operator who accepts losing what follows damage. Never implicit.
//!
//! It takes the lock, finds the first problem exactly as `verify` does, keeps the valid prefix,
//! and moves everything after it aside: the cut bytes of the damaged segment are copied to
//! `<segment>.repair-<seq>.bak` and zeroed there; later segments are renamed to
//! `<segment>.repair-<seq>.bak`. CHECKPOINT and TAIL are rewritten for the new end.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::{self, CheckpointFile};
use crate::error::{Corruption, CorruptionKind, OpenError, io_err};
use crate::format::{
    FRAME_ALIGN, FRAME_HEADER_BYTES, FrameHeader, SEGMENT_HEADER_BYTES, TailHint,
    check_frame_any_seq,
};
use crate::fs::{Create, Fs, FsFile, LockAttempt};
use crate::segment::{
    self, CHECKPOINT_FILE, EndClass, LOCK_FILE, Listing, TAIL_FILE, TMP_SUFFIX, segment_file_name,
};
use crate::{CheckpointSlot, LogId, WriterOptions};

/// What `repair` did.
#[derive(Clone, Debug)]
pub struct RepairReport {
    /// Where the log was cut, and why (`None`: nothing to repair).
    pub cut: Option<(Corruption, bool)>,
    /// The first sequence number dropped (= the next one the log will assign).
    pub next_seq: u64,
    /// Sequence numbers found in valid frames after the cut: at least this many events dropped.
    pub events_dropped: u64,
    /// Bytes moved aside.
    pub bytes_moved: u64,
    /// Backup files written or renamed.
    pub backups: Vec<PathBuf>,
}

fn highest_end_seq(bytes: &[u8], log_id: &LogId, from: usize) -> u64 {
    let mut at = from.div_ceil(FRAME_ALIGN) * FRAME_ALIGN;
    let mut best = 0;
    while at + FRAME_HEADER_BYTES <= bytes.len() {
        let h = FrameHeader::read(&bytes[at..]);
        if h.plausible() && check_frame_any_seq(bytes, at, log_id).is_ok() {
            best = best.max(h.end_seq());
            at += h.frame_bytes() as usize;
        } else {
            at += FRAME_ALIGN;
        }
    }
    best
}

/// Cuts the log in `dir` after its valid prefix. Uses `opts.fs` and `opts.wait_for_lock`.
pub fn repair(dir: &Path, opts: &WriterOptions) -> Result<RepairReport, OpenError> {
    let fs: Arc<dyn Fs> = opts.fs.clone();
    let mut report = RepairReport {
        cut: None,
        next_seq: 1,
        events_dropped: 0,
        bytes_moved: 0,
        backups: Vec::new(),
    };
    if !fs.exists(dir).map_err(io_err("stat", dir))? {
        return Ok(report);
    }
    let lock_path = dir.join(LOCK_FILE);
    let _lock = match fs.lock(&lock_path, opts.wait_for_lock).map_err(io_err("lock", &lock_path))? {
        LockAttempt::Acquired(l) => l,
        LockAttempt::Busy { info } => {
            let pid = info.split_whitespace().find_map(|w| w.strip_prefix("pid=")?.parse().ok());
            let host =
                info.split_whitespace().find_map(|w| w.strip_prefix("host=").map(String::from));
            return Err(OpenError::Locked { path: lock_path, pid, host });
        }
    };
    for name in fs.list(dir).map_err(io_err("list", dir))? {
        if name.ends_with(TMP_SUFFIX) {
            let p = dir.join(&name);
            fs.remove_file(&p).map_err(io_err("remove", &p))?;
        }
    }
    let Listing { valid, problem, rest } = segment::list_segments_lenient(&*fs, dir)?;
    let listing_problem = match problem {
        None => None,
        Some(OpenError::Corruption(c)) => Some(c),
        Some(other) => return Err(other),
    };
    let log_id = valid.first().map(|s| s.header.log_id).unwrap_or(LogId([0; 16]));
    let cp = checkpoint::read(&*fs, dir, Some(&log_id))?;

    // Find the cut: (segment index in `valid`, offset, seq, why, is_torn_tail).
    let mut cut: Option<(usize, u64, Corruption, bool)> = None;
    let mut end_seq = 1;
    let mut end_offsets: Vec<u64> = Vec::with_capacity(valid.len());
    for (i, seg) in valid.iter().enumerate() {
        let bytes =
            fs.load(&seg.path, seg.len, opts.read_mode).map_err(io_err("read", &seg.path))?;
        let scan = segment::scan(
            &bytes,
            &log_id,
            SEGMENT_HEADER_BYTES as u64,
            seg.header.base_seq,
            |_, _| {},
        );
        end_seq = scan.next_seq;
        end_offsets.push(scan.end_offset);
        let sealed = i + 1 < valid.len() || listing_problem.is_some();
        let problem = if sealed {
            let next_base = valid.get(i + 1).map_or(scan.next_seq, |s| s.header.base_seq);
            segment::check_sealed(seg.id, &scan, next_base).err().map(|c| (c, false))
        } else {
            match segment::classify_end(seg.id, &bytes, &log_id, &scan, cp.slot.as_ref()) {
                EndClass::Clean => None,
                EndClass::Torn(t) => Some((
                    Corruption {
                        segment: t.segment,
                        offset: t.offset,
                        seq: t.seq,
                        kind: CorruptionKind::Truncated,
                    },
                    true,
                )),
                EndClass::Corrupt(c) => Some((c, false)),
            }
        };
        if let Some((c, torn)) = problem {
            report.events_dropped = highest_end_seq(&bytes, &log_id, scan.end_offset as usize)
                .saturating_sub(scan.next_seq);
            cut = Some((
                i,
                scan.end_offset,
                Corruption { offset: scan.end_offset, seq: scan.next_seq, ..c },
                torn,
            ));
            break;
        }
    }
    if cut.is_none()
        && let Some(c) = listing_problem
    {
        // A bad header (or a missing segment) at position `valid.len()`: cut before it.
        let seq = end_seq;
        cut = Some((valid.len(), 0, Corruption { seq, ..c }, false));
    }
    let Some((idx, offset, why, torn)) = cut else {
        report.next_seq = end_seq;
        return Ok(report);
    };
    let seq = why.seq;
    report.next_seq = seq;
    // The events an earlier, interrupted repair already moved aside (its cut bytes are zeros in
    // the segment now, its later segments renamed) are dropped all the same: CHECKPOINT still
    // names the durable end they reached, and the backups it left hold their frames.
    if let Some(slot) = cp.slot.as_ref().filter(|s| s.log_id == log_id) {
        report.events_dropped =
            report.events_dropped.max(slot.durable_next_seq.saturating_sub(seq));
    }
    let earlier = format!(".repair-{seq}");
    for name in fs.list(dir).map_err(io_err("list", dir))? {
        if name.contains(".seg") && name.contains(&earlier) && name.ends_with(".bak") {
            let p = dir.join(&name);
            let len = fs.open_read(&p).and_then(|f| f.len()).map_err(io_err("stat", &p))?;
            if let Ok(bytes) = fs.load(&p, len, opts.read_mode) {
                let hi = highest_end_seq(&bytes, &log_id, 0);
                report.events_dropped = report.events_dropped.max(hi.saturating_sub(seq));
            }
        }
    }

    // Move aside the rest of the damaged segment, then every later segment file.
    if let Some(seg) = valid.get(idx)
        && offset > 0
    {
        let file = fs.open_write(&seg.path, Create::No).map_err(io_err("open", &seg.path))?;
        let len = file.len().map_err(io_err("stat", &seg.path))?;
        let cut_len = len.saturating_sub(offset);
        if cut_len > 0 {
            let backup = backup_path(&*fs, &seg.path, seq)?;
            copy_range(&*fs, &*file, offset, cut_len, &backup)?;
            crate::writer::zero_range(&*file, offset, cut_len)
                .map_err(io_err("zero", &seg.path))?;
            file.sync_data().map_err(io_err("fdatasync", &seg.path))?;
            report.bytes_moved += cut_len;
            report.backups.push(backup);
        }
    }
    let first_moved = if offset > 0 { idx + 1 } else { idx };
    let mut moved_ids: Vec<u64> = valid.iter().skip(first_moved).map(|s| s.id).collect();
    for id in &rest {
        if !moved_ids.contains(id) {
            moved_ids.push(*id);
        }
    }
    for id in moved_ids {
        let path = dir.join(segment_file_name(id));
        if !fs.exists(&path).map_err(io_err("stat", &path))? {
            continue;
        }
        let len = fs.open_read(&path).and_then(|f| f.len()).map_err(io_err("stat", &path))?;
        if let Ok(bytes) = fs.load(&path, len, opts.read_mode) {
            let hi = highest_end_seq(&bytes, &log_id, SEGMENT_HEADER_BYTES);
            report.events_dropped = report.events_dropped.max(hi.saturating_sub(seq));
        }
        let backup = backup_path(&*fs, &path, seq)?;
        fs.rename(&path, &backup).map_err(io_err("rename", &path))?;
        report.bytes_moved += len;
        report.backups.push(backup);
    }
    fs.sync_dir(dir).map_err(io_err("fsync", dir))?;

    // Record the new end, so the next open does not take the cut for lost acknowledged data.
    let kept = valid.get(..first_moved).unwrap_or(&[]);
    match kept.last() {
        Some(last) => {
            let end_offset = if first_moved > idx { offset } else { end_offsets[kept.len() - 1] };
            let slot = CheckpointSlot {
                generation: 0,
                log_id,
                durable_next_seq: seq,
                segment_id: last.id,
                segment_offset: end_offset,
                clean: true,
            };
            CheckpointFile::open_or_create(&*fs, dir, cp.slot.map(|s| s.generation), slot)?;
            let tail = TailHint { log_id, segment_id: last.id, offset: end_offset, next_seq: seq };
            let tail_path = dir.join(TAIL_FILE);
            let f = match fs.open_write(&tail_path, Create::No) {
                Ok(f) => f,
                Err(_) => {
                    fs.open_write(&tail_path, Create::New).map_err(io_err("create", &tail_path))?
                }
            };
            f.write_at(&tail.encode(), 0).map_err(io_err("write", &tail_path))?;
        }
        None => {
            // Nothing valid is left: the next writer starts a new log.
            for name in [CHECKPOINT_FILE, TAIL_FILE] {
                let p = dir.join(name);
                if fs.exists(&p).map_err(io_err("stat", &p))? {
                    let backup = backup_path(&*fs, &p, seq)?;
                    fs.rename(&p, &backup).map_err(io_err("rename", &p))?;
                    report.backups.push(backup);
                }
            }
            fs.sync_dir(dir).map_err(io_err("fsync", dir))?;
        }
    }
    report.cut = Some((why, torn));
    Ok(report)
}

/// `<file>.repair-<seq>.bak`, or `.repair-<seq>-<n>.bak` when an earlier (interrupted) repair
/// left that name: its backup holds the events it cut, and is never overwritten.
fn backup_path(fs: &dyn Fs, path: &Path, seq: u64) -> Result<PathBuf, OpenError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut n = 1u32;
    loop {
        let suffix = if n == 1 { String::new() } else { format!("-{n}") };
        let backup = path.with_file_name(format!("{name}.repair-{seq}{suffix}.bak"));
        if !fs.exists(&backup).map_err(io_err("stat", &backup))? {
            return Ok(backup);
        }
        n += 1;
    }
}

fn copy_range(
    fs: &dyn Fs,
    from: &dyn FsFile,
    offset: u64,
    len: u64,
    to: &Path,
) -> Result<(), OpenError> {
    if fs.exists(to).map_err(io_err("stat", to))? {
        fs.remove_file(to).map_err(io_err("remove", to))?;
    }
    let out = fs.open_write(to, Create::New).map_err(io_err("create", to))?;
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done) as usize;
        let got = from.read_at(&mut buf[..n], offset + done).map_err(io_err("read", to))?;
        if got == 0 {
            break;
        }
        out.write_at(&buf[..got], done).map_err(io_err("write", to))?;
        done += got as u64;
    }
    out.sync_data().map_err(io_err("fdatasync", to))?;
    Ok(())
}
