//! Stopping and upgrading the real binary under load (SPEC §2.1 `--upgrade`): SIGTERM lets
//! open streams finish with their `[DONE]`; `serve --upgrade` takes the listeners over from
//! the running process with no failed request and no cut stream; `--upgrade` with nothing to
//! take over from fails at once with one clear line.

mod common;

use common::{free_port, Behavior, ChildGuard, Mock, KEYS, TOKEN};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const STREAM_EVENTS: usize = 16;
/// A stream lasts 16 × 500 ms = 8 s: longer than the upgrade's 5 s hand-over window plus
/// the grace period, and than the SIGTERM grace period, so only a real drain lets it finish.
const STREAM_GAP: Duration = Duration::from_millis(500);

fn config(dir: &Path, mock: &Mock, port: u16, admin: u16) -> PathBuf {
    std::fs::write(dir.join("keys.txt"), KEYS.join("\n")).unwrap();
    let yaml = format!(
        "listen: [\"127.0.0.1:{port}\"]\nthreads: 2\n\
         upstream: {{url: \"{}\", health_check_interval: 0s}}\n\
         keys: {{files: [keys.txt]}}\n\
         admin: {{listen: \"127.0.0.1:{admin}\", token: \"{}\"}}\n\
         clients: {{tokens: [{{name: app, token: \"{TOKEN}\"}}]}}\n\
         store: {{path: pool.db}}\n\
         server: {{grace_period: 1s, shutdown_timeout: 20s, pid_file: {}, upgrade_sock: {}}}\n",
        mock.url(),
        common::ADMIN_TOKEN,
        dir.join("pid").display(),
        dir.join("upgrade.sock").display()
    );
    let path = dir.join("ollama-pool.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn spawn(cfg: &Path, extra: &[&str], log: &str) -> ChildGuard {
    let out = std::fs::File::create(cfg.with_file_name(log)).unwrap();
    ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_ollama-pool"))
            .args(["serve", "-c"])
            .arg(cfg)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap(),
    )
}

fn read_log(cfg: &Path, log: &str) -> String {
    std::fs::read_to_string(cfg.with_file_name(log)).unwrap_or_default()
}

