//! The dashboard (CONTRACT §11): server-rendered pages over the same folded state as every other
//! read, live through one server-sent-events connection per page, and able to show any moment
//! of the history (`?at=SEQ|TIME`).
//!
//! - **Rendering**: maud (templates checked at compile time, every interpolation HTML-escaped);
//!   pictures are SVG laid out here ([`svg`]); the stylesheet and the one small script are
//!   embedded in the binary (`assets/`), so no request leaves the machine.
//! - **Live**: a page carries the seq it shows (`data-seq`); its script follows
//!   `/api/v1/events/stream?since=SEQ+1` and, when a durable event arrives, fetches the page
//!   again and swaps the parts marked `data-live-id`. Pages never go stale, and forms outside
//!   those parts keep what the user typed. Without JavaScript a page is complete as served.
//! - **History**: `?at=SEQ|TIME` folds the log to that point (the newest snapshot at or below
//!   it, then replay: the same fold as `status --at`, never a second store). The last such
//!   state is kept and folded forward, so stepping and scrubbing forward costs only the events
//!   stepped over.
//! - **Actions**: the dashboard's forms post to its own routes (`/ui/...`) with the server's
//!   token in a hidden field `token` (or `Authorization: Bearer`); the Host check applies as to
//!   every HTTP request. Anyone who can read a page can act: a page is only readable from an
//!   allowed Host, and another site's page cannot read it (same-origin rule) to learn the token.

pub mod svg;
mod views;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, Request, State as AxState};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;

use crate::engine::BuildSpec;
use crate::query::{self, Until};
use crate::server::{Shared, Via, http};
use crate::state::State;
use crate::store::{self, StoreError};

/// Events folded forward from the kept historical state before starting over from a snapshot
/// is cheaper.
const FORWARD_LIMIT: u64 = 50_000;

/// The dashboard's own state: the server's, and the last historical state shown.
#[derive(Debug)]
pub struct Web {
    shared: Arc<Shared>,
    past: Mutex<Option<State>>,
}

/// The dashboard's routes, with the HTTP API (and its 404) behind them for every other path.
pub fn routes(shared: Arc<Shared>) -> Router {
    let web = Arc::new(Web { shared: shared.clone(), past: Mutex::new(None) });
    Router::new()
        .route("/", get(home))
        .route("/builds/{id}", get(build))
        .route("/partition", get(partition))
        .route("/jobs/{*label}", get(job))
        .route("/runs/{id}", get(run))
        .route("/events", get(events))
        .route("/assets/{name}", get(asset))
        .route("/ui/build", post(ui_build))
        .route("/ui/analyze", post(ui_analyze))
        .route("/ui/cancel/{id}", post(ui_cancel))
        .route_layer(middleware::from_fn_with_state(web.clone(), guard))
        .with_state(web)
        .fallback_service(http::routes(shared))
}

/// The Host check for the dashboard's routes (the token is checked by each action, since it may
/// come in the form body).
async fn guard(AxState(web): AxState<Arc<Web>>, req: Request, next: Next) -> Response {
    let via = req.extensions().get::<Via>().copied().unwrap_or(Via::Tcp);
    if via == Via::Unix {
        return next.run(req).await;
    }
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_string);
    if !host.as_deref().is_some_and(|h| http::host_allowed(h, &web.shared.addr)) {
        let addr = web.shared.addr;
        return error_page(
            StatusCode::FORBIDDEN,
            &format!(
                "Host {:?} is not this server's address; open http://{addr} or http://localhost:{}",
                host.unwrap_or_default(),
                addr.port()
            ),
        );
    }
    next.run(req).await
}

/// Query or form parameters, in order (a key may repeat).
#[derive(Clone, Debug, Default)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    /// The first value of `key`, trimmed, if not empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.trim()).filter(|v| !v.is_empty())
    }
    /// Every value of `key`.
    pub fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.0.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    /// A page number (`page`, from 0).
    pub fn page(&self) -> Result<usize, PageError> {
        match self.get("page") {
            None => Ok(0),
            Some(p) => p.parse().map_err(|_| {
                PageError::bad(format!("page {p:?} is not a page number (0, 1, 2, ...)"))
            }),
        }
    }
}

/// Why a page could not be shown.
#[derive(Debug)]
pub struct PageError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What to tell the user.
    pub message: String,
}

impl PageError {
    /// Bad input (400).
    pub fn bad(message: impl Into<String>) -> PageError {
        PageError { status: StatusCode::BAD_REQUEST, message: message.into() }
    }
    /// Something named in the URL is unknown (404).
    pub fn not_found(message: impl Into<String>) -> PageError {
        PageError { status: StatusCode::NOT_FOUND, message: message.into() }
    }
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> PageError {
        PageError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("cannot read the event log: {e}"),
        }
    }
}

fn error_page(status: StatusCode, message: &str) -> Response {
    (status, Html(views::error_page(status, message).into_string())).into_response()
}

/// What every page knows besides the state it shows.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The server.
    pub shared: &'a Shared,
    /// The history point asked for (`None`: live).
    pub at: Option<u64>,
    /// The log's durable end (last seq).
    pub end: u64,
    /// The page's path (no query).
    pub path: String,
    /// Its query parameters.
    pub params: Params,
}

