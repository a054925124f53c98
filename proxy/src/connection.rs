//! One proxied connection, from accept to close.

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
    /// The SNI names no route.
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
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Outcome {
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
        }
    }
}

/// Why reading the ClientHello stopped without a hello.
enum HelloError {
    Refused(Refusal),
    Closed,
    Io(std::io::Error),
    Timeout,
}

/// Serves one accepted connection to its end; never panics on input, never fails other
/// connections.
pub(crate) async fn handle(proxy: Arc<Proxy>, mut client: TcpStream, peer: SocketAddr) {
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
            let (outcome, detail) = match error {
                HelloError::Timeout => (
                    Outcome::ClientHelloTimeout,
                    "no complete ClientHello in time".to_owned(),
                ),
                HelloError::Closed => (
                    Outcome::NotTls,
                    "closed before a complete ClientHello".to_owned(),
                ),
                HelloError::Io(e) => (Outcome::NotTls, format!("read failed: {e}")),
                HelloError::Refused(Refusal::BadServerName(e)) => {
                    refuse_with_alert(
                        client,
                        peer,
                        Outcome::UnknownSni,
                        &format!("server_name is not a hostname: {e}"),
                    )
                    .await;
                    return;
                }
                HelloError::Refused(r) => (Outcome::NotTls, r.to_string()),
            };
            tracing::info!(%peer, reason = %outcome, detail, "connection refused");
            return;
        }
    };
    let ClientHello { server_name, len } = hello;
    let Some(server_name) = server_name else {
        refuse_with_alert(
            client,
            peer,
            Outcome::NoSni,
            "ClientHello has no server_name",
        )
        .await;
        return;
    };
    let snapshot = proxy.table.load();
    let Some(route) = snapshot.table.lookup(&server_name).cloned() else {
        let detail = format!("no route for {server_name}");
        refuse_with_alert(client, peer, Outcome::UnknownSni, &detail).await;
        return;
    };
    // Connections keep the route, never the whole table: a swap frees the old table's memory.
    drop(snapshot);
    if !route.allows(peer.ip()) {
        tracing::info!(%peer, reason = %Outcome::Denied, route = route.name(), %server_name, "connection refused");
        return;
    }
    tracing::trace!(%peer, %server_name, hello_bytes = len, elapsed = ?started.elapsed(), "client hello read");

    let (backend, backend_addr) = match connect::connect(&route, settings.connect_timeout).await {
        Ok(connected) => connected,
        Err(error) => {
            tracing::info!(%peer, reason = %Outcome::BackendUnreachable, route = route.name(), %server_name, detail = %error, "connection refused");
            return;
        }
    };
    if let Err(error) = listener::tune(&backend) {
        tracing::debug!(%peer, %backend_addr, %error, "cannot set socket options");
    }
    tracing::debug!(%peer, %server_name, route = route.name(), backend = %backend_addr, "routed");
    match forward::forward(client, backend, &buf, settings.idle_timeout).await {
        Ok(totals) => tracing::debug!(
            %peer, route = route.name(), backend = %backend_addr,
            client_to_backend = totals.client_to_backend,
            backend_to_client = totals.backend_to_client,
            idle_timeout = totals.idle_timed_out,
            duration = ?started.elapsed(),
            "connection closed"
        ),
        Err(error) => {
            tracing::debug!(%peer, route = route.name(), backend = %backend_addr, %error, "connection ended with an error")
        }
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

/// Sends the `unrecognized_name` alert, logs the refusal, and closes cleanly.
async fn refuse_with_alert(
    mut client: TcpStream,
    peer: SocketAddr,
    outcome: Outcome,
    detail: &str,
) {
    tracing::info!(%peer, reason = %outcome, detail, "connection refused");
    if client.write_all(&UNRECOGNIZED_NAME_ALERT).await.is_err() || client.shutdown().await.is_err()
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
