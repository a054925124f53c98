//! The YAML config file: its schema, its defaults, and validation that reports every problem.
//!
//! ```yaml
//! listen: 0.0.0.0:8443            # one address or a list
//! admin: 127.0.0.1:9090           # optional
//! debug: 127.0.0.1:9091           # optional, or `off`
//! client_hello_timeout: 5s        # optional (humantime: 250ms, 5s, 1h30m)
//! connect_timeout: 10s            # optional
//! idle_timeout: 1h                # optional
//! max_client_hello: 16384         # optional, bytes, 512 to 1 MiB
//! client_hello_memory: 64MiB      # optional: all unfinished hellos' buffers (B, KiB, MiB, GiB)
//! kubernetes: {debounce: 100ms}   # optional: route HostedClusters too; also
//!                                 # backends: endpoints|service, zone: <zone>
//! cluster_id_listen: 0.0.0.0:6443 # optional: PROXY-v2 listener routing by ClusterID
//! revoke_grace: 30s               # optional: duration, or `off`
//! routes:
//!   - name: cluster-a             # optional; defaults to the first hostname as written
//!     hostnames: [api.a.example.test, "*.apps.a.example.test"]
//!     backends: ["10.0.0.1:6443", "kas.ns.svc:6443", "[::1]:6443"]
//! ```
//!
//! Parsing is two steps. Serde reads the document into a loose, span-carrying shape where every
//! value is still text ([`raw`]); only structural faults (bad YAML, unknown keys, a map where a
//! list belongs) stop it there. Validation ([`validate`], one function per section) then checks
//! every value and collects every problem, each with its line, column and route, so one run of
//! `sniroute check` lists everything to fix. This module holds the typed result, how it is
//! read, and which changes to it need a restart.

mod raw;
#[cfg(test)]
mod tests;
mod validate;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use proxy::{Route, RouteSpec, Settings, Table};
use serde_saphyr::{Location, MessageFormatter};

use crate::error::{ConfigError, Problem};

/// `admin` when the file does not say.
pub(crate) const DEFAULT_ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9090);
/// `debug` when the file does not say: loopback, so only the pod itself (or
/// `kubectl port-forward`) reaches the routing table.
pub const DEFAULT_DEBUG: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9091);
/// `client_hello_timeout` when the file does not say.
pub(crate) const DEFAULT_CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// `connect_timeout` when the file does not say.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `idle_timeout` when the file does not say.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// `max_client_hello` when the file does not say: a ClientHello with a post-quantum key share
/// and a long session ticket is a few KiB, so 16 KiB (one full TLS record) leaves room.
pub(crate) const DEFAULT_MAX_CLIENT_HELLO: usize = 16 * 1024;
/// The smallest `max_client_hello` accepted: below this, ordinary browsers' hellos are refused.
pub(crate) const MIN_MAX_CLIENT_HELLO: usize = 512;
/// The largest `max_client_hello` accepted: more is memory per pending connection for nothing.
pub(crate) const MAX_MAX_CLIENT_HELLO: usize = 1024 * 1024;
/// `client_hello_memory` when the file does not say: 4,096 maximum-size pending hellos, or
/// 32,768 typical ones, and a small share of a proxy pod's memory.
pub(crate) const DEFAULT_CLIENT_HELLO_MEMORY: usize = 64 * 1024 * 1024;
/// The `source` of every route read from the file.
pub(crate) const ROUTE_SOURCE: &str = "file";
/// `kubernetes.debounce` when the file does not say: long enough to batch the burst of
/// events one hosted cluster's creation makes, short enough to route it well within a second.
pub(crate) const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);
/// The longest `kubernetes.debounce` accepted: beyond it, changes stop being prompt.
pub(crate) const MAX_DEBOUNCE: Duration = Duration::from_secs(10);
/// `listen_backlog` when the file does not say.
pub(crate) const DEFAULT_LISTEN_BACKLOG: i32 = proxy::DEFAULT_BACKLOG;
/// `shutdown_delay` when the file does not say: a few load-balancer health-check intervals.
pub(crate) const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::from_secs(5);
/// `drain_timeout` when the file does not say.
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// `revoke_grace` when the file does not say.
pub(crate) const DEFAULT_REVOKE_GRACE: Duration = Duration::from_secs(30);
/// Descriptors `max_connections`' default leaves for the process's own: stdio, the runtime's
/// epoll and wakers, the signal and inotify handles, the resolver, the Kubernetes client's
/// connections (an idle proxy with three listeners holds 17).
pub(crate) const RESERVED_OPEN_FILES: u64 = 64;
/// Descriptors one proxied connection is counted for in `max_connections`' default: its
/// client and backend sockets, and one for the splice pipes. A pipe is two descriptors held by
/// one direction only while it moves a bulk burst (an idle or request-sized connection holds
/// none), and a direction that cannot get one copies instead, so one per connection is a
/// generous mean that never fails a connection when it is short.
pub(crate) const OPEN_FILES_PER_CONNECTION: u64 = 3;
/// `client_limits.max_connections` once the section is set.
pub(crate) const DEFAULT_CLIENT_MAX_CONNECTIONS: u32 = 200;
/// `client_limits.connection_rate` once the section is set.
pub(crate) const DEFAULT_CLIENT_RATE: &str = "50/s";
/// `client_limits.burst` once the section is set.
pub(crate) const DEFAULT_CLIENT_BURST: u32 = 100;
/// `client_limits.ipv6_prefix` once the section is set: one host often holds a whole /64.
pub(crate) const DEFAULT_CLIENT_IPV6_PREFIX: u8 = 64;
/// The largest config file read: room for about 145,000 routes of a realistic shape (three
/// hostnames, two backends, two CIDRs: a 100,000-route file is about 22 MB), and a bound on
/// what a bad path (a device, a runaway generator) can make the process read.
pub(crate) const MAX_CONFIG_BYTES: u64 = 32 * 1024 * 1024;
/// The YAML parser's node budget (mappings, sequences and scalars, an alias counting each time
/// it expands): a realistic route is 16 nodes, so this is about 250,000 routes, while it still
/// stops an alias bomb long before it costs much memory.
pub(crate) const MAX_YAML_NODES: usize = 4_000_000;
/// The YAML parser's event budget, in step with [`MAX_YAML_NODES`] (a realistic route is 22
/// parser events).
pub(crate) const MAX_YAML_EVENTS: usize = 6_000_000;

