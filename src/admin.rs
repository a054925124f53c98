//! The HTTP servers beside the proxy: `admin` (on the pod network, for probes and scrapes:
//! liveness, readiness, metrics) and `debug` (loopback by default: the routing table, which
//! names every customer's hostnames and backends). Both are hardened the same way.

use std::cmp::Reverse;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use control::Readiness;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use proxy::Acceptor;
use proxy::{Proxy, SharedTable};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Admin connections served at once. Probes and scrapes need a handful; the cap keeps a flood
/// of admin connections from taking the file descriptors the proxy listeners need: the admin
/// side never holds more than this many sockets, plus the one just accepted while it takes a
/// slot (see [`victim`]), plus its listener.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a connection has to send a complete request head, counted from when it opens and
/// again from the end of each response: the same timer bounds slow heads and idle keep-alive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest an admin connection may live, whatever it does: bounds clients that read their
/// responses slowly or never.
pub const MAX_CONNECTION_TIME: Duration = Duration::from_secs(30);

/// What the admin endpoints report on.
#[derive(Debug)]
pub struct State {
    /// The routing table connections use.
    pub table: Arc<SharedTable>,
    /// What `/readyz` answers from.
    pub ready: Arc<ReadyState>,
    /// Every metric of the process.
    pub registry: Registry,
    /// The data plane, for endpoint health.
    pub proxy: Arc<Proxy>,
}

/// Whether the replica should get connections: what `/readyz` answers and the `sniroute_ready`
/// gauge reports, both computed from this one state when asked, so they cannot disagree.
#[derive(Debug)]
pub struct ReadyState {
    table: Arc<SharedTable>,
    /// Set once every proxy listener is bound.
    pub listening: AtomicBool,
    /// Ready once every routing source has loaded (Kubernetes: its first full list), else why.
    sources: watch::Receiver<Readiness>,
    /// Set when a drain starts: the load balancer should stop sending new connections.
    pub draining: AtomicBool,
}

impl ReadyState {
    /// Not listening and not draining yet; ready once `table` is loaded and `sources` say so.
    pub fn new(table: Arc<SharedTable>, sources: watch::Receiver<Readiness>) -> Arc<Self> {
        Arc::new(Self {
            table,
            listening: AtomicBool::new(false),
            sources,
            draining: AtomicBool::new(false),
        })
    }

    /// Ready, or why not.
    pub fn check(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Acquire) {
            return Err("draining".into());
        }
        if !self.listening.load(Ordering::Acquire) {
            return Err("listeners not bound yet".into());
        }
        if !self.table.is_loaded() {
            return Err("no routing table loaded yet".into());
        }
        if let Readiness::NotReady(why) = &*self.sources.borrow() {
            return Err(why.clone());
        }
        Ok(())
    }

    /// Registers `sniroute_ready` in `registry`, evaluated by [`Self::check`] at each scrape.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register_collector(Box::new(ReadyGauge(self.clone())));
    }
}

/// `sniroute_ready`: a collector rather than a gauge that is set, so no path that changes
/// readiness can forget to update it.
#[derive(Debug)]
struct ReadyGauge(Arc<ReadyState>);

impl Collector for ReadyGauge {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(i64::from(self.0.check().is_ok()));
        let metric = encoder.encode_descriptor(
            "sniroute_ready",
            "1 while /readyz answers 200 (bound, table loaded, sources listed, not draining)",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

#[derive(Serialize)]
struct RoutesView<'a> {
    generation: u64,
    loaded_at: String,
    /// Each route as [`crate::explain::route_json`] shows it, with its `backends` as written
    /// and its `endpoints` now.
    routes: Vec<serde_json::Value>,
    /// The Gateway listeners' pod ports the table has bound.
    #[serde(skip_serializing_if = "<[u16]>::is_empty")]
    gateway_listeners: &'a [u16],
    ejected_endpoints: Vec<EjectedView>,
}

#[derive(Serialize)]
struct EjectedView {
    endpoint: String,
    remaining_seconds: f64,
    failures: u32,
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `/healthz`, `/readyz`, `/metrics`.
    Admin,
    /// `/routes`.
    Debug,
}

/// Who opened an admin connection, for sharing the cap: an IPv4 address, or the /64 of an
/// IPv6 one (one host commonly holds a whole /64). IPv4-mapped IPv6 is the IPv4 address.
type Source = u128;

fn source_of(peer: IpAddr) -> Source {
    match peer.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6) & !u128::from(u64::MAX),
    }
}

