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
use serde_json::{Value, json};
use tokio_stream::StreamExt as _;

use crate::engine::BuildSpec;
use crate::freshness::Freshness;
use crate::graph::LookupError;
use crate::server::events::{self, Subscription};
use crate::server::{Shared, Via};
use crate::store::StoreError;
use crate::views::{self, ViewError};
use crate::{query, refs};

/// The HTTP routes (the gRPC ones are merged beside them).
pub fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/status", get(status))
        .route("/api/v1/builds", get(builds).post(submit))
        .route("/api/v1/builds/{id}", get(build))
        .route("/api/v1/builds/{id}/cancel", post(cancel))
        .route("/api/v1/explain", get(explain))
        .route("/api/v1/lineage", get(lineage))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/events", get(events_list))
        .route("/api/v1/events/stream", get(stream))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
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

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}; reads are GET, changes are POST", uri.path()),
    )
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
    match shared.submit(spec).await {
        Ok(id) => {
            (StatusCode::ACCEPTED, axum::Json(json!({ "buildRequestId": id }))).into_response()
        }
        Err(r) => error(r.status, r.message),
    }
}

async fn cancel(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match shared.cancel(&id, "cancelled through the server").await {
        Err(r) => error(r.status, r.message),
        Ok(()) => (StatusCode::OK, axum::Json(json!({ "buildRequestId": id, "cancelling": true })))
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

// ---------------------------------------------------------------------------------------------
// The JSON reads: each a JSON array of exactly the objects the matching command prints with
// `--format json` (crate::views renders both), from durable events only.

/// A view's error as an answer: bad input 400, an unknown id, label or ref named in the URL 404,
/// a log that cannot be read 503.
fn view_error(e: ViewError) -> Response {
    match e {
        ViewError::BadInput(m) => error(StatusCode::BAD_REQUEST, m),
        ViewError::NotFound(m) => error(StatusCode::NOT_FOUND, m),
        ViewError::Store(s) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the event log cannot be read: {s}; run `databuild verify` for a report"),
        ),
        ViewError::Internal(m) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error: {m}"))
        }
    }
}

/// A JSON array answer, its body built before anything is sent (no lock is held while a slow
/// client reads it).
fn json_array(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Serializes `values` as one JSON array.
fn array_body(values: &[Value]) -> Result<Vec<u8>, ViewError> {
    serde_json::to_vec(values).map_err(|e| ViewError::Internal(format!("cannot serialize: {e}")))
}

/// Runs a view on the blocking pool (folding new events and rendering a large list take CPU
/// time, and the View's lock is a blocking one) and answers its array or its error.
async fn read_view(
    shared: Arc<Shared>,
    view: impl FnOnce(&Shared) -> Result<Vec<u8>, ViewError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(move || view(&shared)).await {
        Ok(Ok(body)) => json_array(body),
        Ok(Err(e)) => view_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error: {e}")),
    }
}

/// The query string's parameters, in order, with the names an endpoint accepts.
struct Params(Vec<(String, String)>);

impl Params {
    /// Parses the query; a parameter the endpoint does not take is bad input.
    fn parse(
        q: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
        endpoint: &str,
        allowed: &[&str],
    ) -> Result<Params, ViewError> {
        let Query(pairs) = q.map_err(|e| {
            ViewError::BadInput(format!("the query string of {endpoint} is not valid: {e}"))
        })?;
        if let Some((k, _)) = pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            let takes =
                if allowed.is_empty() { "no parameters".to_string() } else { allowed.join(", ") };
            return Err(ViewError::BadInput(format!(
                "{endpoint} has no parameter {k:?}; it takes {takes}"
            )));
        }
        Ok(Params(pairs))
    }

    /// Every value of `name`.
    fn all(&self, name: &str) -> Vec<String> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect()
    }

    /// The one value of `name`, if given (given twice: bad input).
    fn one(&self, name: &str) -> Result<Option<String>, ViewError> {
        let mut v = self.all(name);
        if v.len() > 1 {
            return Err(ViewError::BadInput(format!(
                "{name} is given {} times; give it once",
                v.len()
            )));
        }
        Ok(v.pop())
    }

    /// The value of `name`, which must be given.
    fn required(&self, name: &str, example: &str) -> Result<String, ViewError> {
        self.one(name)?
            .ok_or_else(|| ViewError::BadInput(format!("{name} is required, e.g. {example}")))
    }

    /// A number parameter.
    fn number<T: std::str::FromStr>(&self, name: &str, what: &str) -> Result<Option<T>, ViewError> {
        self.one(name)?
            .map(|v| {
                v.trim().parse::<T>().map_err(|_| {
                    ViewError::BadInput(format!("{name}={v:?} is not {what}; e.g. {name}=3"))
                })
            })
            .transpose()
    }

    /// A boolean parameter (`true` or `false`; absent: false).
    fn flag(&self, name: &str) -> Result<bool, ViewError> {
        match self.one(name)?.as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(v) => Err(ViewError::BadInput(format!(
                "{name}={v:?} is not a boolean; use {name}=true or {name}=false"
            ))),
        }
    }
}

