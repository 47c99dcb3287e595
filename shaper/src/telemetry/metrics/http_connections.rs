//! The metrics endpoint's open connections, capped. Each connection serves one request (no
//! keep-alive), must send its request head within the header timeout, and lives at most the
//! maximum age; at the cap, a new connection takes the place of the oldest one that has not
//! sent a request yet, so idle or slow clients (a scraper gone wrong, a slowloris) cannot keep
//! a probe out. Only when every open connection is answering a request is a new one closed.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// What the endpoint lets its clients hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Connections open at once.
    pub max_connections: usize,
    /// Scrapes rendered at once; one more is answered 503 at once.
    pub max_scrapes: usize,
    /// From the accept to the end of the request's head (hyper's header read timeout).
    pub header_timeout: Duration,
    /// From the request to its answer (a scrape or a probe); past it, 503.
    pub request_timeout: Duration,
    /// A connection is closed this long after its accept, whatever it is doing (a client that
    /// does not read its answer).
    pub max_age: Duration,
}

/// The default connection cap (`shaper run --metrics-max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            // A Prometheus pair plus a person with curl; a scrape takes milliseconds.
            max_scrapes: 4,
            header_timeout: Duration::from_secs(5),
            // Prometheus's default scrape timeout, and the kubelet's probes use 5 s.
            request_timeout: Duration::from_secs(10),
            max_age: Duration::from_secs(30),
        }
    }
}

/// The open connections, oldest first.
pub(super) struct Connections {
    max: usize,
    open: Mutex<Open>,
    /// One per connection whose task still runs (and so holds its socket): an evicted
    /// connection gives its permit back only once its socket is closed, so the daemon never
    /// holds more than `max` served sockets, plus the one being admitted.
    sockets: Arc<Semaphore>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    by_age: BTreeMap<u64, Arc<Connection>>,
    /// When the cap was last reported, so a flood logs a line a minute, not one per accept.
    last_warned: Option<Instant>,
}

/// One open connection, as its task and the cap see it.
pub(super) struct Connection {
    /// Set when its request head has arrived: from then on it is never closed for another.
    busy: AtomicBool,
    evicted: Notify,
}

impl Connection {
    pub(super) fn mark_busy(&self) {
        self.busy.store(true, Ordering::Relaxed);
    }

    /// Completes when the connection was closed to make room for a newer one.
    pub(super) async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

/// A connection's place under the cap, given back on drop.
pub(super) struct Slot {
    id: u64,
    pub(super) connection: Arc<Connection>,
    connections: Arc<Connections>,
    _socket: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.lock().by_age.remove(&self.id);
    }
}

impl Connections {
    pub(super) fn new(max: usize) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(Self {
            max,
            open: Mutex::default(),
            sockets: Arc::new(Semaphore::new(max)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // Nothing in the critical sections can panic half-way; a poisoned lock is still whole.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection: at the cap, the oldest connection without a request is
    /// told to close, and its slot is taken once it has; `None` when every open connection is
    /// busy (or an evicted one did not close within a second, which its task makes unlikely).
    pub(super) async fn admit(self: &Arc<Self>) -> Option<Slot> {
        self.make_room()?;
        let socket = tokio::time::timeout(
            Duration::from_secs(1),
            Arc::clone(&self.sockets).acquire_owned(),
        )
        .await
        .ok()?
        .ok()?;
        let mut open = self.lock();
        let id = open.next_id;
        open.next_id += 1;
        let connection = Arc::new(Connection {
            busy: AtomicBool::new(false),
            evicted: Notify::new(),
        });
        open.by_age.insert(id, Arc::clone(&connection));
        Some(Slot {
            id,
            connection,
            connections: Arc::clone(self),
            _socket: socket,
        })
    }

    /// Below the cap, nothing; at it, evicts the oldest idle connection (`None`: none is idle).
    fn make_room(&self) -> Option<()> {
        let mut open = self.lock();
        if open.by_age.len() >= self.max {
            let now = Instant::now();
            if open
                .last_warned
                .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60))
            {
                open.last_warned = Some(now);
                log::warn!(
                    "metrics endpoint: {} connections open, its cap (--metrics-max-connections); \
                     closing the oldest ones that have sent no request",
                    self.max
                );
            }
            let idle = open
                .by_age
                .iter()
                .find(|(_, c)| !c.busy.load(Ordering::Relaxed))
                .map(|(&id, _)| id)?;
            if let Some(oldest) = open.by_age.remove(&idle) {
                // Stored as a permit if its task is not waiting yet: it still closes.
                oldest.evicted.notify_one();
            }
        }
        Some(())
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().by_age.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let connections = Connections::new(3);
        let first = connections.admit().await.unwrap();
        let second = connections.admit().await.unwrap();
        let third = connections.admit().await.unwrap();
        first.connection.mark_busy();
        // The oldest idle one is the second (the first is answering a request); the fourth
        // gets in once the second's task has closed it.
        let (fourth, ()) = tokio::join!(connections.admit(), async {
            tokio::time::timeout(Duration::from_secs(1), second.connection.evicted())
                .await
                .expect("the second connection is told to close");
            drop(second);
        });
        let fourth = fourth.expect("admitted after the eviction");
        assert_eq!(connections.open(), 3);
        third.connection.mark_busy();
        fourth.connection.mark_busy();
        assert!(
            connections.admit().await.is_none(),
            "every connection is busy"
        );
        drop(first);
        assert_eq!(connections.open(), 2);
        assert!(connections.admit().await.is_some());
    }
}
