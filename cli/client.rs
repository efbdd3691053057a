//! The CLI as a client of a live server (CONTRACT §9): finding it, and `build`, `execute` and
//! `cancel` through it, with the same result lines and exit codes as without one.
//!
//! A request goes in with `SubmitBuild` (answered once RECEIVED is durable), then the client
//! follows that request's events with `StreamEvents` and renders them with the same progress
//! renderer as the embedded engine. Ctrl-C becomes `CancelBuild` of that request only; a client
//! that just goes away cancels nothing (the server owns the request).

use std::sync::Arc;
use std::time::{Duration, Instant};

use databuild::engine::{Note, Observer, RequestEnd};
use databuild::proto::build_event::EventType;
use databuild::proto::data_build_control_client::DataBuildControlClient;
use databuild::proto::{
    BuildEvent, BuildRequestStatus, CancelBuildRequest, JobGraph, JobStatus, PartitionRef,
    StreamEventsRequest, SubmitBuildRequest,
};
use databuild::server::info::{self, ServerInfo};
use tonic::transport::{Channel, Endpoint};

use crate::cmd_build::{Outcome, Signals, judge, print_outcome};
use crate::context::Ctx;
use crate::exit::{self, CliError};
use crate::progress::Progress;

/// The live server of this log, if one runs: its `server.json` names a running process that is
/// the one that wrote it, and the log's writer lock is held. A stale file is ignored.
pub fn find(ctx: &Ctx) -> Option<ServerInfo> {
    info::live(&ctx.log_dir).filter(|_| crate::live::writer_alive(&ctx.log_dir))
}

/// How to name a server in messages.
pub fn describe(s: &ServerInfo) -> String {
    format!("the databuild server (pid {}, http://{})", s.pid, s.addr)
}

/// The error for commands that need the log to themselves (`recover`, `repair`).
pub fn busy(s: &ServerInfo, what: &str) -> CliError {
    CliError::log(format!(
        "{} holds the event log; it already reconciled and resumed interrupted build requests itself. Stop it (SIGTERM pid {}) before `databuild {what}`",
        describe(s),
        s.pid
    ))
}

/// A channel to the server: over its Unix socket when there is one (the owner's only), else TCP.
async fn connect(s: &ServerInfo) -> Result<Channel, CliError> {
    let gone = |e: &dyn std::fmt::Display| {
        CliError::log(format!("cannot reach {}: {e}; is it still running?", describe(s)))
    };
    if s.socket.exists() {
        let path = s.socket.clone();
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        if let Ok(ch) =
            Endpoint::from_static("http://localhost").connect_with_connector(connector).await
        {
            return Ok(ch);
        }
    }
    Endpoint::from_shared(format!("http://{}", s.addr))
        .map_err(|e| gone(&e))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| gone(&e))
}

fn with_token<T>(s: &ServerInfo, body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    if let Ok(v) = format!("Bearer {}", s.token).parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// The CLI's error for a status the server answered with.
fn status_error(s: &ServerInfo, st: &tonic::Status) -> CliError {
    match st.code() {
        tonic::Code::InvalidArgument | tonic::Code::NotFound => {
            CliError::bad_input(st.message().to_string())
        }
        _ => CliError::log(format!("{}: {}", describe(s), st.message())),
    }
}

/// What to submit.
pub enum Submit {
    /// Plan and build these refs.
    Build { refs: Vec<String>, force: bool, stale: bool },
    /// Run exactly this graph.
    Execute(JobGraph),
}

/// `build`/`execute` through the server: submit, follow, render, judge.
pub fn run(
    ctx: &Ctx,
    s: &ServerInfo,
    what: Submit,
    jobs: Option<u32>,
    detach: bool,
    verb: &str,
    progress: Arc<Progress>,
) -> Result<u8, CliError> {
    let rt = crate::cmd_build::runtime()?;
    let _guard = rt.enter();
    let mut signals = Signals::install()?;
    let started = Instant::now();
    let result = rt.block_on(async {
        let mut client = DataBuildControlClient::new(connect(s).await?);
        let req = match what {
            Submit::Build { refs, force, stale } => SubmitBuildRequest {
                outputs: refs.into_iter().map(|r| PartitionRef { str: r }).collect(),
                force,
                stale,
                max_concurrent_runs: jobs.unwrap_or(0),
                graph: None,
            },
            Submit::Execute(g) => SubmitBuildRequest {
                outputs: Vec::new(),
                force: false,
                stale: false,
                max_concurrent_runs: jobs.unwrap_or(0),
                graph: Some(g),
            },
        };
        let answer = client
            .submit_build(with_token(s, req))
            .await
            .map_err(|st| status_error(s, &st))?
            .into_inner();
        let id = answer.build_request_id;
        if detach {
            return Ok(Err(id));
        }
        let follow = StreamEventsRequest {
            since_seq: answer.since_seq,
            follow: true,
            build_request_id: id.clone(),
        };
        let mut stream = client
            .stream_events(follow)
            .await
            .map_err(|st| status_error(s, &st))?
            .into_inner();
        let mut notes = Notes::default();
        let mut outcome = Outcome::default();
        let mut planned = false;
        loop {
            tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(e)) => {
                        let Some(ev) = e.event else { continue };
                        planned |= matches!(ev.event_type, Some(EventType::JobGraphEvent(_)));
                        for note in notes.of(&ev) {
                            progress.note(note);
                        }
                        if let Some(end) = terminal(&ev) {
                            outcome.requests.push(end);
                            break;
                        }
                    }
                    Ok(None) | Err(_) => {
                        return Err(CliError::log(format!(
                            "{} went away before build request {id} ended; it resumes when the server starts again (`databuild serve`) or with `databuild recover`",
                            describe(s)
                        )));
                    }
                },
                sig = signals.next() => {
                    if outcome.signal.is_none() {
                        outcome.signal = Some(sig);
                        progress.note(Note::Cancelling { signal: sig });
                    }
                    // A second signal cancels again: the engine then stops the runs at once.
                    let cancel = CancelBuildRequest { build_request_id: id.clone() };
                    let _ = client.cancel_build(with_token(s, cancel)).await;
                }
            }
        }
        Ok(Ok((outcome, planned)))
    });
    progress.finish();
    let (outcome, planned) = match result? {
        Err(id) => {
            crate::render::out(&id);
            return Ok(exit::SUCCESS);
        }
        Ok(x) => x,
    };
    let outcome = Outcome { failed_runs: progress.failed_runs(), ..outcome };
    // A request that failed before its plan was recorded failed planning: bad input, as without
    // a server.
    if let Some(r) = outcome.requests.first()
        && !planned
        && outcome.signal.is_none()
        && r.status == BuildRequestStatus::BuildRequestFailed
    {
        let why = r.message.strip_prefix("planning failed: ").unwrap_or(&r.message);
        return Err(CliError::bad_input(format!(
            "{why}; build request {} was recorded FAILED; `databuild logs` of its config calls: `databuild builds {}`",
            r.request, r.request
        )));
    }
    print_outcome(ctx, &outcome, started.elapsed(), verb);
    judge(&outcome)
}

