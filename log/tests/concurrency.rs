//! Protects group commit under concurrency: with many appenders (threads and async tasks) and a
//! reader following the tail at the same time, every acknowledged record is read back at its seq,
//! in order, exactly once; each appender's batches keep their submission order; and the reader
//! only ever sees a gapless, growing prefix.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use databuild_log::{Batch, ReadMode, ReadOptions, Reader, Writer};

#[test]
fn many_threads_appending_at_once_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = Writer::open(dir.path(), opts(real(), 64 << 10)).unwrap();
    let w = Arc::new(w);
    const THREADS: usize = 32;
    const BATCHES: usize = 60;
    let done = Arc::new(AtomicBool::new(false));
    let follower = {
        let path = dir.path().to_path_buf();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut r = Reader::open(&path, ReadOptions::default()).unwrap();
            let mut seen = 0u64;
            let mut refreshes = 0;
            loop {
                let finished = done.load(Ordering::SeqCst);
                r.refresh().unwrap();
                r.for_each_from(seen + 1, |seq, _| -> Result<(), databuild_log::ReadError> {
                    assert_eq!(seq, seen + 1, "the follower sees a gapless prefix");
                    seen = seq;
                    Ok(())
                })
                .unwrap();
                refreshes += 1;
                if finished {
                    return (seen, refreshes);
                }
                std::thread::yield_now();
            }
        })
    };
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let w = w.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0..BATCHES {
                    let n = 1 + (t + i) % 3;
                    let mut b = Batch::new();
                    let recs: Vec<Vec<u8>> =
                        (0..n).map(|k| format!("t{t}-b{i}-r{k}").into_bytes()).collect();
                    for r in &recs {
                        b.push(r);
                    }
                    let range = w.append(b).unwrap();
                    assert_eq!(range.len(), n as u64);
                    acked.push((range.first, recs));
                }
                acked
            })
        })
        .collect();
    let mut expect: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for h in handles {
        let acked = h.join().unwrap();
        assert!(acked.windows(2).all(|p| p[0].0 < p[1].0), "one appender's batches stay in order");
        for (first, recs) in acked {
            for (k, r) in recs.into_iter().enumerate() {
                assert!(expect.insert(first + k as u64, r).is_none(), "a seq was handed out twice");
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    let (followed, _) = follower.join().unwrap();
    Arc::try_unwrap(w).unwrap().close().unwrap();
    assert_eq!(followed, expect.len() as u64, "the follower saw everything");
    let want: Vec<Vec<u8>> = expect.into_values().collect();
    for mode in MODES {
        assert_eq!(read_all(dir.path(), real(), mode).unwrap(), want);
    }
    assert_eq!(
        want.len(),
        (0..THREADS).map(|t| (0..BATCHES).map(|i| 1 + (t + i) % 3).sum::<usize>()).sum()
    );
}

#[test]
fn async_tasks_awaiting_durability_through_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = Writer::open(dir.path(), opts(real(), 1 << 20)).unwrap();
    let w = Arc::new(w);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..64u64 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..20u64 {
                    let mut b = Batch::new();
                    b.push(format!("task{t}-{i}").as_bytes());
                    let ticket = w.submit(b).unwrap();
                    let range = ticket.durable().await.unwrap();
                    out.push((range.first, format!("task{t}-{i}").into_bytes()));
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let mut results = results;
    results.sort();
    let got = read_all(dir.path(), real(), ReadMode::Mmap).unwrap();
    assert_eq!(got.len(), results.len());
    for (i, (seq, rec)) in results.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(&got[i], rec);
    }
    Arc::try_unwrap(w).unwrap().close().unwrap();
}
