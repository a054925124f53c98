//! What a route keeps across table swaps: its open count (for `max_connections` and the
//! metrics), its unreachable count, its round-robin cursor and each backend's endpoint state.
//!
//! All of it is atomics in `Arc`s. A new table's route of the same name adopts them
//! ([`Route::succeeding`](crate::table::Route::succeeding)), so a connection on the old
//! snapshot and one on the new count against the same limit, and the metrics, which read this
//! state at scrape time, never re-create a series a swap removed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::health::Target;
use crate::slots::Slots;

/// The state of one route that outlives any one table.
#[derive(Debug)]
pub struct RouteState {
    /// The route's name, for the metrics of a route gone from the table but still busy.
    name: Box<str>,
    /// Forwarded connections open through the route now.
    open: Slots,
    /// Whether a connection ever took a slot: only those routes have an open-count series,
    /// so 25,000 idle routes do not make 25,000 series.
    seen: AtomicBool,
    /// Connections refused as backend_unreachable.
    unreachable: AtomicU64,
    /// The round robin among equally good backends.
    next: AtomicUsize,
}

impl RouteState {
    /// A fresh state for the route `name`.
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            open: Slots::default(),
            seen: AtomicBool::new(false),
            unreachable: AtomicU64::new(0),
            next: AtomicUsize::new(0),
        }
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Forwarded connections open through the route now.
    pub fn open(&self) -> usize {
        self.open.open()
    }

    /// Whether a connection ever took a slot of this route.
    pub fn seen(&self) -> bool {
        self.seen.load(Ordering::Relaxed)
    }

    /// Connections refused because no backend address accepted.
    pub fn unreachable(&self) -> u64 {
        self.unreachable.load(Ordering::Relaxed)
    }

    /// Counts a connection no backend address accepted.
    pub(crate) fn count_unreachable(&self) {
        self.unreachable.fetch_add(1, Ordering::Relaxed);
    }

    /// This connection's turn in the round robin.
    pub(crate) fn next_turn(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The turn the next connection gets, without taking it.
    pub(crate) fn peek_turn(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }

    /// Whether a connection would be refused for the route's `limit` now.
    pub fn is_full(&self, limit: Option<u32>) -> bool {
        self.open.is_full(limit.map(|limit| limit as usize))
    }

    /// Takes one slot if fewer than `limit` are open; the slot is released when dropped. It
    /// keeps the state alive, so a route gone from the table is counted until its last
    /// connection ends.
    pub(crate) fn try_take(self: &Arc<Self>, limit: Option<u32>) -> Option<RouteSlot> {
        if !self.open.acquire(limit.map(|limit| limit as usize)) {
            return None;
        }
        if !self.seen.load(Ordering::Relaxed) {
            self.seen.store(true, Ordering::Relaxed);
        }
        Some(RouteSlot(self.clone()))
    }
}

/// One forwarded connection counted against its route.
#[derive(Debug)]
pub(crate) struct RouteSlot(Arc<RouteState>);

impl RouteSlot {
    /// The route's name.
    pub(crate) fn name(&self) -> &str {
        self.0.name()
    }
}

impl Drop for RouteSlot {
    fn drop(&mut self) {
        self.0.open.release();
    }
}

/// The endpoint state of one backend of a route.
#[derive(Debug, Clone)]
pub enum Endpoints {
    /// An address: one endpoint.
    Addr(Target),
    /// A name: the addresses it resolved to last, each with its endpoint. Swapped whole when
    /// a lookup returns another set, so connections read it without a lock.
    Name(Arc<ArcSwap<Box<[Target]>>>),
}

impl Endpoints {
    /// Fresh state for a backend at `addr`.
    pub(crate) fn at(addr: SocketAddr) -> Self {
        Self::Addr(Target {
            addr,
            endpoint: Arc::default(),
        })
    }

    /// Fresh state for a backend named by DNS: nothing resolved yet.
    pub(crate) fn named() -> Self {
        Self::Name(Arc::default())
    }

    /// Targets for the addresses a name resolved to now: the endpoint state of an address it
    /// resolved to before is kept, and the new set is remembered.
    pub(crate) fn resolved(&self, addrs: Vec<SocketAddr>) -> Vec<Target> {
        let Self::Name(last) = self else {
            return Vec::new();
        };
        let before = last.load();
        let targets: Vec<Target> = addrs
            .into_iter()
            .map(|addr| Target {
                addr,
                endpoint: before
                    .iter()
                    .find(|t| t.addr == addr)
                    .map_or_else(Arc::default, |t| t.endpoint.clone()),
            })
            .collect();
        let same = before.len() == targets.len()
            && before.iter().zip(&targets).all(|(b, t)| b.addr == t.addr);
        if !same {
            last.store(Arc::new(targets.clone().into_boxed_slice()));
        }
        targets
    }

    /// Every address known now with its endpoint: the address, or what the name resolved to
    /// last.
    pub fn known(&self) -> Vec<Target> {
        match self {
            Self::Addr(target) => vec![target.clone()],
            Self::Name(last) => last.load().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_is_seen_from_its_first_slot() {
        let state = Arc::new(RouteState::new("r"));
        assert!(!state.seen());
        let _one = state.try_take(Some(1)).unwrap();
        assert!(state.try_take(Some(1)).is_none());
        assert_eq!((state.open(), state.seen()), (1, true));
    }

    #[test]
    fn a_name_keeps_the_state_of_addresses_it_resolves_to_again() {
        let endpoints = Endpoints::named();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let first = endpoints.resolved(vec![a]);
        let _held = first[0].endpoint.take();
        let again = endpoints.resolved(vec![b, a]);
        assert_eq!(again[1].endpoint.open(), 1, "a's state is kept");
        assert_eq!(again[0].endpoint.open(), 0);
        let known: Vec<_> = endpoints.known().iter().map(|t| t.addr).collect();
        assert_eq!(known, [b, a]);
    }
}
