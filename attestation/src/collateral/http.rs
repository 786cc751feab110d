//! The HTTP transport handed to `dcap-qvl`'s collateral client and used for AMD KDS: reqwest
//! with a per-request timeout and a cap on the body size, so a source that hangs or streams
//! without end costs one bounded request, never a stuck admission.

use std::collections::BTreeMap;
use std::time::Duration;

use dcap_qvl::http::{HttpClient, HttpResponse};

/// A bounded GET client. Cheap to clone (reqwest's client is reference counted).
#[derive(Clone, Debug)]
pub struct BoundedHttp {
    client: reqwest::Client,
    timeout: Duration,
    max_body_bytes: usize,
}

impl BoundedHttp {
    pub fn new(timeout: Duration, max_body_bytes: usize) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("cocoon-attestation/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Self {
            client,
            timeout,
            max_body_bytes,
        })
    }

    /// GET `url`; any status is returned (callers judge it), transport failures are errors
    /// naming the URL and, for a timeout, the limit.
    pub async fn fetch(&self, url: &str) -> Result<HttpResponse, String> {
        let fail = |e: reqwest::Error| {
            if e.is_timeout() {
                format!("GET {url}: no complete answer within {:?}", self.timeout)
            } else {
                format!("GET {url}: {e}")
            }
        };
        let mut resp = self.client.get(url).send().await.map_err(fail)?;
        let status = resp.status().as_u16();
        let mut headers = BTreeMap::new();
        for (name, value) in resp.headers() {
            // Intel sends issuer chains URL-encoded, so headers are ASCII; skip any that is not.
            if let Ok(v) = value.to_str() {
                headers.insert(name.as_str().to_string(), v.to_string());
            }
        }
        if let Some(len) = resp.content_length() {
            if len > self.max_body_bytes as u64 {
                return Err(format!(
                    "GET {url}: body of {len} bytes is over the {}-byte limit",
                    self.max_body_bytes
                ));
            }
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(fail)? {
            if body.len() + chunk.len() > self.max_body_bytes {
                return Err(format!(
                    "GET {url}: body is over the {}-byte limit",
                    self.max_body_bytes
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

impl HttpClient for BoundedHttp {
    async fn get(&self, url: &str) -> anyhow::Result<HttpResponse> {
        self.fetch(url).await.map_err(anyhow::Error::msg)
    }
}
