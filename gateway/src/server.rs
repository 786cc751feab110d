//! Serving with graceful drain: on shutdown the listener closes, in-flight requests and streams
//! run to their end, and after the drain timeout the server stops regardless.

use std::future::Future;
use std::time::Duration;

use axum::serve::ListenerExt;
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
    let app = crate::app::build(state);
    // SSE chunks are small writes: with Nagle on, each waits for the client's delayed ACK (~40 ms).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let graceful = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!(timeout = ?drain_timeout, "shutting down: draining in-flight requests");
        let _ = stop_tx.send(());
    });
    tokio::select! {
        r = graceful => r,
        () = async move {
            if stop_rx.await.is_ok() {
                tokio::time::sleep(drain_timeout).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!("drain timeout reached; closing remaining connections");
            Ok(())
        }
    }
}
