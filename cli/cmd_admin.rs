//! `verify` and `repair --truncate`: checking and (explicitly) cutting a damaged log.

use databuild::events as ev;
use databuild::proto::{BuildEvent, EngineEventKind};
use databuild::state::{State, Violation};
use databuild::store::{Store, StoreOptions};
use databuild_log::{
    CheckpointStatus, Completeness, LogId, ReadOptions, TailStatus, WriterOptions,
};
use prost::Message;
use serde_json::json;

use crate::args::{Format, RepairArgs};
use crate::context::Ctx;
use crate::exit::{self, CliError};
use crate::render::{self, out};

pub fn verify(ctx: &Ctx) -> Result<u8, CliError> {
    ctx.formats("verify", &[Format::Text, Format::Json])?;
    let mut state = State::new();
    let mut violation: Option<Violation> = None;
    let mut undecodable: Option<(u64, String)> = None;
    // Snapshots are checked against the fold: each of this history must equal the state after its
    // seq (one that differs would mislead every view: the log is then not sound as a whole).
    let reader = databuild_log::Reader::open(&ctx.log_dir, ReadOptions::default()).ok();
    let log_id = reader.as_ref().and_then(|r| r.log_id());
    let mut snaps: Vec<(u64, std::path::PathBuf)> = databuild::store::snapshots::list(&ctx.log_dir);
    snaps.reverse();
    let mut snap_notes: Vec<String> = Vec::new();
    let mut snap_problem: Option<(u64, String)> = None;
    let mut check_snapshot = |state: &State, snaps: &mut Vec<(u64, std::path::PathBuf)>| {
        while let Some((seq, path)) = snaps.first().cloned() {
            if seq > state.last_seq {
                break;
            }
            snaps.remove(0);
            if seq < state.last_seq {
                continue;
            }
            let verdict = match (std::fs::read(&path), log_id, &reader) {
                (Ok(bytes), Some(id), Some(reader)) => {
                    match databuild::store::snapshots::check_anchor(reader, &bytes, seq) {
                        Err(why) => format!("{why} (ignored; the log is folded instead)"),
                        Ok(()) => {
                            match databuild::state::snapshot::decode_owned(Box::new(bytes), id.0) {
                                Ok(s) if s == *state => continue,
                                Ok(_) => {
                                    snap_problem.get_or_insert((seq, format!(
                                    "snapshot {} differs from the fold of the log at seq {seq} (it would mislead every view: delete it, snapshots are derived and rebuilt)",
                                    path.display()
                                )));
                                    "differs from the fold of the log (it would mislead views: delete the snapshots directory, it is rebuilt)".to_string()
                                }
                                Err(e) => format!("{e} (ignored; the log is folded instead)"),
                            }
                        }
                    }
                }
                (Err(e), _, _) => e.to_string(),
                _ => "no log to compare with".to_string(),
            };
            snap_notes.push(format!("snapshot {}: {verdict}", path.display()));
        }
    };
    let report = databuild_log::verify(&ctx.log_dir, ReadOptions::default(), |seq, bytes| {
        if violation.is_some() || undecodable.is_some() {
            return;
        }
        match BuildEvent::decode(bytes) {
            Ok(e) => match state.apply(seq, &e) {
                Ok(()) => check_snapshot(&state, &mut snaps),
                Err(v) => violation = Some(v),
            },
            Err(e) => undecodable = Some((seq, e.to_string())),
        }
    })
    .map_err(|e| exit::open_error(&e, &ctx.log_dir))?;
    // A snapshot past the end was taken after that seq: the log once reached it. Only one that
    // provably belongs to another log is not evidence.
    let mut reached: Option<(u64, String)> = None;
    for (seq, path) in &snaps {
        if snapshot_of_other_log(path, log_id.or(report.log_id)) {
            snap_notes.push(format!(
                "snapshot {} is beyond the log (seq {seq}) but belongs to another log; it is ignored",
                path.display()
            ));
        } else if reached.as_ref().is_none_or(|r| *seq > r.0) {
            reached = Some((*seq, format!("snapshot {} was taken at seq {seq}", path.display())));
        }
    }
    if let Completeness::TailBeyond(t) = report.completeness
        && reached.as_ref().is_none_or(|r| t.next_seq - 1 > r.0)
    {
        reached = Some((
            t.next_seq - 1,
            format!(
                "TAIL names a durable end at seq {} (segment {}, byte {})",
                t.next_seq, t.segment_id, t.offset
            ),
        ));
    }
    let last_seq = report.next_seq.saturating_sub(1);
    let incomplete = match (&reached, report.completeness) {
        _ if !report.is_sound() => None,
        (Some((seq, why)), _) if *seq > last_seq => Some(format!(
            "acknowledged events are missing: {why}, but the log ends at seq {last_seq} (events {}..={seq} at least are gone, e.g. a deleted newest segment)",
            last_seq + 1
        )),
        (_, Completeness::Unproven) => Some(format!(
            "cannot prove the log is complete: CHECKPOINT is {}, TAIL is only a hint (never fsynced) and no snapshot lies past the end; a deleted newest segment would look exactly like this",
            if report.checkpoint == CheckpointStatus::Missing { "missing" } else { "damaged" }
        )),
        _ => None,
    };
    let sound = report.is_sound()
        && violation.is_none()
        && undecodable.is_none()
        && incomplete.is_none()
        && snap_problem.is_none();
    let events = report.records;
    let last = report.next_seq.saturating_sub(1);
    let tail = match &report.tail {
        TailStatus::Clean => "clean".to_string(),
        TailStatus::Torn(t) => format!(
            "torn tail at seq {} (segment {}, byte {}, {} bytes never acknowledged); the next writer cuts it",
            t.seq, t.segment, t.offset, t.bytes
        ),
    };
    let checkpoint = match report.checkpoint {
        CheckpointStatus::Sound => "sound",
        CheckpointStatus::OneSlotDamaged => "one slot damaged (the other is used)",
        CheckpointStatus::Damaged => "damaged (frame evidence only)",
        CheckpointStatus::Missing => "missing",
    };
    let problem = match (&report.corruption, &violation, &undecodable) {
        (Some(c), _, _) => Some(format!("damaged: {c}")),
        (None, Some(v), _) => Some(format!("illegal history: {v}")),
        (None, None, Some((seq, why))) => {
            Some(format!("event at seq {seq} does not decode: {why}"))
        }
        _ => incomplete.clone().or_else(|| snap_problem.as_ref().map(|(_, p)| p.clone())),
    };
    match ctx.format {
        Format::Json => out(&render::json(&json!({
            "sound": sound,
            "segments": report.segments.len(),
            "events": events,
            "lastSeq": last,
            "buildRequests": state.requests.len(),
            "partitions": state.catalog.len(),
            "jobRuns": state.runs.len(),
            "tail": tail,
                        "checkpoint": checkpoint,
            "snapshotWarnings": snap_notes,
            "problem": problem,
            "problemSeq": report.corruption.as_ref().map(|c| c.seq).or(violation.as_ref().map(|v| v.seq)).or(undecodable.as_ref().map(|u| u.0)).or(snap_problem.as_ref().map(|s| s.0)),
        }))),
        _ => {
            out(&format!("log        {}", ctx.log_dir.display()));
            out(&format!("segments   {}", report.segments.len()));
            out(&format!(
                "events     {events}{}",
                if events > 0 { format!(" (seq 1..{last})") } else { String::new() }
            ));
            out(&format!(
                "requests   {} build requests, {} job runs, {} partitions",
                state.requests.len(),
                state.runs.len(),
                state.catalog.len()
            ));
            out(&format!("tail       {tail}"));
            out(&format!("checkpoint {checkpoint}"));
            for n in &snap_notes {
                out(&format!("warning    {n}"));
            }
            match &problem {
                None => out(
                    "result     OK: framing, checksums, continuity and every transition are sound",
                ),
                Some(p) => out(&format!("result     {p}")),
            }
        }
    }
    if sound {
        if let TailStatus::Torn(_) = report.tail {
            eprintln!("warning: {tail}");
        }
        return Ok(exit::SUCCESS);
    }
    let what = problem.unwrap_or_default();
    if let Some(why) = incomplete {
        // Nothing to cut: the valid prefix is all there is. The remedy is outside the log.
        let fix = if why.starts_with("cannot prove") {
            "if you know nothing was deleted, any writer (e.g. `databuild recover`) records the present end in a new CHECKPOINT; otherwise restore the missing segment files from a backup"
        } else {
            "restore the missing segment files from a backup; to accept the loss instead, delete the snapshots past the end and run `databuild recover`"
        };
        return Err(CliError::log(format!("the event log is not sound: {why}; {fix}")));
    }
    if report.is_sound() && violation.is_none() && undecodable.is_none() {
        // Only a snapshot is wrong: the log itself is sound, and repair would cut nothing.
        return Err(CliError::log(format!("the event log is sound, but {what}")));
    }
    Err(CliError::log(format!(
        "the event log is not sound: {what}; `databuild repair --truncate` keeps the valid prefix (what follows is moved aside)"
    )))
}

