//! Where requests go: the upstream base URL, its addresses (resolved off the request path by a
//! pingora `LoadBalancer` with our DNS discovery and a TCP health check, both driven for every
//! provider by `AddressService`), the `HttpPeer` an attempt connects to and its idle
//! connections (`idle`). Keys are not here: a pingora `Backend` models a host, never a key.

mod exchange;
mod idle;

pub use exchange::{read_up_to, release, send};
pub use idle::IdlePool;

use crate::config::UpstreamConfig;
use async_trait::async_trait;
use http::HeaderValue;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::protocols::ALPN;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Why an upstream could not be set up (each names the offending value; none is a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0:?} is not a URL: {1}")]
    NotAUrl(String, String),
    #[error("{0:?}: the scheme must be http or https")]
    Scheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?}: a base URL cannot carry a query string")]
    Query(String),
    #[error("addresses: {0:?} is not ip:port")]
    Address(String),
    #[error("static discovery did not complete")]
    Discovery,
    #[error("resolving the host: {0}")]
    Resolve(String),
    #[error("ca_file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("{0:?} cannot be a Host header")]
    HostHeader(String),
}

/// The parsed `upstream.url`: scheme, host, port and an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Prepended to every forwarded path (`https://h/ollama` → `/ollama/v1/...`); no trailing `/`.
    pub base_path: String,
}

