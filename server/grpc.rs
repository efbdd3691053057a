//! The gRPC services (CONTRACT §10): the seed's `DataBuildService`, the `DataBuildControl`
//! extension, server reflection (v1 and v1alpha, listing only what is served) and
//! `grpc.health.v1.Health`.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::engine::{self, BuildSpec, CancelOutcome, Note, Observer, RequestEnd, SubmitError};
use crate::planner::PlanError;
use crate::proto::data_build_control_server::{DataBuildControl, DataBuildControlServer};
use crate::proto::data_build_service_server::{DataBuildService, DataBuildServiceServer};
use crate::proto::{
    BuildRequestStatus, CancelBuildRequest, CancelBuildResponse, GraphAnalyzeRequest,
    GraphAnalyzeResponse, GraphBuildRequest, GraphBuildResponse, GraphExecuteResponse, JobGraph,
    PartitionManifest, PartitionRef, SequencedEvent, StreamEventsRequest, SubmitBuildRequest,
    SubmitBuildResponse, TaintPartitionsRequest, TaintPartitionsResponse, TaintedPartition,
};
use crate::server::events::{self, Subscription};
use crate::server::{Shared, Via};

/// The metadata key that names the build request a call recorded.
pub const REQUEST_ID_KEY: &str = "databuild-build-request-id";

/// The gRPC routes, ready to merge with the HTTP ones.
pub fn routes(shared: Arc<Shared>) -> axum::Router {
    let (health, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        health.set_serving::<DataBuildServiceServer<Grpc>>().await;
        health.set_serving::<DataBuildControlServer<Grpc>>().await;
    });
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("databuild.v1.DataBuildService")
            .with_service_name("databuild.v1.DataBuildControl")
            .with_service_name("grpc.health.v1.Health")
    };
    let g = Grpc(shared);
    let mut routes = tonic::service::Routes::new(DataBuildServiceServer::new(g.clone()))
        .add_service(DataBuildControlServer::new(g))
        .add_service(health_service);
    // The descriptor sets are compiled in: building from them cannot fail at run time unless the
    // build itself is broken, and then the server still serves everything else.
    if let Ok(v1) = reflection().build_v1() {
        routes = routes.add_service(v1);
    }
    if let Ok(v1alpha) = reflection().build_v1alpha() {
        routes = routes.add_service(v1alpha);
    }
    routes.into_axum_router()
}

/// Both services, over the shared server state.
#[derive(Clone, Debug)]
pub struct Grpc(Arc<Shared>);

impl Grpc {
    /// Refuses a change over TCP without the token.
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let via = req.extensions().get::<Via>().copied().unwrap_or(Via::Tcp);
        let auth = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        if self.0.authorized(via, auth) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "this call changes something: send `authorization: Bearer TOKEN` with the token from server.json in the log directory",
            ))
        }
    }

    /// Checks refs before anything is recorded.
    fn lookup(&self, refs: &[String]) -> Result<(), Status> {
        if refs.is_empty() {
            return Err(Status::invalid_argument("no partitions requested; name at least one ref"));
        }
        for r in refs {
            self.0.graph.owner(r).map_err(|e| Status::invalid_argument(lookup_message(&e)))?;
        }
        Ok(())
    }

    /// Waits for a recorded request to end and answers like `Build`: the manifests on success,
    /// else the status its end maps to. Both carry the request id.
    async fn finish(
        &self,
        id: String,
        wanted: Vec<String>,
        mut ends: tokio::sync::mpsc::UnboundedReceiver<RequestEnd>,
        plan_failed: Arc<parking_lot::Mutex<Option<Arc<PlanError>>>>,
    ) -> Result<Vec<PartitionManifest>, Status> {
        let end = ends.recv().await;
        let with_id = |mut s: Status| {
            if let Ok(v) = MetadataValue::try_from(id.as_str()) {
                s.metadata_mut().insert(REQUEST_ID_KEY, v);
            }
            s
        };
        let Some(end) = end else {
            return Err(with_id(Status::unavailable(format!(
                "the server stopped before build request {id} ended; it resumes when the server starts again"
            ))));
        };
        match end.status {
            BuildRequestStatus::BuildRequestCompleted => {
                manifests(&self.0, &wanted).map_err(|e| with_id(Status::unavailable(e)))
            }
            BuildRequestStatus::BuildRequestCancelled => Err(with_id(Status::cancelled(format!(
                "build request {id} CANCELLED: {}",
                end.message
            )))),
            _ => {
                if let Some(e) = plan_failed.lock().take() {
                    return Err(with_id(Status::invalid_argument(plan_message(&e))));
                }
                Err(with_id(Status::aborted(format!(
                    "build request {id} FAILED: {}; every run: `databuild builds {id}`",
                    end.message
                ))))
            }
        }
    }
}

