//! The admin API (SPEC §2.4): a pingora `ServeHttp` on its own listener. JSON in and out;
//! `Authorization: Bearer <admin token>` on everything under `/admin/`; `/metrics`, `/healthz`
//! and `/readyz` open. Keys show as id + masked form and tokens as id + name: the clear text of
//! a client token appears exactly once, in the answer that creates it.
//!
//! Handlers parse and answer; the work is in `ops` (shared with the CLI).

// Handlers return `Err(answer)` for early exits; an answer is a whole HTTP response, and this is
// the admin path (rare, never per proxied request), so its size does not matter.
#![allow(clippy::result_large_err)]

pub mod openapi;
pub mod ops;
pub mod routes;

use crate::config::units::parse_duration;
use crate::health::HealthService;
use crate::pool::clock::rfc3339;
use crate::pool::{KeyView, Status};
use crate::proxy::ProxyState;
use async_trait::async_trait;
use bytes::BytesMut;
use http::{Method, Response, StatusCode};
use ops::{Control, OpError};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Largest admin request body (an import of ~100k keys fits).
const MAX_BODY: usize = 16 << 20;

pub struct AdminApp {
    pub control: Control,
    pub health: Arc<HealthService>,
    pub proxy: Arc<ProxyState>,
    /// `POST /admin/reload` (None: nothing to reload from).
    pub reloader: Option<Arc<crate::reload::Reloader>>,
    /// Key and pool notices, for `GET /admin/events`.
    pub events: crate::notify::Hub,
    /// `fleet.instance`, named in the event stream's greeting and in `GET /admin/stats`.
    pub instance: String,
    /// SHA-256 of the admin token: compared in constant time, the token itself is not kept.
    token_hash: [u8; 32],
}

type Answer = Response<Vec<u8>>;

fn answer(status: u16, body: Value) -> Answer {
    let bytes = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    let mut b = Response::builder().status(status).header("cache-control", "no-store");
    if !bytes.is_empty() {
        b = b.header("content-type", "application/json");
    }
    b.header("content-length", bytes.len()).body(bytes).expect("valid response")
}

fn error(status: u16, message: impl Into<String>) -> Answer {
    answer(status, json!({ "error": message.into() }))
}

fn time(ms: Option<u64>) -> Value {
    ms.filter(|&m| m != 0).map(|m| Value::String(rfc3339(m))).unwrap_or(Value::Null)
}

/// `"2h"`, `"90s"` or a number of seconds.
fn duration(v: &Option<Value>, field: &str) -> Result<Option<Duration>, Answer> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(s) if s > 0 => Ok(Some(Duration::from_secs(s))),
            _ => Err(error(400, format!("{field}: want a positive number of seconds or a duration like \"2h\""))),
        },
        Some(Value::String(s)) => match parse_duration(s) {
            Ok(d) if !d.is_zero() => Ok(Some(d)),
            Ok(_) => Err(error(400, format!("{field}: must be longer than 0s"))),
            Err(e) => Err(error(400, format!("{field}: {e}"))),
        },
        Some(_) => Err(error(400, format!("{field}: want a duration like \"2h\" or a number of seconds"))),
    }
}

fn op_error(e: OpError) -> Answer {
    match e {
        OpError::Invalid(m) => error(400, m),
        OpError::Duplicate(id) => answer(409, json!({ "error": "key already present", "id": id })),
        e @ OpError::UnknownProvider(_) => error(400, format!("provider: {e}")),
        OpError::Store(e @ crate::store::StoreError::Unavailable(_)) => {
            log::warn!("admin: {e}");
            error(503, "store unavailable; nothing was changed")
        }
        OpError::Store(e) => {
            log::error!("admin: {e}");
            error(500, "the store failed; nothing was changed")
        }
    }
}

fn key_json(v: &KeyView) -> Value {
    json!({
        "id": v.id,
        "masked": v.masked,
        "label": v.label,
        "status": v.status.as_str(),
        "reason": if v.reason.as_str().is_empty() { Value::Null } else { v.reason.as_str().into() },
        "until": time(v.until_ms),
        "models": v.models,
        "parked_models": v.model_parks.iter().map(|p| serde_json::json!({"model": p.model, "until": time(Some(p.until_ms))})).collect::<Vec<_>>(),
        "category": v.category,
        "created_at": time(Some(v.created_at_ms)),
        "expires_at": time(v.expires_at_ms),
        "stats": {
            "requests": v.requests,
            "successes": v.successes,
            "failures": v.failures,
            "consecutive_failures": v.consecutive_failures,
            "stream_errors": v.stream_errors,
            "last_used": time(Some(v.last_used_ms)),
            "last_success": time(Some(v.last_success_ms)),
            "last_failure": time(Some(v.last_failure_ms)),
        }
    })
}

