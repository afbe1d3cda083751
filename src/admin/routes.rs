//! The admin listener's routes, as one table: the router matches requests against it, and the
//! OpenAPI document (`openapi.rs`) is checked against it by tests, so neither can gain a route
//! the other lacks.

/// What a route does (each has one handler in `AdminApp::route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    ListKeys,
    AddKey,
    Import,
    RemoveKey,
    DisableKey,
    EnableKey,
    HealthCheck,
    ListTokens,
    CreateToken,
    RevokeToken,
    Stats,
    Providers,
    Usage,
    Reload,
    Events,
}

impl Op {
    /// Answered without the admin token.
    pub fn is_public(self) -> bool {
        matches!(self, Op::Healthz | Op::Readyz | Op::Metrics | Op::OpenApi)
    }
}

/// (method, path template, op). `{id}` matches one path segment.
pub const ROUTES: &[(&str, &str, Op)] = &[
    ("GET", "/healthz", Op::Healthz),
    ("GET", "/readyz", Op::Readyz),
    ("GET", "/metrics", Op::Metrics),
    ("GET", "/admin/openapi.json", Op::OpenApi),
    ("GET", "/admin/keys", Op::ListKeys),
    ("POST", "/admin/keys", Op::AddKey),
    ("POST", "/admin/keys/import", Op::Import),
    ("DELETE", "/admin/keys/{id}", Op::RemoveKey),
    ("POST", "/admin/keys/{id}/disable", Op::DisableKey),
    ("POST", "/admin/keys/{id}/enable", Op::EnableKey),
    ("POST", "/admin/health-check", Op::HealthCheck),
    ("GET", "/admin/tokens", Op::ListTokens),
    ("POST", "/admin/tokens", Op::CreateToken),
    ("DELETE", "/admin/tokens/{id}", Op::RevokeToken),
    ("GET", "/admin/stats", Op::Stats),
    ("GET", "/admin/providers", Op::Providers),
    ("GET", "/admin/usage", Op::Usage),
    ("POST", "/admin/reload", Op::Reload),
    ("GET", "/admin/events", Op::Events),
];

/// The `{id}` a path gives a template, or None when it does not match.
fn matches<'p>(template: &str, path: &'p str) -> Option<Option<&'p str>> {
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    let mut id = None;
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(id),
            (Some("{id}"), Some(seg)) if !seg.is_empty() => id = Some(seg),
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}

/// How a request matched the table.
#[derive(Debug, PartialEq, Eq)]
pub enum Matched<'p> {
    Route(Op, Option<&'p str>),
    /// The path exists with other methods (for `Allow`).
    WrongMethod(Vec<&'static str>),
    NotFound,
}

/// Matches `method path` (no trailing slash). A literal segment beats `{id}`
/// (`POST /admin/keys/import` is the import, not key `import`).
pub fn find<'p>(method: &str, path: &'p str) -> Matched<'p> {
    let mut allowed = Vec::new();
    let mut best: Option<(Op, Option<&'p str>)> = None;
    for (m, template, op) in ROUTES {
        if let Some(id) = matches(template, path) {
            if *m == method {
                if best.is_none() || id.is_none() {
                    best = Some((*op, id));
                }
            } else if !allowed.contains(m) {
                allowed.push(*m);
            }
        }
    }
    match best {
        Some((op, id)) => Matched::Route(op, id),
        None if !allowed.is_empty() => Matched::WrongMethod(allowed),
        None => Matched::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        assert_eq!(find("GET", "/admin/keys"), Matched::Route(Op::ListKeys, None));
        assert_eq!(find("POST", "/admin/keys/import"), Matched::Route(Op::Import, None));
        assert_eq!(find("DELETE", "/admin/keys/import"), Matched::Route(Op::RemoveKey, Some("import")));
        assert_eq!(find("POST", "/admin/keys/abc/disable"), Matched::Route(Op::DisableKey, Some("abc")));
        assert_eq!(find("PUT", "/admin/tokens"), Matched::WrongMethod(vec!["GET", "POST"]));
        assert_eq!(find("GET", "/admin/keys//disable"), Matched::NotFound);
        assert_eq!(find("GET", "/admin/nope"), Matched::NotFound);
    }

    #[test]
    fn templates_are_unique() {
        for (i, a) in ROUTES.iter().enumerate() {
            assert!(ROUTES[i + 1..].iter().all(|b| (a.0, a.1) != (b.0, b.1)), "{a:?} twice");
        }
    }
}
