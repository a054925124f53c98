//! The one publish step: every source hands its routes here, never to the `ArcSwap`.
//!
//! Each source (the file, Kubernetes) states the complete set of routes it wants with
//! [`Publisher::update`]. The publisher keeps the latest set from every source, merges them
//! into one [`Table`] (the file wins every conflict; between Kubernetes routes the first in
//! the source's order wins), swaps it in, logs what changed, and tells subscribers (the
//! revocation hook) about the new snapshot. A source that fails simply stops calling
//! `update`: its last good routes stay in the table.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use foldhash::{HashMap, HashMapExt};
use proxy::{HostPattern, Route, SharedTable, Snapshot, Table, TableError};
use tokio::sync::watch;

use crate::metrics::ControlMetrics;
use proxy::RouteSpec;

use crate::source::SourceKind;

/// Merges every source's routes into tables and swaps them in, one at a time.
#[derive(Debug)]
pub struct Publisher {
    shared: Arc<SharedTable>,
    /// The latest routes of every source. Held from reading the previous table to storing the
    /// next, so two sources never diff against the same previous table or reuse a generation.
    state: Mutex<Sources>,
    /// Every published snapshot, for whoever must react to a swap (revocation).
    snapshots: watch::Sender<Arc<Snapshot>>,
    metrics: ControlMetrics,
}

#[derive(Debug, Default)]
struct Sources {
    /// Each source's routes, as the slices it handed over (shared, never copied).
    routes: BTreeMap<SourceKind, Vec<Arc<[RouteSpec]>>>,
    /// The Gateway listener ports each source wants bound beyond its routes' own.
    listeners: BTreeMap<SourceKind, Vec<u16>>,
    /// The conflicts reported by the last publish, so a lasting conflict is logged once.
    conflicts: HashSet<String>,
}

/// What one publish did, as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The generation of the table now in use.
    pub generation: u64,
    /// Routes in the new table.
    pub routes: usize,
    /// Route names in the new table and not the previous one.
    pub added: usize,
    /// Route names in the previous table and not the new one.
    pub removed: usize,
    /// Route names in both whose hostnames, backends, allow list or cluster ID differ.
    pub changed: usize,
    /// Hostnames, route names or cluster IDs claimed twice (the later claim was dropped).
    pub conflicts: usize,
}

/// A claim dropped while merging because an earlier route (by source priority, then order)
/// holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// What was claimed twice.
    pub what: ConflictKind,
    /// The value claimed twice (a hostname, a route name, a cluster ID).
    pub value: String,
    /// The route that keeps it, and its source.
    pub winner: (String, String),
    /// The route that lost it, and its source.
    pub loser: (String, String),
    /// Whether the losing route was left out of the table entirely.
    pub dropped: bool,
}

/// What a [`Conflict`] is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictKind {
    /// A route name.
    Name,
    /// A hostname.
    Hostname,
    /// A hosted-cluster ID.
    ClusterId,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.what {
            ConflictKind::Name => "route name",
            ConflictKind::Hostname => "hostname",
            ConflictKind::ClusterId => "cluster ID",
        };
        let ((winner, winner_source), (loser, loser_source)) = (&self.winner, &self.loser);
        write!(
            f,
            "{what} {} is claimed by route {winner} ({winner_source}) and route {loser} \
             ({loser_source}); ",
            self.value
        )?;
        match (self.dropped, self.what) {
            (true, _) => write!(f, "route {loser} is left out"),
            (false, ConflictKind::ClusterId) => {
                write!(f, "route {loser} is routed by hostname only")
            }
            (false, _) => write!(f, "route {loser} goes without it"),
        }
    }
}

// === impl Publisher ===

impl Publisher {
    /// A publisher into `shared`, which connections read.
    pub fn new(shared: Arc<SharedTable>) -> Self {
        let snapshots = watch::Sender::new(shared.load());
        Self {
            shared,
            state: Mutex::default(),
            snapshots,
            metrics: ControlMetrics::default(),
        }
    }

