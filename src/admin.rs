//! The HTTP servers beside the proxy: `admin` (on the pod network, for probes and scrapes:
//! liveness, readiness, metrics) and `debug` (loopback by default: the routing table, which
//! names every customer's hostnames and backends). Both are hardened the same way.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use control::kube::Readiness;
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
use proxy::{Proxy, SharedTable};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

/// Admin connections served at once. Probes and scrapes need a handful; the cap keeps a flood
/// of admin connections from taking the file descriptors the proxy listeners need (the admin
/// side never holds more than this many sockets, plus its listener). Over it, a new
/// connection is closed at once.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a connection has to send a complete request head, counted from when it opens and
/// again from the end of each response: the same timer bounds slow heads and idle keep-alive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest an admin connection may live, whatever it does: bounds clients that read their
/// responses slowly or never.
pub const MAX_CONNECTION_TIME: Duration = Duration::from_secs(30);
/// First and last pause after an accept error (as the proxy listeners), doubling in between.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

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
    routes: Vec<RouteView<'a>>,
    ejected_endpoints: Vec<EjectedView>,
}

#[derive(Serialize)]
struct EjectedView {
    endpoint: String,
    remaining_seconds: f64,
    failures: u32,
}

#[derive(Serialize)]
struct RouteView<'a> {
    name: &'a str,
    hostnames: Vec<String>,
    backends: Vec<String>,
    /// Each backend as it stands here (zone, condition, ejection, open connections).
    endpoints: Vec<serde_json::Value>,
    source: &'a str,
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `/healthz`, `/readyz`, `/metrics`.
    Admin,
    /// `/routes`.
    Debug,
}

/// Serves `surface`'s requests on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    surface: Surface,
    state: Arc<State>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut in_burst = false;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                in_burst = false;
                stream
            }
            Err(error) => {
                // Out of file descriptors (or one aborted connection): pause and say so once
                // per burst, never spin and never flood the log.
                if !in_burst {
                    tracing::warn!(%error, "admin accept failed; backing off");
                    in_burst = true;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("admin connection closed: {MAX_CONNECTIONS} already open");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
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
        });
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
            .map(|route| RouteView {
                name: route.name(),
                hostnames: route.hostnames().iter().map(|h| h.to_string()).collect(),
                backends: route.backends().iter().map(|b| b.to_string()).collect(),
                endpoints: state
                    .proxy
                    .backends_now(route)
                    .iter()
                    .map(crate::explain::backend_json)
                    .collect(),
                source: route.source(),
            })
            .collect(),
        ejected_endpoints: state
            .proxy
            .health()
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
