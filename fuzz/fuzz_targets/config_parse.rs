//! Config loading (`${ENV}` expansion, YAML, validation): any text gives a config or a list of
//! problems with their YAML paths, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let env = |name: &str| name.starts_with("FUZZ").then(|| format!("value-of-{name}"));
    match ollama_pool::config::parse(text, &env) {
        Ok(cfg) => {
            let _ = cfg.warnings();
        }
        Err(problems) => assert!(!problems.is_empty(), "an error with no problem named"),
    }
});
