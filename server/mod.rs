//! `databuild serve` (CONTRACT §9–§11): one engine, many clients.
//!
//! One router answers gRPC (the seed's `DataBuildService`, the `DataBuildControl` extension,
//! reflection, health) and HTTP (the JSON API, server-sent events, the dashboard) on a TCP port
//! and on a Unix socket in the log directory. Every answer comes from durable events only: reads
//! use a [`View`] that folds the log's durable prefix, streams read the log file itself, and
//! everything that changes something goes through the [`EngineHandle`], the loop being the log's
//! only committer. A slow or vanished client costs a task and a file position, never the engine.

pub mod events;
pub mod grpc;
pub mod http;
pub mod info;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use tokio::sync::watch;

use crate::engine::EngineHandle;
use crate::graph::Graph;
use crate::state::State;
use crate::store::{self, Store, StoreError};

/// What a request came in through: a TCP connection must carry the token to change anything; the
/// Unix socket is the owner's alone (mode 0600), so it needs none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The TCP port (`--addr`).
    Tcp,
    /// `<log dir>/server.sock`.
    Unix,
}

/// The state every durable event up to the log's durable end folds to, caught up on each read.
#[derive(Debug)]
pub struct View {
    state: RwLock<State>,
    reader: Mutex<databuild_log::Reader>,
}

impl View {
    /// Folds the durable log of `store` (from its newest snapshot).
    pub fn open(store: &Store) -> Result<View, StoreError> {
        let reader = store.reader().map_err(StoreError::Open)?;
        let (state, _, _) =
            store::fold_with_snapshot(&reader, reader.next_seq().saturating_sub(1))?;
        Ok(View { state: RwLock::new(state), reader: Mutex::new(reader) })
    }

    /// The state as of the log's durable end now: events made durable since the last read are
    /// folded first (cheap when there are none).
    pub fn current(&self) -> Result<RwLockReadGuard<'_, State>, StoreError> {
        {
            let mut reader = self.reader.lock();
            reader.refresh().map_err(StoreError::Open)?;
            let end = reader.next_seq().saturating_sub(1);
            if end > self.state.read().last_seq {
                let mut state = self.state.write();
                store::fold(&reader, &mut state, end)?;
            }
        }
        Ok(self.state.read())
    }
}

impl crate::planner::Catalog for View {
    fn is_available(&self, partition: &str) -> bool {
        self.current().is_ok_and(|s| s.is_available(partition))
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct Shared {
    /// The engine: the only way to change anything.
    pub engine: EngineHandle,
    /// The log's writer (for its durable end and readers; handlers never commit through it).
    pub store: Arc<Store>,
    /// The graph the server was started with: the only jobs it runs.
    pub graph: Arc<Graph>,
    /// Durable state for reads.
    pub view: View,
    /// The bearer token mutating calls over TCP must carry.
    pub token: String,
    /// The TCP address served.
    pub addr: SocketAddr,
    /// Slots for `config` calls of `AnalyzeGraph`.
    pub jobs: usize,
    /// Job output directory (`.databuild/logs`).
    pub logs_dir: PathBuf,
    stopping: watch::Sender<bool>,
}

impl Shared {
    /// Shares an open engine with clients.
    pub fn new(
        engine: EngineHandle,
        store: Arc<Store>,
        graph: Arc<Graph>,
        token: String,
        addr: SocketAddr,
        jobs: usize,
        logs_dir: PathBuf,
    ) -> Result<Arc<Shared>, StoreError> {
        let view = View::open(&store)?;
        let (stopping, _) = watch::channel(false);
        Ok(Arc::new(Shared { engine, store, graph, view, token, addr, jobs, logs_dir, stopping }))
    }

    /// Tells every open stream to end (the server is stopping).
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once [`Shared::stop`] was called.
    pub async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Whether `authorization` carries the token (always true over the Unix socket).
    pub fn authorized(&self, via: Via, authorization: Option<&str>) -> bool {
        via == Via::Unix
            || authorization
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), self.token.as_bytes()))
    }
}

