//! The watches and the loop that turns their events into published tables.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::failure::{Failure, Refusals, FORBIDDEN_GRACE};
use super::objects::Guarded;
use super::retry::Recovery;
use ::kube::api::PostParams;
use ::kube::runtime::watcher::{self, Event};
use ::kube::{Api, Client};
use futures::stream::{self, Stream, StreamExt};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::objects::{EndpointSlice, HostedCluster, OcpRoute, Service, HCP_ROUTE_LABEL};
use super::store::{Kind, Object, Store};
use super::zone;
use crate::config::{BackendsMode, KubernetesConfig};
use crate::publish::Publisher;
use crate::source::{Readiness, SourceKind};

/// Watches HostedClusters, their Routes and Services and publishes their routes.
pub struct KubeSource {
    client: Client,
    config: KubernetesConfig,
    publisher: Arc<Publisher>,
    ready: watch::Sender<Readiness>,
    /// Malformed objects, left-out routes and broken clusters at the last rebuild: each new
    /// one is a source error that kept the rest.
    problems: AtomicU64,
    /// The node this replica runs on, whose zone is preferred when `kubernetes.zone` is not set.
    node: Option<String>,
}

type Events = Pin<Box<dyn Stream<Item = (Kind, Result<Event<Object>, watcher::Error>)> + Send>>;

// === impl KubeSource ===

impl KubeSource {
    /// A source reading through `client`, publishing through `publisher`, and setting `ready`
    /// once the first full list of every kind has been published (and back to not ready,
    /// with the reason, while the API server forbids this identity a verb it needs).
    pub fn new(
        client: Client,
        config: KubernetesConfig,
        publisher: Arc<Publisher>,
        ready: watch::Sender<Readiness>,
    ) -> Self {
        Self {
            client,
            config,
            publisher,
            ready,
            problems: AtomicU64::new(0),
            node: None,
        }
    }

    /// The same source on node `node` (the downward API's `spec.nodeName`), whose
    /// `topology.kubernetes.io/zone` label is the zone when `kubernetes.zone` is not set.
    pub fn on_node(self, node: Option<String>) -> Self {
        Self { node, ..self }
    }

    /// Watches until `shutdown`. Never fails: an unreachable API server, an expired watch or
    /// a bad object is logged and retried, and the last published routes stay in use.
    pub async fn run(mut self, shutdown: CancellationToken) {
        if self.config.backends == BackendsMode::Endpoints {
            let configured = self.config.zone.take();
            self.config.zone = zone::zone(&self.client, configured, self.node.as_deref()).await;
        }
        let recovery = Recovery::new();
        let events = watch_all(&self.client, self.config.backends, &recovery);
        let access = access_checks(self.client.clone());
        let client = self.client.clone();
        tokio::select! {
            () = self.run_with(events, access, shutdown) => {}
            () = recovery.probe(&client) => {}
        }
    }