    /// Reports publishes and source failures in `metrics` (registered by the caller).
    pub fn with_metrics(mut self, metrics: ControlMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Counts `failures` of `source` that kept its last good routes in the table.
    pub fn source_failed(&self, source: SourceKind, failures: u64) {
        self.metrics.source_failed(source, failures);
    }

    /// The table connections read.
    pub fn shared(&self) -> &Arc<SharedTable> {
        &self.shared
    }

    /// Every snapshot published from now on (and the current one). The revocation hook: a
    /// receiver compares each new table with the connections it routed by the old one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.subscribe()
    }

    /// Replaces `source`'s routes with `routes` and publishes the merged table.
    ///
    /// Fails only if the merged routes still do not make a table (a bug: merging removes
    /// every duplicate); then nothing is published and the table in use stays.
    pub fn update(
        &self,
        source: SourceKind,
        routes: Vec<RouteSpec>,
    ) -> Result<Published, TableError> {
        self.update_sets(source, vec![routes.into()])
    }

    /// [`Publisher::update`] with the routes in shared slices (the Kubernetes source hands
    /// over one per hosted cluster, unchanged ones shared with its cache).
    pub fn update_sets(
        &self,
        source: SourceKind,
        routes: Vec<Arc<[RouteSpec]>>,
    ) -> Result<Published, TableError> {
        self.publish(source, routes, None)
    }

    /// [`Publisher::update`], with the Gateway listener ports `source` wants bound (each
    /// Gateway's, whether a route is served on it yet or not).
    pub fn update_with_listeners(
        &self,
        source: SourceKind,
        routes: Vec<RouteSpec>,
        listeners: Vec<u16>,
    ) -> Result<Published, TableError> {
        self.publish(source, vec![routes.into()], Some(listeners))
    }

    fn publish(
        &self,
        source: SourceKind,
        routes: Vec<Arc<[RouteSpec]>>,
        listeners: Option<Vec<u16>>,
    ) -> Result<Published, TableError> {
        // The lock orders publishes; its data stays consistent even if a holder panicked.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let previous_listeners =
            listeners.map(|listeners| state.listeners.insert(source, listeners));
        let previous_routes = state.routes.insert(source, routes);
        let previous = self.shared.load();
        let (merged, conflicts) = merge_onto(
            state
                .routes
                .values()
                .flat_map(|sets| sets.iter().map(|set| &**set)),
            &previous.table,
        );
        let listeners: Vec<u16> = state.listeners.values().flatten().copied().collect();
        let table = match merged.and_then(Table::new) {
            Ok(table) => table.with_listeners(listeners),
            Err(error) => {
                // Put the source's last good routes and listener ports back, so the next
                // update merges those and the listener set stays the one the table in use has.
                match previous_routes {
                    Some(previous) => state.routes.insert(source, previous),
                    None => state.routes.remove(&source),
                };
                match previous_listeners {
                    Some(Some(previous)) => state.listeners.insert(source, previous),
                    Some(None) => state.listeners.remove(&source),
                    None => None,
                };
                tracing::error!(%error, %source, "merged routes do not make a table; keeping the table in use");
                return Err(error);
            }
        };
        let reported: HashSet<String> = conflicts.iter().map(ToString::to_string).collect();
        for conflict in &reported {
            if !state.conflicts.contains(conflict) {
                tracing::warn!(%source, conflict = %conflict, "route conflict");
            }
        }
        state.conflicts = reported;

        let (added, removed, changed) = diff(&previous.table, &table);
        let routes = table.routes().len();
        let table_hash = table.fingerprint();
        let snapshot = self.shared.publish(table);
        let generation = snapshot.generation;
        self.snapshots.send_replace(snapshot);
        self.metrics.published(generation, routes, table_hash);
        let conflicts = conflicts.len();
        tracing::info!(
            generation,
            routes,
            added,
            removed,
            changed,
            conflicts,
            source = source.as_str(),
            "table published"
        );
        Ok(Published {
            generation,
            routes,
            added,
            removed,
            changed,
            conflicts,
        })
    }
}

