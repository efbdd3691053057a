//! Constructors for the events the engine writes. Ids and timestamps are stamped by the store at
//! commit; these only fill in the payload, so call sites read as the DESIGN.md §2.4 table does.

use crate::proto::build_event::EventType;
use crate::proto::{
    BuildEvent, BuildRequestEvent, BuildRequestStatus, DelegationEvent, EngineEvent,
    EngineEventKind, JobConfig, JobEvent, JobFailureKind, JobGraph, JobGraphEvent, JobLabel,
    JobStatus, PartitionEvent, PartitionManifest, PartitionRef, PartitionStatus, ProcessInfo,
};

/// A partition ref message.
pub fn pref(s: &str) -> PartitionRef {
    PartitionRef { str: s.to_string() }
}

fn event(req: &str, body: EventType) -> BuildEvent {
    BuildEvent {
        event_id: String::new(),
        timestamp: 0,
        build_request_id: req.to_string(),
        event_type: Some(body),
    }
}

/// A build request status change.
pub fn request(req: &str, status: BuildRequestStatus, message: &str) -> BuildEvent {
    event(
        req,
        EventType::BuildRequestEvent(BuildRequestEvent {
            status: status as i32,
            requested_partitions: Vec::new(),
            message: message.to_string(),
            force: false,
            graph_digest: String::new(),
        }),
    )
}

/// BUILD_REQUEST_RECEIVED with what was asked.
pub fn received(req: &str, requested: &[String], force: bool, graph_digest: &str) -> BuildEvent {
    event(
        req,
        EventType::BuildRequestEvent(BuildRequestEvent {
            status: BuildRequestStatus::BuildRequestReceived as i32,
            requested_partitions: requested.iter().map(|r| pref(r)).collect(),
            message: String::new(),
            force,
            graph_digest: graph_digest.to_string(),
        }),
    )
}

/// A partition lifecycle event; `run` may be empty.
pub fn partition(
    req: &str,
    partition: &str,
    status: PartitionStatus,
    run: &str,
    message: &str,
) -> BuildEvent {
    event(
        req,
        EventType::PartitionEvent(PartitionEvent {
            partition_ref: Some(pref(partition)),
            status: status as i32,
            message: message.to_string(),
            job_run_id: run.to_string(),
        }),
    )
}

/// A delegation of `partition` to request `to`.
pub fn delegation(req: &str, partition: &str, to: &str, message: &str) -> BuildEvent {
    event(
        req,
        EventType::DelegationEvent(DelegationEvent {
            partition_ref: Some(pref(partition)),
            delegated_to_build_request_id: to.to_string(),
            message: message.to_string(),
        }),
    )
}

/// A partition delegated to request `to`: its DelegationEvent and, right after it (the fold
/// requires them adjacent), its DELEGATED partition event.
pub fn delegated(req: &str, partition: &str, to: &str, message: &str) -> [BuildEvent; 2] {
    [
        delegation(req, partition, to, message),
        self::partition(req, partition, PartitionStatus::PartitionDelegated, "", message),
    ]
}

/// The plan.
pub fn job_graph(req: &str, graph: JobGraph) -> BuildEvent {
    event(
        req,
        EventType::JobGraphEvent(JobGraphEvent { job_graph: Some(graph), message: String::new() }),
    )
}

/// The fields of a job event; build one with [`job`] and adjust.
#[derive(Clone, Debug, Default)]
pub struct Job<'a> {
    /// The request.
    pub req: &'a str,
    /// The run id.
    pub run: &'a str,
    /// The job label.
    pub label: &'a str,
    /// The targets.
    pub targets: &'a [String],
    /// The message.
    pub message: String,
    /// The config (SCHEDULED).
    pub config: Option<JobConfig>,
    /// The manifests (COMPLETED).
    pub manifests: Vec<PartitionManifest>,
    /// The process (RUNNING).
    pub process: Option<ProcessInfo>,
    /// The executor's handle (RUNNING).
    pub executor: Option<crate::proto::ExecutorHandle>,
    /// Attempt number.
    pub attempt: u32,
    /// Failure kind (FAILED).
    pub failure: Option<JobFailureKind>,
    /// Exit code.
    pub exit_code: i32,
    /// Signal number.
    pub signal: i32,
    /// The job's version (SCHEDULED, SKIPPED): `Some("")` when the graph sets none.
    pub version: Option<String>,
}

/// A job event skeleton.
pub fn job<'a>(req: &'a str, run: &'a str, label: &'a str, targets: &'a [String]) -> Job<'a> {
    Job { req, run, label, targets, ..Job::default() }
}

impl Job<'_> {
    /// The event with this status.
    pub fn event(self, status: JobStatus) -> BuildEvent {
        event(
            self.req,
            EventType::JobEvent(JobEvent {
                job_run_id: self.run.to_string(),
                job_label: Some(JobLabel { label: self.label.to_string() }),
                target_partitions: self.targets.iter().map(|t| pref(t)).collect(),
                status: status as i32,
                message: self.message,
                config: self.config,
                manifests: self.manifests,
                process: self.process,
                executor: self.executor,
                attempt: self.attempt,
                failure: self.failure.map_or(0, |f| f as i32),
                exit_code: self.exit_code,
                signal: self.signal,
                version: self.version,
            }),
        )
    }
}

/// An engine event (no build request).
pub fn engine(
    kind: EngineEventKind,
    message: &str,
    first_seq_dropped: u64,
    events_dropped: u64,
) -> BuildEvent {
    BuildEvent {
        event_id: String::new(),
        timestamp: 0,
        build_request_id: String::new(),
        event_type: Some(EventType::EngineEvent(EngineEvent {
            kind: kind as i32,
            message: message.to_string(),
            host: databuild_log::fs::host_name(),
            pid: std::process::id() as i32,
            version: env!("CARGO_PKG_VERSION").to_string(),
            first_seq_dropped,
            events_dropped,
        })),
    }
}
