//! Deterministic fuzz-like test (runs on stable, in CI): the real sample quotes, SNP report,
//! VCEK and evidence JSON are mutated thousands of times with a seeded PRNG; every parser and
//! the full verifier must return an error (or, for harmless changes such as extra zero
//! padding, the original claims) and never panic. The coverage-guided equivalent is
//! `attestation/fuzz` (cargo fuzz, nightly).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use attestation::{Evidence, SnpEvidence, TdxEvidence, Verifier};
use common::*;

/// xorshift64*: tiny, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: [u8; 6] = [0, 1, 0x7f, 0x80, 0xfe, 0xff];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next() as u8;
            }
            2 if len > 0 => {
                let i = rng.below(len);
                v[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            3 => v.truncate(rng.below(len + 1)),
            4 => {
                let n = 1 + rng.below(64);
                v.extend((0..n).map(|_| rng.next() as u8));
            }
            5 if len >= 4 => {
                // A length-like field: 0, max, or about the input size.
                let i = rng.below(len - 3);
                let val: u32 = match rng.below(3) {
                    0 => 0,
                    1 => u32::MAX,
                    _ => (len + rng.below(16)) as u32,
                };
                v[i..i + 4].copy_from_slice(&val.to_le_bytes());
            }
            6 if len > 0 => {
                // Duplicate a slice somewhere.
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let slice = v[a..b].to_vec();
                let at = rng.below(len);
                v.splice(at..at, slice);
            }
            7 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                v.drain(a..b);
            }
            _ => {
                let n = 1 + rng.below(2048);
                v.extend(std::iter::repeat_n(0u8, n));
            }
        }
    }
    v
}

fn describe_diff(a: &[u8], b: &[u8]) -> String {
    let first = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let last_a = a.len()
        - a.iter()
            .rev()
            .zip(b.iter().rev())
            .position(|(x, y)| x != y)
            .unwrap_or(0);
    format!(
        "lengths {} -> {}, first difference at {first}, original around it: {:?}, mutated: {:?} (last diff from end ~{last_a})",
        a.len(),
        b.len(),
        String::from_utf8_lossy(&a[first.saturating_sub(8)..(first + 24).min(a.len())]),
        String::from_utf8_lossy(&b[first.saturating_sub(8)..(first + 24).min(b.len())]),
    )
}

fn trim_zeros(v: &[u8]) -> &[u8] {
    let end = v.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &v[..end]
}

#[test]
fn mutated_tdx_quotes_never_panic_the_parser() {
    let mut rng = Rng(0x5EED_0001);
    for s in [tdx_v4(), tdx_v5(), tdx_outdated()] {
        for _ in 0..20_000 {
            let q = mutate(&mut rng, s.quote);
            let _ = attestation::parse_tdx_quote(&q);
        }
    }
}

#[test]
fn mutated_tdx_quotes_never_pass_full_verification() {
    let mut rng = Rng(0x5EED_0002);
    for s in [tdx_v4(), tdx_v5()] {
        let claims = strict().verify_evidence(&s.evidence(), s.now()).unwrap();
        let v = Verifier::new(policy_allowing(&claims));
        let signed = attestation::parse_tdx_quote(s.quote)
            .unwrap()
            .signed_length();
        let (mut accepted, mut unsigned_changes) = (0, 0);
        for i in 0..600 {
            let q = mutate(&mut rng, s.quote);
            let ev = s.evidence_with(q.clone());
            // The PCK certificate chain inside the quote is not covered by the quote signature
            // (its certificates carry their own), so a change there that leaves the chain valid
            // (e.g. in the copy of the root, which is never used: the trust anchor is ours) is
            // harmless. What must hold: the signed region is intact and the claims are unchanged.
            if let Ok(got) = v.verify_evidence(&ev, s.now()) {
                assert!(
                    q.get(..signed) == s.quote.get(..signed),
                    "{}: mutation {i} of the signed region accepted: {}",
                    s.name,
                    describe_diff(s.quote, &q)
                );
                assert_eq!(got, claims, "{}: mutation {i} changed the claims", s.name);
                accepted += 1;
                if trim_zeros(&q) != trim_zeros(s.quote) {
                    unsigned_changes += 1;
                }
            }
        }
        println!("{}: 600 mutations, {accepted} verified (all with the original claims), {unsigned_changes} of them changed unsigned certificate data", s.name);
    }
}

#[test]
fn mutated_snp_reports_and_vceks_never_panic_or_pass() {
    let mut rng = Rng(0x5EED_0003);
    let good = snp_milan();
    for _ in 0..20_000 {
        let _ = attestation::parse_snp_report(&mutate(&mut rng, &good.report));
        let _ = attestation::parse_vcek(&mutate(&mut rng, &good.vcek));
    }
    let v = strict();
    for i in 0..1500 {
        let ev = if i % 3 == 0 {
            SnpEvidence {
                report: good.report.clone(),
                vcek: mutate(&mut rng, &good.vcek),
            }
        } else {
            SnpEvidence {
                report: mutate(&mut rng, &good.report),
                vcek: good.vcek.clone(),
            }
        };
        let changed = ev != good;
        let res = v.verify_evidence(&Evidence::SevSnp(ev.clone()), SNP_MILAN_NOW);
        assert!(
            !(changed && res.is_ok()),
            "SNP mutation {i} accepted: report {}, vcek {}",
            describe_diff(&good.report, &ev.report),
            describe_diff(&good.vcek, &ev.vcek)
        );
    }
}

#[test]
fn mutated_evidence_json_never_panics() {
    let mut rng = Rng(0x5EED_0004);
    let samples = [
        serde_json::to_vec(&tdx_v4().evidence()).unwrap(),
        serde_json::to_vec(&Evidence::SevSnp(snp_milan())).unwrap(),
        serde_json::to_vec(&Evidence::Tdx(TdxEvidence {
            quote: vec![1, 2, 3],
            collateral: None,
        }))
        .unwrap(),
    ];
    let v = strict();
    for (k, json) in samples.iter().enumerate() {
        for _ in 0..3000 {
            let m = mutate(&mut rng, json);
            if let Ok(ev) = serde_json::from_slice::<Evidence>(&m) {
                if k == 2 || rng.below(20) == 0 {
                    let _ = v.verify_evidence(&ev, SNP_MILAN_NOW);
                }
            }
        }
    }
}

#[test]
fn mutated_cert_tables_never_panic() {
    let mut rng = Rng(0x5EED_0005);
    let mut table = Vec::new();
    table.extend_from_slice(
        &uuid::Uuid::from_u128(0x63da758d_e664_4564_adc5_f4b93be8accd).into_bytes(),
    );
    table.extend_from_slice(&48u32.to_le_bytes());
    table.extend_from_slice(&(SNP_MILAN_VCEK.len() as u32).to_le_bytes());
    table.extend_from_slice(&[0; 24]);
    table.extend_from_slice(SNP_MILAN_VCEK);
    assert_eq!(
        attestation::vcek_from_cert_table(&table).unwrap().unwrap(),
        SNP_MILAN_VCEK
    );
    for _ in 0..20_000 {
        let _ = attestation::vcek_from_cert_table(&mutate(&mut rng, &table));
    }
}
