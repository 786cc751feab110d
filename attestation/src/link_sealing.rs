//! Link-mode sealing: one HPKE context per worker link, per-job keys exported from it.
//!
//! Per-job HPKE ([`crate::JobSealer`]) costs an ephemeral X25519 key pair and a
//! Diffie-Hellman on each side for every job (~180 µs of CPU per request in total). Here the
//! KEM runs once per link: the router sets up an HPKE sender context to the worker's attested
//! key and sends its encapsulated key once; each job then gets
//! * a fresh random 16-byte salt,
//! * a body key `Export("cocoon-rs/link/v1/job" ‖ salt ‖ job info)` used once
//!   (ChaCha20-Poly1305, nonce 0, AAD = job info = job id and model),
//! * response-stream keys exported the same way under their own labels,
//!
//! so a sealed job opens only on that link, for that job id and model, and its chunks are
//! numbered and authenticated exactly as in per-job mode. Trade-off: forward secrecy per link
//! instead of per job: the worker's key lives as long as the link (re-attestation on a live
//! link keeps it), so one compromised key exposes that link's jobs until it reconnects.

use chacha20poly1305::aead::{Aead as _, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use rand_core::{OsRng, UnwrapErr};
use serde::{Deserialize, Serialize};

use crate::binding::{random_bytes, HpkePublicKey};
use crate::sealing::{
    hpke_err, HpkeAead, JobContext, JobOpener, Kdf, Kem, ResponseOpener, ResponseSealer,
    SealError, StreamKeys,
};
use crate::serde_bytes::{b64, hex_array};

const LINK_INFO: &[u8] = b"cocoon-rs/link/v1\0";
const JOB_KEY_LABEL: &[u8] = b"cocoon-rs/link/v1/job\0";
const RESPONSE_LABEL: &[u8] = b"cocoon-rs/link/v1/response\0";

/// A job sealed with its link's context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSealedJob {
    #[serde(with = "hex_array")]
    pub salt: [u8; 16],
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
}

/// `label ‖ salt ‖ job info`: binds every exported key to this job on this link.
fn exporter_context(label: &[u8], salt: &[u8; 16], info: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(label.len() + salt.len() + info.len());
    out.extend_from_slice(label);
    out.extend_from_slice(salt);
    out.extend_from_slice(info);
    out
}

fn body_cipher(export: impl Fn(&[u8], &mut [u8]) -> Result<(), hpke::HpkeError>, salt: &[u8; 16], info: &[u8]) -> Result<ChaCha20Poly1305, SealError> {
    let mut key = [0u8; 32];
    export(&exporter_context(JOB_KEY_LABEL, salt, info), &mut key).map_err(hpke_err("export"))?;
    Ok(ChaCha20Poly1305::new(&key.into()))
}

fn stream_keys(
    export: impl Fn(&[u8], &mut [u8]) -> Result<(), hpke::HpkeError>,
    salt: &[u8; 16],
    info: &[u8],
) -> Result<StreamKeys, SealError> {
    StreamKeys::export(|label, out| {
        let mut ctx = exporter_context(RESPONSE_LABEL, salt, info);
        ctx.extend_from_slice(label);
        export(&ctx, out)
    })
}

/// Router side: the sender context of one worker link.
pub struct LinkSealer {
    ctx: hpke::aead::AeadCtxS<HpkeAead, Kdf, Kem>,
    recipient: HpkePublicKey,
}

impl std::fmt::Debug for LinkSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSealer").field("recipient", &self.recipient).finish_non_exhaustive()
    }
}

impl LinkSealer {
    /// Sets up the link's HPKE context to the worker's attested key; the returned
    /// encapsulated key goes to the worker once (`RouterToWorker::Session`).
    pub fn new(worker_key: &HpkePublicKey) -> Result<(Self, [u8; 32]), SealError> {
        let key = <Kem as hpke::Kem>::PublicKey::from_bytes(&worker_key.0)
            .map_err(hpke_err("public key import"))?;
        let (enc, ctx) = hpke::setup_sender::<HpkeAead, Kdf, Kem, _>(
            &OpModeS::Base,
            &key,
            LINK_INFO,
            &mut UnwrapErr(OsRng),
        )
        .map_err(hpke_err("setup sender"))?;
        let enc = <[u8; 32]>::try_from(enc.to_bytes().as_slice()).map_err(|_| SealError::Hpke {
            op: "encapsulate",
            detail: "encapsulated key is not 32 bytes".into(),
        })?;
        Ok((Self { ctx, recipient: *worker_key }, enc))
    }

    pub fn recipient(&self) -> &HpkePublicKey {
        &self.recipient
    }

