//! One proxied connection, from accept to close.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::client_hello::{self, ClientHello, Parsed, Refusal};
use crate::connect;
use crate::forward::{self, Forward, Totals};
use crate::listener;
use crate::metrics::ActiveGuard;
use crate::proxy_protocol::{self, Expect, Parsed as ProxyParsed, Version as ProxyVersion};
use crate::revoke::RouteKey;
use crate::table::{canonical, Route};
use crate::Proxy;

/// A fatal `unrecognized_name` alert (RFC 6066 section 3): record type 21, TLS 1.2 record
/// version (what TLS 1.3 also puts on the wire), length 2, level fatal (2), description 112.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// How long a refused client gets to read the alert and close before we do; closing with
/// unread input would make the kernel send a reset that can overtake the alert.
const LINGER_AFTER_ALERT: Duration = Duration::from_secs(1);
/// How much unread input we discard while lingering before giving up on a clean close.
const LINGER_DISCARD_MAX: usize = 64 * 1024;

/// First read buffer: most ClientHellos (300-600 bytes) fit; post-quantum ones grow it once.
const INITIAL_HELLO_BUFFER: usize = 1024;

/// How a connection ended up; each is one value of the `outcome` label operators count by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded to a backend.
    Routed,
    /// The SNI names no route (or is not a hostname).
    UnknownSni,
    /// The ClientHello has no SNI.
    NoSni,
    /// The input is not a TLS ClientHello we can read.
    NotTls,
    /// No complete ClientHello within `client_hello_timeout`.
    ClientHelloTimeout,
    /// The client's address is not in the route's allow list.
    Denied,
    /// No backend of the route accepted a connection.
    BackendUnreachable,
    /// Over the global or the route's connection limit.
    Limited,
}

impl Outcome {
    /// Every outcome, for metrics that should show zeros.
    pub const ALL: [Outcome; 8] = [
        Self::Routed,
        Self::UnknownSni,
        Self::NoSni,
        Self::NotTls,
        Self::ClientHelloTimeout,
        Self::Denied,
        Self::BackendUnreachable,
        Self::Limited,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Routed => "routed",
            Self::UnknownSni => "unknown_sni",
            Self::NoSni => "no_sni",
            Self::NotTls => "not_tls",
            Self::ClientHelloTimeout => "client_hello_timeout",
            Self::Denied => "denied",
            Self::BackendUnreachable => "backend_unreachable",
            Self::Limited => "limited",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connection turned away: how it is counted, what the log line says, whether it gets the
/// `unrecognized_name` alert, and the client it is logged under.
struct Refused {
    outcome: Outcome,
    detail: String,
    alert: bool,
    client: SocketAddr,
}

impl Refused {
    fn new(client: SocketAddr, outcome: Outcome, detail: impl Display) -> Self {
        let alert = matches!(outcome, Outcome::UnknownSni | Outcome::NoSni);
        Self {
            outcome,
            detail: detail.to_string(),
            alert,
            client,
        }
    }
}

/// A connection with a route: what it was routed by and for whom.
struct Routed {
    route: Arc<Route>,
    /// The SNI name or the ClusterID; what logs name the connection by.
    key: RouteKey,
    /// The client: the peer, or the source a trusted PROXY header named.
    client: SocketAddr,
}

/// One step of reading the start of a connection.
enum Step<T> {
    Done(T),
    More,
    Refuse(Outcome, String),
}

/// Which kind of listener accepted the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Routes by the SNI name, after an optional PROXY header from a trusted peer.
    Sni,
    /// Routes by the ClusterID TLV of a mandatory PROXY v2 header, without reading SNI.
    ClusterId,
}

/// Serves one accepted connection to its end; never panics on input, never fails other
/// connections. `active` is the connection's slot in the active gauge (and the global
/// limit's permit, if any), released however this ends.
pub(crate) fn handle<P: Send + 'static>(
    proxy: Arc<Proxy>,
    client: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    active: (ActiveGuard, P),
) -> impl Future<Output = ()> + Send {
    // Everything before forwarding runs boxed: inline, its states would size the task's
    // future, which lives as long as the connection. What is left is the forwarding state.
    let establishing = Box::pin(establish(proxy, client, peer, kind, active));
    async move {
        let Some(established) = establishing.await else {
            return;
        };
        established.await
    }
}

