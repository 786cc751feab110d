//! TDX quote generation straight from the host's Quote Generation Service (QGS), for hosts
//! where configfs-tsm cannot produce a quote (the VMM does not forward GetQuote) but the QGS
//! listens on vsock (Intel's default port 4050).
//!
//! Wire format, from Intel's SGXDataCenterAttestationPrimitives (`QuoteGeneration/
//! quote_wrapper/qgs_msg_lib/inc/qgs_msg_lib.h` and `qgs_msg_lib.cpp`, message library 1.1):
//! packed little-endian structures behind a 16-byte header
//! `{ u16 major_version, u16 minor_version, u32 type, u32 size (whole message), u32 error_code }`;
//! `GET_QUOTE_REQ` (type 0) = header, `u32 report_size`, `u32 id_list_size`, the TDREPORT and
//! the id list; `GET_QUOTE_RESP` (type 1) = header, `u32 selected_id_size`, `u32 quote_size`,
//! the selected id and the quote. Framing on the socket, from `tdx_attest.c`: each message is
//! preceded by its length as 4 bytes big-endian. Checks on the answer mirror
//! `qgs_msg_inflate_get_quote_resp`: major version 1, type 1, sizes adding up exactly, a
//! non-empty quote on success, and no payload with an error code.
//!
//! The transport and the TDREPORT are supplied by the caller ([`QgsFallback`]): the TDREPORT
//! comes from the `TDX_CMD_GET_REPORT0` ioctl on `/dev/tdx_guest`, which needs `unsafe` code
//! this workspace forbids, and vsock needs a socket type `std` does not have, so neither is
//! built in. Tests drive the exchange over a Unix socket against a QGS stand-in.

use std::io::{Read, Write};
use std::sync::Arc;

use crate::error::EvidenceError;
use crate::evidence::MAX_TDX_QUOTE_BYTES;

/// Intel QGS's default vsock port (`/etc/tdx-attest.conf`: `port=4050`).
pub const QGS_VSOCK_PORT: u32 = 4050;
/// Size of a TDREPORT (`TDX_REPORT_LEN`, linux/tdx-guest.h).
pub const TDX_REPORT_LEN: usize = 1024;

const HEADER_LEN: usize = 16;
const GET_QUOTE_REQ: u32 = 0;
const GET_QUOTE_RESP: u32 = 1;
const MAJOR: u16 = 1;
const MINOR: u16 = 1;
/// `QGS_MSG_ERROR_MAX`: error codes are `0x00012000 | n`, n in 1..=7.
const ERROR_MAX: u32 = 0x0001_2008;

fn error_name(code: u32) -> &'static str {
    match code {
        0x0001_2001 => "QGS_MSG_ERROR_UNEXPECTED",
        0x0001_2002 => "QGS_MSG_ERROR_OUT_OF_MEMORY",
        0x0001_2003 => "QGS_MSG_ERROR_INVALID_PARAMETER",
        0x0001_2004 => "QGS_MSG_ERROR_INVALID_VERSION",
        0x0001_2005 => "QGS_MSG_ERROR_INVALID_TYPE",
        0x0001_2006 => "QGS_MSG_ERROR_INVALID_SIZE",
        0x0001_2007 => "QGS_MSG_ERROR_INVALID_CODE",
        _ => "a QGS error",
    }
}

fn header(kind: u32, size: u32, error_code: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(&MAJOR.to_le_bytes());
    h.extend_from_slice(&MINOR.to_le_bytes());
    h.extend_from_slice(&kind.to_le_bytes());
    h.extend_from_slice(&size.to_le_bytes());
    h.extend_from_slice(&error_code.to_le_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at.checked_add(4)?)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_le_bytes)
}

