//! Revocation: closing established connections that a new table would refuse.
//!
//! HAProxy and Envoy keep such connections until they end by themselves, which can be days
//! for a kubectl watch. Here each forwarded connection is registered with what it was routed
//! by; after every table swap the ones the new table would refuse (route gone, or the client
//! no longer in its allow list) are closed once `revoke_grace` has passed, if the table then
//! in force still refuses them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::name::ServerName;
use crate::table::{Snapshot, Table};

/// What a connection was routed by.
#[derive(Debug, Clone)]
pub(crate) enum RouteKey {
    /// The SNI name.
    Name(ServerName),
    /// The ClusterID TLV.
    ClusterId(Box<str>),
}

impl std::fmt::Display for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(name) => name.fmt(f),
            Self::ClusterId(id) => f.write_str(id),
        }
    }
}

impl RouteKey {
    /// Whether `table` would still route a connection from `client` by this key.
    fn admitted(&self, table: &Table, client: IpAddr) -> bool {
        match self {
            Self::Name(name) => table.lookup(name).is_some_and(|r| r.allows(client)),
            Self::ClusterId(id) => table.lookup_cluster_id(id).is_some(),
        }
    }
}

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
            .filter(|(_, live)| !live.key.admitted(table, live.client))
            .map(|(&id, _)| id)
            .collect()
    }

    /// Closes those of `ids` that `table` still refuses; returns how many.
    fn revoke(&self, ids: &[u64], table: &Table) -> usize {
        let live = self.lock();
        ids.iter()
            .filter_map(|id| live.get(id))
            .filter(|live| !live.key.admitted(table, live.client))
            .inspect(|live| live.revoke.revoke())
            .count()
    }

    /// Follows every published table until `snapshots` closes, revoking after `grace`.
    pub async fn watch(
        self: Arc<Self>,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        grace: Duration,
        metrics: Arc<Metrics>,
    ) {
        while snapshots.changed().await.is_ok() {
            let snapshot = snapshots.borrow_and_update().clone();
            let doomed = self.refused_by(&snapshot.table);
            if doomed.is_empty() {
                continue;
            }
            tracing::info!(
                connections = doomed.len(),
                generation = snapshot.generation,
                grace = ?grace,
                "established connections no longer admitted; revoking after the grace period"
            );
            let connections = self.clone();
            let latest = snapshots.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                // Judged by the table in force now: a route that came back is left alone.
                let table = latest.borrow().clone();
                let revoked = connections.revoke(&doomed, &table.table);
                metrics.revoked.inc_by(revoked as u64);
                if revoked > 0 {
                    tracing::info!(
                        revoked,
                        generation = table.generation,
                        "connections revoked"
                    );
                }
            });
        }
    }
}
