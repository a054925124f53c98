//! The YAML config file: its schema, its defaults, and validation that reports every problem.
//!
//! ```yaml
//! listen: 0.0.0.0:8443            # one address or a list
//! admin: 127.0.0.1:9090           # optional
//! client_hello_timeout: 5s        # optional (humantime: 250ms, 5s, 1h30m)
//! connect_timeout: 10s            # optional
//! idle_timeout: 1h                # optional
//! max_client_hello: 16384         # optional, bytes, 512 to 1 MiB
//! kubernetes: {debounce: 100ms}   # optional: route HostedClusters too
//! cluster_id_listen: 0.0.0.0:6443 # optional: PROXY-v2 listener routing by ClusterID
//! revoke_grace: 30s               # optional: duration, or `off`
//! routes:
//!   - name: cluster-a             # optional; defaults to the first hostname as written
//!     hostnames: [api.a.example.test, "*.apps.a.example.test"]
//!     backends: ["10.0.0.1:6443", "kas.ns.svc:6443", "[::1]:6443"]
//! ```
//!
//! Parsing is two steps. Serde reads the document into a loose, span-carrying shape where every
//! value is still text; only structural faults (bad YAML, unknown keys, a map where a list
//! belongs) stop it there. Validation then checks every value and collects every problem, each
//! with its line, column and route, so one run of `sniroute check` lists everything to fix.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use proxy::proxy_protocol::{Expect, Version as ProxyVersion};
use proxy::{Backend, HostPattern, OutlierPolicy, Table};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::{Location, MessageFormatter, Spanned};
use std::sync::Arc;

use crate::error::{ConfigError, Problem, RouteRef};
use crate::route_spec::RouteSpec;

/// `admin` when the file does not say.
pub const DEFAULT_ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9090);
/// `client_hello_timeout` when the file does not say.
pub const DEFAULT_CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// `connect_timeout` when the file does not say.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `idle_timeout` when the file does not say.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// `max_client_hello` when the file does not say: a ClientHello with a post-quantum key share
/// and a long session ticket is a few KiB, so 16 KiB (one full TLS record) leaves room.
pub const DEFAULT_MAX_CLIENT_HELLO: usize = 16 * 1024;
/// The smallest `max_client_hello` accepted: below this, ordinary browsers' hellos are refused.
pub const MIN_MAX_CLIENT_HELLO: usize = 512;
/// The largest `max_client_hello` accepted: more is memory per pending connection for nothing.
pub const MAX_MAX_CLIENT_HELLO: usize = 1024 * 1024;
/// The `source` of every route read from the file.
pub const ROUTE_SOURCE: &str = "file";
/// `kubernetes.debounce` when the file does not say: long enough to batch the burst of
/// events one hosted cluster's creation makes, short enough to route it well within a second.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);
/// The longest `kubernetes.debounce` accepted: beyond it, changes stop being prompt.
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(10);
/// `listen_backlog` when the file does not say.
pub const DEFAULT_LISTEN_BACKLOG: i32 = proxy::listener::DEFAULT_BACKLOG;
/// `shutdown_delay` when the file does not say: a few load-balancer health-check intervals.
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::from_secs(5);
/// `drain_timeout` when the file does not say.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// `revoke_grace` when the file does not say.
pub const DEFAULT_REVOKE_GRACE: Duration = Duration::from_secs(30);
/// The largest config file read: room for about 145,000 routes of a realistic shape (three
/// hostnames, two backends, two CIDRs: a 100,000-route file is about 22 MB), and a bound on
/// what a bad path (a device, a runaway generator) can make the process read.
pub const MAX_CONFIG_BYTES: u64 = 32 * 1024 * 1024;
/// The YAML parser's node budget (mappings, sequences and scalars, an alias counting each time
/// it expands): a realistic route is 16 nodes, so this is about 250,000 routes, while it still
/// stops an alias bomb long before it costs much memory.
pub const MAX_YAML_NODES: usize = 4_000_000;
/// The YAML parser's event budget, in step with [`MAX_YAML_NODES`] (a realistic route is 22
/// parser events).
pub const MAX_YAML_EVENTS: usize = 6_000_000;

/// A validated config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Addresses to accept TLS connections on (at least one).
    pub listen: Vec<SocketAddr>,
    /// Address of the admin HTTP server (health, readiness, routes, metrics).
    pub admin: SocketAddr,
    /// How long a client has to send its whole ClientHello.
    pub client_hello_timeout: Duration,
    /// How long one backend connect attempt may take.
    pub connect_timeout: Duration,
    /// How long a connection may carry no bytes in either direction before it is closed.
    pub idle_timeout: Duration,
    /// The most ClientHello bytes buffered before a connection is refused.
    pub max_client_hello: usize,
    /// The routes, in file order (may be empty: then every connection is refused).
    pub routes: Vec<RouteConfig>,
    /// The Kubernetes source, when the file has a `kubernetes:` key.
    pub kubernetes: Option<KubernetesConfig>,
    /// Where to accept PROXY-v2 connections routed by the ClusterID TLV, if anywhere.
    pub cluster_id_listen: Option<SocketAddr>,
    /// How long an established connection that a new table no longer admits is kept before
    /// it is closed; `None` (`off`) keeps it.
    pub revoke_grace: Option<Duration>,
    /// Connections open at once over all listeners; `None` is unlimited.
    pub max_connections: Option<usize>,
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
    /// Whether each forwarded connection logs a summary line when it closes.
    pub log_connections: bool,
    /// When backend endpoints are skipped after connect failures.
    pub outlier_detection: OutlierPolicy,
    /// Which PROXY headers the `listen` listeners take; `None` takes none.
    pub accept_proxy_protocol: Option<Expect>,
    /// Peers whose PROXY headers are believed.
    pub trusted_proxies: Vec<IpNet>,
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
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            debounce: DEFAULT_DEBOUNCE,
        }
    }
}