/// A validated config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Addresses to accept TLS connections on (at least one).
    pub listen: Vec<SocketAddr>,
    /// Address of the admin HTTP server (health, readiness, metrics).
    pub admin: SocketAddr,
    /// Address of the debug HTTP server (the routing table); `None` (`off`) runs none.
    pub debug: Option<SocketAddr>,
    /// The routes, in file order (may be empty: then every connection is refused), each with
    /// source [`ROUTE_SOURCE`].
    pub routes: Vec<RouteSpec>,
    /// The Kubernetes source, when the file has a `kubernetes:` key.
    pub kubernetes: Option<KubernetesConfig>,
    /// Where to accept PROXY-v2 connections routed by the ClusterID TLV, if anywhere.
    pub cluster_id_listen: Option<SocketAddr>,
    /// The kernel's accept queue length for each `listen` address.
    pub listen_backlog: i32,
    /// After SIGTERM, how long listeners keep accepting while readiness is off.
    pub shutdown_delay: Duration,
    /// After listeners close, how long established connections may take to finish.
    pub drain_timeout: Duration,
    /// `text` for terminals, `json` for log collectors.
    pub log_format: LogFormat,
    /// The log filter when `RUST_LOG` is not set, e.g. `info` or `info,proxy=debug`.
    pub log_level: String,
    /// The data plane's knobs (timeouts, limits, PROXY headers, revocation), as the proxy
    /// takes them.
    pub proxy: Settings,
    /// The file name used in messages.
    origin: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The `kubernetes:` section: route the hosted clusters of the cluster the client reaches.
///
/// The client is configured the standard way (`KUBECONFIG`, `~/.kube/config`, then the
/// in-cluster service account), so the section only tunes the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// How long changes are batched after the first one before the table is rebuilt.
    pub debounce: Duration,
    /// `backends`: where a Service's traffic goes.
    pub backends: BackendsMode,
    /// `zone`: this replica's zone; endpoints there take new connections first.
    pub zone: Option<String>,
    /// `hypershift`: watch HostedClusters and their Routes (default true); false on a
    /// cluster without HyperShift's CRDs.
    pub hypershift: bool,
    /// `gateway_api`: serve the Gateway API's TLSRoutes (off when absent).
    pub gateway_api: Option<GatewayApiConfig>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            debounce: DEFAULT_DEBOUNCE,
            backends: BackendsMode::default(),
            zone: None,
            hypershift: true,
            gateway_api: None,
        }
    }
}

/// `kubernetes.gateway_api`: sniroute as a Gateway API implementation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayApiConfig {
    /// `controller_name`: the GatewayClasses with this `spec.controllerName` are sniroute's.
    pub controller_name: String,
    /// `addresses`: what every Gateway reports in `status.addresses` (the IPs or hostnames
    /// of the Service in front of sniroute) when `listener_ports` is not set; none leaves
    /// Gateways not Programmed.
    pub addresses: Vec<String>,
    /// `listener_ports`: the pod ports (`20000-20999`) Gateway listeners are given, each
    /// Gateway its own Service and address; `None` serves every Gateway on the `listen`
    /// listeners at `addresses`.
    pub listener_ports: Option<std::ops::RangeInclusive<u16>>,
    /// `service_type`: the type of each Gateway's Service, `LoadBalancer` (the default) or
    /// `ClusterIP`.
    pub service_type: String,
}

