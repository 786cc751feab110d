use std::sync::Arc;

use router::Router;
use tokio::sync::Semaphore;

use crate::billing::Meter;
use crate::config::GatewayConfig;
use crate::jwt::JwtAuth;
use crate::keys::KeyStore;
use crate::ratelimit::RateLimiter;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<GatewayConfig>,
    pub router: Router,
    pub keys: Arc<KeyStore>,
    pub jwt: Option<Arc<JwtAuth>>,
    pub limiter: Arc<RateLimiter>,
    /// Load shedding: one permit per in-flight inference request, held until its last byte.
    pub inflight: Arc<Semaphore>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The ledger; `None` serves without charging (no billing configured).
    pub meter: Option<Arc<dyn Meter>>,
    /// Attestation reports served without a client nonce.
    pub report_cache: Arc<crate::attest::ReportCache>,
    /// The web dashboard and its API; `None` answers them 404 `dashboard_disabled`.
    pub dashboard: Option<Arc<crate::dashboard::Dashboard>>,
    /// Stored responses; `None`: `store: true` and `previous_response_id` are refused.
    pub responses: Option<Arc<crate::stored::ResponseStore>>,
}

impl AppState {
    pub fn new(
        cfg: GatewayConfig,
        router: Router,
        keys: Arc<KeyStore>,
        jwt: Option<Arc<JwtAuth>>,
        limiter: Arc<RateLimiter>,
    ) -> Self {
        let inflight = Arc::new(Semaphore::new(cfg.max_in_flight));
        Self {
            cfg: Arc::new(cfg),
            router,
            keys,
            jwt,
            limiter,
            inflight,
            metrics: crate::metrics::handle(),
            meter: None,
            report_cache: Arc::default(),
            dashboard: None,
            responses: None,
        }
    }

    pub fn with_responses(mut self, store: Arc<crate::stored::ResponseStore>) -> Self {
        self.responses = Some(store);
        self
    }

    pub fn with_meter(mut self, meter: Arc<dyn Meter>) -> Self {
        self.meter = Some(meter);
        self
    }

    pub fn with_dashboard(mut self, dashboard: Arc<crate::dashboard::Dashboard>) -> Self {
        self.dashboard = Some(dashboard);
        self
    }
}