impl Ctx<'_> {
    /// A link that keeps the page's history point.
    pub fn link(&self, path: &str) -> String {
        match self.at {
            None => path.to_string(),
            Some(at) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                format!("{path}{sep}at={at}")
            }
        }
    }

    /// This page with `key` set to `value` (or removed, if `None`), other parameters kept.
    pub fn with(&self, key: &str, value: Option<&str>) -> String {
        let mut q: Vec<(String, String)> = self
            .params
            .0
            .iter()
            .filter(|(k, v)| k != key && !v.is_empty() && k != "at")
            .cloned()
            .collect();
        if let Some(v) = value {
            q.push((key.to_string(), v.to_string()));
        }
        if key != "at"
            && let Some(at) = self.at
        {
            q.push(("at".into(), at.to_string()));
        }
        if q.is_empty() {
            self.path.clone()
        } else {
            let qs: Vec<String> = q.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect();
            format!("{}?{}", self.path, qs.join("&"))
        }
    }
}

/// Percent-encodes everything but unreserved characters (for a query value or a path segment).
pub fn enc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

impl Web {
    /// Resolves `at` (a seq, or an RFC 3339 time, or nothing/`live`) to a seq of the durable log.
    fn resolve_at(&self, p: &Params, end: u64) -> Result<Option<u64>, PageError> {
        // The history bar sends its slider's `at` and then its text field's: a typed value wins.
        let Some(at) = p.all("at").map(str::trim).filter(|v| !v.is_empty()).last() else {
            return Ok(None);
        };
        if at == "live" {
            return Ok(None);
        }
        if let Ok(seq) = at.parse::<u64>() {
            return Ok(Some(seq.min(end)));
        }
        let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .map_err(|_| {
                PageError::bad(format!(
                    "at={at:?} is neither a seq (a number) nor an RFC 3339 time such as 2025-01-28T12:00:00Z"
                ))
            })?;
        let ns = i64::try_from(t.unix_timestamp_nanos())
            .map_err(|_| PageError::bad(format!("at={at:?} is out of range")))?;
        let reader = self.shared.store.reader().map_err(StoreError::Open)?;
        Ok(Some(query::last_seq_at_or_before(&reader, ns)?.min(end)))
    }

    /// Renders with the state `ctx.at` names: the live view, or the log folded to that seq.
    fn with_state<T>(
        &self,
        at: Option<u64>,
        f: impl FnOnce(&State) -> Result<T, PageError>,
    ) -> Result<T, PageError> {
        match at {
            None => {
                let state = self.shared.view.current()?;
                f(&state)
            }
            Some(seq) => {
                let mut past = self.past.lock();
                let reader = self.shared.store.reader().map_err(StoreError::Open)?;
                match past.as_mut() {
                    Some(s) if s.last_seq == seq => {}
                    Some(s) if s.last_seq < seq && seq - s.last_seq <= FORWARD_LIMIT => {
                        store::fold(&reader, s, seq)?;
                    }
                    _ => {
                        // Freeing a big state takes a while (half a second at a million events):
                        // a thread does it, not the page.
                        if let Some(old) = past.take() {
                            std::thread::spawn(move || drop(old));
                        }
                        *past = Some(query::state_at(&reader, Until::Seq(seq))?);
                    }
                }
                let state = past.as_ref().expect("set above");
                f(state)
            }
        }
    }

