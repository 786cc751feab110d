//! Workers dial the router (outbound from the worker, so NAT and firewalls in front of GPU
//! hosts need no inbound rule) over TLS 1.3, then speak WebSocket with one binary frame per
//! [`protocol`] message. WebSocket rather than HTTP/2: one long-lived bidirectional message
//! stream is exactly what the link is, with framing and ping/pong built in, and it passes
//! proxies and load balancers that terminate only HTTP/1.1 upgrades.
//!
//! TLS is mutual: the worker presents a self-signed certificate whose key its TEE evidence
//! binds (`report_data` covers SHA-256 of the certificate's SubjectPublicKeyInfo), so the
//! certificate is trusted because of the attestation, not a CA. The router's first message is
//! a nonce (`Challenge`); the worker's first is `Hello` with evidence bound to its HPKE key,
//! this connection's TLS key and that nonce (see [`Router::serve_link`]). It is then attached
//! until the connection ends or it stays silent longer than the liveness timeout (workers
//! send a load report every health interval), at which point its in-flight jobs fail over.
//!
//! Why not put the evidence in the certificate (classic RA-TLS): the binding includes a
//! fresh router nonce, which needs a round trip first; a certificate made before the
//! handshake could only bind a stale one. Evidence is still checked once per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{wire, RouterToWorker, WorkerToRouter};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
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
            .with_client_cert_verifier(Arc::new(AttestedClientCert {
                provider: Arc::new(rustls::crypto::ring::default_provider()),
            }))
            .with_single_cert(vec![self.cert_der.clone().into()], key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Arc::new(cfg))
    }
}

/// Requires a client certificate and checks that the handshake was signed by its key, but
/// not who issued it: the worker's attestation binds that key (see the module docs), and a
/// worker whose evidence does not is refused right after the handshake.
#[derive(Debug)]
struct AttestedClientCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientCertVerifier for AttestedClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A TCP stream that may deliver at most `budget` bytes (shared, so admission can lift it):
/// an unadmitted peer cannot make the router buffer more than that, whatever it sends.
struct Budgeted<S> {
    inner: S,
    budget: Arc<AtomicU64>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Budgeted<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            let left = self.budget.load(Ordering::Relaxed);
            if left != u64::MAX {
                if n > left {
                    metrics::counter!("cocoon_router_pre_auth_budget_exceeded_total").increment(1);
                    return std::task::Poll::Ready(Err(std::io::Error::other(
                        "worker sent more than router.pre_auth_bytes before it was admitted",
                    )));
                }
                self.budget.fetch_sub(n, Ordering::Relaxed);
            }
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Budgeted<S> {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepts worker connections until `shutdown`. Before admission a connection is held to
/// `router.max_unattested_links` (beyond it, new connections are closed at once), a handshake
/// deadline, and `router.pre_auth_bytes`: a flood of connections or bytes costs bounded
/// memory and cannot starve the links of workers that attest.
pub async fn serve_workers(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    liveness: Duration,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let unattested = Arc::new(tokio::sync::Semaphore::new(router.config().max_unattested_links));
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
        let Ok(permit) = unattested.clone().try_acquire_owned() else {
            metrics::counter!("cocoon_router_links_refused_total", "reason" => "unattested_limit").increment(1);
            tracing::debug!(%peer, "too many unattested worker connections; closing");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let budget = Arc::new(AtomicU64::new(router.config().pre_auth_bytes));
        let tcp = Budgeted { inner: tcp, budget: budget.clone() };
        let pre_auth = crate::PreAuth { permit: Some(permit), budget: Some(budget) };
        let (acceptor, router, shutdown) = (acceptor.clone(), router.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = handle_worker(acceptor, tcp, router, liveness, shutdown, pre_auth).await {
                tracing::warn!(%peer, error = %e, "worker connection ended");
            }
        });
    }
}

async fn handle_worker(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: Budgeted<tokio::net::TcpStream>,
    router: Router,
    liveness: Duration,
    shutdown: CancellationToken,
    pre_auth: crate::PreAuth,
) -> Result<(), String> {
    let handshake = Duration::from_secs(10);
    let tls = tokio::time::timeout(handshake, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("worker presented no TLS certificate")?;
    let spki = attestation::cert_spki_der(cert.as_ref())?;
    let tls_spki_sha256 = attestation::spki_sha256(&spki);
    let ws = tokio::time::timeout(handshake, tokio_tungstenite::accept_async(tls))
        .await
        .map_err(|_| "WebSocket handshake timed out".to_string())?
        .map_err(|e| format!("WebSocket handshake: {e}"))?;
    let (mut sink, stream) = ws.split();

    let (out, mut out_rx) = mpsc::channel::<RouterToWorker>(router.config().worker_queue);
    let mut writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            let refused = matches!(msg, RouterToWorker::Refused { .. });
            let Ok(bytes) = wire::encode(&msg) else { continue };
            if sink.send(Message::Binary(bytes.into())).await.is_err() || refused {
                break;
            }
        }
        let _ = sink.close().await;
    });
    // Binary frames are messages; a close frame ends the link; pings are answered by
    // tungstenite and text frames are not part of the protocol.
    let incoming = stream
        .take_while(|m| std::future::ready(!matches!(m, Ok(Message::Close(_)))))
        .filter_map(|m| {
            std::future::ready(match m {
                Ok(Message::Binary(b)) => Some(
                    wire::decode::<WorkerToRouter>(&b).map_err(|e| format!("worker sent {e}")),
                ),
                Ok(_) => None,
                Err(e) => Some(Err(format!("read: {e}"))),
            })
        });
    let result = router
        .serve_link_with(out, Box::pin(incoming), tls_spki_sha256, Some(liveness), shutdown, pre_auth)
        .await;
    // serve_link dropped the session (its sender clone); give a refusal time to be written.
    let _ = tokio::time::timeout(Duration::from_secs(1), &mut writer).await;
    writer.abort();
    result.map_err(|e| e.to_string())
}
