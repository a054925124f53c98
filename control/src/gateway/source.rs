//! The Gateway API watches, the loop that maps them into the table, and the one replica that
//! writes their status.
//!
//! Seven cluster-wide watches (kube-runtime watchers with backoff, relisting after 410 Gone):
//! GatewayClasses, Gateways, TLSRoutes (v1), ReferenceGrants (v1beta1), Namespaces (for
//! listener selectors), Services and, with `kubernetes.backends: endpoints`, EndpointSlices.
//! A relist is buffered and swapped in whole when it completes. After a change and the
//! debounce, [`graph::build`] maps everything again (it is a few milliseconds for thousands
//! of routes) and the routes go to the [`Publisher`] as [`SourceKind::GatewayApi`]: the file
//! and HyperShift win conflicts with them. Nothing is published before every kind has been
//! listed once; then the readiness signal turns true. An object that does not parse is
//! logged and left out; the rest keeps routing.
//!
//! Status is written by one replica only: the holder of the coordination.k8s.io Lease
//! [`LEASE_NAME`] in the client's namespace (every replica routes). The holder renews it
//! every [`RENEW`]; another replica takes it over when it has seen no renewal for
//! [`LEASE_DURATION`] by its own clock (as client-go's leader election does, so clock skew
//! between replicas does not matter). The holder applies each object's status with
//! server-side apply under the field manager [`FIELD_MANAGER`], only where
//! [`status`](super::status) finds it differs.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{Patch, PatchParams, PostParams};
use ::kube::runtime::watcher::{self, Event};
use ::kube::runtime::WatchStreamExt;
use ::kube::{Api, Client, Resource};
use futures::stream::{self, Stream, StreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::graph::{self, Graph, Key, Objects, Settings};
use super::infra::{self, GatewayService, ServiceSettings};
use super::objects::{Gateway, GatewayAddress, GatewayClass, Namespace, ReferenceGrant, TlsRoute};
use super::status;
use crate::config::{BackendsMode, GatewayApiConfig, KubernetesConfig};
use crate::kube::objects::{EndpointSlice, Guarded, Service};
use crate::publish::Publisher;
use crate::source::Readiness;
use crate::source::SourceKind;

/// The environment variable naming this replica's pod (the downward API's `metadata.name`):
/// its identity in the Lease.
pub const POD_NAME_ENV: &str = "POD_NAME";
/// The Lease whose holder writes status.
pub const LEASE_NAME: &str = "sniroute-gateway-status";
/// The field manager status is applied with.
pub const FIELD_MANAGER: &str = "sniroute-gateway-status";
/// How long a Lease unrenewed stays its holder's.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews it (and others look at it).
pub const RENEW: Duration = Duration::from_secs(5);

/// The kinds watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    GatewayClass,
    Gateway,
    TlsRoute,
    ReferenceGrant,
    Namespace,
    Service,
    EndpointSlice,
    GatewayService,
}

const KINDS: usize = 8;

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::GatewayClass => "GatewayClass",
            Self::Gateway => "Gateway",
            Self::TlsRoute => "TLSRoute",
            Self::ReferenceGrant => "ReferenceGrant",
            Self::Namespace => "Namespace",
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::GatewayService => "Service (a Gateway's)",
        }
    }
}

/// One watched object, parsed or not.
#[derive(Debug, Clone)]
enum Object {
    GatewayClass(Guarded<GatewayClass>),
    Gateway(Guarded<Gateway>),
    TlsRoute(Guarded<TlsRoute>),
    ReferenceGrant(Guarded<ReferenceGrant>),
    Namespace(Guarded<Namespace>),
    Service(Guarded<Service>),
    EndpointSlice(Guarded<EndpointSlice>),
    GatewayService(Guarded<GatewayService>),
}

type Events = Pin<Box<dyn Stream<Item = (Kind, Result<Event<Object>, watcher::Error>)> + Send>>;

/// The objects as the watches delivered them, with relists buffered.
#[derive(Debug, Default)]
struct Store {
    objects: Objects,
    relisting: [Option<Vec<Object>>; KINDS],
    malformed: u64,
}

