//! The watches and the loop that turns their events into published tables.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::objects::Guarded;
use ::kube::runtime::watcher::{self, Event};
use ::kube::runtime::WatchStreamExt;
use ::kube::{Api, Client};
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::objects::{HostedCluster, OcpRoute, Service, HCP_ROUTE_LABEL};
use super::store::{Kind, Object, Store};
use crate::config::KubernetesConfig;
use crate::publish::Publisher;
use crate::source::SourceKind;

/// Counters of the Kubernetes source, for logs now and metrics later.
#[derive(Debug, Default)]
pub struct KubeStats {
    /// Watch or list requests that failed (each is retried with backoff).
    pub watch_errors: AtomicU64,
    /// Objects that did not parse.
    pub malformed_objects: AtomicU64,
    /// Routes left out (missing Service, no ClusterIP, bad host, ...).
    pub rejected_routes: AtomicU64,
    /// Clusters not routed because something in them is wrong.
    pub broken_clusters: AtomicU64,
    /// Tables published by this source.
    pub publishes: AtomicU64,
}

/// Whether the Kubernetes source is ready, as `/readyz` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Every kind listed once and published, and no kind refused to this identity.
    Ready,
    /// Not ready, and why.
    NotReady(String),
}

impl Readiness {
    /// Before every kind has been listed once.
    pub fn waiting() -> Self {
        Self::NotReady(
            "the kubernetes source has not listed HostedClusters, Routes and Services yet".into(),
        )
    }
}

/// Watches HostedClusters, their Routes and Services and publishes their routes.
pub struct KubeSource {
    client: Client,
    config: KubernetesConfig,
    publisher: Arc<Publisher>,
    ready: watch::Sender<Readiness>,
    stats: Arc<KubeStats>,
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
            stats: Arc::default(),
        }
    }

    /// The source's counters.
    pub fn stats(&self) -> Arc<KubeStats> {
        self.stats.clone()
    }

    /// Watches until `shutdown`. Never fails: an unreachable API server, an expired watch or
    /// a bad object is logged and retried, and the last published routes stay in use.
    pub async fn run(self, shutdown: CancellationToken) {
        let events = watch_all(&self.client);
        self.run_with(events, shutdown).await;
    }

    async fn run_with(self, mut events: Events, shutdown: CancellationToken) {
        let mut store = Store::new();
        let mut listed = [false; 3];
        // Per kind, why the API server refuses it to this identity (RBAC), if it does.
        let mut denied: [Option<String>; 3] = Default::default();
        let mut published_once = false;
        let mut due: Option<Instant> = None;
        tracing::info!(
            debounce = ?self.config.debounce,
            "kubernetes source watching HostedClusters, Routes labelled {HCP_ROUTE_LABEL} and Services"
        );
        loop {
            let all_listed = listed.iter().all(|&l| l);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() && all_listed => {
                    due = None;
                    self.rebuild_and_publish(&mut store, &mut published_once);
                    self.update_readiness(published_once, &denied);
                }
                item = events.next() => {
                    let Some((kind, event)) = item else {
                        tracing::error!("kubernetes watches ended; keeping the last published routes");
                        shutdown.cancelled().await;
                        return;
                    };
                    match event {
                        Ok(event) => {
                            // Init comes before the list request; anything else is an answer.
                            if !matches!(event, Event::Init) && denied[kind as usize].take().is_some() {
                                tracing::info!(kind = kind.as_str(), "kubernetes RBAC now allows {}", resource(kind));
                                self.update_readiness(published_once, &denied);
                            }
                            if apply(&mut store, kind, event) && !listed[kind as usize] {
                                listed[kind as usize] = true;
                                tracing::info!(kind = kind.as_str(), "initial list applied");
                            }
                        }
                        Err(error) => {
                            self.stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                            self.publisher.source_failed(SourceKind::Kubernetes);
                            if let Some(reason) = forbidden(kind, &error) {
                                if denied[kind as usize].as_ref() != Some(&reason) {
                                    tracing::error!(
                                        kind = kind.as_str(),
                                        "{reason}; grant it in sniroute's ClusterRole \
                                         (deploy/base/rbac.yaml); not ready until then, retrying"
                                    );
                                    denied[kind as usize] = Some(reason);
                                    self.update_readiness(published_once, &denied);
                                }
                            } else {
                                tracing::warn!(
                                    kind = kind.as_str(),
                                    error = %error,
                                    "kubernetes watch failed; retrying with backoff, routes unchanged"
                                );
                            }
                        }
                    }
                    let all_listed = listed.iter().all(|&l| l);
                    if all_listed && !published_once {
                        // The first table: no reason to wait.
                        due = Some(Instant::now());
                    } else if store.dirty() > 0 && due.is_none() {
                        due = Some(Instant::now() + self.config.debounce);
                    }
                }
            }
        }
    }

    fn rebuild_and_publish(&self, store: &mut Store, published_once: &mut bool) {
        let started = Instant::now();
        let rebuilt = store.rebuild();
        let problems = store.problems();
        let before = self.stats.malformed_objects.load(Ordering::Relaxed)
            + self.stats.rejected_routes.load(Ordering::Relaxed)
            + self.stats.broken_clusters.load(Ordering::Relaxed);
        let now = problems.malformed + problems.rejected + problems.broken_clusters;
        // Each bad object, left-out route or broken cluster is a failure that kept the rest.
        for _ in before..now {
            self.publisher.source_failed(SourceKind::Kubernetes);
        }
        self.stats
            .malformed_objects
            .store(problems.malformed, Ordering::Relaxed);
        self.stats
            .rejected_routes
            .store(problems.rejected, Ordering::Relaxed);
        self.stats
            .broken_clusters
            .store(problems.broken_clusters, Ordering::Relaxed);
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
                self.stats.publishes.fetch_add(1, Ordering::Relaxed);
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
    /// Ready once published, unless a kind is refused; the first refusal is the reason.
    fn update_readiness(&self, published_once: bool, denied: &[Option<String>; 3]) {
        let readiness = match denied.iter().flatten().next() {
            Some(reason) => Readiness::NotReady(reason.clone()),
            None if published_once => Readiness::Ready,
            None => Readiness::waiting(),
        };
        self.ready.send_if_modified(|current| {
            let changed = *current != readiness;
            *current = readiness;
            changed
        });
    }
}

