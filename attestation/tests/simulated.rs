//! The simulated TEE end to end: worker attests, router verifies (nonce, TLS key, binding,
//! policy), client verifies a published report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use attestation::{
    verify_report, AttestationCache, AttestationReport, Evidence, EvidenceProducer, JobOpener,
    MemoryNonceStore, Nonce, Policy, SimulatedKey, SimulatedReport, SimulatedTee, Verifier,
    WorkerAttestation, SIMULATED_MEASUREMENTS,
};

const NOW: u64 = 1_800_000_000;
const TLS_SPKI: &[u8] = b"worker TLS SubjectPublicKeyInfo DER";

struct Worker {
    keys: JobOpener,
    producer: EvidenceProducer,
}

impl Worker {
    fn new() -> Self {
        Self {
            keys: JobOpener::generate().unwrap(),
            producer: EvidenceProducer::simulated().unwrap(),
        }
    }

    fn attest(&self, nonce: Nonce, now: u64) -> WorkerAttestation {
        self.producer
            .attest(self.keys.public_key(), TLS_SPKI, nonce, now)
            .unwrap()
    }
}

fn dev_verifier() -> Verifier {
    Verifier::new(Policy::insecure_dev())
}

#[tokio::test]
async fn router_flow_accepts_once_and_rejects_a_replay() {
    let v = dev_verifier();
    let store = MemoryNonceStore::new();
    let worker = Worker::new();
    let nonce = v.issue_nonce(&store, NOW).await.unwrap();
    let att = worker.attest(nonce, NOW + 1);
    let tls = attestation::spki_sha256(TLS_SPKI);

    let ok = v.verify_worker(&att, &tls, &store, NOW + 2).await.unwrap();
    assert!(ok.is_insecure_simulated());
    assert_eq!(ok.hpke_public_key, worker.keys.public_key());
    assert!(
        ok.describe().starts_with("WARNING: SIMULATED TEE"),
        "{}",
        ok.describe()
    );
    assert_eq!(ok.expires_at, NOW + 2 + 3600);

    let err = v
        .verify_worker(&att, &tls, &store, NOW + 3)
        .await
        .unwrap_err();
    assert_eq!(err.rule(), "nonce_replayed", "{err}");

    // Cached by worker key until it expires.
    let cache = AttestationCache::new();
    cache.insert(ok.clone());
    assert_eq!(
        cache.get(&worker.keys.public_key(), NOW + 100),
        Some(ok.clone())
    );
    assert_eq!(
        cache.get(&worker.keys.public_key(), ok.expires_at + 1),
        None
    );
    assert!(cache.is_empty());
}

#[tokio::test]
async fn simulated_evidence_needs_the_opt_in() {
    let worker = Worker::new();
    let nonce = Nonce::random().unwrap();
    let att = worker.attest(nonce, NOW);
    let json = serde_json::to_string(&att).unwrap();
    assert!(
        json.contains("\"kind\":\"simulated\",\"data\":{\"insecure_simulated\":true"),
        "{json}"
    );

    let strict = Verifier::new(Policy::default());
    let err = strict.verify_attestation(&att, &nonce, NOW).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(
        err.to_string(),
        "evidence comes from a simulated TEE (insecure_simulated: true) and allow_insecure_simulated_tee is false"
    );
    // Policy::check refuses it on its own too (defence in depth).
    let claims = dev_verifier().verify_evidence(&att.evidence, NOW).unwrap();
    assert_eq!(
        strict.check_policy(&claims, NOW).unwrap_err().rule(),
        "simulated_not_allowed"
    );
    dev_verifier()
        .verify_attestation(&att, &nonce, NOW)
        .unwrap();
}

#[tokio::test]
async fn tls_key_binding_and_keys_are_enforced() {
    let v = dev_verifier();
    let store = MemoryNonceStore::new();
    let worker = Worker::new();
    let tls = attestation::spki_sha256(TLS_SPKI);

    // The connection's TLS key is not the attested one.
    let nonce = v.issue_nonce(&store, NOW).await.unwrap();
    let att = worker.attest(nonce, NOW);
    let err = v
        .verify_worker(&att, &[0; 32], &store, NOW)
        .await
        .unwrap_err();
    assert_eq!(err.rule(), "tls_key", "{err}");

    // Evidence produced for one HPKE key, presented with another.
    let nonce = v.issue_nonce(&store, NOW).await.unwrap();
    let mut att = worker.attest(nonce, NOW);
    att.hpke_public_key = JobOpener::generate().unwrap().public_key();
    let err = v.verify_worker(&att, &tls, &store, NOW).await.unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(err.rule(), "report_data", "{err}");

    // Evidence for another nonce, relabelled with a fresh one.
    let nonce = v.issue_nonce(&store, NOW).await.unwrap();
    let old = worker.attest(Nonce([1; 32]), NOW);
    let relabelled = WorkerAttestation { nonce, ..old };
    let err = v
        .verify_worker(&relabelled, &tls, &store, NOW)
        .await
        .unwrap_err();
    assert_eq!(err.rule(), "report_data", "{err}");
}

