//! Log set-up. `RUST_LOG` chooses levels (default `info`); pingora's own modules are capped at
//! `info` whatever it says, because their debug lines print whole request headers — the
//! upstream key's `Authorization` among them.

use log::LevelFilter;

const CAPPED: &[&str] = &["pingora_core", "pingora_proxy", "pingora_load_balancing", "pingora_pool"];

pub fn builder(spec: Option<&str>) -> env_logger::Builder {
    let mut b = env_logger::Builder::new();
    b.filter_level(LevelFilter::Info);
    if let Some(spec) = spec {
        b.parse_filters(spec);
    }
    for m in CAPPED {
        b.filter_module(m, LevelFilter::Info);
    }
    b.format_timestamp_millis();
    b
}

/// Installs the process logger from `RUST_LOG`.
pub fn init() {
    let spec = std::env::var("RUST_LOG").ok();
    let _ = builder(spec.as_deref()).try_init();
}
