//! One proxied connection, from accept to close.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::connect;
use crate::forward::{self, Forward, Totals};
use crate::held::{ConnectionSlot, Held};
use crate::hello_budget::{Evicted, Pending};
use crate::outcome::{Outcome, Reason};
use crate::proxy_protocol;
use crate::revoke::{Live, Registration};
use crate::route::{ListenerKind, Origin, Refused, Routed};
use crate::socket;
use crate::Proxy;

/// A fatal `unrecognized_name` alert (RFC 6066 section 3): record type 21, TLS 1.2 record
/// version (what TLS 1.3 also puts on the wire), length 2, level fatal (2), description 112.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// How long a refused client gets to read the alert and close before we do; closing with
/// unread input would make the kernel send a reset that can overtake the alert.
const LINGER_AFTER_ALERT: Duration = Duration::from_secs(1);
/// How much unread input we discard while lingering before giving up on a clean close.
const LINGER_DISCARD_MAX: usize = 64 * 1024;

/// Serves one accepted connection to its end; never panics on input, never fails other
/// connections. `slot` is the connection's slot in the active gauge (and the global
/// limit's permit, if any), released however this ends.
pub(crate) fn handle(
    proxy: Arc<Proxy>,
    client: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    slot: ConnectionSlot,
) -> impl Future<Output = ()> + Send {
    // Everything before forwarding runs boxed: inline, its states would size the task's
    // future, which lives as long as the connection. What is left is the forwarding state.
    Task::Establishing {
        establishing: Box::pin(establish(proxy, client, peer, kind, slot)),
    }
}

