//! Revocation: closing established connections that a new table would refuse.
//!
//! HAProxy and Envoy keep such connections until they end by themselves, which can be days
//! for a kubectl watch. Here each forwarded connection is registered with what it was routed
//! by; after every table swap the ones the new table would refuse (route gone, or the client
//! no longer in its allow list) are closed once `revoke_grace` has passed, if the table then
//! in force still refuses them.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::table::{RouteKey, Snapshot, Table};

#[derive(Debug)]
struct Live {
    key: RouteKey,
    client: IpAddr,
    revoke: Arc<Revoke>,
}

/// How the registry ends one connection: a flag and the connection task's waker. (A
/// cancellation token's wait future would sit in every idle connection's task.)
#[derive(Debug, Default)]
struct Revoke {
    revoked: AtomicBool,
    waker: AtomicWaker,
}

impl Revoke {
    fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// Every forwarded connection, while revocation is on.
#[derive(Debug, Default)]
pub struct Connections {
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Live>>,
}

/// A connection's entry; removed when dropped.
#[derive(Debug)]
pub(crate) struct Registration {
    connections: Arc<Connections>,
    id: u64,
    revoke: Arc<Revoke>,
}

impl Registration {
    /// Ready once the connection is revoked; until then, the task is woken when it is.
    pub(crate) fn poll_revoked(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Registered before the check: a revocation between the two still wakes the task.
        self.revoke.waker.register(cx.waker());
        if self.revoke.revoked.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.id);
    }
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Live>> {
        // Entries are plain data: a panic elsewhere cannot leave them half-written.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a connection routed by `key` for `client`.
    pub(crate) fn register(self: &Arc<Self>, key: RouteKey, client: IpAddr) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let revoke = Arc::new(Revoke::default());
        let live = Live {
            key,
            client,
            revoke: revoke.clone(),
        };
        self.lock().insert(id, live);
        Registration {
            connections: self.clone(),
            id,
            revoke,
        }
    }

    /// The connections `table` would refuse.
    fn refused_by(&self, table: &Table) -> Vec<u64> {
        self.lock()
            .iter()
            .filter(|(_, live)| table.admit(&live.key, live.client).is_err())
            .map(|(&id, _)| id)
            .collect()
    }

    /// Closes those of `ids` that `table` still refuses; returns how many.
    fn revoke(&self, ids: &[u64], table: &Table) -> usize {
        let live = self.lock();
        ids.iter()
            .filter_map(|id| live.get(id))
            .filter(|live| table.admit(&live.key, live.client).is_err())
            .inspect(|live| live.revoke.revoke())
            .count()
    }
}

/// The revocations waiting out their grace, in the order they fall due; kept by the one
/// task that follows table swaps (no timer task per swap).
#[derive(Debug)]
pub(crate) struct Revoker {
    connections: Arc<Connections>,
    grace: Duration,
    due: VecDeque<(Instant, Vec<u64>)>,
}

impl Revoker {
    pub(crate) fn new(connections: Arc<Connections>, grace: Duration) -> Self {
        Self {
            connections,
            grace,
            due: VecDeque::new(),
        }
    }

    /// Notes the connections `snapshot`'s table refuses, to be judged again after the grace.
    pub(crate) fn swapped(&mut self, snapshot: &Snapshot) {
        let doomed = self.connections.refused_by(&snapshot.table);
        if doomed.is_empty() {
            return;
        }
        tracing::info!(
            connections = doomed.len(),
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
        let revoked = self.connections.revoke(&doomed, &snapshot.table);
        metrics.revoked.inc_by(revoked as u64);
        if revoked > 0 {
            tracing::info!(
                revoked,
                generation = snapshot.generation,
                "connections revoked"
            );
        }
    }
}
