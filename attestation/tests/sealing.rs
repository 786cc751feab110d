//! HPKE job sealing and the encrypted response stream: every failure mode has its own error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use attestation::{
    JobContext, JobOpener, JobSealer, ResponseOpener, ResponseSealer, SealError, SealedChunk,
};
use uuid::Uuid;

fn job() -> JobContext {
    JobContext::new(Uuid::from_u128(0x1234), "llama-3-70b")
}

fn setup() -> (JobOpener, ResponseSealer, ResponseOpener) {
    let worker = JobOpener::generate().unwrap();
    let (sealed, opener) = JobSealer::new(&worker.public_key())
        .unwrap()
        .seal(&job(), b"{\"prompt\":\"hi\"}")
        .unwrap();
    let (plain, sealer) = worker.open(&job(), &sealed).unwrap();
    assert_eq!(plain, b"{\"prompt\":\"hi\"}");
    (worker, sealer, opener)
}

fn chunks(sealer: &mut ResponseSealer, n: usize) -> Vec<SealedChunk> {
    (0..n)
        .map(|i| {
            sealer
                .seal(format!("chunk {i}").as_bytes(), i + 1 == n)
                .unwrap()
        })
        .collect()
}

#[test]
fn a_job_and_its_stream_round_trip() {
    let (_, mut sealer, mut opener) = setup();
    for (i, c) in chunks(&mut sealer, 5).iter().enumerate() {
        assert_eq!(c.seq, i as u64);
        assert_eq!(opener.open(c).unwrap(), format!("chunk {i}").into_bytes());
    }
    assert!(opener.is_finished());
    opener.finish().unwrap();
    assert_eq!(
        sealer.seal(b"more", false).unwrap_err(),
        SealError::StreamFinished
    );
    // JSON form.
    let c = SealedChunk {
        seq: 1,
        last: false,
        ciphertext: vec![1, 2, 3],
    };
    assert_eq!(
        serde_json::to_string(&c).unwrap(),
        r#"{"seq":1,"last":false,"ciphertext":"AQID"}"#
    );
}

#[test]
fn a_sealed_job_opens_only_for_its_worker_job_and_model() {
    let worker = JobOpener::generate().unwrap();
    let other_worker = JobOpener::generate().unwrap();
    let (sealed, _) = JobSealer::new(&worker.public_key())
        .unwrap()
        .seal(&job(), b"secret prompt")
        .unwrap();

    let err = other_worker.open(&job(), &sealed).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot open sealed job 00000000-0000-0000-0000-000000001234 (model \"llama-3-70b\"): it was sealed to another worker key, for another job id or model, or altered"
    );
    let other_job = JobContext::new(Uuid::from_u128(0x1235), "llama-3-70b");
    assert!(matches!(
        worker.open(&other_job, &sealed),
        Err(SealError::JobOpen { .. })
    ));
    let other_model = JobContext::new(Uuid::from_u128(0x1234), "llama-3-8b");
    assert!(matches!(
        worker.open(&other_model, &sealed),
        Err(SealError::JobOpen { .. })
    ));

    let mut tampered = sealed.clone();
    tampered.ciphertext[3] ^= 1;
    assert!(matches!(
        worker.open(&job(), &tampered),
        Err(SealError::JobOpen { .. })
    ));
    let mut tampered = sealed.clone();
    tampered.enc[0] ^= 1;
    assert!(matches!(
        worker.open(&job(), &tampered),
        Err(SealError::JobOpen { .. })
    ));
    assert!(worker.open(&job(), &sealed).is_ok());
}

#[test]
fn dropped_chunk_is_detected() {
    let (_, mut sealer, mut opener) = setup();
    let c = chunks(&mut sealer, 3);
    opener.open(&c[0]).unwrap();
    let err = opener.open(&c[2]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "response chunk 2 arrived while chunk 1 was expected: a chunk was dropped or reordered"
    );
    // The stream is failed for good, even if the missing chunk shows up.
    assert_eq!(opener.open(&c[1]).unwrap_err(), SealError::StreamFailed);
    assert_eq!(opener.finish().unwrap_err(), SealError::StreamFailed);
}

#[test]
fn reordered_chunks_are_detected() {
    let (_, mut sealer, mut opener) = setup();
    let c = chunks(&mut sealer, 4);
    opener.open(&c[0]).unwrap();
    opener.open(&c[1]).unwrap();
    assert_eq!(
        opener.open(&c[3]).unwrap_err(),
        SealError::ChunkOutOfOrder {
            seq: 3,
            expected: 2
        }
    );
}

#[test]
fn replayed_chunk_is_detected() {
    let (_, mut sealer, mut opener) = setup();
    let c = chunks(&mut sealer, 3);
    opener.open(&c[0]).unwrap();
    opener.open(&c[1]).unwrap();
    let err = opener.open(&c[1]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "response chunk 1 was already received (expecting chunk 2): replayed chunk"
    );
}

#[test]
fn tampered_chunk_is_detected() {
    let (_, mut sealer, mut opener) = setup();
    let c = chunks(&mut sealer, 2);
    let mut t = c[0].clone();
    t.ciphertext[0] ^= 0x20;
    assert_eq!(
        opener.open(&t).unwrap_err().to_string(),
        "response chunk 0 failed authentication: tampered, or sealed for another job"
    );
    // Relabelled sequence number or end flag: authenticated through nonce and AAD.
    let (_, mut sealer, mut opener) = setup();
    let c = chunks(&mut sealer, 2);
    let early_end = SealedChunk {
        last: true,
        ..c[0].clone()
    };
    assert_eq!(
        opener.open(&early_end).unwrap_err(),
        SealError::ChunkTampered { seq: 0 }
    );
    let (_, mut sealer, mut opener) = setup();
    let c = chunks(&mut sealer, 2);
    opener.open(&c[0]).unwrap();
    let relabelled = SealedChunk {
        seq: 1,
        ..c[0].clone()
    };
    assert_eq!(
        opener.open(&relabelled).unwrap_err(),
        SealError::ChunkTampered { seq: 1 }
    );
}

#[test]
fn chunk_from_another_job_is_detected() {
    let (_, mut sealer_a, _) = setup();
    let (_, _, mut opener_b) = setup();
    let c = chunks(&mut sealer_a, 1);
    assert_eq!(
        opener_b.open(&c[0]).unwrap_err(),
        SealError::ChunkTampered { seq: 0 }
    );
}

#[test]
fn truncated_stream_and_chunks_after_the_end_are_detected() {
    let (_, mut sealer, mut opener) = setup();
    let c = chunks(&mut sealer, 3);
    opener.open(&c[0]).unwrap();
    opener.open(&c[1]).unwrap();
    assert_eq!(
        opener.finish().unwrap_err().to_string(),
        "response stream ended after 2 chunks without its final chunk: truncated"
    );
    opener.open(&c[2]).unwrap();
    opener.finish().unwrap();
    assert_eq!(
        opener.open(&c[2]).unwrap_err(),
        SealError::ChunkAfterEnd { seq: 2 }
    );
}
