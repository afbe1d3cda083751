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
    for f in ["conf/minimal.yaml", "conf/ollama-pool.yaml", "conf/fleet.example.yaml"] {
        let out = bin()
            .args(["check", "-c", f])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("OLLAMA_POOL_ADMIN_TOKEN", "an-admin-token-for-the-check")
            // What conf/fleet.example.yaml reads from each instance's environment.
            .envs([("POOL_INSTANCE", "pool-1"), ("APP_TOKEN", "an-app-token-for-the-check")])
            .env("OLLAMA_POOL_STORE_KEY", "a-store-key-for-the-check")
            .output()
            .unwrap();
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
fn check_reports_files_the_config_points_at_that_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir, "here.txt", "key-0000000001\n");
    let cfg = write(
        &dir,
        "c.yaml",
        "upstream: {url: 'https://x', ca_file: nope.pem}\nkeys: {files: [here.txt, missing.txt]}\n",
    );
    let out = bin().args(["check", "-c"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("keys.files[1]: cannot read") && err.contains("missing.txt"), "{err}");
    assert!(err.contains("upstream.ca_file: cannot read"), "{err}");
    assert!(!err.contains("keys.files[0]"), "{err}");
    assert!(err.contains("2 problem(s)"), "{err}");
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

mod common;

fn store_config(dir: &tempfile::TempDir, upstream: &str) -> std::path::PathBuf {
    write(
        dir,
        "c.yaml",
        &format!("upstream: {{url: \"{upstream}\", health_check_interval: 0s}}\nstore: {{path: s/pool.db}}\n"),
    )
}

fn run(args: &[&str], cfg: &std::path::Path) -> (i32, String, String) {
    let mut cmd = bin();
    cmd.args(&args[..2]).arg("-c").arg(cfg).args(&args[2..]);
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn keys_import_list_disable_enable_remove_offline() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_config(&dir, "http://127.0.0.1:9");
    let keys = write(
        &dir,
        "ollama.txt",
        "# keys\nk-0000000000000001\nlab----k-0000000000000002\nk-0000000000000001\nnot a key\n",
    );
    let (code, out, _) = run(&["keys", "import", "--dry-run", keys.to_str().unwrap()], &cfg);
    assert_eq!(code, 0);
    assert!(out.contains("would add              2"), "{out}");
    let (code, out, _) = run(&["keys", "import", keys.to_str().unwrap()], &cfg);
    assert_eq!(code, 0);
    for want in [
        "added                  2",
        "duplicates             1",
        "invalid lines          1",
        "line      5: key contains whitespace",
    ] {
        assert!(out.contains(want), "missing {want:?} in {out}");
    }
    let (_, out, _) = run(&["keys", "import", keys.to_str().unwrap()], &cfg);
    assert!(out.contains("added                  0") && out.contains("duplicates             3"), "idempotent: {out}");
    let (code, out, _) = run(&["keys", "list"], &cfg);
    assert_eq!(code, 0);
    assert!(out.contains("k-00…0002") && out.contains("lab") && !out.contains("k-0000000000000002"), "{out}");
    let id = ollama_pool::secret::Secret::new("k-0000000000000002").id();
    assert_eq!(run(&["keys", "disable", &id, "--for", "2h"], &cfg).0, 0);
    assert!(run(&["keys", "list"], &cfg).1.lines().any(|l| l.starts_with(&id) && l.contains("disabled")));
    assert_eq!(run(&["keys", "enable", &id], &cfg).0, 0);
    assert_eq!(run(&["keys", "disable", &id, "--for", "whenever"], &cfg).0, 2);
    assert_eq!(run(&["keys", "remove", &id], &cfg).0, 0);
    let (code, _, err) = run(&["keys", "remove", &id], &cfg);
    assert_eq!(code, 1);
    assert!(err.contains("no key with id"));
}

#[test]
fn tokens_create_shows_the_token_once_and_stores_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_config(&dir, "http://127.0.0.1:9");
    let (code, out, err) =
        run(&["tokens", "create", "--name", "ci", "--rpm", "60", "--models", "a,b", "--expires-in", "30d"], &cfg);
    assert_eq!(code, 0, "{err}");
    let token = out.trim().to_string();
    assert!(token.starts_with("sk-") && token.len() == 51, "{out}");
    assert!(err.contains("shown only this once"));
    let (_, list, _) = run(&["tokens", "list"], &cfg);
    assert!(list.contains("ci") && list.contains("a,b") && !list.contains(&token));
    let mut db = std::fs::read(dir.path().join("s/pool.db")).unwrap();
    db.extend(std::fs::read(dir.path().join("s/pool.db-wal")).unwrap_or_default());
    assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()));
    let id = list.lines().nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    assert_eq!(run(&["tokens", "revoke", &id], &cfg).0, 0);
    assert_eq!(run(&["tokens", "revoke", &id], &cfg).0, 1);
    assert_eq!(run(&["tokens", "create", "--name", " "], &cfg).0, 2);
}

#[test]
fn validated_cli_import_probes_each_key() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(common::Mock::start());
    mock.set("bad-key-0000000000002", common::Behavior::status(403, "{}"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_config(&dir, &mock.url());
    let keys = write(&dir, "k.txt", "good-key-000000000001\nbad-key-0000000000002\n");
    let (code, out, _) = run(&["keys", "import", "--validate", keys.to_str().unwrap()], &cfg);
    assert_eq!(code, 0);
    assert!(out.contains("validated              1 valid, 1 invalid"), "{out}");
    assert!(out.contains("qwen") && out.contains("line      2: key rejected by the upstream"), "{out}");
    assert!(mock.requests().iter().all(|r| r.target == "/api/tags"));
    drop(rt);
}

#[test]
fn check_warns_about_risky_but_valid_settings() {
    let dir = tempfile::tempdir().unwrap();
    let risky = write(
        &dir,
        "risky.yaml",
        "upstream: {url: 'https://ollama.com', verify_tls: false}\n\
         admin: {listen: '0.0.0.0:8081', token: 'an-admin-token-0123456789'}\n\
         clients: {tokens: [{name: app, token: 'short-secret'}, {name: ok, token: 'a-long-enough-client-token-01'}]}\n",
    );
    let out = bin().args(["check", "-c"]).arg(&risky).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "warnings do not fail the check: {err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains(": warning: ")).collect();
    assert_eq!(warnings.len(), 4, "one line each:\n{err}");
    for want in [
        "warning: admin.listen: 0.0.0.0:8081 is not a loopback address and the admin API has no TLS",
        "warning: store.encryption_key: not set: upstream keys are stored in clear",
        "warning: upstream.verify_tls: false",
        "warning: clients.tokens[0].token: 12 characters (client \"app\"): use at least 20",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(!err.contains("short-secret") && !err.contains("an-admin-token"), "no secret in a warning");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok, 4 warning(s)"));

    let careful = write(
        &dir,
        "careful.yaml",
        "upstream: {url: 'https://ollama.com'}\n\
         admin: {listen: '127.0.0.1:8081', token: 'an-admin-token-0123456789'}\n\
         store: {encryption_key: 'a-store-passphrase-0123456789'}\n\
         clients: {tokens: [{name: ok, token: 'a-long-enough-client-token-01'}]}\n",
    );
    let out = bin().args(["check", "-c"]).arg(&careful).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).trim().ends_with(": ok"));
}
