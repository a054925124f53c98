//! The routing table: the one contract between the control plane and the data plane.
//!
//! A [`Table`] is immutable once built. Sources build a new one and [`SharedTable::publish`]
//! swaps it in; a connection loads the current snapshot once, at routing time, so a swap never
//! touches connections already routed.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::SystemTime;

use arc_swap::ArcSwap;
// Seeded per process like std's, and several times faster than SipHash on hostnames: the
// table is hashed on every connection and rebuilt on every change.
use foldhash::HashMap;
use ipnet::IpNet;

use crate::addr::canonical;
use crate::client_text::ClientText;
use crate::error::TableError;
use crate::name::{HostPattern, ServerName};
use crate::proxy_protocol::Version as ProxyVersion;
use crate::route_state::{Endpoints, RouteState};

/// Where a backend lives: an address, or a DNS name resolved at connect time.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Backend {
    /// A literal socket address: no resolution needed.
    Addr(SocketAddr),
    /// A hostname and port, resolved on every connect so DNS changes are followed.
    Name {
        /// The hostname as configured.
        host: Box<str>,
        /// The TCP port.
        port: u16,
    },
}

impl Backend {
    /// Parses `host:port`, `ipv4:port` or `[ipv6]:port`.
    pub fn parse(raw: &str) -> Result<Self, TableError> {
        let bad = |why: &'static str| TableError::BadBackend {
            backend: raw.to_owned(),
            why,
        };
        if let Ok(addr) = raw.parse::<SocketAddr>() {
            return Ok(Self::Addr(addr));
        }
        let (host, port) = raw.rsplit_once(':').ok_or(bad("missing :port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad("port is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad("port is not a number from 1 to 65535"));
        }
        if host.starts_with('[') || host.contains(':') {
            return Err(bad("not a valid IPv6 address (write it as [addr]:port)"));
        }
        ServerName::parse(host.as_bytes())
            .map_err(|_| bad("host is neither an IP address nor a hostname"))?;
        Ok(Self::Name {
            host: host.into(),
            port,
        })
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(addr) => write!(f, "{addr}"),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Backend({self})")
    }
}

/// Whether an endpoint takes new connections, as its EndpointSlice conditions say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Condition {
    /// Ready: takes new connections.
    #[default]
    Ready,
    /// Serving but terminating (a pod being rolled): new connections only when no ready
    /// endpoint is left; established ones keep flowing.
    Terminating,
}

impl Condition {
    /// `ready` or `terminating`, as `/routes` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Terminating => "terminating",
        }
    }
}

/// What a source knows of one backend beyond its address: where it runs, whether it takes
/// new connections and its share of them. A backend without facts is ready, in no zone, of
/// weight 1.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendFacts {
    /// Its zone (`topology.kubernetes.io/zone`), if known.
    pub zone: Option<Box<str>>,
    /// Whether it takes new connections.
    pub condition: Condition,
    /// Its share of new connections against the route's other backends of the same standing
    /// (the Gateway API's backendRef weight, spread over the Service's endpoints); 1 when the
    /// source says nothing, and 0 is taken as 1 (a source leaves out what takes nothing).
    pub weight: u32,
}

impl Default for BackendFacts {
    fn default() -> Self {
        Self {
            zone: None,
            condition: Condition::Ready,
            weight: 1,
        }
    }
}

/// One route as a source states it: what it answers, where it forwards, whom it admits.
///
/// A plain value: sources keep and compare these (the Kubernetes source caches one list per
/// hosted cluster), and the publish step keeps a table route whose spec comes out `==`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteSpec {
    /// Unique within a table.
    pub name: Box<str>,
    /// The names it answers (at least one).
    pub hostnames: Vec<HostPattern>,
    /// Where it forwards to, in order (at least one).
    pub backends: Vec<Backend>,
    /// What is known of each backend, index for index; empty when nothing is (every backend
    /// ready, in no zone).
    pub facts: Vec<BackendFacts>,
    /// The zone whose backends take new connections first; `None` prefers none.
    pub zone: Option<Box<str>>,
    /// Where it came from, as `/routes` shows it: `file`, `hostedcluster <ns>/<name>`.
    pub source: Arc<str>,
    /// Client networks allowed; empty allows everyone.
    pub allowed_cidrs: Vec<IpNet>,
    /// The hosted cluster's ID, for routing PROXY-v2 connections that name it instead of SNI.
    pub cluster_id: Option<Box<str>>,
    /// Forwarded connections allowed at once; `None` is unlimited.
    pub max_connections: Option<u32>,
    /// The PROXY header sent to the backend before the client's bytes, if any.
    pub proxy_protocol: Option<ProxyVersion>,
    /// Why the route has nowhere to send to, when it has no backend on purpose (a Gateway API
    /// route whose backendRefs are all invalid): it keeps its hostnames, and its connections
    /// are refused, closed without a TLS alert, counted as `backend_unreachable`. `None` for
    /// every route with backends.
    pub no_backend: Option<Arc<str>>,
    /// The Gateway listener the route is served on: the pod port sniroute binds for it (see
    /// [`Table::listeners`]); `None` serves it on the `listen` listeners. Hostnames are
    /// unique per listener, so two Gateways may route one name to two places.
    pub port: Option<u16>,
}

