//! End-to-end sealed requests (protocol `cocoon-e2e/1`, specified in `docs/e2e.md`): the
//! client seals the request body to the serving worker's attested HPKE key; the gateway and
//! router see only the clear routing facts ([`E2eFacts`]) and relay bytes; the worker opens
//! the body inside its TEE and seals the answer back to the client as numbered frames under
//! keys exported from the request's HPKE context.
//!
//! Bindings (each one checked by a test below):
//! * Every clear fact (request id, model, endpoint, stream, the declared token bounds, the
//!   target worker, its key) is the HPKE `info` and the AEAD's AAD: a gateway that changes
//!   any of them, or routes the body to another worker, makes it unopenable.
//! * Response keys are exported from the request's context, salted with the encapsulated key
//!   and a fresh response nonce: the answer opens only for this request.
//! * Each frame's sequence number is in its nonce and AAD, the last is flagged, and the final
//!   frame carries the frame count and a hash of every earlier frame: a dropped, reordered,
//!   replayed, tampered or truncated (at a frame boundary too) answer fails.
//! * Memory before authentication is bounded by the caller: the sealed body is opened only
//!   once whole, from a size-limited read.

use chacha20poly1305::aead::{Aead as _, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use rand_core::{OsRng, UnwrapErr};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::binding::{random_bytes, HpkePublicKey};
use crate::sealing::{hpke_err, HpkeAead, JobOpener, Kdf, Kem, SealError};

/// The protocol's name and version, sent as `cocoon-e2e: 1`.
pub const E2E_VERSION: &str = "1";
/// First bytes of every sealed answer, before the response nonce.
pub const RESPONSE_MAGIC: &[u8; 8] = b"COCOE2E1";

const REQUEST_INFO_TAG: &[u8] = b"cocoon-rs/e2e/v1/request\0";
const RESPONSE_LABEL: &[u8] = b"cocoon-rs/e2e/v1/response\0";
const FRAME_AAD_TAG: &[u8] = b"cocoon-rs/e2e/v1/frame\0";
/// A frame: `u32 length of the rest ‖ u64 seq ‖ u8 last ‖ ciphertext`.
const FRAME_HEADER: usize = 4 + 8 + 1;
/// Largest frame accepted (a whole non-streaming answer is one frame).
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// What travels in clear next to a sealed request, and what the worker checks the sealed
/// body against. All of it is bound into the HPKE context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct E2eFacts {
    /// Chosen by the client; names this request in receipts.
    pub request_id: Uuid,
    pub model: String,
    /// The API path, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    pub stream: bool,
    /// The client's upper bound on prompt tokens (the hold covers it).
    pub max_prompt_tokens: u64,
    /// The client's upper bound on generated tokens, all choices together.
    pub max_output_tokens: u64,
    /// The worker the request is for.
    pub worker_id: String,
    /// That worker's attested HPKE key the body is sealed to.
    pub worker_key: HpkePublicKey,
    /// Response frames are padded to a multiple of this many bytes (0: none; at most
    /// [`MAX_PAD_TO`]), so the gateway sees frame sizes only to that granularity.
    #[serde(default)]
    pub pad_to: u32,
}

/// Largest response padding granule a client may ask for.
pub const MAX_PAD_TO: u32 = 64 * 1024;

impl E2eFacts {
    /// Unambiguous encoding: tag, then each field fixed-size or length-prefixed.
    pub fn encode(&self) -> Vec<u8> {
        fn put(out: &mut Vec<u8>, b: &[u8]) {
            out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(b);
        }
        let mut out = Vec::with_capacity(160 + self.model.len() + self.endpoint.len() + self.worker_id.len());
        out.extend_from_slice(REQUEST_INFO_TAG);
        out.extend_from_slice(self.request_id.as_bytes());
        put(&mut out, self.model.as_bytes());
        put(&mut out, self.endpoint.as_bytes());
        out.push(u8::from(self.stream));
        out.extend_from_slice(&self.max_prompt_tokens.to_be_bytes());
        out.extend_from_slice(&self.max_output_tokens.to_be_bytes());
        put(&mut out, self.worker_id.as_bytes());
        out.extend_from_slice(&self.worker_key.0);
        // Appended only when set, so an unpadded request encodes as before padding existed;
        // still unambiguous, as everything before it has a fixed or prefixed length.
        if self.pad_to > 0 {
            out.extend_from_slice(&self.pad_to.to_be_bytes());
        }
        out
    }

