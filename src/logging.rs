//! Log set-up. `RUST_LOG` chooses levels (default `info`; `warn` for the demo); pingora's own modules are capped at
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
    // A plain level quieter than info ("warn") quiets pingora too; anything louder is capped.
    let cap = spec.and_then(|s| s.parse::<LevelFilter>().ok()).map_or(LevelFilter::Info, |l| l.min(LevelFilter::Info));
    for m in CAPPED {
        b.filter_module(m, cap);
    }
    b.format_timestamp_millis();
    b
}

/// Installs the process logger from `RUST_LOG`, or at `default` when it is unset.
pub fn init(default: &str) {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| default.to_string());
    let _ = builder(Some(&spec)).try_init();
}