/// `kubernetes.gateway_api.service_type` when the file does not say.
pub const DEFAULT_GATEWAY_SERVICE_TYPE: &str = "LoadBalancer";

/// `kubernetes.backends`: where a routed Service's connections go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackendsMode {
    /// `endpoints`: to its pods, from its EndpointSlices (ClusterIP while it has none).
    #[default]
    Endpoints,
    /// `service`: to its ClusterIP, as kube-proxy balances it.
    Service,
}

// === impl Config ===

impl Config {
    /// `max_connections` when the file does not say: what `open_files` descriptors (the soft
    /// RLIMIT_NOFILE; `None`: unlimited) serve without an accepted connection ever failing
    /// for want of one, after [`RESERVED_OPEN_FILES`], each listener, and the admin and debug
    /// servers' `admin_connections` each. At least 1.
    pub fn derived_max_connections(
        &self,
        open_files: Option<u64>,
        admin_connections: usize,
    ) -> usize {
        let Some(open_files) = open_files else {
            return usize::MAX;
        };
        let servers = 1 + u64::from(self.debug.is_some());
        let listeners = self.listen.len() + usize::from(self.cluster_id_listen.is_some());
        let reserved = RESERVED_OPEN_FILES
            .saturating_add(servers.saturating_mul(admin_connections as u64 + 1))
            .saturating_add(listeners as u64);
        let connections = open_files.saturating_sub(reserved) / OPEN_FILES_PER_CONNECTION;
        usize::try_from(connections).unwrap_or(usize::MAX).max(1)
    }

    /// Reads and validates the file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Validates `text`; `origin` names it in messages (usually the file path).
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            file: origin.to_owned(),
            problems,
        };
        let raw: raw::RawConfig = match serde_saphyr::from_str_with_options(text, yaml_options()) {
            Ok(raw) => raw,
            Err(err) => return Err(invalid(vec![syntax_problem(&err)])),
        };
        let mut problems = Vec::new();
        let config = raw.validate(origin, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            // Stable: problems on one line keep the order they were found in.
            problems.sort_by_key(|p| (p.line.unwrap_or(0), p.column.unwrap_or(0)));
            Err(invalid(problems))
        }
    }

    /// Validates file contents read elsewhere; refuses bytes that are not UTF-8.
    pub(crate) fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self, ConfigError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::parse(text, origin),
            Err(err) => {
                let line = bytes[..err.valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count() as u64
                    + 1;
                Err(ConfigError::Invalid {
                    file: origin.to_owned(),
                    problems: vec![Problem {
                        line: Some(line),
                        column: None,
                        route: None,
                        message: format!(
                            "not UTF-8 (invalid byte at offset {})",
                            err.valid_up_to()
                        ),
                    }],
                })
            }
        }
    }

    /// Builds the routing table from the routes, each with source [`ROUTE_SOURCE`].
    ///
    /// Validation already refused everything the table refuses, so this fails only on a bug.
    pub fn table(&self) -> Result<Table, ConfigError> {
        let table_error = |source| ConfigError::Table {
            file: self.origin.clone(),
            source,
        };
        let routes = self
            .route_specs()
            .into_iter()
            .map(Route::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(table_error)?;
        Table::new(routes).map_err(table_error)
    }

    /// The routes as the publish step takes them, each with source [`ROUTE_SOURCE`].
    pub fn route_specs(&self) -> Vec<RouteSpec> {
        self.routes.clone()
    }

    /// The name this config was read under (the file path), as used in messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The keys, other than `routes`, whose values differ from `other`'s: these only take
    /// effect when the process restarts.
    ///
    /// Both structs are destructured field by field, so a new setting does not compile until
    /// it is named here: none is silently neither reloaded nor warned about.
    pub(crate) fn restart_settings_changed(&self, other: &Self) -> Vec<&'static str> {
        let Self {
            listen,
            admin,
            debug,
            routes: _,
            kubernetes,
            cluster_id_listen,
            listen_backlog,
            shutdown_delay,
            drain_timeout,
            log_format,
            log_level,
            proxy,
            origin: _,
        } = self;
        let Settings {
            client_hello_timeout,
            connect_timeout,
            idle_timeout,
            max_client_hello,
            max_connections,
            log_connections,
            outlier_detection,
            accept_proxy_protocol,
            trusted_proxies,
            revoke_grace,
            client_limits,
            client_hello_memory,
        } = proxy;
        let theirs = &other.proxy;
        [
            ("listen", *listen != other.listen),
            ("admin", *admin != other.admin),
            ("debug", *debug != other.debug),
            ("kubernetes", *kubernetes != other.kubernetes),
            (
                "cluster_id_listen",
                *cluster_id_listen != other.cluster_id_listen,
            ),
            ("listen_backlog", *listen_backlog != other.listen_backlog),
            ("shutdown_delay", *shutdown_delay != other.shutdown_delay),
            ("drain_timeout", *drain_timeout != other.drain_timeout),
            ("log_format", *log_format != other.log_format),
            ("log_level", *log_level != other.log_level),
            (
                "client_hello_timeout",
                *client_hello_timeout != theirs.client_hello_timeout,
            ),
            (
                "connect_timeout",
                *connect_timeout != theirs.connect_timeout,
            ),
            ("idle_timeout", *idle_timeout != theirs.idle_timeout),
            (
                "max_client_hello",
                *max_client_hello != theirs.max_client_hello,
            ),
            (
                "max_connections",
                *max_connections != theirs.max_connections,
            ),
            (
                "log_connections",
                *log_connections != theirs.log_connections,
            ),
            (
                "outlier_detection",
                *outlier_detection != theirs.outlier_detection,
            ),
            (
                "accept_proxy_protocol",
                *accept_proxy_protocol != theirs.accept_proxy_protocol,
            ),
            (
                "trusted_proxies",
                *trusted_proxies != theirs.trusted_proxies,
            ),
            ("revoke_grace", *revoke_grace != theirs.revoke_grace),
            ("client_limits", *client_limits != theirs.client_limits),
            (
                "client_hello_memory",
                *client_hello_memory != theirs.client_hello_memory,
            ),
        ]
        .into_iter()
        .filter_map(|(key, differs)| differs.then_some(key))
        .collect()
    }
}