    async fn run_with(self, mut events: Events, access: Access, shutdown: CancellationToken) {
        // The checks end once everything is granted; fused, the ended stream stays quiet.
        let mut access = access.fuse();
        let mut state = Watching::new(&self.config);
        tracing::info!(
            debounce = ?self.config.debounce,
            backends = ?self.config.backends,
            zone = self.config.zone.as_deref().unwrap_or("none"),
            "kubernetes source watching HostedClusters, Routes labelled {HCP_ROUTE_LABEL}, \
             Services and (with backends: endpoints) EndpointSlices"
        );
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = sleep_until(state.due.unwrap_or_else(Instant::now)), if state.rebuild_due() => {
                    state.due = None;
                    self.rebuild_and_publish(&mut state.store, &mut state.published_once);
                    self.update_readiness(&state);
                }
                Some(checked) = access.next() => {
                    log_access(&checked, state.permitted.as_ref());
                    state.permitted = Some(checked);
                    self.update_readiness(&state);
                }
                item = events.next() => {
                    let Some((kind, event)) = item else {
                        tracing::error!("kubernetes watches ended; keeping the last published routes");
                        shutdown.cancelled().await;
                        return;
                    };
                    match event {
                        Ok(event) => state.apply(kind, event),
                        Err(error) => {
                            self.publisher.source_failed(SourceKind::Kubernetes, 1);
                            state.failed(kind, &error);
                        }
                    }
                    state.schedule(self.config.debounce);
                }
            }
        }
    }

    fn rebuild_and_publish(&self, store: &mut Store, published_once: &mut bool) {
        let started = Instant::now();
        let rebuilt = store.rebuild();
        let problems = store.problems();
        let now = problems.malformed + problems.rejected + problems.broken_clusters;
        let before = self.problems.swap(now, Ordering::Relaxed);
        // Each new bad object, left-out route or broken cluster is a failure that kept the rest.
        self.publisher
            .source_failed(SourceKind::Kubernetes, now.saturating_sub(before));
        if !rebuilt.changed && *published_once {
            tracing::debug!(
                clusters = rebuilt.clusters,
                "kubernetes objects changed, routes did not"
            );
            return;
        }
        let routes = store.route_sets();
        let count: usize = routes.iter().map(|set| set.len()).sum();
        // On failure the publisher has logged it and the table in use stays; the next change
        // retries.
        if let Ok(published) = self.publisher.update_sets(SourceKind::Kubernetes, routes) {
            {
                let elapsed = started.elapsed();
                if !*published_once {
                    *published_once = true;
                    tracing::info!(
                        hostedclusters = store.clusters(),
                        routes = count,
                        generation = published.generation,
                        build_ms = elapsed.as_secs_f64() * 1e3,
                        "kubernetes source ready: first full list published"
                    );
                } else {
                    tracing::debug!(
                        clusters = rebuilt.clusters,
                        routes = count,
                        build_ms = elapsed.as_secs_f64() * 1e3,
                        "kubernetes routes rebuilt"
                    );
                }
            }
        }
    }
}

impl KubeSource {
    /// Ready once published and the RBAC check has found every verb granted.
    fn update_readiness(&self, state: &Watching) {
        let readiness = match &state.permitted {
            Some(Err(missing)) => Readiness::NotReady(missing.clone()),
            Some(Ok(())) if state.published_once => Readiness::Ready,
            None if state.published_once => {
                Readiness::NotReady("the kubernetes source is checking its RBAC permissions".into())
            }
            _ => Readiness::waiting(),
        };
        self.ready.send_if_modified(|current| {
            let changed = *current != readiness;
            *current = readiness;
            changed
        });
    }
}

/// What the watch loop knows between events.
struct Watching {
    store: Store,
    /// Per kind, whether its first list is applied (or, for EndpointSlices, given up on).
    listed: [bool; Kind::COUNT],
    /// Per kind, its 403s since it last answered.
    refusals: [Refusals; Kind::COUNT],
    /// What the RBAC check found: None until it answers, then Ok or what is missing.
    permitted: Option<Result<(), String>>,
    published_once: bool,
    /// When the debounced rebuild is due.
    due: Option<Instant>,
}

// === impl Watching ===

impl Watching {
    fn new(config: &KubernetesConfig) -> Self {
        let store = match config.backends {
            BackendsMode::Endpoints => Store::to_endpoints(config.zone.clone()),
            BackendsMode::Service => Store::new(),
        };
        let mut listed = [false; Kind::COUNT];
        // Not watched: nothing to wait for.
        listed[Kind::EndpointSlice as usize] = config.backends == BackendsMode::Service;
        Self {
            store,
            listed,
            refusals: Default::default(),
            permitted: None,
            published_once: false,
            due: None,
        }
    }

    fn all_listed(&self) -> bool {
        self.listed.iter().all(|&l| l)
    }

    /// Whether a rebuild is scheduled and may run (every kind listed once).
    fn rebuild_due(&self) -> bool {
        self.due.is_some() && self.all_listed()
    }

    /// One event of `kind` into the store.
    fn apply(&mut self, kind: Kind, event: Event<Object>) {
        // Init is the watcher's mark that it starts to list, before it asks: no answer.
        if !matches!(event, Event::Init) {
            self.refusals[kind as usize].answered();
        }
        if apply(&mut self.store, kind, event) && !self.listed[kind as usize] {
            self.listed[kind as usize] = true;
            tracing::info!(kind = kind.as_str(), "initial list applied");
        }
    }

