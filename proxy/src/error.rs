//! The data plane's errors.

use std::io;
use std::net::SocketAddr;

use thiserror::Error;

/// Why a byte string is not a hostname.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// Nothing (or only a dot).
    #[error("empty name")]
    Empty,
    /// Longer than 253 bytes.
    #[error("name is {0} bytes long, over 253")]
    TooLong(usize),
    /// Two dots in a row, or a leading dot.
    #[error("empty label")]
    EmptyLabel,
    /// A label over 63 bytes.
    #[error("label is {0} bytes long, over 63")]
    LabelTooLong(usize),
    /// A byte that is not a letter, digit, `-` or `_`.
    #[error("byte 0x{0:02x} is not allowed in a hostname")]
    BadByte(u8),
    /// An IPv4 or IPv6 address (or a name ending in an all-numeric label, which resolvers
    /// read as one): RFC 6066 section 3 forbids IP literals as a HostName.
    #[error("is an IP address, not a hostname (RFC 6066 forbids IP literals in SNI)")]
    IpLiteral,
}

/// Why a routing table could not be built.
#[derive(Debug, Error)]
pub enum TableError {
    /// A hostname pattern that does not parse.
    #[error("route {route}: hostname {hostname:?}: {source}")]
    BadHostname {
        /// The route naming it.
        route: String,
        /// The hostname as written.
        hostname: String,
        /// What is wrong with it.
        source: NameError,
    },
    /// A backend that is not `host:port`.
    #[error("backend {backend:?}: {why}")]
    BadBackend {
        /// The backend as written.
        backend: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A route with no hostnames.
    #[error("route {route} has no hostnames")]
    NoHostnames {
        /// The route.
        route: String,
    },
    /// A route with no backends.
    #[error("route {route} has no backends")]
    NoBackends {
        /// The route.
        route: String,
    },
    /// Backend facts that do not pair up with the backends.
    #[error("route {route} has {backends} backends but facts for {facts}")]
    FactsMismatch {
        /// The route.
        route: String,
        /// How many backends it has.
        backends: usize,
        /// How many facts it has.
        facts: usize,
    },
    /// Two routes with the same name.
    #[error("route name {route} is used twice")]
    DuplicateRoute {
        /// The name.
        route: String,
    },
    /// One hostname in two routes.
    #[error("hostname {hostname} is claimed by route {first} and route {second}")]
    DuplicateHostname {
        /// The hostname, normalised.
        hostname: String,
        /// The route that claimed it first.
        first: String,
        /// The route that claimed it again.
        second: String,
    },
    /// One hosted-cluster ID in two routes.
    #[error("cluster ID {cluster_id} is claimed by route {first} and route {second}")]
    DuplicateClusterId {
        /// The ID.
        cluster_id: String,
        /// The route that claimed it first.
        first: String,
        /// The route that claimed it again.
        second: String,
    },
}

/// Errors that stop a listener from starting.
#[derive(Debug, Error)]
pub enum ListenError {
    /// socket/bind/listen failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the kernel said.
        source: io::Error,
    },
}

/// No backend of a route accepted a connection.
#[derive(Debug, Error)]
#[error("route {route}: no backend reachable; last tried {backend}: {source}")]
pub struct ConnectError {
    /// The route whose backends were tried.
    pub route: String,
    /// The last backend tried.
    pub backend: String,
    /// Why the last attempt failed.
    pub source: io::Error,
}
