//! What a connection holds from accept to close without reading it: its places in the
//! global, route and client limits and its endpoint's open count, each released when dropped.

use crate::client_limit::ClientGuard;
use crate::health::LoadGuard;
use crate::metrics::ActiveGuard;
use crate::route_state::RouteSlot;
use crate::slots::Slot;

/// A connection's place in the proxy, taken at accept: its slot in the active gauge and its
/// permit from the global limit (if any), released however the connection ends.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    _active: ActiveGuard,
    _permit: Option<Slot>,
}

impl ConnectionSlot {
    pub(crate) fn new(active: ActiveGuard, permit: Option<Slot>) -> Self {
        Self {
            _active: active,
            _permit: permit,
        }
    }
}

/// What a forwarded connection holds that its task never reads, released when it ends (the
/// registry's scan and a pending revocation hold its `Live` only briefly, or weakly): its
/// slots in the global, route and client limits and its endpoint's open-connection count.
pub(crate) struct Held {
    log_connections: bool,
    _slot: ConnectionSlot,
    route_active: RouteSlot,
    // Boxed: 8 bytes, not 40, in every connection's record when client_limits is off (and
    // one allocation more when it is on); the record fits a 256-byte allocation then.
    _client_slot: Option<Box<ClientGuard>>,
    _load: LoadGuard,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("route", &self.route_active.name())
            .finish_non_exhaustive()
    }
}

impl Held {
    /// What a forwarded connection holds; `log_connections`: whether its close is logged.
    pub(crate) fn new(
        log_connections: bool,
        slot: ConnectionSlot,
        route_active: RouteSlot,
        client_slot: Option<ClientGuard>,
        load: LoadGuard,
    ) -> Self {
        Self {
            log_connections,
            _slot: slot,
            route_active,
            _client_slot: client_slot.map(Box::new),
            _load: load,
        }
    }

    /// Whether the connection's close is logged.
    pub(crate) fn log_connections(&self) -> bool {
        self.log_connections
    }

    /// The name of the route it was forwarded by.
    pub(crate) fn route(&self) -> &str {
        self.route_active.name()
    }
}
