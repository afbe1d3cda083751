//! `ollama-pool demo` (SPEC §2.1): the scripted burst shows a failover, a park and a return;
//! the demo then serves the curl line it prints; it leaves nothing in the working directory,
//! never prints a simulated key, and a port in use is one clear line with exit 1.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn demo(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ollama-pool"));
    c.arg("demo").args(args).current_dir(dir).env_remove("RUST_LOG").stdin(Stdio::null());
    c
}

#[test]
fn scripted_burst_shows_failover_park_and_return() {
    let dir = tempfile::tempdir().unwrap();
    // Any free ports: a port picked here could be taken by a parallel test before the demo binds it.
    let out = demo(dir.path(), &["--port", "0", "--admin-port", "0", "--exit-after-script"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let burst: Vec<&str> = stdout.lines().filter(|l| l.trim_start().starts_with('#')).collect();
    assert_eq!(burst.len(), 10, "{stdout}");
    assert!(burst.iter().all(|l| l.contains("→ 200, served by")), "every request of the burst is answered: {stdout}");
    assert!(stdout.contains("after 1 failover(s)") || stdout.contains("after 2 failover(s)"), "{stdout}");
    assert!(stdout.contains("revoked answered 401 — the key is rejected"), "{stdout}");
    assert!(stdout.contains("limited answered 429 — rate-limited (Retry-After:"), "{stdout}");
    assert!(stdout.contains("revoked: active → invalid until"), "a park with its time: {stdout}");
    assert!(stdout.contains("limited: active → cooling until"), "{stdout}");
    assert!(stdout.contains("flaky: active → cooling until") && stdout.contains("auto-disabled"), "{stdout}");
    assert!(
        stdout.contains("flaky: cooling → active: a health probe found it working again"),
        "a return after a probe: {stdout}"
    );
    assert!(stdout.contains("limited: cooling → active"), "{stdout}");
    assert!(stdout.contains("4 of 5 keys in rotation"), "{stdout}");
    // The simulated keys are secrets like any other: only their ids are shown.
    assert!(!stdout.contains("sim-") && !stderr.contains("sim-"), "{stdout}\n{stderr}");
    assert!(!stderr.contains("INFO"), "the narration is not drowned in log lines: {stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing left in the working directory");
}

#[test]
fn keeps_serving_the_curl_line_it_prints_until_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    // Any free ports, as printed: a port picked here could be taken by a parallel test before
    // the demo binds it.
    let errors = tempfile::NamedTempFile::new().unwrap();
    let mut child = common::ChildGuard(
        demo(dir.path(), &["--port", "0", "--admin-port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(errors.reopen().unwrap()))
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut token, mut curl, mut port, mut admin) = (None, None, None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        let t = line.trim();
        if let Some(t) = t.strip_prefix("client token ") {
            token = Some(t.to_string());
        }
        if let Some(url) = t.strip_prefix("proxy").map(str::trim).and_then(|u| u.strip_prefix("http://127.0.0.1:")) {
            port = url.parse::<u16>().ok();
        }
        if t.starts_with("curl http://") {
            curl = Some(line.clone());
        }
        if let Some(url) = t.strip_prefix("metrics").map(str::trim).and_then(|u| u.strip_prefix("http://127.0.0.1:")) {
            admin = url.trim_end_matches("/metrics").parse::<u16>().ok();
            break;
        }
    }
    let why = || std::fs::read_to_string(errors.path()).unwrap_or_default();
    let token = token.unwrap_or_else(|| panic!("the demo prints a client token; stderr: {}", why()));
    let (port, admin) = (port.expect("the demo prints its proxy URL"), admin.expect("and its metrics URL"));
    let curl = curl.expect("the demo prints a curl line");
    assert!(curl.contains(&format!("127.0.0.1:{port}/v1/chat/completions")) && curl.contains(&token), "{curl}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (chat, metrics, keys) = rt.block_on(async {
        let c = common::client();
        let chat = c
            .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(r#"{"model":"demo-model","messages":[{"role":"user","content":"Hi"}]}"#)
            .send()
            .await
            .unwrap();
        let chat = (chat.status().as_u16(), chat.text().await.unwrap());
        let metrics = c.get(format!("http://127.0.0.1:{admin}/metrics")).send().await.unwrap().text().await.unwrap();
        let keys = c.get(format!("http://127.0.0.1:{admin}/admin/keys")).send().await.unwrap().status().as_u16();
        (chat, metrics, keys)
    });
    assert_eq!(chat.0, 200, "{}", chat.1);
    assert!(chat.1.contains("Hello from the simulated upstream"), "{}", chat.1);
    assert!(metrics.contains("ollama_pool_failovers_total"), "metrics are served");
    assert_eq!(keys, 401, "the admin API wants its token");
    common::signal(&child, libc::SIGINT);
    let mut exited = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            exited = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = exited.expect("the demo ignored Ctrl-C");
    assert!(status.success(), "{status}");
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("Ctrl-C: stopping the demo."))));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing left in the working directory");
}

#[test]
fn a_port_in_use_is_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = demo(dir.path(), &["--port", &port, "--exit-after-script"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!("ollama-pool: demo: 127.0.0.1:{port} is in use (choose another port with --port)")
    );
    assert!(out.stdout.is_empty());
}
