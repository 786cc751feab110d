//! `cocoon client-proxy`: a local OpenAI-compatible endpoint that seals every request end to
//! end to an attested worker (cocoon::client_proxy, docs/e2e.md).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use cocoon_client::{ClientConfig, SealedClient};

#[derive(Args)]
pub struct ClientProxyArgs {
    /// The network's gateway, e.g. https://gateway.example/v1
    #[arg(long)]
    base_url: String,
    /// Your API key (sent to the gateway; it authenticates and bills, and sees no content).
    #[arg(long, env = "COCOON_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Attestation policy (TOML, as `[attestation.policy]`); strict defaults otherwise.
    #[arg(long)]
    policy: Option<std::path::PathBuf>,
    /// Accept the INSECURE simulated TEE (to try a `cocoon dev` network).
    #[arg(long)]
    allow_simulated: bool,
    /// Where SDKs reach the proxy; keep it on loopback (it holds your key and plaintext).
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: String,
    /// Pad each sealed request body, and have the worker pad each answer frame, to a
    /// multiple of this many bytes (0: off; at most 65536 for answers). See docs/e2e.md §7.
    #[arg(long, default_value_t = 0)]
    pad_to: usize,
    /// Output cap declared for a request that sets no max_tokens (per choice).
    #[arg(long, default_value_t = 4096)]
    default_max_tokens: u64,
    /// Verify the workers' evidence again after this many seconds.
    #[arg(long, default_value_t = 300)]
    reverify_secs: u64,
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

pub async fn run(a: ClientProxyArgs) -> anyhow::Result<()> {
    super::init_tracing("info");
    let policy = cocoon::verify::load_policy(a.policy.as_deref(), a.allow_simulated)?;
    let client = Arc::new(SealedClient::new(ClientConfig {
        base_url: a.base_url.clone(),
        api_key: a.api_key,
        policy,
        timeout: Duration::from_secs(a.timeout_secs),
        default_max_tokens: a.default_max_tokens,
        pad_to: a.pad_to,
        reverify_after: Duration::from_secs(a.reverify_secs),
    })?);
    // Verify every model's workers at start, and say what was found.
    match cocoon::client_proxy::verify_all(&client).await {
        Ok(report) => eprint!("{report}"),
        Err(e) => eprintln!("warning: could not verify the network's workers at start: {e:#}"),
    }
    let listener = tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("binding {}", a.listen))?;
    eprintln!("cocoon client-proxy: http://{}/v1 -> {} (every request sealed end to end)", listener.local_addr()?, a.base_url);
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.cancel();
    });
    cocoon::client_proxy::serve(client, listener, stop).await?;
    Ok(())
}
