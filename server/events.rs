//! Following the log for a client: StreamEvents and the SSE stream.
//!
//! Each subscriber is a task with its own log reader and a small bounded channel to its client.
//! It reads durable events straight from the log file, from the seq the client asked for, in
//! chunks; once caught up it waits for the durable end to move. So a subscriber that lags only
//! falls behind in the file (nothing is buffered for it, nothing is dropped), catching up needs
//! no second mechanism, and the engine never waits for a client: it does not know they exist.

use std::sync::Arc;

use prost::Message;
use tokio::sync::mpsc;

use crate::proto::BuildEvent;
use crate::server::Shared;

/// Events read per chunk before the task yields to its client (bounds the work between checks
/// that the client is still there).
const CHUNK_EVENTS: u64 = 4096;
/// Events a subscriber's channel holds: its only buffer.
const CHANNEL_EVENTS: usize = 256;

/// Which events a subscriber wants.
#[derive(Clone, Debug, Default)]
pub struct Subscription {
    /// The first seq (0 and 1: the first event).
    pub since: u64,
    /// Keep following new durable events.
    pub follow: bool,
    /// Only this build request's events.
    pub build_request_id: Option<String>,
}

/// A stream item: an event and its seq, or why the stream ended early.
pub type Item = Result<(u64, BuildEvent), String>;

/// Starts a subscriber: its events arrive on the receiver, in seq order, each once. The stream
/// ends when the log is read (without `follow`), when the server stops, or when the receiver is
/// dropped.
pub fn subscribe(shared: Arc<Shared>, sub: Subscription) -> mpsc::Receiver<Item> {
    let (tx, rx) = mpsc::channel(CHANNEL_EVENTS);
    tokio::spawn(async move {
        if let Err(e) = follow(&shared, sub, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

async fn follow(shared: &Shared, sub: Subscription, tx: &mpsc::Sender<Item>) -> Result<(), String> {
    let mut reader =
        shared.store.reader().map_err(|e| format!("cannot read the event log: {e}"))?;
    let mut durable = shared.store.subscribe();
    let mut stopping = shared.stopping.subscribe();
    let mut next = sub.since.max(1);
    loop {
        reader.refresh().map_err(|e| format!("cannot read the event log: {e}"))?;
        let end = reader.next_seq();
        while next < end {
            let upto = (next + CHUNK_EVENTS).min(end);
            let chunk = read_chunk(&reader, next, upto, sub.build_request_id.as_deref())?;
            next = upto;
            for item in chunk {
                if tx.send(Ok(item)).await.is_err() {
                    return Ok(()); // the client hung up
                }
            }
            if *stopping.borrow() {
                return Ok(());
            }
        }
        if !sub.follow {
            return Ok(());
        }
        tokio::select! {
            changed = durable.changed() => if changed.is_err() { return Ok(()) },
            _ = stopping.wait_for(|s| *s) => return Ok(()),
            _ = tx.closed() => return Ok(()),
        }
    }
}

/// The events with seq in `from..upto` (those of `build` only, if given).
fn read_chunk(
    reader: &databuild_log::Reader,
    from: u64,
    upto: u64,
    build: Option<&str>,
) -> Result<Vec<(u64, BuildEvent)>, String> {
    struct Stop(Option<String>);
    impl From<databuild_log::ReadError> for Stop {
        fn from(e: databuild_log::ReadError) -> Stop {
            Stop(Some(format!("the event log cannot be read: {e}; run `databuild verify`")))
        }
    }
    let mut out = Vec::new();
    let r = reader.for_each_from(from, |seq, bytes| {
        if seq >= upto {
            return Err(Stop(None));
        }
        let ev = BuildEvent::decode(bytes)
            .map_err(|e| Stop(Some(format!("event {seq} cannot be decoded: {e}"))))?;
        if build.is_none_or(|b| ev.build_request_id == b) {
            out.push((seq, ev));
        }
        Ok(())
    });
    match r {
        Ok(()) | Err(Stop(None)) => Ok(out),
        Err(Stop(Some(e))) => Err(e),
    }
}