async fn wait_ready(port: u16) {
    for _ in 0..400 {
        if let Ok(r) = common::client().get(format!("http://127.0.0.1:{port}/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server on :{port} never became ready");
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<(ExitStatus, Duration)> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some((status, t.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Client threads sending chats until `stop`; every answer is counted.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        // Its own client: pooled keep-alive connections, as an SDK would hold them.
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok, failed, client) = (stop.clone(), ok.clone(), failed.clone(), client.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let r = client
                            .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
                            .bearer_auth(TOKEN)
                            .body(r#"{"model":"m1","messages":[{"role":"user","content":"hi"}]}"#)
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status() == 200 => match r.text().await {
                                Ok(t) if t.contains("chatcmpl") => ok.fetch_add(1, Ordering::Relaxed),
                                Ok(t) => {
                                    failed.lock().unwrap().push(format!("body {t:.80}"));
                                    0
                                }
                                Err(e) => {
                                    failed.lock().unwrap().push(format!("body: {e}"));
                                    0
                                }
                            },
                            Ok(r) => {
                                failed.lock().unwrap().push(format!("status {}", r.status()));
                                0
                            }
                            Err(e) => {
                                failed.lock().unwrap().push(format!("{e:?}"));
                                0
                            }
                        };
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Load { stop, ok, failed, tasks }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (self.ok.load(Ordering::Relaxed), self.failed.lock().unwrap().clone())
    }
}

/// Opens one slow SSE stream per call; resolves to the whole text the client received.
fn open_stream(port: u16) -> tokio::task::JoinHandle<Result<String, String>> {
    tokio::spawn(async move {
        // A connection of its own, as a streaming client would have.
        let client = reqwest::Client::builder().timeout(Duration::from_secs(40)).build().unwrap();
        let r = client
            .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .bearer_auth(TOKEN)
            .body(r#"{"model":"slow","stream":true,"messages":[]}"#)
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        if r.status() != 200 {
            return Err(format!("status {}", r.status()));
        }
        r.text().await.map_err(|e| format!("cut: {e:?}"))
    })
}

/// Every chat answered (at least `min` of them) and every stream complete, or the logs.
async fn assert_nothing_lost(
    (ok, failed): (usize, Vec<String>),
    min: usize,
    streams: Vec<tokio::task::JoinHandle<Result<String, String>>>,
    when: &str,
    log: &str,
) {
    assert!(
        failed.is_empty(),
        "{} of {} chats failed {when}: {:?}\n{log}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok >= min, "the load ran {when} ({ok} chats)");
    for s in streams {
        let s = s.await.unwrap();
        assert!(complete(&s), "a stream was cut {when}: {s:?}\n{log}");
    }
}

fn complete(stream: &Result<String, String>) -> bool {
    stream.as_ref().is_ok_and(|t| {
        (0..STREAM_EVENTS).all(|n| t.contains(&format!("data: {{\"n\":{n}}}"))) && t.ends_with("data: [DONE]\n\n")
    })
}

/// A mock that answers model "slow" with the slow stream and every chat at once.
async fn slow_mock() -> Mock {
    let mock = Mock::start().await;
    mock.set_for_body("\"model\":\"slow\"", Behavior::Slow { events: STREAM_EVENTS, gap: STREAM_GAP });
    mock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_open_streams_finish_then_exits() {
    let mock = slow_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = config(dir.path(), &mock, port, admin);
    let mut child = spawn(&cfg, &[], "server.log");
    wait_ready(port).await;

    let load = Load::start(port, 4);
    let streams: Vec<_> = (0..4).map(|_| open_stream(port)).collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    common::signal(&child, libc::SIGTERM);
    let sent = Instant::now();

    // Within the grace period the proxy still answers, but says it is going away (as soon as
    // the signal has been handled).
    let mut ready = None;
    while sent.elapsed() < Duration::from_millis(900) {
        let r = common::client().get(format!("http://127.0.0.1:{port}/readyz")).send().await.unwrap();
        if r.status() == 503 {
            ready = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = ready.expect("/readyz answers 503 during the grace period");
    assert_eq!(ready.headers().get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    // Clients stop sending before the listener closes (after a SIGTERM nothing takes over).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answers = load.finish().await;
    let exit = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(30))).await.unwrap();
    let log = read_log(&cfg, "server.log");
    assert_nothing_lost(answers, 20, streams, "by SIGTERM", &log).await;
    let (status, _) = exit.unwrap_or_else(|| panic!("the server did not exit after SIGTERM\n{log}"));
    assert!(status.success(), "exit status {status}\n{log}");
    let took = sent.elapsed();
    // The streams needed ~7 more seconds; the process then ended on its own, well before
    // shutdown_timeout (20 s) would have cut anything.
    assert!(took >= Duration::from_secs(6), "exited after {took:?}: before its streams could have ended");
    assert!(took < Duration::from_secs(18), "exited after {took:?}: it waited for the timeout, not for the streams");
    assert!(log.contains("every request has finished"), "{log}");
    assert!(!dir.path().join("pid").exists(), "the pid file is removed at exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_takes_over_with_no_failed_request_and_no_cut_stream() {
    let mock = slow_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = config(dir.path(), &mock, port, admin);
    let mut old = spawn(&cfg, &[], "old.log");
    wait_ready(port).await;
    let old_pid = std::fs::read_to_string(dir.path().join("pid")).unwrap();
    assert_eq!(old_pid.trim(), old.id().to_string(), "serve writes its pid file");

    let load = Load::start(port, 4);
    let streams: Vec<_> = (0..4).map(|_| open_stream(port)).collect();
    // A load balancer's readiness probe: the address stays served, so it must stay ready.
    let probing = Arc::new(AtomicBool::new(true));
    let not_ready = {
        let probing = probing.clone();
        tokio::spawn(async move {
            let mut not_ready = Vec::new();
            while probing.load(Ordering::Relaxed) {
                match common::client().get(format!("http://127.0.0.1:{port}/readyz")).send().await {
                    Ok(r) if r.status() == 200 => {}
                    other => not_ready.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            not_ready
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The new binary takes over: it signals the old process itself (SIGQUIT) and receives
    // the listening sockets.
    let mut new = spawn(&cfg, &["--upgrade"], "new.log");
    let exit = tokio::task::spawn_blocking(move || wait_exit(&mut old, Duration::from_secs(40))).await.unwrap();
    let old_log = read_log(&cfg, "old.log");
    let new_log = read_log(&cfg, "new.log");
    let (status, _) = exit.unwrap_or_else(|| panic!("the old process did not exit\n{old_log}\n---\n{new_log}"));
    // Traffic continues on the new process alone for a moment before the load stops.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answers = load.finish().await;
    probing.store(false, Ordering::Relaxed);
    let not_ready = not_ready.await.unwrap();
    assert!(status.success(), "old process exit status {status}\n{old_log}");
    assert!(not_ready.is_empty(), "/readyz during the upgrade: {not_ready:?}");
    assert_nothing_lost(answers, 50, streams, "across the upgrade", &format!("{old_log}\n---\n{new_log}")).await;
    assert!(new.try_wait().unwrap().is_none(), "the new process keeps serving\n{new_log}");
    let pid = std::fs::read_to_string(dir.path().join("pid")).unwrap();
    assert_eq!(pid.trim(), new.id().to_string(), "the pid file names the new process");
    let r = common::client()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .bearer_auth(TOKEN)
        .body(r#"{"model":"m1","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the new process answers");
    let admin_ready = common::client().get(format!("http://127.0.0.1:{admin}/readyz")).send().await.unwrap();
    assert_eq!(admin_ready.status(), 200, "the admin listener was handed over too");

    common::signal(&new, libc::SIGTERM);
    let exit = tokio::task::spawn_blocking(move || wait_exit(&mut new, Duration::from_secs(30))).await.unwrap();
    assert!(exit.is_some_and(|(s, _)| s.success()), "{}", read_log(&cfg, "new.log"));
}

#[tokio::test]
async fn upgrade_with_nothing_to_take_over_from_fails_at_once() {
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = config(dir.path(), &mock, port, admin);
    for (pid_file, expect) in [
        (None, "no running instance to take over from"),
        (Some(format!("{}\n", u32::MAX >> 2)), "is not running"),
        (Some(format!("{}\n", std::process::id())), "not ollama-pool; not signalling it"),
    ] {
        if let Some(p) = pid_file {
            std::fs::write(dir.path().join("pid"), p).unwrap();
        }
        let out = Command::new(env!("CARGO_BIN_EXE_ollama-pool"))
            .args(["serve", "--upgrade", "-c"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let line = err.lines().last().unwrap_or_default();
        assert!(line.starts_with("ollama-pool: serve --upgrade: ") && line.contains(expect), "{err}");
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "nothing was started");
    }
}