    /// Seals a job body; returns it with the opener of the job's response stream.
    pub fn seal(&self, job: &JobContext, plaintext: &[u8]) -> Result<(LinkSealedJob, ResponseOpener), SealError> {
        let salt: [u8; 16] = random_bytes().map_err(|e| SealError::Hpke { op: "salt", detail: e.to_string() })?;
        let info = job.info();
        let export = |c: &[u8], out: &mut [u8]| self.ctx.export(c, out);
        let ciphertext = body_cipher(export, &salt, &info)?
            .encrypt(&[0u8; 12].into(), Payload { msg: plaintext, aad: &info })
            .map_err(|_| SealError::Hpke { op: "seal", detail: "ChaCha20-Poly1305 encryption failed".into() })?;
        let keys = stream_keys(export, &salt, &info)?;
        Ok((LinkSealedJob { salt, ciphertext }, ResponseOpener::new(keys)))
    }
}

/// Worker side: the receiver context of one link.
pub struct LinkOpener {
    ctx: hpke::aead::AeadCtxR<HpkeAead, Kdf, Kem>,
}

impl std::fmt::Debug for LinkOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkOpener").finish_non_exhaustive()
    }
}

impl JobOpener {
    /// Opens the link context the router set up to this worker's key.
    pub fn open_link(&self, enc: &[u8; 32]) -> Result<LinkOpener, SealError> {
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(hpke_err("encapsulated key import"))?;
        let ctx = hpke::setup_receiver::<HpkeAead, Kdf, Kem>(&OpModeR::Base, &self.secret, &enc, LINK_INFO)
            .map_err(hpke_err("setup receiver"))?;
        Ok(LinkOpener { ctx })
    }
}

impl LinkOpener {
    /// Opens one job; fails unless it was sealed on this link for exactly this job id and
    /// model, unaltered.
    pub fn open(&self, job: &JobContext, sealed: &LinkSealedJob) -> Result<(Vec<u8>, ResponseSealer), SealError> {
        let info = job.info();
        let export = |c: &[u8], out: &mut [u8]| self.ctx.export(c, out);
        let body = body_cipher(export, &sealed.salt, &info)?
            .decrypt(&[0u8; 12].into(), Payload { msg: &sealed.ciphertext, aad: &info })
            .map_err(|_| SealError::JobOpen { job_id: job.job_id, model: job.model.clone() })?;
        let keys = stream_keys(export, &sealed.salt, &info)?;
        Ok((body, ResponseSealer::new(keys)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn round_trip_and_every_binding() {
        let worker = JobOpener::generate().unwrap();
        let (sealer, enc) = LinkSealer::new(&worker.public_key()).unwrap();
        let link = worker.open_link(&enc).unwrap();
        let job = JobContext::new(Uuid::new_v4(), "m");
        let (sealed, mut opener) = sealer.seal(&job, b"prompt").unwrap();
        let (body, mut rs) = link.open(&job, &sealed).unwrap();
        assert_eq!(body, b"prompt");
        let c0 = rs.seal(b"a", false).unwrap();
        let c1 = rs.seal(b"b", true).unwrap();
        assert_eq!(opener.open(&c0).unwrap(), b"a");
        assert_eq!(opener.open(&c1).unwrap(), b"b");
        opener.finish().unwrap();

        // Another job id, another model, another link, a flipped byte, another salt: refused.
        let other_id = JobContext::new(Uuid::new_v4(), "m");
        assert!(matches!(link.open(&other_id, &sealed), Err(SealError::JobOpen { .. })));
        assert!(link.open(&JobContext::new(job.job_id, "m2"), &sealed).is_err());
        let (_, enc2) = LinkSealer::new(&worker.public_key()).unwrap();
        assert!(worker.open_link(&enc2).unwrap().open(&job, &sealed).is_err());
        let mut bad = sealed.clone();
        bad.ciphertext[0] ^= 1;
        assert!(link.open(&job, &bad).is_err());
        let mut salted = sealed.clone();
        salted.salt[0] ^= 1;
        assert!(link.open(&job, &salted).is_err());
        // Two jobs never share keys: a chunk of one does not open in the other.
        let (s2, mut o2) = sealer.seal(&job, b"again").unwrap();
        assert_ne!(s2.salt, sealed.salt);
        let (_, mut rs2) = link.open(&job, &s2).unwrap();
        let _ = rs2.seal(b"x", false).unwrap();
        let (_, mut rs_first) = link.open(&job, &sealed).unwrap();
        assert!(o2.open(&rs_first.seal(b"y", false).unwrap()).is_err());
        // A worker with another key cannot open the link at all.
        let stranger = JobOpener::generate().unwrap();
        assert!(stranger.open_link(&enc).unwrap().open(&job, &sealed).is_err());
    }
}
