//! Timings for the lead's notes (ignored by default; run in release):
//! `cargo test -p attestation --release --test overhead -- --ignored --nocapture`
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use attestation::{Evidence, JobContext, JobOpener, JobSealer, Nonce, Policy, Verifier};
use common::*;

fn per_iter(n: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..n.div_ceil(10) {
        f();
    }
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed() / n
}

#[test]
#[ignore = "timing, run in release with --ignored --nocapture"]
fn sealing_and_verification_overhead() {
    let worker = JobOpener::generate().unwrap();
    let job = JobContext::new(uuid::Uuid::new_v4(), "llama-3-70b");
    let body = vec![b'x'; 4096];

    let t = per_iter(2000, || {
        let sealer = JobSealer::new(&worker.public_key()).unwrap();
        let (sealed, _opener) = sealer.seal(&job, &body).unwrap();
        let _ = worker.open(&job, &sealed).unwrap();
    });
    println!(
        "per job (router seal + worker open, 4 KiB body, incl. HPKE setup and key export): {t:?}"
    );
    let t = per_iter(2000, || {
        let _ = JobSealer::new(&worker.public_key())
            .unwrap()
            .seal(&job, &body)
            .unwrap();
    });
    println!("  router side only (seal): {t:?}");
    let (sealed, _) = JobSealer::new(&worker.public_key())
        .unwrap()
        .seal(&job, &body)
        .unwrap();
    let t = per_iter(2000, || {
        let _ = worker.open(&job, &sealed).unwrap();
    });
    println!("  worker side only (open): {t:?}");

    let (link_sealer, enc) = attestation::LinkSealer::new(&worker.public_key()).unwrap();
    let link = worker.open_link(&enc).unwrap();
    let t = per_iter(2000, || {
        let (sealed, _opener) = link_sealer.seal(&job, &body).unwrap();
        let _ = link.open(&job, &sealed).unwrap();
    });
    println!("per job, link mode (one HPKE context per link, per-job exported keys; seal + open, 4 KiB): {t:?}");

    for size in [64usize, 512, 4096] {
        let (sealed, mut opener) = JobSealer::new(&worker.public_key())
            .unwrap()
            .seal(&job, &body)
            .unwrap();
        let (_, mut sealer) = worker.open(&job, &sealed).unwrap();
        let chunk = vec![b'y'; size];
        let n = 20_000u32;
        let start = Instant::now();
        for _ in 0..n {
            let c = sealer.seal(&chunk, false).unwrap();
            let _ = opener.open(&c).unwrap();
        }
        let t = start.elapsed() / n;
        let last = sealer.seal(&chunk, true).unwrap();
        let json = serde_json::to_vec(&last).unwrap();
        let msgpack = rmp_serde::to_vec_named(&last).unwrap();
        println!(
            "per chunk ({size} B, seal + open): {t:?}; sealed size: MessagePack {} B, JSON {} B",
            msgpack.len(),
            json.len()
        );
    }

    let s = tdx_v4();
    let claims = strict().verify_evidence(&s.evidence(), s.now()).unwrap();
    let v = Verifier::new(policy_allowing(&claims));
    let ev = s.evidence();
    let t = per_iter(200, || {
        let _ = v.verify_evidence(&ev, s.now()).unwrap();
    });
    println!("TDX quote verification (dcap-qvl, offline): {t:?}");
    let ev = Evidence::SevSnp(snp_milan());
    let t = per_iter(200, || {
        let _ = v.verify_evidence(&ev, SNP_MILAN_NOW).unwrap();
    });
    println!("SEV-SNP report verification (sev, VCEK chain + signature): {t:?}");
    let tee = attestation::EvidenceProducer::simulated().unwrap();
    let att = tee
        .attest(worker.public_key(), b"spki", Nonce([1; 32]), 1000)
        .unwrap();
    let v = Verifier::new(Policy::insecure_dev());
    let t = per_iter(2000, || {
        let _ = v.verify_attestation(&att, &Nonce([1; 32]), 1000).unwrap();
    });
    println!("simulated attestation verification: {t:?}");
}