/// Keeps a request's planning error (its `PlanFailed` note) for the answer.
struct Capture(Arc<parking_lot::Mutex<Option<Arc<PlanError>>>>);

impl Observer for Capture {
    fn note(&self, note: Note) {
        if let Note::PlanFailed { error, .. } = note {
            self.0.lock().get_or_insert(error);
        }
    }
}

/// The CLI's message for a ref that cannot be looked up (without `error: `).
pub fn lookup_message(e: &crate::graph::LookupError) -> String {
    format!("{e}{}", e.hint())
}

/// The message for a planning failure.
pub fn plan_message(e: &PlanError) -> String {
    match e {
        PlanError::Lookup(l) => lookup_message(l),
        other => format!("{other}; fix the job configs"),
    }
}

/// The status for a request the engine did not accept (nothing was recorded).
pub fn submit_status(e: SubmitError) -> Status {
    match e {
        SubmitError::Lookup(l) => Status::invalid_argument(lookup_message(&l)),
        SubmitError::Invalid(why) => {
            Status::invalid_argument(format!("{why}; nothing was recorded"))
        }
        other => Status::unavailable(format!("{other}")),
    }
}

/// For each wanted partition, the manifest of the run that made it AVAILABLE, each run once.
pub fn manifests(shared: &Shared, wanted: &[String]) -> Result<Vec<PartitionManifest>, String> {
    let state = shared.view.current().map_err(|e| e.to_string())?;
    let reader = shared.store.reader().map_err(|e| e.to_string())?;
    let mut out: Vec<PartitionManifest> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in wanted {
        let Some((_, run_id)) = crate::query::current_instance(&state, p) else { continue };
        if !seen.insert(run_id.clone()) {
            continue;
        }
        let Some(run) = state.runs.get(run_id.as_str()) else { continue };
        let Some((seq, _)) = run.ended else { continue };
        let ev = crate::store::event_at(&reader, seq).map_err(|e| e.to_string())?;
        if let Some(crate::proto::build_event::EventType::JobEvent(j)) =
            ev.and_then(|e| e.event_type)
        {
            out.extend(j.manifests);
        }
    }
    Ok(out)
}

type EventStream = Pin<Box<dyn Stream<Item = Result<SequencedEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl DataBuildService for Grpc {
    async fn analyze_graph(
        &self,
        req: Request<GraphAnalyzeRequest>,
    ) -> Result<Response<GraphAnalyzeResponse>, Status> {
        let refs: Vec<String> = req.into_inner().outputs.into_iter().map(|p| p.str).collect();
        self.lookup(&refs)?;
        let plan = crate::planner::plan(
            &self.0.graph,
            &self.0.view,
            &refs,
            false,
            self.0.jobs,
            None,
            None,
        )
        .await
        .map_err(|e| Status::invalid_argument(plan_message(&e)))?;
        Ok(Response::new(GraphAnalyzeResponse { graph: Some(plan.job_graph()) }))
    }

    async fn execute(
        &self,
        req: Request<JobGraph>,
    ) -> Result<Response<GraphExecuteResponse>, Status> {
        self.authorize(&req)?;
        let graph = req.into_inner();
        let wanted: Vec<String> = graph.outputs.iter().map(|p| p.str.clone()).collect();
        let plan_failed = Arc::new(parking_lot::Mutex::new(None));
        let (observer, ends) = engine::with_ends(Arc::new(Capture(plan_failed.clone())));
        let id = self.0.engine.execute(graph, None, observer).await.map_err(submit_status)?;
        let manifests = self.finish(id.clone(), wanted, ends, plan_failed).await?;
        Ok(with_request_id(GraphExecuteResponse { manifests }, &id))
    }

    async fn build(
        &self,
        req: Request<GraphBuildRequest>,
    ) -> Result<Response<GraphBuildResponse>, Status> {
        self.authorize(&req)?;
        let refs: Vec<String> = req.into_inner().outputs.into_iter().map(|p| p.str).collect();
        self.lookup(&refs)?;
        let plan_failed = Arc::new(parking_lot::Mutex::new(None));
        let (observer, ends) = engine::with_ends(Arc::new(Capture(plan_failed.clone())));
        let spec = BuildSpec { refs: refs.clone(), force: false, stale: false, cap: None };
        let id = self.0.engine.submit(spec, observer).await.map_err(submit_status)?;
        let manifests = self.finish(id.clone(), refs, ends, plan_failed).await?;
        Ok(with_request_id(GraphBuildResponse { manifests }, &id))
    }
}