impl RouteSpec {
    /// A route open to every client, without a cluster ID, limit or PROXY header.
    pub fn new(
        name: impl Into<Box<str>>,
        hostnames: Vec<HostPattern>,
        backends: Vec<Backend>,
        source: impl Into<Arc<str>>,
    ) -> Self {
        Self {
            name: name.into(),
            hostnames,
            backends,
            facts: Vec::new(),
            zone: None,
            source: source.into(),
            allowed_cidrs: Vec::new(),
            cluster_id: None,
            max_connections: None,
            proxy_protocol: None,
            no_backend: None,
            port: None,
        }
    }

    /// A route that answers `hostnames` and refuses every connection to them, for `why`
    /// (see [`no_backend`](Self::no_backend)).
    pub fn refusing(
        name: impl Into<Box<str>>,
        hostnames: Vec<HostPattern>,
        why: impl Into<Arc<str>>,
        source: impl Into<Arc<str>>,
    ) -> Self {
        Self {
            no_backend: Some(why.into()),
            ..Self::new(name, hostnames, Vec::new(), source)
        }
    }

    /// Hashes what the route does to traffic (everything but `source`, which only says where
    /// it came from), so replicas can compare tables.
    fn hash_routing<H: Hasher>(&self, state: &mut H) {
        let Self {
            name,
            hostnames,
            backends,
            facts,
            zone,
            source: _,
            allowed_cidrs,
            cluster_id,
            max_connections,
            proxy_protocol,
            no_backend,
            port,
        } = self;
        (name, hostnames, backends, facts, zone, allowed_cidrs).hash(state);
        (
            cluster_id,
            max_connections,
            proxy_protocol,
            no_backend,
            port,
        )
            .hash(state);
    }
}

/// What lets a client use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed<'r> {
    /// The route has no allow list.
    Everyone,
    /// This entry of its `allowed_cidrs`.
    By(&'r IpNet),
}

/// A route in a table: its spec and the state that outlives the table (open count, cursor,
/// each backend's endpoints).
pub struct Route {
    spec: RouteSpec,
    state: Arc<RouteState>,
    /// Index for index with `spec.backends`.
    endpoints: Box<[Endpoints]>,
}

impl Route {
    /// The table route for `spec`, which must name at least one hostname and one backend
    /// (or say why it has none: [`RouteSpec::no_backend`]).
    pub fn new(spec: RouteSpec) -> Result<Self, TableError> {
        if spec.hostnames.is_empty() {
            return Err(TableError::NoHostnames {
                route: spec.name.into(),
            });
        }
        if spec.backends.is_empty() && spec.no_backend.is_none() {
            return Err(TableError::NoBackends {
                route: spec.name.into(),
            });
        }
        if !spec.facts.is_empty() && spec.facts.len() != spec.backends.len() {
            return Err(TableError::FactsMismatch {
                route: spec.name.into(),
                backends: spec.backends.len(),
                facts: spec.facts.len(),
            });
        }
        Ok(Self {
            state: Arc::new(RouteState::new(&spec.name)),
            endpoints: spec
                .backends
                .iter()
                .map(|backend| match backend {
                    Backend::Addr(addr) => Endpoints::at(*addr),
                    Backend::Name { .. } => Endpoints::named(),
                })
                .collect(),
            spec,
        })
    }

    /// The table route for `spec`, which follows `previous` (the route of the same name in
    /// the table in use): it keeps its open count, cursor and counters, and the endpoint
    /// state of every backend still in it, so a swap resets no limit, load or ejection.
    pub fn succeeding(spec: RouteSpec, previous: &Route) -> Result<Self, TableError> {
        let mut route = Self::new(spec)?;
        route.state = previous.state.clone();
        let before: HashMap<&Backend, &Endpoints> = previous
            .spec
            .backends
            .iter()
            .zip(previous.endpoints.iter())
            .collect();
        for (backend, endpoints) in route.spec.backends.iter().zip(route.endpoints.iter_mut()) {
            if let Some(&kept) = before.get(backend) {
                endpoints.clone_from(kept);
            }
        }
        Ok(route)
    }

