//! End-to-end job encryption, HPKE (RFC 9180) base mode with
//! DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305.
//!
//! * Router: [`JobSealer`] seals a job to the worker's attested HPKE key. The job id and model
//!   go into the HPKE `info` (and the AAD), so a sealed job opens only for that worker, job id
//!   and model.
//! * Worker: [`JobOpener`] holds the HPKE private key, opens the job and gets a
//!   [`ResponseSealer`] keyed by secrets exported from the same HPKE context (RFC 9180 §9.8).
//! * Router: the [`ResponseOpener`] returned with the sealed job opens the response chunks.
//!   Each chunk carries a sequence number bound into its nonce and AAD, and the last chunk is
//!   flagged, so dropped, reordered, replayed, tampered, foreign and truncated streams all
//!   fail with their own [`SealError`].

use chacha20poly1305::aead::{Aead as _, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use rand_core::{OsRng, UnwrapErr};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::binding::{random_bytes, HpkePublicKey};
use crate::error::EvidenceError;
use crate::serde_bytes::{b64, hex_array};

pub(crate) type Kem = hpke::kem::X25519HkdfSha256;
pub(crate) type Kdf = hpke::kdf::HkdfSha256;
pub(crate) type HpkeAead = hpke::aead::ChaCha20Poly1305;

/// The HPKE suite, for documentation and verdicts.
pub const HPKE_SUITE: &str = "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305";

const JOB_INFO_TAG: &[u8] = b"cocoon-rs/job/v1\0";
const RESPONSE_KEY_LABEL: &[u8] = b"cocoon-rs/response/v1/key";
const RESPONSE_NONCE_LABEL: &[u8] = b"cocoon-rs/response/v1/nonce";
const CHUNK_AAD_TAG: &[u8] = b"cocoon-rs/response/v1/chunk\0";
const CHUNK_AAD_LEN: usize = CHUNK_AAD_TAG.len() + 9;

/// Why sealing or opening failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error("HPKE {op} failed: {detail}")]
    Hpke { op: &'static str, detail: String },
    #[error("cannot open sealed job {job_id} (model {model:?}): it was sealed to another worker key, for another job id or model, or altered")]
    JobOpen { job_id: Uuid, model: String },
    #[error("response chunk {seq} failed authentication: tampered, or sealed for another job")]
    ChunkTampered { seq: u64 },
    #[error(
        "response chunk {seq} was already received (expecting chunk {expected}): replayed chunk"
    )]
    ChunkReplayed { seq: u64, expected: u64 },
    #[error("response chunk {seq} arrived while chunk {expected} was expected: a chunk was dropped or reordered")]
    ChunkOutOfOrder { seq: u64, expected: u64 },
    #[error("response chunk {seq} arrived after the final chunk")]
    ChunkAfterEnd { seq: u64 },
    #[error("response stream ended after {received} chunks without its final chunk: truncated")]
    Truncated { received: u64 },
    #[error("response stream already failed; no further chunks are accepted")]
    StreamFailed,
    #[error("the final response chunk was already sealed")]
    StreamFinished,
    #[error("response chunk sequence numbers are exhausted")]
    SequenceExhausted,
}

/// What a job is sealed for; both ends must agree on it (it travels in clear next to the
/// sealed job, and is authenticated by the HPKE context).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobContext {
    pub job_id: Uuid,
    pub model: String,
}

impl JobContext {
    pub fn new(job_id: Uuid, model: impl Into<String>) -> Self {
        Self {
            job_id,
            model: model.into(),
        }
    }

    /// `JOB_INFO_TAG ‖ job id (16 bytes) ‖ u32be(len(model)) ‖ model`.
    pub(crate) fn info(&self) -> Vec<u8> {
        let model = self.model.as_bytes();
        let len = u32::try_from(model.len()).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(JOB_INFO_TAG.len() + 20 + model.len());
        out.extend_from_slice(JOB_INFO_TAG);
        out.extend_from_slice(self.job_id.as_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(model);
        out
    }
}

/// A job sealed to one worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedJob {
    /// HPKE encapsulated key (the sender's ephemeral X25519 public key).
    #[serde(with = "hex_array")]
    pub enc: [u8; 32],
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
}

/// One encrypted response chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedChunk {
    pub seq: u64,
    /// The last chunk of the response; its absence at the end means truncation.
    pub last: bool,
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
}

