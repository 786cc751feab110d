//! Producing evidence inside a confidential VM through the Linux configfs-tsm interface
//! (`/sys/kernel/config/tsm/report`), which serves both TDX (`tdx_guest`) and SEV-SNP
//! (`sev_guest`) guests. One report: create a private directory, write `inblob` (the 64-byte
//! report_data), read `outblob` (quote or report), `provider`, `auxblob` (SNP certificate
//! table, when the host supplies one) and `generation` (must count exactly our one write, or
//! another writer raced us), then remove the directory.
//!
//! Generating a TDX quote takes tens of milliseconds and blocks: call it from
//! `tokio::task::spawn_blocking`.
//!
//! Kernel behaviours handled (checked against `drivers/virt/coco/guest/report.c`, formerly
//! `tsm.c`, and `tdx-guest.c` in torvalds/linux, and google/go-configfs-tsm):
//! * The `tsm/report` directory exists whenever the module is loaded; `mkdir` fails with
//!   `ENXIO` when no provider (tdx_guest, sev_guest) registered. "TEE present" is decided by
//!   a successful mkdir and a readable `provider` ([`EvidenceProducer::detect`]).
//! * `tdx-guest` before Linux 7.0 ignores the GetQuote status: with no quote-generation
//!   service on the host, `outblob` reads back 0 bytes. An empty or implausibly short quote
//!   is retried briefly and then reported as [`EvidenceError::NoQuoteService`].
//! * Each attribute write (`inblob`, `privlevel`) advances `generation`; it must equal our
//!   writes, or another writer raced us.
//! * SEV-SNP under an SVSM runs above VMPL 0: `privlevel_floor` says the lowest level the
//!   guest can ask for, and `privlevel` must be written with it (a value below the floor is
//!   refused with `EINVAL`). The policy's `max_vmpl` is checked before asking.
//! * Reads block while the TSM produces the report (TDX polls GetQuote for up to 30 s, SEV-SNP
//!   retries a throttled host for up to 60 s); the worker bounds the whole production.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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

/// Linux errno values the kernel's configfs-tsm returns (asm-generic/errno-base.h).
const ENXIO: i32 = 6;
const EINVAL: i32 = 22;

/// Shortest possible TDX quote: 48-byte header, 584-byte TD report, 4-byte signature length.
pub const MIN_TDX_QUOTE_BYTES: usize = 48 + 584 + 4;

/// The raw output of one configfs-tsm report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TsmReport {
    /// `tdx_guest` or `sev_guest`.
    pub provider: String,
    pub outblob: Vec<u8>,
    pub auxblob: Option<Vec<u8>>,
}

/// The file operations configfs-tsm needs, so tests can stand in for the kernel (a temporary
/// directory with injected errors) while production uses the real configfs.
pub trait TsmFs: Send + Sync + std::fmt::Debug {
    fn is_dir(&self, path: &Path) -> bool;
    fn create_dir(&self, path: &Path) -> std::io::Result<()>;
    fn remove_dir(&self, path: &Path) -> std::io::Result<()>;
    fn write(&self, path: &Path, data: &[u8]) -> std::io::Result<()>;
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

impl TsmFs for StdFs {
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
    fn create_dir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir(path)
    }
    fn remove_dir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_dir(path)
    }
    fn write(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
        std::fs::write(path, data)
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }
}

/// How reports are asked for.
#[derive(Clone, Debug)]
pub struct TsmOptions {
    /// SEV-SNP: the highest VMPL this worker may report from (the router policy's
    /// `max_vmpl`); a guest whose `privlevel_floor` is above it fails by name before asking.
    pub max_vmpl: Option<u32>,
    /// Attempts when a TDX quote comes back empty or shorter than any quote can be.
    pub quote_attempts: u32,
    /// Pause between those attempts.
    pub retry_delay: Duration,
}

impl Default for TsmOptions {
    fn default() -> Self {
        // Like dstack's guest agent: a few quick retries, then a clear error.
        Self {
            max_vmpl: None,
            quote_attempts: 3,
            retry_delay: Duration::from_secs(1),
        }
    }
}

/// A configfs-tsm report directory root.
#[derive(Clone, Debug)]
pub struct ConfigfsTsm {
    root: PathBuf,
    fs: Arc<dyn TsmFs>,
    opts: TsmOptions,
}

