//! AMD Key Distribution Service (KDS): the VCEK of one chip at one TCB, and a product's
//! ASK/ARK chain. Paths as in AMD's "Versioned Chip Endorsement Key (VCEK) Certificate and KDS
//! Interface Specification" (pub. 57230) and as snpguest / go-sev-guest build them:
//!
//! * `GET {kds}/vcek/v1/{Milan|Genoa|Turin}/{hwid}?blSPL=NN&teeSPL=NN&snpSPL=NN&ucodeSPL=NN`
//!   (Turin adds `fmcSPL=NN` and its hwid is the first 8 bytes of CHIP_ID), answering the
//!   VCEK in DER;
//! * `GET {kds}/vcek/v1/{product}/cert_chain`, answering the ASK then the ARK in PEM.
//!
//! KDS rate-limits clients, so callers cache one VCEK per chip per TCB (see `super`).

use sev::firmware::guest::AttestationReport;

use super::http::BoundedHttp;
use crate::claims::SnpProduct;

/// AMD's public KDS.
pub const AMD_KDS_URL: &str = "https://kdsintf.amd.com";

/// The product name as KDS spells it in paths.
pub fn kds_product(p: SnpProduct) -> &'static str {
    match p {
        SnpProduct::Milan => "Milan",
        SnpProduct::Genoa => "Genoa",
        SnpProduct::Turin => "Turin",
    }
}

/// The VCEK URL for the chip and REPORTED_TCB of `report`.
pub fn vcek_url(kds: &str, product: SnpProduct, report: &AttestationReport) -> String {
    let base = kds.trim_end_matches('/');
    let t = &report.reported_tcb;
    let spl = format!(
        "blSPL={:02}&teeSPL={:02}&snpSPL={:02}&ucodeSPL={:02}",
        t.bootloader, t.tee, t.snp, t.microcode
    );
    match product {
        SnpProduct::Turin => format!(
            "{base}/vcek/v1/Turin/{}?fmcSPL={:02}&{spl}",
            hex::encode(&report.chip_id[..8]),
            t.fmc.unwrap_or(0)
        ),
        p => format!(
            "{base}/vcek/v1/{}/{}?{spl}",
            kds_product(p),
            hex::encode(report.chip_id)
        ),
    }
}

/// The ASK/ARK chain URL of a product.
pub fn cert_chain_url(kds: &str, product: SnpProduct) -> String {
    format!(
        "{}/vcek/v1/{}/cert_chain",
        kds.trim_end_matches('/'),
        kds_product(product)
    )
}

/// What one VCEK request answered.
pub(crate) enum VcekAnswer {
    Der(Vec<u8>),
    /// 404: KDS knows no such chip for this product (try the next product line).
    NotFound,
}

pub(crate) async fn fetch_vcek(http: &BoundedHttp, url: &str) -> Result<VcekAnswer, String> {
    let resp = http.fetch(url).await?;
    match resp.status {
        200 => Ok(VcekAnswer::Der(resp.body)),
        404 => Ok(VcekAnswer::NotFound),
        429 => Err(format!(
            "GET {url}: HTTP 429, AMD KDS is rate-limiting this client{}",
            resp.header("retry-after")
                .map(|r| format!(" (retry after {r} s)"))
                .unwrap_or_default()
        )),
        s => Err(format!("GET {url}: HTTP {s}")),
    }
}

/// The ASK and ARK (DER) a product's `cert_chain` serves.
pub async fn fetch_cert_chain(
    http: &BoundedHttp,
    kds: &str,
    product: SnpProduct,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let url = cert_chain_url(kds, product);
    let resp = http.fetch(&url).await?;
    if resp.status != 200 {
        return Err(format!("GET {url}: HTTP {}", resp.status));
    }
    let body = std::str::from_utf8(&resp.body).map_err(|_| format!("GET {url}: the body is not text"))?;
    let certs = crate::pem_chain::load_pem_chain(body, 8)
        .map_err(|e| format!("GET {url}: not a PEM certificate chain: {e}"))?;
    use x509_cert::der::Encode;
    let der: Vec<Vec<u8>> = certs
        .iter()
        .map(|c| c.to_der().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    match der.as_slice() {
        [ask, ark] => Ok((ask.clone(), ark.clone())),
        other => Err(format!(
            "GET {url}: expected ASK and ARK, got {} certificate(s)",
            other.len()
        )),
    }
}
