//! A provider (SPEC §2.2.1): one upstream API with its own key pool, auth form, probe and
//! model rules — Ollama Cloud, OpenRouter, any OpenAI-compatible API, Anthropic. Built from a
//! `providers[]` entry (or `upstream:` + `keys:`, the provider `default`) by `runtime`.
//!
//! Not here: which provider a request goes to (`routing`), the attempt loop (`proxy::forward`).

use crate::config::{ProbeConfig, ProviderKind, UpstreamConfig};
use crate::pool::{AuthForm, Pool};
use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use std::sync::Arc;

pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub upstream: Arc<Upstream>,
    /// Kept across reloads while the provider keeps its name: keys keep state and counters.
    pub pool: Arc<Pool>,
    pub auth: AuthForm,
    /// The token-free validity probe.
    pub probe: ProbeConfig,
    /// Where a key's model list is read (token-free).
    pub models_path: String,
    /// Static model globs (`prefix*`); empty = what the keys report.
    pub models: Vec<String>,
    /// `/openrouter`: requests under it come here, with the prefix stripped.
    pub prefix: Option<String>,
    pub max_concurrency_per_key: u32,
    pub forward_client_ip: bool,
    /// Headers every upstream request of this provider carries unless the client set them
    /// (anthropic: `anthropic-version`).
    pub default_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The provider's own model listing, cached (refreshed off the request path).
    pub listing: ArcSwap<Vec<String>>,
    /// Its request counters (`ollama_pool_provider_requests_total`).
    pub metrics: crate::metrics::ProviderMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{path}.url: {message}")]
    Upstream { path: String, message: String },
    #[error("{path}.auth.header: {header:?} is not a header name")]
    AuthHeader { path: String, header: String },
}

impl From<ProviderError> for crate::config::ConfigError {
    fn from(e: ProviderError) -> Self {
        let (path, message) = match e {
            ProviderError::Upstream { path, message } => (format!("{path}.url"), message),
            ProviderError::AuthHeader { path, header } => {
                (format!("{path}.auth.header"), format!("{header:?} is not a header name"))
            }
        };
        crate::config::ConfigError { path, message }
    }
}

/// The Anthropic API version sent when the client sent none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

impl Provider {
    /// Builds a provider from its config entry (`path` names it in errors). `pool` is the
    /// pool to keep (a reload), or a fresh one.
    pub fn build(
        path: &str,
        cfg: &UpstreamConfig,
        default_probe: &ProbeConfig,
        pool: Arc<Pool>,
        upstream: Option<Arc<Upstream>>,
    ) -> Result<Provider, ProviderError> {
        let upstream = match upstream {
            Some(u) => u,
            None => Arc::new(
                Upstream::new(cfg)
                    .map_err(|e| ProviderError::Upstream { path: path.into(), message: e.to_string() })?,
            ),
        };
        let auth = match &cfg.auth {
            Some(a) => AuthForm {
                header: http::HeaderName::from_bytes(a.header.as_bytes())
                    .map_err(|_| ProviderError::AuthHeader { path: path.into(), header: a.header.clone() })?,
                scheme: a.scheme.clone().filter(|s| !s.is_empty()),
            },
            None => default_auth(cfg.kind),
        };
        let probe = cfg.probe.clone().unwrap_or_else(|| match cfg.kind {
            ProviderKind::Ollama => default_probe.clone(),
            kind => kind_probe(kind),
        });
        let default_headers = match cfg.kind {
            ProviderKind::Anthropic => {
                vec![(
                    http::HeaderName::from_static("anthropic-version"),
                    http::HeaderValue::from_static(ANTHROPIC_VERSION),
                )]
            }
            _ => vec![],
        };
        Ok(Provider {
            name: cfg.name.clone(),
            kind: cfg.kind,
            upstream,
            pool,
            auth,
            probe,
            models_path: cfg.models_path.clone().unwrap_or_else(|| kind_models_path(cfg.kind).into()),
            models: cfg.models.clone(),
            prefix: cfg.prefix.clone(),
            max_concurrency_per_key: cfg.max_concurrency_per_key,
            forward_client_ip: cfg.forward_client_ip_headers,
            default_headers,
            listing: ArcSwap::from_pointee(Vec::new()),
            metrics: crate::metrics::ProviderMetrics::new(&cfg.name),
        })
    }

    /// Whether this provider claims `model`: its static `models` globs, else its cached
    /// listing (its keys' discovered model lists and the upstream's own listing, refreshed off
    /// the request path by `HealthService::refresh_listings`).
    pub fn claims(&self, model: &str) -> bool {
        if !self.models.is_empty() {
            return self.models.iter().any(|g| glob_matches(g, model));
        }
        self.listing.load().iter().any(|m| crate::pool::same_model(m, model))
    }

    /// Every model this provider is known to serve (static list, else the listing and the
    /// keys' discovered lists), sorted, for `/v1/models` and `/api/tags`.
    pub fn known_models(&self) -> Vec<String> {
        let mut out: Vec<String> = if !self.models.is_empty() {
            self.models.iter().filter(|m| !m.ends_with('*')).cloned().collect()
        } else {
            let mut v: Vec<String> = self.listing.load().iter().cloned().collect();
            for k in self.pool.keys().iter() {
                v.extend(k.view_at(0).models);
            }
            v
        };
        out.sort();
        out.dedup();
        out
    }
}

/// `authorization: Bearer <key>`, or for anthropic `x-api-key: <key>`.
pub fn default_auth(kind: ProviderKind) -> AuthForm {
    match kind {
        ProviderKind::Anthropic => AuthForm { header: http::HeaderName::from_static("x-api-key"), scheme: None },
        _ => AuthForm::default(),
    }
}

/// The token-free validity probe of each kind (SPEC §2.2.1).
pub fn kind_probe(kind: ProviderKind) -> ProbeConfig {
    let (method, path) = match kind {
        ProviderKind::Ollama => ("POST", "/api/me"),
        ProviderKind::Openai | ProviderKind::Anthropic => ("GET", "/v1/models"),
        ProviderKind::Openrouter => ("GET", "/api/v1/key"),
    };
    ProbeConfig { method: method.into(), path: path.into(), body: String::new(), expect_status: None }
}

/// Where each kind lists a key's models (token-free).
pub fn kind_models_path(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Ollama => "/api/tags",
        ProviderKind::Openai | ProviderKind::Anthropic => "/v1/models",
        ProviderKind::Openrouter => "/api/v1/models",
    }
}

/// `gpt-*` matches by prefix; anything else exactly (with Ollama's implied `:latest`).
pub fn glob_matches(glob: &str, model: &str) -> bool {
    match glob.strip_suffix('*') {
        Some(prefix) => model.starts_with(prefix),
        None => crate::pool::same_model(glob, model),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches("gpt-*", "gpt-4o"));
        assert!(!glob_matches("gpt-*", "o1"));
        assert!(glob_matches("qwen3", "qwen3:latest"));
        assert!(glob_matches("*", "anything"));
        assert!(!glob_matches("qwen3", "qwen3:8b"));
    }

    #[test]
    fn kind_defaults() {
        assert_eq!(default_auth(ProviderKind::Anthropic).header.as_str(), "x-api-key");
        assert_eq!(default_auth(ProviderKind::Openrouter).scheme.as_deref(), Some("Bearer"));
        assert_eq!(kind_probe(ProviderKind::Openrouter).path, "/api/v1/key");
        assert_eq!(kind_models_path(ProviderKind::Openrouter), "/api/v1/models");
    }
}