impl Default for ConfigfsTsm {
    fn default() -> Self {
        Self::new(CONFIGFS_TSM_REPORT)
    }
}

struct RemoveDirOnDrop<'a>(&'a dyn TsmFs, PathBuf);

impl Drop for RemoveDirOnDrop<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.remove_dir(&self.1) {
            tracing::warn!(path = %self.1.display(), error = %e, "could not remove configfs-tsm report directory");
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
        Self::with_fs(root, Arc::new(StdFs))
    }

    /// configfs-tsm at `root` through `fs` (tests: a fake kernel).
    pub fn with_fs(root: impl Into<PathBuf>, fs: Arc<dyn TsmFs>) -> Self {
        Self {
            root: root.into(),
            fs,
            opts: TsmOptions::default(),
        }
    }

    pub fn with_options(mut self, opts: TsmOptions) -> Self {
        self.opts = opts;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the configfs-tsm directory exists (the module is loaded). This alone does not
    /// mean a TEE is present: see [`Self::probe`].
    pub fn is_available(&self) -> bool {
        self.fs.is_dir(&self.root)
    }

    fn fresh_dir(&self) -> Result<PathBuf, EvidenceError> {
        if !self.is_available() {
            return Err(EvidenceError::TsmUnavailable(self.root.display().to_string()));
        }
        let name = format!(
            "cocoon-{}-{}",
            std::process::id(),
            hex::encode(random_bytes::<8>()?)
        );
        let dir = self.root.join(name);
        match self.fs.create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.raw_os_error() == Some(ENXIO) => {
                Err(EvidenceError::NoTsmProvider(self.root.display().to_string()))
            }
            Err(e) => Err(io("create", &dir)(e)),
        }
    }

    /// Whether a TEE answers here: a report directory can be made and names its provider.
    pub fn probe(&self) -> Result<String, EvidenceError> {
        let dir = self.fresh_dir()?;
        let _cleanup = RemoveDirOnDrop(&*self.fs, dir.clone());
        read_provider(&*self.fs, &dir, &self.root)
    }

    /// Asks the TEE for a report over `report_data`.
    pub fn generate(&self, report_data: &[u8; 64]) -> Result<TsmReport, EvidenceError> {
        let attempts = self.opts.quote_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let report = self.generate_once(report_data)?;
            if report.provider != "tdx_guest" || report.outblob.len() >= MIN_TDX_QUOTE_BYTES {
                return Ok(report);
            }
            if attempt >= attempts {
                return Err(EvidenceError::NoQuoteService {
                    len: report.outblob.len(),
                    attempts: attempt,
                });
            }
            tracing::warn!(
                len = report.outblob.len(),
                attempt,
                "TDX quote generation returned no quote; retrying"
            );
            std::thread::sleep(self.opts.retry_delay);
        }
    }

    fn generate_once(&self, report_data: &[u8; 64]) -> Result<TsmReport, EvidenceError> {
        let dir = self.fresh_dir()?;
        let fs = &*self.fs;
        let _cleanup = RemoveDirOnDrop(fs, dir.clone());
        let provider = read_provider(fs, &dir, &self.root)?;
        let mut writes = 0u64;
        if provider == "sev_guest" {
            writes += self.set_privlevel(&dir)?;
        }
        let path = dir.join("inblob");
        fs.write(&path, report_data).map_err(io("write", &path))?;
        writes += 1;
        let path = dir.join("outblob");
        let outblob = fs.read(&path).map_err(io("read", &path))?;
        let path = dir.join("auxblob");
        let auxblob = match fs.read(&path) {
            Ok(b) if b.is_empty() => None,
            Ok(b) => Some(b),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(io("read", &path)(e)),
        };
        let path = dir.join("generation");
        let text = fs.read(&path).map_err(io("read", &path))?;
        let generation = String::from_utf8_lossy(&text)
            .trim()
            .parse::<u64>()
            .map_err(|e| EvidenceError::TsmIo {
                op: "parse",
                path: path.display().to_string(),
                source: std::io::Error::new(ErrorKind::InvalidData, e),
            })?;
        if generation != writes {
            return Err(EvidenceError::TsmRace {
                expected: writes,
                got: generation,
            });
        }
        Ok(TsmReport {
            provider,
            outblob,
            auxblob,
        })
    }

    /// SEV-SNP: asks for the lowest VMPL the guest can (its `privlevel_floor`), refusing
    /// first when that is above `max_vmpl`. Returns the number of attribute writes made.
    fn set_privlevel(&self, dir: &Path) -> Result<u64, EvidenceError> {
        let fs = &*self.fs;
        let path = dir.join("privlevel_floor");
        let floor = match fs.read(&path) {
            Ok(text) => String::from_utf8_lossy(&text)
                .trim()
                .parse::<u32>()
                .map_err(|e| EvidenceError::TsmIo {
                    op: "parse",
                    path: path.display().to_string(),
                    source: std::io::Error::new(ErrorKind::InvalidData, e),
                })?,
            // Kernels before privlevel support: VMPL 0 only.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io("read", &path)(e)),
        };
        if let Some(max) = self.opts.max_vmpl {
            if floor > max {
                return Err(EvidenceError::VmplForbidden { floor, max });
            }
        }
        if floor == 0 {
            return Ok(0);
        }
        let path = dir.join("privlevel");
        match fs.write(&path, format!("{floor}\n").as_bytes()) {
            Ok(()) => Ok(1),
            Err(e) if e.raw_os_error() == Some(EINVAL) => Err(EvidenceError::PrivlevelRefused {
                requested: floor,
                floor,
                source: e,
            }),
            Err(e) => Err(io("write", &path)(e)),
        }
    }
}

