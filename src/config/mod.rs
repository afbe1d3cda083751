//! Configuration: the YAML schema (`schema`), its units (`units`), and loading: `${ENV}`
//! expansion, unknown-key rejection and validation that reports *every* problem with its YAML path.

mod schema;
pub mod units;

pub use schema::*;

use serde_yaml::{Mapping, Value};
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a config file, named by its YAML path (`pool.cooldown`, `listen[0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A loaded, validated config plus where it came from (relative paths resolve against it).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub base_dir: PathBuf,
    /// The file it was read from (a reload reads it again); None for a config built in code.
    pub source: Option<PathBuf>,
}

impl Loaded {
    /// A path from the config, made absolute against the config file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

impl Loaded {
    /// Problems with the files the config points at (key files, the CA bundle): `check` reports
    /// them with the rest; `serve` fails on them when it opens them.
    pub fn check_files(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut readable = |path: &Path, yaml: String| {
            if let Err(e) = std::fs::File::open(self.resolve(path)) {
                errors.push(ConfigError {
                    path: yaml,
                    message: format!("cannot read {}: {e}", self.resolve(path).display()),
                });
            }
        };
        for (path, p) in self.config.provider_entries() {
            let files_path = if path == "upstream" { "keys.files".to_string() } else { format!("{path}.keys.files") };
            for (i, f) in p.keys.iter().flat_map(|k| &k.files).enumerate() {
                readable(f, format!("{files_path}[{i}]"));
            }
            if let Some(ca) = &p.ca_file {
                readable(ca, format!("{path}.ca_file"));
            }
        }
        errors
    }
}

/// Reads, expands and validates `path`. On failure returns every problem found.
pub fn load(path: &Path) -> Result<Loaded, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError { path: String::new(), message: format!("cannot read {}: {e}", path.display()) }]
    })?;
    let config = parse(&text, &|name| std::env::var(name).ok())?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(Loaded { config, base_dir, source: Some(path.to_path_buf()) })
}

/// Parses config text; `env` answers `${NAME}` look-ups (a parameter so tests need no globals).
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Vec<ConfigError>> {
    let mut value: Value = serde_yaml::from_str(text).map_err(|e| {
        let at = e.location().map(|l| format!(" at line {}, column {}", l.line(), l.column()));
        vec![ConfigError { path: String::new(), message: format!("invalid YAML{}: {e}", at.unwrap_or_default()) }]
    })?;
    if value.is_null() {
        value = Value::Mapping(Mapping::new());
    }
    let mut errors = Vec::new();
    expand_env(&mut value, &mut String::new(), env, &mut errors);
    let config = deserialize_all(value, &mut errors);
    if let Some(c) = &config {
        // The pruned document still validates, so one run reports value problems as well as
        // type problems; skip paths already reported (their default stood in for the bad value).
        let reported: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
        errors.extend(c.validate().into_iter().filter(|e| !reported.iter().any(|r| covers(r, &e.path))));
    }
    match config {
        Some(c) if errors.is_empty() => Ok(c),
        _ => Err(errors),
    }
}

/// Replaces `${NAME}` and `${NAME:-fallback}` in every string value. `$${` is a literal `${`.
fn expand_env(v: &mut Value, path: &mut String, env: &dyn Fn(&str) -> Option<String>, errors: &mut Vec<ConfigError>) {
    match v {
        Value::String(s) if s.contains("${") => match expand_str(s, env) {
            Ok(out) => *s = out,
            Err(missing) => {
                for name in missing {
                    errors.push(ConfigError {
                        path: path.clone(),
                        message: format!("environment variable {name} is not set"),
                    });
                }
            }
        },
        Value::Sequence(seq) => {
            for (i, item) in seq.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand_env(item, path, env, errors);
                path.truncate(len);
            }
        }
        Value::Mapping(map) => {
            for (k, item) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k.as_str().unwrap_or("?"));
                expand_env(item, path, env, errors);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(s.len());
    let mut missing = Vec::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(lit) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = lit;
        } else if let Some(inner) = after.strip_prefix("${") {
            match inner.find('}') {
                Some(end) => {
                    // `${NAME:-fallback}` uses the fallback when NAME is unset or empty.
                    let (name, fallback) = match inner[..end].split_once(":-") {
                        Some((n, f)) => (n, Some(f)),
                        None => (&inner[..end], None),
                    };
                    match (env(name).filter(|v| !v.is_empty() || fallback.is_none()), fallback) {
                        (Some(val), _) => out.push_str(&val),
                        (None, Some(f)) => out.push_str(f),
                        (None, None) => missing.push(name.to_string()),
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    missing.push(format!("(unterminated \"${{{inner}\")"));
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

/// Deserializes the whole document, and on each error records it, removes the offending node
/// and tries again, so one run reports every bad field rather than only the first.
/// Returns the config built from what is left (callers check `errors` before trusting it).
fn deserialize_all(mut value: Value, errors: &mut Vec<ConfigError>) -> Option<Config> {
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, Config>(value.clone()) {
            Ok(c) => return Some(c),
            Err(e) => {
                let segments: Vec<Segment> = e.path().iter().map(Segment::from).collect();
                let message = e.inner().to_string();
                let mut path = e.path().to_string();
                if path == "." {
                    path.clear();
                }
                let unknown = unknown_field(&message);
                let removed = match &unknown {
                    // serde reports an unknown key at the map's own path on some versions and
                    // at the key's path on others: handle both.
                    Some(name) if segments.last().is_some_and(|s| s.is(name)) => remove(&mut value, &segments),
                    Some(name) => {
                        let mut with_key = segments.clone();
                        with_key.push(Segment::Key(name.clone()));
                        if !path.is_empty() {
                            path.push('.');
                        }
                        path.push_str(name);
                        remove(&mut value, &with_key)
                    }
                    None => remove(&mut value, &segments),
                };
                errors.push(ConfigError { path, message: tidy(&message) });
                if !removed {
                    return None;
                }
            }
        }
    }
    None
}

/// Whether a problem at `reported` already accounts for one at `path` (same node or a parent).
fn covers(reported: &str, path: &str) -> bool {
    path == reported
        || reported.is_empty()
        || path.strip_prefix(reported).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

/// serde's messages list every expected field; keep them, they are the helpful part.
fn tidy(message: &str) -> String {
    message.replace("unknown field", "unknown key")
}

#[derive(Clone)]
enum Segment {
    Key(String),
    Index(usize),
    Other,
}

impl Segment {
    fn is(&self, name: &str) -> bool {
        matches!(self, Segment::Key(k) if k == name)
    }
}

impl From<&serde_path_to_error::Segment> for Segment {
    fn from(s: &serde_path_to_error::Segment) -> Self {
        match s {
            serde_path_to_error::Segment::Map { key } => Segment::Key(key.clone()),
            serde_path_to_error::Segment::Seq { index } => Segment::Index(*index),
            _ => Segment::Other,
        }
    }
}

/// Removes the node at `path`; false if there is nothing removable there.
fn remove(root: &mut Value, path: &[Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else { return false };
    let mut node = root;
    for seg in parents {
        node = match (seg, node) {
            (Segment::Key(k), Value::Mapping(m)) => match m.get_mut(k.as_str()) {
                Some(n) => n,
                None => return false,
            },
            (Segment::Index(i), Value::Sequence(s)) => match s.get_mut(*i) {
                Some(n) => n,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, node) {
        (Segment::Key(k), Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        (Segment::Index(i), Value::Sequence(s)) if *i < s.len() => {
            s.remove(*i);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("tok-from-env-123".into()),
            "HOST" => Some("ollama.com".into()),
            _ => None,
        }
    }

    fn problems(text: &str) -> Vec<String> {
        parse(text, &env).unwrap_err().iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("upstream: {url: 'https://${HOST}'}", &env).unwrap();
        assert_eq!(c.upstream.unwrap().url, "https://ollama.com");
        assert_eq!(c.pool.max_attempts, 3);
        assert_eq!(c.pool.cooldown, units::Dur::secs(3600));
        assert_eq!(c.pool.max_request_body.0, 32 << 20);
        assert_eq!(c.listen[0].address(), "0.0.0.0:8080");
    }

    #[test]
    fn env_expansion_and_missing_variables() {
        let c = parse("upstream: {url: http://x}\nclients: {tokens: [{name: a, token: '${TOKEN}'}]}", &env).unwrap();
        assert_eq!(c.clients.tokens[0].token.expose(), "tok-from-env-123");
        let p = problems("upstream: {url: 'http://${NOPE}'}\nclients: {tokens: [{name: a, token: '${ALSO_NOPE}'}]}");
        assert!(p.contains(&"upstream.url: environment variable NOPE is not set".to_string()), "{p:?}");
        assert!(p.contains(&"clients.tokens[0].token: environment variable ALSO_NOPE is not set".to_string()), "{p:?}");
        assert_eq!(expand_str("a$${b}c$d", &env).unwrap(), "a${b}c$d");
        assert_eq!(expand_str("${NOPE:-keys.txt}|${HOST:-x}", &env).unwrap(), "keys.txt|ollama.com");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let p = problems(
            "upstream: {url: http://x, colour: red}\n\
             pool: {cooldown: soon, max_attempts: 0, max_request_body: lots}\n\
             bogus: 1\n\
             listen: [nowhere]\n",
        );
        let joined = p.join("\n");
        for want in [
            "upstream.colour: unknown key",
            "pool.cooldown: invalid duration",
            "pool.max_request_body: invalid size",
            "bogus: unknown key",
        ] {
            assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
        }
        // Value problems are reported in the same run as type problems.
        let p = problems("listen: [nowhere]\npool: {max_attempts: 0, cooldown: soon}\nbogus: 1\n").join("\n");
        for want in
            ["upstream.url: required", "listen[0]: \"nowhere\" is not an ip:port", "pool.max_attempts: must be between"]
        {
            assert!(p.contains(want), "missing {want:?} in:\n{p}");
        }
    }

    #[test]
    fn yaml_syntax_errors_name_the_line() {
        let p = problems("upstream: {url: http://x\npool: [");
        assert!(p[0].starts_with("invalid YAML at line"), "{p:?}");
    }

    #[test]
    fn fleet_heartbeat_bounds() {
        for bad in ["10ms", "2m"] {
            let p = problems(&format!("upstream: {{url: http://x}}\nfleet: {{heartbeat: {bad}}}")).join("\n");
            assert!(p.contains("fleet.heartbeat: must be between 100ms and 60s"), "{bad}: {p}");
        }
        assert!(parse("upstream: {url: http://x}\nfleet: {heartbeat: 200ms}", &env).is_ok());
    }

    #[test]
    fn admin_token_rules() {
        let p = problems("upstream: {url: http://x}\nadmin: {listen: 127.0.0.1:9, token: short}").join("\n");
        assert!(p.contains("admin.token: must be at least 16 characters"), "{p}");
    }
}
