//! Producing evidence inside a confidential VM through the Linux configfs-tsm interface
//! (`/sys/kernel/config/tsm/report`), which serves both TDX (`tdx_guest`) and SEV-SNP
//! (`sev_guest`) guests. One report: create a private directory, write `inblob` (the 64-byte
//! report_data), read `outblob` (quote or report), `provider`, `auxblob` (SNP certificate
//! table, when the host supplies one) and `generation` (must count exactly our one write, or
//! another writer raced us), then remove the directory.
//!
//! Generating a TDX quote takes tens of milliseconds and blocks: call it from
//! `tokio::task::spawn_blocking`.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use dcap_qvl::QuoteCollateralV3;
use uuid::Uuid;

use crate::binding::{random_bytes, HpkePublicKey, Nonce, ReportDataBinding};
use crate::error::EvidenceError;
use crate::evidence::{Evidence, SnpEvidence, TdxEvidence, WorkerAttestation};
use crate::simulated::SimulatedTee;

/// Where configfs-tsm reports live.
pub const CONFIGFS_TSM_REPORT: &str = "/sys/kernel/config/tsm/report";

/// GUID of the VCEK entry in an SEV-SNP certificate table (GHCB specification).
const VCEK_GUID: Uuid = Uuid::from_u128(0x63da758d_e664_4564_adc5_f4b93be8accd);

/// The raw output of one configfs-tsm report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TsmReport {
    /// `tdx_guest` or `sev_guest`.
    pub provider: String,
    pub outblob: Vec<u8>,
    pub auxblob: Option<Vec<u8>>,
}

/// A configfs-tsm report directory root.
#[derive(Clone, Debug)]
pub struct ConfigfsTsm {
    root: PathBuf,
}

impl Default for ConfigfsTsm {
    fn default() -> Self {
        Self::new(CONFIGFS_TSM_REPORT)
    }
}

struct RemoveDirOnDrop(PathBuf);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "could not remove configfs-tsm report directory");
        }
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> EvidenceError + 'a {
    move |source| EvidenceError::TsmIo {
        op,
        path: path.display().to_string(),
        source,
    }
}

impl ConfigfsTsm {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Whether this looks like a confidential VM with configfs-tsm mounted.
    pub fn is_available(&self) -> bool {
        self.root.is_dir()
    }

    /// Asks the TEE for a report over `report_data`.
    pub fn generate(&self, report_data: &[u8; 64]) -> Result<TsmReport, EvidenceError> {
        if !self.is_available() {
            return Err(EvidenceError::TsmUnavailable(
                self.root.display().to_string(),
            ));
        }
        let name = format!(
            "cocoon-{}-{}",
            std::process::id(),
            hex::encode(random_bytes::<8>()?)
        );
        let dir = self.root.join(name);
        std::fs::create_dir(&dir).map_err(io("create", &dir))?;
        let _cleanup = RemoveDirOnDrop(dir.clone());
        read_report(&dir, report_data)
    }
}

/// Drives one report in an existing directory.
pub(crate) fn read_report(dir: &Path, report_data: &[u8; 64]) -> Result<TsmReport, EvidenceError> {
    let path = dir.join("inblob");
    std::fs::write(&path, report_data).map_err(io("write", &path))?;
    let path = dir.join("outblob");
    let outblob = std::fs::read(&path).map_err(io("read", &path))?;
    let path = dir.join("provider");
    let provider = std::fs::read_to_string(&path)
        .map_err(io("read", &path))?
        .trim()
        .to_string();
    let path = dir.join("auxblob");
    let auxblob = match std::fs::read(&path) {
        Ok(b) if b.is_empty() => None,
        Ok(b) => Some(b),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(io("read", &path)(e)),
    };
    let path = dir.join("generation");
    let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
    let generation = text
        .trim()
        .parse::<u64>()
        .map_err(|e| EvidenceError::TsmIo {
            op: "parse",
            path: path.display().to_string(),
            source: std::io::Error::new(ErrorKind::InvalidData, e),
        })?;
    if generation != 1 {
        return Err(EvidenceError::TsmRace {
            expected: 1,
            got: generation,
        });
    }
    Ok(TsmReport {
        provider,
        outblob,
        auxblob,
    })
}