#[test]
fn debug_foreign_measurements_old_and_untrusted_keys_are_rejected() {
    let v = dev_verifier();
    let keys = JobOpener::generate().unwrap();
    let tee = SimulatedTee::generate().unwrap();
    let nonce = Nonce::random().unwrap();
    let binding = attestation::ReportDataBinding::new(keys.public_key(), TLS_SPKI, nonce);
    let att = |report: SimulatedReport| WorkerAttestation {
        evidence: Evidence::Simulated(tee.sign(report)),
        hpke_public_key: keys.public_key(),
        tls_spki_sha256: binding.tls_spki_sha256,
        nonce,
        identity_key: None,
        models_digest: None,
        gpu: None,
    };
    let good = SimulatedReport {
        measurements: SIMULATED_MEASUREMENTS,
        debug: false,
        produced_at: NOW,
        report_data: binding.report_data(),
    };
    v.verify_attestation(&att(good), &nonce, NOW).unwrap();

    let err = v
        .verify_attestation(
            &att(SimulatedReport {
                debug: true,
                ..good
            }),
            &nonce,
            NOW,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "simulated guest runs with debug enabled (the simulated report has debug = true); policy forbids debug"
    );

    let mut m = SIMULATED_MEASUREMENTS;
    m.rtmr2.0[0] ^= 1;
    let err = v
        .verify_attestation(
            &att(SimulatedReport {
                measurements: m,
                ..good
            }),
            &nonce,
            NOW,
        )
        .unwrap_err();
    assert_eq!(err.rule(), "measurement", "{err}");
    assert!(err.to_string().contains("RTMR2"), "{err}");

    let err = v
        .verify_attestation(
            &att(SimulatedReport {
                produced_at: NOW - 301,
                ..good
            }),
            &nonce,
            NOW,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "evidence is 301 s old, over the policy's max_evidence_age_secs 300"
    );
    let err = v
        .verify_attestation(
            &att(SimulatedReport {
                produced_at: NOW + 3600,
                ..good
            }),
            &nonce,
            NOW,
        )
        .unwrap_err();
    assert_eq!(err.rule(), "evidence_future");

    let mut pinned = Policy::insecure_dev();
    pinned.simulated_tee_keys = vec![SimulatedKey([7; 32])];
    let err = Verifier::new(pinned.clone())
        .verify_attestation(&att(good), &nonce, NOW)
        .unwrap_err();
    assert_eq!(err.rule(), "simulated_key", "{err}");
    pinned
        .simulated_tee_keys
        .push(SimulatedKey(tee.public_key()));
    Verifier::new(pinned)
        .verify_attestation(&att(good), &nonce, NOW)
        .unwrap();
}

#[test]
fn client_verifies_a_published_report_and_catches_tampering() {
    let v = dev_verifier();
    let nonce = Nonce::random().unwrap();
    let workers = [Worker::new(), Worker::new()];
    let report = AttestationReport {
        nonce,
        model: Some("test-model".into()),
        policy: v.policy().clone(),
        workers: workers.iter().map(|w| w.attest(nonce, NOW)).collect(),
        gateway: None,
    };
    let json = serde_json::to_string_pretty(&report).unwrap();
    let parsed: AttestationReport = serde_json::from_str(&json).unwrap();

    let verdict = verify_report(&v, &parsed, &nonce, NOW - 1, NOW).unwrap();
    assert!(verdict.all_ok());
    assert!(verdict.any_simulated());

    // Swap in another worker's key: the binding no longer holds.
    let mut tampered = parsed.clone();
    tampered.workers[0].hpke_public_key = tampered.workers[1].hpke_public_key;
    let verdict = verify_report(&v, &tampered, &nonce, NOW - 1, NOW).unwrap();
    assert!(!verdict.all_ok());
    assert_eq!(
        verdict.workers[0].result.as_ref().unwrap_err().rule(),
        "report_data"
    );
    assert!(verdict.workers[1].result.is_ok());

    // Flip one character of the signature in the JSON.
    let sig_at = json.find("\"signature\": \"").unwrap() + 14;
    let mut bytes = json.into_bytes();
    bytes[sig_at] = if bytes[sig_at] == b'0' { b'1' } else { b'0' };
    let flipped: AttestationReport = serde_json::from_slice(&bytes).unwrap();
    let verdict = verify_report(&v, &flipped, &nonce, NOW - 1, NOW).unwrap();
    assert_eq!(
        verdict.workers[0].result.as_ref().unwrap_err().rule(),
        "bad_signature"
    );

    // An answer to another nonce, or one that took too long.
    assert_eq!(
        verify_report(&v, &parsed, &Nonce([0; 32]), NOW - 1, NOW)
            .unwrap_err()
            .rule(),
        "nonce_mismatch"
    );
    assert_eq!(
        verify_report(&v, &parsed, &nonce, NOW - 301, NOW)
            .unwrap_err()
            .rule(),
        "evidence_age"
    );
    // No workers is not a pass.
    let empty = AttestationReport {
        workers: vec![],
        ..parsed
    };
    assert!(!verify_report(&v, &empty, &nonce, NOW, NOW)
        .unwrap()
        .all_ok());
}
