//! `cocoon policy import-rim`: verify NVIDIA RIMs once, offline, and write their golden GPU
//! measurements into `[attestation.policy.gpu]`. The router never reads a RIM; it trusts the
//! policy this writes (see docs/gpu-attestation.md).

use std::path::{Path, PathBuf};

use anyhow::Context;
use attestation::nvidia::GpuGolden;
use attestation::nvidia_rim::{golden_from_rims, verify_rim_file, NVIDIA_RIM_ROOT_PEM};
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    cmd: PolicyCmd,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Verify NVIDIA RIMs (driver and VBIOS SWID tags) with `xmlsec1` against the RIM root and
    /// write their active measurements as `[attestation.policy.gpu].measurements`.
    ImportRim(ImportRimArgs),
}

#[derive(Args)]
pub struct ImportRimArgs {
    /// A RIM file (`.swidtag`); give the driver RIM and the VBIOS RIM of one GPU build.
    #[arg(long = "rim", required = true)]
    rims: Vec<PathBuf>,
    /// The root the RIMs' signing chain must end at (PEM). Default: NVIDIA's
    /// "NVIDIA CoRIM signing Root CA" built into cocoon.
    #[arg(long)]
    rim_root: Option<PathBuf>,
    /// Check the signing certificates' validity at this time (RFC 3339) instead of now, e.g.
    /// for an archived RIM whose signer has since expired. Printed with the result.
    #[arg(long)]
    at: Option<String>,
    /// Write the measurements into this cocoon.toml (other keys and comments kept); without
    /// it the `[attestation.policy.gpu]` fragment is printed.
    #[arg(long)]
    write: Option<PathBuf>,
}

pub fn run(args: PolicyArgs) -> anyhow::Result<()> {
    match args.cmd {
        PolicyCmd::ImportRim(a) => import_rim(a),
    }
}

fn import_rim(a: ImportRimArgs) -> anyhow::Result<()> {
    let at = match &a.at {
        None => None,
        Some(t) => Some(
            u64::try_from(
                chrono::DateTime::parse_from_rfc3339(t)
                    .map_err(|e| anyhow::anyhow!("--at {t:?} is not an RFC 3339 time: {e}"))?
                    .timestamp(),
            )
            .context("--at is before 1970")?,
        ),
    };
    // xmlsec1 takes the trusted root as a file.
    let builtin_root;
    let root_path: &Path = match &a.rim_root {
        Some(p) => p,
        None => {
            builtin_root = TempFile::write("nvidia-rim-root.pem", NVIDIA_RIM_ROOT_PEM)?;
            &builtin_root.0
        }
    };
    let root_name = a.rim_root.as_ref().map_or("NVIDIA CoRIM signing Root CA (built in)".to_string(), |p| p.display().to_string());
    let mut verified = Vec::new();
    for path in &a.rims {
        let v = verify_rim_file(path, root_path, at)
            .with_context(|| format!("refusing RIM {}", path.display()))?;
        eprintln!(
            "verified {}: {} ({} active measurements), XML signature checked by xmlsec1 against {root_name}{}",
            path.display(),
            v.rim.source(),
            v.rim.measurements.iter().filter(|m| m.active).count(),
            a.at.as_ref().map(|t| format!(" at {t}")).unwrap_or_default(),
        );
        verified.push(v);
    }
    let golden = golden_from_rims(&verified)?;
    let array = measurements_array(&golden);
    match &a.write {
        None => {
            // Not println!: a closed pipe (`| head`) is an error to report, not a panic.
            use std::io::Write as _;
            writeln!(std::io::stdout(), "[attestation.policy.gpu]\nmeasurements = {array}").context("writing to stdout")?;
        }
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let mut doc: toml_edit::DocumentMut = text.parse().with_context(|| format!("parsing {}", path.display()))?;
            let gpu = doc
                .entry("attestation")
                .or_insert(toml_edit::table())
                .as_table_like_mut()
                .context("attestation is not a table")?
                .entry("policy")
                .or_insert(toml_edit::table())
                .as_table_like_mut()
                .context("attestation.policy is not a table")?
                .entry("gpu")
                .or_insert(toml_edit::table())
                .as_table_like_mut()
                .context("attestation.policy.gpu is not a table")?;
            gpu.insert("measurements", toml_edit::value(array));
            std::fs::write(path, doc.to_string()).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {} golden measurements into {} [attestation.policy.gpu]", golden.len(), path.display());
        }
    }
    Ok(())
}

/// One inline table per block, one per line, each naming the RIM it came from.
fn measurements_array(golden: &[GpuGolden]) -> toml_edit::Array {
    let mut array = toml_edit::Array::new();
    for g in golden {
        let mut t = toml_edit::InlineTable::new();
        t.insert("index", i64::from(g.index).into());
        t.insert("allowed", g.allowed.iter().map(|v| v.0.as_str()).collect::<toml_edit::Array>().into());
        if let Some(s) = &g.source {
            t.insert("source", s.as_str().into());
        }
        let mut v = toml_edit::Value::InlineTable(t);
        v.decor_mut().set_prefix("\n    ");
        array.push_formatted(v);
    }
    array.set_trailing("\n");
    array.set_trailing_comma(true);
    array
}

/// A file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn write(name: &str, contents: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("cocoon-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
