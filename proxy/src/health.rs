//! Per-endpoint state on the connection path: connections open through this replica (least
//! connections) and passive outlier detection (endpoints that keep refusing connects are
//! skipped for a while).
//!
//! Each endpoint's state is a few atomics in an `Arc` that its route holds and that the next
//! table's route of the same name adopts ([`Route::succeeding`](crate::table::Route::succeeding)),
//! so a swap forgets neither an ejection nor an open count, and nothing on the path takes a
//! lock: choosing reads the counts, counting is one `fetch_add`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// When an endpoint is ejected, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Consecutive connect failures that eject an endpoint; 0 turns detection off.
    pub consecutive_failures: u32,
    /// The first ejection's length; each ejection in a row doubles it.
    pub base_ejection: Duration,
    /// The longest an ejection lasts.
    pub max_ejection: Duration,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
        }
    }
}

/// One endpoint that is ejected now, for `/routes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ejected {
    /// The endpoint's address.
    pub endpoint: SocketAddr,
    /// How long it stays ejected.
    pub remaining: Duration,
    /// Connect failures in a row.
    pub failures: u32,
}

/// One endpoint's load and health, shared by every connection through it.
#[derive(Debug)]
pub struct Endpoint {
    /// The origin of `ejected_until`: a per-endpoint clock keeps the deadline in one atomic.
    born: Instant,
    /// Forwarded connections open to it through this replica.
    open: AtomicUsize,
    /// Connect failures in a row.
    failures: AtomicU32,
    /// Ejections since the last success: the exponent of the back-off.
    ejections: AtomicU32,
    /// Nanoseconds after `born` until which it is ejected; 0 when it never was since the
    /// last success.
    ejected_until: AtomicU64,
}

impl Default for Endpoint {
    fn default() -> Self {
        Self {
            born: Instant::now(),
            open: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }
}

/// One connection counted against its endpoint; dropping it releases the count.
#[derive(Debug)]
pub struct LoadGuard(Arc<Endpoint>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Endpoint {
    /// Counts one connection against this endpoint until the guard drops.
    pub fn take(self: &Arc<Self>) -> LoadGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        LoadGuard(self.clone())
    }

    /// Forwarded connections open to it through this replica.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Nanoseconds since `born`, saturating (an endpoint would have to live 584 years).
    fn now(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// How long it stays ejected, if it is ejected now.
    pub fn ejected_for(&self) -> Option<Duration> {
        // Healthy endpoints, the usual case on every connection, cost one load and no clock.
        let until = self.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            return None;
        }
        until
            .checked_sub(self.now())
            .filter(|&left| left > 0)
            .map(Duration::from_nanos)
    }

    /// Whether it should be skipped now.
    pub fn is_ejected(&self) -> bool {
        self.ejected_for().is_some()
    }

    /// Connect failures in a row.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Records a successful connect to `addr`: the endpoint is healthy again.
    pub fn succeeded(&self, addr: SocketAddr) {
        // Loads first: the usual success finds nothing to reset and writes no shared line.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0
            && self.ejections.swap(0, Ordering::AcqRel) != 0
        {
            self.ejected_until.store(0, Ordering::Release);
            tracing::info!(endpoint = %addr, "endpoint healthy again");
        }
    }

    /// Records a failed connect to `addr` through `route`; may eject the endpoint.
    pub fn failed(&self, policy: &OutlierPolicy, route: &str, addr: SocketAddr) {
        if policy.consecutive_failures == 0 {
            return;
        }
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures < policy.consecutive_failures {
            return;
        }
        let now = self.now();
        let seen = self.ejected_until.load(Ordering::Acquire);
        if seen > now {
            return;
        }
        let ejections = self.ejections.load(Ordering::Relaxed);
        let length = policy
            .base_ejection
            .saturating_mul(2u32.saturating_pow(ejections.min(16)))
            .min(policy.max_ejection);
        // An ejection past the clock's range lasts until the clock's end instead of panicking.
        let until = u64::try_from(length.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(now)
            .max(1);
        // Of failures racing past the threshold, one ejects: the one that moves the deadline.
        if self
            .ejected_until
            .compare_exchange(seen, until, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(endpoint = %addr, route, failures, ejected_for = ?length, "endpoint ejected");
        }
    }

    /// This endpoint at `addr` as `/routes` lists it, if it is ejected now.
    pub fn ejected(&self, addr: SocketAddr) -> Option<Ejected> {
        self.ejected_for().map(|remaining| Ejected {
            endpoint: addr,
            remaining,
            failures: self.failures(),
        })
    }
}

/// One address a connection may try, with the state of the endpoint there.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Its load and health.
    pub endpoint: Arc<Endpoint>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(failures: u32) -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: failures,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
        }
    }

    fn ep() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_failures_with_growing_capped_backoff() {
        let (p, h) = (policy(2), Endpoint::default());
        h.failed(&p, "r", ep());
        assert!(!h.is_ejected(), "one failure is not enough");
        h.failed(&p, "r", ep());
        assert!(h.is_ejected());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!h.is_ejected(), "first ejection lasts the base time");
        h.failed(&p, "r", ep());
        assert!(h.is_ejected(), "still failing: ejected again at once");
        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(h.is_ejected(), "second ejection is twice as long");
        tokio::time::advance(Duration::from_secs(1)).await;
        h.failed(&p, "r", ep());
        tokio::time::advance(Duration::from_secs(24)).await;
        assert!(h.is_ejected());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!h.is_ejected(), "capped at the max");
        h.succeeded(ep());
        h.failed(&p, "r", ep());
        assert!(!h.is_ejected(), "a success resets the count");
        assert!(h.ejected(ep()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_ends_an_ejection_and_its_backoff() {
        let (p, h) = (policy(1), Endpoint::default());
        h.failed(&p, "r", ep());
        tokio::time::advance(Duration::from_secs(10)).await;
        h.failed(&p, "r", ep());
        assert_eq!(h.ejected_for(), Some(Duration::from_secs(20)));
        h.succeeded(ep());
        assert!(!h.is_ejected());
        h.failed(&p, "r", ep());
        assert_eq!(
            h.ejected_for(),
            Some(Duration::from_secs(10)),
            "back-off reset"
        );
        assert_eq!(h.ejected(ep()).map(|e| e.failures), Some(1));
    }

    #[tokio::test]
    async fn an_ejection_past_the_clock_range_does_not_panic() {
        let p = OutlierPolicy {
            consecutive_failures: 1,
            base_ejection: Duration::MAX,
            max_ejection: Duration::MAX,
        };
        let h = Endpoint::default();
        h.failed(&p, "r", ep());
        assert!(h.is_ejected());
        assert!(h.ejected(ep()).unwrap().remaining > Duration::from_secs(3600 * 24 * 365));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_turns_detection_off() {
        let h = Endpoint::default();
        for _ in 0..10 {
            h.failed(&policy(0), "r", ep());
        }
        assert!(!h.is_ejected());
    }
}