    /// SHA-256 of [`Self::encode`]: short, for AADs and receipts.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }
}

/// A sealed request body: the HPKE encapsulated key and the ciphertext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedRequest {
    pub enc: [u8; 32],
    pub ciphertext: Vec<u8>,
}

/// Why an end-to-end exchange failed. Each names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum E2eError {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("cannot open the sealed request: it was sealed to another key or worker, for other facts (model, endpoint, stream, bounds, request id), or altered")]
    RequestOpen,
    #[error("the sealed answer does not start with {expected:?}")]
    BadMagic { expected: &'static str },
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame {seq} failed authentication: tampered, or sealed for another request")]
    FrameTampered { seq: u64 },
    #[error("frame {seq} arrived while frame {expected} was expected: dropped, reordered or replayed")]
    FrameOutOfOrder { seq: u64, expected: u64 },
    #[error("frame {seq} arrived after the final frame")]
    FrameAfterEnd { seq: u64 },
    #[error("the final frame counts {claimed} frames but {received} arrived")]
    FrameCount { claimed: u64, received: u64 },
    #[error("the final frame's transcript hash does not match the frames received")]
    Transcript,
    #[error("the sealed answer ended after {received} frames without its final frame: truncated")]
    Truncated { received: u64 },
    #[error("undecodable frame {seq}: {detail}")]
    Decode { seq: u64, detail: String },
    #[error("the answer already failed; nothing more is accepted")]
    Failed,
}

/// One frame's content, after opening.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Frame {
    /// A non-streaming body, or one SSE `data:` payload of a stream.
    Data {
        #[serde(with = "crate::serde_bytes::b64")]
        data: Vec<u8>,
    },
    /// The engine or worker failed after the request was opened: its status and error body.
    Error {
        status: u16,
        #[serde(with = "crate::serde_bytes::b64")]
        body: Vec<u8>,
    },
    /// Always last: how many frames came before and a hash of them, and the signed receipt.
    Final {
        frames: u64,
        #[serde(with = "crate::serde_bytes::b64")]
        transcript: Vec<u8>,
        receipt: Option<crate::receipt::SignedReceipt>,
    },
}

/// The two response keys (AEAD key and nonce base) for one answer.
struct FrameKeys {
    cipher: ChaCha20Poly1305,
    nonce_base: [u8; 12],
    facts_digest: [u8; 32],
}

impl FrameKeys {
    fn derive(
        export: impl Fn(&[u8], &mut [u8]) -> Result<(), hpke::HpkeError>,
        enc: &[u8; 32],
        response_nonce: &[u8; 32],
        facts_digest: [u8; 32],
    ) -> Result<Self, SealError> {
        let ctx = |what: &[u8]| {
            let mut c = Vec::with_capacity(RESPONSE_LABEL.len() + 64 + what.len());
            c.extend_from_slice(RESPONSE_LABEL);
            c.extend_from_slice(enc);
            c.extend_from_slice(response_nonce);
            c.extend_from_slice(what);
            c
        };
        let mut key = [0u8; 32];
        let mut nonce_base = [0u8; 12];
        export(&ctx(b"key"), &mut key).map_err(hpke_err("export"))?;
        export(&ctx(b"nonce"), &mut nonce_base).map_err(hpke_err("export"))?;
        Ok(Self {
            cipher: ChaCha20Poly1305::new(&key.into()),
            nonce_base,
            facts_digest,
        })
    }

