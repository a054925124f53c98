//! The vocabulary connections are counted and refused by: the `outcome` label, and the typed
//! reason behind every refusal, carried from where it is decided to the one place that logs it.

use std::fmt;
use std::io;
use std::str::Utf8Error;
use std::sync::Arc;

use crate::client_hello;
use crate::client_limit::Limited;
use crate::error::ConnectError;
use crate::hello_budget::Evicted;
use crate::table::Denial;

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
    /// A load balancer's health check: a PROXY v2 LOCAL header, then close.
    HealthCheck,
    /// Over the client's `client_limits` (connections open, or rate).
    ClientLimited,
    /// Closed unfinished to keep unfinished ClientHellos within `client_hello_memory`.
    Overloaded,
}

impl Outcome {
    /// Every outcome, for metrics that should show zeros.
    pub const ALL: [Outcome; 11] = [
        Self::Routed,
        Self::UnknownSni,
        Self::NoSni,
        Self::NotTls,
        Self::ClientHelloTimeout,
        Self::Denied,
        Self::BackendUnreachable,
        Self::Limited,
        Self::HealthCheck,
        Self::ClientLimited,
        Self::Overloaded,
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
            Self::HealthCheck => "health_check",
            Self::ClientLimited => "client_limited",
            Self::Overloaded => "overloaded",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which part of the start of a connection was being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The PROXY protocol header.
    ProxyHeader,
    /// The TLS ClientHello.
    ClientHello,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ProxyHeader => "PROXY header",
            Self::ClientHello => "ClientHello",
        })
    }
}

