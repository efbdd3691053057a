//! Snapshots of the folded state: derived, rebuildable, and only ever a shortcut.
//!
//! A snapshot holds the [`State`] after some seq, so opening a long log folds only what follows
//! it. It is never the truth: one that is damaged, of another log, of another fold version, or
//! beyond the durable end is ignored with a warning, and the log is folded instead.
//!
//! This module only encodes and decodes (the fold does no I/O); files are handled by
//! `store::snapshots`. File: `snapshots/<seq:020>.snap` in the log directory:
//! `magic "DBSNAP\0\x1a" | fold_version u32 | log_id [16] | seq u64 | anchor | body_len u64 |
//! body | crc u32` (little-endian; the CRC covers everything before it), where the **anchor**
//! (`segment u64 | offset u64 | frame crc u32`) names the frame of the log that holds `seq`. A
//! snapshot is used only while the log still holds that very frame: after `repair --truncate` or a
//! restored backup, the log may reach `seq` again with other events, and a snapshot of the old
//! history must not stand in for the new one.
//!
//! The body is laid out to be used in place, not loaded: a string table (every distinct id and
//! ref once, **sorted**: `n u32 | offsets [u64; n+1] | bytes`), then one table per projection
//! (requests, runs, keys, catalog, readers, versioned runs), each `n u32 | key string index [u32; n], ascending |
//! entry offsets [u64; n+1] | entries`, then the rest (engine records, last seq and timestamp,
//! last delegation, the ids of live runs and open requests, the recorded job versions). Strings inside entries are string
//! table indexes. Opening checks the checksum, then walks every entry once without allocating
//! (on two threads): after that, each entry is decoded only when the state is asked for it (see
//! [`super::table`]), so a command on a long log touches what it needs, not the whole history.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::table::{Source, Table};
use super::*;

/// Bumped with every change to what the fold computes or to this encoding: older snapshots are
/// then ignored (and rebuilt), never misread.
pub const FOLD_VERSION: u32 = 5;
/// Magic bytes of a snapshot file.
pub const MAGIC: [u8; 8] = *b"DBSNAP\x00\x1a";
const HEADER: usize = 8 + 4 + 16 + 8 + ANCHOR_BYTES + 8;
const ANCHOR_BYTES: usize = 8 + 8 + 4;

/// The frame of the log a snapshot was taken after (the one holding its seq): segment id, byte
/// offset and the frame's checksum. The checksum covers the frame's seqs and events (with their
/// ids and timestamps), so another history reaching the same seq has another anchor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Anchor {
    /// Segment id of the frame.
    pub segment: u64,
    /// Byte offset of the frame in its segment.
    pub offset: u64,
    /// The frame's checksum.
    pub crc: u32,
}

/// What a snapshot's header says, read without checking the file (see [`peek`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The seq the state was taken after.
    pub seq: u64,
    /// The frame holding `seq` when it was taken.
    pub anchor: Anchor,
}

/// Reads a snapshot's header without checking anything but its length and magic: cheap, so a
/// loader can skip a snapshot of another history before checking (and mapping) all of it. A
/// header is trusted only once [`decode_owned`] has checked the file's checksum.
pub fn peek(file: &[u8]) -> Option<Header> {
    if file.len() < HEADER + 4 || file[0..8] != MAGIC {
        return None;
    }
    Some(Header {
        seq: u64_at(file, 28),
        anchor: Anchor {
            segment: u64_at(file, 36),
            offset: u64_at(file, 44),
            crc: u32_at(file, 52),
        },
    })
}
/// Below this many bytes a snapshot is validated on the calling thread: a thread costs more than
/// it saves.
const PARALLEL_FROM: usize = 1 << 20;

/// Why a snapshot was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("snapshot {path}: {why}")]
pub struct SnapshotError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub why: String,
}

// ---------------------------------------------------------------------------------------------
// Encoding

#[derive(Default)]
struct Writer {
    out: Vec<u8>,
    /// Provisional string index by string, in first-use order.
    syms: FxHashMap<Sym, u32>,
    table: Vec<Sym>,
    /// Positions in `out` holding a provisional string index, rewritten once the table is sorted.
    fixups: Vec<usize>,
}