/// One validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Unique name: as given, or the first hostname as written.
    pub name: String,
    /// The hostnames it answers, normalised (at least one).
    pub hostnames: Vec<HostPattern>,
    /// Where it forwards to, in order (at least one).
    pub backends: Vec<Backend>,
    /// Forwarded connections allowed at once; `None` is unlimited.
    pub max_connections: Option<u32>,
    /// Client networks allowed; empty allows everyone.
    pub allowed_cidrs: Vec<IpNet>,
    /// The PROXY header sent to the backends, if any.
    pub proxy_protocol: Option<ProxyVersion>,
}

// === impl Config ===

impl Config {
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
        let raw: RawConfig = match serde_saphyr::from_str_with_options(text, yaml_options()) {
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
            .iter()
            .map(RouteSpec::to_route)
            .collect::<Result<Vec<_>, _>>()
            .map_err(table_error)?;
        Table::new(routes).map_err(table_error)
    }

    /// The routes as the publish step takes them, each with source [`ROUTE_SOURCE`].
    pub fn route_specs(&self) -> Vec<RouteSpec> {
        let source: Arc<str> = ROUTE_SOURCE.into();
        self.routes
            .iter()
            .map(|r| RouteSpec {
                max_connections: r.max_connections,
                allowed_cidrs: r.allowed_cidrs.clone(),
                proxy_protocol: r.proxy_protocol,
                ..RouteSpec::new(
                    r.name.as_str(),
                    r.hostnames.clone(),
                    r.backends.clone(),
                    source.clone(),
                )
            })
            .collect()
    }

    /// The name this config was read under (the file path), as used in messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The keys, other than `routes`, whose values differ from `other`'s: these only take
    /// effect when the process restarts.
    pub(crate) fn restart_settings_changed(&self, other: &Self) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |key, differs| {
            if differs {
                changed.push(key);
            }
        };
        check("listen", self.listen != other.listen);
        check("admin", self.admin != other.admin);
        check(
            "client_hello_timeout",
            self.client_hello_timeout != other.client_hello_timeout,
        );
        check(
            "connect_timeout",
            self.connect_timeout != other.connect_timeout,
        );
        check("idle_timeout", self.idle_timeout != other.idle_timeout);
        check(
            "max_client_hello",
            self.max_client_hello != other.max_client_hello,
        );
        check("kubernetes", self.kubernetes != other.kubernetes);
        check(
            "cluster_id_listen",
            self.cluster_id_listen != other.cluster_id_listen,
        );
        check("revoke_grace", self.revoke_grace != other.revoke_grace);
        check(
            "max_connections",
            self.max_connections != other.max_connections,
        );
        check(
            "listen_backlog",
            self.listen_backlog != other.listen_backlog,
        );
        check(
            "shutdown_delay",
            self.shutdown_delay != other.shutdown_delay,
        );
        check("drain_timeout", self.drain_timeout != other.drain_timeout);
        check("log_format", self.log_format != other.log_format);
        check("log_level", self.log_level != other.log_level);
        check(
            "log_connections",
            self.log_connections != other.log_connections,
        );
        check(
            "outlier_detection",
            self.outlier_detection != other.outlier_detection,
        );
        check(
            "accept_proxy_protocol",
            self.accept_proxy_protocol != other.accept_proxy_protocol,
        );
        check(
            "trusted_proxies",
            self.trusted_proxies != other.trusted_proxies,
        );
        changed
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

// === the file as serde reads it ===

/// The document as written: every value still text with its location, so that validation
/// can check each and report all problems, not only the first.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<OneOrMany>>,
    admin: Option<Spanned<String>>,
    client_hello_timeout: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_client_hello: Option<Spanned<String>>,
    routes: Option<Vec<Spanned<RawRoute>>>,
    kubernetes: Option<Spanned<RawKubernetes>>,
    cluster_id_listen: Option<Spanned<String>>,
    revoke_grace: Option<Spanned<String>>,
    max_connections: Option<Spanned<String>>,
    listen_backlog: Option<Spanned<String>>,
    shutdown_delay: Option<Spanned<String>>,
    drain_timeout: Option<Spanned<String>>,
    log_format: Option<Spanned<String>>,
    log_level: Option<Spanned<String>>,
    log_connections: Option<Spanned<String>>,
    outlier_detection: Option<Spanned<RawOutlier>>,
    accept_proxy_protocol: Option<Spanned<String>>,
    trusted_proxies: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutlier {
    consecutive_failures: Option<Spanned<String>>,
    base_ejection_time: Option<Spanned<String>>,
    max_ejection_time: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    debounce: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<Spanned<String>>,
    hostnames: Option<Vec<Spanned<String>>>,
    backends: Option<Vec<Spanned<String>>>,
    max_connections: Option<Spanned<String>>,
    allowed_cidrs: Option<Vec<Spanned<String>>>,
    proxy_protocol: Option<Spanned<String>>,
}

/// `key: value` or `key: [value, ...]`.
enum OneOrMany {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;

        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address or a list of addresses")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_owned()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }

        deserializer.deserialize_any(OneOrManyVisitor)
    }
}

// === validation ===

/// Collects problems as validation walks the document.
struct Problems<'a> {
    list: &'a mut Vec<Problem>,
}

impl Problems<'_> {
    fn at(&mut self, location: Location, route: Option<&RouteRef>, message: String) {
        let (line, column) = position(location);
        self.list.push(Problem {
            line,
            column,
            route: route.cloned(),
            message,
        });
    }

    fn nowhere(&mut self, message: String) {
        self.list.push(Problem {
            line: None,
            column: None,
            route: None,
            message,
        });
    }
}

