//! Evidence and sealed messages survive the wire formats: JSON (report endpoint) and
//! MessagePack (the router <-> worker link, `rmp-serde` named and compact), where blobs are
//! byte strings instead of base64/hex.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use attestation::{
    AttestationReport, Evidence, EvidenceProducer, JobContext, JobOpener, JobSealer, Nonce, Policy,
    SealedChunk, SealedJob, Verifier, WorkerAttestation,
};
use common::*;
use serde::{de::DeserializeOwned, Serialize};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) -> usize {
    let json = serde_json::to_vec(value).unwrap();
    assert_eq!(&serde_json::from_slice::<T>(&json).unwrap(), value);
    let named = rmp_serde::to_vec_named(value).unwrap();
    assert_eq!(&rmp_serde::from_slice::<T>(&named).unwrap(), value);
    let compact = rmp_serde::to_vec(value).unwrap();
    assert_eq!(&rmp_serde::from_slice::<T>(&compact).unwrap(), value);
    assert!(
        named.len() < json.len(),
        "msgpack {} >= json {}",
        named.len(),
        json.len()
    );
    named.len()
}

#[test]
fn attestations_round_trip_in_json_and_msgpack() {
    let keys = JobOpener::generate().unwrap();
    let nonce = Nonce::random().unwrap();
    let sim = EvidenceProducer::simulated()
        .unwrap()
        .attest(keys.public_key(), b"spki", nonce, 5)
        .unwrap();
    let tdx = WorkerAttestation {
        evidence: tdx_v5().evidence(),
        ..sim.clone()
    };
    let snp = WorkerAttestation {
        evidence: Evidence::SevSnp(snp_milan()),
        ..sim.clone()
    };
    for att in [&sim, &tdx, &snp] {
        round_trip(att);
    }
    // Still verifies after a msgpack trip.
    let back: WorkerAttestation =
        rmp_serde::from_slice(&rmp_serde::to_vec_named(&sim).unwrap()).unwrap();
    Verifier::new(Policy::insecure_dev())
        .verify_attestation(&back, &nonce, 5)
        .unwrap();
    let s = tdx_v5();
    let back: Evidence =
        rmp_serde::from_slice(&rmp_serde::to_vec_named(&s.evidence()).unwrap()).unwrap();
    strict().verify_evidence(&back, s.now()).unwrap();

    round_trip(&AttestationReport {
        nonce,
        model: Some("m".into()),
        policy: Policy::default(),
        workers: vec![sim, tdx, snp],
        gateway: None,
    });
}

#[test]
fn sealed_messages_round_trip() {
    let keys = JobOpener::generate().unwrap();
    let job = JobContext::new(uuid::Uuid::new_v4(), "m");
    let (sealed, mut opener) = JobSealer::new(&keys.public_key())
        .unwrap()
        .seal(&job, b"body")
        .unwrap();
    round_trip(&sealed);
    let sealed: SealedJob = rmp_serde::from_slice(&rmp_serde::to_vec(&sealed).unwrap()).unwrap();
    let (_, mut sealer) = keys.open(&job, &sealed).unwrap();
    let chunk = sealer.seal(&[7; 100], true).unwrap();
    // 100 bytes of plaintext: 16-byte tag, plus seq/last/framing.
    let size = round_trip(&chunk);
    assert!(size < 100 + 16 + 40, "{size}");
    let chunk: SealedChunk =
        rmp_serde::from_slice(&rmp_serde::to_vec_named(&chunk).unwrap()).unwrap();
    assert_eq!(opener.open(&chunk).unwrap(), vec![7; 100]);
}