    fn nonce(&self, seq: u64) -> [u8; 12] {
        let mut n = self.nonce_base;
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    fn aad(&self, seq: u64, last: bool) -> Vec<u8> {
        let mut aad = Vec::with_capacity(FRAME_AAD_TAG.len() + 32 + 9);
        aad.extend_from_slice(FRAME_AAD_TAG);
        aad.extend_from_slice(&self.facts_digest);
        aad.extend_from_slice(&seq.to_be_bytes());
        aad.push(u8::from(last));
        aad
    }
}

/// One MessagePack value, then only the zero bytes of padding.
fn decode_frame(seq: u64, plain: &[u8]) -> Result<Frame, E2eError> {
    let mut cursor = std::io::Cursor::new(plain);
    let frame: Frame = rmp_serde::from_read(&mut cursor).map_err(|e| E2eError::Decode { seq, detail: e.to_string() })?;
    let rest = plain.get(usize::try_from(cursor.position()).unwrap_or(usize::MAX)..).unwrap_or_default();
    if rest.iter().any(|b| *b != 0) {
        return Err(E2eError::Decode { seq, detail: "bytes after the frame that are not padding".into() });
    }
    Ok(frame)
}

fn encode_frame(frame: &Frame) -> Result<Vec<u8>, SealError> {
    rmp_serde::to_vec_named(frame).map_err(|e| SealError::Hpke { op: "frame encode", detail: e.to_string() })
}

/// Client side: seals `body` for `facts` to the worker key named in them. Returns the sealed
/// request and the opener of its answer.
pub fn seal_request(facts: &E2eFacts, body: &[u8]) -> Result<(SealedRequest, ResponseReader), E2eError> {
    let key = <Kem as hpke::Kem>::PublicKey::from_bytes(&facts.worker_key.0).map_err(hpke_err("public key import"))?;
    let info = facts.encode();
    let (enc, mut ctx) = hpke::setup_sender::<HpkeAead, Kdf, Kem, _>(&OpModeS::Base, &key, &info, &mut UnwrapErr(OsRng))
        .map_err(hpke_err("setup sender"))?;
    let ciphertext = ctx.seal(body, &info).map_err(hpke_err("seal"))?;
    let enc: [u8; 32] = enc.to_bytes().as_slice().try_into().map_err(|_| SealError::Hpke {
        op: "encapsulate",
        detail: "encapsulated key is not 32 bytes".into(),
    })?;
    let reader = ResponseReader {
        ctx: Box::new(move |c: &[u8], out: &mut [u8]| ctx.export(c, out)),
        enc,
        facts_digest: facts.digest(),
        buf: Vec::new(),
        keys: None,
        next: 0,
        transcript: Sha256::new(),
        done: false,
        failed: false,
    };
    Ok((SealedRequest { enc, ciphertext }, reader))
}

impl JobOpener {
    /// Worker side: opens a sealed request for `facts` (only if sealed to this key, for exactly
    /// these facts, unaltered), and returns the body with the sealer of its answer.
    pub fn open_request(&self, facts: &E2eFacts, sealed: &SealedRequest) -> Result<(Vec<u8>, ResponseWriter), E2eError> {
        if facts.worker_key != self.public_key() {
            return Err(E2eError::RequestOpen);
        }
        let info = facts.encode();
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&sealed.enc).map_err(|_| E2eError::RequestOpen)?;
        let mut ctx = hpke::setup_receiver::<HpkeAead, Kdf, Kem>(&OpModeR::Base, &self.secret, &enc, &info)
            .map_err(|_| E2eError::RequestOpen)?;
        let body = ctx.open(&sealed.ciphertext, &info).map_err(|_| E2eError::RequestOpen)?;
        let response_nonce: [u8; 32] =
            random_bytes().map_err(|e| SealError::Hpke { op: "response nonce", detail: e.to_string() })?;
        let keys = FrameKeys::derive(|c, out| ctx.export(c, out), &sealed.enc, &response_nonce, facts.digest())?;
        Ok((
            body,
            ResponseWriter {
                keys,
                pad_to: facts.pad_to.min(MAX_PAD_TO) as usize,
                response_nonce,
                next: 0,
                transcript: Sha256::new(),
                header_sent: false,
                finished: false,
            },
        ))
    }
}

