//! Passive outlier detection: endpoints that keep refusing connects are skipped for a while.
//!
//! Health is keyed by address and lives outside the routing table, so a table swap does not
//! forget an ejected endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::balance::{order, Candidate};
use crate::metrics::Metrics;

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

/// The longest ejection that is actually timed (see [`EndpointHealth::failed`]).
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[derive(Debug, Default)]
struct State {
    failures: u32,
    /// Ejections since the last success: the exponent of the back-off.
    ejections: u32,
    ejected_until: Option<Instant>,
    /// The route that saw the ejection, for the metric's label.
    route: Box<str>,
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

/// The health of every endpoint connected to recently.
#[derive(Debug)]
pub struct EndpointHealth {
    policy: OutlierPolicy,
    endpoints: Mutex<HashMap<SocketAddr, State>>,
    metrics: Arc<Metrics>,
    load: Arc<Load>,
}

/// Forwarded connections open through this replica, per endpoint address; only endpoints
/// with one are kept.
#[derive(Debug, Default)]
struct Load(Mutex<HashMap<SocketAddr, usize>>);

impl Load {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, usize>> {
        // Plain counters: a panic elsewhere cannot leave them inconsistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection counted against its endpoint; dropping it releases the count.
#[derive(Debug)]
pub struct LoadGuard {
    load: Arc<Load>,
    endpoint: SocketAddr,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        let mut open = self.load.lock();
        if let Some(count) = open.get_mut(&self.endpoint) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.endpoint);
            }
        }
    }
}

impl EndpointHealth {
    /// Tracks health under `policy`, reporting ejections in `metrics`.
    pub fn new(policy: OutlierPolicy, metrics: Arc<Metrics>) -> Self {
        Self {
            policy,
            endpoints: Mutex::new(HashMap::new()),
            metrics,
            load: Arc::default(),
        }
    }

    /// Takes the first candidate of [`order`] that `untried` lets through, with open counts
    /// as they stand, and counts a connection against it. Choosing and counting under one
    /// lock keeps a burst of connections from all choosing the same endpoint.
    pub fn pick(
        &self,
        candidates: &mut [Candidate<SocketAddr>],
        turn: usize,
        untried: impl Fn(usize) -> bool,
    ) -> Option<(usize, LoadGuard)> {
        let mut open = self.load.lock();
        for candidate in candidates.iter_mut() {
            candidate.open = open.get(&candidate.at).copied().unwrap_or(0);
        }
        let index = order(candidates, turn).into_iter().find(|&i| untried(i))?;
        let endpoint = candidates[index].at;
        *open.entry(endpoint).or_insert(0) += 1;
        let guard = LoadGuard {
            load: self.load.clone(),
            endpoint,
        };
        Some((index, guard))
    }