/// Finds the VCEK (DER) in an SEV-SNP certificate table: 24-byte entries
/// `{ guid[16], offset: u32le, length: u32le }` ended by an all-zero GUID, offsets relative to
/// the table start. Bounds-checked (the `sev` crate's parser dereferences raw pointers).
pub fn vcek_from_cert_table(table: &[u8]) -> Result<Option<Vec<u8>>, EvidenceError> {
    let bad = |m: &str| EvidenceError::BadCertTable(m.to_string());
    for entry in table.chunks(24) {
        let entry: &[u8; 24] = entry
            .try_into()
            .map_err(|_| bad("table ends inside an entry"))?;
        let (guid, rest) = entry.split_at(16);
        let guid = Uuid::from_slice(guid).map_err(|_| bad("bad GUID"))?;
        if guid.is_nil() {
            return Ok(None);
        }
        if guid != VCEK_GUID {
            continue;
        }
        let (offset, length) = rest.split_at(4);
        let word = |b: &[u8]| {
            <[u8; 4]>::try_from(b)
                .map(u32::from_le_bytes)
                .map_err(|_| bad("bad entry"))
                .and_then(|v| usize::try_from(v).map_err(|_| bad("bad entry")))
        };
        let (offset, length) = (word(offset)?, word(length)?);
        let end = offset
            .checked_add(length)
            .ok_or_else(|| bad("VCEK entry overflows"))?;
        let data = table
            .get(offset..end)
            .ok_or_else(|| bad("VCEK entry points outside the table"))?;
        return Ok(Some(data.to_vec()));
    }
    Err(bad("table has no terminating entry"))
}

/// Where a worker's evidence comes from.
#[derive(Debug)]
pub enum EvidenceProducer {
    /// A real TDX or SEV-SNP guest.
    Tsm {
        tsm: ConfigfsTsm,
        /// TDX collateral to attach to quotes (from a cache file), if any.
        tdx_collateral: Option<QuoteCollateralV3>,
        /// SEV-SNP VCEK (DER) to use when the host's certificate table has none.
        snp_vcek_der: Option<Vec<u8>>,
    },
    /// The insecure simulated TEE (dev only).
    Simulated(SimulatedTee),
}

impl EvidenceProducer {
    /// configfs-tsm at its standard path, when present.
    pub fn detect() -> Option<Self> {
        let tsm = ConfigfsTsm::default();
        tsm.is_available().then_some(EvidenceProducer::Tsm {
            tsm,
            tdx_collateral: None,
            snp_vcek_der: None,
        })
    }

    /// A simulated TEE with a fresh per-run key.
    pub fn simulated() -> Result<Self, EvidenceError> {
        Ok(EvidenceProducer::Simulated(SimulatedTee::generate()?))
    }

    pub fn is_insecure_simulated(&self) -> bool {
        matches!(self, EvidenceProducer::Simulated(_))
    }

    /// Evidence over `report_data`. Blocking (see the module docs).
    pub fn produce(&self, report_data: &[u8; 64], now: u64) -> Result<Evidence, EvidenceError> {
        match self {
            EvidenceProducer::Simulated(tee) => {
                Ok(Evidence::Simulated(tee.produce(*report_data, now)))
            }
            EvidenceProducer::Tsm {
                tsm,
                tdx_collateral,
                snp_vcek_der,
            } => {
                let report = tsm.generate(report_data)?;
                evidence_from_tsm(report, tdx_collateral.as_ref(), snp_vcek_der.as_deref())
            }
        }
    }

    /// Worker side: evidence binding `hpke_public_key` and the TLS key to the verifier's nonce.
    pub fn attest(
        &self,
        hpke_public_key: HpkePublicKey,
        tls_spki_der: &[u8],
        nonce: Nonce,
        now: u64,
    ) -> Result<WorkerAttestation, EvidenceError> {
        self.attest_binding(ReportDataBinding::new(hpke_public_key, tls_spki_der, nonce), now)
    }

    /// A worker's evidence: binds its identity key and models digest too (the v2 layout).
    pub fn attest_worker(
        &self,
        hpke_public_key: HpkePublicKey,
        tls_spki_der: &[u8],
        nonce: Nonce,
        identity: crate::receipt::IdentityPublicKey,
        models_digest: [u8; 32],
        now: u64,
    ) -> Result<WorkerAttestation, EvidenceError> {
        let binding = ReportDataBinding::new(hpke_public_key, tls_spki_der, nonce).with_worker(identity, models_digest);
        self.attest_binding(binding, now)
    }

    fn attest_binding(&self, binding: ReportDataBinding, now: u64) -> Result<WorkerAttestation, EvidenceError> {
        let evidence = self.produce(&binding.report_data(), now)?;
        Ok(WorkerAttestation {
            evidence,
            hpke_public_key: binding.hpke_public_key,
            tls_spki_sha256: binding.tls_spki_sha256,
            nonce: binding.nonce,
            identity_key: binding.worker.map(|(i, _)| i),
            models_digest: binding.worker.map(|(_, m)| m),
        })
    }
}