/// Worker side: seals the answer as frames. Emit [`Self::header`] first (it carries the
/// response nonce), then data or error frames, then exactly one [`Self::finish`].
pub struct ResponseWriter {
    keys: FrameKeys,
    pad_to: usize,
    response_nonce: [u8; 32],
    next: u64,
    transcript: Sha256,
    header_sent: bool,
    finished: bool,
}

impl std::fmt::Debug for ResponseWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseWriter").field("next", &self.next).field("finished", &self.finished).finish_non_exhaustive()
    }
}

impl ResponseWriter {
    /// The first bytes of the answer: magic and the response nonce.
    pub fn header(&mut self) -> Vec<u8> {
        self.header_sent = true;
        let mut out = Vec::with_capacity(RESPONSE_MAGIC.len() + 32);
        out.extend_from_slice(RESPONSE_MAGIC);
        out.extend_from_slice(&self.response_nonce);
        out
    }

    /// Seals one data or error frame.
    pub fn frame(&mut self, frame: &Frame) -> Result<Vec<u8>, SealError> {
        if matches!(frame, Frame::Final { .. }) {
            return Err(SealError::Hpke { op: "frame", detail: "use finish() for the final frame".into() });
        }
        self.seal(frame, false)
    }

    /// Seals the final frame, with the frame count, transcript hash and the receipt.
    pub fn finish(&mut self, receipt: Option<crate::receipt::SignedReceipt>) -> Result<Vec<u8>, SealError> {
        let transcript = self.transcript.clone().finalize().to_vec();
        self.seal(&Frame::Final { frames: self.next, transcript, receipt }, true)
    }

    /// SHA-256 of every frame sealed so far, ciphertext as sent (for the receipt's response
    /// digest).
    pub fn transcript(&self) -> [u8; 32] {
        self.transcript.clone().finalize().into()
    }

    fn seal(&mut self, frame: &Frame, last: bool) -> Result<Vec<u8>, SealError> {
        if self.finished {
            return Err(SealError::StreamFinished);
        }
        let seq = self.next;
        let mut plain = encode_frame(frame)?;
        // Zero bytes after the MessagePack value, so every frame on the wire is a multiple of
        // `pad_to` (header and tag included): sizes leak only to that granularity.
        if self.pad_to > 1 {
            let wire = FRAME_HEADER + plain.len() + 16;
            plain.resize(plain.len() + (wire.div_ceil(self.pad_to) * self.pad_to - wire), 0);
        }
        let ct = self
            .keys
            .cipher
            .encrypt(&self.keys.nonce(seq).into(), Payload { msg: &plain, aad: &self.keys.aad(seq, last) })
            .map_err(|_| SealError::Hpke { op: "frame seal", detail: "ChaCha20-Poly1305 encryption failed".into() })?;
        let len = u32::try_from(8 + 1 + ct.len()).map_err(|_| SealError::Hpke { op: "frame", detail: "frame too large".into() })?;
        let mut out = Vec::with_capacity(FRAME_HEADER + ct.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.push(u8::from(last));
        out.extend_from_slice(&ct);
        self.transcript.update(&out);
        self.next = seq.checked_add(1).ok_or(SealError::SequenceExhausted)?;
        self.finished = last;
        Ok(out)
    }
}

type Exporter = Box<dyn Fn(&[u8], &mut [u8]) -> Result<(), hpke::HpkeError> + Send + Sync>;

/// Client side: reads a sealed answer as its bytes arrive, in any split, and yields the
/// opened frames in order. Any anomaly fails the answer for good.
pub struct ResponseReader {
    ctx: Exporter,
    enc: [u8; 32],
    facts_digest: [u8; 32],
    buf: Vec<u8>,
    keys: Option<FrameKeys>,
    next: u64,
    transcript: Sha256,
    done: bool,
    failed: bool,
}

impl std::fmt::Debug for ResponseReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseReader").field("next", &self.next).field("done", &self.done).finish_non_exhaustive()
    }
}

