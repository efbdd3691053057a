//! Readers: any number, in any process, also while the writer appends. A reader never reads past
//! the durable end it was given, and checks every frame it reads (checksum, continuity, padding).
//!
//! The durable end comes from the writer (in-process readers), from TAIL (other processes), or,
//! without a valid TAIL, from scanning to the end of the valid prefix. A reader never modifies the
//! log: a torn tail it sees is reported in [`Reader::torn_tail`], and cut only by the next writer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::checkpoint;
use crate::error::{Corruption, CorruptionKind, OpenError, ReadError, io_err, read_io};
use crate::format::{
    FRAME_HEADER_BYTES, FrameProblem, Records, SEGMENT_HEADER_BYTES, TAIL_BYTES, TailHint,
    check_frame,
};
use crate::fs::{Fs, ReadMode, RealFs};
use crate::map::SegmentBytes;
use crate::segment::{self, EndClass, SegmentMeta, TAIL_FILE, TornTail, all_zero};
use crate::writer::Shared;
use crate::{End, LogId};

/// How to open a reader.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    /// Map segments, or read them into memory.
    pub mode: ReadMode,
    /// The file system.
    pub fs: Arc<dyn Fs>,
    /// Stop at the durable end the TAIL hint names (the default). Without it, or without a valid
    /// TAIL, the reader scans to the end of the valid prefix.
    pub trust_tail: bool,
}

impl Default for ReadOptions {
    fn default() -> ReadOptions {
        ReadOptions { mode: ReadMode::Mmap, fs: Arc::new(RealFs), trust_tail: true }
    }
}

pub(crate) enum EndSource {
    Writer(Arc<Shared>),
    Tail,
    Scan,
}

impl std::fmt::Debug for EndSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EndSource::Writer(_) => "Writer",
            EndSource::Tail => "Tail",
            EndSource::Scan => "Scan",
        })
    }
}

/// How much of a segment was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bound {
    /// A sealed segment, whole.
    Whole,
    /// The end segment, up to this offset.
    Upto(u64),
}

/// `(seq, offset)` of a frame every [`segment::INDEX_SPACING_BYTES`] of a segment.
type SparseIndex = Arc<Vec<(u64, u64)>>;

#[derive(Debug, Default)]
struct Cache {
    /// The most recently loaded segment: (id, how much of it, bytes).
    loaded: Option<(u64, Bound, Arc<SegmentBytes>)>,
    /// Sparse `(seq, offset)` indexes of segments scanned whole, by segment id, with the length
    /// they cover.
    index: Vec<Option<(u64, SparseIndex)>>,
}

/// A read-only view of a log up to its durable end.
#[derive(Debug)]
pub struct Reader {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    mode: ReadMode,
    log_id: Option<LogId>,
    segments: Vec<SegmentMeta>,
    end: End,
    source: EndSource,
    tail_log_id: Option<LogId>,
    torn: Option<TornTail>,
    cache: Mutex<Cache>,
}

fn read_tail(fs: &dyn Fs, dir: &Path) -> Option<TailHint> {
    let path = dir.join(TAIL_FILE);
    let f = fs.open_read(&path).ok()?;
    let mut buf = [0u8; TAIL_BYTES];
    let got = f.read_at(&mut buf, 0).ok()?;
    TailHint::decode(&buf[..got])
}

impl Reader {
    /// Opens the log in `dir` for reading. A missing directory or one without segments is an
    /// empty log.
    pub fn open(dir: &Path, opts: ReadOptions) -> Result<Reader, OpenError> {
        let source = if opts.trust_tail { EndSource::Tail } else { EndSource::Scan };
        Reader::open_with_source(dir, opts.fs, opts.mode, source)
    }

