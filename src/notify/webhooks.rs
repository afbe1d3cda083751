//! Webhooks (SPEC §3.10): notices from the hub, batched per `notifications.batch_window`,
//! filtered by each webhook's `events`, rendered as JSON `{instance, events}` or Slack's
//! `{"text"}`, signed (`X-Ollama-Pool-Signature: sha256=<hex HMAC-SHA256 of the body>`) when a
//! secret is set, and POSTed from tasks of their own with retries and backoff.
//!
//! A slow or dead receiver costs nothing but its own slots: each webhook has at most
//! `MAX_PENDING` deliveries in flight (retries included); a batch that finds none free is
//! dropped and counted (`ollama_pool_webhook_deliveries_total{result="dropped"}`). The webhook
//! list is read from the runtime at each batch, so a reload applies to the next one.

use super::{Hub, Notice};
use crate::config::{WebhookConfig, WebhookFormat};
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use pingora::connectors::http::Connector;
use pingora::prelude::HttpPeer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, Semaphore};

/// Deliveries of one webhook in flight at once (each with its retries).
const MAX_PENDING: usize = 16;
/// Most notices in one delivery.
const MAX_BATCH: usize = 500;

/// Where a webhook is delivered: parsed once from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query as given (`/` when the URL has none).
    pub path: String,
    /// The `Host` header.
    pub authority: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{url:?}: a webhook URL must start with http:// or https://")),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("{url:?} has no host"))?;
        let authority = uri.authority().map(|a| a.as_str().to_string()).unwrap_or_default();
        if authority.contains('@') {
            return Err(format!("{url:?}: credentials in a webhook URL are not supported; use secret"));
        }
        Ok(Target {
            tls,
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            path: uri.path_and_query().map(|p| p.as_str().to_string()).filter(|p| !p.is_empty()).unwrap_or("/".into()),
            authority,
        })
    }

    /// The address to connect to (a name is looked up here, off any request path).
    async fn address(&self) -> std::io::Result<SocketAddr> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{} has no address", self.host)))
    }
}

/// `sha256=<hex>` of the body under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The body of one delivery.
pub fn render(format: WebhookFormat, instance: &str, notices: &[&Notice]) -> Bytes {
    let v = match format {
        WebhookFormat::Json => serde_json::json!({ "instance": instance, "events": notices }),
        WebhookFormat::Slack => {
            let lines: Vec<String> = notices.iter().map(|n| line(n)).collect();
            serde_json::json!({ "text": format!("ollama-pool {instance}:\n{}", lines.join("\n")) })
        }
    };
    Bytes::from(v.to_string())
}

/// One notice in words, for chat receivers.
fn line(n: &Notice) -> String {
    let mut s = format!("• {} {}", n.kind, n.provider);
    if let Some(id) = &n.key_id {
        s.push_str(&format!(" key {id}"));
    }
    if let (Some(from), Some(to)) = (n.from, n.to) {
        s.push_str(&format!(" {from} → {to}"));
    }
    if let Some(r) = n.reason {
        s.push_str(&format!(" ({r})"));
    }
    if let Some(m) = &n.model {
        s.push_str(&format!(" model {m}"));
    }
    if let Some(u) = &n.until {
        s.push_str(&format!(" until {u}"));
    }
    if let Some(k) = n.keys {
        s.push_str(&format!(" [{k} keys]"));
    }
    s
}

pub struct WebhookService {
    rx: Mutex<Option<broadcast::Receiver<Arc<Notice>>>>,
    runtime: Arc<ArcSwap<Runtime>>,
    instance: String,
    connector: Arc<Connector>,
    /// Free delivery slots per webhook URL.
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl WebhookService {
    /// Subscribes to `hub` now, so nothing published after start-up is missed.
    pub fn new(
        hub: &Hub,
        runtime: Arc<ArcSwap<Runtime>>,
        instance: String,
        connector: Arc<Connector>,
    ) -> WebhookService {
        WebhookService { rx: Mutex::new(Some(hub.subscribe())), runtime, instance, connector, slots: Mutex::default() }
    }

    fn slot(&self, url: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let sem = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(url.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_PENDING)))
            .clone();
        sem.try_acquire_owned().ok()
    }

    fn dispatch(&self, batch: &[Arc<Notice>]) {
        let rt = self.runtime.load();
        for w in &rt.config.notifications.webhooks {
            let chosen: Vec<&Notice> = batch
                .iter()
                .map(|n| &**n)
                .filter(|n| !n.remote && (w.events.is_empty() || w.events.iter().any(|e| e == n.kind)))
                .collect();
            if chosen.is_empty() {
                continue;
            }
            let Ok(target) = Target::parse(&w.url) else { continue }; // validated with the config
            let Some(permit) = self.slot(&w.url) else {
                log::warn!(
                    "webhook {}: {MAX_PENDING} deliveries pending; {} events dropped",
                    target.host,
                    chosen.len()
                );
                crate::metrics::webhook_delivery("dropped");
                continue;
            };
            let body = render(w.format, &self.instance, &chosen);
            let (w, connector) = (w.clone(), self.connector.clone());
            tokio::spawn(async move {
                deliver(&connector, &target, &w, body).await;
                drop(permit);
            });
        }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for WebhookService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        loop {
            let first = tokio::select! {
                _ = shutdown.changed() => return,
                n = rx.recv() => n,
            };
            let mut batch = match first {
                Ok(n) => vec![n],
                Err(broadcast::error::RecvError::Lagged(k)) => {
                    log::warn!("webhooks: fell {k} events behind; they were dropped");
                    crate::metrics::webhook_delivery("dropped");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let window = self.runtime.load().config.notifications.batch_window.0;
            let until = tokio::time::Instant::now() + window;
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Ok(n)) => batch.push(n),
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => crate::metrics::webhook_delivery("dropped"),
                    Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => break,
                }
            }
            self.dispatch(&batch);
        }
    }
}