/// `qgs_msg_gen_get_quote_req(report, report_size, NULL, 0)`.
pub fn encode_get_quote_req(tdreport: &[u8]) -> Result<Vec<u8>, String> {
    if tdreport.is_empty() {
        return Err("the TDREPORT is empty".into());
    }
    let size = HEADER_LEN + 8 + tdreport.len();
    let size32 = u32::try_from(size).map_err(|_| "the TDREPORT is too large".to_string())?;
    let report_size = u32::try_from(tdreport.len()).map_err(|_| "the TDREPORT is too large".to_string())?;
    let mut m = header(GET_QUOTE_REQ, size32, 0);
    m.extend_from_slice(&report_size.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m.extend_from_slice(tdreport);
    Ok(m)
}

/// `qgs_msg_inflate_get_quote_resp` plus the caller's `error_code != 0` check: the quote.
pub fn decode_get_quote_resp(m: &[u8]) -> Result<Vec<u8>, String> {
    let field = |at| u32_at(m, at).ok_or_else(|| format!("answer of {} bytes is shorter than a GET_QUOTE_RESP", m.len()));
    let major = m.get(0..2).and_then(|s| <[u8; 2]>::try_from(s).ok()).map(u16::from_le_bytes);
    if major != Some(MAJOR) {
        return Err(format!("answer has message major version {major:?}, expected {MAJOR}"));
    }
    let (kind, size, code) = (field(4)?, field(8)?, field(12)?);
    let (id_size, quote_size) = (field(16)?, field(20)?);
    if kind != GET_QUOTE_RESP {
        return Err(format!("answer has message type {kind}, expected GET_QUOTE_RESP (1)"));
    }
    if usize::try_from(size).ok() != Some(m.len()) {
        return Err(format!("answer header says {size} bytes, {} arrived", m.len()));
    }
    let expected = (HEADER_LEN as u64 + 8) + u64::from(id_size) + u64::from(quote_size);
    if expected != u64::from(size) {
        return Err(format!("answer sizes do not add up: {expected} declared, {size} in the header"));
    }
    if code != 0 {
        if code >= ERROR_MAX {
            return Err(format!("answer carries an invalid error code {code:#x}"));
        }
        if id_size != 0 || quote_size != 0 {
            return Err(format!("answer carries error {code:#x} and a payload"));
        }
        return Err(format!("QGS answered {} ({code:#x})", error_name(code)));
    }
    if quote_size == 0 {
        return Err("QGS answered success with an empty quote".into());
    }
    let start = HEADER_LEN + 8 + usize::try_from(id_size).map_err(|e| e.to_string())?;
    m.get(start..)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "answer ends before its quote".into())
}

/// One GetQuote exchange on a connected stream: length-prefixed request, length-prefixed
/// answer (bounded by [`MAX_TDX_QUOTE_BYTES`]), the quote out of it.
pub fn request_quote<S: Read + Write + ?Sized>(stream: &mut S, tdreport: &[u8]) -> Result<Vec<u8>, String> {
    let req = encode_get_quote_req(tdreport)?;
    let len = u32::try_from(req.len()).map_err(|e| e.to_string())?;
    stream.write_all(&len.to_be_bytes()).map_err(|e| format!("sending the request: {e}"))?;
    stream.write_all(&req).map_err(|e| format!("sending the request: {e}"))?;
    stream.flush().map_err(|e| format!("sending the request: {e}"))?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).map_err(|e| format!("reading the answer's length: {e}"))?;
    let len = usize::try_from(u32::from_be_bytes(len)).map_err(|e| e.to_string())?;
    if len > MAX_TDX_QUOTE_BYTES + HEADER_LEN + 8 {
        return Err(format!("answer of {len} bytes is over the limit"));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).map_err(|e| format!("reading the {len}-byte answer: {e}"))?;
    decode_get_quote_resp(&body)
}

/// Produces the TDREPORT for `report_data` (`TDX_CMD_GET_REPORT0`).
pub trait TdReportSource: Send + Sync + std::fmt::Debug {
    fn td_report(&self, report_data: &[u8; 64]) -> std::io::Result<Vec<u8>>;
}

/// A byte stream to the QGS.
pub trait QgsStream: Read + Write + Send {}
impl<T: Read + Write + Send> QgsStream for T {}

type Connect = dyn Fn() -> std::io::Result<Box<dyn QgsStream>> + Send + Sync;

/// Where to get a quote when configfs-tsm returns none: a TDREPORT source and a way to reach
/// the QGS (vsock on a real host).
#[derive(Clone)]
pub struct QgsFallback {
    pub report: Arc<dyn TdReportSource>,
    pub connect: Arc<Connect>,
}

impl std::fmt::Debug for QgsFallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QgsFallback").field("report", &self.report).finish()
    }
}

impl QgsFallback {
    /// A quote over `report_data`, from the QGS.
    pub fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, EvidenceError> {
        let report = self
            .report
            .td_report(report_data)
            .map_err(|e| EvidenceError::Qgs(format!("getting the TDREPORT: {e}")))?;
        if report.len() != TDX_REPORT_LEN {
            return Err(EvidenceError::Qgs(format!(
                "the TDREPORT is {} bytes, expected {TDX_REPORT_LEN}",
                report.len()
            )));
        }
        let mut stream = (self.connect)().map_err(|e| EvidenceError::Qgs(format!("connecting: {e}")))?;
        request_quote(&mut *stream, &report).map_err(EvidenceError::Qgs)
    }
}