fn read_provider(fs: &dyn TsmFs, dir: &Path, root: &Path) -> Result<String, EvidenceError> {
    let path = dir.join("provider");
    match fs.read(&path) {
        Ok(text) => Ok(String::from_utf8_lossy(&text).trim().to_string()),
        Err(e) if e.raw_os_error() == Some(ENXIO) => {
            Err(EvidenceError::NoTsmProvider(root.display().to_string()))
        }
        Err(e) => Err(io("read", &path)(e)),
    }
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
        /// TDX: ask the host's QGS directly when configfs-tsm returns no quote.
        qgs: Option<crate::qgs::QgsFallback>,
    },
    /// The insecure simulated TEE (dev only).
    Simulated(SimulatedTee),
}

impl EvidenceProducer {
    /// configfs-tsm at its standard path, when a TEE answers there.
    pub fn detect() -> Option<Self> {
        Self::detect_at(ConfigfsTsm::default()).ok()
    }

    /// A producer on `tsm` if a TEE answers there (a report directory can be made and its
    /// provider is TDX or SEV-SNP), else why not.
    pub fn detect_at(tsm: ConfigfsTsm) -> Result<Self, EvidenceError> {
        match tsm.probe()?.as_str() {
            "tdx_guest" | "sev_guest" => Ok(EvidenceProducer::Tsm {
                tsm,
                tdx_collateral: None,
                snp_vcek_der: None,
                qgs: None,
            }),
            other => Err(EvidenceError::UnsupportedProvider(other.to_string())),
        }
    }