impl UpstreamUrl {
    pub fn parse(url: &str) -> Result<UpstreamUrl, UpstreamError> {
        let uri: http::Uri =
            url.parse().map_err(|e: http::uri::InvalidUri| UpstreamError::NotAUrl(url.into(), e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(UpstreamError::Scheme(url.into())),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| UpstreamError::NoHost(url.into()))?;
        if uri.query().is_some() {
            return Err(UpstreamError::Query(url.into()));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        Ok(UpstreamUrl {
            tls,
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            host,
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// `scheme://host[:port]/base`, for reports.
    pub fn display(&self) -> String {
        format!("{}://{}{}", if self.tls { "https" } else { "http" }, self.authority(), self.base_path)
    }

    /// `Host` header value: the host, plus the port when it is not the scheme's default.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Resolves the upstream host (or returns the pinned addresses) for the load balancer.
struct Discovery {
    host: String,
    port: u16,
    pinned: Vec<SocketAddr>,
}

impl Discovery {
    fn immediate(&self) -> Option<Vec<SocketAddr>> {
        if !self.pinned.is_empty() {
            return Some(self.pinned.clone());
        }
        self.host.parse::<IpAddr>().ok().map(|ip| vec![SocketAddr::new(ip, self.port)])
    }
}

#[async_trait]
impl ServiceDiscovery for Discovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let addrs: Vec<SocketAddr> = match self.immediate() {
            Some(a) => a,
            None => tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|e| {
                    log::warn!("upstream: cannot resolve {}: {e}", self.host);
                    pingora::Error::because(pingora::ErrorType::ConnectNoRoute, "resolving upstream host", e)
                })?
                .collect(),
        };
        let backends =
            addrs.into_iter().map(|a| Backend { addr: a.into(), weight: 1, ext: Default::default() }).collect();
        Ok((backends, HashMap::new()))
    }
}

pub struct Upstream {
    pub url: UpstreamUrl,
    /// Precomputed `Host` header for upstream requests.
    pub host_header: HeaderValue,
    lb: Arc<LoadBalancer<RoundRobin>>,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    idle_timeout: Duration,
    verify_tls: bool,
    /// CA certificates from `upstream.ca_file`, shared by every peer.
    ca: Option<Arc<pingora::protocols::tls::CaType>>,
    /// When the addresses were last resolved / health-checked (`AddressService`).
    last_update: std::sync::Mutex<Option<tokio::time::Instant>>,
    last_check: std::sync::Mutex<Option<tokio::time::Instant>>,
    dns_refresh: Duration,
    health_check_interval: Duration,
    /// The target of each address seen so far, built once: an attempt takes an `Arc` instead of
    /// building a peer (its SNI string and options) every time, and the address keeps its idle
    /// connections with it (issue #14 item 2).
    targets: arc_swap::ArcSwap<Vec<Arc<Target>>>,
}

/// One upstream address: the peer to connect to, and its idle keep-alive connections (`None`
/// for an address beyond `TARGET_CACHE`: pingora's pool keeps those).
pub struct Target {
    pub peer: HttpPeer,
    pub idle: Option<IdlePool>,
}

/// Targets kept per upstream; an address set larger than this (DNS with many records) still
/// works, building the peers it finds no room for.
const TARGET_CACHE: usize = 16;

impl Upstream {
    /// Builds the upstream and its address book. IP literals and pinned addresses are known at
    /// once; a host name is resolved by the background service (`background()`) when it starts.
    pub fn new(cfg: &UpstreamConfig) -> Result<Upstream, UpstreamError> {
        let url = UpstreamUrl::parse(&cfg.url)?;
        let pinned = cfg
            .addresses
            .iter()
            .map(|a| a.parse().map_err(|_| UpstreamError::Address(a.clone())))
            .collect::<Result<Vec<SocketAddr>, UpstreamError>>()?;
        let discovery = Discovery { host: url.host.clone(), port: url.port, pinned };
        let known_now = discovery.immediate().is_some();
        let mut lb = LoadBalancer::<RoundRobin>::from_backends(pingora::lb::Backends::new(Box::new(discovery)));
        if !cfg.health_check_interval.0.is_zero() {
            lb.set_health_check(TcpHealthCheck::new());
        }
        if known_now {
            // Static discovery completes on first poll: no runtime needed, no request ever races it.
            use futures_util::FutureExt;
            lb.update()
                .now_or_never()
                .ok_or(UpstreamError::Discovery)?
                .map_err(|e| UpstreamError::Resolve(e.to_string()))?;
        }
        let ca = match &cfg.ca_file {
            None => None,
            Some(path) => {
                let ca_err = |message: String| UpstreamError::CaFile { path: path.display().to_string(), message };
                let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
                let certs = pingora::tls::x509::X509::stack_from_pem(&pem)
                    .map_err(|e| ca_err(format!("not PEM certificates: {e}")))?;
                if certs.is_empty() {
                    return Err(ca_err("no certificates in it".into()));
                }
                Some(Arc::new(certs.into_boxed_slice()))
            }
        };
        Ok(Upstream {
            ca,
            host_header: HeaderValue::from_str(&url.authority())
                .map_err(|_| UpstreamError::HostHeader(url.authority()))?,
            url,
            lb: Arc::new(lb),
            connect_timeout: cfg.connect_timeout.0,
            read_timeout: cfg.read_timeout.0,
            write_timeout: cfg.write_timeout.0,
            idle_timeout: cfg.idle_timeout.0,
            verify_tls: cfg.verify_tls,
            last_update: std::sync::Mutex::new(None),
            last_check: std::sync::Mutex::new(None),
            dns_refresh: cfg.dns_refresh.0,
            health_check_interval: cfg.health_check_interval.0,
            targets: arc_swap::ArcSwap::from_pointee(Vec::new()),
        })
    }

    /// Resolves the host again and health-checks the addresses when their time has come; on
    /// every call, closes the idle connections that expired or that the upstream closed.
    pub async fn refresh_if_due(&self) {
        let now = tokio::time::Instant::now();
        let due = |slot: &std::sync::Mutex<Option<tokio::time::Instant>>, every: Duration| {
            let mut last = slot.lock().unwrap_or_else(|p| p.into_inner());
            let due = !every.is_zero() && last.is_none_or(|t| now.duration_since(t) >= every);
            if due {
                *last = Some(now);
            }
            due
        };
        if due(&self.last_update, self.dns_refresh) {
            if let Err(e) = self.lb.update().await {
                log::debug!("upstream {}: address update failed: {e}", self.url.host);
            }
        }
        if due(&self.last_check, self.health_check_interval) {
            self.lb.backends().run_health_check(true).await;
        }
        for t in self.targets.load().iter() {
            if let Some(idle) = &t.idle {
                idle.sweep();
            }
        }
    }

    /// Resolves the upstream now (for one-shot tools that run no background service).
    pub async fn resolve_now(&self) -> Result<(), UpstreamError> {
        self.lb.update().await.map_err(|e| UpstreamError::Resolve(e.to_string()))
    }

    /// Whether at least one upstream address is known.
    pub fn resolved(&self) -> bool {
        !self.lb.backends().get_backend().is_empty()
    }

    /// The target for one attempt: the next healthy address round-robin (any address if none
    /// is healthy: a wrong health verdict must not take the whole proxy down). None = unresolved.
    pub fn target(&self) -> Option<Arc<Target>> {
        let backends = self.lb.backends().get_backend();
        let addr = if backends.len() == 1 {
            // One address is the answer whatever its health: no selection (its health lookups
            // hash the address a few times per attempt).
            *backends.first()?.addr.as_inet()?
        } else {
            let backend = self.lb.select(b"", 16).or_else(|| self.lb.select_with(b"", 16, |_, _| true))?;
            *backend.addr.as_inet()?
        };
        let known = self.targets.load();
        if let Some(t) = known.iter().find(|t| t.peer._address.as_inet() == Some(&addr)) {
            return Some(t.clone());
        }
        if known.len() >= TARGET_CACHE {
            return Some(Arc::new(Target { peer: self.build_peer(addr), idle: None }));
        }
        let mut built = None;
        self.targets.rcu(|list| {
            let mut list = Vec::clone(list);
            match list.iter().find(|t| t.peer._address.as_inet() == Some(&addr)) {
                Some(t) => built = Some(t.clone()),
                None => {
                    let t =
                        Arc::new(Target { peer: self.build_peer(addr), idle: Some(IdlePool::new(self.idle_timeout)) });
                    built = Some(t.clone());
                    list.push(t);
                }
            }
            list
        });
        built
    }

    fn build_peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, self.url.tls, self.url.host.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.connect_timeout);
        o.read_timeout = Some(self.read_timeout);
        o.write_timeout = Some(self.write_timeout);
        o.idle_timeout = Some(self.idle_timeout);
        // HTTP/1.1 only: pingora's h2 upstream path can silently re-send a POST.
        o.alpn = ALPN::H1;
        o.verify_cert = self.verify_tls;
        o.verify_hostname = self.verify_tls;
        o.ca = self.ca.clone();
        peer
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
}

/// Keeps every provider's upstream addresses fresh (DNS refresh and TCP health checks, each
/// at its upstream's own cadence), whatever a reload does to the providers: one pingora
/// background service instead of one per upstream, which a reload could not add.
pub struct AddressService {
    pub runtime: Arc<arc_swap::ArcSwap<crate::runtime::Runtime>>,
}

#[async_trait]
impl pingora::services::background::BackgroundService for AddressService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            let rt = self.runtime.load_full();
            for p in &rt.providers {
                p.upstream.refresh_if_due().await;
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = UpstreamUrl::parse("https://ollama.com").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port, u.base_path.as_str()), (true, "ollama.com", 443, ""));
        assert_eq!(u.authority(), "ollama.com");
        let u = UpstreamUrl::parse("http://127.0.0.1:9000/base/").unwrap();
        assert_eq!((u.tls, u.port, u.base_path.as_str()), (false, 9000, "/base"));
        assert_eq!(u.authority(), "127.0.0.1:9000");
        assert!(UpstreamUrl::parse("ftp://x").is_err());
        assert!(UpstreamUrl::parse("not a url").is_err());
    }

    #[test]
    fn ip_literals_resolve_without_a_runtime() {
        let cfg = UpstreamConfig { url: "http://127.0.0.1:9".into(), ..Default::default() };
        let up = Upstream::new(&cfg).unwrap();
        assert!(up.resolved());
        assert_eq!(up.target().unwrap().peer._address.to_string(), "127.0.0.1:9");
        assert!(Arc::ptr_eq(&up.target().unwrap(), &up.target().unwrap()), "one target, built once");
    }

    #[test]
    fn each_address_gets_one_peer_built_once() {
        let cfg = UpstreamConfig {
            url: "http://upstream.test".into(),
            addresses: vec!["127.0.0.1:9".into(), "127.0.0.2:9".into()],
            ..Default::default()
        };
        let up = Upstream::new(&cfg).unwrap();
        let picks: Vec<Arc<Target>> = (0..6).map(|_| up.target().unwrap()).collect();
        let mut addrs: Vec<String> = picks.iter().map(|t| t.peer._address.to_string()).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs, ["127.0.0.1:9", "127.0.0.2:9"], "round-robin over both addresses");
        for t in &picks {
            let same = picks.iter().filter(|q| q.peer._address == t.peer._address);
            assert!(same.clone().all(|q| Arc::ptr_eq(t, q)), "one target per address");
            assert_eq!(t.peer.sni, "upstream.test");
            assert!(t.idle.is_some(), "with its idle connections");
        }
    }
}