/// Why a connection was turned away.
#[derive(Debug)]
pub enum Reason {
    /// The bytes are not a ClientHello that can be routed, or its server_name is no hostname.
    Hello(client_hello::Refusal),
    /// The PROXY header is malformed, missing, or of a kind the listener does not take.
    ProxyHeader(&'static str),
    /// The stage outgrew `max_client_hello` before it was complete.
    TooLarge(Stage),
    /// The client closed before the stage was complete.
    Closed(Stage),
    /// Reading the stage failed.
    ReadFailed(Stage, io::Error),
    /// No complete ClientHello within `client_hello_timeout`.
    Timeout,
    /// A PROXY v2 LOCAL header and nothing after it: a load balancer's health check.
    HealthCheck,
    /// A PROXY header on an SNI listener from a peer outside `trusted_proxies`.
    UntrustedProxy,
    /// A PROXY header on the ClusterID listener without the ClusterID TLV.
    NoClusterId,
    /// A ClusterID TLV that is not UTF-8.
    ClusterIdNotUtf8(Utf8Error),
    /// A ClientHello without server_name.
    NoSni,
    /// The table has no route for the connection, or the route refuses the client.
    Denied(Denial),
    /// The route is at its `max_connections`.
    RouteLimit {
        /// The route.
        route: Box<str>,
    },
    /// The proxy is at the global `max_connections`.
    GlobalLimit,
    /// The client is over its `client_limits`.
    ClientLimited(Limited),
    /// No backend of the route accepted.
    Backend(ConnectError),
    /// The route has no backend on purpose (`RouteSpec::no_backend`): refused without
    /// trying, and without an alert, as a route whose backends are down would be.
    NoBackend {
        /// The route.
        route: Box<str>,
        /// Why it has none.
        why: Arc<str>,
    },
    /// Closed to keep unfinished hellos within `client_hello_memory`: its buffer was next in
    /// eviction order (the largest, then the longest without progress).
    Overloaded(Evicted),
}

impl Reason {
    /// The outcome the refusal is counted as.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Hello(client_hello::Refusal::BadServerName(_)) => Outcome::UnknownSni,
            Self::Hello(_)
            | Self::ProxyHeader(_)
            | Self::TooLarge(_)
            | Self::Closed(_)
            | Self::ReadFailed(..) => Outcome::NotTls,
            Self::Timeout => Outcome::ClientHelloTimeout,
            Self::HealthCheck => Outcome::HealthCheck,
            Self::UntrustedProxy | Self::Denied(Denial::NotAllowed { .. }) => Outcome::Denied,
            Self::NoClusterId
            | Self::ClusterIdNotUtf8(_)
            | Self::Denied(
                Denial::UnknownName(_) | Denial::UnknownOnPort(..) | Denial::UnknownClusterId(_),
            ) => Outcome::UnknownSni,
            Self::NoSni => Outcome::NoSni,
            Self::RouteLimit { .. } | Self::GlobalLimit => Outcome::Limited,
            Self::ClientLimited(_) => Outcome::ClientLimited,
            Self::Backend(_) | Self::NoBackend { .. } => Outcome::BackendUnreachable,
            Self::Overloaded(_) => Outcome::Overloaded,
        }
    }

    /// Whether the client gets the `unrecognized_name` alert (RFC 6066) before the close. Not
    /// on a Gateway listener: there a name no route of that listener answers is rejected with
    /// a bare close, as the Gateway API wants a connection no route matches rejected (its
    /// conformance suite takes only a reset or an EOF, an alert being an answer).
    pub fn alerts(&self) -> bool {
        !matches!(self, Self::Denied(Denial::UnknownOnPort(..)))
            && matches!(self.outcome(), Outcome::UnknownSni | Outcome::NoSni)
    }

    /// Whether the refusal gets a log line: a health check is not a refusal anyone reads.
    pub fn logged(&self) -> bool {
        !matches!(self, Self::HealthCheck)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hello(refusal) => refusal.fmt(f),
            Self::ProxyHeader(why) => write!(f, "PROXY protocol: {why}"),
            Self::TooLarge(stage) => write!(f, "{stage} larger than max_client_hello"),
            Self::Closed(stage) => write!(f, "closed before a complete {stage}"),
            Self::ReadFailed(stage, error) => write!(f, "reading the {stage} failed: {error}"),
            Self::Timeout => f.write_str("no complete ClientHello in time"),
            Self::HealthCheck => f.write_str("PROXY LOCAL health check"),
            Self::UntrustedProxy => f.write_str("PROXY header from a peer not in trusted_proxies"),
            Self::NoClusterId => f.write_str("PROXY header without a ClusterID TLV"),
            Self::ClusterIdNotUtf8(error) => write!(f, "ClusterID TLV is not UTF-8: {error}"),
            Self::NoSni => f.write_str("ClientHello has no server_name"),
            Self::Denied(denial) => denial.fmt(f),
            Self::RouteLimit { route } => write!(f, "route {route} is at max_connections"),
            Self::GlobalLimit => f.write_str("at the global max_connections"),
            Self::ClientLimited(limit) => write!(f, "client_limits: {limit}"),
            Self::Backend(error) => error.fmt(f),
            Self::NoBackend { route, why } => {
                write!(f, "route {route} has no valid backend: {why}")
            }
            Self::Overloaded(evicted) => evicted.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_without_backends_refuses_as_unreachable_without_an_alert() {
        let reason = Reason::NoBackend {
            route: "tenants/r".into(),
            why: "Service tenants/gone does not exist".into(),
        };
        assert_eq!(reason.outcome(), Outcome::BackendUnreachable);
        assert!(!reason.alerts() && reason.logged());
        assert_eq!(
            reason.to_string(),
            "route tenants/r has no valid backend: Service tenants/gone does not exist"
        );
    }

    #[test]
    fn unknown_names_alert_on_the_listen_listeners_and_close_bare_on_gateway_listeners() {
        let name = crate::name::ServerName::parse(b"x.test").unwrap();
        let listen = Reason::Denied(Denial::UnknownName(name.clone()));
        let gateway = Reason::Denied(Denial::UnknownOnPort(20000, name));
        assert_eq!(listen.outcome(), gateway.outcome());
        assert!(listen.alerts() && !gateway.alerts());
    }

    #[test]
    fn outcomes_index_their_own_counter() {
        // Metrics::count indexes its counters by discriminant.
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i, "{outcome}");
        }
    }
}