    /// The state this route shares with the routes of its name before and after it.
    pub fn state(&self) -> &Arc<RouteState> {
        &self.state
    }

    /// The endpoint state of each backend, index for index with [`backends`](Self::backends).
    pub fn endpoints(&self) -> &[Endpoints] {
        &self.endpoints
    }

    /// What the route was built from.
    pub fn spec(&self) -> &RouteSpec {
        &self.spec
    }

    /// The PROXY header version sent to the backend, if any.
    pub fn proxy_protocol(&self) -> Option<ProxyVersion> {
        self.spec.proxy_protocol
    }

    /// The Gateway listener port the route is served on; `None`: the `listen` listeners.
    pub fn port(&self) -> Option<u16> {
        self.spec.port
    }

    /// Why the route refuses every connection, when it has no backend on purpose.
    pub fn no_backend(&self) -> Option<&str> {
        self.spec.no_backend.as_deref()
    }

    /// Forwarded connections allowed at once, if limited.
    pub fn max_connections(&self) -> Option<u32> {
        self.spec.max_connections
    }

    /// The client networks allowed; empty allows everyone.
    pub fn allowed_cidrs(&self) -> &[IpNet] {
        &self.spec.allowed_cidrs
    }

    /// The hosted-cluster ID this route answers, if any.
    pub fn cluster_id(&self) -> Option<&str> {
        self.spec.cluster_id.as_deref()
    }

    /// What admits a client at `addr`, or `None` if nothing does. IPv4-mapped IPv6 peers
    /// (from dual-stack sockets) are checked as the IPv4 address they are.
    pub fn allowing(&self, addr: IpAddr) -> Option<Allowed<'_>> {
        if self.spec.allowed_cidrs.is_empty() {
            return Some(Allowed::Everyone);
        }
        let addr = canonical(addr);
        self.spec
            .allowed_cidrs
            .iter()
            .find(|net| net.contains(&addr))
            .map(Allowed::By)
    }

    /// The route's name, unique within its table.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The hostnames this route answers.
    pub fn hostnames(&self) -> &[HostPattern] {
        &self.spec.hostnames
    }

    /// The backends, in configured order.
    pub fn backends(&self) -> &[Backend] {
        &self.spec.backends
    }

    /// Where the route came from (`file`, or an object reference).
    pub fn source(&self) -> &str {
        &self.spec.source
    }

    /// This connection's turn in the round robin among equally good backends.
    pub fn next_turn(&self) -> usize {
        self.state.next_turn()
    }

    /// The turn [`next_turn`](Self::next_turn) gives the next connection, without taking it
    /// (for `explain`).
    pub fn peek_turn(&self) -> usize {
        self.state.peek_turn()
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.spec.fmt(f)
    }
}

/// What a connection is routed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKey {
    /// The SNI name, on the SNI listeners.
    Name(ServerName),
    /// The SNI name, on the Gateway listener bound on `port`: only the routes of that
    /// Gateway listener answer it.
    OnPort(u16, ServerName),
    /// The ClusterID TLV of a PROXY v2 header, on the ClusterID listener.
    ClusterId(Box<str>),
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) | Self::OnPort(_, name) => name.fmt(f),
            // The client's own bytes: never raw in a log line.
            Self::ClusterId(id) => ClientText::of(id).fmt(f),
        }
    }
}

/// Which pattern of a route a name matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match<'n> {
    /// The name itself is one of the route's hostnames.
    Exact,
    /// `*.suffix`, the longest wildcard that covers the name.
    Wildcard(&'n str),
}

impl fmt::Display for Match<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact => f.write_str("exact"),
            Self::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// A route that admits a connection, and the rule that lets it in.
#[derive(Debug)]
pub struct Admission<'t> {
    /// The route.
    pub route: &'t Arc<Route>,
    /// Why the client may use it; `None` on the ClusterID listener, whose clients are the
    /// hosted cluster's own nodes, identified by the TLV, which allow lists do not name.
    pub allowed: Option<Allowed<'t>>,
}

/// Why the table turns a connection away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No route answers the SNI name.
    UnknownName(ServerName),
    /// No route of the Gateway listener on this port answers the SNI name.
    UnknownOnPort(u16, ServerName),
    /// No route carries the ClusterID.
    UnknownClusterId(Box<str>),
    /// The route's `allowed_cidrs` do not hold the client.
    NotAllowed {
        /// The name the client asked for.
        name: ServerName,
        /// The route that refuses it.
        route: Box<str>,
    },
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownName(name) => write!(f, "no route for {name}"),
            Self::UnknownOnPort(port, name) => {
                write!(
                    f,
                    "no route for {name} on the gateway listener on port {port}"
                )
            }
            Self::UnknownClusterId(id) => {
                write!(f, "no route for cluster ID {}", ClientText::of(id))
            }
            Self::NotAllowed { name, route } => {
                write!(f, "{name}: client not in route {route}'s allowed_cidrs")
            }
        }
    }
}