/// Routes and connects, or refuses; returns the pair ready to forward.
async fn establish<P>(
    proxy: Arc<Proxy>,
    mut client: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    active: (ActiveGuard, P),
) -> Option<Established<P>> {
    if let Err(error) = listener::tune_accepted(&client) {
        tracing::debug!(%peer, %error, "cannot set socket options");
    }
    let settings = &proxy.settings;
    let started = Instant::now();
    let mut buf = Vec::with_capacity(INITIAL_HELLO_BUFFER.min(settings.max_client_hello));
    // One deadline for everything before routing: a PROXY header does not buy more time.
    let routing = proxy.route(&mut client, peer, kind, &mut buf);
    let routed = match timeout(settings.client_hello_timeout, routing).await {
        Ok(routed) => routed,
        Err(_) => Err(Refused::new(
            peer,
            Outcome::ClientHelloTimeout,
            "no complete ClientHello in time",
        )),
    };
    let Routed {
        route,
        key,
        client: client_addr,
    } = match routed {
        Ok(routed) => routed,
        Err(refused) => return refuse(&proxy, client, refused).await,
    };
    let gauge = proxy.metrics.route_gauge(route.name());
    let Some(route_active) = ActiveGuard::try_take(gauge, route.max_connections()) else {
        let why = format!("{key}: route {} is at max_connections", route.name());
        let refused = Refused::new(client_addr, Outcome::Limited, why);
        return refuse(&proxy, client, refused).await;
    };

    let connecting = Instant::now();
    let connected = connect::connect(&route, settings.connect_timeout, &proxy.health).await;
    proxy
        .metrics
        .backend_connect_seconds
        .observe(connecting.elapsed().as_secs_f64());
    let (backend, backend_addr) = match connected {
        Ok(connected) => connected,
        Err(error) => {
            let refused = Refused::new(client_addr, Outcome::BackendUnreachable, error);
            return refuse(&proxy, client, refused).await;
        }
    };
    proxy.metrics.count(Outcome::Routed);
    if let Err(error) = listener::tune(&backend) {
        tracing::debug!(%peer, %backend_addr, %error, "cannot set socket options");
    }
    tracing::debug!(client = %client_addr, %peer, name = %key, route = route.name(), backend = %backend_addr, "routed");
    if let Some(version) = route.proxy_protocol() {
        match client.local_addr() {
            Ok(local) => {
                let mut first = proxy_protocol::encode(version, client_addr, local);
                first.extend_from_slice(&buf);
                buf = first;
            }
            Err(error) => tracing::debug!(%peer, %error, "no local address for the PROXY header"),
        }
    }
    let mut forward = forward::forward(
        client,
        backend,
        buf,
        settings.idle_timeout,
        &proxy.metrics.bytes,
    );
    if settings.revoke_grace.is_some() {
        let registration = proxy.connections.register(key.clone(), client_addr.ip());
        forward = forward.revocable(registration);
    }
    Some(Established {
        forward,
        proxy,
        route,
        key,
        client: client_addr,
        peer,
        backend: backend_addr,
        started,
        _active: active,
        _route_active: route_active,
    })
}

/// [`Proxy::refuse`], boxed: its linger buffer would otherwise size every connection's
/// establishing future.
async fn refuse<T>(proxy: &Proxy, client: TcpStream, refused: Refused) -> Option<T> {
    Box::pin(proxy.refuse(client, refused)).await;
    None
}

pin_project_lite::pin_project! {
    /// A forwarded connection: the forwarding state and what its closing line reports.
    struct Established<P> {
        #[pin]
        forward: Forward,
        proxy: Arc<Proxy>,
        route: Arc<Route>,
        key: RouteKey,
        // The client: the peer, or the source a trusted PROXY header named.
        client: SocketAddr,
        peer: SocketAddr,
        backend: SocketAddr,
        started: Instant,
        _active: (ActiveGuard, P),
        _route_active: ActiveGuard,
    }
}

impl<P> Future for Established<P> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let (totals, error) = match ready!(this.forward.poll(cx)) {
            Ok(totals) => (totals, None),
            Err(error) => (Totals::default(), Some(error)),
        };
        let (client, name, route) = (this.client, &*this.key, this.route.name());
        if totals.revoked {
            tracing::info!(%client, %name, route, "connection revoked: the table no longer admits it");
        }
        if this.proxy.settings.log_connections {
            tracing::info!(
                %client, peer = %this.peer, %name, route, backend = %this.backend,
                client_to_backend = totals.client_to_backend,
                backend_to_client = totals.backend_to_client,
                idle_timeout = totals.idle_timed_out,
                revoked = totals.revoked,
                duration = ?this.started.elapsed(),
                error = error.as_ref().map(tracing::field::display),
                "connection closed"
            );
        }
        Poll::Ready(())
    }
}

