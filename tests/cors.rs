//! CORS (SPEC §2.3): off by default; with `cors.allow_origins` a preflight is answered by the
//! proxy without client auth or upstream traffic, every answer to an allowed origin (upstream
//! ones on both body paths, and the proxy's own errors) carries Access-Control-Allow-Origin,
//! every answer `Vary: Origin`, and other origins get no permission.

mod common;

use common::{client, Mock, Proxy, Setup};
use reqwest::Method;

const APP: &str = "https://app.example";

async fn cors_proxy(mock: &Mock, origins: &str) -> Proxy {
    Proxy::start_with(
        mock,
        Setup { extra: format!("cors: {{allow_origins: {origins}, max_age: 5m}}\n"), ..Default::default() },
    )
    .await
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

fn preflight(proxy: &Proxy, origin: &str) -> reqwest::RequestBuilder {
    client()
        .request(Method::OPTIONS, proxy.url("/v1/chat/completions"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type")
}

#[tokio::test]
async fn preflight_is_answered_locally_without_a_token() {
    let mock = Mock::start().await;
    let proxy = cors_proxy(&mock, &format!("[\"{APP}\"]")).await;
    let r = preflight(&proxy, APP).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&r, "access-control-allow-methods"), Some("GET, POST, OPTIONS"));
    assert_eq!(header(&r, "access-control-allow-headers"), Some("authorization, content-type"));
    assert_eq!(header(&r, "access-control-max-age"), Some("300"));
    assert_eq!(header(&r, "vary"), Some("Origin"));

    let denied = preflight(&proxy, "https://evil.example").send().await.unwrap();
    assert_eq!(denied.status(), 204);
    assert_eq!(header(&denied, "access-control-allow-origin"), None, "no permission for other origins");
    assert!(mock.requests().is_empty(), "preflights never reach the upstream");
}

#[tokio::test]
async fn answers_to_an_allowed_origin_carry_the_cors_headers() {
    let mock = Mock::start().await;
    let proxy = cors_proxy(&mock, &format!("[\"{APP}\"]")).await;
    let small = proxy.post("/v1/chat/completions", r#"{"model":"m1","messages":[]}"#).header("origin", APP);
    let r = small.send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    assert!(header(&r, "access-control-expose-headers").is_some_and(|h| h.contains("retry-after")));
    assert_eq!(header(&r, "vary"), Some("Origin"));

    // Over 64 KiB (there used to be a second forwarding path for these).
    let big = format!(r#"{{"model":"m1","messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(200 * 1024));
    let r = proxy.post("/v1/chat/completions", big).header("origin", APP).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));

    // The proxy's own errors, so a page can read why.
    let r = client().post(proxy.url("/v1/chat/completions")).header("origin", APP).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));

    let other = proxy.post("/v1/chat/completions", r#"{"model":"m1"}"#).header("origin", "https://evil.example");
    let r = other.send().await.unwrap();
    assert_eq!(r.status(), 200, "CORS is the browser's check; the request itself is served");
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    assert_eq!(header(&r, "vary"), Some("Origin"));
}

#[tokio::test]
async fn star_allows_every_origin_and_no_config_means_no_cors() {
    let mock = Mock::start().await;
    let any = cors_proxy(&mock, "[\"*\"]").await;
    let r = any
        .post("/v1/chat/completions", r#"{"model":"m1"}"#)
        .header("origin", "https://x.example")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));

    let off = Proxy::start(&mock).await;
    let r = off.post("/v1/chat/completions", r#"{"model":"m1"}"#).header("origin", APP).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!((header(&r, "access-control-allow-origin"), header(&r, "vary")), (None, None));
    let pre = preflight(&off, APP).send().await.unwrap();
    assert_eq!(pre.status(), 401, "without CORS an OPTIONS is an ordinary request");
}

#[test]
fn bad_origins_are_config_errors_with_their_path() {
    let text = "upstream: {url: 'https://ollama.com'}\ncors: {allow_origins: ['https://ok.example', 'https://a.example/', 'app.example', '*']}\n";
    let errors = ollama_pool::config::parse(text, &|_| None).unwrap_err();
    let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        shown.iter().any(|e| e.starts_with("cors.allow_origins[1]: \"https://a.example/\" is not an origin")),
        "{shown:?}"
    );
    assert!(
        shown.iter().any(|e| e.starts_with("cors.allow_origins[2]: \"app.example\" is not an origin")),
        "{shown:?}"
    );
    assert!(shown.iter().any(|e| e.starts_with("cors.allow_origins: \"*\" allows every origin")), "{shown:?}");
    assert_eq!(shown.len(), 3, "{shown:?}");
}