/// The names one set of listeners answers: the `listen` listeners', or one Gateway
/// listener's.
#[derive(Debug, Default)]
struct Names {
    exact: HashMap<ServerName, Arc<Route>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<ServerName, Arc<Route>>,
}

impl Names {
    /// An exact match first, then the wildcard with the longest suffix.
    fn matching<'n>(&self, name: &'n ServerName) -> Option<(&Arc<Route>, Match<'n>)> {
        if let Some(route) = self.exact.get(name.as_str()) {
            return Some((route, Match::Exact));
        }
        let name = name.as_str();
        // Each '.' starts a shorter suffix; the first one found is the longest that matches.
        name.match_indices('.').find_map(|(dot, _)| {
            let suffix = &name[dot + 1..];
            let route = self.wildcard.get(suffix)?;
            Some((route, Match::Wildcard(suffix)))
        })
    }
}

/// An immutable map from server names to routes.
#[derive(Debug, Default)]
pub struct Table {
    /// The `listen` listeners' names.
    names: Names,
    /// Each Gateway listener's names, by the port it is bound on. A connection looks up one
    /// of these or `names`, never both: a route of one Gateway is never served on another's.
    by_port: HashMap<u16, Names>,
    /// The Gateway listener ports to bind, sorted: every port a route is served on, and the
    /// ones a source names without routes yet.
    listeners: Vec<u16>,
    by_cluster_id: HashMap<Box<str>, Arc<Route>>,
    by_name: HashMap<Box<str>, Arc<Route>>,
    routes: Vec<Arc<Route>>,
}

impl Table {
    /// Builds a table, refusing duplicate route names and hostnames claimed by two routes.
    /// Routes may be new or shared with the table in use (unchanged ones, with their
    /// round-robin cursors).
    pub fn new<R: Into<Arc<Route>>>(routes: Vec<R>) -> Result<Self, TableError> {
        let mut table = Self::default();
        table.by_name.reserve(routes.len());
        // Most routes have one exact hostname: room for one each saves that map rehashing
        // as it grows.
        table.names.exact.reserve(routes.len());
        table.routes.reserve(routes.len());
        for route in routes {
            let route: Arc<Route> = route.into();
            if table
                .by_name
                .insert(route.spec.name.clone(), route.clone())
                .is_some()
            {
                return Err(TableError::DuplicateRoute {
                    route: route.spec.name.to_string(),
                });
            }
            let names = match route.spec.port {
                None => &mut table.names,
                Some(port) => table.by_port.entry(port).or_default(),
            };
            for pattern in &route.spec.hostnames {
                let (map, key) = match pattern {
                    HostPattern::Exact(name) => (&mut names.exact, name),
                    HostPattern::Wildcard(suffix) => (&mut names.wildcard, suffix),
                };
                if let Some(first) = map.insert(key.clone(), route.clone()) {
                    return Err(TableError::DuplicateHostname {
                        hostname: pattern.to_string(),
                        first: first.spec.name.to_string(),
                        second: route.spec.name.to_string(),
                    });
                }
            }
            if let Some(id) = &route.spec.cluster_id {
                if let Some(first) = table.by_cluster_id.insert(id.clone(), route.clone()) {
                    return Err(TableError::DuplicateClusterId {
                        cluster_id: id.to_string(),
                        first: first.spec.name.to_string(),
                        second: route.spec.name.to_string(),
                    });
                }
            }
            table.routes.push(route);
        }
        table.listeners = table.by_port.keys().copied().collect();
        table.listeners.sort_unstable();
        Ok(table)
    }

    /// The table with `ports` among its Gateway listeners too (a Gateway listener with no
    /// route yet is still bound, and refuses every name).
    pub fn with_listeners(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        self.listeners.extend(ports);
        self.listeners.sort_unstable();
        self.listeners.dedup();
        self
    }

    /// The Gateway listener ports to bind, sorted.
    pub fn listeners(&self) -> &[u16] {
        &self.listeners
    }

    /// The route for `name` on the `listen` listeners: an exact match first, then the
    /// wildcard with the longest suffix.
    pub fn lookup(&self, name: &ServerName) -> Option<&Arc<Route>> {
        self.matching(name).map(|(route, _)| route)
    }

