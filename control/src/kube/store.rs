//! What the watches have seen, and the routes built from it, rebuilt one cluster at a time.
//!
//! The store is plain data (no I/O, no clock), so the source's event loop, the unit tests and
//! the benchmark all drive it the same way: apply watch events, then [`Store::rebuild`] the
//! hosted clusters those events touched, then take [`Store::routes`] to publish.
//!
//! An event marks hosted clusters dirty: a HostedCluster event its own; a Route or Service
//! event every HostedCluster whose control plane namespace it is in. A relist (the watch's
//! initial list, and every relist after a 410 Gone) is buffered and swapped in whole when it
//! completes, and only objects whose `resourceVersion` changed mark clusters dirty, so a
//! relist of an unchanged world rebuilds nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use super::objects::Guarded;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::mapping::{self, Endpoints, Fallback, Invalid, Mapped, Rejection, Skip, Watched};
use super::objects::{EndpointSlice, HostedCluster, OcpRoute, Service};
use proxy::RouteSpec;

/// The kinds watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// hypershift.openshift.io/v1beta1 HostedCluster.
    HostedCluster,
    /// route.openshift.io/v1 Route (labelled for the hosted control plane).
    Route,
    /// v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
}

// `Kind::COUNT` sizes arrays indexed by `kind as usize`: it must follow the enum.
const _: () = assert!(Kind::EndpointSlice as usize + 1 == Kind::COUNT);

impl Kind {
    /// How many kinds are watched: the length of per-kind state arrays, indexed by
    /// `kind as usize`.
    pub const COUNT: usize = 4;

    /// The kind's name, as in its manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HostedCluster => "HostedCluster",
            Self::Route => "Route",
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object from a watch, parsed or not.
#[derive(Debug, Clone)]
pub enum Object {
    /// A HostedCluster.
    HostedCluster(Guarded<HostedCluster>),
    /// A Route.
    Route(Guarded<OcpRoute>),
    /// A Service.
    Service(Guarded<Service>),
    /// An EndpointSlice.
    EndpointSlice(Guarded<EndpointSlice>),
}

/// A HostedCluster's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A HostedCluster as stored: the last version that parsed, and whether the newest did not.
#[derive(Debug, Clone)]
struct ClusterEntry {
    rv: String,
    good: Option<HostedCluster>,
    invalid: Option<String>,
}

/// A Route or Service as stored.
#[derive(Debug, Clone)]
struct Stored<T> {
    rv: String,
    value: Watched<T>,
}

type ByNamespace<T> = HashMap<String, HashMap<String, Stored<T>>>;

/// One object, reduced to what is stored.
enum Entry {
    Cluster(Key, ClusterEntry),
    Route(String, String, Stored<OcpRoute>),
    Service(String, String, Stored<Service>),
    Slice(String, String, Stored<EndpointSlice>),
}

/// What the last build of one cluster gave, so only changes are logged.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Built {
    routes: Arc<[RouteSpec]>,
    skipped: Option<Skip>,
    rejections: Vec<Rejection>,
    fallbacks: Vec<Fallback>,
    invalid: Option<String>,
}

/// Whether Services resolve to their EndpointSlices' endpoints.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum SliceMode {
    /// Every Service to its ClusterIP (`kubernetes.backends: service`).
    #[default]
    ClusterIp,
    /// To endpoints, preferring `zone`; `listable` false while EndpointSlices cannot be
    /// listed (RBAC), when every Service goes to its ClusterIP.
    Endpoints {
        zone: Option<String>,
        listable: bool,
    },
}

/// Counts of what a store found wrong, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProblemCounts {
    /// Objects that did not parse (each counted when it arrives).
    pub malformed: u64,
    /// Routes left out (each counted when first found, again if it recurs after a fix).
    pub rejected: u64,
    /// Clusters skipped because something in them is wrong (not the deliberate skips).
    pub broken_clusters: u64,
}

/// What one [`Store::rebuild`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    /// Clusters mapped again.
    pub clusters: usize,
    /// Whether any cluster's routes differ from before (else there is nothing to publish).
    pub changed: bool,
}