pub(crate) fn hpke_err(op: &'static str) -> impl Fn(hpke::HpkeError) -> SealError {
    move |e| SealError::Hpke {
        op,
        detail: e.to_string(),
    }
}

/// Router side: seals jobs to one worker's attested HPKE key.
#[derive(Clone, Debug)]
pub struct JobSealer {
    recipient: HpkePublicKey,
    key: <Kem as hpke::Kem>::PublicKey,
}

impl JobSealer {
    pub fn new(worker_key: &HpkePublicKey) -> Result<Self, SealError> {
        let key = <Kem as hpke::Kem>::PublicKey::from_bytes(&worker_key.0)
            .map_err(hpke_err("public key import"))?;
        Ok(Self {
            recipient: *worker_key,
            key,
        })
    }

    pub fn recipient(&self) -> &HpkePublicKey {
        &self.recipient
    }

    /// Seals `plaintext` (the job body) for `job`; returns it with the opener for the
    /// worker's response stream.
    pub fn seal(
        &self,
        job: &JobContext,
        plaintext: &[u8],
    ) -> Result<(SealedJob, ResponseOpener), SealError> {
        let info = job.info();
        let (enc, mut ctx) = hpke::setup_sender::<HpkeAead, Kdf, Kem, _>(
            &OpModeS::Base,
            &self.key,
            &info,
            &mut UnwrapErr(OsRng),
        )
        .map_err(hpke_err("setup sender"))?;
        let ciphertext = ctx.seal(plaintext, &info).map_err(hpke_err("seal"))?;
        let enc_bytes = enc.to_bytes();
        let enc = <[u8; 32]>::try_from(enc_bytes.as_slice()).map_err(|_| SealError::Hpke {
            op: "encapsulate",
            detail: "encapsulated key is not 32 bytes".into(),
        })?;
        let keys = StreamKeys::export(|label, out| ctx.export(label, out))?;
        Ok((SealedJob { enc, ciphertext }, ResponseOpener::new(keys)))
    }
}

/// Worker side: the worker's HPKE key pair. Its public key goes into the attestation binding.
pub struct JobOpener {
    pub(crate) secret: <Kem as hpke::Kem>::PrivateKey,
    public: HpkePublicKey,
}

impl std::fmt::Debug for JobOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobOpener")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl JobOpener {
    /// A fresh key pair from the operating system's RNG (generate inside the TEE; never export).
    pub fn generate() -> Result<Self, EvidenceError> {
        Ok(Self::from_seed(&random_bytes::<32>()?))
    }

    /// Deterministic key pair from 32 secret bytes (HPKE DeriveKeyPair).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let (secret, public) = Kem::derive_keypair(seed);
        let mut pk = [0u8; 32];
        pk.copy_from_slice(public.to_bytes().as_slice());
        Self {
            secret,
            public: HpkePublicKey(pk),
        }
    }

    pub fn public_key(&self) -> HpkePublicKey {
        self.public
    }

    /// Opens a job sealed for `job`; returns the plaintext and the sealer for its response.
    pub fn open(
        &self,
        job: &JobContext,
        sealed: &SealedJob,
    ) -> Result<(Vec<u8>, ResponseSealer), SealError> {
        let fail = || SealError::JobOpen {
            job_id: job.job_id,
            model: job.model.clone(),
        };
        let info = job.info();
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&sealed.enc).map_err(|_| fail())?;
        let mut ctx =
            hpke::setup_receiver::<HpkeAead, Kdf, Kem>(&OpModeR::Base, &self.secret, &enc, &info)
                .map_err(|_| fail())?;
        let plaintext = ctx.open(&sealed.ciphertext, &info).map_err(|_| fail())?;
        let keys = StreamKeys::export(|label, out| ctx.export(label, out))?;
        Ok((plaintext, ResponseSealer::new(keys)))
    }
}

/// Response stream keys exported from the job's HPKE context.
pub(crate) struct StreamKeys {
    cipher: ChaCha20Poly1305,
    nonce_base: [u8; 12],
}

impl StreamKeys {
    pub(crate) fn export(
        export: impl Fn(&[u8], &mut [u8]) -> Result<(), hpke::HpkeError>,
    ) -> Result<Self, SealError> {
        let mut key = [0u8; 32];
        let mut nonce_base = [0u8; 12];
        export(RESPONSE_KEY_LABEL, &mut key).map_err(hpke_err("export"))?;
        export(RESPONSE_NONCE_LABEL, &mut nonce_base).map_err(hpke_err("export"))?;
        let cipher = ChaCha20Poly1305::new(&key.into());
        Ok(Self { cipher, nonce_base })
    }