/// `cancel ID` through the server.
pub fn cancel(s: &ServerInfo, id: &str) -> Result<u8, CliError> {
    let rt = crate::cmd_build::runtime()?;
    rt.block_on(async {
        let mut client = DataBuildControlClient::new(connect(s).await?);
        let req = CancelBuildRequest { build_request_id: id.to_string() };
        match client.cancel_build(with_token(s, req)).await {
            Ok(_) => {
                crate::render::out(&format!(
                    "cancelling build request {id} (through {}): its running jobs are stopped and it ends CANCELLED",
                    describe(s)
                ));
                Ok(exit::SUCCESS)
            }
            Err(st) if st.code() == tonic::Code::FailedPrecondition => {
                crate::render::out(st.message());
                Ok(exit::SUCCESS)
            }
            Err(st) => Err(status_error(s, &st)),
        }
    })
}

/// `taint` through the server: what it tainted.
pub fn taint(
    s: &ServerInfo,
    spec: databuild::freshness::TaintSpec,
) -> Result<Vec<databuild::freshness::Taint>, CliError> {
    let rt = crate::cmd_build::runtime()?;
    rt.block_on(async {
        let mut client = DataBuildControlClient::new(connect(s).await?);
        let req = databuild::proto::TaintPartitionsRequest {
            partitions: spec.refs.into_iter().map(|r| PartitionRef { str: r }).collect(),
            downstream: spec.downstream,
            reason: spec.reason,
        };
        let answer = client
            .taint_partitions(with_token(s, req))
            .await
            .map_err(|st| status_error(s, &st))?
            .into_inner();
        Ok(answer
            .tainted
            .into_iter()
            .map(|t| databuild::freshness::Taint {
                partition: t.partition.map(|p| p.str).unwrap_or_default(),
                job_run_id: t.job_run_id,
                via: t.built_from.map(|p| p.str),
            })
            .collect())
    })
}

/// The end of a request, if `ev` is its terminal event.
fn terminal(ev: &BuildEvent) -> Option<RequestEnd> {
    let Some(EventType::BuildRequestEvent(b)) = &ev.event_type else { return None };
    let status = BuildRequestStatus::try_from(b.status).ok()?;
    databuild::state::is_terminal_request(status).then(|| RequestEnd {
        request: ev.build_request_id.clone(),
        status,
        message: b.message.clone(),
    })
}

/// Turns a request's events into the progress notes the embedded engine would send.
#[derive(Default)]
struct Notes {
    /// Run id -> when it started running (ns).
    running: std::collections::HashMap<String, i64>,
}

impl Notes {
    fn of(&mut self, ev: &BuildEvent) -> Vec<Note> {
        match &ev.event_type {
            Some(EventType::JobGraphEvent(g)) => {
                let tasks = g.job_graph.as_ref().map_or(0, |g| g.nodes.len());
                vec![Note::Planned {
                    request: ev.build_request_id.clone(),
                    tasks,
                    skipped: 0,
                    dropped: Vec::new(),
                    delegated: Vec::new(),
                }]
            }
            Some(EventType::JobEvent(j)) => {
                let Ok(status) = JobStatus::try_from(j.status) else { return Vec::new() };
                let job = j.job_label.as_ref().map(|l| l.label.clone()).unwrap_or_default();
                let outputs: Vec<String> =
                    j.target_partitions.iter().map(|p| p.str.clone()).collect();
                match status {
                    JobStatus::JobRunning => {
                        self.running.insert(j.job_run_id.clone(), ev.timestamp);
                        vec![Note::Started {
                            job,
                            run: j.job_run_id.clone(),
                            outputs,
                            attempt: j.attempt.max(1),
                        }]
                    }
                    JobStatus::JobCompleted | JobStatus::JobFailed | JobStatus::JobCancelled => {
                        let from = self.running.remove(&j.job_run_id).unwrap_or(ev.timestamp);
                        let ns = u64::try_from(ev.timestamp.saturating_sub(from)).unwrap_or(0);
                        vec![Note::Finished {
                            job,
                            run: j.job_run_id.clone(),
                            outputs,
                            status,
                            message: j.message.clone(),
                            duration: Duration::from_nanos(ns),
                            retrying: false,
                        }]
                    }
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    }
}
