//! A desired route as a source states it, before the publish step turns it into a table route.
//!
//! [`proxy::Route`] is built once per table and cannot be cloned (it carries its round-robin
//! cursor), so sources keep their routes in this plain, clonable form: the Kubernetes source
//! caches one list of these per hosted cluster and only rebuilds the clusters that changed,
//! and the publish step merges every source's list into one [`proxy::Table`].

use std::sync::Arc;

use ipnet::IpNet;
use proxy::{Backend, HostPattern, Route, TableError};

/// One route wanted by a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Unique within its source; the publish step keeps it unique across sources.
    pub name: Box<str>,
    /// The names it answers (at least one).
    pub hostnames: Vec<HostPattern>,
    /// Where it forwards to, in order (at least one).
    pub backends: Vec<Backend>,
    /// Where it came from, as `/routes` shows it: `file`, `hostedcluster <ns>/<name>`.
    pub source: Arc<str>,
    /// Client networks allowed; empty allows everyone.
    pub allowed_cidrs: Vec<IpNet>,
    /// The hosted cluster's ID, for PROXY-v2 connections that name it instead of SNI.
    pub cluster_id: Option<Box<str>>,
    /// Forwarded connections allowed at once; `None` is unlimited.
    pub max_connections: Option<u32>,
    /// The PROXY header sent to the backends, if any.
    pub proxy_protocol: Option<proxy::proxy_protocol::Version>,
}

// === impl RouteSpec ===

impl RouteSpec {
    /// A route open to every client, without a cluster ID.
    pub fn new(
        name: impl Into<Box<str>>,
        hostnames: Vec<HostPattern>,
        backends: Vec<Backend>,
        source: Arc<str>,
    ) -> Self {
        Self {
            name: name.into(),
            hostnames,
            backends,
            source,
            allowed_cidrs: Vec::new(),
            cluster_id: None,
            max_connections: None,
            proxy_protocol: None,
        }
    }

    /// The table route for this spec.
    pub fn to_route(&self) -> Result<Route, TableError> {
        self.build(self.hostnames.clone(), true)
    }

    /// The table route for this spec with only `hostnames`, and without its cluster ID unless
    /// `with_cluster_id` (the publish step drops what another route already claims).
    pub(crate) fn build(
        &self,
        hostnames: Vec<HostPattern>,
        with_cluster_id: bool,
    ) -> Result<Route, TableError> {
        let mut route = Route::new(&*self.name, hostnames, self.backends.clone(), &*self.source)?;
        if !self.allowed_cidrs.is_empty() {
            route = route.with_allowed_cidrs(self.allowed_cidrs.clone());
        }
        if let (Some(id), true) = (&self.cluster_id, with_cluster_id) {
            route = route.with_cluster_id(&**id);
        }
        if let Some(limit) = self.max_connections {
            route = route.with_max_connections(limit);
        }
        if let Some(version) = self.proxy_protocol {
            route = route.with_proxy_protocol(version);
        }
        Ok(route)
    }

    /// Whether `route` is what [`build`](Self::build) would make of this spec with
    /// `hostnames` and `with_cluster_id`, so the table in use can keep it.
    pub(crate) fn built_as(
        &self,
        route: &Route,
        hostnames: &[&HostPattern],
        with_cluster_id: bool,
    ) -> bool {
        let cluster_id = self.cluster_id.as_deref().filter(|_| with_cluster_id);
        route.name() == &*self.name
            && route.hostnames().iter().eq(hostnames.iter().copied())
            && route.backends() == self.backends
            && route.source() == &*self.source
            && route.allowed_cidrs() == self.allowed_cidrs
            && route.cluster_id() == cluster_id
            && route.max_connections() == self.max_connections
            && route.proxy_protocol() == self.proxy_protocol
    }
}