    /// [`lookup`](Self::lookup), saying which of the route's patterns matched.
    pub fn matching<'n>(&self, name: &'n ServerName) -> Option<(&Arc<Route>, Match<'n>)> {
        self.names.matching(name)
    }

    /// [`matching`](Self::matching) on the Gateway listener bound on `port` (`None`: the
    /// `listen` listeners).
    pub fn matching_on<'n>(
        &self,
        port: Option<u16>,
        name: &'n ServerName,
    ) -> Option<(&Arc<Route>, Match<'n>)> {
        match port {
            None => self.names.matching(name),
            Some(port) => self.by_port.get(&port)?.matching(name),
        }
    }

    /// Whether a connection routed by `key` from `client` is admitted, and by which route
    /// and rule, or why not. The one admission decision: connections are routed by it,
    /// revocation judges established ones by it, and `explain` reports it.
    pub fn admit(&self, key: &RouteKey, client: IpAddr) -> Result<Admission<'_>, Denial> {
        let (route, name) = match key {
            RouteKey::Name(name) => {
                let route = self
                    .lookup(name)
                    .ok_or_else(|| Denial::UnknownName(name.clone()))?;
                (route, name)
            }
            RouteKey::OnPort(port, name) => {
                let (route, _) = self
                    .matching_on(Some(*port), name)
                    .ok_or_else(|| Denial::UnknownOnPort(*port, name.clone()))?;
                (route, name)
            }
            RouteKey::ClusterId(id) => {
                let route = self
                    .lookup_cluster_id(id)
                    .ok_or_else(|| Denial::UnknownClusterId(id.clone()))?;
                return Ok(Admission {
                    route,
                    allowed: None,
                });
            }
        };
        let allowed = route.allowing(client).ok_or_else(|| Denial::NotAllowed {
            name: name.clone(),
            route: route.spec.name.clone(),
        })?;
        Ok(Admission {
            route,
            allowed: Some(allowed),
        })
    }

    /// The route a PROXY-v2 connection naming hosted-cluster `cluster_id` goes to.
    pub fn lookup_cluster_id(&self, cluster_id: &str) -> Option<&Arc<Route>> {
        self.by_cluster_id.get(cluster_id)
    }

    /// The route named `name`.
    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.by_name.get(name)
    }

    /// Every route, in the order the source gave them.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// A hash of what the table routes (every route's spec but its source), the same on every
    /// replica serving the same routes in any order, and different once one route differs.
    /// 53 bits, so a metric's float carries it exactly.
    pub fn fingerprint(&self) -> u64 {
        // SipHash with fixed keys: stable across processes, unlike the table's own hasher.
        let fixed = std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default();
        let sum = self.routes.iter().fold(0u64, |sum, route| {
            let mut hasher = fixed.build_hasher();
            route.spec.hash_routing(&mut hasher);
            // A sum does not depend on the order sources listed the routes in.
            sum.wrapping_add(hasher.finish())
        });
        let hash = if self.listeners.is_empty() {
            fixed.hash_one((sum, self.routes.len()))
        } else {
            fixed.hash_one((sum, self.routes.len(), &self.listeners))
        };
        hash & ((1 << 53) - 1)
    }
}

impl std::borrow::Borrow<str> for ServerName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// A published table with the facts an operator asks about it.
#[derive(Debug)]
pub struct Snapshot {
    /// The routes.
    pub table: Table,
    /// Counts publishes: 0 is the empty table before the first load.
    pub generation: u64,
    /// When this table was published.
    pub loaded_at: SystemTime,
}

/// The current routing table, swapped atomically; readers never block writers or each other.
#[derive(Debug)]
pub struct SharedTable {
    current: ArcSwap<Snapshot>,
    /// Routes gone from the table while connections were still open through them, so the
    /// metrics go on counting those until they close. Locked by publishes and scrapes only.
    retired: Mutex<Vec<Weak<RouteState>>>,
}

impl Default for SharedTable {
    fn default() -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot {
                table: Table::default(),
                generation: 0,
                loaded_at: SystemTime::now(),
            }),
            retired: Mutex::default(),
        }
    }
}

impl SharedTable {
    /// The current snapshot; hold it only as long as one routing decision.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Swaps `table` in as the next generation and returns the published snapshot.
    ///
    /// Publishing is expected from one control task at a time; concurrent publishers would
    /// still swap atomically but could reuse a generation number.
    pub fn publish(&self, table: Table) -> Arc<Snapshot> {
        let previous = self.current.load_full();
        let snapshot = Arc::new(Snapshot {
            table,
            generation: previous.generation + 1,
            loaded_at: SystemTime::now(),
        });
        self.current.store(snapshot.clone());
        self.retired().extend(
            previous
                .table
                .routes()
                .iter()
                .filter(|route| route.state.open() > 0)
                .filter(|route| snapshot.table.route(route.name()).is_none())
                .map(|route| Arc::downgrade(&route.state)),
        );
        snapshot
    }

