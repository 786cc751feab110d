//! Test-only replay servers on loopback (feature `replay`): Intel PCS/PCCS v4 and AMD KDS,
//! serving real recorded collateral under the real paths and headers, with injectable faults.
//!
//! Faithful to what the clients read:
//! * PCS/PCCS paths and headers as `dcap-qvl` 0.7.1 (`src/collateral.rs`, Phala-Network/
//!   dcap-qvl) requests and reads them, which follow Intel's PCS v4 API:
//!   `GET /sgx/certification/v4/pckcrl?ca={processor|platform}&encoding=der` (DER body,
//!   `SGX-PCK-CRL-Issuer-Chain`), `GET /{tdx|sgx}/certification/v4/tcb?fmspc=..&update=..`
//!   (`{"tcbInfo":..,"signature":hex}`, `TCB-Info-Issuer-Chain` for TDX and
//!   `SGX-TCB-Info-Issuer-Chain` for SGX), `GET /{tdx|sgx}/certification/v4/qe/identity`
//!   (`{"enclaveIdentity":..,"signature":hex}`, `SGX-Enclave-Identity-Issuer-Chain`),
//!   `GET /sgx/certification/v4/rootcacrl` (a PCCS answers the DER CRL hex-encoded). Issuer
//!   chains travel percent-encoded, as Intel sends them.
//! * KDS paths as in AMD's KDS specification and go-sev-guest's `verify` tests:
//!   `GET /vcek/v1/{Milan|Genoa|Turin}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..` (DER)
//!   and `GET /vcek/v1/{product}/cert_chain` (PEM ASK then ARK).
//!
//! The server is a minimal HTTP/1.1 responder (one request per connection, then close), so a
//! test can also make it hang, fail or cut a body short.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use dcap_qvl::QuoteCollateralV3;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the server does wrong, if anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// Every request answers this status with an empty body.
    Status(u16),
    /// Accepts and reads the request, then never answers.
    Hang,
    /// The TCB info body is cut in half (a consistent Content-Length, so the JSON breaks).
    TruncateTcbInfo,
    /// Refuses connections (the listener stops accepting).
    Down,
}

#[derive(Default)]
struct State {
    tdx: Option<QuoteCollateralV3>,
    vceks: HashMap<String, Vec<u8>>,
    cert_chains: HashMap<String, Vec<u8>>,
    fault: Fault,
    hits: Vec<String>,
}

/// A running replay server; dropped = stopped.
pub struct ReplayServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReplayServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ReplayServer {
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else { continue };
                if lock(&st).fault == Fault::Down {
                    drop(sock);
                    continue;
                }
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, st).await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves this TDX collateral bundle (its TCB info for any FMSPC asked, like a PCS that
    /// knows one platform).
    pub fn serve_tdx(&self, c: QuoteCollateralV3) {
        lock(&self.state).tdx = Some(c);
    }

    /// Serves `der` for `/vcek/v1/{product}/{hwid}` at this TCB (`[bl, tee, snp, ucode]`).
    pub fn serve_vcek(&self, product: &str, hwid_hex: &str, tcb: [u8; 4], der: Vec<u8>) {
        lock(&self.state)
            .vceks
            .insert(vcek_key(product, &hwid_hex.to_ascii_lowercase(), tcb), der);
    }

    pub fn serve_cert_chain(&self, product: &str, pem: Vec<u8>) {
        lock(&self.state).cert_chains.insert(product.to_string(), pem);
    }

    pub fn set_fault(&self, f: Fault) {
        lock(&self.state).fault = f;
    }

    /// Paths (with query) requested so far.
    pub fn hits(&self) -> Vec<String> {
        lock(&self.state).hits.clone()
    }

    pub fn hits_matching(&self, needle: &str) -> usize {
        lock(&self.state).hits.iter().filter(|h| h.contains(needle)).count()
    }
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn vcek_key(product: &str, hwid: &str, tcb: [u8; 4]) -> String {
    format!("{product}/{hwid}/{}.{}.{}.{}", tcb[0], tcb[1], tcb[2], tcb[3])
}

/// Percent-encodes everything but RFC 3986 unreserved characters (Intel's header encoding).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn new(status: u16, body: Vec<u8>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body,
        }
    }
    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

