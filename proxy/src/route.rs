//! Routing one connection: who is connecting (the PROXY header, believed only from trusted
//! peers), what it is routed by (the ClusterID TLV or the ClientHello's SNI), and the table's
//! admission decision. Three small steps, each refusing with a typed [`Reason`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::addr::canonical;
use crate::client_hello::{self, ClientHello, Parsed};
use crate::client_limit::{ClientGuard, Limited};
use crate::hello_budget::{Evicted, Pending};
use crate::ja4::Ja4;
use crate::outcome::{Reason, Stage};
use crate::proxy_protocol::{self, Expect, Start as ProxyStart, Version as ProxyVersion};
use crate::table::{Route, RouteKey};
use crate::Proxy;

/// First read buffer: most ClientHellos (300-600 bytes) fit; post-quantum ones grow it once.
const INITIAL_HELLO_BUFFER: usize = 1024;

/// Which kind of listener accepted the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Routes by the SNI name, after an optional PROXY header from a trusted peer.
    Sni,
    /// Routes by the ClusterID TLV of a mandatory PROXY v2 header, without reading SNI.
    ClusterId,
    /// A Gateway listener, bound on this port: an SNI listener that serves only the routes
    /// of the Gateway listeners the port was allocated to.
    Gateway(u16),
}

impl ListenerKind {
    /// Whether it routes by SNI (the `listen` listeners and the Gateway listeners).
    pub fn reads_sni(self) -> bool {
        !matches!(self, Self::ClusterId)
    }
}

/// Who is connecting, as far as the PROXY header (if any) may be believed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    /// The TCP peer.
    pub(crate) peer: SocketAddr,
    via: Via,
}

/// What a PROXY header said of the client. (One field, not two: the established connection
/// keeps this for its closing line.)
#[derive(Debug, Clone, Copy)]
enum Via {
    /// No header, or one without addresses: the peer is the client.
    Direct,
    /// A trusted header named the client, and the address it connected to.
    Proxy {
        client: SocketAddr,
        destination: SocketAddr,
    },
    /// An untrusted header (on the ClusterID listener) claimed this source: logged only.
    Claimed(SocketAddr),
}

/// A connection with a route: what it was routed by, and for whom.
pub(crate) struct Routed {
    pub(crate) route: Arc<Route>,
    /// The SNI name or the ClusterID; what logs name the connection by.
    pub(crate) key: RouteKey,
    pub(crate) origin: Origin,
    /// The ClientHello's fingerprint (none on the ClusterID listener, which reads no hello).
    pub(crate) ja4: Option<Ja4>,
    /// The connection's place in its client's `client_limits`, if limited.
    pub(crate) client_slot: Option<ClientGuard>,
}

/// A connection turned away, the client it is logged under, and its ClientHello's JA4 when
/// one was read.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) reason: Reason,
    pub(crate) origin: Origin,
    pub(crate) ja4: Option<Ja4>,
}

impl Refused {
    pub(crate) fn with_ja4(mut self, ja4: Option<Ja4>) -> Self {
        self.ja4 = ja4;
        self
    }
}

impl Origin {
    /// The TCP peer, before any header is read.
    pub(crate) fn peer(peer: SocketAddr) -> Self {
        Self {
            peer,
            via: Via::Direct,
        }
    }

    /// The client that allow lists, logs and the outgoing PROXY header use: the peer, or the
    /// source a trusted PROXY header named.
    pub(crate) fn client(&self) -> SocketAddr {
        match self.via {
            Via::Proxy { client, .. } => client,
            Via::Direct | Via::Claimed(_) => self.peer,
        }
    }

    /// The address the client connected to, for the outgoing PROXY header: the destination
    /// a trusted header named (the load balancer's frontend), else `local`, the connection's
    /// own.
    pub(crate) fn destination(&self, local: SocketAddr) -> SocketAddr {
        match self.via {
            Via::Proxy { destination, .. } => destination,
            Via::Direct | Via::Claimed(_) => local,
        }
    }

    /// The source an untrusted header claimed, for logs only.
    pub(crate) fn claimed(&self) -> Option<SocketAddr> {
        match self.via {
            Via::Claimed(claimed) => Some(claimed),
            Via::Direct | Via::Proxy { .. } => None,
        }
    }

    pub(crate) fn refuse(self, reason: Reason) -> Refused {
        Refused {
            reason,
            origin: self,
            ja4: None,
        }
    }
}

