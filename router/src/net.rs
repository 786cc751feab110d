//! Workers dial the router (outbound from the worker, so NAT and firewalls in front of GPU
//! hosts need no inbound rule) over TLS 1.3, then speak WebSocket with one binary frame per
//! [`protocol`] message. WebSocket rather than HTTP/2: one long-lived bidirectional message
//! stream is exactly what the link is, with framing and ping/pong built in, and it passes
//! proxies and load balancers that terminate only HTTP/1.1 upgrades.
//!
//! A worker's first message must be `Hello`; then it is attached to the [`Router`] until the
//! connection ends or it stays silent longer than the liveness timeout (workers send a load
//! report every health interval), at which point its in-flight jobs fail over as usual.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{wire, WorkerToRouter};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::Router;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("no certificate or key found in {0}")]
    Empty(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The router's TLS identity. Workers pin its SHA-256 fingerprint (or trust its CA).
pub struct RouterIdentity {
    pub cert_der: Vec<u8>,
    key_der: Vec<u8>,
    /// Hex SHA-256 of the DER certificate.
    pub fingerprint: String,
}

impl RouterIdentity {
    /// A fresh self-signed certificate for `names` (dev, or pinned by fingerprint).
    pub fn self_signed(names: &[String]) -> Result<Self, TlsError> {
        let ck = rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| TlsError::Generate(e.to_string()))?;
        let cert_der = ck.cert.der().to_vec();
        Ok(Self {
            fingerprint: hex::encode(Sha256::digest(&cert_der)),
            cert_der,
            key_der: ck.key_pair.serialize_der(),
        })
    }

    /// From PEM files (production: a certificate whose fingerprint or CA workers trust).
    pub fn from_pem_files(cert: &str, key: &str) -> Result<Self, TlsError> {
        let read = |p: &str| std::fs::read(p).map_err(|source| TlsError::Read { path: p.into(), source });
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        use rustls::pki_types::pem::PemObject;
        let cert_der = rustls::pki_types::CertificateDer::from_pem_slice(&cert_pem)
            .map(|c| c.to_vec())
            .map_err(|_| TlsError::Empty(cert.into()))?;
        let key_der = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_pem)
            .map(|k| k.secret_der().to_vec())
            .map_err(|_| TlsError::Empty(key.into()))?;
        Ok(Self {
            fingerprint: hex::encode(Sha256::digest(&cert_der)),
            cert_der,
            key_der,
        })
    }

    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::try_from(self.key_der.clone())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert_der.clone().into()], key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Arc::new(cfg))
    }
}

/// Accepts worker connections until `shutdown`.
pub async fn serve_workers(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    liveness: Duration,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "worker accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, router, shutdown) = (acceptor.clone(), router.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = handle_worker(acceptor, tcp, router, liveness, shutdown).await {
                tracing::warn!(%peer, error = %e, "worker connection ended");
            }
        });
    }
}

async fn handle_worker(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    router: Router,
    liveness: Duration,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let handshake = Duration::from_secs(10);
    let tls = tokio::time::timeout(handshake, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let ws = tokio::time::timeout(handshake, tokio_tungstenite::accept_async(tls))
        .await
        .map_err(|_| "WebSocket handshake timed out".to_string())?
        .map_err(|e| format!("WebSocket handshake: {e}"))?;
    let (mut sink, mut stream) = ws.split();

    let hello = match tokio::time::timeout(handshake, stream.next()).await {
        Ok(Some(Ok(Message::Binary(b)))) => wire::decode::<WorkerToRouter>(&b).map_err(|e| e.to_string())?,
        _ => return Err("no hello from worker".into()),
    };
    let WorkerToRouter::Hello(info) = hello else {
        return Err("first message was not hello".into());
    };
    let (session, mut jobs_rx) = router.attach(info);

    let writer = tokio::spawn(async move {
        while let Some(msg) = jobs_rx.recv().await {
            let Ok(bytes) = wire::encode(&msg) else { continue };
            if sink.send(Message::Binary(bytes.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let result = loop {
        let next = tokio::select! {
            n = tokio::time::timeout(liveness, stream.next()) => n,
            () = shutdown.cancelled() => break Ok(()),
        };
        match next {
            Err(_) => break Err(format!("worker {} silent for {liveness:?}", session.worker_id())),
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => break Ok(()),
            Ok(Some(Err(e))) => break Err(format!("read: {e}")),
            Ok(Some(Ok(Message::Binary(b)))) => match wire::decode::<WorkerToRouter>(&b) {
                Ok(msg) => session.handle(msg),
                Err(e) => break Err(format!("worker {} sent {e}", session.worker_id())),
            },
            // Pings are answered by tungstenite; text frames are not part of the protocol.
            Ok(Some(Ok(_))) => {}
        }
    };
    // Detach first (fails its in-flight jobs over), then stop writing.
    drop(session);
    writer.abort();
    result
}