/// Reads until `parse` decides, growing `buf` up to `max`. Bytes already in `buf` are parsed
/// first, so a step can start on what the previous one read past its end.
async fn read_until<T>(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    mut parse: impl FnMut(&[u8]) -> Step<T>,
) -> Result<T, (Outcome, String)> {
    loop {
        match parse(buf) {
            Step::Done(done) => return Ok(done),
            Step::Refuse(outcome, why) => return Err((outcome, why)),
            Step::More => {}
        }
        if buf.len() == buf.capacity() {
            if buf.len() >= max {
                return Err((Outcome::NotTls, Refusal::TooLarge.to_string()));
            }
            let target = (buf.capacity() * 2).clamp(INITIAL_HELLO_BUFFER, max);
            buf.reserve_exact(target - buf.len());
        }
        match client.read_buf(buf).await {
            Ok(0) => {
                return Err((
                    Outcome::NotTls,
                    "closed before a complete ClientHello".into(),
                ))
            }
            Ok(_) => {}
            Err(error) => return Err((Outcome::NotTls, format!("read failed: {error}"))),
        }
    }
}

fn hello_step(progress: &mut client_hello::Progress, buf: &[u8], max: usize) -> Step<ClientHello> {
    match client_hello::parse_more(progress, buf, max) {
        Parsed::Hello(hello) => Step::Done(hello),
        Parsed::NeedMore => Step::More,
        Parsed::Refused(refusal @ Refusal::BadServerName(_)) => {
            Step::Refuse(Outcome::UnknownSni, refusal.to_string())
        }
        Parsed::Refused(refusal) => Step::Refuse(Outcome::NotTls, refusal.to_string()),
    }
}

fn proxy_header_step(buf: &[u8], expect: Expect) -> Step<Option<proxy_protocol::Header>> {
    match proxy_protocol::parse(buf, expect) {
        ProxyParsed::Header(header) => Step::Done(Some(header)),
        ProxyParsed::Absent => Step::Done(None),
        ProxyParsed::NeedMore => Step::More,
        ProxyParsed::Invalid(why) => {
            Step::Refuse(Outcome::NotTls, format!("PROXY protocol: {why}"))
        }
    }
}

// === impl Proxy ===