/// `namespace/name` of an object's metadata (the name alone for cluster-scoped kinds).
fn key_of(meta: &ObjectMeta) -> Key {
    Key::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl Store {
    fn kind_of(object: &Object) -> Kind {
        match object {
            Object::GatewayClass(_) => Kind::GatewayClass,
            Object::Gateway(_) => Kind::Gateway,
            Object::TlsRoute(_) => Kind::TlsRoute,
            Object::ReferenceGrant(_) => Kind::ReferenceGrant,
            Object::Namespace(_) => Kind::Namespace,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::GatewayService(_) => Kind::GatewayService,
        }
    }

    /// Stores `object` (or removes it, when `deleted` or when it does not parse).
    fn put(&mut self, object: Object, deleted: bool) {
        let kind = Self::kind_of(&object);
        let o = &mut self.objects;
        macro_rules! put {
            ($map:expr, $guard:expr, $key:expr) => {{
                let key = $key;
                match ($guard.0, deleted) {
                    (Ok(value), false) => {
                        $map.insert(key, value);
                    }
                    (Err(invalid), false) => {
                        self.malformed += 1;
                        tracing::warn!(
                            kind = kind.as_str(),
                            object = ?key,
                            error = %invalid,
                            "object does not parse; left out, the rest still routes"
                        );
                        $map.remove(&key);
                    }
                    (_, true) => {
                        $map.remove(&key);
                    }
                }
            }};
        }
        match object {
            Object::GatewayClass(g) => {
                let name = g.meta().name.clone().unwrap_or_default();
                put!(o.classes, g, name)
            }
            Object::Gateway(g) => {
                let key = key_of(g.meta());
                put!(o.gateways, g, key)
            }
            Object::TlsRoute(g) => {
                let key = key_of(g.meta());
                put!(o.routes, g, key)
            }
            Object::ReferenceGrant(g) => {
                let key = key_of(g.meta());
                put!(o.grants, g, key)
            }
            Object::Namespace(g) => {
                let name = g.meta().name.clone().unwrap_or_default();
                let labels = g.meta().labels.clone().unwrap_or_default();
                if deleted || g.0.is_err() {
                    o.namespaces.remove(&name);
                } else {
                    o.namespaces.insert(name, labels);
                }
            }
            Object::Service(g) => {
                let key = key_of(g.meta());
                put!(o.services, g, key)
            }
            Object::GatewayService(g) => {
                let name = g.meta().name.clone().unwrap_or_default();
                put!(o.gateway_services, g, name)
            }
            Object::EndpointSlice(g) => {
                let meta = g.meta();
                let service = meta
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(crate::kube::objects::SERVICE_NAME_LABEL))
                    .cloned()
                    .unwrap_or_default();
                let service = Key::new(meta.namespace.clone().unwrap_or_default(), service);
                let name = meta.name.clone().unwrap_or_default();
                let slices = o.slices.get_or_insert_with(BTreeMap::new);
                let of_service = slices.entry(service.clone()).or_default();
                put!(of_service, g, name.clone());
                if of_service.is_empty() {
                    slices.remove(&service);
                }
            }
        }
    }

    /// Forgets every object of `kind` (before a relist's objects go in).
    fn clear(&mut self, kind: Kind) {
        let o = &mut self.objects;
        match kind {
            Kind::GatewayClass => o.classes.clear(),
            Kind::Gateway => o.gateways.clear(),
            Kind::TlsRoute => o.routes.clear(),
            Kind::ReferenceGrant => o.grants.clear(),
            Kind::Namespace => o.namespaces.clear(),
            Kind::Service => o.services.clear(),
            Kind::EndpointSlice => {
                if let Some(slices) = &mut o.slices {
                    slices.clear();
                }
            }
            Kind::GatewayService => o.gateway_services.clear(),
        }
    }

    /// Feeds one watch event; true if it completed a (re)list.
    fn apply(&mut self, kind: Kind, event: Event<Object>) -> bool {
        match event {
            Event::Apply(object) => self.put(object, false),
            Event::Delete(object) => self.put(object, true),
            Event::Init => self.relisting[kind as usize] = Some(Vec::new()),
            Event::InitApply(object) => match &mut self.relisting[kind as usize] {
                Some(buffer) => buffer.push(object),
                None => self.put(object, false),
            },
            Event::InitDone => {
                let buffer = self.relisting[kind as usize].take().unwrap_or_default();
                self.clear(kind);
                for object in buffer {
                    self.put(object, false);
                }
                return true;
            }
        }
        false
    }
}