pub(crate) fn evidence_from_tsm(
    report: TsmReport,
    tdx_collateral: Option<&QuoteCollateralV3>,
    snp_vcek_der: Option<&[u8]>,
) -> Result<Evidence, EvidenceError> {
    match report.provider.as_str() {
        "tdx_guest" => Ok(Evidence::Tdx(TdxEvidence {
            quote: report.outblob,
            collateral: tdx_collateral.cloned(),
        })),
        "sev_guest" => {
            let from_host = match &report.auxblob {
                Some(table) => vcek_from_cert_table(table)?,
                None => None,
            };
            let vcek = from_host
                .or_else(|| snp_vcek_der.map(<[u8]>::to_vec))
                .ok_or(EvidenceError::VcekMissing)?;
            Ok(Evidence::SevSnp(SnpEvidence {
                report: report.outblob,
                vcek,
            }))
        }
        other => Err(EvidenceError::UnsupportedProvider(other.to_string())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "attestation-tsm-{tag}-{}-{}",
            std::process::id(),
            hex::encode(random_bytes::<4>().unwrap())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A directory laid out like a configfs-tsm report after the kernel produced it.
    fn fake_report(provider: &str, generation: &str, aux: Option<&[u8]>) -> PathBuf {
        let dir = temp_dir(provider);
        std::fs::write(dir.join("outblob"), b"QUOTE").unwrap();
        std::fs::write(dir.join("provider"), format!("{provider}\n")).unwrap();
        std::fs::write(dir.join("generation"), generation).unwrap();
        if let Some(aux) = aux {
            std::fs::write(dir.join("auxblob"), aux).unwrap();
        }
        dir
    }

    fn cert_table(vcek: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(Uuid::from_u128(0xc0b406a4_a803_4952_9743_3fb6014cd0ae).as_bytes()); // ARK
        t.extend_from_slice(&72u32.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(VCEK_GUID.as_bytes());
        t.extend_from_slice(&72u32.to_le_bytes());
        t.extend_from_slice(&u32::try_from(vcek.len()).unwrap().to_le_bytes());
        t.extend_from_slice(&[0; 24]);
        t.extend_from_slice(vcek);
        t
    }

    #[test]
    fn reads_a_tdx_report_and_writes_report_data() {
        let dir = fake_report("tdx_guest", "1\n", None);
        let r = read_report(&dir, &[5; 64]).unwrap();
        assert_eq!(std::fs::read(dir.join("inblob")).unwrap(), vec![5; 64]);
        assert_eq!(r.provider, "tdx_guest");
        let ev = evidence_from_tsm(r, None, None).unwrap();
        assert!(matches!(ev, Evidence::Tdx(TdxEvidence { ref quote, .. }) if quote == b"QUOTE"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn detects_a_racing_writer() {
        let dir = fake_report("tdx_guest", "2", None);
        assert!(matches!(
            read_report(&dir, &[0; 64]),
            Err(EvidenceError::TsmRace {
                expected: 1,
                got: 2
            })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn snp_takes_the_vcek_from_the_host_table_or_the_fallback() {
        let dir = fake_report("sev_guest", "1", Some(&cert_table(b"VCEK-DER")));
        let r = read_report(&dir, &[0; 64]).unwrap();
        match evidence_from_tsm(r.clone(), None, Some(b"FILE")).unwrap() {
            Evidence::SevSnp(e) => assert_eq!(e.vcek, b"VCEK-DER"),
            other => panic!("{other:?}"),
        }
        let no_aux = TsmReport { auxblob: None, ..r };
        match evidence_from_tsm(no_aux.clone(), None, Some(b"FILE")).unwrap() {
            Evidence::SevSnp(e) => assert_eq!(e.vcek, b"FILE"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            evidence_from_tsm(no_aux, None, None),
            Err(EvidenceError::VcekMissing)
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cert_table_parser_is_bounds_checked() {
        let good = cert_table(b"X");
        assert_eq!(vcek_from_cert_table(&good).unwrap(), Some(b"X".to_vec()));
        assert!(vcek_from_cert_table(&good[..30]).is_err());
        let mut bad = good.clone();
        bad[40] = 0xff; // VCEK offset far outside
        assert!(vcek_from_cert_table(&bad).is_err());
        assert_eq!(vcek_from_cert_table(&[0; 24]).unwrap(), None);
        for len in 0..good.len() {
            let _ = vcek_from_cert_table(&good[..len]);
        }
    }

    #[test]
    fn unknown_provider_and_missing_tsm_are_errors() {
        let r = TsmReport {
            provider: "arm_cca_guest".into(),
            outblob: vec![],
            auxblob: None,
        };
        assert!(matches!(
            evidence_from_tsm(r, None, None),
            Err(EvidenceError::UnsupportedProvider(_))
        ));
        let tsm = ConfigfsTsm::new("/nonexistent/tsm/report");
        assert!(matches!(
            tsm.generate(&[0; 64]),
            Err(EvidenceError::TsmUnavailable(_))
        ));
    }
}
