//! The in-process link between the router and a worker-agent (the embedded network). A
//! networked worker speaks the same [`protocol`] messages over its own connection.

use std::sync::Arc;
use std::time::Duration;

use router::Router;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use worker_agent::WorkerAgent;

/// Registers `agent` with `router` and runs both ends until `shutdown` (then the worker drains).
pub async fn attach_local_worker(
    router: &Router,
    agent: Arc<WorkerAgent>,
    shutdown: CancellationToken,
    engine_wait: Duration,
) -> anyhow::Result<JoinHandle<()>> {
    let info = agent.info(engine_wait).await?;
    let (session, jobs_rx) = router.attach(info);
    let (events_tx, mut events_rx) = mpsc::channel(4096);
    let pump = tokio::spawn(async move {
        // Ends when the agent drops its sender; dropping the session then detaches the worker.
        while let Some(msg) = events_rx.recv().await {
            session.handle(msg);
        }
    });
    let run = tokio::spawn(agent.run(jobs_rx, events_tx, shutdown));
    Ok(tokio::spawn(async move {
        let _ = run.await;
        let _ = pump.await;
    }))
}