/// Everything the watches delivered, and the routes built from it.
#[derive(Debug, Default)]
pub struct Store {
    clusters: HashMap<Key, ClusterEntry>,
    routes: ByNamespace<OcpRoute>,
    services: ByNamespace<Service>,
    slices: ByNamespace<EndpointSlice>,
    mode: SliceMode,
    /// Control plane namespace -> the HostedClusters using it (normally one).
    by_hcp: HashMap<String, Vec<Key>>,
    built: BTreeMap<Key, Built>,
    dirty: HashSet<Key>,
    /// Objects of a relist under way, per kind.
    relisting: [Option<Vec<Entry>>; 4],
    problems: ProblemCounts,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cluster(key, _) => write!(f, "HostedCluster {key}"),
            Self::Route(ns, name, _) => write!(f, "Route {ns}/{name}"),
            Self::Service(ns, name, _) => write!(f, "Service {ns}/{name}"),
            Self::Slice(ns, name, _) => write!(f, "EndpointSlice {ns}/{name}"),
        }
    }
}

// === impl Store ===

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store routing Services to their endpoints, preferring those in `zone`.
    pub fn to_endpoints(zone: Option<String>) -> Self {
        Self {
            mode: SliceMode::Endpoints {
                zone,
                listable: true,
            },
            ..Self::default()
        }
    }

    /// Whether Services go to their ClusterIP because EndpointSlices cannot be listed.
    pub fn slices_unlisted(&self) -> bool {
        matches!(
            self.mode,
            SliceMode::Endpoints {
                listable: false,
                ..
            }
        )
    }

    /// EndpointSlices cannot be listed (RBAC): route every Service to its ClusterIP until
    /// their next list completes.
    pub fn slices_unlistable(&mut self) {
        if let SliceMode::Endpoints { listable, .. } = &mut self.mode {
            if *listable {
                *listable = false;
                self.dirty.extend(self.clusters.keys().cloned());
            }
        }
    }

    /// An object was added or changed.
    pub fn apply(&mut self, object: Object) {
        if let Some(entry) = self.entry(object) {
            self.insert(entry);
        }
    }

    /// An object was deleted.
    pub fn delete(&mut self, object: Object) {
        let Some(entry) = self.entry(object) else {
            return;
        };
        match entry {
            Entry::Cluster(key, _) => {
                if self.clusters.remove(&key).is_some() {
                    self.unindex(&key);
                }
                self.dirty.insert(key);
            }
            Entry::Route(ns, name, _) => {
                remove_from(&mut self.routes, &ns, &name);
                self.touch_namespace(&ns);
            }
            Entry::Service(ns, name, _) => {
                remove_from(&mut self.services, &ns, &name);
                self.touch_namespace(&ns);
            }
            Entry::Slice(ns, name, _) => {
                remove_from(&mut self.slices, &ns, &name);
                self.touch_namespace(&ns);
            }
        }
    }

    /// A relist of `kind` starts: its objects are buffered until [`Store::relist_done`].
    pub fn relist_begin(&mut self, kind: Kind) {
        self.relisting[kind.index()] = Some(Vec::new());
    }

    /// One object of the relist under way.
    pub fn relist_apply(&mut self, object: Object) {
        let kind = match &object {
            Object::HostedCluster(_) => Kind::HostedCluster,
            Object::Route(_) => Kind::Route,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
        };
        let Some(entry) = self.entry(object) else {
            return;
        };
        match &mut self.relisting[kind.index()] {
            Some(buffer) => buffer.push(entry),
            // Not announced (a watcher never does this): apply it as an event.
            None => self.insert(entry),
        }
    }

    /// The relist of `kind` is complete: its objects replace the stored ones of that kind.
    /// Objects not listed were deleted; only objects new or changed mark clusters dirty.
    pub fn relist_done(&mut self, kind: Kind) {
        let Some(buffer) = self.relisting[kind.index()].take() else {
            return;
        };
        match kind {
            Kind::HostedCluster => {
                let mut old = std::mem::take(&mut self.clusters);
                for entry in buffer {
                    let Entry::Cluster(key, mut entry) = entry else {
                        continue;
                    };
                    match old.remove(&key) {
                        Some(before) if before.rv == entry.rv => {
                            self.clusters.insert(key, before);
                        }
                        before => {
                            if entry.good.is_none() {
                                entry.good = before.and_then(|b| b.good);
                            }
                            self.index(&key);
                            self.clusters.insert(key.clone(), entry);
                            self.dirty.insert(key);
                        }
                    }
                }
                for key in old.into_keys() {
                    self.unindex(&key);
                    self.dirty.insert(key);
                }
            }
            Kind::Route => {
                let fresh = collect(buffer, |e| match e {
                    Entry::Route(ns, name, stored) => Some((ns, name, stored)),
                    _ => None,
                });
                let old = std::mem::replace(&mut self.routes, fresh);
                for ns in changed_namespaces(&old, &self.routes) {
                    self.touch_namespace(&ns);
                }
            }
            Kind::Service => {
                let fresh = collect(buffer, |e| match e {
                    Entry::Service(ns, name, stored) => Some((ns, name, stored)),
                    _ => None,
                });
                let old = std::mem::replace(&mut self.services, fresh);
                for ns in changed_namespaces(&old, &self.services) {
                    self.touch_namespace(&ns);
                }
            }
            Kind::EndpointSlice => {
                let fresh = collect(buffer, |e| match e {
                    Entry::Slice(ns, name, stored) => Some((ns, name, stored)),
                    _ => None,
                });
                let old = std::mem::replace(&mut self.slices, fresh);
                if let SliceMode::Endpoints { listable, .. } = &mut self.mode {
                    if !*listable {
                        *listable = true;
                        self.dirty.extend(self.clusters.keys().cloned());
                    }
                }
                for ns in changed_namespaces(&old, &self.slices) {
                    self.touch_namespace(&ns);
                }
            }
        }
    }

    /// Hosted clusters waiting to be rebuilt.
    pub fn dirty(&self) -> usize {
        self.dirty.len()
    }

    /// HostedClusters stored.
    pub fn clusters(&self) -> usize {
        self.clusters.len()
    }

    /// What was found wrong so far.
    pub fn problems(&self) -> ProblemCounts {
        self.problems
    }

    /// Maps every dirty cluster again, logging what changed in its skips and rejections.
    pub fn rebuild(&mut self) -> Rebuilt {
        let dirty: Vec<Key> = self.dirty.drain().collect();
        let mut rebuilt = Rebuilt {
            clusters: dirty.len(),
            changed: false,
        };
        for key in dirty {
            let Some(built) = self.map(&key) else {
                if self
                    .built
                    .remove(&key)
                    .is_some_and(|b| !b.routes.is_empty())
                {
                    rebuilt.changed = true;
                }
                continue;
            };
            let before = self.built.remove(&key).unwrap_or_else(|| Built {
                routes: Arc::new([]),
                skipped: None,
                rejections: Vec::new(),
                fallbacks: Vec::new(),
                invalid: None,
            });
            self.report(&key, &before, &built);
            if before.routes != built.routes {
                rebuilt.changed = true;
            }
            self.built.insert(key, built);
        }
        rebuilt
    }

    /// Every built route, cluster by cluster in namespace/name order: one shared slice per
    /// cluster, so handing them to the publisher copies nothing.
    pub fn route_sets(&self) -> Vec<Arc<[RouteSpec]>> {
        self.built
            .values()
            .filter(|b| !b.routes.is_empty())
            .map(|b| b.routes.clone())
            .collect()
    }

    /// Every built route, copied, in the order of [`Store::route_sets`].
    #[cfg(test)]
    pub fn routes(&self) -> Vec<RouteSpec> {
        self.built
            .values()
            .flat_map(|b| b.routes.iter().cloned())
            .collect()
    }

    /// Maps one cluster; `None` if it is gone.
    fn map(&self, key: &Key) -> Option<Built> {
        let entry = self.clusters.get(key)?;
        let Some(hc) = &entry.good else {
            return Some(Built {
                routes: Arc::new([]),
                skipped: None,
                rejections: Vec::new(),
                fallbacks: Vec::new(),
                invalid: entry.invalid.clone(),
            });
        };
        let hcp = mapping::hcp_namespace(&key.namespace, &key.name);
        let routes = self.routes.get(&hcp);
        let services = self.services.get(&hcp);
        let slices = self.slices.get(&hcp);
        let of_service = |service: &str| -> Vec<&EndpointSlice> {
            slices
                .into_iter()
                .flat_map(|m| m.values())
                .filter_map(|s| s.value.as_ref().ok())
                .filter(|slice| slice.service_name() == Some(service))
                .collect()
        };
        let endpoints = match &self.mode {
            SliceMode::Endpoints {
                zone,
                listable: true,
            } => Endpoints {
                slices: Some(&of_service),
                zone: zone.as_deref(),
            },
            _ => Endpoints::cluster_ip(),
        };
        let Mapped {
            skipped,
            routes,
            rejections,
            fallbacks,
        } = mapping::map_cluster_to(
            hc,
            routes
                .into_iter()
                .flat_map(|m| m.values().map(|s| &s.value)),
            |name| services.and_then(|m| m.get(name)).map(|s| &s.value),
            endpoints,
        );
        Some(Built {
            routes: routes.into(),
            skipped,
            rejections,
            fallbacks,
            invalid: entry.invalid.clone(),
        })
    }

    /// Logs what is new in a cluster's build compared to its previous one.
    fn report(&mut self, key: &Key, before: &Built, now: &Built) {
        if now.invalid.is_some() && now.invalid != before.invalid && now.routes.is_empty() {
            tracing::warn!(hostedcluster = %key, "HostedCluster does not parse and has no earlier version that did; it is not routed");
        }
        if now.skipped != before.skipped {
            match &now.skipped {
                Some(skip) if skip.is_problem() => {
                    self.problems.broken_clusters += 1;
                    tracing::warn!(hostedcluster = %key, reason = skip.reason(), "HostedCluster not routed: {skip}");
                }
                Some(skip) => {
                    tracing::info!(hostedcluster = %key, reason = skip.reason(), "HostedCluster not routed: {skip}");
                }
                None => {}
            }
        }
        for rejection in &now.rejections {
            if !before.rejections.contains(rejection) {
                self.problems.rejected += 1;
                tracing::warn!(
                    hostedcluster = %key,
                    reason = rejection.reason.as_str(),
                    "route not made: {rejection}"
                );
            }
        }
        for fallback in &now.fallbacks {
            if !before.fallbacks.contains(fallback) {
                tracing::info!(hostedcluster = %key, service = fallback.service, "{fallback}");
            }
        }
    }

    /// Reduces a watched object to what is stored; `None` (logged) if it has no name.
    fn entry(&mut self, object: Object) -> Option<Entry> {
        let (kind, meta, error) = match &object {
            Object::HostedCluster(g) => (Kind::HostedCluster, meta_of(g), error_of(&g.0)),
            Object::Route(g) => (Kind::Route, meta_of(g), error_of(&g.0)),
            Object::Service(g) => (Kind::Service, meta_of(g), error_of(&g.0)),
            Object::EndpointSlice(g) => (Kind::EndpointSlice, meta_of(g), error_of(&g.0)),
        };
        let namespace = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        let rv = meta.resource_version.clone().unwrap_or_default();
        if namespace.is_empty() || name.is_empty() {
            self.problems.malformed += 1;
            tracing::warn!(
                kind = kind.as_str(),
                "object without namespace or name ignored"
            );
            return None;
        }
        if let Some(error) = &error {
            self.problems.malformed += 1;
            tracing::warn!(
                kind = kind.as_str(),
                namespace,
                name,
                error = %error,
                "object does not parse; only what depends on it is skipped"
            );
        }
        let invalid = |error: String| Invalid {
            name: name.clone(),
            error,
        };
        Some(match object {
            Object::HostedCluster(g) => {
                let good = g.0.ok();
                Entry::Cluster(
                    Key {
                        namespace,
                        name: name.clone(),
                    },
                    ClusterEntry {
                        rv,
                        good,
                        invalid: error,
                    },
                )
            }
            Object::Route(g) => {
                let value = g.0.map_err(|e| invalid(e.error));
                Entry::Route(namespace, name.clone(), Stored { rv, value })
            }
            Object::Service(g) => {
                let value = g.0.map_err(|e| invalid(e.error));
                Entry::Service(namespace, name.clone(), Stored { rv, value })
            }
            Object::EndpointSlice(g) => {
                let value = g.0.map_err(|e| invalid(e.error));
                Entry::Slice(namespace, name.clone(), Stored { rv, value })
            }
        })
    }

    fn insert(&mut self, entry: Entry) {
        match entry {
            Entry::Cluster(key, mut entry) => {
                let before = self.clusters.remove(&key);
                if entry.good.is_none() {
                    entry.good = before.and_then(|b| b.good);
                }
                self.index(&key);
                self.clusters.insert(key.clone(), entry);
                self.dirty.insert(key);
            }
            Entry::Route(ns, name, stored) => {
                self.routes
                    .entry(ns.clone())
                    .or_default()
                    .insert(name, stored);
                self.touch_namespace(&ns);
            }
            Entry::Service(ns, name, stored) => {
                self.services
                    .entry(ns.clone())
                    .or_default()
                    .insert(name, stored);
                self.touch_namespace(&ns);
            }
            Entry::Slice(ns, name, stored) => {
                self.slices
                    .entry(ns.clone())
                    .or_default()
                    .insert(name, stored);
                self.touch_namespace(&ns);
            }
        }
    }

    /// Marks every cluster whose control plane lives in `namespace` dirty.
    fn touch_namespace(&mut self, namespace: &str) {
        if let Some(keys) = self.by_hcp.get(namespace) {
            self.dirty.extend(keys.iter().cloned());
        }
    }

    fn index(&mut self, key: &Key) {
        let keys = self
            .by_hcp
            .entry(mapping::hcp_namespace(&key.namespace, &key.name))
            .or_default();
        if !keys.contains(key) {
            keys.push(key.clone());
        }
    }

    fn unindex(&mut self, key: &Key) {
        let hcp = mapping::hcp_namespace(&key.namespace, &key.name);
        if let Some(keys) = self.by_hcp.get_mut(&hcp) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_hcp.remove(&hcp);
            }
        }
    }
}