impl Writer {
    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn len(&mut self, n: usize) {
        // Four billion items do not fit in memory: saturating here can never be reached.
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.out.extend_from_slice(s.as_bytes());
    }
    fn index(&mut self, s: &Sym) -> u32 {
        let next = self.table.len() as u32;
        *self.syms.entry(s.clone()).or_insert_with(|| {
            self.table.push(s.clone());
            next
        })
    }
    fn sym(&mut self, s: &Sym) {
        let i = self.index(s);
        self.fixups.push(self.out.len());
        self.u32(i);
    }
    fn syms(&mut self, v: &[Sym]) {
        self.len(v.len());
        for s in v {
            self.sym(s);
        }
    }
    fn opt_pair(&mut self, v: Option<(u64, i64)>) {
        match v {
            None => self.u8(0),
            Some((a, b)) => {
                self.u8(1);
                self.u64(a);
                self.i64(b);
            }
        }
    }
    fn opt_str(&mut self, v: &Option<String>) {
        match v {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(x) => {
                self.u8(1);
                self.u64(x);
            }
        }
    }
    fn stale(&mut self, v: &Option<Stale>) {
        let Some(st) = v else { return self.u8(0) };
        self.u8(1);
        self.u64(st.since);
        self.len(st.reasons.len());
        for r in &st.reasons {
            match r {
                StaleReason::Rebuilt { input, seq } => {
                    self.u8(0);
                    self.sym(input);
                    self.u64(*seq);
                }
                StaleReason::Version { from, to, seq } => {
                    self.u8(1);
                    self.str(from);
                    self.str(to);
                    self.u64(*seq);
                }
                StaleReason::UpstreamStale { input, seq } => {
                    self.u8(2);
                    self.sym(input);
                    self.u64(*seq);
                }
                StaleReason::UpstreamTainted { input, seq } => {
                    self.u8(3);
                    self.sym(input);
                    self.u64(*seq);
                }
            }
        }
    }
    fn fact(&mut self, f: &Option<Fact>) {
        match f {
            None => self.u8(0),
            Some(f) => {
                self.u8(1);
                self.i32(f.status as i32);
                self.u64(f.seq);
                self.sym(&f.job_run_id);
                self.sym(&f.build_request_id);
                self.str(&f.message);
            }
        }
    }

    /// Encodes a table's entries, sorted by key: (provisional key indexes, entry offsets, byte
    /// range in `out`).
    fn table<'a, V: 'a>(
        &mut self,
        entries: impl Iterator<Item = (&'a Sym, &'a V)>,
        mut enc: impl FnMut(&mut Writer, &V),
    ) -> EncodedTable {
        let mut v: Vec<(&Sym, &V)> = entries.collect();
        v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let start = self.out.len();
        let mut keys = Vec::with_capacity(v.len());
        let mut offsets = Vec::with_capacity(v.len() + 1);
        for (k, e) in v {
            keys.push(self.index(k));
            offsets.push((self.out.len() - start) as u64);
            enc(self, e);
        }
        offsets.push((self.out.len() - start) as u64);
        EncodedTable { keys, offsets, range: start..self.out.len() }
    }
}

struct EncodedTable {
    keys: Vec<u32>,
    offsets: Vec<u64>,
    range: std::ops::Range<usize>,
}

fn enc_request(w: &mut Writer, r: &Request) {
    w.i32(r.status as i32);
    w.syms(&r.requested);
    w.u8(u8::from(r.force));
    w.str(&r.graph_digest);
    w.u64(r.received_seq);
    w.i64(r.received_ts);
    w.opt_pair(r.ended);
    w.str(&r.message);
    w.opt_pair(r.plan_seq.map(|s| (s, 0)));
    w.len(r.history.len());
    for (s, seq) in &r.history {
        w.i32(*s as i32);
        w.u64(*seq);
    }
    w.syms(&r.runs);
    w.u32(r.live_runs);
    w.u8(u8::from(r.cancelling));
}

fn enc_run(w: &mut Writer, r: &Run) {
    w.sym(&r.request);
    w.sym(&r.job_label);
    w.i32(r.status as i32);
    w.syms(&r.targets);
    w.u32(r.attempt);
    w.u64(r.first_seq);
    w.i64(r.first_ts);
    w.opt_pair(r.running);
    w.opt_pair(r.ended);
    w.i32(r.failure as i32);
    match r.exit_code {
        None => w.u8(0),
        Some(c) => {
            w.u8(1);
            w.i32(c);
        }
    }
    w.str(&r.message);
    match &r.process {
        None => w.u8(0),
        Some(p) => {
            w.u8(1);
            w.i32(p.pid);
            w.i32(p.pgid);
            w.str(&p.host);
            w.str(&p.boot_id);
            w.u64(p.start_time_ticks);
        }
    }
    w.opt_pair(r.manifest_times.map(|(a, b)| (a as u64, b)));
    w.len(r.inputs.len());
    for i in &r.inputs {
        w.sym(&i.partition);
        w.i32(i.dep_type as i32);
        w.sym(&i.producer_run);
    }
    w.opt_str(&r.version);
    w.stale(&r.stale);
}