impl ResponseReader {
    /// Feeds bytes; returns every frame completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Frame>, E2eError> {
        if self.failed {
            return Err(E2eError::Failed);
        }
        self.buf.extend_from_slice(bytes);
        let r = self.drain();
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn drain(&mut self) -> Result<Vec<Frame>, E2eError> {
        let mut out = Vec::new();
        if self.keys.is_none() {
            let head = RESPONSE_MAGIC.len() + 32;
            if self.buf.len() < head {
                if !RESPONSE_MAGIC.starts_with(&self.buf[..self.buf.len().min(RESPONSE_MAGIC.len())]) {
                    return Err(E2eError::BadMagic { expected: "COCOE2E1" });
                }
                return Ok(out);
            }
            if &self.buf[..RESPONSE_MAGIC.len()] != RESPONSE_MAGIC {
                return Err(E2eError::BadMagic { expected: "COCOE2E1" });
            }
            let mut nonce = [0u8; 32];
            nonce.copy_from_slice(&self.buf[RESPONSE_MAGIC.len()..head]);
            self.keys = Some(FrameKeys::derive(&self.ctx, &self.enc, &nonce, self.facts_digest)?);
            self.buf.drain(..head);
        }
        let Some(keys) = &self.keys else { return Ok(out) };
        while self.buf.len() >= 4 {
            let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
            if len > MAX_FRAME_BYTES {
                return Err(E2eError::FrameTooLarge { len, max: MAX_FRAME_BYTES });
            }
            if len < 9 {
                return Err(E2eError::Decode { seq: self.next, detail: format!("frame length {len} is below its header") });
            }
            if self.buf.len() < 4 + len {
                break;
            }
            let raw: Vec<u8> = self.buf.drain(..4 + len).collect();
            let mut seq_bytes = [0u8; 8];
            seq_bytes.copy_from_slice(&raw[4..12]);
            let seq = u64::from_be_bytes(seq_bytes);
            let last = match raw[12] {
                0 => false,
                1 => true,
                _ => return Err(E2eError::FrameTampered { seq }),
            };
            if self.done {
                return Err(E2eError::FrameAfterEnd { seq });
            }
            if seq != self.next {
                return Err(E2eError::FrameOutOfOrder { seq, expected: self.next });
            }
            let plain = keys
                .cipher
                .decrypt(&keys.nonce(seq).into(), Payload { msg: &raw[13..], aad: &keys.aad(seq, last) })
                .map_err(|_| E2eError::FrameTampered { seq })?;
            let frame = decode_frame(seq, &plain)?;
            match (&frame, last) {
                (Frame::Final { frames, transcript, .. }, true) => {
                    if *frames != seq {
                        return Err(E2eError::FrameCount { claimed: *frames, received: seq });
                    }
                    let ours = self.transcript.clone().finalize();
                    if transcript.as_slice() != ours.as_slice() {
                        return Err(E2eError::Transcript);
                    }
                    self.done = true;
                }
                (Frame::Final { .. }, false) | (_, true) => {
                    return Err(E2eError::Decode { seq, detail: "the final flag and the final frame disagree".into() })
                }
                _ => {}
            }
            self.transcript.update(&raw);
            self.next = seq + 1;
            out.push(frame);
        }
        Ok(out)
    }