    pub(crate) fn open_with_source(
        dir: &Path,
        fs: Arc<dyn Fs>,
        mode: ReadMode,
        source: EndSource,
    ) -> Result<Reader, OpenError> {
        let mut r = Reader {
            fs,
            dir: dir.to_path_buf(),
            mode,
            log_id: None,
            segments: Vec::new(),
            end: End { next_seq: 1, segment_id: 0, offset: SEGMENT_HEADER_BYTES as u64 },
            source,
            tail_log_id: None,
            torn: None,
            cache: Mutex::new(Cache::default()),
        };
        if !r.fs.exists(dir).map_err(io_err("stat", dir))? {
            return Ok(r);
        }
        r.refresh()?;
        Ok(r)
    }

    /// Picks up batches that became durable since the last call (and new segments). Returns
    /// whether the end moved.
    pub fn refresh(&mut self) -> Result<bool, OpenError> {
        let before = self.end;
        // Read the end before listing: a segment the end names is always listed by then, since
        // the writer creates a segment before it publishes an end inside it.
        let published = match &self.source {
            EndSource::Writer(shared) => Some(shared.end()),
            // TAIL bounds what a live writer has made durable. With no writer alive there is no
            // commit in flight, and TAIL may lag the last one (the writer died between its fsync
            // and the TAIL write): then the end is found by scanning, as the next writer would.
            EndSource::Tail
                if self.fs.lock_held(&self.dir.join(crate::segment::LOCK_FILE)).unwrap_or(true) =>
            {
                let tail = read_tail(&*self.fs, &self.dir);
                self.tail_log_id = tail.map(|t| t.log_id);
                tail.map(|t| End {
                    next_seq: t.next_seq,
                    segment_id: t.segment_id,
                    offset: t.offset,
                })
            }
            EndSource::Tail => None,
            EndSource::Scan => None,
        };
        let segments = segment::list_segments(&*self.fs, &self.dir)?;
        let Some(last) = segments.last().cloned() else {
            let cp = checkpoint::read(&*self.fs, &self.dir, None)?;
            if cp.slot.is_some() {
                return Err(OpenError::Corruption(Corruption {
                    segment: 0,
                    offset: 0,
                    seq: 1,
                    kind: CorruptionKind::MissingSegment,
                }));
            }
            return Ok(false);
        };
        let log_id = last.header.log_id;
        if self.log_id.is_some_and(|id| id != log_id) {
            return Err(OpenError::Corruption(Corruption {
                segment: last.id,
                offset: 0,
                seq: last.header.base_seq,
                kind: CorruptionKind::SegmentHeader("the log was replaced while reading".into()),
            }));
        }
        self.log_id = Some(log_id);
        let tail_ok = match &self.source {
            EndSource::Tail => self.tail_log_id == Some(log_id),
            _ => true,
        };
        let end = match published {
            Some(e)
                if tail_ok
                    && e.segment_id == last.id
                    && e.next_seq >= last.header.base_seq
                    && e.offset >= SEGMENT_HEADER_BYTES as u64 =>
            {
                e
            }
            // In-process, the end may still be in the previous segment for a moment.
            Some(e) if matches!(self.source, EndSource::Writer(_)) && e.segment_id < last.id => e,
            _ => self.scan_end(&last, log_id)?,
        };
        // The end never moves backwards for one reader.
        if end.next_seq >= self.end.next_seq || self.segments.is_empty() {
            self.end = end;
        }
        self.segments = segments;
        Ok(self.end != before)
    }