fn enc_keys(w: &mut Writer, m: &FxHashMap<Sym, Key>) {
    let mut ks: Vec<(&Sym, &Key)> = m.iter().collect();
    ks.sort_unstable_by(|a, b| a.0.cmp(b.0));
    w.len(ks.len());
    for (p, k) in ks {
        w.sym(p);
        w.i32(k.status as i32);
        w.u64(k.seq);
        w.sym(&k.job_run_id);
        w.str(&k.message);
    }
}

fn enc_catalog(w: &mut Writer, c: &CatalogEntry) {
    w.fact(&c.by_run);
    w.fact(&c.latest);
    w.len(c.available.len());
    for (s, r) in &c.available {
        w.u64(*s);
        w.sym(r);
    }
    w.opt_u64(c.tainted);
}

/// Encodes `state` as a snapshot file for log `log_id`, taken after the frame `anchor`.
pub fn encode(state: &State, log_id: [u8; 16], anchor: Anchor) -> Vec<u8> {
    let mut w = Writer::default();
    let tables = [
        w.table(state.requests.iter(), enc_request),
        w.table(state.runs.iter(), enc_run),
        w.table(state.keys.iter(), enc_keys),
        w.table(state.catalog.iter(), enc_catalog),
        w.table(state.readers.iter(), |w, v| w.syms(v)),
        w.table(state.versioned_runs.iter(), |w, v| w.syms(v)),
    ];
    let rest_start = w.out.len();
    w.len(state.engine.len());
    for e in &state.engine {
        w.u64(e.seq);
        w.i32(e.kind as i32);
        w.str(&e.message);
    }
    w.u64(state.last_seq);
    w.i64(state.last_ts);
    match &state.last_delegation {
        None => w.u8(0),
        Some((s, r, p)) => {
            w.u8(1);
            w.u64(*s);
            w.sym(r);
            w.sym(p);
        }
    }
    let live: Vec<Sym> = state.live_runs().into_iter().map(|r| r.id.clone()).collect();
    w.syms(&live);
    let open: Vec<Sym> = state.open_requests().into_iter().map(|r| r.id.clone()).collect();
    w.syms(&open);
    let mut versions: Vec<(&Sym, &(String, u64))> = state.job_versions.iter().collect();
    versions.sort_unstable_by(|a, b| a.0.cmp(b.0));
    w.len(versions.len());
    for (label, (v, seq)) in versions {
        w.sym(label);
        w.str(v);
        w.u64(*seq);
    }

    // Sort the string table and rewrite every provisional index.
    let mut order: Vec<u32> = (0..w.table.len() as u32).collect();
    order.sort_unstable_by(|a, b| w.table[*a as usize].cmp(&w.table[*b as usize]));
    let mut fin = vec![0u32; order.len()];
    for (new, old) in order.iter().enumerate() {
        fin[*old as usize] = new as u32;
    }
    for &at in &w.fixups {
        let mut b = [0u8; 4];
        b.copy_from_slice(&w.out[at..at + 4]);
        w.out[at..at + 4].copy_from_slice(&fin[u32::from_le_bytes(b) as usize].to_le_bytes());
    }

    let strings: usize = w.table.iter().map(|s| s.len()).sum();
    let mut body = Vec::with_capacity(w.out.len() + strings + 16 * w.table.len());
    body.extend_from_slice(&(order.len() as u32).to_le_bytes());
    let mut off = 0u64;
    body.extend_from_slice(&off.to_le_bytes());
    for &i in &order {
        off += w.table[i as usize].len() as u64;
        body.extend_from_slice(&off.to_le_bytes());
    }
    for &i in &order {
        body.extend_from_slice(w.table[i as usize].as_bytes());
    }
    for t in &tables {
        body.extend_from_slice(&(t.keys.len() as u32).to_le_bytes());
        // Entries were sorted by key string, and the table is sorted: final indexes ascend.
        for &k in &t.keys {
            body.extend_from_slice(&fin[k as usize].to_le_bytes());
        }
        for &o in &t.offsets {
            body.extend_from_slice(&o.to_le_bytes());
        }
        body.extend_from_slice(&w.out[t.range.clone()]);
    }
    body.extend_from_slice(&w.out[rest_start..]);

    let mut file = Vec::with_capacity(HEADER + body.len() + 4);
    file.extend_from_slice(&MAGIC);
    file.extend_from_slice(&FOLD_VERSION.to_le_bytes());
    file.extend_from_slice(&log_id);
    file.extend_from_slice(&state.last_seq.to_le_bytes());
    file.extend_from_slice(&anchor.segment.to_le_bytes());
    file.extend_from_slice(&anchor.offset.to_le_bytes());
    file.extend_from_slice(&anchor.crc.to_le_bytes());
    file.extend_from_slice(&(body.len() as u64).to_le_bytes());
    file.extend_from_slice(&body);
    let crc = crc32fast::hash(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    file
}

// ---------------------------------------------------------------------------------------------
// Decoding

type R<T> = Result<T, String>;

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// A snapshot file's bytes, checked, with its string table located.
struct Snap {
    bytes: Box<dyn std::ops::Deref<Target = [u8]> + Send + Sync>,
    /// Number of strings; their offsets (n+1 u64) start at `offsets`, their bytes at `strings`.
    n: usize,
    offsets: usize,
    strings: usize,
}

impl Snap {
    /// The bytes of string `i` (< n).
    fn str_bytes(&self, i: usize) -> &[u8] {
        let b = &self.bytes[..];
        let (a, z) = (u64_at(b, self.offsets + 8 * i), u64_at(b, self.offsets + 8 * i + 8));
        &b[self.strings + a as usize..self.strings + z as usize]
    }

    /// String `i` (< n). Validated at load: the fallback is never taken.
    fn str(&self, i: usize) -> &str {
        std::str::from_utf8(self.str_bytes(i)).unwrap_or("")
    }
}

/// Reads one entry (or, with the `skip_` methods, checks it without allocating).
struct Reader<'a> {
    b: &'a [u8],
    snap: &'a Snap,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if n > self.b.len() {
            return Err("truncated".into());
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> R<u32> {
        Ok(u32_at(self.take(4)?, 0))
    }
    fn i32(&mut self) -> R<i32> {
        Ok(self.u32()? as i32)
    }
    fn u64(&mut self) -> R<u64> {
        Ok(u64_at(self.take(8)?, 0))
    }
    fn i64(&mut self) -> R<i64> {
        Ok(self.u64()? as i64)
    }
    fn bool(&mut self) -> R<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(format!("bad flag {v}")),
        }
    }
    /// A count of items of at least `min` bytes each: checked against what remains.
    fn count(&mut self, min: usize) -> R<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min.max(1)) > self.b.len() {
            return Err(format!("count {n} runs past the end"));
        }
        Ok(n)
    }
    fn str(&mut self) -> R<String> {
        let n = self.count(1)?;
        let s = std::str::from_utf8(self.take(n)?).map_err(|_| "bad UTF-8".to_string())?;
        Ok(s.to_string())
    }
    fn skip_str(&mut self) -> R<()> {
        let n = self.count(1)?;
        std::str::from_utf8(self.take(n)?).map_err(|_| "bad UTF-8".to_string())?;
        Ok(())
    }
    fn sym_index(&mut self) -> R<usize> {
        let i = self.u32()? as usize;
        if i >= self.snap.n {
            return Err(format!("string index {i} out of range"));
        }
        Ok(i)
    }
    fn sym(&mut self) -> R<Sym> {
        let i = self.sym_index()?;
        Ok(Sym::from(self.snap.str(i)))
    }
    fn skip_sym(&mut self) -> R<()> {
        self.sym_index().map(|_| ())
    }
    /// `n` items read by `f`.
    fn list<T>(&mut self, min: usize, mut f: impl FnMut(&mut Self) -> R<T>) -> R<Vec<T>> {
        let n = self.count(min)?;
        (0..n).map(|_| f(self)).collect()
    }
    /// `n` items checked by `f`.
    fn skip_list(&mut self, min: usize, mut f: impl FnMut(&mut Self) -> R<()>) -> R<()> {
        let n = self.count(min)?;
        (0..n).try_for_each(|_| f(self))
    }
    fn skip_syms(&mut self) -> R<()> {
        self.skip_list(4, Self::skip_sym)
    }
    fn skip_en<T: TryFrom<i32>>(&mut self) -> R<()> {
        self.en::<T>().map(|_| ())
    }
    fn skip_opt_pair_u64(&mut self) -> R<()> {
        if self.bool()? {
            self.take(8)?;
        }
        Ok(())
    }
    fn skip_opt_pair(&mut self) -> R<()> {
        if self.bool()? {
            self.take(16)?;
        }
        Ok(())
    }
    fn skip_fact(&mut self) -> R<()> {
        if self.bool()? {
            self.skip_en::<PartitionStatus>()?;
            self.take(8)?;
            self.skip_sym()?;
            self.skip_sym()?;
            self.skip_str()?;
        }
        Ok(())
    }
    fn opt_str(&mut self) -> R<Option<String>> {
        Ok(if self.bool()? { Some(self.str()?) } else { None })
    }
    fn opt_u64(&mut self) -> R<Option<u64>> {
        Ok(if self.bool()? { Some(self.u64()?) } else { None })
    }
    fn stale(&mut self) -> R<Option<Stale>> {
        if !self.bool()? {
            return Ok(None);
        }
        let since = self.u64()?;
        let reasons = self.list(13, |r| {
            Ok(match r.u8()? {
                0 => StaleReason::Rebuilt { input: r.sym()?, seq: r.u64()? },
                1 => StaleReason::Version { from: r.str()?, to: r.str()?, seq: r.u64()? },
                2 => StaleReason::UpstreamStale { input: r.sym()?, seq: r.u64()? },
                3 => StaleReason::UpstreamTainted { input: r.sym()?, seq: r.u64()? },
                k => return Err(format!("unknown stale reason kind {k}")),
            })
        })?;
        Ok(Some(Stale { since, reasons }))
    }
    fn skip_stale(&mut self) -> R<()> {
        self.stale().map(|_| ())
    }
    fn skip_opt_str(&mut self) -> R<()> {
        if self.bool()? {
            self.skip_str()?;
        }
        Ok(())
    }
    fn syms(&mut self) -> R<Vec<Sym>> {
        self.list(4, Self::sym)
    }
    fn opt_pair(&mut self) -> R<Option<(u64, i64)>> {
        Ok(if self.bool()? { Some((self.u64()?, self.i64()?)) } else { None })
    }
    fn en<T: TryFrom<i32>>(&mut self) -> R<T> {
        let v = self.i32()?;
        T::try_from(v).map_err(|_| format!("unknown enum value {v}"))
    }
    fn fact(&mut self) -> R<Option<Fact>> {
        if !self.bool()? {
            return Ok(None);
        }
        Ok(Some(Fact {
            status: self.en()?,
            seq: self.u64()?,
            job_run_id: self.sym()?,
            build_request_id: self.sym()?,
            message: self.str()?,
        }))
    }
}