/// An admin connection being served, as the accept loop sees it.
struct Open {
    source: Source,
    /// When it last made progress, in microseconds since the server started: when it opened,
    /// then when each complete request head arrived. Written by the connection, read here.
    progress: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

/// Which of the `open` connections (source, last progress) a newcomer from `newcomer` takes
/// the slot of when all are taken: of the source that would hold the most with the newcomer
/// counted, the one that has gone longest without a complete request head. Refusing the
/// newcomer instead (as before) let anyone who kept the cap full, with trickled heads or idle
/// keep-alive, starve the kubelet's probes, which open a new connection each. Here a probe,
/// which sends its whole request at once, is spared while any other source holds two slots:
/// an attacker from other addresses (pods), however many connections and however fast it
/// reconnects, evicts its own. Only one from 31 addresses besides the node's, or from the
/// node's own, competes with probes, and then a probe loses its slot only to connections
/// opened after it. `None` when nothing is open.
fn victim(open: impl Iterator<Item = (Source, u64)> + Clone, newcomer: Source) -> Option<usize> {
    open.clone()
        .enumerate()
        .max_by_key(|&(_, (source, progress))| {
            let held = open.clone().filter(|&(s, _)| s == source).count();
            (held + usize::from(source == newcomer), Reverse(progress))
        })
        .map(|(i, _)| i)
}

/// Microseconds from `start` to now.
fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Serves `surface`'s requests on `listener` until `shutdown` fires, each connection a task
/// on `tasks`.
pub async fn serve(
    listener: TcpListener,
    surface: Surface,
    state: Arc<State>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let start = Instant::now();
    let mut open: Vec<Open> = Vec::with_capacity(MAX_CONNECTIONS);
    let what = match surface {
        Surface::Admin => "admin",
        Surface::Debug => "debug",
    };
    let mut acceptor = Acceptor::new(listener, what);
    while let Some((stream, peer)) = acceptor.next(&shutdown).await {
        let source = source_of(peer.ip());
        open.retain(|c| !c.task.is_finished());
        if open.len() >= MAX_CONNECTIONS {
            let progress = open
                .iter()
                .map(|c| (c.source, c.progress.load(Ordering::Relaxed)));
            if let Some(i) = victim(progress, source) {
                let evicted = open.swap_remove(i);
                evicted.task.abort();
                // Its socket is closed once its task is dropped: wait for that, so that the
                // admin side never holds more than the cap and this newcomer.
                let _ = evicted.task.await;
                tracing::debug!(%peer, "admin connections at their cap: closed the stalest");
            }
        }
        let progress = Arc::new(AtomicU64::new(micros_since(start)));
        let task = tasks.spawn(connection(
            stream,
            surface,
            state.clone(),
            progress.clone(),
            start,
        ));
        open.push(Open {
            source,
            progress,
            task,
        });
    }
    // Scrapers keep their connections alive: at shutdown they are closed, not waited for.
    for connection in open {
        connection.task.abort();
    }
}

/// Serves one admin connection, stamping `progress` with each complete request head.
async fn connection(
    stream: tokio::net::TcpStream,
    surface: Surface,
    state: Arc<State>,
    progress: Arc<AtomicU64>,
    start: Instant,
) {
    let service = service_fn(move |req| {
        progress.store(micros_since(start), Ordering::Relaxed);
        let state = state.clone();
        async move { Ok::<_, Infallible>(respond(surface, &state, &req)) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(MAX_CONNECTION_TIME, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "admin connection failed"),
        Err(_) => tracing::debug!("admin connection closed at its time limit"),
    }
}

fn respond(surface: Surface, state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        // RFC 9110 15.5.6: a 405 lists the methods the resource takes.
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match (surface, req.uri().path()) {
        (Surface::Admin, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (Surface::Admin, "/readyz") => match state.ready.check() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        (Surface::Admin, "/metrics") => metrics(state),
        (Surface::Debug, "/routes") => routes(state),
        (Surface::Debug, "/explain") => explain(state, req.uri().query().unwrap_or("")),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn routes(state: &State) -> Response<Full<Bytes>> {
    let snapshot = state.table.load();
    let view = RoutesView {
        generation: snapshot.generation,
        loaded_at: humantime::format_rfc3339_millis(snapshot.loaded_at).to_string(),
        routes: snapshot
            .table
            .routes()
            .iter()
            .map(|route| {
                let mut view = crate::explain::route_json(route);
                view["backends"] = route.backends().iter().map(|b| b.to_string()).collect();
                view["endpoints"] = state
                    .proxy
                    .backends_now(route)
                    .iter()
                    .map(crate::explain::backend_json)
                    .collect();
                view
            })
            .collect(),
        gateway_listeners: snapshot.table.listeners(),
        ejected_endpoints: state
            .proxy
            .ejected()
            .into_iter()
            .map(|e| EjectedView {
                endpoint: e.endpoint.to_string(),
                remaining_seconds: e.remaining.as_secs_f64(),
                failures: e.failures,
            })
            .collect(),
    };
    match serde_json::to_vec_pretty(&view) {
        Ok(body) => response(StatusCode::OK, "application/json", body.into()),
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

fn explain(state: &State, query: &str) -> Response<Full<Bytes>> {
    match crate::explain::answer(&state.proxy, query) {
        Ok(answer) => match serde_json::to_vec_pretty(&answer) {
            Ok(body) => response(StatusCode::OK, "application/json", body.into()),
            Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
        },
        Err(why) => text(StatusCode::BAD_REQUEST, format!("{why}\n")),
    }
}

fn metrics(state: &State) -> Response<Full<Bytes>> {
    let mut body = String::with_capacity(64 * 1024);
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body.into(),
        ),
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body.into())
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy::Table;

    fn scraped(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out.lines()
            .find(|line| line.starts_with("sniroute_ready "))
            .unwrap_or_else(|| panic!("no sniroute_ready in {out}"))
            .to_owned()
    }

    fn source(ip: &str) -> Source {
        source_of(ip.parse().unwrap())
    }

    #[test]
    fn a_newcomer_takes_the_slot_of_the_biggest_sources_stalest_connection() {
        let (node, pod, other) = (
            source("127.0.0.1"),
            source("127.0.0.2"),
            source("127.0.0.3"),
        );
        let pick = |open: &[(Source, u64)], newcomer| victim(open.iter().copied(), newcomer);
        assert_eq!(pick(&[], node), None);
        // One source: the one that has gone longest without a complete request head.
        assert_eq!(pick(&[(node, 30), (node, 10), (node, 20)], node), Some(1));
        // The node's connection (stale or not) is spared while a pod holds more.
        let open = [(node, 1), (pod, 50), (pod, 40), (pod, 60), (other, 5)];
        for newcomer in [node, pod, other] {
            assert_eq!(pick(&open, newcomer), Some(2));
        }
        // The newcomer counts for its source: with it the node holds the most.
        let open = [(node, 1), (node, 2), (pod, 50), (pod, 40)];
        assert_eq!(pick(&open, node), Some(0));
        // Equal shares: the stalest of all.
        let open = [(pod, 9), (node, 3), (other, 7)];
        assert_eq!(pick(&open, source("127.0.0.4")), Some(1));
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_64s() {
        assert_eq!(source("::ffff:127.0.0.2"), source("127.0.0.2"));
        assert_ne!(source("127.0.0.2"), source("127.0.0.3"));
        assert_eq!(source("2001:db8:1:2::1"), source("2001:db8:1:2:ffff::9"));
        assert_ne!(source("2001:db8:1:2::1"), source("2001:db8:1:3::1"));
    }

    #[test]
    fn the_gauge_follows_every_step_of_readiness() {
        let table = Arc::new(SharedTable::default());
        let (sources, sources_rx) = watch::channel(Readiness::waiting());
        let ready = ReadyState::new(table.clone(), sources_rx);
        let mut registry = Registry::default();
        ready.register(&mut registry);
        let expect = |want: bool| {
            assert_eq!(ready.check().is_ok(), want, "{:?}", ready.check());
            assert_eq!(
                scraped(&registry),
                format!("sniroute_ready {}", u8::from(want))
            );
        };
        expect(false);
        ready.listening.store(true, Ordering::Release);
        expect(false);
        table.publish(Table::new(Vec::<proxy::Route>::new()).unwrap());
        expect(false);
        sources.send(Readiness::Ready).unwrap();
        expect(true);
        ready.draining.store(true, Ordering::Release);
        expect(false);
    }
}