    fn scan_end(&mut self, last: &SegmentMeta, log_id: LogId) -> Result<End, OpenError> {
        // Bytes past the durable end may still be written, so they are read, never mapped.
        let f = self.fs.open_read(&last.path).map_err(io_err("open", &last.path))?;
        let len = f.len().map_err(io_err("stat", &last.path))?;
        let bytes = SegmentBytes::read(&*f, len).map_err(io_err("read", &last.path))?;
        let scan = segment::scan(
            &bytes,
            &log_id,
            SEGMENT_HEADER_BYTES as u64,
            last.header.base_seq,
            |_, _| {},
        );
        let cp = checkpoint::read(&*self.fs, &self.dir, Some(&log_id))?;
        match segment::classify_end(last.id, &bytes, &log_id, &scan, cp.slot.as_ref()) {
            EndClass::Corrupt(c) => return Err(OpenError::Corruption(c)),
            EndClass::Torn(t) => self.torn = Some(t),
            EndClass::Clean => self.torn = None,
        }
        Ok(End { next_seq: scan.next_seq, segment_id: last.id, offset: scan.end_offset })
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log's id (`None` for an empty log).
    pub fn log_id(&self) -> Option<LogId> {
        self.log_id
    }

    /// The first sequence number after the readable end (1 for an empty log).
    pub fn next_seq(&self) -> u64 {
        self.end.next_seq
    }

    /// The readable end.
    pub fn end(&self) -> End {
        self.end
    }

    /// Segments of the log.
    pub fn segments(&self) -> &[SegmentMeta] {
        &self.segments
    }

    /// A torn tail seen past the end (only when the end was found by scanning).
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn.as_ref()
    }

    /// The bytes of segment `idx` up to its readable end, cached. A sealed segment is loaded
    /// whole; the end segment up to the end (so a cached copy of the end segment is stale once the
    /// end moves or the segment is sealed).
    fn load(&self, idx: usize) -> Result<(Arc<SegmentBytes>, u64), ReadError> {
        let seg = &self.segments[idx];
        let want =
            if seg.id == self.end.segment_id { Bound::Upto(self.end.offset) } else { Bound::Whole };
        {
            let cache = self.cache.lock();
            if let Some((id, bound, bytes)) = &cache.loaded
                && *id == seg.id
                && *bound == want
            {
                return Ok((bytes.clone(), bytes.len() as u64));
            }
        }
        let len = match want {
            Bound::Upto(offset) => offset,
            Bound::Whole => self
                .fs
                .open_read(&seg.path)
                .and_then(|f| f.len())
                .map_err(read_io("stat", &seg.path))?,
        };
        let bytes =
            Arc::new(self.fs.load(&seg.path, len, self.mode).map_err(read_io("read", &seg.path))?);
        if (bytes.len() as u64) < len {
            return Err(ReadError::Corruption(Corruption {
                segment: seg.id,
                offset: bytes.len() as u64,
                seq: seg.header.base_seq,
                kind: CorruptionKind::ShorterThanTail,
            }));
        }
        let n = bytes.len() as u64;
        self.cache.lock().loaded = Some((seg.id, want, bytes.clone()));
        Ok((bytes, n))
    }

    /// The sparse index of segment `idx`, scanning (and so checking) it whole the first time.
    fn index(&self, idx: usize, bytes: &[u8]) -> Result<Arc<Vec<(u64, u64)>>, ReadError> {
        let seg = &self.segments[idx];
        let len = bytes.len() as u64;
        {
            let cache = self.cache.lock();
            if let Some(Some((covered, ix))) = cache.index.get(idx)
                && *covered == len
            {
                return Ok(ix.clone());
            }
        }
        let log_id = self.log_id.unwrap_or(LogId([0; 16]));
        let scan = segment::scan(
            bytes,
            &log_id,
            SEGMENT_HEADER_BYTES as u64,
            seg.header.base_seq,
            |_, _| {},
        );
        self.check_segment_end(idx, bytes, scan.end_offset, scan.next_seq, scan.stop)?;
        let ix = Arc::new(scan.index);
        let mut cache = self.cache.lock();
        if cache.index.len() <= idx {
            cache.index.resize(idx + 1, None);
        }
        cache.index[idx] = Some((len, ix.clone()));
        Ok(ix)
    }