fn dec_request(r: &mut Reader<'_>, id: Sym) -> R<Request> {
    Ok(Request {
        id,
        status: r.en()?,
        requested: r.syms()?,
        force: r.bool()?,
        graph_digest: r.str()?,
        received_seq: r.u64()?,
        received_ts: r.i64()?,
        ended: r.opt_pair()?,
        message: r.str()?,
        plan_seq: r.opt_pair()?.map(|(s, _)| s),
        history: r.list(12, |r| Ok((r.en()?, r.u64()?)))?,
        runs: r.syms()?,
        live_runs: r.u32()?,
        cancelling: r.bool()?,
    })
}

fn dec_run(r: &mut Reader<'_>, id: Sym) -> R<Run> {
    Ok(Run {
        id,
        request: r.sym()?,
        job_label: r.sym()?,
        status: r.en()?,
        targets: r.syms()?,
        attempt: r.u32()?,
        first_seq: r.u64()?,
        first_ts: r.i64()?,
        running: r.opt_pair()?,
        ended: r.opt_pair()?,
        failure: r.en()?,
        exit_code: if r.bool()? { Some(r.i32()?) } else { None },
        message: r.str()?,
        process: if r.bool()? {
            Some(ProcessInfo {
                pid: r.i32()?,
                pgid: r.i32()?,
                host: r.str()?,
                boot_id: r.str()?,
                start_time_ticks: r.u64()?,
            })
        } else {
            None
        },
        manifest_times: r.opt_pair()?.map(|(a, b)| (a as i64, b)),
        inputs: r.list(12, |r| {
            Ok(RunInput { partition: r.sym()?, dep_type: r.en()?, producer_run: r.sym()? })
        })?,
        version: r.opt_str()?,
        stale: r.stale()?,
    })
}

