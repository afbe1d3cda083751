//! `GET /v1/models` and `GET /api/tags` with several providers (SPEC §3.7): answered by the
//! proxy from the union of every provider's known models plus the aliases, in the shape the
//! route's protocol expects. With one provider these go upstream like any other request.

use super::ctx::Ctx;
use super::ProxyState;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

pub(crate) fn is_listing(req: &RequestHeader) -> bool {
    req.method == http::Method::GET && matches!(req.uri.path(), "/v1/models" | "/api/tags")
}

/// (model, provider) for every model any provider knows, then every alias (provider "alias").
pub fn union(rt: &crate::runtime::Runtime) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for p in &rt.providers {
        for m in p.known_models() {
            if !out.iter().any(|(have, _)| *have == m) {
                out.push((m, p.name.clone()));
            }
        }
    }
    let mut aliases: Vec<&String> = rt.routing.aliases().collect();
    aliases.sort();
    out.extend(aliases.into_iter().map(|a| (a.clone(), "alias".to_string())));
    out
}

pub(crate) async fn answer(state: &ProxyState, session: &mut Session, ctx: &Ctx) -> pingora::Result<()> {
    let models = union(&ctx.runtime);
    let body = if session.req_header().uri.path() == "/api/tags" {
        let list: Vec<_> = models.iter().map(|(m, _)| serde_json::json!({"name": m, "model": m})).collect();
        serde_json::json!({ "models": list })
    } else {
        let list: Vec<_> =
            models.iter().map(|(m, p)| serde_json::json!({"id": m, "object": "model", "owned_by": p})).collect();
        serde_json::json!({ "object": "list", "data": list })
    };
    let body = Bytes::from(body.to_string());
    let mut h = ResponseHeader::build(200, Some(3))?;
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    state.finish_header(session, &mut h, ctx);
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}