    /// Forwarded connections open to `endpoint` through this replica.
    pub fn open(&self, endpoint: SocketAddr) -> usize {
        self.load.lock().get(&endpoint).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, State>> {
        // The map holds plain counters: a panic elsewhere cannot leave it inconsistent.
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `endpoint` should be skipped now.
    pub fn is_ejected(&self, endpoint: SocketAddr) -> bool {
        // The clock is read only for an endpoint that was ejected: healthy ones, the usual
        // case on every connection, cost one lookup.
        self.lock()
            .get(&endpoint)
            .and_then(|s| s.ejected_until)
            .is_some_and(|until| until > Instant::now())
    }

    /// Records a successful connect: the endpoint is healthy again.
    pub fn succeeded(&self, endpoint: SocketAddr) {
        let mut endpoints = self.lock();
        // Healthy endpoints are not kept: the map only holds the ones that failed lately.
        if let Some(state) = endpoints.remove(&endpoint) {
            if state.ejections > 0 {
                self.metrics
                    .set_ejected(&state.route, &endpoint.to_string(), false);
                tracing::info!(%endpoint, "endpoint healthy again");
            }
        }
    }

    /// Records a failed connect through `route`; may eject the endpoint.
    pub fn failed(&self, route: &str, endpoint: SocketAddr) {
        if self.policy.consecutive_failures == 0 {
            return;
        }
        let now = Instant::now();
        let mut endpoints = self.lock();
        let state = endpoints.entry(endpoint).or_default();
        state.failures += 1;
        let due = state.failures >= self.policy.consecutive_failures;
        let already = state.ejected_until.is_some_and(|until| until > now);
        if due && !already {
            let factor = 2u32.saturating_pow(state.ejections.min(16));
            let length = self
                .policy
                .base_ejection
                .saturating_mul(factor)
                .min(self.policy.max_ejection);
            state.ejections += 1;
            // An ejection past the clock's range lasts a century instead of panicking.
            let until = now.checked_add(length).unwrap_or(now + CENTURY);
            state.ejected_until = Some(until);
            state.route = route.into();
            self.metrics.set_ejected(route, &endpoint.to_string(), true);
            tracing::warn!(%endpoint, route, failures = state.failures, ejected_for = ?length, "endpoint ejected");
        }
    }

    /// The endpoints ejected now.
    pub fn ejected(&self) -> Vec<Ejected> {
        let now = Instant::now();
        let mut list: Vec<_> = self
            .lock()
            .iter()
            .filter_map(|(&endpoint, s)| {
                let until = s.ejected_until.filter(|&until| until > now)?;
                Some(Ejected {
                    endpoint,
                    remaining: until - now,
                    failures: s.failures,
                })
            })
            .collect();
        list.sort_by_key(|e| e.endpoint);
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn health(failures: u32) -> EndpointHealth {
        let policy = OutlierPolicy {
            consecutive_failures: failures,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
        };
        EndpointHealth::new(policy, Metrics::register(&mut Registry::default()))
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_failures_with_growing_capped_backoff() {
        let h = health(2);
        let ep: SocketAddr = "127.0.0.1:1".parse().unwrap();
        h.failed("r", ep);
        assert!(!h.is_ejected(ep), "one failure is not enough");
        h.failed("r", ep);
        assert!(h.is_ejected(ep));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!h.is_ejected(ep), "first ejection lasts the base time");
        h.failed("r", ep);
        assert!(h.is_ejected(ep), "still failing: ejected again at once");
        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(h.is_ejected(ep), "second ejection is twice as long");
        tokio::time::advance(Duration::from_secs(1)).await;
        h.failed("r", ep);
        tokio::time::advance(Duration::from_secs(24)).await;
        assert!(h.is_ejected(ep));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!h.is_ejected(ep), "capped at the max");
        h.succeeded(ep);
        h.failed("r", ep);
        assert!(!h.is_ejected(ep), "a success resets the count");
        assert!(h.ejected().is_empty());
    }

    #[tokio::test]
    async fn an_ejection_past_the_clock_range_does_not_panic() {
        let policy = OutlierPolicy {
            consecutive_failures: 1,
            base_ejection: Duration::MAX,
            max_ejection: Duration::MAX,
        };
        let h = EndpointHealth::new(policy, Metrics::register(&mut Registry::default()));
        let ep: SocketAddr = "127.0.0.1:1".parse().unwrap();
        h.failed("r", ep);
        assert!(h.is_ejected(ep));
        assert!(h.ejected()[0].remaining > Duration::from_secs(3600 * 24 * 365));
    }

    #[test]
    fn picks_in_order_skipping_the_tried_and_counts_until_dropped() {
        use crate::balance::Standing;
        let h = health(3);
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let cand = |port, standing| Candidate {
            at: addr(port),
            standing,
            ejected: false,
            open: 0,
        };
        let mut all = [
            cand(1, Standing::Near),
            cand(2, Standing::Near),
            cand(3, Standing::Terminating),
        ];
        let (i, first) = h.pick(&mut all, 1, |_| true).unwrap();
        assert_eq!(i, 1, "equals in turn");
        let (i, second) = h.pick(&mut all, 1, |_| true).unwrap();
        assert_eq!(i, 0, "the least loaded");
        let (i, third) = h.pick(&mut all, 0, |_| true).unwrap();
        assert_eq!(i, 0, "a tie again, broken by the turn");
        assert_eq!(
            (h.open(addr(1)), h.open(addr(2)), h.open(addr(3))),
            (2, 1, 0)
        );
        let (i, _fourth) = h.pick(&mut all, 0, |i| i != 1 && i != 0).unwrap();
        assert_eq!(i, 2, "the terminating one once the others are tried");
        drop((first, second, third));
        assert_eq!(
            (h.open(addr(1)), h.open(addr(2)), h.open(addr(3))),
            (0, 0, 1)
        );
        assert!(h.pick(&mut [], 0, |_| true).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_turns_detection_off() {
        let h = health(0);
        let ep: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for _ in 0..10 {
            h.failed("r", ep);
        }
        assert!(!h.is_ejected(ep));
    }
}