/// The resource a kind is watched as, as RBAC names it.
fn resource(kind: Kind) -> &'static str {
    match kind {
        Kind::HostedCluster => "hostedclusters (hypershift.openshift.io)",
        Kind::Route => "routes (route.openshift.io)",
        Kind::Service => "services (core)",
    }
}

/// For a 403 from the API server: which verb of `kind` it refused, and its message.
fn forbidden(kind: Kind, error: &watcher::Error) -> Option<String> {
    let (verb, status) = match error {
        watcher::Error::InitialListFailed(::kube::Error::Api(status)) => ("list", status),
        watcher::Error::WatchStartFailed(::kube::Error::Api(status))
        | watcher::Error::WatchFailed(::kube::Error::Api(status))
        | watcher::Error::WatchError(status) => ("watch", status),
        _ => return None,
    };
    (status.code == 403).then(|| {
        format!(
            "kubernetes RBAC forbids `{verb}` on {}: {}",
            resource(kind),
            status.message
        )
    })
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

/// The three watches, merged into one stream of events tagged with their kind.
fn watch_all(client: &Client) -> Events {
    let hosted_clusters = kind_stream(
        Api::<Guarded<HostedCluster>>::all(client.clone()),
        watcher::Config::default(),
        Kind::HostedCluster,
        Object::HostedCluster,
    );
    let routes = kind_stream(
        Api::<Guarded<OcpRoute>>::all(client.clone()),
        watcher::Config::default().labels(HCP_ROUTE_LABEL),
        Kind::Route,
        Object::Route,
    );
    let services = kind_stream(
        Api::<Guarded<Service>>::all(client.clone()),
        watcher::Config::default(),
        Kind::Service,
        Object::Service,
    );
    Box::pin(stream::select_all([hosted_clusters, routes, services]))
}

fn kind_stream<K>(api: Api<K>, config: watcher::Config, kind: Kind, wrap: fn(K) -> Object) -> Events
where
    K: ::kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let stream = watcher::watcher(api, config)
        .default_backoff()
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
/// every failure with their own bounded backoff (up to 30s), logging each.
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
        publisher: Arc<Publisher>,
        ready: watch::Receiver<Readiness>,
        stats: Arc<KubeStats>,
        shutdown: CancellationToken,
    }

    impl Running {
        fn start() -> Self {
            let (tx, rx) = mpsc::unbounded_channel::<Item>();
            let events: Events = Box::pin(stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            }));
            let client =
                Client::try_from(::kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
                    .unwrap();
            let publisher = Arc::new(Publisher::new(Arc::default()));
            let (ready_tx, ready) = watch::channel(Readiness::waiting());
            let source = KubeSource::new(
                client,
                KubernetesConfig::default(),
                publisher.clone(),
                ready_tx,
            );
            let stats = source.stats();
            let shutdown = CancellationToken::new();
            tokio::spawn(source.run_with(events, shutdown.clone()));
            Self {
                tx,
                publisher,
                ready,
                stats,
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
    }

    /// Lets the loop run and paused time pass beyond the debounce.
    async fn settle() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_once_every_kind_is_listed_then_batches_bursts() {
        let src = Running::start();
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
        assert_eq!(*src.ready.borrow(), Readiness::Ready);
        assert_eq!((src.generation(), src.routes()), (1, 10));

        // A failing watch changes nothing.
        src.tx
            .send((Kind::Service, Err(watcher::Error::NoResourceVersion)))
            .unwrap();
        settle().await;
        assert_eq!((src.generation(), src.routes()), (1, 10));
        assert_eq!(src.stats.watch_errors.load(Ordering::Relaxed), 1);

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

    #[tokio::test(start_paused = true)]
    async fn a_forbidden_kind_keeps_it_unready_naming_resource_and_verb() {
        let src = Running::start();
        let cluster = fixtures::cluster("clusters", "c0", 0);
        src.list(Kind::HostedCluster, vec![hc_object(cluster.0.clone())]);
        src.list(
            Kind::Route,
            cluster.1.iter().cloned().map(route_object).collect(),
        );
        src.tx
            .send((
                Kind::Service,
                Err(watcher::Error::InitialListFailed(forbidden_error(
                    "list", "services",
                ))),
            ))
            .unwrap();
        settle().await;
        let Readiness::NotReady(why) = src.ready.borrow().clone() else {
            panic!("ready while Services cannot be listed");
        };
        assert!(why.contains("`list` on services"), "{why}");
        assert!(why.contains("cannot list resource"), "{why}");

        // Listed at last: ready.
        src.list(
            Kind::Service,
            cluster.2.iter().cloned().map(service_object).collect(),
        );
        settle().await;
        assert_eq!(*src.ready.borrow(), Readiness::Ready);

        // A watch refused after the list (the ClusterRole lacks `watch`): unready again,
        // though the listed routes stay published; the kind's next event clears it.
        src.tx
            .send((
                Kind::HostedCluster,
                Err(watcher::Error::WatchStartFailed(forbidden_error(
                    "watch",
                    "hostedclusters",
                ))),
            ))
            .unwrap();
        settle().await;
        let Readiness::NotReady(why) = src.ready.borrow().clone() else {
            panic!("ready while HostedClusters cannot be watched");
        };
        assert!(why.contains("`watch` on hostedclusters"), "{why}");
        assert_eq!(src.routes(), 5);
        src.send(
            Kind::HostedCluster,
            Event::Apply(hc_object(with_rv(cluster.0.clone(), 20))),
        );
        settle().await;
        assert_eq!(*src.ready.borrow(), Readiness::Ready);
        src.shutdown.cancel();
    }
}
