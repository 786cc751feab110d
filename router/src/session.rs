//! The router's side of one worker link, whatever carries it (TLS + WebSocket, or an
//! in-process channel): challenge, verify, attach, apply messages, re-challenge before the
//! verification expires, detach at the end. One code path, so the embedded network attests
//! exactly like a networked one.

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use protocol::{RouterToWorker, WorkerInfo, WorkerToRouter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::attest::AdmitError;
use crate::Router;

/// What a link holds until the router admits its worker: its place among the unattested
/// links (`router.max_unattested_links`) and its pre-authentication byte budget
/// (`router.pre_auth_bytes`). Admission frees the place and lifts the budget.
#[derive(Default)]
pub struct PreAuth {
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
    pub budget: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl PreAuth {
    fn admitted(self) {
        if let Some(b) = self.budget {
            b.store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("worker not admitted: {0}")]
    Admit(#[from] AdmitError),
    #[error("issuing a nonce: {0}")]
    Nonce(String),
    #[error("{0}")]
    Protocol(String),
    #[error("router side timed out: no hello within {after:?} of the challenge (router.hello_timeout_ms); the worker's evidence did not arrive in time")]
    HelloTimeout { after: Duration },
    #[error("worker {worker} silent for {after:?}")]
    Silent { worker: String, after: Duration },
    #[error("worker {0}'s attestation expired without a fresh one")]
    Expired(String),
    #[error("link closed: {0}")]
    Closed(String),
}

impl Router {
    /// Runs the router side of one worker link until it ends or `shutdown` fires.
    /// `tls_spki_sha256` is the SHA-256 of the TLS key the worker presented on this connection
    /// (the in-process link has none and passes `attestation::spki_sha256(b"")`); the
    /// worker's evidence must bind it. `liveness`: drop a worker silent this long.
    pub async fn serve_link<S>(
        &self,
        out: mpsc::Sender<RouterToWorker>,
        incoming: S,
        tls_spki_sha256: [u8; 32],
        liveness: Option<Duration>,
        shutdown: CancellationToken,
    ) -> Result<(), LinkError>
    where
        S: Stream<Item = Result<WorkerToRouter, String>> + Unpin,
    {
        self.serve_link_with(out, incoming, tls_spki_sha256, liveness, shutdown, PreAuth::default())
            .await
    }

    /// [`Router::serve_link`] for a link that holds `pre_auth` until it is admitted.
    pub async fn serve_link_with<S>(
        &self,
        out: mpsc::Sender<RouterToWorker>,
        mut incoming: S,
        tls_spki_sha256: [u8; 32],
        liveness: Option<Duration>,
        shutdown: CancellationToken,
        pre_auth: PreAuth,
    ) -> Result<(), LinkError>
    where
        S: Stream<Item = Result<WorkerToRouter, String>> + Unpin,
    {
        let (info, sent) = self.challenge(&out, &mut incoming).await?;
        let worker = info.worker_id.clone();
        let admitted = match check_nonce(&info, &sent) {
            Ok(()) => self.attestor().admit(&info, &tls_spki_sha256).await,
            Err(e) => Err(e),
        };
        let verified = match admitted {
            Ok(v) => v,
            Err(e) => return Err(refuse(&out, &worker, e).await),
        };
        if let Err(e) = self.bind_identity(&info, &verified).await {
            return Err(refuse(&out, &worker, e).await);
        }
        let session = match self.attach_with(info, verified, out.clone()) {
            Ok(s) => s,
            Err(e) => return Err(refuse(&out, &worker, e).await),
        };
        pre_auth.admitted();
        let liveness = liveness.unwrap_or(Duration::from_secs(u64::from(u32::MAX)));
        let mut expires_at = session.attestation_expires_at();
        let mut challenged = false;
        // The nonce of the re-challenge in flight: its answer must use exactly that one.
        let mut pending: Option<attestation::Nonce> = None;
        let rechallenge = tokio::time::sleep_until(rechallenge_at(expires_at));
        let expiry = tokio::time::sleep_until(instant_at(expires_at));
        let mut policy_changes = self.attestor().policy_changes();
        policy_changes.mark_unchanged();
        tokio::pin!(rechallenge, expiry);
        let result = loop {
            tokio::select! {
                next = tokio::time::timeout(liveness, incoming.next()) => match next {
                    Err(_) => break Err(LinkError::Silent { worker: worker.clone(), after: liveness }),
                    Ok(None) => break Ok(()),
                    Ok(Some(Err(e))) => break Err(LinkError::Closed(e)),
                    Ok(Some(Ok(WorkerToRouter::Hello(info)))) => {
                        // The answer to a re-challenge: same checks as at admission.
                        let checked = match pending.take() {
                            Some(n) => check_nonce(&info, &n),
                            None => Err(AdmitError::Malformed("a hello that answers no challenge".into())),
                        };
                        let reverified = match checked {
                            Ok(()) => self.attestor().admit(&info, &tls_spki_sha256).await,
                            Err(e) => Err(e),
                        };
                        match reverified.and_then(|v| session.reverified(v)) {
                            Ok(()) => {
                                expires_at = session.attestation_expires_at();
                                challenged = false;
                                rechallenge.as_mut().reset(rechallenge_at(expires_at));
                                expiry.as_mut().reset(instant_at(expires_at));
                                tracing::debug!(%worker, expires_at, "worker re-attested");
                            }
                            Err(e) => {
                                drop(session);
                                return Err(refuse(&out, &worker, e).await);
                            }
                        }
                    }
                    Ok(Some(Ok(msg))) => session.handle(msg),
                },
                () = &mut rechallenge, if !challenged => {
                    challenged = true;
                    match self.attestor().challenge().await {
                        Ok(nonce) => {
                            pending = Some(nonce);
                            let msg = RouterToWorker::Challenge { nonce: Bytes::copy_from_slice(&nonce.0) };
                            if out.send(msg).await.is_err() {
                                break Err(LinkError::Closed("worker queue closed".into()));
                            }
                        }
                        Err(e) => tracing::warn!(%worker, error = %e, "could not re-challenge; retrying at expiry"),
                    }
                }
                // A new policy (e.g. the registry's next version): re-attest now, not at 3/4
                // of the validity.
                Ok(()) = policy_changes.changed(), if !challenged => {
                    rechallenge.as_mut().reset(tokio::time::Instant::now());
                }
                () = &mut expiry => break Err(LinkError::Expired(worker.clone())),
                () = shutdown.cancelled() => break Ok(()),
            }
        };
        // Detach first (fails its in-flight jobs over), then the caller stops writing.
        drop(session);
        result
    }

    async fn challenge<S>(
        &self,
        out: &mpsc::Sender<RouterToWorker>,
        incoming: &mut S,
    ) -> Result<(WorkerInfo, attestation::Nonce), LinkError>
    where
        S: Stream<Item = Result<WorkerToRouter, String>> + Unpin,
    {
        let nonce = self
            .attestor()
            .challenge()
            .await
            .map_err(|e| LinkError::Nonce(e.to_string()))?;
        let msg = RouterToWorker::Challenge {
            nonce: Bytes::copy_from_slice(&nonce.0),
        };
        out.send(msg)
            .await
            .map_err(|_| LinkError::Closed("worker queue closed".into()))?;
        let after = self.config().hello_timeout();
        let deadline = tokio::time::Instant::now() + after;
        loop {
            match tokio::time::timeout_at(deadline, incoming.next()).await {
                Err(_) => return Err(LinkError::HelloTimeout { after }),
                Ok(None) => return Err(LinkError::Closed("before hello".into())),
                Ok(Some(Err(e))) => return Err(LinkError::Closed(e)),
                Ok(Some(Ok(WorkerToRouter::Hello(info)))) => return Ok((info, nonce)),
                // Load reports may race ahead of the hello (the evidence takes a moment).
                Ok(Some(Ok(WorkerToRouter::Load(_)))) => {}
                Ok(Some(Ok(_))) => {
                    return Err(LinkError::Protocol(
                        "a worker must answer the challenge with hello first".into(),
                    ))
                }
            }
        }
    }
}

/// A hello must answer the nonce sent on this connection, not any other unspent one.
fn check_nonce(info: &WorkerInfo, sent: &attestation::Nonce) -> Result<(), AdmitError> {
    #[derive(serde::Deserialize)]
    struct Peek {
        nonce: attestation::Nonce,
    }
    let raw = info.attestation.as_ref().ok_or(AdmitError::Missing)?;
    let peek: Peek = serde_json::from_slice(raw).map_err(|e| AdmitError::Malformed(e.to_string()))?;
    if peek.nonce != *sent {
        return Err(AdmitError::Rejected {
            rule: "nonce",
            source: attestation::AttestationError::NonceMismatch { expected: sent.to_hex(), got: peek.nonce.to_hex() },
        });
    }
    Ok(())
}

async fn refuse(out: &mpsc::Sender<RouterToWorker>, worker: &str, e: AdmitError) -> LinkError {
    metrics::counter!("cocoon_router_workers_refused_total", "rule" => e.rule()).increment(1);
    tracing::warn!(%worker, rule = e.rule(), error = %e, "worker refused");
    let _ = out
        .send(RouterToWorker::Refused {
            reason: e.to_string(),
        })
        .await;
    LinkError::Admit(e)
}

/// Milliseconds from now until a unix time given in seconds (0 if it is past).
fn millis_until(unix_secs: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    u64::try_from((u128::from(unix_secs) * 1000).saturating_sub(now)).unwrap_or(u64::MAX)
}

/// Tokio instant for a unix time in seconds (now if it is already past).
fn instant_at(unix_secs: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_millis(millis_until(unix_secs))
}

/// Re-challenge when three quarters of the remaining validity have passed, so a slow TEE
/// still answers well before expiry.
fn rechallenge_at(expires_at: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_millis(millis_until(expires_at) / 4 * 3)
}