/// POSTs `body` until a 2xx, at most `max_attempts` times, waiting `retry_backoff` (doubling)
/// between attempts. Counts the outcome.
async fn deliver(connector: &Connector, target: &Target, w: &WebhookConfig, body: Bytes) {
    let mut wait = w.retry_backoff.0;
    for attempt in 1..=w.max_attempts {
        let outcome = match tokio::time::timeout(w.timeout.0, post(connector, target, w, body.clone())).await {
            Ok(Ok(status)) if (200..300).contains(&status) => {
                crate::metrics::webhook_delivery("ok");
                return;
            }
            Ok(Ok(status)) => format!("answered {status}"),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {:?}", w.timeout.0),
        };
        if attempt == w.max_attempts {
            log::warn!("webhook {}: delivery failed after {attempt} attempts: {outcome}", target.host);
            crate::metrics::webhook_delivery("failed");
            return;
        }
        log::debug!("webhook {}: attempt {attempt} failed ({outcome}); retrying in {wait:?}", target.host);
        crate::metrics::webhook_delivery("retried");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(300));
    }
}

async fn post(connector: &Connector, target: &Target, w: &WebhookConfig, body: Bytes) -> Result<u16, String> {
    let addr = target.address().await.map_err(|e| format!("resolving {}: {e}", target.host))?;
    let mut peer = HttpPeer::new(addr, target.tls, target.host.clone());
    peer.options.connection_timeout = Some(w.timeout.0);
    peer.options.read_timeout = Some(w.timeout.0);
    peer.options.write_timeout = Some(w.timeout.0);
    let signature = w.secret.as_ref().map(|s| signature(s.expose().as_bytes(), &body));
    let len = body.len();
    let header = || {
        let mut h = pingora::http::RequestHeader::build("POST", target.path.as_bytes(), None)?;
        h.insert_header(http::header::HOST, &target.authority)?;
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        h.insert_header(http::header::CONTENT_LENGTH, len.to_string())?;
        h.insert_header(http::header::USER_AGENT, concat!("ollama-pool/", env!("CARGO_PKG_VERSION")))?;
        if let Some(sig) = &signature {
            h.insert_header("x-ollama-pool-signature", sig)?;
        }
        Ok(h)
    };
    let (mut session, resp) =
        crate::upstream::send(connector, &peer, None, &header, body).await.map_err(|e| e.to_string())?;
    // Read (a bounded part of) the answer so the connection can be reused.
    let _ = crate::upstream::read_up_to(&mut session, 64 * 1024).await;
    connector.release_http_session(session, &peer, None).await;
    Ok(resp.status.as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("https://hooks.example.com/services/T0/B1?x=1").unwrap();
        assert_eq!(
            (t.tls, t.port, t.path.as_str(), t.authority.as_str()),
            (true, 443, "/services/T0/B1?x=1", "hooks.example.com")
        );
        let t = Target::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!((t.tls, t.port, t.path.as_str()), (false, 9000, "/"));
        for bad in ["ftp://x/y", "hooks.example.com/x", "http://user:pw@h/x", "not a url"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // RFC 4231 test case 2
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn slack_text_names_the_key_id() {
        let mut n = Notice::new("key.invalid", "ollama", 0);
        n.key_id = Some("abcdef012345".into());
        n.from = Some("active");
        n.to = Some("invalid");
        let v: serde_json::Value = serde_json::from_slice(&render(WebhookFormat::Slack, "pool-1", &[&n])).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(
            text.starts_with("ollama-pool pool-1:")
                && text.contains("key.invalid ollama key abcdef012345 active → invalid")
        );
        let v: serde_json::Value = serde_json::from_slice(&render(WebhookFormat::Json, "pool-1", &[&n])).unwrap();
        assert_eq!((v["instance"].as_str(), v["events"][0]["type"].as_str()), (Some("pool-1"), Some("key.invalid")));
    }
}