pin_project_lite::pin_project! {
    /// A connection's task: written out rather than an async block, whose state would keep a
    /// discriminant and the awaited `Option` beside the forwarding state (16 bytes that took
    /// the task past a 128-byte step of its allocation).
    #[project = TaskProj]
    enum Task<F> {
        Establishing { establishing: Pin<Box<F>> },
        Forwarding { #[pin] established: Established },
        Done,
    }
}

impl<F: Future<Output = Option<Established>>> Future for Task<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.as_mut().project() {
                TaskProj::Establishing { establishing } => {
                    match std::task::ready!(establishing.as_mut().poll(cx)) {
                        Some(established) => self.set(Task::Forwarding { established }),
                        None => {
                            self.set(Task::Done);
                            return Poll::Ready(());
                        }
                    }
                }
                TaskProj::Forwarding { established } => {
                    std::task::ready!(established.poll(cx));
                    // Dropped here, not when the runtime frees the task: the sockets close and
                    // the slots are released at once.
                    self.set(Task::Done);
                    return Poll::Ready(());
                }
                TaskProj::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Routes and connects, or refuses; returns the pair ready to forward.
async fn establish(
    proxy: Arc<Proxy>,
    mut client: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    slot: ConnectionSlot,
) -> Option<Established> {
    if let Err(error) = socket::tune_accepted(&client) {
        tracing::debug!(%peer, %error, "cannot set socket options");
    }
    let settings = &proxy.settings;
    let started = Instant::now();
    // Allocated as bytes arrive, within the client_hello_memory budget, and charged to it
    // until the pair starts forwarding, whose first step writes it to the backend: a backend
    // slow to accept must not let hellos pile up outside the budget.
    let mut buf = Vec::new();
    let mut pending = proxy.hello_budget.open();
    // One deadline for everything before routing: a PROXY header does not buy more time.
    let routing = proxy.route(&mut client, peer, kind, &mut buf, &mut pending);
    let routed = match timeout(settings.client_hello_timeout, routing).await {
        Ok(routed) => routed,
        Err(_) => Err(Origin::peer(peer).refuse(Reason::Timeout)),
    };
    let Routed {
        route,
        key,
        origin,
        ja4,
        client_slot,
    } = match routed {
        Ok(routed) => routed,
        Err(refused) => return refuse(&proxy, client, refused, (buf, pending)).await,
    };
    if let Some(why) = route.spec().no_backend.clone() {
        // Counted against the route as its unreachable backends would be, and closed with
        // no alert: the name is known, it just leads nowhere (the Gateway API wants such
        // connections rejected, and a TLS alert would be an answer).
        route.state().count_unreachable();
        let reason = Reason::NoBackend {
            route: route.name().into(),
            why,
        };
        let refused = origin.refuse(reason).with_ja4(ja4);
        return refuse(&proxy, client, refused, (buf, pending)).await;
    }
    let Some(route_active) = route.state().try_take(route.max_connections()) else {
        let reason = Reason::RouteLimit {
            route: route.name().into(),
        };
        let refused = origin.refuse(reason).with_ja4(ja4);
        return refuse(&proxy, client, refused, (buf, pending)).await;
    };

    let connecting = Instant::now();
    // Evicted while it waits (its buffer still charged), the connection gives up its attempt.
    let connected = tokio::select! {
        connected = connect::connect(&route, settings.connect_timeout, &settings.outlier_detection) => connected,
        () = pending.evicted() => {
            let evicted = Evicted { reserved: buf.capacity() };
            let refused = origin.refuse(Reason::Overloaded(evicted)).with_ja4(ja4);
            return refuse(&proxy, client, refused, (buf, pending)).await;
        }
    };
    proxy
        .metrics
        .backend_connect_seconds
        .observe(connecting.elapsed().as_secs_f64());
    let (backend, backend_addr, load) = match connected {
        Ok(connected) => connected,
        Err(error) => {
            route.state().count_unreachable();
            let refused = origin.refuse(Reason::Backend(error)).with_ja4(ja4);
            return refuse(&proxy, client, refused, (buf, pending)).await;
        }
    };
    proxy.metrics.count(Outcome::Routed);
    if let Err(error) = socket::tune(&backend) {
        tracing::debug!(%peer, %backend_addr, %error, "cannot set socket options");
    }
    let client_addr = origin.client();
    tracing::debug!(client = %client_addr, %peer, claimed = origin.claimed().map(tracing::field::display), name = %key, route = route.name(), backend = %backend_addr, "routed");
    if let Some(version) = route.proxy_protocol() {
        match client.local_addr() {
            Ok(local) => {
                let destination = origin.destination(local);
                let mut first = proxy_protocol::encode(version, client_addr, destination);
                first.extend_from_slice(&buf);
                buf = first;
            }
            Err(error) => tracing::debug!(%peer, %error, "no local address for the PROXY header"),
        }
    }
    let forward = forward::forward(
        client,
        backend,
        buf,
        settings.idle_timeout,
        &proxy.metrics.bytes,
    );
    // The task polls `forward` next, and its first write hands the buffer to the kernel's
    // send buffer (a fresh socket takes 16 KiB at once, tcp_wmem's default).
    drop(pending);
    let held = Held::new(
        settings.log_connections,
        slot,
        route_active,
        client_slot,
        load,
    );
    let (peer, claimed) = (origin.peer, origin.claimed());
    let live = Live::new(
        key,
        peer,
        client_addr,
        claimed,
        backend_addr,
        started,
        ja4,
        held,
    );
    let live = Arc::new(live);
    let revocation = match settings.revoke_grace {
        Some(_) => proxy.connections.register(live.clone()),
        None => None,
    };
    Some(Established {
        forward,
        live,
        revocation,
    })
}

/// [`Proxy::refuse`], boxed: its linger buffer would otherwise size every connection's
/// establishing future. `hello` (the buffer and its charge) is released first, not held
/// through the alert's linger.
async fn refuse<T>(
    proxy: &Proxy,
    client: TcpStream,
    refused: Refused,
    hello: (Vec<u8>, Pending<'_>),
) -> Option<T> {
    drop(hello);
    Box::pin(proxy.refuse(client, refused)).await;
    None
}

pin_project_lite::pin_project! {
    /// A forwarded connection: the forwarding state, and (shared with the revocation registry)
    /// what its closing line reports. Only what a pump reads is inline: the task is allocated
    /// in 128-byte steps and lives as long as the connection.
    struct Established {
        #[pin]
        forward: Forward,
        // Read only when the pair closes or is revoked.
        live: Arc<Live<Held>>,
        // Empties the connection's slot in the registry (after `forward` closed the sockets).
        revocation: Option<Registration<Held>>,
    }
}

impl Future for Established {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let (totals, error) = match this.forward.as_mut().poll(cx) {
            Poll::Ready(Ok(totals)) => (totals, None),
            Poll::Ready(Err(error)) => (Totals::default(), Some(error)),
            Poll::Pending => {
                if this.revocation.is_none() || this.live.poll_revoked(cx).is_pending() {
                    return Poll::Pending;
                }
                let totals = Totals {
                    revoked: true,
                    ..this.forward.totals()
                };
                (totals, None)
            }
        };
        let live = &**this.live;
        let (client, name, route) = (live.client(), &live.key, live.held.route());
        let claimed = live.claimed().map(tracing::field::display);
        let ja4 = live.ja4.map(tracing::field::display);
        if totals.revoked {
            tracing::info!(%client, claimed, %name, route, "connection revoked: the table no longer admits it");
        }
        if live.held.log_connections() {
            tracing::info!(
                %client, peer = %live.peer, claimed, %name, route, backend = %live.backend, ja4,
                client_to_backend = totals.client_to_backend,
                backend_to_client = totals.backend_to_client,
                idle_timeout = totals.idle_timed_out,
                revoked = totals.revoked,
                duration = ?live.started.elapsed(),
                error = error.as_ref().map(tracing::field::display),
                "connection closed"
            );
        }
        Poll::Ready(())
    }
}

// === impl Proxy ===

impl Proxy {
    /// Counts and logs a refusal, sends the `unrecognized_name` alert if it calls for one, and
    /// closes.
    async fn refuse(&self, mut client: TcpStream, refused: Refused) {
        let alert = refused.reason.alerts();
        self.count_refusal(&refused);
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

    /// Counts a refusal and writes its one log line (within the refusal log budget).
    fn count_refusal(&self, refused: &Refused) {
        let Refused {
            reason,
            origin,
            ja4,
        } = refused;
        let outcome = reason.outcome();
        self.metrics.count(outcome);
        if reason.logged() && self.refusal_log.allow(origin.client().ip()) {
            let claimed = origin.claimed().map(tracing::field::display);
            let ja4 = ja4.map(tracing::field::display);
            tracing::info!(peer = %origin.client(), claimed, reason = %outcome, detail = %reason, ja4, "connection refused");
        }
    }

    /// Counts and logs a connection refused before it was read, over the global limit.
    pub(crate) fn refuse_over_limit(&self, peer: SocketAddr) {
        self.count_refusal(&Origin::peer(peer).refuse(Reason::GlobalLimit));
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
    /// most of a connection's memory in user space. tokio's task cell is aligned to 128 bytes
    /// and adds 96 (header, scheduler and id, trailer) to the future: up to 416 bytes of
    /// future make a 512-byte task, 417 a 640-byte one.
    const MAX_TASK_FUTURE: usize = 416;

    /// A forwarded connection's shared record (what its closing line reports and the registry
    /// reads, what it holds) lives as long as it: with `Arc`'s two counts, at most 256 bytes.
    const MAX_RECORD: usize = 240;

    #[test]
    fn the_connection_record_stays_small() {
        let size = std::mem::size_of::<Live<crate::held::Held>>();
        assert!(size <= MAX_RECORD, "connection record is {size} bytes");
    }

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
            client_limits: None,
            client_hello_memory: 1 << 20,
        };
        let proxy = Arc::new(Proxy::new(settings, Default::default(), metrics.clone()));
        let slot = ConnectionSlot::new(metrics.open(), None);
        let task = handle(proxy, stream, peer, ListenerKind::Sni, slot);
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= MAX_TASK_FUTURE,
            "connection task future is {size} bytes"
        );
    }
}
