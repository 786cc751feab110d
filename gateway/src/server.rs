//! Serving with graceful drain and bounded waits: on shutdown the listener closes, in-flight
//! requests and streams run to their end, and after the drain timeout the server stops
//! regardless. A client that connects and sends no complete request head within
//! `gateway.header_read_timeout_ms` is disconnected (request bodies have their own bound,
//! `gateway.body_read_timeout_ms`, in the inference path).

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::state::AppState;

pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    if state.cfg.insecure_disable_auth {
        tracing::warn!(
            account = crate::auth::ANONYMOUS_ACCOUNT,
            "gateway.insecure_disable_auth is ON: every request is served WITHOUT authentication (benchmarks only)"
        );
    }
    let header_timeout = state.cfg.header_read_timeout();
    let app = crate::app::build(state);
    serve_app(listener, app, header_timeout, shutdown, drain_timeout).await
}

/// Serves `/metrics` on its own listener until `shutdown`.
pub async fn serve_metrics(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let header_timeout = state.cfg.header_read_timeout();
    let app = crate::app::metrics_app(state);
    serve_app(listener, app, header_timeout, shutdown, Duration::from_secs(1)).await
}

async fn serve_app(
    listener: TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // SSE chunks are small writes: with Nagle on, each waits for the client's delayed ACK (~40 ms).
        let _ = tcp.set_nodelay(true);
        // The peer address, for per-client limits of public endpoints.
        let service = TowerToHyperService::new(tower::ServiceBuilder::new()
            .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                req
            })
            .service(app.clone()));
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(timeout = ?drain_timeout, "shutting down: draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain_timeout) => {
            tracing::warn!("drain timeout reached; closing remaining connections");
        }
    }
    Ok(())
}
