//! The admin HTTP server: liveness, readiness and the current routing table.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use control::kube::Readiness;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use proxy::{Proxy, SharedTable};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin endpoints report on.
#[derive(Debug)]
pub struct State {
    /// The routing table connections use.
    pub table: Arc<SharedTable>,
    /// Set once every proxy listener is bound.
    pub listening: AtomicBool,
    /// Ready once every routing source has loaded (Kubernetes: its first full list), else why.
    pub sources_ready: tokio::sync::watch::Receiver<Readiness>,
    /// Set when a drain starts: the load balancer should stop sending new connections.
    pub draining: AtomicBool,
    /// Every metric of the process.
    pub registry: Registry,
    /// The data plane, for endpoint health.
    pub proxy: Arc<Proxy>,
}

impl State {
    fn ready(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Acquire) {
            return Err("draining".into());
        }
        if !self.listening.load(Ordering::Acquire) {
            return Err("listeners not bound yet".into());
        }
        if !self.table.is_loaded() {
            return Err("no routing table loaded yet".into());
        }
        if let Readiness::NotReady(why) = &*self.sources_ready.borrow() {
            return Err(why.clone());
        }
        Ok(())
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
    source: &'a str,
}

/// Serves admin requests on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &req)) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "admin connection failed");
            }
        });
    }
}

fn respond(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match state.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/routes" => routes(state),
        "/metrics" => metrics(state),
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
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