    /// Checks how the walk of segment `idx` ended: a sealed segment ends cleanly where its
    /// successor begins; the end segment ends exactly at the readable end.
    fn check_segment_end(
        &self,
        idx: usize,
        bytes: &[u8],
        offset: u64,
        seq: u64,
        stop: Option<segment::Stop>,
    ) -> Result<(), Corruption> {
        let seg = &self.segments[idx];
        if seg.id == self.end.segment_id {
            if offset == self.end.offset && seq == self.end.next_seq {
                return Ok(());
            }
            let kind = match stop {
                Some(segment::Stop::Bad(p)) => kind_of(p),
                _ => CorruptionKind::ShorterThanTail,
            };
            return Err(Corruption { segment: seg.id, offset, seq, kind });
        }
        let scan = segment::Scan { end_offset: offset, next_seq: seq, stop, ..Default::default() };
        let next_base = self.segments.get(idx + 1).map_or(seq, |n| n.header.base_seq);
        let _ = bytes;
        segment::check_sealed(seg.id, &scan, next_base)
    }

    /// Frames holding sequence numbers `seq` and later, up to the readable end. The first frame
    /// may start before `seq` (use [`Frame::records_from`]).
    pub fn frames_from(&self, seq: u64) -> Frames<'_> {
        let seq = seq.max(1);
        let idx = self.segments.partition_point(|s| s.header.base_seq <= seq).saturating_sub(1);
        Frames {
            reader: self,
            idx,
            want: seq,
            cur: None,
            done: self.segments.is_empty()
                || seq >= self.end.next_seq
                || self.segments.get(idx).is_none_or(|s| s.id > self.end.segment_id),
        }
    }

    /// Calls `f` with every record from `seq` to the readable end, in order. Stops at the first
    /// error, `f`'s or the log's.
    pub fn for_each_from<E: From<ReadError>>(
        &self,
        seq: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut failed: Option<E> = None;
        self.walk(seq, |frame| {
            for (s, rec) in
                (frame.header.first_seq..).zip(Records::new(frame.body(), frame.header.count))
            {
                let result = match rec {
                    Ok(_) if s < seq => continue,
                    Ok(r) => f(s, r),
                    Err(()) => Err(E::from(ReadError::Corruption(Corruption {
                        segment: frame.segment,
                        offset: frame.offset,
                        seq: frame.header.first_seq,
                        kind: CorruptionKind::RecordFraming,
                    }))),
                };
                if let Err(e) = result {
                    failed = Some(e);
                    return false;
                }
            }
            true
        })?;
        failed.map_or(Ok(()), Err)
    }

    /// Checks every frame up to the readable end, without decoding records: `(frames, records)`.
    pub fn check_all(&self) -> Result<(u64, u64), ReadError> {
        let (mut frames, mut records) = (0u64, 0u64);
        self.walk(1, |frame| {
            frames += 1;
            records += u64::from(frame.header.count);
            true
        })?;
        Ok((frames, records))
    }

    /// Walks the checked frames holding `seq` and later, segment by segment, calling `visit` with
    /// each until it returns false. Segments walked whole get their sparse index cached on the way.
    pub fn walk(
        &self,
        seq: u64,
        mut visit: impl FnMut(FrameAt<'_>) -> bool,
    ) -> Result<(), ReadError> {
        let seq = seq.max(1);
        if self.segments.is_empty() || seq >= self.end.next_seq {
            return Ok(());
        }
        let log_id = self.log_id.unwrap_or(LogId([0; 16]));
        let first = self.segments.partition_point(|s| s.header.base_seq <= seq).saturating_sub(1);
        for idx in first..self.segments.len() {
            let seg = &self.segments[idx];
            if seg.id > self.end.segment_id {
                break;
            }
            let (bytes, _) = self.load(idx)?;
            let (mut offset, mut start_seq) = (SEGMENT_HEADER_BYTES as u64, seg.header.base_seq);
            if idx == first && seq > start_seq {
                let ix = self.index(idx, &bytes)?;
                if let Some(&(s, o)) =
                    ix.get(ix.partition_point(|&(s, _)| s <= seq).saturating_sub(1))
                {
                    (start_seq, offset) = (s, o);
                }
            }
            let whole = offset == SEGMENT_HEADER_BYTES as u64;
            let scan = segment::scan_until(&bytes, &log_id, offset, start_seq, |header, offset| {
                header.end_seq() <= seq
                    || visit(FrameAt { segment: seg.id, offset, header, bytes: &bytes })
            });
            if scan.stop == Some(segment::Stop::Halted) {
                return Ok(());
            }
            self.check_segment_end(idx, &bytes, scan.end_offset, scan.next_seq, scan.stop)
                .map_err(|c| ReadError::Corruption(Corruption { segment: seg.id, ..c }))?;
            if whole {
                let mut cache = self.cache.lock();
                if cache.index.len() <= idx {
                    cache.index.resize(idx + 1, None);
                }
                cache.index[idx] = Some((bytes.len() as u64, Arc::new(scan.index)));
            }
            if seg.id == self.end.segment_id {
                break;
            }
        }
        Ok(())
    }
}