/// Watches the Gateway API objects, publishes their routes and (as the Lease holder)
/// writes their status.
pub struct GatewaySource {
    client: Client,
    config: KubernetesConfig,
    gateway: GatewayApiConfig,
    publisher: Arc<Publisher>,
    ready: watch::Sender<Readiness>,
    identity: String,
}

impl GatewaySource {
    /// A source reading through `client` with `config` (its `gateway_api` must be set),
    /// publishing through `publisher` and setting `ready` once every kind has been listed
    /// and published; `identity` names this replica in the Lease (its pod name).
    pub fn new(
        client: Client,
        config: KubernetesConfig,
        gateway: GatewayApiConfig,
        publisher: Arc<Publisher>,
        ready: watch::Sender<Readiness>,
        identity: String,
    ) -> Self {
        Self {
            client,
            config,
            gateway,
            publisher,
            ready,
            identity,
        }
    }

    /// Watches until `shutdown`. Never fails: watch errors are logged and retried, and the
    /// last published routes stay in use.
    pub async fn run(self, shutdown: CancellationToken) {
        let events = watch_all(
            &self.client,
            self.config.backends,
            self.gateway.listener_ports.is_some(),
        );
        let (leader_tx, leader) = watch::channel(false);
        let lease = hold_lease(
            Api::namespaced(self.client.clone(), self.client.default_namespace()),
            self.identity.clone(),
            leader_tx,
            shutdown.clone(),
        );
        // One task: the Lease is held (and given back at shutdown) beside the watches, so no
        // task runs outside the caller's tracker.
        tokio::join!(lease, self.run_with(events, leader, shutdown));
    }