fn meta_of<K: ::kube::Resource<DynamicType = ()>>(guard: &Guarded<K>) -> &ObjectMeta {
    ::kube::Resource::meta(guard)
}

fn error_of<K>(result: &Result<K, super::objects::InvalidObject>) -> Option<String> {
    result.as_ref().err().map(|e| e.error.clone())
}

fn remove_from<T>(map: &mut ByNamespace<T>, ns: &str, name: &str) {
    if let Some(objects) = map.get_mut(ns) {
        objects.remove(name);
        if objects.is_empty() {
            map.remove(ns);
        }
    }
}

fn collect<T>(
    buffer: Vec<Entry>,
    pick: impl Fn(Entry) -> Option<(String, String, Stored<T>)>,
) -> ByNamespace<T> {
    let mut map: ByNamespace<T> = HashMap::new();
    for (ns, name, stored) in buffer.into_iter().filter_map(pick) {
        map.entry(ns).or_default().insert(name, stored);
    }
    map
}

/// Namespaces where an object was added, removed or has a new `resourceVersion`.
fn changed_namespaces<T>(old: &ByNamespace<T>, new: &ByNamespace<T>) -> HashSet<String> {
    let mut changed = HashSet::new();
    for (ns, objects) in new {
        let before = old.get(ns);
        let same = before.is_some_and(|before| {
            before.len() == objects.len()
                && objects
                    .iter()
                    .all(|(name, o)| before.get(name).is_some_and(|b| b.rv == o.rv))
        });
        if !same {
            changed.insert(ns.clone());
        }
    }
    for ns in old.keys() {
        if !new.contains_key(ns) {
            changed.insert(ns.clone());
        }
    }
    changed
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