impl RawConfig {
    /// Checks every value; returns a config with defaults in the places of bad values, which
    /// is only meaningful when nothing was pushed to `problems`.
    fn validate(self, origin: &str, problems: &mut Vec<Problem>) -> Config {
        let mut p = Problems { list: problems };
        let listen = validate_listen(self.listen, &mut p);
        let admin = self
            .admin
            .and_then(|admin| socket_addr("admin", &admin, &mut p))
            .unwrap_or(DEFAULT_ADMIN);
        let client_hello_timeout = duration_or(
            "client_hello_timeout",
            self.client_hello_timeout,
            DEFAULT_CLIENT_HELLO_TIMEOUT,
            &mut p,
        );
        let connect_timeout = duration_or(
            "connect_timeout",
            self.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
            &mut p,
        );
        let idle_timeout = duration_or(
            "idle_timeout",
            self.idle_timeout,
            DEFAULT_IDLE_TIMEOUT,
            &mut p,
        );
        let max_client_hello = self
            .max_client_hello
            .and_then(|v| validate_max_client_hello(&v, &mut p))
            .unwrap_or(DEFAULT_MAX_CLIENT_HELLO);
        let revoke_grace = match self.revoke_grace {
            None => Some(DEFAULT_REVOKE_GRACE),
            Some(v) if v.value.trim() == "off" => None,
            Some(v) => Some(validate_duration("revoke_grace", &v, &mut p).unwrap_or_default()),
        };
        let kubernetes = self.kubernetes.map(|k| {
            let debounce = k.value.debounce.and_then(|v| {
                let d = validate_duration("kubernetes.debounce", &v, &mut p)?;
                if d > MAX_DEBOUNCE {
                    p.at(
                        v.referenced,
                        None,
                        format!(
                            "kubernetes.debounce: {} is above the maximum of {}",
                            humantime::format_duration(d),
                            humantime::format_duration(MAX_DEBOUNCE)
                        ),
                    );
                    return None;
                }
                Some(d)
            });
            KubernetesConfig {
                debounce: debounce.unwrap_or(DEFAULT_DEBOUNCE),
            }
        });
        let cluster_id_listen = self.cluster_id_listen.and_then(|v| {
            let addr = socket_addr("cluster_id_listen", &v, &mut p)?;
            // Port 0 asks for a free port: it cannot clash with another port-0 listener.
            if addr.port() != 0 && (listen.contains(&addr) || addr == admin) {
                p.at(
                    v.referenced,
                    None,
                    format!("cluster_id_listen: {addr} is already used by `listen` or `admin`"),
                );
            }
            Some(addr)
        });
        let max_connections = self
            .max_connections
            .and_then(|v| count::<usize>("max_connections", &v, 1, &mut p));
        let listen_backlog = self
            .listen_backlog
            .and_then(|v| count::<i32>("listen_backlog", &v, 1, &mut p))
            .unwrap_or(DEFAULT_LISTEN_BACKLOG);
        let shutdown_delay = match self.shutdown_delay {
            // Zero is a real choice here (tests, or no load balancer in front).
            Some(v) if v.value.trim() == "0s" || v.value.trim() == "0" => Duration::ZERO,
            other => duration_or("shutdown_delay", other, DEFAULT_SHUTDOWN_DELAY, &mut p),
        };
        let drain_timeout = duration_or(
            "drain_timeout",
            self.drain_timeout,
            DEFAULT_DRAIN_TIMEOUT,
            &mut p,
        );
        let log_format = match self.log_format {
            None => LogFormat::Text,
            Some(v) => match v.value.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    p.at(
                        v.referenced,
                        None,
                        format!("log_format: {other:?} is not `text` or `json`"),
                    );
                    LogFormat::Text
                }
            },
        };
        let log_level = match self.log_level {
            None => "info".to_owned(),
            Some(v) => match tracing_subscriber::EnvFilter::try_new(&v.value) {
                Ok(_) => v.value,
                Err(err) => {
                    p.at(
                        v.referenced,
                        None,
                        format!("log_level: {:?}: {err}", v.value),
                    );
                    "info".to_owned()
                }
            },
        };
        let log_connections = self
            .log_connections
            .and_then(|v| boolean("log_connections", &v, &mut p))
            .unwrap_or(false);
        let outlier_detection = self
            .outlier_detection
            .map(|o| {
                let o = o.value;
                let default = OutlierPolicy::default();
                let policy = OutlierPolicy {
                    consecutive_failures: o
                        .consecutive_failures
                        .and_then(|v| {
                            count::<u32>("outlier_detection.consecutive_failures", &v, 0, &mut p)
                        })
                        .unwrap_or(default.consecutive_failures),
                    base_ejection: duration_or(
                        "outlier_detection.base_ejection_time",
                        o.base_ejection_time,
                        default.base_ejection,
                        &mut p,
                    ),
                    max_ejection: duration_or(
                        "outlier_detection.max_ejection_time",
                        o.max_ejection_time,
                        default.max_ejection,
                        &mut p,
                    ),
                };
                if policy.max_ejection < policy.base_ejection {
                    p.nowhere(
                        "outlier_detection: max_ejection_time is below base_ejection_time".into(),
                    );
                }
                policy
            })
            .unwrap_or_default();
        let accept_proxy_protocol = self
            .accept_proxy_protocol
            .and_then(|v| match v.value.trim() {
                "v1" => Some(Expect::Required(ProxyVersion::V1)),
                "v2" => Some(Expect::Required(ProxyVersion::V2)),
                "optional" => Some(Expect::Optional),
                other => {
                    let why = format!("accept_proxy_protocol: {other:?} is not v1, v2 or optional");
                    p.at(v.referenced, None, why);
                    None
                }
            });
        let mut trusted_proxies = Vec::new();
        for cidr in self.trusted_proxies.unwrap_or_default() {
            match parse_cidr(&cidr.value) {
                Some(net) => trusted_proxies.push(net),
                None => {
                    let why = format!(
                        "trusted_proxies: {:?} is not an IPv4 or IPv6 network",
                        cidr.value
                    );
                    p.at(cidr.referenced, None, why);
                }
            }
        }
        if accept_proxy_protocol.is_some() && trusted_proxies.is_empty() {
            p.nowhere(
                "accept_proxy_protocol needs trusted_proxies: headers from other peers are refused"
                    .into(),
            );
        }
        let routes = validate_routes(self.routes.unwrap_or_default(), &mut p);
        Config {
            listen,
            admin,
            client_hello_timeout,
            connect_timeout,
            idle_timeout,
            max_client_hello,
            routes,
            kubernetes,
            cluster_id_listen,
            revoke_grace,
            max_connections,
            listen_backlog,
            shutdown_delay,
            drain_timeout,
            log_format,
            log_level,
            log_connections,
            outlier_detection,
            accept_proxy_protocol,
            trusted_proxies,
            origin: origin.to_owned(),
        }
    }
}