    async fn run_with(
        self,
        mut events: Events,
        mut leader: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        let mut store = Store::default();
        if self.config.backends == BackendsMode::Endpoints {
            store.objects.slices = Some(BTreeMap::new());
        }
        let mut listed = [false; KINDS];
        listed[Kind::EndpointSlice as usize] = self.config.backends == BackendsMode::Service;
        listed[Kind::GatewayService as usize] = self.gateway.listener_ports.is_none();
        let settings = Settings {
            controller_name: self.gateway.controller_name.clone(),
            addresses: self
                .gateway
                .addresses
                .iter()
                .map(|a| GatewayAddress {
                    kind: Some(
                        if a.parse::<std::net::IpAddr>().is_ok() {
                            "IPAddress"
                        } else {
                            "Hostname"
                        }
                        .to_owned(),
                    ),
                    value: Some(a.clone()),
                })
                .collect(),
            zone: self.config.zone.clone(),
            services: self
                .gateway
                .listener_ports
                .clone()
                .map(|ports| ServiceSettings {
                    namespace: self.client.default_namespace().to_owned(),
                    ports,
                    service_type: self.gateway.service_type.clone(),
                }),
        };
        let mut due: Option<Instant> = None;
        let mut published: Option<Graph> = None;
        let mut malformed_reported = 0;
        tracing::info!(
            controller_name = self.gateway.controller_name,
            identity = self.identity,
            "gateway API source watching GatewayClasses, Gateways, TLSRoutes, ReferenceGrants, \
             Namespaces, Services and (with backends: endpoints) EndpointSlices"
        );
        loop {
            let all_listed = listed.iter().all(|&l| l);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() && all_listed => {
                    due = None;
                    let graph = graph::build(&store.objects, &settings);
                    let new = store.malformed - malformed_reported;
                    malformed_reported = store.malformed;
                    self.publisher.source_failed(SourceKind::GatewayApi, new);
                    self.publish(&graph, published.as_ref());
                    if *leader.borrow() {
                        self.write_status(&store.objects, &graph).await;
                        self.write_services(&store.objects, &graph, &settings).await;
                    }
                    published = Some(graph);
                }
                Ok(()) = leader.changed() => {
                    let now_leader = *leader.borrow();
                    tracing::info!(identity = self.identity, leader = now_leader, "gateway API status Lease {}", if now_leader { "acquired: this replica writes status" } else { "lost: another replica writes status" });
                    if now_leader {
                        if let Some(graph) = &published {
                            self.write_status(&store.objects, graph).await;
                            self.write_services(&store.objects, graph, &settings).await;
                        }
                    }
                }
                item = events.next() => {
                    let Some((kind, event)) = item else {
                        tracing::error!("gateway API watches ended; keeping the last published routes");
                        shutdown.cancelled().await;
                        return;
                    };
                    match event {
                        Ok(event) => {
                            if store.apply(kind, event) && !listed[kind as usize] {
                                listed[kind as usize] = true;
                                tracing::info!(kind = kind.as_str(), "gateway API initial list applied");
                            }
                        }
                        Err(error) => {
                            self.publisher.source_failed(SourceKind::GatewayApi, 1);
                            tracing::warn!(kind = kind.as_str(), error = %error, "gateway API watch failed; retrying with backoff, routes unchanged");
                        }
                    }
                    if due.is_none() {
                        due = Some(if published.is_none() { Instant::now() } else { Instant::now() + self.config.debounce });
                    }
                }
            }
        }
    }

    /// Hands the routes to the publisher if they changed, and logs newly refused routes.
    fn publish(&self, graph: &Graph, before: Option<&Graph>) {
        let refused_before: BTreeSet<&Key> = before
            .map(|b| b.refused.iter().map(|r| &r.route).collect())
            .unwrap_or_default();
        let mut newly_refused = 0;
        for refused in &graph.refused {
            if !refused_before.contains(&refused.route) {
                newly_refused += 1;
                tracing::warn!(tlsroute = %refused.route, "no valid backend: connections to its hostnames are refused: {}", refused.why);
            }
        }
        self.publisher
            .source_failed(SourceKind::GatewayApi, newly_refused);
        if before.is_some_and(|b| b.routes == graph.routes && b.listeners == graph.listeners) {
            return;
        }
        // On failure the publisher has logged it and the table in use stays.
        if let Ok(published) = self.publisher.update_with_listeners(
            SourceKind::GatewayApi,
            graph.routes.clone(),
            graph.listeners.iter().copied().collect(),
        ) {
            if before.is_none() {
                tracing::info!(
                    routes = graph.routes.len(),
                    gateways = graph.gateways.len(),
                    generation = published.generation,
                    "gateway API source ready: first full list published"
                );
                self.ready.send_replace(Readiness::Ready);
            }
        }
    }

    /// Applies every status that differs from what its object says.
    async fn write_status(&self, objects: &Objects, graph: &Graph) {
        let now = Time(Timestamp::now());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let controller = self.gateway.controller_name.as_str();
        let (mut written, mut failed) = (0usize, 0u64);
        let mut tally = |ok: bool| {
            if ok {
                written += 1;
            } else {
                failed += 1;
            }
        };
        for (name, want) in &graph.classes {
            let Some(have) = objects.classes.get(name) else {
                continue;
            };
            if let Some(body) = status::class_apply(name, want, have, &now) {
                let api = Api::<Guarded<GatewayClass>>::all(self.client.clone());
                tally(apply_status(api, name, name, &body, &params).await);
            }
        }
        for (key, want) in &graph.gateways {
            let Some(have) = objects.gateways.get(key) else {
                continue;
            };
            if let Some(body) = status::gateway_apply(key, want, have, &now) {
                let api = Api::<Guarded<Gateway>>::namespaced(self.client.clone(), &key.namespace);
                tally(apply_status(api, &key.name, &key.to_string(), &body, &params).await);
            }
        }
        // Every TLSRoute: one that no longer refers to our Gateways loses our entries.
        for (key, have) in &objects.routes {
            let want = graph
                .routes_status
                .get(key)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if let Some(body) = status::route_apply(key, controller, want, have, &now) {
                let api = Api::<Guarded<TlsRoute>>::namespaced(self.client.clone(), &key.namespace);
                tally(apply_status(api, &key.name, &key.to_string(), &body, &params).await);
            }
        }
        self.publisher.source_failed(SourceKind::GatewayApi, failed);
        if written > 0 {
            tracing::debug!(written, "gateway API status written");
        }
    }
}

