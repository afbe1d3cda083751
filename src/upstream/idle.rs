//! Idle keep-alive connections to one upstream address, kept here rather than in pingora's
//! connection pool (issue #14 item 2).
//!
//! pingora's pool costs every request a `getpeername` (it checks that a pooled fd still points
//! at the peer), a hashed lookup under its locks, and a task per idle connection that watches
//! it and sets an idle timer, woken again when the connection is taken. Here a released
//! connection goes into the releasing thread's shard (its own lock, which no other thread
//! touches unless its shard ran dry), and a take finds the most recently used one first, so
//! the connections a lull leaves idle are the ones that age out.
//!
//! What the watch task did is done when a connection is taken (one older than
//! `upstream.idle_timeout`, or that the upstream closed or wrote to, is closed, not used) and by
//! [`IdlePool::sweep`] on the address service's tick, which closes the same between requests.

use pingora::protocols::Stream;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Shards per address: the worker threads of any likely `threads` setting get one each.
const SHARDS: usize = 8;

/// Idle connections one shard keeps; a release beyond it closes the oldest.
const PER_SHARD: usize = 128;

pub struct IdlePool {
    shards: [Shard; SHARDS],
    idle_timeout: Duration,
}

/// One thread's idle connections, oldest first, on a cache line of its own.
#[repr(align(128))]
#[derive(Default)]
struct Shard(Mutex<VecDeque<Idle>>);

struct Idle {
    stream: Stream,
    since: Instant,
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The shard of the calling thread, handed out in turn as threads first use one.
fn home() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static HOME: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    HOME.with(|h| *h)
}

impl IdlePool {
    pub fn new(idle_timeout: Duration) -> IdlePool {
        IdlePool { shards: Default::default(), idle_timeout }
    }

    /// The most recently released connection that is still fit to use; this thread's shard
    /// first, then any other shard not busy at the moment.
    pub fn take(&self) -> Option<Stream> {
        let now = Instant::now();
        let mine = home();
        for i in 0..SHARDS {
            let shard = &self.shards[(mine + i) % SHARDS];
            let mut idle = if i == 0 {
                shard.lock()
            } else {
                match shard.0.try_lock() {
                    Ok(q) => q,
                    Err(_) => continue,
                }
            };
            while let Some(c) = idle.pop_back() {
                if now.saturating_duration_since(c.since) >= self.idle_timeout {
                    idle.clear(); // the rest were released earlier still
                    break;
                }
                let mut stream = c.stream;
                if quiet(&mut stream) {
                    return Some(stream);
                }
            }
        }
        None
    }

    /// Keeps a connection whose exchange ended cleanly for the next request.
    pub fn put(&self, stream: Stream) {
        let mut idle = self.shards[home()].lock();
        if idle.len() >= PER_SHARD {
            idle.pop_front();
        }
        idle.push_back(Idle { stream, since: Instant::now() });
    }

    /// Closes the connections that have been idle too long or that the upstream closed.
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            shard
                .lock()
                .retain_mut(|c| now.saturating_duration_since(c.since) < self.idle_timeout && quiet(&mut c.stream));
        }
    }

    /// Idle connections kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether nothing has arrived on an idle connection: an upstream says nothing unasked, so
/// anything readable is its close (or a stray byte that would corrupt the next answer). Reads
/// only when the socket was reported readable; otherwise no system call.
fn quiet(stream: &mut Stream) -> bool {
    use futures_util::FutureExt;
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    // `unconstrained`: tokio's budget must not make a ready read look pending.
    tokio::task::unconstrained(stream.read(&mut byte)).now_or_never().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: the pool's side as a pingora stream, and the "upstream" side.
    async fn pair(listener: &TcpListener) -> (Stream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Box::new(pingora::protocols::l4::stream::Stream::from(client)), server)
    }

    #[tokio::test]
    async fn the_most_recent_fit_connection_is_taken_and_the_unfit_are_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = IdlePool::new(Duration::from_secs(60));
        assert!(pool.take().is_none());
        let (a, _a) = pair(&listener).await;
        let (b, _b) = pair(&listener).await;
        let (a_port, b_port) = (a.id(), b.id());
        pool.put(a);
        pool.put(b);
        assert_eq!(pool.len(), 2);
        assert_eq!(pool.take().unwrap().id(), b_port, "most recently released first");
        assert_eq!(pool.take().unwrap().id(), a_port);
        assert!(pool.take().is_none());

        // The upstream closed one, and wrote to another unasked: neither is handed out.
        let (closed, closed_far) = pair(&listener).await;
        let (chatty, mut chatty_far) = pair(&listener).await;
        let (fine, _fine_far) = pair(&listener).await;
        let fine_id = fine.id();
        pool.put(fine);
        pool.put(closed);
        pool.put(chatty);
        drop(closed_far);
        chatty_far.write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await; // the FIN and the byte arrive
        assert_eq!(pool.take().unwrap().id(), fine_id);
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn connections_idle_past_the_timeout_are_not_used_and_the_sweep_closes_them() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = IdlePool::new(Duration::from_millis(200));
        let (old, _old) = pair(&listener).await;
        pool.put(old);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(pool.take().is_none(), "idle past idle_timeout");
        assert!(pool.is_empty());

        let (a, _a) = pair(&listener).await;
        let (b, b_far) = pair(&listener).await;
        pool.put(a);
        pool.put(b);
        drop(b_far);
        tokio::time::sleep(Duration::from_millis(100)).await;
        pool.sweep();
        assert_eq!(pool.len(), 1, "the one the upstream closed is gone");
        tokio::time::sleep(Duration::from_millis(150)).await;
        pool.sweep();
        assert!(pool.is_empty(), "the other has aged out");
    }

    #[tokio::test]
    async fn a_full_shard_drops_its_oldest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = IdlePool::new(Duration::from_secs(60));
        let mut far = Vec::new();
        let mut first = None;
        for i in 0..=PER_SHARD {
            let (s, f) = pair(&listener).await;
            if i == 0 {
                first = Some(s.id());
            }
            far.push(f);
            pool.put(s);
        }
        assert_eq!(pool.len(), PER_SHARD);
        let mut ids = Vec::new();
        while let Some(s) = pool.take() {
            ids.push(s.id());
        }
        assert!(!ids.contains(&first.unwrap()), "the oldest went");
    }
}