/// What the PROXY header step leaves for the next one.
struct Header {
    origin: Origin,
    /// The header names no client (v2 LOCAL or UNSPEC, v1 UNKNOWN): the load balancer speaks
    /// for itself, a health check if nothing follows.
    probe: bool,
    cluster_id: Option<Result<Box<str>, std::str::Utf8Error>>,
}

// === impl Proxy ===

impl Proxy {
    /// Reads what routing needs from the start of `stream` into `buf` (the bytes read past the
    /// PROXY header stay there, to be forwarded), growing it within `pending`'s share of
    /// `client_hello_memory`, and picks the route.
    pub(crate) async fn route(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
        kind: ListenerKind,
        buf: &mut Vec<u8>,
        pending: &mut Pending<'_>,
    ) -> Result<Routed, Refused> {
        let started = Instant::now();
        let header = self.proxy_header(stream, peer, kind, buf, pending).await?;
        let origin = header.origin;
        let probe = header.probe;
        // Judged on the real client, before any of its ClientHello is read; but a load
        // balancer's health check is not client traffic, so a header naming no client is
        // judged only once a ClientHello shows it is more than a probe.
        let mut client_slot = if probe {
            None
        } else {
            self.admit_client(kind, origin)
                .map_err(|limited| origin.refuse(Reason::ClientLimited(limited)))?
        };
        let mut ja4 = None;
        let key = match kind {
            ListenerKind::ClusterId => cluster_id_key(header),
            ListenerKind::Sni | ListenerKind::Gateway(_) => self
                .hello(stream, buf, pending, probe)
                .await
                .and_then(|hello| {
                    ja4 = Some(hello.ja4);
                    let name = hello.server_name.ok_or(Reason::NoSni)?;
                    Ok(match kind {
                        ListenerKind::Gateway(port) => RouteKey::OnPort(port, name),
                        _ => RouteKey::Name(name),
                    })
                }),
        };
        // What routing needs is complete (a hello without SNI is complete too).
        if matches!(key, Ok(_) | Err(Reason::NoSni)) {
            self.metrics
                .client_hello_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        let key = key.map_err(|reason| origin.refuse(reason).with_ja4(ja4))?;
        if probe {
            client_slot = self
                .admit_client(kind, origin)
                .map_err(|limited| origin.refuse(Reason::ClientLimited(limited)).with_ja4(ja4))?;
        }
        let snapshot = self.table.load();
        let route = match snapshot.table.admit(&key, origin.client().ip()) {
            // Connections keep the route, never the whole table: a swap frees the old one.
            Ok(admission) => admission.route.clone(),
            Err(denial) => return Err(origin.refuse(Reason::Denied(denial)).with_ja4(ja4)),
        };
        Ok(Routed {
            route,
            key,
            origin,
            ja4,
            client_slot,
        })
    }

    /// The client's place in its `client_limits`, if they apply. Not on the ClusterID
    /// listener: one hosted cluster's nodes often share one egress address.
    fn admit_client(
        &self,
        kind: ListenerKind,
        origin: Origin,
    ) -> Result<Option<ClientGuard>, Limited> {
        match (&self.client_limits, kind) {
            (Some(limits), ListenerKind::Sni | ListenerKind::Gateway(_)) => {
                limits.admit(origin.client().ip(), Instant::now()).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Step 1: the PROXY header, where the listener takes one. Its addresses are believed
    /// only from `trusted_proxies`: on the SNI listeners a header from anyone else is refused;
    /// on the ClusterID listener its TLV still routes, but the client is the TCP peer.
    async fn proxy_header(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
        kind: ListenerKind,
        buf: &mut Vec<u8>,
        pending: &mut Pending<'_>,
    ) -> Result<Header, Refused> {
        let mut header = Header {
            origin: Origin::peer(peer),
            probe: false,
            cluster_id: None,
        };
        let expect = match kind {
            ListenerKind::ClusterId => Some(Expect::Required(ProxyVersion::V2)),
            ListenerKind::Sni | ListenerKind::Gateway(_) => self.settings.accept_proxy_protocol,
        };
        let Some(expect) = expect else {
            return Ok(header);
        };
        let max = self.settings.max_client_hello;
        let parsed = read_until(stream, buf, pending, max, Stage::ProxyHeader, |b| {
            match proxy_protocol::parse(b, expect) {
                ProxyStart::Header(header) => Step::Done(Some(header)),
                ProxyStart::Absent => Step::Done(None),
                ProxyStart::NeedMore => Step::More,
                ProxyStart::Invalid(why) => Step::Refuse(Reason::ProxyHeader(why)),
            }
        })
        .await
        .map_err(|reason| header.origin.refuse(reason))?;
        let Some(parsed) = parsed else {
            return Ok(header);
        };
        let trusted = self
            .settings
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&canonical(peer.ip())));
        let addresses = parsed.source.zip(parsed.destination);
        header.origin.via = match (trusted, kind, addresses) {
            (false, ListenerKind::Sni | ListenerKind::Gateway(_), _) => {
                return Err(header.origin.refuse(Reason::UntrustedProxy));
            }
            (_, _, None) => Via::Direct,
            (true, _, Some((client, destination))) => Via::Proxy {
                client,
                destination,
            },
            (false, ListenerKind::ClusterId, Some((claimed, _))) => Via::Claimed(claimed),
        };
        header.probe = addresses.is_none();
        header.cluster_id = parsed.cluster_id;
        // The header is for us, not the backend.
        buf.drain(..parsed.len);
        Ok(header)
    }

    /// Step 2 on the SNI listeners: the ClientHello (its server name and JA4).
    async fn hello(
        &self,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        pending: &mut Pending<'_>,
        probe: bool,
    ) -> Result<ClientHello, Reason> {
        let max = self.settings.max_client_hello;
        // Records already framed are not walked again after each read.
        let mut progress = client_hello::Progress::default();
        let hello = read_until(stream, buf, pending, max, Stage::ClientHello, |b| {
            match client_hello::parse_more(&mut progress, b, max) {
                Parsed::Hello(hello) => Step::Done(hello),
                Parsed::NeedMore => Step::More,
                Parsed::Refused(refusal) => Step::Refuse(Reason::Hello(refusal)),
            }
        })
        .await;
        match hello {
            Ok(hello) => Ok(hello),
            // A header naming no client and a close, nothing in between: the load
            // balancer's probe.
            Err(Reason::Closed(_)) if probe && buf.is_empty() => Err(Reason::HealthCheck),
            Err(reason) => Err(reason),
        }
    }
}

/// Step 2 on the ClusterID listener: the TLV. A header naming no client and carrying no TLV
/// is a health check.
fn cluster_id_key(header: Header) -> Result<RouteKey, Reason> {
    match header.cluster_id {
        Some(Ok(id)) => Ok(RouteKey::ClusterId(id)),
        Some(Err(error)) => Err(Reason::ClusterIdNotUtf8(error)),
        None if header.probe => Err(Reason::HealthCheck),
        None => Err(Reason::NoClusterId),
    }
}

/// One step of reading the start of a connection.
enum Step<T> {
    Done(T),
    More,
    Refuse(Reason),
}

/// Reads until `parse` decides, growing `buf` up to `max` within `pending`'s reservation.
/// Bytes already in `buf` are parsed first, so a step can start on what the previous one read
/// past its end. A connection that has sent nothing holds no buffer yet.
async fn read_until<T>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    pending: &mut Pending<'_>,
    max: usize,
    stage: Stage,
    mut parse: impl FnMut(&[u8]) -> Step<T>,
) -> Result<T, Reason> {
    loop {
        match parse(buf) {
            Step::Done(done) => return Ok(done),
            Step::Refuse(reason) => return Err(reason),
            Step::More => {}
        }
        if buf.len() == buf.capacity() {
            if buf.len() >= max {
                return Err(Reason::TooLarge(stage));
            }
            if buf.capacity() == 0 {
                tokio::select! {
                    readable = stream.readable() => readable
                        .map_err(|error| Reason::ReadFailed(stage, error))?,
                    () = pending.evicted() => return Err(evicted(buf.capacity())),
                }
            }
            let target = (buf.capacity() * 2).max(INITIAL_HELLO_BUFFER).min(max);
            // Charged before it is allocated, for what is allocated.
            pending.reserve(target).map_err(Reason::Overloaded)?;
            buf.reserve_exact(target - buf.len());
        }
        let read = tokio::select! {
            read = stream.read_buf(buf) => read,
            () = pending.evicted() => return Err(evicted(buf.capacity())),
        };
        match read {
            Ok(0) => return Err(Reason::Closed(stage)),
            Ok(_) => {}
            Err(error) => return Err(Reason::ReadFailed(stage, error)),
        }
    }
}

/// Why a connection evicted by another's reservation is closed.
fn evicted(reserved: usize) -> Reason {
    Reason::Overloaded(Evicted { reserved })
}