fn with_request_id<T>(body: T, id: &str) -> Response<T> {
    let mut r = Response::new(body);
    if let Ok(v) = MetadataValue::try_from(id) {
        r.metadata_mut().insert(REQUEST_ID_KEY, v);
    }
    r
}

#[tonic::async_trait]
impl DataBuildControl for Grpc {
    async fn submit_build(
        &self,
        req: Request<SubmitBuildRequest>,
    ) -> Result<Response<SubmitBuildResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let refs: Vec<String> = r.outputs.into_iter().map(|p| p.str).collect();
        let cap = (r.max_concurrent_runs > 0).then_some(r.max_concurrent_runs as usize);
        // Every event of the new request comes after what is durable now.
        let since_seq = self.0.store.durable_next_seq();
        let quiet = Arc::new(engine::Quiet);
        let id = match r.graph {
            Some(_) if !refs.is_empty() => {
                return Err(Status::invalid_argument(
                    "send either outputs (to plan and build) or graph (to execute), not both",
                ));
            }
            Some(graph) => self.0.engine.execute(graph, cap, quiet).await,
            None => {
                self.lookup(&refs)?;
                let spec = BuildSpec { refs, force: r.force, stale: r.stale, cap };
                self.0.engine.submit(spec, quiet).await
            }
        }
        .map_err(submit_status)?;
        Ok(with_request_id(SubmitBuildResponse { build_request_id: id.clone(), since_seq }, &id))
    }

    async fn cancel_build(
        &self,
        req: Request<CancelBuildRequest>,
    ) -> Result<Response<CancelBuildResponse>, Status> {
        self.authorize(&req)?;
        let id = req.into_inner().build_request_id;
        let outcome = self
            .0
            .engine
            .cancel(&id, "cancelled through the server")
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        match outcome {
            CancelOutcome::Unknown => Err(Status::not_found(format!(
                "no build request {id} in the log; see `databuild builds` for the ids"
            ))),
            CancelOutcome::AlreadyEnded(s) => Err(Status::failed_precondition(format!(
                "build request {id} already ended ({}); nothing to cancel",
                crate::query::short_status(s.as_str_name())
            ))),
            CancelOutcome::Cancelling | CancelOutcome::Recorded => {
                Ok(Response::new(CancelBuildResponse {}))
            }
        }
    }

    async fn taint_partitions(
        &self,
        req: Request<TaintPartitionsRequest>,
    ) -> Result<Response<TaintPartitionsResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let refs: Vec<String> = r.partitions.into_iter().map(|p| p.str).collect();
        for p in &refs {
            crate::graph::check_ref(p).map_err(|e| Status::invalid_argument(lookup_message(&e)))?;
        }
        let spec = crate::freshness::TaintSpec {
            refs: refs.clone(),
            downstream: r.downstream,
            reason: r.reason,
        };
        let tainted =
            self.0.engine.taint(spec).await.map_err(|e| Status::unavailable(e.to_string()))?;
        if tainted.is_empty() {
            return Err(Status::invalid_argument(format!(
                "'{}' matches no AVAILABLE partition; only AVAILABLE partitions can be tainted (`databuild status` lists them)",
                refs.join(" ")
            )));
        }
        let tainted = tainted
            .into_iter()
            .map(|t| TaintedPartition {
                partition: Some(PartitionRef { str: t.partition }),
                job_run_id: t.job_run_id,
                built_from: t.via.map(|str| PartitionRef { str }),
            })
            .collect();
        Ok(Response::new(TaintPartitionsResponse { tainted }))
    }

    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        req: Request<StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let r = req.into_inner();
        let sub = Subscription {
            since: r.since_seq,
            follow: r.follow,
            build_request_id: (!r.build_request_id.is_empty()).then_some(r.build_request_id),
        };
        let rx = events::subscribe(self.0.clone(), sub);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| match item {
            Ok((seq, event)) => Ok(SequencedEvent { seq, event: Some(event) }),
            Err(e) => Err(Status::unavailable(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

use tokio_stream::StreamExt as _;
