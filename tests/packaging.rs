//! What an operator installs: the systemd unit verifies (`systemd-analyze verify`, which only
//! warns about unknown keys and bad values, so any word about the unit fails the test), and the
//! binary's `--version` matches the crate and has a CHANGELOG entry.

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(Path::new(ROOT).join("packaging/ollama-pool.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/ollama-pool serve -c /etc/ollama-pool/ollama-pool.yaml"));
    for hardening in ["NoNewPrivileges=yes", "ProtectSystem=strict", "User=ollama-pool", "StateDirectory=ollama-pool"] {
        assert!(unit.lines().any(|l| l == hardening), "{hardening} is set");
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ollama-pool.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/ollama-pool", env!("CARGO_BIN_EXE_ollama-pool"))).unwrap();
    let out = match Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output() {
        Ok(out) => out,
        Err(e) => panic!("systemd-analyze: {e} — install Debian's systemd (./dev.sh test does)"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let about_unit: Vec<&str> = stderr.lines().filter(|l| l.contains("ollama-pool")).collect();
    assert!(about_unit.is_empty(), "systemd-analyze has remarks on the unit:\n{}", about_unit.join("\n"));
}

#[test]
fn the_sysusers_file_declares_the_units_user() {
    let sysusers = std::fs::read_to_string(Path::new(ROOT).join("packaging/ollama-pool.sysusers")).unwrap();
    let entry = sysusers.lines().find(|l| !l.starts_with('#') && !l.trim().is_empty()).unwrap();
    let fields: Vec<&str> = entry.split_whitespace().collect();
    assert_eq!(&fields[..3], ["u", "ollama-pool", "-"], "{entry}");
    assert_eq!(fields.last(), Some(&"/var/lib/ollama-pool"), "home = the unit's StateDirectory");
}

#[test]
fn version_matches_the_crate_and_the_changelog() {
    let out = Command::new(env!("CARGO_BIN_EXE_ollama-pool")).arg("--version").output().unwrap();
    assert!(out.status.success());
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("ollama-pool {version}"));
    let changelog = std::fs::read_to_string(Path::new(ROOT).join("CHANGELOG.md")).unwrap();
    assert!(
        changelog.lines().any(|l| l.starts_with(&format!("## [{version}]"))),
        "CHANGELOG.md has a [{version}] section"
    );
}
