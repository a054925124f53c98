//! sniroute's data plane: accept, read the ClientHello, route by SNI, forward bytes.
//!
//! This crate never learns where routes come from: sources publish a [`Table`] into a
//! [`SharedTable`] and connections read it.
// Denied, not forbidden: `socket::defer_accept` is the one syscall no safe wrapper offers.
#![deny(unsafe_code)]
#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::log_limit::LogLimiter;

/// How often the lines the refusal log budget held back are summarised.
const LOG_SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

// Private modules and a curated surface (as rustls does): what control and the binary use is
// below; what only benches and fuzz targets reach is in `internals`.
mod addr;
mod balance;
mod client_hello;
mod client_limit;
mod client_text;
mod connect;
mod connection;
mod error;
mod explain;
mod forward;
mod health;
mod held;
mod hello_budget;
mod ja4;
mod listener;
mod log_limit;
mod metrics;
mod name;
mod outcome;
mod proxy_protocol;
mod revoke;
mod route;
mod route_state;
mod slots;
mod socket;
mod table;

pub use addr::canonical_net;
pub use balance::{Candidate, Standing};
pub use client_limit::{Policy as ClientLimitPolicy, Rate};
pub use client_text::ClientText;
pub use error::{ConnectError, ListenError, NameError, TableError};
pub use explain::{Admitted, BackendNow, Described, Explanation, RouteFacts};
pub use health::{Ejected, Endpoint, LoadGuard, OutlierPolicy, Target};
pub use listener::{follow_gateway_listeners, serve, Acceptor};
pub use metrics::{Metrics, RouteMetrics};
pub use name::{HostPattern, ServerName};
pub use outcome::{Outcome, Reason};
pub use proxy_protocol::{Expect as ProxyExpect, Version as ProxyVersion};
pub use route::ListenerKind;
pub use route_state::{Endpoints, RouteState};
pub use socket::{bind, raise_open_files_limit, OpenFiles, DEFAULT_BACKLOG};
pub use table::{
    Allowed, Backend, BackendFacts, Condition, Denial, Match, Route, RouteKey, RouteSpec,
    SharedTable, Snapshot, Table,
};

/// Not API: what the benches and fuzz targets reach into (the parsers, the balancing step,
/// the client limiter). It changes with any commit.
#[doc(hidden)]
pub mod internals {
    /// The ClientHello parser.
    pub mod client_hello {
        pub use crate::client_hello::*;
    }
    /// The PROXY protocol codec.
    pub mod proxy_protocol {
        pub use crate::proxy_protocol::*;
    }
    /// The per-client limiter.
    pub mod client_limit {
        pub use crate::client_limit::*;
    }
    /// Forwarding a pair of sockets.
    pub mod forward {
        pub use crate::forward::{forward, Totals};
    }
    pub use crate::balance::pick;
}

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
    /// Connections open over all listeners, against `settings.max_connections`.
    connections_open: Arc<slots::Slots>,
    client_limits: Option<client_limit::ClientLimits>,
    hello_budget: hello_budget::HelloBudget,
    refusal_log: LogLimiter,
    connections: Arc<revoke::Connections<held::Held>>,
}

impl Proxy {
    /// A proxy routing by whatever table is published into `table`, counting into `metrics`.
    pub fn new(settings: Settings, table: Arc<SharedTable>, metrics: Arc<Metrics>) -> Self {
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
            connections_open: Arc::default(),
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