    /// A failed request of `kind`'s watch, logged by what it means; the watch retries it.
    fn failed(&mut self, kind: Kind, error: &watcher::Error) {
        let failure = Failure::of(error);
        let persists = match &failure {
            Failure::Forbidden { .. } => self.refusals[kind as usize].refused(Instant::now()),
            _ => false,
        };
        // A server that does not serve them (an EndpointSlice API older than
        // `discovery.k8s.io/v1`, or not a full kube-apiserver), or a 403 while they have never
        // been listed, is taken at once: waiting would keep the source unready. Once listed,
        // their last objects stay through a restarted server's refusals until those persist.
        let unlistable = kind == Kind::EndpointSlice
            && match &failure {
                Failure::NotServed(_) => true,
                Failure::Forbidden { .. } => persists || !self.listed[kind as usize],
                _ => false,
            };
        if unlistable {
            self.slices_unlistable(&failure);
        }
        match failure {
            Failure::Forbidden { verb, message } if persists => tracing::error!(
                kind = kind.as_str(),
                "{}; retrying with backoff, routes unchanged",
                rbac_forbids(kind, verb, &message)
            ),
            // Readiness follows the RBAC check, not this answer.
            Failure::Forbidden { verb, message } => tracing::warn!(
                kind = kind.as_str(),
                "the kubernetes API server refused `{verb}` on {}: {message}; a server that has \
                 just started does until its authorizer has synced: retrying with backoff, \
                 routes unchanged (an RBAC error if it persists for {}s)",
                resource(kind),
                FORBIDDEN_GRACE.as_secs()
            ),
            _ => tracing::warn!(
                kind = kind.as_str(),
                error = %error,
                "kubernetes watch failed; retrying with backoff, routes unchanged"
            ),
        }
    }

    /// EndpointSlices cannot be listed: every Service goes to its ClusterIP.
    fn slices_unlistable(&mut self, failure: &Failure) {
        let kind = Kind::EndpointSlice;
        // Endpoints are an improvement, not a need: without them every Service goes to
        // its ClusterIP, as before.
        if !self.listed[kind as usize] || !self.store.slices_unlisted() {
            let reason = match failure {
                Failure::Forbidden { verb, message } => rbac_forbids(kind, verb, message),
                Failure::NotServed(message) => {
                    format!(
                        "the API server does not serve {} ({message})",
                        resource(kind)
                    )
                }
                _ => format!("{} cannot be listed", resource(kind)),
            };
            tracing::warn!(
                "{reason}; routing every Service to its ClusterIP until EndpointSlices can be listed"
            );
        }
        self.store.slices_unlistable();
        self.listed[kind as usize] = true;
    }

    /// After an event: the first table at once, later changes after `debounce`.
    fn schedule(&mut self, debounce: Duration) {
        if self.all_listed() && !self.published_once {
            // The first table: no reason to wait.
            self.due = Some(Instant::now());
        } else if self.store.dirty() > 0 && self.due.is_none() {
            self.due = Some(Instant::now() + debounce);
        }
    }
}

/// Logs what the RBAC check found when it differs from `before`.
fn log_access(checked: &Result<(), String>, before: Option<&Result<(), String>>) {
    match (checked, before) {
        (Err(missing), Some(Err(before))) if missing == before => {}
        (Err(missing), _) => tracing::error!(
            "{missing}; grant it in sniroute's ClusterRole (deploy/base/rbac.yaml); \
             not ready until then, checking again"
        ),
        (Ok(()), Some(Err(_))) => {
            tracing::info!("kubernetes RBAC now grants every verb the source needs");
        }
        (Ok(()), _) => {}
    }
}

/// The resource a kind is watched as, as RBAC names it: (API group, resource).
fn resource_of(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::HostedCluster => ("hypershift.openshift.io", "hostedclusters"),
        Kind::Route => ("route.openshift.io", "routes"),
        Kind::Service => ("", "services"),
        Kind::EndpointSlice => ("discovery.k8s.io", "endpointslices"),
    }
}

/// `services (core)`, `routes (route.openshift.io)`.
fn resource(kind: Kind) -> String {
    match resource_of(kind) {
        ("", resource) => format!("{resource} (core)"),
        (group, resource) => format!("{resource} ({group})"),
    }
}

/// What a 403 to `verb` on `kind` that persists says: `kubernetes RBAC forbids `list` on
/// services (core): <the server's message>`.
fn rbac_forbids(kind: Kind, verb: &str, message: &str) -> String {
    format!(
        "kubernetes RBAC forbids `{verb}` on {}: {message}",
        resource(kind)
    )
}