/// A change the server refused: the HTTP status and the message (the CLI's, without `error: `).
#[derive(Debug)]
pub struct Refused {
    /// 400 (bad input), 404 (unknown id), 409 (already ended) or 503 (engine gone).
    pub status: axum::http::StatusCode,
    /// What went wrong and what to do.
    pub message: String,
}

impl Shared {
    /// Records a build request for the HTTP API and the dashboard: its id once RECEIVED is
    /// durable.
    pub async fn submit(&self, spec: crate::engine::BuildSpec) -> Result<String, Refused> {
        use axum::http::StatusCode;
        self.engine.submit(spec, Arc::new(crate::engine::Quiet)).await.map_err(|e| {
            let s = grpc::submit_status(e);
            let status = if s.code() == tonic::Code::InvalidArgument {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            Refused { status, message: s.message().to_string() }
        })
    }

    /// Cancels a live build request for the HTTP API and the dashboard.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<(), Refused> {
        use crate::engine::CancelOutcome;
        use axum::http::StatusCode;
        let refused = |status, message: String| Err(Refused { status, message });
        match self.engine.cancel(id, reason).await {
            Err(e) => refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            Ok(CancelOutcome::Unknown) => refused(
                StatusCode::NOT_FOUND,
                format!("no build request {id} in the log; see `databuild builds` for the ids"),
            ),
            Ok(CancelOutcome::AlreadyEnded(s)) => refused(
                StatusCode::CONFLICT,
                format!(
                    "build request {id} already ended ({}); nothing to cancel",
                    crate::query::short_status(s.as_str_name())
                ),
            ),
            Ok(CancelOutcome::Cancelling | CancelOutcome::Recorded) => Ok(()),
        }
    }
}

/// Compares without stopping at the first difference, so a token cannot be guessed byte by byte
/// from response times.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The one router: the gRPC services, with the dashboard and the HTTP routes (and their 404)
/// behind them for every other path. (tonic's router brings its own fallback, so the two are chained, not merged;
/// a gRPC call of an unknown method gets HTTP 404, which gRPC clients read as UNIMPLEMENTED.)
pub fn router(shared: Arc<Shared>) -> axum::Router {
    grpc::routes(shared.clone()).fallback_service(web::routes(shared))
}

/// Serves `router` on `tcp` and on `unix` until `shared` is stopped; open connections get a few
/// seconds to finish, then are dropped.
pub async fn serve(
    shared: Arc<Shared>,
    tcp: tokio::net::TcpListener,
    unix: Option<tokio::net::UnixListener>,
) -> std::io::Result<()> {
    let app = router(shared.clone());
    let tcp_app = app.clone().layer(axum::Extension(Via::Tcp));
    let s = shared.clone();
    let tcp_task = tokio::spawn(async move {
        // Small gRPC/HTTP2 frames must not wait for the peer's delayed ACK (Nagle).
        let tcp = axum::serve::ListenerExt::tap_io(tcp, |s: &mut tokio::net::TcpStream| {
            let _ = s.set_nodelay(true);
        });
        axum::serve(tcp, tcp_app.into_make_service())
            .with_graceful_shutdown(async move { s.stopped().await })
            .await
    });
    let unix_task = unix.map(|unix| {
        let app = app.layer(axum::Extension(Via::Unix));
        let s = shared.clone();
        tokio::spawn(async move {
            axum::serve(unix, app.into_make_service())
                .with_graceful_shutdown(async move { s.stopped().await })
                .await
        })
    });
    shared.stopped().await;
    // Streams end when told to; a unary call still running (a `Build` whose engine is gone) ends
    // with UNAVAILABLE. Whatever is left after the grace is dropped with the process.
    let grace = std::time::Duration::from_secs(5);
    let _ = tokio::time::timeout(grace, async {
        let _ = tcp_task.await;
        if let Some(t) = unix_task {
            let _ = t.await;
        }
    })
    .await;
    Ok(())
}
