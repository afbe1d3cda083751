//! Which provider serves a request, and as which model (SPEC §3.7): a path prefix selects its
//! provider outright; else an alias (`routing.aliases`, the body's `model` rewritten); else
//! the provider that claims the model (its `models` globs, else its keys' model lists); else
//! `routing.default`. Built once per runtime; the request path only reads it.

use crate::config::{Config, ConfigError};
use crate::provider::Provider;
use std::collections::HashMap;
use std::sync::Arc;

pub struct Routing {
    /// Index into the runtime's providers.
    default: usize,
    /// alias -> (provider index, target model).
    aliases: HashMap<String, (usize, Arc<str>)>,
    /// (prefix, provider index), longest first.
    prefixes: Vec<(String, usize)>,
}

/// Where one request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub provider: usize,
    /// The model to send upstream (the alias target, or the client's model).
    pub model: Option<Arc<str>>,
    /// The body's `model` must be rewritten to `model` (an alias).
    pub rewrite: bool,
}

impl Routing {
    pub fn build(cfg: &Config, providers: &[Arc<Provider>]) -> Result<Routing, Vec<ConfigError>> {
        let index = |name: &str| providers.iter().position(|p| p.name == name);
        let mut errors = Vec::new();
        let default = match &cfg.routing.default {
            None => 0,
            Some(d) => index(d).unwrap_or_else(|| {
                errors.push(ConfigError {
                    path: "routing.default".into(),
                    message: format!("no provider is named {d:?}"),
                });
                0
            }),
        };
        let mut aliases = HashMap::new();
        for (alias, target) in &cfg.routing.aliases {
            let found = target.split_once(':').and_then(|(p, m)| Some((index(p)?, m)));
            match found {
                Some((i, m)) => {
                    aliases.insert(alias.clone(), (i, Arc::from(m)));
                }
                None => errors.push(ConfigError {
                    path: format!("routing.aliases.{alias}"),
                    message: format!("{target:?}: no such provider:model"),
                }),
            }
        }
        let mut prefixes: Vec<(String, usize)> =
            providers.iter().enumerate().filter_map(|(i, p)| Some((p.prefix.clone()?, i))).collect();
        prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        if errors.is_empty() {
            Ok(Routing { default, aliases, prefixes })
        } else {
            Err(errors)
        }
    }

    /// The provider whose prefix `path` is under, and the path without it.
    pub fn by_prefix<'p>(&self, path: &'p str) -> Option<(usize, &'p str)> {
        self.prefixes.iter().find_map(|(pre, i)| {
            let rest = path.strip_prefix(pre.as_str())?;
            rest.starts_with('/').then_some((*i, rest))
        })
    }

    /// Routes a request that asked for `model` (after any prefix choice, `prefixed`).
    pub fn route(&self, providers: &[Arc<Provider>], prefixed: Option<usize>, model: Option<Arc<str>>) -> Routed {
        if let Some(p) = prefixed {
            return Routed { provider: p, model, rewrite: false };
        }
        let Some(m) = model else { return Routed { provider: self.default, model: None, rewrite: false } };
        if let Some((p, target)) = self.aliases.get(&*m) {
            return Routed { provider: *p, model: Some(target.clone()), rewrite: true };
        }
        let provider =
            if providers.len() > 1 { providers.iter().position(|p| p.claims(&m)).unwrap_or(self.default) } else { 0 };
        Routed { provider, model: Some(m), rewrite: false }
    }

    /// Aliases and their targets, for `/v1/models`.
    pub fn aliases(&self) -> impl Iterator<Item = &String> {
        self.aliases.keys()
    }
}

/// The body with its top-level `model` replaced (an alias), or None when it is not a JSON object.
pub fn rewrite_model(body: &[u8], model: &str) -> Option<bytes::Bytes> {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    v.insert("model".into(), serde_json::Value::String(model.to_string()));
    serde_json::to_vec(&v).ok().map(bytes::Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_the_model() {
        let b = rewrite_model(
            br#"{"model":"fast","messages":[{"role":"user","content":"model"}],"stream":true}"#,
            "gpt-oss:20b",
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["model"], "gpt-oss:20b");
        assert_eq!(v["messages"][0]["content"], "model");
        assert_eq!(v["stream"], true);
        assert!(rewrite_model(b"[1,2]", "x").is_none());
    }
}