/// Builds the routes of one table from `sources`, highest priority first: a route name,
/// hostname or cluster ID already taken by an earlier route is dropped from the later one (and
/// a route left without hostnames is left out), so the result never has duplicates.
pub fn merge<'a>(
    sources: impl IntoIterator<Item = &'a [RouteSpec]>,
) -> (Result<Vec<Arc<Route>>, TableError>, Vec<Conflict>) {
    merge_onto(sources, &Table::default())
}

/// [`merge`], keeping the routes of `previous` (the table in use) that come out the same:
/// one hosted cluster's change then builds that cluster's routes, not all 25,000.
pub fn merge_onto<'a>(
    sources: impl IntoIterator<Item = &'a [RouteSpec]>,
    previous: &Table,
) -> (Result<Vec<Arc<Route>>, TableError>, Vec<Conflict>) {
    let sources: Vec<&[RouteSpec]> = sources.into_iter().collect();
    let total = sources.iter().map(|s| s.len()).sum();
    let mut names: HashMap<&str, &RouteSpec> = HashMap::with_capacity(total);
    // Per listener: the same name may be two Gateways' to two places.
    let mut hosts: HashMap<(Option<u16>, &HostPattern), &RouteSpec> =
        HashMap::with_capacity(total * 2);
    let mut ids: HashMap<&str, &RouteSpec> = HashMap::new();
    let mut conflicts = Vec::new();
    let mut routes = Vec::with_capacity(total);
    let conflict = |what, value: String, winner: &RouteSpec, loser: &RouteSpec, dropped| Conflict {
        what,
        value,
        winner: (winner.name.to_string(), winner.source.to_string()),
        loser: (loser.name.to_string(), loser.source.to_string()),
        dropped,
    };
    let mut kept = Vec::new();
    for spec in sources.into_iter().flatten() {
        if let Some(winner) = names.get(&*spec.name) {
            conflicts.push(conflict(
                ConflictKind::Name,
                spec.name.to_string(),
                winner,
                spec,
                true,
            ));
            continue;
        }
        kept.clear();
        let mut lost = Vec::new();
        for host in &spec.hostnames {
            match hosts.entry((spec.port, host)) {
                // Listed twice in the same route: one is enough.
                Entry::Occupied(owner) if std::ptr::eq(*owner.get(), spec) => {}
                Entry::Occupied(owner) => lost.push((host, *owner.get())),
                Entry::Vacant(slot) => {
                    slot.insert(spec);
                    kept.push(host);
                }
            }
        }
        let dropped = kept.is_empty();
        for (host, winner) in lost {
            let value = match spec.port {
                None => host.to_string(),
                Some(port) => format!("{host} (gateway listener port {port})"),
            };
            conflicts.push(conflict(
                ConflictKind::Hostname,
                value,
                winner,
                spec,
                dropped,
            ));
        }
        if dropped {
            continue;
        }
        names.insert(&spec.name, spec);
        let mut with_cluster_id = false;
        if let Some(id) = &spec.cluster_id {
            match ids.get(&**id) {
                Some(winner) => conflicts.push(conflict(
                    ConflictKind::ClusterId,
                    id.to_string(),
                    winner,
                    spec,
                    false,
                )),
                None => {
                    ids.insert(id, spec);
                    with_cluster_id = true;
                }
            }
        }
        // Usually nothing was dropped and the spec is the route's as it stands; a copy is
        // made only for what lost a hostname or its cluster ID to an earlier route.
        let trimmed = (kept.len() != spec.hostnames.len()
            || (spec.cluster_id.is_some() && !with_cluster_id))
            .then(|| RouteSpec {
                hostnames: kept.iter().map(|&host| host.clone()).collect(),
                cluster_id: spec.cluster_id.clone().filter(|_| with_cluster_id),
                ..spec.clone()
            });
        let wanted = trimmed.as_ref().unwrap_or(spec);
        let before = previous.route(&spec.name);
        if let Some(same) = before.filter(|r| r.spec() == wanted) {
            routes.push(same.clone());
            continue;
        }
        // A changed route keeps its counts, cursor and endpoint state (see Route::succeeding).
        let spec = trimmed.unwrap_or_else(|| spec.clone());
        let route = match before {
            Some(before) => Route::succeeding(spec, before),
            None => Route::new(spec),
        };
        match route {
            Ok(route) => routes.push(Arc::new(route)),
            Err(error) => return (Err(error), conflicts),
        }
    }
    (Ok(routes), conflicts)
}