fn kind_of(p: FrameProblem) -> CorruptionKind {
    match p {
        FrameProblem::Truncated => CorruptionKind::Truncated,
        FrameProblem::ZeroHeader => CorruptionKind::ShorterThanTail,
        FrameProblem::BadHeader => CorruptionKind::BadFrameHeader,
        FrameProblem::LengthPastEnd => CorruptionKind::LengthPastEnd,
        FrameProblem::Checksum => CorruptionKind::Checksum,
        FrameProblem::SeqGap { found } => CorruptionKind::SeqGap { found },
        FrameProblem::Padding => CorruptionKind::Padding,
    }
}

struct Cursor {
    bytes: Arc<SegmentBytes>,
    offset: u64,
    seq: u64,
}

/// Iterator over checked frames; see [`Reader::frames_from`].
pub struct Frames<'r> {
    reader: &'r Reader,
    idx: usize,
    want: u64,
    cur: Option<Cursor>,
    done: bool,
}

impl std::fmt::Debug for Frames<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frames").field("idx", &self.idx).field("want", &self.want).finish()
    }
}

impl Frames<'_> {
    fn start_segment(&mut self) -> Result<Cursor, ReadError> {
        let r = self.reader;
        let seg = &r.segments[self.idx];
        let (bytes, _) = r.load(self.idx)?;
        let mut offset = SEGMENT_HEADER_BYTES as u64;
        let mut seq = seg.header.base_seq;
        if self.want > seq {
            let ix = r.index(self.idx, &bytes)?;
            let at = ix.partition_point(|&(s, _)| s <= self.want).saturating_sub(1);
            if let Some(&(s, o)) = ix.get(at) {
                seq = s;
                offset = o;
            }
        }
        Ok(Cursor { bytes, offset, seq })
    }

    fn step(&mut self) -> Result<Option<Frame>, ReadError> {
        let r = self.reader;
        loop {
            if self.cur.is_none() {
                self.cur = Some(self.start_segment()?);
            }
            let Some(cur) = self.cur.as_mut() else { return Ok(None) };
            let seg = &r.segments[self.idx];
            let log_id = r.log_id.unwrap_or(LogId([0; 16]));
            let at_end_segment = seg.id == r.end.segment_id;
            let segment_done = if at_end_segment {
                cur.offset >= r.end.offset
            } else {
                cur.offset as usize >= cur.bytes.len()
            };
            if !segment_done {
                match check_frame(&cur.bytes, cur.offset as usize, &log_id, cur.seq) {
                    Ok(h) => {
                        let frame = Frame {
                            segment: seg.id,
                            offset: cur.offset,
                            first_seq: h.first_seq,
                            count: h.count,
                            crc: h.crc,
                            body_start: cur.offset as usize + FRAME_HEADER_BYTES,
                            body_len: h.len as usize,
                            bytes: cur.bytes.clone(),
                        };
                        cur.offset += h.frame_bytes();
                        cur.seq = h.end_seq();
                        if cur.seq <= self.want {
                            continue;
                        }
                        return Ok(Some(frame));
                    }
                    Err(FrameProblem::ZeroHeader)
                        if !at_end_segment && all_zero(&cur.bytes[cur.offset as usize..]) => {}
                    Err(p) => {
                        return Err(ReadError::Corruption(Corruption {
                            segment: seg.id,
                            offset: cur.offset,
                            seq: cur.seq,
                            kind: kind_of(p),
                        }));
                    }
                }
            }
            // This segment is finished: check how it ends, then move on.
            let stop = if cur.offset as usize >= cur.bytes.len() {
                Some(segment::Stop::End)
            } else {
                Some(segment::Stop::Zeros)
            };
            let (offset, seq) = (cur.offset, cur.seq);
            let bytes = cur.bytes.clone();
            r.check_segment_end(self.idx, &bytes, offset, seq, stop)?;
            if at_end_segment || self.idx + 1 >= r.segments.len() {
                return Ok(None);
            }
            self.idx += 1;
            self.cur = None;
        }
    }
}

