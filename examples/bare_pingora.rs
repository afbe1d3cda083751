//! The framework's ceiling for `benches/load.sh` (issue #14): a bare pingora `ProxyHttp` with a
//! fixed peer and one header rewrite (the upstream's `Authorization`), nothing else — same
//! pingora version and features, same allocator (mimalloc), same thread count and HTTP/1.1
//! upstream as ollama-pool. What ollama-pool does beyond this costs what the two differ by.
//!
//! `cargo run --release --example bare_pingora -- [--listen 127.0.0.1:18186] [--upstream 127.0.0.1:18180] [--threads 2]`

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::protocols::ALPN;
use pingora::server::configuration::{Opt, ServerConf};
use std::net::SocketAddr;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: SocketAddr,
    auth: http::HeaderValue,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.alpn = ALPN::H1;
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(&self, _s: &mut Session, req: &mut RequestHeader, _c: &mut ()) -> Result<()> {
        req.insert_header(http::header::AUTHORIZATION, self.auth.clone())
    }
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.into())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = arg(&args, "--listen", "127.0.0.1:18186");
    let upstream: SocketAddr = arg(&args, "--upstream", "127.0.0.1:18180").parse().expect("--upstream ip:port");
    let threads: usize = arg(&args, "--threads", "2").parse().expect("--threads");
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let auth = http::HeaderValue::from_static("Bearer bench-upstream-key-00-xxxxxxxxxxxxxxxx");
    let mut proxy = http_proxy_service(&server.configuration, Bare { upstream, auth });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    eprintln!("bare pingora on {listen} -> {upstream}");
    server.run_forever();
}