/// Reads the config file at `path`: a regular file (after symlinks) of at most
/// [`MAX_CONFIG_BYTES`]. Anything else (a device, a FIFO, a directory) is refused before a
/// byte is read, and the open cannot block: a FIFO with no writer would otherwise hang it.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

    let file = path.display().to_string();
    let read_error = |source| ConfigError::Read {
        file: file.clone(),
        source,
    };
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_error)?;
    let meta = opened.metadata().map_err(read_error)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let kind = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(ConfigError::NotRegular { file, kind });
    }
    let too_large = || ConfigError::TooLarge {
        file: file.clone(),
        limit: MAX_CONFIG_BYTES,
    };
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_large());
    }
    // The file may grow while it is read: the limit holds for what is read, not what was stat'd.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or_default());
    opened
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

/// The YAML parser's options: its default budget, with room for large route lists.
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = MAX_YAML_NODES;
    budget.max_events = MAX_YAML_EVENTS;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// A problem from the YAML layer: bad syntax, an unknown key, a value of the wrong shape.
fn syntax_problem(err: &serde_saphyr::Error) -> Problem {
    let err = err.without_snippet();
    if let serde_saphyr::Error::Budget { breach, location } = err {
        let (line, column) = position(*location);
        return Problem {
            line,
            column,
            route: None,
            message: budget_message(breach),
        };
    }
    // `format_message` leaves out the location (reported separately below) and does not
    // escape control characters, so escape them here.
    let mut message = String::new();
    for c in serde_saphyr::DefaultMessageFormatter
        .format_message(err)
        .chars()
    {
        if c.is_control() {
            message.extend(c.escape_debug());
        } else {
            message.push(c);
        }
    }
    let (line, column) = err.location().map(position).unwrap_or((None, None));
    Problem {
        line,
        column,
        route: None,
        message,
    }
}

/// What a breached parser budget means for this file, naming the limit.
fn budget_message(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach;
    match breach {
        BudgetBreach::Nodes { .. } => format!(
            "the file has more than {MAX_YAML_NODES} YAML nodes (mappings, sequences and \
             scalars, aliases counted as they expand), the limit: about 250,000 routes"
        ),
        BudgetBreach::Events { .. } => format!(
            "the file has more than {MAX_YAML_EVENTS} YAML parser events, the limit: about \
             250,000 routes"
        ),
        other => format!("the YAML parser's limits were exceeded: {other:?}"),
    }
}

/// A location as a problem reports it; the crate uses line 0 for "unknown".
fn position(location: Location) -> (Option<u64>, Option<u64>) {
    match location.line() {
        0 => (None, None),
        line => (Some(line), Some(location.column()).filter(|&c| c > 0)),
    }
}