impl Iterator for Frames<'_> {
    type Item = Result<Frame, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(f)) => Some(Ok(f)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// A checked frame seen by [`Reader::walk`], borrowed from its segment.
#[derive(Clone, Copy, Debug)]
pub struct FrameAt<'a> {
    /// Segment id.
    pub segment: u64,
    /// Byte offset in the segment.
    pub offset: u64,
    /// The frame header.
    pub header: &'a crate::format::FrameHeader,
    bytes: &'a [u8],
}

impl<'a> FrameAt<'a> {
    /// The frame body (records, varint-length-prefixed).
    pub fn body(&self) -> &'a [u8] {
        &self.bytes[self.offset as usize + FRAME_HEADER_BYTES..][..self.header.len as usize]
    }
}

/// One checked frame: a batch of records with consecutive sequence numbers.
#[derive(Clone, Debug)]
pub struct Frame {
    segment: u64,
    offset: u64,
    first_seq: u64,
    count: u32,
    crc: u32,
    body_start: usize,
    body_len: usize,
    bytes: Arc<SegmentBytes>,
}

impl Frame {
    /// Sequence number of the first record.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Records in the frame.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The frame's checksum: with [`Frame::position`] it names this exact frame, so a reader can
    /// tell a frame from another one written later at the same place (after a repair, say).
    pub fn crc(&self) -> u32 {
        self.crc
    }

    /// Segment id and byte offset of the frame.
    pub fn position(&self) -> (u64, u64) {
        (self.segment, self.offset)
    }

    /// The frame body (records, varint-length-prefixed).
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.body_start..self.body_start + self.body_len]
    }

    /// The records with their sequence numbers.
    pub fn records(&self) -> RecordIter<'_> {
        RecordIter {
            frame: self,
            inner: Records::new(self.body(), self.count),
            seq: self.first_seq,
            from: 0,
        }
    }

    /// The records with sequence numbers `from` and later.
    pub fn records_from(&self, from: u64) -> RecordIter<'_> {
        RecordIter { from, ..self.records() }
    }
}

/// Records of a frame; see [`Frame::records`].
#[derive(Debug)]
pub struct RecordIter<'f> {
    frame: &'f Frame,
    inner: Records<'f>,
    seq: u64,
    from: u64,
}

impl<'f> Iterator for RecordIter<'f> {
    type Item = Result<(u64, &'f [u8]), Corruption>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let rec = self.inner.next()?;
            let seq = self.seq;
            self.seq += 1;
            match rec {
                Ok(bytes) if seq >= self.from => return Some(Ok((seq, bytes))),
                Ok(_) => continue,
                Err(()) => {
                    return Some(Err(Corruption {
                        segment: self.frame.segment,
                        offset: self.frame.offset,
                        seq: self.frame.first_seq,
                        kind: CorruptionKind::RecordFraming,
                    }));
                }
            }
        }
    }
}