    /// The routes gone from the table that still carry connections, and whose name no route
    /// of the current table has.
    pub fn retired_busy(&self) -> Vec<Arc<RouteState>> {
        let current = self.current.load();
        self.retired()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|state| current.table.route(state.name()).is_none())
            .collect()
    }

    /// The retired list, rid of the routes that have gone idle or been dropped since.
    fn retired(&self) -> MutexGuard<'_, Vec<Weak<RouteState>>> {
        // A list of weak pointers: a panic elsewhere cannot leave it inconsistent.
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        retired.retain(|state| state.upgrade().is_some_and(|s| s.open() > 0));
        retired
    }

    /// Whether a source has published at least one table.
    pub fn is_loaded(&self) -> bool {
        self.current.load().generation > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, hosts: &[&str], backends: &[&str]) -> RouteSpec {
        RouteSpec::new(
            name,
            hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            backends
                .iter()
                .map(|b| Backend::parse(b).unwrap())
                .collect(),
            "test",
        )
    }

    fn route(name: &str, hosts: &[&str], backends: &[&str]) -> Route {
        Route::new(spec(name, hosts, backends)).unwrap()
    }

    fn lookup<'t>(table: &'t Table, name: &str) -> Option<&'t str> {
        table
            .lookup(&ServerName::parse(name.as_bytes()).unwrap())
            .map(|r| r.name())
    }

    #[test]
    fn exact_beats_wildcard_and_longer_suffix_beats_shorter() {
        let table = Table::new(vec![
            route("exact", &["api.apps.example.test"], &["127.0.0.1:1"]),
            route("apps", &["*.apps.example.test"], &["127.0.0.1:2"]),
            route("all", &["*.example.test"], &["127.0.0.1:3"]),
        ])
        .unwrap();
        assert_eq!(lookup(&table, "api.apps.example.test"), Some("exact"));
        assert_eq!(lookup(&table, "API.Apps.Example.Test."), Some("exact"));
        assert_eq!(lookup(&table, "x.apps.example.test"), Some("apps"));
        assert_eq!(lookup(&table, "y.x.apps.example.test"), Some("apps"));
        assert_eq!(lookup(&table, "apps.example.test"), Some("all"));
        assert_eq!(lookup(&table, "example.test"), None);
        assert_eq!(lookup(&table, "other.test"), None);
    }

    #[test]
    fn refuses_a_hostname_claimed_twice() {
        let err = Table::new(vec![
            route("a", &["x.test"], &["127.0.0.1:1"]),
            route("b", &["X.test."], &["127.0.0.1:2"]),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "hostname x.test is claimed by route a and route b"
        );
        assert!(Table::new(vec![
            route("a", &["x.test"], &["127.0.0.1:1"]),
            route("a", &["y.test"], &["127.0.0.1:2"]),
        ])
        .is_err());
    }

    #[test]
    fn a_route_has_backends_or_says_why_it_has_none() {
        let bare = spec("bare", &["x.test"], &[]);
        assert!(matches!(
            Route::new(bare),
            Err(TableError::NoBackends { .. })
        ));
        let why = "Service tenants/gone does not exist";
        let refusing = RouteSpec::refusing(
            "refusing",
            vec![HostPattern::parse("x.test").unwrap()],
            why,
            "test",
        );
        let table = Table::new(vec![Route::new(refusing.clone()).unwrap()]).unwrap();
        // It holds its name: looked up like any route, and refusing by its own rule.
        let route = table
            .lookup(&ServerName::parse(b"x.test").unwrap())
            .unwrap();
        assert_eq!((route.name(), route.no_backend()), ("refusing", Some(why)));
        // Why it refuses is part of what it routes.
        let other = RouteSpec {
            no_backend: Some("another reason".into()),
            ..refusing.clone()
        };
        let fingerprint = |s: RouteSpec| {
            Table::new(vec![Route::new(s).unwrap()])
                .unwrap()
                .fingerprint()
        };
        assert_ne!(fingerprint(refusing), fingerprint(other));
    }

    #[test]
    fn gateway_listeners_answer_their_own_routes_only() {
        let on = |port, spec: RouteSpec| {
            Route::new(RouteSpec {
                port: Some(port),
                ..spec
            })
            .unwrap()
        };
        let table = Table::new(vec![
            route("listen", &["x.test"], &["127.0.0.1:1"]),
            on(20000, spec("a", &["x.test"], &["127.0.0.1:2"])),
            on(20001, spec("b", &["x.test", "*.b.test"], &["127.0.0.1:3"])),
        ])
        .unwrap()
        .with_listeners([20002, 20000]);
        assert_eq!(table.listeners(), [20000, 20001, 20002]);
        let name = |n: &str| ServerName::parse(n.as_bytes()).unwrap();
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let admitted = |key: RouteKey| table.admit(&key, client).map(|a| a.route.name().to_owned());
        assert_eq!(
            admitted(RouteKey::Name(name("x.test"))).as_deref(),
            Ok("listen")
        );
        assert_eq!(
            admitted(RouteKey::OnPort(20000, name("x.test"))).as_deref(),
            Ok("a")
        );
        assert_eq!(
            admitted(RouteKey::OnPort(20001, name("x.test"))).as_deref(),
            Ok("b")
        );
        assert_eq!(
            admitted(RouteKey::OnPort(20001, name("y.b.test"))).as_deref(),
            Ok("b")
        );
        // Another Gateway's name, a bound port with no route, and the listen listeners: refused.
        assert_eq!(
            admitted(RouteKey::OnPort(20000, name("y.b.test"))),
            Err(Denial::UnknownOnPort(20000, name("y.b.test")))
        );
        assert!(admitted(RouteKey::OnPort(20002, name("x.test"))).is_err());
        assert!(admitted(RouteKey::Name(name("y.b.test"))).is_err());
        // Hostnames are unique per listener.
        assert!(Table::new(vec![
            on(20000, spec("a", &["x.test"], &["127.0.0.1:2"])),
            on(20000, spec("c", &["x.test"], &["127.0.0.1:4"])),
        ])
        .is_err());
    }

    #[test]
    fn turns_advance_per_connection_and_peeking_takes_none() {
        let r = route("r", &["x.test"], &["127.0.0.1:1"]);
        assert_eq!((r.peek_turn(), r.next_turn(), r.next_turn()), (0, 0, 1));
        assert_eq!(r.peek_turn(), 2);
    }

    #[test]
    fn allow_lists_check_the_peer_address() {
        let open = route("open", &["a.test"], &["127.0.0.1:1"]);
        assert!(open.allowing("192.0.2.1".parse().unwrap()).is_some());
        let r = Route::new(RouteSpec {
            allowed_cidrs: vec![
                "127.0.0.1/32".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            ..spec("r", &["x.test"], &["127.0.0.1:1"])
        })
        .unwrap();
        assert!(r.allowing("127.0.0.1".parse().unwrap()).is_some());
        assert!(r.allowing("::ffff:127.0.0.1".parse().unwrap()).is_some());
        assert!(r.allowing("2001:db8::5".parse().unwrap()).is_some());
        assert!(r.allowing("127.0.0.2".parse().unwrap()).is_none());
        assert!(r.allowing("::1".parse().unwrap()).is_none());
    }

    fn with_cluster_id(spec: RouteSpec, id: &str) -> Route {
        Route::new(RouteSpec {
            cluster_id: Some(id.into()),
            ..spec
        })
        .unwrap()
    }

    #[test]
    fn cluster_ids_are_unique_and_looked_up() {
        let table = Table::new(vec![
            with_cluster_id(spec("a", &["a.test"], &["127.0.0.1:1"]), "id-a"),
            route("b", &["b.test"], &["127.0.0.1:2"]),
        ])
        .unwrap();
        assert_eq!(table.lookup_cluster_id("id-a").map(|r| r.name()), Some("a"));
        assert!(table.lookup_cluster_id("id-b").is_none());
        assert!(Table::new(vec![
            with_cluster_id(spec("a", &["a.test"], &["127.0.0.1:1"]), "x"),
            with_cluster_id(spec("b", &["b.test"], &["127.0.0.1:2"]), "x"),
        ])
        .is_err());
    }

    #[test]
    fn admission_names_the_route_and_rule_or_why_not() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        let guarded = RouteSpec {
            allowed_cidrs: vec![net],
            cluster_id: Some("id-g".into()),
            ..spec("g", &["g.test"], &["127.0.0.1:1"])
        };
        let table = Table::new(vec![
            Route::new(guarded).unwrap(),
            route("open", &["*.open.test"], &["127.0.0.1:2"]),
        ])
        .unwrap();
        let name = |n: &str| RouteKey::Name(ServerName::parse(n.as_bytes()).unwrap());
        let inside: IpAddr = "10.1.2.3".parse().unwrap();
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        let admitted = table.admit(&name("g.test"), inside).unwrap();
        assert_eq!(admitted.route.name(), "g");
        assert_eq!(admitted.allowed, Some(Allowed::By(&net)));
        assert_eq!(
            table.admit(&name("g.test"), outside).unwrap_err(),
            Denial::NotAllowed {
                name: ServerName::parse(b"g.test").unwrap(),
                route: "g".into()
            }
        );
        let open = table.admit(&name("x.open.test"), outside).unwrap();
        assert_eq!(open.allowed, Some(Allowed::Everyone));
        assert!(matches!(
            table.admit(&name("nope.test"), inside),
            Err(Denial::UnknownName(_))
        ));
        // The ClusterID listener's clients are the cluster's nodes: no allow list applies.
        let by_id = table
            .admit(&RouteKey::ClusterId("id-g".into()), outside)
            .unwrap();
        assert_eq!((by_id.route.name(), by_id.allowed), ("g", None));
        assert!(matches!(
            table.admit(&RouteKey::ClusterId("id-x".into()), inside),
            Err(Denial::UnknownClusterId(_))
        ));
    }

    #[test]
    fn fingerprints_follow_what_is_routed_not_order_or_source() {
        let table = |specs: Vec<RouteSpec>| {
            let routes: Vec<Route> = specs.into_iter().map(|s| Route::new(s).unwrap()).collect();
            Table::new(routes).unwrap().fingerprint()
        };
        let a = spec("a", &["a.test"], &["127.0.0.1:1"]);
        let b = spec("b", &["b.test"], &["127.0.0.1:2"]);
        let base = table(vec![a.clone(), b.clone()]);
        assert!(base < 1 << 53);
        assert_eq!(base, table(vec![b.clone(), a.clone()]));
        let elsewhere = RouteSpec {
            source: "hostedcluster ns/a".into(),
            ..a.clone()
        };
        assert_eq!(base, table(vec![elsewhere, b.clone()]));
        let changes = [
            spec("a", &["a.test"], &["127.0.0.1:3"]),
            spec("a", &["a.test", "x.test"], &["127.0.0.1:1"]),
            spec("a2", &["a.test"], &["127.0.0.1:1"]),
            RouteSpec {
                allowed_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
                ..a.clone()
            },
            RouteSpec {
                max_connections: Some(5),
                ..a.clone()
            },
            RouteSpec {
                proxy_protocol: Some(ProxyVersion::V2),
                ..a.clone()
            },
            RouteSpec {
                cluster_id: Some("id".into()),
                ..a.clone()
            },
            RouteSpec {
                zone: Some("z1".into()),
                ..a.clone()
            },
        ];
        for changed in changes {
            let what = format!("{changed:?}");
            assert_ne!(base, table(vec![changed, b.clone()]), "{what}");
        }
        assert_ne!(base, table(vec![a]));
    }

    #[test]
    fn fingerprints_follow_endpoint_conditions_and_zones() {
        let fingerprint = |facts: Vec<BackendFacts>| {
            let specs = RouteSpec {
                facts,
                ..spec("a", &["a.test"], &["127.0.0.1:1", "127.0.0.1:2"])
            };
            Table::new(vec![Route::new(specs).unwrap()])
                .unwrap()
                .fingerprint()
        };
        let ready = BackendFacts::default();
        let terminating = BackendFacts {
            condition: Condition::Terminating,
            ..BackendFacts::default()
        };
        let zoned = BackendFacts {
            zone: Some("z1".into()),
            ..BackendFacts::default()
        };
        let base = fingerprint(vec![ready.clone(), ready.clone()]);
        assert_ne!(base, fingerprint(vec![ready.clone(), terminating]));
        assert_ne!(base, fingerprint(vec![zoned, ready.clone()]));
        let one = RouteSpec {
            facts: vec![ready],
            ..spec("a", &["a.test"], &["127.0.0.1:1", "127.0.0.1:2"])
        };
        assert!(matches!(
            Route::new(one),
            Err(TableError::FactsMismatch { .. })
        ));
    }

    #[test]
    fn parses_backends() {
        assert_eq!(
            Backend::parse("[::1]:6443").unwrap(),
            Backend::Addr("[::1]:6443".parse().unwrap())
        );
        assert_eq!(
            Backend::parse("kas.ns.svc:6443").unwrap().to_string(),
            "kas.ns.svc:6443"
        );
        for bad in [
            "nohost", "x:0", "x:65536", "x:http", "::1:6443", ":443", "a b:1",
        ] {
            assert!(Backend::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn publish_counts_generations() {
        let shared = SharedTable::default();
        assert!(!shared.is_loaded());
        let old = shared.load();
        shared.publish(Table::new(vec![route("a", &["x.test"], &["127.0.0.1:1"])]).unwrap());
        assert!(shared.is_loaded());
        assert_eq!(shared.load().generation, 1);
        assert_eq!(
            old.generation, 0,
            "a held snapshot is never changed by a swap"
        );
    }
}
