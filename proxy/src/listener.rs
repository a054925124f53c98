//! Listening sockets and the accept loop.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection;
use crate::held::ConnectionSlot;
use crate::route::ListenerKind;
use crate::socket;
use crate::table::Snapshot;
use crate::Proxy;

/// First and last pause after an accept error; doubling in between.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one accept-failure line per listener per interval, with the failures since the
/// last: at the open-files limit accepts fail and succeed in turn as connections close, so
/// "once per burst" was a line per closing connection.
const ACCEPT_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// When an accept failure is logged: the first one, then the first after each interval.
#[derive(Debug, Default)]
struct AcceptWarnings {
    last: Option<Instant>,
    /// Failures not logged since the last line.
    unlogged: u64,
}

impl AcceptWarnings {
    /// Counts a failure at `now`; returns the failures the line due now reports (this one
    /// and those since the last line), or `None` within the interval.
    fn failed(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < ACCEPT_WARNING_INTERVAL)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// A listener's accept loop without its spawning: failures (out of descriptors, an aborted
/// connection) pause with a doubling backoff, never spin, and are logged once per interval with
/// their count. The one loop of the SNI, ClusterID, admin and debug listeners.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    /// Which listener, for the log line.
    what: &'static str,
    backoff: Duration,
    warnings: AcceptWarnings,
}

impl Acceptor {
    /// Accepts from `listener`, named `what` in its log lines.
    pub fn new(listener: TcpListener, what: &'static str) -> Self {
        Self {
            listener,
            what,
            backoff: ACCEPT_BACKOFF_MIN,
            warnings: AcceptWarnings::default(),
        }
    }

    /// The next accepted connection, or `None` once `shutdown` fires.
    pub async fn next(&mut self, shutdown: &CancellationToken) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return None,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok(accepted) => {
                    self.backoff = ACCEPT_BACKOFF_MIN;
                    return Some(accepted);
                }
                Err(error) => {
                    // EMFILE/ENFILE/ENOBUFS/ENOMEM clear up as connections close; a
                    // per-connection error (ECONNABORTED) does too. Either way: pause, never
                    // spin, never exit.
                    if let Some(failures) = self.warnings.failed(Instant::now()) {
                        tracing::warn!(listener = self.what, %error, failures_since_last_line = failures, "accept failed; backing off");
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(self.backoff) => {}
                    }
                    self.backoff = (self.backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }
}

/// Accepts connections until `shutdown` fires, spawning one task per connection on `tasks`.
pub async fn serve(
    listener: TcpListener,
    kind: ListenerKind,
    proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    // The SNI listeners face the internet's scanners; the ClusterID listener's peers are the
    // platform's own load balancers.
    if kind.reads_sni() {
        let limit = proxy.settings.client_hello_timeout;
        if let Err(error) = socket::defer_accept(&listener, limit) {
            tracing::warn!(%error, "cannot set TCP_DEFER_ACCEPT; every connection is accepted at once");
        }
    }
    let what = match kind {
        ListenerKind::Sni => "sni",
        ListenerKind::ClusterId => "cluster_id",
        ListenerKind::Gateway(_) => "gateway",
    };
    let mut acceptor = Acceptor::new(listener, what);
    while let Some((stream, peer)) = acceptor.next(&shutdown).await {
        // The permit is taken here, before a task exists: over the limit, a new connection
        // costs one close and a counter, nothing more.
        let permit = match proxy.settings.max_connections {
            Some(limit) => match proxy.connections_open.try_take(Some(limit)) {
                Some(permit) => Some(permit),
                None => {
                    proxy.refuse_over_limit(peer);
                    continue;
                }
            },
            None => None,
        };
        let slot = ConnectionSlot::new(proxy.metrics.open(), permit);
        tasks.spawn(connection::handle(proxy.clone(), stream, peer, kind, slot));
    }
}

/// How often Gateway listener ports that failed to bind are tried again.
const REBIND_INTERVAL: Duration = Duration::from_secs(2);

/// The Gateway listeners bound now: each port's accept loop, ended by its token.
#[derive(Debug, Default)]
struct Bound {
    ports: BTreeMap<u16, CancellationToken>,
    /// Ports the table names that did not bind (in use, say): tried again.
    failed: BTreeSet<u16>,
}

/// Binds and unbinds the Gateway listeners as the table in use names them
/// ([`Table::listeners`](crate::Table::listeners)), on each of `ips` (those of the `listen`
/// addresses), until `stop_accepting` fires. A port gone from the table stops accepting at once
/// and its socket closes; the connections it accepted run on in `connections` (revocation, if
/// on, judges them like any other), and no other listener or connection is touched. A port
/// that does not bind is logged and tried again every [`REBIND_INTERVAL`].
pub async fn follow_gateway_listeners(
    proxy: Arc<Proxy>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    ips: Vec<IpAddr>,
    backlog: i32,
    stop_accepting: CancellationToken,
    services: TaskTracker,
    connections: TaskTracker,
) {
    let mut bound = Bound::default();
    let mut retry = tokio::time::interval(REBIND_INTERVAL);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wanted: BTreeSet<u16> = snapshots
            .borrow_and_update()
            .table
            .listeners()
            .iter()
            .copied()
            .collect();
        bound.ports.retain(|port, token| {
            let keep = wanted.contains(port);
            if !keep {
                token.cancel();
                tracing::info!(port, "gateway listener unbound");
            }
            keep
        });
        bound.failed.retain(|port| wanted.contains(port));
        let new: Vec<u16> = wanted
            .iter()
            .copied()
            .filter(|p| !bound.ports.contains_key(p))
            .collect();
        for port in new {
            let token = stop_accepting.child_token();
            let mut listeners = Vec::with_capacity(ips.len());
            let mut failure = None;
            for &ip in &ips {
                match crate::socket::bind(SocketAddr::new(ip, port), backlog) {
                    Ok(listener) => listeners.push(listener),
                    Err(error) => failure = Some(error),
                }
            }
            if let Some(error) = failure {
                if bound.failed.insert(port) {
                    tracing::warn!(port, %error, "gateway listener cannot bind; retrying");
                }
                continue;
            }
            bound.failed.remove(&port);
            for listener in listeners {
                if let Ok(addr) = listener.local_addr() {
                    tracing::info!(kind = "gateway", %addr, "listening");
                }
                services.spawn(serve(
                    listener,
                    ListenerKind::Gateway(port),
                    proxy.clone(),
                    token.clone(),
                    connections.clone(),
                ));
            }
            bound.ports.insert(port, token);
        }
        tokio::select! {
            () = stop_accepting.cancelled() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = retry.tick(), if !bound.failed.is_empty() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_are_logged_once_per_interval_with_their_count() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut warnings = AcceptWarnings::default();
        assert_eq!(warnings.failed(at(0)), Some(1));
        // Failures between successes are one run for the log: nothing within the interval.
        for ms in (10..10_000).step_by(10) {
            assert_eq!(warnings.failed(at(ms)), None, "at {ms} ms");
        }
        assert_eq!(warnings.failed(at(10_000)), Some(1000));
        assert_eq!(warnings.failed(at(10_001)), None);
        // A failure long after is logged at once, with those not yet reported.
        assert_eq!(warnings.failed(at(60_000)), Some(2));
    }
}
