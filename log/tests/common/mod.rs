//! Helpers shared by the log's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use databuild_log::{
    Batch, Durability, Fs, OpenError, ReadMode, ReadOptions, Reader, RealFs, Writer, WriterOptions,
};

/// Both read paths: every reading test runs through each.
pub const MODES: [ReadMode; 2] = [ReadMode::Mmap, ReadMode::Read];

/// Writer options for tests: full durability, small segments, no periodic CHECKPOINT (so the
/// test knows exactly what evidence exists).
pub fn opts(fs: Arc<dyn Fs>, segment_bytes: u64) -> WriterOptions {
    WriterOptions {
        durability: Durability::Full,
        segment_bytes_target: segment_bytes,
        checkpoint_interval: None,
        fs,
        ..WriterOptions::default()
    }
}

pub fn real() -> Arc<dyn Fs> {
    Arc::new(RealFs)
}

/// A record whose bytes say which seq it was written as, with a variable length.
pub fn record(seq: u64, len: usize) -> Vec<u8> {
    let mut r = format!("rec-{seq}-").into_bytes();
    while r.len() < len {
        r.push(b'a' + (r.len() % 26) as u8);
    }
    r
}

/// Appends `sizes.len()` batches, batch `i` holding `sizes[i]` records; returns every record
/// written, in seq order.
pub fn append_batches(w: &Writer, sizes: &[usize], record_len: usize) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    for &n in sizes {
        let mut b = Batch::new();
        let first = w.next_seq();
        for i in 0..n {
            let r = record(first + i as u64, record_len);
            b.push(&r);
            all.push(r);
        }
        let got = w.append(b).expect("append");
        assert_eq!(got.first, first);
    }
    all
}

/// Reads every record, checking seqs start at 1 and have no gaps.
pub fn read_all(dir: &Path, fs: Arc<dyn Fs>, mode: ReadMode) -> Result<Vec<Vec<u8>>, String> {
    read_all_opts(dir, ReadOptions { mode, fs, trust_tail: true })
}

pub fn read_all_opts(dir: &Path, opts: ReadOptions) -> Result<Vec<Vec<u8>>, String> {
    let r = Reader::open(dir, opts).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut expect = 1;
    r.for_each_from(1, |seq, bytes| -> Result<(), databuild_log::ReadError> {
        assert_eq!(seq, expect, "gapless seqs");
        expect += 1;
        out.push(bytes.to_vec());
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    assert_eq!(r.next_seq(), expect);
    Ok(out)
}

/// Opens a writer, reads everything through it and closes it.
pub fn recover(
    dir: &Path,
    o: WriterOptions,
) -> Result<(Vec<Vec<u8>>, databuild_log::OpenReport), OpenError> {
    let mode = o.read_mode;
    let (w, report) = Writer::open(dir, o)?;
    let r = w.reader(mode)?;
    let mut out = Vec::new();
    r.for_each_from(1, |_, b| -> Result<(), databuild_log::ReadError> {
        out.push(b.to_vec());
        Ok(())
    })?;
    w.close().expect("close");
    Ok((out, report))
}