impl Proxy {
    /// Reads what routing needs (a PROXY header, the ClientHello) and picks the route.
    async fn route(
        &self,
        client: &mut TcpStream,
        peer: SocketAddr,
        kind: ListenerKind,
        buf: &mut Vec<u8>,
    ) -> Result<Routed, Refused> {
        let max = self.settings.max_client_hello;
        let refuse = |client, (outcome, why)| Refused::new(client, outcome, why);
        let expect = match kind {
            ListenerKind::ClusterId => Some(Expect::Required(ProxyVersion::V2)),
            ListenerKind::Sni => self.settings.accept_proxy_protocol,
        };
        let started = Instant::now();
        let mut client_addr = peer;
        let mut cluster_id = None;
        if let Some(expect) = expect {
            let header = read_until(client, buf, max, |b| proxy_header_step(b, expect))
                .await
                .map_err(|e| refuse(peer, e))?;
            if let Some(header) = header {
                let trusted = kind == ListenerKind::ClusterId
                    || self
                        .settings
                        .trusted_proxies
                        .iter()
                        .any(|net| net.contains(&canonical(peer.ip())));
                if !trusted {
                    return Err(Refused::new(
                        peer,
                        Outcome::Denied,
                        "PROXY header from a peer not in trusted_proxies",
                    ));
                }
                client_addr = header.source.unwrap_or(peer);
                cluster_id = header.cluster_id;
                // The header is for us, not the backend.
                buf.drain(..header.len);
            }
        }
        if kind == ListenerKind::ClusterId {
            let Some(id) = cluster_id else {
                return Err(Refused::new(
                    client_addr,
                    Outcome::UnknownSni,
                    "PROXY header without a ClusterID TLV",
                ));
            };
            let snapshot = self.table.load();
            let Some(route) = snapshot.table.lookup_cluster_id(&id).cloned() else {
                return Err(Refused::new(
                    client_addr,
                    Outcome::UnknownSni,
                    format!("no route for cluster ID {id}"),
                ));
            };
            self.metrics
                .client_hello_seconds
                .observe(started.elapsed().as_secs_f64());
            // The allow list guards the public API hostnames; this listener carries the hosted
            // cluster's own nodes, identified by the TLV, which the list does not name.
            return Ok(Routed {
                route,
                key: RouteKey::ClusterId(id),
                client: client_addr,
            });
        }

        let mut progress = client_hello::Progress::default();
        let hello = read_until(client, buf, max, |b| hello_step(&mut progress, b, max))
            .await
            .map_err(|e| refuse(client_addr, e))?;
        self.metrics
            .client_hello_seconds
            .observe(started.elapsed().as_secs_f64());
        let Some(server_name) = hello.server_name else {
            return Err(Refused::new(
                client_addr,
                Outcome::NoSni,
                "ClientHello has no server_name",
            ));
        };
        let snapshot = self.table.load();
        let Some(route) = snapshot.table.lookup(&server_name).cloned() else {
            return Err(Refused::new(
                client_addr,
                Outcome::UnknownSni,
                format!("no route for {server_name}"),
            ));
        };
        // Connections keep the route, never the whole table: a swap frees the old table's memory.
        drop(snapshot);
        if !route.allows(client_addr.ip()) {
            let why = format!(
                "{server_name}: client not in route {}'s allowed_cidrs",
                route.name()
            );
            return Err(Refused::new(client_addr, Outcome::Denied, why));
        }
        Ok(Routed {
            route,
            key: RouteKey::Name(server_name),
            client: client_addr,
        })
    }

    /// Counts and logs a refusal, sends the `unrecognized_name` alert if it calls for one, and
    /// closes.
    async fn refuse(&self, mut client: TcpStream, refused: Refused) {
        let Refused {
            outcome,
            detail,
            alert,
            client: client_addr,
        } = refused;
        self.metrics.count(outcome);
        if self.refusal_log.allow() {
            tracing::info!(peer = %client_addr, reason = %outcome, detail, "connection refused");
        }
        if !alert {
            return;
        }
        if client.write_all(&UNRECOGNIZED_NAME_ALERT).await.is_err()
            || client.shutdown().await.is_err()
        {
            return;
        }
        let mut discard = [0u8; 4096];
        let mut discarded = 0;
        let _ = timeout(LINGER_AFTER_ALERT, async {
            while let Ok(n @ 1..) = client.read(&mut discard).await {
                discarded += n;
                if discarded > LINGER_DISCARD_MAX {
                    break;
                }
            }
        })
        .await;
    }

    /// Counts and logs a connection refused before it was read, over the global limit.
    pub(crate) fn refuse_over_limit(&self, peer: SocketAddr) {
        self.metrics.count(Outcome::Limited);
        if self.refusal_log.allow() {
            tracing::info!(%peer, reason = %Outcome::Limited, detail = "at the global max_connections", "connection refused");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_index_their_own_counter() {
        // Metrics::count indexes its counters by discriminant.
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i, "{outcome}");
        }
    }
}

#[cfg(test)]
mod size_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use prometheus_client::registry::Registry;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::{Metrics, Settings};

    /// A connection's task future lives as long as the connection; what it holds while idle is
    /// most of a connection's memory in user space. (tokio rounds a task up to 128 bytes with
    /// its header: 640 bytes of future make a 768-byte task.)
    const MAX_TASK_FUTURE: usize = 640;

    #[tokio::test]
    async fn the_connection_task_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let metrics = Metrics::register(&mut Registry::default());
        let settings = Settings {
            client_hello_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_client_hello: 16384,
            max_connections: None,
            log_connections: false,
            outlier_detection: Default::default(),
            accept_proxy_protocol: None,
            trusted_proxies: Vec::new(),
            revoke_grace: Some(Duration::from_secs(1)),
        };
        let proxy = Arc::new(Proxy::new(settings, Default::default(), metrics.clone()));
        let task = handle(proxy, stream, peer, ListenerKind::Sni, (metrics.open(), ()));
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= MAX_TASK_FUTURE,
            "connection task future is {size} bytes"
        );
    }
}