/// The verbs the watchers use, cluster-wide, on every kind.
const VERBS: [&str; 2] = ["list", "watch"];

/// RBAC check results: `Ok` once every verb the source needs is granted (then the stream
/// ends), else what is missing, again after each retry.
type Access = Pin<Box<dyn Stream<Item = Result<(), String>> + Send>>;

/// Asks the API server (SelfSubjectAccessReview, which every authenticated identity may)
/// whether this identity may list and watch each kind cluster-wide, until it may.
fn access_checks(client: Client) -> Access {
    let retry = Duration::from_secs(5);
    Box::pin(stream::unfold(
        (client, false, false),
        move |(client, retrying, done)| async move {
            if done {
                return None;
            }
            if retrying {
                tokio::time::sleep(retry).await;
            }
            let result = match missing_access(&client).await {
                Ok(missing) if missing.is_empty() => Ok(()),
                Ok(missing) => Err(format!("kubernetes RBAC forbids {}", missing.join(", "))),
                Err(error) => Err(format!(
                    "the kubernetes source cannot check its RBAC permissions: {error}"
                )),
            };
            let done = result.is_ok();
            Some((result, (client, true, done)))
        },
    ))
}

/// Each `verb` on `resource (group)` this identity is not granted.
async fn missing_access(client: &Client) -> Result<Vec<String>, ::kube::Error> {
    let reviews = Api::<SelfSubjectAccessReview>::all(client.clone());
    let mut missing = Vec::new();
    for kind in [Kind::HostedCluster, Kind::Route, Kind::Service] {
        let (group, resource_name) = resource_of(kind);
        for verb in VERBS {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(group.to_owned()),
                        resource: Some(resource_name.to_owned()),
                        verb: Some(verb.to_owned()),
                        ..ResourceAttributes::default()
                    }),
                    ..SelfSubjectAccessReviewSpec::default()
                },
                ..SelfSubjectAccessReview::default()
            };
            let answer = reviews.create(&PostParams::default(), &review).await?;
            if !answer.status.is_some_and(|status| status.allowed) {
                missing.push(format!("`{verb}` on {}", resource(kind)));
            }
        }
    }
    Ok(missing)
}

/// Feeds one watch event to the store; true if it completed a (re)list.
fn apply(store: &mut Store, kind: Kind, event: Event<Object>) -> bool {
    match event {
        Event::Apply(object) => store.apply(object),
        Event::Delete(object) => store.delete(object),
        Event::Init => store.relist_begin(kind),
        Event::InitApply(object) => store.relist_apply(object),
        Event::InitDone => {
            store.relist_done(kind);
            return true;
        }
    }
    false
}

/// The watches, merged into one stream of events tagged with their kind, each retrying
/// through `recovery`.
fn watch_all(client: &Client, backends: BackendsMode, recovery: &Arc<Recovery>) -> Events {
    let hosted_clusters = kind_stream(
        Api::<Guarded<HostedCluster>>::all(client.clone()),
        watcher::Config::default(),
        Kind::HostedCluster,
        Object::HostedCluster,
        recovery,
    );
    let routes = kind_stream(
        Api::<Guarded<OcpRoute>>::all(client.clone()),
        watcher::Config::default().labels(HCP_ROUTE_LABEL),
        Kind::Route,
        Object::Route,
        recovery,
    );
    let services = kind_stream(
        Api::<Guarded<Service>>::all(client.clone()),
        watcher::Config::default(),
        Kind::Service,
        Object::Service,
        recovery,
    );
    let mut all = vec![hosted_clusters, routes, services];
    if backends == BackendsMode::Endpoints {
        all.push(kind_stream(
            Api::<Guarded<EndpointSlice>>::all(client.clone()),
            watcher::Config::default(),
            Kind::EndpointSlice,
            Object::EndpointSlice,
            recovery,
        ));
    }
    Box::pin(stream::select_all(all))
}

fn kind_stream<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    wrap: fn(K) -> Object,
    recovery: &Arc<Recovery>,
) -> Events
where
    K: ::kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let stream = recovery
        .retrying(watcher::watcher(api, config))
        .map(move |event| (kind, event.map(|e| map_event(e, wrap))));
    Box::pin(stream)
}