fn with_provider(mut v: Value, provider: &str) -> Value {
    if let Value::Object(m) = &mut v {
        m.insert("provider".into(), Value::String(provider.to_string()));
    }
    v
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Answer> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    serde_json::from_slice(body).map_err(|e| error(400, format!("invalid JSON body: {e}")))
}

fn query(uri: &http::Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn flag(q: &[(String, String)], name: &str) -> bool {
    q.iter().any(|(k, v)| k == name && matches!(v.as_str(), "" | "1" | "true" | "yes"))
}

impl AdminApp {
    pub fn new(
        control: Control,
        health: Arc<HealthService>,
        proxy: Arc<ProxyState>,
        reloader: Option<Arc<crate::reload::Reloader>>,
        events: crate::notify::Hub,
        instance: String,
        token: &crate::secret::Secret,
    ) -> Self {
        AdminApp { control, health, proxy, reloader, events, instance, token_hash: token.sha256() }
    }

    fn authorized(&self, s: &ServerSession) -> bool {
        let presented = s
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .and_then(|v| (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| &v[7..]))
            .unwrap_or(b"");
        // Hash first, then compare every byte: timing reveals nothing about the token.
        let h = crate::secret::sha256(presented);
        h.iter().zip(self.token_hash.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0 && !presented.is_empty()
    }

    async fn read_body(s: &mut ServerSession) -> Result<Vec<u8>, Answer> {
        let mut buf = BytesMut::new();
        loop {
            match s.read_request_body().await {
                Ok(Some(chunk)) => {
                    if buf.len() + chunk.len() > MAX_BODY {
                        return Err(error(413, format!("request body over {} MiB", MAX_BODY >> 20)));
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(buf.to_vec()),
                Err(_) => return Err(error(400, "could not read the request body")),
            }
        }
    }

    async fn route(&self, s: &mut ServerSession) -> Answer {
        use routes::{Matched, Op};
        let method = s.req_header().method.clone();
        let uri = s.req_header().uri.clone();
        let path = uri.path().trim_end_matches('/').to_string();
        let matched = routes::find(method.as_str(), &path);
        let public = matches!(matched, Matched::Route(op, _) if op.is_public());
        if !public && path.starts_with("/admin/") && !self.authorized(s) {
            return Response::builder()
                .status(401)
                .header("www-authenticate", "Bearer")
                .header("content-type", "application/json")
                .body(json!({"error": "missing or wrong admin token"}).to_string().into_bytes())
                .expect("valid response");
        }
        let (op, id) = match matched {
            Matched::Route(op, id) => (op, id.unwrap_or("")),
            Matched::WrongMethod(allowed) => {
                let mut a = error(405, format!("method not allowed here (allowed: {})", allowed.join(", ")));
                a.headers_mut().insert(http::header::ALLOW, allowed.join(", ").parse().expect("method names"));
                return a;
            }
            Matched::NotFound if path.starts_with("/admin/") => return error(404, "no such admin route"),
            Matched::NotFound => return error(404, "no such route"),
        };
        let body = match Self::read_body(s).await {
            Ok(b) => b,
            Err(a) => return a,
        };
        let q = query(&uri);
        let result = match op {
            Op::Healthz => Ok(answer(200, json!({"status": "ok"}))),
            Op::Readyz if self.proxy.ready() => Ok(answer(200, json!({"status": "ready"}))),
            Op::Readyz => Ok(answer(503, json!({"status": "not ready"}))),
            Op::Metrics => Ok(metrics()),
            Op::OpenApi => Ok(answer(200, openapi::document())),
            Op::ListKeys => self.list_keys(&q),
            Op::AddKey => self.add_key(&body),
            Op::Import => self.import(s, &body, &q).await,
            Op::RemoveKey => self.remove_key(id),
            Op::DisableKey => self.disable_key(id, &body),
            Op::EnableKey => self.enable_key(id),
            Op::HealthCheck => self.health_check(&body).await,
            Op::ListTokens => self.list_tokens(),
            Op::CreateToken => self.create_token(&body),
            Op::RevokeToken => self.revoke_token(id),
            Op::Stats => Ok(self.stats()),
            Op::Providers => Ok(self.providers()),
            Op::Usage => self.usage(s, &q),
            Op::Reload => self.reload().await,
            // An authorised GET /admin/events streams from `process_new_http` and never gets here.
            Op::Events => Err(error(500, "the event stream is served by the connection handler")),
        };
        result.unwrap_or_else(|a| a)
    }

    /// (provider, key view) of every key of the current runtime, in provider order.
    fn views(&self) -> Vec<(String, KeyView)> {
        let rt = self.proxy.runtime.load();
        rt.providers.iter().flat_map(|p| p.pool.views().into_iter().map(|v| (p.name.clone(), v))).collect()
    }

    fn providers(&self) -> Answer {
        let rt = self.proxy.runtime.load();
        let list: Vec<Value> = rt
            .providers
            .iter()
            .map(|p| {
                let mut by_status = serde_json::Map::new();
                for st in ["active", "cooling", "disabled", "invalid", "expired"] {
                    by_status.insert(st.into(), 0.into());
                }
                for v in p.pool.views() {
                    let n = by_status.get(v.status.as_str()).and_then(Value::as_u64).unwrap_or(0);
                    by_status.insert(v.status.as_str().into(), (n + 1).into());
                }
                json!({
                    "name": p.name,
                    "kind": p.kind.as_str(),
                    "url": p.upstream.url.display(),
                    "prefix": p.prefix,
                    "keys": { "total": p.pool.len(), "usable": p.pool.usable_count(), "by_status": by_status },
                    "models": p.known_models(),
                    "max_concurrency_per_key": p.max_concurrency_per_key,
                    "storm_since": time(p.pool.storm_since()),
                })
            })
            .collect();
        answer(200, json!({ "providers": list, "default": rt.home_provider().name, "generation": rt.generation }))
    }

    /// `GET /admin/usage`: flushes what this process counted since the last flush, then
    /// reports from the store, so the answer is exact up to this request.
    fn usage(&self, s: &ServerSession, q: &[(String, String)]) -> Result<Answer, Answer> {
        use crate::pool::calendar;
        use crate::usage::report;
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let now = self.control.now();
        let filters = [get("client"), get("provider"), get("model")];
        let query = report::Query::parse(get("from"), get("to"), get("group_by"), filters, calendar::day_of(now))
            .map_err(|e| error(400, e.to_string()))?;
        let csv = match get("format") {
            None | Some("") => s
                .req_header()
                .headers
                .get(http::header::ACCEPT)
                .is_some_and(|v| v.to_str().unwrap_or("").split(',').any(|t| t.trim().starts_with("text/csv"))),
            Some("csv") => true,
            Some("json") => false,
            Some(f) => return Err(error(400, format!("format: want json or csv, not {f:?}"))),
        };
        let store = &*self.control.store;
        let rows = self
            .proxy
            .usage
            .flush(store, now)
            .and_then(|()| store.usage(query.from, query.to))
            .map_err(|e| op_error(e.into()))?;
        let r = report::build(&query, &rows);
        if !csv {
            return Ok(answer(200, r.to_json(&query)));
        }
        let body = r.to_csv().into_bytes();
        Ok(Response::builder()
            .status(200)
            .header("content-type", "text/csv; charset=utf-8")
            .header("cache-control", "no-store")
            .header("content-length", body.len())
            .body(body)
            .expect("valid response"))
    }

    async fn reload(&self) -> Result<Answer, Answer> {
        let Some(r) = &self.reloader else { return Err(error(404, "this server was not started from a config file")) };
        match r.reload().await {
            Ok(done) => Ok(answer(200, serde_json::to_value(done).unwrap_or_default())),
            Err(crate::reload::ReloadError::Invalid(problems)) => {
                let list: Vec<Value> = problems.iter().map(|p| json!({"path": p.path, "message": p.message})).collect();
                Err(answer(400, json!({ "problems": list })))
            }
            Err(e) => Err(error(500, e.to_string())),
        }
    }

    fn list_keys(&self, q: &[(String, String)]) -> Result<Answer, Answer> {
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
        let status = match get("status") {
            None => None,
            Some(s) => Some(
                [Status::Active, Status::Cooling, Status::Disabled, Status::Invalid, Status::Expired]
                    .into_iter()
                    .find(|st| st.as_str() == s)
                    .ok_or_else(|| error(400, "status: want active, cooling, disabled, invalid or expired"))?,
            ),
        };
        let number = |name: &str, default: usize, max: usize| -> Result<usize, Answer> {
            match get(name) {
                None => Ok(default),
                Some(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| error(400, format!("{name}: want a number from 1 to {max}"))),
            }
        };
        let page = number("page", 1, usize::MAX)?;
        let page_size = number("page_size", 50, 1000)?;
        let search = get("search").map(str::to_ascii_lowercase);
        let provider = get("provider");
        if let Some(p) = provider {
            if self.proxy.runtime.load().provider(p).is_none() {
                return Err(error(400, format!("provider: no provider is named {p:?}")));
            }
        }
        let matching: Vec<(String, KeyView)> = self
            .views()
            .into_iter()
            .filter(|(p, _)| provider.is_none_or(|want| p == want))
            .filter(|(_, v)| status.is_none_or(|s| v.status == s))
            .filter(|(_, v)| {
                search.as_deref().is_none_or(|s| {
                    v.id.contains(s)
                        || v.label.as_deref().is_some_and(|l| l.to_ascii_lowercase().contains(s))
                        || v.category.as_deref().is_some_and(|c| c.contains(s))
                })
            })
            .collect();
        let total = matching.len();
        let keys: Vec<Value> = matching
            .iter()
            .skip((page - 1).saturating_mul(page_size))
            .take(page_size)
            .map(|(p, v)| with_provider(key_json(v), p))
            .collect();
        Ok(answer(200, json!({ "keys": keys, "total": total, "page": page, "page_size": page_size })))
    }

    fn add_key(&self, body: &[u8]) -> Result<Answer, Answer> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Req {
            key: String,
            label: Option<String>,
            ttl: Option<Value>,
            provider: Option<String>,
        }
        let r: Req = parse_json(body)?;
        let ttl = duration(&r.ttl, "ttl")?;
        let id = self.control.add_key(&r.key, r.label, ttl, r.provider.as_deref()).map_err(op_error)?;
        Ok(answer(201, json!({ "id": id })))
    }

    async fn import(&self, s: &ServerSession, body: &[u8], q: &[(String, String)]) -> Result<Answer, Answer> {
        let text = std::str::from_utf8(body).map_err(|_| error(400, "import body must be UTF-8 text or JSON"))?;
        let is_json = s
            .req_header()
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        if is_json && serde_json::from_str::<Value>(text).is_err() {
            return Err(error(400, "invalid JSON body: want {\"keys\": [...]} or a JSON array"));
        }
        let provider = q.iter().find(|(k, _)| k == "provider").map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
        self.control.provider_name(provider).map_err(op_error)?;
        let checker = if flag(q, "validate") { self.health.prober(provider) } else { None };
        let prober = checker.as_ref().map(|c| c.prober());
        let report =
            self.control.import(text, prober, flag(q, "dry_run"), provider, &|_, _| {}).await.map_err(op_error)?;
        Ok(answer(200, serde_json::to_value(report).unwrap_or_default()))
    }

    fn remove_key(&self, id: &str) -> Result<Answer, Answer> {
        match self.control.remove_key(id).map_err(op_error)? {
            true => Ok(answer(204, Value::Null)),
            false => Err(error(404, "no such key")),
        }
    }

    fn disable_key(&self, id: &str, body: &[u8]) -> Result<Answer, Answer> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Req {
            #[serde(rename = "for")]
            for_: Option<Value>,
        }
        let r: Req = parse_json(body)?;
        let for_ = duration(&r.for_, "for")?;
        if !self.control.disable_key(id, for_).map_err(op_error)? {
            return Err(error(404, "no such key"));
        }
        self.key_answer(id)
    }

    fn enable_key(&self, id: &str) -> Result<Answer, Answer> {
        if !self.control.enable_key(id).map_err(op_error)? {
            return Err(error(404, "no such key"));
        }
        self.key_answer(id)
    }

    fn key_answer(&self, id: &str) -> Result<Answer, Answer> {
        let rt = self.proxy.runtime.load();
        let p = rt.provider_of_key(id).ok_or_else(|| error(404, "no such key"))?;
        let key = p.pool.get(id).ok_or_else(|| error(404, "no such key"))?;
        Ok(answer(200, with_provider(key_json(&key.view_at(p.pool.now_ms())), &p.name)))
    }

    async fn health_check(&self, body: &[u8]) -> Result<Answer, Answer> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Req {
            ids: Option<Vec<String>>,
        }
        let r: Req = parse_json(body)?;
        if let Some(ids) = &r.ids {
            let rt = self.proxy.runtime.load();
            if let Some(bad) = ids.iter().find(|id| rt.provider_of_key(id).is_none()) {
                return Err(error(404, format!("no such key: {bad}")));
            }
        }
        let results = self.health.check_now(r.ids.as_deref()).await;
        Ok(answer(200, json!({ "results": results })))
    }

    /// Stored tokens (`source: "store"`) and the config's `clients.tokens` (`source: "config"`,
    /// revoked by editing the config), with their limits and what their budgets used.
    fn list_tokens(&self) -> Result<Answer, Answer> {
        let tokens = self.control.store.tokens().map_err(|e| op_error(e.into()))?;
        let now = self.control.now();
        let budgets = |hash: &[u8; 32]| -> Value {
            let live = self.control.clients.as_ref().and_then(|c| c.get(hash));
            let views = live.map(|c| c.budgets.views(now)).unwrap_or_default();
            let m: serde_json::Map<String, Value> = views
                .iter()
                .map(|b| {
                    let v = json!({
                        "limit": b.limit,
                        "used": b.used,
                        "remaining": b.remaining(),
                        "resets_at": time(Some(b.resets_at_ms)),
                    });
                    (b.kind.as_str().to_string(), v)
                })
                .collect();
            Value::Object(m)
        };
        let mut list: Vec<Value> = tokens
            .iter()
            .map(|t| {
                json!({
                    "id": t.id,
                    "name": t.name,
                    "source": "store",
                    "created_at": time(Some(t.created_at_ms)),
                    "expires_at": time(t.expires_at_ms),
                    "models": t.models,
                    "rpm": t.rpm,
                    "tpm": t.budgets.tpm,
                    "daily_tokens": t.budgets.daily_tokens,
                    "monthly_tokens": t.budgets.monthly_tokens,
                    "budgets": budgets(&t.hash),
                })
            })
            .collect();
        for t in &self.proxy.runtime.load().static_tokens {
            let hash = t.token.sha256();
            list.push(json!({
                "id": hex::encode(&hash[..6]),
                "name": t.name,
                "source": "config",
                "created_at": null,
                "expires_at": null,
                "models": [],
                "rpm": t.rpm,
                "tpm": t.tpm,
                "daily_tokens": t.daily_tokens,
                "monthly_tokens": t.monthly_tokens,
                "budgets": budgets(&hash),
            }));
        }
        Ok(answer(200, json!({ "tokens": list })))
    }

    fn create_token(&self, body: &[u8]) -> Result<Answer, Answer> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Req {
            name: String,
            expires_in: Option<Value>,
            #[serde(default)]
            models: Vec<String>,
            rpm: Option<i64>,
            tpm: Option<i64>,
            daily_tokens: Option<i64>,
            monthly_tokens: Option<i64>,
        }
        let r: Req = parse_json(body)?;
        let expires_in = duration(&r.expires_in, "expires_in")?;
        let positive = |v: Option<i64>, field: &str, max: i64| -> Result<Option<u64>, Answer> {
            match v {
                None => Ok(None),
                Some(n) if (1..=max).contains(&n) => Ok(Some(n as u64)),
                Some(n) => Err(error(400, format!("{field}: must be from 1 to {max} (omit it for no limit), not {n}"))),
            }
        };
        let spec = ops::TokenSpec {
            name: r.name,
            expires_in,
            models: r.models,
            rpm: positive(r.rpm, "rpm", u32::MAX as i64)?.map(|v| v as u32),
            budgets: crate::usage::Limits {
                tpm: positive(r.tpm, "tpm", 1 << 37)?,
                daily_tokens: positive(r.daily_tokens, "daily_tokens", 1 << 37)?,
                monthly_tokens: positive(r.monthly_tokens, "monthly_tokens", 1 << 37)?,
            },
        };
        let (t, token) = self.control.create_token(spec).map_err(op_error)?;
        Ok(answer(
            201,
            json!({ "id": t.id, "name": t.name, "token": token.expose(), "expires_at": time(t.expires_at_ms) }),
        ))
    }

    fn revoke_token(&self, id: &str) -> Result<Answer, Answer> {
        match self.control.revoke_token(id).map_err(op_error)? {
            true => Ok(answer(204, Value::Null)),
            false => Err(error(404, "no such token")),
        }
    }

    fn stats(&self) -> Answer {
        let rt = self.proxy.runtime.load();
        let views: Vec<KeyView> = self.views().into_iter().map(|(_, v)| v).collect();
        let usable: usize = rt.providers.iter().map(|p| p.pool.usable_count()).sum();
        let storm = rt.providers.iter().filter_map(|p| p.pool.storm_since()).min();
        let (mut requests, mut successes, mut failures) = (0u64, 0u64, 0u64);
        let mut by_status = serde_json::Map::new();
        for st in ["active", "cooling", "disabled", "invalid", "expired"] {
            by_status.insert(st.into(), 0.into());
        }
        for v in &views {
            requests += v.requests;
            successes += v.successes;
            failures += v.failures;
            let n = by_status.get(v.status.as_str()).and_then(Value::as_u64).unwrap_or(0);
            by_status.insert(v.status.as_str().into(), (n + 1).into());
        }
        let rate = if successes + failures == 0 {
            Value::Null
        } else {
            json!(successes as f64 / (successes + failures) as f64)
        };
        answer(
            200,
            json!({
                "keys": { "total": views.len(), "usable": usable, "by_status": by_status },
                "requests": requests,
                "successes": successes,
                "failures": failures,
                "success_rate": rate,
                "tokens": self.proxy.clients.len(),
                "storm_since": time(storm),
                "generation": rt.generation,
                "instance": self.instance,
            }),
        )
    }
}

