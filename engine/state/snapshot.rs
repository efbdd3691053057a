//! Snapshots of the folded state: derived, rebuildable, and only ever a shortcut.
//!
//! A snapshot holds the [`State`] after some seq, so opening a long log folds only what follows
//! it. It is never the truth: one that is damaged, of another log, of another fold version, or
//! beyond the durable end is ignored with a warning, and the log is folded instead.
//!
//! This module only encodes and decodes (the fold does no I/O); files are handled by
//! `store::snapshots`. File: `snapshots/<seq:020>.snap` in the log directory:
//! `magic "DBSNAP\0\x1a" | fold_version u32 | log_id [16] | seq u64 | body_len u64 | body | crc u32`
//! (little-endian; the CRC covers everything before it). The body starts with a string table
//! (every distinct id and ref once), then the byte length of each of six sections (requests,
//! runs, keys, catalog, readers, the rest), then the sections: every projection with strings as
//! table indexes, so loading makes one allocation per distinct string, and the sections decode
//! on two threads. Lengths and counts are checked against the bytes that remain before anything
//! is allocated.

use rustc_hash::FxHashMap;

use super::*;

/// Bumped with every change to what the fold computes or to this encoding: older snapshots are
/// then ignored (and rebuilt), never misread.
pub const FOLD_VERSION: u32 = 2;
/// Magic bytes of a snapshot file.
pub const MAGIC: [u8; 8] = *b"DBSNAP\x00\x1a";
const HEADER: usize = 8 + 4 + 16 + 8 + 8;
/// Sections of the body after the string table: requests, runs, keys, catalog, readers, and the
/// rest (engine records, last seq and timestamp, last delegation).
const SECTIONS: usize = 6;

/// Why a snapshot was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("snapshot {path}: {why}")]
pub struct SnapshotError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub why: String,
}

