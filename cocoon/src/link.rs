//! The in-process link between the router and a worker-agent (the embedded network). It runs
//! the same challenge / evidence / admission as a networked link ([`Router::serve_link`]);
//! only the TLS key is absent, so the evidence binds an empty SPKI.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use router::Router;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use worker_agent::{LinkIdentity, WorkerAgent};

/// Registers `agent` with `router` (after it attests) and runs both ends until `shutdown`
/// (then the worker drains, and the link ends when it stops talking).
pub async fn attach_local_worker(
    router: &Router,
    agent: Arc<WorkerAgent>,
    shutdown: CancellationToken,
    engine_wait: Duration,
) -> anyhow::Result<JoinHandle<()>> {
    let info = agent.info(engine_wait).await?;
    let worker_id = info.worker_id.clone();
    let (to_worker, from_router) = mpsc::channel(router.config().worker_queue);
    let (events_tx, events_rx) = mpsc::channel(4096);
    let identity = LinkIdentity {
        info,
        link_id: 0,
        tls_spki_der: Arc::new(Vec::new()),
    };
    let run = tokio::spawn(agent.run(identity, from_router, events_tx, shutdown));
    let r = router.clone();
    let mut serve = tokio::spawn(async move {
        let incoming = ReceiverStream::new(events_rx).map(Ok);
        // The link lives as long as the worker talks: it ends after the worker's drain.
        r.serve_link(to_worker, incoming, attestation::spki_sha256(&[]), None, CancellationToken::new())
            .await
    });
    // Wait for admission, so the caller sees the worker's models at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !router.snapshot().iter().any(|w| w.worker_id == worker_id) {
        if serve.is_finished() {
            let result = (&mut serve).await.context("worker link task")?;
            return Err(anyhow::anyhow!("the local worker was not admitted: {}", match result {
                Err(e) => e.to_string(),
                Ok(()) => "link closed".into(),
            }));
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the local worker did not attest within 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(tokio::spawn(async move {
        let _ = run.await;
        if let Ok(Err(e)) = serve.await {
            tracing::warn!(error = %e, "local worker link ended");
        }
    }))
}