/// A QGS stand-in for tests: checks a request the way `qgs_msg_inflate_get_quote_req` does
/// and answers what `qgs_msg_gen_get_quote_resp` / `qgs_msg_gen_error_resp` would.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;

    /// Answers one connection: `Ok(quote)` or `Err(error_code)`.
    pub(crate) fn serve_one<S: Read + Write>(s: &mut S, answer: Result<Vec<u8>, u32>) -> std::io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len)?;
        let mut req = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut req)?;
        // inflate_get_quote_req: version, type, size, error 0, report_size > 0, sizes add up.
        let ok = u16::from_le_bytes([req[0], req[1]]) == MAJOR
            && u32_at(&req, 4) == Some(GET_QUOTE_REQ)
            && u32_at(&req, 8).map(|v| v as usize) == Some(req.len())
            && u32_at(&req, 12) == Some(0)
            && u32_at(&req, 16).is_some_and(|r| r > 0)
            && u32_at(&req, 16).zip(u32_at(&req, 20)).map(|(a, b)| HEADER_LEN + 8 + a as usize + b as usize) == Some(req.len());
        let resp = match (ok, answer) {
            (true, Ok(quote)) => {
                let mut m = header(GET_QUOTE_RESP, (HEADER_LEN + 8 + quote.len()) as u32, 0);
                m.extend_from_slice(&0u32.to_le_bytes());
                m.extend_from_slice(&(quote.len() as u32).to_le_bytes());
                m.extend_from_slice(&quote);
                m
            }
            (ok, answer) => {
                let code = if ok { answer.err().unwrap_or(0x0001_2001) } else { 0x0001_2003 };
                let mut m = header(GET_QUOTE_RESP, (HEADER_LEN + 8) as u32, code);
                m.extend_from_slice(&[0; 8]);
                m
            }
        };
        s.write_all(&(resp.len() as u32).to_be_bytes())?;
        s.write_all(&resp)?;
        Ok(req)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::net::{UnixListener, UnixStream};

    use super::*;

    const SAMPLE_QUOTE: &[u8] = include_bytes!("../testdata/tdx_quote");

    fn socket() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("qgs-{}-{}.sock", std::process::id(), hex::encode(crate::binding::random_bytes::<4>().unwrap())))
    }

    #[test]
    fn request_layout_is_qgs_msg_lib_1_1() {
        let report = [0xab; TDX_REPORT_LEN];
        let m = encode_get_quote_req(&report).unwrap();
        assert_eq!(m.len(), 16 + 8 + 1024);
        assert_eq!(&m[0..4], &[1, 0, 1, 0], "major 1, minor 1");
        assert_eq!(u32_at(&m, 4), Some(0), "GET_QUOTE_REQ");
        assert_eq!(u32_at(&m, 8), Some(1048));
        assert_eq!(u32_at(&m, 12), Some(0));
        assert_eq!(u32_at(&m, 16), Some(1024));
        assert_eq!(u32_at(&m, 20), Some(0));
        assert_eq!(&m[24..], &report[..]);
    }

    #[test]
    fn a_quote_over_a_unix_socket_from_a_fake_qgs() {
        let path = socket();
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            fake::serve_one(&mut s, Ok(SAMPLE_QUOTE.to_vec())).unwrap()
        });
        let mut c = UnixStream::connect(&path).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let quote = request_quote(&mut c, &[7; TDX_REPORT_LEN]).unwrap();
        assert_eq!(quote, SAMPLE_QUOTE);
        crate::tdx::parse_quote(&quote).unwrap();
        let req = server.join().unwrap();
        assert_eq!(&req[24..], &[7; TDX_REPORT_LEN][..]);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn qgs_errors_and_malformed_answers_are_named() {
        let path = socket();
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            fake::serve_one(&mut s, Err(0x0001_2001)).unwrap();
        });
        let mut c = UnixStream::connect(&path).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let e = request_quote(&mut c, &[7; TDX_REPORT_LEN]).unwrap_err();
        assert_eq!(e, "QGS answered QGS_MSG_ERROR_UNEXPECTED (0x12001)");
        server.join().unwrap();
        let _ = std::fs::remove_file(path);

        let mut ok = header(GET_QUOTE_RESP, 24 + 3, 0);
        ok.extend_from_slice(&0u32.to_le_bytes());
        ok.extend_from_slice(&3u32.to_le_bytes());
        ok.extend_from_slice(b"abc");
        assert_eq!(decode_get_quote_resp(&ok).unwrap(), b"abc");
        for cut in 0..ok.len() {
            assert!(decode_get_quote_resp(&ok[..cut]).is_err());
        }
        let mut wrong = ok.clone();
        wrong[4] = 0; // GET_QUOTE_REQ
        assert!(decode_get_quote_resp(&wrong).unwrap_err().contains("type 0"));
        let mut empty = header(GET_QUOTE_RESP, 24, 0);
        empty.extend_from_slice(&[0; 8]);
        assert_eq!(decode_get_quote_resp(&empty).unwrap_err(), "QGS answered success with an empty quote");
    }
}