/// Counts route names added, removed, and kept with different targets.
fn diff(old: &Table, new: &Table) -> (usize, usize, usize) {
    let (mut added, mut changed) = (0, 0);
    for route in new.routes() {
        match old.route(route.name()) {
            None => added += 1,
            // A route kept from the old table (merge_onto) is the same by construction.
            Some(before) if !Arc::ptr_eq(before, route) && before.spec() != route.spec() => {
                changed += 1
            }
            Some(_) => {}
        }
    }
    let kept = new.routes().len() - added;
    (added, old.routes().len() - kept, changed)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io;

    use proxy::{Backend, ServerName};

    use super::*;

    pub(crate) fn spec(name: &str, hosts: &[&str], backends: &[&str], source: &str) -> RouteSpec {
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
            source,
        )
    }

    fn file(name: &str, hosts: &[&str], backends: &[&str]) -> RouteSpec {
        spec(name, hosts, backends, "file")
    }

    fn route_for(publisher: &Publisher, host: &str) -> Option<(String, String)> {
        let snapshot = publisher.shared().load();
        let name = ServerName::parse(host.as_bytes()).unwrap();
        snapshot
            .table
            .lookup(&name)
            .map(|r| (r.name().to_owned(), r.source().to_owned()))
    }

    /// Captures this thread's log lines, for asserting on them.
    #[derive(Clone, Default)]
    pub(crate) struct Logs(Arc<Mutex<Vec<u8>>>);

    impl Logs {
        /// Sends this thread's events here until the guard drops.
        pub(crate) fn capture(&self) -> tracing::subscriber::DefaultGuard {
            // tracing caches each callsite's interest process-wide, computed on whichever
            // thread reaches it first: a test thread without a subscriber would cache "never"
            // and blind every capture of that line (seen once in a loaded full run). A global
            // do-nothing registry, interested in everything, keeps the cache open.
            static ANCHOR: std::sync::Once = std::sync::Once::new();
            ANCHOR.call_once(|| {
                let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
            });
            let logs = self.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .without_time()
                .with_max_level(tracing::Level::DEBUG)
                .with_writer(move || logs.clone())
                .finish();
            tracing::subscriber::set_default(subscriber)
        }

        pub(crate) fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    impl io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_refused_update_keeps_the_listener_ports_of_the_table_in_use() {
        let publisher = Publisher::new(Arc::default());
        let good = vec![file("a", &["a.test"], &["10.0.0.1:1"])];
        publisher
            .update_with_listeners(SourceKind::GatewayApi, good, vec![20001])
            .unwrap();
        // No backend: Route::new refuses it, so the whole update is refused.
        let bad = vec![file("b", &["b.test"], &[])];
        assert!(publisher
            .update_with_listeners(SourceKind::GatewayApi, bad, vec![20001, 20002])
            .is_err());
        assert_eq!(publisher.shared().load().table.listeners(), [20001]);
        // Another source's next publish merges the last good ports, not the refused ones.
        publisher
            .update(
                SourceKind::File,
                vec![file("c", &["c.test"], &["10.0.0.1:3"])],
            )
            .unwrap();
        assert_eq!(publisher.shared().load().table.listeners(), [20001]);
    }

    #[test]
    fn counts_added_removed_changed_and_logs_one_line() {
        let logs = Logs::default();
        let _guard = logs.capture();
        let publisher = Publisher::new(Arc::default());
        let first = publisher
            .update(
                SourceKind::File,
                vec![
                    file("a", &["a.test"], &["10.0.0.1:1"]),
                    file("b", &["b.test", "*.b.test"], &["10.0.0.1:2", "10.0.0.2:2"]),
                    file("c", &["c.test"], &["10.0.0.1:3"]),
                ],
            )
            .unwrap();
        assert_eq!(
            first,
            Published {
                generation: 1,
                routes: 3,
                added: 3,
                removed: 0,
                changed: 0,
                conflicts: 0,
            }
        );

        let second = publisher
            .update(
                SourceKind::File,
                vec![
                    // Written in another order: a change (backends are tried in this order).
                    file("b", &["*.b.test", "b.test"], &["10.0.0.2:2", "10.0.0.1:2"]),
                    file("c", &["c.test"], &["10.0.0.9:3"]),
                    file("d", &["d.test"], &["10.0.0.1:4"]),
                    file("e", &["e.test"], &["10.0.0.1:5"]),
                ],
            )
            .unwrap();
        assert_eq!(
            second,
            Published {
                generation: 2,
                routes: 4,
                added: 2,
                removed: 1,
                changed: 2,
                conflicts: 0,
            }
        );
        assert_eq!(publisher.shared().load().generation, 2);

        let logs = logs.text();
        let lines: Vec<&str> = logs.lines().collect();
        assert_eq!(
            lines,
            [
                " INFO control::publish: table published generation=1 routes=3 \
                 added=3 removed=0 changed=0 conflicts=0 source=\"file\"",
                " INFO control::publish: table published generation=2 routes=4 \
                 added=2 removed=1 changed=2 conflicts=0 source=\"file\"",
            ]
        );
    }

    #[test]
    fn every_field_but_the_source_is_a_change() {
        let publisher = Publisher::new(Arc::default());
        let base = file("a", &["a.test"], &["10.0.0.1:1"]);
        publisher
            .update(SourceKind::File, vec![base.clone()])
            .unwrap();
        let p = publisher
            .update(
                SourceKind::File,
                vec![file("a", &["a.test", "a2.test"], &["10.0.0.1:1"])],
            )
            .unwrap();
        assert_eq!((p.added, p.removed, p.changed), (0, 0, 1));
        let mut narrowed = base.clone();
        narrowed.allowed_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
        let p = publisher.update(SourceKind::File, vec![narrowed]).unwrap();
        assert_eq!(p.changed, 1);
        let mut with_id = base.clone();
        with_id.cluster_id = Some("id".into());
        let p = publisher.update(SourceKind::File, vec![with_id]).unwrap();
        assert_eq!(p.changed, 1);
        let mut proxied = base;
        proxied.proxy_protocol = Some(proxy::ProxyVersion::V2);
        let p = publisher.update(SourceKind::File, vec![proxied]).unwrap();
        assert_eq!(p.changed, 1, "a PROXY header for the backends is a change");
        let p = publisher.update(SourceKind::File, Vec::new()).unwrap();
        assert_eq!((p.routes, p.added, p.removed, p.changed), (0, 0, 1, 0));
    }

    #[test]
    fn hypershift_routes_win_a_hostname_over_gateway_api_routes_and_both_are_served() {
        let logs = Logs::default();
        let _guard = logs.capture();
        let publisher = Publisher::new(Arc::default());
        let hc = "hostedcluster ns/x";
        let tls = "tlsroute tenants/t on gateway kamaji-system/gateway";
        publisher
            .update(
                SourceKind::GatewayApi,
                vec![
                    spec("tenants/t", &["api.x.test", "t.test"], &["10.0.2.1:1"], tls),
                    spec("tenants/u", &["u.test"], &["10.0.2.2:1"], tls),
                ],
            )
            .unwrap();
        let p = publisher
            .update(
                SourceKind::Kubernetes,
                vec![spec(
                    "ns/x/kube-apiserver",
                    &["api.x.test"],
                    &["10.0.1.1:1"],
                    hc,
                )],
            )
            .unwrap();
        assert_eq!((p.routes, p.conflicts), (3, 1));
        assert_eq!(
            route_for(&publisher, "api.x.test"),
            Some(("ns/x/kube-apiserver".into(), hc.into()))
        );
        assert_eq!(
            route_for(&publisher, "t.test"),
            Some(("tenants/t".into(), tls.into()))
        );
        assert_eq!(
            route_for(&publisher, "u.test"),
            Some(("tenants/u".into(), tls.into()))
        );
        let text = logs.text();
        assert!(
            text.contains(&format!(
                "hostname api.x.test is claimed by route ns/x/kube-apiserver ({hc}) and route \
                 tenants/t ({tls}); route tenants/t goes without it"
            )),
            "{text}"
        );
    }

    #[test]
    fn sources_are_kept_apart_and_the_file_wins_conflicts() {
        let logs = Logs::default();
        let _guard = logs.capture();
        let publisher = Publisher::new(Arc::default());
        let mut snapshots = publisher.subscribe();
        publisher
            .update(
                SourceKind::File,
                vec![file("shared-name", &["a.test"], &["10.0.0.1:1"])],
            )
            .unwrap();
        let hc = "hostedcluster ns/x";
        let mut first_id = spec("k1", &["a.test", "b.test"], &["10.0.1.1:1"], hc);
        first_id.cluster_id = Some("id-1".into());
        let mut second_id = spec("k4", &["d.test"], &["10.0.1.4:1"], hc);
        second_id.cluster_id = Some("id-1".into());
        let kube = vec![
            first_id,
            spec("k2", &["A.test."], &["10.0.1.2:1"], hc),
            spec("shared-name", &["c.test"], &["10.0.1.3:1"], hc),
            second_id,
            spec("k5", &["e.test", "e.test"], &["10.0.1.5:1"], hc),
        ];
        let p = publisher
            .update(SourceKind::Kubernetes, kube.clone())
            .unwrap();
        assert_eq!((p.routes, p.conflicts), (4, 4), "{}", logs.text());
        assert_eq!(
            route_for(&publisher, "a.test"),
            Some(("shared-name".into(), "file".into()))
        );
        assert_eq!(
            route_for(&publisher, "b.test"),
            Some(("k1".into(), hc.into()))
        );
        assert_eq!(route_for(&publisher, "c.test"), None);
        assert_eq!(
            route_for(&publisher, "d.test"),
            Some(("k4".into(), hc.into()))
        );
        assert_eq!(
            route_for(&publisher, "e.test"),
            Some(("k5".into(), hc.into()))
        );
        let snapshot = publisher.shared().load();
        assert_eq!(
            snapshot.table.lookup_cluster_id("id-1").unwrap().name(),
            "k1"
        );

        // The file changing keeps the Kubernetes routes; the same conflicts are not re-logged.
        publisher
            .update(
                SourceKind::File,
                vec![
                    file("shared-name", &["a.test"], &["10.0.0.1:1"]),
                    file("f2", &["z.test"], &["10.0.0.1:2"]),
                ],
            )
            .unwrap();
        assert_eq!(
            route_for(&publisher, "b.test"),
            Some(("k1".into(), hc.into()))
        );
        assert_eq!(
            route_for(&publisher, "z.test"),
            Some(("f2".into(), "file".into()))
        );
        let text = logs.text();
        assert_eq!(text.matches("route conflict").count(), 4, "{text}");
        assert!(
            text.contains(
                "hostname a.test is claimed by route shared-name (file) and route k1 \
                 (hostedcluster ns/x); route k1 goes without it"
            ),
            "{text}"
        );
        assert!(text.contains("route k2 is left out"), "{text}");
        assert!(text.contains("route name shared-name is claimed"), "{text}");
        assert!(
            text.contains("route k4 is routed by hostname only"),
            "{text}"
        );
        assert_eq!(snapshots.borrow_and_update().generation, 3);
    }

    #[test]
    fn routes_that_come_out_the_same_are_kept_from_the_table_in_use() {
        let publisher = Publisher::new(Arc::default());
        let hc = "hostedcluster ns/x";
        let kube = |b_backend: &str| {
            vec![
                spec("a", &["a.test"], &["10.0.1.1:1"], hc),
                spec("b", &["b.test"], &[b_backend], hc),
                spec("c", &["c.test", "shared.test"], &["10.0.1.3:1"], hc),
            ]
        };
        let route = |name: &str| publisher.shared().load().table.route(name).unwrap().clone();
        publisher
            .update(SourceKind::Kubernetes, kube("10.0.1.2:1"))
            .unwrap();
        let (a, b, c) = (route("a"), route("b"), route("c"));

        // b's backend changes: only b is built again.
        let p = publisher
            .update(SourceKind::Kubernetes, kube("10.0.1.2:2"))
            .unwrap();
        assert_eq!((p.added, p.removed, p.changed), (0, 0, 1));
        assert!(Arc::ptr_eq(&a, &route("a")) && Arc::ptr_eq(&c, &route("c")));
        assert!(!Arc::ptr_eq(&b, &route("b")));
        assert_eq!(route("b").backends()[0].to_string(), "10.0.1.2:2");

        // The file claims one of c's hostnames: c's spec is unchanged, its route is not.
        publisher
            .update(
                SourceKind::File,
                vec![file("f", &["shared.test"], &["10.0.0.1:1"])],
            )
            .unwrap();
        let hosts: Vec<String> = route("c")
            .hostnames()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(hosts, ["c.test"]);
        assert_eq!(
            route_for(&publisher, "shared.test"),
            Some(("f".into(), "file".into()))
        );
        // And it gets the hostname back once the file lets go of it.
        publisher.update(SourceKind::File, Vec::new()).unwrap();
        assert_eq!(
            route_for(&publisher, "shared.test"),
            Some(("c".into(), hc.into()))
        );
        assert!(Arc::ptr_eq(&a, &route("a")));
    }

    #[test]
    fn a_changed_route_keeps_its_counts_and_the_endpoints_it_still_has() {
        use proxy::Endpoints;
        let publisher = Publisher::new(Arc::default());
        let hc = "hostedcluster ns/x";
        let kube = |backends: &[&str]| vec![spec("b", &["b.test"], backends, hc)];
        let route = || publisher.shared().load().table.route("b").unwrap().clone();
        let endpoint = |route: &proxy::Route, i: usize| match &route.endpoints()[i] {
            Endpoints::Addr(target) => target.endpoint.clone(),
            Endpoints::Name(_) => panic!("an address backend"),
        };
        publisher
            .update(SourceKind::Kubernetes, kube(&["10.0.1.1:1", "10.0.1.2:1"]))
            .unwrap();
        let before = route();
        let _load = endpoint(&before, 1).take();
        before.next_turn();

        publisher
            .update(SourceKind::Kubernetes, kube(&["10.0.1.2:1", "10.0.1.3:1"]))
            .unwrap();
        let after = route();
        assert!(!Arc::ptr_eq(&before, &after), "a new route");
        assert!(
            Arc::ptr_eq(before.state(), after.state()),
            "the same counts"
        );
        assert_eq!(after.peek_turn(), 1, "the cursor goes on");
        assert!(Arc::ptr_eq(&endpoint(&before, 1), &endpoint(&after, 0)));
        assert_eq!(endpoint(&after, 0).open(), 1, "the load of a kept endpoint");
        assert_eq!(
            endpoint(&after, 1).open(),
            0,
            "a new endpoint starts afresh"
        );
    }
}