impl GatewaySource {
    /// As the Lease holder, with per-Gateway Services: creates, updates and deletes our
    /// Services so every accepted Gateway has one with a pod port for each listener port
    /// ([`infra::plan`]). Failures are logged and counted; the next change retries.
    async fn write_services(&self, objects: &Objects, graph: &Graph, settings: &Settings) {
        let Some(services) = &settings.services else {
            return;
        };
        let plan = infra::plan(&graph.wanted_services, &objects.gateway_services, services);
        let api = Api::<GatewayService>::namespaced(self.client.clone(), &services.namespace);
        let params = PatchParams::apply(infra::FIELD_MANAGER).force();
        let mut failed = 0;
        for (gateway, port) in &plan.exhausted {
            tracing::warn!(gateway = %gateway, port, range = ?services.ports, "no pod port left in kubernetes.gateway_api.listener_ports: the listener is not served");
        }
        for (name, body) in &plan.apply {
            match api.patch(name, &params, &Patch::Apply(body)).await {
                Ok(_) => {
                    tracing::info!(service = name, gateway = %body["metadata"]["annotations"][infra::GATEWAY_ANNOTATION], ports = %body["spec"]["ports"], "gateway Service applied")
                }
                Err(error) => {
                    failed += 1;
                    tracing::warn!(service = name, %error, "gateway Service not applied; retried at the next change");
                }
            }
        }
        for name in &plan.delete {
            match api.delete(name, &Default::default()).await {
                Ok(_) => tracing::info!(
                    service = name,
                    "gateway Service deleted: its Gateway is gone"
                ),
                Err(::kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => {
                    failed += 1;
                    tracing::warn!(service = name, %error, "gateway Service not deleted; retried at the next change");
                }
            }
        }
        self.publisher.source_failed(SourceKind::GatewayApi, failed);
    }
}

/// Applies `body` to the status of object `name` (`object` in logs: `namespace/name`);
/// false (logged) if the API server refused.
async fn apply_status<K>(
    api: Api<Guarded<K>>,
    name: &str,
    object: &str,
    body: &serde_json::Value,
    params: &PatchParams,
) -> bool
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.patch_status(name, params, &Patch::Apply(body)).await {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(kind = %K::kind(&()), object, %error, "status not written; retried at the next change");
            false
        }
    }
}

/// Holds the status Lease as `identity` while it can, telling `leader` whether it does.
async fn hold_lease(
    api: Api<Lease>,
    identity: String,
    leader: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    // The holder's last renewal as this replica saw it: (resourceVersion, when seen).
    let mut seen: Option<(String, Instant)> = None;
    loop {
        let holding = match try_lease(&api, &identity, &mut seen).await {
            Ok(holding) => holding,
            Err(error) => {
                tracing::warn!(%error, lease = LEASE_NAME, "gateway API status Lease not reachable; not writing status until it is");
                false
            }
        };
        leader.send_if_modified(|was| std::mem::replace(was, holding) != holding);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RENEW) => {}
        }
    }
}

