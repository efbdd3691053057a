//! The HTTP API (CONTRACT §11): JSON reads, `POST` build and cancel, server-sent events and
//! `/healthz`, with the Host check and the token check for changes over TCP.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio_stream::StreamExt as _;

use crate::engine::{BuildSpec, CancelOutcome};
use crate::server::events::{self, Subscription};
use crate::server::{Shared, Via};

/// The HTTP routes (the gRPC ones are merged beside them).
pub fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/builds", post(submit))
        .route("/api/v1/builds/{id}/cancel", post(cancel))
        .route("/api/v1/events/stream", get(stream))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// An error answer: `{"error": "..."}` with a status.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    error(StatusCode::NOT_FOUND, format!("no such endpoint: {method} {}", uri.path()))
}

/// The Host check (every HTTP request over TCP) and the token check (every change over TCP).
/// gRPC calls pass through: their token is checked per call, and their authority is the
/// client's business.
async fn guard(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let via = req.extensions().get::<Via>().copied().unwrap_or(Via::Tcp);
    if is_grpc || via == Via::Unix {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if !host.as_deref().is_some_and(|h| host_allowed(h, &shared.addr)) {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "Host {:?} is not this server's address; use http://{} or http://localhost:{}",
                host.unwrap_or_default(),
                shared.addr,
                shared.addr.port()
            ),
        );
    }
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if changes {
        let auth = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if !shared.authorized(via, auth) {
            return error(
                StatusCode::UNAUTHORIZED,
                "this request changes something: send `Authorization: Bearer TOKEN` with the token from server.json in the log directory",
            );
        }
    }
    next.run(req).await
}

/// Whether a `Host` header names this server: its address, or localhost / 127.0.0.1 (with or
/// without the port).
pub fn host_allowed(host: &str, addr: &std::net::SocketAddr) -> bool {
    if host == addr.to_string() {
        return true;
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(']') || n.starts_with('[') => (n, Some(p)),
        _ => (host, None),
    };
    let name_ok = matches!(name, "localhost" | "127.0.0.1" | "[::1]")
        || name.trim_start_matches('[').trim_end_matches(']') == addr.ip().to_string();
    name_ok && port.is_none_or(|p| p == addr.port().to_string())
}

async fn healthz() -> impl IntoResponse {
    // The router only serves once the log is open and recovery is done.
    (StatusCode::OK, axum::Json(json!({ "status": "serving" })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildBody {
    partitions: Vec<String>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    stale: bool,
}

async fn submit(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let b: BuildBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is not a build request: {e}; send {{\"partitions\": [\"REF\", ...], \"force\": false}}"
                ),
            );
        }
    };
    if b.partitions.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no partitions requested; name at least one ref");
    }
    for r in &b.partitions {
        if let Err(e) = shared.graph.owner(r) {
            return error(StatusCode::BAD_REQUEST, crate::server::grpc::lookup_message(&e));
        }
    }
    let spec = BuildSpec { refs: b.partitions, force: b.force, stale: b.stale, cap: None };
    match shared.engine.submit(spec, Arc::new(crate::engine::Quiet)).await {
        Ok(id) => {
            (StatusCode::ACCEPTED, axum::Json(json!({ "buildRequestId": id }))).into_response()
        }
        Err(e) => {
            let s = crate::server::grpc::submit_status(e);
            let code = if s.code() == tonic::Code::InvalidArgument {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            error(code, s.message())
        }
    }
}

async fn cancel(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match shared.engine.cancel(&id, "cancelled through the server").await {
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Ok(CancelOutcome::Unknown) => error(
            StatusCode::NOT_FOUND,
            format!("no build request {id} in the log; see `databuild builds` for the ids"),
        ),
        Ok(CancelOutcome::AlreadyEnded(s)) => error(
            StatusCode::CONFLICT,
            format!(
                "build request {id} already ended ({}); nothing to cancel",
                crate::query::short_status(s.as_str_name())
            ),
        ),
        Ok(_) => (StatusCode::OK, axum::Json(json!({ "buildRequestId": id, "cancelling": true })))
            .into_response(),
    }
}

#[derive(Deserialize)]
struct StreamQuery {
    since: Option<u64>,
}

/// Server-sent events: one per log event, `id: SEQ`, from `since` (or after `Last-Event-ID`).
async fn stream(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    q: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}; since is a seq (a number)")),
    };
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let since = match last.map(|v| v.trim().parse::<u64>()) {
        Some(Ok(n)) => n + 1,
        Some(Err(_)) => {
            return error(StatusCode::BAD_REQUEST, "Last-Event-ID is not a seq (a number)");
        }
        None => q.since.unwrap_or(1),
    };
    let rx =
        events::subscribe(shared, Subscription { since, follow: true, build_request_id: None });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| {
        Ok::<_, Infallible>(match item {
            Ok((seq, ev)) => Event::default()
                .id(seq.to_string())
                .data(json!({ "seq": seq, "event": ev }).to_string()),
            Err(e) => Event::default().event("error").data(json!({ "error": e }).to_string()),
        })
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