fn map_event<K>(event: Event<K>, wrap: fn(K) -> Object) -> Event<Object> {
    match event {
        Event::Apply(k) => Event::Apply(wrap(k)),
        Event::Delete(k) => Event::Delete(wrap(k)),
        Event::Init => Event::Init,
        Event::InitApply(k) => Event::InitApply(wrap(k)),
        Event::InitDone => Event::InitDone,
    }
}

/// The client found the standard way: `KUBECONFIG` (or `~/.kube/config`), then the
/// in-cluster service account.
///
/// The client's own retrying of 429/503/504 answers is off: it retries up to 15 times with
/// a backoff that grows past minutes, silently, delaying recovery. The watches already retry
/// every failure with their own bounded backoff (up to 30s, cut short once the server is
/// ready again: [`retry`](super::retry)), logging each.
pub async fn default_client() -> Result<Client, ::kube::Error> {
    let mut config = ::kube::Config::infer()
        .await
        .map_err(::kube::Error::InferConfig)?;
    config.default_retry = false;
    Client::try_from(config)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use tokio::sync::mpsc;

    use super::*;
    use crate::kube::fixtures::{self, hc_object, route_object, service_object, with_rv};

    type Item = (Kind, Result<Event<Object>, watcher::Error>);

    struct Running {
        tx: mpsc::UnboundedSender<Item>,
        access: mpsc::UnboundedSender<Result<(), String>>,
        publisher: Arc<Publisher>,
        ready: watch::Receiver<Readiness>,
        registry: prometheus_client::registry::Registry,
        shutdown: CancellationToken,
    }

    impl Running {
        fn start() -> Self {
            let (tx, rx) = mpsc::unbounded_channel::<Item>();
            let events: Events = Box::pin(stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            }));
            let (access, access_rx) = mpsc::unbounded_channel();
            let checks: Access = Box::pin(stream::unfold(access_rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            }));
            let client =
                Client::try_from(::kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
                    .unwrap();
            let mut registry = prometheus_client::registry::Registry::default();
            let metrics = crate::metrics::ControlMetrics::register(&mut registry);
            let publisher = Arc::new(Publisher::new(Arc::default()).with_metrics(metrics));
            let (ready_tx, ready) = watch::channel(Readiness::waiting());
            let source = KubeSource::new(
                client,
                KubernetesConfig::default(),
                publisher.clone(),
                ready_tx,
            );
            let shutdown = CancellationToken::new();
            tokio::spawn(source.run_with(events, checks, shutdown.clone()));
            Self {
                tx,
                access,
                publisher,
                ready,
                registry,
                shutdown,
            }
        }

        fn send(&self, kind: Kind, event: Event<Object>) {
            self.tx.send((kind, Ok(event))).unwrap();
        }

        fn list(&self, kind: Kind, objects: Vec<Object>) {
            self.send(kind, Event::Init);
            for object in objects {
                self.send(kind, Event::InitApply(object));
            }
            self.send(kind, Event::InitDone);
        }

        fn generation(&self) -> u64 {
            self.publisher.shared().load().generation
        }

        fn routes(&self) -> usize {
            self.publisher.shared().load().table.routes().len()
        }

        /// `sniroute_source_errors_total{source="kubernetes"}`, as a scrape shows it.
        fn source_errors(&self) -> u64 {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
            let series = "sniroute_source_errors_total{source=\"kubernetes\"} ";
            text.lines()
                .find_map(|line| line.strip_prefix(series))
                .and_then(|value| value.parse().ok())
                .unwrap()
        }
    }

    /// Lets the loop run and paused time pass beyond the debounce.
    async fn settle() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_once_every_kind_is_listed_then_batches_bursts() {
        let src = Running::start();
        src.access.send(Ok(())).unwrap();
        let clusters: Vec<_> = (0..2)
            .map(|i| fixtures::cluster("clusters", &format!("c{i}"), i))
            .collect();
        src.list(
            Kind::HostedCluster,
            clusters.iter().map(|c| hc_object(c.0.clone())).collect(),
        );
        src.list(
            Kind::Route,
            clusters
                .iter()
                .flat_map(|c| c.1.iter().cloned().map(route_object))
                .collect(),
        );
        settle().await;
        assert_eq!(
            src.generation(),
            0,
            "Services not listed yet: nothing published"
        );
        assert_eq!(*src.ready.borrow(), Readiness::waiting());

        src.list(
            Kind::Service,
            clusters
                .iter()
                .flat_map(|c| c.2.iter().cloned().map(service_object))
                .collect(),
        );
        settle().await;
        assert_eq!(src.generation(), 0, "EndpointSlices not listed yet");
        src.list(Kind::EndpointSlice, Vec::new());
        settle().await;
        assert_eq!(*src.ready.borrow(), Readiness::Ready);
        assert_eq!((src.generation(), src.routes()), (1, 10));

        // A failing watch changes nothing.
        src.tx
            .send((Kind::Service, Err(watcher::Error::NoResourceVersion)))
            .unwrap();
        settle().await;
        assert_eq!((src.generation(), src.routes()), (1, 10));
        assert_eq!(src.source_errors(), 1);

        // A burst of changes is one publish.
        for (i, port) in [7001, 7002, 7003].into_iter().enumerate() {
            let mut svc = clusters[0].2[0].clone();
            svc["spec"]["ports"][0]["port"] = json!(port);
            src.send(
                Kind::Service,
                Event::Apply(service_object(with_rv(svc, 10 + i as u64))),
            );
        }
        settle().await;
        assert_eq!(src.generation(), 2);
        let snapshot = src.publisher.shared().load();
        let kas = snapshot
            .table
            .routes()
            .iter()
            .find(|r| r.name() == "clusters/c0/kube-apiserver")
            .unwrap()
            .backends()[0]
            .to_string();
        assert_eq!(kas, "172.16.0.1:7003");

        // A relist after 410 Gone that finds the same objects publishes nothing; one that
        // finds a cluster gone removes only its routes.
        src.list(
            Kind::HostedCluster,
            clusters.iter().map(|c| hc_object(c.0.clone())).collect(),
        );
        settle().await;
        assert_eq!(src.generation(), 2);
        src.list(Kind::HostedCluster, vec![hc_object(clusters[1].0.clone())]);
        settle().await;
        assert_eq!((src.generation(), src.routes()), (3, 5));

        // A slice for c1's kube-apiserver moves its route to the pod.
        let slice = fixtures::endpoint_slice(
            "clusters-c1",
            "kube-apiserver-a",
            "kube-apiserver",
            Some("https"),
            6444,
            &[("10.128.0.5", "z1", true, true, false)],
        );
        src.send(
            Kind::EndpointSlice,
            Event::Apply(fixtures::slice_object(slice)),
        );
        settle().await;
        let snapshot = src.publisher.shared().load();
        let kas = snapshot.table.route("clusters/c1/kube-apiserver").unwrap();
        assert_eq!(kas.backends()[0].to_string(), "10.128.0.5:6444");
        src.shutdown.cancel();
    }

    fn forbidden_error(verb: &str, resource: &str) -> ::kube::Error {
        let message = format!(
            "{resource} is forbidden: User \"system:serviceaccount:ns:sniroute\" cannot {verb} \
             resource \"{resource}\" in API group \"\" at the cluster scope"
        );
        ::kube::Error::Api(
            ::kube::core::Status::failure(&message, "Forbidden")
                .with_code(403)
                .boxed(),
        )
    }

    /// Lists cluster c0's HostedCluster, Routes and Services; EndpointSlices are the test's.
    fn list_one_cluster(src: &Running) {
        let cluster = fixtures::cluster("clusters", "c0", 0);
        src.list(Kind::HostedCluster, vec![hc_object(cluster.0.clone())]);
        src.list(
            Kind::Route,
            cluster.1.iter().cloned().map(route_object).collect(),
        );
        src.list(
            Kind::Service,
            cluster.2.iter().cloned().map(service_object).collect(),
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_verb_rbac_does_not_grant_keeps_it_unready_and_names_it() {
        let src = Running::start();
        list_one_cluster(&src);
        // EndpointSlices forbidden: every Service to its ClusterIP, and nothing waits for them.
        src.tx
            .send((
                Kind::EndpointSlice,
                Err(watcher::Error::InitialListFailed(forbidden_error(
                    "list",
                    "endpointslices",
                ))),
            ))
            .unwrap();
        settle().await;
        let snapshot = src.publisher.shared().load();
        let kas = snapshot.table.route("clusters/c0/kube-apiserver").unwrap();
        assert_eq!(kas.backends()[0].to_string(), "172.16.0.1:6443");
        // Published, but the RBAC check has not answered yet.
        assert_eq!(src.routes(), 5);
        assert!(matches!(&*src.ready.borrow(), Readiness::NotReady(why) if why.contains("RBAC")));

        src.access
            .send(Err(
                "kubernetes RBAC forbids `watch` on hostedclusters (hypershift.openshift.io)"
                    .into(),
            ))
            .unwrap();
        settle().await;
        let Readiness::NotReady(why) = src.ready.borrow().clone() else {
            panic!("ready while a verb is missing");
        };
        assert!(why.contains("`watch` on hostedclusters"), "{why}");

        src.access.send(Ok(())).unwrap();
        settle().await;
        assert_eq!(*src.ready.borrow(), Readiness::Ready);

        // A 403 from a watch later (a kube-apiserver whose authorizer has not synced yet
        // after a restart) is logged and retried; readiness stays.
        src.tx
            .send((
                Kind::Service,
                Err(watcher::Error::WatchStartFailed(forbidden_error(
                    "watch", "services",
                ))),
            ))
            .unwrap();
        settle().await;
        assert_eq!(*src.ready.borrow(), Readiness::Ready);
        assert_eq!(src.source_errors(), 2);
        src.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn listed_endpoint_slices_stay_through_a_restart_s_403s_until_they_persist() {
        let src = Running::start();
        src.access.send(Ok(())).unwrap();
        list_one_cluster(&src);
        let slice = fixtures::endpoint_slice(
            "clusters-c0",
            "kube-apiserver-a",
            "kube-apiserver",
            Some("https"),
            6444,
            &[("10.128.0.5", "z1", true, true, false)],
        );
        src.list(Kind::EndpointSlice, vec![fixtures::slice_object(slice)]);
        settle().await;
        let kas = || {
            let snapshot = src.publisher.shared().load();
            let route = snapshot.table.route("clusters/c0/kube-apiserver").unwrap();
            route.backends()[0].to_string()
        };
        assert_eq!(kas(), "10.128.0.5:6444");
        let refused = || {
            src.tx
                .send((
                    Kind::EndpointSlice,
                    Err(watcher::Error::WatchStartFailed(forbidden_error(
                        "watch",
                        "endpointslices",
                    ))),
                ))
                .unwrap();
        };
        // A kube-apiserver that has just started, its authorizer not synced yet: the pods
        // keep their connections.
        refused();
        settle().await;
        assert_eq!(kas(), "10.128.0.5:6444");
        // Refused for as long as the grace: RBAC, so every Service to its ClusterIP.
        tokio::time::sleep(FORBIDDEN_GRACE).await;
        refused();
        settle().await;
        assert_eq!(kas(), "172.16.0.1:6443");
        assert_eq!(*src.ready.borrow(), Readiness::Ready);
        src.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn endpoint_slices_not_served_leave_cluster_ips_and_readiness_alone() {
        let src = Running::start();
        list_one_cluster(&src);
        let not_found = ::kube::Error::Api(
            ::kube::core::Status::failure(
                "the server could not find the requested resource",
                "NotFound",
            )
            .with_code(404)
            .boxed(),
        );
        src.tx
            .send((
                Kind::EndpointSlice,
                Err(watcher::Error::InitialListFailed(not_found)),
            ))
            .unwrap();
        src.access.send(Ok(())).unwrap();
        settle().await;
        assert_eq!(*src.ready.borrow(), Readiness::Ready);
        let snapshot = src.publisher.shared().load();
        let kas = snapshot.table.route("clusters/c0/kube-apiserver").unwrap();
        assert_eq!(kas.backends()[0].to_string(), "172.16.0.1:6443");
        src.shutdown.cancel();
    }

    #[test]
    fn a_403_names_the_verb_and_the_resource() {
        let Failure::Forbidden { verb, message } = Failure::of(&watcher::Error::InitialListFailed(
            forbidden_error("list", "services"),
        )) else {
            panic!("a 403 is Forbidden");
        };
        let why = rbac_forbids(Kind::Service, verb, &message);
        assert!(
            why.starts_with(
                "kubernetes RBAC forbids `list` on services (core): services is forbidden"
            ),
            "{why}"
        );
        let why = rbac_forbids(Kind::Route, "watch", "m");
        assert_eq!(
            why,
            "kubernetes RBAC forbids `watch` on routes (route.openshift.io): m"
        );
    }
}
