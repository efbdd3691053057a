//! `serve`: one long-lived engine that owns the log and serves many clients (CONTRACT §9).

use std::sync::Arc;

use databuild::engine::{Engine, Note, Observer};
use databuild::server::info::{self, ServerInfo};
use databuild::server::{self, Shared};

use crate::args::ServeArgs;
use crate::cmd_build::{Signals, close, executor, open_store, settings};
use crate::context::Ctx;
use crate::exit::{self, CliError};

/// Says on stderr how each request the server runs ends (the server's own log).
struct Announce;

impl Observer for Announce {
    fn note(&self, note: Note) {
        if let Note::Done { request, status, message } = note {
            let word = crate::render::short(status.as_str_name());
            let msg = if message.is_empty() { String::new() } else { format!(": {message}") };
            eprintln!("build request {request} {word}{}", crate::render::safe(&msg));
        }
    }
}

pub fn serve(ctx: &Ctx, a: ServeArgs) -> Result<u8, CliError> {
    ctx.formats("serve", &[crate::args::Format::Text])?;
    let graph = Arc::new(ctx.graph()?);
    let addr = resolve(&a.addr)?;
    ctx.check_logs_dir()?;
    // Every client connection is a descriptor: leave room for many, and for the jobs' pipes.
    let _ = databuild::sys::raise_fd_limit();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| CliError::internal(format!("cannot start the async runtime: {e}")))?;
    let guard = rt.enter();
    let mut signals = Signals::install()?;
    let executor = executor(ctx, &graph)?;
    let jobs = crate::cmd_build::jobs(a.jobs, &graph);
    let settings = settings(ctx, a.jobs.or(graph.default_jobs));
    // The log first: a log held by another writer is exit 3 (as for `build`), then the port.
    let store = Arc::new(open_store(ctx, a.wait)?);
    let tcp = match rt.block_on(tokio::net::TcpListener::bind(addr)) {
        Ok(l) => l,
        Err(e) => {
            close(store);
            return Err(CliError::bad_input(format!(
                "cannot listen on {addr}: {e}; pick another address with --addr (port 0 picks a free port)"
            )));
        }
    };
    let bound = tcp.local_addr().map_err(|e| CliError::internal(e.to_string()))?;
    let result = rt.block_on(async {
        let (engine, reconciled) = Engine::open(store.clone(), graph.clone(), settings, executor.clone())
            .await
            .map_err(|e| exit::engine_error(&e, &ctx.log_dir))?;
        crate::cmd_recover::report_reconciled(&reconciled, false);
        let handle = engine.handle();
        let resumed = handle.resume(Arc::new(Announce)).await;
        match &resumed {
            Ok(r) => {
                for w in &r.warnings {
                    eprintln!("warning: {w}");
                }
                if !r.requests.is_empty() {
                    eprintln!(
                        "resuming {} interrupted build request(s): {}",
                        r.requests.len(),
                        r.requests.join(", ")
                    );
                }
            }
            Err(e) => eprintln!("warning: cannot resume interrupted build requests: {e}"),
        }
        let shared = Shared::new(
            handle,
            store.clone(),
            graph.clone(),
            info::new_token(),
            bound,
            jobs,
            ctx.logs_dir.clone(),
        )
        .map_err(|e| exit::store_error(&e, &ctx.log_dir))?;
        // We hold the log's writer lock: a socket file left behind is a dead server's.
        let socket_path = ctx.log_dir.join(info::SOCKET);
        let _ = std::fs::remove_file(&socket_path);
        let unix = match tokio::net::UnixListener::bind(&socket_path) {
            Ok(u) => {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600));
                Some(u)
            }
            Err(e) => {
                eprintln!(
                    "warning: cannot listen on the Unix socket {}: {e}; clients use TCP",
                    socket_path.display()
                );
                None
            }
        };
        let socket_abs = std::path::absolute(&socket_path).unwrap_or(socket_path.clone());
        let me = ServerInfo::for_this_process(
            bound.to_string(),
            shared.token.clone(),
            store.log_id(),
            socket_abs,
            graph.label.clone(),
        );
        me.write(&ctx.log_dir).map_err(|e| {
            CliError::log(format!(
                "cannot write {} in {}: {e}; check the directory's permissions",
                info::FILE,
                ctx.log_dir.display()
            ))
        })?;
        eprintln!("serving {} on http://{bound} (log {})", graph.label, ctx.log_dir.display());
        if !bound.ip().is_loopback() {
            eprintln!(
                "warning: {bound} is not a loopback address: anyone who can reach it can read the log"
            );
        }
        let serving = tokio::spawn(server::serve(shared.clone(), tcp, unix));
        let sig = signals.next().await;
        eprintln!(
            "stopping on {}: running jobs are stopped; open build requests resume at the next `databuild serve` or `databuild recover`",
            if sig == databuild::sys::SIGINT { "SIGINT" } else { "SIGTERM" }
        );
        shared.stop();
        // As after a crash (§7): the loop stops where it is, its local runs are stopped and
        // recorded JOB_FAILED "engine stopped while running" (Slurm runs keep running, §12); the
        // requests stay open for the next start.
        engine.crash().await;
        let (s, x) = (store.clone(), executor.clone());
        let grace = databuild::engine::KILL_GRACE;
        let stopped =
            tokio::task::spawn_blocking(move || databuild::recovery::stop_runs(&s, &*x, grace)).await;
        match stopped {
            Ok(Ok(r)) => crate::cmd_recover::report_reconciled(&r, false),
            Ok(Err(e)) => eprintln!("warning: recording the stopped runs: {e}"),
            Err(e) => eprintln!("warning: recording the stopped runs: {e}"),
        }
        let _ = serving.await;
        drop(shared);
        let _ = std::fs::remove_file(&socket_path);
        ServerInfo::remove(&ctx.log_dir);
        Ok::<(), CliError>(())
    });
    // Stray tasks (a client's stream) must not keep the store alive past here.
    drop(signals);
    drop(guard);
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    close(store);
    result.map(|()| exit::SUCCESS)
}

/// `HOST:PORT` to one socket address.
fn resolve(addr: &str) -> Result<std::net::SocketAddr, CliError> {
    use std::net::ToSocketAddrs;
    let bad = |why: String| {
        CliError::bad_input(format!(
            "--addr {addr:?} is not an address to listen on: {why}; write HOST:PORT, e.g. 127.0.0.1:3050"
        ))
    };
    addr.to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("it resolves to nothing".into()))
}
