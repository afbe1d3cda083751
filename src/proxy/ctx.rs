//! Per-request state: what the hooks learn about one request as it passes through them.

use super::auth::Client;
use super::observe::Observed;
use super::routes::Family;
use crate::lifecycle::InFlight;
use crate::pool::Attempts;
use crate::provider::Provider;
use crate::runtime::Runtime;
use std::sync::Arc;

pub struct Ctx {
    /// The runtime this request started on: it finishes on it even if a reload swaps another in.
    pub(crate) runtime: Arc<Runtime>,
    /// The provider routing chose (None until it has).
    pub(crate) provider: Option<Arc<Provider>>,
    pub(crate) family: Family,
    pub(crate) client: Option<Arc<Client>>,
    pub(crate) attempts: Attempts,
    /// The response had started when the upstream broke: the client saw a cut-off response.
    pub(crate) aborted: bool,
    /// `Access-Control-Allow-Origin` for this request's origin (CORS on and the origin allowed).
    pub(crate) cors_allow: Option<http::HeaderValue>,
    /// `/healthz`, `/readyz` or a CORS preflight: answered locally and not a proxied request in
    /// the metrics (a load balancer's probes would otherwise fill the request histograms).
    pub(crate) local_answer: bool,
    /// Timings and token usage, for metrics.
    pub(crate) observed: Observed,
    /// Keeps the process alive until this request has finished (graceful shutdown).
    _in_flight: InFlight,
}

impl Ctx {
    pub(crate) fn new(runtime: Arc<Runtime>, in_flight: InFlight) -> Ctx {
        Ctx {
            attempts: Attempts::new(runtime.max_attempts),
            runtime,
            provider: None,
            family: Family::OpenAi,
            client: None,
            aborted: false,
            cors_allow: None,
            local_answer: false,
            observed: Observed::default(),
            _in_flight: in_flight,
        }
    }
}
