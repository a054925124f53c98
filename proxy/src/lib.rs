//! sniroute's data plane: accept, read the ClientHello, route by SNI, forward bytes.
//!
//! This crate never learns where routes come from: sources publish a [`table::Table`] into a
//! [`table::SharedTable`] and connections read it.
// Denied, not forbidden: `socket::defer_accept` is the one syscall no safe wrapper offers.
#![deny(unsafe_code)]
#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::log_limit::LogLimiter;

/// How often the lines the refusal log budget held back are summarised.
const LOG_SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

pub mod addr;
pub mod balance;
pub mod client_hello;
pub mod client_limit;
pub mod client_text;
pub mod connect;
mod connection;
pub mod error;
pub mod explain;
pub mod forward;
pub mod health;
pub mod hello_budget;
pub mod ja4;
pub mod listener;
mod log_limit;
pub mod metrics;
pub mod name;
pub mod outcome;
pub mod proxy_protocol;
pub mod revoke;
mod route;
pub mod route_state;
pub mod socket;
pub mod table;

pub use client_text::ClientText;
pub use error::{ConnectError, ListenError, NameError, TableError};
pub use health::{Ejected, OutlierPolicy};
pub use metrics::{Metrics, RouteMetrics};
pub use name::{HostPattern, ServerName};
pub use outcome::{Outcome, Reason};
pub use route::ListenerKind;
pub use table::{
    Backend, BackendFacts, Condition, Match, Route, RouteKey, RouteSpec, SharedTable, Snapshot,
    Table,
};

/// The data plane's knobs, fixed for the life of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How long a client has to send a complete ClientHello.
    pub client_hello_timeout: Duration,
    /// How long each backend address has to accept a connection.
    pub connect_timeout: Duration,
    /// How long a forwarded pair may go without a byte either way before it is closed.
    pub idle_timeout: Duration,
    /// The largest ClientHello (all its records, in bytes) that is read before refusing.
    pub max_client_hello: usize,
    /// Connections open at once, over all listeners; `None` is unlimited (the binary always
    /// sets it: from the file, or derived from the open-files limit).
    pub max_connections: Option<usize>,
    /// Whether every forwarded connection logs a summary line when it closes.
    pub log_connections: bool,
    /// When backend endpoints are ejected.
    pub outlier_detection: OutlierPolicy,
    /// Which PROXY headers the SNI listeners take; `None` takes none.
    pub accept_proxy_protocol: Option<proxy_protocol::Expect>,
    /// Peers whose PROXY headers are believed; a header from anyone else is refused.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How long a connection the table no longer admits may go on; `None` never revokes.
    pub revoke_grace: Option<Duration>,
    /// Per-client limits on the SNI listeners; `None` limits no client.
    pub client_limits: Option<client_limit::Policy>,
    /// Bytes the buffers of all connections still reading their ClientHello may hold.
    pub client_hello_memory: usize,
}

/// Everything a connection task needs: the knobs, the current routing table, and the state
/// shared by all connections.
#[derive(Debug)]
pub struct Proxy {
    settings: Settings,
    table: Arc<SharedTable>,
    metrics: Arc<Metrics>,
    connection_limit: Option<Arc<Semaphore>>,
    client_limits: Option<client_limit::ClientLimits>,
    hello_budget: hello_budget::HelloBudget,
    refusal_log: LogLimiter,
    connections: Arc<revoke::Connections>,
}

impl Proxy {
    /// A proxy routing by whatever table is published into `table`, counting into `metrics`.
    pub fn new(settings: Settings, table: Arc<SharedTable>, metrics: Arc<Metrics>) -> Self {
        let connection_limit = settings
            .max_connections
            .map(|limit| Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS))));
        Self {
            client_limits: settings
                .client_limits
                .clone()
                .map(client_limit::ClientLimits::new),
            hello_budget: hello_budget::HelloBudget::new(
                settings.client_hello_memory,
                metrics.client_hello_memory.clone(),
            ),
            settings,
            table,
            metrics,
            connection_limit,
            refusal_log: LogLimiter::new(),
            connections: Arc::default(),
        }
    }

    /// Follows every published table until `snapshots` closes or `shutdown` fires: revokes
    /// connections the new table refuses (if revocation is on); and summarises the refusal
    /// log lines held back, once a second. One task, so a drain waits for nothing it does not
    /// know of.
    pub async fn follow_swaps(
        self: Arc<Self>,
        mut snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
        shutdown: CancellationToken,
    ) {
        let mut revoker = self
            .settings
            .revoke_grace
            .map(|grace| revoke::Revoker::new(self.connections.clone(), grace));
        snapshots.borrow_and_update();
        let mut summary = tokio::time::interval(LOG_SUMMARY_INTERVAL);
        summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let due = async {
                match &revoker {
                    Some(revoker) => revoker.next_due().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.refusal_log.flush();
                    return;
                }
                _ = summary.tick() => self.refusal_log.flush(),
                () = due => {
                    let current = snapshots.borrow().clone();
                    if let Some(revoker) = &mut revoker {
                        revoker.revoke_due(&current, &self.metrics);
                    }
                }
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let current = snapshots.borrow_and_update().clone();
                    if let Some(revoker) = &mut revoker {
                        revoker.swapped(&current);
                    }
                }
            }
        }
    }

    /// The endpoints ejected now, over every route of the table in use, each once.
    pub fn ejected(&self) -> Vec<Ejected> {
        let snapshot = self.table.load();
        let mut list: Vec<Ejected> = snapshot
            .table
            .routes()
            .iter()
            .flat_map(|route| route.endpoints().iter().flat_map(|e| e.known()))
            .filter_map(|target| target.endpoint.ejected(target.addr))
            .collect();
        list.sort_by_key(|e| e.endpoint);
        list.dedup_by_key(|e| e.endpoint);
        list
    }
}