    fn nonce(&self, seq: u64) -> [u8; 12] {
        let mut n = self.nonce_base;
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    /// `CHUNK_AAD_TAG ‖ u64be(seq) ‖ u8(last)`.
    fn aad(seq: u64, last: bool) -> [u8; CHUNK_AAD_LEN] {
        let mut aad = [0u8; CHUNK_AAD_LEN];
        let (tag, rest) = aad.split_at_mut(CHUNK_AAD_TAG.len());
        tag.copy_from_slice(CHUNK_AAD_TAG);
        let (seq_bytes, flag) = rest.split_at_mut(8);
        seq_bytes.copy_from_slice(&seq.to_be_bytes());
        flag.fill(u8::from(last));
        aad
    }
}

impl std::fmt::Debug for ResponseSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseSealer")
            .field("next", &self.next)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ResponseOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseOpener")
            .field("next", &self.next)
            .field("finished", &self.finished)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Worker side: encrypts the response stream of one job.
pub struct ResponseSealer {
    keys: StreamKeys,
    next: u64,
    finished: bool,
}

impl ResponseSealer {
    pub(crate) fn new(keys: StreamKeys) -> Self {
        Self {
            keys,
            next: 0,
            finished: false,
        }
    }

    /// Seals the next chunk; `last` marks the end of the response (the final usage event).
    pub fn seal(&mut self, data: &[u8], last: bool) -> Result<SealedChunk, SealError> {
        if self.finished {
            return Err(SealError::StreamFinished);
        }
        let seq = self.next;
        let next = seq.checked_add(1).ok_or(SealError::SequenceExhausted)?;
        let aad = StreamKeys::aad(seq, last);
        let ciphertext = self
            .keys
            .cipher
            .encrypt(
                &self.keys.nonce(seq).into(),
                Payload {
                    msg: data,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Hpke {
                op: "chunk seal",
                detail: "ChaCha20-Poly1305 encryption failed".into(),
            })?;
        self.next = next;
        self.finished = last;
        Ok(SealedChunk {
            seq,
            last,
            ciphertext,
        })
    }

    /// Chunks sealed so far.
    pub fn sealed(&self) -> u64 {
        self.next
    }
}

/// Router side: decrypts one job's response stream, strictly in order.
pub struct ResponseOpener {
    keys: StreamKeys,
    next: u64,
    finished: bool,
    failed: bool,
}

impl ResponseOpener {
    pub(crate) fn new(keys: StreamKeys) -> Self {
        Self {
            keys,
            next: 0,
            finished: false,
            failed: false,
        }
    }

    /// Opens the next chunk. Any error fails the stream for good.
    pub fn open(&mut self, chunk: &SealedChunk) -> Result<Vec<u8>, SealError> {
        let result = self.open_inner(chunk);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn open_inner(&mut self, chunk: &SealedChunk) -> Result<Vec<u8>, SealError> {
        if self.failed {
            return Err(SealError::StreamFailed);
        }
        let seq = chunk.seq;
        if self.finished {
            return Err(SealError::ChunkAfterEnd { seq });
        }
        if seq < self.next {
            return Err(SealError::ChunkReplayed {
                seq,
                expected: self.next,
            });
        }
        if seq > self.next {
            return Err(SealError::ChunkOutOfOrder {
                seq,
                expected: self.next,
            });
        }
        let aad = StreamKeys::aad(seq, chunk.last);
        let plain = self
            .keys
            .cipher
            .decrypt(
                &self.keys.nonce(seq).into(),
                Payload {
                    msg: &chunk.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::ChunkTampered { seq })?;
        self.next = seq.saturating_add(1);
        self.finished = chunk.last;
        Ok(plain)
    }

    /// Whether the final chunk was opened.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Call when the transport ends: an error unless the final chunk arrived.
    pub fn finish(&self) -> Result<(), SealError> {
        if self.failed {
            return Err(SealError::StreamFailed);
        }
        if !self.finished {
            return Err(SealError::Truncated {
                received: self.next,
            });
        }
        Ok(())
    }
}
