//! PEM certificate chains from untrusted input. Not `Certificate::load_pem_chain`: x509-cert
//! 0.2.5 computes `input.len() - 1` on the trimmed input, which panics on an empty one in
//! debug builds (overflow checks) and is not something network input should reach.

use x509_cert::der::DecodePem;
use x509_cert::Certificate;

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// The certificates of a PEM chain, in order; only whitespace may stand between blocks. At
/// most `max` are parsed; more is an error.
pub(crate) fn load_pem_chain(pem: &str, max: usize) -> Result<Vec<Certificate>, String> {
    let mut out = Vec::new();
    let mut rest = pem;
    loop {
        let trimmed = rest.trim_start();
        if trimmed.is_empty() {
            return Ok(out);
        }
        if !trimmed.starts_with(BEGIN) {
            return Err("text outside a CERTIFICATE block".into());
        }
        let end = trimmed.find(END).ok_or("a CERTIFICATE block has no END line")?;
        let (block, after) = trimmed.split_at(end + END.len());
        if out.len() == max {
            return Err(format!("more than {max} certificates"));
        }
        out.push(Certificate::from_pem(block).map_err(|e| e.to_string())?);
        rest = after;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_broken_input_is_an_error_or_empty_never_a_panic() {
        assert!(load_pem_chain("", 8).unwrap().is_empty());
        assert!(load_pem_chain(" \n", 8).unwrap().is_empty());
        assert!(load_pem_chain("x", 8).is_err());
        assert!(load_pem_chain(BEGIN, 8).is_err());
        assert!(load_pem_chain(&format!("{BEGIN}\n{END}"), 8).is_err());
        let chain = include_str!("../testdata/nvidia/hopperCertChain.txt");
        assert_eq!(load_pem_chain(chain, 8).unwrap().len(), 5);
        assert!(load_pem_chain(chain, 4).is_err());
    }
}
