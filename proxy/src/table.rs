//! The routing table: the one contract between the control plane and the data plane.
//!
//! A [`Table`] is immutable once built. Sources build a new one and [`SharedTable::publish`]
//! swaps it in; a connection loads the current snapshot once, at routing time, so a swap never
//! touches connections already routed.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
// Seeded per process like std's, and several times faster than SipHash on hostnames: the
// table is hashed on every connection and rebuilt on every change.
use foldhash::HashMap;
use ipnet::IpNet;

use crate::error::TableError;
use crate::name::{HostPattern, ServerName};
use crate::proxy_protocol::Version as ProxyVersion;

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

/// One route: the hostnames it answers and the backends it forwards to.
pub struct Route {
    name: Box<str>,
    hostnames: Vec<HostPattern>,
    backends: Vec<Backend>,
    source: Box<str>,
    /// Client networks allowed to use the route; empty allows everyone.
    allowed_cidrs: Vec<IpNet>,
    /// The hosted cluster's ID, for routing PROXY-v2 connections that name it instead of SNI.
    cluster_id: Option<Box<str>>,
    /// Forwarded connections allowed at once; `None` is unlimited.
    max_connections: Option<u32>,
    /// The PROXY header sent to the backend before the client's bytes, if any.
    proxy_protocol: Option<ProxyVersion>,
    /// Round-robin cursor; shared by every connection that routes here through this table.
    next: AtomicUsize,
}

impl Route {
    /// A route named `name` (unique in a table) from `source` (e.g. `file`).
    pub fn new(
        name: impl Into<Box<str>>,
        hostnames: Vec<HostPattern>,
        backends: Vec<Backend>,
        source: impl Into<Box<str>>,
    ) -> Result<Self, TableError> {
        let name = name.into();
        if hostnames.is_empty() {
            return Err(TableError::NoHostnames { route: name.into() });
        }
        if backends.is_empty() {
            return Err(TableError::NoBackends { route: name.into() });
        }
        Ok(Self {
            name,
            hostnames,
            backends,
            source: source.into(),
            allowed_cidrs: Vec::new(),
            cluster_id: None,
            max_connections: None,
            proxy_protocol: None,
            next: AtomicUsize::new(0),
        })
    }

    /// Restricts the route to clients from `cidrs` (empty: everyone).
    pub fn with_allowed_cidrs(mut self, cidrs: Vec<IpNet>) -> Self {
        self.allowed_cidrs = cidrs;
        self
    }

    /// Makes the route reachable by this hosted-cluster ID as well as by its hostnames.
    pub fn with_cluster_id(mut self, cluster_id: impl Into<Box<str>>) -> Self {
        self.cluster_id = Some(cluster_id.into());
        self
    }

    /// Limits the route to `limit` forwarded connections at once.
    pub fn with_max_connections(mut self, limit: u32) -> Self {
        self.max_connections = Some(limit);
        self
    }

    /// Sends a PROXY header of `version` with the client's address to the backend.
    pub fn with_proxy_protocol(mut self, version: ProxyVersion) -> Self {
        self.proxy_protocol = Some(version);
        self
    }

    /// The PROXY header version sent to the backend, if any.
    pub fn proxy_protocol(&self) -> Option<ProxyVersion> {
        self.proxy_protocol
    }

    /// Forwarded connections allowed at once, if limited.
    pub fn max_connections(&self) -> Option<u32> {
        self.max_connections
    }

    /// The client networks allowed; empty allows everyone.
    pub fn allowed_cidrs(&self) -> &[IpNet] {
        &self.allowed_cidrs
    }

    /// The hosted-cluster ID this route answers, if any.
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// Whether a client at `addr` may use this route. IPv4-mapped IPv6 peers (from dual-stack
    /// sockets) are checked as the IPv4 address they are.
    pub fn allows(&self, addr: IpAddr) -> bool {
        if self.allowed_cidrs.is_empty() {
            return true;
        }
        let addr = canonical(addr);
        self.allowed_cidrs.iter().any(|net| net.contains(&addr))
    }

    /// The route's name, unique within its table.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hostnames this route answers.
    pub fn hostnames(&self) -> &[HostPattern] {
        &self.hostnames
    }

    /// The backends, in configured order.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Where the route came from (`file`, or an object reference).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The backends in the order this connection should try them: each call starts one
    /// further along, so load spreads round robin and a failed one is followed by the next.
    pub fn backends_in_turn(&self) -> impl Iterator<Item = &Backend> {
        let start = self.next.fetch_add(1, Ordering::Relaxed) % self.backends.len();
        self.backends[start..].iter().chain(&self.backends[..start])
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("hostnames", &self.hostnames)
            .field("backends", &self.backends)
            .field("source", &self.source)
            .field("allowed_cidrs", &self.allowed_cidrs)
            .field("cluster_id", &self.cluster_id)
            .field("max_connections", &self.max_connections)
            .field("proxy_protocol", &self.proxy_protocol)
            .finish()
    }
}