fn dec_keys(r: &mut Reader<'_>, _: Sym) -> R<FxHashMap<Sym, Key>> {
    let v = r.list(24, |r| {
        let p = r.sym()?;
        Ok((p, Key { status: r.en()?, seq: r.u64()?, job_run_id: r.sym()?, message: r.str()? }))
    })?;
    Ok(v.into_iter().collect())
}

fn dec_catalog(r: &mut Reader<'_>, _: Sym) -> R<CatalogEntry> {
    Ok(CatalogEntry {
        by_run: r.fact()?,
        latest: r.fact()?,
        available: r.list(12, |r| Ok((r.u64()?, r.sym()?)))?,
        tainted: r.opt_u64()?,
    })
}

fn dec_readers(r: &mut Reader<'_>, _: Sym) -> R<Vec<Sym>> {
    r.syms()
}

// Checkers: the decoders' field order, reading without allocating. A checker that accepted what
// its decoder refuses would make an entry read as absent; the snapshot tests decode every entry
// of every checked snapshot and compare.

fn chk_request(r: &mut Reader<'_>) -> R<()> {
    r.skip_en::<BuildRequestStatus>()?;
    r.skip_syms()?;
    r.bool()?;
    r.skip_str()?;
    r.take(16)?;
    r.skip_opt_pair()?;
    r.skip_str()?;
    r.skip_opt_pair()?;
    r.skip_list(12, |r| {
        r.skip_en::<BuildRequestStatus>()?;
        r.take(8).map(|_| ())
    })?;
    r.skip_syms()?;
    r.take(4)?;
    r.bool().map(|_| ())
}