/// Whether a snapshot file's header proves it was taken of another log (magic, fold version,
/// then the log id: `docs/log-format.md`, Snapshots). Unreadable or short files prove nothing.
fn snapshot_of_other_log(path: &std::path::Path, log_id: Option<LogId>) -> bool {
    use std::io::Read;
    let (Some(id), Ok(f)) = (log_id, std::fs::File::open(path)) else { return false };
    let mut head = [0u8; 28];
    if f.take(28).read_exact(&mut head).is_err() {
        return false;
    }
    head[..8] == databuild::state::snapshot::MAGIC && head[12..28] != id.0
}

pub fn repair(ctx: &Ctx, a: RepairArgs) -> Result<u8, CliError> {
    ctx.formats("repair", &[Format::Text, Format::Json])?;
    let _ = a.truncate;
    if let Some(s) = crate::client::find(ctx) {
        return Err(crate::client::busy(&s, "repair"));
    }
    let opts = WriterOptions { wait_for_lock: a.wait, ..WriterOptions::default() };
    let report = databuild_log::repair(&ctx.log_dir, &opts)
        .map_err(|e| exit::open_error(&e, &ctx.log_dir))?;
    let Some((cut, torn)) = report.cut.clone() else {
        match ctx.format {
            Format::Json => out(&render::json(&json!({"repaired": false, "eventsDropped": 0}))),
            _ => out("nothing to repair: the log is sound"),
        }
        return Ok(exit::SUCCESS);
    };
    // Snapshots of states that include cut events describe a history that is gone: one would be
    // folded on top of the regrown log, and `verify` would take it as evidence of a lost end.
    for (seq, path) in databuild::store::snapshots::list(&ctx.log_dir) {
        if seq < cut.seq {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => eprintln!(
                "removed snapshot {} (it was taken of the history that was cut)",
                path.display()
            ),
            Err(e) => eprintln!(
                "warning: cannot remove {} (a snapshot past the cut): {e}; delete it by hand",
                path.display()
            ),
        }
    }
    // Record the repair in the log itself, so the history says what was cut.
    let (store, _) =
        Store::open(&ctx.log_dir, StoreOptions { writer: opts, ..StoreOptions::default() })
            .map_err(|e| exit::store_error(&e, &ctx.log_dir))?;
    let kind =
        if torn { EngineEventKind::EngineTornTailCut } else { EngineEventKind::EngineRepaired };
    let msg = format!(
        "repair --truncate cut the log at seq {} (segment {}, byte {}): {}; at least {} events moved aside",
        cut.seq, cut.segment, cut.offset, cut.kind, report.events_dropped
    );
    let recorded = store
        .submit(vec![ev::engine(kind, &msg, cut.seq, report.events_dropped)])
        .and_then(|p| Ok(p.wait()?));
    if let Err(e) = recorded {
        eprintln!("warning: the repair was done but could not be recorded in the log: {e}");
    }
    let _ = store.close();
    let backups: Vec<String> = report.backups.iter().map(|p| p.display().to_string()).collect();
    match ctx.format {
        Format::Json => out(&render::json(&json!({
            "repaired": true,
            "cutSeq": cut.seq,
            "segment": cut.segment,
            "offset": cut.offset,
            "eventsDropped": report.events_dropped,
            "bytesMoved": report.bytes_moved,
            "backups": backups,
        }))),
        _ => {
            out(&format!(
                "cut the log at seq {} (segment {}, byte {}: {}): at least {} events dropped, {} bytes moved aside",
                cut.seq,
                cut.segment,
                cut.offset,
                cut.kind,
                report.events_dropped,
                report.bytes_moved
            ));
            for b in backups {
                out(&format!("  backup: {b}"));
            }
        }
    }
    Ok(exit::SUCCESS)
}