/// A client address as networks are checked against it: IPv4-mapped IPv6 addresses (from
/// dual-stack sockets) are the IPv4 address they carry.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An immutable map from server names to routes.
#[derive(Debug, Default)]
pub struct Table {
    exact: HashMap<ServerName, Arc<Route>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<ServerName, Arc<Route>>,
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
        table.exact.reserve(routes.len());
        table.routes.reserve(routes.len());
        for route in routes {
            let route: Arc<Route> = route.into();
            if table
                .by_name
                .insert(route.name.clone(), route.clone())
                .is_some()
            {
                return Err(TableError::DuplicateRoute {
                    route: route.name.to_string(),
                });
            }
            for pattern in &route.hostnames {
                let (map, key) = match pattern {
                    HostPattern::Exact(name) => (&mut table.exact, name),
                    HostPattern::Wildcard(suffix) => (&mut table.wildcard, suffix),
                };
                if let Some(first) = map.insert(key.clone(), route.clone()) {
                    return Err(TableError::DuplicateHostname {
                        hostname: pattern.to_string(),
                        first: first.name.to_string(),
                        second: route.name.to_string(),
                    });
                }
            }
            if let Some(id) = &route.cluster_id {
                if let Some(first) = table.by_cluster_id.insert(id.clone(), route.clone()) {
                    return Err(TableError::DuplicateClusterId {
                        cluster_id: id.to_string(),
                        first: first.name.to_string(),
                        second: route.name.to_string(),
                    });
                }
            }
            table.routes.push(route);
        }
        Ok(table)
    }

    /// The route for `name`: an exact match first, then the wildcard with the longest suffix.
    pub fn lookup(&self, name: &ServerName) -> Option<&Arc<Route>> {
        if let Some(route) = self.exact.get(name.as_str()) {
            return Some(route);
        }
        let name = name.as_str();
        // Each '.' starts a shorter suffix; the first one found is the longest that matches.
        name.match_indices('.')
            .find_map(|(dot, _)| self.wildcard.get(&name[dot + 1..]))
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
}

impl Default for SharedTable {
    fn default() -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot {
                table: Table::default(),
                generation: 0,
                loaded_at: SystemTime::now(),
            }),
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
        let generation = self.current.load().generation + 1;
        let snapshot = Arc::new(Snapshot {
            table,
            generation,
            loaded_at: SystemTime::now(),
        });
        self.current.store(snapshot.clone());
        snapshot
    }

    /// Whether a source has published at least one table.
    pub fn is_loaded(&self) -> bool {
        self.current.load().generation > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, hosts: &[&str], backends: &[&str]) -> Route {
        Route::new(
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
        .unwrap()
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
    fn backends_rotate_and_wrap() {
        let r = route(
            "r",
            &["x.test"],
            &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
        );
        let order = |r: &Route| {
            r.backends_in_turn()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(order(&r), ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        assert_eq!(order(&r), ["127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:1"]);
        assert_eq!(order(&r), ["127.0.0.1:3", "127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(order(&r), ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
    }

    #[test]
    fn allow_lists_check_the_peer_address() {
        let open = route("open", &["a.test"], &["127.0.0.1:1"]);
        assert!(open.allows("192.0.2.1".parse().unwrap()));
        let r = route("r", &["x.test"], &["127.0.0.1:1"]).with_allowed_cidrs(vec![
            "127.0.0.1/32".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ]);
        assert!(r.allows("127.0.0.1".parse().unwrap()));
        assert!(r.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(r.allows("2001:db8::5".parse().unwrap()));
        assert!(!r.allows("127.0.0.2".parse().unwrap()));
        assert!(!r.allows("::1".parse().unwrap()));
    }

    #[test]
    fn cluster_ids_are_unique_and_looked_up() {
        let table = Table::new(vec![
            route("a", &["a.test"], &["127.0.0.1:1"]).with_cluster_id("id-a"),
            route("b", &["b.test"], &["127.0.0.1:2"]),
        ])
        .unwrap();
        assert_eq!(table.lookup_cluster_id("id-a").map(|r| r.name()), Some("a"));
        assert!(table.lookup_cluster_id("id-b").is_none());
        assert!(Table::new(vec![
            route("a", &["a.test"], &["127.0.0.1:1"]).with_cluster_id("x"),
            route("b", &["b.test"], &["127.0.0.1:2"]).with_cluster_id("x"),
        ])
        .is_err());
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
