//! One proxied connection, from accept to close.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::client_hello::{self, ClientHello, Parsed, Refusal};
use crate::connect;
use crate::forward;
use crate::listener;
use crate::metrics::ActiveGuard;
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

/// Why reading the ClientHello stopped without a hello.
enum HelloError {
    Refused(Refusal),
    Closed,
    Io(std::io::Error),
    Timeout,
}

impl HelloError {
    fn outcome(&self) -> Outcome {
        match self {
            Self::Timeout => Outcome::ClientHelloTimeout,
            Self::Refused(Refusal::BadServerName(_)) => Outcome::UnknownSni,
            Self::Refused(_) | Self::Closed | Self::Io(_) => Outcome::NotTls,
        }
    }
}

impl Display for HelloError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(refusal) => write!(f, "{refusal}"),
            Self::Closed => f.write_str("closed before a complete ClientHello"),
            Self::Io(error) => write!(f, "read failed: {error}"),
            Self::Timeout => f.write_str("no complete ClientHello in time"),
        }
    }
}

/// Serves one accepted connection to its end; never panics on input, never fails other
/// connections. `_active` is the connection's slot in the active gauge (and the global
/// limit's permit, if any), released however this ends.
pub(crate) async fn handle<P: Send>(
    proxy: Arc<Proxy>,
    mut client: TcpStream,
    peer: SocketAddr,
    _active: (ActiveGuard, P),
) {
    if let Err(error) = listener::tune(&client) {
        tracing::debug!(%peer, %error, "cannot set socket options");
    }
    let settings = &proxy.settings;
    let started = Instant::now();
    let mut buf = Vec::with_capacity(INITIAL_HELLO_BUFFER.min(settings.max_client_hello));
    let read = timeout(
        settings.client_hello_timeout,
        read_hello(&mut client, &mut buf, settings.max_client_hello),
    )
    .await
    .unwrap_or(Err(HelloError::Timeout));
    let hello = match read {
        Ok(hello) => hello,
        Err(error) => {
            let outcome = error.outcome();
            let alert = outcome == Outcome::UnknownSni;
            return proxy.refuse(client, peer, outcome, &error, alert).await;
        }
    };
    proxy
        .metrics
        .client_hello_seconds
        .observe(started.elapsed().as_secs_f64());
    let ClientHello { server_name, len } = hello;
    let Some(server_name) = server_name else {
        let why = "ClientHello has no server_name";
        return proxy.refuse(client, peer, Outcome::NoSni, &why, true).await;
    };
    let snapshot = proxy.table.load();
    let Some(route) = snapshot.table.lookup(&server_name).cloned() else {
        let why = format!("no route for {server_name}");
        return proxy
            .refuse(client, peer, Outcome::UnknownSni, &why, true)
            .await;
    };
    // Connections keep the route, never the whole table: a swap frees the old table's memory.
    drop(snapshot);
    if !route.allows(peer.ip()) {
        let why = format!(
            "{server_name}: client not in route {}'s allowed_cidrs",
            route.name()
        );
        return proxy
            .refuse(client, peer, Outcome::Denied, &why, false)
            .await;
    }
    let gauge = proxy.metrics.route_gauge(route.name());
    let Some(_route_active) = ActiveGuard::try_take(gauge, route.max_connections()) else {
        let why = format!(
            "{server_name}: route {} is at max_connections",
            route.name()
        );
        return proxy
            .refuse(client, peer, Outcome::Limited, &why, false)
            .await;
    };
    tracing::trace!(%peer, %server_name, hello_bytes = len, "client hello read");

    let connecting = Instant::now();
    let connected = connect::connect(&route, settings.connect_timeout, &proxy.health).await;
    proxy
        .metrics
        .backend_connect_seconds
        .observe(connecting.elapsed().as_secs_f64());
    let (backend, backend_addr) = match connected {
        Ok(connected) => connected,
        Err(error) => {
            return proxy
                .refuse(client, peer, Outcome::BackendUnreachable, &error, false)
                .await
        }
    };
    proxy.metrics.count(Outcome::Routed);
    if let Err(error) = listener::tune(&backend) {
        tracing::debug!(%peer, %backend_addr, %error, "cannot set socket options");
    }
    tracing::debug!(%peer, %server_name, route = route.name(), backend = %backend_addr, "routed");
    let forwarded = forward::forward(
        client,
        backend,
        &buf,
        settings.idle_timeout,
        &proxy.metrics.bytes,
    )
    .await;
    let (totals, error) = match forwarded {
        Ok(totals) => (totals, None),
        Err(error) => (Default::default(), Some(error)),
    };
    if settings.log_connections {
        tracing::info!(
            %peer, %server_name, route = route.name(), backend = %backend_addr,
            client_to_backend = totals.client_to_backend,
            backend_to_client = totals.backend_to_client,
            idle_timeout = totals.idle_timed_out,
            duration = ?started.elapsed(),
            error = error.as_ref().map(tracing::field::display),
            "connection closed"
        );
    }
}

/// Reads until the buffer holds a complete ClientHello, growing it up to `max`.
async fn read_hello(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<ClientHello, HelloError> {
    loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= max {
                return Err(HelloError::Refused(Refusal::TooLarge));
            }
            let target = (buf.capacity() * 2).clamp(INITIAL_HELLO_BUFFER, max);
            buf.reserve_exact(target - buf.len());
        }
        let n = client.read_buf(buf).await.map_err(HelloError::Io)?;
        match client_hello::parse(buf, max) {
            Parsed::Hello(hello) => return Ok(hello),
            Parsed::Refused(refusal) => return Err(HelloError::Refused(refusal)),
            Parsed::NeedMore if n == 0 => return Err(HelloError::Closed),
            Parsed::NeedMore => {}
        }
    }
}

// === impl Proxy ===

impl Proxy {
    /// Counts and logs a refusal, sends the `unrecognized_name` alert if `alert`, and closes.
    async fn refuse(
        &self,
        mut client: TcpStream,
        peer: SocketAddr,
        outcome: Outcome,
        why: &(dyn Display + Sync),
        alert: bool,
    ) {
        self.metrics.count(outcome);
        if self.refusal_log.allow() {
            tracing::info!(%peer, reason = %outcome, detail = %why, "connection refused");
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