fn chk_run(r: &mut Reader<'_>) -> R<()> {
    r.skip_sym()?;
    r.skip_sym()?;
    r.skip_en::<JobStatus>()?;
    r.skip_syms()?;
    r.take(4 + 8 + 8)?;
    r.skip_opt_pair()?;
    r.skip_opt_pair()?;
    r.skip_en::<JobFailureKind>()?;
    if r.bool()? {
        r.take(4)?;
    }
    r.skip_str()?;
    if r.bool()? {
        r.take(8)?;
        r.skip_str()?;
        r.skip_str()?;
        r.take(8)?;
    }
    r.skip_opt_pair()?;
    r.skip_list(12, |r| {
        r.skip_sym()?;
        r.skip_en::<DepType>()?;
        r.skip_sym()
    })?;
    r.skip_opt_str()?;
    r.skip_stale()
}

fn chk_keys(r: &mut Reader<'_>) -> R<()> {
    r.skip_list(24, |r| {
        r.skip_sym()?;
        r.skip_en::<PartitionStatus>()?;
        r.take(8)?;
        r.skip_sym()?;
        r.skip_str()
    })
}

fn chk_catalog(r: &mut Reader<'_>) -> R<()> {
    r.skip_fact()?;
    r.skip_fact()?;
    r.skip_list(12, |r| {
        r.take(8)?;
        r.skip_sym()
    })?;
    r.skip_opt_pair_u64()
}

fn chk_readers(r: &mut Reader<'_>) -> R<()> {
    r.skip_syms()
}

