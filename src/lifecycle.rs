//! The process's life: stopping without cutting anyone off (SIGTERM), and the zero-downtime
//! upgrade (`serve --upgrade` finds the running instance through the pid file and sends it
//! SIGQUIT; that one hands its listeners over and drains).
//!
//! Pingora stops accepting at its shutdown broadcast, then sleeps a *fixed* grace period and
//! drops the service runtimes, which cancels whatever is still in flight — an SSE stream longer
//! than that period is cut. So pingora gets `server.shutdown_timeout` as that period (the
//! longest a request or stream may still run), and [`exit_when_drained`] ends the process as
//! soon as the last in-flight request has finished: a quiet server stops at once, a busy one
//! lets its streams end.
//!
//! While draining, every response carries `Connection: close` (clients move to the new process
//! or stop reusing a connection that is about to go). After SIGTERM `/readyz` also answers 503
//! and the listeners keep accepting for `server.grace_period` first, so a load balancer that
//! reads `/readyz` stops sending before the port closes. During an upgrade `/readyz` stays
//! ready: the same address goes on being served, by the new process.
//!
//! Not here: the hand-over of the listening sockets itself (pingora's bootstrap, started by
//! `app`).

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast;

/// In-flight requests and whether the process is on its way out. One per server.
#[derive(Debug, Default)]
pub struct Drain {
    // Counted per request (one atomic add and sub); read only while shutting down.
    in_flight: AtomicUsize,
    draining: AtomicBool,
    stopping: AtomicBool,
}

/// Held by a request from its first byte of header to the end of its response.
#[derive(Debug)]
pub struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

impl Drain {
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Responses from now on close their connection. `stopping`: nothing takes over, so
    /// `/readyz` is 503 as well.
    pub fn begin(&self, stopping: bool) {
        self.draining.store(true, Ordering::Relaxed);
        if stopping {
            self.stopping.store(true, Ordering::Relaxed);
        }
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }
}

/// The signals `serve` answers (pingora's meanings, plus draining):
/// SIGQUIT hands the listeners to a new process, SIGTERM stops gracefully, SIGINT stops now.
pub struct Signals {
    pub drain: Arc<Drain>,
    /// After SIGTERM, how long the listeners keep accepting (with `/readyz` 503).
    pub grace_period: Duration,
    /// Runs once the last request has finished, just before the process exits.
    pub on_drained: Arc<dyn Fn() + Send + Sync>,
    /// Pingora's execution phases: the exit may only happen once the listeners have stopped.
    pub phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        // Registered here, after any daemon fork, so the handlers belong to the serving process.
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) =
            (signal(SignalKind::quit()), signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            log::error!("shutdown: cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        let kind = tokio::select! {
            _ = quit.recv() => {
                log::info!("SIGQUIT: handing the listeners to the new process, then draining");
                ShutdownSignal::GracefulUpgrade
            }
            _ = term.recv() => {
                log::info!("SIGTERM: draining (accepting for {:?} more, /readyz 503)", self.grace_period);
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => {
                log::info!("SIGINT: stopping now");
                return ShutdownSignal::FastShutdown;
            }
        };
        self.drain.begin(matches!(kind, ShutdownSignal::GracefulTerminate));
        if let Some(phases) = self.phases.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let (drain, on_drained) = (self.drain.clone(), self.on_drained.clone());
            // A thread, not a task: the runtimes are what pingora is about to drop.
            std::thread::spawn(move || exit_when_drained(phases, &drain, &*on_drained));
        }
        if matches!(kind, ShutdownSignal::GracefulTerminate) {
            tokio::time::sleep(self.grace_period).await;
        }
        kind
    }
}