/// One round of leader election: renews or takes the Lease if it is ours or expired.
async fn try_lease(
    api: &Api<Lease>,
    identity: &str,
    seen: &mut Option<(String, Instant)>,
) -> Result<bool, ::kube::Error> {
    let now = MicroTime(Timestamp::now());
    let duration = i32::try_from(LEASE_DURATION.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(LEASE_NAME).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.to_owned()),
                lease_duration_seconds: Some(duration),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(::kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let rv = lease.metadata.resource_version.clone().unwrap_or_default();
    let mine = holder == identity;
    if !mine && !holder.is_empty() {
        // Expired only if this replica has seen no renewal for a whole lease duration.
        let since = match seen {
            Some((seen_rv, at)) if *seen_rv == rv => *at,
            _ => {
                *seen = Some((rv, Instant::now()));
                return Ok(false);
            }
        };
        let held_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(LEASE_DURATION, Duration::from_secs);
        if since.elapsed() < held_for {
            return Ok(false);
        }
    }
    let mut next = spec;
    if !mine {
        next.acquire_time = Some(now.clone());
        next.lease_transitions = Some(next.lease_transitions.unwrap_or_default() + 1);
        tracing::info!(
            previous = holder,
            identity,
            "taking over the gateway API status Lease"
        );
    }
    next.holder_identity = Some(identity.to_owned());
    next.lease_duration_seconds = Some(duration);
    next.renew_time = Some(now);
    lease.spec = Some(next);
    match api
        .replace(LEASE_NAME, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(::kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

/// The watches, merged into one stream of events tagged with their kind.
fn watch_all(client: &Client, backends: BackendsMode, gateway_services: bool) -> Events {
    let all_of = watcher::Config::default;
    let mut all = vec![
        watch_kind(
            Api::all(client.clone()),
            Kind::GatewayClass,
            Object::GatewayClass,
            all_of(),
        ),
        watch_kind(
            Api::all(client.clone()),
            Kind::Gateway,
            Object::Gateway,
            all_of(),
        ),
        watch_kind(
            Api::all(client.clone()),
            Kind::TlsRoute,
            Object::TlsRoute,
            all_of(),
        ),
        watch_kind(
            Api::all(client.clone()),
            Kind::ReferenceGrant,
            Object::ReferenceGrant,
            all_of(),
        ),
        watch_kind(
            Api::all(client.clone()),
            Kind::Namespace,
            Object::Namespace,
            all_of(),
        ),
        watch_kind(
            Api::all(client.clone()),
            Kind::Service,
            Object::Service,
            all_of(),
        ),
    ];
    if backends == BackendsMode::Endpoints {
        all.push(watch_kind(
            Api::all(client.clone()),
            Kind::EndpointSlice,
            Object::EndpointSlice,
            all_of(),
        ));
    }
    if gateway_services {
        // Ours only: sniroute's namespace, our label (and the whole object, which the
        // cluster-wide Service watch slims down).
        all.push(watch_kind(
            Api::namespaced(client.clone(), client.default_namespace()),
            Kind::GatewayService,
            Object::GatewayService,
            watcher::Config::default().labels(infra::SELECTOR),
        ));
    }
    Box::pin(stream::select_all(all))
}

fn watch_kind<K>(
    api: Api<Guarded<K>>,
    kind: Kind,
    wrap: fn(Guarded<K>) -> Object,
    config: watcher::Config,
) -> Events
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    Box::pin(
        watcher::watcher(api, config)
            .default_backoff()
            .map(move |event| {
                let event = event.map(|e| match e {
                    Event::Apply(k) => Event::Apply(wrap(k)),
                    Event::Delete(k) => Event::Delete(wrap(k)),
                    Event::Init => Event::Init,
                    Event::InitApply(k) => Event::InitApply(wrap(k)),
                    Event::InitDone => Event::InitDone,
                });
                (kind, event)
            }),
    )
}

/// Ready when every one of `sources` is: the first reason of one that is not. With one source
/// that source's own receiver and no task; with more, the future that keeps the joined value
/// current, for the caller's shutdown tracker (it ends at `shutdown` or when a source ends).
pub fn joined(
    mut sources: Vec<watch::Receiver<Readiness>>,
    shutdown: CancellationToken,
) -> (
    watch::Receiver<Readiness>,
    Option<impl std::future::Future<Output = ()> + Send + 'static>,
) {
    if sources.len() <= 1 {
        // Nothing to join: no source (the config refuses that) has nothing to wait for.
        let only = sources
            .pop()
            .unwrap_or_else(|| watch::channel(Readiness::Ready).1);
        return (only, None);
    }
    let state = |sources: &[watch::Receiver<Readiness>]| {
        sources
            .iter()
            .map(|s| s.borrow().clone())
            .find(|r| *r != Readiness::Ready)
            .unwrap_or(Readiness::Ready)
    };
    let (tx, rx) = watch::channel(state(&sources));
    let follow = async move {
        loop {
            let changes = sources.iter_mut().map(|s| Box::pin(s.changed()));
            tokio::select! {
                () = shutdown.cancelled() => return,
                (changed, _, _) = futures::future::select_all(changes) => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            let now = state(&sources);
            tx.send_if_modified(|current| std::mem::replace(current, now.clone()) != now);
        }
    };
    (rx, Some(follow))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio::sync::mpsc;

    use super::*;

    type Item = (Kind, Result<Event<Object>, watcher::Error>);

    fn guarded<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> Guarded<K> {
        serde_json::from_value(value).unwrap()
    }

    fn list(tx: &mpsc::UnboundedSender<Item>, kind: Kind, objects: Vec<Object>) {
        tx.send((kind, Ok(Event::Init))).unwrap();
        for object in objects {
            tx.send((kind, Ok(Event::InitApply(object)))).unwrap();
        }
        tx.send((kind, Ok(Event::InitDone))).unwrap();
    }

    #[tokio::test]
    async fn joined_is_the_one_source_itself_or_a_task_that_follows_all_and_ends_at_shutdown() {
        let (one_tx, one_rx) = watch::channel(Readiness::waiting());
        let (same, follow) = joined(vec![one_rx.clone()], CancellationToken::new());
        assert!(same.same_channel(&one_rx) && follow.is_none());

        let (two_tx, two_rx) = watch::channel(Readiness::Ready);
        let shutdown = CancellationToken::new();
        let (mut both, follow) = joined(vec![one_rx, two_rx], shutdown.clone());
        let follow = tokio::spawn(follow.expect("two sources need a task"));
        assert_ne!(*both.borrow_and_update(), Readiness::Ready);
        one_tx.send(Readiness::Ready).unwrap();
        both.changed().await.unwrap();
        assert_eq!(*both.borrow_and_update(), Readiness::Ready);
        two_tx.send(Readiness::waiting()).unwrap();
        both.changed().await.unwrap();
        assert_ne!(*both.borrow(), Readiness::Ready);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), follow)
            .await
            .expect("the join ends at shutdown")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_once_every_kind_is_listed_and_follows_changes() {
        let (tx, rx) = mpsc::unbounded_channel::<Item>();
        let events: Events = Box::pin(stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        let client =
            Client::try_from(::kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let publisher = Arc::new(Publisher::new(Arc::default()));
        let (ready_tx, ready) = watch::channel(Readiness::waiting());
        let config = KubernetesConfig {
            backends: BackendsMode::Service,
            ..KubernetesConfig::default()
        };
        let gateway = GatewayApiConfig {
            controller_name: "sniroute.dev/gateway-controller".into(),
            addresses: vec!["198.18.0.10".into()],
            listener_ports: None,
            service_type: "LoadBalancer".into(),
        };
        let source = GatewaySource::new(
            client,
            config,
            gateway,
            publisher.clone(),
            ready_tx,
            "test".into(),
        );
        let (_leader_tx, leader) = watch::channel(false);
        let shutdown = CancellationToken::new();
        tokio::spawn(source.run_with(events, leader, shutdown.clone()));

        let route = |host: &str| {
            Object::TlsRoute(guarded(json!({
                "metadata": {"name": "r", "namespace": "tenants", "resourceVersion": host},
                "spec": {"parentRefs": [{"name": "gw", "namespace": "infra"}],
                         "hostnames": [host],
                         "rules": [{"backendRefs": [{"name": "svc", "port": 443}]}]},
            })))
        };
        list(
            &tx,
            Kind::GatewayClass,
            vec![Object::GatewayClass(guarded(json!({
                "metadata": {"name": "c"},
                "spec": {"controllerName": "sniroute.dev/gateway-controller"},
            })))],
        );
        list(
            &tx,
            Kind::Gateway,
            vec![Object::Gateway(guarded(json!({
                "metadata": {"name": "gw", "namespace": "infra"},
                "spec": {"gatewayClassName": "c", "listeners": [
                    {"name": "tls", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"},
                     "allowedRoutes": {"namespaces": {"from": "All"}}}]},
            })))],
        );
        list(&tx, Kind::TlsRoute, vec![route("a.example.test")]);
        list(&tx, Kind::ReferenceGrant, Vec::new());
        list(
            &tx,
            Kind::Service,
            vec![Object::Service(guarded(json!({
                "metadata": {"name": "svc", "namespace": "tenants"},
                "spec": {"clusterIP": "198.19.0.1", "ports": [{"port": 443}]},
            })))],
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            publisher.shared().load().generation,
            0,
            "Namespaces not listed yet"
        );
        assert_eq!(*ready.borrow(), Readiness::waiting());
        list(&tx, Kind::Namespace, Vec::new());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*ready.borrow(), Readiness::Ready);
        let snapshot = publisher.shared().load();
        let routed = snapshot.table.route("tenants/r").unwrap();
        assert_eq!(routed.spec().hostnames[0].to_string(), "a.example.test");
        assert_eq!(routed.backends()[0].to_string(), "198.19.0.1:443");

        // A change is published after the debounce; a bad object fails alone.
        tx.send((Kind::TlsRoute, Ok(Event::Apply(route("b.example.test")))))
            .unwrap();
        tx.send((
            Kind::Gateway,
            Ok(Event::Apply(Object::Gateway(guarded(json!({
                "metadata": {"name": "bad", "namespace": "infra"},
                "spec": {"listeners": "not a list"},
            }))))),
        ))
        .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let snapshot = publisher.shared().load();
        assert_eq!(snapshot.generation, 2);
        let routed = snapshot.table.route("tenants/r").unwrap();
        assert_eq!(routed.spec().hostnames[0].to_string(), "b.example.test");
        shutdown.cancel();
    }
}