type RawParams = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

/// Answers 400 for bad parameters before any work.
macro_rules! params {
    ($q:expr, $endpoint:expr, $allowed:expr) => {
        match Params::parse($q, $endpoint, $allowed) {
            Ok(p) => p,
            Err(e) => return view_error(e),
        }
    };
}

/// A ref named in the URL that no job of the graph owns and the log has never seen: 404 (a ref
/// a job owns, or one the log knows, answers as the CLI does).
fn unknown_ref(shared: &Shared, state: &crate::state::State, r: &str) -> Result<(), ViewError> {
    match shared.graph.owner(r) {
        Err(e @ LookupError::NoOwner(_)) if state.catalog.get(r).is_none() => {
            Err(ViewError::NotFound(format!("{e}{}", e.hint())))
        }
        _ => Ok(()),
    }
}

/// `GET /api/v1/status[?ref=R...][&at=SEQ|TIME]`: `status [REF...] [--at ...] --format json`.
async fn status(State(shared): State<Arc<Shared>>, q: RawParams) -> Response {
    let p = params!(q, "/api/v1/status", &["ref", "at"]);
    let refs = p.all("ref");
    let at = match p.one("at") {
        Ok(a) => a,
        Err(e) => return view_error(e),
    };
    read_view(shared, move |sh| {
        let values = match at {
            // Now: the graph's job versions count too; in the past: the log alone (as the CLI).
            None => {
                let state = sh.view.current()?;
                views::status(&state, &refs, Some(&sh.graph), Some(&sh.graph))?
            }
            Some(at) => {
                let until = refs::parse_until("--at", &at)?;
                let reader = sh.store.reader().map_err(StoreError::Open)?;
                let state = query::state_at(&reader, until)?;
                // A past state: staleness as the log alone said it then.
                views::status(&state, &refs, Some(&sh.graph), None)?
            }
        };
        array_body(&values)
    })
    .await
}

/// `GET /api/v1/builds`: `builds --format json`.
async fn builds(State(shared): State<Arc<Shared>>, q: RawParams) -> Response {
    let _ = params!(q, "/api/v1/builds", &[]);
    read_view(shared, |sh| {
        let values = views::builds(&*sh.view.current()?);
        array_body(&values)
    })
    .await
}

/// `GET /api/v1/builds/ID`: `builds ID --format json` (ID as the CLI takes it: whole, a unique
/// prefix or tail, or `last`).
async fn build(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    q: RawParams,
) -> Response {
    let _ = params!(q, "/api/v1/builds/ID", &[]);
    read_view(shared, move |sh| {
        let values = views::build(&*sh.view.current()?, id.trim())?;
        array_body(&values)
    })
    .await
}