#[derive(Default)]
struct Writer {
    out: Vec<u8>,
    syms: FxHashMap<Sym, u32>,
    table: Vec<Sym>,
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
    fn sym(&mut self, s: &Sym) {
        let next = self.table.len() as u32;
        let i = *self.syms.entry(s.clone()).or_insert_with(|| {
            self.table.push(s.clone());
            next
        });
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
}

/// Sorted keys, so a snapshot's bytes do not depend on hash order.
fn sorted<V>(m: &FxHashMap<Sym, V>) -> Vec<(&Sym, &V)> {
    let mut v: Vec<(&Sym, &V)> = m.iter().collect();
    v.sort_unstable_by(|a, b| a.0.cmp(b.0));
    v
}

/// Encodes `state` as a snapshot file for log `log_id`.
pub fn encode(state: &State, log_id: [u8; 16]) -> Vec<u8> {
    let mut w = Writer::default();
    // Section boundaries in `w.out`, so decoding can split the body across threads.
    let mut ends = Vec::with_capacity(SECTIONS);
    let reqs = sorted(&state.requests);
    w.len(reqs.len());
    for (_, r) in reqs {
        w.sym(&r.id);
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
    ends.push(w.out.len());
    let runs = sorted(&state.runs);
    w.len(runs.len());
    for (_, r) in runs {
        w.sym(&r.id);
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
    }
    ends.push(w.out.len());
    let keys = sorted(&state.keys);
    w.len(keys.len());
    for (req, m) in keys {
        w.sym(req);
        let ks = sorted(m);
        w.len(ks.len());
        for (p, k) in ks {
            w.sym(p);
            w.i32(k.status as i32);
            w.u64(k.seq);
            w.sym(&k.job_run_id);
            w.str(&k.message);
        }
    }
    ends.push(w.out.len());
    let cat = sorted(&state.catalog);
    w.len(cat.len());
    for (p, c) in cat {
        w.sym(p);
        w.fact(&c.by_run);
        w.fact(&c.latest);
        w.len(c.available.len());
        for (s, r) in &c.available {
            w.u64(*s);
            w.sym(r);
        }
    }
    ends.push(w.out.len());
    let readers = sorted(&state.readers);
    w.len(readers.len());
    for (p, v) in readers {
        w.sym(p);
        w.syms(v);
    }
    ends.push(w.out.len());
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
    ends.push(w.out.len());
    // The string table goes first in the body, then the length of every section.
    let mut body = Vec::with_capacity(w.out.len() + w.table.len() * 40 + 8 * SECTIONS);
    body.extend_from_slice(&(w.table.len() as u32).to_le_bytes());
    for s in &w.table {
        body.extend_from_slice(&(s.len() as u32).to_le_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    let mut start = 0;
    for end in ends {
        body.extend_from_slice(&((end - start) as u64).to_le_bytes());
        start = end;
    }
    body.extend_from_slice(&w.out);
    let mut file = Vec::with_capacity(HEADER + body.len() + 4);
    file.extend_from_slice(&MAGIC);
    file.extend_from_slice(&FOLD_VERSION.to_le_bytes());
    file.extend_from_slice(&log_id);
    file.extend_from_slice(&state.last_seq.to_le_bytes());
    file.extend_from_slice(&(body.len() as u64).to_le_bytes());
    file.extend_from_slice(&body);
    let crc = crc32fast::hash(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    file
}

struct Reader<'a> {
    b: &'a [u8],
    table: &'a [Sym],
}

type R<T> = Result<T, String>;

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
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "truncated")?))
    }
    fn i32(&mut self) -> R<i32> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "truncated")?))
    }
    fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "truncated")?))
    }
    fn i64(&mut self) -> R<i64> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "truncated")?))
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
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "bad UTF-8".to_string())
    }
    fn sym(&mut self) -> R<Sym> {
        let i = self.u32()? as usize;
        self.table.get(i).cloned().ok_or_else(|| format!("string index {i} out of range"))
    }
    fn syms(&mut self) -> R<Vec<Sym>> {
        let n = self.count(4)?;
        (0..n).map(|_| self.sym()).collect()
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

/// Below this many bytes a snapshot decodes on the calling thread: a thread costs more than it
/// saves.
const PARALLEL_FROM: usize = 1 << 20;

/// Decodes a snapshot file; `expect_log` must match. Returns the state (with `last_seq` = the
/// snapshot's seq).
pub fn decode(file: &[u8], expect_log: [u8; 16]) -> Result<State, String> {
    decode_on(file, expect_log, file.len() >= PARALLEL_FROM)
}

/// [`decode`], with its sections split across two threads or not.
pub(crate) fn decode_on(
    file: &[u8],
    expect_log: [u8; 16],
    two_threads: bool,
) -> Result<State, String> {
    if file.len() < HEADER + 4 || file[0..8] != MAGIC {
        return Err("not a snapshot".into());
    }
    let (head, crc) = file.split_at(file.len() - 4);
    if crc32fast::hash(head) != u32::from_le_bytes(crc.try_into().map_err(|_| "short")?) {
        return Err("checksum mismatch".into());
    }
    let version = u32::from_le_bytes(file[8..12].try_into().map_err(|_| "short")?);
    if version != FOLD_VERSION {
        return Err(format!("fold version {version}, this databuild folds version {FOLD_VERSION}"));
    }
    if file[12..28] != expect_log {
        return Err("snapshot of another log".into());
    }
    let seq = u64::from_le_bytes(file[28..36].try_into().map_err(|_| "short")?);
    let body_len = u64::from_le_bytes(file[36..44].try_into().map_err(|_| "short")?) as usize;
    if HEADER + body_len != head.len() {
        return Err("body length mismatch".into());
    }
    let mut r = Reader { b: &head[HEADER..], table: &[] };
    let n = r.count(4)?;
    // Strings are not entered in the state's interner: events folded after the snapshot may
    // allocate a second copy of a string the snapshot has, which costs memory, never meaning.
    let mut table = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.count(1)?;
        let s = std::str::from_utf8(r.take(len)?).map_err(|_| "bad UTF-8 in the string table")?;
        table.push(Sym::from(s));
    }
    let mut parts = [&[][..]; SECTIONS];
    let mut lens = [0usize; SECTIONS];
    for l in &mut lens {
        *l = usize::try_from(r.u64()?).map_err(|_| "section length out of range")?;
    }
    for (part, len) in parts.iter_mut().zip(lens) {
        *part = r.take(len).map_err(|_| "a section runs past the end")?;
    }
    if !r.b.is_empty() {
        return Err("trailing bytes after the last section".into());
    }
    let table = &table[..];
    let rd = |i: usize| Reader { b: parts[i], table };
    let mut st = State::default();
    // Two threads (the machines this runs on have at least two cores): runs and readers on
    // one, the rest on this one; about half the work each.
    let other = || Ok::<_, String>((runs(&mut rd(1))?, readers(&mut rd(4))?));
    let mine = |st: &mut State| -> R<()> {
        st.requests = requests(&mut rd(0))?;
        st.keys = keys(&mut rd(2))?;
        st.catalog = catalog(&mut rd(3))?;
        Ok(())
    };
    let (runs, readers) = if two_threads {
        std::thread::scope(|sc| {
            let other = sc.spawn(other);
            mine(&mut st)?;
            other.join().map_err(|_| "decoding thread panicked".to_string())?
        })?
    } else {
        mine(&mut st)?;
        other()?
    };
    st.runs = runs;
    st.readers = readers;
    let mut r = rd(5);
    let n = r.count(16)?;
    for _ in 0..n {
        st.engine.push(EngineRecord { seq: r.u64()?, kind: r.en()?, message: r.str()? });
    }
    st.last_seq = r.u64()?;
    st.last_ts = r.i64()?;
    st.last_delegation = if r.bool()? { Some((r.u64()?, r.sym()?, r.sym()?)) } else { None };
    if st.last_seq != seq {
        return Err(format!("header says seq {seq}, body {}", st.last_seq));
    }
    if !r.b.is_empty() {
        return Err("trailing bytes".into());
    }
    Ok(st)
}

