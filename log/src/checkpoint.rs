//! The CHECKPOINT file: two 512-byte slots of durability evidence, written alternately.
//!
//! A slot says "every seq below N was durable, and the durable end was at segment S, offset O".
//! Writing overwrites the older slot and fdatasyncs, so a torn write damages at most one slot and
//! the other still holds the previous watermark. It is written at seal, about once a second while
//! appending, and at clean close; never per commit, so it costs no latency on the append path.

use std::path::{Path, PathBuf};

use crate::LogId;
use crate::error::{OpenError, io_err};
use crate::format::{CHECKPOINT_SLOT_BYTES, CheckpointSlot};
use crate::fs::{Create, Fs, FsFile};
use crate::segment::{CHECKPOINT_FILE, TMP_SUFFIX};

/// What was found in CHECKPOINT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointStatus {
    /// No CHECKPOINT file.
    Missing,
    /// Both slots are valid.
    Sound,
    /// One slot is damaged; the other was used.
    OneSlotDamaged,
    /// Both slots are damaged (or of another log): only frame evidence remains.
    Damaged,
}

/// The newest valid slot, and how the file looked.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointRead {
    /// The newest valid slot of this log, if any.
    pub slot: Option<CheckpointSlot>,
    /// What the file looked like.
    pub status: CheckpointStatus,
}

/// Reads CHECKPOINT; slots of another log count as damaged.
pub fn read(fs: &dyn Fs, dir: &Path, log_id: Option<&LogId>) -> Result<CheckpointRead, OpenError> {
    let path = dir.join(CHECKPOINT_FILE);
    if !fs.exists(&path).map_err(io_err("stat", &path))? {
        return Ok(CheckpointRead { slot: None, status: CheckpointStatus::Missing });
    }
    let file = fs.open_read(&path).map_err(io_err("open", &path))?;
    let mut buf = vec![0u8; 2 * CHECKPOINT_SLOT_BYTES];
    let got = file.read_at(&mut buf, 0).map_err(io_err("read", &path))?;
    buf.truncate(got);
    let slots: Vec<Option<CheckpointSlot>> = buf
        .chunks(CHECKPOINT_SLOT_BYTES)
        .map(CheckpointSlot::decode)
        .map(|s| s.filter(|s| log_id.is_none_or(|id| s.log_id == *id)))
        .chain(std::iter::repeat(None))
        .take(2)
        .collect();
    let valid = slots.iter().flatten().count();
    let slot = slots.iter().flatten().max_by_key(|s| s.generation).copied();
    let status = match valid {
        2 => CheckpointStatus::Sound,
        1 => CheckpointStatus::OneSlotDamaged,
        _ => CheckpointStatus::Damaged,
    };
    Ok(CheckpointRead { slot, status })
}

/// The writer's handle on CHECKPOINT.
#[derive(Debug)]
pub struct CheckpointFile {
    file: Box<dyn FsFile>,
    path: PathBuf,
    generation: u64,
}

impl CheckpointFile {
    /// Creates CHECKPOINT with `slot` in both positions (tmp, fdatasync, rename, dir fsync), or
    /// opens the existing file continuing after `generation`.
    pub fn open_or_create(
        fs: &dyn Fs,
        dir: &Path,
        existing: Option<u64>,
        slot: CheckpointSlot,
    ) -> Result<CheckpointFile, OpenError> {
        let path = dir.join(CHECKPOINT_FILE);
        let present = fs.exists(&path).map_err(io_err("stat", &path))?;
        if !present || existing.is_none() {
            let tmp = dir.join(format!("{CHECKPOINT_FILE}{TMP_SUFFIX}"));
            if fs.exists(&tmp).map_err(io_err("stat", &tmp))? {
                fs.remove_file(&tmp).map_err(io_err("remove", &tmp))?;
            }
            let f = fs.open_write(&tmp, Create::New).map_err(io_err("create", &tmp))?;
            let a = CheckpointSlot { generation: 0, ..slot }.encode();
            let b = CheckpointSlot { generation: 1, ..slot }.encode();
            f.write_at(&a, 0).map_err(io_err("write", &tmp))?;
            f.write_at(&b, CHECKPOINT_SLOT_BYTES as u64).map_err(io_err("write", &tmp))?;
            f.sync_data().map_err(io_err("fdatasync", &tmp))?;
            drop(f);
            fs.rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
            fs.sync_dir(dir).map_err(io_err("fsync", dir))?;
            let file = fs.open_write(&path, Create::No).map_err(io_err("open", &path))?;
            return Ok(CheckpointFile { file, path, generation: 1 });
        }
        let file = fs.open_write(&path, Create::No).map_err(io_err("open", &path))?;
        let mut cf = CheckpointFile { file, path, generation: existing.unwrap_or(0) };
        cf.write(slot).map_err(io_err("write", &cf.path.clone()))?;
        Ok(cf)
    }

    /// Opens the existing CHECKPOINT without writing it (its newest generation is `generation`).
    pub fn open_existing(
        fs: &dyn Fs,
        dir: &Path,
        generation: u64,
    ) -> Result<CheckpointFile, OpenError> {
        let path = dir.join(CHECKPOINT_FILE);
        let file = fs.open_write(&path, Create::No).map_err(io_err("open", &path))?;
        Ok(CheckpointFile { file, path, generation })
    }

    /// Writes `slot` (its generation is assigned here) over the older slot and fdatasyncs.
    pub fn write(&mut self, slot: CheckpointSlot) -> std::io::Result<()> {
        let generation = self.generation + 1;
        let bytes = CheckpointSlot { generation, ..slot }.encode();
        let at = (generation % 2) * CHECKPOINT_SLOT_BYTES as u64;
        self.file.write_at(&bytes, at)?;
        self.file.sync_data()?;
        self.generation = generation;
        Ok(())
    }
}
