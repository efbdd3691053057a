//! Segment bytes as readers see them: a read-only memory map, or an owned buffer.
//!
//! This is the only module of the crate with `unsafe` code: mapping a file is unsafe because
//! another process could change or shrink it under the map. The log's invariant L9 makes the map
//! sound in practice: bytes at or below the durable end are never modified while the log exists,
//! and readers never map past the durable end they were given (see [`SegmentBytes::map`]).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::ops::Deref;

use crate::fs::FsFile;

/// Bytes of a segment prefix.
#[derive(Debug)]
pub enum SegmentBytes {
    /// A read-only shared mapping.
    Mapped(memmap2::Mmap),
    /// Bytes read into memory.
    Owned(Vec<u8>),
}

impl SegmentBytes {
    /// Maps the first `len` bytes of `file` (less if the file is shorter).
    ///
    /// Callers pass only lengths whose bytes are immutable: a sealed segment, the durable
    /// prefix of the active one, or a file that is never modified once in place (the engine's
    /// snapshots, written to a temporary file and renamed). The writer never writes through a
    /// map (L8).
    pub fn map(file: &File, len: u64) -> io::Result<SegmentBytes> {
        let len = len.min(file.metadata()?.len());
        if len == 0 {
            return Ok(SegmentBytes::Owned(Vec::new()));
        }
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large to map"))?;
        // SAFETY: the mapping is read-only and covers only bytes that no databuild process
        // modifies while the log exists (L9: nothing at or below the durable end is rewritten,
        // and files are never truncated below it). A process outside databuild truncating the
        // file could still fault the map; that is outside the log's assumptions (docs/log-format.md).
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
        Ok(SegmentBytes::Mapped(map))
    }

    /// Reads the first `len` bytes of `file` (less if the file is shorter) into memory.
    pub fn read(file: &dyn FsFile, len: u64) -> io::Result<SegmentBytes> {
        let len = len.min(file.len()?);
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
        let mut buf = vec![0u8; len];
        let got = file.read_at(&mut buf, 0)?;
        buf.truncate(got);
        Ok(SegmentBytes::Owned(buf))
    }
}

impl Deref for SegmentBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            SegmentBytes::Mapped(m) => m,
            SegmentBytes::Owned(v) => v,
        }
    }
}
