//! A real Redis for tests: Debian's `redis-server` (`.ci/run` installs it), started on a free
//! loopback port in a temp dir with `--save '' --appendonly yes`, stopped by PID on drop. Never
//! the system service.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Redis {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

fn spawn(port: u16, dir: &std::path::Path) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the redis-server binary (Debian package `redis-server`; .ci/run installs it)")
}

/// Why a spawned server is not serving.
enum NotReady {
    /// It exited (e.g. another process took the port between our check and its bind).
    Exited(String),
    /// Still running but not answering PING after the whole wait.
    Silent(String),
}

/// Waits until the server answers PING. A loaded box can take seconds to start a process, so
/// the wait is long; a server that exits is reported at once, with its log.
fn wait_ready(child: &mut Child, port: u16, dir: &std::path::Path) -> Result<(), NotReady> {
    let log = || std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NotReady::Exited(format!("exited with {status}; its log:\n{}", log())));
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && ping(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(NotReady::Silent(format!("no PONG within 30 s; its log:\n{}", log())))
}

fn ping(port: u16) -> bool {
    let out = Command::new("redis-cli").args(["-p", &port.to_string(), "PING"]).output();
    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
}

impl Redis {
    /// Starts a server on a free port; if it exits at once (the port was taken after our check),
    /// tries the next free port, up to five times.
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut why = String::new();
        for _ in 0..5 {
            let port = super::free_port();
            let mut child = spawn(port, dir.path());
            match wait_ready(&mut child, port, dir.path()) {
                Ok(()) => return Redis { child, port, dir },
                Err(NotReady::Exited(w)) => why = w,
                Err(NotReady::Silent(w)) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("redis-server did not start on port {port}: {w}");
                }
            }
        }
        panic!("redis-server did not start on five ports; the last: {why}");
    }

    /// Stops it (SIGTERM: Redis writes its append-only file and exits), and waits.
    pub fn stop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    /// Freezes it (SIGSTOP): connections stay open and nothing answers, as with a hung server
    /// or a half-open link.
    pub fn pause(&self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) };
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
    }

    /// Starts it again on the same port and data folder (what it had comes back from the AOF).
    pub fn restart(&mut self) {
        self.child = spawn(self.port, self.dir.path());
        let port = self.port;
        if let Err(NotReady::Exited(w) | NotReady::Silent(w)) = wait_ready(&mut self.child, port, self.dir.path()) {
            panic!("redis-server did not start again on port {port}: {w}");
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `redis-cli` against this server; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every key and every value in the server, as text (for "nothing secret in clear").
    pub fn dump_all(&self) -> String {
        let mut all = String::new();
        for key in self.cli(&["--scan"]).lines() {
            all.push_str(key);
            all.push('\n');
            let kind = self.cli(&["TYPE", key]);
            let value = match kind.trim() {
                "hash" => self.cli(&["HGETALL", key]),
                "set" => self.cli(&["SMEMBERS", key]),
                "zset" => self.cli(&["ZRANGE", key, "0", "-1", "WITHSCORES"]),
                _ => self.cli(&["GET", key]),
            };
            all.push_str(&value);
        }
        all
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