/// `GET /api/v1/explain?ref=R`: `explain R --format json`.
async fn explain(State(shared): State<Arc<Shared>>, q: RawParams) -> Response {
    let p = params!(q, "/api/v1/explain", &["ref"]);
    let r = match p.required("ref", "/api/v1/explain?ref=REF") {
        Ok(r) => r,
        Err(e) => return view_error(e),
    };
    read_view(shared, move |sh| {
        let typed = views::explain_typed(&r)?;
        let values = {
            let state = sh.view.current()?;
            for t in typed.iter().filter(|t| !refs::is_glob(t)) {
                unknown_ref(sh, &state, t)?;
            }
            let refs = views::explain_refs(&state, &r, &typed, Some(&sh.graph))?;
            let fresh = Freshness::with_graph(&state, &sh.graph);
            refs.iter().map(|r| query::explain_with(&fresh, r)).collect::<Vec<_>>()
        };
        // The output tails are read with the lock released.
        let values: Vec<Value> = values
            .iter()
            .map(|e| views::explain_json(e, &views::explain_tail(&sh.logs_dir, e)))
            .collect();
        array_body(&values)
    })
    .await
}

/// `GET /api/v1/lineage?ref=R[&downstream=true][&depth=N]`: `lineage R ... --format json`.
async fn lineage(State(shared): State<Arc<Shared>>, q: RawParams) -> Response {
    let p = params!(q, "/api/v1/lineage", &["ref", "downstream", "depth"]);
    let parsed = (|| {
        Ok::<_, ViewError>((
            p.required("ref", "/api/v1/lineage?ref=REF")?,
            p.flag("downstream")?,
            p.number::<usize>("depth", "a number of levels")?,
        ))
    })();
    let (r, downstream, depth) = match parsed {
        Ok(x) => x,
        Err(e) => return view_error(e),
    };
    read_view(shared, move |sh| {
        let reader = sh.store.reader().map_err(StoreError::Open)?;
        let values = {
            let state = sh.view.current()?;
            unknown_ref(sh, &state, &r)?;
            views::lineage(&state, &reader, &r, downstream, depth)?
        };
        array_body(&values)
    })
    .await
}

/// `GET /api/v1/jobs[?label=L]`: `jobs [LABEL] --format json`.
async fn jobs(State(shared): State<Arc<Shared>>, q: RawParams) -> Response {
    let p = params!(q, "/api/v1/jobs", &["label"]);
    let label = match p.one("label") {
        Ok(l) => l,
        Err(e) => return view_error(e),
    };
    read_view(shared, move |sh| {
        let state = sh.view.current()?;
        let values = match &label {
            None => views::jobs(&state, Some(&sh.graph)),
            Some(l) => views::job(&state, l, Some(&sh.graph))?,
        };
        drop(state);
        array_body(&values)
    })
    .await
}

/// `GET /api/v1/events[?since=SEQ][&until=SEQ|TIME][&build=ID][&partition=GLOB]`:
/// `replay [filters] --format json`, read from the log file (durable events only) and written
/// into the body as it goes, so a long log costs its bytes, not a tree of values.
async fn events_list(State(shared): State<Arc<Shared>>, q: RawParams) -> Response {
    let p = params!(q, "/api/v1/events", &["since", "until", "build", "partition"]);
    let parsed = (|| {
        let mut f = views::EventFilter::default();
        f.since = p.number::<u64>("since", "a sequence number")?.unwrap_or(1);
        f.until = p.one("until")?.map(|u| refs::parse_until("--until", &u)).transpose()?;
        f.build = p.one("build")?.map(|b| b.trim().to_string());
        f.partition = p.one("partition")?;
        Ok::<_, ViewError>(f)
    })();
    let mut filter = match parsed {
        Ok(f) => f,
        Err(e) => return view_error(e),
    };
    read_view(shared, move |sh| {
        // The reader first: the state that resolves a short id is at least as new.
        let reader = sh.store.reader().map_err(StoreError::Open)?;
        if filter.build.as_deref().is_some_and(|b| !refs::is_whole_id(b)) {
            views::resolve_ids(&*sh.view.current()?, &mut filter)?;
        }
        let mut body = Vec::with_capacity(4096);
        body.push(b'[');
        let mut failed = None;
        views::for_each_event(&reader, &mut filter, |v| {
            if body.len() > 1 {
                body.push(b',');
            }
            if let Err(e) = serde_json::to_writer(&mut body, &v) {
                failed.get_or_insert(e);
            }
        })?;
        if let Some(e) = failed {
            return Err(ViewError::Internal(format!("cannot serialize: {e}")));
        }
        body.push(b']');
        Ok(body)
    })
    .await
}