/// Waits until pingora has stopped accepting, then until no request is in flight, then runs
/// `on_drained` and exits. If requests outlast `server.shutdown_timeout`, pingora's own
/// deadline ends them and `serve` returns normally instead.
fn exit_when_drained(mut phases: broadcast::Receiver<ExecutionPhase>, drain: &Drain, on_drained: &dyn Fn()) {
    loop {
        match phases.blocking_recv() {
            Ok(ExecutionPhase::ShutdownGracePeriod) => break,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
    // Two quiet looks in a row: a request whose header was just read has had time to count.
    let mut quiet = 0;
    while quiet < 2 {
        std::thread::sleep(Duration::from_millis(25));
        quiet = if drain.in_flight() == 0 { quiet + 1 } else { 0 };
    }
    log::info!("shutdown: every request has finished; exiting");
    on_drained();
    std::process::exit(0);
}

/// Why `serve --upgrade` found nothing to take over from.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("no running instance to take over from ({}: {source})", path.display())]
    NoPidFile { path: PathBuf, source: std::io::Error },
    #[error("{} does not hold a process id", path.display())]
    NotAPid { path: PathBuf },
    #[error("no running instance to take over from (pid {pid} from {} is not running)", path.display())]
    NotRunning { pid: i32, path: PathBuf },
    #[error("pid {pid} from {} is {comm:?}, not ollama-pool; not signalling it", path.display())]
    NotOllamaPool { pid: i32, path: PathBuf, comm: String },
    #[error("{} names this very process", path.display())]
    Itself { path: PathBuf },
    #[error("cannot signal pid {pid}: {source}")]
    Signal { pid: i32, source: std::io::Error },
}

/// Finds the running ollama-pool named by `pid_file` and sends it SIGQUIT: it hands its
/// listening sockets to this process (pingora's upgrade socket) and drains. Returns its pid.
pub fn take_over_from(pid_file: &Path) -> Result<i32, UpgradeError> {
    let path = pid_file.to_path_buf();
    let text = match std::fs::read_to_string(pid_file) {
        Ok(t) => t,
        Err(source) => return Err(UpgradeError::NoPidFile { path, source }),
    };
    let pid = parse_pid(&text).ok_or_else(|| UpgradeError::NotAPid { path: path.clone() })?;
    // A stale pid file may name a dead process or, worse, an unrelated one that reused the pid.
    let comm = match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(c) => c.trim().to_string(),
        Err(_) => return Err(UpgradeError::NotRunning { pid, path }),
    };
    if !comm.starts_with("ollama-pool") {
        return Err(UpgradeError::NotOllamaPool { pid, path, comm });
    }
    if pid as u32 == std::process::id() {
        return Err(UpgradeError::Itself { path });
    }
    // SAFETY: kill(2) on a pid just checked to be a running ollama-pool.
    if unsafe { libc::kill(pid, libc::SIGQUIT) } != 0 {
        return Err(UpgradeError::Signal { pid, source: std::io::Error::last_os_error() });
    }
    Ok(pid)
}

/// Writes this process's pid (pingora does it itself after a `--daemon` fork). False when it
/// cannot, which is logged: the server still runs, only `--upgrade` cannot find it.
pub fn write_pid_file(path: &Path) -> bool {
    match std::fs::write(path, format!("{}\n", std::process::id())) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("server.pid_file {}: {e} (serve --upgrade cannot find this process)", path.display());
            false
        }
    }
}

/// Removes the pid file unless a newer process (the one that took over) has written its own.
pub fn remove_pid_file(path: &Path) {
    let ours =
        std::fs::read_to_string(path).ok().and_then(|t| parse_pid(&t)).is_some_and(|p| p as u32 == std::process::id());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

fn parse_pid(text: &str) -> Option<i32> {
    text.trim().parse().ok().filter(|&p: &i32| p > 0)
}

/// Hands the memory that a big load freed (reading 100k keys, a reload) back to the OS now.
/// mimalloc otherwise keeps it until the thread that freed it allocates again, which for the
/// startup thread is never: ~60 MB of RSS with 100k keys (benches/README.md, "Memory").
pub fn return_freed_memory() {
    // SAFETY: mi_collect only walks and frees mimalloc's own free lists; it takes no pointers.
    unsafe { libmimalloc_sys::mi_collect(true) }
    // What C libraries (SQLite, OpenSSL) freed into glibc's heap.
    // SAFETY: malloc_trim takes no pointers; it only returns free heap pages to the OS.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_live_guards() {
        let d = Arc::new(Drain::default());
        let a = d.enter();
        let b = d.enter();
        assert_eq!(d.in_flight(), 2);
        drop(a);
        assert_eq!(d.in_flight(), 1);
        drop(b);
        assert_eq!(d.in_flight(), 0);
        assert!(!d.draining());
        d.begin(false);
        assert!(d.draining() && !d.stopping(), "an upgrade keeps /readyz ready");
        d.begin(true);
        assert!(d.stopping());
    }

    #[test]
    fn pid_files_are_ours_to_remove_only_while_they_name_us() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pid");
        assert!(write_pid_file(&path));
        assert_eq!(parse_pid(&std::fs::read_to_string(&path).unwrap()), Some(std::process::id() as i32));
        assert!(matches!(take_over_from(&path), Err(UpgradeError::NotOllamaPool { .. } | UpgradeError::Itself { .. })));
        std::fs::write(&path, "1\n").unwrap(); // the process that took over
        remove_pid_file(&path);
        assert!(path.exists(), "a newer process's pid file stays");
        assert!(write_pid_file(&path));
        remove_pid_file(&path);
        assert!(!path.exists());
        assert!(matches!(take_over_from(&path), Err(UpgradeError::NoPidFile { .. })));
        std::fs::write(&path, "not a pid").unwrap();
        assert!(matches!(take_over_from(&path), Err(UpgradeError::NotAPid { .. })));
        assert_eq!(parse_pid("0"), None);
    }
}