fn metrics() -> Answer {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let enc = prometheus::TextEncoder::new();
    if enc.encode(&prometheus::gather(), &mut buf).is_err() {
        return error(500, "could not encode metrics");
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", enc.format_type())
        .header("content-length", buf.len())
        .body(buf)
        .expect("valid response")
}

/// The admin listener's connections: one whole answer per request (`route`), except
/// `GET /admin/events`, which streams until the client goes (pingora's `ServeHttp` can only
/// answer whole, so this implements the connection handler itself).
#[async_trait]
impl HttpServerApp for AdminApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match http.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                log::debug!(target: "ollama_pool::admin", "reading a request failed: {e}");
                return None;
            }
        }
        http.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let req = http.req_header();
        let events = req.method == Method::GET && req.uri.path().trim_end_matches('/') == "/admin/events";
        if events && self.authorized(&http) {
            log::debug!(target: "ollama_pool::admin", "GET /admin/events: streaming");
            crate::notify::sse::stream(&self.events, &self.instance, &mut http, shutdown).await;
            return None;
        }
        let a = self.route(&mut http).await;
        log::debug!(target: "ollama_pool::admin", "{} {} status={}", http.req_header().method, http.req_header().uri.path(), a.status().as_u16());
        let (parts, body) = a.into_parts();
        let header: pingora::http::ResponseHeader = parts.into();
        if http.write_response_header(Box::new(header)).await.is_err() {
            return None;
        }
        if !body.is_empty() && http.write_response_body(body.into(), true).await.is_err() {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&http);
        match http.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings() {
        let q = query(&"/x?status=active&search=a%20b&validate".parse().unwrap());
        assert_eq!(
            q,
            vec![("status".into(), "active".into()), ("search".into(), "a b".into()), ("validate".into(), "".into())]
        );
        assert!(flag(&q, "validate"));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(&Some(json!("2h")), "for").unwrap(), Some(Duration::from_secs(7200)));
        assert_eq!(duration(&Some(json!(90)), "ttl").unwrap(), Some(Duration::from_secs(90)));
        assert!(duration(&Some(json!("soon")), "for").is_err());
        assert!(duration(&Some(json!(-1)), "ttl").is_err());
        assert_eq!(duration(&None, "ttl").unwrap(), None);
    }
}
