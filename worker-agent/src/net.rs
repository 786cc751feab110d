//! The worker's outbound link to the router: mutual TLS 1.3 (router certificate pinned by
//! SHA-256 fingerprint; the worker presents a fresh self-signed certificate per connection,
//! whose key its evidence binds), WebSocket, one binary frame per [`protocol`] message.
//! Reconnects with exponential backoff and jitter; each connection starts with the router's
//! `Challenge`, answered by `Hello` with evidence.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{wire, RouterToWorker, WorkerToRouter};
use rand::Rng;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::{LinkIdentity, WorkerAgent};

/// Link ids, unique in this process (the in-process link of `cocoon dev` uses 0).
static NEXT_LINK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Where the router listens for workers and how to recognise it.
#[derive(Clone, Debug)]
pub struct RouterLink {
    /// e.g. `wss://router.example:7443/v1/worker`
    pub url: String,
    /// Hex SHA-256 of the router's DER certificate.
    pub cert_sha256: String,
}

#[derive(Debug)]
struct PinnedCert {
    pin: Vec<u8>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Pinning the exact certificate replaces name and chain checks: nothing else can match.
        if Sha256::digest(end_entity.as_ref()).as_slice() == self.pin.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("router certificate does not match the pinned fingerprint".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A per-connection TLS identity: short-lived by construction, re-made with every reconnect
/// (and so re-attested).
struct ClientIdentity {
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
    spki_der: Vec<u8>,
}

impl ClientIdentity {
    fn generate() -> Result<Self, String> {
        let ck = rcgen::generate_simple_self_signed(vec!["cocoon-worker".to_string()])
            .map_err(|e| format!("generating the worker TLS certificate: {e}"))?;
        Ok(Self {
            cert_der: ck.cert.der().to_vec(),
            key_der: ck.key_pair.serialize_der(),
            spki_der: ck.key_pair.public_key_der(),
        })
    }
}

fn client_config(pin_hex: &str, id: &ClientIdentity) -> Result<Arc<rustls::ClientConfig>, String> {
    let pin = hex::decode(pin_hex.trim()).map_err(|e| format!("router cert fingerprint is not hex: {e}"))?;
    if pin.len() != 32 {
        return Err(format!("router cert fingerprint must be 32 bytes of hex, got {}", pin.len()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCert { pin, provider }))
        .with_client_auth_cert(
            vec![id.cert_der.clone().into()],
            rustls::pki_types::PrivateKeyDer::try_from(id.key_der.clone()).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(cfg))
}

fn host_port(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("wss://")
        .ok_or_else(|| format!("router URL must start with wss://, got {url:?}"))?;
    let authority = rest.split('/').next().unwrap_or("");
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("router URL needs a port: {url:?}"))?;
    let port = port.parse().map_err(|_| format!("bad port in {url:?}"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// Keeps the worker connected until `shutdown`; on shutdown the agent drains over the live
/// connection before it closes.
pub async fn run(agent: Arc<WorkerAgent>, link: RouterLink, engine_wait: Duration, shutdown: CancellationToken) -> Result<(), String> {
    // Fail fast on a bad pin or URL; each connection builds its own config and identity.
    client_config(&link.cert_sha256, &ClientIdentity::generate()?)?;
    let (host, port) = host_port(&link.url)?;
    let mut backoff = Duration::from_millis(100);
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let mut connected = false;
        match connect_once(&agent, &link, &host, port, engine_wait, &shutdown, &mut connected).await {
            Ok(()) if shutdown.is_cancelled() => return Ok(()),
            Ok(()) => {
                tracing::warn!("router closed the connection; reconnecting");
                backoff = Duration::from_millis(100);
            }
            Err(e) => tracing::warn!(error = %e, "router link failed"),
        }
        // A link that came up and then broke (the router was killed or restarted) starts
        // over with a short wait: the backoff is for a router that stays unreachable, and
        // must not grow with every restart of it.
        if connected {
            backoff = Duration::from_millis(100);
        }
        // Full jitter, so a fleet of workers does not reconnect in lockstep.
        let wait = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn connect_once(
    agent: &Arc<WorkerAgent>,
    link: &RouterLink,
    host: &str,
    port: u16,
    engine_wait: Duration,
    shutdown: &CancellationToken,
    connected: &mut bool,
) -> Result<(), String> {
    let info = agent.info(engine_wait).await.map_err(|e| e.to_string())?;
    let identity = ClientIdentity::generate()?;
    let tls = tokio_rustls::TlsConnector::from(client_config(&link.cert_sha256, &identity)?);
    let tcp = tokio::net::TcpStream::connect((host, port)).await.map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let stream = tls.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
    let (ws, _) = tokio_tungstenite::client_async(link.url.as_str(), stream)
        .await
        .map_err(|e| format!("WebSocket: {e}"))?;
    let (mut sink, mut source) = ws.split();
    *connected = true;
    tracing::info!(url = %link.url, "connected to router; answering its challenge");
    let link_id = NEXT_LINK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let identity = LinkIdentity {
        info,
        link_id,
        tls_spki_der: Arc::new(identity.spki_der),
    };

    let (to_agent, from_router) = mpsc::channel::<RouterToWorker>(1024);
    let (to_router, mut events) = mpsc::channel::<WorkerToRouter>(4096);
    // A per-connection token: the agent drains on shutdown, or stops when the link drops.
    let conn = shutdown.child_token();
    // Abort-on-drop: if this future is dropped (the worker is stopping hard), nothing of the
    // connection outlives it, so the router sees the link close at once.
    let mut run = AbortOnDropHandle::new(tokio::spawn(agent.clone().run(identity, from_router, to_router, conn.clone())));
    let mut writer = AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(msg) = events.recv().await {
            let Ok(bytes) = wire::encode(&msg) else { continue };
            if sink.send(Message::Binary(bytes.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    }));
    let result = loop {
        match source.next().await {
            None | Some(Ok(Message::Close(_))) => break Ok(()),
            Some(Err(e)) => break Err(format!("read: {e}")),
            Some(Ok(Message::Binary(b))) => match wire::decode::<RouterToWorker>(&b) {
                // Not admitted (e.g. its evidence failed the policy): back off like an
                // unreachable router instead of retrying at once.
                Ok(RouterToWorker::Refused { reason }) => {
                    *connected = false;
                    break Err(format!("the router refused this worker: {reason}"));
                }
                Ok(msg) => {
                    if to_agent.send(msg).await.is_err() {
                        break Ok(());
                    }
                }
                Err(e) => break Err(format!("router sent {e}")),
            },
            Some(Ok(_)) => {}
        }
    };
    // The link is gone: stop the agent loop for this connection (running jobs see closed channels).
    drop(to_agent);
    if !shutdown.is_cancelled() {
        agent.abort_link(link_id);
    }
    conn.cancel();
    let _ = (&mut run).await;
    let _ = (&mut writer).await;
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_router_urls() {
        assert_eq!(host_port("wss://127.0.0.1:7443/v1/worker"), Ok(("127.0.0.1".into(), 7443)));
        assert_eq!(host_port("wss://[::1]:7443/v1/worker"), Ok(("::1".into(), 7443)));
        assert!(host_port("ws://x:1").is_err());
        assert!(host_port("wss://x/v1").is_err());
    }

    #[test]
    fn rejects_bad_pins() {
        let id = ClientIdentity::generate().unwrap();
        assert!(client_config("zz", &id).is_err());
        assert!(client_config("abcd", &id).is_err());
        assert!(client_config(&"ab".repeat(32), &id).is_ok());
    }
}