    /// Renders a page on the blocking pool (folding and reading the log are blocking work).
    async fn page(
        self: Arc<Self>,
        path: String,
        q: Q,
        render: impl FnOnce(&Ctx, &State) -> Result<maud::Markup, PageError> + Send + 'static,
    ) -> Response {
        let params = match q {
            Ok(Query(v)) => Params(v),
            Err(e) => return error_page(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let web = self.clone();
        let done = tokio::task::spawn_blocking(move || -> Result<String, PageError> {
            let end = web.shared.store.durable_next_seq().saturating_sub(1);
            let at = web.resolve_at(&params, end)?;
            let ctx = Ctx { shared: &web.shared, at, end, path, params };
            web.with_state(at, |state| render(&ctx, state)).map(|m| m.into_string())
        })
        .await;
        match done {
            Ok(Ok(html)) => ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response(),
            Ok(Err(e)) => error_page(e.status, &e.message),
            Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("page failed: {e}")),
        }
    }
}

type Q = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

async fn home(AxState(web): AxState<Arc<Web>>, q: Q) -> Response {
    web.page("/".into(), q, views::home).await
}

async fn build(AxState(web): AxState<Arc<Web>>, Path(id): Path<String>, q: Q) -> Response {
    let path = format!("/builds/{}", enc(&id));
    web.page(path, q, move |c, s| views::build(c, s, &id)).await
}

async fn partition(AxState(web): AxState<Arc<Web>>, q: Q) -> Response {
    web.page("/partition".into(), q, views::partition).await
}

async fn job(AxState(web): AxState<Arc<Web>>, Path(label): Path<String>, q: Q) -> Response {
    let path = format!("/jobs/{}", enc(&label));
    web.page(path, q, move |c, s| views::job(c, s, &label)).await
}

async fn run(AxState(web): AxState<Arc<Web>>, Path(id): Path<String>, q: Q) -> Response {
    let path = format!("/runs/{}", enc(&id));
    web.page(path, q, move |c, s| views::run(c, s, &id)).await
}

async fn events(AxState(web): AxState<Arc<Web>>, q: Q) -> Response {
    web.page("/events".into(), q, views::events).await
}

async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "app.js" => (include_str!("assets/app.js"), "text/javascript; charset=utf-8"),
        "app.css" => (include_str!("assets/app.css"), "text/css; charset=utf-8"),
        _ => return error_page(StatusCode::NOT_FOUND, &format!("no asset {name:?}")),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

type F = Result<Form<Vec<(String, String)>>, axum::extract::rejection::FormRejection>;

/// The form's parameters, once its token (or the request's `Authorization`) is checked.
fn authorized_form(
    web: &Web,
    via: Option<Via>,
    headers: &header::HeaderMap,
    f: F,
) -> Result<Params, Response> {
    let p = f
        .map(|Form(v)| Params(v))
        .map_err(|e| error_page(StatusCode::BAD_REQUEST, &e.to_string()))?;
    let via = via.unwrap_or(Via::Tcp);
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let form = p.get("token").map(|t| format!("Bearer {t}"));
    if web.shared.authorized(via, auth) || web.shared.authorized(via, form.as_deref()) {
        Ok(p)
    } else {
        Err(error_page(
            StatusCode::UNAUTHORIZED,
            "this form changes something and needs the server's token: reload the page you sent it from (the token is in server.json in the log directory)",
        ))
    }
}

/// The refs of a form: `refs` fields, each split on whitespace and commas.
fn form_refs(p: &Params) -> Vec<String> {
    p.all("refs")
        .flat_map(|v| v.split(|c: char| c.is_whitespace() || c == ','))
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect()
}

fn checked_refs(web: &Web, p: &Params) -> Result<Vec<String>, Response> {
    let refs = form_refs(p);
    if refs.is_empty() {
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            "no partitions given; type at least one ref",
        ));
    }
    for r in &refs {
        if let Err(e) = web.shared.graph.owner(r) {
            return Err(error_page(
                StatusCode::BAD_REQUEST,
                &crate::server::grpc::lookup_message(&e),
            ));
        }
    }
    Ok(refs)
}

async fn ui_build(
    AxState(web): AxState<Arc<Web>>,
    via: Option<axum::Extension<Via>>,
    headers: header::HeaderMap,
    f: F,
) -> Response {
    let p = match authorized_form(&web, via.map(|v| v.0), &headers, f) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let refs = match checked_refs(&web, &p) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let force = p.get("force").is_some_and(|v| v != "0" && v != "false");
    let spec = BuildSpec { refs, force, stale: false, cap: None };
    match web.shared.submit(spec).await {
        Ok(id) => Redirect::to(&format!("/builds/{}", enc(&id))).into_response(),
        Err(r) => error_page(r.status, &r.message),
    }
}

async fn ui_analyze(
    AxState(web): AxState<Arc<Web>>,
    via: Option<axum::Extension<Via>>,
    headers: header::HeaderMap,
    f: F,
) -> Response {
    let p = match authorized_form(&web, via.map(|v| v.0), &headers, f) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let refs = match checked_refs(&web, &p) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let force = p.get("force").is_some_and(|v| v != "0" && v != "false");
    let shared = &web.shared;
    let plan =
        crate::planner::plan(&shared.graph, &shared.view, &refs, force, shared.jobs, None, None)
            .await;
    let graph = match plan {
        Ok(plan) => plan.job_graph(),
        Err(e) => {
            return error_page(StatusCode::BAD_REQUEST, &crate::server::grpc::plan_message(&e));
        }
    };
    let w = web.clone();
    let done = tokio::task::spawn_blocking(move || -> Result<String, PageError> {
        let end = w.shared.store.durable_next_seq().saturating_sub(1);
        let ctx = Ctx {
            shared: &w.shared,
            at: None,
            end,
            path: "/ui/analyze".into(),
            params: Params::default(),
        };
        w.with_state(None, |state| views::analyze(&ctx, state, &refs, force, &graph))
            .map(|m| m.into_string())
    })
    .await;
    match done {
        Ok(Ok(html)) => Html(html).into_response(),
        Ok(Err(e)) => error_page(e.status, &e.message),
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("page failed: {e}")),
    }
}

async fn ui_cancel(
    AxState(web): AxState<Arc<Web>>,
    via: Option<axum::Extension<Via>>,
    headers: header::HeaderMap,
    Path(id): Path<String>,
    f: F,
) -> Response {
    if let Err(r) = authorized_form(&web, via.map(|v| v.0), &headers, f) {
        return r;
    }
    match web.shared.cancel(&id, "cancelled from the dashboard").await {
        Err(r) => error_page(r.status, &r.message),
        Ok(()) => Redirect::to(&format!("/builds/{}", enc(&id))).into_response(),
    }
}

#[cfg(test)]
mod tests;
