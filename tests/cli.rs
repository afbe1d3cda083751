//! The command line (SPEC §2.1): `check` exit codes and messages, `serve` refusing bad configs.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ollama-pool"))
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_accepts_the_shipped_configs() {
    for f in ["conf/minimal.yaml", "conf/ollama-pool.yaml"] {
        let out = bin().args(["check", "-c", f]).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn check_names_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        &dir,
        "bad.yaml",
        "listen: [nowhere]\n\
         upstream: {url: 'ftp://x', colour: blue, read_timeout: forever}\n\
         pool: {max_attempts: 0}\n\
         clients: {tokens: [{name: a, token: '${OLLAMA_POOL_TEST_UNSET_VAR}'}]}\n\
         bogus: true\n",
    );
    let out = bin().args(["check", "-c"]).arg(&cfg).env_remove("OLLAMA_POOL_TEST_UNSET_VAR").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "listen[0]: \"nowhere\" is not an ip:port address",
        "upstream.url: \"ftp://x\": the scheme must be http or https",
        "upstream.colour: unknown key",
        "upstream.read_timeout: invalid duration \"forever\"",
        "pool.max_attempts: must be between 1 and 10",
        "clients.tokens[0].token: environment variable OLLAMA_POOL_TEST_UNSET_VAR is not set",
        "bogus: unknown key",
        "7 problem(s)",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(!err.contains("panicked") && !err.contains("backtrace"));
}

#[test]
fn serve_refuses_a_bad_config_with_exit_2_and_a_missing_key_file_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(&dir, "bad.yaml", "upstream: {}\n");
    let out = bin().args(["serve", "-c"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstream.url: required"));

    let cfg = write(
        &dir,
        "nokeys.yaml",
        "listen: ['127.0.0.1:0']\nupstream: {url: 'http://127.0.0.1:9'}\nkeys: {files: [absent.txt]}\n",
    );
    let out = bin().args(["serve", "-c"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("keys.files[0]: cannot read") && err.contains("absent.txt"), "{err}");
}

#[test]
fn unreadable_config_and_bad_usage_exit_2() {
    let out = bin().args(["check", "-c", "/definitely/not/here.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    assert_eq!(bin().arg("frobnicate").output().unwrap().status.code(), Some(2));
}