/// Checks that a section's reader consumed its whole section.
fn done<T>(r: &Reader<'_>, what: &str, v: T) -> R<T> {
    if r.b.is_empty() { Ok(v) } else { Err(format!("trailing bytes in the {what} section")) }
}

fn requests(r: &mut Reader<'_>) -> R<FxHashMap<Sym, Request>> {
    let n = r.count(30)?;
    let mut out = FxHashMap::default();
    out.reserve(n);
    for _ in 0..n {
        let id = r.sym()?;
        let req = Request {
            id: id.clone(),
            status: r.en()?,
            requested: r.syms()?,
            force: r.bool()?,
            graph_digest: r.str()?,
            received_seq: r.u64()?,
            received_ts: r.i64()?,
            ended: r.opt_pair()?,
            message: r.str()?,
            plan_seq: r.opt_pair()?.map(|(s, _)| s),
            history: {
                let k = r.count(12)?;
                (0..k).map(|_| Ok((r.en()?, r.u64()?))).collect::<R<Vec<_>>>()?
            },
            runs: r.syms()?,
            live_runs: r.u32()?,
            cancelling: r.bool()?,
        };
        out.insert(id, req);
    }
    done(r, "requests", out)
}

fn runs(r: &mut Reader<'_>) -> R<FxHashMap<Sym, Run>> {
    let n = r.count(40)?;
    let mut out = FxHashMap::default();
    out.reserve(n);
    for _ in 0..n {
        let id = r.sym()?;
        let run = Run {
            id: id.clone(),
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
            inputs: {
                let k = r.count(12)?;
                (0..k)
                    .map(|_| {
                        Ok(RunInput {
                            partition: r.sym()?,
                            dep_type: r.en()?,
                            producer_run: r.sym()?,
                        })
                    })
                    .collect::<R<Vec<_>>>()?
            },
        };
        out.insert(id, run);
    }
    done(r, "runs", out)
}

fn keys(r: &mut Reader<'_>) -> R<FxHashMap<Sym, FxHashMap<Sym, Key>>> {
    let n = r.count(8)?;
    let mut out = FxHashMap::default();
    out.reserve(n);
    for _ in 0..n {
        let req = r.sym()?;
        let k = r.count(24)?;
        let mut m = FxHashMap::default();
        m.reserve(k);
        for _ in 0..k {
            let p = r.sym()?;
            m.insert(
                p,
                Key { status: r.en()?, seq: r.u64()?, job_run_id: r.sym()?, message: r.str()? },
            );
        }
        out.insert(req, m);
    }
    done(r, "keys", out)
}

fn catalog(r: &mut Reader<'_>) -> R<FxHashMap<Sym, CatalogEntry>> {
    let n = r.count(10)?;
    let mut out = FxHashMap::default();
    out.reserve(n);
    for _ in 0..n {
        let p = r.sym()?;
        let by_run = r.fact()?;
        let latest = r.fact()?;
        let k = r.count(12)?;
        let available = (0..k).map(|_| Ok((r.u64()?, r.sym()?))).collect::<R<Vec<_>>>()?;
        out.insert(p, CatalogEntry { by_run, latest, available });
    }
    done(r, "catalog", out)
}

fn readers(r: &mut Reader<'_>) -> R<FxHashMap<Sym, Vec<Sym>>> {
    let n = r.count(8)?;
    let mut out = FxHashMap::default();
    out.reserve(n);
    for _ in 0..n {
        let p = r.sym()?;
        out.insert(p, r.syms()?);
    }
    done(r, "readers", out)
}