    /// The answer ended (the connection closed): fine only after the final frame.
    pub fn finish(&self) -> Result<(), E2eError> {
        if self.failed {
            return Err(E2eError::Failed);
        }
        if !self.done {
            return Err(E2eError::Truncated { received: self.next });
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn facts(key: HpkePublicKey) -> E2eFacts {
        E2eFacts {
            request_id: Uuid::new_v4(),
            model: "m".into(),
            endpoint: "/v1/chat/completions".into(),
            stream: true,
            max_prompt_tokens: 100,
            max_output_tokens: 50,
            worker_id: "w1".into(),
            worker_key: key,
            pad_to: 0,
        }
    }

    /// A worker's whole answer: header, two data frames, the final frame.
    fn answer(w: &mut ResponseWriter) -> Vec<Vec<u8>> {
        vec![
            w.header(),
            w.frame(&Frame::Data { data: b"one".to_vec() }).unwrap(),
            w.frame(&Frame::Data { data: b"two".to_vec() }).unwrap(),
            w.finish(None).unwrap(),
        ]
    }

    fn read_all(r: &mut ResponseReader, parts: &[Vec<u8>]) -> Result<Vec<Frame>, E2eError> {
        let mut out = Vec::new();
        for p in parts {
            out.extend(r.push(p)?);
        }
        r.finish()?;
        Ok(out)
    }

    #[test]
    fn round_trip_in_any_split() {
        let worker = JobOpener::generate().unwrap();
        let f = facts(worker.public_key());
        let (sealed, mut reader) = seal_request(&f, b"{\"prompt\":1}").unwrap();
        let (body, mut w) = worker.open_request(&f, &sealed).unwrap();
        assert_eq!(body, b"{\"prompt\":1}");
        let bytes: Vec<u8> = answer(&mut w).concat();
        // One byte at a time: frames come out as they complete.
        let mut frames = Vec::new();
        for b in &bytes {
            frames.extend(reader.push(std::slice::from_ref(b)).unwrap());
        }
        reader.finish().unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0], Frame::Data { data: b"one".to_vec() });
        assert!(matches!(frames[2], Frame::Final { frames: 2, .. }));
    }

    #[test]
    fn padded_frames_hide_sizes_to_the_granule_and_open_unchanged() {
        let worker = JobOpener::generate().unwrap();
        let mut f = facts(worker.public_key());
        f.pad_to = 256;
        let (sealed, mut reader) = seal_request(&f, b"{}").unwrap();
        let (_, mut w) = worker.open_request(&f, &sealed).unwrap();
        let small = w.frame(&Frame::Data { data: b"a".to_vec() }).unwrap();
        let larger = w.frame(&Frame::Data { data: vec![b'x'; 150] }).unwrap();
        let big = w.frame(&Frame::Data { data: vec![b'y'; 300] }).unwrap();
        let fin = w.finish(None).unwrap();
        // A 1-byte and a 150-byte chunk look the same on the wire; 300 bytes take two granules.
        assert_eq!((small.len(), larger.len(), big.len(), fin.len()), (256, 256, 512, 256));
        let frames = read_all(&mut reader, &[w.header(), small, larger, big, fin]).unwrap();
        assert_eq!(frames[0], Frame::Data { data: b"a".to_vec() });
        assert_eq!(frames[2], Frame::Data { data: vec![b'y'; 300] });

        // Unpadded requests encode their facts as before padding existed (old clients).
        let mut g = f.clone();
        g.pad_to = 0;
        assert_eq!(g.encode().len() + 4, f.encode().len());
        // Zero bytes after the frame are padding; anything else is not.
        let mut plain = encode_frame(&Frame::Data { data: b"z".to_vec() }).unwrap();
        plain.extend([0, 0]);
        assert_eq!(decode_frame(3, &plain).unwrap(), Frame::Data { data: b"z".to_vec() });
        plain.push(1);
        assert!(matches!(decode_frame(3, &plain), Err(E2eError::Decode { seq: 3, .. })));
    }