    /// Adds a QGS fallback for TDX (see [`crate::qgs`]); no effect on other producers.
    pub fn with_qgs_fallback(mut self, fallback: crate::qgs::QgsFallback) -> Self {
        if let EvidenceProducer::Tsm { qgs, .. } = &mut self {
            *qgs = Some(fallback);
        }
        self
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
                qgs,
            } => {
                let report = match (tsm.generate(report_data), qgs) {
                    (Err(EvidenceError::NoQuoteService { len, attempts }), Some(q)) => {
                        tracing::warn!(len, attempts, "configfs-tsm produced no quote: asking the host's QGS directly");
                        TsmReport {
                            provider: "tdx_guest".into(),
                            outblob: q.quote(report_data)?,
                            auxblob: None,
                        }
                    }
                    (r, _) => r?,
                };
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
            // Collected by the caller (NVML), bound to `gpu_nonce(&binding)`.
            gpu: None,
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
            // No VCEK from the host (upstream KVM hands out an empty table unless the VMM
            // supplies certificates) and none configured: send the report alone, the router
            // fetches the VCEK for this chip and TCB from AMD KDS.
            let vcek = from_host
                .or_else(|| snp_vcek_der.map(<[u8]>::to_vec))
                .unwrap_or_default();
            if vcek.is_empty() {
                tracing::info!("no VCEK from the host's certificate table: the verifier fetches it from AMD KDS");
            }
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
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;

    /// A stand-in for the kernel's configfs-tsm over a temporary directory, reproducing what
    /// `drivers/virt/coco/guest/report.c` and the tdx-guest / sev-guest providers do: mkdir
    /// makes `provider`, `generation` (0) and, for sev_guest, `privlevel_floor`; each attribute
    /// write advances `generation`; `privlevel` below the floor is EINVAL; an SEV-SNP report
    /// above VMPL 0 without `privlevel` written is EINVAL; `outblob` / `auxblob` read what the
    /// "host" produced. Faults are injected per test.
    #[derive(Debug)]
    struct FakeKernel {
        root: PathBuf,
        provider: &'static str,
        floor: u32,
        outblobs: Mutex<Vec<Vec<u8>>>,
        auxblob: Vec<u8>,
        enxio_on_mkdir: bool,
        einval_on_privlevel: bool,
        slow_read: Option<Duration>,
        extra_writer: bool,
        privlevel_written: Mutex<bool>,
    }

    impl FakeKernel {
        fn new(provider: &'static str, outblob: Vec<u8>) -> Self {
            let root = std::env::temp_dir().join(format!(
                "attestation-tsm-{}-{}",
                std::process::id(),
                hex::encode(random_bytes::<6>().unwrap())
            ));
            std::fs::create_dir_all(&root).unwrap();
            Self {
                root,
                provider,
                floor: 0,
                outblobs: Mutex::new(vec![outblob]),
                auxblob: Vec::new(),
                enxio_on_mkdir: false,
                einval_on_privlevel: false,
                slow_read: None,
                extra_writer: false,
                privlevel_written: Mutex::new(false),
            }
        }

        fn tsm(self) -> (ConfigfsTsm, PathBuf) {
            let root = self.root.clone();
            let opts = TsmOptions { retry_delay: Duration::from_millis(10), ..TsmOptions::default() };
            (ConfigfsTsm::with_fs(root.clone(), Arc::new(self)).with_options(opts), root)
        }

        fn bump(&self, dir: &Path) {
            let g = std::fs::read_to_string(dir.join("generation")).unwrap();
            let n: u64 = g.trim().parse().unwrap();
            std::fs::write(dir.join("generation"), format!("{}\n", n + 1)).unwrap();
        }
    }

    impl Drop for FakeKernel {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn errno(n: i32) -> std::io::Error {
        std::io::Error::from_raw_os_error(n)
    }

    impl TsmFs for FakeKernel {
        fn is_dir(&self, path: &Path) -> bool {
            path.is_dir()
        }
        fn create_dir(&self, path: &Path) -> std::io::Result<()> {
            if self.enxio_on_mkdir {
                return Err(errno(ENXIO));
            }
            std::fs::create_dir(path)?;
            std::fs::write(path.join("provider"), format!("{}\n", self.provider))?;
            std::fs::write(path.join("generation"), "0\n")?;
            if self.provider == "sev_guest" {
                std::fs::write(path.join("privlevel_floor"), format!("{}\n", self.floor))?;
            }
            Ok(())
        }
        fn remove_dir(&self, path: &Path) -> std::io::Result<()> {
            std::fs::remove_dir_all(path)
        }
        fn write(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
            let dir = path.parent().unwrap();
            match path.file_name().and_then(|n| n.to_str()) {
                Some("privlevel") => {
                    let v: u32 = String::from_utf8_lossy(data).trim().parse().map_err(|_| errno(EINVAL))?;
                    if self.einval_on_privlevel || v < self.floor || v > 3 {
                        return Err(errno(EINVAL));
                    }
                    *self.privlevel_written.lock().unwrap() = true;
                }
                Some("inblob") => std::fs::write(path, data)?,
                _ => return Err(errno(EINVAL)),
            }
            self.bump(dir);
            if self.extra_writer {
                self.bump(dir);
            }
            Ok(())
        }
        fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
            match path.file_name().and_then(|n| n.to_str()) {
                Some("outblob") => {
                    if let Some(d) = self.slow_read {
                        std::thread::sleep(d);
                    }
                    if self.provider == "sev_guest" && self.floor > 0 && !*self.privlevel_written.lock().unwrap() {
                        return Err(errno(EINVAL));
                    }
                    let mut q = self.outblobs.lock().unwrap();
                    Ok(if q.len() > 1 { q.remove(0) } else { q[0].clone() })
                }
                Some("auxblob") => Ok(self.auxblob.clone()),
                _ => std::fs::read(path),
            }
        }
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

    const QUOTE: [u8; MIN_TDX_QUOTE_BYTES] = [7; MIN_TDX_QUOTE_BYTES];

    #[test]
    fn reads_a_tdx_quote_and_writes_report_data() {
        let k = FakeKernel::new("tdx_guest", QUOTE.to_vec());
        let (tsm, root) = k.tsm();
        let r = tsm.generate(&[5; 64]).unwrap();
        assert_eq!(r.provider, "tdx_guest");
        assert_eq!(r.outblob, QUOTE.to_vec());
        // The report directory was removed again.
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
        let ev = evidence_from_tsm(r, None, None).unwrap();
        assert!(matches!(ev, Evidence::Tdx(TdxEvidence { ref quote, .. }) if quote == &QUOTE.to_vec()));
    }

    #[test]
    fn an_empty_tdx_outblob_means_no_quote_service_after_brief_retries() {
        let k = FakeKernel::new("tdx_guest", Vec::new());
        let (tsm, _root) = k.tsm();
        let e = tsm.generate(&[0; 64]).unwrap_err();
        assert!(matches!(e, EvidenceError::NoQuoteService { len: 0, attempts: 3 }), "{e}");
        eprintln!("empty outblob: {e}");
        // A short answer is no quote either; one good answer after it is taken.
        let k = FakeKernel::new("tdx_guest", Vec::new());
        *k.outblobs.lock().unwrap() = vec![vec![1; 100], QUOTE.to_vec()];
        let (tsm, _root) = k.tsm();
        assert_eq!(tsm.generate(&[0; 64]).unwrap().outblob, QUOTE.to_vec());
    }

    #[test]
    fn enxio_on_mkdir_means_no_provider_not_a_tee() {
        let mut k = FakeKernel::new("tdx_guest", QUOTE.to_vec());
        k.enxio_on_mkdir = true;
        let (tsm, _root) = k.tsm();
        assert!(tsm.is_available(), "the directory exists: the module is loaded");
        let e = tsm.probe().unwrap_err();
        assert!(matches!(e, EvidenceError::NoTsmProvider(_)), "{e}");
        eprintln!("ENXIO on mkdir: {e}");
        assert!(matches!(EvidenceProducer::detect_at(tsm), Err(EvidenceError::NoTsmProvider(_))));
        let gone = ConfigfsTsm::new("/nonexistent/tsm/report");
        assert!(matches!(gone.generate(&[0; 64]), Err(EvidenceError::TsmUnavailable(_))));
        assert!(matches!(EvidenceProducer::detect_at(gone), Err(EvidenceError::TsmUnavailable(_))));
    }

    #[derive(Debug)]
    struct FixedReport;
    impl crate::qgs::TdReportSource for FixedReport {
        fn td_report(&self, report_data: &[u8; 64]) -> std::io::Result<Vec<u8>> {
            let mut r = vec![0x81; crate::qgs::TDX_REPORT_LEN];
            r[128..192].copy_from_slice(report_data);
            Ok(r)
        }
    }

    /// configfs gives no quote, the host's QGS does: the worker asks it directly (over a Unix
    /// socket here; vsock on a real host).
    #[test]
    fn no_quote_from_configfs_falls_back_to_the_qgs() {
        use std::os::unix::net::{UnixListener, UnixStream};
        const SAMPLE: &[u8] = include_bytes!("../testdata/tdx_quote");
        let path = std::env::temp_dir().join(format!("qgs-fallback-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            crate::qgs::fake::serve_one(&mut s, Ok(SAMPLE.to_vec())).unwrap()
        });
        let (tsm, _root) = FakeKernel::new("tdx_guest", Vec::new()).tsm();
        let p = path.clone();
        let fallback = crate::qgs::QgsFallback {
            report: Arc::new(FixedReport),
            connect: Arc::new(move || {
                let s = UnixStream::connect(&p)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                Ok(Box::new(s) as Box<dyn crate::qgs::QgsStream>)
            }),
        };
        let producer = EvidenceProducer::detect_at(tsm).unwrap().with_qgs_fallback(fallback);
        match producer.produce(&[9; 64], 0).unwrap() {
            Evidence::Tdx(ev) => assert_eq!(ev.quote, SAMPLE),
            other => panic!("{other:?}"),
        }
        let req = server.join().unwrap();
        assert_eq!(&req[24 + 128..24 + 192], &[9; 64][..], "the TDREPORT over our report_data went to the QGS");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn detection_names_the_provider() {
        let (tsm, _root) = FakeKernel::new("sev_guest", vec![0; 1184]).tsm();
        assert_eq!(tsm.probe().unwrap(), "sev_guest");
        assert!(EvidenceProducer::detect_at(tsm).is_ok());
        let (tsm, _root) = FakeKernel::new("arm_cca_guest", vec![]).tsm();
        assert!(matches!(EvidenceProducer::detect_at(tsm), Err(EvidenceError::UnsupportedProvider(p)) if p == "arm_cca_guest"));
    }

    #[test]
    fn snp_above_vmpl0_writes_privlevel_from_the_floor() {
        let mut k = FakeKernel::new("sev_guest", vec![3; 1184]);
        k.floor = 2;
        let (tsm, _root) = k.tsm();
        // privlevel + inblob: two writes, generation 2.
        let r = tsm.generate(&[0; 64]).unwrap();
        assert_eq!(r.outblob.len(), 1184);
        // The policy allows VMPL 0 only: refused by name before asking.
        let mut k = FakeKernel::new("sev_guest", vec![3; 1184]);
        k.floor = 2;
        let (tsm, _root) = k.tsm();
        let tsm = tsm.with_options(TsmOptions { max_vmpl: Some(0), ..TsmOptions::default() });
        let e = tsm.generate(&[0; 64]).unwrap_err();
        assert!(matches!(e, EvidenceError::VmplForbidden { floor: 2, max: 0 }), "{e}");
        eprintln!("VMPL forbidden: {e}");
    }

    #[test]
    fn einval_on_privlevel_is_named() {
        let mut k = FakeKernel::new("sev_guest", vec![3; 1184]);
        k.floor = 1;
        k.einval_on_privlevel = true;
        let (tsm, _root) = k.tsm();
        let e = tsm.generate(&[0; 64]).unwrap_err();
        assert!(matches!(e, EvidenceError::PrivlevelRefused { requested: 1, floor: 1, .. }), "{e}");
        eprintln!("EINVAL on privlevel: {e}");
    }

    #[test]
    fn an_empty_auxblob_sends_the_report_without_a_vcek() {
        let (tsm, _root) = FakeKernel::new("sev_guest", vec![3; 1184]).tsm();
        let r = tsm.generate(&[0; 64]).unwrap();
        assert_eq!(r.auxblob, None);
        match evidence_from_tsm(r, None, None).unwrap() {
            Evidence::SevSnp(e) => assert!(e.vcek.is_empty(), "the router fetches it from KDS"),
            other => panic!("{other:?}"),
        }
        let mut k = FakeKernel::new("sev_guest", vec![3; 1184]);
        k.auxblob = cert_table(b"VCEK-DER");
        let (tsm, _root) = k.tsm();
        let r = tsm.generate(&[0; 64]).unwrap();
        match evidence_from_tsm(r.clone(), None, Some(b"FILE")).unwrap() {
            Evidence::SevSnp(e) => assert_eq!(e.vcek, b"VCEK-DER"),
            other => panic!("{other:?}"),
        }
        let no_aux = TsmReport { auxblob: None, ..r };
        match evidence_from_tsm(no_aux, None, Some(b"FILE")).unwrap() {
            Evidence::SevSnp(e) => assert_eq!(e.vcek, b"FILE"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_slow_read_is_waited_for() {
        let mut k = FakeKernel::new("tdx_guest", QUOTE.to_vec());
        k.slow_read = Some(Duration::from_millis(300));
        let (tsm, _root) = k.tsm();
        let t = Instant::now();
        assert_eq!(tsm.generate(&[0; 64]).unwrap().outblob, QUOTE.to_vec());
        assert!(t.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn detects_a_racing_writer() {
        let mut k = FakeKernel::new("tdx_guest", QUOTE.to_vec());
        k.extra_writer = true;
        let (tsm, _root) = k.tsm();
        assert!(matches!(
            tsm.generate(&[0; 64]),
            Err(EvidenceError::TsmRace { expected: 1, got: 2 })
        ));
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
    fn unknown_provider_is_an_error() {
        let r = TsmReport {
            provider: "arm_cca_guest".into(),
            outblob: vec![],
            auxblob: None,
        };
        assert!(matches!(
            evidence_from_tsm(r, None, None),
            Err(EvidenceError::UnsupportedProvider(_))
        ));
    }
}