fn validate_listen(listen: Option<Spanned<OneOrMany>>, p: &mut Problems<'_>) -> Vec<SocketAddr> {
    let Some(listen) = listen else {
        p.nowhere(
            "`listen` is required: the address(es) to accept TLS on, e.g. 0.0.0.0:8443".into(),
        );
        return Vec::new();
    };
    let items = match listen.value {
        OneOrMany::One(one) => vec![Spanned {
            value: one,
            referenced: listen.referenced,
            defined: listen.defined,
        }],
        OneOrMany::Many(many) => many,
    };
    if items.is_empty() {
        p.at(
            listen.referenced,
            None,
            "listen: give at least one address, e.g. 0.0.0.0:8443".into(),
        );
    }
    let mut seen = HashSet::new();
    let mut addrs = Vec::with_capacity(items.len());
    for item in &items {
        let Some(addr) = socket_addr("listen", item, p) else {
            continue;
        };
        // Port 0 asks the kernel for a fresh port each time, so it can be listed twice.
        if addr.port() != 0 && !seen.insert(addr) {
            p.at(
                item.referenced,
                None,
                format!("listen: {addr} is listed twice"),
            );
            continue;
        }
        addrs.push(addr);
    }
    addrs
}

fn socket_addr(key: &str, value: &Spanned<String>, p: &mut Problems<'_>) -> Option<SocketAddr> {
    match value.value.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            p.at(
                value.referenced,
                None,
                format!(
                    "{key}: {:?} is not an IP address and port (e.g. 0.0.0.0:8443 or [::]:8443)",
                    value.value
                ),
            );
            None
        }
    }
}

/// The duration at `value`, or `default` when absent or bad (a bad one is a problem).
fn duration_or(
    key: &str,
    value: Option<Spanned<String>>,
    default: Duration,
    p: &mut Problems<'_>,
) -> Duration {
    value
        .and_then(|v| validate_duration(key, &v, p))
        .unwrap_or(default)
}

fn validate_duration(key: &str, value: &Spanned<String>, p: &mut Problems<'_>) -> Option<Duration> {
    match humantime::parse_duration(&value.value) {
        Ok(d) if d.is_zero() => {
            p.at(
                value.referenced,
                None,
                format!("{key}: must be more than zero"),
            );
            None
        }
        Ok(d) => Some(d),
        Err(err) => {
            p.at(
                value.referenced,
                None,
                format!(
                    "{key}: {:?} is not a duration ({err}); write e.g. 250ms, 5s, 1h30m",
                    value.value
                ),
            );
            None
        }
    }
}

/// A whole number of at least `min`.
fn count<N: std::str::FromStr + PartialOrd + From<u8> + fmt::Display>(
    key: &str,
    value: &Spanned<String>,
    min: u8,
    p: &mut Problems<'_>,
) -> Option<N> {
    match value.value.trim().parse::<N>() {
        Ok(n) if n >= N::from(min) => Some(n),
        _ => {
            p.at(
                value.referenced,
                None,
                format!(
                    "{key}: {:?} is not a whole number of at least {min}",
                    value.value
                ),
            );
            None
        }
    }
}

fn boolean(key: &str, value: &Spanned<String>, p: &mut Problems<'_>) -> Option<bool> {
    match value.value.trim() {
        "true" => Some(true),
        "false" => Some(false),
        other => {
            p.at(
                value.referenced,
                None,
                format!("{key}: {other:?} is not true or false"),
            );
            None
        }
    }
}

fn validate_max_client_hello(value: &Spanned<String>, p: &mut Problems<'_>) -> Option<usize> {
    let why = match value.value.parse::<usize>() {
        Ok(n) if n < MIN_MAX_CLIENT_HELLO => {
            format!("{n} bytes is below the minimum of {MIN_MAX_CLIENT_HELLO}")
        }
        Ok(n) if n > MAX_MAX_CLIENT_HELLO => {
            format!("{n} bytes is above the maximum of {MAX_MAX_CLIENT_HELLO} (1 MiB)")
        }
        Ok(n) => return Some(n),
        Err(_) => format!("{:?} is not a whole number of bytes", value.value),
    };
    p.at(value.referenced, None, format!("max_client_hello: {why}"));
    None
}

