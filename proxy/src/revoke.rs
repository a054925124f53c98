//! Revocation: closing established connections that a new table would refuse.
//!
//! HAProxy and Envoy keep such connections until they end by themselves, which can be days
//! for a kubectl watch. Here each forwarded connection is registered with what it was routed
//! by; after every table swap the ones the new table would refuse (route gone, or the client
//! no longer in its allow list) are closed once `revoke_grace` has passed, if the table then
//! in force still refuses them.
//!
//! The registry takes no lock: a connection claims a slot from a lock-free free list (a
//! tagged Treiber stack of slot indices), publishes its [`Live`] entry there, and empties the
//! slot when it closes. The one task that follows swaps reads every slot. Slots live in
//! segments that double in size, each allocated once when the registry first grows into it
//! (32 of them cover any open-files limit), so a slot never moves and the registry is as large
//! as the most connections that were ever open at once, 16 bytes a slot.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use atomic_waker::AtomicWaker;
use tokio::time::Instant;

use crate::ja4::Ja4;
use crate::metrics::Metrics;
use crate::table::{RouteKey, Snapshot, Table};

/// Slots in the first segment; segment `k` holds `FIRST << k`.
const FIRST: usize = 64;
/// Segments: `FIRST << SEGMENTS` slots in all, far past any open-files limit.
const SEGMENTS: usize = 26;

/// One forwarded connection as revocation and its closing line see it: what it was routed
/// by, for whom, to where, and how to end it (a flag and the connection task's waker; a
/// cancellation token's wait future would sit in every idle connection's task). One
/// allocation per connection serves both, registered or not, and holds `H`, what the
/// connection keeps until it ends but never reads (its slots in the limits).
#[derive(Debug)]
pub(crate) struct Live<H> {
    pub(crate) key: RouteKey,
    /// The TCP peer.
    pub(crate) peer: SocketAddr,
    /// The client a trusted PROXY header named, or (with `claimed`) the source an untrusted
    /// one claimed; `None`: the peer is the client. (Not an `Origin`: the destination it also
    /// holds was for the outgoing header, already sent, and would cost 36 bytes a connection.)
    other: Option<SocketAddr>,
    claimed: bool,
    pub(crate) backend: SocketAddr,
    pub(crate) started: Instant,
    pub(crate) ja4: Option<Ja4>,
    revoked: AtomicBool,
    /// Set when the connection ends: a revocation that falls due after does not count it.
    closed: AtomicBool,
    waker: AtomicWaker,
    pub(crate) held: H,
}

impl<H> Live<H> {
    /// A connection routed by `key` from `peer` for `client` (the peer, or whom a trusted
    /// PROXY header named; `claimed`: the source an untrusted one claimed) to `backend` since
    /// `started`, not revoked.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        key: RouteKey,
        peer: SocketAddr,
        client: SocketAddr,
        claimed: Option<SocketAddr>,
        backend: SocketAddr,
        started: Instant,
        ja4: Option<Ja4>,
        held: H,
    ) -> Self {
        let (other, claimed) = match claimed {
            Some(claimed) => (Some(claimed), true),
            None => (Some(client).filter(|c| *c != peer), false),
        };
        Self {
            key,
            peer,
            other,
            claimed,
            backend,
            started,
            ja4,
            revoked: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            held,
        }
    }

    /// The client allow lists judge and logs name.
    pub(crate) fn client(&self) -> SocketAddr {
        match self.other {
            Some(other) if !self.claimed => other,
            _ => self.peer,
        }
    }

    /// The source an untrusted PROXY header claimed, for logs only.
    pub(crate) fn claimed(&self) -> Option<SocketAddr> {
        self.other.filter(|_| self.claimed)
    }

    /// Ready once the connection is revoked; until then, the task is woken when it is.
    pub(crate) fn poll_revoked(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Registered before the check: a revocation between the two still wakes the task.
        self.waker.register(cx.waker());
        if self.revoked.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Ends the connection, unless it already ended; whether it was open.
    fn revoke(&self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        self.revoked.store(true, Ordering::Release);
        self.waker.wake();
        true
    }
}

/// One place in the registry: the connection in it, and the next free slot while free.
struct Slot<H> {
    live: ArcSwapOption<Live<H>>,
    /// The next free slot's index + 1 (0: none), read only while this one is on the free list.
    next: AtomicU32,
}

impl<H> Default for Slot<H> {
    fn default() -> Self {
        Self {
            live: ArcSwapOption::empty(),
            next: AtomicU32::new(0),
        }
    }
}

/// Every forwarded connection, while revocation is on.
pub struct Connections<H> {
    segments: [OnceLock<Box<[Slot<H>]>>; SEGMENTS],
    /// Slots ever handed out: the scan reads these.
    used: AtomicUsize,
    /// The free list's head: a tag (bumped by every change, so a pop that read a stale `next`
    /// fails its compare-exchange) in the high 32 bits, the slot index + 1 in the low.
    free: AtomicU64,
}