type Dec<V> = fn(&mut Reader<'_>, Sym) -> R<V>;
type Chk = fn(&mut Reader<'_>) -> R<()>;

/// One projection's table inside a snapshot.
struct TableSrc<V> {
    snap: Arc<Snap>,
    n: usize,
    /// Where the key indexes, the entry offsets and the entries start.
    keys: usize,
    offsets: usize,
    entries: usize,
    dec: Dec<V>,
    chk: Chk,
}

impl<V> TableSrc<V> {
    fn key_index(&self, i: usize) -> usize {
        u32_at(&self.snap.bytes, self.keys + 4 * i) as usize
    }
    fn entry(&self, i: usize) -> &[u8] {
        let b = &self.snap.bytes[..];
        let (a, z) = (u64_at(b, self.offsets + 8 * i), u64_at(b, self.offsets + 8 * i + 8));
        &b[self.entries + a as usize..self.entries + z as usize]
    }
    /// Checks that every entry decodes and fills its bytes exactly.
    fn check_all(&self) -> R<()> {
        for i in 0..self.n {
            let mut r = Reader { b: self.entry(i), snap: &self.snap };
            (self.chk)(&mut r).map_err(|e| format!("entry {i} of a table: {e}"))?;
            if !r.b.is_empty() {
                return Err(format!("entry {i} of a table: trailing bytes"));
            }
        }
        Ok(())
    }
}

impl<V> Source<V> for TableSrc<V> {
    fn len(&self) -> usize {
        self.n
    }
    fn key(&self, i: usize) -> &str {
        self.snap.str(self.key_index(i))
    }
    fn find(&self, key: &str) -> Option<usize> {
        // The string table is sorted, and so are a table's key indexes.
        let (mut lo, mut hi) = (0, self.snap.n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // Byte order is string order for UTF-8: no need to re-check each probe's UTF-8.
            match self.snap.str_bytes(mid).cmp(key.as_bytes()) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    let (mut a, mut z) = (0, self.n);
                    while a < z {
                        let m = a + (z - a) / 2;
                        match self.key_index(m).cmp(&mid) {
                            std::cmp::Ordering::Less => a = m + 1,
                            std::cmp::Ordering::Greater => z = m,
                            std::cmp::Ordering::Equal => return Some(m),
                        }
                    }
                    return None;
                }
            }
        }
        None
    }
    fn load(&self, i: usize) -> Option<V> {
        let mut r = Reader { b: self.entry(i), snap: &self.snap };
        let v = (self.dec)(&mut r, Sym::from(self.key(i))).ok()?;
        r.b.is_empty().then_some(v)
    }
}

/// A cursor over the body, for locating its parts.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn need(&self, n: usize, what: &str) -> R<()> {
        if self.b.len().saturating_sub(self.at) < n {
            return Err(format!("{what} runs past the end"));
        }
        Ok(())
    }
    fn u32(&mut self, what: &str) -> R<u32> {
        self.need(4, what)?;
        self.at += 4;
        Ok(u32_at(self.b, self.at - 4))
    }
    /// `n+1` ascending u64 offsets from 0, then the bytes they cover: (offsets at, bytes at).
    fn offsets(&mut self, n: usize, what: &str) -> R<(usize, usize)> {
        let len = n.checked_add(1).and_then(|k| k.checked_mul(8)).ok_or("count overflow")?;
        self.need(len, what)?;
        let at = self.at;
        self.at += len;
        if u64_at(self.b, at) != 0 {
            return Err(format!("{what}: first offset is not 0"));
        }
        let mut prev = 0;
        for i in 1..=n {
            let o = u64_at(self.b, at + 8 * i);
            if o < prev {
                return Err(format!("{what}: offsets go backwards"));
            }
            prev = o;
        }
        let total = usize::try_from(prev).map_err(|_| format!("{what}: too large"))?;
        self.need(total, what)?;
        let data = self.at;
        self.at += total;
        Ok((at, data))
    }
}

fn table<V>(
    c: &mut Cursor<'_>,
    snap: &Arc<Snap>,
    (dec, chk): (Dec<V>, Chk),
    what: &str,
) -> R<TableSrc<V>> {
    let n = c.u32(what)? as usize;
    let keys_len = n.checked_mul(4).ok_or("count overflow")?;
    c.need(keys_len, what)?;
    let keys = c.at;
    c.at += keys_len;
    let mut prev: Option<u32> = None;
    for i in 0..n {
        let k = u32_at(c.b, keys + 4 * i);
        if k as usize >= snap.n || prev.is_some_and(|p| p >= k) {
            return Err(format!("{what}: key {i} out of order or out of range"));
        }
        prev = Some(k);
    }
    let (offsets, entries) = c.offsets(n, what)?;
    Ok(TableSrc { snap: snap.clone(), n, keys, offsets, entries, dec, chk })
}

/// Decodes a snapshot file; `expect_log` must match. Returns the state (with `last_seq` = the
/// snapshot's seq). The bytes are copied; [`decode_owned`] uses them in place.
pub fn decode(file: &[u8], expect_log: [u8; 16]) -> Result<State, String> {
    decode_owned(Box::new(file.to_vec()), expect_log)
}

/// [`decode`] of bytes the state keeps and decodes entries from as they are asked for (a mapped
/// file, say).
pub fn decode_owned(
    file: Box<dyn std::ops::Deref<Target = [u8]> + Send + Sync>,
    expect_log: [u8; 16],
) -> Result<State, String> {
    let two = file.len() >= PARALLEL_FROM;
    decode_on(file, expect_log, two)
}