/// A network, or a lone address as the network of just that address.
fn parse_cidr(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn validate_routes(raw: Vec<Spanned<RawRoute>>, p: &mut Problems<'_>) -> Vec<RouteConfig> {
    // Who claimed each name and hostname first, to name both routes in a clash.
    let mut names: HashMap<String, RouteRef> = HashMap::new();
    let mut hosts: HashMap<HostPattern, RouteRef> = HashMap::new();
    let mut routes = Vec::with_capacity(raw.len());
    for (index, route) in raw.into_iter().enumerate() {
        let here = route.referenced;
        let RawRoute {
            name,
            hostnames,
            backends,
            max_connections,
            allowed_cidrs,
            proxy_protocol,
        } = route.value;
        let hostnames = hostnames.unwrap_or_default();
        let backends = backends.unwrap_or_default();

        let given = name.as_ref().map(|n| n.value.clone());
        let name_value = given
            .clone()
            .or_else(|| hostnames.first().map(|h| h.value.clone()));
        let this = RouteRef {
            index,
            name: name_value.clone().filter(|n| !n.is_empty()),
        };
        let mut ok = true;

        if let Some(name) = &name {
            if name.value.trim().is_empty() {
                p.at(name.referenced, Some(&this), "name is empty".into());
                ok = false;
            }
        }
        if let Some(name_value) = this.name.clone() {
            match names.entry(name_value) {
                Entry::Occupied(first) => {
                    let at = name.as_ref().map_or(here, |n| n.referenced);
                    let how = if given.is_some() {
                        ""
                    } else {
                        " (the default: its first hostname)"
                    };
                    p.at(
                        at,
                        Some(&this),
                        format!("route name{how} is also used by {}", first.get()),
                    );
                    ok = false;
                }
                Entry::Vacant(slot) => {
                    slot.insert(this.clone());
                }
            }
        }

        if hostnames.is_empty() {
            p.at(here, Some(&this), "no hostnames: give at least one".into());
            ok = false;
        }
        let mut patterns = Vec::with_capacity(hostnames.len());
        for host in &hostnames {
            let pattern = match HostPattern::parse(&host.value) {
                Ok(pattern) => pattern,
                Err(err) => {
                    p.at(
                        host.referenced,
                        Some(&this),
                        format!("hostname {:?}: {err}", host.value),
                    );
                    ok = false;
                    continue;
                }
            };
            match hosts.entry(pattern.clone()) {
                Entry::Occupied(first) if first.get().index == index => {
                    p.at(
                        host.referenced,
                        Some(&this),
                        format!("hostname {pattern} is listed twice"),
                    );
                    ok = false;
                }
                Entry::Occupied(first) => {
                    p.at(
                        host.referenced,
                        Some(&this),
                        format!("hostname {pattern} is also claimed by {}", first.get()),
                    );
                    ok = false;
                }
                Entry::Vacant(slot) => {
                    slot.insert(this.clone());
                    patterns.push(pattern);
                }
            }
        }

        if backends.is_empty() {
            p.at(here, Some(&this), "no backends: give at least one".into());
            ok = false;
        }
        let mut parsed = Vec::with_capacity(backends.len());
        for backend in &backends {
            match Backend::parse(&backend.value) {
                Ok(b) => parsed.push(b),
                Err(err) => {
                    p.at(backend.referenced, Some(&this), err.to_string());
                    ok = false;
                }
            }
        }

        let max_connections = match max_connections {
            None => None,
            Some(v) => match v.value.trim().parse::<u32>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    let why = format!(
                        "max_connections: {:?} is not a whole number of at least 1",
                        v.value
                    );
                    p.at(v.referenced, Some(&this), why);
                    ok = false;
                    None
                }
            },
        };
        let mut cidrs = Vec::new();
        for cidr in allowed_cidrs.unwrap_or_default() {
            match parse_cidr(&cidr.value) {
                Some(net) => cidrs.push(net),
                None => {
                    let why = format!("allowed_cidrs: {:?} is not an IPv4 or IPv6 network (e.g. 10.0.0.0/8, 2001:db8::/32, 192.0.2.7)", cidr.value);
                    p.at(cidr.referenced, Some(&this), why);
                    ok = false;
                }
            }
        }

        let proxy_protocol = match proxy_protocol {
            None => None,
            Some(v) => match v.value.trim() {
                "v1" => Some(ProxyVersion::V1),
                "v2" => Some(ProxyVersion::V2),
                other => {
                    let why = format!("proxy_protocol: {other:?} is not v1 or v2");
                    p.at(v.referenced, Some(&this), why);
                    ok = false;
                    None
                }
            },
        };

        if ok {
            routes.push(RouteConfig {
                name: name_value.unwrap_or_default(),
                hostnames: patterns,
                backends: parsed,
                max_connections,
                allowed_cidrs: cidrs,
                proxy_protocol,
            });
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy::ServerName;

    const MINIMAL: &str = "listen: 0.0.0.0:8443\n";

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(text, "test.yaml") {
            Ok(config) => panic!("expected problems, got {config:?}"),
            Err(ConfigError::Invalid { file, problems }) => {
                assert_eq!(file, "test.yaml");
                problems.iter().map(|p| p.to_string()).collect()
            }
            Err(other) => panic!("expected Invalid, got {other}"),
        }
    }

    fn one_problem(text: &str) -> String {
        let mut all = problems(text);
        assert_eq!(all.len(), 1, "{all:#?}");
        all.remove(0)
    }

    #[test]
    fn defaults() {
        let config = Config::parse(MINIMAL, "test.yaml").unwrap();
        assert_eq!(config.listen, ["0.0.0.0:8443".parse().unwrap()]);
        assert_eq!(config.admin, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(config.client_hello_timeout, Duration::from_secs(5));
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.idle_timeout, Duration::from_secs(3600));
        assert_eq!(config.max_client_hello, 16384);
        assert!(config.routes.is_empty());
        assert_eq!(config.origin(), "test.yaml");
        assert!(config.table().unwrap().routes().is_empty());
    }

    #[test]
    fn every_key_set() {
        let config = Config::parse(
            "listen: [\"0.0.0.0:8443\", \"[::]:8443\"]\n\
             admin: \"[::1]:9999\"\n\
             client_hello_timeout: 250ms\n\
             connect_timeout: 1m\n\
             idle_timeout: 1h30m\n\
             max_client_hello: 512\n\
             routes:\n\
             - name: a\n  hostnames: [API.a.test., \"*.apps.a.test\"]\n  backends: [\"10.0.0.1:6443\", kas.ns.svc:6443]\n\
             - hostnames: [b.test]\n  backends: [\"[::1]:6443\"]\n",
            "test.yaml",
        )
        .unwrap();
        assert_eq!(config.listen.len(), 2);
        assert_eq!(config.admin, "[::1]:9999".parse().unwrap());
        assert_eq!(config.client_hello_timeout, Duration::from_millis(250));
        assert_eq!(config.connect_timeout, Duration::from_secs(60));
        assert_eq!(config.idle_timeout, Duration::from_secs(5400));
        assert_eq!(config.max_client_hello, 512);
        assert_eq!(config.routes[0].name, "a");
        assert_eq!(config.routes[0].hostnames[0].to_string(), "api.a.test");
        assert_eq!(config.routes[0].backends[1].to_string(), "kas.ns.svc:6443");
        assert_eq!(
            config.routes[1].name, "b.test",
            "defaults to the first hostname"
        );

        let table = config.table().unwrap();
        let lookup = |n: &str| {
            table
                .lookup(&ServerName::parse(n.as_bytes()).unwrap())
                .map(|r| (r.name().to_owned(), r.source().to_owned()))
        };
        assert_eq!(lookup("api.a.test"), Some(("a".into(), "file".into())));
        assert_eq!(lookup("x.apps.a.test"), Some(("a".into(), "file".into())));
        assert_eq!(lookup("b.test"), Some(("b.test".into(), "file".into())));
        assert_eq!(lookup("c.test"), None);
    }

    #[test]
    fn routes_may_be_empty_or_null() {
        for text in ["routes: []\n", "routes:\n", "routes: ~\n"] {
            let config = Config::parse(&format!("{MINIMAL}{text}"), "t").unwrap();
            assert!(config.routes.is_empty(), "{text}");
        }
    }

    #[test]
    fn listen_is_required_and_must_be_addresses() {
        assert_eq!(
            one_problem("routes: []\n"),
            "`listen` is required: the address(es) to accept TLS on, e.g. 0.0.0.0:8443"
        );
        assert_eq!(
            one_problem("listen: []\n"),
            "1:9: listen: give at least one address, e.g. 0.0.0.0:8443"
        );
        assert_eq!(
            one_problem("listen: localhost:8443\n"),
            "1:9: listen: \"localhost:8443\" is not an IP address and port \
             (e.g. 0.0.0.0:8443 or [::]:8443)"
        );
        assert_eq!(
            problems("listen:\n  - 0.0.0.0:1\n  - nope\n  - 0.0.0.0:1\n"),
            [
                "3:5: listen: \"nope\" is not an IP address and port \
                 (e.g. 0.0.0.0:8443 or [::]:8443)",
                "4:5: listen: 0.0.0.0:1 is listed twice",
            ]
        );
        assert_eq!(
            one_problem("listen: 0.0.0.0:1\nadmin: 9090\n"),
            "2:8: admin: \"9090\" is not an IP address and port (e.g. 0.0.0.0:8443 or [::]:8443)"
        );
    }

    #[test]
    fn durations_must_parse_and_be_positive() {
        assert_eq!(
            problems(&format!(
                "{MINIMAL}client_hello_timeout: 0s\nconnect_timeout: 10\nidle_timeout: soon\n"
            )),
            [
                "2:23: client_hello_timeout: must be more than zero",
                "3:18: connect_timeout: \"10\" is not a duration (time unit needed, \
                 for example 10sec or 10ms); write e.g. 250ms, 5s, 1h30m",
                "4:15: idle_timeout: \"soon\" is not a duration (expected number at 0); \
                 write e.g. 250ms, 5s, 1h30m",
            ]
        );
    }

    #[test]
    fn max_client_hello_is_bounded() {
        assert_eq!(
            one_problem(&format!("{MINIMAL}max_client_hello: 511\n")),
            "2:19: max_client_hello: 511 bytes is below the minimum of 512"
        );
        assert_eq!(
            one_problem(&format!("{MINIMAL}max_client_hello: 1048577\n")),
            "2:19: max_client_hello: 1048577 bytes is above the maximum of 1048576 (1 MiB)"
        );
        assert_eq!(
            one_problem(&format!("{MINIMAL}max_client_hello: 16KiB\n")),
            "2:19: max_client_hello: \"16KiB\" is not a whole number of bytes"
        );
        let max = Config::parse(&format!("{MINIMAL}max_client_hello: 1048576\n"), "t");
        assert_eq!(max.unwrap().max_client_hello, 1 << 20);
    }

    #[test]
    fn a_breached_parser_budget_names_the_limit() {
        use serde_saphyr::budget::BudgetBreach;
        assert!(budget_message(&BudgetBreach::Nodes { nodes: 4_000_001 })
            .starts_with("the file has more than 4000000 YAML nodes"));
        assert!(budget_message(&BudgetBreach::Events { events: 6_000_001 })
            .starts_with("the file has more than 6000000 YAML parser events"));
    }

    #[test]
    fn port_zero_may_be_listed_twice() {
        let config = Config::parse("listen: [127.0.0.1:0, 127.0.0.1:0]\n", "t").unwrap();
        assert_eq!(config.listen.len(), 2);
    }

    #[test]
    fn operations_keys_have_defaults_and_take_values() {
        let config = Config::parse(MINIMAL, "t").unwrap();
        assert_eq!(config.max_connections, None);
        assert_eq!(config.listen_backlog, DEFAULT_LISTEN_BACKLOG);
        assert_eq!(config.shutdown_delay, DEFAULT_SHUTDOWN_DELAY);
        assert_eq!(config.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.log_level, "info");
        assert!(!config.log_connections);
        assert_eq!(config.outlier_detection, OutlierPolicy::default());

        let config = Config::parse(
            &format!(
                "{MINIMAL}max_connections: 1000\nlisten_backlog: 128\nshutdown_delay: 0s\n\
                 drain_timeout: 2m\nlog_format: json\nlog_level: debug,proxy=trace\n\
                 log_connections: true\noutlier_detection:\n  consecutive_failures: 0\n\
                 \x20 base_ejection_time: 1s\n  max_ejection_time: 1m\n\
                 routes:\n  - hostnames: [a.test]\n    backends: [\"127.0.0.1:1\"]\n\
                 \x20   max_connections: 5\n    allowed_cidrs: [10.0.0.0/8, \"2001:db8::/32\", 192.0.2.7]\n"
            ),
            "t",
        )
        .unwrap();
        assert_eq!(config.max_connections, Some(1000));
        assert_eq!(config.listen_backlog, 128);
        assert_eq!(config.shutdown_delay, Duration::ZERO);
        assert_eq!(config.drain_timeout, Duration::from_secs(120));
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.log_level, "debug,proxy=trace");
        assert!(config.log_connections);
        assert_eq!(config.outlier_detection.consecutive_failures, 0);
        assert_eq!(
            config.outlier_detection.max_ejection,
            Duration::from_secs(60)
        );
        let route = &config.routes[0];
        assert_eq!(route.max_connections, Some(5));
        let cidrs: Vec<String> = route
            .allowed_cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(cidrs, ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]);
        let table = config.table().unwrap();
        assert_eq!(table.routes()[0].max_connections(), Some(5));
        assert!(table.routes()[0].allows("10.1.2.3".parse().unwrap()));
        assert!(!table.routes()[0].allows("11.1.2.3".parse().unwrap()));
    }

    #[test]
    fn operations_keys_report_bad_values() {
        let found = problems(&format!(
            "{MINIMAL}max_connections: 0\nlog_format: xml\nlog_connections: maybe\n\
             outlier_detection:\n  base_ejection_time: 1m\n  max_ejection_time: 1s\n\
             routes:\n  - hostnames: [a.test]\n    backends: [\"127.0.0.1:1\"]\n\
             \x20   max_connections: -1\n    allowed_cidrs: [10.0.0.0/33]\n"
        ));
        let text = found.join("\n");
        for expected in [
            "max_connections: \"0\" is not a whole number of at least 1",
            "log_format: \"xml\" is not `text` or `json`",
            "log_connections: \"maybe\" is not true or false",
            "max_ejection_time is below base_ejection_time",
            "routes[0] (\"a.test\"): max_connections: \"-1\"",
            "allowed_cidrs: \"10.0.0.0/33\" is not an IPv4 or IPv6 network",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_yaml_give_file_line_and_column() {
        assert_eq!(
            one_problem(&format!("{MINIMAL}listne: 0.0.0.0:1\n")),
            "2:1: unknown field `listne`, expected one of listen, admin, client_hello_timeout, \
             connect_timeout, idle_timeout, max_client_hello, routes, kubernetes, \
             cluster_id_listen, revoke_grace, max_connections, listen_backlog, shutdown_delay, \
             drain_timeout, log_format, log_level, log_connections, outlier_detection, \
             accept_proxy_protocol, trusted_proxies"
        );
        assert_eq!(
            one_problem(&format!(
                "{MINIMAL}routes:\n  - hostnames: [a.test]\n    backend: [\"10.0.0.1:1\"]\n"
            )),
            "4:5: unknown field `backend`, expected one of name, hostnames, backends, max_connections, allowed_cidrs, proxy_protocol"
        );
        assert_eq!(
            one_problem(&format!("{MINIMAL}routes:\n  - hostnames: [a.test\n")),
            "3:16: unclosed bracket '['"
        );
        assert_eq!(
            one_problem(&format!("{MINIMAL}listen: 0.0.0.0:2\n")),
            "2:1: duplicate mapping key: listen, set DuplicateKeyPolicy in Options if acceptable"
        );
        assert_eq!(
            one_problem("# nothing yet\n"),
            "`listen` is required: the address(es) to accept TLS on, e.g. 0.0.0.0:8443"
        );
        assert_eq!(
            one_problem(""),
            "`listen` is required: the address(es) to accept TLS on, e.g. 0.0.0.0:8443"
        );
        let err = Config::from_bytes(b"listen: 0.0.0.0:1\nx: \xff\n", "t").unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file t is invalid (1 problem):\n  t:2: not UTF-8 (invalid byte at offset 21)"
        );
    }

    #[test]
    fn route_problems_name_the_route_and_line() {
        let text = format!(
            "{MINIMAL}routes:\n\
             - name: a\n  hostnames: []\n  backends: []\n\
             - name: b\n  hostnames: [\"bad host\", \"*.ok.test\", \"a.*.test\"]\n  backends: [\"10.0.0.1:6443\", nohost, \"x:0\"]\n\
             - hostnames: [c.test]\n\
             - name: \"\"\n  hostnames: [d.test]\n  backends: [\"10.0.0.1:1\"]\n"
        );
        assert_eq!(
            problems(&text),
            [
                "3:3: routes[0] (\"a\"): no hostnames: give at least one",
                "3:3: routes[0] (\"a\"): no backends: give at least one",
                "7:15: routes[1] (\"b\"): hostname \"bad host\": \
                 byte 0x20 is not allowed in a hostname",
                "7:40: routes[1] (\"b\"): hostname \"a.*.test\": \
                 byte 0x2a is not allowed in a hostname",
                "8:31: routes[1] (\"b\"): backend \"nohost\": missing :port",
                "8:39: routes[1] (\"b\"): backend \"x:0\": \
                 port is not a number from 1 to 65535",
                "9:3: routes[2] (\"c.test\"): no backends: give at least one",
                "10:9: routes[3]: name is empty",
            ]
        );
    }

    #[test]
    fn duplicates_name_both_routes() {
        let text = format!(
            "{MINIMAL}routes:\n\
             - name: a\n  hostnames: [x.test, \"*.w.test\"]\n  backends: [\"10.0.0.1:1\"]\n\
             - name: b\n  hostnames: [X.Test., y.test, y.test]\n  backends: [\"10.0.0.1:2\"]\n\
             - name: a\n  hostnames: [\"*.W.test\"]\n  backends: [\"10.0.0.1:3\"]\n\
             - hostnames: [b, z.test]\n  backends: [\"10.0.0.1:4\"]\n\
             - hostnames: [b]\n  backends: [\"10.0.0.1:4\"]\n"
        );
        assert_eq!(
            problems(&text),
            [
                "7:15: routes[1] (\"b\"): hostname x.test is also claimed by routes[0] (\"a\")",
                "7:32: routes[1] (\"b\"): hostname y.test is listed twice",
                "9:9: routes[2] (\"a\"): route name is also used by routes[0] (\"a\")",
                "10:15: routes[2] (\"a\"): hostname *.w.test is also claimed by routes[0] (\"a\")",
                "12:3: routes[3] (\"b\"): route name (the default: its first hostname) \
                 is also used by routes[1] (\"b\")",
                "14:3: routes[4] (\"b\"): route name (the default: its first hostname) \
                 is also used by routes[1] (\"b\")",
                "14:15: routes[4] (\"b\"): hostname b is also claimed by routes[3] (\"b\")",
            ]
        );
    }

    #[test]
    fn error_text_names_file_line_and_route() {
        let err = Config::parse(
            "listen: 0.0.0.0:8443\nroutes:\n  - name: cluster-a\n    hostnames: [api.a.test]\n    backends: [\"10.0.0.1\"]\n",
            "/etc/sniroute/sniroute.yaml",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file /etc/sniroute/sniroute.yaml is invalid (1 problem):\n  \
             /etc/sniroute/sniroute.yaml:5:16: routes[0] (\"cluster-a\"): \
             backend \"10.0.0.1\": missing :port"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "admin: nope\nidle_timeout: 0s\nroutes:\n  - hostnames: [a.test]\n";
        assert_eq!(
            problems(text),
            [
                "`listen` is required: the address(es) to accept TLS on, e.g. 0.0.0.0:8443",
                "1:8: admin: \"nope\" is not an IP address and port \
                 (e.g. 0.0.0.0:8443 or [::]:8443)",
                "2:15: idle_timeout: must be more than zero",
                "4:5: routes[0] (\"a.test\"): no backends: give at least one",
            ]
        );
    }

    #[test]
    fn kubernetes_cluster_id_listen_and_revoke_grace() {
        let config = Config::parse(MINIMAL, "t").unwrap();
        assert_eq!(config.kubernetes, None);
        assert_eq!(config.cluster_id_listen, None);
        assert_eq!(config.revoke_grace, Some(DEFAULT_REVOKE_GRACE));

        let config = Config::parse(
            &format!(
                "{MINIMAL}kubernetes: {{}}\ncluster_id_listen: \"[::]:6443\"\nrevoke_grace: off\n"
            ),
            "t",
        )
        .unwrap();
        assert_eq!(config.kubernetes, Some(KubernetesConfig::default()));
        assert_eq!(config.kubernetes.unwrap().debounce, DEFAULT_DEBOUNCE);
        assert_eq!(config.cluster_id_listen, Some("[::]:6443".parse().unwrap()));
        assert_eq!(config.revoke_grace, None);

        let config = Config::parse(
            &format!("{MINIMAL}kubernetes:\n  debounce: 20ms\nrevoke_grace: 2m\n"),
            "t",
        )
        .unwrap();
        assert_eq!(
            config.kubernetes.unwrap().debounce,
            Duration::from_millis(20)
        );
        assert_eq!(config.revoke_grace, Some(Duration::from_secs(120)));
    }

    #[test]
    fn kubernetes_cluster_id_listen_and_revoke_grace_problems() {
        assert_eq!(
            problems(&format!(
                "{MINIMAL}kubernetes:\n  debounce: 11s\ncluster_id_listen: \"0.0.0.0:8443\"\n\
                 revoke_grace: 0s\n"
            )),
            [
                "3:13: kubernetes.debounce: 11s is above the maximum of 10s",
                "4:20: cluster_id_listen: 0.0.0.0:8443 is already used by `listen` or `admin`",
                "5:15: revoke_grace: must be more than zero",
            ]
        );
        // Port 0 is a fresh port each time, never one `listen` or `admin` already has.
        let text = "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ncluster_id_listen: 127.0.0.1:0\n";
        let config = Config::parse(text, "test.yaml").expect("port 0 everywhere is valid");
        assert_eq!(
            config.cluster_id_listen,
            Some("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(
            one_problem(&format!("{MINIMAL}kubernetes: {{kubeconfig: x}}\n")),
            "2:14: unknown field `kubeconfig`, expected one of debounce"
        );
        assert_eq!(
            one_problem(&format!("{MINIMAL}cluster_id_listen: 6443\n")),
            "2:20: cluster_id_listen: \"6443\" is not an IP address and port \
             (e.g. 0.0.0.0:8443 or [::]:8443)"
        );
        assert_eq!(
            one_problem(&format!("{MINIMAL}revoke_grace: never\n")),
            "2:15: revoke_grace: \"never\" is not a duration (expected number at 0); \
             write e.g. 250ms, 5s, 1h30m"
        );
        let a = Config::parse(MINIMAL, "t").unwrap();
        let b = Config::parse(
            &format!("{MINIMAL}kubernetes: {{}}\nrevoke_grace: off\n"),
            "t",
        )
        .unwrap();
        assert_eq!(
            a.restart_settings_changed(&b),
            ["kubernetes", "revoke_grace"]
        );
    }

    #[test]
    fn route_specs_say_file() {
        let config = Config::parse(
            &format!(
                "{MINIMAL}routes: [{{name: a, hostnames: [a.test], backends: [\"10.0.0.1:1\"]}}]\n"
            ),
            "t",
        )
        .unwrap();
        let specs = config.route_specs();
        assert_eq!(specs.len(), 1);
        assert_eq!((&*specs[0].name, &*specs[0].source), ("a", "file"));
        assert!(specs[0].allowed_cidrs.is_empty() && specs[0].cluster_id.is_none());
    }

    #[test]
    fn load_names_the_file() {
        let err = Config::load("/nonexistent/sniroute.yaml").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read config file /nonexistent/sniroute.yaml: "),
            "{err}"
        );
    }

    #[test]
    fn restart_settings() {
        let a = Config::parse(MINIMAL, "t").unwrap();
        let b = Config::parse(
            "listen: 0.0.0.0:8443\nidle_timeout: 2h\nroutes: [{hostnames: [a.test], backends: [\"10.0.0.1:1\"]}]\n",
            "t",
        )
        .unwrap();
        assert_eq!(a.restart_settings_changed(&b), ["idle_timeout"]);
        assert!(a.restart_settings_changed(&a).is_empty());
    }

    #[test]
    fn the_example_config_parses() {
        let config = Config::parse(
            include_str!("../../examples/sniroute.yaml"),
            "examples/sniroute.yaml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.listen.len(), 2);
        assert_eq!(config.admin, DEFAULT_ADMIN);
        assert_eq!(config.client_hello_timeout, DEFAULT_CLIENT_HELLO_TIMEOUT);
        assert_eq!(config.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(config.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(config.max_client_hello, DEFAULT_MAX_CLIENT_HELLO);
        assert!(config.routes.len() >= 2);
        assert_eq!(config.revoke_grace, Some(DEFAULT_REVOKE_GRACE));
        config.table().unwrap();
    }
}