    #[test]
    fn every_clear_fact_is_bound() {
        let worker = JobOpener::generate().unwrap();
        let f = facts(worker.public_key());
        let (sealed, _) = seal_request(&f, b"body").unwrap();
        type Change = Box<dyn Fn(&mut E2eFacts)>;
        let variants: Vec<Change> = vec![
            Box::new(|f| f.request_id = Uuid::new_v4()),
            Box::new(|f| f.model = "other".into()),
            Box::new(|f| f.endpoint = "/v1/completions".into()),
            Box::new(|f| f.stream = false),
            Box::new(|f| f.max_prompt_tokens += 1),
            Box::new(|f| f.max_output_tokens += 1),
            Box::new(|f| f.worker_id = "w2".into()),
            // A gateway that strips or changes the padding the client asked for.
            Box::new(|f| f.pad_to = 256),
        ];
        for change in variants {
            let mut g = f.clone();
            change(&mut g);
            assert_eq!(worker.open_request(&g, &sealed).unwrap_err(), E2eError::RequestOpen, "{g:?}");
        }
        // Another worker (key) cannot open it, even claiming the right key.
        let other = JobOpener::generate().unwrap();
        assert_eq!(other.open_request(&f, &sealed).unwrap_err(), E2eError::RequestOpen);
        // A flipped byte.
        let mut bad = sealed.clone();
        bad.ciphertext[3] ^= 1;
        assert_eq!(worker.open_request(&f, &bad).unwrap_err(), E2eError::RequestOpen);
    }

    #[test]
    fn tampered_dropped_reordered_replayed_and_truncated_answers_fail() {
        let worker = JobOpener::generate().unwrap();
        let f = facts(worker.public_key());
        let run = |edit: &dyn Fn(&mut Vec<Vec<u8>>)| {
            let (sealed, mut reader) = seal_request(&f, b"b").unwrap();
            let (_, mut w) = worker.open_request(&f, &sealed).unwrap();
            let mut parts = answer(&mut w);
            edit(&mut parts);
            read_all(&mut reader, &parts)
        };
        assert!(run(&|_| {}).is_ok());
        assert!(matches!(run(&|p| p[1][20] ^= 1), Err(E2eError::FrameTampered { seq: 0 })));
        assert!(matches!(run(&|p| { p.remove(1); }), Err(E2eError::FrameOutOfOrder { seq: 1, expected: 0 })));
        assert!(matches!(run(&|p| p.swap(1, 2)), Err(E2eError::FrameOutOfOrder { seq: 1, expected: 0 })));
        assert!(matches!(run(&|p| { let d = p[1].clone(); p.insert(2, d); }), Err(E2eError::FrameOutOfOrder { seq: 0, expected: 1 })));
        // Cut at a frame boundary: no final frame.
        assert!(matches!(run(&|p| { p.pop(); }), Err(E2eError::Truncated { received: 2 })));
        // The last flag moved onto a data frame.
        assert!(matches!(run(&|p| p[2][12] = 1), Err(E2eError::FrameTampered { seq: 1 })));
        // A frame after the final one.
        assert!(matches!(run(&|p| { let d = p[1].clone(); p.push(d); }), Err(E2eError::FrameAfterEnd { .. })));
        // Another request's answer (its own keys) does not open here.
        let (sealed2, _) = seal_request(&f, b"b").unwrap();
        let (_, mut w2) = worker.open_request(&f, &sealed2).unwrap();
        let foreign = answer(&mut w2);
        let (sealed3, mut reader3) = seal_request(&f, b"b").unwrap();
        let _ = worker.open_request(&f, &sealed3).unwrap();
        assert!(matches!(read_all(&mut reader3, &foreign), Err(E2eError::FrameTampered { seq: 0 })));
        // Garbage instead of the header.
        let (_, mut reader4) = seal_request(&f, b"b").unwrap();
        assert!(matches!(reader4.push(b"HTTP/1.1 200 OK"), Err(E2eError::BadMagic { .. })));
    }
}