impl<H> std::fmt::Debug for Connections<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("slots", &self.used.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<H> Default for Connections<H> {
    fn default() -> Self {
        Self {
            segments: std::array::from_fn(|_| OnceLock::new()),
            used: AtomicUsize::new(0),
            free: AtomicU64::new(0),
        }
    }
}

/// A connection's slot; emptied when dropped.
#[derive(Debug)]
pub(crate) struct Registration<H> {
    connections: Arc<Connections<H>>,
    index: u32,
}

impl<H> Drop for Registration<H> {
    fn drop(&mut self) {
        if let Some(slot) = self.connections.slot(self.index) {
            if let Some(live) = slot.live.load_full() {
                // Before the slot lets go: a revocation falling due from now on skips it.
                live.closed.store(true, Ordering::Release);
            }
            slot.live.store(None);
        }
        self.connections.push_free(self.index);
    }
}

/// Where slot `index` is: its segment and its place there.
fn locate(index: usize) -> (usize, usize) {
    let n = index / FIRST + 1;
    let segment = (usize::BITS - 1 - n.leading_zeros()) as usize;
    (segment, index - FIRST * ((1 << segment) - 1))
}

impl<H> Connections<H> {
    /// The slot at `index`, if its segment exists.
    fn slot(&self, index: u32) -> Option<&Slot<H>> {
        let (segment, offset) = locate(index as usize);
        self.segments.get(segment)?.get()?.get(offset)
    }

    /// The slot at `index`, its segment allocated if this is the first slot to reach it.
    fn slot_or_grow(&self, index: u32) -> Option<&Slot<H>> {
        let (segment, offset) = locate(index as usize);
        let slots = self.segments.get(segment)?.get_or_init(|| {
            (0..FIRST << segment)
                .map(|_| Slot::default())
                .collect::<Vec<_>>()
                .into_boxed_slice()
        });
        slots.get(offset)
    }

    fn push_free(&self, index: u32) {
        let Some(slot) = self.slot(index) else {
            return;
        };
        let mut head = self.free.load(Ordering::Acquire);
        loop {
            slot.next.store(head as u32, Ordering::Relaxed);
            let new = ((head >> 32).wrapping_add(1) << 32) | u64::from(index + 1);
            match self
                .free
                .compare_exchange_weak(head, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    fn pop_free(&self) -> Option<u32> {
        let mut head = self.free.load(Ordering::Acquire);
        loop {
            let index = (head as u32).checked_sub(1)?;
            // Stale if another thread popped this slot meanwhile: then the tag moved on and
            // the exchange below fails.
            let next = self.slot(index)?.next.load(Ordering::Relaxed);
            let new = ((head >> 32).wrapping_add(1) << 32) | u64::from(next);
            match self
                .free
                .compare_exchange_weak(head, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(index),
                Err(now) => head = now,
            }
        }
    }

    /// Registers `live`; `None` only past `FIRST << SEGMENTS` connections at once (then the
    /// connection is not revocable).
    pub(crate) fn register(self: &Arc<Self>, live: Arc<Live<H>>) -> Option<Registration<H>> {
        let index = match self.pop_free() {
            Some(index) => index,
            None => {
                let index = self.used.fetch_add(1, Ordering::Relaxed);
                u32::try_from(index).ok()?
            }
        };
        let slot = self.slot_or_grow(index)?;
        slot.live.store(Some(live));
        Some(Registration {
            connections: self.clone(),
            index,
        })
    }

    /// Every connection registered now.
    fn each(&self, mut f: impl FnMut(&Arc<Live<H>>)) {
        let used = self.used.load(Ordering::Acquire);
        for (segment, slots) in self.segments.iter().enumerate() {
            if FIRST * ((1 << segment) - 1) >= used {
                break;
            }
            let Some(slots) = slots.get() else {
                continue;
            };
            for slot in slots.iter() {
                if let Some(live) = &*slot.live.load() {
                    f(live);
                }
            }
        }
    }

    /// The connections `table` would refuse, and how many were judged.
    fn refused_by(&self, table: &Table) -> (Vec<Weak<Live<H>>>, usize) {
        let (mut doomed, mut judged) = (Vec::new(), 0);
        self.each(|live| {
            judged += 1;
            if table.admit(&live.key, live.client().ip()).is_err() {
                // Weak: a connection that ends during the grace lets go of what it holds then.
                doomed.push(Arc::downgrade(live));
            }
        });
        (doomed, judged)
    }

    /// Connections registered now.
    #[cfg(test)]
    fn count(&self) -> usize {
        let mut n = 0;
        self.each(|_| n += 1);
        n
    }
}

/// Closes those of `doomed` still open that `table` still refuses; returns how many.
fn revoke<H>(doomed: &[Weak<Live<H>>], table: &Table) -> usize {
    doomed
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|live| table.admit(&live.key, live.client().ip()).is_err())
        .filter(|live| live.revoke())
        .count()
}

/// The revocations waiting out their grace, in the order they fall due; kept by the one
/// task that follows table swaps (no timer task per swap).
#[derive(Debug)]
pub(crate) struct Revoker<H> {
    connections: Arc<Connections<H>>,
    grace: Duration,
    due: VecDeque<(Instant, Vec<Weak<Live<H>>>)>,
}

impl<H> Revoker<H> {
    pub(crate) fn new(connections: Arc<Connections<H>>, grace: Duration) -> Self {
        Self {
            connections,
            grace,
            due: VecDeque::new(),
        }
    }

    /// Notes the connections `snapshot`'s table refuses, to be judged again after the grace.
    pub(crate) fn swapped(&mut self, snapshot: &Snapshot) {
        let started = Instant::now();
        let (doomed, judged) = self.connections.refused_by(&snapshot.table);
        // What a swap costs with many connections open (benches/idle_scale.rs reads it).
        let scan = started.elapsed();
        if doomed.is_empty() {
            tracing::debug!(
                judged,
                generation = snapshot.generation,
                ?scan,
                "revocation scan: every established connection still admitted"
            );
            return;
        }
        tracing::info!(
            connections = doomed.len(),
            judged,
            ?scan,
            generation = snapshot.generation,
            grace = ?self.grace,
            "established connections no longer admitted; revoking after the grace period"
        );
        // The grace is the same for every swap, so deadlines queue in order.
        self.due.push_back((Instant::now() + self.grace, doomed));
    }

    /// Waits until the oldest pending revocation falls due (forever when none is pending).
    pub(crate) async fn next_due(&self) {
        match self.due.front() {
            Some(&(at, _)) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Closes the connections of the revocation that fell due which `snapshot`, the table in
    /// force now, still refuses: a route that came back is left alone.
    pub(crate) fn revoke_due(&mut self, snapshot: &Snapshot, metrics: &Metrics) {
        let Some((_, doomed)) = self.due.pop_front() else {
            return;
        };
        let started = Instant::now();
        let revoked = revoke(&doomed, &snapshot.table);
        let took = started.elapsed();
        metrics.revoked.inc_by(revoked as u64);
        if revoked > 0 {
            tracing::info!(
                revoked,
                ?took,
                generation = snapshot.generation,
                "connections revoked"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(n: u8) -> Arc<Live<()>> {
        let key = RouteKey::ClusterId(format!("c{n}").into());
        let peer = SocketAddr::from(([127, 0, 0, n], 1));
        Arc::new(Live::new(
            key,
            peer,
            peer,
            None,
            peer,
            Instant::now(),
            None,
            (),
        ))
    }

    #[test]
    fn slots_are_located_across_doubling_segments() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(FIRST - 1), (0, FIRST - 1));
        assert_eq!(locate(FIRST), (1, 0));
        assert_eq!(locate(3 * FIRST - 1), (1, 2 * FIRST - 1));
        assert_eq!(locate(3 * FIRST), (2, 0));
        let last = FIRST * ((1 << SEGMENTS) - 1) - 1;
        assert_eq!(locate(last), (SEGMENTS - 1, (FIRST << (SEGMENTS - 1)) - 1));
    }

    #[test]
    fn slots_are_reused_and_the_scan_sees_exactly_the_registered() {
        let connections = Arc::new(Connections::default());
        let mut held: Vec<Registration<()>> = (0..200)
            .map(|n| connections.register(live(n as u8)).unwrap())
            .collect();
        assert_eq!(connections.count(), 200);
        held.truncate(50);
        assert_eq!(connections.count(), 50);
        held.extend((0..150).map(|n| connections.register(live(n as u8)).unwrap()));
        assert_eq!(connections.count(), 200);
        assert_eq!(
            connections.used.load(Ordering::Relaxed),
            200,
            "freed slots are taken again"
        );
        drop(held);
        assert_eq!(connections.count(), 0);
    }

    #[test]
    fn threads_registering_and_closing_at_once_lose_no_slot() {
        let connections = Arc::new(Connections::default());
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let connections = &connections;
                s.spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..20_000u32 {
                        held.push(connections.register(live(t)).unwrap());
                        if i % 3 != 0 {
                            held.swap_remove((i as usize * 7) % held.len());
                        }
                    }
                    assert!(held.iter().all(|r| connections
                        .slot(r.index)
                        .and_then(|s| s.live.load_full())
                        .is_some()));
                    drop(held);
                });
            }
        });
        assert_eq!(connections.count(), 0);
        // Every slot went back to the free list exactly once: popping them all yields each
        // index once.
        let used = connections.used.load(Ordering::Relaxed);
        let mut seen = vec![false; used];
        while let Some(index) = connections.pop_free() {
            assert!(!std::mem::replace(&mut seen[index as usize], true));
        }
        assert!(seen.iter().all(|&s| s), "a slot was lost");
    }

    #[test]
    fn a_closed_connection_is_not_counted_as_revoked() {
        let connections = Arc::new(Connections::default());
        let open = live(1);
        let gone = live(2);
        let _open = connections.register(open.clone()).unwrap();
        drop(connections.register(gone.clone()).unwrap());
        let doomed = [Arc::downgrade(&open), Arc::downgrade(&gone)];
        assert_eq!(revoke(&doomed, &Table::default()), 1);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(open.poll_revoked(&mut cx).is_ready());
    }
}
