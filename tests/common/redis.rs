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
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the redis-server binary (Debian package `redis-server`; .ci/run installs it)")
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let child = spawn(port, dir.path());
        let r = Redis { child, port, dir };
        r.wait_ready();
        r
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
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let (r, port) = (self, self.port);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && r.cli(&["PING"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not start on port {port}");
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