/// [`decode_owned`], with validation split across two threads or not.
pub(crate) fn decode_on(
    file: Box<dyn std::ops::Deref<Target = [u8]> + Send + Sync>,
    expect_log: [u8; 16],
    two_threads: bool,
) -> Result<State, String> {
    let f = &file[..];
    if f.len() < HEADER + 4 || f[0..8] != MAGIC {
        return Err("not a snapshot".into());
    }
    let end = f.len() - 4;
    if crc32fast::hash(&f[..end]) != u32_at(f, end) {
        return Err("checksum mismatch".into());
    }
    let version = u32_at(f, 8);
    if version != FOLD_VERSION {
        return Err(format!("fold version {version}, this databuild folds version {FOLD_VERSION}"));
    }
    if f[12..28] != expect_log {
        return Err("snapshot of another log".into());
    }
    let seq = u64_at(f, 28);
    if u64_at(f, 28 + 8 + ANCHOR_BYTES) != (end - HEADER) as u64 {
        return Err("body length mismatch".into());
    }
    // The string table: sorted, valid UTF-8, offsets within bounds.
    let mut c = Cursor { b: &f[..end], at: HEADER };
    let n = c.u32("string table")? as usize;
    let (offsets, strings) = c.offsets(n, "string table")?;
    let blob =
        std::str::from_utf8(&f[strings..c.at]).map_err(|_| "bad UTF-8 in the string table")?;
    let at = |i: usize| u64_at(f, offsets + 8 * i) as usize;
    let mut prev: Option<&str> = None;
    for i in 0..n {
        let (a, z) = (at(i), at(i + 1));
        if !blob.is_char_boundary(a) || !blob.is_char_boundary(z) {
            return Err("a string table entry splits a character".into());
        }
        let s = &blob[a..z];
        if prev.is_some_and(|p| p >= s) {
            return Err("the string table is not sorted".into());
        }
        prev = Some(s);
    }
    let body_at = c.at;
    let snap = Arc::new(Snap { bytes: file, n, offsets, strings });
    let f = &snap.bytes[..];
    let mut c = Cursor { b: &f[..end], at: body_at };
    let requests = table(&mut c, &snap, (dec_request, chk_request), "requests")?;
    let runs = table(&mut c, &snap, (dec_run, chk_run), "runs")?;
    let keys = table(&mut c, &snap, (dec_keys, chk_keys), "keys")?;
    let catalog = table(&mut c, &snap, (dec_catalog, chk_catalog), "catalog")?;
    let readers = table(&mut c, &snap, (dec_readers, chk_readers), "readers")?;
    let versioned = table(&mut c, &snap, (dec_readers, chk_readers), "versioned runs")?;
    // Every entry decodes (so lookups later cannot fail): runs and readers on a second thread.
    let theirs = || {
        runs.check_all()?;
        readers.check_all()?;
        versioned.check_all()
    };
    let mine = || {
        requests.check_all()?;
        keys.check_all()?;
        catalog.check_all()
    };
    if two_threads {
        std::thread::scope(|sc| {
            let other = sc.spawn(theirs);
            let a = mine();
            let b = other.join().map_err(|_| "validating thread panicked".to_string())?;
            a.and(b)
        })?;
    } else {
        mine()?;
        theirs()?;
    }
    let mut r = Reader { b: &f[c.at..end], snap: &snap };
    let st = State {
        engine: r
            .list(16, |r| Ok(EngineRecord { seq: r.u64()?, kind: r.en()?, message: r.str()? }))?,
        last_seq: r.u64()?,
        last_ts: r.i64()?,
        last_delegation: if r.bool()? { Some((r.u64()?, r.sym()?, r.sym()?)) } else { None },
        snapshot_live_runs: r.syms()?,
        snapshot_open_requests: r.syms()?,
        job_versions: r.list(16, |r| Ok((r.sym()?, (r.str()?, r.u64()?))))?.into_iter().collect(),
        requests: Table::from_source(Arc::new(requests)),
        runs: Table::from_source(Arc::new(runs)),
        keys: Table::from_source(Arc::new(keys)),
        catalog: Table::from_source(Arc::new(catalog)),
        readers: Table::from_source(Arc::new(readers)),
        versioned_runs: Table::from_source(Arc::new(versioned)),
        ..State::default()
    };
    if st.last_seq != seq {
        return Err(format!("header says seq {seq}, body {}", st.last_seq));
    }
    if !r.b.is_empty() {
        return Err("trailing bytes".into());
    }
    Ok(st)
}