async fn serve(mut sock: tokio::net::TcpStream, st: Arc<Mutex<State>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let target = text.split_whitespace().nth(1).unwrap_or("/").to_string();
    let fault = {
        let mut s = lock(&st);
        s.hits.push(target.clone());
        s.fault.clone()
    };
    let answer = match fault {
        Fault::Hang => {
            std::future::pending::<()>().await;
            return Ok(());
        }
        Fault::Status(code) => Answer::new(code, Vec::new()),
        _ => route(&target, &st, fault == Fault::TruncateTcbInfo),
    };
    let reason = match answer.status {
        200 => "OK",
        404 => "Not Found",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        answer.status,
        answer.body.len()
    );
    for (k, v) in &answer.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(&answer.body).await?;
    sock.shutdown().await
}

fn route(target: &str, st: &Mutex<State>, truncate: bool) -> Answer {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let q: HashMap<&str, &str> = query.split('&').filter_map(|kv| kv.split_once('=')).collect();
    let s = lock(st);
    if let Some(rest) = path.strip_prefix("/vcek/v1/") {
        let mut parts = rest.splitn(2, '/');
        let (product, tail) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if tail == "cert_chain" {
            return match s.cert_chains.get(product) {
                Some(pem) => Answer::new(200, pem.clone()).header("Content-Type", "application/x-pem-file"),
                None => Answer::new(404, Vec::new()),
            };
        }
        let spl = |k: &str| q.get(k).and_then(|v| v.parse::<u8>().ok()).unwrap_or(u8::MAX);
        let key = vcek_key(
            product,
            &tail.to_ascii_lowercase(),
            [spl("blSPL"), spl("teeSPL"), spl("snpSPL"), spl("ucodeSPL")],
        );
        return match s.vceks.get(&key) {
            Some(der) => Answer::new(200, der.clone()).header("Content-Type", "application/pkix-cert"),
            None => Answer::new(404, Vec::new()),
        };
    }
    let Some(c) = &s.tdx else {
        return Answer::new(404, Vec::new());
    };
    let tee = if path.starts_with("/tdx/") { "tdx" } else { "sgx" };
    match path.trim_start_matches("/sgx").trim_start_matches("/tdx") {
        "/certification/v4/pckcrl" => Answer::new(200, c.pck_crl.clone())
            .header("SGX-PCK-CRL-Issuer-Chain", &percent_encode(&c.pck_crl_issuer_chain)),
        "/certification/v4/rootcacrl" => Answer::new(200, hex::encode(&c.root_ca_crl).into_bytes()),
        "/certification/v4/tcb" => {
            let mut body = format!(
                "{{\"tcbInfo\":{},\"signature\":\"{}\"}}",
                c.tcb_info,
                hex::encode(&c.tcb_info_signature)
            )
            .into_bytes();
            if truncate {
                body.truncate(body.len() / 2);
            }
            let header = if tee == "tdx" { "TCB-Info-Issuer-Chain" } else { "SGX-TCB-Info-Issuer-Chain" };
            Answer::new(200, body).header(header, &percent_encode(&c.tcb_info_issuer_chain))
        }
        "/certification/v4/qe/identity" => Answer::new(
            200,
            format!(
                "{{\"enclaveIdentity\":{},\"signature\":\"{}\"}}",
                c.qe_identity,
                hex::encode(&c.qe_identity_signature)
            )
            .into_bytes(),
        )
        .header("SGX-Enclave-Identity-Issuer-Chain", &percent_encode(&c.qe_identity_issuer_chain)),
        _ => Answer::new(404, Vec::new()),
    }
}
