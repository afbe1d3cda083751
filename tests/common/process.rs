//! The real binary as a child process: started on a config, waited for on its admin
//! `/healthz`, stopped with SIGKILL or SIGTERM, killed on drop so a failed test leaves nothing.

use super::{client, ADMIN_TOKEN};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Server {
    pub child: Child,
    pub port: u16,
    pub admin: u16,
    pub log: PathBuf,
}

/// Writes `ollama-pool.yaml` in `dir` for a server on `port` / `admin` (threads 1, the static
/// client token `TOKEN`, the admin token, quick shutdown) in front of `upstream`, with `store`
/// as its store section (flow YAML, e.g. `{path: state/pool.db, flush_interval: 1h}`).
pub fn write_config(dir: &Path, upstream: &str, port: u16, admin: u16, store: &str) -> PathBuf {
    let yaml = format!(
        "listen: [\"127.0.0.1:{port}\"]\nthreads: 1\n\
         upstream: {{url: \"{upstream}\", health_check_interval: 0s}}\n\
         admin: {{listen: \"127.0.0.1:{admin}\", token: \"{ADMIN_TOKEN}\"}}\n\
         clients: {{tokens: [{{name: app, token: \"{}\"}}]}}\n\
         store: {store}\n\
         server: {{grace_period: 0s, shutdown_timeout: 2s, pid_file: {}, upgrade_sock: {}}}\n",
        super::TOKEN,
        dir.join("pid").display(),
        dir.join("upgrade.sock").display()
    );
    let path = dir.join("ollama-pool.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// The status of one chat (`{"model":"m1"}`) through the proxy on `port` with a client token.
pub async fn chat_status(port: u16, token: &str) -> u16 {
    client()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .bearer_auth(token)
        .body(r#"{"model":"m1"}"#)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Runs `serve -c cfg` and waits until its proxy and admin listeners answer `/healthz`; its
/// output goes to `server-{run}.log` beside the config.
pub async fn start(cfg: &Path, port: u16, admin: u16, run: usize) -> Server {
    start_env(cfg, port, admin, run, &[]).await
}

/// `start`, with more environment variables (what a config's `${VAR}` reads).
pub async fn start_env(cfg: &Path, port: u16, admin: u16, run: usize, env: &[(&str, String)]) -> Server {
    let log = cfg.with_file_name(format!("server-{run}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ollama-pool"))
        .args(["serve", "-c"])
        .arg(cfg)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "trace")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap();
    // Both listeners: each service binds its own, so the admin one can be up first.
    let up = |p: u16| async move {
        client().get(format!("http://127.0.0.1:{p}/healthz")).send().await.is_ok_and(|r| r.status() == 200)
    };
    for _ in 0..200 {
        if up(admin).await && up(port).await {
            return Server { child, port, admin, log };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("server did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
}

impl Server {
    pub fn admin(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        client().request(m, format!("http://127.0.0.1:{}{path}", self.admin)).bearer_auth(ADMIN_TOKEN)
    }

    pub async fn ok(&self, m: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self.admin(m, path).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    pub fn kill9(mut self) -> PathBuf {
        self.child.kill().unwrap(); // SIGKILL: no shutdown hook runs
        self.child.wait().unwrap();
        self.log.clone()
    }

    pub fn terminate(mut self) -> PathBuf {
        super::signal(&self.child, libc::SIGTERM);
        for _ in 0..200 {
            if self.child.try_wait().unwrap().is_some() {
                return self.log.clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server ignored SIGTERM");
    }
}

impl Drop for Server {
    /// A failed assertion must not leave a server running.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
